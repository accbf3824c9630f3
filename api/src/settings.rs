//! Command-line settings of the `kodomasu` binary. Every flag also reads an environment
//! variable; durations are humantime strings (`500ms`, `30s`, `5m`).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// kodomasu: a durable workflow engine for paid AI jobs.
#[derive(Debug, Parser)]
#[command(name = "kodomasu", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Run a worker pool: claim due workflows and drive them.
    Worker {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// Run the HTTP server (admin API, health).
    Server {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run server and workers in one process (development and small deployments).
    Dev {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "KODOMASU_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL of the journal.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Maximum connections in this process's pool.
    #[arg(long, env = "KODOMASU_MAX_CONNECTIONS", default_value_t = 16)]
    pub max_connections: u32,
    /// Do not apply migrations at start (they are applied by default; concurrent starts are safe).
    #[arg(long, env = "KODOMASU_SKIP_MIGRATE")]
    pub skip_migrate: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = "KODOMASU_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Workflows this process drives at once.
    #[arg(long, env = "KODOMASU_SLOTS", default_value_t = 32)]
    pub slots: usize,
    /// How long a claim stays valid without renewal; a crashed worker's workflows move after this.
    #[arg(long, env = "KODOMASU_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// How often leases are renewed and the worker's heartbeat is written (default: lease TTL / 3).
    #[arg(long, env = "KODOMASU_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Fallback poll for due work when no notification arrives.
    #[arg(long, env = "KODOMASU_POLL_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Maximum workflows claimed by one query.
    #[arg(long, env = "KODOMASU_CLAIM_BATCH", default_value_t = 16)]
    pub claim_batch: usize,
    /// How long shutdown waits for running steps before handing them to other workers.
    #[arg(long, env = "KODOMASU_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

impl WorkerArgs {
    /// The engine's worker settings.
    ///
    /// # Errors
    /// When the values contradict each other.
    pub fn config(&self) -> Result<engine::WorkerConfig, String> {
        if self.slots == 0 {
            return Err("--slots must be at least 1".into());
        }
        if self.lease_ttl < Duration::from_millis(200) {
            return Err("--lease-ttl must be at least 200ms".into());
        }
        let heartbeat_interval = self.heartbeat_interval.unwrap_or(self.lease_ttl / 3);
        if heartbeat_interval >= self.lease_ttl {
            return Err("--heartbeat-interval must be shorter than --lease-ttl".into());
        }
        Ok(engine::WorkerConfig {
            slots: self.slots,
            lease_ttl: self.lease_ttl,
            heartbeat_interval,
            poll_interval: self.poll_interval,
            claim_batch: self.claim_batch.max(1),
            drain_timeout: self.drain_timeout,
            ..engine::WorkerConfig::default()
        })
    }
}
