//! The binaries with a dependency down, as real processes: PostgreSQL or the S3 endpoint not
//! there at start, a database URL that cannot work, PostgreSQL going away after start. Each time
//! the process says which dependency and why in one log line, and then retries, carries on or
//! exits non-zero as documented; it never panics, and never hangs without saying so.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    bin, command, eventually, folder_store_url, host_port, iqair_stream, nearest_city,
    postgres_server_url, sim_env, sqlite_url, start_sim, start_worker, supervisor_env, worker_env,
    Env, Supervisor, TcpProxy, TestDatabase, IQAIR_KEY,
};

/// A loopback `host:port` nothing listens on.
fn closed_port() -> String {
    support::closed_port().to_string()
}

/// What a process that ended printed, and how it ended.
struct Exited {
    /// `None` when it was still running at the deadline (and was killed).
    status: Option<ExitStatus>,
    elapsed: Duration,
    lines: Vec<String>,
}

impl Exited {
    fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Lines that look like a Rust panic or a multi-line error report.
    fn panics(&self) -> Vec<&String> {
        self.lines
            .iter()
            .filter(|l| {
                l.contains("panicked") || l.starts_with("Caused by") || l.starts_with("Error:")
            })
            .collect()
    }
}

/// Run `bin` with `env` ([`command`]) until it exits or `within` passes (then kill it).
fn run_to_exit(bin: &Path, env: &Env, within: Duration) -> Exited {
    let started = Instant::now();
    let mut child = command(bin, env).spawn().expect("the binary starts");
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ]
    .into_iter()
    .map(|stream| {
        std::thread::spawn(move || {
            BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        })
    })
    .collect();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let lines = readers
        .into_iter()
        .flat_map(|reader| reader.join().expect("reader thread"))
        .collect();
    Exited {
        status,
        elapsed,
        lines,
    }
}

/// What makes `OBJECT_STORE_URL=s3://` point at `endpoint`, with credentials.
fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "startup-access-key".to_owned()),
        (
            "AWS_SECRET_ACCESS_KEY",
            "startup-secret-key-3b7d".to_owned(),
        ),
        ("S3_FORCE_PATH_STYLE", "true".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// The one log line containing every one of `needles`; fails showing the whole log otherwise.
fn line_with<'a>(lines: impl IntoIterator<Item = &'a str>, needles: &[&str], log: &str) -> String {
    lines
        .into_iter()
        .find(|line| needles.iter().all(|needle| line.contains(needle)))
        .unwrap_or_else(|| panic!("no log line contains all of {needles:?}; log:\n{log}"))
        .to_owned()
}

#[test]
fn supervisor_with_postgres_down_retries_then_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let address = closed_port();
    let password = "hunter2-never-printed";
    let url = format!("postgres://ds_user:{password}@{address}/data_streams");
    let env =
        supervisor_env(&url, &folder_store_url(dir.path())).set("DATABASE_CONNECT_RETRY_SECS", "2");

    let exited = run_to_exit(&bin("data-streams"), &env, Duration::from_secs(20));
    let log = exited.text();
    let status = exited
        .status
        .unwrap_or_else(|| panic!("still running after 20 s; log:\n{log}"));
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    assert!(
        exited.elapsed < Duration::from_secs(10),
        "took {:?}; log:\n{log}",
        exited.elapsed
    );
    assert!(exited.panics().is_empty(), "log:\n{log}");
    assert!(!log.contains(password), "the password is printed:\n{log}");

    let shown = format!("postgres://ds_user@{address}/data_streams");
    let lines = || exited.lines.iter().map(String::as_str);
    // While it retries: which database, why, and that it tries again.
    let retrying = line_with(lines(), &[&shown, "retrying", "refused"], &log);
    assert!(
        retrying.contains("ERROR") || retrying.contains("WARN"),
        "{retrying}"
    );
    let attempts = lines().filter(|l| l.contains("retrying")).count();
    assert!(attempts >= 2, "{attempts} retries in 2 s; log:\n{log}");
    // And the last word: one line, same contents, saying it gave up.
    let last = line_with(lines(), &["cannot start", &shown, "refused"], &log);
    assert!(last.contains("not reachable after 2 s"), "{last}");
}

#[test]
fn supervisor_with_an_unusable_database_url_exits_at_once_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A login the server refuses needs a person, not a retry.
    let no_such_role = format!(
        "postgres://ds_no_such_role:pw@{}/postgres",
        host_port(&postgres_server_url())
    );
    for url in [
        "mysql://x",
        "postgres://u:pw@127.0.0.1:notaport/x",
        no_such_role.as_str(),
    ] {
        let env = supervisor_env(url, &folder_store_url(dir.path()));
        let exited = run_to_exit(&bin("data-streams"), &env, Duration::from_secs(20));
        let log = exited.text();
        let status = exited
            .status
            .unwrap_or_else(|| panic!("{url}: still running after 20 s; log:\n{log}"));
        assert!(
            !status.success(),
            "{url}: exit status {status}; log:\n{log}"
        );
        assert!(
            exited.elapsed < Duration::from_secs(5),
            "{url}: took {:?}; log:\n{log}",
            exited.elapsed
        );
        assert!(exited.panics().is_empty(), "{url}: log:\n{log}");
        assert!(!log.contains(":pw@"), "the password is printed:\n{log}");
        let errors: Vec<&String> = exited
            .lines
            .iter()
            .filter(|l| l.contains("ERROR"))
            .collect();
        assert_eq!(errors.len(), 1, "{url}: one error line; log:\n{log}");
        assert!(errors[0].contains("cannot start"), "{}", errors[0]);
        assert!(errors[0].contains("database"), "{}", errors[0]);
        assert!(!errors[0].contains("retrying"), "{}", errors[0]);
    }
    // The scheme is named, so the person knows what to change.
    let env = supervisor_env("mysql://x", &folder_store_url(dir.path()));
    let exited = run_to_exit(&bin("data-streams"), &env, Duration::from_secs(20));
    let log = exited.text();
    line_with(
        exited.lines.iter().map(String::as_str),
        &["cannot start", "mysql://x", "postgres://"],
        &log,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_with_s3_down_serves_and_is_not_ready_naming_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let address = closed_port();
    let endpoint = format!("http://{address}");
    let env = supervisor_env(&sqlite_url(dir.path()), "s3://").extend(s3_env(&endpoint));

    let started = Instant::now();
    let Supervisor {
        proc: supervisor,
        api,
        ..
    } = Supervisor::start(dir.path(), &env);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "start took {:?}",
        started.elapsed()
    );
    let log = supervisor.log_text();
    let line = line_with(log.lines(), &["object store", &endpoint], &log);
    assert!(
        line.contains("not reachable") || line.contains("unreachable"),
        "{line}"
    );
    assert!(
        !log.contains("startup-secret-key-3b7d"),
        "the secret is printed:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    let open = api.with_token(None);
    assert_eq!(open.get("/healthz").await.0, 200);
    let (status, body) = open.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "ok", "{body}");
    let store = body["object_store"].as_str().expect("a reason");
    assert!(store.contains(&endpoint), "{body}");
    // The rest of the API answers.
    let (status, streams) = api.get("/streams").await;
    assert_eq!(status, 200, "{streams}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_with_s3_down_keeps_running_and_reports_storage_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sim, sim_addr) = start_sim(dir.path(), &sim_env());
    let supervisor = Supervisor::start(
        dir.path(),
        &supervisor_env(&sqlite_url(dir.path()), &folder_store_url(dir.path())),
    );
    let api = &supervisor.api;

    let address = closed_port();
    let endpoint = format!("http://{address}");
    let env = worker_env(&supervisor.workers, "s3://")
        .unset("WORKER_RECONNECT_MAX_MS")
        .extend(s3_env(&endpoint));
    let mut worker = start_worker(dir.path(), "no-store-worker", &env);
    let log = worker.log_text();
    let line = line_with(log.lines(), &["object store", &endpoint], &log);
    assert!(
        line.contains("not reachable") || line.contains("unreachable"),
        "{line}"
    );

    let stream = api
        .create_stream(&iqair_stream(&nearest_city(&sim_addr), IQAIR_KEY, 1000))
        .await;
    let stream_id = stream["id"].as_str().expect("an id").to_owned();

    let failure: Value = eventually(Duration::from_secs(20), "a storage failure", || async {
        let (_, body) = api.get(&format!("/streams/{stream_id}/failures")).await;
        body["items"].as_array()?.first().cloned()
    })
    .await;
    assert_eq!(failure["class"], "storage", "{failure}");
    // Either the store's own error (naming the endpoint) or the run's deadline cutting the
    // upload short (naming bucket and key), depending on which comes first.
    let message = failure["message"].as_str().expect("a message");
    assert!(message.contains("object store"), "{failure}");
    assert!(
        message.contains(&endpoint)
            || message.contains(&format!("results/IQAIR_DAILY/stream_id={stream_id}/")),
        "{failure}"
    );
    assert_eq!(failure["stream_stopped"], false, "{failure}");
    assert_eq!(api.result_count(&stream_id).await, 0);

    // Still up, still assigned, still trying.
    assert!(
        worker.child.try_wait().expect("wait").is_none(),
        "the worker exited; log:\n{}",
        worker.log_text()
    );
    let (_, stream) = api.get(&format!("/streams/{stream_id}")).await;
    assert_eq!(stream["status"], "running", "{stream}");
    assert_eq!(stream["worker_id"], "no-store-worker", "{stream}");
    assert!(!worker.log_text().contains("panicked"));
    drop(sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_is_not_ready_naming_the_database_while_postgres_is_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let database = TestDatabase::create("ds_startup");
    let proxy = TcpProxy::start(database.server_host_port());
    let url = database.url_via(&proxy.address.to_string());
    let Supervisor {
        proc: supervisor,
        api,
        ..
    } = Supervisor::start(
        dir.path(),
        &supervisor_env(&url, &folder_store_url(dir.path())),
    );
    let (status, body) = api.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    proxy.cut();
    let asked = Instant::now();
    let (status, body) = api.get("/readyz").await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "/readyz took {:?}",
        asked.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["object_store"], "ok", "{body}");
    let reason = body["database"].as_str().expect("a reason");
    assert_ne!(reason, "ok", "{body}");
    eprintln!("/readyz with PostgreSQL away: {body}");
    // The rest of the process is still there.
    assert_eq!(api.get("/healthz").await.0, 200);

    proxy.restore();
    eventually(Duration::from_secs(20), "ready again", || async {
        (api.get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    let log = supervisor.log_text();
    assert!(!log.contains("panicked"), "{log}");
    drop(supervisor);
}

#[test]
fn binaries_with_an_unusable_object_store_url_exit_at_once_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let supervisor = supervisor_env(&sqlite_url(dir.path()), "ftp://bucket-host/x");
    let worker = Env::new()
        .set("DATA_STREAMS_WORKER_ADDR", closed_port())
        .set("OBJECT_STORE_URL", "ftp://bucket-host/x")
        .set("WORKER_ID", "bad-store-worker");
    for (name, env) in [("data-streams", supervisor), ("worker", worker)] {
        let exited = run_to_exit(&bin(name), &env, Duration::from_secs(20));
        let log = exited.text();
        let status = exited
            .status
            .unwrap_or_else(|| panic!("{name}: still running after 20 s; log:\n{log}"));
        assert!(
            !status.success(),
            "{name}: exit status {status}; log:\n{log}"
        );
        assert!(
            exited.elapsed < Duration::from_secs(5),
            "{name}: took {:?}; log:\n{log}",
            exited.elapsed
        );
        assert!(exited.panics().is_empty(), "{name}: log:\n{log}");
        let errors: Vec<&String> = exited
            .lines
            .iter()
            .filter(|l| l.contains("ERROR"))
            .collect();
        assert_eq!(errors.len(), 1, "{name}: one error line; log:\n{log}");
        assert!(errors[0].contains("cannot start"), "{name}: {}", errors[0]);
        assert!(
            errors[0].contains("ftp://bucket-host/x"),
            "{name}: {}",
            errors[0]
        );
        assert!(errors[0].contains("s3://"), "{name}: {}", errors[0]);
    }
}
