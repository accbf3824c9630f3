//! `kodomasu bench`: the engine's throughput and latency measured against what the database can
//! physically commit, on the same database, in the same run.
//!
//! Every run creates a scratch database on the server of `--database-url`, migrates it, runs the
//! workloads with in-process workers against it and drops it (unless `--keep`). For each
//! workload it measures, in this order:
//!
//! 1. the raw commit ceiling: single-row `INSERT` transactions per second over as many dedicated
//!    connections as the engine's pool has, and the single-connection commit latency;
//! 2. the workload itself: N workflows started by C clients, each starting its next workflow when
//!    the previous one finished (a closed loop, so at most C are in flight). Start→complete
//!    latency runs from the start call to the moment the workflow's terminal commit returned in
//!    the worker (the store is wrapped in process, so observing costs the database nothing);
//!    transitions and activity attempts are counted from what the engine committed;
//! 3. the database commits the workload caused: the `pg_stat_database.xact_commit` delta of the
//!    scratch database, read from a connection to another database once every connection of
//!    the workload is closed (a backend flushes its statistics when it exits).
//!
//! `kodomasu bench idle` measures the queries idle worker processes send (see [`run_idle`]).

use crate::paid::PaidJobs;
use crate::settings::ServiceArgs;
use activities::kodosumi::schema;
use activities::kodosumi::sim::{self as kodosumi_sim, KodosumiSimConfig};
use activities::masumi::hash;
use activities::masumi::sim::{
    BuyerBehavior, MasumiSim, MasumiSimConfig, SIM_AGENT_IDENTIFIER, SIM_TOKEN,
};
use anyhow::{Context, bail};
use async_trait::async_trait;
use clap::{Args, Subcommand, ValueEnum};
use engine::store::{
    Claimed, Committed, Created, LeaseRenewal, ListFilter, NewWorkflow, Presence, Renewed,
    StepCommit, StoreError, StoredSignal, WakeListener, WorkerInfo,
};
use engine::{
    ActivityAttempt, Engine, Event, EventKind, GroupCommit, PgStore, Registry, Status, Store,
    Worker, WorkerConfig, WorkerId, WorkerRecord, WorkflowId, WorkflowRecord,
};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use workflows::paid_job::{PaidJob, PaidJobInput};

pub mod recovery;

/// The local server `scripts/test.sh` and the README use.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// A workflow that has not finished after this long stops the run.
const STALL_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Command line

/// `kodomasu bench [OPTIONS]` or `kodomasu bench idle [OPTIONS]`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Queries per second that idle worker processes send to the database.
    Idle(IdleArgs),
    /// Time from SIGKILL of a worker process to the next transition of each workflow it held.
    Recovery(recovery::RecoveryArgs),
}

/// Where the benchmark runs and how it reports.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// A PostgreSQL server (any database on it): the benchmark creates a scratch database
    /// there, migrates it, and drops it afterwards. The user must be allowed to create databases.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Keep the scratch database (its name is printed).
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON document on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// The workloads of `kodomasu bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// `demo.chain` with zero-time steps at `--concurrency`: the engine's overhead.
    Chain,
    /// `demo.chain` with zero-time steps, one workflow at a time: the engine's latency.
    Latency,
    /// Paid jobs against zero-latency in-process Masumi and Kodosumi simulators.
    Paid,
}

impl Workload {
    const ALL: [Self; 3] = [Self::Chain, Self::Latency, Self::Paid];

    fn name(self) -> &'static str {
        match self {
            Self::Chain => "chain",
            Self::Latency => "latency",
            Self::Paid => "paid",
        }
    }

    fn default_workflows(self) -> u64 {
        match self {
            Self::Chain => 2000,
            Self::Latency | Self::Paid => 200,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Run only this workload (default: all of them).
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// Workflows per workload (default: 2000 for `chain`, 200 for `latency` and `paid`).
    #[arg(long)]
    pub workflows: Option<u64>,
    /// Workflows in flight in `chain` and `paid` (`latency` runs one at a time).
    #[arg(long, default_value_t = 32)]
    pub concurrency: u64,
    /// Steps of each `demo.chain` workflow.
    #[arg(long, default_value_t = 4)]
    pub steps: u32,
    /// In-process workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Slots of each worker.
    #[arg(long, default_value_t = 32)]
    pub slots: usize,
    /// Connections of the engine's pool, shared by the workers and the clients starting
    /// workflows; the commit ceiling is measured with as many connections (default: the
    /// concurrency, at least 4).
    #[arg(long)]
    pub connections: Option<u32>,
    /// How long each commit probe runs (the ceiling, then the single-connection latency).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub probe_time: Duration,
    /// Group commit: batches of step commits (and of workflow creations) on their way to the
    /// database at once; a commit that finds fewer goes at once, the others wait for the
    /// next batch (`1` with `--commit-batch 1`: every commit alone, one after another).
    #[arg(long, default_value_t = GroupCommit::default().max_in_flight)]
    pub commit_batches_in_flight: usize,
    /// Group commit: the most commits (or creations) one batch takes.
    #[arg(long, default_value_t = GroupCommit::default().max_batch)]
    pub commit_batch: usize,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Length of the measurement window.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Idle worker processes (`kodomasu worker`) to run.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Time between the workers' start and the measurement window (pooled connections open
    /// and prepare their statements in it).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Extra arguments of the worker processes, after `--` (e.g. `-- --poll-interval 5s`).
    #[arg(last = true)]
    pub worker_args: Vec<String>,
}

/// Runs `kodomasu bench`.
///
/// # Errors
/// When the database cannot be reached or prepared, or a workload fails.
pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let common = match &args.command {
        Some(BenchCommand::Idle(idle)) => idle.common.clone(),
        Some(BenchCommand::Recovery(r)) => r.common.clone(),
        None => args.run.common.clone(),
    };
    let scratch = Scratch::create(&common.database_url).await?;
    let result = match &args.command {
        // Watches `shutdown` itself, so its worker processes are reaped on every path.
        Some(BenchCommand::Recovery(r)) => recovery::run(&scratch, r, &shutdown).await,
        _ => tokio::select! {
            r = async {
                match &args.command {
                    Some(BenchCommand::Idle(idle)) => run_idle(&scratch, idle).await,
                    _ => run_workloads(&scratch, &args.run).await,
                }
            } => r,
            _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
        },
    };
    if common.keep {
        eprintln!("kept the scratch database: {}", redact(&scratch.url));
    } else if let Err(e) = scratch.drop_database().await {
        eprintln!(
            "could not drop the scratch database {}: {e:#}",
            scratch.name
        );
    }
    scratch.admin.close().await;
    result
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Nearest-rank percentile of ascending `sorted` values: the smallest value with at least `p`
/// percent of all values at or below it. `None` for no values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Distribution of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (any order); all zero when empty.
    pub fn of(values: &[f64]) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Self::default();
        }
        sorted.sort_by(f64::total_cmp);
        let p = |q| percentile(&sorted, q).unwrap_or_default();
        Self {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min: sorted[0],
            p50: p(50.0),
            p95: p(95.0),
            p99: p(99.0),
            max: sorted[sorted.len() - 1],
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per_s(n: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

// ---------------------------------------------------------------------------------------------
// The scratch database and the server's facts

/// `base` with its database name replaced by `db`.
fn with_database(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let authority_start = head.find("://").map_or(0, |p| p + 3);
    let prefix = match head[authority_start..].find('/') {
        Some(i) => &head[..authority_start + i],
        None => head,
    };
    format!("{prefix}/{db}{query}")
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        rest.split_once('@')
            .map(|(creds, host)| (scheme, creds, host))
    }) {
        Some((scheme, creds, host)) => {
            let user = creds.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// A database created for one run, plus a connection to the server's original database that
/// reads statistics without adding to the scratch database's.
#[derive(Debug)]
struct Scratch {
    admin: PgPool,
    name: String,
    url: String,
}

impl Scratch {
    async fn create(base: &str) -> anyhow::Result<Self> {
        if !(base.starts_with("postgres://") || base.starts_with("postgresql://")) {
            bail!(
                "kodomasu bench needs PostgreSQL: --database-url postgres://… (got {})",
                redact(base)
            );
        }
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(base)
            .await
            .with_context(|| format!("connecting to {}", redact(base)))?;
        let name = format!("kodomasu_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("create database {name}"))
            .execute(&admin)
            .await
            .with_context(|| format!("creating the scratch database {name}"))?;
        let scratch = Self {
            url: with_database(base, &name),
            admin,
            name,
        };
        let prepared = async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&scratch.url)
                .await?;
            PgStore::new(pool.clone()).migrate().await?;
            sqlx::query(
                "create table bench_commit_probe (id bigserial primary key, conn integer not null)",
            )
            .execute(&pool)
            .await?;
            pool.close().await;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = prepared {
            let _ = scratch.drop_database().await;
            return Err(e.context("preparing the scratch database"));
        }
        Ok(scratch)
    }

    async fn drop_database(&self) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(&self.admin)
        .await?;
        Ok(())
    }

    async fn xact(&self) -> anyhow::Result<(i64, i64)> {
        let row = sqlx::query(
            "select xact_commit, xact_rollback from pg_stat_database where datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&self.admin)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    async fn backends(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&self.admin)
        .await?)
    }

    /// The transaction counters once no session is connected to the scratch database any more
    /// and the counters stopped moving (a backend flushes its statistics as it exits).
    async fn quiet_xact(&self) -> anyhow::Result<(i64, i64)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.xact().await?;
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = self.xact().await?;
            if self.backends().await? == 0 && now == last {
                return Ok(now);
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    "the scratch database did not go quiet in 20 s; counters may be off"
                );
                return Ok(now);
            }
            last = now;
        }
    }

    async fn machine(&self) -> anyhow::Result<Machine> {
        let show = |name: &'static str| async move {
            let v: String = sqlx::query_scalar(&format!("show {name}"))
                .fetch_one(&self.admin)
                .await?;
            anyhow::Ok(v)
        };
        Ok(Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: memory_mib(),
            postgres: show("server_version").await?,
            fsync: show("fsync").await?,
            synchronous_commit: show("synchronous_commit").await?,
            wal_sync_method: show("wal_sync_method").await?,
            full_page_writes: show("full_page_writes").await?,
            shared_buffers: show("shared_buffers").await?,
            max_connections: show("max_connections").await?,
            scratch_database: self.name.clone(),
        })
    }
}

fn memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Where the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub memory_mib: Option<u64>,
    pub postgres: String,
    pub fsync: String,
    pub synchronous_commit: String,
    pub wal_sync_method: String,
    pub full_page_writes: String,
    pub shared_buffers: String,
    pub max_connections: String,
    pub scratch_database: String,
}

// ---------------------------------------------------------------------------------------------
// Commit probes

/// Single-row INSERT transactions per second over `connections` dedicated connections, each
/// inserting one row per transaction (autocommit, one round trip) for `time`.
async fn commit_ceiling(url: &str, connections: u32, time: Duration) -> anyhow::Result<f64> {
    let mut conns = Vec::new();
    for i in 0..connections {
        let mut conn = PgConnection::connect(url).await?;
        // Prepares the statement, so the timed loop runs only Bind/Execute/Sync.
        insert_probe(&mut conn, i as i32).await?;
        conns.push(conn);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(conns.len() + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let deadline = Instant::now() + time;
            let mut n = 0u64;
            while Instant::now() < deadline {
                insert_probe(&mut conn, i as i32).await?;
                n += 1;
            }
            let _ = conn.close().await;
            anyhow::Ok(n)
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        total += joined??;
    }
    Ok(per_s(total, start.elapsed()))
}

/// Latencies (ms) of single-row INSERT transactions one after another on one connection.
async fn single_commit_latency(url: &str, time: Duration) -> anyhow::Result<Summary> {
    let mut conn = PgConnection::connect(url).await?;
    insert_probe(&mut conn, -1).await?;
    let deadline = Instant::now() + time;
    let mut samples = Vec::new();
    while Instant::now() < deadline || samples.len() < 20 {
        let t = Instant::now();
        insert_probe(&mut conn, -1).await?;
        samples.push(ms(t.elapsed()));
    }
    let _ = conn.close().await;
    Ok(Summary::of(&samples))
}

/// Latencies (ms) of `SELECT 1` round trips (no commit to flush) on one connection.
async fn round_trip_latency(url: &str, count: usize) -> anyhow::Result<Summary> {
    let mut conn = PgConnection::connect(url).await?;
    let mut samples = Vec::with_capacity(count);
    sqlx::query("select 1").execute(&mut conn).await?;
    for _ in 0..count {
        let t = Instant::now();
        sqlx::query("select 1").execute(&mut conn).await?;
        samples.push(ms(t.elapsed()));
    }
    let _ = conn.close().await;
    Ok(Summary::of(&samples))
}

async fn insert_probe(conn: &mut PgConnection, i: i32) -> anyhow::Result<()> {
    sqlx::query("insert into bench_commit_probe (conn) values ($1)")
        .bind(i)
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CPU time (Linux `/proc`; absent elsewhere)

/// Clock ticks of `/proc` (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    /// Busy and total ticks of the whole machine, all CPUs.
    busy: u64,
    total: u64,
    /// user + system ticks of this process.
    process: u64,
    at: Instant,
}

impl CpuSnapshot {
    fn take() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal …
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        let total: u64 = fields.iter().take(8).sum();
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
        let rest = own.rsplit_once(')')?.1;
        let mut f = rest.split_whitespace().skip(11);
        let utime: u64 = f.next()?.parse().ok()?;
        let stime: u64 = f.next()?.parse().ok()?;
        Some(Self {
            busy: total - idle,
            total,
            process: utime + stime,
            at: Instant::now(),
        })
    }
}

/// CPU use between two snapshots.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    /// Busy share of all CPUs of the machine, in percent (PostgreSQL, this process, anything else).
    pub machine_busy_pct: f64,
    /// CPU time of this process (engine, clients, simulators) in percent of one CPU.
    pub bench_process_pct_of_one_cpu: f64,
}

fn cpu_use(from: Option<CpuSnapshot>, to: Option<CpuSnapshot>) -> Option<CpuUse> {
    let (a, b) = (from?, to?);
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let total = b.total.checked_sub(a.total)?;
    if total == 0 || wall <= 0.0 {
        return None;
    }
    Some(CpuUse {
        machine_busy_pct: 100.0 * b.busy.saturating_sub(a.busy) as f64 / total as f64,
        bench_process_pct_of_one_cpu: 100.0
            * (b.process.saturating_sub(a.process) as f64 / TICKS_PER_S)
            / wall,
    })
}

// ---------------------------------------------------------------------------------------------
// The observed store

/// Store calls of a workload, counted in process.
#[derive(Debug, Default)]
struct Counters {
    transitions: AtomicU64,
    attempts: AtomicU64,
    creates: AtomicU64,
    commits: AtomicU64,
    fenced: AtomicU64,
    claims: AtomicU64,
    empty_claims: AtomicU64,
    claimed: AtomicU64,
    /// Workflows created leased to a local worker (no claim needed).
    created_leased: AtomicU64,
    reads: AtomicU64,
    renewals: AtomicU64,
    other: AtomicU64,
    /// Wall time spent in step commits and creations (the calls on a workflow's path), in µs.
    commit_micros: AtomicU64,
    create_micros: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, Default)]
struct Finishes {
    waiting: HashMap<WorkflowId, oneshot::Sender<(Instant, Status)>>,
    done: HashMap<WorkflowId, (Instant, Status)>,
}

/// Completions of workflows, as the worker's terminal commit returns.
#[derive(Debug, Default)]
struct Tracker {
    counters: Counters,
    finishes: Mutex<Finishes>,
}

impl Tracker {
    fn finishes(&self) -> std::sync::MutexGuard<'_, Finishes> {
        self.finishes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finished(&self, id: WorkflowId, status: Status) {
        let at = (Instant::now(), status);
        let mut f = self.finishes();
        match f.waiting.remove(&id) {
            Some(tx) => {
                let _ = tx.send(at);
            }
            None => {
                f.done.insert(id, at);
            }
        }
    }

    /// When the workflow finished, and how.
    async fn wait(&self, id: WorkflowId) -> anyhow::Result<(Instant, Status)> {
        let rx = {
            let mut f = self.finishes();
            if let Some(at) = f.done.remove(&id) {
                return Ok(at);
            }
            let (tx, rx) = oneshot::channel();
            f.waiting.insert(id, tx);
            rx
        };
        match tokio::time::timeout(STALL_TIMEOUT, rx).await {
            Ok(Ok(at)) => Ok(at),
            Ok(Err(_)) => bail!("workflow {id}: completion tracking dropped"),
            Err(_) => bail!("workflow {id} did not finish within {STALL_TIMEOUT:?}"),
        }
    }
}

fn transitions(events: &[EventKind]) -> u64 {
    events
        .iter()
        .filter(|e| matches!(e, EventKind::Transitioned { .. }))
        .count() as u64
}

/// [`PgStore`] with every call counted and terminal commits timestamped.
#[derive(Debug)]
struct Observed {
    inner: PgStore,
    tracker: Arc<Tracker>,
}

#[async_trait]
impl Store for Observed {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        bump(&self.tracker.counters.other, 1);
        self.inner.ping().await
    }

    async fn create_workflow(&self, new: NewWorkflow) -> Result<Created, StoreError> {
        let c = &self.tracker.counters;
        let n = transitions(&new.events);
        let terminal = new.status.is_terminal().then_some(new.status);
        let began = Instant::now();
        let created = self.inner.create_workflow(new).await?;
        bump(&c.create_micros, began.elapsed().as_micros() as u64);
        bump(&c.creates, 1);
        if created.created {
            bump(&c.transitions, n);
            if let Some(status) = terminal {
                self.tracker.finished(created.id, status);
            }
        }
        Ok(created)
    }

    async fn create_workflow_leased(
        &self,
        new: NewWorkflow,
        worker: WorkerId,
        lease_ttl: Duration,
    ) -> Result<(Created, Option<Claimed>), StoreError> {
        let c = &self.tracker.counters;
        let n = transitions(&new.events);
        let terminal = new.status.is_terminal().then_some(new.status);
        let began = Instant::now();
        let (created, claimed) = self
            .inner
            .create_workflow_leased(new, worker, lease_ttl)
            .await?;
        bump(&c.create_micros, began.elapsed().as_micros() as u64);
        bump(&c.creates, 1);
        if created.created {
            bump(&c.transitions, n);
            if let Some(status) = terminal {
                self.tracker.finished(created.id, status);
            }
        }
        if claimed.is_some() {
            bump(&c.created_leased, 1);
        }
        Ok((created, claimed))
    }

    async fn presence(&self, worker: WorkerId) -> Result<Option<Box<dyn Presence>>, StoreError> {
        self.inner.presence(worker).await
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Option<WorkflowRecord>, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.get_workflow(id).await
    }

    async fn list_workflows(&self, filter: &ListFilter) -> Result<Vec<WorkflowRecord>, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.list_workflows(filter).await
    }

    async fn count_workflows(
        &self,
        filter: &ListFilter,
    ) -> Result<engine::store::StatusCounts, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.count_workflows(filter).await
    }

    async fn read_feed(
        &self,
        query: &engine::store::FeedQuery,
    ) -> Result<engine::store::FeedRead, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.read_feed(query).await
    }

    async fn feed_head(&self) -> Result<engine::store::FeedHead, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.feed_head().await
    }

    async fn history(
        &self,
        id: WorkflowId,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.history(id, after_seq, limit).await
    }

    async fn attempts(&self, id: WorkflowId) -> Result<Vec<ActivityAttempt>, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.attempts(id).await
    }

    async fn send_signal(
        &self,
        id: WorkflowId,
        name: &str,
        payload: &Value,
    ) -> Result<i64, StoreError> {
        bump(&self.tracker.counters.other, 1);
        self.inner.send_signal(id, name, payload).await
    }

    async fn claim(
        &self,
        worker: engine::WorkerId,
        workflow_types: &[String],
        limit: usize,
        lease_ttl: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let c = &self.tracker.counters;
        let claimed = self
            .inner
            .claim(worker, workflow_types, limit, lease_ttl)
            .await?;
        bump(&c.claims, 1);
        bump(&c.claimed, claimed.len() as u64);
        if claimed.is_empty() {
            bump(&c.empty_claims, 1);
        }
        Ok(claimed)
    }

    async fn unconsumed_signals(&self, id: WorkflowId) -> Result<Vec<StoredSignal>, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.unconsumed_signals(id).await
    }

    async fn commit(&self, commit: StepCommit) -> Result<Committed, StoreError> {
        let c = &self.tracker.counters;
        let (id, status) = (commit.id, commit.status);
        let n = transitions(&commit.events);
        let attempts = commit.attempts.len() as u64;
        let began = Instant::now();
        let result = self.inner.commit(commit).await;
        bump(&c.commit_micros, began.elapsed().as_micros() as u64);
        match result {
            Ok(done) => {
                bump(&c.commits, 1);
                bump(&c.transitions, n);
                bump(&c.attempts, attempts);
                if status.is_terminal() {
                    self.tracker.finished(id, status);
                }
                Ok(done)
            }
            Err(e) => {
                if matches!(e, StoreError::Fenced) {
                    bump(&c.fenced, 1);
                }
                Err(e)
            }
        }
    }

    async fn renew_leases(
        &self,
        worker: engine::WorkerId,
        lease_ttl: Duration,
        leases: &[LeaseRenewal],
    ) -> Result<Vec<Renewed>, StoreError> {
        bump(&self.tracker.counters.renewals, 1);
        self.inner.renew_leases(worker, lease_ttl, leases).await
    }

    async fn release_leases(
        &self,
        worker: engine::WorkerId,
        leases: &[(WorkflowId, i64)],
    ) -> Result<(), StoreError> {
        bump(&self.tracker.counters.other, 1);
        self.inner.release_leases(worker, leases).await
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        bump(&self.tracker.counters.other, 1);
        self.inner.register_worker(info).await
    }

    async fn worker_heartbeat(
        &self,
        worker: engine::WorkerId,
        slots_used: i32,
    ) -> Result<(), StoreError> {
        bump(&self.tracker.counters.other, 1);
        self.inner.worker_heartbeat(worker, slots_used).await
    }

    async fn worker_stopped(&self, worker: engine::WorkerId) -> Result<(), StoreError> {
        bump(&self.tracker.counters.other, 1);
        self.inner.worker_stopped(worker).await
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.workers().await
    }

    async fn listen(&self) -> Result<Box<dyn WakeListener>, StoreError> {
        self.inner.listen().await
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        self.inner.pending_migrations().await
    }

    async fn gauges(&self) -> Result<engine::store::StoreGauges, StoreError> {
        bump(&self.tracker.counters.reads, 1);
        self.inner.gauges().await
    }

    async fn create_access_token(
        &self,
        id: uuid::Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<Option<engine::store::AccessToken>, StoreError> {
        self.inner.create_access_token(id, name, token_hash).await
    }

    async fn replace_access_token(
        &self,
        id: uuid::Uuid,
        name: &str,
        token_hash: &str,
    ) -> Result<engine::store::AccessToken, StoreError> {
        self.inner.replace_access_token(id, name, token_hash).await
    }

    async fn access_tokens(&self) -> Result<Vec<engine::store::AccessToken>, StoreError> {
        self.inner.access_tokens().await
    }

    async fn find_access_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<engine::store::AccessToken>, StoreError> {
        self.inner.find_access_token(token_hash).await
    }

    async fn revoke_access_token(
        &self,
        id_or_name: &str,
    ) -> Result<Option<engine::store::AccessToken>, StoreError> {
        self.inner.revoke_access_token(id_or_name).await
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

/// A source of workflow starts.
#[derive(Debug)]
enum Starts {
    Chain {
        steps: u32,
    },
    Paid {
        flow: Box<crate::flows::CatalogFlow>,
        nonce: u32,
    },
}

impl Starts {
    fn workflow_type(&self) -> &'static str {
        match self {
            Self::Chain { .. } => "demo.chain",
            Self::Paid { .. } => <PaidJob as engine::Workflow>::NAME,
        }
    }

    /// Key and input of the `i`-th workflow.
    fn start(&self, i: u64) -> anyhow::Result<(Option<String>, Value)> {
        match self {
            Self::Chain { steps } => Ok((
                None,
                json!({"steps": steps, "sleep_ms": 0, "fail_prob": 0.0}),
            )),
            Self::Paid { flow, nonce } => {
                // What `start_job` does, minus HTTP.
                let purchaser = format!("{nonce:08x}{:08x}", i as u32);
                let input_data = json!({ "name": format!("bench {i}") });
                schema::validate(&flow.schema, &input_data)
                    .map_err(|e| anyhow::anyhow!("bench input is invalid: {e}"))?;
                let input_hash = hash::input_hash(&purchaser, &input_data);
                let now = chrono::Utc::now();
                let input = PaidJobInput {
                    flow_uid: flow.uid.clone(),
                    flow_url: flow.url.clone(),
                    flow_summary: flow.summary.clone(),
                    identifier_from_purchaser: purchaser.clone(),
                    launch_inputs: schema::to_launch_inputs(&flow.elements, &input_data),
                    input_data,
                    input_hash: input_hash.clone(),
                    agent_identifier: SIM_AGENT_IDENTIFIER.to_owned(),
                    network: flow.settings.network,
                    pay_by_time: now + chrono::Duration::hours(12),
                    submit_result_time: now + chrono::Duration::hours(24),
                    unlock_time: None,
                    external_dispute_unlock_time: None,
                    refund_on_dispute: false,
                };
                let key = format!("{}:{purchaser}:{input_hash}", flow.uid);
                Ok((Some(key), serde_json::to_value(input)?))
            }
        }
    }
}

/// In-process simulators of the paid workload; stopped when dropped.
struct Sims {
    masumi: MasumiSim,
    kodosumi_stop: CancellationToken,
    kodosumi: tokio::task::JoinHandle<()>,
}

impl Sims {
    async fn stop(self) {
        self.kodosumi_stop.cancel();
        let _ = self.kodosumi.await;
        self.masumi.shutdown().await;
    }
}

/// Simulators answering at once (buyers pay at creation, 1 ms chain steps, 0 ms runs) and
/// the paid-job wiring over them; returns the registry and the flow to sell.
async fn paid_setup() -> anyhow::Result<(Sims, Registry, crate::flows::CatalogFlow)> {
    let masumi = MasumiSim::spawn(MasumiSimConfig {
        default_buyer: BuyerBehavior::Pay { after_ms: 0 },
        chain_step_ms: 1,
        fast_clock: true,
        ..MasumiSimConfig::default()
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let kodosumi_url = format!("http://{}", listener.local_addr()?);
    let mut config = KodosumiSimConfig {
        status_404_window: Duration::ZERO,
        ..KodosumiSimConfig::default()
    };
    for flow in &mut config.flows {
        flow.behavior.duration_ms = 0;
    }
    let kodosumi_stop = CancellationToken::new();
    let stop = kodosumi_stop.clone();
    let kodosumi = tokio::spawn(async move {
        if let Err(e) = kodosumi_sim::serve(listener, config, stop).await {
            tracing::warn!(error.message = %e, "kodosumi simulator stopped");
        }
    });
    let sims = Sims {
        masumi,
        kodosumi_stop,
        kodosumi,
    };
    match paid_wiring(sims.masumi.base_url(), kodosumi_url).await {
        Ok((registry, flow)) => Ok((sims, registry, flow)),
        Err(e) => {
            sims.stop().await;
            Err(e)
        }
    }
}

/// The paid-job clients over the simulators, the registry and the flow to sell.
async fn paid_wiring(
    masumi_url: &str,
    kodosumi_url: String,
) -> anyhow::Result<(Registry, crate::flows::CatalogFlow)> {
    let services = ServiceArgs {
        masumi_url: Some(masumi_url.to_owned()),
        masumi_token: Some(SIM_TOKEN.to_owned()),
        kodosumi_url: Some(kodosumi_url),
        kodosumi_user: "admin".to_owned(),
        kodosumi_password: Some("admin".to_owned()),
        flows_file: None,
        agent_identifier: Some(SIM_AGENT_IDENTIFIER.to_owned()),
        network: "Preprod".to_owned(),
        pay_by: Duration::from_secs(12 * 3600),
        submit_result_within: Duration::from_secs(24 * 3600),
        flow_sync_interval: Duration::from_secs(300),
        start_job_timeout: Duration::from_secs(30),
        service_timeout: Duration::from_secs(30),
        result_fetch_timeout: Duration::from_secs(620),
    };
    let paid = PaidJobs::from_args(&services)?.context("paid jobs are configured")?;
    paid.catalog
        .sync()
        .await
        .map_err(|e| anyhow::anyhow!("syncing flows from the Kodosumi simulator: {e}"))?;
    let flow = paid
        .catalog
        .list()
        .into_iter()
        .find(|f| f.summary == "Hello World")
        .context("the Kodosumi simulator lists no `Hello World` flow")?;
    let registry = workflows::registry(Some(&paid.services));
    Ok((registry, flow))
}

/// What one workload measured.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    pub workload: Workload,
    pub description: String,
    pub workflow_type: String,
    /// Steps of `demo.chain` workflows.
    pub steps: Option<u32>,
    pub workflows: u64,
    pub concurrency: u64,
    pub workers: usize,
    pub slots: usize,
    pub connections: u32,
    pub elapsed_s: f64,
    pub workflows_per_s: f64,
    pub transitions_per_s: f64,
    pub activity_attempts_per_s: f64,
    pub transitions_per_workflow: f64,
    pub activity_attempts_per_workflow: f64,
    /// Start call → terminal commit returned, in ms.
    pub latency_ms: Summary,
    pub commits_per_workflow: f64,
    pub xact_commit_delta: i64,
    pub xact_rollback_delta: i64,
    /// Single-row INSERT transactions/s over `connections` connections.
    pub commit_ceiling_per_s: f64,
    /// Single-row INSERT transactions one after another on one connection, in ms.
    pub single_commit_latency_ms: Summary,
    /// `SELECT 1` round trips on one connection, in ms: a round trip without a commit.
    pub round_trip_ms: Summary,
    /// CPU use while the workload ran (Linux only).
    pub cpu: Option<CpuUse>,
    /// Terminal statuses of the workload's workflows.
    pub statuses: BTreeMap<String, u64>,
    /// Store calls per workflow, counted in process.
    pub store_calls_per_workflow: BTreeMap<String, f64>,
    /// Mean wall time per workflow inside step commits and creations, in ms: with one workflow
    /// at a time, the rest of its latency is the engine's own.
    pub store_write_ms_per_workflow: StoreWriteTime,
    pub ratios: Ratios,
    pub targets: Vec<Target>,
}

/// Mean wall time per workflow inside the store's write calls, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct StoreWriteTime {
    pub commit: f64,
    pub create: f64,
}

/// The ratios issue 6's targets are stated in.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// transitions/s ÷ commit ceiling.
    pub transitions_over_ceiling: f64,
    /// commits per workflow ÷ (steps + 2) (`demo.chain` only).
    pub commits_over_steps_plus_2: Option<f64>,
    /// (steps + 1) × the single-connection commit latency p50, in ms (`demo.chain` only).
    pub commit_path_ms: Option<f64>,
    /// latency p50 ÷ commit path.
    pub p50_over_commit_path: Option<f64>,
    /// latency p99 ÷ commit path.
    pub p99_over_commit_path: Option<f64>,
}

/// One target of issue 6 and whether this run meets it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: String,
    pub value: f64,
    pub limit: f64,
    pub holds: bool,
}

fn target_at_least(target: &str, value: f64, limit: f64) -> Target {
    Target {
        target: target.to_owned(),
        value,
        limit,
        holds: value >= limit,
    }
}

fn target_at_most(target: &str, value: f64, limit: f64) -> Target {
    Target {
        target: target.to_owned(),
        value,
        limit,
        holds: value <= limit,
    }
}

/// Progress on stderr: a line rewritten in place on a terminal, a line every 2 s otherwise.
fn spawn_progress(
    label: &'static str,
    total: u64,
    done: Arc<AtomicU64>,
    started: Instant,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(2)
        };
        loop {
            tokio::select! { _ = tokio::time::sleep(every) => {}, _ = stop.cancelled() => break }
            let n = done.load(Ordering::Relaxed);
            let line = format!(
                "[bench {label}] {n}/{total} done, {:.1} workflows/s, {:.1} s",
                per_s(n, started.elapsed()),
                started.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
        if tty {
            eprint!("\r\x1b[K");
        }
    })
}

async fn run_workloads(scratch: &Scratch, args: &RunArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.workers == 0 || args.slots == 0 {
        bail!("--concurrency, --workers and --slots must be at least 1");
    }
    if !(1..=10_000).contains(&args.steps) {
        bail!("--steps must be between 1 and 10000");
    }
    let machine = scratch.machine().await?;
    if !args.common.json {
        println!("{}", render_machine(&machine));
    }
    let workloads = match args.workload {
        Some(w) => vec![w],
        None => Workload::ALL.to_vec(),
    };
    let mut reports = Vec::new();
    for w in workloads {
        let report = run_workload(scratch, args, w).await?;
        if !args.common.json {
            println!("{}", render_workload(&report));
        }
        reports.push(report);
    }
    if args.common.json {
        let doc = json!({ "machine": machine, "workloads": reports });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

async fn run_workload(
    scratch: &Scratch,
    args: &RunArgs,
    workload: Workload,
) -> anyhow::Result<WorkloadReport> {
    let n = args
        .workflows
        .unwrap_or_else(|| workload.default_workflows());
    let concurrency = match workload {
        Workload::Latency => 1,
        Workload::Chain | Workload::Paid => args.concurrency,
    };
    let connections = args
        .connections
        .unwrap_or_else(|| u32::try_from(args.concurrency).unwrap_or(u32::MAX).max(4));
    let label = workload.name();

    // 1. What the database can commit, right before the workload.
    eprintln!(
        "[bench {label}] measuring the commit ceiling ({connections} connections, {:?}) and the single-connection commit latency",
        args.probe_time
    );
    let ceiling = commit_ceiling(&scratch.url, connections, args.probe_time).await?;
    let single = single_commit_latency(&scratch.url, args.probe_time).await?;
    let round_trip = round_trip_latency(&scratch.url, 2000).await?;

    // 2. The workload.
    let (sims, registry, starts) = match workload {
        Workload::Chain | Workload::Latency => (
            None,
            workflows::registry(None),
            Starts::Chain { steps: args.steps },
        ),
        Workload::Paid => {
            let (sims, registry, flow) = paid_setup().await?;
            let nonce = (uuid::Uuid::new_v4().as_u128() & 0xffff_ffff) as u32;
            (
                Some(sims),
                registry,
                Starts::Paid {
                    flow: Box::new(flow),
                    nonce,
                },
            )
        }
    };
    let before = scratch.quiet_xact().await?;
    // The same pool settings as `kodomasu server` / `worker` (`connect` in main.rs).
    let pool = PgStore::pool_options()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&scratch.url)
        .await?;
    let tracker = Arc::new(Tracker::default());
    let store: Arc<dyn Store> = Arc::new(Observed {
        inner: PgStore::with_group_commit(
            pool.clone(),
            GroupCommit {
                max_in_flight: args.commit_batches_in_flight,
                max_batch: args.commit_batch,
            },
        ),
        tracker: tracker.clone(),
    });
    let engine = Arc::new(Engine::new(store.clone(), registry.clone()));
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        let config = WorkerConfig {
            slots: args.slots,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(store.clone(), registry.clone(), config);
        // As in `kodomasu dev` and any process that starts and runs workflows: new workflows
        // go straight to a local worker with a free slot.
        engine.dispatch_to(&worker);
        workers.push(worker.spawn());
    }
    // Let the workers register and subscribe before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    eprintln!("[bench {label}] {n} workflows at concurrency {concurrency}");
    let starts = Arc::new(starts);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let cpu_before = CpuSnapshot::take();
    let clock = Instant::now();
    let stop_progress = CancellationToken::new();
    let progress = spawn_progress(label, n, done.clone(), clock, stop_progress.clone());
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (engine, tracker, starts, next, done) = (
            engine.clone(),
            tracker.clone(),
            starts.clone(),
            next.clone(),
            done.clone(),
        );
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (key, input) = starts.start(i)?;
                let t0 = Instant::now();
                let started = engine.start(starts.workflow_type(), key, input).await?;
                let (at, status) = tracker.wait(started.id).await?;
                latencies.push(ms(at.saturating_duration_since(t0)));
                *statuses.entry(status.to_string()).or_default() += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((latencies, statuses))
        });
    }
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut failure = None;
    while let Some(joined) = clients.join_next().await {
        match joined {
            Ok(Ok((l, s))) => {
                latencies.extend(l);
                for (k, v) in s {
                    *statuses.entry(k).or_default() += v;
                }
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                clients.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("a client task failed: {e}"));
                clients.abort_all();
            }
        }
    }
    let elapsed = clock.elapsed();
    let cpu = cpu_use(cpu_before, CpuSnapshot::take());
    stop_progress.cancel();
    let _ = progress.await;
    for w in workers {
        if let Err(e) = w.shutdown().await {
            tracing::warn!(error.message = %e, "worker failed");
        }
    }
    drop(engine);
    drop(store);
    pool.close().await;
    if let Some(sims) = sims {
        sims.stop().await;
    }
    if let Some(e) = failure {
        return Err(e.context(format!("workload {label}")));
    }

    // 3. What it cost the database.
    let after = scratch.quiet_xact().await?;
    let commits = after.0 - before.0;
    let rollbacks = after.1 - before.1;

    let c = &tracker.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let per_wf = |x: u64| x as f64 / n.max(1) as f64;
    let transitions = load(&c.transitions);
    let attempts = load(&c.attempts);
    let latency = Summary::of(&latencies);
    let commits_per_workflow = commits as f64 / n.max(1) as f64;
    let transitions_per_s = per_s(transitions, elapsed);
    let chain_steps = matches!(workload, Workload::Chain | Workload::Latency).then_some(args.steps);
    let commit_path = chain_steps.map(|s| f64::from(s + 1) * single.p50);
    let ratios = Ratios {
        transitions_over_ceiling: ratio(transitions_per_s, ceiling),
        commits_over_steps_plus_2: chain_steps
            .map(|s| ratio(commits_per_workflow, f64::from(s + 2))),
        commit_path_ms: commit_path,
        p50_over_commit_path: commit_path.map(|p| ratio(latency.p50, p)),
        p99_over_commit_path: commit_path.map(|p| ratio(latency.p99, p)),
    };
    let mut targets = Vec::new();
    match workload {
        Workload::Chain => {
            targets.push(target_at_least(
                "transitions/s ÷ commit ceiling ≥ 0.5",
                ratios.transitions_over_ceiling,
                0.5,
            ));
            targets.push(target_at_most(
                "commits per workflow ≤ steps + 2",
                commits_per_workflow,
                f64::from(args.steps + 2),
            ));
        }
        Workload::Latency => {
            targets.push(target_at_most(
                "p50 ≤ 1.5 × (steps + 1) × single-connection commit latency",
                ratios.p50_over_commit_path.unwrap_or(f64::NAN),
                1.5,
            ));
            targets.push(target_at_most(
                "p99 ≤ 3 × (steps + 1) × single-connection commit latency",
                ratios.p99_over_commit_path.unwrap_or(f64::NAN),
                3.0,
            ));
        }
        Workload::Paid => {}
    }
    let store_calls_per_workflow = BTreeMap::from([
        ("create".to_owned(), per_wf(load(&c.creates))),
        ("claim".to_owned(), per_wf(load(&c.claims))),
        ("claim_empty".to_owned(), per_wf(load(&c.empty_claims))),
        ("claimed_rows".to_owned(), per_wf(load(&c.claimed))),
        ("created_leased".to_owned(), per_wf(load(&c.created_leased))),
        ("commit".to_owned(), per_wf(load(&c.commits))),
        ("commit_fenced".to_owned(), per_wf(load(&c.fenced))),
        ("read".to_owned(), per_wf(load(&c.reads))),
        ("renew".to_owned(), per_wf(load(&c.renewals))),
        ("other".to_owned(), per_wf(load(&c.other))),
    ]);
    let store_write_ms_per_workflow = StoreWriteTime {
        commit: per_wf(load(&c.commit_micros)) / 1000.0,
        create: per_wf(load(&c.create_micros)) / 1000.0,
    };
    let description = match workload {
        Workload::Chain => format!(
            "demo.chain, {} zero-time steps, at concurrency {concurrency}",
            args.steps
        ),
        Workload::Latency => format!(
            "demo.chain, {} zero-time steps, one workflow at a time",
            args.steps
        ),
        Workload::Paid => format!(
            "paid_job (Hello World flow) against in-process zero-latency simulators, at concurrency {concurrency}"
        ),
    };
    Ok(WorkloadReport {
        workload,
        description,
        workflow_type: starts.workflow_type().to_owned(),
        steps: chain_steps,
        workflows: n,
        concurrency,
        workers: args.workers,
        slots: args.slots,
        connections,
        elapsed_s: elapsed.as_secs_f64(),
        workflows_per_s: per_s(n, elapsed),
        transitions_per_s,
        activity_attempts_per_s: per_s(attempts, elapsed),
        transitions_per_workflow: per_wf(transitions),
        activity_attempts_per_workflow: per_wf(attempts),
        latency_ms: latency,
        commits_per_workflow,
        xact_commit_delta: commits,
        xact_rollback_delta: rollbacks,
        commit_ceiling_per_s: ceiling,
        single_commit_latency_ms: single,
        round_trip_ms: round_trip,
        cpu,
        statuses,
        store_calls_per_workflow,
        store_write_ms_per_workflow,
        ratios,
        targets,
    })
}

// ---------------------------------------------------------------------------------------------
// Text output

fn render_machine(m: &Machine) -> String {
    let memory = m.memory_mib.map_or_else(
        || "unknown".to_owned(),
        |mib| format!("{:.1} GiB", mib as f64 / 1024.0),
    );
    format!(
        "machine: {} CPUs, {memory} memory; PostgreSQL {} (fsync={}, synchronous_commit={}, wal_sync_method={}, full_page_writes={}, shared_buffers={}, max_connections={})\nscratch database: {}\n",
        m.cpus,
        m.postgres,
        m.fsync,
        m.synchronous_commit,
        m.wal_sync_method,
        m.full_page_writes,
        m.shared_buffers,
        m.max_connections,
        m.scratch_database
    )
}

fn holds(t: &Target) -> &'static str {
    if t.holds { "holds" } else { "does NOT hold" }
}

/// The text report of one workload.
pub fn render_workload(r: &WorkloadReport) -> String {
    let mut s = String::new();
    let l = &r.latency_ms;
    let c = &r.single_commit_latency_ms;
    let _ = writeln!(s, "== {}: {}", r.workload.name(), r.description);
    let _ = writeln!(
        s,
        "   {} workflows, {} worker(s) × {} slots, {} connections, {:.2} s",
        r.workflows, r.workers, r.slots, r.connections, r.elapsed_s
    );
    let statuses: Vec<String> = r.statuses.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "   statuses                   {}", statuses.join(", "));
    let _ = writeln!(s, "   workflows/s                {:.1}", r.workflows_per_s);
    let _ = writeln!(
        s,
        "   transitions/s              {:.1}   ({:.2} per workflow)",
        r.transitions_per_s, r.transitions_per_workflow
    );
    let _ = writeln!(
        s,
        "   activity attempts/s        {:.1}   ({:.2} per workflow)",
        r.activity_attempts_per_s, r.activity_attempts_per_workflow
    );
    let _ = writeln!(
        s,
        "   start→complete latency     p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms (min {:.2}, mean {:.2}, max {:.2})",
        l.p50, l.p95, l.p99, l.min, l.mean, l.max
    );
    let _ = writeln!(
        s,
        "   commits per workflow       {:.2}   (xact_commit +{}, xact_rollback +{})",
        r.commits_per_workflow, r.xact_commit_delta, r.xact_rollback_delta
    );
    let calls: Vec<String> = r
        .store_calls_per_workflow
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    let _ = writeln!(s, "   store calls per workflow   {}", calls.join(", "));
    let w = &r.store_write_ms_per_workflow;
    let _ = writeln!(
        s,
        "   time in store writes       {:.3} ms per workflow (commits {:.3}, creation {:.3}; mean {:.3} ms start→complete)",
        w.commit + w.create,
        w.commit,
        w.create,
        r.latency_ms.mean
    );
    let _ = writeln!(
        s,
        "   commit ceiling             {:.1} commits/s (single-row INSERT, {} connections)",
        r.commit_ceiling_per_s, r.connections
    );
    let _ = writeln!(
        s,
        "   single-connection commit   p50 {:.3} ms (mean {:.3}, p99 {:.3}, {} commits)",
        c.p50, c.mean, c.p99, c.count
    );
    let _ = writeln!(
        s,
        "   single-connection SELECT 1 p50 {:.3} ms (mean {:.3}, p99 {:.3}): a round trip without a commit",
        r.round_trip_ms.p50, r.round_trip_ms.mean, r.round_trip_ms.p99
    );
    if let Some(cpu) = &r.cpu {
        let _ = writeln!(
            s,
            "   CPU during the workload    machine {:.0}% busy (all CPUs); this process {:.0}% of one CPU",
            cpu.machine_busy_pct, cpu.bench_process_pct_of_one_cpu
        );
    }
    let ra = &r.ratios;
    let _ = writeln!(s, "   ratios");
    let _ = writeln!(
        s,
        "     transitions/s ÷ commit ceiling           {:.3}",
        ra.transitions_over_ceiling
    );
    if let (Some(x), Some(steps)) = (ra.commits_over_steps_plus_2, r.steps) {
        let _ = writeln!(
            s,
            "     commits per workflow ÷ (steps + 2)       {x:.3}   ({:.2} vs {})",
            r.commits_per_workflow,
            steps + 2
        );
    }
    if let (Some(path), Some(p50), Some(p99)) = (
        ra.commit_path_ms,
        ra.p50_over_commit_path,
        ra.p99_over_commit_path,
    ) {
        let _ = writeln!(
            s,
            "     p50 ÷ ((steps + 1) × commit latency)     {p50:.3}   ({:.2} ms vs {path:.2} ms)",
            l.p50
        );
        let _ = writeln!(
            s,
            "     p99 ÷ ((steps + 1) × commit latency)     {p99:.3}   ({:.2} ms vs {path:.2} ms)",
            l.p99
        );
    }
    if !r.targets.is_empty() {
        let _ = writeln!(s, "   issue 6 targets");
        for t in &r.targets {
            let _ = writeln!(
                s,
                "     {:<62} {:.3} vs {:.3}: {}",
                t.target,
                t.value,
                t.limit,
                holds(t)
            );
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Idle cost

/// What `kodomasu bench idle` measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub workers: usize,
    pub worker_args: Vec<String>,
    pub window_s: f64,
    /// Statements observed in `pg_stat_activity` (distinct `(pid, query_start)` of the scratch
    /// database's client backends, sampled every 10 ms) during the window.
    pub sampled_queries: u64,
    pub sampled_queries_per_s: f64,
    pub sampled_queries_per_s_per_worker: f64,
    /// `xact_commit + xact_rollback` of the scratch database during the window.
    pub transactions: i64,
    pub transactions_per_s: f64,
    pub transactions_per_s_per_worker: f64,
    /// From before the first worker started until the last one exited: start-up included.
    pub lifetime_transactions: i64,
    pub lifetime_s: f64,
    pub samples: u64,
    pub target: Target,
}

/// Starts `--workers` idle `kodomasu worker` processes on the scratch database, waits
/// `--warmup`, then for `--seconds` counts what they send in two independent ways:
///
/// - the scratch database's `xact_commit + xact_rollback` delta (nothing else connects to it;
///   the statistics are read from another database). An idle worker sends only single-statement
///   autocommit transactions (claim polls, heartbeats), so there a transaction is a query;
/// - distinct `(pid, query_start)` pairs of the scratch database's sessions in
///   `pg_stat_activity`, sampled every 10 ms: every statement a session runs sets a new
///   `query_start` (two statements of one session within 10 ms would count once).
///
/// `pg_stat_statements` is not used: it needs `shared_preload_libraries`, which a stock server
/// lacks.
async fn run_idle(scratch: &Scratch, args: &IdleArgs) -> anyhow::Result<()> {
    if args.workers == 0 || args.seconds == 0 {
        bail!("--workers and --seconds must be at least 1");
    }
    let machine = scratch.machine().await?;
    if !args.common.json {
        println!("{}", render_machine(&machine));
    }
    let exe = std::env::current_exe().context("locating the kodomasu binary")?;
    let lifetime_start = scratch.quiet_xact().await?;
    let born = Instant::now();
    let mut children = Vec::new();
    for _ in 0..args.workers {
        let child = tokio::process::Command::new(&exe)
            .arg("worker")
            .arg("--skip-migrate")
            .args(&args.worker_args)
            .env("DATABASE_URL", &scratch.url)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} worker", exe.display()))?;
        children.push(child);
    }
    eprintln!(
        "[bench idle] {} idle worker process(es) started; warming up for {:?}",
        args.workers, args.warmup
    );
    tokio::time::sleep(args.warmup).await;
    for c in &mut children {
        if let Some(status) = c.try_wait()? {
            bail!("an idle worker exited during the warm-up: {status}");
        }
    }

    let window = Duration::from_secs(args.seconds);
    let x0 = scratch.xact().await?;
    let t0 = Instant::now();
    let db_t0: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select clock_timestamp()")
        .fetch_one(&scratch.admin)
        .await?;
    let mut seen: HashSet<(i32, chrono::DateTime<chrono::Utc>)> = HashSet::new();
    let mut samples = 0u64;
    let stop_progress = CancellationToken::new();
    let progress = spawn_idle_progress(args.seconds, t0, stop_progress.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while t0.elapsed() < window {
        tick.tick().await;
        let rows = sqlx::query(
            "select pid, query_start from pg_stat_activity
             where datname = $1 and backend_type = 'client backend' and query_start is not null",
        )
        .bind(&scratch.name)
        .fetch_all(&scratch.admin)
        .await?;
        samples += 1;
        for r in rows {
            let pid: i32 = r.try_get(0)?;
            let at: chrono::DateTime<chrono::Utc> = r.try_get(1)?;
            if at >= db_t0 {
                seen.insert((pid, at));
            }
        }
    }
    let x1 = scratch.xact().await?;
    let window_s = t0.elapsed().as_secs_f64();
    stop_progress.cancel();
    let _ = progress.await;
    // Everything the workers sent up to now, start-up included, is flushed when they exit.
    for c in &mut children {
        c.start_kill()?;
        c.wait().await?;
    }
    let lifetime_s = born.elapsed().as_secs_f64();
    let lifetime_end = scratch.quiet_xact().await?;

    let sampled = seen.len() as u64;
    let transactions = (x1.0 + x1.1) - (x0.0 + x0.1);
    let w = args.workers as f64;
    let tps = transactions as f64 / window_s;
    let qps = sampled as f64 / window_s;
    let report = IdleReport {
        workers: args.workers,
        worker_args: args.worker_args.clone(),
        window_s,
        sampled_queries: sampled,
        sampled_queries_per_s: qps,
        sampled_queries_per_s_per_worker: qps / w,
        transactions,
        transactions_per_s: tps,
        transactions_per_s_per_worker: tps / w,
        lifetime_transactions: (lifetime_end.0 + lifetime_end.1)
            - (lifetime_start.0 + lifetime_start.1),
        lifetime_s,
        samples,
        target: target_at_most("an idle worker process: ≤ 1 query/s", qps / w, 1.0),
    };
    if args.common.json {
        let doc = json!({ "machine": machine, "idle": report });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{}", render_idle(&report));
    }
    Ok(())
}

fn spawn_idle_progress(
    seconds: u64,
    started: Instant,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(10)
        };
        loop {
            tokio::select! { _ = tokio::time::sleep(every) => {}, _ = stop.cancelled() => break }
            let line = format!(
                "[bench idle] measuring: {:.0}/{seconds} s",
                started.elapsed().as_secs_f64()
            );
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
        if tty {
            eprint!("\r\x1b[K");
        }
    })
}

/// The text report of `kodomasu bench idle`.
pub fn render_idle(r: &IdleReport) -> String {
    let mut s = String::new();
    let args = if r.worker_args.is_empty() {
        "default settings".to_owned()
    } else {
        r.worker_args.join(" ")
    };
    let _ = writeln!(
        s,
        "== idle: {} idle `kodomasu worker` process(es) ({args}), {:.1} s window",
        r.workers, r.window_s
    );
    let _ = writeln!(
        s,
        "   transactions (xact_commit + xact_rollback Δ)   {} = {:.3}/s = {:.3}/s per worker",
        r.transactions, r.transactions_per_s, r.transactions_per_s_per_worker
    );
    let _ = writeln!(
        s,
        "   queries (pg_stat_activity, sampled every 10 ms) {} = {:.3}/s = {:.3}/s per worker ({} samples)",
        r.sampled_queries, r.sampled_queries_per_s, r.sampled_queries_per_s_per_worker, r.samples
    );
    let _ = writeln!(
        s,
        "   whole lifetime incl. start-up                   {} transactions in {:.1} s",
        r.lifetime_transactions, r.lifetime_s
    );
    let _ = writeln!(
        s,
        "   issue 6 target: {}  {:.3} vs {:.3}: {}",
        r.target.target,
        r.target.value,
        r.target.limit,
        holds(&r.target)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // 4 values: p50 is the 2nd, p95 and p99 the 4th.
        let four = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&four, 50.0), Some(2.0));
        assert_eq!(percentile(&four, 95.0), Some(4.0));
    }

    #[test]
    fn summary_sorts_and_ignores_non_finite_values() {
        let s = Summary::of(&[3.0, 1.0, f64::NAN, 2.0, 10.0]);
        assert_eq!(s.count, 4);
        assert_eq!((s.min, s.max), (1.0, 10.0));
        assert_eq!(s.p50, 2.0);
        assert_eq!(s.p99, 10.0);
        assert!((s.mean - 4.0).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn rates_and_ratios_do_not_divide_by_zero() {
        assert_eq!(per_s(10, Duration::from_secs(2)), 5.0);
        assert_eq!(per_s(10, Duration::ZERO), 0.0);
        assert!(ratio(1.0, 0.0).is_nan());
        assert_eq!(ratio(1.0, 4.0), 0.25);
    }

    #[test]
    fn the_scratch_url_replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
        assert_eq!(with_database("postgresql://h/db", "x"), "postgresql://h/x");
    }
}
