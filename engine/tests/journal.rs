//! Transitions and the journal: a multi-step workflow is journaled gaplessly, its snapshot is the
//! fold of its log, its attempts are recorded; starts are idempotent and validated.

mod common;

use common::*;
use engine::{Cause, Engine, EngineError, EventKind, Pending, Status, Worker};
use serde_json::json;

conformance! {
    multi_step_workflow_is_journaled_and_snapshot_is_the_fold,
    start_is_idempotent_by_type_and_key,
    bad_starts_are_refused_before_anything_is_written,
    a_worker_claims_only_types_it_can_run,
}

async fn multi_step_workflow_is_journaled_and_snapshot_is_the_fold(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config());

    let started = engine
        .start(
            "test.chain",
            Some("chain-1".into()),
            json!({ "steps": 3, "sleep_ms": 20 }),
        )
        .await?;
    assert!(started.created);

    // Before any worker ran: the start is journaled, the first call is pending.
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(journal.kinds(), ["started", "transitioned"]);
    let Pending::Activity(first) = &journal.snapshot.pending else {
        panic!("first call pending, got {:?}", journal.snapshot.pending);
    };
    assert_eq!(
        (first.call_seq, first.attempt, first.name.as_str()),
        (1, 1, "test.step")
    );

    assert_eq!(worker.run_until_idle().await?, 1);

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds(),
        [
            "started",
            "transitioned",
            "activity_completed",
            "transitioned",
            "activity_completed",
            "transitioned",
            "activity_completed",
            "transitioned",
            "completed",
        ]
    );
    let s = &journal.snapshot;
    assert_eq!(s.status, Status::Completed);
    assert_eq!(s.output, Some(json!(6)));
    assert_eq!(s.state, json!({ "Done": { "sum": 6 } }));
    assert_eq!(s.pending, Pending::Nothing);
    assert_eq!(s.lease_owner, None, "a finished workflow holds no lease");
    assert_eq!(s.run_at, None, "a finished workflow is never due");

    // Causes: the start, then each call in order.
    let causes: Vec<Cause> = journal
        .events
        .iter()
        .filter_map(|e| cause(&e.event).cloned())
        .collect();
    let call = |call_seq| Cause::Activity {
        call_seq,
        name: "test.step".into(),
    };
    assert_eq!(causes, [Cause::Start, call(1), call(2), call(3)]);
    for (i, e) in journal
        .of_kind("activity_completed")
        .into_iter()
        .enumerate()
    {
        let EventKind::ActivityCompleted {
            call_seq,
            name,
            attempt,
            output,
        } = e
        else {
            unreachable!()
        };
        assert_eq!(
            (*call_seq, name.as_str(), *attempt),
            (i as i64 + 1, "test.step", 1)
        );
        assert_eq!(output, &json!(i + 1));
    }

    // One attempt row per call, with outcome, duration and worker.
    assert_eq!(journal.attempts.len(), 3);
    for (i, a) in journal.attempts.iter().enumerate() {
        assert_eq!((a.call_seq, a.attempt), (i as i64 + 1, 1));
        assert_eq!(a.activity_name, "test.step");
        assert_eq!(a.outcome, "completed");
        assert_eq!(a.error, None);
        assert_eq!(a.worker_id, Some(worker.id().0));
        assert!(a.started_at.is_some(), "attempt {a:?} has a start time");
        let duration = a.duration_ms.expect("attempt has a duration");
        assert!(duration >= 20, "the body slept 20 ms, duration {duration}");
    }
    assert_eq!(probe.started(), 3);

    // The store's own views agree with the tables.
    let history = engine.history(started.id, 0, 100).await?;
    assert_eq!(history.len(), journal.events.len());
    assert_eq!(engine.history(started.id, 7, 100).await?.len(), 2);
    assert_eq!(engine.attempts(started.id).await?.len(), 3);
    Ok(())
}

async fn start_is_idempotent_by_type_and_key(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let engine = Engine::new(store.clone(), registry(&probe));
    let input = json!({ "steps": 1, "sleep_ms": 0 });

    let first = engine
        .start("test.chain", Some("order-42".into()), input.clone())
        .await?;
    assert!(first.created);
    let again = engine
        .start("test.chain", Some("order-42".into()), input.clone())
        .await?;
    assert_eq!(again.id, first.id);
    assert!(!again.created);
    // Even with a different input, the key decides.
    let different_input = engine
        .start(
            "test.chain",
            Some("order-42".into()),
            json!({ "steps": 2, "sleep_ms": 0 }),
        )
        .await?;
    assert_eq!(
        (different_input.id, different_input.created),
        (first.id, false)
    );

    let other = engine
        .start("test.chain", Some("order-43".into()), input.clone())
        .await?;
    assert!(other.created);
    assert_ne!(other.id, first.id);
    // The same key under another type is another workflow.
    let other_type = engine
        .start("test.sleepy", Some("order-42".into()), json!({ "ms": 10 }))
        .await?;
    assert!(other_type.created);
    assert_ne!(other_type.id, first.id);
    // Without a key every start creates.
    let a = engine.start("test.chain", None, input.clone()).await?;
    let b = engine.start("test.chain", None, input.clone()).await?;
    assert!(a.created && b.created && a.id != b.id);

    // The repeated starts wrote nothing.
    let journal = Journal::load(&db, first.id).await;
    journal.assert_consistent();
    assert_eq!(journal.kinds(), ["started", "transitioned"]);
    assert_eq!(journal.snapshot.input, input);
    assert_eq!(db.reader().counts().await?.workflows, 5);
    Ok(())
}

async fn bad_starts_are_refused_before_anything_is_written(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let engine = Engine::new(store.clone(), registry(&probe));

    let unknown = engine
        .start("test.nope", Some("k".into()), json!({}))
        .await
        .expect_err("unknown type is refused");
    assert!(
        matches!(&unknown, EngineError::UnknownWorkflowType(t) if t == "test.nope"),
        "{unknown:?}"
    );

    for input in [
        json!({ "steps": "three", "sleep_ms": 0 }),
        json!({ "sleep_ms": 0 }),
        json!([1, 2, 3]),
        json!(null),
    ] {
        let err = engine
            .start("test.chain", Some("k".into()), input.clone())
            .await
            .expect_err("wrong input shape is refused");
        assert!(
            matches!(&err, EngineError::InvalidInput { workflow_type, .. } if workflow_type == "test.chain"),
            "input {input}: {err:?}"
        );
    }

    let counts = db.reader().counts().await?;
    assert_eq!(
        (counts.workflows, counts.events),
        (0, 0),
        "refused starts left rows behind"
    );

    // The key is still free: a valid start with it creates the workflow.
    let ok = engine
        .start(
            "test.chain",
            Some("k".into()),
            json!({ "steps": 1, "sleep_ms": 0 }),
        )
        .await?;
    assert!(ok.created);
    Ok(())
}

async fn a_worker_claims_only_types_it_can_run(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let engine = Engine::new(store.clone(), registry(&probe));
    let started = engine
        .start("test.chain", None, json!({ "steps": 1, "sleep_ms": 0 }))
        .await?;

    let stranger = Worker::new(store.clone(), engine::Registry::new(), fast_config());
    assert_eq!(
        stranger.run_until_idle().await?,
        0,
        "unknown type left alone"
    );
    assert_eq!(snapshot(&store, started.id).await.lease_owner, None);

    let able = Worker::new(store.clone(), registry(&probe), fast_config());
    assert_eq!(able.run_until_idle().await?, 1);
    assert_eq!(snapshot(&store, started.id).await.status, Status::Completed);
    Ok(())
}
