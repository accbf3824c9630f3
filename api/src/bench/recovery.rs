//! `kodomasu bench recovery`: how long the workflows of a SIGKILLed worker process wait before
//! they move again, and how many activity bodies the kill makes run twice.
//!
//! On a scratch database it runs `--workers` real `kodomasu worker` processes (this binary,
//! default settings unless flags follow `--`) and keeps `--in-flight` `demo.chain` workflows
//! running, each step an activity that sleeps `--step-time`. Then, `--kills` times:
//!
//! 1. after `--settle`, the worker process holding the most workflows is stopped (SIGSTOP) for
//!    the few milliseconds it takes to read, from the database, exactly which workflows it
//!    holds (a stopped process commits nothing more, so the set cannot change under the read);
//! 2. it is killed with SIGKILL; the clock starts at that instant;
//! 3. for each workflow it held (its orphans), the time from the kill to the first journal
//!    event written after it (`events.created_at`, the database's clock; the kill instant is
//!    taken on this machine's clock and moved to the database's by the offset measured at the
//!    start, ≈ 0 when both run on the same machine) is the recovery time;
//! 4. attempts the killed worker left running are journaled by whoever recovers them as
//!    `abandoned` (`activity_attempts.outcome`, `worker_id` = the killed worker): each is an
//!    activity body that ran (or had been about to run) and runs again;
//! 5. once every orphan moved, a replacement worker process starts and the next round begins.
//!
//! Worker processes are children of this process: killed and reaped on every exit path
//! (`kill_on_drop` as the last resort).

use super::{CommonArgs, Scratch, Summary, Target, holds, render_machine, target_at_most};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Args;
use engine::{Engine, PgStore, Store};
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `kodomasu bench recovery [OPTIONS] [-- <worker flags>]`.
#[derive(Debug, Clone, Args)]
pub struct RecoveryArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Worker processes (`kodomasu worker`) running the load. One is killed per round and
    /// replaced once its workflows moved, so the survivors pick the orphans up.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Rounds, each one SIGKILL of one worker process; the figures aggregate all rounds.
    #[arg(long, default_value_t = 3)]
    pub kills: usize,
    /// `demo.chain` workflows kept running (new ones start as others finish). The default
    /// leaves the survivors free slots for the orphans (3 workers × 32 slots), so the figures
    /// show detection, not queueing.
    #[arg(long, default_value_t = 48)]
    pub in_flight: u64,
    /// Steps of each `demo.chain` workflow.
    #[arg(long, default_value_t = 20)]
    pub steps: u32,
    /// How long each step's activity body runs (`sleep_ms`): a kill lands mid-body.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub step_time: Duration,
    /// Time between the load (or the previous round's replacement worker) starting and the kill.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// A round whose orphans have not all moved after this long fails the run.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub round_timeout: Duration,
    /// Extra arguments of the worker processes, after `--` (e.g. `-- --lease-ttl 5s`).
    #[arg(last = true)]
    pub worker_args: Vec<String>,
}

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub pid: u32,
    pub worker_id: Uuid,
    /// The killed worker's lease TTL, as it registered it.
    pub lease_ttl_ms: i64,
    /// Workflows it held at the kill.
    pub held: usize,
    /// Kill → first journal event of each orphan, in ms.
    pub recovery_ms: Summary,
    /// Attempts it left running, journaled `abandoned` by the workers that took over.
    pub bodies_ran_twice: i64,
}

/// What `kodomasu bench recovery` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    pub workers: usize,
    pub worker_args: Vec<String>,
    pub in_flight: u64,
    pub steps: u32,
    pub step_time_ms: u64,
    /// The database's clock minus this machine's, in ms (applied to the kill instants).
    pub clock_offset_ms: f64,
    pub rounds: Vec<Round>,
    pub held: usize,
    /// Kill → first journal event of each orphan, in ms, over all rounds.
    pub recovery_ms: Summary,
    pub bodies_ran_twice: i64,
    /// Workflows started during the run, and how they stood at its end.
    pub started: u64,
    pub statuses: BTreeMap<String, i64>,
    pub target: Target,
}

/// The worker processes; killed and reaped by [`Fleet::stop`], killed by `kill_on_drop` when
/// dropped without it.
#[derive(Debug)]
struct Fleet {
    exe: std::path::PathBuf,
    url: String,
    args: Vec<String>,
    children: Vec<Child>,
}

impl Fleet {
    /// Starts one more worker process and waits until it has registered; returns its pid.
    async fn spawn(&mut self, pool: &PgPool) -> anyhow::Result<u32> {
        let mut child = Command::new(&self.exe)
            .arg("worker")
            .arg("--skip-migrate")
            .args(&self.args)
            .env("DATABASE_URL", &self.url)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} worker", self.exe.display()))?;
        let pid = child.id().context("the worker process exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if worker_id(pool, pid).await?.is_some() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("worker process {pid} exited before it registered: {status}");
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!("worker process {pid} did not register within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.children.push(child);
        Ok(pid)
    }

    fn take(&mut self, pid: u32) -> Option<Child> {
        let i = self.children.iter().position(|c| c.id() == Some(pid))?;
        Some(self.children.swap_remove(i))
    }

    /// SIGKILLs and reaps every worker process.
    async fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        for mut c in self.children.drain(..) {
            let _ = c.wait().await;
        }
    }
}

async fn worker_id(pool: &PgPool, pid: u32) -> anyhow::Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "select id from kodomasu.workers where pid = $1 and stopped_at is null
         order by started_at desc limit 1",
    )
    .bind(pid as i32)
    .fetch_optional(pool)
    .await?)
}

/// Workflows `worker` holds a lease on.
async fn held_by(pool: &PgPool, worker: Uuid) -> anyhow::Result<BTreeSet<Uuid>> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "select id from kodomasu.workflows where lease_owner = $1 and status = 'running'",
    )
    .bind(worker)
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().collect())
}

/// For each of `ids` that moved since `since`: seconds from `since` to its first event after it.
async fn moved_since(
    pool: &PgPool,
    ids: &[Uuid],
    since: DateTime<Utc>,
) -> anyhow::Result<Vec<f64>> {
    Ok(sqlx::query_scalar::<_, Option<f64>>(
        "select extract(epoch from (select min(e.created_at) from kodomasu.events e
                                    where e.workflow_id = i.id and e.created_at > $2) - $2)::float8
         from unnest($1::uuid[]) as i(id)",
    )
    .bind(ids)
    .bind(since)
    .fetch_all(pool)
    .await?
    .into_iter()
    .flatten()
    .collect())
}

/// The database's clock minus this machine's, from the round trip with the smallest delay.
async fn clock_offset(pool: &PgPool) -> anyhow::Result<chrono::Duration> {
    let mut best: Option<(Duration, chrono::Duration)> = None;
    for _ in 0..20 {
        let t0 = Utc::now();
        let started = Instant::now();
        let db: DateTime<Utc> = sqlx::query_scalar("select clock_timestamp()")
            .fetch_one(pool)
            .await?;
        let rtt = started.elapsed();
        let mid = t0 + chrono::Duration::from_std(rtt / 2).unwrap_or_default();
        if best.is_none_or(|(r, _)| rtt < r) {
            best = Some((rtt, db - mid));
        }
    }
    Ok(best.map(|(_, o)| o).unwrap_or_default())
}

/// Sends `signal` (`STOP`, `CONT`) to `pid` with kill(1).
async fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await
        .context("running kill(1)")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// A status line on stderr: rewritten in place on a terminal, printed every 5 s otherwise.
#[derive(Debug)]
struct Progress {
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn show(&mut self, line: impl FnOnce() -> String) {
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        if self.tty {
            eprint!("\r[bench recovery] {}\x1b[K", line());
        } else {
            eprintln!("[bench recovery] {}", line());
        }
    }

    /// Prints a line that stays.
    fn note(&mut self, line: &str) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
        eprintln!("[bench recovery] {line}");
        self.last = None;
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// Runs `kodomasu bench recovery`; every worker process is killed and reaped before it returns,
/// also when `shutdown` fires.
///
/// # Errors
/// When the database or a worker process fails, or a round times out.
pub(super) async fn run(
    scratch: &Scratch,
    args: &RecoveryArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if args.workers < 2 || args.kills == 0 || args.in_flight == 0 {
        bail!(
            "--workers must be at least 2 (survivors take over), --kills and --in-flight at least 1"
        );
    }
    if !(1..=10_000).contains(&args.steps) || args.step_time > Duration::from_secs(600) {
        bail!("--steps must be between 1 and 10000 and --step-time at most 10m");
    }
    let machine = scratch.machine().await?;
    if !args.common.json {
        println!("{}", render_machine(&machine));
    }
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&scratch.url)
        .await?;
    let mut fleet = Fleet {
        exe: std::env::current_exe().context("locating the kodomasu binary")?,
        url: scratch.url.clone(),
        args: args.worker_args.clone(),
        children: Vec::new(),
    };
    let stop_feeding = CancellationToken::new();
    let result = tokio::select! {
        r = measure(&pool, args, &mut fleet, &stop_feeding) => r,
        _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
    };
    stop_feeding.cancel();
    fleet.stop().await;
    pool.close().await;
    let report = result?;
    if args.common.json {
        let doc = json!({ "machine": machine, "recovery": report });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{}", render_recovery(&report));
    }
    Ok(())
}

/// Keeps `in_flight` workflows running until `stop`; returns how many it started.
async fn feed(
    engine: Arc<Engine>,
    pool: PgPool,
    in_flight: u64,
    input: serde_json::Value,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let mut started = 0u64;
    loop {
        let running: i64 =
            sqlx::query_scalar("select count(*) from kodomasu.workflows where status = 'running'")
                .fetch_one(&pool)
                .await?;
        for _ in running.max(0) as u64..in_flight {
            engine.start("demo.chain", None, input.clone()).await?;
            started += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.cancelled() => return Ok(started),
        }
    }
}

async fn measure(
    pool: &PgPool,
    args: &RecoveryArgs,
    fleet: &mut Fleet,
    stop_feeding: &CancellationToken,
) -> anyhow::Result<RecoveryReport> {
    let mut progress = Progress::new();
    let offset = clock_offset(pool).await?;
    for _ in 0..args.workers {
        fleet.spawn(pool).await?;
    }
    progress.note(&format!(
        "{} worker processes started; keeping {} demo.chain workflows ({} steps of {:?}) in flight",
        args.workers, args.in_flight, args.steps, args.step_time
    ));
    let store: Arc<dyn Store> = Arc::new(PgStore::new(pool.clone()));
    let engine = Arc::new(Engine::new(store, workflows::registry(None)));
    let input = json!({
        "steps": args.steps,
        "sleep_ms": args.step_time.as_millis() as u64,
        "fail_prob": 0.0,
    });
    // Aborted with this future if the run is interrupted.
    let mut feeder = tokio::task::JoinSet::new();
    feeder.spawn(feed(
        engine,
        pool.clone(),
        args.in_flight,
        input,
        stop_feeding.clone(),
    ));
    let rounds = tokio::select! {
        r = kill_rounds(pool, args, fleet, offset, &mut progress) => r,
        Some(fed) = feeder.join_next() => match fed {
            Ok(Ok(_)) => Err(anyhow::anyhow!("the load stopped early")),
            Ok(Err(e)) => Err(e.context("starting workflows")),
            Err(e) => Err(anyhow::anyhow!("the load task failed: {e}")),
        },
    };
    stop_feeding.cancel();
    let rounds = rounds?;
    let started = match feeder.join_next().await {
        Some(Ok(r)) => r?,
        Some(Err(e)) => bail!("the load task failed: {e}"),
        None => bail!("the load task is gone"),
    };
    progress.clear();

    let statuses: BTreeMap<String, i64> = sqlx::query(
        "select status, count(*) from kodomasu.workflows group by status order by status",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let all: Vec<f64> = rounds
        .iter()
        .flat_map(|(_, delays)| delays.iter().map(|s| s * 1000.0))
        .collect();
    let recovery_ms = Summary::of(&all);
    let rounds: Vec<Round> = rounds.into_iter().map(|(r, _)| r).collect();
    Ok(RecoveryReport {
        workers: args.workers,
        worker_args: args.worker_args.clone(),
        in_flight: args.in_flight,
        steps: args.steps,
        step_time_ms: args.step_time.as_millis() as u64,
        clock_offset_ms: offset.num_microseconds().unwrap_or_default() as f64 / 1000.0,
        held: rounds.iter().map(|r| r.held).sum(),
        bodies_ran_twice: rounds.iter().map(|r| r.bodies_ran_twice).sum(),
        rounds,
        target: target_at_most(
            "recovery p99 from SIGKILL to each orphan's next transition ≤ 1 s",
            recovery_ms.p99 / 1000.0,
            1.0,
        ),
        recovery_ms,
        started,
        statuses,
    })
}

/// The kill rounds; each with its recovery delays in seconds.
async fn kill_rounds(
    pool: &PgPool,
    args: &RecoveryArgs,
    fleet: &mut Fleet,
    offset: chrono::Duration,
    progress: &mut Progress,
) -> anyhow::Result<Vec<(Round, Vec<f64>)>> {
    let mut rounds = Vec::new();
    for k in 1..=args.kills {
        let settled = Instant::now();
        while settled.elapsed() < args.settle {
            progress.show(|| {
                format!(
                    "kill {k}/{}: load settling, {:.0}/{:.0} s",
                    args.kills,
                    settled.elapsed().as_secs_f64(),
                    args.settle.as_secs_f64()
                )
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The victim: the live worker process holding the most workflows.
        let (pid, worker, _) = loop {
            let mut best: Option<(u32, Uuid, usize)> = None;
            for c in &fleet.children {
                let Some(pid) = c.id() else { continue };
                let Some(id) = worker_id(pool, pid).await? else {
                    continue;
                };
                let n = held_by(pool, id).await?.len();
                if n > 0 && best.is_none_or(|(_, _, m)| n > m) {
                    best = Some((pid, id, n));
                }
            }
            if let Some(b) = best {
                break b;
            }
            progress.show(|| {
                format!(
                    "kill {k}/{}: waiting for a worker that holds workflows",
                    args.kills
                )
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut victim = fleet
            .take(pid)
            .context("the chosen worker process is gone")?;

        // Freeze it, read what it holds once that stopped changing, then kill it.
        send_signal(pid, "STOP").await?;
        let mut orphans = held_by(pool, worker).await?;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let again = held_by(pool, worker).await?;
            if again == orphans {
                break;
            }
            orphans = again;
        }
        victim.start_kill().context("sending SIGKILL")?;
        let killed_at = Utc::now() + offset;
        victim.wait().await?;
        let lease_ttl_ms: i64 =
            sqlx::query_scalar("select lease_ttl_ms from kodomasu.workers where id = $1")
                .bind(worker)
                .fetch_one(pool)
                .await?;
        progress.note(&format!(
            "kill {k}/{}: SIGKILL worker process {pid} holding {} workflows (lease TTL {} ms)",
            args.kills,
            orphans.len(),
            lease_ttl_ms
        ));

        let ids: Vec<Uuid> = orphans.iter().copied().collect();
        let since_kill = Instant::now();
        let delays = loop {
            let moved = moved_since(pool, &ids, killed_at).await?;
            if moved.len() == ids.len() {
                break moved;
            }
            if since_kill.elapsed() > args.round_timeout {
                bail!(
                    "kill {k}: {} of {} orphaned workflows did not move within {:?}",
                    ids.len() - moved.len(),
                    ids.len(),
                    args.round_timeout
                );
            }
            progress.show(|| {
                format!(
                    "kill {k}/{}: {}/{} orphans moved, {:.1} s since the kill",
                    args.kills,
                    moved.len(),
                    ids.len(),
                    since_kill.elapsed().as_secs_f64()
                )
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let bodies_ran_twice: i64 = sqlx::query_scalar(
            "select count(*) from kodomasu.activity_attempts where worker_id = $1 and outcome = 'abandoned'",
        )
        .bind(worker)
        .fetch_one(pool)
        .await?;
        let summary = Summary::of(&delays.iter().map(|s| s * 1000.0).collect::<Vec<_>>());
        progress.note(&format!(
            "kill {k}/{}: all {} orphans moved; p50 {:.0} ms, max {:.0} ms; {bodies_ran_twice} bodies ran twice",
            args.kills,
            ids.len(),
            summary.p50,
            summary.max
        ));
        rounds.push((
            Round {
                pid,
                worker_id: worker,
                lease_ttl_ms,
                held: ids.len(),
                recovery_ms: summary,
                bodies_ran_twice,
            },
            delays,
        ));
        fleet.spawn(pool).await?;
    }
    Ok(rounds)
}

/// The text report of `kodomasu bench recovery`.
pub fn render_recovery(r: &RecoveryReport) -> String {
    let mut s = String::new();
    let args = if r.worker_args.is_empty() {
        "default settings".to_owned()
    } else {
        r.worker_args.join(" ")
    };
    let _ = writeln!(
        s,
        "== recovery: SIGKILL of one of {} `kodomasu worker` processes ({args}), {} rounds",
        r.workers,
        r.rounds.len()
    );
    let _ = writeln!(
        s,
        "   load                        {} demo.chain workflows in flight, {} steps of {} ms each; {} started",
        r.in_flight, r.steps, r.step_time_ms, r.started
    );
    let _ = writeln!(
        s,
        "   clock offset                database − this machine: {:+.3} ms (applied to the kill instants)",
        r.clock_offset_ms
    );
    for (i, round) in r.rounds.iter().enumerate() {
        let m = &round.recovery_ms;
        let _ = writeln!(
            s,
            "   kill {:<2}                     pid {}, lease TTL {} ms: held {}, moved after min {:.0} / p50 {:.0} / max {:.0} ms; bodies ran twice {}",
            i + 1,
            round.pid,
            round.lease_ttl_ms,
            round.held,
            m.min,
            m.p50,
            m.max,
            round.bodies_ran_twice
        );
    }
    let m = &r.recovery_ms;
    let _ = writeln!(s, "   workflows held at the kills {}", r.held);
    let _ = writeln!(
        s,
        "   kill → next transition      min {:.0} ms, p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms (mean {:.0}, {} orphans)",
        m.min, m.p50, m.p95, m.p99, m.max, m.mean, m.count
    );
    let _ = writeln!(
        s,
        "   activity bodies ran twice   {} (attempts the killed workers left running, journaled `abandoned`)",
        r.bodies_ran_twice
    );
    let statuses: Vec<String> = r.statuses.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "   statuses at the end         {}", statuses.join(", "));
    let _ = writeln!(
        s,
        "   issue 6 target: {}  {:.3} s vs {:.3} s: {}",
        r.target.target,
        r.target.value,
        r.target.limit,
        holds(&r.target)
    );
    s
}
