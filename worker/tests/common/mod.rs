//! Test doubles shared by the paused-time worker tests: a scripted adapter standing in for the
//! external API and an in-memory object store (blocking file I/O would let the paused clock jump
//! past timeouts).

#![allow(dead_code)]

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use objects::{Created, ObjectInfo, ObjectMeta, ObjectStore, StoreError};
use protocol::{FailureClass, RateLimit, Schedule, StreamConfig};
use tokio::time::Instant;
use worker::adapters::{Adapter, AdapterError, FetchRequest, Fetched, Retry};

/// What the scripted API does on a call.
#[derive(Clone)]
pub enum Step {
    Ok,
    Hang,
    Fail(FailureClass, Retry),
}

/// An adapter that follows a script (then answers Ok) and records when and how it was called.
#[derive(Default)]
pub struct Scripted {
    script: Mutex<VecDeque<Step>>,
    /// When, which endpoint, which key.
    calls: Mutex<Vec<(Instant, String, String)>>,
}

impl Scripted {
    pub fn with(steps: Vec<Step>) -> Arc<Self> {
        Arc::new(Scripted {
            script: Mutex::new(steps.into()),
            calls: Mutex::new(Vec::new()),
        })
    }
    pub fn calls(&self) -> Vec<(Instant, String, String)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Adapter for Scripted {
    fn name(&self) -> &'static str {
        "IQAIR_DAILY"
    }
    fn fetch<'a>(&'a self, req: FetchRequest<'a>) -> BoxFuture<'a, Result<Fetched, AdapterError>> {
        self.calls.lock().unwrap().push((
            Instant::now(),
            req.endpoint.to_owned(),
            req.secret_key.expose().to_owned(),
        ));
        let step = self.script.lock().unwrap().pop_front().unwrap_or(Step::Ok);
        Box::pin(async move {
            match step {
                Step::Ok => Ok(Fetched {
                    body: Bytes::from_static(br#"{"status":"success","data":{}}"#),
                    measurement: None,
                }),
                Step::Hang => std::future::pending().await,
                Step::Fail(class, retry) => {
                    Err(AdapterError::new(class, "scripted failure", retry))
                }
            }
        })
    }
}

/// An in-memory object store.
#[derive(Debug, Default)]
pub struct Memory {
    pub objects: Mutex<HashMap<(String, String), Bytes>>,
}

#[async_trait::async_trait]
impl ObjectStore for Memory {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        _meta: &ObjectMeta,
    ) -> Result<(), StoreError> {
        self.objects
            .lock()
            .unwrap()
            .insert((bucket.into(), key.into()), body);
        Ok(())
    }
    async fn put_new(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        _meta: &ObjectMeta,
    ) -> Result<Created, StoreError> {
        let mut objects = self.objects.lock().unwrap();
        match objects.entry((bucket.into(), key.into())) {
            Entry::Occupied(stored) => Ok(Created::Existing(ObjectInfo {
                key: key.into(),
                size: stored.get().len() as u64,
                meta: None,
            })),
            Entry::Vacant(slot) => {
                slot.insert(body);
                Ok(Created::New)
            }
        }
    }
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, StoreError> {
        self.objects
            .lock()
            .unwrap()
            .get(&(bucket.into(), key.into()))
            .cloned()
            .ok_or_else(|| StoreError::NoSuchKey {
                bucket: bucket.into(),
                key: key.into(),
            })
    }
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError> {
        let size = self.get(bucket, key).await?.len() as u64;
        Ok(ObjectInfo {
            key: key.into(),
            size,
            meta: None,
        })
    }
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut out: Vec<ObjectInfo> = self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((b, k), _)| b == bucket && k.starts_with(prefix))
            .map(|((_, k), v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
                meta: None,
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.objects
            .lock()
            .unwrap()
            .remove(&(bucket.into(), key.into()));
        Ok(())
    }
    async fn ensure_bucket(&self, _bucket: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// A stream every 60 s with no call budget and a fresh id: the store-side tests' fixture.
pub fn stream_config(timeout_ms: u64) -> StreamConfig {
    StreamConfig {
        stream_id: uuid::Uuid::now_v7(),
        generation: 1,
        adapter: "IQAIR_DAILY".into(),
        endpoint: "http://api.example/v2/nearest_city".into(),
        secret_key: "key-1".into(),
        schedule: Schedule::Interval { millis: 60_000 },
        timeout_ms,
        bucket_name: "results".into(),
        params: std::collections::BTreeMap::new(),
        rate_limit: RateLimit::UNLIMITED,
        source: String::new(),
        window_start_ms: None,
    }
}
