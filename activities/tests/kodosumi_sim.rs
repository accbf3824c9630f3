//! The Kodosumi client and activities against the simulator, over real HTTP on 127.0.0.1.

use activities::kodosumi::schema::{self, Mip003Schema};
use activities::kodosumi::sim::{self, Faults, KodosumiSimConfig, SimFlow, SimLaunch};
use activities::kodosumi::types::FlowForm;
use activities::kodosumi::{
    AwaitExecutionChange, AwaitExecutionChangeInput, ExecState, ExecutionObservation, FetchResult,
    FetchResultInput, GetLockForm, GetLockFormInput, Kill, KillInput, KodosumiClient,
    KodosumiConfig, LOCK_GONE, Launch, LaunchInput, LaunchOutcome, LaunchResponse, NOT_CREATED_YET,
    ReleaseLock, ReleaseLockInput, result_text,
};
use activities::{BreakerConfig, BreakerState, ClientError};
use chrono::Utc;
use engine::{Activity, ActivityContext, ActivityError, WorkflowId};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A simulator on a random port and a client of it; the simulator stops on drop.
struct Harness {
    base: String,
    client: Arc<KodosumiClient>,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Fast defaults for tests: a short spooler delay and short 404 waits.
fn fast_config() -> KodosumiSimConfig {
    let mut hello = SimFlow::hello();
    hello.behavior.duration_ms = 200;
    let mut confirm = SimFlow::confirm();
    if let Some(lock) = confirm.behavior.await_input.as_mut() {
        lock.after_ms = 50;
    }
    confirm.behavior.duration_ms = 50;
    KodosumiSimConfig {
        flows: vec![hello, confirm],
        status_404_window: Duration::from_millis(300),
        short_wait: Duration::from_millis(100),
        wait_for_job: Duration::from_secs(5),
        lease_delay: Duration::from_millis(300),
        ..KodosumiSimConfig::default()
    }
}

fn client_config(base: &str) -> KodosumiConfig {
    let mut c = KodosumiConfig::new(base, "admin", "admin");
    c.timeout = Duration::from_secs(5);
    c.raw_timeout = Duration::from_secs(10);
    c
}

async fn start(config: KodosumiSimConfig) -> Harness {
    start_with(config, client_config).await
}

async fn start_with(
    config: KodosumiSimConfig,
    client: impl FnOnce(&str) -> KodosumiConfig,
) -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    tokio::spawn(sim::serve(listener, config, shutdown.clone()));
    let client = Arc::new(KodosumiClient::new(client(&base)).expect("client"));
    Harness {
        base,
        client,
        http: reqwest::Client::new(),
        shutdown,
    }
}

impl Harness {
    async fn launches(&self) -> Vec<SimLaunch> {
        self.http
            .get(format!("{}/_sim/launches", self.base))
            .send()
            .await
            .expect("launches")
            .json()
            .await
            .expect("json")
    }

    async fn counter(&self, name: &str) -> u64 {
        let counters: Value = self
            .http
            .get(format!("{}/_sim/counters", self.base))
            .send()
            .await
            .expect("counters")
            .json()
            .await
            .expect("json");
        counters[name].as_u64().unwrap_or(0)
    }

    async fn faults(&self, faults: Faults) {
        let r = self
            .http
            .post(format!("{}/_sim/faults", self.base))
            .json(&faults)
            .send()
            .await
            .expect("faults");
        assert!(r.status().is_success());
    }

    async fn hello_url(&self) -> String {
        let flows = self.client.list_flows().await.expect("flows");
        flows
            .into_iter()
            .find(|f| f.summary == "Hello World")
            .expect("hello flow")
            .url
    }

    /// Polls with the activity until the run is final; returns the last view's final.
    async fn await_final(&self, fid: &str) -> (ExecState, Option<String>) {
        let activity = AwaitExecutionChange::new(self.client.clone());
        let mut known = None;
        let mut locks = Vec::new();
        for _ in 0..50 {
            let out = activity
                .run(
                    ctx(1),
                    AwaitExecutionChangeInput {
                        fid: fid.to_owned(),
                        known_status: known,
                        known_locks: locks.clone(),
                        until: Utc::now() + chrono::Duration::seconds(20),
                        poll_min_ms: 50,
                        poll_max_ms: 200,
                    },
                )
                .await
                .expect("observation");
            let ExecutionObservation::Changed { view, .. } = out else {
                panic!("expected a change, got {out:?}");
            };
            if view.status.is_final() {
                return (view.status, view.final_raw);
            }
            known = Some(view.status);
            locks = view.locks;
        }
        panic!("{fid} never became final");
    }
}

fn ctx(attempt: u32) -> ActivityContext {
    ActivityContext::for_test(WorkflowId::new(), attempt)
}

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[tokio::test]
async fn logs_in_once_reuses_the_token_and_logs_in_again_after_expiry() {
    let h = start(fast_config()).await;
    h.client.list_flows().await.expect("flows");
    h.client.list_flows().await.expect("flows again");
    h.client.health().await.expect("health");
    assert_eq!(h.counter("logins").await, 1, "the token is reused");

    let r = h
        .http
        .post(format!("{}/_sim/expire_tokens", h.base))
        .send()
        .await
        .expect("expire");
    assert_eq!(r.status().as_u16(), 204);
    h.client
        .list_flows()
        .await
        .expect("a 401 leads to a new login and one retry");
    assert_eq!(h.counter("logins").await, 2);
    assert_eq!(h.counter("unauthorized").await, 1);
    h.client.list_flows().await.expect("flows");
    assert_eq!(h.counter("logins").await, 2);
}

#[tokio::test]
async fn tokens_expire_and_wrong_passwords_are_refused() {
    let config = KodosumiSimConfig {
        token_ttl: Duration::from_secs(1),
        ..fast_config()
    };
    let h = start(config).await;
    // The token lives 1 s: shorter than the renewal margin, so every call logs in again.
    h.client.list_flows().await.expect("flows");
    h.client.list_flows().await.expect("flows");
    assert_eq!(h.counter("logins").await, 2);

    let bad = KodosumiClient::new(KodosumiConfig::new(&h.base, "admin", "wrong")).expect("client");
    let e = bad.list_flows().await.expect_err("refused");
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("Invalid name or password"), "{e}");
    assert!(!e.to_string().contains("wrong"), "no password in errors");

    // Without any token: Kodosumi's 401 body.
    let r = h
        .http
        .get(format!("{}/flow", h.base))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body,
        json!({"error": "NotAuthorizedException", "path": "/flow", "detail": "Unauthorized", "status_code": 401})
    );
    // The cookie works as well as the header.
    let login: Value = h
        .http
        .post(format!("{}/login", h.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=admin&password=admin")
        .send()
        .await
        .expect("form login")
        .json()
        .await
        .expect("json");
    let token = login["KODOSUMI_API_KEY"].as_str().expect("token");
    let r = h
        .http
        .get(format!("{}/health", h.base))
        .header("cookie", format!("kodosumi_jwt={token}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn lists_flows_page_by_page_sorted_by_summary() {
    let mut flows = Vec::new();
    for (i, name) in ["Echo", "Alpha", "Delta", "Charlie", "Bravo"]
        .iter()
        .enumerate()
    {
        let mut f = SimFlow::hello();
        f.summary = (*name).to_owned();
        f.route = format!("/-/127.0.0.1/80{i:02}/-/{}", name.to_lowercase());
        flows.push(f);
    }
    let h = start(KodosumiSimConfig {
        flows,
        ..fast_config()
    })
    .await;
    let page = h.client.flow_page(None, 2, None).await.expect("page");
    let names: Vec<&str> = page.items.iter().map(|f| f.summary.as_str()).collect();
    assert_eq!(names, ["Alpha", "Bravo"]);
    let next = page.offset.clone().expect("more pages");
    assert_eq!(next, page.items[1].uid);
    let page2 = h
        .client
        .flow_page(None, 2, Some(&next))
        .await
        .expect("page 2");
    assert_eq!(page2.items[0].summary, "Charlie");

    let all = h.client.list_flows().await.expect("all");
    let names: Vec<&str> = all.iter().map(|f| f.summary.as_str()).collect();
    assert_eq!(names, ["Alpha", "Bravo", "Charlie", "Delta", "Echo"]);
    let found = h.client.flow_page(Some("delt"), 10, None).await.expect("q");
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.offset, None);
}

#[tokio::test]
async fn the_form_becomes_the_recorded_mip003_schema() {
    let h = start(fast_config()).await;
    let url = h.hello_url().await;
    let form = h.client.flow_form(&url).await.expect("form");
    let schema = schema::to_mip003(&form.elements);

    let recorded = include_str!("fixtures/kodosumi/schema_hello.txt");
    let body = recorded
        .split_once("\r\n\r\n")
        .or_else(|| recorded.split_once("\n\n"))
        .map(|(_, b)| b)
        .expect("body");
    let recorded: FlowForm = serde_json::from_str(body.trim()).expect("recorded form");
    assert_eq!(schema, schema::to_mip003(&recorded.elements));
    let ids: Vec<&str> = schema.input_data.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["name", "seconds", "fail", "style"]);

    assert!(matches!(
        h.client.flow_form("/-/127.0.0.1/9999/-/nope").await,
        Err(ClientError::Status { status: 404, .. })
    ));
}

#[tokio::test]
async fn launches_runs_and_refuses_bad_inputs_like_kodosumi() {
    let h = start(fast_config()).await;
    let url = h.hello_url().await;

    let rejected = h.client.launch(&url, &Map::new()).await.expect("answer");
    let LaunchResponse::Rejected { errors } = rejected else {
        panic!("expected a refusal: {rejected:?}");
    };
    assert_eq!(errors["name"], json!(["Please give a name."]));

    let form = h.client.flow_form(&url).await.expect("form");
    let input_data = json!({"name": "Alice", "seconds": 1, "fail": false, "style": [1]});
    schema::validate(&schema::to_mip003(&form.elements), &input_data).expect("valid");
    let mut inputs = schema::to_launch_inputs(&form.elements, &input_data);
    inputs.insert("undeclared".into(), json!("dropped"));
    let LaunchResponse::Launched { fid } = h.client.launch(&url, &inputs).await.expect("launch")
    else {
        panic!("expected a launch");
    };
    assert_eq!(fid.len(), 24);
    assert!(fid.bytes().all(|b| b.is_ascii_hexdigit()));

    let launches = h.launches().await;
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].fid, fid);
    assert_eq!(launches[0].user, "admin");
    assert_eq!(
        Value::Object(launches[0].inputs_passed.clone()),
        json!({"name": "Alice", "seconds": 1, "fail": false, "style": "markdown"}),
        "declared keys only, a box unchecked unless \"on\""
    );
    assert_eq!(launches[0].inputs_received["undeclared"], "dropped");

    let (state, final_raw) = h.await_final(&fid).await;
    assert_eq!(state, ExecState::Finished);
    assert_eq!(result_text(&final_raw.expect("final")), "Hello Alice");
    let raw = FetchResult::new(h.client.clone())
        .run(ctx(1), FetchResultInput { fid: fid.clone() })
        .await
        .expect("raw");
    assert_eq!(raw.raw, r#"{"Markdown":{"body":"Hello Alice"}}"#);

    // A checked `fail` box fails the run with Kodosumi's error shape.
    let inputs = schema::to_launch_inputs(&form.elements, &json!({"name": "Bob", "fail": true}));
    let LaunchResponse::Launched { fid } = h.client.launch(&url, &inputs).await.expect("launch")
    else {
        panic!("expected a launch");
    };
    let (state, final_raw) = h.await_final(&fid).await;
    assert_eq!(state, ExecState::Error);
    assert_eq!(
        result_text(&final_raw.expect("final")),
        "failed on purpose for Bob"
    );
}

#[tokio::test]
async fn status_is_404_until_the_spooler_created_the_run_unless_extended() {
    let config = KodosumiSimConfig {
        status_404_window: Duration::from_millis(1500),
        short_wait: Duration::from_millis(200),
        ..fast_config()
    };
    let h = start(config).await;
    let url = h.hello_url().await;
    let LaunchResponse::Launched { fid } = h
        .client
        .launch(&url, &map(json!({"name": "Ann"})))
        .await
        .expect("launch")
    else {
        panic!("expected a launch");
    };
    assert_eq!(
        h.client.poll_status(&fid).await.expect("answer"),
        None,
        "404 right after the launch"
    );
    let st = h
        .client
        .status(&fid)
        .await
        .expect("answer")
        .expect("extended waits");
    assert!(matches!(
        st.status,
        ExecState::Starting | ExecState::Running | ExecState::Finished
    ));
    assert!(h.client.poll_status(&fid).await.expect("answer").is_some());
    assert_eq!(
        h.client
            .poll_status("ffffffffffffffffffffffff")
            .await
            .expect("answer"),
        None
    );

    // AwaitExecutionChange reads the early 404s as `starting`.
    let LaunchResponse::Launched { fid } = h
        .client
        .launch(&url, &map(json!({"name": "Ben"})))
        .await
        .expect("launch")
    else {
        panic!("expected a launch");
    };
    let out = AwaitExecutionChange::new(h.client.clone())
        .run(
            ctx(1),
            AwaitExecutionChangeInput {
                fid: fid.clone(),
                known_status: Some(ExecState::Starting),
                until: Utc::now() + chrono::Duration::seconds(20),
                poll_min_ms: 50,
                poll_max_ms: 100,
                ..AwaitExecutionChangeInput::default()
            },
        )
        .await
        .expect("observation");
    let ExecutionObservation::Changed { view, .. } = out else {
        panic!("expected a change, got {out:?}");
    };
    assert_ne!(view.status, ExecState::Starting);
}

#[tokio::test]
async fn a_run_asks_for_input_through_a_lock_then_finishes() {
    let h = start(fast_config()).await;
    let flows = h.client.list_flows().await.expect("flows");
    let confirm = flows
        .iter()
        .find(|f| f.summary == "Confirm Flow")
        .expect("confirm flow");
    let LaunchResponse::Launched { fid } = h
        .client
        .launch(&confirm.url, &map(json!({"topic": "cats"})))
        .await
        .expect("launch")
    else {
        panic!("expected a launch");
    };

    let awaiting = AwaitExecutionChange::new(h.client.clone());
    let mut known = None;
    let view = loop {
        let out = awaiting
            .run(
                ctx(1),
                AwaitExecutionChangeInput {
                    fid: fid.clone(),
                    known_status: known,
                    until: Utc::now() + chrono::Duration::seconds(20),
                    poll_min_ms: 50,
                    poll_max_ms: 100,
                    ..AwaitExecutionChangeInput::default()
                },
            )
            .await
            .expect("observation");
        let ExecutionObservation::Changed { view, .. } = out else {
            panic!("expected a change, got {out:?}");
        };
        if view.status == ExecState::Awaiting {
            break view;
        }
        known = Some(view.status);
    };
    assert_eq!(view.locks.len(), 1);
    let lock_id = view.locks[0].clone();

    let form = GetLockForm::new(h.client.clone())
        .run(
            ctx(1),
            GetLockFormInput {
                fid: fid.clone(),
                lock_id: lock_id.clone(),
            },
        )
        .await
        .expect("lock form");
    assert_eq!(form.elements[0]["text"], "Approve topic **cats**?");
    let lock_schema: Mip003Schema =
        serde_json::from_value(schema::lock_form_to_mip003(&form.elements)).expect("schema");
    let answer = json!({"ok": true, "comment": "looks good"});
    schema::validate(&lock_schema, &answer).expect("valid");
    let inputs = schema::mip003_to_lock_inputs(&lock_schema, &answer);

    let release = ReleaseLock::new(h.client.clone());
    let released = release
        .run(
            ctx(1),
            ReleaseLockInput {
                fid: fid.clone(),
                lock_id: lock_id.clone(),
                inputs: inputs.clone(),
            },
        )
        .await
        .expect("released");
    assert_eq!(
        released.result,
        json!({"comment": "looks good", "ok": true})
    );
    // ReleaseLock returned only once the status stopped listing the lock.
    let after = h.client.poll_status(&fid).await.expect("status");
    assert!(after.is_some_and(|s| !s.locks.contains(&lock_id) && s.status != ExecState::Awaiting));

    let again = release
        .run(
            ctx(2),
            ReleaseLockInput {
                fid: fid.clone(),
                lock_id,
                inputs,
            },
        )
        .await
        .expect_err("a second release");
    assert_eq!(again.code, LOCK_GONE);
    assert!(!again.retryable);

    let (state, final_raw) = h.await_final(&fid).await;
    assert_eq!(state, ExecState::Finished);
    assert_eq!(
        result_text(&final_raw.expect("final")),
        "Topic cats: approved=true (looks good)"
    );
}

/// As a real Kodosumi: a released lock stays listed (the run `awaiting`) until the run took its
/// result; meanwhile the lock answers 404.
#[tokio::test]
async fn a_released_lock_stays_listed_until_the_run_takes_it() {
    let mut config = fast_config();
    config.lease_delay = Duration::from_millis(800);
    let h = start(config).await;
    let flows = h.client.list_flows().await.expect("flows");
    let confirm = flows
        .iter()
        .find(|f| f.summary == "Confirm Flow")
        .expect("confirm flow");
    let LaunchResponse::Launched { fid } = h
        .client
        .launch(&confirm.url, &map(json!({"topic": "dogs"})))
        .await
        .expect("launch")
    else {
        panic!("expected a launch");
    };
    let lock_id = loop {
        if let Some(s) = h.client.poll_status(&fid).await.expect("status")
            && let Some(l) = s.locks.first()
        {
            break l.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let released = ReleaseLock::new(h.client.clone())
        .with_settle(Duration::ZERO)
        .run(
            ctx(1),
            ReleaseLockInput {
                fid: fid.clone(),
                lock_id: lock_id.clone(),
                inputs: map(json!({"ok": "on"})),
            },
        )
        .await
        .expect("released");
    assert_eq!(released.result["ok"], json!(true));
    let s = h
        .client
        .poll_status(&fid)
        .await
        .expect("status")
        .expect("known");
    assert_eq!(s.status, ExecState::Awaiting);
    assert_eq!(s.locks, vec![lock_id.clone()]);
    let e = h
        .client
        .lock_form(&fid, &lock_id)
        .await
        .expect_err("released");
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("released"), "{e}");

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let s = h
        .client
        .poll_status(&fid)
        .await
        .expect("status")
        .expect("known");
    assert!(s.locks.is_empty(), "{s:?}");
    assert_ne!(s.status, ExecState::Awaiting);
}

#[tokio::test]
async fn kill_stops_a_run_and_its_status_becomes_404() {
    let mut config = fast_config();
    config.flows[0].behavior.duration_ms = 30_000;
    let h = start(config).await;
    let url = h.hello_url().await;
    let LaunchResponse::Launched { fid } = h
        .client
        .launch(&url, &map(json!({"name": "Zed"})))
        .await
        .expect("launch")
    else {
        panic!("expected a launch");
    };
    assert!(h.client.status(&fid).await.expect("status").is_some());
    let kill = Kill::new(h.client.clone());
    kill.run(ctx(1), KillInput { fid: fid.clone() })
        .await
        .expect("killed");
    assert_eq!(h.client.poll_status(&fid).await.expect("answer"), None);
    // A 404 this soon after the launch may mean "not created yet": retried, not trusted...
    let young = kill
        .run(ctx(2), KillInput { fid: fid.clone() })
        .await
        .expect_err("a young run's 404 is ambiguous");
    assert_eq!(young.code, NOT_CREATED_YET);
    assert!(young.retryable);
    // ...while after the start-up window, already gone counts as killed.
    Kill::new(h.client.clone())
        .with_startup_404_window(Duration::ZERO)
        .run(ctx(3), KillInput { fid: fid.clone() })
        .await
        .expect("already gone counts as killed");
    let launches = h.launches().await;
    assert!(launches[0].killed);
    assert_eq!(launches[0].status, "running");

    // A killed run is NotFound once the start-up window is over.
    let out = AwaitExecutionChange::new(h.client.clone())
        .with_startup_404_window(Duration::from_millis(300))
        .run(
            ctx(1),
            AwaitExecutionChangeInput {
                fid,
                known_status: Some(ExecState::Running),
                until: Utc::now() + chrono::Duration::seconds(20),
                poll_min_ms: 50,
                poll_max_ms: 100,
                ..AwaitExecutionChangeInput::default()
            },
        )
        .await
        .expect("observation");
    assert!(
        matches!(out, ExecutionObservation::NotFound { .. }),
        "{out:?}"
    );
}

/// Kodosumi answers 404 to a kill before its spooler created the run (~2 s after the launch),
/// and that run goes on: the kill is retried until the run exists, then it is killed.
#[tokio::test]
async fn a_kill_right_after_the_launch_is_retried_until_the_run_exists() {
    let mut config = fast_config();
    config.flows[0].behavior.duration_ms = 30_000;
    config.status_404_window = Duration::from_millis(1_500);
    let h = start(config).await;
    let url = h.hello_url().await;
    let LaunchResponse::Launched { fid } = h
        .client
        .launch(&url, &map(json!({"name": "Zed"})))
        .await
        .expect("launch")
    else {
        panic!("expected a launch");
    };
    let kill = Kill::new(h.client.clone());
    let early = kill
        .run(ctx(1), KillInput { fid: fid.clone() })
        .await
        .expect_err("the run does not exist yet");
    assert_eq!(early.code, NOT_CREATED_YET);
    assert!(early.retryable);
    assert!(!h.launches().await[0].killed, "the run goes on");
    let mut attempt = 2;
    loop {
        match kill.run(ctx(attempt), KillInput { fid: fid.clone() }).await {
            Ok(()) => break,
            Err(e) if e.code == NOT_CREATED_YET && attempt < 50 => attempt += 1,
            Err(e) => panic!("kill failed: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        h.launches().await[0].killed,
        "the retried kill killed the run"
    );
}

#[tokio::test]
async fn await_returns_unchanged_at_the_deadline_and_on_cancel() {
    let mut config = fast_config();
    config.flows[0].behavior.duration_ms = 30_000;
    let h = start(config).await;
    let url = h.hello_url().await;
    let LaunchResponse::Launched { fid } = h
        .client
        .launch(&url, &map(json!({"name": "Zed"})))
        .await
        .expect("launch")
    else {
        panic!("expected a launch");
    };
    let status = h
        .client
        .status(&fid)
        .await
        .expect("status")
        .expect("exists");
    let activity = AwaitExecutionChange::new(h.client.clone());
    let input = AwaitExecutionChangeInput {
        fid: fid.clone(),
        known_status: Some(ExecState::Running),
        until: Utc::now() + chrono::Duration::milliseconds(600),
        poll_min_ms: 50,
        poll_max_ms: 100,
        ..AwaitExecutionChangeInput::default()
    };
    // Wait until it runs, so that "running" is what we know.
    if status.status == ExecState::Starting {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = std::time::Instant::now();
    let out = activity
        .run(ctx(1), input.clone())
        .await
        .expect("observation");
    assert!(
        matches!(out, ExecutionObservation::Unchanged { .. }),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let c = ctx(1);
    let token = c.cancellation_token();
    let far = AwaitExecutionChangeInput {
        until: Utc::now() + chrono::Duration::hours(1),
        poll_max_ms: 15_000,
        ..input
    };
    let run = tokio::spawn({
        let activity = activity.clone();
        async move { activity.run(c, far).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = std::time::Instant::now();
    token.cancel();
    let out = run.await.expect("join").expect("observation");
    assert!(
        matches!(out, ExecutionObservation::Unchanged { .. }),
        "{out:?}"
    );
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "returns promptly"
    );
}

#[tokio::test]
async fn a_retried_launch_adopts_the_run_of_an_ambiguous_first_attempt() {
    let h = start_with(fast_config(), |base| {
        let mut c = client_config(base);
        c.timeout = Duration::from_millis(1000);
        c
    })
    .await;
    let url = h.hello_url().await;
    let launch = Launch::new(h.client.clone()).with_settle(Duration::from_millis(500));
    let intent_at = Utc::now();
    let input = LaunchInput {
        job_id: "job-1".into(),
        flow_url: url.clone(),
        flow_summary: "Hello World".into(),
        inputs: map(json!({"name": "Alice", "seconds": "1", "fail": "on", "style": "plain"})),
        intent_at: Some(intent_at),
    };

    // Attempt 1: Kodosumi starts the run but the answer never comes.
    h.faults(Faults {
        hang_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let err: ActivityError = launch
        .run(ctx(1), input.clone())
        .await
        .expect_err("the answer is lost");
    assert!(err.retryable, "{err:?}");
    assert_eq!(err.code, "kodosumi.timeout");
    h.faults(Faults::default()).await;
    let launches = h.launches().await;
    assert_eq!(launches.len(), 1, "the run was started");

    // Attempt 2 finds it instead of launching again.
    let out = launch.run(ctx(2), input.clone()).await.expect("outcome");
    assert_eq!(
        out,
        LaunchOutcome::Launched {
            fid: launches[0].fid.clone()
        }
    );
    assert_eq!(h.launches().await.len(), 1, "no job started twice");

    // Other inputs are another job: a retry of it launches.
    let other = LaunchInput {
        job_id: "job-2".into(),
        inputs: map(json!({"name": "Bob"})),
        ..input.clone()
    };
    let LaunchOutcome::Launched { fid } = launch.run(ctx(2), other).await.expect("outcome") else {
        panic!("expected a launch");
    };
    assert_ne!(fid, launches[0].fid);
    assert_eq!(h.launches().await.len(), 2);

    // A first attempt always launches; a refusal is an outcome, not an error.
    let refused = LaunchInput {
        inputs: Map::new(),
        ..input
    };
    let out = launch.run(ctx(1), refused).await.expect("outcome");
    assert!(matches!(out, LaunchOutcome::Rejected { .. }), "{out:?}");
}

#[tokio::test]
async fn failures_are_retryable_and_open_the_breaker() {
    let h = start_with(fast_config(), |base| {
        let mut c = client_config(base);
        c.breaker = BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(30),
            max_open_for: Duration::from_secs(60),
        };
        c
    })
    .await;
    h.faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    })
    .await;
    for _ in 0..3 {
        let e = h.client.list_flows().await.expect_err("500");
        assert_eq!(e.status(), Some(500));
        let a: ActivityError = e.into();
        assert!(a.retryable);
        assert_eq!(a.code, "kodosumi.http_500");
    }
    assert!(matches!(
        h.client.breaker_state(),
        BreakerState::Open { .. }
    ));
    let e = h.client.list_flows().await.expect_err("fails fast");
    assert!(matches!(e, ClientError::CircuitOpen { .. }), "{e:?}");
    assert!(e.is_retryable());
    // The activity error of an open circuit is retryable too.
    let err = FetchResult::new(h.client.clone())
        .run(
            ctx(1),
            FetchResultInput {
                fid: "6b0422d36cc2496af2512fb4".into(),
            },
        )
        .await
        .expect_err("circuit open");
    assert_eq!(err.code, "kodosumi.circuit_open");
    assert!(err.retryable);
}

#[tokio::test]
async fn executions_are_private_to_their_user() {
    let config = KodosumiSimConfig {
        users: vec![
            ("admin".into(), "admin".into()),
            ("bob".into(), "secret".into()),
        ],
        ..fast_config()
    };
    let h = start(config).await;
    let url = h.hello_url().await;
    let LaunchResponse::Launched { fid } = h
        .client
        .launch(&url, &map(json!({"name": "Ann"})))
        .await
        .expect("launch")
    else {
        panic!("expected a launch");
    };
    assert!(h.client.status(&fid).await.expect("status").is_some());

    let mut bob_config = client_config(&h.base);
    bob_config.username = "bob".into();
    bob_config.password = "secret".into();
    let bob = KodosumiClient::new(bob_config).expect("client");
    assert_eq!(bob.poll_status(&fid).await.expect("answer"), None);
    assert!(
        bob.timeline(None, None)
            .await
            .expect("timeline")
            .items
            .is_empty()
    );
    let mine = h.client.timeline(None, None).await.expect("timeline");
    assert_eq!(mine.items.len(), 1);
    assert_eq!(mine.items[0].fid, fid);
    assert_eq!(mine.items[0].summary.as_deref(), Some("Hello World"));
}
