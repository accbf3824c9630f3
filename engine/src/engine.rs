//! The engine's client side: start, signal and query workflows. Any process with the registry
//! and a store can do this; no worker is involved.

use crate::driver::Draft;
use crate::journal::FeedEvent;
use crate::journal::{
    ActivityAttempt, Cause, Event, EventKind, Pending, Status, WaitingOn, WorkerRecord,
    WorkflowRecord,
};
use crate::registry::Registry;
use crate::signal::SignalName;
use crate::store::{FeedQuery, ListFilter, NewWorkflow, Search, Store, StoreError};
use crate::worker::{LocalDispatch, Reservation};
use crate::workflow::{WorkflowError, signal_value};
use crate::{EngineError, Result, Worker, WorkflowId};
use serde::Serialize;
use std::sync::Arc;

/// Longest accepted [`crate::Workflow::tag`], in bytes.
pub const MAX_TAG_LEN: usize = 256;

fn filter(query: ListQuery) -> ListFilter {
    ListFilter {
        status: query.status,
        workflow_type: query.workflow_type,
        tag: query.tag,
        created_after: query.created_after,
        created_before: query.created_before,
        search: query
            .search
            .filter(|s| !s.is_empty())
            .map(|s| Search::new(&s)),
        limit: query.limit.unwrap_or(50).clamp(1, 500),
        cursor: query.cursor,
    }
}

/// Starts, signals and queries workflows.
#[derive(Debug, Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    registry: Registry,
    /// Workers in this process that new workflows may be handed to directly.
    local: Arc<std::sync::RwLock<Vec<LocalDispatch>>>,
}

/// Result of [`Engine::start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Started {
    pub id: WorkflowId,
    /// False when a workflow with the same (type, key) already existed; `id` is that one's.
    pub created: bool,
}

/// Result of [`Engine::signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SignalAccepted {
    /// Position of the signal in the workflow's inbox.
    pub seq: i64,
}

/// A workflow's snapshot with what it waits on.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowDetail {
    #[serde(flatten)]
    pub record: WorkflowRecord,
    pub waiting_on: WaitingOn,
}

/// Filters of [`Engine::list`] and [`Engine::count`]; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub workflow_type: Option<String>,
    /// Exactly this [`crate::Workflow::tag`].
    pub tag: Option<String>,
    /// Created at or after this time.
    pub created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before this time.
    pub created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Key contains it (ASCII case-insensitive) or id starts with it; see [`Search`].
    pub search: Option<String>,
    /// Page size; clamped to 1..=500, default 50.
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub cursor: Option<WorkflowId>,
}

impl Engine {
    /// An engine over `store` knowing the types in `registry`.
    pub fn new(store: Arc<dyn Store>, registry: Registry) -> Self {
        Self {
            store,
            registry,
            local: Arc::default(),
        }
    }

    /// Lets [`Engine::start`] hand new workflows straight to `worker` (in this process) while it
    /// has a free slot: created leased to it, they skip the claim and the notification hop.
    pub fn dispatch_to(&self, worker: &Worker) {
        self.local
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(worker.local_dispatch());
    }

    fn reserve_local(&self, workflow_type: &str) -> Option<Reservation> {
        self.local
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find_map(|d| d.reserve(workflow_type))
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Starts a workflow, idempotently by (type, key): a second start with the same key returns
    /// the first workflow's id with `created: false`. The input is validated and the first
    /// transition computed before anything is written.
    ///
    /// # Errors
    /// [`EngineError::UnknownWorkflowType`], [`EngineError::InvalidInput`], or a store error.
    pub async fn start(
        &self,
        workflow_type: &str,
        key: Option<String>,
        input: serde_json::Value,
    ) -> Result<Started> {
        let workflow = self
            .registry
            .get_workflow(workflow_type)
            .ok_or_else(|| EngineError::UnknownWorkflowType(workflow_type.to_owned()))?;
        let invalid = |message: String| EngineError::InvalidInput {
            workflow_type: workflow_type.to_owned(),
            message,
        };
        workflow.decode_input(&input).map_err(invalid)?;
        let tag = workflow.tag(&input);
        if tag
            .as_deref()
            .is_some_and(|t| t.len() > MAX_TAG_LEN || t.contains('\0'))
        {
            return Err(invalid(format!(
                "its tag must be at most {MAX_TAG_LEN} bytes without NUL characters"
            )));
        }
        let transition = workflow.start(input.clone()).map_err(invalid)?;

        let id = WorkflowId::new();
        let now = chrono::Utc::now();
        let mut draft = Draft::new(id);
        draft.events.push(EventKind::Started {
            workflow_type: workflow_type.to_owned(),
            key: key.clone(),
            input: input.clone(),
        });
        draft.apply(
            &self.registry,
            Cause::Start,
            Ok::<_, WorkflowError>(transition),
            now,
        );
        let run_at = match &draft.pending {
            Pending::Activity(_) => Some(now),
            Pending::Timer { due_at } => Some(*due_at),
            Pending::Signal | Pending::Nothing => None,
        };
        let tally = crate::metrics::EventTally::of(&draft.events);
        let new = NewWorkflow {
            id,
            workflow_type: workflow_type.to_owned(),
            key,
            tag,
            input,
            status: draft.status,
            state: draft.state,
            pending: draft.pending,
            output: draft.output,
            error: draft.error,
            next_call_seq: draft.next_call_seq,
            run_at,
            events: draft.events,
        };
        // Due now: a local worker with a free slot takes it in the same write.
        let local = matches!(new.pending, Pending::Activity(_))
            .then(|| self.reserve_local(workflow_type))
            .flatten();
        let created = match local {
            None => self.store.create_workflow(new).await?,
            Some(reservation) => {
                reservation
                    .create_and_drive(self.store.clone(), new)
                    .await?
            }
        };
        if created.created {
            crate::metrics::started(workflow_type, &tally);
        }
        Ok(Started {
            id: created.id,
            created: created.created,
        })
    }

    /// Sends a signal: `pause`, `resume`, `cancel`, or one of the workflow's custom signals.
    /// Accepted signals are durable and applied in order at the next transition boundary.
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::Finished`], [`EngineError::InvalidSignal`].
    pub async fn signal(
        &self,
        id: WorkflowId,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<SignalAccepted> {
        if name.is_empty() || name.len() > 128 {
            return Err(EngineError::InvalidSignal(
                "signal name must be 1 to 128 characters".into(),
            ));
        }
        let record = self.get(id).await?;
        if record.status.is_terminal() {
            return Err(EngineError::Finished {
                id,
                status: record.status,
            });
        }
        if let SignalName::Custom(name) = SignalName::parse(name) {
            let workflow = self
                .registry
                .get_workflow(&record.workflow_type)
                .ok_or_else(|| EngineError::UnknownWorkflowType(record.workflow_type.clone()))?;
            workflow
                .check_signal(&signal_value(&name, &payload))
                .map_err(|e| {
                    EngineError::InvalidSignal(format!(
                        "`{name}` for `{}`: {e}",
                        record.workflow_type
                    ))
                })?;
        }
        match self.store.send_signal(id, name, &payload).await {
            Ok(seq) => Ok(SignalAccepted { seq }),
            Err(StoreError::NotFound(id)) => Err(EngineError::NotFound(id)),
            Err(StoreError::Finished(id, status)) => Err(EngineError::Finished { id, status }),
            Err(e) => Err(e.into()),
        }
    }

    /// The snapshot of a workflow.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] or a store error.
    pub async fn get(&self, id: WorkflowId) -> Result<WorkflowRecord> {
        self.store
            .get_workflow(id)
            .await?
            .ok_or(EngineError::NotFound(id))
    }

    /// The snapshot with what the workflow waits on.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] or a store error.
    pub async fn detail(&self, id: WorkflowId) -> Result<WorkflowDetail> {
        let record = self.get(id).await?;
        let waiting_on = record.waiting_on();
        Ok(WorkflowDetail { record, waiting_on })
    }

    /// Workflows, newest first.
    ///
    /// # Errors
    /// A store error.
    pub async fn list(&self, query: ListQuery) -> Result<Vec<WorkflowRecord>> {
        Ok(self.store.list_workflows(&filter(query)).await?)
    }

    /// How many workflows match `query` per status (its `status`, `limit` and `cursor` are
    /// ignored); every status is listed, with 0 when none has it.
    ///
    /// # Errors
    /// A store error.
    pub async fn count(&self, query: ListQuery) -> Result<Vec<(Status, i64)>> {
        let counts = self.store.count_workflows(&filter(query)).await?;
        Ok(Status::ALL
            .into_iter()
            .map(|s| {
                let n = counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
                (s, n)
            })
            .collect())
    }

    /// Events of the global feed with `after < gid <= upto`, of one workflow or all, oldest
    /// first, at most `limit` (clamped to 1..=1000). Complete only up to a position an
    /// [`crate::EventFeed`] reported as settled.
    ///
    /// # Errors
    /// A store error.
    pub async fn feed_events(
        &self,
        after: i64,
        upto: i64,
        workflow: Option<WorkflowId>,
        limit: i64,
    ) -> Result<Vec<FeedEvent>> {
        let read = self
            .store
            .read_feed(&FeedQuery {
                after,
                upto: Some(upto),
                workflow,
                limit: limit.clamp(1, 1000),
            })
            .await?;
        Ok(read.events)
    }

    /// The journal of a workflow after `after_seq`, oldest first.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] or a store error.
    pub async fn history(&self, id: WorkflowId, after_seq: i64, limit: i64) -> Result<Vec<Event>> {
        let events = self
            .store
            .history(id, after_seq, limit.clamp(1, 10_000))
            .await?;
        if events.is_empty() && self.store.get_workflow(id).await?.is_none() {
            return Err(EngineError::NotFound(id));
        }
        Ok(events)
    }

    /// Every activity attempt of a workflow.
    ///
    /// # Errors
    /// A store error.
    pub async fn attempts(&self, id: WorkflowId) -> Result<Vec<ActivityAttempt>> {
        Ok(self.store.attempts(id).await?)
    }

    /// The worker registry.
    ///
    /// # Errors
    /// A store error.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        Ok(self.store.workers().await?)
    }
}
