//! The durable retry schedule: failed attempts are journaled with increasing attempt numbers and
//! retried after the policy's backoff; exhausted or non-retryable calls reach the workflow.

mod common;

use common::*;
use engine::{ActivityOptions, Engine, EventKind, Status, Worker};
use serde_json::json;

conformance! {
    retryable_failures_back_off_per_policy_then_succeed,
    exhausted_attempts_hand_the_error_to_the_workflow,
    non_retryable_errors_end_the_call_after_one_attempt,
}

fn flaky(fail_times: u32, code: &str, retryable: bool) -> serde_json::Value {
    json!({ "flaky": { "fail_times": fail_times, "code": code, "retryable": retryable } })
}

async fn retryable_failures_back_off_per_policy_then_succeed(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    // 50 ms, doubling, at most 5 attempts.
    let registry = registry(&probe).activity(Flaky {
        options: fast_options(5),
    });
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config());
    let worker_id = worker.id();
    let worker = worker.spawn();

    let started = engine
        .start("test.call_one", None, flaky(3, "flaky.down", true))
        .await?;
    let done = wait_for_status(&store, started.id, Status::Completed).await;
    assert_eq!(done.output, Some(json!(4)), "the 4th attempt succeeds");

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds(),
        [
            "started",
            "transitioned",
            "activity_failed",
            "activity_failed",
            "activity_failed",
            "activity_completed",
            "transitioned",
            "completed",
        ]
    );

    let outcomes: Vec<(i64, i32, &str)> = journal
        .attempts
        .iter()
        .map(|a| (a.call_seq, a.attempt, a.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, 1, "failed"),
            (1, 2, "failed"),
            (1, 3, "failed"),
            (1, 4, "completed")
        ]
    );
    for a in &journal.attempts {
        assert_eq!(a.worker_id, Some(worker_id.0));
        assert!(a.duration_ms.is_some() && a.started_at.is_some());
        if a.outcome == "failed" {
            let e = a.error.as_ref().expect("failed attempt has its error");
            assert_eq!((e.code.as_str(), e.retryable), ("flaky.down", true));
        }
    }

    // Each failure schedules the next attempt at failure time + backoff (±20% jitter), and the
    // next attempt does not start before that.
    let failures = journal.of_kind("activity_failed");
    let mut previous_delay = 0.0;
    for (i, e) in failures.iter().enumerate() {
        let EventKind::ActivityFailed {
            call_seq,
            attempt,
            error,
            retry_at,
            ..
        } = e
        else {
            unreachable!()
        };
        assert_eq!((*call_seq, *attempt), (1, i as u32 + 1));
        assert_eq!(error.code, "flaky.down");
        let retry_at = retry_at.expect("a retry is scheduled");
        let row = &journal.attempts[i];
        let failed_at = row.started_at.expect("started")
            + chrono::Duration::milliseconds(row.duration_ms.expect("duration"));
        let delay_ms = (retry_at - failed_at).num_microseconds().expect("small") as f64 / 1000.0;
        let base = 50.0 * 2f64.powi(i as i32);
        assert!(
            delay_ms >= base * 0.8 - 10.0 && delay_ms <= base * 1.2 + 10.0,
            "attempt {attempt}: backoff {delay_ms} ms, policy says {base} ms ±20%"
        );
        assert!(
            delay_ms > previous_delay,
            "backoff grows: {delay_ms} after {previous_delay}"
        );
        previous_delay = delay_ms;
        let next_start = journal.attempts[i + 1].started_at.expect("started");
        assert!(
            next_start >= retry_at - chrono::Duration::milliseconds(10),
            "attempt {} started at {next_start}, before its retry time {retry_at}",
            attempt + 1
        );
    }

    worker.shutdown().await?;
    Ok(())
}

async fn exhausted_attempts_hand_the_error_to_the_workflow(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let registry = registry(&probe).activity(Flaky {
        options: fast_options(3),
    });
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    let started = engine
        .start("test.call_one", None, flaky(99, "flaky.down", true))
        .await?;
    let failed = wait_for_status(&store, started.id, Status::Failed).await;
    let error = failed.error.expect("failed workflow has an error");
    assert_eq!(error.code, "flaky.down");
    assert_eq!(error.message, "attempt 3 fails");

    let journal = Journal::load(&db, started.id).await;
    journal.assert_consistent();
    assert_eq!(
        journal.kinds(),
        [
            "started",
            "transitioned",
            "activity_failed",
            "activity_failed",
            "activity_failed",
            "transitioned",
            "failed",
        ]
    );
    let retry_ats: Vec<bool> = journal
        .of_kind("activity_failed")
        .iter()
        .map(|e| {
            matches!(
                e,
                EventKind::ActivityFailed {
                    retry_at: Some(_),
                    ..
                }
            )
        })
        .collect();
    assert_eq!(
        retry_ats,
        [true, true, false],
        "no retry after the last attempt"
    );
    let attempts: Vec<(i32, &str)> = journal
        .attempts
        .iter()
        .map(|a| (a.attempt, a.outcome.as_str()))
        .collect();
    assert_eq!(attempts, [(1, "failed"), (2, "failed"), (3, "failed")]);

    worker.shutdown().await?;
    Ok(())
}

async fn non_retryable_errors_end_the_call_after_one_attempt(db: Backend) -> anyhow::Result<()> {
    let store = db.store();
    let probe = Probe::new();
    let options = ActivityOptions {
        retry: engine::RetryPolicy {
            non_retryable_error_codes: vec!["payment.rejected".into()],
            ..fast_retry(5)
        },
        ..fast_options(5)
    };
    let registry = registry(&probe).activity(Flaky { options });
    let engine = Engine::new(store.clone(), registry.clone());
    let worker = Worker::new(store.clone(), registry, fast_config()).spawn();

    // Classified non-retryable where it was born.
    let by_flag = engine
        .start("test.call_one", None, flaky(99, "bad_request", false))
        .await?;
    // Said to be retryable, but its code is listed as non-retryable by the policy.
    let by_code = engine
        .start("test.call_one", None, flaky(99, "payment.rejected", true))
        .await?;

    for (id, code) in [
        (by_flag.id, "bad_request"),
        (by_code.id, "payment.rejected"),
    ] {
        let failed = wait_for_status(&store, id, Status::Failed).await;
        assert_eq!(failed.error.map(|e| e.code), Some(code.to_owned()));
        let journal = Journal::load(&db, id).await;
        journal.assert_consistent();
        assert_eq!(journal.attempts.len(), 1, "{code}: only one attempt");
        assert_eq!(journal.attempts[0].outcome, "failed");
        let failures = journal.of_kind("activity_failed");
        assert!(
            matches!(
                failures[..],
                [EventKind::ActivityFailed {
                    attempt: 1,
                    retry_at: None,
                    ..
                }]
            ),
            "{code}: one failure without a retry, got {failures:?}"
        );
    }

    worker.shutdown().await?;
    Ok(())
}
