//! Retention planning: which snapshots to keep, by which rule, and which objects
//! no kept snapshot needs any more. Planned first (so `prune --dry-run` and
//! tests need no I/O), then executed.
//!
//! Two kinds of rules keep snapshots:
//! * the *window* rules (`count`, `age`, `min`) keep the newest snapshots, and
//!   every segment after the oldest of them, so every transaction from there to
//!   now stays restorable;
//! * the *calendar* rules (`daily`, `weekly`, `monthly`) and pins keep older
//!   snapshots too, each restorable at its own transaction only.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

use crate::catalog::Catalog;
use crate::catalog::{ObjectInfo, SNAPSHOT_DIR};
use crate::store::{ObjectStore, PutMode, StoreError};

/// Folder of pin markers: `pins/<snapshot file name>`.
pub const PIN_DIR: &str = "pins/";

/// Which snapshots to keep. Rules combine: a snapshot is kept when any rule
/// keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The newest `count` snapshots.
    pub count: Option<usize>,
    /// Snapshots taken within this long before now.
    pub age: Option<Duration>,
    /// The newest snapshot of each of the last `daily` days (UTC) that have one.
    pub daily: usize,
    /// Likewise per ISO week.
    pub weekly: usize,
    /// Likewise per calendar month.
    pub monthly: usize,
    /// Never fewer than this many (newest) snapshots; at least 1.
    pub min: usize,
}

impl Default for RetentionPolicy {
    /// The seeds' default: seven snapshots (a week of daily ones).
    fn default() -> Self {
        RetentionPolicy {
            count: Some(7),
            age: None,
            daily: 0,
            weekly: 0,
            monthly: 0,
            min: 1,
        }
    }
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// One of the newest `count`.
    Newest(usize),
    /// Taken within `age` of now.
    WithinAge,
    /// Kept to reach the minimum.
    Minimum,
    /// The newest of its day (`YYYY-MM-DD`).
    Daily(String),
    /// The newest of its ISO week (`YYYY-Www`).
    Weekly(String),
    /// The newest of its month (`YYYY-MM`).
    Monthly(String),
    /// Pinned with `walstream pin`.
    Pinned,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Newest(n) => write!(f, "one of the newest {n}"),
            Reason::WithinAge => write!(f, "within retention_age"),
            Reason::Minimum => write!(f, "minimum kept"),
            Reason::Daily(d) => write!(f, "daily {d}"),
            Reason::Weekly(w) => write!(f, "weekly {w}"),
            Reason::Monthly(m) => write!(f, "monthly {m}"),
            Reason::Pinned => write!(f, "pinned"),
        }
    }
}

impl Reason {
    /// Window rules keep the segments after the snapshot too.
    fn keeps_window(&self) -> bool {
        matches!(
            self,
            Reason::Newest(_) | Reason::WithinAge | Reason::Minimum
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub snapshot: ObjectInfo,
    pub reasons: Vec<Reason>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Snapshots kept, oldest first, each with the rules that keep it.
    pub keep: Vec<Kept>,
    /// Txid from which every transaction stays restorable (the oldest snapshot
    /// kept by a window rule); `None` for an empty replica.
    pub window_from: Option<u64>,
    /// Objects to delete, snapshots first (so an interrupted prune never leaves a
    /// kept snapshot without its segments).
    pub delete: Vec<ObjectInfo>,
}

/// Plans retention at `now_ms` for the snapshots and segments in `catalog`;
/// `pins` are snapshot keys that are kept whatever the policy says.
pub fn plan(
    catalog: &Catalog,
    policy: &RetentionPolicy,
    pins: &BTreeSet<String>,
    now_ms: i64,
) -> RetentionPlan {
    let snaps = &catalog.snapshots;
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); snaps.len()];
    // Newest first: index i counts back from the newest snapshot.
    let newest_first = || (0..snaps.len()).rev();
    for (rank, i) in newest_first().enumerate() {
        if policy.count.is_some_and(|n| rank < n) {
            reasons[i].push(Reason::Newest(policy.count.unwrap_or(0)));
        }
        let age_ms = policy.age.map(|a| a.as_millis() as i64);
        if age_ms.is_some_and(|a| snaps[i].max_time_ms >= now_ms - a) {
            reasons[i].push(Reason::WithinAge);
        }
    }
    for (rank, i) in newest_first().enumerate() {
        if rank >= policy.min.max(1) {
            break;
        }
        if !reasons[i].iter().any(Reason::keeps_window) {
            reasons[i].push(Reason::Minimum);
        }
    }
    let tiers = [
        (policy.daily, Tier::Daily),
        (policy.weekly, Tier::Weekly),
        (policy.monthly, Tier::Monthly),
    ];
    for (limit, tier) in tiers {
        let mut seen = BTreeSet::new();
        for i in newest_first() {
            if seen.len() >= limit {
                break;
            }
            let Some(t) = DateTime::<Utc>::from_timestamp_millis(snaps[i].max_time_ms) else {
                continue;
            };
            let reason = tier.bucket(t);
            if seen.insert(reason.clone()) {
                reasons[i].push(reason);
            }
        }
    }
    for (i, s) in snaps.iter().enumerate() {
        if pins.contains(&s.key) {
            reasons[i].push(Reason::Pinned);
        }
    }
    assemble(catalog, reasons)
}

#[derive(Debug, Clone, Copy)]
enum Tier {
    Daily,
    Weekly,
    Monthly,
}

impl Tier {
    /// The calendar period `t` falls in, as the reason that keeps its newest.
    fn bucket(self, t: DateTime<Utc>) -> Reason {
        match self {
            Tier::Daily => Reason::Daily(t.format("%Y-%m-%d").to_string()),
            Tier::Weekly => {
                let w = t.iso_week();
                Reason::Weekly(format!("{}-W{:02}", w.year(), w.week()))
            }
            Tier::Monthly => Reason::Monthly(t.format("%Y-%m").to_string()),
        }
    }
}

/// Turns per-snapshot reasons into the plan: unkept snapshots and every segment
/// at or before the window's first txid are deleted.
fn assemble(catalog: &Catalog, reasons: Vec<Vec<Reason>>) -> RetentionPlan {
    let mut plan = RetentionPlan::default();
    for (s, mut why) in catalog.snapshots.iter().zip(reasons) {
        if why.is_empty() {
            plan.delete.push(s.clone());
        } else {
            why.sort();
            if plan.window_from.is_none() && why.iter().any(Reason::keeps_window) {
                plan.window_from = Some(s.max_txid);
            }
            plan.keep.push(Kept {
                snapshot: s.clone(),
                reasons: why,
            });
        }
    }
    if let Some(from) = plan.window_from {
        plan.delete.extend(
            catalog
                .segments
                .iter()
                .filter(|s| s.max_txid <= from)
                .cloned(),
        );
        // Only once the window has passed them: should the clock have ranked
        // two lineages wrongly, nothing inside the window is ever deleted.
        plan.delete.extend(
            catalog
                .superseded
                .iter()
                .filter(|s| s.object.max_txid < from)
                .map(|s| s.object.clone()),
        );
    }
    plan
}

/// Deletes what the plan says, in its order.
pub async fn execute(store: &Arc<dyn ObjectStore>, plan: &RetentionPlan) -> Result<(), StoreError> {
    for obj in &plan.delete {
        store.delete(&obj.key).await?;
    }
    Ok(())
}

/// The pinned snapshot keys of a replica.
pub async fn load_pins(store: &Arc<dyn ObjectStore>) -> Result<BTreeSet<String>, StoreError> {
    Ok(store
        .list(PIN_DIR)
        .await?
        .into_iter()
        .filter_map(|m| {
            m.key
                .strip_prefix(PIN_DIR)
                .map(|name| format!("{SNAPSHOT_DIR}{name}"))
        })
        .collect())
}

/// The marker key that pins `snapshot_key`, or `None` when it is not a snapshot key.
pub fn pin_key(snapshot_key: &str) -> Option<String> {
    let name = snapshot_key.strip_prefix(SNAPSHOT_DIR)?;
    name.ends_with(".wsnap").then(|| format!("{PIN_DIR}{name}"))
}

/// Pins (`true`) or unpins a snapshot that exists in the replica.
pub async fn set_pin(
    store: &Arc<dyn ObjectStore>,
    snapshot_key: &str,
    pinned: bool,
) -> Result<(), StoreError> {
    let key = pin_key(snapshot_key).ok_or_else(|| StoreError::InvalidKey {
        key: snapshot_key.to_string(),
        reason: "not a snapshot key (snapshots/<txid>-<lineage>-<time>.wsnap, as `list` shows)",
    })?;
    if pinned {
        store.get_range(snapshot_key, 0, 4).await?;
        store
            .put(
                &key,
                bytes::Bytes::from_static(b"pinned\n"),
                PutMode::Overwrite,
            )
            .await
    } else {
        store.delete(&key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{segment_key, snapshot_key};

    const DAY: i64 = 86_400_000;
    /// 2026-01-01T03:00:00Z, a Thursday.
    const T0: i64 = 1_767_236_400_000;

    /// One snapshot a day for `days` days (txid = 10 * day + 1) with a segment
    /// between each pair.
    fn daily_history(days: i64) -> Catalog {
        let mut keys = Vec::new();
        for d in 0..days {
            let txid = (10 * d + 1) as u64;
            keys.push(snapshot_key(txid, 1, T0 + d * DAY));
            keys.push(segment_key(
                txid + 1,
                txid + 9,
                1,
                T0 + d * DAY + 1,
                T0 + d * DAY + 2,
            ));
        }
        Catalog::from_keys(&keys, 1)
    }

    fn kept_days(p: &RetentionPlan) -> Vec<i64> {
        p.keep
            .iter()
            .map(|k| (k.snapshot.max_time_ms - T0) / DAY)
            .collect()
    }

    fn policy() -> RetentionPolicy {
        RetentionPolicy {
            count: None,
            ..RetentionPolicy::default()
        }
    }

    #[test]
    fn count_keeps_the_newest_and_the_segments_after_the_oldest_kept() {
        let c = daily_history(10);
        let p = plan(
            &c,
            &RetentionPolicy::default(),
            &BTreeSet::new(),
            T0 + 10 * DAY,
        );
        assert_eq!(kept_days(&p), (3..10).collect::<Vec<_>>());
        assert_eq!(p.window_from, Some(31));
        // Days 0-2 and their segments, plus day 3's predecessor segment (txids 22..=30).
        let deleted_snaps = p
            .delete
            .iter()
            .filter(|o| o.key.starts_with("snap"))
            .count();
        assert_eq!(deleted_snaps, 3);
        assert!(p.delete.iter().all(|o| o.max_txid <= 31));
        assert!(c
            .segments
            .iter()
            .filter(|s| s.min_txid > 31)
            .all(|s| !p.delete.contains(s)));
        // Snapshots come before segments in the deletion order.
        let first_segment = p.delete.iter().position(|o| o.key.starts_with("seg"));
        assert!(p.delete[..first_segment.unwrap()]
            .iter()
            .all(|o| o.key.starts_with("snap")));
    }

    #[test]
    fn superseded_uploads_go_only_once_the_window_has_passed_them() {
        // Day 3's lineage-1 segment 32..=40 was re-numbered by lineage 2, which
        // a later process started at 32 (its snapshot written after).
        let mut keys: Vec<String> = (0..3)
            .flat_map(|d| {
                let txid = (10 * d + 1) as u64;
                [
                    snapshot_key(txid, 1, T0 + d * DAY),
                    segment_key(txid + 1, txid + 9, 1, T0 + d * DAY + 1, T0 + d * DAY + 2),
                ]
            })
            .collect();
        let late = segment_key(31, 40, 1, T0 + 3 * DAY, T0 + 3 * DAY + 1);
        keys.push(late.clone());
        for d in 3..10 {
            let txid = (10 * d + 1) as u64;
            keys.push(snapshot_key(txid, 2, T0 + d * DAY + 5));
        }
        let c = Catalog::from_keys(&keys, 1);
        assert_eq!(c.superseded.len(), 1);
        let policy = |n| RetentionPolicy {
            count: Some(n),
            ..RetentionPolicy::default()
        };
        // The window starts at day 2 (txid 21): the late object (31..=40) is
        // inside it and stays.
        let p = plan(&c, &policy(8), &BTreeSet::new(), T0 + 10 * DAY);
        assert_eq!(p.window_from, Some(21));
        assert!(p.delete.iter().all(|o| o.key != late));
        // Once the window starts past it, it goes with the pruned objects.
        let p = plan(&c, &policy(5), &BTreeSet::new(), T0 + 10 * DAY);
        assert_eq!(p.window_from, Some(51));
        assert!(p.delete.iter().any(|o| o.key == late));
    }

    #[test]
    fn age_keeps_what_is_recent_and_the_minimum_always_holds() {
        let c = daily_history(10);
        let age = RetentionPolicy {
            age: Some(Duration::from_secs(3 * 86_400)),
            ..policy()
        };
        let p = plan(&c, &age, &BTreeSet::new(), T0 + 9 * DAY);
        assert_eq!(kept_days(&p), vec![6, 7, 8, 9]);
        // Everything older than the age: the minimum (1 by default) still holds.
        let p = plan(&c, &age, &BTreeSet::new(), T0 + 100 * DAY);
        assert_eq!(kept_days(&p), vec![9]);
        assert_eq!(p.keep[0].reasons, vec![Reason::Minimum]);
        let min3 = RetentionPolicy { min: 3, ..age };
        let p = plan(&c, &min3, &BTreeSet::new(), T0 + 100 * DAY);
        assert_eq!(kept_days(&p), vec![7, 8, 9]);
        // count = 0 is not "keep nothing".
        let zero = RetentionPolicy {
            count: Some(0),
            ..policy()
        };
        assert_eq!(kept_days(&plan(&c, &zero, &BTreeSet::new(), T0)), vec![9]);
    }

    #[test]
    fn seven_daily_four_weekly_twelve_monthly_over_a_year() {
        let c = daily_history(365);
        let gfs = RetentionPolicy {
            count: Some(7),
            daily: 7,
            weekly: 4,
            monthly: 12,
            ..policy()
        };
        let p = plan(&c, &gfs, &BTreeSet::new(), T0 + 365 * DAY);
        let days = kept_days(&p);
        // The last 7 days (358..=364); Sundays closing the 3 weeks before the
        // newest (ISO weeks end on Sunday; 2026-01-04 is day 3); the last day of
        // each of the 11 months before December, and December's newest (day 364).
        let mut expected: Vec<i64> = (358..365).collect();
        expected.extend([3 + 7 * 49, 3 + 7 * 50]); // Sundays 2026-12-13 (day 346), 12-20 (353)
        for month_end in [30, 58, 89, 119, 150, 180, 211, 242, 272, 303, 333] {
            expected.push(month_end);
        }
        expected.sort();
        expected.dedup();
        assert_eq!(days, expected, "kept days of the year");
        assert_eq!(p.keep.len(), 7 + 2 + 11);
        // Only the window rules keep segments: the last 7 days' worth.
        assert_eq!(p.window_from, Some(10 * 358 + 1));
        let reasons: Vec<String> = p.keep[0].reasons.iter().map(|r| r.to_string()).collect();
        assert_eq!(reasons, vec!["monthly 2026-01"]);
        let newest: Vec<String> = p
            .keep
            .last()
            .unwrap()
            .reasons
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(
            newest,
            vec![
                "one of the newest 7",
                "daily 2026-12-31",
                "weekly 2026-W53",
                "monthly 2026-12"
            ]
        );
    }

    #[test]
    fn pins_keep_a_snapshot_whatever_the_policy() {
        let c = daily_history(10);
        let pinned = c.snapshots[1].key.clone();
        let pins = BTreeSet::from([pinned.clone()]);
        let p = plan(&c, &RetentionPolicy::default(), &pins, T0 + 10 * DAY);
        assert_eq!(kept_days(&p), vec![1, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(p.keep[0].reasons, vec![Reason::Pinned]);
        assert!(!p.delete.iter().any(|o| o.key == pinned));
        // A pin does not stretch the window: its segments still go.
        assert_eq!(p.window_from, Some(31));
        assert_eq!(
            pin_key(&pinned).unwrap(),
            format!("pins/{}", &pinned["snapshots/".len()..])
        );
        assert_eq!(pin_key("segments/x.wseg"), None);
    }

    #[test]
    fn an_empty_replica_plans_nothing() {
        let p = plan(
            &Catalog::default(),
            &RetentionPolicy::default(),
            &BTreeSet::new(),
            T0,
        );
        assert_eq!(p, RetentionPlan::default());
    }
}
