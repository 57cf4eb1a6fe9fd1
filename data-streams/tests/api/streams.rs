//! `/streams` and what hangs off it: create, list, get, patch, delete, start/stop, results, raw
//! objects and measurements, against a real worker where the answer depends on one.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{
    eventually, ids_of, parse_uuid, reading, result, settled, spawn_app, BUCKET, IQAIR_KEY, T0,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_201_hides_the_key_and_applies_the_defaults() {
    let app = spawn_app().await;
    let body = app.stream_json(300_000);
    let (status, created) = app.post("/streams", &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["secret_key"], "***");
    assert!(
        !created.to_string().contains(IQAIR_KEY),
        "the key leaks: {created}"
    );
    assert_eq!(created["adapter"], "IQAIR_DAILY");
    assert_eq!(created["endpoint"], app.sim.endpoint());
    assert_eq!(created["interval"], 300_000);
    assert_eq!(created["cron"], Value::Null);
    assert_eq!(
        created["timeout"], 300_000,
        "timeout defaults to the interval"
    );
    assert_eq!(created["bucket_name"], BUCKET);
    assert_eq!(created["params"], json!({"lat": 52.52, "lon": 13.40}));
    // Created running (the default); no worker is connected, so it waits for one.
    assert_eq!(created["status"], "pending");
    assert_eq!(created["worker_id"], Value::Null);
    assert_eq!(created["last_result_at"], Value::Null);
    assert_eq!(created["last_error"], Value::Null);
    parse_uuid(&created["id"]);

    // An explicit timeout is kept; `"start": false` creates it stopped.
    let mut stopped = app.stream_json(300_000);
    stopped["timeout"] = json!(180_000);
    stopped["start"] = json!(false);
    let created = app.create_stream(&stopped).await;
    assert_eq!(created["timeout"], 180_000);
    assert_eq!(created["status"], "stopped");

    // A cron stream.
    let mut cron = app.stream_json(0);
    cron.as_object_mut().unwrap().remove("interval");
    cron["cron"] = json!("0 */15 * * * *");
    let created = app.create_stream(&cron).await;
    assert_eq!(created["cron"], "0 */15 * * * *");
    assert_eq!(created["interval"], Value::Null);

    // A place instead of a point.
    let mut place = app.stream_json(300_000);
    place["params"] = json!({"city": "Los Angeles", "state": "California", "country": "USA"});
    let created = app.create_stream(&place).await;
    assert_eq!(created["params"]["city"], "Los Angeles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_get_show_every_stream_without_its_key() {
    let app = spawn_app().await;
    let (status, empty) = app.get("/streams").await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!([]));

    let a = app.create_running(300_000).await;
    let b = app.create_stopped().await;
    let (status, list) = app.get("/streams").await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 2);
    let ids: Vec<String> = list
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&a) && ids.contains(&b), "{ids:?}");
    for s in list {
        assert_eq!(s["secret_key"], "***");
        for field in [
            "status",
            "worker_id",
            "last_result_at",
            "last_error",
            "interval",
            "timeout",
        ] {
            assert!(s.get(field).is_some(), "{field} missing from {s}");
        }
    }

    let got = app.stream(&a).await;
    assert_eq!(got["id"], a.as_str());
    assert_eq!(got["status"], "pending");
    assert_eq!(got["secret_key"], "***");
    assert_eq!(app.stream(&b).await["status"], "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_the_interval_and_switches_to_cron_and_back() {
    let app = spawn_app().await;
    let id = app.create_running(300_000).await;

    // A new interval; the timeout was only the default, so it follows.
    let (status, changed) = app
        .patch(&format!("/streams/{id}"), &json!({"interval": 60_000}))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["interval"], 60_000);
    assert_eq!(changed["timeout"], 60_000);
    assert_eq!(changed["secret_key"], "***");
    assert_eq!(app.stream(&id).await["interval"], 60_000, "persisted");

    // To cron: the interval goes.
    let (status, changed) = app
        .patch(&format!("/streams/{id}"), &json!({"cron": "0 0 * * * *"}))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["cron"], "0 0 * * * *");
    assert_eq!(changed["interval"], Value::Null);
    let stored = app.stream(&id).await;
    assert_eq!(stored["cron"], "0 0 * * * *");
    assert_eq!(stored["interval"], Value::Null);

    // Back to an interval, with an explicit timeout; other fields stay.
    let (status, changed) = app
        .patch(
            &format!("/streams/{id}"),
            &json!({"interval": 120_000, "timeout": 30_000}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["interval"], 120_000);
    assert_eq!(changed["cron"], Value::Null);
    assert_eq!(changed["timeout"], 30_000);
    assert_eq!(changed["params"], json!({"lat": 52.52, "lon": 13.40}));

    // A new key is accepted and never shown.
    let (status, changed) = app
        .patch(
            &format!("/streams/{id}"),
            &json!({"secret_key": "another-key"}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["secret_key"], "***");

    // An invalid patch changes nothing.
    let (status, err) = app
        .patch(&format!("/streams/{id}"), &json!({"interval": 5}))
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(app.stream(&id).await["interval"], 120_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_answers_204_and_then_the_stream_is_gone() {
    let app = spawn_app().await;
    let worker = app.spawn_worker("w-delete", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_running_on(&id, &worker.id).await;

    let resp = app
        .request(Method::DELETE, &format!("/streams/{id}"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status().as_u16(), 204);
    assert!(resp.bytes().await.expect("body").is_empty());

    for path in [
        format!("/streams/{id}"),
        format!("/streams/{id}/results"),
        format!("/streams/{id}/measurements"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(&id), "{body}");
    }
    assert_eq!(app.delete(&format!("/streams/{id}")).await.0, 404);
    assert_eq!(app.post_empty(&format!("/streams/{id}/start")).await.0, 404);
    let (_, list) = app.get("/streams").await;
    assert_eq!(list, json!([]));
    // Its worker was told: nothing is assigned to it any more.
    eventually(
        Duration::from_secs(10),
        "no streams on the worker",
        || async {
            let workers = app.workers().await;
            match workers.get("w-delete") {
                Some((true, 0)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_answer_in_the_original_shape_and_are_idempotent() {
    let app = spawn_app().await;
    let worker = app.spawn_worker("w-start-stop", 10).await;
    app.wait_worker_connected(&worker.id, true).await;
    let id = app.create_stopped().await;
    // A stopped stream runs nowhere.
    assert_eq!(app.stream(&id).await["worker_id"], Value::Null);
    // 1 s interval from now on, so the worker has something to do.
    let (status, _) = app
        .patch(&format!("/streams/{id}"), &json!({"interval": 1_000}))
        .await;
    assert_eq!(status, 200);

    let mut answers = Vec::new();
    for _ in 0..2 {
        let (status, body) = app.post_empty(&format!("/streams/{id}/start")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["success"], true, "{body}");
        assert_eq!(
            body["message"], "Started fetching from adapter IQAIR_DAILY.",
            "{body}"
        );
        answers.push((body["success"].clone(), body["message"].clone()));
    }
    assert_eq!(answers[0], answers[1], "start twice gives the same answer");
    app.wait_running_on(&id, &worker.id).await;
    let generation = app.stream(&id).await["generation"].clone();
    let (_, again) = app.post_empty(&format!("/streams/{id}/start")).await;
    assert_eq!(
        app.stream(&id).await["generation"],
        generation,
        "starting a running stream does not reassign it: {again}"
    );
    app.wait_for_results(&id, 2).await;

    let mut answers = Vec::new();
    for _ in 0..2 {
        let (status, body) = app.post_empty(&format!("/streams/{id}/stop")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["success"], true, "{body}");
        assert_eq!(
            body["message"], "Stopped fetching from adapter IQAIR_DAILY.",
            "{body}"
        );
        answers.push((body["success"].clone(), body["message"].clone()));
    }
    assert_eq!(answers[0], answers[1], "stop twice gives the same answer");
    let stopped = app.stream(&id).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert_eq!(stopped["worker_id"], Value::Null, "{stopped}");

    // The worker really stopped: its objects stop growing (a run in flight may still land).
    settled(
        Duration::from_secs(20),
        Duration::from_secs(3),
        "objects of the stopped stream",
        || async { app.objects_of(&id).len() },
    )
    .await;

    // And starts again.
    let before = app.result_count(&id).await;
    let (status, body) = app.post_empty(&format!("/streams/{id}/start")).await;
    assert_eq!(status, 200, "{body}");
    app.wait_running_on(&id, &worker.id).await;
    app.wait_for_results(&id, before + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_come_newest_first_and_raw_objects_byte_for_byte() {
    let app = spawn_app().await;
    let _worker = app.spawn_worker("w-results", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_for_results(&id, 3).await;

    let (status, page) = app.get(&format!("/streams/{id}/results")).await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().expect("items").clone();
    assert!(items.len() >= 3);
    assert_eq!(page["next"], Value::Null, "one page holds them all");
    let ids = ids_of(&items);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let fetched: Vec<String> = items
        .iter()
        .map(|r| r["fetched_at"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        fetched.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {fetched:?}"
    );
    for r in &items {
        assert_eq!(r["stream_id"], id.as_str());
        assert_eq!(r["status"], "ok");
        for field in [
            "id",
            "key",
            "fetched_at",
            "scheduled_at",
            "started_at",
            "size",
            "sha256",
        ] {
            assert!(!r[field].is_null(), "{field} missing from {r}");
        }
    }
    // Stream bookkeeping.
    let stream = app.stream(&id).await;
    assert!(stream["last_result_at"].is_string(), "{stream}");
    assert_eq!(stream["status"], "running");

    // Paging one at a time walks the same ids in the same order.
    let mut paged = Vec::new();
    let mut path = format!("/streams/{id}/results?limit=1");
    for _ in 0..3 {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        paged.push(parse_uuid(&items[0]["id"]));
        if paged.len() == 3 {
            break;
        }
        path = format!(
            "/streams/{id}/results?limit=1&after={}",
            page["next"].as_str().expect("a next cursor")
        );
    }
    // Rows arriving meanwhile are newer and sort before the cursor: the pages are consecutive
    // rows of the full listing taken afterwards.
    let full = ids_of(&app.all_results(&id).await);
    let at = full
        .iter()
        .position(|x| *x == paged[0])
        .expect("the first paged id is listed");
    assert_eq!(
        full[at..at + 3].to_vec(),
        paged,
        "pages skip or repeat rows"
    );

    // Raw read-back: exactly the object file, with its SHA-256.
    for r in items.iter().take(3) {
        let key = r["key"].as_str().unwrap();
        assert!(
            key.starts_with(&format!("IQAIR_DAILY/stream_id={id}/dt=")) && key.ends_with(".json"),
            "key layout: {key}"
        );
        let on_disk = std::fs::read(app.store_root.join(BUCKET).join(key)).expect("object file");
        let resp = app
            .request(
                Method::GET,
                &format!("/results/{}/raw", r["id"].as_str().unwrap()),
            )
            .send()
            .await
            .expect("GET raw");
        assert_eq!(resp.status().as_u16(), 200);
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = resp.bytes().await.expect("body").to_vec();
        assert_eq!(body, on_disk, "raw read-back differs from the object file");
        let sha = hex_of(&Sha256::digest(&body));
        assert_eq!(r["sha256"], sha.as_str());
        assert_eq!(r["size"], body.len());
        assert_eq!(etag, Some(format!("\"{sha}\"")));
        serde_json::from_slice::<Value>(&body).expect("the raw object is the API's JSON");
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_of_an_unknown_or_missing_object_is_404() {
    let app = spawn_app().await;
    let id = app.create_stopped().await;
    let stream_id = uuid::Uuid::parse_str(&id).unwrap();
    let (status, body) = app
        .get(&format!("/results/{}/raw", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(status, 404, "{body}");
    // Indexed, but its object is not in the store.
    let record = result(stream_id, T0, None);
    app.db()
        .persist_events(std::slice::from_ref(&record), &[])
        .await
        .expect("persist");
    let (status, body) = app.get(&format!("/results/{}/raw", record.result_id)).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measurements_from_a_real_worker_are_readable() {
    let app = spawn_app().await;
    let _worker = app.spawn_worker("w-measure", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_for_results(&id, 3).await;
    let (status, body) = app.get(&format!("/streams/{id}/measurements")).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().expect("items");
    // The simulator's reading changes hourly: 3 fetches are 1 reading (2 across an hour).
    assert!(
        (1..=2).contains(&items.len()),
        "one reading per pollution hour: {body}"
    );
    let m = &items[0];
    for field in [
        "ts", "aqius", "mainus", "aqicn", "maincn", "tp", "pr", "hu", "ws", "wd", "ic",
    ] {
        assert!(!m[field].is_null(), "{field} missing from {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measurements_honour_from_and_to() {
    let app = spawn_app().await;
    let id = app.create_stopped().await;
    let stream_id = uuid::Uuid::parse_str(&id).unwrap();
    let hour = 3_600_000;
    let records: Vec<_> = (0..4)
        .map(|h| {
            let at = T0 + h * hour;
            result(stream_id, at + 60_000, Some(reading(at, 10.0 + h as f64)))
        })
        .collect();
    app.db()
        .persist_events(&records, &[])
        .await
        .expect("persist");

    let ts_of = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|m| m["ts"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = app.get(&format!("/streams/{id}/measurements")).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(
        ts_of(&all),
        vec![
            "2026-01-01T00:00:00.000Z",
            "2026-01-01T01:00:00.000Z",
            "2026-01-01T02:00:00.000Z",
            "2026-01-01T03:00:00.000Z"
        ],
        "oldest first"
    );
    assert_eq!(all["items"][1]["aqius"], 11.0);

    // Bounds are inclusive, in RFC 3339 or epoch milliseconds.
    let (_, window) = app
        .get(&format!(
            "/streams/{id}/measurements?from=2026-01-01T01:00:00Z&to=2026-01-01T02:00:00Z"
        ))
        .await;
    assert_eq!(
        ts_of(&window),
        vec!["2026-01-01T01:00:00.000Z", "2026-01-01T02:00:00.000Z"]
    );
    let (_, from_only) = app
        .get(&format!(
            "/streams/{id}/measurements?from={}",
            T0 + 2 * hour
        ))
        .await;
    assert_eq!(
        ts_of(&from_only),
        vec!["2026-01-01T02:00:00.000Z", "2026-01-01T03:00:00.000Z"]
    );
    let (_, to_only) = app
        .get(&format!("/streams/{id}/measurements?to={}", T0 + hour - 1))
        .await;
    assert_eq!(ts_of(&to_only), vec!["2026-01-01T00:00:00.000Z"]);
    let (_, none) = app
        .get(&format!(
            "/streams/{id}/measurements?from=2026-02-01T00:00:00Z"
        ))
        .await;
    assert_eq!(ts_of(&none), Vec::<String>::new());
}

/// The newest raw object of a stream, as text.
async fn newest_raw(app: &crate::support::TestApp, id: &str) -> Option<String> {
    let (_, page) = app.get(&format!("/streams/{id}/results?limit=1")).await;
    let result_id = page["items"][0]["id"].as_str()?.to_owned();
    let resp = app
        .request(Method::GET, &format!("/results/{result_id}/raw"))
        .send()
        .await
        .ok()?;
    resp.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_of_a_running_stream_reaches_its_worker() {
    let app = spawn_app().await;
    let worker = app.spawn_worker("w-patch", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_running_on(&id, &worker.id).await;
    app.wait_for_results(&id, 1).await;
    let berlin = newest_raw(&app, &id).await.expect("a raw object");
    assert!(berlin.contains("Berlin"), "{berlin}");

    let (status, changed) = app
        .patch(
            &format!("/streams/{id}"),
            &json!({"params": {"lat": 34.07, "lon": -118.24}}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["status"], "running", "{changed}");
    // Applied from the next run on, by the same worker, without a new assignment.
    eventually(
        Duration::from_secs(20),
        "a fetch with the new parameters",
        || async {
            match newest_raw(&app, &id).await {
                Some(raw) if raw.contains("Los Angeles") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let s = app.stream(&id).await;
    assert_eq!(s["worker_id"], "w-patch", "{s}");
    assert_eq!(s["generation"], changed["generation"], "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_fails_the_stream_with_the_reason_until_a_person_fixes_it() {
    let app = spawn_app().await;
    let _worker = app.spawn_worker("w-key", 10).await;
    let mut body = app.stream_json(1_000);
    body["secret_key"] = json!("not-a-key-the-api-knows");
    let id = app.create_stream(&body).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let failed = eventually(Duration::from_secs(20), "the stream failed", || async {
        let s = app.stream(&id).await;
        if s["status"] == "failed" {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    let reason = failed["last_error"].as_str().expect("a reason");
    assert!(reason.contains("incorrect_api_key"), "{failed}");
    assert_eq!(failed["worker_id"], Value::Null, "{failed}");
    assert!(
        !failed.to_string().contains("not-a-key-the-api-knows"),
        "{failed}"
    );
    let (status, failures) = app.get(&format!("/streams/{id}/failures")).await;
    assert_eq!(status, 200, "{failures}");
    let first = &failures["items"][0];
    assert_eq!(first["class"], "auth", "{failures}");
    assert_eq!(first["stream_stopped"], true, "{failures}");
    // Nobody restarts it behind the person's back.
    let workers = app.workers().await;
    assert_eq!(workers.get("w-key"), Some(&(true, 0)), "{workers:?}");
    assert_eq!(app.result_count(&id).await, 0);

    // A person fixes the key and starts it again.
    let (status, _) = app
        .patch(&format!("/streams/{id}"), &json!({"secret_key": IQAIR_KEY}))
        .await;
    assert_eq!(status, 200);
    let (status, started) = app.post_empty(&format!("/streams/{id}/start")).await;
    assert_eq!(status, 200, "{started}");
    app.wait_running_on(&id, "w-key").await;
    app.wait_for_results(&id, 2).await;
    let s = app.stream(&id).await;
    assert_eq!(s["last_error"], Value::Null, "{s}");
    assert_eq!(s["status"], "running", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_timeout_follows_a_schedule_switch_both_ways() {
    let app = spawn_app().await;
    // Cron, with the default timeout, to an interval: the timeout becomes the interval's.
    let mut cron = app.stream_json(0);
    cron.as_object_mut().unwrap().remove("interval");
    cron["cron"] = json!("0 */15 * * * *");
    let created = app.create_stream(&cron).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let cron_default = created["timeout"].clone();
    let (status, changed) = app
        .patch(&format!("/streams/{id}"), &json!({"interval": 5_000}))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["timeout"], 5_000, "{changed}");
    // And back: the cron default again.
    let (status, changed) = app
        .patch(&format!("/streams/{id}"), &json!({"cron": "0 0 * * * *"}))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["timeout"], cron_default, "{changed}");

    // A timeout the person chose stays through a switch.
    let (status, changed) = app
        .patch(
            &format!("/streams/{id}"),
            &json!({"interval": 300_000, "timeout": 20_000}),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    let (status, changed) = app
        .patch(&format!("/streams/{id}"), &json!({"cron": "0 */5 * * * *"}))
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["timeout"], 20_000, "{changed}");
}
