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

/// Installs rustls' ring provider as the process default, once. reqwest is built with
/// `rustls-no-provider` so the tree holds one crypto provider (ring, as sqlx's); clients call
/// this before building their `reqwest::Client`, so `https://` service URLs work in every binary
/// and test without a setup step.
pub(crate) fn ensure_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    /// Without a TLS backend reqwest refuses `https://` as a builder error before connecting;
    /// with one it tries to connect (and fails here: nothing listens on port 9).
    #[tokio::test]
    async fn https_urls_are_supported() {
        super::ensure_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .expect("a TLS-capable client");
        let err = client
            .get("https://127.0.0.1:9/")
            .send()
            .await
            .expect_err("nothing listens on port 9");
        assert!(!err.is_builder(), "https refused before connecting: {err}");
        assert!(err.is_connect() || err.is_timeout(), "{err}");
    }
}
