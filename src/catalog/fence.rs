//! Leaving out objects that a stopped process uploaded too late.
//!
//! Txids are numbered once per replica: a process resumes the newest lineage
//! or starts a new one right after the highest txid it lists, and the lease
//! keeps a second process out. An upload can still land after the next
//! process listed the replica: a SIGKILLed process's request the network (or
//! a proxy) delivers late, or a request the process gave up on and retried
//! from a fresh listing. The two lineages then claim the same txids. The one
//! still being written wins: its objects were observed later (every process
//! starts its times at or above the newest time it lists), so the lineage
//! whose newest object has the later time is the live one. The other
//! lineage's objects from the first txid the winner holds on are left out
//! of the catalog, so no restore, window or resume ever uses them.

use super::{Catalog, Kind, ObjectInfo};

/// An object left out of the catalog because its txids belong to a lineage
/// written later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    pub object: ObjectInfo,
    /// The lineage that holds these txids.
    pub by_lineage: u64,
    /// Every object of that lineage overlapping these txids was observed
    /// after this one, as after a late upload. When not, the two lineages
    /// were written at the same time (two writers, or an object copied in
    /// from another replica).
    pub late: bool,
}

/// The txids and newest time of one lineage's objects.
#[derive(Debug, Clone, Copy)]
struct Span {
    lineage: u64,
    min_txid: u64,
    max_txid: u64,
    max_time_ms: i64,
    has_snapshot: bool,
}

impl Span {
    fn overlaps(&self, other: &Span) -> bool {
        self.min_txid <= other.max_txid && other.min_txid <= self.max_txid
    }

    /// Which of two lineages is the one written later. A live lineage always
    /// has a snapshot in the listing (its first one is stored before any
    /// segment, and retention keeps the newest).
    fn rank(&self) -> (bool, i64, u64, u64) {
        (
            self.has_snapshot,
            self.max_time_ms,
            self.max_txid,
            self.lineage,
        )
    }
}

impl Catalog {
    /// Moves the objects of every lineage that overlaps a later-written one
    /// into `superseded`, until no two lineages share a txid.
    pub(super) fn fence(&mut self) {
        while let Some((loser, winner)) = first_overlap(&self.spans()) {
            let cut = winner.min_txid;
            let take = |objs: &mut Vec<ObjectInfo>| {
                let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(objs)
                    .into_iter()
                    .partition(|o| o.lineage == loser.lineage && o.max_txid >= cut);
                *objs = keep;
                out
            };
            let out: Vec<ObjectInfo> = take(&mut self.snapshots)
                .into_iter()
                .chain(take(&mut self.segments))
                .collect();
            for object in out {
                let late = self.observed_before(&object, &winner);
                self.superseded.push(Superseded {
                    object,
                    by_lineage: winner.lineage,
                    late,
                });
            }
        }
        self.superseded
            .sort_by_key(|s| (s.object.min_txid, s.object.key.clone()));
    }

    /// Whether `o` was observed before every object of `winner` that holds
    /// any of its txids (before the winner's newest, when none does).
    fn observed_before(&self, o: &ObjectInfo, winner: &Span) -> bool {
        let overlapping = self
            .snapshots
            .iter()
            .chain(&self.segments)
            .filter(|w| w.lineage == winner.lineage)
            .filter(|w| w.min_txid <= o.max_txid && o.min_txid <= w.max_txid)
            .map(|w| w.min_time_ms)
            .min();
        o.max_time_ms <= overlapping.unwrap_or(winner.max_time_ms)
    }

    fn spans(&self) -> Vec<Span> {
        let mut spans: Vec<Span> = Vec::new();
        for o in self.snapshots.iter().chain(&self.segments) {
            match spans.iter_mut().find(|s| s.lineage == o.lineage) {
                Some(s) => {
                    s.min_txid = s.min_txid.min(o.min_txid);
                    s.max_txid = s.max_txid.max(o.max_txid);
                    s.max_time_ms = s.max_time_ms.max(o.max_time_ms);
                    s.has_snapshot |= o.kind == Kind::Snapshot;
                }
                None => spans.push(Span {
                    lineage: o.lineage,
                    min_txid: o.min_txid,
                    max_txid: o.max_txid,
                    max_time_ms: o.max_time_ms,
                    has_snapshot: o.kind == Kind::Snapshot,
                }),
            }
        }
        spans
    }
}

/// The first pair of overlapping lineages, as (written earlier, written later).
fn first_overlap(spans: &[Span]) -> Option<(Span, Span)> {
    spans.iter().enumerate().find_map(|(i, a)| {
        spans[i + 1..].iter().find(|b| a.overlaps(b)).map(|b| {
            if a.rank() < b.rank() {
                (*a, *b)
            } else {
                (*b, *a)
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::super::{segment_key, snapshot_key, Catalog};

    fn superseded(cat: &Catalog) -> Vec<(String, u64, bool)> {
        cat.superseded
            .iter()
            .map(|s| (s.object.key.clone(), s.by_lineage, s.late))
            .collect()
    }

    #[test]
    fn a_late_segment_of_the_old_lineage_is_left_out() {
        // Lineage 1 shipped up to 9; the next process listed that and started
        // lineage 2 at 10; then the dead process's upload of 10..=12 landed.
        let late = segment_key(10, 12, 1, 900, 950);
        let cat = Catalog::from_keys(
            &[
                snapshot_key(1, 1, 100),
                segment_key(2, 9, 1, 200, 800),
                late.clone(),
                snapshot_key(10, 2, 2000),
                segment_key(11, 11, 2, 2100, 2100),
            ],
            1,
        );
        assert_eq!(superseded(&cat), vec![(late, 2, true)]);
        assert_eq!(cat.max_txid(), 11);
        assert_eq!(cat.newest().unwrap().lineage, 2);
        let chains = cat.chains(&HashSet::new());
        assert_eq!((chains[0].snapshot.lineage, chains[0].max_txid()), (2, 11));
        assert_eq!(chains[1].max_txid(), 9);
        let w = cat.window().unwrap();
        assert_eq!((w.min_txid, w.max_txid), (1, 11));
    }

    #[test]
    fn a_late_snapshot_of_a_new_lineage_is_left_out_when_the_old_one_resumed() {
        // The dead process started lineage 2 at 10, but its snapshot landed
        // after the next process had listed up to 9 and resumed lineage 1.
        let late = snapshot_key(10, 2, 900);
        let cat = Catalog::from_keys(
            &[
                snapshot_key(1, 1, 100),
                segment_key(2, 9, 1, 200, 800),
                late.clone(),
                segment_key(10, 14, 1, 2000, 2400),
            ],
            1,
        );
        assert_eq!(superseded(&cat), vec![(late, 1, true)]);
        let chains = cat.chains(&HashSet::new());
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].max_txid(), 14);
    }

    #[test]
    fn everything_of_the_loser_from_the_winner_s_first_txid_on_goes() {
        // The late uploads reach beyond the live lineage: all of them go, so
        // the next txid and the resume point are the live lineage's.
        let cat = Catalog::from_keys(
            &[
                snapshot_key(1, 1, 100),
                segment_key(2, 9, 1, 200, 800),
                segment_key(10, 20, 1, 900, 990),
                segment_key(21, 30, 1, 991, 999),
                snapshot_key(10, 2, 2000),
            ],
            1,
        );
        let keys: Vec<String> = superseded(&cat).into_iter().map(|(k, ..)| k).collect();
        assert_eq!(
            keys,
            [
                segment_key(10, 20, 1, 900, 990),
                segment_key(21, 30, 1, 991, 999)
            ]
        );
        assert_eq!(cat.max_txid(), 10);
        assert_eq!(cat.newest().unwrap().lineage, 2);
        // Lineage 1's objects before the cut stay: they restore 1..=9.
        assert_eq!(cat.segments.len(), 1);
    }

    #[test]
    fn a_copied_in_object_loses_to_the_lineage_with_snapshots_and_is_not_late() {
        // A segment of another replica, written after this replica's objects.
        let foreign = segment_key(3, 5, 9, 5000, 5100);
        let cat = Catalog::from_keys(
            &[
                snapshot_key(1, 1, 100),
                segment_key(2, 9, 1, 200, 800),
                foreign.clone(),
            ],
            1,
        );
        assert_eq!(superseded(&cat), vec![(foreign, 1, false)]);
        assert_eq!(cat.chains(&HashSet::new())[0].max_txid(), 9);
    }

    #[test]
    fn two_lineages_written_at_the_same_time_are_not_late() {
        // Both have snapshots and their times interleave: a second writer.
        let cat = Catalog::from_keys(
            &[
                snapshot_key(1, 1, 100),
                segment_key(2, 9, 1, 200, 800),
                snapshot_key(5, 2, 300),
                segment_key(6, 8, 2, 400, 900),
            ],
            1,
        );
        assert!(cat.superseded.iter().all(|s| !s.late && s.by_lineage == 2));
        assert_eq!(cat.superseded.len(), 1);
        assert_eq!(cat.superseded[0].object.key, segment_key(2, 9, 1, 200, 800));
    }

    #[test]
    fn lineages_in_txid_order_are_untouched() {
        let cat = Catalog::from_keys(
            &[
                snapshot_key(1, 1, 100),
                segment_key(2, 9, 1, 200, 800),
                snapshot_key(10, 2, 2000),
                segment_key(11, 12, 2, 2100, 2200),
                snapshot_key(13, 3, 3000),
            ],
            1,
        );
        assert!(cat.superseded.is_empty());
        assert_eq!(cat.snapshots.len() + cat.segments.len(), 5);
    }
}
