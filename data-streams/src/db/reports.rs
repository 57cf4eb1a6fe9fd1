//! The AQI report: readings summed up per place (or stream) and per hour or day, in SQL on both
//! backends, from the deduplicated `measurements` (one reading per stream and pollution hour).

use std::collections::HashMap;

use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{dispatch, Db, DbError};

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Country,
    State,
    City,
    Stream,
}

impl GroupBy {
    /// The column of `measurements` a group is keyed on.
    fn column(self) -> &'static str {
        match self {
            GroupBy::Country => "country",
            GroupBy::State => "state",
            GroupBy::City => "city",
            GroupBy::Stream => "stream_id",
        }
    }
}

/// Which readings a report covers: `from_ms <= ts < to_ms`, in the places named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportFilter {
    pub from_ms: i64,
    pub to_ms: i64,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
}

/// A group's key: a place name (`None` where the readings name none) or a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    Place(Option<String>),
    Stream(Uuid),
}

/// One group's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupFigures {
    pub key: GroupKey,
    pub readings: i64,
    /// Readings that have a US AQI (the base of the averages and the share).
    pub with_aqi: i64,
    /// Readings with a US AQI over 100 (unhealthy for sensitive groups and worse).
    pub unhealthy: i64,
    pub aqius_avg: Option<f64>,
    pub aqius_min: Option<f64>,
    pub aqius_max: Option<f64>,
    /// The most frequent main pollutant (`mainus`); ties go to the first by name.
    pub main_pollutant: Option<String>,
    pub series: Vec<BucketFigures>,
}

/// One time bucket of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketFigures {
    /// The bucket's start, epoch ms.
    pub t: i64,
    pub readings: i64,
    pub aqius_avg: Option<f64>,
    pub aqius_max: Option<f64>,
}

/// (key, readings, readings with an AQI, unhealthy, avg, min, max) of a group.
type TotalsRow = (
    Option<String>,
    i64,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);
/// (key, bucket start, readings, avg, max) of a group's bucket.
type BucketRow = (Option<String>, i64, i64, Option<f64>, Option<f64>);

impl GroupKey {
    /// The key as the report queries return it: the place's text, or the stream id as text.
    fn decode(by_stream: bool, text: Option<String>) -> Result<GroupKey, DbError> {
        if !by_stream {
            return Ok(GroupKey::Place(text));
        }
        let text = text.unwrap_or_default();
        Uuid::parse_str(&text)
            .map(GroupKey::Stream)
            .map_err(|e| DbError::Corrupt {
                what: format!("measurements.stream_id {text:?}: {e}"),
            })
    }
}

impl Db {
    /// The AQI report: per group (by `group_by`, within `filter`), the figures and a series of
    /// `bucket_ms`-long buckets; groups with the most unhealthy readings first.
    #[tracing::instrument(level = "debug", skip_all, fields(group_by = ?group_by))]
    pub async fn aqi_report(
        &self,
        group_by: GroupBy,
        bucket_ms: i64,
        filter: &ReportFilter,
    ) -> Result<Vec<GroupFigures>, DbError> {
        let by_stream = group_by == GroupBy::Stream;
        // The group key as text on both backends (SQLite keeps ids as 16-byte blobs).
        let key = match (self, group_by) {
            (Db::Sqlite(_), GroupBy::Stream) => "hex(stream_id)",
            (Db::Postgres(_), GroupBy::Stream) => "stream_id::text",
            (_, place) => place.column(),
        };
        let mut groups: HashMap<GroupKey, GroupFigures> = HashMap::new();
        let totals: Vec<TotalsRow> = self
            .report_rows(
                &format!(
                    "SELECT {key}, COUNT(*), COUNT(aqius), \
                     SUM(CASE WHEN aqius > 100 THEN 1 ELSE 0 END), AVG(aqius), MIN(aqius), \
                     MAX(aqius) FROM measurements"
                ),
                filter,
                "GROUP BY 1",
            )
            .await?;
        for (text, readings, with_aqi, unhealthy, avg, min, max) in totals {
            let key = GroupKey::decode(by_stream, text)?;
            groups.insert(
                key.clone(),
                GroupFigures {
                    key,
                    readings,
                    with_aqi,
                    unhealthy,
                    aqius_avg: avg,
                    aqius_min: min,
                    aqius_max: max,
                    main_pollutant: None,
                    series: Vec::new(),
                },
            );
        }
        let buckets: Vec<BucketRow> = self
            .report_rows(
                &format!(
                    "SELECT {key}, (ts / {bucket_ms}) * {bucket_ms}, COUNT(*), AVG(aqius), \
                     MAX(aqius) FROM measurements"
                ),
                filter,
                "GROUP BY 1, 2 ORDER BY 2",
            )
            .await?;
        for (text, t, readings, avg, max) in buckets {
            if let Some(group) = groups.get_mut(&GroupKey::decode(by_stream, text)?) {
                group.series.push(BucketFigures {
                    t,
                    readings,
                    aqius_avg: avg,
                    aqius_max: max,
                });
            }
        }
        let pollutants: Vec<(Option<String>, String, i64)> = self
            .report_rows(
                &format!("SELECT {key}, mainus, COUNT(*) FROM measurements"),
                filter,
                "AND mainus IS NOT NULL GROUP BY 1, 2 ORDER BY 3 DESC, 2",
            )
            .await?;
        for (text, pollutant, _) in pollutants {
            if let Some(group) = groups.get_mut(&GroupKey::decode(by_stream, text)?) {
                // Rows come most frequent first: the first one seen wins.
                group.main_pollutant.get_or_insert(pollutant);
            }
        }
        let mut groups: Vec<GroupFigures> = groups.into_values().collect();
        groups.sort_by(|a, b| {
            b.unhealthy
                .cmp(&a.unhealthy)
                .then(b.readings.cmp(&a.readings))
                .then(a.key.cmp(&b.key))
        });
        Ok(groups)
    }

    /// Runs `select` over the readings in `filter`, then `tail` (more conditions, grouping,
    /// order).
    async fn report_rows<R>(
        &self,
        select: &str,
        filter: &ReportFilter,
        tail: &str,
    ) -> Result<Vec<R>, DbError>
    where
        R: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        let rows = dispatch!(Db, self, |pool, DB| {
            let mut query = QueryBuilder::<DB>::new(select);
            query.push(" WHERE ts >= ").push_bind(filter.from_ms);
            query.push(" AND ts < ").push_bind(filter.to_ms);
            for (column, value) in [
                ("country", &filter.country),
                ("state", &filter.state),
                ("city", &filter.city),
            ] {
                if let Some(value) = value {
                    query
                        .push(format!(" AND {column} = "))
                        .push_bind(value.clone());
                }
            }
            query.push(" ").push(tail);
            query.build_query_as().fetch_all(pool).await?
        });
        Ok(rows)
    }
}
