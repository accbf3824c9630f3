//! The Masumi payment service, seller side: wire types (API 0.27.0, plus the on-chain states
//! of 0.28.0), MIP-004 hashing, an HTTP client, the engine activities of a paid job, and
//! (feature `sim`) a simulator of the service with a simulated buyer and chain.
//!
//! ```no_run
//! # fn demo() -> Result<(), activities::ClientError> {
//! use activities::masumi::{self, MasumiClient, MasumiConfig};
//! use std::sync::Arc;
//! let client = Arc::new(MasumiClient::new(MasumiConfig::new("http://127.0.0.1:3001/api/v1", "key"))?);
//! let registry = masumi::register(engine::Registry::new(), client);
//! # let _ = registry; Ok(()) }
//! ```

mod activities;
mod client;
pub mod hash;
#[cfg(feature = "sim")]
pub mod sim;
pub mod types;

pub use activities::{
    AuthorizeRefund, AuthorizeRefundInput, AwaitPaymentChange, AwaitPaymentChangeInput,
    CreatePayment, CreatePaymentInput, INVALID_REQUEST, INVALID_STATE, PAYMENT_NOT_FOUND,
    PaymentObservation, SubmitResult, SubmitResultInput, register,
};
pub use client::{MasumiClient, MasumiConfig, SERVICE};
pub use types::{
    CurrentTransaction, Network, NextAction, OnChainState, Payment, PaymentSummary, RequestedAction,
};
