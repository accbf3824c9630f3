//! Timeouts of each kind (start-to-close, heartbeat, schedule-to-close) and heartbeats: details
//! persisted while an attempt runs and handed to the next attempt of the same call.

mod common;

use common::*;
use engine::{ActivityError, ActivityOptions, Engine, EventKind, Pending, Status, Worker};
use serde_json::json;
use std::time::Duration;

conformance! {
    start_to_close_timeout_times_out_each_attempt,
    heartbeat_timeout_fails_a_silent_attempt,
    schedule_to_close_deadline_ends_the_call,
    heartbeating_activity_outlives_its_heartbeat_timeout_and_persists_details,
    retried_attempt_resumes_from_last_heartbeat_details,
}

async fn start_to_close_timeout_times_out_each_attempt(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let options = ActivityOptions {
        start_to_close_timeout: Duration::from_millis(200),
        ..fast_options(2)
    };
    let registry = registry(&probe).activity(Step::with_options(probe.clone(), options));
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 1, "sleep_ms": 60_000 } }),
        )
        .await?;
    let failed = wait_for_status(&store, started.id, Status::Failed).await;
    assert_eq!(
        failed.error.map(|e| e.code).as_deref(),
        Some(ActivityError::START_TO_CLOSE_TIMEOUT)
    );
    assert!(probe.saw_cancel(), "the body's token fired at the timeout");

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(journal.attempts.len(), 2);
    for a in &journal.attempts {
        assert_eq!(a.outcome, "timed_out");
        let e = a.error.as_ref().expect("timeout error");
        assert_eq!(
            (e.code.as_str(), e.retryable),
            (ActivityError::START_TO_CLOSE_TIMEOUT, true)
        );
        assert!(a.duration_ms.expect("duration") >= 200);
    }
    worker.shutdown().await?;
    Ok(())
}

async fn heartbeat_timeout_fails_a_silent_attempt(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let options = ActivityOptions {
        heartbeat_timeout: Some(Duration::from_millis(300)),
        ..fast_options(2)
    };
    let registry = registry(&probe).activity(Beat {
        probe: probe.clone(),
        options,
    });
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    // Two beats, then silence far beyond the heartbeat timeout.
    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "beat": { "beats": 2, "every_ms": 50, "fail_attempts": 0, "silent_ms": 60_000 } }),
        )
        .await?;
    let failed = wait_for_status(&store, started.id, Status::Failed).await;
    assert_eq!(
        failed.error.map(|e| e.code).as_deref(),
        Some(ActivityError::HEARTBEAT_TIMEOUT)
    );
    assert!(probe.saw_cancel());

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    let attempts: Vec<(i32, &str, Option<&str>)> = journal
        .attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.outcome.as_str(),
                a.error.as_ref().map(|e| e.code.as_str()),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            (1, "timed_out", Some(ActivityError::HEARTBEAT_TIMEOUT)),
            (2, "timed_out", Some(ActivityError::HEARTBEAT_TIMEOUT)),
        ]
    );
    worker.shutdown().await?;
    Ok(())
}

async fn schedule_to_close_deadline_ends_the_call(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    // Attempts of 300 ms, unlimited retries, but 1 s over all attempts.
    let options = ActivityOptions {
        start_to_close_timeout: Duration::from_millis(300),
        schedule_to_close_timeout: Some(Duration::from_secs(1)),
        ..fast_options(0)
    };
    let registry = registry(&probe).activity(Step::with_options(probe.clone(), options));
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "step": { "value": 1, "sleep_ms": 60_000 } }),
        )
        .await?;
    let scheduled_at = match snapshot(&store, started.id).await.pending {
        Pending::Activity(a) => a.scheduled_at,
        other => panic!("activity pending, got {other:?}"),
    };
    let failed = wait_for_status(&store, started.id, Status::Failed).await;
    assert_eq!(
        failed.error.map(|e| e.code).as_deref(),
        Some(ActivityError::SCHEDULE_TO_CLOSE_TIMEOUT)
    );

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert!(journal.attempts.len() >= 2, "{:?}", journal.attempts);
    let first = &journal.attempts[0];
    assert_eq!(first.outcome, "timed_out");
    assert_eq!(
        first.error.as_ref().map(|e| e.code.as_str()),
        Some(ActivityError::START_TO_CLOSE_TIMEOUT)
    );
    let failures = journal.of_kind("activity_failed");
    let Some(EventKind::ActivityFailed {
        error,
        retry_at: None,
        ..
    }) = failures.last()
    else {
        panic!("the last failure schedules no retry: {failures:?}");
    };
    assert_eq!(error.code, ActivityError::SCHEDULE_TO_CLOSE_TIMEOUT);
    // No attempt was scheduled at or past the deadline, and the call ended only once it passed.
    for e in &failures {
        if let EventKind::ActivityFailed {
            retry_at: Some(at), ..
        } = e
        {
            assert!(*at < scheduled_at + chrono::Duration::seconds(1));
        }
    }
    let ended = journal.events.last().expect("events").created_at;
    assert!(ended >= scheduled_at + chrono::Duration::milliseconds(950));
    worker.shutdown().await?;
    Ok(())
}

async fn heartbeating_activity_outlives_its_heartbeat_timeout_and_persists_details(
    db: Backend,
) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let options = ActivityOptions {
        heartbeat_timeout: Some(Duration::from_millis(400)),
        ..fast_options(1)
    };
    let registry = registry(&probe).activity(Beat {
        probe: probe.clone(),
        options,
    });
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    // 30 beats 50 ms apart: 1.5 s, well past the 400 ms heartbeat timeout.
    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "beat": { "beats": 30, "every_ms": 50, "fail_attempts": 0, "silent_ms": 0 } }),
        )
        .await?;

    // While the attempt runs, its progress is visible in the snapshot.
    let (beat, record) = wait_for("heartbeat details persisted while running", || {
        let store = store.clone();
        async move {
            let r = snapshot(&store, started.id).await;
            let beat = r.heartbeat_details.as_ref()?.get("beat")?.as_u64()?;
            (beat >= 3).then_some((beat, r))
        }
    })
    .await;
    assert_eq!(
        record.status,
        Status::Running,
        "still running at beat {beat}"
    );
    assert!(
        matches!(record.pending, Pending::Activity(_)),
        "still on the activity at beat {beat}"
    );
    assert_eq!(
        record.heartbeat_details,
        Some(json!({ "attempt": 1, "beat": beat }))
    );
    let heartbeat_at = db.reader().heartbeat_at(started.id).await?;
    assert!(heartbeat_at.is_some());

    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(30)));
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(journal.attempts.len(), 1);
    assert_eq!(journal.attempts[0].outcome, "completed");
    assert!(!probe.saw_cancel());
    worker.shutdown().await?;
    Ok(())
}

async fn retried_attempt_resumes_from_last_heartbeat_details(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let options = ActivityOptions {
        heartbeat_timeout: Some(Duration::from_secs(2)),
        ..fast_options(3)
    };
    let registry = registry(&probe).activity(Beat {
        probe: probe.clone(),
        options,
    });
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    // Attempt 1 beats 5 times, then fails; attempt 2 beats 5 times and succeeds.
    let started = engine
        .start(
            "test.call_one",
            None,
            json!({ "beat": { "beats": 5, "every_ms": 50, "fail_attempts": 1, "silent_ms": 0 } }),
        )
        .await?;
    wait_for_status(&store, started.id, Status::Completed).await;

    assert_eq!(
        probe.resumed_from(),
        [(1, None), (2, Some(json!({ "attempt": 1, "beat": 5 }))),],
        "attempt 2 sees the last heartbeat of attempt 1"
    );
    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    let outcomes: Vec<&str> = journal
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["failed", "completed"]);
    worker.shutdown().await?;
    Ok(())
}
