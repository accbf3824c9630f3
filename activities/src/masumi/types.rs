//! Wire types of the Masumi payment service (OpenAPI 0.27.0), shared by the client and the
//! simulator, and [`PaymentSummary`], the compact view workflows journal.
//!
//! Field names follow the spec exactly (camelCase, with PascalCase relations such as
//! `NextAction`). Times are ISO-8601 strings on input and Unix-millisecond strings on output;
//! the output ones are parsed to `i64` here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The Cardano network of a payment.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Network {
    #[default]
    Preprod,
    Mainnet,
}

impl Network {
    /// Every value, in the spec's order.
    pub const ALL: [Self; 2] = [Self::Preprod, Self::Mainnet];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preprod => "Preprod",
            Self::Mainnet => "Mainnet",
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| format!("unknown network `{s}` (expected Preprod or Mainnet)"))
    }
}

/// `onChainState` of a payment; `null` on the wire (no valid locking transaction yet) is
/// `None` of an `Option<OnChainState>`. Persisted: variants are added, never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OnChainState {
    /// The buyer's funds are locked as requested: the "paid, start work" signal.
    FundsLocked,
    /// A locking transaction was seen but does not match the request; manual action needed.
    FundsOrDatumInvalid,
    /// The seller's result hash is on chain; the seller withdraws after `unlockTime`.
    ResultSubmitted,
    /// The buyer asked for a refund and no result is on chain.
    RefundRequested,
    /// A refund was requested and a result hash exists.
    Disputed,
    /// The seller collected (terminal).
    Withdrawn,
    /// The buyer got the refund (terminal).
    RefundWithdrawn,
    /// The admins settled the dispute (terminal).
    DisputedWithdrawn,
    /// 0.28.0 / V2 contract: the buyer authorized the seller's withdrawal from `Disputed`.
    WithdrawAuthorized,
    /// 0.28.0 / V2 contract: the seller authorized a refund.
    RefundAuthorized,
}

impl OnChainState {
    /// Every value: the 8 of 0.27.0, then the 2 of 0.28.0.
    pub const ALL: [Self; 10] = [
        Self::FundsLocked,
        Self::FundsOrDatumInvalid,
        Self::ResultSubmitted,
        Self::RefundRequested,
        Self::Disputed,
        Self::Withdrawn,
        Self::RefundWithdrawn,
        Self::DisputedWithdrawn,
        Self::WithdrawAuthorized,
        Self::RefundAuthorized,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FundsLocked => "FundsLocked",
            Self::FundsOrDatumInvalid => "FundsOrDatumInvalid",
            Self::ResultSubmitted => "ResultSubmitted",
            Self::RefundRequested => "RefundRequested",
            Self::Disputed => "Disputed",
            Self::Withdrawn => "Withdrawn",
            Self::RefundWithdrawn => "RefundWithdrawn",
            Self::DisputedWithdrawn => "DisputedWithdrawn",
            Self::WithdrawAuthorized => "WithdrawAuthorized",
            Self::RefundAuthorized => "RefundAuthorized",
        }
    }

    /// Whether the funds have left the contract: nothing changes any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Withdrawn | Self::RefundWithdrawn | Self::DisputedWithdrawn
        )
    }
}

impl fmt::Display for OnChainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `NextAction.requestedAction`: what the service will do next with a payment. Persisted:
/// variants are added, never renamed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestedAction {
    /// Nothing more will happen (the funds were withdrawn).
    None,
    /// The service ignores this payment.
    Ignore,
    /// An error (`errorType`, `errorNote`); cleared through `error-state-recovery`.
    WaitingForManualAction,
    /// Idle, waiting for the buyer or the chain. The only action in which `submit-result` and
    /// `authorize-refund` are accepted.
    #[default]
    WaitingForExternalAction,
    /// `submit-result` was accepted; the transaction is queued (`NextAction.resultHash`).
    SubmitResultRequested,
    /// The submit transaction was sent; awaiting confirmation.
    SubmitResultInitiated,
    /// Automatic collection after `unlockTime` is queued.
    WithdrawRequested,
    /// The collection transaction was sent.
    WithdrawInitiated,
    /// `authorize-refund` was accepted; the transaction is queued.
    AuthorizeRefundRequested,
    /// The refund authorization was sent.
    AuthorizeRefundInitiated,
}

impl RequestedAction {
    /// Every value, in the spec's order.
    pub const ALL: [Self; 10] = [
        Self::None,
        Self::Ignore,
        Self::WaitingForManualAction,
        Self::WaitingForExternalAction,
        Self::SubmitResultRequested,
        Self::SubmitResultInitiated,
        Self::WithdrawRequested,
        Self::WithdrawInitiated,
        Self::AuthorizeRefundRequested,
        Self::AuthorizeRefundInitiated,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Ignore => "Ignore",
            Self::WaitingForManualAction => "WaitingForManualAction",
            Self::WaitingForExternalAction => "WaitingForExternalAction",
            Self::SubmitResultRequested => "SubmitResultRequested",
            Self::SubmitResultInitiated => "SubmitResultInitiated",
            Self::WithdrawRequested => "WithdrawRequested",
            Self::WithdrawInitiated => "WithdrawInitiated",
            Self::AuthorizeRefundRequested => "AuthorizeRefundRequested",
            Self::AuthorizeRefundInitiated => "AuthorizeRefundInitiated",
        }
    }
}

impl fmt::Display for RequestedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `NextAction.errorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PaymentErrorType {
    NetworkError,
    Unknown,
}

impl PaymentErrorType {
    /// Every value, in the spec's order.
    pub const ALL: [Self; 2] = [Self::NetworkError, Self::Unknown];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkError => "NetworkError",
            Self::Unknown => "Unknown",
        }
    }
}

/// `CurrentTransaction.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransactionStatus {
    Pending,
    Confirmed,
    FailedViaTimeout,
    FailedViaManualReset,
    RolledBack,
}

impl TransactionStatus {
    /// Every value, in the spec's order.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Confirmed,
        Self::FailedViaTimeout,
        Self::FailedViaManualReset,
        Self::RolledBack,
    ];
}

/// `pricingType` of the paid agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PricingType {
    Fixed,
    Free,
    Dynamic,
}

impl PricingType {
    /// Every value, in the spec's order.
    pub const ALL: [Self; 3] = [Self::Fixed, Self::Free, Self::Dynamic];
}

/// A success answer: `{"status":"success","data":…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub status: String,
    pub data: T,
}

/// An error answer: `{"status":"error","error":{"message":…}}`. The 409 "exists" variant adds
/// `id` and `object`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub status: String,
    pub error: ErrorMessage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<serde_json::Value>,
}

/// The `error` member of an [`ErrorEnvelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMessage {
    pub message: String,
}

/// `GET /health` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` when the service runs.
    pub status: String,
}

/// An amount of one asset; `unit` is policy id + asset name, `""` for lovelace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub amount: String,
    pub unit: String,
}

/// `POST /payment` body. Leave `requested_funds` out for agents with Fixed pricing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatePaymentRequest {
    /// Policy id + asset name, 57–250 characters.
    pub agent_identifier: String,
    pub network: Network,
    /// MIP-004 input hash: even-length hex, at most 250 characters.
    pub input_hash: String,
    /// Even-length hex, 14–26 characters.
    pub identifier_from_purchaser: String,
    #[serde(with = "iso_ms")]
    pub pay_by_time: DateTime<Utc>,
    #[serde(with = "iso_ms")]
    pub submit_result_time: DateTime<Utc>,
    /// Default `submitResultTime + 6 h`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_iso_ms")]
    pub unlock_time: Option<DateTime<Utc>>,
    /// Default `submitResultTime + 12 h`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_iso_ms")]
    pub external_dispute_unlock_time: Option<DateTime<Utc>>,
    /// Required for Dynamic pricing, absent for Fixed; at most 7.
    #[serde(
        rename = "RequestedFunds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub requested_funds: Option<Vec<Amount>>,
    /// Private metadata stored with the payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

/// `POST /payment/resolve-blockchain-identifier` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolveRequest {
    pub blockchain_identifier: String,
    pub network: Network,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_smart_contract_address: Option<String>,
    /// `"true"` or `"false"` (a string on the wire); default `"false"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_history: Option<String>,
}

/// `POST /payment/submit-result` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubmitResultRequest {
    pub network: Network,
    /// MIP-004 output hash (hex; at most 250 characters in 0.27.0, exactly 64 in 0.28.0).
    pub submit_result_hash: String,
    pub blockchain_identifier: String,
}

/// `POST /payment/authorize-refund` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeRefundRequest {
    pub blockchain_identifier: String,
    pub network: Network,
}

/// `NextAction` of a payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NextAction {
    pub requested_action: RequestedAction,
    pub error_type: Option<PaymentErrorType>,
    pub error_note: Option<String>,
    /// The hash `submit-result` queued (while `SubmitResultRequested`/`Initiated`).
    pub result_hash: Option<String>,
}

/// `CurrentTransaction` of a payment (and the items of `TransactionHistory`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CurrentTransaction {
    pub id: String,
    #[serde(with = "iso_ms")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "iso_ms")]
    pub updated_at: DateTime<Utc>,
    pub fees: Option<String>,
    pub block_height: Option<i64>,
    pub block_time: Option<i64>,
    pub tx_hash: Option<String>,
    pub status: TransactionStatus,
    pub previous_on_chain_state: Option<OnChainState>,
    pub new_on_chain_state: Option<OnChainState>,
    pub confirmations: Option<i64>,
}

/// An item of `ActionHistory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionHistoryEntry {
    pub id: String,
    #[serde(with = "iso_ms")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "iso_ms")]
    pub updated_at: DateTime<Utc>,
    pub submitted_tx_hash: Option<String>,
    pub requested_action: RequestedAction,
    pub error_type: Option<PaymentErrorType>,
    pub error_note: Option<String>,
    pub result_hash: Option<String>,
}

/// `PaymentSource` of a payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSource {
    pub id: String,
    pub network: Network,
    pub smart_contract_address: String,
    pub policy_id: Option<String>,
}

/// `BuyerWallet` of a payment (null until the buyer paid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuyerWallet {
    pub id: String,
    pub wallet_vkey: String,
}

/// `SmartContractWallet`: the seller wallet managing the payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SmartContractWallet {
    pub id: String,
    pub wallet_vkey: String,
    pub wallet_address: String,
}

/// The payment object, as `POST /payment`, `submit-result` and `authorize-refund` return it
/// (`resolve-blockchain-identifier` and `GET /payment` add the histories, see
/// [`PaymentWithHistory`]). Serializes every field the spec requires; decoding insists only on
/// the fields a seller relies on and defaults the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    pub id: String,
    #[serde(with = "iso_ms")]
    pub created_at: DateTime<Utc>,
    #[serde(default, with = "iso_ms")]
    pub updated_at: DateTime<Utc>,
    pub blockchain_identifier: String,
    #[serde(default)]
    pub agent_identifier: Option<String>,
    /// Always sent by the service; missing in some of the spec's examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_type: Option<PricingType>,
    #[serde(default, with = "opt_iso_ms")]
    pub last_checked_at: Option<DateTime<Utc>>,
    /// Unix ms (a string on the wire); null only on deprecated payments.
    #[serde(default, with = "opt_ms_string")]
    pub pay_by_time: Option<i64>,
    #[serde(with = "ms_string")]
    pub submit_result_time: i64,
    #[serde(with = "ms_string")]
    pub unlock_time: i64,
    #[serde(default)]
    pub collateral_return_lovelace: Option<String>,
    #[serde(with = "ms_string")]
    pub external_dispute_unlock_time: i64,
    #[serde(default)]
    pub requested_by_id: String,
    /// The result hash on chain; `""` until one was submitted.
    #[serde(default)]
    pub result_hash: Option<String>,
    #[serde(default, with = "iso_ms")]
    pub next_action_last_changed_at: DateTime<Utc>,
    #[serde(default, with = "iso_ms")]
    pub on_chain_state_or_result_last_changed_at: DateTime<Utc>,
    #[serde(default, with = "iso_ms")]
    pub next_action_or_on_chain_state_or_result_last_changed_at: DateTime<Utc>,
    #[serde(default)]
    pub input_hash: Option<String>,
    /// ADA.
    #[serde(default)]
    pub total_buyer_cardano_fees: f64,
    /// ADA.
    #[serde(default)]
    pub total_seller_cardano_fees: f64,
    /// Milliseconds.
    #[serde(default)]
    pub cooldown_time: i64,
    /// Milliseconds.
    #[serde(default)]
    pub cooldown_time_other_party: i64,
    #[serde(default)]
    pub on_chain_state: Option<OnChainState>,
    #[serde(rename = "NextAction")]
    pub next_action: NextAction,
    #[serde(rename = "CurrentTransaction", default)]
    pub current_transaction: Option<CurrentTransaction>,
    #[serde(rename = "RequestedFunds", default)]
    pub requested_funds: Vec<Amount>,
    #[serde(rename = "WithdrawnForSeller", default)]
    pub withdrawn_for_seller: Vec<Amount>,
    #[serde(rename = "WithdrawnForBuyer", default)]
    pub withdrawn_for_buyer: Vec<Amount>,
    #[serde(rename = "PaymentSource")]
    pub payment_source: PaymentSource,
    #[serde(rename = "BuyerWallet", default)]
    pub buyer_wallet: Option<BuyerWallet>,
    #[serde(rename = "SmartContractWallet", default)]
    pub smart_contract_wallet: Option<SmartContractWallet>,
    #[serde(default)]
    pub metadata: Option<String>,
}

/// The payment object with its histories (null unless `includeHistory` was `"true"`), as
/// `resolve-blockchain-identifier` and `GET /payment` return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentWithHistory {
    #[serde(flatten)]
    pub payment: Payment,
    #[serde(rename = "ActionHistory", default)]
    pub action_history: Option<Vec<ActionHistoryEntry>>,
    #[serde(rename = "TransactionHistory", default)]
    pub transaction_history: Option<Vec<CurrentTransaction>>,
}

/// `GET /payment` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentList {
    #[serde(rename = "Payments")]
    pub payments: Vec<PaymentWithHistory>,
}

/// What a workflow keeps of a payment: identity, state, deadlines. Built from a [`Payment`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSummary {
    pub blockchain_identifier: String,
    pub agent_identifier: String,
    pub input_hash: String,
    pub on_chain_state: Option<OnChainState>,
    pub next_action: RequestedAction,
    pub error_type: Option<String>,
    pub error_note: Option<String>,
    /// The result hash on chain, if any (not the one merely queued by `submit-result`).
    pub result_hash: Option<String>,
    /// `payByTime`; a deprecated payment without one gets `submitResultTime`, the latest time
    /// the contract allows a payment anyway.
    pub pay_by_time_ms: i64,
    pub submit_result_time_ms: i64,
    pub unlock_time_ms: i64,
    pub external_dispute_unlock_time_ms: i64,
    /// `SmartContractWallet.walletVkey`: the seller's vkey MIP-003 `start_job` returns.
    pub seller_vkey: Option<String>,
    pub has_current_transaction: bool,
}

impl From<&Payment> for PaymentSummary {
    fn from(p: &Payment) -> Self {
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Self {
            blockchain_identifier: p.blockchain_identifier.clone(),
            agent_identifier: p.agent_identifier.clone().unwrap_or_default(),
            input_hash: p.input_hash.clone().unwrap_or_default(),
            on_chain_state: p.on_chain_state,
            next_action: p.next_action.requested_action,
            error_type: p.next_action.error_type.map(|t| t.as_str().to_owned()),
            error_note: p.next_action.error_note.clone(),
            result_hash: non_empty(&p.result_hash),
            pay_by_time_ms: p.pay_by_time.unwrap_or(p.submit_result_time),
            submit_result_time_ms: p.submit_result_time,
            unlock_time_ms: p.unlock_time,
            external_dispute_unlock_time_ms: p.external_dispute_unlock_time,
            seller_vkey: p
                .smart_contract_wallet
                .as_ref()
                .map(|w| w.wallet_vkey.clone()),
            has_current_transaction: p.current_transaction.is_some(),
        }
    }
}

impl From<Payment> for PaymentSummary {
    fn from(p: Payment) -> Self {
        Self::from(&p)
    }
}

/// Formats a time as the service does (`Date.toISOString()`: milliseconds, `Z`).
pub fn to_iso_ms(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `DateTime<Utc>` as an ISO-8601 string with milliseconds.
pub(crate) mod iso_ms {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_iso_ms(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// `Option<DateTime<Utc>>` as an ISO-8601 string or null.
pub(crate) mod opt_iso_ms {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::to_iso_ms(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

/// Unix milliseconds as a decimal string (numbers are accepted on input too).
pub(crate) mod ms_string {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum StrOrNum {
        Str(String),
        Num(i64),
    }

    pub(super) fn parse<E: serde::de::Error>(v: StrOrNum) -> Result<i64, E> {
        match v {
            StrOrNum::Num(n) => Ok(n),
            StrOrNum::Str(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| E::custom(format!("not a Unix millisecond timestamp: {s:?}"))),
        }
    }

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&ms.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        parse(StrOrNum::deserialize(d)?)
    }
}

/// `Option<i64>` Unix milliseconds as a decimal string or null.
pub(crate) mod opt_ms_string {
    use super::ms_string::{StrOrNum, parse};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&ms.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<StrOrNum>::deserialize(d)?.map(parse).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enums_use_the_exact_wire_names() {
        for s in OnChainState::ALL {
            assert_eq!(serde_json::to_value(s).ok(), Some(json!(s.as_str())));
        }
        for a in RequestedAction::ALL {
            assert_eq!(serde_json::to_value(a).ok(), Some(json!(a.as_str())));
        }
        assert_eq!("Mainnet".parse::<Network>(), Ok(Network::Mainnet));
        assert!("mainnet".parse::<Network>().is_err());
    }

    #[test]
    fn create_request_sends_iso_times_and_omits_absent_fields() {
        let t = DateTime::parse_from_rfc3339("2026-03-01T12:00:00.123456Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("valid time");
        let req = CreatePaymentRequest {
            agent_identifier: "a".repeat(57),
            network: Network::Preprod,
            input_hash: "ab".into(),
            identifier_from_purchaser: "aabbaabb11221122aabb".into(),
            pay_by_time: t,
            submit_result_time: t,
            unlock_time: None,
            external_dispute_unlock_time: None,
            requested_funds: None,
            metadata: None,
        };
        let v = serde_json::to_value(&req).expect("serializes");
        assert_eq!(v["payByTime"], json!("2026-03-01T12:00:00.123Z"));
        assert_eq!(v["identifierFromPurchaser"], json!("aabbaabb11221122aabb"));
        let obj = v.as_object().expect("object");
        for absent in [
            "unlockTime",
            "externalDisputeUnlockTime",
            "RequestedFunds",
            "metadata",
        ] {
            assert!(!obj.contains_key(absent), "{absent}");
        }
    }

    #[test]
    fn ms_strings_parse_to_i64_and_back() {
        #[derive(Serialize, Deserialize)]
        struct T {
            #[serde(with = "ms_string")]
            a: i64,
            #[serde(with = "opt_ms_string")]
            b: Option<i64>,
        }
        let t: T = serde_json::from_value(json!({"a": "1717171717000", "b": null})).expect("ok");
        assert_eq!((t.a, t.b), (1_717_171_717_000, None));
        assert_eq!(
            serde_json::to_value(&t).ok(),
            Some(json!({"a": "1717171717000", "b": null}))
        );
        assert!(serde_json::from_value::<T>(json!({"a": "soon", "b": null})).is_err());
    }
}
