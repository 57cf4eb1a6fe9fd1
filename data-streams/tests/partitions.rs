//! Partitions between real processes on one PostgreSQL database, made with loopback TCP proxies
//! that go silent ([`TcpProxy::freeze`]: open connections carry nothing either way, new ones are
//! dropped), under the production lease timings:
//!
//! - a worker cut off from every supervisor keeps fetching and storing while the leader hands
//!   its streams to another worker; both fetch the same slots meanwhile, and after the heal each
//!   slot is stored once and referenced once (the duplicate calls are counted);
//! - a leader cut off from PostgreSQL stops acting before another replica takes over.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    eventually, folder_store_url, iqair_stream, nearest_city, object_files, sim_env, start_sim,
    start_worker, supervisor_env, unlimited, worker_env, Supervisor, TcpProxy, TestDatabase,
    IQAIR_KEY,
};

/// How many requests the simulator has answered.
async fn sim_requests(sim: &str) -> u64 {
    let stats: Value = reqwest::get(format!("http://{sim}/admin/stats"))
        .await
        .expect("the simulator's stats")
        .json()
        .await
        .expect("JSON stats");
    stats["requests"].as_u64().expect("a request count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_every_supervisor_stores_each_slot_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let database = TestDatabase::create("ds_partition_worker");
    let store = folder_store_url(logs);
    let root = logs.join("objects");
    let (_sim, sim) = start_sim(logs, &sim_env());
    let env = supervisor_env(&database.url, &store).set("ASSIGN_INTERVAL_MS", "1000");
    let a = Supervisor::start_named(logs, "a", &env);
    eventually(Duration::from_secs(20), "a leads", || async {
        let (_, cluster) = a.api.get("/cluster").await;
        (cluster["leader"]["http_addr"] == a.http.as_str()).then_some(())
    })
    .await;
    let b = Supervisor::start_named(logs, "b", &env);

    // w1 reaches both supervisors only through proxies that the test can silence. The leader's
    // comes first: a follower's redirect names the leader's own address, past the proxy.
    let to_a = TcpProxy::start(a.workers.clone());
    let to_b = TcpProxy::start(b.workers.clone());
    let through = format!("{},{}", to_a.address, to_b.address);
    let _w1 = start_worker(logs, "w1", &worker_env(&through, &store));
    let mut ids = Vec::new();
    for _ in 0..4 {
        let body = unlimited(iqair_stream(&nearest_city(&sim), IQAIR_KEY, 1000));
        let created = b.api.create_stream(&body).await;
        ids.push(created["id"].as_str().expect("an id").to_owned());
    }
    a.api
        .all_running_on(&ids, "w1", Duration::from_secs(20))
        .await;
    let direct = format!("{},{}", b.workers, a.workers);
    let _w2 = start_worker(logs, "w2", &worker_env(&direct, &store));
    for id in &ids {
        a.api.results_at_least(id, 2, Duration::from_secs(15)).await;
    }

    // The partition: w1 hears from no supervisor, and none from it.
    let requests_before = sim_requests(&sim).await;
    let objects_before = object_files(&root).len() as u64;
    to_a.freeze();
    to_b.freeze();
    let cut = Instant::now();
    a.api
        .all_running_on(&ids, "w2", Duration::from_secs(30))
        .await;
    eprintln!(
        "FIGURE partition_streams_moved_ms={} (heartbeat timeout 3 s, then 3 s of grace)",
        cut.elapsed().as_millis()
    );
    // Both run the streams now: w1 has not heard it lost them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    to_a.thaw();
    to_b.thaw();
    let healed = cut.elapsed();
    eventually(Duration::from_secs(20), "w1 back", || async {
        let workers = a.api.workers().await;
        (workers.get("w1").map(|(connected, _)| *connected) == Some(true)).then_some(())
    })
    .await;
    // w1 was told to stop what is no longer its own; nothing runs twice from here on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        b.api.stop_and_settle(id, Duration::from_secs(30)).await;
    }
    let calls = sim_requests(&sim).await - requests_before;
    let stored = object_files(&root).len() as u64 - objects_before;
    eprintln!(
        "FIGURE partition_duplicate_calls={} over {} ms cut ({calls} calls, {stored} objects)",
        calls.saturating_sub(stored),
        healed.as_millis()
    );
    assert!(
        calls > stored,
        "both workers should have fetched some slots during the cut: {calls} calls, {stored} objects"
    );

    // Each slot once: one object per (stream, slot time), one reference per object.
    support::assert_each_slot_once(&root, &ids);
    let audit = a.api.clean_audit(Duration::from_secs(60)).await;
    eprintln!("audit after the partition: {audit}");
    assert_eq!(
        audit["objects"].as_u64(),
        Some(object_files(&root).len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_postgres_stops_acting_before_another_takes_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let database = TestDatabase::create("ds_partition_leader");
    let store = folder_store_url(logs);
    let to_postgres = TcpProxy::start(database.server_host_port());
    let cut_off_env = supervisor_env(&database.url_via(&to_postgres.address.to_string()), &store);
    let a = Supervisor::start_named(logs, "a", &cut_off_env);
    eventually(Duration::from_secs(20), "a leads", || async {
        (a.api.metric("ds_cluster_leader").await == 1.0).then_some(())
    })
    .await;
    let b = Supervisor::start_named(logs, "b", &supervisor_env(&database.url, &store));
    let (_, cluster) = b.api.get("/cluster").await;
    let epoch = cluster["leader"]["epoch"].as_i64().expect("a's epoch");
    assert_eq!(cluster["leader"]["http_addr"], a.http.as_str(), "{cluster}");

    to_postgres.freeze();
    let cut = Instant::now();
    let (mut a_stopped, mut b_took_over) = (None, None);
    while a_stopped.is_none() || b_took_over.is_none() {
        assert!(
            cut.elapsed() < Duration::from_secs(40),
            "after 40 s: a stopped leading at {a_stopped:?}, b took over at {b_took_over:?}"
        );
        if a_stopped.is_none() && a.api.metric("ds_cluster_leader").await == 0.0 {
            a_stopped = Some(cut.elapsed());
        }
        if b_took_over.is_none() {
            let (_, cluster) = b.api.get("/cluster").await;
            if cluster["leader"]["epoch"]
                .as_i64()
                .is_some_and(|e| e > epoch)
            {
                b_took_over = Some(cut.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (a_stopped, b_took_over) = (a_stopped.unwrap(), b_took_over.unwrap());
    eprintln!(
        "FIGURE leader_cut_off: stopped leading after {} ms, another led after {} ms",
        a_stopped.as_millis(),
        b_took_over.as_millis()
    );
    assert!(
        a_stopped < b_took_over,
        "the cut-off leader still led ({a_stopped:?}) when another took over ({b_took_over:?})"
    );
    let (_, cluster) = b.api.get("/cluster").await;
    assert_eq!(cluster["leader"]["http_addr"], b.http.as_str(), "{cluster}");

    // Healed, it follows.
    to_postgres.thaw();
    eventually(Duration::from_secs(30), "a follows b", || async {
        let (status, cluster) = a.api.get("/cluster").await;
        (status == 200 && cluster["leader"]["http_addr"] == b.http.as_str()).then_some(())
    })
    .await;
    assert_eq!(a.api.metric("ds_cluster_leader").await, 0.0);
}
