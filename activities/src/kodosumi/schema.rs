//! The MIP-003 view of a Kodosumi form: the `input_schema` a buyer sees, the validation of
//! the buyer's `input_data` against it, and the conversion of validated `input_data` into the
//! flat body Kodosumi's launch (or lock release) expects.
//!
//! Mapping (element → MIP-003 `type`): `text`, `password`, `textarea` → `string`; `number` →
//! `number` (`min_value`/`max_value` → `min`/`max` validations); `boolean` → `boolean`;
//! `select` → `option` (`values` = the option names, single choice); `date`, `time`,
//! `datetime-local` → the same names. Elements that are not inputs (markdown, html, submit,
//! …), `file` (needs Kodosumi's upload API, not supported) and unknown types are dropped.
//! An element that is not `required` gets an `optional` validation (checkboxes and selects
//! have no `required` flag, so they are always optional).
//!
//! Kodosumi's quirks applied on conversion: a checkbox is true only as `"on"` (false is left
//! out); an option given as an index array (`[0]`, as Sokosumi sends) becomes that option's
//! name; numbers pass as given; a missing optional text becomes `""`; ISO date-times are cut to
//! the form's `YYYY-MM-DD`, `HH:MM`, `YYYY-MM-DDTHH:MM`.
//!
//! ```
//! use activities::kodosumi::schema;
//! use activities::kodosumi::FormElement;
//! let elements: Vec<FormElement> = serde_json::from_value(serde_json::json!([
//!     {"type": "text", "name": "name", "label": "Name", "required": true},
//!     {"type": "boolean", "name": "fail", "label": "Fail", "value": false, "option": "fail"}
//! ])).unwrap();
//! let schema = schema::to_mip003(&elements);
//! let input = serde_json::json!({"name": "Alice", "fail": true});
//! schema::validate(&schema, &input).unwrap();
//! let body = schema::to_launch_inputs(&elements, &input);
//! assert_eq!(serde_json::Value::Object(body), serde_json::json!({"name": "Alice", "fail": "on"}));
//! ```

use super::types::{FormElement, as_number, lenient_f64};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fmt;

/// A MIP-003 `input_schema` with `input_data` (this crate never produces `input_groups`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mip003Schema {
    pub input_data: Vec<InputField>,
}

/// One MIP-003 input field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputField {
    /// The key in `input_data`.
    pub id: String,
    /// `string`, `number`, `boolean`, `option`, `date`, … (MIP-003 and its Attachment 01).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "FieldData::is_empty")]
    pub data: FieldData,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validations: Vec<Validation>,
}

impl InputField {
    /// Whether any validation says `optional` (its value does not matter, as in the reference
    /// Python implementation).
    pub fn is_optional(&self) -> bool {
        self.validations.iter().any(|v| v.validation == "optional")
    }
}

/// The `data` of a field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// The choices of an `option` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_f64"
    )]
    pub min: Option<f64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_f64"
    )]
    pub max: Option<f64>,
}

impl FieldData {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `{validation, value}`; both are strings in MIP-003 (numbers and booleans are read too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub validation: String,
    #[serde(deserialize_with = "scalar_string")]
    pub value: String,
}

impl Validation {
    fn new(validation: &str, value: impl ToString) -> Self {
        Self {
            validation: validation.to_owned(),
            value: value.to_string(),
        }
    }
}

/// Errors per field id (`input_data` for the object as a whole).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    /// The messages per field.
    pub fn fields(&self) -> &BTreeMap<String, Vec<String>> {
        &self.0
    }

    /// The messages of one field.
    pub fn get(&self, field: &str) -> Option<&[String]> {
        self.0.get(field).map(Vec::as_slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (field, messages)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{field}: {}", messages.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// The MIP-003 schema of a Kodosumi form.
pub fn to_mip003(elements: &[FormElement]) -> Mip003Schema {
    let input_data = elements.iter().filter_map(field_of).collect();
    Mip003Schema { input_data }
}

/// The MIP-003 schema (as JSON `{input_data: [...]}`) of a lock form given as raw elements,
/// as the `GetLockForm` activity returns them. Elements that do not parse are dropped.
pub fn lock_form_to_mip003(elements: &[Value]) -> Value {
    let parsed: Vec<FormElement> = elements
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    serde_json::to_value(to_mip003(&parsed)).unwrap_or_else(|_| json!({ "input_data": [] }))
}

fn field_of(element: &FormElement) -> Option<InputField> {
    let mut validations = Vec::new();
    let mut data = FieldData::default();
    let (id, kind, label, required) = match element {
        FormElement::Text(e) => {
            data.placeholder = e.placeholder.clone();
            data.default = non_empty(&e.value);
            (&e.name, "string", &e.label, e.required)
        }
        FormElement::Password(e) => {
            data.placeholder = e.placeholder.clone();
            push_bounds(
                &mut validations,
                as_number(&e.min_length),
                as_number(&e.max_length),
            );
            (&e.name, "string", &e.label, e.required)
        }
        FormElement::Textarea(e) => {
            data.placeholder = e.placeholder.clone();
            data.default = non_empty(&e.value);
            push_bounds(&mut validations, None, as_number(&e.max_length));
            (&e.name, "string", &e.label, e.required)
        }
        FormElement::Number(e) => {
            data.placeholder = e.placeholder.clone();
            data.default = non_empty(&e.value);
            data.min = as_number(&e.min_value);
            data.max = as_number(&e.max_value);
            push_bounds(&mut validations, data.min, data.max);
            if as_number(&e.step) == Some(1.0) {
                validations.push(Validation::new("format", "integer"));
            }
            (&e.name, "number", &e.label, e.required)
        }
        FormElement::Date(e) => {
            data.placeholder = e.placeholder.clone();
            data.default = non_empty(&e.value);
            push_str_bounds(&mut validations, &e.min_date, &e.max_date);
            (&e.name, "date", &e.label, e.required)
        }
        FormElement::Time(e) => {
            data.placeholder = e.placeholder.clone();
            data.default = non_empty(&e.value);
            push_str_bounds(&mut validations, &e.min_time, &e.max_time);
            (&e.name, "time", &e.label, e.required)
        }
        FormElement::DateTimeLocal(e) => {
            data.placeholder = e.placeholder.clone();
            data.default = non_empty(&e.value);
            push_str_bounds(&mut validations, &e.min_datetime, &e.max_datetime);
            (&e.name, "datetime-local", &e.label, e.required)
        }
        FormElement::Boolean(e) => {
            data.default = Some(Value::Bool(
                matches!(&e.value, Some(Value::Bool(true)))
                    || matches!(&e.value, Some(Value::String(s)) if s == "on"),
            ));
            let name = e.label.clone().or_else(|| e.option.clone());
            if e.label.is_some() {
                data.description = e.option.clone();
            }
            return Some(InputField {
                id: e.name.clone(),
                kind: "boolean".to_owned(),
                name: name.or_else(|| Some(e.name.clone())),
                data,
                validations: vec![Validation::new("optional", "true")],
            });
        }
        FormElement::Select(e) => {
            let values: Vec<String> = e.option.iter().map(|o| o.name.clone()).collect();
            data.default = match &e.value {
                Some(Value::String(s)) if !s.is_empty() => Some(Value::String(s.clone())),
                _ => e
                    .option
                    .iter()
                    .find(|o| o.value)
                    .map(|o| Value::String(o.name.clone())),
            };
            data.values = Some(values);
            validations.push(Validation::new("max", 1));
            (&e.name, "option", &e.label, false)
        }
        _ => return None,
    };
    if !required {
        validations.insert(0, Validation::new("optional", "true"));
    }
    Some(InputField {
        id: id.clone(),
        kind: kind.to_owned(),
        name: Some(label.clone().unwrap_or_else(|| id.clone())),
        data,
        validations,
    })
}

fn non_empty(value: &Option<Value>) -> Option<Value> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(v.clone()),
    }
}

fn push_bounds(out: &mut Vec<Validation>, min: Option<f64>, max: Option<f64>) {
    if let Some(min) = min {
        out.push(Validation::new("min", min));
    }
    if let Some(max) = max {
        out.push(Validation::new("max", max));
    }
}

fn push_str_bounds(out: &mut Vec<Validation>, min: &Option<String>, max: &Option<String>) {
    if let Some(min) = min.as_deref().filter(|s| !s.is_empty()) {
        out.push(Validation::new("min", min));
    }
    if let Some(max) = max.as_deref().filter(|s| !s.is_empty()) {
        out.push(Validation::new("max", max));
    }
}

const DATE_LIKE: &[&str] = &[
    "date",
    "time",
    "datetime-local",
    "datetime",
    "month",
    "week",
];
const TEXT_LIKE: &[&str] = &[
    "string", "text", "textarea", "password", "email", "url", "tel", "search", "color", "hidden",
    "file", "radio",
];

/// Checks `input_data` against a MIP-003 schema (MIP-003 §input_schema, as the reference
/// Python implementation reads it): an object; no unknown fields; every field present unless
/// it has an `optional` validation (`null` counts as absent); the value's type; `min`/`max`
/// (length for text, value for numbers, the string for dates, the number of choices for
/// options); `format` (`email`, `url`, `nonempty`, `integer`, `tel-pattern`; others pass).
/// Options may be given as a choice or as an array of choices or choice indices (`[0]`).
///
/// # Errors
/// Every problem found, per field.
pub fn validate(schema: &Mip003Schema, input_data: &Value) -> Result<(), FieldErrors> {
    let mut errors = FieldErrors::default();
    let Some(input) = input_data.as_object() else {
        errors.add("input_data", "must be a JSON object");
        return Err(errors);
    };
    for key in input.keys() {
        if !schema.input_data.iter().any(|f| &f.id == key) {
            errors.add(key, "is not a field of this schema");
        }
    }
    for field in &schema.input_data {
        if field.kind == "none" {
            continue;
        }
        match input.get(&field.id) {
            None | Some(Value::Null) => {
                if !field.is_optional() {
                    errors.add(&field.id, "is required");
                }
            }
            Some(value) => check_field(field, value, &mut errors),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_field(field: &InputField, value: &Value, errors: &mut FieldErrors) {
    let id = field.id.as_str();
    let kind = field.kind.as_str();
    if TEXT_LIKE.contains(&kind) || DATE_LIKE.contains(&kind) {
        let Some(s) = value.as_str() else {
            errors.add(id, "must be a string");
            return;
        };
        if kind == "email" && !is_email(s) {
            errors.add(id, "must be an email address");
        }
        if kind == "url" && !is_url(s) {
            errors.add(id, "must be an http(s) URL");
        }
    } else if kind == "number" || kind == "range" {
        if number_of(value).is_none() {
            errors.add(id, "must be a number");
            return;
        }
    } else if kind == "boolean" || kind == "checkbox" {
        if !value.is_boolean() {
            errors.add(id, "must be true or false");
            return;
        }
    } else if kind == "option" && !check_option(field, value, errors) {
        return;
    }
    for v in &field.validations {
        match v.validation.as_str() {
            "min" | "max" => check_bound(field, value, v, errors),
            "format" => check_format(id, value, &v.value, errors),
            _ => {}
        }
    }
}

/// Checks the choices; false when the value's shape is wrong.
fn check_option(field: &InputField, value: &Value, errors: &mut FieldErrors) -> bool {
    let id = field.id.as_str();
    let values = field.data.values.as_deref().unwrap_or(&[]);
    let known = |s: &str| values.is_empty() || values.iter().any(|v| v == s);
    let choices: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) => items.iter().collect(),
        _ => {
            errors.add(id, "must be a choice or an array of choices");
            return false;
        }
    };
    for choice in choices {
        match choice {
            Value::String(s) if known(s) => {}
            Value::String(s) => errors.add(id, format!("{s:?} is not one of {values:?}")),
            Value::Number(n) => match n.as_u64() {
                Some(i) if (i as usize) < values.len() => {}
                _ => errors.add(
                    id,
                    format!("{n} is not a choice index (0..{})", values.len()),
                ),
            },
            _ => errors.add(id, "choices must be strings or indices"),
        }
    }
    true
}

fn check_bound(field: &InputField, value: &Value, v: &Validation, errors: &mut FieldErrors) {
    let id = field.id.as_str();
    let is_min = v.validation == "min";
    let kind = field.kind.as_str();
    if DATE_LIKE.contains(&kind) {
        if let Some(s) = value.as_str() {
            let bound = v.value.as_str();
            if (is_min && s < bound) || (!is_min && s > bound) {
                let rel = if is_min {
                    "on or after"
                } else {
                    "on or before"
                };
                errors.add(id, format!("must be {rel} {bound}"));
            }
        }
        return;
    }
    let Ok(bound) = v.value.trim().parse::<f64>() else {
        return; // an unreadable bound does not refuse input
    };
    let (measured, what) = if kind == "option" || kind == "checkbox" || kind == "radio" {
        let n = match value {
            Value::Array(items) => items.len(),
            Value::Null => 0,
            _ => 1,
        };
        (n as f64, "choices")
    } else if kind == "number" || kind == "range" {
        match number_of(value) {
            Some(n) => (n, ""),
            None => return,
        }
    } else if let Some(s) = value.as_str() {
        (s.chars().count() as f64, "characters")
    } else {
        return;
    };
    let bad = if is_min {
        measured < bound
    } else {
        measured > bound
    };
    if bad {
        let rel = if is_min { "at least" } else { "at most" };
        let bound = fmt_num(bound);
        if what.is_empty() {
            errors.add(id, format!("must be {rel} {bound}"));
        } else {
            errors.add(id, format!("must have {rel} {bound} {what}"));
        }
    }
}

fn check_format(id: &str, value: &Value, format: &str, errors: &mut FieldErrors) {
    let s = value.as_str();
    let ok = match format {
        "email" => s.is_none_or(is_email),
        "url" => s.is_none_or(is_url),
        "nonempty" => s.is_none_or(|s| !s.trim().is_empty()),
        "integer" => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            Value::String(s) => s.trim().parse::<i64>().is_ok(),
            _ => true,
        },
        "tel-pattern" => s.is_none_or(|s| {
            s.chars().any(|c| c.is_ascii_digit())
                && s.chars()
                    .all(|c| c.is_ascii_digit() || " +-().".contains(c))
        }),
        _ => true,
    };
    if !ok {
        let what = match format {
            "email" => "must be an email address",
            "url" => "must be an http(s) URL",
            "nonempty" => "must not be empty",
            "integer" => "must be an integer",
            _ => "must be a phone number",
        };
        errors.add(id, what);
    }
}

fn number_of(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

fn is_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

fn is_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !s.chars().any(char::is_whitespace)
    })
}

fn fmt_num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// The launch body of validated `input_data` for this form: only the form's fields, with
/// Kodosumi's quirks applied (see the module docs).
pub fn to_launch_inputs(elements: &[FormElement], input_data: &Value) -> Map<String, Value> {
    mip003_to_lock_inputs(&to_mip003(elements), input_data)
}

/// The body of validated `input_data` for the form behind a MIP-003 schema (used for lock
/// releases, whose schema is what the buyer was shown); same rules as [`to_launch_inputs`].
pub fn mip003_to_lock_inputs(schema: &Mip003Schema, input_data: &Value) -> Map<String, Value> {
    let empty = Map::new();
    let input = input_data.as_object().unwrap_or(&empty);
    let mut out = Map::new();
    for field in &schema.input_data {
        let value = input.get(&field.id).filter(|v| !v.is_null());
        let converted = match (field.kind.as_str(), value) {
            ("none", _) => None,
            ("boolean" | "checkbox", Some(v)) => {
                let on = matches!(v, Value::Bool(true))
                    || matches!(v, Value::String(s) if s == "on" || s == "true");
                on.then(|| Value::String("on".to_owned()))
            }
            ("boolean" | "checkbox", None) => None,
            ("option", Some(v)) => option_name(field, v).map(Value::String),
            ("string" | "text" | "textarea" | "password", None) => {
                field.is_optional().then(|| Value::String(String::new()))
            }
            ("date", Some(Value::String(s))) => Some(Value::String(as_date(s))),
            ("time", Some(Value::String(s))) => Some(Value::String(as_time(s))),
            ("datetime-local" | "datetime", Some(Value::String(s))) => {
                Some(Value::String(as_datetime_local(s)))
            }
            (_, v) => v.cloned(),
        };
        if let Some(v) = converted {
            out.insert(field.id.clone(), v);
        }
    }
    out
}

/// The chosen option's name: the string itself, or the first choice of an array, where an
/// index picks from `values`.
fn option_name(field: &InputField, value: &Value) -> Option<String> {
    let values = field.data.values.as_deref().unwrap_or(&[]);
    let pick = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => n
            .as_u64()
            .and_then(|i| values.get(usize::try_from(i).ok()?).cloned()),
        _ => None,
    };
    match value {
        Value::Array(items) => items.first().and_then(pick),
        other => pick(other),
    }
}

fn as_date(s: &str) -> String {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return dt.date_naive().format("%Y-%m-%d").to_string();
    }
    match s.get(..10) {
        Some(head) if s.len() > 10 && NaiveDate::parse_from_str(head, "%Y-%m-%d").is_ok() => {
            head.to_owned()
        }
        _ => s.to_owned(),
    }
}

fn as_time(s: &str) -> String {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return dt.time().format("%H:%M").to_string();
    }
    match NaiveTime::parse_from_str(s, "%H:%M:%S%.f") {
        Ok(t) => t.format("%H:%M").to_string(),
        Err(_) => s.to_owned(),
    }
}

fn as_datetime_local(s: &str) -> String {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return dt.naive_local().format("%Y-%m-%dT%H:%M").to_string();
    }
    match NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f") {
        Ok(dt) => dt.format("%Y-%m-%dT%H:%M").to_string(),
        Err(_) => s.to_owned(),
    }
}

/// A validation value given as a string, number or boolean.
fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kodosumi::types::FlowForm;

    /// The recorded form of the "Hello World" flow (headers stripped).
    fn hello() -> Vec<FormElement> {
        let raw = include_str!("../../tests/fixtures/kodosumi/schema_hello.txt");
        let body = raw
            .split_once("\r\n\r\n")
            .or_else(|| raw.split_once("\n\n"))
            .map(|(_, b)| b)
            .unwrap_or(raw);
        let form: FlowForm = serde_json::from_str(body.trim()).expect("recorded form parses");
        form.elements
    }

    fn schema() -> Mip003Schema {
        to_mip003(&hello())
    }

    fn errors(input: Value) -> FieldErrors {
        validate(&schema(), &input).expect_err("must be refused")
    }

    #[test]
    fn the_recorded_form_maps_to_mip003() {
        let s = serde_json::to_value(schema()).expect("ser");
        assert_eq!(
            s,
            json!({"input_data": [
                {"id": "name", "type": "string", "name": "Name", "data": {"placeholder": "your name"}},
                {"id": "seconds", "type": "number", "name": "Seconds",
                 "data": {"default": "2", "min": 0.0, "max": 60.0},
                 "validations": [{"validation": "optional", "value": "true"},
                                 {"validation": "min", "value": "0"},
                                 {"validation": "max", "value": "60"}]},
                {"id": "fail", "type": "boolean", "name": "Fail",
                 "data": {"description": "fail on purpose", "default": false},
                 "validations": [{"validation": "optional", "value": "true"}]},
                {"id": "style", "type": "option", "name": "Style",
                 "data": {"default": "plain", "values": ["plain", "markdown"]},
                 "validations": [{"validation": "optional", "value": "true"},
                                 {"validation": "max", "value": "1"}]}
            ]})
        );
        // The schema survives a round trip through JSON (it is stored in job states).
        let back: Mip003Schema = serde_json::from_value(s).expect("de");
        assert_eq!(back, schema());
    }

    #[test]
    fn a_complete_input_passes() {
        let ok = json!({"name": "Alice", "seconds": 3, "fail": false, "style": [1]});
        assert_eq!(validate(&schema(), &ok), Ok(()));
        assert_eq!(validate(&schema(), &json!({"name": "Bob"})), Ok(()));
        assert_eq!(
            validate(
                &schema(),
                &json!({"name": "Bob", "seconds": "2.5", "style": "plain"})
            ),
            Ok(())
        );
    }

    #[test]
    fn every_field_is_required_unless_optional() {
        let e = errors(json!({}));
        assert_eq!(e.get("name"), Some(&["is required".to_owned()][..]));
        assert_eq!(e.fields().len(), 1, "{e}");
        assert!(errors(json!({"name": null})).get("name").is_some());
    }

    #[test]
    fn input_data_must_be_an_object_without_unknown_fields() {
        assert!(errors(json!([1])).get("input_data").is_some());
        assert!(errors(json!("x")).get("input_data").is_some());
        let e = errors(json!({"name": "A", "colour": "red"}));
        assert!(e.get("colour").is_some(), "{e}");
    }

    #[test]
    fn types_are_checked() {
        assert!(errors(json!({"name": 5})).get("name").is_some());
        assert!(
            errors(json!({"name": "A", "seconds": "many"}))
                .get("seconds")
                .is_some()
        );
        assert!(
            errors(json!({"name": "A", "seconds": true}))
                .get("seconds")
                .is_some()
        );
        assert!(
            errors(json!({"name": "A", "fail": "on"}))
                .get("fail")
                .is_some()
        );
        assert!(
            errors(json!({"name": "A", "style": 1}))
                .get("style")
                .is_some()
        );
    }

    #[test]
    fn min_and_max_bound_numbers_lengths_and_choices() {
        assert!(
            errors(json!({"name": "A", "seconds": 61}))
                .get("seconds")
                .is_some()
        );
        assert!(
            errors(json!({"name": "A", "seconds": -1}))
                .get("seconds")
                .is_some()
        );
        assert_eq!(
            validate(&schema(), &json!({"name": "A", "seconds": 60})),
            Ok(())
        );
        let e = errors(json!({"name": "A", "style": [0, 1]}));
        assert!(e.get("style").is_some(), "single choice: {e}");

        let s = Mip003Schema {
            input_data: vec![InputField {
                id: "t".into(),
                kind: "string".into(),
                name: None,
                data: FieldData::default(),
                validations: vec![Validation::new("min", 2), Validation::new("max", 3)],
            }],
        };
        assert!(validate(&s, &json!({"t": "a"})).is_err());
        assert!(validate(&s, &json!({"t": "abcd"})).is_err());
        assert_eq!(
            validate(&s, &json!({"t": "äö"})),
            Ok(()),
            "characters, not bytes"
        );
    }

    #[test]
    fn options_accept_names_and_index_arrays() {
        assert_eq!(
            validate(&schema(), &json!({"name": "A", "style": [0]})),
            Ok(())
        );
        assert_eq!(
            validate(&schema(), &json!({"name": "A", "style": ["markdown"]})),
            Ok(())
        );
        assert!(
            errors(json!({"name": "A", "style": [2]}))
                .get("style")
                .is_some()
        );
        assert!(
            errors(json!({"name": "A", "style": "fancy"}))
                .get("style")
                .is_some()
        );
        assert!(
            errors(json!({"name": "A", "style": [-1]}))
                .get("style")
                .is_some()
        );
    }

    #[test]
    fn formats_are_checked() {
        let field = |format: &str| Mip003Schema {
            input_data: vec![InputField {
                id: "f".into(),
                kind: "string".into(),
                name: None,
                data: FieldData::default(),
                validations: vec![Validation::new("format", format)],
            }],
        };
        let check = |format: &str, v: Value| validate(&field(format), &json!({ "f": v })).is_ok();
        assert!(check("email", json!("a@b.io")));
        assert!(!check("email", json!("a@b")));
        assert!(check("url", json!("https://x.io/p")));
        assert!(!check("url", json!("ftp://x.io")));
        assert!(!check("nonempty", json!("  ")));
        assert!(check("integer", json!("12")));
        assert!(!check("integer", json!("1.5")));
        assert!(check("tel-pattern", json!("+49 (30) 123-4")));
        assert!(!check("tel-pattern", json!("call me")));
        assert!(
            check("something-new", json!("anything")),
            "unknown formats pass"
        );
    }

    #[test]
    fn optional_counts_whatever_its_value() {
        let s = Mip003Schema {
            input_data: vec![InputField {
                id: "f".into(),
                kind: "string".into(),
                name: None,
                data: FieldData::default(),
                validations: vec![Validation::new("optional", "false")],
            }],
        };
        assert_eq!(validate(&s, &json!({})), Ok(()));
        let stored: Mip003Schema = serde_json::from_value(json!({"input_data": [
            {"id": "n", "type": "number", "validations": [{"validation": "max", "value": 5}]}
        ]}))
        .expect("numbers as validation values are read");
        assert!(validate(&stored, &json!({"n": 6})).is_err());
    }

    #[test]
    fn launch_inputs_apply_kodosumi_quirks() {
        let els = hello();
        let body = to_launch_inputs(
            &els,
            &json!({"name": "Alice", "seconds": 3, "fail": true, "style": [1]}),
        );
        assert_eq!(
            Value::Object(body),
            json!({"name": "Alice", "seconds": 3, "fail": "on", "style": "markdown"})
        );
        let body = to_launch_inputs(&els, &json!({"name": "Bob", "seconds": "2", "fail": false}));
        assert_eq!(
            Value::Object(body),
            json!({"name": "Bob", "seconds": "2"}),
            "false is left out, numbers pass as given, a missing select stays missing"
        );
        let body = to_launch_inputs(&els, &json!({"name": "C", "style": "plain", "extra": 1}));
        assert_eq!(Value::Object(body), json!({"name": "C", "style": "plain"}));
    }

    #[test]
    fn missing_optional_text_becomes_empty_and_dates_are_cut() {
        let els: Vec<FormElement> = serde_json::from_value(json!([
            {"type": "text", "name": "note", "required": false},
            {"type": "textarea", "name": "body", "required": true},
            {"type": "date", "name": "d"},
            {"type": "time", "name": "t"},
            {"type": "datetime-local", "name": "dt"},
            {"type": "file", "name": "upload"},
            {"type": "markdown", "text": "hi"},
            {"type": "slider", "name": "s"}
        ]))
        .expect("parses");
        let schema = to_mip003(&els);
        let kinds: Vec<&str> = schema.input_data.iter().map(|f| f.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["string", "string", "date", "time", "datetime-local"]
        );
        let body = to_launch_inputs(
            &els,
            &json!({"body": "x", "d": "2026-03-01T12:30:00Z", "t": "09:15:00", "dt": "2026-03-01T12:30:45+01:00"}),
        );
        assert_eq!(
            Value::Object(body),
            json!({"note": "", "body": "x", "d": "2026-03-01", "t": "09:15", "dt": "2026-03-01T12:30"})
        );
    }

    #[test]
    fn lock_forms_convert_too() {
        let raw = include_str!("../../tests/fixtures/kodosumi/lock_get.txt");
        let body = raw
            .split_once("\r\n\r\n")
            .or_else(|| raw.split_once("\n\n"))
            .map(|(_, b)| b)
            .unwrap_or(raw);
        let elements: Vec<Value> = serde_json::from_str(body.trim()).expect("array");
        let schema_value = lock_form_to_mip003(&elements);
        let schema: Mip003Schema = serde_json::from_value(schema_value).expect("schema");
        let ids: Vec<&str> = schema.input_data.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["comment", "ok"]);
        assert_eq!(validate(&schema, &json!({"ok": true})), Ok(()));
        let inputs = mip003_to_lock_inputs(&schema, &json!({"ok": true}));
        assert_eq!(Value::Object(inputs), json!({"comment": "", "ok": "on"}));
    }

    #[test]
    fn errors_display_per_field() {
        let e = errors(json!({"seconds": 99}));
        assert_eq!(
            e.to_string(),
            "name: is required; seconds: must be at most 60"
        );
    }
}
