//! `PUSH`: data sent to the supervisor (`POST /streams/{id}/ingest`) instead of fetched. A push
//! stream has no endpoint, key or schedule; its description says how records are batched into
//! raw objects (`batch`) and, optionally, what they are (`records`: a schema name).
//!
//! Records are JSON values, one per NDJSON line. A batch becomes one raw object holding its
//! lines byte for byte. With `"records": "iqair"` each record is an IQAir city object (the
//! `data` of a `city` answer) or a whole answer envelope, and yields a reading through the IQAir
//! parser; without a schema only the raw is kept.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::reading::Column;
use crate::{iqair, Source};

/// The name streams use.
pub const NAME: &str = "PUSH";

/// The fields of a push stream's description.
pub const FIELDS: [&str; 2] = ["records", "batch"];

/// The record schemas a push stream may name.
pub const SCHEMAS: [&str; 1] = ["iqair"];

/// Defaults and bounds of a batch: 10,000 records, 8 MiB, 5 s.
pub const DEFAULT_MAX_RECORDS: u64 = 10_000;
pub const DEFAULT_MAX_BYTES: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAX_MS: u64 = 5_000;
pub const MAX_MAX_RECORDS: u64 = 1_000_000;
pub const MAX_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The longest a record waits in a batch: an hour.
pub const MAX_MAX_MS: u64 = 3_600_000;

/// The push source.
pub struct Push;

impl Source for Push {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Sent to the supervisor, never fetched by a worker.
    fn is_fetched(&self) -> bool {
        false
    }

    fn check_params(&self, params: &Map<String, Value>) -> Vec<String> {
        params
            .keys()
            .map(|name| {
                format!("adapter {NAME} takes no params (`{name}`); a push stream has no calls")
            })
            .collect()
    }

    fn check_source(&self, source: &Map<String, Value>) -> Vec<String> {
        let mut problems = Vec::new();
        for field in source.keys() {
            if !FIELDS.contains(&field.as_str()) {
                problems.push(format!(
                    "adapter {NAME} takes no `{field}` (it takes `records` and `batch`); remove it"
                ));
            }
        }
        if let Some(records) = source.get("records") {
            match records.as_str() {
                Some(name) if SCHEMAS.contains(&name) => {}
                _ => problems.push(format!(
                    "records must name a record schema ({}) or be left out (raw only); got {records}",
                    SCHEMAS.join(", ")
                )),
            }
        }
        if let Some(batch) = source.get("batch") {
            if let Err(mut more) = Batch::from_value(batch) {
                problems.append(&mut more);
            }
        }
        problems
    }

    /// The IQAir parser's: the one record schema (`iqair`) is IQAir's city object.
    fn parser_version(&self) -> u32 {
        iqair::PARSER_VERSION
    }

    /// IQAir's columns: a push stream with `"records": "iqair"` yields IQAir readings.
    fn reading_columns(&self) -> &'static [Column] {
        iqair::COLUMNS
    }

    fn integer_columns(&self) -> &'static [&'static str] {
        iqair::IqAir.integer_columns()
    }
}

/// When a batch becomes an object: at `max_records` records, at `max_bytes` bytes (the line that
/// would cross it starts the next batch), or `max_ms` after its first record, whichever comes
/// first; and at the end of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    #[serde(default = "default_max_records")]
    pub max_records: u64,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
}

fn default_max_records() -> u64 {
    DEFAULT_MAX_RECORDS
}
fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}
fn default_max_ms() -> u64 {
    DEFAULT_MAX_MS
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_records: DEFAULT_MAX_RECORDS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_ms: DEFAULT_MAX_MS,
        }
    }
}

impl Batch {
    /// A batch policy from its JSON (`null` or absent fields take the defaults), or every
    /// problem with it.
    pub fn from_value(value: &Value) -> Result<Batch, Vec<String>> {
        if value.is_null() {
            return Ok(Batch::default());
        }
        let batch: Batch = serde_json::from_value(value.clone()).map_err(|e| {
            vec![format!(
                "batch must be {{max_records, max_bytes, max_ms}} whole numbers: {e}"
            )]
        })?;
        let mut problems = Vec::new();
        let mut check = |name: &str, value: u64, max: u64| {
            if !(1..=max).contains(&value) {
                problems.push(format!("batch.{name} must be between 1 and {max}"));
            }
        };
        check("max_records", batch.max_records, MAX_MAX_RECORDS);
        check("max_bytes", batch.max_bytes, MAX_MAX_BYTES);
        check("max_ms", batch.max_ms, MAX_MAX_MS);
        if problems.is_empty() {
            Ok(batch)
        } else {
            Err(problems)
        }
    }

    /// The batch policy of a stream's description (defaults where it says nothing).
    pub fn of(source: &Map<String, Value>) -> Batch {
        source
            .get("batch")
            .and_then(|b| Batch::from_value(b).ok())
            .unwrap_or_default()
    }
}

/// The record schema a stream's description names, if any.
pub fn schema(source: &Map<String, Value>) -> Option<&str> {
    source.get("records").and_then(Value::as_str)
}

/// The IQAir reading of one pushed record (already parsed): a city object, or a whole answer
/// whose `success` envelope holds one in `data` (as [`iqair::parse`] reads a fetched body).
/// `None` when the record holds nothing readable.
pub fn iqair_reading(record: Value) -> Option<iqair::Measurement> {
    let Value::Object(mut map) = record else {
        return None;
    };
    if map.contains_key("status") && map.contains_key("data") {
        let success = map
            .get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("success"));
        return match map.remove("data") {
            Some(Value::Object(data)) if success => iqair::parse_measurement(data),
            _ => None,
        };
    }
    iqair::parse_measurement(map)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn a_push_stream_takes_records_and_batch_only() {
        assert!(Push.check_source(&Map::new()).is_empty());
        assert!(Push
            .check_source(&map(
                json!({"records": "iqair", "batch": {"max_records": 5}})
            ))
            .is_empty());
        let problems = Push.check_source(&map(json!({
            "records": "/data", "batch": {"max_records": 0, "max_ms": 3_600_001u64},
            "pagination": {"kind": "none"}
        })));
        assert_eq!(
            problems,
            [
                "adapter PUSH takes no `pagination` (it takes `records` and `batch`); remove it",
                "records must name a record schema (iqair) or be left out (raw only); got \"/data\"",
                "batch.max_records must be between 1 and 1000000",
                "batch.max_ms must be between 1 and 3600000",
            ]
        );
        assert_eq!(
            Push.check_source(&map(json!({"batch": {"size": 3}}))).len(),
            1
        );
        assert_eq!(
            Push.check_params(&map(json!({"city": "Krakow"}))),
            ["adapter PUSH takes no params (`city`); a push stream has no calls"]
        );
    }

    #[test]
    fn batch_defaults_fill_what_is_left_out() {
        assert_eq!(Batch::of(&Map::new()), Batch::default());
        let batch = Batch::of(&map(json!({"batch": {"max_bytes": 1024}})));
        assert_eq!(batch.max_bytes, 1024);
        assert_eq!(batch.max_records, DEFAULT_MAX_RECORDS);
        assert_eq!(batch.max_ms, DEFAULT_MAX_MS);
    }

    #[test]
    fn iqair_records_are_city_objects_or_envelopes() {
        let city = json!({"city": "Krakow", "state": "Lesser Poland Voivodeship",
            "country": "Poland", "current": {"pollution": {"ts": "2026-12-06T03:00:00.000Z",
            "aqius": 57, "mainus": "p2"}}});
        let reading = iqair_reading(city.clone()).unwrap();
        assert_eq!(reading.city.as_deref(), Some("Krakow"));
        assert_eq!(reading.aqius, Some(57.0));
        let envelope = json!({"status": "success", "data": city});
        assert_eq!(iqair_reading(envelope), Some(reading));
        assert_eq!(iqair_reading(json!([1, 2])), None);
        assert_eq!(iqair_reading(json!({})), None);
        assert_eq!(iqair_reading(json!("not a record")), None);
        let failed = json!({"status": "fail", "data": {"message": "city_not_found"}});
        assert_eq!(iqair_reading(failed), None);
    }
}
