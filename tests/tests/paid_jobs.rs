//! Paid jobs end to end, over HTTP, with real processes (issue 3, item 6): a `kodomasu server`
//! and a `kodomasu worker` on a fresh PostgreSQL database, against the Masumi and Kodosumi
//! simulators. A buyer calls the MIP-003 endpoints; the assertions come from the MIP-003
//! answers, the admin API (`GET /api/v1/workflows/{id}`: `status`, `state.phase`) and the
//! simulators' test controls (`/_sim/payments`: counters and state history per payment;
//! `/_sim/launches`: every Kodosumi run). Waits poll with generous timeouts; no test asserts
//! how fast anything happens.
//!
//! Every path of the `paid_job` state machine is covered: the happy path, no payment by
//! `payByTime`, an invalid payment closed by an operator, a Kodosumi error, waiting for input,
//! cancel before and after payment, a dispute refunded by configuration, pause and resume while
//! awaiting payment and while running; plus bad input on every MIP-003 endpoint.
//!
//! Run: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo test -p integration-tests --test paid_jobs`
//! after `cargo build -p api --bin kodomasu`.

mod common;

use activities::masumi::hash;
use activities::masumi::sim::{SIM_AGENT_IDENTIFIER, SIM_SELLER_VKEY};
use anyhow::{Context, ensure};
use common::paid::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Timeout of one wait for a state the job reaches by itself.
const WAIT: Duration = Duration::from_secs(60);
/// Timeout of a wait that includes refunds and withdrawals on the simulated chain.
const LONG: Duration = Duration::from_secs(120);
/// How long "nothing moves" is watched while a job is paused.
const QUIET: Duration = Duration::from_secs(3);

fn pays_after(ms: u64) -> Value {
    json!({"kind": "pay", "after_ms": ms})
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The MIP-003 statuses a buyer saw, with their status ids, consecutive repeats collapsed.
/// Checks on every observation that the status `id` changes exactly when the status does:
/// the same status keeps its id, a new status gets an id never seen before.
#[derive(Debug, Default)]
struct StatusTrail {
    seen: Vec<(String, String)>,
}

impl StatusTrail {
    fn observe(&mut self, view: &Value) -> anyhow::Result<()> {
        let status = view["status"]
            .as_str()
            .with_context(|| format!("status view without status: {view}"))?;
        let id = view["id"]
            .as_str()
            .with_context(|| format!("status view without id: {view}"))?;
        uuid::Uuid::parse_str(id).with_context(|| format!("status id `{id}` is not a UUID"))?;
        ensure!(
            view.get("input_schema").is_some() == (status == "awaiting_input"),
            "input_schema is shown exactly while awaiting input: {view}"
        );
        match self.seen.last() {
            Some((last_status, last_id)) if last_status == status => ensure!(
                last_id == id,
                "status stayed {status} but its id changed from {last_id} to {id} (trail {:?})",
                self.seen
            ),
            _ => {
                ensure!(
                    self.seen.iter().all(|(_, seen)| seen != id),
                    "status changed to {status} but kept an earlier id {id} (trail {:?})",
                    self.seen
                );
                self.seen.push((status.to_owned(), id.to_owned()));
            }
        }
        Ok(())
    }

    fn statuses(&self) -> Vec<&str> {
        self.seen.iter().map(|(s, _)| s.as_str()).collect()
    }

    /// The id of the first observation of `status`.
    fn id_of(&self, status: &str) -> Option<&str> {
        self.seen
            .iter()
            .find(|(s, _)| s == status)
            .map(|(_, id)| id.as_str())
    }
}

/// Polls `/status` (recording the trail) until `done` holds for the MIP-003 view.
async fn follow(
    env: &PaidEnv,
    flow_uid: &str,
    job: &str,
    trail: &mut StatusTrail,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let view = env.status(flow_uid, job).await?;
        trail.observe(&view)?;
        if done(&view) {
            return Ok(view);
        }
        if start.elapsed() > LONG {
            anyhow::bail!(
                "timed out waiting for job {job} {what}; MIP view {view}; admin {}",
                brief(&env.workflow(job).await?)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `/status` (recording the trail) until the workflow is finished in the admin API;
/// returns the last MIP-003 view and the admin view.
async fn follow_to_end(
    env: &PaidEnv,
    flow_uid: &str,
    job: &str,
    trail: &mut StatusTrail,
) -> anyhow::Result<(Value, Value)> {
    let start = Instant::now();
    loop {
        let view = env.status(flow_uid, job).await?;
        trail.observe(&view)?;
        let wf = env.workflow(job).await?;
        if matches!(
            wf["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            // The view read after the workflow finished is final.
            let view = env.status(flow_uid, job).await?;
            trail.observe(&view)?;
            return Ok((view, wf));
        }
        if start.elapsed() > LONG {
            anyhow::bail!(
                "timed out waiting for job {job} to finish; MIP view {view}; admin {}",
                brief(&wf)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a job and checks the 201 answer; returns the job id and the answer.
async fn start(
    env: &PaidEnv,
    flow_uid: &str,
    purchaser: &str,
    input: &Value,
) -> anyhow::Result<(String, Value)> {
    let a = env.start_job(flow_uid, purchaser, input.clone()).await?;
    ensure!(a.status == 201, "start_job: {a:?}");
    let id = a.body["id"]
        .as_str()
        .with_context(|| format!("start_job answer without id: {}", a.body))?
        .to_owned();
    Ok((id, a.body))
}

/// States the simulated payment went through, in order, without repeats.
fn chain_states(payment: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for change in payment["history"].as_array().into_iter().flatten() {
        let state = match &change["on_chain_state"] {
            Value::String(s) => s.clone(),
            _ => "null".to_owned(),
        };
        if out.last() != Some(&state) {
            out.push(state);
        }
    }
    out
}

/// Causes of the simulated payment's state changes, in order.
fn chain_causes(payment: &Value) -> Vec<String> {
    payment["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cause"].as_str().map(str::to_owned))
        .collect()
}

fn counter(payment: &Value, name: &str) -> u64 {
    payment["counters"][name].as_u64().unwrap_or(u64::MAX)
}

/// Unix seconds at which the simulated payment first reached `state`.
fn reached_at(payment: &Value, state: &str) -> Option<f64> {
    payment["history"]
        .as_array()?
        .iter()
        .find(|c| c["on_chain_state"] == json!(state))
        .and_then(|c| c["at"].as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_micros() as f64 / 1e6)
}

// ---------------------------------------------------------------------------------------------
// 1. Happy path

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_completes_and_submits_the_result_hash_once() -> anyhow::Result<()> {
    let env = PaidEnv::start("paid_happy_path", PaidEnvOptions::default()).await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, pays_after(1_000)).await?;
    // `style` as an index array, as buyers such as Sokosumi send options.
    let input = json!({"name": "Alice", "seconds": 1, "fail": false, "style": [1]});

    let before = now_ms();
    let a = env.start_job(&env.hello_uid, &buyer, input.clone()).await?;
    let after = now_ms();
    assert_eq!(a.status, 201, "start_job: {a:?}");
    let job = &a.body;
    let id = job["id"].as_str().context("id")?.to_owned();
    uuid::Uuid::parse_str(&id).context("the job id is a UUID")?;
    let payment = env.payment_of(&buyer).await?;
    assert_eq!(
        job["blockchainIdentifier"], payment["blockchain_identifier"],
        "the payment service's blockchain identifier"
    );
    assert_eq!(job["agentIdentifier"], json!(SIM_AGENT_IDENTIFIER));
    assert_eq!(job["sellerVKey"], json!(SIM_SELLER_VKEY));
    assert_eq!(job["identifierFromPurchaser"], json!(buyer));
    let input_hash = hash::input_hash(&buyer, &input);
    assert_eq!(job["input_hash"], json!(input_hash), "MIP-004 input hash");
    assert_eq!(
        payment["input_hash"],
        json!(input_hash),
        "the payment request carries the input hash"
    );
    let times: Vec<i64> = [
        "payByTime",
        "submitResultTime",
        "unlockTime",
        "externalDisputeUnlockTime",
    ]
    .iter()
    .map(|k| {
        job[*k]
            .as_i64()
            .with_context(|| format!("{k} is an integer: {job}"))
    })
    .collect::<anyhow::Result<_>>()?;
    let (pay_by, submit_by, unlock, dispute_unlock) = (times[0], times[1], times[2], times[3]);
    assert!(
        (before + 6_000 - 1_000..=after + 6_000 + 1_000).contains(&pay_by),
        "payByTime is start + --pay-by 6s, in ms: {pay_by} vs [{before}, {after}]"
    );
    assert!(
        (before + 3_600_000 - 1_000..=after + 3_600_000 + 1_000).contains(&submit_by),
        "submitResultTime is start + --submit-result-within 1h, in ms: {submit_by}"
    );
    assert!(
        pay_by < submit_by && submit_by <= unlock && unlock <= dispute_unlock,
        "deadlines in order: {times:?}"
    );

    // A buyer retrying the same request gets the same job, and no second payment request.
    let again = env.start_job(&env.hello_uid, &buyer, input.clone()).await?;
    assert_eq!(again.status, 200, "a repeated start_job: {again:?}");
    assert_eq!(again.body["id"], json!(id));
    assert_eq!(counter(&env.payment_of(&buyer).await?, "create_calls"), 1);

    let mut trail = StatusTrail::default();
    let (view, wf) = follow_to_end(&env, &env.hello_uid, &id, &mut trail).await?;
    assert_eq!(
        trail.statuses(),
        ["awaiting_payment", "running", "completed"],
        "MIP-003 statuses the buyer saw (ids {:?})",
        trail.seen
    );
    assert_eq!(wf["status"], json!("completed"), "{}", brief(&wf));
    assert_eq!(wf["state"]["phase"], json!("completed"));
    assert_eq!(view["status"], json!("completed"));
    assert_eq!(view["job_id"], json!(id));
    let result = view["result"]
        .as_str()
        .with_context(|| format!("a completed status has a result: {view}"))?;
    assert!(result.contains("Hello Alice"), "result: {result:?}");

    let payment = env.payment_of(&buyer).await?;
    let expected = hash::output_hash(&buyer, result);
    assert_eq!(counter(&payment, "submit_result_accepted"), 1, "{payment}");
    assert_eq!(
        payment["counters"]["result_hashes"],
        json!([expected]),
        "the submitted hash is output_hash(purchaser, result)"
    );
    assert_eq!(payment["result_hash"], json!(expected), "the hash on chain");
    assert_eq!(counter(&payment, "authorize_refund_accepted"), 0);
    assert_eq!(payment["on_chain_state"], json!("Withdrawn"));
    assert_eq!(
        chain_states(&payment),
        ["null", "FundsLocked", "ResultSubmitted", "Withdrawn"]
    );
    assert_eq!(wf["output"]["on_chain_state"], json!("Withdrawn"));
    assert_eq!(wf["output"]["result"], json!(result));
    assert_eq!(wf["output"]["result_hash"], json!(expected));

    let launches = env.launches().await?;
    assert_eq!(
        launches.len(),
        1,
        "exactly one Kodosumi launch: {launches:?}"
    );
    let run = &launches[0];
    assert_eq!(run["flow_summary"], json!(HELLO));
    assert_eq!(run["status"], json!("finished"));
    assert_eq!(run["killed"], json!(false));
    assert_eq!(run["inputs_passed"]["name"], json!("Alice"));
    assert_eq!(run["inputs_passed"]["fail"], json!(false));
    assert_eq!(
        run["inputs_passed"]["style"],
        json!("markdown"),
        "the option index reached Kodosumi as the option's value"
    );
    let locked = reached_at(&payment, "FundsLocked").context("FundsLocked in the history")?;
    let launched = run["launched_at"].as_f64().context("launched_at")?;
    assert!(
        launched >= locked,
        "launched on Kodosumi ({launched}) only after FundsLocked ({locked})"
    );
    eprintln!(
        "happy path: statuses {:?}; result {result:?}; hash {expected} submitted once; payment {:?}",
        trail.statuses(),
        chain_states(&payment)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. No payment by payByTime

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_payment_by_pay_by_time_fails_without_launch() -> anyhow::Result<()> {
    let env = PaidEnv::start("paid_no_payment", PaidEnvOptions::default()).await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, json!({"kind": "never_pay"}))
        .await?;
    let (id, _) = start(&env, &env.hello_uid, &buyer, &json!({"name": "Nobody"})).await?;

    let mut trail = StatusTrail::default();
    let (view, wf) = follow_to_end(&env, &env.hello_uid, &id, &mut trail).await?;
    assert_eq!(trail.statuses(), ["awaiting_payment", "failed"]);
    assert_eq!(wf["status"], json!("failed"), "{}", brief(&wf));
    assert_eq!(wf["error"]["code"], json!("payment_timeout"));
    assert_eq!(wf["state"]["phase"], json!("payment_timed_out"));
    assert!(view["message"].is_string(), "failed with a message: {view}");
    assert!(view.get("result").is_none(), "no result: {view}");

    let payment = env.payment_of(&buyer).await?;
    assert_eq!(payment["on_chain_state"], Value::Null, "no money moved");
    assert_eq!(counter(&payment, "submit_result_accepted"), 0);
    assert_eq!(counter(&payment, "authorize_refund_accepted"), 0);
    assert!(env.launches().await?.is_empty(), "nothing was launched");

    // The same request again, after the job ended: refused, no new job.
    let rows = env.workflow_rows().await?;
    let again = env
        .start_job(&env.hello_uid, &buyer, json!({"name": "Nobody"}))
        .await?;
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(again.body["code"], json!("job_exists"));
    assert_eq!(env.workflow_rows().await?, rows);
    eprintln!(
        "no payment: {:?}, message {}",
        trail.statuses(),
        view["message"]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. FundsOrDatumInvalid: the job waits for an operator

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payment_waits_for_an_operator_who_closes_it() -> anyhow::Result<()> {
    let env = PaidEnv::start("paid_invalid_payment", PaidEnvOptions::default()).await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, json!({"kind": "pay_invalid", "after_ms": 1_000}))
        .await?;
    let (id, job) = start(&env, &env.hello_uid, &buyer, &json!({"name": "Mallory"})).await?;
    let pay_by = job["payByTime"].as_i64().context("payByTime")?;

    env.wait_phase(&id, "payment_invalid", WAIT).await?;
    let payment = env.payment_of(&buyer).await?;
    assert_eq!(payment["on_chain_state"], json!("FundsOrDatumInvalid"));
    let view = env.status(&env.hello_uid, &id).await?;
    assert_eq!(view["status"], json!("awaiting_payment"), "{view}");
    assert!(
        view["message"].as_str().is_some_and(|m| !m.is_empty()),
        "awaiting_payment with a message for the buyer: {view}"
    );

    // It waits for the operator, also past payByTime.
    while now_ms() < pay_by + 2_000 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wf = env.workflow(&id).await?;
    assert_eq!(wf["status"], json!("running"), "{}", brief(&wf));
    assert_eq!(wf["state"]["phase"], json!("payment_invalid"));
    let later = env.status(&env.hello_uid, &id).await?;
    assert_eq!(later, view, "the MIP-003 view did not change while waiting");
    assert!(env.launches().await?.is_empty(), "nothing was launched");

    env.signal(&id, "operator", json!("close")).await?;
    let wf = env.wait_finished(&id, WAIT).await?;
    assert_eq!(wf["status"], json!("failed"), "{}", brief(&wf));
    assert_eq!(wf["error"]["code"], json!("payment_invalid"));
    assert_eq!(wf["state"]["phase"], json!("failed"));
    let end = env.status(&env.hello_uid, &id).await?;
    assert_eq!(end["status"], json!("failed"));
    assert_ne!(
        end["id"], view["id"],
        "the status id changed with the status"
    );

    let payment = env.payment_of(&buyer).await?;
    assert_eq!(counter(&payment, "submit_result_accepted"), 0);
    assert_eq!(counter(&payment, "authorize_refund_accepted"), 0);
    assert!(env.launches().await?.is_empty(), "nothing was launched");
    eprintln!(
        "invalid payment: waited in payment_invalid past payByTime; closed by the operator → {}",
        end["message"]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Kodosumi error

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kodosumi_error_fails_without_a_result_and_follows_the_refund() -> anyhow::Result<()> {
    let env = PaidEnv::start(
        "paid_kodosumi_error",
        PaidEnvOptions {
            seller_window: Duration::from_secs(3),
            ..PaidEnvOptions::default()
        },
    )
    .await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, pays_after(1_000)).await?;
    let (id, _) = start(
        &env,
        &env.hello_uid,
        &buyer,
        &json!({"name": "Bob", "fail": true}),
    )
    .await?;

    let mut trail = StatusTrail::default();
    let (view, wf) = follow_to_end(&env, &env.hello_uid, &id, &mut trail).await?;
    assert_eq!(trail.statuses(), ["awaiting_payment", "running", "failed"]);
    assert_eq!(wf["status"], json!("failed"), "{}", brief(&wf));
    assert_eq!(wf["error"]["code"], json!("kodosumi_error"));
    assert_eq!(wf["state"]["phase"], json!("refunded"));
    assert!(view.get("result").is_none(), "no result: {view}");
    assert!(
        view["message"]
            .as_str()
            .is_some_and(|m| m.contains("failed on purpose for Bob")),
        "the failure is explained: {view}"
    );

    let payment = env.payment_of(&buyer).await?;
    assert_eq!(counter(&payment, "submit_result_accepted"), 0, "{payment}");
    assert_eq!(payment["counters"]["result_hashes"], json!([]));
    assert_eq!(payment["on_chain_state"], json!("RefundWithdrawn"));
    assert!(
        chain_causes(&payment).contains(&"buyer_withdraws_refund".to_owned()),
        "{:?}",
        chain_causes(&payment)
    );
    assert_eq!(
        chain_states(&payment),
        ["null", "FundsLocked", "RefundWithdrawn"]
    );

    let launches = env.launches().await?;
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert_eq!(launches[0]["status"], json!("error"));
    assert_eq!(
        launches[0]["inputs_passed"]["fail"],
        json!(true),
        "the checkbox reached the flow as checked"
    );
    eprintln!(
        "kodosumi error: {:?}; payment {:?}; message {}",
        trail.statuses(),
        chain_states(&payment),
        view["message"]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Waiting for input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_input_is_answered_through_provide_input() -> anyhow::Result<()> {
    let env = PaidEnv::start("paid_awaiting_input", PaidEnvOptions::default()).await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, pays_after(1_000)).await?;
    let uid = env.confirm_uid.clone();
    let (id, _) = start(&env, &uid, &buyer, &json!({"topic": "Rust"})).await?;

    let mut trail = StatusTrail::default();
    let waiting = follow(&env, &uid, &id, &mut trail, "to await input", |v| {
        v["status"] == json!("awaiting_input")
    })
    .await?;
    let stale = trail
        .id_of("awaiting_payment")
        .context("awaiting_payment was seen")?
        .to_owned();
    let status_id = waiting["id"].as_str().context("status id")?.to_owned();
    let fields: Vec<&str> = waiting["input_schema"]["input_data"]
        .as_array()
        .with_context(|| format!("awaiting_input carries an input_schema: {waiting}"))?
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(
        fields,
        ["comment", "ok"],
        "the lock's form as MIP-003 input_schema"
    );

    let provide = |status_id: String, input_data: Value| {
        let body = json!({"job_id": id, "status_id": status_id, "input_data": input_data});
        let path = format!("/{uid}/provide_input");
        let env = &env;
        async move { env.post_json(&path, &body).await }
    };
    let good = json!({"comment": "looks good", "ok": true});

    let a = provide(stale.clone(), good.clone()).await?;
    assert_eq!(a.status, 409, "a stale status_id: {a:?}");
    assert_eq!(a.body["code"], json!("stale_status_id"));
    for bad in [
        json!({"comment": "x", "ok": "yes"}),
        json!({"comment": 5}),
        json!({"ok": true, "unknown": 1}),
        json!("not an object"),
    ] {
        let a = provide(status_id.clone(), bad.clone()).await?;
        assert_eq!(a.status, 400, "bad input {bad}: {a:?}");
        assert_eq!(a.body["code"], json!("invalid_input_data"), "{a:?}");
        assert!(a.body["message"].is_string());
    }
    let view = env.status(&uid, &id).await?;
    assert_eq!(
        (view["status"].clone(), view["id"].clone()),
        (json!("awaiting_input"), json!(status_id)),
        "refused input changed nothing"
    );

    let a = provide(status_id.clone(), good.clone()).await?;
    assert_eq!(a.status, 200, "provide_input: {a:?}");
    assert_eq!(
        a.body["input_hash"],
        json!(hash::input_hash(&buyer, &good)),
        "MIP-004 hash of the provided input"
    );
    assert!(a.body["signature"].is_string(), "{a:?}");

    let (view, wf) = follow_to_end(&env, &uid, &id, &mut trail).await?;
    assert_eq!(
        trail.statuses(),
        [
            "awaiting_payment",
            "running",
            "awaiting_input",
            "running",
            "completed"
        ]
    );
    assert_eq!(wf["status"], json!("completed"), "{}", brief(&wf));
    let result = view["result"].as_str().context("result")?;
    assert!(
        result.contains("Topic Rust: approved=true (looks good)"),
        "the flow got the input: {result:?}"
    );
    let again = provide(status_id, good).await?;
    assert_eq!(
        again.status, 409,
        "input for a job no longer waiting: {again:?}"
    );

    let payment = env.payment_of(&buyer).await?;
    assert_eq!(counter(&payment, "submit_result_accepted"), 1);
    assert_eq!(
        payment["counters"]["result_hashes"],
        json!([hash::output_hash(&buyer, result)])
    );
    assert_eq!(payment["on_chain_state"], json!("Withdrawn"));
    let launches = env.launches().await?;
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert_eq!(launches[0]["flow_summary"], json!(CONFIRM));
    assert_eq!(launches[0]["status"], json!("finished"));
    eprintln!("awaiting input: {:?}; result {result:?}", trail.statuses());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Cancel before payment

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_payment_cancels_and_launches_nothing() -> anyhow::Result<()> {
    let env = PaidEnv::start(
        "paid_cancel_before_payment",
        PaidEnvOptions {
            seller_window: Duration::from_secs(3),
            ..PaidEnvOptions::default()
        },
    )
    .await?;
    let buyer = purchaser();
    // The buyer pays late: after the job was cancelled, still before payByTime.
    env.preset_buyer(&buyer, pays_after(4_000)).await?;
    let (id, _) = start(&env, &env.hello_uid, &buyer, &json!({"name": "Carol"})).await?;
    let view = env.status(&env.hello_uid, &id).await?;
    assert_eq!(view["status"], json!("awaiting_payment"));

    env.signal(&id, "cancel", Value::Null).await?;
    let wf = env.wait_finished(&id, WAIT).await?;
    assert_eq!(wf["status"], json!("cancelled"), "{}", brief(&wf));
    assert_eq!(wf["state"]["phase"], json!("cancelled"));
    let end = env.status(&env.hello_uid, &id).await?;
    assert_eq!(end["status"], json!("failed"), "{end}");
    assert_eq!(end["message"], json!("cancelled"));

    // The late payment lands, then goes back to the buyer; nothing is ever launched.
    let payment = env
        .wait_payment_state(&buyer, "RefundWithdrawn", LONG)
        .await?;
    assert_eq!(
        chain_states(&payment),
        ["null", "FundsLocked", "RefundWithdrawn"]
    );
    assert_eq!(counter(&payment, "submit_result_accepted"), 0);
    assert!(env.launches().await?.is_empty(), "nothing was launched");
    let wf = env.workflow(&id).await?;
    assert_eq!(wf["status"], json!("cancelled"));
    eprintln!(
        "cancel before payment: cancelled; the late payment went {:?}; no launch",
        chain_states(&payment)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Cancel after payment, while running

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_running_kills_the_run_and_follows_the_refund() -> anyhow::Result<()> {
    let env = PaidEnv::start(
        "paid_cancel_while_running",
        PaidEnvOptions {
            seller_window: Duration::from_secs(5),
            hello_duration: Duration::from_secs(600),
            ..PaidEnvOptions::default()
        },
    )
    .await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, pays_after(1_000)).await?;
    let (id, _) = start(&env, &env.hello_uid, &buyer, &json!({"name": "Dave"})).await?;

    env.wait_phase(&id, "running", WAIT).await?;
    let view = env.status(&env.hello_uid, &id).await?;
    assert_eq!(view["status"], json!("running"));
    let launches = env.launches().await?;
    assert_eq!(launches.len(), 1, "{launches:?}");

    env.signal(&id, "cancel", Value::Null).await?;
    let wf = env.wait_finished(&id, LONG).await?;
    assert_eq!(wf["status"], json!("cancelled"), "{}", brief(&wf));
    assert_eq!(wf["state"]["phase"], json!("refunded"));
    let end = env.status(&env.hello_uid, &id).await?;
    assert_eq!(end["status"], json!("failed"), "{end}");
    assert!(end.get("result").is_none());

    let launches = env.launches().await?;
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert_eq!(
        launches[0]["killed"],
        json!(true),
        "the Kodosumi run was killed: {launches:?}"
    );
    let payment = env.payment_of(&buyer).await?;
    assert_eq!(counter(&payment, "submit_result_accepted"), 0, "{payment}");
    assert_eq!(payment["on_chain_state"], json!("RefundWithdrawn"));
    assert_eq!(
        chain_states(&payment),
        ["null", "FundsLocked", "RefundWithdrawn"]
    );
    eprintln!(
        "cancel while running: run killed, payment {:?}, workflow cancelled",
        chain_states(&payment)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Dispute with refund_on_dispute

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispute_is_refunded_when_configured() -> anyhow::Result<()> {
    let env = PaidEnv::start(
        "paid_dispute",
        PaidEnvOptions {
            flows_file: Some("[defaults]\nrefund_on_dispute = true\n".to_owned()),
            ..PaidEnvOptions::default()
        },
    )
    .await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, json!({"kind": "dispute", "after_ms": 500}))
        .await?;
    let (id, _) = start(&env, &env.hello_uid, &buyer, &json!({"name": "Erin"})).await?;

    let mut trail = StatusTrail::default();
    let (view, wf) = follow_to_end(&env, &env.hello_uid, &id, &mut trail).await?;
    assert_eq!(
        trail.statuses(),
        ["awaiting_payment", "running", "completed", "failed"],
        "completed until the dispute refund, then failed"
    );
    assert_eq!(wf["status"], json!("failed"), "{}", brief(&wf));
    assert_eq!(wf["error"]["code"], json!("refunded_after_dispute"));
    assert_eq!(wf["state"]["phase"], json!("refunded"));
    assert_eq!(view["status"], json!("failed"));

    let payment = env.payment_of(&buyer).await?;
    assert_eq!(counter(&payment, "submit_result_accepted"), 1, "{payment}");
    assert_eq!(
        counter(&payment, "authorize_refund_accepted"),
        1,
        "authorize-refund called once"
    );
    assert_eq!(payment["on_chain_state"], json!("RefundWithdrawn"));
    assert_eq!(
        chain_states(&payment),
        [
            "null",
            "FundsLocked",
            "ResultSubmitted",
            "Disputed",
            "RefundRequested",
            "RefundWithdrawn"
        ]
    );
    let causes = chain_causes(&payment);
    for cause in [
        "buyer_disputes",
        "authorize_refund_confirmed",
        "buyer_withdraws_refund",
    ] {
        assert!(causes.contains(&cause.to_owned()), "{cause} in {causes:?}");
    }
    assert_eq!(env.launches().await?.len(), 1);
    eprintln!(
        "dispute: statuses {:?}; payment {:?}",
        trail.statuses(),
        chain_states(&payment)
    );
    Ok(())
}

/// The counterpart: without `refund_on_dispute` nothing is authorized; the admins settle the
/// dispute (`DisputedWithdrawn`) and the job completes with its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispute_is_left_to_the_admins_when_not_configured() -> anyhow::Result<()> {
    let env = PaidEnv::start(
        "paid_dispute_admins",
        PaidEnvOptions {
            seller_window: Duration::from_secs(3),
            ..PaidEnvOptions::default()
        },
    )
    .await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, json!({"kind": "dispute", "after_ms": 500}))
        .await?;
    let (id, _) = start(&env, &env.hello_uid, &buyer, &json!({"name": "Ivan"})).await?;

    let mut trail = StatusTrail::default();
    let (view, wf) = follow_to_end(&env, &env.hello_uid, &id, &mut trail).await?;
    assert_eq!(
        trail.statuses(),
        ["awaiting_payment", "running", "completed"]
    );
    assert_eq!(wf["status"], json!("completed"), "{}", brief(&wf));
    assert_eq!(wf["output"]["on_chain_state"], json!("DisputedWithdrawn"));
    let result = view["result"].as_str().context("result")?;
    let payment = env.payment_of(&buyer).await?;
    assert_eq!(counter(&payment, "submit_result_accepted"), 1);
    assert_eq!(
        payment["counters"]["result_hashes"],
        json!([hash::output_hash(&buyer, result)])
    );
    assert_eq!(
        counter(&payment, "authorize_refund_accepted"),
        0,
        "no refund authorized without refund_on_dispute"
    );
    assert_eq!(
        chain_states(&payment),
        [
            "null",
            "FundsLocked",
            "ResultSubmitted",
            "Disputed",
            "DisputedWithdrawn"
        ]
    );
    eprintln!(
        "dispute, not configured: payment {:?}; job completed",
        chain_states(&payment)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. Pause and resume

/// Checks that a paused workflow does not move for a while: same journal version and state.
async fn assert_still(env: &PaidEnv, id: &str, paused: &Value) -> anyhow::Result<()> {
    tokio::time::sleep(QUIET).await;
    let now = env.workflow(id).await?;
    assert_eq!(now["status"], json!("paused"), "{}", brief(&now));
    assert_eq!(
        now["version"], paused["version"],
        "nothing was journaled while paused"
    );
    assert_eq!(
        now["state"], paused["state"],
        "the state did not move while paused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_while_awaiting_payment_holds_the_job_until_resumed() -> anyhow::Result<()> {
    let env = PaidEnv::start("paid_pause_awaiting_payment", PaidEnvOptions::default()).await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, pays_after(3_000)).await?;
    let (id, _) = start(&env, &env.hello_uid, &buyer, &json!({"name": "Frank"})).await?;

    env.signal(&id, "pause", Value::Null).await?;
    let paused = env
        .wait_workflow(&id, "to be paused", WAIT, |wf| {
            wf["status"] == json!("paused")
        })
        .await?;
    assert_eq!(paused["state"]["phase"], json!("awaiting_payment"));

    // The buyer pays while the job is paused: it does not launch.
    env.wait_payment_state(&buyer, "FundsLocked", WAIT).await?;
    assert_still(&env, &id, &paused).await?;
    assert!(
        env.launches().await?.is_empty(),
        "nothing launched while paused"
    );
    let view = env.status(&env.hello_uid, &id).await?;
    assert_eq!(view["status"], json!("awaiting_payment"));

    env.signal(&id, "resume", Value::Null).await?;
    let mut trail = StatusTrail::default();
    let (view, wf) = follow_to_end(&env, &env.hello_uid, &id, &mut trail).await?;
    assert_eq!(wf["status"], json!("completed"), "{}", brief(&wf));
    let result = view["result"].as_str().context("result")?;
    let payment = env.payment_of(&buyer).await?;
    assert_eq!(counter(&payment, "submit_result_accepted"), 1);
    assert_eq!(
        payment["counters"]["result_hashes"],
        json!([hash::output_hash(&buyer, result)])
    );
    assert_eq!(payment["on_chain_state"], json!("Withdrawn"));
    assert_eq!(env.launches().await?.len(), 1);
    eprintln!("pause while awaiting payment: held while paused, completed after resume");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_while_running_holds_the_result_until_resumed() -> anyhow::Result<()> {
    let env = PaidEnv::start(
        "paid_pause_running",
        PaidEnvOptions {
            hello_duration: Duration::from_secs(4),
            ..PaidEnvOptions::default()
        },
    )
    .await?;
    let buyer = purchaser();
    env.preset_buyer(&buyer, pays_after(1_000)).await?;
    let (id, _) = start(&env, &env.hello_uid, &buyer, &json!({"name": "Grace"})).await?;

    env.wait_phase(&id, "running", WAIT).await?;
    env.signal(&id, "pause", Value::Null).await?;
    let paused = env
        .wait_workflow(&id, "to be paused", WAIT, |wf| {
            wf["status"] == json!("paused")
        })
        .await?;
    assert_eq!(
        paused["state"]["phase"],
        json!("running"),
        "{}",
        brief(&paused)
    );

    // The run finishes on Kodosumi while the job is paused: nothing is submitted.
    eventually("the Kodosumi run to finish", WAIT, || async {
        let launches = env.launches().await?;
        Ok((launches.len() == 1 && launches[0]["status"] == json!("finished")).then_some(()))
    })
    .await?;
    assert_still(&env, &id, &paused).await?;
    let view = env.status(&env.hello_uid, &id).await?;
    assert_eq!(view["status"], json!("running"));
    let payment = env.payment_of(&buyer).await?;
    assert_eq!(
        counter(&payment, "submit_result_accepted"),
        0,
        "nothing submitted while paused"
    );

    env.signal(&id, "resume", Value::Null).await?;
    let mut trail = StatusTrail::default();
    let (view, wf) = follow_to_end(&env, &env.hello_uid, &id, &mut trail).await?;
    assert_eq!(wf["status"], json!("completed"), "{}", brief(&wf));
    let result = view["result"].as_str().context("result")?;
    assert!(result.contains("Hello Grace"), "{result:?}");
    let payment = env.payment_of(&buyer).await?;
    assert_eq!(counter(&payment, "submit_result_accepted"), 1);
    assert_eq!(
        payment["counters"]["result_hashes"],
        json!([hash::output_hash(&buyer, result)])
    );
    assert_eq!(payment["on_chain_state"], json!("Withdrawn"));
    assert_eq!(env.launches().await?.len(), 1);
    eprintln!("pause while running: result held while paused, completed after resume");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bad input on every MIP-003 endpoint, and the shapes of the global endpoints

/// Checks a refusal: the status, a `{code, message}` body, and no workflow row written.
async fn refused(
    env: &PaidEnv,
    what: &str,
    answer: Answer,
    status: u16,
    code: Option<&str>,
    rows_before: i64,
) -> anyhow::Result<()> {
    ensure!(
        answer.status.as_u16() == status,
        "{what}: expected {status}, got {answer:?}"
    );
    ensure!(
        answer.body["code"].is_string() && answer.body["message"].is_string(),
        "{what}: a {{code, message}} body, got {answer:?}"
    );
    if let Some(code) = code {
        ensure!(
            answer.body["code"] == json!(code),
            "{what}: code {code}, got {answer:?}"
        );
    }
    let rows = env.workflow_rows().await?;
    ensure!(
        rows == rows_before,
        "{what}: {} workflow rows written",
        rows - rows_before
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_mip003_endpoint_is_refused_without_writes() -> anyhow::Result<()> {
    let env = PaidEnv::start("paid_bad_input", PaidEnvOptions::default()).await?;
    let hello = env.hello_uid.clone();
    let confirm = env.confirm_uid.clone();

    // The global endpoints' shapes.
    let a = env.get("/availability").await?;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        json!({"status": "available", "type": "masumi-agent"})
    );
    let a = env.get("/flows").await?;
    assert_eq!(a.status, 200);
    let flows = a.body["flows"].as_array().context("flows")?;
    assert_eq!(flows.len(), 2, "{flows:?}");
    for f in flows {
        let uid = f["uid"].as_str().context("uid")?;
        assert!(f["summary"].is_string(), "{f}");
        assert_eq!(f["available"], json!(true), "{f}");
        assert_eq!(f["agent_identifier"], json!(SIM_AGENT_IDENTIFIER));
        for endpoint in [
            "start_job",
            "status",
            "input_schema",
            "availability",
            "provide_input",
        ] {
            assert_eq!(
                f["endpoints"][endpoint],
                json!(format!("/{uid}/{endpoint}")),
                "{f}"
            );
        }
    }
    let a = env.get(&format!("/{hello}/availability")).await?;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        json!({"status": "available", "type": "masumi-agent"})
    );
    let a = env.get(&format!("/{hello}/input_schema")).await?;
    assert_eq!(a.status, 200);
    let ids: Vec<&str> = a.body["input_data"]
        .as_array()
        .context("input_data")?
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(ids, ["name", "seconds", "fail", "style"], "{}", a.body);
    assert!(a.body.get("input_groups").is_none(), "never both shapes");

    // Jobs to refer to: one awaiting payment (the buyer never pays), and a non-paid workflow.
    let buyer = purchaser();
    env.preset_buyer(&buyer, json!({"kind": "never_pay"}))
        .await?;
    let (job, _) = start(&env, &hello, &buyer, &json!({"name": "Heidi"})).await?;
    let demo = env
        .post_json(
            "/api/v1/workflows",
            &json!({"type": "demo.chain", "input": {"steps": 1}}),
        )
        .await?;
    assert_eq!(demo.status, 201, "{demo:?}");
    let demo_id = demo.body["id"].as_str().context("id")?.to_owned();
    let rows = env.workflow_rows().await?;
    let unknown = uuid::Uuid::new_v4().to_string();
    let start_path = format!("/{hello}/start_job");

    // start_job
    let a = env
        .post_raw(&start_path, "{\"identifier_from_purchaser\": ")
        .await?;
    refused(
        &env,
        "start_job malformed JSON",
        a,
        400,
        Some("malformed_json"),
        rows,
    )
    .await?;
    for body in ["[1, 2]", "\"text\"", "42", "null"] {
        let a = env.post_raw(&start_path, body).await?;
        refused(&env, &format!("start_job body {body}"), a, 400, None, rows).await?;
    }
    let a = env
        .post_json(&start_path, &json!({"input_data": {"name": "x"}}))
        .await?;
    refused(
        &env,
        "start_job without identifier_from_purchaser",
        a,
        400,
        None,
        rows,
    )
    .await?;
    for (what, id) in [
        ("a number", json!(12345678901234_i64)),
        ("odd length", json!("aabbccddeeff001")),
        ("not hex", json!("zzbbccddeeff0011")),
        ("too short", json!("aabbccddeeff")),
        ("too long", json!("aabbccddeeff00112233445566778899")),
        ("empty", json!("")),
    ] {
        let a = env
            .post_json(
                &start_path,
                &json!({"identifier_from_purchaser": id, "input_data": {"name": "x"}}),
            )
            .await?;
        refused(
            &env,
            &format!("start_job identifier {what}"),
            a,
            400,
            None,
            rows,
        )
        .await?;
    }
    let p = purchaser();
    for (what, input) in [
        ("missing required name", json!({"seconds": 1})),
        ("no input_data", Value::Null),
        ("input_data not an object", json!(["Alice"])),
        ("name of the wrong type", json!({"name": 5})),
        (
            "seconds of the wrong type",
            json!({"name": "x", "seconds": "soon"}),
        ),
        (
            "fail of the wrong type",
            json!({"name": "x", "fail": "yes"}),
        ),
        ("style not a choice", json!({"name": "x", "style": "fancy"})),
        ("an unknown field", json!({"name": "x", "colour": "red"})),
    ] {
        let body = if input.is_null() {
            json!({"identifier_from_purchaser": p})
        } else {
            json!({"identifier_from_purchaser": p, "input_data": input})
        };
        let a = env.post_json(&start_path, &body).await?;
        refused(
            &env,
            &format!("start_job {what}"),
            a,
            400,
            Some("invalid_input_data"),
            rows,
        )
        .await?;
    }
    let a = env
        .start_job("no-such-flow", &p, json!({"name": "x"}))
        .await?;
    refused(&env, "start_job of an unknown flow", a, 404, None, rows).await?;

    // status
    let a = env.get(&format!("/{hello}/status")).await?;
    refused(&env, "status without job_id", a, 400, None, rows).await?;
    let a = env
        .get(&format!("/{hello}/status?job_id={unknown}"))
        .await?;
    refused(&env, "status of an unknown job", a, 404, None, rows).await?;
    let a = env
        .get(&format!("/{hello}/status?job_id=not-a-uuid"))
        .await?;
    refused(&env, "status of a malformed job_id", a, 404, None, rows).await?;
    let a = env.get(&format!("/{confirm}/status?job_id={job}")).await?;
    refused(&env, "status of a job of another flow", a, 404, None, rows).await?;
    let a = env
        .get(&format!("/{hello}/status?job_id={demo_id}"))
        .await?;
    refused(
        &env,
        "status of a workflow that is no paid job",
        a,
        404,
        None,
        rows,
    )
    .await?;
    let a = env
        .get(&format!("/no-such-flow/status?job_id={job}"))
        .await?;
    refused(&env, "status on an unknown flow", a, 404, None, rows).await?;
    let ok = env.status(&hello, &job).await?;
    assert_eq!(ok["status"], json!("awaiting_payment"), "{ok}");

    // provide_input
    let provide_path = format!("/{hello}/provide_input");
    let a = env.post_raw(&provide_path, "{\"job_id\": [").await?;
    refused(
        &env,
        "provide_input malformed JSON",
        a,
        400,
        Some("malformed_json"),
        rows,
    )
    .await?;
    let a = env.post_raw(&provide_path, "[]").await?;
    refused(&env, "provide_input non-object body", a, 400, None, rows).await?;
    for (what, body) in [
        (
            "without job_id",
            json!({"status_id": ok["id"], "input_data": {}}),
        ),
        (
            "without status_id",
            json!({"job_id": job, "input_data": {}}),
        ),
        (
            "without input_data",
            json!({"job_id": job, "status_id": ok["id"]}),
        ),
        (
            "with a numeric job_id",
            json!({"job_id": 7, "status_id": ok["id"], "input_data": {}}),
        ),
    ] {
        let a = env.post_json(&provide_path, &body).await?;
        refused(&env, &format!("provide_input {what}"), a, 400, None, rows).await?;
    }
    let a = env
        .post_json(
            &provide_path,
            &json!({"job_id": "not-a-uuid", "status_id": ok["id"], "input_data": {}}),
        )
        .await?;
    refused(
        &env,
        "provide_input with a malformed job_id",
        a,
        400,
        Some("invalid_job_id"),
        rows,
    )
    .await?;
    let a = env
        .post_json(
            &provide_path,
            &json!({"job_id": unknown, "status_id": ok["id"], "input_data": {}}),
        )
        .await?;
    refused(&env, "provide_input of an unknown job", a, 404, None, rows).await?;
    let a = env
        .post_json(
            &format!("/{confirm}/provide_input"),
            &json!({"job_id": job, "status_id": ok["id"], "input_data": {}}),
        )
        .await?;
    refused(
        &env,
        "provide_input of a job of another flow",
        a,
        404,
        None,
        rows,
    )
    .await?;
    let a = env
        .post_json(
            &provide_path,
            &json!({"job_id": job, "status_id": ok["id"], "input_data": {"comment": "x"}}),
        )
        .await?;
    refused(
        &env,
        "provide_input of a job not awaiting input",
        a,
        409,
        Some("not_awaiting_input"),
        rows,
    )
    .await?;

    // availability and input_schema of an unknown flow
    let a = env.get("/no-such-flow/availability").await?;
    refused(&env, "availability of an unknown flow", a, 404, None, rows).await?;
    let a = env.get("/no-such-flow/input_schema").await?;
    refused(&env, "input_schema of an unknown flow", a, 404, None, rows).await?;

    // The job refused nothing of its own: it still awaits payment, unchanged.
    let after = env.status(&hello, &job).await?;
    assert_eq!(after, ok, "refused requests changed nothing");
    eprintln!("bad input: every refusal a 4xx {{code, message}}; no workflow row written");
    Ok(())
}
