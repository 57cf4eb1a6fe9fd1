//! Reading what was stored: references (keyset paginated), raw objects byte for byte,
//! measurements by time, and failed runs.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::streams::{parse_id, rfc3339};
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::db::{MeasurementRow, ResultRow};

async fn known_stream(state: &AppState, raw: &str) -> Result<Uuid, ApiError> {
    let id = parse_id(raw, "stream")?;
    match state.supervisor.db().get_stream(id).await? {
        Some(_) => Ok(id),
        None => Err(ApiError::NotFound(format!("stream {id} not found"))),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Page {
    limit: Option<String>,
    after: Option<String>,
}

fn limit(raw: Option<&str>, default: i64, max: i64) -> Result<i64, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(format!(
                "limit must be a whole number from 1 to {max}"
            ))),
        },
    }
}

fn result_view(r: &ResultRow) -> Value {
    json!({
        "id": r.id,
        "stream_id": r.stream_id,
        "bucket": r.bucket,
        "key": r.key,
        "fetched_at": rfc3339(r.fetched_at),
        "scheduled_at": r.scheduled_at.map_or(Value::Null, rfc3339),
        "started_at": r.started_at.map_or(Value::Null, rfc3339),
        "size": r.size,
        "sha256": r.sha256,
        "status": r.status,
    })
}

/// `GET /streams/{id}/results?limit=&after=`: newest first; `next` is the cursor for `after`.
pub(super) async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let stream_id = known_stream(&state, &id).await?;
    let limit = limit(page.limit.as_deref(), 100, 1000)?;
    let after = match page.after.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(parse_id(raw, "result (cursor)")?),
    };
    let (rows, next) = state
        .supervisor
        .db()
        .list_results(stream_id, limit, after)
        .await?;
    Ok(Json(json!({
        "items": rows.iter().map(result_view).collect::<Vec<_>>(),
        "next": next,
    })))
}

/// `GET /results/{id}/raw`: the object exactly as the API sent it.
pub(super) async fn raw(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id, "result")?;
    let row = state
        .supervisor
        .db()
        .get_result(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("result {id} not found")))?;
    match state.store.get(&row.bucket, &row.key).await {
        Ok(bytes) => Ok((
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::ETAG, format!("\"{}\"", row.sha256)),
            ],
            bytes,
        )),
        // A missing bucket (deleted, or a folder removed by hand) loses the object just the same.
        Err(objects::StoreError::NoSuchKey { .. } | objects::StoreError::NoSuchBucket { .. }) => {
            Err(ApiError::NotFound(format!(
                "result {id} is indexed but its object {}/{} is missing from the store",
                row.bucket, row.key
            )))
        }
        Err(err) if err.is_transient() => Err(ApiError::Unavailable(format!(
            "the object store is not reachable: {err}"
        ))),
        Err(err) => Err(ApiError::Internal(err.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct Window {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

/// RFC 3339 or epoch milliseconds.
fn instant(raw: Option<&str>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(raw) = raw.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad(format!(
                "{name} must be RFC 3339 (2026-11-22T13:00:00Z) or epoch milliseconds"
            ))
        })
}

fn measurement_view(m: &MeasurementRow) -> Value {
    json!({
        "ts": rfc3339(m.ts),
        "result_id": m.result_id,
        "city": m.city, "state": m.state, "country": m.country,
        "lat": m.lat, "lon": m.lon,
        "aqius": m.aqius, "mainus": m.mainus, "aqicn": m.aqicn, "maincn": m.maincn,
        "weather_ts": m.weather_ts.map(rfc3339),
        "tp": m.tp, "pr": m.pr, "hu": m.hu, "ws": m.ws, "wd": m.wd, "ic": m.ic,
        "heat_index": m.heat_index,
    })
}

/// `GET /streams/{id}/measurements?from=&to=&limit=`: one reading per pollution hour, oldest first.
pub(super) async fn measurements(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(window): ApiQuery<Window>,
) -> Result<Json<Value>, ApiError> {
    let stream_id = known_stream(&state, &id).await?;
    let from = instant(window.from.as_deref(), "from")?;
    let to = instant(window.to.as_deref(), "to")?;
    let limit = limit(window.limit.as_deref(), 1000, 10_000)?;
    let rows = state
        .supervisor
        .db()
        .list_measurements(stream_id, from, to, limit)
        .await?;
    Ok(Json(
        json!({"items": rows.iter().map(measurement_view).collect::<Vec<_>>()}),
    ))
}

/// `GET /streams/{id}/failures?limit=`: failed runs, newest first.
pub(super) async fn failures(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let stream_id = known_stream(&state, &id).await?;
    let limit = limit(page.limit.as_deref(), 100, 1000)?;
    let rows = state
        .supervisor
        .db()
        .list_failures(stream_id, limit)
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|f| {
            json!({"run_id": f.run_id, "at": rfc3339(f.at), "class": f.class,
                   "message": f.message, "stream_stopped": f.stream_stopped})
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}
