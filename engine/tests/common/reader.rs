//! Reads the journal's tables directly, one implementation per backend, so the tests check what
//! is stored rather than trusting the store's own queries. Each decodes its backend's storage
//! format itself (PostgreSQL types; SQLite's UUID blobs, fixed-width UTC text and JSON text).

use super::{AttemptRow, EventRow};
use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use engine::{ActivityError, EventKind, WorkerId, WorkflowId};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqlitePool, SqliteRow};
use std::time::Duration;
use uuid::Uuid;

/// Row counts of the journal's main tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub workflows: i64,
    pub events: i64,
    pub signals: i64,
}

/// A journal whose events are not exactly `1..=version`: `(id, version, count, min, max)`.
pub type Gap = (Uuid, i64, i64, i64, i64);

/// Direct reads (and the few direct writes the fencing tests need) of the journal tables.
#[async_trait]
pub trait JournalReader: Send + Sync + std::fmt::Debug {
    /// Every event of `id`, by seq.
    async fn events(&self, id: WorkflowId) -> anyhow::Result<Vec<EventRow>>;
    /// Every attempt row of `id`, by call and attempt.
    async fn attempts(&self, id: WorkflowId) -> anyhow::Result<Vec<AttemptRow>>;
    /// `(seq, name, consumed_in)` of every signal of `id`, by seq.
    async fn signals(&self, id: WorkflowId) -> anyhow::Result<Vec<(i64, String, Option<i64>)>>;
    /// Rows in the workflows, events and signals tables.
    async fn counts(&self) -> anyhow::Result<Counts>;
    /// `(signal rows of id, its snapshot's signal_seq)`.
    async fn signal_count(&self, id: WorkflowId) -> anyhow::Result<(i64, i64)>;
    /// The snapshot's `heartbeat_at` column.
    async fn heartbeat_at(&self, id: WorkflowId) -> anyhow::Result<Option<DateTime<Utc>>>;
    /// Whether the lease of `id` has expired by the database clock (false without a lease).
    async fn lease_expired(&self, id: WorkflowId) -> anyhow::Result<bool>;
    /// Hands the lease of `id` to `thief` for `ttl` with the next epoch, as a worker on the
    /// other side of a partition would take it.
    async fn steal_lease(
        &self,
        id: WorkflowId,
        thief: WorkerId,
        ttl: Duration,
    ) -> anyhow::Result<()>;
    /// Every workflow whose events are not exactly `1..=version`.
    async fn journal_gaps(&self) -> anyhow::Result<Vec<Gap>>;
    /// `(workflow, call_seq, count)` of `activity_completed` events, by workflow and call.
    async fn completed_calls(&self) -> anyhow::Result<Vec<(Uuid, i64, i64)>>;
    /// The worker of every attempt row with outcome `completed`.
    async fn completed_attempt_workers(&self) -> anyhow::Result<Vec<Option<Uuid>>>;
    /// `(finished, completed)` workflows.
    async fn finished_counts(&self) -> anyhow::Result<(i64, i64)>;
}

fn decode_event(payload: &Value) -> anyhow::Result<EventKind> {
    serde_json::from_value(payload.clone()).with_context(|| format!("event payload {payload}"))
}

fn decode_error(v: Option<Value>) -> anyhow::Result<Option<ActivityError>> {
    v.map(|e| serde_json::from_value(e).context("attempt error decodes"))
        .transpose()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct PgReader {
    pool: PgPool,
}

impl PgReader {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl JournalReader for PgReader {
    async fn events(&self, id: WorkflowId) -> anyhow::Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "select seq, kind, payload, created_at from kodomasu.events where workflow_id = $1 order by seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let payload: Value = r.try_get("payload")?;
                Ok(EventRow {
                    seq: r.try_get("seq")?,
                    kind: r.try_get("kind")?,
                    event: decode_event(&payload)?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn attempts(&self, id: WorkflowId) -> anyhow::Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "select * from kodomasu.activity_attempts where workflow_id = $1 order by call_seq, attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRow {
                    call_seq: r.try_get("call_seq")?,
                    attempt: r.try_get("attempt")?,
                    activity_name: r.try_get("activity_name")?,
                    worker_id: r.try_get("worker_id")?,
                    outcome: r.try_get("outcome")?,
                    error: decode_error(r.try_get("error")?)?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    duration_ms: r.try_get("duration_ms")?,
                })
            })
            .collect()
    }

    async fn signals(&self, id: WorkflowId) -> anyhow::Result<Vec<(i64, String, Option<i64>)>> {
        Ok(sqlx::query_as(
            "select seq, name, consumed_in from kodomasu.signals where workflow_id = $1 order by seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn counts(&self) -> anyhow::Result<Counts> {
        let (workflows, events, signals) = sqlx::query_as(
            "select (select count(*) from kodomasu.workflows), (select count(*) from kodomasu.events),
                    (select count(*) from kodomasu.signals)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            workflows,
            events,
            signals,
        })
    }

    async fn signal_count(&self, id: WorkflowId) -> anyhow::Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "select (select count(*) from kodomasu.signals where workflow_id = $1),
                    (select signal_seq from kodomasu.workflows where id = $1)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn heartbeat_at(&self, id: WorkflowId) -> anyhow::Result<Option<DateTime<Utc>>> {
        Ok(
            sqlx::query_scalar("select heartbeat_at from kodomasu.workflows where id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn lease_expired(&self, id: WorkflowId) -> anyhow::Result<bool> {
        let expired: Option<bool> = sqlx::query_scalar(
            "select lease_expires_at < now() from kodomasu.workflows where id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(expired.unwrap_or(false))
    }

    async fn steal_lease(
        &self,
        id: WorkflowId,
        thief: WorkerId,
        ttl: Duration,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "update kodomasu.workflows
             set lease_owner = $2, lease_epoch = lease_epoch + 1,
                 lease_expires_at = now() + make_interval(secs => $3)
             where id = $1",
        )
        .bind(id)
        .bind(thief)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn journal_gaps(&self) -> anyhow::Result<Vec<Gap>> {
        Ok(sqlx::query_as(
            "select w.id, w.version, count(e.seq), coalesce(min(e.seq), 0), coalesce(max(e.seq), 0)
             from kodomasu.workflows w left join kodomasu.events e on e.workflow_id = w.id
             group by w.id, w.version
             having count(e.seq) <> w.version or min(e.seq) <> 1 or max(e.seq) <> w.version",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn completed_calls(&self) -> anyhow::Result<Vec<(Uuid, i64, i64)>> {
        Ok(sqlx::query_as(
            "select workflow_id, (payload->>'call_seq')::bigint, count(*)
             from kodomasu.events where kind = 'activity_completed'
             group by 1, 2 order by 1, 2",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn completed_attempt_workers(&self) -> anyhow::Result<Vec<Option<Uuid>>> {
        Ok(sqlx::query_scalar(
            "select worker_id from kodomasu.activity_attempts where outcome = 'completed'",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn finished_counts(&self) -> anyhow::Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "select count(*) filter (where finished_at is not null),
                    count(*) filter (where status = 'completed')
             from kodomasu.workflows",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------------

/// SQLite's `now` in the stored format.
const SQLITE_NOW: &str = "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')";

#[derive(Debug, Clone)]
pub struct SqliteReader {
    pool: SqlitePool,
}

impl SqliteReader {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

/// A stored time: fixed-width UTC text, `2026-11-23T10:00:00.123456Z`.
fn sqlite_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    anyhow::ensure!(
        s.len() == 27 && s.ends_with('Z'),
        "stored time `{s}` is not fixed-width UTC"
    );
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("stored time `{s}`"))?
        .with_timezone(&Utc))
}

fn sqlite_opt_time(s: Option<String>) -> anyhow::Result<Option<DateTime<Utc>>> {
    s.as_deref().map(sqlite_time).transpose()
}

fn sqlite_json(s: &str) -> anyhow::Result<Value> {
    serde_json::from_str(s).with_context(|| format!("stored JSON `{s}`"))
}

fn sqlite_opt_json(s: Option<String>) -> anyhow::Result<Option<Value>> {
    s.as_deref().map(sqlite_json).transpose()
}

fn sqlite_uuid(row: &SqliteRow, col: &str) -> anyhow::Result<Option<Uuid>> {
    let bytes: Option<Vec<u8>> = row.try_get(col)?;
    bytes
        .map(|b| Uuid::from_slice(&b).with_context(|| format!("{col} is not a 16-byte UUID")))
        .transpose()
}

#[async_trait]
impl JournalReader for SqliteReader {
    async fn events(&self, id: WorkflowId) -> anyhow::Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "select seq, kind, payload, created_at from events where workflow_id = ?1 order by seq",
        )
        .bind(id.0.as_bytes().as_slice())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let payload = sqlite_json(&r.try_get::<String, _>("payload")?)?;
                Ok(EventRow {
                    seq: r.try_get("seq")?,
                    kind: r.try_get("kind")?,
                    event: decode_event(&payload)?,
                    created_at: sqlite_time(&r.try_get::<String, _>("created_at")?)?,
                })
            })
            .collect()
    }

    async fn attempts(&self, id: WorkflowId) -> anyhow::Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "select * from activity_attempts where workflow_id = ?1 order by call_seq, attempt",
        )
        .bind(id.0.as_bytes().as_slice())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRow {
                    call_seq: r.try_get("call_seq")?,
                    attempt: r.try_get("attempt")?,
                    activity_name: r.try_get("activity_name")?,
                    worker_id: sqlite_uuid(r, "worker_id")?,
                    outcome: r.try_get("outcome")?,
                    error: decode_error(sqlite_opt_json(r.try_get("error")?)?)?,
                    started_at: sqlite_opt_time(r.try_get("started_at")?)?,
                    finished_at: sqlite_time(&r.try_get::<String, _>("finished_at")?)?,
                    duration_ms: r.try_get("duration_ms")?,
                })
            })
            .collect()
    }

    async fn signals(&self, id: WorkflowId) -> anyhow::Result<Vec<(i64, String, Option<i64>)>> {
        Ok(sqlx::query_as(
            "select seq, name, consumed_in from signals where workflow_id = ?1 order by seq",
        )
        .bind(id.0.as_bytes().as_slice())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn counts(&self) -> anyhow::Result<Counts> {
        let (workflows, events, signals) = sqlx::query_as(
            "select (select count(*) from workflows), (select count(*) from events),
                    (select count(*) from signals)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            workflows,
            events,
            signals,
        })
    }

    async fn signal_count(&self, id: WorkflowId) -> anyhow::Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "select (select count(*) from signals where workflow_id = ?1),
                    (select signal_seq from workflows where id = ?1)",
        )
        .bind(id.0.as_bytes().as_slice())
        .fetch_one(&self.pool)
        .await?)
    }

    async fn heartbeat_at(&self, id: WorkflowId) -> anyhow::Result<Option<DateTime<Utc>>> {
        let s: Option<String> =
            sqlx::query_scalar("select heartbeat_at from workflows where id = ?1")
                .bind(id.0.as_bytes().as_slice())
                .fetch_one(&self.pool)
                .await?;
        sqlite_opt_time(s)
    }

    async fn lease_expired(&self, id: WorkflowId) -> anyhow::Result<bool> {
        let expired: Option<bool> = sqlx::query_scalar(&format!(
            "select lease_expires_at < {SQLITE_NOW} from workflows where id = ?1"
        ))
        .bind(id.0.as_bytes().as_slice())
        .fetch_one(&self.pool)
        .await?;
        Ok(expired.unwrap_or(false))
    }

    async fn steal_lease(
        &self,
        id: WorkflowId,
        thief: WorkerId,
        ttl: Duration,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "update workflows
             set lease_owner = ?2, lease_epoch = lease_epoch + 1,
                 lease_expires_at = strftime('%Y-%m-%dT%H:%M:%f', 'now', ?3) || '000Z'
             where id = ?1",
        )
        .bind(id.0.as_bytes().as_slice())
        .bind(thief.0.as_bytes().as_slice())
        .bind(format!("+{:.3} seconds", ttl.as_secs_f64()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn journal_gaps(&self) -> anyhow::Result<Vec<Gap>> {
        let rows = sqlx::query(
            "select w.id, w.version, count(e.seq) as n, coalesce(min(e.seq), 0) as lo,
                    coalesce(max(e.seq), 0) as hi
             from workflows w left join events e on e.workflow_id = w.id
             group by w.id, w.version
             having count(e.seq) <> w.version or min(e.seq) <> 1 or max(e.seq) <> w.version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    sqlite_uuid(r, "id")?.context("workflow id")?,
                    r.try_get("version")?,
                    r.try_get("n")?,
                    r.try_get("lo")?,
                    r.try_get("hi")?,
                ))
            })
            .collect()
    }

    async fn completed_calls(&self) -> anyhow::Result<Vec<(Uuid, i64, i64)>> {
        let rows = sqlx::query(
            "select workflow_id, json_extract(payload, '$.call_seq') as call_seq, count(*) as n
             from events where kind = 'activity_completed'
             group by 1, 2 order by 1, 2",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    sqlite_uuid(r, "workflow_id")?.context("workflow id")?,
                    r.try_get("call_seq")?,
                    r.try_get("n")?,
                ))
            })
            .collect()
    }

    async fn completed_attempt_workers(&self) -> anyhow::Result<Vec<Option<Uuid>>> {
        let rows =
            sqlx::query("select worker_id from activity_attempts where outcome = 'completed'")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| sqlite_uuid(r, "worker_id")).collect()
    }

    async fn finished_counts(&self) -> anyhow::Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "select count(*) filter (where finished_at is not null),
                    count(*) filter (where status = 'completed')
             from workflows",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
