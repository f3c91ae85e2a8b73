//! The databases a `replicate` process runs: started together (with their
//! control sockets and monitoring), watched, and stopped with a final sync.
//! Each database is replicated to all its replicas by engines of their own.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use walstream::monitor::{DbMonitor, MonitorConfig};
use walstream::{CaptureOptions, Keyring, Replication};

use super::{monitoring, specs, DbTarget};
use walstream::control;

/// One database: its replications (one per replica) and its control socket.
struct RunningDb {
    db: PathBuf,
    reps: Vec<Arc<Replication>>,
    server: JoinHandle<()>,
}

pub struct Running {
    dbs: Vec<RunningDb>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts every database, its control socket and the monitoring tasks.
    pub async fn start(
        dbs: Vec<DbTarget>,
        opts: &CaptureOptions,
        monitor: &MonitorConfig,
        keys: &Keyring,
    ) -> Result<Running> {
        let mut running = Vec::new();
        let mut monitors = Vec::new();
        for (db, replicas) in dbs {
            let specs = specs(&replicas, opts)?;
            let stores: Vec<_> = specs.iter().map(|s| Arc::clone(&s.store)).collect();
            let urls: Vec<String> = replicas.iter().map(|r| r.url.to_string()).collect();
            let reps = Replication::start_all(&db, specs).await.with_context(|| {
                format!(
                    "starting replication of {} to {}",
                    db.display(),
                    urls.join(" and ")
                )
            })?;
            let abs = std::path::absolute(&db)?;
            let n = reps.len();
            let mut mine = Vec::new();
            let mut reps_of_db = Vec::new();
            for (rep, store) in reps.into_iter().zip(stores) {
                let rep = Arc::new(rep);
                let dir = walstream::capture::work_dir(&abs, rep.name(), n);
                let mon = DbMonitor::new(abs.clone(), Arc::clone(&rep), store, monitor.thresholds)
                    .with_work_dir(dir);
                tracing::info!(db = %db.display(), replica = %mon.replica, name = %mon.name, "replicating");
                mine.push(Arc::new(mon));
                reps_of_db.push(rep);
            }
            let server = control::serve(&abs, mine.clone())
                .with_context(|| format!("opening the control socket for {}", db.display()))?;
            monitors.extend(mine);
            running.push(RunningDb {
                db,
                reps: reps_of_db,
                server,
            });
        }
        let tasks = monitoring::start(monitor, monitors, keys).await?;
        Ok(Running {
            dbs: running,
            tasks,
        })
    }

    /// A replication ended on its own (a fatal error).
    pub fn any_finished(&self) -> bool {
        self.dbs
            .iter()
            .any(|d| d.reps.iter().any(|rep| rep.is_finished()))
    }

    /// Ships what is committed and stops everything; false when a final sync
    /// failed (it is logged). The replicas of a database stop at the same
    /// time, so one that cannot reach its store does not hold up the others.
    pub async fn stop(self) -> Result<bool> {
        tracing::info!("shutting down: shipping what is committed");
        for t in self.tasks {
            t.abort();
        }
        let mut ok = true;
        for d in self.dbs {
            d.server.abort();
            let _ = d.server.await;
            let _ = std::fs::remove_file(control::socket_path(&std::path::absolute(&d.db)?));
            let stops: Vec<_> = d
                .reps
                .iter()
                .map(|rep| {
                    let rep = Arc::clone(rep);
                    tokio::spawn(async move { (rep.name().to_string(), rep.shutdown().await) })
                })
                .collect();
            for stop in stops {
                match stop.await {
                    Ok((_, Ok(()))) => {}
                    Ok((name, Err(e))) => {
                        tracing::error!(db = %d.db.display(), replica = %name, error = %e, "final sync failed");
                        ok = false;
                    }
                    Err(e) => {
                        tracing::error!(db = %d.db.display(), error = %e, "final sync failed");
                        ok = false;
                    }
                }
            }
        }
        Ok(ok)
    }
}
