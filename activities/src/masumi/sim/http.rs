//! The simulator's HTTP layer: the service's routes under `/api/v1` with its authentication,
//! input validation (the express-zod-api messages of zod 4) and handler rules, fault
//! injection, and the `/_sim` test-control routes.

use super::chain::{NewPayment, SimPayment};
use super::{BuyerBehavior, Faults, MasumiSimState, SimPaymentReport, SimPricing, now_ms};
use crate::masumi::activities::EffectiveTimes;
use crate::masumi::hash::is_hex_even;
use crate::masumi::types::{
    Amount, Envelope, ErrorEnvelope, ErrorMessage, Health, Network, OnChainState, PaymentList,
    PricingType, RequestedAction,
};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;
/// The schema default of `payByTime` and `submitResultTime` (`new Date(12 h)`), which then
/// fails the time rules.
const DEFAULT_TIME_MS: i64 = 12 * HOUR_MS;

const NOT_FOUND_OR_INVALID: &str = "Payment not found or in invalid state";

pub(super) fn router(state: MasumiSimState) -> Router {
    let mut api = Router::new();
    // Express matches paths with or without a trailing slash.
    for suffix in ["", "/"] {
        api = api
            .route(&format!("/health{suffix}"), get(health))
            .route(&format!("/payment{suffix}"), get(list).post(create))
            .route(
                &format!("/payment/resolve-blockchain-identifier{suffix}"),
                post(resolve),
            )
            .route(
                &format!("/payment/submit-result{suffix}"),
                post(submit_result),
            )
            .route(
                &format!("/payment/authorize-refund{suffix}"),
                post(authorize_refund),
            );
    }
    let api = api
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), inject_faults))
        .with_state(state.clone());
    let control = Router::new()
        .route("/_sim/buyers", post(set_buyer))
        .route("/_sim/payments", get(sim_payments))
        .route("/_sim/payments/{blockchain_identifier}", get(sim_payment))
        .route("/_sim/faults", get(get_faults).post(set_faults))
        .with_state(state);
    Router::new()
        .nest("/api/v1", api)
        .merge(control)
        .fallback(not_found)
}

fn success<T: Serialize>(data: T) -> Response {
    Json(Envelope {
        status: "success".to_owned(),
        data,
    })
    .into_response()
}

/// An error answer in the service's envelope: `{"status":"error","error":{"message":…}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorEnvelope {
                status: "error".to_owned(),
                error: ErrorMessage {
                    message: self.message,
                },
                id: None,
                object: None,
            }),
        )
            .into_response()
    }
}

fn api_error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    api_error(status, message).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("Can not {method} {}", uri.path()),
    )
}

async fn inject_faults(State(state): State<MasumiSimState>, req: Request, next: Next) -> Response {
    let faults = state.faults();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    if faults.hang_rate > 0.0 && fastrand::f64() < faults.hang_rate {
        tokio::select! {
            _ = state.inner.closing.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        return error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
    }
    if faults.error_rate > 0.0 && fastrand::f64() < faults.error_rate {
        return if fastrand::bool() {
            error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        } else {
            let mut r = (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        };
    }
    let response = next.run(req).await;
    if faults.lost_response_rate > 0.0 && fastrand::f64() < faults.lost_response_rate {
        return (StatusCode::BAD_GATEWAY, "Bad Gateway").into_response();
    }
    response
}

/// The API key's id (`key-<index>`), or the service's 401.
fn authenticate(state: &MasumiSimState, headers: &HeaderMap) -> Result<String, ApiError> {
    let sent = headers
        .get("token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if sent.is_empty() {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized, no authentication token provided",
        ));
    }
    state
        .config()
        .tokens
        .iter()
        .position(|t| t == sent)
        .map(|i| format!("key-{i}"))
        .ok_or_else(|| {
            api_error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized, invalid authentication token provided",
            )
        })
}

/// A JSON object body (an empty body counts as `{}`, as express parses it).
fn object_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(api_error(
            StatusCode::BAD_REQUEST,
            format!(
                "Invalid input: expected object, received {}",
                js_type(Some(&other))
            ),
        )),
        Err(e) => Err(api_error(
            StatusCode::BAD_REQUEST,
            format!("Invalid JSON: {e}"),
        )),
    }
}

fn js_type(v: Option<&Value>) -> &'static str {
    match v {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// Input validation with zod 4's messages, joined as express-zod-api does.
struct Zod<'a> {
    obj: &'a Map<String, Value>,
    issues: Vec<String>,
}

impl<'a> Zod<'a> {
    fn new(obj: &'a Map<String, Value>) -> Self {
        Self {
            obj,
            issues: Vec::new(),
        }
    }

    fn issue(&mut self, path: &str, message: impl AsRef<str>) {
        self.issues.push(format!("{path}: {}", message.as_ref()));
    }

    fn check_len(&mut self, path: &str, s: &str, min: Option<usize>, max: Option<usize>) {
        let len = s.encode_utf16().count();
        if let Some(min) = min.filter(|m| len < *m) {
            self.issue(
                path,
                format!("Too small: expected string to have >={min} characters"),
            );
        }
        if let Some(max) = max.filter(|m| len > *m) {
            self.issue(
                path,
                format!("Too big: expected string to have <={max} characters"),
            );
        }
    }

    fn string_at(
        &mut self,
        path: &str,
        v: Option<&Value>,
        min: Option<usize>,
        max: Option<usize>,
    ) -> Option<String> {
        match v {
            Some(Value::String(s)) => {
                self.check_len(path, s, min, max);
                Some(s.clone())
            }
            other => {
                self.issue(
                    path,
                    format!(
                        "Invalid input: expected string, received {}",
                        js_type(other)
                    ),
                );
                None
            }
        }
    }

    fn string(&mut self, key: &str, min: Option<usize>, max: Option<usize>) -> Option<String> {
        let v = self.obj.get(key);
        self.string_at(key, v, min, max)
    }

    /// `.optional()`: absent is fine, null is not.
    fn opt_string(&mut self, key: &str, max: Option<usize>) -> Option<String> {
        match self.obj.get(key) {
            None => None,
            v => self.string_at(key, v, None, max),
        }
    }

    /// `.optional().nullable()`.
    fn opt_nullable_string(&mut self, key: &str) -> Option<String> {
        match self.obj.get(key) {
            None | Some(Value::Null) => None,
            v => self.string_at(key, v, None, None),
        }
    }

    fn network(&mut self, key: &str) -> Option<Network> {
        let found = self
            .obj
            .get(key)
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Network>().ok());
        if found.is_none() {
            self.issue(
                key,
                r#"Invalid option: expected one of "Preprod"|"Mainnet""#,
            );
        }
        found
    }

    /// `ez.dateIn()` with an optional default: ms since the epoch.
    fn date(&mut self, key: &str, default: Option<i64>) -> Option<i64> {
        match self.obj.get(key) {
            None => default,
            Some(Value::String(s)) => {
                let parsed = parse_date_in(s);
                if parsed.is_none() {
                    self.issue(key, "Invalid input");
                }
                parsed
            }
            Some(_) => {
                self.issue(key, "Invalid input");
                None
            }
        }
    }

    /// `RequestedFunds`: optional array (at most 7) of `{amount ≤25, unit ≤150}`.
    fn funds(&mut self, key: &str) -> Option<Vec<Amount>> {
        let items = match self.obj.get(key) {
            None => return None,
            Some(Value::Array(items)) => items,
            other => {
                self.issue(
                    key,
                    format!("Invalid input: expected array, received {}", js_type(other)),
                );
                return None;
            }
        };
        if items.len() > 7 {
            self.issue(key, "Too big: expected array to have <=7 items");
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{key}[{i}]");
            let Some(obj) = item.as_object() else {
                self.issue(
                    &path,
                    format!(
                        "Invalid input: expected object, received {}",
                        js_type(Some(item))
                    ),
                );
                continue;
            };
            let amount =
                self.string_at(&format!("{path}.amount"), obj.get("amount"), None, Some(25));
            let unit = self.string_at(&format!("{path}.unit"), obj.get("unit"), None, Some(150));
            if let (Some(amount), Some(unit)) = (amount, unit) {
                out.push(Amount { amount, unit });
            }
        }
        Some(out)
    }

    /// The 400 answer, if any issue was found.
    fn finish(self) -> Result<(), ApiError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(api_error(StatusCode::BAD_REQUEST, self.issues.join("; ")))
        }
    }
}

/// `z.iso.date()` or `z.iso.datetime({local, offset})`; local times count as UTC.
fn parse_date_in(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M%:z", "%Y-%m-%dT%H:%M%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.timestamp_millis());
        }
    }
    let zulu = s.strip_suffix('Z').unwrap_or(s);
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(zulu, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

async fn health() -> Response {
    success(Health {
        status: "ok".to_owned(),
    })
}

async fn create(State(state): State<MasumiSimState>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match authenticate(&state, &headers) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let obj = match object_body(&body) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let mut z = Zod::new(&obj);
    let input_hash = z.string("inputHash", None, Some(250));
    let network = z.network("network");
    let agent = z.string("agentIdentifier", Some(57), Some(250));
    let funds = z.funds("RequestedFunds");
    let pay_by = z.date("payByTime", Some(DEFAULT_TIME_MS));
    let submit = z.date("submitResultTime", Some(DEFAULT_TIME_MS));
    let unlock = z.date("unlockTime", None);
    let dispute = z.date("externalDisputeUnlockTime", None);
    let metadata = z.opt_string("metadata", None);
    let purchaser = z.string("identifierFromPurchaser", Some(14), Some(26));
    if let Err(r) = z.finish() {
        return r.into_response();
    }
    let (Some(input_hash), Some(network), Some(agent), Some(pay_by), Some(submit), Some(purchaser)) =
        (input_hash, network, agent, pay_by, submit, purchaser)
    else {
        return error(StatusCode::BAD_REQUEST, "Invalid input");
    };
    let config = state.config();
    let policy_id: String = agent.chars().take(56).collect();
    if !config.networks.contains(&network) || !config.agent_policy_ids.contains(&policy_id) {
        return error(
            StatusCode::NOT_FOUND,
            "Network and policyId combination not supported",
        );
    }
    if !is_hex_even(&purchaser) {
        return error(
            StatusCode::BAD_REQUEST,
            "Purchaser identifier is not a valid hex string",
        );
    }
    if !is_hex_even(&input_hash) {
        return error(
            StatusCode::BAD_REQUEST,
            "Input hash is not a valid hex string",
        );
    }
    let times = EffectiveTimes {
        pay_by,
        submit_result: submit,
        unlock: unlock.unwrap_or(submit + 6 * HOUR_MS),
        external_dispute_unlock: dispute.unwrap_or(submit + 12 * HOUR_MS),
    };
    let now = now_ms();
    if let Err(message) = times.check(now) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    let (pricing_type, requested_funds) = match (&config.pricing, funds) {
        (SimPricing::Fixed { .. }, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "For fixed pricing, RequestedFunds must be null",
            );
        }
        (SimPricing::Fixed { amounts }, None) => (PricingType::Fixed, amounts.clone()),
        (SimPricing::Dynamic, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "For dynamic pricing, RequestedFunds must be provided",
            );
        }
        (SimPricing::Dynamic, Some(funds)) if funds.is_empty() => {
            return error(
                StatusCode::BAD_REQUEST,
                "For dynamic pricing, RequestedFunds must be provided",
            );
        }
        (SimPricing::Dynamic, Some(funds)) => {
            for f in &funds {
                match f.amount.trim().parse::<i128>() {
                    Ok(a) if a > 0 => {}
                    Ok(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "RequestedFunds amounts must be positive",
                        );
                    }
                    // `BigInt("1.5")` throws: the real service answers 500.
                    Err(_) => {
                        return error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
                    }
                }
            }
            let funds = funds
                .into_iter()
                .map(|f| Amount {
                    unit: if f.unit.eq_ignore_ascii_case("lovelace") {
                        String::new()
                    } else {
                        f.unit
                    },
                    amount: f.amount,
                })
                .collect();
            (PricingType::Dynamic, funds)
        }
        (SimPricing::Free, _) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Pricing type not supported for payments",
            );
        }
    };
    let new = NewPayment {
        network,
        agent_identifier: agent,
        policy_id,
        input_hash,
        purchaser,
        pricing_type,
        requested_funds,
        pay_by: times.pay_by,
        submit_result: times.submit_result,
        unlock: times.unlock,
        external_dispute_unlock: times.external_dispute_unlock,
        metadata,
        requested_by: key,
    };
    let mut db = state.db();
    let buyer = db
        .buyers
        .get(&new.purchaser)
        .copied()
        .unwrap_or(config.default_buyer);
    *db.creates
        .entry((new.purchaser.clone(), new.input_hash.clone()))
        .or_insert(0) += 1;
    let payment = SimPayment::new(new, buyer, now);
    let wire = payment.to_wire();
    let idx = db.payments.len();
    db.by_id.insert(payment.blockchain_identifier.clone(), idx);
    db.payments.push(payment);
    tracing::debug!(buyer = ?buyer, "masumi sim: payment created");
    success(wire)
}

async fn resolve(State(state): State<MasumiSimState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authenticate(&state, &headers) {
        return r.into_response();
    }
    let obj = match object_body(&body) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let mut z = Zod::new(&obj);
    let bid = z.string("blockchainIdentifier", None, None);
    let network = z.network("network");
    let filter = z.opt_nullable_string("filterSmartContractAddress");
    let include = z.opt_string("includeHistory", None);
    if let Err(r) = z.finish() {
        return r.into_response();
    }
    let (Some(bid), Some(network)) = (bid, network) else {
        return error(StatusCode::BAD_REQUEST, "Invalid input");
    };
    let include = include.is_some_and(|s| s.eq_ignore_ascii_case("true"));
    state
        .with_payment(&bid, |p, _| {
            let wire = p.to_wire_with_history(include);
            let address_ok = filter
                .as_deref()
                .is_none_or(|a| a == wire.payment.payment_source.smart_contract_address);
            if p.network != network || !address_ok {
                return None;
            }
            p.counters.resolve_calls += 1;
            Some(success(wire))
        })
        .flatten()
        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, "Payment not found"))
}

/// A seller request (`submit-result`, `authorize-refund`) on one payment, with the
/// service's preconditions.
struct SellerRequest<'a> {
    key: &'a str,
    network: Network,
    allowed_states: &'a [OnChainState],
    forbidden: &'a str,
}

impl SellerRequest<'_> {
    /// `Err((status, message))` when the payment refuses; `Ok` when it accepts.
    fn check(&self, p: &SimPayment) -> Result<(), (StatusCode, &'static str)> {
        let state_ok = p.state.is_some_and(|s| self.allowed_states.contains(&s));
        let idle = p.action.action == RequestedAction::WaitingForExternalAction;
        if !(state_ok && idle && p.current_tx.is_some()) {
            return Err((StatusCode::NOT_FOUND, NOT_FOUND_OR_INVALID));
        }
        if p.requested_by != self.key {
            return Err((StatusCode::FORBIDDEN, ""));
        }
        Ok(())
    }

    fn refuse(&self, (status, message): (StatusCode, &'static str)) -> Response {
        if status == StatusCode::FORBIDDEN {
            error(status, self.forbidden)
        } else {
            error(status, message)
        }
    }
}

async fn submit_result(
    State(state): State<MasumiSimState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match authenticate(&state, &headers) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let obj = match object_body(&body) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let mut z = Zod::new(&obj);
    let network = z.network("network");
    let hash = z.string("submitResultHash", None, Some(250));
    let bid = z.string("blockchainIdentifier", None, Some(8000));
    if let Err(r) = z.finish() {
        return r.into_response();
    }
    let (Some(network), Some(hash), Some(bid)) = (network, hash, bid) else {
        return error(StatusCode::BAD_REQUEST, "Invalid input");
    };
    let req = SellerRequest {
        key: &key,
        network,
        allowed_states: &[
            OnChainState::RefundRequested,
            OnChainState::Disputed,
            OnChainState::FundsLocked,
        ],
        forbidden: "You are not authorized to submit results for this payment",
    };
    state
        .with_payment(&bid, |p, _| {
            if p.network != req.network {
                return None;
            }
            Some(match req.check(p) {
                Ok(()) => {
                    p.request(
                        RequestedAction::SubmitResultRequested,
                        Some(hash.clone()),
                        "submit_result",
                        now_ms(),
                    );
                    p.counters.submit_result_accepted += 1;
                    p.counters.result_hashes.push(hash.clone());
                    success(p.to_wire())
                }
                Err(refusal) => {
                    p.counters.submit_result_refused += 1;
                    req.refuse(refusal)
                }
            })
        })
        .flatten()
        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, NOT_FOUND_OR_INVALID))
}

async fn authorize_refund(
    State(state): State<MasumiSimState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match authenticate(&state, &headers) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let obj = match object_body(&body) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    let mut z = Zod::new(&obj);
    let bid = z.string("blockchainIdentifier", None, Some(8000));
    let network = z.network("network");
    if let Err(r) = z.finish() {
        return r.into_response();
    }
    let (Some(bid), Some(network)) = (bid, network) else {
        return error(StatusCode::BAD_REQUEST, "Invalid input");
    };
    let req = SellerRequest {
        key: &key,
        network,
        allowed_states: &[OnChainState::Disputed, OnChainState::RefundRequested],
        forbidden: "You are not authorized to authorize a refund for this payment",
    };
    state
        .with_payment(&bid, |p, _| {
            if p.network != req.network {
                return None;
            }
            Some(match req.check(p) {
                Ok(()) => {
                    p.request(
                        RequestedAction::AuthorizeRefundRequested,
                        None,
                        "authorize_refund",
                        now_ms(),
                    );
                    p.counters.authorize_refund_accepted += 1;
                    success(p.to_wire())
                }
                Err(refusal) => {
                    p.counters.authorize_refund_refused += 1;
                    req.refuse(refusal)
                }
            })
        })
        .flatten()
        .unwrap_or_else(|| error(StatusCode::NOT_FOUND, NOT_FOUND_OR_INVALID))
}

async fn list(
    State(state): State<MasumiSimState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authenticate(&state, &headers) {
        return r.into_response();
    }
    let obj: Map<String, Value> = query
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut z = Zod::new(&obj);
    let limit = match obj.get("limit").and_then(Value::as_str) {
        None => Some(10),
        Some(s) => match s.trim().parse::<f64>() {
            Ok(n) if n < 1.0 => {
                z.issue("limit", "Too small: expected number to be >=1");
                None
            }
            Ok(n) if n > 100.0 => {
                z.issue("limit", "Too big: expected number to be <=100");
                None
            }
            Ok(n) => Some(n as usize),
            Err(_) => {
                z.issue("limit", "Invalid input: expected number, received NaN");
                None
            }
        },
    };
    let cursor = z.opt_string("cursorId", None);
    let network = z.network("network");
    let filter_address = z.opt_nullable_string("filterSmartContractAddress");
    let filter_state = match obj.get("filterOnChainState").and_then(Value::as_str) {
        None => None,
        Some(s) => {
            let parsed = OnChainState::ALL[..8]
                .iter()
                .copied()
                .find(|st| st.as_str() == s);
            if parsed.is_none() {
                z.issue(
                    "filterOnChainState",
                    r#"Invalid option: expected one of "FundsLocked"|"FundsOrDatumInvalid"|"ResultSubmitted"|"RefundRequested"|"Disputed"|"Withdrawn"|"RefundWithdrawn"|"DisputedWithdrawn""#,
                );
            }
            parsed
        }
    };
    let search = z.opt_string("searchQuery", None).map(|s| s.to_lowercase());
    let include = z
        .opt_string("includeHistory", None)
        .is_some_and(|s| s.eq_ignore_ascii_case("true"));
    if let Err(r) = z.finish() {
        return r.into_response();
    }
    let (Some(limit), Some(network)) = (limit, network) else {
        return error(StatusCode::BAD_REQUEST, "Invalid input");
    };
    state.advance_all();
    let db = state.db();
    let mut matching: Vec<&SimPayment> = db
        .payments
        .iter()
        .rev()
        .filter(|p| p.network == network)
        .filter(|p| filter_state.is_none_or(|s| p.state == Some(s)))
        .filter(|p| {
            search.as_deref().is_none_or(|q| {
                p.id.contains(q)
                    || p.state
                        .is_some_and(|s| s.as_str().to_lowercase().contains(q))
                    || p.current_tx
                        .as_ref()
                        .and_then(|t| t.tx_hash.as_deref())
                        .is_some_and(|h| h.contains(q))
            })
        })
        .collect();
    if let Some(cursor) = cursor {
        // Prisma's cursor is inclusive; an unknown cursor yields nothing.
        match matching.iter().position(|p| p.id == cursor) {
            Some(i) => {
                matching.drain(..i);
            }
            None => matching.clear(),
        }
    }
    let payments = matching
        .into_iter()
        .map(|p| p.to_wire_with_history(include))
        .filter(|w| {
            filter_address
                .as_deref()
                .is_none_or(|a| a == w.payment.payment_source.smart_contract_address)
        })
        .take(limit)
        .collect();
    success(PaymentList { payments })
}

/// `POST /_sim/buyers` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimBuyerPreset {
    #[serde(alias = "identifier_from_purchaser")]
    pub identifier_from_purchaser: String,
    pub behavior: BuyerBehavior,
}

async fn set_buyer(
    State(state): State<MasumiSimState>,
    Json(preset): Json<SimBuyerPreset>,
) -> Json<SimBuyerPreset> {
    state.set_buyer(&preset.identifier_from_purchaser, preset.behavior);
    Json(preset)
}

async fn sim_payments(State(state): State<MasumiSimState>) -> Json<Vec<SimPaymentReport>> {
    Json(state.payments())
}

async fn sim_payment(
    State(state): State<MasumiSimState>,
    Path(blockchain_identifier): Path<String>,
) -> Response {
    match state.payment(&blockchain_identifier) {
        Some(report) => Json(report).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such payment" })),
        )
            .into_response(),
    }
}

async fn get_faults(State(state): State<MasumiSimState>) -> Json<Faults> {
    Json(state.faults())
}

async fn set_faults(
    State(state): State<MasumiSimState>,
    Json(faults): Json<Faults>,
) -> Json<Faults> {
    state.set_faults(faults);
    Json(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_like_ez_date_in() {
        let ms = |s| parse_date_in(s);
        assert_eq!(ms("2026-03-01T12:00:00.000Z"), Some(1_772_366_400_000));
        assert_eq!(ms("2026-03-01T12:00:00Z"), Some(1_772_366_400_000));
        assert_eq!(ms("2026-03-01T13:00:00+01:00"), Some(1_772_366_400_000));
        assert_eq!(ms("2026-03-01T12:00:00"), Some(1_772_366_400_000));
        assert_eq!(ms("2026-03-01"), Some(1_772_323_200_000));
        assert_eq!(ms("soon"), None);
    }

    #[test]
    fn zod_messages() {
        let obj = serde_json::json!({"a": 1, "b": "x", "n": "Testnet"});
        let obj = obj.as_object().cloned().unwrap_or_default();
        let mut z = Zod::new(&obj);
        z.string("a", None, None);
        z.string("b", Some(14), None);
        z.string("missing", None, None);
        z.network("n");
        assert_eq!(
            z.issues,
            vec![
                "a: Invalid input: expected string, received number",
                "b: Too small: expected string to have >=14 characters",
                "missing: Invalid input: expected string, received undefined",
                r#"n: Invalid option: expected one of "Preprod"|"Mainnet""#,
            ]
        );
    }
}
