//! Starting the monitoring tasks of `replicate`: scheduled verification, the
//! metrics endpoint and webhooks.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;

use walstream::monitor::{
    spawn_verifier, spawn_watcher, webhook_counter, DbMonitor, MonitorConfig,
};
use walstream::webhook::Webhook;
use walstream::Keyring;

/// How often health is assessed for webhooks.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Starts what `cfg` asks for; the tasks run until aborted.
pub async fn start(
    cfg: &MonitorConfig,
    monitors: Vec<Arc<DbMonitor>>,
    keys: &Keyring,
) -> Result<Vec<JoinHandle<()>>> {
    let monitors = Arc::new(monitors);
    let mut tasks = Vec::new();
    if let Some(every) = cfg.verify_interval {
        for m in monitors.iter() {
            tasks.push(spawn_verifier(m, every, keys.clone()));
        }
    }
    if let Some(addr) = cfg.metrics_addr {
        let (local, task) = walstream::metrics::serve(addr, Arc::clone(&monitors))
            .await
            .with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(addr = %local, "metrics endpoint listening (/metrics, /health)");
        tasks.push(task);
    }
    if let Some(url) = &cfg.webhook_url {
        let (hook, task) = Webhook::spawn(url, webhook_counter(Arc::clone(&monitors)))?;
        tasks.push(task);
        tasks.push(spawn_watcher(
            Arc::clone(&monitors),
            hook,
            cfg.webhook_heartbeat,
            WATCH_EVERY,
        ));
    }
    Ok(tasks)
}
