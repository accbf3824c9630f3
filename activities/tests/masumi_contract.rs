//! Contract tests of the Masumi wire types against the payment service's published OpenAPI
//! spec (0.27.0, copied to `tests/fixtures/masumi/`): request bodies we send, the spec's own
//! examples decoded into our types, enum lists, and (feature `sim`) the simulator's answers
//! validated against the response schemas.

use activities::masumi::types::{
    AuthorizeRefundRequest, CreatePaymentRequest, Envelope, Network, OnChainState, Payment,
    PaymentErrorType, PaymentList, PricingType, RequestedAction, ResolveRequest,
    SubmitResultRequest, TransactionStatus,
};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const SPEC: &str = include_str!("fixtures/masumi/openapi-0.27.0.json");

fn spec() -> Value {
    serde_json::from_str(SPEC).expect("the spec fixture is JSON")
}

/// Follows `$ref`s into `#/components/...`.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.trim_start_matches('#');
            resolve(spec, spec.pointer(pointer).unwrap_or(&Value::Null))
        }
        None => schema,
    }
}

fn op<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Value {
    let p = format!(
        "/paths/{}/{method}",
        path.replace('~', "~0").replace('/', "~1")
    );
    spec.pointer(&p)
        .unwrap_or_else(|| panic!("spec has no {method} {path}"))
}

fn request_schema<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Value {
    let s = op(spec, path, method)
        .pointer("/requestBody/content/application~1json/schema")
        .unwrap_or_else(|| panic!("no request schema for {method} {path}"));
    resolve(spec, s)
}

fn response_schema<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Value {
    let s = op(spec, path, method)
        .pointer("/responses/200/content/application~1json/schema")
        .unwrap_or_else(|| panic!("no 200 schema for {method} {path}"));
    resolve(spec, s)
}

fn data_schema<'a>(spec: &'a Value, path: &str, method: &str) -> &'a Value {
    let s = response_schema(spec, path, method);
    resolve(spec, s.pointer("/properties/data").unwrap_or(&Value::Null))
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn required(schema: &Value) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn enum_values(schema: &Value) -> Vec<String> {
    schema
        .get("enum")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A small JSON-schema check (the OpenAPI 3.0 subset the spec uses): `$ref`, `anyOf`, `type`,
/// `nullable`, `enum`, `properties`, `required`, `items`, string lengths.
fn validate(spec: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let ok = any.iter().any(|s| {
            let mut e = Vec::new();
            validate(spec, s, value, path, &mut e);
            e.is_empty()
        });
        if !ok {
            errors.push(format!("{path}: matches no anyOf branch: {value}"));
        }
        return;
    }
    if value.is_null() {
        let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true);
        if !nullable {
            errors.push(format!("{path}: null but not nullable"));
        }
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        Some("string") => value.is_string(),
        Some("number") => value.is_number(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("boolean") => value.is_boolean(),
        Some("array") => value.is_array(),
        Some("object") => value.is_object(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{path}: expected {ty:?}, got {value}"));
        return;
    }
    let allowed = enum_values(schema);
    if !allowed.is_empty()
        && let Some(s) = value.as_str()
        && !allowed.iter().any(|a| a == s)
    {
        errors.push(format!("{path}: {s:?} not in {allowed:?}"));
    }
    if let Some(s) = value.as_str() {
        let len = s.encode_utf16().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(format!("{path}: longer than {max}"));
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(format!("{path}: shorter than {min}"));
        }
    }
    if let Some(obj) = value.as_object() {
        for r in required(schema) {
            if !obj.contains_key(&r) {
                errors.push(format!("{path}.{r}: required but missing"));
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in obj {
                match props.get(k) {
                    Some(s) => validate(spec, s, v, &format!("{path}.{k}"), errors),
                    None => errors.push(format!("{path}.{k}: not in the spec")),
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            validate(spec, items, v, &format!("{path}[{i}]"), errors);
        }
    }
}

#[track_caller]
fn assert_valid(spec: &Value, schema: &Value, value: &Value, what: &str) {
    let mut errors = Vec::new();
    validate(spec, schema, value, what, &mut errors);
    assert!(
        errors.is_empty(),
        "{what} breaks the spec:\n{}",
        errors.join("\n")
    );
}

fn full_create_request() -> CreatePaymentRequest {
    let t = Utc
        .with_ymd_and_hms(2030, 1, 1, 12, 0, 0)
        .single()
        .expect("valid time");
    CreatePaymentRequest {
        agent_identifier: "ab".repeat(30),
        network: Network::Preprod,
        input_hash: "7f1b807c60ad347d64bb0837c88cb7edad3cec8774e6f08fd82bbd278f158113".into(),
        identifier_from_purchaser: "aabbaabb11221122aabb".into(),
        pay_by_time: t,
        submit_result_time: t + chrono::Duration::hours(1),
        unlock_time: Some(t + chrono::Duration::hours(7)),
        external_dispute_unlock_time: Some(t + chrono::Duration::hours(13)),
        requested_funds: Some(vec![activities::masumi::types::Amount {
            amount: "10000000".into(),
            unit: String::new(),
        }]),
        metadata: Some("private".into()),
    }
}

#[test]
fn create_payment_request_matches_the_schema() {
    let spec = spec();
    let schema = request_schema(&spec, "/payment", "post");
    let full = serde_json::to_value(full_create_request()).expect("serializes");
    assert_valid(&spec, schema, &full, "full create request");
    // Every property of the schema is one we can send, and nothing else.
    assert_eq!(keys(&full), keys(&schema["properties"]));
    // The minimal request still carries every required property (and the two times the
    // service effectively requires).
    let mut minimal = full_create_request();
    minimal.unlock_time = None;
    minimal.external_dispute_unlock_time = None;
    minimal.requested_funds = None;
    minimal.metadata = None;
    let minimal = serde_json::to_value(minimal).expect("serializes");
    assert_valid(&spec, schema, &minimal, "minimal create request");
    let mut expected = required(schema);
    expected.extend(["payByTime".to_owned(), "submitResultTime".to_owned()]);
    assert_eq!(keys(&minimal), expected);
}

#[test]
fn seller_requests_match_their_schemas() {
    let spec = spec();
    let cases = [
        (
            "/payment/resolve-blockchain-identifier",
            serde_json::to_value(ResolveRequest {
                blockchain_identifier: "abcd".into(),
                network: Network::Mainnet,
                filter_smart_contract_address: Some("addr1".into()),
                include_history: Some("true".into()),
            }),
        ),
        (
            "/payment/submit-result",
            serde_json::to_value(SubmitResultRequest {
                network: Network::Preprod,
                submit_result_hash: "ab".repeat(32),
                blockchain_identifier: "abcd".into(),
            }),
        ),
        (
            "/payment/authorize-refund",
            serde_json::to_value(AuthorizeRefundRequest {
                blockchain_identifier: "abcd".into(),
                network: Network::Preprod,
            }),
        ),
    ];
    for (path, body) in cases {
        let body = body.expect("serializes");
        let schema = request_schema(&spec, path, "post");
        assert_valid(&spec, schema, &body, path);
        assert!(
            required(schema).is_subset(&keys(&body)),
            "{path}: {:?} ⊄ {:?}",
            required(schema),
            keys(&body)
        );
        assert!(
            keys(&body).is_subset(&keys(&schema["properties"])),
            "{path}"
        );
    }
}

#[test]
fn enums_equal_the_spec_lists() {
    let spec = spec();
    let data = data_schema(&spec, "/payment", "post");
    let props = &data["properties"];
    let strings = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let states: Vec<&str> = OnChainState::ALL.iter().map(|s| s.as_str()).collect();
    // 0.27.0 lists the first 8; 0.28.0 adds WithdrawAuthorized and RefundAuthorized.
    assert_eq!(enum_values(&props["onChainState"]), strings(&states[..8]));
    assert_eq!(
        &states[8..],
        &["WithdrawAuthorized", "RefundAuthorized"],
        "the 0.28.0 states"
    );
    let actions: Vec<&str> = RequestedAction::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        enum_values(&props["NextAction"]["properties"]["requestedAction"]),
        strings(&actions)
    );
    let errs: Vec<&str> = PaymentErrorType::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        enum_values(&props["NextAction"]["properties"]["errorType"]),
        strings(&errs)
    );
    let networks: Vec<&str> = Network::ALL.iter().map(|n| n.as_str()).collect();
    assert_eq!(
        enum_values(&request_schema(&spec, "/payment", "post")["properties"]["network"]),
        strings(&networks)
    );
    let to_strings = |v: Vec<Value>| {
        v.into_iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let statuses = to_strings(
        TransactionStatus::ALL
            .iter()
            .map(|s| serde_json::to_value(s).expect("serializes"))
            .collect(),
    );
    assert_eq!(
        enum_values(&props["CurrentTransaction"]["properties"]["status"]),
        statuses
    );
    let pricing = to_strings(
        PricingType::ALL
            .iter()
            .map(|s| serde_json::to_value(s).expect("serializes"))
            .collect(),
    );
    assert_eq!(enum_values(&props["pricingType"]), pricing);
    // The list filter and the resolve schema agree with the create answer.
    let payment = resolve(&spec, &json!({"$ref": "#/components/schemas/Payment"})).clone();
    assert_eq!(
        enum_values(&payment["properties"]["onChainState"]),
        strings(&states[..8])
    );
}

#[test]
fn the_specs_examples_decode_into_our_types() {
    let spec = spec();
    for (path, method) in [
        ("/payment", "post"),
        ("/payment/resolve-blockchain-identifier", "post"),
        ("/payment/submit-result", "post"),
        ("/payment/authorize-refund", "post"),
    ] {
        let example = response_schema(&spec, path, method)
            .get("example")
            .cloned()
            .unwrap_or_else(|| panic!("{method} {path} has an example"));
        let env: Envelope<Payment> = serde_json::from_value(example)
            .unwrap_or_else(|e| panic!("{method} {path} example: {e}"));
        assert_eq!(env.data.blockchain_identifier, "blockchain_identifier");
        assert_eq!(env.data.submit_result_time, 0);
    }
    let list = response_schema(&spec, "/payment", "get")
        .get("example")
        .cloned()
        .expect("GET /payment has an example");
    let list: Envelope<PaymentList> =
        serde_json::from_value(list).expect("GET /payment example decodes");
    assert!(!list.data.payments.is_empty());
}

#[test]
fn our_payment_serializes_every_required_property() {
    let spec = spec();
    let example = response_schema(&spec, "/payment", "post")["example"]["data"].clone();
    let payment: Payment = serde_json::from_value(example).expect("decodes");
    let ours = serde_json::to_value(&payment).expect("serializes");
    for (path, method) in [
        ("/payment", "post"),
        ("/payment/submit-result", "post"),
        ("/payment/authorize-refund", "post"),
    ] {
        let schema = data_schema(&spec, path, method);
        assert_valid(&spec, schema, &ours, &format!("{method} {path} data"));
        assert_eq!(keys(&ours), required(schema), "{method} {path}");
    }
}

#[cfg(feature = "sim")]
mod simulator {
    use super::*;
    use activities::masumi::hash;
    use activities::masumi::sim::{
        BuyerBehavior, MasumiSim, MasumiSimConfig, SIM_AGENT_IDENTIFIER, SIM_TOKEN,
    };
    use std::time::Duration;

    async fn post(sim: &MasumiSim, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(format!("{}{path}", sim.base_url()))
            .json(&body);
        if let Some(t) = token {
            req = req.header("token", t);
        }
        let resp = req.send().await.expect("sim answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    async fn get(sim: &MasumiSim, path: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", sim.base_url()))
            .header("token", SIM_TOKEN)
            .send()
            .await
            .expect("sim answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    fn create_body(purchaser: &str) -> Value {
        let now = Utc::now();
        json!({
            "agentIdentifier": SIM_AGENT_IDENTIFIER,
            "network": "Preprod",
            "inputHash": hash::input_hash(purchaser, &json!({"text": "hi"})),
            "identifierFromPurchaser": purchaser,
            "payByTime": (now + chrono::Duration::minutes(30)).to_rfc3339(),
            "submitResultTime": (now + chrono::Duration::hours(1)).to_rfc3339(),
            "paymentType": "Web3CardanoV1",
        })
    }

    #[tokio::test]
    async fn simulator_answers_match_the_response_schemas() {
        let spec = spec();
        let sim = MasumiSim::spawn(MasumiSimConfig {
            chain_step_ms: 20,
            fast_clock: true,
            default_buyer: BuyerBehavior::Pay { after_ms: 50 },
            ..MasumiSimConfig::default()
        })
        .await
        .expect("sim starts");

        let (status, health) = reqwest::get(format!("{}/health", sim.base_url()))
            .await
            .expect("health answers")
            .json::<Value>()
            .await
            .map(|v| (200, v))
            .expect("JSON");
        assert_eq!(status, 200);
        assert_valid(
            &spec,
            response_schema(&spec, "/health", "get"),
            &health,
            "health",
        );

        let (status, created) = post(
            &sim,
            "/payment/",
            Some(SIM_TOKEN),
            create_body("aabbccddeeff0011"),
        )
        .await;
        assert_eq!(status, 200, "{created}");
        assert_valid(
            &spec,
            response_schema(&spec, "/payment", "post"),
            &created,
            "create",
        );
        let bid = created["data"]["blockchainIdentifier"]
            .as_str()
            .expect("identifier")
            .to_owned();
        assert_eq!(created["data"]["onChainState"], Value::Null);
        assert_eq!(
            created["data"]["NextAction"]["requestedAction"],
            "WaitingForExternalAction"
        );

        // Paid: FundsLocked with a current transaction.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let resolve_body =
            json!({"blockchainIdentifier": bid, "network": "Preprod", "includeHistory": "true"});
        let (status, resolved) = post(
            &sim,
            "/payment/resolve-blockchain-identifier",
            Some(SIM_TOKEN),
            resolve_body,
        )
        .await;
        assert_eq!(status, 200);
        assert_valid(
            &spec,
            response_schema(&spec, "/payment/resolve-blockchain-identifier", "post"),
            &resolved,
            "resolve",
        );
        assert_eq!(resolved["data"]["onChainState"], "FundsLocked");
        assert!(resolved["data"]["CurrentTransaction"].is_object());

        let submit = json!({"network": "Preprod", "blockchainIdentifier": bid, "submitResultHash": "ab".repeat(32)});
        let (status, submitted) =
            post(&sim, "/payment/submit-result", Some(SIM_TOKEN), submit).await;
        assert_eq!(status, 200, "{submitted}");
        assert_valid(
            &spec,
            response_schema(&spec, "/payment/submit-result", "post"),
            &submitted,
            "submit-result",
        );
        assert_eq!(
            submitted["data"]["NextAction"]["requestedAction"],
            "SubmitResultRequested"
        );

        let (status, listed) =
            get(&sim, "/payment?network=Preprod&limit=5&includeHistory=true").await;
        assert_eq!(status, 200);
        assert_valid(
            &spec,
            response_schema(&spec, "/payment", "get"),
            &listed,
            "list",
        );

        // Every answer decodes into our types too.
        let _: Envelope<Payment> = serde_json::from_value(created).expect("create decodes");
        let _: Envelope<Payment> = serde_json::from_value(resolved).expect("resolve decodes");
        let _: Envelope<PaymentList> = serde_json::from_value(listed).expect("list decodes");

        // Errors use the error envelope.
        let (status, err) = post(
            &sim,
            "/payment/authorize-refund",
            Some(SIM_TOKEN),
            json!({"network": "Preprod", "blockchainIdentifier": bid}),
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(
            err,
            json!({"status": "error", "error": {"message": "Payment not found or in invalid state"}})
        );
        sim.shutdown().await;
    }
}
