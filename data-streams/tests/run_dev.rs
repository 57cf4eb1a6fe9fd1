//! `scripts/run-dev.sh`, the README's first command, run as a newcomer would in a fresh folder
//! (on this build's binaries and free ports), and then the README's warehouse query, as written,
//! by DuckDB from that folder: one row per fetch, partitions as columns.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::{
    bin, command, duckdb_query, eventually, readme_sql, settled, workspace_root, Api, Env,
};

/// A port free right now on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The script's process, stopped with Ctrl-C (SIGINT) as a person would, also on a panic.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_query_gives_one_row_per_fetch_of_a_fresh_run_dev() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).expect("mkdir scripts");
    std::fs::copy(
        workspace_root().join("scripts/run-dev.sh"),
        scripts.join("run-dev.sh"),
    )
    .expect("copy run-dev.sh");
    let http = format!("127.0.0.1:{}", free_port());
    let env = Env::new()
        .set(
            "RUN_DEV_BIN_DIR",
            bin("data-streams")
                .parent()
                .expect("the binaries' folder")
                .display()
                .to_string(),
        )
        .set("DATA_STREAMS_HTTP_ADDR", &http)
        .set(
            "DATA_STREAMS_WORKER_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .set("IQAIR_SIM_ADDR", format!("127.0.0.1:{}", free_port()))
        .set("JSON_SIM_ADDR", format!("127.0.0.1:{}", free_port()))
        .set("DEMO_INTERVAL_MS", "2000")
        .unset("IQAIR_API_KEY")
        .unset("DATA_STREAMS_API_TOKEN")
        .unset("DATA_STREAMS_WORKER_TOKEN");
    let child = command(Path::new("bash"), &env)
        .arg(scripts.join("run-dev.sh"))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash runs run-dev.sh");
    let script = Script(child);

    let api = Api::new(&http, None);
    let stream_id: String = eventually(
        Duration::from_secs(60),
        "run-dev.sh's demo stream",
        || async {
            // Not `api.get`: the supervisor may not listen yet.
            let response = reqwest::get(api.url("/streams"))
                .await
                .map_err(|err| err.to_string())?;
            let body: serde_json::Value = response.json().await.map_err(|err| err.to_string())?;
            match body[0]["id"].as_str() {
                Some(id) => Ok(id.to_owned()),
                None => Err(body.to_string()),
            }
        },
    )
    .await;
    api.results_at_least(&stream_id, 3, Duration::from_secs(30))
        .await;
    // Stop the stream and let what is in flight land, so the bucket and the references agree
    // (run-dev.sh's reconciler runs once a minute: too slow to wait for here).
    let (status, body) = api.post_empty(&format!("/streams/{stream_id}/stop")).await;
    assert_eq!(status, 200, "{body}");
    settled(
        Duration::from_secs(20),
        Duration::from_secs(3),
        "the references after the stop",
        || async { api.result_count(&stream_id).await },
    )
    .await;
    let refs = api.all_results(&stream_id).await;

    let rows = duckdb_query(dir.path(), &[], &readme_sql("read_json("));
    assert_eq!(
        rows.len(),
        refs.len(),
        "one row per fetch: {} references, rows {rows:?}",
        refs.len()
    );
    for row in &rows {
        assert_eq!(row["stream_id"], stream_id.as_str(), "{row}");
        assert!(row["aqius"].is_number(), "{row}");
        assert!(row["dt"].is_string(), "{row}");
    }
    drop(script);
    assert!(
        dir.path().join("data/data-streams.db").exists(),
        "run-dev.sh keeps its database under ./data"
    );
}
