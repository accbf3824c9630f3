//! Route modules, one per resource.

pub mod health;
pub mod workers;
pub mod workflows;

use crate::ApiError;

/// Unknown paths answer 404 in our error shape.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
