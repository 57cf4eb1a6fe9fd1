//! Three supervisor replicas on one PostgreSQL database, as real processes, with two workers
//! and streams running, under the production lease timings (renew 5 s, TTL 15 s, margin 2 s):
//!
//! - any replica serves the API: streams are created on a follower and run; a follower's
//!   `GET /live` carries the leader's results;
//! - SIGTERM of the leader hands over in under 2 s (it resigns and notifies);
//! - SIGKILL of the leader: workers keep storing, and a new leader assigns a stream created
//!   meanwhile, fails over a killed worker's streams and indexes what was stored, within 20 s of
//!   the kill for the assignment;
//! - SIGSTOP of the leader past its lease: another takes over; after SIGCONT the old one steps
//!   down, its refused writes are counted, and the new leader's assignments stand;
//! - at the end every object has exactly one reference (`GET /audit`).
//!
//! The figures (handover, takeover, assignment after a kill) are printed for BENCHMARKS.md.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use support::{
    eventually, folder_store_url, iqair_stream, nearest_city, object_files, sim_env, start_sim,
    start_worker, supervisor_env, unlimited, worker_env, Api, Env, Proc, Supervisor, TestDatabase,
    API_TOKEN, IQAIR_KEY,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};
use tokio_tungstenite::tungstenite::Message;

/// How many streams run throughout.
const STREAMS: usize = 6;

/// The replicas by name (`a`, `b`, `c`, then `a2`… for restarts), and how to start more.
struct Replicas {
    env: Env,
    logs: std::path::PathBuf,
    running: BTreeMap<String, Supervisor>,
}

impl Replicas {
    fn start(&mut self, name: &str) {
        let supervisor = Supervisor::start_named(&self.logs, name, &self.env);
        self.running.insert(name.to_owned(), supervisor);
    }

    /// A new process in place of `gone`, on its ports: the workers' address lists (fixed, as an
    /// orchestrator's Service or a compose service name would be) stay true.
    fn restart(&mut self, name: &str, gone: &Supervisor) {
        let env = gone.same_ports(&self.env);
        let supervisor = Supervisor::start_named(&self.logs, name, &env);
        self.running.insert(name.to_owned(), supervisor);
    }

    /// Any replica but `not`.
    fn other(&self, not: &str) -> &Supervisor {
        self.running
            .iter()
            .find(|(name, _)| name.as_str() != not)
            .map(|(_, s)| s)
            .expect("another replica")
    }

    /// The replica whose HTTP address `GET /cluster` names as the leader's, once one leads
    /// (asked of `via`): its name and the leader's epoch.
    async fn leader(&self, via: &Api, within: Duration) -> (String, i64) {
        eventually(within, "a leader", || async {
            let (status, cluster) = via.get("/cluster").await;
            if status != 200 {
                return None;
            }
            let http = cluster["leader"]["http_addr"].as_str()?;
            let epoch = cluster["leader"]["epoch"].as_i64()?;
            let name = self
                .running
                .iter()
                .find(|(_, s)| s.http == http)
                .map(|(name, _)| name.clone())?;
            Some((name, epoch))
        })
        .await
    }

    /// Every replica's worker address, followers first (a worker is redirected at least once).
    fn worker_addrs(&self, leader: &str) -> String {
        let mut addrs: Vec<&str> = self
            .running
            .iter()
            .filter(|(name, _)| name.as_str() != leader)
            .map(|(_, s)| s.workers.as_str())
            .collect();
        addrs.push(&self.running[leader].workers);
        addrs.join(",")
    }
}

/// Each stream's (worker, generation) as `via` shows them, once all run.
async fn all_running(
    api: &Api,
    ids: &[String],
    within: Duration,
) -> BTreeMap<String, (String, i64)> {
    eventually(within, "every stream running", || async {
        let mut placed = BTreeMap::new();
        for id in ids {
            let stream = api.stream(id).await;
            if stream["status"] != "running" {
                return Err(format!("{id}: {stream}"));
            }
            let worker = stream["worker_id"].as_str().unwrap_or_default().to_owned();
            let generation = stream["generation"].as_i64().unwrap_or_default();
            placed.insert(id.clone(), (worker, generation));
        }
        Ok(placed)
    })
    .await
}

fn signal(proc: &Proc, name: &str) {
    let status = Command::new("kill")
        .args([name, &proc.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {name} {}", proc.name);
}

/// The first `"type": "result"` message on `http`'s `GET /live`, within `within`.
async fn a_live_result(http: &str, within: Duration) -> Value {
    let mut request = format!("ws://{http}/live")
        .into_client_request()
        .expect("a request");
    request.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {API_TOKEN}")).expect("a header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the follower's live channel");
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .expect("a result on the follower's live channel in time")
            .expect("the socket stays open")
            .expect("a frame");
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if value["type"] == "result" {
                return value;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hand_over_fail_over_and_fence_a_paused_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let database = TestDatabase::create("ds_replicas");
    let store = folder_store_url(logs);
    let root = logs.join("objects");
    let (_sim, sim_addr) = start_sim(logs, &sim_env());
    let mut replicas = Replicas {
        env: supervisor_env(&database.url, &store).set("ASSIGN_INTERVAL_MS", "1000"),
        logs: logs.to_path_buf(),
        running: BTreeMap::new(),
    };
    replicas.start("a");
    let (first, epoch_1) = replicas
        .leader(&replicas.running["a"].api, Duration::from_secs(20))
        .await;
    assert_eq!(first, "a");
    replicas.start("b");
    replicas.start("c");
    let (_, cluster) = replicas.running["c"].api.get("/cluster").await;
    assert_eq!(
        cluster["replicas"].as_array().map(Vec::len),
        Some(3),
        "{cluster}"
    );

    let worker_env = worker_env(&replicas.worker_addrs("a"), &store);
    let mut w1 = start_worker(logs, "w1", &worker_env);
    let _w2 = start_worker(logs, "w2", &worker_env);

    // Created on a follower, run by the leader's workers.
    let follower = &replicas.running["b"].api;
    let mut ids = Vec::new();
    for _ in 0..STREAMS {
        let body = unlimited(iqair_stream(&nearest_city(&sim_addr), IQAIR_KEY, 1000));
        let created = follower.create_stream(&body).await;
        ids.push(created["id"].as_str().expect("an id").to_owned());
    }
    all_running(&replicas.running["c"].api, &ids, Duration::from_secs(20)).await;
    // The live channel of a follower carries the leader's results.
    let live = a_live_result(&replicas.running["c"].http, Duration::from_secs(15)).await;
    assert!(
        live["result"].is_object() || live["stream_id"].is_string(),
        "{live}"
    );

    // SIGTERM: the leader resigns and another takes over at once.
    let terminated = Instant::now();
    let mut a = replicas.running.remove("a").expect("a");
    assert!(
        a.proc.terminate(Duration::from_secs(15)),
        "a did not exit on SIGTERM"
    );
    let exited = terminated.elapsed();
    let (second, epoch_2) = replicas
        .leader(&replicas.running["b"].api, Duration::from_secs(20))
        .await;
    let handover = terminated.elapsed();
    eprintln!(
        "FIGURE sigterm_handover_ms={} (process exit {} ms) epoch {epoch_1} -> {epoch_2}",
        handover.as_millis(),
        exited.as_millis()
    );
    assert!(epoch_2 > epoch_1);
    assert!(
        handover < Duration::from_secs(2),
        "SIGTERM handover took {handover:?}"
    );
    all_running(
        &replicas.running[&second].api,
        &ids,
        Duration::from_secs(20),
    )
    .await;
    replicas.restart("a2", &a);

    // SIGKILL: workers keep storing; a new leader assigns, fails over and indexes.
    let objects_at_kill = object_files(&root).len();
    let killed_at = Instant::now();
    let mut leader = replicas.running.remove(&second).expect("the leader");
    leader.proc.kill();
    let survivor = replicas.other(&second).api.clone();
    let body = unlimited(iqair_stream(&nearest_city(&sim_addr), IQAIR_KEY, 1000));
    let late = survivor.create_stream(&body).await;
    let late_id = late["id"].as_str().expect("an id").to_owned();
    assert_eq!(late["status"], "pending", "{late}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let objects_later = object_files(&root).len();
    assert!(
        objects_later >= objects_at_kill + STREAMS,
        "workers stopped storing without a leader: {objects_at_kill} -> {objects_later}"
    );
    all_running(
        &survivor,
        std::slice::from_ref(&late_id),
        Duration::from_secs(30),
    )
    .await;
    let assigning = killed_at.elapsed();
    let (third, epoch_3) = replicas.leader(&survivor, Duration::from_secs(5)).await;
    eprintln!(
        "FIGURE sigkill_to_assigning_ms={} new leader {third} epoch {epoch_3}",
        assigning.as_millis()
    );
    assert!(epoch_3 > epoch_2);
    assert!(
        assigning < Duration::from_secs(20),
        "the new leader assigned {assigning:?} after the kill"
    );
    ids.push(late_id);
    // Fail over: a worker killed, its streams move to the other.
    w1.kill();
    let failed_over = Instant::now();
    let placed = eventually(Duration::from_secs(30), "streams on w2", || async {
        let placed = all_running(&survivor, &ids, Duration::from_secs(30)).await;
        placed
            .values()
            .all(|(worker, _)| worker == "w2")
            .then_some(placed)
    })
    .await;
    eprintln!(
        "FIGURE worker_failover_ms={} under the new leader",
        failed_over.elapsed().as_millis()
    );
    replicas.restart("b2", &leader);

    // SIGSTOP past the lease: another leads; the paused one's writes are refused and it
    // steps down when it runs again.
    let (paused_name, epoch_4) = replicas.leader(&survivor, Duration::from_secs(5)).await;
    let paused = replicas.running.remove(&paused_name).expect("the leader");
    signal(&paused.proc, "-STOP");
    let stopped_at = Instant::now();
    let watcher = replicas.other(&paused_name).api.clone();
    let (fourth, epoch_5) = eventually(
        Duration::from_secs(30),
        "a leader after the pause",
        || async {
            let (_, cluster) = watcher.get("/cluster").await;
            let epoch = cluster["leader"]["epoch"].as_i64()?;
            let http = cluster["leader"]["http_addr"].as_str()?.to_owned();
            (epoch > epoch_4).then_some((http, epoch))
        },
    )
    .await;
    eprintln!(
        "FIGURE sigstop_takeover_ms={} epoch {epoch_4} -> {epoch_5}",
        stopped_at.elapsed().as_millis()
    );
    assert_ne!(fourth, paused.http);
    let before_resume = all_running(&watcher, &ids, Duration::from_secs(30)).await;
    signal(&paused.proc, "-CONT");
    eventually(
        Duration::from_secs(10),
        "the paused leader steps down",
        || async { (paused.api.metric("ds_cluster_leader").await == 0.0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Whatever it tried in the moment it ran before it saw the lease gone: each refused.
    let fenced = paused.api.metric("ds_cluster_fenced_writes_total").await;
    eprintln!("FIGURE fenced_writes_after_sigcont={fenced}");
    let (_, cluster) = paused.api.get("/cluster").await;
    assert_eq!(
        cluster["leader"]["epoch"].as_i64(),
        Some(epoch_5),
        "{cluster}"
    );
    // What the new leader placed stands: nothing the paused one did moved a stream.
    let after_resume = all_running(&watcher, &ids, Duration::from_secs(30)).await;
    assert_eq!(before_resume, after_resume);
    assert_eq!(
        placed.keys().collect::<Vec<_>>(),
        after_resume.keys().collect::<Vec<_>>()
    );

    // Everything stored is referenced exactly once.
    for id in &ids {
        watcher.stop_and_settle(id, Duration::from_secs(30)).await;
    }
    let audit = watcher.clean_audit(Duration::from_secs(60)).await;
    eprintln!("audit after the failovers: {audit}");
    assert_eq!(
        audit["objects"].as_u64(),
        Some(object_files(&root).len() as u64)
    );
    drop(paused);
    for (_, supervisor) in replicas.running {
        assert!(!supervisor.proc.log_text().contains("panicked"));
    }
}
