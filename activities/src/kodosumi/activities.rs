//! Kodosumi calls as engine activities: launch (without ever starting a job twice), wait for
//! an execution to change, fetch the result, read and release locks, kill.

use super::client::{KodosumiClient, LaunchResponse, LockRelease, SERVICE};
use super::types::{ExecState, ExecutionStatus, TimelineItem, fid_timestamp};
use crate::error::ClientError;
use chrono::{DateTime, Utc};
use engine::{Activity, ActivityContext, ActivityError, ActivityOptions, Registry, RetryPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Registers every Kodosumi activity, all sharing `client`.
pub fn register(registry: Registry, client: Arc<KodosumiClient>) -> Registry {
    registry
        .activity(Launch::new(client.clone()))
        .activity(AwaitExecutionChange::new(client.clone()))
        .activity(FetchResult::new(client.clone()))
        .activity(GetLockForm::new(client.clone()))
        .activity(ReleaseLock::new(client.clone()))
        .activity(Kill::new(client))
}

/// The result string a buyer sees, from Kodosumi's typed `final` JSON text: the `body` of
/// `Markdown`, `Text` and `HTML`, the string of `str`, and the compact JSON of the inner value
/// otherwise (`dict`, `__list__`, `int`, a pydantic model `{"ClassName": {...}}`). Text that
/// is not JSON is returned as it is.
pub fn result_text(final_raw: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(final_raw) else {
        return final_raw.to_owned();
    };
    match &value {
        Value::String(s) => s.clone(),
        Value::Object(map) if map.len() == 1 => {
            let (kind, inner) = map
                .iter()
                .next()
                .map(|(k, v)| (k.as_str(), v))
                .unwrap_or(("", &Value::Null));
            match (kind, inner) {
                ("Markdown" | "Text" | "HTML", Value::Object(o)) => match o.get("body") {
                    Some(Value::String(body)) => body.clone(),
                    _ => inner.to_string(),
                },
                (_, Value::String(s)) => s.clone(),
                _ => inner.to_string(),
            }
        }
        other => other.to_string(),
    }
}

fn retry(initial: Duration, max: Duration, attempts: u32) -> RetryPolicy {
    RetryPolicy {
        initial_interval: initial,
        backoff_coefficient: 2.0,
        maximum_interval: max,
        maximum_attempts: attempts,
        non_retryable_error_codes: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Launch

/// Input of [`Launch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchInput {
    /// The job this launch is for (logs only: Kodosumi drops keys its form does not declare).
    pub job_id: String,
    /// The flow's path on the panel (`/-/host/port/-/name`).
    pub flow_url: String,
    /// The flow's summary, as the timeline shows it.
    pub flow_summary: String,
    /// The launch body, already converted ([`super::schema::to_launch_inputs`]).
    pub inputs: Map<String, Value>,
    /// When the workflow decided to launch, if earlier than this call's journaled
    /// `scheduled_at` (which is the intent otherwise). A retry looks for runs since the earlier
    /// of the two, minus [`CLOCK_SKEW`].
    #[serde(default)]
    pub intent_at: Option<DateTime<Utc>>,
}

/// Output of [`Launch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LaunchOutcome {
    /// The run exists (launched now, or found from an earlier attempt).
    Launched { fid: String },
    /// The flow refused the inputs: `{field: [message], _global_: [...]}`.
    Rejected { errors: Value },
}

/// `kodosumi.launch`: starts the flow, at most once per job.
///
/// Kodosumi has no idempotency key, so a retry first looks for the run an earlier attempt may
/// have started (its answer lost: a timeout, a reset, a 5xx after the run was created): on
/// attempt > 1 it pages the timeline (newest first) back to `intent_at` for a run of the same
/// flow summary whose recorded inputs equal these inputs (`"on"` as `true`, left-out as
/// `false`/`null`) and adopts its fid. It looks twice, a few seconds apart, because a run is
/// listed only once Kodosumi's spooler has created its database (~2 s after the launch).
///
/// What remains:
/// - two jobs of the same flow with identical inputs, launched within the same window
///   (`intent_at` minus [`CLOCK_SKEW`] to now), can be confused: a retry of one may adopt the
///   other's run;
/// - a launch whose HTTP call never reached Kodosumi is not found and is launched again, which
///   is correct;
/// - a flow that records inputs other than those it was given (not the `Launch(inputs=…)` of
///   its form) is never matched, and a retry launches again;
/// - a run deleted in between is not listed, and is launched again.
#[derive(Debug, Clone)]
pub struct Launch {
    client: Arc<KodosumiClient>,
    settle: Duration,
}

/// Allowance for Kodosumi's clock being behind ours when comparing a fid's time with
/// `intent_at`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

impl Launch {
    pub fn new(client: Arc<KodosumiClient>) -> Self {
        Self {
            client,
            settle: Duration::from_secs(3),
        }
    }

    /// How long a retry waits between its two looks for an earlier run (default 3 s).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    async fn find_earlier(
        &self,
        ctx: &ActivityContext,
        input: &LaunchInput,
    ) -> Result<Option<String>, ClientError> {
        let skew = chrono::Duration::from_std(CLOCK_SKEW).unwrap_or(chrono::Duration::zero());
        // Both are taken before the first attempt; the earlier one never misses a run.
        let scheduled = ctx.scheduled_at();
        let since = input.intent_at.map_or(scheduled, |t| t.min(scheduled)) - skew;
        let found = self
            .client
            .find_execution(&input.flow_summary, since, |item| {
                inputs_match(item, &input.inputs)
            })
            .await?;
        Ok(found.map(|item| item.fid))
    }
}

/// Whether the inputs Kodosumi recorded for a run are the ones we would send: the recorded
/// object (`{"dict": {...}}`) holds every form field after Kodosumi parsed it: a checkbox as
/// `true`/`false`, a field we left out as `null` (or `false`).
fn inputs_match(item: &TimelineItem, ours: &Map<String, Value>) -> bool {
    let recorded = match &item.inputs {
        Some(Value::Object(outer)) if outer.len() == 1 => match outer.values().next() {
            Some(Value::Object(inner)) => inner,
            _ => return false,
        },
        _ => return false,
    };
    let same = |ours: &Value, theirs: &Value| {
        ours == theirs
            || (ours.as_str() == Some("on") && theirs == &Value::Bool(true))
            || (ours.as_str().is_some() && ours.as_str() == theirs.as_str())
    };
    ours.iter()
        .all(|(k, v)| same(v, recorded.get(k).unwrap_or(&Value::Null)))
        && recorded
            .iter()
            .all(|(k, v)| ours.contains_key(k) || matches!(v, Value::Null | Value::Bool(false)))
}

impl Activity for Launch {
    const NAME: &'static str = "kodosumi.launch";
    type Input = LaunchInput;
    type Output = LaunchOutcome;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            // A worker killed mid-launch uses up an attempt too; the adoption look keeps retries
            // from launching twice, so a paid job gets enough of them to survive a few crashes.
            retry: retry(Duration::from_secs(3), Duration::from_secs(15), 10),
            // Two timeline looks (a page or two each), logins and the launch, each bounded by
            // the client timeout.
            start_to_close_timeout: self.client.timeout() * 10 + self.settle,
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }

    async fn run(
        &self,
        ctx: ActivityContext,
        input: LaunchInput,
    ) -> Result<LaunchOutcome, ActivityError> {
        if ctx.attempt() > 1 {
            let mut found = self.find_earlier(&ctx, &input).await?;
            if found.is_none() {
                tokio::select! {
                    _ = tokio::time::sleep(self.settle) => {}
                    _ = ctx.cancelled() => {
                        return Err(ActivityError::retryable(ActivityError::CANCELLED, "cancelled before launching"));
                    }
                }
                found = self.find_earlier(&ctx, &input).await?;
            }
            if let Some(fid) = found {
                tracing::info!(job.id = %input.job_id, fid = %fid, attempt = ctx.attempt(), "adopted the run of an earlier launch attempt");
                return Ok(LaunchOutcome::Launched { fid });
            }
        }
        match self.client.launch(&input.flow_url, &input.inputs).await? {
            LaunchResponse::Launched { fid } => {
                tracing::info!(job.id = %input.job_id, fid = %fid, "launched on Kodosumi");
                Ok(LaunchOutcome::Launched { fid })
            }
            LaunchResponse::Rejected { errors } => Ok(LaunchOutcome::Rejected {
                errors: Value::Object(errors),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AwaitExecutionChange

/// What a run looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionView {
    pub status: ExecState,
    /// Kodosumi's `final`, the typed result as JSON text (see [`result_text`]).
    pub final_raw: Option<String>,
    /// Open lock ids (sorted).
    pub locks: Vec<String>,
}

impl ExecutionView {
    fn of(status: &ExecutionStatus) -> Self {
        let mut locks = status.locks.clone();
        locks.sort();
        locks.dedup();
        Self {
            status: status.status,
            final_raw: status.final_result.clone(),
            locks,
        }
    }

    fn starting() -> Self {
        Self {
            status: ExecState::Starting,
            final_raw: None,
            locks: Vec::new(),
        }
    }
}

/// Output of [`AwaitExecutionChange`]; `observed_at` is when the answer was seen (our clock),
/// for deadlines the workflow checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "observation", rename_all = "snake_case")]
pub enum ExecutionObservation {
    /// Status or locks differ from the known ones.
    Changed {
        view: ExecutionView,
        observed_at: DateTime<Utc>,
    },
    /// `until` passed, or the attempt was cancelled (pause, cancel): the latest view.
    Unchanged {
        view: ExecutionView,
        observed_at: DateTime<Utc>,
    },
    /// Kodosumi does not know the run (deleted, or never created) for longer than the
    /// start-up window.
    NotFound { observed_at: DateTime<Utc> },
}

/// Input of [`AwaitExecutionChange`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwaitExecutionChangeInput {
    pub fid: String,
    /// `None`: any answer is a change.
    #[serde(default)]
    pub known_status: Option<ExecState>,
    #[serde(default)]
    pub known_locks: Vec<String>,
    /// Give up waiting (→ `Unchanged`) at this time.
    pub until: DateTime<Utc>,
    #[serde(default = "default_poll_min_ms")]
    pub poll_min_ms: u64,
    #[serde(default = "default_poll_max_ms")]
    pub poll_max_ms: u64,
}

fn default_poll_min_ms() -> u64 {
    500
}

fn default_poll_max_ms() -> u64 {
    15_000
}

impl Default for AwaitExecutionChangeInput {
    fn default() -> Self {
        Self {
            fid: String::new(),
            known_status: None,
            known_locks: Vec::new(),
            until: DateTime::<Utc>::UNIX_EPOCH,
            poll_min_ms: default_poll_min_ms(),
            poll_max_ms: default_poll_max_ms(),
        }
    }
}

/// `kodosumi.await_execution_change`: polls `GET /outputs/status/{fid}` (without `extended`,
/// so a deleted run answers 404 within ~1 s instead of holding the request for 600 s; see
/// [`KodosumiClient::poll_status`]) with exponential
/// backoff (`poll_min_ms` doubling to `poll_max_ms`), heartbeating after every poll, until the
/// status or the locks differ from the known ones, `until` passes, or the attempt is cancelled
/// (it is interrupted by a pause too, returning promptly what it saw).
///
/// A 404 in the first [`STARTUP_404_WINDOW`] after the first poll is normal (Kodosumi's spooler
/// creates the run's database ~2 s after the launch) and reads as `starting`; later, it is
/// `NotFound`. Transient errors are retried in the loop; after
/// [`MAX_CONSECUTIVE_FAILURES`] in a row the attempt fails (retryably).
#[derive(Debug, Clone)]
pub struct AwaitExecutionChange {
    client: Arc<KodosumiClient>,
    startup_404_window: Duration,
}

/// How long 404s are read as "not created yet".
pub const STARTUP_404_WINDOW: Duration = Duration::from_secs(30);
/// Failed polls in a row before the attempt gives up.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 5;
/// Upper bound of `poll_max_ms`, which the heartbeat timeout is sized for.
const POLL_MAX_CAP: Duration = Duration::from_secs(15);
/// Longest pause between heartbeats while sleeping.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

impl AwaitExecutionChange {
    pub fn new(client: Arc<KodosumiClient>) -> Self {
        Self {
            client,
            startup_404_window: STARTUP_404_WINDOW,
        }
    }

    /// How long 404s read as "not created yet" (default [`STARTUP_404_WINDOW`]).
    pub fn with_startup_404_window(mut self, window: Duration) -> Self {
        self.startup_404_window = window;
        self
    }
}

impl Activity for AwaitExecutionChange {
    const NAME: &'static str = "kodosumi.await_execution_change";
    type Input = AwaitExecutionChangeInput;
    type Output = ExecutionObservation;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            // The deadline is the input's `until`: the body returns by itself once it passed,
            // so attempts may go on as long as Kodosumi is unreachable before that.
            retry: retry(Duration::from_secs(2), Duration::from_secs(60), 0),
            start_to_close_timeout: Duration::from_secs(6 * 3600),
            // A poll may log in again after a 401: up to four requests between heartbeats.
            heartbeat_timeout: Some(POLL_MAX_CAP * 2 + self.client.timeout() * 4),
            schedule_to_close_timeout: None,
        }
    }

    fn interrupt_on_pause(&self) -> bool {
        true
    }

    async fn run(
        &self,
        ctx: ActivityContext,
        input: AwaitExecutionChangeInput,
    ) -> Result<ExecutionObservation, ActivityError> {
        let poll_min = Duration::from_millis(input.poll_min_ms.max(50));
        let poll_max =
            Duration::from_millis(input.poll_max_ms).clamp(poll_min, POLL_MAX_CAP.max(poll_min));
        let mut known_locks = input.known_locks.clone();
        known_locks.sort();
        known_locks.dedup();
        let mut last = ExecutionView {
            status: input.known_status.unwrap_or(ExecState::Starting),
            final_raw: None,
            locks: known_locks.clone(),
        };
        let mut delay = poll_min;
        let mut first_poll: Option<Instant> = None;
        let mut failures = 0u32;
        let mut polls = 0u64;
        loop {
            let poll = tokio::select! {
                r = self.client.poll_status(&input.fid) => r,
                _ = ctx.cancelled() => return Ok(unchanged(last)),
            };
            polls += 1;
            let first = *first_poll.get_or_insert_with(Instant::now);
            let seen = match poll {
                Ok(Some(status)) => {
                    failures = 0;
                    Some(ExecutionView::of(&status))
                }
                Ok(None) if first.elapsed() < self.startup_404_window => {
                    failures = 0;
                    // Not created yet: "starting", a change only for a caller who knew nothing.
                    input.known_status.is_none().then(ExecutionView::starting)
                }
                Ok(None) => {
                    ctx.heartbeat(
                        json!({ "fid": input.fid, "polls": polls, "status": "not_found" }),
                    );
                    return Ok(ExecutionObservation::NotFound {
                        observed_at: Utc::now(),
                    });
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    tracing::debug!(fid = %input.fid, failures, error.message = %e, "status poll failed");
                    if failures >= MAX_CONSECUTIVE_FAILURES && Utc::now() < input.until {
                        return Err(e.into());
                    }
                    None
                }
                Err(e) => return Err(e.into()),
            };
            ctx.heartbeat(json!({
                "fid": input.fid,
                "polls": polls,
                "status": seen.as_ref().map(|v| v.status.as_str()),
                "failures": failures,
            }));
            if let Some(view) = seen {
                let changed = input.known_status != Some(view.status) || view.locks != known_locks;
                if changed {
                    return Ok(ExecutionObservation::Changed {
                        view,
                        observed_at: Utc::now(),
                    });
                }
                last = view;
            }
            let now = Utc::now();
            if now >= input.until {
                return Ok(unchanged(last));
            }
            let left = (input.until - now).to_std().unwrap_or(Duration::ZERO);
            let nap = delay.min(left);
            let wake = Instant::now() + nap;
            while Instant::now() < wake {
                let step = (wake - Instant::now()).min(HEARTBEAT_EVERY);
                tokio::select! {
                    _ = tokio::time::sleep(step) => {}
                    _ = ctx.cancelled() => return Ok(unchanged(last)),
                }
                ctx.heartbeat(json!({ "fid": input.fid, "polls": polls, "sleeping": true }));
            }
            delay = (delay * 2).min(poll_max);
        }
    }
}

fn unchanged(view: ExecutionView) -> ExecutionObservation {
    ExecutionObservation::Unchanged {
        view,
        observed_at: Utc::now(),
    }
}

// ---------------------------------------------------------------------------------------------
// FetchResult

/// Input of [`FetchResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchResultInput {
    pub fid: String,
}

/// Output of [`FetchResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchResultOutput {
    /// The raw final JSON text (see [`result_text`]).
    pub raw: String,
}

/// `kodosumi.fetch_result`: `GET /outputs/raw/{fid}`, bounded by the client's `raw_timeout`
/// (the server blocks up to 600 s on an unknown fid).
#[derive(Debug, Clone)]
pub struct FetchResult {
    client: Arc<KodosumiClient>,
}

impl FetchResult {
    pub fn new(client: Arc<KodosumiClient>) -> Self {
        Self { client }
    }
}

impl Activity for FetchResult {
    const NAME: &'static str = "kodosumi.fetch_result";
    type Input = FetchResultInput;
    type Output = FetchResultOutput;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            retry: retry(Duration::from_secs(2), Duration::from_secs(30), 5),
            start_to_close_timeout: self.client.raw_timeout() + self.client.timeout() * 2,
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }

    async fn run(
        &self,
        _ctx: ActivityContext,
        input: FetchResultInput,
    ) -> Result<FetchResultOutput, ActivityError> {
        let raw = self.client.raw_result(&input.fid).await?;
        Ok(FetchResultOutput { raw })
    }
}

// ---------------------------------------------------------------------------------------------
// GetLockForm

/// Input of [`GetLockForm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetLockFormInput {
    pub fid: String,
    pub lock_id: String,
}

/// Output of [`GetLockForm`]: the lock's form elements as Kodosumi sent them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetLockFormOutput {
    pub elements: Vec<Value>,
}

/// `kodosumi.get_lock_form`: `GET /lock/{fid}/{lock_id}`. A 404 (lock gone) is final.
#[derive(Debug, Clone)]
pub struct GetLockForm {
    client: Arc<KodosumiClient>,
}

impl GetLockForm {
    pub fn new(client: Arc<KodosumiClient>) -> Self {
        Self { client }
    }
}

impl Activity for GetLockForm {
    const NAME: &'static str = "kodosumi.get_lock_form";
    type Input = GetLockFormInput;
    type Output = GetLockFormOutput;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            retry: retry(Duration::from_secs(1), Duration::from_secs(30), 6),
            start_to_close_timeout: self.client.timeout() * 3,
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }

    async fn run(
        &self,
        _ctx: ActivityContext,
        input: GetLockFormInput,
    ) -> Result<GetLockFormOutput, ActivityError> {
        let form = self.client.lock_form(&input.fid, &input.lock_id).await?;
        let elements = form
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ActivityError::non_retryable("kodosumi.bad_response", e.to_string()))?;
        Ok(GetLockFormOutput { elements })
    }
}

// ---------------------------------------------------------------------------------------------
// ReleaseLock

/// Input of [`ReleaseLock`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseLockInput {
    pub fid: String,
    pub lock_id: String,
    /// The lock form's values, converted ([`super::schema::mip003_to_lock_inputs`]).
    pub inputs: Map<String, Value>,
}

/// Output of [`ReleaseLock`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseLockOutput {
    /// The values as the flow parsed them.
    pub result: Value,
}

/// `kodosumi.release_lock`: `POST /lock/{fid}/{lock_id}`. Errors: code [`LOCK_GONE`] on 404
/// (already released, or the run is gone; not retried), [`LOCK_REJECTED`] when the flow
/// refused the values (details: its `errors`).
///
/// After a release (and before a [`LOCK_GONE`]) it waits, up to its settle time
/// ([`LEASE_SETTLE`]), until the run's status no longer lists the lock: a real Kodosumi keeps
/// answering `awaiting` with the released lock for ~0.3-1.5 s (the run's actor looks for the
/// release once a second, then the spooler stores the lease), and a caller that awaits a
/// change from "running, no locks" right away would take the released lock for a new request
/// for input. The wait is best effort: a status error or the end of the settle time ends it
/// (logged) and the release stands.
#[derive(Debug, Clone)]
pub struct ReleaseLock {
    client: Arc<KodosumiClient>,
    settle: Duration,
}

/// How long [`ReleaseLock`] waits at most for Kodosumi to stop listing a released lock.
pub const LEASE_SETTLE: Duration = Duration::from_secs(10);
/// Pause between the status polls of that wait.
const LEASE_POLL: Duration = Duration::from_millis(200);

/// Error code of a release whose lock no longer exists.
pub const LOCK_GONE: &str = "kodosumi.lock_gone";
/// Error code of a release the flow refused.
pub const LOCK_REJECTED: &str = "kodosumi.lock_rejected";

impl ReleaseLock {
    pub fn new(client: Arc<KodosumiClient>) -> Self {
        Self {
            client,
            settle: LEASE_SETTLE,
        }
    }

    /// How long to wait at most for the released lock to leave the status (default
    /// [`LEASE_SETTLE`]; zero: no wait).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Polls the status until it no longer lists `lid` (or the run is final or gone), up to
    /// the settle time.
    async fn settle(&self, ctx: &ActivityContext, fid: &str, lid: &str) {
        if self.settle.is_zero() {
            return;
        }
        let t0 = Instant::now();
        let wait = async {
            loop {
                match self.client.poll_status(fid).await {
                    Ok(Some(s)) if s.status.is_final() || !s.locks.iter().any(|l| l == lid) => {
                        return Ok(());
                    }
                    Ok(None) => return Ok(()),
                    Ok(Some(_)) => tokio::time::sleep(LEASE_POLL).await,
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.settle, wait) => {
                r.unwrap_or_else(|_| Err("still listed at the end of the settle time".to_owned()))
            }
            _ = ctx.cancelled() => Err("cancelled".to_owned()),
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(
                    fid,
                    lock.id = lid,
                    waited_ms = t0.elapsed().as_millis() as u64,
                    "released lock left the status"
                );
            }
            Err(why) => {
                tracing::warn!(fid, lock.id = lid, reason = %why, "released lock may still be listed");
            }
        }
    }
}

impl Activity for ReleaseLock {
    const NAME: &'static str = "kodosumi.release_lock";
    type Input = ReleaseLockInput;
    type Output = ReleaseLockOutput;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            retry: retry(Duration::from_secs(1), Duration::from_secs(30), 6),
            // The release (with a login), then the settle wait.
            start_to_close_timeout: self.client.timeout() * 3 + self.settle,
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }

    async fn run(
        &self,
        ctx: ActivityContext,
        input: ReleaseLockInput,
    ) -> Result<ReleaseLockOutput, ActivityError> {
        let released = self
            .client
            .release_lock(&input.fid, &input.lock_id, &input.inputs)
            .await;
        if matches!(
            released,
            Ok(LockRelease::Released { .. }) | Err(ClientError::Status { status: 404, .. })
        ) {
            self.settle(&ctx, &input.fid, &input.lock_id).await;
        }
        match released {
            Ok(LockRelease::Released { result }) => Ok(ReleaseLockOutput { result }),
            Ok(LockRelease::Rejected { errors }) => Err(ActivityError::non_retryable(
                LOCK_REJECTED,
                format!("{SERVICE}: the flow refused the lock input"),
            )
            .with_details(Value::Object(errors))),
            Err(ClientError::Status {
                status: 404,
                message,
                ..
            }) => Err(ActivityError::non_retryable(
                LOCK_GONE,
                format!(
                    "{SERVICE}: lock {} of {} is gone: {message}",
                    input.lock_id, input.fid
                ),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kill

/// Input of [`Kill`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillInput {
    pub fid: String,
}

/// `kodosumi.kill`: `DELETE /outputs/{fid}`; an execution already gone counts as killed.
///
/// Except right after its launch: Kodosumi answers 404 until its spooler has created the run's
/// database (~2 s after the launch), and a run "deleted" then goes on. So a 404 for a run
/// younger than the start-up window ([`STARTUP_404_WINDOW`] by default, by the creation time
/// in its fid, Kodosumi's clock) fails retryably with [`NOT_CREATED_YET`], and the retries
/// (spanning more than the window) delete it once it exists; a 404 after the window counts as
/// killed. An already-deleted run that is still young is thus retried until the window ends.
#[derive(Debug, Clone)]
pub struct Kill {
    client: Arc<KodosumiClient>,
    startup_404_window: Duration,
}

/// Error code of a kill answered 404 while the run may not be created yet.
pub const NOT_CREATED_YET: &str = "kodosumi.not_created_yet";

impl Kill {
    pub fn new(client: Arc<KodosumiClient>) -> Self {
        Self {
            client,
            startup_404_window: STARTUP_404_WINDOW,
        }
    }

    /// How long after a launch a 404 reads as "not created yet" (default
    /// [`STARTUP_404_WINDOW`]).
    pub fn with_startup_404_window(mut self, window: Duration) -> Self {
        self.startup_404_window = window;
        self
    }
}

impl Activity for Kill {
    const NAME: &'static str = "kodosumi.kill";
    type Input = KillInput;
    type Output = ();

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            // 1+2+4+8+16+30+30 s between 8 attempts: more than the start-up window.
            retry: retry(Duration::from_secs(1), Duration::from_secs(30), 8),
            start_to_close_timeout: self.client.timeout() * 3,
            heartbeat_timeout: None,
            schedule_to_close_timeout: None,
        }
    }

    async fn run(&self, _ctx: ActivityContext, input: KillInput) -> Result<(), ActivityError> {
        if self.client.kill(&input.fid).await? {
            return Ok(());
        }
        let window = i64::try_from(self.startup_404_window.as_secs()).unwrap_or(i64::MAX);
        let young = fid_timestamp(&input.fid)
            .is_some_and(|created| Utc::now().timestamp().saturating_sub(created) < window);
        if young {
            return Err(ActivityError::retryable(
                NOT_CREATED_YET,
                format!(
                    "{SERVICE}: run {} is not known yet (404 right after its launch); retrying the kill",
                    input.fid
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_text_unwraps_kodosumi_types() {
        let cases = [
            (
                r##"{"Markdown":{"body":"# Hello Dave\nDone."}}"##,
                "# Hello Dave\nDone.",
            ),
            (
                r#"{"Text":{"body":"failed on purpose for Bob"}}"#,
                "failed on purpose for Bob",
            ),
            (r#"{"HTML":{"body":"<b>x</b>"}}"#, "<b>x</b>"),
            (r#"{"str":"plain"}"#, "plain"),
            (
                r#"{"dict":{"greeting":"Hello Carol","n":1}}"#,
                r#"{"greeting":"Hello Carol","n":1}"#,
            ),
            (r#"{"__list__":[1,"a"]}"#, r#"[1,"a"]"#),
            (r#"{"int":42}"#, "42"),
            (
                r#"{"CrewOutput":{"raw":"r","tasks":[]}}"#,
                r#"{"raw":"r","tasks":[]}"#,
            ),
            ("not json", "not json"),
            (r#""a json string""#, "a json string"),
            (r#"{"a":1,"b":2}"#, r#"{"a":1,"b":2}"#),
        ];
        for (raw, want) in cases {
            assert_eq!(result_text(raw), want, "{raw}");
        }
    }

    #[test]
    fn result_text_of_recorded_finals() {
        let status: ExecutionStatus = serde_json::from_str(include_str!(
            "../../tests/fixtures/kodosumi/status_6b0422e86cc2496af2512fb7.json"
        ))
        .expect("recorded status parses");
        let final_raw = status.final_result.expect("final");
        assert_eq!(result_text(&final_raw), "# Hello Dave\nDone.");
    }

    #[test]
    fn recorded_inputs_match_the_launch_body() {
        let item = TimelineItem {
            fid: "6b0422d36cc2496af2512fb4".into(),
            tags: None,
            summary: Some("Hello World".into()),
            inputs: Some(
                json!({"dict": {"name": "Alice", "seconds": "3", "fail": false, "style": null}}),
            ),
            status: Some("finished".into()),
            startup: None,
            finish: None,
            runtime: None,
            locks: vec![],
        };
        let ours = |v: Value| match v {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        assert!(inputs_match(
            &item,
            &ours(json!({"name": "Alice", "seconds": "3"}))
        ));
        assert!(!inputs_match(
            &item,
            &ours(json!({"name": "Bob", "seconds": "3"}))
        ));
        assert!(!inputs_match(
            &item,
            &ours(json!({"name": "Alice", "seconds": "3", "fail": "on"}))
        ));
        assert!(
            !inputs_match(&item, &ours(json!({"name": "Alice"}))),
            "seconds was given"
        );
        let on = TimelineItem {
            inputs: Some(json!({"dict": {"name": "A", "fail": true}})),
            ..item.clone()
        };
        assert!(inputs_match(&on, &ours(json!({"name": "A", "fail": "on"}))));
        let untyped = TimelineItem {
            inputs: Some(json!({"name": "A"})),
            ..item
        };
        assert!(
            !inputs_match(&untyped, &ours(json!({"name": "A"}))),
            "inputs are typed"
        );
    }

    #[test]
    fn observations_serialize_with_a_tag() {
        let o = ExecutionObservation::NotFound {
            observed_at: DateTime::<Utc>::UNIX_EPOCH,
        };
        let v = serde_json::to_value(&o).expect("ser");
        assert_eq!(v["observation"], "not_found");
        let back: ExecutionObservation = serde_json::from_value(v).expect("de");
        assert_eq!(back, o);
        let input: AwaitExecutionChangeInput =
            serde_json::from_value(json!({"fid": "f", "until": "2030-01-01T00:00:00Z"}))
                .expect("defaults");
        assert_eq!((input.poll_min_ms, input.poll_max_ms), (500, 15_000));
    }
}
