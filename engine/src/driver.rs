//! Drives one claimed workflow: applies signals, timers and activity outcomes to its snapshot
//! through the workflow's pure transition code, and commits each step in one fenced transaction.
//!
//! A [`Draft`] collects what a step changes (snapshot fields, events, attempts, consumed signals)
//! in memory; nothing is visible until the commit. Activities run only after everything before
//! them is committed, so a result is never computed from an uncommitted state.

use crate::activity::{ActivityContext, ActivityError, ActivityOptions, HeartbeatCell};
use crate::journal::{Cause, EventKind, Pending, PendingActivity, Status, WorkflowRecord};
use crate::registry::Registry;
use crate::signal::{BuiltinSignal, SignalName};
use crate::store::{Claimed, LeaseAfter, NewAttempt, StepCommit, StoredSignal};
use crate::workflow::{
    ActivityOutcome, ErasedTransition, ErasedWorkflow, Next, WorkflowError, signal_value,
};
use crate::{AttemptOutcome, WorkerId, WorkflowId, retry};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The in-memory next version of a workflow's snapshot plus what the step journals.
#[derive(Debug)]
pub(crate) struct Draft {
    pub(crate) id: WorkflowId,
    pub(crate) status: Status,
    pub(crate) state: serde_json::Value,
    pub(crate) pending: Pending,
    pub(crate) output: Option<serde_json::Value>,
    pub(crate) error: Option<WorkflowError>,
    pub(crate) next_call_seq: i64,
    pub(crate) cancel_requested: bool,
    /// Version of the last commit.
    pub(crate) version: i64,
    pub(crate) signal_seq: i64,
    pub(crate) signal_seen: i64,
    /// Unconsumed custom signals may be waiting for the workflow to reach a wait.
    pub(crate) has_deferred_signals: bool,
    /// Read the inbox at the next boundary even without a new signal seq (after a cancel fired).
    pub(crate) force_signal_read: bool,
    pub(crate) events: Vec<EventKind>,
    pub(crate) attempts: Vec<NewAttempt>,
    pub(crate) consumed_signals: Vec<i64>,
    pub(crate) clear_heartbeat: bool,
    /// The last heartbeat details of the attempt that just ended, not yet persisted.
    pub(crate) heartbeat_details: Option<serde_json::Value>,
}

impl Draft {
    /// A draft of a workflow about to be created.
    pub(crate) fn new(id: WorkflowId) -> Self {
        Self {
            id,
            status: Status::Running,
            state: serde_json::Value::Null,
            pending: Pending::Nothing,
            output: None,
            error: None,
            next_call_seq: 1,
            cancel_requested: false,
            version: 0,
            signal_seq: 0,
            signal_seen: 0,
            has_deferred_signals: false,
            force_signal_read: false,
            events: Vec::new(),
            attempts: Vec::new(),
            consumed_signals: Vec::new(),
            clear_heartbeat: false,
            heartbeat_details: None,
        }
    }

    pub(crate) fn from_claimed(c: &Claimed) -> Self {
        let r: &WorkflowRecord = &c.record;
        Self {
            id: r.id,
            status: r.status,
            state: r.state.clone(),
            pending: r.pending.clone(),
            output: r.output.clone(),
            error: r.error.clone(),
            next_call_seq: c.next_call_seq,
            cancel_requested: r.cancel_requested,
            version: r.version,
            signal_seq: c.signal_seq,
            signal_seen: c.signal_seen,
            has_deferred_signals: r.signals_unconsumed > 0,
            force_signal_read: false,
            events: Vec::new(),
            attempts: Vec::new(),
            consumed_signals: Vec::new(),
            clear_heartbeat: false,
            heartbeat_details: None,
        }
    }

    /// Whether anything awaits a commit.
    pub(crate) fn is_dirty(&self) -> bool {
        !self.events.is_empty() || !self.attempts.is_empty() || !self.consumed_signals.is_empty()
    }

    /// Custom signals apply only while the workflow runs and waits on a timer or a signal.
    fn can_apply_custom_signal(&self) -> bool {
        self.status == Status::Running
            && !self.cancel_requested
            && matches!(self.pending, Pending::Timer { .. } | Pending::Signal)
    }

    /// Whether the inbox must be read at this boundary.
    pub(crate) fn should_read_signals(&self) -> bool {
        self.force_signal_read
            || self.signal_seq > self.signal_seen
            || (self.has_deferred_signals && self.can_apply_custom_signal())
    }

    fn finish(&mut self, status: Status) {
        self.status = status;
        self.pending = Pending::Nothing;
    }

    fn fail(&mut self, error: WorkflowError) {
        self.events.push(EventKind::Failed {
            error: error.clone(),
        });
        self.error = Some(error);
        self.finish(Status::Failed);
    }

    /// Applies the result of transition code for `cause`.
    pub(crate) fn apply(
        &mut self,
        registry: &Registry,
        cause: Cause,
        result: Result<ErasedTransition, WorkflowError>,
        now: DateTime<Utc>,
    ) {
        let t = match result {
            Ok(t) => t,
            Err(e) => return self.fail(e),
        };
        self.state = t.state;
        let mut terminal = None;
        match t.next {
            Next::Activity(call) => match call.input {
                Err(msg) => {
                    return self.fail(WorkflowError::new(
                        "workflow.activity_input_encode",
                        format!("{}: {msg}", call.name),
                    ));
                }
                Ok(_) if registry.get_activity(call.name).is_none() => {
                    return self.fail(WorkflowError::new(
                        "workflow.unknown_activity",
                        format!("activity `{}` is not registered in this process", call.name),
                    ));
                }
                Ok(input) => {
                    self.pending = Pending::Activity(PendingActivity {
                        call_seq: self.next_call_seq,
                        name: call.name.to_owned(),
                        input,
                        attempt: 1,
                        scheduled_at: now,
                        not_before: None,
                        last_error: None,
                    });
                    self.next_call_seq += 1;
                    self.clear_heartbeat = true;
                }
            },
            Next::Timer(d) => {
                let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
                self.pending = Pending::Timer {
                    due_at: now
                        .checked_add_signed(d)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC),
                };
            }
            Next::TimerAt(due_at) => self.pending = Pending::Timer { due_at },
            Next::WaitForSignal => self.pending = Pending::Signal,
            Next::Unchanged => {
                if !matches!(self.pending, Pending::Timer { .. } | Pending::Signal) {
                    return self.fail(WorkflowError::new(
                        "workflow.invalid_transition",
                        "Next::Unchanged is only valid while waiting on a timer or a signal",
                    ));
                }
            }
            Next::Complete(output) => {
                self.output = Some(output.clone());
                terminal = Some(EventKind::Completed { output });
                self.finish(Status::Completed);
            }
            Next::Fail(error) => {
                self.error = Some(error.clone());
                terminal = Some(EventKind::Failed { error });
                self.finish(Status::Failed);
            }
            Next::Cancelled => {
                terminal = Some(EventKind::Cancelled);
                self.finish(Status::Cancelled);
            }
        }
        self.events.push(EventKind::Transitioned {
            cause,
            state: self.state.clone(),
            pending: self.pending.clone(),
            status: self.status,
        });
        self.events.extend(terminal);
    }

    fn consume(&mut self, s: &StoredSignal) {
        self.events.push(EventKind::SignalApplied {
            signal_seq: s.seq,
            name: s.name.clone(),
            payload: s.payload.clone(),
        });
        self.consumed_signals.push(s.seq);
    }

    fn discard(&mut self, s: &StoredSignal, reason: &str) {
        self.events.push(EventKind::SignalDiscarded {
            signal_seq: s.seq,
            name: s.name.clone(),
            reason: reason.to_owned(),
        });
        self.consumed_signals.push(s.seq);
    }

    /// Applies inbox signals in order. Built-ins apply at once; custom signals keep their order
    /// and wait (unconsumed) while an activity call is outstanding or the workflow is paused.
    pub(crate) fn apply_signals(
        &mut self,
        registry: &Registry,
        workflow: &dyn ErasedWorkflow,
        signals: &[StoredSignal],
        now: DateTime<Utc>,
    ) {
        let mut deferred = false;
        self.force_signal_read = false;
        for s in signals {
            self.signal_seen = self.signal_seen.max(s.seq);
            if self.consumed_signals.contains(&s.seq) {
                continue;
            }
            if self.status.is_terminal() {
                self.discard(s, "workflow already finished");
                continue;
            }
            match SignalName::parse(&s.name) {
                SignalName::Builtin(BuiltinSignal::Pause) => {
                    self.consume(s);
                    if self.status == Status::Running && !self.cancel_requested {
                        self.status = Status::Paused;
                        self.events.push(EventKind::Paused);
                    }
                }
                SignalName::Builtin(BuiltinSignal::Resume) => {
                    self.consume(s);
                    if self.status == Status::Paused {
                        self.status = Status::Running;
                        self.events.push(EventKind::Resumed);
                    }
                }
                SignalName::Builtin(BuiltinSignal::Cancel) => {
                    if self.cancel_requested {
                        self.discard(s, "already cancelling");
                        continue;
                    }
                    self.consume(s);
                    self.cancel_requested = true;
                    if self.status == Status::Paused {
                        self.status = Status::Running;
                        self.events.push(EventKind::Resumed);
                    }
                    let result = workflow.on_cancel(self.state.clone());
                    self.apply(registry, Cause::Cancel, result, now);
                }
                SignalName::Custom(name) => {
                    if self.cancel_requested {
                        self.discard(s, "workflow is cancelling");
                    } else if deferred || !self.can_apply_custom_signal() {
                        deferred = true;
                    } else {
                        self.consume(s);
                        let result =
                            workflow.on_signal(self.state.clone(), signal_value(&name, &s.payload));
                        self.apply(
                            registry,
                            Cause::Signal {
                                signal_seq: s.seq,
                                name,
                            },
                            result,
                            now,
                        );
                    }
                }
            }
        }
        self.has_deferred_signals = deferred;
    }

    /// Journals a failed attempt and either schedules the next one durably or hands the final
    /// error to the workflow.
    pub(crate) fn attempt_failed(
        &mut self,
        registry: &Registry,
        workflow: &dyn ErasedWorkflow,
        options: &ActivityOptions,
        error: ActivityError,
        immediate_retry: bool,
        now: DateTime<Utc>,
    ) {
        let Pending::Activity(a) = &mut self.pending else {
            return;
        };
        let deadline = options
            .schedule_to_close_timeout
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| a.scheduled_at + d);
        let delay = retry::backoff_delay(&options.retry, a.attempt, &error)
            .map(|d| if immediate_retry { Duration::ZERO } else { d });
        let retry_at = delay
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| now + d)
            .filter(|at| deadline.is_none_or(|dl| *at < dl));
        self.events.push(EventKind::ActivityFailed {
            call_seq: a.call_seq,
            name: a.name.clone(),
            attempt: a.attempt,
            error: error.clone(),
            retry_at,
        });
        if let Some(at) = retry_at {
            a.attempt += 1;
            a.not_before = (at > now).then_some(at);
            a.last_error = Some(error);
            return;
        }
        let (call_seq, name) = (a.call_seq, a.name.clone());
        let outcome = ActivityOutcome {
            name: name.clone(),
            result: Err(error),
        };
        let result = workflow.on_activity(self.state.clone(), outcome);
        self.apply(registry, Cause::Activity { call_seq, name }, result, now);
    }

    /// Journals an attempt that ended without an outcome (its worker lost the lease or was shut
    /// down mid-way): the body may have run, so it counts, and the next attempt is due at once.
    pub(crate) fn attempt_abandoned(
        &mut self,
        registry: &Registry,
        workflow: &dyn ErasedWorkflow,
        options: &ActivityOptions,
        mut row: NewAttempt,
        error: ActivityError,
        now: DateTime<Utc>,
    ) {
        let Pending::Activity(a) = &self.pending else {
            return;
        };
        self.events.push(EventKind::ActivityAbandoned {
            call_seq: a.call_seq,
            name: a.name.clone(),
            attempt: a.attempt,
            worker: row.worker_id,
        });
        row.outcome = AttemptOutcome::Abandoned;
        row.error = Some(error.clone());
        self.attempts.push(row);
        self.attempt_failed(registry, workflow, options, error, true, now);
    }

    /// Journals a successful attempt's result (once) and applies it.
    pub(crate) fn attempt_completed(
        &mut self,
        registry: &Registry,
        workflow: &dyn ErasedWorkflow,
        output: serde_json::Value,
        now: DateTime<Utc>,
    ) {
        let Pending::Activity(a) = &self.pending else {
            return;
        };
        let (call_seq, name, attempt) = (a.call_seq, a.name.clone(), a.attempt);
        self.events.push(EventKind::ActivityCompleted {
            call_seq,
            name: name.clone(),
            attempt,
            output: output.clone(),
        });
        let outcome = ActivityOutcome {
            name: name.clone(),
            result: Ok(output),
        };
        let result = workflow.on_activity(self.state.clone(), outcome);
        self.apply(registry, Cause::Activity { call_seq, name }, result, now);
    }

    /// Builds the commit of this draft and resets the step's buffers.
    pub(crate) fn take_commit(
        &mut self,
        worker: WorkerId,
        epoch: i64,
        lease: LeaseAfter,
        lease_ttl: Duration,
    ) -> StepCommit {
        StepCommit {
            id: self.id,
            worker,
            epoch,
            expected_version: self.version,
            status: self.status,
            state: self.state.clone(),
            pending: self.pending.clone(),
            output: self.output.clone(),
            error: self.error.clone(),
            next_call_seq: self.next_call_seq,
            cancel_requested: self.cancel_requested,
            events: std::mem::take(&mut self.events),
            attempts: std::mem::take(&mut self.attempts),
            consumed_signals: std::mem::take(&mut self.consumed_signals),
            signal_seen: self.signal_seen,
            lease,
            lease_ttl,
            clear_heartbeat: std::mem::take(&mut self.clear_heartbeat),
            heartbeat_details: self.heartbeat_details.take(),
        }
    }
}

/// How one attempt ended, as seen by the driver.
#[derive(Debug)]
pub(crate) enum AttemptEnd {
    Completed(serde_json::Value),
    Failed(ActivityError, AttemptOutcome),
    /// The workflow's cancel signal fired the token.
    Cancelled,
    /// A pause interrupted an interruptible body that did not return in time.
    Paused,
    /// Another worker took the lease: write nothing.
    LeaseLost,
    /// The worker's drain deadline passed: hand the lease back.
    Abandoned,
}

/// Context an attempt needs; built by the worker.
#[derive(Debug)]
pub(crate) struct AttemptSpec<'a> {
    pub(crate) workflow_id: WorkflowId,
    pub(crate) activity: &'a PendingActivity,
    pub(crate) options: &'a ActivityOptions,
    pub(crate) last_heartbeat_details: Option<serde_json::Value>,
    /// Time left before the schedule-to-close deadline, if any.
    pub(crate) deadline_left: Option<Duration>,
}

/// Grace given to a body after its token fired before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Runs one attempt under its timeouts and tokens.
///
/// # Cancellation safety
/// The body is dropped when the lease is lost or the drain deadline passes; on cancel and
/// timeouts its token fires first and it gets [`CANCEL_GRACE`] to finish.
pub(crate) async fn run_attempt(
    spec: AttemptSpec<'_>,
    body: &dyn crate::activity::ErasedActivity,
    heartbeat: std::sync::Arc<HeartbeatCell>,
    tokens: &crate::worker::HeldTokens,
) -> AttemptEnd {
    let token = tokens.attempt_token();
    let ctx = ActivityContext {
        workflow_id: spec.workflow_id,
        call_seq: spec.activity.call_seq,
        attempt: spec.activity.attempt,
        scheduled_at: spec.activity.scheduled_at,
        cancel: token.clone(),
        heartbeat: heartbeat.clone(),
        last_heartbeat_details: spec.last_heartbeat_details,
    };
    let (limit, limit_code) = match spec.deadline_left {
        Some(left) if left < spec.options.start_to_close_timeout => {
            (left, ActivityError::SCHEDULE_TO_CLOSE_TIMEOUT)
        }
        _ => (
            spec.options.start_to_close_timeout,
            ActivityError::START_TO_CLOSE_TIMEOUT,
        ),
    };
    let heartbeat_timeout = spec.options.heartbeat_timeout;
    let watchdog = async {
        let Some(timeout) = heartbeat_timeout else {
            return std::future::pending::<()>().await;
        };
        loop {
            let due = heartbeat.last_beat() + timeout;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    let pause = tokens.pause_token();
    let interrupt_on_pause = body.interrupt_on_pause();
    let mut body = body.run(ctx, spec.activity.input.clone());
    let interrupted = tokio::select! {
        r = &mut body => return match r {
            Ok(v) => AttemptEnd::Completed(v),
            Err(e) => AttemptEnd::Failed(e, AttemptOutcome::Failed),
        },
        _ = tokio::time::sleep(limit) => AttemptEnd::Failed(
            ActivityError::retryable(limit_code, format!("attempt exceeded {}", humantime::format_duration(limit))),
            AttemptOutcome::TimedOut,
        ),
        _ = watchdog => AttemptEnd::Failed(
            ActivityError::retryable(ActivityError::HEARTBEAT_TIMEOUT, "no heartbeat within the heartbeat timeout"),
            AttemptOutcome::TimedOut,
        ),
        _ = tokens.cancel.cancelled(), if !tokens.cancel_requested.load(std::sync::atomic::Ordering::Relaxed) => {
            AttemptEnd::Cancelled
        }
        _ = pause.cancelled(), if interrupt_on_pause => AttemptEnd::Paused,
        _ = tokens.lease_lost.cancelled() => return AttemptEnd::LeaseLost,
        _ = tokens.abandon.cancelled() => return AttemptEnd::Abandoned,
    };
    token.cancel();
    // A body that still finishes successfully did its side effect: keep the result.
    match tokio::time::timeout(CANCEL_GRACE, &mut body).await {
        Ok(Ok(v)) => AttemptEnd::Completed(v),
        _ => interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use crate::activity::Activity;
    use crate::workflow::{ActivityCall, NoSignal, Transition, Workflow};
    use serde::{Deserialize, Serialize};

    struct Echo;
    impl Activity for Echo {
        const NAME: &'static str = "test.echo";
        type Input = u32;
        type Output = u32;
        async fn run(&self, _ctx: ActivityContext, input: u32) -> Result<u32, ActivityError> {
            Ok(input)
        }
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    enum CountState {
        Counting { done: u32, of: u32 },
        Done,
    }

    struct Count;
    impl Workflow for Count {
        const NAME: &'static str = "test.count";
        type Input = u32;
        type State = CountState;
        type Output = u32;
        type Signal = NoSignal;
        fn start(&self, of: u32) -> Transition<CountState, u32> {
            Transition::run(
                CountState::Counting { done: 0, of },
                ActivityCall::new::<Echo>(&1),
            )
        }
        fn on_activity(
            &self,
            state: CountState,
            outcome: ActivityOutcome,
        ) -> Transition<CountState, u32> {
            match (state, outcome.decode::<Echo>()) {
                (CountState::Counting { done, of }, Ok(_)) if done + 1 >= of => {
                    Transition::complete(CountState::Done, of)
                }
                (CountState::Counting { done, of }, Ok(_)) => Transition::run(
                    CountState::Counting { done: done + 1, of },
                    ActivityCall::new::<Echo>(&1),
                ),
                (s, Err(e)) => Transition::fail(s, e.into()),
                (s, Ok(_)) => Transition::fail(s, WorkflowError::new("bad", "bad state")),
            }
        }
    }

    fn setup() -> (Registry, std::sync::Arc<dyn ErasedWorkflow>) {
        let registry = Registry::new().workflow(Count).activity(Echo);
        let wf = registry
            .get_workflow(Count::NAME)
            .cloned()
            .expect("registered");
        (registry, wf)
    }

    #[test]
    fn start_schedules_first_call_and_results_advance() {
        let (registry, wf) = setup();
        let mut d = Draft::new(WorkflowId::new());
        let now = Utc::now();
        d.apply(
            &registry,
            Cause::Start,
            wf.start(serde_json::json!(2))
                .map_err(|m| WorkflowError::new("x", m)),
            now,
        );
        let Pending::Activity(a) = &d.pending else {
            panic!("expected activity, got {:?}", d.pending)
        };
        assert_eq!((a.call_seq, a.attempt), (1, 1));
        d.attempt_completed(&registry, wf.as_ref(), serde_json::json!(1), now);
        let Pending::Activity(a) = &d.pending else {
            panic!("expected activity")
        };
        assert_eq!(a.call_seq, 2);
        d.attempt_completed(&registry, wf.as_ref(), serde_json::json!(1), now);
        assert_eq!(d.status, Status::Completed);
        assert_eq!(d.output, Some(serde_json::json!(2)));
        let kinds: Vec<_> = d.events.iter().map(EventKind::name).collect();
        assert_eq!(
            kinds,
            [
                "transitioned",
                "activity_completed",
                "transitioned",
                "activity_completed",
                "transitioned",
                "completed"
            ]
        );
    }

    #[test]
    fn retryable_failure_schedules_retry_then_final_failure_reaches_workflow() {
        let (registry, wf) = setup();
        let mut d = Draft::new(WorkflowId::new());
        let now = Utc::now();
        d.apply(
            &registry,
            Cause::Start,
            wf.start(serde_json::json!(1))
                .map_err(|m| WorkflowError::new("x", m)),
            now,
        );
        let mut options = ActivityOptions::default();
        options.retry.maximum_attempts = 2;
        d.attempt_failed(
            &registry,
            wf.as_ref(),
            &options,
            ActivityError::retryable("io", "down"),
            false,
            now,
        );
        let Pending::Activity(a) = &d.pending else {
            panic!("expected activity")
        };
        assert_eq!(a.attempt, 2);
        assert!(a.not_before.is_some_and(|t| t > now));
        d.attempt_failed(
            &registry,
            wf.as_ref(),
            &options,
            ActivityError::retryable("io", "down"),
            false,
            now,
        );
        assert_eq!(d.status, Status::Failed);
        assert_eq!(d.error.as_ref().map(|e| e.code.as_str()), Some("io"));
    }

    #[test]
    fn pause_and_cancel_signals_apply_in_order() {
        let (registry, wf) = setup();
        let mut d = Draft::new(WorkflowId::new());
        let now = Utc::now();
        d.apply(
            &registry,
            Cause::Start,
            wf.start(serde_json::json!(3))
                .map_err(|m| WorkflowError::new("x", m)),
            now,
        );
        let sig = |seq, name: &str| StoredSignal {
            seq,
            name: name.into(),
            payload: serde_json::Value::Null,
        };
        d.apply_signals(&registry, wf.as_ref(), &[sig(1, "pause")], now);
        assert_eq!(d.status, Status::Paused);
        d.apply_signals(
            &registry,
            wf.as_ref(),
            &[sig(2, "resume"), sig(3, "cancel"), sig(4, "cancel")],
            now,
        );
        assert_eq!(d.status, Status::Cancelled);
        assert_eq!(d.consumed_signals, vec![1, 2, 3, 4]);
        assert_eq!(d.signal_seen, 4);
    }
}
