//! Verification: read every object, check its CRCs, its name, txid continuity and
//! the whole-database checksum chain, so a single flipped byte anywhere is found.
//!
//! Per lineage, the oldest readable snapshot's pages are hashed and every later
//! segment's pages are replayed on those hashes (8 bytes per page, no disk): each
//! commit's recorded checksum and each later snapshot's checksum must match.
//!
//! Encrypted objects are decrypted with the given keys; the report lists which
//! key ids the replica's objects need and whether each is available.
//!
//! [`sample`] restricts a run to a stable share of the objects (so N nightly
//! runs cover the replica); [`deep`] proves restores end to end.

pub mod deep;
pub mod sample;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::io::SyncIoBridge;

use crate::catalog::{check_name, Catalog, Kind, ObjectInfo, Superseded, Window};
use crate::checksum::PageHashes;
use crate::crypto::{KeyId, Keyring};
use crate::format::{BodyReader, ObjectHeader};
use crate::store::{ObjectStore, StoreError};

pub use sample::Sample;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data that should be restorable is not, or is wrong.
    Error,
    /// Harmless but unexpected (an object nothing can use).
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// The object concerned, when there is one.
    pub key: Option<String>,
    pub problem: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub objects: usize,
    pub bytes: u64,
    pub commits_checked: u64,
    pub problems: Vec<Problem>,
    /// Objects stored without encryption.
    pub unencrypted_objects: usize,
    /// Every key id the objects were encrypted with, in id order.
    pub keys: Vec<KeyUsage>,
    #[serde(skip)]
    pub window: Option<Window>,
    /// The share of objects this run read (`None`: all of them).
    pub sample: Option<Sample>,
    /// Keys of the objects whose bytes this run read, in the order read.
    pub checked_keys: Vec<String>,
}

/// What to verify and with which keys.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub keys: Keyring,
    /// Read only this share of the objects (listing checks still cover all).
    pub sample: Option<Sample>,
}

/// How many objects one key encrypted, and whether that key is configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    pub key_id: String,
    pub objects: usize,
    pub available: bool,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        !self.problems.iter().any(|p| p.severity == Severity::Error)
    }
    fn note_key(&mut self, id: Option<KeyId>, keys: &Keyring) {
        let Some(id) = id else {
            self.unencrypted_objects += 1;
            return;
        };
        let key_id = id.to_string();
        match self.keys.iter_mut().find(|k| k.key_id == key_id) {
            Some(k) => k.objects += 1,
            None => {
                self.keys.push(KeyUsage {
                    key_id,
                    objects: 1,
                    available: keys.find(id).is_some(),
                });
                self.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
            }
        }
    }
    pub(crate) fn error(&mut self, key: Option<&str>, problem: impl Into<String>) {
        self.push(Severity::Error, key, problem.into());
    }
    pub(crate) fn push(&mut self, severity: Severity, key: Option<&str>, problem: String) {
        self.problems.push(Problem {
            severity,
            key: key.map(str::to_string),
            problem,
        });
    }
}

/// Verifies every object in an unencrypted replica (encrypted objects are
/// reported as needing their key).
pub async fn verify(store: &Arc<dyn ObjectStore>) -> Result<VerifyReport, StoreError> {
    verify_with_keys(store, &Keyring::default()).await
}

/// Verifies every object in the replica, decrypting with `keys`.
pub async fn verify_with_keys(
    store: &Arc<dyn ObjectStore>,
    keys: &Keyring,
) -> Result<VerifyReport, StoreError> {
    let opts = VerifyOptions {
        keys: keys.clone(),
        sample: None,
    };
    verify_with(store, &opts).await
}

/// Verifies the replica (or the share `opts.sample` selects).
pub async fn verify_with(
    store: &Arc<dyn ObjectStore>,
    opts: &VerifyOptions,
) -> Result<VerifyReport, StoreError> {
    let catalog = Catalog::load(store).await?;
    let ctx = Ctx {
        store: Arc::clone(store),
        keys: opts.keys.clone(),
        rt: Handle::current(),
        sample: opts.sample,
    };
    tokio::task::spawn_blocking(move || verify_blocking(&ctx, &catalog))
        .await
        .map_err(|e| StoreError::Io {
            store: "verify".into(),
            op: "join",
            key: String::new(),
            source: std::io::Error::other(e.to_string()),
        })?
}

/// What reading objects needs.
struct Ctx {
    store: Arc<dyn ObjectStore>,
    keys: Keyring,
    rt: Handle,
    sample: Option<Sample>,
}

fn verify_blocking(ctx: &Ctx, catalog: &Catalog) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport {
        window: catalog.window(),
        sample: ctx.sample,
        ..Default::default()
    };
    for key in &catalog.unknown {
        report.push(
            Severity::Warning,
            Some(key),
            "not a walstream object name".into(),
        );
    }
    for s in &catalog.superseded {
        report_superseded(s, &mut report);
    }
    let mut lineages: Vec<u64> = catalog
        .snapshots
        .iter()
        .chain(&catalog.segments)
        .map(|o| o.lineage)
        .collect();
    lineages.sort_unstable();
    lineages.dedup();
    match ctx.sample {
        Some(sample) => verify_sample(ctx, catalog, sample, &mut report)?,
        None => {
            for lineage in lineages {
                verify_lineage(ctx, catalog, lineage, &mut report)?;
            }
        }
    }
    check_window(catalog, &mut report);
    Ok(report)
}

/// A late upload is harmless (a warning); lineages written at the same time
/// mean a second writer or a copied-in object, which the user must find.
fn report_superseded(s: &Superseded, report: &mut VerifyReport) {
    let (min, max, by) = (s.object.min_txid, s.object.max_txid, s.by_lineage);
    if s.late {
        report.push(
            Severity::Warning,
            Some(&s.object.key),
            format!(
                "txids {min}..={max} are held by lineage {by:016x}, written later: this upload \
                 of a stopped walstream process landed late; restores ignore it and retention \
                 deletes it once the window has passed it"
            ),
        );
    } else {
        report.error(
            Some(&s.object.key),
            format!(
                "txids {min}..={max} of lineage {:016x} overlap lineage {by:016x}, and both were \
                 written at the same time: two walstream processes write this replica, or the \
                 object was copied in from another replica. Restores use lineage {by:016x} and \
                 ignore this object; stop the other writer (each database needs its own \
                 replica location), then delete the object",
                s.object.lineage
            ),
        );
    }
}

/// Each selected object on its own: CRCs, tags, name, and a snapshot's pages
/// against its recorded checksum. The checksum replay across objects needs
/// every object of a lineage, so a sampled run cannot do it.
fn verify_sample(
    ctx: &Ctx,
    catalog: &Catalog,
    sample: Sample,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let all = catalog.snapshots.iter().chain(&catalog.segments);
    for obj in all.filter(|o| sample.contains(&o.key)) {
        report.objects += 1;
        report.bytes += obj.size;
        report.checked_keys.push(obj.key.clone());
        match obj.kind {
            Kind::Snapshot => {
                read_snapshot(ctx, obj, report)?;
            }
            Kind::Segment => {
                read_segment(ctx, obj, report)?;
            }
        }
    }
    Ok(())
}

/// Objects of one lineage in the order a chain takes them: by first txid, the
/// one reaching furthest first (a compacted segment before the small ones it
/// was made from, should they still be there), a segment containing a
/// snapshot's txid before that snapshot (so the replay can compare them),
/// except around the lineage's first remaining snapshot: nothing before it can
/// be replayed, so it comes first, and a compacted segment that straddles it
/// (its earlier commits pruned with the older snapshots) replays from it.
fn lineage_objects(catalog: &Catalog, lineage: u64) -> Vec<&ObjectInfo> {
    let mut objs: Vec<&ObjectInfo> = catalog
        .snapshots
        .iter()
        .chain(&catalog.segments)
        .filter(|o| o.lineage == lineage)
        .collect();
    let first = objs
        .iter()
        .filter(|o| o.kind == Kind::Snapshot)
        .map(|o| o.max_txid)
        .min();
    objs.sort_by_key(|o| {
        let snapshot = o.kind == Kind::Snapshot;
        let straddles = first.is_some_and(|f| !snapshot && o.min_txid < f && o.max_txid >= f);
        let from = match first {
            Some(f) if straddles => f,
            _ => o.min_txid,
        };
        (
            from,
            Some(from) == first && !snapshot,
            std::cmp::Reverse(o.max_txid),
            snapshot,
        )
    });
    objs
}

/// The state replayed along a lineage since its last readable snapshot.
struct Replayed {
    hashes: PageHashes,
    /// The txid the hashes describe.
    at: u64,
    /// Checksums the replayed commits recorded at the txids of the lineage's
    /// snapshots, to compare snapshots the replay went past.
    at_snapshots: BTreeMap<u64, u64>,
}

fn verify_lineage(
    ctx: &Ctx,
    catalog: &Catalog,
    lineage: u64,
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    let snapshot_txids: BTreeSet<u64> = catalog
        .snapshots
        .iter()
        .filter(|s| s.lineage == lineage)
        .map(|s| s.max_txid)
        .collect();
    let mut state: Option<Replayed> = None;
    for obj in lineage_objects(catalog, lineage) {
        report.objects += 1;
        report.bytes += obj.size;
        report.checked_keys.push(obj.key.clone());
        match obj.kind {
            Kind::Snapshot => {
                let Some((header, hashes)) = read_snapshot(ctx, obj, report)? else {
                    continue;
                };
                check_snapshot(&mut state, obj, header.commits[0].checksum, hashes, report);
            }
            Kind::Segment => {
                let Some((header, records)) = read_segment(ctx, obj, report)? else {
                    state = None;
                    continue;
                };
                let Some(r) = state.as_mut() else {
                    report.push(
                        Severity::Warning,
                        Some(&obj.key),
                        "no snapshot of its lineage precedes this segment (prunable)".into(),
                    );
                    continue;
                };
                if obj.min_txid > r.at + 1 {
                    report.error(
                        Some(&obj.key),
                        format!(
                            "txids {}..={} are missing before this segment",
                            r.at + 1,
                            obj.min_txid - 1
                        ),
                    );
                    state = None;
                    continue;
                }
                replay(r, &header, &records, obj, &snapshot_txids, report);
            }
        }
    }
    Ok(())
}

/// Compares a snapshot with the replayed state at its txid, or starts the
/// replay from it when the replay has not reached it.
fn check_snapshot(
    state: &mut Option<Replayed>,
    obj: &ObjectInfo,
    recorded: Option<u64>,
    hashes: PageHashes,
    report: &mut VerifyReport,
) {
    let txid = obj.max_txid;
    match state.as_ref() {
        Some(r) if r.at >= txid => {
            let replayed = if r.at == txid {
                Some(r.hashes.checksum())
            } else {
                r.at_snapshots.get(&txid).copied()
            };
            if let (Some(a), Some(b)) = (replayed, recorded) {
                if a != b {
                    report.error(
                        Some(&obj.key),
                        format!("snapshot checksum differs from the state replayed to txid {txid}"),
                    );
                }
            }
        }
        _ => {
            *state = Some(Replayed {
                hashes,
                at: txid,
                at_snapshots: BTreeMap::new(),
            })
        }
    }
}

fn replay(
    r: &mut Replayed,
    header: &ObjectHeader,
    records: &[(usize, u32, u64)],
    obj: &ObjectInfo,
    snapshot_txids: &BTreeSet<u64>,
    report: &mut VerifyReport,
) {
    let mut next = 0;
    for (i, commit) in header.commits.iter().enumerate() {
        let start = next;
        while next < records.len() && records[next].0 == i {
            next += 1;
        }
        // Already replayed from an object reaching further (a compacted
        // segment beside the ones it was made from).
        if commit.txid <= r.at {
            continue;
        }
        for &(_, pgno, h) in &records[start..next] {
            r.hashes.set_hash(pgno, h);
        }
        r.hashes.resize(commit.db_pages);
        report.commits_checked += 1;
        let checksum = r.hashes.checksum();
        if commit.checksum.is_some_and(|c| c != checksum) {
            report.error(
                Some(&obj.key),
                format!(
                    "txid {}: recorded database checksum does not match the replayed pages",
                    commit.txid
                ),
            );
        }
        if snapshot_txids.contains(&commit.txid) {
            r.at_snapshots.insert(commit.txid, checksum);
        }
        r.at = commit.txid;
    }
}

fn read_snapshot(
    ctx: &Ctx,
    obj: &ObjectInfo,
    report: &mut VerifyReport,
) -> Result<Option<(ObjectHeader, PageHashes)>, StoreError> {
    let reader = match ctx.rt.block_on(ctx.store.get_reader(&obj.key)) {
        Ok(r) => r,
        Err(e) if e.is_not_found() => {
            report.error(Some(&obj.key), "object vanished during verification");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut sync = std::io::BufReader::with_capacity(
        1 << 20,
        SyncIoBridge::new_with_handle(reader, ctx.rt.clone()),
    );
    let result = (|| {
        let header = ObjectHeader::decode(&mut sync)?;
        check_name(obj, &header)
            .map_err(|e| crate::format::FormatError::Malformed(e.to_string()))?;
        report.note_key(header.key_id(), &ctx.keys);
        let mut body = BodyReader::new(&mut sync, header.clone(), &ctx.keys)?;
        let mut hashes = PageHashes::new(header.page_size);
        let mut page = vec![0u8; header.page_size as usize];
        while let Some(r) = body.next_page(&mut page)? {
            hashes.set_page(r.pgno, &page);
        }
        body.finish()?;
        Ok::<_, crate::format::FormatError>((header, hashes))
    })();
    match result {
        Ok((header, hashes)) => {
            let c = header.commits[0];
            if hashes.pages() != c.db_pages || c.checksum.is_some_and(|x| x != hashes.checksum()) {
                report.error(
                    Some(&obj.key),
                    "snapshot pages do not match its recorded checksum",
                );
                return Ok(None);
            }
            Ok(Some((header, hashes)))
        }
        Err(e) => {
            report.error(Some(&obj.key), e.to_string());
            Ok(None)
        }
    }
}

/// (commit index, page number, page hash) of every page record.
type SegmentRecords = Vec<(usize, u32, u64)>;

fn read_segment(
    ctx: &Ctx,
    obj: &ObjectInfo,
    report: &mut VerifyReport,
) -> Result<Option<(ObjectHeader, SegmentRecords)>, StoreError> {
    let bytes = match ctx.rt.block_on(ctx.store.get(&obj.key)) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            report.error(Some(&obj.key), "object vanished during verification");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let result = (|| {
        let mut cursor = &bytes[..];
        let header = ObjectHeader::decode(&mut cursor)?;
        check_name(obj, &header)
            .map_err(|e| crate::format::FormatError::Malformed(e.to_string()))?;
        report.note_key(header.key_id(), &ctx.keys);
        let mut body = BodyReader::new(cursor, header.clone(), &ctx.keys)?;
        let mut page = vec![0u8; header.page_size as usize];
        let mut records = Vec::new();
        while let Some(r) = body.next_page(&mut page)? {
            records.push((r.commit, r.pgno, crate::checksum::page_hash(r.pgno, &page)));
        }
        body.finish()?;
        Ok::<_, crate::format::FormatError>((header, records))
    })();
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            report.error(Some(&obj.key), e.to_string());
            Ok(None)
        }
    }
}

/// A gap that retention made on purpose: the snapshot before it is kept on its
/// own (no segments follow it) and no segment reaches into the gap.
fn pruned_gap(catalog: &Catalog, chains: &[crate::catalog::Chain<'_>], hi: u64, next: u64) -> bool {
    let bare_before = chains
        .iter()
        .filter(|c| c.max_txid() == hi)
        .all(|c| c.segments.is_empty());
    let segment_inside = catalog
        .segments
        .iter()
        .any(|s| s.max_txid > hi && s.min_txid < next);
    bare_before && !segment_inside
}

/// Every txid from the oldest snapshot to the newest object must be restorable,
/// except gaps retention made before snapshots it keeps on their own.
fn check_window(catalog: &Catalog, report: &mut VerifyReport) {
    let chains = catalog.chains(&Default::default());
    let mut ranges: Vec<(u64, u64)> = chains
        .iter()
        .map(|c| (c.snapshot.max_txid, c.max_txid()))
        .collect();
    ranges.sort_unstable();
    let Some(&(mut lo, mut hi)) = ranges.first() else {
        if !catalog.segments.is_empty() {
            report.error(
                None,
                "the replica has segments but no snapshot: nothing is restorable",
            );
        }
        return;
    };
    for &(a, b) in &ranges[1..] {
        if a > hi + 1 && !pruned_gap(catalog, &chains, hi, a) {
            report.error(
                None,
                format!(
                    "txids {}..={} are not restorable (between {lo}..={hi} and a later snapshot)",
                    hi + 1,
                    a - 1
                ),
            );
            lo = a;
        }
        hi = hi.max(b);
    }
    let newest = catalog.max_txid();
    if newest > hi {
        report.error(
            None,
            format!(
                "txids {}..={newest} exist in segments but no chain from a snapshot reaches them",
                hi + 1
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: Kind, min_txid: u64, max_txid: u64) -> ObjectInfo {
        ObjectInfo {
            key: format!("{kind:?}-{min_txid}-{max_txid}"),
            kind,
            lineage: 7,
            min_txid,
            max_txid,
            min_time_ms: 0,
            max_time_ms: 0,
            size: 0,
        }
    }

    fn order(snapshots: Vec<ObjectInfo>, segments: Vec<ObjectInfo>) -> Vec<String> {
        let catalog = Catalog {
            snapshots,
            segments,
            ..Default::default()
        };
        lineage_objects(&catalog, 7)
            .iter()
            .map(|o| o.key.clone())
            .collect()
    }

    #[test]
    fn a_segment_straddling_a_later_snapshot_comes_first() {
        let keys = order(
            vec![obj(Kind::Snapshot, 1, 1), obj(Kind::Snapshot, 24, 24)],
            vec![obj(Kind::Segment, 2, 23), obj(Kind::Segment, 24, 28)],
        );
        assert_eq!(
            keys,
            [
                "Snapshot-1-1",
                "Segment-2-23",
                "Segment-24-28",
                "Snapshot-24-24"
            ]
        );
    }

    #[test]
    fn the_lineage_s_first_snapshot_precedes_a_segment_straddling_it() {
        // Found by the torture suite against S3 (seed 0x1C8A6929628A7E5D):
        // the older snapshot and segments were pruned, the compacted segment
        // 24..=28 stayed, and verify reported txids 25..=28 missing.
        let keys = order(
            vec![obj(Kind::Snapshot, 24, 24)],
            vec![obj(Kind::Segment, 24, 28), obj(Kind::Segment, 29, 29)],
        );
        assert_eq!(keys, ["Snapshot-24-24", "Segment-24-28", "Segment-29-29"]);
    }

    #[test]
    fn a_segment_reaching_back_before_the_first_snapshot_replays_from_it() {
        // Seed 0x5EED0053F4170001: the compacted segment 587..=637 outlived
        // the snapshot before it; the lineage's first snapshot is at 633.
        let keys = order(
            vec![obj(Kind::Snapshot, 633, 633)],
            vec![
                obj(Kind::Segment, 560, 586),
                obj(Kind::Segment, 587, 637),
                obj(Kind::Segment, 638, 638),
            ],
        );
        assert_eq!(
            keys,
            [
                "Segment-560-586",
                "Snapshot-633-633",
                "Segment-587-637",
                "Segment-638-638"
            ]
        );
    }
}
