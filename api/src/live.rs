//! Live updates: server-sent events of every journaled transition, global
//! (`GET /api/v1/events`) or per workflow (`GET /api/v1/workflows/{id}/events`).
//!
//! Each message is `id: <gid>`, `event: transition`, `data: {"id", "workflow_id", "type",
//! "seq", "kind", "status", "at"}` where `id` is the event's global position ([`engine::EventFeed`]).
//! A client resumes with the `Last-Event-ID` header (browsers send it on reconnect) or
//! `?after=<id>`; without either it gets events from now on. Keep-alive comments flow while
//! nothing happens.
//!
//! Guarantee: a stream delivers events in increasing `id`, each once, and resuming after id `n`
//! delivers every event after `n` that the feed delivers, none skipped (within the limits of
//! [`engine::EventFeed`]: an event whose transaction commits more than
//! [`engine::MAX_GAP_WAIT`] after a later one became visible may be left out of live streams;
//! the journal always has it).
//!
//! One hub per server reads the feed for all streams: it polls every [`POLL_INTERVAL`] and on
//! the store's wake-up hints while at least one stream is open, and costs nothing otherwise. A
//! stream first catches up from the database (from its resume point to the hub's settled
//! position), then follows the hub's broadcast; a stream that falls behind the broadcast catches
//! up from the database again. Streams end when the client goes away or the server shuts down.

use crate::error::ErrorBody;
use crate::routes::workflows::parse_id;
use crate::{ApiError, AppState};
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, KeepAliveStream, Sse};
use axum::routing::get;
use engine::{Engine, EventFeed, FeedEvent, WorkflowId};
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiPath, ApiQuery};

/// How often the hub reads the feed while streams are open.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Interval of keep-alive comments on an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events per read of the feed or of a catch-up.
const BATCH: i64 = 500;
/// Broadcast messages buffered per stream before it counts as lagging.
const CAPACITY: usize = 256;

/// A message of the hub to its streams.
#[derive(Debug, Clone)]
enum HubMsg {
    /// New settled events, in order.
    Events(Arc<[FeedEvent]>),
    /// The hub (re)opened the feed: events up to the settled position were not broadcast;
    /// streams catch up from the database.
    Reset,
}

#[derive(Debug)]
struct Hub {
    engine: Arc<Engine>,
    tx: broadcast::Sender<HubMsg>,
    /// The hub's settled position; `None` while it has none (idle or opening).
    head: watch::Sender<Option<i64>>,
    /// A stream arrived.
    wake: Notify,
    started: AtomicBool,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    keep_alive: Duration,
}

/// The live-event hub of one server; clones share it.
#[derive(Debug, Clone)]
pub struct Live {
    hub: Arc<Hub>,
}

impl Live {
    /// A hub whose task runs on `tracker` (started with the first stream) and whose streams end
    /// at `shutdown`.
    pub fn new(engine: Arc<Engine>, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self::with_keep_alive(engine, tracker, shutdown, KEEP_ALIVE)
    }

    /// [`Live::new`] with another keep-alive interval.
    pub fn with_keep_alive(
        engine: Arc<Engine>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        keep_alive: Duration,
    ) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        let (head, _) = watch::channel(None);
        Self {
            hub: Arc::new(Hub {
                engine,
                tx,
                head,
                wake: Notify::new(),
                started: AtomicBool::new(false),
                tracker,
                shutdown,
                keep_alive,
            }),
        }
    }

    /// How many event streams are open.
    pub fn open_streams(&self) -> usize {
        self.hub.tx.receiver_count()
    }

    /// Subscribes a stream: its receiver, then the hub is woken (and started the first time).
    fn subscribe(&self) -> broadcast::Receiver<HubMsg> {
        let rx = self.hub.tx.subscribe();
        if !self.hub.started.swap(true, Ordering::AcqRel) && !self.hub.tracker.is_closed() {
            self.hub.tracker.spawn(run_hub(self.hub.clone()));
        }
        self.hub.wake.notify_one();
        rx
    }
}

async fn run_hub(hub: Arc<Hub>) {
    let store = hub.engine.store().clone();
    loop {
        // Idle: nobody listens, nothing is read.
        while hub.tx.receiver_count() == 0 {
            hub.head.send_replace(None);
            tokio::select! {
                () = hub.wake.notified() => {}
                () = hub.shutdown.cancelled() => return,
            }
        }
        let feed = tokio::select! {
            feed = EventFeed::open(store.clone()) => feed,
            () = hub.shutdown.cancelled() => return,
        };
        let mut feed = match feed {
            Ok(feed) => feed,
            Err(e) => {
                tracing::warn!(error.message = %e, "live events: cannot open the event feed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = hub.shutdown.cancelled() => return,
                }
            }
        };
        // Wake-up hints are best effort; polling goes on without them.
        let mut hints = store.listen().await.ok();
        let mut announced = false;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while hub.tx.receiver_count() > 0 {
            let mut full = false;
            match feed.poll(BATCH).await {
                Ok(events) => {
                    full = events.len() as i64 == BATCH;
                    if let Some(settled) = feed.settled() {
                        hub.head.send_replace(Some(settled));
                        if !announced {
                            // Streams read everything up to `settled` from the database.
                            announced = true;
                            let _ = hub.tx.send(HubMsg::Reset);
                        } else if !events.is_empty() {
                            let _ = hub.tx.send(HubMsg::Events(events.into()));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error.message = %e, "live events: reading the event feed failed");
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = tick.tick() => {}
                hint = next_hint(&mut hints) => if hint.is_err() { hints = None },
                () = hub.wake.notified() => {}
                () = hub.shutdown.cancelled() => return,
            }
        }
    }
}

async fn next_hint(
    hints: &mut Option<Box<dyn engine::store::WakeListener>>,
) -> Result<(), engine::StoreError> {
    match hints {
        Some(listener) => listener.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// The `data` of a `transition` message.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionData {
    /// The event's global position (also the message's `id`).
    pub id: i64,
    #[schema(value_type = String, format = Uuid)]
    pub workflow_id: WorkflowId,
    #[serde(rename = "type")]
    pub workflow_type: String,
    /// The event's seq in its workflow's journal.
    pub seq: i64,
    /// The event kind: `started`, `transitioned`, `activity_completed`, `paused`, ...
    pub kind: String,
    /// The status the event set; `null` for events that leave it unchanged.
    #[schema(value_type = Option<crate::openapi::StatusName>)]
    pub status: Option<engine::Status>,
    pub at: chrono::DateTime<chrono::Utc>,
}

fn message(e: &FeedEvent) -> Event {
    let data = TransitionData {
        id: e.gid,
        workflow_id: e.workflow_id,
        workflow_type: e.workflow_type.clone(),
        seq: e.seq,
        kind: e.kind.clone(),
        status: e.status,
        at: e.created_at,
    };
    let event = Event::default().id(e.gid.to_string()).event("transition");
    match event.json_data(&data) {
        Ok(event) => event,
        Err(_) => Event::default().comment("unencodable event"),
    }
}

/// One stream's state: catch up from the database, then follow the hub.
struct Subscriber {
    live: Live,
    rx: broadcast::Receiver<HubMsg>,
    head: watch::Receiver<Option<i64>>,
    workflow: Option<WorkflowId>,
    /// Where to start; `None`: from the hub's position when it is first known.
    last: Option<i64>,
    /// Catch up from the database up to this position.
    catch_up_to: Option<i64>,
    queued: VecDeque<FeedEvent>,
}

impl Subscriber {
    /// The next message; `None` ends the stream (server shutdown).
    async fn next(&mut self) -> Option<Event> {
        let shutdown = self.live.hub.shutdown.clone();
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let Some(last) = self.last else {
                // Wait for the hub's first settled position.
                let head = tokio::select! {
                    head = self.head.wait_for(Option::is_some) => head.ok().and_then(|h| *h),
                    () = shutdown.cancelled() => return None,
                };
                self.last = Some(head?);
                continue;
            };
            while let Some(e) = self.queued.pop_front() {
                if e.gid > last {
                    self.last = Some(e.gid);
                    return Some(message(&e));
                }
            }
            if let Some(to) = self.catch_up_to {
                if last >= to {
                    self.catch_up_to = None;
                    continue;
                }
                let page = tokio::select! {
                    page = self.live.hub.engine.feed_events(last, to, self.workflow, BATCH) => page,
                    () = shutdown.cancelled() => return None,
                };
                match page {
                    Ok(page) if page.is_empty() => self.catch_up_to = None,
                    Ok(page) => self.queued.extend(page),
                    Err(e) => {
                        tracing::warn!(error.message = %e, "live events: catching up failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = shutdown.cancelled() => return None,
                        }
                    }
                }
                continue;
            }
            let msg = tokio::select! {
                msg = self.rx.recv() => msg,
                () = shutdown.cancelled() => return None,
            };
            match msg {
                Ok(HubMsg::Events(events)) => self.queued.extend(
                    events
                        .iter()
                        .filter(|e| self.workflow.is_none_or(|w| w == e.workflow_id))
                        .cloned(),
                ),
                Ok(HubMsg::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let head = *self.head.borrow();
                    self.catch_up_to = head.max(self.catch_up_to);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Query of the event streams.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// Resume after this event id (the `Last-Event-ID` header wins when both are given).
    after: Option<i64>,
}

/// Where a stream starts: `Last-Event-ID`, else `?after=`, else now.
fn start_after(headers: &HeaderMap, after: Option<i64>) -> Result<Option<i64>, ApiError> {
    let invalid = |what: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_last_event_id",
            format!("{what} must be an event id (a non-negative integer)"),
        )
    };
    if let Some(value) = headers.get("last-event-id") {
        let id = value
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|id| *id >= 0)
            .ok_or_else(|| invalid("Last-Event-ID"))?;
        return Ok(Some(id));
    }
    match after {
        Some(a) if a < 0 => Err(invalid("after")),
        other => Ok(other),
    }
}

type EventStream =
    Sse<KeepAliveStream<std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>>>;

fn stream(live: &Live, workflow: Option<WorkflowId>, after: Option<i64>) -> EventStream {
    let rx = live.subscribe();
    let head = live.hub.head.subscribe();
    let current = *head.borrow();
    let subscriber = Subscriber {
        live: live.clone(),
        rx,
        head,
        workflow,
        last: after,
        // A resume point catches up to the hub's position (a `Reset` follows when there is none).
        catch_up_to: after.and(current),
        queued: VecDeque::new(),
    };
    let events = futures::stream::unfold(subscriber, |mut s| async move {
        s.next().await.map(|event| (Ok(event), s))
    });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(events);
    Sse::new(events).keep_alive(KeepAlive::new().interval(live.hub.keep_alive))
}

/// Every workflow's transitions as server-sent events.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "live",
    params(
        EventsParams,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "`text/event-stream` of `transition` messages whose data is a TransitionData", content_type = "text/event-stream", body = TransitionData),
        (status = 400, description = "Bad Last-Event-ID or after", body = ErrorBody),
    )
)]
pub(crate) async fn all_events(
    Extension(live): Extension<Live>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<EventsParams>,
) -> Result<EventStream, ApiError> {
    let after = match start_after(&headers, p.after)? {
        Some(after) => after,
        None => now_position(&live).await?,
    };
    Ok(stream(&live, None, Some(after)))
}

/// One workflow's transitions as server-sent events.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/events",
    tag = "live",
    params(
        ("id" = String, Path, description = "Workflow id (UUID)"),
        EventsParams,
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "`text/event-stream` of this workflow's `transition` messages", content_type = "text/event-stream", body = TransitionData),
        (status = 400, description = "Bad id, Last-Event-ID or after", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
    )
)]
pub(crate) async fn workflow_events(
    State(state): State<AppState>,
    Extension(live): Extension<Live>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<EventsParams>,
) -> Result<EventStream, ApiError> {
    let id = parse_id(&id)?;
    let after = start_after(&headers, p.after)?;
    state.engine.get(id).await?;
    let after = match after {
        Some(after) => after,
        None => now_position(&live).await?,
    };
    Ok(stream(&live, Some(id), Some(after)))
}

/// Where a stream without a resume point starts: no later than the newest event visible when
/// the request arrived, so whatever happens after the request is delivered. An id below the
/// feed's head may still belong to a transaction in flight; when the hub has a settled position
/// (everything up to it is final) the stream starts there, which may repeat a few events from
/// just before the request. With no hub position yet (no other stream open) it starts at the
/// head: an event of a transaction that began before the request and commits after it can then
/// be missed by this stream (never by the journal, nor by a resume with `Last-Event-ID`).
async fn now_position(live: &Live) -> Result<i64, ApiError> {
    let head = live
        .hub
        .engine
        .store()
        .feed_head()
        .await
        .map_err(engine::EngineError::from)?;
    let settled = *live.hub.head.borrow();
    let in_flight = head.in_flight.as_ref().is_some_and(|t| !t.is_empty());
    Ok(match settled {
        Some(settled) if in_flight => settled.min(head.max_gid),
        _ => head.max_gid,
    })
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(all_events))
        .route("/workflows/{id}/events", get(workflow_events))
}
