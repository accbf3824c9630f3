//! Wire types of the Kodosumi 1.1.0 panel API, shared by the client and the simulator.
//!
//! They follow what the server really sends (recorded in `tests/fixtures/kodosumi/`), not
//! what would be tidy: `final` is a JSON-encoded *string*, a launch refused by the flow is a
//! 200 with `errors`, the lock form is a bare array. Every field another Kodosumi version may
//! leave out or null is optional or defaulted, so parsing is lenient where the server is.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// `POST /api/login` (and `POST /login`): the role and its JWT.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginResponse {
    pub name: String,
    /// The role's UUID; executions are stored (and private) per role.
    pub id: String,
    /// The HS256 JWT `{exp, iat, sub}`, also set as cookie `kodosumi_jwt`.
    #[serde(rename = "KODOSUMI_API_KEY")]
    pub api_key: String,
}

impl fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("api_key", &"***")
            .finish()
    }
}

/// The error body of the panel: `{error, path, detail, status_code}` (plus `stacktrace` on 5xx).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub path: String,
    pub detail: String,
    pub status_code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<String>,
}

/// A flow as `GET /flow` lists it (Kodosumi's `EndpointResponse`). `uid = md5(url)`, so it
/// changes when the flow app's host, port or route prefix changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub uid: String,
    pub method: String,
    /// Path on the panel, `/-/<host>/<port><prefix>/-/<endpoint>`.
    pub url: String,
    /// The flow app's OpenAPI document.
    pub source: String,
    #[serde(deserialize_with = "null_as_default")]
    pub summary: String,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub deprecated: bool,
    pub author: Option<String>,
    pub organization: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    pub base_url: String,
}

/// `GET /flow?q=&pp=&offset=`: one page; `offset` is the uid to continue after, `null` at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowPage {
    pub items: Vec<Flow>,
    pub offset: Option<String>,
}

/// `GET {flow.url}`: the flow's input form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowForm {
    pub summary: Option<String>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// `{"x-kodosumi": true, "x-author": …, "x-organization": …, "x-version": …}`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub openapi_extra: Map<String, Value>,
    pub elements: Vec<FormElement>,
}

/// One element of a Kodosumi form (`service/inputs/forms.py`). Unknown element types parse as
/// [`FormElement::Other`] with their JSON kept, so a newer Kodosumi does not break parsing; a
/// known type with a malformed body is an error. Serializes exactly as Kodosumi's `to_dict`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum FormElement {
    #[serde(rename = "html")]
    Html(TextElement),
    #[serde(rename = "break")]
    Break(TextElement),
    #[serde(rename = "hr")]
    Hr(TextElement),
    #[serde(rename = "markdown")]
    Markdown(TextElement),
    /// Placeholder of the form's global errors.
    #[serde(rename = "errors")]
    Errors {},
    #[serde(rename = "text")]
    Text(TextInput),
    #[serde(rename = "password")]
    Password(PasswordInput),
    #[serde(rename = "number")]
    Number(NumberInput),
    #[serde(rename = "date")]
    Date(DateInput),
    #[serde(rename = "time")]
    Time(TimeInput),
    #[serde(rename = "datetime-local")]
    DateTimeLocal(DateTimeInput),
    #[serde(rename = "textarea")]
    Textarea(TextareaInput),
    /// A checkbox: only the value `"on"` is true on launch.
    #[serde(rename = "boolean")]
    Boolean(BooleanInput),
    #[serde(rename = "select")]
    Select(SelectInput),
    #[serde(rename = "file")]
    File(FileInput),
    #[serde(rename = "submit")]
    Submit(TextElement),
    #[serde(rename = "cancel")]
    Cancel(TextElement),
    #[serde(rename = "action")]
    Action(ActionElement),
    /// An element type this build does not know, kept as sent.
    #[serde(untagged)]
    Other(Value),
}

impl FormElement {
    /// The element's `type` tag.
    pub fn kind(&self) -> &str {
        match self {
            Self::Html(_) => "html",
            Self::Break(_) => "break",
            Self::Hr(_) => "hr",
            Self::Markdown(_) => "markdown",
            Self::Errors {} => "errors",
            Self::Text(_) => "text",
            Self::Password(_) => "password",
            Self::Number(_) => "number",
            Self::Date(_) => "date",
            Self::Time(_) => "time",
            Self::DateTimeLocal(_) => "datetime-local",
            Self::Textarea(_) => "textarea",
            Self::Boolean(_) => "boolean",
            Self::Select(_) => "select",
            Self::File(_) => "file",
            Self::Submit(_) => "submit",
            Self::Cancel(_) => "cancel",
            Self::Action(_) => "action",
            Self::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }

    /// The name under which the element's value is posted, for input elements.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Text(e) => Some(&e.name),
            Self::Password(e) => Some(&e.name),
            Self::Number(e) => Some(&e.name),
            Self::Date(e) => Some(&e.name),
            Self::Time(e) => Some(&e.name),
            Self::DateTimeLocal(e) => Some(&e.name),
            Self::Textarea(e) => Some(&e.name),
            Self::Boolean(e) => Some(&e.name),
            Self::Select(e) => Some(&e.name),
            Self::File(e) => Some(&e.name),
            Self::Action(e) => e.name.as_deref(),
            Self::Other(v) => v.get("name").and_then(Value::as_str),
            _ => None,
        }
    }

    /// The element's `required` flag (checkboxes and selects have none: false).
    pub fn required(&self) -> bool {
        match self {
            Self::Text(e) => e.required,
            Self::Password(e) => e.required,
            Self::Number(e) => e.required,
            Self::Date(e) => e.required,
            Self::Time(e) => e.required,
            Self::DateTimeLocal(e) => e.required,
            Self::Textarea(e) => e.required,
            Self::File(e) => e.required,
            Self::Other(v) => v.get("required").and_then(Value::as_bool).unwrap_or(false),
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for FormElement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fn body<T: serde::de::DeserializeOwned, E: de::Error>(v: Value) -> Result<T, E> {
            serde_json::from_value(v).map_err(E::custom)
        }
        let v = Value::deserialize(deserializer)?;
        let kind = match v.get("type") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(de::Error::custom("form element without a string `type`")),
        };
        Ok(match kind.as_str() {
            "html" => Self::Html(body(v)?),
            "break" => Self::Break(body(v)?),
            "hr" => Self::Hr(body(v)?),
            "markdown" => Self::Markdown(body(v)?),
            "errors" => Self::Errors {},
            "text" => Self::Text(body(v)?),
            "password" => Self::Password(body(v)?),
            "number" => Self::Number(body(v)?),
            "date" => Self::Date(body(v)?),
            "time" => Self::Time(body(v)?),
            "datetime-local" => Self::DateTimeLocal(body(v)?),
            "textarea" => Self::Textarea(body(v)?),
            "boolean" => Self::Boolean(body(v)?),
            "select" => Self::Select(body(v)?),
            "file" => Self::File(body(v)?),
            "submit" => Self::Submit(body(v)?),
            "cancel" => Self::Cancel(body(v)?),
            "action" => Self::Action(body(v)?),
            _ => Self::Other(v),
        })
    }
}

/// `html`, `break`, `hr`, `markdown`, `submit`, `cancel`: `{text}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextElement {
    #[serde(default)]
    pub text: Option<String>,
}

/// `action`: a button with a name and value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionElement {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub text: Option<String>,
}

/// `text`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub required: bool,
    #[serde(default)]
    pub placeholder: Option<String>,
    #[serde(default)]
    pub size: Option<Value>,
    #[serde(default)]
    pub pattern: Option<String>,
}

/// `password`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PasswordInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub required: bool,
    #[serde(default)]
    pub placeholder: Option<String>,
    #[serde(default)]
    pub size: Option<Value>,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub min_length: Option<Value>,
    #[serde(default)]
    pub max_length: Option<Value>,
}

/// `number`. Kodosumi passes the value on as sent (a string stays a string).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NumberInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub required: bool,
    #[serde(default)]
    pub placeholder: Option<String>,
    #[serde(default)]
    pub size: Option<Value>,
    #[serde(default)]
    pub pattern: Option<String>,
    /// Numbers are kept as sent (`0` stays an integer); see [`as_number`].
    #[serde(default)]
    pub min_value: Option<Value>,
    #[serde(default)]
    pub max_value: Option<Value>,
    #[serde(default)]
    pub step: Option<Value>,
}

/// `date` (`YYYY-MM-DD`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DateInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub required: bool,
    #[serde(default)]
    pub placeholder: Option<String>,
    #[serde(default)]
    pub min_date: Option<String>,
    #[serde(default)]
    pub max_date: Option<String>,
}

/// `time` (`HH:MM`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub required: bool,
    #[serde(default)]
    pub placeholder: Option<String>,
    #[serde(default)]
    pub min_time: Option<String>,
    #[serde(default)]
    pub max_time: Option<String>,
    #[serde(default)]
    pub step: Option<Value>,
}

/// `datetime-local` (`YYYY-MM-DDTHH:MM`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DateTimeInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub required: bool,
    #[serde(default)]
    pub placeholder: Option<String>,
    #[serde(default)]
    pub min_datetime: Option<String>,
    #[serde(default)]
    pub max_datetime: Option<String>,
    #[serde(default)]
    pub step: Option<Value>,
}

/// `textarea`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextareaInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub required: bool,
    #[serde(default)]
    pub placeholder: Option<String>,
    #[serde(default)]
    pub rows: Option<Value>,
    #[serde(default)]
    pub cols: Option<Value>,
    #[serde(default)]
    pub max_length: Option<Value>,
}

/// `boolean` (a checkbox). `option` is the text beside the box.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BooleanInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub option: Option<String>,
}

/// `select`: a single choice among `option`s; the posted value is an option's `name`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SelectInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub option: Vec<SelectOption>,
    #[serde(default)]
    pub error: Option<Value>,
}

/// One choice of a `select`: `name` is the value, `label` the text, `value` whether selected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectOption {
    #[serde(rename = "type", default = "option_type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub value: bool,
}

impl SelectOption {
    /// An option `name` shown as `label`.
    pub fn new(name: impl Into<String>, label: impl Into<String>, selected: bool) -> Self {
        Self {
            kind: option_type(),
            name: name.into(),
            label: Some(label.into()),
            value: selected,
        }
    }
}

fn option_type() -> String {
    "option".to_owned()
}

/// `file`: uploaded through `/files/*` before the launch (not supported by this client).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileInput {
    pub name: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub required: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub multiple: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub directory: bool,
}

/// `POST {flow.url}` answers 200 either way: `{result: fid, elements}` when launched, or
/// `{errors: {field: [msg], _global_: [...]}, elements}` when the flow refused the inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Map<String, Value>>,
    #[serde(default)]
    pub elements: Vec<FormElement>,
}

/// `GET /outputs/status/{fid}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionStatus {
    /// `awaiting` whenever a lock is open and the run is not final.
    pub status: ExecState,
    /// Latest timestamp of the status/final/meta events (Unix seconds).
    pub timestamp: Option<f64>,
    /// The final result as a **JSON-encoded string** (`{"Markdown":{"body":…}}`, …); null
    /// while running, and on errors that were not a `KodosumiError`.
    #[serde(rename = "final", default, deserialize_with = "json_text")]
    pub final_result: Option<String>,
    pub fid: Option<String>,
    pub summary: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub deprecated: Option<bool>,
    pub author: Option<String>,
    pub organization: Option<String>,
    pub version: Option<String>,
    /// Always null in 1.1.0.
    pub kodosumi_version: Option<String>,
    pub app_url: Option<String>,
    pub entry_point: Option<String>,
    /// The role UUID the execution belongs to.
    pub username: Option<String>,
    /// Open lock ids.
    #[serde(default, deserialize_with = "null_as_default")]
    pub locks: Vec<String>,
}

/// The state of an execution. Persisted in journals: add variants, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecState {
    /// Launched; the flow has not started yet (also: the status is still 404).
    Starting,
    Running,
    /// Running and waiting for input: a lock is open.
    Awaiting,
    /// Final: the run finished; `final` holds the result.
    Finished,
    /// Final: the run failed; `final` holds the message only for a `KodosumiError`.
    Error,
}

impl ExecState {
    /// Whether the run is over (`finished` or `error`).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Error)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Awaiting => "awaiting",
            Self::Finished => "finished",
            Self::Error => "error",
        }
    }
}

/// `POST /lock/{fid}/{lid}`: `{result, elements}` when released, `{errors, elements}` when the
/// flow's lease handler refused the input (both 200).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Map<String, Value>>,
    #[serde(default)]
    pub elements: Vec<FormElement>,
}

/// `GET /timeline/list?pp=&q=&offset=`: the user's executions, newest first (by fid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelinePage {
    pub items: Vec<TimelineItem>,
    #[serde(default)]
    pub query: Option<String>,
    /// The fid to continue after; null when the page is empty.
    pub offset: Option<String>,
}

/// One execution in the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineItem {
    pub fid: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub summary: Option<String>,
    /// The inputs the flow recorded, typed: `{"dict": {...}}`.
    #[serde(default)]
    pub inputs: Option<Value>,
    /// The last status event (never `awaiting`: that one is computed by the status endpoint).
    #[serde(default)]
    pub status: Option<String>,
    /// Server-local naive ISO time of the first event.
    #[serde(default)]
    pub startup: Option<String>,
    #[serde(default)]
    pub finish: Option<String>,
    #[serde(default)]
    pub runtime: Option<f64>,
    /// Open locks (only listed while running).
    #[serde(default, deserialize_with = "null_as_default")]
    pub locks: Vec<String>,
}

/// `GET /health` (authenticated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub kodosumi_version: Option<String>,
    pub python_version: Option<String>,
    pub ray_version: Option<String>,
    #[serde(default)]
    pub ray_status: Value,
    #[serde(default)]
    pub spooler_status: Value,
}

/// The Unix time (seconds) a fid was created: a fid is a BSON ObjectId whose first 4 bytes
/// are the creation time. `None` when `fid` is not 24 hex digits.
pub fn fid_timestamp(fid: &str) -> Option<i64> {
    if fid.len() != 24 || !fid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(fid.get(..8)?, 16).ok()
}

/// A number given as a JSON number or a numeric string (flow authors write either).
pub fn as_number(value: &Option<Value>) -> Option<f64> {
    match value {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

/// `null` as the type's default.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A number given as a number or as a numeric string.
pub(crate) fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

/// A JSON text given as a string (as Kodosumi does) or, leniently, as embedded JSON.
fn json_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_element_types_are_kept_and_known_ones_are_strict() {
        let els: Vec<FormElement> = serde_json::from_value(json!([
            {"type": "slider", "name": "x", "max": 3},
            {"type": "errors"},
            {"type": "text", "name": "a", "required": null}
        ]))
        .expect("parses");
        assert_eq!(els[0].kind(), "slider");
        assert_eq!(els[0].name(), Some("x"));
        assert_eq!(
            serde_json::to_value(&els[0]).expect("ser"),
            json!({"type": "slider", "name": "x", "max": 3})
        );
        assert_eq!(
            serde_json::to_value(&els[1]).expect("ser"),
            json!({"type": "errors"})
        );
        assert!(!els[2].required());
        let bad: Result<FormElement, _> = serde_json::from_value(json!({"type": "text"}));
        assert!(bad.is_err(), "a text element needs a name");
    }

    #[test]
    fn fid_timestamp_reads_the_object_id_time() {
        assert_eq!(fid_timestamp("6b0422d36cc2496af2512fb4"), Some(0x6b04_22d3));
        assert_eq!(fid_timestamp("nope"), None);
        assert_eq!(fid_timestamp("zz0422d36cc2496af2512fb4"), None);
    }

    #[test]
    fn final_is_kept_as_json_text() {
        let s: ExecutionStatus = serde_json::from_value(json!({
            "status": "finished", "timestamp": 1.0, "final": "{\"str\":\"x\"}", "fid": "f",
            "summary": null, "description": null, "author": null, "organization": null,
            "version": null, "kodosumi_version": null, "app_url": null, "entry_point": null,
            "username": null, "locks": []
        }))
        .expect("parses");
        assert_eq!(s.final_result.as_deref(), Some("{\"str\":\"x\"}"));
    }
}
