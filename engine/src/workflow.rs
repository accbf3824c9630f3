//! Workflows: typed state machines with pure transition code.
//!
//! Given the state and what just happened (start, an activity outcome, a signal, a timer), a
//! workflow returns a [`Transition`]: the next state and what to do next. It never does I/O;
//! the engine journals each transition and performs the [`Next`] action.

use crate::activity::{Activity, ActivityError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::time::Duration;

/// A durable state machine. `NAME` is durable API: it is journaled, never rename it.
///
/// Built-in signals (`pause`, `resume`, `cancel`) are handled by the engine; `on_cancel` decides
/// the workflow's own cancel path. Custom signals (`Self::Signal`, an externally tagged serde
/// enum whose variant name is the signal name) are applied in order, only while the workflow
/// waits on a timer or a signal; while an activity call is outstanding they stay queued.
pub trait Workflow: Send + Sync + 'static {
    /// Stable type name, used to start workflows and journaled with them.
    const NAME: &'static str;
    /// Validated before anything is written.
    type Input: Serialize + DeserializeOwned + Send;
    /// The state enum; its variants carry the data valid in that state.
    type State: Serialize + DeserializeOwned + Send + Debug;
    /// The result of a completed workflow.
    type Output: Serialize + DeserializeOwned + Send;
    /// Custom signals; [`NoSignal`] when there are none.
    type Signal: Serialize + DeserializeOwned + Send;

    /// The first transition.
    fn start(&self, input: Self::Input) -> Transition<Self::State, Self::Output>;

    /// An optional label stored with the workflow at start, for filtering lists (e.g. the group
    /// or tenant a workflow belongs to). At most 256 bytes; set once, never changed.
    fn tag(&self, input: &Self::Input) -> Option<String> {
        let _ = input;
        None
    }

    /// An activity call finished: its output, or its final error after retries.
    fn on_activity(
        &self,
        state: Self::State,
        outcome: ActivityOutcome,
    ) -> Transition<Self::State, Self::Output>;

    /// A timer set by [`Next::Timer`] or [`Next::TimerAt`] is due.
    fn on_timer(&self, state: Self::State) -> Transition<Self::State, Self::Output> {
        Transition::fail(
            state,
            WorkflowError::new("unexpected_timer", "this workflow sets no timers"),
        )
    }

    /// A custom signal arrived while the workflow waited.
    fn on_signal(
        &self,
        state: Self::State,
        signal: Self::Signal,
    ) -> Transition<Self::State, Self::Output> {
        let _ = signal;
        Transition::new(state, Next::Unchanged)
    }

    /// The `cancel` signal arrived. The default ends the workflow `cancelled` at once; override
    /// it to clean up first (run activities, then return [`Next::Cancelled`]).
    fn on_cancel(&self, state: Self::State) -> Transition<Self::State, Self::Output> {
        Transition::new(state, Next::Cancelled)
    }
}

/// The result of one step of transition code: the next state and what to do next.
#[derive(Debug)]
pub struct Transition<S, O> {
    pub state: S,
    pub next: Next<O>,
}

impl<S, O> Transition<S, O> {
    /// A transition to `state`, then `next`.
    pub fn new(state: S, next: Next<O>) -> Self {
        Self { state, next }
    }

    /// Run an activity call next.
    pub fn run(state: S, call: ActivityCall) -> Self {
        Self::new(state, Next::Activity(call))
    }

    /// Complete with `output`.
    pub fn complete(state: S, output: O) -> Self {
        Self::new(state, Next::Complete(output))
    }

    /// Fail with `error`.
    pub fn fail(state: S, error: WorkflowError) -> Self {
        Self::new(state, Next::Fail(error))
    }
}

/// What the engine does after a transition.
#[derive(Debug)]
pub enum Next<O> {
    /// Run one activity call; its outcome comes back through `on_activity`.
    Activity(ActivityCall),
    /// Wait this long (durably), then `on_timer`. Signals may arrive meanwhile.
    Timer(Duration),
    /// Wait until this time (durably), then `on_timer`. For deadlines the workflow knows from
    /// its data (a payment's `payByTime`); transition code never reads the clock.
    TimerAt(chrono::DateTime<chrono::Utc>),
    /// Wait for a custom signal.
    WaitForSignal,
    /// Keep the current wait (timer due time or signal wait); only meaningful from `on_signal`.
    Unchanged,
    /// Finish successfully.
    Complete(O),
    /// Finish with an error.
    Fail(WorkflowError),
    /// Finish as cancelled (the end of the cancel path).
    Cancelled,
}

/// One call of an activity, built from its typed input.
#[derive(Debug, Clone)]
pub struct ActivityCall {
    pub(crate) name: &'static str,
    pub(crate) input: Result<serde_json::Value, String>,
}

impl ActivityCall {
    /// A call of activity `A` with `input`.
    pub fn new<A: Activity>(input: &A::Input) -> Self {
        Self {
            name: A::NAME,
            input: serde_json::to_value(input).map_err(|e| e.to_string()),
        }
    }

    /// The activity's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The final outcome of an activity call, handed to `on_activity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityOutcome {
    /// Which activity ran.
    pub name: String,
    /// Its output, or its final error.
    pub result: Result<serde_json::Value, ActivityError>,
}

impl ActivityOutcome {
    /// Whether this is the outcome of activity `A`.
    pub fn is<A: Activity>(&self) -> bool {
        self.name == A::NAME
    }

    /// The typed output of activity `A`, or its error. A name or type mismatch is a
    /// non-retryable error with code `activity.output_decode`.
    pub fn decode<A: Activity>(self) -> Result<A::Output, ActivityError> {
        if self.name != A::NAME {
            return Err(ActivityError::non_retryable(
                "activity.output_decode",
                format!("expected outcome of `{}`, got `{}`", A::NAME, self.name),
            ));
        }
        let value = self.result?;
        serde_json::from_value(value).map_err(|e| {
            ActivityError::non_retryable("activity.output_decode", format!("{}: {e}", A::NAME))
        })
    }
}

/// Why a workflow failed; journaled as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl WorkflowError {
    /// A failure with a stable code.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }
}

impl From<ActivityError> for WorkflowError {
    fn from(e: ActivityError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            details: e.details,
        }
    }
}

/// The signal type of workflows without custom signals.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum NoSignal {}

/// A transition with its types erased to JSON.
#[derive(Debug)]
pub(crate) struct ErasedTransition {
    pub(crate) state: serde_json::Value,
    pub(crate) next: Next<serde_json::Value>,
}

/// A workflow with its types erased, as the registry holds it. Decode errors are returned as
/// `WorkflowError`s so the engine can fail the workflow visibly.
pub(crate) trait ErasedWorkflow: Send + Sync {
    fn decode_input(&self, input: &serde_json::Value) -> Result<(), String>;
    fn start(&self, input: serde_json::Value) -> Result<ErasedTransition, String>;
    fn tag(&self, input: &serde_json::Value) -> Option<String>;
    fn on_activity(
        &self,
        state: serde_json::Value,
        outcome: ActivityOutcome,
    ) -> Result<ErasedTransition, WorkflowError>;
    fn on_timer(&self, state: serde_json::Value) -> Result<ErasedTransition, WorkflowError>;
    fn on_signal(
        &self,
        state: serde_json::Value,
        signal: serde_json::Value,
    ) -> Result<ErasedTransition, WorkflowError>;
    fn on_cancel(&self, state: serde_json::Value) -> Result<ErasedTransition, WorkflowError>;
    fn check_signal(&self, signal: &serde_json::Value) -> Result<(), String>;
}

pub(crate) struct WorkflowAdapter<W>(pub(crate) W);

impl<W: Workflow> WorkflowAdapter<W> {
    fn state(&self, state: serde_json::Value) -> Result<W::State, WorkflowError> {
        serde_json::from_value(state)
            .map_err(|e| WorkflowError::new("workflow.state_decode", format!("{}: {e}", W::NAME)))
    }

    fn erase(t: Transition<W::State, W::Output>) -> Result<ErasedTransition, WorkflowError> {
        let encode = |e: serde_json::Error| {
            WorkflowError::new("workflow.state_encode", format!("{}: {e}", W::NAME))
        };
        let state = serde_json::to_value(&t.state).map_err(encode)?;
        let next = match t.next {
            Next::Activity(c) => Next::Activity(c),
            Next::Timer(d) => Next::Timer(d),
            Next::TimerAt(t) => Next::TimerAt(t),
            Next::WaitForSignal => Next::WaitForSignal,
            Next::Unchanged => Next::Unchanged,
            Next::Complete(o) => Next::Complete(serde_json::to_value(o).map_err(encode)?),
            Next::Fail(e) => Next::Fail(e),
            Next::Cancelled => Next::Cancelled,
        };
        Ok(ErasedTransition { state, next })
    }
}

/// Builds the externally tagged form of a signal from its name and payload.
pub(crate) fn signal_value(name: &str, payload: &serde_json::Value) -> serde_json::Value {
    if payload.is_null() {
        serde_json::Value::String(name.to_owned())
    } else {
        let mut map = serde_json::Map::new();
        map.insert(name.to_owned(), payload.clone());
        serde_json::Value::Object(map)
    }
}

impl<W: Workflow> ErasedWorkflow for WorkflowAdapter<W> {
    fn decode_input(&self, input: &serde_json::Value) -> Result<(), String> {
        W::Input::deserialize(input)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn start(&self, input: serde_json::Value) -> Result<ErasedTransition, String> {
        let input: W::Input = serde_json::from_value(input).map_err(|e| e.to_string())?;
        Self::erase(self.0.start(input)).map_err(|e| e.message)
    }

    fn tag(&self, input: &serde_json::Value) -> Option<String> {
        let input = W::Input::deserialize(input).ok()?;
        self.0.tag(&input)
    }

    fn on_activity(
        &self,
        state: serde_json::Value,
        outcome: ActivityOutcome,
    ) -> Result<ErasedTransition, WorkflowError> {
        Self::erase(self.0.on_activity(self.state(state)?, outcome))
    }

    fn on_timer(&self, state: serde_json::Value) -> Result<ErasedTransition, WorkflowError> {
        Self::erase(self.0.on_timer(self.state(state)?))
    }

    fn on_signal(
        &self,
        state: serde_json::Value,
        signal: serde_json::Value,
    ) -> Result<ErasedTransition, WorkflowError> {
        let signal: W::Signal = serde_json::from_value(signal).map_err(|e| {
            WorkflowError::new("workflow.signal_decode", format!("{}: {e}", W::NAME))
        })?;
        Self::erase(self.0.on_signal(self.state(state)?, signal))
    }

    fn on_cancel(&self, state: serde_json::Value) -> Result<ErasedTransition, WorkflowError> {
        Self::erase(self.0.on_cancel(self.state(state)?))
    }

    fn check_signal(&self, signal: &serde_json::Value) -> Result<(), String> {
        W::Signal::deserialize(signal)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
