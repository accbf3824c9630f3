//! The storage boundary. The runtime talks to the journal only through [`Store`]; two backends
//! implement it: [`PgStore`] (PostgreSQL, production) and [`SqliteStore`] (one embedded file,
//! the zero-setup default). Both pass the same conformance suite (`engine/tests`).
//!
//! Contract every backend keeps:
//! - a [`StepCommit`] is one transaction, applied only if the lease owner, lease epoch and
//!   version still match (else [`StoreError::Fenced`]);
//! - events get gapless sequence numbers equal to the version they produce;
//! - a claim takes only due, unleased (or lease-expired) workflows of the given types, increments
//!   the lease epoch, reports the expired holder in `recovered_from`, and uses the database clock;
//! - an accepted signal is durable before `send_signal` returns, and signals of a workflow are
//!   ordered by their gapless `seq`;
//! - [`Store::listen`] hints are best effort; workers also poll.

mod pg_batch;
mod pg_presence;
mod postgres;
mod sqlite;

pub use pg_batch::GroupCommit;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::activity::ActivityError;
use crate::journal::{
    ActivityAttempt, Event, EventKind, FeedEvent, Pending, Status, WorkerRecord, WorkflowRecord,
};
use crate::workflow::WorkflowError;
use crate::{AttemptOutcome, WorkerId, WorkflowId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::fmt::Debug;
use std::time::Duration;

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The lease was taken over or the version moved: this writer must stop.
    #[error("commit refused: lease epoch or version no longer matches (fenced)")]
    Fenced,
    /// No workflow with that id.
    #[error("workflow {0} not found")]
    NotFound(WorkflowId),
    /// The workflow already finished.
    #[error("workflow {0} is already {1}")]
    Finished(WorkflowId, Status),
    /// A stored value could not be decoded.
    #[error("corrupt journal data: {0}")]
    Corrupt(String),
}

/// A workflow to create, with its first events.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub id: WorkflowId,
    pub workflow_type: String,
    pub key: Option<String>,
    /// The label from [`crate::Workflow::tag`].
    pub tag: Option<String>,
    pub input: serde_json::Value,
    pub status: Status,
    pub state: serde_json::Value,
    pub pending: Pending,
    pub output: Option<serde_json::Value>,
    pub error: Option<WorkflowError>,
    pub next_call_seq: i64,
    /// When a worker should first look at it; `None` = only on a signal.
    pub run_at: Option<DateTime<Utc>>,
    pub events: Vec<EventKind>,
}

/// Result of [`Store::create_workflow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub id: WorkflowId,
    /// False when a workflow with the same (type, key) already existed.
    pub created: bool,
}

/// A workflow leased to a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub record: WorkflowRecord,
    pub next_call_seq: i64,
    pub signal_seq: i64,
    pub signal_seen: i64,
    /// The previous lease holder when its lease had expired (a recovery).
    pub recovered_from: Option<WorkerId>,
    pub db_now: DateTime<Utc>,
}

/// A signal in the inbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSignal {
    pub seq: i64,
    pub name: String,
    pub payload: serde_json::Value,
}

/// An activity attempt to journal.
#[derive(Debug, Clone)]
pub struct NewAttempt {
    pub call_seq: i64,
    pub attempt: u32,
    pub activity_name: String,
    pub worker_id: Option<WorkerId>,
    pub outcome: AttemptOutcome,
    pub error: Option<ActivityError>,
    pub started_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

/// What happens to the lease after a commit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LeaseAfter {
    /// Keep it (extended by the TTL): the worker goes on driving the workflow.
    Keep,
    /// Release it; a worker should look again at `run_at` (`None`: only on a signal).
    Release { run_at: Option<DateTime<Utc>> },
}

/// One fenced transition: the new snapshot, the events, attempts and consumed signals.
#[derive(Debug, Clone)]
pub struct StepCommit {
    pub id: WorkflowId,
    pub worker: WorkerId,
    pub epoch: i64,
    pub expected_version: i64,
    pub status: Status,
    pub state: serde_json::Value,
    pub pending: Pending,
    pub output: Option<serde_json::Value>,
    pub error: Option<WorkflowError>,
    pub next_call_seq: i64,
    pub cancel_requested: bool,
    pub events: Vec<EventKind>,
    pub attempts: Vec<NewAttempt>,
    /// Signals applied or discarded by this step.
    pub consumed_signals: Vec<i64>,
    /// The newest signal seq the worker has read.
    pub signal_seen: i64,
    pub lease: LeaseAfter,
    pub lease_ttl: Duration,
    /// A new activity call was scheduled: forget the previous call's heartbeat details.
    pub clear_heartbeat: bool,
    /// Heartbeat details of the attempt that just ended which no lease renewal has persisted
    /// yet, so the next attempt resumes from the very last heartbeat. `clear_heartbeat` wins.
    pub heartbeat_details: Option<serde_json::Value>,
}

/// Result of a successful commit.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub version: i64,
    /// The newest signal seq at commit time (more than `signal_seen`: new signals arrived).
    pub signal_seq: i64,
    pub db_now: DateTime<Utc>,
}

/// A lease to renew, with heartbeat details to persist.
#[derive(Debug, Clone)]
pub struct LeaseRenewal {
    pub id: WorkflowId,
    pub epoch: i64,
    /// Details of the running attempt's last heartbeat, with the call they belong to: they are
    /// written only while that call is still the pending one.
    pub heartbeat: Option<(i64, serde_json::Value)>,
}

/// A renewed lease.
#[derive(Debug, Clone, Copy)]
pub struct Renewed {
    pub id: WorkflowId,
    /// An unapplied `cancel` signal is waiting.
    pub cancel_pending: bool,
    /// An unapplied `pause` signal is waiting.
    pub pause_pending: bool,
}

/// A worker process to register.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub id: WorkerId,
    pub host: String,
    pub pid: i32,
    pub slots: i32,
    pub lease_ttl: Duration,
    /// The backend session that watches for dead peers ([`Presence::watch_pid`]), if any.
    pub watch_pid: Option<i32>,
}

/// A worker process's presence in the database, held for as long as this value lives; when
/// the process dies the database notices at once, and a peer's [`Presence::next_death`]
/// reports it, so its workflows move without waiting for their leases to expire.
#[async_trait]
pub trait Presence: Send + Debug {
    /// The id of the session whose wait a joining worker interrupts (recorded in the registry).
    fn watch_pid(&self) -> Option<i32>;
    /// Waits for a watched worker to die, reaps it (marks it stopped and expires its leases so
    /// other workers claim its workflows now, with a wake-up hint) and returns it with how many
    /// workflows it held; `None` when the wait ended without a death (periodic recheck, a
    /// worker joined, a false alarm); call again.
    ///
    /// # Errors
    /// When a presence session failed: drop this presence and acquire a new one.
    async fn next_death(&mut self) -> Result<Option<(WorkerId, u64)>, StoreError>;
}

/// Filters of [`Store::list_workflows`] and [`Store::count_workflows`]; newest first, `cursor`
/// is the last id of the previous page. Every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub workflow_type: Option<String>,
    /// Exactly this [`crate::Workflow::tag`].
    pub tag: Option<String>,
    /// Created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before this time.
    pub created_before: Option<DateTime<Utc>>,
    pub search: Option<Search>,
    pub limit: i64,
    pub cursor: Option<WorkflowId>,
}

/// An access token of the admin API as stored: its SHA-256 only, never the token. Valid while
/// `revoked_at` is `None`; names are unique among valid tokens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessToken {
    pub id: uuid::Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Figures read at metrics scrape time (by the database clock).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreGauges {
    /// Workflows due now that no live lease holds (waiting for a free slot or a worker).
    pub due_unclaimed: i64,
    /// How long the oldest of them has been due, in seconds (0 when none).
    pub oldest_due_seconds: f64,
    /// Registered workers whose heartbeat is younger than their lease TTL.
    pub live_workers: i64,
}

/// Versions of the embedded migrations `migrator` holds that are not in `applied`.
fn pending_versions(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> Vec<i64> {
    migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect()
}

/// A search over keys and ids: a workflow matches when its key contains the text (ASCII letters
/// compared case-insensitively) or its id starts with it (hex digits; hyphens ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// The text, lowercased, matched as a substring of the lowercased key.
    pub(crate) text: String,
    /// The ids starting with the text, when it is a hex prefix: `lo..=hi`.
    pub(crate) id_range: Option<(WorkflowId, WorkflowId)>,
}

impl Search {
    /// A search for `text` (non-empty; the caller bounds its length).
    pub fn new(text: &str) -> Self {
        let hex: String = text.chars().filter(|c| *c != '-').collect();
        let id_range =
            (!hex.is_empty() && hex.len() <= 32 && hex.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| {
                    let pad = |fill: char| {
                        let full: String = hex
                            .chars()
                            .chain(std::iter::repeat(fill))
                            .take(32)
                            .collect();
                        u128::from_str_radix(&full, 16)
                            .map(|n| WorkflowId(uuid::Uuid::from_u128(n)))
                            .ok()
                    };
                    pad('0').zip(pad('f'))
                })
                .flatten();
        Self {
            text: text.to_ascii_lowercase(),
            id_range,
        }
    }
}

/// How many workflows have each status.
pub type StatusCounts = Vec<(Status, i64)>;

/// A read of the event feed: events with `after < gid <= upto`, oldest first.
#[derive(Debug, Clone, Default)]
pub struct FeedQuery {
    pub after: i64,
    /// No upper bound when `None`.
    pub upto: Option<i64>,
    /// Only this workflow's events.
    pub workflow: Option<WorkflowId>,
    pub limit: i64,
}

/// Events read from the feed with what the reader needs to know about transactions in flight.
#[derive(Debug, Clone, Default)]
pub struct FeedRead {
    pub events: Vec<FeedEvent>,
    /// The ids of the transactions in flight at the read's snapshot (sorted), on backends where a
    /// smaller `gid` can become visible after a larger one (PostgreSQL); `None` where ids become
    /// visible in order (SQLite), so a gap is permanent.
    pub in_flight: Option<Vec<u64>>,
}

/// The end of the feed: the largest visible `gid` and the transactions in flight (as in
/// [`FeedRead`]).
#[derive(Debug, Clone, Default)]
pub struct FeedHead {
    pub max_gid: i64,
    pub in_flight: Option<Vec<u64>>,
}

/// A wake-up hint; never the only trigger (notifications can be lost on reconnect).
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    /// New work may be due.
    Work,
    /// A signal was sent to a workflow.
    Signal { id: WorkflowId, name: String },
    /// The listener reconnected; hints may have been missed.
    Reconnected,
}

/// A stream of wake-up hints.
#[async_trait]
pub trait WakeListener: Send {
    /// The next hint.
    ///
    /// # Errors
    /// When the connection fails and cannot be re-established right now.
    async fn recv(&mut self) -> Result<Wake, StoreError>;
}

/// The journal, as the runtime sees it.
#[async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Creates a workflow, or returns the existing one with the same (type, key).
    async fn create_workflow(&self, new: NewWorkflow) -> Result<Created, StoreError>;
    /// Creates a workflow already leased to `worker` (a worker in the creating process with a
    /// free slot), in the same single write and without a wake-up hint: the claim and the
    /// notification hop are saved. Returns the lease as a claim when the row was created;
    /// a backend may decline (the default) and create it unleased, for any worker to claim.
    async fn create_workflow_leased(
        &self,
        new: NewWorkflow,
        _worker: WorkerId,
        _lease_ttl: Duration,
    ) -> Result<(Created, Option<Claimed>), StoreError> {
        Ok((self.create_workflow(new).await?, None))
    }
    async fn get_workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>, StoreError>;
    async fn list_workflows(&self, filter: &ListFilter) -> Result<Vec<WorkflowRecord>, StoreError>;
    /// Workflows per status matching `filter` (its `status`, `cursor` and `limit` are ignored);
    /// statuses without workflows are left out.
    async fn count_workflows(&self, filter: &ListFilter) -> Result<StatusCounts, StoreError>;
    /// Events of the global feed (see [`FeedRead`]); readers use [`crate::EventFeed`].
    async fn read_feed(&self, query: &FeedQuery) -> Result<FeedRead, StoreError>;
    /// The end of the global feed.
    async fn feed_head(&self) -> Result<FeedHead, StoreError>;
    /// Events with seq greater than `after_seq`, oldest first, at most `limit`.
    async fn history(
        &self,
        id: WorkflowId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError>;
    async fn attempts(&self, id: WorkflowId) -> Result<Vec<ActivityAttempt>, StoreError>;
    /// Appends a signal to the inbox and wakes the workflow; returns the signal's seq.
    async fn send_signal(
        &self,
        id: WorkflowId,
        name: &str,
        payload: &serde_json::Value,
    ) -> Result<i64, StoreError>;
    /// Leases up to `limit` due workflows of the given types to `worker` (a worker claims only
    /// what its registry can run).
    async fn claim(
        &self,
        worker: WorkerId,
        workflow_types: &[String],
        limit: usize,
        lease_ttl: Duration,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Unconsumed signals of a workflow, in order.
    async fn unconsumed_signals(&self, id: WorkflowId) -> Result<Vec<StoredSignal>, StoreError>;
    /// Applies one fenced transition.
    async fn commit(&self, commit: StepCommit) -> Result<Committed, StoreError>;
    /// Extends the leases `worker` still holds; returns those it still holds.
    async fn renew_leases(
        &self,
        worker: WorkerId,
        lease_ttl: Duration,
        leases: &[LeaseRenewal],
    ) -> Result<Vec<Renewed>, StoreError>;
    /// Gives leases back without a transition (shutdown), so other workers resume at once.
    async fn release_leases(
        &self,
        worker: WorkerId,
        leases: &[(WorkflowId, i64)],
    ) -> Result<(), StoreError>;
    /// Registers a worker, or re-registers it (clears `stopped_at`) after its presence was
    /// re-acquired.
    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError>;
    /// Takes `worker`'s presence; call before [`Store::register_worker`]. `None` when the backend
    /// cannot tell a dead process from a live one (then leases alone find dead workers).
    async fn presence(&self, _worker: WorkerId) -> Result<Option<Box<dyn Presence>>, StoreError> {
        Ok(None)
    }
    async fn worker_heartbeat(&self, worker: WorkerId, slots_used: i32) -> Result<(), StoreError>;
    async fn worker_stopped(&self, worker: WorkerId) -> Result<(), StoreError>;
    async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError>;
    /// Subscribes to wake-up hints.
    async fn listen(&self) -> Result<Box<dyn WakeListener>, StoreError>;

    /// Versions of this build's migrations that the database lacks (all of them on a database
    /// never migrated). Reads only; for readiness checks.
    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError>;
    /// Backlog and live workers, for metrics.
    async fn gauges(&self) -> Result<StoreGauges, StoreError>;

    /// Stores a new access token by its hash; `None` when a valid token already has `name`.
    async fn create_access_token(
        &self,
        id: uuid::Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<Option<AccessToken>, StoreError>;
    /// In one transaction: revokes the valid token named `name` unless it has this hash, and
    /// stores this hash under `name` unless it is stored already (then returns that row, which
    /// may be revoked). Safe when several processes do it at once.
    async fn replace_access_token(
        &self,
        id: uuid::Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<AccessToken, StoreError>;
    /// Every token, valid and revoked, oldest first.
    async fn access_tokens(&self) -> Result<Vec<AccessToken>, StoreError>;
    /// The token with this hash, valid or revoked.
    async fn find_access_token(&self, token_hash: &str) -> Result<Option<AccessToken>, StoreError>;
    /// Revokes the token with this id (a UUID) or the valid token with this name; returns it
    /// (`None`: no such token). Revoking a revoked token keeps its first `revoked_at`.
    async fn revoke_access_token(
        &self,
        id_or_name: &str,
    ) -> Result<Option<AccessToken>, StoreError>;
}
