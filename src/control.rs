//! The control socket of a running `replicate`: `walstream snapshot` and
//! `walstream status` talk to the process that already holds the database's pin
//! instead of opening a second one. One JSON request line, one JSON reply line,
//! on a Unix socket in the database's state directory (owner-only by umask of
//! the directory).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::capture::{state_dir, EngineStatus, Replication};
use crate::monitor::{DbMonitor, VerifyOutcome};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Status,
    Snapshot,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub error: Option<String>,
    pub snapshot: Option<String>,
    pub status: Option<EngineStatusWire>,
    /// The last scheduled verification (absent from older processes).
    #[serde(default)]
    pub verification: Option<VerifyOutcome>,
}

/// What the running process reports.
#[derive(Debug, Clone)]
pub struct Live {
    pub engine: EngineStatus,
    pub verification: Option<VerifyOutcome>,
}

/// `EngineStatus` as sent over the socket.
pub type EngineStatusWire = serde_json::Value;

pub fn socket_path(db_path: &Path) -> PathBuf {
    state_dir(db_path).join("control.sock")
}

/// Serves requests for `rep` until the returned task is aborted; `monitor`
/// adds its verification results to status replies.
pub fn serve(
    db_path: &Path,
    rep: Arc<Replication>,
    monitor: Option<Arc<DbMonitor>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(db_path);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let rep = Arc::clone(&rep);
            let verification = monitor.as_ref().and_then(|m| m.state().last_verify);
            tokio::spawn(async move {
                let _ = handle(stream, &rep, verification).await;
            });
        }
    }))
}

async fn handle(
    stream: UnixStream,
    rep: &Replication,
    verification: Option<VerifyOutcome>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => error_reply(format!("bad request: {e}")),
        Ok(Request::Status) => match rep.status().await {
            Ok(s) => Reply {
                ok: true,
                error: None,
                snapshot: None,
                status: serde_json::to_value(s).ok(),
                verification,
            },
            Err(e) => error_reply(e.to_string()),
        },
        Ok(Request::Snapshot) => match rep.snapshot().await {
            Ok(key) => Reply {
                ok: true,
                error: None,
                snapshot: Some(key),
                status: None,
                verification: None,
            },
            Err(e) => error_reply(e.to_string()),
        },
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

fn error_reply(error: String) -> Reply {
    Reply {
        ok: false,
        error: Some(error),
        snapshot: None,
        status: None,
        verification: None,
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

/// The running process's status, if one answers.
pub async fn live_status(db_path: &Path) -> Option<EngineStatus> {
    live(db_path).await.map(|l| l.engine)
}

/// The running process's status and last verification, if one answers.
pub async fn live(db_path: &Path) -> Option<Live> {
    let reply = request(db_path, &Request::Status).await.ok()?;
    Some(Live {
        engine: serde_json::from_value(reply.status?).ok()?,
        verification: reply.verification,
    })
}
