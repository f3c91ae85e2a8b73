//! A small axum application that keeps its data in one SQLite file and embeds
//! walstream: `POST /api/notes` writes a note and answers once it is durable
//! in the replica; `POST /api/admin/backup` and `GET /api/admin/backups` are
//! walstream's admin routes behind the application's own bearer token.
//!
//! ```sh
//! ADMIN_TOKEN=secret cargo run --features axum --example axum_app -- \
//!     app.db /var/backups/app 127.0.0.1:3000
//! # or with the application's config file ([storage.backup], docs/config.md):
//! ADMIN_TOKEN=secret cargo run --features axum --example axum_app -- \
//!     app.db --config app.toml 127.0.0.1:3000
//! curl -X POST -d 'hello' 127.0.0.1:3000/api/notes
//! curl -X POST -H 'Authorization: Bearer secret' 127.0.0.1:3000/api/admin/backup
//! curl -H 'Authorization: Bearer secret' 127.0.0.1:3000/api/admin/backups
//! ```
//!
//! Ctrl-C (or SIGTERM) stops the server, then ships every committed note.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rusqlite::Connection;
use walstream::Replicator;

#[derive(Clone)]
struct App {
    db: Arc<Mutex<Connection>>,
    replicator: Replicator,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (db_path, replica, addr) = match args.as_slice() {
        [db, flag, config, addr] if flag == "--config" => (db, Err(config), addr),
        [db, replica, addr] => (db, Ok(replica), addr),
        _ => return Err("usage: axum_app DB (REPLICA | --config FILE) HOST:PORT".into()),
    };
    let db_path = PathBuf::from(db_path);
    let conn = Connection::open(&db_path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")?;
    let builder = Replicator::builder(&db_path);
    let builder = match replica {
        Ok(url) => builder.replica(url.as_str()),
        Err(config) => builder.config(&walstream::config::Config::load(config.as_ref(), true)?)?,
    };
    let replicator = builder.start().await?;
    let app = App {
        db: Arc::new(Mutex::new(conn)),
        replicator: replicator.clone(),
    };
    let admin = walstream::admin::router(replicator.clone())
        .layer(middleware::from_fn(require_admin_token));
    let router = Router::new()
        .route("/api/notes", post(add_note))
        .with_state(app)
        .nest("/api/admin", admin);
    let listener = tokio::net::TcpListener::bind(addr.as_str()).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    replicator.shutdown().await?;
    Ok(())
}

/// Writes one note; answers with its txid once it is in the replica.
async fn add_note(State(app): State<App>, body: String) -> Response {
    let db = Arc::clone(&app.db);
    let written = tokio::task::spawn_blocking(move || {
        let conn = db
            .lock()
            .map_err(|_| "database lock poisoned".to_string())?;
        conn.execute("INSERT INTO notes(body) VALUES (?1)", [body])
            .map_err(|e| e.to_string())
    })
    .await;
    if let Err(e) = written.map_err(|e| e.to_string()).and_then(|r| r) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response();
    }
    match app.replicator.sync().await {
        Ok(txid) => format!("stored, durable as txid {txid}\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The application's own authentication, here a bearer token from ADMIN_TOKEN.
async fn require_admin_token(req: Request, next: Next) -> Response {
    let want = std::env::var("ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (want, given) {
        (Some(w), Some(g)) if w == g => next.run(req).await,
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
