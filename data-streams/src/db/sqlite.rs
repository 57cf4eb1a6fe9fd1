//! SQLite specifics: opening the file, and the SQL that differs from PostgreSQL.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::{ConnectOptions, DbError};

/// A write transaction takes the one write lock at once (see [`super::Db::begin_write`]).
pub(super) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";
/// Nothing: a write transaction already excludes every other writer.
pub(super) const LOCK_STREAMS: &str = "";
/// `streams` looked up by id. Without the hint, newer SQLite (3.46+) may walk an index on
/// `state` or `worker_id` for `UPDATE … WHERE id IN (…) AND state = … AND worker_id IS NULL`,
/// which costs every matching stream per statement instead of one seek per id.
pub(super) const STREAMS_BY_ID: &str = "streams INDEXED BY sqlite_autoindex_streams_1";
/// `streams` read through the partial index of running, unassigned streams, oldest first
/// (without statistics SQLite prefers the `state` index and sorts every running stream).
pub(super) const STREAMS_UNASSIGNED: &str = "streams INDEXED BY streams_unassigned_idx";

/// How long a writer waits for the one write lock before SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating if missing) the database file and its folders, and migrates it.
pub(super) async fn connect(
    url: &str,
    target: &str,
    options: ConnectOptions,
) -> Result<SqlitePool, DbError> {
    let unreachable = |source| DbError::Unreachable {
        backend: "sqlite",
        target: target.to_owned(),
        source,
    };
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let mut connect_options = SqliteConnectOptions::from_str(url)
        .map_err(|source| DbError::InvalidUrl {
            target: target.to_owned(),
            source,
        })?
        .create_if_missing(true)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    if !in_memory {
        // WAL lets the API read while the event path writes.
        connect_options = connect_options.journal_mode(SqliteJournalMode::Wal);
        if let Some(folder) = connect_options.get_filename().parent() {
            if !folder.as_os_str().is_empty() {
                tokio::fs::create_dir_all(folder)
                    .await
                    .map_err(|e| unreachable(sqlx::Error::Io(e)))?;
            }
        }
    }
    let mut pool_options = SqlitePoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout);
    if in_memory {
        // An in-memory database lives only as long as one of its connections does.
        pool_options = pool_options
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    let pool = pool_options
        .connect_with(connect_options)
        .await
        .map_err(unreachable)?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    if !in_memory {
        spawn_checkpointer(pool.clone());
    }
    Ok(pool)
}

/// How often the WAL is checkpointed and truncated.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(15);
/// How long a checkpoint waits for readers of older snapshots (writers wait meanwhile).
const CHECKPOINT_WAIT_MS: u64 = 250;

/// Keeps the write-ahead log short. SQLite's own checkpoints (every 1,000 pages written) are
/// passive: while some reader is always active, as under the API's polling, the event path's
/// reads and the reconciler, none of them can start the log over, and it grows without bound
/// (6.6 GB beside a 750 MB database in the million-stream run). Every page read then searches
/// a wal-index that grows with it, so every query slows down: counts took 2-3 s and one
/// worker's streams 18 s. A `TRUNCATE` checkpoint waits (briefly) for readers of older
/// snapshots, copies everything back and empties the log. When readers hold it up past
/// [`CHECKPOINT_WAIT_MS`], it gives up until the next round.
fn spawn_checkpointer(pool: SqlitePool) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if pool.is_closed() {
                return;
            }
            let Ok(mut conn) = pool.acquire().await else {
                continue;
            };
            let wait = format!("PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}");
            let restore = format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis());
            if sqlx::query(&wait).execute(&mut *conn).await.is_err() {
                continue;
            }
            let done: Result<(i64, i64, i64), _> =
                sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&mut *conn)
                    .await;
            match done {
                Ok((busy, log_frames, checkpointed)) => {
                    tracing::debug!(busy, log_frames, checkpointed, "WAL checkpoint");
                }
                Err(err) => tracing::debug!("WAL checkpoint: {err}"),
            }
            if sqlx::query(&restore).execute(&mut *conn).await.is_err() {
                // A connection left with the short timeout would fail writes early: drop it.
                let _ = conn.detach();
            }
        }
    });
}
