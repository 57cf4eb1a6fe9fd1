//! The production store: S3 or an S3-compatible server (MinIO) through aws-sdk-s3.
//!
//! Configuration comes from the AWS SDK's standard chain (`AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, web identity, ...) unless
//! [`S3Settings`] names a value, plus `S3_FORCE_PATH_STYLE` for MinIO. Retries and timeouts are
//! always bounded, so a dead endpoint turns into [`StoreError::Unreachable`] within seconds
//! instead of hanging a worker.

use std::fmt;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_s3::Client;
use base64::Engine as _;
use bytes::Bytes;
use common::SecretKey;
use sha2::{Digest, Sha256};

use crate::error::one_line_chain;
use crate::{
    check_put, validate_bucket_name, validate_key, validate_prefix, Created, ObjectInfo,
    ObjectMeta, ObjectStore, StoreError, StoreOptions,
};

/// Region used when neither the settings nor the SDK's chain name one; MinIO accepts it.
const DEFAULT_REGION: &str = "us-east-1";

/// Metadata keys, sent as `x-amz-meta-<key>`.
const META_STREAM_ID: &str = "stream-id";
const META_FETCHED_AT: &str = "fetched-at";
const META_SHA256: &str = "sha256";

/// How to reach S3. A `None` leaves the value to the AWS SDK's standard chain (environment,
/// profile files, container and instance credentials).
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000` for MinIO; `None` for AWS (or
    /// `AWS_ENDPOINT_URL`). Without credentials: those go in the two key fields.
    pub endpoint: Option<String>,
    /// Region; when neither this nor the chain gives one, `us-east-1`.
    pub region: Option<String>,
    /// Access key id; give both keys or neither.
    pub access_key_id: Option<String>,
    /// Secret access key; never printed.
    pub secret_access_key: Option<SecretKey>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`; MinIO needs it.
    pub force_path_style: bool,
    /// Longest wait for a TCP connection to open.
    pub connect_timeout: Duration,
    /// Longest a whole call may take, retries included.
    pub operation_timeout: Duration,
    /// Attempts per call, the first included (1 = no retry).
    pub max_attempts: u32,
}

impl Default for S3Settings {
    /// Everything from the SDK's chain, virtual-hosted style, 3 s to connect, 30 s per call,
    /// 3 attempts.
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            force_path_style: false,
            connect_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(30),
            max_attempts: 3,
        }
    }
}

impl S3Settings {
    /// Settings for `OBJECT_STORE_URL=s3://`: the defaults, with `force_path_style` from
    /// `S3_FORCE_PATH_STYLE` (`true`/`1`/`yes` or `false`/`0`/`no`, unset = false). Endpoint,
    /// region and credentials stay `None`, so the SDK's chain reads `AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and everything else it
    /// knows).
    pub fn from_env() -> Result<Self, StoreError> {
        let force_path_style = match std::env::var("S3_FORCE_PATH_STYLE") {
            Ok(value) => parse_flag("S3_FORCE_PATH_STYLE", &value)?,
            Err(std::env::VarError::NotPresent) => false,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(StoreError::Config {
                    setting: "S3_FORCE_PATH_STYLE".into(),
                    reason: "not valid UTF-8".into(),
                })
            }
        };
        Ok(S3Settings {
            force_path_style,
            ..S3Settings::default()
        })
    }
}

fn parse_flag(setting: &str, value: &str) -> Result<bool, StoreError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(StoreError::Config {
            setting: format!("{setting}={value:?}"),
            reason: "expected true/1/yes or false/0/no".into(),
        }),
    }
}

/// Drop any `user:password@` from a URL before it is printed.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => rest[at + 1..].to_owned(),
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// An [`ObjectStore`] on S3 or MinIO. Objects carry `x-amz-meta-stream-id`, `-fetched-at` and
/// `-sha256`, content type `application/json`, and an `x-amz-checksum-sha256` the server checks
/// the upload against.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    /// The endpoint as printed in messages (credentials removed).
    endpoint: String,
    region: String,
    path_style: bool,
    operation_timeout: Duration,
    create_buckets: bool,
}

/// The settings, not the SDK client (whose `Debug` runs to pages); nothing here is secret.
impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("create_buckets", &self.create_buckets)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Build a client from `settings` (see [`S3Settings`]). Does not contact the endpoint; the
    /// SDK's chain may look up a region or credentials source when the settings leave them open.
    pub async fn new(settings: S3Settings, options: StoreOptions) -> Result<Self, StoreError> {
        if settings.max_attempts == 0 {
            return Err(StoreError::Config {
                setting: "S3 max_attempts=0".into(),
                reason: "at least one attempt is needed".into(),
            });
        }
        if let Some(endpoint) = &settings.endpoint {
            if redact_url(endpoint) != *endpoint {
                return Err(StoreError::Config {
                    setting: format!("S3 endpoint {}", redact_url(endpoint)),
                    reason: "credentials do not belong in the endpoint URL; give them as \
                             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                        .into(),
                });
            }
        }
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.connect_timeout)
            .operation_timeout(settings.operation_timeout)
            .build();
        // The SDK's default first backoff is 1 s; a shorter one keeps "unreachable" prompt while
        // still riding out a blip.
        let retries = RetryConfig::standard()
            .with_max_attempts(settings.max_attempts)
            .with_initial_backoff(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(5));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(retries);
        if let Some(endpoint) = &settings.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id.clone(),
                    secret.expose().to_owned(),
                    None,
                    None,
                    "objects-s3-settings",
                ));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Config {
                    setting: "S3 credentials".into(),
                    reason: "give both the access key id and the secret access key, or neither"
                        .into(),
                })
            }
        }
        let sdk_config = loader.load().await;
        let region = sdk_config
            .region()
            .cloned()
            .unwrap_or_else(|| Region::from_static(DEFAULT_REGION));
        let endpoint = match sdk_config.endpoint_url() {
            Some(url) => redact_url(url),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .region(region.clone())
            .force_path_style(settings.force_path_style)
            // Since 2025 the SDK adds CRC checksums in aws-chunked trailers by default, which
            // several S3-compatible servers reject. Each put sends x-amz-checksum-sha256 itself.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        Ok(S3Store {
            client: Client::from_conf(s3_config),
            endpoint,
            region: region.to_string(),
            path_style: settings.force_path_style,
            operation_timeout: settings.operation_timeout,
            create_buckets: options.create_buckets,
        })
    }

    /// One PutObject; with `if_absent`, conditional on no object being there
    /// (`If-None-Match: *`), and `Ok(false)` when the server says one is.
    async fn put_once(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
        checksum: &str,
        if_absent: bool,
    ) -> Result<bool, StoreError> {
        let mut request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .metadata(META_STREAM_ID, &meta.stream_id)
            .metadata(META_FETCHED_AT, &meta.fetched_at)
            .metadata(META_SHA256, meta.sha256.to_ascii_lowercase())
            .checksum_sha256(checksum)
            .body(ByteStream::from(body));
        if if_absent {
            request = request.if_none_match("*");
        }
        match request.send().await {
            Ok(_) => Ok(true),
            // 412 PreconditionFailed: an object is there. 409 ConditionalRequestConflict (AWS):
            // another conditional write of this key is in flight; `put_new` looks at what is
            // stored and retries when nothing is yet.
            Err(error) if if_absent && matches!(status_of(&error), Some(412 | 409)) => Ok(false),
            Err(error) => Err(self.error("s3 PutObject", bucket, Some(key), error)),
        }
    }

    /// `put` and `put_new`: a missing bucket is created (when allowed) and the put tried once
    /// more.
    async fn store(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
        if_absent: bool,
    ) -> Result<bool, StoreError> {
        check_put(bucket, key, &body, meta)?;
        let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
        match self
            .put_once(bucket, key, body.clone(), meta, &checksum, if_absent)
            .await
        {
            Err(StoreError::NoSuchBucket { .. }) if self.create_buckets => {
                self.ensure_bucket(bucket).await?;
                self.put_once(bucket, key, body, meta, &checksum, if_absent)
                    .await
            }
            other => other,
        }
    }

    /// A 404 without an error code (HEAD answers have no body) means the bucket or the key is
    /// missing; ask the bucket to tell which.
    async fn missing_bucket_or_key(&self, bucket: &str, key: &str) -> StoreError {
        match self.client.head_bucket().bucket(bucket).send().await {
            Err(error) if status_of(&error) == Some(404) => StoreError::NoSuchBucket {
                bucket: bucket.to_owned(),
            },
            _ => StoreError::NoSuchKey {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            },
        }
    }

    /// Map an SDK error to a [`StoreError`] naming the call, bucket and key.
    fn error<E>(
        &self,
        operation: &'static str,
        bucket: &str,
        key: Option<&str>,
        error: SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let target = match key {
            Some(key) => format!("{bucket}/{key}"),
            None => bucket.to_owned(),
        };
        match &error {
            SdkError::TimeoutError(_) => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: format!(
                    "no answer to {operation} on {target} within {:?}",
                    self.operation_timeout
                ),
                source: Box::new(error),
            },
            SdkError::DispatchFailure(failure) if !failure.is_user() => StoreError::Unreachable {
                endpoint: self.endpoint.clone(),
                detail: one_line_chain(&error),
                source: Box::new(error),
            },
            SdkError::ServiceError(context) => {
                let status = context.raw().status().as_u16();
                let code = context.err().code().map(str::to_owned);
                match (code.as_deref(), key) {
                    (Some("NoSuchBucket"), _) => {
                        return StoreError::NoSuchBucket {
                            bucket: bucket.to_owned(),
                        }
                    }
                    (Some("NoSuchKey"), Some(key)) => {
                        return StoreError::NoSuchKey {
                            bucket: bucket.to_owned(),
                            key: key.to_owned(),
                        }
                    }
                    _ => {}
                }
                let mut detail = format!("HTTP {status}");
                if let Some(code) = &code {
                    detail.push_str(&format!(" {code}"));
                }
                if let Some(message) = context.err().message() {
                    detail.push_str(&format!(": {}", message.replace(['\n', '\r'], " ")));
                }
                let throttled = matches!(
                    code.as_deref(),
                    Some(
                        "SlowDown"
                            | "Throttling"
                            | "ThrottlingException"
                            | "RequestThrottled"
                            | "RequestTimeout"
                            | "InternalError"
                            | "ServiceUnavailable"
                            | "BadDigest"
                    )
                );
                StoreError::Backend {
                    operation,
                    target,
                    detail,
                    transient: status >= 500 || status == 429 || throttled,
                    source: Some(Box::new(error)),
                }
            }
            // A response that could not be read or parsed: a proxy or a connection cut short.
            SdkError::ResponseError(_) => StoreError::Backend {
                operation,
                target,
                detail: one_line_chain(&error),
                transient: true,
                source: Some(Box::new(error)),
            },
            // The request could not be built or sent as configured: retrying will not help.
            _ => StoreError::Backend {
                operation,
                target,
                detail: one_line_chain(&error),
                transient: false,
                source: Some(Box::new(error)),
            },
        }
    }
}

/// A listed object as [`ObjectInfo`] (`None` for an entry without a key, which S3 never sends).
fn listed_object(object: &aws_sdk_s3::types::Object) -> Option<ObjectInfo> {
    Some(ObjectInfo {
        key: object.key()?.to_owned(),
        size: object
            .size()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        meta: None,
    })
}

fn status_of<E>(error: &SdkError<E, HttpResponse>) -> Option<u16> {
    error.raw_response().map(|raw| raw.status().as_u16())
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<(), StoreError> {
        self.store(bucket, key, body, meta, false).await.map(|_| ())
    }

    async fn put_new(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<Created, StoreError> {
        if self.store(bucket, key, body, meta, true).await? {
            return Ok(Created::New);
        }
        match self.head(bucket, key).await {
            Ok(info) => Ok(Created::Existing(info)),
            // A 409 for a write still in flight (or one that failed since): nothing stored yet,
            // so the caller's retry may be the one that stores it.
            Err(StoreError::NoSuchKey { .. }) => Err(StoreError::Backend {
                operation: "s3 PutObject",
                target: format!("{bucket}/{key}"),
                detail: "the server refused the conditional put, but holds no object there \
                         (another write of this key was in flight)"
                    .into(),
                transient: true,
                source: None,
            }),
            Err(error) => Err(error),
        }
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Bytes, StoreError> {
        validate_bucket_name(bucket)?;
        validate_key(key)?;
        let output = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| self.error("s3 GetObject", bucket, Some(key), error))?;
        let body = output
            .body
            .collect()
            .await
            .map_err(|error| StoreError::Backend {
                operation: "s3 GetObject",
                target: format!("{bucket}/{key}"),
                detail: format!("reading the body: {}", one_line_chain(&error)),
                transient: true,
                source: Some(Box::new(error)),
            })?;
        Ok(body.into_bytes())
    }

    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectInfo, StoreError> {
        validate_bucket_name(bucket)?;
        validate_key(key)?;
        let output = match self
            .client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) if status_of(&error) == Some(404) => {
                return Err(self.missing_bucket_or_key(bucket, key).await)
            }
            Err(error) => return Err(self.error("s3 HeadObject", bucket, Some(key), error)),
        };
        let meta = output.metadata().and_then(|map| {
            Some(ObjectMeta {
                stream_id: map.get(META_STREAM_ID)?.clone(),
                fetched_at: map.get(META_FETCHED_AT)?.clone(),
                sha256: map.get(META_SHA256)?.clone(),
            })
        });
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: output
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            meta,
        })
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        validate_bucket_name(bucket)?;
        validate_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if status_of(&error) == Some(404) => {
                match self.missing_bucket_or_key(bucket, key).await {
                    StoreError::NoSuchKey { .. } => Ok(()),
                    other => Err(other),
                }
            }
            Err(error) => Err(self.error("s3 DeleteObject", bucket, Some(key), error)),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_bucket_name(bucket)?;
        validate_prefix(prefix)?;
        let mut request = self.client.list_objects_v2().bucket(bucket);
        if !prefix.is_empty() {
            request = request.prefix(prefix);
        }
        let mut pages = request.into_paginator().send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.error("s3 ListObjectsV2", bucket, None, error))?;
            found.extend(page.contents().iter().filter_map(listed_object));
        }
        // S3 already answers in key order; sorting (linear on sorted input) makes it a promise
        // whatever the server.
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn list_after(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        validate_bucket_name(bucket)?;
        validate_prefix(prefix)?;
        validate_prefix(start_after)?;
        let mut found = Vec::new();
        let mut continuation: Option<String> = None;
        while found.len() < limit {
            // S3 answers at most 1,000 keys a page, whatever is asked.
            let page_size = i32::try_from((limit - found.len()).min(1_000)).unwrap_or(1_000);
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .max_keys(page_size);
            if !prefix.is_empty() {
                request = request.prefix(prefix);
            }
            // The first page starts after `start_after`; the next ones where the last ended
            // (the token carries the position, and S3 ignores StartAfter beside it).
            request = match &continuation {
                Some(token) => request.continuation_token(token),
                None if !start_after.is_empty() => request.start_after(start_after),
                None => request,
            };
            let page = request
                .send()
                .await
                .map_err(|error| self.error("s3 ListObjectsV2", bucket, None, error))?;
            found.extend(page.contents().iter().filter_map(listed_object));
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) => {
                    continuation = Some(token.to_owned())
                }
                _ => break,
            }
        }
        // As in `list`: key order whatever the server, and never more than asked.
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found.retain(|object| object.key.as_str() > start_after);
        found.truncate(limit);
        Ok(found)
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        validate_bucket_name(bucket)?;
        // HEAD first: creating needs a permission that writing to an existing bucket does not.
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            // 403: the bucket exists but this key may not inspect it; puts may still be allowed.
            Err(error) if status_of(&error) == Some(403) => return Ok(()),
            Err(error) if status_of(&error) == Some(404) => {}
            Err(error) => return Err(self.error("s3 HeadBucket", bucket, None, error)),
        }
        let mut request = self.client.create_bucket().bucket(bucket);
        if self.region != DEFAULT_REGION {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket, endpoint = %self.endpoint, "created bucket");
                Ok(())
            }
            // Someone else (another worker) created it in between.
            Err(error) if error.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            // What s3s-fs (and some other servers) answer in that race, and what AWS answers
            // for another account's bucket: ours if it can be read now.
            Err(error) if error.code() == Some("BucketAlreadyExists") => {
                match self.client.head_bucket().bucket(bucket).send().await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(self.error("s3 CreateBucket", bucket, None, error)),
                }
            }
            Err(error) => Err(self.error("s3 CreateBucket", bucket, None, error)),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        match self.client.list_buckets().send().await {
            Ok(_) => Ok(()),
            // The endpoint answered and knows the key; it may just not grant ListBuckets, which
            // nothing here needs.
            Err(error) if error.code() == Some("AccessDenied") => Ok(()),
            Err(error) => Err(self.error("s3 ListBuckets", "(all buckets)", None, error)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "s3 endpoint {} ({}, region {})",
            self.endpoint,
            if self.path_style {
                "path-style"
            } else {
                "virtual-hosted-style"
            },
            self.region
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_strictly() {
        for yes in ["true", "1", "TRUE", " yes ", "on"] {
            assert!(parse_flag("S3_FORCE_PATH_STYLE", yes).unwrap(), "{yes}");
        }
        for no in ["false", "0", "no", "", "OFF"] {
            assert!(!parse_flag("S3_FORCE_PATH_STYLE", no).unwrap(), "{no}");
        }
        let err = parse_flag("S3_FORCE_PATH_STYLE", "maybe").unwrap_err();
        assert!(
            err.to_string().contains("S3_FORCE_PATH_STYLE=\"maybe\""),
            "{err}"
        );
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(
            redact_url("https://user:pass@minio:9000/path@x"),
            "https://minio:9000/path@x"
        );
        assert_eq!(redact_url("user:pass@minio:9000"), "minio:9000");
    }

    #[test]
    fn settings_debug_hides_the_secret() {
        let settings = S3Settings {
            endpoint: Some("http://127.0.0.1:9000".into()),
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some("wJalrXUtnFEMI/K7MDENG".into()),
            ..S3Settings::default()
        };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("wJalrXUtnFEMI"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
    }

    #[tokio::test]
    async fn credentials_in_the_endpoint_are_refused_without_printing_them() {
        let settings = S3Settings {
            endpoint: Some("http://k:hunter2@127.0.0.1:9000".into()),
            ..S3Settings::default()
        };
        let options = StoreOptions {
            create_buckets: false,
        };
        let err = S3Store::new(settings, options).await.unwrap_err();
        assert!(matches!(err, StoreError::Config { .. }), "{err}");
        let printed = format!("{err} {err:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("AWS_SECRET_ACCESS_KEY"), "{printed}");
    }

    #[tokio::test]
    async fn new_rejects_half_credentials_and_zero_attempts() {
        let options = StoreOptions {
            create_buckets: false,
        };
        let half = S3Settings {
            endpoint: Some("http://127.0.0.1:9".into()),
            region: Some("us-east-1".into()),
            access_key_id: Some("id".into()),
            ..S3Settings::default()
        };
        let err = S3Store::new(half, options).await.unwrap_err();
        assert!(matches!(err, StoreError::Config { .. }), "{err}");
        let zero = S3Settings {
            max_attempts: 0,
            ..S3Settings::default()
        };
        let err = S3Store::new(zero, options).await.unwrap_err();
        assert!(matches!(err, StoreError::Config { .. }), "{err}");
    }

    #[tokio::test]
    async fn describe_names_endpoint_style_and_region_but_no_secret() {
        let store = S3Store::new(
            S3Settings {
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-central-1".into()),
                access_key_id: Some("minio".into()),
                secret_access_key: Some("minio-secret-123".into()),
                force_path_style: true,
                ..S3Settings::default()
            },
            StoreOptions {
                create_buckets: true,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            store.describe(),
            "s3 endpoint http://127.0.0.1:9000 (path-style, region eu-central-1)"
        );
        assert!(!format!("{store:?}").contains("minio-secret-123"));
    }
}
