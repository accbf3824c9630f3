//! `GET /health`: the database answers; with paid jobs, each external service's circuit
//! breaker and the flow catalog's sync state. `GET /health/live`: the process serves HTTP
//! (no database call; for liveness probes). `GET /health/ready`: the database answers and has
//! every migration of this build (for readiness probes and load balancers).

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

/// 200 while the process serves requests.
#[utoipa::path(get, path = "/health/live", tag = "health",
    responses((status = 200, description = "`{status: ok}`; no database call", body = Object)))]
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when the database answers and every embedded migration is applied, else 503.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, description = "`{status: ok, database: ok, migrations: applied}`", body = Object),
        (status = 503, description = "The database is unreachable or migrations are pending", body = Object)))]
pub(crate) async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.engine.store().pending_migrations().await {
        Ok(pending) if pending.is_empty() => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "database": "ok", "migrations": "applied" })),
        ),
        Ok(pending) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "database": "ok",
                "migrations": "pending",
                "pending_migrations": pending,
            })),
        ),
        Err(e) => {
            tracing::warn!(error.message = %e, "readiness check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "database": "unreachable" })),
            )
        }
    }
}

/// The database answers; with paid jobs, the services' circuit breakers and the flow sync.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "`{status: ok, database: ok, services?, flows?}`", body = Object),
        (status = 503, description = "The database is unreachable", body = Object)))]
pub(crate) async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = match state.engine.store().ping().await {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(error.message = %e, "health check: database unreachable");
            "unreachable"
        }
    };
    let mut body = json!({
        "status": if database == "ok" { "ok" } else { "unavailable" },
        "database": database,
    });
    if let Some(paid) = &state.paid {
        let (synced, last_error) = paid.catalog.sync_status();
        body["services"] = json!({
            "masumi": { "breaker": paid.services.masumi.breaker_state() },
            "kodosumi": { "breaker": paid.services.kodosumi.breaker_state() },
        });
        body["flows"] = json!({
            "count": paid.catalog.list().len(),
            "synced": synced,
            "last_sync_error": last_error,
        });
    }
    let status = if database == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
