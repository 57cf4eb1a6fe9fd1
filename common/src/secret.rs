//! [`SecretKey`]: every API key and token the product holds (external API keys, the worker
//! token, the API token, S3 secrets). It is the one place that prints `***`: `Debug` and
//! `Serialize` both redact, so a struct holding one can derive both and never leak it through
//! a log line or an API answer. The wire, which must carry a stream's key to its worker, opts in
//! field by field with `#[serde(with = "common::secret::expose")]`.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// What a secret prints as, everywhere.
pub const REDACTED: &str = "***";

/// A key or token. Cloning copies it; dropping wipes it (secrecy's zeroize).
#[derive(Clone)]
pub struct SecretKey(SecretString);

/// `text` percent-encoded as a URL query carries it (`form`: spaces as `+`, as forms do).
fn percent_encode(text: &str, form: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else if form && byte == b' ' {
            out.push('+');
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

impl SecretKey {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        SecretKey(SecretString::from(value.into()))
    }

    /// The secret itself, for the one place that must send it (a query parameter, a MAC).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// True for an empty secret (an unset environment variable given as `X=`).
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// `text` with this secret (raw, percent-encoded or form-encoded) replaced by `***`: for
    /// messages that quote a URL or an answer that may carry it.
    pub fn redacted(&self, text: &str) -> String {
        let secret = self.expose();
        // A one- or two-character secret would match ordinary words; real ones are longer.
        if secret.len() < 3 {
            return text.to_string();
        }
        let mut out = text.replace(secret, "***");
        for encoded in [percent_encode(secret, false), percent_encode(secret, true)] {
            if encoded != secret {
                out = out.replace(&encoded, "***");
            }
        }
        out
    }

    /// The key's identity in memory: the first 8 bytes of its SHA-256. Streams sharing a key
    /// share a budget and a placement; compared and stored as this, never as the key.
    pub fn fingerprint(&self) -> u64 {
        let digest = Sha256::digest(self.expose().as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    /// SHA-256 of the secret, for comparing a presented token in constant time.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.expose().as_bytes()).into()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretKey {}

impl From<&str> for SecretKey {
    fn from(value: &str) -> Self {
        SecretKey::new(value)
    }
}

impl From<String> for SecretKey {
    fn from(value: String) -> Self {
        SecretKey::new(value)
    }
}

/// For clap: a setting that is a secret parses from its text.
impl FromStr for SecretKey {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretKey::new(s))
    }
}

/// Redacted: `"***"`. A secret that must cross the wire says so with [`expose`].
impl Serialize for SecretKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretKey::new)
    }
}

/// `#[serde(with = "common::secret::expose")]`: serialize the secret itself. Only for the
/// worker link and the worker's packed configs, which must carry a stream's key.
pub mod expose {
    use super::*;

    pub fn serialize<S: Serializer>(secret: &SecretKey, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(secret.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SecretKey, D::Error> {
        SecretKey::deserialize(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Holder {
        key: SecretKey,
        #[serde(with = "expose")]
        wire: SecretKey,
    }

    #[test]
    fn debug_and_serialize_redact_and_only_expose_shows_it() {
        let holder = Holder {
            key: SecretKey::new("canary-one"),
            wire: SecretKey::new("canary-two"),
        };
        let debug = format!("{holder:?}");
        assert!(!debug.contains("canary"), "{debug}");
        assert!(debug.contains(REDACTED));
        let json = serde_json::to_string(&holder).unwrap();
        assert!(!json.contains("canary-one"), "{json}");
        assert!(
            json.contains("canary-two"),
            "the opted-in field crosses: {json}"
        );
        let back: Holder = serde_json::from_str(r#"{"key": "a", "wire": "b"}"#).unwrap();
        assert_eq!((back.key.expose(), back.wire.expose()), ("a", "b"));
    }

    #[test]
    fn fingerprints_tell_keys_apart_without_holding_them() {
        let a = SecretKey::new("key-a");
        assert_eq!(a.fingerprint(), SecretKey::new("key-a").fingerprint());
        assert_ne!(a.fingerprint(), SecretKey::new("key-b").fingerprint());
        assert_eq!(a, "key-a".parse::<SecretKey>().unwrap());
        assert!(SecretKey::new("").is_empty());
    }
}
