//! `walstream::admin::router` over real HTTP: nested under the application's
//! own prefix, take a backup, list backups, health and status. Needs the
//! `axum` feature (`cargo test --features axum --test admin_router`).
#![cfg(feature = "axum")]

mod common;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

/// One HTTP/1.1 request on a fresh connection: (status code, JSON body).
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(body)
    } else {
        body.to_string()
    };
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (code, json)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_over_http() {
    let env = Env::new();
    let mut app = App::create(&env.db);
    let rep = walstream::Replicator::builder(&env.db)
        .replica(env.replica_arg())
        .start()
        .await
        .expect("start");
    let router: axum::Router =
        axum::Router::new().nest("/api/admin", walstream::admin::router(rep.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    app.commit_insert_many(3);
    let txid = rep.sync().await.expect("sync");
    let (code, backup) = request(addr, "POST", "/api/admin/backup").await;
    assert_eq!(code, 200, "{backup}");
    let key = backup["key"].as_str().expect("a key").to_string();
    assert_eq!(backup["txid"].as_u64(), Some(txid), "{backup}");

    let (code, list) = request(addr, "GET", "/api/admin/backups").await;
    assert_eq!(code, 200, "{list}");
    let keys: Vec<&str> = list["backups"]
        .as_array()
        .expect("backups")
        .iter()
        .filter_map(|b| b["key"].as_str())
        .collect();
    assert!(keys.contains(&key.as_str()), "{list}");
    assert_eq!(list["window"]["max_txid"].as_u64(), Some(txid), "{list}");

    let (code, health) = request(addr, "GET", "/api/admin/health").await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["health"], "healthy", "{health}");
    let (code, status) = request(addr, "GET", "/api/admin/status").await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["last_shipped_txid"].as_u64(), Some(txid), "{status}");
    let (code, _) = request(addr, "GET", "/api/admin/backup").await;
    assert_eq!(code, 405, "a backup needs POST");

    rep.shutdown().await.expect("shutdown");
    let (code, err) = request(addr, "POST", "/api/admin/backup").await;
    assert_eq!(code, 503, "after shutdown: {err}");
    assert!(err["error"].is_string(), "{err}");
    server.abort();
}
