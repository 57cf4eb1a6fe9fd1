//! The scheduler and runner on tokio's paused clock: minutes of schedule run in milliseconds and
//! never flake. The external API is a scripted adapter and the store is in memory here, because
//! blocking file I/O would let the paused clock jump past timeouts; the real adapter (against
//! iqair-sim), the real stores (folder and S3) and the whole pipeline have their own tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use protocol::{Event, FailureClass, Schedule, StreamConfig};
use tokio::time::{sleep, Instant};
use uuid::Uuid;
use worker::adapters::{Adapter, Adapters, RateLimitScope, Retry};
use worker::clock::Clock;
use worker::outbox::Outbox;
use worker::runner::Runner;
use worker::scheduler::{Scheduler, Started, Stopped};

mod common;

use common::{Memory, Scripted, Step};

struct Rig {
    scheduler: Scheduler,
    api: Arc<Scripted>,
    outbox: Arc<Outbox>,
    store: Arc<Memory>,
    t0: Instant,
}

fn rig(steps: Vec<Step>, clock: Clock) -> Rig {
    let api = Scripted::with(steps);
    let outbox = Arc::new(Outbox::new(10_000));
    let store = Arc::new(Memory::default());
    let runner = Runner::new(
        Adapters::from_list(vec![api.clone() as Arc<dyn Adapter>]),
        store.clone(),
        outbox.clone(),
    );
    Rig {
        scheduler: Scheduler::new(Arc::new(runner), clock, 100),
        api,
        outbox,
        store,
        t0: Instant::now(),
    }
}

/// A wall clock following tokio's, starting at a midnight (UTC): a whole number of every
/// interval here.
fn clock() -> Clock {
    Clock::following_tokio(midnight())
}

fn midnight() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap()
}

/// A stream id whose interval grids (of any interval dividing a day) are anchored at
/// `anchor_ms` past midnight: its low 64 bits are a whole number of days plus the anchor.
fn id_anchored_at(anchor_ms: u64) -> Uuid {
    let (high, low) = Uuid::new_v4().as_u64_pair();
    Uuid::from_u64_pair(high, (low % 1_000_000) * 86_400_000 + anchor_ms)
}

/// A stream with `schedule` whose interval slots fall on whole intervals since midnight, so on
/// [`clock`] they are the multiples of the interval since the rig started.
fn config(schedule: Schedule, timeout_ms: u64) -> StreamConfig {
    StreamConfig {
        stream_id: id_anchored_at(0),
        generation: 1,
        adapter: "IQAIR_DAILY".into(),
        endpoint: "http://api.example/v2/nearest_city".into(),
        secret_key: "key-1".into(),
        schedule,
        timeout_ms,
        bucket_name: "results".into(),
        params: BTreeMap::new(),
        rate_limit: protocol::RateLimit::UNLIMITED,
        source: String::new(),
        window_start_ms: None,
    }
}

fn every(ms: u64) -> Schedule {
    Schedule::Interval { millis: ms }
}

/// Offsets of the calls from the rig's start, in whole milliseconds.
fn offsets(rig: &Rig) -> Vec<u128> {
    rig.api
        .calls()
        .iter()
        .map(|(t, _, _)| t.duration_since(rig.t0).as_millis())
        .collect()
}

fn events(rig: &Rig) -> Vec<Event> {
    rig.outbox
        .after(0, 10_000)
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn interval_ticks_run_at_the_interval_starting_right_away() {
    let rig = rig(vec![], clock());
    rig.scheduler.start(config(every(10_000), 5_000)).unwrap();
    sleep(Duration::from_millis(35_000)).await;
    assert_eq!(offsets(&rig), vec![0, 10_000, 20_000, 30_000]);
    let stored = events(&rig)
        .iter()
        .filter(|e| matches!(e, Event::Results(_)))
        .count();
    assert_eq!(stored, 4);
    assert_eq!(rig.store.objects.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn cron_ticks_land_on_the_wall_clock_times() {
    let wall0 = chrono::Utc
        .with_ymd_and_hms(2026, 11, 22, 13, 59, 50)
        .unwrap();
    let rig = rig(vec![], Clock::following_tokio(wall0));
    rig.scheduler
        .start(config(
            Schedule::Cron {
                expr: "0 */15 * * * *".into(),
            },
            5_000,
        ))
        .unwrap();
    sleep(Duration::from_secs(16 * 60)).await;
    // 14:00:00 is 10 s after the start, 14:15:00 is 910 s after.
    assert_eq!(offsets(&rig), vec![10_000, 910_000]);
}

#[tokio::test(start_paused = true)]
async fn a_hung_fetch_is_dropped_at_the_timeout_and_the_next_tick_runs() {
    let rig = rig(vec![Step::Hang], clock());
    rig.scheduler.start(config(every(1_000), 400)).unwrap();
    sleep(Duration::from_millis(1_500)).await;
    assert_eq!(offsets(&rig), vec![0, 1_000]);
    let evs = events(&rig);
    match &evs[0] {
        Event::RunFailed(f) => {
            assert_eq!(f.class, FailureClass::Timeout);
            assert!(!f.stream_stopped);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(matches!(evs[1], Event::Results(_)), "{:?}", evs[1]);
}

#[tokio::test(start_paused = true)]
async fn a_config_change_applies_at_the_end_of_the_current_interval() {
    let rig = rig(vec![], clock());
    let first = config(every(10_000), 5_000);
    rig.scheduler.start(first.clone()).unwrap();
    sleep(Duration::from_millis(3_000)).await;
    let mut changed = first.clone();
    changed.schedule = every(60_000);
    changed.endpoint = "http://api.example/v2/city".into();
    assert_eq!(rig.scheduler.start(changed).unwrap(), Started::Updated);
    sleep(Duration::from_millis(80_000)).await;
    let calls = rig.api.calls();
    let at: Vec<u128> = offsets(&rig);
    // The old interval ends at 10 s: that tick already uses the new config; then the 60 s
    // grid's slots (every worker's), the first at 60 s.
    assert_eq!(at, vec![0, 10_000, 60_000]);
    assert!(calls[0].1.ends_with("nearest_city"));
    assert!(calls[1].1.ends_with("/city"));
}

#[tokio::test(start_paused = true)]
async fn start_and_stop_are_idempotent() {
    let rig = rig(vec![], clock());
    let cfg = config(every(10_000), 5_000);
    assert_eq!(rig.scheduler.start(cfg.clone()).unwrap(), Started::New);
    assert_eq!(
        rig.scheduler.start(cfg.clone()).unwrap(),
        Started::Unchanged
    );
    assert_eq!(rig.scheduler.len(), 1);
    sleep(Duration::from_millis(15_000)).await;
    assert_eq!(offsets(&rig), vec![0, 10_000], "one task, not two");
    assert_eq!(rig.scheduler.stop(cfg.stream_id, 1), Stopped::Stopped);
    assert_eq!(rig.scheduler.stop(cfg.stream_id, 1), Stopped::NotRunning);
    sleep(Duration::from_millis(60_000)).await;
    assert_eq!(rig.api.calls().len(), 2, "no tick after the stop");
}

#[tokio::test(start_paused = true)]
async fn a_stop_for_an_older_generation_leaves_a_newer_assignment_running() {
    let rig = rig(vec![], clock());
    let mut cfg = config(every(10_000), 5_000);
    cfg.generation = 5;
    rig.scheduler.start(cfg.clone()).unwrap();
    assert_eq!(
        rig.scheduler.stop(cfg.stream_id, 4),
        Stopped::NewerGenerationRunning
    );
    assert!(rig.scheduler.is_running(cfg.stream_id));
    assert_eq!(rig.scheduler.running()[0].generation, 5);
}

#[tokio::test(start_paused = true)]
async fn a_bad_key_stops_the_stream_and_says_so() {
    let rig = rig(
        vec![Step::Fail(FailureClass::Auth, Retry::StopStream)],
        clock(),
    );
    let cfg = config(every(1_000), 500);
    rig.scheduler.start(cfg.clone()).unwrap();
    sleep(Duration::from_millis(5_000)).await;
    assert_eq!(rig.api.calls().len(), 1);
    assert!(!rig.scheduler.is_running(cfg.stream_id));
    match &events(&rig)[0] {
        Event::RunFailed(f) => assert!(f.stream_stopped && f.class == FailureClass::Auth),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn transient_errors_retry_inside_the_interval() {
    let transient = Step::Fail(FailureClass::Http, Retry::Transient);
    let rig = rig(vec![transient.clone(), transient], clock());
    rig.scheduler.start(config(every(60_000), 30_000)).unwrap();
    sleep(Duration::from_millis(10_000)).await;
    assert_eq!(rig.api.calls().len(), 3, "two retries, then success");
    let evs = events(&rig);
    assert_eq!(evs.len(), 1);
    assert!(matches!(evs[0], Event::Results(_)));
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_backs_off_every_stream_sharing_the_key() {
    let limited = Step::Fail(
        FailureClass::RateLimited,
        Retry::RateLimited(RateLimitScope::Minute),
    );
    let rig = rig(vec![limited], clock());
    let a = config(every(10_000), 5_000);
    rig.scheduler.start(a).unwrap();
    sleep(Duration::from_millis(100)).await;
    let b = config(every(10_000), 5_000);
    let mut other_key = config(every(10_000), 5_000);
    other_key.secret_key = "key-2".into();
    rig.scheduler.start(b).unwrap();
    rig.scheduler.start(other_key).unwrap();
    sleep(Duration::from_millis(29_800)).await;
    // Stream a: 1 call at 0, then backs off for 60 s. Stream b shares the key: no call.
    // The other key: calls at 0.1 s (in the slot of 0 s), then on its grid at 10 and 20 s.
    assert_eq!(rig.api.calls().len(), 4, "{:?}", offsets(&rig));
    let limited_runs = events(&rig)
        .iter()
        .filter(|e| matches!(e, Event::RunFailed(f) if f.class == FailureClass::RateLimited))
        .count();
    assert!(
        limited_runs >= 5,
        "skipped runs are recorded: {limited_runs}"
    );
}

#[tokio::test(start_paused = true)]
async fn first_ticks_spread_below_the_spread_and_the_interval_and_are_stable() {
    let api = Scripted::with(vec![]);
    let runner = Runner::new(
        Adapters::from_list(vec![api.clone() as Arc<dyn Adapter>]),
        Arc::new(Memory::default()),
        Arc::new(Outbox::new(10_000)),
    );
    let scheduler = Scheduler::with_start_spread(
        Arc::new(runner),
        clock(),
        1_000,
        Duration::from_millis(4_000),
    );
    // Each stream's key names it, so its calls can be told apart.
    let named = |interval_ms: u64, name: String| StreamConfig {
        // Ids of their own: the offsets come from them.
        stream_id: Uuid::now_v7(),
        secret_key: name.into(),
        ..config(every(interval_ms), interval_ms / 2)
    };
    let slow: Vec<StreamConfig> = (0..200)
        .map(|i| named(60_000, format!("slow-{i}")))
        .collect();
    let fast: Vec<StreamConfig> = (0..200)
        .map(|i| named(1_000, format!("fast-{i}")))
        .collect();
    let t0 = Instant::now();
    for c in slow.iter().chain(&fast) {
        scheduler.start(c.clone()).unwrap();
    }
    sleep(Duration::from_millis(4_500)).await;
    let first = |calls: &[(Instant, String, String)], key: &str, from: Instant| {
        calls
            .iter()
            .find(|(_, _, k)| k == key)
            .map(|(t, _, _)| t.duration_since(from).as_millis())
    };
    let calls = api.calls();
    // A 60 s interval starts within the 4 s spread; a 1 s interval within its interval.
    let slow_firsts: Vec<u128> = slow
        .iter()
        .map(|c| first(&calls, c.secret_key.expose(), t0).expect("every slow stream ran"))
        .collect();
    let fast_firsts: Vec<u128> = fast
        .iter()
        .map(|c| first(&calls, c.secret_key.expose(), t0).expect("every fast stream ran"))
        .collect();
    assert!(slow_firsts.iter().all(|ms| *ms < 4_000), "{slow_firsts:?}");
    assert!(fast_firsts.iter().all(|ms| *ms < 1_000), "{fast_firsts:?}");
    // Spread, not bunched: the slow streams' first calls fall into many 100 ms slots.
    let slots: std::collections::BTreeSet<u128> = slow_firsts.iter().map(|ms| ms / 100).collect();
    assert!(
        slots.len() > 25,
        "first ticks bunched into {} slots",
        slots.len()
    );
    // The offset is the stream's own: stopped and started again, it starts at the same offset.
    let again = &slow[0];
    scheduler.stop(again.stream_id, 0);
    let t1 = Instant::now();
    let before = api.calls().len();
    scheduler.start(again.clone()).unwrap();
    sleep(Duration::from_millis(4_000)).await;
    let rerun = first(&api.calls()[before..], again.secret_key.expose(), t1).expect("it ran again");
    assert_eq!(rerun, slow_firsts[0]);
}

/// The result ids of the stored runs in `rig`'s outbox, in order.
fn stored_ids(rig: &Rig) -> Vec<Uuid> {
    events(rig)
        .iter()
        .filter_map(|e| match e {
            Event::Results(r) => Some(r.result_id),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn interval_ticks_land_on_the_streams_grid_after_a_first_run_in_its_slot() {
    // (anchor past each 10 s, call offsets, slots since midnight). The first run comes at once
    // (no start spread here), late in the slot it falls in; then the grid, never sooner than
    // half an interval after it: 7 s late in its slot, the next slot (3 s) is skipped, so the
    // ledger never sees two runs closer than half an interval (which it reads as one slot).
    let cases: [(u64, Vec<u128>, [i64; 3]); 2] = [
        (3_000, vec![0, 13_000, 23_000], [-7_000, 13_000, 23_000]),
        (8_000, vec![0, 8_000, 18_000], [-2_000, 8_000, 18_000]),
    ];
    for (anchor, calls, slots) in cases {
        let rig = rig(vec![], clock());
        let cfg = StreamConfig {
            stream_id: id_anchored_at(anchor),
            ..config(every(10_000), 5_000)
        };
        rig.scheduler.start(cfg.clone()).unwrap();
        sleep(Duration::from_millis(25_000)).await;
        assert_eq!(offsets(&rig), calls, "anchored at {anchor} ms");
        let t0 = midnight().timestamp_millis();
        let expected: Vec<Uuid> = slots
            .iter()
            .map(|slot| objects::slot_result_id(cfg.stream_id, t0 + slot))
            .collect();
        assert_eq!(stored_ids(&rig), expected, "anchored at {anchor} ms");
        rig.scheduler.stop(cfg.stream_id, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn two_workers_running_one_stream_store_each_slot_once() {
    // A partition: the stream runs on a, and on b from 25 s on (handed out again while a could
    // not be reached). Both store into one store.
    let store = Arc::new(Memory::default());
    let worker = |store: Arc<Memory>| {
        let api = Scripted::with(vec![]);
        let outbox = Arc::new(Outbox::new(10_000));
        let runner = Runner::new(
            Adapters::from_list(vec![api.clone() as Arc<dyn Adapter>]),
            store.clone(),
            outbox.clone(),
        );
        Rig {
            scheduler: Scheduler::new(Arc::new(runner), clock(), 100),
            api,
            outbox,
            store,
            t0: Instant::now(),
        }
    };
    let a = worker(store.clone());
    let b = worker(store.clone());
    let cfg = config(every(10_000), 5_000);
    a.scheduler.start(cfg.clone()).unwrap();
    sleep(Duration::from_millis(25_000)).await;
    b.scheduler.start(cfg.clone()).unwrap();
    sleep(Duration::from_millis(30_000)).await;
    // a: 0, 10, 20, 30, 40, 50 s. b: at once (25 s, in the slot of 20 s), then 30, 40, 50 s.
    assert_eq!(offsets(&a), vec![0, 10_000, 20_000, 30_000, 40_000, 50_000]);
    assert_eq!(offsets(&b), vec![25_000, 30_000, 40_000, 50_000]);
    // Ten calls, six slots, six objects; b reports the slots a stored, under a's ids.
    assert_eq!(store.objects.lock().unwrap().len(), 6);
    let from_a = stored_ids(&a);
    let from_b = stored_ids(&b);
    assert_eq!(from_a.len(), 6);
    assert_eq!(from_b, from_a[2..].to_vec());
}
