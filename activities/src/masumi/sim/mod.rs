//! A simulator of the Masumi payment service, seller side: a real HTTP server speaking API
//! 0.27.0 (paths, validation rules and messages, envelope, enums, ms-string times), with a
//! simulated buyer per payment, a simulated chain, and fault injection.
//!
//! Used by the dev mode, benchmarks and tests. Test-control endpoints under `/_sim` (no auth)
//! preset buyers, inject faults and report every payment with counters (create, submit-result
//! and authorize-refund calls, submitted hashes, state history) to check money safety from
//! the outside.
//!
//! Time: every step of the simulated chain is a function of the payment and the clock, applied
//! by a driver task and on every request, each at its own due time. Seller transactions take
//! `chain_step_ms` per step (queued → sent → confirmed). With `fast_clock = false` deadline-bound
//! steps wait for the real deadlines (+10 min, as the real service): the seller's collection
//! after `unlockTime`, the buyer's refund after `submitResultTime`, the admins after
//! `externalDisputeUnlockTime`. With `fast_clock = true` they happen as soon as they are the
//! logical next step: `chain_step_ms` after `ResultSubmitted` (withdrawal; after a pending
//! buyer dispute) or after `RefundRequested` (refund); deadlines the seller could still pre-empt
//! (a refund of `FundsLocked` without result, the admins' settlement of `Disputed`) pass
//! `seller_window_ms` after the payment went quiet. Buyer moves always take their `after_ms`.
//!
//! Faithful to 0.27.0 where it matters to a seller: the 404 of `resolve-blockchain-identifier`
//! says `Payment not found` (the source's words); `submit-result` and `authorize-refund` check
//! state, `NextAction` and current transaction before the API key (404 before 403);
//! `SubmitResultInitiated` carries no `resultHash`; a submit queued less than a minute before
//! `submitResultTime` is never sent. Not reproduced: the random delay of up to 1 s the real
//! service adds to failed authentications, permissions other than read+pay, admin keys.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use activities::masumi::sim::{MasumiSim, MasumiSimConfig};
//! let sim = MasumiSim::spawn(MasumiSimConfig::default()).await?;
//! println!("payment service at {}", sim.base_url()); // http://127.0.0.1:PORT/api/v1
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod chain;
mod http;

pub use chain::{SIM_SELLER_VKEY, SimCounters, SimPaymentReport, SimStateChange};

use crate::masumi::types::{Amount, Network};
use chain::SimPayment;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The API key the default configuration accepts.
pub const SIM_TOKEN: &str = "sim-masumi-token";
/// The agent registry policy id the default configuration accepts (56 hex characters).
pub const SIM_POLICY_ID: &str = "6b6f646f6d61737573696d6b6f646f6d61737573696d6b6f646f6d61";
/// An agent identifier under [`SIM_POLICY_ID`] (policy id + asset name `kodomasu-agent`).
pub const SIM_AGENT_IDENTIFIER: &str =
    "6b6f646f6d61737573696d6b6f646f6d61737573696d6b6f646f6d616b6f646f6d6173752d6167656e74";

/// What the simulated buyer of a payment does. Times count from the payment's creation
/// (paying) or from the state the move follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuyerBehavior {
    /// Pays `after_ms` after creation → `FundsLocked` (`FundsOrDatumInvalid` if that is after
    /// `payByTime`).
    Pay { after_ms: u64 },
    /// Never pays; the payment stays `null` / `WaitingForExternalAction`.
    NeverPay,
    /// Pays wrongly `after_ms` after creation → `FundsOrDatumInvalid` +
    /// `WaitingForManualAction`.
    PayInvalid { after_ms: u64 },
    /// Pays one chain step after creation, then `after_ms` after `FundsLocked` requests a
    /// refund if still `FundsLocked` (no result on chain) → `RefundRequested`.
    RequestRefund { after_ms: u64 },
    /// Pays one chain step after creation, then disputes `after_ms` after `ResultSubmitted`
    /// → `Disputed`.
    Dispute { after_ms: u64 },
}

/// Faults injected into `/api/v1` requests (not into `/_sim`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of requests answered with an error before they are handled (half 500 with the
    /// error envelope, half 503 text with `Retry-After: 1`).
    pub error_rate: f64,
    /// Delay added to every request (ms).
    pub latency_ms: u64,
    /// Share of requests that never get an answer (until shutdown).
    pub hang_rate: f64,
    /// Share of requests that are handled, then answered with 502 as if the answer was lost
    /// on the way (for idempotency tests).
    pub lost_response_rate: f64,
}

/// How the simulated service prices its agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SimPricing {
    /// Fixed price from the registry: `RequestedFunds` must be absent.
    Fixed { amounts: Vec<Amount> },
    /// The caller names the price: `RequestedFunds` required.
    Dynamic,
    /// Free agents cannot take payments (400).
    Free,
}

/// Settings of the simulator.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MasumiSimConfig {
    /// Valid API keys (`token` header). Default: [`SIM_TOKEN`]. Each can read and pay; only
    /// the key that created a payment may submit its result or authorize its refund.
    pub tokens: Vec<String>,
    /// Networks with a payment source. Default: both.
    pub networks: Vec<Network>,
    /// Agent policy ids (the first 56 characters of `agentIdentifier`) with a payment source.
    /// Default: [`SIM_POLICY_ID`].
    pub agent_policy_ids: Vec<String>,
    /// Pricing of every agent. Default: Fixed 10 ADA.
    pub pricing: SimPricing,
    /// The buyer of payments whose purchaser has no preset (`POST /_sim/buyers`). Default:
    /// pays after 1 s.
    pub default_buyer: BuyerBehavior,
    /// Duration of each step of a seller transaction (ms). Default 300.
    pub chain_step_ms: u64,
    /// Compress deadline-bound steps (see the module docs). Default false (real deadlines).
    pub fast_clock: bool,
    /// With `fast_clock`: how long the seller may still act before a deadline it could
    /// pre-empt is treated as passed (ms). Default 60 000.
    pub seller_window_ms: u64,
    /// Faults at start; change them with `POST /_sim/faults`.
    pub faults: Faults,
}

impl Default for MasumiSimConfig {
    fn default() -> Self {
        Self {
            tokens: vec![SIM_TOKEN.to_owned()],
            networks: Network::ALL.to_vec(),
            agent_policy_ids: vec![SIM_POLICY_ID.to_owned()],
            pricing: SimPricing::Fixed {
                amounts: vec![Amount {
                    amount: "10000000".to_owned(),
                    unit: String::new(),
                }],
            },
            default_buyer: BuyerBehavior::Pay { after_ms: 1_000 },
            chain_step_ms: 300,
            fast_clock: false,
            seller_window_ms: 60_000,
            faults: Faults::default(),
        }
    }
}

impl fmt::Debug for MasumiSimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasumiSimConfig")
            .field("tokens", &format_args!("[{} hidden]", self.tokens.len()))
            .field("networks", &self.networks)
            .field("agent_policy_ids", &self.agent_policy_ids)
            .field("pricing", &self.pricing)
            .field("default_buyer", &self.default_buyer)
            .field("chain_step_ms", &self.chain_step_ms)
            .field("fast_clock", &self.fast_clock)
            .field("seller_window_ms", &self.seller_window_ms)
            .field("faults", &self.faults)
            .finish()
    }
}

/// Everything the simulator stores.
#[derive(Debug, Default)]
struct Db {
    /// In creation order.
    payments: Vec<SimPayment>,
    by_id: HashMap<String, usize>,
    buyers: HashMap<String, BuyerBehavior>,
    /// Successful creates per (identifierFromPurchaser, inputHash).
    creates: HashMap<(String, String), u64>,
    block_height: i64,
}

impl Db {
    fn create_calls(&self, p: &SimPayment) -> u64 {
        self.creates
            .get(&(p.purchaser.clone(), p.input_hash.clone()))
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct Inner {
    config: MasumiSimConfig,
    faults: Mutex<Faults>,
    db: Mutex<Db>,
    /// Fires on shutdown: hanging requests give up.
    closing: CancellationToken,
}

/// The simulator's state, shared by the router and the driver; cheap to clone.
#[derive(Debug, Clone)]
pub struct MasumiSimState {
    inner: Arc<Inner>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl MasumiSimState {
    /// A fresh simulator without payments.
    pub fn new(config: MasumiSimConfig) -> Self {
        let faults = config.faults;
        Self {
            inner: Arc::new(Inner {
                config,
                faults: Mutex::new(faults),
                db: Mutex::new(Db::default()),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MasumiSimConfig {
        &self.inner.config
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        self.inner.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The faults now in force.
    pub fn faults(&self) -> Faults {
        *self.inner.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.inner.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
    }

    /// Presets the buyer of future payments of `identifier_from_purchaser`.
    pub fn set_buyer(&self, identifier_from_purchaser: &str, behavior: BuyerBehavior) {
        self.db()
            .buyers
            .insert(identifier_from_purchaser.to_owned(), behavior);
    }

    /// Every payment, oldest first, advanced to now.
    pub fn payments(&self) -> Vec<SimPaymentReport> {
        let now = now_ms();
        let mut db = self.db();
        let db = &mut *db;
        let mut block = db.block_height;
        for p in &mut db.payments {
            p.advance(&self.inner.config, now, &mut block);
        }
        db.block_height = block;
        db.payments
            .iter()
            .map(|p| p.report(db.create_calls(p)))
            .collect()
    }

    /// One payment by its blockchain identifier, advanced to now.
    pub fn payment(&self, blockchain_identifier: &str) -> Option<SimPaymentReport> {
        self.with_payment(blockchain_identifier, |p, create_calls| {
            p.report(create_calls)
        })
    }

    /// Runs `f` on one payment advanced to now, with its create-call count.
    fn with_payment<T>(
        &self,
        blockchain_identifier: &str,
        f: impl FnOnce(&mut SimPayment, u64) -> T,
    ) -> Option<T> {
        let now = now_ms();
        let mut db = self.db();
        let db = &mut *db;
        let idx = *db.by_id.get(blockchain_identifier)?;
        let creates = &db.creates;
        let p = db.payments.get_mut(idx)?;
        let mut block = db.block_height;
        p.advance(&self.inner.config, now, &mut block);
        db.block_height = block;
        let calls = creates
            .get(&(p.purchaser.clone(), p.input_hash.clone()))
            .copied()
            .unwrap_or(0);
        Some(f(p, calls))
    }

    /// Applies every step due by now to every payment.
    fn advance_all(&self) {
        let now = now_ms();
        let mut db = self.db();
        let db = &mut *db;
        let mut block = db.block_height;
        for p in &mut db.payments {
            p.advance(&self.inner.config, now, &mut block);
        }
        db.block_height = block;
    }

    /// Moves the chain along until `shutdown` fires. [`serve`] runs it; call it yourself only
    /// with a bare [`router`] (requests advance the chain too, so it is optional there).
    ///
    /// # Cancellation safety
    /// Safe: each tick is synchronous.
    pub async fn drive(&self, shutdown: CancellationToken) {
        let tick = Duration::from_millis((self.inner.config.chain_step_ms / 3).clamp(10, 100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => self.advance_all(),
            }
        }
    }

    /// Makes hanging requests return (called on shutdown).
    pub fn close(&self) {
        self.inner.closing.cancel();
    }
}

/// The simulator's routes: `/api/v1/...` as the real service, `/_sim/...` for tests.
pub fn router(state: MasumiSimState) -> axum::Router {
    http::router(state)
}

/// Serves the simulator on `listener` until `shutdown` fires, with its chain driver.
///
/// # Errors
/// The listener's I/O errors.
pub async fn serve(
    listener: TcpListener,
    config: MasumiSimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_state(listener, MasumiSimState::new(config), shutdown).await
}

async fn serve_state(
    listener: TcpListener,
    state: MasumiSimState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut tasks = JoinSet::new();
    {
        let state = state.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move { state.drive(shutdown).await });
    }
    {
        let state = state.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            shutdown.cancelled().await;
            state.close();
        });
    }
    let app = router(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    served
}

/// A simulator running in this process on a random local port.
#[derive(Debug)]
pub struct MasumiSim {
    addr: SocketAddr,
    base_url: String,
    state: MasumiSimState,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl MasumiSim {
    /// Starts a simulator on `127.0.0.1:0`.
    ///
    /// # Errors
    /// When no local port can be bound.
    pub async fn spawn(config: MasumiSimConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = MasumiSimState::new(config);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        {
            let state = state.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                if let Err(e) = serve_state(listener, state, shutdown).await {
                    tracing::warn!(error.message = %e, "masumi simulator stopped");
                }
            });
        }
        tasks.close();
        Ok(Self {
            addr,
            base_url: format!("http://{addr}/api/v1"),
            state,
            shutdown,
            tasks,
        })
    }

    /// The base URL to configure a client with: `http://127.0.0.1:PORT/api/v1`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The server's root URL (`/_sim` lives here).
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state, for in-process inspection and control.
    pub fn state(&self) -> &MasumiSimState {
        &self.state
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
    }
}

impl Drop for MasumiSim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
