//! Status of a database and its replica, whether or not `replicate` is running.

use std::path::Path;
use std::sync::Arc;

use crate::capture::{wal_path, EngineStatus, ReplicationLock};
use crate::catalog::{fetch_header, parse_key, Catalog, Window};
use crate::health::{assess, Health, Inputs, Thresholds};
use crate::monitor::VerifyOutcome;
use crate::store::{ObjectStore, StoreError};
use crate::wal::WalFile;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub database: String,
    pub replica: String,
    /// The replica's name, when the status comes from a config or a running
    /// process that names its replicas.
    pub replica_name: Option<String>,
    /// A `replicate` process holds the database's lock.
    pub replicating: bool,
    /// Last committed txid (shipped plus committed-but-unshipped), when known.
    pub last_committed_txid: Option<u64>,
    pub last_shipped_txid: u64,
    pub pending_commits: Option<u64>,
    pub lag_ms: Option<u64>,
    /// WAL bytes of the commits not yet in the replica.
    pub lag_bytes: Option<u64>,
    pub wal_bytes: u64,
    pub last_snapshot_time_ms: Option<i64>,
    pub last_snapshot_txid: Option<u64>,
    pub last_snapshot_age_ms: Option<u64>,
    pub window: Option<WindowJson>,
    pub last_error: Option<String>,
    /// The replica failed past `outage_wal_hold`/`outage_wal_max_mb` and no
    /// longer holds the WAL (it resumes or starts a new lineage when it
    /// answers again).
    pub wal_released: bool,
    /// The running process's last scheduled verification.
    pub last_verification: Option<VerifyOutcome>,
    /// Set by [`Status::assess`].
    pub health: Option<Health>,
}

impl Status {
    /// Applies the health rules at `now_ms` (and fills in the snapshot age).
    pub fn assess(&mut self, now_ms: i64, thresholds: &Thresholds) -> &Health {
        self.last_snapshot_age_ms = self
            .last_snapshot_time_ms
            .map(|t| now_ms.saturating_sub(t).max(0) as u64);
        let inputs = Inputs {
            last_snapshot_ms: self.last_snapshot_time_ms,
            snapshot_current: self.pending_commits == Some(0)
                && self.last_snapshot_txid == Some(self.last_shipped_txid),
            lag_ms: self.lag_ms,
            replicating: self.replicating,
            last_verify_ok: self.last_verification.as_ref().map(|v| v.ok),
        };
        self.health.insert(assess(now_ms, &inputs, thresholds))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowJson {
    pub min_txid: u64,
    pub max_txid: u64,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
}

impl From<Window> for WindowJson {
    fn from(w: Window) -> Self {
        WindowJson {
            min_txid: w.min_txid,
            max_txid: w.max_txid,
            min_time_ms: w.min_time_ms,
            max_time_ms: w.max_time_ms,
        }
    }
}

/// Status from the replica and the WAL; `live` is the running process's own
/// report when one was reachable.
pub async fn status(
    db: &Path,
    store: &Arc<dyn ObjectStore>,
    live: Option<EngineStatus>,
) -> Result<Status, StoreError> {
    // While the replica is unreachable the running process still knows its
    // positions and lag, which is when they matter most.
    let (catalog, replica_error) = match Catalog::load(store).await {
        Ok(c) => (c, None),
        Err(e) if live.is_some() => (Catalog::default(), Some(e.to_string())),
        Err(e) => return Err(e),
    };
    let wal_bytes = std::fs::metadata(wal_path(db)).map_or(0, |m| m.len());
    let mut s = Status {
        database: db.display().to_string(),
        replica: store.describe(),
        replica_name: None,
        replicating: ReplicationLock::is_held(db),
        last_committed_txid: None,
        last_shipped_txid: catalog.max_txid(),
        pending_commits: None,
        lag_ms: None,
        lag_bytes: None,
        wal_bytes,
        last_snapshot_time_ms: catalog.snapshots.last().map(|o| o.max_time_ms),
        last_snapshot_txid: catalog.snapshots.last().map(|o| o.max_txid),
        last_snapshot_age_ms: None,
        window: catalog.window().map(Into::into),
        last_error: None,
        wal_released: false,
        last_verification: None,
        health: None,
    };
    if let Some(live) = live {
        s.last_shipped_txid = s.last_shipped_txid.max(live.last_shipped_txid);
        s.pending_commits = Some(live.pending_commits);
        s.last_committed_txid = Some(s.last_shipped_txid + live.pending_commits);
        s.lag_ms = Some(live.lag_ms);
        s.lag_bytes = Some(live.pending_bytes);
        s.wal_bytes = s.wal_bytes.max(live.wal_bytes);
        if let Some(info) = live
            .last_snapshot_key
            .as_deref()
            .and_then(|k| parse_key(k, 0))
        {
            if Some(info.max_txid) > s.last_snapshot_txid {
                s.last_snapshot_txid = Some(info.max_txid);
                s.last_snapshot_time_ms = Some(info.max_time_ms);
            }
        }
        s.last_error = replica_error.or(live.last_error);
        s.wal_released = live.wal_released;
        return Ok(s);
    }
    if let Some((pending, bytes)) = pending_from_wal(db, store, &catalog).await {
        s.pending_commits = Some(pending);
        s.lag_bytes = Some(bytes);
        s.last_committed_txid = Some(s.last_shipped_txid + pending);
        let age = std::fs::metadata(wal_path(db))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(0, |d| d.as_millis() as u64);
        s.lag_ms = Some(if pending > 0 { age } else { 0 });
    }
    Ok(s)
}

/// Commits (and their WAL bytes) in the WAL after the replica's last recorded
/// position, when the WAL is still the generation the replica last saw.
async fn pending_from_wal(
    db: &Path,
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
) -> Option<(u64, u64)> {
    let newest = catalog.newest()?;
    let header = fetch_header(store, newest).await.ok()?;
    let p = header.wal?;
    let wal = WalFile::open(&wal_path(db)).ok()?;
    let h = wal.header().ok()??;
    if h.salt1 != p.salt1 || h.salt2 != p.salt2 {
        return None;
    }
    let commits = wal.scan_commits(&h, p.frame, p.checksum).ok()?;
    let frames: usize = commits.iter().map(|c| c.frames.len()).sum();
    Some((
        commits.len() as u64,
        frames as u64 * (24 + u64::from(h.page_size)),
    ))
}
