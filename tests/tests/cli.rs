//! The operators' commands of the real `kodomasu` binary (issue 4, item 8):
//! - `kodomasu config init` writes both profiles, refuses to overwrite without `--force`, and
//!   its output checks and loads back; an unknown key stops the binary with its name;
//! - a value in the settings file takes effect (a `kodomasu server` listens where the file
//!   says, on the SQLite journal in the file's data directory), an environment variable
//!   overrides it, and a flag overrides both;
//! - `kodomasu workflows list|show|history|signal` against a `kodomasu dev` process: tables,
//!   `--json`, pause/resume/cancel, the server's `{code, message}` errors (401 without or with
//!   a wrong token), an unreachable server, and the token never printed.

mod common;

use anyhow::{Context, bail};
use common::kodomasu_bin;
use common::services::{free_port, wait_ok};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The admin token the `kodomasu dev` process of these tests accepts.
const TOKEN: &str = "kdm_cli-test-token-0123456789abcdefghijklmnopqrs";

/// A `kodomasu` command that inherits none of the binary's variables from the test's
/// environment (the test sets what it needs).
fn kodomasu(args: &[&str]) -> Command {
    let mut command = Command::new(kodomasu_bin());
    command.args(args);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("KODOMASU_")
            || name.starts_with("MASUMI_")
            || name.starts_with("KODOSUMI_")
            || name == "DATABASE_URL"
        {
            command.env_remove(name);
        }
    }
    command
        .env("RUST_LOG", "info,sqlx=warn,tower_http=warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs a command to its end.
async fn run(mut command: Command) -> anyhow::Result<Output> {
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .context("command timed out")??;
    Ok(output)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "expected success, got {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[track_caller]
fn assert_fails_with(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected a failure, got success\nstdout:\n{}",
        stdout(o)
    );
    assert!(
        stderr(o).contains(needle),
        "stderr lacks `{needle}`:\n{}",
        stderr(o)
    );
}

/// A fresh temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "kodomasu-{prefix}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn config_init_writes_both_profiles_that_load_back() -> anyhow::Result<()> {
    let dir = TempDir::new("config-init")?;
    for profile in ["development", "production"] {
        let file = dir.path(&format!("{profile}.toml"));
        let out = run(kodomasu(&[
            "config",
            "init",
            "--profile",
            profile,
            "--output",
            &s(&file),
        ]))
        .await?;
        assert_ok(&out);
        assert!(stdout(&out).contains("wrote"), "{}", stdout(&out));
        let text = std::fs::read_to_string(&file)?;
        for needle in [
            "[database]",
            "[worker]",
            "[services]",
            "lease_ttl",
            "unit: duration",
        ] {
            assert!(text.contains(needle), "{profile} lacks {needle}");
        }
        // Loads back: through `config check`, and as --config of another command.
        assert_ok(&run(kodomasu(&["config", "check", &s(&file)])).await?);
        assert_ok(&run(kodomasu(&["--config", &s(&file), "config", "check"])).await?);
        let mut via_env = kodomasu(&["workflows", "list", "--help"]);
        via_env.env("KODOMASU_CONFIG", &file);
        assert_ok(&run(via_env).await?);

        // Not overwritten without --force; overwritten with it.
        std::fs::write(&file, "# mine\n")?;
        let out = run(kodomasu(&[
            "config",
            "init",
            "--profile",
            profile,
            "--output",
            &s(&file),
        ]))
        .await?;
        assert_fails_with(&out, "exists; pass --force");
        assert_eq!(std::fs::read_to_string(&file)?, "# mine\n");
        let out = run(kodomasu(&[
            "config",
            "init",
            "--profile",
            profile,
            "--output",
            &s(&file),
            "--force",
        ]))
        .await?;
        assert_ok(&out);
        assert_eq!(std::fs::read_to_string(&file)?, text);
    }
    let prod = std::fs::read_to_string(dir.path("production.toml"))?;
    assert!(prod.contains("database_url = \"postgres://"));
    assert!(prod.contains("log_format = \"json\""));

    // `config init` works while KODOMASU_CONFIG names a file that does not exist yet.
    let fresh = dir.path("fresh.toml");
    let mut init = kodomasu(&["config", "init", "--output", &s(&fresh)]);
    init.env("KODOMASU_CONFIG", &fresh);
    assert_ok(&run(init).await?);

    // An unknown key stops any command with the key's name.
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "[worker]\nslotz = 4\n")?;
    let out = run(kodomasu(&["--config", &s(&bad), "worker"])).await?;
    assert_fails_with(&out, "unknown key `worker.slotz` (did you mean `slots`?)");
    std::fs::write(&bad, "lease_ttl = \"often\"\n")?;
    let out = run(kodomasu(&["--config", &s(&bad), "worker"])).await?;
    assert_fails_with(&out, "`lease_ttl` invalid value 'often'");
    let out = run(kodomasu(&[
        "--config",
        &s(&dir.path("missing.toml")),
        "worker",
    ]))
    .await?;
    assert_fails_with(&out, "cannot read the settings file");
    Ok(())
}

/// Starts `command` (a server) and waits for `/health` on `port`.
async fn start_server(mut command: Command, port: u16, log: &Path) -> anyhow::Result<Child> {
    command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    let mut child = command.spawn()?;
    wait_ok(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{port}/health"),
        &mut child,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("server on {port}; log {}", log.display()))?;
    Ok(child)
}

async fn refused(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
}

#[tokio::test]
async fn file_values_take_effect_and_env_and_flags_override_them() -> anyhow::Result<()> {
    let dir = TempDir::new("config-precedence")?;
    let logs = common::log_dir("cli_config_precedence");
    let (from_file, from_env, from_flag) = (free_port()?, free_port()?, free_port()?);
    let data = dir.path("data");
    let file = dir.path("kodomasu.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\ndata_dir = {data:?}\n[server]\nlisten = \"127.0.0.1:{from_file}\"\n",
            data = s(&data)
        ),
    )?;

    // The file alone: its address and its data directory.
    let mut server = start_server(
        kodomasu(&["--config", &s(&file), "server"]),
        from_file,
        &logs.join("file.log"),
    )
    .await?;
    assert!(
        data.join("kodomasu.db").exists(),
        "the journal is in the file's data_dir"
    );
    server.kill().await?;

    // The environment overrides the file (the file named by KODOMASU_CONFIG this time).
    let mut command = kodomasu(&["server"]);
    command
        .env("KODOMASU_CONFIG", &file)
        .env("KODOMASU_LISTEN", format!("127.0.0.1:{from_env}"));
    let mut server = start_server(command, from_env, &logs.join("env.log")).await?;
    assert!(
        refused(from_file).await,
        "nothing listens on the file's port"
    );
    server.kill().await?;

    // A flag overrides both.
    let listen = format!("127.0.0.1:{from_flag}");
    let mut command = kodomasu(&["--config", &s(&file), "server", "--listen", &listen]);
    command.env("KODOMASU_LISTEN", format!("127.0.0.1:{from_env}"));
    let mut server = start_server(command, from_flag, &logs.join("flag.log")).await?;
    assert!(refused(from_file).await && refused(from_env).await);
    server.kill().await?;
    Ok(())
}

/// A `kodomasu dev` process on a temporary SQLite journal.
struct Dev {
    child: Child,
    base: String,
    _dir: TempDir,
}

impl Dev {
    async fn start() -> anyhow::Result<Self> {
        let dir = TempDir::new("cli-dev")?;
        let port = free_port()?;
        let log = common::log_dir("cli_workflows").join("dev.log");
        let mut command = kodomasu(&[
            "dev",
            "--data-dir",
            &s(&dir.0),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--poll-interval",
            "200ms",
        ]);
        command.env("KODOMASU_BOOTSTRAP_TOKEN", TOKEN);
        let child = start_server(command, port, &log).await?;
        Ok(Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// `kodomasu workflows <args>` against this server, with the token from the environment.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["workflows"];
        full.extend_from_slice(args);
        let mut command = kodomasu(&full);
        command
            .env("KODOMASU_SERVER", &self.base)
            .env("KODOMASU_TOKEN", TOKEN);
        let out = run(command).await?;
        // The token is never printed, whatever the command did.
        assert!(
            !stdout(&out).contains(TOKEN) && !stderr(&out).contains(TOKEN),
            "the token was printed by `{}`",
            args.join(" ")
        );
        Ok(out)
    }

    async fn cli_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.cli(&full).await?;
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).context("--json prints JSON")
    }

    async fn start_chain(&self, key: &str, steps: u32, sleep_ms: u64) -> anyhow::Result<String> {
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/workflows", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"type": "demo.chain", "key": key,
                "input": {"steps": steps, "sleep_ms": sleep_ms}}))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        anyhow::ensure!(status.is_success(), "start: {status} {body}");
        body["id"]
            .as_str()
            .map(str::to_owned)
            .context("start answers an id")
    }

    async fn wait_status(&self, id: &str, status: &str) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let w = self.cli_json(&["show", id]).await?;
            if w["status"] == status {
                return Ok(w);
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{id} is {} after 60s, not {status}", w["status"]);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test]
async fn workflows_commands_against_a_dev_server() -> anyhow::Result<()> {
    let mut dev = Dev::start().await?;

    let out = dev.cli(&["list", "--type", "demo.chain"]).await?;
    assert_ok(&out);
    assert_eq!(stdout(&out), "no workflows match\n");

    // A short chain completes; list, show and history show it.
    let done = dev.start_chain("cli-done", 2, 20).await?;
    dev.wait_status(&done, "completed").await?;
    let out = dev.cli(&["list"]).await?;
    assert_ok(&out);
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("ID") && header.contains("WAITING ON"),
        "{text}"
    );
    let row = lines
        .find(|l| l.starts_with(&done))
        .with_context(|| format!("list lacks {done}:\n{text}"))?;
    assert_eq!(
        header.find("STATUS"),
        row.find("completed"),
        "aligned:\n{text}"
    );

    let listed = dev
        .cli_json(&["list", "--status", "completed", "--limit", "5"])
        .await?;
    assert!(
        listed["workflows"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["id"] == done.as_str())),
        "{listed}"
    );

    // The server's filters: key search and creation time.
    let found = dev.cli_json(&["list", "-q", "cli-done"]).await?;
    let ids: Vec<&str> = found["workflows"]
        .as_array()
        .map(|w| w.iter().filter_map(|w| w["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, [done.as_str()], "{found}");
    let none = dev
        .cli_json(&["list", "--created-after", "2999-01-01T00:00:00Z"])
        .await?;
    assert_eq!(none["workflows"], json!([]), "{none}");

    let out = dev.cli(&["show", &done]).await?;
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("status      completed"), "{text}");
    assert!(text.contains("waiting on  nothing (finished)"), "{text}");
    assert!(text.contains(r#"output      {"steps":2}"#), "{text}");

    let out = dev.cli(&["history", &done]).await?;
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.starts_with("SEQ  TIME"), "{text}");
    for kind in ["started", "transitioned", "activity_completed", "completed"] {
        assert!(text.contains(kind), "history lacks {kind}:\n{text}");
    }
    let history = dev.cli_json(&["history", &done]).await?;
    assert!(history["events"].as_array().is_some_and(|e| e.len() >= 4));

    // A long chain: pause, see it paused, resume, cancel with a payload.
    let long = dev.start_chain("cli-long", 200, 200).await?;
    let out = dev.cli(&["signal", &long, "pause"]).await?;
    assert_ok(&out);
    assert!(
        stdout(&out).contains("signal `pause` accepted"),
        "{}",
        stdout(&out)
    );
    dev.wait_status(&long, "paused").await?;
    let out = dev.cli(&["show", &long]).await?;
    assert!(
        stdout(&out).contains("paused: waits for the `resume` signal"),
        "{}",
        stdout(&out)
    );
    assert_ok(&dev.cli(&["signal", &long, "resume"]).await?);
    dev.wait_status(&long, "running").await?;
    let answer = dev
        .cli_json(&["signal", &long, "cancel", "--payload", r#"{"why":"test"}"#])
        .await?;
    assert_eq!(answer["signal"], "cancel", "{answer}");
    dev.wait_status(&long, "cancelled").await?;
    let out = dev.cli(&["history", &long, "--wide"]).await?;
    assert!(stdout(&out).contains("signal_applied"), "{}", stdout(&out));

    // The server's errors print its code and message, and fail.
    let out = dev
        .cli(&["show", "00000000-0000-0000-0000-000000000000"])
        .await?;
    assert_fails_with(&out, "404 not_found");
    let out = dev.cli(&["signal", &done, "pause"]).await?;
    assert_fails_with(&out, "409 workflow_finished");
    let out = dev.cli(&["list", "--status", "sleeping"]).await?;
    assert_fails_with(&out, "400 invalid_query");
    let out = dev
        .cli(&["signal", &long, "custom", "--payload", "{not json"])
        .await?;
    assert_fails_with(&out, "--payload is not valid JSON");

    // Without a token, or with a wrong one: the server's 401 and a hint; no token printed.
    let mut command = kodomasu(&["workflows", "list"]);
    command.env("KODOMASU_SERVER", &dev.base);
    let out = run(command).await?;
    assert_fails_with(&out, "401 unauthorized");
    assert_fails_with(&out, "pass --token or set KODOMASU_TOKEN");
    let wrong = "kdm_not-a-real-token-0000000000000000000000000";
    let mut command = kodomasu(&["workflows", "show", &done, "--token", wrong]);
    command.env("KODOMASU_SERVER", &dev.base);
    let out = run(command).await?;
    assert_fails_with(&out, "the token was refused");
    assert!(!stderr(&out).contains(wrong) && !stdout(&out).contains(wrong));

    // An unreachable server says so.
    let closed = free_port()?;
    let mut command = kodomasu(&["workflows", "list"]);
    command
        .env("KODOMASU_SERVER", format!("http://127.0.0.1:{closed}"))
        .env("KODOMASU_TOKEN", TOKEN);
    let out = run(command).await?;
    assert_fails_with(
        &out,
        &format!("cannot reach the kodomasu server at http://127.0.0.1:{closed}"),
    );
    assert!(!stderr(&out).contains(TOKEN));

    dev.child.kill().await?;
    Ok(())
}
