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
use support::{
    bin, command, eventually, folder_store_url, iqair_stream, nearest_city, sim_env, sqlite_url,
    start_sim, start_worker_until, supervisor_env, worker_env, Api, Proc, Supervisor, IQAIR_KEY,
};
use tokio::io::AsyncReadExt;

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

/// A supervisor whose worker port speaks TLS with `pki`'s certificate; a hello (TLS included)
/// must finish within 1 s.
fn start_supervisor(dir: &Path, pki: &Pki) -> Supervisor {
    let env = supervisor_env(&sqlite_url(dir), &folder_store_url(dir))
        .set("WORKER_TLS_CERT", pki.cert.display().to_string())
        .set("WORKER_TLS_KEY", pki.key.display().to_string())
        .set("HANDSHAKE_TIMEOUT_MS", "1000")
        .unset("RECONCILE_INTERVAL_MS");
    Supervisor::start(dir, &env)
}

/// A worker dialling `addr`, over TLS trusting `ca` when given; returns once a line containing
/// `ready` is logged.
fn start_worker(dir: &Path, addr: &str, id: &str, ca: Option<&Path>, ready: &str) -> Proc {
    let mut env = worker_env(addr, &folder_store_url(dir));
    if let Some(ca) = ca {
        env = env.set("WORKER_TLS_CA", ca.display().to_string());
    }
    start_worker_until(dir, id, &env, ready).0
}

async fn create_stream(api: &Api, sim_addr: &str) -> String {
    let created = api
        .create_stream(&iqair_stream(&nearest_city(sim_addr), IQAIR_KEY, 1000))
        .await;
    created["id"].as_str().expect("an id").to_owned()
}

async fn results_at_least(api: &Api, stream_id: &str, n: usize) -> usize {
    api.results_at_least(stream_id, n, Duration::from_secs(30))
        .await
}

/// `GET /workers` as (id, connected).
async fn worker_ids(api: &Api) -> Vec<(String, bool)> {
    api.workers()
        .await
        .into_iter()
        .map(|(id, (connected, _))| (id, connected))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_worker_runs_streams_and_a_plaintext_worker_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path(), "good");
    let (_sim, sim_addr) = start_sim(dir.path(), &sim_env());
    let Supervisor {
        proc: supervisor,
        api,
        workers: worker_addr,
        ..
    } = start_supervisor(dir.path(), &pki);

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
    let Supervisor {
        proc: supervisor,
        api,
        workers: worker_addr,
        ..
    } = start_supervisor(dir.path(), &good);

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
    let env = supervisor_env(&sqlite_url(dir.path()), &folder_store_url(dir.path()))
        .set("WORKER_TLS_CERT", pki.cert.display().to_string());
    let output = command(&bin("data-streams"), &env)
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
