//! The OpenAPI document, generated from the handlers' annotations (`/openapi.json`), and the
//! interactive docs page (`/docs`) whose Swagger UI files are compiled into the binary, so the
//! page works offline and loads nothing from elsewhere.
//!
//! Engine types stay free of OpenAPI: their schemas are given here or with `value_type` where
//! they are used.

use crate::AppState;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::{Config, SwaggerUi};

/// The generated document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "kodomasu",
        description = "Durable paid AI jobs: the admin API (`/api/v1`, bearer token), live events, MIP-003 per flow, and health."
    ),
    paths(
        crate::routes::workflows::start,
        crate::routes::workflows::list,
        crate::routes::workflows::show,
        crate::routes::workflows::history,
        crate::routes::workflows::attempts,
        crate::routes::workflows::signal,
        crate::routes::admin::counts,
        crate::routes::admin::timeline,
        crate::routes::admin::payment,
        crate::routes::admin::bulk,
        crate::routes::admin::operation,
        crate::routes::admin::flows,
        crate::routes::workers::list,
        crate::live::all_events,
        crate::live::workflow_events,
        crate::routes::health::health,
        crate::routes::health::live,
        crate::routes::health::ready,
        crate::metrics::scrape,
        crate::routes::mip003::availability,
        crate::routes::mip003::flows,
        crate::routes::mip003::flow_availability,
        crate::routes::mip003::input_schema,
        crate::routes::mip003::start_job,
        crate::routes::mip003::status,
        crate::routes::mip003::provide_input,
    ),
    components(schemas(StatusName, crate::filter::Filter)),
    modifiers(&BearerAuth),
    tags(
        (name = "workflows", description = "Admin API: workflows, their journal and bulk operations"),
        (name = "live", description = "Server-sent events of transitions, resumable with Last-Event-ID"),
        (name = "workers", description = "The worker registry"),
        (name = "paid jobs", description = "Flows and payments of paid jobs"),
        (name = "MIP-003", description = "The agentic service API buyers call, per flow (public)"),
        (name = "health", description = "Health checks (public)"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer token the admin API (every path under `/api/v1`) takes.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/v1/") {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
            }
        }
    }
}

/// A workflow's status.
#[derive(Debug, ToSchema)]
#[schema(as = Status)]
#[allow(non_camel_case_types, dead_code)]
pub enum StatusName {
    running,
    paused,
    completed,
    failed,
    cancelled,
}

/// `GET /api/v1/workflows/{id}/history`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct HistoryDoc {
    #[schema(format = Uuid)]
    id: String,
    /// `{seq, kind, payload, created_at}`; `payload` holds the kind's fields (`state`,
    /// `pending`, `cause`, `status` of a `transitioned` event; `output` of `completed`; ...).
    events: Vec<Value>,
}

/// One activity attempt.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct AttemptDoc {
    /// The call within the workflow (part of its idempotency key).
    call_seq: i64,
    /// From 1.
    attempt: u32,
    activity_name: String,
    /// The worker that ran it.
    #[schema(format = Uuid)]
    worker_id: Option<String>,
    /// `completed`, `failed`, `timed_out`, `cancelled` or `abandoned`.
    outcome: String,
    /// `{code, message, retryable, details?}` of a failed attempt.
    error: Option<Value>,
    started_at: Option<DateTime<Utc>>,
    finished_at: DateTime<Utc>,
    duration_ms: Option<i64>,
}

/// `GET /api/v1/workflows/{id}/attempts`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct AttemptsDoc {
    #[schema(format = Uuid)]
    id: String,
    attempts: Vec<AttemptDoc>,
}

/// A registered worker process.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct WorkerDoc {
    #[schema(format = Uuid)]
    id: String,
    host: String,
    pid: i32,
    slots: i32,
    slots_used: i32,
    lease_ttl_ms: i64,
    started_at: DateTime<Utc>,
    /// The last heartbeat.
    heartbeat_at: DateTime<Utc>,
    stopped_at: Option<DateTime<Utc>>,
    /// Heartbeat younger than the lease TTL and not stopped.
    alive: bool,
}

/// `GET /api/v1/workers`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct WorkersDoc {
    workers: Vec<WorkerDoc>,
}

/// `/openapi.json` and the docs page at `/docs` (assets under `/docs/`).
pub fn router() -> Router<AppState> {
    SwaggerUi::new("/docs")
        .url("/openapi.json", ApiDoc::openapi())
        // No validator badge: it would send the document to an outside service.
        .config(Config::default().validator_url("none"))
        .into()
}
