//! What the caller got wrong comes back as a 4xx with `{"error": ..., "detail": ...}` JSON.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{spawn_app, spawn_app_with, AppOptions, TestApp, API_TOKEN};

/// Asserts the error shape and returns the problems (for 422s) or the message.
fn assert_error(status: u16, body: &Value, want: u16) -> String {
    assert_eq!(status, want, "{body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {body}"));
    assert!(
        obj.get("error")
            .and_then(Value::as_str)
            .is_some_and(|e| !e.is_empty()),
        "no error text: {body}"
    );
    assert!(obj.contains_key("detail"), "no detail: {body}");
    body.to_string()
}

/// POST /streams with `body` changed by `edit`; expects `want` and a problem mentioning
/// `needle`.
async fn rejected(app: &TestApp, edit: impl FnOnce(&mut Value), want: u16, needle: &str) {
    let mut body = app.stream_json(300_000);
    edit(&mut body);
    let (status, err) = app.post("/streams", &body).await;
    let text = assert_error(status, &err, want);
    assert!(
        text.contains(needle),
        "{needle:?} not in the error for {body}: {text}"
    );
    let (_, list) = app.get("/streams").await;
    assert_eq!(list, json!([]), "nothing was created for {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_streams_are_refused_with_the_reason() {
    let app = spawn_app().await;
    rejected(&app, |b| b["adapter"] = json!("OPENAQ"), 422, "adapter").await;
    rejected(&app, |b| b["interval"] = json!(0), 422, "interval").await;
    rejected(&app, |b| b["interval"] = json!(500), 422, "interval").await;
    rejected(&app, |b| b["interval"] = json!(-5), 400, "interval").await;
    rejected(&app, |b| b["secret_key"] = json!(""), 422, "secret_key").await;
    // Optional in the schema (a PUSH stream has none), required for every other adapter.
    rejected(
        &app,
        |b| {
            b.as_object_mut().unwrap().remove("secret_key");
        },
        422,
        "secret_key is required",
    )
    .await;
    rejected(
        &app,
        |b| {
            b.as_object_mut().unwrap().remove("endpoint");
        },
        422,
        "endpoint is required",
    )
    .await;
    rejected(&app, |b| b["colour"] = json!("blue"), 400, "colour").await;
    rejected(&app, |b| b["params"]["lat"] = json!(95.0), 422, "lat").await;
    rejected(
        &app,
        |b| {
            b["params"].as_object_mut().unwrap().remove("lon");
        },
        422,
        "lon",
    )
    .await;
    rejected(&app, |b| b["params"]["zip"] = json!("10115"), 422, "zip").await;
    rejected(&app, |b| b["cron"] = json!("0 * * * * *"), 422, "not both").await;
    rejected(
        &app,
        |b| {
            b.as_object_mut().unwrap().remove("interval");
            b["cron"] = json!("every tuesday");
        },
        422,
        "cron",
    )
    .await;
    rejected(
        &app,
        |b| {
            b.as_object_mut().unwrap().remove("interval");
        },
        422,
        "interval",
    )
    .await;
    rejected(
        &app,
        |b| b["endpoint"] = json!("ftp://example.com"),
        422,
        "endpoint",
    )
    .await;
    rejected(
        &app,
        |b| b["bucket_name"] = json!("Bad_Bucket"),
        422,
        "bucket_name",
    )
    .await;
    rejected(&app, |b| b["timeout"] = json!(10), 422, "timeout").await;

    // Every problem at once.
    let mut body = app.stream_json(5);
    body["adapter"] = json!("NOPE");
    body["secret_key"] = json!(" ");
    let (status, err) = app.post("/streams", &body).await;
    assert_error(status, &err, 422);
    let problems = err["detail"]["problems"].as_array().expect("problems");
    assert!(problems.len() >= 3, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_415_and_413() {
    let app = spawn_app_with(AppOptions {
        max_body_bytes: 4 * 1024,
        ..AppOptions::default()
    })
    .await;
    let (status, err) = app
        .send_raw(
            Method::POST,
            "/streams",
            Some("application/json"),
            b"{\"adapter\": ".to_vec(),
        )
        .await;
    let text = assert_error(status, &err, 400);
    assert!(text.contains("malformed JSON"), "{text}");

    let (status, err) = app
        .send_raw(
            Method::POST,
            "/streams",
            Some("text/plain"),
            app.stream_json(300_000).to_string().into_bytes(),
        )
        .await;
    assert_error(status, &err, 415);
    let (status, err) = app
        .send_raw(
            Method::POST,
            "/streams",
            None,
            app.stream_json(300_000).to_string().into_bytes(),
        )
        .await;
    assert_error(status, &err, 415);

    let mut big = app.stream_json(300_000);
    big["endpoint"] = json!(format!("http://example.com/{}", "x".repeat(8 * 1024)));
    let (status, err) = app.post("/streams", &big).await;
    assert_error(status, &err, 413);

    // The same on PATCH.
    let id = app.create_stopped().await;
    let (status, err) = app
        .send_raw(
            Method::PATCH,
            &format!("/streams/{id}"),
            Some("application/json"),
            b"[1, 2".to_vec(),
        )
        .await;
    assert_error(status, &err, 400);
    let (status, err) = app
        .patch(&format!("/streams/{id}"), &json!({"colour": "blue"}))
        .await;
    assert_error(status, &err, 400);
    let (status, err) = app
        .patch(
            &format!("/streams/{id}"),
            &json!({"interval": 60_000, "cron": "0 * * * * *"}),
        )
        .await;
    let text = assert_error(status, &err, 422);
    assert!(text.contains("not both"), "{text}");
    let (status, err) = app
        .patch(&format!("/streams/{id}"), &json!({"cron": "61 * * * * *"}))
        .await;
    assert_error(status, &err, 422);
    let (status, err) = app
        .patch(&format!("/streams/{id}"), &json!({"params": {"lat": 1}}))
        .await;
    let text = assert_error(status, &err, 422);
    assert!(text.contains("lon"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_404_and_malformed_ids_400() {
    let app = spawn_app().await;
    let unknown = uuid::Uuid::now_v7();
    for (method, path) in [
        (Method::GET, format!("/streams/{unknown}")),
        (Method::DELETE, format!("/streams/{unknown}")),
        (Method::POST, format!("/streams/{unknown}/start")),
        (Method::POST, format!("/streams/{unknown}/stop")),
        (Method::GET, format!("/streams/{unknown}/results")),
        (Method::GET, format!("/streams/{unknown}/measurements")),
        (Method::GET, format!("/results/{unknown}/raw")),
        (Method::GET, "/no/such/route".to_owned()),
    ] {
        let (status, err) = app.send_raw(method.clone(), &path, None, vec![]).await;
        assert_error(status, &err, 404);
    }
    let (status, err) = app
        .patch(&format!("/streams/{unknown}"), &json!({"interval": 60_000}))
        .await;
    assert_error(status, &err, 404);

    for (method, path) in [
        (Method::GET, "/streams/not-a-uuid".to_owned()),
        (Method::GET, "/streams/%FF%FE".to_owned()),
        (Method::DELETE, "/streams/12345".to_owned()),
        (Method::POST, "/streams/nope/start".to_owned()),
        (Method::POST, "/streams/nope/stop".to_owned()),
        (Method::GET, "/streams/nope/results".to_owned()),
        (Method::GET, "/streams/nope/measurements".to_owned()),
        (Method::GET, "/results/nope/raw".to_owned()),
    ] {
        let (status, err) = app.send_raw(method.clone(), &path, None, vec![]).await;
        assert_error(status, &err, 400);
    }
    let (status, err) = app
        .patch("/streams/nope", &json!({"interval": 60_000}))
        .await;
    assert_error(status, &err, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_400() {
    let app = spawn_app().await;
    let id = app.create_stopped().await;
    for query in [
        "results?limit=0",
        "results?limit=abc",
        "results?limit=100000",
        "results?after=not-a-cursor",
        "results?limit=1&limit=2",
        "measurements?from=yesterday",
        "measurements?to=2026-13-01T00:00:00Z",
        "measurements?from=1&from=2",
    ] {
        let (status, err) = app.get(&format!("/streams/{id}/{query}")).await;
        let text = assert_error(status, &err, 400);
        assert!(!text.is_empty(), "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_401_while_health_stays_open() {
    let app = spawn_app().await;
    let id = app.create_stopped().await;
    let protected = [
        (Method::GET, "/streams".to_owned()),
        (Method::POST, "/streams".to_owned()),
        (Method::GET, format!("/streams/{id}")),
        (Method::PATCH, format!("/streams/{id}")),
        (Method::DELETE, format!("/streams/{id}")),
        (Method::POST, format!("/streams/{id}/start")),
        (Method::POST, format!("/streams/{id}/stop")),
        (Method::GET, format!("/streams/{id}/results")),
        (Method::GET, format!("/streams/{id}/measurements")),
        (Method::GET, format!("/results/{id}/raw")),
        (Method::GET, "/workers".to_owned()),
        (Method::GET, "/metrics".to_owned()),
        (Method::GET, "/reconciler".to_owned()),
        (Method::POST, "/reconciler/audit".to_owned()),
    ];
    for (method, path) in &protected {
        for auth in [
            None,
            Some("Bearer not-the-token".to_owned()),
            Some(format!("Basic {API_TOKEN}")),
            Some(format!("Bearer {API_TOKEN}x")),
        ] {
            let mut req = app
                .anonymous
                .request(method.clone(), path)
                .header("content-type", "application/json")
                .body(app.stream_json(300_000).to_string());
            if let Some(auth) = &auth {
                req = req.header("authorization", auth);
            }
            let resp = req.send().await.expect("request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("a JSON error");
            let text = assert_error(status, &body, 401);
            assert!(
                !text.contains(API_TOKEN),
                "the error shows the token: {text}"
            );
        }
    }
    // Nothing changed through any of that.
    assert_eq!(app.stream(&id).await["status"], "stopped");
    let (_, list) = app.get("/streams").await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    for path in ["/healthz", "/readyz"] {
        let resp = app
            .anonymous
            .request(Method::GET, path)
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
}
