//! Desired state written on a replica that does not lead, and how the leader hears of it.
//!
//! Any replica serves the API. A follower stores what the request asks (a stream created,
//! changed, started or stopped) in the database, which is the desired state, and announces it
//! on [`DESIRED_CHANNEL`]. The leader listens and applies it: it places the stream, hands its
//! worker the new config, or stops it. The stream shows `pending` (or still runs, for a stop)
//! until then. Notifications are a shortcut only. The leader's sweep also finds what was
//! missed: pending streams, and streams stopped but still assigned.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::supervisor::Supervisor;

/// The channel a follower announces desired-state changes on; the payload is a stream id, or
/// `*` for a change to many streams.
pub const DESIRED_CHANNEL: &str = "data_streams_desired";

/// Announces a desired-state change of `stream` (`None`: many streams) to the leader.
pub async fn announce(pool: &PgPool, stream: Option<Uuid>) -> Result<(), sqlx::Error> {
    let payload = stream.map_or_else(|| "*".to_owned(), |id| id.to_string());
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(DESIRED_CHANNEL)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}

/// The leader's listener: applies every announced change until `until` is cancelled, and
/// everything at once after each (re)connection, since what was announced meanwhile is lost.
pub async fn listen(pool: PgPool, supervisor: Supervisor, until: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let subscribe = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(DESIRED_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let subscribed = tokio::select! {
            () = until.cancelled() => return,
            subscribed = subscribe => subscribed,
        };
        let mut listener = match subscribed {
            Ok(listener) => listener,
            Err(err) => {
                tracing::debug!("cannot listen for desired-state changes: {err}");
                tokio::select! {
                    () = until.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        supervisor.apply_desired(None).await;
        loop {
            let received = tokio::select! {
                () = until.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    let stream = notification.payload().parse::<Uuid>().ok();
                    supervisor.apply_desired(stream).await;
                }
                // The connection was lost and made again: something may have been missed.
                Ok(None) => supervisor.apply_desired(None).await,
                Err(err) => {
                    tracing::debug!("listening for desired-state changes failed: {err}");
                    break;
                }
            }
        }
    }
}
