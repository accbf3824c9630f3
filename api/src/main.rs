//! The `kodomasu` binary: the composition root of engine, workflows and HTTP server.

use anyhow::Context;
use api::AppState;
use api::settings::{Cli, Command, DbArgs, LogFormat, ServerArgs, WorkerArgs};
use clap::Parser;
use engine::{Engine, PgStore, Store, Worker};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log.log_format);
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("shutdown requested");
        signals.cancel();
        anyhow::Ok(())
    });

    match cli.command {
        Command::Migrate(db) => {
            let store = connect(&db).await?;
            store.migrate().await.context("applying migrations")?;
            println!("migrations applied");
        }
        Command::Worker { db, worker } => {
            let store = prepare(&db).await?;
            run_worker(store, &worker, shutdown.clone()).await?;
        }
        Command::Server { db, server } => {
            let store = prepare(&db).await?;
            run_server(store, &server, shutdown.clone()).await?;
        }
        Command::Dev { db, server, worker } => {
            let store = prepare(&db).await?;
            let mut parts = JoinSet::new();
            parts.spawn({
                let (store, worker, token) = (store.clone(), worker.clone(), shutdown.clone());
                async move { run_worker(store, &worker, token).await }
            });
            parts.spawn({
                let (store, server, token) = (store.clone(), server.clone(), shutdown.clone());
                async move { run_server(store, &server, token).await }
            });
            while let Some(res) = parts.join_next().await {
                // One part failing stops the other.
                if let Ok(Err(e)) = res {
                    shutdown.cancel();
                    return Err(e);
                }
            }
        }
    }
    tasks.abort_all();
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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

async fn connect(db: &DbArgs) -> anyhow::Result<Arc<dyn Store>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(db.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&db.database_url)
        .await
        .with_context(|| format!("connecting to the database at {}", redact(&db.database_url)))?;
    Ok(Arc::new(PgStore::new(pool)))
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

async fn run_worker(
    store: Arc<dyn Store>,
    args: &WorkerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = args.config().map_err(anyhow::Error::msg)?;
    let worker = Worker::new(store, workflows::registry(), config);
    worker.run(shutdown).await.context("worker failed")
}

async fn run_server(
    store: Arc<dyn Store>,
    args: &ServerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let engine = Arc::new(Engine::new(store, workflows::registry()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTP server listening");
    println!("kodomasu server listening on http://{addr}");
    api::serve(listener, AppState { engine }, shutdown)
        .await
        .context("HTTP server failed")
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
