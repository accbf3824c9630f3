//! The durable runtime of kodomasu: typed state machines journaled to a database and run by a
//! fenced worker pool.
//!
//! A [`Workflow`] is pure transition code over a typed state enum; an [`Activity`] is a named,
//! typed unit of I/O with a retry policy and timeouts. The [`Engine`] starts, signals and queries
//! workflows; a [`Worker`] claims due workflows, runs their activities and journals every
//! transition in one fenced transaction through a [`Store`].
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn engine::Store>) -> Result<(), engine::EngineError> {
//! use engine::{Engine, Registry};
//! let registry = Registry::new(); // .workflow(MyWorkflow).activity(MyActivity)
//! let engine = Engine::new(store, registry);
//! let started = engine.start("my.workflow", Some("order-42".into()), serde_json::json!({})).await?;
//! println!("{}", started.id);
//! # Ok(()) }
//! ```

mod activity;
mod clock;
mod driver;
mod engine;
mod error;
mod feed;
mod ids;
mod journal;
pub mod metrics;
mod registry;
mod retry;
mod signal;
pub mod store;
mod worker;
mod workflow;

pub use activity::{Activity, ActivityContext, ActivityError, ActivityOptions, RetryPolicy};
pub use engine::{Engine, ListQuery, MAX_TAG_LEN, SignalAccepted, Started, WorkflowDetail};
pub use error::{EngineError, Result};
pub use feed::{EventFeed, MAX_GAP_WAIT};
pub use ids::{WorkerId, WorkflowId};
pub use journal::{
    ActivityAttempt, AttemptOutcome, Cause, Event, EventKind, FeedEvent, Pending, PendingActivity,
    Status, WaitingOn, WorkerRecord, WorkflowRecord,
};
pub use registry::Registry;
pub use retry::backoff_delay;
pub use signal::{BuiltinSignal, SignalName};
pub use store::{AccessToken, GroupCommit, PgStore, SqliteStore, Store, StoreError, StoreGauges};
pub use worker::{LocalDispatch, Worker, WorkerConfig, WorkerHandle};
pub use workflow::{
    ActivityCall, ActivityOutcome, Next, NoSignal, Transition, Workflow, WorkflowError,
};
