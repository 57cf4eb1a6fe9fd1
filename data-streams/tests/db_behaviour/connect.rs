//! Connecting: URLs, unreachable servers, folders that do not exist yet.

use std::time::{Duration, Instant};

use data_streams::db::{redact_url, ConnectOptions, Db, DbError};

use crate::support::closed_port;

#[tokio::test]
async fn postgres_unreachable_server_fails_fast() {
    let port = closed_port().port();
    let url = format!("postgres://ds_user:hunter2@127.0.0.1:{port}/ds?sslmode=disable");
    let started = Instant::now();
    let error = Db::connect(&url).await.expect_err("nothing listens there");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");

    match &error {
        DbError::Unreachable {
            backend, target, ..
        } => {
            assert_eq!(*backend, "postgres");
            assert_eq!(
                target,
                &format!("postgres://ds_user@127.0.0.1:{port}/ds?sslmode=disable")
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(error.is_transient());
    let message = error.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    let cause = std::error::Error::source(&error).expect("the cause is kept");
    assert!(
        cause.to_string().to_lowercase().contains("refused"),
        "{cause}"
    );
    for printed in [message, format!("{error:?}"), cause.to_string()] {
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}

#[tokio::test]
async fn postgres_silent_server_fails_within_the_acquire_timeout() {
    // A listener that accepts and never answers: the connect must give up on its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let options = ConnectOptions {
        acquire_timeout: Duration::from_millis(300),
        ..ConnectOptions::default()
    };
    let started = Instant::now();
    let error = Db::connect_with(&format!("postgres://u:pw@127.0.0.1:{port}/db"), options)
        .await
        .expect_err("the server never answers");
    let elapsed = started.elapsed();
    holder.abort();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(
        matches!(
            error,
            DbError::Unreachable {
                backend: "postgres",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient());
    assert!(!format!("{error:?}").contains(":pw@"));
}

#[tokio::test]
async fn sqlite_creates_missing_nested_folders() {
    let folder = tempfile::tempdir().expect("tempdir");
    let file = folder.path().join("a").join("b").join("c").join("ds.db");
    let db = Db::connect(&format!("sqlite://{}", file.display()))
        .await
        .expect("connect creates the folders");
    assert!(file.is_file(), "{} exists", file.display());
    assert_eq!(db.backend(), "sqlite");
    db.ping().await.expect("ping");
    let Db::Sqlite(pool) = &db else {
        panic!("a sqlite URL gives a SQLite pool")
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .expect("foreign_keys");
    assert_eq!(foreign_keys, 1);
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(pool)
        .await
        .expect("synchronous");
    assert_eq!(synchronous, 1, "NORMAL");
    db.close().await;
}

#[tokio::test]
async fn sqlite_path_under_a_file_is_unreachable() {
    let folder = tempfile::tempdir().expect("tempdir");
    let blocker = folder.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").expect("write");
    let url = format!("sqlite://{}", blocker.join("ds.db").display());
    let error = Db::connect(&url)
        .await
        .expect_err("cannot create a file under a file");
    assert!(
        matches!(
            error,
            DbError::Unreachable {
                backend: "sqlite",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn unsupported_urls_are_rejected_without_their_password() {
    let error = Db::connect("mysql://root:hunter2@localhost/ds")
        .await
        .expect_err("no MySQL backend");
    assert!(matches!(error, DbError::UnsupportedUrl { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(
        error.to_string().contains("mysql://root@localhost/ds"),
        "{error}"
    );
}

#[test]
fn redact_url_removes_passwords_only() {
    assert_eq!(
        redact_url("postgres://user:secret@db.example:5432/ds"),
        "postgres://user@db.example:5432/ds"
    );
    assert_eq!(
        redact_url("postgresql://user@db/ds?password=secret&sslmode=require"),
        "postgresql://user@db/ds?password=***&sslmode=require"
    );
    assert_eq!(
        redact_url("postgres://u:p@ss@host/db"),
        "postgres://u@host/db",
        "the last @ ends the user info"
    );
    assert_eq!(
        redact_url("sqlite://data/data-streams.db"),
        "sqlite://data/data-streams.db"
    );
    assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_is_shared_by_the_pool() {
    let db = Db::connect("sqlite::memory:")
        .await
        .expect("in-memory database");
    let created = crate::fixtures::stream(&db, crate::fixtures::T0).await;
    // Several connections at once must all see the one database.
    let reads = (0..4).map(|_| {
        let db = db.clone();
        tokio::spawn(async move { db.get_stream(created.id).await })
    });
    for read in reads {
        let found = read.await.expect("task").expect("get");
        assert_eq!(found.map(|s| s.id), Some(created.id));
    }
    db.close().await;
}
