//! Harness of the process-level tests: a fresh database per test, the `kodomasu` binary,
//! worker and server processes, and journal checks read straight from the database.

#![allow(dead_code)]

pub mod faults;
pub mod paid;

use anyhow::{Context, bail};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

pub mod services;
pub mod sqlite;

/// The admin token every spawned `kodomasu` gets as `KODOMASU_BOOTSTRAP_TOKEN`.
pub const ADMIN_TOKEN: &str = "kdm_integration-tests-admin-token-0123456789abcdef";

/// Access settings of spawned `kodomasu` processes: the admin token above, and no MIP-003 rate
/// limit (the paid-job tests poll `/status` far more than 60 times a minute). Tests of the limit
/// itself override `KODOMASU_RATE_LIMIT_PER_MINUTE`.
pub const ACCESS_ENV: [(&str, &str); 2] = [
    ("KODOMASU_BOOTSTRAP_TOKEN", ADMIN_TOKEN),
    ("KODOMASU_RATE_LIMIT_PER_MINUTE", "0"),
];

/// An HTTP client that sends `Authorization: Bearer` [`ADMIN_TOKEN`] with every request.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}"))
            .expect("the token is a valid header value"),
    );
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// A database created for one test, dropped at the end unless the test failed.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    pub name: String,
}

fn base_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `base` with its database name replaced by `db`.
fn with_database(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let prefix = match head.rfind('/') {
        Some(i) if head[..i].contains("://") && i > head.find("://").map_or(0, |p| p + 2) => {
            &head[..i]
        }
        _ => head,
    };
    format!("{prefix}/{db}{query}")
}

impl TestDb {
    /// Creates a fresh database and applies the engine's migrations.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let admin = PgPoolOptions::new().max_connections(1).connect(&base_url()).await.context(
            "connecting to PostgreSQL; set DATABASE_URL or run the tests through scripts/test.sh",
        )?;
        let name = format!("kodomasu_{prefix}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let url = with_database(&base_url(), &name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await?;
        let store = engine::PgStore::new(pool.clone());
        engine::Store::migrate(&store).await?;
        Ok(Self { url, pool, name })
    }

    /// Drops the database; call it at the end of a passing test (a failed test keeps its
    /// database for inspection). Processes still connected are disconnected.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&base_url())
            .await?;
        sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok(())
    }
}

/// The `kodomasu` binary built next to this test binary.
pub fn kodomasu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KODOMASU_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(format!("kodomasu{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p api --bin kodomasu` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Where process logs of a test go.
pub fn log_dir(test: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("test-logs")
        .join(test);
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// Starts `kodomasu worker` on `db_url` with a short lease; its output goes to `log`.
pub fn spawn_worker(db_url: &str, log: PathBuf, lease_ttl: &str) -> anyhow::Result<Child> {
    let out = std::fs::File::create(&log)?;
    let child = Command::new(kodomasu_bin())
        .args([
            "worker",
            "--lease-ttl",
            lease_ttl,
            "--poll-interval",
            "500ms",
            "--slots",
            "16",
            "--skip-migrate",
        ])
        .env("DATABASE_URL", db_url)
        .envs(ACCESS_ENV)
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// Starts `kodomasu server` on `db_url` listening on `addr`.
pub fn spawn_server(db_url: &str, addr: &str, log: PathBuf) -> anyhow::Result<Child> {
    let out = std::fs::File::create(&log)?;
    let child = Command::new(kodomasu_bin())
        .args(["server", "--listen", addr, "--skip-migrate"])
        .env("DATABASE_URL", db_url)
        .envs(ACCESS_ENV)
        .stdout(Stdio::null())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// Waits until the worker process with `pid` has registered; returns its worker id.
pub async fn worker_id_of(pool: &PgPool, pid: u32) -> anyhow::Result<uuid::Uuid> {
    for _ in 0..200 {
        let id: Option<uuid::Uuid> =
            sqlx::query_scalar("select id from kodomasu.workers where pid = $1 and stopped_at is null order by started_at desc limit 1")
                .bind(pid as i32)
                .fetch_optional(pool)
                .await?;
        if let Some(id) = id {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("worker process {pid} never registered")
}

/// Counts of workflows by status.
pub async fn status_counts(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "select status, count(*) as n from kodomasu.workflows group by status order by status",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
        .collect()
}

/// Waits until no workflow is running or paused, printing progress; fails after `timeout`.
pub async fn wait_all_terminal(pool: &PgPool, timeout: Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut last_print = std::time::Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "select count(*) from kodomasu.workflows where status in ('running', 'paused')",
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

/// Checks every journal: seqs are 1..=version without gaps, each call's result is recorded
/// exactly once, and every completed `demo.chain` recorded one result per step.
pub async fn assert_journals_sound(pool: &PgPool) -> anyhow::Result<()> {
    let gaps: i64 = sqlx::query_scalar(
        "select count(*) from (
            select w.id from kodomasu.workflows w left join kodomasu.events e on e.workflow_id = w.id
            group by w.id, w.version
            having count(e.seq) <> w.version or coalesce(min(e.seq), 0) <> 1 or coalesce(max(e.seq), 0) <> w.version
         ) g",
    )
    .fetch_one(pool)
    .await?;
    if gaps != 0 {
        bail!("{gaps} workflows have a journal with gaps or a version that is not the last seq");
    }
    let duplicated: i64 = sqlx::query_scalar(
        "select count(*) from (
            select workflow_id, payload->>'call_seq' from kodomasu.events
            where kind = 'activity_completed' group by 1, 2 having count(*) > 1
         ) d",
    )
    .fetch_one(pool)
    .await?;
    if duplicated != 0 {
        bail!("{duplicated} activity calls have more than one recorded result");
    }
    let missing: i64 = sqlx::query_scalar(
        "select count(*) from kodomasu.workflows w
         where w.workflow_type = 'demo.chain' and w.status = 'completed'
           and (select count(*) from kodomasu.events e where e.workflow_id = w.id and e.kind = 'activity_completed')
               <> (w.input->>'steps')::bigint",
    )
    .fetch_one(pool)
    .await?;
    if missing != 0 {
        bail!("{missing} completed chains do not have exactly one result per step");
    }
    let mismatched: i64 = sqlx::query_scalar(
        "select count(*) from kodomasu.workflows w
         where (select e.payload->'state' from kodomasu.events e
                where e.workflow_id = w.id and e.kind = 'transitioned' order by e.seq desc limit 1) <> w.state",
    )
    .fetch_one(pool)
    .await?;
    if mismatched != 0 {
        bail!("{mismatched} snapshots differ from the state of their last journaled transition");
    }
    Ok(())
}

/// Attempts abandoned by killed workers: bodies that may have run more than once.
pub async fn abandoned_attempts(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from kodomasu.activity_attempts where outcome = 'abandoned'",
    )
    .fetch_one(pool)
    .await?)
}

/// Workflows whose lease `worker` holds now.
pub async fn leased_by(pool: &PgPool, worker: uuid::Uuid) -> anyhow::Result<Vec<uuid::Uuid>> {
    Ok(sqlx::query_scalar(
        "select id from kodomasu.workflows where lease_owner = $1 and status = 'running'",
    )
    .bind(worker)
    .fetch_all(pool)
    .await?)
}

/// For each of `ids`, seconds from `since` to its first event after `since` (None: none yet).
pub async fn next_event_delays(
    pool: &PgPool,
    ids: &[uuid::Uuid],
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Vec<Option<f64>>> {
    let rows = sqlx::query(
        "select i.id, (select extract(epoch from min(e.created_at) - $2)::float8 from kodomasu.events e
                       where e.workflow_id = i.id and e.created_at > $2) as delay
         from unnest($1::uuid[]) as i(id)",
    )
    .bind(ids)
    .bind(since)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<Option<f64>, _>("delay")?))
        .collect()
}

/// The database's clock.
pub async fn db_now(pool: &PgPool) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(sqlx::query_scalar("select now()").fetch_one(pool).await?)
}

/// Sends SIGKILL to a child process and reaps it.
pub async fn sigkill(child: &mut Child) -> anyhow::Result<()> {
    child.start_kill()?;
    child.wait().await?;
    Ok(())
}

#[test]
fn database_urls_are_rewritten() {
    assert_eq!(
        with_database("postgres://u@h:5432/postgres", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        with_database("postgres://u@h:5432/postgres?sslmode=disable", "x"),
        "postgres://u@h:5432/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:5432", "x"),
        "postgres://u@h:5432/x"
    );
}
