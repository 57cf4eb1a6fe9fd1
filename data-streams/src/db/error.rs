//! The persistence layer's error type, and the line between "the database is down" and "a bug".

use sqlx::migrate::MigrateError;

/// Everything the persistence layer can fail with. Messages never carry a secret key or a
/// database password: targets are printed through [`redact_url`].
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The first connection could not be made (server down, file not creatable, login refused).
    #[error("cannot connect to the {backend} database at {target}")]
    Unreachable {
        /// `sqlite` or `postgres`.
        backend: &'static str,
        /// The database URL without its password.
        target: String,
        #[source]
        source: sqlx::Error,
    },
    /// The URL names no backend this build supports, or does not parse.
    #[error("unsupported database URL {target}: expected sqlite://, postgres:// or postgresql://")]
    UnsupportedUrl {
        /// The database URL without its password.
        target: String,
    },
    /// The URL has a supported scheme but its options do not parse.
    #[error("invalid database URL {target}")]
    InvalidUrl {
        /// The database URL without its password.
        target: String,
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("database migration failed")]
    Migrate(#[source] MigrateError),
    /// A statement failed.
    #[error("database query failed")]
    Query(#[source] sqlx::Error),
    /// A leader-only write was refused by the fence: this process no longer holds the leader
    /// lease under the term the write was made in. Nothing of the transaction was committed.
    #[error(transparent)]
    Fenced(crate::cluster::FenceError),
    /// A stored row does not decode (a state text, a JSON column): written by something else, or
    /// by an older bug. Not transient.
    #[error("corrupt row in the database: {what}")]
    Corrupt {
        /// Which row and column, and what was wrong with it.
        what: String,
    },
}

/// A stored value that does not decode into the model (a state text, a JSON column), raised
/// from a `FromRow` and turned into [`DbError::Corrupt`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CorruptRow(pub(crate) String);

impl CorruptRow {
    /// The error a `FromRow` returns for it.
    pub(crate) fn decode(what: String) -> sqlx::Error {
        sqlx::Error::Decode(Box::new(CorruptRow(what)))
    }
}

impl From<sqlx::Error> for DbError {
    fn from(source: sqlx::Error) -> Self {
        if let sqlx::Error::Decode(cause) = &source {
            if let Some(CorruptRow(what)) = cause.downcast_ref::<CorruptRow>() {
                return DbError::Corrupt { what: what.clone() };
            }
        }
        DbError::Query(source)
    }
}

impl From<MigrateError> for DbError {
    fn from(source: MigrateError) -> Self {
        DbError::Migrate(source)
    }
}

impl DbError {
    /// True when retrying later may succeed: the database is unreachable, restarting, busy or
    /// out of connections, or a transaction lost a serialization race. False for bugs and bad
    /// data, which a retry would only repeat.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Unreachable { source, .. } => {
                // A refused login or a missing database needs a person, not a retry.
                !matches!(source, sqlx::Error::Database(_)) || sqlx_is_transient(source)
            }
            DbError::Query(source) => sqlx_is_transient(source),
            // Another replica leads now: the same request to it (or later) succeeds.
            DbError::Fenced(_) => true,
            DbError::Migrate(MigrateError::Execute(source))
            | DbError::Migrate(MigrateError::ExecuteMigration(source, _)) => {
                sqlx_is_transient(source)
            }
            DbError::Migrate(_)
            | DbError::UnsupportedUrl { .. }
            | DbError::InvalidUrl { .. }
            | DbError::Corrupt { .. } => false,
        }
    }
}

fn sqlx_is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                let code = pg.code();
                // 08: connection exception; 53: insufficient resources (too many connections,
                // disk full); 57P0x: shutting down or starting up; 40001/40P01: serialization
                // failure and deadlock, which the SQL standard says to retry.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57P0")
                    || code == "40001"
                    || code == "40P01"
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Extended result codes keep the primary code in the low byte:
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6) mean "another writer, try again".
                db.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// The URL with any password removed, for messages and logs: `postgres://user:pw@host/db`
/// becomes `postgres://user@host/db`, and a `password=` query parameter becomes `password=***`.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                    format!("{user}@{host}")
                }
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&redacted.join("&"));
    }
    out
}
