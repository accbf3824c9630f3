//! Prometheus metrics: one process-wide recorder (the `metrics` facade, exported by
//! `metrics-exporter-prometheus` without its HTTP listener), rendered by our own `GET /metrics`.
//!
//! The engine counts workflows, transitions, attempts and lease recoveries (see
//! [`engine::metrics`]); this module adds HTTP requests by matched route and status, and at
//! scrape time reads the backlog and live workers from the store. `kodomasu server` and
//! `kodomasu dev` serve `/metrics` on their main port; a `kodomasu worker` serves it on
//! `--metrics-listen` when given.

use crate::AppState;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use engine::Store;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// HTTP requests, by `method`, `route` (the matched route pattern) and `status`.
pub const HTTP_REQUESTS: &str = "kodomasu_http_requests_total";
/// HTTP request durations in seconds, by `method` and `route`.
pub const HTTP_DURATION: &str = "kodomasu_http_request_duration_seconds";
/// MIP-003 requests refused by the rate limit.
pub const RATE_LIMITED: &str = "kodomasu_rate_limited_total";
/// Workflows due now that no live lease holds.
pub const BACKLOG: &str = "kodomasu_backlog_workflows";
/// Seconds the oldest due, unclaimed workflow has been waiting.
pub const BACKLOG_AGE: &str = "kodomasu_backlog_oldest_age_seconds";
/// Workers whose heartbeat is younger than their lease TTL.
pub const LIVE_WORKERS: &str = "kodomasu_workers_live";
/// 1 when the scrape-time store query succeeded, else 0.
pub const DATABASE_UP: &str = "kodomasu_database_up";

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The process's metrics registry.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

fn build() -> PrometheusBuilder {
    let mut builder = PrometheusBuilder::new();
    for name in [engine::metrics::ACTIVITY_DURATION, HTTP_DURATION] {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_owned()), DURATION_BUCKETS)
            .expect("the bucket list is a non-empty constant");
    }
    builder
}

impl Metrics {
    /// Installs the process-wide recorder on first use; later calls share it.
    pub fn install() -> Self {
        let handle = HANDLE.get_or_init(|| {
            let handle = match build().install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    // Another recorder is installed: ours then only renders its own gauges.
                    tracing::warn!(error.message = %e, "metrics recorder not installed");
                    build().build_recorder().handle()
                }
            };
            describe();
            handle
        });
        Self {
            handle: handle.clone(),
        }
    }

    /// Reads the store's gauges and renders everything in the Prometheus text format.
    pub async fn render(&self, store: &dyn Store) -> String {
        match store.gauges().await {
            Ok(g) => {
                gauge!(BACKLOG).set(g.due_unclaimed as f64);
                gauge!(BACKLOG_AGE).set(g.oldest_due_seconds);
                gauge!(LIVE_WORKERS).set(g.live_workers as f64);
                gauge!(DATABASE_UP).set(1.0);
            }
            Err(e) => {
                tracing::warn!(error.message = %e, "metrics: reading the backlog failed");
                gauge!(DATABASE_UP).set(0.0);
            }
        }
        self.handle.render()
    }

    /// Drains histogram samples every few seconds so an unscraped process does not grow.
    pub async fn upkeep_loop(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => self.handle.run_upkeep(),
                _ = stop.cancelled() => return,
            }
        }
    }
}

fn describe() {
    engine::metrics::describe();
    describe_counter!(HTTP_REQUESTS, "HTTP requests by matched route and status.");
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request durations."
    );
    describe_counter!(RATE_LIMITED, "MIP-003 requests refused by the rate limit.");
    describe_gauge!(BACKLOG, "Workflows due now that no live lease holds.");
    describe_gauge!(
        BACKLOG_AGE,
        metrics::Unit::Seconds,
        "How long the oldest due, unclaimed workflow has been waiting."
    );
    describe_gauge!(
        LIVE_WORKERS,
        "Workers whose heartbeat is younger than their lease TTL."
    );
    describe_gauge!(DATABASE_UP, "1 when the scrape-time store query succeeded.");
}

/// Middleware (added with `Router::layer`, so the matched route is known): counts requests.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics` (public).
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

/// The process's metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format (`text/plain; version=0.0.4`)", content_type = "text/plain", body = String)))]
pub(crate) async fn scrape(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(state.engine.store().as_ref()).await;
    exposition(text)
}

fn exposition(text: String) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The `/metrics` endpoint of a worker process (`kodomasu worker --metrics-listen`), with
/// `/health/live`, served until `shutdown` fires.
///
/// # Errors
/// When the listener fails.
pub async fn serve_worker_metrics(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (store, metrics) = (store.clone(), metrics.clone());
                async move { exposition(metrics.render(store.as_ref()).await) }
            }),
        )
        .route("/health/live", get(crate::routes::health::live));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
