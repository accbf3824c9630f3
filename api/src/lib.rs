//! kodomasu's HTTP surface and composition root: the admin API over the engine, health, and
//! the settings of the `kodomasu` binary.

pub mod access;
pub mod bench;
pub mod cli;
pub mod error;
pub mod flows;
pub mod metrics;
pub mod paid;
pub mod routes;
pub mod settings;
pub mod telemetry;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use engine::Engine;
use std::sync::Arc;

pub use error::ApiError;
pub use paid::PaidJobs;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Paid jobs' clients and flow catalog; `None` when Masumi and Kodosumi are not configured.
    pub paid: Option<Arc<PaidJobs>>,
    /// Token checks, the MIP-003 rate limit and CORS settings.
    pub access: Arc<access::Access>,
    /// The process's Prometheus registry, rendered by `GET /metrics`.
    pub metrics: metrics::Metrics,
}

impl AppState {
    /// The state of a server over `engine` with the given access settings (installs the
    /// process's metrics recorder on first use).
    pub fn new(
        engine: Arc<Engine>,
        paid: Option<Arc<PaidJobs>>,
        access: access::AccessConfig,
    ) -> Self {
        let store = engine.store().clone();
        Self {
            engine,
            paid,
            access: Arc::new(access::Access::new(store, access)),
            metrics: metrics::Metrics::install(),
        }
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let access = state.access.clone();
    let mut mip003 = routes::mip003::router();
    if access.config().rate_limit_per_minute > 0 {
        mip003 = mip003.route_layer(from_fn_with_state(access.clone(), access::rate_limit));
    }
    let app = Router::new()
        .merge(routes::health::router())
        .merge(routes::dashboard::router())
        .merge(metrics::router())
        .merge(access::router())
        .merge(mip003)
        .nest(
            "/api/v1",
            routes::workflows::router().merge(routes::workers::router()),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        // `Router::layer`: each runs after routing, so the matched route is known; the last
        // added runs first.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(from_fn(access::json_body_limit))
        .layer(from_fn_with_state(access.clone(), access::require_token));
    let app = match access::cors_layer(&access.config().cors_origins) {
        Ok(Some(cors)) => app.layer(cors),
        Ok(None) => app,
        Err(e) => {
            tracing::error!(error.message = %e, "CORS disabled");
            app
        }
    };
    app.layer(from_fn(metrics::track_http))
        .layer(telemetry::http_trace_layer())
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` fires, then finishes in-flight requests.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
