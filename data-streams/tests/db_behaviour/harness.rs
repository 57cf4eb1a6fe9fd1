//! Fresh databases for each test: a SQLite file in a temporary folder, or a new PostgreSQL
//! database `ds_test_<uuid>` that is dropped afterwards, also when the case panics.

use std::future::Future;
use std::panic::{resume_unwind, AssertUnwindSafe};
use std::time::Duration;

use data_streams::db::{redact_url, Db};
use futures::FutureExt;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// The PostgreSQL server the tests create their databases on: `TEST_POSTGRES_URL`, else a
/// postgres `DATABASE_URL`, else the local default.
pub fn postgres_server_url() -> String {
    if let Some(url) = std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        return url;
    }
    if let Some(url) = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| url.starts_with("postgres"))
    {
        return url;
    }
    "postgres://postgres@127.0.0.1:5432/postgres".to_owned()
}

/// `server` with its database path replaced by `database`, query string kept.
fn with_database(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    let (scheme, rest) = base
        .split_once("://")
        .expect("a PostgreSQL URL has a scheme");
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut url = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// Runs `case` with the URL of a fresh SQLite database file, removed afterwards.
pub async fn with_sqlite_url<F, Fut>(case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let folder = tempfile::tempdir().expect("a temporary folder for the SQLite file");
    let url = format!(
        "sqlite://{}",
        folder.path().join("data-streams.db").display()
    );
    let outcome = AssertUnwindSafe(case(url)).catch_unwind().await;
    drop(folder);
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
}

/// Runs `case` with the URL of a fresh PostgreSQL database, dropped afterwards (also when the
/// case panics). Fails, never skips, when the server cannot be reached.
pub async fn with_postgres_url<F, Fut>(case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let server = postgres_server_url();
    let mut admin =
        match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&server)).await {
            Ok(Ok(admin)) => admin,
            Ok(Err(e)) => panic!(
                "PostgreSQL at {} is not reachable ({e}); run scripts/test.sh, which finds or \
             starts PostgreSQL (or set TEST_POSTGRES_URL)",
                redact_url(&server)
            ),
            Err(_) => panic!(
                "PostgreSQL at {} did not answer within 10 s; run scripts/test.sh, which finds or \
             starts PostgreSQL (or set TEST_POSTGRES_URL)",
                redact_url(&server)
            ),
        };
    let name = format!("ds_test_{}", Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {}: {e}", redact_url(&server)));

    let outcome = AssertUnwindSafe(case(with_database(&server, &name)))
        .catch_unwind()
        .await;

    // FORCE ends the connections a panicking case left behind in its pool.
    let dropped = admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await;
    let _ = admin.close().await;
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
    if let Err(e) = dropped {
        panic!("DROP DATABASE {name}: {e}");
    }
}

/// Connects to `url` (migrating it), runs `case`, closes the pool.
async fn with_db<F, Fut>(url: String, case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    let db = Db::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e:?}", redact_url(&url)));
    case(db.clone()).await;
    db.close().await;
}

/// Runs a behaviour case against a fresh SQLite database.
pub async fn run_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    with_sqlite_url(|url| with_db(url, case)).await;
}

/// Runs a behaviour case against a fresh PostgreSQL database.
pub async fn run_postgres<F, Fut>(case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    with_postgres_url(|url| with_db(url, case)).await;
}

#[tokio::test]
async fn postgres_database_is_dropped_when_the_case_panics() {
    let url_seen = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let recorder = url_seen.clone();
    let outcome = AssertUnwindSafe(with_postgres_url(|url| async move {
        *recorder.lock().expect("not poisoned") = Some(url.clone());
        // Hold open connections while panicking: the drop must force them out.
        let _db = Db::connect(&url).await.expect("connect");
        panic!("a failing case");
    }))
    .catch_unwind()
    .await;
    assert!(outcome.is_err(), "the case's panic is passed on");

    let url = url_seen
        .lock()
        .expect("not poisoned")
        .clone()
        .expect("the case ran");
    let name = url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .expect("a database name")
        .to_owned();
    assert!(name.starts_with("ds_test_"), "{name}");
    let mut admin = PgConnection::connect(&postgres_server_url())
        .await
        .expect("admin connection");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .expect("count");
    assert_eq!(left, 0, "{name} was dropped");
}
