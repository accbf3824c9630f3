//! Bulk operations: pause, resume or cancel every workflow a filter matches, in the background,
//! with progress an operator can poll (`GET /api/v1/operations/{id}`).
//!
//! An operation walks the workflows that existed when it started (ids below a fresh UUIDv7,
//! newest first, in pages) and sends each one the signal when its status allows it: `pause` to
//! running workflows, `resume` to paused ones, `cancel` to both. Finished workflows, and those
//! the action does not apply to, are counted as skipped. Each signal is durable once sent, so a
//! server stopping mid-way leaves the signals already sent in effect; the rest are not sent
//! (`interrupted: true`).
//!
//! Operations live in the memory of the server that runs them: their ids are known to that
//! server only, and the last [`MAX_KEPT`] are kept.

use crate::ApiError;
use chrono::{DateTime, Utc};
use engine::{Engine, EngineError, ListQuery, Status, WorkflowId};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;
use uuid::Uuid;

/// Operations kept for polling; older finished ones are forgotten.
pub const MAX_KEPT: usize = 1000;
/// Workflows read per page.
const PAGE: i64 = 200;

/// What a bulk operation does to each workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

impl Action {
    /// The signal it sends.
    pub fn signal(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
        }
    }

    /// Whether a workflow in `status` gets the signal.
    fn applies_to(self, status: Status, cancel_requested: bool) -> bool {
        if cancel_requested {
            return false;
        }
        match self {
            Self::Pause => status == Status::Running,
            Self::Resume => status == Status::Paused,
            Self::Cancel => matches!(status, Status::Running | Status::Paused),
        }
    }
}

/// Progress of one operation.
#[derive(Debug)]
struct Operation {
    id: Uuid,
    action: Action,
    started_at: DateTime<Utc>,
    matched: AtomicU64,
    applied: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    done: AtomicBool,
    interrupted: AtomicBool,
    finished_at: Mutex<Option<DateTime<Utc>>>,
}

/// An operation as `GET /api/v1/operations/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OperationView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub action: Action,
    /// `running` or `done`.
    #[schema(example = "done")]
    pub state: &'static str,
    /// Workflows the filter matched so far (finished ones included).
    pub matched: u64,
    /// Workflows that were sent the signal.
    pub applied: u64,
    /// Matched workflows the action does not apply to (finished, or not in a status it acts on).
    pub skipped: u64,
    /// Signals that could not be sent (database errors); see the server log.
    pub failed: u64,
    /// The server stopped before the operation went through every workflow.
    pub interrupted: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Operation {
    fn view(&self) -> OperationView {
        let done = self.done.load(Ordering::Acquire);
        OperationView {
            id: self.id,
            action: self.action,
            state: if done { "done" } else { "running" },
            matched: self.matched.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            interrupted: self.interrupted.load(Ordering::Relaxed),
            started_at: self.started_at,
            finished_at: *self.finished_at.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The operations of one server; clones share them.
#[derive(Debug, Clone)]
pub struct Operations {
    engine: Arc<Engine>,
    kept: Arc<Mutex<VecDeque<Arc<Operation>>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Operations {
    /// Operations whose tasks run on `tracker` and stop at `shutdown`.
    pub fn new(engine: Arc<Engine>, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            engine,
            kept: Arc::new(Mutex::new(VecDeque::new())),
            tracker,
            shutdown,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Operation>>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `action` on the workflows matching `query` (its page size and cursor are
    /// ignored); returns the operation's id at once.
    ///
    /// # Errors
    /// 503 when the server is shutting down.
    pub fn start(&self, action: Action, query: ListQuery) -> Result<Uuid, ApiError> {
        if self.shutdown.is_cancelled() || self.tracker.is_closed() {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ));
        }
        let op = Arc::new(Operation {
            id: Uuid::now_v7(),
            action,
            started_at: Utc::now(),
            matched: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            done: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            finished_at: Mutex::new(None),
        });
        {
            let mut kept = self.kept();
            while kept.len() >= MAX_KEPT {
                match kept.iter().position(|o| o.done.load(Ordering::Acquire)) {
                    Some(i) => {
                        kept.remove(i);
                    }
                    None => break,
                }
            }
            kept.push_back(op.clone());
        }
        let id = op.id;
        tracing::info!(operation.id = %id, action = action.signal(), "bulk operation started");
        self.tracker
            .spawn(run(self.engine.clone(), op, query, self.shutdown.clone()));
        Ok(id)
    }

    /// The progress of an operation of this server.
    pub fn get(&self, id: Uuid) -> Option<OperationView> {
        self.kept().iter().find(|o| o.id == id).map(|o| o.view())
    }
}

async fn run(
    engine: Arc<Engine>,
    op: Arc<Operation>,
    mut query: ListQuery,
    stop: CancellationToken,
) {
    // Only workflows that existed at the start: ids (UUIDv7) below one made now.
    let mut cursor = Some(WorkflowId::new());
    query.limit = Some(PAGE);
    let signal = op.action.signal();
    'pages: loop {
        query.cursor = cursor;
        let page = tokio::select! {
            page = engine.list(query.clone()) => page,
            () = stop.cancelled() => break 'pages,
        };
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(operation.id = %op.id, error.message = %e, "bulk operation: listing failed");
                Operation::count(&op.failed);
                break 'pages;
            }
        };
        for record in &page {
            if stop.is_cancelled() {
                break 'pages;
            }
            Operation::count(&op.matched);
            if !op.action.applies_to(record.status, record.cancel_requested) {
                Operation::count(&op.skipped);
                continue;
            }
            match engine
                .signal(record.id, signal, serde_json::Value::Null)
                .await
            {
                Ok(_) => Operation::count(&op.applied),
                // Finished (or gone) since it was listed.
                Err(EngineError::Finished { .. } | EngineError::NotFound(_)) => {
                    Operation::count(&op.skipped);
                }
                Err(e) => {
                    tracing::warn!(operation.id = %op.id, workflow.id = %record.id, error.message = %e, "bulk operation: signal failed");
                    Operation::count(&op.failed);
                }
            }
        }
        if (page.len() as i64) < PAGE {
            break;
        }
        cursor = page.last().map(|r| r.id);
    }
    if stop.is_cancelled() {
        op.interrupted.store(true, Ordering::Relaxed);
    }
    *op.finished_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Utc::now());
    op.done.store(true, Ordering::Release);
    let view = op.view();
    tracing::info!(
        operation.id = %op.id,
        matched = view.matched,
        applied = view.applied,
        skipped = view.skipped,
        failed = view.failed,
        interrupted = view.interrupted,
        "bulk operation done"
    );
}
