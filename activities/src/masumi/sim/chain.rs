//! The simulated payment: its record, the simulated buyer and chain, and the service's
//! `NextAction` transition table (`src/utils/logic/state-transitions` of the real service).
//!
//! Every automatic step is a pure function of the payment and the time: [`SimPayment::next_event`]
//! says what happens next and when; [`SimPayment::advance`] applies every step due by a time,
//! stamping each with its own due time. Whoever looks (a request, the driver task) sees the same
//! history.

use super::{BuyerBehavior, MasumiSimConfig};
use crate::masumi::Network;
use crate::masumi::types::{
    ActionHistoryEntry, Amount, BuyerWallet, CurrentTransaction, NextAction, OnChainState, Payment,
    PaymentErrorType, PaymentSource, PaymentWithHistory, PricingType, RequestedAction,
    SmartContractWallet, TransactionStatus,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

const MINUTE_MS: i64 = 60_000;
/// The real service collects (and buyers withdraw refunds) 10 minutes after the deadline, for
/// the blockchain's clock offset.
const AUTO_WITHDRAW_DELAY_MS: i64 = 10 * MINUTE_MS;
/// The real service builds a submit-result transaction only while `submitResultTime` is at
/// least a minute away.
const SUBMIT_BUILD_MARGIN_MS: i64 = MINUTE_MS;
/// Cardano fee of one simulated transaction, in lovelace.
const TX_FEE_LOVELACE: i64 = 180_000;

/// The seller wallet vkey every simulated payment reports (`SmartContractWallet.walletVkey`).
pub const SIM_SELLER_VKEY: &str = "5e11e7c0ffee5e11e7c0ffee5e11e7c0ffee5e11e7c0ffee5e11e7c0";

const UNEXPECTED_STATE_CHANGE: &str =
    "Unexpected state change detected. This indicates a database error or a bug";
const UNEXPECTED_STATE_CHANGE_TIMEOUT: &str =
    "Unexpected state change detected. Possible a action could not be executed in time";
const AMOUNT_MISMATCH_MANUAL: &str =
    "Amount mismatch detected. State change detected after manual action was required";
const AMOUNT_MISMATCH_END: &str = "Amount mismatch detected. Invalid state detected. Purchase request was in end state before. This indicates a database error or a bug";
const INVALID_STATE_END: &str = "Invalid state detected. Purchase request was in end state before. This indicates a database error or a bug";
const MANUAL_ACTION_STATE_CHANGE: &str = "State change detected after manual action was required";

/// The service's `NextAction` after the chain moved the payment to `new_state` while the
/// action was `prev`: the new action and, for error states, the error note.
pub(crate) fn next_action_after(
    prev: RequestedAction,
    new_state: OnChainState,
) -> (RequestedAction, Option<&'static str>) {
    use OnChainState as S;
    use RequestedAction as A;
    let manual = |note| (A::WaitingForManualAction, Some(note));
    if new_state == S::FundsOrDatumInvalid {
        return match prev {
            A::Ignore => (A::Ignore, None),
            A::None => manual(AMOUNT_MISMATCH_END),
            _ => manual(AMOUNT_MISMATCH_MANUAL),
        };
    }
    if matches!(new_state, S::WithdrawAuthorized | S::RefundAuthorized) {
        // V2 states; the V1 table has no column for them.
        return manual(UNEXPECTED_STATE_CHANGE);
    }
    match prev {
        A::Ignore => (A::Ignore, None),
        A::None => manual(INVALID_STATE_END),
        A::WaitingForManualAction => manual(MANUAL_ACTION_STATE_CHANGE),
        A::WaitingForExternalAction => match new_state {
            S::DisputedWithdrawn | S::RefundWithdrawn | S::Withdrawn => (A::None, None),
            _ => (A::WaitingForExternalAction, None),
        },
        A::SubmitResultInitiated => match new_state {
            S::Disputed | S::ResultSubmitted => (A::WaitingForExternalAction, None),
            S::FundsLocked | S::RefundRequested => (A::SubmitResultRequested, None),
            _ => manual(UNEXPECTED_STATE_CHANGE_TIMEOUT),
        },
        A::SubmitResultRequested => match new_state {
            S::Disputed | S::FundsLocked | S::RefundRequested | S::ResultSubmitted => {
                (A::SubmitResultRequested, None)
            }
            _ => manual(UNEXPECTED_STATE_CHANGE_TIMEOUT),
        },
        A::AuthorizeRefundInitiated => match new_state {
            S::Disputed => (A::AuthorizeRefundRequested, None),
            S::RefundRequested => (A::WaitingForExternalAction, None),
            S::ResultSubmitted => (
                A::AuthorizeRefundRequested,
                Some(UNEXPECTED_STATE_CHANGE_TIMEOUT),
            ),
            S::FundsLocked => manual(UNEXPECTED_STATE_CHANGE),
            _ => manual(UNEXPECTED_STATE_CHANGE_TIMEOUT),
        },
        A::AuthorizeRefundRequested => match new_state {
            S::Disputed | S::ResultSubmitted => (A::AuthorizeRefundRequested, None),
            S::FundsLocked => manual(UNEXPECTED_STATE_CHANGE),
            _ => manual(UNEXPECTED_STATE_CHANGE_TIMEOUT),
        },
        A::WithdrawInitiated => match new_state {
            S::Disputed => (A::WithdrawRequested, None),
            S::Withdrawn => (A::None, None),
            S::FundsLocked => manual(UNEXPECTED_STATE_CHANGE),
            _ => manual(UNEXPECTED_STATE_CHANGE_TIMEOUT),
        },
        A::WithdrawRequested => match new_state {
            S::Disputed => (A::WithdrawRequested, None),
            S::FundsLocked => manual(UNEXPECTED_STATE_CHANGE),
            _ => manual(UNEXPECTED_STATE_CHANGE_TIMEOUT),
        },
    }
}

/// What the simulated buyer, chain or service does next to a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The buyer's locking transaction lands (`valid: false` → `FundsOrDatumInvalid`).
    BuyerPays { valid: bool },
    /// The buyer sets `RefundRequested` (from `FundsLocked`).
    BuyerRequestsRefund,
    /// The buyer disputes a submitted result (`ResultSubmitted` → `Disputed`).
    BuyerDisputes,
    /// The service sends the queued submit-result transaction.
    BuildSubmit,
    /// The submit-result transaction is confirmed.
    ConfirmSubmit,
    /// The service sends the queued authorize-refund transaction.
    BuildAuthorizeRefund,
    /// The authorize-refund transaction is confirmed.
    ConfirmAuthorizeRefund,
    /// The service queues the seller's automatic collection.
    RequestWithdraw,
    /// The collection transaction is sent.
    BuildWithdraw,
    /// The collection transaction is confirmed.
    ConfirmWithdraw,
    /// The buyer withdraws the refund (no result on chain, `submitResultTime` passed).
    BuyerWithdrawsRefund,
    /// The admins settle a dispute after `externalDisputeUnlockTime`.
    AdminsSettleDispute,
}

/// Calls counted per payment, for checks of money safety from the outside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimCounters {
    /// Successful `POST /payment` calls with this payment's `identifierFromPurchaser` and
    /// `inputHash` (1 unless a payment request was created twice).
    pub create_calls: u64,
    /// `resolve-blockchain-identifier` calls that found this payment.
    pub resolve_calls: u64,
    pub submit_result_accepted: u64,
    /// Refused with 404 (state) or 403 (another API key).
    pub submit_result_refused: u64,
    pub authorize_refund_accepted: u64,
    pub authorize_refund_refused: u64,
    /// The hashes of the accepted `submit-result` calls, in order.
    pub result_hashes: Vec<String>,
}

/// One change of `(onChainState, NextAction)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimStateChange {
    pub at: DateTime<Utc>,
    pub on_chain_state: Option<OnChainState>,
    pub next_action: RequestedAction,
    /// What caused it: `created`, `submit_result`, `authorize_refund`, or the chain event.
    pub cause: String,
}

/// A simulated payment as `GET /_sim/payments` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimPaymentReport {
    pub blockchain_identifier: String,
    pub identifier_from_purchaser: String,
    pub input_hash: String,
    pub network: Network,
    /// The id of the API key that created it (`key-<index in tokens>`).
    pub requested_by: String,
    pub buyer: BuyerBehavior,
    pub on_chain_state: Option<OnChainState>,
    pub next_action: RequestedAction,
    /// The result hash on chain, if any.
    pub result_hash: Option<String>,
    pub counters: SimCounters,
    pub history: Vec<SimStateChange>,
    /// The payment as the API shows it, histories included.
    pub payment: PaymentWithHistory,
}

/// The current `NextAction` row.
#[derive(Debug, Clone)]
pub(crate) struct ActionRow {
    pub id: String,
    pub action: RequestedAction,
    pub error_note: Option<String>,
    pub result_hash: Option<String>,
    pub since: i64,
}

/// A simulated payment request.
#[derive(Debug, Clone)]
pub(crate) struct SimPayment {
    pub id: String,
    pub blockchain_identifier: String,
    pub network: Network,
    pub agent_identifier: String,
    pub policy_id: String,
    pub input_hash: String,
    pub purchaser: String,
    pub pricing_type: PricingType,
    pub requested_funds: Vec<Amount>,
    pub pay_by: i64,
    pub submit_result: i64,
    pub unlock: i64,
    pub external_dispute_unlock: i64,
    pub metadata: Option<String>,
    pub requested_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub action_changed_at: i64,
    pub state_or_result_changed_at: i64,
    pub state: Option<OnChainState>,
    pub state_since: i64,
    pub action: ActionRow,
    pub action_history: Vec<ActionHistoryEntry>,
    /// The result hash on chain (`""` until one is).
    pub result_hash: String,
    /// The hash of the submit transaction queued or in flight.
    pub pending_result_hash: Option<String>,
    pub current_tx: Option<CurrentTransaction>,
    pub tx_history: Vec<CurrentTransaction>,
    pub buyer: BuyerBehavior,
    /// Whether the buyer did its one move after paying (refund request, dispute).
    pub buyer_acted: bool,
    pub buyer_wallet: Option<BuyerWallet>,
    pub withdrawn_for_seller: Vec<Amount>,
    pub withdrawn_for_buyer: Vec<Amount>,
    pub buyer_fees: i64,
    pub seller_fees: i64,
    pub counters: SimCounters,
    pub history: Vec<SimStateChange>,
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| fastrand::u8(..)).collect();
    hex::encode(raw)
}

/// A cuid-like id: `c` and 24 lowercase alphanumerics.
pub(crate) fn cuid() -> String {
    let mut s = String::from("c");
    for _ in 0..24 {
        let c = fastrand::alphanumeric().to_ascii_lowercase();
        s.push(c);
    }
    s
}

pub(crate) fn at(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// What `POST /payment` validated.
#[derive(Debug, Clone)]
pub(crate) struct NewPayment {
    pub network: Network,
    pub agent_identifier: String,
    pub policy_id: String,
    pub input_hash: String,
    pub purchaser: String,
    pub pricing_type: PricingType,
    pub requested_funds: Vec<Amount>,
    pub pay_by: i64,
    pub submit_result: i64,
    pub unlock: i64,
    pub external_dispute_unlock: i64,
    pub metadata: Option<String>,
    pub requested_by: String,
}

impl SimPayment {
    pub(crate) fn new(n: NewPayment, buyer: BuyerBehavior, now: i64) -> Self {
        // Unique, even-length, opaque hex, like the real LZ-compressed identifier.
        let blockchain_identifier = format!(
            "{}{}{}",
            random_hex(24),
            hex::encode(n.purchaser.as_bytes()),
            random_hex(24)
        );
        let mut p = Self {
            id: cuid(),
            blockchain_identifier,
            network: n.network,
            agent_identifier: n.agent_identifier,
            policy_id: n.policy_id,
            input_hash: n.input_hash,
            purchaser: n.purchaser,
            pricing_type: n.pricing_type,
            requested_funds: n.requested_funds,
            pay_by: n.pay_by,
            submit_result: n.submit_result,
            unlock: n.unlock,
            external_dispute_unlock: n.external_dispute_unlock,
            metadata: n.metadata,
            requested_by: n.requested_by,
            created_at: now,
            updated_at: now,
            action_changed_at: now,
            state_or_result_changed_at: now,
            state: None,
            state_since: now,
            action: ActionRow {
                id: cuid(),
                action: RequestedAction::WaitingForExternalAction,
                error_note: None,
                result_hash: None,
                since: now,
            },
            action_history: Vec::new(),
            result_hash: String::new(),
            pending_result_hash: None,
            current_tx: None,
            tx_history: Vec::new(),
            buyer,
            buyer_acted: false,
            buyer_wallet: None,
            withdrawn_for_seller: Vec::new(),
            withdrawn_for_buyer: Vec::new(),
            buyer_fees: 0,
            seller_fees: 0,
            counters: SimCounters::default(),
            history: Vec::new(),
        };
        p.record("created", now);
        p
    }

    fn record(&mut self, cause: &str, now: i64) {
        self.history.push(SimStateChange {
            at: at(now),
            on_chain_state: self.state,
            next_action: self.action.action,
            cause: cause.to_owned(),
        });
    }

    /// Replaces `NextAction`, moving the old row into the history.
    pub(crate) fn set_action(
        &mut self,
        action: RequestedAction,
        error_note: Option<&str>,
        result_hash: Option<String>,
        now: i64,
    ) {
        let old = std::mem::replace(
            &mut self.action,
            ActionRow {
                id: cuid(),
                action,
                error_note: error_note.map(str::to_owned),
                result_hash,
                since: now,
            },
        );
        self.action_history.push(ActionHistoryEntry {
            id: old.id,
            created_at: at(old.since),
            updated_at: at(now),
            submitted_tx_hash: None,
            requested_action: old.action,
            error_type: old.error_note.as_ref().map(|_| PaymentErrorType::Unknown),
            error_note: old.error_note,
            result_hash: old.result_hash,
        });
        self.action_changed_at = now;
        self.updated_at = now;
    }

    /// A seller request accepted by the API (`submit-result`, `authorize-refund`).
    pub(crate) fn request(
        &mut self,
        action: RequestedAction,
        result_hash: Option<String>,
        cause: &str,
        now: i64,
    ) {
        if action == RequestedAction::SubmitResultRequested {
            self.pending_result_hash = result_hash.clone();
        }
        self.set_action(action, None, result_hash, now);
        self.record(cause, now);
    }

    fn new_tx(
        &self,
        status: TransactionStatus,
        new_state: Option<OnChainState>,
        now: i64,
        block: i64,
    ) -> CurrentTransaction {
        let confirmed = status == TransactionStatus::Confirmed;
        CurrentTransaction {
            id: cuid(),
            created_at: at(now),
            updated_at: at(now),
            fees: Some(TX_FEE_LOVELACE.to_string()),
            block_height: confirmed.then_some(block),
            block_time: confirmed.then_some(now / 1000),
            tx_hash: Some(random_hex(32)),
            status,
            previous_on_chain_state: self.state,
            new_on_chain_state: new_state,
            confirmations: confirmed.then_some(1),
        }
    }

    fn push_tx(&mut self, tx: CurrentTransaction) {
        if let Some(old) = self.current_tx.replace(tx) {
            self.tx_history.push(old);
        }
    }

    /// Moves the on-chain state through a confirmed transaction; `pending` is the seller's
    /// transaction in flight, confirmed now, if any.
    fn chain_moves(
        &mut self,
        new_state: OnChainState,
        seller_tx: bool,
        cause: &str,
        now: i64,
        block: i64,
    ) {
        let pending = self
            .current_tx
            .as_ref()
            .is_some_and(|t| t.status == TransactionStatus::Pending);
        if seller_tx && pending {
            if let Some(tx) = self.current_tx.as_mut() {
                tx.status = TransactionStatus::Confirmed;
                tx.updated_at = at(now);
                tx.block_height = Some(block);
                tx.block_time = Some(now / 1000);
                tx.new_on_chain_state = Some(new_state);
                tx.confirmations = Some(1);
            }
        } else {
            let tx = self.new_tx(TransactionStatus::Confirmed, Some(new_state), now, block);
            self.push_tx(tx);
            if seller_tx {
                self.seller_fees += TX_FEE_LOVELACE;
            } else {
                self.buyer_fees += TX_FEE_LOVELACE;
            }
        }
        self.state = Some(new_state);
        self.state_since = now;
        self.state_or_result_changed_at = now;
        self.updated_at = now;
        let (action, note) = next_action_after(self.action.action, new_state);
        let keep_hash = matches!(action, RequestedAction::SubmitResultRequested)
            .then(|| self.pending_result_hash.clone())
            .flatten();
        if (action, note) != (self.action.action, self.action.error_note.as_deref()) {
            self.set_action(action, note, keep_hash, now);
        }
        self.record(cause, now);
    }

    /// The seller's transaction is sent: `NextAction` moves to `*Initiated` with a pending
    /// transaction.
    fn seller_sends(&mut self, action: RequestedAction, cause: &str, now: i64, block: i64) {
        let tx = self.new_tx(TransactionStatus::Pending, None, now, block);
        self.push_tx(tx);
        self.seller_fees += TX_FEE_LOVELACE;
        self.set_action(action, None, None, now);
        self.record(cause, now);
    }

    /// The due time of the next step of the seller's pipeline, if one is under way.
    fn seller_step(&self, step: i64) -> Option<(i64, Event)> {
        use OnChainState as S;
        use RequestedAction as A;
        let due = self.action.since + step;
        match (self.action.action, self.state) {
            (
                A::SubmitResultRequested,
                Some(S::FundsLocked | S::ResultSubmitted | S::RefundRequested | S::Disputed),
            ) if due < self.submit_result - SUBMIT_BUILD_MARGIN_MS => {
                Some((due, Event::BuildSubmit))
            }
            (A::SubmitResultInitiated, _) => Some((due, Event::ConfirmSubmit)),
            (A::AuthorizeRefundRequested, Some(S::Disputed)) => {
                Some((due, Event::BuildAuthorizeRefund))
            }
            (A::AuthorizeRefundInitiated, _) => Some((due, Event::ConfirmAuthorizeRefund)),
            (A::WithdrawRequested, Some(S::ResultSubmitted)) => Some((due, Event::BuildWithdraw)),
            (A::WithdrawInitiated, _) => Some((due, Event::ConfirmWithdraw)),
            _ => None,
        }
    }

    /// The next automatic event and its due time (ms).
    pub(crate) fn next_event(&self, cfg: &MasumiSimConfig) -> Option<(i64, Event)> {
        use OnChainState as S;
        let step = cfg.chain_step_ms as i64;
        let window = cfg.seller_window_ms as i64;
        let fast = cfg.fast_clock;
        let seller = self.seller_step(step);
        let idle = self.action.action == RequestedAction::WaitingForExternalAction;
        let quiet_since = self.state_since.max(self.action.since);
        let mut candidates: Vec<(i64, Event)> = seller.into_iter().collect();
        match self.state {
            None => {
                let pay = match self.buyer {
                    BuyerBehavior::Pay { after_ms } => Some((after_ms as i64, true)),
                    BuyerBehavior::PayInvalid { after_ms } => Some((after_ms as i64, false)),
                    BuyerBehavior::RequestRefund { .. } | BuyerBehavior::Dispute { .. } => {
                        Some((step, true))
                    }
                    BuyerBehavior::NeverPay => None,
                };
                if let Some((after, valid)) = pay {
                    candidates.push((self.created_at + after, Event::BuyerPays { valid }));
                }
            }
            Some(S::FundsLocked) => {
                if let (BuyerBehavior::RequestRefund { after_ms }, false) =
                    (self.buyer, self.buyer_acted)
                {
                    let due = self.state_since + after_ms as i64;
                    if fast || due < self.unlock {
                        candidates.push((due, Event::BuyerRequestsRefund));
                    }
                }
                if !fast {
                    candidates.push((
                        self.submit_result + AUTO_WITHDRAW_DELAY_MS,
                        Event::BuyerWithdrawsRefund,
                    ));
                } else if seller.is_none() {
                    candidates.push((quiet_since + window, Event::BuyerWithdrawsRefund));
                }
            }
            Some(S::RefundRequested) if self.result_hash.is_empty() => {
                if !fast {
                    candidates.push((
                        self.submit_result + AUTO_WITHDRAW_DELAY_MS,
                        Event::BuyerWithdrawsRefund,
                    ));
                } else if seller.is_none() {
                    candidates.push((quiet_since + step, Event::BuyerWithdrawsRefund));
                }
            }
            Some(S::ResultSubmitted) => {
                let dispute = match (self.buyer, self.buyer_acted) {
                    (BuyerBehavior::Dispute { after_ms }, false) => {
                        let due = self.state_since + after_ms as i64;
                        (fast || due < self.unlock).then_some(due)
                    }
                    _ => None,
                };
                if let Some(due) = dispute {
                    candidates.push((due, Event::BuyerDisputes));
                }
                if idle {
                    let due = if fast {
                        (quiet_since + step).max(dispute.map_or(0, |d| d + step))
                    } else {
                        self.unlock + AUTO_WITHDRAW_DELAY_MS
                    };
                    candidates.push((due, Event::RequestWithdraw));
                }
            }
            Some(S::Disputed) => {
                if !fast {
                    candidates.push((self.external_dispute_unlock, Event::AdminsSettleDispute));
                } else if seller.is_none() {
                    candidates.push((quiet_since + window, Event::AdminsSettleDispute));
                }
            }
            _ => {}
        }
        candidates.into_iter().min_by_key(|(due, _)| *due)
    }

    /// Applies every event due by `now`, each at its own due time.
    pub(crate) fn advance(&mut self, cfg: &MasumiSimConfig, now: i64, block: &mut i64) {
        for _ in 0..64 {
            match self.next_event(cfg) {
                Some((due, event)) if due <= now => {
                    *block += 1;
                    self.apply(event, due, *block);
                }
                _ => return,
            }
        }
    }

    fn apply(&mut self, event: Event, now: i64, block: i64) {
        use OnChainState as S;
        use RequestedAction as A;
        match event {
            Event::BuyerPays { valid } => {
                self.buyer_wallet = Some(BuyerWallet {
                    id: cuid(),
                    wallet_vkey: random_hex(28),
                });
                // A locking transaction after payByTime does not match the datum.
                let state = if valid && now <= self.pay_by {
                    S::FundsLocked
                } else {
                    S::FundsOrDatumInvalid
                };
                self.chain_moves(state, false, "buyer_pays", now, block);
            }
            Event::BuyerRequestsRefund => {
                self.buyer_acted = true;
                self.chain_moves(
                    S::RefundRequested,
                    false,
                    "buyer_requests_refund",
                    now,
                    block,
                );
            }
            Event::BuyerDisputes => {
                self.buyer_acted = true;
                self.chain_moves(S::Disputed, false, "buyer_disputes", now, block);
            }
            Event::BuildSubmit => {
                self.seller_sends(A::SubmitResultInitiated, "submit_result_sent", now, block)
            }
            Event::ConfirmSubmit => {
                let next = match self.state {
                    Some(S::RefundRequested | S::Disputed) => S::Disputed,
                    _ => S::ResultSubmitted,
                };
                self.result_hash = self.pending_result_hash.take().unwrap_or_default();
                self.chain_moves(next, true, "submit_result_confirmed", now, block);
            }
            Event::BuildAuthorizeRefund => self.seller_sends(
                A::AuthorizeRefundInitiated,
                "authorize_refund_sent",
                now,
                block,
            ),
            Event::ConfirmAuthorizeRefund => {
                // The contract clears the result hash: the buyer may withdraw the refund.
                self.result_hash.clear();
                self.chain_moves(
                    S::RefundRequested,
                    true,
                    "authorize_refund_confirmed",
                    now,
                    block,
                );
            }
            Event::RequestWithdraw => {
                self.set_action(A::WithdrawRequested, None, None, now);
                self.record("withdraw_requested", now);
            }
            Event::BuildWithdraw => {
                self.seller_sends(A::WithdrawInitiated, "withdraw_sent", now, block)
            }
            Event::ConfirmWithdraw => {
                self.withdrawn_for_seller = self.requested_funds.clone();
                self.chain_moves(S::Withdrawn, true, "withdraw_confirmed", now, block);
            }
            Event::BuyerWithdrawsRefund => {
                self.withdrawn_for_buyer = self.requested_funds.clone();
                self.pending_result_hash = None;
                self.chain_moves(
                    S::RefundWithdrawn,
                    false,
                    "buyer_withdraws_refund",
                    now,
                    block,
                );
            }
            Event::AdminsSettleDispute => {
                self.chain_moves(
                    S::DisputedWithdrawn,
                    false,
                    "admins_settle_dispute",
                    now,
                    block,
                );
            }
        }
    }

    /// The payment as the API returns it.
    pub(crate) fn to_wire(&self) -> Payment {
        Payment {
            id: self.id.clone(),
            created_at: at(self.created_at),
            updated_at: at(self.updated_at),
            blockchain_identifier: self.blockchain_identifier.clone(),
            agent_identifier: Some(self.agent_identifier.clone()),
            pricing_type: Some(self.pricing_type),
            last_checked_at: Some(at(self.updated_at)),
            pay_by_time: Some(self.pay_by),
            submit_result_time: self.submit_result,
            unlock_time: self.unlock,
            collateral_return_lovelace: None,
            external_dispute_unlock_time: self.external_dispute_unlock,
            requested_by_id: self.requested_by.clone(),
            result_hash: Some(self.result_hash.clone()),
            next_action_last_changed_at: at(self.action_changed_at),
            on_chain_state_or_result_last_changed_at: at(self.state_or_result_changed_at),
            next_action_or_on_chain_state_or_result_last_changed_at: at(self
                .action_changed_at
                .max(self.state_or_result_changed_at)),
            input_hash: Some(self.input_hash.clone()),
            total_buyer_cardano_fees: self.buyer_fees as f64 / 1_000_000.0,
            total_seller_cardano_fees: self.seller_fees as f64 / 1_000_000.0,
            cooldown_time: 0,
            cooldown_time_other_party: 0,
            on_chain_state: self.state,
            next_action: NextAction {
                requested_action: self.action.action,
                error_type: self
                    .action
                    .error_note
                    .as_ref()
                    .map(|_| PaymentErrorType::Unknown),
                error_note: self.action.error_note.clone(),
                result_hash: self.action.result_hash.clone(),
            },
            current_transaction: self.current_tx.clone(),
            requested_funds: self.requested_funds.clone(),
            withdrawn_for_seller: self.withdrawn_for_seller.clone(),
            withdrawn_for_buyer: self.withdrawn_for_buyer.clone(),
            payment_source: PaymentSource {
                id: format!("payment-source-{}", self.network.as_str().to_lowercase()),
                network: self.network,
                smart_contract_address: smart_contract_address(self.network).to_owned(),
                policy_id: Some(self.policy_id.clone()),
            },
            buyer_wallet: self.buyer_wallet.clone(),
            smart_contract_wallet: Some(SmartContractWallet {
                id: "selling-wallet".to_owned(),
                wallet_vkey: SIM_SELLER_VKEY.to_owned(),
                wallet_address: seller_address(self.network).to_owned(),
            }),
            metadata: self.metadata.clone(),
        }
    }

    /// The payment with its histories (newest first), or with null histories.
    pub(crate) fn to_wire_with_history(&self, include: bool) -> PaymentWithHistory {
        let (actions, txs) = if include {
            let mut actions = self.action_history.clone();
            actions.reverse();
            let mut txs = self.tx_history.clone();
            txs.reverse();
            (Some(actions), Some(txs))
        } else {
            (None, None)
        };
        PaymentWithHistory {
            payment: self.to_wire(),
            action_history: actions,
            transaction_history: txs,
        }
    }

    pub(crate) fn report(&self, create_calls: u64) -> SimPaymentReport {
        let mut counters = self.counters.clone();
        counters.create_calls = create_calls;
        SimPaymentReport {
            blockchain_identifier: self.blockchain_identifier.clone(),
            identifier_from_purchaser: self.purchaser.clone(),
            input_hash: self.input_hash.clone(),
            network: self.network,
            requested_by: self.requested_by.clone(),
            buyer: self.buyer,
            on_chain_state: self.state,
            next_action: self.action.action,
            result_hash: (!self.result_hash.is_empty()).then(|| self.result_hash.clone()),
            counters,
            history: self.history.clone(),
            payment: self.to_wire_with_history(true),
        }
    }
}

fn smart_contract_address(network: Network) -> &'static str {
    match network {
        Network::Preprod => "addr_test1wz7j4kmg2cs7yf92uat3ed4a3u97kr7axxr4avaz0lhwdsqukgwfm",
        Network::Mainnet => "addr1wx7j4kmg2cs7yf92uat3ed4a3u97kr7axxr4avaz0lhwdsq87ujx7",
    }
}

fn seller_address(network: Network) -> &'static str {
    match network {
        Network::Preprod => "addr_test1qp5e11e7c0ffee5e11e7c0ffee5e11e7c0ffee5e11e7c0sim0seller",
        Network::Mainnet => "addr1qx5e11e7c0ffee5e11e7c0ffee5e11e7c0ffee5e11e7c0sim0seller",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(fast: bool) -> MasumiSimConfig {
        MasumiSimConfig {
            chain_step_ms: 100,
            fast_clock: fast,
            seller_window_ms: 1_000,
            ..MasumiSimConfig::default()
        }
    }

    fn payment(buyer: BuyerBehavior, now: i64) -> SimPayment {
        SimPayment::new(
            NewPayment {
                network: Network::Preprod,
                agent_identifier: "ab".repeat(30),
                policy_id: "ab".repeat(28),
                input_hash: "aa".into(),
                purchaser: "aabbaabb11221122aabb".into(),
                pricing_type: PricingType::Fixed,
                requested_funds: vec![],
                pay_by: now + 60 * MINUTE_MS,
                submit_result: now + 120 * MINUTE_MS,
                unlock: now + 480 * MINUTE_MS,
                external_dispute_unlock: now + 840 * MINUTE_MS,
                metadata: None,
                requested_by: "key-0".into(),
            },
            buyer,
            now,
        )
    }

    #[test]
    fn table_matches_the_service() {
        use OnChainState as S;
        use RequestedAction as A;
        assert_eq!(
            next_action_after(A::WaitingForExternalAction, S::FundsLocked),
            (A::WaitingForExternalAction, None)
        );
        assert_eq!(
            next_action_after(A::WaitingForExternalAction, S::Withdrawn),
            (A::None, None)
        );
        assert_eq!(
            next_action_after(A::WaitingForExternalAction, S::FundsOrDatumInvalid),
            (A::WaitingForManualAction, Some(AMOUNT_MISMATCH_MANUAL))
        );
        assert_eq!(
            next_action_after(A::SubmitResultInitiated, S::RefundRequested),
            (A::SubmitResultRequested, None)
        );
        assert_eq!(
            next_action_after(A::SubmitResultRequested, S::RefundWithdrawn),
            (
                A::WaitingForManualAction,
                Some(UNEXPECTED_STATE_CHANGE_TIMEOUT)
            )
        );
        assert_eq!(
            next_action_after(A::AuthorizeRefundInitiated, S::RefundRequested),
            (A::WaitingForExternalAction, None)
        );
        assert_eq!(
            next_action_after(A::WithdrawInitiated, S::Withdrawn),
            (A::None, None)
        );
    }

    #[test]
    fn happy_path_in_fast_clock() {
        let c = cfg(true);
        let t0 = 1_000_000;
        let mut block = 0;
        let mut p = payment(BuyerBehavior::Pay { after_ms: 500 }, t0);
        p.advance(&c, t0 + 499, &mut block);
        assert_eq!(p.state, None);
        p.advance(&c, t0 + 500, &mut block);
        assert_eq!(p.state, Some(OnChainState::FundsLocked));
        p.request(
            RequestedAction::SubmitResultRequested,
            Some("ab".repeat(32)),
            "submit_result",
            t0 + 600,
        );
        p.advance(&c, t0 + 800, &mut block);
        assert_eq!(p.state, Some(OnChainState::ResultSubmitted));
        assert_eq!(p.result_hash, "ab".repeat(32));
        p.advance(&c, t0 + 10_000, &mut block);
        assert_eq!(p.state, Some(OnChainState::Withdrawn));
        assert_eq!(p.action.action, RequestedAction::None);
        let actions: Vec<_> = p.history.iter().map(|h| h.next_action).collect();
        assert!(
            actions.contains(&RequestedAction::WithdrawInitiated),
            "{actions:?}"
        );
    }

    #[test]
    fn unpaid_result_deadline_refunds_and_late_payment_is_invalid() {
        let c = cfg(false);
        let t0 = 1_000_000;
        let mut block = 0;
        let mut p = payment(
            BuyerBehavior::Pay {
                after_ms: 61 * 60_000,
            },
            t0,
        );
        p.advance(&c, t0 + 62 * MINUTE_MS, &mut block);
        assert_eq!(p.state, Some(OnChainState::FundsOrDatumInvalid));
        assert_eq!(p.action.action, RequestedAction::WaitingForManualAction);

        let mut p = payment(BuyerBehavior::Pay { after_ms: 10 }, t0);
        p.advance(&c, p.submit_result + AUTO_WITHDRAW_DELAY_MS - 1, &mut block);
        assert_eq!(p.state, Some(OnChainState::FundsLocked));
        p.advance(&c, p.submit_result + AUTO_WITHDRAW_DELAY_MS, &mut block);
        assert_eq!(p.state, Some(OnChainState::RefundWithdrawn));
        assert_eq!(p.action.action, RequestedAction::None);
    }
}
