//! Calls to external services as engine activities: typed HTTP clients of the Masumi payment
//! service and Kodosumi, errors classified where they are born, a circuit breaker per service,
//! and (feature `sim`) simulators that speak the same APIs.

pub mod breaker;
pub mod error;
pub mod kodosumi;
pub mod masumi;
pub mod secret;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use error::ClientError;
pub use secret::Secret;
