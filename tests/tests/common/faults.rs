//! Harness of the fault tests (`tests/faults.rs`, `scripts/faults.sh`): a throwaway PostgreSQL
//! cluster that a test may restart, an observer pool the connection storm spares, the admin
//! client every spawned server is called through, process signals, and the checks every fault
//! test ends with.

use super::services::{free_port, spawn_kodomasu, wait_ok};
use super::{TestDb, with_database};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::process::Child;

/// The bearer token spawned servers accept for the admin API (`KODOMASU_BOOTSTRAP_TOKEN`).
pub const ADMIN_TOKEN: &str = "kodomasu-fault-tests-admin-token";

/// `application_name` of the tests' own connections: the connection storm spares them.
pub const OBSERVER_APP: &str = "kodomasu-fault-observer";

/// How much longer the fault tests run: `KODOMASU_FAULTS_SCALE` (default 1; `scripts/faults.sh`
/// sets more). Loads and fault phases are multiplied by it.
pub fn scale() -> f64 {
    std::env::var("KODOMASU_FAULTS_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0)
}

/// `n` multiplied by [`scale`], at least 1.
pub fn scaled(n: usize) -> usize {
    ((n as f64) * scale()).round().max(1.0) as usize
}

/// `d` multiplied by [`scale`].
pub fn scaled_time(d: Duration) -> Duration {
    d.mul_f64(scale())
}

/// Environment of every spawned `kodomasu server`: the admin token, no MIP-003 rate limit.
pub fn server_env() -> Vec<(String, String)> {
    vec![
        (
            "KODOMASU_BOOTSTRAP_TOKEN".to_owned(),
            ADMIN_TOKEN.to_owned(),
        ),
        ("KODOMASU_RATE_LIMIT_PER_MINUTE".to_owned(), "0".to_owned()),
    ]
}

/// Requests to a spawned server's admin API (`/api/v1`), with the bearer token.
#[derive(Debug, Clone)]
pub struct Admin {
    pub http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Admin {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
            base: base.to_owned(),
        })
    }

    /// `method {base}{path}` with `Authorization: Bearer`.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// `GET {path}`: status and JSON body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let resp = self.request(reqwest::Method::GET, path).send().await?;
        let status = resp.status();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// The admin view of a workflow; fails unless 200.
    pub async fn workflow(&self, id: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(&format!("/api/v1/workflows/{id}")).await?;
        anyhow::ensure!(status == 200, "workflow {id}: {status} {body}");
        Ok(body)
    }

    /// Starts a workflow by key through `POST /api/v1/workflows`, retrying connection errors
    /// and 5xx answers (the database may be down) with the same key until `timeout`: a start
    /// that committed but lost its answer is found again by its key. Returns its id.
    pub async fn start_by_key(
        &self,
        workflow_type: &str,
        key: &str,
        input: &Value,
        timeout: Duration,
    ) -> anyhow::Result<(String, u32)> {
        let started = Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let sent = self
                .request(reqwest::Method::POST, "/api/v1/workflows")
                .json(&json!({"type": workflow_type, "key": key, "input": input}))
                .send()
                .await;
            let last = match sent {
                Ok(resp) if resp.status().is_success() => {
                    let body: Value = resp.json().await?;
                    let id = body["id"].as_str().context("start answered without id")?;
                    return Ok((id.to_owned(), tries));
                }
                Ok(resp) if resp.status().is_server_error() => {
                    format!(
                        "{} {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    )
                }
                Ok(resp) => bail!(
                    "starting {key}: {} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                ),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > timeout {
                bail!("starting {key}: no success within {timeout:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A pool on `url` whose sessions carry [`OBSERVER_APP`], so the storm spares them.
pub async fn observer_pool(url: &str) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?.application_name(OBSERVER_APP);
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?)
}

/// Creates a fresh, migrated database on the server of `base` (which need not be
/// `DATABASE_URL`'s). Dropped with its cluster, not by [`TestDb::drop_database`].
pub async fn create_db_on(base: &str, prefix: &str) -> anyhow::Result<TestDb> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(base)
        .await?;
    let name = format!("kodomasu_{prefix}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let url = with_database(base, &name);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    engine::Store::migrate(&engine::PgStore::new(pool.clone())).await?;
    Ok(TestDb { url, pool, name })
}

/// Where the PostgreSQL server binaries (`initdb`, `pg_ctl`) are: `$PATH`, then the usual
/// package locations, newest version first.
fn pg_bin_dir() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    // Newest major version first (numeric, so 16 before 9).
    candidates.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    candidates.extend(
        [
            "/usr/local/pgsql/bin",
            "/opt/homebrew/bin",
            "/usr/local/bin",
        ]
        .map(PathBuf::from),
    );
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A PostgreSQL cluster of its own (initdb + pg_ctl in a temporary directory, on a free port),
/// for tests that restart the database. Stopped and removed when dropped.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
    /// `pg_ctl -o` of a start.
    options: String,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

impl Cluster {
    /// initdb and start a cluster. Fails with what to install when the server binaries are
    /// missing.
    pub async fn start() -> anyhow::Result<Self> {
        let Some(bin) = pg_bin_dir() else {
            bail!(
                "this fault test restarts its own PostgreSQL and needs the server binaries \
                 (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; install them \
                 (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql)"
            );
        };
        let dir = std::env::temp_dir().join(format!(
            "kodomasu-faults-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root: then the cluster belongs to `postgres`.
        let as_postgres = is_root();
        let mut cluster = Self {
            bin,
            dir,
            as_postgres,
            options: String::new(),
            url: String::new(),
        };
        if as_postgres {
            let ensure_user = std::process::Command::new("sh")
                .args([
                    "-c",
                    "id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres",
                ])
                .status()?;
            anyhow::ensure!(ensure_user.success(), "could not create the postgres user");
            let chown = std::process::Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&cluster.dir)
                .status()?;
            anyhow::ensure!(chown.success(), "could not chown {}", cluster.dir.display());
        }
        let port = free_port()?;
        let data = cluster.dir.join("data");
        cluster
            .run(
                "initdb",
                &[
                    "-D",
                    &data.display().to_string(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ],
            )
            .await?;
        cluster.options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            cluster.dir.display()
        );
        cluster.start_server().await?;
        cluster.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        Ok(cluster)
    }

    async fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            tokio::process::Command::new(&exe)
        };
        let out = command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .await
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed ({}): {}{}\nserver log: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
        Ok(())
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    async fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let data = self.dir.join("data").display().to_string();
        let log = self.log().display().to_string();
        let mut all = vec!["-D", &data, "-l", &log, "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all).await
    }

    /// `pg_ctl restart -m <mode>` (`fast`: sessions terminated, checkpoint; `immediate`: no
    /// checkpoint, crash recovery at start). Returns once the server accepts connections again.
    pub async fn restart(&self, mode: &str) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", mode, "restart"]).await
    }

    /// `pg_ctl stop -m <mode>`: the database is down until [`Cluster::start_server`].
    pub async fn stop(&self, mode: &str) -> anyhow::Result<()> {
        self.pg_ctl(&["-m", mode, "stop"]).await
    }

    /// `pg_ctl start`; returns once the server accepts connections.
    pub async fn start_server(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["-o", &self.options, "start"]).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`) to the child process with kill(1).
pub async fn signal(child: &Child, signal: &str) -> anyhow::Result<()> {
    let pid = child.id().context("the process has already exited")?;
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Fails when a process the test relies on has exited (a worker or server that died on a
/// fault instead of riding it out).
pub fn assert_alive(what: &str, child: &mut Child, log: &Path) -> anyhow::Result<()> {
    if let Some(status) = child.try_wait()? {
        bail!(
            "{what} exited ({status}) instead of riding out the fault; its log ({}):\n{}",
            log.display(),
            tail(log, 40)
        );
    }
    Ok(())
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `line` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Log lines of `path` (colours removed) that contain every one of `needles`.
pub fn log_lines(path: &Path, needles: &[&str]) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(strip_ansi)
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// `kodomasu server` on `db_url` with [`server_env`] plus `env`, on a free port; waits until
/// it answers `/health`. Returns the process and its root URL.
pub async fn spawn_server(
    db_url: &str,
    extra_args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<(Child, String)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["server", "--listen", &listen, "--skip-migrate"];
    args.extend_from_slice(extra_args);
    let mut all_env = server_env();
    all_env.extend(env.iter().cloned());
    all_env.push(("DATABASE_URL".to_owned(), db_url.to_owned()));
    let mut child = spawn_kodomasu(&args, &all_env, log)?;
    let base = format!("http://{listen}");
    wait_ok(
        &reqwest::Client::new(),
        &format!("{base}/health"),
        &mut child,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("the server did not start; see {}", log.display()))?;
    Ok((child, base))
}

/// `kodomasu worker` on `db_url` with a short lease and quick polls, plus `env`.
pub fn spawn_worker(
    db_url: &str,
    lease_ttl: &str,
    extra_args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> anyhow::Result<Child> {
    let mut args = vec![
        "worker",
        "--lease-ttl",
        lease_ttl,
        "--poll-interval",
        "300ms",
        "--skip-migrate",
    ];
    args.extend_from_slice(extra_args);
    let mut all_env = env.to_vec();
    all_env.push(("DATABASE_URL".to_owned(), db_url.to_owned()));
    spawn_kodomasu(&args, &all_env, log)
}

/// Checks what every fault test ends with, for `demo.chain` workflows started by key: one
/// workflow per key (no start lost, none duplicated), every one `completed`, journals sound
/// (gapless, one result per call, snapshot = last transition).
pub async fn assert_chains_done(pool: &PgPool, keys: &[String]) -> anyhow::Result<()> {
    let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
        "select key, count(*) from kodomasu.workflows where workflow_type = 'demo.chain' group by key",
    )
    .fetch_all(pool)
    .await?;
    let by_key: std::collections::HashMap<Option<String>, i64> = rows.into_iter().collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !by_key.contains_key(&Some((*k).clone())))
        .collect();
    anyhow::ensure!(missing.is_empty(), "started workflows lost: {missing:?}");
    let doubled: Vec<_> = by_key.iter().filter(|(_, n)| **n > 1).collect();
    anyhow::ensure!(
        doubled.is_empty(),
        "keys with more than one workflow: {doubled:?}"
    );
    anyhow::ensure!(
        by_key.len() == keys.len(),
        "{} workflows for {} keys",
        by_key.len(),
        keys.len()
    );
    let counts = super::status_counts(pool).await?;
    anyhow::ensure!(
        counts == vec![("completed".to_owned(), keys.len() as i64)],
        "every workflow completes: {counts:?}"
    );
    super::assert_journals_sound(pool).await
}
