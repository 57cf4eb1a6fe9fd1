//! [`ObjectKey`]: where a raw result lives in its bucket, built, listed by prefix and parsed
//! back in one place. The worker builds keys, the reconciler lists the prefixes and reads the
//! result id back out of every name it finds, and the layout migration turns the keys of the
//! first layout into the current one.

use std::fmt;

use chrono::NaiveDate;
use uuid::Uuid;

/// `<adapter>/stream_id=<stream_id>/dt=YYYY-MM-DD/<result_id>.json`: Hive-style partitions, so
/// query engines read `stream_id` and `dt` as columns without parsing paths. The date is the UTC
/// day of the time the UUIDv7 `result_id` carries (the run's scheduled slot,
/// [`slot_result_id`], or the fetch), so a listing of one stream is a timeline.
///
/// Objects stored before this layout are at `<adapter>/<stream_id>/dt=YYYY-MM-DD/<result_id>.json`
/// ([`Layout::Legacy`]): they parse, list and read back as before, and `data-streams
/// migrate-layout` moves them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    adapter: String,
    stream_id: Uuid,
    date: NaiveDate,
    result_id: Uuid,
    layout: Layout,
}

/// Which layout a key is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `<adapter>/stream_id=<id>/dt=…/<result_id>.json`, what is written now.
    Hive,
    /// `<adapter>/<id>/dt=…/<result_id>.json`, written before the warehouse layout.
    Legacy,
}

impl Layout {
    /// Both layouts, the current one first.
    pub const ALL: [Layout; 2] = [Layout::Hive, Layout::Legacy];

    /// The folder of one stream under its adapter.
    fn stream_segment(self, stream_id: Uuid) -> String {
        match self {
            Layout::Hive => format!("stream_id={stream_id}"),
            Layout::Legacy => stream_id.to_string(),
        }
    }
}

impl ObjectKey {
    /// The key of a result fetched on `date` (UTC), in the current layout.
    pub fn new(adapter: &str, stream_id: Uuid, date: NaiveDate, result_id: Uuid) -> Self {
        ObjectKey {
            adapter: adapter.to_owned(),
            stream_id,
            date,
            result_id,
            layout: Layout::Hive,
        }
    }

    /// The key of a result, dated by the time in its UUIDv7 (today when it carries none).
    pub fn for_result(adapter: &str, stream_id: Uuid, result_id: Uuid) -> Self {
        let date = uuid_time_ms(result_id)
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or_else(chrono::Utc::now)
            .date_naive();
        ObjectKey::new(adapter, stream_id, date, result_id)
    }

    /// Every object of one stream in `layout`: `<adapter>/stream_id=<id>/` (or the legacy
    /// `<adapter>/<id>/`).
    pub fn stream_prefix(layout: Layout, adapter: &str, stream_id: Uuid) -> String {
        format!("{adapter}/{}/", layout.stream_segment(stream_id))
    }

    /// One day's partition of one stream in `layout`:
    /// `<adapter>/stream_id=<id>/dt=YYYY-MM-DD/` (or the legacy one).
    pub fn day_prefix(layout: Layout, adapter: &str, stream_id: Uuid, date: NaiveDate) -> String {
        format!(
            "{}dt={}/",
            ObjectKey::stream_prefix(layout, adapter, stream_id),
            date.format("%Y-%m-%d")
        )
    }

    /// A key in either layout, or `None` for any other name (a foreign object, a table file, a
    /// temporary file).
    pub fn parse(key: &str) -> Option<Self> {
        let mut parts = key.split('/');
        let (adapter, stream, day, name) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || adapter.is_empty() {
            return None;
        }
        let (layout, stream) = match stream.strip_prefix("stream_id=") {
            Some(id) => (Layout::Hive, id),
            None => (Layout::Legacy, stream),
        };
        let date = NaiveDate::parse_from_str(day.strip_prefix("dt=")?, "%Y-%m-%d").ok()?;
        Some(ObjectKey {
            adapter: adapter.to_owned(),
            stream_id: Uuid::parse_str(stream).ok()?,
            date,
            result_id: Uuid::parse_str(name.strip_suffix(".json")?).ok()?,
            layout,
        })
    }

    /// Which layout this key is in.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The same object's key in the current layout.
    pub fn in_current_layout(&self) -> ObjectKey {
        ObjectKey {
            layout: Layout::Hive,
            ..self.clone()
        }
    }

    pub fn adapter(&self) -> &str {
        &self.adapter
    }

    pub fn stream_id(&self) -> Uuid {
        self.stream_id
    }

    /// The UTC day of the fetch.
    pub fn date(&self) -> NaiveDate {
        self.date
    }

    pub fn result_id(&self) -> Uuid {
        self.result_id
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}.json",
            ObjectKey::day_prefix(self.layout, &self.adapter, self.stream_id, self.date),
            self.result_id
        )
    }
}

/// The Unix time in a UUIDv7 (or v1/v6), in milliseconds; `None` for ids without one.
pub fn uuid_time_ms(id: Uuid) -> Option<i64> {
    id.get_timestamp().map(|ts| {
        let (secs, nanos) = ts.to_unix();
        secs as i64 * 1000 + i64::from(nanos / 1_000_000)
    })
}

/// The result id of the scheduled slot `slot_ms` (ms since the Unix epoch) of `stream_id`: a
/// UUIDv7 whose timestamp is the slot and whose 74 other bits are the first bits of
/// SHA-256(`stream_id` ‖ `slot_ms` as 8 big-endian bytes). Every worker that runs the slot
/// derives the same id, so the same key: the object is stored once, whoever fetches it (with a
/// conditional put, [`crate::ObjectStore::put_new`]). Ids of one stream still sort by time, one
/// slot after another, and [`uuid_time_ms`] reads the slot back.
///
/// A slot before the epoch or past UUIDv7's 48-bit milliseconds (year 10889) is clamped.
pub fn slot_result_id(stream_id: Uuid, slot_ms: i64) -> Uuid {
    use sha2::{Digest, Sha256};
    const MAX_MS: i64 = (1 << 48) - 1;
    let slot_ms = slot_ms.clamp(0, MAX_MS);
    let mut hasher = Sha256::new();
    hasher.update(stream_id.as_bytes());
    hasher.update(slot_ms.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&slot_ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&digest[..10]);
    // Version 7 in the high nibble of byte 6, variant 0b10 in the top bits of byte 8.
    bytes[6] = 0x70 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ids_are_uuidv7_of_the_slot_stable_and_distinct() {
        let stream = Uuid::parse_str("0190a1b2-c3d4-7000-8000-00000000abcd").unwrap();
        let other = Uuid::parse_str("0190a1b2-c3d4-7000-8000-00000000abce").unwrap();
        let slot = 1_714_557_600_123;
        let id = slot_result_id(stream, slot);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(uuid_time_ms(id), Some(slot));
        // Whoever derives it, whenever: the same id.
        assert_eq!(slot_result_id(stream, slot), id);
        // Pinned, so a change of the derivation (which would store slots twice across workers
        // of two builds) cannot pass unnoticed.
        assert_eq!(id.to_string(), "018f3398-c17b-761a-b4b1-ce510c7806a4");
        assert_ne!(slot_result_id(other, slot), id);
        assert_ne!(slot_result_id(stream, slot + 1), id);
        // One stream's slots sort by time, so its keys do (the reconciler's timeline).
        let ids: Vec<Uuid> = (0..1_000)
            .map(|k| slot_result_id(stream, slot + k * 60_000))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let keys: Vec<String> = ids
            .iter()
            .map(|id| ObjectKey::for_result("IQAIR_DAILY", stream, *id).to_string())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys out of order");
        // Out of range: clamped, still a UUIDv7.
        assert_eq!(uuid_time_ms(slot_result_id(stream, -5)), Some(0));
        assert_eq!(slot_result_id(stream, i64::MAX).get_version_num(), 7);
    }

    #[test]
    fn a_key_has_the_documented_layout_and_parses_back() {
        let stream = Uuid::now_v7();
        let result = Uuid::now_v7();
        let day = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let key = ObjectKey::new("IQAIR_DAILY", stream, day, result);
        let text = key.to_string();
        assert_eq!(
            text,
            format!("IQAIR_DAILY/stream_id={stream}/dt=2026-11-22/{result}.json")
        );
        assert!(text.starts_with(&ObjectKey::stream_prefix(
            Layout::Hive,
            "IQAIR_DAILY",
            stream
        )));
        assert!(text.starts_with(&ObjectKey::day_prefix(
            Layout::Hive,
            "IQAIR_DAILY",
            stream,
            day
        )));
        assert_eq!(ObjectKey::parse(&text), Some(key.clone()));
        assert_eq!(key.layout(), Layout::Hive);
        crate::validate_key(&text).unwrap();
    }

    #[test]
    fn legacy_keys_parse_list_and_move_to_the_current_layout() {
        let stream = Uuid::now_v7();
        let result = Uuid::now_v7();
        let day = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let legacy = format!("IQAIR_DAILY/{stream}/dt=2026-11-22/{result}.json");
        let key = ObjectKey::parse(&legacy).expect("a legacy key parses");
        assert_eq!(key.layout(), Layout::Legacy);
        assert_eq!(key.to_string(), legacy, "it prints back as it was");
        assert!(legacy.starts_with(&ObjectKey::stream_prefix(
            Layout::Legacy,
            "IQAIR_DAILY",
            stream
        )));
        assert!(legacy.starts_with(&ObjectKey::day_prefix(
            Layout::Legacy,
            "IQAIR_DAILY",
            stream,
            day
        )));
        let moved = key.in_current_layout();
        assert_eq!(moved, ObjectKey::new("IQAIR_DAILY", stream, day, result));
        assert_eq!((moved.stream_id(), moved.result_id()), (stream, result));
        // The two layouts' stream folders never overlap as prefixes.
        assert!(
            !ObjectKey::stream_prefix(Layout::Hive, "IQAIR_DAILY", stream).starts_with(
                &ObjectKey::stream_prefix(Layout::Legacy, "IQAIR_DAILY", stream)
            )
        );
    }

    #[test]
    fn result_ids_come_from_the_file_name_and_foreign_names_are_none() {
        let id = Uuid::now_v7();
        let parsed = ObjectKey::parse(&format!("IQAIR_DAILY/{id}/dt=2026-11-22/{id}.json"));
        assert_eq!(parsed.map(|k| k.result_id()), Some(id));
        let parsed = ObjectKey::parse(&format!(
            "IQAIR_DAILY/stream_id={id}/dt=2026-11-22/{id}.json"
        ));
        assert_eq!(parsed.map(|k| k.result_id()), Some(id));
        for foreign in [
            format!("IQAIR_DAILY/stream_id=x/dt=2026-11-22/{id}.json"),
            "_tables/measurements/adapter=IQAIR_DAILY/dt=2026-11-22/part-0.parquet".to_owned(),
            format!("IQAIR_DAILY/{id}/dt=2026-11-22/notes.txt"),
            format!("IQAIR_DAILY/{id}/dt=2026-11-22/abc.json"),
            format!("IQAIR_DAILY/x/dt=2026-11-22/{id}.json"),
            format!("IQAIR_DAILY/{id}/2026-11-22/{id}.json"),
            format!("IQAIR_DAILY/{id}/dt=2026-11-22/more/{id}.json"),
            format!("{id}.json"),
        ] {
            assert_eq!(ObjectKey::parse(&foreign), None, "{foreign}");
        }
    }

    #[test]
    fn the_date_comes_from_the_uuid7_time() {
        let ms = 1_795_870_800_123; // 2026-11-28T13:00:00.123Z
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (ms / 1000) as u64,
            ((ms % 1000) * 1_000_000) as u32,
        ));
        assert_eq!(uuid_time_ms(id), Some(ms));
        let key = ObjectKey::for_result("IQAIR_DAILY", Uuid::nil(), id);
        assert_eq!(key.date(), NaiveDate::from_ymd_opt(2026, 11, 28).unwrap());
        assert_eq!(uuid_time_ms(Uuid::new_v4()), None);
    }
}
