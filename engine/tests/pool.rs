//! A worker pool under load: several workers with several slots drive many workflows to
//! completion, each journaled gaplessly with every activity result recorded exactly once.

mod common;

use common::*;
use engine::{Cause, Engine, Status, Worker, WorkerConfig};
use serde_json::json;
use std::collections::BTreeSet;

const WORKERS: usize = 4;
const WORKFLOWS: usize = 200;
const STEPS: i64 = 3;

conformance! {
    many_workers_complete_many_workflows,
    signals_from_another_process_apply_in_order_under_load,
}

/// Each worker gets its own store and pool on the same database, as separate processes would
/// (on SQLite: separate connections to one file, contending for its write lock).
async fn many_workers_complete_many_workflows(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());

    let mut workers = Vec::new();
    let mut worker_ids = BTreeSet::new();
    for _ in 0..WORKERS {
        let worker = Worker::new(
            db.another_store(10).await,
            registry.clone(),
            WorkerConfig {
                slots: 8,
                ..fast_config()
            },
        );
        worker_ids.insert(worker.id().0);
        workers.push(worker.spawn());
    }

    let mut ids = Vec::new();
    for i in 0..WORKFLOWS {
        let started = engine
            .start(
                "test.chain",
                Some(format!("load-{i}")),
                json!({ "steps": STEPS, "sleep_ms": 5 }),
            )
            .await?;
        ids.push(started.id);
    }

    wait_for("every workflow to finish", || {
        let db = db.clone();
        async move {
            let (finished, completed) = db.reader().finished_counts().await.ok()?;
            (finished == WORKFLOWS as i64).then_some(completed)
        }
    })
    .await;
    for id in &ids {
        let record = snapshot(&store, *id).await;
        assert_eq!(record.status, Status::Completed, "{id}: {:?}", record.error);
        assert_eq!(record.output, Some(json!(6)));
    }

    // Journals: gapless, seq = version, in one query for all workflows...
    let bad = db.reader().journal_gaps().await?;
    assert!(bad.is_empty(), "journals with gaps: {bad:?}");
    // ...exactly one `activity_completed` per call...
    let calls = db.reader().completed_calls().await?;
    assert_eq!(calls.len(), WORKFLOWS * STEPS as usize);
    assert!(
        calls
            .iter()
            .all(|(_, seq, n)| *n == 1 && (1..=STEPS).contains(seq)),
        "calls completed more than once: {:?}",
        calls.iter().filter(|c| c.2 != 1).collect::<Vec<_>>()
    );
    // ...and each workflow's snapshot is the fold of its log.
    for id in &ids {
        Journal::load(&db, *id).await.assert_consistent();
    }

    let completed_attempts = db.reader().completed_attempt_workers().await?;
    assert_eq!(completed_attempts.len(), WORKFLOWS * STEPS as usize);
    assert!(
        completed_attempts
            .iter()
            .all(|w| w.is_some_and(|w| worker_ids.contains(&w))),
        "every attempt ran on one of the pool's workers"
    );
    assert!(probe.started() as usize >= WORKFLOWS * STEPS as usize);

    for worker in workers {
        worker.shutdown().await?;
    }
    let registered = engine.workers().await?;
    assert_eq!(registered.len(), WORKERS);
    assert!(
        registered
            .iter()
            .all(|w| w.stopped_at.is_some() && !w.alive)
    );
    Ok(())
}

/// An API process signals many workflows while two worker processes drive them: every signal is
/// applied once, in send order, whichever worker holds the workflow when it arrives.
async fn signals_from_another_process_apply_in_order_under_load(db: Backend) -> anyhow::Result<()> {
    const INBOXES: usize = 40;
    const ITEMS: usize = 4;
    let probe = Probe::new();
    let registry = registry(&probe);
    let api = db.another_store(4).await;
    let engine = Engine::new(api.clone(), registry.clone());
    let mut workers = Vec::new();
    for _ in 0..2 {
        let store = db.another_store(6).await;
        workers.push(Worker::new(store, registry.clone(), fast_config()).spawn());
    }

    let mut ids = Vec::new();
    for _ in 0..INBOXES {
        ids.push(
            engine
                .start("test.inbox", None, json!({ "step_ms": 5 }))
                .await?
                .id,
        );
    }
    // Interleaved: item i goes to every inbox before item i + 1.
    for i in 0..ITEMS {
        for id in &ids {
            engine
                .signal(*id, "add", json!(format!("item-{i}")))
                .await?;
        }
    }
    for id in &ids {
        engine.signal(*id, "close", json!(null)).await?;
    }

    let items: Vec<String> = (0..ITEMS).map(|i| format!("item-{i}")).collect();
    for id in &ids {
        let done = wait_for_status(&api, *id, Status::Completed).await;
        assert_eq!(done.output, Some(json!(items)), "{id}");
        assert_eq!(done.signals_unconsumed, 0);
        let journal = Journal::load(&db, *id).await;
        journal.assert_consistent();
        let causes: Vec<i64> = journal
            .events
            .iter()
            .filter_map(|e| match cause(&e.event) {
                Some(Cause::Signal { signal_seq, .. }) => Some(*signal_seq),
                _ => None,
            })
            .collect();
        assert_eq!(causes, (1..=ITEMS as i64 + 1).collect::<Vec<i64>>(), "{id}");
        assert!(journal.signals.iter().all(|(_, _, at)| at.is_some()));
        assert_eq!(journal.attempts.len(), ITEMS);
    }
    for worker in workers {
        worker.shutdown().await?;
    }
    Ok(())
}
