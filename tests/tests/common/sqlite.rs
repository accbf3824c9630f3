//! The SQLite counterparts of the PostgreSQL helpers in `mod.rs`: a fresh journal file per test
//! and the same journal checks, read straight from the file with sqlx while `kodomasu`
//! processes write it (WAL: readers never block writers).
//!
//! Stored formats (migrations/sqlite): ids are 16-byte UUID blobs, times fixed-width UTC text
//! (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), JSON values text.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// A directory with one SQLite journal file for one test; removed at the end unless the test
/// failed (then it is kept for inspection and its path printed).
#[derive(Debug)]
pub struct SqliteFile {
    pub dir: PathBuf,
    pub path: PathBuf,
    /// `sqlite://<dir>/kodomasu.db`, as `DATABASE_URL`.
    pub url: String,
    pool: Option<SqlitePool>,
    keep: bool,
}

impl SqliteFile {
    /// A fresh directory; the file is created by the first `kodomasu` process that opens it
    /// (the processes apply the migrations themselves).
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "kodomasu-{prefix}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("kodomasu.db");
        let url = format!("sqlite://{}", path.display());
        Ok(Self {
            dir,
            path,
            url,
            pool: None,
            keep: true,
        })
    }

    /// A read-only pool on the file, opened once it exists with the engine's tables.
    pub async fn pool(&mut self) -> anyhow::Result<SqlitePool> {
        if let Some(pool) = &self.pool {
            return Ok(pool.clone());
        }
        for _ in 0..300 {
            if self.path.exists() {
                let options = SqliteConnectOptions::new()
                    .filename(&self.path)
                    .read_only(true)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await?;
                let tables: i64 = sqlx::query_scalar(
                    "select count(*) from sqlite_master where type = 'table' and name in ('workflows', 'events', 'workers')",
                )
                .fetch_one(&pool)
                .await?;
                if tables == 3 {
                    self.pool = Some(pool.clone());
                    return Ok(pool);
                }
                pool.close().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} never got the engine's tables", self.path.display())
    }

    /// Marks the test as passed: the directory is removed on drop.
    pub fn passed(&mut self) {
        self.keep = false;
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        if self.keep {
            eprintln!(
                "kept the SQLite journal of a failed test: {}",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn uuid_of(bytes: &[u8]) -> anyhow::Result<uuid::Uuid> {
    uuid::Uuid::from_slice(bytes).context("a stored id is not a 16-byte UUID")
}

fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("`{s}` is not a stored time"))?
        .with_timezone(&Utc))
}

/// A time in the stored, order-preserving text format.
fn stored_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// SQLite's clock, as the store reads it for leases and event times.
pub async fn db_now(pool: &SqlitePool) -> anyhow::Result<DateTime<Utc>> {
    let s: String = sqlx::query_scalar("select strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'")
        .fetch_one(pool)
        .await?;
    parse_time(&s)
}

/// Waits until the worker process with `pid` has registered; returns its worker id.
pub async fn worker_id_of(pool: &SqlitePool, pid: u32) -> anyhow::Result<uuid::Uuid> {
    for _ in 0..400 {
        let id: Option<Vec<u8>> = sqlx::query_scalar(
            "select id from workers where pid = ? and stopped_at is null order by started_at desc limit 1",
        )
        .bind(i64::from(pid))
        .fetch_optional(pool)
        .await?;
        if let Some(id) = id {
            return uuid_of(&id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("worker process {pid} never registered")
}

/// Running workflows whose lease `worker` holds now.
pub async fn leased_by(pool: &SqlitePool, worker: uuid::Uuid) -> anyhow::Result<Vec<uuid::Uuid>> {
    let ids: Vec<Vec<u8>> =
        sqlx::query_scalar("select id from workflows where lease_owner = ? and status = 'running'")
            .bind(worker.as_bytes().to_vec())
            .fetch_all(pool)
            .await?;
    ids.iter().map(|id| uuid_of(id)).collect()
}

/// Counts of workflows by status.
pub async fn status_counts(pool: &SqlitePool) -> anyhow::Result<Vec<(String, i64)>> {
    let rows =
        sqlx::query("select status, count(*) as n from workflows group by status order by status")
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
        .collect()
}

/// Waits until no workflow is running or paused, printing progress; fails after `timeout`.
pub async fn wait_all_terminal(pool: &SqlitePool, timeout: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut last_print = std::time::Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "select count(*) from workflows where status in ('running', 'paused')",
        )
        .fetch_one(pool)
        .await?;
        if open == 0 {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{open} workflows still open after {timeout:?}: {:?}",
                status_counts(pool).await?
            );
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!("  waiting: {:?}", status_counts(pool).await?);
            last_print = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The same checks as [`super::assert_journals_sound`], over the SQLite file: seqs are
/// 1..=version without gaps, each call's result is recorded exactly once, every completed
/// `demo.chain` recorded one result per step, and each snapshot's state equals the state of
/// its last journaled transition (compared as JSON values).
pub async fn assert_journals_sound(pool: &SqlitePool) -> anyhow::Result<()> {
    struct Snapshot {
        workflow_type: String,
        status: String,
        version: i64,
        input: Value,
        state: Value,
    }
    let mut snapshots = HashMap::new();
    for row in sqlx::query("select id, workflow_type, status, version, input, state from workflows")
        .fetch_all(pool)
        .await?
    {
        let id: Vec<u8> = row.try_get("id")?;
        let input: String = row.try_get("input")?;
        let state: String = row.try_get("state")?;
        snapshots.insert(
            uuid_of(&id)?,
            Snapshot {
                workflow_type: row.try_get("workflow_type")?,
                status: row.try_get("status")?,
                version: row.try_get("version")?,
                input: serde_json::from_str(&input)?,
                state: serde_json::from_str(&state)?,
            },
        );
    }
    // Per workflow: the seqs in order, call seqs with a result, the last transition's state.
    let mut seqs: HashMap<uuid::Uuid, Vec<i64>> = HashMap::new();
    let mut results: HashMap<uuid::Uuid, BTreeMap<i64, u32>> = HashMap::new();
    let mut last_state: HashMap<uuid::Uuid, Value> = HashMap::new();
    for row in
        sqlx::query("select workflow_id, seq, kind, payload from events order by workflow_id, seq")
            .fetch_all(pool)
            .await?
    {
        let id = uuid_of(&row.try_get::<Vec<u8>, _>("workflow_id")?)?;
        let seq: i64 = row.try_get("seq")?;
        let kind: String = row.try_get("kind")?;
        seqs.entry(id).or_default().push(seq);
        match kind.as_str() {
            "activity_completed" | "transitioned" => {
                let payload: Value = serde_json::from_str(&row.try_get::<String, _>("payload")?)?;
                if kind == "transitioned" {
                    last_state.insert(id, payload["state"].clone());
                } else {
                    let call = payload["call_seq"]
                        .as_i64()
                        .context("activity_completed without call_seq")?;
                    *results.entry(id).or_default().entry(call).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let mut gaps = 0;
    let mut duplicated = 0;
    let mut missing = 0;
    let mut mismatched = 0;
    for (id, s) in &snapshots {
        let log = seqs.get(id).map(Vec::as_slice).unwrap_or_default();
        let expected: Vec<i64> = (1..=s.version).collect();
        if log != expected.as_slice() {
            gaps += 1;
        }
        let calls = results.get(id);
        duplicated += calls.map_or(0, |c| c.values().filter(|n| **n > 1).count());
        if s.workflow_type == "demo.chain" && s.status == "completed" {
            let steps = s.input["steps"].as_u64().unwrap_or_default() as usize;
            if calls.map_or(0, BTreeMap::len) != steps {
                missing += 1;
            }
        }
        if last_state.get(id).is_some_and(|last| *last != s.state) {
            mismatched += 1;
        }
    }
    if gaps != 0 {
        bail!("{gaps} workflows have a journal with gaps or a version that is not the last seq");
    }
    if duplicated != 0 {
        bail!("{duplicated} activity calls have more than one recorded result");
    }
    if missing != 0 {
        bail!("{missing} completed chains do not have exactly one result per step");
    }
    if mismatched != 0 {
        bail!("{mismatched} snapshots differ from the state of their last journaled transition");
    }
    Ok(())
}

/// Attempts abandoned by killed workers: bodies that may have run more than once.
pub async fn abandoned_attempts(pool: &SqlitePool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("select count(*) from activity_attempts where outcome = 'abandoned'")
            .fetch_one(pool)
            .await?,
    )
}

/// Completed activity attempts per worker process id (pid), busiest first.
pub async fn attempts_per_worker_pid(pool: &SqlitePool) -> anyhow::Result<Vec<(i64, i64)>> {
    let rows = sqlx::query(
        "select w.pid as pid, count(*) as n from activity_attempts a join workers w on w.id = a.worker_id
         where a.outcome = 'completed' group by w.pid order by n desc",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("pid")?, r.try_get("n")?)))
        .collect()
}

/// For each of `ids`, seconds from `since` to its first event after `since` (None: none yet).
pub async fn next_event_delays(
    pool: &SqlitePool,
    ids: &[uuid::Uuid],
    since: DateTime<Utc>,
) -> anyhow::Result<Vec<Option<f64>>> {
    let mut delays = Vec::with_capacity(ids.len());
    for id in ids {
        let first: Option<String> = sqlx::query_scalar(
            "select min(created_at) from events where workflow_id = ? and created_at > ?",
        )
        .bind(id.as_bytes().to_vec())
        .bind(stored_time(since))
        .fetch_one(pool)
        .await?;
        delays.push(
            first
                .map(|t| parse_time(&t))
                .transpose()?
                .map(|t| (t - since).num_microseconds().unwrap_or_default() as f64 / 1e6),
        );
    }
    Ok(delays)
}
