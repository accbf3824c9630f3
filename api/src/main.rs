//! The `kodomasu` binary: the composition root of engine, workflows, clients and HTTP server.

use activities::kodosumi::sim::{self as kodosumi_sim, KodosumiSimConfig};
use activities::masumi::sim::{self as masumi_sim, BuyerBehavior, MasumiSimConfig};
use anyhow::Context;
use api::settings::{
    BuyerArg, Cli, Command, DbArgs, KodosumiSimArgs, MasumiSimArgs, ServerArgs, ServiceArgs,
    SimCommand, TokenCommand, WorkerArgs, WorkerMetricsArgs,
};
use api::{AppState, PaidJobs};
use engine::{Engine, PgStore, SqliteStore, Store, Worker};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// mimalloc instead of the system allocator: the engine allocates many small, short-lived
/// JSON values per step from several runtime threads, and glibc's malloc spent about a third
/// of the process's CPU in `kodomasu bench` (arena lock contention included).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli: Cli = api::cli::config::parse_or_exit();
    #[cfg(feature = "otel")]
    let otlp_endpoint = cli.log.otlp_endpoint.clone();
    #[cfg(not(feature = "otel"))]
    let otlp_endpoint: Option<String> = None;
    // Dropped after the runtime: flushing the trace exporter blocks.
    let _telemetry = api::telemetry::init(cli.log.log_format, otlp_endpoint.as_deref())
        .map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async_main(cli));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("shutdown requested");
        signals.cancel();
    });

    let result = run(cli.command, cli.config_file, shutdown.clone()).await;
    shutdown.cancel();
    tasks.abort_all();
    result
}

async fn run(
    command: Command,
    config_file: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match command {
        Command::Migrate(db) => {
            let store = connect(&db).await?;
            store.migrate().await.context("applying migrations")?;
            println!("migrations applied to {}", redact(&db.url()));
            Ok(())
        }
        Command::Worker {
            db,
            worker,
            services,
            metrics,
        } => {
            let store = prepare(&db).await?;
            let paid = PaidJobs::from_args(&services)?.map(Arc::new);
            run_worker_process(store, &worker, &metrics, paid, shutdown).await
        }
        Command::Server {
            db,
            server,
            services,
        } => {
            let access = server.access().map_err(anyhow::Error::msg)?;
            let store = prepare(&db).await?;
            bootstrap_token(store.as_ref(), &server).await?;
            let paid = PaidJobs::from_args(&services)?.map(Arc::new);
            let listener = bind(&server).await?;
            run_server(store, listener, paid, access, None, shutdown).await
        }
        Command::Token(command) => run_token(command).await,
        Command::Dev {
            db,
            server,
            worker,
            services,
        } => run_dev(db, server, worker, services, shutdown).await,
        Command::Sim(SimCommand::Masumi(args)) => run_masumi_sim(&args, shutdown).await,
        Command::Sim(SimCommand::Kodosumi(args)) => run_kodosumi_sim(&args, shutdown).await,
        Command::Bench(args) => api::bench::run(args, shutdown).await,
        Command::Workflows(args) => operator_result(api::cli::run_workflows(args).await),
        Command::Config(command) => {
            operator_result(api::cli::config::run(command, config_file.as_deref()))
        }
    }
}

/// Operators' commands print their error as one message (no backtrace) and exit with 1.
fn operator_result<E: std::fmt::Display>(result: Result<(), E>) -> anyhow::Result<()> {
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    Ok(())
}

async fn wait_for_stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Opens the journal named by the URL: PostgreSQL for `postgres://`, SQLite for `sqlite:`.
async fn connect(db: &DbArgs) -> anyhow::Result<Arc<dyn Store>> {
    let url = db.url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgStore::pool_options()
            .max_connections(db.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact(&url)))?;
        Ok(Arc::new(PgStore::new(pool)))
    } else if url.starts_with("sqlite:") {
        let store = SqliteStore::connect(&url)
            .await
            .with_context(|| format!("opening the SQLite journal {url}"))?;
        Ok(Arc::new(store))
    } else {
        anyhow::bail!(
            "unsupported database URL `{}`: use postgres://… or sqlite://…",
            redact(&url)
        )
    }
}

async fn prepare(db: &DbArgs) -> anyhow::Result<Arc<dyn Store>> {
    let store = connect(db).await?;
    if !db.skip_migrate {
        store.migrate().await.context("applying migrations")?;
    }
    Ok(store)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        rest.split_once('@')
            .map(|(creds, host)| (scheme, creds, host))
    }) {
        Some((scheme, creds, host)) => {
            let user = creds.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

fn registry(paid: Option<&Arc<PaidJobs>>) -> engine::Registry {
    workflows::registry(paid.map(|p| &p.services))
}

/// `--bootstrap-token`: makes sure the token exists (name `bootstrap`, stored hashed).
async fn bootstrap_token(store: &dyn Store, server: &ServerArgs) -> anyhow::Result<()> {
    let Some(token) = &server.bootstrap_token else {
        return Ok(());
    };
    if token.expose().len() < 16 {
        tracing::warn!("the bootstrap token is shorter than 16 characters: easy to guess");
    }
    let record =
        api::access::ensure_token(store, api::access::BOOTSTRAP_TOKEN_NAME, token.expose())
            .await
            .context("storing the bootstrap token")?;
    if record.revoked_at.is_some() {
        tracing::warn!(token.id = %record.id, token.name = %record.name,
            "the bootstrap token was revoked and stays revoked; unset KODOMASU_BOOTSTRAP_TOKEN or choose a new value");
    } else {
        tracing::info!(token.id = %record.id, token.name = %record.name, "bootstrap token ready");
    }
    Ok(())
}

/// `kodomasu token create|list|revoke`, straight on the database.
async fn run_token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { db, name } => {
            let store = prepare(&db).await?;
            let (token, record) = api::access::create_token(store.as_ref(), &name).await?;
            println!("{token}");
            eprintln!(
                "created token `{}` (id {}); it is shown only now: keep it somewhere safe",
                record.name, record.id
            );
            Ok(())
        }
        TokenCommand::List { db, json } => {
            let store = prepare(&db).await?;
            let tokens = store.access_tokens().await?;
            if json {
                let list: Vec<_> = tokens.iter().map(api::access::token_json).collect();
                println!("{}", serde_json::json!({ "tokens": list }));
                return Ok(());
            }
            if tokens.is_empty() {
                eprintln!("no tokens; create one with `kodomasu token create --name NAME`");
                return Ok(());
            }
            let width = tokens
                .iter()
                .map(|t| t.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!(
                "{:<36}  {:<width$}  {:<20}  REVOKED",
                "ID", "NAME", "CREATED"
            );
            for t in &tokens {
                let revoked = t.revoked_at.map_or_else(
                    || "-".to_owned(),
                    |at| at.format("%Y-%m-%d %H:%M:%S").to_string(),
                );
                println!(
                    "{:<36}  {:<width$}  {:<20}  {revoked}",
                    t.id,
                    t.name,
                    t.created_at.format("%Y-%m-%d %H:%M:%S").to_string()
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { db, id_or_name } => {
            let store = prepare(&db).await?;
            match store.revoke_access_token(&id_or_name).await? {
                Some(t) => {
                    println!("revoked token `{}` ({})", t.name, t.id);
                    Ok(())
                }
                None => anyhow::bail!("no token with id or valid name `{id_or_name}`"),
            }
        }
    }
}

/// A worker process, with `/metrics` on `--metrics-listen` when given.
async fn run_worker_process(
    store: Arc<dyn Store>,
    args: &WorkerArgs,
    metrics: &WorkerMetricsArgs,
    paid: Option<Arc<PaidJobs>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = metrics.metrics_listen else {
        return run_worker(store, args, paid, shutdown).await;
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let registry = api::metrics::Metrics::install();
    tracing::info!(addr = %listener.local_addr()?, "worker metrics on /metrics");
    let mut parts: JoinSet<anyhow::Result<()>> = JoinSet::new();
    {
        let (store, registry, token) = (store.clone(), registry.clone(), shutdown.clone());
        parts.spawn(async move {
            api::metrics::serve_worker_metrics(listener, store, registry, token)
                .await
                .context("metrics server failed")
        });
    }
    let upkeep = shutdown.child_token();
    parts.spawn({
        let upkeep = upkeep.clone();
        async move {
            registry.upkeep_loop(upkeep).await;
            Ok(())
        }
    });
    let result = run_worker(store, args, paid, shutdown.clone()).await;
    shutdown.cancel();
    while let Some(joined) = parts.join_next().await {
        if let Ok(Err(e)) = joined {
            tracing::warn!(error.message = %e, "metrics endpoint stopped");
        }
    }
    result
}

async fn run_worker(
    store: Arc<dyn Store>,
    args: &WorkerArgs,
    paid: Option<Arc<PaidJobs>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = args.config().map_err(anyhow::Error::msg)?;
    let worker = Worker::new(store, registry(paid.as_ref()), config);
    worker.run(shutdown).await.context("worker failed")
}

async fn bind(args: &ServerArgs) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))
}

async fn run_server(
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    paid: Option<Arc<PaidJobs>>,
    access: api::access::AccessConfig,
    local_worker: Option<Worker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::new(store, registry(paid.as_ref())));
    if let Some(worker) = &local_worker {
        engine.dispatch_to(worker);
    }
    let state = AppState::new(engine, paid.clone(), access);
    let addr = listener.local_addr()?;
    let mut background = JoinSet::new();
    if let Some(paid) = &paid {
        match paid.catalog.sync().await {
            Ok(n) => tracing::info!(flows = n, "flows synced from Kodosumi"),
            Err(e) => {
                tracing::warn!(error.message = %e, "flow sync failed; retrying in the background")
            }
        }
        let catalog = paid.catalog.clone();
        background.spawn(catalog.sync_loop(paid.flow_sync_interval, shutdown.clone()));
    }
    background.spawn(state.metrics.clone().upkeep_loop(shutdown.clone()));
    tracing::info!(%addr, "HTTP server listening");
    let result = api::serve(listener, state, shutdown.clone()).await;
    shutdown.cancel();
    while background.join_next().await.is_some() {}
    result.context("HTTP server failed")
}

fn faults_masumi(f: &api::settings::FaultArgs) -> masumi_sim::Faults {
    masumi_sim::Faults {
        error_rate: f.error_rate,
        latency_ms: f.latency.as_millis() as u64,
        hang_rate: f.hang_rate,
        ..masumi_sim::Faults::default()
    }
}

fn faults_kodosumi(f: &api::settings::FaultArgs) -> kodosumi_sim::Faults {
    kodosumi_sim::Faults {
        error_rate: f.error_rate,
        latency_ms: f.latency.as_millis() as u64,
        hang_rate: f.hang_rate,
    }
}

fn masumi_sim_config(args: &MasumiSimArgs) -> MasumiSimConfig {
    let after_ms = args.pay_after.as_millis() as u64;
    MasumiSimConfig {
        default_buyer: match args.buyer {
            BuyerArg::Pay => BuyerBehavior::Pay { after_ms },
            BuyerArg::Never => BuyerBehavior::NeverPay,
            BuyerArg::Invalid => BuyerBehavior::PayInvalid { after_ms },
            BuyerArg::Refund => BuyerBehavior::RequestRefund { after_ms },
            BuyerArg::Dispute => BuyerBehavior::Dispute { after_ms },
        },
        chain_step_ms: args.chain_step.as_millis() as u64,
        fast_clock: args.fast_clock,
        seller_window_ms: args.seller_window.as_millis() as u64,
        faults: faults_masumi(&args.faults),
        ..MasumiSimConfig::default()
    }
}

fn kodosumi_sim_config(args: &KodosumiSimArgs) -> KodosumiSimConfig {
    let mut config = KodosumiSimConfig {
        token_ttl: args.token_ttl,
        faults: faults_kodosumi(&args.faults),
        ..KodosumiSimConfig::default()
    };
    for flow in &mut config.flows {
        flow.behavior.duration_ms = args.flow_duration.as_millis() as u64;
    }
    config
}

async fn run_masumi_sim(args: &MasumiSimArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "Masumi simulator on http://{addr}/api/v1 (token `{}`, agent `{}`)",
        masumi_sim::SIM_TOKEN,
        masumi_sim::SIM_AGENT_IDENTIFIER
    );
    println!("  test controls: http://{addr}/_sim/payments, POST /_sim/buyers, POST /_sim/faults");
    masumi_sim::serve(listener, masumi_sim_config(args), shutdown)
        .await
        .context("Masumi simulator failed")
}

async fn run_kodosumi_sim(
    args: &KodosumiSimArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("Kodosumi simulator on http://{addr} (login admin/admin)");
    println!(
        "  test controls: http://{addr}/_sim/launches, POST /_sim/faults, POST /_sim/expire_tokens"
    );
    kodosumi_sim::serve(listener, kodosumi_sim_config(args), shutdown)
        .await
        .context("Kodosumi simulator failed")
}

/// Everything in one process: simulators (unless real services are configured), server, workers.
async fn run_dev(
    db: DbArgs,
    server: ServerArgs,
    worker: WorkerArgs,
    mut services: ServiceArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut parts: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let mut sims = Vec::new();
    if services.masumi_url.is_none() && services.kodosumi_url.is_none() {
        let masumi_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let kodosumi_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let masumi_addr = masumi_listener.local_addr()?;
        let kodosumi_addr = kodosumi_listener.local_addr()?;
        let masumi_config = MasumiSimConfig {
            default_buyer: BuyerBehavior::Pay { after_ms: 2_000 },
            fast_clock: true,
            seller_window_ms: 10_000,
            ..MasumiSimConfig::default()
        };
        let token = shutdown.clone();
        parts.spawn(async move {
            masumi_sim::serve(masumi_listener, masumi_config, token)
                .await
                .context("Masumi simulator")
        });
        let token = shutdown.clone();
        parts.spawn(async move {
            kodosumi_sim::serve(kodosumi_listener, KodosumiSimConfig::default(), token)
                .await
                .context("Kodosumi simulator")
        });
        services.masumi_url = Some(format!("http://{masumi_addr}/api/v1"));
        services.masumi_token = Some(masumi_sim::SIM_TOKEN.to_owned());
        services.kodosumi_url = Some(format!("http://{kodosumi_addr}"));
        services.kodosumi_password = Some("admin".to_owned());
        services
            .agent_identifier
            .get_or_insert_with(|| masumi_sim::SIM_AGENT_IDENTIFIER.to_owned());
        sims.push(format!("Masumi simulator:   http://{masumi_addr}/api/v1   (payments: http://{masumi_addr}/_sim/payments)"));
        sims.push(format!("Kodosumi simulator: http://{kodosumi_addr}   (runs: http://{kodosumi_addr}/_sim/launches)"));
    }
    let access = server.access().map_err(anyhow::Error::msg)?;
    // Before the workers start, so their first attempts are counted too.
    api::metrics::Metrics::install();
    let store = prepare(&db).await?;
    bootstrap_token(store.as_ref(), &server).await?;
    // Without a bootstrap token, a fresh `dev` token (replacing the previous one) to log in with.
    let dev_token = match &server.bootstrap_token {
        Some(_) => None,
        None => {
            let token = api::access::generate_token()?;
            api::access::ensure_token(store.as_ref(), "dev", &token)
                .await
                .context("storing the dev token")?;
            Some(token)
        }
    };
    let paid = PaidJobs::from_args(&services)?.map(Arc::new);
    let listener = bind(&server).await?;
    let addr = listener.local_addr()?;
    // One process: jobs started over HTTP go straight to this worker while it has a free slot.
    let config = worker.config().map_err(anyhow::Error::msg)?;
    let local_worker = Worker::new(store.clone(), registry(paid.as_ref()), config);
    {
        let (store, paid, token) = (store.clone(), paid.clone(), shutdown.clone());
        let local = Some(local_worker.clone());
        parts.spawn(async move { run_server(store, listener, paid, access, local, token).await });
    }
    {
        let token = shutdown.clone();
        parts.spawn(async move { local_worker.run(token).await.context("worker failed") });
    }

    // Wait for the first flow sync so the printed curl line works.
    let mut flow_line = None;
    if let Some(paid) = &paid {
        for _ in 0..100 {
            if let Some(flow) = paid
                .catalog
                .list()
                .into_iter()
                .find(|f| f.unavailable_reason().is_none())
            {
                flow_line = Some(flow);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!();
    println!("kodomasu dev is running");
    println!("  journal:            {}", redact(&db.url()));
    println!(
        "  API:                http://{addr}   (admin: http://{addr}/api/v1/workflows, health: http://{addr}/health, metrics: http://{addr}/metrics)"
    );
    println!("  dashboard:          http://{addr}/dashboard");
    match &dev_token {
        Some(token) => {
            println!("  admin token:        {token}");
            println!(
                "                      (paste it on the dashboard's login page, or: curl -H 'authorization: Bearer {token}' http://{addr}/api/v1/workflows)"
            );
        }
        None => println!(
            "  admin token:        the value of --bootstrap-token / KODOMASU_BOOTSTRAP_TOKEN"
        ),
    }
    for line in &sims {
        println!("  {line}");
    }
    if let Some(flow) = flow_line {
        let purchaser = format!("{:016x}", fastrand_u64());
        println!();
        println!("Start a paid job on flow \"{}\":", flow.summary);
        println!(
            "  curl -s -X POST http://{addr}/{uid}/start_job -H 'content-type: application/json' \\\n    -d '{{\"identifier_from_purchaser\":\"{purchaser}\",\"input_data\":{{\"name\":\"Alice\"}}}}'",
            uid = flow.uid
        );
        println!("Then follow it:");
        println!(
            "  curl -s 'http://{addr}/{}/status?job_id=<id from the answer>'",
            flow.uid
        );
    }
    println!();

    let mut result = Ok(());
    while let Some(joined) = parts.join_next().await {
        // One part failing stops the others.
        if let Ok(Err(e)) = joined {
            shutdown.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

/// A random purchaser id for the printed example.
fn fastrand_u64() -> u64 {
    let id = uuid::Uuid::new_v4();
    let bytes = id.as_bytes();
    u64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ])
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
