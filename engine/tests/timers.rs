//! Durable timers: a timer fires no earlier than its due time, survives the worker that set it,
//! and keeps its due time across a pause.

mod common;

use common::*;
use engine::{Cause, Engine, EventKind, Pending, Status, WaitingOn, Worker};
use serde_json::json;
use std::time::Duration;

conformance! {
    timer_fires_after_its_duration,
    timer_survives_a_worker_crash,
    timer_is_durable_across_worker_restarts,
    paused_timer_keeps_its_due_time_and_fires_on_resume,
}

/// The due time of the (only) timer set, and the time its transition was committed.
/// The timer's transition was committed at or after its due time, as far as the database clock
/// can tell (a recorded time may be up to the clock's resolution early: SQLite records
/// milliseconds, so a commit 0.4 ms after a due time of .1236 is recorded at .123).
#[track_caller]
fn assert_not_early(
    db: &Backend,
    fired: chrono::DateTime<chrono::Utc>,
    due: chrono::DateTime<chrono::Utc>,
) {
    assert!(
        fired >= due - db.clock_resolution(),
        "fired at {fired}, due at {due}"
    );
}

#[track_caller]
fn due_and_fired(
    journal: &Journal,
) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let due = journal
        .events
        .iter()
        .find_map(|e| match &e.event {
            EventKind::Transitioned {
                pending: Pending::Timer { due_at },
                ..
            } => Some(*due_at),
            _ => None,
        })
        .expect("a timer was set");
    let fired = journal
        .events
        .iter()
        .find(|e| cause(&e.event) == Some(&Cause::Timer))
        .expect("the timer fired")
        .created_at;
    (due, fired)
}

async fn timer_fires_after_its_duration(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let t0 = tokio::time::Instant::now();
    let started = engine
        .start("test.sleepy", None, json!({ "ms": 300 }))
        .await?;
    let detail = engine.detail(started.id).await?;
    let WaitingOn::Timer { due_at } = detail.waiting_on else {
        panic!("waiting on the timer, got {:?}", detail.waiting_on);
    };
    // The snapshot is due at the timer (stored with the database's microsecond precision).
    let run_at = detail.record.run_at.expect("due at the timer");
    assert!(run_at <= due_at && due_at - run_at < chrono::Duration::microseconds(1));

    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "fired early: {:?}",
        t0.elapsed()
    );
    assert_eq!(done.output, Some(json!("woken")));
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds(),
        ["started", "transitioned", "transitioned", "completed"]
    );
    let (due, fired) = due_and_fired(&journal);
    assert_eq!(due, due_at);
    assert_not_early(&db, fired, due);
    worker.shutdown().await?;
    Ok(())
}

async fn timer_survives_a_worker_crash(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());

    // Worker A drives the workflow to its timer (a quick step first), then crashes while the
    // timer runs.
    let worker_a = Worker::new(store.clone(), registry.clone(), fast_config()).spawn();
    let started = engine
        .start(
            "test.sleepy",
            None,
            json!({ "ms": 1000, "step_first": true }),
        )
        .await?;
    let waiting = wait_for("A to set the timer and release the workflow", || {
        let store = store.clone();
        async move {
            let r = snapshot(&store, started.id).await;
            (matches!(r.pending, Pending::Timer { .. }) && r.lease_owner.is_none()).then_some(r)
        }
    })
    .await;
    worker_a.crash().await;
    assert_eq!(waiting.status, Status::Running);
    assert_eq!(probe.finished(), 1);

    // Stepping workers is deterministic: nothing is due before the timer.
    let stepper = Worker::new(store.clone(), registry.clone(), fast_config());
    assert_eq!(stepper.run_until_idle().await?, 0);

    let worker_b = Worker::new(store.clone(), registry, fast_config()).spawn();
    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!("woken")));
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    let (due, fired) = due_and_fired(&journal);
    assert_not_early(&db, fired, due);
    worker_b.shutdown().await?;
    Ok(())
}

async fn timer_is_durable_across_worker_restarts(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let started = engine
        .start("test.sleepy", None, json!({ "ms": 300 }))
        .await?;

    let first = Worker::new(store.clone(), registry.clone(), fast_config());
    assert_eq!(
        first.run_until_idle().await?,
        0,
        "nothing is due before the timer"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(350)).await;

    // A fresh worker (a restarted process) fires the timer from the journal alone.
    let second = Worker::new(store.clone(), registry, fast_config());
    assert_eq!(second.run_until_idle().await?, 1);
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(journal.snapshot.status, Status::Completed);
    let (due, fired) = due_and_fired(&journal);
    assert_not_early(&db, fired, due);
    Ok(())
}

async fn paused_timer_keeps_its_due_time_and_fires_on_resume(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let started = engine
        .start("test.sleepy", None, json!({ "ms": 300 }))
        .await?;
    let due_at = match snapshot(&store, started.id).await.pending {
        Pending::Timer { due_at } => due_at,
        other => panic!("timer pending, got {other:?}"),
    };
    engine.signal(started.id, "pause", json!(null)).await?;
    let paused = wait_for_status(&store, started.id, Status::Paused).await;
    assert_eq!(
        paused.pending,
        Pending::Timer { due_at },
        "the due time is kept"
    );

    // Past the due time, a paused timer does not fire.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still = snapshot(&store, started.id).await;
    assert_eq!(
        (still.status, still.version),
        (Status::Paused, paused.version)
    );

    engine.signal(started.id, "resume", json!(null)).await?;
    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!("woken")));
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds(),
        [
            "started",
            "transitioned",
            "signal_applied",
            "paused",
            "signal_applied",
            "resumed",
            "transitioned",
            "completed",
        ]
    );
    worker.shutdown().await?;
    Ok(())
}
