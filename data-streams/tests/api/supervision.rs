//! Supervision with real in-process workers: a restarted worker runs its streams again; workers
//! share streams by capacity; a worker that goes silent loses its streams, and when it comes
//! back it is told to stop what is no longer its own.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::{Event, FailureClass, RunFailure};
use serde_json::Value;

use crate::support::{
    eventually, settled, spawn_app, spawn_worker, stream_objects, RawWorker, TcpProxy, TestApp,
};

/// Stream id → (status, worker id).
async fn placement(app: &TestApp) -> BTreeMap<String, (String, Option<String>)> {
    let (status, list) = app.get("/streams").await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                (
                    s["status"].as_str().unwrap().to_owned(),
                    s["worker_id"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect()
}

fn on(placement: &BTreeMap<String, (String, Option<String>)>, worker: &str) -> Vec<String> {
    placement
        .iter()
        .filter(|(_, (status, w))| status == "running" && w.as_deref() == Some(worker))
        .map(|(id, _)| id.clone())
        .collect()
}

fn pending(placement: &BTreeMap<String, (String, Option<String>)>) -> Vec<String> {
    placement
        .iter()
        .filter(|(_, (status, _))| status == "pending")
        .map(|(id, _)| id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_worker_restart_its_streams_run_again() {
    let app = spawn_app().await;
    let worker = app.spawn_worker("w-restart", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_running_on(&id, "w-restart").await;
    app.wait_for_results(&id, 2).await;

    worker.stop().await;
    app.wait_worker_connected("w-restart", false).await;
    let before = app.result_count(&id).await;
    let objects_before = app.objects_of(&id).len();

    let _worker = app.spawn_worker("w-restart", 10).await;
    app.wait_worker_connected("w-restart", true).await;
    app.wait_running_on(&id, "w-restart").await;
    app.wait_for_results(&id, before + 3).await;
    assert!(app.objects_of(&id).len() >= objects_before + 3);
    let workers = app.workers().await;
    assert_eq!(workers.get("w-restart"), Some(&(true, 1)), "{workers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_streams_by_capacity() {
    let app = spawn_app().await;
    let a = app.spawn_worker("w-a", 2).await;
    let b = app.spawn_worker("w-b", 3).await;
    app.wait_worker_connected("w-a", true).await;
    app.wait_worker_connected("w-b", true).await;

    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_running(1_000).await);
    }
    let placed = eventually(Duration::from_secs(20), "5 streams on 2 + 3", || async {
        let p = placement(&app).await;
        let (on_a, on_b) = (on(&p, "w-a").len(), on(&p, "w-b").len());
        if on_a == 2 && on_b == 3 {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    assert!(pending(&placed).is_empty());
    let workers = app.workers().await;
    assert_eq!(workers.get("w-a"), Some(&(true, 2)), "{workers:?}");
    assert_eq!(workers.get("w-b"), Some(&(true, 3)), "{workers:?}");

    // No capacity left: a sixth stream waits.
    let sixth = app.create_running(1_000).await;
    assert_eq!(app.stream(&sixth).await["status"], "pending");
    for id in &ids {
        app.wait_for_results(id, 1).await;
    }
    // Sweeps ran meanwhile (every 200 ms): still pending, and nobody over capacity.
    let p = placement(&app).await;
    assert_eq!(pending(&p), vec![sixth.clone()], "{p:?}");
    assert_eq!((on(&p, "w-a").len(), on(&p, "w-b").len()), (2, 3), "{p:?}");

    // Two of A's streams go: the sixth takes one of the free places, A has one left.
    for id in on(&p, "w-a") {
        assert_eq!(app.delete(&format!("/streams/{id}")).await.0, 204);
    }
    app.wait_running_on(&sixth, "w-a").await;
    let p = placement(&app).await;
    assert_eq!((on(&p, "w-a").len(), on(&p, "w-b").len()), (1, 3), "{p:?}");
    let b_streams = on(&p, "w-b");

    // B goes away. After the heartbeat timeout its streams are released; A takes them only up
    // to its capacity, the rest wait.
    b.stop().await;
    let p = eventually(Duration::from_secs(20), "B's streams moved", || async {
        let p = placement(&app).await;
        let on_a = on(&p, "w-a");
        assert!(on_a.len() <= 2, "A over capacity: {p:?}");
        if on_a.len() == 2 && pending(&p).len() == 2 && on(&p, "w-b").is_empty() {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    let workers = app.workers().await;
    assert_eq!(workers.get("w-a"), Some(&(true, 2)), "{workers:?}");
    assert_eq!(workers.get("w-b"), Some(&(false, 0)), "{workers:?}");
    let moved: Vec<String> = on(&p, "w-a")
        .into_iter()
        .filter(|id| b_streams.contains(id))
        .collect();
    assert_eq!(moved.len(), 1, "one of B's streams moved to A: {p:?}");
    // It produces results on A.
    let before = app.result_count(&moved[0]).await;
    app.wait_for_results(&moved[0], before + 2).await;
    // A stays at capacity while the others wait.
    let p = placement(&app).await;
    assert_eq!(on(&p, "w-a").len(), 2, "{p:?}");
    assert_eq!(pending(&p).len(), 2, "{p:?}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_loses_its_streams_and_is_told_to_stop_them_when_it_returns() {
    let app = spawn_app().await;
    // The silent worker dials through a proxy that can go quiet, and writes to its own folder
    // so what it stores can be told apart from what the other worker stores.
    let proxy = TcpProxy::start(app.worker_addr.to_string());
    let silent_root = app.dir.path().join("objects-silent");
    let silent = spawn_worker(
        &proxy.address.to_string(),
        &format!("file://{}", silent_root.display()),
        "w-silent",
        5,
    )
    .await;
    app.wait_worker_connected("w-silent", true).await;
    let id = app.create_running(1_000).await;
    app.wait_running_on(&id, "w-silent").await;
    eventually(
        Duration::from_secs(20),
        "the silent worker stores",
        || async {
            let n = stream_objects(&silent_root, &id).len();
            if n >= 1 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
    let generation = app.stream(&id).await["generation"].as_i64().unwrap();

    let standby = app.spawn_worker("w-standby", 5).await;
    app.wait_worker_connected("w-standby", true).await;
    assert_eq!(
        app.stream(&id).await["worker_id"],
        "w-silent",
        "no rebalancing"
    );

    // Silence: no bytes either way, the socket stays open.
    proxy.freeze();
    let moved: Value = app.wait_running_on(&id, "w-standby").await;
    assert!(
        moved["generation"].as_i64().unwrap() > generation,
        "a new assignment: {moved}"
    );
    let workers = app.workers().await;
    assert_eq!(workers.get("w-silent"), Some(&(false, 0)), "{workers:?}");
    assert_eq!(workers.get("w-standby"), Some(&(true, 1)), "{workers:?}");
    app.wait_for_results(&id, app.result_count(&id).await + 2)
        .await;
    // The silent worker does not know yet: it keeps running its stale claim.
    let stale_before = stream_objects(&silent_root, &id).len();
    eventually(
        Duration::from_secs(20),
        "the cut-off worker keeps running",
        || async {
            let n = stream_objects(&silent_root, &id).len();
            if n > stale_before {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;

    // It comes back and is told to stop what is no longer its own.
    proxy.thaw();
    app.wait_worker_connected("w-silent", true).await;
    settled(
        Duration::from_secs(20),
        Duration::from_secs(3),
        "the returning worker's objects",
        || async { stream_objects(&silent_root, &id).len() },
    )
    .await;
    // Still settled a while later, while the stream goes on on the other worker.
    let stale = stream_objects(&silent_root, &id).len();
    let on_standby = app.objects_of(&id).len();
    eventually(
        Duration::from_secs(20),
        "the stream goes on on the standby worker",
        || async {
            let n = app.objects_of(&id).len();
            if n >= on_standby + 3 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
    assert_eq!(
        stream_objects(&silent_root, &id).len(),
        stale,
        "the returning worker still runs the stream"
    );
    let s = app.stream(&id).await;
    assert_eq!(s["worker_id"], "w-standby", "{s}");
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["generation"], moved["generation"], "{s}");
    let workers = app.workers().await;
    assert_eq!(workers.get("w-silent"), Some(&(true, 0)), "{workers:?}");
    assert_eq!(workers.get("w-standby"), Some(&(true, 1)), "{workers:?}");
    drop((silent, standby));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_auth_failure_does_not_fail_a_stream_another_worker_runs() {
    let app = spawn_app().await;
    let _worker = app.spawn_worker("w-owner", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_running_on(&id, "w-owner").await;
    app.wait_for_results(&id, 1).await;

    // A worker that no longer owns the stream (a stale claim, or an old event replayed after a
    // person fixed the key) reports that the key was refused.
    let mut stale = RawWorker::connect(app.worker_addr, "w-stale").await;
    let now = chrono::Utc::now().timestamp_millis();
    stale
        .link
        .event(
            1,
            Event::RunFailed(std::sync::Arc::new(RunFailure {
                run_id: uuid::Uuid::now_v7(),
                stream_id: uuid::Uuid::parse_str(&id).unwrap(),
                at_ms: now,
                class: FailureClass::Auth,
                message: "incorrect_api_key".to_owned(),
                stream_stopped: true,
                scheduled_at_ms: now,
                started_at_ms: now,
                attempts: 1,
            })),
        )
        .await
        .expect("send");
    stale.wait_ack(1).await;

    // The failure is history; the stream goes on where it runs.
    let (_, failures) = app.get(&format!("/streams/{id}/failures")).await;
    assert_eq!(failures["items"].as_array().unwrap().len(), 1, "{failures}");
    let s = app.stream(&id).await;
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["worker_id"], "w-owner", "{s}");
    let before = app.result_count(&id).await;
    app.wait_for_results(&id, before + 2).await;
    assert_eq!(app.stream(&id).await["status"], "running");
}

#[tokio::test]
async fn a_running_list_in_parts_is_acted_on_once_whole() {
    let app = spawn_app().await;
    let mut raw = RawWorker::connect(app.worker_addr, "w-parts").await;
    // Two streams the supervisor never assigned to it, announced in two parts.
    let a = protocol::RunningStream {
        stream_id: uuid::Uuid::now_v7(),
        generation: 1,
    };
    let b = protocol::RunningStream {
        stream_id: uuid::Uuid::now_v7(),
        generation: 1,
    };
    let part =
        |running: Vec<protocol::RunningStream>, last| Event::WorkerAvailable { running, last };
    raw.link.event(0, part(vec![a], false)).await.unwrap();
    // Nothing happens on a part that is not the last.
    let early = tokio::time::timeout(Duration::from_millis(500), raw.incoming.recv()).await;
    assert!(early.is_err(), "acted on a partial list: {early:?}");
    raw.link.event(0, part(vec![b], true)).await.unwrap();
    // Then it is told to stop both: the whole list, not only the last part.
    let mut stopped = Vec::new();
    while stopped.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(10), raw.incoming.recv())
            .await
            .expect("stop calls within 10 s")
            .expect("the link stays up");
        let protocol::Incoming::Call { id, call } = msg else {
            continue;
        };
        if let protocol::Call::Stop { stream_id, .. } = *call {
            stopped.push(stream_id);
            raw.link
                .reply(id, protocol::Reply::ok("Stopped."))
                .await
                .unwrap();
        }
    }
    stopped.sort();
    let mut want = vec![a.stream_id, b.stream_id];
    want.sort();
    assert_eq!(stopped, want);
}
