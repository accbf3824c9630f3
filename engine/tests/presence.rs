//! Dead-worker detection on PostgreSQL: a worker process that dies ends its database session,
//! and a peer moves its workflows at once instead of after the lease TTL (two minutes here, far
//! beyond the test's wait). SQLite has no sessions and keeps the lease as its only detector.

mod common;

use common::*;
use engine::{Engine, Registry, Status, Worker, WorkerConfig, WorkerId, WorkflowId};
use serde_json::json;
use std::time::Duration;

/// Settings whose lease would keep a dead worker's workflows for two minutes.
fn long_lease(slots: usize) -> WorkerConfig {
    WorkerConfig {
        slots,
        claim_batch: slots,
        lease_ttl: Duration::from_secs(120),
        heartbeat_interval: Duration::from_secs(1),
        ..fast_config()
    }
}

async fn start_call(engine: &Engine, value: i64, sleep_ms: u64) -> WorkflowId {
    engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": value, "sleep_ms": sleep_ms } }),
        )
        .await
        .expect("start")
        .id
}

/// Waits until `worker` is marked stopped in the registry and no longer holds a live lease.
async fn wait_reaped(db: &Backend, worker: WorkerId, held: WorkflowId) {
    let store = db.store();
    wait_for("the dead worker to be reaped", || {
        let store = store.clone();
        async move {
            let stopped = store
                .workers()
                .await
                .ok()?
                .into_iter()
                .any(|w| w.id == worker && w.stopped_at.is_some());
            let record = store.get_workflow(held).await.ok()??;
            let lease_live = record.lease_owner == Some(worker)
                && record
                    .lease_expires_at
                    .is_some_and(|t| t > chrono::Utc::now() + chrono::Duration::seconds(60));
            (stopped && !lease_live).then_some(())
        }
    })
    .await;
}

#[sqlx::test(migrations = false)]
async fn a_killed_workers_workflows_move_without_waiting_for_the_lease(
    pool: sqlx::PgPool,
) -> anyhow::Result<()> {
    let db = Backend::postgres(pool).await;
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());

    let worker_a = Worker::new(store.clone(), registry.clone(), long_lease(8));
    let a = worker_a.id();
    let worker_a = worker_a.spawn();
    let id = start_call(&engine, 7, 1_500).await;
    wait_for("A to start the activity", || {
        let probe = probe.clone();
        async move { (probe.started() == 1).then_some(()) }
    })
    .await;
    let worker_b = Worker::new(store.clone(), registry, long_lease(8));
    let b = worker_b.id();
    let worker_b = worker_b.spawn();
    // B is registered (and watching A) once it shows in the registry.
    wait_for("B to register", || {
        let store = store.clone();
        async move {
            store
                .workers()
                .await
                .ok()?
                .iter()
                .any(|w| w.id == b)
                .then_some(())
        }
    })
    .await;

    worker_a.crash().await;
    let done = wait_for_status(&store, id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(7)));
    let attempts: Vec<(i32, String, Option<uuid::Uuid>)> = Journal::load(&db, id)
        .await
        .attempts
        .iter()
        .map(|r| (r.attempt, r.outcome.as_str().to_owned(), r.worker_id))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "abandoned".to_owned(), Some(a.0)),
            (2, "completed".to_owned(), Some(b.0))
        ]
    );
    let a_row = store.workers().await?.into_iter().find(|w| w.id == a);
    assert!(
        a_row.is_some_and(|w| w.stopped_at.is_some()),
        "A is marked stopped"
    );
    worker_b.shutdown().await?;
    db.finish(true).await;
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn a_worker_that_starts_after_everyone_died_reaps_them(
    pool: sqlx::PgPool,
) -> anyhow::Result<()> {
    let db = Backend::postgres(pool).await;
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());

    let worker_a = Worker::new(store.clone(), registry.clone(), long_lease(8)).spawn();
    let id = start_call(&engine, 9, 1_500).await;
    wait_for("A to start the activity", || {
        let probe = probe.clone();
        async move { (probe.started() == 1).then_some(()) }
    })
    .await;
    worker_a.crash().await;

    let worker_b = Worker::new(store.clone(), registry, long_lease(8)).spawn();
    let done = wait_for_status(&store, id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(9)));
    worker_b.shutdown().await?;
    db.finish(true).await;
    Ok(())
}

/// Three workers in a ring: the first claims nothing (an empty registry) and only watches.
/// Killing the second and then the third: each death is seen, each time by a retargeted watch.
#[sqlx::test(migrations = false)]
async fn the_watch_ring_follows_deaths_and_joins(pool: sqlx::PgPool) -> anyhow::Result<()> {
    let db = Backend::postgres(pool).await;
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());

    let watcher = Worker::new(store.clone(), Registry::new(), long_lease(1)).spawn();
    let worker_b = Worker::new(store.clone(), registry.clone(), long_lease(1));
    let b = worker_b.id();
    let worker_b = worker_b.spawn();
    let first = start_call(&engine, 1, 60_000).await;
    wait_for("B to start the first activity", || {
        let probe = probe.clone();
        async move { (probe.started() == 1).then_some(()) }
    })
    .await;
    let worker_c = Worker::new(store.clone(), registry.clone(), long_lease(1));
    let c = worker_c.id();
    let worker_c = worker_c.spawn();
    let second = start_call(&engine, 2, 60_000).await;
    wait_for("C to start the second activity", || {
        let probe = probe.clone();
        async move { (probe.started() == 2).then_some(()) }
    })
    .await;
    assert_eq!(snapshot(&store, first).await.lease_owner, Some(b));
    assert_eq!(snapshot(&store, second).await.lease_owner, Some(c));

    worker_b.crash().await;
    wait_reaped(&db, b, first).await;
    worker_c.crash().await;
    wait_reaped(&db, c, second).await;

    watcher.shutdown().await?;
    db.finish(true).await;
    Ok(())
}

/// A workflow started in a process with a local worker is created leased to it and driven at
/// once; when the local worker is full, it is created unleased and claimed as usual.
#[sqlx::test(migrations = false)]
async fn local_start_hands_the_workflow_to_a_local_worker(
    pool: sqlx::PgPool,
) -> anyhow::Result<()> {
    let db = Backend::postgres(pool).await;
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    // A long poll: the claim loop holds the slot only while a claim query runs, and after its
    // start-up claims it runs none until a notification.
    let config = WorkerConfig {
        poll_interval: Duration::from_secs(60),
        ..long_lease(1)
    };
    let local = Worker::new(store.clone(), registry.clone(), config);
    let local_id = local.id();
    engine.dispatch_to(&local);
    let local = local.spawn();
    wait_for("the local worker to register", || {
        let store = store.clone();
        async move {
            let workers = store.workers().await.ok()?;
            workers.iter().any(|w| w.id == local_id).then_some(())
        }
    })
    .await;
    // Let the start-up claims (at start and when the listener connects) finish.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let first = start_call(&engine, 1, 500).await;
    let leased = snapshot(&store, first).await;
    assert_eq!(
        leased.lease_owner,
        Some(local_id),
        "created leased to the local worker"
    );
    assert_eq!(leased.lease_epoch, 1);
    // The only slot is busy: the next one is created unleased and claimed later.
    let second = start_call(&engine, 2, 0).await;
    assert_eq!(snapshot(&store, second).await.lease_owner, None);

    for (id, value) in [(first, 1), (second, 2)] {
        let done = wait_for_status(&store, id, Status::Completed).await;
        assert_eq!(done.output, Some(json!(value)));
        let journal = Journal::load(&db, id).await;
        journal.assert_consistent();
        assert!(
            journal
                .attempts
                .iter()
                .all(|a| a.worker_id == Some(local_id.0))
        );
    }
    local.shutdown().await?;
    db.finish(true).await;
    Ok(())
}

/// The watchers' long waits pin no old snapshot: a blocked statement keeps its snapshot, and
/// while it does PostgreSQL keeps every row version of the database that died after it, so
/// claims walk ever more dead index entries. One watcher sleeps (alone, then in a ring of two
/// it waits on its peer's lock): each must move its snapshot past a transaction committed
/// after the waits began.
#[sqlx::test(migrations = false)]
async fn watchers_hold_no_old_snapshot_while_they_wait(pool: sqlx::PgPool) -> anyhow::Result<()> {
    let db = Backend::postgres(pool.clone()).await;
    let store = db.store();
    let workers = [
        Worker::new(store.clone(), Registry::new(), long_lease(1)).spawn(),
        Worker::new(store.clone(), Registry::new(), long_lease(1)).spawn(),
    ];
    // Both watchers in their wait (a statement that has been running for a moment).
    wait_for("both watchers to wait", || {
        let pool = pool.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and application_name = 'kodomasu-watch'
                   and state = 'active'
                   and query_start < now() - interval '300 milliseconds'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (waiting == 2).then_some(())
        }
    })
    .await;
    // The 32-bit xid, as `backend_xmin` shows it.
    let after: i64 = sqlx::query_scalar("select txid_current() % 4294967296")
        .fetch_one(&pool)
        .await?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let pinned: Vec<(String, Option<String>)> = sqlx::query_as(
        "select query, backend_xmin::text from pg_stat_activity
         where datname = current_database() and application_name = 'kodomasu-watch'
           and backend_xmin is not null and backend_xmin::text::bigint <= $1",
    )
    .bind(after)
    .fetch_all(&pool)
    .await?;
    assert!(
        pinned.is_empty(),
        "watchers pin snapshots older than xid {after}: {pinned:?}"
    );
    for worker in workers {
        worker.shutdown().await?;
    }
    Ok(())
}
