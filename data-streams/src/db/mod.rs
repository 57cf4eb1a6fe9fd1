//! The supervisor's persistence: streams, workers, result references, measurements and failed
//! runs, on SQLite (the embedded default) or PostgreSQL, behind one [`Db`].
//!
//! Where the SQL text is the same for both backends (most of it: sqlx's SQLite driver accepts
//! `$1`-style parameters), it is written once and [`on_pool!`]/[`in_transaction!`] expand the
//! same sqlx call for each pool type. What differs between the dialects lives in
//! [`sqlite`]/[`postgres`] as a [`Dialect`] and the migrations, side by side.
//!
//! Timestamps are epoch milliseconds UTC (`BIGINT`) everywhere; ids are `Uuid`s, which sort
//! the same way on both backends, so UUIDv7 result ids sort in time order.

use std::time::Duration;

use sqlx::{PgPool, SqlitePool};

mod error;
mod events;
mod model;
mod postgres;
mod reads;
mod sqlite;
mod streams;
mod workers;

pub use error::{redact_url, DbError};
pub use model::{
    parse_timestamp_ms, FailureRow, MeasurementRow, NewStream, PersistStats, ReconciledRef,
    ResultRow, StreamPatch, StreamRow, StreamState, UnknownStreamState, WorkerRow,
};

/// Expands `$body` once per backend with `$pool` bound to the concrete pool and `$DB` naming
/// the sqlx database type, so one SQL text serves both without sqlx's `Any` driver.
macro_rules! on_pool {
    ($db:expr, |$pool:ident, $DB:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => {
                #[allow(dead_code)]
                type $DB = ::sqlx::Sqlite;
                $body
            }
            $crate::db::Db::Postgres($pool) => {
                #[allow(dead_code)]
                type $DB = ::sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// Like [`on_pool!`], inside one write transaction begun the backend's way (see
/// [`Dialect::begin_write`]) and committed after `$body`. A `?` inside `$body` returns early and
/// the dropped transaction rolls back.
macro_rules! in_transaction {
    ($db:expr, |$tx:ident, $DB:ident, $dialect:ident| $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite(pool) => {
                #[allow(dead_code)]
                type $DB = ::sqlx::Sqlite;
                let $dialect: &$crate::db::Dialect = &$crate::db::sqlite::DIALECT;
                let mut $tx = pool.begin_with($dialect.begin_write).await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::db::Db::Postgres(pool) => {
                #[allow(dead_code)]
                type $DB = ::sqlx::Postgres;
                let $dialect: &$crate::db::Dialect = &$crate::db::postgres::DIALECT;
                let mut $tx = pool.begin_with($dialect.begin_write).await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}
pub(crate) use in_transaction;

/// Rows per multi-row INSERT. The widest insert (measurements, 20 columns) then binds 10 000
/// values: under SQLite's 32 766 and PostgreSQL's 65 535 parameter limits.
pub(crate) const CHUNK_ROWS: usize = 500;

/// The SQL that differs between the backends, kept side by side in `sqlite.rs`/`postgres.rs`.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// Opens a transaction that will write. SQLite needs `BEGIN IMMEDIATE`: a deferred
    /// transaction that reads and then writes can fail with SQLITE_BUSY without waiting when
    /// another writer got there first, which the busy timeout does not cover.
    pub(crate) begin_write: &'static str,
    /// Appended to `SELECT id FROM streams WHERE id IN (...)` inside the event transaction:
    /// holds off a concurrent delete until commit, so the references inserted next cannot
    /// violate their foreign key. Empty on SQLite, where the write transaction already
    /// excludes every other writer.
    pub(crate) lock_streams: &'static str,
}

/// Pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// How long to wait for a connection, the first one included: a server that is down fails
    /// [`Db::connect_with`] after at most this long.
    pub acquire_timeout: Duration,
    /// Most open connections.
    pub max_connections: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            acquire_timeout: Duration::from_secs(5),
            max_connections: 10,
        }
    }
}

/// A connection pool to the supervisor's database, either backend. Cheap to clone.
#[derive(Clone)]
pub enum Db {
    /// The embedded default: a file, WAL, one writer at a time.
    Sqlite(SqlitePool),
    /// Production.
    Postgres(PgPool),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pools' own Debug prints connect options; keep it to the backend.
        write!(f, "Db({})", self.backend())
    }
}

impl Db {
    /// [`Db::connect_with`] with the default [`ConnectOptions`].
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        Db::connect_with(url, ConnectOptions::default()).await
    }

    /// Opens `sqlite://path` (creating the file and its folders; WAL, `synchronous=NORMAL`,
    /// busy timeout 5 s, foreign keys on) or `postgres://…`/`postgresql://…`, and applies the
    /// embedded migrations. A server that is down gives [`DbError::Unreachable`] within
    /// `options.acquire_timeout`.
    #[tracing::instrument(level = "debug", skip_all, fields(target = %redact_url(url)))]
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Db, DbError> {
        let target = redact_url(url);
        let db = if url.starts_with("sqlite:") {
            Db::Sqlite(sqlite::connect(url, &target, options).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Db::Postgres(postgres::connect(url, &target, options).await?)
        } else {
            return Err(DbError::UnsupportedUrl { target });
        };
        tracing::info!(backend = db.backend(), %target, "database ready");
        Ok(db)
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// One round trip, for readiness checks.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn ping(&self) -> Result<(), DbError> {
        on_pool!(self, |pool, DB| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes every connection, waiting for those in use to come back.
    pub async fn close(&self) {
        on_pool!(self, |pool, DB| pool.close().await)
    }
}

/// Now, in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
