//! The worker link over TLS, with the real binaries as child processes: a self-signed CA and a
//! server certificate for `127.0.0.1` are made at test time (rcgen) in a temporary folder.
//!
//! A worker trusting the CA connects and its stream produces results; a worker trusting another
//! CA, a plaintext worker and a silent raw TCP client are each refused with a logged reason while
//! the listener carries on; a certificate without its key is a start-up error naming the key.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;
use support::{addr_after, bin, eventually, Api, Proc};
use tokio::io::AsyncReadExt;

const WORKER_TOKEN: &str = "tls-worker-token";
const API_TOKEN: &str = "tls-api-token";
const IQAIR_KEY: &str = "tls-iqair-key";

/// PEM files of one CA and a server certificate it signed for `127.0.0.1` and `localhost`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "data-streams");
    let key = KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");

    let write = |file: &str, pem: String| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
    }
}

fn start_sim(logs: &Path) -> (Proc, String) {
    let (sim, line) = Proc::start(
        "iqair-sim",
        &bin("iqair-sim"),
        &[
            ("IQAIR_SIM_ADDR", "127.0.0.1:0".into()),
            ("IQAIR_SIM_KEYS", IQAIR_KEY.into()),
            ("IQAIR_SIM_LIMITS", "off".into()),
        ],
        "listening on",
        logs,
    );
    let addr = addr_after(&line, "listening on");
    (sim, addr)
}

/// A supervisor whose worker port speaks TLS with `pki`'s certificate; a hello (TLS included)
/// must finish within 1 s. Returns the process, the API address and the worker address.
fn start_supervisor(dir: &Path, pki: &Pki) -> (Proc, String, String) {
    let env = vec![
        ("DATA_STREAMS_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("DATA_STREAMS_WORKER_ADDR", "127.0.0.1:0".to_owned()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        ("DATA_STREAMS_API_TOKEN", API_TOKEN.to_owned()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("ds.db").display()),
        ),
        (
            "OBJECT_STORE_URL",
            format!("file://{}", dir.join("objects").display()),
        ),
        ("WORKER_TLS_CERT", pki.cert.display().to_string()),
        ("WORKER_TLS_KEY", pki.key.display().to_string()),
        ("HANDSHAKE_TIMEOUT_MS", "1000".to_owned()),
        ("HEARTBEAT_INTERVAL_MS", "500".to_owned()),
        ("HEARTBEAT_TIMEOUT_MS", "3000".to_owned()),
        ("ASSIGN_INTERVAL_MS", "500".to_owned()),
    ];
    let (proc, line) = Proc::start(
        "data-streams",
        &bin("data-streams"),
        &env,
        "data-streams listening",
        dir,
    );
    let http = addr_after(&line, "listening:");
    let workers = addr_after(&line, "(API),");
    (proc, http, workers)
}

/// A worker dialling `addr`, over TLS trusting `ca` when given; returns once a line containing
/// `ready` is logged.
fn start_worker(dir: &Path, addr: &str, id: &str, ca: Option<&Path>, ready: &str) -> Proc {
    let mut env = vec![
        ("DATA_STREAMS_WORKER_ADDR", addr.to_owned()),
        ("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN.to_owned()),
        (
            "OBJECT_STORE_URL",
            format!("file://{}", dir.join("objects").display()),
        ),
        ("WORKER_ID", id.to_owned()),
        ("WORKER_RECONNECT_MAX_MS", "500".to_owned()),
    ];
    if let Some(ca) = ca {
        env.push(("WORKER_TLS_CA", ca.display().to_string()));
    }
    Proc::start(id, &bin("worker"), &env, ready, dir).0
}

async fn create_stream(api: &Api, sim_addr: &str) -> String {
    let (status, body) = api
        .post(
            "/streams",
            &json!({
                "adapter": "IQAIR_DAILY",
                "endpoint": format!("http://{sim_addr}/v2/nearest_city"),
                "secret_key": IQAIR_KEY,
                "interval": 1000,
                "bucket_name": "results",
                "params": {"lat": 52.52, "lon": 13.40},
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("an id").to_owned()
}

async fn results_at_least(api: &Api, stream_id: &str, n: usize) -> usize {
    eventually(Duration::from_secs(30), &format!("{n} results"), || async {
        let count = api.result_count(stream_id).await;
        (count >= n).then_some(count)
    })
    .await
}

async fn worker_ids(api: &Api) -> Vec<(String, bool)> {
    let (status, body) = api.get("/workers").await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list")
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap_or_default().to_owned(),
                w["connected"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_worker_runs_streams_and_a_plaintext_worker_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path(), "good");
    let (_sim, sim_addr) = start_sim(dir.path());
    let (supervisor, http, worker_addr) = start_supervisor(dir.path(), &pki);
    let api = Api::new(&http, Some(API_TOKEN));

    let _tls_worker = start_worker(
        dir.path(),
        &worker_addr,
        "tls-worker",
        Some(&pki.ca),
        "connected to the supervisor",
    );
    let stream_id = create_stream(&api, &sim_addr).await;
    let before = results_at_least(&api, &stream_id, 2).await;

    // A plaintext worker waits for a challenge the TLS port never sends in clear; the port drops
    // it at the handshake timeout.
    let plain = start_worker(
        dir.path(),
        &worker_addr,
        "plain-worker",
        None,
        "link to the supervisor failed",
    );
    assert!(
        !plain.log_text().contains("connected to the supervisor"),
        "{}",
        plain.log_text()
    );
    eventually(
        Duration::from_secs(10),
        "the supervisor to log the failed TLS handshake",
        || async {
            supervisor
                .log_text()
                .contains("TLS handshake")
                .then_some(())
        },
    )
    .await;

    // The TLS worker carries on.
    results_at_least(&api, &stream_id, before + 2).await;
    let workers = worker_ids(&api).await;
    assert!(
        workers.contains(&("tls-worker".to_owned(), true)),
        "{workers:?}"
    );
    assert!(
        !workers.iter().any(|(id, _)| id == "plain-worker"),
        "{workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_and_a_silent_client_are_refused_and_the_port_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = pki(dir.path(), "good");
    let other = pki(dir.path(), "other");
    let (supervisor, http, worker_addr) = start_supervisor(dir.path(), &good);
    let api = Api::new(&http, Some(API_TOKEN));

    // A worker trusting another CA refuses the supervisor's certificate and says so.
    let untrusting = start_worker(
        dir.path(),
        &worker_addr,
        "untrusting-worker",
        Some(&other.ca),
        "TLS handshake with the supervisor failed",
    );
    let log = untrusting.log_text();
    assert!(!log.contains("connected to the supervisor"), "{log}");
    assert!(
        log.contains("certificate") || log.contains("UnknownIssuer"),
        "{log}"
    );

    // A raw TCP client that sends nothing is dropped at the handshake timeout (1 s).
    let mut silent = tokio::net::TcpStream::connect(&worker_addr)
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the supervisor drops a silent client well before 10 s");
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the port sent something in clear: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "dropped after {waited:?}"
    );
    eventually(
        Duration::from_secs(5),
        "the supervisor to log the TLS handshake timeout",
        || async {
            supervisor
                .log_text()
                .contains("TLS handshake: not finished within")
                .then_some(())
        },
    )
    .await;

    // The listener carries on: a worker trusting the right CA connects.
    let _worker = start_worker(
        dir.path(),
        &worker_addr,
        "trusting-worker",
        Some(&good.ca),
        "connected to the supervisor",
    );
    let workers = worker_ids(&api).await;
    assert!(
        workers.contains(&("trusting-worker".to_owned(), true)),
        "{workers:?}"
    );
    assert!(
        !workers.iter().any(|(id, _)| id == "untrusting-worker"),
        "{workers:?}"
    );
    assert!(
        !untrusting
            .log_text()
            .contains("connected to the supervisor"),
        "{}",
        untrusting.log_text()
    );
}

#[test]
fn a_certificate_without_its_key_is_a_start_up_error_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path(), "good");
    let output = std::process::Command::new(bin("data-streams"))
        .env("RUST_LOG", "info")
        .env("DATA_STREAMS_HTTP_ADDR", "127.0.0.1:0")
        .env("DATA_STREAMS_WORKER_ADDR", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("ds.db").display()),
        )
        .env(
            "OBJECT_STORE_URL",
            format!("file://{}", dir.path().join("objects").display()),
        )
        .env("WORKER_TLS_CERT", &pki.cert)
        .env_remove("WORKER_TLS_KEY")
        .output()
        .expect("data-streams runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("WORKER_TLS_KEY is not set"), "{text}");
    assert!(!text.contains("data-streams listening"), "{text}");
}
