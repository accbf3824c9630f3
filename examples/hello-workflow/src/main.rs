//! How to write your own workflow and activity on the kodomasu engine.
//!
//! Run it against a PostgreSQL (the journal's tables are created in schema `kodomasu`):
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p example-hello-workflow
//! ```
//!
//! `Hello` greets a name through the `hello.greet` activity, then waits up to 2 s for an
//! `encore` signal (a typed custom signal) to greet once more, and completes with the greetings.

use engine::{
    Activity, ActivityCall, ActivityContext, ActivityError, ActivityOptions, ActivityOutcome,
    Engine, Next, PgStore, Registry, RetryPolicy, Status, Transition, Worker, WorkerConfig,
    Workflow, WorkflowError,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// An activity: a named, typed unit of I/O with a retry policy and timeouts.
struct Greet;

impl Activity for Greet {
    const NAME: &'static str = "hello.greet";
    type Input = String;
    type Output = String;

    fn options(&self) -> ActivityOptions {
        ActivityOptions {
            retry: RetryPolicy {
                maximum_attempts: 3,
                initial_interval: Duration::from_millis(200),
                ..RetryPolicy::default()
            },
            start_to_close_timeout: Duration::from_secs(5),
            ..ActivityOptions::default()
        }
    }

    async fn run(&self, ctx: ActivityContext, name: String) -> Result<String, ActivityError> {
        // Real activities call external services here, passing `ctx.idempotency_key()` along.
        Ok(format!("Hello, {name}! (attempt {})", ctx.attempt()))
    }
}

/// The workflow's states; each variant carries only what is valid in it.
#[derive(Debug, Serialize, Deserialize)]
enum HelloState {
    /// The greeting activity runs.
    Greeting {
        name: String,
        greetings: Vec<String>,
    },
    /// Waiting up to 2 s for an `encore`.
    Listening {
        name: String,
        greetings: Vec<String>,
    },
    Done {
        greetings: Vec<String>,
    },
}

/// Custom signals: the variant name is the signal name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HelloSignal {
    Encore,
}

struct Hello;

impl Workflow for Hello {
    const NAME: &'static str = "hello";
    type Input = String;
    type State = HelloState;
    type Output = Vec<String>;
    type Signal = HelloSignal;

    fn start(&self, name: String) -> Transition<HelloState, Vec<String>> {
        let call = ActivityCall::new::<Greet>(&name);
        Transition::run(
            HelloState::Greeting {
                name,
                greetings: vec![],
            },
            call,
        )
    }

    fn on_activity(
        &self,
        state: HelloState,
        outcome: ActivityOutcome,
    ) -> Transition<HelloState, Vec<String>> {
        match (state, outcome.decode::<Greet>()) {
            (
                HelloState::Greeting {
                    name,
                    mut greetings,
                },
                Ok(greeting),
            ) => {
                greetings.push(greeting);
                Transition::new(
                    HelloState::Listening { name, greetings },
                    Next::Timer(Duration::from_secs(2)),
                )
            }
            (state, Err(e)) => Transition::fail(state, e.into()),
            (state, Ok(_)) => Transition::fail(
                state,
                WorkflowError::new("hello.unexpected", "no greeting running"),
            ),
        }
    }

    fn on_timer(&self, state: HelloState) -> Transition<HelloState, Vec<String>> {
        match state {
            HelloState::Listening { greetings, .. } => Transition::complete(
                HelloState::Done {
                    greetings: greetings.clone(),
                },
                greetings,
            ),
            other => Transition::new(other, Next::Unchanged),
        }
    }

    fn on_signal(
        &self,
        state: HelloState,
        signal: HelloSignal,
    ) -> Transition<HelloState, Vec<String>> {
        match (state, signal) {
            (HelloState::Listening { name, greetings }, HelloSignal::Encore) => {
                let call = ActivityCall::new::<Greet>(&name);
                Transition::run(HelloState::Greeting { name, greetings }, call)
            }
            (other, _) => Transition::new(other, Next::Unchanged),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    let store: Arc<dyn engine::Store> = Arc::new(PgStore::new(pool));
    store.migrate().await?;

    let registry = Registry::new().workflow(Hello).activity(Greet);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(
        store,
        registry,
        WorkerConfig {
            poll_interval: Duration::from_millis(200),
            ..WorkerConfig::default()
        },
    )
    .spawn();

    let started = engine
        .start(Hello::NAME, None, serde_json::json!("world"))
        .await?;
    println!("started workflow {}", started.id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    engine
        .signal(started.id, "encore", serde_json::Value::Null)
        .await?;

    let record = loop {
        let record = engine.get(started.id).await?;
        if record.status.is_terminal() {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "status: {}  output: {}",
        record.status,
        record.output.unwrap_or_default()
    );
    for event in engine.history(started.id, 0, 100).await? {
        println!("  #{:<2} {}", event.seq, event.kind.name());
    }
    worker.shutdown().await?;
    anyhow::ensure!(
        record.status == Status::Completed,
        "workflow did not complete"
    );
    Ok(())
}
