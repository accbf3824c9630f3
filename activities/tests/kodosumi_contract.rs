//! Contract tests of the Kodosumi wire types: every response recorded from a real Kodosumi
//! 1.1.0 (`tests/fixtures/kodosumi/`) parses into our types, and (feature `sim`) the
//! simulator answers the same requests with the same JSON shape (the same keys, recursively).

use activities::kodosumi::types::{
    ExecutionStatus, FlowForm, FlowPage, FormElement, LaunchReply, LockReply, LoginResponse,
};
use activities::kodosumi::{ExecState, result_text};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;

fn fixture_text(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kodosumi")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The JSON body of a recording: `.txt` files start with the status line and headers; a
/// recording may carry trailing noise after the JSON (`status_final_ok.txt` ends in ` HTTP200`).
fn fixture(name: &str) -> Value {
    let raw = fixture_text(name);
    let body = if raw.starts_with("HTTP/") {
        raw.split_once("\r\n\r\n")
            .or_else(|| raw.split_once("\n\n"))
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    } else {
        raw
    };
    let mut values = serde_json::Deserializer::from_str(&body).into_iter::<Value>();
    match values.next() {
        Some(Ok(v)) => v,
        other => panic!("{name}: no JSON body: {other:?}"),
    }
}

#[track_caller]
fn parses<T: DeserializeOwned>(name: &str) -> T {
    serde_json::from_value(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn headers_of(name: &str) -> Vec<(String, String)> {
    fixture_text(name)
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect()
}

#[test]
fn login_parses_and_sets_the_cookie() {
    let login: LoginResponse = parses("login.txt");
    assert_eq!(login.name, "admin");
    assert_eq!(login.api_key.split('.').count(), 3);
    assert!(
        !format!("{login:?}").contains(&login.api_key),
        "Debug hides the token"
    );
    let cookie = headers_of("login.txt")
        .into_iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v)
        .expect("set-cookie");
    assert!(cookie.starts_with(&format!("kodosumi_jwt={}", login.api_key)));
}

#[test]
fn flow_pages_parse() {
    for name in ["flow.json", "flow_serve.json"] {
        let page: FlowPage = parses(name);
        assert_eq!(page.items.len(), 2, "{name}");
        assert_eq!(page.offset, None);
        let summaries: Vec<&str> = page.items.iter().map(|f| f.summary.as_str()).collect();
        assert_eq!(
            summaries,
            ["Confirm Flow", "Hello World"],
            "sorted by summary"
        );
        assert!(page.items.iter().all(|f| f.uid.len() == 32));
    }
    let page: FlowPage = parses("flow.json");
    assert_eq!(page.items[0].organization, None);
}

#[test]
fn the_form_parses_every_element() {
    let form: FlowForm = parses("schema_hello.txt");
    let kinds: Vec<&str> = form.elements.iter().map(FormElement::kind).collect();
    assert_eq!(
        kinds,
        [
            "markdown", "text", "number", "boolean", "select", "submit", "cancel"
        ]
    );
    assert!(
        form.elements
            .iter()
            .all(|e| !matches!(e, FormElement::Other(_)))
    );
    assert_eq!(form.openapi_extra["x-kodosumi"], true);
    // Serializing gives back exactly what Kodosumi sent.
    assert_eq!(
        serde_json::to_value(&form.elements).expect("ser"),
        fixture("schema_hello.txt")["elements"]
    );
}

#[test]
fn launch_answers_parse() {
    let ok: LaunchReply = parses("launch_ok.txt");
    assert_eq!(ok.result.as_deref(), Some("6b0422d36cc2496af2512fb4"));
    assert!(ok.errors.is_none());
    let invalid: LaunchReply = parses("launch_invalid.txt");
    assert!(invalid.result.is_none());
    let errors = invalid.errors.expect("errors");
    assert_eq!(errors["name"][0], "Please give a name.");
    assert_eq!(errors["_global_"], serde_json::json!([]));
}

#[test]
fn statuses_parse_with_final_as_text() {
    let ok: ExecutionStatus = parses("status_final_ok.txt");
    assert_eq!(ok.status, ExecState::Finished);
    let greeting: Value =
        serde_json::from_str(&result_text(ok.final_result.as_deref().expect("final")))
            .expect("dict result is JSON");
    assert_eq!(greeting["greeting"], "Hello Alice");

    let failed: ExecutionStatus = parses("status_6b0422e76cc2496af2512fb5.json");
    assert_eq!(failed.status, ExecState::Error);
    assert_eq!(
        result_text(failed.final_result.as_deref().expect("final")),
        "failed on purpose for Bob"
    );

    let dict: ExecutionStatus = parses("status_6b0422e86cc2496af2512fb6.json");
    assert_eq!(dict.status, ExecState::Finished);
    let md: ExecutionStatus = parses("status_6b0422e86cc2496af2512fb7.json");
    assert_eq!(
        result_text(md.final_result.as_deref().expect("final")),
        "# Hello Dave\nDone."
    );

    let awaiting: ExecutionStatus = parses("status_lock.json");
    assert_eq!(awaiting.status, ExecState::Awaiting);
    assert_eq!(awaiting.final_result, None);
    assert_eq!(awaiting.locks, ["4906a76c-1cf4-49d7-a709-ace847b970c0"]);
}

#[test]
fn lock_answers_parse() {
    let form: Vec<FormElement> = parses("lock_get.txt");
    let names: Vec<&str> = form.iter().filter_map(FormElement::name).collect();
    assert_eq!(names, ["comment", "ok"]);
    let released: LockReply = parses("lock_post.txt");
    assert_eq!(released.result.expect("result")["ok"], true);
}

#[test]
fn the_stream_agrees_with_the_status() {
    // SSE frames `id:`, `event:`, `data: <ts>:<payload>`; the `final` payload is the status's.
    let stream = fixture_text("stream_ok.txt");
    let mut event = "";
    let mut finals = Vec::new();
    for line in stream.lines() {
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.trim();
        } else if let Some(d) = line.strip_prefix("data: ")
            && event == "final"
        {
            finals.push(
                d.split_once(':')
                    .map(|(_, p)| p.to_owned())
                    .expect("ts:payload"),
            );
        }
    }
    let status: ExecutionStatus = parses("status_final_ok.txt");
    assert_eq!(finals, [status.final_result.expect("final")]);
}

#[cfg(feature = "sim")]
mod sim_shape {
    use super::fixture;
    use activities::kodosumi::sim::{self, KodosumiSimConfig};
    use serde_json::{Value, json};
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// Asserts that `ours` has `recorded`'s shape: the same keys in every object, arrays
    /// compared element by element, the same JSON type wherever neither is null.
    #[track_caller]
    fn same_shape(what: &str, recorded: &Value, ours: &Value) {
        fn walk(path: &str, a: &Value, b: &Value, problems: &mut Vec<String>) {
            match (a, b) {
                (Value::Object(x), Value::Object(y)) => {
                    let mut kx: Vec<&String> = x.keys().collect();
                    let mut ky: Vec<&String> = y.keys().collect();
                    kx.sort();
                    ky.sort();
                    if kx != ky {
                        problems.push(format!("{path}: keys {kx:?} != {ky:?}"));
                    }
                    for (k, v) in x {
                        if let Some(w) = y.get(k) {
                            walk(&format!("{path}.{k}"), v, w, problems);
                        }
                    }
                }
                (Value::Array(x), Value::Array(y)) => {
                    for (i, (v, w)) in x.iter().zip(y).enumerate() {
                        walk(&format!("{path}[{i}]"), v, w, problems);
                    }
                }
                (Value::Null, _) | (_, Value::Null) => {}
                (x, y) => {
                    let kind = |v: &Value| match v {
                        Value::Bool(_) => "bool",
                        Value::Number(_) => "number",
                        Value::String(_) => "string",
                        Value::Array(_) => "array",
                        Value::Object(_) => "object",
                        Value::Null => "null",
                    };
                    if kind(x) != kind(y) {
                        problems.push(format!("{path}: {} != {}", kind(x), kind(y)));
                    }
                }
            }
        }
        let mut problems = Vec::new();
        walk(what, recorded, ours, &mut problems);
        assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
    }

    struct Sim {
        base: String,
        http: reqwest::Client,
        token: String,
        shutdown: CancellationToken,
    }

    impl Drop for Sim {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    impl Sim {
        async fn start() -> Sim {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("addr"));
            let shutdown = CancellationToken::new();
            let config = KodosumiSimConfig {
                status_404_window: Duration::from_millis(100),
                short_wait: Duration::from_millis(100),
                ..KodosumiSimConfig::default()
            };
            tokio::spawn(sim::serve(listener, config, shutdown.clone()));
            let http = reqwest::Client::new();
            let login: Value = http
                .post(format!("{base}/api/login"))
                .json(&json!({"name": "admin", "password": "admin"}))
                .send()
                .await
                .expect("login")
                .json()
                .await
                .expect("json");
            let token = login["KODOSUMI_API_KEY"]
                .as_str()
                .expect("token")
                .to_owned();
            Sim {
                base,
                http,
                token,
                shutdown,
            }
        }

        async fn get(&self, path: &str) -> (u16, Value) {
            let r = self
                .http
                .get(format!("{}{path}", self.base))
                .header("KODOSUMI_API_KEY", &self.token)
                .send()
                .await
                .expect("send");
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        }

        async fn post(&self, path: &str, body: Value) -> (u16, Value) {
            let r = self
                .http
                .post(format!("{}{path}", self.base))
                .header("KODOSUMI_API_KEY", &self.token)
                .json(&body)
                .send()
                .await
                .expect("send");
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        }

        /// Polls the status until `done` holds.
        async fn status_until(&self, fid: &str, done: impl Fn(&Value) -> bool) -> Value {
            for _ in 0..200 {
                let (code, body) = self
                    .get(&format!("/outputs/status/{fid}?extended=true"))
                    .await;
                if code == 200 && done(&body) {
                    return body;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("{fid} never reached the expected status");
        }
    }

    #[tokio::test]
    async fn the_simulator_answers_like_kodosumi() {
        let sim = Sim::start().await;

        let login = sim
            .http
            .post(format!("{}/api/login", sim.base))
            .json(&json!({"name": "admin", "password": "admin"}))
            .send()
            .await
            .expect("login");
        let cookie = login
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(cookie.starts_with("kodosumi_jwt=") && cookie.ends_with("; Path=/; SameSite=lax"));
        same_shape(
            "login",
            &fixture("login.txt"),
            &login.json().await.expect("json"),
        );

        let (code, flows) = sim.get("/flow").await;
        assert_eq!(code, 200);
        same_shape("flow", &fixture("flow.json"), &flows);
        let recorded = fixture("flow.json");
        let uids = |v: &Value| -> Vec<Value> {
            v["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["uid"].clone())
                .collect()
        };
        assert_eq!(
            uids(&flows),
            uids(&recorded),
            "uid = md5(url), sorted by summary"
        );

        let (_, form) = sim.get("/-/127.0.0.1/8011/-/").await;
        same_shape("form", &fixture("schema_hello.txt"), &form);
        assert_eq!(form["elements"], fixture("schema_hello.txt")["elements"]);

        let (code, invalid) = sim.post("/-/127.0.0.1/8011/-/", json!({})).await;
        assert_eq!(code, 200);
        same_shape("launch_invalid", &fixture("launch_invalid.txt"), &invalid);
        assert_eq!(invalid["errors"], fixture("launch_invalid.txt")["errors"]);

        let (code, ok) = sim
            .post(
                "/-/127.0.0.1/8011/-/",
                json!({"name": "Alice", "seconds": "3"}),
            )
            .await;
        assert_eq!(code, 200);
        same_shape("launch_ok", &fixture("launch_ok.txt"), &ok);
        assert_eq!(
            ok["elements"],
            fixture("launch_ok.txt")["elements"],
            "an unsent select unmarks every option"
        );
        let fid = ok["result"].as_str().expect("fid").to_owned();
        assert_eq!(fid.len(), 24);
        let done = sim.status_until(&fid, |s| s["status"] == "finished").await;
        same_shape("status_finished", &fixture("status_final_ok.txt"), &done);
        assert!(done["final"].is_string(), "final is JSON text");

        let (_, failed) = sim
            .post("/-/127.0.0.1/8011/-/", json!({"name": "Bob", "fail": "on"}))
            .await;
        let fid = failed["result"].as_str().expect("fid").to_owned();
        let failed = sim.status_until(&fid, |s| s["status"] == "error").await;
        same_shape(
            "status_error",
            &fixture("status_6b0422e76cc2496af2512fb5.json"),
            &failed,
        );
        assert_eq!(
            failed["final"],
            fixture("status_6b0422e76cc2496af2512fb5.json")["final"]
        );

        let (_, confirm) = sim
            .post("/-/127.0.0.1/8011/-/confirm", json!({"topic": "cats"}))
            .await;
        let fid = confirm["result"].as_str().expect("fid").to_owned();
        let awaiting = sim.status_until(&fid, |s| s["status"] == "awaiting").await;
        same_shape("status_lock", &fixture("status_lock.json"), &awaiting);
        let lid = awaiting["locks"][0].as_str().expect("lock id").to_owned();
        let (_, lock_form) = sim.get(&format!("/lock/{fid}/{lid}")).await;
        same_shape("lock_get", &fixture("lock_get.txt"), &lock_form);
        assert_eq!(lock_form, fixture("lock_get.txt"));
        let (code, released) = sim
            .post(
                &format!("/lock/{fid}/{lid}"),
                json!({"comment": "looks good", "ok": "on"}),
            )
            .await;
        assert_eq!(code, 200);
        same_shape("lock_post", &fixture("lock_post.txt"), &released);
        assert_eq!(released, fixture("lock_post.txt"));
        let (code, again) = sim
            .post(&format!("/lock/{fid}/{lid}"), json!({"ok": "on"}))
            .await;
        assert_eq!(code, 404, "a second release: {again}");

        let (code, body) = sim.get("/outputs/status/ffffffffffffffffffffffff").await;
        assert_eq!(code, 404);
        assert_eq!(
            body["detail"],
            "Execution ffffffffffffffffffffffff not found after 0.1s."
        );
        same_shape(
            "not_found",
            &json!({"error": "NotFoundException", "path": "/outputs/status/x", "detail": "d", "status_code": 404}),
            &body,
        );
    }
}
