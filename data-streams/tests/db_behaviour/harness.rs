//! How a case runs: on a fresh database of either backend (`support::FreshDatabase`: a SQLite
//! file in a temporary folder, or a new PostgreSQL database `ds_test_<uuid>` that is dropped
//! afterwards, also when the case panics).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use data_streams::db::{redact_url, Db};
use futures::FutureExt;
use sqlx::{Connection, PgConnection};

use crate::support::{postgres_server_url, Backend, FreshDatabase};

/// The name prefix of the PostgreSQL databases of these cases.
const PREFIX: &str = "ds_test";

/// Runs `case` with the URL of a fresh, empty database on `backend`.
pub async fn with_url<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    FreshDatabase::with_url(backend, PREFIX, case).await;
}

/// Runs `case` on a fresh database on `backend`, connected and migrated; closes the pool after.
pub async fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    with_url(backend, |url| async move {
        let db = Db::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e:?}", redact_url(&url)));
        case(db.clone()).await;
        db.close().await;
    })
    .await;
}

#[tokio::test]
async fn postgres_database_is_dropped_when_the_case_panics() {
    let url_seen = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let recorder = url_seen.clone();
    let outcome = AssertUnwindSafe(with_url(Backend::Postgres, |url| async move {
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
