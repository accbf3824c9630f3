//! Text rendering of admin API answers: aligned tables, times, "waiting on", journal events.
//! Everything reads `serde_json::Value` leniently: a field the server does not send shows `-`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// A table with a header row; columns are padded to their widest cell.
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, two spaces between columns, no trailing blanks.
    pub(crate) fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(cell);
                if i + 1 < columns {
                    let pad = width.saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The string at `key`, or `-`.
pub(crate) fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let s = v?.as_str()?;
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `2026-11-23 15:59:01` (UTC) for tables, or `-`.
pub(crate) fn short_time(v: Option<&Value>) -> String {
    match parse_time(v) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => v
            .and_then(Value::as_str)
            .map_or_else(|| "-".to_owned(), str::to_owned),
    }
}

/// `2026-11-23T15:59:01.123Z (12s ago)` for details, or `-`.
pub(crate) fn long_time(v: Option<&Value>, now: DateTime<Utc>) -> String {
    match parse_time(v) {
        Some(t) => format!(
            "{} ({})",
            t.to_rfc3339_opts(SecondsFormat::Millis, true),
            relative(t, now)
        ),
        None => short_time(v),
    }
}

/// `in 4s`, `3m ago`, `now`.
pub(crate) fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let span = |s: i64| {
        let s = s.unsigned_abs();
        match s {
            0..=119 => format!("{s}s"),
            120..=7199 => format!("{}m", s / 60),
            7200..=172_799 => format!("{}h", s / 3600),
            _ => format!("{}d", s / 86_400),
        }
    };
    match secs {
        0 => "now".to_owned(),
        s if s > 0 => format!("in {}", span(s)),
        s => format!("{} ago", span(s)),
    }
}

/// One line for the list's WAITING ON column.
pub(crate) fn waiting_short(w: Option<&Value>) -> String {
    let Some(w) = w else { return "-".to_owned() };
    match w.get("kind").and_then(Value::as_str) {
        Some("activity") => format!(
            "activity {} #{} (attempt {})",
            text(w, "name"),
            text(w, "call_seq"),
            text(w, "attempt")
        ),
        Some("backing_off") => format!(
            "backoff {} until {}",
            text(w, "name"),
            short_time(w.get("until"))
        ),
        Some("timer") => format!("timer {}", short_time(w.get("due_at"))),
        Some("signal") => "signal".to_owned(),
        Some("paused") => "paused".to_owned(),
        Some("nothing") | None => "-".to_owned(),
        Some(other) => other.to_owned(),
    }
}

/// A sentence saying what the workflow waits on.
pub(crate) fn waiting_long(w: Option<&Value>, now: DateTime<Utc>) -> String {
    let Some(w) = w else { return "-".to_owned() };
    match w.get("kind").and_then(Value::as_str) {
        Some("activity") => {
            let head = format!(
                "activity `{}` (call {}), attempt {}",
                text(w, "name"),
                text(w, "call_seq"),
                text(w, "attempt")
            );
            match w.get("worker").and_then(Value::as_str) {
                Some(worker) => format!(
                    "{head} on worker {worker} until {}",
                    long_time(w.get("lease_expires_at"), now)
                ),
                None => format!("{head}, not yet claimed by a worker"),
            }
        }
        Some("backing_off") => {
            let mut s = format!(
                "backing off: `{}` (call {}) attempt {} at {}",
                text(w, "name"),
                text(w, "call_seq"),
                text(w, "next_attempt"),
                long_time(w.get("until"), now)
            );
            if let Some(e) = w.get("last_error").filter(|e| !e.is_null()) {
                s.push_str(&format!(
                    "; last error {}: {}",
                    text(e, "code"),
                    text(e, "message")
                ));
            }
            s
        }
        Some("timer") => format!("timer due at {}", long_time(w.get("due_at"), now)),
        Some("signal") => "a signal".to_owned(),
        Some("paused") => "paused: waits for the `resume` signal".to_owned(),
        Some("nothing") => "nothing (finished)".to_owned(),
        _ => compact(w),
    }
}

/// One-line JSON.
pub(crate) fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The event's own fields: the event without `seq`, `kind` and `created_at`, or, when the
/// server nests them (`{seq, kind, payload, created_at}`), that `payload` object.
fn event_fields(event: &Value) -> Value {
    let Value::Object(map) = event else {
        return event.clone();
    };
    let rest: serde_json::Map<String, Value> = map
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "seq" | "kind" | "created_at" | "at"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match rest.get("payload") {
        Some(payload @ Value::Object(_)) if rest.len() == 1 => payload.clone(),
        _ => Value::Object(rest),
    }
}

/// A short description of one journal event.
pub(crate) fn event_summary(event: &Value) -> String {
    let f = event_fields(event);
    let call = |f: &Value| {
        format!(
            "{} #{} attempt {}",
            text(f, "name"),
            text(f, "call_seq"),
            text(f, "attempt")
        )
    };
    match event.get("kind").and_then(Value::as_str) {
        Some("started") => format!(
            "type {} key {} input {}",
            text(&f, "workflow_type"),
            text(&f, "key"),
            f.get("input").map(compact).unwrap_or_default()
        ),
        Some("transitioned") => {
            let cause = f.get("cause").map_or_else(String::new, |c| {
                match (
                    c.get("type").and_then(Value::as_str),
                    c.get("name").and_then(Value::as_str),
                ) {
                    (Some(t), Some(n)) => format!("{t} {n}"),
                    (Some(t), None) => t.to_owned(),
                    _ => compact(c),
                }
            });
            let next = f
                .get("pending")
                .and_then(|p| {
                    let kind = p.get("kind")?.as_str()?;
                    Some(match p.get("name").and_then(Value::as_str) {
                        Some(name) => format!("{kind} {name}"),
                        None => kind.to_owned(),
                    })
                })
                .unwrap_or_else(|| "-".to_owned());
            format!(
                "{} after {cause}; next: {next}; state {}",
                text(&f, "status"),
                f.get("state").map(compact).unwrap_or_default()
            )
        }
        Some("activity_completed") => format!(
            "{} → {}",
            call(&f),
            f.get("output").map(compact).unwrap_or_default()
        ),
        Some("activity_failed") => {
            let err = f.get("error").cloned().unwrap_or(Value::Null);
            let retry = match f.get("retry_at").filter(|v| !v.is_null()) {
                Some(at) => format!("; retry at {}", short_time(Some(at))),
                None => "; no retry".to_owned(),
            };
            format!(
                "{}: {}: {}{retry}",
                call(&f),
                text(&err, "code"),
                text(&err, "message")
            )
        }
        Some("activity_abandoned") => {
            format!(
                "{} (worker {} lost its lease)",
                call(&f),
                text(&f, "worker")
            )
        }
        Some("signal_applied") => match f.get("payload").filter(|p| !p.is_null()) {
            Some(p) => format!("{} {}", text(&f, "name"), compact(p)),
            None => text(&f, "name"),
        },
        Some("signal_discarded") => format!("{}: {}", text(&f, "name"), text(&f, "reason")),
        Some("completed") => f.get("output").map(compact).unwrap_or_default(),
        Some("failed") => {
            let err = f.get("error").cloned().unwrap_or(Value::Null);
            format!("{}: {}", text(&err, "code"), text(&err, "message"))
        }
        _ => match &f {
            Value::Object(m) if m.is_empty() => String::new(),
            Value::Null => String::new(),
            other => compact(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["ID", "STATUS", "NOTE"]);
        t.row(vec!["1".into(), "running".into(), "x".into()]);
        t.row(vec!["22".into(), "ok".into(), String::new()]);
        assert_eq!(t.render(), "ID  STATUS   NOTE\n1   running  x\n22  ok\n");
    }

    #[test]
    fn relative_times() {
        let now = Utc::now();
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(now + chrono::Duration::seconds(4), now), "in 4s");
        assert_eq!(relative(now - chrono::Duration::minutes(3), now), "3m ago");
    }

    #[test]
    fn waiting_on_reads_every_kind() {
        let now = Utc::now();
        let activity = json!({"kind":"activity","name":"demo.step","call_seq":2,"attempt":1,
            "worker":"w1","lease_expires_at":"2026-01-01T00:00:00Z"});
        assert_eq!(
            waiting_short(Some(&activity)),
            "activity demo.step #2 (attempt 1)"
        );
        assert!(waiting_long(Some(&activity), now).contains("on worker w1 until 2026-01-01"));
        let paused = json!({"kind":"paused"});
        assert_eq!(waiting_short(Some(&paused)), "paused");
        let timer = json!({"kind":"timer","due_at":"2026-01-01T00:00:05Z"});
        assert_eq!(waiting_short(Some(&timer)), "timer 2026-01-01 00:00:05");
        let backoff = json!({"kind":"backing_off","name":"s","call_seq":1,"next_attempt":2,
            "until":"2026-01-01T00:00:05Z","last_error":{"code":"boom","message":"it broke"}});
        assert!(waiting_long(Some(&backoff), now).contains("last error boom: it broke"));
    }

    #[test]
    fn events_are_summarized_flat_or_nested() {
        let flat =
            json!({"seq":3,"kind":"signal_applied","created_at":"x","name":"pause","payload":null});
        assert_eq!(event_summary(&flat), "pause");
        let failed = json!({"seq":4,"kind":"activity_failed","name":"demo.step","call_seq":1,
            "attempt":2,"error":{"code":"flaky","message":"m"},"retry_at":null});
        assert_eq!(
            event_summary(&failed),
            "demo.step #1 attempt 2: flaky: m; no retry"
        );
        let nested = json!({"seq":5,"kind":"completed","payload":{"output":{"steps":3}}});
        assert_eq!(event_summary(&nested), r#"{"steps":3}"#);
    }
}
