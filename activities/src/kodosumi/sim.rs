//! A Kodosumi 1.1.0 panel simulator: a real HTTP server that speaks the panel API the way the
//! real one does (checked against the recorded responses in `tests/fixtures/kodosumi/`), with
//! flows that run, fail, or stop for input, and fault injection.
//!
//! What it reproduces: JWT login (`POST /api/login`, form `POST /login`, `GET /login`) with
//! expiry, header `KODOSUMI_API_KEY` or cookie `kodosumi_jwt`, 401 bodies; `GET /flow` paging
//! sorted by summary with `uid = md5(url)`; forms at `GET {flow.url}`; launches at
//! `POST {flow.url}` (24-hex fid, `{errors, elements}` as a 200, only `"on"` checks a box,
//! undeclared keys dropped); `GET /outputs/status/{fid}` (404 `Execution <fid> not found after
//! 1s.` until the spooler would have created the run, unless `extended=true`, which waits),
//! `final` as a JSON-encoded string, `awaiting` while a lock is open (a released lock stays
//! listed until the run took its result, [`KodosumiSimConfig::lease_delay`]);
//! `GET /outputs/raw/{fid}`;
//! `GET`/`POST /lock/{fid}/{lid}` (a second release is 404); `DELETE /outputs/{fid}` (then
//! 404); `GET /timeline/list`; `GET /health`; executions private per user.
//!
//! Test control, without authentication, under `/_sim`: `GET /_sim/launches` (every run with
//! its inputs as received and as passed to the flow), `GET /_sim/counters`, `GET`/`POST
//! /_sim/faults`, `POST /_sim/expire_tokens` (every token issued so far becomes invalid).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use activities::kodosumi::sim::{self, KodosumiSimConfig};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! println!("Kodosumi simulator on http://{}", listener.local_addr()?);
//! sim::serve(listener, KodosumiSimConfig::default(), shutdown).await
//! # }
//! ```

use super::jwt;
use super::types::{
    BooleanInput, ErrorBody, Flow, FormElement, NumberInput, SelectInput, SelectOption,
    TextElement, TextInput, fid_timestamp,
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Kodosumi's default JWT secret (`KODO_SECRET_KEY`).
pub const DEFAULT_SECRET: &str = "top secret -- change this in production";

/// Settings of the simulator.
#[derive(Clone)]
pub struct KodosumiSimConfig {
    /// `(name, password)` of each role. Default `admin`/`admin`.
    pub users: Vec<(String, String)>,
    /// Lifetime of a token. Default 24 h, as Kodosumi.
    pub token_ttl: Duration,
    /// The flows. Default [`SimFlow::hello`] and [`SimFlow::confirm`].
    pub flows: Vec<SimFlow>,
    /// How long after a launch the run stays unknown to the status endpoint (the spooler has
    /// not created its database yet). Default 2 s.
    pub status_404_window: Duration,
    /// How long a status request without `extended` (and a kill) waits for an unknown run
    /// before its 404. Default 1 s, as Kodosumi.
    pub short_wait: Duration,
    /// How long `extended=true` and the result endpoint wait for an unknown run before their
    /// 404 (`KODO_WAIT_FOR_JOB`). Default 600 s, as Kodosumi.
    pub wait_for_job: Duration,
    /// How long a released lock stays listed (and the run `awaiting`) after the release: the
    /// run's actor looks for the release once a second, then the spooler stores the lease
    /// (0.3-1.5 s against a real Kodosumi 1.1.0). Meanwhile the lock answers 404 "released";
    /// afterwards 404 "not found". Default 1 s.
    pub lease_delay: Duration,
    pub faults: Faults,
    /// Key of the HS256 tokens.
    pub secret: String,
}

impl Default for KodosumiSimConfig {
    fn default() -> Self {
        Self {
            users: vec![("admin".to_owned(), "admin".to_owned())],
            token_ttl: Duration::from_secs(86_400),
            flows: vec![SimFlow::hello(), SimFlow::confirm()],
            status_404_window: Duration::from_secs(2),
            short_wait: Duration::from_secs(1),
            wait_for_job: Duration::from_secs(600),
            lease_delay: Duration::from_secs(1),
            faults: Faults::default(),
            secret: DEFAULT_SECRET.to_owned(),
        }
    }
}

impl fmt::Debug for KodosumiSimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KodosumiSimConfig")
            .field(
                "users",
                &self.users.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("token_ttl", &self.token_ttl)
            .field(
                "flows",
                &self.flows.iter().map(|f| &f.summary).collect::<Vec<_>>(),
            )
            .field("status_404_window", &self.status_404_window)
            .field("short_wait", &self.short_wait)
            .field("wait_for_job", &self.wait_for_job)
            .field("lease_delay", &self.lease_delay)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

/// Injected faults, for every endpoint but `/_sim/*`. Changeable at run time with
/// `POST /_sim/faults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of requests answered 500 before they are handled (nothing happens).
    pub error_rate: f64,
    /// Delay before every request is handled.
    pub latency_ms: u64,
    /// Share of requests that are handled (a launch starts its run) but never answered, so the
    /// client times out: the ambiguous failure.
    pub hang_rate: f64,
}

/// A flow of the simulator.
#[derive(Debug, Clone)]
pub struct SimFlow {
    pub summary: String,
    pub description: String,
    pub tags: Vec<String>,
    /// The panel path, `/-/<host>/<port><prefix>/-/<endpoint>`; the uid is its md5.
    pub route: String,
    pub author: Option<String>,
    pub organization: Option<String>,
    pub version: String,
    /// `module:function` shown in the status.
    pub entry_point: String,
    /// The form.
    pub elements: Vec<FormElement>,
    pub behavior: FlowBehavior,
}

/// What a run of a flow does.
#[derive(Debug, Clone)]
pub struct FlowBehavior {
    /// Run time (after the lock, if any).
    pub duration_ms: u64,
    /// Always fail. A run also fails when its checkbox `fail` was checked (`"on"`).
    pub fail: bool,
    /// The failure's message template (a `KodosumiError`: it becomes `final` `Text`).
    pub fail_message: String,
    /// Stop for input mid-way.
    pub await_input: Option<LockSpec>,
    pub result: ResultTemplate,
}

/// A lock a run takes: `after_ms` into the run it asks for `elements`, waits for
/// `POST /lock/{fid}/{lid}` (or fails after `timeout`), then continues. The lock's values are
/// template variables of the result.
#[derive(Debug, Clone)]
pub struct LockSpec {
    pub after_ms: u64,
    /// The lock's form; text of `markdown` elements is a template over the inputs.
    pub elements: Vec<FormElement>,
    /// Kodosumi's default is 3 h.
    pub timeout: Duration,
}

/// The final result of a successful run. Strings are templates: `{name}` is the input (or lock
/// value) `name`.
#[derive(Debug, Clone)]
pub enum ResultTemplate {
    Markdown(String),
    Text(String),
    Html(String),
    Str(String),
    /// A `dict`; string values anywhere inside are templates.
    Dict(Value),
}

impl SimFlow {
    /// The recorded "Hello World" flow: name (required), seconds, fail, style. Its result is
    /// Markdown `Hello {name}`; checking `fail` fails it with `failed on purpose for {name}`.
    pub fn hello() -> Self {
        Self {
            summary: "Hello World".to_owned(),
            description: "Greets a name after sleeping a few seconds.".to_owned(),
            tags: vec!["test".to_owned()],
            route: "/-/127.0.0.1/8011/-/".to_owned(),
            author: Some("test@example.com".to_owned()),
            organization: Some("local-test".to_owned()),
            version: "1.0.0".to_owned(),
            entry_point: "hello_app:run_hello".to_owned(),
            elements: vec![
                markdown("# Hello\nSays hello after a short sleep."),
                FormElement::Text(TextInput {
                    name: "name".to_owned(),
                    label: Some("Name".to_owned()),
                    required: true,
                    placeholder: Some("your name".to_owned()),
                    ..TextInput::default()
                }),
                FormElement::Number(NumberInput {
                    name: "seconds".to_owned(),
                    label: Some("Seconds".to_owned()),
                    value: Some(json!("2")),
                    min_value: Some(json!(0)),
                    max_value: Some(json!(60)),
                    ..NumberInput::default()
                }),
                FormElement::Boolean(BooleanInput {
                    name: "fail".to_owned(),
                    label: Some("Fail".to_owned()),
                    value: Some(json!(false)),
                    option: Some("fail on purpose".to_owned()),
                }),
                FormElement::Select(SelectInput {
                    name: "style".to_owned(),
                    label: Some("Style".to_owned()),
                    value: Some(json!("plain")),
                    option: vec![
                        SelectOption::new("plain", "Plain", true),
                        SelectOption::new("markdown", "Markdown", false),
                    ],
                    error: None,
                }),
                FormElement::Submit(TextElement {
                    text: Some("Submit".to_owned()),
                }),
                FormElement::Cancel(TextElement {
                    text: Some("Cancel".to_owned()),
                }),
            ],
            behavior: FlowBehavior {
                duration_ms: 1_000,
                fail: false,
                fail_message: "failed on purpose for {name}".to_owned(),
                await_input: None,
                result: ResultTemplate::Markdown("Hello {name}".to_owned()),
            },
        }
    }

    /// The recorded "Confirm Flow": asks for approval of a topic through a lock (comment, ok),
    /// then finishes with Markdown `Topic {topic}: approved={ok} ({comment})`.
    pub fn confirm() -> Self {
        Self {
            summary: "Confirm Flow".to_owned(),
            description: "Human-in-the-loop lock test.".to_owned(),
            tags: vec!["hitl".to_owned(), "test".to_owned()],
            route: "/-/127.0.0.1/8011/-/confirm".to_owned(),
            author: Some("test@example.com".to_owned()),
            organization: None,
            version: "1.0.0".to_owned(),
            entry_point: "hello_app:run_confirm".to_owned(),
            elements: vec![
                markdown("# Confirm\nAsks for approval before it finishes."),
                FormElement::Text(TextInput {
                    name: "topic".to_owned(),
                    label: Some("Topic".to_owned()),
                    required: true,
                    ..TextInput::default()
                }),
                FormElement::Submit(TextElement {
                    text: Some("Submit".to_owned()),
                }),
                FormElement::Cancel(TextElement {
                    text: Some("Cancel".to_owned()),
                }),
            ],
            behavior: FlowBehavior {
                duration_ms: 300,
                fail: false,
                fail_message: "failed on purpose for {topic}".to_owned(),
                await_input: Some(LockSpec {
                    after_ms: 200,
                    elements: vec![
                        markdown("Approve topic **{topic}**?"),
                        FormElement::Text(TextInput {
                            name: "comment".to_owned(),
                            label: Some("Comment".to_owned()),
                            ..TextInput::default()
                        }),
                        FormElement::Boolean(BooleanInput {
                            name: "ok".to_owned(),
                            label: Some("Approve".to_owned()),
                            value: Some(json!(false)),
                            option: Some("approve".to_owned()),
                        }),
                        FormElement::Submit(TextElement {
                            text: Some("OK".to_owned()),
                        }),
                        FormElement::Cancel(TextElement {
                            text: Some("Cancel".to_owned()),
                        }),
                    ],
                    timeout: Duration::from_secs(3 * 3600),
                }),
                result: ResultTemplate::Markdown(
                    "Topic {topic}: approved={ok} ({comment})".to_owned(),
                ),
            },
        }
    }

    /// The flow as `GET /flow` lists it.
    pub fn endpoint(&self) -> Flow {
        let (app, prefix, path) = split_route(&self.route);
        Flow {
            uid: hex::encode(Md5::digest(self.route.as_bytes())),
            method: "GET".to_owned(),
            url: self.route.clone(),
            source: format!("{app}{prefix}/openapi.json"),
            summary: self.summary.clone(),
            description: Some(self.description.clone()),
            deprecated: false,
            author: self.author.clone(),
            organization: self.organization.clone(),
            tags: self.tags.clone(),
            base_url: format!("{app}{prefix}/{path}"),
        }
    }

    fn app_url(&self) -> String {
        split_route(&self.route).0
    }
}

fn markdown(text: &str) -> FormElement {
    FormElement::Markdown(TextElement {
        text: Some(text.to_owned()),
    })
}

/// `(http://host:port, /prefix, endpoint)` of `/-/host/port/prefix/-/endpoint`.
fn split_route(route: &str) -> (String, String, String) {
    let rest = route.strip_prefix("/-/").unwrap_or(route);
    let (head, path) = rest.split_once("/-/").unwrap_or((rest, ""));
    let mut parts = head.splitn(3, '/');
    let host = parts.next().unwrap_or("127.0.0.1");
    let port = parts.next().unwrap_or("80");
    let prefix = parts.next().map(|p| format!("/{p}")).unwrap_or_default();
    (
        format!("http://{host}:{port}"),
        prefix,
        path.trim_matches('/').to_owned(),
    )
}

/// Serves the simulator on `listener` until `shutdown` fires, then drains the runs.
///
/// # Errors
/// The server's I/O errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: KodosumiSimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let sim = Sim::new(config, shutdown.clone());
    let app = sim.clone().router();
    let token = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
    shutdown.cancel();
    sim.tracker.close();
    sim.tracker.wait().await;
    served
}

/// The simulator's routes, to mount in another server. Runs stop when `shutdown` fires.
pub fn router(config: KodosumiSimConfig, shutdown: CancellationToken) -> Router {
    Sim::new(config, shutdown).router()
}

// ---------------------------------------------------------------------------------------------
// State

struct User {
    name: String,
    password: String,
    id: String,
}

struct SimLock {
    lid: String,
    elements: Vec<FormElement>,
    /// Set by the release.
    result: Option<Value>,
    /// The run took the result and the lease is stored: the lock is no longer listed.
    leased: bool,
}

struct Exec {
    fid: String,
    user_id: String,
    user_name: String,
    flow: usize,
    created_at: f64,
    visible_at: Instant,
    events: Vec<(f64, &'static str, String)>,
    locks: Vec<SimLock>,
    archived: bool,
    killed: bool,
    inputs_received: Value,
    inputs_passed: Map<String, Value>,
    cancel: CancellationToken,
    lock_released: Arc<Notify>,
}

impl Exec {
    fn push(&mut self, kind: &'static str, message: impl Into<String>) {
        self.events.push((unix_now(), kind, message.into()));
    }

    fn last(&self, kind: &str) -> Option<&str> {
        self.events
            .iter()
            .rev()
            .find(|(_, k, _)| *k == kind)
            .map(|(_, _, m)| m.as_str())
    }

    /// The last status event.
    fn raw_status(&self) -> &str {
        self.last("status").unwrap_or("starting")
    }

    fn is_final(&self) -> bool {
        matches!(self.raw_status(), "finished" | "error")
    }

    fn open_locks(&self) -> Vec<String> {
        self.locks
            .iter()
            .filter(|l| !l.leased)
            .map(|l| l.lid.clone())
            .collect()
    }
}

struct Sim {
    users: Vec<User>,
    flows: Vec<SimFlow>,
    token_ttl: Duration,
    status_404_window: Duration,
    short_wait: Duration,
    wait_for_job: Duration,
    lease_delay: Duration,
    secret: String,
    faults: Mutex<Faults>,
    revoked_before: Mutex<f64>,
    execs: Mutex<BTreeMap<String, Exec>>,
    counters: Mutex<BTreeMap<&'static str, u64>>,
    fid_random: u64,
    fid_counter: AtomicU32,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

type Shared = Arc<Sim>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Sim {
    fn new(config: KodosumiSimConfig, shutdown: CancellationToken) -> Shared {
        let users = config
            .users
            .into_iter()
            .map(|(name, password)| User {
                name,
                password,
                id: uuid::Uuid::new_v4().to_string(),
            })
            .collect();
        Arc::new(Self {
            users,
            flows: config.flows,
            token_ttl: config.token_ttl,
            status_404_window: config.status_404_window,
            short_wait: config.short_wait,
            wait_for_job: config.wait_for_job,
            lease_delay: config.lease_delay,
            secret: config.secret,
            faults: Mutex::new(config.faults),
            revoked_before: Mutex::new(0.0),
            execs: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            fid_random: fastrand::u64(..) & 0xff_ffff_ffff,
            fid_counter: AtomicU32::new(fastrand::u32(..) & 0xff_ffff),
            tracker: TaskTracker::new(),
            shutdown,
        })
    }

    fn router(self: Shared) -> Router {
        Router::new()
            .route("/api/login", post(login_json))
            .route("/login", post(login_form).get(login_query))
            .route("/flow", get(list_flows))
            .route("/health", get(health))
            .route("/outputs/status/{fid}", get(status))
            .route("/outputs/raw/{fid}", get(raw))
            .route("/outputs/{fid}", delete(kill))
            .route("/lock/{fid}/{lid}", get(lock_get).post(lock_post))
            .route("/timeline/list", get(timeline))
            .fallback(flow_endpoint)
            .layer(middleware::from_fn_with_state(self.clone(), inject_faults))
            .route("/_sim/launches", get(sim_launches))
            .route("/_sim/counters", get(sim_counters))
            .route("/_sim/faults", get(sim_faults_get).post(sim_faults_set))
            .route("/_sim/expire_tokens", post(sim_expire_tokens))
            .with_state(self)
    }

    fn count(&self, name: &'static str) {
        *lock(&self.counters).entry(name).or_default() += 1;
    }

    fn new_fid(&self) -> String {
        let ts = unix_now() as u64 & 0xffff_ffff;
        let n = self.fid_counter.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
        format!("{ts:08x}{:010x}{n:06x}", self.fid_random)
    }

    fn issue_token(&self, user: &User) -> String {
        let now = unix_now().max(*lock(&self.revoked_before) + 1e-3);
        let claims = json!({
            "exp": now + self.token_ttl.as_secs_f64(),
            "iat": now,
            "sub": user.id,
        });
        jwt::sign(&claims, &self.secret)
    }

    /// The user of a request, from header `KODOSUMI_API_KEY` (which wins) or cookie
    /// `kodosumi_jwt`, or the 401 Kodosumi answers.
    fn authenticate(&self, headers: &HeaderMap, path: &str) -> Result<&User, Box<Response>> {
        let header_token = headers
            .get("kodosumi_api_key")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let token = header_token.or_else(|| cookie(headers, "kodosumi_jwt"));
        let Some(token) = token else {
            self.count("unauthorized");
            return Err(Box::new(error(
                401,
                "NotAuthorizedException",
                path,
                "Unauthorized",
            )));
        };
        let revoked_before = *lock(&self.revoked_before);
        let user = jwt::verify(&token, &self.secret).and_then(|claims| {
            let exp = claims.get("exp")?.as_f64()?;
            let iat = claims.get("iat")?.as_f64()?;
            let sub = claims.get("sub")?.as_str()?;
            if exp <= unix_now() || iat <= revoked_before {
                return None;
            }
            self.users.iter().find(|u| u.id == sub)
        });
        user.ok_or_else(|| {
            self.count("unauthorized");
            Box::new(error(401, "NotAuthorizedException", path, "Invalid token"))
        })
    }

    fn login(&self, name: &str, password: &str, path: &str) -> Response {
        let Some(user) = self
            .users
            .iter()
            .find(|u| u.name == name && u.password == password)
        else {
            self.count("login_failures");
            return error(
                401,
                "NotAuthorizedException",
                path,
                "Invalid name or password",
            );
        };
        self.count("logins");
        let token = self.issue_token(user);
        let mut resp = axum::Json(json!({
            "name": user.name,
            "id": user.id,
            "KODOSUMI_API_KEY": token,
        }))
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&format!("kodosumi_jwt={token}; Path=/; SameSite=lax"))
        {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        resp
    }

    /// Waits up to `limit` for `fid` to be listed for `user` (created by the "spooler", not
    /// archived). Kodosumi polls for the run's database the same way.
    async fn wait_visible(&self, user_id: &str, fid: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let visible = lock(&self.execs).get(fid).is_some_and(|e| {
                e.user_id == user_id && !e.archived && Instant::now() >= e.visible_at
            });
            if visible {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep((deadline - now).min(Duration::from_millis(25))) => {}
                _ = self.shutdown.cancelled() => return false,
            }
        }
    }

    fn status_json(&self, exec: &Exec) -> Value {
        let flow = &self.flows[exec.flow];
        let open = exec.open_locks();
        let raw = exec.raw_status();
        let status = if !exec.is_final() && !open.is_empty() {
            "awaiting"
        } else {
            raw
        };
        let timestamp = exec
            .events
            .iter()
            .filter(|(_, k, _)| matches!(*k, "status" | "final" | "meta"))
            .map(|(t, _, _)| *t)
            .fold(None, |acc: Option<f64>, t| {
                Some(acc.map_or(t, |a| a.max(t)))
            });
        json!({
            "status": status,
            "timestamp": timestamp,
            "final": exec.last("final"),
            "fid": exec.fid,
            "summary": flow.summary,
            "description": flow.description,
            "tags": flow.tags,
            "deprecated": null,
            "author": flow.author,
            "organization": flow.organization,
            "version": flow.version,
            "kodosumi_version": null,
            "app_url": flow.app_url(),
            "entry_point": flow.entry_point,
            "username": exec.user_id,
            "locks": open,
        })
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Kodosumi's error body.
fn error(status: u16, error: &str, path: &str, detail: &str) -> Response {
    let body = ErrorBody {
        error: error.to_owned(),
        path: path.to_owned(),
        detail: detail.to_owned(),
        status_code: status,
        stacktrace: (status >= 500 || error == "HTTPException")
            .then(|| "Traceback (most recent call last):\n  (simulated)".to_owned()),
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(body)).into_response()
}

fn not_found(path: &str, detail: &str) -> Response {
    error(404, "NotFoundException", path, detail)
}

/// Seconds as Python prints them in `not found after {waitfor}s`.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", d.as_secs())
    } else {
        format!("{s}")
    }
}

fn json_body(value: Value) -> Response {
    axum::Json(value).into_response()
}

// ---------------------------------------------------------------------------------------------
// Faults

async fn inject_faults(State(sim): State<Shared>, req: Request, next: Next) -> Response {
    sim.count("requests");
    let faults = lock(&sim.faults).clone();
    if faults.latency_ms > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(faults.latency_ms)) => {}
            _ = sim.shutdown.cancelled() => {}
        }
    }
    let path = req.uri().path().to_owned();
    if faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate {
        sim.count("faults_error");
        return error(500, "InternalServerError", &path, "simulated failure");
    }
    let hang = faults.hang_rate > 0.0 && fastrand::f64() < faults.hang_rate;
    let resp = next.run(req).await;
    if hang {
        sim.count("faults_hang");
        sim.shutdown.cancelled().await;
        return error(503, "ServiceUnavailable", &path, "simulator shutting down");
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Auth

#[derive(Deserialize)]
struct LoginBody {
    name: String,
    password: String,
    #[serde(default)]
    redirect: Option<String>,
}

fn login_or_redirect(sim: &Sim, body: LoginBody, path: &str) -> Response {
    let resp = sim.login(&body.name, &body.password, path);
    match body.redirect {
        Some(to) if resp.status().is_success() => {
            let cookie = resp.headers().get(header::SET_COOKIE).cloned();
            let mut r = (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
            if let Some(c) = cookie {
                r.headers_mut().insert(header::SET_COOKIE, c);
            }
            r
        }
        _ => resp,
    }
}

fn validation_error(method: &str, path: &str, what: &str) -> Response {
    error(
        400,
        "ValidationException",
        path,
        &format!("Validation failed for {method} {path}: {what}"),
    )
}

async fn login_json(State(sim): State<Shared>, uri: Uri, body: Bytes) -> Response {
    match serde_json::from_slice::<LoginBody>(&body) {
        Ok(b) => login_or_redirect(&sim, b, uri.path()),
        Err(e) => validation_error("POST", uri.path(), &e.to_string()),
    }
}

async fn login_form(State(sim): State<Shared>, uri: Uri, body: Bytes) -> Response {
    let form = parse_form(&body);
    match (form.get("name"), form.get("password")) {
        (Some(name), Some(password)) => login_or_redirect(
            &sim,
            LoginBody {
                name: name.clone(),
                password: password.clone(),
                redirect: form.get("redirect").cloned(),
            },
            uri.path(),
        ),
        _ => validation_error("POST", uri.path(), "name and password are required"),
    }
}

async fn login_query(
    State(sim): State<Shared>,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match (q.get("name"), q.get("password")) {
        (Some(name), Some(password)) => sim.login(name, password, uri.path()),
        _ => validation_error("GET", uri.path(), "name and password are required"),
    }
}

/// `application/x-www-form-urlencoded`.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    match s
                        .get(i + 1..i + 3)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Flows

async fn list_flows(
    State(sim): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = sim.authenticate(&headers, uri.path()) {
        return *r;
    }
    sim.count("flow_lists");
    let pp = match q.get("pp").map(|p| p.parse::<usize>()) {
        None => 10,
        Some(Ok(pp)) => pp,
        Some(Err(_)) => return validation_error("GET", uri.path(), "pp must be an integer"),
    };
    let query = q.get("q").map(|s| s.to_lowercase());
    let mut flows: Vec<Flow> = sim
        .flows
        .iter()
        .map(SimFlow::endpoint)
        .filter(|f| {
            query.as_ref().is_none_or(|query| {
                let hay = [
                    Some(f.summary.clone()),
                    f.description.clone(),
                    f.author.clone(),
                    f.organization.clone(),
                    Some(f.tags.concat()),
                ]
                .into_iter()
                .flatten()
                .collect::<String>()
                .to_lowercase();
                hay.contains(query)
            })
        })
        .collect();
    flows.sort_by(|a, b| (&a.summary, &a.url).cmp(&(&b.summary, &b.url)));
    let start = q
        .get("offset")
        .and_then(|o| flows.iter().position(|f| &f.uid == o))
        .map_or(0, |i| i + 1);
    let end = (start + pp).min(flows.len());
    let items: Vec<Flow> = flows.get(start..end).unwrap_or_default().to_vec();
    let offset = match items.last() {
        Some(last) if end < flows.len() => Some(last.uid.clone()),
        _ => None,
    };
    json_body(json!({ "items": items, "offset": offset }))
}

/// `GET` (form) and `POST` (launch) of `/-/…`; anything else is a 404.
async fn flow_endpoint(
    State(sim): State<Shared>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if !path.starts_with("/-/") || !(method == Method::GET || method == Method::POST) {
        return not_found(&path, &format!("Not Found: {path}"));
    }
    let user = match sim.authenticate(&headers, &path) {
        Ok(u) => (u.id.clone(), u.name.clone()),
        Err(r) => return *r,
    };
    let lookup = path.trim_end_matches('/');
    let Some(index) = sim
        .flows
        .iter()
        .position(|f| f.route == lookup || f.route == format!("{lookup}/"))
    else {
        return not_found(&path, path.strip_prefix("/-").unwrap_or(&path));
    };
    let flow = &sim.flows[index];
    if method == Method::GET {
        sim.count("forms");
        let mut extra = Map::new();
        extra.insert("x-kodosumi".to_owned(), json!(true));
        for (k, v) in [
            ("x-author", flow.author.clone()),
            ("x-organization", flow.organization.clone()),
            ("x-version", Some(flow.version.clone())),
        ] {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                extra.insert(k.to_owned(), json!(v));
            }
        }
        return json_body(json!({
            "summary": flow.summary,
            "description": flow.description,
            "tags": flow.tags,
            "openapi_extra": extra,
            "elements": flow.elements,
        }));
    }
    launch(&sim, index, user, &body)
}

/// What the flow receives: each declared element's value, a checkbox as `value == "on"`,
/// anything not sent as `null`; undeclared keys are dropped.
fn process_inputs(elements: &[FormElement], sent: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for el in elements {
        let Some(name) = el.name() else { continue };
        let value = match el {
            FormElement::Boolean(_) => {
                Value::Bool(sent.get(name).and_then(Value::as_str) == Some("on"))
            }
            _ => sent.get(name).cloned().unwrap_or(Value::Null),
        };
        out.insert(name.to_owned(), value);
    }
    out
}

/// The form as the launch answer echoes it: selects mark the option that was sent.
fn echo_elements(elements: &[FormElement], sent: &Map<String, Value>) -> Vec<FormElement> {
    elements
        .iter()
        .map(|el| match el {
            FormElement::Select(s) => {
                let chosen = sent.get(&s.name).and_then(Value::as_str);
                let mut s = s.clone();
                for o in &mut s.option {
                    o.value = chosen == Some(o.name.as_str());
                }
                FormElement::Select(s)
            }
            other => other.clone(),
        })
        .collect()
}

fn launch(sim: &Shared, index: usize, user: (String, String), body: &[u8]) -> Response {
    let flow = &sim.flows[index];
    let received: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let empty = Map::new();
    let sent = received.as_object().unwrap_or(&empty);
    let processed = process_inputs(&flow.elements, sent);
    let elements = echo_elements(&flow.elements, sent);

    // The flow's own check (an InputsError): required fields must be given.
    let mut errors = Map::new();
    for el in &flow.elements {
        if let Some(name) = el.name().filter(|_| el.required()) {
            let missing = match processed.get(name) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.trim().is_empty(),
                _ => false,
            };
            if missing {
                errors.insert(name.to_owned(), json!([format!("Please give a {name}.")]));
            }
        }
    }
    if !errors.is_empty() {
        errors.insert("_global_".to_owned(), json!([]));
        sim.count("launches_rejected");
        return json_body(json!({ "errors": errors, "elements": elements }));
    }

    let fid = sim.new_fid();
    let cancel = sim.shutdown.child_token();
    let notify = Arc::new(Notify::new());
    let mut exec = Exec {
        fid: fid.clone(),
        user_id: user.0,
        user_name: user.1,
        flow: index,
        created_at: unix_now(),
        visible_at: Instant::now() + sim.status_404_window,
        events: Vec::new(),
        locks: Vec::new(),
        archived: false,
        killed: false,
        inputs_received: received.clone(),
        inputs_passed: processed.clone(),
        cancel: cancel.clone(),
        lock_released: notify.clone(),
    };
    exec.push("status", "starting");
    exec.push("inputs", json!({ "dict": processed }).to_string());
    exec.push(
        "meta",
        json!({"dict": {
            "fid": fid, "username": exec.user_id, "app_url": flow.app_url(),
            "panel_url": "http://127.0.0.1:3370", "entry_point": flow.entry_point,
            "kodosumi": "1.1.0", "tags": flow.tags, "summary": flow.summary,
            "description": flow.description, "deprecated": null, "author": flow.author,
            "organization": flow.organization, "version": flow.version,
        }})
        .to_string(),
    );
    lock(&sim.execs).insert(fid.clone(), exec);
    sim.count("launches");
    let task_sim = sim.clone();
    let task_fid = fid.clone();
    sim.tracker.spawn(async move {
        run_flow(task_sim, task_fid, index, processed, cancel, notify).await;
    });
    json_body(json!({ "result": fid, "elements": elements }))
}

/// Sleeps unless the run is cancelled (killed, shutdown); false when cancelled.
async fn nap(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

/// One run: starting → running → (awaiting) → finished | error.
async fn run_flow(
    sim: Shared,
    fid: String,
    index: usize,
    inputs: Map<String, Value>,
    cancel: CancellationToken,
    released: Arc<Notify>,
) {
    let flow = &sim.flows[index];
    let behavior = &flow.behavior;
    let update = |f: &mut dyn FnMut(&mut Exec)| {
        if let Some(e) = lock(&sim.execs).get_mut(&fid) {
            f(e);
        }
    };
    if !nap(&cancel, Duration::from_millis(50)).await {
        return;
    }
    update(&mut |e| e.push("status", "running"));
    let mut vars = inputs.clone();
    if let Some(spec) = &behavior.await_input {
        if !nap(&cancel, Duration::from_millis(spec.after_ms)).await {
            return;
        }
        let lid = uuid::Uuid::new_v4().to_string();
        let elements: Vec<FormElement> = spec
            .elements
            .iter()
            .map(|el| match el {
                FormElement::Markdown(t) => FormElement::Markdown(TextElement {
                    text: t.text.as_deref().map(|s| render(s, &vars)),
                }),
                other => other.clone(),
            })
            .collect();
        update(&mut |e| {
            e.push(
                "lock",
                json!({"dict": {"lid": lid, "name": "lock"}}).to_string(),
            );
            e.locks.push(SimLock {
                lid: lid.clone(),
                elements: elements.clone(),
                result: None,
                leased: false,
            });
        });
        let deadline = Instant::now() + spec.timeout;
        let result = loop {
            let result = lock(&sim.execs)
                .get(&fid)
                .and_then(|e| e.locks.iter().find(|l| l.lid == lid))
                .and_then(|l| l.result.clone());
            if let Some(r) = result {
                break Some(r);
            }
            tokio::select! {
                _ = released.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = cancel.cancelled() => return,
            }
        };
        let Some(result) = result else {
            // Not a KodosumiError: the status is error with no final.
            update(&mut |e| {
                e.push("error", "TimeoutError: lock expired");
                e.push("status", "error");
            });
            return;
        };
        // Kodosumi's actor notices the release on its next look; only then is the lease
        // stored and the lock no longer listed.
        if !nap(&cancel, sim.lease_delay).await {
            return;
        }
        update(&mut |e| {
            if let Some(l) = e.locks.iter_mut().find(|l| l.lid == lid) {
                l.leased = true;
            }
            e.push("lease", json!({"dict": {"lid": lid}}).to_string());
        });
        if let Value::Object(values) = result {
            vars.extend(values);
        }
    }
    if !nap(&cancel, Duration::from_millis(behavior.duration_ms)).await {
        return;
    }
    let fail = behavior.fail || inputs.get("fail") == Some(&Value::Bool(true));
    if fail {
        let message = render(&behavior.fail_message, &vars);
        update(&mut |e| {
            e.push("error", format!("kodosumi.error.KodosumiError: {message}"));
            e.push("final", json!({"Text": {"body": message}}).to_string());
            e.push("status", "error");
        });
        return;
    }
    let final_value = match &behavior.result {
        ResultTemplate::Markdown(t) => json!({"Markdown": {"body": render(t, &vars)}}),
        ResultTemplate::Text(t) => json!({"Text": {"body": render(t, &vars)}}),
        ResultTemplate::Html(t) => json!({"HTML": {"body": render(t, &vars)}}),
        ResultTemplate::Str(t) => json!({ "str": render(t, &vars) }),
        ResultTemplate::Dict(v) => json!({ "dict": render_value(v, &vars) }),
    };
    update(&mut |e| {
        e.push("final", final_value.to_string());
        e.push("status", "finished");
    });
}

/// `{key}` replaced by the variable (strings as they are, others as JSON, null as empty).
fn render(template: &str, vars: &Map<String, Value>) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        out = out.replace(&format!("{{{k}}}"), &text);
    }
    out
}

fn render_value(v: &Value, vars: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) => Value::String(render(s, vars)),
        Value::Array(items) => Value::Array(items.iter().map(|i| render_value(i, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_value(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Outputs

async fn status(
    State(sim): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Path(fid): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user_id = match sim.authenticate(&headers, uri.path()) {
        Ok(u) => u.id.clone(),
        Err(r) => return *r,
    };
    sim.count("status_calls");
    let extended = q
        .get("extended")
        .is_some_and(|v| matches!(v.to_lowercase().as_str(), "true" | "1" | "yes" | "on"));
    let limit = if extended {
        sim.wait_for_job
    } else {
        sim.short_wait
    };
    if !sim.wait_visible(&user_id, &fid, limit).await {
        sim.count("status_404");
        return not_found(
            uri.path(),
            &format!("Execution {fid} not found after {}s.", secs(limit)),
        );
    }
    let execs = lock(&sim.execs);
    match execs.get(&fid) {
        Some(e) => json_body(sim.status_json(e)),
        None => not_found(uri.path(), &format!("Execution {fid} not found.")),
    }
}

async fn raw(
    State(sim): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Path(fid): Path<String>,
) -> Response {
    let user_id = match sim.authenticate(&headers, uri.path()) {
        Ok(u) => u.id.clone(),
        Err(r) => return *r,
    };
    sim.count("raw_calls");
    if !sim.wait_visible(&user_id, &fid, sim.wait_for_job).await {
        return not_found(
            uri.path(),
            &format!(
                "Execution {fid} not found after {}s.",
                secs(sim.wait_for_job)
            ),
        );
    }
    let text = {
        let execs = lock(&sim.execs);
        match execs.get(&fid) {
            Some(e) => match (e.last("final"), e.last("error")) {
                (Some(f), _) => f.to_owned(),
                (None, Some(err)) => {
                    let kodosumi_errors: Vec<&str> = err
                        .lines()
                        .filter(|l| l.starts_with("kodosumi.error"))
                        .filter_map(|l| l.split_once(':').map(|(_, m)| m.trim()))
                        .collect();
                    json!({"Text": {"body": kodosumi_errors.join("\n")}}).to_string()
                }
                (None, None) => {
                    json!({"Markdown": {"body": "no result, yet. please be patient."}}).to_string()
                }
            },
            None => return not_found(uri.path(), &format!("Execution {fid} not found.")),
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

async fn kill(
    State(sim): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Path(fid): Path<String>,
) -> Response {
    let user_id = match sim.authenticate(&headers, uri.path()) {
        Ok(u) => u.id.clone(),
        Err(r) => return *r,
    };
    if !sim.wait_visible(&user_id, &fid, sim.short_wait).await {
        return not_found(
            uri.path(),
            &format!("Execution {fid} not found after {}s.", secs(sim.short_wait)),
        );
    }
    if let Some(e) = lock(&sim.execs).get_mut(&fid) {
        if !e.is_final() {
            e.cancel.cancel();
            e.killed = true;
        }
        e.archived = true;
    }
    sim.count("kills");
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------------------------------------
// Locks

enum LockLookup {
    Found(Vec<FormElement>),
    Released,
    NoLock,
    NoExecution,
}

fn find_lock(sim: &Sim, user_id: &str, fid: &str, lid: &str) -> LockLookup {
    let execs = lock(&sim.execs);
    // The run's actor exists only while the run is not final (and was not killed).
    let Some(exec) = execs
        .get(fid)
        .filter(|e| e.user_id == user_id && !e.archived && !e.is_final())
    else {
        return LockLookup::NoExecution;
    };
    match exec.locks.iter().find(|l| l.lid == lid) {
        // The actor dropped the lock once it took the result.
        Some(l) if l.leased => LockLookup::NoLock,
        Some(l) if l.result.is_some() => LockLookup::Released,
        Some(l) => LockLookup::Found(l.elements.clone()),
        None => LockLookup::NoLock,
    }
}

fn lock_error(lookup: &LockLookup, path: &str, fid: &str, lid: &str) -> Response {
    match lookup {
        LockLookup::NoExecution => not_found(path, &format!("Execution {fid} not found.")),
        LockLookup::NoLock => not_found(path, &format!("Lock {lid} for {fid} not found.")),
        _ => error(
            404,
            "HTTPException",
            path,
            &format!("404: {{\"detail\":\"Lock {lid} for {fid} released.\"}}"),
        ),
    }
}

async fn lock_get(
    State(sim): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Path((fid, lid)): Path<(String, String)>,
) -> Response {
    let user_id = match sim.authenticate(&headers, uri.path()) {
        Ok(u) => u.id.clone(),
        Err(r) => return *r,
    };
    match find_lock(&sim, &user_id, &fid, &lid) {
        LockLookup::Found(elements) => json_body(json!(elements)),
        other => lock_error(&other, uri.path(), &fid, &lid),
    }
}

async fn lock_post(
    State(sim): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Path((fid, lid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let user_id = match sim.authenticate(&headers, uri.path()) {
        Ok(u) => u.id.clone(),
        Err(r) => return *r,
    };
    let elements = match find_lock(&sim, &user_id, &fid, &lid) {
        LockLookup::Found(elements) => elements,
        other => return lock_error(&other, uri.path(), &fid, &lid),
    };
    let Ok(Value::Object(sent)) = serde_json::from_slice::<Value>(&body) else {
        return error(
            500,
            "HTTPException",
            uri.path(),
            "500: the lock input must be a JSON object",
        );
    };
    // Kodosumi starts from everything posted, then parses the declared elements.
    let mut result = sent.clone();
    result.extend(process_inputs(&elements, &sent));
    let released = {
        let mut execs = lock(&sim.execs);
        execs.get_mut(&fid).and_then(|e| {
            let l = e.locks.iter_mut().find(|l| l.lid == lid)?;
            l.result = Some(Value::Object(result.clone()));
            // The lease is stored once the run took the result (`lease_delay`).
            Some(e.lock_released.clone())
        })
    };
    if let Some(n) = released {
        n.notify_one();
    }
    sim.count("lock_releases");
    json_body(json!({ "result": result, "elements": elements }))
}

// ---------------------------------------------------------------------------------------------
// Timeline, health

fn naive_iso(t: f64) -> Option<String> {
    let secs = t.floor() as i64;
    let nanos = ((t - t.floor()) * 1e9) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|d| d.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string())
}

async fn timeline(
    State(sim): State<Shared>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user_id = match sim.authenticate(&headers, uri.path()) {
        Ok(u) => u.id.clone(),
        Err(r) => return *r,
    };
    sim.count("timeline_calls");
    let pp = match q.get("pp").map(|p| p.parse::<usize>()) {
        None => 10,
        Some(Ok(pp)) => pp,
        Some(Err(_)) => return validation_error("GET", uri.path(), "pp must be an integer"),
    };
    let query = q
        .get("q")
        .filter(|s| !s.is_empty())
        .map(|s| s.to_lowercase());
    let offset = q.get("offset").filter(|s| !s.is_empty());
    let now = Instant::now();
    let execs = lock(&sim.execs);
    let mut items = Vec::new();
    // Newest first: fids sort by time (ObjectIds).
    for exec in execs.values().rev() {
        if items.len() >= pp {
            break;
        }
        if exec.user_id != user_id || exec.archived || now < exec.visible_at {
            continue;
        }
        if offset.is_some_and(|o| exec.fid.as_str() >= o.as_str()) {
            continue;
        }
        let flow = &sim.flows[exec.flow];
        let startup = exec.events.first().map(|e| e.0);
        let finish = exec.events.last().map(|e| e.0);
        let status = exec.raw_status();
        let inputs: Value =
            serde_json::from_str(exec.last("inputs").unwrap_or("null")).unwrap_or(Value::Null);
        if let Some(query) = &query {
            let mut search = Vec::new();
            for (k, v) in [
                ("author", flow.author.clone()),
                ("organization", flow.organization.clone()),
                ("summary", Some(flow.summary.clone())),
                ("description", Some(flow.description.clone())),
                ("fid", Some(exec.fid.clone())),
                ("status", Some(status.to_owned())),
            ] {
                if let Some(v) = v.filter(|v| !v.is_empty()) {
                    search.push(format!("{k}:{v}"));
                }
            }
            search.extend(flow.tags.iter().map(|t| format!("tag:{t}")));
            if let Some(s) = startup.and_then(naive_iso) {
                search.push(format!("startup:{s}"));
            }
            search.push(format!("inputs:{inputs}"));
            if let Some(f) = exec.last("final") {
                search.push(format!("final:{f}"));
            }
            if !search.join(" ").to_lowercase().contains(query.as_str()) {
                continue;
            }
        }
        let locks = if status == "running" {
            exec.open_locks()
        } else {
            Vec::new()
        };
        items.push(json!({
            "fid": exec.fid,
            "tags": flow.tags,
            "summary": flow.summary,
            "inputs": inputs,
            "status": status,
            "startup": startup.and_then(naive_iso),
            "finish": finish.and_then(naive_iso),
            "runtime": startup.zip(finish).map(|(s, f)| f - s),
            "locks": locks,
        }));
    }
    let next = items
        .last()
        .map(|i| i["fid"].clone())
        .unwrap_or(Value::Null);
    json_body(json!({ "items": items, "query": q.get("q"), "offset": next }))
}

async fn health(State(sim): State<Shared>, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(r) = sim.authenticate(&headers, uri.path()) {
        return *r;
    }
    let (active, total) = {
        let execs = lock(&sim.execs);
        let active = execs
            .values()
            .filter(|e| !e.is_final() && !e.archived)
            .count();
        (active, execs.len())
    };
    json_body(json!({
        "kodosumi_version": "1.1.0",
        "python_version": "3.12.3",
        "ray_version": "2.49.1",
        "ray_status": [{"NodeID": "simulator", "Alive": true}],
        "spooler_status": {"pid": std::process::id(), "active": active, "total": total},
    }))
}

// ---------------------------------------------------------------------------------------------
// Test control

/// One run as `GET /_sim/launches` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimLaunch {
    pub fid: String,
    pub flow_uid: String,
    pub flow_summary: String,
    /// The login name.
    pub user: String,
    /// The JSON body as posted.
    pub inputs_received: Value,
    /// What the flow got (declared fields only, parsed).
    pub inputs_passed: Map<String, Value>,
    pub launched_at: f64,
    /// The last status event (`starting`, `running`, `finished`, `error`).
    pub status: String,
    pub killed: bool,
}

async fn sim_launches(State(sim): State<Shared>) -> Response {
    let execs = lock(&sim.execs);
    let mut launches: Vec<SimLaunch> = execs
        .values()
        .map(|e| SimLaunch {
            fid: e.fid.clone(),
            flow_uid: sim.flows[e.flow].endpoint().uid,
            flow_summary: sim.flows[e.flow].summary.clone(),
            user: e.user_name.clone(),
            inputs_received: e.inputs_received.clone(),
            inputs_passed: e.inputs_passed.clone(),
            launched_at: e.created_at,
            status: e.raw_status().to_owned(),
            killed: e.killed,
        })
        .collect();
    launches.sort_by(|a, b| (fid_timestamp(&a.fid), &a.fid).cmp(&(fid_timestamp(&b.fid), &b.fid)));
    json_body(json!(launches))
}

async fn sim_counters(State(sim): State<Shared>) -> Response {
    json_body(json!(*lock(&sim.counters)))
}

async fn sim_faults_get(State(sim): State<Shared>) -> Response {
    json_body(json!(*lock(&sim.faults)))
}

async fn sim_faults_set(State(sim): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            *lock(&sim.faults) = f.clone();
            json_body(json!(f))
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn sim_expire_tokens(State(sim): State<Shared>) -> Response {
    *lock(&sim.revoked_before) = unix_now();
    sim.count("tokens_expired");
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_uids_are_md5_of_the_url_as_recorded() {
        let hello = SimFlow::hello().endpoint();
        assert_eq!(hello.uid, "05e53715de395a7057388c7fe9d82c7e");
        assert_eq!(hello.source, "http://127.0.0.1:8011/openapi.json");
        assert_eq!(hello.base_url, "http://127.0.0.1:8011/");
        let confirm = SimFlow::confirm().endpoint();
        assert_eq!(confirm.uid, "0a2afe5ddc7dfb6e3c93f77d6d9caf71");
        assert_eq!(confirm.base_url, "http://127.0.0.1:8011/confirm");
        let serve = SimFlow {
            route: "/-/127.0.0.1/8001/hello/-/confirm".into(),
            ..SimFlow::confirm()
        }
        .endpoint();
        assert_eq!(serve.uid, "db2126b276f5a5129f8ebe00d7387bf1");
        assert_eq!(serve.source, "http://127.0.0.1:8001/hello/openapi.json");
        assert_eq!(serve.base_url, "http://127.0.0.1:8001/hello/confirm");
    }

    #[test]
    fn only_on_checks_a_box_and_undeclared_keys_are_dropped() {
        let els = SimFlow::hello().elements;
        let sent = json!({"name": "A", "fail": true, "extra": 1});
        let p = process_inputs(&els, sent.as_object().expect("object"));
        assert_eq!(
            Value::Object(p),
            json!({"name": "A", "seconds": null, "fail": false, "style": null})
        );
        let sent = json!({"name": "A", "fail": "on"});
        let p = process_inputs(&els, sent.as_object().expect("object"));
        assert_eq!(p["fail"], json!(true));
    }

    #[test]
    fn forms_parse_urlencoded() {
        let f = parse_form(b"name=ad%20min&password=a+b&x");
        assert_eq!(f["name"], "ad min");
        assert_eq!(f["password"], "a b");
        assert_eq!(f["x"], "");
    }

    #[test]
    fn templates_render_inputs() {
        let vars = json!({"name": "Ann", "n": 2, "z": null});
        let vars = vars.as_object().expect("object");
        assert_eq!(render("Hi {name} x{n}{z}", vars), "Hi Ann x2");
    }
}
