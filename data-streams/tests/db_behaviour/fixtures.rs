//! Builders for the rows and events the cases store; readings and results are the shared ones.

use data_streams::db::Db;
use data_streams::stream::{StreamInput, StreamRow, StreamSpec, StreamState};
use protocol::{FailureClass, RunFailure};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::support::iqair_stream;
pub use crate::support::{iso, reading, result, result_with_id, v7, T0};

pub fn params() -> Map<String, Value> {
    let Value::Object(map) = json!({"lat": 52.52, "lon": 13.405}) else {
        unreachable!("a JSON object literal")
    };
    map
}

/// The body of a `POST /streams` for the fixture stream: every 5 minutes, 3-minute timeout.
pub fn stream_body() -> Value {
    let mut body = iqair_stream(
        "http://api.airvisual.com/v2/nearest_city",
        "sk-live-very-secret",
        300_000,
    );
    body["timeout"] = json!(180_000);
    body["params"] = Value::Object(params());
    body
}

/// A validated spec from a request body.
pub fn spec_of(body: Value) -> StreamSpec {
    let input: StreamInput = serde_json::from_value(body).expect("a stream body");
    StreamSpec::parse(input).expect("a valid stream")
}

/// The fixture stream's spec.
pub fn spec() -> StreamSpec {
    spec_of(stream_body())
}

/// Inserts a running stream created at `now_ms`.
pub async fn stream(db: &Db, now_ms: i64) -> StreamRow {
    stream_in(db, now_ms, StreamState::Running).await
}

/// Inserts a stream created at `now_ms` in `state`.
pub async fn stream_in(db: &Db, now_ms: i64, state: StreamState) -> StreamRow {
    db.insert_stream(Uuid::new_v4(), &spec(), state, now_ms)
        .await
        .expect("insert_stream")
}

/// A failed run at `at_ms`.
pub fn failure(stream_id: Uuid, at_ms: i64, class: FailureClass, message: &str) -> RunFailure {
    RunFailure {
        run_id: v7(at_ms),
        stream_id,
        at_ms,
        class,
        message: message.to_owned(),
        stream_stopped: class == FailureClass::Auth,
        scheduled_at_ms: at_ms,
        started_at_ms: at_ms,
        attempts: 1,
    }
}
