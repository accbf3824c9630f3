//! `GET /api/v1/workers`: the worker registry.

use crate::{ApiError, AppState};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new().route("/workers", get(list))
}

/// The worker registry: alive, slots used, last heartbeat.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers",
    responses((status = 200, description = "`{workers: [{id, host, pid, slots, slots_used, lease_ttl_ms, started_at, heartbeat_at, stopped_at, alive}]}`", body = crate::openapi::WorkersDoc)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let workers = state.engine.workers().await?;
    Ok(Json(json!({ "workers": workers })))
}
