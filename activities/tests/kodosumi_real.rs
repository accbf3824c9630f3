//! The Kodosumi client and activities against a REAL Kodosumi 1.1.0 panel.
//!
//! Not part of CI: every test is `#[ignore]`d (CI has no Kodosumi) and, run with `--ignored`,
//! returns at once with a notice unless `KODOMASU_REAL_KODOSUMI_URL` is set. `scripts/real-kodosumi/run.sh` starts Ray, the flow app
//! `scripts/real-kodosumi/hello_app.py` ("Hello World" and "Confirm Flow", the same flows as the
//! recorded fixtures and the simulator), Kodosumi's spooler and panel, then runs
//!
//! ```text
//! KODOMASU_REAL_KODOSUMI_URL=http://127.0.0.1:3370 KODOMASU_REAL_KODOSUMI_APP=http://127.0.0.1:8011 \
//!   cargo test -p activities --test kodosumi_real -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Optional: `KODOMASU_REAL_KODOSUMI_APP` (the flow app's base URL, to check the flow paths and
//! uids), `KODOMASU_REAL_KODOSUMI_USER` / `_PASSWORD` (default admin/admin).
//! Each test prints what it saw, prefixed `[real]`.

use activities::ClientError;
use activities::kodosumi::schema;
use activities::kodosumi::types::{FlowForm, FormElement, TimelineItem, fid_timestamp};
use activities::kodosumi::{
    AwaitExecutionChange, AwaitExecutionChangeInput, ExecState, ExecutionObservation,
    ExecutionView, FetchResult, FetchResultInput, Flow, GetLockForm, GetLockFormInput, Kill,
    KillInput, KodosumiClient, KodosumiConfig, LOCK_GONE, Launch, LaunchInput, LaunchOutcome,
    LaunchResponse, NOT_CREATED_YET, ReleaseLock, ReleaseLockInput, result_text,
};
use chrono::Utc;
use engine::{Activity, ActivityContext, WorkflowId};
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const URL_VAR: &str = "KODOMASU_REAL_KODOSUMI_URL";

/// A connection to the real panel.
struct Real {
    base: String,
    app: Option<String>,
    user: String,
    password: String,
    client: Arc<KodosumiClient>,
    http: reqwest::Client,
}

impl Real {
    /// `None` (and a notice) unless `KODOMASU_REAL_KODOSUMI_URL` is set.
    fn from_env(test: &str) -> Option<Self> {
        let base = match std::env::var(URL_VAR) {
            Ok(u) if !u.trim().is_empty() => u.trim().trim_end_matches('/').to_owned(),
            _ => {
                println!(
                    "[real] {test}: skipped, {URL_VAR} is not set (run scripts/real-kodosumi/run.sh)"
                );
                return None;
            }
        };
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        let user = var("KODOMASU_REAL_KODOSUMI_USER", "admin");
        let password = var("KODOMASU_REAL_KODOSUMI_PASSWORD", "admin");
        let app = std::env::var("KODOMASU_REAL_KODOSUMI_APP")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('/').to_owned());
        let mut config = KodosumiConfig::new(base.clone(), user.clone(), password.clone());
        config.timeout = Duration::from_secs(20);
        config.raw_timeout = Duration::from_secs(30);
        let client = Arc::new(KodosumiClient::new(config).expect("client"));
        println!("[real] === {test} against {base}");
        Some(Self {
            base,
            app,
            user,
            password,
            client,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http"),
        })
    }

    /// A raw request with a fresh token, for what the client hides (status codes, bodies).
    async fn raw(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, String) {
        let login: Value = self
            .http
            .post(format!("{}/api/login", self.base))
            .json(&json!({"name": self.user, "password": self.password}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login json");
        let token = login["KODOSUMI_API_KEY"]
            .as_str()
            .expect("token")
            .to_owned();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("KODOSUMI_API_KEY", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    async fn flow(&self, summary: &str) -> Flow {
        let flows = self.client.list_flows().await.expect("list_flows");
        flows
            .into_iter()
            .find(|f| f.summary == summary)
            .unwrap_or_else(|| panic!("flow {summary:?} is not registered"))
    }

    async fn launch(&self, flow: &Flow, inputs: &Value) -> String {
        match self
            .client
            .launch(&flow.url, &map(inputs.clone()))
            .await
            .expect("launch")
        {
            LaunchResponse::Launched { fid } => fid,
            LaunchResponse::Rejected { errors } => panic!("launch refused: {errors:?}"),
        }
    }

    /// Polls `poll_status` (no `extended`) every 250 ms until the run is final or `limit`
    /// passes; prints each change (`404` while the run is unknown) with the time since start.
    async fn watch(&self, fid: &str, limit: Duration) -> Vec<(u128, String)> {
        let t0 = Instant::now();
        let mut seen: Vec<(u128, String)> = Vec::new();
        loop {
            let s = self.client.poll_status(fid).await.expect("poll_status");
            let label = s.as_ref().map_or("404".to_owned(), |s| {
                if s.locks.is_empty() {
                    s.status.as_str().to_owned()
                } else {
                    format!("{}+{}lock", s.status.as_str(), s.locks.len())
                }
            });
            if seen.last().map(|(_, l)| l) != Some(&label) {
                seen.push((t0.elapsed().as_millis(), label));
            }
            if s.as_ref().is_some_and(|s| s.status.is_final()) || t0.elapsed() > limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let trace: Vec<String> = seen.iter().map(|(t, l)| format!("{l}@{t}ms")).collect();
        println!("[real]   {fid}: {}", trace.join(" -> "));
        seen
    }
}

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn ctx(attempt: u32) -> ActivityContext {
    ActivityContext::for_test(WorkflowId::new(), attempt)
}

/// A name no earlier run used (the timeline keeps runs of earlier test runs).
fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{:x}", n % 0xff_ffff_ffff)
}

/// The body of a recorded `.txt` fixture (after the headers).
fn fixture_body(text: &str) -> &str {
    text.split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .map_or(text, |(_, b)| b)
        .trim()
}

/// The form as JSON with every select option's `value` flag nulled, and the flags.
fn split_option_flags(form: &FlowForm) -> (Value, Vec<Value>) {
    let mut v = serde_json::to_value(form).expect("ser");
    let mut flags = Vec::new();
    if let Some(elements) = v.get_mut("elements").and_then(Value::as_array_mut) {
        for e in elements {
            if let Some(options) = e.get_mut("option").and_then(Value::as_array_mut) {
                for o in options {
                    if let Some(flag) = o.get_mut("value") {
                        flags.push(flag.take());
                    }
                }
            }
        }
    }
    (v, flags)
}

/// Awaits changes through the activity until `done` holds for the view, printing each one.
async fn await_until(
    real: &Real,
    fid: &str,
    limit: Duration,
    done: impl Fn(&ExecutionView) -> bool,
) -> ExecutionView {
    let act = AwaitExecutionChange::new(real.client.clone());
    let mut known: Option<ExecState> = None;
    let mut known_locks: Vec<String> = Vec::new();
    let t0 = Instant::now();
    loop {
        let input = AwaitExecutionChangeInput {
            fid: fid.to_owned(),
            known_status: known,
            known_locks: known_locks.clone(),
            until: Utc::now() + chrono::Duration::seconds(20),
            poll_min_ms: 200,
            poll_max_ms: 1_000,
        };
        let obs = act
            .run(ctx(1), input)
            .await
            .expect("await_execution_change");
        match obs {
            ExecutionObservation::Changed { view, .. } => {
                println!(
                    "[real]   await: changed to {} locks={:?} final={:?} after {} ms",
                    view.status.as_str(),
                    view.locks,
                    view.final_raw,
                    t0.elapsed().as_millis()
                );
                if done(&view) {
                    return view;
                }
                known = Some(view.status);
                known_locks = view.locks.clone();
            }
            ExecutionObservation::Unchanged { view, .. } => {
                println!("[real]   await: unchanged ({})", view.status.as_str());
            }
            ExecutionObservation::NotFound { .. } => panic!("{fid} not found"),
        }
        assert!(
            t0.elapsed() < limit,
            "{fid}: no final state within {limit:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
#[ignore = "needs a real Kodosumi 1.1.0: run scripts/real-kodosumi/run.sh"]
async fn t1_login_health_and_flows() {
    let Some(real) = Real::from_env("login, health, flows") else {
        return;
    };
    real.client.login().await.expect("login");
    println!("[real]   POST /api/login as {}: ok", real.user);

    let mut wrong = KodosumiConfig::new(real.base.clone(), real.user.clone(), "not-the-password");
    wrong.timeout = Duration::from_secs(10);
    let wrong = KodosumiClient::new(wrong).expect("client");
    let e = wrong
        .list_flows()
        .await
        .expect_err("a wrong password fails");
    println!("[real]   wrong password: {e}");
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_retryable());

    let (code, body) = real.raw(reqwest::Method::GET, "/flow", None).await;
    assert_eq!(code, 200, "{body}");
    let (code, _) = {
        let r = real
            .http
            .get(format!("{}/flow", real.base))
            .header("KODOSUMI_API_KEY", "not.a.jwt")
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    };
    println!("[real]   a bad token gets {code}");
    assert_eq!(code, 401);

    let health = real.client.health().await.expect("health");
    println!(
        "[real]   health: kodosumi {:?}, ray {:?}, spooler {}",
        health.kodosumi_version, health.ray_version, health.spooler_status
    );
    assert_eq!(health.kodosumi_version.as_deref(), Some("1.1.0"));

    let flows = real.client.list_flows().await.expect("list_flows");
    for f in &flows {
        println!(
            "[real]   flow {:?}: url {} uid {} source {} base_url {} tags {:?}",
            f.summary, f.url, f.uid, f.source, f.base_url, f.tags
        );
        assert_eq!(
            f.uid,
            hex::encode(Md5::digest(f.url.as_bytes())),
            "uid = md5(url)"
        );
        assert_eq!(f.method, "GET");
    }
    let summaries: Vec<&str> = flows.iter().map(|f| f.summary.as_str()).collect();
    assert!(summaries.contains(&"Hello World") && summaries.contains(&"Confirm Flow"));
    let mut sorted = summaries.clone();
    sorted.sort();
    assert_eq!(summaries, sorted, "sorted by summary");
    if let Some(app) = &real.app {
        let hostport = app.trim_start_matches("http://").replace(':', "/");
        let hello = flows
            .iter()
            .find(|f| f.summary == "Hello World")
            .expect("hello");
        assert_eq!(hello.url, format!("/-/{hostport}/-/"));
        assert_eq!(hello.source, format!("{app}/openapi.json"));
        assert_eq!(hello.base_url, format!("{app}/"));
        let confirm = flows
            .iter()
            .find(|f| f.summary == "Confirm Flow")
            .expect("c");
        assert_eq!(confirm.url, format!("/-/{hostport}/-/confirm"));
    }

    // Paging one at a time: offset = the uid of the page's last item, null at the end.
    let mut offset: Option<String> = None;
    let mut paged = Vec::new();
    for _ in 0..10 {
        let page = real
            .client
            .flow_page(None, 1, offset.as_deref())
            .await
            .expect("page");
        paged.extend(page.items.iter().map(|f| f.summary.clone()));
        println!(
            "[real]   /flow?pp=1 offset={offset:?}: {:?}, next offset {:?}",
            page.items.iter().map(|f| &f.summary).collect::<Vec<_>>(),
            page.offset
        );
        match page.offset {
            Some(o) => offset = Some(o),
            None => break,
        }
    }
    assert_eq!(paged, summaries);
    let hitl = real
        .client
        .flow_page(Some("hitl"), 10, None)
        .await
        .expect("q");
    println!(
        "[real]   /flow?q=hitl: {:?}",
        hitl.items.iter().map(|f| &f.summary).collect::<Vec<_>>()
    );
    assert_eq!(hitl.items.len(), 1);
    assert_eq!(hitl.items[0].summary, "Confirm Flow");
}

#[tokio::test]
#[ignore = "needs a real Kodosumi 1.1.0: run scripts/real-kodosumi/run.sh"]
async fn t2_form_schema_and_validation() {
    let Some(real) = Real::from_env("form, MIP-003 schema, validation") else {
        return;
    };
    let hello = real.flow("Hello World").await;
    let form = real.client.flow_form(&hello.url).await.expect("flow_form");
    let recorded: FlowForm = serde_json::from_str(fixture_body(include_str!(
        "fixtures/kodosumi/schema_hello.txt"
    )))
    .expect("fixture");
    println!(
        "[real]   form: {} elements, openapi_extra {}",
        form.elements.len(),
        Value::Object(form.openapi_extra.clone())
    );
    // Kodosumi's Select.parse_value flips the `option[].value` flags of the app's shared form
    // model on every launch (the last launch's choice shows as selected), so those are compared
    // apart from the rest.
    let (real_form, real_flags) = split_option_flags(&form);
    let (recorded_form, recorded_flags) = split_option_flags(&recorded);
    assert_eq!(
        real_form, recorded_form,
        "the real form equals the recorded one"
    );
    println!(
        "[real]   form equals the recorded fixture schema_hello.txt; select option flags: real {real_flags:?}, recorded {recorded_flags:?}"
    );
    assert_eq!(
        schema::to_mip003(&form.elements),
        schema::to_mip003(&recorded.elements),
        "the MIP-003 schema does not depend on the option flags"
    );
    // Without the trailing slash too.
    let form2 = real
        .client
        .flow_form(hello.url.trim_end_matches('/'))
        .await
        .expect("flow_form without slash");
    assert_eq!(form2.elements, form.elements);

    let mip = schema::to_mip003(&form.elements);
    println!(
        "[real]   to_mip003: {}",
        serde_json::to_string(&mip).expect("ser")
    );
    let ids: Vec<&str> = mip.input_data.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["name", "seconds", "fail", "style"]);
    let good = json!({"name": "Alice", "seconds": 1, "fail": false, "style": "plain"});
    schema::validate(&mip, &good).expect("a good input validates");
    let bad = json!({"seconds": 100, "style": "loud"});
    let errors = schema::validate(&mip, &bad).expect_err("a bad input is refused");
    println!("[real]   validate({bad}): {errors}");
    assert!(errors.get("name").is_some() && errors.get("seconds").is_some());
    let body = schema::to_launch_inputs(&form.elements, &good);
    println!(
        "[real]   to_launch_inputs({good}) = {}",
        Value::Object(body)
    );

    let confirm = real.flow("Confirm Flow").await;
    let cform = real.client.flow_form(&confirm.url).await.expect("form");
    println!(
        "[real]   Confirm Flow to_mip003: {}",
        serde_json::to_string(&schema::to_mip003(&cform.elements)).expect("ser")
    );

    let unknown = real.client.flow_form("/-/127.0.0.1/1/-/nope").await;
    println!("[real]   form of an unknown flow: {unknown:?}");
    assert_eq!(unknown.expect_err("unknown").status(), Some(404));
}

#[tokio::test]
#[ignore = "needs a real Kodosumi 1.1.0: run scripts/real-kodosumi/run.sh"]
async fn t3_launch_status_result_timeline() {
    let Some(real) = Real::from_env("launch, status, result, timeline") else {
        return;
    };
    let hello = real.flow("Hello World").await;
    let form = real.client.flow_form(&hello.url).await.expect("form");
    let name = unique("Alice");
    let input = json!({"name": name, "seconds": 2, "fail": false, "style": "plain"});
    schema::validate(&schema::to_mip003(&form.elements), &input).expect("valid");
    let body = schema::to_launch_inputs(&form.elements, &input);
    let launched_at = Utc::now();
    let fid = real.launch(&hello, &Value::Object(body)).await;
    println!("[real]   launched {fid}");
    assert!(fid.len() == 24 && fid.bytes().all(|b| b.is_ascii_hexdigit()));
    let t = fid_timestamp(&fid).expect("an ObjectId");
    assert!((t - launched_at.timestamp()).abs() < 120, "fid time {t}");

    let seen = real.watch(&fid, Duration::from_secs(60)).await;
    assert_eq!(seen.last().map(|(_, l)| l.as_str()), Some("finished"));

    let status = real
        .client
        .status(&fid)
        .await
        .expect("status")
        .expect("known");
    println!(
        "[real]   status: {}",
        serde_json::to_string(&status).expect("ser")
    );
    assert_eq!(status.status, ExecState::Finished);
    assert_eq!(status.fid.as_deref(), Some(fid.as_str()));
    assert_eq!(status.summary.as_deref(), Some("Hello World"));
    assert_eq!(status.entry_point.as_deref(), Some("hello_app:run_hello"));
    assert!(status.locks.is_empty());
    let final_raw = status.final_result.clone().expect("final");
    let raw = real.client.raw_result(&fid).await.expect("raw_result");
    println!(
        "[real]   raw_result: {raw}  -> result_text {:?}",
        result_text(&raw)
    );
    assert_eq!(raw, final_raw);
    assert_eq!(result_text(&raw), format!("Hello {name}"));

    let item = real
        .client
        .find_execution(
            "Hello World",
            launched_at - chrono::Duration::seconds(60),
            |i| i.fid == fid,
        )
        .await
        .expect("timeline")
        .expect("listed");
    println!(
        "[real]   timeline item: {}",
        serde_json::to_string(&item).expect("ser")
    );
    assert_eq!(item.status.as_deref(), Some("finished"));
    assert_eq!(
        item.inputs,
        Some(json!({"dict": {"name": name, "seconds": 2, "fail": false, "style": "plain"}}))
    );
    let page = real.client.timeline(None, None).await.expect("timeline");
    println!(
        "[real]   /timeline/list: {} items, offset {:?}",
        page.items.len(),
        page.offset
    );
    assert_eq!(
        page.items.first().map(|i| i.fid.as_str()),
        Some(fid.as_str())
    );
    let after = real
        .client
        .timeline(None, page.offset.as_deref())
        .await
        .expect("next page");
    println!(
        "[real]   /timeline/list after {:?}: {} items, offset {:?}",
        page.offset,
        after.items.len(),
        after.offset
    );

    // A style given as a choice: the markdown result.
    let name2 = unique("Dave");
    let body = schema::to_launch_inputs(
        &form.elements,
        &json!({"name": name2, "seconds": 0, "style": "markdown"}),
    );
    let fid2 = real.launch(&hello, &Value::Object(body)).await;
    real.watch(&fid2, Duration::from_secs(60)).await;
    let raw2 = real.client.raw_result(&fid2).await.expect("raw");
    println!("[real]   markdown style: {raw2}");
    assert_eq!(result_text(&raw2), format!("# Hello {name2}\nDone."));
}

#[tokio::test]
#[ignore = "needs a real Kodosumi 1.1.0: run scripts/real-kodosumi/run.sh"]
async fn t4_launch_refused_by_the_flow() {
    let Some(real) = Real::from_env("launch refused (InputsError)") else {
        return;
    };
    let hello = real.flow("Hello World").await;
    for inputs in [
        json!({"name": "", "seconds": "3"}),
        json!({"seconds": "99", "fail": "on"}),
    ] {
        let r = real
            .client
            .launch(&hello.url, &map(inputs.clone()))
            .await
            .expect("launch answer");
        println!("[real]   launch {inputs}: {r:?}");
        let LaunchResponse::Rejected { errors } = r else {
            panic!("not refused")
        };
        assert_eq!(errors.get("name"), Some(&json!(["Please give a name."])));
        assert_eq!(errors.get("_global_"), Some(&json!([])));
    }
    let act = Launch::new(real.client.clone());
    let out = act
        .run(
            ctx(1),
            LaunchInput {
                job_id: "refused".into(),
                flow_url: hello.url.clone(),
                flow_summary: hello.summary.clone(),
                inputs: map(json!({"name": ""})),
                intent_at: None,
            },
        )
        .await
        .expect("outcome");
    println!("[real]   Launch activity: {out:?}");
    assert!(matches!(out, LaunchOutcome::Rejected { .. }));

    let e = real
        .client
        .launch("/-/127.0.0.1/1/-/nope", &map(json!({"name": "x"})))
        .await
        .expect_err("unknown flow");
    println!("[real]   launch of an unknown flow: {e}");
    assert_eq!(e.status(), Some(404));
}

#[tokio::test]
#[ignore = "needs a real Kodosumi 1.1.0: run scripts/real-kodosumi/run.sh"]
async fn t5_failing_runs() {
    let Some(real) = Real::from_env("failing runs") else {
        return;
    };
    let hello = real.flow("Hello World").await;
    let bob = unique("Bob");
    let fid = real
        .launch(&hello, &json!({"name": bob, "seconds": "0", "fail": "on"}))
        .await;
    real.watch(&fid, Duration::from_secs(60)).await;
    let s = real
        .client
        .status(&fid)
        .await
        .expect("status")
        .expect("known");
    println!(
        "[real]   fail=\"on\": status {} final {:?}",
        s.status.as_str(),
        s.final_result
    );
    assert_eq!(s.status, ExecState::Error);
    let final_raw = s.final_result.expect("a KodosumiError has a final");
    assert_eq!(
        result_text(&final_raw),
        format!("failed on purpose for {bob}")
    );
    let raw = real.client.raw_result(&fid).await.expect("raw");
    println!("[real]   raw_result: {raw}");
    assert_eq!(result_text(&raw), format!("failed on purpose for {bob}"));

    // JSON true is not "on": Kodosumi passes fail=false and the run succeeds.
    let carol = unique("Carol");
    let fid = real
        .launch(
            &hello,
            &json!({"name": carol, "seconds": "0", "fail": true}),
        )
        .await;
    real.watch(&fid, Duration::from_secs(60)).await;
    let s = real.client.status(&fid).await.expect("s").expect("known");
    println!(
        "[real]   fail=true (JSON): status {} final {:?}",
        s.status.as_str(),
        s.final_result
    );
    assert_eq!(s.status, ExecState::Finished);

    // Any other exception: error, but no final, and raw is an empty Text.
    let fid = real
        .launch(&hello, &json!({"name": "crash", "seconds": "0"}))
        .await;
    real.watch(&fid, Duration::from_secs(60)).await;
    let s = real.client.status(&fid).await.expect("s").expect("known");
    let raw = real.client.raw_result(&fid).await.expect("raw");
    println!(
        "[real]   RuntimeError: status {} final {:?} raw {raw}",
        s.status.as_str(),
        s.final_result
    );
    assert_eq!(s.status, ExecState::Error);
    assert_eq!(s.final_result, None);
    assert_eq!(raw, r#"{"Text":{"body":""}}"#);
}

#[tokio::test]
#[ignore = "needs a real Kodosumi 1.1.0: run scripts/real-kodosumi/run.sh"]
async fn t6_kill_a_running_execution() {
    let Some(real) = Real::from_env("kill") else {
        return;
    };
    let hello = real.flow("Hello World").await;
    let fid = real
        .launch(&hello, &json!({"name": unique("Erin"), "seconds": "30"}))
        .await;
    let t0 = Instant::now();
    loop {
        let s = real.client.poll_status(&fid).await.expect("poll");
        if s.as_ref().is_some_and(|s| s.status == ExecState::Running) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "[real]   {fid} running after {} ms",
        t0.elapsed().as_millis()
    );
    let (code, body) = real
        .raw(reqwest::Method::DELETE, &format!("/outputs/{fid}"), None)
        .await;
    println!("[real]   DELETE /outputs/{fid} (running): {code} {body:?}");
    assert_eq!(code, 204);
    let s = real.client.poll_status(&fid).await.expect("poll");
    println!(
        "[real]   status after the kill: {:?}",
        s.as_ref().map(|s| s.status)
    );
    assert!(s.is_none(), "404 after a kill");
    let (code, body) = real
        .raw(reqwest::Method::DELETE, &format!("/outputs/{fid}"), None)
        .await;
    println!("[real]   DELETE again: {code} {body}");
    assert_eq!(code, 404);
    real.client
        .kill(&fid)
        .await
        .expect("kill of a gone run is ok");
    let listed = real
        .client
        .find_execution(
            "Hello World",
            Utc::now() - chrono::Duration::seconds(120),
            |i| i.fid == fid,
        )
        .await
        .expect("timeline");
    println!(
        "[real]   killed run in the timeline: {:?}",
        listed.map(|i| i.status)
    );

    // A DELETE in the first moments after the launch, before the spooler created the run.
    let fid = real
        .launch(&hello, &json!({"name": unique("Ivan"), "seconds": "1"}))
        .await;
    let t0 = Instant::now();
    let deleted = real.client.kill(&fid).await.expect("kill");
    println!(
        "[real]   DELETE right after the launch: deleted={deleted} (answered after {} ms)",
        t0.elapsed().as_millis()
    );
    let seen = real.watch(&fid, Duration::from_secs(8)).await;
    println!(
        "[real]   that run afterwards: {:?}",
        seen.last().map(|(_, l)| l)
    );

    // Through the activity, and the run really stops (its actor is gone: no final event).
    let fid = real
        .launch(&hello, &json!({"name": unique("Frank"), "seconds": "30"}))
        .await;
    let view = await_until(&real, &fid, Duration::from_secs(30), |v| {
        v.status == ExecState::Running
    })
    .await;
    assert_eq!(view.status, ExecState::Running);
    Kill::new(real.client.clone())
        .run(ctx(1), KillInput { fid: fid.clone() })
        .await
        .expect("Kill");
    // A 404 for a run this young may mean "not created yet": retried, unless the window is 0.
    let again = Kill::new(real.client.clone())
        .run(ctx(2), KillInput { fid: fid.clone() })
        .await;
    println!("[real]   Kill again (young run): {again:?}");
    assert!(again.is_err_and(|e| e.code == NOT_CREATED_YET && e.retryable));
    Kill::new(real.client.clone())
        .with_startup_404_window(Duration::ZERO)
        .run(ctx(3), KillInput { fid: fid.clone() })
        .await
        .expect("Kill again, no start-up window");
    let obs = AwaitExecutionChange::new(real.client.clone())
        .with_startup_404_window(Duration::from_secs(1))
        .run(
            ctx(1),
            AwaitExecutionChangeInput {
                fid: fid.clone(),
                known_status: Some(ExecState::Running),
                until: Utc::now() + chrono::Duration::seconds(20),
                poll_min_ms: 200,
                poll_max_ms: 500,
                ..AwaitExecutionChangeInput::default()
            },
        )
        .await
        .expect("await");
    println!("[real]   await after Kill: {obs:?}");
    assert!(matches!(obs, ExecutionObservation::NotFound { .. }));
}

#[tokio::test]
#[ignore = "needs a real Kodosumi 1.1.0: run scripts/real-kodosumi/run.sh"]
async fn t7_activities_and_launch_adoption() {
    let Some(real) = Real::from_env("activities: Launch (adoption), Await, FetchResult") else {
        return;
    };
    let hello = real.flow("Hello World").await;
    let form = real.client.flow_form(&hello.url).await.expect("form");
    let name = unique("Grace");
    let inputs = schema::to_launch_inputs(
        &form.elements,
        &json!({"name": name, "seconds": 3, "fail": false, "style": "plain"}),
    );
    let input = LaunchInput {
        job_id: "job-real-1".into(),
        flow_url: hello.url.clone(),
        flow_summary: hello.summary.clone(),
        inputs: inputs.clone(),
        intent_at: None,
    };
    let launch = Launch::new(real.client.clone());
    let LaunchOutcome::Launched { fid } = launch.run(ctx(1), input.clone()).await.expect("launch")
    else {
        panic!("refused")
    };
    println!("[real]   Launch attempt 1: {fid}");

    // Attempt 2 as after a lost answer: it must find and adopt the run, not start another.
    let t0 = Instant::now();
    let LaunchOutcome::Launched { fid: adopted } =
        launch.run(ctx(2), input.clone()).await.expect("retry")
    else {
        panic!("refused")
    };
    println!(
        "[real]   Launch attempt 2: {adopted} ({} ms)",
        t0.elapsed().as_millis()
    );
    assert_eq!(adopted, fid, "attempt 2 adopts the run of attempt 1");
    let found: Option<TimelineItem> = real
        .client
        .find_execution(
            "Hello World",
            Utc::now() - chrono::Duration::seconds(60),
            |i| {
                i.inputs
                    .as_ref()
                    .is_some_and(|v| v["dict"]["name"] == json!(name))
            },
        )
        .await
        .expect("find_execution");
    let runs = real
        .client
        .timeline(Some(&name), None)
        .await
        .expect("timeline q");
    println!(
        "[real]   runs with name {name}: {:?} (find_execution: {:?})",
        runs.items.iter().map(|i| &i.fid).collect::<Vec<_>>(),
        found.map(|i| i.fid)
    );
    assert_eq!(runs.items.len(), 1, "one run only");

    // Attempt 2 with other inputs launches anew.
    let other = LaunchInput {
        inputs: schema::to_launch_inputs(
            &form.elements,
            &json!({"name": unique("Heidi"), "seconds": 0}),
        ),
        ..input.clone()
    };
    let LaunchOutcome::Launched { fid: fresh } =
        launch.run(ctx(2), other).await.expect("retry other")
    else {
        panic!("refused")
    };
    println!("[real]   attempt 2 with other inputs: {fresh}");
    assert_ne!(fresh, fid);

    let view = await_until(&real, &fid, Duration::from_secs(60), |v| {
        v.status.is_final()
    })
    .await;
    assert_eq!(view.status, ExecState::Finished);
    let out = FetchResult::new(real.client.clone())
        .run(ctx(1), FetchResultInput { fid: fid.clone() })
        .await
        .expect("FetchResult");
    println!(
        "[real]   FetchResult: {} -> {:?}",
        out.raw,
        result_text(&out.raw)
    );
    assert_eq!(Some(out.raw.clone()), view.final_raw);
    assert_eq!(result_text(&out.raw), format!("Hello {name}"));
    real.watch(&fresh, Duration::from_secs(60)).await;
}

#[tokio::test]
#[ignore = "needs a real Kodosumi 1.1.0: run scripts/real-kodosumi/run.sh"]
async fn t8_lock_round_trip() {
    let Some(real) = Real::from_env("lock (awaiting) round trip") else {
        return;
    };
    let confirm = real.flow("Confirm Flow").await;
    let topic = unique("cats");
    let fid = real.launch(&confirm, &json!({"topic": topic})).await;
    println!("[real]   launched {fid}");
    let view = await_until(&real, &fid, Duration::from_secs(60), |v| {
        v.status == ExecState::Awaiting || v.status.is_final()
    })
    .await;
    assert_eq!(view.status, ExecState::Awaiting);
    assert_eq!(view.locks.len(), 1);
    let lid = view.locks[0].clone();
    let status = real.client.status(&fid).await.expect("s").expect("known");
    println!(
        "[real]   status while awaiting: {}",
        serde_json::to_string(&status).expect("ser")
    );
    let item = real
        .client
        .find_execution(
            "Confirm Flow",
            Utc::now() - chrono::Duration::seconds(120),
            |i| i.fid == fid,
        )
        .await
        .expect("timeline")
        .expect("listed");
    println!(
        "[real]   timeline while awaiting: status {:?} locks {:?}",
        item.status, item.locks
    );

    let form = GetLockForm::new(real.client.clone())
        .run(
            ctx(1),
            GetLockFormInput {
                fid: fid.clone(),
                lock_id: lid.clone(),
            },
        )
        .await
        .expect("GetLockForm");
    println!(
        "[real]   lock form: {}",
        serde_json::to_string(&form.elements).expect("ser")
    );
    let recorded: Value = serde_json::from_str(
        &fixture_body(include_str!("fixtures/kodosumi/lock_get.txt")).replace("cats", &topic),
    )
    .expect("fixture");
    assert_eq!(Value::Array(form.elements.clone()), recorded);
    let parsed: Vec<FormElement> = real.client.lock_form(&fid, &lid).await.expect("lock_form");
    assert_eq!(parsed.len(), form.elements.len());
    let mip = schema::lock_form_to_mip003(&form.elements);
    println!("[real]   lock form as MIP-003: {mip}");
    let mip: schema::Mip003Schema = serde_json::from_value(mip).expect("schema");
    let answer = json!({"comment": "looks good", "ok": true});
    schema::validate(&mip, &answer).expect("valid");
    let body = schema::mip003_to_lock_inputs(&mip, &answer);
    println!("[real]   release body: {}", Value::Object(body.clone()));

    let release = ReleaseLock::new(real.client.clone());
    let t0 = Instant::now();
    let out = release
        .run(
            ctx(1),
            ReleaseLockInput {
                fid: fid.clone(),
                lock_id: lid.clone(),
                inputs: body.clone(),
            },
        )
        .await
        .expect("ReleaseLock");
    println!(
        "[real]   ReleaseLock: {} (returned after {} ms, once the status stopped listing the lock)",
        out.result,
        t0.elapsed().as_millis()
    );
    assert_eq!(out.result, json!({"comment": "looks good", "ok": true}));
    // What the paid-job workflow does next: await a change from (running, no locks). The
    // released lock must not come back as a new request for input.
    let next = AwaitExecutionChange::new(real.client.clone())
        .run(
            ctx(1),
            AwaitExecutionChangeInput {
                fid: fid.clone(),
                known_status: Some(ExecState::Running),
                known_locks: vec![],
                until: Utc::now() + chrono::Duration::seconds(30),
                ..AwaitExecutionChangeInput::default()
            },
        )
        .await
        .expect("await after the release");
    println!("[real]   await from (running, []) right after ReleaseLock: {next:?}");
    if let ExecutionObservation::Changed { view, .. } = &next {
        assert!(
            !view.locks.contains(&lid),
            "the released lock {lid} is still listed right after ReleaseLock"
        );
    }
    let again = release
        .run(
            ctx(2),
            ReleaseLockInput {
                fid: fid.clone(),
                lock_id: lid.clone(),
                inputs: body,
            },
        )
        .await
        .expect_err("a second release");
    println!("[real]   second release: {} {}", again.code, again.message);
    assert_eq!(again.code, LOCK_GONE);
    let gone = real.client.lock_form(&fid, &lid).await;
    println!("[real]   lock form after the release: {gone:?}");
    assert!(matches!(gone, Err(ClientError::Status { status: 404, .. })));

    let view = await_until(&real, &fid, Duration::from_secs(60), |v| {
        v.status.is_final()
    })
    .await;
    assert_eq!(view.status, ExecState::Finished);
    let raw = real.client.raw_result(&fid).await.expect("raw");
    println!("[real]   result: {raw}");
    assert_eq!(
        result_text(&raw),
        format!("Topic {topic}: approved=True (looks good)")
    );
}
