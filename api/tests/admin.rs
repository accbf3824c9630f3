//! HTTP tests of the operators' surface against a real PostgreSQL (one fresh database per test):
//! list filters, pages and counts; timeline; bulk operations; flows and the payment view of a
//! paid job (with the in-process Masumi and Kodosumi simulators); live events over SSE; the
//! OpenAPI document and the offline docs page; and bad input answering 4xx without writing.
//!
//! Run with `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test -p api --test admin`.

mod common;

use common::{Reply, TestApp, WAIT};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const WORKFLOWS: &str = "/api/v1/workflows";

/// Every admin API request of these tests is built here: the one place to add credentials.
fn admin(app: &TestApp, method: Method, path: &str) -> reqwest::RequestBuilder {
    app.client.request(method, app.url(path))
}

async fn admin_get(app: &TestApp, path: &str) -> Reply {
    let resp = admin(app, Method::GET, path)
        .send()
        .await
        .expect("GET is sent");
    TestApp::read(resp).await
}

async fn admin_post(app: &TestApp, path: &str, body: &Value) -> Reply {
    let resp = admin(app, Method::POST, path)
        .json(body)
        .send()
        .await
        .expect("POST is sent");
    TestApp::read(resp).await
}

async fn admin_post_raw(app: &TestApp, path: &str, body: &str) -> Reply {
    let resp = admin(app, Method::POST, path)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST is sent");
    TestApp::read(resp).await
}

/// Starts a workflow, expecting 201; returns its id.
async fn start(app: &TestApp, body: Value) -> String {
    let created = admin_post(app, WORKFLOWS, &body)
        .await
        .expect(StatusCode::CREATED);
    created["id"].as_str().expect("id").to_owned()
}

fn chain(steps: u32, key: Option<&str>) -> Value {
    json!({"type": "demo.chain", "key": key, "input": {"steps": steps, "sleep_ms": 0, "fail_prob": 0}})
}

async fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    wait_until(app, id, status, |w| {
        let s = w["status"].as_str().unwrap_or_default();
        s == status || ["completed", "failed", "cancelled"].contains(&s)
    })
    .await
}

async fn wait_until(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let w = admin_get(app, &format!("{WORKFLOWS}/{id}"))
            .await
            .expect(StatusCode::OK);
        if done(&w) {
            return w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workflow {id} not {what}: {w}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .map(|w| w["id"].as_str().expect("id").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Lists, counts, timeline
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn lists_filter_by_time_and_search_page_and_count(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    app.start_worker();
    let done_a = start(&app, chain(1, Some("invoice-Alpha-1"))).await;
    let done_b = start(&app, chain(1, Some("invoice-beta-2"))).await;
    wait_status(&app, &done_a, "completed").await;
    wait_status(&app, &done_b, "completed").await;
    app.stop_worker().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let boundary = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let run_a = start(&app, chain(3, Some("invoice-alpha-3"))).await;
    let run_b = start(&app, chain(3, Some("refund-4"))).await;
    let run_c = start(&app, chain(3, None)).await;

    // Key search, ASCII case-insensitive, combined with status.
    let page = admin_get(&app, &format!("{WORKFLOWS}?q=ALPHA"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&page), [run_a.clone(), done_a.clone()]);
    let page = admin_get(&app, &format!("{WORKFLOWS}?q=alpha&status=completed"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&page), vec![done_a.clone()]);
    // Id prefix.
    let page = admin_get(&app, &format!("{WORKFLOWS}?q={}", &run_b[..23]))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&page), vec![run_b.clone()]);
    // Creation range: [created_after, created_before).
    let t = boundary.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let t_query = t.replace('+', "%2B");
    let page = admin_get(&app, &format!("{WORKFLOWS}?created_after={t_query}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&page), [run_c.clone(), run_b.clone(), run_a.clone()]);
    let page = admin_get(&app, &format!("{WORKFLOWS}?created_before={t_query}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&page), [done_b.clone(), done_a.clone()]);
    // `flow` matches paid jobs' flow uid: none here.
    let page = admin_get(&app, &format!("{WORKFLOWS}?flow=some-flow"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(page["workflows"], json!([]));

    // Pages of 2 under a filter: every match once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let mut path = format!("{WORKFLOWS}?q=invoice&limit=2");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = admin_get(&app, &path).await.expect(StatusCode::OK);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [run_a.clone(), done_b.clone(), done_a.clone()],
        "pages cover the matches once, newest first"
    );

    // Counts per status, with the same filters.
    let counts = admin_get(&app, &format!("{WORKFLOWS}/counts"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        counts,
        json!({"counts": {"running": 3, "paused": 0, "completed": 2, "failed": 0, "cancelled": 0}, "total": 5})
    );
    let counts = admin_get(
        &app,
        &format!("{WORKFLOWS}/counts?q=invoice&type=demo.chain&created_before={t_query}"),
    )
    .await
    .expect(StatusCode::OK);
    assert_eq!(counts["counts"]["completed"], 2);
    assert_eq!(counts["total"], 2);
    let counts = admin_get(&app, &format!("{WORKFLOWS}/counts?type=no.such"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(counts["total"], 0);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn bad_filters_answer_400_and_write_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    start(&app, chain(1, None)).await;
    let before = app.written().await;
    for query in [
        "status=bogus",
        "created_after=yesterday",
        "created_before=2026-13-01T00:00:00Z",
        "created_after=2026-11-23T10:00:00Z&created_before=2026-11-23T09:00:00Z",
        "q=",
        "flow=",
        "unknown=1",
        "limit=0",
    ] {
        admin_get(&app, &format!("{WORKFLOWS}?{query}"))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    }
    let long = "x".repeat(257);
    admin_get(&app, &format!("{WORKFLOWS}?q={long}"))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    admin_get(&app, &format!("{WORKFLOWS}?q=a%00b"))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    admin_get(&app, &format!("{WORKFLOWS}?cursor=not-a-uuid"))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_id");
    for query in ["status=running", "created_after=soon", "limit=5"] {
        admin_get(&app, &format!("{WORKFLOWS}/counts?{query}"))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    }
    admin_get(&app, &format!("{WORKFLOWS}/not-a-uuid/timeline"))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_id");
    let unknown = uuid::Uuid::now_v7();
    admin_get(&app, &format!("{WORKFLOWS}/{unknown}/timeline"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.written().await, before);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_timeline_follows_the_state_machine(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    app.start_worker();
    let id = start(&app, chain(2, Some("timeline"))).await;
    wait_status(&app, &id, "completed").await;

    let history = admin_get(&app, &format!("{WORKFLOWS}/{id}/history"))
        .await
        .expect(StatusCode::OK);
    let body = admin_get(&app, &format!("{WORKFLOWS}/{id}/timeline"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(body["id"], id.as_str());
    let timeline = body["timeline"].as_array().expect("timeline");
    let events = history["events"].as_array().expect("events");
    assert_eq!(timeline.len(), events.len(), "one entry per event");
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "transitioned" && e["payload"]["state"]["state"] == "done"),
        "history events carry their payload: {events:?}"
    );
    for (entry, event) in timeline.iter().zip(events) {
        assert_eq!(entry["seq"], event["seq"]);
        assert_eq!(entry["kind"], event["kind"]);
        assert_eq!(entry["at"], event["created_at"]);
        assert!(
            entry["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{entry}"
        );
    }
    let first = &timeline[0];
    assert_eq!(first["kind"], "started");
    assert_eq!(first["status"], "running");
    assert!(
        first["summary"]
            .as_str()
            .is_some_and(|s| s.contains("timeline"))
    );
    let states: Vec<&str> = timeline
        .iter()
        .filter(|e| e["kind"] == "transitioned")
        .map(|e| e["state"].as_str().expect("state name"))
        .collect();
    assert_eq!(states, ["running", "running", "done"]);
    let last = timeline.last().expect("entries");
    assert_eq!(last["kind"], "completed");
    assert_eq!(last["status"], "completed");
    assert!(
        timeline.iter().any(|e| e["summary"]
            .as_str()
            .is_some_and(|s| s.contains("demo.step"))),
        "{timeline:?}"
    );
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn waiting_on_and_attempts_show_backoff_worker_error_and_duration(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    let worker = app.start_worker().to_string();
    // Nearly every attempt fails: the workflow backs off between attempts.
    let id = start(
        &app,
        json!({"type": "demo.chain", "input": {"steps": 3, "sleep_ms": 0, "fail_prob": 0.99}}),
    )
    .await;
    let snapshot = wait_until(&app, &id, "backing off", |w| {
        w["waiting_on"]["kind"] == "backing_off" || w["status"] != "running"
    })
    .await;
    let waiting = &snapshot["waiting_on"];
    assert_eq!(waiting["kind"], "backing_off", "{snapshot}");
    assert_eq!(waiting["name"], "demo.step");
    assert!(
        waiting["next_attempt"].as_i64().is_some_and(|n| n >= 2),
        "{waiting}"
    );
    assert!(waiting["until"].is_string(), "{waiting}");
    assert_eq!(waiting["last_error"]["retryable"], true, "{waiting}");

    let attempts = admin_get(&app, &format!("{WORKFLOWS}/{id}/attempts"))
        .await
        .expect(StatusCode::OK);
    let failed = attempts["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .find(|a| a["outcome"] == "failed")
        .cloned()
        .expect("a failed attempt");
    assert_eq!(failed["worker_id"], worker.as_str());
    assert!(failed["error"]["code"].is_string(), "{failed}");
    assert!(failed["error"]["message"].is_string(), "{failed}");
    assert!(
        failed["duration_ms"].as_i64().is_some_and(|d| d >= 0),
        "{failed}"
    );
    assert!(failed["started_at"].is_string() && failed["finished_at"].is_string());

    admin_post(
        &app,
        &format!("{WORKFLOWS}/{id}/signals"),
        &json!({"name": "cancel"}),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    wait_status(&app, &id, "cancelled").await;
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bulk operations
// ---------------------------------------------------------------------------------------------

async fn run_bulk(app: &TestApp, body: Value) -> Value {
    let accepted = admin_post(app, &format!("{WORKFLOWS}/bulk"), &body)
        .await
        .expect(StatusCode::ACCEPTED);
    let op = accepted["operation_id"]
        .as_str()
        .expect("operation_id")
        .to_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let progress = admin_get(app, &format!("/api/v1/operations/{op}"))
            .await
            .expect(StatusCode::OK);
        assert_eq!(progress["id"], op.as_str());
        assert!(
            ["running", "done"].contains(&progress["state"].as_str().unwrap_or_default()),
            "{progress}"
        );
        if progress["state"] == "done" {
            return progress;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "operation {op}: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tally(progress: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| progress[k].as_u64().unwrap_or(u64::MAX);
    (n("matched"), n("applied"), n("skipped"), n("failed"))
}

#[sqlx::test(migrations = false)]
async fn bulk_pause_resume_cancel_skip_finished_workflows_and_count(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    app.start_worker();
    let finished: Vec<String> = [
        start(&app, chain(1, None)).await,
        start(&app, chain(1, None)).await,
    ]
    .to_vec();
    for id in &finished {
        wait_status(&app, id, "completed").await;
    }
    app.stop_worker().await;
    // Unclaimed while no worker runs: they keep their status until one applies the signals.
    let mut running = HashSet::new();
    for _ in 0..3 {
        running.insert(start(&app, chain(3, None)).await);
    }

    let progress = run_bulk(
        &app,
        json!({"action": "pause", "filter": {"type": "demo.chain"}}),
    )
    .await;
    assert_eq!(tally(&progress), (5, 3, 2, 0), "{progress}");
    assert_eq!(progress["action"], "pause");
    assert_eq!(progress["interrupted"], false);
    assert!(progress["finished_at"].is_string());
    let signalled: Vec<(String, String)> =
        sqlx::query_as("select workflow_id::text, name from kodomasu.signals order by workflow_id")
            .fetch_all(&app.pool)
            .await
            .expect("signals");
    assert_eq!(signalled.len(), 3);
    assert!(
        signalled
            .iter()
            .all(|(id, name)| running.contains(id) && name == "pause")
    );

    app.start_worker();
    for id in &running {
        wait_status(&app, id, "paused").await;
    }
    // Resume only the paused ones: the finished are not even matched.
    let progress = run_bulk(
        &app,
        json!({"action": "resume", "filter": {"status": "paused"}}),
    )
    .await;
    assert_eq!(tally(&progress), (3, 3, 0, 0), "{progress}");
    for id in &running {
        wait_status(&app, id, "completed").await;
    }
    // Everything has finished: cancel matches all and applies to none.
    let progress = run_bulk(&app, json!({"action": "cancel", "filter": {}})).await;
    assert_eq!(tally(&progress), (5, 0, 5, 0), "{progress}");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn bulk_and_operations_refuse_bad_input_and_write_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    start(&app, chain(2, None)).await;
    let before = app.written().await;
    let bulk = format!("{WORKFLOWS}/bulk");
    for body in [
        json!({"action": "explode", "filter": {}}),
        json!({"action": "pause"}),
        json!({"filter": {}}),
        json!({"action": "pause", "filter": {"colour": "red"}}),
        json!({"action": "pause", "filter": {}, "extra": 1}),
        json!({"action": "pause", "filter": {"status": 1}}),
    ] {
        admin_post(&app, &bulk, &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    for filter in [
        json!({"status": "bogus"}),
        json!({"created_after": "tomorrow"}),
        json!({"q": ""}),
    ] {
        admin_post(&app, &bulk, &json!({"action": "cancel", "filter": filter}))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    }
    admin_post_raw(&app, &bulk, r#"{"action": "pause", "filter": {"#)
        .await
        .expect_error(StatusCode::BAD_REQUEST, "malformed_json");
    let unknown = uuid::Uuid::now_v7();
    admin_get(&app, &format!("/api/v1/operations/{unknown}"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    admin_get(&app, "/api/v1/operations/not-a-uuid")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_id");
    // Nothing was started: no signal anywhere.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.written().await, before);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Flows and payments
// ---------------------------------------------------------------------------------------------

/// Paid jobs' services over in-process simulators: the buyer pays at once, the chain is fast.
async fn paid_jobs(
    sims: &mut tokio::task::JoinSet<std::io::Result<()>>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Arc<api::PaidJobs> {
    use activities::kodosumi::sim as kodosumi_sim;
    use activities::masumi::sim as masumi_sim;
    let masumi = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let kodosumi = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let masumi_url = format!("http://{}/api/v1", masumi.local_addr().expect("addr"));
    let kodosumi_url = format!("http://{}", kodosumi.local_addr().expect("addr"));
    sims.spawn(masumi_sim::serve(
        masumi,
        masumi_sim::MasumiSimConfig {
            default_buyer: masumi_sim::BuyerBehavior::Pay { after_ms: 100 },
            chain_step_ms: 50,
            fast_clock: true,
            seller_window_ms: 10_000,
            ..masumi_sim::MasumiSimConfig::default()
        },
        shutdown.clone(),
    ));
    sims.spawn(kodosumi_sim::serve(
        kodosumi,
        kodosumi_sim::KodosumiSimConfig::default(),
        shutdown.clone(),
    ));
    let args = api::settings::ServiceArgs {
        masumi_url: Some(masumi_url),
        masumi_token: Some(masumi_sim::SIM_TOKEN.to_owned()),
        kodosumi_url: Some(kodosumi_url),
        kodosumi_user: "admin".to_owned(),
        kodosumi_password: Some("admin".to_owned()),
        flows_file: None,
        agent_identifier: Some(masumi_sim::SIM_AGENT_IDENTIFIER.to_owned()),
        network: "Preprod".to_owned(),
        pay_by: Duration::from_secs(3600),
        submit_result_within: Duration::from_secs(7200),
        flow_sync_interval: Duration::from_secs(300),
        start_job_timeout: Duration::from_secs(20),
        service_timeout: Duration::from_secs(30),
        result_fetch_timeout: Duration::from_secs(620),
    };
    let paid = api::PaidJobs::from_args(&args)
        .expect("valid service settings")
        .expect("paid jobs configured");
    paid.catalog
        .sync()
        .await
        .expect("flows sync from the simulator");
    Arc::new(paid)
}

#[sqlx::test(migrations = false)]
async fn flows_and_the_payment_view_of_a_paid_job(pool: PgPool) {
    let stop_sims = tokio_util::sync::CancellationToken::new();
    let _stop_sims = stop_sims.clone().drop_guard();
    let mut sims = tokio::task::JoinSet::new();
    let paid = paid_jobs(&mut sims, &stop_sims).await;
    let mut app = TestApp::spawn_paid(pool, paid).await;
    app.start_worker();

    let flows = admin_get(&app, "/api/v1/flows")
        .await
        .expect(StatusCode::OK);
    let hello = flows["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .find(|f| f["summary"] == "Hello World")
        .cloned()
        .expect("the Hello World flow");
    assert_eq!(hello["available"], true, "{hello}");
    assert_eq!(hello["settings"]["network"], "Preprod");
    assert_eq!(hello["settings"]["pay_by"], "1h");
    assert_eq!(
        hello["settings"]["agent_identifier"],
        activities::masumi::sim::SIM_AGENT_IDENTIFIER
    );
    let uid = hello["uid"].as_str().expect("uid").to_owned();
    assert_eq!(hello["endpoints"]["start_job"], format!("/{uid}/start_job"));

    // A buyer starts a job (MIP-003, public).
    let started = app
        .post_json(
            &format!("/{uid}/start_job"),
            &json!({"identifier_from_purchaser": "aabbccddeeff0011", "input_data": {"name": "Alice"}}),
        )
        .await
        .expect(StatusCode::CREATED);
    let id = started["id"].as_str().expect("job id").to_owned();

    // The job is found by its flow.
    let page = admin_get(&app, &format!("{WORKFLOWS}?flow={uid}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(ids(&page), vec![id.clone()]);
    assert_eq!(page["workflows"][0]["tag"], uid.as_str());
    let counts = admin_get(&app, &format!("{WORKFLOWS}/counts?flow={uid}"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(counts["total"], 1);

    // Its payment: the request start_job answered, then the chain's state once paid.
    let deadline = tokio::time::Instant::now() + WAIT;
    let view = loop {
        let body = admin_get(&app, &format!("{WORKFLOWS}/{id}/payment"))
            .await
            .expect(StatusCode::OK);
        if !body["payment"]["on_chain_state"].is_null() {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "never paid: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(view["id"], id.as_str());
    assert_eq!(view["flow"], uid.as_str());
    let payment = &view["payment"];
    assert_eq!(
        payment["blockchain_identifier"],
        started["blockchainIdentifier"]
    );
    assert_eq!(payment["network"], "Preprod");
    assert_eq!(payment["identifier_from_purchaser"], "aabbccddeeff0011");
    assert_eq!(payment["input_hash"], started["input_hash"]);
    let pay_by = payment["deadlines"]["pay_by_time"]
        .as_str()
        .expect("pay_by_time");
    let pay_by_ms = chrono::DateTime::parse_from_rfc3339(pay_by)
        .expect("RFC 3339")
        .timestamp_millis();
    assert_eq!(
        Some(pay_by_ms),
        started["payByTime"]
            .as_i64()
            .or_else(|| { started["payByTime"].as_str().and_then(|s| s.parse().ok()) })
    );
    for deadline in [
        "submit_result_time",
        "unlock_time",
        "external_dispute_unlock_time",
    ] {
        assert!(payment["deadlines"][deadline].is_string(), "{payment}");
    }
    assert!(payment["phase"].is_string() && payment["mip_status"].is_string());

    // Not a paid job: 404 not_a_paid_job.
    let other = start(&app, chain(1, None)).await;
    admin_get(&app, &format!("{WORKFLOWS}/{other}/payment"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_a_paid_job");
    let unknown = uuid::Uuid::now_v7();
    admin_get(&app, &format!("{WORKFLOWS}/{unknown}/payment"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    admin_post(
        &app,
        &format!("{WORKFLOWS}/{id}/signals"),
        &json!({"name": "cancel"}),
    )
    .await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn flows_are_empty_without_paid_jobs(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let flows = admin_get(&app, "/api/v1/flows")
        .await
        .expect(StatusCode::OK);
    assert_eq!(flows, json!({"flows": []}));
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Live events
// ---------------------------------------------------------------------------------------------

/// One server-sent message.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    id: i64,
    event: String,
    data: Value,
}

/// Reads server-sent messages from a response.
struct Sse {
    resp: reqwest::Response,
    buffer: String,
    comments: usize,
}

impl Sse {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> Self {
        let mut req = admin(app, Method::GET, path);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.expect("stream opens");
        assert_eq!(resp.status(), StatusCode::OK);
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            resp,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next message, or `None` when the stream ended or `wait` passed.
    async fn next(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                let Some(id) = id else { continue };
                let data = serde_json::from_str(&data).expect("data is JSON");
                return Some(Message { id, event, data });
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?;
            match chunk.expect("stream reads") {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    /// Messages until `done` holds for the last one.
    async fn until(&mut self, done: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut got = Vec::new();
        loop {
            let m = self
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("stream ended or stalled after {got:?}"));
            let stop = done(&m);
            got.push(m);
            if stop {
                return got;
            }
        }
    }
}

fn of_workflow<'a>(messages: &'a [Message], id: &str) -> Vec<&'a Message> {
    messages
        .iter()
        .filter(|m| m.data["workflow_id"] == id)
        .collect()
}

#[sqlx::test(migrations = false)]
async fn live_events_deliver_transitions_and_resume_without_gaps_or_repeats(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    let mut all = Sse::open(&app, "/api/v1/events", None).await;
    app.start_worker();
    let id = start(&app, chain(2, Some("live"))).await;
    let got = all
        .until(|m| m.data["workflow_id"] == id.as_str() && m.data["kind"] == "completed")
        .await;
    let mine = of_workflow(&got, &id);
    let history = admin_get(&app, &format!("{WORKFLOWS}/{id}/history"))
        .await
        .expect(StatusCode::OK);
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        mine.iter()
            .map(|m| m.data["kind"].as_str().expect("kind"))
            .collect::<Vec<_>>(),
        kinds,
        "every journal event, in order"
    );
    let seqs: Vec<i64> = mine
        .iter()
        .map(|m| m.data["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=kinds.len() as i64).collect::<Vec<_>>());
    let event_ids: Vec<i64> = got.iter().map(|m| m.id).collect();
    assert!(event_ids.windows(2).all(|w| w[0] < w[1]), "{event_ids:?}");
    for m in &got {
        assert_eq!(m.event, "transition");
        assert_eq!(m.data["id"], m.id);
        assert_eq!(m.data["type"], "demo.chain");
        assert!(m.data["at"].is_string());
    }
    assert_eq!(mine.first().expect("events").data["status"], "running");
    assert_eq!(mine.last().expect("events").data["status"], "completed");

    // Resume after the second message: exactly the rest, then new events as they come.
    let mut resumed = Sse::open(&app, "/api/v1/events", Some(got[1].id)).await;
    let mut rest = Vec::new();
    for _ in 2..got.len() {
        rest.push(resumed.next(WAIT).await.expect("a resumed message"));
    }
    assert_eq!(rest, got[2..].to_vec(), "no gap, no repeat");
    let second = start(&app, chain(1, None)).await;
    let next = resumed.next(WAIT).await.expect("a new message");
    assert_eq!(next.data["workflow_id"], second.as_str(), "{next:?}");
    assert!(next.id > got.last().expect("events").id);
    assert_eq!(next.data["seq"], 1);

    // A workflow's own stream from the start of its journal, with `?after=0`.
    let mut own = Sse::open(&app, &format!("{WORKFLOWS}/{id}/events?after=0"), None).await;
    let replay = own.until(|m| m.data["kind"] == "completed").await;
    assert_eq!(replay, mine.into_iter().cloned().collect::<Vec<_>>());
    // ... and resumed with Last-Event-ID past its end: nothing more of it.
    let mut done = Sse::open(
        &app,
        &format!("{WORKFLOWS}/{id}/events"),
        Some(replay.last().expect("events").id),
    )
    .await;
    assert_eq!(done.next(Duration::from_millis(500)).await, None);

    // Streams end when the server shuts down (and the server stops in time with them open).
    app.stop().await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), all.resp.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None) | Err(_)) => break,
            Err(_) => panic!("the stream is still open after the server stopped"),
        }
    }
}

#[sqlx::test(migrations = false)]
async fn live_event_streams_refuse_bad_requests(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (path, last) in [
        ("/api/v1/events", Some("abc")),
        ("/api/v1/events", Some("-1")),
        ("/api/v1/events?after=-5", None),
    ] {
        let mut req = admin(&app, Method::GET, path);
        if let Some(v) = last {
            req = req.header("last-event-id", v);
        }
        let reply = TestApp::read(req.send().await.expect("sent")).await;
        reply.expect_error(StatusCode::BAD_REQUEST, "invalid_last_event_id");
    }
    admin_get(&app, "/api/v1/events?after=x")
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    admin_get(&app, &format!("{WORKFLOWS}/not-a-uuid/events"))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_id");
    let unknown = uuid::Uuid::now_v7();
    admin_get(&app, &format!("{WORKFLOWS}/{unknown}/events"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// OpenAPI and docs
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn openapi_lists_the_api_and_docs_are_served_offline(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let doc = app.get("/openapi.json").await.expect(StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/workflows",
        "/api/v1/workflows/counts",
        "/api/v1/workflows/{id}",
        "/api/v1/workflows/{id}/history",
        "/api/v1/workflows/{id}/timeline",
        "/api/v1/workflows/{id}/attempts",
        "/api/v1/workflows/{id}/signals",
        "/api/v1/workflows/{id}/payment",
        "/api/v1/workflows/{id}/events",
        "/api/v1/workflows/bulk",
        "/api/v1/operations/{id}",
        "/api/v1/events",
        "/api/v1/workers",
        "/api/v1/flows",
        "/{flow_uid}/start_job",
        "/{flow_uid}/status",
        "/availability",
        "/health",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    assert!(paths["/api/v1/workflows"]["get"].is_object());
    assert!(paths["/api/v1/workflows"]["post"].is_object());
    assert!(doc["components"]["schemas"]["WorkflowView"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(
        paths["/api/v1/workflows"]["get"]["security"],
        json!([{"bearer": []}]),
        "the admin API takes a bearer token"
    );
    assert!(
        paths["/health"]["get"].get("security").is_none(),
        "health is public"
    );

    // The docs page and every file it loads come from the binary; nothing from elsewhere.
    let resp = app
        .client
        .get(app.url("/docs"))
        .send()
        .await
        .expect("GET /docs");
    assert_eq!(resp.status(), StatusCode::OK);
    let html = resp.text().await.expect("HTML");
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external URL in {html}"
    );
    let assets: Vec<String> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("./"))
        .map(|s| s.trim_start_matches("./").to_owned())
        .collect();
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    assert!(assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
    for asset in &assets {
        let resp = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(resp.status(), StatusCode::OK, "/docs/{asset}");
    }
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .expect("initializer");
    let init = init.text().await.expect("text");
    assert!(init.contains("/openapi.json"), "{init}");
    assert!(
        !init.contains("http://") && !init.contains("https://"),
        "{init}"
    );
    app.stop().await;
}

/// Keep-alive comments flow on an idle stream, and a stream ends when its client goes away.
#[sqlx::test(migrations = false)]
async fn idle_streams_get_keep_alives_and_end_when_the_client_leaves(pool: PgPool) {
    use engine::Store;
    let store: Arc<dyn Store> = Arc::new(engine::PgStore::new(pool));
    store.migrate().await.expect("migrations apply");
    let token = api::access::generate_token().expect("a random token");
    api::access::ensure_token(store.as_ref(), "test", &token)
        .await
        .expect("store the test token");
    let engine = Arc::new(engine::Engine::new(store, workflows::registry(None)));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let admin = api::Admin::with_keep_alive(
        engine.clone(),
        shutdown.child_token(),
        Duration::from_millis(100),
    );
    let state = api::AppState::new(engine, None, api::access::AccessConfig::default());
    let app = api::app(state, &admin).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut server = tokio::task::JoinSet::new();
    server.spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let client = common::authorized_client(&token);
    let open = || client.get(format!("{base}/api/v1/events")).send();
    let mut first = open().await.expect("stream opens");
    let second = open().await.expect("stream opens");
    let mut text = String::new();
    while text.matches("\n\n").count() < 3 {
        let chunk = tokio::time::timeout(WAIT, first.chunk())
            .await
            .expect("a keep-alive in time")
            .expect("reads")
            .expect("open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.split("\n\n")
            .take(3)
            .all(|block| block.starts_with(':')),
        "keep-alive comments only: {text:?}"
    );
    assert_eq!(admin.live.open_streams(), 2);
    drop(second);
    let deadline = tokio::time::Instant::now() + WAIT;
    while admin.live.open_streams() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the left stream still runs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first);
    shutdown.cancel();
    admin.stop().await;
    tokio::time::timeout(WAIT, server.join_next())
        .await
        .expect("the server stops")
        .expect("joined")
        .expect("server task")
        .expect("server ends cleanly");
}
