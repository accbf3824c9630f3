//! Group commit on PostgreSQL: step commits that arrive together go to the database in one
//! statement and one transaction, and each keeps its own fence. A commit whose lease or version
//! no longer matches is refused (`Fenced`) and writes nothing, while the rest of its batch
//! commits; a batch the database refuses as a whole is retried commit by commit, so a bad
//! commit fails alone. Fences look their rows up by primary key, whatever plan is cached.

use engine::store::{Committed, LeaseAfter, LeaseRenewal, NewAttempt, NewWorkflow, StepCommit};
use engine::{
    AttemptOutcome, Cause, EventKind, GroupCommit, Pending, PgStore, Status, Store, StoreError,
    WorkerId, WorkflowId,
};
use futures::future::join_all;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;

const TTL: Duration = Duration::from_secs(30);

/// One batch at a time, so commits sent together queue behind the first and share a batch.
fn batching_store(pool: &PgPool) -> PgStore {
    PgStore::with_group_commit(
        pool.clone(),
        GroupCommit {
            max_in_flight: 1,
            max_batch: 64,
        },
    )
}

/// Creates `n` running workflows leased to `worker` (epoch 1); workflow `i` starts at
/// version 1 + i % 3, so the commits of one batch carry different versions.
async fn leased(store: &PgStore, worker: WorkerId, n: usize) -> anyhow::Result<Vec<WorkflowId>> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = WorkflowId::new();
        let new = NewWorkflow {
            id,
            workflow_type: "test.batch".into(),
            key: Some(format!("k{i}")),
            tag: None,
            input: json!({ "i": i }),
            status: Status::Running,
            state: json!({ "step": 0 }),
            pending: Pending::Nothing,
            output: None,
            error: None,
            next_call_seq: 2,
            run_at: Some(chrono::Utc::now()),
            events: std::iter::once(EventKind::Started {
                workflow_type: "test.batch".into(),
                key: Some(format!("k{i}")),
                input: json!({ "i": i }),
            })
            .chain((0..i % 3).map(|_| EventKind::Paused))
            .collect(),
        };
        let (created, claimed) = store.create_workflow_leased(new, worker, TTL).await?;
        assert!(created.created && claimed.is_some(), "created leased");
        ids.push(id);
    }
    Ok(ids)
}

/// The version workflow `i` of [`leased`] starts at.
fn first_version(i: usize) -> i64 {
    1 + (i % 3) as i64
}

/// Attempt 1 of call 1 completed and workflow `i` moves to step 1 (two more events).
fn step(id: WorkflowId, worker: WorkerId, epoch: i64, i: usize) -> StepCommit {
    StepCommit {
        id,
        worker,
        epoch,
        expected_version: first_version(i),
        status: Status::Running,
        state: json!({ "step": 1, "i": i }),
        pending: Pending::Signal,
        output: None,
        error: None,
        next_call_seq: 2,
        cancel_requested: false,
        events: vec![
            EventKind::ActivityCompleted {
                call_seq: 1,
                name: "test.step".into(),
                attempt: 1,
                output: json!(i),
            },
            EventKind::Transitioned {
                cause: Cause::Activity {
                    call_seq: 1,
                    name: "test.step".into(),
                },
                state: json!({ "step": 1, "i": i }),
                pending: Pending::Signal,
                status: Status::Running,
            },
        ],
        attempts: vec![attempt(worker)],
        consumed_signals: Vec::new(),
        signal_seen: 0,
        lease: LeaseAfter::Keep,
        lease_ttl: TTL,
        clear_heartbeat: false,
        heartbeat_details: Some(json!({ "progress": i })),
    }
}

fn attempt(worker: WorkerId) -> NewAttempt {
    NewAttempt {
        call_seq: 1,
        attempt: 1,
        activity_name: "test.step".into(),
        worker_id: Some(worker),
        outcome: AttemptOutcome::Completed,
        error: None,
        started_at: Some(chrono::Utc::now()),
        duration_ms: Some(0),
    }
}

async fn count(pool: &PgPool, sql: &str, id: WorkflowId) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).bind(id).fetch_one(pool).await?)
}

#[sqlx::test(migrations = false)]
async fn each_commit_in_a_batch_keeps_its_own_fence(pool: PgPool) -> anyhow::Result<()> {
    let store = batching_store(&pool);
    store.migrate().await?;
    let worker = WorkerId::new();
    let ids = leased(&store, worker, 40).await?;

    // Every odd commit carries a stale epoch: it must be refused, the even ones must land.
    // Sent newest id first, so a batch's id order (its lock order) is not its arrival order.
    let mut answers: Vec<Result<Committed, StoreError>> =
        join_all(ids.iter().enumerate().rev().map(|(i, id)| {
            let epoch = if i % 2 == 0 { 1 } else { 0 };
            store.commit(step(*id, worker, epoch, i))
        }))
        .await;
    answers.reverse();

    for (i, (id, answer)) in ids.iter().zip(&answers).enumerate() {
        let version: i64 = count(
            &pool,
            "select version from kodomasu.workflows where id = $1",
            *id,
        )
        .await?;
        let events = count(
            &pool,
            "select count(*) from kodomasu.events where workflow_id = $1",
            *id,
        )
        .await?;
        let attempts = count(
            &pool,
            "select count(*) from kodomasu.activity_attempts where workflow_id = $1",
            *id,
        )
        .await?;
        if i % 2 == 0 {
            let done = answer
                .as_ref()
                .map_err(|e| anyhow::anyhow!("commit {i}: {e}"))?;
            let v = first_version(i) + 2;
            assert_eq!(done.version, v, "commit {i} answered its own version");
            assert_eq!((version, events, attempts), (v, v, 1), "commit {i}");
            let (state, seqs): (serde_json::Value, Vec<i64>) = sqlx::query_as(
                "select w.state, array_agg(e.seq order by e.seq) from kodomasu.workflows w
                 join kodomasu.events e on e.workflow_id = w.id where w.id = $1 group by w.state",
            )
            .bind(*id)
            .fetch_one(&pool)
            .await?;
            assert_eq!(
                state,
                json!({ "step": 1, "i": i }),
                "commit {i} wrote its own state"
            );
            assert_eq!(
                seqs,
                (1..=v).collect::<Vec<_>>(),
                "gapless seqs for commit {i}"
            );
        } else {
            assert!(
                matches!(answer, Err(StoreError::Fenced)),
                "commit {i}: expected Fenced, got {answer:?}"
            );
            let v = first_version(i);
            assert_eq!(
                (version, events, attempts),
                (v, v, 0),
                "fenced commit {i} wrote"
            );
        }
    }

    // The commits shared transactions: rows written by one transaction share its xmin.
    let transactions: i64 = sqlx::query_scalar(
        "select count(distinct xmin::text) from kodomasu.workflows w
         where exists (select 1 from kodomasu.activity_attempts a where a.workflow_id = w.id)",
    )
    .fetch_one(&pool)
    .await?;
    assert!(
        transactions < 20,
        "20 commits sent together took {transactions} transactions: not batched"
    );
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn a_bad_commit_fails_alone_and_its_batch_commits(pool: PgPool) -> anyhow::Result<()> {
    let store = batching_store(&pool);
    store.migrate().await?;
    let worker = WorkerId::new();
    let ids = leased(&store, worker, 12).await?;

    // Commit 5 carries the same attempt twice: its attempt rows collide on their key, which
    // the database refuses for the whole statement.
    let answers = join_all(ids.iter().enumerate().map(|(i, id)| {
        let mut c = step(*id, worker, 1, i);
        if i == 5 {
            c.attempts.push(attempt(worker));
        }
        store.commit(c)
    }))
    .await;

    for (i, (id, answer)) in ids.iter().zip(&answers).enumerate() {
        let version = count(
            &pool,
            "select version from kodomasu.workflows where id = $1",
            *id,
        )
        .await?;
        if i == 5 {
            assert!(
                matches!(answer, Err(StoreError::Database(_))),
                "the bad commit: expected a database error, got {answer:?}"
            );
            assert_eq!(version, first_version(i), "the bad commit wrote");
        } else {
            assert!(answer.is_ok(), "commit {i}: {answer:?}");
            assert_eq!(version, first_version(i) + 2, "commit {i}");
        }
    }
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn a_lone_commit_is_not_held_back(pool: PgPool) -> anyhow::Result<()> {
    // With the default settings a commit that finds no batch in flight goes at once, alone.
    let store = PgStore::new(pool.clone());
    store.migrate().await?;
    let worker = WorkerId::new();
    let ids = leased(&store, worker, 3).await?;
    for (i, id) in ids.iter().enumerate() {
        let done = store.commit(step(*id, worker, 1, i)).await?;
        assert_eq!(done.version, first_version(i) + 2);
    }
    let transactions: i64 = sqlx::query_scalar(
        "select count(distinct xmin::text) from kodomasu.workflows w
         where exists (select 1 from kodomasu.activity_attempts a where a.workflow_id = w.id)",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        transactions, 3,
        "one commit after another: one transaction each"
    );
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn creations_sent_together_share_a_batch_and_keep_key_idempotence(
    pool: PgPool,
) -> anyhow::Result<()> {
    let store = batching_store(&pool);
    store.migrate().await?;
    let worker = WorkerId::new();
    // 30 creations at once: keys k0..k9 each three times, alternately leased and not.
    let news: Vec<NewWorkflow> = (0..30)
        .map(|i| NewWorkflow {
            id: WorkflowId::new(),
            workflow_type: "test.batch".into(),
            key: Some(format!("k{}", i % 10)),
            tag: Some("t".into()),
            input: json!({ "i": i }),
            status: Status::Running,
            state: json!({ "step": 0 }),
            pending: Pending::Nothing,
            output: None,
            error: None,
            next_call_seq: 1,
            run_at: Some(chrono::Utc::now()),
            events: vec![EventKind::Started {
                workflow_type: "test.batch".into(),
                key: Some(format!("k{}", i % 10)),
                input: json!({ "i": i }),
            }],
        })
        .collect();
    let answers = join_all(news.into_iter().enumerate().map(|(i, new)| {
        let store = &store;
        async move {
            if i % 2 == 0 {
                store.create_workflow_leased(new, worker, TTL).await
            } else {
                store.create_workflow(new).await.map(|c| (c, None))
            }
        }
    }))
    .await;

    let mut by_key: std::collections::HashMap<usize, Vec<(WorkflowId, bool)>> = Default::default();
    for (i, answer) in answers.into_iter().enumerate() {
        let (created, claimed) = answer.map_err(|e| anyhow::anyhow!("creation {i}: {e}"))?;
        if let Some(c) = &claimed {
            assert!(created.created, "creation {i}: a lease only for a new row");
            assert_eq!(c.record.id, created.id);
            assert_eq!(
                (c.record.lease_owner, c.record.lease_epoch),
                (Some(worker), 1)
            );
            assert_eq!(c.record.version, 1, "creation {i}: its own row's version");
        }
        by_key
            .entry(i % 10)
            .or_default()
            .push((created.id, created.created));
    }
    for (key, answers) in by_key {
        let created: Vec<_> = answers.iter().filter(|(_, new)| *new).collect();
        assert_eq!(
            created.len(),
            1,
            "key k{key}: exactly one creation made the row"
        );
        assert!(
            answers.iter().all(|(id, _)| *id == created[0].0),
            "key k{key}: every creation answers the same id"
        );
    }
    let (rows, events, transactions): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from kodomasu.workflows), (select count(*) from kodomasu.events),
                (select count(distinct xmin::text) from kodomasu.workflows)",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        (rows, events),
        (10, 10),
        "one row and one first event per key"
    );
    assert!(
        transactions < 10,
        "10 rows created in {transactions} transactions: not batched"
    );
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn callers_that_go_away_take_no_batch_slot_with_them(pool: PgPool) -> anyhow::Result<()> {
    let store = std::sync::Arc::new(batching_store(&pool));
    store.migrate().await?;
    let worker = WorkerId::new();
    let ids = leased(&store, worker, 161).await?;
    let (last, rest) = ids.split_last().expect("ids");
    // Rounds of 16 commits at once, half of them aborted at different points: while queued,
    // while handed the slot, while their batch is written.
    for (round, chunk) in rest.chunks(16).enumerate() {
        let tasks: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (store, c) = (store.clone(), step(*id, worker, 1, round * 16 + i));
                tokio::spawn(async move { store.commit(c).await })
            })
            .collect();
        let mut tasks = tasks.into_iter();
        if round % 2 == 0 {
            // The first caller leads the first batch; when it is answered, the slot has just
            // been sent to a waiting caller, which is aborted before it can use it.
            if let Some(first) = tasks.next() {
                first
                    .await?
                    .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
            }
        } else {
            for _ in 0..round % 4 {
                tokio::task::yield_now().await;
            }
        }
        let mut kept = Vec::new();
        for (i, t) in tasks.enumerate() {
            if i % 2 == 0 {
                t.abort();
            } else {
                kept.push(t);
            }
        }
        for t in kept {
            t.await?
                .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        }
    }
    // Nothing is stuck: a commit after all that goes through at once.
    let i = ids.len() - 1;
    let done = tokio::time::timeout(
        Duration::from_secs(10),
        store.commit(step(*last, worker, 1, i)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("a commit after aborted callers waited 10 s: slot lost"))??;
    assert_eq!(done.version, first_version(i) + 2);
    Ok(())
}

/// Index scans of `workflows`' primary key and of `workflows_lease_owner`, once at least
/// `at_least` have been reported: a session's counters reach the statistics when it ends.
async fn workflow_index_scans(pool: &PgPool, at_least: i64) -> anyhow::Result<(i64, i64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (pkey, lease_owner): (i64, i64) = sqlx::query_as(
            "select coalesce(sum(idx_scan) filter (where indexrelname = 'workflows_pkey'), 0)::bigint,
                    coalesce(sum(idx_scan) filter (where indexrelname = 'workflows_lease_owner'), 0)::bigint
             from pg_stat_user_indexes where schemaname = 'kodomasu'",
        )
        .fetch_one(pool)
        .await?;
        if pkey + lease_owner >= at_least {
            return Ok((pkey, lease_owner));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {pkey} + {lease_owner} index scans of workflows reported, expected {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fence finds its row by primary key, never through `workflows_lease_owner`: a plan that
/// does walks every entry the worker ever left in that index, dead versions included, so each
/// commit got slower with every workflow the worker had run. The statements are prepared while
/// the table is new and small, where a generic plan would otherwise pick that index, and run
/// more than five times on one connection, so the generic plan is the one in use.
#[sqlx::test(migrations = false)]
async fn fences_find_their_row_by_primary_key(pool: PgPool) -> anyhow::Result<()> {
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await?;
    let store = PgStore::new(one.clone());
    store.migrate().await?;
    let worker = WorkerId::new();
    let ids = leased(&store, worker, 20).await?;
    for (i, id) in ids.iter().enumerate() {
        store.commit(step(*id, worker, 1, i)).await?;
    }
    let leases: Vec<LeaseRenewal> = ids
        .iter()
        .map(|id| LeaseRenewal {
            id: *id,
            epoch: 1,
            heartbeat: None,
        })
        .collect();
    for _ in 0..8 {
        let renewed = store.renew_leases(worker, TTL, &leases).await?;
        assert_eq!(renewed.len(), ids.len());
    }
    for id in &ids {
        store.release_leases(worker, &[(*id, 1)]).await?;
    }
    one.close().await;

    let (by_pkey, by_lease_owner) = workflow_index_scans(&pool, 20).await?;
    assert_eq!(
        by_lease_owner, 0,
        "fences looked rows up through workflows_lease_owner ({by_pkey} by primary key)"
    );
    Ok(())
}
