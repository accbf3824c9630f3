//! Group commit for PostgreSQL step commits.
//!
//! A step commit is a small write (the snapshot row, two or three events, an attempt row) whose
//! cost is mostly per statement and per transaction: the round trip, parse/bind, executor
//! start-up and the WAL flush. Under load, many workflows commit at the same moment; sending
//! them one statement each makes the server pay that fixed cost for every one.
//!
//! The queue here (also used for workflow creation) sends each commit at once when fewer than `max_in_flight` batches are on
//! their way to the database, so one workflow at a time sees a plain single-statement commit and
//! no added delay. Commits that arrive while that many batches are in flight wait, and the next
//! batch takes all of them (up to `max_batch`) in one statement and one transaction. Each
//! commit in a batch keeps its own fence: rows whose lease owner, epoch or version no longer
//! match write nothing and are answered [`StoreError::Fenced`], while the others commit.
//!
//! There is no background task: the caller that finds a free in-flight slot runs the batch
//! (the "leader") and answers the others through their channels; when it is done it hands its
//! slot, through the same channel, to the first caller still waiting, which collects and
//! leads the next batch. A leader dropped mid-way (its task aborted) hands its slot
//! on the same way, and the commits of its batch are answered with a database error, which
//! callers treat as transient (a retry is fenced by the version if the batch did commit).

use super::{Committed, StepCommit, StoreError};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Settings of the group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Batches on their way to the database at once; a commit that finds fewer goes at once.
    pub max_in_flight: usize,
    /// The most commits one batch takes.
    pub max_batch: usize,
}

impl Default for GroupCommit {
    /// One batch in flight: on two cores measured best (`kodomasu bench --workload chain`,
    /// docs/benchmarks.md): a second batch in flight halves the batches and competes for the
    /// same CPUs.
    fn default() -> Self {
        Self {
            max_in_flight: 1,
            max_batch: 128,
        }
    }
}

struct Queued<Req, Resp> {
    id: u64,
    request: Req,
    /// The caller's only sender: when it is dropped unanswered, the caller learns its batch
    /// was lost.
    reply: mpsc::UnboundedSender<Reply<Resp>>,
}

/// What a waiting caller receives: its answer, or an in-flight slot to lead the next batch
/// with. A slot is sent (under the queue's lock) only to a caller still waiting, so it always
/// arrives before that caller's answer.
enum Reply<Resp> {
    Done(Resp),
    Lead,
}

struct QueueState<Req, Resp> {
    waiting: VecDeque<Queued<Req, Resp>>,
    in_flight: usize,
    next_id: u64,
}

/// Requests waiting for a batch; `Req` is what one caller writes, `Resp` its answer.
pub(super) struct BatchQueue<Req, Resp> {
    settings: GroupCommit,
    state: Mutex<QueueState<Req, Resp>>,
}

impl<Req, Resp> std::fmt::Debug for BatchQueue<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchQueue")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Holds an in-flight slot; when dropped (the batch answered, or the leader dropped mid-way)
/// it hands the slot to a waiting caller, or frees it.
struct Leading<'a, Req, Resp>(&'a BatchQueue<Req, Resp>);

impl<Req, Resp> Drop for Leading<'_, Req, Resp> {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        // The first caller still there gets the slot; callers that went away are dropped
        // with their requests unsent: nobody was told they committed.
        while let Some(first) = st.waiting.front() {
            if first.reply.send(Reply::Lead).is_ok() {
                return;
            }
            st.waiting.pop_front();
        }
        st.in_flight -= 1;
    }
}

impl<Req, Resp> BatchQueue<Req, Resp> {
    pub(super) fn new(settings: GroupCommit) -> Self {
        Self {
            settings: GroupCommit {
                max_in_flight: settings.max_in_flight.max(1),
                max_batch: settings.max_batch.max(1),
            },
            state: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                in_flight: 0,
                next_id: 0,
            }),
        }
    }

    /// Sends `request` in a batch and returns its answer: at once, leading the batch, when
    /// an in-flight slot is free; else after a leader answered it, or handed this caller a
    /// slot to lead the next batch with. `send` writes one batch and returns one answer per
    /// request, in order. When the batch that held `request` is dropped before answering,
    /// the answer is `lost()`.
    pub(super) async fn submit<F, Fut>(&self, request: Req, send: F, lost: fn() -> Resp) -> Resp
    where
        F: Fn(Vec<Req>) -> Fut,
        Fut: Future<Output = Vec<Resp>>,
    {
        let (reply, mut answer) = mpsc::unbounded_channel();
        let (id, mut leading) = {
            let mut st = lock(&self.state);
            let id = st.next_id;
            st.next_id += 1;
            st.waiting.push_back(Queued { id, request, reply });
            let free = st.in_flight < self.settings.max_in_flight;
            if free {
                st.in_flight += 1;
            }
            (id, free)
        };
        let mut handed = false;
        loop {
            if leading {
                let slot = Leading(self);
                if handed {
                    // The slot came from a batch that just answered: let the callers it
                    // answered queue their next requests, so they go in this batch rather
                    // than wait for the one after.
                    tokio::task::yield_now().await;
                }
                let batch = self.take_batch(id);
                if !batch.is_empty() {
                    self.run(batch, &send, lost).await;
                }
                drop(slot);
            }
            match answer.recv().await {
                Some(Reply::Done(r)) => return r,
                Some(Reply::Lead) => (leading, handed) = (true, true),
                None => return lost(),
            }
        }
    }

    /// The next batch: the caller's own request first if it still waits, then the oldest.
    fn take_batch(&self, own: u64) -> Vec<Queued<Req, Resp>> {
        let mut st = lock(&self.state);
        let mut batch = Vec::with_capacity(st.waiting.len().min(self.settings.max_batch));
        if let Some(i) = st.waiting.iter().position(|q| q.id == own) {
            batch.extend(st.waiting.remove(i));
        }
        while batch.len() < self.settings.max_batch {
            match st.waiting.pop_front() {
                Some(q) => batch.push(q),
                None => break,
            }
        }
        batch
    }

    /// Writes one batch and answers every request in it.
    async fn run<F, Fut>(&self, batch: Vec<Queued<Req, Resp>>, send: &F, lost: fn() -> Resp)
    where
        F: Fn(Vec<Req>) -> Fut,
        Fut: Future<Output = Vec<Resp>>,
    {
        let mut requests = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for q in batch {
            requests.push(q.request);
            replies.push(q.reply);
        }
        let mut answers = send(requests).await.into_iter();
        for reply in replies {
            let answer = answers.next().unwrap_or_else(lost);
            // A caller that went away does not need its answer.
            let _ = reply.send(Reply::Done(answer));
        }
    }
}

/// The step commits' queue.
pub(super) type CommitQueue = BatchQueue<StepCommit, Result<Committed, StoreError>>;

/// The answer of a request whose batch was dropped mid-way: a transient database error, since
/// the batch may or may not have committed.
pub(super) fn lost<T>() -> Result<T, StoreError> {
    Err(StoreError::Database(sqlx::Error::Io(
        std::io::Error::other("the batch was dropped before its outcome was known"),
    )))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
