//! Where raw API responses live: one object per fetch, in a local folder or an S3 bucket, with
//! the same behaviour behind one [`ObjectStore`] trait.
//!
//! Keys look like `<adapter>/stream_id=<stream_id>/dt=YYYY-MM-DD/<result_id>.json` ([`ObjectKey`]:
//! Hive-style partitions, so query engines read `stream_id` and `dt` as columns). Result ids are UUIDv7,
//! so [`ObjectStore::list`], which returns keys in S3 order (byte-wise lexicographic), is also a
//! timeline. The worker writes objects; the supervisor reads them back and lists partitions for
//! its reconciler, which resumes each stream's timeline where it left off
//! ([`ObjectStore::list_after`]).
//!
//! Pick a store with [`open`]: `file://<path>` gives a [`FolderStore`], `s3://` an [`S3Store`]
//! configured from the environment (the AWS SDK's standard chain plus `S3_FORCE_PATH_STYLE`).

mod error;
mod folder;
mod key;
mod names;
mod s3;
#[cfg(feature = "test-server")]
pub mod test_server;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::StoreError;
pub use folder::{FolderMetadata, FolderStore};
pub use key::{slot_result_id, uuid_time_ms, Layout, ObjectKey};
pub use names::{validate_bucket_name, validate_key, validate_prefix};
pub use s3::{S3Settings, S3Store};

/// What is recorded with every object: which stream fetched it, when, and the SHA-256 of its
/// bytes. Stored as `x-amz-meta-stream-id`, `x-amz-meta-fetched-at` and `x-amz-meta-sha256` on
/// S3, and in an extended attribute of the object's file in the folder store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The stream the object belongs to.
    pub stream_id: String,
    /// When the response was fetched, RFC 3339.
    pub fetched_at: String,
    /// SHA-256 of the object's bytes, lowercase hex.
    pub sha256: String,
}

/// One object as seen by [`ObjectStore::head`] or [`ObjectStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key inside its bucket.
    pub key: String,
    /// Size of the object in bytes.
    pub size: u64,
    /// The metadata written by [`ObjectStore::put`]. Always `None` from `list` (S3
    /// ListObjectsV2 does not return user metadata, and the folder store matches it so callers
    /// cannot come to rely on it); from `head`, `None` only for objects not written by `put`.
    pub meta: Option<ObjectMeta>,
}

/// What [`ObjectStore::put_new`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The object is stored, with the bytes and metadata given.
    New,
    /// An object was already stored under the key and is left as it is: this is what `head`
    /// says of it (its `meta` is `None` only for an object not written by this crate, or, in
    /// the folder store's tree mode, one whose metadata is still being written).
    Existing(ObjectInfo),
}

/// How a store behaves where the two backends could differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Create a missing bucket on `put` (and the folder store's root on open) instead of failing
    /// with [`StoreError::NoSuchBucket`].
    pub create_buckets: bool,
}

/// A place to keep raw objects. Both implementations pass the same behaviour suite
/// (`objects/tests/behaviour`).
///
/// Every method validates bucket names with [`validate_bucket_name`] and keys with
/// [`validate_key`] before touching the store, so a bad name is always
/// [`StoreError::InvalidName`], whichever backend is behind the trait.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// Store `body` under `key`, replacing any object already there. Readers see either the old
    /// object or the new one, never part of one. `meta.sha256` must be the SHA-256 of `body`
    /// ([`StoreError::ChecksumMismatch`] otherwise).
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<(), StoreError>;

    /// Store `body` under `key` only if no object is there: the first put of a key wins, and
    /// every later one leaves it as it is and answers [`Created::Existing`] with what is stored
    /// (its size and metadata), so a caller reports the stored object instead of failing. Two
    /// puts racing for one key: exactly one is [`Created::New`]. Atomic on both stores (S3
    /// `If-None-Match: *`; the folder store publishes its complete temporary file with
    /// `link(2)`, which never replaces a name), so a reader sees no object or the whole
    /// winner, never a mix. A write in progress or cut short (a hidden temporary file) is not
    /// an object and never makes a put `Existing`. Same checks and errors as [`Self::put`].
    ///
    /// What the existing object holds is not compared with `body`: the caller decides what a
    /// different SHA-256 means.
    async fn put_new(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<Created, StoreError>;

    /// The object's bytes, exactly as stored.
    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, StoreError>;

    /// Size and metadata of one object; [`StoreError::NoSuchKey`] when it is absent.
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError>;

    /// Every object under `prefix`, in key order (S3 lexicographic order), following pagination.
    /// The prefix is a plain string prefix, as in S3: `a/stream-1` also matches `a/stream-10/..`;
    /// end it with `/` to stay inside one folder. An empty prefix lists the whole bucket.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    /// At most `limit` objects under `prefix` whose key sorts after `start_after` (byte order), in
    /// key order: the next page of a timeline whose last key seen was `start_after` (an empty
    /// one starts at the beginning). `start_after` need not be an object: a partition prefix such
    /// as `…/dt=2024-05-01` starts at that day. Fewer than `limit` objects means there are no
    /// more.
    ///
    /// Both stores start where asked, so a listing costs what comes after `start_after`, not
    /// what is under `prefix`: S3 `ListObjectsV2` with `StartAfter` (continuing with
    /// continuation tokens past its 1,000-key pages), the folder store skipping the folders that
    /// sort wholly before it. This default lists everything and filters, for stores that have no
    /// better way.
    async fn list_after(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_prefix(start_after)?;
        let mut listed = self.list(bucket, prefix).await?;
        listed.retain(|object| object.key.as_str() > start_after);
        listed.truncate(limit);
        Ok(listed)
    }

    /// Remove one object (and the metadata kept with it). Removing a key that is not there is not
    /// an error (S3 DeleteObject answers the same), so a retried delete is harmless; a missing
    /// bucket is [`StoreError::NoSuchBucket`].
    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError>;

    /// Create the bucket if missing (no-op when it exists).
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError>;

    /// Readiness: can the store be reached at all (for /readyz and start-up checks).
    async fn check(&self) -> Result<(), StoreError>;

    /// Where the store points, for logs and start-up banners, e.g. `file://data/objects` or
    /// `s3 endpoint http://127.0.0.1:9000 (path-style, region us-east-1)`. Never holds a secret.
    fn describe(&self) -> String;
}

/// The object store settings both services share (flattened into each binary's settings).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreSettings {
    /// Where raw responses are: `file://<folder>` or `s3://` (endpoint and credentials from
    /// the `AWS_*` settings).
    #[arg(long, env = "OBJECT_STORE_URL", default_value = "file://data/objects")]
    pub object_store_url: String,
    /// Create a stream's bucket when it is missing (otherwise each run fails naming it).
    #[arg(long, env = "OBJECT_STORE_CREATE_BUCKETS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_buckets: bool,
    /// Folder store only: where each object's metadata goes. `auto`: an extended attribute of
    /// the object's file (a tree beside the buckets where the file system has none); `tree`:
    /// always the tree (one more file and fsync per object).
    #[arg(long, env = "OBJECT_STORE_FOLDER_METADATA", value_enum, default_value_t = FolderMetadata::Auto)]
    pub folder_metadata: FolderMetadata,
}

/// The store named by the settings could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("object store {url}: {source}")]
pub struct OpenError {
    pub url: String,
    #[source]
    pub source: StoreError,
}

impl StoreSettings {
    /// Opens the store ([`open`]) and checks it once. A store that does not answer at start is
    /// logged, not fatal: its calls fail (and say why) until it is back.
    pub async fn open(&self) -> Result<Arc<dyn ObjectStore>, OpenError> {
        let options = StoreOptions {
            create_buckets: self.create_buckets,
        };
        let store = open_with(&self.object_store_url, options, self.folder_metadata)
            .await
            .map_err(|source| OpenError {
                url: self.object_store_url.clone(),
                source,
            })?;
        match store.check().await {
            Ok(()) => tracing::info!(store = %store.describe(), "object store ready"),
            Err(err) => {
                tracing::error!(store = %store.describe(), "object store not reachable at start: {err}")
            }
        }
        Ok(store)
    }
}

/// Open the store named by `url` (the `OBJECT_STORE_URL` setting).
///
/// - `file://<path>`: a [`FolderStore`] rooted at `<path>`, taken literally (no percent
///   decoding); `file://data/objects` is relative to the working directory,
///   `file:///var/lib/objects` is absolute.
/// - `s3://`: an [`S3Store`] built from [`S3Settings::from_env`]. Anything after `s3://` is
///   ignored with a warning: the bucket is each stream's `bucket_name` and the endpoint comes from
///   `AWS_ENDPOINT_URL`.
///
/// Opening does not contact the store; call [`ObjectStore::check`] for that.
pub async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn ObjectStore>, StoreError> {
    open_with(url, options, FolderMetadata::Auto).await
}

/// [`open`], saying where a folder store keeps metadata.
async fn open_with(
    url: &str,
    options: StoreOptions,
    metadata: FolderMetadata,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(StoreError::Config {
                setting: format!("object store URL {url:?}"),
                reason: "a file:// URL needs a path, e.g. file://data/objects".into(),
            });
        }
        let store = FolderStore::new(path, options)
            .await?
            .with_metadata(metadata);
        Ok(Arc::new(store))
    } else if let Some(rest) = url.strip_prefix("s3://") {
        if !rest.is_empty() {
            tracing::warn!(
                url,
                "ignoring {rest:?} after s3://: buckets come from each stream's bucket_name, \
                 the endpoint from AWS_ENDPOINT_URL"
            );
        }
        let store = S3Store::new(S3Settings::from_env()?, options).await?;
        Ok(Arc::new(store))
    } else {
        Err(StoreError::Config {
            setting: format!("object store URL {url:?}"),
            reason: "expected file://<path> or s3://".into(),
        })
    }
}

/// SHA-256 of `bytes`, lowercase hex: the value for [`ObjectMeta::sha256`].
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks done by both stores before a `put`, so they fail alike: names, metadata values that
/// could not be stored as HTTP headers, and a `sha256` that does not match the body.
fn check_put(bucket: &str, key: &str, body: &[u8], meta: &ObjectMeta) -> Result<(), StoreError> {
    validate_bucket_name(bucket)?;
    validate_key(key)?;
    names::validate_meta(meta)?;
    let actual = sha256_hex(body);
    if !actual.eq_ignore_ascii_case(&meta.sha256) {
        return Err(StoreError::ChecksumMismatch {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            claimed: meta.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_matches_known_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn check_put_rejects_a_sha256_that_is_not_the_body() {
        let meta = ObjectMeta {
            stream_id: "s1".into(),
            fetched_at: "2024-05-01T10:00:00Z".into(),
            sha256: sha256_hex(b"other"),
        };
        let err = check_put("results", "a/b.json", b"body", &meta).unwrap_err();
        assert!(matches!(err, StoreError::ChecksumMismatch { .. }), "{err}");
        assert!(!err.is_transient());
        let upper = ObjectMeta {
            sha256: sha256_hex(b"body").to_uppercase(),
            ..meta
        };
        check_put("results", "a/b.json", b"body", &upper).unwrap();
    }

    #[tokio::test]
    async fn open_rejects_unknown_schemes_and_empty_paths() {
        let options = StoreOptions {
            create_buckets: false,
        };
        for url in ["ftp://host/x", "data/objects", "file://", ""] {
            let err = open(url, options).await.unwrap_err();
            assert!(matches!(err, StoreError::Config { .. }), "{url}: {err}");
            assert!(err.to_string().contains("object store URL"), "{err}");
        }
    }

    #[tokio::test]
    async fn open_file_url_gives_a_folder_store_that_works() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("nested/objects");
        let url = format!("file://{}", root.display());
        let store = open(
            &url,
            StoreOptions {
                create_buckets: true,
            },
        )
        .await
        .unwrap();
        assert_eq!(store.describe(), url);
        store.check().await.unwrap();
        let body = Bytes::from_static(b"{}");
        let meta = ObjectMeta {
            stream_id: "s1".into(),
            fetched_at: "2024-05-01T10:00:00Z".into(),
            sha256: sha256_hex(&body),
        };
        store
            .put("results", "a/b.json", body.clone(), &meta)
            .await
            .unwrap();
        assert_eq!(store.get("results", "a/b.json").await.unwrap(), body);
        assert!(root.join("results/a/b.json").is_file());
    }
}
