//! Push streams end to end: the real `data-streams` binary (SQLite + a folder store) over real
//! TCP, pushed to with reqwest (bounded and streamed bodies) and read back through the API, the
//! live channel, the bucket and DuckDB.
//!
//! 1. a bounded NDJSON push becomes objects (byte for byte), references, readings, live
//!    messages and DuckDB rows; JSON objects and arrays too;
//! 2. bad input: a malformed line (the lines before it committed, nothing after), an oversize
//!    line, a malformed JSON body (nothing), not a push stream, a stopped stream;
//! 3. `Idempotency-Key`: a finished request is replayed, a cut one resumes, nothing twice;
//! 4. a long-lived request is acknowledged while it is still being sent;
//! 5. ingest tokens open only their stream's ingest route, and revoking one closes it;
//! 6. the server SIGKILLed mid-request: every acknowledged line is stored once, and no object
//!    without a reference is left once the reconciler has passed;
//! 7. a stream's in-flight bound answers 429 with `Retry-After`;
//! 8. on PostgreSQL + S3, a store that stops taking bytes stops the client (TCP backpressure,
//!    not buffering), the server's memory stays bounded, and the push ends whole once it is back.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{
    duckdb_query, eventually, folder_store_url, object_files, sqlite_url, supervisor_env, Api, Env,
    Supervisor, API_TOKEN, BUCKET,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};

/// A supervisor alone (a push needs no worker) with its folder and database in `dir`.
struct Server {
    supervisor: Supervisor,
    env: Env,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = supervisor_env(&sqlite_url(dir.path()), &folder_store_url(dir.path()));
        for (name, value) in extra {
            env = env.set(name, *value);
        }
        let supervisor = Supervisor::start(dir.path(), &env);
        Server {
            supervisor,
            env,
            dir,
        }
    }

    fn api(&self) -> &Api {
        &self.supervisor.api
    }

    async fn push_stream(&self, body: Value) -> String {
        let (status, stream) = self.api().post("/streams", &body).await;
        assert_eq!(status, 201, "POST /streams: {stream}");
        assert_eq!(stream["status"], "running", "{stream}");
        stream["id"].as_str().expect("an id").to_owned()
    }

    /// `POST /streams/{id}/ingest` with `body` as `content_type`, with the API token unless
    /// `token` says otherwise; the status, the headers and the JSON answer.
    async fn ingest(
        &self,
        id: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        token: Option<&str>,
        key: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut request = self
            .api()
            .client
            .post(self.api().url(&format!("/streams/{id}/ingest")))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token.or(Some(API_TOKEN)) {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.expect("an answer");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, json)
    }

    /// A push of what `body` yields, sent as it yields it, acknowledged object by object
    /// (`Accept: application/x-ndjson`); not sent yet.
    fn streamed(
        &self,
        id: &str,
        body: futures::channel::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> reqwest::RequestBuilder {
        self.api()
            .client
            .post(self.api().url(&format!("/streams/{id}/ingest")))
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/x-ndjson")
            .header("accept", "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(body))
    }

    /// The raw objects of a stream's references, in result order, concatenated.
    async fn stored_bytes(&self, id: &str) -> Vec<u8> {
        let results = self.api().all_results(id).await;
        let mut ids: Vec<String> = results
            .iter()
            .map(|r| r["id"].as_str().expect("an id").to_owned())
            .collect();
        ids.sort();
        let mut all = Vec::new();
        for result in ids {
            let (status, bytes) = self
                .api()
                .get_bytes(&format!("/results/{result}/raw"))
                .await;
            assert_eq!(status, 200, "GET /results/{result}/raw");
            all.extend(bytes);
        }
        all
    }
}

/// An IQAir city object as a device would push it: one line.
fn city(i: usize) -> Value {
    json!({"city": format!("City {i}"), "state": "Mazovia", "country": "Poland",
           "location": {"type": "Point", "coordinates": [21.0 + i as f64 / 100.0, 52.2]},
           "current": {"pollution": {"ts": "2026-12-06T03:00:00.000Z", "aqius": 40 + i,
                                      "mainus": "p2", "aqicn": 20 + i, "maincn": "p2"}}})
}

fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn ids_of(answer: &Value) -> Vec<String> {
    answer["result_ids"]
        .as_array()
        .or_else(|| answer["detail"]["result_ids"].as_array())
        .expect("result_ids")
        .iter()
        .map(|v| v.as_str().expect("an id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_push_is_stored_referenced_published_and_read_by_duckdb() {
    let server = Server::start(&[]);
    let id = server
        .push_stream(
            json!({"adapter": "PUSH", "bucket_name": BUCKET, "records": "iqair",
                            "batch": {"max_records": 3}}),
        )
        .await;
    let shown = server.api().stream(&id).await;
    assert_eq!(
        shown["batch"],
        json!({"max_records": 3, "max_bytes": 8388608, "max_ms": 5000})
    );
    assert_eq!(shown["interval"], Value::Null, "{shown}");

    // The live channel, subscribed before the push.
    let mut request = format!("ws://{}/live?stream={id}", server.supervisor.http)
        .into_client_request()
        .expect("a request");
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {API_TOKEN}")).expect("a header"),
    );
    let (mut live, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the live channel");

    // Seven records and a blank line: objects of 3, 3 and 1 records.
    let mut lines: Vec<Value> = (0..7).map(city).collect();
    let mut body = ndjson(&lines[..4]);
    body.push('\n');
    body.push_str(&ndjson(&lines[4..]));
    let (status, _, answer) = server
        .ingest(&id, "application/x-ndjson", body.clone(), None, None)
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 7, "{answer}");
    assert_eq!(answer["acked_through_line"], 8, "{answer}");
    assert_eq!(answer["readings"], 7, "{answer}");
    let ids = ids_of(&answer);
    assert_eq!(ids.len(), 3, "{answer}");

    // Byte for byte, line boundaries kept (the blank line holds no record).
    let stored = server.stored_bytes(&id).await;
    assert_eq!(String::from_utf8(stored).unwrap(), ndjson(&lines));
    let results = server.api().all_results(&id).await;
    assert_eq!(results.len(), 3);
    assert!(results
        .iter()
        .all(|r| r["status"] == "ok" && r["run_id"].is_null()));

    let (status, readings) = server
        .api()
        .get(&format!("/streams/{id}/measurements?limit=100"))
        .await;
    assert_eq!(status, 200, "{readings}");
    let cities: BTreeSet<String> = readings["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["city"].as_str().expect("a city").to_owned())
        .collect();
    assert_eq!(cities.len(), 7, "{readings}");

    // Each object went out on the live channel.
    let mut announced = BTreeSet::new();
    while announced.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("a live message within 10 s")
            .expect("the channel is open")
            .expect("a message");
        let text = message.into_text().expect("text");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        if value["type"] == "result" {
            announced.insert(value["result"]["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(announced, ids.iter().cloned().collect());
    let _ = live.close(None).await;

    // A JSON object and a JSON array (a pretty-printed element is written on one line).
    lines.push(city(7));
    let (status, _, answer) = server
        .ingest(&id, "application/json", city(7).to_string(), None, None)
        .await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (202, json!(1)),
        "{answer}"
    );
    let pretty = serde_json::to_string_pretty(&city(8)).unwrap();
    let array = format!("[{}, {pretty}]", city(9));
    let (status, _, answer) = server
        .ingest(&id, "application/json", array, None, None)
        .await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (202, json!(2)),
        "{answer}"
    );

    // DuckDB reads the bucket's NDJSON objects as rows: one per record.
    let root = server.dir.path().join("objects");
    let sql = format!(
        "SELECT count(*) AS n, count(DISTINCT city) AS cities FROM read_json_auto('{}/{BUCKET}/PUSH/stream_id={id}/*/*.json')",
        root.display()
    );
    let rows = duckdb_query(server.dir.path(), &[], &sql);
    assert_eq!(rows[0]["n"], 10, "{rows:?}");
    assert_eq!(rows[0]["cities"], 10, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_where_and_keeps_what_came_before() {
    let server = Server::start(&[("INGEST_MAX_LINE_BYTES", "1000")]);
    let id = server
        .push_stream(json!({"adapter": "PUSH", "bucket_name": BUCKET, "batch": {"max_records": 2}}))
        .await;

    // Line 4 is not JSON: lines 1-3 are committed, line 5 is never read.
    let body = "{\"n\": 1}\n{\"n\": 2}\n{\"n\": 3}\n{\"n\": oops}\n{\"n\": 5}\n";
    let (status, _, answer) = server
        .ingest(&id, "application/x-ndjson", body, None, None)
        .await;
    assert_eq!(status, 400, "{answer}");
    let detail = &answer["detail"];
    assert_eq!(detail["code"], "malformed_line", "{answer}");
    assert_eq!(
        (detail["line"].clone(), detail["offset"].clone()),
        (json!(4), json!(27))
    );
    assert_eq!(detail["accepted"], 3, "{answer}");
    assert_eq!(detail["acked_through_line"], 3, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("line 4 (byte offset 27)"));
    assert_eq!(ids_of(&answer).len(), 2, "{answer}");
    assert_eq!(
        String::from_utf8(server.stored_bytes(&id).await).unwrap(),
        "{\"n\": 1}\n{\"n\": 2}\n{\"n\": 3}\n"
    );

    // A line over the limit, even one that never ends.
    let long = format!("{{\"n\": 6}}\n{{\"pad\": \"{}\"}}\n", "x".repeat(2000));
    let (status, _, answer) = server
        .ingest(&id, "application/x-ndjson", long, None, None)
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["detail"]["code"], "line_too_long", "{answer}");
    assert_eq!(answer["detail"]["line"], 2, "{answer}");
    assert_eq!(answer["detail"]["offset"], 9, "{answer}");
    assert_eq!(answer["detail"]["accepted"], 1, "{answer}");

    // A JSON body is all or nothing.
    let before = server.api().all_results(&id).await.len();
    let (status, _, answer) = server
        .ingest(
            &id,
            "application/json",
            "[{\"n\": 7}, {\"n\": }]",
            None,
            None,
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["detail"]["code"], "malformed_line", "{answer}");
    assert_eq!(answer["detail"]["accepted"], 0, "{answer}");
    assert_eq!(server.api().all_results(&id).await.len(), before);

    // Neither NDJSON nor JSON.
    let (status, _, answer) = server.ingest(&id, "text/csv", "a,b\n", None, None).await;
    assert_eq!(status, 415, "{answer}");

    // Not a push stream; a stopped one.
    let (status, other) = server
        .api()
        .post(
            "/streams",
            &json!({"adapter": "IQAIR_DAILY", "endpoint": "http://127.0.0.1:9/v2/city",
                    "secret_key": "k", "interval": 60000, "bucket_name": BUCKET,
                    "params": {"city": "Warsaw", "state": "Mazovia", "country": "Poland"},
                    "start": false}),
        )
        .await;
    assert_eq!(status, 201, "{other}");
    let other = other["id"].as_str().unwrap();
    let (status, _, answer) = server
        .ingest(other, "application/x-ndjson", "{}\n", None, None)
        .await;
    assert_eq!(
        (status, answer["detail"]["code"].clone()),
        (409, json!("conflict")),
        "{answer}"
    );
    let (status, _) = server
        .api()
        .post_empty(&format!("/streams/{id}/stop"))
        .await;
    assert_eq!(status, 200);
    let (status, _, answer) = server
        .ingest(&id, "application/x-ndjson", "{}\n", None, None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("/start"),
        "{answer}"
    );

    // A push stream takes no endpoint, key or schedule.
    let (status, refused) = server
        .api()
        .post(
            "/streams",
            &json!({"adapter": "PUSH", "bucket_name": BUCKET, "endpoint": "http://x.example",
                    "interval": 60000, "batch": {"max_records": 0}}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    let problems = refused["detail"]["problems"].to_string();
    for needle in [
        "takes no endpoint",
        "takes no interval",
        "batch.max_records",
    ] {
        assert!(problems.contains(needle), "{needle}: {problems}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_push_is_replayed_when_done_and_resumed_when_cut() {
    let server = Server::start(&[]);
    let id = server
        .push_stream(
            json!({"adapter": "PUSH", "bucket_name": BUCKET, "batch": {"max_records": 10}}),
        )
        .await;
    let lines: Vec<Value> = (0..50).map(|n| json!({"n": n})).collect();

    let (status, _, first) = server
        .ingest(
            &id,
            "application/x-ndjson",
            ndjson(&lines),
            None,
            Some("push-1"),
        )
        .await;
    assert_eq!(status, 202, "{first}");
    let (status, headers, again) = server
        .ingest(
            &id,
            "application/x-ndjson",
            ndjson(&lines),
            None,
            Some("push-1"),
        )
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again, first);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(server.api().all_results(&id).await.len(), 5);

    // A body cut after 25 lines (the client's connection fails): what arrived whole is kept,
    // and the retry with the same key stores the rest, nothing twice.
    let more: Vec<Value> = (100..150).map(|n| json!({"n": n})).collect();
    let head = Bytes::from(ndjson(&more[..25]) + "{\"n\": 1");
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(head),
        Err(std::io::Error::other("the client's connection broke")),
    ];
    let cut = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let _ = server
        .api()
        .client
        .post(server.api().url(&format!("/streams/{id}/ingest")))
        .bearer_auth(API_TOKEN)
        .header("content-type", "application/x-ndjson")
        .header("idempotency-key", "push-2")
        .body(cut)
        .send()
        .await;
    let (status, _, resumed) = eventually(Duration::from_secs(10), "the retry", || async {
        let answer = server
            .ingest(
                &id,
                "application/x-ndjson",
                ndjson(&more),
                None,
                Some("push-2"),
            )
            .await;
        // The cut attempt may still be finishing on the server.
        if answer.0 == 409 {
            Err(answer.2.to_string())
        } else {
            Ok(answer)
        }
    })
    .await;
    assert_eq!(status, 202, "{resumed}");
    assert_eq!(resumed["accepted"], 50, "{resumed}");
    assert_eq!(resumed["acked_through_line"], 50, "{resumed}");
    let all = String::from_utf8(server.stored_bytes(&id).await).unwrap();
    let expected = ndjson(&lines) + &ndjson(&more);
    let mut got: Vec<&str> = all.lines().collect();
    let mut want: Vec<&str> = expected.lines().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every line once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_push_is_acknowledged_while_it_is_sent() {
    let server = Server::start(&[]);
    let id = server
        .push_stream(json!({"adapter": "PUSH", "bucket_name": BUCKET, "batch": {"max_ms": 200}}))
        .await;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let request = server.streamed(&id, rx).send();
    let sender = tokio::spawn(async move {
        tx.send(Ok(Bytes::from("{\"n\": 1}\n{\"n\": 2}\n")))
            .await
            .unwrap();
        tx
    });
    let response = request
        .await
        .expect("the answer starts while the body is open");
    assert_eq!(response.status(), 202);
    let mut tx = sender.await.unwrap();
    let mut acks = response.bytes_stream();
    let mut buffered = Vec::new();
    let first = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), acks.next())
            .await
            .expect("an acknowledgement within 10 s while the body is still open")
            .expect("more of the answer")
            .expect("bytes");
        buffered.extend_from_slice(&chunk);
        if let Some(end) = buffered.iter().position(|b| *b == b'\n') {
            break serde_json::from_slice::<Value>(&buffered[..end]).unwrap();
        }
    };
    assert_eq!(first["acked_through_line"], 2, "{first}");
    assert_eq!(first["accepted"], 2, "{first}");
    // The result is referenced already, while the request goes on.
    assert_eq!(server.api().all_results(&id).await.len(), 1);
    tx.send(Ok(Bytes::from("{\"n\": 3}\n"))).await.unwrap();
    drop(tx);
    let mut rest = buffered;
    while let Some(chunk) = acks.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let last: Value = serde_json::from_slice(
        rest.split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["accepted"], 3, "{last}");
    assert_eq!(last["result_ids"].as_array().unwrap().len(), 2, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_tokens_open_their_own_stream_only_until_revoked() {
    let server = Server::start(&[]);
    let body = json!({"adapter": "PUSH", "bucket_name": BUCKET});
    let (a, b) = (
        server.push_stream(body.clone()).await,
        server.push_stream(body).await,
    );
    let (status, token) = server
        .api()
        .post(
            &format!("/streams/{a}/tokens"),
            &json!({"name": "sensor 7"}),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let secret = token["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("dsi_"), "{token}");
    let (status, listed) = server.api().get(&format!("/streams/{a}/tokens")).await;
    assert_eq!(status, 200);
    assert_eq!(listed[0]["name"], "sensor 7");
    assert!(
        !listed.to_string().contains(&secret),
        "a token is shown once only"
    );

    let push = |id: &str, token: &str| {
        let (id, token) = (id.to_owned(), token.to_owned());
        let server = &server;
        async move {
            server
                .ingest(
                    &id,
                    "application/x-ndjson",
                    "{\"n\": 1}\n",
                    Some(&token),
                    None,
                )
                .await
        }
    };
    assert_eq!(push(&a, &secret).await.0, 202);
    let (status, _, answer) = push(&b, &secret).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(push(&a, "dsi_not-a-token").await.0, 401);
    // Not the API token: the other routes refuse it.
    let with_token = server.api().with_token(Some(&secret));
    assert_eq!(with_token.get("/streams").await.0, 401);
    assert_eq!(
        with_token.get(&format!("/streams/{a}/results")).await.0,
        401
    );
    assert_eq!(
        with_token
            .post(&format!("/streams/{a}/tokens"), &json!({}))
            .await
            .0,
        401
    );

    let token_id = token["id"].as_str().unwrap();
    let (status, _) = server
        .api()
        .delete(&format!("/streams/{a}/tokens/{token_id}"))
        .await;
    assert_eq!(status, 204);
    assert_eq!(push(&a, &secret).await.0, 401);
    let (_, listed) = server.api().get(&format!("/streams/{a}/tokens")).await;
    assert!(listed[0]["revoked_at"].is_string(), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_push_keeps_every_acknowledged_line_once_and_nothing_else() {
    let mut server = Server::start(&[("PUSH_ORPHAN_AGE_MS", "1000")]);
    let id = server
        .push_stream(
            json!({"adapter": "PUSH", "bucket_name": BUCKET, "batch": {"max_records": 100}}),
        )
        .await;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let response = server.streamed(&id, rx);
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let chunk: String = (n..n + 50).map(|i| format!("{{\"n\": {i}}}\n")).collect();
            n += 50;
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let response = response.send().await.expect("the answer starts");
    let mut acks = response.bytes_stream();
    let mut acked_lines = 0u64;
    let mut buffered = Vec::new();
    while acked_lines < 1000 {
        let chunk = acks.next().await.expect("acknowledgements").expect("bytes");
        buffered.extend_from_slice(&chunk);
        while let Some(end) = buffered.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffered.drain(..=end).collect();
            let ack: Value = serde_json::from_slice(&line).unwrap();
            acked_lines = ack["acked_through_line"].as_u64().unwrap_or(acked_lines);
        }
    }
    server.supervisor.proc.kill();
    writer.abort();

    let env = server.supervisor.same_ports(&server.env);
    server.supervisor = Supervisor::start(server.dir.path(), &env);
    // The reconciler removes any object a commit never referenced (intents older than 1 s).
    let objects_root = server.dir.path().join("objects");
    let referenced = eventually(
        Duration::from_secs(30),
        "no unreferenced object",
        || async {
            let results = server.api().all_results(&id).await;
            let files = object_files(&objects_root).len();
            if files == results.len() {
                Ok(results.len())
            } else {
                Err(format!("{files} objects, {} references", results.len()))
            }
        },
    )
    .await;
    assert!(referenced >= 10, "{referenced} objects");
    let stored = String::from_utf8(server.stored_bytes(&id).await).unwrap();
    let numbers: Vec<u64> = stored
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let unique: BTreeSet<u64> = numbers.iter().copied().collect();
    assert_eq!(unique.len(), numbers.len(), "a line stored twice");
    for n in 0..acked_lines {
        assert!(
            unique.contains(&n),
            "acknowledged line {} is missing",
            n + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_its_in_flight_bound_answers_429_with_retry_after() {
    // One request of this stream reserves its batch (1 MiB) and a line (1 MiB): the bound.
    let server = Server::start(&[("INGEST_STREAM_INFLIGHT_BYTES", "2097152")]);
    let id = server
        .push_stream(json!({"adapter": "PUSH", "bucket_name": BUCKET,
                            "batch": {"max_bytes": 1048576}}))
        .await;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let open = server.streamed(&id, rx).send();
    tx.send(Ok(Bytes::from("{\"n\": 1}\n"))).await.unwrap();
    let open = open.await.expect("the first push runs");
    assert_eq!(open.status(), 202);
    let (status, headers, answer) = server
        .ingest(&id, "application/x-ndjson", "{\"n\": 2}\n", None, None)
        .await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(answer["detail"]["code"], "stream_busy", "{answer}");
    drop(tx);
    let _ = open.bytes().await;
    // Once the first is done, the bound is free again.
    let (status, _, answer) = server
        .ingest(&id, "application/x-ndjson", "{\"n\": 2}\n", None, None)
        .await;
    assert_eq!(status, 202, "{answer}");
}

/// The server's resident memory, from `/proc`.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_store_stops_the_client_and_the_server_holds_no_more() {
    // PostgreSQL + S3, the store behind a proxy that can stop carrying bytes.
    let dir = tempfile::tempdir().expect("tempdir");
    let database = support::TestDatabase::create("ds_push");
    let s3 = objects::test_server::S3TestServer::start();
    let proxy = support::TcpProxy::start(s3.endpoint.trim_start_matches("http://").to_owned());
    let mut env = supervisor_env(&database.url, "s3://");
    for (name, value) in s3.env() {
        env = env.set(name, value);
    }
    env = env.set("AWS_ENDPOINT_URL", format!("http://{}", proxy.address));
    let supervisor = Supervisor::start(dir.path(), &env);
    let pid = supervisor.proc.child.id();
    let api = supervisor.api.clone();
    let (status, stream) = api
        .post(
            "/streams",
            &json!({"adapter": "PUSH", "bucket_name": BUCKET, "batch": {"max_bytes": 1048576}}),
        )
        .await;
    assert_eq!(status, 201, "{stream}");
    let id = stream["id"].as_str().unwrap().to_owned();

    // 96 MiB of 1 KB lines, counted as the client hands them to the connection.
    let line = format!("{{\"pad\": \"{}\"}}\n", "x".repeat(1024 - 12));
    let chunk = Bytes::from(line.repeat(1024));
    let chunks = 96u64;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let body = {
        let (sent, chunk) = (sent.clone(), chunk.clone());
        futures::stream::iter(0..chunks).map(move |_| {
            sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok::<Bytes, std::io::Error>(chunk.clone())
        })
    };
    // A client of its own: the shared one gives up after 30 s, and this push waits out the stall.
    let push = tokio::spawn(
        reqwest::Client::new()
            .post(api.url(&format!("/streams/{id}/ingest")))
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/x-ndjson")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    let sent_now = || sent.load(std::sync::atomic::Ordering::Relaxed);
    eventually(Duration::from_secs(30), "the push flowing", || async {
        (sent_now() >= 8 << 20).then_some(())
    })
    .await;

    // The store stops: after the buffers between the two fill, the client cannot send.
    proxy.freeze();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sent_now();
    let mut peak_rss: f64 = 0.0;
    for _ in 0..30 {
        peak_rss = peak_rss.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = sent_now() - before;
    eprintln!(
        "stalled store: the client had sent {before} bytes; {during} more in 3 s of stall; \
         server RSS peak {peak_rss:.1} MiB"
    );
    assert!(
        during <= 1 << 20,
        "the client sent {during} bytes in 3 s while the store took nothing"
    );
    assert!(
        before < chunks * chunk.len() as u64,
        "the whole body went through before the stall"
    );
    assert!(
        peak_rss < 150.0,
        "the server held {peak_rss:.0} MiB while stalled"
    );

    // The store is back: the push finishes and every line is stored once.
    proxy.thaw();
    let response = tokio::time::timeout(Duration::from_secs(120), push)
        .await
        .expect("the push ends once the store is back")
        .expect("the task")
        .expect("an answer");
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["accepted"], chunks * 1024, "{answer}");
    let results = api.all_results(&id).await;
    let size: u64 = results.iter().map(|r| r["size"].as_u64().unwrap()).sum();
    assert_eq!(size, chunks * chunk.len() as u64, "every byte stored once");
    eprintln!("stalled store: {} objects after the thaw", results.len());
    drop(supervisor);
}
