//! The live channel across replicas: each replica sends what it publishes to the others
//! through PostgreSQL's `NOTIFY`, and hands what the others sent to its own `GET /live`
//! clients. So a client connected to any replica sees the leader's results and every replica's
//! stream changes.
//!
//! A notification carries at most 8000 bytes: a larger message (rare: a stream with a very
//! large config) is not shared and counts in `ds_live_fanout_dropped_total`. A replica that
//! loses its listening connection misses what was sent meanwhile, as a client that lags
//! does; clients page the list API to catch up either way.

use axum::extract::ws::Utf8Bytes;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::live::Live;

/// The channel live messages cross replicas on.
pub const LIVE_CHANNEL: &str = "data_streams_live";

/// PostgreSQL's limit on a notification's payload is 8000 bytes.
const MAX_PAYLOAD: usize = 7_999;

/// Messages sent in one statement.
const BATCH: usize = 256;

/// `origin seq stream text`, the stream being `-` for messages about no stream. The sequence
/// number keeps two equal messages apart: PostgreSQL delivers equal payloads of one
/// transaction once.
fn payload(origin: Uuid, seq: u64, stream_id: Option<Uuid>, text: &str) -> String {
    let stream = stream_id.map_or_else(|| "-".to_owned(), |id| id.to_string());
    format!("{origin} {seq} {stream} {text}")
}

/// The parts of a payload (origin, stream, text); `None` if it is not one.
fn parse(payload: &str) -> Option<(Uuid, Option<Uuid>, &str)> {
    let (origin, rest) = payload.split_once(' ')?;
    let (seq, rest) = rest.split_once(' ')?;
    seq.parse::<u64>().ok()?;
    let (stream, text) = rest.split_once(' ')?;
    let stream = match stream {
        "-" => None,
        id => Some(id.parse().ok()?),
    };
    Some((origin.parse().ok()?, stream, text))
}

/// Sends what this replica (`origin`) publishes to the others until `until` is cancelled.
pub async fn send(
    pool: PgPool,
    origin: Uuid,
    mut outgoing: mpsc::Receiver<crate::live::Shared>,
    until: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut seq: u64 = 0;
    loop {
        let received = tokio::select! {
            () = until.cancelled() => return,
            received = outgoing.recv_many(&mut batch, BATCH) => received,
        };
        if received == 0 {
            return;
        }
        let payloads: Vec<String> = batch
            .drain(..)
            .map(|(stream, text)| {
                seq += 1;
                payload(origin, seq, stream, text.as_str())
            })
            .filter(|p| {
                let fits = p.len() <= MAX_PAYLOAD;
                if !fits {
                    metrics::counter!("ds_live_fanout_dropped_total").increment(1);
                }
                fits
            })
            .collect();
        let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(super::fanout::LIVE_CHANNEL)
            .bind(&payloads)
            .execute(&pool)
            .await;
        if let Err(err) = sent {
            metrics::counter!("ds_live_fanout_dropped_total").increment(payloads.len() as u64);
            tracing::debug!("cannot share live messages with the other replicas: {err}");
        }
    }
}

/// Hands what the other replicas publish to this replica's clients until `until` is
/// cancelled (listening again after a lost connection).
pub async fn receive(pool: PgPool, origin: Uuid, live: Live, until: CancellationToken) {
    super::listen::listen(
        &pool,
        LIVE_CHANNEL,
        &until,
        || async {},
        |payload| {
            match parse(&payload) {
                Some((from, _, _)) if from == origin => {}
                Some((_, stream, text)) => live.deliver(stream, &Utf8Bytes::from(text.to_owned())),
                None => tracing::debug!("a live message from another replica does not parse"),
            }
            async {}
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_reads_back_as_it_was_written() {
        let (origin, stream) = (Uuid::now_v7(), Uuid::now_v7());
        let text = r#"{"type":"result","x":"a b"}"#;
        let written = payload(origin, 7, Some(stream), text);
        assert_eq!(parse(&written), Some((origin, Some(stream), text)));
        let none = payload(origin, 8, None, "{}");
        assert_eq!(parse(&none), Some((origin, None, "{}")));
        assert_ne!(
            payload(origin, 1, None, "{}"),
            payload(origin, 2, None, "{}")
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse("not-a-uuid 1 - {}"), None);
        assert_eq!(parse(&format!("{origin} x - {{}}")), None);
    }
}
