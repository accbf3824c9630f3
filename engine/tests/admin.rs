//! What the admin API reads from the engine: lists filtered by tag, creation time and a key/id
//! search, counts per status, and the global event feed (in order, resumable, and on
//! PostgreSQL never past an id a transaction in flight may still commit).

mod common;

use common::*;
use engine::{
    Engine, EventFeed, ListQuery, NoSignal, PgStore, Status, Store, Transition, Workflow,
    WorkflowError, WorkflowId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

conformance! {
    lists_filter_by_tag_time_and_search_and_count_per_status,
    the_feed_delivers_every_event_once_in_order,
}

/// `test.tagged`: waits for a signal forever; tagged with its input's `group`.
#[derive(Debug, Clone, Copy)]
struct Tagged;

#[derive(Debug, Serialize, Deserialize)]
struct TaggedInput {
    group: Option<String>,
}

impl Workflow for Tagged {
    const NAME: &'static str = "test.tagged";
    type Input = TaggedInput;
    type State = Value;
    type Output = Value;
    type Signal = NoSignal;

    fn tag(&self, input: &TaggedInput) -> Option<String> {
        input.group.clone()
    }

    fn start(&self, _input: TaggedInput) -> Transition<Value, Value> {
        Transition::new(json!({"waiting": true}), engine::Next::WaitForSignal)
    }

    fn on_activity(&self, state: Value, _: engine::ActivityOutcome) -> Transition<Value, Value> {
        Transition::fail(state, WorkflowError::new("unexpected", "no activities"))
    }
}

fn engine_over(store: Arc<dyn Store>) -> Engine {
    Engine::new(store, registry(&Probe::new()).workflow(Tagged))
}

async fn start(engine: &Engine, key: &str, group: Option<&str>) -> anyhow::Result<WorkflowId> {
    Ok(engine
        .start("test.tagged", Some(key.into()), json!({ "group": group }))
        .await?
        .id)
}

fn ids(records: Vec<engine::WorkflowRecord>) -> Vec<WorkflowId> {
    records.into_iter().map(|r| r.id).collect()
}

fn newest_first(mut v: Vec<WorkflowId>) -> Vec<WorkflowId> {
    v.sort();
    v.reverse();
    v
}

async fn lists_filter_by_tag_time_and_search_and_count_per_status(
    db: Backend,
) -> anyhow::Result<()> {
    let engine = engine_over(db.store());
    let a1 = start(&engine, "order-Alpha-1", Some("a")).await?;
    let a2 = start(&engine, "order-alpha-2", Some("a")).await?;
    let b1 = start(&engine, "other-3", Some("b")).await?;
    // Creation times are the database's; leave a clear margin around the boundary.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let boundary = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let a3 = start(&engine, "late-ALPHA", Some("a")).await?;
    let plain = start(&engine, "plain", None).await?;
    let done = engine
        .start("test.chain", None, json!({ "steps": 0, "sleep_ms": 0 }))
        .await?
        .id;

    assert_eq!(engine.get(a1).await?.tag.as_deref(), Some("a"));
    assert_eq!(engine.get(plain).await?.tag, None);

    let list = |q: ListQuery| {
        let engine = engine.clone();
        async move { anyhow::Ok(ids(engine.list(q).await?)) }
    };
    let tag = |t: &str| ListQuery {
        tag: Some(t.into()),
        ..ListQuery::default()
    };
    assert_eq!(list(tag("a")).await?, newest_first(vec![a1, a2, a3]));
    assert_eq!(list(tag("b")).await?, vec![b1]);
    assert!(list(tag("c")).await?.is_empty());

    // Creation range: [after, before).
    let before = ListQuery {
        created_before: Some(boundary),
        ..ListQuery::default()
    };
    assert_eq!(list(before).await?, newest_first(vec![a1, a2, b1]));
    let after = ListQuery {
        created_after: Some(boundary),
        tag: Some("a".into()),
        ..ListQuery::default()
    };
    assert_eq!(list(after).await?, vec![a3]);

    // Search: key substring, ASCII case-insensitive; or id prefix (hyphens optional).
    let search = |s: &str| ListQuery {
        search: Some(s.into()),
        ..ListQuery::default()
    };
    assert_eq!(list(search("ALPHA")).await?, newest_first(vec![a1, a2, a3]));
    assert_eq!(list(search("alpha-")).await?, newest_first(vec![a1, a2]));
    assert_eq!(list(search("nothing-like-it")).await?, Vec::new());
    let text = b1.to_string();
    assert_eq!(list(search(&text)).await?, vec![b1], "the full id");
    assert_eq!(list(search(&text[..23])).await?, vec![b1], "an id prefix");
    assert_eq!(
        list(search(&text.replace('-', "")[..20])).await?,
        vec![b1],
        "a prefix without hyphens"
    );
    assert_eq!(
        list(search(&text.to_uppercase()[..23])).await?,
        vec![b1],
        "upper-case hex"
    );

    // Filters combine with status and pages.
    let page1 = engine
        .list(ListQuery {
            tag: Some("a".into()),
            status: Some(Status::Running),
            limit: Some(2),
            ..ListQuery::default()
        })
        .await?;
    assert_eq!(ids(page1.clone()), newest_first(vec![a1, a2, a3])[..2]);
    let page2 = engine
        .list(ListQuery {
            tag: Some("a".into()),
            status: Some(Status::Running),
            limit: Some(2),
            cursor: page1.last().map(|r| r.id),
            ..ListQuery::default()
        })
        .await?;
    assert_eq!(ids(page2), vec![a1]);

    // Counts: every status, zeros included; status, limit and cursor of the query are ignored.
    let counts = engine.count(ListQuery::default()).await?;
    assert_eq!(
        counts,
        vec![
            (Status::Running, 5),
            (Status::Paused, 0),
            (Status::Completed, 1),
            (Status::Failed, 0),
            (Status::Cancelled, 0),
        ]
    );
    let counts = engine
        .count(ListQuery {
            status: Some(Status::Completed),
            search: Some("alpha".into()),
            ..ListQuery::default()
        })
        .await?;
    assert_eq!(counts[0], (Status::Running, 3));
    assert_eq!(counts.iter().map(|c| c.1).sum::<i64>(), 3);
    let chain_only = engine
        .count(ListQuery {
            workflow_type: Some("test.chain".into()),
            ..ListQuery::default()
        })
        .await?;
    assert_eq!(chain_only[2], (Status::Completed, 1));
    assert_eq!(engine.get(done).await?.status, Status::Completed);
    Ok(())
}

async fn the_feed_delivers_every_event_once_in_order(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let engine = engine_over(store.clone());
    let old = start(&engine, "before-the-feed", Some("a")).await?;

    let mut feed = EventFeed::open(store.clone()).await?;
    // The opening is unsettled while any transaction of the cluster that was in flight at the
    // opening still runs (other tests' included): wait for it, so the range read below has a
    // known start.
    let deadline = tokio::time::Instant::now() + WAIT;
    while feed.settled().is_none() {
        assert!(feed.poll(100).await?.is_empty(), "nothing was written yet");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the opening settles"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let opened_at = feed.settled().expect("settled");
    let first = engine
        .start("test.chain", None, json!({ "steps": 0, "sleep_ms": 0 }))
        .await?
        .id;
    let second = start(&engine, "after", None).await?;
    engine.signal(second, "pause", Value::Null).await?;

    // Both workflows' creation events: started + transitioned (+ completed for the chain).
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < 5 {
        got.extend(feed.poll(2).await?);
        assert!(tokio::time::Instant::now() < deadline, "events: {got:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        got.iter().all(|e| e.workflow_id != old),
        "events from before the opening are not delivered: {got:?}"
    );
    let gids: Vec<i64> = got.iter().map(|e| e.gid).collect();
    assert!(gids.windows(2).all(|w| w[0] < w[1]), "{gids:?}");
    let of = |id| -> Vec<(i64, String, Option<Status>)> {
        got.iter()
            .filter(|e| e.workflow_id == id)
            .map(|e| (e.seq, e.kind.clone(), e.status))
            .collect()
    };
    assert_eq!(
        of(first),
        vec![
            (1, "started".into(), Some(Status::Running)),
            (2, "transitioned".into(), Some(Status::Completed)),
            (3, "completed".into(), Some(Status::Completed)),
        ]
    );
    assert_eq!(
        of(second),
        vec![
            (1, "started".into(), Some(Status::Running)),
            (2, "transitioned".into(), Some(Status::Running)),
        ]
    );
    assert!(got.iter().all(|e| e.workflow_type.starts_with("test.")));
    assert!(feed.poll(100).await?.is_empty(), "nothing more yet");
    let head = feed.settled().expect("settled after a poll");
    assert_eq!(head, *gids.last().expect("events"));

    // The same events read back by range, all or per workflow; and a resumed read.
    let from = opened_at;
    let all = engine.feed_events(from, head, None, 1000).await?;
    assert_eq!(all, got);
    let second_only = engine.feed_events(from, head, Some(second), 1000).await?;
    assert_eq!(
        second_only,
        got.iter()
            .filter(|e| e.workflow_id == second)
            .cloned()
            .collect::<Vec<_>>()
    );
    let resumed = engine.feed_events(gids[1], head, None, 2).await?;
    assert_eq!(resumed, got[2..4].to_vec());

    // A worker applies the pause: its events follow, in order.
    let worker = engine::Worker::new(
        store.clone(),
        registry(&Probe::new()).workflow(Tagged),
        fast_config(),
    )
    .spawn();
    let mut later = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !later
        .iter()
        .any(|e: &engine::FeedEvent| e.kind == "paused" && e.workflow_id == second)
    {
        later.extend(feed.poll(100).await?);
        assert!(tokio::time::Instant::now() < deadline, "events: {later:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.shutdown().await?;
    let paused = later
        .iter()
        .find(|e| e.kind == "paused")
        .expect("paused event");
    assert_eq!(paused.status, Some(Status::Paused));
    assert!(later[0].gid > head);
    assert!(
        later
            .iter()
            .any(|e| e.kind == "signal_applied" && e.status.is_none())
    );
    Ok(())
}

/// On PostgreSQL a transaction can commit a smaller `gid` after a larger one is visible: the
/// feed waits for it instead of skipping it, and skips an id whose transaction rolled back.
#[sqlx::test(migrations = false)]
async fn the_feed_waits_for_a_smaller_id_committed_late(pool: sqlx::PgPool) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(PgStore::new(pool.clone()));
    store.migrate().await?;
    let engine = engine_over(store.clone());
    let holder = start(&engine, "holder", None).await?;
    let mut feed = EventFeed::open(store.clone()).await?;
    assert!(feed.poll(100).await?.is_empty());

    // A journal write in flight: its row first (the xid), then an event (the gid).
    let mut late = pool.begin().await?;
    let insert_event = "insert into kodomasu.events (workflow_id, seq, kind, payload)
                        values ($1, $2, 'paused', '{\"kind\":\"paused\"}') returning gid";
    sqlx::query("update kodomasu.workflows set updated_at = now() where id = $1")
        .bind(holder)
        .execute(&mut *late)
        .await?;
    let late_gid: i64 = sqlx::query_scalar(insert_event)
        .bind(holder)
        .bind(100_i64)
        .fetch_one(&mut *late)
        .await?;
    // Later events commit first.
    let after = start(&engine, "after", None).await?;
    for _ in 0..3 {
        let held = feed.poll(100).await?;
        assert!(held.is_empty(), "delivered past a gap in flight: {held:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    late.commit().await?;
    let got = feed.poll(100).await?;
    let gids: Vec<i64> = got.iter().map(|e| e.gid).collect();
    assert_eq!(got.first().map(|e| e.gid), Some(late_gid), "{got:?}");
    assert_eq!(got.first().map(|e| e.workflow_id), Some(holder));
    assert_eq!(got.len(), 3, "the late event, then `after`'s two: {got:?}");
    assert!(got[1..].iter().all(|e| e.workflow_id == after));
    assert!(gids.windows(2).all(|w| w[0] < w[1]), "{gids:?}");

    // A write that rolls back leaves a gap for good: skipped once its transaction is over.
    let mut doomed = pool.begin().await?;
    sqlx::query("update kodomasu.workflows set updated_at = now() where id = $1")
        .bind(holder)
        .execute(&mut *doomed)
        .await?;
    sqlx::query(insert_event)
        .bind(holder)
        .bind(101_i64)
        .fetch_one(&mut *doomed)
        .await?;
    let third = start(&engine, "third", None).await?;
    assert!(
        feed.poll(100).await?.is_empty(),
        "waits while it may commit"
    );
    doomed.rollback().await?;
    let got = feed.poll(100).await?;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|e| e.workflow_id == third));
    Ok(())
}
