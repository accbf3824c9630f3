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
    /// Settings file (TOML, see `kodomasu config init`); flags and environment variables
    /// override its values.
    #[arg(
        long = "config",
        env = "KODOMASU_CONFIG",
        value_name = "PATH",
        global = true
    )]
    pub config_file: Option<std::path::PathBuf>,
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
        #[command(flatten)]
        services: ServiceArgs,
        #[command(flatten)]
        metrics: WorkerMetricsArgs,
    },
    /// Run the HTTP server (MIP-003 endpoints, admin API, health).
    Server {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Run everything in one process: server, workers and, unless their URLs are given, the
    /// Masumi and Kodosumi simulators. Prints the URLs and a curl line that starts a paid job.
    Dev {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// Run a simulator of an external service (a real HTTP server speaking its API).
    #[command(subcommand)]
    Sim(SimCommand),
    /// Manage the admin API's bearer tokens (stored hashed; a token is shown once).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Measure throughput, latency and database commits against the database's own commit
    /// ceiling (`kodomasu bench`), the idle cost of workers (`kodomasu bench idle`), or how fast
    /// a killed worker's workflows move again (`kodomasu bench recovery`).
    Bench(crate::bench::BenchArgs),
    /// Operators' commands against a running server: list, show, history, signal.
    Workflows(crate::cli::WorkflowsArgs),
    /// Write (`init`) or check (`check`) a settings file.
    #[command(subcommand)]
    Config(crate::cli::ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; prints the token alone on stdout (details on stderr).
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// Name of the token (unique among valid tokens), e.g. `ci` or `alice`.
        #[arg(long)]
        name: String,
    },
    /// List tokens (never their values).
    List {
        #[command(flatten)]
        db: DbArgs,
        /// Print JSON: `{"tokens": [{id, name, created_at, revoked_at, valid}]}`.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id or by name; it stops working within seconds on every server.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        /// The token's id, or the name of a valid token.
        id_or_name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// The Masumi payment service (seller endpoints under /api/v1, test controls under /_sim).
    Masumi(MasumiSimArgs),
    /// Kodosumi 1.1.0's panel API (login admin/admin; test controls under /_sim).
    Kodosumi(KodosumiSimArgs),
}

/// How the simulated buyer of each payment behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuyerArg {
    /// Pays after `--pay-after`.
    Pay,
    /// Never pays.
    Never,
    /// Pays wrongly (FundsOrDatumInvalid).
    Invalid,
    /// Pays, then requests a refund after `--pay-after`.
    Refund,
    /// Pays, then disputes a submitted result after `--pay-after`.
    Dispute,
}

#[derive(Debug, Clone, Args)]
pub struct MasumiSimArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "KODOMASU_MASUMI_SIM_LISTEN",
        default_value = "127.0.0.1:3001"
    )]
    pub listen: SocketAddr,
    /// Default buyer of new payments (tests preset others with POST /_sim/buyers).
    #[arg(long, value_enum, default_value_t = BuyerArg::Pay)]
    pub buyer: BuyerArg,
    /// Delay of the buyer's action.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub pay_after: Duration,
    /// Duration of each chain step of a transaction.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub chain_step: Duration,
    /// Compress deadline-bound steps (withdrawals, refunds) instead of waiting for real deadlines.
    #[arg(long)]
    pub fast_clock: bool,
    /// With --fast-clock: how long the seller may still act before a deadline it could pre-empt
    /// (a refund of unpaid-for work, the admins' dispute settlement) is treated as passed.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub seller_window: Duration,
    #[command(flatten)]
    pub faults: FaultArgs,
}

#[derive(Debug, Clone, Args)]
pub struct KodosumiSimArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "KODOMASU_KODOSUMI_SIM_LISTEN",
        default_value = "127.0.0.1:3370"
    )]
    pub listen: SocketAddr,
    /// Run time of each flow execution.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub flow_duration: Duration,
    /// Lifetime of login tokens.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Faults a simulator injects (change them at run time with POST /_sim/faults).
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// Share of requests answered with a server error.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Delay added to every request.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of requests that never get an answer.
    #[arg(long, default_value_t = 0.0)]
    pub hang_rate: f64,
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
    /// Export traces over OTLP/HTTP to this collector (e.g. `http://localhost:4318`; `/v1/traces`
    /// is appended when the URL has no path). Off when unset.
    #[cfg(feature = "otel")]
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// A secret setting: `Debug` never shows its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty()
            || s.chars()
                .any(|c| !c.is_ascii_graphic() || c == ';' || c == ',')
        {
            return Err("must be non-empty printable ASCII without spaces, `;` or `,`".into());
        }
        Ok(Self(s.to_owned()))
    }
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// The journal: `postgres://…` (production) or `sqlite://path`. When unset, an embedded
    /// SQLite file in `--data-dir`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded SQLite journal lives when no database URL is given.
    #[arg(long, env = "KODOMASU_DATA_DIR", default_value = "kodomasu-data")]
    pub data_dir: std::path::PathBuf,
    /// Maximum connections in this process's pool (PostgreSQL).
    #[arg(long, env = "KODOMASU_MAX_CONNECTIONS", default_value_t = 16)]
    pub max_connections: u32,
    /// Do not apply migrations at start (they are applied by default; concurrent starts are safe).
    #[arg(long, env = "KODOMASU_SKIP_MIGRATE")]
    pub skip_migrate: bool,
}

impl DbArgs {
    /// The database URL to use: the given one, or the SQLite file in the data directory.
    pub fn url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => url.clone(),
            _ => format!("sqlite://{}", self.data_dir.join("kodomasu.db").display()),
        }
    }
}

/// Connections to Masumi and Kodosumi and how flows are sold. Without both URLs, paid jobs are
/// off (the MIP-003 endpoints answer 503) and only the engine runs.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Base URL of the Masumi payment service, e.g. `http://host:3001/api/v1`.
    #[arg(long, env = "MASUMI_URL")]
    pub masumi_url: Option<String>,
    /// API key of the payment service (header `token`); needs PAY permission.
    #[arg(long, env = "MASUMI_TOKEN", hide_env_values = true)]
    pub masumi_token: Option<String>,
    /// Base URL of the Kodosumi panel, e.g. `http://host:3370`.
    #[arg(long, env = "KODOSUMI_URL")]
    pub kodosumi_url: Option<String>,
    /// Kodosumi user name.
    #[arg(long, env = "KODOSUMI_USER", default_value = "admin")]
    pub kodosumi_user: String,
    /// Kodosumi password.
    #[arg(long, env = "KODOSUMI_PASSWORD", hide_env_values = true)]
    pub kodosumi_password: Option<String>,
    /// TOML file with each flow's sale settings (`[defaults]`, `[flows."<uid or summary>"]`).
    #[arg(long, env = "KODOMASU_FLOWS_FILE")]
    pub flows_file: Option<std::path::PathBuf>,
    /// Masumi agent identifier of flows the flows file does not configure.
    #[arg(long, env = "KODOMASU_AGENT_IDENTIFIER")]
    pub agent_identifier: Option<String>,
    /// Cardano network of payments: Preprod or Mainnet.
    #[arg(long, env = "KODOMASU_NETWORK", default_value = "Preprod")]
    pub network: String,
    /// Time the buyer has to pay, from start_job.
    #[arg(long, env = "KODOMASU_PAY_BY", default_value = "12h", value_parser = humantime::parse_duration)]
    pub pay_by: Duration,
    /// Time to submit the result, from start_job (Masumi requires at least 15 min).
    #[arg(long, env = "KODOMASU_SUBMIT_RESULT_WITHIN", default_value = "24h", value_parser = humantime::parse_duration)]
    pub submit_result_within: Duration,
    /// How often flows are synced from Kodosumi.
    #[arg(long, env = "KODOMASU_FLOW_SYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub flow_sync_interval: Duration,
    /// How long start_job waits for the payment request before it answers 504.
    #[arg(long, env = "KODOMASU_START_JOB_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub start_job_timeout: Duration,
    /// Limit of each HTTP request to Masumi and Kodosumi, connect included. A request that
    /// hangs fails retryably after it (an ambiguous failure the activities resolve).
    #[arg(long, env = "KODOMASU_SERVICE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub service_timeout: Duration,
    /// Limit of a Kodosumi result fetch (`GET /outputs/raw/{fid}`, which the panel holds open
    /// up to 600 s for a run it does not know).
    #[arg(long, env = "KODOMASU_RESULT_FETCH_TIMEOUT", default_value = "620s", value_parser = humantime::parse_duration)]
    pub result_fetch_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = "KODOMASU_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// At start, make sure a valid admin token with exactly this value exists (name
    /// `bootstrap`, stored hashed). For provisioning and tests; create others with
    /// `kodomasu token create`.
    #[arg(long, env = "KODOMASU_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<Secret>,
    /// MIP-003 requests allowed per client IP in any minute (0 = no limit); more answer 429.
    #[arg(long, env = "KODOMASU_RATE_LIMIT_PER_MINUTE", default_value_t = 60)]
    pub rate_limit_per_minute: u32,
    /// Take the client IP of the rate limit from the last `X-Forwarded-For` entry. Only behind
    /// a proxy that sets it: otherwise clients choose their own key.
    #[arg(long, env = "KODOMASU_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Origin allowed to call the API from a browser (repeatable; `*` = any). CORS is off
    /// when none is given.
    #[arg(
        long = "cors-origin",
        env = "KODOMASU_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
}

impl ServerArgs {
    /// The server's access settings.
    ///
    /// # Errors
    /// When a CORS origin is not a valid header value.
    pub fn access(&self) -> Result<crate::access::AccessConfig, String> {
        let cors_origins: Vec<String> = self
            .cors_origins
            .iter()
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        crate::access::cors_layer(&cors_origins)?;
        Ok(crate::access::AccessConfig {
            rate_limit_per_minute: self.rate_limit_per_minute,
            trust_forwarded_for: self.trust_forwarded_for,
            cors_origins,
        })
    }
}

/// Metrics of a `kodomasu worker` process (servers serve `/metrics` on their own port).
#[derive(Debug, Clone, Args)]
pub struct WorkerMetricsArgs {
    /// Serve `/metrics` (Prometheus) and `/health/live` on this address; off when unset.
    #[arg(long, env = "KODOMASU_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
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
