//! What the coverage ledger reads (`crate::coverage`): a stream's runs around a window — results
//! by tick, failed runs by time — and its desired-state history, which this file also writes.

use uuid::Uuid;

use super::{dispatch, leader_write, Db, DbError};
use crate::stream::StreamState;

// The tick expression is the one `results_stream_tick_idx` indexes, verbatim: a reconciled
// reference knows no tick, so its fetch time stands in.
const RESULT_TICKS: &str = "SELECT COALESCE(scheduled_at, fetched_at), fetched_at FROM results \
     WHERE stream_id = $1 AND COALESCE(scheduled_at, fetched_at) >= $2 \
     AND COALESCE(scheduled_at, fetched_at) < $3 ORDER BY 1";

const FAILURES: &str = "SELECT at, class, message FROM run_failures \
     WHERE stream_id = $1 AND at >= $2 AND at < $3 ORDER BY at";

const STATES: &str =
    "SELECT at, state FROM stream_states WHERE stream_id = $1 AND at < $2 ORDER BY at, id";

const RECORD_STATE: &str =
    "INSERT INTO stream_states (id, stream_id, at, state) VALUES ($1, $2, $3, $4)";

/// A failed run as the ledger needs it: (at, class, message).
pub type FailureMark = (i64, String, String);

impl Db {
    /// A stream's results whose tick is in `[from_ms, to_ms)`: (tick, fetched_at), by tick.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, from_ms, to_ms))]
    pub async fn result_ticks(
        &self,
        stream_id: Uuid,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<(i64, i64)>, DbError> {
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(RESULT_TICKS)
                .bind(stream_id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// A stream's failed runs recorded in `[from_ms, to_ms)`, oldest first.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, from_ms, to_ms))]
    pub async fn failure_marks(
        &self,
        stream_id: Uuid,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<FailureMark>, DbError> {
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(FAILURES)
                .bind(stream_id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// A stream's desired-state changes before `to_ms`, oldest first.
    #[tracing::instrument(level = "debug", skip_all, fields(stream_id = %stream_id, to_ms))]
    pub async fn state_changes(
        &self,
        stream_id: Uuid,
        to_ms: i64,
    ) -> Result<Vec<(i64, StreamState)>, DbError> {
        let rows: Vec<(i64, String)> = dispatch!(Db, self, |pool| {
            sqlx::query_as(STATES)
                .bind(stream_id)
                .bind(to_ms)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(at, state)| {
                state
                    .parse()
                    .map(|state| (at, state))
                    .map_err(|e| DbError::Corrupt {
                        what: format!("stream_states.state of {stream_id}: {e}"),
                    })
            })
            .collect()
    }

    /// Records that the stream's desired state became `state` at `at_ms` (by
    /// [`Db::insert_stream`] and [`Db::set_state`], after their change).
    pub(crate) async fn record_state(
        &self,
        stream_id: Uuid,
        state: StreamState,
        at_ms: i64,
    ) -> Result<(), DbError> {
        leader_write!(self, |pool| {
            sqlx::query(RECORD_STATE)
                .bind(Uuid::now_v7())
                .bind(stream_id)
                .bind(at_ms)
                .bind(state.as_str())
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}
