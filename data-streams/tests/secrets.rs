//! Secrets never leak: the real binaries (iqair-sim, data-streams, a worker) run at `trace` for
//! the workspace's own crates, streams are created, changed and made to fail with distinctive
//! canary secrets, every API answer we can provoke is read, and then no log line of any process
//! and no answer may hold an IQAir key, the worker token or the API token. The worker link runs
//! through a recording loopback proxy, and the worker token must not be in its bytes either way.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    eventually, folder_store_url, iqair_stream, nearest_city, sim_env, sqlite_url, start_sim,
    start_worker, supervisor_env, worker_env, Supervisor, TcpProxy,
};

/// Our crates at trace; chatty dependencies at info (their own lines do not see our secrets, and
/// at trace they would drown the logs).
const RUST_LOG: &str = "trace,hyper=info,h2=info,tower=info,rustls=info,aws=info,sqlx=info";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_an_api_answer_or_the_wire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let good_key = format!("sk-LEAK-CANARY-good-{run}");
    let new_key = format!("sk-LEAK-CANARY-new-{run}");
    let bad_key = format!("sk-LEAK-CANARY-bad-{run}");
    let worker_token = format!("wt-LEAK-CANARY-{run}");
    let api_token = format!("at-LEAK-CANARY-{run}");
    let secrets = [&good_key, &new_key, &bad_key, &worker_token, &api_token];

    let (sim, sim_addr) = start_sim(
        dir,
        &sim_env()
            .set("IQAIR_SIM_KEYS", format!("{good_key},{new_key}"))
            .set("RUST_LOG", RUST_LOG),
    );
    let supervisor = Supervisor::start(
        dir,
        &supervisor_env(&sqlite_url(dir), &folder_store_url(dir))
            .set("DATA_STREAMS_WORKER_TOKEN", &worker_token)
            .set("DATA_STREAMS_API_TOKEN", &api_token)
            .set("RUST_LOG", RUST_LOG),
    );
    // The worker link runs through a proxy that keeps every byte.
    let proxy = TcpProxy::recording(supervisor.workers.clone());
    let worker = start_worker(
        dir,
        "secrets-worker",
        &worker_env(&proxy.address.to_string(), &folder_store_url(dir))
            .set("DATA_STREAMS_WORKER_TOKEN", &worker_token)
            .unset("WORKER_RECONNECT_MAX_MS")
            .set("RUST_LOG", RUST_LOG)
            .set("NO_COLOR", "1"),
    );

    let api = &supervisor.api;
    let open = api.with_token(None);
    // Every answer body, to search at the end.
    let mut answers: Vec<String> = Vec::new();
    let stream = |key: &str| iqair_stream(&nearest_city(&sim_addr), key, 1000);

    let (status, good) = api.post("/streams", &stream(&good_key)).await;
    assert_eq!(status, 201, "{good}");
    assert_eq!(good["secret_key"], "***", "{good}");
    answers.push(good.to_string());
    let good_id = good["id"].as_str().expect("an id").to_owned();
    let (status, bad) = api.post("/streams", &stream(&bad_key)).await;
    assert_eq!(status, 201, "{bad}");
    answers.push(bad.to_string());
    let bad_id = bad["id"].as_str().expect("an id").to_owned();

    // The simulator refuses the bad key: the stream fails and waits for a person.
    let failed = eventually(
        Duration::from_secs(30),
        "the stream with the bad key to fail",
        || async {
            let (_, s) = api.get(&format!("/streams/{bad_id}")).await;
            (s["status"] == "failed").then_some(s)
        },
    )
    .await;
    answers.push(failed.to_string());
    eventually(Duration::from_secs(30), "2 results", || async {
        (api.result_count(&good_id).await >= 2).then_some(())
    })
    .await;

    // A new key through PATCH, and a run with it.
    let patched = api
        .request(reqwest::Method::PATCH, &format!("/streams/{good_id}"))
        .json(&json!({"secret_key": new_key}))
        .send()
        .await
        .expect("PATCH");
    let status = patched.status().as_u16();
    let patched = patched.text().await.expect("body");
    assert_eq!(status, 200, "{patched}");
    answers.push(patched.clone());
    let before = api.result_count(&good_id).await;
    eventually(
        Duration::from_secs(30),
        "results with the new key",
        || async { (api.result_count(&good_id).await >= before + 2).then_some(()) },
    )
    .await;

    // Requests that are wrong, each carrying a key: the error answers must not repeat it.
    let raw = |method: reqwest::Method, path: String, body: String, auth: bool| {
        let req = if auth { api } else { &open }
            .request(method, &path)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let resp = req.send().await.expect("request");
            (resp.status().as_u16(), resp.text().await.expect("body"))
        }
    };
    let mut bad_interval = stream(&good_key);
    bad_interval["interval"] = json!(-5);
    let mut wrong_type = stream(&good_key);
    wrong_type["interval"] = json!("every so often");
    let mut odd_key = stream(&format!("{good_key} \u{7}"));
    odd_key["interval"] = json!(1000);
    let mut missing_bucket = stream(&good_key);
    missing_bucket["bucket_name"] = json!("");
    let truncated = format!("{{\"secret_key\": \"{good_key}\", \"interval\": ");
    let post = reqwest::Method::POST;
    let patch = reqwest::Method::PATCH;
    for (method, path, body, auth) in [
        (
            post.clone(),
            "/streams".to_owned(),
            bad_interval.to_string(),
            true,
        ),
        (
            post.clone(),
            "/streams".to_owned(),
            wrong_type.to_string(),
            true,
        ),
        (
            post.clone(),
            "/streams".to_owned(),
            odd_key.to_string(),
            true,
        ),
        (
            post.clone(),
            "/streams".to_owned(),
            missing_bucket.to_string(),
            true,
        ),
        (post.clone(), "/streams".to_owned(), truncated.clone(), true),
        (
            post.clone(),
            "/streams".to_owned(),
            stream(&good_key).to_string(),
            false,
        ),
        (
            patch.clone(),
            format!("/streams/{good_id}"),
            json!({"secret_key": good_key, "interval": 0}).to_string(),
            true,
        ),
        (
            patch.clone(),
            format!("/streams/{good_id}"),
            json!({"secret_key": 42}).to_string(),
            true,
        ),
        (
            patch.clone(),
            "/streams/not-a-stream".to_owned(),
            json!({"secret_key": good_key}).to_string(),
            true,
        ),
    ] {
        let (status, text) = raw(method.clone(), path.clone(), body, auth).await;
        assert!(
            (400..500).contains(&status),
            "{method} {path}: {status} {text}"
        );
        answers.push(text);
    }

    // Every read the API offers.
    let mut paths = vec![
        "/streams".to_owned(),
        "/workers".to_owned(),
        "/metrics".to_owned(),
        "/reconciler".to_owned(),
        "/audit".to_owned(),
        "/healthz".to_owned(),
        "/readyz".to_owned(),
    ];
    for id in [&good_id, &bad_id] {
        paths.push(format!("/streams/{id}"));
        paths.push(format!("/streams/{id}/results?limit=1000"));
        paths.push(format!("/streams/{id}/measurements"));
        paths.push(format!("/streams/{id}/failures"));
    }
    for path in &paths {
        let (status, body) = api.get_bytes(path).await;
        assert!(status < 500, "GET {path}: {status}");
        answers.push(String::from_utf8_lossy(&body).into_owned());
    }
    let (_, streams) = api.get("/streams").await;
    let listed: Vec<&Value> = match streams.as_array() {
        Some(items) => items.iter().collect(),
        None => streams["items"]
            .as_array()
            .expect("streams")
            .iter()
            .collect(),
    };
    assert!(listed.len() >= 2, "{streams}");
    for s in listed {
        assert_eq!(s["secret_key"], "***", "{s}");
    }
    let results = api.all_results(&good_id).await;
    let result_id = results[0]["id"].as_str().expect("a result id");
    let (status, raw_object) = api.get_bytes(&format!("/results/{result_id}/raw")).await;
    assert_eq!(status, 200);
    answers.push(String::from_utf8_lossy(&raw_object).into_owned());

    // Let the processes write their last lines, then stop them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut procs = [worker, supervisor.proc, sim];
    for p in procs.iter_mut() {
        p.terminate(Duration::from_secs(15));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut leaks = Vec::new();
    for p in &procs {
        let log = p.log_text();
        assert!(!log.is_empty(), "{} logged nothing", p.name);
        if p.name != "iqair-sim" {
            // Our own debug lines are in what was searched.
            assert!(
                log.contains("DEBUG"),
                "{} logged no debug line:\n{log}",
                p.name
            );
        }
        for line in log.lines() {
            if secrets.iter().any(|s| line.contains(s.as_str())) {
                leaks.push(format!("{} log: {line}", p.name));
            }
        }
    }
    for answer in &answers {
        if secrets.iter().any(|s| answer.contains(s.as_str())) {
            leaks.push(format!("API answer: {answer}"));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));

    let (up, down) = proxy.recorded();
    assert!(
        !up.is_empty() && !down.is_empty(),
        "nothing crossed the proxy"
    );
    assert!(
        !contains(&up, worker_token.as_bytes()),
        "the worker token went to the supervisor in clear"
    );
    assert!(
        !contains(&down, worker_token.as_bytes()),
        "the worker token came from the supervisor in clear"
    );
}
