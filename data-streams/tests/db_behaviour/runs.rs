//! Runs as records: single-fetch runs from their result or failure, runs of several steps from
//! their reports (never back from final), the window they stored, and readings of many places
//! in one stream.

use data_streams::db::Db;
use protocol::{FailureClass, JobState, JobStep, RunReport, RunStatus, RunWindow};
use uuid::Uuid;

use crate::fixtures::{failure, reading, result, stream, v7, T0};

fn report(stream_id: Uuid, run_id: Uuid, status: RunStatus, pages: u32) -> RunReport {
    RunReport {
        run_id,
        stream_id,
        scheduled_at_ms: T0,
        started_at_ms: T0 + 5,
        finished_at_ms: status.is_final().then_some(T0 + 2_005),
        status,
        attempts: pages + 1,
        pages,
        records: Some(u64::from(pages) * 50),
        bytes: u64::from(pages) * 4_096,
        window: Some(RunWindow {
            start_ms: T0 - 900_000,
            end_ms: T0,
        }),
        job: Vec::new(),
        class: None,
        message: None,
        stream_stopped: false,
    }
}

pub async fn single_fetch_runs_come_from_their_result_or_failure(db: Db) {
    let s = stream(&db, T0).await;
    let stored = result(s.id, T0 + 1_000, Some(reading(T0, 40.0)));
    let failed = failure(s.id, T0 + 2_000, FailureClass::Http, "HTTP 502");
    db.persist_runs(
        std::slice::from_ref(&stored),
        std::slice::from_ref(&failed),
        &[],
    )
    .await
    .expect("persist");
    // A replay changes nothing.
    db.persist_runs(
        std::slice::from_ref(&stored),
        std::slice::from_ref(&failed),
        &[],
    )
    .await
    .expect("replay");

    let (runs, next) = db.list_runs(s.id, 10, None, None).await.expect("list");
    assert_eq!(next, None);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let ok = runs
        .iter()
        .find(|r| r.id == stored.run_id)
        .expect("the stored run");
    assert_eq!(ok.status, "stored");
    assert_eq!((ok.pages, ok.bytes, ok.attempts), (1, 1234, 1));
    assert_eq!(ok.scheduled_at, stored.scheduled_at_ms);
    assert_eq!(ok.finished_at, Some(stored.fetched_at_ms));
    let bad = runs
        .iter()
        .find(|r| r.id == failed.run_id)
        .expect("the failed run");
    assert_eq!(bad.status, "failed");
    assert_eq!(bad.class.as_deref(), Some("http"));
    assert_eq!(bad.message.as_deref(), Some("HTTP 502"));

    // The failures list is a filter of the runs.
    let (only_failed, _) = db
        .list_runs(s.id, 10, None, Some("failed"))
        .await
        .expect("filter");
    assert_eq!(
        only_failed.iter().map(|r| r.id).collect::<Vec<_>>(),
        [failed.run_id]
    );
    let pages = db.run_pages(stored.run_id).await.expect("pages");
    assert_eq!(
        pages.iter().map(|p| p.id).collect::<Vec<_>>(),
        [stored.result_id]
    );
    assert_eq!(pages[0].run_id, Some(stored.run_id));
}

pub async fn reported_runs_go_forward_never_back(db: Db) {
    let s = stream(&db, T0).await;
    let run_id = v7(T0);
    let mut running = report(s.id, run_id, RunStatus::Running, 0);
    db.persist_runs(&[], &[], std::slice::from_ref(&running))
        .await
        .expect("running");
    let row = db.get_run(run_id).await.expect("get").expect("the run");
    assert_eq!((row.status.as_str(), row.finished_at), ("running", None));

    // Its job's states show as they come.
    running.status = RunStatus::Processing;
    running.job = vec![
        JobStep {
            state: JobState::Queued,
            at_ms: T0 + 10,
        },
        JobStep {
            state: JobState::Processing,
            at_ms: T0 + 600,
        },
    ];
    db.persist_runs(&[], &[], std::slice::from_ref(&running))
        .await
        .expect("processing");
    let row = db.get_run(run_id).await.expect("get").expect("the run");
    assert_eq!(row.status, "processing");
    let states: Vec<&str> = row
        .job
        .as_ref()
        .expect("job")
        .iter()
        .map(|s| s.state.as_str())
        .collect();
    assert_eq!(states, ["queued", "processing"]);

    // Three pages, each its own reference in the run, then the end.
    let pages: Vec<_> = (0..3)
        .map(|page| {
            let mut r = result(s.id, T0 + 1_000 + i64::from(page), None);
            r.run_id = run_id;
            r.page = page;
            r.records = Some(50);
            r.ends_run = false;
            r
        })
        .collect();
    let mut done = report(s.id, run_id, RunStatus::Truncated, 3);
    done.message = Some("max_pages (3) reached with more to fetch".into());
    db.persist_runs(&pages, &[], &[done.clone()])
        .await
        .expect("done");
    // A late "running" report (a replay) does not take the run back.
    db.persist_runs(&[], &[], &[running])
        .await
        .expect("late report");

    let row = db.get_run(run_id).await.expect("get").expect("the run");
    assert_eq!(row.status, "truncated");
    assert_eq!((row.pages, row.records, row.attempts), (3, Some(150), 4));
    assert_eq!(row.duration_ms, Some(2_000));
    assert_eq!(
        row.message.as_deref(),
        Some("max_pages (3) reached with more to fetch")
    );
    assert_eq!(
        (row.window_start, row.window_end),
        (Some(T0 - 900_000), Some(T0))
    );
    let stored = db.run_pages(run_id).await.expect("pages");
    assert_eq!(
        stored.iter().map(|p| p.page).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    // Pages alone do not make runs of their own.
    let (runs, _) = db.list_runs(s.id, 10, None, None).await.expect("list");
    assert_eq!(runs.len(), 1, "{runs:?}");

    // The stored window moves the stream's window end: the next run starts there.
    let row = db.get_stream(s.id).await.expect("get").expect("the stream");
    assert_eq!(row.window_end_ms, Some(T0));
    let config = protocol::StreamConfig::from(&row);
    assert_eq!(config.window_start_ms, Some(T0));
}

pub async fn a_failed_report_is_a_failure_and_keeps_the_window(db: Db) {
    let s = stream(&db, T0).await;
    let run_id = v7(T0 + 50);
    let mut failed = report(s.id, run_id, RunStatus::Failed, 2);
    failed.class = Some(FailureClass::Http);
    failed.message = Some("page 3: HTTP 500 (gave up after 4 attempts)".into());
    db.persist_runs(&[], &[], &[failed]).await.expect("persist");

    let failures = db.list_failures(s.id, 10).await.expect("failures");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].run_id, run_id);
    assert_eq!(failures[0].class, "http");
    let row = db.get_stream(s.id).await.expect("get").expect("the stream");
    assert_eq!(row.window_end_ms, None, "a failed run stores no window");
    assert_eq!(
        row.last_error.as_deref(),
        Some("page 3: HTTP 500 (gave up after 4 attempts)")
    );
}

pub async fn one_stream_reads_many_places_at_one_time(db: Db) {
    let s = stream(&db, T0).await;
    let places = [
        ("Krakow", "Lesser Poland Voivodeship"),
        ("Warsaw", "Mazovia"),
        ("Gdansk", "Pomerania"),
    ];
    let results: Vec<_> = places
        .iter()
        .enumerate()
        .map(|(i, (city, state))| {
            let mut m = reading(T0, 30.0 + i as f64);
            m.city = Some((*city).to_owned());
            m.state = Some((*state).to_owned());
            m.country = Some("Poland".to_owned());
            result(s.id, T0 + 100 + i as i64, Some(m))
        })
        .collect();
    let stats = db.persist_events(&results, &[]).await.expect("persist");
    assert_eq!(stats.measurements_inserted, 3, "{stats:?}");
    // The same city at the same hour again is the same reading.
    let mut again = results[0].clone();
    again.result_id = v7(T0 + 5_000);
    let stats = db.persist_events(&[again], &[]).await.expect("again");
    assert_eq!(stats.measurements_inserted, 0, "{stats:?}");
    let readings = db
        .list_measurements(s.id, Some(T0 - 1), Some(T0 + 1), 100)
        .await
        .expect("readings");
    let mut cities: Vec<_> = readings.iter().filter_map(|r| r.city.clone()).collect();
    cities.sort();
    assert_eq!(cities, ["Gdansk", "Krakow", "Warsaw"]);
}

/// The reconciler can list a page's object between the worker storing it and the worker's
/// report committing (the object is stored first, by design): the report then completes the
/// reconciled row, so the run lists every page it stored. A replay changes nothing more.
pub async fn a_report_completes_a_page_the_reconciler_indexed_first(db: Db) {
    let s = stream(&db, T0).await;
    let run_id = v7(T0);
    let pages: Vec<_> = (0..4)
        .map(|page| {
            let mut r = result(s.id, T0 + 1_000 + page, None);
            r.run_id = run_id;
            r.page = page as u32;
            r.ends_run = false;
            r
        })
        .collect();
    // The last page's object is found by the reconciler before its event lands.
    let last = &pages[3];
    let found = data_streams::db::ReconciledRef {
        id: last.result_id,
        stream_id: s.id,
        bucket: last.bucket.clone(),
        key: last.key.clone(),
        fetched_at: last.fetched_at_ms,
        size: last.size as i64,
        sha256: last.sha256.clone(),
    };
    assert_eq!(db.insert_reconciled(&[found]).await.expect("reconcile"), 1);
    db.persist_runs(&pages, &[], &[report(s.id, run_id, RunStatus::Stored, 4)])
        .await
        .expect("persist");
    let listed = db.run_pages(run_id).await.expect("pages");
    assert_eq!(
        listed.iter().map(|p| p.id).collect::<Vec<_>>(),
        pages.iter().map(|p| p.result_id).collect::<Vec<_>>(),
        "every page of the run, the reconciled one included"
    );
    let completed = listed.iter().find(|p| p.id == last.result_id).unwrap();
    assert_eq!(completed.run_id, Some(run_id));
    assert_eq!(completed.status, "ok");
    // A replay leaves it as it is.
    db.persist_runs(&pages, &[], &[]).await.expect("replay");
    assert_eq!(db.run_pages(run_id).await.expect("pages").len(), 4);
}
