//! Health, metrics and notifications, end to end: `status` exit codes, the
//! metrics endpoint of a running `replicate` (real HTTP requests), scheduled
//! verification results, and webhook deliveries to a local HTTP server.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A `walstream replicate --config FILE` in the background, killed on drop.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    fn spawn(config: &Path, log: &Path, env: &[(&str, &str)]) -> Running {
        let file = File::create(log).expect("log");
        let mut cmd = Command::new(bin());
        cmd.arg("replicate")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().expect("log")))
            .stderr(Stdio::from(file))
            .env("WALSTREAM_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Running {
            child: cmd.spawn().expect("spawning replicate"),
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `needle`; returns the line.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + SHIP_TIMEOUT;
        loop {
            if let Some(l) = self.log().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("replicate exited ({st}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the metrics endpoint bound (port 0 picks a free one).
    fn metrics_addr(&mut self) -> String {
        let line = self.wait_line("metrics endpoint listening");
        line.split("addr=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next())
            .expect("the bound address in the log")
            .to_string()
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = wait_child(&mut self.child, SHIP_TIMEOUT).expect("replicate exits");
        assert_eq!(st.code(), Some(0), "{}", self.log());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(env: &Env, extra: &str) -> std::path::PathBuf {
    let path = env.path("walstream.toml");
    let text = format!(
        "{extra}\n[[db]]\npath = \"{}\"\n[[db.replica]]\nurl = \"{}\"\n",
        env.db.display(),
        env.replica.display()
    );
    write_file(&path, text.as_bytes());
    path
}

/// GET `path` from `addr`: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    s.set_read_timeout(Some(CMD_TIMEOUT)).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of the sample of `metric` whose labels contain `label`.
fn sample(metrics: &str, metric: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn status(db: &Path, replica: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["status".to_string(), "--json".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(db.display().to_string());
    args.push(replica.display().to_string());
    walstream(args)
}

#[test]
fn status_exit_codes_follow_health() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    replicate_once(&env.db, &env.replica_arg());

    // Not running, fresh snapshot: warning (exit 1), with the reason.
    let o = status(&env.db, &env.replica, &[]);
    assert_eq!(o.code(), Some(1), "{o}");
    let v = o.json();
    assert_eq!(v["health"]["level"], "warning", "{o}");
    assert!(o.stdout.contains("not running"), "{o}");
    for field in [
        "lag_ms",
        "lag_bytes",
        "pending_commits",
        "last_snapshot_age_ms",
        "window",
    ] {
        assert!(v.get(field).is_some(), "status --json lacks {field}: {o}");
    }

    // Committed but not shipped: lag in transactions and bytes, read from the
    // WAL after the replica's last position. A reader holding a snapshot keeps
    // the WAL from restarting, so that position stays readable.
    let reader = open_app_connection(&env.db);
    reader.execute_batch("BEGIN").expect("begin");
    let _: i64 = reader
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .expect("a read");
    app.commit_insert_many(10);
    replicate_once(&env.db, &env.replica_arg());
    app.commit_insert_many(10);
    let v = status(&env.db, &env.replica, &[]).json();
    assert_eq!(v["pending_commits"].as_u64(), Some(1), "{v:#}");
    assert!(v["lag_bytes"].as_u64().is_some_and(|b| b >= 4096), "{v:#}");
    drop(reader);

    // Thresholds from the config: the snapshot ages past them.
    let cfg = config(
        &env,
        "health_warning_after = \"1s\"\nhealth_critical_after = \"2s\"\n",
    );
    thread::sleep(Duration::from_millis(2100));
    let o = status(
        &env.db,
        &env.replica,
        &["--config", &cfg.display().to_string()],
    );
    assert_eq!(o.code(), Some(2), "{o}");
    assert_eq!(o.json()["health"]["level"], "critical", "{o}");
    assert!(o.stdout.contains("last snapshot is"), "{o}");
    // Without DB_PATH REPLICA_URL: every database of the config, as an array.
    let o = walstream(["status", "--json", "--config", &cfg.display().to_string()]);
    assert_eq!(o.code(), Some(2), "{o}");
    assert_eq!(o.json()[0]["health"]["level"], "critical", "{o}");

    // Could not tell: 3.
    let o = walstream([
        "status",
        &env.db.display().to_string(),
        "s3://no-bucket/x?endpoint=http://127.0.0.1:1",
    ]);
    assert_eq!(o.code(), Some(3), "{o}");
}

#[test]
fn metrics_endpoint_and_scheduled_verification() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    let cfg = config(
        &env,
        "verify_interval = \"1s\"\nmetrics_addr = \"127.0.0.1:0\"\n",
    );
    let mut rep = Running::spawn(&cfg, &env.path("replicate.log"), &[]);
    let addr = rep.metrics_addr();
    app.commit_insert_many(20);
    rep.wait_line("scheduled verification passed");
    wait_shipped(&env.db, &env.replica_arg(), 2);

    let (st, body) = http_get(&addr, "/metrics");
    assert!(st.contains("200"), "{st}\n{body}");
    let db = format!("db=\"{}\"", env.db.display());
    for family in [
        "# TYPE walstream_up gauge",
        "# TYPE walstream_lag_seconds gauge",
        "# TYPE walstream_pending_bytes gauge",
        "# TYPE walstream_wal_bytes gauge",
        "# TYPE walstream_checkpoints_total counter",
        "# TYPE walstream_writers_held_seconds_total counter",
        "# TYPE walstream_errors_total counter",
        "# HELP walstream_last_upload_timestamp_seconds ",
    ] {
        assert!(body.contains(family), "missing {family:?}:\n{body}");
    }
    assert_eq!(sample(&body, "walstream_up", &db), Some(1.0), "{body}");
    assert_eq!(sample(&body, "walstream_health", &db), Some(0.0), "{body}");
    assert!(sample(&body, "walstream_last_shipped_txid", &db).is_some_and(|t| t >= 2.0));
    // Starting the lineage pinned the WAL with the writers held for a moment.
    let held = sample(&body, "walstream_writers_held_seconds_total", &db);
    assert!(held.is_some_and(|s| s > 0.0 && s < 5.0), "{held:?}\n{body}");
    assert!(
        sample(&body, "walstream_verifications_total", "result=\"ok\"").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "walstream_last_verification_success", &db),
        Some(1.0),
        "{body}"
    );

    let (st, body) = http_get(&addr, "/health");
    assert!(st.contains("200"), "{st}\n{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["health"], "healthy", "{v:#}");
    assert_eq!(v["databases"][0]["last_verification"]["ok"], true, "{v:#}");
    assert!(http_get(&addr, "/nope").0.contains("404"));

    // status reads the verification result from the running process.
    let o = status(&env.db, &env.replica, &[]);
    assert_eq!(o.code(), Some(0), "{o}");
    assert_eq!(o.json()["last_verification"]["ok"], true, "{o}");
    rep.stop();
}

#[test]
fn a_failed_scheduled_verification_turns_health_critical() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    app.commit_insert_many(30);
    let cfg = config(
        &env,
        "verify_interval = \"1s\"\nmetrics_addr = \"127.0.0.1:0\"\n",
    );
    let mut rep = Running::spawn(&cfg, &env.path("replicate.log"), &[]);
    let addr = rep.metrics_addr();
    rep.wait_line("scheduled verification passed");

    // The only snapshot is damaged: the latest state no longer restores.
    let snap = snapshots(&list_json(&env.replica_arg())).remove(0);
    let path = env.replica.join(&snap.key);
    let h = object_header_len(&path);
    flip_byte(&path, h + (snap.size - h - 4) / 2);
    rep.wait_line("scheduled verification FAILED");

    let (st, body) = http_get(&addr, "/health");
    assert!(st.contains("503"), "{st}\n{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["health"], "critical", "{v:#}");
    let problems = v["databases"][0]["last_verification"]["problems"].to_string();
    assert!(
        problems.contains(&snap.key),
        "the damaged object is named: {v:#}"
    );
    let (_, metrics) = http_get(&addr, "/metrics");
    let db = format!("db=\"{}\"", env.db.display());
    assert_eq!(
        sample(&metrics, "walstream_last_verification_success", &db),
        Some(0.0)
    );
    assert_eq!(sample(&metrics, "walstream_health", &db), Some(2.0));
    let o = status(&env.db, &env.replica, &[]);
    assert_eq!(o.code(), Some(2), "{o}");
    assert!(o.stdout.contains("the last verification failed"), "{o}");
    rep.stop();
}

/// A local HTTP server that answers 200 and hands each request's head and
/// body to the test.
fn webhook_server() -> (u16, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let mut s = r.into_inner();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = tx.send((head, String::from_utf8_lossy(&body).into_owned()));
        }
    });
    (port, rx)
}

/// The next delivery: (request head, body, body as JSON).
fn next_event(
    rx: &mpsc::Receiver<(String, String)>,
    what: &str,
) -> (String, String, serde_json::Value) {
    let (head, body) = rx
        .recv_timeout(SHIP_TIMEOUT)
        .unwrap_or_else(|_| panic!("no webhook delivery for {what}"));
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (head, body, v)
}

#[test]
fn webhook_reports_health_changes_and_heartbeats_without_secrets() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    let (port, rx) = webhook_server();
    let key = walstream::Key::generate().expect("a key").to_base64();
    let url = format!("http://hookuser:hunter2pass@127.0.0.1:{port}/hook?token=tok3nvalue");
    let cfg = config(
        &env,
        &format!(
            "webhook_url = \"{url}\"\nwebhook_heartbeat = true\nverify_interval = \"off\"\n\
             health_warning_after = \"3s\"\nhealth_critical_after = \"1h\"\n\
             [encryption]\nenabled = true\nkey = \"${{WALSTREAM_TEST_HOOK_KEY}}\"\n"
        ),
    );
    let mut rep = Running::spawn(
        &cfg,
        &env.path("replicate.log"),
        &[("WALSTREAM_TEST_HOOK_KEY", &key)],
    );
    rep.wait_line("replicating db=");
    // A commit after the snapshot: the snapshot no longer holds the current
    // state, so it ages past the warning threshold.
    app.commit_insert_many(5);

    let (head1, body1, ev) = next_event(&rx, "the warning");
    assert_eq!(ev["event"], "health_changed", "{ev:#}");
    assert_eq!(ev["health"], "warning", "{ev:#}");
    assert_eq!(ev["previous"], "healthy", "{ev:#}");
    assert_eq!(ev["database"], env.db.display().to_string(), "{ev:#}");
    assert!(
        ev["reasons"][0].as_str().unwrap_or("").contains("snapshot"),
        "{ev:#}"
    );

    let snap = walstream([
        "snapshot",
        &env.db.display().to_string(),
        &env.replica_arg(),
    ]);
    snap.assert_success();
    let (head2, body2, a) = next_event(&rx, "the snapshot");
    let (head3, body3, b) = next_event(&rx, "the recovery");
    let kinds = [a["event"].clone(), b["event"].clone()];
    assert!(kinds.contains(&"heartbeat".into()), "{a:#} {b:#}");
    let recovery = if a["event"] == "health_changed" {
        &a
    } else {
        &b
    };
    assert_eq!(recovery["health"], "healthy", "{recovery:#}");
    assert_eq!(recovery["previous"], "warning", "{recovery:#}");

    for (head, body) in [(head1, body1), (head2, body2), (head3, body3)] {
        for secret in ["hunter2pass", "tok3nvalue", "hookuser", key.as_str()] {
            assert!(
                !body.contains(secret),
                "{secret} leaked into a payload:\n{body}"
            );
        }
        // The URL's user and password are not sent along either.
        assert!(!head.contains("hunter2pass"), "{head}");
        assert!(!head.to_lowercase().contains("authorization"), "{head}");
    }
    let log = rep.log();
    for secret in ["hunter2pass", "tok3nvalue", key.as_str()] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
    rep.stop();
}
