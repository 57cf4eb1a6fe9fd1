//! The real binaries as child processes on free ports ([`Proc`]), and the one way to start each
//! of them for a test: iqair-sim ([`sim_env`]), a supervisor ([`supervisor_env`],
//! [`Supervisor::start`]) and a worker ([`worker_env`], [`start_worker`]); all three at once on
//! SQLite and a folder ([`Stack`]). Each `*_env` is the
//! usual set-up; a test changes what it needs with [`Env::set`] and [`Env::unset`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use super::{folder_store_url, Api, API_TOKEN, IQAIR_KEY, WORKER_TOKEN};

/// The workspace's root folder.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
}

/// Path of a workspace binary of this build. Cargo builds only this package's binaries for its
/// tests, so the others are built here, once per test binary and always (a no-op after
/// scripts/test.sh): an older binary left in the target directory would answer with yesterday's
/// settings. The build is `--workspace --all-targets`, the feature set of `cargo test
/// --workspace --all-targets`: `--bins` alone would compile tokio and everything above it a
/// second time.
pub fn bin(name: &str) -> PathBuf {
    static OTHERS_BUILT: OnceLock<()> = OnceLock::new();
    let own = PathBuf::from(env!("CARGO_BIN_EXE_data-streams"));
    if name == "data-streams" {
        return own;
    }
    let dir = own.parent().expect("binaries live in a directory");
    OTHERS_BUILT.get_or_init(|| {
        // target/debug is the `dev` profile (built as `test` for tests, the same artifacts).
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--all-targets",
                "--profile",
                profile,
            ])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing after building the workspace binaries",
        path.display()
    );
    path
}

/// Variables no child inherits from the test's environment (a test may set them): the
/// developer's own database, object store or AWS set-up cannot change what a test sees.
const NOT_INHERITED: [&str; 8] = [
    "DATABASE_URL",
    "OBJECT_STORE_URL",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_PROFILE",
    "S3_FORCE_PATH_STYLE",
];

/// The variables a test gives a child, in order; setting one again replaces its value.
#[derive(Debug, Clone, Default)]
pub struct Env(Vec<(String, String)>);

impl Env {
    pub fn new() -> Env {
        Env::default()
    }

    pub fn set(mut self, name: &str, value: impl Into<String>) -> Env {
        let value = value.into();
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(var) => var.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
        self
    }

    pub fn unset(mut self, name: &str) -> Env {
        self.0.retain(|(n, _)| n != name);
        self
    }

    pub fn extend<N: AsRef<str>, V: Into<String>>(
        self,
        vars: impl IntoIterator<Item = (N, V)>,
    ) -> Env {
        vars.into_iter()
            .fold(self, |env, (name, value)| env.set(name.as_ref(), value))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `bin` with `env`, stdout and stderr piped, at `TEST_RUST_LOG` (default `info`), without the
/// variables in [`NOT_INHERITED`] unless `env` sets them.
pub fn command(bin: &Path, env: &Env) -> Command {
    let mut command = Command::new(bin);
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .env(
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    for name in NOT_INHERITED {
        command.env_remove(name);
    }
    for (name, value) in &env.0 {
        command.env(name, value);
    }
    command
}

/// A child process that is killed when dropped; its output goes to a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Start `bin` with [`command`], and wait (at most 30 s) for a stdout line containing `ready`;
    /// returns the process and that line.
    pub fn start(name: &str, bin: &Path, env: &Env, ready: &str, logs: &Path) -> (Proc, String) {
        let log = logs.join(format!("{name}.log"));
        let mut child = command(bin, env)
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
        // The test failed: what this process said is all there is to go on (its folder goes).
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("--- the last lines of {}:\n{}", self.name, tail.join("\n"));
        }
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

/// What iqair-sim prints once it listens.
pub const SIM_READY: &str = "listening on";
/// What a worker prints once it is in.
pub const WORKER_CONNECTED: &str = "connected to the supervisor";

/// iqair-sim on a free port, accepting [`IQAIR_KEY`], limits off.
pub fn sim_env() -> Env {
    Env::new()
        .set("IQAIR_SIM_ADDR", "127.0.0.1:0")
        .set("IQAIR_SIM_KEYS", IQAIR_KEY)
        .set("IQAIR_SIM_LIMITS", "off")
}

/// Start iqair-sim; returns it and its `host:port`.
pub fn start_sim(logs: &Path, env: &Env) -> (Proc, String) {
    let (sim, line) = Proc::start("iqair-sim", &bin("iqair-sim"), env, SIM_READY, logs);
    let addr = addr_after(&line, SIM_READY);
    (sim, addr)
}

/// A supervisor on free ports with the test tokens, on `database_url` and `object_store_url`:
/// heartbeats every 500 ms (3 s timeout), an assignment sweep every 500 ms, a reconciler pass
/// every second.
pub fn supervisor_env(database_url: &str, object_store_url: &str) -> Env {
    Env::new()
        .set("DATA_STREAMS_HTTP_ADDR", "127.0.0.1:0")
        .set("DATA_STREAMS_WORKER_ADDR", "127.0.0.1:0")
        .set("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN)
        .set("DATA_STREAMS_API_TOKEN", API_TOKEN)
        .set("DATABASE_URL", database_url)
        .set("OBJECT_STORE_URL", object_store_url)
        .set("HEARTBEAT_INTERVAL_MS", "500")
        .set("HEARTBEAT_TIMEOUT_MS", "3000")
        .set("ASSIGN_INTERVAL_MS", "500")
        .set("RECONCILE_INTERVAL_MS", "1000")
}

/// A running supervisor binary.
pub struct Supervisor {
    pub proc: Proc,
    /// A client of its API with the token of its environment.
    pub api: Api,
    /// Where its API listens (`host:port`).
    pub http: String,
    /// Where workers dial (`host:port`).
    pub workers: String,
}

impl Supervisor {
    /// Start the supervisor with `env` and wait until it listens.
    pub fn start(logs: &Path, env: &Env) -> Supervisor {
        Supervisor::start_named(logs, "data-streams", env)
    }

    /// [`Supervisor::start`] logging to `<name>.log` (several supervisors in one folder).
    pub fn start_named(logs: &Path, name: &str, env: &Env) -> Supervisor {
        let (proc, line) = Proc::start(
            name,
            &bin("data-streams"),
            env,
            "data-streams listening",
            logs,
        );
        let http = addr_after(&line, "listening:");
        let workers = addr_after(&line, "(API),");
        Supervisor {
            proc,
            api: Api::new(&http, env.get("DATA_STREAMS_API_TOKEN")),
            http,
            workers,
        }
    }

    /// `env` with this supervisor's ports: a restart with it binds the same ones.
    pub fn same_ports(&self, env: &Env) -> Env {
        env.clone()
            .set("DATA_STREAMS_HTTP_ADDR", &self.http)
            .set("DATA_STREAMS_WORKER_ADDR", &self.workers)
    }
}

/// A worker dialling `worker_addr` with the test token, writing to `object_store_url`,
/// reconnecting within 500 ms.
pub fn worker_env(worker_addr: &str, object_store_url: &str) -> Env {
    Env::new()
        .set("DATA_STREAMS_WORKER_ADDR", worker_addr)
        .set("DATA_STREAMS_WORKER_TOKEN", WORKER_TOKEN)
        .set("OBJECT_STORE_URL", object_store_url)
        .set("WORKER_RECONNECT_MAX_MS", "500")
}

/// Start worker `id` with `env` and wait until it is connected.
pub fn start_worker(logs: &Path, id: &str, env: &Env) -> Proc {
    start_worker_until(logs, id, env, WORKER_CONNECTED).0
}

/// Start worker `id` with `env` and wait for a log line containing `ready`; returns the worker
/// and that line.
pub fn start_worker_until(logs: &Path, id: &str, env: &Env, ready: &str) -> (Proc, String) {
    let env = env.clone().set("WORKER_ID", id);
    Proc::start(id, &bin("worker"), &env, ready, logs)
}

/// The whole product as processes, on SQLite and a folder store in `logs`: iqair-sim, the
/// supervisor (with the API token) and one worker, connected.
pub struct Stack {
    /// The simulator's `host:port`.
    pub sim: String,
    pub supervisor: Supervisor,
    pub worker: Proc,
    _sim: Proc,
}

impl Stack {
    pub fn start(logs: &Path, worker_id: &str) -> Stack {
        let store = folder_store_url(logs);
        let (sim_proc, sim) = start_sim(logs, &sim_env());
        let database = format!("sqlite://{}", logs.join("ds.db").display());
        let supervisor = Supervisor::start(logs, &supervisor_env(&database, &store));
        let worker = start_worker(logs, worker_id, &worker_env(&supervisor.workers, &store));
        Stack {
            sim,
            supervisor,
            worker,
            _sim: sim_proc,
        }
    }
}
