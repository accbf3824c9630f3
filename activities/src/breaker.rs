//! A circuit breaker per external service: after `failure_threshold` consecutive failures the
//! circuit opens and calls fail fast (retryably) for `open_for`; then one probe call is let
//! through (half-open). A success closes the circuit; a failure opens it again for twice as
//! long, up to `max_open_for`. Durable retries of the activity then back off instead of
//! hammering a service that is down.

use serde::Serialize;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Settings of a breaker.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit first stays open.
    pub open_for: Duration,
    /// Upper bound of the doubling open time.
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(120),
        }
    }
}

/// The state of a breaker, as health and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed { consecutive_failures: u32 },
    /// Calls fail fast until `retry_in_ms` has passed.
    Open { retry_in_ms: u64 },
    /// One probe call is in flight.
    HalfOpen,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    HalfOpen { open_for: Duration },
}

/// A circuit breaker; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Breaker {
    service: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker for `service`.
    pub fn new(service: &'static str, config: BreakerConfig) -> Self {
        Self {
            service,
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The service this breaker guards.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Asks to make a call.
    ///
    /// # Errors
    /// The time until the next probe when the circuit is open (or a probe is in flight).
    pub fn check(&self) -> Result<(), Duration> {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Ok(()),
            Inner::Open { until, open_for } => {
                let now = Instant::now();
                if now >= until {
                    *inner = Inner::HalfOpen { open_for };
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
            Inner::HalfOpen { .. } => Err(Duration::from_millis(100)),
        }
    }

    /// Records the outcome of a call let through by [`Self::check`]. `service_failed` is true
    /// when the service itself failed (transport error, 5xx, 429), not on a 4xx.
    pub fn record(&self, service_failed: bool) {
        let mut inner = self.lock();
        let next = match (&*inner, service_failed) {
            (_, false) => Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, true) if failures + 1 < self.config.failure_threshold => {
                Inner::Closed {
                    failures: failures + 1,
                }
            }
            (Inner::Closed { .. }, true) => {
                tracing::warn!(service = self.service, open_for = ?self.config.open_for, "circuit opened");
                Inner::Open {
                    until: Instant::now() + self.config.open_for,
                    open_for: self.config.open_for,
                }
            }
            (Inner::HalfOpen { open_for } | Inner::Open { open_for, .. }, true) => {
                let open_for = (*open_for * 2).min(self.config.max_open_for);
                tracing::warn!(service = self.service, open_for = ?open_for, "probe failed; circuit stays open");
                Inner::Open {
                    until: Instant::now() + open_for,
                    open_for,
                }
            }
        };
        *inner = next;
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { failures } => BreakerState::Closed {
                consecutive_failures: failures,
            },
            Inner::Open { until, .. } => BreakerState::Open {
                retry_in_ms: until.saturating_duration_since(Instant::now()).as_millis() as u64,
            },
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "svc",
            BreakerConfig {
                failure_threshold: 2,
                open_for: Duration::from_millis(40),
                max_open_for: Duration::from_secs(1),
            },
        )
    }

    #[tokio::test]
    async fn opens_after_threshold_then_probes_then_closes() {
        let b = breaker();
        b.record(true);
        assert!(b.check().is_ok());
        b.record(true);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(b.check().is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(b.check().is_ok(), "one probe after open_for");
        assert!(b.check().is_err(), "only one probe at a time");
        b.record(false);
        assert_eq!(
            b.state(),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
    }

    #[tokio::test]
    async fn a_failed_probe_doubles_the_open_time_and_4xx_do_not_count() {
        let b = breaker();
        b.record(false);
        b.record(true);
        b.record(false);
        b.record(true);
        assert!(b.check().is_ok(), "failures must be consecutive");
        b.record(true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(b.check().is_ok());
        b.record(true);
        let BreakerState::Open { retry_in_ms } = b.state() else {
            panic!("expected open")
        };
        assert!(retry_in_ms > 40, "doubled: {retry_in_ms}");
    }
}
