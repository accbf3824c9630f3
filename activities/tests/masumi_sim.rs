//! The Masumi client and activities against the simulator, over real HTTP on 127.0.0.1:0.
//!
//! Run: `cargo test -p activities --features sim --test masumi_sim`.

use activities::masumi::hash;
use activities::masumi::sim::{
    BuyerBehavior, Faults, MasumiSim, MasumiSimConfig, SIM_AGENT_IDENTIFIER, SIM_SELLER_VKEY,
    SIM_TOKEN, SimPaymentReport,
};
use activities::masumi::types::CreatePaymentRequest;
use activities::masumi::{
    AuthorizeRefund, AuthorizeRefundInput, AwaitPaymentChange, AwaitPaymentChangeInput,
    CreatePayment, CreatePaymentInput, INVALID_STATE, MasumiClient, MasumiConfig, Network,
    OnChainState, PaymentObservation, PaymentSummary, RequestedAction, SubmitResult,
    SubmitResultInput,
};
use activities::{BreakerConfig, BreakerState, ClientError};
use chrono::{DateTime, Utc};
use engine::{Activity, ActivityContext, ActivityError, WorkflowId};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NET: Network = Network::Preprod;

fn fast(buyer: BuyerBehavior) -> MasumiSimConfig {
    MasumiSimConfig {
        default_buyer: buyer,
        chain_step_ms: 30,
        fast_clock: true,
        seller_window_ms: 2_000,
        ..MasumiSimConfig::default()
    }
}

async fn sim(config: MasumiSimConfig) -> MasumiSim {
    MasumiSim::spawn(config).await.expect("simulator starts")
}

fn client_with(sim: &MasumiSim, token: &str, breaker: BreakerConfig) -> Arc<MasumiClient> {
    let mut config = MasumiConfig::new(sim.base_url(), token);
    config.timeout = Duration::from_secs(5);
    config.breaker = breaker;
    Arc::new(MasumiClient::new(config).expect("client builds"))
}

fn client(sim: &MasumiSim) -> Arc<MasumiClient> {
    client_with(sim, SIM_TOKEN, BreakerConfig::default())
}

fn ctx(attempt: u32) -> ActivityContext {
    ActivityContext::for_test(WorkflowId::new(), attempt)
}

/// A unique purchaser id (hex, 20 characters).
fn purchaser() -> String {
    format!("{:020x}", fastrand::u64(..) as u128)
}

fn create_input(purchaser: &str) -> CreatePaymentInput {
    let now = Utc::now();
    CreatePaymentInput {
        agent_identifier: SIM_AGENT_IDENTIFIER.to_owned(),
        network: NET,
        input_hash: hash::input_hash(purchaser, &json!({"text": "Write a story"})),
        identifier_from_purchaser: purchaser.to_owned(),
        pay_by_time: now + chrono::Duration::minutes(30),
        submit_result_time: now + chrono::Duration::hours(1),
        unlock_time: None,
        external_dispute_unlock_time: None,
        metadata: None,
    }
}

fn raw_request(input: &CreatePaymentInput) -> CreatePaymentRequest {
    CreatePaymentRequest {
        agent_identifier: input.agent_identifier.clone(),
        network: input.network,
        input_hash: input.input_hash.clone(),
        identifier_from_purchaser: input.identifier_from_purchaser.clone(),
        pay_by_time: input.pay_by_time,
        submit_result_time: input.submit_result_time,
        unlock_time: input.unlock_time,
        external_dispute_unlock_time: input.external_dispute_unlock_time,
        requested_funds: None,
        metadata: input.metadata.clone(),
    }
}

async fn create(client: &Arc<MasumiClient>, purchaser: &str) -> PaymentSummary {
    CreatePayment::new(client.clone())
        .run(ctx(1), create_input(purchaser))
        .await
        .expect("payment created")
}

/// Waits (with the activity itself) until the payment leaves `(state, action)`.
async fn next_change(
    client: &Arc<MasumiClient>,
    p: &PaymentSummary,
    within: Duration,
) -> PaymentSummary {
    let input = AwaitPaymentChangeInput {
        blockchain_identifier: p.blockchain_identifier.clone(),
        network: NET,
        known_state: p.on_chain_state,
        known_action: Some(p.next_action),
        until: Utc::now() + chrono::Duration::from_std(within).expect("short"),
        poll_min_ms: 10,
        poll_max_ms: 50,
    };
    match AwaitPaymentChange::new(client.clone())
        .run(ctx(1), input)
        .await
        .expect("poll works")
    {
        PaymentObservation::Found(s) => s,
        other => panic!(
            "no change of {:?}/{:?} within {within:?}: {other:?}",
            p.on_chain_state, p.next_action
        ),
    }
}

/// Follows the payment until `state` with `action` (or fails after `within`).
async fn wait_for(
    client: &Arc<MasumiClient>,
    mut p: PaymentSummary,
    state: OnChainState,
    action: RequestedAction,
    within: Duration,
) -> (PaymentSummary, Vec<(Option<OnChainState>, RequestedAction)>) {
    let deadline = Instant::now() + within;
    let mut seen = vec![(p.on_chain_state, p.next_action)];
    while (p.on_chain_state, p.next_action) != (Some(state), action) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "never reached {state:?}/{action:?}; saw {seen:?}"
        );
        p = next_change(client, &p, left).await;
        seen.push((p.on_chain_state, p.next_action));
    }
    (p, seen)
}

async fn report(sim: &MasumiSim, bid: &str) -> SimPaymentReport {
    let url = format!("{}/_sim/payments/{bid}", sim.root_url());
    reqwest::get(url)
        .await
        .expect("sim answers")
        .json()
        .await
        .expect("a report")
}

#[track_caller]
fn assert_status(e: &ClientError, status: u16, message: &str) {
    match e {
        ClientError::Status {
            status: s,
            message: m,
            ..
        } => {
            assert_eq!(*s, status, "{e}");
            assert_eq!(m, message, "{e}");
        }
        other => panic!("expected HTTP {status} {message:?}, got {other}"),
    }
}

#[tokio::test]
async fn paid_job_happy_path_ends_withdrawn() {
    let sim = sim(fast(BuyerBehavior::Pay { after_ms: 150 })).await;
    let client = client(&sim);
    assert_eq!(client.health().await.expect("healthy").status, "ok");

    let buyer = purchaser();
    let created = create(&client, &buyer).await;
    assert_eq!(created.on_chain_state, None);
    assert_eq!(
        created.next_action,
        RequestedAction::WaitingForExternalAction
    );
    assert_eq!(created.agent_identifier, SIM_AGENT_IDENTIFIER);
    assert_eq!(created.seller_vkey.as_deref(), Some(SIM_SELLER_VKEY));
    assert!(!created.has_current_transaction);
    assert!(created.pay_by_time_ms < created.submit_result_time_ms);
    assert_eq!(
        created.unlock_time_ms,
        created.submit_result_time_ms + 6 * 3_600_000,
        "the service's default unlock time"
    );

    let resolved = client
        .resolve_blockchain_identifier(NET, &created.blockchain_identifier)
        .await
        .expect("resolves")
        .expect("exists");
    assert_eq!(resolved.on_chain_state, None);

    let paid = next_change(&client, &created, Duration::from_secs(5)).await;
    assert_eq!(paid.on_chain_state, Some(OnChainState::FundsLocked));
    assert_eq!(paid.next_action, RequestedAction::WaitingForExternalAction);
    assert!(paid.has_current_transaction);

    let result_hash = hash::output_hash(&buyer, "the story");
    let submitted = SubmitResult::new(client.clone())
        .run(
            ctx(1),
            SubmitResultInput {
                blockchain_identifier: created.blockchain_identifier.clone(),
                network: NET,
                result_hash: result_hash.clone(),
            },
        )
        .await
        .expect("submitted");
    assert_eq!(
        submitted.next_action,
        RequestedAction::SubmitResultRequested
    );

    let (done, _) = wait_for(
        &client,
        submitted,
        OnChainState::Withdrawn,
        RequestedAction::None,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(done.result_hash.as_deref(), Some(result_hash.as_str()));

    let r = report(&sim, &created.blockchain_identifier).await;
    assert_eq!(r.counters.create_calls, 1);
    assert_eq!(r.counters.submit_result_accepted, 1);
    assert_eq!(r.counters.submit_result_refused, 0);
    assert_eq!(r.counters.result_hashes, vec![result_hash]);
    // Polls may miss short-lived steps; the simulator's history has them all.
    let steps: Vec<_> = r
        .history
        .iter()
        .map(|h| (h.on_chain_state, h.next_action))
        .collect();
    use OnChainState as S;
    use RequestedAction as A;
    assert_eq!(
        steps,
        vec![
            (None, A::WaitingForExternalAction),
            (Some(S::FundsLocked), A::WaitingForExternalAction),
            (Some(S::FundsLocked), A::SubmitResultRequested),
            (Some(S::FundsLocked), A::SubmitResultInitiated),
            (Some(S::ResultSubmitted), A::WaitingForExternalAction),
            (Some(S::ResultSubmitted), A::WithdrawRequested),
            (Some(S::ResultSubmitted), A::WithdrawInitiated),
            (Some(S::Withdrawn), A::None),
        ]
    );
    assert!(!r.payment.payment.withdrawn_for_seller.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_create_requests_get_the_services_messages() {
    let sim = sim(fast(BuyerBehavior::NeverPay)).await;
    let client = client(&sim);
    let good = create_input(&purchaser());
    let now = Utc::now();
    let cases: Vec<(CreatePaymentRequest, u16, &str)> = vec![
        (
            {
                let mut r = raw_request(&good);
                r.identifier_from_purchaser = "zzzzzzzzzzzzzzzz".into();
                r
            },
            400,
            "Purchaser identifier is not a valid hex string",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.identifier_from_purchaser = "aabbccddeeff".into();
                r
            },
            400,
            "identifierFromPurchaser: Too small: expected string to have >=14 characters",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.input_hash = "abc".into();
                r
            },
            400,
            "Input hash is not a valid hex string",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.pay_by_time = r.submit_result_time - chrono::Duration::minutes(4);
                r
            },
            400,
            "Pay by time must be before submit result time (min. 5 minutes)",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.pay_by_time = now;
                r.submit_result_time = now + chrono::Duration::minutes(10);
                r
            },
            400,
            "Submit result time must be in the future (min. 15 minutes)",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.pay_by_time = now - chrono::Duration::minutes(10);
                r
            },
            400,
            "Pay by time must be in the future (max. 5 minutes)",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.unlock_time = Some(r.submit_result_time + chrono::Duration::hours(1));
                r.external_dispute_unlock_time =
                    Some(r.submit_result_time + chrono::Duration::minutes(70));
                r
            },
            400,
            "External dispute unlock time must be after unlock time (min. 15 minutes difference)",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.unlock_time = Some(r.submit_result_time + chrono::Duration::minutes(10));
                r
            },
            400,
            "Submit result time must be before unlock time with at least 15 minutes difference",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.requested_funds = Some(vec![]);
                r
            },
            400,
            "For fixed pricing, RequestedFunds must be null",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.agent_identifier = format!("{}00", "ff".repeat(28));
                r
            },
            404,
            "Network and policyId combination not supported",
        ),
        (
            {
                let mut r = raw_request(&good);
                r.agent_identifier = "abc".into();
                r.identifier_from_purchaser = "a".repeat(30);
                r
            },
            400,
            "agentIdentifier: Too small: expected string to have >=57 characters; identifierFromPurchaser: Too big: expected string to have <=26 characters",
        ),
    ];
    for (req, status, message) in cases {
        let e = client.create_payment(&req).await.expect_err(message);
        assert_status(&e, status, message);
        let a: ActivityError = e.into();
        assert!(!a.retryable, "{message}");
    }
    // A create without the times gets the schema default (1970) and fails the first rule.
    let resp = reqwest::Client::new()
        .post(format!("{}/payment", sim.base_url()))
        .header("token", SIM_TOKEN)
        .json(&json!({
            "agentIdentifier": SIM_AGENT_IDENTIFIER, "network": "Preprod",
            "inputHash": "abcd", "identifierFromPurchaser": "aabbaabb11221122aabb"
        }))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body["error"]["message"],
        "Pay by time must be before submit result time (min. 5 minutes)"
    );
    // The activity refuses the same inputs before sending anything.
    let mut bad = create_input(&purchaser());
    bad.identifier_from_purchaser = "abc".into();
    let e = CreatePayment::new(client.clone())
        .run(ctx(1), bad)
        .await
        .expect_err("invalid");
    assert_eq!(e.code, "masumi.invalid_request");
    assert!(!e.retryable);
    assert!(sim.state().payments().is_empty(), "nothing was created");
    sim.shutdown().await;
}

#[tokio::test]
async fn seller_actions_are_refused_outside_their_states() {
    let mut config = fast(BuyerBehavior::NeverPay);
    config.tokens = vec![SIM_TOKEN.to_owned(), "other-key".to_owned()];
    let sim = sim(config).await;
    let client = client(&sim);
    let other = client_with(&sim, "other-key", BreakerConfig::default());

    let unpaid = create(&client, &purchaser()).await;
    let bid = unpaid.blockchain_identifier.clone();
    let e = client
        .submit_result(NET, &bid, &"ab".repeat(32))
        .await
        .expect_err("not paid");
    assert_status(&e, 404, "Payment not found or in invalid state");
    let e = client
        .authorize_refund(NET, &bid)
        .await
        .expect_err("not disputed");
    assert_status(&e, 404, "Payment not found or in invalid state");
    let e = client
        .resolve_blockchain_identifier(Network::Mainnet, &bid)
        .await
        .expect("a 404 is None");
    assert!(e.is_none(), "another network");
    assert!(
        client
            .resolve_blockchain_identifier(NET, "abcdef")
            .await
            .expect("a 404 is None")
            .is_none()
    );

    // The activity turns the refusal into a retryable invalid_state: the buyer may still pay.
    let e = SubmitResult::new(client.clone())
        .run(
            ctx(1),
            SubmitResultInput {
                blockchain_identifier: bid.clone(),
                network: NET,
                result_hash: "ab".repeat(32),
            },
        )
        .await
        .expect_err("refused");
    assert_eq!(e.code, INVALID_STATE);
    assert!(e.retryable, "{e:?}");

    // Another API key may read but not act: 403 once the payment is payable.
    sim.state()
        .set_buyer("aabbaabb11221122aabb00", BuyerBehavior::Pay { after_ms: 0 });
    let paid = create(&client, "aabbaabb11221122aabb00").await;
    let paid = next_change(&client, &paid, Duration::from_secs(5)).await;
    assert_eq!(paid.on_chain_state, Some(OnChainState::FundsLocked));
    assert!(
        other
            .resolve_blockchain_identifier(NET, &paid.blockchain_identifier)
            .await
            .expect("readable")
            .is_some()
    );
    let e = other
        .submit_result(NET, &paid.blockchain_identifier, &"ab".repeat(32))
        .await
        .expect_err("forbidden");
    assert_status(
        &e,
        403,
        "You are not authorized to submit results for this payment",
    );

    let r = report(&sim, &bid).await;
    assert_eq!(r.counters.submit_result_refused, 2);
    assert_eq!(r.counters.authorize_refund_refused, 1);
    assert_eq!(r.counters.submit_result_accepted, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_get_401() {
    let sim = sim(fast(BuyerBehavior::NeverPay)).await;
    let wrong = client_with(&sim, "wrong-token", BreakerConfig::default());
    let e = wrong
        .resolve_blockchain_identifier(NET, "abcd")
        .await
        .expect_err("unauthorized");
    assert_status(
        &e,
        401,
        "Unauthorized, invalid authentication token provided",
    );
    let e = wrong
        .create_payment(&raw_request(&create_input(&purchaser())))
        .await
        .expect_err("unauthorized");
    assert_status(
        &e,
        401,
        "Unauthorized, invalid authentication token provided",
    );
    assert!(!e.is_retryable());
    assert!(wrong.health().await.is_ok(), "health needs no token");
    let resp = reqwest::Client::new()
        .post(format!("{}/payment/submit-result", sim.base_url()))
        .json(&json!({}))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body,
        json!({"status": "error", "error": {"message": "Unauthorized, no authentication token provided"}})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn await_payment_change_returns_on_change_and_not_before() {
    let sim = sim(fast(BuyerBehavior::Pay { after_ms: 400 })).await;
    let client = client(&sim);
    let created = create(&client, &purchaser()).await;
    let activity = AwaitPaymentChange::new(client.clone());
    let input = |p: &PaymentSummary, until: DateTime<Utc>| AwaitPaymentChangeInput {
        blockchain_identifier: p.blockchain_identifier.clone(),
        network: NET,
        known_state: p.on_chain_state,
        known_action: Some(p.next_action),
        until,
        poll_min_ms: 20,
        poll_max_ms: 100,
    };

    let started = Instant::now();
    let seen = activity
        .run(
            ctx(1),
            input(&created, Utc::now() + chrono::Duration::seconds(5)),
        )
        .await
        .expect("polls");
    let waited = started.elapsed();
    let PaymentObservation::Found(paid) = seen else {
        panic!("expected a change, got {seen:?}")
    };
    assert_eq!(paid.on_chain_state, Some(OnChainState::FundsLocked));
    assert!(
        waited >= Duration::from_millis(300),
        "returned early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "returned late: {waited:?}");

    // Nothing changes (NeverPay-like: FundsLocked waits for the result): returns at `until`.
    let until = Utc::now() + chrono::Duration::milliseconds(400);
    let started = Instant::now();
    let seen = activity
        .run(ctx(1), input(&paid, until))
        .await
        .expect("polls");
    let waited = started.elapsed();
    match seen {
        PaymentObservation::Unchanged {
            observed_at,
            payment: Some(p),
        } => {
            assert!(observed_at >= until, "{observed_at} < {until}");
            assert_eq!(p.on_chain_state, Some(OnChainState::FundsLocked));
        }
        other => panic!("expected unchanged, got {other:?}"),
    }
    assert!(waited >= Duration::from_millis(350), "{waited:?}");

    // Cancelled: returns promptly with the last observation.
    let ctx_cancel = ctx(1);
    let token = ctx_cancel.cancellation_token();
    let started = Instant::now();
    let run = activity.run(
        ctx_cancel,
        input(&paid, Utc::now() + chrono::Duration::minutes(5)),
    );
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        token.cancel();
    };
    let (seen, ()) = tokio::join!(run, cancel);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(
            seen,
            Ok(PaymentObservation::Unchanged {
                payment: Some(_),
                ..
            })
        ),
        "{seen:?}"
    );

    // An unknown payment is NotFound at `until`; an unknown `known_action` returns at once.
    let mut unknown = input(&paid, Utc::now() + chrono::Duration::milliseconds(100));
    unknown.blockchain_identifier = "abcdef".into();
    let seen = activity.run(ctx(1), unknown).await.expect("polls");
    assert!(
        matches!(seen, PaymentObservation::NotFound { .. }),
        "{seen:?}"
    );
    let mut fresh = input(&paid, Utc::now() + chrono::Duration::minutes(5));
    fresh.known_action = None;
    fresh.known_state = None;
    let started = Instant::now();
    let seen = activity.run(ctx(1), fresh).await.expect("polls");
    assert!(matches!(seen, PaymentObservation::Found(_)));
    assert!(started.elapsed() < Duration::from_secs(1));
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_give_retryable_errors_and_open_the_breaker() {
    let mut config = fast(BuyerBehavior::NeverPay);
    config.faults = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    let sim = sim(config).await;
    let client = client_with(
        &sim,
        SIM_TOKEN,
        BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(200),
            max_open_for: Duration::from_secs(1),
        },
    );
    for _ in 0..3 {
        let e = client.health().await.expect_err("injected");
        assert!(e.is_retryable(), "{e}");
        assert!(matches!(e.status(), Some(500 | 503)), "{e}");
        let a: ActivityError = e.into();
        assert!(a.retryable);
    }
    assert!(matches!(client.breaker_state(), BreakerState::Open { .. }));
    let e = client.health().await.expect_err("fails fast");
    assert!(matches!(e, ClientError::CircuitOpen { .. }), "{e}");
    let a: ActivityError = e.into();
    assert!(a.retryable);
    assert_eq!(a.code, "masumi.circuit_open");

    // The poll loop retries in-process, then gives up retryably.
    let seen = AwaitPaymentChange::new(client.clone())
        .run(
            ctx(1),
            AwaitPaymentChangeInput {
                blockchain_identifier: "abcd".into(),
                network: NET,
                until: Utc::now() + chrono::Duration::minutes(1),
                poll_min_ms: 20,
                poll_max_ms: 100,
                ..AwaitPaymentChangeInput::default()
            },
        )
        .await;
    let e = seen.expect_err("gives up");
    assert!(e.retryable, "{e:?}");

    // Faults off at runtime: the breaker closes after its probe.
    let resp = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.root_url()))
        .json(&json!({}))
        .send()
        .await
        .expect("sim answers");
    assert!(resp.status().is_success());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    client.health().await.expect("healthy again");
    assert_eq!(
        client.breaker_state(),
        BreakerState::Closed {
            consecutive_failures: 0
        }
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn lost_answers_do_not_duplicate_payments_or_submissions() {
    let sim = sim(fast(BuyerBehavior::Pay { after_ms: 0 })).await;
    let client = client(&sim);
    let buyer = purchaser();
    let lost = Faults {
        lost_response_rate: 1.0,
        ..Faults::default()
    };

    // Create: the answer of attempt 1 is lost; attempt 2 (same input, as the journal keeps
    // it) finds the payment attempt 1 created.
    let input = create_input(&buyer);
    sim.state().set_faults(lost);
    let e = CreatePayment::new(client.clone())
        .run(ctx(1), input.clone())
        .await
        .expect_err("answer lost");
    assert!(e.retryable, "{e:?}");
    sim.state().set_faults(Faults::default());
    assert_eq!(sim.state().payments().len(), 1, "attempt 1 did create it");
    let created = CreatePayment::new(client.clone())
        .run(ctx(2), input)
        .await
        .expect("found");
    let all = sim.state().payments();
    assert_eq!(all.len(), 1, "no second payment request");
    assert_eq!(created.blockchain_identifier, all[0].blockchain_identifier);

    let (paid, _) = wait_for(
        &client,
        created,
        OnChainState::FundsLocked,
        RequestedAction::WaitingForExternalAction,
        Duration::from_secs(5),
    )
    .await;

    // Submit: attempt 1 is accepted but its answer lost; attempt 2 sees the queued hash.
    let submit = SubmitResultInput {
        blockchain_identifier: paid.blockchain_identifier.clone(),
        network: NET,
        result_hash: hash::output_hash(&buyer, "done"),
    };
    sim.state().set_faults(lost);
    let e = SubmitResult::new(client.clone())
        .run(ctx(1), submit.clone())
        .await
        .expect_err("answer lost");
    assert!(e.retryable);
    sim.state().set_faults(Faults::default());
    let s = SubmitResult::new(client.clone())
        .run(ctx(2), submit.clone())
        .await
        .expect("recognised");
    assert!(
        matches!(
            s.next_action,
            RequestedAction::SubmitResultRequested | RequestedAction::SubmitResultInitiated
        ) || s.result_hash.as_deref() == Some(submit.result_hash.as_str()),
        "{s:?}"
    );
    // Even much later (on chain, withdrawn) a retry is success without a second call.
    let (done, _) = wait_for(
        &client,
        s,
        OnChainState::Withdrawn,
        RequestedAction::None,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        done.result_hash.as_deref(),
        Some(submit.result_hash.as_str())
    );
    SubmitResult::new(client.clone())
        .run(ctx(3), submit.clone())
        .await
        .expect("still success");
    let r = report(&sim, &paid.blockchain_identifier).await;
    assert_eq!(r.counters.create_calls, 1);
    assert_eq!(r.counters.submit_result_accepted, 1);
    assert_eq!(r.counters.result_hashes.len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn refund_requested_by_the_buyer_ends_refund_withdrawn() {
    let sim = sim(fast(BuyerBehavior::RequestRefund { after_ms: 100 })).await;
    let client = client(&sim);
    let created = create(&client, &purchaser()).await;
    let (refunded, _) = wait_for(
        &client,
        created,
        OnChainState::RefundWithdrawn,
        RequestedAction::None,
        Duration::from_secs(10),
    )
    .await;
    // Too late to submit: non-retryable.
    let e = SubmitResult::new(client.clone())
        .run(
            ctx(1),
            SubmitResultInput {
                blockchain_identifier: refunded.blockchain_identifier.clone(),
                network: NET,
                result_hash: "ab".repeat(32),
            },
        )
        .await
        .expect_err("refunded");
    assert_eq!(e.code, INVALID_STATE);
    assert!(!e.retryable, "{e:?}");
    let r = report(&sim, &refunded.blockchain_identifier).await;
    let states: Vec<_> = r.history.iter().map(|h| h.on_chain_state).collect();
    assert_eq!(
        states,
        vec![
            None,
            Some(OnChainState::FundsLocked),
            Some(OnChainState::RefundRequested),
            Some(OnChainState::RefundWithdrawn)
        ]
    );
    assert_eq!(r.counters.submit_result_accepted, 0);
    assert_eq!(r.counters.submit_result_refused, 1);
    assert!(!r.payment.payment.withdrawn_for_buyer.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dispute_refunded_by_the_seller_ends_refund_withdrawn() {
    let sim = sim(fast(BuyerBehavior::Dispute { after_ms: 100 })).await;
    let client = client(&sim);
    let buyer = purchaser();
    let created = create(&client, &buyer).await;
    let paid = next_change(&client, &created, Duration::from_secs(5)).await;
    assert_eq!(paid.on_chain_state, Some(OnChainState::FundsLocked));
    let submitted = SubmitResult::new(client.clone())
        .run(
            ctx(1),
            SubmitResultInput {
                blockchain_identifier: paid.blockchain_identifier.clone(),
                network: NET,
                result_hash: hash::output_hash(&buyer, "meh"),
            },
        )
        .await
        .expect("submitted");
    let (disputed, seen) = wait_for(
        &client,
        submitted,
        OnChainState::Disputed,
        RequestedAction::WaitingForExternalAction,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        seen.iter()
            .any(|(s, _)| *s == Some(OnChainState::ResultSubmitted)),
        "{seen:?}"
    );
    let refund = AuthorizeRefund::new(client.clone());
    let input = AuthorizeRefundInput {
        blockchain_identifier: disputed.blockchain_identifier.clone(),
        network: NET,
    };
    let authorized = refund.run(ctx(1), input.clone()).await.expect("authorized");
    assert_eq!(
        authorized.next_action,
        RequestedAction::AuthorizeRefundRequested
    );
    // A retry is success without a second call.
    refund.run(ctx(2), input.clone()).await.expect("idempotent");
    let (done, _) = wait_for(
        &client,
        authorized,
        OnChainState::RefundWithdrawn,
        RequestedAction::None,
        Duration::from_secs(10),
    )
    .await;
    refund
        .run(ctx(3), input)
        .await
        .expect("refund done is success");
    let r = report(&sim, &done.blockchain_identifier).await;
    let states: Vec<_> = r.history.iter().map(|h| h.on_chain_state).collect();
    assert!(
        states.contains(&Some(OnChainState::RefundRequested)),
        "the authorized refund went through RefundRequested: {states:?}"
    );
    assert_eq!(r.counters.authorize_refund_accepted, 1);
    assert_eq!(r.counters.submit_result_accepted, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_payments_wait_for_manual_action() {
    let sim = sim(fast(BuyerBehavior::NeverPay)).await;
    let client = client(&sim);
    let buyer = purchaser();
    // Preset over HTTP, as an outside test would.
    let resp = reqwest::Client::new()
        .post(format!("{}/_sim/buyers", sim.root_url()))
        .json(&json!({"identifierFromPurchaser": buyer, "behavior": {"kind": "pay_invalid", "after_ms": 50}}))
        .send()
        .await
        .expect("sim answers");
    assert!(resp.status().is_success());
    let created = create(&client, &buyer).await;
    let invalid = next_change(&client, &created, Duration::from_secs(5)).await;
    assert_eq!(
        invalid.on_chain_state,
        Some(OnChainState::FundsOrDatumInvalid)
    );
    assert_eq!(invalid.next_action, RequestedAction::WaitingForManualAction);
    assert_eq!(invalid.error_type.as_deref(), Some("Unknown"));
    assert!(invalid.error_note.is_some());

    let all: Vec<SimPaymentReport> = reqwest::get(format!("{}/_sim/payments", sim.root_url()))
        .await
        .expect("sim answers")
        .json()
        .await
        .expect("reports");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].buyer, BuyerBehavior::PayInvalid { after_ms: 50 });
    sim.shutdown().await;
}
