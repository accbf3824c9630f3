//! A `kodomasu server` and two `kodomasu worker` processes on one database: 300 `demo.chain`
//! workflows started over HTTP all complete while one worker is SIGKILLed mid-run. Prints how
//! long the killed worker's workflows took to move again, and checks the API's contract on
//! the same processes: idempotent start, 409 for a finished workflow, 4xx without writes.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const WORKFLOWS: usize = 300;
const LEASE_TTL: &str = "2s";

async fn row_count(db: &TestDb) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("select count(*) from kodomasu.workflows")
            .fetch_one(&db.pool)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_two_workers_survive_a_sigkill() -> anyhow::Result<()> {
    let db = TestDb::create("http").await?;
    let logs = log_dir("server_and_workers");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = spawn_server(
        &db.url,
        &format!("127.0.0.1:{port}"),
        logs.join("server.log"),
    )?;
    let mut first = spawn_worker(&db.url, logs.join("worker-1.log"), LEASE_TTL)?;
    let _second = spawn_worker(&db.url, logs.join("worker-2.log"), LEASE_TTL)?;
    let http = common::http_client(Duration::from_secs(30));
    for i in 0.. {
        if http
            .get(format!("{base}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        anyhow::ensure!(
            i < 100,
            "server did not become healthy; see {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut ids = Vec::new();
    for i in 0..WORKFLOWS {
        let body = json!({"type": "demo.chain", "key": format!("job-{i}"), "input": {"steps": 3, "sleep_ms": 150, "fail_prob": 0.05}});
        let resp = http
            .post(format!("{base}/api/v1/workflows"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 201, "start {i}: {}", resp.status());
        let v: Value = resp.json().await?;
        ids.push(v["id"].as_str().unwrap_or_default().to_owned());
    }
    eprintln!("http: started {WORKFLOWS} workflows over HTTP");

    // Kill the first worker once it is busy.
    let pid = first.id().unwrap_or_default();
    let worker_id = worker_id_of(&db.pool, pid).await?;
    for _ in 0..100 {
        if !leased_by(&db.pool, worker_id).await?.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigkill(&mut first).await?;
    let killed_at = db_now(&db.pool).await?;
    // Read after the kill: a dead worker's leases stay until they expire, and a workflow that
    // finished just before the kill is not an orphan.
    let orphans = leased_by(&db.pool, worker_id).await?;
    eprintln!(
        "http: SIGKILLed worker pid {pid} while it held {} workflows",
        orphans.len()
    );

    wait_all_terminal(&db.pool, Duration::from_secs(120)).await?;
    let counts = status_counts(&db.pool).await?;
    assert_eq!(counts, vec![("completed".to_owned(), WORKFLOWS as i64)]);
    assert_journals_sound(&db.pool).await?;
    let delays = next_event_delays(&db.pool, &orphans, killed_at).await?;
    let mut moved: Vec<f64> = delays.iter().flatten().copied().collect();
    moved.sort_by(f64::total_cmp);
    assert_eq!(
        moved.len(),
        orphans.len(),
        "every workflow of the killed worker moved again"
    );
    if let (Some(min), Some(max)) = (moved.first(), moved.last()) {
        eprintln!(
            "http: the killed worker's {} workflows moved again after {min:.2}s to {max:.2}s (lease TTL {LEASE_TTL})",
            moved.len()
        );
    }
    let status: Vec<Value> = {
        let v: Value = http
            .get(format!("{base}/api/v1/workflows/{}", ids[0]))
            .send()
            .await?
            .json()
            .await?;
        vec![v["status"].clone(), v["output"].clone()]
    };
    assert_eq!(status, vec![json!("completed"), json!({"steps": 3})]);

    // The contract on the same processes.
    let before = row_count(&db).await?;
    let again = http
        .post(format!("{base}/api/v1/workflows"))
        .json(&json!({"type": "demo.chain", "key": "job-0", "input": {"steps": 3}}))
        .send()
        .await?;
    assert_eq!(again.status(), 200, "a repeated start answers 200");
    let again: Value = again.json().await?;
    assert_eq!(
        again["id"],
        json!(ids[0]),
        "a repeated start returns the first id"
    );
    let finished = http
        .post(format!("{base}/api/v1/workflows/{}/signals", ids[0]))
        .json(&json!({"name": "cancel"}))
        .send()
        .await?;
    assert_eq!(finished.status(), 409);
    let malformed = http
        .post(format!("{base}/api/v1/workflows"))
        .header("content-type", "application/json")
        .body("{\"type\": ")
        .send()
        .await?;
    assert_eq!(malformed.status(), 400);
    let body: Value = malformed.json().await?;
    assert_eq!(body["code"], json!("malformed_json"));
    let unknown = http
        .post(format!("{base}/api/v1/workflows"))
        .json(&json!({"type": "no.such.type", "input": {}}))
        .send()
        .await?;
    assert_eq!(unknown.status(), 422);
    assert_eq!(
        row_count(&db).await?,
        before,
        "refused requests wrote nothing"
    );
    eprintln!(
        "http: repeated start → same id (200); signal to finished → 409; malformed JSON → 400; unknown type → 422; no rows written"
    );
    db.drop_database().await
}
