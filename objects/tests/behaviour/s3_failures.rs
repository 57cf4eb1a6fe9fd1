//! How the S3 store fails when the server is not there, does not answer, or refuses the key:
//! quickly, in one line naming the endpoint or bucket, and never printing the secret.

use std::time::{Duration, Instant};

use bytes::Bytes;
use objects::{sha256_hex, ObjectMeta, ObjectStore, S3Settings, S3Store, StoreError, StoreOptions};
use tokio::net::TcpListener;

use crate::backends::{s3_settings, S3TestServer, S3S_ACCESS_KEY, S3S_SECRET_KEY};

const OPTIONS: StoreOptions = StoreOptions {
    create_buckets: true,
};

fn meta_for(body: &[u8]) -> ObjectMeta {
    ObjectMeta {
        stream_id: "stream-1".into(),
        fetched_at: "2024-05-01T10:00:00Z".into(),
        sha256: sha256_hex(body),
    }
}

/// A loopback address nothing listens on: bound, read, and released again.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    address.to_string()
}

fn assert_unreachable(error: &StoreError, address: &str) {
    assert!(
        matches!(error, StoreError::Unreachable { .. }),
        "expected Unreachable, got {error:?}"
    );
    assert!(error.is_transient());
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.contains(address),
        "{message:?} does not name {address}"
    );
    assert!(!message.contains(S3S_SECRET_KEY), "{message}");
}

#[tokio::test]
async fn closed_port_is_unreachable_quickly() {
    let address = closed_port().await;
    let settings = s3_settings(&format!("http://{address}"), S3S_ACCESS_KEY, S3S_SECRET_KEY);
    let store = S3Store::new(settings, OPTIONS).await.unwrap();
    let body = Bytes::from_static(b"{}");

    let started = Instant::now();
    assert_unreachable(&store.check().await.unwrap_err(), &address);
    assert_unreachable(
        &store
            .put("results", "a/b.json", body.clone(), &meta_for(&body))
            .await
            .unwrap_err(),
        &address,
    );
    assert_unreachable(
        &store.get("results", "a/b.json").await.unwrap_err(),
        &address,
    );
    assert_unreachable(&store.list("results", "a/").await.unwrap_err(), &address);
    assert_unreachable(&store.ensure_bucket("results").await.unwrap_err(), &address);
    // Five calls with the default three attempts each; the backoff is bounded (200 ms first).
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}

#[tokio::test]
async fn silent_server_hits_the_operation_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // Accepts connections and never answers.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let settings = S3Settings {
        operation_timeout: Duration::from_millis(800),
        ..s3_settings(&format!("http://{address}"), S3S_ACCESS_KEY, S3S_SECRET_KEY)
    };
    let store = S3Store::new(settings, OPTIONS).await.unwrap();

    let started = Instant::now();
    let error = store.check().await.unwrap_err();
    let elapsed = started.elapsed();
    assert_unreachable(&error, &address);
    assert!(error.to_string().contains("800ms"), "{error}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    silent.abort();
}

#[tokio::test]
async fn wrong_secret_is_a_clear_permanent_error() {
    let server = S3TestServer::start_with_credentials(S3S_ACCESS_KEY, S3S_SECRET_KEY);
    let wrong_secret = "not-the-secret-9c1e";
    let settings = s3_settings(&server.endpoint, S3S_ACCESS_KEY, wrong_secret);
    let store = S3Store::new(settings, OPTIONS).await.unwrap();
    let body = Bytes::from_static(b"{}");

    let errors = [
        store
            .put("results", "a/b.json", body.clone(), &meta_for(&body))
            .await
            .unwrap_err(),
        store.get("results", "a/b.json").await.unwrap_err(),
        store.check().await.unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
        assert!(!error.is_transient(), "{error}");
        let message = error.to_string();
        assert!(message.contains("HTTP 403"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.contains(wrong_secret), "{message}");
        assert!(!message.contains(S3S_SECRET_KEY), "{message}");
    }
    let error = store.get("results", "a/b.json").await.unwrap_err();
    assert!(error.to_string().contains("results/a/b.json"), "{error}");
}
