//! Runs against a slow object store: a real S3 server (the `objects` test server) behind a
//! loopback link that carries at most a fixed number of bytes a second towards it, shared by
//! every connection — a store that serves puts one after another, at its own pace. The store is
//! wrapped only to count the puts in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use objects::test_server::S3TestServer;
use objects::{Created, ObjectInfo, ObjectMeta, ObjectStore, S3Store, StoreError, StoreOptions};
use protocol::StreamConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use worker::adapters::{Adapter, Adapters};
use worker::outbox::Outbox;
use worker::runner::{RunOutcome, Runner};

mod common;

use common::{stream_config, Scripted};

/// Bytes a second the link carries towards the store, all connections together.
const LINK_RATE: f64 = 60_000.0;

/// A TCP relay to `target` whose upstream direction shares [`LINK_RATE`] across connections.
async fn slow_link(target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // When the link is next free: each chunk reserves its time after the ones before it.
    let next_free = Arc::new(Mutex::new(Instant::now()));
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let next_free = next_free.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_store, mut to_store) = outbound.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let at = {
                            let mut next = next_free.lock().unwrap();
                            let start = (*next).max(Instant::now());
                            *next = start + Duration::from_secs_f64(n as f64 / LINK_RATE);
                            *next
                        };
                        tokio::time::sleep_until(at).await;
                        if to_store.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to_store.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut from_store, &mut to_client).await;
                    let _ = to_client.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    addr
}

/// The real store, counting the puts in flight and the most seen at once.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn ObjectStore>,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

/// Leaves the count when the put ends (or is dropped at a timeout).
struct InFlight<'a>(&'a Counting);

impl Counting {
    /// Counts a put in, and its most at once; it leaves when the guard drops.
    fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counting {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<(), StoreError> {
        let _in_flight = self.enter();
        self.inner.put(bucket, key, body, meta).await
    }
    async fn put_new(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<Created, StoreError> {
        let _in_flight = self.enter();
        self.inner.put_new(bucket, key, body, meta).await
    }
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(bucket, key).await
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError> {
        self.inner.head(bucket, key).await
    }
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(bucket, prefix).await
    }
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.inner.delete(bucket, key).await
    }
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        self.inner.ensure_bucket(bucket).await
    }
    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_means_slower_runs_not_storage_failures() {
    const RUNS: usize = 200;
    const BOUND: usize = 8;
    const TIMEOUT_MS: u64 = 2_000;

    let server = S3TestServer::start();
    let link = slow_link(
        server
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    )
    .await;
    let mut settings = server.settings();
    settings.endpoint = Some(format!("http://{link}"));
    let s3 = S3Store::new(
        settings,
        StoreOptions {
            create_buckets: true,
        },
    )
    .await
    .unwrap();
    s3.ensure_bucket("results").await.unwrap();
    let store = Arc::new(Counting {
        inner: Arc::new(s3),
        in_flight: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let outbox = Arc::new(Outbox::new(10_000));
    let runner = Runner::new(
        Adapters::from_list(vec![Scripted::with(vec![]) as Arc<dyn Adapter>]),
        store.clone(),
        outbox.clone(),
    )
    .with_store_concurrency(BOUND);

    // Every run due at once, as after a restart: far more puts than the store takes at a time.
    let t0 = Instant::now();
    let configs: Vec<StreamConfig> = (0..RUNS).map(|_| stream_config(TIMEOUT_MS)).collect();
    let outcomes =
        futures::future::join_all(configs.iter().map(|cfg| runner.run(cfg, Instant::now()))).await;
    let took = t0.elapsed();

    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            RunOutcome::Failed(f) => Some(format!("{}: {}", f.class, f.message)),
            _ => None,
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} runs failed: {failures:?}",
        failures.len()
    );
    assert!(
        took > Duration::from_millis(TIMEOUT_MS),
        "the link lets the puts through in {took:?}, within one run's timeout: not slow enough \
         to show anything"
    );
    let most = store.most.load(Ordering::SeqCst);
    assert_eq!(most, BOUND, "puts in flight at once, at most");
    assert_eq!(store.list("results", "").await.unwrap().len(), RUNS);
    assert_eq!(outbox.len(), RUNS, "one result event per run");
}
