//! Chaos with paid jobs: more than a hundred MIP-003 jobs on the "Hello World" flow, started over
//! HTTP on a `kodomasu server`, driven by several `kodomasu worker` processes on one fresh
//! PostgreSQL database, against the Masumi and Kodosumi simulators running as their own
//! `kodomasu sim` processes. Workers are SIGKILLed at random moments (a replacement starts each
//! time) while buyers pay after short random delays.
//!
//! Money safety is then checked from the outside, from the simulators' own records rather than
//! from the engine's journal:
//! - every job ends in a terminal state or an operator state (admin API); since every buyer
//!   pays in time and no service fails, every job completes, except one whose call lost all
//!   its attempts to kills (abandoned attempts count against the retry policy's maximum);
//! - one payment request per job (`create_calls == 1`, one payment per purchaser);
//! - each completed job's result hash was submitted exactly once, and it is the MIP-004 hash
//!   of the result MIP-003 `/status` shows;
//! - no run started on Kodosumi before its payment reached `FundsLocked` (launch time in
//!   `/_sim/launches` against the `FundsLocked` time in the payment's history; runs are mapped
//!   to jobs by the unique `name` input);
//! - no payment went both `ResultSubmitted`/`Withdrawn` and `RefundWithdrawn`.
//!
//! Prints Kodosumi launches per job and the recovery time after each kill.

mod common;

use activities::masumi::OnChainState;
use activities::masumi::hash::output_hash;
use common::services::{
    Services, SimProcess, flow_uid, free_port, spawn_kodomasu, spread, wait_ok,
};
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;

const JOBS: usize = 120;
const WORKERS: usize = 3;
const KILLS: usize = 6;
const LEASE_TTL: &str = "2s";
/// Concurrent buyers calling `start_job`.
const BUYERS: usize = 6;
/// Jobs are started over this span, so kills hit every phase.
const START_SPAN_MS: u64 = 14_000;

/// A job as planned before the run and as `start_job` answered.
#[derive(Debug, Clone)]
struct Job {
    name: String,
    purchaser: String,
    pay_after_ms: u64,
    start_at_ms: u64,
    id: String,
    blockchain_identifier: String,
}

fn spawn_paid_worker(env: &[(String, String)], log: &Path) -> anyhow::Result<Child> {
    spawn_kodomasu(
        &[
            "worker",
            "--lease-ttl",
            LEASE_TTL,
            "--poll-interval",
            "200ms",
            "--slots",
            "32",
            "--max-connections",
            "6",
            "--skip-migrate",
        ],
        env,
        log,
    )
}

/// Starts the planned jobs from `BUYERS` concurrent buyers, each job at its planned offset:
/// presets its buyer's payment delay on the Masumi simulator, then calls `start_job`.
async fn start_jobs(
    http: reqwest::Client,
    base: String,
    uid: String,
    services_masumi: String,
    plan: Vec<Job>,
) -> anyhow::Result<Vec<Job>> {
    let plan = Arc::new(plan);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut buyers = tokio::task::JoinSet::new();
    for _ in 0..BUYERS {
        let (http, base, uid, masumi, plan, next) = (
            http.clone(),
            base.clone(),
            uid.clone(),
            services_masumi.clone(),
            plan.clone(),
            next.clone(),
        );
        buyers.spawn(async move {
            let mut started = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(job) = plan.get(i) else {
                    return anyhow::Ok(started);
                };
                let due = t0 + Duration::from_millis(job.start_at_ms);
                tokio::time::sleep_until(due.into()).await;
                http.post(format!("{masumi}/_sim/buyers"))
                    .json(&json!({
                        "identifierFromPurchaser": job.purchaser,
                        "behavior": {"kind": "pay", "after_ms": job.pay_after_ms},
                    }))
                    .send()
                    .await?
                    .error_for_status()?;
                let resp = http
                    .post(format!("{base}/{uid}/start_job"))
                    .json(&json!({
                        "identifier_from_purchaser": job.purchaser,
                        "input_data": {"name": job.name},
                    }))
                    .send()
                    .await?;
                let status = resp.status();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                anyhow::ensure!(
                    status == 201,
                    "start_job for {} answered {status}: {body}",
                    job.name
                );
                let mut job = job.clone();
                job.id = body["id"].as_str().unwrap_or_default().to_owned();
                job.blockchain_identifier = body["blockchainIdentifier"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                anyhow::ensure!(
                    !job.id.is_empty() && !job.blockchain_identifier.is_empty(),
                    "start_job for {} answered without id or blockchainIdentifier: {body}",
                    job.name
                );
                started.push(job);
            }
        });
    }
    let mut jobs = Vec::new();
    while let Some(done) = buyers.join_next().await {
        jobs.extend(done??);
    }
    Ok(jobs)
}

/// Open workflows that are neither finished nor waiting for an operator.
async fn open_jobs(db: &TestDb) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from kodomasu.workflows
         where status in ('running', 'paused') and state->>'phase' is distinct from 'payment_invalid'",
    )
    .fetch_one(&db.pool)
    .await?)
}

/// Abandoned attempts per activity: which calls the kills interrupted.
async fn abandoned_by_activity(db: &TestDb) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select activity_name, count(*) from kodomasu.activity_attempts
         where outcome = 'abandoned' group by 1 order by 1",
    )
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_jobs_keep_money_safe_while_workers_are_killed() -> anyhow::Result<()> {
    let test_start = Instant::now();
    let db = TestDb::create("paid_chaos").await?;
    let logs = log_dir("paid_chaos");
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    eprintln!(
        "paid chaos: seed {seed} (set CHAOS_SEED to replay), database {}, logs in {}",
        db.name,
        logs.display()
    );

    let masumi = SimProcess::spawn(
        "masumi",
        &[
            "--fast-clock",
            "--chain-step",
            "100ms",
            "--buyer",
            "pay",
            "--pay-after",
            "1s",
            // Calls take a while, so kills also land while a call is in flight.
            "--latency",
            "40ms",
        ],
        &logs.join("sim-masumi.log"),
    )
    .await?;
    let kodosumi = SimProcess::spawn(
        "kodosumi",
        &["--flow-duration", "1s", "--latency", "100ms"],
        &logs.join("sim-kodosumi.log"),
    )
    .await?;
    let mut services = Services { masumi, kodosumi };
    let mut env = services.env();
    env.push(("DATABASE_URL".to_owned(), db.url.clone()));

    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let mut server = spawn_kodomasu(
        &[
            "server",
            "--listen",
            &listen,
            "--max-connections",
            "8",
            "--skip-migrate",
        ],
        &env,
        &logs.join("server.log"),
    )?;
    let mut spawned = 0usize;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(spawn_paid_worker(
            &env,
            &logs.join(format!("worker-{spawned}.log")),
        )?);
        spawned += 1;
    }
    let http = common::http_client(Duration::from_secs(60));
    wait_ok(
        &http,
        &format!("{base}/health"),
        &mut server,
        Duration::from_secs(30),
    )
    .await?;
    let uid = flow_uid(&http, &base, "Hello World", Duration::from_secs(30)).await?;

    // The plan: unique names and purchasers, random payment delays and start moments.
    let mut offsets: Vec<u64> = (0..JOBS).map(|_| fastrand::u64(0..START_SPAN_MS)).collect();
    offsets.sort_unstable();
    let mut purchasers = HashSet::new();
    let plan: Vec<Job> = offsets
        .into_iter()
        .enumerate()
        .map(|(i, start_at_ms)| {
            let purchaser = loop {
                let p = format!("{:016x}", fastrand::u64(..));
                if purchasers.insert(p.clone()) {
                    break p;
                }
            };
            Job {
                name: format!("chaos-{i:03}-{:06x}", fastrand::u32(..0xff_ffff)),
                purchaser,
                pay_after_ms: fastrand::u64(100..2_500),
                start_at_ms,
                id: String::new(),
                blockchain_identifier: String::new(),
            }
        })
        .collect();
    let kill_gaps: Vec<u64> = (0..KILLS).map(|_| fastrand::u64(1_500..4_500)).collect();
    let victims: Vec<usize> = (0..KILLS).map(|_| fastrand::usize(0..WORKERS)).collect();

    let starting = tokio::spawn(start_jobs(
        http.clone(),
        base.clone(),
        uid.clone(),
        services.masumi.root.clone(),
        plan,
    ));
    eprintln!(
        "paid chaos: starting {JOBS} paid jobs over ~{}s from {BUYERS} buyers on {WORKERS} worker processes",
        START_SPAN_MS / 1000
    );

    let chaos_start = Instant::now();
    let mut kills = Vec::new();
    for (k, (gap, victim_index)) in kill_gaps.iter().zip(&victims).enumerate() {
        tokio::time::sleep(Duration::from_millis(*gap)).await;
        let mut victim = workers.swap_remove(*victim_index);
        let pid = victim.id().unwrap_or_default();
        let worker_id = worker_id_of(&db.pool, pid).await?;
        sigkill(&mut victim).await?;
        let killed_at = db_now(&db.pool).await?;
        // What the dead worker held: its leases stay on the rows until they expire.
        let orphans = leased_by(&db.pool, worker_id).await?;
        eprintln!(
            "paid chaos: kill {} at +{:.1}s — SIGKILL worker pid {pid} holding {} jobs",
            k + 1,
            chaos_start.elapsed().as_secs_f64(),
            orphans.len()
        );
        workers.push(spawn_paid_worker(
            &env,
            &logs.join(format!("worker-{spawned}.log")),
        )?);
        spawned += 1;
        kills.push((orphans, killed_at));
    }

    let jobs = starting.await??;
    anyhow::ensure!(jobs.len() == JOBS, "{} of {JOBS} jobs started", jobs.len());
    eprintln!(
        "paid chaos: all {JOBS} start_job calls answered 201 (+{:.1}s)",
        chaos_start.elapsed().as_secs_f64()
    );

    // Every job ends in a terminal or operator state.
    let wait_start = Instant::now();
    loop {
        let open = open_jobs(&db).await?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(
            wait_start.elapsed() < Duration::from_secs(150),
            "{open} jobs still open after 150 s: {:?}; logs in {}",
            status_counts(&db.pool).await?,
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "paid chaos: every job settled (+{:.1}s); engine statuses {:?}",
        chaos_start.elapsed().as_secs_f64(),
        status_counts(&db.pool).await?
    );

    // What the buyer and the operator see.
    let mut engine_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut mip: HashMap<String, Value> = HashMap::new();
    let mut not_completed = Vec::new();
    let mut exhausted_by_kills = Vec::new();
    for job in &jobs {
        let wf: Value = http
            .get(format!("{base}/api/v1/workflows/{}", job.id))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let status = wf["status"].as_str().unwrap_or_default().to_owned();
        let phase = wf["state"]["phase"].as_str().unwrap_or_default().to_owned();
        assert!(
            matches!(status.as_str(), "completed" | "failed" | "cancelled")
                || (status == "running" && phase == "payment_invalid"),
            "job {} ({}) is {status} in phase {phase}, neither terminal nor waiting for an operator",
            job.name,
            job.id
        );
        if status != "completed" {
            let line = format!(
                "{} ({}): {status} in phase {phase}, error {}",
                job.name, job.id, wf["error"]
            );
            // Each kill abandons the attempt the killed worker was running, and abandoned
            // attempts count against the activity's maximum: a job may, rarely, lose every
            // attempt of one call to kills. It then ends like any failed call (refund, nothing
            // submitted); any other reason is a defect.
            let exhausted = wf["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("worker.lease_expired"));
            if exhausted {
                exhausted_by_kills.push(line);
            } else {
                not_completed.push(line);
            }
        }
        *engine_status.entry(status).or_default() += 1;
        *phases.entry(phase).or_default() += 1;
        let view: Value = http
            .get(format!("{base}/{uid}/status?job_id={}", job.id))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        mip.insert(job.id.clone(), view);
    }
    eprintln!("paid chaos: engine statuses {engine_status:?}, final phases {phases:?}");
    // Every buyer pays well before payByTime and no service fails: every job completes unless
    // kills took every attempt of one of its calls.
    assert!(
        not_completed.is_empty(),
        "{} paid jobs did not complete although their buyers paid: {not_completed:#?}",
        not_completed.len()
    );
    if !exhausted_by_kills.is_empty() {
        eprintln!(
            "paid chaos: {} jobs lost every attempt of a call to kills and ended without delivery (refunded): {exhausted_by_kills:#?}",
            exhausted_by_kills.len()
        );
    }

    // What the simulators recorded.
    let payments = services.payments(&http).await?;
    let launches = services.launches(&http).await?;
    let mut payments_of: HashMap<&str, Vec<_>> = HashMap::new();
    for p in &payments {
        payments_of
            .entry(p.identifier_from_purchaser.as_str())
            .or_default()
            .push(p);
    }
    let mut launches_of: HashMap<String, Vec<_>> = HashMap::new();
    for l in &launches {
        let name = l.inputs_passed["name"]
            .as_str()
            .or_else(|| l.inputs_received["name"].as_str())
            .unwrap_or_default()
            .to_owned();
        launches_of.entry(name).or_default().push(l);
    }
    let names: HashSet<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let strays: Vec<_> = launches_of
        .keys()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    assert!(
        strays.is_empty(),
        "Kodosumi runs that belong to no job: {strays:?}"
    );
    assert_eq!(
        payments.len(),
        JOBS,
        "the Masumi simulator holds one payment per job"
    );

    let mut mip_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut launches_per_job: BTreeMap<usize, usize> = BTreeMap::new();
    let mut lock_to_launch_ms = Vec::new();
    let mut completed = 0usize;
    let mut refused_submits = 0u64;
    for job in &jobs {
        let view = &mip[&job.id];
        let status = view["status"].as_str().unwrap_or_default();
        *mip_status.entry(status.to_owned()).or_default() += 1;

        // One payment request per job.
        let ps = payments_of
            .get(job.purchaser.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert_eq!(
            ps.len(),
            1,
            "job {}: {} payments for its purchaser",
            job.name,
            ps.len()
        );
        let p = ps[0];
        assert_eq!(
            p.counters.create_calls, 1,
            "job {}: its payment request was created {} times",
            job.name, p.counters.create_calls
        );
        assert_eq!(
            p.blockchain_identifier, job.blockchain_identifier,
            "job {}: start_job answered another payment than the simulator holds",
            job.name
        );
        refused_submits += p.counters.submit_result_refused;

        // At most one submission; exactly one, with the right hash, for a completed job.
        assert!(
            p.counters.submit_result_accepted <= 1,
            "job {}: result submitted {} times",
            job.name,
            p.counters.submit_result_accepted
        );
        if status == "completed" {
            completed += 1;
            let result = view["result"].as_str().unwrap_or_default();
            assert!(
                result.contains(&job.name),
                "job {}: its result `{result}` is not its own run's",
                job.name
            );
            assert_eq!(
                p.counters.submit_result_accepted, 1,
                "job {}: a completed job's result is submitted exactly once",
                job.name
            );
            assert_eq!(
                p.counters.result_hashes,
                vec![output_hash(&job.purchaser, result)],
                "job {}: the submitted hash is the MIP-004 hash of the result /status shows",
                job.name
            );
        }

        // Never both delivered and refunded.
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
            "job {}: payment both delivered and refunded: {states:?}",
            job.name
        );

        // No run before FundsLocked.
        let runs = launches_of
            .get(&job.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        *launches_per_job.entry(runs.len()).or_default() += 1;
        if status == "completed" {
            assert!(
                !runs.is_empty(),
                "job {}: completed without a run",
                job.name
            );
        }
        let locked = p
            .history
            .iter()
            .find(|h| h.on_chain_state == Some(OnChainState::FundsLocked))
            .map(|h| h.at);
        for run in runs {
            let Some(locked) = locked else {
                panic!(
                    "job {}: run {} started on Kodosumi but its payment never reached FundsLocked: {states:?}",
                    job.name, run.fid
                );
            };
            let launched_ms = (run.launched_at * 1000.0).floor() as i64;
            assert!(
                launched_ms >= locked.timestamp_millis(),
                "job {}: run {} started at {launched_ms} ms, before FundsLocked at {} ms",
                job.name,
                run.fid,
                locked.timestamp_millis()
            );
            lock_to_launch_ms.push((launched_ms - locked.timestamp_millis()) as f64);
        }
    }
    // The same two money rules over every payment the simulator holds.
    for p in &payments {
        let delivered = p.history.iter().any(|h| {
            matches!(
                h.on_chain_state,
                Some(OnChainState::ResultSubmitted | OnChainState::Withdrawn)
            )
        });
        let refunded = p
            .history
            .iter()
            .any(|h| h.on_chain_state == Some(OnChainState::RefundWithdrawn));
        assert!(
            !(delivered && refunded),
            "payment {} both delivered and refunded",
            p.blockchain_identifier
        );
        assert!(p.counters.submit_result_accepted <= 1);
    }
    assert!(completed > 0, "no job completed");
    assert_journals_sound(&db.pool).await?;

    eprintln!("paid chaos: MIP-003 statuses {mip_status:?}");
    eprintln!(
        "paid chaos: Kodosumi launches per job (launches → jobs): {launches_per_job:?}; {} runs for {JOBS} jobs",
        launches.len()
    );
    if let Some((min, median, max)) = spread(&lock_to_launch_ms) {
        eprintln!(
            "paid chaos: FundsLocked → launch on Kodosumi: min {min:.0} ms / median {median:.0} ms / max {max:.0} ms (never negative)"
        );
    }
    eprintln!(
        "paid chaos: {completed} completed jobs each submitted exactly one result hash (= output_hash(purchaser, /status result)); {} payment requests created once each; submit-result calls refused by the simulator: {refused_submits}",
        payments.len()
    );
    for (i, (orphans, killed_at)) in kills.iter().enumerate() {
        let delays = next_event_delays(&db.pool, orphans, *killed_at).await?;
        let moved: Vec<f64> = delays.iter().flatten().copied().collect();
        assert_eq!(
            moved.len(),
            orphans.len(),
            "every job of the worker killed by kill {} moved again",
            i + 1
        );
        match spread(&moved) {
            Some((min, median, max)) => eprintln!(
                "paid chaos: kill {}: {} orphaned jobs resumed after min {min:.2}s / median {median:.2}s / max {max:.2}s (lease TTL {LEASE_TTL})",
                i + 1,
                moved.len()
            ),
            None => eprintln!(
                "paid chaos: kill {}: the worker held no job at that moment",
                i + 1
            ),
        }
    }
    eprintln!(
        "paid chaos: activity attempts abandoned by killed workers (bodies that may have run twice): {} {:?}",
        abandoned_attempts(&db.pool).await?,
        abandoned_by_activity(&db).await?
    );
    eprintln!(
        "paid chaos: {} worker processes in all, {KILLS} SIGKILLs; test took {:.1}s",
        spawned,
        test_start.elapsed().as_secs_f64()
    );

    for mut w in workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    let _ = server.start_kill();
    let _ = services.masumi.child.start_kill();
    let _ = services.kodosumi.child.start_kill();
    db.drop_database().await
}
