//! The databases a `replicate` process runs: started together (with their
//! control sockets and monitoring), watched, and stopped with a final sync.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use walstream::monitor::{DbMonitor, MonitorConfig};
use walstream::{CaptureOptions, Keyring, ReplicaUrl, Replication};

use super::{monitoring, with_store_defaults};
use walstream::control;

pub struct Running {
    dbs: Vec<(PathBuf, Arc<Replication>, JoinHandle<()>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts every database, its control socket and the monitoring tasks.
    pub async fn start(
        dbs: Vec<(PathBuf, ReplicaUrl)>,
        opts: &CaptureOptions,
        monitor: &MonitorConfig,
        keys: &Keyring,
    ) -> Result<Running> {
        let mut running = Vec::new();
        let mut monitors = Vec::new();
        for (db, url) in dbs {
            let store = url.open()?;
            let rep = Replication::start(&db, Arc::clone(&store), with_store_defaults(opts, &url))
                .await
                .with_context(|| format!("starting replication of {} to {url}", db.display()))?;
            let rep = Arc::new(rep);
            let abs = std::path::absolute(&db)?;
            let mon = Arc::new(DbMonitor::new(
                abs.clone(),
                Arc::clone(&rep),
                store,
                monitor.thresholds,
            ));
            let server = control::serve(&abs, Arc::clone(&rep), Some(Arc::clone(&mon)))
                .with_context(|| format!("opening the control socket for {}", db.display()))?;
            tracing::info!(db = %db.display(), replica = %url, "replicating");
            running.push((db, rep, server));
            monitors.push(mon);
        }
        let tasks = monitoring::start(monitor, monitors, keys).await?;
        Ok(Running {
            dbs: running,
            tasks,
        })
    }

    /// A replication ended on its own (a fatal error).
    pub fn any_finished(&self) -> bool {
        self.dbs.iter().any(|(_, rep, _)| rep.is_finished())
    }

    /// Ships what is committed and stops everything; false when a final sync
    /// failed (it is logged).
    pub async fn stop(self) -> Result<bool> {
        tracing::info!("shutting down: shipping what is committed");
        for t in self.tasks {
            t.abort();
        }
        let mut ok = true;
        for (db, rep, server) in self.dbs {
            server.abort();
            let _ = server.await;
            let _ = std::fs::remove_file(control::socket_path(&std::path::absolute(&db)?));
            if let Err(e) = rep.shutdown().await {
                tracing::error!(db = %db.display(), error = %e, "final sync failed");
                ok = false;
            }
        }
        Ok(ok)
    }
}
