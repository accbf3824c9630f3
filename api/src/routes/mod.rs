//! Route modules, one per resource.

pub mod admin;
pub mod dashboard;
pub mod health;
pub mod mip003;
pub mod workers;
pub mod workflows;

use crate::ApiError;

/// Unknown paths answer 404 in our error shape.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// Known paths with an unsupported method answer 405 in our error shape (axum keeps `Allow`).
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
