//! A TCP proxy on loopback between a test's peers, for the network going wrong as one side sees
//! it, without touching the other side (or the shared PostgreSQL server):
//!
//! - [`TcpProxy::freeze`]: open connections stop carrying bytes either way without closing (a
//!   peer that went silent), new connections are dropped at once; [`TcpProxy::thaw`] resumes.
//! - [`TcpProxy::cut`]: the listener closes and open connections are dropped (the peer went
//!   away); [`TcpProxy::restore`] listens again on the same port.
//! - [`TcpProxy::recording`]: keeps every byte that crosses, each direction apart
//!   ([`TcpProxy::recorded`]).
//!
//! It runs on a runtime of its own, so it serves whatever the test blocks on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A loopback address nothing listens on: bound, read, and released again.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener
        .local_addr()
        .expect("a bound socket has an address")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Frozen,
    Cut,
}

/// Bytes that crossed the proxy in one direction, on every connection.
type Bytes = Arc<Mutex<Vec<u8>>>;

/// What a recording proxy keeps: (towards the target, back from it).
type Recorded = (Bytes, Bytes);

pub struct TcpProxy {
    /// Where the proxy listens (the same port after a cut and a restore).
    pub address: SocketAddr,
    state: watch::Sender<State>,
    recorded: Option<Recorded>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TcpProxy {
    /// Forward connections to `target` (`host:port`).
    pub fn start(target: String) -> TcpProxy {
        TcpProxy::spawn(target, None)
    }

    /// Forward connections to `target` and keep what crosses, for [`TcpProxy::recorded`].
    pub fn recording(target: String) -> TcpProxy {
        TcpProxy::spawn(target, Some(Recorded::default()))
    }

    fn spawn(target: String, recorded: Option<Recorded>) -> TcpProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the proxy");
        let address = closed_port();
        let (state, watching) = watch::channel(State::Up);
        runtime.spawn(serve(address, target, watching, recorded.clone()));
        TcpProxy {
            address,
            state,
            recorded,
            runtime: Some(runtime),
        }
    }

    pub fn freeze(&self) {
        self.state.send_replace(State::Frozen);
    }

    pub fn thaw(&self) {
        self.state.send_replace(State::Up);
    }

    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    pub fn restore(&self) {
        self.state.send_replace(State::Up);
    }

    /// What crossed so far: (towards the target, back from it).
    pub fn recorded(&self) -> (Vec<u8>, Vec<u8>) {
        let (to_target, from_target) = self
            .recorded
            .as_ref()
            .expect("a proxy started with TcpProxy::recording");
        let copy = |bytes: &Bytes| bytes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (copy(to_target), copy(from_target))
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve(
    address: SocketAddr,
    target: String,
    mut state: watch::Receiver<State>,
    recorded: Option<Recorded>,
) {
    loop {
        if state.wait_for(|s| *s != State::Cut).await.is_err() {
            return;
        }
        let listener = loop {
            match TcpListener::bind(address).await {
                Ok(listener) => break listener,
                // The port was just released; the kernel may need a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        loop {
            let mut cut = state.clone();
            let client = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => client,
                    Err(_) => continue,
                },
                _ = cut.wait_for(|s| *s == State::Cut) => break,
            };
            if *state.borrow() != State::Up {
                continue;
            }
            let Ok(server) = TcpStream::connect(&target).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let (to_target, from_target) = recorded.clone().unzip();
            tokio::spawn(pump(client_read, server_write, state.clone(), to_target));
            tokio::spawn(pump(server_read, client_write, state.clone(), from_target));
        }
    }
}

/// Copy `from` to `to` while the proxy is up: stall while it is frozen, drop the connection
/// when it is cut, pass an end of stream on.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    record: Option<Bytes>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let now = *state.borrow_and_update();
        match now {
            State::Cut => return,
            State::Frozen => {
                if state.changed().await.is_err() {
                    return;
                }
                continue;
            }
            State::Up => {}
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if let Some(record) = &record {
                        record
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend_from_slice(&buf[..n]);
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}
