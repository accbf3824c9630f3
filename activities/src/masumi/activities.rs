//! The Masumi calls of a paid job as engine activities.
//!
//! - [`CreatePayment`]: validates like the service, then creates the payment request; a retry
//!   first looks for the request a lost answer may have created.
//! - [`AwaitPaymentChange`]: polls one payment until its `(onChainState, NextAction)` differs
//!   from what the workflow knows, a deadline passes or the call is cancelled. Only changes end
//!   it, so a payment followed for hours journals its changes, not its polls.
//! - [`SubmitResult`], [`AuthorizeRefund`]: the two seller actions, idempotent across retries
//!   (a lost answer is recognised on the payment itself, never sent twice).
//!
//! ```no_run
//! # fn demo(client: std::sync::Arc<activities::masumi::MasumiClient>) {
//! let registry = activities::masumi::register(engine::Registry::new(), client);
//! # let _ = registry; }
//! ```

use super::client::{MasumiClient, SERVICE};
use super::hash;
use super::types::{
    CreatePaymentRequest, Network, OnChainState, Payment, PaymentSummary, RequestedAction,
};
use crate::error::ClientError;
use chrono::{DateTime, Utc};
use engine::{Activity, ActivityContext, ActivityError, ActivityOptions, Registry, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Error code of input refused before anything was sent (never retried).
pub const INVALID_REQUEST: &str = "masumi.invalid_request";
/// Error code of a seller action the payment's state does not allow (yet).
pub const INVALID_STATE: &str = "masumi.invalid_state";
/// Error code of a payment the service does not know.
pub const PAYMENT_NOT_FOUND: &str = "masumi.payment_not_found";

/// Registers the four Masumi activities, all sharing `client`.
pub fn register(registry: Registry, client: Arc<MasumiClient>) -> Registry {
    registry
        .activity(CreatePayment::new(client.clone()))
        .activity(AwaitPaymentChange::new(client.clone()))
        .activity(SubmitResult::new(client.clone()))
        .activity(AuthorizeRefund::new(client))
}

const MINUTE_MS: i64 = 60_000;

fn ms(t: &DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn invalid(message: impl Into<String>) -> ActivityError {
    ActivityError::non_retryable(INVALID_REQUEST, message)
}

// ---------------------------------------------------------------------------------------------
// CreatePayment

/// Input of [`CreatePayment`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatePaymentInput {
    /// Policy id + asset name, 57–250 characters.
    pub agent_identifier: String,
    pub network: Network,
    /// MIP-004 input hash (even-length hex).
    pub input_hash: String,
    /// Even-length hex, 14–26 characters.
    pub identifier_from_purchaser: String,
    pub pay_by_time: DateTime<Utc>,
    pub submit_result_time: DateTime<Utc>,
    /// Default `submit_result_time + 6 h` (the service's default).
    #[serde(default)]
    pub unlock_time: Option<DateTime<Utc>>,
    /// Default `submit_result_time + 12 h` (the service's default).
    #[serde(default)]
    pub external_dispute_unlock_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub metadata: Option<String>,
}

impl CreatePaymentInput {
    /// The request body, after the service's own validation rules (hex, lengths, and the time
    /// rules of `POST /payment`, against `now`).
    ///
    /// # Errors
    /// The first rule broken, with the service's message; code [`INVALID_REQUEST`].
    pub fn to_request(&self, now: DateTime<Utc>) -> Result<CreatePaymentRequest, ActivityError> {
        let agent_len = self.agent_identifier.chars().count();
        if !(57..=250).contains(&agent_len) {
            return Err(invalid(format!(
                "agentIdentifier must have 57 to 250 characters, has {agent_len}"
            )));
        }
        if self.input_hash.len() > 250 || !hash::is_hex_even(&self.input_hash) {
            return Err(invalid("Input hash is not a valid hex string"));
        }
        if !hash::is_valid_purchaser_identifier(&self.identifier_from_purchaser) {
            return Err(invalid(
                "Purchaser identifier is not a valid hex string (even length, 14 to 26 characters)",
            ));
        }
        let times = EffectiveTimes::of(self);
        times.check(ms(&now)).map_err(invalid)?;
        Ok(CreatePaymentRequest {
            agent_identifier: self.agent_identifier.clone(),
            network: self.network,
            input_hash: self.input_hash.clone(),
            identifier_from_purchaser: self.identifier_from_purchaser.clone(),
            pay_by_time: self.pay_by_time,
            submit_result_time: self.submit_result_time,
            unlock_time: self.unlock_time,
            external_dispute_unlock_time: self.external_dispute_unlock_time,
            requested_funds: None,
            metadata: self.metadata.clone(),
        })
    }
}

/// The four times in ms, the service's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EffectiveTimes {
    pub pay_by: i64,
    pub submit_result: i64,
    pub unlock: i64,
    pub external_dispute_unlock: i64,
}

impl EffectiveTimes {
    fn of(input: &CreatePaymentInput) -> Self {
        let submit_result = ms(&input.submit_result_time);
        Self {
            pay_by: ms(&input.pay_by_time),
            submit_result,
            unlock: input
                .unlock_time
                .as_ref()
                .map(ms)
                .unwrap_or(submit_result + 6 * 60 * MINUTE_MS),
            external_dispute_unlock: input
                .external_dispute_unlock_time
                .as_ref()
                .map(ms)
                .unwrap_or(submit_result + 12 * 60 * MINUTE_MS),
        }
    }

    /// The time rules of `POST /payment`, in the service's order and words.
    pub(crate) fn check(&self, now_ms: i64) -> Result<(), &'static str> {
        if self.pay_by > self.submit_result - 5 * MINUTE_MS {
            return Err("Pay by time must be before submit result time (min. 5 minutes)");
        }
        if self.pay_by < now_ms - 5 * MINUTE_MS {
            return Err("Pay by time must be in the future (max. 5 minutes)");
        }
        if self.external_dispute_unlock < self.unlock + 15 * MINUTE_MS {
            return Err(
                "External dispute unlock time must be after unlock time (min. 15 minutes difference)",
            );
        }
        if self.submit_result < now_ms + 15 * MINUTE_MS {
            return Err("Submit result time must be in the future (min. 15 minutes)");
        }
        if self.submit_result > self.unlock - 15 * MINUTE_MS {
            return Err(
                "Submit result time must be before unlock time with at least 15 minutes difference",
            );
        }
        Ok(())
    }

    /// Whether `p` carries exactly these times.
    fn match_payment(&self, p: &Payment) -> bool {
        p.pay_by_time == Some(self.pay_by)
            && p.submit_result_time == self.submit_result
            && p.unlock_time == self.unlock
            && p.external_dispute_unlock_time == self.external_dispute_unlock
    }
}

/// `masumi.create_payment`: creates the payment request the buyer pays.
///
/// The service has no idempotency key, so a retry (attempt > 1) first looks for a payment
/// created since the call was scheduled with the same input hash, agent and times (all four
/// are in the input, so only this call produces that combination) and returns it instead of
/// creating a second one.
#[derive(Debug, Clone)]
pub struct CreatePayment {
    client: Arc<MasumiClient>,
}

impl CreatePayment {
    pub fn new(client: Arc<MasumiClient>) -> Self {
        Self { client }
    }
}

impl Activity for CreatePayment {
    const NAME: &'static str = "masumi.create_payment";
    type Input = CreatePaymentInput;
    type Output = PaymentSummary;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            retry: RetryPolicy {
                initial_interval: Duration::from_secs(1),
                backoff_coefficient: 2.0,
                maximum_interval: Duration::from_secs(30),
                maximum_attempts: 8,
                non_retryable_error_codes: vec![INVALID_REQUEST.to_owned()],
            },
            start_to_close_timeout: Duration::from_secs(120),
            heartbeat_timeout: None,
            schedule_to_close_timeout: Some(Duration::from_secs(600)),
        }
    }

    async fn run(
        &self,
        ctx: ActivityContext,
        input: CreatePaymentInput,
    ) -> Result<PaymentSummary, ActivityError> {
        let req = input.to_request(Utc::now())?;
        if ctx.attempt() > 1 {
            let times = EffectiveTimes::of(&input);
            // Server clocks differ: look a little further back than the schedule time.
            let since = ctx.scheduled_at() - chrono::Duration::minutes(5);
            let found = self
                .client
                .find_payment(input.network, since, |p| {
                    p.input_hash.as_deref() == Some(input.input_hash.as_str())
                        && p.agent_identifier
                            .as_deref()
                            .is_none_or(|a| a == input.agent_identifier)
                        && p.payment_source.network == input.network
                        && times.match_payment(p)
                })
                .await?;
            if let Some(p) = found {
                tracing::info!(
                    activity.name = Self::NAME,
                    attempt = ctx.attempt(),
                    "payment request of an earlier attempt found; not creating another"
                );
                return Ok(PaymentSummary::from(&p));
            }
        }
        let payment = self.client.create_payment(&req).await?;
        Ok(PaymentSummary::from(&payment))
    }
}

// ---------------------------------------------------------------------------------------------
// AwaitPaymentChange

/// Polls shorter than this are raised to it.
const MIN_POLL_MS: u64 = 50;
/// Polls longer than this are lowered to it (the heartbeat timeout is derived from it).
const MAX_POLL_MS: u64 = 60_000;
/// Consecutive transient failures after which an attempt gives up (retryably).
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

fn default_poll_min_ms() -> u64 {
    500
}

fn default_poll_max_ms() -> u64 {
    30_000
}

/// Input of [`AwaitPaymentChange`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwaitPaymentChangeInput {
    pub blockchain_identifier: String,
    pub network: Network,
    /// The `onChainState` the workflow last saw (`None`: not paid yet, or never seen).
    #[serde(default)]
    pub known_state: Option<OnChainState>,
    /// The `NextAction` the workflow last saw; `None` means nothing is known, so the first
    /// successful look returns.
    #[serde(default)]
    pub known_action: Option<RequestedAction>,
    /// Return the current observation once this time has passed.
    pub until: DateTime<Utc>,
    /// First interval between polls (ms, default 500); doubles up to `poll_max_ms`.
    #[serde(default = "default_poll_min_ms")]
    pub poll_min_ms: u64,
    /// Largest interval between polls (ms, default 30 000, at most 60 000).
    #[serde(default = "default_poll_max_ms")]
    pub poll_max_ms: u64,
}

impl Default for AwaitPaymentChangeInput {
    fn default() -> Self {
        Self {
            blockchain_identifier: String::new(),
            network: Network::default(),
            known_state: None,
            known_action: None,
            until: DateTime::<Utc>::UNIX_EPOCH,
            poll_min_ms: default_poll_min_ms(),
            poll_max_ms: default_poll_max_ms(),
        }
    }
}

/// What [`AwaitPaymentChange`] saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PaymentObservation {
    /// `(on_chain_state, next_action)` differs from the known values.
    Found(PaymentSummary),
    /// The service does not know the payment (404) as of `observed_at`.
    NotFound { observed_at: DateTime<Utc> },
    /// Nothing changed as of `observed_at` (the time of the last poll; the call's schedule
    /// time if it was interrupted before its first poll). `payment` is the last one seen.
    Unchanged {
        observed_at: DateTime<Utc>,
        #[serde(default)]
        payment: Option<PaymentSummary>,
    },
}

/// The last thing the poll loop saw.
enum Seen {
    Nothing,
    NotFound(DateTime<Utc>),
    Payment(Box<PaymentSummary>, DateTime<Utc>),
}

impl Seen {
    fn into_observation(self, scheduled_at: DateTime<Utc>) -> PaymentObservation {
        match self {
            Seen::Nothing => PaymentObservation::Unchanged {
                observed_at: scheduled_at,
                payment: None,
            },
            Seen::NotFound(at) => PaymentObservation::NotFound { observed_at: at },
            Seen::Payment(p, at) => PaymentObservation::Unchanged {
                observed_at: at,
                payment: Some(*p),
            },
        }
    }
}

/// `masumi.await_payment_change`: polls `resolve-blockchain-identifier` until the payment's
/// `(onChainState, NextAction)` differs from `(known_state, known_action)` (→ `Found`), `until`
/// has passed (→ the last observation: `Unchanged` or `NotFound`), or the call is cancelled or
/// paused (→ the last observation, promptly).
///
/// Polls back off exponentially from `poll_min_ms` to `poll_max_ms` and heartbeat after each
/// poll. Transient errors are retried in-process; after 5 in a row the attempt fails
/// retryably. A 404 is an observation, not an error.
#[derive(Debug, Clone)]
pub struct AwaitPaymentChange {
    client: Arc<MasumiClient>,
}

impl AwaitPaymentChange {
    pub fn new(client: Arc<MasumiClient>) -> Self {
        Self { client }
    }
}

fn jitter(ms: u64) -> Duration {
    let f = 0.9 + 0.2 * fastrand::f64();
    Duration::from_millis(((ms as f64) * f) as u64)
}

impl Activity for AwaitPaymentChange {
    const NAME: &'static str = "masumi.await_payment_change";
    type Input = AwaitPaymentChangeInput;
    type Output = PaymentObservation;

    fn options(&self) -> ActivityOptions {
        let longest_gap = Duration::from_millis(MAX_POLL_MS).max(self.client.timeout());
        ActivityOptions {
            retry: RetryPolicy {
                initial_interval: Duration::from_secs(1),
                backoff_coefficient: 2.0,
                maximum_interval: Duration::from_secs(60),
                maximum_attempts: 0,
                non_retryable_error_codes: Vec::new(),
            },
            start_to_close_timeout: Duration::from_secs(3600),
            heartbeat_timeout: Some(longest_gap * 2),
            schedule_to_close_timeout: None,
        }
    }

    fn interrupt_on_pause(&self) -> bool {
        true
    }

    async fn run(
        &self,
        ctx: ActivityContext,
        input: AwaitPaymentChangeInput,
    ) -> Result<PaymentObservation, ActivityError> {
        let poll_min = input.poll_min_ms.clamp(MIN_POLL_MS, MAX_POLL_MS);
        let poll_max = input.poll_max_ms.clamp(poll_min, MAX_POLL_MS);
        let known = (input.known_state, input.known_action);
        let mut seen = Seen::Nothing;
        let mut interval = poll_min;
        let mut failures = 0u32;
        let mut polls = 0u64;
        let mut progress = serde_json::json!({ "polls": 0 });
        loop {
            ctx.heartbeat(&progress);
            let polled = tokio::select! {
                r = self.client.resolve_blockchain_identifier(input.network, &input.blockchain_identifier) => r,
                _ = ctx.cancelled() => return Ok(seen.into_observation(ctx.scheduled_at())),
            };
            polls += 1;
            let now = Utc::now();
            let pause = match polled {
                Ok(found) => {
                    failures = 0;
                    match found {
                        Some(p) => {
                            let summary = PaymentSummary::from(&p);
                            if (summary.on_chain_state, Some(summary.next_action)) != known {
                                ctx.heartbeat(
                                    serde_json::json!({ "polls": polls, "changed": true }),
                                );
                                return Ok(PaymentObservation::Found(summary));
                            }
                            seen = Seen::Payment(Box::new(summary), now);
                        }
                        None => seen = Seen::NotFound(now),
                    }
                    if now >= input.until {
                        return Ok(seen.into_observation(ctx.scheduled_at()));
                    }
                    let pause = interval;
                    interval = (interval * 2).min(poll_max);
                    pause
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    tracing::debug!(
                        activity.name = Self::NAME,
                        error.message = %e,
                        consecutive_failures = failures,
                        "poll failed"
                    );
                    if failures >= MAX_CONSECUTIVE_FAILURES {
                        return Err(e.into());
                    }
                    let hinted = match &e {
                        ClientError::Status {
                            retry_after: Some(d),
                            ..
                        } => d.as_millis() as u64,
                        ClientError::CircuitOpen { retry_in, .. } => retry_in.as_millis() as u64,
                        _ => 0,
                    };
                    let backoff = poll_min.saturating_mul(1 << failures.min(16));
                    backoff.max(hinted).min(MAX_POLL_MS)
                }
                Err(e) => return Err(e.into()),
            };
            progress = serde_json::json!({
                "polls": polls,
                "consecutive_failures": failures,
                "observed": match &seen {
                    Seen::Payment(p, _) => serde_json::json!({ "on_chain_state": p.on_chain_state, "next_action": p.next_action }),
                    Seen::NotFound(_) => serde_json::json!("not_found"),
                    Seen::Nothing => serde_json::Value::Null,
                },
            });
            ctx.heartbeat(&progress);
            let mut sleep = jitter(pause);
            if failures == 0
                && let Ok(left) = (input.until - now).to_std()
            {
                // Poll once more exactly when the deadline passes.
                sleep = sleep.min(left + Duration::from_millis(1));
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = ctx.cancelled() => return Ok(seen.into_observation(ctx.scheduled_at())),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SubmitResult

/// Input of [`SubmitResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitResultInput {
    pub blockchain_identifier: String,
    pub network: Network,
    /// The MIP-004 output hash ([`hash::output_hash`]).
    pub result_hash: String,
}

/// `masumi.submit_result`: submits the result hash, at most once per payment.
///
/// Idempotent: a retry first resolves the payment, and a payment that already carries this
/// hash (queued in `NextAction` or on chain) is success without a second call. A refusal
/// (404 `Payment not found or in invalid state`) is resolved too and then:
/// - success, if the hash turns out to be queued or on chain (an earlier answer was lost);
/// - non-retryable [`INVALID_STATE`] once it can no longer change: the funds left the
///   contract, or `submitResultTime` has passed;
/// - otherwise retryable [`INVALID_STATE`] (e.g. a transaction still in flight, or an error
///   an operator may clear): the activity cannot know whether it will change, so the retry
///   policy (60 attempts, up to 1 min apart) bounds it.
#[derive(Debug, Clone)]
pub struct SubmitResult {
    client: Arc<MasumiClient>,
}

impl SubmitResult {
    pub fn new(client: Arc<MasumiClient>) -> Self {
        Self { client }
    }
}

/// Whether `p` shows `result_hash` as submitted (queued, in flight, or on chain).
fn carries_result(p: &Payment, result_hash: &str) -> bool {
    let queued = matches!(
        p.next_action.requested_action,
        RequestedAction::SubmitResultRequested | RequestedAction::SubmitResultInitiated
    ) && p.next_action.result_hash.as_deref() == Some(result_hash);
    queued || p.result_hash.as_deref() == Some(result_hash)
}

fn state_details(p: &Payment) -> serde_json::Value {
    serde_json::json!({
        "on_chain_state": p.on_chain_state,
        "next_action": p.next_action.requested_action,
        "error_note": p.next_action.error_note,
    })
}

impl Activity for SubmitResult {
    const NAME: &'static str = "masumi.submit_result";
    type Input = SubmitResultInput;
    type Output = PaymentSummary;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            retry: RetryPolicy {
                initial_interval: Duration::from_secs(2),
                backoff_coefficient: 2.0,
                maximum_interval: Duration::from_secs(60),
                maximum_attempts: 60,
                non_retryable_error_codes: vec![INVALID_REQUEST.to_owned()],
            },
            start_to_close_timeout: Duration::from_secs(120),
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }

    async fn run(
        &self,
        ctx: ActivityContext,
        input: SubmitResultInput,
    ) -> Result<PaymentSummary, ActivityError> {
        if input.result_hash.len() > 250 || !hash::is_hex_even(&input.result_hash) {
            return Err(invalid(
                "submitResultHash must be an even-length hex string of at most 250 characters",
            ));
        }
        let client = &self.client;
        let bid = input.blockchain_identifier.as_str();
        if ctx.attempt() > 1
            && let Some(p) = client
                .resolve_blockchain_identifier(input.network, bid)
                .await?
            && carries_result(&p, &input.result_hash)
        {
            return Ok(PaymentSummary::from(&p));
        }
        match client
            .submit_result(input.network, bid, &input.result_hash)
            .await
        {
            Ok(p) => Ok(PaymentSummary::from(&p)),
            Err(ClientError::Status {
                status: 404,
                message,
                ..
            }) => {
                let Some(p) = client
                    .resolve_blockchain_identifier(input.network, bid)
                    .await?
                else {
                    return Err(ActivityError::non_retryable(
                        PAYMENT_NOT_FOUND,
                        format!("{SERVICE}: no payment {bid} on {}", input.network),
                    ));
                };
                if carries_result(&p, &input.result_hash) {
                    return Ok(PaymentSummary::from(&p));
                }
                let settled = p.on_chain_state.is_some_and(OnChainState::is_terminal);
                let too_late = Utc::now().timestamp_millis() >= p.submit_result_time;
                let message = format!(
                    "{SERVICE}: submit-result refused ({message}); payment is {:?} / {}",
                    p.on_chain_state, p.next_action.requested_action
                );
                let e = if settled || too_late {
                    ActivityError::non_retryable(INVALID_STATE, message)
                } else {
                    ActivityError::retryable(INVALID_STATE, message)
                };
                Err(e.with_details(state_details(&p)))
            }
            Err(e) => Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AuthorizeRefund

/// Input of [`AuthorizeRefund`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizeRefundInput {
    pub blockchain_identifier: String,
    pub network: Network,
}

/// `masumi.authorize_refund`: the seller authorizes the buyer's refund of a disputed payment.
///
/// Resolves the payment first and calls the service only for `Disputed` +
/// `WaitingForExternalAction` (the only case the V1 service turns into a refund):
/// - a refund already under way (`AuthorizeRefund*` queued, `RefundRequested`,
///   `RefundWithdrawn`) is success without a call;
/// - a payment whose funds left the contract otherwise is non-retryable [`INVALID_STATE`];
/// - anything else (not disputed yet, a transaction in flight) is retryable [`INVALID_STATE`],
///   bounded by the retry policy.
#[derive(Debug, Clone)]
pub struct AuthorizeRefund {
    client: Arc<MasumiClient>,
}

impl AuthorizeRefund {
    pub fn new(client: Arc<MasumiClient>) -> Self {
        Self { client }
    }
}

enum RefundCheck {
    Done,
    Call,
    Refuse { retryable: bool },
}

fn refund_check(p: &Payment) -> RefundCheck {
    use OnChainState as S;
    use RequestedAction as A;
    match (p.on_chain_state, p.next_action.requested_action) {
        (_, A::AuthorizeRefundRequested | A::AuthorizeRefundInitiated) => RefundCheck::Done,
        (Some(S::RefundRequested | S::RefundWithdrawn | S::RefundAuthorized), _) => {
            RefundCheck::Done
        }
        (Some(S::Disputed), A::WaitingForExternalAction) => RefundCheck::Call,
        (Some(s), _) if s.is_terminal() => RefundCheck::Refuse { retryable: false },
        _ => RefundCheck::Refuse { retryable: true },
    }
}

impl Activity for AuthorizeRefund {
    const NAME: &'static str = "masumi.authorize_refund";
    type Input = AuthorizeRefundInput;
    type Output = PaymentSummary;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            retry: RetryPolicy {
                initial_interval: Duration::from_secs(2),
                backoff_coefficient: 2.0,
                maximum_interval: Duration::from_secs(60),
                maximum_attempts: 30,
                non_retryable_error_codes: Vec::new(),
            },
            start_to_close_timeout: Duration::from_secs(120),
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }

    async fn run(
        &self,
        _ctx: ActivityContext,
        input: AuthorizeRefundInput,
    ) -> Result<PaymentSummary, ActivityError> {
        let client = &self.client;
        let bid = input.blockchain_identifier.as_str();
        let mut refused_once = None;
        loop {
            let Some(p) = client
                .resolve_blockchain_identifier(input.network, bid)
                .await?
            else {
                return Err(ActivityError::non_retryable(
                    PAYMENT_NOT_FOUND,
                    format!("{SERVICE}: no payment {bid} on {}", input.network),
                ));
            };
            let retryable = match refund_check(&p) {
                RefundCheck::Done => return Ok(PaymentSummary::from(&p)),
                RefundCheck::Call if refused_once.is_none() => {
                    match client.authorize_refund(input.network, bid).await {
                        Ok(p) => return Ok(PaymentSummary::from(&p)),
                        Err(ClientError::Status {
                            status: 404,
                            message,
                            ..
                        }) => {
                            // Re-read: the state may have moved between the two calls.
                            refused_once = Some(message);
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                RefundCheck::Call => true,
                RefundCheck::Refuse { retryable } => retryable,
            };
            let message = format!(
                "{SERVICE}: cannot authorize a refund ({}); payment is {:?} / {}",
                refused_once.as_deref().unwrap_or("not disputed"),
                p.on_chain_state,
                p.next_action.requested_action
            );
            let e = if retryable {
                ActivityError::retryable(INVALID_STATE, message)
            } else {
                ActivityError::non_retryable(INVALID_STATE, message)
            };
            return Err(e.with_details(state_details(&p)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(now: DateTime<Utc>) -> CreatePaymentInput {
        CreatePaymentInput {
            agent_identifier: "ab".repeat(30),
            network: Network::Preprod,
            input_hash: "7f1b807c60ad347d64bb0837c88cb7edad3cec8774e6f08fd82bbd278f158113".into(),
            identifier_from_purchaser: "aabbaabb11221122aabb".into(),
            pay_by_time: now + chrono::Duration::hours(1),
            submit_result_time: now + chrono::Duration::hours(2),
            unlock_time: None,
            external_dispute_unlock_time: None,
            metadata: None,
        }
    }

    #[test]
    fn create_input_is_validated_like_the_service() {
        let now = Utc::now();
        assert!(input(now).to_request(now).is_ok());
        type Mutation<'a> = Box<dyn Fn(&mut CreatePaymentInput) + 'a>;
        let cases: Vec<(Mutation<'_>, &str)> = vec![
            (
                Box::new(|i| i.agent_identifier.truncate(56)),
                "agentIdentifier",
            ),
            (Box::new(|i| i.input_hash.push('a')), "Input hash"),
            (Box::new(|i| i.input_hash = "xyz0".into()), "Input hash"),
            (
                Box::new(|i| i.identifier_from_purchaser = "aabb".into()),
                "Purchaser",
            ),
            (
                Box::new(|i| i.pay_by_time = i.submit_result_time - chrono::Duration::minutes(4)),
                "Pay by time must be before",
            ),
            (
                Box::new(|i| i.pay_by_time = now - chrono::Duration::minutes(6)),
                "Pay by time must be in the future",
            ),
            (
                Box::new(|i| {
                    i.pay_by_time = now;
                    i.submit_result_time = now + chrono::Duration::minutes(14);
                }),
                "Submit result time must be in the future",
            ),
            (
                Box::new(|i| {
                    i.unlock_time = Some(i.submit_result_time + chrono::Duration::minutes(14))
                }),
                "Submit result time must be before unlock time",
            ),
            (
                Box::new(|i| {
                    i.unlock_time = Some(i.submit_result_time + chrono::Duration::hours(1));
                    i.external_dispute_unlock_time =
                        Some(i.submit_result_time + chrono::Duration::minutes(70));
                }),
                "External dispute unlock time",
            ),
        ];
        for (mutate, expected) in cases {
            let mut i = input(now);
            mutate(&mut i);
            let e = i.to_request(now).expect_err(expected);
            assert_eq!(e.code, INVALID_REQUEST);
            assert!(!e.retryable);
            assert!(e.message.contains(expected), "{} !~ {expected}", e.message);
        }
    }

    #[test]
    fn observation_serializes_tagged() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        let v = serde_json::to_value(PaymentObservation::NotFound { observed_at: at })
            .expect("serializes");
        assert_eq!(v["kind"], "not_found");
        let back: PaymentObservation = serde_json::from_value(serde_json::json!({
            "kind": "unchanged", "observed_at": "2026-01-01T00:00:00Z"
        }))
        .expect("payment defaults to None");
        assert!(matches!(
            back,
            PaymentObservation::Unchanged { payment: None, .. }
        ));
        let input: AwaitPaymentChangeInput = serde_json::from_value(serde_json::json!({
            "blockchain_identifier": "ab", "network": "Preprod", "until": "2026-01-01T00:00:00Z"
        }))
        .expect("defaults apply");
        assert_eq!((input.poll_min_ms, input.poll_max_ms), (500, 30_000));
    }
}
