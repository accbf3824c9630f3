//! The journal's data: snapshot status, pending actions, events, activity attempts, workers.
//!
//! These types are persisted as JSON; variants are added, never renamed.

use crate::activity::ActivityError;
use crate::workflow::WorkflowError;
use crate::{WorkerId, WorkflowId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Lifecycle status of a workflow. `completed`, `failed` and `cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    /// All statuses, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the workflow has finished.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the workflow will do next, as stored in its snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pending {
    /// An activity call to run (or retry).
    Activity(PendingActivity),
    /// A durable timer.
    Timer { due_at: DateTime<Utc> },
    /// Waiting for a custom signal.
    Signal,
    /// Finished: nothing more to do.
    Nothing,
}

/// An outstanding activity call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingActivity {
    /// Sequence number of the call within the workflow; part of the idempotency key.
    pub call_seq: i64,
    pub name: String,
    pub input: serde_json::Value,
    /// The attempt to run next, from 1.
    pub attempt: u32,
    /// When the call was first scheduled (start of the schedule-to-close deadline).
    pub scheduled_at: DateTime<Utc>,
    /// Set while backing off: the next attempt is not due before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// The error of the previous attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ActivityError>,
}

/// What caused a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Cause {
    Start,
    Activity { call_seq: i64, name: String },
    Timer,
    Signal { signal_seq: i64, name: String },
    Cancel,
}

/// One entry of a workflow's append-only log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The workflow was created.
    Started {
        workflow_type: String,
        key: Option<String>,
        input: serde_json::Value,
    },
    /// Transition code ran: the new state and what comes next.
    Transitioned {
        cause: Cause,
        state: serde_json::Value,
        pending: Pending,
        status: Status,
    },
    /// An activity call produced its result (recorded once per call).
    ActivityCompleted {
        call_seq: i64,
        name: String,
        attempt: u32,
        output: serde_json::Value,
    },
    /// An attempt failed; `retry_at` is set when another attempt is scheduled.
    ActivityFailed {
        call_seq: i64,
        name: String,
        attempt: u32,
        error: ActivityError,
        retry_at: Option<DateTime<Utc>>,
    },
    /// A worker lost its lease while an attempt may have been running; the attempt is counted.
    ActivityAbandoned {
        call_seq: i64,
        name: String,
        attempt: u32,
        worker: Option<WorkerId>,
    },
    /// A signal was applied.
    SignalApplied {
        signal_seq: i64,
        name: String,
        payload: serde_json::Value,
    },
    /// A signal arrived too late to matter (the workflow was cancelled or finished).
    SignalDiscarded {
        signal_seq: i64,
        name: String,
        reason: String,
    },
    Paused,
    Resumed,
    Completed {
        output: serde_json::Value,
    },
    Failed {
        error: WorkflowError,
    },
    Cancelled,
}

impl EventKind {
    /// The stored `kind` column.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Transitioned { .. } => "transitioned",
            Self::ActivityCompleted { .. } => "activity_completed",
            Self::ActivityFailed { .. } => "activity_failed",
            Self::ActivityAbandoned { .. } => "activity_abandoned",
            Self::SignalApplied { .. } => "signal_applied",
            Self::SignalDiscarded { .. } => "signal_discarded",
            Self::Paused => "paused",
            Self::Resumed => "resumed",
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A journaled event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: i64,
    pub created_at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// How an activity attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Completed,
    Failed,
    TimedOut,
    Cancelled,
    /// Its worker lost the lease (crash, freeze); the body may or may not have run.
    Abandoned,
}

impl AttemptOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Abandoned => "abandoned",
        }
    }
}

/// One journaled activity attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityAttempt {
    pub call_seq: i64,
    pub attempt: u32,
    pub activity_name: String,
    pub worker_id: Option<WorkerId>,
    pub outcome: String,
    pub error: Option<ActivityError>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: Option<i64>,
}

/// What a workflow waits on, for queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitingOn {
    /// An activity attempt, leased by a worker until a time (or not yet claimed).
    Activity {
        name: String,
        call_seq: i64,
        attempt: u32,
        worker: Option<WorkerId>,
        lease_expires_at: Option<DateTime<Utc>>,
    },
    /// A failed attempt; the next one is due at `until`.
    BackingOff {
        name: String,
        call_seq: i64,
        next_attempt: u32,
        until: DateTime<Utc>,
        last_error: Option<ActivityError>,
    },
    /// A durable timer.
    Timer { due_at: DateTime<Utc> },
    /// A custom signal.
    Signal,
    /// The `resume` signal.
    Paused,
    /// Finished.
    Nothing,
}

/// The snapshot of one workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub id: WorkflowId,
    pub workflow_type: String,
    pub key: Option<String>,
    /// The label the workflow type gave it at start ([`crate::Workflow::tag`]).
    #[serde(default)]
    pub tag: Option<String>,
    pub status: Status,
    pub input: serde_json::Value,
    pub state: serde_json::Value,
    pub pending: Pending,
    pub output: Option<serde_json::Value>,
    pub error: Option<WorkflowError>,
    /// Seq of the last event.
    pub version: i64,
    pub cancel_requested: bool,
    pub run_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<WorkerId>,
    pub lease_epoch: i64,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub heartbeat_details: Option<serde_json::Value>,
    pub signals_unconsumed: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl WorkflowRecord {
    /// What the workflow is waiting on right now.
    pub fn waiting_on(&self) -> WaitingOn {
        if self.status.is_terminal() {
            return WaitingOn::Nothing;
        }
        if self.status == Status::Paused {
            return WaitingOn::Paused;
        }
        match &self.pending {
            Pending::Activity(a) => match a.not_before {
                Some(until) if self.lease_owner.is_none() => WaitingOn::BackingOff {
                    name: a.name.clone(),
                    call_seq: a.call_seq,
                    next_attempt: a.attempt,
                    until,
                    last_error: a.last_error.clone(),
                },
                _ => WaitingOn::Activity {
                    name: a.name.clone(),
                    call_seq: a.call_seq,
                    attempt: a.attempt,
                    worker: self.lease_owner,
                    lease_expires_at: self.lease_expires_at,
                },
            },
            Pending::Timer { due_at } => WaitingOn::Timer { due_at: *due_at },
            Pending::Signal => WaitingOn::Signal,
            Pending::Nothing => WaitingOn::Nothing,
        }
    }
}

/// One event of the global feed: which workflow, which journal entry, and the status it set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// The global position of the event (increasing across all workflows).
    pub gid: i64,
    pub workflow_id: WorkflowId,
    pub workflow_type: String,
    /// The event's seq in its workflow's journal.
    pub seq: i64,
    /// The event kind ([`EventKind::name`]).
    pub kind: String,
    /// The status this event sets; `None` for events that leave it unchanged (activity and
    /// signal events).
    pub status: Option<Status>,
    pub created_at: DateTime<Utc>,
}

impl FeedEvent {
    /// The status an event of `kind` sets; `transitioned` carries it (`transitioned_status`).
    pub fn status_of(kind: &str, transitioned_status: Option<&str>) -> Option<Status> {
        match kind {
            "transitioned" => transitioned_status.and_then(Status::parse),
            "started" | "resumed" => Some(Status::Running),
            "paused" => Some(Status::Paused),
            "completed" => Some(Status::Completed),
            "failed" => Some(Status::Failed),
            "cancelled" => Some(Status::Cancelled),
            _ => None,
        }
    }
}

/// A registered worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub host: String,
    pub pid: i32,
    pub slots: i32,
    pub slots_used: i32,
    pub lease_ttl_ms: i64,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// Heartbeat younger than the lease TTL and not stopped.
    pub alive: bool,
}

/// Serde for `Duration` as a humantime string ("1s", "250ms").
pub(crate) mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde for `Option<Duration>` as a humantime string or null.
pub(crate) mod opt_duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
