//! IQAir sweeps through a real [`Runner`] against the simulator on loopback, with a folder object
//! store: discovery through the listing endpoints (and its cache), one object and one reading per
//! city per run, the cities spread over the interval, a rate limit that blocks and lets the sweep
//! go on, and a bad key that stops it. Real time: intervals are a second or two.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use iqair_sim::{self as sim, Limits, SimConfig};
use objects::{FolderStore, ObjectStore, StoreOptions};
use protocol::{
    Event, FailureClass, RateLimit, ResultRecord, RunReport, RunStatus, Schedule, StreamConfig,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;
use worker::adapters::{Adapter, Adapters, IqAir};
use worker::outbox::Outbox;
use worker::runner::{RunOutcome, Runner};

/// Distinctive, so a leak into a message cannot be a coincidence.
const KEY: &str = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f";

struct Sim {
    base: String,
    admin: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Sim {
    async fn start() -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = SimConfig {
            keys: vec![KEY.to_string()],
            limits: Limits::off(),
            ..SimConfig::default()
        };
        tokio::spawn(sim::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Sim {
            base: format!("http://{addr}"),
            admin: reqwest::Client::new(),
            _stop: stop,
        }
    }

    /// Requests the simulator has answered so far, on any endpoint.
    async fn requests(&self) -> u64 {
        let stats: Value = self
            .admin
            .get(format!("{}/admin/stats", self.base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON");
        stats["requests"].as_u64().expect("a request count")
    }

    async fn fault(&self, fault: &str, count: u32) {
        let response = self
            .admin
            .post(format!("{}/admin/faults", self.base))
            .json(&json!({"key": KEY, "fault": fault, "count": count}))
            .send()
            .await
            .expect("admin request");
        assert_eq!(response.status().as_u16(), 201, "{fault}");
    }

    /// What the listing endpoint says, read by the test itself.
    async fn listing(&self, path: &str, field: &str) -> Vec<String> {
        let body: Value = self
            .admin
            .get(format!("{}/v2/{path}", self.base))
            .query(&[("key", KEY)])
            .send()
            .await
            .expect("listing")
            .json()
            .await
            .expect("listing JSON");
        body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{path}: {body}"))
            .iter()
            .map(|entry| entry[field].as_str().expect("a name").to_string())
            .collect()
    }
}

struct Rig {
    sim: Sim,
    runner: Runner,
    outbox: Arc<Outbox>,
    store: Arc<dyn ObjectStore>,
    _dir: tempfile::TempDir,
}

async fn rig_with(adapter: IqAir) -> Rig {
    let sim = Sim::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn ObjectStore> = Arc::new(
        FolderStore::new(
            dir.path().join("objects"),
            StoreOptions {
                create_buckets: true,
            },
        )
        .await
        .expect("folder store"),
    );
    let outbox = Arc::new(Outbox::new(10_000));
    let runner = Runner::new(
        Adapters::from_list(vec![Arc::new(adapter) as Arc<dyn Adapter>]),
        store.clone(),
        outbox.clone(),
    );
    Rig {
        sim,
        runner,
        outbox,
        store,
        _dir: dir,
    }
}

async fn rig() -> Rig {
    rig_with(IqAir::new(reqwest::Client::new())).await
}

impl Rig {
    /// A sweep of `params` on the `city` endpoint, every `interval_ms`.
    fn sweep(&self, params: &[(&str, &str)], interval_ms: u64, timeout_ms: u64) -> StreamConfig {
        StreamConfig {
            stream_id: Uuid::now_v7(),
            generation: 1,
            adapter: "IQAIR_DAILY".into(),
            endpoint: format!("{}/v2/city", self.sim.base),
            secret_key: KEY.into(),
            schedule: Schedule::Interval {
                millis: interval_ms,
            },
            timeout_ms,
            bucket_name: "results".into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            rate_limit: RateLimit::UNLIMITED,
            source: String::new(),
            window_start_ms: None,
        }
    }

    /// One run, its final report, and the results it stored, in page order.
    async fn run(&self, cfg: &StreamConfig) -> (RunReport, Vec<ResultRecord>) {
        let outcome = self.runner.run(cfg, Instant::now()).await;
        let RunOutcome::Paged(report) = outcome else {
            panic!("a sweep runs paged, got {outcome:?}");
        };
        let mut results: Vec<ResultRecord> = self
            .outbox
            .after(0, 100_000)
            .into_iter()
            .filter_map(|(_, event)| match event {
                Event::Results(r) if r.run_id == report.run_id => {
                    Some(std::sync::Arc::unwrap_or_clone(r))
                }
                _ => None,
            })
            .collect();
        results.sort_by_key(|r| r.page);
        (*report, results)
    }
}

/// `(city, state)` of each result's reading.
fn places(results: &[ResultRecord]) -> Vec<(String, String)> {
    results
        .iter()
        .map(|r| {
            let m = r.measurement.as_ref().expect("each city has a reading");
            (
                m.city.clone().expect("city"),
                m.state.clone().expect("state"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_state_sweep_lists_its_cities_once_and_stores_each_city_as_its_own_object() {
    let rig = rig().await;
    let state = "Lesser Poland Voivodeship";
    let listed = rig
        .sim
        .listing(
            &format!("cities?country=Poland&state={}", state.replace(' ', "%20")),
            "city",
        )
        .await;
    assert_eq!(listed, ["Krakow", "Nowy Sacz", "Tarnow", "Zakopane"]);
    let cfg = rig.sweep(&[("country", "Poland"), ("state", state)], 1_000, 2_000);

    let before = rig.sim.requests().await;
    let (report, results) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Stored, "{report:?}");
    assert_eq!(report.message, None);
    // One listing call (the state is given: no states call), then one call per city.
    assert_eq!(rig.sim.requests().await - before, 1 + 4);
    assert_eq!((report.pages, report.attempts), (4, 5));
    let expected: Vec<(String, String)> = listed
        .iter()
        .map(|c| (c.clone(), state.to_string()))
        .collect();
    assert_eq!(places(&results), expected);
    assert_eq!(
        results.iter().map(|r| r.page).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    for result in &results {
        // Its own object, holding exactly that city's answer.
        let body = rig
            .store
            .get(&result.bucket, &result.key)
            .await
            .expect("stored object");
        assert_eq!(body.len() as u64, result.size);
        let json: Value = serde_json::from_slice(&body).expect("JSON");
        let m = result.measurement.as_ref().unwrap();
        assert_eq!(json["data"]["city"], m.city.clone().unwrap().as_str());
        assert!(m.aqius.is_some(), "{m:?}");
        assert!(!result.ends_run);
    }
    let keys: std::collections::BTreeSet<_> = results.iter().map(|r| &r.key).collect();
    assert_eq!(keys.len(), 4, "one object per city");

    // The next run uses the cached list: no listing call, each city once more.
    let before = rig.sim.requests().await;
    let (report, again) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Stored);
    assert_eq!(rig.sim.requests().await - before, 4);
    assert_eq!(places(&again), expected);
}

#[tokio::test]
async fn a_country_sweep_lists_every_state_and_fetches_every_city_once_per_run() {
    let rig = rig().await;
    let states = rig.sim.listing("states?country=Poland", "state").await;
    assert_eq!(
        states,
        [
            "Lesser Poland Voivodeship",
            "Lower Silesia",
            "Mazovia",
            "Pomerania",
            "Silesia"
        ]
    );
    let mut expected = Vec::new();
    for state in &states {
        let path = format!("cities?country=Poland&state={}", state.replace(' ', "%20"));
        for city in rig.sim.listing(&path, "city").await {
            expected.push((city, state.clone()));
        }
    }
    assert_eq!(expected.len(), 17);
    let cfg = rig.sweep(&[("country", "Poland")], 1_500, 3_000);

    let before = rig.sim.requests().await;
    let (report, results) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Stored, "{report:?}");
    // The states, the cities of each of the 5 states, then the 17 cities.
    assert_eq!(rig.sim.requests().await - before, 1 + 5 + 17);
    assert_eq!(places(&results), expected);
    assert!(results.iter().all(|r| r.run_id == report.run_id));

    let before = rig.sim.requests().await;
    let (report, results) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Stored);
    assert_eq!(report.attempts, 17);
    assert_eq!(rig.sim.requests().await - before, 17);
    assert_eq!(places(&results), expected);
}

#[tokio::test]
async fn the_cities_are_spread_evenly_over_nine_tenths_of_the_interval() {
    let rig = rig().await;
    let cfg = rig.sweep(&[("country", "Poland"), ("state", "Mazovia")], 2_000, 4_000);
    rig.run(&cfg).await; // lists the cities
    let (report, results) = rig.run(&cfg).await;
    assert_eq!(results.len(), 4, "{report:?}");
    // step = min(2,000, 4,000) × 0.9 / 4 = 450 ms.
    let times: Vec<i64> = results.iter().map(|r| r.fetched_at_ms).collect();
    assert!(
        times[0] - report.started_at_ms < 150,
        "the first city comes at once: {times:?} from {}",
        report.started_at_ms
    );
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((350..=600).contains(&gap), "gap {gap} ms: {times:?}");
    }
    let last = times[3] - report.started_at_ms;
    assert!(
        last < 1_800 + 150,
        "the last city starts within 90 % of the interval: {last} ms"
    );
}

#[tokio::test]
async fn a_rate_limit_on_one_city_blocks_the_key_and_the_sweep_goes_on() {
    let rig = rig().await;
    let cfg = rig.sweep(
        &[
            ("country", "Poland"),
            ("state", "Lesser Poland Voivodeship"),
        ],
        2_000,
        4_000,
    );
    rig.run(&cfg).await; // lists the cities
    rig.sim.fault("too_many_requests", 1).await;
    let before = rig.sim.requests().await;
    let (report, results) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Stored, "{report:?}");
    assert_eq!(
        report.message.as_deref(),
        Some("1 of 4 cities failed: rate_limited ×1 (Krakow)")
    );
    assert_eq!(
        places(&results)
            .into_iter()
            .map(|(c, _)| c)
            .collect::<Vec<_>>(),
        ["Nowy Sacz", "Tarnow", "Zakopane"]
    );
    assert_eq!(
        results.iter().map(|r| r.page).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // `too_many_requests` blocks the key for a second: Nowy Sacz, due at 450 ms, waits for it.
    let waited = results[0].fetched_at_ms - report.started_at_ms;
    assert!(waited >= 1_000, "the next city waited {waited} ms");
    // Krakow is not fetched again in this run.
    assert_eq!(rig.sim.requests().await - before, 4);
}

#[tokio::test]
async fn a_bad_key_fails_the_discovery_and_stops_the_stream() {
    let rig = rig().await;
    let mut cfg = rig.sweep(&[("country", "Poland")], 1_000, 2_000);
    cfg.secret_key = "9e8d7c6b-not-the-key".into();
    let (report, results) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.class, Some(FailureClass::Auth));
    assert!(report.stream_stopped);
    let message = report.message.unwrap();
    assert_eq!(message, "incorrect_api_key (listing the states of Poland)");
    assert!(results.is_empty());
}

#[tokio::test]
async fn a_key_that_expires_mid_sweep_ends_the_run_at_once() {
    let rig = rig().await;
    let cfg = rig.sweep(&[("country", "Poland"), ("state", "Silesia")], 1_000, 2_000);
    rig.run(&cfg).await; // lists the cities
    rig.sim.fault("api_key_expired", 1).await;
    let before = rig.sim.requests().await;
    let (report, results) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.class, Some(FailureClass::Auth));
    assert!(report.stream_stopped);
    assert_eq!(report.message.as_deref(), Some("api_key_expired"));
    assert!(results.is_empty());
    assert_eq!(
        rig.sim.requests().await - before,
        1,
        "no city after the first"
    );
    assert!(!format!("{report:?}").contains(KEY));
}

#[tokio::test]
async fn unknown_names_fail_the_run_with_the_listing_error() {
    let rig = rig().await;
    let cfg = rig.sweep(&[("country", "Narnia")], 1_000, 2_000);
    let (report, _) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(report.class, Some(FailureClass::Api));
    assert!(!report.stream_stopped);
    assert_eq!(
        report.message.as_deref(),
        Some("country_not_found (listing the states of Narnia)")
    );

    let cfg = rig.sweep(
        &[("country", "Poland"), ("state", "Atlantis")],
        1_000,
        2_000,
    );
    let (report, _) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Failed);
    assert_eq!(
        report.message.as_deref(),
        Some("state_not_found (listing the cities of Atlantis, Poland)")
    );
}

#[tokio::test]
async fn an_old_list_is_listed_again_and_kept_when_the_listing_fails() {
    let rig = rig_with(
        IqAir::new(reqwest::Client::new()).with_list_max_age(Duration::from_millis(1_500)),
    )
    .await;
    let cfg = rig.sweep(&[("country", "Poland"), ("state", "Pomerania")], 300, 1_000);
    let (_, first) = rig.run(&cfg).await;
    assert_eq!(first.len(), 2);
    tokio::time::sleep(Duration::from_millis(1_600)).await;

    // The list is old: listed again; the listing answers garbage, so the old list is swept.
    rig.sim.fault("not_json", 1).await;
    let before = rig.sim.requests().await;
    let (report, results) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Stored, "{report:?}");
    assert_eq!(places(&results), places(&first));
    assert_eq!(rig.sim.requests().await - before, 1 + 2);

    // A failed refresh is not tried again on every run.
    let before = rig.sim.requests().await;
    rig.run(&cfg).await;
    assert_eq!(rig.sim.requests().await - before, 2);

    // Once the pause is over, a good listing replaces the list.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let before = rig.sim.requests().await;
    let (report, _) = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Stored);
    assert_eq!(rig.sim.requests().await - before, 1 + 2);
}
