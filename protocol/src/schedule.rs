//! Cron expressions, parsed the same way by the supervisor (to validate) and the worker (to run).

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Parse a cron expression. Six fields start with seconds (`0 */15 * * * *`); five fields mean
/// second 0. Times are UTC.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// The first time strictly after `after` that matches, if any.
pub fn next_after(cron: &Cron, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after, false).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn six_fields_have_seconds_and_five_fields_do_not() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 13, 7, 5).unwrap();
        let every_15_min = parse_cron("0 */15 * * * *").unwrap();
        assert_eq!(
            next_after(&every_15_min, t),
            Some(Utc.with_ymd_and_hms(2026, 11, 22, 13, 15, 0).unwrap())
        );
        let five = parse_cron("*/15 * * * *").unwrap();
        assert_eq!(next_after(&five, t), next_after(&every_15_min, t));
        let every_second = parse_cron("* * * * * *").unwrap();
        assert_eq!(
            next_after(&every_second, t),
            Some(t + chrono::Duration::seconds(1))
        );
    }

    #[test]
    fn garbage_is_an_error_that_quotes_the_expression() {
        let err = parse_cron("every tuesday").unwrap_err();
        assert!(err.contains("every tuesday"), "{err}");
        assert!(parse_cron("61 * * * * *").is_err());
    }
}
