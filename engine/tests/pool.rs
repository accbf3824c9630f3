//! A worker pool under load: several workers with several slots drive many workflows to
//! completion, each journaled gaplessly with every activity result recorded exactly once.

mod common;

use common::*;
use engine::{Engine, PgStore, Status, Worker, WorkerConfig};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::collections::BTreeSet;
use std::sync::Arc;

const WORKERS: usize = 4;
const WORKFLOWS: usize = 200;
const STEPS: i64 = 3;

/// Each worker gets its own pool, as separate processes would (the test pool's five
/// connections are too few for four listeners and 32 slots).
#[sqlx::test(migrations = false)]
async fn many_workers_complete_many_workflows(
    _pool_options: PgPoolOptions,
    connect: PgConnectOptions,
) -> anyhow::Result<()> {
    let new_pool = |size: u32| {
        PgPoolOptions::new()
            .max_connections(size)
            .connect_with(connect.clone())
    };
    let client_pool = new_pool(4).await?;
    let store = setup(client_pool.clone()).await;
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());

    let mut pools: Vec<PgPool> = vec![client_pool];
    let mut workers = Vec::new();
    let mut worker_ids = BTreeSet::new();
    for _ in 0..WORKERS {
        let pool = new_pool(10).await?;
        pools.push(pool.clone());
        let worker = Worker::new(
            Arc::new(PgStore::new(pool)),
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
        let store = store.clone();
        async move {
            let (finished, completed): (i64, i64) = sqlx::query_as(
                "select count(*) filter (where finished_at is not null),
                        count(*) filter (where status = 'completed')
                 from kodomasu.workflows",
            )
            .fetch_one(store.pool())
            .await
            .ok()?;
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
    let bad: Vec<(uuid::Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "select w.id, w.version, count(e.seq), coalesce(min(e.seq), 0), coalesce(max(e.seq), 0)
         from kodomasu.workflows w left join kodomasu.events e on e.workflow_id = w.id
         group by w.id, w.version
         having count(e.seq) <> w.version or min(e.seq) <> 1 or max(e.seq) <> w.version",
    )
    .fetch_all(store.pool())
    .await?;
    assert!(bad.is_empty(), "journals with gaps: {bad:?}");
    // ...exactly one `activity_completed` per call...
    let calls: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "select workflow_id, (payload->>'call_seq')::bigint, count(*)
         from kodomasu.events where kind = 'activity_completed'
         group by 1, 2 order by 1, 2",
    )
    .fetch_all(store.pool())
    .await?;
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
        Journal::load(&store, *id).await.assert_consistent();
    }

    let completed_attempts: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "select worker_id from kodomasu.activity_attempts where outcome = 'completed'",
    )
    .fetch_all(store.pool())
    .await?;
    assert_eq!(completed_attempts.len(), WORKFLOWS * STEPS as usize);
    assert!(
        completed_attempts.iter().all(|(w,)| worker_ids.contains(w)),
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
    for pool in pools {
        pool.close().await;
    }
    Ok(())
}
