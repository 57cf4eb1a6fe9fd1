//! A partition made with a network namespace: a worker runs in a namespace of its own, joined
//! to this host by two veth pairs, one towards the supervisors and one towards the simulator.
//! Taking the supervisors' pair down cuts the worker off from every supervisor (no reset, no
//! close: a silent network), while it still reaches the API it fetches from and the object
//! store (a folder). Its streams move to another worker; both fetch the same slots until the
//! heal; afterwards each slot is stored once and referenced once.
//!
//! Needs root (`ip netns`, `ip link`), as CI and these machines have; the namespace and links
//! are this test's own (named after its pid) and removed when it ends, however it ends.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    eventually, folder_store_url, iqair_stream, nearest_city, object_files, sim_env, start_sim,
    start_worker, supervisor_env, unlimited, worker_env, Env, Proc, Supervisor, TestDatabase,
    IQAIR_KEY, WORKER_CONNECTED,
};

/// `ip` with `args`; panics with its output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with two veth pairs to this host: `supervisors` (host side
/// `10.<a>.<b>.1`, namespace side `.2`) and `api` (`10.<a>.<b+1>.1` / `.2`).
struct Namespace {
    name: String,
    supervisors_link: String,
    api_link: String,
    pub supervisors_host: String,
    pub api_host: String,
}

impl Namespace {
    fn create() -> Namespace {
        let pid = std::process::id();
        let (a, b) = (100 + (pid % 100), (pid / 100 % 64) * 4);
        let name = format!("ds-part-{pid}");
        let ns = Namespace {
            name: name.clone(),
            supervisors_link: format!("dss{pid}"),
            api_link: format!("dsa{pid}"),
            supervisors_host: format!("10.{a}.{b}.1"),
            api_host: format!("10.{a}.{}.1", b + 1),
        };
        ip(&["netns", "add", &name]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        for (link, host) in [
            (&ns.supervisors_link, &ns.supervisors_host),
            (&ns.api_link, &ns.api_host),
        ] {
            let inside = format!("{link}n");
            ip(&["link", "add", link, "type", "veth", "peer", "name", &inside]);
            ip(&["link", "set", &inside, "netns", &name]);
            ip(&["addr", "add", &format!("{host}/24"), "dev", link]);
            ip(&["link", "set", link, "up"]);
            let inner = format!("{}.2/24", host.strip_suffix(".1").expect("a .1 address"));
            ip(&[
                "netns", "exec", &name, "ip", "addr", "add", &inner, "dev", &inside,
            ]);
            ip(&["netns", "exec", &name, "ip", "link", "set", &inside, "up"]);
        }
        ns
    }

    /// The supervisors' link down (both ends lose carrier; packets go nowhere) or up again.
    fn supervisors_reachable(&self, up: bool) {
        ip(&[
            "link",
            "set",
            &self.supervisors_link,
            if up { "up" } else { "down" },
        ]);
    }

    /// A program that runs `bin` inside the namespace (its environment passes through).
    fn wrap(&self, dir: &Path, bin: &Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join(format!("in-{}.sh", self.name));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec ip netns exec {} {}\n",
                self.name,
                bin.display()
            ),
        )
        .expect("write the wrapper");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("make it runnable");
        script
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Removing the namespace removes the links' inner ends, and with them the pairs.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        for link in [&self.supervisors_link, &self.api_link] {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
    }
}

/// The port of a `host:port`.
fn port(addr: &str) -> &str {
    addr.rsplit_once(':').expect("host:port").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_its_own_namespace_cut_off_from_every_supervisor_stores_each_slot_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = dir.path();
    let ns = Namespace::create();
    let database = TestDatabase::create("ds_netns");
    let store = folder_store_url(logs);
    let root = logs.join("objects");
    // Every address of this host, so the namespace reaches them through its pairs while the
    // host's own processes use loopback.
    let (_sim, sim_bound) = start_sim(logs, &sim_env().set("IQAIR_SIM_ADDR", "0.0.0.0:0"));
    let sim = format!("{}:{}", ns.api_host, port(&sim_bound));
    let env = supervisor_env(&database.url, &store)
        .set("ASSIGN_INTERVAL_MS", "1000")
        .set("DATA_STREAMS_WORKER_ADDR", "0.0.0.0:0");
    let a = Supervisor::start_named(logs, "a", &env);
    eventually(Duration::from_secs(20), "a leads", || async {
        (a.api.metric("ds_cluster_leader").await == 1.0).then_some(())
    })
    .await;
    let b = Supervisor::start_named(logs, "b", &env);
    // The leader first: no redirect is needed (a redirect names the address it advertises).
    let via = |host: &str| format!("{host}:{},{host}:{}", port(&a.workers), port(&b.workers));
    let addrs = via(&ns.supervisors_host);

    // w1 in the namespace: it reaches the supervisors and the simulator over the two pairs.
    let inside = ns.wrap(logs, &support::bin("worker"));
    let w1_env: Env = worker_env(&addrs, &store).set("WORKER_ID", "w1");
    let (_w1, _) = Proc::start("w1", &inside, &w1_env, WORKER_CONNECTED, logs);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let body = unlimited(iqair_stream(&nearest_city(&sim), IQAIR_KEY, 1000));
        let created = b.api.create_stream(&body).await;
        ids.push(created["id"].as_str().expect("an id").to_owned());
    }
    a.api
        .all_running_on(&ids, "w1", Duration::from_secs(20))
        .await;
    let _w2 = start_worker(logs, "w2", &worker_env(&via("127.0.0.1"), &store));
    for id in &ids {
        a.api.results_at_least(id, 2, Duration::from_secs(15)).await;
    }

    let objects_before = object_files(&root).len();
    ns.supervisors_reachable(false);
    let cut = Instant::now();
    a.api
        .all_running_on(&ids, "w2", Duration::from_secs(30))
        .await;
    let moved = cut.elapsed();
    // Both run them now; w1 still stores (it reaches the API and the folder).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stored_while_cut = object_files(&root).len() - objects_before;
    ns.supervisors_reachable(true);
    eprintln!(
        "FIGURE netns_partition: streams moved after {} ms, {} objects stored during the {} ms cut",
        moved.as_millis(),
        stored_while_cut,
        cut.elapsed().as_millis()
    );
    eventually(Duration::from_secs(30), "w1 back", || async {
        let workers = a.api.workers().await;
        (workers.get("w1").map(|(connected, _)| *connected) == Some(true)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in &ids {
        b.api.stop_and_settle(id, Duration::from_secs(30)).await;
    }

    support::assert_each_slot_once(&root, &ids);
    let audit = a.api.clean_audit(Duration::from_secs(60)).await;
    eprintln!("audit after the namespace partition: {audit}");
    assert_eq!(
        audit["objects"].as_u64(),
        Some(object_files(&root).len() as u64)
    );
}
