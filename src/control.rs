//! The control socket of a running `replicate`: `walstream snapshot` and
//! `walstream status` talk to the process that already holds the database's pin
//! instead of opening a second one. One JSON request line, one JSON reply line,
//! on a Unix socket in the database's state directory (owner-only by umask of
//! the directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::capture::{state_dir, EngineStatus};
use crate::monitor::{DbMonitor, VerifyOutcome};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The status of the replica named (by name or URL), or with none named,
    /// of every replica.
    Status {
        #[serde(default)]
        replica: Option<String>,
    },
    /// A snapshot in the replica named (by name or URL), or with none named,
    /// in every replica.
    Snapshot {
        #[serde(default)]
        replica: Option<String>,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    /// The first replica's snapshot (or the one named).
    pub snapshot: Option<String>,
    /// The first replica's status (what single-replica versions sent).
    pub status: Option<EngineStatusWire>,
    /// The last scheduled verification (absent from older processes).
    #[serde(default)]
    pub verification: Option<VerifyOutcome>,
    /// Every replica of the database, in the configured order.
    #[serde(default)]
    pub replicas: Vec<ReplicaReply>,
}

/// One replica's part of a reply.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReplicaReply {
    pub name: String,
    /// The replica without credentials (`ObjectStore::describe`).
    pub replica: String,
    pub status: Option<EngineStatusWire>,
    pub verification: Option<VerifyOutcome>,
    pub snapshot: Option<String>,
    pub error: Option<String>,
}

/// What the running process reports about one replica.
#[derive(Debug, Clone)]
pub struct Live {
    pub name: String,
    pub replica: String,
    pub engine: EngineStatus,
    pub verification: Option<VerifyOutcome>,
}

/// `EngineStatus` as sent over the socket.
pub type EngineStatusWire = serde_json::Value;

pub fn socket_path(db_path: &Path) -> PathBuf {
    state_dir(db_path).join("control.sock")
}

/// Serves requests for the replicas of one database until the returned task
/// is aborted.
pub fn serve(
    db_path: &Path,
    replicas: Vec<Arc<DbMonitor>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(db_path);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let replicas = Arc::new(replicas);
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let replicas = Arc::clone(&replicas);
            tokio::spawn(async move {
                let _ = handle(stream, &replicas).await;
            });
        }
    }))
}

async fn handle(stream: UnixStream, replicas: &[Arc<DbMonitor>]) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => error_reply(format!("bad request: {e}")),
        Ok(Request::Status { replica }) => match pick(replicas, replica.as_deref()) {
            Err(e) => error_reply(e),
            Ok(chosen) => status_reply(&chosen).await,
        },
        Ok(Request::Snapshot { replica }) => match pick(replicas, replica.as_deref()) {
            Err(e) => error_reply(e),
            Ok(chosen) => snapshot_reply(&chosen).await,
        },
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// The status of each replica asked about, asked at the same time. One
/// replica: its engine's own answer, however long it takes (a busy engine,
/// its store not answering, answers between two attempts). Several: a busy
/// engine answers with its last status after a moment, so it never holds up
/// the others'.
async fn status_reply(replicas: &[Arc<DbMonitor>]) -> Reply {
    let one = replicas.len() == 1;
    let tasks: Vec<_> = replicas
        .iter()
        .map(|m| {
            let m = Arc::clone(m);
            tokio::spawn(async move {
                let status = match one {
                    true => m.fresh_status().await,
                    false => m.engine_status().await,
                };
                (status, m)
            })
        })
        .collect();
    let mut parts = Vec::new();
    for t in tasks {
        let Ok((status, m)) = t.await else { continue };
        let error = match (&status, m.rep.is_finished()) {
            (None, true) => Some("replication stopped".to_string()),
            (None, false) => Some("the replication has not answered yet".to_string()),
            (Some(_), _) => None,
        };
        parts.push(ReplicaReply {
            name: m.name.clone(),
            replica: m.replica.clone(),
            status: status.as_ref().and_then(|s| serde_json::to_value(s).ok()),
            verification: m.state().last_verify,
            snapshot: None,
            error,
        });
    }
    let first = parts.first().cloned();
    Reply {
        ok: first.as_ref().is_some_and(|f| f.error.is_none()),
        error: first.as_ref().and_then(|f| f.error.clone()),
        snapshot: None,
        status: first.as_ref().and_then(|f| f.status.clone()),
        verification: first.and_then(|f| f.verification),
        replicas: parts,
    }
}

/// Snapshots in the chosen replicas, at the same time.
async fn snapshot_reply(chosen: &[Arc<DbMonitor>]) -> Reply {
    let tasks: Vec<_> = chosen
        .iter()
        .map(|m| {
            let m = Arc::clone(m);
            tokio::spawn(async move { (m.rep.snapshot().await, m) })
        })
        .collect();
    let mut parts = Vec::new();
    for t in tasks {
        let Ok((r, m)) = t.await else { continue };
        let (snapshot, error) = match r {
            Ok(key) => (Some(key), None),
            Err(e) => (None, Some(e.to_string())),
        };
        parts.push(ReplicaReply {
            name: m.name.clone(),
            replica: m.replica.clone(),
            status: None,
            verification: None,
            snapshot,
            error,
        });
    }
    let failed: Vec<String> = parts
        .iter()
        .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.name)))
        .collect();
    let error = match (chosen.len(), failed.is_empty()) {
        (_, true) => None,
        (1, false) => parts.first().and_then(|p| p.error.clone()),
        _ => Some(format!("replica {}", failed.join("; replica "))),
    };
    Reply {
        ok: error.is_none(),
        error,
        snapshot: parts.iter().find_map(|p| p.snapshot.clone()),
        status: None,
        verification: None,
        replicas: parts,
    }
}

/// The replicas a request names: by name, or by URL (compared without
/// credentials); every one when none is named. A database with a single
/// replica answers for it whatever URL is given.
fn pick(replicas: &[Arc<DbMonitor>], named: Option<&str>) -> Result<Vec<Arc<DbMonitor>>, String> {
    let Some(named) = named else {
        return Ok(replicas.to_vec());
    };
    let described = crate::replica::ReplicaUrl::parse(named).map(|u| u.describe());
    let found: Vec<_> = replicas
        .iter()
        .filter(|m| m.name == named || described.as_ref().is_ok_and(|d| *d == m.replica))
        .cloned()
        .collect();
    match (found.is_empty(), replicas.len()) {
        (false, _) => Ok(found),
        (true, 1) => Ok(replicas.to_vec()),
        (true, _) => Err(format!(
            "the running replicate has no replica {named:?}: its replicas are {}",
            replicas
                .iter()
                .map(|m| format!("{} ({})", m.name, m.replica))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn error_reply(error: String) -> Reply {
    Reply {
        ok: false,
        error: Some(error),
        snapshot: None,
        status: None,
        verification: None,
        replicas: Vec::new(),
    }
}

/// Sends one request to the process replicating `db_path`.
pub async fn request(db_path: &Path, req: &Request) -> std::io::Result<Reply> {
    let stream = UnixStream::connect(socket_path(db_path)).await?;
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// The running process's status of the first replica, if one answers.
pub async fn live_status(db_path: &Path) -> Option<EngineStatus> {
    live(db_path, None)
        .await?
        .into_iter()
        .next()
        .map(|l| l.engine)
}

/// The running process's status and last verification of the replica named
/// (by name or URL; a process with one replica answers for it whatever is
/// named), or of every replica it replicates the database to, if it answers.
pub async fn live(db_path: &Path, replica: Option<&str>) -> Option<Vec<Live>> {
    let req = Request::Status {
        replica: replica.map(str::to_string),
    };
    let reply = request(db_path, &req).await.ok()?;
    if reply.replicas.is_empty() {
        // A process from before several replicas: one, unnamed.
        return Some(vec![Live {
            name: String::new(),
            replica: String::new(),
            engine: serde_json::from_value(reply.status?).ok()?,
            verification: reply.verification,
        }]);
    }
    Some(
        reply
            .replicas
            .into_iter()
            .filter_map(|r| {
                Some(Live {
                    name: r.name,
                    replica: r.replica,
                    engine: serde_json::from_value(r.status?).ok()?,
                    verification: r.verification,
                })
            })
            .collect(),
    )
}

/// Of the running process's replicas, the one `store` is (by its
/// description), or the only one.
pub fn live_for<'a>(all: &'a [Live], store: &str, name: Option<&str>) -> Option<&'a Live> {
    all.iter()
        .find(|l| name.is_some_and(|n| n == l.name) || l.replica == store)
        .or(match all {
            [one] => Some(one),
            _ => None,
        })
}
