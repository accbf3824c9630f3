//! SQLite-only tests. Everything the engine promises is checked by the conformance suite on both
//! backends; these cover what exists only because the SQLite journal is a file: opening and
//! creating it from a path or URL, its pragmas and stored format, migrations racing on a fresh
//! file, a journal surviving a close and reopen, and waiting for another process's write lock.

mod common;

use common::*;
use engine::{Engine, SqliteStore, Status, Store, Worker};
use serde_json::json;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn connect_creates_the_file_and_its_directories_from_a_path_or_url() -> anyhow::Result<()> {
    let scratch = Scratch::new("connect");
    let by_path = scratch.dir.join("a/b/journal.db");
    let store = SqliteStore::connect(&by_path.to_string_lossy()).await?;
    store.migrate().await?;
    assert!(by_path.exists());

    let pragma = |name: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query(&format!(
                "select cast((select * from pragma_{name}) as text)"
            ))
            .fetch_one(&pool)
            .await
            .map(|r| r.get::<String, _>(0))
        }
    };
    assert_eq!(pragma("journal_mode").await?, "wal");
    assert_eq!(pragma("foreign_keys").await?, "1");
    assert_eq!(pragma("busy_timeout").await?, "5000");
    assert_eq!(pragma("synchronous").await?, "2", "FULL");

    for (i, url) in [
        format!(
            "sqlite://{}?mode=rwc",
            scratch.dir.join("u1/journal.db").display()
        ),
        format!("sqlite://{}", scratch.dir.join("u2/journal.db").display()),
    ]
    .iter()
    .enumerate()
    {
        let store = SqliteStore::connect(url).await?;
        store.migrate().await?;
        store.ping().await?;
        assert!(
            scratch.dir.join(format!("u{}/journal.db", i + 1)).exists(),
            "{url}"
        );
        store.pool().close().await;
    }

    // Read-only on a missing file: a clear error, and nothing is created.
    let ro = scratch.dir.join("missing/journal.db");
    let err = SqliteStore::connect(&format!("sqlite://{}?mode=ro", ro.display()))
        .await
        .expect_err("a missing file cannot be opened read-only");
    assert!(matches!(err, engine::StoreError::Database(_)), "{err:?}");
    assert!(!ro.exists());
    assert!(SqliteStore::connect("").await.is_err());

    store.pool().close().await;
    scratch.remove();
    Ok(())
}

#[tokio::test]
async fn processes_starting_at_once_migrate_the_fresh_file_once() -> anyhow::Result<()> {
    let scratch = Scratch::new("migrate");
    let path = scratch.dir.join("journal.db");
    let path = path.to_string_lossy();
    let stores = futures::future::try_join_all((0..4).map(|_| SqliteStore::connect(&path))).await?;
    futures::future::try_join_all(stores.iter().map(|s| s.migrate())).await?;
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(stores[0].pool())
        .await?;
    // Each migration once (not once per process).
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite"))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert_eq!(applied, files as i64);
    stores[1].migrate().await?;
    for s in &stores {
        s.pool().close().await;
    }
    scratch.remove();
    Ok(())
}

#[tokio::test]
async fn the_journal_survives_closing_and_reopening_the_file() -> anyhow::Result<()> {
    let scratch = Scratch::new("reopen");
    let path = scratch
        .dir
        .join("journal.db")
        .to_string_lossy()
        .into_owned();
    let probe = Probe::new();
    let registry = registry(&probe);

    let first = SqliteStore::connect(&path).await?;
    first.migrate().await?;
    let store: Arc<dyn Store> = Arc::new(first.clone());
    let engine = Engine::new(store.clone(), registry.clone());
    let started = engine
        .start(
            "test.sleepy",
            Some("survivor".into()),
            json!({ "ms": 300, "step_first": true }),
        )
        .await?;
    Worker::new(store.clone(), registry.clone(), fast_config())
        .run_until_idle()
        .await?;
    let before = engine.history(started.id, 0, 100).await?;
    assert_eq!(before.len(), 4, "started, the step, its result, the timer");
    drop((engine, store));
    first.pool().close().await;

    // A restarted process: a new store on the same file finds the workflow and its timer.
    let second: Arc<dyn Store> = Arc::new(SqliteStore::connect(&path).await?);
    second.migrate().await?;
    let engine = Engine::new(second.clone(), registry.clone());
    let again = engine
        .start(
            "test.sleepy",
            Some("survivor".into()),
            json!({ "ms": 300, "step_first": true }),
        )
        .await?;
    assert_eq!((again.id, again.created), (started.id, false));
    tokio::time::sleep(Duration::from_millis(350)).await;
    Worker::new(second.clone(), registry, fast_config())
        .run_until_idle()
        .await?;
    let done = engine.get(started.id).await?;
    assert_eq!(done.status, Status::Completed);
    let after = engine.history(started.id, 0, 100).await?;
    assert_eq!(after[..before.len()], before[..], "history intact");
    assert_eq!(after.len(), before.len() + 2);
    scratch.remove();
    Ok(())
}

#[tokio::test]
async fn stored_rows_use_uuid_blobs_and_fixed_width_utc_times() -> anyhow::Result<()> {
    let db = Backend::sqlite("format").await;
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe);
    let engine = Engine::new(store.clone(), registry.clone());
    let started = engine
        .start("test.sleepy", None, json!({ "ms": 60_000 }))
        .await?;
    let pool =
        sqlx::sqlite::SqlitePool::connect_with(SqliteStore::connect_options(&scratch_path(&db))?)
            .await?;
    let row = sqlx::query(
        "select typeof(id) as t, length(id) as n, created_at, updated_at, run_at,
                json_extract(pending, '$.kind') as pending, json_extract(pending, '$.due_at') as due
         from workflows",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(
        (row.get::<String, _>("t"), row.get::<i64, _>("n")),
        ("blob".into(), 16)
    );
    assert_eq!(row.get::<String, _>("pending"), "timer");
    for col in ["created_at", "updated_at", "run_at"] {
        let t: String = row.get(col);
        assert_eq!(t.len(), 27, "{col} = {t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{col} = {t}");
    }
    // The due time is kept to the microsecond (the timer's own, not the database clock's).
    let due = chrono::DateTime::parse_from_rfc3339(&row.get::<String, _>("due"))?;
    let run_at = chrono::DateTime::parse_from_rfc3339(&row.get::<String, _>("run_at"))?;
    assert!(run_at <= due && due - run_at < chrono::Duration::microseconds(1));

    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();
    engine.signal(started.id, "pause", json!(null)).await?;
    wait_for_status(&store, started.id, Status::Paused).await;
    worker.shutdown().await?;
    let run_at: Option<String> = sqlx::query_scalar("select run_at from workflows")
        .fetch_one(&pool)
        .await?;
    assert_eq!(run_at, None, "a paused workflow is due only on a signal");
    let signal_times: Vec<String> =
        sqlx::query_scalar("select consumed_at from signals where consumed_at is not null")
            .fetch_all(&pool)
            .await?;
    assert_eq!(signal_times.len(), 1);
    assert_eq!(signal_times[0].len(), 27);
    pool.close().await;
    db.finish(true).await;
    Ok(())
}

#[tokio::test]
async fn a_write_lock_held_by_another_process_is_waited_for() -> anyhow::Result<()> {
    let db = Backend::sqlite("busy").await;
    let store = db.store();
    let probe = Probe::new();
    let engine = Engine::new(store.clone(), registry(&probe));

    // "Another process" holds SQLite's write lock for 700 ms.
    let other =
        sqlx::sqlite::SqlitePool::connect_with(SqliteStore::connect_options(&scratch_path(&db))?)
            .await?;
    let mut tx = other.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("update workers set slots_used = slots_used")
        .execute(&mut *tx)
        .await?;
    let holder = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        tx.commit().await
    });

    let t0 = tokio::time::Instant::now();
    let started = engine
        .start("test.chain", None, json!({ "steps": 1, "sleep_ms": 0 }))
        .await?;
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "the start waited for the lock: {:?}",
        t0.elapsed()
    );
    holder.await??;
    // Reads never waited; the write landed once the lock was free.
    assert_eq!(snapshot(&store, started.id).await.version, 2);
    other.close().await;
    db.finish(true).await;
    Ok(())
}

/// The file behind a SQLite [`Backend`].
fn scratch_path(db: &Backend) -> String {
    db.sqlite_path()
        .expect("a SQLite backend")
        .to_string_lossy()
        .into_owned()
}
