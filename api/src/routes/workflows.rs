//! `/api/v1/workflows`: start, list, get, history, attempts and signals.

use crate::error::ErrorBody;
use crate::error::{ApiJson, ApiPath, ApiQuery};
use crate::filter::Filter;
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use engine::{Status, WaitingOn, WorkflowId, WorkflowRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

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

/// Body of `POST /api/v1/workflows`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// A registered workflow type, e.g. `demo.chain`.
    #[serde(rename = "type")]
    #[schema(example = "demo.chain")]
    workflow_type: String,
    /// Idempotency key: a second start with the same (type, key) returns the first workflow.
    #[serde(default)]
    key: Option<String>,
    /// The workflow type's input.
    #[schema(value_type = Object, example = json!({"steps": 3, "sleep_ms": 100}))]
    input: Value,
}

/// A workflow as the admin API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowView {
    #[schema(value_type = String, format = Uuid)]
    pub id: WorkflowId,
    #[serde(rename = "type")]
    pub workflow_type: String,
    pub key: Option<String>,
    /// The label its type gave it at start (a paid job's flow uid).
    pub tag: Option<String>,
    #[schema(value_type = crate::openapi::StatusName)]
    pub status: Status,
    #[schema(value_type = Object)]
    pub input: Value,
    /// The state machine's current state.
    #[schema(value_type = Object)]
    pub state: Value,
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// `{code, message, details?}` of a failed workflow.
    #[schema(value_type = Option<Object>)]
    pub error: Option<engine::WorkflowError>,
    /// What it waits on: `{"kind": "activity" | "backing_off" | "timer" | "signal" | "paused" |
    /// "nothing", ...}` (activity: name, call_seq, attempt, worker, lease_expires_at;
    /// backing_off: next_attempt, until, last_error; timer: due_at).
    #[schema(value_type = Object)]
    pub waiting_on: WaitingOn,
    /// Seq of the last journal event.
    pub version: i64,
    pub cancel_requested: bool,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub lease_owner: Option<engine::WorkerId>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<Object>)]
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
            tag: r.tag,
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

pub(crate) fn parse_id(raw: &str) -> Result<WorkflowId, ApiError> {
    WorkflowId::parse(raw).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("`{raw}` is not a workflow id (UUID)"),
        )
    })
}

/// Starts a workflow (idempotent by type and key).
#[utoipa::path(
    post,
    path = "/api/v1/workflows",
    tag = "workflows",
    request_body = StartRequest,
    responses(
        (status = 201, description = "Created; the view with `created: true`", body = WorkflowView),
        (status = 200, description = "A workflow with this type and key exists; `created: false`", body = WorkflowView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "Unknown type, invalid input or key", body = ErrorBody),
    )
)]
pub(crate) async fn start(
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

/// One workflow with what it waits on.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}",
    tag = "workflows",
    params(("id" = String, Path, description = "Workflow id (UUID)")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WorkflowView>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.engine.get(id).await?.into()))
}

/// Query of `GET /api/v1/workflows`: the [`Filter`] fields, a page size and a cursor.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `running`, `paused`, `completed`, `failed` or `cancelled`.
    status: Option<String>,
    /// The workflow type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    workflow_type: Option<String>,
    /// A paid job's flow uid.
    flow: Option<String>,
    /// Created at or after this time (RFC 3339).
    created_after: Option<String>,
    /// Created before this time (RFC 3339).
    created_before: Option<String>,
    /// Key contains it (ASCII case-insensitive) or id starts with it.
    q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of workflows, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkflowPage {
    pub workflows: Vec<WorkflowView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub next_cursor: Option<WorkflowId>,
}

/// Lists workflows, newest first, filtered and paged.
#[utoipa::path(
    get,
    path = "/api/v1/workflows",
    tag = "workflows",
    params(ListParams),
    responses(
        (status = 200, description = "A page of workflows", body = WorkflowPage),
        (status = 400, description = "Bad filter, limit or cursor", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<WorkflowPage>, ApiError> {
    let mut query = Filter {
        status: p.status,
        workflow_type: p.workflow_type,
        flow: p.flow,
        created_after: p.created_after,
        created_before: p.created_before,
        q: p.q,
    }
    .query()?;
    let cursor = p.cursor.as_deref().map(parse_id).transpose()?;
    if p.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 500",
        ));
    }
    let limit = p.limit.unwrap_or(50);
    query.limit = Some(limit);
    query.cursor = cursor;
    let rows = state.engine.list(query).await?;
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(WorkflowPage {
        workflows: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Query of the history: a window of the journal.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Only events with a larger seq.
    after: Option<i64>,
    /// At most this many events (default 1000, at most 10000).
    limit: Option<i64>,
}

/// The journal: every event, oldest first (`{seq, kind, payload, created_at}`).
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/history",
    tag = "workflows",
    params(("id" = String, Path, description = "Workflow id (UUID)"), HistoryParams),
    responses(
        (status = 200, description = "`{id, events: [{seq, kind, payload, created_at}]}`", body = crate::openapi::HistoryDoc),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub(crate) async fn history(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let events = state
        .engine
        .history(id, p.after.unwrap_or(0), p.limit.unwrap_or(1000))
        .await?;
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            // The kind's fields, without the `kind` tag itself.
            let mut payload = serde_json::to_value(&e.kind).unwrap_or(Value::Null);
            if let Some(fields) = payload.as_object_mut() {
                fields.remove("kind");
            }
            json!({
                "seq": e.seq,
                "kind": e.kind.name(),
                "payload": payload,
                "created_at": e.created_at,
            })
        })
        .collect();
    Ok(Json(json!({ "id": id, "events": events })))
}

/// Every activity attempt with its outcome, error, duration and worker.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/attempts",
    tag = "workflows",
    params(("id" = String, Path, description = "Workflow id (UUID)")),
    responses(
        (status = 200, description = "The attempts, by call and attempt", body = crate::openapi::AttemptsDoc),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub(crate) async fn attempts(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    state.engine.get(id).await?;
    let attempts = state.engine.attempts(id).await?;
    Ok(Json(json!({ "id": id, "attempts": attempts })))
}

/// Body of `POST /api/v1/workflows/{id}/signals`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// `pause`, `resume`, `cancel`, or a custom signal of the workflow type.
    #[schema(example = "pause")]
    name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    payload: Value,
}

/// Sends a signal; it is durable once accepted and applied at the next transition boundary.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/signals",
    tag = "workflows",
    params(("id" = String, Path, description = "Workflow id (UUID)")),
    request_body = SignalRequest,
    responses(
        (status = 202, description = "`{id, signal, seq}`", body = Object),
        (status = 404, description = "No such workflow", body = ErrorBody),
        (status = 409, description = "The workflow already finished", body = ErrorBody),
        (status = 422, description = "Invalid signal", body = ErrorBody),
    )
)]
pub(crate) async fn signal(
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
