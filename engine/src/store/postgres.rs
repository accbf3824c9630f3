//! The PostgreSQL journal: the production backend.

use super::pg_batch::{self, BatchQueue, CommitQueue, GroupCommit};
use super::pg_presence::PgPresence;
use super::{
    AccessToken, Claimed, Committed, Created, FeedHead, FeedQuery, FeedRead, LeaseAfter,
    LeaseRenewal, ListFilter, NewWorkflow, Presence, Renewed, StatusCounts, StepCommit, Store,
    StoreError, StoreGauges, StoredSignal, Wake, WakeListener, WorkerInfo,
};
use crate::activity::ActivityError;
use crate::journal::{
    ActivityAttempt, Event, EventKind, FeedEvent, Pending, Status, WorkerRecord, WorkflowRecord,
};
use crate::workflow::WorkflowError;
use crate::{WorkerId, WorkflowId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Channel for "a signal was sent" hints; payload `"<workflow id> <signal name>"`.
const SIGNAL_CHANNEL: &str = "kodomasu_signal";
/// Channel for "new work is due" hints.
const WAKE_CHANNEL: &str = "kodomasu_wake";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The journal on PostgreSQL, in schema `kodomasu`.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Step commits of this process's workers, grouped into batches under load.
    commits: Arc<CommitQueue>,
    /// Workflow creations, grouped the same way.
    creations: Arc<BatchQueue<CreateRequest, CreateAnswer>>,
}

/// A workflow to create and, for a local start, the worker and TTL of its lease.
type CreateRequest = (NewWorkflow, Option<(WorkerId, Duration)>);
/// What a creation answers: the id, and the lease as a claim when it was created leased.
type CreateAnswer = Result<(Created, Option<Claimed>), StoreError>;

impl PgStore {
    /// A store over an existing pool, with the default [`GroupCommit`].
    pub fn new(pool: PgPool) -> Self {
        Self::with_group_commit(pool, GroupCommit::default())
    }

    /// A store over an existing pool whose step commits are grouped as `group` says
    /// (`max_in_flight: 1, max_batch: 1` sends every commit alone, one after another).
    pub fn with_group_commit(pool: PgPool, group: GroupCommit) -> Self {
        Self {
            pool,
            commits: Arc::new(CommitQueue::new(group)),
            creations: Arc::new(BatchQueue::new(group)),
        }
    }

    /// Pool options for the engine's connections. sqlx's default `test_before_acquire(true)`
    /// pings every connection on checkout: one extra round trip before each statement, when
    /// each engine write is one statement. It is off here. A connection that died while idle
    /// in the pool (database restart, `pg_terminate_backend`) then fails its next statement
    /// instead, and sqlx drops it from the pool; every caller already treats a database error
    /// as transient (a worker retries its commit, fenced if the first try did commit; claims,
    /// renewals and heartbeats run again on their next tick; an HTTP call returns 503).
    pub fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new().test_before_acquire(false)
    }

    /// The underlying pool (for tests and tools that read the journal directly).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One statement (its own transaction, one round trip): the row, its first events and,
    /// unless it is created leased to a local worker, the wake-up hint; events, hint and lease
    /// only if the row was inserted.
    async fn insert_workflow(
        &self,
        new: NewWorkflow,
        lease: Option<(WorkerId, Duration)>,
    ) -> Result<(Created, Option<Claimed>), StoreError> {
        let seqs: Vec<i64> = (1..=new.events.len() as i64).collect();
        let kinds: Vec<&str> = new.events.iter().map(EventKind::name).collect();
        let payloads: Vec<Json<&EventKind>> = new.events.iter().map(Json).collect();
        let row = sqlx::query(
            "with created as (
                insert into kodomasu.workflows
                  (id, workflow_type, key, status, input, state, pending, output, error, version, next_call_seq,
                   run_at, finished_at, lease_owner, lease_epoch, lease_expires_at, tag)
                values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                        case when $13 then now() end,
                        $18, case when $18::uuid is null then 0 else 1 end,
                        case when $18::uuid is not null then now() + make_interval(secs => $19) end,
                        $20)
                on conflict (workflow_type, key) do nothing
                returning *
             ),
             first_events as (
                insert into kodomasu.events (workflow_id, seq, kind, payload)
                select created.id, e.s, e.k, e.p
                from created, unnest($14::bigint[], $15::text[], $16::jsonb[]) as e(s, k, p)
             ),
             woken as (
                select pg_notify($17, '') from created
                where $12::timestamptz is not null and $18::uuid is null
             )
             select created.*, now() as db_now from created where (select count(*) from woken) >= 0",
        )
        .bind(new.id)
        .bind(&new.workflow_type)
        .bind(&new.key)
        .bind(new.status.as_str())
        .bind(&new.input)
        .bind(&new.state)
        .bind(Json(&new.pending))
        .bind(&new.output)
        .bind(new.error.as_ref().map(Json))
        .bind(new.events.len() as i64)
        .bind(new.next_call_seq)
        .bind(new.run_at)
        .bind(new.status.is_terminal())
        .bind(&seqs)
        .bind(&kinds)
        .bind(&payloads)
        .bind(WAKE_CHANNEL)
        .bind(lease.map(|(worker, _)| worker))
        .bind(lease.map_or(0.0, |(_, ttl)| ttl.as_secs_f64()))
        .bind(&new.tag)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            let created = Created {
                id: row.try_get("id")?,
                created: true,
            };
            let claimed = lease.map(|_| created_lease(&row)).transpose()?;
            return Ok((created, claimed));
        }
        // (type, key) taken: the existing workflow, read in a new snapshot so a concurrent
        // creator's row (which made the insert a no-op) is visible.
        let id: WorkflowId = sqlx::query_scalar(
            "select id from kodomasu.workflows where workflow_type = $1 and key = $2",
        )
        .bind(&new.workflow_type)
        .bind(&new.key)
        .fetch_one(&self.pool)
        .await?;
        Ok((Created { id, created: false }, None))
    }

    /// One step commit alone: one statement, its own transaction.
    async fn commit_one(&self, c: StepCommit) -> Result<Committed, StoreError> {
        let new_version = c.expected_version + c.events.len() as i64;
        let (release, run_at) = match c.lease {
            LeaseAfter::Keep => (false, None),
            LeaseAfter::Release { run_at } => (true, run_at),
        };
        let (seqs, kinds, payloads) = event_columns(c.expected_version + 1, &c.events);
        let a_call_seq: Vec<i64> = c.attempts.iter().map(|a| a.call_seq).collect();
        let a_attempt: Vec<i32> = c.attempts.iter().map(|a| a.attempt as i32).collect();
        let a_name: Vec<&str> = c
            .attempts
            .iter()
            .map(|a| a.activity_name.as_str())
            .collect();
        let a_worker: Vec<Option<Uuid>> = c
            .attempts
            .iter()
            .map(|a| a.worker_id.map(|w| w.0))
            .collect();
        let a_outcome: Vec<&str> = c.attempts.iter().map(|a| a.outcome.as_str()).collect();
        let a_error: Vec<Option<Json<&ActivityError>>> = c
            .attempts
            .iter()
            .map(|a| a.error.as_ref().map(Json))
            .collect();
        let a_started: Vec<Option<DateTime<Utc>>> =
            c.attempts.iter().map(|a| a.started_at).collect();
        let a_duration: Vec<Option<i64>> = c.attempts.iter().map(|a| a.duration_ms).collect();
        // One statement, so one round trip and its own transaction (no BEGIN/COMMIT).
        // The fence (`fenced`): nothing is written unless this worker still holds the lease at
        // this epoch and nobody else moved the version; every other part joins on its result,
        // so a fenced commit writes nothing and returns no row. While the lease is kept,
        // `run_at` keeps its value so a workflow recovered after a crash keeps its place in
        // the queue. Events get seq = expected_version + 1.. (gapless, = the version produced).
        // The row is found by its primary key alone: the lease owner is compared with
        // `is not distinct from`, which no index serves. With `=`, a generic plan made while the
        // table was small (a new database) may look the row up through `workflows_lease_owner`
        // and then walk every entry this worker ever left there: dead versions included, 1500
        // buffers a step after 3000 workflows (docs/benchmarks.md, change 10).
        let row = sqlx::query(
            "with fenced as (
                update kodomasu.workflows set
                    status = $5, state = $6, pending = $7, output = $8, error = $9, version = $10,
                    next_call_seq = $11, cancel_requested = $12,
                    signal_seen = $13, signals_unconsumed = signals_unconsumed - $14,
                    lease_owner = case when $15 then null else lease_owner end,
                    lease_expires_at = case when $15 then null else now() + make_interval(secs => $16) end,
                    run_at = case when not $15 then coalesce(run_at, now())
                                  when signal_seq > $13 then now()
                                  else $17 end,
                    heartbeat_details = case when $18 then null else coalesce($20, heartbeat_details) end,
                    heartbeat_at = case when $18 then null
                                        when $20::jsonb is not null then now()
                                        else heartbeat_at end,
                    finished_at = case when $19 then coalesce(finished_at, now()) end,
                    updated_at = now()
                where id = $1 and lease_owner is not distinct from $2 and lease_epoch = $3 and version = $4
                returning id, signal_seq, now() as db_now
             ),
             new_events as (
                insert into kodomasu.events (workflow_id, seq, kind, payload)
                select fenced.id, e.s, e.k, e.p
                from fenced, unnest($21::bigint[], $22::text[], $23::jsonb[]) as e(s, k, p)
             ),
             new_attempts as (
                insert into kodomasu.activity_attempts
                  (workflow_id, call_seq, attempt, activity_name, worker_id, outcome, error, started_at, duration_ms)
                select fenced.id, a.call_seq, a.attempt, a.activity_name, a.worker_id, a.outcome, a.error,
                       a.started_at, a.duration_ms
                from fenced, unnest($24::bigint[], $25::integer[], $26::text[], $27::uuid[], $28::text[],
                                    $29::jsonb[], $30::timestamptz[], $31::bigint[])
                     as a(call_seq, attempt, activity_name, worker_id, outcome, error, started_at, duration_ms)
             ),
             consumed as (
                update kodomasu.signals s set consumed_at = now(), consumed_in = $10
                from fenced
                where s.workflow_id = fenced.id and s.seq = any($32) and s.consumed_at is null
             )
             select signal_seq, db_now from fenced",
        )
        .bind(c.id)
        .bind(c.worker)
        .bind(c.epoch)
        .bind(c.expected_version)
        .bind(c.status.as_str())
        .bind(&c.state)
        .bind(Json(&c.pending))
        .bind(&c.output)
        .bind(c.error.as_ref().map(Json))
        .bind(new_version)
        .bind(c.next_call_seq)
        .bind(c.cancel_requested)
        .bind(c.signal_seen)
        .bind(c.consumed_signals.len() as i64)
        .bind(release)
        .bind(c.lease_ttl.as_secs_f64())
        .bind(run_at)
        .bind(c.clear_heartbeat)
        .bind(c.status.is_terminal())
        .bind(&c.heartbeat_details)
        .bind(&seqs)
        .bind(&kinds)
        .bind(&payloads)
        .bind(&a_call_seq)
        .bind(&a_attempt)
        .bind(&a_name)
        .bind(&a_worker)
        .bind(&a_outcome)
        .bind(&a_error)
        .bind(&a_started)
        .bind(&a_duration)
        .bind(&c.consumed_signals)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::Fenced);
        };
        Ok(Committed {
            version: new_version,
            signal_seq: row.try_get("signal_seq")?,
            db_now: row.try_get("db_now")?,
        })
    }

    /// [`Self::create_batch`] on a clone of this store, for a batch's own task.
    fn create_batch_owned(
        &self,
        batch: Vec<CreateRequest>,
    ) -> impl Future<Output = Vec<CreateAnswer>> + Send + 'static {
        let store = self.clone();
        async move { store.create_batch(batch).await }
    }

    /// Several workflow creations in one statement and one transaction (see [`GroupCommit`]);
    /// one answer per creation, in order. A creation whose (type, key) was taken, and every
    /// creation of a batch the database refuses as a whole, is done again on its own, which
    /// reads the existing workflow or reports its own error.
    async fn create_batch(&self, mut batch: Vec<CreateRequest>) -> Vec<CreateAnswer> {
        if batch.len() == 1 {
            return match batch.pop() {
                Some((new, lease)) => vec![self.insert_workflow(new, lease).await],
                None => Vec::new(),
            };
        }
        let mut answers = match self.create_together(&batch).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::debug!(error.message = %e, creations = batch.len(), "batched creation failed; creating one at a time");
                batch.iter().map(|_| None).collect()
            }
        };
        let mut out = Vec::with_capacity(batch.len());
        for ((new, lease), answer) in batch.into_iter().zip(answers.iter_mut()) {
            out.push(match answer.take() {
                Some(done) => Ok(done),
                None => self.insert_workflow(new, lease).await,
            });
        }
        out
    }

    /// The creations that inserted their row, by position; `None` where the (type, key) was
    /// taken.
    async fn create_together(
        &self,
        batch: &[CreateRequest],
    ) -> Result<Vec<Option<(Created, Option<Claimed>)>>, StoreError> {
        let n = batch.len();
        let mut c = CreateColumns::default();
        for (new, lease) in batch {
            c.id.push(new.id.0);
            c.workflow_type.push(new.workflow_type.as_str());
            c.key.push(new.key.as_deref());
            c.tag.push(new.tag.as_deref());
            c.status.push(new.status.as_str());
            c.input.push(&new.input);
            c.state.push(&new.state);
            c.pending.push(Json(&new.pending));
            c.output.push(new.output.as_ref());
            c.error.push(new.error.as_ref().map(Json));
            c.version.push(new.events.len() as i64);
            c.next_call_seq.push(new.next_call_seq);
            c.run_at.push(new.run_at);
            c.terminal.push(new.status.is_terminal());
            c.lease_owner.push(lease.map(|(worker, _)| worker.0));
            c.ttl.push(lease.map_or(0.0, |(_, ttl)| ttl.as_secs_f64()));
            for (i, e) in new.events.iter().enumerate() {
                c.e_id.push(new.id.0);
                c.e_seq.push(1 + i as i64);
                c.e_kind.push(e.name());
                c.e_payload.push(Json(e));
            }
        }
        // The same statement as `insert_workflow`, over rows; one wake-up hint for the rows
        // created unleased and due.
        let rows = sqlx::query(
            "with created as (
                insert into kodomasu.workflows
                  (id, workflow_type, key, status, input, state, pending, output, error, version, next_call_seq,
                   run_at, finished_at, lease_owner, lease_epoch, lease_expires_at, tag)
                select i.id, i.workflow_type, i.key, i.status, i.input, i.state, i.pending, i.output, i.error,
                       i.version, i.next_call_seq, i.run_at,
                       case when i.terminal then now() end,
                       i.lease_owner, case when i.lease_owner is null then 0 else 1 end,
                       case when i.lease_owner is not null then now() + make_interval(secs => i.ttl) end,
                       i.tag
                from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[],
                            $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::bigint[], $12::bigint[],
                            $13::timestamptz[], $14::boolean[], $15::uuid[], $16::float8[])
                     as i(id, workflow_type, key, tag, status, input, state, pending, output, error, version,
                          next_call_seq, run_at, terminal, lease_owner, ttl)
                -- Keys in one order in every batch, so two batches never wait on each other's
                -- keys in a cycle.
                order by i.workflow_type, i.key
                on conflict (workflow_type, key) do nothing
                returning *
             ),
             first_events as (
                insert into kodomasu.events (workflow_id, seq, kind, payload)
                select created.id, e.s, e.k, e.p
                from unnest($17::uuid[], $18::bigint[], $19::text[], $20::jsonb[]) as e(id, s, k, p)
                join created on created.id = e.id
             ),
             woken as (
                select pg_notify($21, '')
                where exists (select 1 from created where run_at is not null and lease_owner is null)
             )
             select created.*, now() as db_now from created where (select count(*) from woken) >= 0",
        )
        .bind(&c.id)
        .bind(&c.workflow_type)
        .bind(&c.key)
        .bind(&c.tag)
        .bind(&c.status)
        .bind(&c.input)
        .bind(&c.state)
        .bind(&c.pending)
        .bind(&c.output)
        .bind(&c.error)
        .bind(&c.version)
        .bind(&c.next_call_seq)
        .bind(&c.run_at)
        .bind(&c.terminal)
        .bind(&c.lease_owner)
        .bind(&c.ttl)
        .bind(&c.e_id)
        .bind(&c.e_seq)
        .bind(&c.e_kind)
        .bind(&c.e_payload)
        .bind(WAKE_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        let position: std::collections::HashMap<Uuid, usize> =
            c.id.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut answers: Vec<Option<(Created, Option<Claimed>)>> = (0..n).map(|_| None).collect();
        for row in rows {
            let id: WorkflowId = row.try_get("id")?;
            let Some(&i) = position.get(&id.0) else {
                return Err(StoreError::Corrupt(format!(
                    "batched creation answered for {id}"
                )));
            };
            let claimed = batch[i].1.map(|_| created_lease(&row)).transpose()?;
            answers[i] = Some((Created { id, created: true }, claimed));
        }
        Ok(answers)
    }

    /// Several step commits in one statement and one transaction, each under its own fence
    /// (see [`GroupCommit`]); one answer per commit, in order. A batch the database refuses as
    /// a whole is sent again one commit at a time, so one bad commit cannot fail the others.
    async fn commit_batch(&self, mut batch: Vec<StepCommit>) -> Vec<Result<Committed, StoreError>> {
        if batch.len() == 1 {
            return match batch.pop() {
                Some(c) => vec![self.commit_one(c).await],
                None => Vec::new(),
            };
        }
        match self.commit_together(&batch).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::debug!(error.message = %e, commits = batch.len(), "batched commit failed; committing one at a time");
                let mut answers = Vec::with_capacity(batch.len());
                for c in batch {
                    answers.push(self.commit_one(c).await);
                }
                answers
            }
        }
    }

    async fn commit_together(
        &self,
        batch: &[StepCommit],
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let n = batch.len();
        let mut w = BatchColumns::default();
        // Rows go in (and are locked) in id order, as lease renewals lock them, so two writers
        // never wait on each other in a cycle; `ord` keeps each commit's place for its answer.
        let mut by_id: Vec<usize> = (0..n).collect();
        by_id.sort_by_key(|&i| batch[i].id.0);
        for i in by_id {
            let c = &batch[i];
            let ord = i as i32;
            let (release, run_at) = match c.lease {
                LeaseAfter::Keep => (false, None),
                LeaseAfter::Release { run_at } => (true, run_at),
            };
            w.ord.push(ord);
            w.id.push(c.id.0);
            w.worker.push(c.worker.0);
            w.epoch.push(c.epoch);
            w.expected.push(c.expected_version);
            w.status.push(c.status.as_str());
            w.state.push(&c.state);
            w.pending.push(Json(&c.pending));
            w.output.push(c.output.as_ref());
            w.error.push(c.error.as_ref().map(Json));
            w.new_version
                .push(c.expected_version + c.events.len() as i64);
            w.next_call_seq.push(c.next_call_seq);
            w.cancel_requested.push(c.cancel_requested);
            w.signal_seen.push(c.signal_seen);
            w.consumed.push(c.consumed_signals.len() as i64);
            w.release.push(release);
            w.ttl.push(c.lease_ttl.as_secs_f64());
            w.run_at.push(run_at);
            w.clear_hb.push(c.clear_heartbeat);
            w.terminal.push(c.status.is_terminal());
            w.hb.push(c.heartbeat_details.as_ref());
            for (i, e) in c.events.iter().enumerate() {
                w.e_ord.push(ord);
                w.e_seq.push(c.expected_version + 1 + i as i64);
                w.e_kind.push(e.name());
                w.e_payload.push(Json(e));
            }
            for a in &c.attempts {
                w.a_ord.push(ord);
                w.a_call_seq.push(a.call_seq);
                w.a_attempt.push(a.attempt as i32);
                w.a_name.push(a.activity_name.as_str());
                w.a_worker.push(a.worker_id.map(|x| x.0));
                w.a_outcome.push(a.outcome.as_str());
                w.a_error.push(a.error.as_ref().map(Json));
                w.a_started.push(a.started_at);
                w.a_duration.push(a.duration_ms);
            }
            for seq in &c.consumed_signals {
                w.s_ord.push(ord);
                w.s_seq.push(*seq);
            }
        }
        // The same statement as `commit_one`, over rows: `fenced` holds the commits whose
        // fence held (by their position `ord`), and every other part joins on it by `ord`, so
        // a fenced commit writes nothing while the rest of the batch commits.
        let rows = sqlx::query(
            "with input as (
                select * from unnest($1::integer[], $2::uuid[], $3::uuid[], $4::bigint[], $5::bigint[],
                                     $6::text[], $7::jsonb[], $8::jsonb[], $9::jsonb[], $10::jsonb[],
                                     $11::bigint[], $12::bigint[], $13::boolean[], $14::bigint[], $15::bigint[],
                                     $16::boolean[], $17::float8[], $18::timestamptz[], $19::boolean[],
                                     $20::boolean[], $21::jsonb[])
                  as i(ord, id, worker, epoch, expected_version, status, state, pending, output, error,
                       new_version, next_call_seq, cancel_requested, signal_seen, consumed,
                       release, ttl, run_at, clear_hb, terminal, hb)
             ),
             fenced as (
                update kodomasu.workflows w set
                    status = i.status, state = i.state, pending = i.pending, output = i.output,
                    error = i.error, version = i.new_version,
                    next_call_seq = i.next_call_seq, cancel_requested = i.cancel_requested,
                    signal_seen = i.signal_seen, signals_unconsumed = w.signals_unconsumed - i.consumed,
                    lease_owner = case when i.release then null else w.lease_owner end,
                    lease_expires_at = case when i.release then null else now() + make_interval(secs => i.ttl) end,
                    run_at = case when not i.release then coalesce(w.run_at, now())
                                  when w.signal_seq > i.signal_seen then now()
                                  else i.run_at end,
                    heartbeat_details = case when i.clear_hb then null else coalesce(i.hb, w.heartbeat_details) end,
                    heartbeat_at = case when i.clear_hb then null
                                        when i.hb is not null then now()
                                        else w.heartbeat_at end,
                    finished_at = case when i.terminal then coalesce(w.finished_at, now()) end,
                    updated_at = now()
                from input i
                where w.id = i.id and w.lease_owner is not distinct from i.worker
                  and w.lease_epoch = i.epoch and w.version = i.expected_version
                returning i.ord, w.id, i.new_version, w.signal_seq
             ),
             new_events as (
                insert into kodomasu.events (workflow_id, seq, kind, payload)
                select f.id, e.s, e.k, e.p
                from unnest($22::integer[], $23::bigint[], $24::text[], $25::jsonb[]) as e(ord, s, k, p)
                join fenced f on f.ord = e.ord
             ),
             new_attempts as (
                insert into kodomasu.activity_attempts
                  (workflow_id, call_seq, attempt, activity_name, worker_id, outcome, error, started_at, duration_ms)
                select f.id, a.call_seq, a.attempt, a.activity_name, a.worker_id, a.outcome, a.error,
                       a.started_at, a.duration_ms
                from unnest($26::integer[], $27::bigint[], $28::integer[], $29::text[], $30::uuid[], $31::text[],
                            $32::jsonb[], $33::timestamptz[], $34::bigint[])
                     as a(ord, call_seq, attempt, activity_name, worker_id, outcome, error, started_at, duration_ms)
                join fenced f on f.ord = a.ord
             ),
             consumed as (
                update kodomasu.signals s set consumed_at = now(), consumed_in = f.new_version
                from unnest($35::integer[], $36::bigint[]) as c(ord, seq)
                join fenced f on f.ord = c.ord
                where s.workflow_id = f.id and s.seq = c.seq and s.consumed_at is null
             )
             select ord, new_version, signal_seq, now() as db_now from fenced",
        )
        .bind(&w.ord)
        .bind(&w.id)
        .bind(&w.worker)
        .bind(&w.epoch)
        .bind(&w.expected)
        .bind(&w.status)
        .bind(&w.state)
        .bind(&w.pending)
        .bind(&w.output)
        .bind(&w.error)
        .bind(&w.new_version)
        .bind(&w.next_call_seq)
        .bind(&w.cancel_requested)
        .bind(&w.signal_seen)
        .bind(&w.consumed)
        .bind(&w.release)
        .bind(&w.ttl)
        .bind(&w.run_at)
        .bind(&w.clear_hb)
        .bind(&w.terminal)
        .bind(&w.hb)
        .bind(&w.e_ord)
        .bind(&w.e_seq)
        .bind(&w.e_kind)
        .bind(&w.e_payload)
        .bind(&w.a_ord)
        .bind(&w.a_call_seq)
        .bind(&w.a_attempt)
        .bind(&w.a_name)
        .bind(&w.a_worker)
        .bind(&w.a_outcome)
        .bind(&w.a_error)
        .bind(&w.a_started)
        .bind(&w.a_duration)
        .bind(&w.s_ord)
        .bind(&w.s_seq)
        .fetch_all(&self.pool)
        .await?;
        let mut answers: Vec<Result<Committed, StoreError>> =
            (0..n).map(|_| Err(StoreError::Fenced)).collect();
        for row in rows {
            let ord: i32 = row.try_get("ord")?;
            let Some(slot) = usize::try_from(ord).ok().and_then(|i| answers.get_mut(i)) else {
                return Err(StoreError::Corrupt(format!(
                    "batched commit answered for position {ord}"
                )));
            };
            *slot = Ok(Committed {
                version: row.try_get("new_version")?,
                signal_seq: row.try_get("signal_seq")?,
                db_now: row.try_get("db_now")?,
            });
        }
        Ok(answers)
    }
}

/// The parameter arrays of a batched creation: one entry per workflow, one per first event.
#[derive(Default)]
struct CreateColumns<'a> {
    id: Vec<Uuid>,
    workflow_type: Vec<&'a str>,
    key: Vec<Option<&'a str>>,
    tag: Vec<Option<&'a str>>,
    status: Vec<&'a str>,
    input: Vec<&'a serde_json::Value>,
    state: Vec<&'a serde_json::Value>,
    pending: Vec<Json<&'a Pending>>,
    output: Vec<Option<&'a serde_json::Value>>,
    error: Vec<Option<Json<&'a WorkflowError>>>,
    version: Vec<i64>,
    next_call_seq: Vec<i64>,
    run_at: Vec<Option<DateTime<Utc>>>,
    terminal: Vec<bool>,
    lease_owner: Vec<Option<Uuid>>,
    ttl: Vec<f64>,
    e_id: Vec<Uuid>,
    e_seq: Vec<i64>,
    e_kind: Vec<&'a str>,
    e_payload: Vec<Json<&'a EventKind>>,
}

/// The parameter arrays of a batched step commit: one entry per commit (`ord` = its position),
/// and one per event, attempt and consumed signal, each tagged with its commit's `ord`.
#[derive(Default)]
struct BatchColumns<'a> {
    ord: Vec<i32>,
    id: Vec<Uuid>,
    worker: Vec<Uuid>,
    epoch: Vec<i64>,
    expected: Vec<i64>,
    status: Vec<&'a str>,
    state: Vec<&'a serde_json::Value>,
    pending: Vec<Json<&'a Pending>>,
    output: Vec<Option<&'a serde_json::Value>>,
    error: Vec<Option<Json<&'a WorkflowError>>>,
    new_version: Vec<i64>,
    next_call_seq: Vec<i64>,
    cancel_requested: Vec<bool>,
    signal_seen: Vec<i64>,
    consumed: Vec<i64>,
    release: Vec<bool>,
    ttl: Vec<f64>,
    run_at: Vec<Option<DateTime<Utc>>>,
    clear_hb: Vec<bool>,
    terminal: Vec<bool>,
    hb: Vec<Option<&'a serde_json::Value>>,
    e_ord: Vec<i32>,
    e_seq: Vec<i64>,
    e_kind: Vec<&'a str>,
    e_payload: Vec<Json<&'a EventKind>>,
    a_ord: Vec<i32>,
    a_call_seq: Vec<i64>,
    a_attempt: Vec<i32>,
    a_name: Vec<&'a str>,
    a_worker: Vec<Option<Uuid>>,
    a_outcome: Vec<&'a str>,
    a_error: Vec<Option<Json<&'a ActivityError>>>,
    a_started: Vec<Option<DateTime<Utc>>>,
    a_duration: Vec<Option<i64>>,
    s_ord: Vec<i32>,
    s_seq: Vec<i64>,
}

/// The lease of a workflow created leased to a local worker, from its inserted row (with
/// `db_now`), as a claim would have returned it.
fn created_lease(row: &PgRow) -> Result<Claimed, StoreError> {
    Ok(Claimed {
        record: record(row)?,
        next_call_seq: row.try_get("next_call_seq")?,
        signal_seq: row.try_get("signal_seq")?,
        signal_seen: row.try_get("signal_seen")?,
        recovered_from: None,
        db_now: row.try_get("db_now")?,
    })
}

fn json<T: DeserializeOwned>(row: &PgRow, col: &str) -> Result<T, StoreError> {
    let v: serde_json::Value = row.try_get(col)?;
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn opt_json<T: DeserializeOwned>(row: &PgRow, col: &str) -> Result<Option<T>, StoreError> {
    let v: Option<serde_json::Value> = row.try_get(col)?;
    v.map(|v| serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn status(row: &PgRow) -> Result<Status, StoreError> {
    let s: String = row.try_get("status")?;
    Status::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("unknown status `{s}`")))
}

fn record(row: &PgRow) -> Result<WorkflowRecord, StoreError> {
    Ok(WorkflowRecord {
        id: row.try_get("id")?,
        workflow_type: row.try_get("workflow_type")?,
        key: row.try_get("key")?,
        tag: row.try_get("tag")?,
        status: status(row)?,
        input: row.try_get("input")?,
        state: row.try_get("state")?,
        pending: json(row, "pending")?,
        output: row.try_get("output")?,
        error: opt_json(row, "error")?,
        version: row.try_get("version")?,
        cancel_requested: row.try_get("cancel_requested")?,
        run_at: row.try_get("run_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_epoch: row.try_get("lease_epoch")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        heartbeat_details: row.try_get("heartbeat_details")?,
        signals_unconsumed: row.try_get("signals_unconsumed")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn access_token(row: &PgRow) -> Result<AccessToken, StoreError> {
    Ok(AccessToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// The columns of `events` rows for `unnest`: seqs from `first_seq`, kinds, payloads.
/// Payloads are serialized straight into the statement (no `serde_json::Value` copy).
type EventColumns<'a> = (Vec<i64>, Vec<&'a str>, Vec<Json<&'a EventKind>>);

fn event_columns(first_seq: i64, events: &[EventKind]) -> EventColumns<'_> {
    let seqs = (0..events.len() as i64).map(|i| first_seq + i).collect();
    let kinds = events.iter().map(EventKind::name).collect();
    let payloads = events.iter().map(Json).collect();
    (seqs, kinds, payloads)
}

/// The conditions of a [`ListFilter`] but status and cursor, on parameters `$1..=$7`
/// (see [`bind_filter`]).
const FILTER: &str = "($1::text is null or workflow_type = $1)
    and ($2::text is null or tag = $2)
    and ($3::timestamptz is null or created_at >= $3)
    and ($4::timestamptz is null or created_at < $4)
    and ($5::text is null or strpos(lower(key), $5) > 0
         or ($6::uuid is not null and id between $6 and $7))";

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `$1..=$7` of [`FILTER`].
fn bind_filter<'q>(query: PgQuery<'q>, f: &'q ListFilter) -> PgQuery<'q> {
    let search = f.search.as_ref();
    query
        .bind(f.workflow_type.as_deref())
        .bind(f.tag.as_deref())
        .bind(f.created_after)
        .bind(f.created_before)
        .bind(search.map(|s| s.text.as_str()))
        .bind(search.and_then(|s| s.id_range).map(|r| r.0))
        .bind(search.and_then(|s| s.id_range).map(|r| r.1))
}

/// The in-flight transaction ids of a `pg_snapshot` text (`xmin:xmax:xip,...`), sorted.
fn in_flight(snapshot: Option<&str>) -> Result<Vec<u64>, StoreError> {
    let Some(snapshot) = snapshot else {
        return Ok(Vec::new());
    };
    let corrupt = || StoreError::Corrupt(format!("unexpected snapshot `{snapshot}`"));
    let xip = snapshot.splitn(3, ':').nth(2).ok_or_else(corrupt)?;
    let mut ids = xip
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map_err(|_| corrupt()))
        .collect::<Result<Vec<_>, _>>()?;
    ids.sort_unstable();
    Ok(ids)
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_workflow(&self, new: NewWorkflow) -> Result<Created, StoreError> {
        let (created, _) = self
            .creations
            .submit(
                (new, None),
                |batch| self.create_batch_owned(batch),
                pg_batch::lost,
            )
            .await?;
        Ok(created)
    }

    async fn create_workflow_leased(
        &self,
        new: NewWorkflow,
        worker: WorkerId,
        lease_ttl: Duration,
    ) -> Result<(Created, Option<Claimed>), StoreError> {
        let lease = Some((worker, lease_ttl));
        self.creations
            .submit(
                (new, lease),
                |batch| self.create_batch_owned(batch),
                pg_batch::lost,
            )
            .await
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>, StoreError> {
        let row = sqlx::query("select * from kodomasu.workflows where id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }

    async fn list_workflows(&self, filter: &ListFilter) -> Result<Vec<WorkflowRecord>, StoreError> {
        let sql = format!(
            "select * from kodomasu.workflows
             where {FILTER}
               and ($8::text is null or status = $8)
               and ($9::uuid is null or id < $9)
             order by id desc
             limit $10"
        );
        let rows = bind_filter(sqlx::query(&sql), filter)
            .bind(filter.status.map(Status::as_str))
            .bind(filter.cursor)
            .bind(filter.limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record).collect()
    }

    async fn count_workflows(&self, filter: &ListFilter) -> Result<StatusCounts, StoreError> {
        let sql = format!(
            "select status, count(*) as n from kodomasu.workflows where {FILTER} group by status"
        );
        let rows = bind_filter(sqlx::query(&sql), filter)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((status(r)?, r.try_get("n")?)))
            .collect()
    }

    async fn read_feed(&self, q: &FeedQuery) -> Result<FeedRead, StoreError> {
        // One statement, so the snapshot it reports is the one its rows were read in. Two
        // shapes, so each has a plan of its own (one workflow: its primary key; all: `gid`).
        let workflow = if q.workflow.is_some() {
            "and ev.workflow_id = $3"
        } else {
            "and $3::uuid is null"
        };
        let sql = format!(
            "with snap as materialized (select pg_current_snapshot()::text as snapshot)
             select snap.snapshot, e.gid, e.workflow_id, w.workflow_type, e.seq, e.kind,
                    case when e.kind = 'transitioned' then e.payload ->> 'status' end as status,
                    e.created_at
             from snap
             left join lateral (
                select ev.gid, ev.workflow_id, ev.seq, ev.kind, ev.payload, ev.created_at
                from kodomasu.events ev
                where ev.gid > $1 and ($2::bigint is null or ev.gid <= $2) {workflow}
                order by ev.gid
                limit $4
             ) e on true
             left join kodomasu.workflows w on w.id = e.workflow_id
             order by e.gid"
        );
        let rows = sqlx::query(&sql)
            .bind(q.after)
            .bind(q.upto)
            .bind(q.workflow)
            .bind(q.limit)
            .fetch_all(&self.pool)
            .await?;
        let snapshot: Option<String> = match rows.first() {
            Some(r) => r.try_get("snapshot")?,
            None => None,
        };
        let mut events = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(gid) = r.try_get::<Option<i64>, _>("gid")? else {
                continue;
            };
            let kind: String = r.try_get("kind")?;
            let transitioned: Option<String> = r.try_get("status")?;
            events.push(FeedEvent {
                gid,
                workflow_id: r.try_get("workflow_id")?,
                workflow_type: r.try_get("workflow_type")?,
                seq: r.try_get("seq")?,
                status: FeedEvent::status_of(&kind, transitioned.as_deref()),
                kind,
                created_at: r.try_get("created_at")?,
            });
        }
        Ok(FeedRead {
            events,
            in_flight: Some(in_flight(snapshot.as_deref())?),
        })
    }

    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        let (snapshot, max_gid): (String, i64) = sqlx::query_as(
            "select pg_current_snapshot()::text, (select coalesce(max(gid), 0) from kodomasu.events)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(FeedHead {
            max_gid,
            in_flight: Some(in_flight(Some(&snapshot))?),
        })
    }

    async fn history(
        &self,
        id: WorkflowId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "select seq, payload, created_at from kodomasu.events
             where workflow_id = $1 and seq > $2 order by seq limit $3",
        )
        .bind(id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    seq: r.try_get("seq")?,
                    created_at: r.try_get("created_at")?,
                    kind: json(r, "payload")?,
                })
            })
            .collect()
    }

    async fn attempts(&self, id: WorkflowId) -> Result<Vec<ActivityAttempt>, StoreError> {
        let rows = sqlx::query(
            "select * from kodomasu.activity_attempts where workflow_id = $1 order by call_seq, attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ActivityAttempt {
                    call_seq: r.try_get("call_seq")?,
                    attempt: r.try_get::<i32, _>("attempt")? as u32,
                    activity_name: r.try_get("activity_name")?,
                    worker_id: r.try_get("worker_id")?,
                    outcome: r.try_get("outcome")?,
                    error: opt_json(r, "error")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    duration_ms: r.try_get("duration_ms")?,
                })
            })
            .collect()
    }

    async fn send_signal(
        &self,
        id: WorkflowId,
        name: &str,
        payload: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let terminal: Vec<&str> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(Status::as_str)
            .collect();
        // A workflow created by a transaction that committed after the statement's snapshot is
        // invisible to the update but visible to the check below: then the statement runs again.
        for _ in 0..3 {
            // One statement (its own transaction, one round trip). The row lock the update
            // takes orders concurrent signals: `signal_seq` stays gapless. An unleased workflow
            // becomes due now; a leased one is told by its holder's next commit.
            let seq: Option<i64> = sqlx::query_scalar(
                "with bumped as (
                    update kodomasu.workflows
                    set signal_seq = signal_seq + 1, signals_unconsumed = signals_unconsumed + 1,
                        run_at = case when lease_owner is null then now() else run_at end,
                        updated_at = now()
                    where id = $1 and status <> all($5::text[])
                    returning id, signal_seq
                 ),
                 stored as (
                    insert into kodomasu.signals (workflow_id, seq, name, payload)
                    select id, signal_seq, $2, $3 from bumped
                 ),
                 hinted as (
                    select pg_notify($4, $6) from bumped
                 )
                 select signal_seq from bumped where (select count(*) from hinted) >= 0",
            )
            .bind(id)
            .bind(name)
            .bind(payload)
            .bind(SIGNAL_CHANNEL)
            .bind(&terminal)
            .bind(format!("{id} {name}"))
            .fetch_optional(&self.pool)
            .await?;
            if let Some(seq) = seq {
                return Ok(seq);
            }
            // Not updated: the workflow is missing or finished (and stays finished).
            let row = sqlx::query("select status from kodomasu.workflows where id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else {
                return Err(StoreError::NotFound(id));
            };
            let current = status(&row)?;
            if current.is_terminal() {
                return Err(StoreError::Finished(id, current));
            }
        }
        Err(StoreError::NotFound(id))
    }

    async fn claim(
        &self,
        worker: WorkerId,
        workflow_types: &[String],
        limit: usize,
        lease_ttl: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let rows = sqlx::query(
            "with due as (
                select id, lease_owner as prev_owner from kodomasu.workflows
                where run_at <= now() and (lease_owner is null or lease_expires_at < now())
                  and workflow_type = any($4)
                order by run_at
                limit $2
                for update skip locked
             )
             update kodomasu.workflows w
             set lease_owner = $1, lease_epoch = w.lease_epoch + 1,
                 lease_expires_at = now() + make_interval(secs => $3)
             from due where w.id = due.id
             returning w.*, due.prev_owner, now() as db_now",
        )
        .bind(worker)
        .bind(limit as i64)
        .bind(lease_ttl.as_secs_f64())
        .bind(workflow_types)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    record: record(r)?,
                    next_call_seq: r.try_get("next_call_seq")?,
                    signal_seq: r.try_get("signal_seq")?,
                    signal_seen: r.try_get("signal_seen")?,
                    recovered_from: r.try_get("prev_owner")?,
                    db_now: r.try_get("db_now")?,
                })
            })
            .collect()
    }

    async fn unconsumed_signals(&self, id: WorkflowId) -> Result<Vec<StoredSignal>, StoreError> {
        let rows = sqlx::query(
            "select seq, name, payload from kodomasu.signals
             where workflow_id = $1 and consumed_at is null order by seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredSignal {
                    seq: r.try_get("seq")?,
                    name: r.try_get("name")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }

    async fn commit(&self, c: StepCommit) -> Result<Committed, StoreError> {
        self.commits
            .submit(
                c,
                |batch| {
                    let store = self.clone();
                    async move { store.commit_batch(batch).await }
                },
                pg_batch::lost,
            )
            .await
    }

    async fn renew_leases(
        &self,
        worker: WorkerId,
        lease_ttl: Duration,
        leases: &[LeaseRenewal],
    ) -> Result<Vec<Renewed>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        // In id order, as batched commits lock rows (see `pg_batch`).
        let mut order: Vec<&LeaseRenewal> = leases.iter().collect();
        order.sort_by_key(|l| l.id.0);
        let ids: Vec<Uuid> = order.iter().map(|l| l.id.0).collect();
        let epochs: Vec<i64> = order.iter().map(|l| l.epoch).collect();
        let details: serde_json::Map<String, serde_json::Value> = leases
            .iter()
            .filter_map(|l| {
                l.heartbeat.as_ref().map(|(call_seq, details)| {
                    let entry = serde_json::json!({ "call_seq": call_seq, "details": details });
                    (l.id.to_string(), entry)
                })
            })
            .collect();
        // By primary key, as in `commit_one` (`is not distinct from` keeps plans off the
        // lease-owner index).
        let rows = sqlx::query(
            "update kodomasu.workflows w
             set lease_expires_at = now() + make_interval(secs => $2),
                 heartbeat_details = case when $5::jsonb -> w.id::text -> 'call_seq' = w.pending -> 'call_seq'
                                          then $5::jsonb -> w.id::text -> 'details'
                                          else w.heartbeat_details end,
                 heartbeat_at = case when $5::jsonb -> w.id::text -> 'call_seq' = w.pending -> 'call_seq'
                                     then now() else w.heartbeat_at end
             from unnest($3::uuid[], $4::bigint[]) as l(id, epoch)
             where w.id = l.id and w.lease_owner is not distinct from $1 and w.lease_epoch = l.epoch
             returning w.id, exists (
                select 1 from kodomasu.signals s
                where s.workflow_id = w.id and s.consumed_at is null and s.name = 'cancel'
             ) and not w.cancel_requested as cancel_pending,
             exists (
                select 1 from kodomasu.signals s
                where s.workflow_id = w.id and s.consumed_at is null and s.name = 'pause'
             ) as pause_pending",
        )
        .bind(worker)
        .bind(lease_ttl.as_secs_f64())
        .bind(&ids)
        .bind(&epochs)
        .bind(serde_json::Value::Object(details))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Renewed {
                    id: r.try_get("id")?,
                    cancel_pending: r.try_get("cancel_pending")?,
                    pause_pending: r.try_get("pause_pending")?,
                })
            })
            .collect()
    }

    async fn release_leases(
        &self,
        worker: WorkerId,
        leases: &[(WorkflowId, i64)],
    ) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = leases.iter().map(|l| l.0.0).collect();
        let epochs: Vec<i64> = leases.iter().map(|l| l.1).collect();
        sqlx::query(
            "update kodomasu.workflows w set lease_owner = null, lease_expires_at = null
             from unnest($2::uuid[], $3::bigint[]) as l(id, epoch)
             where w.id = l.id and w.lease_owner is not distinct from $1 and w.lease_epoch = l.epoch",
        )
        .bind(worker)
        .bind(&ids)
        .bind(&epochs)
        .execute(&self.pool)
        .await?;
        sqlx::query("select pg_notify($1, '')")
            .bind(WAKE_CHANNEL)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        sqlx::query(
            "insert into kodomasu.workers (id, host, pid, slots, lease_ttl_ms, watch_pid)
             values ($1, $2, $3, $4, $5, $6)
             on conflict (id) do update
             set stopped_at = null, heartbeat_at = now(), watch_pid = excluded.watch_pid",
        )
        .bind(info.id)
        .bind(&info.host)
        .bind(info.pid)
        .bind(info.slots)
        .bind(info.lease_ttl.as_millis() as i64)
        .bind(info.watch_pid)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn presence(&self, worker: WorkerId) -> Result<Option<Box<dyn Presence>>, StoreError> {
        let options = self.pool.connect_options();
        let presence = PgPresence::acquire(&options, worker).await?;
        Ok(Some(Box::new(presence)))
    }

    async fn worker_heartbeat(&self, worker: WorkerId, slots_used: i32) -> Result<(), StoreError> {
        sqlx::query(
            "update kodomasu.workers set heartbeat_at = now(), slots_used = $2 where id = $1",
        )
        .bind(worker)
        .bind(slots_used)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn worker_stopped(&self, worker: WorkerId) -> Result<(), StoreError> {
        sqlx::query("update kodomasu.workers set stopped_at = now(), slots_used = 0 where id = $1")
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let rows = sqlx::query(
            "select *, (stopped_at is null and heartbeat_at + make_interval(secs => lease_ttl_ms / 1000.0) > now()) as alive
             from kodomasu.workers order by started_at desc limit 500",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(WorkerRecord {
                    id: r.try_get("id")?,
                    host: r.try_get("host")?,
                    pid: r.try_get("pid")?,
                    slots: r.try_get("slots")?,
                    slots_used: r.try_get("slots_used")?,
                    lease_ttl_ms: r.try_get("lease_ttl_ms")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                    stopped_at: r.try_get("stopped_at")?,
                    alive: r.try_get("alive")?,
                })
            })
            .collect()
    }

    async fn listen(&self) -> Result<Box<dyn WakeListener>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all([WAKE_CHANNEL, SIGNAL_CHANNEL]).await?;
        Ok(Box::new(PgWakeListener {
            listener,
            connected: true,
        }))
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        // sqlx keeps its table in the connection's default schema; `to_regclass` resolves the
        // name the same way and is null (not an error) when the table does not exist.
        let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
            .fetch_one(&self.pool)
            .await?;
        let applied: Vec<i64> = if exists {
            sqlx::query_scalar("select version from _sqlx_migrations where success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(super::pending_versions(&MIGRATOR, &applied))
    }

    async fn gauges(&self) -> Result<StoreGauges, StoreError> {
        let row = sqlx::query(
            "with due as (
                select run_at from kodomasu.workflows
                where run_at <= now() and (lease_owner is null or lease_expires_at < now())
             )
             select (select count(*) from due) as due_unclaimed,
                    coalesce((select extract(epoch from now() - min(run_at))::float8 from due), 0) as oldest,
                    (select count(*) from kodomasu.workers
                     where stopped_at is null
                       and heartbeat_at + make_interval(secs => lease_ttl_ms / 1000.0) > now()) as live",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(StoreGauges {
            due_unclaimed: row.try_get("due_unclaimed")?,
            oldest_due_seconds: row.try_get::<f64, _>("oldest")?.max(0.0),
            live_workers: row.try_get("live")?,
        })
    }

    async fn create_access_token(
        &self,
        id: Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<Option<AccessToken>, StoreError> {
        let row = sqlx::query(
            "insert into kodomasu.access_tokens (id, name, token_hash) values ($1, $2, $3)
             on conflict do nothing
             returning *",
        )
        .bind(id)
        .bind(name)
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(access_token).transpose()
    }

    async fn replace_access_token(
        &self,
        id: Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<AccessToken, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "update kodomasu.access_tokens set revoked_at = now()
             where name = $1 and revoked_at is null
               and not exists (select 1 from kodomasu.access_tokens t where t.token_hash = $2)",
        )
        .bind(name)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        // A concurrent replace of the same hash makes this a no-op (it waits for that one).
        sqlx::query(
            "insert into kodomasu.access_tokens (id, name, token_hash) values ($1, $2, $3)
             on conflict do nothing",
        )
        .bind(id)
        .bind(name)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let row = sqlx::query("select * from kodomasu.access_tokens where token_hash = $1")
            .bind(token_hash)
            .fetch_one(&self.pool)
            .await?;
        access_token(&row)
    }

    async fn access_tokens(&self) -> Result<Vec<AccessToken>, StoreError> {
        let rows = sqlx::query("select * from kodomasu.access_tokens order by created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(access_token).collect()
    }

    async fn find_access_token(&self, token_hash: &str) -> Result<Option<AccessToken>, StoreError> {
        let row = sqlx::query("select * from kodomasu.access_tokens where token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(access_token).transpose()
    }

    async fn revoke_access_token(
        &self,
        id_or_name: &str,
    ) -> Result<Option<AccessToken>, StoreError> {
        let row = match Uuid::parse_str(id_or_name) {
            Ok(id) => {
                sqlx::query(
                    "update kodomasu.access_tokens set revoked_at = coalesce(revoked_at, now())
                     where id = $1 returning *",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
            Err(_) => {
                sqlx::query(
                    "update kodomasu.access_tokens set revoked_at = now()
                     where name = $1 and revoked_at is null returning *",
                )
                .bind(id_or_name)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref().map(access_token).transpose()
    }
}

struct PgWakeListener {
    listener: PgListener,
    connected: bool,
}

#[async_trait]
impl WakeListener for PgWakeListener {
    async fn recv(&mut self) -> Result<Wake, StoreError> {
        // `try_recv` returns None when the connection dropped; the next call reconnects.
        match self.listener.try_recv().await? {
            None => {
                self.connected = false;
                Ok(Wake::Reconnected)
            }
            Some(n) => {
                self.connected = true;
                if n.channel() == SIGNAL_CHANNEL {
                    let mut parts = n.payload().splitn(2, ' ');
                    let id = parts.next().and_then(|s| WorkflowId::parse(s).ok());
                    let name = parts.next().unwrap_or_default().to_owned();
                    if let Some(id) = id {
                        return Ok(Wake::Signal { id, name });
                    }
                }
                Ok(Wake::Work)
            }
        }
    }
}

/// Reaps a worker found dead (see `pg_presence`): marks it stopped and expires its leases so
/// other workers claim its workflows now, and wakes them. Returns how many workflows it held, or
/// `None` when it was already stopped (a graceful stop: nothing to take over).
pub(super) async fn reap_worker(
    conn: &mut sqlx::PgConnection,
    worker: WorkerId,
) -> Result<Option<u64>, StoreError> {
    let row: Option<i64> = sqlx::query_scalar(
        "with stopped as (
            update kodomasu.workers set stopped_at = now(), slots_used = 0
            where id = $1 and stopped_at is null returning id
         ), freed as (
            update kodomasu.workflows set lease_expires_at = now()
            where lease_owner = $1 and lease_expires_at > now()
              and exists (select 1 from stopped)
            returning id
         )
         select (select count(*) from freed) from stopped",
    )
    .bind(worker)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(freed) = row else {
        return Ok(None);
    };
    if freed > 0 {
        sqlx::query("select pg_notify($1, '')")
            .bind(WAKE_CHANNEL)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(freed as u64))
}
