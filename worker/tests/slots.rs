//! A slot is stored once, whoever fetches it: two workers (two runners, each with its own client
//! of one store) running the same slot of the same stream, as during a partition, end with one
//! object and report the same reference. On the real stores: a folder store (two handles on one
//! folder) and S3 (two clients of the in-process S3 server). Real time, since the stores do real
//! I/O.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use objects::test_server::S3TestServer;
use objects::{FolderStore, ObjectKey, ObjectStore, S3Store, StoreOptions};
use protocol::{Measurement, ResultRecord, StreamConfig};
use tokio::sync::Barrier;
use tokio::time::Instant;
use worker::adapters::{Adapter, AdapterError, Adapters, FetchRequest, Fetched};
use worker::outbox::Outbox;
use worker::runner::{RunOutcome, Runner};

mod common;
use common::stream_config;

/// An API answering the same bytes (and reading) every time, counting its calls; its first
/// call waits at a barrier when given one, so two workers' fetches overlap.
struct Fixed {
    body: Bytes,
    reading: Measurement,
    calls: AtomicUsize,
    together: Mutex<Option<Arc<Barrier>>>,
}

impl Adapter for Fixed {
    fn name(&self) -> &'static str {
        "IQAIR_DAILY"
    }
    fn fetch<'a>(&'a self, _req: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, AdapterError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let together = self.together.lock().unwrap().take();
        Box::pin(async move {
            if let Some(together) = together {
                together.wait().await;
            }
            Ok(Fetched {
                body: self.body.clone(),
                measurement: Some(self.reading.clone()),
            })
        })
    }
}

/// One worker: its runner, its API and its outbox.
struct Worker {
    runner: Runner,
    api: Arc<Fixed>,
}

impl Worker {
    fn new(
        store: Arc<dyn ObjectStore>,
        body: &'static [u8],
        together: Option<Arc<Barrier>>,
    ) -> Self {
        let api = Arc::new(Fixed {
            body: Bytes::from_static(body),
            reading: Measurement {
                city: Some(String::from_utf8_lossy(body).into_owned()),
                ..Measurement::default()
            },
            calls: AtomicUsize::new(0),
            together: Mutex::new(together),
        });
        let runner = Runner::new(
            Adapters::from_list(vec![api.clone() as Arc<dyn Adapter>]),
            store,
            Arc::new(Outbox::new(100)),
        );
        Worker { runner, api }
    }

    async fn run_slot(&self, cfg: &StreamConfig, slot_ms: i64) -> ResultRecord {
        match self.runner.run_slot(cfg, Instant::now(), slot_ms).await {
            RunOutcome::Stored(record) => record,
            other => panic!("expected a stored run, got {other:?}"),
        }
    }
}

/// A slot a little in the past, on a whole minute.
fn slot_ms() -> i64 {
    (chrono::Utc::now().timestamp_millis() / 60_000 - 1) * 60_000
}

const CREATE: StoreOptions = StoreOptions {
    create_buckets: true,
};

/// Two handles on one store, as two worker processes have.
async fn folder_pair(root: &std::path::Path) -> [Arc<dyn ObjectStore>; 2] {
    [
        Arc::new(FolderStore::new(root, CREATE).await.unwrap()),
        Arc::new(FolderStore::new(root, CREATE).await.unwrap()),
    ]
}

async fn s3_pair(server: &S3TestServer) -> [Arc<dyn ObjectStore>; 2] {
    [
        Arc::new(S3Store::new(server.settings(), CREATE).await.unwrap()),
        Arc::new(S3Store::new(server.settings(), CREATE).await.unwrap()),
    ]
}

/// Both workers fetch the same bytes of one slot at the same moment: one object, the slot's, and
/// both report it alike, each with its own run.
async fn same_slot_same_bytes(stores: [Arc<dyn ObjectStore>; 2]) {
    let together = Arc::new(Barrier::new(2));
    let [a, b] = stores;
    let store = a.clone();
    let body = br#"{"status":"success","data":{"city":"Berlin"}}"#;
    let (a, b) = (
        Worker::new(a, body, Some(together.clone())),
        Worker::new(b, body, Some(together)),
    );
    let cfg = stream_config(10_000);
    let slot = slot_ms();
    let (from_a, from_b) = tokio::join!(a.run_slot(&cfg, slot), b.run_slot(&cfg, slot));

    // Two calls against the key (the price of a partition), one object.
    assert_eq!(a.api.calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.api.calls.load(Ordering::SeqCst), 1);
    let prefix = ObjectKey::stream_prefix(objects::Layout::Hive, "IQAIR_DAILY", cfg.stream_id);
    let listed = store.list("results", &prefix).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        store.get("results", &listed[0].key).await.unwrap(),
        &body[..]
    );

    // The same reference from both: the slot's id, key, size and hash.
    let id = objects::slot_result_id(cfg.stream_id, slot);
    for record in [&from_a, &from_b] {
        assert_eq!(record.result_id, id);
        assert_eq!(record.key, listed[0].key);
        assert_eq!(record.size, body.len() as u64);
        assert_eq!(record.sha256, objects::sha256_hex(body));
        // Same bytes, so the same reading: both may carry it.
        assert!(record.measurement.is_some());
    }
    assert_eq!(objects::uuid_time_ms(id), Some(slot));
    assert_ne!(from_a.run_id, from_b.run_id, "two runs happened");
    // The key is dated by the slot, so the stream's keys stay a timeline.
    assert_eq!(
        listed[0].key,
        ObjectKey::for_result("IQAIR_DAILY", cfg.stream_id, id).to_string()
    );

    // The same slot again on one worker (a restart inside the slot, or a retried put whose
    // answer was lost): no failure, no second object, the same reference.
    let again = a.run_slot(&cfg, slot).await;
    assert_eq!(again.result_id, id);
    assert_eq!(again.sha256, from_a.sha256);
    assert_eq!(store.list("results", &prefix).await.unwrap().len(), 1);

    // The next slot is an object of its own, sorting after.
    let next = b.run_slot(&cfg, slot + 60_000).await;
    let listed = store.list("results", &prefix).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].key, next.key);
}

/// The two fetches of one slot answered different bytes: the first stored wins, untouched, and
/// the second worker reports it — its size, hash and fetch time — without the reading it parsed
/// from bytes that were not stored.
async fn same_slot_other_bytes(stores: [Arc<dyn ObjectStore>; 2]) {
    let [a, b] = stores;
    let store = a.clone();
    let first = br#"{"status":"success","data":{"city":"Berlin"}}"#;
    let second = br#"{"status":"success","data":{"city":"Berlin","later":true}}"#;
    let (a, b) = (Worker::new(a, first, None), Worker::new(b, second, None));
    let cfg = stream_config(10_000);
    let slot = slot_ms();
    let from_a = a.run_slot(&cfg, slot).await;
    let from_b = b.run_slot(&cfg, slot).await;

    let prefix = ObjectKey::stream_prefix(objects::Layout::Hive, "IQAIR_DAILY", cfg.stream_id);
    let listed = store.list("results", &prefix).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(store.get("results", &from_a.key).await.unwrap(), &first[..]);
    assert_eq!(from_b.result_id, from_a.result_id);
    assert_eq!(from_b.key, from_a.key);
    assert_eq!(from_b.size, first.len() as u64);
    assert_eq!(from_b.sha256, objects::sha256_hex(first));
    assert_eq!(from_b.fetched_at_ms, from_a.fetched_at_ms);
    assert!(from_a.measurement.is_some());
    assert_eq!(
        from_b.measurement, None,
        "a reading of bytes that were not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_store_two_workers_store_a_slot_once() {
    let dir = tempfile::tempdir().unwrap();
    same_slot_same_bytes(folder_pair(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_store_the_first_of_two_different_fetches_wins() {
    let dir = tempfile::tempdir().unwrap();
    same_slot_other_bytes(folder_pair(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_two_workers_store_a_slot_once() {
    let server = S3TestServer::start();
    same_slot_same_bytes(s3_pair(&server).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_the_first_of_two_different_fetches_wins() {
    let server = S3TestServer::start();
    same_slot_other_bytes(s3_pair(&server).await).await;
}
