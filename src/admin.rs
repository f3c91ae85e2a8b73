//! Admin endpoints for an axum application (cargo feature `axum`): take a
//! backup now, list the backups, report health. Mount them under the
//! application's own authentication; they have none of their own.
//!
//! | route | answer |
//! |---|---|
//! | `POST /backup` | `{"key", "txid", "time"}` of the snapshot just taken |
//! | `GET /backups` | `{"backups": [...], "window": {...}}` ([`Backups`]) |
//! | `GET /status` | what `walstream status --json` prints for the database |
//! | `GET /health` | as the metrics endpoint's `/health`: 200 when healthy, else 503 |
//!
//! Failures answer 500 (503 once replication has stopped) with `{"error"}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::health::Level;
use crate::replicator::{Backups, Replicator, ReplicatorError};

/// The admin routes, to `nest` (e.g. under `/api/admin`) in any router.
pub fn router<S: Clone + Send + Sync + 'static>(replicator: Replicator) -> Router<S> {
    Router::new()
        .route("/backup", post(backup))
        .route("/backups", get(backups))
        .route("/status", get(status))
        .route("/health", get(health))
        .with_state(replicator)
}

async fn backup(State(rep): State<Replicator>) -> Response {
    match rep.backup_now().await {
        Ok(key) => {
            let info = crate::catalog::parse_key(&key, 0);
            let txid = info.as_ref().map(|i| i.max_txid);
            let time = info.map(|i| crate::restore::format_time(i.max_time_ms));
            Json(json!({"key": key, "txid": txid, "time": time})).into_response()
        }
        Err(e) => failure(&rep, e),
    }
}

async fn backups(State(rep): State<Replicator>) -> Response {
    match rep.list_backups().await {
        Ok(b) => Json::<Backups>(b).into_response(),
        Err(e) => failure(&rep, e),
    }
}

async fn status(State(rep): State<Replicator>) -> Response {
    match rep.status().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => failure(&rep, e),
    }
}

async fn health(State(rep): State<Replicator>) -> Response {
    let report = rep.health().await;
    let code = match report.health.level {
        Level::Healthy => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let (_, body) = crate::metrics::health_json(std::slice::from_ref(&report));
    let headers = [(axum::http::header::CONTENT_TYPE, "application/json")];
    (code, headers, body).into_response()
}

fn failure(rep: &Replicator, e: ReplicatorError) -> Response {
    tracing::warn!(db = %rep.database().display(), error = %e, "admin request failed");
    let code = match rep.replication().is_finished() {
        true => StatusCode::SERVICE_UNAVAILABLE,
        false => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(json!({"error": e.to_string()}))).into_response()
}
