//! `GET /api/v1/workers`: the worker registry.

use crate::{ApiError, AppState};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new().route("/workers", get(list))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let workers = state.engine.workers().await?;
    Ok(Json(json!({ "workers": workers })))
}
