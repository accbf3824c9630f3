//! Fencing: only the current lease holder commits. A worker whose lease expired and was taken
//! over cannot write anything; its interrupted attempt is journaled as abandoned and retried.

mod common;

use common::*;
use engine::store::{Claimed, LeaseAfter, NewAttempt, StepCommit};
use engine::{
    AttemptOutcome, Cause, Engine, EventKind, Status, StoreError, Worker, WorkerConfig, WorkerId,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

conformance! {
    commit_is_fenced_by_owner_epoch_and_version,
    stale_claim_is_fenced_after_another_worker_takes_over,
    crashed_worker_is_taken_over_and_fenced,
    crashed_worker_writes_nothing_after_the_crash,
    worker_that_loses_its_lease_mid_attempt_stops_and_writes_nothing,
    drain_deadline_hands_the_workflow_back_and_counts_the_attempt,
}

/// Every workflow type the tests register.
fn types() -> Vec<String> {
    registry(&Arc::new(Probe::default()))
        .workflow_types()
        .map(str::to_owned)
        .collect()
}

/// What a worker that claimed `c` would commit after its attempt 1 completed.
fn completion(c: &Claimed, worker: WorkerId, epoch: i64, version: i64) -> StepCommit {
    StepCommit {
        id: c.record.id,
        worker,
        epoch,
        expected_version: version,
        status: Status::Completed,
        state: json!("Done"),
        pending: engine::Pending::Nothing,
        output: Some(json!("from the stale worker")),
        error: None,
        next_call_seq: c.next_call_seq,
        cancel_requested: false,
        events: vec![
            EventKind::ActivityCompleted {
                call_seq: 1,
                name: "test.step".into(),
                attempt: 1,
                output: json!("from the stale worker"),
            },
            EventKind::Transitioned {
                cause: Cause::Activity {
                    call_seq: 1,
                    name: "test.step".into(),
                },
                state: json!("Done"),
                pending: engine::Pending::Nothing,
                status: Status::Completed,
            },
            EventKind::Completed {
                output: json!("from the stale worker"),
            },
        ],
        attempts: vec![NewAttempt {
            call_seq: 1,
            attempt: 1,
            activity_name: "test.step".into(),
            worker_id: Some(worker),
            outcome: AttemptOutcome::Completed,
            error: None,
            started_at: Some(c.db_now),
            duration_ms: Some(1),
        }],
        consumed_signals: Vec::new(),
        signal_seen: c.signal_seen,
        lease: LeaseAfter::Release { run_at: None },
        lease_ttl: Duration::from_secs(30),
        clear_heartbeat: false,
        heartbeat_details: Some(json!({ "from": "stale worker" })),
    }
}

#[track_caller]
fn assert_fenced(result: Result<engine::store::Committed, StoreError>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::Fenced)),
        "{what}: expected Fenced, got {result:?}"
    );
}

/// The journal a stale commit must leave untouched.
#[track_caller]
fn assert_unchanged(before: &Journal, after: &Journal) {
    assert_eq!(after.snapshot, before.snapshot, "snapshot changed");
    assert_eq!(after.kinds(), before.kinds(), "events changed");
    assert_eq!(
        after.attempts.len(),
        before.attempts.len(),
        "attempts changed"
    );
}

async fn commit_is_fenced_by_owner_epoch_and_version(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let engine = Engine::new(store.clone(), registry(&probe));
    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 1, "sleep_ms": 0 } }),
        )
        .await?;

    let a = WorkerId::new();
    let claimed = store
        .claim(a, &types(), 10, Duration::from_secs(30))
        .await?;
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(c.record.lease_owner, Some(a));
    assert_eq!(c.recovered_from, None);
    let (epoch, version) = (c.record.lease_epoch, c.record.version);
    assert_eq!((epoch, version), (1, 2));
    // A leased workflow is not claimed twice.
    assert!(
        store
            .claim(WorkerId::new(), &types(), 10, Duration::from_secs(30))
            .await?
            .is_empty()
    );

    let before = Journal::load(&db, started.id).await;
    assert_fenced(
        store
            .commit(completion(c, WorkerId::new(), epoch, version))
            .await,
        "another worker",
    );
    assert_fenced(
        store.commit(completion(c, a, epoch - 1, version)).await,
        "an older epoch",
    );
    assert_fenced(
        store.commit(completion(c, a, epoch + 1, version)).await,
        "a newer epoch",
    );
    assert_fenced(
        store.commit(completion(c, a, epoch, version - 1)).await,
        "an older version",
    );
    assert_fenced(
        store.commit(completion(c, a, epoch, version + 1)).await,
        "a newer version",
    );
    assert_unchanged(&before, &Journal::load(&db, started.id).await);

    // The holder's commit applies, gaplessly, and releases the lease.
    let committed = store.commit(completion(c, a, epoch, version)).await?;
    assert_eq!(committed.version, 5);
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(journal.snapshot.status, Status::Completed);
    assert_eq!(journal.snapshot.lease_owner, None);
    assert_eq!(
        journal.snapshot.heartbeat_details,
        Some(json!({ "from": "stale worker" }))
    );
    // Replaying the same commit (a retry after an unknown outcome) is fenced by the version.
    assert_fenced(
        store.commit(completion(c, a, epoch, version)).await,
        "a replayed commit",
    );
    assert_unchanged(&journal, &Journal::load(&db, started.id).await);
    Ok(())
}

async fn stale_claim_is_fenced_after_another_worker_takes_over(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 7, "sleep_ms": 0 } }),
        )
        .await?;

    // Worker A claims with a short lease, then freezes.
    let a = WorkerId::new();
    let claimed = store
        .claim(a, &types(), 1, Duration::from_millis(300))
        .await?;
    let stale = claimed.into_iter().next().expect("claimed");

    let b = Worker::new(store.clone(), registry, fast_config());
    assert_eq!(b.run_until_idle().await?, 0, "A's lease still holds");
    wait_for("A's lease to expire", || {
        let db = db.clone();
        async move {
            db.reader()
                .lease_expired(started.id)
                .await
                .ok()
                .filter(|expired| *expired)
        }
    })
    .await;
    assert_eq!(b.run_until_idle().await?, 1);

    let done = snapshot(&store, started.id).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.output, Some(json!(7)));
    assert_eq!(done.lease_epoch, stale.record.lease_epoch + 1);
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds(),
        [
            "started",
            "transitioned",
            "activity_abandoned",
            "activity_failed",
            "activity_completed",
            "transitioned",
            "completed",
        ]
    );
    assert!(matches!(
        journal.events[2].event,
        EventKind::ActivityAbandoned { call_seq: 1, attempt: 1, worker: Some(w), .. } if w == a
    ));
    assert!(matches!(
        &journal.events[3].event,
        EventKind::ActivityFailed { attempt: 1, error, retry_at: Some(_), .. }
            if error.code == "worker.lease_expired"
    ));
    let attempts: Vec<(i32, &str, Option<uuid::Uuid>)> = journal
        .attempts
        .iter()
        .map(|r| (r.attempt, r.outcome.as_str(), r.worker_id))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "abandoned", Some(a.0)),
            (2, "completed", Some(b.id().0))
        ]
    );
    assert_eq!(
        journal.attempts[0].started_at, None,
        "A's attempt was never observed"
    );

    // A wakes up and commits what it would have: fenced, whatever version it names.
    for version in [stale.record.version, done.version] {
        assert_fenced(
            store
                .commit(completion(&stale, a, stale.record.lease_epoch, version))
                .await,
            "the stale worker",
        );
    }
    assert_unchanged(&journal, &Journal::load(&db, started.id).await);
    Ok(())
}

fn short_lease(ttl: Duration) -> WorkerConfig {
    WorkerConfig {
        lease_ttl: ttl,
        heartbeat_interval: Duration::from_millis(100),
        ..fast_config()
    }
}

async fn crashed_worker_is_taken_over_and_fenced(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker_a = Worker::new(
        store.clone(),
        registry.clone(),
        short_lease(Duration::from_millis(500)),
    );
    let a = worker_a.id();
    let worker_a = worker_a.spawn();

    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 3, "sleep_ms": 1500 } }),
        )
        .await?;
    wait_for("A to start the activity", || {
        let probe = probe.clone();
        async move { (probe.started() == 1).then_some(()) }
    })
    .await;
    let held = snapshot(&store, started.id).await;
    assert_eq!(held.lease_owner, Some(a));
    let a_epoch = held.lease_epoch;
    worker_a.crash().await;

    let worker_b = Worker::new(store.clone(), registry, fast_config());
    let b = worker_b.id();
    let worker_b = worker_b.spawn();
    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(3)));
    assert!(done.lease_epoch > a_epoch);

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    let attempts: Vec<(i32, &str, Option<uuid::Uuid>)> = journal
        .attempts
        .iter()
        .map(|r| (r.attempt, r.outcome.as_str(), r.worker_id))
        .collect();
    assert_eq!(
        attempts,
        [(1, "abandoned", Some(a.0)), (2, "completed", Some(b.0))],
        "A's attempt is recorded as abandoned and B's retry completes"
    );

    // Whatever A would still commit is fenced.
    let claimed = Claimed {
        record: held.clone(),
        next_call_seq: 2,
        signal_seq: 0,
        signal_seen: 0,
        recovered_from: None,
        db_now: held.updated_at,
    };
    assert_fenced(
        store
            .commit(completion(&claimed, a, a_epoch, held.version))
            .await,
        "the crashed worker",
    );
    worker_b.shutdown().await?;
    // Long after A's body would have finished, nothing of A's was written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = Journal::load(&db, started.id).await;
    assert_unchanged(&journal, &after);
    assert_eq!(
        after
            .attempts
            .iter()
            .filter(|r| r.worker_id == Some(a.0))
            .map(|r| r.outcome.as_str())
            .collect::<Vec<_>>(),
        ["abandoned"]
    );
    Ok(())
}

async fn crashed_worker_writes_nothing_after_the_crash(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker_a = Worker::new(
        store.clone(),
        registry.clone(),
        short_lease(Duration::from_secs(2)),
    );
    let a = worker_a.id();
    let worker_a = worker_a.spawn();

    // The body would finish 300 ms in, well inside A's lease.
    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 5, "sleep_ms": 300 } }),
        )
        .await?;
    wait_for("A to start the activity", || {
        let probe = probe.clone();
        async move { (probe.started() == 1).then_some(()) }
    })
    .await;
    let held = snapshot(&store, started.id).await;
    worker_a.crash().await;

    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(probe.finished(), 0, "the crashed worker's body is gone");
    let after = snapshot(&store, started.id).await;
    assert_eq!(after.version, held.version, "the crashed worker committed");
    assert_eq!(after.lease_owner, Some(a), "a crash releases nothing");
    assert!(engine.attempts(started.id).await?.is_empty());

    let worker_b = Worker::new(store.clone(), registry, fast_config()).spawn();
    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(5)));
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    let outcomes: Vec<&str> = journal
        .attempts
        .iter()
        .map(|r| r.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["abandoned", "completed"]);
    worker_b.shutdown().await?;
    Ok(())
}

async fn worker_that_loses_its_lease_mid_attempt_stops_and_writes_nothing(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config());
    let a = worker.id();
    let worker = worker.spawn();

    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 9, "sleep_ms": 1500 } }),
        )
        .await?;
    wait_for("the activity to start", || {
        let probe = probe.clone();
        async move { (probe.started() == 1).then_some(()) }
    })
    .await;
    let held = snapshot(&store, started.id).await;
    assert_eq!(held.lease_owner, Some(a));

    // Another worker takes the lease over (as after a partition) for one second.
    let thief = WorkerId::new();
    db.reader()
        .steal_lease(started.id, thief, Duration::from_secs(1))
        .await?;

    // A's next renewal notices, drops the body and writes nothing.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = snapshot(&store, started.id).await;
    assert_eq!(after.version, held.version);
    assert_eq!(after.lease_owner, Some(thief));
    assert!(engine.attempts(started.id).await?.is_empty());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        probe.finished(),
        0,
        "A's body was dropped when the lease was lost"
    );

    // Once the thief's lease expires, A recovers the workflow like any other worker.
    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(9)));
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    let attempts: Vec<(i32, &str, Option<uuid::Uuid>)> = journal
        .attempts
        .iter()
        .map(|r| (r.attempt, r.outcome.as_str(), r.worker_id))
        .collect();
    assert_eq!(
        attempts,
        [(1, "abandoned", Some(thief.0)), (2, "completed", Some(a.0))]
    );
    worker.shutdown().await?;
    Ok(())
}

/// `test.step` as a later deployment ships it: returns at once.
#[derive(Debug)]
struct QuickStep;

impl engine::Activity for QuickStep {
    const NAME: &'static str = Step::NAME;
    type Input = StepInput;
    type Output = u32;

    async fn run(
        &self,
        _ctx: engine::ActivityContext,
        input: StepInput,
    ) -> Result<u32, engine::ActivityError> {
        Ok(input.value)
    }
}

async fn drain_deadline_hands_the_workflow_back_and_counts_the_attempt(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker_a = Worker::new(
        store.clone(),
        registry.clone(),
        WorkerConfig {
            drain_timeout: Duration::from_millis(300),
            ..fast_config()
        },
    );
    let a = worker_a.id();
    let worker_a = worker_a.spawn();

    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 4, "sleep_ms": 600_000 } }),
        )
        .await?;
    wait_for("the activity to start", || {
        let probe = probe.clone();
        async move { (probe.started() == 1).then_some(()) }
    })
    .await;
    // Graceful shutdown: the step misses the drain deadline and is handed back.
    worker_a.shutdown().await?;
    let handed_back = snapshot(&store, started.id).await;
    assert_eq!(handed_back.status, Status::Running);
    assert_eq!(
        handed_back.lease_owner, None,
        "the lease is handed back, not left to expire"
    );
    assert!(handed_back.run_at.is_some(), "and the workflow is due");

    let worker_b = Worker::new(store.clone(), registry.activity(QuickStep), fast_config());
    let b = worker_b.id();
    assert_eq!(
        worker_b.run_until_idle().await?,
        1,
        "due at once, no lease to wait out"
    );
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(journal.snapshot.status, Status::Completed);
    let attempts: Vec<(i32, &str, Option<uuid::Uuid>)> = journal
        .attempts
        .iter()
        .map(|r| (r.attempt, r.outcome.as_str(), r.worker_id))
        .collect();
    assert_eq!(
        attempts,
        [(1, "abandoned", Some(a.0)), (2, "completed", Some(b.0))],
        "the interrupted body is counted as an attempt"
    );
    Ok(())
}
