//! What every data-streams process shares, written once: [`SecretKey`] (the one type that holds a
//! key or token, and the one place that prints `***`), [`error_chain`] (an error and its causes
//! in one log line), [`now_ms`], [`shutdown_signal`] and [`init_tracing`] for the binaries.

mod process;
pub mod secret;

pub use process::{error_chain, init_tracing, shutdown_signal};
pub use secret::SecretKey;

/// Milliseconds since the Unix epoch, now (UTC).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ms` (epoch milliseconds) as RFC 3339 in UTC with milliseconds, e.g.
/// `2026-11-22T13:00:00.000Z`; `None` outside chrono's range.
pub fn rfc3339_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// An RFC 3339 timestamp (`2026-11-22T13:00:00.000Z`, fraction optional, any offset) in epoch
/// milliseconds; `None` if it does not parse.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|at| at.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_milliseconds() {
        let ms = 1_795_870_800_123;
        let text = rfc3339_ms(ms).unwrap();
        assert_eq!(text, "2026-11-28T13:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&text), Some(ms));
        assert_eq!(
            parse_rfc3339_ms(" 2026-11-28T14:00:00.123+01:00 "),
            Some(ms)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert!(now_ms() > ms - 365 * 86_400_000);
    }
}
