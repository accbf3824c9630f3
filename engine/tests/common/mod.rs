//! Shared harness of the engine's conformance tests: the two backends, test workflows and
//! activities, fast worker settings, polling helpers with timeouts, and the journal checker.
//!
//! Every behaviour test is written once against `Arc<dyn Store>` and instantiated by
//! [`conformance!`] for PostgreSQL (a fresh database per test) and SQLite (a fresh file per
//! test). The journal checker reads the tables directly through a [`JournalReader`] instead of
//! trusting the store's own queries.

#![allow(dead_code, unused_imports)]

mod backend;
mod reader;

pub(crate) use backend::conformance;
pub use backend::{Backend, Kind, Scratch};
pub use reader::{Counts, JournalReader};

use chrono::{DateTime, Utc};
use engine::{
    Activity, ActivityCall, ActivityContext, ActivityError, ActivityOptions, ActivityOutcome,
    Cause, EventKind, Next, Pending, Registry, RetryPolicy, Status, Store, Transition,
    WorkerConfig, Workflow, WorkflowError, WorkflowId, WorkflowRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long any wait for the engine may take before the test fails. Generous on purpose: tests
/// assert what happens, never how fast.
pub const WAIT: Duration = Duration::from_secs(20);

/// Worker settings with short durations so tests move quickly.
pub fn fast_config() -> WorkerConfig {
    WorkerConfig {
        slots: 8,
        lease_ttl: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(100),
        poll_interval: Duration::from_millis(50),
        claim_batch: 8,
        drain_timeout: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

/// A retry policy with small intervals: 50 ms, doubling, at most `attempts` attempts.
pub fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        initial_interval: Duration::from_millis(50),
        backoff_coefficient: 2.0,
        maximum_interval: Duration::from_secs(2),
        maximum_attempts: attempts,
        non_retryable_error_codes: Vec::new(),
    }
}

/// Options with [`fast_retry`] and a long start-to-close timeout.
pub fn fast_options(attempts: u32) -> ActivityOptions {
    ActivityOptions {
        retry: fast_retry(attempts),
        start_to_close_timeout: Duration::from_secs(60),
        heartbeat_timeout: None,
        schedule_to_close_timeout: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Activities
// ---------------------------------------------------------------------------------------------

/// What test activities report back to the test, shared with them through an `Arc`.
#[derive(Debug, Default)]
pub struct Probe {
    /// Attempts whose body started.
    pub started: AtomicU32,
    /// Attempts whose body returned `Ok`.
    pub finished: AtomicU32,
    /// A body saw its cancellation token fire.
    pub saw_cancel: AtomicBool,
    /// `(attempt, last_heartbeat_details)` as each attempt saw it.
    pub resumed_from: Mutex<Vec<(u32, Option<Value>)>>,
}

impl Probe {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn started(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
    }

    pub fn finished(&self) -> u32 {
        self.finished.load(Ordering::SeqCst)
    }

    pub fn saw_cancel(&self) -> bool {
        self.saw_cancel.load(Ordering::SeqCst)
    }

    pub fn resumed_from(&self) -> Vec<(u32, Option<Value>)> {
        self.resumed_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Sleeps `sleep_ms` (stopping early with a `cancelled` error when its token fires), then
/// returns `value`.
#[derive(Debug, Clone)]
pub struct Step {
    pub probe: Arc<Probe>,
    pub options: ActivityOptions,
}

impl Step {
    pub fn new(probe: Arc<Probe>) -> Self {
        Self {
            probe,
            options: fast_options(3),
        }
    }

    pub fn with_options(probe: Arc<Probe>, options: ActivityOptions) -> Self {
        Self { probe, options }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepInput {
    pub value: u32,
    pub sleep_ms: u64,
}

impl Activity for Step {
    const NAME: &'static str = "test.step";
    type Input = StepInput;
    type Output = u32;

    fn options(&self) -> ActivityOptions {
        self.options.clone()
    }

    async fn run(&self, ctx: ActivityContext, input: StepInput) -> Result<u32, ActivityError> {
        self.probe.started.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(input.sleep_ms)) => {
                self.probe.finished.fetch_add(1, Ordering::SeqCst);
                Ok(input.value)
            }
            _ = ctx.cancelled() => {
                self.probe.saw_cancel.store(true, Ordering::SeqCst);
                Err(ActivityError::non_retryable(ActivityError::CANCELLED, "step interrupted"))
            }
        }
    }
}

/// Watches something external for up to `max_ms`; a pause interrupts it
/// (`interrupt_on_pause`) and it returns what it has seen so far: `"interrupted"`.
#[derive(Debug, Clone)]
pub struct Watch {
    pub probe: Arc<Probe>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchInput {
    pub max_ms: u64,
}

impl Activity for Watch {
    const NAME: &'static str = "test.watch";
    type Input = WatchInput;
    type Output = String;

    fn options(&self) -> ActivityOptions {
        fast_options(3)
    }

    fn interrupt_on_pause(&self) -> bool {
        true
    }

    async fn run(&self, ctx: ActivityContext, input: WatchInput) -> Result<String, ActivityError> {
        self.probe.started.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(input.max_ms)) => Ok("timed out".into()),
            _ = ctx.cancelled() => {
                self.probe.saw_cancel.store(true, Ordering::SeqCst);
                Ok("interrupted".into())
            }
        }
    }
}

/// Fails its first `fail_times` attempts with `code` (retryable or not), then returns the
/// attempt number.
#[derive(Debug, Clone)]
pub struct Flaky {
    pub options: ActivityOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlakyInput {
    pub fail_times: u32,
    pub code: String,
    pub retryable: bool,
}

impl Activity for Flaky {
    const NAME: &'static str = "test.flaky";
    type Input = FlakyInput;
    type Output = u32;

    fn options(&self) -> ActivityOptions {
        self.options.clone()
    }

    async fn run(&self, ctx: ActivityContext, input: FlakyInput) -> Result<u32, ActivityError> {
        if ctx.attempt() <= input.fail_times {
            let message = format!("attempt {} fails", ctx.attempt());
            return Err(if input.retryable {
                ActivityError::retryable(input.code, message)
            } else {
                ActivityError::non_retryable(input.code, message)
            });
        }
        Ok(ctx.attempt())
    }
}

/// Heartbeats `beats` times every `every_ms` with details `{"attempt": a, "beat": i}`. Attempts
/// up to `fail_attempts` then fail retryably; later ones go silent for `silent_ms` (watching
/// their token) and return the number of beats.
#[derive(Debug, Clone)]
pub struct Beat {
    pub probe: Arc<Probe>,
    pub options: ActivityOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeatInput {
    pub beats: u32,
    pub every_ms: u64,
    pub fail_attempts: u32,
    pub silent_ms: u64,
}

impl Activity for Beat {
    const NAME: &'static str = "test.beat";
    type Input = BeatInput;
    type Output = u32;

    fn options(&self) -> ActivityOptions {
        self.options.clone()
    }

    async fn run(&self, ctx: ActivityContext, input: BeatInput) -> Result<u32, ActivityError> {
        self.probe.started.fetch_add(1, Ordering::SeqCst);
        self.probe
            .resumed_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((ctx.attempt(), ctx.last_heartbeat_details().cloned()));
        for beat in 1..=input.beats {
            tokio::time::sleep(Duration::from_millis(input.every_ms)).await;
            ctx.heartbeat(json!({ "attempt": ctx.attempt(), "beat": beat }));
        }
        if ctx.attempt() <= input.fail_attempts {
            return Err(ActivityError::retryable(
                "beat.failed",
                "failing after beats",
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(input.silent_ms)) => {}
            _ = ctx.cancelled() => {
                self.probe.saw_cancel.store(true, Ordering::SeqCst);
                return Err(ActivityError::non_retryable(ActivityError::CANCELLED, "beat interrupted"));
            }
        }
        self.probe.finished.fetch_add(1, Ordering::SeqCst);
        Ok(input.beats)
    }
}

/// The cleanup of [`CleanupOnCancel`]: counts its runs.
#[derive(Debug, Clone)]
pub struct Cleanup {
    pub probe: Arc<Probe>,
}

impl Activity for Cleanup {
    const NAME: &'static str = "test.cleanup";
    type Input = ();
    type Output = ();

    async fn run(&self, _ctx: ActivityContext, _input: ()) -> Result<(), ActivityError> {
        self.probe.started.fetch_add(1, Ordering::SeqCst);
        self.probe.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Workflows
// ---------------------------------------------------------------------------------------------

/// Runs [`Step`] `steps` times and completes with the sum of the values.
#[derive(Debug)]
pub struct Chain;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainInput {
    pub steps: u32,
    pub sleep_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChainState {
    /// Step `done + 1` of `steps` runs.
    Running {
        done: u32,
        steps: u32,
        sleep_ms: u64,
        sum: u32,
    },
    Done {
        sum: u32,
    },
}

fn step_call(value: u32, sleep_ms: u64) -> ActivityCall {
    ActivityCall::new::<Step>(&StepInput { value, sleep_ms })
}

impl Workflow for Chain {
    const NAME: &'static str = "test.chain";
    type Input = ChainInput;
    type State = ChainState;
    type Output = u32;
    type Signal = engine::NoSignal;

    fn start(&self, input: ChainInput) -> Transition<ChainState, u32> {
        let state = ChainState::Running {
            done: 0,
            steps: input.steps,
            sleep_ms: input.sleep_ms,
            sum: 0,
        };
        if input.steps == 0 {
            return Transition::complete(ChainState::Done { sum: 0 }, 0);
        }
        Transition::run(state, step_call(1, input.sleep_ms))
    }

    fn on_activity(
        &self,
        state: ChainState,
        outcome: ActivityOutcome,
    ) -> Transition<ChainState, u32> {
        let ChainState::Running {
            done,
            steps,
            sleep_ms,
            sum,
        } = state
        else {
            return Transition::fail(state, WorkflowError::new("test.bad_state", "not running"));
        };
        match outcome.decode::<Step>() {
            Err(e) => Transition::fail(state, e.into()),
            Ok(v) if done + 1 >= steps => {
                let sum = sum + v;
                Transition::complete(ChainState::Done { sum }, sum)
            }
            Ok(v) => Transition::run(
                ChainState::Running {
                    done: done + 1,
                    steps,
                    sleep_ms,
                    sum: sum + v,
                },
                step_call(done + 2, sleep_ms),
            ),
        }
    }
}

/// Calls one activity and completes with its output, or fails with its final error.
#[derive(Debug)]
pub struct CallOne;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Step(StepInput),
    Flaky(FlakyInput),
    Beat(BeatInput),
    Watch(WatchInput),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CallState {
    Calling { activity: String },
    Done,
}

impl Workflow for CallOne {
    const NAME: &'static str = "test.call_one";
    type Input = Call;
    type State = CallState;
    type Output = Value;
    type Signal = engine::NoSignal;

    fn start(&self, input: Call) -> Transition<CallState, Value> {
        let call = match &input {
            Call::Step(i) => ActivityCall::new::<Step>(i),
            Call::Flaky(i) => ActivityCall::new::<Flaky>(i),
            Call::Beat(i) => ActivityCall::new::<Beat>(i),
            Call::Watch(i) => ActivityCall::new::<Watch>(i),
        };
        let activity = call.name().to_owned();
        Transition::run(CallState::Calling { activity }, call)
    }

    fn on_activity(
        &self,
        state: CallState,
        outcome: ActivityOutcome,
    ) -> Transition<CallState, Value> {
        match outcome.result {
            Ok(v) => Transition::complete(CallState::Done, v),
            Err(e) => Transition::fail(state, e.into()),
        }
    }
}

/// Runs a long [`Step`]; on cancel it runs [`Cleanup`] before ending `cancelled`.
#[derive(Debug)]
pub struct CleanupOnCancel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CleanupState {
    Working,
    CleaningUp,
    Done,
}

impl Workflow for CleanupOnCancel {
    const NAME: &'static str = "test.cleanup_on_cancel";
    type Input = StepInput;
    type State = CleanupState;
    type Output = u32;
    type Signal = engine::NoSignal;

    fn start(&self, input: StepInput) -> Transition<CleanupState, u32> {
        Transition::run(CleanupState::Working, ActivityCall::new::<Step>(&input))
    }

    fn on_activity(
        &self,
        state: CleanupState,
        outcome: ActivityOutcome,
    ) -> Transition<CleanupState, u32> {
        match (state, outcome.is::<Cleanup>()) {
            (CleanupState::CleaningUp, true) => {
                Transition::new(CleanupState::CleaningUp, Next::Cancelled)
            }
            (CleanupState::Working, false) => match outcome.decode::<Step>() {
                Ok(v) => Transition::complete(CleanupState::Done, v),
                Err(e) => Transition::fail(CleanupState::Working, e.into()),
            },
            (s, _) => Transition::fail(
                s,
                WorkflowError::new("test.bad_state", "unexpected outcome"),
            ),
        }
    }

    fn on_cancel(&self, _state: CleanupState) -> Transition<CleanupState, u32> {
        Transition::run(CleanupState::CleaningUp, ActivityCall::new::<Cleanup>(&()))
    }
}

/// Collects `add` signals (running a short [`Step`] after each, so later signals arrive while an
/// activity is outstanding) until `close`, then completes with the items in order.
#[derive(Debug)]
pub struct Inbox;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxInput {
    pub step_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboxSignal {
    Add(String),
    Close,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InboxState {
    /// Waits for a signal.
    Collecting {
        items: Vec<String>,
        step_ms: u64,
    },
    /// A step runs after an `add`; further signals stay queued.
    Stepping {
        items: Vec<String>,
        step_ms: u64,
    },
    Closed {
        items: Vec<String>,
    },
}

impl Workflow for Inbox {
    const NAME: &'static str = "test.inbox";
    type Input = InboxInput;
    type State = InboxState;
    type Output = Vec<String>;
    type Signal = InboxSignal;

    fn start(&self, input: InboxInput) -> Transition<InboxState, Vec<String>> {
        let state = InboxState::Collecting {
            items: Vec::new(),
            step_ms: input.step_ms,
        };
        Transition::new(state, Next::WaitForSignal)
    }

    fn on_activity(
        &self,
        state: InboxState,
        outcome: ActivityOutcome,
    ) -> Transition<InboxState, Vec<String>> {
        match (state, outcome.decode::<Step>()) {
            (InboxState::Stepping { items, step_ms }, Ok(_)) => Transition::new(
                InboxState::Collecting { items, step_ms },
                Next::WaitForSignal,
            ),
            (s, Err(e)) => Transition::fail(s, e.into()),
            (s, Ok(_)) => Transition::fail(s, WorkflowError::new("test.bad_state", "no step runs")),
        }
    }

    fn on_signal(
        &self,
        state: InboxState,
        signal: InboxSignal,
    ) -> Transition<InboxState, Vec<String>> {
        match (state, signal) {
            (InboxState::Collecting { mut items, step_ms }, InboxSignal::Add(item)) => {
                let value = items.len() as u32;
                items.push(item);
                Transition::run(
                    InboxState::Stepping { items, step_ms },
                    step_call(value, step_ms),
                )
            }
            (InboxState::Collecting { items, .. }, InboxSignal::Close) => Transition::complete(
                InboxState::Closed {
                    items: items.clone(),
                },
                items,
            ),
            (s, _) => {
                Transition::fail(s, WorkflowError::new("test.bad_state", "signal while busy"))
            }
        }
    }
}

/// Waits on a durable timer of `ms` (after a quick [`Step`] when `step_first`), then completes.
#[derive(Debug)]
pub struct Sleepy;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SleepyInput {
    pub ms: u64,
    #[serde(default)]
    pub step_first: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SleepyState {
    Stepping { ms: u64 },
    Waiting,
    Woken,
}

impl Workflow for Sleepy {
    const NAME: &'static str = "test.sleepy";
    type Input = SleepyInput;
    type State = SleepyState;
    type Output = String;
    type Signal = engine::NoSignal;

    fn start(&self, input: SleepyInput) -> Transition<SleepyState, String> {
        if input.step_first {
            return Transition::run(SleepyState::Stepping { ms: input.ms }, step_call(0, 0));
        }
        Transition::new(
            SleepyState::Waiting,
            Next::Timer(Duration::from_millis(input.ms)),
        )
    }

    fn on_activity(
        &self,
        state: SleepyState,
        outcome: ActivityOutcome,
    ) -> Transition<SleepyState, String> {
        match (state, outcome.decode::<Step>()) {
            (SleepyState::Stepping { ms }, Ok(_)) => {
                Transition::new(SleepyState::Waiting, Next::Timer(Duration::from_millis(ms)))
            }
            (s, Err(e)) => Transition::fail(s, e.into()),
            (s, Ok(_)) => Transition::fail(s, WorkflowError::new("test.bad_state", "no step runs")),
        }
    }

    fn on_timer(&self, _state: SleepyState) -> Transition<SleepyState, String> {
        Transition::complete(SleepyState::Woken, "woken".to_owned())
    }
}

/// Every test workflow, with [`Step`] (default options) and [`Cleanup`] reporting to `probe`,
/// [`Flaky`] and [`Beat`] with [`fast_options`]. Tests needing other options re-register an
/// activity (the later registration replaces the earlier).
pub fn registry(probe: &Arc<Probe>) -> Registry {
    Registry::new()
        .workflow(Chain)
        .workflow(CallOne)
        .workflow(CleanupOnCancel)
        .workflow(Inbox)
        .workflow(Sleepy)
        .activity(Step::new(probe.clone()))
        .activity(Flaky {
            options: fast_options(3),
        })
        .activity(Beat {
            probe: probe.clone(),
            options: fast_options(3),
        })
        .activity(Cleanup {
            probe: probe.clone(),
        })
        .activity(Watch {
            probe: probe.clone(),
        })
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `check` until it returns `Some`, failing the test (at the caller's line) after [`WAIT`].
#[track_caller]
pub fn wait_for<T, F, Fut>(what: &str, mut check: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = Location::caller();
    let what = what.to_owned();
    async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{caller}: timed out after {WAIT:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls the snapshot until the workflow has `status`; fails at once when it reaches another
/// terminal status, and after [`WAIT`] otherwise.
#[track_caller]
pub fn wait_for_status(
    store: &Arc<dyn Store>,
    id: WorkflowId,
    status: Status,
) -> impl Future<Output = WorkflowRecord> {
    let caller = Location::caller();
    let store = store.clone();
    async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let record = store
                .get_workflow(id)
                .await
                .expect("read snapshot")
                .unwrap_or_else(|| panic!("{caller}: workflow {id} does not exist"));
            if record.status == status {
                return record;
            }
            if record.status.is_terminal() {
                panic!(
                    "{caller}: workflow {id} ended {} (error {:?}) while waiting for {status}",
                    record.status, record.error
                );
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{caller}: timed out after {WAIT:?} waiting for workflow {id} to be {status}; \
                     it is {} pending {:?}",
                    record.status, record.pending
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The snapshot of `id`, which must exist.
pub async fn snapshot(store: &Arc<dyn Store>, id: WorkflowId) -> WorkflowRecord {
    store
        .get_workflow(id)
        .await
        .expect("read snapshot")
        .expect("workflow exists")
}

// ---------------------------------------------------------------------------------------------
// The journal, read directly from the tables
// ---------------------------------------------------------------------------------------------

/// One row of the events table.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub kind: String,
    pub event: EventKind,
    pub created_at: DateTime<Utc>,
}

/// One row of the activity attempts table.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub call_seq: i64,
    pub attempt: i32,
    pub activity_name: String,
    pub worker_id: Option<uuid::Uuid>,
    pub outcome: String,
    pub error: Option<ActivityError>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: Option<i64>,
}

/// A workflow's journal: snapshot, events, attempts and signals as stored.
#[derive(Debug, Clone)]
pub struct Journal {
    pub id: WorkflowId,
    pub snapshot: WorkflowRecord,
    pub events: Vec<EventRow>,
    pub attempts: Vec<AttemptRow>,
    /// `(seq, name, consumed_in)` of every signal.
    pub signals: Vec<(i64, String, Option<i64>)>,
}

impl Journal {
    /// Reads the journal of `id` straight from the tables.
    pub async fn load(db: &Backend, id: WorkflowId) -> Self {
        let reader = db.reader();
        Self {
            id,
            snapshot: snapshot(&db.store(), id).await,
            events: reader.events(id).await.expect("read events"),
            attempts: reader.attempts(id).await.expect("read attempts"),
            signals: reader.signals(id).await.expect("read signals"),
        }
    }

    /// The `kind` column of every event, in order.
    pub fn kinds(&self) -> Vec<&str> {
        self.events.iter().map(|e| e.kind.as_str()).collect()
    }

    /// The events of one kind.
    pub fn of_kind(&self, kind: &str) -> Vec<&EventKind> {
        self.events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| &e.event)
            .collect()
    }

    /// Asserts the journal's invariants:
    /// - seqs are exactly `1..=n` and `n` is the snapshot's version; each `kind` column matches
    ///   its payload;
    /// - the log starts with `started` carrying the snapshot's type, key and input;
    /// - the fold of the log (the last `transitioned` event's state, pending and status, then
    ///   retries scheduled, pause/resume and terminal events after it) equals the snapshot;
    /// - at most one `activity_completed` per call, each matching one `completed` attempt row,
    ///   and attempt numbers of a call are `1..=k`;
    /// - every consumed signal was consumed at a seq of the log.
    #[track_caller]
    pub fn assert_consistent(&self) {
        let id = self.id;
        let seqs: Vec<i64> = self.events.iter().map(|e| e.seq).collect();
        let expected: Vec<i64> = (1..=self.events.len() as i64).collect();
        assert_eq!(
            seqs, expected,
            "workflow {id}: event seqs are not gapless from 1"
        );
        assert_eq!(
            self.snapshot.version,
            self.events.len() as i64,
            "workflow {id}: snapshot version is not the last seq"
        );
        for e in &self.events {
            assert_eq!(
                e.kind,
                e.event.name(),
                "workflow {id}: kind column of seq {}",
                e.seq
            );
        }

        let mut fold = Fold::default();
        for (i, e) in self.events.iter().enumerate() {
            let after_abandon = i > 0
                && matches!(
                    self.events[i - 1].event,
                    EventKind::ActivityAbandoned { .. }
                );
            fold.apply(&e.event, after_abandon);
        }
        let s = &self.snapshot;
        assert_eq!(
            fold.started.as_ref(),
            Some(&(s.workflow_type.clone(), s.key.clone(), s.input.clone())),
            "workflow {id}: first event is not `started` with the snapshot's type, key and input"
        );
        assert!(
            matches!(
                self.events.first().map(|e| &e.event),
                Some(EventKind::Started { .. })
            ),
            "workflow {id}: the log does not start with `started`"
        );
        assert_eq!(fold.status, Some(s.status), "workflow {id}: folded status");
        assert_eq!(
            fold.state.as_ref(),
            Some(&s.state),
            "workflow {id}: folded state"
        );
        assert_eq!(
            fold.pending.as_ref(),
            Some(&s.pending),
            "workflow {id}: folded pending"
        );
        assert_eq!(fold.output, s.output, "workflow {id}: folded output");
        assert_eq!(fold.error, s.error, "workflow {id}: folded error");
        assert_eq!(
            s.finished_at.is_some(),
            s.status.is_terminal(),
            "workflow {id}: finished_at vs status {}",
            s.status
        );

        let mut completed: BTreeMap<i64, u32> = BTreeMap::new();
        for e in &self.events {
            if let EventKind::ActivityCompleted {
                call_seq, attempt, ..
            } = &e.event
            {
                assert!(
                    completed.insert(*call_seq, *attempt).is_none(),
                    "workflow {id}: call {call_seq} has more than one activity_completed"
                );
                let rows: Vec<_> = self
                    .attempts
                    .iter()
                    .filter(|a| a.call_seq == *call_seq && a.attempt as u32 == *attempt)
                    .collect();
                assert!(
                    rows.len() == 1 && rows[0].outcome == "completed",
                    "workflow {id}: call {call_seq} attempt {attempt} completed without one \
                     `completed` attempt row: {rows:?}"
                );
            }
        }
        let mut by_call: BTreeMap<i64, Vec<i32>> = BTreeMap::new();
        for a in &self.attempts {
            by_call.entry(a.call_seq).or_default().push(a.attempt);
        }
        for (call_seq, attempts) in by_call {
            let expected: Vec<i32> = (1..=attempts.len() as i32).collect();
            assert_eq!(
                attempts, expected,
                "workflow {id}: attempts of call {call_seq} are not numbered 1..=k"
            );
        }
        for (seq, name, consumed_in) in &self.signals {
            if let Some(at) = consumed_in {
                assert!(
                    (1..=self.events.len() as i64).contains(at),
                    "workflow {id}: signal {seq} `{name}` consumed at seq {at} outside the log"
                );
            }
        }
    }
}

/// The snapshot fields rebuilt from the log.
#[derive(Debug, Default)]
struct Fold {
    started: Option<(String, Option<String>, Value)>,
    status: Option<Status>,
    state: Option<Value>,
    pending: Option<Pending>,
    output: Option<Value>,
    error: Option<WorkflowError>,
}

impl Fold {
    fn apply(&mut self, event: &EventKind, after_abandon: bool) {
        match event {
            EventKind::Started {
                workflow_type,
                key,
                input,
            } => {
                self.started = Some((workflow_type.clone(), key.clone(), input.clone()));
                self.status = Some(Status::Running);
                self.state = Some(Value::Null);
                self.pending = Some(Pending::Nothing);
            }
            EventKind::Transitioned {
                state,
                pending,
                status,
                ..
            } => {
                self.state = Some(state.clone());
                self.pending = Some(pending.clone());
                self.status = Some(*status);
            }
            EventKind::ActivityFailed {
                retry_at: Some(at),
                error,
                ..
            } => {
                if let Some(Pending::Activity(a)) = &mut self.pending {
                    a.attempt += 1;
                    // A recovered attempt is retried at once; a backoff waits until `retry_at`.
                    a.not_before = (!after_abandon).then_some(*at);
                    a.last_error = Some(error.clone());
                }
            }
            EventKind::Paused => self.status = Some(Status::Paused),
            EventKind::Resumed => self.status = Some(Status::Running),
            EventKind::Completed { output } => {
                self.status = Some(Status::Completed);
                self.output = Some(output.clone());
                self.pending = Some(Pending::Nothing);
            }
            EventKind::Failed { error } => {
                self.status = Some(Status::Failed);
                self.error = Some(error.clone());
                self.pending = Some(Pending::Nothing);
            }
            EventKind::Cancelled => {
                self.status = Some(Status::Cancelled);
                self.pending = Some(Pending::Nothing);
            }
            EventKind::ActivityFailed { retry_at: None, .. }
            | EventKind::ActivityCompleted { .. }
            | EventKind::ActivityAbandoned { .. }
            | EventKind::SignalApplied { .. }
            | EventKind::SignalDiscarded { .. } => {}
        }
    }
}

/// The cause of a `transitioned` event.
pub fn cause(event: &EventKind) -> Option<&Cause> {
    match event {
        EventKind::Transitioned { cause, .. } => Some(cause),
        _ => None,
    }
}
