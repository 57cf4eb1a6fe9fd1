//! The stores the behaviour suite runs against, each set up fresh for one test.

use std::sync::Arc;

use objects::{FolderStore, ObjectStore, S3Settings, S3Store, StoreOptions};
use tempfile::TempDir;

pub use objects::test_server::S3TestServer;

/// Credentials of the in-process S3 server.
pub const S3S_ACCESS_KEY: &str = "objects-test";
pub const S3S_SECRET_KEY: &str = "objects-test-secret-7f3a";

/// One store under test, with two views of the same storage.
pub struct Backend {
    /// Which backend, for failure messages.
    pub name: &'static str,
    /// Opened with `create_buckets: true`.
    pub store: Arc<dyn ObjectStore>,
    /// Opened with `create_buckets: false`.
    pub strict: Arc<dyn ObjectStore>,
    /// A bucket that exists when the case starts.
    pub bucket: String,
    /// The secret the store was given, which must never be printed.
    pub secret: Option<String>,
    /// Unique per test, so tests sharing one MinIO do not see each other's buckets.
    run_id: String,
    /// For MinIO: a plain client to delete this test's buckets afterwards.
    cleanup: Option<aws_sdk_s3::Client>,
    _server: Option<S3TestServer>,
    _dir: Option<TempDir>,
}

impl Backend {
    /// A bucket name unique to this test; `label` says what it is for.
    pub fn bucket_name(&self, label: &str) -> String {
        format!("{}-{label}", self.run_id)
    }

    /// Remove what the test left on a shared server. Temporary folders clean themselves up.
    pub async fn finish(self) {
        let Some(client) = &self.cleanup else { return };
        let buckets = client.list_buckets().send().await.expect("list buckets");
        for bucket in buckets.buckets() {
            let Some(name) = bucket.name().filter(|n| n.starts_with(&self.run_id)) else {
                continue;
            };
            let mut pages = client
                .list_objects_v2()
                .bucket(name)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                for object in page.expect("list objects").contents() {
                    if let Some(key) = object.key() {
                        client
                            .delete_object()
                            .bucket(name)
                            .key(key)
                            .send()
                            .await
                            .expect("delete object");
                    }
                }
            }
            client
                .delete_bucket()
                .bucket(name)
                .send()
                .await
                .expect("delete bucket");
        }
    }
}

fn run_id() -> String {
    // Bucket names must start with a letter or digit and stay short.
    format!("ot-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

const CREATE: StoreOptions = StoreOptions {
    create_buckets: true,
};
const STRICT: StoreOptions = StoreOptions {
    create_buckets: false,
};

/// A folder store in a fresh temporary folder.
pub async fn folder() -> Backend {
    let dir = tempfile::tempdir().expect("temporary folder");
    let root = dir.path().join("objects");
    let store: Arc<dyn ObjectStore> = Arc::new(FolderStore::new(&root, CREATE).await.unwrap());
    let strict: Arc<dyn ObjectStore> = Arc::new(FolderStore::new(&root, STRICT).await.unwrap());
    let run_id = run_id();
    let bucket = format!("{run_id}-main");
    store.ensure_bucket(&bucket).await.unwrap();
    Backend {
        name: "folder",
        store,
        strict,
        bucket,
        secret: None,
        run_id,
        cleanup: None,
        _server: None,
        _dir: Some(dir),
    }
}

/// Settings for a loopback S3 server with static credentials.
pub fn s3_settings(endpoint: &str, access_key: &str, secret_key: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        access_key_id: Some(access_key.to_owned()),
        secret_access_key: Some(secret_key.into()),
        force_path_style: true,
        ..S3Settings::default()
    }
}

async fn s3_backend(
    name: &'static str,
    settings: S3Settings,
    server: Option<S3TestServer>,
    cleanup: Option<aws_sdk_s3::Client>,
) -> Backend {
    let secret = settings
        .secret_access_key
        .as_ref()
        .map(|s| s.expose().to_owned());
    let store: Arc<dyn ObjectStore> =
        Arc::new(S3Store::new(settings.clone(), CREATE).await.unwrap());
    let strict: Arc<dyn ObjectStore> = Arc::new(S3Store::new(settings, STRICT).await.unwrap());
    let run_id = run_id();
    let bucket = format!("{run_id}-main");
    store.ensure_bucket(&bucket).await.unwrap();
    Backend {
        name,
        store,
        strict,
        bucket,
        secret,
        run_id,
        cleanup,
        _server: server,
        _dir: None,
    }
}

/// aws-sdk-s3 against an `s3s-fs` server started in this process on `127.0.0.1:0`.
pub async fn s3s_fs() -> Backend {
    let server = S3TestServer::start_with_credentials(S3S_ACCESS_KEY, S3S_SECRET_KEY);
    let settings = s3_settings(&server.endpoint, S3S_ACCESS_KEY, S3S_SECRET_KEY);
    s3_backend("s3s-fs", settings, Some(server), None).await
}

/// aws-sdk-s3 against the MinIO (or other S3) named by `TEST_S3_ENDPOINT`.
#[cfg_attr(not(objects_minio), allow(dead_code))]
pub async fn minio() -> Backend {
    let variable = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} must be set to run the MinIO tests (TEST_S3_ENDPOINT is)")
        })
    };
    let endpoint = variable("TEST_S3_ENDPOINT");
    let settings = S3Settings {
        region: std::env::var("TEST_S3_REGION").ok(),
        ..s3_settings(
            &endpoint,
            &variable("TEST_S3_ACCESS_KEY"),
            &variable("TEST_S3_SECRET_KEY"),
        )
    };
    let credentials = aws_sdk_s3::config::Credentials::new(
        variable("TEST_S3_ACCESS_KEY"),
        variable("TEST_S3_SECRET_KEY"),
        None,
        None,
        "objects-tests",
    );
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(aws_sdk_s3::config::Region::new(
            settings
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".into()),
        ))
        .credentials_provider(credentials)
        .force_path_style(true)
        .build();
    let cleanup = aws_sdk_s3::Client::from_conf(config);
    s3_backend("minio", settings, None, Some(cleanup)).await
}
