//! The durable retry schedule: exponential backoff with jitter.
//!
//! The delay is computed here; the time of the next attempt is stored in the journal and a
//! worker claims the call again when it is due. Nothing sleeps in memory between attempts.

use crate::activity::{ActivityError, RetryPolicy};
use std::time::Duration;

/// The delay before attempt `failed_attempt + 1`, or `None` when the policy allows no more
/// attempts or the error must not be retried.
///
/// The base delay is `initial_interval * backoff_coefficient^(failed_attempt - 1)`, capped at
/// `maximum_interval`; a uniform jitter of ±20% is applied, still capped.
pub fn backoff_delay(
    policy: &RetryPolicy,
    failed_attempt: u32,
    error: &ActivityError,
) -> Option<Duration> {
    if !error.retryable
        || policy
            .non_retryable_error_codes
            .iter()
            .any(|c| c == &error.code)
    {
        return None;
    }
    if policy.maximum_attempts != 0 && failed_attempt >= policy.maximum_attempts {
        return None;
    }
    let exponent = failed_attempt.saturating_sub(1).min(64) as i32;
    let base =
        policy.initial_interval.as_secs_f64() * policy.backoff_coefficient.max(1.0).powi(exponent);
    let capped = base.min(policy.maximum_interval.as_secs_f64());
    let jittered = capped * (0.8 + 0.4 * fastrand::f64());
    Some(Duration::from_secs_f64(
        jittered.min(policy.maximum_interval.as_secs_f64()).max(0.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(10),
            maximum_attempts: 5,
            non_retryable_error_codes: vec!["bad_request".into()],
        }
    }

    #[test]
    fn grows_exponentially_with_jitter_and_cap() {
        let e = ActivityError::retryable("io", "boom");
        for (attempt, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)] {
            let d = backoff_delay(&policy(), attempt, &e)
                .expect("retry allowed")
                .as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= (base * 1.2).min(10.0) + 1e-9,
                "attempt {attempt}: {d}"
            );
        }
    }

    #[test]
    fn stops_after_maximum_attempts() {
        let e = ActivityError::retryable("io", "boom");
        assert!(backoff_delay(&policy(), 5, &e).is_none());
        let unlimited = RetryPolicy {
            maximum_attempts: 0,
            ..policy()
        };
        let d = backoff_delay(&unlimited, 50, &e).expect("unlimited");
        assert!(d <= Duration::from_secs(10));
    }

    #[test]
    fn non_retryable_errors_end_the_call() {
        assert!(backoff_delay(&policy(), 1, &ActivityError::non_retryable("x", "no")).is_none());
        assert!(
            backoff_delay(&policy(), 1, &ActivityError::retryable("bad_request", "no")).is_none()
        );
    }
}
