//! Monitoring of a running replication: scheduled deep verification, health,
//! and the shared state the metrics endpoint, the control socket and webhooks
//! read. Everything here runs on tokio tasks beside the capture thread and
//! only asks it for its status, so it never stalls shipping.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::capture::{state_dir, EngineStatus, Replication};
use crate::crypto::Keyring;
use crate::health::{assess, Health, Inputs, Level, Thresholds};
use crate::store::ObjectStore;
use crate::verify::deep::{deep_verify, DeepOptions, SCRATCH_PREFIX};
use crate::verify::VerifyReport;

/// The monitoring keys of the config file (`docs/monitoring.md`).
#[derive(Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    pub thresholds: Thresholds,
    /// Deep verification of the newest snapshot and its segments this often
    /// (`None`: off).
    pub verify_interval: Option<Duration>,
    /// Where to serve `/metrics` and `/health` (`None`: not served).
    pub metrics_addr: Option<SocketAddr>,
    /// Where to POST health changes. May hold credentials: never logged.
    pub webhook_url: Option<String>,
    /// Also POST after every successful snapshot.
    pub webhook_heartbeat: bool,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            thresholds: Thresholds::default(),
            verify_interval: Some(Duration::from_secs(24 * 3600)),
            metrics_addr: None,
            webhook_url: None,
            webhook_heartbeat: false,
        }
    }
}

impl std::fmt::Debug for MonitorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorConfig")
            .field("thresholds", &self.thresholds)
            .field("verify_interval", &self.verify_interval)
            .field("metrics_addr", &self.metrics_addr)
            .field(
                "webhook_url",
                &self.webhook_url.as_ref().map(|_| "<redacted>"),
            )
            .field("webhook_heartbeat", &self.webhook_heartbeat)
            .finish()
    }
}

/// `HOST:PORT`, or `:PORT` for loopback (the conventional choice is
/// 127.0.0.1:9157): nothing is exposed beyond the host unless asked for.
pub fn parse_metrics_addr(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    match s.strip_prefix(':') {
        Some(port) => Some(SocketAddr::from(([127, 0, 0, 1], port.parse().ok()?))),
        None => s.parse().ok(),
    }
}

/// The result of one scheduled verification.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyOutcome {
    pub time_ms: i64,
    pub ok: bool,
    pub duration_ms: u64,
    /// The txid restored and proven.
    pub txid: Option<u64>,
    /// Each problem as "object: what is wrong" (at most 10).
    pub problems: Vec<String>,
}

/// Counters and the last results; cloned out for readers.
#[derive(Debug, Clone, Default)]
pub struct MonitorState {
    pub last_verify: Option<VerifyOutcome>,
    pub verify_ok_total: u64,
    pub verify_failed_total: u64,
    /// Runs that could not finish (store unreachable): no verdict.
    pub verify_error_total: u64,
    pub webhook_sent_total: u64,
    pub webhook_failed_total: u64,
    /// The engine's last answer, for when it is busy (a long snapshot).
    pub last_engine: Option<EngineStatus>,
}

/// How long a report waits for the capture thread before using its last answer.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// One replica of a database as monitoring sees it.
pub struct DbMonitor {
    pub db: PathBuf,
    /// The replica's name (unique among the database's replicas).
    pub name: String,
    /// The replica without credentials (`ObjectStore::describe`).
    pub replica: String,
    /// Where verification restores (the replica's own directory in the
    /// database's state directory).
    pub work_dir: PathBuf,
    pub rep: Arc<Replication>,
    pub store: Arc<dyn ObjectStore>,
    pub thresholds: Thresholds,
    state: Mutex<MonitorState>,
}

/// Everything known about one database at one moment.
#[derive(Debug, Clone)]
pub struct DbReport {
    pub db: String,
    /// The replica's name.
    pub name: String,
    pub replica: String,
    pub running: bool,
    pub engine: EngineStatus,
    pub state: MonitorState,
    pub health: Health,
}

impl DbMonitor {
    pub fn new(
        db: PathBuf,
        rep: Arc<Replication>,
        store: Arc<dyn ObjectStore>,
        thresholds: Thresholds,
    ) -> DbMonitor {
        DbMonitor {
            name: rep.name().to_string(),
            work_dir: state_dir(&db),
            db,
            replica: store.describe(),
            rep,
            store,
            thresholds,
            state: Mutex::new(MonitorState::default()),
        }
    }

    /// Verification restores into `dir` (with several replicas, each
    /// replica's own: see [`crate::capture::work_dir`]).
    pub fn with_work_dir(mut self, dir: PathBuf) -> DbMonitor {
        self.work_dir = dir;
        self
    }

    pub fn state(&self) -> MonitorState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn update(&self, f: impl FnOnce(&mut MonitorState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    /// The engine's status, or when it is busy for more than a moment (a
    /// long snapshot, a store that does not answer) or has stopped, its last
    /// answer. `None` when it never answered.
    pub async fn engine_status(&self) -> Option<EngineStatus> {
        if !self.rep.is_finished() {
            if let Ok(Ok(e)) = tokio::time::timeout(STATUS_WAIT, self.rep.status()).await {
                self.update(|s| s.last_engine = Some(e.clone()));
                return Some(e);
            }
        }
        self.state().last_engine
    }

    /// The engine's own answer, however long it takes; its last one once it
    /// has stopped.
    pub async fn fresh_status(&self) -> Option<EngineStatus> {
        match self.rep.status().await {
            Ok(e) => {
                self.update(|s| s.last_engine = Some(e.clone()));
                Some(e)
            }
            Err(_) => self.state().last_engine,
        }
    }

    /// The engine's status, the monitor's state and the health they give now.
    pub async fn report(&self) -> DbReport {
        let running = !self.rep.is_finished();
        if running {
            self.engine_status().await;
        }
        let state = self.state();
        let engine = state.last_engine.clone().unwrap_or_default();
        let snapshot_txid = engine
            .last_snapshot_key
            .as_deref()
            .and_then(|k| crate::catalog::parse_key(k, 0))
            .map(|o| o.max_txid);
        let inputs = Inputs {
            last_snapshot_ms: engine.last_snapshot_time_ms,
            snapshot_current: running
                && engine.pending_commits == 0
                && snapshot_txid == Some(engine.last_shipped_txid),
            lag_ms: running.then_some(engine.lag_ms),
            replicating: running,
            last_verify_ok: state.last_verify.as_ref().map(|v| v.ok),
        };
        let health = assess(
            chrono::Utc::now().timestamp_millis(),
            &inputs,
            &self.thresholds,
        );
        DbReport {
            db: self.db.display().to_string(),
            name: self.name.clone(),
            replica: self.replica.clone(),
            running,
            engine,
            state,
            health,
        }
    }

    /// Restores the latest state into the database's state directory and
    /// proves it; records the outcome.
    pub async fn verify_now(&self, keys: &Keyring) {
        remove_stale_scratch(&self.work_dir);
        let started = Instant::now();
        let opts = DeepOptions {
            points: 0,
            seed: 0,
            keys: keys.clone(),
            scratch: Some(self.work_dir.clone()),
        };
        let mut report = VerifyReport::default();
        match deep_verify(&self.store, &opts, &mut report).await {
            Ok(checks) => {
                let outcome = outcome(&report, checks.first().map(|c| c.txid), started);
                match outcome.ok {
                    true => {
                        tracing::info!(db = %self.db.display(), replica = %self.name, txid = ?outcome.txid, "scheduled verification passed")
                    }
                    false => {
                        tracing::error!(db = %self.db.display(), replica = %self.name, problems = ?outcome.problems, "scheduled verification FAILED")
                    }
                }
                self.update(|s| {
                    match outcome.ok {
                        true => s.verify_ok_total += 1,
                        false => s.verify_failed_total += 1,
                    }
                    s.last_verify = Some(outcome);
                });
            }
            // An outage is not a verdict on the backups; the lag rule reports it.
            Err(e) => {
                tracing::warn!(db = %self.db.display(), error = %e, "scheduled verification could not run");
                self.update(|s| s.verify_error_total += 1);
            }
        }
    }
}

/// Scratch directories a killed process left behind. Only the process holding
/// the database's lock verifies into its state directory, each replica into
/// its own directory, so none is in use.
fn remove_stale_scratch(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn outcome(report: &VerifyReport, txid: Option<u64>, started: Instant) -> VerifyOutcome {
    VerifyOutcome {
        time_ms: chrono::Utc::now().timestamp_millis(),
        ok: report.is_ok(),
        duration_ms: started.elapsed().as_millis() as u64,
        txid,
        problems: report
            .problems
            .iter()
            .take(10)
            .map(|p| match &p.key {
                Some(k) => format!("{k}: {}", p.problem),
                None => p.problem.clone(),
            })
            .collect(),
    }
}

/// Runs [`DbMonitor::verify_now`] every `interval` (the first run after at
/// most 10 minutes, so a process restarted often still verifies), until the
/// monitor is dropped: the task does not keep a replication alive.
pub fn spawn_verifier(
    mon: &Arc<DbMonitor>,
    interval: Duration,
    keys: Keyring,
) -> tokio::task::JoinHandle<()> {
    let mon = Arc::downgrade(mon);
    tokio::spawn(async move {
        let mut wait = interval.min(Duration::from_secs(600));
        loop {
            tokio::time::sleep(wait).await;
            let Some(m) = mon.upgrade() else { return };
            m.verify_now(&keys).await;
            wait = interval;
        }
    })
}

/// Every `every`, assesses each database and queues a webhook event when its
/// health level changed (a start counts as coming from healthy), and with
/// `heartbeat` when a new snapshot was stored.
pub fn spawn_watcher(
    monitors: Arc<Vec<Arc<DbMonitor>>>,
    hook: crate::webhook::Webhook,
    heartbeat: bool,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Per database: the level and newest snapshot key last seen.
        let mut seen: Vec<Option<(Level, Option<String>)>> = vec![None; monitors.len()];
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for (m, seen) in monitors.iter().zip(seen.iter_mut()) {
                let r = m.report().await;
                let snapshot = r.engine.last_snapshot_key.clone();
                let (level, last_snapshot) =
                    seen.take().unwrap_or((Level::Healthy, snapshot.clone()));
                if r.health.level != level {
                    hook.send(event("health_changed", &r, Some(level)));
                }
                if heartbeat && snapshot.is_some() && snapshot != last_snapshot {
                    hook.send(event("heartbeat", &r, None));
                }
                *seen = Some((r.health.level, snapshot));
            }
        }
    })
}

/// Counts deliveries in the monitor of the event's database and replica.
pub fn webhook_counter(monitors: Arc<Vec<Arc<DbMonitor>>>) -> crate::webhook::ResultFn {
    Arc::new(move |ev: &crate::webhook::Event, ok: bool| {
        for m in monitors
            .iter()
            .filter(|m| m.db.display().to_string() == ev.database && m.replica == ev.replica)
        {
            m.update(|s| match ok {
                true => s.webhook_sent_total += 1,
                false => s.webhook_failed_total += 1,
            });
        }
    })
}

fn event(kind: &'static str, r: &DbReport, previous: Option<Level>) -> crate::webhook::Event {
    let fmt = crate::restore::format_time;
    crate::webhook::Event {
        event: kind,
        time: fmt(chrono::Utc::now().timestamp_millis()),
        host: crate::lease::hostname(),
        database: r.db.clone(),
        replica: r.replica.clone(),
        health: r.health.level,
        previous,
        reasons: r.health.reasons.clone(),
        last_shipped_txid: r.engine.last_shipped_txid,
        last_snapshot_time: r.engine.last_snapshot_time_ms.map(fmt),
        last_snapshot: r.engine.last_snapshot_key.clone(),
    }
}
