//! A stream config at rest in a few bytes. A worker holds up to a million configs between their
//! ticks; as a [`StreamConfig`] each costs about a kilobyte (its strings, and a B-tree node for
//! two parameters), packed it is one allocation of about 120 bytes. Packed with the wire's own
//! encoding (bincode 2, standard config), so a config packs exactly as it travels.

use crate::error::ProtocolError;
use crate::message::StreamConfig;

fn packing() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// A [`StreamConfig`], encoded. Two packed configs are equal exactly when the configs are.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedConfig(Box<[u8]>);

impl PackedConfig {
    /// Pack a config.
    pub fn pack(config: &StreamConfig) -> Result<Self, ProtocolError> {
        bincode::serde::encode_to_vec(config, packing())
            .map(|bytes| PackedConfig(bytes.into_boxed_slice()))
            .map_err(|e| ProtocolError::Encode {
                kind: "stream config",
                reason: e.to_string(),
            })
    }

    /// The config again.
    pub fn unpack(&self) -> Result<StreamConfig, ProtocolError> {
        bincode::serde::decode_from_slice::<StreamConfig, _>(&self.0, packing())
            .map(|(config, _)| config)
            .map_err(|e| ProtocolError::Decode(format!("packed stream config: {e}")))
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a packed config; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The config it holds (its key redacted by [`common::SecretKey`]), never the raw bytes, which
/// hold the key in clear.
impl std::fmt::Debug for PackedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unpack() {
            Ok(config) => f.debug_tuple("PackedConfig").field(&config).finish(),
            Err(_) => write!(
                f,
                "PackedConfig(<{} bytes that do not unpack>)",
                self.0.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{RateLimit, Schedule};

    fn sample(schedule: Schedule) -> StreamConfig {
        StreamConfig {
            stream_id: uuid::Uuid::now_v7(),
            generation: 7,
            adapter: "IQAIR_DAILY".into(),
            endpoint: "http://api.airvisual.com/v2/nearest_city".into(),
            secret_key: "secret-key-value".into(),
            schedule,
            timeout_ms: 30_000,
            bucket_name: "results".into(),
            params: [
                ("lat".to_owned(), "52.52".to_owned()),
                ("lon".to_owned(), "13.40".to_owned()),
            ]
            .into_iter()
            .collect(),
            rate_limit: RateLimit::COMMUNITY,
            source: String::new(),
            window_start_ms: None,
        }
    }

    #[test]
    fn a_config_round_trips_small_and_compares_by_value() {
        for schedule in [
            Schedule::Interval { millis: 60_000 },
            Schedule::Cron {
                expr: "0 */15 * * * *".into(),
            },
        ] {
            let config = sample(schedule);
            let packed = PackedConfig::pack(&config).unwrap();
            assert_eq!(packed.unpack().unwrap(), config);
            assert!(packed.len() < 160, "{} bytes", packed.len());
            assert_eq!(packed, PackedConfig::pack(&config.clone()).unwrap());
            let mut changed = config.clone();
            changed.timeout_ms += 1;
            assert_ne!(packed, PackedConfig::pack(&changed).unwrap());
        }
    }

    #[test]
    fn debug_never_prints_the_key() {
        let packed = PackedConfig::pack(&sample(Schedule::Interval { millis: 1 })).unwrap();
        let printed = format!("{packed:?}");
        assert!(!printed.contains("secret-key-value"), "{printed}");
        assert!(
            printed.contains("***") && printed.contains("IQAIR_DAILY"),
            "{printed}"
        );
    }
}
