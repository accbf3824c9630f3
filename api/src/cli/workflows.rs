//! `kodomasu workflows list|show|history|signal`: the admin API as tables (or its JSON).

use super::client::{ApiClient, CliError};
use super::render::{
    Table, compact, event_summary, long_time, short_time, text, waiting_long, waiting_short,
};
use super::{HistoryArgs, ListArgs, WorkflowsArgs, WorkflowsCommand};
use chrono::Utc;
use serde_json::{Value, json};
use std::io::Write;

/// Runs one `kodomasu workflows …` command; output goes to stdout.
///
/// # Errors
/// When the server is unreachable or answers an error (its `{code, message}` is in the error).
pub async fn run(args: WorkflowsArgs) -> Result<(), CliError> {
    let client = ApiClient::new(&args.client.server, args.client.token.clone())?;
    let json = args.client.json;
    let out = match args.command {
        WorkflowsCommand::List(list) => list_cmd(&client, &list, json).await?,
        WorkflowsCommand::Show { id } => show_cmd(&client, &id, json).await?,
        WorkflowsCommand::History(h) => history_cmd(&client, &h, json).await?,
        WorkflowsCommand::Signal { id, name, payload } => {
            signal_cmd(&client, &id, &name, payload.as_deref(), json).await?
        }
    };
    write_stdout(&out)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(s: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(s.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// The list's query pairs.
fn list_query(a: &ListArgs) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("status", a.status.clone()),
        ("type", a.workflow_type.clone()),
        ("flow", a.flow.clone()),
        ("created_after", a.created_after.clone()),
        ("created_before", a.created_before.clone()),
        ("q", a.search.clone()),
        ("limit", a.limit.map(|l| l.to_string())),
        ("cursor", a.cursor.clone()),
    ]
}

async fn list_cmd(client: &ApiClient, a: &ListArgs, json: bool) -> Result<String, CliError> {
    let body = client.get(&["workflows"], &list_query(a)).await?;
    if json {
        return Ok(pretty(&body));
    }
    Ok(render_list(&body))
}

fn render_list(body: &Value) -> String {
    let mut table = Table::new(&[
        "ID",
        "TYPE",
        "KEY",
        "STATUS",
        "WAITING ON",
        "CREATED",
        "UPDATED",
    ]);
    let rows = body
        .get("workflows")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for w in rows {
        table.row(vec![
            text(w, "id"),
            text(w, "type"),
            super::client::shorten(&text(w, "key"), 32),
            text(w, "status"),
            waiting_short(w.get("waiting_on")),
            short_time(w.get("created_at")),
            short_time(w.get("updated_at")),
        ]);
    }
    let mut out = if table.is_empty() {
        "no workflows match\n".to_owned()
    } else {
        table.render()
    };
    if let Some(next) = body.get("next_cursor").and_then(Value::as_str) {
        out.push_str(&format!("\nmore: --cursor {next}\n"));
    }
    out
}

async fn show_cmd(client: &ApiClient, id: &str, json: bool) -> Result<String, CliError> {
    let w = client.get(&["workflows", id], &[]).await?;
    if json {
        return Ok(pretty(&w));
    }
    Ok(render_show(&w))
}

fn render_show(w: &Value) -> String {
    let now = Utc::now();
    let mut lines: Vec<(&str, String)> = vec![
        ("id", text(w, "id")),
        ("type", text(w, "type")),
        ("key", text(w, "key")),
        ("status", text(w, "status")),
        ("waiting on", waiting_long(w.get("waiting_on"), now)),
        ("version", text(w, "version")),
        ("created", long_time(w.get("created_at"), now)),
        ("updated", long_time(w.get("updated_at"), now)),
        ("finished", long_time(w.get("finished_at"), now)),
    ];
    if w.get("cancel_requested").and_then(Value::as_bool) == Some(true) {
        lines.push(("cancel", "requested".to_owned()));
    }
    if let Some(owner) = w.get("lease_owner").and_then(Value::as_str) {
        lines.push((
            "lease",
            format!(
                "worker {owner} until {}",
                long_time(w.get("lease_expires_at"), now)
            ),
        ));
    }
    if let Some(n) = w.get("pending_signals").and_then(Value::as_i64)
        && n > 0
    {
        lines.push(("signals", format!("{n} not yet applied")));
    }
    if let Some(h) = w.get("heartbeat_details").filter(|v| !v.is_null()) {
        lines.push(("heartbeat", compact(h)));
    }
    for key in ["input", "state", "output", "error"] {
        if let Some(v) = w.get(key).filter(|v| !v.is_null()) {
            lines.push((key, compact(v)));
        }
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

async fn history_cmd(client: &ApiClient, h: &HistoryArgs, json: bool) -> Result<String, CliError> {
    let body = client
        .get(
            &["workflows", &h.id, "history"],
            &[
                ("after", h.after.map(|a| a.to_string())),
                ("limit", h.limit.map(|l| l.to_string())),
            ],
        )
        .await?;
    if json {
        return Ok(pretty(&body));
    }
    Ok(render_history(&body, h.wide))
}

fn render_history(body: &Value, wide: bool) -> String {
    let mut table = Table::new(&["SEQ", "TIME", "KIND", "DETAILS"]);
    let events = body
        .get("events")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for e in events {
        let details = event_summary(e);
        table.row(vec![
            text(e, "seq"),
            short_time(e.get("created_at").or_else(|| e.get("at"))),
            text(e, "kind"),
            if wide {
                details
            } else {
                super::client::shorten(&details, 100)
            },
        ]);
    }
    if table.is_empty() {
        "no events\n".to_owned()
    } else {
        table.render()
    }
}

async fn signal_cmd(
    client: &ApiClient,
    id: &str,
    name: &str,
    payload: Option<&str>,
    json: bool,
) -> Result<String, CliError> {
    let mut body = json!({ "name": name });
    if let Some(raw) = payload {
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| CliError::Usage(format!("--payload is not valid JSON: {e}")))?;
        body["payload"] = value;
    }
    let answer = client.post(&["workflows", id, "signals"], &body).await?;
    if json {
        return Ok(pretty(&answer));
    }
    let seq = answer
        .get("seq")
        .map(|s| format!(" (signal #{s})"))
        .unwrap_or_default();
    Ok(format!(
        "signal `{name}` accepted for workflow {id}{seq}; it applies at the next transition\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_renders_rows_and_cursor() {
        let body = json!({
            "workflows": [{
                "id": "0193a0b0-0000-7000-8000-000000000001", "type": "demo.chain", "key": "k1",
                "status": "running", "waiting_on": {"kind": "timer", "due_at": "2026-01-01T00:00:05Z"},
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01.5Z"
            }],
            "next_cursor": "0193a0b0-0000-7000-8000-000000000001"
        });
        let out = render_list(&body);
        let mut lines = out.lines();
        let header = lines.next().unwrap_or_default();
        let row = lines.next().unwrap_or_default();
        assert!(header.starts_with("ID  "), "{out}");
        assert_eq!(header.find("TYPE"), row.find("demo.chain"), "{out}");
        assert_eq!(header.find("STATUS"), row.find("running"), "{out}");
        assert!(row.contains("timer 2026-01-01 00:00:05"), "{out}");
        assert!(out.contains("more: --cursor 0193a0b0"), "{out}");
        assert_eq!(
            render_list(&json!({"workflows": [], "next_cursor": null})),
            "no workflows match\n"
        );
    }

    #[test]
    fn show_lists_fields_with_waiting_on() {
        let w = json!({"id": "x", "type": "demo.chain", "status": "paused",
            "waiting_on": {"kind": "paused"}, "input": {"steps": 2}, "output": null});
        let out = render_show(&w);
        assert!(
            out.contains("waiting on  paused: waits for the `resume` signal"),
            "{out}"
        );
        assert!(out.contains(r#"input       {"steps":2}"#), "{out}");
        assert!(!out.contains("output"), "{out}");
    }
}
