//! One `LISTEN` loop for the channels replicas share (desired state, live messages): it
//! listens again after a lost connection, with backoff, and says so, since what was sent while
//! nobody listened is lost. (The elector's own listener, with its timeouts, is in `elector.rs`.)

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Listens on `channel` until `until` is cancelled. `subscribed` runs after every (re)start of
/// listening (anything sent meanwhile was missed); `received` gets every payload, in order.
pub(crate) async fn listen<S, SF, R, RF>(
    pool: &PgPool,
    channel: &str,
    until: &CancellationToken,
    mut subscribed: S,
    mut received: R,
) where
    S: FnMut() -> SF,
    SF: Future<Output = ()>,
    R: FnMut(String) -> RF,
    RF: Future<Output = ()>,
{
    let mut backoff = Duration::from_millis(250);
    loop {
        let subscribe = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = until.cancelled() => return,
            result = subscribe => match result {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::debug!(channel, "cannot listen: {err}");
                    tokio::select! {
                        () = until.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(250);
        subscribed().await;
        loop {
            let next = tokio::select! {
                () = until.cancelled() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(notification)) => received(notification.payload().to_owned()).await,
                // The connection was lost and is made again at the next call.
                Ok(None) => subscribed().await,
                Err(err) => {
                    tracing::debug!(channel, "listening failed, listening again: {err}");
                    break;
                }
            }
        }
    }
}
