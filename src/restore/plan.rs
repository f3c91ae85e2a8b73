//! Restore planning: from the catalog (one listing) and a target, the snapshot
//! and segments to apply. Pure except for reading one segment header when a
//! timestamp falls inside a segment's time range.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::catalog::{fetch_header, Catalog, ObjectInfo};
use crate::error::RestoreError;
use crate::store::ObjectStore;

/// What state to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest restorable state.
    Latest,
    /// The state right after transaction `n`.
    Txid(u64),
    /// The state after every transaction observed at or before this time
    /// (milliseconds since the Unix epoch).
    Time(i64),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => write!(f, "the latest state"),
            Target::Txid(n) => write!(f, "txid {n}"),
            Target::Time(ms) => write!(f, "time {}", format_time(*ms)),
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The objects that rebuild one state, in apply order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    pub target_txid: u64,
    pub lineage: u64,
    pub snapshot: ObjectInfo,
    /// Contiguous segments after the snapshot, the last one containing the target.
    pub segments: Vec<ObjectInfo>,
}

impl RestorePlan {
    pub fn total_bytes(&self) -> u64 {
        self.snapshot.size + self.segments.iter().map(|s| s.size).sum::<u64>()
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "restore plan: txid {} (lineage {:016x})",
            self.target_txid, self.lineage
        )?;
        writeln!(
            f,
            "  snapshot {} (txid {}, {}, {} bytes)",
            self.snapshot.key,
            self.snapshot.max_txid,
            format_time(self.snapshot.max_time_ms),
            self.snapshot.size
        )?;
        for s in &self.segments {
            let upto = s.max_txid.min(self.target_txid);
            writeln!(
                f,
                "  segment  {} (apply txids {}..={upto}, {} bytes)",
                s.key,
                s.min_txid.max(self.snapshot.max_txid + 1),
                s.size
            )?;
        }
        write!(
            f,
            "  total {} objects, {} bytes",
            1 + self.segments.len(),
            self.total_bytes()
        )
    }
}

fn window_text(catalog: &Catalog) -> String {
    match catalog.window() {
        Some(w) => format!(
            "txids {}..={} ({} .. {})",
            w.min_txid,
            w.max_txid,
            format_time(w.min_time_ms),
            format_time(w.max_time_ms)
        ),
        None => "empty".into(),
    }
}

/// Plans a restore to exactly `txid`, using the newest snapshot whose chain
/// reaches it; objects in `exclude` (found damaged) are not used.
pub fn plan_txid(
    catalog: &Catalog,
    txid: u64,
    exclude: &HashSet<String>,
) -> Result<RestorePlan, RestoreError> {
    let chain = catalog
        .chains(exclude)
        .into_iter()
        .find(|c| c.snapshot.max_txid <= txid && txid <= c.max_txid());
    let Some(chain) = chain else {
        let in_window = catalog
            .chains(&HashSet::new())
            .iter()
            .any(|c| c.snapshot.max_txid <= txid && txid <= c.max_txid());
        return Err(if in_window {
            RestoreError::NoChain {
                target: format!("txid {txid}"),
                reason: format!(
                    "every snapshot and segment path to it is damaged ({})",
                    exclude.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            }
        } else {
            RestoreError::TargetOutOfWindow {
                target: format!("txid {txid}"),
                window: window_text(catalog),
            }
        });
    };
    let segments = chain
        .segments
        .iter()
        .take_while(|s| s.min_txid <= txid)
        .map(|s| (*s).clone())
        .collect();
    Ok(RestorePlan {
        target_txid: txid,
        lineage: chain.snapshot.lineage,
        snapshot: chain.snapshot.clone(),
        segments,
    })
}

/// Resolves `target` to a txid. For a time inside a segment's time range, the
/// segment's header gives each commit's exact time.
pub async fn resolve_target(
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
    target: Target,
) -> Result<u64, RestoreError> {
    let none = HashSet::new();
    let chains = catalog.chains(&none);
    match target {
        Target::Latest => {
            chains
                .iter()
                .map(|c| c.max_txid())
                .max()
                .ok_or_else(|| RestoreError::NoChain {
                    target: target.to_string(),
                    reason: "the replica has no snapshot".into(),
                })
        }
        Target::Txid(n) => Ok(n),
        Target::Time(t) => {
            let mut best: Option<u64> = None;
            let mut straddling: Vec<&ObjectInfo> = Vec::new();
            for c in &chains {
                for o in std::iter::once(c.snapshot).chain(c.segments.iter().copied()) {
                    if o.max_time_ms <= t {
                        best = best.max(Some(o.max_txid));
                    } else if o.min_time_ms <= t {
                        straddling.push(o);
                    }
                }
            }
            for o in straddling {
                if best.is_some_and(|b| b >= o.max_txid) {
                    continue;
                }
                let h = fetch_header(store, o).await.map_err(|e| match e {
                    crate::catalog::HeaderError::Store(s) => RestoreError::Store(s),
                    crate::catalog::HeaderError::Format { key, source } => {
                        RestoreError::Format { key, source }
                    }
                    crate::catalog::HeaderError::Mismatch { key, reason } => {
                        RestoreError::Mismatch { key, reason }
                    }
                })?;
                let within = h
                    .commits
                    .iter()
                    .filter(|c| c.time_ms <= t)
                    .map(|c| c.txid)
                    .max();
                best = best.max(within);
            }
            // The state at T is the one after `best` only if the transaction
            // after it is known (and so known to be later than T): after a
            // snapshot kept on its own, pruned transactions may precede T.
            let next_known = |b: u64| {
                b == catalog.max_txid()
                    || chains
                        .iter()
                        .any(|c| c.snapshot.max_txid <= b + 1 && b < c.max_txid())
            };
            best.filter(|&b| next_known(b))
                .ok_or_else(|| RestoreError::TargetOutOfWindow {
                    target: target.to_string(),
                    window: window_text(catalog),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{segment_key, snapshot_key};

    fn catalog(keys: &[String]) -> Catalog {
        Catalog::from_keys(keys, 10)
    }

    fn sample() -> Catalog {
        catalog(&[
            snapshot_key(1, 1, 1000),
            segment_key(2, 4, 1, 2000, 2000),
            segment_key(5, 5, 1, 3000, 3000),
            snapshot_key(5, 1, 3000),
            segment_key(6, 9, 1, 4000, 4000),
        ])
    }

    #[test]
    fn a_time_after_a_snapshot_kept_on_its_own_is_out_of_the_window() {
        // Snapshot 4 kept by a pin; 5..=9 pruned; the window is 10..=12.
        let c = catalog(&[
            snapshot_key(4, 1, 4000),
            snapshot_key(10, 1, 10_000),
            segment_key(11, 12, 1, 11_000, 12_000),
        ]);
        let store: Arc<dyn ObjectStore> = Arc::new(crate::store::LocalStore::new("/nonexistent"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let at = |t| rt.block_on(resolve_target(&store, &c, Target::Time(t)));
        assert_eq!(at(10_500).unwrap(), 10);
        assert_eq!(at(20_000).unwrap(), 12);
        // At 5000 the state may include pruned transactions 5..: refused.
        let e = at(5000).unwrap_err();
        assert!(matches!(e, RestoreError::TargetOutOfWindow { .. }), "{e}");
        assert!(e.to_string().contains("10..=12"), "{e}");
        // Its own txid still restores.
        assert_eq!(
            plan_txid(&c, 4, &HashSet::new()).unwrap().snapshot.max_txid,
            4
        );
    }

    #[test]
    fn uses_newest_snapshot_at_or_before_target() {
        let c = sample();
        let p = plan_txid(&c, 7, &HashSet::new()).unwrap();
        assert_eq!(p.snapshot.max_txid, 5);
        assert_eq!(p.segments.len(), 1);
        let p = plan_txid(&c, 3, &HashSet::new()).unwrap();
        assert_eq!(p.snapshot.max_txid, 1);
        assert_eq!(
            p.segments.iter().map(|s| s.min_txid).collect::<Vec<_>>(),
            vec![2]
        );
        let p = plan_txid(&c, 5, &HashSet::new()).unwrap();
        assert!(p.segments.is_empty(), "txid 5 is a snapshot: {p}");
    }

    #[test]
    fn falls_back_to_older_snapshot_when_excluded() {
        let c = sample();
        let exclude: HashSet<String> = [snapshot_key(5, 1, 3000)].into();
        let p = plan_txid(&c, 7, &exclude).unwrap();
        assert_eq!(p.snapshot.max_txid, 1);
        assert_eq!(p.segments.len(), 3);
    }

    #[test]
    fn out_of_window_is_an_error() {
        let c = sample();
        assert!(matches!(
            plan_txid(&c, 10, &HashSet::new()),
            Err(RestoreError::TargetOutOfWindow { .. })
        ));
        assert!(matches!(
            plan_txid(&c, 0, &HashSet::new()),
            Err(RestoreError::TargetOutOfWindow { .. })
        ));
    }

    #[tokio::test]
    async fn time_targets_resolve_to_last_commit_at_or_before() {
        let c = sample();
        let store: Arc<dyn ObjectStore> =
            Arc::new(crate::store::LocalStore::new("/nonexistent-walstream-test"));
        assert_eq!(
            resolve_target(&store, &c, Target::Time(2500))
                .await
                .unwrap(),
            4
        );
        assert_eq!(
            resolve_target(&store, &c, Target::Time(4000))
                .await
                .unwrap(),
            9
        );
        assert_eq!(
            resolve_target(&store, &c, Target::Time(1000))
                .await
                .unwrap(),
            1
        );
        assert!(resolve_target(&store, &c, Target::Time(999)).await.is_err());
        assert_eq!(resolve_target(&store, &c, Target::Latest).await.unwrap(), 9);
    }
}
