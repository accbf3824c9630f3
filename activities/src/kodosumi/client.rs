//! The HTTP client of the Kodosumi 1.1.0 panel API.
//!
//! One `reqwest::Client`; a login (`POST /api/login`) whose JWT is kept and sent as header
//! `KODOSUMI_API_KEY` until shortly before its `exp` or until a 401 (then one more login and
//! one retry of the call); a circuit breaker per client; errors classified where they are born
//! ([`ClientError`]). The password and the token are never logged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), activities::ClientError> {
//! use activities::kodosumi::{KodosumiClient, KodosumiConfig, LaunchResponse};
//! let client = KodosumiClient::new(KodosumiConfig::new("http://127.0.0.1:3370", "admin", "admin"))?;
//! let flow = &client.list_flows().await?[0];
//! let mut inputs = serde_json::Map::new();
//! inputs.insert("name".into(), "Alice".into());
//! if let LaunchResponse::Launched { fid } = client.launch(&flow.url, &inputs).await? {
//!     println!("{:?}", client.status(&fid).await?.map(|s| s.status));
//! }
//! # Ok(()) }
//! ```

use super::jwt;
use super::types::{
    ErrorBody, ExecutionStatus, Flow, FlowForm, FlowPage, FormElement, Health, LaunchReply,
    LockReply, LoginResponse, TimelineItem, TimelinePage, fid_timestamp,
};
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::error::{ClientError, retry_after};
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The service name in errors, error codes and breaker logs.
pub const SERVICE: &str = "kodosumi";

/// The header that carries the token.
const API_KEY_HEADER: HeaderName = HeaderName::from_static("kodosumi_api_key");

/// A token is renewed this long before its `exp`.
const RENEW_BEFORE_SECS: f64 = 60.0;

/// Page size of the flow and timeline listings.
const FLOW_PAGE: u32 = 50;
const TIMELINE_PAGE: u32 = 25;
/// Upper bound of pages one listing walks through (a server that never ends its paging).
const MAX_PAGES: usize = 200;

/// Settings of a [`KodosumiClient`].
#[derive(Debug, Clone)]
pub struct KodosumiConfig {
    /// The panel's base URL, e.g. `http://127.0.0.1:3370`. Plain `http://` only in this build.
    pub base_url: String,
    /// The role to log in as (executions are private to it).
    pub username: String,
    pub password: Secret,
    /// Limit of one ordinary request, connect included. Default 30 s.
    pub timeout: Duration,
    /// Limit of `GET /outputs/raw/{fid}`, which blocks up to 600 s on an unknown fid.
    /// Default 620 s.
    pub raw_timeout: Duration,
    pub breaker: BreakerConfig,
}

impl KodosumiConfig {
    /// Settings with the default timeouts and breaker.
    pub fn new(
        base_url: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<Secret>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            username: username.into(),
            password: password.into(),
            timeout: Duration::from_secs(30),
            raw_timeout: Duration::from_secs(620),
            breaker: BreakerConfig::default(),
        }
    }
}

/// What a launch ended in. Both arrive as HTTP 200.
#[derive(Debug, Clone, PartialEq)]
pub enum LaunchResponse {
    /// The execution exists: its fid (24 hex digits).
    Launched { fid: String },
    /// The flow refused the inputs (`InputsError`): messages per field, `_global_` for the form.
    Rejected { errors: Map<String, Value> },
}

/// What releasing a lock ended in.
#[derive(Debug, Clone, PartialEq)]
pub enum LockRelease {
    /// Released; the values as the flow parsed them (`"on"` became `true`).
    Released { result: Value },
    /// The flow's lease handler refused the input.
    Rejected { errors: Map<String, Value> },
}

struct Session {
    token: HeaderValue,
    expires_at: Option<f64>,
}

impl Session {
    fn fresh(&self) -> bool {
        match self.expires_at {
            Some(exp) => unix_now() + RENEW_BEFORE_SECS < exp,
            None => true,
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A client of one Kodosumi panel; share it behind an `Arc`.
#[derive(Debug)]
pub struct KodosumiClient {
    http: reqwest::Client,
    base_url: String,
    username: String,
    password: Secret,
    timeout: Duration,
    raw_timeout: Duration,
    /// The current token; the lock also makes concurrent logins wait for one login.
    session: tokio::sync::Mutex<Option<Session>>,
    breaker: Breaker,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl KodosumiClient {
    /// Builds the client; nothing is sent until the first call.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] when the base URL is not `http(s)://…` or the HTTP client
    /// cannot be built.
    pub fn new(config: KodosumiConfig) -> Result<Self, ClientError> {
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(invalid(format!(
                "base URL must start with http:// or https://, got {base_url:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base_url,
            username: config.username,
            password: config.password,
            timeout: config.timeout,
            raw_timeout: config.raw_timeout,
            session: tokio::sync::Mutex::new(None),
            breaker: Breaker::new(SERVICE, config.breaker),
        })
    }

    /// The panel's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Limit of one ordinary request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Limit of a result fetch.
    pub fn raw_timeout(&self) -> Duration {
        self.raw_timeout
    }

    /// The state of this client's circuit breaker.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Logs in now, replacing the kept token.
    ///
    /// # Errors
    /// 401 `Invalid name or password`, transport errors.
    pub async fn login(&self) -> Result<(), ClientError> {
        let mut session = self.session.lock().await;
        *session = Some(self.log_in().await?);
        Ok(())
    }

    /// `GET /health` (it needs a login too).
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get_json("/health", self.timeout).await
    }

    /// `GET /flow?q=&pp=&offset=`: one page of flows, sorted by summary.
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn flow_page(
        &self,
        q: Option<&str>,
        pp: u32,
        offset: Option<&str>,
    ) -> Result<FlowPage, ClientError> {
        let mut path = format!("/flow?pp={}", pp.max(1));
        push_query(&mut path, "q", q);
        push_query(&mut path, "offset", offset);
        self.get_json(&path, self.timeout).await
    }

    /// Every flow, paging through `GET /flow` until `offset` is null.
    ///
    /// # Errors
    /// Any [`ClientError`]; [`ClientError::Decode`] when the paging does not end.
    pub async fn list_flows(&self) -> Result<Vec<Flow>, ClientError> {
        let mut flows = Vec::new();
        let mut offset: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.flow_page(None, FLOW_PAGE, offset.as_deref()).await?;
            flows.extend(page.items);
            match page.offset {
                Some(next) if offset.as_deref() != Some(next.as_str()) => offset = Some(next),
                Some(_) => return Err(decode("/flow", "the paging offset does not advance")),
                None => return Ok(flows),
            }
        }
        Err(decode("/flow", "more pages than expected"))
    }

    /// `GET {flow_url}`: the flow's input form.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a path that is not `/-/…`; 404 for an unknown flow.
    pub async fn flow_form(&self, flow_url: &str) -> Result<FlowForm, ClientError> {
        let path = flow_path(flow_url)?;
        self.get_json(path, self.timeout).await
    }

    /// `POST {flow_url}` with the inputs as a flat JSON object. Not idempotent: a lost answer
    /// may still have started a run (see [`Self::find_execution`]).
    ///
    /// # Errors
    /// 404 unknown flow, 500 when the flow app failed or is unreachable, 400 when the flow
    /// returned no `Launch`, transport errors.
    pub async fn launch(
        &self,
        flow_url: &str,
        inputs: &Map<String, Value>,
    ) -> Result<LaunchResponse, ClientError> {
        let path = flow_path(flow_url)?;
        let answer = self
            .request(Method::POST, path, Some(inputs), self.timeout)
            .await?;
        let reply: LaunchReply = parse_ok(path, answer)?;
        match (reply.result, reply.errors) {
            (Some(fid), _) if !fid.is_empty() => Ok(LaunchResponse::Launched { fid }),
            (_, Some(errors)) => Ok(LaunchResponse::Rejected { errors }),
            _ => Err(decode(
                path,
                "launch answer has neither `result` nor `errors`",
            )),
        }
    }

    /// `GET /outputs/status/{fid}?extended=true`: the server waits (up to 600 s) until the
    /// execution exists, so this is bounded by the client timeout. `Ok(None)` on 404.
    ///
    /// # Errors
    /// Any [`ClientError`] but a 404; a timeout when the execution never appears.
    pub async fn status(&self, fid: &str) -> Result<Option<ExecutionStatus>, ClientError> {
        self.status_with(fid, true).await
    }

    /// `GET /outputs/status/{fid}` without `extended`: the server waits at most ~1 s and
    /// answers 404 (`Ok(None)`) for an execution it does not (yet) know, e.g. during the
    /// ~2 s after a launch, or after a kill.
    ///
    /// # Errors
    /// Any [`ClientError`] but a 404.
    pub async fn poll_status(&self, fid: &str) -> Result<Option<ExecutionStatus>, ClientError> {
        self.status_with(fid, false).await
    }

    async fn status_with(
        &self,
        fid: &str,
        extended: bool,
    ) -> Result<Option<ExecutionStatus>, ClientError> {
        let mut path = format!("/outputs/status/{}", segment(fid)?);
        if extended {
            path.push_str("?extended=true");
        }
        let answer = self
            .request(Method::GET, &path, None::<&()>, self.timeout)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        parse_ok(&path, answer).map(Some)
    }

    /// `GET /outputs/raw/{fid}`: the final result as raw JSON text (`{"Markdown":{"body":…}}`),
    /// or `{"Markdown":{"body":"no result, yet. please be patient."}}` before the end.
    /// Bounded by `raw_timeout`: the server blocks up to 600 s on an unknown fid.
    ///
    /// # Errors
    /// 404 after the server's wait, transport errors (a timeout for an unknown fid).
    pub async fn raw_result(&self, fid: &str) -> Result<String, ClientError> {
        let path = format!("/outputs/raw/{}", segment(fid)?);
        let answer = self
            .request(Method::GET, &path, None::<&()>, self.raw_timeout)
            .await?;
        if !answer.status.is_success() {
            return Err(status_error(&answer));
        }
        let text =
            String::from_utf8(answer.body).map_err(|_| decode(&path, "the result is not UTF-8"))?;
        // Kodosumi sends the JSON text itself; accept a JSON string wrapping it too.
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::String(inner)) => Ok(inner),
            _ => Ok(text),
        }
    }

    /// `GET /lock/{fid}/{lid}`: the lock's form (a bare array of elements).
    ///
    /// # Errors
    /// 404 when the lock or the execution is gone or the lock was released.
    pub async fn lock_form(&self, fid: &str, lid: &str) -> Result<Vec<FormElement>, ClientError> {
        let path = format!("/lock/{}/{}", segment(fid)?, segment(lid)?);
        self.get_json(&path, self.timeout).await
    }

    /// `POST /lock/{fid}/{lid}` with the values: releases the lock, the run goes on.
    ///
    /// # Errors
    /// 404 when the lock was already released (a second release) or is gone.
    pub async fn release_lock(
        &self,
        fid: &str,
        lid: &str,
        inputs: &Map<String, Value>,
    ) -> Result<LockRelease, ClientError> {
        let path = format!("/lock/{}/{}", segment(fid)?, segment(lid)?);
        let answer = self
            .request(Method::POST, &path, Some(inputs), self.timeout)
            .await?;
        let reply: LockReply = parse_ok(&path, answer)?;
        match (reply.result, reply.errors) {
            (_, Some(errors)) => Ok(LockRelease::Rejected { errors }),
            (result, None) => Ok(LockRelease::Released {
                result: result.unwrap_or(Value::Null),
            }),
        }
    }

    /// `DELETE /outputs/{fid}`: kills the run if it is not final and archives it (its status
    /// is 404 afterwards). `Ok(true)` when Kodosumi deleted it, `Ok(false)` on a 404: the run
    /// is already gone, **or not created yet** (Kodosumi answers 404 for ~2 s after a launch,
    /// and that run then goes on); see [`crate::kodosumi::Kill`].
    ///
    /// # Errors
    /// Any [`ClientError`] but a 404.
    pub async fn kill(&self, fid: &str) -> Result<bool, ClientError> {
        let path = format!("/outputs/{}", segment(fid)?);
        let answer = self
            .request(Method::DELETE, &path, None::<&()>, self.timeout)
            .await?;
        if answer.status.is_success() {
            Ok(true)
        } else if answer.status == StatusCode::NOT_FOUND {
            Ok(false)
        } else {
            Err(status_error(&answer))
        }
    }

    /// `GET /timeline/list?pp=&q=&offset=`: one page of this user's executions, newest first;
    /// `q` is a case-insensitive substring of Kodosumi's search text (summary, author, status,
    /// inputs, …); `offset` continues after that fid.
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub async fn timeline(
        &self,
        q: Option<&str>,
        offset: Option<&str>,
    ) -> Result<TimelinePage, ClientError> {
        let mut path = format!("/timeline/list?pp={TIMELINE_PAGE}");
        push_query(&mut path, "q", q);
        push_query(&mut path, "offset", offset);
        self.get_json(&path, self.timeout).await
    }

    /// The newest execution of the flow `summary` created at or after `since` (by the time in
    /// its fid, whole seconds of Kodosumi's clock) for which `matches` holds, paging through
    /// the timeline until items are older than `since`.
    ///
    /// # Errors
    /// Any [`ClientError`] of the listing.
    pub async fn find_execution(
        &self,
        summary: &str,
        since: DateTime<Utc>,
        matches: impl Fn(&TimelineItem) -> bool,
    ) -> Result<Option<TimelineItem>, ClientError> {
        let since = since.timestamp();
        let mut offset: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.timeline(Some(summary), offset.as_deref()).await?;
            if page.items.is_empty() {
                return Ok(None);
            }
            for item in &page.items {
                // A fid that is not an ObjectId has no time: look at it, do not stop.
                if fid_timestamp(&item.fid).is_some_and(|t| t < since) {
                    return Ok(None);
                }
                if item.summary.as_deref() == Some(summary) && matches(item) {
                    return Ok(Some(item.clone()));
                }
            }
            match page.offset {
                Some(next) if offset.as_deref() != Some(next.as_str()) => offset = Some(next),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let answer = self
            .request(Method::GET, path, None::<&()>, timeout)
            .await?;
        parse_ok(path, answer)
    }

    /// Sends with the kept token; on a 401 logs in once more and sends once more.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let token = self.token(None).await?;
        let answer = self
            .send(method.clone(), path, body, timeout, Some(&token))
            .await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        tracing::debug!(
            service = SERVICE,
            path = path_only(path),
            "token refused; logging in again"
        );
        let token = self.token(Some(&token)).await?;
        self.send(method, path, body, timeout, Some(&token)).await
    }

    /// The kept token, or a new one when there is none, it is about to expire, or it is the
    /// `refused` one (unless another call already replaced it).
    async fn token(&self, refused: Option<&HeaderValue>) -> Result<HeaderValue, ClientError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref() {
            let was_refused = refused.is_some_and(|r| r == s.token);
            if !was_refused && s.fresh() {
                return Ok(s.token.clone());
            }
        }
        let fresh = self.log_in().await?;
        let token = fresh.token.clone();
        *session = Some(fresh);
        Ok(token)
    }

    async fn log_in(&self) -> Result<Session, ClientError> {
        #[derive(Serialize)]
        struct Login<'a> {
            name: &'a str,
            password: &'a str,
        }
        let body = Login {
            name: &self.username,
            password: self.password.expose(),
        };
        let answer = self
            .send(Method::POST, "/api/login", Some(&body), self.timeout, None)
            .await?;
        let login: LoginResponse = parse_ok("/api/login", answer)?;
        let mut token = HeaderValue::from_str(&login.api_key)
            .map_err(|_| decode("/api/login", "the token is not a valid header value"))?;
        token.set_sensitive(true);
        let expires_at = jwt::expires_at(&login.api_key);
        tracing::debug!(service = SERVICE, user = %login.name, expires_at, "logged in");
        Ok(Session { token, expires_at })
    }

    /// One HTTP exchange through the breaker. Any answer is `Ok`; only transport errors fail.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
        token: Option<&HeaderValue>,
    ) -> Result<Answer, ClientError> {
        if let Err(retry_in) = self.breaker.check() {
            return Err(ClientError::CircuitOpen {
                service: SERVICE,
                retry_in,
            });
        }
        let result = self
            .exchange(method.clone(), path, body, timeout, token)
            .await;
        let service_failed = match &result {
            Ok(a) => a.status.is_server_error() || a.status == StatusCode::TOO_MANY_REQUESTS,
            Err(e) => e.is_service_failure(),
        };
        self.breaker.record(service_failed);
        match &result {
            Ok(a) => {
                tracing::debug!(service = SERVICE, %method, path = path_only(path), status = a.status.as_u16(), "answered")
            }
            Err(e) => {
                tracing::debug!(service = SERVICE, %method, path = path_only(path), error.message = %e, "failed")
            }
        }
        result
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
        token: Option<&HeaderValue>,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{}", self.base_url, path);
        let mut req = self.http.request(method, url).timeout(timeout);
        if let Some(token) = token {
            req = req.header(API_KEY_HEADER, token.clone());
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
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::transport(SERVICE, &e))?
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// The JSON of a 200 answer, or the error of any other.
fn parse_ok<T: DeserializeOwned>(path: &str, answer: Answer) -> Result<T, ClientError> {
    if !answer.status.is_success() {
        return Err(status_error(&answer));
    }
    serde_json::from_slice(&answer.body).map_err(|e| decode(path, &e.to_string()))
}

/// The error of a non-2xx answer: Kodosumi's `detail`, or a short excerpt of the body.
fn status_error(answer: &Answer) -> ClientError {
    let message = match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(body) => body.detail.chars().take(300).collect(),
        Err(_) => {
            let text = String::from_utf8_lossy(&answer.body);
            let text = text.trim();
            if text.is_empty() {
                answer
                    .status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_owned()
            } else {
                text.chars().take(300).collect()
            }
        }
    };
    ClientError::Status {
        service: SERVICE,
        status: answer.status.as_u16(),
        message,
        retry_after: retry_after(&answer.headers),
    }
}

fn invalid(message: String) -> ClientError {
    ClientError::Invalid {
        service: SERVICE,
        message,
    }
}

fn decode(path: &str, message: &str) -> ClientError {
    ClientError::Decode {
        service: SERVICE,
        message: format!("{}: {message}", path_only(path)),
    }
}

/// A flow path as the panel lists it (`/-/host/port/-/name`), refused when it could reach
/// anything else.
fn flow_path(flow_url: &str) -> Result<&str, ClientError> {
    let ok = flow_url.starts_with("/-/")
        && !flow_url.contains("..")
        && flow_url
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '?' | '#' | '%' | '\\'));
    if ok {
        Ok(flow_url)
    } else {
        Err(invalid(format!("not a Kodosumi flow path: {flow_url:?}")))
    }
}

/// An id used as one path segment (fid, lock id).
fn segment(id: &str) -> Result<&str, ClientError> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(invalid(format!("not an execution or lock id: {id:?}")))
    }
}

fn push_query(path: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        path.push('&');
        path.push_str(key);
        path.push('=');
        path.push_str(&percent_encode(v));
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
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ids_are_checked() {
        assert!(flow_path("/-/127.0.0.1/8011/-/").is_ok());
        assert!(flow_path("/-/127.0.0.1/8011/-/../../admin").is_err());
        assert!(flow_path("/outputs/x").is_err());
        assert!(flow_path("/-/a?b=1").is_err());
        assert!(segment("6b0422d36cc2496af2512fb4").is_ok());
        assert!(segment("4906a76c-1cf4-49d7-a709-ace847b970c0").is_ok());
        assert!(segment("../x").is_err());
        assert!(segment("").is_err());
    }

    #[test]
    fn error_bodies_become_messages() {
        let answer = Answer {
            status: StatusCode::NOT_FOUND,
            headers: HeaderMap::new(),
            body: br#"{"error":"NotFoundException","path":"/outputs/status/x","detail":"Execution x not found after 1s.","status_code":404}"#.to_vec(),
        };
        let e = status_error(&answer);
        assert_eq!(e.status(), Some(404));
        assert!(e.to_string().contains("Execution x not found after 1s."));
        assert!(!e.is_retryable());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = KodosumiConfig::new("http://x:3370", "admin", "super-secret-pw");
        assert!(!format!("{c:?}").contains("super-secret-pw"));
        let client = KodosumiClient::new(c).expect("builds");
        assert!(!format!("{client:?}").contains("super-secret-pw"));
        assert!(KodosumiClient::new(KodosumiConfig::new("ftp://x", "a", "b")).is_err());
    }

    #[test]
    fn queries_are_encoded() {
        let mut p = "/flow?pp=1".to_owned();
        push_query(&mut p, "q", Some("Hello World&x"));
        assert_eq!(p, "/flow?pp=1&q=Hello%20World%26x");
    }
}
