//! kodomasu's HTTP surface and composition root: the admin API over the engine, health, and
//! the settings of the `kodomasu` binary.

pub mod access;
pub mod bench;
pub mod cli;
pub mod error;
pub mod filter;
pub mod flows;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod operations;
pub mod paid;
pub mod routes;
pub mod settings;
pub mod telemetry;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::{Extension, Router};
use engine::Engine;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// The background parts of the admin API: the live-event hub and bulk operations, on one task
/// tracker, stopped by one token.
#[derive(Debug, Clone)]
pub struct Admin {
    pub live: live::Live,
    pub operations: operations::Operations,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Admin {
    /// Background parts whose tasks stop (and whose event streams end) when `shutdown` fires.
    pub fn new(engine: Arc<Engine>, shutdown: CancellationToken) -> Self {
        Self::with_keep_alive(engine, shutdown, live::KEEP_ALIVE)
    }

    /// [`Admin::new`] with another interval of the event streams' keep-alive comments.
    pub fn with_keep_alive(
        engine: Arc<Engine>,
        shutdown: CancellationToken,
        keep_alive: std::time::Duration,
    ) -> Self {
        let tracker = TaskTracker::new();
        Self {
            live: live::Live::with_keep_alive(
                engine.clone(),
                tracker.clone(),
                shutdown.clone(),
                keep_alive,
            ),
            operations: operations::Operations::new(engine, tracker.clone(), shutdown.clone()),
            tracker,
            shutdown,
        }
    }

    /// Stops the background tasks and waits for them.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The whole HTTP application, with background parts that stop only with the process; servers
/// use [`app`] (as [`serve`] does) to stop them with the server.
pub fn router(state: AppState) -> Router {
    let admin = Admin::new(state.engine.clone(), CancellationToken::new());
    app(state, &admin)
}

/// The whole HTTP application over `admin`'s background parts.
pub fn app(state: AppState, admin: &Admin) -> Router {
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
        .merge(openapi::router())
        .merge(mip003)
        .nest(
            "/api/v1",
            routes::workflows::router()
                .merge(routes::workers::router())
                .merge(routes::admin::router())
                .merge(live::router()),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(Extension(admin.live.clone()))
        .layer(Extension(admin.operations.clone()))
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

/// Serves the application on `listener` until `shutdown` fires, then ends live streams and bulk
/// operations and finishes in-flight requests.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let admin = Admin::new(state.engine.clone(), shutdown.child_token());
    let app = app(state, &admin).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    admin.stop().await;
    result
}
