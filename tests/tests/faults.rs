//! Faults: real `kodomasu` server and worker processes while the database restarts, while its
//! connections are terminated in a storm, while a worker is frozen past its lease, and while
//! Masumi and Kodosumi are slow, failing or hanging. Each test ends with the same promises:
//! no workflow lost, no side effect duplicated per idempotency key, every workflow terminal.
//!
//! In the paid-job test, a paying job whose delivery the faults delay past the simulated
//! seller window (10 s) is refunded by its buyer instead; the money rules hold the same.
//!
//! The short form runs in CI with the other tests (`bash scripts/test.sh`), each test in a few
//! to ~30 seconds. `scripts/faults.sh` runs them longer (`KODOMASU_FAULTS_SCALE`, default 1,
//! multiplies loads and fault phases). Process logs go to `target/debug/test-logs/faults_*`.

mod common;

use activities::kodosumi::sim::SimLaunch;
use activities::masumi::OnChainState;
use activities::masumi::hash::output_hash;
use activities::masumi::sim::SimPaymentReport;
use common::faults::{
    Admin, Cluster, OBSERVER_APP, assert_alive, assert_chains_done, create_db_on, log_lines,
    observer_pool, scaled, scaled_time, signal, spawn_server, spawn_worker,
};
use common::services::{Services, SimProcess, flow_uid};
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::task::JoinSet;

/// A short lease, so that take-overs happen within the tests' time.
const LEASE_TTL: &str = "2s";

/// Starts `n` `demo.chain` workflows by key (`{prefix}-{i}`) through the server's admin API,
/// spread evenly over `over`, from 4 concurrent clients; each start retries with its key
/// until it is answered. Returns the keys and how many starts needed more than one try.
async fn start_chains(
    admin: Admin,
    prefix: &'static str,
    n: usize,
    over: Duration,
) -> anyhow::Result<(Vec<String>, usize)> {
    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..4 {
        let (admin, next) = (admin.clone(), next.clone());
        clients.spawn(async move {
            let mut retried = 0;
            let mut keys = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return anyhow::Ok((keys, retried));
                }
                tokio::time::sleep_until((t0 + over.mul_f64(i as f64 / n as f64)).into()).await;
                let key = format!("{prefix}-{i}");
                let input =
                    json!({"steps": 3 + i % 3, "sleep_ms": 100 + (i % 4) * 100, "fail_prob": 0.0});
                let (_, tries) = admin
                    .start_by_key("demo.chain", &key, &input, Duration::from_secs(90))
                    .await?;
                if tries > 1 {
                    retried += 1;
                }
                keys.push(key);
            }
        });
    }
    let (mut keys, mut retried) = (Vec::new(), 0);
    while let Some(done) = clients.join_next().await {
        let (k, r) = done??;
        keys.extend(k);
        retried += r;
    }
    Ok((keys, retried))
}

/// Kills and reaps the processes of a test.
async fn stop_all(children: impl IntoIterator<Item = &mut Child>) {
    for c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
}

/// Counts of a warning in worker logs.
fn warnings(logs: &[PathBuf], needle: &str) -> usize {
    logs.iter().map(|l| log_lines(l, &[needle]).len()).sum()
}

// ---------------------------------------------------------------------------------------------
// a) The database restarted under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarted_under_load() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let db = create_db_on(&cluster.url, "faults_restart").await?;
    let logs = log_dir("faults_restart");
    eprintln!(
        "restart: own cluster at {}, database {}, logs in {}",
        cluster.url,
        db.name,
        logs.display()
    );
    let server_log = logs.join("server.log");
    let (mut server, base) = spawn_server(&db.url, &[], &[], &server_log).await?;
    let worker_logs: Vec<PathBuf> = (0..2)
        .map(|i| logs.join(format!("worker-{i}.log")))
        .collect();
    let mut workers = worker_logs
        .iter()
        .map(|log| spawn_worker(&db.url, LEASE_TTL, &["--slots", "16"], &[], log))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let n = scaled(60);
    let span = scaled_time(Duration::from_secs(8));
    let mut starting = JoinSet::new();
    starting.spawn(start_chains(Admin::new(&base)?, "restart", n, span));

    // Restarts while workflows start and run, alternating: `pg_ctl restart -m fast` (sessions
    // terminated, checkpoint, back at once) and a crash with a longer outage: `stop -m
    // immediate` (no checkpoint: crash recovery at the next start), 2 s down, `start`. The
    // outage outlasts a worker's commit retries, so steps are handed back or recovered.
    let restarts = scaled(2);
    for r in 0..restarts {
        tokio::time::sleep(span / (restarts as u32 + 1)).await;
        let t = Instant::now();
        let how = if r % 2 == 0 {
            cluster.restart("fast").await?;
            "pg_ctl restart -m fast"
        } else {
            cluster.stop("immediate").await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.start_server().await?;
            "pg_ctl stop -m immediate, 2 s down, pg_ctl start"
        };
        eprintln!(
            "restart: {how} ({} of {restarts}): back after {:.1}s",
            r + 1,
            t.elapsed().as_secs_f64()
        );
    }
    let (keys, retried) = match starting.join_next().await {
        Some(r) => r??,
        None => anyhow::bail!("the start task is gone"),
    };
    eprintln!(
        "restart: {} workflows started ({retried} starts needed a retry)",
        keys.len()
    );

    wait_all_terminal(&db.pool, scaled_time(Duration::from_secs(120))).await?;
    assert_alive("the server", &mut server, &server_log)?;
    for (w, log) in workers.iter_mut().zip(&worker_logs) {
        assert_alive("a worker", w, log)?;
    }
    assert_chains_done(&db.pool, &keys).await?;
    eprintln!(
        "restart: all {} completed, journals sound; abandoned attempts {}, failed commits logged {}, fenced commits logged {}",
        keys.len(),
        abandoned_attempts(&db.pool).await?,
        warnings(&worker_logs, "commit failed"),
        warnings(&worker_logs, "commit fenced"),
    );
    stop_all(workers.iter_mut().chain([&mut server])).await;
    db.pool.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// b) A storm of pg_terminate_backend on the engine's connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_storm_loses_nothing() -> anyhow::Result<()> {
    let db = TestDb::create("faults_storm").await?;
    let observer = observer_pool(&db.url).await?;
    let logs = log_dir("faults_storm");
    eprintln!("storm: database {}, logs in {}", db.name, logs.display());
    let server_log = logs.join("server.log");
    let (mut server, base) = spawn_server(&db.url, &[], &[], &server_log).await?;
    let worker_logs: Vec<PathBuf> = (0..2)
        .map(|i| logs.join(format!("worker-{i}.log")))
        .collect();
    let mut workers = worker_logs
        .iter()
        .map(|log| spawn_worker(&db.url, LEASE_TTL, &["--slots", "16"], &[], log))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let n = scaled(60);
    let span = scaled_time(Duration::from_secs(10));
    let mut starting = JoinSet::new();
    starting.spawn(start_chains(Admin::new(&base)?, "storm", n, span));

    // Every 100–400 ms, every session of the engine's processes on this database is terminated
    // (pool connections, LISTEN sessions, the server's); the observer's sessions are spared.
    let storm_end = Instant::now() + span + Duration::from_secs(2);
    let (mut rounds, mut terminated) = (0u64, 0i64);
    while Instant::now() < storm_end {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(100..400))).await;
        let killed: i64 = sqlx::query_scalar(
            "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity
             where datname = current_database() and pid <> pg_backend_pid()
               and backend_type = 'client backend' and application_name is distinct from $1",
        )
        .bind(OBSERVER_APP)
        .fetch_one(&observer)
        .await?;
        rounds += 1;
        terminated += killed;
    }
    let (keys, retried) = match starting.join_next().await {
        Some(r) => r??,
        None => anyhow::bail!("the start task is gone"),
    };
    eprintln!(
        "storm: {rounds} rounds of pg_terminate_backend ended {terminated} sessions; {} workflows started ({retried} starts needed a retry)",
        keys.len()
    );

    wait_all_terminal(&observer, scaled_time(Duration::from_secs(120))).await?;
    assert_alive("the server", &mut server, &server_log)?;
    for (w, log) in workers.iter_mut().zip(&worker_logs) {
        assert_alive("a worker", w, log)?;
    }
    assert_chains_done(&observer, &keys).await?;
    eprintln!(
        "storm: all {} completed, journals sound; abandoned attempts {}, failed commits logged {}, fenced commits logged {}",
        keys.len(),
        abandoned_attempts(&observer).await?,
        warnings(&worker_logs, "commit failed"),
        warnings(&worker_logs, "commit fenced"),
    );
    stop_all(workers.iter_mut().chain([&mut server])).await;
    observer.close().await;
    db.drop_database().await
}

// ---------------------------------------------------------------------------------------------
// c) A worker frozen past its lease, then continued

/// `(version, status, updated_at)` of each of `ids`.
async fn snapshots(
    db: &TestDb,
    ids: &[uuid::Uuid],
) -> anyhow::Result<BTreeMap<uuid::Uuid, (i64, String, chrono::DateTime<chrono::Utc>)>> {
    let rows: Vec<(uuid::Uuid, i64, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select id, version, status, updated_at from kodomasu.workflows where id = any($1)",
    )
    .bind(ids)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, v, s, u)| (id, (v, s, u)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_is_fenced_after_its_lease() -> anyhow::Result<()> {
    let db = TestDb::create("faults_frozen").await?;
    let logs = log_dir("faults_frozen");
    eprintln!("frozen: database {}, logs in {}", db.name, logs.display());
    let (a_log, b_log) = (logs.join("worker-a.log"), logs.join("worker-b.log"));
    let mut a = spawn_worker(&db.url, LEASE_TTL, &["--slots", "16"], &[], &a_log)?;
    let mut b = spawn_worker(&db.url, LEASE_TTL, &["--slots", "16"], &[], &b_log)?;
    let a_pid = a.id().unwrap_or_default();
    let a_id = worker_id_of(&db.pool, a_pid).await?;

    let store: Arc<dyn engine::Store> = Arc::new(engine::PgStore::new(db.pool.clone()));
    let engine = engine::Engine::new(store, workflows::registry(None));
    let input = json!({"steps": 4, "sleep_ms": 500, "fail_prob": 0.0});
    let mut keys = Vec::new();
    for i in 0..scaled(30) {
        let key = format!("frozen-{i}");
        engine
            .start("demo.chain", Some(key.clone()), input.clone())
            .await?;
        keys.push(key);
    }

    // Freeze A while it holds workflows; read what it holds once that stopped changing.
    let started = Instant::now();
    while leased_by(&db.pool, a_id).await?.is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "worker A never held a workflow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&a, "STOP").await?;
    let mut held = leased_by(&db.pool, a_id).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = leased_by(&db.pool, a_id).await?;
        if again == held {
            break;
        }
        held = again;
    }
    held.sort();
    anyhow::ensure!(
        !held.is_empty(),
        "A finished its workflows before the freeze"
    );
    eprintln!(
        "frozen: SIGSTOP worker A (pid {a_pid}) holding {} workflows; lease TTL {LEASE_TTL}",
        held.len()
    );

    // B takes them over once A's leases expired, and finishes them while A is still frozen.
    let frozen = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "select count(*) from kodomasu.workflows where id = any($1) and status not in ('completed', 'failed', 'cancelled')",
        )
        .bind(&held)
        .fetch_one(&db.pool)
        .await?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(
            frozen.elapsed() < scaled_time(Duration::from_secs(60)),
            "{open} of A's workflows were not finished by B within {:?} of the freeze; logs in {}",
            frozen.elapsed(),
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken_over: i64 = sqlx::query_scalar(
        "select count(distinct workflow_id) from kodomasu.activity_attempts
         where workflow_id = any($1) and worker_id = $2 and outcome = 'abandoned'",
    )
    .bind(&held)
    .bind(a_id)
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(
        taken_over as usize,
        held.len(),
        "each workflow A held was recovered with A's running attempt journaled as abandoned"
    );
    let before = snapshots(&db, &held).await?;
    eprintln!(
        "frozen: B finished all {} after {:.1}s; SIGCONT A",
        held.len(),
        frozen.elapsed().as_secs_f64()
    );

    // A continues: its in-flight steps end (or its renewal finds the leases gone) and every
    // late commit is refused by the fence (lease owner, epoch and version).
    signal(&a, "CONT").await?;
    let resumed_at = db_now(&db.pool).await?;
    let refused = |id: &uuid::Uuid| {
        let needle = format!("workflow.id={id}");
        let fenced = log_lines(&a_log, &[&needle, "commit fenced"]).len();
        let lost = log_lines(&a_log, &[&needle, "lease lost"]).len();
        (fenced, lost)
    };
    let waited = Instant::now();
    loop {
        let silent: Vec<_> = held.iter().filter(|id| refused(id) == (0, 0)).collect();
        if silent.is_empty() {
            break;
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(30),
            "worker A did not report a refused write (`commit fenced` or `lease lost`) for {silent:?}; see {}",
            a_log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a late write that got past the log every chance to land, then look for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        snapshots(&db, &held).await?,
        before,
        "A's late writes changed nothing"
    );
    let late: i64 = sqlx::query_scalar(
        "select count(*) from kodomasu.activity_attempts where workflow_id = any($1) and finished_at >= $2",
    )
    .bind(&held)
    .bind(resumed_at)
    .fetch_one(&db.pool)
    .await?;
    assert_eq!(
        late, 0,
        "no attempt of A's old workflows was journaled after A resumed"
    );
    let (fenced, lost) = held
        .iter()
        .map(refused)
        .fold((0, 0), |acc, (f, l)| (acc.0 + f, acc.1 + l));
    eprintln!(
        "frozen: A's late writes refused: {fenced} commits fenced, {lost} leases found lost; the {} workflows are unchanged",
        held.len()
    );

    // A works on normally after the fence.
    for i in 0..scaled(20) {
        let key = format!("frozen-after-{i}");
        engine
            .start("demo.chain", Some(key.clone()), input.clone())
            .await?;
        keys.push(key);
    }
    wait_all_terminal(&db.pool, scaled_time(Duration::from_secs(90))).await?;
    assert_alive("worker A", &mut a, &a_log)?;
    assert_alive("worker B", &mut b, &b_log)?;
    assert_chains_done(&db.pool, &keys).await?;
    let a_after: i64 = sqlx::query_scalar(
        "select count(*) from kodomasu.activity_attempts where worker_id = $1 and outcome = 'completed' and finished_at >= $2",
    )
    .bind(a_id)
    .bind(resumed_at)
    .fetch_one(&db.pool)
    .await?;
    eprintln!(
        "frozen: all {} workflows completed, journals sound; A completed {a_after} attempts after it resumed",
        keys.len()
    );
    stop_all([&mut a, &mut b]).await;
    db.drop_database().await
}

// ---------------------------------------------------------------------------------------------
// d) External services slow, failing, or hanging

/// How a job's buyer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Buyer {
    /// Pays after a short delay; the run succeeds.
    Pays,
    /// Pays; the run fails on Kodosumi (its `fail` checkbox).
    PaysRunFails,
    /// Never pays: the job fails at `payByTime`.
    NeverPays,
}

#[derive(Debug, Clone)]
struct PaidJob {
    name: String,
    purchaser: String,
    buyer: Buyer,
    /// What `start_job` finally answered: its status and body.
    answer: (u16, Value),
}

/// Starts one job: presets its buyer, then calls `start_job`, retrying while the server says
/// the services are down (503: nothing was created).
async fn start_paid_job(
    http: &reqwest::Client,
    base: &str,
    uid: &str,
    masumi_root: &str,
    mut job: PaidJob,
) -> anyhow::Result<PaidJob> {
    let behavior = match job.buyer {
        Buyer::NeverPays => json!({"kind": "never_pay"}),
        Buyer::Pays | Buyer::PaysRunFails => {
            json!({"kind": "pay", "after_ms": fastrand::u64(200..1_500)})
        }
    };
    http.post(format!("{masumi_root}/_sim/buyers"))
        .json(&json!({"identifierFromPurchaser": job.purchaser, "behavior": behavior}))
        .send()
        .await?
        .error_for_status()?;
    let input = json!({"name": job.name, "fail": job.buyer == Buyer::PaysRunFails});
    let t0 = Instant::now();
    loop {
        let resp = http
            .post(format!("{base}/{uid}/start_job"))
            .json(&json!({"identifier_from_purchaser": job.purchaser, "input_data": input}))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status == 503 && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        job.answer = (status, body);
        return Ok(job);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_failing_and_hanging_services_keep_money_safe() -> anyhow::Result<()> {
    let db = TestDb::create("faults_services").await?;
    let logs = log_dir("faults_services");
    eprintln!("services: database {}, logs in {}", db.name, logs.display());
    let masumi = SimProcess::spawn(
        "masumi",
        &[
            "--fast-clock",
            "--chain-step",
            "100ms",
            // A job that has not delivered 10 s after the funds were locked is refunded.
            "--seller-window",
            "10s",
        ],
        &logs.join("sim-masumi.log"),
    )
    .await?;
    let kodosumi = SimProcess::spawn(
        "kodosumi",
        &["--flow-duration", "1s"],
        &logs.join("sim-kodosumi.log"),
    )
    .await?;
    let mut services = Services { masumi, kodosumi };
    let mut env = services.env();
    // Hung requests fail after 2 s instead of 30 s; unpaid jobs end after 10 s.
    env.push(("KODOMASU_SERVICE_TIMEOUT".to_owned(), "2s".to_owned()));
    env.push(("KODOMASU_PAY_BY".to_owned(), "10s".to_owned()));
    let server_log = logs.join("server.log");
    let (mut server, base) = spawn_server(&db.url, &[], &env, &server_log).await?;
    let worker_logs: Vec<PathBuf> = (0..2)
        .map(|i| logs.join(format!("worker-{i}.log")))
        .collect();
    let mut workers = worker_logs
        .iter()
        .map(|log| spawn_worker(&db.url, LEASE_TTL, &["--slots", "32"], &env, log))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let admin = Admin::new(&base)?;
    let uid = flow_uid(&http, &base, "Hello World", Duration::from_secs(30)).await?;

    // Both services slow, failing and hanging. Masumi also loses answers after it acted.
    let set_faults = |root: String, faults: Value| {
        let http = http.clone();
        async move {
            http.post(format!("{root}/_sim/faults"))
                .json(&faults)
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        }
    };
    let masumi_faults = json!({"latency_ms": 30, "error_rate": 0.15, "hang_rate": 0.03, "lost_response_rate": 0.05});
    let kodosumi_faults = json!({"latency_ms": 30, "error_rate": 0.15, "hang_rate": 0.03});
    set_faults(services.masumi.root.clone(), masumi_faults.clone()).await?;
    set_faults(services.kodosumi.root.clone(), kodosumi_faults.clone()).await?;
    eprintln!("services: faults on: Masumi {masumi_faults}, Kodosumi {kodosumi_faults}");

    let n = scaled(24);
    let span = scaled_time(Duration::from_secs(8));
    let plan: Vec<PaidJob> = (0..n)
        .map(|i| PaidJob {
            name: format!("fault-{i:03}-{:06x}", fastrand::u32(..0xff_ffff)),
            purchaser: format!("{:016x}", fastrand::u64(..)),
            buyer: match i % 8 {
                0 => Buyer::NeverPays,
                1 => Buyer::PaysRunFails,
                _ => Buyer::Pays,
            },
            answer: (0, Value::Null),
        })
        .collect();
    let t0 = Instant::now();
    let mut starting = JoinSet::new();
    for (i, job) in plan.into_iter().enumerate() {
        let (http, base, uid, masumi) = (
            http.clone(),
            base.clone(),
            uid.clone(),
            services.masumi.root.clone(),
        );
        let due = t0 + span.mul_f64(i as f64 / n as f64);
        starting.spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            start_paid_job(&http, &base, &uid, &masumi, job).await
        });
    }
    let mut jobs = Vec::new();
    while let Some(done) = starting.join_next().await {
        jobs.push(done??);
    }
    jobs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    for j in &jobs {
        *answers.entry(j.answer.0).or_default() += 1;
    }
    eprintln!("services: {n} start_job calls answered {answers:?}");
    tokio::time::sleep(span.saturating_sub(t0.elapsed())).await;

    // The outage ends; every job must now reach an end.
    set_faults(services.masumi.root.clone(), json!({})).await?;
    set_faults(services.kodosumi.root.clone(), json!({})).await?;
    eprintln!(
        "services: faults off after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    wait_all_terminal(&db.pool, scaled_time(Duration::from_secs(150))).await?;
    assert_alive("the server", &mut server, &server_log)?;
    for (w, log) in workers.iter_mut().zip(&worker_logs) {
        assert_alive("a worker", w, log)?;
    }

    // The jobs, as the database holds them: one per purchaser (the start key), all terminal.
    let rows: Vec<(uuid::Uuid, String, String, Option<String>)> = sqlx::query_as(
        "select id, input->>'identifier_from_purchaser', status, state->>'phase'
         from kodomasu.workflows where workflow_type = 'paid_job'",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut by_purchaser: HashMap<String, Vec<(uuid::Uuid, String, Option<String>)>> =
        HashMap::new();
    for (id, p, status, phase) in rows {
        by_purchaser.entry(p).or_default().push((id, status, phase));
    }
    let payments: Vec<SimPaymentReport> = services.payments(&http).await?;
    let launches: Vec<SimLaunch> = services.launches(&http).await?;
    let mut payments_of: HashMap<&str, Vec<&SimPaymentReport>> = HashMap::new();
    for p in &payments {
        payments_of
            .entry(p.identifier_from_purchaser.as_str())
            .or_default()
            .push(p);
    }
    let mut launches_of: HashMap<String, Vec<&SimLaunch>> = HashMap::new();
    for l in &launches {
        let name = l.inputs_passed["name"]
            .as_str()
            .or_else(|| l.inputs_received["name"].as_str())
            .unwrap_or_default()
            .to_owned();
        launches_of.entry(name).or_default().push(l);
    }

    let mut outcomes: BTreeMap<(Buyer, String), usize> = BTreeMap::new();
    for job in &jobs {
        let ctx = format!(
            "job {} ({:?}, start_job answered {})",
            job.name, job.buyer, job.answer.0
        );
        let wfs = by_purchaser
            .get(&job.purchaser)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(wfs.len() <= 1, "{ctx}: {} workflows", wfs.len());
        if job.answer.0 == 201 {
            assert_eq!(wfs.len(), 1, "{ctx}: the started job is in the journal");
            assert_eq!(
                job.answer.1["id"].as_str(),
                Some(wfs[0].0.to_string().as_str()),
                "{ctx}"
            );
        }
        let Some((id, status, phase)) = wfs.first() else {
            // Never created: start_job refused before anything was written.
            assert!(
                !payments_of.contains_key(job.purchaser.as_str()),
                "{ctx}: a payment without a job"
            );
            *outcomes
                .entry((job.buyer, "not started".to_owned()))
                .or_default() += 1;
            continue;
        };
        assert!(
            matches!(status.as_str(), "completed" | "failed" | "cancelled"),
            "{ctx}: {id} is {status} in phase {phase:?}"
        );
        *outcomes
            .entry((
                job.buyer,
                format!("{status}/{}", phase.clone().unwrap_or_default()),
            ))
            .or_default() += 1;

        // Money, from the simulators' own records.
        let ps = payments_of
            .get(job.purchaser.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(ps.len() <= 1, "{ctx}: {} payment requests", ps.len());
        let runs = launches_of
            .get(&job.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            runs.len() <= 1,
            "{ctx}: launched {} times on Kodosumi",
            runs.len()
        );
        let Some(p) = ps.first() else {
            assert!(runs.is_empty(), "{ctx}: launched without a payment request");
            assert_ne!(status, "completed", "{ctx}: completed without a payment");
            continue;
        };
        assert_eq!(
            p.counters.create_calls, 1,
            "{ctx}: payment request created {} times",
            p.counters.create_calls
        );
        if job.answer.0 == 201 {
            assert_eq!(
                job.answer.1["blockchainIdentifier"].as_str(),
                Some(p.blockchain_identifier.as_str()),
                "{ctx}: start_job answered another payment than the simulator holds"
            );
        }
        assert!(
            p.counters.submit_result_accepted <= 1,
            "{ctx}: result submitted {} times",
            p.counters.submit_result_accepted
        );
        let states: Vec<Option<OnChainState>> =
            p.history.iter().map(|h| h.on_chain_state).collect();
        let delivered = states.iter().any(|s| {
            matches!(
                s,
                Some(OnChainState::ResultSubmitted | OnChainState::Withdrawn)
            )
        });
        let refunded = states.contains(&Some(OnChainState::RefundWithdrawn));
        assert!(
            !(delivered && refunded),
            "{ctx}: both delivered and refunded: {states:?}"
        );
        let locked = p
            .history
            .iter()
            .find(|h| h.on_chain_state == Some(OnChainState::FundsLocked))
            .map(|h| h.at);
        for run in runs {
            let locked = locked.unwrap_or_else(|| {
                panic!(
                    "{ctx}: run {} launched but the funds were never locked: {states:?}",
                    run.fid
                )
            });
            let launched_ms = (run.launched_at * 1000.0).floor() as i64;
            assert!(
                launched_ms >= locked.timestamp_millis(),
                "{ctx}: run {} launched at {launched_ms} ms, before FundsLocked at {} ms",
                run.fid,
                locked.timestamp_millis()
            );
        }
        if status == "completed" {
            let view: Value = http
                .get(format!("{base}/{uid}/status?job_id={id}"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let result = view["result"].as_str().unwrap_or_default();
            assert!(
                result.contains(&job.name),
                "{ctx}: result `{result}` is not its run's"
            );
            assert_eq!(runs.len(), 1, "{ctx}: completed with {} runs", runs.len());
            assert_eq!(
                p.counters.submit_result_accepted, 1,
                "{ctx}: a completed job submits once"
            );
            assert_eq!(
                p.counters.result_hashes,
                vec![output_hash(&job.purchaser, result)],
                "{ctx}: the submitted hash is the MIP-004 hash of the result"
            );
            assert_ne!(
                job.buyer,
                Buyer::NeverPays,
                "{ctx}: completed without being paid"
            );
            assert_ne!(
                job.buyer,
                Buyer::PaysRunFails,
                "{ctx}: completed although its run failed"
            );
        } else {
            assert_eq!(
                p.counters.submit_result_accepted, 0,
                "{ctx}: a job that did not complete submitted a result"
            );
            assert!(
                !delivered,
                "{ctx}: not completed but delivered on chain: {states:?}"
            );
        }
        if job.buyer == Buyer::NeverPays {
            assert!(runs.is_empty(), "{ctx}: launched although never paid");
            assert_eq!(p.on_chain_state, None, "{ctx}: no money moved");
        }
        // The admin view agrees with the journal.
        let wf = admin.workflow(&id.to_string()).await?;
        assert_eq!(wf["status"].as_str(), Some(status.as_str()), "{ctx}");
        if job.buyer == Buyer::Pays && status != "completed" {
            eprintln!(
                "services: {ctx} paid but ended {status}: error {}, chain {states:?}, submits refused {}",
                wf["error"], p.counters.submit_result_refused
            );
        }
    }
    assert_journals_sound(&db.pool).await?;
    let completed = outcomes
        .iter()
        .filter(|((b, o), _)| *b == Buyer::Pays && o.starts_with("completed"))
        .map(|(_, n)| n)
        .sum::<usize>();
    assert!(completed > 0, "no paying job completed: {outcomes:?}");

    let abandoned: BTreeSet<String> = sqlx::query_scalar(
        "select distinct activity_name from kodomasu.activity_attempts where outcome <> 'completed'",
    )
    .fetch_all(&db.pool)
    .await?
    .into_iter()
    .collect();
    let failed_attempts: i64 = sqlx::query_scalar(
        "select count(*) from kodomasu.activity_attempts where outcome <> 'completed'",
    )
    .fetch_one(&db.pool)
    .await?;
    eprintln!("services: outcomes (buyer, status/phase) → jobs: {outcomes:?}");
    eprintln!(
        "services: {} payments, {} Kodosumi runs; {failed_attempts} failed or timed-out activity attempts in {abandoned:?}; submit-result calls refused by the simulator: {}",
        payments.len(),
        launches.len(),
        payments
            .iter()
            .map(|p| p.counters.submit_result_refused)
            .sum::<u64>()
    );
    stop_all(workers.iter_mut().chain([
        &mut server,
        &mut services.masumi.child,
        &mut services.kodosumi.child,
    ]))
    .await;
    db.drop_database().await
}
