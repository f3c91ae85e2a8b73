//! The metrics endpoint: `/metrics` (Prometheus text format 0.0.4) and
//! `/health` (JSON), served by a deliberately tiny HTTP/1.1 responder: one GET
//! per connection, then close. Scrapes only read the monitors' state and ask
//! the capture threads for their status; they never touch the replica.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::health::Level;
use crate::monitor::{DbMonitor, DbReport};

/// Longest request head read; anything larger is refused.
const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent connections served; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;

/// Binds `addr` and serves until the returned task is aborted. Returns the
/// bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    monitors: Arc<Vec<Arc<DbMonitor>>>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let monitors = Arc::clone(&monitors);
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &monitors).await {
                    tracing::debug!(error = %e, "metrics request failed");
                }
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

async fn handle(mut stream: TcpStream, monitors: &[Arc<DbMonitor>]) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    };
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => {
            let reports = reports(monitors).await;
            let body = render(&reports, chrono::Utc::now().timestamp_millis());
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET", "/health") => {
            let reports = reports(monitors).await;
            let (code, body) = health_json(&reports);
            (code, "application/json", body)
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /health\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The request line and headers (the body of a GET is ignored).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn reports(monitors: &[Arc<DbMonitor>]) -> Vec<DbReport> {
    let mut out = Vec::with_capacity(monitors.len());
    for m in monitors {
        out.push(m.report().await);
    }
    out
}

/// `/health`: 200 when every replica of every database is healthy, 503
/// otherwise (so a plain
/// HTTP check works), with the same levels and reasons as `walstream status`.
pub fn health_json(reports: &[DbReport]) -> (&'static str, String) {
    let worst = reports
        .iter()
        .map(|r| r.health.level)
        .max()
        .unwrap_or(Level::Healthy);
    let dbs: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "database": r.db,
                "replica": r.replica,
                "replica_name": r.name,
                "health": r.health.level,
                "reasons": r.health.reasons,
                "replicating": r.running,
                "last_verification": r.state.last_verify,
            })
        })
        .collect();
    let body = serde_json::json!({"health": worst, "databases": dbs}).to_string();
    let code = match worst {
        Level::Healthy => "200 OK",
        _ => "503 Service Unavailable",
    };
    (code, body)
}

/// Samples of one family for one database: (extra labels, value).
type Samples = fn(&DbReport, i64) -> Vec<(String, f64)>;

fn one(v: f64) -> Vec<(String, f64)> {
    vec![(String::new(), v)]
}

fn secs(ms: Option<i64>) -> Vec<(String, f64)> {
    ms.map(|t| one(t as f64 / 1000.0)).unwrap_or_default()
}

fn labeled(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
    pairs.iter().map(|(l, v)| (l.to_string(), *v)).collect()
}

/// Every metric: name, type, help, samples. Documented in `docs/monitoring.md`.
// One entry per metric, unformatted: it reads as the table it is.
#[rustfmt::skip]
const FAMILIES: &[(&str, &str, &str, Samples)] = &[
    ("walstream_up", "gauge", "1 while the capture thread runs.",
        |r, _| one(f64::from(u8::from(r.running)))),
    ("walstream_health", "gauge", "0 healthy, 1 warning, 2 critical.",
        |r, _| one(f64::from(r.health.level.exit_code()))),
    ("walstream_lag_seconds", "gauge", "Age of the oldest commit not yet in the replica.",
        |r, _| one(r.engine.lag_ms as f64 / 1000.0)),
    ("walstream_lag_transactions", "gauge", "Committed transactions not yet in the replica.",
        |r, _| one(r.engine.pending_commits as f64)),
    ("walstream_pending_bytes", "gauge", "WAL bytes of the commits not yet in the replica.",
        |r, _| one(r.engine.pending_bytes as f64)),
    ("walstream_wal_bytes", "gauge", "Size of the database's -wal file.",
        |r, _| one(r.engine.wal_bytes as f64)),
    ("walstream_last_shipped_txid", "gauge", "Last txid durably in the replica.",
        |r, _| one(r.engine.last_shipped_txid as f64)),
    ("walstream_last_upload_timestamp_seconds", "gauge", "When the last segment was stored (Unix time).",
        |r, _| secs(r.engine.last_shipped_time_ms)),
    ("walstream_last_snapshot_timestamp_seconds", "gauge", "Time of the state in the newest snapshot (Unix time).",
        |r, _| secs(r.engine.last_snapshot_time_ms)),
    ("walstream_snapshot_age_seconds", "gauge", "Age of the state in the newest snapshot.",
        |r, now| secs(r.engine.last_snapshot_time_ms.map(|t| now - t))),
    ("walstream_snapshot_duration_seconds", "gauge", "Duration of the last scheduled or requested snapshot.",
        |r, _| secs(r.engine.last_snapshot_duration_ms.map(|d| d as i64))),
    ("walstream_checkpoints_total", "counter", "Checkpoint cycles completed, by mode.",
        |r, _| labeled(&[("mode=\"passive\"", r.engine.checkpoints as f64)])),
    ("walstream_checkpoint_duration_seconds", "gauge", "Duration of the last checkpoint cycle, by mode.",
        |r, _| match r.engine.last_checkpoint_duration_ms {
            Some(d) => labeled(&[("mode=\"passive\"", d as f64 / 1000.0)]),
            None => Vec::new(),
        }),
    ("walstream_writers_held_seconds_total", "counter", "Time the application's writers were held for checkpoints and lineage starts.",
        |r, _| one(r.engine.writers_held_us as f64 / 1e6)),
    ("walstream_errors_total", "counter", "Errors by operation (each retried or reported).",
        |r, _| labeled(&[
            ("op=\"replicate\"", r.engine.errors as f64),
            ("op=\"verify\"", r.state.verify_error_total as f64),
            ("op=\"webhook\"", r.state.webhook_failed_total as f64),
        ])),
    ("walstream_verifications_total", "counter", "Scheduled deep verifications, by result.",
        |r, _| labeled(&[
            ("result=\"ok\"", r.state.verify_ok_total as f64),
            ("result=\"failed\"", r.state.verify_failed_total as f64),
        ])),
    ("walstream_last_verification_success", "gauge", "1 if the last scheduled verification proved its restore, else 0.",
        |r, _| r.state.last_verify.as_ref().map(|v| one(f64::from(u8::from(v.ok)))).unwrap_or_default()),
    ("walstream_last_verification_timestamp_seconds", "gauge", "When the last scheduled verification ended (Unix time).",
        |r, _| secs(r.state.last_verify.as_ref().map(|v| v.time_ms))),
    ("walstream_last_verification_duration_seconds", "gauge", "Duration of the last scheduled verification.",
        |r, _| secs(r.state.last_verify.as_ref().map(|v| v.duration_ms as i64))),
];

/// The Prometheus text exposition of `reports` at `now_ms`.
pub fn render(reports: &[DbReport], now_ms: i64) -> String {
    let mut out = String::new();
    for (name, kind, help, samples) in FAMILIES {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for r in reports {
            let base = format!(
                "db=\"{}\",replica=\"{}\"",
                escape(&r.db),
                escape(&r.replica)
            );
            for (extra, v) in samples(r, now_ms) {
                let labels = match extra.is_empty() {
                    true => base.clone(),
                    false => format!("{base},{extra}"),
                };
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    }
    out
}

/// Label values: backslash, quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::monitor::MonitorState;

    fn report(db: &str, level: Level) -> DbReport {
        DbReport {
            db: db.into(),
            name: "s3".into(),
            replica: "s3://b/p".into(),
            running: true,
            engine: crate::EngineStatus {
                lag_ms: 1500,
                checkpoints: 3,
                last_snapshot_time_ms: Some(1_000),
                ..Default::default()
            },
            state: MonitorState::default(),
            health: Health {
                level,
                reasons: vec![],
            },
        }
    }

    #[test]
    fn every_family_has_help_type_and_escaped_labels() {
        let text = render(
            &[
                report("/a \"x\".db", Level::Healthy),
                report("/b.db", Level::Critical),
            ],
            61_000,
        );
        for (name, kind, _, _) in FAMILIES {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
        }
        let a = r#"db="/a \"x\".db",replica="s3://b/p""#;
        assert!(
            text.contains(&format!("walstream_lag_seconds{{{a}}} 1.5\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("walstream_snapshot_age_seconds{{{a}}} 60\n")),
            "{text}"
        );
        assert!(text.contains("walstream_health{db=\"/b.db\",replica=\"s3://b/p\"} 2\n"));
        assert!(text.contains(&format!(
            "walstream_checkpoints_total{{{a},mode=\"passive\"}} 3\n"
        )));
        let (code, body) =
            health_json(&[report("/a", Level::Healthy), report("/b", Level::Warning)]);
        assert_eq!(code, "503 Service Unavailable");
        assert!(body.contains("\"health\":\"warning\""), "{body}");
    }
}
