//! The HTTP client of the Masumi payment service (seller side).
//!
//! One `reqwest::Client` with timeouts, the API key in the `token` header (never logged), a
//! circuit breaker per client, and errors classified where they are born ([`ClientError`]):
//! the service's `{"status":"error","error":{"message":…}}` message becomes the error message,
//! `Retry-After` is kept.
//!
//! ```no_run
//! # async fn demo() -> Result<(), activities::ClientError> {
//! use activities::masumi::{MasumiClient, MasumiConfig, Network};
//! let client = MasumiClient::new(MasumiConfig::new("http://127.0.0.1:3001/api/v1", "my-api-key"))?;
//! let payment = client.resolve_blockchain_identifier(Network::Preprod, "abcd").await?;
//! println!("{:?}", payment.map(|p| p.on_chain_state));
//! # Ok(()) }
//! ```

use super::types::{
    AuthorizeRefundRequest, CreatePaymentRequest, Envelope, ErrorEnvelope, Health, Network,
    Payment, PaymentList, PaymentWithHistory, ResolveRequest, SubmitResultRequest,
};
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::error::{ClientError, retry_after};
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The service name in errors, error codes and breaker logs.
pub const SERVICE: &str = "masumi";

/// Settings of a [`MasumiClient`].
#[derive(Debug, Clone)]
pub struct MasumiConfig {
    /// Base URL including `/api/v1`, e.g. `http://host:3001/api/v1`. This build speaks plain
    /// `http://` only (reqwest without a TLS feature).
    pub base_url: String,
    /// The API key, sent as header `token`.
    pub token: Secret,
    /// The network of this deployment, for callers that do not carry their own
    /// ([`MasumiClient::network`]); every call names its network explicitly.
    pub network: Network,
    /// Limit of one request, connect included. Default 30 s.
    pub timeout: Duration,
    /// Circuit breaker settings.
    pub breaker: BreakerConfig,
}

impl MasumiConfig {
    /// Settings with defaults: Preprod, 30 s timeout, default breaker.
    pub fn new(base_url: impl Into<String>, token: impl Into<Secret>) -> Self {
        Self {
            base_url: base_url.into(),
            token: token.into(),
            network: Network::Preprod,
            timeout: Duration::from_secs(30),
            breaker: BreakerConfig::default(),
        }
    }
}

/// A client of one Masumi payment service; share it behind an `Arc`.
#[derive(Debug)]
pub struct MasumiClient {
    http: reqwest::Client,
    base_url: String,
    token: HeaderValue,
    network: Network,
    timeout: Duration,
    breaker: Breaker,
}

impl MasumiClient {
    /// Builds the client.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] when the base URL is not `http(s)://…`, the token is not a
    /// valid header value, or the HTTP client cannot be built.
    pub fn new(config: MasumiConfig) -> Result<Self, ClientError> {
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(invalid(format!(
                "base URL must start with http:// or https://, got {base_url:?}"
            )));
        }
        let mut token = HeaderValue::from_str(config.token.expose())
            .map_err(|_| invalid("the API token is not a valid header value".to_owned()))?;
        token.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base_url,
            token,
            network: config.network,
            timeout: config.timeout,
            breaker: Breaker::new(SERVICE, config.breaker),
        })
    }

    /// The base URL (with `/api/v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The configured default network.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The limit of one request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The state of this client's circuit breaker.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// `GET /health` (no authentication).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, "/health", None::<&()>, false).await
    }

    /// `POST /payment`: creates a payment request. The service has no idempotency key: a
    /// retry after a lost answer creates a second payment request (see
    /// [`Self::find_payment`]).
    ///
    /// # Errors
    /// 400 on invalid input or time rules, 404 `Network and policyId combination not
    /// supported`, 401, and transport errors.
    pub async fn create_payment(&self, req: &CreatePaymentRequest) -> Result<Payment, ClientError> {
        self.call(Method::POST, "/payment", Some(req), true).await
    }

    /// `POST /payment/resolve-blockchain-identifier`; `Ok(None)` on 404.
    ///
    /// # Errors
    /// Any [`ClientError`] but a 404.
    pub async fn resolve_blockchain_identifier(
        &self,
        network: Network,
        blockchain_identifier: &str,
    ) -> Result<Option<Payment>, ClientError> {
        let req = ResolveRequest {
            blockchain_identifier: blockchain_identifier.to_owned(),
            network,
            filter_smart_contract_address: None,
            include_history: None,
        };
        match self
            .call::<Payment>(
                Method::POST,
                "/payment/resolve-blockchain-identifier",
                Some(&req),
                true,
            )
            .await
        {
            Ok(p) => Ok(Some(p)),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /payment/submit-result`.
    ///
    /// # Errors
    /// 404 `Payment not found or in invalid state` unless the payment is `FundsLocked`,
    /// `RefundRequested` or `Disputed` with `WaitingForExternalAction` and a current
    /// transaction; 403 when another API key created the payment.
    pub async fn submit_result(
        &self,
        network: Network,
        blockchain_identifier: &str,
        result_hash: &str,
    ) -> Result<Payment, ClientError> {
        let req = SubmitResultRequest {
            network,
            submit_result_hash: result_hash.to_owned(),
            blockchain_identifier: blockchain_identifier.to_owned(),
        };
        self.call(Method::POST, "/payment/submit-result", Some(&req), true)
            .await
    }

    /// `POST /payment/authorize-refund`.
    ///
    /// # Errors
    /// 404 `Payment not found or in invalid state` unless the payment is `Disputed` or
    /// `RefundRequested` with `WaitingForExternalAction` and a current transaction; 403.
    pub async fn authorize_refund(
        &self,
        network: Network,
        blockchain_identifier: &str,
    ) -> Result<Payment, ClientError> {
        let req = AuthorizeRefundRequest {
            blockchain_identifier: blockchain_identifier.to_owned(),
            network,
        };
        self.call(Method::POST, "/payment/authorize-refund", Some(&req), true)
            .await
    }

    /// `GET /payment`: one page, newest first. `cursor_id` is inclusive (the page starts with
    /// that payment), as in the service.
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn list_payments(
        &self,
        network: Network,
        limit: u32,
        cursor_id: Option<&str>,
    ) -> Result<Vec<PaymentWithHistory>, ClientError> {
        let mut path = format!(
            "/payment?network={}&limit={}",
            network.as_str(),
            limit.clamp(1, 100)
        );
        if let Some(c) = cursor_id {
            path.push_str("&cursorId=");
            path.push_str(&percent_encode(c));
        }
        let list: PaymentList = self.call(Method::GET, &path, None::<&()>, true).await?;
        Ok(list.payments)
    }

    /// The newest payment created at or after `since` that `matches`, paging through
    /// `GET /payment` (at most 20 pages of 100). Used to find the payment request a lost
    /// `create_payment` answer created.
    ///
    /// # Errors
    /// Any [`ClientError`] of the listing.
    pub async fn find_payment(
        &self,
        network: Network,
        since: DateTime<Utc>,
        matches: impl Fn(&Payment) -> bool,
    ) -> Result<Option<Payment>, ClientError> {
        const PAGE: u32 = 100;
        let mut cursor: Option<String> = None;
        for _ in 0..20 {
            let page = self.list_payments(network, PAGE, cursor.as_deref()).await?;
            let full = page.len() as u32 >= PAGE;
            let mut older = false;
            let mut last = None;
            for item in page {
                let p = item.payment;
                if cursor.as_deref() == Some(p.id.as_str()) {
                    continue; // the inclusive cursor row
                }
                if p.created_at < since {
                    older = true;
                    break;
                }
                if matches(&p) {
                    return Ok(Some(p));
                }
                last = Some(p.id);
            }
            match last {
                Some(id) if full && !older => cursor = Some(id),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        auth: bool,
    ) -> Result<T, ClientError> {
        if let Err(retry_in) = self.breaker.check() {
            return Err(ClientError::CircuitOpen {
                service: SERVICE,
                retry_in,
            });
        }
        let result = self.send(method.clone(), path, body, auth).await;
        let service_failed = match &result {
            Ok(_) => false,
            Err(e) => e.is_service_failure(),
        };
        self.breaker.record(service_failed);
        match &result {
            Ok(_) => tracing::debug!(service = SERVICE, %method, path = path_only(path), "ok"),
            Err(e) => tracing::debug!(
                service = SERVICE,
                %method,
                path = path_only(path),
                error.message = %e,
                "failed"
            ),
        }
        result
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        auth: bool,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base_url, path);
        let mut req = self.http.request(method, url);
        if auth {
            req = req.header("token", self.token.clone());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::transport(SERVICE, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::transport(SERVICE, &e))?;
        if status.is_success() {
            serde_json::from_slice::<Envelope<T>>(&bytes)
                .map(|env| env.data)
                .map_err(|e| ClientError::Decode {
                    service: SERVICE,
                    message: format!("{}: {e}", path_only(path)),
                })
        } else {
            Err(status_error(status, &headers, &bytes))
        }
    }
}

/// The error of a non-2xx answer: the envelope's message, or a short excerpt of the body.
fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) => env.error.message,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                text.chars().take(200).collect()
            }
        }
    };
    ClientError::Status {
        service: SERVICE,
        status: status.as_u16(),
        message,
        retry_after: retry_after(headers),
    }
}

fn invalid(message: String) -> ClientError {
    ClientError::Invalid {
        service: SERVICE,
        message,
    }
}

/// The path without its query, for logs.
fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_messages() {
        let h = HeaderMap::new();
        let e = status_error(
            StatusCode::NOT_FOUND,
            &h,
            br#"{"status":"error","error":{"message":"Payment not found or in invalid state"}}"#,
        );
        assert_eq!(e.status(), Some(404));
        assert!(
            e.to_string()
                .contains("Payment not found or in invalid state")
        );
        let e = status_error(StatusCode::BAD_GATEWAY, &h, b"");
        assert!(e.to_string().contains("Bad Gateway"));
        assert!(e.is_retryable());
    }

    #[test]
    fn config_debug_hides_the_token() {
        let c = MasumiConfig::new("http://x/api/v1", "super-secret-token");
        assert!(!format!("{c:?}").contains("super-secret-token"));
        let client = MasumiClient::new(c).expect("builds");
        assert!(!format!("{client:?}").contains("super-secret-token"));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(MasumiClient::new(MasumiConfig::new("ftp://x", "t")).is_err());
        assert!(MasumiClient::new(MasumiConfig::new("http://x", "bad\ntoken")).is_err());
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }
}
