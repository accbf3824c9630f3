//! Activities: named, typed units of I/O with a durable retry policy and timeouts.
//!
//! A body runs at least once per call; its result is journaled exactly once. Every call gets an
//! idempotency key that stays the same across retries and worker crashes, to hand to the
//! external service where it accepts one.

use crate::WorkflowId;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A named, typed unit of I/O. `NAME` is durable API: it is journaled, never rename it.
pub trait Activity: Send + Sync + 'static {
    /// Stable name, journaled with every call.
    const NAME: &'static str;
    /// What a workflow hands to the activity.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// What the activity returns to the workflow.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Retry policy and timeouts of every call of this activity.
    fn options(&self) -> ActivityOptions {
        ActivityOptions::default()
    }

    /// Whether a `pause` signal also fires [`ActivityContext::cancelled`]. For long waits
    /// (polling an external state until it changes): the body returns promptly with what it
    /// has seen, the result is journaled, and the workflow pauses. Other activities run to the
    /// end before a pause takes effect.
    fn interrupt_on_pause(&self) -> bool {
        false
    }

    /// Runs one attempt. Long bodies call [`ActivityContext::heartbeat`] and watch
    /// [`ActivityContext::cancelled`], which fires on cancel, timeout or a lost lease.
    fn run(
        &self,
        ctx: ActivityContext,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, ActivityError>> + Send;
}

/// An activity error as journaled: data, classified where it was born.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ActivityError {
    /// Stable machine-readable code, matched by [`RetryPolicy::non_retryable_error_codes`].
    pub code: String,
    /// Human-readable description.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// Anything else worth keeping (status codes, bodies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ActivityError {
    /// An error another attempt may fix (timeouts, 5xx, connection errors).
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
            details: None,
        }
    }

    /// An error no retry will fix (validation, 4xx).
    pub fn non_retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
            details: None,
        }
    }

    /// Attaches details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Error codes the engine itself produces.
    pub const START_TO_CLOSE_TIMEOUT: &'static str = "timeout.start_to_close";
    /// The activity stopped heartbeating.
    pub const HEARTBEAT_TIMEOUT: &'static str = "timeout.heartbeat";
    /// All attempts together exceeded the schedule-to-close deadline.
    pub const SCHEDULE_TO_CLOSE_TIMEOUT: &'static str = "timeout.schedule_to_close";
    /// The attempt was cancelled because the workflow was cancelled.
    pub const CANCELLED: &'static str = "cancelled";
}

/// Durable retry policy (Temporal's fields). Delays grow by `backoff_coefficient` from
/// `initial_interval` up to `maximum_interval`, with jitter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    #[serde(with = "crate::journal::duration_str")]
    pub initial_interval: Duration,
    pub backoff_coefficient: f64,
    #[serde(with = "crate::journal::duration_str")]
    pub maximum_interval: Duration,
    /// Attempts in all, the first included; 0 means unlimited.
    pub maximum_attempts: u32,
    /// Codes that end the call at once even when the error says it is retryable.
    #[serde(default)]
    pub non_retryable_error_codes: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(100),
            maximum_attempts: 10,
            non_retryable_error_codes: Vec::new(),
        }
    }
}

/// Retry policy and timeouts of an activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityOptions {
    pub retry: RetryPolicy,
    /// Limit of one attempt.
    #[serde(with = "crate::journal::duration_str")]
    pub start_to_close_timeout: Duration,
    /// An attempt that does not heartbeat within this time is failed (retryably).
    #[serde(default, with = "crate::journal::opt_duration_str")]
    pub heartbeat_timeout: Option<Duration>,
    /// Limit over all attempts, counted from when the call was scheduled.
    #[serde(default, with = "crate::journal::opt_duration_str")]
    pub schedule_to_close_timeout: Option<Duration>,
}

impl Default for ActivityOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            start_to_close_timeout: Duration::from_secs(300),
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }
}

/// What an attempt knows about itself, and its channel back to the engine.
#[derive(Debug, Clone)]
pub struct ActivityContext {
    pub(crate) workflow_id: WorkflowId,
    pub(crate) call_seq: i64,
    pub(crate) attempt: u32,
    pub(crate) scheduled_at: chrono::DateTime<chrono::Utc>,
    pub(crate) cancel: CancellationToken,
    pub(crate) heartbeat: Arc<HeartbeatCell>,
    pub(crate) last_heartbeat_details: Option<serde_json::Value>,
}

impl ActivityContext {
    /// The workflow that made this call.
    pub fn workflow_id(&self) -> WorkflowId {
        self.workflow_id
    }

    /// 1 for the first attempt.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the workflow journaled this call (database clock): every attempt starts after it,
    /// so an external effect older than this is not the call's.
    pub fn scheduled_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.scheduled_at
    }

    /// The same for every attempt of this call, across retries and worker crashes.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.workflow_id, self.call_seq)
    }

    /// Fires when the workflow is cancelled, the attempt timed out, or the worker lost its lease.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Resolves when the attempt should stop (see [`Self::cancellation_token`]).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// Details of the last heartbeat of an earlier attempt of this call, to resume from.
    pub fn last_heartbeat_details(&self) -> Option<&serde_json::Value> {
        self.last_heartbeat_details.as_ref()
    }

    /// Reports liveness and progress. Resets the heartbeat timeout; the details are persisted
    /// with the next lease renewal and shown by queries.
    pub fn heartbeat(&self, details: impl Serialize) {
        let details = serde_json::to_value(details).ok();
        self.heartbeat.beat(details);
    }

    /// A context for unit-testing an activity body outside a worker.
    pub fn for_test(workflow_id: WorkflowId, attempt: u32) -> Self {
        Self {
            workflow_id,
            call_seq: 1,
            attempt,
            scheduled_at: chrono::Utc::now(),
            cancel: CancellationToken::new(),
            heartbeat: Arc::new(HeartbeatCell::new()),
            last_heartbeat_details: None,
        }
    }
}

/// The latest heartbeat of a running attempt, shared between the body and the worker.
#[derive(Debug)]
pub(crate) struct HeartbeatCell {
    inner: Mutex<HeartbeatState>,
}

#[derive(Debug)]
struct HeartbeatState {
    at: Instant,
    details: Option<serde_json::Value>,
    unsaved: bool,
}

impl HeartbeatCell {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(HeartbeatState {
                at: Instant::now(),
                details: None,
                unsaved: false,
            }),
        }
    }

    fn beat(&self, details: Option<serde_json::Value>) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.at = Instant::now();
        if details.is_some() {
            s.details = details;
            s.unsaved = true;
        }
    }

    pub(crate) fn last_beat(&self) -> Instant {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).at
    }

    /// Details not yet persisted, if any.
    pub(crate) fn take_unsaved(&self) -> Option<serde_json::Value> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.unsaved {
            s.unsaved = false;
            s.details.clone()
        } else {
            None
        }
    }
}

/// An activity with its types erased, as the registry holds it.
pub(crate) trait ErasedActivity: Send + Sync {
    fn options(&self) -> ActivityOptions;
    fn interrupt_on_pause(&self) -> bool;
    fn run(
        &self,
        ctx: ActivityContext,
        input: serde_json::Value,
    ) -> BoxFuture<'_, Result<serde_json::Value, ActivityError>>;
}

pub(crate) struct ActivityAdapter<A>(pub(crate) A);

impl<A: Activity> ErasedActivity for ActivityAdapter<A> {
    fn options(&self) -> ActivityOptions {
        self.0.options()
    }

    fn interrupt_on_pause(&self) -> bool {
        self.0.interrupt_on_pause()
    }

    fn run(
        &self,
        ctx: ActivityContext,
        input: serde_json::Value,
    ) -> BoxFuture<'_, Result<serde_json::Value, ActivityError>> {
        Box::pin(async move {
            let input: A::Input = serde_json::from_value(input).map_err(|e| {
                ActivityError::non_retryable("activity.input_decode", format!("{}: {e}", A::NAME))
            })?;
            let output = self.0.run(ctx, input).await?;
            serde_json::to_value(output).map_err(|e| {
                ActivityError::non_retryable("activity.output_encode", format!("{}: {e}", A::NAME))
            })
        })
    }
}
