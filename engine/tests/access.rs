//! The store's operator-facing extras, on both backends: access tokens (stored by hash,
//! unique valid names, revocation), the scrape-time gauges, and the migration check behind
//! readiness probes.

mod common;

use common::*;
use engine::store::WorkerInfo;
use engine::{Engine, PgStore, SqliteStore, Store, StoreGauges, WorkerId};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

conformance! {
    access_tokens_are_found_by_hash_and_revoked_by_id_or_name,
    replacing_a_named_token_revokes_the_previous_one,
    gauges_count_due_unclaimed_workflows_and_live_workers,
    a_migrated_journal_has_no_pending_migrations,
}

async fn access_tokens_are_found_by_hash_and_revoked_by_id_or_name(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    assert!(store.access_tokens().await?.is_empty());
    let ci = store
        .create_access_token(Uuid::now_v7(), "ci", "hash-ci")
        .await?
        .expect("created");
    assert_eq!(ci.name, "ci");
    assert!(ci.revoked_at.is_none());
    // A valid token already has the name.
    assert!(
        store
            .create_access_token(Uuid::now_v7(), "ci", "hash-other")
            .await?
            .is_none()
    );
    assert_eq!(store.find_access_token("hash-ci").await?, Some(ci.clone()));
    assert_eq!(store.find_access_token("hash-unknown").await?, None);

    let revoked = store.revoke_access_token("ci").await?.expect("revoked");
    assert_eq!(revoked.id, ci.id);
    let revoked_at = revoked.revoked_at.expect("revoked_at set");
    assert_eq!(
        store
            .find_access_token("hash-ci")
            .await?
            .and_then(|t| t.revoked_at),
        Some(revoked_at)
    );
    // By name only valid tokens are found; by id a revoked one keeps its first revocation time.
    assert_eq!(store.revoke_access_token("ci").await?, None);
    let again = store
        .revoke_access_token(&ci.id.to_string())
        .await?
        .expect("found by id");
    assert_eq!(again.revoked_at, Some(revoked_at));
    assert_eq!(
        store
            .revoke_access_token(&Uuid::now_v7().to_string())
            .await?,
        None
    );

    // The name is free again.
    let ci2 = store
        .create_access_token(Uuid::now_v7(), "ci", "hash-ci-2")
        .await?
        .expect("created");
    let all = store.access_tokens().await?;
    assert_eq!(
        all.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ci.id, ci2.id]
    );
    Ok(())
}

async fn replacing_a_named_token_revokes_the_previous_one(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let first = store
        .replace_access_token(Uuid::now_v7(), "bootstrap", "hash-1")
        .await?;
    assert!(first.revoked_at.is_none());
    // The same hash again: nothing changes.
    let same = store
        .replace_access_token(Uuid::now_v7(), "bootstrap", "hash-1")
        .await?;
    assert_eq!(same, first);
    let second = store
        .replace_access_token(Uuid::now_v7(), "bootstrap", "hash-2")
        .await?;
    assert_ne!(second.id, first.id);
    assert!(second.revoked_at.is_none());
    let first_now = store.find_access_token("hash-1").await?.expect("kept");
    assert!(
        first_now.revoked_at.is_some(),
        "the previous token is revoked"
    );
    // A revoked hash is returned as it is and revokes nothing.
    let old = store
        .replace_access_token(Uuid::now_v7(), "bootstrap", "hash-1")
        .await?;
    assert_eq!(old.id, first.id);
    assert!(old.revoked_at.is_some());
    assert!(
        store
            .find_access_token("hash-2")
            .await?
            .is_some_and(|t| t.revoked_at.is_none())
    );
    assert_eq!(store.access_tokens().await?.len(), 2);
    Ok(())
}

async fn gauges_count_due_unclaimed_workflows_and_live_workers(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    assert_eq!(store.gauges().await?, StoreGauges::default());
    let probe = Probe::new();
    let engine = Engine::new(store.clone(), registry(&probe));
    for _ in 0..3 {
        engine
            .start("test.chain", None, json!({ "steps": 1, "sleep_ms": 0 }))
            .await?;
    }
    // Waiting on a timer a minute away: not due.
    engine
        .start("test.sleepy", None, json!({ "ms": 60_000 }))
        .await?;
    let g = store.gauges().await?;
    assert_eq!(g.due_unclaimed, 3, "{g:?}");
    assert!(g.oldest_due_seconds >= 0.0, "{g:?}");
    assert_eq!(g.live_workers, 0);

    let worker = WorkerId::new();
    store
        .register_worker(&WorkerInfo {
            id: worker,
            host: "test".into(),
            pid: 1,
            slots: 4,
            lease_ttl: Duration::from_secs(30),
            watch_pid: None,
        })
        .await?;
    let claimed = store
        .claim(
            worker,
            &["test.chain".to_owned()],
            2,
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(claimed.len(), 2);
    let g = store.gauges().await?;
    assert_eq!((g.due_unclaimed, g.live_workers), (1, 1), "{g:?}");

    store.worker_stopped(worker).await?;
    assert_eq!(store.gauges().await?.live_workers, 0);
    Ok(())
}

async fn a_migrated_journal_has_no_pending_migrations(db: Backend) -> anyhow::Result<()> {
    assert_eq!(db.store().pending_migrations().await?, Vec::<i64>::new());
    Ok(())
}

#[sqlx::test(migrations = false)]
async fn postgres_reports_every_migration_pending_before_migrate(
    pool: sqlx::PgPool,
) -> anyhow::Result<()> {
    let store = PgStore::new(pool);
    let pending = store.pending_migrations().await?;
    assert!(pending.contains(&20261123000001), "{pending:?}");
    assert!(pending.contains(&20261123000003), "{pending:?}");
    store.migrate().await?;
    assert!(store.pending_migrations().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn sqlite_reports_every_migration_pending_before_migrate() -> anyhow::Result<()> {
    let scratch = Scratch::new("pending-migrations");
    let store = SqliteStore::connect(&scratch.dir.join("j.db").to_string_lossy()).await?;
    let pending = store.pending_migrations().await?;
    assert!(pending.contains(&20261123000001), "{pending:?}");
    assert!(pending.contains(&20261123000003), "{pending:?}");
    store.migrate().await?;
    assert!(store.pending_migrations().await?.is_empty());
    store.pool().close().await;
    scratch.remove();
    Ok(())
}
