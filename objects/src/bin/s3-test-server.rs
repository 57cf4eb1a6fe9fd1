//! `s3-test-server`: the in-process S3 test server (`objects::test_server`, s3s-fs) as a process,
//! for scripts such as `scripts/chaos.sh`. For loopback and tests only.
//!
//! ```text
//! s3-test-server [--addr 127.0.0.1:0] [--root DIR] [--access-key K] [--secret-key S]
//! ```
//!
//! Flags fall back to `S3_TEST_SERVER_ADDR`, `S3_TEST_SERVER_ROOT`, `S3_TEST_SERVER_ACCESS_KEY`
//! and `S3_TEST_SERVER_SECRET_KEY`. With `--root` the buckets live in that folder and outlive
//! the process, so a restart on the same address and folder serves the same objects; without it
//! a temporary folder is used and removed at exit. The credentials are made-up test values
//! (defaults `test-access-key` / `test-secret-key`), printed on the ready line:
//!
//! ```text
//! s3-test-server listening on http://127.0.0.1:PORT access_key=... secret_key=...
//! ```
//!
//! SIGTERM or Ctrl-C stops it.

use std::path::PathBuf;
use std::process::ExitCode;

use objects::test_server::S3TestServer;

struct Args {
    addr: String,
    root: Option<PathBuf>,
    access_key: String,
    secret_key: String,
}

const USAGE: &str =
    "usage: s3-test-server [--addr HOST:PORT] [--root DIR] [--access-key K] [--secret-key S]";

fn parse() -> Result<Args, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut args = Args {
        addr: env("S3_TEST_SERVER_ADDR").unwrap_or_else(|| "127.0.0.1:0".into()),
        root: env("S3_TEST_SERVER_ROOT").map(PathBuf::from),
        access_key: env("S3_TEST_SERVER_ACCESS_KEY").unwrap_or_else(|| "test-access-key".into()),
        secret_key: env("S3_TEST_SERVER_SECRET_KEY").unwrap_or_else(|| "test-secret-key".into()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.clone(), None),
        };
        let value = match inline.or_else(|| it.next()) {
            Some(v) => v,
            None => return Err(format!("{name} needs a value\n{USAGE}")),
        };
        match name.as_str() {
            "--addr" => args.addr = value,
            "--root" => args.root = Some(PathBuf::from(value)),
            "--access-key" => args.access_key = value,
            "--secret-key" => args.secret_key = value,
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let server = match S3TestServer::start_on(
        &args.addr,
        args.root.as_deref(),
        &args.access_key,
        &args.secret_key,
    ) {
        Ok(server) => server,
        Err(err) => {
            let root = args
                .root
                .as_ref()
                .map(|r| format!(" with root {}", r.display()))
                .unwrap_or_default();
            eprintln!("s3-test-server: cannot start on {}{root}: {err}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    println!(
        "s3-test-server listening on {} access_key={} secret_key={} root={}",
        server.endpoint,
        server.access_key,
        server.secret_key.expose(),
        server.root().display()
    );
    common::shutdown_signal().await;
    drop(server);
    eprintln!("s3-test-server stopped");
    ExitCode::SUCCESS
}
