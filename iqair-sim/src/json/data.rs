//! The dataset json-sim serves: item `i` is a pure function of `i` and the configured epoch and
//! step, so any page of any window is computed, never stored. Also the time formats the window
//! filters accept, page arithmetic and the opaque cursors.

use std::hash::BuildHasher;
use std::ops::Range;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

/// How many items a page may hold at most (`per_page`, `limit`).
pub(crate) const MAX_PER_PAGE: u64 = 1000;
/// The page size when none is asked for.
pub(crate) const DEFAULT_PER_PAGE: u64 = 50;

/// The items: `items` of them, item `i` updated at `epoch_ms + i * step_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dataset {
    pub items: u64,
    pub epoch_ms: i64,
    /// At least 1: the window filters rely on strictly increasing times.
    pub step_ms: i64,
}

/// One item as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Item {
    pub id: u64,
    pub updated_at: String,
    pub name: String,
    pub value: f64,
}

impl Dataset {
    /// The time item `id` was last updated, in epoch milliseconds (saturating far out of range).
    pub fn updated_at_ms(&self, id: u64) -> i64 {
        let offset = i128::from(id) * i128::from(self.step_ms);
        let ms = i128::from(self.epoch_ms) + offset;
        i64::try_from(ms).unwrap_or(i64::MAX)
    }

    /// Item `id` (the caller keeps `id < items`).
    pub fn item(&self, id: u64) -> Item {
        let ms = self.updated_at_ms(id);
        Item {
            id,
            // Out of chrono's range only for absurd settings, which the binary refuses at start.
            updated_at: common::rfc3339_ms(ms)
                .unwrap_or_else(|| "+262143-12-31T23:59:59.999Z".into()),
            name: format!("item-{id}"),
            value: value_of(id),
        }
    }

    /// The items with ids in `ids`.
    pub fn items(&self, ids: Range<u64>) -> Vec<Item> {
        ids.map(|id| self.item(id)).collect()
    }

    /// The ids whose `updated_at` is at or after `since` and before `until`, as a range (the
    /// times increase with the id, so a window is always contiguous).
    pub fn window(&self, since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Range<u64> {
        let first_at_or_after = |at: DateTime<Utc>| -> u64 {
            let delta = i128::from(at.timestamp_millis()) - i128::from(self.epoch_ms);
            if delta <= 0 {
                return 0;
            }
            let step = i128::from(self.step_ms.max(1));
            let id = (delta + step - 1) / step;
            u64::try_from(id).unwrap_or(u64::MAX).min(self.items)
        };
        let start = since.map_or(0, first_at_or_after);
        let end = until.map_or(self.items, first_at_or_after);
        start.min(end)..end
    }
}

/// A deterministic value for item `id`: two decimals between 0 and 99.99, spread over the ids.
pub(crate) fn value_of(id: u64) -> f64 {
    (id.wrapping_mul(7919) % 10_000) as f64 / 100.0
}

/// What the window filters accept, for error messages.
pub(crate) const TIME_FORMATS: &str =
    "give RFC 3339 (2026-01-01T00:00:00Z), epoch seconds, epoch milliseconds (13+ digits) or a date (2026-01-01)";

/// A point in time as the window filters take it: RFC 3339, epoch seconds, epoch milliseconds
/// (13 digits or more) or a date `YYYY-MM-DD` (midnight UTC).
pub(crate) fn parse_instant(raw: &str) -> Result<DateTime<Utc>, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(format!("empty; {TIME_FORMATS}"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let out_of_range = || format!("{text:?} is out of range; {TIME_FORMATS}");
        let number: i64 = text.parse().map_err(|_| out_of_range())?;
        let at = if text.len() >= 13 {
            DateTime::from_timestamp_millis(number)
        } else {
            DateTime::from_timestamp(number, 0)
        };
        return at.ok_or_else(out_of_range);
    }
    if text.len() == 10 {
        if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
                return Ok(midnight.and_utc());
            }
        }
    }
    DateTime::parse_from_rfc3339(text)
        // An unencoded `+01:00` in a query string arrives as ` 01:00`; take it as meant.
        .or_else(|err| match text.contains(' ') {
            true => DateTime::parse_from_rfc3339(&text.replace(' ', "+")),
            false => Err(err),
        })
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| format!("{text:?} is not a time; {TIME_FORMATS}"))
}

/// A whole number parameter (`page`, `per_page`, `offset`, `limit`) within `min..=max`.
pub(crate) fn parse_count(
    name: &str,
    raw: Option<&str>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    let Some(text) = raw.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ if max == u64::MAX => Err(format!(
            "{name}: expected a whole number from {min}, got {text:?}"
        )),
        _ => Err(format!(
            "{name}: expected a whole number from {min} to {max}, got {text:?}"
        )),
    }
}

/// The ids of page `page` (from 1) of `per_page` within `window`; empty past the end.
pub(crate) fn page_of(window: &Range<u64>, page: u64, per_page: u64) -> Range<u64> {
    let skip = (page.saturating_sub(1)).saturating_mul(per_page);
    let start = window.start.saturating_add(skip).min(window.end);
    let end = start.saturating_add(per_page).min(window.end);
    start..end
}

/// How many pages of `per_page` a window of `total` items has (0 when empty).
pub(crate) fn total_pages(total: u64, per_page: u64) -> u64 {
    total.div_ceil(per_page.max(1))
}

/// Opaque cursors: the next item id with a keyed tag, so a cursor this process did not make is
/// told apart from one it did. The key is random per process (a restart invalidates cursors, as
/// a real API's would expire).
#[derive(Debug, Clone, Default)]
pub(crate) struct Cursors {
    key: std::collections::hash_map::RandomState,
}

impl Cursors {
    /// The cursor that resumes at item `next_id`.
    pub fn encode(&self, next_id: u64) -> String {
        let tag = self.key.hash_one(("json-sim cursor", next_id));
        URL_SAFE_NO_PAD.encode(format!("{next_id}.{tag:016x}"))
    }

    /// The item id a cursor resumes at, if this process made it.
    pub fn decode(&self, cursor: &str) -> Option<u64> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (id, tag) = text.split_once('.')?;
        let id: u64 = id.parse().ok()?;
        let tag = u64::from_str_radix(tag, 16).ok()?;
        (self.key.hash_one(("json-sim cursor", id)) == tag).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> Dataset {
        Dataset {
            items: 10,
            epoch_ms: parse_instant("2026-01-01T00:00:00Z")
                .unwrap()
                .timestamp_millis(),
            step_ms: 60_000,
        }
    }

    #[test]
    fn items_are_a_function_of_their_id() {
        let data = dataset();
        let item = data.item(3);
        assert_eq!(item.updated_at, "2026-01-01T00:03:00.000Z");
        assert_eq!(item.name, "item-3");
        assert_eq!(item, data.item(3));
        assert_ne!(value_of(3), value_of(4));
        assert!((0.0..100.0).contains(&value_of(123_456)));
    }

    #[test]
    fn every_time_format_parses_to_the_same_instant() {
        let want = parse_instant("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(parse_instant("1767225600").unwrap(), want);
        assert_eq!(parse_instant("1767225600000").unwrap(), want);
        assert_eq!(parse_instant("2026-01-01").unwrap(), want);
        assert_eq!(parse_instant("2026-01-01T01:00:00+01:00").unwrap(), want);
        assert_eq!(parse_instant("2026-01-01T01:00:00 01:00").unwrap(), want);
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "99999999999999999999",
            "12.5",
        ] {
            let err = parse_instant(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn windows_are_inclusive_then_exclusive() {
        let data = dataset();
        let at = |s: &str| Some(parse_instant(s).unwrap());
        assert_eq!(data.window(None, None), 0..10);
        assert_eq!(data.window(at("2026-01-01T00:02:00Z"), None), 2..10);
        assert_eq!(data.window(at("2026-01-01T00:02:00.001Z"), None), 3..10);
        assert_eq!(data.window(None, at("2026-01-01T00:02:00Z")), 0..2);
        assert_eq!(data.window(at("2025-01-01"), at("2027-01-01")), 0..10);
        assert_eq!(
            data.window(at("2026-01-01T00:05:00Z"), at("2026-01-01T00:01:00Z")),
            1..1
        );
        assert!(data.window(at("2027-01-01"), None).is_empty());
    }

    #[test]
    fn pages_split_a_window() {
        let window = 3..10;
        assert_eq!(page_of(&window, 1, 3), 3..6);
        assert_eq!(page_of(&window, 3, 3), 9..10);
        assert!(page_of(&window, 4, 3).is_empty());
        assert!(page_of(&window, u64::MAX, 1000).is_empty());
        assert_eq!(total_pages(7, 3), 3);
        assert_eq!(total_pages(0, 3), 0);
    }

    #[test]
    fn counts_are_checked() {
        assert_eq!(parse_count("page", None, 1, 1, u64::MAX), Ok(1));
        assert_eq!(parse_count("per_page", Some("20"), 50, 1, 1000), Ok(20));
        assert!(parse_count("per_page", Some("1001"), 50, 1, 1000)
            .unwrap_err()
            .contains("from 1 to 1000"));
        assert!(parse_count("page", Some("0"), 1, 1, u64::MAX).is_err());
        assert!(parse_count("page", Some("x"), 1, 1, u64::MAX).is_err());
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let cursors = Cursors::default();
        assert_eq!(cursors.decode(&cursors.encode(42)), Some(42));
        assert_eq!(Cursors::default().decode(&cursors.encode(42)), None);
        assert_eq!(cursors.decode("42"), None);
        assert_eq!(
            cursors.decode(&URL_SAFE_NO_PAD.encode("42.0000000000000000")),
            None
        );
    }
}
