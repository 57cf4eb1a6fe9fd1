//! Per-key call budgets on tokio's paused clock: hours of schedule run in milliseconds. The
//! day and month windows follow a wall clock that follows tokio's, so their boundaries are
//! crossed exactly; the minute slides over 61 s (see `worker::ratelimit`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use protocol::{Event, FailureClass, RateLimit, RunFailure, Schedule, StreamConfig};
use tokio::time::{sleep, Instant};
use uuid::Uuid;
use worker::adapters::{Adapter, Adapters, RateLimitScope, Retry};
use worker::clock::Clock;
use worker::outbox::Outbox;
use worker::runner::Runner;
use worker::scheduler::Scheduler;

mod common;

use common::{Memory, Scripted, Step};

struct Rig {
    scheduler: Scheduler,
    api: Arc<Scripted>,
    outbox: Arc<Outbox>,
    t0: Instant,
}

fn rig(steps: Vec<Step>, wall0: DateTime<Utc>) -> Rig {
    let api = Scripted::with(steps);
    let outbox = Arc::new(Outbox::new(100_000));
    let clock = Clock::following_tokio(wall0);
    let runner = Runner::new(
        Adapters::from_list(vec![api.clone() as Arc<dyn Adapter>]),
        Arc::new(Memory::default()),
        outbox.clone(),
    )
    .with_clock(clock.clone());
    Rig {
        scheduler: Scheduler::new(Arc::new(runner), clock, 100),
        api,
        outbox,
        t0: Instant::now(),
    }
}

fn noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

/// A stream whose interval slots fall on whole intervals since midnight (its id's low 64 bits
/// are a whole number of days), so its ticks are at multiples of the interval from a rig
/// started on a whole minute.
fn stream(key: &str, every_ms: u64, rate_limit: RateLimit) -> StreamConfig {
    let (high, low) = Uuid::new_v4().as_u64_pair();
    StreamConfig {
        stream_id: Uuid::from_u64_pair(high, (low % 1_000_000) * 86_400_000),
        generation: 1,
        adapter: "IQAIR_DAILY".into(),
        endpoint: "http://api.example/v2/nearest_city".into(),
        secret_key: key.into(),
        schedule: Schedule::Interval { millis: every_ms },
        timeout_ms: 1_000,
        bucket_name: "results".into(),
        params: BTreeMap::new(),
        rate_limit,
        source: String::new(),
        window_start_ms: None,
    }
}

/// Offsets (ms from the rig's start) of the API calls made with `key`.
fn calls_with(rig: &Rig, key: &str) -> Vec<u128> {
    rig.api
        .calls()
        .iter()
        .filter(|(_, _, k)| k == key)
        .map(|(t, _, _)| t.duration_since(rig.t0).as_millis())
        .collect()
}

fn failures(rig: &Rig) -> Vec<RunFailure> {
    rig.outbox
        .after(0, 100_000)
        .into_iter()
        .filter_map(|(_, e)| match e {
            Event::RunFailed(f) => Some(std::sync::Arc::unwrap_or_clone(f)),
            _ => None,
        })
        .collect()
}

fn stored(rig: &Rig, stream_id: Uuid) -> usize {
    rig.outbox
        .after(0, 100_000)
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::Results(r) if r.stream_id == stream_id))
        .count()
}

#[tokio::test(start_paused = true)]
async fn streams_sharing_a_key_share_its_minute_budget_and_another_key_is_unaffected() {
    let rig = rig(vec![], noon());
    let shared: Vec<StreamConfig> = (0..3)
        .map(|_| stream("key-a", 2_000, RateLimit::COMMUNITY))
        .collect();
    for cfg in &shared {
        rig.scheduler.start(cfg.clone()).unwrap();
    }
    let other = stream("key-b", 20_000, RateLimit::COMMUNITY);
    rig.scheduler.start(other.clone()).unwrap();
    // Three whole minutes, plus a little so the last ticks land.
    sleep(Duration::from_millis(179_500)).await;

    let calls = calls_with(&rig, "key-a");
    for minute in 0..3u128 {
        let in_window = calls
            .iter()
            .filter(|t| (minute * 60_000..(minute + 1) * 60_000).contains(*t))
            .count();
        assert_eq!(in_window, 5, "minute {minute}: {calls:?}");
    }
    // 3 streams x 90 ticks, 15 of them called: the rest are recorded, without a call.
    let limited: Vec<RunFailure> = failures(&rig)
        .into_iter()
        .filter(|f| shared.iter().any(|c| c.stream_id == f.stream_id))
        .collect();
    assert_eq!(limited.len(), 3 * 90 - 15);
    for f in &limited {
        assert_eq!(f.class, FailureClass::RateLimited, "{f:?}");
        assert!(!f.stream_stopped);
        assert!(
            f.message
                .contains("local budget for this key exhausted (5/minute)"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("key-a"), "{}", f.message);
    }
    assert!(limited[0]
        .message
        .ends_with("next call at 2026-11-22T12:01:01Z"));
    // The other key runs every 20 s, 3 calls a minute, all of them.
    assert_eq!(calls_with(&rig, "key-b").len(), 9);
    assert_eq!(stored(&rig, other.stream_id), 9);
}

#[tokio::test(start_paused = true)]
async fn a_day_budget_rolls_over_at_utc_midnight() {
    let wall0 = Utc.with_ymd_and_hms(2026, 11, 22, 23, 59, 0).unwrap();
    let rig = rig(vec![], wall0);
    let per_day = RateLimit {
        per_minute: 0,
        per_day: 3,
        per_month: 0,
    };
    rig.scheduler
        .start(stream("key-a", 10_000, per_day))
        .unwrap();
    sleep(Duration::from_millis(125_000)).await;
    // 23:59:00, :10, :20, then nothing until midnight (60 s in), then three more.
    assert_eq!(
        calls_with(&rig, "key-a"),
        vec![0, 10_000, 20_000, 60_000, 70_000, 80_000]
    );
    let messages: Vec<String> = failures(&rig).into_iter().map(|f| f.message).collect();
    assert_eq!(messages.len(), 13 - 6);
    assert!(
        messages[0].ends_with("(3/day); next call at 2026-11-23T00:00:00Z"),
        "{}",
        messages[0]
    );
    assert!(
        messages
            .last()
            .unwrap()
            .ends_with("next call at 2026-11-24T00:00:00Z"),
        "{messages:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_limit_answer_blocks_the_key_even_with_budget_left() {
    let limited = Step::Fail(
        FailureClass::RateLimited,
        Retry::RateLimited(RateLimitScope::Minute),
    );
    let rig = rig(vec![limited], noon());
    rig.scheduler
        .start(stream("key-a", 10_000, RateLimit::UNLIMITED))
        .unwrap();
    sleep(Duration::from_millis(100)).await;
    rig.scheduler
        .start(stream("key-a", 10_000, RateLimit::COMMUNITY))
        .unwrap();
    sleep(Duration::from_millis(65_000)).await;
    // The first call got the limit answer at 0; both streams back off for 60 s, then go on
    // (the second stream's first run, at 0.1 s, ran the slot of 0 s; both share the grid).
    assert_eq!(calls_with(&rig, "key-a"), vec![0, 60_000, 60_000]);
    let backoffs = failures(&rig)
        .into_iter()
        .filter(|f| f.message.contains("backs off"))
        .count();
    assert_eq!(backoffs, 5 + 6, "runs in the backoff are recorded");
}

#[tokio::test(start_paused = true)]
async fn zero_means_no_limit() {
    let rig = rig(vec![], noon());
    let cfg = stream("key-a", 1_000, RateLimit::UNLIMITED);
    rig.scheduler.start(cfg.clone()).unwrap();
    sleep(Duration::from_millis(119_500)).await;
    assert_eq!(calls_with(&rig, "key-a").len(), 120);
    assert!(failures(&rig).is_empty());
    assert_eq!(stored(&rig, cfg.stream_id), 120);
}

#[tokio::test(start_paused = true)]
async fn differing_limits_on_one_key_take_the_strictest() {
    let rig = rig(vec![], noon());
    let two = RateLimit {
        per_minute: 2,
        ..RateLimit::COMMUNITY
    };
    let strict = stream("key-a", 5_000, two);
    rig.scheduler
        .start(stream("key-a", 5_000, RateLimit::COMMUNITY))
        .unwrap();
    rig.scheduler.start(strict.clone()).unwrap();
    sleep(Duration::from_millis(59_000)).await;
    assert_eq!(calls_with(&rig, "key-a").len(), 2);
    // Once the strict stream stops, the shared key gets the other stream's 5 a minute.
    rig.scheduler.stop(strict.stream_id, 0);
    sleep(Duration::from_millis(60_000)).await;
    assert_eq!(calls_with(&rig, "key-a").len(), 2 + 5);
}
