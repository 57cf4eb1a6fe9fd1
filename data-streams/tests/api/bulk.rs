//! Streams by the thousand, on both backends: bulk create (array and NDJSON, all or nothing,
//! each bad item named, retries safe by id or `Idempotency-Key`), start and stop by filter and
//! by ids with real workers, the paged list holding still under concurrent inserts, the
//! counts, and batched assignment racing a worker that disconnects.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{eventually, spawn_app_on, Backend, TestApp, TestWorker};

crate::on_both_backends! {
    crate::support::with_backend: [
        super::an_array_and_ndjson_create_many_in_one_request
            => an_array_and_ndjson_create_many_in_one_request,
        super::one_bad_item_refuses_the_whole_request_and_is_named
            => one_bad_item_refuses_the_whole_request_and_is_named,
        super::a_retried_bulk_create_creates_nothing_twice
            => a_retried_bulk_create_creates_nothing_twice,
        super::start_and_stop_by_filter_and_by_ids_reach_the_workers
            => start_and_stop_by_filter_and_by_ids_reach_the_workers,
        super::the_paged_list_holds_still_while_streams_are_inserted
            => the_paged_list_holds_still_while_streams_are_inserted,
        super::batched_assignment_racing_a_worker_disconnect_leaves_every_stream_placed_once
            => batched_assignment_racing_a_worker_disconnect_leaves_every_stream_placed_once,
        super::running_streams_are_placed_as_they_are_stored
            => running_streams_are_placed_as_they_are_stored,
    ],
}

/// `n` streams against the simulator, stopped unless `start`, an hour apart (so the test's
/// workers hold them without fetching much).
fn streams(app: &TestApp, n: usize, start: bool) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut s = app.stream_json(3_600_000);
            s["start"] = json!(start);
            s["params"] = json!({"lat": 52.0 + (i % 1000) as f64 / 1000.0, "lon": 13.4});
            s
        })
        .collect()
}

async fn post_many(app: &TestApp, body: &[Value]) -> (u16, Value) {
    app.post("/streams", &Value::Array(body.to_vec())).await
}

async fn counts(app: &TestApp, query: &str) -> Value {
    let (status, counts) = app.get(&format!("/streams/count{query}")).await;
    assert_eq!(status, 200, "{counts}");
    counts
}

/// Every stream of the paged list with `query`, page by page (`limit` each).
async fn all_items(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = app
            .get(&format!("/streams?limit={limit}&after={after}{query}"))
            .await;
        assert_eq!(status, 200, "{page}");
        let page_items = page["items"].as_array().expect("items");
        assert!(page_items.len() <= limit);
        items.extend(page_items.iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => return items,
        }
    }
}

/// Every stream id of the paged list with `query`, page by page (`limit` each).
async fn all_pages(app: &TestApp, query: &str, limit: usize) -> Vec<String> {
    all_items(app, query, limit)
        .await
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// In-process workers with these ids and capacities, connected.
async fn connected_workers(app: &TestApp, workers: &[(&str, u32)]) -> Vec<TestWorker> {
    let mut started = Vec::new();
    for &(id, capacity) in workers {
        started.push(app.spawn_worker(id, capacity).await);
    }
    for &(id, _) in workers {
        app.wait_worker_connected(id, true).await;
    }
    started
}

async fn an_array_and_ndjson_create_many_in_one_request(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let body = streams(&app, 2_500, false);
    let (status, created) = post_many(&app, &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created"], 2_500);
    assert_eq!(created["existing"], 0);
    let ids: Vec<String> = created["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2_500);
    // Server-made ids are UUIDv7 in request order, so the list by id is the request's order.
    assert_eq!(all_pages(&app, "", 1_000).await, ids);

    let ndjson: String = streams(&app, 7, false)
        .iter()
        .map(|s| format!("{s}\n"))
        .collect::<String>()
        + "\n";
    let (status, created) = app
        .send_raw(
            Method::POST,
            "/streams",
            Some("application/x-ndjson"),
            ndjson.into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["created"], 7);

    let c = counts(&app, "").await;
    assert_eq!(c["total"], 2_507, "{c}");
    assert_eq!(c["stopped"], 2_507, "{c}");
    // The filter narrows the count and the list alike.
    let c = counts(&app, "?adapter=IQAIR_DAILY&status=stopped").await;
    assert_eq!(c["total"], 2_507, "{c}");
    let c = counts(&app, "?adapter=HTTP_JSON").await;
    assert_eq!(c["total"], 0, "{c}");
    let found = all_pages(&app, &format!("&q={}", ids[17]), 10).await;
    assert_eq!(found, vec![ids[17].clone()]);
    let by_text = all_pages(&app, "&q=52.017", 100).await;
    assert!(by_text.contains(&ids[17]), "{by_text:?}");
    // The unpaged form is the original array.
    let (status, all) = app.get("/streams").await;
    assert_eq!(status, 200);
    assert_eq!(all.as_array().map(Vec::len), Some(2_507));
    // A bad filter or cursor is the caller's mistake.
    let (status, body) = app.get("/streams?status=sleeping").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.get("/streams?limit=1&after=nope").await;
    assert_eq!(status, 400, "{body}");
}

async fn one_bad_item_refuses_the_whole_request_and_is_named(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let mut body = streams(&app, 5, false);
    body[1]["interval"] = json!(5); // under the 1000 ms floor
    body[3] = json!({"adapter": "IQAIR_DAILY", "not_a_field": true});
    let (status, refused) = post_many(&app, &body).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["detail"]["code"], "invalid_streams", "{refused}");
    let items = refused["detail"]["items"].as_array().unwrap();
    let indexes: Vec<u64> = items.iter().map(|i| i["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, [1, 3], "{refused}");
    assert!(
        items[0]["problems"][0]
            .as_str()
            .unwrap()
            .contains("interval"),
        "{refused}"
    );
    assert_eq!(counts(&app, "").await["total"], 0, "nothing was created");

    // NDJSON names the line of a malformed record.
    let ndjson = format!("{}\n{{\"adapter\": \n", body[0]);
    let (status, refused) = app
        .send_raw(
            Method::POST,
            "/streams",
            Some("application/x-ndjson"),
            ndjson.into_bytes(),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    let problem = refused["detail"]["items"][0]["problems"][0]
        .as_str()
        .unwrap();
    assert!(problem.starts_with("line 2:"), "{refused}");
    assert_eq!(counts(&app, "").await["total"], 0);

    // An id repeated within the request, and an id that exists with another spec.
    let id = "0192f0c4-5f0e-7c1a-9a57-3c1f0e6f2b10";
    let mut twice = streams(&app, 2, false);
    twice[0]["id"] = json!(id);
    twice[1]["id"] = json!(id);
    let (status, refused) = post_many(&app, &twice).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["detail"]["items"][0]["index"], 1, "{refused}");
    let (status, _) = post_many(&app, &twice[..1]).await;
    assert_eq!(status, 201);
    let mut other = twice[0].clone();
    other["interval"] = json!(1_800_000);
    let mut batch = streams(&app, 3, false);
    batch.push(other.clone());
    let (status, refused) = post_many(&app, &batch).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["detail"]["items"][0]["index"], 3, "{refused}");
    assert_eq!(
        counts(&app, "").await["total"],
        1,
        "the 3 good ones were not created"
    );
    // The single form agrees: the same stream again is a retry, another is a conflict.
    let (status, again) = app.post("/streams", &twice[0]).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(id)), "{again}");
    let (status, refused) = app.post("/streams", &other).await;
    assert_eq!(status, 409, "{refused}");

    // Too many streams, or a body over the bulk limit, is refused whole.
    let (status, refused) = app
        .send_raw(
            Method::POST,
            "/streams",
            Some("application/json"),
            b"[1, 2".to_vec(),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = app
        .send_raw(Method::POST, "/streams", Some("text/csv"), b"a,b".to_vec())
        .await;
    assert_eq!(status, 415, "{refused}");
    // One stream over the small limit is still a 413, as before.
    let mut big = streams(&app, 1, false).remove(0);
    big["params"]["pad"] = json!("x".repeat(70 * 1024));
    let (status, refused) = app.post("/streams", &big).await;
    assert_eq!(status, 413, "{refused}");
}

async fn a_retried_bulk_create_creates_nothing_twice(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let body = streams(&app, 300, false);
    let request = || {
        app.request(Method::POST, "/streams")
            .header("Idempotency-Key", "import-2026-12-06")
            .json(&body)
    };
    let first: Value = request().send().await.unwrap().json().await.unwrap();
    assert_eq!(first["created"], 300, "{first}");
    let response = request().send().await.unwrap();
    assert_eq!(response.status(), 200, "a replay creates nothing");
    let second: Value = response.json().await.unwrap();
    assert_eq!(
        (second["created"].as_u64(), second["existing"].as_u64()),
        (Some(0), Some(300))
    );
    assert_eq!(
        first["ids"], second["ids"],
        "the same ids, in the same order"
    );
    assert_eq!(counts(&app, "").await["total"], 300);
}

async fn start_and_stop_by_filter_and_by_ids_reach_the_workers(backend: Backend) {
    let app = spawn_app_on(backend).await;
    // One key for every stream keeps them on one worker while it has room (key affinity):
    // 250 each makes the 400 spread.
    let _workers = connected_workers(&app, &[("bulk-a", 250), ("bulk-b", 250)]).await;
    let (status, created) = post_many(&app, &streams(&app, 400, false)).await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<String> = created["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();

    // An empty filter would select everything: refused.
    let (status, refused) = app.post("/streams/start", &json!({"filter": {}})).await;
    assert_eq!(status, 422, "{refused}");
    let (status, refused) = app
        .post(
            "/streams/start",
            &json!({"ids": [], "filter": {"adapter": "X"}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");

    let (status, started) = app
        .post(
            "/streams/start",
            &json!({"filter": {"adapter": "IQAIR_DAILY", "status": "stopped"}}),
        )
        .await;
    assert_eq!(
        (status, started["changed"].as_u64()),
        (200, Some(400)),
        "{started}"
    );
    eventually(Duration::from_secs(30), "400 running", || async {
        let c = counts(&app, "").await;
        if c["running"] == 400 {
            Ok(())
        } else {
            Err(c.to_string())
        }
    })
    .await;
    // Shared by capacity: both workers hold streams, and each stream one worker.
    let a = all_pages(&app, "&worker=bulk-a", 1_000).await;
    let b = all_pages(&app, "&worker=bulk-b", 1_000).await;
    assert_eq!(a.len() + b.len(), 400);
    assert!(!a.is_empty() && !b.is_empty(), "{} / {}", a.len(), b.len());
    // Idempotent: starting them again changes nothing.
    let (_, again) = app
        .post(
            "/streams/start",
            &json!({"filter": {"adapter": "IQAIR_DAILY"}}),
        )
        .await;
    assert_eq!(again["changed"], 0, "{again}");

    let stop: Vec<&String> = ids.iter().take(150).collect();
    let (status, stopped) = app.post("/streams/stop", &json!({"ids": stop})).await;
    assert_eq!(
        (status, stopped["changed"].as_u64()),
        (200, Some(150)),
        "{stopped}"
    );
    let c = counts(&app, "").await;
    assert_eq!(
        (c["running"].as_i64(), c["stopped"].as_i64()),
        (Some(250), Some(150)),
        "{c}"
    );
    let stopped_ids: HashSet<String> = all_pages(&app, "&status=stopped", 1_000)
        .await
        .into_iter()
        .collect();
    assert_eq!(stopped_ids, stop.iter().map(|s| s.to_string()).collect());
    // The stopped streams lost their worker.
    let (_, first) = app.get(&format!("/streams/{}", ids[0])).await;
    assert_eq!(first["worker_id"], Value::Null, "{first}");

    let (status, stopped) = app
        .post("/streams/stop", &json!({"filter": {"worker": "bulk-a"}}))
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert!(all_pages(&app, "&worker=bulk-a", 1_000).await.is_empty());
}

async fn the_paged_list_holds_still_while_streams_are_inserted(backend: Backend) {
    let app = Arc::new(spawn_app_on(backend).await);
    let (status, created) = post_many(&app, &streams(&app, 1_200, false)).await;
    assert_eq!(status, 201, "{created}");
    let before: Vec<String> = created["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();

    // Bounded: new ids sort after the cursor, so an inserter as fast as the pager (about 5,000
    // streams a second each, on SQLite) would keep the last page from ever coming.
    let done = Arc::new(AtomicBool::new(false));
    let inserter = {
        let (app, done) = (app.clone(), done.clone());
        tokio::spawn(async move {
            let mut inserted = 0;
            while !done.load(Ordering::Relaxed) && inserted < 1_500 {
                let (status, body) = post_many(&app, &streams(&app, 50, false)).await;
                assert_eq!(status, 201, "{body}");
                inserted += 50;
            }
            inserted
        })
    };
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = app.get(&format!("/streams?limit=97&after={after}")).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done.store(true, Ordering::Relaxed);
    let inserted = inserter.await.unwrap();
    assert!(inserted > 0, "inserts ran while paging");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no stream on two pages");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "pages in id order");
    for id in &before {
        assert!(
            unique.contains(id),
            "{id} existed before paging and was missed"
        );
    }
}

async fn batched_assignment_racing_a_worker_disconnect_leaves_every_stream_placed_once(
    backend: Backend,
) {
    let app = spawn_app_on(backend).await;
    // The key's home fills first (the smaller id wins the tie): "race-leaving" takes 6,000
    // while the batches go out, the rest go to "race-staying".
    let mut workers =
        connected_workers(&app, &[("race-leaving", 6_000), ("race-staying", 20_000)]).await;
    let _staying = workers.pop();
    let leaving = workers.pop().expect("the leaving worker");
    // 12,000 streams: more than one assignment batch, so the sweep is still handing out when
    // one worker goes.
    let (status, created) = post_many(&app, &streams(&app, 12_000, true)).await;
    assert_eq!(status, 201, "{created}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    leaving.stop().await;
    app.wait_worker_connected("race-leaving", false).await;

    // After the heartbeat timeout the gone worker's streams move: every stream ends up
    // running on the one worker left, none on the gone one, none twice.
    eventually(
        Duration::from_secs(60),
        "12,000 running on race-staying",
        || async {
            let c = counts(&app, "").await;
            let on_staying = counts(&app, "?worker=race-staying").await;
            if c["running"] == 12_000 && on_staying["running"] == 12_000 {
                Ok(())
            } else {
                Err(format!("{c} / {on_staying}"))
            }
        },
    )
    .await;
    assert_eq!(counts(&app, "?worker=race-leaving").await["total"], 0);
    let generations: BTreeMap<String, i64> = all_items(&app, "", 1_000)
        .await
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["generation"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(generations.len(), 12_000);
    assert!(
        generations.values().all(|g| *g >= 1),
        "every stream was assigned"
    );
}

/// A bulk create places its running streams on the connected workers in the rows it inserts
/// (generation 1), so the answer finds them assigned already, within each worker's room; what no
/// worker has room for stays pending for a sweep, and a stopped stream is placed nowhere.
async fn running_streams_are_placed_as_they_are_stored(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let _workers = connected_workers(&app, &[("placed-a", 300), ("placed-b", 300)]).await;
    let mut body = streams(&app, 700, true);
    body.extend(streams(&app, 5, false));
    let (status, created) = post_many(&app, &body).await;
    assert_eq!(status, 201, "{created}");
    // No waiting: the answer came after the rows that place them committed.
    let (a, b) = (
        counts(&app, "?worker=placed-a").await,
        counts(&app, "?worker=placed-b").await,
    );
    assert_eq!(
        (a["total"].clone(), b["total"].clone()),
        (json!(300), json!(300)),
        "{a} / {b}"
    );
    let all = counts(&app, "").await;
    assert_eq!(
        (
            all["pending"].clone(),
            all["stopped"].clone(),
            all["total"].clone()
        ),
        (json!(100), json!(5), json!(705)),
        "{all}"
    );
    let placed = all_items(&app, "&worker=placed-a", 1_000).await;
    assert!(
        placed.iter().all(|s| s["generation"] == json!(1)),
        "placed once, as stored"
    );
    // The workers got them: all 600 run.
    eventually(Duration::from_secs(30), "600 running", || async {
        let c = counts(&app, "").await;
        if c["running"] == json!(600) {
            Ok(())
        } else {
            Err(c.to_string())
        }
    })
    .await;
}
