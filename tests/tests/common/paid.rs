//! Harness of the paid-job tests: the Masumi and Kodosumi simulators (in this process, on
//! random local ports), a `kodomasu server` and a `kodomasu worker` process configured against
//! them on a fresh database, and small HTTP helpers for the buyer (MIP-003), the operator (the
//! admin API) and the simulators' test controls (`/_sim`).

use super::{TestDb, kodomasu_bin, log_dir};
use activities::kodosumi::sim::{self as kodosumi_sim, KodosumiSimConfig};
use activities::masumi::sim::{
    BuyerBehavior, MasumiSim, MasumiSimConfig, SIM_AGENT_IDENTIFIER, SIM_TOKEN,
};
use anyhow::{Context, bail};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The demo flow without input locks (fields `name`, `seconds`, `fail`, `style`).
pub const HELLO: &str = "Hello World";
/// The demo flow that asks for input through a lock.
pub const CONFIRM: &str = "Confirm Flow";

/// How one test's environment is set up.
#[derive(Debug, Clone)]
pub struct PaidEnvOptions {
    /// Duration of each step of a simulated seller transaction.
    pub chain_step: Duration,
    /// The Masumi simulator's `seller_window` (fast clock): how long after `FundsLocked`
    /// without a submitted result the buyer withdraws a refund, and after `Disputed` the
    /// admins settle. The default (60 s) leaves a job time to deliver: Kodosumi alone keeps a
    /// run unknown for 2 s after its launch, so with a 2 s window every buyer is refunded
    /// before the result can be submitted. Tests that expect a refund shorten it.
    pub seller_window: Duration,
    /// Run time of a "Hello World" execution.
    pub hello_duration: Duration,
    /// Run time of a "Confirm Flow" execution after its lock.
    pub confirm_duration: Duration,
    /// `--pay-by` of the server.
    pub pay_by: &'static str,
    /// `--submit-result-within` of the server.
    pub submit_result_within: &'static str,
    /// Content of a `--flows-file`, if any.
    pub flows_file: Option<String>,
}

impl Default for PaidEnvOptions {
    fn default() -> Self {
        Self {
            chain_step: Duration::from_millis(100),
            seller_window: Duration::from_secs(60),
            hello_duration: Duration::from_millis(500),
            confirm_duration: Duration::from_millis(500),
            pay_by: "6s",
            submit_result_within: "1h",
            flows_file: None,
        }
    }
}

/// Simulators, server and worker of one test.
pub struct PaidEnv {
    pub db: TestDb,
    pub logs: PathBuf,
    /// The server's root, `http://127.0.0.1:PORT`.
    pub base: String,
    /// The Masumi simulator's root (`/_sim` lives here).
    pub masumi_root: String,
    /// The Kodosumi simulator's root.
    pub kodosumi_root: String,
    pub http: reqwest::Client,
    pub server: Child,
    pub worker: Child,
    /// Flow uids by summary, as `GET /flows` lists them.
    pub hello_uid: String,
    pub confirm_uid: String,
    _masumi: MasumiSim,
    _kodosumi: DropGuard,
}

impl std::fmt::Debug for PaidEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaidEnv")
            .field("db", &self.db.name)
            .field("base", &self.base)
            .field("masumi_root", &self.masumi_root)
            .field("kodosumi_root", &self.kodosumi_root)
            .finish_non_exhaustive()
    }
}

/// A free local port (bound, then released for a child process to take).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A random `identifier_from_purchaser` the payment service accepts (16 hex characters).
pub fn purchaser() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Starts `kodomasu <args>` with its stderr in `log`.
pub fn spawn_kodomasu(args: &[String], db_url: &str, log: PathBuf) -> anyhow::Result<Child> {
    let out = std::fs::File::create(&log)?;
    let child = Command::new(kodomasu_bin())
        .args(args)
        .env("DATABASE_URL", db_url)
        .envs(super::ACCESS_ENV)
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()?;
    Ok(child)
}

/// Polls `probe` every 100 ms until it yields a value; fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP answer: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

async fn answer(resp: reqwest::Response) -> anyhow::Result<Answer> {
    let status = resp.status();
    let text = resp.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer { status, body })
}

impl PaidEnv {
    /// Starts both simulators in this process, then a server and a worker on a fresh
    /// database, and waits until the server lists both demo flows.
    pub async fn start(test: &str, opts: PaidEnvOptions) -> anyhow::Result<Self> {
        let db = TestDb::create("paid").await?;
        let logs = log_dir(test);
        let masumi = MasumiSim::spawn(MasumiSimConfig {
            default_buyer: BuyerBehavior::Pay { after_ms: 1_000 },
            chain_step_ms: opts.chain_step.as_millis() as u64,
            fast_clock: true,
            seller_window_ms: opts.seller_window.as_millis() as u64,
            ..MasumiSimConfig::default()
        })
        .await?;
        let kodosumi_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let kodosumi_root = format!("http://{}", kodosumi_listener.local_addr()?);
        let mut config = KodosumiSimConfig::default();
        for flow in &mut config.flows {
            flow.behavior.duration_ms = if flow.summary == HELLO {
                opts.hello_duration.as_millis() as u64
            } else {
                opts.confirm_duration.as_millis() as u64
            };
        }
        let kodosumi_stop = CancellationToken::new();
        {
            let stop = kodosumi_stop.clone();
            tokio::spawn(async move {
                if let Err(e) = kodosumi_sim::serve(kodosumi_listener, config, stop).await {
                    eprintln!("kodosumi simulator stopped: {e}");
                }
            });
        }

        let mut services = vec![
            "--skip-migrate".to_owned(),
            "--masumi-url".to_owned(),
            masumi.base_url().to_owned(),
            "--masumi-token".to_owned(),
            SIM_TOKEN.to_owned(),
            "--kodosumi-url".to_owned(),
            kodosumi_root.clone(),
            "--kodosumi-password".to_owned(),
            "admin".to_owned(),
            "--agent-identifier".to_owned(),
            SIM_AGENT_IDENTIFIER.to_owned(),
            "--pay-by".to_owned(),
            opts.pay_by.to_owned(),
            "--submit-result-within".to_owned(),
            opts.submit_result_within.to_owned(),
        ];
        if let Some(text) = &opts.flows_file {
            let path = logs.join("flows.toml");
            std::fs::write(&path, text)?;
            services.push("--flows-file".to_owned());
            services.push(path.display().to_string());
        }
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut server_args = vec![
            "server".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        server_args.extend(services.iter().cloned());
        let server = spawn_kodomasu(&server_args, &db.url, logs.join("server.log"))?;
        let mut worker_args: Vec<String> = [
            "worker",
            "--lease-ttl",
            "2s",
            "--poll-interval",
            "200ms",
            "--slots",
            "16",
        ]
        .map(str::to_owned)
        .to_vec();
        worker_args.extend(services);
        let worker = spawn_kodomasu(&worker_args, &db.url, logs.join("worker.log"))?;

        let http = super::http_client(Duration::from_secs(30));
        let flows = eventually(
            "the server to list both demo flows",
            Duration::from_secs(30),
            || async {
                let Ok(resp) = http.get(format!("{base}/flows")).send().await else {
                    return Ok(None);
                };
                if !resp.status().is_success() {
                    return Ok(None);
                }
                let body: Value = resp.json().await?;
                let flows = body["flows"].as_array().cloned().unwrap_or_default();
                Ok((flows.len() >= 2).then_some(flows))
            },
        )
        .await
        .with_context(|| format!("see the logs in {}", logs.display()))?;
        let uid_of = |summary: &str| -> anyhow::Result<String> {
            flows
                .iter()
                .find(|f| f["summary"] == json!(summary))
                .and_then(|f| f["uid"].as_str())
                .map(str::to_owned)
                .with_context(|| format!("flow `{summary}` is not listed: {flows:?}"))
        };
        let hello_uid = uid_of(HELLO)?;
        let confirm_uid = uid_of(CONFIRM)?;
        Ok(Self {
            db,
            logs,
            base,
            masumi_root: format!("http://{}", masumi.addr()),
            kodosumi_root,
            http,
            server,
            worker,
            hello_uid,
            confirm_uid,
            _masumi: masumi,
            _kodosumi: kodosumi_stop.drop_guard(),
        })
    }

    /// `GET {base}{path}`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        answer(self.http.get(format!("{}{path}", self.base)).send().await?).await
    }

    /// `POST {base}{path}` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Answer> {
        answer(
            self.http
                .post(format!("{}{path}", self.base))
                .json(body)
                .send()
                .await?,
        )
        .await
    }

    /// `POST {base}{path}` with a raw body sent as `application/json`.
    pub async fn post_raw(&self, path: &str, body: &str) -> anyhow::Result<Answer> {
        answer(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await?,
        )
        .await
    }

    /// Presets the simulated buyer of `purchaser`'s future payments.
    pub async fn preset_buyer(&self, purchaser: &str, behavior: Value) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/_sim/buyers", self.masumi_root))
            .json(&json!({"identifierFromPurchaser": purchaser, "behavior": behavior}))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "POST /_sim/buyers: {}",
            resp.status()
        );
        Ok(())
    }

    /// `POST /{flow}/start_job`.
    pub async fn start_job(
        &self,
        flow_uid: &str,
        purchaser: &str,
        input_data: Value,
    ) -> anyhow::Result<Answer> {
        self.post_json(
            &format!("/{flow_uid}/start_job"),
            &json!({"identifier_from_purchaser": purchaser, "input_data": input_data}),
        )
        .await
    }

    /// `GET /{flow}/status?job_id=`; fails unless 200.
    pub async fn status(&self, flow_uid: &str, job_id: &str) -> anyhow::Result<Value> {
        let a = self
            .get(&format!("/{flow_uid}/status?job_id={job_id}"))
            .await?;
        anyhow::ensure!(a.status == 200, "status of {job_id}: {a:?}");
        Ok(a.body)
    }

    /// The admin API's view of a workflow; fails unless 200.
    pub async fn workflow(&self, id: &str) -> anyhow::Result<Value> {
        let a = self.get(&format!("/api/v1/workflows/{id}")).await?;
        anyhow::ensure!(a.status == 200, "workflow {id}: {a:?}");
        Ok(a.body)
    }

    /// Sends a signal through the admin API; fails unless 202.
    pub async fn signal(&self, id: &str, name: &str, payload: Value) -> anyhow::Result<()> {
        let a = self
            .post_json(
                &format!("/api/v1/workflows/{id}/signals"),
                &json!({"name": name, "payload": payload}),
            )
            .await?;
        anyhow::ensure!(a.status == 202, "signal {name} to {id}: {a:?}");
        Ok(())
    }

    /// Polls the admin view of workflow `id` until `done` holds; returns that view.
    pub async fn wait_workflow(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let wf = self.workflow(id).await?;
            if done(&wf) {
                return Ok(wf);
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for job {id} {what}; last seen: {}",
                    brief(&wf)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the workflow's `state.phase` is `phase`; returns its view.
    pub async fn wait_phase(
        &self,
        id: &str,
        phase: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_workflow(id, &format!("to reach phase {phase}"), timeout, |wf| {
            wf["state"]["phase"] == json!(phase)
        })
        .await
    }

    /// Waits until the workflow's status is terminal (`completed`, `failed`, `cancelled`).
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_workflow(id, "to finish", timeout, |wf| {
            matches!(
                wf["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .await
    }

    /// Every payment of the Masumi simulator, with counters and state history.
    pub async fn payments(&self) -> anyhow::Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/_sim/payments", self.masumi_root))
            .send()
            .await?
            .json()
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// The simulator's payment of `purchaser` (exactly one must exist).
    pub async fn payment_of(&self, purchaser: &str) -> anyhow::Result<Value> {
        let mut found: Vec<Value> = self
            .payments()
            .await?
            .into_iter()
            .filter(|p| p["identifier_from_purchaser"] == json!(purchaser))
            .collect();
        anyhow::ensure!(
            found.len() == 1,
            "{} payments for purchaser {purchaser}",
            found.len()
        );
        Ok(found.remove(0))
    }

    /// Waits until the simulator's payment of `purchaser` is in `state`.
    pub async fn wait_payment_state(
        &self,
        purchaser: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        eventually(
            &format!("the payment of {purchaser} to be {state} on the simulated chain"),
            timeout,
            || async {
                let p = self.payment_of(purchaser).await?;
                Ok((p["on_chain_state"] == json!(state)).then_some(p))
            },
        )
        .await
    }

    /// Every run the Kodosumi simulator launched.
    pub async fn launches(&self) -> anyhow::Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/_sim/launches", self.kodosumi_root))
            .send()
            .await?
            .json()
            .await?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Rows in the workflow table.
    pub async fn workflow_rows(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("select count(*) from kodomasu.workflows")
                .fetch_one(&self.db.pool)
                .await?,
        )
    }
}

/// A one-line summary of a workflow view for failure messages.
pub fn brief(wf: &Value) -> String {
    format!(
        "status={} phase={} error={} state={}",
        wf["status"], wf["state"]["phase"], wf["error"], wf["state"]
    )
}
