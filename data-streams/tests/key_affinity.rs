//! Streams that share an API key land on one worker, so that worker's per-key budget covers the
//! whole key; and the stream API round-trips a stream's `rate_limit` and refuses bad ones.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use support::{eventually, spawn_app, Sim, TestApp, IQAIR_KEY};

/// A stream on `key` at a port nothing listens on: its runs fail as `network` (the simulator
/// would refuse an unknown key and fail the stream), but it stays running where it was placed.
fn stream_on(app: &TestApp, key: &str) -> Value {
    let mut body = app.stream_json(600_000);
    body["endpoint"] = json!("http://127.0.0.1:9/v2/nearest_city");
    body["timeout"] = json!(1_000);
    body["secret_key"] = json!(key);
    body
}

#[tokio::test]
async fn streams_sharing_a_key_end_on_one_worker() {
    let app = spawn_app().await;
    let _w1 = app.spawn_worker("affinity-1", 10).await;
    let _w2 = app.spawn_worker("affinity-2", 10).await;
    app.wait_worker_connected("affinity-1", true).await;
    app.wait_worker_connected("affinity-2", true).await;

    let mut ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // Interleaved, so plain least-loaded placement would split both keys across the workers.
    for _ in 0..4 {
        for key in ["key-a", "key-b"] {
            let created = app.create_stream(&stream_on(&app, key)).await;
            ids.entry(key)
                .or_default()
                .push(created["id"].as_str().expect("an id").to_owned());
        }
    }

    let placed: BTreeMap<&str, BTreeSet<String>> =
        eventually(Duration::from_secs(20), "every stream running", || async {
            let mut placed: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
            for (key, streams) in &ids {
                for id in streams {
                    let s = app.stream(id).await;
                    if s["status"] != "running" {
                        return Err(s.to_string());
                    }
                    placed
                        .entry(*key)
                        .or_default()
                        .insert(s["worker_id"].as_str().expect("a worker").to_owned());
                }
            }
            Ok(placed)
        })
        .await;
    assert_eq!(placed["key-a"].len(), 1, "{placed:?}");
    assert_eq!(placed["key-b"].len(), 1, "{placed:?}");
    // With room on both, the second key started on the less loaded worker.
    assert_ne!(placed["key-a"], placed["key-b"], "{placed:?}");
}

#[tokio::test]
async fn a_full_worker_sends_the_key_elsewhere() {
    let app = spawn_app().await;
    let _w1 = app.spawn_worker("full-1", 3).await;
    let _w2 = app.spawn_worker("full-2", 3).await;
    app.wait_worker_connected("full-1", true).await;
    app.wait_worker_connected("full-2", true).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let created = app.create_stream(&stream_on(&app, "key-a")).await;
        ids.push(created["id"].as_str().expect("an id").to_owned());
    }
    let workers: Vec<String> = eventually(Duration::from_secs(20), "all running", || async {
        let mut workers = Vec::new();
        for id in &ids {
            let s = app.stream(id).await;
            if s["status"] != "running" {
                return Err(s.to_string());
            }
            workers.push(s["worker_id"].as_str().expect("a worker").to_owned());
        }
        Ok(workers)
    })
    .await;
    // The key's home fills up (3), then the rest go elsewhere: nobody is left pending.
    let on_first = workers.iter().filter(|w| *w == "full-1").count();
    let mut split = [on_first, workers.len() - on_first];
    split.sort();
    assert_eq!(split, [2, 3], "{workers:?}");
}

/// A stream on `key` with IQAir's Community budget (the default `rate_limit`).
fn budgeted_on(app: &TestApp, key: &str) -> Value {
    let mut body = stream_on(app, key);
    body.as_object_mut()
        .expect("an object")
        .remove("rate_limit");
    body
}

/// (status, worker, generation) of each stream.
async fn placements(app: &TestApp, ids: &[String]) -> Vec<(String, Option<String>, u64)> {
    let mut placed = Vec::new();
    for id in ids {
        let s = app.stream(id).await;
        placed.push((
            s["status"].as_str().expect("a status").to_owned(),
            s["worker_id"].as_str().map(str::to_owned),
            s["generation"].as_u64().expect("a generation"),
        ));
    }
    placed
}

/// A key with a call budget is held by one worker, so one budget covers it: when that worker
/// is full the key's next streams wait rather than run elsewhere on a second budget, a worker
/// without room for the whole key does not take it, and one with room takes it whole (new
/// generations, so the old worker's runs are stale).
#[tokio::test]
async fn a_budgeted_key_waits_for_room_and_moves_whole() {
    let app = spawn_app().await;
    let _w1 = app.spawn_worker("budget-home", 3).await;
    app.wait_worker_connected("budget-home", true).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let created = app.create_stream(&budgeted_on(&app, "key-a")).await;
        assert_eq!(rate_limit_of(&created), (5, 500, 10_000));
        ids.push(created["id"].as_str().expect("an id").to_owned());
    }
    let home = |placed: &[(String, Option<String>, u64)]| {
        let running = placed
            .iter()
            .filter(|(status, worker, _)| {
                status == "running" && worker.as_deref() == Some("budget-home")
            })
            .count();
        let pending = placed
            .iter()
            .filter(|(status, ..)| status == "pending")
            .count();
        (running, pending)
    };
    let before = eventually(Duration::from_secs(20), "3 at home, 2 waiting", || async {
        let placed = placements(&app, &ids).await;
        match home(&placed) {
            (3, 2) => Ok(placed),
            _ => Err(format!("{placed:?}")),
        }
    })
    .await;

    // Room for the two waiting, not for the whole key: nothing moves, nothing spills.
    let _w2 = app.spawn_worker("budget-small", 2).await;
    app.wait_worker_connected("budget-small", true).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // ten assignment sweeps
    let placed = placements(&app, &ids).await;
    assert_eq!(home(&placed), (3, 2), "{placed:?}");

    // Room for all five: the key moves whole.
    let _w3 = app.spawn_worker("budget-big", 10).await;
    app.wait_worker_connected("budget-big", true).await;
    let after = eventually(Duration::from_secs(20), "the key moved whole", || async {
        let placed = placements(&app, &ids).await;
        let all_big = placed.iter().all(|(status, worker, _)| {
            status == "running" && worker.as_deref() == Some("budget-big")
        });
        if all_big {
            Ok(placed)
        } else {
            Err(format!("{placed:?}"))
        }
    })
    .await;
    for ((_, was, before), (_, _, now)) in before.iter().zip(&after) {
        if was.is_some() {
            assert!(
                now > before,
                "a moved stream gets a new generation: {after:?}"
            );
        }
    }
    let (status, workers) = app.get("/workers").await;
    assert_eq!(status, 200, "{workers}");
    let held = |id: &str| {
        workers
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["id"] == id)
            .map(|w| w["streams"].clone())
    };
    assert_eq!(held("budget-home"), Some(json!(0)), "{workers}");
    assert_eq!(held("budget-big"), Some(json!(5)), "{workers}");
}

fn rate_limit_of(view: &Value) -> (u64, u64, u64) {
    let r = &view["rate_limit"];
    (
        r["per_minute"].as_u64().expect("per_minute"),
        r["per_day"].as_u64().expect("per_day"),
        r["per_month"].as_u64().expect("per_month"),
    )
}

#[tokio::test]
async fn the_stream_api_round_trips_rate_limits_and_refuses_bad_ones() {
    let app = spawn_app().await;

    // Absent: IQAir Community.
    let mut body = app.stream_json(60_000);
    body["start"] = json!(false);
    body.as_object_mut()
        .expect("an object")
        .remove("rate_limit");
    let created = app.create_stream(&body).await;
    assert_eq!(rate_limit_of(&created), (5, 500, 10_000));

    // Given: stored and shown.
    body["rate_limit"] = json!({"per_minute": 100, "per_day": 0, "per_month": 1_000_000});
    let custom = app.create_stream(&body).await;
    let id = custom["id"].as_str().expect("an id").to_owned();
    assert_eq!(rate_limit_of(&custom), (100, 0, 1_000_000));
    assert_eq!(rate_limit_of(&app.stream(&id).await), (100, 0, 1_000_000));

    // PATCH changes the windows it names and keeps the others.
    let (status, patched) = app
        .patch(
            &format!("/streams/{id}"),
            &json!({"rate_limit": {"per_minute": 5}}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(rate_limit_of(&patched), (5, 0, 1_000_000));
    assert_eq!(rate_limit_of(&app.stream(&id).await), (5, 0, 1_000_000));

    // Out of range or negative: 422 with the reason; not the shape (an unknown window, not an
    // object): 400 like every malformed body. Nothing created or changed either way.
    for (bad, expected) in [
        (json!({"per_minute": 1_000_001}), 422),
        (json!({"per_day": -1}), 422),
        (json!({"per_hour": 5}), 400),
        (json!("fast"), 400),
    ] {
        let mut body = body.clone();
        body["rate_limit"] = bad.clone();
        let (status, answer) = app.post("/streams", &body).await;
        assert_eq!(status, expected, "{bad}: {answer}");
        if expected == 422 {
            assert!(answer.to_string().contains("rate_limit."), "{answer}");
        }
        let (status, answer) = app
            .patch(&format!("/streams/{id}"), &json!({ "rate_limit": bad }))
            .await;
        assert_eq!(status, expected, "{answer}");
    }
    let (_, all) = app.get("/streams").await;
    assert_eq!(all.as_array().expect("a list").len(), 2);
    assert_eq!(rate_limit_of(&app.stream(&id).await), (5, 0, 1_000_000));
}

/// End to end against the simulator with IQAir Community limits on (5 calls a minute per key):
/// three streams on one key every 2 s ask for ~105 calls in 70 s, and the worker's budget keeps
/// every call it makes under the limit, so the simulator never answers `rate_limited`.
#[tokio::test]
async fn the_budget_keeps_a_shared_key_under_the_simulators_community_limits() {
    let sim = Sim::start_with(iqair_sim::Limits::community()).await;

    let app = spawn_app().await;
    let _worker = app.spawn_worker("budget-1", 10).await;
    app.wait_worker_connected("budget-1", true).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut body = app.stream_json(2_000);
        body.as_object_mut()
            .expect("an object")
            .remove("rate_limit");
        body["endpoint"] = json!(sim.endpoint());
        let created = app.create_stream(&body).await;
        assert_eq!(rate_limit_of(&created), (5, 500, 10_000));
        ids.push(created["id"].as_str().expect("an id").to_owned());
    }
    tokio::time::sleep(Duration::from_secs(70)).await;

    let stats: Value = reqwest::get(format!("http://{}/admin/stats", sim.addr))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(stats["rate_limited"], 0, "{stats}");
    let calls = stats["by_key"][IQAIR_KEY]
        .as_u64()
        .expect("calls with the key");
    // Five at the start, five more once the first have slid out of the last 61 s.
    assert!((5..=10).contains(&calls), "{stats}");
    let mut stored = 0;
    for id in &ids {
        stored += app.result_count(id).await;
    }
    assert_eq!(stored as u64, calls, "every call stored its answer");
    // The runs the budget held back are on record as `rate_limited`, with the reason.
    let (status, failures) = app
        .get(&format!("/streams/{}/failures?limit=1", ids[0]))
        .await;
    assert_eq!(status, 200, "{failures}");
    let last = &failures["items"][0];
    assert_eq!(last["class"], "rate_limited", "{failures}");
    assert!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("local budget for this key exhausted (5/minute)"),
        "{failures}"
    );
}
