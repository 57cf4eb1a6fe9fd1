//! The coverage ledger against the real processes (iqair-sim, data-streams, a worker): a stream
//! every second, its worker killed with SIGKILL for a measured span and started again. The
//! ledger's gap is that span, within one slot at each edge, and nothing else is missing but at
//! most the slot the stream's first tick may start after (the worker's start spread).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    folder_store_url, iqair_stream, nearest_city, start_worker, unlimited, worker_env, Stack,
    IQAIR_KEY,
};

const SLOT_MS: i64 = 1_000;
/// What the edges may be off by beyond one slot: a process starting, a link being set up, a
/// start call crossing it, on a loaded machine.
const SLACK_MS: i64 = 750;

fn ms(value: &Value) -> i64 {
    common::parse_rfc3339_ms(value.as_str().expect("a time")).expect("RFC 3339")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_for_a_measured_span_leaves_exactly_that_gap() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let logs = dir.path();
    let mut stack = Stack::start(logs, "coverage-worker");
    let api = stack.supervisor.api.clone();
    let body = unlimited(iqair_stream(&nearest_city(&stack.sim), IQAIR_KEY, 1_000));
    let created = api.create_stream(&body).await;
    let id = created["id"].as_str().expect("an id").to_owned();
    let before = api.results_at_least(&id, 4, Duration::from_secs(30)).await;

    let killed_at = common::now_ms();
    stack.worker.kill();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let env = worker_env(&stack.supervisor.workers, &folder_store_url(logs));
    stack.worker = start_worker(logs, "coverage-worker", &env);
    // Connected again: from here its streams are handed back and their ticks resume.
    let back_at = common::now_ms();
    api.results_at_least(&id, before + 4, Duration::from_secs(30))
        .await;
    // Stopped and settled (the reconciler indexed what the killed worker stored but never
    // reported), then past the open end: nothing in the window changes any more.
    api.stop_and_settle(&id, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let from = &created["created_at"];
    let (status, ledger) = api
        .get(&format!(
            "/streams/{id}/coverage?from={}",
            from.as_str().expect("a time")
        ))
        .await;
    assert_eq!(status, 200, "{ledger}");
    let gaps = ledger["gaps"].as_array().expect("gaps");
    let down: Vec<&Value> = gaps
        .iter()
        .filter(|g| ms(&g["start"]) < back_at && ms(&g["end"]) > killed_at)
        .collect();
    assert_eq!(down.len(), 1, "one gap over the down span: {ledger}");
    let gap = down[0];
    let (start, end) = (ms(&gap["start"]), ms(&gap["end"]));
    let edge = SLOT_MS + SLACK_MS;
    assert!(
        (start - killed_at).abs() <= edge,
        "the gap starts {} ms from the kill: {ledger}",
        start - killed_at
    );
    assert!(
        (end - back_at).abs() <= edge,
        "the gap ends {} ms from the reconnect: {ledger}",
        end - back_at
    );
    let measured = (back_at - killed_at) as f64 / SLOT_MS as f64;
    let slots = gap["slots"].as_u64().expect("a count") as f64;
    assert!(
        (slots - measured).abs() <= 2.0,
        "{slots} missing slots for a {measured:.1}-slot outage: {ledger}"
    );
    let counts = &ledger["counts"];
    let missing = counts["missing"].as_u64().expect("a count") as f64;
    assert!(
        missing - slots <= 1.0,
        "nothing else missing but the first slot: {ledger}"
    );
    assert!(counts["stored"].as_u64().expect("a count") >= (before + 4) as u64);
}
