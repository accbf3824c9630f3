//! Smoke test of `kodomasu bench`: a tiny run of every workload completes and prints every
//! field. It asserts nothing about speed: figures come from the benchmark, never from tests.
//!
//! Needs a PostgreSQL server where the user may create databases: `DATABASE_URL`, or
//! `postgres://postgres@127.0.0.1:5432/postgres` (what `scripts/test.sh` provides).

use serde_json::Value;
use std::process::Command;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn kodomasu(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kodomasu"))
        .args(args)
        .env("DATABASE_URL", database_url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("kodomasu runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "kodomasu {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn number(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} is missing or not a number in {v:#}"))
}

#[test]
fn bench_runs_every_workload_and_prints_every_figure() {
    let (stdout, stderr) = kodomasu(&[
        "bench",
        "--workflows",
        "20",
        "--probe-time",
        "200ms",
        "--json",
    ]);
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("--json prints one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    for field in [
        "/machine/postgres",
        "/machine/fsync",
        "/machine/synchronous_commit",
    ] {
        assert!(
            doc.pointer(field).is_some_and(Value::is_string),
            "{field} in {doc:#}"
        );
    }
    let workloads = doc["workloads"].as_array().expect("workloads");
    let names: Vec<&str> = workloads
        .iter()
        .filter_map(|w| w["workload"].as_str())
        .collect();
    assert_eq!(names, ["chain", "latency", "paid"]);
    for w in workloads {
        assert_eq!(number(w, "/workflows"), 20.0);
        assert_eq!(
            w.pointer("/statuses/completed").and_then(Value::as_u64),
            Some(20),
            "every workflow completed: {w:#}"
        );
        for path in [
            "/workflows_per_s",
            "/transitions_per_s",
            "/activity_attempts_per_s",
            "/latency_ms/p50",
            "/latency_ms/p95",
            "/latency_ms/p99",
            "/commits_per_workflow",
            "/commit_ceiling_per_s",
            "/single_commit_latency_ms/p50",
            "/ratios/transitions_over_ceiling",
        ] {
            assert!(number(w, path) > 0.0, "{path} > 0 in {w:#}");
        }
    }
    let chain = &workloads[0];
    number(chain, "/ratios/commits_over_steps_plus_2");
    let latency = &workloads[1];
    number(latency, "/ratios/p50_over_commit_path");
    number(latency, "/ratios/p99_over_commit_path");
    assert!(
        stderr.contains("[bench chain]"),
        "a progress line: {stderr}"
    );
}

#[test]
fn bench_prints_a_text_report() {
    let (stdout, _) = kodomasu(&[
        "bench",
        "--workload",
        "latency",
        "--workflows",
        "5",
        "--probe-time",
        "100ms",
    ]);
    for field in [
        "fsync=",
        "synchronous_commit=",
        "workflows/s",
        "transitions/s",
        "activity attempts/s",
        "start→complete latency",
        "commits per workflow",
        "commit ceiling",
        "single-connection commit",
        "p50 ÷ ((steps + 1) × commit latency)",
        "issue 6 targets",
    ] {
        assert!(stdout.contains(field), "`{field}` in:\n{stdout}");
    }
}
