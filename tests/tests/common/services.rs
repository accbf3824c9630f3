//! Processes of the paid-job tests: the simulators as their own `kodomasu sim masumi|kodosumi`
//! processes (they outlive the worker processes a test kills), `kodomasu` processes connected
//! to them, and small process and HTTP helpers that do not depend on the database backend.

use super::kodomasu_bin;
use activities::kodosumi::sim::SimLaunch;
use activities::masumi::sim::{SIM_AGENT_IDENTIFIER, SIM_TOKEN, SimPaymentReport};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Environment variables of the `kodomasu` binary a child must not inherit from the test's
/// environment (the test decides them).
const SCRUBBED_ENV: &[&str] = &[
    "DATABASE_URL",
    "KODOMASU_DATA_DIR",
    "KODOMASU_LISTEN",
    "MASUMI_URL",
    "MASUMI_TOKEN",
    "KODOSUMI_URL",
    "KODOSUMI_USER",
    "KODOSUMI_PASSWORD",
    "KODOMASU_FLOWS_FILE",
    "KODOMASU_AGENT_IDENTIFIER",
    "KODOMASU_SKIP_MIGRATE",
    "KODOMASU_BOOTSTRAP_TOKEN",
    "KODOMASU_RATE_LIMIT_PER_MINUTE",
    "KODOMASU_CORS_ORIGINS",
    "KODOMASU_TRUST_FORWARDED_FOR",
    "KODOMASU_METRICS_LISTEN",
];

/// A free local TCP port (bound, then released for the child to bind).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `kodomasu <args>` with exactly `env` of the binary's own variables (after
/// [`super::ACCESS_ENV`], which `env` may override); stderr goes to
/// `log`, stdout to `log` with the extension `.stdout`. Killed when dropped.
pub fn spawn_kodomasu(
    args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<Child> {
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let out = std::fs::File::create(stdout_path(log))?;
    let mut command = Command::new(kodomasu_bin());
    command.args(args);
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    command
        .envs(super::ACCESS_ENV)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "info,sqlx=warn,tower_http=warn")
        .stdout(out)
        .stderr(err)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("starting kodomasu {}", args.join(" ")))?;
    Ok(child)
}

/// Where [`spawn_kodomasu`] writes a process's stdout.
pub fn stdout_path(log: &Path) -> PathBuf {
    log.with_extension("stdout")
}

/// Waits until `url` answers 2xx; fails after `timeout` or when `child` exits first.
pub async fn wait_ok(
    http: &reqwest::Client,
    url: &str,
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if http
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the process serving {url} exited ({status}) before it answered");
        }
        if start.elapsed() > timeout {
            bail!("{url} did not answer within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM to a child process and waits up to `timeout` for it to exit.
pub async fn sigterm(
    child: &mut Child,
    timeout: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let pid = child.id().context("the process has already exited")?;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .context("running kill -TERM")?;
    anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            bail!("process {pid} did not exit within {timeout:?} after SIGTERM")
        }
    }
}

/// A simulator running as its own `kodomasu sim ...` process.
#[derive(Debug)]
pub struct SimProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`; `/_sim/...` lives here.
    pub root: String,
}

impl SimProcess {
    /// Starts `kodomasu sim <kind> --listen 127.0.0.1:PORT <extra>` and waits until it answers.
    pub async fn spawn(kind: &str, extra: &[&str], log: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["sim", kind, "--listen", &listen];
        args.extend_from_slice(extra);
        let mut child = spawn_kodomasu(&args, &[], log)?;
        let root = format!("http://{listen}");
        wait_ok(
            &reqwest::Client::new(),
            &format!("{root}/_sim/faults"),
            &mut child,
            Duration::from_secs(20),
        )
        .await
        .with_context(|| format!("the {kind} simulator did not start; see {}", log.display()))?;
        Ok(Self { child, root })
    }
}

/// The two simulators and the settings that connect `kodomasu server`/`worker` to them.
#[derive(Debug)]
pub struct Services {
    pub masumi: SimProcess,
    pub kodosumi: SimProcess,
}

impl Services {
    /// The service variables of `kodomasu server` and `kodomasu worker`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("MASUMI_URL", format!("{}/api/v1", self.masumi.root)),
            ("MASUMI_TOKEN", SIM_TOKEN.to_owned()),
            ("KODOSUMI_URL", self.kodosumi.root.clone()),
            ("KODOSUMI_USER", "admin".to_owned()),
            ("KODOSUMI_PASSWORD", "admin".to_owned()),
            ("KODOMASU_AGENT_IDENTIFIER", SIM_AGENT_IDENTIFIER.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Every payment the Masumi simulator knows, with its counters and state history.
    pub async fn payments(&self, http: &reqwest::Client) -> anyhow::Result<Vec<SimPaymentReport>> {
        sim_payments(http, &self.masumi.root).await
    }

    /// Every run the Kodosumi simulator started.
    pub async fn launches(&self, http: &reqwest::Client) -> anyhow::Result<Vec<SimLaunch>> {
        let resp = http
            .get(format!("{}/_sim/launches", self.kodosumi.root))
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.json().await?)
    }

    /// Presets how the simulated buyer of `purchaser`'s future payments behaves.
    pub async fn preset_buyer(
        &self,
        http: &reqwest::Client,
        purchaser: &str,
        behavior: serde_json::Value,
    ) -> anyhow::Result<()> {
        http.post(format!("{}/_sim/buyers", self.masumi.root))
            .json(&serde_json::json!({"identifierFromPurchaser": purchaser, "behavior": behavior}))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}

/// `GET {root}/_sim/payments` of a Masumi simulator.
pub async fn sim_payments(
    http: &reqwest::Client,
    root: &str,
) -> anyhow::Result<Vec<SimPaymentReport>> {
    let resp = http
        .get(format!("{root}/_sim/payments"))
        .send()
        .await?
        .error_for_status()?;
    Ok(resp.json().await?)
}

/// The uid of the flow named `summary` in the server's `GET /flows`, once the server has synced it.
pub async fn flow_uid(
    http: &reqwest::Client,
    base: &str,
    summary: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(resp) = http.get(format!("{base}/flows")).send().await
            && resp.status().is_success()
        {
            let body: serde_json::Value = resp.json().await?;
            let found = body["flows"].as_array().and_then(|flows| {
                flows.iter().find(|f| {
                    f["summary"] == summary && f["available"] == serde_json::Value::Bool(true)
                })
            });
            if let Some(uid) = found.and_then(|f| f["uid"].as_str()) {
                return Ok(uid.to_owned());
            }
        }
        if start.elapsed() > timeout {
            bail!("flow `{summary}` did not become available at {base}/flows");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Min / median / max of a list of seconds, for printing.
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some((*v.first()?, v[v.len() / 2], *v.last()?))
}
