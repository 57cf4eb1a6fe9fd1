//! Child processes of a benchmark run: the release binaries, on free loopback ports, killed when
//! dropped, with their output in log files under one temp folder (kept, and printed, on failure).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// What every part shares: where the binaries are, where logs go, how long to run.
pub struct Context {
    pub bin_dir: PathBuf,
    pub quick: bool,
    /// Logs and data of this run.
    pub work: tempfile::TempDir,
}

impl Context {
    pub fn new(bin_dir: PathBuf, quick: bool) -> anyhow::Result<Self> {
        let work = tempfile::Builder::new().prefix("ds-bench.").tempdir()?;
        crate::report::note(format!("logs and data under {}", work.path().display()));
        Ok(Context {
            bin_dir,
            quick,
            work,
        })
    }

    /// Path of a release binary; an error naming the build command when it is missing.
    pub fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: build it with scripts/bench.sh (cargo build --release)",
                path.display()
            );
        }
        Ok(path)
    }

    /// A fresh folder under the run's temp folder.
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// A free loopback port (bound, then released: good enough on a quiet machine).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Start `bin` with `env` (and `RUST_LOG=warn` unless given), and wait up to 60 s for an
    /// output line containing `ready` (an empty `ready`: no wait). Returns the process and that
    /// line.
    pub fn start(
        name: &str,
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
        ready: &str,
        logs: &Path,
    ) -> anyhow::Result<(Proc, String)> {
        let log = logs.join(format!("{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", bin.display()))?;
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                let Ok(mut file) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                else {
                    return;
                };
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(60);
        if ready.is_empty() {
            std::thread::spawn(move || for _ in rx {});
            let proc = Proc {
                name: name.to_owned(),
                child,
                log,
            };
            return Ok((proc, String::new()));
        }
        let mut proc = Proc {
            name: name.to_owned(),
            child,
            log,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) if line.contains(ready) => {
                    // Keep draining so the child never blocks on a full pipe.
                    std::thread::spawn(move || for _ in rx {});
                    return Ok((proc, line));
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = proc.child.try_wait()? {
                        bail!(
                            "{name} exited with {status} before ready; see {}",
                            proc.log.display()
                        );
                    }
                    if Instant::now() >= deadline {
                        bail!("{name} not ready after 60 s; see {}", proc.log.display());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = proc.child.wait()?;
                    bail!(
                        "{name} exited with {status} before ready; see {}",
                        proc.log.display()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes, from /proc.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// VmRSS of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("bad VmRSS line {line:?}"))?
        .parse()?;
    Ok(kib * 1024)
}

/// CPU time (user + system) a process has used so far, in seconds, from /proc.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do
    // not. utime and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    // `rest` starts at field 3 (state), so field k is at index k - 3.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
