//! The one error type of every object store, and which of its cases are worth a retry.

use std::path::PathBuf;

/// A boxed cause, kept as the `#[source]` of the variants that wrap another library's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an object store call failed. Each message is one line naming the bucket, key, path or
/// endpoint involved, and never a secret. Where a cause is kept with `#[source]`, the message
/// also carries a one-line summary of it (`detail`), because the AWS SDK's top-level messages
/// ("dispatch failure", "service error") say nothing on their own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The bucket (a folder under the root, for the folder store) does not exist.
    #[error("bucket {bucket:?} does not exist")]
    NoSuchBucket {
        /// The missing bucket.
        bucket: String,
    },

    /// The bucket exists but holds no object under this key.
    #[error("no object {key:?} in bucket {bucket:?}")]
    NoSuchKey {
        /// The bucket that was searched.
        bucket: String,
        /// The missing key.
        key: String,
    },

    /// A bucket name, key, prefix or metadata value that cannot be stored: see
    /// [`crate::validate_bucket_name`] and [`crate::validate_key`].
    #[error("invalid {what}: {reason}")]
    InvalidName {
        /// What was rejected, with its value, e.g. `object key "../x"`.
        what: String,
        /// Which rule it breaks.
        reason: String,
    },

    /// The `sha256` given with a `put` is not the SHA-256 of the body: the caller hashed
    /// something else, and storing it would record a false checksum.
    #[error(
        "checksum mismatch for {key:?} in bucket {bucket:?}: metadata says sha256 {claimed}, \
         the body hashes to {actual}"
    )]
    ChecksumMismatch {
        /// The bucket of the rejected put.
        bucket: String,
        /// The key of the rejected put.
        key: String,
        /// The hash the caller gave.
        claimed: String,
        /// The hash of the body.
        actual: String,
    },

    /// The store cannot be reached at all: connection refused or reset, DNS failure, no answer
    /// in time, or (folder store) the root folder is missing.
    #[error("object store {endpoint} is unreachable: {detail}")]
    Unreachable {
        /// The endpoint URL (credentials removed) or `file://` root.
        endpoint: String,
        /// One-line summary of the cause.
        detail: String,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// A file system call of the folder store failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done, e.g. `write` or `rename into place`.
        op: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// The S3 service answered with an error, or the call failed in a way that is neither a
    /// missing bucket or key nor an unreachable endpoint.
    #[error("{operation} on {target} failed: {detail}")]
    Backend {
        /// The call, e.g. `s3 PutObject`.
        operation: &'static str,
        /// The bucket or `bucket/key` involved.
        target: String,
        /// One-line summary: HTTP status, S3 error code and message, or the cause.
        detail: String,
        /// Worth retrying with backoff (5xx, throttling, a broken response).
        transient: bool,
        /// The cause, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// A setting that makes no sense: an unknown URL scheme, a bad `S3_FORCE_PATH_STYLE`, half a
    /// set of credentials.
    #[error("invalid {setting}: {reason}")]
    Config {
        /// The setting, with its value when that is not a secret.
        setting: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl StoreError {
    /// Whether retrying with backoff may succeed: network trouble, timeouts, 5xx, throttling.
    /// Never for a missing bucket or key, a bad name, a checksum mismatch or a bad setting.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Backend { transient, .. } => *transient,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ResourceBusy
            ),
            StoreError::NoSuchBucket { .. }
            | StoreError::NoSuchKey { .. }
            | StoreError::InvalidName { .. }
            | StoreError::ChecksumMismatch { .. }
            | StoreError::Config { .. } => false,
        }
    }
}

/// The messages of `error` and its sources joined into one line, skipping a message that only
/// repeats the one before it (hyper and the SDK often wrap an error and print it again).
pub(crate) fn one_line_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let message = current.to_string().replace(['\n', '\r'], " ");
        let repeats = parts.last().is_some_and(|last| last.contains(&message));
        if !message.is_empty() && !repeats {
            parts.push(message);
        }
        next = current.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer failure")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_is_one_line_and_skips_repeats() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused\nhere");
        let line = one_line_chain(&Outer(inner));
        assert_eq!(line, "outer failure: refused here");
    }

    #[test]
    fn transient_only_where_a_retry_can_help() {
        let unreachable = StoreError::Unreachable {
            endpoint: "http://127.0.0.1:9".into(),
            detail: "connection refused".into(),
            source: "connection refused".into(),
        };
        assert!(unreachable.is_transient());
        assert_eq!(
            unreachable.to_string(),
            "object store http://127.0.0.1:9 is unreachable: connection refused"
        );

        let throttled = StoreError::Backend {
            operation: "s3 PutObject",
            target: "results/a.json".into(),
            detail: "HTTP 503 SlowDown".into(),
            transient: true,
            source: None,
        };
        assert!(throttled.is_transient());
        assert_eq!(
            throttled.to_string(),
            "s3 PutObject on results/a.json failed: HTTP 503 SlowDown"
        );

        let missing = StoreError::NoSuchBucket {
            bucket: "results".into(),
        };
        assert!(!missing.is_transient());
        assert_eq!(missing.to_string(), "bucket \"results\" does not exist");
        let invalid = StoreError::InvalidName {
            what: "bucket name \"A\"".into(),
            reason: "too short".into(),
        };
        assert!(!invalid.is_transient());

        let interrupted = StoreError::Io {
            op: "write",
            path: "/x".into(),
            source: std::io::ErrorKind::Interrupted.into(),
        };
        assert!(interrupted.is_transient());
        let denied = StoreError::Io {
            op: "write",
            path: "/x".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert!(!denied.is_transient());
    }
}
