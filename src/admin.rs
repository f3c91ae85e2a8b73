//! Admin endpoints for an axum application (cargo feature `axum`): take a
//! backup now, list the backups, report health. Mount them under the
//! application's own authentication; they have none of their own.
//!
//! | route | answer |
//! |---|---|
//! | `POST /backup` | `{"key", "txid", "time"}` of the snapshot just taken (the first replica's that succeeded); with several replicas also `"replicas": [{"name", "key"} or {"name", "error"}]` |
//! | `GET /backups` | `{"backups": [...], "window": {...}, "replicas": [...]}` ([`Backups`]) |
//! | `GET /status` | what `walstream status --json` prints for the database: one object, or with several replicas an array of one per replica |
//! | `GET /health` | as the metrics endpoint's `/health` (every replica): 200 when all are healthy, else 503 |
//!
//! Failures answer 500 (503 once replication has stopped) with `{"error"}`.
//! With several replicas, a failing one does not fail `POST /backup` or
//! `GET /backups` while another succeeds: it shows in their `replicas` and in
//! `/health`.

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
    let outcomes = rep.backup_now_each().await;
    let several = outcomes.len() > 1;
    let replicas: Vec<_> = outcomes
        .iter()
        .map(|o| match &o.result {
            Ok(key) => json!({"name": o.name, "key": key}),
            Err(e) => json!({"name": o.name, "error": e.to_string()}),
        })
        .collect();
    let first = outcomes.into_iter().find_map(|o| o.result.ok());
    let Some(key) = first else {
        let e = crate::error::CaptureError::Stopped(
            replicas
                .iter()
                .filter_map(|r| r["error"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
                .join("; "),
        );
        return failure(&rep, e.into());
    };
    let info = crate::catalog::parse_key(&key, 0);
    let txid = info.as_ref().map(|i| i.max_txid);
    let time = info.map(|i| crate::restore::format_time(i.max_time_ms));
    let mut body = json!({"key": key, "txid": txid, "time": time});
    if several {
        body["replicas"] = json!(replicas);
    }
    Json(body).into_response()
}

async fn backups(State(rep): State<Replicator>) -> Response {
    match rep.list_backups().await {
        Ok(b) => Json::<Backups>(b).into_response(),
        Err(e) => failure(&rep, e),
    }
}

async fn status(State(rep): State<Replicator>) -> Response {
    if rep.replicas().len() == 1 {
        return match rep.status().await {
            Ok(s) => Json(s).into_response(),
            Err(e) => failure(&rep, e),
        };
    }
    let all: Vec<_> = rep
        .statuses()
        .await
        .into_iter()
        .map(|o| match o.result {
            Ok(s) => serde_json::to_value(s).unwrap_or_default(),
            Err(e) => json!({"replica_name": o.name, "error": e.to_string()}),
        })
        .collect();
    Json(all).into_response()
}

async fn health(State(rep): State<Replicator>) -> Response {
    let reports = rep.health_all().await;
    let worst = reports.iter().map(|r| r.health.level).max();
    let code = match worst {
        Some(Level::Healthy) | None => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let (_, body) = crate::metrics::health_json(&reports);
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
