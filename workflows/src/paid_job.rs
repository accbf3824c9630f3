//! `paid_job`: one paid AI job. The buyer's payment is requested on Masumi; once Masumi reports
//! the funds locked, the job runs on Kodosumi; its result hash is submitted to Masumi exactly
//! once and the payment is followed on chain until the seller has withdrawn it. On failure or
//! cancel after payment, nothing is submitted and the refund is followed until the buyer has
//! withdrawn it.
//!
//! Money safety, by construction of the states below:
//! - Kodosumi is called only from [`Phase::Launching`], entered only on `FundsLocked`;
//! - the result is submitted only from [`Phase::SubmittingResult`], entered once per job;
//! - after a result was submitted no state leads to a refund the seller initiates, except an
//!   explicit dispute refund (`refund_on_dispute`);
//! - a refund path never submits a result.
//!
//! Polling happens inside long-running, heartbeating activities that return only when the
//! observed state changes, so a job followed for hours journals its changes, not its polls.

use activities::kodosumi::{
    self, AwaitExecutionChange, AwaitExecutionChangeInput, ExecState, ExecutionObservation,
    ExecutionView, FetchResult, FetchResultInput, GetLockForm, GetLockFormInput, Kill, KillInput,
    Launch, LaunchInput, LaunchOutcome, ReleaseLock, ReleaseLockInput,
};
use activities::masumi::{
    self, AuthorizeRefund, AuthorizeRefundInput, AwaitPaymentChange, AwaitPaymentChangeInput,
    CreatePayment, CreatePaymentInput, Network, OnChainState, PaymentObservation, PaymentSummary,
    SubmitResult, SubmitResultInput,
};
use chrono::{DateTime, Duration, Utc};
use engine::{ActivityCall, ActivityOutcome, Next, Transition, Workflow, WorkflowError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What the MIP-003 `start_job` handler hands to a new job, validated and with every time
/// already decided (transition code never reads the clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaidJobInput {
    pub flow_uid: String,
    /// The flow's path on Kodosumi (`/-/host/port/-/path`).
    pub flow_url: String,
    pub flow_summary: String,
    pub identifier_from_purchaser: String,
    /// The buyer's MIP-003 `input_data`, as validated.
    pub input_data: Value,
    pub input_hash: String,
    /// `input_data` converted to what Kodosumi's form expects.
    pub launch_inputs: Map<String, Value>,
    pub agent_identifier: String,
    pub network: Network,
    pub pay_by_time: DateTime<Utc>,
    pub submit_result_time: DateTime<Utc>,
    #[serde(default)]
    pub unlock_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub external_dispute_unlock_time: Option<DateTime<Utc>>,
    /// Authorize the buyer's refund when they dispute a submitted result.
    #[serde(default)]
    pub refund_on_dispute: bool,
}

/// Why a job did not deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl Failure {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    fn cancelled() -> Self {
        Self::new(CANCELLED, "cancelled by an operator")
    }

    fn is_cancel(&self) -> bool {
        self.code == CANCELLED
    }
}

const CANCELLED: &str = "cancelled";

/// The job's phases; each carries what is valid in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The payment request is being created on Masumi. → `AwaitingPayment` or `Failed`.
    CreatingPayment,
    /// Waiting for the buyer's funds. → `Launching` (FundsLocked), `PaymentInvalid`,
    /// `PaymentTimedOut` (payByTime passed), `FollowingRefund`.
    AwaitingPayment { payment: PaymentSummary },
    /// Masumi saw an invalid payment (`FundsOrDatumInvalid`): an operator decides with the
    /// `operator` signal (`recheck` or `close`).
    PaymentInvalid { payment: PaymentSummary },
    /// Funds are locked; the launch on Kodosumi is journaled as intended before it is made.
    /// → `Running` or `FollowingRefund`.
    Launching { payment: PaymentSummary },
    /// Running on Kodosumi. → `FetchingResult`, `SubmittingResult`, `LoadingInputForm`,
    /// `Killing` (deadline), `FollowingRefund` (error).
    Running {
        payment: PaymentSummary,
        fid: String,
        status: ExecState,
        locks: Vec<String>,
    },
    /// Kodosumi asks for input; its form is being loaded.
    LoadingInputForm {
        payment: PaymentSummary,
        fid: String,
        lock_id: String,
    },
    /// Waiting for the buyer's `/provide_input` (the `provide_input` signal) until the deadline.
    AwaitingInput {
        payment: PaymentSummary,
        fid: String,
        lock_id: String,
        /// The MIP-003 `input_schema` of the requested input.
        input_schema: Value,
    },
    /// Releasing Kodosumi's lock with the buyer's input. → `Running`.
    ProvidingInput {
        payment: PaymentSummary,
        fid: String,
        lock_id: String,
        inputs: Map<String, Value>,
    },
    /// The run finished; its raw result is being fetched.
    FetchingResult {
        payment: PaymentSummary,
        fid: String,
    },
    /// Submitting the result hash to Masumi (once per job). → `ResultSubmitted`.
    SubmittingResult {
        payment: PaymentSummary,
        result: String,
        result_hash: String,
    },
    /// The result hash is submitted; following the chain to `Withdrawn` (or a dispute).
    ResultSubmitted {
        payment: PaymentSummary,
        result: String,
        result_hash: String,
    },
    /// The buyer disputed the submitted result.
    Disputed {
        payment: PaymentSummary,
        result: String,
        result_hash: String,
    },
    /// Authorizing the buyer's refund after a dispute (`refund_on_dispute`).
    AuthorizingRefund {
        payment: PaymentSummary,
        result: String,
        result_hash: String,
    },
    /// The run must stop (failure, deadline or cancel after payment): kill it, then follow the refund.
    Killing {
        payment: PaymentSummary,
        fid: String,
        reason: Failure,
    },
    /// Nothing is submitted; following the payment until the buyer has withdrawn the refund.
    FollowingRefund {
        payment: PaymentSummary,
        reason: Failure,
    },
    /// Terminal: the seller withdrew the payment.
    Completed {
        payment: PaymentSummary,
        result: Option<String>,
        result_hash: Option<String>,
    },
    /// Terminal: the buyer withdrew the refund (or admins settled a dispute).
    Refunded {
        payment: PaymentSummary,
        reason: Failure,
    },
    /// Terminal: no payment by `payByTime`; no money moved.
    PaymentTimedOut { payment: PaymentSummary },
    /// Terminal: failed before any money moved, or closed by an operator.
    Failed { reason: Failure },
    /// Terminal: cancelled before payment.
    Cancelled,
}

/// The paid job's state: the validated input, the phase, and a counter of MIP-003 status
/// changes (the status `id` is derived from it, so it changes exactly when the status does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaidJobState {
    pub job: PaidJobInput,
    pub mip_seq: u32,
    #[serde(flatten)]
    pub phase: Phase,
}

/// The outcome of a completed job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaidJobOutput {
    pub blockchain_identifier: String,
    pub result: Option<String>,
    pub result_hash: Option<String>,
    /// The final on-chain state (`Withdrawn`, `DisputedWithdrawn`).
    pub on_chain_state: Option<OnChainState>,
}

/// Custom signals of a paid job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaidJobSignal {
    /// The buyer's `/provide_input`, validated and converted by the API.
    ProvideInput {
        lock_id: String,
        inputs: Map<String, Value>,
    },
    /// An operator's decision on an invalid payment.
    Operator(OperatorDecision),
}

/// What an operator decides for a job in `PaymentInvalid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorDecision {
    /// Look at the payment again (after `error-state-recovery` on Masumi, say).
    Recheck,
    /// Give up on this job.
    Close,
}

/// The `paid_job` workflow.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaidJob;

/// Time kept free before `submitResultTime` to submit the result.
const SUBMIT_MARGIN: Duration = Duration::minutes(2);
/// How long past the last payment deadline the chain is followed before giving up.
const FOLLOW_GRACE: Duration = Duration::days(2);

fn ms(t: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(t).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The time the run must have finished by.
fn run_deadline(payment: &PaymentSummary) -> DateTime<Utc> {
    ms(payment.submit_result_time_ms) - SUBMIT_MARGIN
}

/// How long the chain is followed after a submission or a failure.
fn follow_until(payment: &PaymentSummary) -> DateTime<Utc> {
    let last = payment
        .external_dispute_unlock_time_ms
        .max(payment.unlock_time_ms)
        .max(payment.submit_result_time_ms);
    ms(last) + FOLLOW_GRACE
}

fn await_payment(payment: &PaymentSummary, network: Network, until: DateTime<Utc>) -> ActivityCall {
    ActivityCall::new::<AwaitPaymentChange>(&AwaitPaymentChangeInput {
        blockchain_identifier: payment.blockchain_identifier.clone(),
        network,
        known_state: payment.on_chain_state,
        known_action: Some(payment.next_action),
        until,
        ..AwaitPaymentChangeInput::default()
    })
}

type Step = Transition<PaidJobState, PaidJobOutput>;

impl PaidJobState {
    /// Moves to `phase`, counting MIP-003 status changes.
    fn to(self, phase: Phase) -> Self {
        let before = mip_status_of(&self.phase);
        let mip_seq = if mip_status_of(&phase) == before {
            self.mip_seq
        } else {
            self.mip_seq + 1
        };
        Self {
            job: self.job,
            mip_seq,
            phase,
        }
    }

    /// Moves to `phase` and does what that phase does.
    fn go(self, phase: Phase) -> Step {
        let state = self.to(phase);
        let next = state.action();
        Transition::new(state, next)
    }

    /// The one thing each phase does.
    fn action(&self) -> Next<PaidJobOutput> {
        let job = &self.job;
        let call = match &self.phase {
            Phase::CreatingPayment => ActivityCall::new::<CreatePayment>(&CreatePaymentInput {
                agent_identifier: job.agent_identifier.clone(),
                network: job.network,
                input_hash: job.input_hash.clone(),
                identifier_from_purchaser: job.identifier_from_purchaser.clone(),
                pay_by_time: job.pay_by_time,
                submit_result_time: job.submit_result_time,
                unlock_time: job.unlock_time,
                external_dispute_unlock_time: job.external_dispute_unlock_time,
                metadata: None,
            }),
            Phase::AwaitingPayment { payment } => {
                await_payment(payment, job.network, ms(payment.pay_by_time_ms))
            }
            Phase::PaymentInvalid { .. } => return Next::WaitForSignal,
            Phase::Launching { .. } => ActivityCall::new::<Launch>(&LaunchInput {
                job_id: format!("{}:{}", job.flow_uid, job.identifier_from_purchaser),
                flow_url: job.flow_url.clone(),
                flow_summary: job.flow_summary.clone(),
                inputs: job.launch_inputs.clone(),
                // The call's journaled schedule time is the intent.
                intent_at: None,
            }),
            Phase::Running {
                payment,
                fid,
                status,
                locks,
            } => ActivityCall::new::<AwaitExecutionChange>(&AwaitExecutionChangeInput {
                fid: fid.clone(),
                known_status: Some(*status),
                known_locks: locks.clone(),
                until: run_deadline(payment),
                ..AwaitExecutionChangeInput::default()
            }),
            Phase::LoadingInputForm { fid, lock_id, .. } => {
                ActivityCall::new::<GetLockForm>(&GetLockFormInput {
                    fid: fid.clone(),
                    lock_id: lock_id.clone(),
                })
            }
            Phase::AwaitingInput { payment, .. } => return Next::TimerAt(run_deadline(payment)),
            Phase::ProvidingInput {
                fid,
                lock_id,
                inputs,
                ..
            } => ActivityCall::new::<ReleaseLock>(&ReleaseLockInput {
                fid: fid.clone(),
                lock_id: lock_id.clone(),
                inputs: inputs.clone(),
            }),
            Phase::FetchingResult { fid, .. } => {
                ActivityCall::new::<FetchResult>(&FetchResultInput { fid: fid.clone() })
            }
            Phase::SubmittingResult {
                payment,
                result_hash,
                ..
            } => ActivityCall::new::<SubmitResult>(&SubmitResultInput {
                blockchain_identifier: payment.blockchain_identifier.clone(),
                network: job.network,
                result_hash: result_hash.clone(),
            }),
            Phase::ResultSubmitted { payment, .. }
            | Phase::Disputed { payment, .. }
            | Phase::FollowingRefund { payment, .. } => {
                await_payment(payment, job.network, follow_until(payment))
            }
            Phase::AuthorizingRefund { payment, .. } => {
                ActivityCall::new::<AuthorizeRefund>(&AuthorizeRefundInput {
                    blockchain_identifier: payment.blockchain_identifier.clone(),
                    network: job.network,
                })
            }
            Phase::Killing { fid, .. } => {
                ActivityCall::new::<Kill>(&KillInput { fid: fid.clone() })
            }
            Phase::Completed {
                payment,
                result,
                result_hash,
            } => {
                return Next::Complete(PaidJobOutput {
                    blockchain_identifier: payment.blockchain_identifier.clone(),
                    result: result.clone(),
                    result_hash: result_hash.clone(),
                    on_chain_state: payment.on_chain_state,
                });
            }
            Phase::Refunded { reason, .. } | Phase::Failed { reason } => {
                return if reason.is_cancel() {
                    Next::Cancelled
                } else {
                    Next::Fail(WorkflowError::new(
                        reason.code.clone(),
                        reason.message.clone(),
                    ))
                };
            }
            Phase::PaymentTimedOut { .. } => {
                return Next::Fail(WorkflowError::new(
                    "payment_timeout",
                    "the buyer did not pay before payByTime; no money moved",
                ));
            }
            Phase::Cancelled => return Next::Cancelled,
        };
        Next::Activity(call)
    }

    /// Keeps the phase and does its action again (a poll that saw nothing new, an ignored cancel).
    fn again(self) -> Step {
        let next = self.action();
        Transition::new(self, next)
    }
}

/// Where a payment seen before the job ran leads: launch once the funds are locked.
fn on_payment_seen(state: PaidJobState, payment: PaymentSummary) -> Step {
    match payment.on_chain_state {
        Some(OnChainState::FundsLocked) => state.go(Phase::Launching { payment }),
        Some(OnChainState::FundsOrDatumInvalid) => state.go(Phase::PaymentInvalid { payment }),
        None => state.go(Phase::AwaitingPayment { payment }),
        Some(_) => follow_payment(
            state,
            payment,
            Failure::new(
                "refund_requested",
                "the buyer asked for a refund before the job ran",
            ),
        ),
    }
}

/// Where a payment seen after the result was submitted leads.
fn after_submission(
    state: PaidJobState,
    payment: PaymentSummary,
    result: String,
    result_hash: String,
) -> Step {
    match payment.on_chain_state {
        Some(OnChainState::Withdrawn | OnChainState::DisputedWithdrawn) => {
            state.go(Phase::Completed {
                payment,
                result: Some(result),
                result_hash: Some(result_hash),
            })
        }
        Some(OnChainState::RefundWithdrawn) => state.go(Phase::Refunded {
            payment,
            reason: Failure::new(
                "refunded_after_dispute",
                "the buyer was refunded after a dispute",
            ),
        }),
        Some(OnChainState::Disputed) if state.job.refund_on_dispute => {
            state.go(Phase::AuthorizingRefund {
                payment,
                result,
                result_hash,
            })
        }
        Some(OnChainState::Disputed) => state.go(Phase::Disputed {
            payment,
            result,
            result_hash,
        }),
        _ => state.go(Phase::ResultSubmitted {
            payment,
            result,
            result_hash,
        }),
    }
}

/// Where a payment observed on chain leads once the job no longer runs.
fn follow_payment(state: PaidJobState, payment: PaymentSummary, reason: Failure) -> Step {
    match payment.on_chain_state {
        Some(OnChainState::RefundWithdrawn | OnChainState::DisputedWithdrawn) => {
            state.go(Phase::Refunded { payment, reason })
        }
        Some(OnChainState::Withdrawn) => state.go(Phase::Completed {
            payment,
            result: None,
            result_hash: None,
        }),
        _ => state.go(Phase::FollowingRefund { payment, reason }),
    }
}

/// The next phase after observing the run.
fn observe_run(
    state: PaidJobState,
    payment: PaymentSummary,
    fid: String,
    view: ExecutionView,
    deadline_passed: bool,
) -> Step {
    match view.status {
        ExecState::Finished => match view.final_raw {
            Some(raw) => submit(state, payment, kodosumi::result_text(&raw)),
            None => state.go(Phase::FetchingResult { payment, fid }),
        },
        ExecState::Error => {
            let detail = view
                .final_raw
                .as_deref()
                .map(kodosumi::result_text)
                .unwrap_or_default();
            let reason = Failure::new(
                "kodosumi_error",
                format!("the run failed on Kodosumi: {detail}"),
            );
            state.go(Phase::FollowingRefund { payment, reason })
        }
        _ if deadline_passed => {
            let reason = Failure::new(
                "run_timeout",
                "the run did not finish before the result deadline",
            );
            state.go(Phase::Killing {
                payment,
                fid,
                reason,
            })
        }
        ExecState::Awaiting if !view.locks.is_empty() => {
            let lock_id = view.locks[0].clone();
            state.go(Phase::LoadingInputForm {
                payment,
                fid,
                lock_id,
            })
        }
        status => state.go(Phase::Running {
            payment,
            fid,
            status,
            locks: view.locks,
        }),
    }
}

fn submit(state: PaidJobState, payment: PaymentSummary, result: String) -> Step {
    let result_hash = masumi::hash::output_hash(&state.job.identifier_from_purchaser, &result);
    state.go(Phase::SubmittingResult {
        payment,
        result,
        result_hash,
    })
}

fn error_text(e: &engine::ActivityError) -> String {
    format!("{} ({})", e.message, e.code)
}

impl Workflow for PaidJob {
    const NAME: &'static str = "paid_job";
    type Input = PaidJobInput;
    type State = PaidJobState;
    type Output = PaidJobOutput;
    type Signal = PaidJobSignal;

    /// Jobs are tagged with their flow's uid, so lists can be filtered by flow.
    fn tag(&self, job: &PaidJobInput) -> Option<String> {
        Some(job.flow_uid.clone())
    }

    fn start(&self, job: PaidJobInput) -> Step {
        let state = PaidJobState {
            job,
            mip_seq: 0,
            phase: Phase::CreatingPayment,
        };
        state.again()
    }

    fn on_activity(&self, state: PaidJobState, outcome: ActivityOutcome) -> Step {
        match state.phase.clone() {
            // A retried request can return the payment an earlier attempt created, which the
            // buyer may have paid meanwhile: it is judged by its state like any observation
            // (waiting for a change from `FundsLocked` would never launch the job).
            Phase::CreatingPayment => match outcome.decode::<CreatePayment>() {
                Ok(payment) => on_payment_seen(state, payment),
                Err(e) => state.go(Phase::Failed {
                    reason: Failure::new("payment_request_failed", error_text(&e)),
                }),
            },
            Phase::AwaitingPayment { payment } => match outcome.decode::<AwaitPaymentChange>() {
                Ok(PaymentObservation::Found(p)) => on_payment_seen(state, p),
                Ok(PaymentObservation::Unchanged { observed_at, .. })
                    if observed_at >= ms(payment.pay_by_time_ms) =>
                {
                    state.go(Phase::PaymentTimedOut { payment })
                }
                Ok(PaymentObservation::Unchanged { .. } | PaymentObservation::NotFound { .. }) => {
                    state.again()
                }
                Err(e) => state.go(Phase::Failed {
                    reason: Failure::new("payment_check_failed", error_text(&e)),
                }),
            },
            Phase::Launching { payment } => match outcome.decode::<Launch>() {
                Ok(LaunchOutcome::Launched { fid }) => state.go(Phase::Running {
                    payment,
                    fid,
                    status: ExecState::Starting,
                    locks: vec![],
                }),
                Ok(LaunchOutcome::Rejected { errors }) => {
                    let reason = Failure::new(
                        "launch_rejected",
                        format!("Kodosumi refused the inputs: {errors}"),
                    );
                    state.go(Phase::FollowingRefund { payment, reason })
                }
                Err(e) => {
                    let reason = Failure::new("launch_failed", error_text(&e));
                    state.go(Phase::FollowingRefund { payment, reason })
                }
            },
            Phase::Running { payment, fid, .. } => match outcome.decode::<AwaitExecutionChange>() {
                Ok(ExecutionObservation::Changed { view, .. }) => {
                    observe_run(state, payment, fid, view, false)
                }
                Ok(ExecutionObservation::Unchanged { view, observed_at }) => {
                    let passed = observed_at >= run_deadline(&payment);
                    observe_run(state, payment, fid, view, passed)
                }
                Ok(ExecutionObservation::NotFound { .. }) => {
                    let reason = Failure::new("run_lost", "Kodosumi no longer knows the run");
                    state.go(Phase::FollowingRefund { payment, reason })
                }
                Err(e) => {
                    let reason = Failure::new("kodosumi_unreachable", error_text(&e));
                    state.go(Phase::Killing {
                        payment,
                        fid,
                        reason,
                    })
                }
            },
            Phase::LoadingInputForm {
                payment,
                fid,
                lock_id,
            } => match outcome.decode::<GetLockForm>() {
                Ok(form) => {
                    let input_schema = kodosumi::schema::lock_form_to_mip003(&form.elements);
                    state.go(Phase::AwaitingInput {
                        payment,
                        fid,
                        lock_id,
                        input_schema,
                    })
                }
                Err(e) => {
                    let reason = Failure::new("input_form_failed", error_text(&e));
                    state.go(Phase::Killing {
                        payment,
                        fid,
                        reason,
                    })
                }
            },
            Phase::ProvidingInput { payment, fid, .. } => {
                // Released, or the lock was already gone: either way the run goes on; the next
                // observation tells which.
                let _ = outcome.decode::<ReleaseLock>();
                state.go(Phase::Running {
                    payment,
                    fid,
                    status: ExecState::Running,
                    locks: vec![],
                })
            }
            Phase::FetchingResult { payment, fid } => match outcome.decode::<FetchResult>() {
                Ok(raw) => submit(state, payment, kodosumi::result_text(&raw.raw)),
                Err(e) => {
                    let reason = Failure::new("result_fetch_failed", error_text(&e));
                    state.go(Phase::Killing {
                        payment,
                        fid,
                        reason,
                    })
                }
            },
            Phase::SubmittingResult {
                payment,
                result,
                result_hash,
            } => match outcome.decode::<SubmitResult>() {
                // A retry that finds the result already submitted returns the payment as it is
                // now, possibly settled already: judged like any later observation.
                Ok(p) => after_submission(state, p, result, result_hash),
                Err(e) => {
                    // Not submitted before the deadline: the buyer's refund follows.
                    let reason = Failure::new("submit_failed", error_text(&e));
                    state.go(Phase::FollowingRefund { payment, reason })
                }
            },
            Phase::ResultSubmitted {
                payment,
                result,
                result_hash,
            }
            | Phase::Disputed {
                payment,
                result,
                result_hash,
            } => {
                let p = match outcome.decode::<AwaitPaymentChange>() {
                    Ok(PaymentObservation::Found(p)) => p,
                    Ok(PaymentObservation::Unchanged { observed_at, .. })
                        if observed_at >= follow_until(&payment) =>
                    {
                        // The chain never settled within the grace: stop following, keep the result.
                        return state.go(Phase::Completed {
                            payment,
                            result: Some(result),
                            result_hash: Some(result_hash),
                        });
                    }
                    Ok(_) | Err(_) => return state.again(),
                };
                after_submission(state, p, result, result_hash)
            }
            Phase::AuthorizingRefund {
                payment,
                result,
                result_hash,
            } => match outcome.decode::<AuthorizeRefund>() {
                Ok(p) => follow_payment(
                    state,
                    p,
                    Failure::new(
                        "refunded_after_dispute",
                        "refund authorized after the buyer's dispute",
                    ),
                ),
                Err(_) => state.go(Phase::Disputed {
                    payment,
                    result,
                    result_hash,
                }),
            },
            Phase::Killing {
                payment, reason, ..
            } => {
                // A failed kill does not hold the refund back.
                let _ = outcome.decode::<Kill>();
                state.go(Phase::FollowingRefund { payment, reason })
            }
            Phase::FollowingRefund { payment, reason } => {
                match outcome.decode::<AwaitPaymentChange>() {
                    Ok(PaymentObservation::Found(p)) => follow_payment(state, p, reason),
                    Ok(PaymentObservation::Unchanged { observed_at, .. })
                        if observed_at >= follow_until(&payment) =>
                    {
                        state.go(Phase::Refunded { payment, reason })
                    }
                    Ok(_) | Err(_) => state.again(),
                }
            }
            // Waits and terminal phases run no activity.
            Phase::PaymentInvalid { .. }
            | Phase::AwaitingInput { .. }
            | Phase::Completed { .. }
            | Phase::Refunded { .. }
            | Phase::PaymentTimedOut { .. }
            | Phase::Failed { .. }
            | Phase::Cancelled => state.again(),
        }
    }

    fn on_timer(&self, state: PaidJobState) -> Step {
        match state.phase.clone() {
            Phase::AwaitingInput { payment, fid, .. } => {
                let reason = Failure::new(
                    "input_timeout",
                    "no input was provided before the result deadline",
                );
                state.go(Phase::Killing {
                    payment,
                    fid,
                    reason,
                })
            }
            _ => Transition::new(state, Next::Unchanged),
        }
    }

    fn on_signal(&self, state: PaidJobState, signal: PaidJobSignal) -> Step {
        match (state.phase.clone(), signal) {
            (
                Phase::AwaitingInput {
                    payment,
                    fid,
                    lock_id,
                    ..
                },
                PaidJobSignal::ProvideInput {
                    lock_id: given,
                    inputs,
                },
            ) if given == lock_id => state.go(Phase::ProvidingInput {
                payment,
                fid,
                lock_id,
                inputs,
            }),
            (
                Phase::PaymentInvalid { payment },
                PaidJobSignal::Operator(OperatorDecision::Recheck),
            ) => state.go(Phase::AwaitingPayment { payment }),
            (Phase::PaymentInvalid { .. }, PaidJobSignal::Operator(OperatorDecision::Close)) => {
                state.go(Phase::Failed {
                    reason: Failure::new(
                        "payment_invalid",
                        "the payment was invalid; closed by an operator",
                    ),
                })
            }
            _ => Transition::new(state, Next::Unchanged),
        }
    }

    fn on_cancel(&self, state: PaidJobState) -> Step {
        match state.phase.clone() {
            // No money is locked yet (a payment arriving later is refunded to the buyer on chain
            // after submitResultTime, since nothing is ever submitted).
            Phase::CreatingPayment
            | Phase::AwaitingPayment { .. }
            | Phase::PaymentInvalid { .. } => state.go(Phase::Cancelled),
            Phase::Launching { payment } | Phase::FetchingResult { payment, .. } => {
                state.go(Phase::FollowingRefund {
                    payment,
                    reason: Failure::cancelled(),
                })
            }
            Phase::Running { payment, fid, .. }
            | Phase::LoadingInputForm { payment, fid, .. }
            | Phase::AwaitingInput { payment, fid, .. }
            | Phase::ProvidingInput { payment, fid, .. } => state.go(Phase::Killing {
                payment,
                fid,
                reason: Failure::cancelled(),
            }),
            Phase::Killing { payment, fid, .. } => state.go(Phase::Killing {
                payment,
                fid,
                reason: Failure::cancelled(),
            }),
            Phase::FollowingRefund { payment, .. } => state.go(Phase::FollowingRefund {
                payment,
                reason: Failure::cancelled(),
            }),
            // Once a result is (being) submitted the job delivers: a cancel changes nothing.
            Phase::SubmittingResult { .. }
            | Phase::ResultSubmitted { .. }
            | Phase::Disputed { .. }
            | Phase::AuthorizingRefund { .. }
            | Phase::Completed { .. }
            | Phase::Refunded { .. }
            | Phase::PaymentTimedOut { .. }
            | Phase::Failed { .. }
            | Phase::Cancelled => state.again(),
        }
    }
}

/// MIP-003 job statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MipStatus {
    AwaitingPayment,
    AwaitingInput,
    Running,
    Completed,
    Failed,
}

fn mip_status_of(phase: &Phase) -> MipStatus {
    match phase {
        Phase::CreatingPayment | Phase::AwaitingPayment { .. } | Phase::PaymentInvalid { .. } => {
            MipStatus::AwaitingPayment
        }
        Phase::Launching { .. }
        | Phase::Running { .. }
        | Phase::LoadingInputForm { .. }
        | Phase::ProvidingInput { .. }
        | Phase::FetchingResult { .. }
        | Phase::SubmittingResult { .. } => MipStatus::Running,
        Phase::AwaitingInput { .. } => MipStatus::AwaitingInput,
        Phase::ResultSubmitted { .. }
        | Phase::Disputed { .. }
        | Phase::AuthorizingRefund { .. }
        | Phase::Completed { .. } => MipStatus::Completed,
        Phase::Killing { .. }
        | Phase::FollowingRefund { .. }
        | Phase::Refunded { .. }
        | Phase::PaymentTimedOut { .. }
        | Phase::Failed { .. }
        | Phase::Cancelled => MipStatus::Failed,
    }
}

/// The MIP-003 `/status` view of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MipView {
    /// Changes whenever `status` changes.
    pub id: uuid::Uuid,
    pub status: MipStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl PaidJobState {
    /// The MIP-003 view; `job_id` seeds the status id.
    pub fn mip_view(&self, job_id: uuid::Uuid) -> MipView {
        let status = mip_status_of(&self.phase);
        let id = uuid::Uuid::new_v5(&job_id, format!("{}", self.mip_seq).as_bytes());
        let (input_schema, result, message) = match &self.phase {
            Phase::AwaitingInput { input_schema, .. } => (Some(input_schema.clone()), None, None),
            Phase::ResultSubmitted { result, .. }
            | Phase::Disputed { result, .. }
            | Phase::AuthorizingRefund { result, .. } => (None, Some(result.clone()), None),
            Phase::Completed { result, .. } => (None, result.clone(), None),
            Phase::PaymentInvalid { .. } => (
                None,
                None,
                Some("the payment is invalid; an operator reviews it".to_owned()),
            ),
            Phase::Killing { reason, .. }
            | Phase::FollowingRefund { reason, .. }
            | Phase::Refunded { reason, .. }
            | Phase::Failed { reason } => (None, None, Some(reason.message.clone())),
            Phase::PaymentTimedOut { .. } => {
                (None, None, Some("no payment before payByTime".to_owned()))
            }
            Phase::Cancelled => (None, None, Some("cancelled".to_owned())),
            _ => (None, None, None),
        };
        MipView {
            id,
            status,
            input_schema,
            result,
            message,
        }
    }

    /// The payment, once requested.
    pub fn payment(&self) -> Option<&PaymentSummary> {
        match &self.phase {
            Phase::AwaitingPayment { payment }
            | Phase::PaymentInvalid { payment }
            | Phase::Launching { payment }
            | Phase::Running { payment, .. }
            | Phase::LoadingInputForm { payment, .. }
            | Phase::AwaitingInput { payment, .. }
            | Phase::ProvidingInput { payment, .. }
            | Phase::FetchingResult { payment, .. }
            | Phase::SubmittingResult { payment, .. }
            | Phase::ResultSubmitted { payment, .. }
            | Phase::Disputed { payment, .. }
            | Phase::AuthorizingRefund { payment, .. }
            | Phase::Killing { payment, .. }
            | Phase::FollowingRefund { payment, .. }
            | Phase::Completed { payment, .. }
            | Phase::Refunded { payment, .. }
            | Phase::PaymentTimedOut { payment } => Some(payment),
            Phase::CreatingPayment | Phase::Failed { .. } | Phase::Cancelled => None,
        }
    }
}

/// A job's payment as operators see it: the payment request on Masumi (once created) with its
/// on-chain state and deadlines, from the job's journaled state (no call to Masumi).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaymentView {
    /// The job's phase (`awaiting_payment`, `running`, `result_submitted`, ...).
    pub phase: String,
    pub mip_status: MipStatus,
    pub network: Network,
    pub agent_identifier: String,
    pub identifier_from_purchaser: String,
    pub input_hash: String,
    /// `None` until the payment request exists (and for jobs that failed before).
    pub blockchain_identifier: Option<String>,
    /// `None` before a valid locking transaction exists.
    pub on_chain_state: Option<OnChainState>,
    pub next_action: Option<masumi::RequestedAction>,
    pub error_type: Option<String>,
    pub error_note: Option<String>,
    /// The result hash on chain, or the one this job computed for submission.
    pub result_hash: Option<String>,
    pub seller_vkey: Option<String>,
    pub deadlines: PaymentDeadlines,
    /// Why the job did not deliver (failed, refunded, cancelled).
    pub failure: Option<Failure>,
}

/// The payment's deadlines: Masumi's once the request exists, else the ones the job asked for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaymentDeadlines {
    pub pay_by_time: DateTime<Utc>,
    pub submit_result_time: DateTime<Utc>,
    pub unlock_time: Option<DateTime<Utc>>,
    pub external_dispute_unlock_time: Option<DateTime<Utc>>,
}

impl Phase {
    /// The phase's stored name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreatingPayment => "creating_payment",
            Self::AwaitingPayment { .. } => "awaiting_payment",
            Self::PaymentInvalid { .. } => "payment_invalid",
            Self::Launching { .. } => "launching",
            Self::Running { .. } => "running",
            Self::LoadingInputForm { .. } => "loading_input_form",
            Self::AwaitingInput { .. } => "awaiting_input",
            Self::ProvidingInput { .. } => "providing_input",
            Self::FetchingResult { .. } => "fetching_result",
            Self::SubmittingResult { .. } => "submitting_result",
            Self::ResultSubmitted { .. } => "result_submitted",
            Self::Disputed { .. } => "disputed",
            Self::AuthorizingRefund { .. } => "authorizing_refund",
            Self::Killing { .. } => "killing",
            Self::FollowingRefund { .. } => "following_refund",
            Self::Completed { .. } => "completed",
            Self::Refunded { .. } => "refunded",
            Self::PaymentTimedOut { .. } => "payment_timed_out",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl PaidJobState {
    /// The payment view of this state (pure).
    pub fn payment_view(&self) -> PaymentView {
        let job = &self.job;
        let payment = self.payment();
        let computed_hash = match &self.phase {
            Phase::SubmittingResult { result_hash, .. }
            | Phase::ResultSubmitted { result_hash, .. }
            | Phase::Disputed { result_hash, .. }
            | Phase::AuthorizingRefund { result_hash, .. } => Some(result_hash.clone()),
            Phase::Completed { result_hash, .. } => result_hash.clone(),
            _ => None,
        };
        let failure = match &self.phase {
            Phase::Killing { reason, .. }
            | Phase::FollowingRefund { reason, .. }
            | Phase::Refunded { reason, .. }
            | Phase::Failed { reason } => Some(reason.clone()),
            Phase::Cancelled => Some(Failure::cancelled()),
            _ => None,
        };
        let deadlines = match payment {
            Some(p) => PaymentDeadlines {
                pay_by_time: ms(p.pay_by_time_ms),
                submit_result_time: ms(p.submit_result_time_ms),
                unlock_time: Some(ms(p.unlock_time_ms)),
                external_dispute_unlock_time: Some(ms(p.external_dispute_unlock_time_ms)),
            },
            None => PaymentDeadlines {
                pay_by_time: job.pay_by_time,
                submit_result_time: job.submit_result_time,
                unlock_time: job.unlock_time,
                external_dispute_unlock_time: job.external_dispute_unlock_time,
            },
        };
        PaymentView {
            phase: self.phase.name().to_owned(),
            mip_status: mip_status_of(&self.phase),
            network: job.network,
            agent_identifier: job.agent_identifier.clone(),
            identifier_from_purchaser: job.identifier_from_purchaser.clone(),
            input_hash: job.input_hash.clone(),
            blockchain_identifier: payment.map(|p| p.blockchain_identifier.clone()),
            on_chain_state: payment.and_then(|p| p.on_chain_state),
            next_action: payment.map(|p| p.next_action),
            error_type: payment.and_then(|p| p.error_type.clone()),
            error_note: payment.and_then(|p| p.error_note.clone()),
            result_hash: payment
                .and_then(|p| p.result_hash.clone())
                .or(computed_hash),
            seller_vkey: payment.and_then(|p| p.seller_vkey.clone()),
            deadlines,
            failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use activities::masumi::RequestedAction;
    use engine::Activity;
    use serde_json::json;

    const PURCHASER: &str = "aabbaabb11221122aabb";

    fn input() -> PaidJobInput {
        let t0 = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        PaidJobInput {
            flow_uid: "uid".into(),
            flow_url: "/-/127.0.0.1/8011/-/".into(),
            flow_summary: "Hello World".into(),
            identifier_from_purchaser: PURCHASER.into(),
            input_data: json!({"name": "Alice"}),
            input_hash: "00".into(),
            launch_inputs: Map::new(),
            agent_identifier: "agent".into(),
            network: Network::Preprod,
            pay_by_time: t0 + Duration::hours(1),
            submit_result_time: t0 + Duration::hours(2),
            unlock_time: None,
            external_dispute_unlock_time: None,
            refund_on_dispute: false,
        }
    }

    fn payment(state: Option<OnChainState>) -> PaymentSummary {
        let t0 = 1_800_000_000_000;
        PaymentSummary {
            blockchain_identifier: "bc".into(),
            agent_identifier: "agent".into(),
            input_hash: "00".into(),
            on_chain_state: state,
            next_action: RequestedAction::WaitingForExternalAction,
            error_type: None,
            error_note: None,
            result_hash: None,
            pay_by_time_ms: t0 + 3_600_000,
            submit_result_time_ms: t0 + 7_200_000,
            unlock_time_ms: t0 + 9_000_000,
            external_dispute_unlock_time_ms: t0 + 10_000_000,
            seller_vkey: None,
            has_current_transaction: state.is_some(),
        }
    }

    fn ok<A: Activity>(output: impl Serialize) -> ActivityOutcome {
        ActivityOutcome {
            name: A::NAME.into(),
            result: Ok(serde_json::to_value(output).unwrap_or_default()),
        }
    }

    fn failed<A: Activity>() -> ActivityOutcome {
        ActivityOutcome {
            name: A::NAME.into(),
            result: Err(engine::ActivityError::non_retryable("x", "down")),
        }
    }

    #[track_caller]
    fn calls<A: Activity>(t: &Step) {
        match &t.next {
            Next::Activity(call) => assert_eq!(call.name(), A::NAME, "phase {:?}", t.state.phase),
            other => panic!(
                "expected a call of {}, got {other:?} in {:?}",
                A::NAME,
                t.state.phase
            ),
        }
    }

    fn found(state: Option<OnChainState>) -> PaymentObservation {
        PaymentObservation::Found(payment(state))
    }

    fn view(status: ExecState, final_raw: Option<&str>, locks: &[&str]) -> ExecutionView {
        ExecutionView {
            status,
            final_raw: final_raw.map(str::to_owned),
            locks: locks.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn changed(v: ExecutionView) -> ExecutionObservation {
        ExecutionObservation::Changed {
            view: v,
            observed_at: Utc::now(),
        }
    }

    /// Start → paid → running: the state right after the launch.
    fn running() -> Step {
        let w = PaidJob;
        let t = w.start(input());
        calls::<CreatePayment>(&t);
        let t = w.on_activity(t.state, ok::<CreatePayment>(payment(None)));
        calls::<AwaitPaymentChange>(&t);
        let t = w.on_activity(
            t.state,
            ok::<AwaitPaymentChange>(found(Some(OnChainState::FundsLocked))),
        );
        calls::<Launch>(&t);
        let t = w.on_activity(
            t.state,
            ok::<Launch>(LaunchOutcome::Launched { fid: "f1".into() }),
        );
        calls::<AwaitExecutionChange>(&t);
        t
    }

    #[test]
    fn a_payment_request_found_already_paid_launches_at_once() {
        // A retried create_payment adopts the request of an attempt whose worker died; the
        // buyer may have paid it meanwhile.
        let w = PaidJob;
        let t = w.start(input());
        let t = w.on_activity(
            t.state,
            ok::<CreatePayment>(payment(Some(OnChainState::FundsLocked))),
        );
        calls::<Launch>(&t);
        let t = w.start(input());
        let t = w.on_activity(
            t.state,
            ok::<CreatePayment>(payment(Some(OnChainState::FundsOrDatumInvalid))),
        );
        assert!(matches!(t.state.phase, Phase::PaymentInvalid { .. }));
        assert!(matches!(t.next, Next::WaitForSignal));
    }

    #[test]
    fn a_submission_found_already_settled_completes_at_once() {
        // A retried submit_result finds the hash of an attempt whose worker died; on a fast
        // chain the payment may be withdrawn already: nothing is left to wait for.
        let w = PaidJob;
        let t = running();
        let t = w.on_activity(
            t.state,
            ok::<AwaitExecutionChange>(changed(view(
                ExecState::Finished,
                Some(r#"{"Markdown":{"body":"Hi"}}"#),
                &[],
            ))),
        );
        calls::<SubmitResult>(&t);
        let mut settled = payment(Some(OnChainState::Withdrawn));
        settled.next_action = RequestedAction::None;
        let t = w.on_activity(t.state, ok::<SubmitResult>(settled));
        assert!(
            matches!(t.next, Next::Complete(_)),
            "{:?} → {:?}",
            t.state.phase,
            t.next
        );
    }

    #[test]
    fn happy_path_submits_the_result_hash_once_and_completes_on_withdrawal() {
        let w = PaidJob;
        let t = running();
        let t = w.on_activity(
            t.state,
            ok::<AwaitExecutionChange>(changed(view(
                ExecState::Finished,
                Some(r#"{"Markdown":{"body":"Hi \"A\""}}"#),
                &[],
            ))),
        );
        calls::<SubmitResult>(&t);
        let Phase::SubmittingResult {
            result,
            result_hash,
            ..
        } = &t.state.phase
        else {
            panic!("{:?}", t.state.phase)
        };
        assert_eq!(result, "Hi \"A\"");
        assert_eq!(
            result_hash,
            &masumi::hash::output_hash(PURCHASER, "Hi \"A\"")
        );
        let t = w.on_activity(
            t.state,
            ok::<SubmitResult>(payment(Some(OnChainState::FundsLocked))),
        );
        assert_eq!(
            t.state.mip_view(uuid::Uuid::nil()).status,
            MipStatus::Completed
        );
        calls::<AwaitPaymentChange>(&t);
        let t = w.on_activity(
            t.state,
            ok::<AwaitPaymentChange>(found(Some(OnChainState::ResultSubmitted))),
        );
        calls::<AwaitPaymentChange>(&t);
        let t = w.on_activity(
            t.state,
            ok::<AwaitPaymentChange>(found(Some(OnChainState::Withdrawn))),
        );
        assert!(
            matches!(
                t.next,
                Next::Complete(PaidJobOutput {
                    result: Some(_),
                    ..
                })
            ),
            "{:?}",
            t.next
        );
    }

    #[test]
    fn no_payment_by_pay_by_time_fails_without_launching() {
        let w = PaidJob;
        let t = w.start(input());
        let t = w.on_activity(t.state, ok::<CreatePayment>(payment(None)));
        let early = PaymentObservation::Unchanged {
            observed_at: ms(payment(None).pay_by_time_ms) - Duration::seconds(5),
            payment: None,
        };
        let t = w.on_activity(t.state, ok::<AwaitPaymentChange>(early));
        calls::<AwaitPaymentChange>(&t);
        let late = PaymentObservation::Unchanged {
            observed_at: ms(payment(None).pay_by_time_ms),
            payment: None,
        };
        let t = w.on_activity(t.state, ok::<AwaitPaymentChange>(late));
        assert!(
            matches!(&t.next, Next::Fail(e) if e.code == "payment_timeout"),
            "{:?}",
            t.next
        );
    }

    #[test]
    fn invalid_payment_waits_for_an_operator() {
        let w = PaidJob;
        let t = w.start(input());
        let t = w.on_activity(t.state, ok::<CreatePayment>(payment(None)));
        let t = w.on_activity(
            t.state,
            ok::<AwaitPaymentChange>(found(Some(OnChainState::FundsOrDatumInvalid))),
        );
        assert!(matches!(t.next, Next::WaitForSignal));
        let view = t.state.mip_view(uuid::Uuid::nil());
        assert_eq!(view.status, MipStatus::AwaitingPayment);
        assert!(view.message.is_some());
        let t = w.on_signal(t.state, PaidJobSignal::Operator(OperatorDecision::Close));
        assert!(matches!(&t.next, Next::Fail(e) if e.code == "payment_invalid"));
    }

    #[test]
    fn kodosumi_error_submits_nothing_and_follows_the_refund() {
        let w = PaidJob;
        let t = running();
        let t = w.on_activity(
            t.state,
            ok::<AwaitExecutionChange>(changed(view(ExecState::Error, None, &[]))),
        );
        assert!(matches!(t.state.phase, Phase::FollowingRefund { .. }));
        calls::<AwaitPaymentChange>(&t);
        let t = w.on_activity(
            t.state,
            ok::<AwaitPaymentChange>(found(Some(OnChainState::RefundWithdrawn))),
        );
        assert!(
            matches!(&t.next, Next::Fail(e) if e.code == "kodosumi_error"),
            "{:?}",
            t.next
        );
        assert_eq!(
            t.state.mip_view(uuid::Uuid::nil()).status,
            MipStatus::Failed
        );
    }

    #[test]
    fn launch_failure_follows_the_refund() {
        let w = PaidJob;
        let t = w.start(input());
        let t = w.on_activity(t.state, ok::<CreatePayment>(payment(None)));
        let t = w.on_activity(
            t.state,
            ok::<AwaitPaymentChange>(found(Some(OnChainState::FundsLocked))),
        );
        let t = w.on_activity(t.state, failed::<Launch>());
        assert!(matches!(t.state.phase, Phase::FollowingRefund { .. }));
    }

    #[test]
    fn awaiting_input_round_trip() {
        let w = PaidJob;
        let t = running();
        let t = w.on_activity(
            t.state,
            ok::<AwaitExecutionChange>(changed(view(ExecState::Awaiting, None, &["l1"]))),
        );
        calls::<GetLockForm>(&t);
        let elements =
            json!({"elements": [{"type": "text", "name": "ok", "label": "OK", "required": true}]});
        let t = w.on_activity(
            t.state,
            ActivityOutcome {
                name: GetLockForm::NAME.into(),
                result: Ok(elements),
            },
        );
        assert!(matches!(t.next, Next::TimerAt(_)), "{:?}", t.next);
        let view_before = t.state.mip_view(uuid::Uuid::nil());
        assert_eq!(view_before.status, MipStatus::AwaitingInput);
        assert!(view_before.input_schema.is_some());
        // A signal for another lock changes nothing.
        let wrong = PaidJobSignal::ProvideInput {
            lock_id: "other".into(),
            inputs: Map::new(),
        };
        let t = w.on_signal(t.state, wrong);
        assert!(matches!(t.next, Next::Unchanged));
        let right = PaidJobSignal::ProvideInput {
            lock_id: "l1".into(),
            inputs: Map::new(),
        };
        let t = w.on_signal(t.state, right);
        calls::<ReleaseLock>(&t);
        let t = w.on_activity(t.state, ok::<ReleaseLock>(json!({"result": {}})));
        calls::<AwaitExecutionChange>(&t);
        assert_eq!(
            t.state.mip_view(uuid::Uuid::nil()).status,
            MipStatus::Running
        );
        assert_ne!(
            t.state.mip_view(uuid::Uuid::nil()).id,
            view_before.id,
            "status id changes with the status"
        );
    }

    #[test]
    fn input_never_provided_kills_the_run_at_the_deadline() {
        let w = PaidJob;
        let t = running();
        let t = w.on_activity(
            t.state,
            ok::<AwaitExecutionChange>(changed(view(ExecState::Awaiting, None, &["l1"]))),
        );
        let t = w.on_activity(
            t.state,
            ActivityOutcome {
                name: GetLockForm::NAME.into(),
                result: Ok(json!({"elements": []})),
            },
        );
        let t = w.on_timer(t.state);
        calls::<Kill>(&t);
    }

    #[test]
    fn cancel_before_payment_ends_cancelled() {
        let w = PaidJob;
        let t = w.start(input());
        let t = w.on_activity(t.state, ok::<CreatePayment>(payment(None)));
        let t = w.on_cancel(t.state);
        assert!(matches!(t.next, Next::Cancelled));
    }

    #[test]
    fn cancel_after_payment_kills_the_run_submits_nothing_and_follows_the_refund() {
        let w = PaidJob;
        let t = running();
        let t = w.on_cancel(t.state);
        calls::<Kill>(&t);
        let t = w.on_activity(t.state, ok::<Kill>(()));
        calls::<AwaitPaymentChange>(&t);
        let t = w.on_activity(
            t.state,
            ok::<AwaitPaymentChange>(found(Some(OnChainState::RefundWithdrawn))),
        );
        assert!(matches!(t.next, Next::Cancelled), "{:?}", t.next);
    }

    #[test]
    fn cancel_after_the_result_is_submitted_changes_nothing() {
        let w = PaidJob;
        let t = running();
        let t = w.on_activity(
            t.state,
            ok::<AwaitExecutionChange>(changed(view(
                ExecState::Finished,
                Some(r#"{"str":"x"}"#),
                &[],
            ))),
        );
        let t = w.on_cancel(t.state);
        calls::<SubmitResult>(&t);
        let t = w.on_activity(
            t.state,
            ok::<SubmitResult>(payment(Some(OnChainState::FundsLocked))),
        );
        let t = w.on_cancel(t.state);
        calls::<AwaitPaymentChange>(&t);
        assert!(matches!(t.state.phase, Phase::ResultSubmitted { .. }));
    }

    #[test]
    fn a_dispute_authorizes_the_refund_only_when_configured() {
        let w = PaidJob;
        for refund_on_dispute in [false, true] {
            let mut job = input();
            job.refund_on_dispute = refund_on_dispute;
            let state = PaidJobState {
                job,
                mip_seq: 3,
                phase: Phase::ResultSubmitted {
                    payment: payment(Some(OnChainState::ResultSubmitted)),
                    result: "r".into(),
                    result_hash: "h".into(),
                },
            };
            let t = w.on_activity(
                state,
                ok::<AwaitPaymentChange>(found(Some(OnChainState::Disputed))),
            );
            if refund_on_dispute {
                calls::<AuthorizeRefund>(&t);
            } else {
                calls::<AwaitPaymentChange>(&t);
                assert!(matches!(t.state.phase, Phase::Disputed { .. }));
            }
        }
    }

    #[test]
    fn a_refund_authorization_found_already_withdrawn_ends_at_once() {
        let w = PaidJob;
        let mut job = input();
        job.refund_on_dispute = true;
        let state = PaidJobState {
            job,
            mip_seq: 3,
            phase: Phase::AuthorizingRefund {
                payment: payment(Some(OnChainState::Disputed)),
                result: "r".into(),
                result_hash: "h".into(),
            },
        };
        let mut settled = payment(Some(OnChainState::RefundWithdrawn));
        settled.next_action = RequestedAction::None;
        let t = w.on_activity(state, ok::<AuthorizeRefund>(settled));
        assert!(matches!(t.state.phase, Phase::Refunded { .. }));
        assert!(matches!(t.next, Next::Fail(_)), "{:?}", t.next);
    }

    #[test]
    fn the_run_deadline_kills_a_run_that_never_finishes() {
        let w = PaidJob;
        let t = running();
        let late = ExecutionObservation::Unchanged {
            view: view(ExecState::Running, None, &[]),
            observed_at: run_deadline(&payment(Some(OnChainState::FundsLocked))),
        };
        let t = w.on_activity(t.state, ok::<AwaitExecutionChange>(late));
        calls::<Kill>(&t);
    }

    #[test]
    fn status_id_changes_exactly_when_the_status_changes() {
        let w = PaidJob;
        let job = uuid::Uuid::new_v4();
        let t = w.start(input());
        let a = t.state.mip_view(job).id;
        let t = w.on_activity(t.state, ok::<CreatePayment>(payment(None)));
        assert_eq!(t.state.mip_view(job).id, a, "still awaiting payment");
        let t = w.on_activity(
            t.state,
            ok::<AwaitPaymentChange>(found(Some(OnChainState::FundsLocked))),
        );
        assert_ne!(t.state.mip_view(job).id, a);
    }

    #[test]
    fn payment_view_and_tag_come_from_the_journaled_state() {
        assert_eq!(PaidJob.tag(&input()).as_deref(), Some("uid"));
        let before = PaidJobState {
            job: input(),
            mip_seq: 0,
            phase: Phase::CreatingPayment,
        };
        let view = before.payment_view();
        assert_eq!(view.phase, "creating_payment");
        assert_eq!(view.blockchain_identifier, None);
        assert_eq!(view.deadlines.pay_by_time, input().pay_by_time);
        assert_eq!(view.failure, None);

        let p = payment(Some(OnChainState::FundsLocked));
        let locked = PaidJobState {
            job: input(),
            mip_seq: 1,
            phase: Phase::Launching { payment: p.clone() },
        };
        let view = locked.payment_view();
        assert_eq!(view.phase, "launching");
        assert_eq!(view.mip_status, MipStatus::Running);
        assert_eq!(view.blockchain_identifier.as_deref(), Some("bc"));
        assert_eq!(view.on_chain_state, Some(OnChainState::FundsLocked));
        assert_eq!(view.deadlines.pay_by_time, ms(p.pay_by_time_ms));
        assert_eq!(
            view.deadlines.unlock_time,
            Some(ms(p.unlock_time_ms)),
            "Masumi's deadlines once the request exists"
        );
    }
}
