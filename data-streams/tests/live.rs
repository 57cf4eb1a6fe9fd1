//! The live channel (`GET /live`) against an in-process supervisor, fed by a hand-driven
//! worker: a result reaches its subscribers after its commit and a replay is not news, filters
//! pick streams, a client that stops reading slows no commit and later learns what it missed,
//! and the token (or a console session) is enforced.

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use protocol::{Event, FailureClass, RunFailure};
use serde_json::{json, Value};
use support::{reading, result, spawn_app, RawWorker, TestApp, API_TOKEN, T0};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a test presents itself to `/live`.
enum Credential<'a> {
    Bearer(&'a str),
    Cookie(String),
    Nothing,
}

/// Connect to `/live?<query>`.
async fn connect(
    app: &TestApp,
    query: &str,
    credential: Credential<'_>,
) -> Result<Socket, WsError> {
    let url = format!("ws://{}/live?{query}", app.http_addr());
    let mut request = url.into_client_request()?;
    let value = match credential {
        Credential::Bearer(token) => Some((header::AUTHORIZATION, format!("Bearer {token}"))),
        Credential::Cookie(cookie) => Some((header::COOKIE, cookie)),
        Credential::Nothing => None,
    };
    if let Some((name, value)) = value {
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(&value).expect("a header"));
    }
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

async fn subscribe(app: &TestApp, query: &str) -> Socket {
    connect(app, query, Credential::Bearer(API_TOKEN))
        .await
        .expect("the live channel accepts the token")
}

/// The next JSON message, within 10 s.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket stays open")
            .expect("a frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// No message within `quiet`.
async fn nothing_for(socket: &mut Socket, quiet: Duration) {
    if let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(quiet, socket.next()).await {
        panic!("expected no message, got {text}");
    }
}

/// A running app with a stopped stream (no worker runs it) and a hand-driven worker.
async fn app_with_streams(n: usize) -> (TestApp, Vec<Uuid>, RawWorker) {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(Uuid::parse_str(&app.create_stopped().await).expect("an id"));
    }
    let raw = RawWorker::connect(app.worker_addr, "raw-worker").await;
    (app, ids, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_reaches_its_subscriber_after_the_commit_and_a_replay_is_not_news() {
    let (app, ids, mut raw) = app_with_streams(1).await;
    let stream = ids[0];
    let mut socket = subscribe(&app, &format!("stream={stream}")).await;

    let record = result(stream, T0 + 5_000, Some(reading(T0, 142.0)));
    raw.link
        .event(1, Event::Results(record.clone().into()))
        .await
        .expect("sent");
    let message = next(&mut socket).await;
    // The reference is there by the time the message is: published after the commit.
    let stored = app.db().get_result(record.result_id).await.expect("a read");
    assert!(stored.is_some(), "the message came before the commit");
    assert_eq!(message["type"], "result");
    assert_eq!(message["stream_id"], stream.to_string());
    assert_eq!(message["result"]["id"], record.result_id.to_string());
    assert_eq!(message["result"]["status"], "ok");
    assert_eq!(message["measurement"]["aqius"], 142.0);
    assert_eq!(message["measurement"]["city"], "Berlin");
    assert!(message["committed_at"].is_string());
    // The same shapes as the list APIs.
    let (_, results) = app.get(&format!("/streams/{stream}/results")).await;
    assert_eq!(message["result"], results["items"][0]);
    let (_, readings) = app.get(&format!("/streams/{stream}/measurements")).await;
    assert_eq!(message["measurement"], readings["items"][0]);
    raw.wait_ack(1).await;

    // A replay stores nothing new, so it is not published; the next message is the failure.
    raw.link
        .event(2, Event::Results(record.clone().into()))
        .await
        .expect("sent");
    let failure = RunFailure {
        run_id: Uuid::now_v7(),
        stream_id: stream,
        at_ms: T0 + 6_000,
        class: FailureClass::Timeout,
        message: "no complete answer within 100 ms".into(),
        stream_stopped: false,
        scheduled_at_ms: T0 + 6_000,
        started_at_ms: T0 + 6_000,
        attempts: 1,
    };
    raw.link
        .event(3, Event::RunFailed(failure.clone().into()))
        .await
        .expect("sent");
    raw.wait_ack(3).await;
    let message = next(&mut socket).await;
    assert_eq!(message["type"], "failure", "{message}");
    assert_eq!(message["failure"]["run_id"], failure.run_id.to_string());
    assert_eq!(message["failure"]["class"], "timeout");

    // A second result of the same pollution hour is a result without a new reading.
    let again = result(stream, T0 + 7_000, Some(reading(T0, 142.0)));
    raw.link
        .event(4, Event::Results(again.clone().into()))
        .await
        .expect("sent");
    let message = next(&mut socket).await;
    assert_eq!(message["result"]["id"], again.result_id.to_string());
    assert_eq!(
        message["measurement"],
        Value::Null,
        "the hour was already stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_deliver_only_the_streams_asked_for() {
    let (app, ids, mut raw) = app_with_streams(3).await;
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut only_a = subscribe(&app, &format!("stream={a}")).await;
    let mut b_and_c = subscribe(&app, &format!("stream={b}&stream={c}")).await;
    let mut everything = subscribe(&app, "").await;

    for (seq, stream) in [(1, a), (2, b), (3, c)] {
        let record = result(stream, T0 + seq as i64 * 1_000, None);
        raw.link
            .event(seq, Event::Results(record.into()))
            .await
            .expect("sent");
    }
    raw.wait_ack(3).await;
    assert_eq!(next(&mut only_a).await["stream_id"], a.to_string());
    assert_eq!(next(&mut b_and_c).await["stream_id"], b.to_string());
    assert_eq!(next(&mut b_and_c).await["stream_id"], c.to_string());
    let seen: Vec<Value> = vec![
        next(&mut everything).await["stream_id"].clone(),
        next(&mut everything).await["stream_id"].clone(),
        next(&mut everything).await["stream_id"].clone(),
    ];
    assert_eq!(seen, [json!(a), json!(b), json!(c)], "in commit order");
    nothing_for(&mut only_a, Duration::from_millis(500)).await;

    // A change of a stream is news for its subscribers too.
    let (status, _) = app.post_empty(&format!("/streams/{a}/start")).await;
    assert_eq!(status, 200);
    let change = next(&mut only_a).await;
    assert_eq!(change["type"], "stream");
    assert_eq!(change["stream"]["id"], a.to_string());
    assert_ne!(change["stream"]["status"], "stopped");

    let (status, body) = app.anonymous.get("/live?stream=nope").await;
    assert_eq!(status, 401, "the token comes first: {body}");
    let (status, body) = app.get("/live?stream=nope").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_slows_no_commit_and_learns_what_it_missed() {
    let (app, ids, mut raw) = app_with_streams(1).await;
    let stream = ids[0];
    // Each batch: 500 results, sent and committed (acknowledged).
    let mut seq = 0u64;
    let mut fetched = T0;
    let mut commit = || {
        let events: Vec<Event> = (0..500)
            .map(|_| {
                seq += 1;
                fetched += 1;
                Event::Results(result(stream, fetched, None).into())
            })
            .collect();
        (seq, events)
    };
    async fn send(raw: &mut RawWorker, last: u64, events: Vec<Event>) {
        let first = last + 1 - events.len() as u64;
        for (i, event) in events.into_iter().enumerate() {
            raw.link.event(first + i as u64, event).await.expect("sent");
        }
        raw.wait_ack(last).await;
    }
    // Enough that a client's queue (1,024) and the socket's buffers (a few MiB) overflow.
    let batches = 30;
    let started = Instant::now();
    for _ in 0..batches {
        let (last, events) = commit();
        send(&mut raw, last, events).await;
    }
    let without = (batches * 500) as f64 / started.elapsed().as_secs_f64();

    // A client that subscribes to everything and then reads nothing.
    let mut stalled = subscribe(&app, "").await;
    let started = Instant::now();
    for _ in 0..batches {
        let (last, events) = commit();
        send(&mut raw, last, events).await;
    }
    let with = (batches * 500) as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "commits/s: {without:.0} without a client, {with:.0} with a client that stopped reading"
    );
    // Every commit above went through (a publisher that waited for the client would have
    // stopped at the first full queue). The rate is printed, not held to a tight bound: a shared
    // 2-core machine varies by tens of percent, and the work of serializing the messages for
    // the client is real (BENCHMARKS.md measures it with 1,000 clients).
    assert!(
        with >= without * 0.25,
        "a stalled client slowed commits from {without:.0}/s to {with:.0}/s"
    );

    // It reads again: what did not fit in its queue (and its socket) is reported as dropped.
    let mut received = 0u64;
    let mut dropped = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received + dropped < (batches * 500) as u64 && Instant::now() < deadline {
        let message = next(&mut stalled).await;
        match message["type"].as_str() {
            Some("result") => received += 1,
            Some("lagged") => dropped += message["dropped"].as_u64().expect("a count"),
            _ => {}
        }
    }
    assert_eq!(
        received + dropped,
        (batches * 500) as u64,
        "every result accounted for"
    );
    assert!(
        dropped > 0,
        "15,000 results do not fit a queue of 1,024 and a socket"
    );
    let _ = stalled.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_channel_needs_the_token_or_a_session() {
    let app = spawn_app().await;
    for credential in [Credential::Nothing, Credential::Bearer("not-the-token")] {
        match connect(&app, "", credential).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
            Err(other) => panic!("expected 401, got {other}"),
            Ok(_) => panic!("the live channel let a client in without the token"),
        }
    }
    assert!(connect(&app, "", Credential::Bearer(API_TOKEN))
        .await
        .is_ok());

    // A console session: the cookie from POST /session opens it too.
    let response = reqwest::Client::new()
        .post(format!("http://{}/session", app.http_addr()))
        .json(&json!({"token": API_TOKEN}))
        .send()
        .await
        .expect("POST /session");
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    assert!(cookie.starts_with("ds_session="), "{cookie}");
    let mut socket = connect(&app, "", Credential::Cookie(cookie.clone()))
        .await
        .expect("the session opens the live channel");
    socket
        .send(Message::Ping(vec![1].into()))
        .await
        .expect("a ping");
    let flipped = if cookie.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{flipped}", &cookie[..cookie.len() - 1]);
    match connect(&app, "", Credential::Cookie(forged)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!(
            "a forged cookie must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
}
