//! `/workers`, `/healthz`, `/readyz`, `/metrics`, `/reconciler` and `/reconciler/audit`.

use std::time::Duration;

use bytes::Bytes;
use objects::{Layout, ObjectMeta, StoreOptions};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{eventually, spawn_app, spawn_app_with, AppOptions, TestApp, BUCKET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_lists_connected_workers_with_their_streams() {
    let app = spawn_app().await;
    let (status, body) = app.get("/workers").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!([]));

    let worker = app.spawn_worker("w-list", 7).await;
    let id = app.create_running(1_000).await;
    app.wait_running_on(&id, &worker.id).await;
    let (status, body) = app.get("/workers").await;
    assert_eq!(status, 200, "{body}");
    let w = &body.as_array().expect("a list")[0];
    assert_eq!(w["id"], "w-list");
    assert_eq!(w["connected"], true);
    assert_eq!(w["streams"], 1);
    assert_eq!(w["capacity"], 7);
    assert_eq!(w["adapters"], json!(["HTTP_JSON", "IQAIR_DAILY"]));
    let last_seen = w["last_seen"].as_str().expect("last_seen");
    chrono::DateTime::parse_from_rfc3339(last_seen).expect("RFC 3339");

    worker.stop().await;
    app.wait_worker_connected("w-list", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], "ok");
    assert_eq!(body["object_store"], "ok");

    // The store root goes away: not ready, saying why; liveness is unaffected.
    let away = app.dir.path().join("objects-away");
    std::fs::rename(&app.store_root, &away).expect("move the store root away");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "ok");
    let reason = body["object_store"].as_str().expect("a reason");
    assert_ne!(reason, "ok");
    assert!(
        reason.contains("objects"),
        "the reason names the store: {reason}"
    );
    assert_eq!(app.get("/healthz").await.0, 200);

    // And back.
    std::fs::rename(&away, &app.store_root).expect("move the store root back");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let app = spawn_app().await;
    let _worker = app.spawn_worker("w-metrics", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_for_results(&id, 1).await;
    // Metrics are process-wide (one recorder), so look for names, not values.
    let text = eventually(
        Duration::from_secs(10),
        "the supervisor's metrics",
        || async {
            let resp = app
                .request(Method::GET, "/metrics")
                .send()
                .await
                .expect("GET /metrics");
            if resp.status().as_u16() != 200 {
                return Err(format!("status {}", resp.status()));
            }
            let ct = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let text = resp.text().await.expect("text");
            if ct.starts_with("text/plain")
                && text.contains("ds_workers_connected")
                && text.contains("ds_results_inserted_total")
            {
                Ok(text)
            } else {
                Err(format!("{ct}: {text}"))
            }
        },
    )
    .await;
    // Prometheus exposition: `# TYPE` lines and `name{labels} value` samples.
    assert!(
        text.contains("# TYPE ds_results_inserted_total counter"),
        "{text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_indexes_objects_that_were_never_reported() {
    reconciler_indexes_an_unreported_object(Layout::Hive).await;
}

/// Objects stored before the warehouse layout (`<adapter>/<stream_id>/dt=…`) are still found,
/// indexed under their own key and read back, until `migrate-layout` moves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_finds_objects_in_the_legacy_layout_too() {
    reconciler_indexes_an_unreported_object(Layout::Legacy).await;
}

async fn reconciler_indexes_an_unreported_object(layout: Layout) {
    let app = spawn_app_with(AppOptions {
        reconcile_interval_ms: 300,
        ..AppOptions::default()
    })
    .await;
    let id = app.create_stopped().await;
    // A worker stored an object and died before reporting it.
    let (result_id, key, body) = store_unreported_object(&app, &id, layout).await;
    assert_eq!(
        objects::ObjectKey::parse(&key).map(|k| k.layout()),
        Some(layout)
    );

    let findings: Value = eventually(
        Duration::from_secs(20),
        "a reconciler pass that found the object",
        || async {
            let (status, body) = app.get("/reconciler").await;
            if status != 200 {
                return Err(format!("{status} {body}"));
            }
            if body["last_run_at"].is_string() && app.result_count(&id).await == 1 {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        },
    )
    .await;
    assert!(
        findings["findings"]["streams"].as_u64().unwrap() >= 1,
        "{findings}"
    );
    assert!(
        findings["findings"]["objects"].as_u64().unwrap() >= 1,
        "{findings}"
    );

    let results = app.all_results(&id).await;
    assert_eq!(results[0]["id"], result_id.to_string());
    assert_eq!(results[0]["status"], "reconciled");
    assert_eq!(results[0]["key"], key.as_str());
    assert_eq!(results[0]["sha256"], objects::sha256_hex(&body).as_str());
    let raw = app
        .request(Method::GET, &format!("/results/{result_id}/raw"))
        .send()
        .await
        .expect("raw");
    assert_eq!(raw.status().as_u16(), 200);
    assert_eq!(raw.bytes().await.unwrap(), body);

    // Later passes insert nothing more.
    let first_pass = findings["last_run_at"].as_str().unwrap().to_owned();
    let later = eventually(Duration::from_secs(20), "a later pass", || async {
        let (_, body) = app.get("/reconciler").await;
        if body["last_run_at"]
            .as_str()
            .is_some_and(|at| at > first_pass.as_str())
        {
            Ok(body)
        } else {
            Err(body.to_string())
        }
    })
    .await;
    assert_eq!(later["findings"]["inserted"], 0, "{later}");
    assert_eq!(app.result_count(&id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_of_a_connected_worker_keeps_up() {
    let app = spawn_app().await;
    let _worker = app.spawn_worker("w-alive", 10).await;
    app.wait_worker_connected("w-alive", true).await;
    let first = |body: &Value| -> (String, String) {
        let w = &body.as_array().unwrap()[0];
        (
            w["connected_at"].as_str().unwrap().to_owned(),
            w["last_seen"].as_str().unwrap().to_owned(),
        )
    };
    let (_, body) = app.get("/workers").await;
    let (connected_at, _) = first(&body);
    // A worker that is heard from is seen after it connected, not only when it connected.
    eventually(
        Duration::from_secs(20),
        "last_seen after connected_at",
        || async {
            let (_, body) = app.get("/workers").await;
            let (at, seen) = first(&body);
            assert_eq!(at, connected_at, "one connection: {body}");
            if seen > connected_at {
                Ok(())
            } else {
                Err(body.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_pass_and_the_audit_report_a_reference_whose_object_is_gone() {
    let app = spawn_app_with(AppOptions {
        reconcile_interval_ms: 300,
        ..AppOptions::default()
    })
    .await;
    let id = app.create_stopped().await;
    let (_, key, _) = store_unreported_object(&app, &id, Layout::Hive).await;
    // Indexed by the reconciler first, then the object disappears behind everyone's back.
    eventually(Duration::from_secs(20), "the object indexed", || async {
        match app.result_count(&id).await {
            1 => Ok(()),
            n => Err(format!("{n} references")),
        }
    })
    .await;
    let root = app.store_url.trim_start_matches("file://");
    std::fs::remove_file(std::path::Path::new(root).join(BUCKET).join(&key)).expect("remove");

    // The periodic pass lists only what is newer than the stream's watermark: it cannot tell a
    // missing object from an old one and counts nothing.
    let since = chrono::Utc::now();
    let findings: Value = eventually(
        Duration::from_secs(20),
        "a reconciler pass after the removal",
        || async {
            let (_, body) = app.get("/reconciler").await;
            let at = body["last_run_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            match at {
                Some(at) if at > since => Ok(body),
                _ => Err(body.to_string()),
            }
        },
    )
    .await;
    assert_eq!(findings["findings"]["mode"], "watermark", "{findings}");
    assert_eq!(findings["findings"]["dangling"], 0, "{findings}");
    // The audit pass lists the whole window and finds it; its findings are the last pass.
    let (status, audited) = app.post_empty("/reconciler/audit").await;
    assert_eq!(status, 200, "{audited}");
    assert_eq!(audited["findings"]["mode"], "audit", "{audited}");
    assert_eq!(audited["findings"]["dangling"], 1, "{audited}");
    assert_eq!(audited["findings"]["inserted"], 0, "{audited}");
    assert!(audited["last_run_at"].is_string(), "{audited}");
    let (_, last) = app.get("/reconciler").await;
    assert!(
        last["findings"]["mode"] == "audit" || last["last_run_at"] != audited["last_run_at"],
        "the audit's findings, unless a periodic pass came after: {last}"
    );
    let (status, audit) = app.get("/audit").await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["dangling"], 1, "{audit}");
    assert_eq!(audit["orphans"], 0, "{audit}");
    assert_eq!(audit["references"], 1, "{audit}");
}

/// Put an object into the stream's partition the way a worker does (or, for [`Layout::Legacy`],
/// the way one did before the warehouse layout), without reporting it (a worker that died
/// between storing and reporting). Returns its result id, key and bytes.
async fn store_unreported_object(
    app: &TestApp,
    id: &str,
    layout: Layout,
) -> (uuid::Uuid, String, Bytes) {
    let store = objects::open(
        &app.store_url,
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .expect("the store");
    let result_id = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let key = format!(
        "{}{result_id}.json",
        objects::ObjectKey::day_prefix(
            layout,
            "IQAIR_DAILY",
            uuid::Uuid::parse_str(id).expect("a stream id"),
            now.date_naive()
        )
    );
    let body = Bytes::from_static(br#"{"status":"success","data":{}}"#);
    let meta = ObjectMeta {
        stream_id: id.to_owned(),
        fetched_at: now.to_rfc3339(),
        sha256: objects::sha256_hex(&body),
    };
    store
        .put(BUCKET, &key, body.clone(), &meta)
        .await
        .expect("put");
    (result_id, key, body)
}
