//! Dead-worker detection on PostgreSQL without waiting for leases to run out.
//!
//! A worker process holds a session advisory lock keyed by its id on a dedicated, otherwise idle
//! connection (the *holder*). When the process dies (SIGKILL, OOM, a crashed host whose TCP
//! connection is reset), PostgreSQL ends that session at once and the lock is free.
//!
//! Workers form a ring ordered by (started_at, id): each one blocks on a second dedicated
//! connection (the *watcher*) in `call kodomasu.await_advisory_lock(<key of its successor>, …)`,
//! which takes the successor's lock. The call returns the moment the successor's session ends;
//! the watcher then reports the death, and the worker pool expires the dead worker's leases and
//! wakes everyone ([`super::Store::reap_worker`]). A blocked wait sends no queries: an idle ring
//! costs one re-check per [`WATCH_RECHECK`]. A worker that joins cancels its predecessor's wait
//! so that it is watched from its first second.
//!
//! The waits (that one, and the sleep of a worker alone) are procedures that wait in slices of
//! at most a second and commit in between, instead of one long statement: a statement that
//! blocks keeps its snapshot, and an old snapshot stops PostgreSQL from removing any row version
//! of the database that died after it (migration `20261203000002`, docs/benchmarks.md).
//!
//! The lease stays the fallback for what this cannot see: a frozen process (SIGSTOP) or a network
//! partition keeps its session, so its workflows move when its lease runs out. A false alarm
//! (the holder connection alone was cut, e.g. by `pg_terminate_backend`) is safe: the live
//! worker's next commit is fenced by the lease epoch, and it takes its presence back.

use super::{Presence, StoreError};
use crate::WorkerId;
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use std::collections::VecDeque;
use std::time::Duration;

/// How long one wait on a peer's lock lasts before the ring is looked at again (a join normally
/// cancels the wait sooner).
pub(crate) const WATCH_RECHECK: Duration = Duration::from_secs(30);

/// How long a peer's lock must stay free before the peer counts as dead. A live worker whose
/// sessions were all cut at once (a database restart, a `pg_terminate_backend` sweep, a proxy
/// reset) takes its lock back within this, and so keeps its workflows instead of having them
/// fenced and their running activities run again. It adds this much to a real death's recovery.
const CONFIRM_DEAD_AFTER: Duration = Duration::from_millis(250);

/// `application_name` of watcher sessions; only those are ever cancelled by a joining worker.
const WATCH_APP: &str = "kodomasu-watch";

/// The advisory-lock key of a worker: both halves of its UUID folded into 64 bits.
pub(crate) fn presence_key(worker: WorkerId) -> i64 {
    let v = worker.0.as_u128();
    ((v >> 64) as u64 ^ v as u64) as i64
}

/// A worker's presence on PostgreSQL: the holder and watcher sessions.
#[derive(Debug)]
pub(crate) struct PgPresence {
    me: WorkerId,
    /// Holds this worker's lock; idle but for one ping per wait. Dropped with the presence.
    holder: PgConnection,
    watcher: PgConnection,
    watcher_pid: i32,
    /// Dead workers found by the first sweep, reported before the ring wait starts.
    found: VecDeque<WorkerId>,
    joined: bool,
}

impl PgPresence {
    /// Takes `me`'s presence lock and opens the watcher session. Call before registering the
    /// worker, so that no registry row exists without its lock.
    pub(crate) async fn acquire(
        options: &PgConnectOptions,
        me: WorkerId,
    ) -> Result<Self, StoreError> {
        let mut holder = options
            .clone()
            .application_name("kodomasu-presence")
            .connect()
            .await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(presence_key(me))
            .fetch_one(&mut holder)
            .await?;
        if !locked {
            return Err(StoreError::Corrupt(format!(
                "the presence lock of worker {me} is already held by another session"
            )));
        }
        // Its statements wait by design (up to WATCH_RECHECK): not sqlx's "slow statement".
        let mut watcher = options
            .clone()
            .application_name(WATCH_APP)
            .disable_statement_logging()
            .connect()
            .await?;
        let timeout_ms = WATCH_RECHECK.as_millis().to_string();
        sqlx::query("select set_config('lock_timeout', $1, false)")
            .bind(&timeout_ms)
            .execute(&mut watcher)
            .await?;
        // PostgreSQL >= 14: notice a vanished client even while blocked in a lock wait, so a
        // killed worker's own watch session ends at once too. Older servers lack the setting;
        // their orphaned wait ends with `lock_timeout`.
        let _ = sqlx::query("select set_config('client_connection_check_interval', '250', false)")
            .execute(&mut watcher)
            .await;
        let watcher_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut watcher)
            .await?;
        Ok(Self {
            me,
            holder,
            watcher,
            watcher_pid,
            found: VecDeque::new(),
            joined: false,
        })
    }
}

#[async_trait]
impl Presence for PgPresence {
    fn watch_pid(&self) -> Option<i32> {
        Some(self.watcher_pid)
    }

    async fn next_death(&mut self) -> Result<Option<(WorkerId, u64)>, StoreError> {
        match self.watch_once().await {
            Err(StoreError::Database(e)) if is_interrupted_wait(&e) => Ok(None),
            other => other,
        }
    }
}

impl PgPresence {
    /// One round of the watch: the first round sweeps and announces this worker; then waits on
    /// the successor's lock. A statement interrupted by a joining worker's cancel or by
    /// `lock_timeout` surfaces as an error the caller turns into "look again".
    async fn watch_once(&mut self) -> Result<Option<(WorkerId, u64)>, StoreError> {
        // A cancel that hit between "lock granted" and the unlock left a lock behind: this
        // session holds no lock of its own, so drop whatever it holds.
        sqlx::query("select pg_advisory_unlock_all()")
            .execute(&mut self.watcher)
            .await?;
        if !self.joined {
            self.join().await?;
            self.joined = true;
        }
        while let Some(dead) = self.found.pop_front() {
            if let Some(freed) = self.reap_if_free(dead).await? {
                return Ok(Some((dead, freed)));
            }
        }
        // A holder session cut on its own (`pg_terminate_backend`, a proxy timeout) has lost our
        // lock; fail so that the worker takes its presence again.
        self.holder.ping().await?;
        let successor: Option<WorkerId> = sqlx::query_scalar(
            "select w.id from kodomasu.workers w,
                    (select started_at, id from kodomasu.workers where id = $1) me
             where w.stopped_at is null and w.watch_pid is not null and w.id <> $1
             order by (w.started_at, w.id) > (me.started_at, me.id) desc, w.started_at, w.id
             limit 1",
        )
        .bind(self.me)
        .fetch_optional(&mut self.watcher)
        .await?;
        let Some(peer) = successor else {
            // Alone: sleep in a cancellable statement, so a joining worker can wake us; in
            // slices, so that the wait pins no old snapshot (see the migration that adds it).
            sqlx::query("call kodomasu.sleep_in_slices($1)")
                .bind(WATCH_RECHECK.as_secs_f64())
                .execute(&mut self.watcher)
                .await?;
            return Ok(None);
        };
        // Blocks until the peer's session ends, in slices that pin no old snapshot; fails with
        // 55P03 after WATCH_RECHECK, as a plain lock wait under `lock_timeout` would.
        sqlx::query("call kodomasu.await_advisory_lock($1, $2)")
            .bind(presence_key(peer))
            .bind(WATCH_RECHECK.as_secs_f64())
            .execute(&mut self.watcher)
            .await?;
        // Its session ended. Let go, so that a live peer whose sessions were merely cut can take
        // its lock back, and look again after the grace.
        sqlx::query("select pg_advisory_unlock($1)")
            .bind(presence_key(peer))
            .execute(&mut self.watcher)
            .await?;
        tokio::time::sleep(CONFIRM_DEAD_AFTER).await;
        Ok(self.reap_if_free(peer).await?.map(|freed| (peer, freed)))
    }

    /// If nobody holds `peer`'s lock, reaps it while holding the lock (so the peer cannot come
    /// back between the check and the reap) and returns how many workflows it held; `None` when
    /// the peer holds its lock (alive) or was already stopped.
    async fn reap_if_free(&mut self, peer: WorkerId) -> Result<Option<u64>, StoreError> {
        let free: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(presence_key(peer))
            .fetch_one(&mut self.watcher)
            .await?;
        if !free {
            return Ok(None);
        }
        let reaped = super::postgres::reap_worker(&mut self.watcher, peer).await;
        let unlocked = sqlx::query("select pg_advisory_unlock($1)")
            .bind(presence_key(peer))
            .execute(&mut self.watcher)
            .await;
        let reaped = reaped?;
        unlocked?;
        Ok(reaped)
    }

    /// Once registered: finds workers that died while nobody watched them (every worker was
    /// down, or they predate presence), and interrupts the wait of this worker's predecessor
    /// in the ring so that it watches this worker from now on.
    async fn join(&mut self) -> Result<(), StoreError> {
        // Only workers that hold a presence: a row without `watch_pid` belongs to a version
        // that predates it (a rolling upgrade) and is left to its lease.
        let others: Vec<WorkerId> = sqlx::query_scalar(
            "select id from kodomasu.workers
             where stopped_at is null and watch_pid is not null and id <> $1",
        )
        .bind(self.me)
        .fetch_all(&mut self.watcher)
        .await?;
        let mut suspects = Vec::new();
        for peer in others {
            let free: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                .bind(presence_key(peer))
                .fetch_one(&mut self.watcher)
                .await?;
            if free {
                sqlx::query("select pg_advisory_unlock($1)")
                    .bind(presence_key(peer))
                    .execute(&mut self.watcher)
                    .await?;
                suspects.push(peer);
            }
        }
        if !suspects.is_empty() {
            // Peers restarting together with this one (after a database restart) may not have
            // taken their locks back yet; `watch_once` checks each again before reaping.
            tokio::time::sleep(CONFIRM_DEAD_AFTER).await;
            self.found.extend(suspects);
        }
        sqlx::query(
            "select pg_cancel_backend(a.pid) from pg_stat_activity a
             where a.application_name = $2 and a.pid = (
                select w.watch_pid from kodomasu.workers w,
                       (select started_at, id from kodomasu.workers where id = $1) me
                where w.stopped_at is null and w.watch_pid is not null and w.id <> $1
                order by (w.started_at, w.id) < (me.started_at, me.id) desc,
                         w.started_at desc, w.id desc
                limit 1)",
        )
        .bind(self.me)
        .bind(WATCH_APP)
        .execute(&mut self.watcher)
        .await?;
        Ok(())
    }
}

/// A wait that ended by `lock_timeout` (55P03) or by a joining worker's cancel (57014).
fn is_interrupted_wait(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03" || c == "57014")
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn presence_key_folds_both_halves() {
        let a = WorkerId(Uuid::from_u128(0x0000_0000_0000_0001_0000_0000_0000_0002));
        assert_eq!(presence_key(a), 3);
        let b = WorkerId(Uuid::from_u128(u128::MAX));
        assert_eq!(presence_key(b), 0);
    }
}
