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
//! The caller that finds a free in-flight slot starts the batch; the batch runs in a task of
//! its own that answers every caller in it through their channels and then hands the slot,
//! through the same channel, to the first caller still waiting, which collects and starts the
//! next batch. So a caller that goes away (its task aborted, an HTTP client gone) cancels no
//! write and takes no slot with it: its request leaves the queue, and a slot sent to it moves
//! on.

use super::{Committed, StepCommit, StoreError};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

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
    /// The batches being written. A batch runs in its own task, which holds the in-flight
    /// slot and answers every caller in it, so a caller that goes away mid-way (its task
    /// aborted, an HTTP client gone) cancels nobody else's write.
    batches: TaskTracker,
}

impl<Req, Resp> std::fmt::Debug for BatchQueue<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchQueue")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// An in-flight slot. When dropped (its batch answered, or its holder gone before the batch
/// started) it goes to the first caller still waiting, other than `holder`, or is freed.
struct Slot<Req, Resp> {
    queue: Arc<BatchQueue<Req, Resp>>,
    holder: u64,
}

impl<Req, Resp> Drop for Slot<Req, Resp> {
    fn drop(&mut self) {
        let mut st = lock(&self.queue.state);
        release_slot(&mut st, self.holder);
    }
}

/// Hands a slot to the first waiting caller but `holder` that is still there, or frees it.
/// Callers that went away are dropped with their requests unsent: nobody was told they
/// committed.
fn release_slot<Req, Resp>(st: &mut QueueState<Req, Resp>, holder: u64) {
    let mut i = 0;
    while i < st.waiting.len() {
        let q = &st.waiting[i];
        if q.id == holder {
            i += 1;
        } else if q.reply.send(Reply::Lead).is_ok() {
            return;
        } else {
            st.waiting.remove(i);
        }
    }
    st.in_flight -= 1;
}

/// A caller's place in the queue. When the caller goes away, its request leaves the queue
/// and any slot handed to it moves on, so no slot is lost with it.
struct Waiter<'a, Req, Resp> {
    queue: &'a BatchQueue<Req, Resp>,
    id: u64,
    answer: mpsc::UnboundedReceiver<Reply<Resp>>,
}

impl<Req, Resp> Drop for Waiter<'_, Req, Resp> {
    fn drop(&mut self) {
        let mut st = lock(&self.queue.state);
        if let Some(i) = st.waiting.iter().position(|q| q.id == self.id) {
            st.waiting.remove(i);
        }
        // Slots are sent under the lock, and only to callers in `waiting`: none can arrive
        // after this.
        self.answer.close();
        while let Ok(reply) = self.answer.try_recv() {
            if let Reply::Lead = reply {
                release_slot(&mut st, self.id);
            }
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> BatchQueue<Req, Resp> {
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
            batches: TaskTracker::new(),
        }
    }

    /// Sends `request` in a batch and returns its answer. When an in-flight slot is free the
    /// batch starts at once; else the caller waits until a batch answers it, or until it is
    /// handed a slot and starts the next batch. `send` writes one batch and returns one
    /// answer per request, in order. When the batch that held `request` ended without an
    /// answer for it, the answer is `lost()`.
    pub(super) async fn submit<F, Fut>(
        self: &Arc<Self>,
        request: Req,
        send: F,
        lost: fn() -> Resp,
    ) -> Resp
    where
        F: Fn(Vec<Req>) -> Fut,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (reply, answer) = mpsc::unbounded_channel();
        let (mut waiter, free) = {
            let mut st = lock(&self.state);
            let id = st.next_id;
            st.next_id += 1;
            st.waiting.push_back(Queued { id, request, reply });
            let free = st.in_flight < self.settings.max_in_flight;
            if free {
                st.in_flight += 1;
            }
            (
                Waiter {
                    queue: self,
                    id,
                    answer,
                },
                free,
            )
        };
        if free {
            let slot = Slot {
                queue: self.clone(),
                holder: waiter.id,
            };
            self.start_batch(slot, &send, lost);
        }
        loop {
            match waiter.answer.recv().await {
                Some(Reply::Done(r)) => return r,
                Some(Reply::Lead) => {
                    let slot = Slot {
                        queue: self.clone(),
                        holder: waiter.id,
                    };
                    // The slot came from a batch that just answered: let the callers it
                    // answered queue their next requests, so they go in this batch rather
                    // than wait for the one after. Dropped here, the slot moves on.
                    tokio::task::yield_now().await;
                    self.start_batch(slot, &send, lost);
                }
                None => return lost(),
            }
        }
    }

    /// Takes the next batch (the slot holder's own request first if it still waits, then
    /// the oldest) and writes it in a task that keeps the slot until the batch answered.
    fn start_batch<F, Fut>(&self, slot: Slot<Req, Resp>, send: &F, lost: fn() -> Resp)
    where
        F: Fn(Vec<Req>) -> Fut,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let batch = self.take_batch(slot.holder);
        if batch.is_empty() {
            return;
        }
        let mut requests = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for q in batch {
            requests.push(q.request);
            replies.push(q.reply);
        }
        let write = send(requests);
        self.batches.spawn(async move {
            let mut answers = write.await.into_iter();
            for reply in replies {
                let answer = answers.next().unwrap_or_else(lost);
                // A caller that went away does not need its answer.
                let _ = reply.send(Reply::Done(answer));
            }
            drop(slot);
        });
    }

    /// The next batch: the caller's own request first if it still waits, then the oldest;
    /// requests of callers that went away are dropped.
    fn take_batch(&self, own: u64) -> Vec<Queued<Req, Resp>> {
        let mut st = lock(&self.state);
        let mut batch = Vec::with_capacity(st.waiting.len().min(self.settings.max_batch));
        if let Some(i) = st.waiting.iter().position(|q| q.id == own) {
            batch.extend(st.waiting.remove(i));
        }
        while batch.len() < self.settings.max_batch {
            match st.waiting.pop_front() {
                Some(q) if q.reply.is_closed() => {}
                Some(q) => batch.push(q),
                None => break,
            }
        }
        batch
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
