//! `GET /streams/{id}/coverage`: the coverage ledger of one stream over a window — how many of
//! the slots its schedule should have run in were stored, failed (by class), skipped (by
//! reason) or missing, the gaps, and a strip of the window by outcome (`crate::coverage`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::docs::{CommonErrors, ErrorBody, NotFoundError};
use super::results::instant;
use super::streams::parse_id;
use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::coverage::{self, CoverageError, Ledger, Span, WindowError};
use crate::stream::Rfc3339;

/// The default window: the last 24 hours.
const DEFAULT_WINDOW_MS: i64 = 86_400_000;

/// The window of a ledger.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CoverageWindow {
    /// From this time on, inclusive (RFC 3339, or epoch milliseconds); default 24 h before `to`.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// Up to this time, exclusive (RFC 3339, or epoch milliseconds); default now.
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
}

/// A stretch `[start, end)` of the window holding `slots` slots of one outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CoverageSpan {
    #[schema(value_type = String, format = DateTime)]
    start: Rfc3339,
    #[schema(value_type = String, format = DateTime)]
    end: Rfc3339,
    /// `stored`, `failed`, `skipped`, `missing`; in the strip also `not_expected` (before the
    /// stream existed, or stopped by a person) and `open` (not judged yet).
    outcome: &'static str,
    slots: u64,
}

impl From<&Span> for CoverageSpan {
    fn from(span: &Span) -> Self {
        CoverageSpan {
            start: Rfc3339(span.start),
            end: Rfc3339(span.end),
            outcome: span.kind.as_str(),
            slots: span.slots,
        }
    }
}

/// Slots per outcome; `expected` is the sum of the other four.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CoverageCounts {
    expected: u64,
    stored: u64,
    failed: u64,
    skipped: u64,
    missing: u64,
    /// Failed slots per failure class (`timeout`, `network`, `http`, `rate_limited`, …).
    failed_by_class: BTreeMap<String, u64>,
    /// Skipped slots per reason: `overran` (the previous run was still in flight) or
    /// `rate_budget` (the worker's budget for the key was used up; no call was made).
    skipped_by_reason: BTreeMap<String, u64>,
}

/// The coverage ledger of a stream over a window.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "stream_id": "019ad1f0-1b2c-7d4e-8f60-1a2b3c4d5e6f",
    "from": "2026-11-27T13:00:00.000Z", "to": "2026-11-28T13:00:00.000Z",
    "open_from": "2026-11-28T12:59:43.000Z",
    "interval": 15000, "cron": null,
    "counts": {"expected": 5759, "stored": 5510, "failed": 9, "skipped": 0, "missing": 240,
               "failed_by_class": {"timeout": 9}, "skipped_by_reason": {}},
    "gaps": [{"start": "2026-11-28T02:00:03.120Z", "end": "2026-11-28T03:00:03.120Z",
              "outcome": "missing", "slots": 240}],
    "strip": [{"start": "2026-11-27T13:00:00.000Z", "end": "2026-11-28T02:00:03.120Z",
               "outcome": "stored", "slots": 3128}]
}))]
pub(super) struct Coverage {
    stream_id: Uuid,
    #[schema(value_type = String, format = DateTime)]
    from: Rfc3339,
    #[schema(value_type = String, format = DateTime)]
    to: Rfc3339,
    /// Slots from here on are not judged yet: a run due there may still be on its way.
    #[schema(value_type = String, format = DateTime)]
    open_from: Rfc3339,
    /// The interval in ms (an interval stream).
    interval: Option<u64>,
    /// The cron expression (a cron stream).
    cron: Option<String>,
    counts: CoverageCounts,
    /// Contiguous missing slots, oldest first.
    gaps: Vec<CoverageSpan>,
    /// The window from `from` to `to` by outcome, oldest first, neighbours of one outcome
    /// merged.
    strip: Vec<CoverageSpan>,
}

/// A stream's coverage over a window: of the slots its schedule should have run in, how many
/// were stored, failed (by class), skipped (by reason) or missing, and where the gaps are.
/// Before the stream existed and while a person had it stopped, nothing is expected; the last
/// slots (within the run timeout and a little more of now) are open, not judged. The window
/// may hold at most 100 000 slots of the stream's schedule.
#[utoipa::path(
    get, path = "/streams/{id}/coverage", operation_id = "get_coverage", tag = "data",
    params(("id" = Uuid, Path, description = "The stream"), CoverageWindow),
    responses(
        (status = 200, description = "The ledger", body = Coverage),
        (status = 422, description = "`from` is not before `to`, or the window holds more than \
          100 000 slots of the stream's schedule", body = ErrorBody),
        (status = 409, description = "A PUSH stream: it has no schedule to cover", body = ErrorBody),
        CommonErrors, NotFoundError,
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(window): ApiQuery<CoverageWindow>,
) -> Result<Json<Coverage>, ApiError> {
    let id = parse_id(&id, "stream")?;
    let now = common::now_ms();
    let to = instant(window.to.as_deref(), "to")?.unwrap_or(now);
    let from =
        instant(window.from.as_deref(), "from")?.unwrap_or(to.saturating_sub(DEFAULT_WINDOW_MS));
    // The answer shows both as RFC 3339: epoch ms beyond the calendar cannot be shown.
    for (name, at) in [("from", from), ("to", to)] {
        if chrono::DateTime::from_timestamp_millis(at).is_none() {
            return Err(ApiError::bad(format!("{name} is outside the calendar")));
        }
    }
    let stream = state
        .db
        .get_stream(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} not found")))?;
    if stream.spec.is_push() {
        return Err(ApiError::Conflict(format!(
            "stream {id} is a PUSH stream: it has no schedule, so no slots to cover; \
             GET /streams/{id}/results lists what was pushed"
        )));
    }
    let ledger = match coverage::for_stream(&state.db, &stream, from, to, now).await {
        Ok(ledger) => ledger,
        Err(CoverageError::Window(
            err @ (WindowError::Empty | WindowError::TooManySlots { .. }),
        )) => {
            let message = err.to_string();
            return Err(ApiError::Invalid(message.clone(), vec![message]));
        }
        Err(CoverageError::Window(err)) => return Err(ApiError::internal(err)),
        Err(CoverageError::Db(err)) => return Err(err.into()),
    };
    Ok(Json(view(&stream, from, to, &ledger)))
}

fn view(stream: &crate::stream::StreamRow, from: i64, to: i64, ledger: &Ledger) -> Coverage {
    let total = |by: &BTreeMap<String, u64>| by.values().sum();
    Coverage {
        stream_id: stream.id,
        from: Rfc3339(from),
        to: Rfc3339(to),
        open_from: Rfc3339(ledger.open_from),
        interval: stream.spec.interval_ms(),
        cron: stream.spec.cron().map(str::to_owned),
        counts: CoverageCounts {
            expected: ledger.expected,
            stored: ledger.stored,
            failed: total(&ledger.failed),
            skipped: total(&ledger.skipped),
            missing: ledger.missing,
            failed_by_class: ledger.failed.clone(),
            skipped_by_reason: ledger.skipped.clone(),
        },
        gaps: ledger.gaps.iter().map(CoverageSpan::from).collect(),
        strip: ledger.strip.iter().map(CoverageSpan::from).collect(),
    }
}
