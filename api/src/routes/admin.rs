//! Operators' views under `/api/v1`: counts per status, a workflow's timeline, a paid job's
//! payment, the flows, and bulk pause/resume/cancel with pollable progress.

use crate::error::{ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::filter::Filter;
use crate::operations::{Action, OperationView, Operations};
use crate::routes::workflows::parse_id;
use crate::{ApiError, AppState};
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use engine::{Cause, Event, EventKind, Pending, Status, WorkflowId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use workflows::paid_job::{PaidJob, PaidJobState, PaymentView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workflows/counts", get(counts))
        .route("/workflows/bulk", post(bulk))
        .route("/workflows/{id}/timeline", get(timeline))
        .route("/workflows/{id}/payment", get(payment))
        .route("/operations/{id}", get(operation))
        .route("/flows", get(flows))
}

/// Query of the counts: the list's filter without status, page and cursor.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CountParams {
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
}

/// Workflows per status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Counts {
    /// Every status with its count (0 included).
    #[schema(example = json!({"running": 3, "paused": 0, "completed": 10, "failed": 1, "cancelled": 0}))]
    pub counts: BTreeMap<&'static str, i64>,
    pub total: i64,
}

/// How many workflows match, per status.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/counts",
    tag = "workflows",
    params(CountParams),
    responses(
        (status = 200, description = "Counts per status", body = Counts),
        (status = 400, description = "Bad filter", body = ErrorBody),
    )
)]
pub(crate) async fn counts(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<CountParams>,
) -> Result<Json<Counts>, ApiError> {
    let query = Filter {
        status: None,
        workflow_type: p.workflow_type,
        flow: p.flow,
        created_after: p.created_after,
        created_before: p.created_before,
        q: p.q,
    }
    .query()?;
    let counts = state.engine.count(query).await?;
    Ok(Json(Counts {
        total: counts.iter().map(|(_, n)| n).sum(),
        counts: counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
    }))
}

/// One step of a workflow's timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineEntry {
    /// The journal event's seq.
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// The event kind.
    pub kind: String,
    /// The workflow's status after this event.
    #[schema(value_type = crate::openapi::StatusName)]
    pub status: Status,
    /// The state machine's state after a transition (its variant name, when it has one).
    pub state: Option<String>,
    /// What happened, for people.
    pub summary: String,
}

/// A workflow's timeline, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    #[schema(value_type = String, format = Uuid)]
    pub id: WorkflowId,
    pub timeline: Vec<TimelineEntry>,
}

/// The name of a state value: the variant tag of an internally tagged enum (`state`, `phase`,
/// `kind` or `type`), or a bare string.
fn state_name(state: &Value) -> Option<String> {
    match state {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => ["state", "phase", "kind", "type", "status"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_str).map(str::to_owned)),
        _ => None,
    }
}

fn cause_text(cause: &Cause) -> String {
    match cause {
        Cause::Start => "start".into(),
        Cause::Activity { call_seq, name } => format!("activity `{name}` (call {call_seq})"),
        Cause::Timer => "timer".into(),
        Cause::Signal { name, .. } => format!("signal `{name}`"),
        Cause::Cancel => "cancel".into(),
    }
}

fn pending_text(pending: &Pending) -> String {
    match pending {
        Pending::Activity(a) => format!("run activity `{}` (call {})", a.name, a.call_seq),
        Pending::Timer { due_at } => format!("wait until {}", due_at.to_rfc3339()),
        Pending::Signal => "wait for a signal".into(),
        Pending::Nothing => "nothing".into(),
    }
}

/// The timeline of a journal: one entry per event with the status after it.
pub fn timeline_of(events: &[Event]) -> Vec<TimelineEntry> {
    let mut status = Status::Running;
    events
        .iter()
        .map(|e| {
            let mut state = None;
            let summary = match &e.kind {
                EventKind::Started {
                    workflow_type, key, ..
                } => match key {
                    Some(key) => format!("started `{workflow_type}` with key `{key}`"),
                    None => format!("started `{workflow_type}`"),
                },
                EventKind::Transitioned {
                    cause,
                    state: value,
                    pending,
                    status: after,
                } => {
                    status = *after;
                    state = state_name(value);
                    format!(
                        "{} → {}; next: {}",
                        cause_text(cause),
                        state.as_deref().unwrap_or("(state)"),
                        pending_text(pending)
                    )
                }
                EventKind::ActivityCompleted {
                    name,
                    call_seq,
                    attempt,
                    ..
                } => format!("activity `{name}` (call {call_seq}) completed on attempt {attempt}"),
                EventKind::ActivityFailed {
                    name,
                    call_seq,
                    attempt,
                    error,
                    retry_at,
                } => {
                    let retry = match retry_at {
                        Some(t) => format!("; retry at {}", t.to_rfc3339()),
                        None => "; no more retries".into(),
                    };
                    format!(
                        "activity `{name}` (call {call_seq}) attempt {attempt} failed: {}: {}{retry}",
                        error.code, error.message
                    )
                }
                EventKind::ActivityAbandoned {
                    name,
                    call_seq,
                    attempt,
                    worker,
                } => match worker {
                    Some(w) => format!(
                        "activity `{name}` (call {call_seq}) attempt {attempt} abandoned: worker {w} lost its lease"
                    ),
                    None => format!(
                        "activity `{name}` (call {call_seq}) attempt {attempt} abandoned"
                    ),
                },
                EventKind::SignalApplied { name, .. } => format!("signal `{name}` applied"),
                EventKind::SignalDiscarded { name, reason, .. } => {
                    format!("signal `{name}` discarded: {reason}")
                }
                EventKind::Paused => {
                    status = Status::Paused;
                    "paused".into()
                }
                EventKind::Resumed => {
                    status = Status::Running;
                    "resumed".into()
                }
                EventKind::Completed { .. } => {
                    status = Status::Completed;
                    "completed".into()
                }
                EventKind::Failed { error } => {
                    status = Status::Failed;
                    format!("failed: {}: {}", error.code, error.message)
                }
                EventKind::Cancelled => {
                    status = Status::Cancelled;
                    "cancelled".into()
                }
            };
            TimelineEntry {
                seq: e.seq,
                at: e.created_at,
                kind: e.kind.name().to_owned(),
                status,
                state,
                summary,
            }
        })
        .collect()
}

/// The state machine's transitions: one entry per journal event, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/timeline",
    tag = "workflows",
    params(("id" = String, Path, description = "Workflow id (UUID)")),
    responses(
        (status = 200, description = "The timeline", body = Timeline),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub(crate) async fn timeline(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Timeline>, ApiError> {
    let id = parse_id(&id)?;
    let events = state.engine.history(id, 0, 10_000).await?;
    Ok(Json(Timeline {
        id,
        timeline: timeline_of(&events),
    }))
}

/// A paid job's payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct Payment {
    #[schema(value_type = String, format = Uuid)]
    pub id: WorkflowId,
    /// The job's flow uid.
    pub flow: String,
    /// Blockchain identifier, on-chain state, next action, deadlines, result hash, failure.
    #[schema(value_type = Object)]
    pub payment: PaymentView,
}

/// The payment of a paid job, from its journaled state (no call to the payment service).
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/payment",
    tag = "paid jobs",
    params(("id" = String, Path, description = "Workflow id (UUID)")),
    responses(
        (status = 200, description = "The payment view", body = Payment),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "No such workflow (`not_found`) or not a paid job (`not_a_paid_job`)", body = ErrorBody),
    )
)]
pub(crate) async fn payment(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Payment>, ApiError> {
    let id = parse_id(&id)?;
    let record = state.engine.get(id).await?;
    if record.workflow_type != <PaidJob as engine::Workflow>::NAME {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_paid_job",
            format!(
                "workflow {id} is a `{}`, not a paid job",
                record.workflow_type
            ),
        ));
    }
    let job: PaidJobState = serde_json::from_value(record.state).map_err(|e| {
        tracing::error!(workflow.id = %id, error.message = %e, "paid job state does not decode");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    })?;
    Ok(Json(Payment {
        id,
        flow: job.job.flow_uid.clone(),
        payment: job.payment_view(),
    }))
}

/// A flow and how it is sold.
#[derive(Debug, Serialize, ToSchema)]
pub struct FlowView {
    pub uid: String,
    pub summary: String,
    pub description: String,
    /// The flow's path on Kodosumi.
    pub url: String,
    /// Whether `start_job` accepts jobs for it.
    pub available: bool,
    pub unavailable_reason: Option<&'static str>,
    /// Agent identifier, network, `pay_by`, `submit_result_within` (humantime) and
    /// `refund_on_dispute`.
    #[schema(value_type = Object)]
    pub settings: crate::flows::FlowSettings,
    /// MIP-003 endpoints of the flow.
    #[schema(value_type = Object)]
    pub endpoints: Value,
}

/// The flows.
#[derive(Debug, Serialize, ToSchema)]
pub struct Flows {
    pub flows: Vec<FlowView>,
}

/// The flows of the catalog and their settings; empty when paid jobs are not configured.
#[utoipa::path(
    get,
    path = "/api/v1/flows",
    tag = "paid jobs",
    responses((status = 200, description = "The flows", body = Flows))
)]
pub(crate) async fn flows(State(state): State<AppState>) -> Json<Flows> {
    let flows = state
        .paid
        .as_deref()
        .map(|paid| paid.catalog.list())
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let reason = f.unavailable_reason();
            FlowView {
                endpoints: serde_json::json!({
                    "start_job": format!("/{}/start_job", f.uid),
                    "status": format!("/{}/status", f.uid),
                    "input_schema": format!("/{}/input_schema", f.uid),
                    "availability": format!("/{}/availability", f.uid),
                    "provide_input": format!("/{}/provide_input", f.uid),
                }),
                uid: f.uid,
                summary: f.summary,
                description: f.description,
                url: f.url,
                available: reason.is_none(),
                unavailable_reason: reason,
                settings: f.settings,
            }
        })
        .collect();
    Json(Flows { flows })
}

/// Body of `POST /api/v1/workflows/bulk`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    pub action: Action,
    /// Which workflows (`{}`: all of them).
    pub filter: Filter,
}

/// The started operation.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkAccepted {
    #[schema(value_type = String, format = Uuid)]
    pub operation_id: uuid::Uuid,
}

/// Pauses, resumes or cancels every workflow the filter matches, in the background.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/bulk",
    tag = "workflows",
    request_body = BulkRequest,
    responses(
        (status = 202, description = "Started; poll `/api/v1/operations/{operation_id}`", body = BulkAccepted),
        (status = 400, description = "Malformed JSON or bad filter", body = ErrorBody),
        (status = 422, description = "Unknown action or field", body = ErrorBody),
    )
)]
pub(crate) async fn bulk(
    Extension(operations): Extension<Operations>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<(StatusCode, Json<BulkAccepted>), ApiError> {
    let query = req.filter.query()?;
    let operation_id = operations.start(req.action, query)?;
    Ok((StatusCode::ACCEPTED, Json(BulkAccepted { operation_id })))
}

/// The progress and result of a bulk operation of this server.
#[utoipa::path(
    get,
    path = "/api/v1/operations/{id}",
    tag = "workflows",
    params(("id" = String, Path, description = "Operation id (UUID)")),
    responses(
        (status = 200, description = "Progress", body = OperationView),
        (status = 400, description = "Not a UUID", body = ErrorBody),
        (status = 404, description = "Unknown operation", body = ErrorBody),
    )
)]
pub(crate) async fn operation(
    Extension(operations): Extension<Operations>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OperationView>, ApiError> {
    let parsed = uuid::Uuid::parse_str(&id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("`{id}` is not an operation id (UUID)"),
        )
    })?;
    operations
        .get(parsed)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no operation {parsed} on this server")))
}
