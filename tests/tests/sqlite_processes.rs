//! Several processes on one SQLite journal file (issue 5, item 4), read back with sqlx:
//! - a `kodomasu server` and two `kodomasu worker` processes on one file (one names it by
//!   `DATABASE_URL=sqlite://…`, the other by `--data-dir`; every process applies the
//!   migrations itself at start): 100 `demo.chain` workflows started over HTTP all complete
//!   with gapless journals, and both workers did work;
//! - the chaos variant: worker processes SIGKILLed mid-run, replacements started; the killed
//!   workers' workflows resume and all complete, each call's result recorded once; prints the
//!   recovery time after each kill;
//! - `kodomasu dev` with no database configured (a temporary `--data-dir`) completes a paid
//!   job started with the request of its printed curl line, and after SIGTERM and a restart
//!   on the same data directory the job's history is unchanged.
//!
//! The tests of this file run one after another (they share two CPU cores with their child
//! processes; the printed recovery times are cleaner that way).

mod common;

use activities::masumi::hash::output_hash;
use common::services::{
    free_port, sigterm, sim_payments, spawn_kodomasu, spread, stdout_path, wait_ok,
};
use common::sqlite::{self as sq, SqliteFile};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// One test at a time in this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEASE_TTL: &str = "2s";

/// `kodomasu worker` on the SQLite file at `db_url` (`DATABASE_URL`) or in `data_dir`.
fn spawn_sqlite_worker(journal: &Journal<'_>, log: &Path) -> anyhow::Result<Child> {
    let mut args = vec![
        "worker",
        "--lease-ttl",
        LEASE_TTL,
        "--poll-interval",
        "200ms",
        "--slots",
        "16",
    ];
    let mut env = Vec::new();
    let dir;
    match journal {
        Journal::Url(url) => env.push(("DATABASE_URL".to_owned(), (*url).to_owned())),
        Journal::DataDir(d) => {
            dir = d.display().to_string();
            args.extend(["--data-dir", dir.as_str()]);
        }
    }
    spawn_kodomasu(&args, &env, log)
}

/// How a process is told where the journal is.
enum Journal<'a> {
    Url(&'a str),
    DataDir(&'a Path),
}

/// A server on the file; returns it with its base URL once healthy.
async fn spawn_sqlite_server(
    http: &reqwest::Client,
    db_url: &str,
    log: &Path,
) -> anyhow::Result<(Child, String)> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut server = spawn_kodomasu(
        &["server", "--listen", &listen],
        &[("DATABASE_URL".to_owned(), db_url.to_owned())],
        log,
    )?;
    let base = format!("http://{listen}");
    wait_ok(
        http,
        &format!("{base}/health"),
        &mut server,
        Duration::from_secs(30),
    )
    .await?;
    Ok((server, base))
}

/// Starts `n` `demo.chain` workflows over the admin API; returns their ids.
async fn start_chains(
    http: &reqwest::Client,
    base: &str,
    prefix: &str,
    n: usize,
    input: impl Fn() -> Value,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let resp = http
            .post(format!("{base}/api/v1/workflows"))
            .json(&json!({"type": "demo.chain", "key": format!("{prefix}-{i}"), "input": input()}))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status == 201, "start {i}: {status} {body}");
        ids.push(body["id"].as_str().unwrap_or_default().to_owned());
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_and_two_workers_share_one_sqlite_file() -> anyhow::Result<()> {
    const WORKFLOWS: usize = 100;
    let _serial = SERIAL.lock().await;
    let mut file = SqliteFile::new("sqlite-procs")?;
    let logs = common::log_dir("sqlite_processes/shared_file");
    eprintln!(
        "sqlite: journal {}, logs in {}",
        file.path.display(),
        logs.display()
    );
    let http = common::http_client(Duration::from_secs(30));
    // All three processes start at once and each applies the migrations.
    let first = spawn_sqlite_worker(&Journal::Url(&file.url), &logs.join("worker-1.log"))?;
    let second = spawn_sqlite_worker(&Journal::DataDir(&file.dir), &logs.join("worker-2.log"))?;
    let (_server, base) = spawn_sqlite_server(&http, &file.url, &logs.join("server.log")).await?;
    let pool = file.pool().await?;
    let first_id = sq::worker_id_of(&pool, first.id().unwrap_or_default()).await?;
    let second_id = sq::worker_id_of(&pool, second.id().unwrap_or_default()).await?;
    anyhow::ensure!(first_id != second_id);

    let started = Instant::now();
    let ids = start_chains(&http, &base, "shared", WORKFLOWS, || {
        json!({"steps": 3 + fastrand::u32(0..3), "sleep_ms": fastrand::u64(100..400), "fail_prob": 0.1})
    })
    .await?;
    eprintln!(
        "sqlite: started {WORKFLOWS} demo.chain workflows over HTTP in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    sq::wait_all_terminal(&pool, Duration::from_secs(120)).await?;
    let counts = sq::status_counts(&pool).await?;
    eprintln!(
        "sqlite: all settled after {:.1}s: {counts:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(counts, vec![("completed".to_owned(), WORKFLOWS as i64)]);
    sq::assert_journals_sound(&pool).await?;

    let per_worker = sq::attempts_per_worker_pid(&pool).await?;
    eprintln!("sqlite: completed activity attempts per worker pid: {per_worker:?}");
    for child in [&first, &second] {
        let pid = i64::from(child.id().unwrap_or_default());
        assert!(
            per_worker.iter().any(|(p, n)| *p == pid && *n > 0),
            "worker pid {pid} ran no activity: {per_worker:?}"
        );
    }
    // The admin API reads the same file: a workflow's history as the server serves it.
    let history: Value = http
        .get(format!("{base}/api/v1/workflows/{}/history", ids[0]))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let seqs: Vec<i64> = history["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["seq"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "gapless history over HTTP"
    );
    eprintln!(
        "sqlite: journals gapless, one result per call and step, snapshots = last transition; history of {} over HTTP has {} events",
        ids[0],
        seqs.len()
    );
    file.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_workers_lose_nothing() -> anyhow::Result<()> {
    const WORKFLOWS: usize = 200;
    const KILLS: usize = 5;
    let _serial = SERIAL.lock().await;
    let mut file = SqliteFile::new("sqlite-chaos")?;
    let logs = common::log_dir("sqlite_processes/chaos");
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    eprintln!(
        "sqlite chaos: seed {seed} (set CHAOS_SEED to replay), journal {}, logs in {}",
        file.path.display(),
        logs.display()
    );
    let http = common::http_client(Duration::from_secs(30));
    let (_server, base) = spawn_sqlite_server(&http, &file.url, &logs.join("server.log")).await?;
    let pool = file.pool().await?;
    let mut spawned = 0usize;
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(spawn_sqlite_worker(
            &Journal::Url(&file.url),
            &logs.join(format!("worker-{spawned}.log")),
        )?);
        spawned += 1;
    }
    start_chains(&http, &base, "chaos", WORKFLOWS, || {
        json!({"steps": 3 + fastrand::u32(0..4), "sleep_ms": fastrand::u64(200..800), "fail_prob": 0.1})
    })
    .await?;
    eprintln!(
        "sqlite chaos: started {WORKFLOWS} demo.chain workflows over HTTP on 2 worker processes"
    );

    let mut kills = Vec::new();
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1_000..3_000))).await;
        let mut victim = workers.swap_remove(fastrand::usize(0..workers.len()));
        let pid = victim.id().unwrap_or_default();
        let worker_id = sq::worker_id_of(&pool, pid).await?;
        common::sigkill(&mut victim).await?;
        let killed_at = sq::db_now(&pool).await?;
        // What the dead worker held: its leases stay on the rows until they expire.
        let orphans = sq::leased_by(&pool, worker_id).await?;
        eprintln!(
            "sqlite chaos: kill {} — SIGKILL worker pid {pid} holding {} workflows",
            k + 1,
            orphans.len()
        );
        workers.push(spawn_sqlite_worker(
            &Journal::Url(&file.url),
            &logs.join(format!("worker-{spawned}.log")),
        )?);
        spawned += 1;
        kills.push((orphans, killed_at));
    }

    sq::wait_all_terminal(&pool, Duration::from_secs(150)).await?;
    let counts = sq::status_counts(&pool).await?;
    eprintln!("sqlite chaos: final statuses {counts:?}");
    assert_eq!(
        counts,
        vec![("completed".to_owned(), WORKFLOWS as i64)],
        "every workflow completes"
    );
    sq::assert_journals_sound(&pool).await?;
    for (i, (orphans, killed_at)) in kills.iter().enumerate() {
        let delays = sq::next_event_delays(&pool, orphans, *killed_at).await?;
        let moved: Vec<f64> = delays.iter().flatten().copied().collect();
        assert_eq!(
            moved.len(),
            orphans.len(),
            "every orphaned workflow moved again after kill {}",
            i + 1
        );
        match spread(&moved) {
            Some((min, median, max)) => eprintln!(
                "sqlite chaos: kill {}: {} orphaned workflows resumed after min {min:.2}s / median {median:.2}s / max {max:.2}s (lease TTL {LEASE_TTL})",
                i + 1,
                moved.len()
            ),
            None => eprintln!(
                "sqlite chaos: kill {}: the worker held no workflow at that moment",
                i + 1
            ),
        }
    }
    eprintln!(
        "sqlite chaos: journals gapless, each call's result recorded once; activity bodies that may have run more than once (attempts abandoned by killed workers): {}",
        sq::abandoned_attempts(&pool).await?
    );
    for mut w in workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    file.passed();
    Ok(())
}

/// What `kodomasu dev` printed: the journal, the Masumi simulator's root, and the curl line.
#[derive(Debug)]
struct DevBanner {
    journal: String,
    masumi_root: String,
    start_url: String,
    start_body: String,
}

/// Reads the banner from the dev process's stdout once it is complete.
async fn dev_banner(child: &mut Child, stdout: &Path) -> anyhow::Result<DevBanner> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(stdout).unwrap_or_default();
        if let Some(banner) = parse_banner(&text) {
            return Ok(banner);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("kodomasu dev exited ({status}); it printed:\n{text}");
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "kodomasu dev printed no curl line within 60 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn parse_banner(text: &str) -> Option<DevBanner> {
    let lines: Vec<&str> = text.lines().collect();
    let journal = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("journal:"))?
        .trim()
        .to_owned();
    let masumi_root = lines.iter().find_map(|l| {
        let rest = l.split_once("(payments: ")?.1;
        Some(rest.split_once("/_sim/payments")?.0.to_owned())
    })?;
    let curl = lines
        .iter()
        .position(|l| l.trim_start().starts_with("curl -s -X POST "))?;
    let start_url = lines[curl]
        .trim_start()
        .strip_prefix("curl -s -X POST ")?
        .split_whitespace()
        .next()?
        .to_owned();
    let data = lines.get(curl + 1)?.trim();
    let start_body = data.strip_prefix("-d '")?.strip_suffix('\'')?.to_owned();
    Some(DevBanner {
        journal,
        masumi_root,
        start_url,
        start_body,
    })
}

/// Starts `kodomasu dev` on `data_dir` with no database configured; returns it with its banner
/// and base URL once it answers.
async fn start_dev(
    http: &reqwest::Client,
    data_dir: &Path,
    log: &Path,
) -> anyhow::Result<(Child, DevBanner, String)> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let dir = data_dir.display().to_string();
    let mut dev = spawn_kodomasu(&["dev", "--data-dir", &dir, "--listen", &listen], &[], log)?;
    let base = format!("http://{listen}");
    let banner = dev_banner(&mut dev, &stdout_path(log)).await?;
    wait_ok(
        http,
        &format!("{base}/health"),
        &mut dev,
        Duration::from_secs(30),
    )
    .await?;
    Ok((dev, banner, base))
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    Ok(http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_without_a_database_completes_a_paid_job_and_keeps_its_history() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let root = std::env::temp_dir().join(format!("kodomasu-dev-{}", uuid::Uuid::new_v4().simple()));
    let data_dir = root.join("data");
    let logs = common::log_dir("sqlite_processes/dev");
    let http = common::http_client(Duration::from_secs(30));

    let (mut dev, banner, base) = start_dev(&http, &data_dir, &logs.join("dev-1.log")).await?;
    eprintln!(
        "dev: journal {}, curl line: POST {} -d '{}'",
        banner.journal, banner.start_url, banner.start_body
    );
    assert_eq!(
        banner.journal,
        format!("sqlite://{}", data_dir.join("kodomasu.db").display()),
        "no database configured: the journal is the SQLite file in --data-dir"
    );
    assert!(data_dir.join("kodomasu.db").exists());

    // The printed request, as a newcomer would paste it.
    let started = Instant::now();
    let resp = http
        .post(&banner.start_url)
        .header("content-type", "application/json")
        .body(banner.start_body.clone())
        .send()
        .await?;
    let status = resp.status();
    let job: Value = resp.json().await?;
    assert_eq!(status, 201, "the curl line starts a job: {job}");
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    let flow_path = banner
        .start_url
        .strip_suffix("/start_job")
        .unwrap_or_default()
        .to_owned();
    let request: Value = serde_json::from_str(&banner.start_body)?;
    let purchaser = request["identifier_from_purchaser"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let status_url = format!("{flow_path}/status?job_id={id}");
    let view = loop {
        let view = get_json(&http, &status_url).await?;
        if view["status"] == "completed" {
            break view;
        }
        anyhow::ensure!(
            matches!(
                view["status"].as_str(),
                Some("awaiting_payment" | "running")
            ),
            "the job went {view}"
        );
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(90),
            "the job did not complete within 90 s: {view}; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let result = view["result"].as_str().unwrap_or_default().to_owned();
    eprintln!(
        "dev: the job reached `completed` in MIP-003 /status after {:.1}s with result {result:?}",
        started.elapsed().as_secs_f64()
    );
    let payments = sim_payments(&http, &banner.masumi_root).await?;
    let payment = payments
        .iter()
        .find(|p| p.identifier_from_purchaser == purchaser)
        .ok_or_else(|| anyhow::anyhow!("no payment of {purchaser} on the Masumi simulator"))?;
    assert_eq!(
        payment.counters.result_hashes,
        vec![output_hash(&purchaser, &result)],
        "the submitted hash is the MIP-004 hash of the result shown"
    );

    // The engine finishes the job once the payment is withdrawn.
    let workflow_url = format!("{base}/api/v1/workflows/{id}");
    let before = loop {
        let wf = get_json(&http, &workflow_url).await?;
        if wf["status"] == "completed" {
            break wf;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the workflow did not finish: {}",
            wf["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let history_url = format!("{workflow_url}/history");
    let history_before = get_json(&http, &history_url).await?;
    let events = history_before["events"].as_array().map_or(0, Vec::len);
    assert!(events > 0);
    let exit = sigterm(&mut dev, Duration::from_secs(40)).await?;
    assert!(
        exit.success(),
        "kodomasu dev exits cleanly on SIGTERM: {exit}"
    );
    eprintln!("dev: job {id} completed with {events} events; stopped with SIGTERM ({exit})");

    // Same data directory, new process (and new simulators).
    let (mut again, banner2, base2) = start_dev(&http, &data_dir, &logs.join("dev-2.log")).await?;
    assert_eq!(banner2.journal, banner.journal);
    let history_after = get_json(&http, &format!("{base2}/api/v1/workflows/{id}/history")).await?;
    assert_eq!(
        history_after, history_before,
        "the job's history is intact after the restart"
    );
    let after = get_json(&http, &format!("{base2}/api/v1/workflows/{id}")).await?;
    for field in ["status", "state", "output", "version", "input"] {
        assert_eq!(after[field], before[field], "`{field}` after the restart");
    }
    let flow_uid = flow_path.rsplit('/').next().unwrap_or_default();
    let view_after = get_json(&http, &format!("{base2}/{flow_uid}/status?job_id={id}")).await?;
    assert_eq!(view_after["status"], "completed");
    assert_eq!(view_after["result"], json!(result));
    eprintln!(
        "dev: after a restart on the same --data-dir the job still shows completed with the same {events} events"
    );
    let exit = sigterm(&mut again, Duration::from_secs(40)).await?;
    assert!(exit.success(), "second stop: {exit}");
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
