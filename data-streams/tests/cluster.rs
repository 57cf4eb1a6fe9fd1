//! Several supervisors on one database (RFC §4, "Replicas"), against a real PostgreSQL: two
//! electors in one process elect exactly one leader, hand over at once on a resignation and
//! after the TTL when the leader stops renewing; the fence refuses a deposed leader's writes
//! and holds a takeover off until a fenced write ends; a renewal never extends another term.
//! `GET /cluster` on both backends, and SQLite refusing a second supervisor on the same file,
//! in-process and as real processes.
//!
//! Times are bounded generously (a loaded 2-core machine): only "at most" bounds that are
//! orders of magnitude above what is measured, and "not before" checks that load can only make
//! easier to pass.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use data_streams::cluster::{
    self, fence, lease, Elector, ElectorSettings, FenceError, Identity, Leadership, LeaseTiming,
    Term,
};
use data_streams::db::Db;
use data_streams::Application;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use support::{
    bin, command, folder_store_url, init_tracing, spawn_app_on, sqlite_url, supervisor_env,
    Backend, Supervisor, TestDatabase,
};

/// A fresh, migrated PostgreSQL database and the supervisor's pool on it.
async fn migrated(prefix: &str) -> (TestDatabase, PgPool) {
    init_tracing();
    let database = TestDatabase::create(prefix);
    let Db::Postgres(pool) = Db::connect(&database.url)
        .await
        .expect("connect and migrate")
    else {
        unreachable!("a postgres:// URL opens PostgreSQL")
    };
    (database, pool)
}

/// What `GET /cluster` answers, read as another replica would.
async fn cluster_view(pool: &PgPool, settings: &ElectorSettings) -> cluster::ClusterView {
    cluster::Cluster::new(
        identity("api"),
        &Db::Postgres(pool.clone()),
        settings.timing,
    )
    .view()
    .await
    .unwrap()
}

/// A migrated database with a table for the fenced writes of a test to land in.
async fn with_probe(prefix: &str) -> (TestDatabase, PgPool) {
    let (database, pool) = migrated(prefix).await;
    sqlx::query("CREATE TABLE fenced_probe (what TEXT PRIMARY KEY, epoch BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    (database, pool)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn identity(name: &str) -> Identity {
    Identity::new(format!("{name}:8080"), format!("{name}:7070"))
}

fn settings(renew: u64, ttl: u64, margin: u64, poll: u64, db_timeout: u64) -> ElectorSettings {
    ElectorSettings {
        timing: LeaseTiming::new(ms(renew), ms(ttl), ms(margin)).expect("a valid timing"),
        db_timeout: ms(db_timeout),
        poll_every: ms(poll),
    }
}

/// Waits up to `within` for `leadership` to name a term, and returns it.
async fn leads(leadership: &mut Leadership, within: Duration, who: &str) -> Term {
    let wait = async {
        loop {
            if let Some(term) = leadership.term() {
                return term;
            }
            if leadership.changed().await.is_err() {
                panic!("{who}'s elector ended");
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .unwrap_or_else(|_| panic!("{who} did not lead within {within:?}"))
}

/// The lease row as it stands: `(holder, epoch, expires_at)`.
async fn lease_row(pool: &PgPool) -> (uuid::Uuid, i64, DateTime<Utc>) {
    sqlx::query_as("SELECT holder, epoch, expires_at FROM leader_lease")
        .fetch_one(pool)
        .await
        .expect("the lease row")
}

/// A leader-only write as the supervisor will make them: fence first, then write, in one
/// transaction.
async fn leader_write(pool: &PgPool, term: &Term, what: &str) -> Result<(), FenceError> {
    let mut tx = pool.begin().await?;
    fence(&mut tx, term).await?;
    sqlx::query("INSERT INTO fenced_probe (what, epoch) VALUES ($1, $2)")
        .bind(what)
        .bind(term.epoch)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn probe_rows(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT what, epoch FROM fenced_probe ORDER BY what")
        .fetch_all(pool)
        .await
        .expect("the probe rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_electors_leads_and_a_resignation_hands_over_at_once() {
    let (database, pool) = migrated("ds_cluster_resign").await;
    let shutdown = CancellationToken::new();
    // Polling once a minute and a one-minute lease: a handover within seconds can only come
    // from the resignation's notification.
    let slow_poll = settings(1_000, 60_000, 2_000, 60_000, 5_000);
    let (me_a, me_b) = (identity("a"), identity("b"));
    let (id_a, id_b) = (me_a.id, me_b.id);
    let a = Elector::start(&database.url, me_a, slow_poll, &shutdown).unwrap();
    let b = Elector::start(&database.url, me_b, slow_poll, &shutdown).unwrap();
    let (mut lead_a, mut lead_b) = (a.leadership(), b.leadership());

    // Exactly one leads, and keeps leading (sampled over two renewals).
    let first = tokio::select! {
        term = leads(&mut lead_a, Duration::from_secs(20), "a") => term,
        term = leads(&mut lead_b, Duration::from_secs(20), "b") => term,
    };
    assert_eq!(first.epoch, 1, "the first term on a fresh database");
    for _ in 0..20 {
        let (ta, tb) = (lead_a.term(), lead_b.term());
        assert!(
            ta.is_some() != tb.is_some(),
            "exactly one leads: a={ta:?} b={tb:?}"
        );
        tokio::time::sleep(ms(100)).await;
    }
    let (holder, epoch, _) = lease_row(&pool).await;
    assert_eq!((holder, epoch), (first.holder, first.epoch));
    let view = cluster_view(&pool, &slow_poll).await;
    assert_eq!(
        view.leader.as_ref().map(|l| (l.id, l.epoch)),
        Some((first.holder, 1))
    );
    let mut listed: Vec<_> = view.replicas.iter().map(|r| r.id).collect();
    listed.sort();
    let mut both = vec![id_a, id_b];
    both.sort();
    assert_eq!(listed, both, "both replicas are listed");

    // The leader resigns (what SIGTERM does): the other takes over at once, as a new term.
    let (leader, mut follower, follower_id) = if first.holder == id_a {
        (a, lead_b, id_b)
    } else {
        (b, lead_a, id_a)
    };
    let resigned_at = Instant::now();
    let stopping = tokio::spawn(leader.stop());
    let next = leads(&mut follower, Duration::from_secs(10), "the follower").await;
    let handover = resigned_at.elapsed();
    stopping.await.unwrap();
    eprintln!("handover after a resignation: {handover:?}");
    assert!(
        handover < Duration::from_secs(2),
        "handover took {handover:?}; polling alone would take a minute"
    );
    assert_eq!((next.holder, next.epoch), (follower_id, 2));
    let view = cluster_view(&pool, &slow_poll).await;
    assert_eq!(view.leader.map(|l| (l.id, l.epoch)), Some((follower_id, 2)));
    assert_eq!(
        view.replicas.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![follower_id],
        "a replica that stopped cleanly leaves the list"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_stop_is_replaced_after_the_ttl_and_fenced_off() {
    let (database, pool) = with_probe("ds_cluster_pause").await;
    let shutdown = CancellationToken::new();
    let fast = settings(200, 2_000, 500, 200, 2_000);
    let a = Elector::start(&database.url, identity("a"), fast, &shutdown).unwrap();
    let mut lead_a = a.leadership();
    let term_a = leads(&mut lead_a, Duration::from_secs(20), "a").await;
    leader_write(&pool, &term_a, "a while leading")
        .await
        .expect("the leader's write passes the fence");

    let b = Elector::start(&database.url, identity("b"), fast, &shutdown).unwrap();
    let mut lead_b = b.leadership();
    // b polls every 200 ms and finds the lease held, renewal after renewal.
    tokio::time::sleep(ms(1_500)).await;
    assert_eq!(lead_b.term(), None, "b does not lead while a renews");
    assert_eq!(lead_a.term(), Some(term_a));

    // a freezes: no renewal, no resignation, not a word to the database.
    a.abandon();
    tokio::time::sleep(ms(100)).await;
    assert_eq!(lead_a.term(), None, "an elector that is gone leads nobody");
    let (_, _, a_expires) = lease_row(&pool).await;
    let term_b = leads(&mut lead_b, Duration::from_secs(30), "b").await;
    assert!(term_b.epoch > term_a.epoch, "{term_b:?} after {term_a:?}");
    assert!(
        term_b.since_ms >= a_expires.timestamp_millis(),
        "b took over at {} before a's lease expired at {}",
        term_b.since_ms,
        a_expires.timestamp_millis()
    );

    // a, still believing (it never heard), writes under its old term: the fence refuses it.
    match leader_write(&pool, &term_a, "a after its term").await {
        Err(FenceError::Deposed {
            ours,
            current_epoch,
            current_holder,
        }) => {
            assert_eq!(ours, term_a.epoch);
            assert_eq!(
                (current_epoch, current_holder),
                (term_b.epoch, term_b.holder)
            );
        }
        other => panic!("a deposed leader's write was not refused: {other:?}"),
    }
    leader_write(&pool, &term_b, "b leading")
        .await
        .expect("the new leader writes");
    assert_eq!(
        probe_rows(&pool).await,
        vec![
            ("a while leading".to_owned(), term_a.epoch),
            ("b leading".to_owned(), term_b.epoch)
        ],
        "nothing of the deposed leader's refused transaction was kept"
    );
    shutdown.cancel();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_the_fenced_write_in_flight() {
    let (database, pool) = with_probe("ds_cluster_inflight").await;
    let shutdown = CancellationToken::new();
    let fast = settings(200, 1_500, 500, 200, 1_000);
    let a = Elector::start(&database.url, identity("a"), fast, &shutdown).unwrap();
    let term_a = leads(&mut a.leadership(), Duration::from_secs(20), "a").await;
    let b = Elector::start(&database.url, identity("b"), fast, &shutdown).unwrap();
    let mut lead_b = b.leadership();

    // a passes the fence, then freezes in the middle of its transaction.
    let mut tx = pool.begin().await.unwrap();
    fence(&mut tx, &term_a).await.expect("a leads");
    a.abandon();
    // Its lease expires, but b cannot take it: the takeover waits for the shared lock.
    tokio::time::sleep(ms(4_000)).await;
    assert_eq!(
        lead_b.term(),
        None,
        "b took over under a fenced write in flight"
    );
    sqlx::query("INSERT INTO fenced_probe (what, epoch) VALUES ('a in flight', $1)")
        .bind(term_a.epoch)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit()
        .await
        .expect("the write that passed the fence commits");

    let term_b = leads(&mut lead_b, Duration::from_secs(30), "b").await;
    assert!(term_b.epoch > term_a.epoch);
    assert_eq!(
        probe_rows(&pool).await,
        vec![("a in flight".to_owned(), term_a.epoch)]
    );
    shutdown.cancel();
    b.stop().await;
}

/// Ends the lease by hand, as if its TTL had passed.
async fn expire(pool: &PgPool) {
    sqlx::query("UPDATE leader_lease SET expires_at = now() - interval '1 second'")
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_never_extends_another_terms_lease() {
    let (_database, pool) = migrated("ds_cluster_renew").await;
    let ttl = Duration::from_secs(60);
    let (me_a, me_b) = (identity("a"), identity("b"));

    let term_a = lease::acquire(&pool, &me_a, ttl)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(term_a.epoch, 1);
    assert!(
        lease::acquire(&pool, &me_b, ttl).await.unwrap().is_none(),
        "held"
    );
    assert!(
        lease::renew(&pool, &term_a, ttl).await.unwrap(),
        "a renews its own"
    );

    expire(&pool).await;
    assert!(
        !lease::renew(&pool, &term_a, ttl).await.unwrap(),
        "an expired lease is taken again as a new term, never revived"
    );
    let term_b = lease::acquire(&pool, &me_b, ttl)
        .await
        .unwrap()
        .expect("expired");
    assert_eq!(term_b.epoch, 2);
    let (_, _, b_expires) = lease_row(&pool).await;

    // Neither a's term, nor a's holder id under b's epoch, nor b's holder id under a's epoch
    // renews b's lease.
    let mixed = [
        term_a,
        Term {
            epoch: term_b.epoch,
            ..term_a
        },
        Term {
            epoch: term_a.epoch,
            ..term_b
        },
    ];
    for stale in mixed {
        assert!(
            !lease::renew(&pool, &stale, Duration::from_secs(3_600))
                .await
                .unwrap(),
            "{stale:?} renewed {term_b:?}"
        );
        assert!(!lease::resign(&pool, &stale, cluster::NOTIFY_CHANNEL)
            .await
            .unwrap());
    }
    assert_eq!(
        lease_row(&pool).await,
        (term_b.holder, 2, b_expires),
        "untouched"
    );

    // a takes it again after b resigns: a new term, epoch 3, even for a holder seen before.
    assert!(lease::resign(&pool, &term_b, cluster::NOTIFY_CHANNEL)
        .await
        .unwrap());
    let again = lease::acquire(&pool, &me_a, ttl)
        .await
        .unwrap()
        .expect("resigned");
    assert_eq!((again.holder, again.epoch), (me_a.id, 3));
    let deleted = sqlx::query("DELETE FROM leader_lease").execute(&pool).await;
    assert!(
        deleted.is_err(),
        "the row, and with it the epoch, is never deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_cluster_names_the_leader_on_postgres_and_this_process_on_sqlite() {
    let app = spawn_app_on(Backend::Postgres).await;
    // The elector takes the lease, then writes its heartbeat: wait for both.
    let body = support::eventually(Duration::from_secs(20), "a leader, listed", || async {
        let (status, body) = app.get("/cluster").await;
        let listed = body["replicas"].as_array().is_some_and(|r| !r.is_empty());
        if status == 200 && body["leader"].is_object() && listed {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
    let leader = &body["leader"];
    assert_eq!(leader["epoch"], 1, "{body}");
    assert_eq!(leader["http_addr"], app.http_addr().to_string());
    assert_eq!(body["replicas"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["replicas"][0]["id"], leader["id"]);
    let (status, _) = app.anonymous.get("/cluster").await;
    assert_eq!(status, 401, "the token is needed");

    let app = spawn_app_on(Backend::Sqlite).await;
    let (status, body) = app.get("/cluster").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["leader"]["epoch"], 0, "{body}");
    assert_eq!(body["leader"]["http_addr"], app.http_addr().to_string());
    assert_eq!(body["replicas"][0]["id"], body["leader"]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_supervisor_on_the_same_sqlite_file_refuses_to_start() {
    let mut app = spawn_app_on(Backend::Sqlite).await;
    let second = Application::build(app.settings()).await;
    let Err(err) = second else {
        panic!("a second supervisor started on the same SQLite file")
    };
    let message = err.to_string();
    assert!(
        message.contains("one supervisor per database file"),
        "{message}"
    );
    assert!(
        message.contains(&app.database.url["sqlite://".len()..]),
        "{message}"
    );
    // Released with the first: a restart finds it free.
    app.stop_supervisor().await;
    app.start_supervisor().await;
}

/// Runs `env`'s supervisor binary until it exits (at most 30 s); returns whether it exited
/// with success and what it printed.
fn run_to_exit(env: &support::Env) -> (bool, String) {
    let mut child = command(&bin("data-streams"), env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second supervisor on the same SQLite file still runs after 30 s");
        }
        std::thread::sleep(ms(50));
    };
    let output = child.wait_with_output().expect("its output");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (status.success(), text)
}

#[test]
fn a_second_supervisor_process_on_the_same_sqlite_file_exits_naming_it_until_the_first_dies() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let env = supervisor_env(&sqlite_url(dir.path()), &folder_store_url(dir.path()));
    let mut first = Supervisor::start(&logs, &env);

    let (ok, log) = run_to_exit(&env);
    assert!(!ok, "the second exits non-zero; log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("cannot start"))
        .unwrap_or_else(|| panic!("no 'cannot start' line; log:\n{log}"));
    assert!(line.contains("another data-streams supervisor"), "{line}");
    assert!(line.contains("ds.db"), "{line}");
    assert!(line.contains("use PostgreSQL to run several"), "{line}");

    // SIGKILL leaves no stale lock: the kernel drops it with the process.
    first.proc.kill();
    let second = Supervisor::start(&logs, &env);
    drop(second);
}
