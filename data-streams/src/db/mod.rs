//! The supervisor's persistence: streams, workers, result references, measurements and failed
//! runs, on SQLite (the embedded default) or PostgreSQL, behind one [`Db`].
//!
//! Where the SQL text is the same for both backends (most of it: sqlx's SQLite driver accepts
//! `$1`-style parameters), it is written once and [`dispatch!`] runs the same sqlx call on
//! whichever pool (or [`Tx`]) is behind the enum. What differs between the dialects lives in
//! `sqlite.rs`/`postgres.rs` and in the migrations, side by side.
//!
//! Timestamps are epoch milliseconds UTC (`BIGINT`) everywhere; ids are `Uuid`s, which sort
//! the same way on both backends, so UUIDv7 result ids sort in time order.

use std::time::Duration;

use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

mod bulk;
mod coverage;
mod error;
mod events;
mod jobs;
mod model;
mod postgres;
mod push;
mod reads;
mod reports;
mod row;
mod runs;
mod sqlite;
mod streams;
mod tables;
mod watermarks;
mod workers;

pub use bulk::{BulkInsert, Changed, NewStream, Selection, StreamFilter};
pub use coverage::FailureMark;
pub use error::{redact_url, DbError};
pub use events::failure_of;
pub use jobs::{JobRow, JobScope, JobState, PageProgress, PageWritten, ParsedReading, RefToParse};
pub use model::{
    FailureRow, MeasurementRow, PersistStats, Persisted, ReconciledRef, ResultRow, WorkerRow,
};
pub use push::{IngestRequest, PushCommit, PushObject, PushProgress, TokenRow};
pub use reports::{BucketFigures, GroupBy, GroupFigures, GroupKey, ReportFilter};
pub use runs::{JobStepRow, RunRow, RUN_STATUSES};
pub use tables::{CellValue, DayWatermark, TableFile, TableRow, DAY_MS};
pub use watermarks::{ReconcileTarget, Watermarks};

/// Runs `$body` on whichever backend `$value` (a [`Db`] or a [`Tx`], named by `$enum`) holds,
/// with `$inner` bound to the pool or transaction of that backend and, in the second form,
/// `$DB` naming its sqlx database type: one SQL text serves both without sqlx's `Any` driver.
macro_rules! dispatch {
    ($enum:ident, $value:expr, |$inner:ident| $body:expr) => {
        match $value {
            $crate::db::$enum::Sqlite($inner) => $body,
            $crate::db::$enum::Postgres($inner) => $body,
        }
    };
    ($enum:ident, $value:expr, |$inner:ident, $DB:ident| $body:expr) => {
        match $value {
            $crate::db::$enum::Sqlite($inner) => {
                type $DB = ::sqlx::Sqlite;
                $body
            }
            $crate::db::$enum::Postgres($inner) => {
                type $DB = ::sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use dispatch;

/// A leader-only write of one statement: `$body` runs with `$conn` on the pool, or, inside
/// leader-only work on PostgreSQL ([`Db::fenced`]), in a transaction that opens with the
/// fence ([`Db::begin_write`]). A refused fence is [`DbError::Fenced`].
macro_rules! leader_write {
    ($db:expr, |$conn:ident| $body:expr) => {{
        let db: &$crate::db::Db = $db;
        if db.fenced() {
            let mut tx = db.begin_write().await?;
            let out = $crate::db::dispatch!(Tx, &mut tx, |t| {
                let $conn = &mut **t;
                $body
            });
            tx.commit().await?;
            out
        } else {
            $crate::db::dispatch!(Db, db, |$conn| $body)
        }
    }};
    ($db:expr, |$conn:ident, $DB:ident| $body:expr) => {{
        let db: &$crate::db::Db = $db;
        if db.fenced() {
            let mut tx = db.begin_write().await?;
            let out = $crate::db::dispatch!(Tx, &mut tx, |t, $DB| {
                let $conn = &mut **t;
                $body
            });
            tx.commit().await?;
            out
        } else {
            $crate::db::dispatch!(Db, db, |$conn, $DB| $body)
        }
    }};
}
pub(crate) use leader_write;

/// Rows per multi-row INSERT. The widest insert (measurements, 20 columns) then binds 10 000
/// values: under SQLite's 32 766 and PostgreSQL's 65 535 parameter limits.
pub(crate) const CHUNK_ROWS: usize = 500;

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

/// A connection pool to the supervisor's database, either backend. Cheap to clone. (`Debug`
/// shows sqlx's pool sizes and timeouts, never the connect options or a password.)
#[derive(Debug, Clone)]
pub enum Db {
    /// The embedded default: a file, WAL, one writer at a time.
    Sqlite(SqlitePool),
    /// Production.
    Postgres(PgPool),
}

/// A write transaction on either backend; dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
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
        dispatch!(Db, self, |pool| {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes every connection, waiting for those in use to come back.
    pub async fn close(&self) {
        dispatch!(Db, self, |pool| pool.close().await)
    }

    /// Opens a transaction that will write. SQLite needs `BEGIN IMMEDIATE`: a deferred
    /// transaction that reads and then writes can fail with SQLITE_BUSY without waiting when
    /// another writer got there first, which the busy timeout does not cover.
    ///
    /// Inside leader-only work ([`crate::cluster::in_term`]) on PostgreSQL the transaction
    /// opens with the fence: the lease row is held `FOR SHARE` until it ends, and a term that
    /// is no longer the lease's gets [`DbError::Fenced`] before anything is written.
    pub(crate) async fn begin_write(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Db::Sqlite(pool) => Tx::Sqlite(pool.begin_with(sqlite::BEGIN_WRITE).await?),
            Db::Postgres(pool) => {
                let mut tx = pool.begin_with(postgres::BEGIN_WRITE).await?;
                if let Some(term) = crate::cluster::current_term() {
                    crate::cluster::fence(&mut tx, &term)
                        .await
                        .map_err(|err| match err {
                            crate::cluster::FenceError::Db(source) => DbError::from(source),
                            refused => DbError::Fenced(refused),
                        })?;
                }
                Tx::Postgres(tx)
            }
        })
    }

    /// Whether leader-only writes made now must go through a fenced transaction (PostgreSQL,
    /// inside [`crate::cluster::in_term`]); single-statement writes then use [`leader_write!`].
    pub(crate) fn fenced(&self) -> bool {
        matches!(self, Db::Postgres(_)) && crate::cluster::current_term().is_some()
    }
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), DbError> {
        dispatch!(Tx, self, |tx| tx.commit().await?);
        Ok(())
    }

    /// Appended to `SELECT … FROM streams WHERE id IN (…)` in a write transaction: holds off
    /// a concurrent delete of those streams until commit, where the backend needs that.
    pub(crate) fn lock_streams_clause(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => sqlite::LOCK_STREAMS,
            Tx::Postgres(_) => postgres::LOCK_STREAMS,
        }
    }
}
