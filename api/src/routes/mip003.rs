//! MIP-003, the agentic service API buyers call, per Kodosumi flow:
//! `POST /{flow_uid}/start_job`, `GET /{flow_uid}/status?job_id=`, `GET /{flow_uid}/availability`,
//! `GET /{flow_uid}/input_schema`, `POST /{flow_uid}/provide_input`, plus `GET /availability`
//! and `GET /flows`.
//!
//! Bodies are checked by hand so that every refusal is a 400 with `{code, message}` as MIP-003
//! asks (its reference implementation answers FastAPI's 422 for missing fields; we don't).

use crate::flows::CatalogFlow;
use crate::{ApiError, AppState};
use activities::kodosumi::schema;
use activities::masumi::hash;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use engine::{Status, WorkflowId};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use workflows::paid_job::{MipStatus, PaidJob, PaidJobInput, PaidJobSignal, PaidJobState, Phase};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/availability", get(availability))
        .route("/flows", get(flows))
        .route("/{flow_uid}/availability", get(flow_availability))
        .route("/{flow_uid}/input_schema", get(input_schema))
        .route("/{flow_uid}/start_job", post(start_job))
        .route("/{flow_uid}/status", get(status))
        .route("/{flow_uid}/provide_input", post(provide_input))
}

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn not_configured() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "paid_jobs_not_configured",
        "this server has no Masumi and Kodosumi connection configured",
    )
}

fn paid(state: &AppState) -> Result<&crate::PaidJobs, ApiError> {
    state.paid.as_deref().ok_or_else(not_configured)
}

fn flow(state: &AppState, uid: &str) -> Result<CatalogFlow, ApiError> {
    paid(state)?
        .catalog
        .get(uid)
        .ok_or_else(|| ApiError::not_found(format!("no flow with uid `{uid}`")))
}

/// Parses a JSON object body; anything else is a 400.
fn object_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_request(
            "invalid_body",
            "the body must be a JSON object",
        )),
        Err(e) => Err(bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

fn required_string(map: &serde_json::Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad_request(
            "invalid_body",
            format!("`{key}` must be a string"),
        )),
        None => Err(bad_request("invalid_body", format!("`{key}` is required"))),
    }
}

fn availability_body(reason: Option<&str>) -> Value {
    match reason {
        None => json!({"status": "available", "type": "masumi-agent"}),
        Some(message) => {
            json!({"status": "unavailable", "type": "masumi-agent", "message": message})
        }
    }
}

/// Whether the service takes jobs (MIP-003).
#[utoipa::path(get, path = "/availability", tag = "MIP-003",
    responses((status = 200, description = "`{status: available|unavailable, type, message?}`", body = Object)))]
pub(crate) async fn availability(State(state): State<AppState>) -> Json<Value> {
    let Some(paid) = state.paid.as_deref() else {
        return Json(availability_body(Some("paid jobs are not configured")));
    };
    let flows = paid.catalog.list();
    let reason = if let Some(reason) = services_down(paid) {
        Some(reason)
    } else if flows.is_empty() {
        Some("no flow is synced from Kodosumi yet")
    } else if flows.iter().all(|f| f.unavailable_reason().is_some()) {
        Some("no flow has a Masumi agent identifier configured")
    } else {
        None
    };
    Json(availability_body(reason))
}

/// The flows this server sells, with their MIP-003 endpoints.
#[utoipa::path(get, path = "/flows", tag = "MIP-003",
    responses((status = 200, description = "`{flows: [...]}`", body = Object),
        (status = 503, description = "Paid jobs are not configured", body = crate::error::ErrorBody)))]
pub(crate) async fn flows(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let paid = paid(&state)?;
    let flows: Vec<Value> = paid
        .catalog
        .list()
        .into_iter()
        .map(|f| {
            json!({
                "uid": f.uid,
                "summary": f.summary,
                "description": f.description,
                "available": f.unavailable_reason().is_none(),
                "agent_identifier": f.settings.agent_identifier,
                "network": f.settings.network,
                "endpoints": {
                    "start_job": format!("/{}/start_job", f.uid),
                    "status": format!("/{}/status", f.uid),
                    "input_schema": format!("/{}/input_schema", f.uid),
                    "availability": format!("/{}/availability", f.uid),
                    "provide_input": format!("/{}/provide_input", f.uid),
                },
            })
        })
        .collect();
    Ok(Json(json!({ "flows": flows })))
}

/// Whether a flow takes jobs (MIP-003).
#[utoipa::path(get, path = "/{flow_uid}/availability", tag = "MIP-003",
    params(("flow_uid" = String, Path, description = "The flow's uid")),
    responses((status = 200, description = "`{status, type, message?}`", body = Object),
        (status = 404, description = "Unknown flow", body = crate::error::ErrorBody)))]
pub(crate) async fn flow_availability(
    State(state): State<AppState>,
    Path(uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let flow = flow(&state, &uid)?;
    let reason = paid(&state)
        .ok()
        .and_then(services_down)
        .or(flow.unavailable_reason());
    Ok(Json(availability_body(reason)))
}

/// A service whose circuit breaker is open: jobs would not start or not run now.
fn services_down(paid: &crate::PaidJobs) -> Option<&'static str> {
    use activities::BreakerState::Open;
    if matches!(paid.services.masumi.breaker_state(), Open { .. }) {
        Some("the payment service is failing; retry later")
    } else if matches!(paid.services.kodosumi.breaker_state(), Open { .. }) {
        Some("the agent runtime is failing; retry later")
    } else {
        None
    }
}

/// The flow's input schema (MIP-003 `input_data` fields).
#[utoipa::path(get, path = "/{flow_uid}/input_schema", tag = "MIP-003",
    params(("flow_uid" = String, Path, description = "The flow's uid")),
    responses((status = 200, description = "`{input_data: [...]}`", body = Object),
        (status = 404, description = "Unknown flow", body = crate::error::ErrorBody)))]
pub(crate) async fn input_schema(
    State(state): State<AppState>,
    Path(uid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let flow = flow(&state, &uid)?;
    Ok(Json(json!({ "input_data": flow.schema.input_data })))
}

/// Key of a start: a buyer retrying the same request gets the same job.
fn start_key(flow_uid: &str, purchaser: &str, input_hash: &str) -> String {
    format!("{flow_uid}:{purchaser}:{input_hash}")
}

/// Starts a paid job and answers the payment request's data (MIP-003).
#[utoipa::path(post, path = "/{flow_uid}/start_job", tag = "MIP-003",
    params(("flow_uid" = String, Path, description = "The flow's uid")),
    request_body(content = Object, description = "`{identifier_from_purchaser, input_data}`"),
    responses((status = 201, description = "`{id, blockchainIdentifier, payByTime, submitResultTime, unlockTime, externalDisputeUnlockTime, agentIdentifier, sellerVKey, identifierFromPurchaser, input_hash}`", body = Object),
        (status = 200, description = "The same request again: the same job", body = Object),
        (status = 400, description = "Bad body or input_data", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown flow", body = crate::error::ErrorBody),
        (status = 409, description = "A job for this request already ended", body = crate::error::ErrorBody),
        (status = 503, description = "Flow or services unavailable", body = crate::error::ErrorBody)))]
pub(crate) async fn start_job(
    State(state): State<AppState>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let paid = paid(&state)?;
    let flow = flow(&state, &uid)?;
    let body = object_body(&body)?;
    let purchaser = required_string(&body, "identifier_from_purchaser")?;
    if !hash::is_valid_purchaser_identifier(&purchaser) {
        return Err(bad_request(
            "invalid_identifier_from_purchaser",
            "identifier_from_purchaser must be a hex string of even length, 14 to 26 characters",
        ));
    }
    let input_data = body.get("input_data").cloned().unwrap_or_else(|| json!({}));
    schema::validate(&flow.schema, &input_data).map_err(|errors| {
        bad_request(
            "invalid_input_data",
            format!("input_data does not match the flow's schema: {errors}"),
        )
    })?;
    let Some(agent_identifier) = flow.settings.agent_identifier.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "flow_unavailable",
            "no Masumi agent identifier is configured for this flow",
        ));
    };
    let launch_inputs = schema::to_launch_inputs(&flow.elements, &input_data);
    let input_hash = hash::input_hash(&purchaser, &input_data);
    let now = chrono::Utc::now();
    let after =
        |d: Duration| now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
    let input = PaidJobInput {
        flow_uid: flow.uid.clone(),
        flow_url: flow.url.clone(),
        flow_summary: flow.summary.clone(),
        identifier_from_purchaser: purchaser.clone(),
        input_data,
        input_hash: input_hash.clone(),
        launch_inputs,
        agent_identifier,
        network: flow.settings.network,
        pay_by_time: after(flow.settings.pay_by),
        submit_result_time: after(flow.settings.submit_result_within),
        unlock_time: None,
        external_dispute_unlock_time: None,
        refund_on_dispute: flow.settings.refund_on_dispute,
    };
    let input = serde_json::to_value(input).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let key = start_key(&flow.uid, &purchaser, &input_hash);
    let started = state
        .engine
        .start(<PaidJob as engine::Workflow>::NAME, Some(key), input)
        .await?;

    // The buyer needs the payment request's data: wait until the job has it.
    let deadline = tokio::time::Instant::now() + paid.start_job_timeout;
    loop {
        let record = state.engine.get(started.id).await?;
        let job: PaidJobState = serde_json::from_value(record.state.clone())
            .map_err(|e| ApiError::bad_request(format!("job state: {e}")))?;
        // Checked first: an ended job still has its (expired or settled) payment request.
        if record.status.is_terminal() && !started.created {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_exists",
                format!(
                    "a job with this identifier_from_purchaser and input_data already ended ({}); use a new identifier_from_purchaser",
                    record.status
                ),
            ));
        }
        if let Some(payment) = job.payment() {
            let body = json!({
                "id": started.id,
                "blockchainIdentifier": payment.blockchain_identifier,
                "payByTime": payment.pay_by_time_ms,
                "submitResultTime": payment.submit_result_time_ms,
                "unlockTime": payment.unlock_time_ms,
                "externalDisputeUnlockTime": payment.external_dispute_unlock_time_ms,
                "agentIdentifier": payment.agent_identifier,
                "sellerVKey": payment.seller_vkey.clone().unwrap_or_default(),
                "identifierFromPurchaser": purchaser,
                "input_hash": input_hash,
            });
            let status = if started.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            return Ok((status, Json(body)));
        }
        if record.status.is_terminal() {
            let message = match &job.phase {
                Phase::Failed { reason } => reason.message.clone(),
                _ => format!("the job is {}", record.status),
            };
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "payment_request_failed",
                message,
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = state.engine.signal(started.id, "cancel", Value::Null).await;
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "payment_service_timeout",
                "the payment service did not answer in time; the job was cancelled, retry with a new identifier_from_purchaser",
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Loads a paid job of this flow, or 404.
async fn load_job(
    state: &AppState,
    flow_uid: &str,
    raw_id: &str,
) -> Result<(WorkflowId, Status, PaidJobState), ApiError> {
    let id = WorkflowId::parse(raw_id)
        .map_err(|_| ApiError::not_found(format!("no job with id `{raw_id}`")))?;
    let record = match state.engine.get(id).await {
        Ok(r) => r,
        Err(engine::EngineError::NotFound(_)) => {
            return Err(ApiError::not_found(format!("no job with id `{raw_id}`")));
        }
        Err(e) => return Err(e.into()),
    };
    if record.workflow_type != <PaidJob as engine::Workflow>::NAME {
        return Err(ApiError::not_found(format!("no job with id `{raw_id}`")));
    }
    let job: PaidJobState = serde_json::from_value(record.state)
        .map_err(|e| ApiError::bad_request(format!("job state: {e}")))?;
    if job.job.flow_uid != flow_uid {
        return Err(ApiError::not_found(format!(
            "no job with id `{raw_id}` for this flow"
        )));
    }
    Ok((id, record.status, job))
}

/// A job's MIP-003 status.
#[utoipa::path(get, path = "/{flow_uid}/status", tag = "MIP-003",
    params(("flow_uid" = String, Path, description = "The flow's uid"),
        ("job_id" = String, Query, description = "The job id from start_job")),
    responses((status = 200, description = "`{id, job_id, status, input_schema?, result?, message?}`", body = Object),
        (status = 400, description = "job_id missing", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown job", body = crate::error::ErrorBody)))]
pub(crate) async fn status(
    State(state): State<AppState>,
    Path(uid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    paid(&state)?;
    let Some(job_id) = query.get("job_id") else {
        return Err(bad_request(
            "invalid_query",
            "the query parameter `job_id` is required",
        ));
    };
    let (id, _, job) = load_job(&state, &uid, job_id).await?;
    let view = job.mip_view(id.0);
    let mut body = serde_json::to_value(&view).map_err(|e| ApiError::bad_request(e.to_string()))?;
    body["job_id"] = json!(id);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
struct ProvideInput {
    job_id: String,
    status_id: String,
    input_data: Value,
}

/// The buyer's input for a job that awaits input (MIP-003).
#[utoipa::path(post, path = "/{flow_uid}/provide_input", tag = "MIP-003",
    params(("flow_uid" = String, Path, description = "The flow's uid")),
    request_body(content = Object, description = "`{job_id, status_id, input_data}`"),
    responses((status = 200, description = "`{input_hash, signature}`", body = Object),
        (status = 400, description = "Bad body or input_data", body = crate::error::ErrorBody),
        (status = 404, description = "Unknown job", body = crate::error::ErrorBody),
        (status = 409, description = "Not awaiting input, or a stale status_id", body = crate::error::ErrorBody)))]
pub(crate) async fn provide_input(
    State(state): State<AppState>,
    Path(uid): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    paid(&state)?;
    let map = object_body(&body)?;
    let req: ProvideInput = serde_json::from_value(Value::Object(map)).map_err(|e| {
        bad_request(
            "invalid_body",
            format!("expected {{job_id, status_id, input_data}}: {e}"),
        )
    })?;
    // MIP-003: 400 for a bad job_id, 404 for an unknown job.
    if WorkflowId::parse(&req.job_id).is_err() {
        return Err(bad_request(
            "invalid_job_id",
            format!("job_id `{}` is not a job id (UUID)", req.job_id),
        ));
    }
    let (id, _, job) = load_job(&state, &uid, &req.job_id).await?;
    let view = job.mip_view(id.0);
    let Phase::AwaitingInput {
        lock_id,
        input_schema,
        ..
    } = &job.phase
    else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_awaiting_input",
            format!("the job is {:?}, not awaiting input", view.status),
        ));
    };
    if view.status != MipStatus::AwaitingInput || req.status_id != view.id.to_string() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_status_id",
            "status_id is not the job's current status id; read /status again",
        ));
    }
    let schema: schema::Mip003Schema = serde_json::from_value(input_schema.clone())
        .map_err(|e| ApiError::bad_request(format!("stored input schema: {e}")))?;
    schema::validate(&schema, &req.input_data).map_err(|errors| {
        bad_request(
            "invalid_input_data",
            format!("input_data does not match the requested input: {errors}"),
        )
    })?;
    let inputs = schema::mip003_to_lock_inputs(&schema, &req.input_data);
    let signal = PaidJobSignal::ProvideInput {
        lock_id: lock_id.clone(),
        inputs,
    };
    let signal = serde_json::to_value(signal).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (name, payload) = match signal {
        Value::Object(map) => map
            .into_iter()
            .next()
            .unwrap_or((String::new(), Value::Null)),
        _ => (String::new(), Value::Null),
    };
    state.engine.signal(id, &name, payload).await?;
    let input_hash = hash::input_hash(&job.job.identifier_from_purchaser, &req.input_data);
    // MIP-003 asks for an Ed25519 signature over the response; kodomasu holds no wallet key,
    // so like the reference Python implementation it answers an empty signature.
    Ok(Json(json!({ "input_hash": input_hash, "signature": "" })))
}
