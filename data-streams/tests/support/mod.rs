//! Harness for tests that run the real binaries as child processes on free ports.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

/// The directory holding this build's binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_data-streams"))
        .parent()
        .expect("binaries live in a directory")
        .to_path_buf()
}

/// Path of a workspace binary. The other packages' binaries are built once per test binary
/// (a no-op after scripts/test.sh, which builds every target first), with `--workspace
/// --all-targets`: the feature set `cargo test --workspace --all-targets` builds them with, so
/// nothing is compiled twice, and no stale binary from an older build is run.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--all-targets"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A child process that is killed when dropped; its output goes to a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Start `bin` with `env`, and wait (at most 30 s) for a stdout line containing `ready`;
    /// returns the process and that line.
    pub fn start(
        name: &str,
        bin: &Path,
        env: &[(&str, String)],
        ready: &str,
        logs: &Path,
    ) -> (Proc, String) {
        let log = logs.join(format!("{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("DATABASE_URL")
            .env_remove("OBJECT_STORE_URL");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log file");
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(ready) => {
                    // Keep draining so the child never blocks on a full pipe.
                    std::thread::spawn(move || while rx.recv().is_ok() {});
                    return (
                        Proc {
                            name: name.into(),
                            child,
                            log,
                        },
                        line,
                    );
                }
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "{name} did not print {ready:?} within 30 s; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `within` for a clean exit; returns whether it exited by itself.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The first `http://host:port` or `host:port` after `marker` in `line`.
pub fn addr_after(line: &str, marker: &str) -> String {
    let rest = &line[line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} not in {line:?}"))
        + marker.len()..];
    let rest = rest.trim_start().trim_start_matches("http://");
    rest.split(|c: char| c.is_whitespace() || c == ',' || c == ')' || c == '(')
        .next()
        .expect("an address")
        .trim_end_matches('/')
        .to_owned()
}

/// A small blocking-free HTTP client for the supervisor's API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(addr: &str, token: Option<&str>) -> Self {
        Api {
            base: format!("http://{addr}"),
            token: token.map(str::to_owned),
            client: reqwest::Client::new(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.expect("body").to_vec())
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Every result reference of a stream, following the cursor.
    pub async fn all_results(&self, stream_id: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut after = String::new();
        loop {
            let (status, page) = self
                .get(&format!(
                    "/streams/{stream_id}/results?limit=1000&after={after}"
                ))
                .await;
            assert_eq!(status, 200, "{page}");
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => return items,
            }
        }
    }

    pub async fn result_count(&self, stream_id: &str) -> usize {
        self.all_results(stream_id).await.len()
    }
}

/// Poll `check` every 100 ms until it returns `Some`, or panic after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every `*.json` object file under a folder store root (temp files excluded).
pub fn object_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && !path.to_string_lossy().ends_with(".meta.json")
            {
                out.push(path);
            }
        }
    }
    out
}

/// A TCP proxy on loopback that can be cut (listener closed, open connections dropped) and
/// restored on the same port: the database going away as the supervisor sees it, without
/// touching the shared server. Runs on its own runtime so it serves whatever the test blocks on.
pub struct TcpProxy {
    pub address: SocketAddr,
    up: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TcpProxy {
    pub fn start(target: String) -> TcpProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the proxy");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let address = listener
            .local_addr()
            .expect("a bound socket has an address");
        drop(listener);
        let (up, watching) = watch::channel(true);
        runtime.spawn(proxy_loop(address, target, watching));
        TcpProxy {
            address,
            up,
            runtime: Some(runtime),
        }
    }

    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn proxy_loop(address: SocketAddr, target: String, mut up: watch::Receiver<bool>) {
    loop {
        if up.wait_for(|up| *up).await.is_err() {
            return;
        }
        let listener = loop {
            match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => break listener,
                // The port was just released; the kernel may need a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        loop {
            let mut down = up.clone();
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut client, _)) = accepted else { continue };
                    let target = target.clone();
                    let mut down = up.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = down.wait_for(|up| !*up) => {}
                        }
                    });
                }
                _ = down.wait_for(|up| !*up) => break,
            }
        }
    }
}
