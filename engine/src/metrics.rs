//! Metrics the engine emits through the [`metrics`] facade: the binary installs an exporter
//! (Prometheus); without one these calls cost next to nothing. Names and labels are an API
//! (dashboards and alerts use them): add, never rename.
//!
//! Everything is counted when it is journaled, so the figures agree with the journal: a
//! transition or an attempt whose commit was fenced is not counted.

use crate::journal::{Cause, EventKind};
use crate::store::NewAttempt;
use metrics::{counter, describe_counter, describe_histogram, histogram};

/// Workflows created, by `workflow_type`.
pub const WORKFLOWS_STARTED: &str = "kodomasu_workflows_started_total";
/// Workflows that reached a terminal status, by `workflow_type` and `status`
/// (`completed`, `failed`, `cancelled`).
pub const WORKFLOWS_FINISHED: &str = "kodomasu_workflows_finished_total";
/// Journaled transitions, by `workflow_type` and `cause` (`start`, `activity`, `timer`,
/// `signal`, `cancel`).
pub const TRANSITIONS: &str = "kodomasu_transitions_total";
/// Journaled activity attempts, by `activity` and `outcome` (`completed`, `failed`,
/// `timed_out`, `cancelled`, `abandoned`).
pub const ACTIVITY_ATTEMPTS: &str = "kodomasu_activity_attempts_total";
/// Run time of activity attempts in seconds, by `activity` and `outcome`.
pub const ACTIVITY_DURATION: &str = "kodomasu_activity_duration_seconds";
/// Claims that took over an expired lease (the holder died or froze), by `workflow_type`.
pub const LEASE_RECOVERIES: &str = "kodomasu_lease_recoveries_total";

/// Registers the descriptions of the engine's metrics with the installed recorder.
pub fn describe() {
    describe_counter!(WORKFLOWS_STARTED, "Workflows created.");
    describe_counter!(
        WORKFLOWS_FINISHED,
        "Workflows that reached a terminal status."
    );
    describe_counter!(TRANSITIONS, "Journaled state-machine transitions.");
    describe_counter!(ACTIVITY_ATTEMPTS, "Journaled activity attempts.");
    describe_histogram!(
        ACTIVITY_DURATION,
        metrics::Unit::Seconds,
        "Run time of activity attempts."
    );
    describe_counter!(
        LEASE_RECOVERIES,
        "Claims that took over an expired lease from a dead or frozen worker."
    );
}

fn cause_label(cause: &Cause) -> &'static str {
    match cause {
        Cause::Start => "start",
        Cause::Activity { .. } => "activity",
        Cause::Timer => "timer",
        Cause::Signal { .. } => "signal",
        Cause::Cancel => "cancel",
    }
}

/// Counts what a journaled write recorded: transitions, terminal events and attempts.
pub(crate) fn journaled(workflow_type: &str, events: &[EventKind], attempts: &[NewAttempt]) {
    EventTally::of(events).record(workflow_type);
    for a in attempts {
        let outcome = a.outcome.as_str();
        counter!(ACTIVITY_ATTEMPTS, "activity" => a.activity_name.clone(), "outcome" => outcome)
            .increment(1);
        if let Some(ms) = a.duration_ms {
            histogram!(ACTIVITY_DURATION, "activity" => a.activity_name.clone(), "outcome" => outcome)
                .record(ms.max(0) as f64 / 1000.0);
        }
    }
}

/// What the metrics count of some events, taken before the events move into a write (so the
/// events themselves, with their payloads, need not be copied).
#[derive(Debug, Default)]
pub(crate) struct EventTally {
    /// Causes of `transitioned` events.
    transitions: Vec<&'static str>,
    /// The terminal status, if the events finish the workflow.
    finished: Option<&'static str>,
}

impl EventTally {
    pub(crate) fn of(events: &[EventKind]) -> Self {
        let mut tally = Self::default();
        for event in events {
            match event {
                EventKind::Transitioned { cause, .. } => tally.transitions.push(cause_label(cause)),
                EventKind::Completed { .. } => tally.finished = Some("completed"),
                EventKind::Failed { .. } => tally.finished = Some("failed"),
                EventKind::Cancelled => tally.finished = Some("cancelled"),
                _ => {}
            }
        }
        tally
    }

    fn record(&self, workflow_type: &str) {
        for cause in &self.transitions {
            counter!(TRANSITIONS, "workflow_type" => workflow_type.to_owned(), "cause" => *cause)
                .increment(1);
        }
        if let Some(status) = self.finished {
            finished(workflow_type, status);
        }
    }
}

fn finished(workflow_type: &str, status: &'static str) {
    counter!(WORKFLOWS_FINISHED, "workflow_type" => workflow_type.to_owned(), "status" => status)
        .increment(1);
}

/// Counts a created workflow and what its first write journaled.
pub(crate) fn started(workflow_type: &str, first_write: &EventTally) {
    counter!(WORKFLOWS_STARTED, "workflow_type" => workflow_type.to_owned()).increment(1);
    first_write.record(workflow_type);
}

/// Counts a claim that took over an expired lease.
pub(crate) fn lease_recovered(workflow_type: &str) {
    counter!(LEASE_RECOVERIES, "workflow_type" => workflow_type.to_owned()).increment(1);
}
