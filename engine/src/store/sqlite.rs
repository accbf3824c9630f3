//! The SQLite journal: the embedded, zero-setup backend. One file holds the whole journal; several
//! processes on one machine (a server and workers) may share it.
//!
//! It keeps the [`Store`] contract exactly as PostgreSQL does; how each part is kept here:
//! - **One fenced transaction per write.** Every write is one `BEGIN IMMEDIATE` transaction: it
//!   takes SQLite's write lock before it reads, so a read-then-write never fails on a stale
//!   snapshot, and a writer in another process waits (busy timeout, 5 s) instead of failing.
//!   Inside a process, writers first queue on a mutex, so they wait in order rather than in
//!   SQLite's sleep-and-retry busy handler. Readers never wait (WAL journal mode).
//! - **The database clock.** Each write transaction reads SQLite's `now` once, after it holds the
//!   lock, and uses it for leases, due times and timestamps. SQLite's clock has millisecond
//!   resolution. Times are stored as fixed-width UTC text, `2026-11-23T10:00:00.123456Z`, so text
//!   order is time order (times after year 9999 are stored as the last instant of 9999).
//! - **Wake-ups.** There is no LISTEN/NOTIFY. [`Store::listen`] hears this store's own creates,
//!   signals and releases at once (an in-process broadcast) and polls every
//!   [`SqliteStore::poll_interval`] (default 200 ms) for other processes: signals stored since the
//!   last poll become [`Wake::Signal`] hints and every tick is a [`Wake::Work`]. The trade-off:
//!   work or a signal from another process is seen up to one poll interval late, and an idle
//!   listener costs one indexed read per tick. A claim first checks with a read whether anything
//!   is due, so an idle poll takes no write lock.
//!
//! Not for network file systems: SQLite's locking needs a local disk.
//!
//! ```no_run
//! # async fn demo() -> Result<(), engine::StoreError> {
//! use engine::{SqliteStore, Store};
//! let store = SqliteStore::connect("data/kodomasu.db").await?; // or "sqlite://data/kodomasu.db?mode=rwc"
//! store.migrate().await?;
//! # Ok(()) }
//! ```

use super::{
    AccessToken, Claimed, Committed, Created, FeedHead, FeedQuery, FeedRead, LeaseAfter,
    LeaseRenewal, ListFilter, NewWorkflow, Renewed, StatusCounts, StepCommit, Store, StoreError,
    StoreGauges, StoredSignal, Wake, WakeListener, WorkerInfo,
};
use crate::journal::{
    ActivityAttempt, Event, EventKind, FeedEvent, Status, WorkerRecord, WorkflowRecord,
};
use crate::{WorkerId, WorkflowId};
use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use serde::de::DeserializeOwned;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::VecDeque;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard, broadcast};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a writer waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections of a pool made by [`SqliteStore::connect`].
const MAX_CONNECTIONS: u32 = 8;
/// Default of [`SqliteStore::poll_interval`].
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// In-process wake-up hints buffered per listener before it counts as lagging.
const WAKE_CAPACITY: usize = 1024;

/// SQLite's `now` in the stored format (millisecond resolution, padded to microseconds).
macro_rules! now_sql {
    () => {
        "(strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')"
    };
}

/// The journal in one SQLite file. Clones share one pool, write queue and wake-up broadcast;
/// two stores made separately (even in one process) coordinate only through the file, as two
/// processes do.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    shared: Arc<Shared>,
    poll_interval: Duration,
}

#[derive(Debug)]
struct Shared {
    /// Serializes this process's write transactions (SQLite has one writer at a time anyway).
    write: Mutex<()>,
    /// Wake-up hints of this store's own writes, for its listeners.
    wake: broadcast::Sender<Wake>,
}

/// An open write transaction holding both the in-process and the database write lock.
struct Write<'a> {
    // Dropped before the guard: an unfinished transaction starts its rollback first.
    tx: Transaction<'static, Sqlite>,
    /// The database clock, read once the lock was held.
    now: DateTime<Utc>,
    _guard: MutexGuard<'a, ()>,
}

impl SqliteStore {
    /// A store over an existing pool. The pool should be made from
    /// [`SqliteStore::connect_options`] (WAL, busy timeout, foreign keys); [`SqliteStore::connect`]
    /// does that.
    pub fn new(pool: SqlitePool) -> Self {
        let (wake, _) = broadcast::channel(WAKE_CAPACITY);
        Self {
            pool,
            shared: Arc::new(Shared {
                write: Mutex::new(()),
                wake,
            }),
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }

    /// Opens (and creates, with its parent directory, if missing) the database at a
    /// `sqlite://path?mode=rwc` URL or a plain file path, with a pool of 8 connections.
    /// Call [`Store::migrate`] before use.
    ///
    /// # Errors
    /// When the URL is malformed, the directory cannot be created or the file cannot be opened.
    pub async fn connect(url_or_path: &str) -> Result<Self, StoreError> {
        let options = Self::connect_options(url_or_path)?;
        create_parent_dir(options.get_filename())?;
        // Switching a fresh file to WAL takes an exclusive lock and SQLite answers "database is
        // locked" at once (without its busy handler) when another process does the same: retry.
        let mut attempt = 0u32;
        loop {
            let result = SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .connect_with(options.clone())
                .await;
            match result {
                Ok(pool) => return Ok(Self::new(pool)),
                Err(e) if attempt < 50 && is_locked(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 + fastrand::u64(0..30))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The connection settings [`SqliteStore::connect`] uses, for callers that size their own
    /// pool: WAL journal mode, a 5 s busy timeout, foreign keys on, `synchronous = FULL` (a
    /// committed transition survives a power loss). A plain path, or a URL without `mode=`, is
    /// created if missing.
    ///
    /// # Errors
    /// When the URL is malformed or the path is empty.
    pub fn connect_options(url_or_path: &str) -> Result<SqliteConnectOptions, StoreError> {
        let options = if url_or_path.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url_or_path)?;
            if url_or_path.contains("mode=") {
                options
            } else {
                options.create_if_missing(true)
            }
        } else if url_or_path.trim().is_empty() {
            return Err(StoreError::Database(sqlx::Error::Configuration(
                "the SQLite database path is empty".into(),
            )));
        } else {
            SqliteConnectOptions::new()
                .filename(url_or_path)
                .create_if_missing(true)
        };
        Ok(options
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full))
    }

    /// Sets how often listeners poll for other processes' work and signals (default 200 ms):
    /// shorter means less latency across processes and more idle reads.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How often listeners poll for other processes' work and signals.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// The underlying pool (for tests and tools that read the journal directly).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn write(&self) -> Result<Write<'_>, StoreError> {
        let guard = self.shared.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let now = db_now(&mut tx).await?;
        Ok(Write {
            tx,
            now,
            _guard: guard,
        })
    }

    fn hint(&self, wake: Wake) {
        // No receiver is fine: hints are best effort.
        let _ = self.shared.wake.send(wake);
    }
}

/// Creates the directory of a database file if missing (not for in-memory databases).
fn create_parent_dir(file: &Path) -> Result<(), StoreError> {
    let name = file.to_string_lossy();
    if name.is_empty() || name.starts_with(':') || name.starts_with("file:") {
        return Ok(());
    }
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))
        }
        _ => Ok(()),
    }
}

/// Formats a time in the stored, order-preserving format.
fn ts(t: DateTime<Utc>) -> String {
    if t.year() > 9999 {
        return "9999-12-31T23:59:59.999999Z".to_owned();
    }
    if t.year() < 0 {
        return "0000-01-01T00:00:00.000000Z".to_owned();
    }
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(s: &str, col: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("{col}: `{s}` is not a timestamp: {e}")))
}

fn get_ts(row: &SqliteRow, col: &str) -> Result<DateTime<Utc>, StoreError> {
    let s: String = row.try_get(col)?;
    parse_ts(&s, col)
}

fn get_opt_ts(row: &SqliteRow, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| parse_ts(&s, col)).transpose()
}

fn json<T: DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<T, StoreError> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn opt_json<T: DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<Option<T>, StoreError> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn status(row: &SqliteRow) -> Result<Status, StoreError> {
    let s: String = row.try_get("status")?;
    Status::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("unknown status `{s}`")))
}

fn record(row: &SqliteRow) -> Result<WorkflowRecord, StoreError> {
    Ok(WorkflowRecord {
        id: row.try_get("id")?,
        workflow_type: row.try_get("workflow_type")?,
        key: row.try_get("key")?,
        tag: row.try_get("tag")?,
        status: status(row)?,
        input: json(row, "input")?,
        state: json(row, "state")?,
        pending: json(row, "pending")?,
        output: opt_json(row, "output")?,
        error: opt_json(row, "error")?,
        version: row.try_get("version")?,
        cancel_requested: row.try_get("cancel_requested")?,
        run_at: get_opt_ts(row, "run_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_epoch: row.try_get("lease_epoch")?,
        lease_expires_at: get_opt_ts(row, "lease_expires_at")?,
        heartbeat_details: opt_json(row, "heartbeat_details")?,
        signals_unconsumed: row.try_get("signals_unconsumed")?,
        created_at: get_ts(row, "created_at")?,
        updated_at: get_ts(row, "updated_at")?,
        finished_at: get_opt_ts(row, "finished_at")?,
    })
}

fn access_token(row: &SqliteRow) -> Result<AccessToken, StoreError> {
    Ok(AccessToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: get_ts(row, "created_at")?,
        revoked_at: get_opt_ts(row, "revoked_at")?,
    })
}

/// The database clock, read on `conn`.
async fn db_now(conn: &mut SqliteConnection) -> Result<DateTime<Utc>, StoreError> {
    let s: String = sqlx::query_scalar("select strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
        .fetch_one(conn)
        .await?;
    parse_ts(&s, "now")
}

async fn insert_events(
    conn: &mut SqliteConnection,
    id: WorkflowId,
    first_seq: i64,
    events: &[EventKind],
    now: &str,
) -> Result<(), StoreError> {
    for (i, event) in events.iter().enumerate() {
        sqlx::query(
            "insert into events (workflow_id, seq, kind, payload, created_at) values (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(id)
        .bind(first_seq + i as i64)
        .bind(event.name())
        .bind(to_json(event)?)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The conditions of a [`ListFilter`] but status and cursor, on parameters `?1..=?7`
/// (see [`bind_filter`]). Times compare as text (the stored format sorts as time).
const FILTER: &str = "(?1 is null or workflow_type = ?1)
    and (?2 is null or tag = ?2)
    and (?3 is null or created_at >= ?3)
    and (?4 is null or created_at < ?4)
    and (?5 is null or instr(lower(key), ?5) > 0
         or (?6 is not null and id between ?6 and ?7))";

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds `?1..=?7` of [`FILTER`].
fn bind_filter<'q>(query: SqliteQuery<'q>, f: &'q ListFilter) -> SqliteQuery<'q> {
    let search = f.search.as_ref();
    query
        .bind(f.workflow_type.as_deref())
        .bind(f.tag.as_deref())
        .bind(f.created_after.map(ts))
        .bind(f.created_before.map(ts))
        .bind(search.map(|s| s.text.as_str()))
        .bind(search.and_then(|s| s.id_range).map(|r| r.0))
        .bind(search.and_then(|s| s.id_range).map(|r| r.1))
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // Inside one immediate transaction: processes starting at once migrate one after another
        // (sqlx takes no lock on SQLite), and the second finds nothing left to do.
        let mut w = self.write().await?;
        // `run_direct`: sqlx's workaround for `run`'s "Acquire is not general enough" error.
        MIGRATOR.run_direct(&mut *w.tx).await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_workflow(&self, new: NewWorkflow) -> Result<Created, StoreError> {
        let mut w = self.write().await?;
        let now = ts(w.now);
        let inserted: Option<WorkflowId> = sqlx::query_scalar(
            "insert into workflows
               (id, workflow_type, key, status, input, state, pending, output, error, version,
                next_call_seq, run_at, created_at, updated_at, finished_at, tag)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13,
                     case when ?14 then ?13 end, ?15)
             on conflict (workflow_type, key) do nothing
             returning id",
        )
        .bind(new.id)
        .bind(&new.workflow_type)
        .bind(&new.key)
        .bind(new.status.as_str())
        .bind(to_json(&new.input)?)
        .bind(to_json(&new.state)?)
        .bind(to_json(&new.pending)?)
        .bind(new.output.as_ref().map(to_json).transpose()?)
        .bind(new.error.as_ref().map(to_json).transpose()?)
        .bind(new.events.len() as i64)
        .bind(new.next_call_seq)
        .bind(new.run_at.map(ts))
        .bind(&now)
        .bind(new.status.is_terminal())
        .bind(&new.tag)
        .fetch_optional(&mut *w.tx)
        .await?;
        let Some(id) = inserted else {
            let id: WorkflowId = sqlx::query_scalar(
                "select id from workflows where workflow_type = ?1 and key = ?2",
            )
            .bind(&new.workflow_type)
            .bind(&new.key)
            .fetch_one(&mut *w.tx)
            .await?;
            w.tx.rollback().await?;
            return Ok(Created { id, created: false });
        };
        insert_events(&mut w.tx, id, 1, &new.events, &now).await?;
        w.tx.commit().await?;
        if new.run_at.is_some() {
            self.hint(Wake::Work);
        }
        Ok(Created { id, created: true })
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>, StoreError> {
        let row = sqlx::query("select * from workflows where id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(record).transpose()
    }

    async fn list_workflows(&self, filter: &ListFilter) -> Result<Vec<WorkflowRecord>, StoreError> {
        let sql = format!(
            "select * from workflows
             where {FILTER}
               and (?8 is null or status = ?8)
               and (?9 is null or id < ?9)
             order by id desc
             limit ?10"
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
        let sql =
            format!("select status, count(*) as n from workflows where {FILTER} group by status");
        let rows = bind_filter(sqlx::query(&sql), filter)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((status(r)?, r.try_get("n")?)))
            .collect()
    }

    async fn read_feed(&self, q: &FeedQuery) -> Result<FeedRead, StoreError> {
        // One writer at a time: ids become visible in order, a gap is never filled later.
        // Two shapes, so one workflow's events are found by its index, not a scan of `gid`.
        let workflow = if q.workflow.is_some() {
            "and e.workflow_id = ?3"
        } else {
            "and ?3 is null"
        };
        let sql = format!(
            "select e.gid, e.workflow_id, w.workflow_type, e.seq, e.kind,
                    case when e.kind = 'transitioned' then json_extract(e.payload, '$.status') end as status,
                    e.created_at
             from events e join workflows w on w.id = e.workflow_id
             where e.gid > ?1 and (?2 is null or e.gid <= ?2) {workflow}
             order by e.gid
             limit ?4"
        );
        let rows = sqlx::query(&sql)
            .bind(q.after)
            .bind(q.upto)
            .bind(q.workflow)
            .bind(q.limit)
            .fetch_all(&self.pool)
            .await?;
        let events = rows
            .iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                let transitioned: Option<String> = r.try_get("status")?;
                Ok(FeedEvent {
                    gid: r.try_get("gid")?,
                    workflow_id: r.try_get("workflow_id")?,
                    workflow_type: r.try_get("workflow_type")?,
                    seq: r.try_get("seq")?,
                    status: FeedEvent::status_of(&kind, transitioned.as_deref()),
                    kind,
                    created_at: get_ts(r, "created_at")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(FeedRead {
            events,
            in_flight: None,
        })
    }

    async fn feed_head(&self) -> Result<FeedHead, StoreError> {
        let max_gid: i64 = sqlx::query_scalar("select coalesce(max(gid), 0) from events")
            .fetch_one(&self.pool)
            .await?;
        Ok(FeedHead {
            max_gid,
            in_flight: None,
        })
    }

    async fn history(
        &self,
        id: WorkflowId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "select seq, payload, created_at from events
             where workflow_id = ?1 and seq > ?2 order by seq limit ?3",
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
                    created_at: get_ts(r, "created_at")?,
                    kind: json(r, "payload")?,
                })
            })
            .collect()
    }

    async fn attempts(&self, id: WorkflowId) -> Result<Vec<ActivityAttempt>, StoreError> {
        let rows = sqlx::query(
            "select * from activity_attempts where workflow_id = ?1 order by call_seq, attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let attempt: i64 = r.try_get("attempt")?;
                Ok(ActivityAttempt {
                    call_seq: r.try_get("call_seq")?,
                    attempt: u32::try_from(attempt)
                        .map_err(|_| StoreError::Corrupt(format!("attempt {attempt}")))?,
                    activity_name: r.try_get("activity_name")?,
                    worker_id: r.try_get("worker_id")?,
                    outcome: r.try_get("outcome")?,
                    error: opt_json(r, "error")?,
                    started_at: get_opt_ts(r, "started_at")?,
                    finished_at: get_ts(r, "finished_at")?,
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
        let mut w = self.write().await?;
        let now = ts(w.now);
        let row = sqlx::query("select status from workflows where id = ?1")
            .bind(id)
            .fetch_optional(&mut *w.tx)
            .await?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(id));
        };
        let current = status(&row)?;
        if current.is_terminal() {
            return Err(StoreError::Finished(id, current));
        }
        // An unleased workflow becomes due now; a leased one is told by its holder's next commit.
        let seq: i64 = sqlx::query_scalar(
            "update workflows
             set signal_seq = signal_seq + 1, signals_unconsumed = signals_unconsumed + 1,
                 run_at = case when lease_owner is null then ?2 else run_at end,
                 updated_at = ?2
             where id = ?1 returning signal_seq",
        )
        .bind(id)
        .bind(&now)
        .fetch_one(&mut *w.tx)
        .await?;
        sqlx::query(
            "insert into signals (workflow_id, seq, name, payload, created_at) values (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(id)
        .bind(seq)
        .bind(name)
        .bind(to_json(payload)?)
        .bind(&now)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        self.hint(Wake::Signal {
            id,
            name: name.to_owned(),
        });
        Ok(seq)
    }

    async fn claim(
        &self,
        worker: WorkerId,
        workflow_types: &[String],
        limit: usize,
        lease_ttl: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        if limit == 0 || workflow_types.is_empty() {
            return Ok(Vec::new());
        }
        let types = to_json(&workflow_types)?;
        // A read first: an idle poll takes no write lock.
        let any_due: bool = sqlx::query_scalar(concat!(
            "select exists (select 1 from workflows
               where run_at <= ",
            now_sql!(),
            " and (lease_owner is null or lease_expires_at < ",
            now_sql!(),
            ") and workflow_type in (select value from json_each(?1)))"
        ))
        .bind(&types)
        .fetch_one(&self.pool)
        .await?;
        if !any_due {
            return Ok(Vec::new());
        }

        let mut w = self.write().await?;
        let now = ts(w.now);
        let expires = ts(after(w.now, lease_ttl));
        let due: Vec<(WorkflowId, Option<WorkerId>)> = sqlx::query_as(
            "select id, lease_owner from workflows
             where run_at <= ?1 and (lease_owner is null or lease_expires_at < ?1)
               and workflow_type in (select value from json_each(?2))
             order by run_at
             limit ?3",
        )
        .bind(&now)
        .bind(&types)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *w.tx)
        .await?;
        let mut claimed = Vec::with_capacity(due.len());
        for (id, prev_owner) in due {
            let row = sqlx::query(
                "update workflows
                 set lease_owner = ?2, lease_epoch = lease_epoch + 1, lease_expires_at = ?3
                 where id = ?1
                 returning *",
            )
            .bind(id)
            .bind(worker)
            .bind(&expires)
            .fetch_one(&mut *w.tx)
            .await?;
            claimed.push(Claimed {
                record: record(&row)?,
                next_call_seq: row.try_get("next_call_seq")?,
                signal_seq: row.try_get("signal_seq")?,
                signal_seen: row.try_get("signal_seen")?,
                recovered_from: prev_owner,
                db_now: w.now,
            });
        }
        w.tx.commit().await?;
        Ok(claimed)
    }

    async fn unconsumed_signals(&self, id: WorkflowId) -> Result<Vec<StoredSignal>, StoreError> {
        let rows = sqlx::query(
            "select seq, name, payload from signals
             where workflow_id = ?1 and consumed_at is null order by seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredSignal {
                    seq: r.try_get("seq")?,
                    name: r.try_get("name")?,
                    payload: json(r, "payload")?,
                })
            })
            .collect()
    }

    async fn commit(&self, c: StepCommit) -> Result<Committed, StoreError> {
        let new_version = c.expected_version + c.events.len() as i64;
        let (release, run_at) = match c.lease {
            LeaseAfter::Keep => (false, None),
            LeaseAfter::Release { run_at } => (true, run_at),
        };
        let mut w = self.write().await?;
        let now = ts(w.now);
        // The fence, as on PostgreSQL: nothing is written unless this worker still holds the
        // lease at this epoch and nobody else moved the version. While the lease is kept,
        // `run_at` keeps its value so a recovered workflow keeps its place in the queue.
        let row = sqlx::query(
            "update workflows set
                status = ?5, state = ?6, pending = ?7, output = ?8, error = ?9, version = ?10,
                next_call_seq = ?11, cancel_requested = ?12,
                signal_seen = ?13, signals_unconsumed = signals_unconsumed - ?14,
                lease_owner = case when ?15 then null else lease_owner end,
                lease_expires_at = case when ?15 then null else ?16 end,
                run_at = case when not ?15 then coalesce(run_at, ?21)
                              when signal_seq > ?13 then ?21
                              else ?17 end,
                heartbeat_details = case when ?18 then null else coalesce(?20, heartbeat_details) end,
                heartbeat_at = case when ?18 then null
                                    when ?20 is not null then ?21
                                    else heartbeat_at end,
                finished_at = case when ?19 then coalesce(finished_at, ?21) end,
                updated_at = ?21
             where id = ?1 and lease_owner = ?2 and lease_epoch = ?3 and version = ?4
             returning signal_seq",
        )
        .bind(c.id)
        .bind(c.worker)
        .bind(c.epoch)
        .bind(c.expected_version)
        .bind(c.status.as_str())
        .bind(to_json(&c.state)?)
        .bind(to_json(&c.pending)?)
        .bind(c.output.as_ref().map(to_json).transpose()?)
        .bind(c.error.as_ref().map(to_json).transpose()?)
        .bind(new_version)
        .bind(c.next_call_seq)
        .bind(c.cancel_requested)
        .bind(c.signal_seen)
        .bind(c.consumed_signals.len() as i64)
        .bind(release)
        .bind(ts(after(w.now, c.lease_ttl)))
        .bind(run_at.map(ts))
        .bind(c.clear_heartbeat)
        .bind(c.status.is_terminal())
        .bind(c.heartbeat_details.as_ref().map(to_json).transpose()?)
        .bind(&now)
        .fetch_optional(&mut *w.tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::Fenced);
        };
        let signal_seq: i64 = row.try_get("signal_seq")?;
        insert_events(&mut w.tx, c.id, c.expected_version + 1, &c.events, &now).await?;
        for a in &c.attempts {
            sqlx::query(
                "insert into activity_attempts
                   (workflow_id, call_seq, attempt, activity_name, worker_id, outcome, error,
                    started_at, finished_at, duration_ms)
                 values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .bind(c.id)
            .bind(a.call_seq)
            .bind(i64::from(a.attempt))
            .bind(&a.activity_name)
            .bind(a.worker_id)
            .bind(a.outcome.as_str())
            .bind(a.error.as_ref().map(to_json).transpose()?)
            .bind(a.started_at.map(ts))
            .bind(&now)
            .bind(a.duration_ms)
            .execute(&mut *w.tx)
            .await?;
        }
        if !c.consumed_signals.is_empty() {
            sqlx::query(
                "update signals set consumed_at = ?3, consumed_in = ?4
                 where workflow_id = ?1 and seq in (select value from json_each(?2))
                   and consumed_at is null",
            )
            .bind(c.id)
            .bind(to_json(&c.consumed_signals)?)
            .bind(&now)
            .bind(new_version)
            .execute(&mut *w.tx)
            .await?;
        }
        w.tx.commit().await?;
        Ok(Committed {
            version: new_version,
            signal_seq,
            db_now: w.now,
        })
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
        let mut w = self.write().await?;
        let now = ts(w.now);
        let expires = ts(after(w.now, lease_ttl));
        let mut renewed = Vec::with_capacity(leases.len());
        for l in leases {
            let (call_seq, details) = match &l.heartbeat {
                Some((call_seq, details)) => (Some(*call_seq), Some(to_json(details)?)),
                None => (None, None),
            };
            // Heartbeat details are written only while their call is still the pending one.
            let row = sqlx::query(
                "update workflows
                 set lease_expires_at = ?4,
                     heartbeat_details = case when json_extract(pending, '$.call_seq') = ?5
                                              then ?6 else heartbeat_details end,
                     heartbeat_at = case when json_extract(pending, '$.call_seq') = ?5
                                         then ?7 else heartbeat_at end
                 where id = ?1 and lease_owner = ?2 and lease_epoch = ?3
                 returning id,
                   exists (select 1 from signals s
                           where s.workflow_id = workflows.id and s.consumed_at is null
                             and s.name = 'cancel') and not cancel_requested as cancel_pending,
                   exists (select 1 from signals s
                           where s.workflow_id = workflows.id and s.consumed_at is null
                             and s.name = 'pause') as pause_pending",
            )
            .bind(l.id)
            .bind(worker)
            .bind(l.epoch)
            .bind(&expires)
            .bind(call_seq)
            .bind(details)
            .bind(&now)
            .fetch_optional(&mut *w.tx)
            .await?;
            if let Some(r) = row {
                renewed.push(Renewed {
                    id: r.try_get("id")?,
                    cancel_pending: r.try_get("cancel_pending")?,
                    pause_pending: r.try_get("pause_pending")?,
                });
            }
        }
        w.tx.commit().await?;
        Ok(renewed)
    }

    async fn release_leases(
        &self,
        worker: WorkerId,
        leases: &[(WorkflowId, i64)],
    ) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut w = self.write().await?;
        for (id, epoch) in leases {
            sqlx::query(
                "update workflows set lease_owner = null, lease_expires_at = null
                 where id = ?1 and lease_owner = ?2 and lease_epoch = ?3",
            )
            .bind(id)
            .bind(worker)
            .bind(epoch)
            .execute(&mut *w.tx)
            .await?;
        }
        w.tx.commit().await?;
        self.hint(Wake::Work);
        Ok(())
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let now = ts(w.now);
        sqlx::query(
            "insert into workers (id, host, pid, slots, lease_ttl_ms, started_at, heartbeat_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )
        .bind(info.id)
        .bind(&info.host)
        .bind(info.pid)
        .bind(info.slots)
        .bind(i64::try_from(info.lease_ttl.as_millis()).unwrap_or(i64::MAX))
        .bind(&now)
        .execute(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn worker_heartbeat(&self, worker: WorkerId, slots_used: i32) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let now = ts(w.now);
        sqlx::query("update workers set heartbeat_at = ?3, slots_used = ?2 where id = ?1")
            .bind(worker)
            .bind(slots_used)
            .bind(&now)
            .execute(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn worker_stopped(&self, worker: WorkerId) -> Result<(), StoreError> {
        let mut w = self.write().await?;
        let now = ts(w.now);
        sqlx::query("update workers set stopped_at = ?2, slots_used = 0 where id = ?1")
            .bind(worker)
            .bind(&now)
            .execute(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let now = db_now(&mut conn).await?;
        let rows = sqlx::query("select * from workers order by started_at desc limit 500")
            .fetch_all(&mut *conn)
            .await?;
        rows.iter()
            .map(|r| {
                let heartbeat_at = get_ts(r, "heartbeat_at")?;
                let stopped_at = get_opt_ts(r, "stopped_at")?;
                let lease_ttl_ms: i64 = r.try_get("lease_ttl_ms")?;
                Ok(WorkerRecord {
                    id: r.try_get("id")?,
                    host: r.try_get("host")?,
                    pid: r.try_get("pid")?,
                    slots: r.try_get("slots")?,
                    slots_used: r.try_get("slots_used")?,
                    lease_ttl_ms,
                    started_at: get_ts(r, "started_at")?,
                    heartbeat_at,
                    stopped_at,
                    alive: stopped_at.is_none()
                        && after(
                            heartbeat_at,
                            Duration::from_millis(u64::try_from(lease_ttl_ms).unwrap_or(0)),
                        ) > now,
                })
            })
            .collect()
    }

    async fn listen(&self) -> Result<Box<dyn WakeListener>, StoreError> {
        // Subscribe before reading the cursor: a signal in between is heard twice, never missed.
        let local = self.shared.wake.subscribe();
        let last_signal: i64 = sqlx::query_scalar("select coalesce(max(rowid), 0) from signals")
            .fetch_one(&self.pool)
            .await?;
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Box::new(SqliteWakeListener {
            pool: self.pool.clone(),
            local: Some(local),
            tick,
            last_signal,
            queued: VecDeque::new(),
        }))
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let exists: bool = sqlx::query_scalar(
            "select exists (select 1 from sqlite_master where type = 'table' and name = '_sqlx_migrations')",
        )
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
        let mut conn = self.pool.acquire().await?;
        let now = db_now(&mut conn).await?;
        let now_text = ts(now);
        let (due_unclaimed, oldest): (i64, Option<String>) = sqlx::query_as(
            "select count(*), min(run_at) from workflows
             where run_at <= ?1 and (lease_owner is null or lease_expires_at < ?1)",
        )
        .bind(&now_text)
        .fetch_one(&mut *conn)
        .await?;
        let oldest_due_seconds = match oldest {
            Some(t) => {
                ((now - parse_ts(&t, "run_at")?).num_milliseconds() as f64 / 1000.0).max(0.0)
            }
            None => 0.0,
        };
        let workers: Vec<(String, i64)> = sqlx::query_as(
            "select heartbeat_at, lease_ttl_ms from workers where stopped_at is null",
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut live_workers = 0;
        for (heartbeat_at, ttl_ms) in workers {
            let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
            if after(parse_ts(&heartbeat_at, "heartbeat_at")?, ttl) > now {
                live_workers += 1;
            }
        }
        Ok(StoreGauges {
            due_unclaimed,
            oldest_due_seconds,
            live_workers,
        })
    }

    async fn create_access_token(
        &self,
        id: uuid::Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<Option<AccessToken>, StoreError> {
        let mut w = self.write().await?;
        let now = ts(w.now);
        let row = sqlx::query(
            "insert into access_tokens (id, name, token_hash, created_at) values (?1, ?2, ?3, ?4)
             on conflict do nothing
             returning *",
        )
        .bind(id)
        .bind(name)
        .bind(token_hash)
        .bind(&now)
        .fetch_optional(&mut *w.tx)
        .await?;
        w.tx.commit().await?;
        row.as_ref().map(access_token).transpose()
    }

    async fn replace_access_token(
        &self,
        id: uuid::Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<AccessToken, StoreError> {
        let mut w = self.write().await?;
        let now = ts(w.now);
        sqlx::query(
            "update access_tokens set revoked_at = ?3
             where name = ?1 and revoked_at is null
               and not exists (select 1 from access_tokens t where t.token_hash = ?2)",
        )
        .bind(name)
        .bind(token_hash)
        .bind(&now)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "insert into access_tokens (id, name, token_hash, created_at) values (?1, ?2, ?3, ?4)
             on conflict do nothing",
        )
        .bind(id)
        .bind(name)
        .bind(token_hash)
        .bind(&now)
        .execute(&mut *w.tx)
        .await?;
        let row = sqlx::query("select * from access_tokens where token_hash = ?1")
            .bind(token_hash)
            .fetch_one(&mut *w.tx)
            .await?;
        w.tx.commit().await?;
        access_token(&row)
    }

    async fn access_tokens(&self) -> Result<Vec<AccessToken>, StoreError> {
        let rows = sqlx::query("select * from access_tokens order by created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(access_token).collect()
    }

    async fn find_access_token(&self, token_hash: &str) -> Result<Option<AccessToken>, StoreError> {
        let row = sqlx::query("select * from access_tokens where token_hash = ?1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(access_token).transpose()
    }

    async fn revoke_access_token(
        &self,
        id_or_name: &str,
    ) -> Result<Option<AccessToken>, StoreError> {
        let mut w = self.write().await?;
        let now = ts(w.now);
        let row = match uuid::Uuid::parse_str(id_or_name) {
            Ok(id) => {
                sqlx::query(
                    "update access_tokens set revoked_at = coalesce(revoked_at, ?2)
                     where id = ?1 returning *",
                )
                .bind(id)
                .bind(&now)
                .fetch_optional(&mut *w.tx)
                .await?
            }
            Err(_) => {
                sqlx::query(
                    "update access_tokens set revoked_at = ?2
                     where name = ?1 and revoked_at is null returning *",
                )
                .bind(id_or_name)
                .bind(&now)
                .fetch_optional(&mut *w.tx)
                .await?
            }
        };
        w.tx.commit().await?;
        row.as_ref().map(access_token).transpose()
    }
}

/// `t + d`, saturating (a lease TTL comes from configuration).
fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Hints from this process at once, and from other processes by polling.
struct SqliteWakeListener {
    pool: SqlitePool,
    /// `None` once the store (the sender) is gone; polling goes on.
    local: Option<broadcast::Receiver<Wake>>,
    tick: tokio::time::Interval,
    /// The rowid of the newest signal already reported.
    last_signal: i64,
    queued: VecDeque<Wake>,
}

impl SqliteWakeListener {
    /// Queues a [`Wake::Signal`] for every signal stored since the last poll, by any process.
    async fn poll_signals(&mut self) -> Result<(), StoreError> {
        let rows: Vec<(i64, WorkflowId, String)> = sqlx::query_as(
            "select rowid, workflow_id, name from signals where rowid > ?1 order by rowid limit 1000",
        )
        .bind(self.last_signal)
        .fetch_all(&self.pool)
        .await?;
        for (rowid, id, name) in rows {
            self.last_signal = self.last_signal.max(rowid);
            self.queued.push_back(Wake::Signal { id, name });
        }
        Ok(())
    }
}

async fn next_local(local: &mut Option<broadcast::Receiver<Wake>>) -> Option<Wake> {
    let Some(rx) = local else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(wake) => Some(wake),
        Err(broadcast::error::RecvError::Lagged(_)) => Some(Wake::Reconnected),
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

#[async_trait]
impl WakeListener for SqliteWakeListener {
    async fn recv(&mut self) -> Result<Wake, StoreError> {
        // Cancellation safe: a dropped poll leaves the cursor where it was.
        loop {
            if let Some(wake) = self.queued.pop_front() {
                return Ok(wake);
            }
            tokio::select! {
                wake = next_local(&mut self.local) => match wake {
                    Some(wake) => return Ok(wake),
                    None => self.local = None,
                },
                _ = self.tick.tick() => {
                    self.poll_signals().await?;
                    return Ok(Wake::Work);
                }
            }
        }
    }
}

/// Whether SQLite refused for a lock held by another connection (SQLITE_BUSY / SQLITE_LOCKED).
fn is_locked(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn stored_times_are_fixed_width_and_sort_as_text() {
        let times = [
            Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).single(),
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single(),
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
                .single()
                .map(|t| t + chrono::Duration::nanoseconds(1_500)),
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
                .single()
                .map(|t| t + chrono::Duration::milliseconds(7)),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).single(),
        ]
        .map(|t| t.expect("valid time"));
        let stored: Vec<String> = times.iter().map(|t| ts(*t)).collect();
        assert!(stored.iter().all(|s| s.len() == 27), "{stored:?}");
        assert!(stored.windows(2).all(|w| w[0] < w[1]), "{stored:?}");
        assert_eq!(stored[2], "2026-01-02T03:04:05.000001Z");
        // Microsecond precision round-trips; finer precision is truncated.
        let back = parse_ts(&stored[3], "t").expect("parses");
        assert_eq!(back, times[3]);
        // The database clock's format sorts with them.
        let db_now = "2026-01-02T03:04:05.007000Z";
        assert_eq!(db_now, stored[3]);
    }

    #[test]
    fn times_beyond_year_9999_clamp_to_the_last_instant() {
        assert_eq!(ts(DateTime::<Utc>::MAX_UTC), "9999-12-31T23:59:59.999999Z");
        assert_eq!(ts(DateTime::<Utc>::MIN_UTC), "0000-01-01T00:00:00.000000Z");
        assert!(ts(DateTime::<Utc>::MAX_UTC) > ts(Utc::now()));
    }

    #[test]
    fn connect_options_accept_urls_and_paths() {
        for ok in [
            "sqlite://data/k.db?mode=rwc",
            "sqlite:k.db",
            "data/k.db",
            "/tmp/x/k.db",
        ] {
            let o = SqliteStore::connect_options(ok).expect(ok);
            assert!(o.get_filename().to_string_lossy().ends_with("k.db"), "{ok}");
        }
        assert!(SqliteStore::connect_options("").is_err());
        assert!(SqliteStore::connect_options("sqlite://x.db?mode=bogus").is_err());
    }
}
