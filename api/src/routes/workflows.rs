//! `/api/v1/workflows`: start, list, get, history, attempts and signals.

use crate::error::{ApiJson, ApiPath, ApiQuery};
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use engine::{ListQuery, Status, WaitingOn, WorkflowId, WorkflowRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workflows", post(start).get(list))
        .route("/workflows/{id}", get(show))
        .route("/workflows/{id}/history", get(history))
        .route("/workflows/{id}/attempts", get(attempts))
        .route("/workflows/{id}/signals", post(signal))
}

/// Longest accepted idempotency key.
const MAX_KEY_LEN: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    #[serde(rename = "type")]
    workflow_type: String,
    #[serde(default)]
    key: Option<String>,
    input: Value,
}

/// A workflow as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct WorkflowView {
    pub id: WorkflowId,
    #[serde(rename = "type")]
    pub workflow_type: String,
    pub key: Option<String>,
    pub status: Status,
    pub input: Value,
    pub state: Value,
    pub output: Option<Value>,
    pub error: Option<engine::WorkflowError>,
    pub waiting_on: WaitingOn,
    pub version: i64,
    pub cancel_requested: bool,
    pub lease_owner: Option<engine::WorkerId>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub heartbeat_details: Option<Value>,
    pub pending_signals: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<WorkflowRecord> for WorkflowView {
    fn from(r: WorkflowRecord) -> Self {
        Self {
            waiting_on: r.waiting_on(),
            id: r.id,
            workflow_type: r.workflow_type,
            key: r.key,
            status: r.status,
            input: r.input,
            state: r.state,
            output: r.output,
            error: r.error,
            version: r.version,
            cancel_requested: r.cancel_requested,
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at,
            heartbeat_details: r.heartbeat_details,
            pending_signals: r.signals_unconsumed,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// Whether a JSON value holds U+0000 in a string or an object key. PostgreSQL stores neither
/// in `text` nor in `jsonb`, so such values are refused here as the client's error instead of
/// failing in the database (which would answer 503 `database_unavailable`).
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn parse_id(raw: &str) -> Result<WorkflowId, ApiError> {
    WorkflowId::parse(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("`{raw}` is not a workflow id (UUID)"),
        )
    })
}

async fn start(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<StartRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if let Some(key) = &req.key
        && (key.is_empty() || key.len() > MAX_KEY_LEN || key.contains('\0'))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_key",
            format!("key must be 1 to {MAX_KEY_LEN} bytes without NUL characters"),
        ));
    }
    if has_nul(&req.input) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "input must not contain NUL characters",
        ));
    }
    let started = state
        .engine
        .start(&req.workflow_type, req.key.clone(), req.input)
        .await?;
    let record = state.engine.get(started.id).await?;
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = serde_json::to_value(WorkflowView::from(record))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    body["created"] = json!(started.created);
    Ok((status, Json(body)))
}

async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.engine.get(id).await?.into()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    #[serde(rename = "type")]
    workflow_type: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let status = p
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("unknown status `{s}`"),
                )
            })
        })
        .transpose()?;
    if p.workflow_type.as_deref().is_some_and(|t| t.contains('\0')) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "type must not contain NUL characters",
        ));
    }
    let cursor = p.cursor.as_deref().map(parse_id).transpose()?;
    if p.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 500",
        ));
    }
    let limit = p.limit.unwrap_or(50);
    let rows = state
        .engine
        .list(ListQuery {
            status,
            workflow_type: p.workflow_type,
            limit: Some(limit),
            cursor,
        })
        .await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let workflows: Vec<WorkflowView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(
        json!({ "workflows": workflows, "next_cursor": next_cursor }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryParams {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn history(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let events = state
        .engine
        .history(id, p.after.unwrap_or(0), p.limit.unwrap_or(1000))
        .await?;
    Ok(Json(json!({ "id": id, "events": events })))
}

async fn attempts(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    state.engine.get(id).await?;
    let attempts = state.engine.attempts(id).await?;
    Ok(Json(json!({ "id": id, "attempts": attempts })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalRequest {
    name: String,
    #[serde(default)]
    payload: Value,
}

async fn signal(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<SignalRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    if req.name.contains('\0') || has_nul(&req.payload) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_signal",
            "signal name and payload must not contain NUL characters",
        ));
    }
    let accepted = state.engine.signal(id, &req.name, req.payload).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "signal": req.name, "seq": accepted.seq })),
    ))
}
