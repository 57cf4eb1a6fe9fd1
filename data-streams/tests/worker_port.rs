//! The wire against the real supervisor: bad peers on the worker port lose their own connection
//! (with a `Reject` frame first where there is something to say), while a good worker keeps
//! working and a new one still gets in; and a supervisor restart on the same port loses and
//! duplicates nothing a worker produced meanwhile.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use protocol::handshake;
use protocol::{Connection, Frame, Hello, ProtocolError, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use data_streams::supervisor::Role;
use support::{eventually, ids_of, logged, settled, spawn_app, unique, TestApp, WORKER_TOKEN};

/// How a bad connection ended, seen from the client.
#[derive(Debug)]
struct Ending {
    /// A `Reject` frame's reason, if one came.
    rejected: Option<String>,
}

/// Read frames until the supervisor closes the connection (EOF or reset); panics if it stays
/// open past `within`.
async fn read_until_closed(conn: &mut Connection<TcpStream>, within: Duration) -> Ending {
    let deadline = tokio::time::Instant::now() + within;
    let mut rejected = None;
    loop {
        match tokio::time::timeout_at(deadline, conn.read_frame()).await {
            Err(_) => panic!("the supervisor kept the connection open for {within:?}"),
            Ok(Ok(Some(Frame::Reject(r)))) => rejected = Some(r.reason),
            Ok(Ok(Some(Frame::Challenge(_)))) => {}
            Ok(Ok(Some(other))) => panic!("unexpected {} frame", other.kind()),
            // EOF, a reset, or a half frame: closed either way.
            Ok(Ok(None)) | Ok(Err(ProtocolError::Io(_))) | Ok(Err(ProtocolError::Truncated)) => {
                return Ending { rejected };
            }
            Ok(Err(e)) => panic!("unexpected read error: {e}"),
        }
    }
}

async fn dial(addr: SocketAddr) -> (Connection<TcpStream>, SocketAddr) {
    let socket = TcpStream::connect(addr).await.expect("connect");
    let local = socket.local_addr().expect("local address");
    (
        Connection::new(socket, protocol::codec::DEFAULT_MAX_FRAME),
        local,
    )
}

/// Wait for the challenge every connection starts with.
async fn challenge(conn: &mut Connection<TcpStream>) -> protocol::Challenge {
    match tokio::time::timeout(Duration::from_secs(10), conn.read_frame()).await {
        Ok(Ok(Some(Frame::Challenge(c)))) => c,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// The supervisor logged why it closed the connection from `peer`.
async fn logged_close(peer: SocketAddr, reason: &str) -> String {
    let peer = format!("peer={peer}");
    eventually(
        Duration::from_secs(10),
        &format!("a log line for {peer} with {reason:?}"),
        || async {
            let lines = logged(&[&peer, "worker connection closed"]);
            match lines.iter().find(|l| l.contains(reason)) {
                Some(line) => Ok(line.clone()),
                None => Err(format!("{lines:?}")),
            }
        },
    )
    .await
}

/// A raw socket that has read the challenge (the supervisor's first frame).
async fn dial_raw(addr: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let local = socket.local_addr().expect("local address");
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut len))
        .await
        .expect("a challenge within 10 s")
        .expect("read the length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    socket.read_exact(&mut body).await.expect("read the body");
    match protocol::codec::decode(&body) {
        Ok(Frame::Challenge(_)) => {}
        other => panic!("expected a challenge, got {other:?}"),
    }
    (socket, local)
}

/// Read until the supervisor closes (EOF or reset); panics if it stays open past `within`.
/// Returns the bytes that came before the close.
async fn raw_until_closed(socket: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => panic!("the supervisor kept the connection open for {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn oversize_length_prefix(addr: SocketAddr) {
    let (mut socket, local) = dial_raw(addr).await;
    // Nearly 4 GiB announced, against a 1 MiB limit.
    socket
        .write_all(&[0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4])
        .await
        .expect("write");
    let after = raw_until_closed(&mut socket, Duration::from_secs(10)).await;
    assert!(after.is_empty(), "nothing but a close: {after:?}");
    logged_close(local, "exceeds the limit").await;
}

async fn random_bytes(addr: SocketAddr) {
    let (mut socket, local) = dial_raw(addr).await;
    // A well-framed body that is not a frame: a fixed pseudo-random pattern (deterministic),
    // its first byte no frame variant.
    let mut state: u32 = 0x9e37_79b9;
    let body: Vec<u8> = std::iter::once(0xc7)
        .chain((0..63).map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        }))
        .collect();
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    socket.write_all(&bytes).await.expect("write");
    let after = raw_until_closed(&mut socket, Duration::from_secs(10)).await;
    assert!(after.is_empty(), "nothing but a close: {after:?}");
    logged_close(local, "malformed frame").await;
}

async fn unframed_garbage(addr: SocketAddr) {
    let (mut socket, local) = dial_raw(addr).await;
    // Not even framing: an HTTP request on the worker port.
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    raw_until_closed(&mut socket, Duration::from_secs(10)).await;
    // "GET " read as a length is over 1 GiB.
    logged_close(local, "exceeds the limit").await;
}

async fn wrong_token(addr: SocketAddr) {
    let (mut conn, local) = dial(addr).await;
    let refused = handshake::connect(
        &mut conn,
        b"not-the-token",
        handshake::WorkerIdentity {
            worker_id: "intruder".to_owned(),
            capacity: 10,
            adapters: vec!["IQAIR_DAILY".to_owned()],
            running: 0,
        },
        Duration::from_secs(10),
    )
    .await;
    match refused {
        Err(ProtocolError::Rejected(reason)) => {
            assert!(reason.contains("authentication failed"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    read_until_closed(&mut conn, Duration::from_secs(10)).await;
    logged_close(local, "authentication failed").await;
}

async fn wrong_version(addr: SocketAddr) {
    let (mut conn, local) = dial(addr).await;
    let c = challenge(&mut conn).await;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION + 98,
        worker_id: "from-the-future".to_owned(),
        capacity: 10,
        adapters: vec!["IQAIR_DAILY".to_owned()],
        running: 0,
        mac: handshake::sign(WORKER_TOKEN.as_bytes(), &c.nonce, "from-the-future"),
    };
    conn.write_frame(&Frame::Hello(Box::new(hello)))
        .await
        .expect("hello");
    let ending = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    let reason = ending.rejected.expect("a Reject frame before the close");
    assert!(
        reason.contains(&format!("protocol version {}", PROTOCOL_VERSION + 98)),
        "{reason}"
    );
    logged_close(local, "protocol version").await;
}

async fn silence(addr: SocketAddr) {
    let (mut conn, local) = dial(addr).await;
    challenge(&mut conn).await;
    // spawn_app sets the handshake timeout to 2 s.
    let ending = read_until_closed(&mut conn, Duration::from_secs(15)).await;
    assert_eq!(ending.rejected, None);
    logged_close(local, "no hello within").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peers_lose_their_connection_and_good_workers_carry_on() {
    let app = spawn_app().await;
    let _good = app.spawn_worker("w-good", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_running_on(&id, "w-good").await;
    app.wait_for_results(&id, 2).await;
    let before = app.result_count(&id).await;

    let addr = app.worker_addr;
    // All at once: the silent one takes the handshake timeout, the others are quick.
    tokio::join!(silence(addr), async {
        oversize_length_prefix(addr).await;
        random_bytes(addr).await;
        unframed_garbage(addr).await;
        wrong_token(addr).await;
        wrong_version(addr).await;
    });

    // The good worker never noticed.
    app.wait_for_results(&id, before + 2).await;
    let s = app.stream(&id).await;
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["worker_id"], "w-good", "{s}");
    let workers = app.workers().await;
    assert!(!workers.contains_key("intruder"), "{workers:?}");
    assert!(!workers.contains_key("from-the-future"), "{workers:?}");
    assert_eq!(workers.get("w-good"), Some(&(true, 1)), "{workers:?}");

    // And a new good worker still gets in.
    let _late = app.spawn_worker("w-late", 10).await;
    app.wait_worker_connected("w-late", true).await;
    let other = app.create_running(1_000).await;
    eventually(Duration::from_secs(20), "the new stream runs", || async {
        let s = app.stream(&other).await;
        if s["status"] == "running" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;
}

/// Everything the store and the index agree on once nothing moves any more.
async fn index_matches_store(app: &TestApp, id: &str) -> Vec<uuid::Uuid> {
    let files = settled(
        Duration::from_secs(30),
        Duration::from_secs(2),
        "the object files and references",
        || async { (app.objects_of(id), app.result_count(id).await) },
    )
    .await
    .0;
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_supervisor_restart_the_worker_reconnects_and_nothing_is_lost_or_doubled() {
    let mut app = spawn_app().await;
    let _worker = app.spawn_worker("w-stays", 10).await;
    let id = app.create_running(1_000).await;
    app.wait_running_on(&id, "w-stays").await;
    app.wait_for_results(&id, 2).await;

    let worker_addr = app.worker_addr;
    app.stop_supervisor().await;
    // The worker keeps running and storing while the supervisor is down.
    let at_stop = app.objects_of(&id).len();
    eventually(
        Duration::from_secs(20),
        "objects stored while the supervisor is down",
        || async {
            let n = app.objects_of(&id).len();
            if n >= at_stop + 3 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
    let stored_while_down: HashSet<uuid::Uuid> = app.objects_of(&id).into_iter().collect();

    app.start_supervisor().await;
    assert_eq!(app.worker_addr, worker_addr, "the same worker port");
    app.wait_worker_connected("w-stays", true).await;
    app.wait_running_on(&id, "w-stays").await;
    // Everything stored while it was down arrives.
    eventually(
        Duration::from_secs(20),
        "the events of the downtime",
        || async {
            let refs: HashSet<uuid::Uuid> =
                ids_of(&app.all_results(&id).await).into_iter().collect();
            let missing: Vec<_> = stored_while_down.difference(&refs).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {missing:?}"))
            }
        },
    )
    .await;

    // Stop the stream, let the last run land, and compare index and store.
    let (status, body) = app.post_empty(&format!("/streams/{id}/stop")).await;
    assert_eq!(status, 200, "{body}");
    let files = index_matches_store(&app, &id).await;
    let refs = ids_of(&app.all_results(&id).await);
    assert!(unique(&refs), "duplicate references: {refs:?}");
    let mut sorted = refs.clone();
    sorted.sort();
    assert_eq!(sorted, files, "references and object files differ");
    assert_eq!(
        app.db()
            .count_results(Some(uuid::Uuid::parse_str(&id).unwrap()))
            .await
            .unwrap() as usize,
        files.len()
    );
}

/// Workers follow the leader: a follower verifies a worker's hello and sends it to the leader's
/// worker address, a worker given several addresses tries them in turn (the first here has
/// nobody listening), and when the leader steps down its workers' links close and their next
/// dial finds the new leader.
#[tokio::test]
async fn workers_follow_the_leader_across_a_change_of_roles() {
    let first = spawn_app().await;
    let second = spawn_app().await;
    second.supervisor().set_role(Role::Follower {
        leader_worker_addr: Some(first.worker_addr.to_string()),
    });
    // A port nobody listens on, the follower, then the leader (reached first by the redirect).
    let nobody = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.local_addr().expect("its address")
    };
    let addrs = format!("{nobody},{},{}", second.worker_addr, first.worker_addr);
    let _worker = support::spawn_worker(&addrs, &first.store_url, "follower-1", 10).await;
    first.wait_worker_connected("follower-1", true).await;
    assert!(
        !second.workers().await.contains_key("follower-1"),
        "the follower never took the worker"
    );

    // The roles swap: the old leader closes the link, and the worker's next dial through its
    // own list reaches the new leader.
    second.supervisor().set_role(Role::Leader);
    first.supervisor().set_role(Role::Follower {
        leader_worker_addr: Some(second.worker_addr.to_string()),
    });
    second.wait_worker_connected("follower-1", true).await;
    first.wait_worker_connected("follower-1", false).await;

    // A follower that knows no leader yet sends the worker on to its other addresses, and
    // one of them leads again.
    second.supervisor().set_role(Role::Follower {
        leader_worker_addr: None,
    });
    first.supervisor().set_role(Role::Leader);
    first.wait_worker_connected("follower-1", true).await;
}
