//! A real S3 server for tests (feature `test-server`): `s3s-fs` serving a temporary folder over
//! HTTP/1 on `127.0.0.1:0` with static credentials, behind a thin layer that makes it answer the
//! way S3 and MinIO do where s3s-fs 0.14 differs.
//!
//! The server runs on its own thread with its own Tokio runtime, so it keeps answering whatever
//! the test does with its own runtime: block a thread waiting for a child process, run on a
//! current-thread runtime, or no runtime at all. Child processes reach it over loopback through
//! the variables [`S3TestServer::env`] returns.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};
use tempfile::TempDir;
use tokio::sync::{oneshot, RwLock};

use crate::S3Settings;
use common::SecretKey;

/// The region the server is addressed with; s3s-fs accepts any.
pub const TEST_REGION: &str = "us-east-1";

/// An S3 server on a random loopback port, serving a fresh temporary folder. Dropping it stops
/// the server (open connections included) and removes the folder.
#[derive(Debug)]
pub struct S3TestServer {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    /// The only access key id the server accepts.
    pub access_key: String,
    /// The secret that goes with `access_key`.
    pub secret_key: SecretKey,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    root: PathBuf,
    /// The temporary folder behind `root`, when the server made its own (removed on drop).
    temp: Option<TempDir>,
}

impl S3TestServer {
    /// A server with credentials made up for it (`test-access-key` and a random secret).
    ///
    /// # Panics
    ///
    /// When the temporary folder, the runtime or the loopback socket cannot be had: a test
    /// cannot go on without them.
    pub fn start() -> S3TestServer {
        let secret = format!("test-secret-{}", uuid::Uuid::new_v4().simple());
        S3TestServer::start_with_credentials("test-access-key", &secret)
    }

    /// A server accepting only signatures made with `access_key` and `secret_key`.
    ///
    /// # Panics
    ///
    /// As [`S3TestServer::start`].
    pub fn start_with_credentials(access_key: &str, secret_key: &str) -> S3TestServer {
        S3TestServer::start_on("127.0.0.1:0", None, access_key, secret_key)
            .expect("bind a loopback port for S3")
    }

    /// A server on `addr` (port 0: a free one) serving `root`, or a fresh temporary folder when
    /// `root` is `None`. A given `root` is created when missing and kept on drop, so a server
    /// started again on the same address and folder serves the same objects.
    ///
    /// # Errors
    ///
    /// When `addr` cannot be bound or `root` cannot be created.
    ///
    /// # Panics
    ///
    /// When the temporary folder or the runtime cannot be had.
    pub fn start_on(
        addr: &str,
        root: Option<&Path>,
        access_key: &str,
        secret_key: &str,
    ) -> std::io::Result<S3TestServer> {
        let (root, temp) = match root {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (dir.canonicalize()?, None)
            }
            None => {
                let temp = tempfile::tempdir().expect("a temporary folder for the S3 test server");
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let file_system =
            s3s_fs::FileSystem::new(&root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let mut builder = S3ServiceBuilder::new(LikeS3 {
            inner: file_system,
            root: root.clone(),
            object_locks: Mutex::default(),
        });
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let service = builder.build();

        // Bound here, so the port is known (and taken) before `start` returns.
        let listener = std::net::TcpListener::bind(addr)?;
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let endpoint = format!(
            "http://{}",
            listener
                .local_addr()
                .expect("a bound socket has an address")
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-test-server")
            .enable_all()
            .build()
            .expect("a runtime for the S3 test server");
        let thread = std::thread::Builder::new()
            .name("s3-test-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("register the listener with the runtime");
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, service) => {}
                    }
                });
                // Ends the connection tasks; file writes in flight get a moment to finish
                // before the folder goes.
                runtime.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("spawn the S3 test server thread");
        Ok(S3TestServer {
            endpoint,
            access_key: access_key.to_owned(),
            secret_key: SecretKey::new(secret_key),
            stop: Some(stop),
            thread: Some(thread),
            root,
            temp,
        })
    }

    /// The folder the buckets live in (one sub-folder per bucket).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Settings for an [`crate::S3Store`] talking to this server (path-style, static keys).
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: Some(TEST_REGION.into()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            force_path_style: true,
            ..S3Settings::default()
        }
    }

    /// The environment that makes a process's `OBJECT_STORE_URL=s3://` store talk to this
    /// server: `AWS_ENDPOINT_URL`, `AWS_REGION`, the two keys and `S3_FORCE_PATH_STYLE=true`.
    /// Instance metadata is switched off so the SDK never waits for it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", TEST_REGION.into()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.expose().to_owned()),
            ("S3_FORCE_PATH_STYLE", "true".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has been printed already; the folder goes anyway.
            let _ = thread.join();
        }
        drop(self.temp.take());
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, service: S3Service) {
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(_) => {
                // Out of file descriptors or similar: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            // A client hanging up mid-request is not a test failure.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

/// `s3s_fs::FileSystem` with four differences from S3 taken out:
///
/// - PutObject into a missing bucket creates its folder; S3 answers `NoSuchBucket`, and the store's
///   create-and-retry path needs that answer.
/// - GetObject from a missing bucket answers `NoSuchKey`; S3 answers `NoSuchBucket`.
/// - An object is replaced by renaming its file, but its checksums and metadata are written
///   beside it afterwards, so a GET racing an overwrite can pair new bytes with old checksums.
///   S3 replaces an object with its metadata as one; a per-key lock does the same here.
/// - GET or HEAD of a key that is a folder on disk fails with 500 instead of `NoSuchKey`.
///
/// Everything else is passed through unchanged.
struct LikeS3 {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
    object_locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
}

impl LikeS3 {
    fn lock_for(&self, bucket: &str, key: &str) -> Arc<RwLock<()>> {
        // Poisoning needs a panic while the map is held, and nothing in here panics.
        let mut locks = self.object_locks.lock().expect("lock map poisoned");
        locks.entry(format!("{bucket}/{key}")).or_default().clone()
    }

    fn bucket_exists(&self, bucket: &str) -> bool {
        self.root.join(bucket).is_dir()
    }

    fn is_folder(&self, bucket: &str, key: &str) -> bool {
        self.root.join(bucket).join(key).is_dir()
    }
}

#[async_trait::async_trait]
impl S3 for LikeS3 {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        if !self.bucket_exists(&req.input.bucket) {
            return Err(s3_error!(NoSuchBucket));
        }
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _writing = lock.write().await;
        self.inner.put_object(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        if !self.bucket_exists(&req.input.bucket) {
            return Err(s3_error!(NoSuchBucket));
        }
        if self.is_folder(&req.input.bucket, &req.input.key) {
            return Err(s3_error!(NoSuchKey));
        }
        // The body streams from a file opened inside the call, so the lock covers what matters.
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _reading = lock.read().await;
        self.inner.get_object(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        if self.is_folder(&req.input.bucket, &req.input.key) {
            return Err(s3_error!(NoSuchKey));
        }
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _reading = lock.read().await;
        self.inner.head_object(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.inner.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.inner.list_buckets(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _writing = lock.write().await;
        self.inner.delete_object(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.inner.delete_bucket(req).await
    }
}
