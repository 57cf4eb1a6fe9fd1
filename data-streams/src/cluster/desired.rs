//! Desired state written on a replica that does not lead, and how the leader hears of it.
//!
//! Any replica serves the API. A follower stores what the request asks (a stream created,
//! changed, started or stopped) in the database, which is the desired state, and announces it
//! on [`DESIRED_CHANNEL`]. The leader listens and applies it: it places the stream, hands its
//! worker the new config, or stops it. The stream shows `pending` (or still runs, for a stop)
//! until then. Notifications are a shortcut only. The leader's sweep also finds what was
//! missed: pending streams, and streams stopped but still assigned.

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
    super::listen::listen(
        &pool,
        DESIRED_CHANNEL,
        &until,
        || supervisor.apply_desired(None),
        |payload| {
            let supervisor = supervisor.clone();
            async move { supervisor.apply_desired(payload.parse::<Uuid>().ok()).await }
        },
    )
    .await;
}
