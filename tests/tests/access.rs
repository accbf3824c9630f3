//! Access and metrics of real `kodomasu` processes: `kodomasu token create|list|revoke` against
//! a running server (a revoked token stops working within seconds, no token reaches a log),
//! `kodomasu dev` printing a token to log in with, a worker's `--metrics-listen`, and the
//! MIP-003 rate limit of a server started with its defaults.

mod common;
#[path = "../../api/tests/common/prometheus.rs"]
mod prometheus;

use anyhow::{Context, bail, ensure};
use common::services::{free_port, wait_ok};
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `kodomasu <args>` to completion on `db_url`; returns (success, stdout, stderr).
async fn kodomasu(args: &[&str], db_url: &str) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(kodomasu_bin())
        .args(args)
        .env("DATABASE_URL", db_url)
        .env_remove("KODOMASU_BOOTSTRAP_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running kodomasu {}", args.join(" ")))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Starts `kodomasu <args>` with `env` (after the default access settings; an empty value
/// removes the variable), logging at debug level to `log`.
fn spawn(args: &[&str], env: &[(&str, &str)], log: &Path) -> anyhow::Result<Child> {
    let err = std::fs::File::create(log)?;
    let out = std::fs::File::create(log.with_extension("stdout"))?;
    let mut command = Command::new(kodomasu_bin());
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KODOMASU_DATA_DIR")
        .env_remove("KODOMASU_LISTEN")
        .envs(ACCESS_ENV);
    for (name, value) in env {
        if value.is_empty() {
            command.env_remove(name);
        } else {
            command.env(name, value);
        }
    }
    let child = command
        .env(
            "RUST_LOG",
            "debug,sqlx=debug,tower_http=debug,hyper=info,h2=info",
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

async fn status_with(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> reqwest::StatusCode {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => r.status(),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_list_revoke_against_a_running_server() -> anyhow::Result<()> {
    let db = TestDb::create("access").await?;
    let logs = log_dir("access/tokens");
    let listen = format!("127.0.0.1:{}", free_port()?);
    let base = format!("http://{listen}");
    let workflows = format!("{base}/api/v1/workflows");
    let mut server = spawn(
        &["server", "--listen", &listen, "--skip-migrate"],
        &[("DATABASE_URL", db.url.as_str())],
        &logs.join("server.log"),
    )?;
    let http = reqwest::Client::builder().timeout(WAIT).build()?;
    wait_ok(&http, &format!("{base}/health/ready"), &mut server, WAIT).await?;

    // create: the token alone on stdout, details on stderr.
    let (ok, stdout, stderr) = kodomasu(&["token", "create", "--name", "ci"], &db.url).await?;
    ensure!(ok, "token create failed: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(lines.len() == 1, "stdout is not one line: {stdout:?}");
    let ci = lines[0].to_owned();
    ensure!(
        ci.starts_with("kdm_") && ci.len() == 47,
        "token shape: {ci}"
    );
    ensure!(stderr.contains("created token `ci`"), "stderr: {stderr}");
    ensure!(!stderr.contains(&ci), "the token is printed on stderr too");

    assert_eq!(status_with(&http, &workflows, None).await, 401);
    assert_eq!(status_with(&http, &workflows, Some(&ci)).await, 200);
    assert_eq!(status_with(&http, &workflows, Some(ADMIN_TOKEN)).await, 200);

    // A second valid token with the same name is refused.
    let (ok, _, stderr) = kodomasu(&["token", "create", "--name", "ci"], &db.url).await?;
    ensure!(
        !ok && stderr.contains("exists"),
        "duplicate name accepted: {stderr}"
    );
    let (ok, _, stderr) = kodomasu(&["token", "create", "--name", "has space"], &db.url).await?;
    ensure!(!ok && stderr.contains("invalid token name"), "{stderr}");

    // list: names and ids, never values.
    let (ok, stdout, stderr) = kodomasu(&["token", "list", "--json"], &db.url).await?;
    ensure!(ok, "token list failed: {stderr}");
    let listed: Value = serde_json::from_str(&stdout).context("token list --json")?;
    let tokens = listed["tokens"].as_array().context("tokens array")?;
    let names: Vec<&str> = tokens.iter().filter_map(|t| t["name"].as_str()).collect();
    ensure!(names == ["bootstrap", "ci"], "names {names:?}");
    ensure!(tokens.iter().all(|t| t["valid"] == json!(true)), "{listed}");
    let (ok, table, _) = kodomasu(&["token", "list"], &db.url).await?;
    ensure!(
        ok && table.contains("ci") && table.contains("bootstrap"),
        "{table}"
    );
    for text in [&stdout, &table] {
        ensure!(
            !text.contains(&ci) && !text.contains(ADMIN_TOKEN),
            "a token value is listed"
        );
    }

    // revoke by name: refused by the running server within seconds; others keep working.
    let (ok, stdout, stderr) = kodomasu(&["token", "revoke", "ci"], &db.url).await?;
    ensure!(
        ok && stdout.contains("revoked token `ci`"),
        "{stdout} {stderr}"
    );
    let start = Instant::now();
    while status_with(&http, &workflows, Some(&ci)).await != 401 {
        ensure!(
            start.elapsed() < WAIT,
            "revoked token still accepted after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("revoked token refused after {:?}", start.elapsed());
    assert_eq!(status_with(&http, &workflows, Some(ADMIN_TOKEN)).await, 200);
    let (ok, _, stderr) = kodomasu(&["token", "revoke", "ci"], &db.url).await?;
    ensure!(!ok && stderr.contains("no token"), "{stderr}");
    let id = tokens
        .iter()
        .find(|t| t["name"] == json!("ci"))
        .and_then(|t| t["id"].as_str())
        .context("ci's id")?;
    let (ok, _, stderr) = kodomasu(&["token", "revoke", id], &db.url).await?;
    ensure!(ok, "revoking a revoked token by id: {stderr}");
    let (_, stdout, _) = kodomasu(&["token", "list", "--json"], &db.url).await?;
    let listed: Value = serde_json::from_str(&stdout)?;
    let ci_row = listed["tokens"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == json!("ci")))
        .context("ci listed")?;
    ensure!(
        ci_row["valid"] == json!(false) && ci_row["revoked_at"].is_string(),
        "{ci_row}"
    );

    // No token in any log line, even at debug level.
    server.start_kill()?;
    server.wait().await?;
    let log = std::fs::read_to_string(logs.join("server.log"))?;
    ensure!(!log.is_empty(), "the server logged nothing");
    for secret in [ci.as_str(), ADMIN_TOKEN] {
        if log.contains(secret) {
            bail!(
                "a token appears in the server log {}",
                logs.join("server.log").display()
            );
        }
    }
    db.drop_database().await
}

/// The value after `admin token:` in `kodomasu dev`'s banner.
fn dev_token(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin token:"))
        .map(|t| t.trim().to_owned())
        .filter(|t| t.starts_with("kdm_"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_a_token_to_log_in_with() -> anyhow::Result<()> {
    let logs = log_dir("access/dev");
    let data = std::env::temp_dir().join(format!(
        "kodomasu-access-dev-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let data_dir = data.display().to_string();
    let listen = format!("127.0.0.1:{}", free_port()?);
    let base = format!("http://{listen}");
    let log = logs.join("dev.log");
    // No bootstrap token: out of the box.
    let mut dev = spawn(
        &["dev", "--data-dir", &data_dir, "--listen", &listen],
        &[("KODOMASU_BOOTSTRAP_TOKEN", "")],
        &log,
    )?;
    let stdout_path = log.with_extension("stdout");
    let start = Instant::now();
    let token = loop {
        let text = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        if let Some(t) = dev_token(&text) {
            ensure!(
                text.contains(&format!("{base}/dashboard")),
                "no dashboard URL:\n{text}"
            );
            break t;
        }
        if let Some(status) = dev.try_wait()? {
            bail!("kodomasu dev exited ({status}):\n{text}");
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "no token printed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let http = reqwest::Client::builder().timeout(WAIT).build()?;
    wait_ok(&http, &format!("{base}/health"), &mut dev, WAIT).await?;
    let workflows = format!("{base}/api/v1/workflows");
    assert_eq!(status_with(&http, &workflows, None).await, 401);
    assert_eq!(status_with(&http, &workflows, Some(&token)).await, 200);
    let resp = http.get(format!("{base}/metrics")).send().await?;
    ensure!(resp.status().is_success(), "/metrics: {}", resp.status());
    prometheus::parse(&resp.text().await?).map_err(anyhow::Error::msg)?;
    dev.start_kill()?;
    dev.wait().await?;
    let log_text = std::fs::read_to_string(&log)?;
    ensure!(
        !log_text.contains(&token),
        "the dev token appears in the log"
    );
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

async fn metrics_of(http: &reqwest::Client, url: &str) -> anyhow::Result<prometheus::Exposition> {
    let text = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    prometheus::parse(&text).map_err(|e| anyhow::anyhow!("{e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_metrics_and_the_server_limits_mip003() -> anyhow::Result<()> {
    let db = TestDb::create("access").await?;
    let logs = log_dir("access/metrics");
    let listen = format!("127.0.0.1:{}", free_port()?);
    let metrics_listen = format!("127.0.0.1:{}", free_port()?);
    let base = format!("http://{listen}");
    // The server with the default limit (60 per minute).
    let mut server = spawn(
        &["server", "--listen", &listen, "--skip-migrate"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("KODOMASU_RATE_LIMIT_PER_MINUTE", "60"),
        ],
        &logs.join("server.log"),
    )?;
    let mut worker = spawn(
        &[
            "worker",
            "--skip-migrate",
            "--poll-interval",
            "200ms",
            "--metrics-listen",
            &metrics_listen,
        ],
        &[("DATABASE_URL", db.url.as_str())],
        &logs.join("worker.log"),
    )?;
    let http = http_client(WAIT);
    wait_ok(&http, &format!("{base}/health/ready"), &mut server, WAIT).await?;
    let worker_metrics = format!("http://{metrics_listen}/metrics");
    wait_ok(
        &http,
        &format!("http://{metrics_listen}/health/live"),
        &mut worker,
        WAIT,
    )
    .await?;

    let before = metrics_of(&http, &worker_metrics).await?;
    let resp = http
        .post(format!("{base}/api/v1/workflows"))
        .json(&json!({"type": "demo.chain", "input": {"steps": 3, "sleep_ms": 0, "fail_prob": 0}}))
        .send()
        .await?;
    ensure!(resp.status() == 201, "start: {}", resp.status());
    let id = resp.json::<Value>().await?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let start = Instant::now();
    loop {
        let wf: Value = http
            .get(format!("{base}/api/v1/workflows/{id}"))
            .send()
            .await?
            .json()
            .await?;
        if wf["status"] == json!("completed") {
            break;
        }
        ensure!(start.elapsed() < WAIT, "not completed: {wf}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = metrics_of(&http, &worker_metrics).await?;
    let step_ok = [("activity", "demo.step"), ("outcome", "completed")];
    let attempts = after.sum("kodomasu_activity_attempts_total", &step_ok)
        - before.sum("kodomasu_activity_attempts_total", &step_ok);
    ensure!(
        attempts == 3.0,
        "worker counted {attempts} completed attempts"
    );
    let finished = [("workflow_type", "demo.chain"), ("status", "completed")];
    ensure!(after.sum("kodomasu_workflows_finished_total", &finished) == 1.0);
    ensure!(after.sum("kodomasu_workers_live", &[]) >= 1.0);
    // The server counted the start (the worker never sees HTTP).
    let server_metrics = metrics_of(&http, &format!("{base}/metrics")).await?;
    ensure!(
        server_metrics.sum(
            "kodomasu_workflows_started_total",
            &[("workflow_type", "demo.chain")]
        ) == 1.0
    );

    // The 61st MIP-003 request within a minute is refused; the admin API is not limited.
    let anonymous = reqwest::Client::builder().timeout(WAIT).build()?;
    for i in 1..=60 {
        let status = anonymous
            .get(format!("{base}/availability"))
            .send()
            .await?
            .status();
        ensure!(status == 200, "request {i}: {status}");
    }
    let refused = anonymous.get(format!("{base}/availability")).send().await?;
    ensure!(refused.status() == 429, "61st: {}", refused.status());
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .context("Retry-After in seconds")?;
    ensure!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: Value = refused.json().await?;
    ensure!(body["code"] == json!("rate_limited"), "{body}");
    ensure!(
        http.get(format!("{base}/api/v1/workflows"))
            .send()
            .await?
            .status()
            == 200
    );
    db.drop_database().await
}
