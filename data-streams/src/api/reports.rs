//! `GET /reports/aqi`: how bad the air was, where and when — per country, state, city or
//! stream, with a series per hour or day, each level a drill-down of the one above.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::docs::ErrorBody;
use super::results::instant;
use super::{ApiError, ApiQuery, AppState};
use crate::db::{GroupBy, GroupFigures, GroupKey, ReportFilter};
use crate::stream::Rfc3339;

/// What to sum up, and where.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ReportQuery {
    /// `country` (default), `state`, `city` or `stream`.
    #[param(value_type = Option<String>, pattern = "^(country|state|city|stream)$")]
    group_by: Option<String>,
    /// `hour` (default) or `day`: the length of each point of a group's series.
    #[param(value_type = Option<String>, pattern = "^(hour|day)$")]
    bucket: Option<String>,
    /// From this time on (RFC 3339, or epoch ms), inclusive; default 24 h before `to`.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// Up to this time (RFC 3339, or epoch ms), exclusive; default now.
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// Only readings of this country (the drill-down from `group_by=country`).
    country: Option<String>,
    /// Only readings of this state.
    state: Option<String>,
    /// Only readings of this city.
    city: Option<String>,
}

/// One point of a group's series.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BucketView {
    /// The bucket's start.
    #[schema(value_type = String, format = DateTime)]
    t: Rfc3339,
    readings: i64,
    aqius_avg: Option<f64>,
    aqius_max: Option<f64>,
}

/// One group: a place (or stream) and its figures.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct GroupView {
    /// The place's name (`null` where the readings name none), or the stream id.
    key: Option<String>,
    readings: i64,
    /// Readings with a US AQI over 100.
    unhealthy: i64,
    aqius_avg: Option<f64>,
    aqius_min: Option<f64>,
    aqius_max: Option<f64>,
    /// `unhealthy` over the readings that have a US AQI; `null` when none has.
    unhealthy_share: Option<f64>,
    /// The most frequent main pollutant for the US AQI (`p2` is PM2.5, `p1` PM10, `o3`, `n2`,
    /// `s2`, `co`).
    main_pollutant: Option<String>,
    series: Vec<BucketView>,
}

/// The whole window's figures.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TotalView {
    readings: i64,
    unhealthy: i64,
    unhealthy_share: Option<f64>,
}

/// The report.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Report {
    group_by: &'static str,
    bucket: &'static str,
    #[schema(value_type = String, format = DateTime)]
    from: Rfc3339,
    #[schema(value_type = String, format = DateTime)]
    to: Rfc3339,
    /// Groups with the most unhealthy readings first.
    groups: Vec<GroupView>,
    total: TotalView,
}

fn share(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl From<GroupFigures> for GroupView {
    fn from(g: GroupFigures) -> Self {
        GroupView {
            key: match g.key {
                GroupKey::Place(name) => name,
                GroupKey::Stream(id) => Some(id.to_string()),
            },
            readings: g.readings,
            unhealthy: g.unhealthy,
            aqius_avg: g.aqius_avg,
            aqius_min: g.aqius_min,
            aqius_max: g.aqius_max,
            unhealthy_share: share(g.unhealthy, g.with_aqi),
            main_pollutant: g.main_pollutant,
            series: g
                .series
                .into_iter()
                .map(|b| BucketView {
                    t: Rfc3339(b.t),
                    readings: b.readings,
                    aqius_avg: b.aqius_avg,
                    aqius_max: b.aqius_max,
                })
                .collect(),
        }
    }
}

/// Readings summed up per group and per hour or day: how many, the US AQI's mean, minimum and
/// maximum, the share over 100 (unhealthy for sensitive groups and worse), the most frequent
/// main pollutant, and a series per bucket. Drill down by naming the group above:
/// `group_by=state&country=Poland`, then `group_by=city&country=Poland&state=…`.
#[utoipa::path(
    get, path = "/reports/aqi", operation_id = "aqi_report", tag = "reports",
    params(ReportQuery),
    responses(
        (status = 200, description = "The report", body = Report),
        (status = 400, description = "An unknown group_by or bucket, a malformed time, or from after to", body = ErrorBody),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 503, description = "The database is not reachable", body = ErrorBody),
    )
)]
pub(super) async fn aqi(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ReportQuery>,
) -> Result<Json<Report>, ApiError> {
    let (group_by, group_name) = match query.group_by.as_deref().unwrap_or("country") {
        "country" => (GroupBy::Country, "country"),
        "state" => (GroupBy::State, "state"),
        "city" => (GroupBy::City, "city"),
        "stream" => (GroupBy::Stream, "stream"),
        other => {
            return Err(ApiError::bad(format!(
                "group_by {other:?}: use country, state, city or stream"
            )))
        }
    };
    let (bucket_ms, bucket_name) = match query.bucket.as_deref().unwrap_or("hour") {
        "hour" => (3_600_000, "hour"),
        "day" => (86_400_000, "day"),
        other => return Err(ApiError::bad(format!("bucket {other:?}: use hour or day"))),
    };
    let to_ms = instant(query.to.as_deref(), "to")?.unwrap_or_else(common::now_ms);
    let from_ms = instant(query.from.as_deref(), "from")?.unwrap_or(to_ms - 86_400_000);
    if from_ms > to_ms {
        return Err(ApiError::bad("from must not be after to"));
    }
    let filter = ReportFilter {
        from_ms,
        to_ms,
        country: query.country.filter(|s| !s.is_empty()),
        state: query.state.filter(|s| !s.is_empty()),
        city: query.city.filter(|s| !s.is_empty()),
    };
    let figures = state.db.aqi_report(group_by, bucket_ms, &filter).await?;
    let readings = figures.iter().map(|g| g.readings).sum();
    let unhealthy = figures.iter().map(|g| g.unhealthy).sum();
    let with_aqi = figures.iter().map(|g| g.with_aqi).sum();
    Ok(Json(Report {
        group_by: group_name,
        bucket: bucket_name,
        from: Rfc3339(from_ms),
        to: Rfc3339(to_ms),
        groups: figures.into_iter().map(GroupView::from).collect(),
        total: TotalView {
            readings,
            unhealthy,
            unhealthy_share: share(unhealthy, with_aqi),
        },
    }))
}
