//! Queries read from the journal alone: listing with filters and pages, history windows, the
//! worker registry, and unknown ids.

mod common;

use common::*;
use engine::{Engine, EngineError, ListQuery, Status, Worker, WorkflowId};
use serde_json::json;
use std::time::Duration;

conformance! {
    list_filters_by_status_and_type_and_pages_newest_first,
    history_windows_and_unknown_ids,
    worker_registry_shows_alive_then_stopped,
}

async fn list_filters_by_status_and_type_and_pages_newest_first(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let engine = Engine::new(store.clone(), registry(&probe));
    // Zero steps complete at start; the others wait for a worker or a timer.
    let mut completed = Vec::new();
    for _ in 0..2 {
        let s = engine
            .start("test.chain", None, json!({ "steps": 0, "sleep_ms": 0 }))
            .await?;
        completed.push(s.id);
    }
    let mut chains = Vec::new();
    for _ in 0..3 {
        let s = engine
            .start("test.chain", None, json!({ "steps": 1, "sleep_ms": 0 }))
            .await?;
        chains.push(s.id);
    }
    let mut sleepers = Vec::new();
    for _ in 0..2 {
        let s = engine
            .start("test.sleepy", None, json!({ "ms": 60_000 }))
            .await?;
        sleepers.push(s.id);
    }

    let ids = |records: Vec<engine::WorkflowRecord>| -> Vec<WorkflowId> {
        records.into_iter().map(|r| r.id).collect()
    };
    let newest_first = |mut v: Vec<WorkflowId>| {
        v.sort();
        v.reverse();
        v
    };
    let all = ids(engine.list(ListQuery::default()).await?);
    let mut expected: Vec<WorkflowId> = completed
        .iter()
        .chain(&chains)
        .chain(&sleepers)
        .copied()
        .collect();
    expected = newest_first(expected);
    assert_eq!(
        all, expected,
        "every workflow, newest (largest v7 id) first"
    );

    let by_status = |status| ListQuery {
        status: Some(status),
        ..ListQuery::default()
    };
    assert_eq!(
        ids(engine.list(by_status(Status::Completed)).await?),
        newest_first(completed.clone())
    );
    assert!(engine.list(by_status(Status::Failed)).await?.is_empty());
    assert_eq!(
        ids(engine
            .list(ListQuery {
                workflow_type: Some("test.sleepy".into()),
                ..ListQuery::default()
            })
            .await?),
        newest_first(sleepers.clone())
    );
    assert_eq!(
        ids(engine
            .list(ListQuery {
                status: Some(Status::Running),
                workflow_type: Some("test.chain".into()),
                ..ListQuery::default()
            })
            .await?),
        newest_first(chains.clone())
    );

    // Pages of three, each after the last id of the previous one.
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = ids(engine
            .list(ListQuery {
                limit: Some(3),
                cursor,
                ..ListQuery::default()
            })
            .await?);
        assert!(page.len() <= 3);
        let Some(last) = page.last().copied() else {
            break;
        };
        paged.extend(page);
        cursor = Some(last);
    }
    assert_eq!(paged, expected);

    // The stored records read back as written.
    for id in &completed {
        let r = snapshot(&store, *id).await;
        assert_eq!(
            (r.status, r.output.clone()),
            (Status::Completed, Some(json!(0)))
        );
        assert!(r.finished_at.is_some() && r.run_at.is_none());
        Journal::load(&db, *id).await.assert_consistent();
    }
    for id in chains.iter().chain(&sleepers) {
        let r = snapshot(&store, *id).await;
        assert!(r.finished_at.is_none() && r.run_at.is_some());
        Journal::load(&db, *id).await.assert_consistent();
    }
    Ok(())
}

async fn history_windows_and_unknown_ids(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let started = engine
        .start("test.chain", None, json!({ "steps": 2, "sleep_ms": 0 }))
        .await?;
    Worker::new(store.clone(), registry, fast_config())
        .run_until_idle()
        .await?;

    let full = engine.history(started.id, 0, 100).await?;
    let seqs: Vec<i64> = full.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<i64>>());
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    for (event, row) in full.iter().zip(&journal.events) {
        assert_eq!(
            (&event.kind, event.created_at),
            (&row.event, row.created_at)
        );
    }
    let window: Vec<i64> = engine
        .history(started.id, 2, 3)
        .await?
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(window, [3, 4, 5]);
    assert!(engine.history(started.id, 7, 100).await?.is_empty());
    let times: Vec<_> = full.iter().map(|e| e.created_at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    let attempts = engine.attempts(started.id).await?;
    assert_eq!(attempts.len(), 2);
    for (a, row) in attempts.iter().zip(&journal.attempts) {
        assert_eq!(
            (
                a.call_seq,
                a.attempt as i32,
                a.outcome.as_str(),
                a.started_at,
                a.finished_at
            ),
            (
                row.call_seq,
                row.attempt,
                row.outcome.as_str(),
                row.started_at,
                row.finished_at
            )
        );
        assert_eq!(a.worker_id.map(|w| w.0), row.worker_id);
    }

    let missing = WorkflowId::new();
    assert!(matches!(
        engine.history(missing, 0, 10).await,
        Err(EngineError::NotFound(id)) if id == missing
    ));
    assert!(matches!(
        engine.get(missing).await,
        Err(EngineError::NotFound(id)) if id == missing
    ));
    assert!(engine.attempts(missing).await?.is_empty());
    Ok(())
}

async fn worker_registry_shows_alive_then_stopped(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    assert!(engine.workers().await?.is_empty());

    let worker = Worker::new(store.clone(), registry, fast_config());
    let id = worker.id();
    let handle = worker.spawn();
    let alive = wait_for("the worker to register", || {
        let engine = engine.clone();
        async move {
            let workers = engine.workers().await.ok()?;
            workers.into_iter().find(|w| w.id == id && w.alive)
        }
    })
    .await;
    assert_eq!(alive.slots, fast_config().slots as i32);
    assert_eq!(alive.lease_ttl_ms, 5_000);
    assert_eq!(alive.pid, std::process::id() as i32);
    assert!(alive.stopped_at.is_none());
    // Heartbeats move forward while it runs.
    let later = wait_for("a later heartbeat", || {
        let engine = engine.clone();
        async move {
            let w = engine
                .workers()
                .await
                .ok()?
                .into_iter()
                .find(|w| w.id == id)?;
            (w.heartbeat_at > alive.heartbeat_at).then_some(w)
        }
    })
    .await;
    assert!(later.alive);

    handle.shutdown().await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped = engine.workers().await?;
    assert_eq!(stopped.len(), 1);
    assert!(stopped[0].stopped_at.is_some() && !stopped[0].alive);
    assert_eq!(stopped[0].slots_used, 0);
    Ok(())
}
