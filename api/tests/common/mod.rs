//! Harness of the HTTP tests: the real router served on an ephemeral port over a real
//! PostgreSQL database (one fresh database per test, from `#[sqlx::test]`), with an optional
//! in-process worker.

#![allow(dead_code)]

use engine::{Engine, PgStore, Store, Worker, WorkerConfig, WorkerHandle, WorkerId};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long a test waits for a workflow to reach a status. Generous on purpose: the tests
/// check outcomes, never speed.
pub const WAIT: Duration = Duration::from_secs(20);

/// The API served on `address`, over `pool`. The server stops when the app is dropped or at
/// [`TestApp::stop`].
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub pool: PgPool,
    /// Sends the admin token ([`TestApp::token`]) with every request.
    pub client: reqwest::Client,
    /// Sends no token.
    pub anonymous: reqwest::Client,
    /// A valid admin token (name `test`).
    pub token: String,
    pub store: Arc<dyn Store>,
    /// Paid jobs' services, when the app was spawned with them ([`TestApp::spawn_with`]).
    pub paid: Option<Arc<api::PaidJobs>>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    worker: Option<WorkerHandle>,
    _stop_on_drop: DropGuard,
}

/// An HTTP client that sends `Authorization: Bearer <token>` with every request.
pub fn authorized_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .expect("a token is a valid header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// A response read whole: status and JSON body (`Value::Null` when the body is empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status.
    #[track_caller]
    pub fn expect(self, status: StatusCode) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        self.body
    }

    /// Asserts an error answer: the status, a JSON content type, and a body that is exactly
    /// `{code, message}` with the given code and a non-empty message.
    #[track_caller]
    pub fn expect_error(self, status: StatusCode, code: &str) -> String {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        let content_type = self.header(reqwest::header::CONTENT_TYPE.as_str());
        assert!(
            content_type.is_some_and(|c| c.starts_with("application/json")),
            "error content type is {content_type:?}, body {}",
            self.body
        );
        let obj = self
            .body
            .as_object()
            .unwrap_or_else(|| panic!("error body is not an object: {}", self.body));
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["code", "message"], "error body: {}", self.body);
        assert_eq!(obj["code"], code, "error body: {}", self.body);
        let message = obj["message"]
            .as_str()
            .unwrap_or_else(|| panic!("message is not a string: {}", self.body));
        assert!(!message.is_empty(), "empty error message");
        message.to_owned()
    }
}

impl TestApp {
    /// Migrates the test database and serves the API on 127.0.0.1:0, without a rate limit.
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_full(pool, Self::unlimited(), None).await
    }

    /// Access settings of [`TestApp::spawn`]: the defaults without a rate limit.
    fn unlimited() -> api::access::AccessConfig {
        api::access::AccessConfig {
            rate_limit_per_minute: 0,
            ..api::access::AccessConfig::default()
        }
    }

    /// [`TestApp::spawn`] with the given access settings.
    pub async fn spawn_with(pool: PgPool, access: api::access::AccessConfig) -> Self {
        Self::spawn_full(pool, access, None).await
    }

    /// [`TestApp::spawn`] with paid jobs' services (their workflows and activities registered).
    pub async fn spawn_paid(pool: PgPool, paid: Arc<api::PaidJobs>) -> Self {
        Self::spawn_full(pool, Self::unlimited(), Some(paid)).await
    }

    async fn spawn_full(
        pool: PgPool,
        access: api::access::AccessConfig,
        paid: Option<Arc<api::PaidJobs>>,
    ) -> Self {
        let store: Arc<dyn Store> = Arc::new(PgStore::new(pool.clone()));
        store.migrate().await.expect("migrations apply");
        // `ensure_token`: a second app on the same database replaces the first one's token.
        let token = api::access::generate_token().expect("a random token");
        api::access::ensure_token(store.as_ref(), "test", &token)
            .await
            .expect("store the test token");
        let registry = workflows::registry(paid.as_ref().map(|p| &p.services));
        let engine = Arc::new(Engine::new(store.clone(), registry));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let address = format!("http://{}", listener.local_addr().expect("local addr"));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(api::serve(
            listener,
            api::AppState::new(engine, paid.clone(), access),
            shutdown.clone(),
        ));
        let client = authorized_client(&token);
        let anonymous = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self {
            address,
            pool,
            client,
            anonymous,
            token,
            store,
            paid,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            server,
            worker: None,
        }
    }

    /// Starts an in-process worker with short leases and polls.
    pub fn start_worker(&mut self) -> WorkerId {
        assert!(self.worker.is_none(), "a worker is already running");
        let worker = Worker::new(
            self.store.clone(),
            workflows::registry(self.paid.as_ref().map(|p| &p.services)),
            WorkerConfig {
                lease_ttl: Duration::from_secs(2),
                heartbeat_interval: Duration::from_millis(500),
                poll_interval: Duration::from_millis(200),
                drain_timeout: Duration::from_secs(5),
                ..WorkerConfig::default()
            },
        )
        .spawn();
        let id = worker.id();
        self.worker = Some(worker);
        id
    }

    /// Shuts the worker down gracefully, if one runs.
    pub async fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            tokio::time::timeout(Duration::from_secs(30), worker.shutdown())
                .await
                .expect("worker shuts down in time")
                .expect("worker shuts down cleanly");
        }
    }

    /// Stops the worker, then the server, and checks both ended cleanly.
    pub async fn stop(mut self) {
        self.stop_worker().await;
        let Self {
            shutdown,
            server,
            client,
            anonymous,
            ..
        } = self;
        drop(client);
        drop(anonymous);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops in time")
            .expect("server task joins")
            .expect("server ends without error");
    }

    /// `{address}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Reads a response whole.
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("read response body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "response ({status}) is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("GET is sent");
        Self::read(resp).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let resp = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST is sent");
        Self::read(resp).await
    }

    /// `method path` without a body.
    pub async fn send(&self, method: reqwest::Method, path: &str) -> Reply {
        let resp = self
            .client
            .request(method, self.url(path))
            .send()
            .await
            .expect("request is sent");
        Self::read(resp).await
    }

    /// `POST path` with a raw body and an optional content type.
    pub async fn post_raw(&self, path: &str, body: String, content_type: Option<&str>) -> Reply {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        Self::read(req.send().await.expect("POST is sent")).await
    }

    /// Starts a workflow through the API, expecting 201; returns its id.
    pub async fn start_workflow(&self, body: &Value) -> String {
        let created = self
            .post_json("/api/v1/workflows", body)
            .await
            .expect(StatusCode::CREATED);
        assert_eq!(created["created"], true, "{created}");
        created["id"].as_str().expect("id is a string").to_owned()
    }

    /// Rows in a `kodomasu` table.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from kodomasu.{table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }

    /// Rows of the tables a refused request must not touch: (workflows, events, signals).
    pub async fn written(&self) -> (i64, i64, i64) {
        (
            self.count("workflows").await,
            self.count("events").await,
            self.count("signals").await,
        )
    }

    /// Polls `GET /api/v1/workflows/{id}` until `done` holds for the body, for at most [`WAIT`].
    pub async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = self
                .get(&format!("/api/v1/workflows/{id}"))
                .await
                .expect(StatusCode::OK);
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "workflow {id} not {what} after {WAIT:?}; last snapshot: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the workflow's status is `status`; fails early on another terminal status.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let body = self
            .wait_for(id, status, |b| {
                let current = b["status"].as_str().unwrap_or_default();
                current == status || ["completed", "failed", "cancelled"].contains(&current)
            })
            .await;
        assert_eq!(
            body["status"], status,
            "workflow {id} ended otherwise: {body}"
        );
        body
    }
}
