//! kodomasu's HTTP surface and composition root: the admin API over the engine, health, and
//! the settings of the `kodomasu` binary.

pub mod bench;
pub mod cli;
pub mod error;
pub mod flows;
pub mod paid;
pub mod routes;
pub mod settings;

use axum::Router;
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
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(routes::health::router())
        .merge(routes::dashboard::router())
        .merge(routes::mip003::router())
        .nest(
            "/api/v1",
            routes::workflows::router().merge(routes::workers::router()),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
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
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
