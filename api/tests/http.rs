//! HTTP tests of the admin API against a real PostgreSQL (one fresh database per test).
//!
//! Run with `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test -p api --test http`.

mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashSet;
use std::time::Duration;

const WORKFLOWS: &str = "/api/v1/workflows";

fn chain(steps: u32, sleep_ms: u64) -> Value {
    json!({"type": "demo.chain", "input": {"steps": steps, "sleep_ms": sleep_ms, "fail_prob": 0}})
}

fn workflow(id: &str) -> String {
    format!("{WORKFLOWS}/{id}")
}

fn signals(id: &str) -> String {
    format!("{WORKFLOWS}/{id}/signals")
}

fn kinds(history: &Value) -> Vec<String> {
    history["events"]
        .as_array()
        .expect("events is an array")
        .iter()
        .map(|e| e["kind"].as_str().expect("event kind").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Starting workflows
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn start_with_key_creates_once_then_returns_the_same_workflow(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = json!({"type": "demo.chain", "key": "k1", "input": {"steps": 2, "sleep_ms": 0, "fail_prob": 0}});

    let first = app
        .post_json(WORKFLOWS, &body)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(first["created"], true);
    assert_eq!(first["type"], "demo.chain");
    assert_eq!(first["key"], "k1");
    assert_eq!(first["status"], "running");
    let id = first["id"].as_str().expect("id").to_owned();
    uuid::Uuid::parse_str(&id).expect("id is a UUID");

    let second = app.post_json(WORKFLOWS, &body).await.expect(StatusCode::OK);
    assert_eq!(second["created"], false);
    assert_eq!(second["id"], id.as_str());

    // The same key with another input still names the first workflow; nothing new is written.
    let other_input = json!({"type": "demo.chain", "key": "k1", "input": {"steps": 7}});
    let third = app
        .post_json(WORKFLOWS, &other_input)
        .await
        .expect(StatusCode::OK);
    assert_eq!(third["created"], false);
    assert_eq!(third["id"], id.as_str());
    assert_eq!(third["input"]["steps"], 2);

    assert_eq!(app.count("workflows").await, 1);
    // One `started` and one `transitioned` event: the duplicates wrote no events.
    let (_, events, _) = app.written().await;
    let history = app
        .get(&format!("{}/history", workflow(&id)))
        .await
        .expect(StatusCode::OK);
    assert_eq!(events as usize, kinds(&history).len());
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn start_without_key_creates_a_new_workflow_each_time(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = chain(2, 0);
    let a = app
        .post_json(WORKFLOWS, &body)
        .await
        .expect(StatusCode::CREATED);
    let b = app
        .post_json(WORKFLOWS, &body)
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(a["created"], true);
    assert_eq!(b["created"], true);
    assert_eq!(a["key"], Value::Null);
    assert_ne!(a["id"], b["id"]);
    assert_eq!(app.count("workflows").await, 2);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn start_rejects_malformed_json(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    for raw in [
        r#"{"type": "demo.chain", "input": {"steps": 2}"#,
        "not json",
        "",
    ] {
        app.post_raw(WORKFLOWS, raw.to_owned(), Some("application/json"))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "malformed_json");
    }
    assert_eq!(app.written().await, before);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn start_requires_a_json_content_type(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    let body = chain(2, 0).to_string();
    app.post_raw(WORKFLOWS, body.clone(), None)
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    app.post_raw(WORKFLOWS, body, Some("text/plain"))
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert_eq!(app.written().await, before);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn start_rejects_an_unknown_workflow_type(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    let message = app
        .post_json(WORKFLOWS, &json!({"type": "no.such", "input": {}}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "unknown_workflow_type");
    assert!(message.contains("no.such"), "{message}");
    assert_eq!(app.written().await, before);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn start_rejects_invalid_input(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    for input in [
        json!({"steps": "x"}),
        json!({"steps": 0}),
        json!({"steps": 10_001}),
        json!({"steps": 2, "fail_prob": 1.0}),
        json!({"steps": 2, "unknown": true}),
        json!({}),
        json!(null),
        json!("steps"),
    ] {
        let body = json!({"type": "demo.chain", "input": input});
        app.post_json(WORKFLOWS, &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    }
    assert_eq!(app.written().await, before);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn start_rejects_an_invalid_body_shape(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    for body in [
        // Unknown top-level field.
        json!({"type": "demo.chain", "input": {"steps": 1}, "priority": 1}),
        // Missing fields and wrong field types.
        json!({"input": {"steps": 1}}),
        json!({"type": "demo.chain"}),
        json!({"type": 5, "input": {"steps": 1}}),
        json!({"type": "demo.chain", "key": 5, "input": {"steps": 1}}),
        json!([]),
    ] {
        app.post_json(WORKFLOWS, &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    assert_eq!(app.written().await, before);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn start_rejects_an_invalid_key(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    for key in [String::new(), "k".repeat(257)] {
        let body = json!({"type": "demo.chain", "key": key, "input": {"steps": 1}});
        app.post_json(WORKFLOWS, &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_key");
    }
    assert_eq!(app.written().await, before);
    // The longest accepted key.
    let body = json!({"type": "demo.chain", "key": "k".repeat(256), "input": {"steps": 1}});
    app.post_json(WORKFLOWS, &body)
        .await
        .expect(StatusCode::CREATED);
    app.stop().await;
}

/// PostgreSQL stores U+0000 neither in `text` nor in `jsonb`: such values are the client's
/// error (422), not a database outage (they used to answer 503 `database_unavailable`).
#[sqlx::test(migrations = false)]
async fn start_rejects_nul_characters_as_invalid(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    app.post_json(
        WORKFLOWS,
        &json!({"type": "demo.chain", "key": "a\u{0}b", "input": {"steps": 1}}),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_key");
    app.post_raw(
        WORKFLOWS,
        r#"{"type": "demo.chain", "key": "k", "input": {"steps": 1, "note": "\u0000"}}"#.into(),
        Some("application/json"),
    )
    .await
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input");
    assert_eq!(app.written().await, before);
    app.get(&format!("{WORKFLOWS}?type=demo%00chain"))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn start_rejects_a_body_over_one_mebibyte(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let before = app.written().await;
    let padding = "x".repeat(api::MAX_BODY_BYTES);
    let body = json!({"type": "demo.chain", "key": padding, "input": {"steps": 1}}).to_string();
    assert!(body.len() > api::MAX_BODY_BYTES);
    app.post_raw(WORKFLOWS, body, Some("application/json"))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_eq!(app.written().await, before);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Reading workflows
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn get_returns_the_snapshot_of_a_started_workflow(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = json!({"type": "demo.chain", "key": "order-1", "input": {"steps": 2, "sleep_ms": 0, "fail_prob": 0}});
    let id = app.start_workflow(&body).await;

    let got = app.get(&workflow(&id)).await.expect(StatusCode::OK);
    for field in [
        "id",
        "type",
        "key",
        "status",
        "state",
        "created_at",
        "updated_at",
        "waiting_on",
    ] {
        assert!(got.get(field).is_some(), "field `{field}` missing: {got}");
    }
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["type"], "demo.chain");
    assert_eq!(got["key"], "order-1");
    assert_eq!(got["status"], "running");
    assert_eq!(got["input"], body["input"]);
    assert_eq!(got["state"]["state"], "running");
    assert_eq!(got["state"]["step"], 1);
    assert_eq!(got["output"], Value::Null);
    assert_eq!(got["pending_signals"], 0);
    assert!(
        got.get("created").is_none(),
        "`created` is only on start: {got}"
    );
    // No worker runs: the first step waits, unclaimed.
    assert_eq!(got["waiting_on"]["kind"], "activity");
    assert_eq!(got["waiting_on"]["name"], "demo.step");
    assert_eq!(got["waiting_on"]["worker"], Value::Null);
    for ts in ["created_at", "updated_at"] {
        assert!(
            got[ts].as_str().is_some_and(|s| !s.is_empty()),
            "{ts}: {got}"
        );
    }

    // History of a workflow no worker touched yet: started, then the first transition.
    let history = app
        .get(&format!("{}/history", workflow(&id)))
        .await
        .expect(StatusCode::OK);
    assert_eq!(history["id"], id.as_str());
    assert_eq!(kinds(&history).first().map(String::as_str), Some("started"));
    let attempts = app
        .get(&format!("{}/attempts", workflow(&id)))
        .await
        .expect(StatusCode::OK);
    assert_eq!(attempts["attempts"], json!([]));
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn get_an_unknown_workflow_is_404(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    for path in [
        workflow(&unknown),
        format!("{}/history", workflow(&unknown)),
        format!("{}/attempts", workflow(&unknown)),
    ] {
        app.get(&path)
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn get_with_an_invalid_id_is_400(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for path in [
        workflow("not-a-uuid"),
        format!("{}/history", workflow("not-a-uuid")),
        format!("{}/attempts", workflow("not-a-uuid")),
        // Not UTF-8 once decoded: axum's own rejection, answered in our shape.
        workflow("%FF"),
        format!("{}/history", workflow("%FF")),
    ] {
        app.get(&path)
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_id");
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_workflow_runs_to_completion_with_history_and_attempts(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    let worker = app.start_worker();
    let id = app.start_workflow(&chain(2, 0)).await;

    let done = app.wait_for_status(&id, "completed").await;
    assert_eq!(done["output"], json!({"steps": 2}));
    assert_eq!(done["error"], Value::Null);
    assert_eq!(done["waiting_on"]["kind"], "nothing");
    assert_eq!(done["state"]["state"], "done");
    assert!(done["finished_at"].is_string(), "{done}");

    let history = app
        .get(&format!("{}/history", workflow(&id)))
        .await
        .expect(StatusCode::OK);
    let events = history["events"].as_array().expect("events");
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
    assert_eq!(seqs, expected, "seqs are contiguous from 1");
    let kinds = kinds(&history);
    assert_eq!(kinds.first().map(String::as_str), Some("started"));
    assert_eq!(kinds.last().map(String::as_str), Some("completed"));
    assert_eq!(
        kinds.iter().filter(|k| *k == "activity_completed").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(done["version"], seqs.len() as i64);

    // `after` pages the history.
    let tail = app
        .get(&format!("{}/history?after=1&limit=2", workflow(&id)))
        .await
        .expect(StatusCode::OK);
    let tail_seqs: Vec<i64> = tail["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(tail_seqs, [2, 3]);

    let attempts = app
        .get(&format!("{}/attempts", workflow(&id)))
        .await
        .expect(StatusCode::OK);
    assert_eq!(attempts["id"], id.as_str());
    let attempts = attempts["attempts"].as_array().expect("attempts");
    let completed: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["outcome"] == "completed")
        .collect();
    let calls: HashSet<i64> = completed
        .iter()
        .map(|a| a["call_seq"].as_i64().expect("call_seq"))
        .collect();
    assert_eq!(
        calls.len(),
        2,
        "one completed attempt per step: {attempts:?}"
    );
    for a in &completed {
        assert_eq!(a["activity_name"], "demo.step");
        assert_eq!(a["worker_id"], worker.to_string());
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_signal_to_a_finished_workflow_is_409(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    app.start_worker();
    let id = app.start_workflow(&chain(1, 0)).await;
    app.wait_for_status(&id, "completed").await;

    let before = app.written().await;
    for name in ["pause", "resume", "cancel"] {
        let message = app
            .post_json(&signals(&id), &json!({"name": name}))
            .await
            .expect_error(StatusCode::CONFLICT, "workflow_finished");
        assert!(message.contains("completed"), "{message}");
    }
    assert_eq!(app.written().await, before);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_signal_to_an_unknown_workflow_is_404(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    app.post_json(&signals(&unknown), &json!({"name": "pause"}))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    app.post_json(&signals("not-a-uuid"), &json!({"name": "pause"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_id");
    app.post_json(&signals("%FF"), &json!({"name": "pause"}))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_id");
    assert_eq!(app.count("signals").await, 0);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_malformed_signal_request_is_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.start_workflow(&chain(2, 0)).await;
    let before = app.written().await;

    app.post_raw(
        &signals(&id),
        r#"{"name": "pause""#.into(),
        Some("application/json"),
    )
    .await
    .expect_error(StatusCode::BAD_REQUEST, "malformed_json");
    app.post_raw(&signals(&id), r#"{"name": "pause"}"#.into(), None)
        .await
        .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    for body in [
        json!({}),
        json!({"name": 1}),
        json!({"name": "pause", "extra": true}),
    ] {
        app.post_json(&signals(&id), &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    app.post_json(&signals(&id), &json!({"name": ""}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_signal");

    assert_eq!(app.written().await, before);
    let got = app.get(&workflow(&id)).await.expect(StatusCode::OK);
    assert_eq!(got["pending_signals"], 0);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_unknown_custom_signal_is_422_and_not_stored(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.start_workflow(&chain(2, 0)).await;
    let before = app.written().await;
    for body in [
        json!({"name": "approve"}),
        json!({"name": "approve", "payload": {"by": "ops"}}),
    ] {
        app.post_json(&signals(&id), &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_signal");
    }
    assert_eq!(app.written().await, before);
    assert_eq!(app.count("signals").await, 0);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_signal_with_nul_characters_is_422_and_not_stored(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.start_workflow(&chain(2, 0)).await;
    let before = app.written().await;
    for body in [
        json!({"name": "pause", "payload": "x\u{0}"}),
        json!({"name": "pause", "payload": {"a\u{0}": 1}}),
        json!({"name": "pause", "payload": [["\u{0}"]]}),
        json!({"name": "pa\u{0}use"}),
    ] {
        app.post_json(&signals(&id), &body)
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_signal");
    }
    assert_eq!(app.written().await, before);
    // A payload without NUL is still accepted.
    app.post_json(
        &signals(&id),
        &json!({"name": "pause", "payload": {"why": "ops"}}),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    assert_eq!(app.count("signals").await, before.2 + 1);
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_running_workflow_accepts_a_signal(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    app.start_worker();
    let id = app.start_workflow(&chain(50, 200)).await;
    app.wait_for(&id, "claimed", |b| b["lease_owner"].is_string())
        .await;

    let accepted = app
        .post_json(&signals(&id), &json!({"name": "pause", "payload": null}))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(accepted["id"], id.as_str());
    assert_eq!(accepted["signal"], "pause");
    assert_eq!(accepted["seq"], 1);
    let second = app
        .post_json(&signals(&id), &json!({"name": "cancel"}))
        .await
        .expect(StatusCode::ACCEPTED);
    assert_eq!(second["seq"], 2);

    let stored: Vec<(i64, String)> = sqlx::query_as(
        "select seq, name from kodomasu.signals where workflow_id = $1::uuid order by seq",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .expect("read signals");
    assert_eq!(stored, [(1, "pause".to_owned()), (2, "cancel".to_owned())]);

    app.wait_for_status(&id, "cancelled").await;
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn pause_then_resume_lets_the_workflow_complete(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    app.start_worker();
    let id = app.start_workflow(&chain(8, 200)).await;

    let paused = app
        .post_json(&signals(&id), &json!({"name": "pause"}))
        .await
        .expect(StatusCode::ACCEPTED);
    assert!(paused["seq"].is_i64(), "{paused}");

    let snapshot = app.wait_for_status(&id, "paused").await;
    assert_eq!(snapshot["waiting_on"]["kind"], "paused");

    // While paused, nothing new runs.
    let version = snapshot["version"].clone();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = app.get(&workflow(&id)).await.expect(StatusCode::OK);
    assert_eq!(still["status"], "paused", "{still}");
    assert_eq!(still["version"], version, "{still}");

    app.post_json(&signals(&id), &json!({"name": "resume"}))
        .await
        .expect(StatusCode::ACCEPTED);
    let done = app.wait_for_status(&id, "completed").await;
    assert_eq!(done["output"], json!({"steps": 8}));
    assert_eq!(done["pending_signals"], 0);

    let history = app
        .get(&format!("{}/history", workflow(&id)))
        .await
        .expect(StatusCode::OK);
    let kinds = kinds(&history);
    let paused_at = kinds
        .iter()
        .position(|k| k == "paused")
        .expect("paused event");
    let resumed_at = kinds
        .iter()
        .position(|k| k == "resumed")
        .expect("resumed event");
    assert!(paused_at < resumed_at, "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("completed"));
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn cancel_stops_a_running_workflow(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    app.start_worker();
    let id = app.start_workflow(&chain(50, 200)).await;
    app.wait_for(&id, "claimed", |b| b["lease_owner"].is_string())
        .await;

    app.post_json(&signals(&id), &json!({"name": "cancel"}))
        .await
        .expect(StatusCode::ACCEPTED);
    let cancelled = app.wait_for_status(&id, "cancelled").await;
    assert_eq!(cancelled["waiting_on"]["kind"], "nothing");
    assert!(cancelled["finished_at"].is_string(), "{cancelled}");

    let history = app
        .get(&format!("{}/history", workflow(&id)))
        .await
        .expect(StatusCode::OK);
    assert_eq!(
        kinds(&history).last().map(String::as_str),
        Some("cancelled")
    );

    // A finished workflow takes no more signals.
    let before = app.count("signals").await;
    app.post_json(&signals(&id), &json!({"name": "resume"}))
        .await
        .expect_error(StatusCode::CONFLICT, "workflow_finished");
    assert_eq!(app.count("signals").await, before);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn list_filters_and_paginates_with_a_cursor(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    app.start_worker();
    let mut completed = HashSet::new();
    for _ in 0..5 {
        completed.insert(app.start_workflow(&chain(1, 0)).await);
    }
    for id in &completed {
        app.wait_for_status(id, "completed").await;
    }
    app.stop_worker().await;
    // Not completed: must not appear under status=completed.
    let running = app.start_workflow(&chain(1, 0)).await;

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        let mut path = format!("{WORKFLOWS}?status=completed&type=demo.chain&limit=2");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get(&path).await.expect(StatusCode::OK);
        let items = page["workflows"].as_array().expect("workflows").clone();
        assert!(items.len() <= 2, "page over the limit: {page}");
        for w in &items {
            assert_eq!(w["status"], "completed");
            assert_eq!(w["type"], "demo.chain");
            seen.push(w["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 2, "a full page carries the cursor");
                assert_eq!(items.last().expect("last")["id"], next);
                cursor = Some(next.to_owned());
            }
            None => {
                assert_eq!(page["next_cursor"], Value::Null);
                break;
            }
        }
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "pages overlap: {seen:?}");
    assert_eq!(unique, completed, "pages cover every completed workflow");
    assert!(!unique.contains(&running));
    // Newest first.
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted);

    let all = app.get(WORKFLOWS).await.expect(StatusCode::OK);
    assert_eq!(all["workflows"].as_array().expect("workflows").len(), 6);
    assert_eq!(all["next_cursor"], Value::Null);
    let running_only = app
        .get(&format!("{WORKFLOWS}?status=running"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(running_only["workflows"][0]["id"], running.as_str());
    assert_eq!(running_only["workflows"].as_array().map(Vec::len), Some(1));
    let other_type = app
        .get(&format!("{WORKFLOWS}?type=no.such"))
        .await
        .expect(StatusCode::OK);
    assert_eq!(other_type["workflows"], json!([]));
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn list_rejects_an_invalid_query(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for query in [
        "status=bogus",
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=abc",
        "unknown=1",
    ] {
        app.get(&format!("{WORKFLOWS}?{query}"))
            .await
            .expect_error(StatusCode::BAD_REQUEST, "invalid_query");
    }
    app.get(&format!("{WORKFLOWS}?cursor=not-a-uuid"))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "invalid_id");
    app.get(&format!("{WORKFLOWS}?limit=500"))
        .await
        .expect(StatusCode::OK);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Workers, health, fallback
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn workers_lists_a_running_worker_as_alive(pool: PgPool) {
    let mut app = TestApp::spawn(pool).await;
    let worker = app.start_worker().to_string();

    let deadline = tokio::time::Instant::now() + common::WAIT;
    let record = loop {
        let body = app.get("/api/v1/workers").await.expect(StatusCode::OK);
        let found = body["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .find(|w| w["id"] == worker.as_str())
            .cloned();
        if let Some(w) = found {
            break w;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker {worker} never registered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record["alive"], true, "{record}");
    assert_eq!(record["stopped_at"], Value::Null);
    assert_eq!(record["lease_ttl_ms"], 2000);
    assert_eq!(record["pid"], std::process::id());

    app.stop_worker().await;
    let body = app.get("/api/v1/workers").await.expect(StatusCode::OK);
    let stopped = body["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["id"] == worker.as_str())
        .cloned()
        .expect("a stopped worker stays listed");
    assert_eq!(stopped["alive"], false, "{stopped}");
    assert!(stopped["stopped_at"].is_string(), "{stopped}");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn health_is_ok(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let body = app.get("/health").await.expect(StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_unknown_route_is_404_json(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for path in ["/nope", "/api/v1/nope", "/api/v2/workflows"] {
        let message = app
            .get(path)
            .await
            .expect_error(StatusCode::NOT_FOUND, "not_found");
        assert!(message.contains(path), "{message}");
    }
    app.stop().await;
}

#[sqlx::test(migrations = false)]
async fn an_unsupported_method_is_405_json(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = uuid::Uuid::now_v7().to_string();
    for (method, path, allow) in [
        (reqwest::Method::DELETE, WORKFLOWS.to_owned(), "GET"),
        (reqwest::Method::PUT, workflow(&id), "GET"),
        (reqwest::Method::GET, signals(&id), "POST"),
        (reqwest::Method::POST, "/health".to_owned(), "GET"),
        (reqwest::Method::DELETE, "/api/v1/workers".to_owned(), "GET"),
    ] {
        let reply = app.send(method.clone(), &path).await;
        let allowed = reply.header("allow").unwrap_or_default().to_owned();
        assert!(
            allowed.contains(allow),
            "{method} {path}: allow `{allowed}`"
        );
        reply.expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }
    app.stop().await;
}
