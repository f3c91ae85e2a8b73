//! Choosing among several replicas of one database: by name, or the most
//! advanced one (see [`most_advanced`]).

use std::cmp::Ordering;
use std::sync::Arc;

use crate::catalog::{fetch_header, Catalog, Window};
use crate::error::RestoreError;
use crate::format::WalPosition;
use crate::store::{ObjectStore, StoreError};

/// One replica to choose from.
#[derive(Clone)]
pub struct Candidate {
    pub name: String,
    pub store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidate")
            .field("name", &self.name)
            .field("store", &self.store.describe())
            .finish()
    }
}

/// How far one replica reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub window: Window,
    /// The WAL position after the newest restorable commit, when its object
    /// records one (read from the object's header).
    pub position: Option<WalPosition>,
}

/// What was found in each replica: its reach, `Ok(None)` when it is empty,
/// or why it could not be read.
#[derive(Debug)]
pub struct Survey {
    pub names: Vec<String>,
    pub reaches: Vec<Result<Option<Reach>, StoreError>>,
    /// The most advanced replica, if any has data.
    pub chosen: Option<usize>,
}

impl Survey {
    /// One line per replica that was passed over for a reason other than
    /// being behind: unreachable, or empty.
    pub fn notes(&self) -> Vec<String> {
        self.names
            .iter()
            .zip(&self.reaches)
            .filter_map(|(name, r)| match r {
                Err(e) => Some(format!("replica {name} could not be read: {e}")),
                Ok(None) => Some(format!("replica {name} is empty")),
                Ok(Some(_)) => None,
            })
            .collect()
    }
}

/// The replica named `name`; the error lists the names there are.
pub fn by_name<'a>(candidates: &'a [Candidate], name: &str) -> Result<&'a Candidate, String> {
    candidates.iter().find(|c| c.name == name).ok_or_else(|| {
        let names: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
        format!(
            "no replica is named {name:?}: the replicas are {}",
            names.join(", ")
        )
    })
}

/// Reads every replica (at the same time: an unreachable one only costs its
/// own timeout) and picks the most advanced: the one whose restorable window
/// reaches furthest. Txids are each replica's own and cannot be compared;
/// what can:
///
/// 1. when the newest restorable objects of two replicas were shipped from
///    the same WAL generation (same salts), the later WAL frame is further —
///    exact, and the usual case: a replica that lags keeps its pin in the WAL,
///    so the WAL cannot start a new generation until it caught up;
/// 2. otherwise the later time of the newest restorable commit.
///
/// On a tie the first listed wins. Unreachable and empty replicas are passed
/// over ([`Survey::notes`]).
pub async fn most_advanced(candidates: &[Candidate]) -> Survey {
    let tasks: Vec<_> = candidates
        .iter()
        .map(|c| tokio::spawn(reach(Arc::clone(&c.store))))
        .collect();
    let mut reaches = Vec::new();
    for t in tasks {
        reaches.push(match t.await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Config {
                store: String::new(),
                reason: e.to_string(),
            }),
        });
    }
    let mut chosen: Option<usize> = None;
    for (i, r) in reaches.iter().enumerate() {
        let Ok(Some(here)) = r else { continue };
        let better = match chosen {
            None => true,
            Some(c) => match &reaches[c] {
                Ok(Some(best)) => compare(here, best) == Ordering::Greater,
                _ => true,
            },
        };
        if better {
            chosen = Some(i);
        }
    }
    Survey {
        names: candidates.iter().map(|c| c.name.clone()).collect(),
        reaches,
        chosen,
    }
}

impl Survey {
    /// The choice, or why there is none: every replica that could be read is
    /// empty (`EmptyReplica`, naming them), or none could be read (the first
    /// one's error).
    pub fn into_chosen(self, candidates: &[Candidate]) -> Result<usize, RestoreError> {
        if let Some(i) = self.chosen {
            return Ok(i);
        }
        let mut empty = Vec::new();
        let mut first_error = None;
        for (c, r) in candidates.iter().zip(self.reaches) {
            match r {
                Ok(_) => empty.push(c.store.describe()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (empty.is_empty(), first_error) {
            (true, Some(e)) => Err(RestoreError::Store(e)),
            _ => Err(RestoreError::EmptyReplica {
                replica: empty.join(" and "),
            }),
        }
    }
}

async fn reach(store: Arc<dyn ObjectStore>) -> Result<Option<Reach>, StoreError> {
    let catalog = Catalog::load(&store).await?;
    let Some(window) = catalog.window() else {
        return Ok(None);
    };
    // The object holding the newest restorable commit; a segment ends a
    // chain later than a snapshot of the same txid.
    let newest = catalog
        .segments
        .iter()
        .chain(&catalog.snapshots)
        .find(|o| o.max_txid == window.max_txid && o.max_time_ms == window.max_time_ms);
    let position = match newest {
        Some(o) => fetch_header(&store, o).await.ok().and_then(|h| h.wal),
        None => None,
    };
    Ok(Some(Reach { window, position }))
}

/// How `a` compares to `b` in reach (see [`most_advanced`]).
pub fn compare(a: &Reach, b: &Reach) -> Ordering {
    match (a.position, b.position) {
        (Some(p), Some(q)) if p.salt1 == q.salt1 && p.salt2 == q.salt2 => p.frame.cmp(&q.frame),
        _ => a.window.max_time_ms.cmp(&b.window.max_time_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(salts: Option<(u32, u32)>, frame: u32, time: i64) -> Reach {
        Reach {
            window: Window {
                min_txid: 1,
                max_txid: 10,
                min_time_ms: 0,
                max_time_ms: time,
            },
            position: salts.map(|(salt1, salt2)| WalPosition {
                salt1,
                salt2,
                checkpoint_seq: 0,
                frame,
                checksum: (0, 0),
            }),
        }
    }

    #[test]
    fn positions_in_one_wal_generation_beat_times() {
        // A replica catching up ships old commits with the time it read them.
        let ahead = reach(Some((5, 9)), 800, 1_000);
        let catching_up = reach(Some((5, 9)), 300, 2_000);
        assert_eq!(compare(&ahead, &catching_up), Ordering::Greater);
        assert_eq!(compare(&catching_up, &ahead), Ordering::Less);
        // Another generation (or none recorded): the time decides.
        let other = reach(Some((6, 1)), 10, 1_500);
        assert_eq!(compare(&other, &ahead), Ordering::Greater);
        let none = reach(None, 0, 900);
        assert_eq!(compare(&none, &ahead), Ordering::Less);
        assert_eq!(compare(&ahead, &ahead.clone()), Ordering::Equal);
    }

    #[test]
    fn an_unknown_name_lists_the_names() {
        let store: Arc<dyn ObjectStore> = Arc::new(crate::store::LocalStore::new("/nonexistent"));
        let cands = vec![
            Candidate {
                name: "local".into(),
                store: Arc::clone(&store),
            },
            Candidate {
                name: "offsite".into(),
                store,
            },
        ];
        assert_eq!(by_name(&cands, "offsite").unwrap().name, "offsite");
        let e = by_name(&cands, "s3").unwrap_err();
        assert!(e.contains("\"s3\"") && e.contains("local, offsite"), "{e}");
    }
}
