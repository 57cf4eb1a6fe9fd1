//! A fresh database per test, on either backend: a SQLite file in a temporary folder, or a new
//! PostgreSQL database on the server from `TEST_POSTGRES_URL` (else a postgres `DATABASE_URL`,
//! else `postgres://postgres@127.0.0.1:5432/postgres`), dropped `WITH (FORCE)` when its guard
//! goes, also when the test panics. An unreachable server fails the test; it never skips it.
//!
//! Everything here is blocking (each PostgreSQL call runs on a thread of its own with its own
//! runtime), so it can be used from synchronous set-up code, from async tests and from `Drop`.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use data_streams::db::redact_url;
use sqlx::{Connection, Executor, PgConnection};

/// The PostgreSQL server the tests create their databases on: `TEST_POSTGRES_URL`, else a
/// postgres `DATABASE_URL`, else the local default.
pub fn postgres_server_url() -> String {
    let set = |name| {
        std::env::var(name)
            .ok()
            .filter(|url: &String| !url.is_empty())
    };
    set("TEST_POSTGRES_URL")
        .or_else(|| set("DATABASE_URL").filter(|url| url.starts_with("postgres")))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `server` with its `host:port` replaced by `authority` and its database by `database`, the
/// user, password and query string kept.
pub fn postgres_url_with(server: &str, authority: Option<&str>, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let (scheme, rest) = base
        .split_once("://")
        .expect("a PostgreSQL URL has a scheme");
    let server_authority = rest.split('/').next().unwrap_or(rest);
    let authority = match (authority, server_authority.rsplit_once('@')) {
        (Some(host_port), Some((user, _))) => format!("{user}@{host_port}"),
        (Some(host_port), None) => host_port.to_owned(),
        (None, _) => server_authority.to_owned(),
    };
    let mut url = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// The `host:port` of a PostgreSQL URL (5432 when it names no port).
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    }
}

/// Run `future` to completion on a new thread with a current-thread runtime of its own, so
/// blocking callers (and `Drop`) can use async clients whatever runtime they are on.
fn block_on_own_thread<T, F>(future: F) -> T
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the database set-up")
            .block_on(future)
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

async fn admin_connection(server: &str) -> PgConnection {
    match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(server)).await {
        Ok(Ok(admin)) => admin,
        Ok(Err(e)) => panic!(
            "PostgreSQL at {} is not reachable ({e}); run scripts/test.sh, which finds or starts \
             PostgreSQL (or set TEST_POSTGRES_URL)",
            redact_url(server)
        ),
        Err(_) => panic!(
            "PostgreSQL at {} did not answer within 10 s; run scripts/test.sh, which finds or \
             starts PostgreSQL (or set TEST_POSTGRES_URL)",
            redact_url(server)
        ),
    }
}

/// A database `<prefix>_<uuid>` that exists while this guard lives.
pub struct TestDatabase {
    /// Where the database is: the server's URL with the database name replaced.
    pub url: String,
    /// The database's name.
    pub name: String,
    server: String,
}

impl TestDatabase {
    /// Create a fresh, empty database named `<prefix>_<uuid>`.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or refuses to create it.
    pub fn create(prefix: &str) -> TestDatabase {
        let server = postgres_server_url();
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let (server_for_task, name_for_task) = (server.clone(), name.clone());
        block_on_own_thread(async move {
            let mut admin = admin_connection(&server_for_task).await;
            admin
                .execute(format!("CREATE DATABASE {name_for_task}").as_str())
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "CREATE DATABASE {name_for_task} on {}: {e}",
                        redact_url(&server_for_task)
                    )
                });
            let _ = admin.close().await;
        });
        TestDatabase {
            url: postgres_url_with(&server, None, &name),
            name,
            server,
        }
    }

    /// The database's URL with `host:port` replaced by `authority` (to go through a proxy).
    pub fn url_via(&self, authority: &str) -> String {
        postgres_url_with(&self.server, Some(authority), &self.name)
    }

    /// The `host:port` of the server.
    pub fn server_host_port(&self) -> String {
        host_port(&self.server)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // FORCE ends the connections of processes that are still running (or were killed and
        // left their sessions to time out).
        let dropped = block_on_own_thread(async move {
            let mut admin = PgConnection::connect(&server).await?;
            admin
                .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                .await?;
            admin.close().await
        });
        if let Err(e) = dropped {
            // A panic while already unwinding would abort and hide the test's own failure.
            if std::thread::panicking() {
                eprintln!("DROP DATABASE {}: {e}", self.name);
            } else {
                panic!("DROP DATABASE {}: {e}", self.name);
            }
        }
    }
}

/// The URL of a SQLite database file in `dir` (created by the first connection).
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("ds.db").display())
}

/// The two database backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs a case that sets up its own backend (for [`crate::on_both_backends!`]).
pub async fn with_backend<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Backend) -> Fut,
    Fut: Future<Output = ()>,
{
    case(backend).await;
}

/// A fresh, empty database on either backend, gone with this guard: a SQLite file in a temporary
/// folder of its own, or a PostgreSQL database `<prefix>_<uuid>` ([`TestDatabase`]).
pub struct FreshDatabase {
    pub url: String,
    pub backend: Backend,
    /// The PostgreSQL database, dropped with this.
    postgres: Option<TestDatabase>,
    /// The folder of the SQLite file, removed with this.
    folder: Option<tempfile::TempDir>,
}

impl FreshDatabase {
    pub fn create(backend: Backend, prefix: &str) -> FreshDatabase {
        match backend {
            Backend::Sqlite => {
                let folder = tempfile::tempdir().expect("a temporary folder for the SQLite file");
                FreshDatabase {
                    url: sqlite_url(folder.path()),
                    backend,
                    postgres: None,
                    folder: Some(folder),
                }
            }
            Backend::Postgres => {
                let database = TestDatabase::create(prefix);
                FreshDatabase {
                    url: database.url.clone(),
                    backend,
                    postgres: Some(database),
                    folder: None,
                }
            }
        }
    }

    /// Run `case` with the URL of a fresh database; it is removed afterwards, also when the case
    /// panics.
    pub async fn with_url<F, Fut>(backend: Backend, prefix: &str, case: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let database = FreshDatabase::create(backend, prefix);
        case(database.url.clone()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten_keeping_user_and_query() {
        let server = "postgres://postgres:pw@127.0.0.1:5432/postgres?sslmode=disable";
        assert_eq!(
            postgres_url_with(server, None, "ds_x"),
            "postgres://postgres:pw@127.0.0.1:5432/ds_x?sslmode=disable"
        );
        assert_eq!(
            postgres_url_with(server, Some("127.0.0.1:6000"), "ds_x"),
            "postgres://postgres:pw@127.0.0.1:6000/ds_x?sslmode=disable"
        );
        assert_eq!(host_port(server), "127.0.0.1:5432");
        assert_eq!(host_port("postgres://u@db/x"), "db:5432");
    }
}
