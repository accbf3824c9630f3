//! HTTP tests of access, metrics and health against a real PostgreSQL (one fresh database per
//! test): bearer tokens and the session cookie, the MIP-003 rate limit, body limits, CORS,
//! `/metrics` in the Prometheus text format, and `/health/live|ready`.
//!
//! Run with `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test -p api --test access`.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use api::access::AccessConfig;
use common::{TestApp, WAIT};
use engine::{Engine, PgStore, Store, WorkerId};
use reqwest::StatusCode;
use reqwest::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, AUTHORIZATION, CONTENT_TYPE, COOKIE, RETRY_AFTER, SET_COOKIE,
    WWW_AUTHENTICATE,
};
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

const WORKFLOWS: &str = "/api/v1/workflows";

async fn anonymous_get(app: &TestApp, path: &str) -> common::Reply {
    let resp = app
        .anonymous
        .get(app.url(path))
        .send()
        .await
        .expect("GET is sent");
    TestApp::read(resp).await
}

async fn get_with(app: &TestApp, path: &str, header: (&str, String)) -> common::Reply {
    let resp = app
        .anonymous
        .get(app.url(path))
        .header(header.0, header.1)
        .send()
        .await
        .expect("GET is sent");
    TestApp::read(resp).await
}

#[track_caller]
fn expect_unauthorized(reply: common::Reply) {
    assert_eq!(reply.header(WWW_AUTHENTICATE.as_str()), Some("Bearer"));
    reply.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn admin_calls_need_a_valid_token(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;

    // No token: 401 everywhere under /api/v1, even on unknown paths; nothing written.
    expect_unauthorized(anonymous_get(&app, WORKFLOWS).await);
    expect_unauthorized(anonymous_get(&app, "/api/v1/workers").await);
    expect_unauthorized(anonymous_get(&app, "/api/v1/no-such-thing").await);
    let resp = app
        .anonymous
        .post(app.url(WORKFLOWS))
        .json(&json!({"type": "demo.chain", "input": {"steps": 1}}))
        .send()
        .await
        .expect("POST is sent");
    expect_unauthorized(TestApp::read(resp).await);
    assert_eq!(app.written().await, before);

    // Unknown tokens and other schemes.
    expect_unauthorized(
        get_with(&app, WORKFLOWS, ("authorization", "Bearer kdm_nope".into())).await,
    );
    expect_unauthorized(
        get_with(
            &app,
            WORKFLOWS,
            ("authorization", format!("Basic {}", app.token)),
        )
        .await,
    );
    expect_unauthorized(
        get_with(
            &app,
            WORKFLOWS,
            ("cookie", "kodomasu_session=kdm_nope".into()),
        )
        .await,
    );

    // A valid token in the header or in the session cookie.
    get_with(
        &app,
        WORKFLOWS,
        ("authorization", format!("Bearer {}", app.token)),
    )
    .await
    .expect(StatusCode::OK);
    get_with(
        &app,
        WORKFLOWS,
        (
            COOKIE.as_str(),
            format!("theme=dark; kodomasu_session={}", app.token),
        ),
    )
    .await
    .expect(StatusCode::OK);
    app.get(WORKFLOWS).await.expect(StatusCode::OK);

    // Public endpoints need none.
    for path in ["/health", "/health/live", "/health/ready", "/metrics"] {
        let resp = app
            .anonymous
            .get(app.url(path))
            .send()
            .await
            .expect("GET is sent");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    // MIP-003 answers without a token (503 here: no paid jobs configured, but not 401).
    assert_eq!(
        anonymous_get(&app, "/availability").await.status,
        StatusCode::OK
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_revoked_token_stops_working(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let store = app.store.clone();
    let (ops, record) = api::access::create_token(store.as_ref(), "ops")
        .await
        .expect("create a token");
    let bearer = || ("authorization", format!("Bearer {ops}"));
    get_with(&app, WORKFLOWS, bearer())
        .await
        .expect(StatusCode::OK);

    let revoked = store
        .revoke_access_token("ops")
        .await
        .expect("revoke")
        .expect("found");
    assert_eq!(revoked.id, record.id);
    // Lookups are cached for a few seconds; the revocation must win within that time.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply = get_with(&app, WORKFLOWS, bearer()).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            expect_unauthorized(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "revoked token still accepted after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A token revoked before its first use is refused at once; other tokens still work.
    let (late, _) = api::access::create_token(store.as_ref(), "late")
        .await
        .expect("create a token");
    store
        .revoke_access_token("late")
        .await
        .expect("revoke")
        .expect("found");
    expect_unauthorized(
        get_with(&app, WORKFLOWS, ("authorization", format!("Bearer {late}"))).await,
    );
    app.get(WORKFLOWS).await.expect(StatusCode::OK);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_session_cookie_is_set_by_login_and_cleared_by_logout(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let login = |body: serde_json::Value| {
        let req = app.anonymous.post(app.url("/api/v1/session")).json(&body);
        async move { req.send().await.expect("POST is sent") }
    };

    let resp = login(json!({"token": app.token})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let cookie = resp
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("Set-Cookie")
        .to_owned();
    assert_eq!(
        cookie,
        format!(
            "kodomasu_session={}; HttpOnly; SameSite=Strict; Path=/",
            app.token
        )
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    get_with(&app, WORKFLOWS, (COOKIE.as_str(), pair))
        .await
        .expect(StatusCode::OK);

    let refused = TestApp::read(login(json!({"token": "kdm_wrong"})).await).await;
    assert!(refused.header(SET_COOKIE.as_str()).is_none());
    expect_unauthorized(refused);
    TestApp::read(login(json!({"token": "a b; c"})).await)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    TestApp::read(login(json!({"tok": 1})).await)
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    let resp = app
        .anonymous
        .post(app.url("/api/v1/session"))
        .header(CONTENT_TYPE, "application/json")
        .body("{")
        .send()
        .await
        .expect("POST is sent");
    TestApp::read(resp)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_json");

    let resp = app
        .anonymous
        .delete(app.url("/api/v1/session"))
        .send()
        .await
        .expect("DELETE is sent");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let cleared = resp
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("Set-Cookie");
    assert!(
        cleared.starts_with("kodomasu_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Rate limit, body limit, CORS
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn the_61st_mip003_request_within_a_minute_is_429_with_retry_after(pool: PgPool) {
    let app = TestApp::spawn_with(pool, AccessConfig::default()).await;
    for i in 1..=60 {
        let reply = anonymous_get(&app, "/availability").await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.body);
    }
    let refused = anonymous_get(&app, "/availability").await;
    let retry_after: u64 = refused
        .header(RETRY_AFTER.as_str())
        .expect("Retry-After")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    refused.expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Per-flow MIP-003 routes share the client's budget.
    let reply = anonymous_get(&app, "/some-flow/availability").await;
    reply.expect_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // The admin API, health and metrics are not rate limited.
    for _ in 0..3 {
        app.get(WORKFLOWS).await.expect(StatusCode::OK);
        anonymous_get(&app, "/health").await.expect(StatusCode::OK);
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn forwarded_for_is_the_client_only_when_trusted(pool: PgPool) {
    let from = |app: &TestApp, ip: &str| {
        let req = app
            .anonymous
            .get(app.url("/availability"))
            .header("x-forwarded-for", format!("203.0.113.9, {ip}"));
        async move { req.send().await.expect("GET is sent").status() }
    };
    let limited = |trust| AccessConfig {
        rate_limit_per_minute: 2,
        trust_forwarded_for: trust,
        ..AccessConfig::default()
    };

    let app = TestApp::spawn_with(pool.clone(), limited(true)).await;
    assert_eq!(from(&app, "198.51.100.1").await, StatusCode::OK);
    assert_eq!(from(&app, "198.51.100.1").await, StatusCode::OK);
    assert_eq!(
        from(&app, "198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(from(&app, "198.51.100.2").await, StatusCode::OK);
    app.stop().await;

    // Untrusted: the header is ignored, every request counts for the peer address.
    let app = TestApp::spawn_with(pool, limited(false)).await;
    assert_eq!(from(&app, "198.51.100.1").await, StatusCode::OK);
    assert_eq!(from(&app, "198.51.100.2").await, StatusCode::OK);
    assert_eq!(
        from(&app, "198.51.100.3").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn oversized_bodies_are_413_in_the_error_shape(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    let big = json!({"identifier_from_purchaser": "aabbaabb11221122", "input_data": {"x": "y".repeat(api::MAX_BODY_BYTES)}})
        .to_string();
    // MIP-003 reads raw bytes; the admin API and the login read JSON.
    for path in [
        "/some-flow/start_job",
        "/some-flow/provide_input",
        "/api/v1/session",
        WORKFLOWS,
    ] {
        let resp = app
            .client
            .post(app.url(path))
            .header(CONTENT_TYPE, "application/json")
            .body(big.clone())
            .send()
            .await
            .expect("POST is sent");
        let reply = TestApp::read(resp).await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{path}: {}",
            reply.body
        );
        reply.expect_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    }
    assert_eq!(app.written().await, before);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn cors_answers_only_the_configured_origins(pool: PgPool) {
    // Off by default: no CORS headers.
    let app = TestApp::spawn(pool.clone()).await;
    let resp = app
        .client
        .get(app.url(WORKFLOWS))
        .header("origin", "https://ops.example")
        .send()
        .await
        .expect("GET is sent");
    assert!(resp.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    app.stop().await;

    let app = TestApp::spawn_with(
        pool,
        AccessConfig {
            rate_limit_per_minute: 0,
            cors_origins: vec!["https://ops.example".into()],
            ..AccessConfig::default()
        },
    )
    .await;
    // A preflight is answered without a token.
    let resp = app
        .anonymous
        .request(reqwest::Method::OPTIONS, app.url(WORKFLOWS))
        .header("origin", "https://ops.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .expect("OPTIONS is sent");
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(
        resp.headers()
            .get(ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok()),
        Some("https://ops.example")
    );
    let allowed_headers = resp
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    let resp = app
        .client
        .get(app.url(WORKFLOWS))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("GET is sent");
    assert!(resp.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Metrics and health
// ---------------------------------------------------------------------------------------------

async fn scrape(app: &TestApp) -> prometheus::Exposition {
    let resp = app
        .anonymous
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics is sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.expect("metrics text");
    prometheus::parse(&text).unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{text}"))
}

#[sqlx::test(migrations = false)]
async fn metrics_parse_as_prometheus_text_and_move_when_workflows_run(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    // A workflow whose lease a vanished worker held: the real worker recovers it.
    let recovered = app
        .start_workflow(
            &json!({"type": "demo.chain", "input": {"steps": 1, "sleep_ms": 0, "fail_prob": 0}}),
        )
        .await;
    let ghost = app
        .store
        .claim(
            WorkerId::new(),
            &["demo.chain".to_owned()],
            1,
            Duration::from_millis(100),
        )
        .await
        .expect("claim");
    assert_eq!(ghost.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Counters are process-wide (tests run in parallel in this process): compare deltas.
    let before = scrape(&app).await;
    app.start_worker();
    let chain = json!({"type": "demo.chain", "input": {"steps": 2, "sleep_ms": 0, "fail_prob": 0}});
    let ids = [
        app.start_workflow(&chain).await,
        app.start_workflow(&chain).await,
    ];
    for id in ids.iter().chain([&recovered]) {
        app.wait_for_status(id, "completed").await;
    }
    let after = scrape(&app).await;

    let delta =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);
    let demo = [("workflow_type", "demo.chain")];
    assert!(delta("kodomasu_workflows_started_total", &demo) >= 2.0);
    assert!(
        delta(
            "kodomasu_workflows_finished_total",
            &[("workflow_type", "demo.chain"), ("status", "completed")]
        ) >= 3.0
    );
    assert!(delta("kodomasu_transitions_total", &demo) >= 7.0);
    let step_ok = [("activity", "demo.step"), ("outcome", "completed")];
    assert!(delta("kodomasu_activity_attempts_total", &step_ok) >= 5.0);
    assert!(delta("kodomasu_activity_duration_seconds_count", &step_ok) >= 5.0);
    assert!(
        after.sum(
            "kodomasu_activity_duration_seconds_bucket",
            &[("le", "+Inf")]
        ) >= 5.0
    );
    assert!(delta("kodomasu_lease_recoveries_total", &demo) >= 1.0);
    assert!(
        delta(
            "kodomasu_activity_attempts_total",
            &[("activity", "demo.step"), ("outcome", "abandoned")]
        ) >= 1.0
    );
    assert!(
        delta(
            "kodomasu_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/api/v1/workflows"),
                ("status", "201")
            ]
        ) >= 2.0
    );
    assert!(
        after.sum(
            "kodomasu_http_requests_total",
            &[("route", "/api/v1/workflows/{id}"), ("status", "200")]
        ) >= 3.0
    );
    for gauge in [
        "kodomasu_backlog_workflows",
        "kodomasu_backlog_oldest_age_seconds",
        "kodomasu_workers_live",
        "kodomasu_database_up",
    ] {
        assert!(after.has(gauge), "{gauge} missing");
        assert_eq!(after.types.get(gauge).map(String::as_str), Some("gauge"));
    }
    assert_eq!(
        after
            .types
            .get("kodomasu_activity_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert!(after.sum("kodomasu_workers_live", &[]) >= 1.0);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn ready_is_503_until_every_migration_is_applied(pool: PgPool) {
    // A fresh database nobody migrated.
    let store: Arc<dyn Store> = Arc::new(PgStore::new(pool));
    let engine = Arc::new(Engine::new(store.clone(), workflows::registry(None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(api::serve(
        listener,
        api::AppState::new(engine, None, AccessConfig::default()),
        shutdown.clone(),
    ));
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}"));
        async move { TestApp::read(req.send().await.expect("GET is sent")).await }
    };

    get("/health/live").await.expect(StatusCode::OK);
    let not_ready = get("/health/ready")
        .await
        .expect(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready["database"], "ok");
    assert_eq!(not_ready["migrations"], "pending");
    assert!(
        not_ready["pending_migrations"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{not_ready}"
    );

    store.migrate().await.expect("migrations apply");
    let ready = get("/health/ready").await.expect(StatusCode::OK);
    assert_eq!(ready["migrations"], "applied");
    get("/health").await.expect(StatusCode::OK);
    // Admin calls are refused without a token even before any token exists.
    let resp = http
        .get(format!("{base}{WORKFLOWS}"))
        .header(AUTHORIZATION, "Bearer kdm_x")
        .send()
        .await
        .expect("GET is sent");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    shutdown.cancel();
    server
        .await
        .expect("server task joins")
        .expect("server ends without error");
}
