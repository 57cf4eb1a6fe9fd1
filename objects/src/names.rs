//! What a bucket name, key, prefix and metadata value may look like, checked the same way for
//! every store so that an object written to one can be copied to the other.

use crate::{ObjectMeta, StoreError};

/// Longest key S3 accepts, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// Check a bucket name against the S3 rules: 3–63 characters of lowercase letters, digits, dots
/// and hyphens, starting and ending with a letter or digit, no two dots in a row, and not shaped
/// like an IPv4 address. The folder store applies the same rules, which also keeps a bucket from
/// naming anything outside its root.
pub fn validate_bucket_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason: String| {
        Err(StoreError::InvalidName {
            what: format!("bucket name {name:?}"),
            reason,
        })
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
    {
        return invalid(format!(
            "character {bad:?} is not allowed (use lowercase letters, digits, dots and hyphens)"
        ));
    }
    if !(3..=63).contains(&name.len()) {
        return invalid(format!(
            "must be 3 to 63 characters long, not {}",
            name.len()
        ));
    }
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alphanumeric(name.chars().next()) || !alphanumeric(name.chars().last()) {
        return invalid("must start and end with a letter or digit".into());
    }
    if name.contains("..") {
        return invalid("must not contain two dots in a row".into());
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return invalid("must not look like an IP address".into());
    }
    Ok(())
}

/// Check an object key: 1 to 1024 bytes of `/`-separated segments, relative (no leading `/`), no
/// backslashes or control characters, no empty segments (`a//b`, a trailing `/`), and no segment
/// starting with `.` — which rules out `.` and `..` and reserves dot-names for the folder store's
/// temporary and metadata files. Both stores apply these rules.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    check_path(key, "object key", false)
}

/// Check a listing prefix: empty (the whole bucket), or the start of a valid key. It may end in
/// `/`, and its last segment may be partial (`a/dt=2024-05`).
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    check_path(prefix, "prefix", true)
}

fn check_path(value: &str, kind: &str, is_prefix: bool) -> Result<(), StoreError> {
    let invalid = |reason: &str| {
        Err(StoreError::InvalidName {
            what: format!("{kind} {value:?}"),
            reason: reason.to_owned(),
        })
    };
    if value.is_empty() {
        return if is_prefix {
            Ok(())
        } else {
            invalid("must not be empty")
        };
    }
    if value.len() > MAX_KEY_BYTES {
        return invalid("must not be longer than 1024 bytes");
    }
    if value.starts_with('/') {
        return invalid("must be relative (no leading '/')");
    }
    if value.contains('\\') {
        return invalid("must not contain backslashes");
    }
    if value.chars().any(char::is_control) {
        return invalid("must not contain control characters");
    }
    let segments = match value.strip_suffix('/') {
        Some(folder) if is_prefix => folder,
        _ => value,
    };
    for segment in segments.split('/') {
        if segment.is_empty() {
            return invalid("must not contain empty segments ('//' or a trailing '/')");
        }
        if segment.starts_with('.') {
            return invalid(
                "segments must not start with '.' ('.' and '..' could escape the bucket; \
                 other dot-names are reserved for the folder store's own files)",
            );
        }
    }
    Ok(())
}

/// Metadata values travel as HTTP headers on S3, so they must be plain printable ASCII; the
/// timestamp must be RFC 3339 and the hash 64 hex digits.
pub(crate) fn validate_meta(meta: &ObjectMeta) -> Result<(), StoreError> {
    let invalid = |field: &str, value: &str, reason: &str| {
        Err(StoreError::InvalidName {
            what: format!("metadata {field} {value:?}"),
            reason: reason.to_owned(),
        })
    };
    let header_safe =
        |value: &str| !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if !header_safe(&meta.stream_id) {
        return invalid(
            "stream_id",
            &meta.stream_id,
            "must be non-empty printable ASCII",
        );
    }
    if chrono::DateTime::parse_from_rfc3339(&meta.fetched_at).is_err() {
        return invalid(
            "fetched_at",
            &meta.fetched_at,
            "must be an RFC 3339 timestamp",
        );
    }
    if meta.sha256.len() != 64 || !meta.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return invalid("sha256", &meta.sha256, "must be 64 hex digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejects_bucket(name: &str) -> String {
        match validate_bucket_name(name) {
            Err(StoreError::InvalidName { what, reason }) => {
                assert!(what.contains(&format!("{name:?}")), "{what}");
                reason
            }
            other => panic!("{name:?} should be rejected, got {other:?}"),
        }
    }

    #[test]
    fn bucket_names_follow_s3_rules() {
        for good in ["abc", "results", "my-bucket.v2", "a1b", &"a".repeat(63)] {
            validate_bucket_name(good).unwrap();
        }
        assert!(rejects_bucket("ab").contains("3 to 63"));
        assert!(rejects_bucket(&"a".repeat(64)).contains("3 to 63"));
        assert!(rejects_bucket("").contains("3 to 63"));
        assert!(rejects_bucket("Results").contains("'R'"));
        assert!(rejects_bucket("my_bucket").contains("'_'"));
        assert!(rejects_bucket("a/b/c").contains("'/'"));
        assert!(rejects_bucket("-abc").contains("start and end"));
        assert!(rejects_bucket("abc.").contains("start and end"));
        assert!(rejects_bucket("a..b").contains("two dots"));
        assert!(rejects_bucket("192.168.1.10").contains("IP address"));
    }

    #[test]
    fn keys_are_relative_and_cannot_escape() {
        for good in [
            "iqair/0190-abc/dt=2024-05-01/0190a1b2-0000-7000-8000-000000000000.json",
            "a",
            "a b/c:d@e+f=g",
            "ünïcode/ключ.json",
        ] {
            validate_key(good).unwrap();
        }
        for bad in [
            "", "/abs/key", "../x", "a/../b", "a/./b", "a//b", "a/", "a\\b", ".hidden", "a/.meta",
            "a\nb", "a\0b",
        ] {
            let err = validate_key(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidName { .. }), "{bad:?}");
            assert!(err.to_string().starts_with("invalid object key"), "{err}");
        }
        validate_key(&"k".repeat(1024)).unwrap();
        validate_key(&"k".repeat(1025)).unwrap_err();
    }

    #[test]
    fn prefixes_may_be_empty_partial_or_end_in_slash() {
        for good in ["", "a", "a/", "a/dt=2024-05", "a/b/"] {
            validate_prefix(good).unwrap();
        }
        for bad in ["/", "/a", "../", "a/../", "a//", "a\\b", "."] {
            validate_prefix(bad).unwrap_err();
        }
    }

    #[test]
    fn metadata_must_fit_in_headers() {
        let good = ObjectMeta {
            stream_id: "0190a1b2-0000-7000-8000-000000000000".into(),
            fetched_at: "2024-05-01T10:00:00.123+02:00".into(),
            sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        };
        validate_meta(&good).unwrap();
        for bad in [
            ObjectMeta {
                stream_id: "".into(),
                ..good.clone()
            },
            ObjectMeta {
                stream_id: "strëam".into(),
                ..good.clone()
            },
            ObjectMeta {
                stream_id: "a\r\nX-Evil: 1".into(),
                ..good.clone()
            },
            ObjectMeta {
                fetched_at: "yesterday".into(),
                ..good.clone()
            },
            ObjectMeta {
                sha256: "abc".into(),
                ..good.clone()
            },
        ] {
            let err = validate_meta(&bad).unwrap_err();
            assert!(err.to_string().starts_with("invalid metadata"), "{err}");
        }
    }
}
