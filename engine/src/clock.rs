//! Time as the database sees it: leases, timers and retry times all use the database clock, so
//! workers with skewed clocks agree.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicI64, Ordering};

/// The local clock corrected by the offset to the database clock seen at the last claim.
#[derive(Debug, Default)]
pub(crate) struct DbClock {
    offset_micros: AtomicI64,
}

impl DbClock {
    /// Records the database's `now()` as observed just now.
    pub(crate) fn observe(&self, db_now: DateTime<Utc>) {
        let offset = (db_now - Utc::now()).num_microseconds().unwrap_or(0);
        self.offset_micros.store(offset, Ordering::Relaxed);
    }

    /// The current database time, estimated.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::microseconds(self.offset_micros.load(Ordering::Relaxed))
    }
}
