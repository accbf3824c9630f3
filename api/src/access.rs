//! Who may call what: bearer tokens for the admin API, a per-client rate limit for the public
//! MIP-003 endpoints, and CORS.
//!
//! - Tokens are `kdm_` + 43 base64url characters (32 random bytes). The store keeps only their
//!   SHA-256; a token is shown once, when it is created.
//! - `/api/v1/**` (the admin API and its event streams) needs `Authorization: Bearer <token>` or
//!   the cookie `kodomasu_session=<token>` (set by `POST /api/v1/session`, so a browser's
//!   `EventSource` can send it). Everything else is public.
//! - Token lookups are cached for [`TOKEN_CACHE_TTL`]: a revoked token stops working within
//!   that time, in every process.
//! - MIP-003 routes allow `--rate-limit-per-minute` requests per client IP in any 60 s window
//!   (a sliding log: the request after the limit within one minute answers 429).
//!
//! No token ever reaches a log line: requests are traced by method and matched route only.

use crate::{ApiError, AppState};
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use engine::{AccessToken, Store, StoreError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Prefix of every token kodomasu makes.
pub const TOKEN_PREFIX: &str = "kdm_";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "kodomasu_session";
/// How long a token lookup is trusted before the store is asked again.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);
/// Name of the token `--bootstrap-token` ensures.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap";
/// Longest token accepted in a request (longer ones are refused without a lookup).
const MAX_TOKEN_LEN: usize = 512;
/// Cached lookups kept at most (the cache is emptied when full).
const TOKEN_CACHE_MAX: usize = 10_000;
/// The rate limit's window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Errors of token management.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A valid token already has this name.
    #[error("a valid token named `{0}` exists; revoke it first or choose another name")]
    NameTaken(String),
    /// Names are 1 to 64 printable characters without spaces.
    #[error("invalid token name `{0}`: use 1 to 64 letters, digits, `-`, `_`, `.`, `@`")]
    InvalidName(String),
    /// The OS random source failed.
    #[error("no randomness for a token: {0}")]
    Random(String),
}

/// A new random token: `kdm_` + 43 base64url characters.
///
/// # Errors
/// When the OS random source fails.
pub fn generate_token() -> Result<String, AccessError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AccessError::Random(e.to_string()))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The stored form of a token: its SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn check_name(name: &str) -> Result<(), AccessError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AccessError::InvalidName(name.to_owned()))
    }
}

/// Creates a token named `name`; returns the token (shown once) and its stored record.
///
/// # Errors
/// [`AccessError::NameTaken`], [`AccessError::InvalidName`], or a store error.
pub async fn create_token(
    store: &dyn Store,
    name: &str,
) -> Result<(String, AccessToken), AccessError> {
    check_name(name)?;
    let token = generate_token()?;
    let record = store
        .create_access_token(uuid::Uuid::now_v7(), name, &hash_token(&token))
        .await?
        .ok_or_else(|| AccessError::NameTaken(name.to_owned()))?;
    Ok((token, record))
}

/// Makes `token` a valid token named `name`, revoking the previous valid token of that name
/// (`--bootstrap-token`, and the token `kodomasu dev` prints). A token with this value that was
/// revoked stays revoked: the returned record says so.
///
/// # Errors
/// [`AccessError::InvalidName`] or a store error.
pub async fn ensure_token(
    store: &dyn Store,
    name: &str,
    token: &str,
) -> Result<AccessToken, AccessError> {
    check_name(name)?;
    let hash = hash_token(token);
    if let Some(existing) = store.find_access_token(&hash).await? {
        return Ok(existing);
    }
    Ok(store
        .replace_access_token(uuid::Uuid::now_v7(), name, &hash)
        .await?)
}

/// Access settings of the HTTP server.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// MIP-003 requests allowed per client IP per minute; 0 = no limit.
    pub rate_limit_per_minute: u32,
    /// Take the client IP from the last `X-Forwarded-For` entry (behind one trusted proxy).
    pub trust_forwarded_for: bool,
    /// Origins allowed to call the API from a browser (`*` = any); empty = no CORS headers.
    pub cors_origins: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_minute: 60,
            trust_forwarded_for: false,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    valid: bool,
    at: Instant,
}

/// Token checks and the rate limiter of one server.
#[derive(Debug)]
pub struct Access {
    store: Arc<dyn Store>,
    config: AccessConfig,
    cache: Mutex<HashMap<String, Cached>>,
    limiter: RateLimiter,
}

impl Access {
    pub fn new(store: Arc<dyn Store>, config: AccessConfig) -> Self {
        Self {
            limiter: RateLimiter::new(config.rate_limit_per_minute, RATE_WINDOW),
            store,
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    /// Whether `token` is a valid (stored, unrevoked) token; cached for [`TOKEN_CACHE_TTL`].
    ///
    /// # Errors
    /// When the store fails.
    pub async fn is_valid(&self, token: &str) -> Result<bool, StoreError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Ok(false);
        }
        let hash = hash_token(token);
        if let Some(c) = lock(&self.cache).get(&hash)
            && c.at.elapsed() < TOKEN_CACHE_TTL
        {
            return Ok(c.valid);
        }
        let valid = self
            .store
            .find_access_token(&hash)
            .await?
            .is_some_and(|t| t.revoked_at.is_none());
        let mut cache = lock(&self.cache);
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            hash,
            Cached {
                valid,
                at: Instant::now(),
            },
        );
        Ok(valid)
    }

    /// The client key of the rate limit: the peer IP, or behind a trusted proxy the last
    /// `X-Forwarded-For` entry.
    fn client_ip(&self, req: &Request) -> IpAddr {
        if self.config.trust_forwarded_for
            && let Some(ip) = forwarded_for(req.headers())
        {
            return ip;
        }
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The last parseable address of the last `X-Forwarded-For` header: the one the proxy in
/// front of us appended (earlier entries are the client's own claims).
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .next_back()
}

/// Whether `path` needs a token: the admin API and its streams, except the login itself.
pub fn needs_token(path: &str) -> bool {
    (path == "/api/v1" || path.starts_with("/api/v1/")) && path != "/api/v1/session"
}

/// The token a request presents: `Authorization: Bearer`, else the session cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some((scheme, token)) = value.trim().split_once(' ')
        && scheme.eq_ignore_ascii_case("bearer")
    {
        return Some(token.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
}

/// 401 `unauthorized` with `WWW-Authenticate: Bearer`.
fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn database_unavailable(e: &StoreError) -> Response {
    tracing::error!(error.message = %e, "token lookup failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        "the database is unavailable; retry later",
    )
    .into_response()
}

/// Middleware: requests to [`needs_token`] paths must present a valid token.
pub async fn require_token(
    State(access): State<Arc<Access>>,
    req: Request,
    next: Next,
) -> Response {
    if !needs_token(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(token) = presented_token(req.headers()) else {
        return unauthorized(
            "this endpoint needs `Authorization: Bearer <token>` (create one with `kodomasu token create`)",
        );
    };
    match access.is_valid(&token).await {
        Ok(true) => next.run(req).await,
        Ok(false) => unauthorized("the token is unknown or revoked"),
        Err(e) => database_unavailable(&e),
    }
}

/// Per-client sliding-log rate limiter: at most `limit` accepted requests in any `window`.
#[derive(Debug)]
struct RateLimiter {
    limit: u32,
    window: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    clients: HashMap<IpAddr, VecDeque<Instant>>,
    last_sweep: Instant,
}

impl RateLimiter {
    fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            state: Mutex::new(LimiterState {
                clients: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Accepts a request from `client` now, or says how long until the next one may pass.
    fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let window = self.window;
        let mut state = lock(&self.state);
        // Forget clients idle for a whole window, at most once per window.
        if now.duration_since(state.last_sweep) >= window {
            state
                .clients
                .retain(|_, log| log.back().is_some_and(|t| now.duration_since(*t) < window));
            state.last_sweep = now;
        }
        let log = state.clients.entry(client).or_default();
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            log.pop_front();
        }
        if log.len() >= self.limit as usize {
            let oldest = log.front().copied().unwrap_or(now);
            return Err(window.saturating_sub(now.duration_since(oldest)));
        }
        log.push_back(now);
        Ok(())
    }
}

/// Middleware of the MIP-003 routes: 429 `rate_limited` with `Retry-After` over the limit.
pub async fn rate_limit(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let client = access.client_ip(&req);
    match access.limiter.check(client, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            metrics::counter!(crate::metrics::RATE_LIMITED).increment(1);
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let seconds = seconds.max(1);
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} requests per minute from this client; retry in {seconds} s",
                    access.limiter.limit
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

/// The CORS layer for `origins` (`*` = any), or `None` when CORS is off.
///
/// # Errors
/// When an origin is not a valid header value.
pub fn cors_layer(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, String> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim().trim_end_matches('/'))
                    .map_err(|_| format!("invalid CORS origin `{o}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
            .max_age(Duration::from_secs(600)),
    ))
}

/// `POST /api/v1/session` and `DELETE /api/v1/session` (public: they log in and out).
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/session", post(login).delete(logout))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// Checks the token and sets it as an HttpOnly, SameSite=Strict session cookie.
async fn login(
    State(state): State<AppState>,
    crate::error::ApiJson(body): crate::error::ApiJson<Login>,
) -> Response {
    let token = body.token.trim();
    // The cookie value must be a plain token (no `;`, spaces or control characters).
    let plain = token
        .chars()
        .all(|c| c.is_ascii_graphic() && c != ';' && c != ',');
    if !plain {
        return unauthorized("the token is unknown or revoked");
    }
    match state.access.is_valid(token).await {
        Ok(true) => {}
        Ok(false) => return unauthorized("the token is unknown or revoked"),
        Err(e) => return database_unavailable(&e),
    }
    let cookie = format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    match HeaderValue::from_str(&cookie) {
        Ok(value) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, value)]).into_response(),
        Err(_) => unauthorized("the token is unknown or revoked"),
    }
}

/// Clears the session cookie.
async fn logout() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "kodomasu_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
            ),
        )],
    )
        .into_response()
}

/// Answers a 413 that an extractor produced as plain text in our `{code, message}` shape.
pub async fn json_body_limit(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the request body exceeds the limit of {} bytes",
            crate::MAX_BODY_BYTES
        ),
    )
    .into_response()
}

/// Serializable view of a token for `kodomasu token list --json`.
pub fn token_json(t: &AccessToken) -> serde_json::Value {
    serde_json::json!({
        "id": t.id,
        "name": t.name,
        "created_at": t.created_at,
        "revoked_at": t.revoked_at,
        "valid": t.revoked_at.is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape() {
        let t = generate_token().expect("token");
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(t.len(), TOKEN_PREFIX.len() + 43);
        assert!(
            t[TOKEN_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(t, generate_token().expect("token"));
        assert_eq!(hash_token("abc").len(), 64);
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn only_the_admin_api_needs_a_token() {
        for path in [
            "/api/v1",
            "/api/v1/workflows",
            "/api/v1/events",
            "/api/v1/session/x",
        ] {
            assert!(needs_token(path), "{path}");
        }
        for path in [
            "/api/v1/session",
            "/api/v10",
            "/health",
            "/metrics",
            "/dashboard",
            "/x/start_job",
        ] {
            assert!(!needs_token(path), "{path}");
        }
    }

    #[test]
    fn tokens_come_from_the_bearer_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; kodomasu_session=kdm_c"),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("kdm_c"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer kdm_h"),
        );
        assert_eq!(presented_token(&h).as_deref(), Some("kdm_h"));
    }

    #[test]
    fn the_limit_is_a_sliding_window_per_client() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(limiter.check(a, t0 + Duration::from_secs(i * 10)), Ok(()));
        }
        // The 4th within the minute waits until the first leaves the window.
        assert_eq!(
            limiter.check(a, t0 + Duration::from_secs(30)),
            Err(Duration::from_secs(30))
        );
        assert_eq!(limiter.check(b, t0 + Duration::from_secs(30)), Ok(()));
        assert_eq!(limiter.check(a, t0 + Duration::from_secs(60)), Ok(()));
        let off = RateLimiter::new(0, Duration::from_secs(60));
        for _ in 0..1000 {
            assert_eq!(off.check(a, t0), Ok(()));
        }
    }

    #[test]
    fn forwarded_for_takes_the_entry_the_proxy_appended() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        assert_eq!(forwarded_for(&h), "2.2.2.2".parse().ok());
    }
}
