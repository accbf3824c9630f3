//! Signals: pause and resume around a running activity, cancel (with and without a cleanup
//! path), and typed custom signals applied in order; bad or late signals write nothing.

mod common;

use common::*;
use engine::{
    Cause, Engine, EngineError, EventKind, Pending, Status, WaitingOn, Worker, WorkflowId,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

conformance! {
    pause_lets_the_running_activity_finish_and_resume_continues,
    cancel_fires_the_running_activity_token_and_ends_cancelled,
    cancel_runs_the_workflow_cleanup_path_first,
    cancel_while_backing_off_ends_cancelled_without_waiting,
    custom_signals_apply_in_send_order,
    invalid_signals_are_refused_and_write_nothing,
    pause_interrupts_an_interruptible_activity_which_keeps_its_result,
    work_and_cancel_from_another_process_reach_the_worker_through_its_listener,
}

async fn wait_started(probe: &Arc<Probe>, n: u32) {
    let probe = probe.clone();
    wait_for("the activity body to start", move || {
        let probe = probe.clone();
        async move { (probe.started() >= n).then_some(()) }
    })
    .await
}

async fn signal_count(db: &Backend, id: WorkflowId) -> (i64, i64) {
    db.reader().signal_count(id).await.expect("count signals")
}

async fn pause_lets_the_running_activity_finish_and_resume_continues(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let started = engine
        .start("test.chain", None, json!({ "steps": 2, "sleep_ms": 500 }))
        .await?;
    wait_started(&probe, 1).await;
    engine.signal(started.id, "pause", json!(null)).await?;

    let paused = wait_for_status(&store, started.id, Status::Paused).await;
    // The running step finished and its result is journaled; the next one is pending, not started.
    assert_eq!(probe.finished(), 1);
    let Pending::Activity(next) = &paused.pending else {
        panic!("second call pending, got {:?}", paused.pending);
    };
    assert_eq!((next.call_seq, next.attempt), (2, 1));
    assert_eq!(paused.lease_owner, None, "a paused workflow is released");
    assert_eq!(
        engine.detail(started.id).await?.waiting_on,
        WaitingOn::Paused
    );
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds(),
        [
            "started",
            "transitioned",
            "activity_completed",
            "transitioned",
            "signal_applied",
            "paused",
        ]
    );

    // Nothing new is dispatched while paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(probe.started(), 1, "no activity starts while paused");
    let still = snapshot(&store, started.id).await;
    assert_eq!(
        (still.status, still.version),
        (Status::Paused, paused.version)
    );

    // A second pause changes nothing but is consumed.
    engine.signal(started.id, "pause", json!(null)).await?;
    engine.signal(started.id, "resume", json!(null)).await?;
    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(3)));
    assert_eq!(probe.started(), 2);

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds()[6..],
        [
            "signal_applied",
            "signal_applied",
            "resumed",
            "activity_completed",
            "transitioned",
            "completed",
        ]
    );
    assert!(journal.signals.iter().all(|(_, _, at)| at.is_some()));
    worker.shutdown().await?;
    Ok(())
}

async fn cancel_fires_the_running_activity_token_and_ends_cancelled(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    // The step would sleep far longer than the test waits.
    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 1, "sleep_ms": 600_000 } }),
        )
        .await?;
    wait_started(&probe, 1).await;
    engine.signal(started.id, "cancel", json!(null)).await?;

    let cancelled = wait_for_status(&store, started.id, Status::Cancelled).await;
    assert!(
        probe.saw_cancel(),
        "the activity observed its cancellation token"
    );
    assert_eq!(probe.finished(), 0);
    assert_eq!(cancelled.pending, Pending::Nothing);
    assert!(cancelled.cancel_requested);

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds(),
        [
            "started",
            "transitioned",
            "signal_applied",
            "transitioned",
            "cancelled"
        ]
    );
    assert!(matches!(
        journal.events[3].event,
        EventKind::Transitioned {
            cause: Cause::Cancel,
            status: Status::Cancelled,
            ..
        }
    ));
    assert_eq!(journal.attempts.len(), 1);
    assert_eq!(journal.attempts[0].outcome, "cancelled");
    assert_eq!(
        journal.attempts[0].error.as_ref().map(|e| e.code.as_str()),
        Some(engine::ActivityError::CANCELLED)
    );

    // Signals to a finished workflow are refused and not stored.
    let before = signal_count(&db, started.id).await;
    for name in ["cancel", "resume"] {
        let err = engine
            .signal(started.id, name, json!(null))
            .await
            .expect_err("finished workflows take no signals");
        assert!(
            matches!(err, EngineError::Finished { id, status: Status::Cancelled } if id == started.id),
            "{err:?}"
        );
    }
    assert_eq!(signal_count(&db, started.id).await, before);
    worker.shutdown().await?;
    Ok(())
}

async fn cancel_runs_the_workflow_cleanup_path_first(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let cleanup = Probe::new();
    let registry = registry(&probe).activity(Cleanup {
        probe: cleanup.clone(),
    });
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let started = engine
        .start(
            "test.cleanup_on_cancel",
            None,
            json!({ "value": 1, "sleep_ms": 600_000 }),
        )
        .await?;
    wait_started(&probe, 1).await;
    engine.signal(started.id, "cancel", json!(null)).await?;
    // A second cancel while cancelling is accepted (unless the workflow already ended) and
    // discarded, never applied twice.
    let second = engine.signal(started.id, "cancel", json!(null)).await;

    let cancelled = wait_for_status(&store, started.id, Status::Cancelled).await;
    if second.is_ok() {
        // Accepted signals are never lost: it is consumed, possibly after the end.
        wait_for("the second cancel to be consumed", || {
            let store = store.clone();
            async move {
                let r = snapshot(&store, started.id).await;
                (r.signals_unconsumed == 0).then_some(())
            }
        })
        .await;
    }
    assert!(probe.saw_cancel());
    assert_eq!(cleanup.finished(), 1, "the cleanup activity ran once");
    assert_eq!(cancelled.state, json!("CleaningUp"));

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    // The second cancel is discarded wherever it lands (while cleaning up, or after the end).
    let discarded = journal.of_kind("signal_discarded");
    match &second {
        Ok(accepted) => assert!(
            matches!(discarded[..], [EventKind::SignalDiscarded { signal_seq, .. }] if *signal_seq == accepted.seq),
            "{discarded:?}"
        ),
        Err(e) => {
            assert!(matches!(e, EngineError::Finished { .. }), "{e:?}");
            assert!(discarded.is_empty(), "{discarded:?}");
        }
    }
    let kinds: Vec<&str> = journal
        .kinds()
        .into_iter()
        .filter(|k| *k != "signal_discarded")
        .collect();
    assert_eq!(
        kinds[..4],
        ["started", "transitioned", "signal_applied", "transitioned"]
    );
    assert!(matches!(
        &journal.events[3].event,
        EventKind::Transitioned {
            cause: Cause::Cancel,
            status: Status::Running,
            pending: Pending::Activity(a),
            ..
        } if a.name == "test.cleanup" && a.call_seq == 2
    ));
    assert_eq!(
        kinds[kinds.len() - 3..],
        ["activity_completed", "transitioned", "cancelled"]
    );
    let attempts: Vec<(i64, &str, &str)> = journal
        .attempts
        .iter()
        .map(|a| (a.call_seq, a.activity_name.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "test.step", "cancelled"),
            (2, "test.cleanup", "completed")
        ]
    );
    worker.shutdown().await?;
    Ok(())
}

async fn cancel_while_backing_off_ends_cancelled_without_waiting(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let mut options = fast_options(5);
    options.retry.initial_interval = Duration::from_secs(600);
    options.retry.maximum_interval = Duration::from_secs(600);
    let registry = registry(&probe).activity(Flaky { options });
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "flaky": { "fail_times": 99, "code": "down", "retryable": true } }),
        )
        .await?;
    wait_for("the first attempt to fail and back off", || {
        let engine = engine.clone();
        async move {
            let detail = engine.detail(started.id).await.ok()?;
            matches!(
                detail.waiting_on,
                WaitingOn::BackingOff {
                    next_attempt: 2,
                    ..
                }
            )
            .then_some(())
        }
    })
    .await;
    engine.signal(started.id, "cancel", json!(null)).await?;
    wait_for_status(&store, started.id, Status::Cancelled).await;
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(journal.attempts.len(), 1);
    worker.shutdown().await?;
    Ok(())
}

async fn custom_signals_apply_in_send_order(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    // Each `add` runs a 30 ms step, so most signals arrive while an activity is outstanding.
    let started = engine
        .start("test.inbox", None, json!({ "step_ms": 30 }))
        .await?;
    let waiting = wait_for_status(&store, started.id, Status::Running).await;
    assert_eq!(waiting.pending, Pending::Signal);
    assert_eq!(
        engine.detail(started.id).await?.waiting_on,
        WaitingOn::Signal
    );

    let items: Vec<String> = (1..=8).map(|i| format!("item-{i}")).collect();
    let mut seqs = Vec::new();
    for item in &items {
        seqs.push(engine.signal(started.id, "add", json!(item)).await?.seq);
    }
    seqs.push(engine.signal(started.id, "close", json!(null)).await?.seq);
    assert_eq!(
        seqs,
        (1..=9).collect::<Vec<i64>>(),
        "inbox seqs are gapless"
    );

    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(items)));
    assert_eq!(done.signals_unconsumed, 0);

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    let applied: Vec<(i64, String, serde_json::Value)> = journal
        .of_kind("signal_applied")
        .into_iter()
        .map(|e| match e {
            EventKind::SignalApplied {
                signal_seq,
                name,
                payload,
            } => (*signal_seq, name.clone(), payload.clone()),
            _ => unreachable!(),
        })
        .collect();
    let mut expected: Vec<(i64, String, serde_json::Value)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| (i as i64 + 1, "add".to_owned(), json!(item)))
        .collect();
    expected.push((9, "close".to_owned(), json!(null)));
    assert_eq!(applied, expected);
    // Each signal's transition follows its `signal_applied` event, in order.
    let signal_causes: Vec<i64> = journal
        .events
        .iter()
        .filter_map(|e| match cause(&e.event) {
            Some(Cause::Signal { signal_seq, .. }) => Some(*signal_seq),
            _ => None,
        })
        .collect();
    assert_eq!(signal_causes, (1..=9).collect::<Vec<i64>>());
    assert!(journal.signals.iter().all(|(_, _, at)| at.is_some()));
    assert_eq!(journal.attempts.len(), items.len());

    let err = engine
        .signal(started.id, "add", json!("late"))
        .await
        .expect_err("finished");
    assert!(
        matches!(
            err,
            EngineError::Finished {
                status: Status::Completed,
                ..
            }
        ),
        "{err:?}"
    );
    worker.shutdown().await?;
    Ok(())
}

async fn invalid_signals_are_refused_and_write_nothing(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let engine = Engine::new(store.clone(), registry(&probe));

    let inbox = engine
        .start("test.inbox", None, json!({ "step_ms": 0 }))
        .await?;
    let chain = engine
        .start("test.chain", None, json!({ "steps": 1, "sleep_ms": 0 }))
        .await?;
    let before = Journal::load(&db, inbox.id).await;

    let long_name = "x".repeat(129);
    let refused = [
        (inbox.id, "nope", json!(null)),
        (inbox.id, "add", json!(42)),
        (inbox.id, "add", json!(null)),
        (inbox.id, "close", json!({ "unexpected": true })),
        (inbox.id, "", json!(null)),
        (inbox.id, long_name.as_str(), json!(null)),
        (chain.id, "add", json!("x")),
    ];
    for (id, name, payload) in refused {
        let err = engine
            .signal(id, name, payload.clone())
            .await
            .expect_err("invalid signal is refused");
        assert!(
            matches!(err, EngineError::InvalidSignal(_)),
            "`{name}` {payload}: {err:?}"
        );
    }
    let missing = WorkflowId::new();
    let err = engine
        .signal(missing, "pause", json!(null))
        .await
        .expect_err("unknown workflow");
    assert!(
        matches!(err, EngineError::NotFound(id) if id == missing),
        "{err:?}"
    );

    let after = Journal::load(&db, inbox.id).await;
    assert_eq!(after.signals, before.signals);
    assert_eq!(after.snapshot, before.snapshot);
    assert_eq!(after.events.len(), before.events.len());
    assert_eq!(db.reader().counts().await?.signals, 0);
    Ok(())
}

async fn pause_interrupts_an_interruptible_activity_which_keeps_its_result(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "watch": { "max_ms": 60_000 } }),
        )
        .await?;
    wait_started(&probe, 1).await;
    engine.signal(started.id, "pause", json!(null)).await?;

    // The watch returns what it has seen instead of running to its end; its result is journaled
    // once and the workflow moves on (here it completes, so the pause is discarded).
    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!("interrupted")));
    assert!(probe.saw_cancel(), "the body saw its token fire on pause");
    // The pause may still be discarded by a last commit after the completion: let it land
    // before reading the journal (snapshot and events are read separately).
    wait_for("the pause to be consumed", || {
        let store = store.clone();
        async move {
            let r = store.get_workflow(started.id).await.ok()??;
            (r.signals_unconsumed == 0 && r.lease_owner.is_none()).then_some(())
        }
    })
    .await;
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal
            .kinds()
            .iter()
            .filter(|k| **k == "activity_completed")
            .count(),
        1
    );
    worker.shutdown().await?;
    Ok(())
}

/// The API and the worker are separate processes (separate stores and pools). With the worker's
/// fallback poll and lease renewals 30 s apart, only the store's wake-up hints (NOTIFY on
/// PostgreSQL, the listener's short poll on SQLite) can bring it the new workflow and the cancel
/// within the few seconds this test allows.
async fn work_and_cancel_from_another_process_reach_the_worker_through_its_listener(
    db: Backend,
) -> anyhow::Result<()> {
    let probe = Probe::new();
    let registry = registry(&probe);
    let api = db.another_store(2).await;
    let engine = Engine::new(api.clone(), registry.clone());
    let slow_fallbacks = engine::WorkerConfig {
        lease_ttl: Duration::from_secs(60),
        heartbeat_interval: Duration::from_secs(30),
        poll_interval: Duration::from_secs(30),
        ..fast_config()
    };
    let worker = Worker::new(db.store(), registry, slow_fallbacks).spawn();
    // Let the worker's first claim (at start) find nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = tokio::time::Instant::now();
    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 1, "sleep_ms": 600_000 } }),
        )
        .await?;
    wait_started(&probe, 1).await;
    let picked_up = t0.elapsed();
    engine.signal(started.id, "cancel", json!(null)).await?;
    wait_for_status(&api, started.id, Status::Cancelled).await;
    assert!(probe.saw_cancel(), "the running body saw its token fire");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "picked up after {picked_up:?}, cancelled after {:?}: hints did not arrive",
        t0.elapsed()
    );
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(journal.attempts.len(), 1);
    assert_eq!(journal.attempts[0].outcome, "cancelled");
    worker.shutdown().await?;
    Ok(())
}
