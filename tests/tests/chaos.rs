//! Chaos: real `kodomasu worker` processes against one database, SIGKILLed at random moments
//! while replacements start. Every workflow must complete with a sound journal.
//!
//! Prints the recovery time after each kill and how many activity bodies may have run twice.

mod common;

use common::*;
use engine::Engine;
use std::sync::Arc;
use std::time::Duration;

const WORKFLOWS: usize = 200;
const KILLS: usize = 6;
const WORKERS: usize = 3;
const LEASE_TTL: &str = "2s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing() -> anyhow::Result<()> {
    let db = TestDb::create("chaos").await?;
    let logs = log_dir("chaos");
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    eprintln!(
        "chaos: seed {seed} (set CHAOS_SEED to replay), database {}, logs in {}",
        db.name,
        logs.display()
    );

    let mut spawned = 0usize;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(spawn_worker(
            &db.url,
            logs.join(format!("worker-{spawned}.log")),
            LEASE_TTL,
        )?);
        spawned += 1;
    }

    let store: Arc<dyn engine::Store> = Arc::new(engine::PgStore::new(db.pool.clone()));
    let engine = Engine::new(store, workflows::registry(None));
    for i in 0..WORKFLOWS {
        let steps = 3 + fastrand::u32(0..3);
        let input = serde_json::json!({"steps": steps, "sleep_ms": fastrand::u64(300..1200), "fail_prob": 0.1});
        engine
            .start("demo.chain", Some(format!("chaos-{i}")), input)
            .await?;
    }
    eprintln!("chaos: started {WORKFLOWS} demo.chain workflows on {WORKERS} worker processes");

    let mut kills = Vec::new();
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1000..3000))).await;
        let victim_index = fastrand::usize(0..workers.len());
        let mut victim = workers.swap_remove(victim_index);
        let pid = victim.id().unwrap_or_default();
        let worker_id = worker_id_of(&db.pool, pid).await?;
        sigkill(&mut victim).await?;
        let killed_at = db_now(&db.pool).await?;
        // Read after the kill: its leases stay until they expire; what it finished is no orphan.
        let orphans = leased_by(&db.pool, worker_id).await?;
        eprintln!(
            "chaos: kill {} — SIGKILL worker pid {pid} holding {} workflows",
            k + 1,
            orphans.len()
        );
        workers.push(spawn_worker(
            &db.url,
            logs.join(format!("worker-{spawned}.log")),
            LEASE_TTL,
        )?);
        spawned += 1;
        kills.push((orphans, killed_at));
    }

    wait_all_terminal(&db.pool, Duration::from_secs(150)).await?;
    let counts = status_counts(&db.pool).await?;
    eprintln!("chaos: final statuses {counts:?}");
    assert_eq!(
        counts,
        vec![("completed".to_owned(), WORKFLOWS as i64)],
        "every workflow completes"
    );
    assert_journals_sound(&db.pool).await?;

    for (i, (orphans, killed_at)) in kills.iter().enumerate() {
        let delays = next_event_delays(&db.pool, orphans, *killed_at).await?;
        let mut moved: Vec<f64> = delays.iter().flatten().copied().collect();
        moved.sort_by(f64::total_cmp);
        assert_eq!(
            moved.len(),
            orphans.len(),
            "every orphaned workflow moved again after kill {}",
            i + 1
        );
        match (moved.first(), moved.get(moved.len() / 2), moved.last()) {
            (Some(min), Some(median), Some(max)) => eprintln!(
                "chaos: kill {}: {} orphaned workflows resumed after min {min:.2}s / median {median:.2}s / max {max:.2}s (lease TTL {LEASE_TTL})",
                i + 1,
                moved.len()
            ),
            _ => eprintln!(
                "chaos: kill {}: the worker held no workflow at that moment",
                i + 1
            ),
        }
    }
    let abandoned = abandoned_attempts(&db.pool).await?;
    eprintln!(
        "chaos: activity bodies that may have run more than once (attempts abandoned by killed workers): {abandoned}"
    );

    for mut w in workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    db.drop_database().await
}
