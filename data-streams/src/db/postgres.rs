//! PostgreSQL specifics: connecting, and the SQL that differs from SQLite.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};

use super::{ConnectOptions, DbError};

pub(super) const BEGIN_WRITE: &str = "BEGIN";
/// KEY SHARE blocks DELETE of the stream but not the UPDATE of its bookkeeping columns.
pub(super) const LOCK_STREAMS: &str = " FOR KEY SHARE";
/// `streams` looked up by id: the planner, with its statistics, needs no hint.
pub(super) const STREAMS_BY_ID: &str = "streams";
/// `streams` read for assignment: the partial index serves it without a hint.
pub(super) const STREAMS_UNASSIGNED: &str = "streams";

/// A transaction whose client sends nothing for 10 s is ended by the server. A leader frozen
/// (SIGSTOP, a VM pause) inside a fenced transaction holds the lease row `FOR SHARE`, which
/// would keep every other replica from taking the lease over, for as long as it stays frozen;
/// this bounds that to 10 s, under the lease's 15 s TTL. Our transactions never idle that long
/// between statements.
const IDLE_IN_TRANSACTION: &str = "SET idle_in_transaction_session_timeout = 10000";

/// Connects once to learn quickly whether the server is there, then opens the pool and
/// migrates.
pub(super) async fn connect(
    url: &str,
    target: &str,
    options: ConnectOptions,
) -> Result<PgPool, DbError> {
    let unreachable = |source| DbError::Unreachable {
        backend: "postgres",
        target: target.to_owned(),
        source,
    };
    let connect_options = PgConnectOptions::from_str(url)
        .map_err(|source| DbError::InvalidUrl {
            target: target.to_owned(),
            source,
        })?
        .application_name("data-streams");

    // The pool retries a refused connection until its acquire timeout and then reports only
    // "pool timed out"; one direct attempt keeps the real cause (refused, unknown host, login
    // refused) and fails at once when nothing listens.
    let probe = tokio::time::timeout(options.acquire_timeout, connect_options.connect())
        .await
        .map_err(|_elapsed| {
            unreachable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection within {} ms",
                    options.acquire_timeout.as_millis()
                ),
            )))
        })?
        .map_err(unreachable)?;
    // The probe has done its job; a failed goodbye changes nothing.
    let _ = probe.close().await;

    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                sqlx::Executor::execute(conn, IDLE_IN_TRANSACTION).await?;
                Ok(())
            })
        })
        .connect_with(connect_options)
        .await
        .map_err(unreachable)?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(pool)
}
