//! The global event feed: every journaled event, in `gid` order, for live readers (the admin
//! API's server-sent events).
//!
//! Why a reader needs more than `gid > last`: on PostgreSQL, `gid` comes from a sequence, so a
//! transaction can commit `gid = 7` after another committed `gid = 8`; a reader that saw 8 and
//! moved on would skip 7 forever. [`EventFeed`] never moves past a gap while a transaction that
//! could still fill it is in flight:
//!
//! - Every statement that inserts events writes its workflow's row first, so its transaction has
//!   an xid before it draws a `gid`. If a read at snapshot S sees `gid = 8` but not 7, the
//!   transaction holding 7 (if any) drew it before 8, so it had an xid before S was taken and is
//!   in S's in-flight list (`pg_current_snapshot()`), or it already rolled back.
//! - So a gap found at snapshot S is waited on until none of S's in-flight transactions is in
//!   flight any more; then whatever is still missing never committed, and the feed skips it.
//!   A gap is also skipped after [`MAX_GAP_WAIT`], so one stuck transaction anywhere on the
//!   server (PostgreSQL's in-flight list spans every database) cannot stop the feed for good.
//! - Opening the feed waits the same way for the transactions in flight at its first read, so
//!   [`EventFeed::settled`] is a position below which nothing can appear any more.
//!
//! The guarantee: events are delivered in `gid` order, once each; none is skipped unless its
//! transaction committed more than [`MAX_GAP_WAIT`] after a later `gid` became visible (a
//! journal write is one short statement, so in practice never). On SQLite there is one writer
//! at a time, ids become visible in order, and none of this waiting happens.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn engine::Store>) -> Result<(), engine::StoreError> {
//! let mut feed = engine::EventFeed::open(store).await?;
//! loop {
//!     for event in feed.poll(500).await? {
//!         println!("{} {} {}", event.gid, event.workflow_id, event.kind);
//!     }
//!     tokio::time::sleep(std::time::Duration::from_millis(250)).await;
//! }
//! # }
//! ```

use crate::journal::FeedEvent;
use crate::store::{FeedQuery, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a reader waits for a gap in `gid` to be filled before it skips it.
pub const MAX_GAP_WAIT: Duration = Duration::from_secs(30);

/// A position in the feed not yet known to be complete: transactions in flight may still
/// commit events below or at it.
#[derive(Debug, Clone)]
struct Wait {
    /// The first missing `gid` (for a gap) or the feed's first position (when opening).
    at: i64,
    /// The transactions that were in flight when the wait began.
    in_flight: Vec<u64>,
    since: Instant,
}

impl Wait {
    /// Whether the wait is over: none of its transactions is still in flight (`now`, sorted),
    /// or it lasted too long.
    fn over(&self, now: &[u64]) -> bool {
        self.since.elapsed() >= MAX_GAP_WAIT
            || !self.in_flight.iter().any(|x| now.binary_search(x).is_ok())
    }
}

/// A reader of the global feed from the moment it was opened; see the module docs.
#[derive(Debug)]
pub struct EventFeed {
    store: Arc<dyn Store>,
    /// Every event with `gid <= last` was delivered (or was before the opening).
    last: i64,
    /// Set while the opening position is not settled yet.
    opening: Option<Wait>,
    /// A gap right after `last` being waited on.
    gap: Option<Wait>,
}

impl EventFeed {
    /// Opens the feed at its current end: [`Self::poll`] returns events committed from now on.
    ///
    /// # Errors
    /// A store error.
    pub async fn open(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let head = store.feed_head().await?;
        let opening = head
            .in_flight
            .filter(|x| !x.is_empty())
            .map(|in_flight| Wait {
                at: head.max_gid,
                in_flight,
                since: Instant::now(),
            });
        Ok(Self {
            store,
            last: head.max_gid,
            opening,
            gap: None,
        })
    }

    /// The position up to which the feed is complete: every event with a smaller or equal
    /// `gid` is visible and will stay the only ones. `None` while the opening position still
    /// waits for transactions in flight.
    pub fn settled(&self) -> Option<i64> {
        self.opening.is_none().then_some(self.last)
    }

    /// The next events, at most `limit`, oldest first; empty when nothing new is settled.
    ///
    /// # Errors
    /// A store error; the feed stays where it was.
    ///
    /// # Cancellation safety
    /// Safe: the position moves only after the read returned.
    pub async fn poll(&mut self, limit: i64) -> Result<Vec<FeedEvent>, StoreError> {
        if let Some(opening) = &self.opening {
            let head = self.store.feed_head().await?;
            if !opening.over(head.in_flight.as_deref().unwrap_or_default()) {
                return Ok(Vec::new());
            }
            tracing::trace!(at = opening.at, "event feed settled");
            self.opening = None;
        }
        let read = self
            .store
            .read_feed(&FeedQuery {
                after: self.last,
                upto: None,
                workflow: None,
                limit: limit.max(1),
            })
            .await?;
        let mut out = Vec::with_capacity(read.events.len());
        for event in read.events {
            if event.gid > self.last + 1 {
                // A gap (self.last, event.gid): wait for the transactions that may fill it.
                if let Some(now) = &read.in_flight {
                    let at = self.last + 1;
                    let wait = match self.gap.take() {
                        Some(w) if w.at == at => w,
                        _ => Wait {
                            at,
                            in_flight: now.clone(),
                            since: Instant::now(),
                        },
                    };
                    if !wait.over(now) {
                        self.gap = Some(wait);
                        break;
                    }
                    if wait.since.elapsed() >= MAX_GAP_WAIT {
                        tracing::warn!(
                            from = at,
                            to = event.gid - 1,
                            "event feed: skipping ids still missing after {MAX_GAP_WAIT:?}"
                        );
                    }
                }
            }
            self.gap = None;
            self.last = event.gid;
            out.push(event);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_its_transactions_are_gone() {
        let wait = Wait {
            at: 1,
            in_flight: vec![10, 12],
            since: Instant::now(),
        };
        assert!(!wait.over(&[10, 12, 13]));
        assert!(!wait.over(&[12]));
        assert!(wait.over(&[11, 13]));
        assert!(wait.over(&[]));
        let empty = Wait {
            at: 1,
            in_flight: Vec::new(),
            since: Instant::now(),
        };
        assert!(
            empty.over(&[5]),
            "nothing was in flight: the gap is permanent"
        );
    }
}
