//! The worker pool: claims due workflows in batches, drives each through consecutive steps
//! without re-claiming it, renews its leases, and drains on shutdown.
//!
//! Wake-ups come from the store's hints (LISTEN/NOTIFY on PostgreSQL; an in-process broadcast
//! plus a short poll on SQLite), from this worker's own timers (retry and timer due
//! times it just released) and from a slow polling fallback, so an idle worker costs the
//! database one claim query per poll interval plus one heartbeat per heartbeat interval.

use crate::activity::HeartbeatCell;
use crate::clock::DbClock;
use crate::driver::{self, AttemptEnd, AttemptSpec, Draft};
use crate::journal::{Cause, Pending, Status};
use crate::registry::Registry;
use crate::store::{
    Claimed, Created, LeaseAfter, LeaseRenewal, NewAttempt, NewWorkflow, Presence, Store,
    StoreError, Wake, WorkerInfo,
};
use crate::{AttemptOutcome, EngineError, WorkerId, WorkflowError, WorkflowId};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// Settings of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Workflows driven at once.
    pub slots: usize,
    /// How long a claim stays valid without renewal. A worker that stops renewing (crash,
    /// freeze, partition) loses its workflows to other workers after this time.
    pub lease_ttl: Duration,
    /// How often leases are renewed and the worker's heartbeat is written.
    pub heartbeat_interval: Duration,
    /// Fallback poll for due work when no notification arrives.
    pub poll_interval: Duration,
    /// Maximum workflows claimed by one query.
    pub claim_batch: usize,
    /// How long shutdown waits for running steps before handing their leases back.
    pub drain_timeout: Duration,
    /// Shown in the worker registry.
    pub host: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            slots: 32,
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            poll_interval: Duration::from_secs(2),
            claim_batch: 16,
            drain_timeout: Duration::from_secs(30),
            host: std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned()),
        }
    }
}

/// Tokens of one held workflow.
#[derive(Debug, Default)]
pub(crate) struct HeldTokens {
    /// Fires when a `cancel` signal arrives for the workflow.
    pub(crate) cancel: CancellationToken,
    /// Fires when a renewal finds the lease taken over.
    pub(crate) lease_lost: CancellationToken,
    /// Fires when the drain deadline passes.
    pub(crate) abandon: CancellationToken,
    /// The workflow is already on its cancel path: further cancels do not interrupt it.
    pub(crate) cancel_requested: std::sync::atomic::AtomicBool,
    /// Fires when a `pause` signal arrives; re-armed once the inbox was applied.
    pause: Mutex<CancellationToken>,
}

impl HeldTokens {
    /// A fresh token for one attempt's body.
    pub(crate) fn attempt_token(&self) -> CancellationToken {
        CancellationToken::new()
    }

    /// The current pause token.
    pub(crate) fn pause_token(&self) -> CancellationToken {
        lock(&self.pause).clone()
    }

    fn fire_pause(&self) {
        lock(&self.pause).cancel();
    }

    /// After the inbox was applied, later pauses need a fresh token.
    fn rearm_pause(&self) {
        let mut pause = lock(&self.pause);
        if pause.is_cancelled() {
            *pause = CancellationToken::new();
        }
    }
}

#[derive(Debug)]
struct Held {
    epoch: i64,
    workflow_type: String,
    tokens: Arc<HeldTokens>,
    /// The running attempt's heartbeat and the call it belongs to.
    heartbeat: Mutex<Option<(i64, Arc<HeartbeatCell>)>>,
}

#[derive(Debug)]
struct Shared {
    id: WorkerId,
    store: Arc<dyn Store>,
    registry: Registry,
    /// The workflow types this worker claims: those in its registry.
    workflow_types: Vec<String>,
    config: WorkerConfig,
    clock: DbClock,
    held: Mutex<HashMap<WorkflowId, Arc<Held>>>,
    /// Wakes the claim loop.
    wake: Notify,
    /// Due times of work this worker released, to wake for without polling.
    local_wakes: Mutex<BTreeSet<Instant>>,
    /// Fires when shutdown starts: no new claims, no new activities.
    stopping: CancellationToken,
    /// Fires at the drain deadline: in-flight attempts are dropped and leases handed back.
    abandon: CancellationToken,
    /// Fires when [`Worker::run`] is dropped before it finished (a crash): in-flight drives
    /// are dropped with it, writing and releasing nothing, as if the process died.
    crashed: CancellationToken,
    /// Free slots, shared by the claim loop and [`LocalDispatch`].
    slots: Arc<Semaphore>,
    /// Every drive task of [`Worker::run`].
    drives: TaskTracker,
    /// Registered and not stopping: [`LocalDispatch`] may hand workflows over.
    accepting: std::sync::atomic::AtomicBool,
}

/// Hands workflows started in this process straight to a local worker with a free slot:
/// [`crate::Engine::start`] creates them already leased to it (one write, no claim, no
/// notification hop), and the worker drives them at once. Attach with
/// [`crate::Engine::dispatch_to`]. Without a free slot, a workflow is created unleased as usual.
#[derive(Debug, Clone)]
pub struct LocalDispatch {
    worker: Worker,
}

/// A reserved slot of a local worker, for one workflow about to be created.
#[derive(Debug)]
pub(crate) struct Reservation {
    worker: Worker,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl LocalDispatch {
    /// A free slot for a workflow of `workflow_type`, if the worker runs that type and is up.
    pub(crate) fn reserve(&self, workflow_type: &str) -> Option<Reservation> {
        let s = &self.worker.shared;
        if !s.accepting.load(Ordering::Acquire)
            || s.stopping.is_cancelled()
            || s.crashed.is_cancelled()
            || !s.workflow_types.iter().any(|t| t == workflow_type)
        {
            return None;
        }
        let permit = s.slots.clone().try_acquire_owned().ok()?;
        Some(Reservation {
            worker: self.worker.clone(),
            permit,
        })
    }
}

impl Reservation {
    fn worker_id(&self) -> WorkerId {
        self.worker.shared.id
    }

    fn lease_ttl(&self) -> Duration {
        self.worker.shared.config.lease_ttl
    }

    /// Creates `new` leased to this worker and drives it. The insert and the hand-over run in
    /// the worker's own task set, so a caller that goes away mid-way (an HTTP client that
    /// disconnects drops the request's future) cannot leave a committed, leased row that
    /// nobody drives until its lease runs out.
    pub(crate) async fn create_and_drive(
        self,
        store: Arc<dyn Store>,
        new: NewWorkflow,
    ) -> Result<Created, StoreError> {
        let (answer, created) = tokio::sync::oneshot::channel();
        let tracker = self.worker.shared.drives.clone();
        tracker.spawn(async move {
            let (id, worker) = (new.id, self.worker_id());
            let result = store
                .create_workflow_leased(new, worker, self.lease_ttl())
                .await;
            let result = match result {
                Ok((created, claimed)) => {
                    if let Some(claimed) = claimed {
                        self.hand_over(claimed);
                    }
                    Ok(created)
                }
                Err(e) => {
                    // The insert may have committed with its answer lost: hand the lease back
                    // (a no-op when the row does not exist) so it does not wait out its TTL.
                    if let Err(release) = store.release_leases(worker, &[(id, 1)]).await {
                        warn!(workflow.id = %id, error.message = %release, "could not release a possibly created lease");
                    }
                    Err(e)
                }
            };
            let _ = answer.send(result);
        });
        created.await.unwrap_or_else(|_| {
            Err(StoreError::Corrupt(
                "the start task ended without an answer".into(),
            ))
        })
    }

    /// Drives the workflow created leased to this worker, in the worker's own task set.
    fn hand_over(self, claimed: Claimed) {
        let Self { worker, permit } = self;
        let s = &worker.shared;
        s.clock.observe(claimed.db_now);
        let held = worker.hold(&claimed);
        let driver = worker.clone();
        s.drives.spawn(async move {
            tokio::select! {
                () = driver.drive(claimed, held) => {}
                () = driver.shared.crashed.cancelled() => {}
            }
            drop(permit);
        });
    }
}

/// A pool of workflow slots in this process.
#[derive(Debug, Clone)]
pub struct Worker {
    shared: Arc<Shared>,
}

/// A running worker started with [`Worker::spawn`].
#[derive(Debug)]
pub struct WorkerHandle {
    id: WorkerId,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), EngineError>>,
}

impl WorkerHandle {
    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Graceful shutdown: stop claiming, drain, deregister.
    ///
    /// # Errors
    /// When the worker failed.
    pub async fn shutdown(self) -> Result<(), EngineError> {
        self.shutdown.cancel();
        self.task.await.unwrap_or(Ok(()))
    }

    /// Stops the worker the way a crash does: nothing is released or written; its leases expire.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

type StepResult<T> = Result<T, StepStop>;

/// Why a drive stopped early.
#[derive(Debug)]
enum StepStop {
    /// The lease was taken over: write nothing more.
    Fenced,
    /// Hand the lease back untouched (drain deadline, store failure).
    Release,
}

impl Worker {
    /// A worker over `store` running the types in `registry`.
    pub fn new(store: Arc<dyn Store>, registry: Registry, config: WorkerConfig) -> Self {
        let config_slots = config.slots.max(1);
        Self {
            shared: Arc::new(Shared {
                id: WorkerId::new(),
                workflow_types: registry.workflow_types().map(str::to_owned).collect(),
                store,
                registry,
                config,
                clock: DbClock::default(),
                held: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                local_wakes: Mutex::new(BTreeSet::new()),
                stopping: CancellationToken::new(),
                abandon: CancellationToken::new(),
                crashed: CancellationToken::new(),
                slots: Arc::new(Semaphore::new(config_slots)),
                drives: TaskTracker::new(),
                accepting: false.into(),
            }),
        }
    }

    /// This worker's id, as shown in the registry and in lease owners.
    pub fn id(&self) -> WorkerId {
        self.shared.id
    }

    /// Runs the worker in a background task until [`WorkerHandle::shutdown`].
    pub fn spawn(self) -> WorkerHandle {
        let shutdown = CancellationToken::new();
        let id = self.id();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { self.run(token).await });
        WorkerHandle { id, shutdown, task }
    }

    /// Registers the worker and runs its loops until `shutdown` fires, then drains: running
    /// steps get `drain_timeout` to finish; what misses it is handed back to other workers.
    ///
    /// # Errors
    /// When the worker cannot register with the store.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        let s = &self.shared;
        // Presence first: no registry row may exist without its lock (see `Store::presence`).
        let presence = s.store.presence(s.id).await?;
        // Accepting local hand-overs from the moment the registry shows this worker.
        s.accepting.store(true, Ordering::Release);
        if let Err(e) = s
            .store
            .register_worker(&self.info(presence.as_deref()))
            .await
        {
            s.accepting.store(false, Ordering::Release);
            return Err(e.into());
        }
        // Drives run in their own tasks; if this future is dropped mid-way, they must die too.
        let crash_guard = s.crashed.clone().drop_guard();
        info!(worker.id = %s.id, slots = s.config.slots, lease_ttl = ?s.config.lease_ttl, "worker started");

        let tracker = s.drives.clone();
        let mut loops = JoinSet::new();
        let renew_stop = CancellationToken::new();
        loops.spawn(self.clone().renew_loop(renew_stop.clone()));
        loops.spawn(self.clone().listen_loop(s.stopping.clone()));
        if let Some(presence) = presence {
            loops.spawn(self.clone().watch_loop(presence, renew_stop.clone()));
        }
        let claim = self.clone().claim_loop(tracker.clone());

        tokio::select! {
            _ = claim => {},
            _ = shutdown.cancelled() => {},
        }
        s.accepting.store(false, Ordering::Release);
        s.stopping.cancel();
        s.wake.notify_one();
        tracker.close();
        info!(worker.id = %s.id, running = tracker.len(), "draining");
        if tokio::time::timeout(s.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(worker.id = %s.id, "drain deadline passed; handing remaining workflows back");
            s.abandon.cancel();
            tracker.wait().await;
        }
        // Stopped in the registry before the presence goes, so the peer that sees the lock go
        // free finds a stopped worker, not a dead one.
        if let Err(e) = s.store.worker_stopped(s.id).await {
            warn!(error.message = %e, "could not mark worker stopped");
        }
        renew_stop.cancel();
        while loops.join_next().await.is_some() {}
        crash_guard.disarm();
        info!(worker.id = %s.id, "worker stopped");
        Ok(())
    }

    /// Claims and drives due workflows in this task until none is due. For tests and tools
    /// that step the engine deterministically; needs no background loops.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn run_until_idle(&self) -> Result<usize, EngineError> {
        let mut driven = 0;
        loop {
            let claimed = self
                .shared
                .store
                .claim(
                    self.shared.id,
                    &self.shared.workflow_types,
                    self.shared.config.claim_batch,
                    self.shared.config.lease_ttl,
                )
                .await?;
            if claimed.is_empty() {
                return Ok(driven);
            }
            for c in claimed {
                self.shared.clock.observe(c.db_now);
                let held = self.hold(&c);
                driven += 1;
                self.drive(c, held).await;
            }
        }
    }

    /// A handle with which an [`crate::Engine`] in this process hands new workflows straight
    /// to this worker.
    pub fn local_dispatch(&self) -> LocalDispatch {
        LocalDispatch {
            worker: self.clone(),
        }
    }

    fn info(&self, presence: Option<&dyn Presence>) -> WorkerInfo {
        let s = &self.shared;
        WorkerInfo {
            id: s.id,
            host: s.config.host.clone(),
            pid: std::process::id() as i32,
            slots: s.config.slots as i32,
            lease_ttl: s.config.lease_ttl,
            watch_pid: presence.and_then(Presence::watch_pid),
        }
    }

    /// Keeps this worker's presence and reaps the peers it sees die, so their workflows move
    /// within milliseconds of the death instead of after their lease TTL. When a presence
    /// session fails, takes a new one and re-registers (a peer may have reaped this worker
    /// meanwhile; its leases were then fenced, which is safe).
    async fn watch_loop(self, mut presence: Box<dyn Presence>, stop: CancellationToken) {
        let s = &self.shared;
        loop {
            let death =
                tokio::select! { d = presence.next_death() => d, _ = stop.cancelled() => return };
            match death {
                Ok(None) => {}
                Ok(Some((dead, freed))) => {
                    info!(worker.id = %s.id, dead_worker.id = %dead, workflows = freed, "worker died; its workflows move now")
                }
                Err(e) => {
                    warn!(error.message = %e, "presence session failed; taking it again");
                    drop(presence);
                    let acquire = || async {
                        let p = s.store.presence(s.id).await?.ok_or_else(|| {
                            StoreError::Corrupt("presence no longer supported".into())
                        })?;
                        s.store.register_worker(&self.info(Some(&*p))).await?;
                        Ok::<_, StoreError>(p)
                    };
                    let again = tokio::select! {
                        // Quickly at first: peers count this worker dead if its lock stays
                        // free for 250 ms (see `pg_presence`).
                        p = acquire.retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(50)).with_max_delay(Duration::from_secs(10)).without_max_times())
                            .notify(|e: &StoreError, d| warn!(error.message = %e, retry_in = ?d, "presence failed")) => p,
                        _ = stop.cancelled() => return,
                    };
                    match again {
                        Ok(p) => presence = p,
                        Err(_) => return,
                    }
                }
            }
        }
    }

    fn hold(&self, c: &Claimed) -> Arc<Held> {
        if c.recovered_from.is_some() {
            crate::metrics::lease_recovered(&c.record.workflow_type);
        }
        let held = Arc::new(Held {
            epoch: c.record.lease_epoch,
            workflow_type: c.record.workflow_type.clone(),
            tokens: Arc::new(HeldTokens {
                abandon: self.shared.abandon.child_token(),
                cancel_requested: c.record.cancel_requested.into(),
                ..HeldTokens::default()
            }),
            heartbeat: Mutex::new(None),
        });
        lock(&self.shared.held).insert(c.record.id, held.clone());
        held
    }

    async fn claim_loop(self, tracker: TaskTracker) {
        let s = &self.shared;
        let semaphore = s.slots.clone();
        let mut failures = 0u32;
        loop {
            let first = tokio::select! {
                p = semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = s.stopping.cancelled() => return,
            };
            let mut permits = vec![first];
            while permits.len() < s.config.claim_batch.max(1) {
                match semaphore.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let wanted = permits.len();
            let claimed = match s
                .store
                .claim(s.id, &s.workflow_types, wanted, s.config.lease_ttl)
                .await
            {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures += 1;
                    let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    warn!(error.message = %e, retry_in = ?pause, "claim failed");
                    drop(permits);
                    tokio::select! { _ = tokio::time::sleep(pause) => continue, _ = s.stopping.cancelled() => return }
                }
            };
            let got = claimed.len();
            if let Some(c) = claimed.first() {
                s.clock.observe(c.db_now);
            }
            for (c, permit) in claimed.into_iter().zip(permits.drain(..got)) {
                let held = self.hold(&c);
                let worker = self.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = worker.drive(c, held) => {}
                        () = worker.shared.crashed.cancelled() => {}
                    }
                    drop(permit);
                });
            }
            drop(permits);
            if got == wanted {
                continue;
            }
            let deadline = self.next_wake();
            tokio::select! {
                _ = s.wake.notified() => {},
                _ = tokio::time::sleep_until(deadline) => {},
                _ = s.stopping.cancelled() => return,
            }
        }
    }

    /// The earlier of the poll deadline and the next locally known due time.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let poll = now + self.shared.config.poll_interval;
        let mut wakes = lock(&self.shared.local_wakes);
        while wakes.first().is_some_and(|w| *w <= now) {
            wakes.pop_first();
        }
        wakes.first().copied().map_or(poll, |w| w.min(poll))
    }

    fn wake_at(&self, at: DateTime<Utc>) {
        let delta = (at - self.shared.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        lock(&self.shared.local_wakes).insert(Instant::now() + delta);
        self.shared.wake.notify_one();
    }

    async fn renew_loop(self, stop: CancellationToken) {
        let s = &self.shared;
        let mut tick = tokio::time::interval(s.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
            let held: Vec<(WorkflowId, Arc<Held>)> =
                lock(&s.held).iter().map(|(k, v)| (*k, v.clone())).collect();
            if let Err(e) = s.store.worker_heartbeat(s.id, held.len() as i32).await {
                warn!(error.message = %e, "worker heartbeat failed");
            }
            if held.is_empty() {
                continue;
            }
            let renewals: Vec<LeaseRenewal> = held
                .iter()
                .map(|(id, h)| LeaseRenewal {
                    id: *id,
                    epoch: h.epoch,
                    heartbeat: lock(&h.heartbeat)
                        .as_ref()
                        .and_then(|(seq, c)| c.take_unsaved().map(|d| (*seq, d))),
                })
                .collect();
            match s
                .store
                .renew_leases(s.id, s.config.lease_ttl, &renewals)
                .await
            {
                Ok(renewed) => {
                    let by_id: HashMap<WorkflowId, &crate::store::Renewed> =
                        renewed.iter().map(|r| (r.id, r)).collect();
                    for (id, h) in &held {
                        match by_id.get(id) {
                            None => {
                                // Gone from our leases: either finished meanwhile or taken over.
                                if lock(&s.held).get(id).is_some_and(|cur| Arc::ptr_eq(cur, h)) {
                                    warn!(workflow.id = %id, "lease lost");
                                    h.tokens.lease_lost.cancel();
                                }
                            }
                            Some(r) => {
                                if r.cancel_pending {
                                    h.tokens.cancel.cancel();
                                }
                                if r.pause_pending {
                                    h.tokens.fire_pause();
                                }
                            }
                        }
                    }
                }
                Err(e) => warn!(error.message = %e, "lease renewal failed"),
            }
        }
    }

    async fn listen_loop(self, stop: CancellationToken) {
        let s = &self.shared;
        let connect = || async { s.store.listen().await };
        loop {
            let listener = tokio::select! {
                l = connect.retry(ExponentialBuilder::default().with_max_delay(Duration::from_secs(10)).without_max_times())
                    .notify(|e: &StoreError, d| warn!(error.message = %e, retry_in = ?d, "listen failed")) => l,
                _ = stop.cancelled() => return,
            };
            let Ok(mut listener) = listener else { continue };
            s.wake.notify_one();
            loop {
                let hint =
                    tokio::select! { h = listener.recv() => h, _ = stop.cancelled() => return };
                match hint {
                    Ok(Wake::Signal { id, name }) => {
                        let held = lock(&s.held).get(&id).cloned();
                        match held {
                            Some(h)
                                if name == "cancel"
                                    && !h.tokens.cancel_requested.load(Ordering::Relaxed) =>
                            {
                                h.tokens.cancel.cancel()
                            }
                            Some(h) if name == "pause" => h.tokens.fire_pause(),
                            Some(_) => {}
                            None => s.wake.notify_one(),
                        }
                    }
                    Ok(Wake::Work | Wake::Reconnected) => s.wake.notify_one(),
                    Err(e) => {
                        warn!(error.message = %e, "listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }

    /// Drives one claimed workflow until it waits, finishes, or the lease is lost.
    async fn drive(&self, claimed: Claimed, held: Arc<Held>) {
        let id = claimed.record.id;
        let span = info_span!(
            "workflow",
            workflow.id = %id,
            workflow.type = %claimed.record.workflow_type,
            worker.id = %self.shared.id,
            lease.epoch = held.epoch,
        );
        let result = self.drive_steps(claimed, &held).instrument(span).await;
        // Only this drive's entry: after a reap this worker may have claimed the workflow again.
        {
            let mut held_map = lock(&self.shared.held);
            if held_map.get(&id).is_some_and(|cur| Arc::ptr_eq(cur, &held)) {
                held_map.remove(&id);
            }
        }
        match result {
            Ok(()) | Err(StepStop::Fenced) => {}
            Err(StepStop::Release) => {
                if let Err(e) = self
                    .shared
                    .store
                    .release_leases(self.shared.id, &[(id, held.epoch)])
                    .await
                {
                    warn!(workflow.id = %id, error.message = %e, "could not release lease; it will expire");
                }
            }
        }
    }

    async fn commit(&self, draft: &mut Draft, held: &Held, lease: LeaseAfter) -> StepResult<()> {
        let s = &self.shared;
        let commit = draft.take_commit(s.id, held.epoch, lease, s.config.lease_ttl);
        let store = s.store.clone();
        let attempt = || {
            let c = commit.clone();
            let store = store.clone();
            async move { store.commit(c).await }
        };
        // A transient database error is retried; if the first try did commit, the retry is
        // fenced by the version and the lease is given up (another claim resumes from the journal).
        let result = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_times(4),
            )
            .when(|e| matches!(e, StoreError::Database(_)))
            .await;
        match result {
            Ok(done) => {
                crate::metrics::journaled(&held.workflow_type, &commit.events, &commit.attempts);
                draft.version = done.version;
                draft.signal_seq = done.signal_seq;
                s.clock.observe(done.db_now);
                if let LeaseAfter::Release { run_at } = lease {
                    if done.signal_seq > draft.signal_seen {
                        s.wake.notify_one();
                    } else if let Some(at) = run_at {
                        self.wake_at(at);
                    }
                }
                Ok(())
            }
            Err(StoreError::Fenced) => {
                warn!("commit fenced: another worker holds this workflow now");
                Err(StepStop::Fenced)
            }
            Err(e) => {
                warn!(error.message = %e, "commit failed");
                Err(StepStop::Release)
            }
        }
    }

    async fn drive_steps(&self, claimed: Claimed, held: &Held) -> StepResult<()> {
        let s = &self.shared;
        let Some(workflow) = s
            .registry
            .get_workflow(&claimed.record.workflow_type)
            .cloned()
        else {
            warn!("workflow type not registered in this worker; handing it back");
            return Err(StepStop::Release);
        };
        let mut draft = Draft::from_claimed(&claimed);
        let mut last_heartbeat = claimed.record.heartbeat_details.clone();

        if let (Some(prev), Pending::Activity(a)) = (claimed.recovered_from, &draft.pending) {
            // The previous holder died or froze; its attempt may have run. Count it and retry now.
            info!(previous.worker = %prev, call_seq = a.call_seq, attempt = a.attempt, "recovering expired lease");
            let error = crate::ActivityError::retryable(
                "worker.lease_expired",
                format!("worker {prev} lost its lease"),
            );
            let row = NewAttempt {
                call_seq: a.call_seq,
                attempt: a.attempt,
                activity_name: a.name.clone(),
                worker_id: Some(prev),
                outcome: AttemptOutcome::Abandoned,
                error: None,
                started_at: None,
                duration_ms: None,
            };
            let options = s
                .registry
                .get_activity(&a.name)
                .map(|x| x.options())
                .unwrap_or_default();
            draft.attempt_abandoned(
                &s.registry,
                workflow.as_ref(),
                &options,
                row,
                error,
                s.clock.now(),
            );
        }

        loop {
            if draft.should_read_signals() {
                let signals = s.store.unconsumed_signals(draft.id).await.map_err(|e| {
                    warn!(error.message = %e, "reading signals failed");
                    StepStop::Release
                })?;
                draft.apply_signals(&s.registry, workflow.as_ref(), &signals, s.clock.now());
                held.tokens
                    .cancel_requested
                    .store(draft.cancel_requested, Ordering::Relaxed);
                held.tokens.rearm_pause();
            }
            let now = s.clock.now();
            if draft.status.is_terminal() || draft.status == Status::Paused {
                return self
                    .commit(&mut draft, held, LeaseAfter::Release { run_at: None })
                    .await;
            }
            let activity = match &draft.pending {
                Pending::Nothing => {
                    let error = WorkflowError::new(
                        "workflow.invalid_state",
                        "running workflow has nothing to do",
                    );
                    draft.apply(&s.registry, Cause::Timer, Err(error), now);
                    continue;
                }
                Pending::Signal => {
                    return self
                        .commit(&mut draft, held, LeaseAfter::Release { run_at: None })
                        .await;
                }
                Pending::Timer { due_at } if *due_at > now => {
                    let run_at = Some(*due_at);
                    return self
                        .commit(&mut draft, held, LeaseAfter::Release { run_at })
                        .await;
                }
                Pending::Timer { .. } => {
                    let result = workflow.on_timer(draft.state.clone());
                    draft.apply(&s.registry, Cause::Timer, result, now);
                    continue;
                }
                Pending::Activity(a) => match a.not_before {
                    Some(at) if at > now => {
                        return self
                            .commit(&mut draft, held, LeaseAfter::Release { run_at: Some(at) })
                            .await;
                    }
                    _ => a.clone(),
                },
            };
            if s.stopping.is_cancelled() {
                // Draining: start nothing new; another worker (or a restart) continues.
                return self
                    .commit(&mut draft, held, LeaseAfter::Release { run_at: Some(now) })
                    .await;
            }
            let Some(body) = s.registry.get_activity(&activity.name).cloned() else {
                warn!(activity.name = %activity.name, "activity not registered in this worker; handing it back");
                if draft.is_dirty() {
                    self.commit(&mut draft, held, LeaseAfter::Keep).await?;
                }
                return Err(StepStop::Release);
            };
            let options = body.options();
            let deadline_left = options.schedule_to_close_timeout.map(|d| {
                let elapsed = (now - activity.scheduled_at)
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                d.saturating_sub(elapsed)
            });
            if deadline_left == Some(Duration::ZERO) {
                let error = crate::ActivityError::non_retryable(
                    crate::ActivityError::SCHEDULE_TO_CLOSE_TIMEOUT,
                    "the schedule-to-close deadline passed",
                );
                draft.attempt_failed(&s.registry, workflow.as_ref(), &options, error, false, now);
                continue;
            }
            // Everything the attempt depends on must be durable before its body runs.
            if draft.is_dirty() {
                self.commit(&mut draft, held, LeaseAfter::Keep).await?;
                if draft.signal_seq > draft.signal_seen {
                    continue;
                }
            }
            if activity.attempt > 1 || claimed.recovered_from.is_some() {
                last_heartbeat = s
                    .store
                    .get_workflow(draft.id)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.heartbeat_details)
                    .or(last_heartbeat);
            }
            let cell = Arc::new(HeartbeatCell::new());
            *lock(&held.heartbeat) = Some((activity.call_seq, cell.clone()));
            let started_at = s.clock.now();
            let started = Instant::now();
            let span = info_span!(
                "activity",
                activity.name = %activity.name,
                call_seq = activity.call_seq,
                attempt = activity.attempt,
            );
            let spec = AttemptSpec {
                workflow_id: draft.id,
                activity: &activity,
                options: &options,
                last_heartbeat_details: last_heartbeat.take(),
                deadline_left,
            };
            let end = driver::run_attempt(spec, body.as_ref(), cell.clone(), &held.tokens)
                .instrument(span)
                .await;
            *lock(&held.heartbeat) = None;
            // The last beats may not have reached a renewal yet: journal them with this step.
            draft.heartbeat_details = cell.take_unsaved();
            let duration_ms = started.elapsed().as_millis() as i64;
            let now = s.clock.now();
            let mut row = NewAttempt {
                call_seq: activity.call_seq,
                attempt: activity.attempt,
                activity_name: activity.name.clone(),
                worker_id: Some(s.id),
                outcome: AttemptOutcome::Completed,
                error: None,
                started_at: Some(started_at),
                duration_ms: Some(duration_ms),
            };
            match end {
                AttemptEnd::Completed(output) => {
                    debug!(activity.name = %activity.name, call_seq = activity.call_seq, attempt = activity.attempt, outcome = "completed", duration_ms, "attempt completed");
                    draft.attempts.push(row);
                    draft.attempt_completed(&s.registry, workflow.as_ref(), output, now);
                }
                AttemptEnd::Failed(error, outcome) => {
                    debug!(activity.name = %activity.name, call_seq = activity.call_seq, attempt = activity.attempt, outcome = outcome.as_str(), duration_ms, error.message = %error, "attempt failed");
                    row.outcome = outcome;
                    row.error = Some(error.clone());
                    draft.attempts.push(row);
                    draft.attempt_failed(
                        &s.registry,
                        workflow.as_ref(),
                        &options,
                        error,
                        false,
                        now,
                    );
                }
                AttemptEnd::Cancelled => {
                    row.outcome = AttemptOutcome::Cancelled;
                    row.error = Some(crate::ActivityError::non_retryable(
                        crate::ActivityError::CANCELLED,
                        "workflow cancelled",
                    ));
                    draft.attempts.push(row);
                    // The cancel signal is read and applied at this boundary.
                    draft.force_signal_read = true;
                    if let Pending::Activity(a) = &mut draft.pending {
                        a.attempt += 1;
                    }
                }
                AttemptEnd::Paused => {
                    // An interruptible body did not return in time after a pause; it runs
                    // again (as the next attempt) on resume.
                    row.outcome = AttemptOutcome::Cancelled;
                    row.error = Some(crate::ActivityError::retryable(
                        "paused",
                        "interrupted by a pause",
                    ));
                    draft.attempts.push(row);
                    draft.force_signal_read = true;
                    if let Pending::Activity(a) = &mut draft.pending {
                        a.attempt += 1;
                    }
                }
                AttemptEnd::LeaseLost => return Err(StepStop::Fenced),
                AttemptEnd::Abandoned => {
                    // The drain deadline dropped the body mid-way; it may have had effects. Count
                    // the attempt as a lease recovery would and hand the workflow back, due now.
                    let error = crate::ActivityError::retryable(
                        "worker.drain_timeout",
                        format!("worker {} shut down before the attempt finished", s.id),
                    );
                    draft.attempt_abandoned(
                        &s.registry,
                        workflow.as_ref(),
                        &options,
                        row,
                        error,
                        now,
                    );
                    let run_at = (!draft.status.is_terminal()).then_some(now);
                    return self
                        .commit(&mut draft, held, LeaseAfter::Release { run_at })
                        .await;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
