//! The IQAir adapter against the simulator: every success shape and every error class of
//! IQAIR.md ends as a typed outcome, and no error message carries the key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use iqair_sim::{self as sim, Limits, SimConfig};
use protocol::FailureClass;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use worker::adapters::{
    registry, Adapter, AdapterError, FetchRequest, Fetched, RateLimitScope, Retry,
};

/// Distinctive, so a leak into a message cannot be a coincidence.
const KEY: &str = "3f2b9c1e-7d4a-4e8b-9a6f-5c0d1e2f3a4b";

struct Sim {
    base: String,
    admin: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Sim {
    async fn start(config: SimConfig) -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sim::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Sim {
            base: format!("http://{addr}"),
            admin: reqwest::Client::new(),
            _stop: stop,
        }
    }

    async fn open() -> Sim {
        Sim::start(SimConfig {
            keys: vec![KEY.to_string()],
            limits: Limits::off(),
            slow_body: Duration::from_millis(400),
            ..SimConfig::default()
        })
        .await
    }

    fn endpoint(&self, name: &str) -> String {
        format!("{}/v2/{name}", self.base)
    }

    async fn fault(&self, fault: &str) {
        let response = self
            .admin
            .post(format!("{}/admin/faults", self.base))
            .json(&json!({"key": KEY, "fault": fault, "count": 1}))
            .send()
            .await
            .expect("admin request");
        assert_eq!(response.status().as_u16(), 201, "{fault}");
    }

    async fn stats(&self) -> Value {
        self.admin
            .get(format!("{}/admin/stats", self.base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON")
    }
}

fn adapter() -> Arc<dyn Adapter> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    registry(client).get("IQAIR_DAILY").expect("IQAIR_DAILY")
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn fetch(
    adapter: &dyn Adapter,
    endpoint: &str,
    key: &str,
    params: &BTreeMap<String, String>,
) -> Result<Fetched, AdapterError> {
    let key = common::SecretKey::new(key);
    let result = adapter
        .fetch(FetchRequest {
            endpoint,
            secret_key: &key,
            params,
        })
        .await;
    if let Err(err) = &result {
        assert!(!err.message.contains(KEY), "key leaked: {err}");
        assert!(!format!("{err:?}").contains(KEY), "key leaked: {err:?}");
    }
    result
}

fn expect_err(result: Result<Fetched, AdapterError>, what: &str) -> AdapterError {
    match result {
        Err(err) => err,
        Ok(fetched) => panic!("{what}: expected an error, got {:?}", fetched.measurement),
    }
}

fn expect_ok(result: Result<Fetched, AdapterError>, what: &str) -> Fetched {
    match result {
        Ok(fetched) => fetched,
        Err(err) => panic!("{what}: expected success, got {err}"),
    }
}

#[tokio::test]
async fn success_by_coordinates_keeps_the_body_and_parses_the_reading() {
    let sim = Sim::open().await;
    let adapter = adapter();
    assert_eq!(adapter.name(), "IQAIR_DAILY");
    let p = params(&[("lat", "52.52"), ("lon", "13.40")]);
    let fetched = expect_ok(
        fetch(&*adapter, &sim.endpoint("nearest_city"), KEY, &p).await,
        "nearest_city",
    );
    // The body is the API's JSON, decompressed, byte for byte what the reading came from.
    let body: Value = serde_json::from_slice(&fetched.body).expect("stored body is JSON");
    assert_eq!(body["status"], "success");
    let m = fetched.measurement.expect("a reading");
    assert_eq!(m.city.as_deref(), Some("Berlin"));
    assert_eq!(m.country.as_deref(), Some("Germany"));
    assert_eq!((m.lat, m.lon), (Some(52.52), Some(13.405)));
    let pollution = &body["data"]["current"]["pollution"];
    assert_eq!(m.pollution_ts.as_deref(), pollution["ts"].as_str());
    assert_eq!(m.aqius, pollution["aqius"].as_f64());
    assert_eq!(m.mainus.as_deref(), pollution["mainus"].as_str());
    assert_eq!(m.aqicn, pollution["aqicn"].as_f64());
    assert_eq!(m.maincn.as_deref(), pollution["maincn"].as_str());
    let weather = &body["data"]["current"]["weather"];
    assert_eq!(m.weather_ts.as_deref(), weather["ts"].as_str());
    assert_eq!(m.tp, weather["tp"].as_f64());
    assert_eq!(m.ws, weather["ws"].as_f64());
    assert_eq!(m.ic.as_deref(), weather["ic"].as_str());
    assert_eq!(m.heat_index, weather["heatIndex"].as_f64());
}

#[tokio::test]
async fn success_by_city_and_by_ip() {
    let sim = Sim::open().await;
    let adapter = adapter();
    let p = params(&[
        ("city", "Los Angeles"),
        ("state", "California"),
        ("country", "USA"),
    ]);
    let fetched = expect_ok(
        fetch(&*adapter, &sim.endpoint("city"), KEY, &p).await,
        "city",
    );
    let m = fetched.measurement.expect("a reading");
    assert_eq!(m.city.as_deref(), Some("Los Angeles"));
    assert_eq!(m.state.as_deref(), Some("California"));
    assert!(m.aqius.is_some() && m.pollution_ts.is_some());

    let fetched = expect_ok(
        fetch(
            &*adapter,
            &sim.endpoint("nearest_city"),
            KEY,
            &BTreeMap::new(),
        )
        .await,
        "IP mode",
    );
    assert!(fetched.measurement.is_some());

    // A listing endpoint is stored, but holds no reading.
    let fetched = expect_ok(
        fetch(&*adapter, &sim.endpoint("countries"), KEY, &BTreeMap::new()).await,
        "countries",
    );
    assert!(fetched.measurement.is_none());
    assert!(!fetched.body.is_empty());
}

#[tokio::test]
async fn zero_coordinates_are_sent_not_dropped() {
    let sim = Sim::open().await;
    let adapter = adapter();
    let p = params(&[("lat", "0"), ("lon", "0")]);
    let fetched = expect_ok(
        fetch(&*adapter, &sim.endpoint("nearest_city"), KEY, &p).await,
        "0,0",
    );
    let m = fetched.measurement.expect("a reading");
    // IP mode would have answered Los Angeles; the simulator saw the point (0, 0).
    assert_eq!(m.city.as_deref(), Some("Grid 0.0N 0.0E"));
    assert_eq!((m.lat, m.lon), (Some(0.0), Some(0.0)));
}

#[tokio::test]
async fn every_fault_is_a_typed_outcome() {
    let sim = Sim::open().await;
    let adapter = adapter();
    let endpoint = sim.endpoint("nearest_city");
    let p = params(&[("lat", "40.71"), ("lon", "-74.01")]);
    let rate = |scope| (FailureClass::RateLimited, Retry::RateLimited(scope));
    let auth = (FailureClass::Auth, Retry::StopStream);
    let api = (FailureClass::Api, Retry::NextTick);
    let cases = [
        ("call_limit_reached", rate(RateLimitScope::Unknown)),
        (
            "call_per_minute_limit_reached",
            rate(RateLimitScope::Minute),
        ),
        ("call_per_day_limit_reached", rate(RateLimitScope::Day)),
        ("call_per_month_limit_reached", rate(RateLimitScope::Month)),
        ("too_many_requests", rate(RateLimitScope::Second)),
        ("fail_200", rate(RateLimitScope::Minute)),
        ("incorrect_api_key", auth),
        ("api_key_expired", auth),
        ("forbidden", auth),
        ("payment_required", auth),
        ("permission_denied", auth),
        ("feature_not_available", auth),
        ("city_not_found", api),
        ("no_nearest_city", api),
        ("bare_string", (FailureClass::InvalidBody, Retry::NextTick)),
        ("not_json", (FailureClass::InvalidBody, Retry::NextTick)),
        ("html_502", (FailureClass::Http, Retry::Transient)),
        ("html_504", (FailureClass::Http, Retry::Transient)),
        ("server_error", (FailureClass::Http, Retry::Transient)),
        ("truncated", (FailureClass::Network, Retry::Transient)),
    ];
    for (fault, (class, retry)) in cases {
        sim.fault(fault).await;
        let err = expect_err(fetch(&*adapter, &endpoint, KEY, &p).await, fault);
        assert_eq!(err.class, class, "{fault}: {err}");
        assert_eq!(err.retry, retry, "{fault}: {err}");
        assert!(!err.message.is_empty(), "{fault}");
    }
    // Messages say what happened.
    sim.fault("html_502").await;
    let err = expect_err(fetch(&*adapter, &endpoint, KEY, &p).await, "html_502");
    assert_eq!(err.message, "HTTP 502");
    sim.fault("forbidden").await;
    let err = expect_err(fetch(&*adapter, &endpoint, KEY, &p).await, "forbidden");
    assert_eq!(err.message, "Forbidden");
    sim.fault("bare_string").await;
    let err = expect_err(fetch(&*adapter, &endpoint, KEY, &p).await, "bare_string");
    assert!(err.message.contains("node not found"), "{err}");

    // Every fault was used up; the next fetch is a plain success.
    expect_ok(
        fetch(&*adapter, &endpoint, KEY, &p).await,
        "after the faults",
    );
}

#[tokio::test]
async fn odd_success_bodies_still_succeed() {
    let sim = Sim::open().await;
    let adapter = adapter();
    let endpoint = sim.endpoint("nearest_city");
    let p = params(&[("lat", "35.68"), ("lon", "139.65")]);

    sim.fault("missing_pollution").await;
    let fetched = expect_ok(
        fetch(&*adapter, &endpoint, KEY, &p).await,
        "missing_pollution",
    );
    let m = fetched.measurement.expect("a reading");
    assert_eq!(m.city.as_deref(), Some("Tokyo"));
    assert_eq!((m.pollution_ts, m.aqius, m.mainus), (None, None, None));
    assert!(m.tp.is_some() && m.weather_ts.is_some());

    sim.fault("missing_main").await;
    let fetched = expect_ok(fetch(&*adapter, &endpoint, KEY, &p).await, "missing_main");
    let m = fetched.measurement.expect("a reading");
    assert!(m.aqius.is_some() && m.aqicn.is_some());
    assert_eq!((m.mainus, m.maincn), (None, None));

    sim.fault("slow_body").await;
    let fetched = tokio::time::timeout(
        Duration::from_secs(10),
        fetch(&*adapter, &endpoint, KEY, &p),
    )
    .await
    .expect("slow, not stuck");
    let fetched = expect_ok(fetched, "slow_body");
    assert_eq!(
        fetched.measurement.and_then(|m| m.city).as_deref(),
        Some("Tokyo")
    );
}

#[tokio::test]
async fn hang_is_ended_by_the_callers_timeout() {
    let sim = Sim::open().await;
    let adapter = adapter();
    sim.fault("hang").await;
    let endpoint = sim.endpoint("nearest_city");
    let p = BTreeMap::new();
    let outcome = tokio::time::timeout(
        Duration::from_millis(300),
        fetch(&*adapter, &endpoint, KEY, &p),
    )
    .await;
    assert!(outcome.is_err(), "the caller's timeout fired");
    // The adapter is usable right after.
    expect_ok(fetch(&*adapter, &endpoint, KEY, &p).await, "after hang");
}

#[tokio::test]
async fn real_simulator_refusals_are_classified() {
    let sim = Sim::start(SimConfig {
        keys: vec![KEY.to_string()],
        limits: Limits {
            per_minute: 4,
            ..Limits::off()
        },
        ..SimConfig::default()
    })
    .await;
    let adapter = adapter();
    let nearest = sim.endpoint("nearest_city");
    let none = BTreeMap::new();

    // Wrong key: 401 incorrect_api_key.
    let wrong = "0000-wrong-key-0000";
    let err = expect_err(fetch(&*adapter, &nearest, wrong, &none).await, "wrong key");
    assert_eq!(
        (err.class, err.retry),
        (FailureClass::Auth, Retry::StopStream)
    );
    assert!(!err.message.contains(wrong));

    // Higher plan endpoint: permission_denied.
    let err = expect_err(
        fetch(&*adapter, &sim.endpoint("nearest_station"), KEY, &none).await,
        "nearest_station",
    );
    assert_eq!(
        (err.class, err.retry),
        (FailureClass::Auth, Retry::StopStream)
    );
    assert!(err.message.starts_with("permission_denied"));

    // Unknown city, bad coordinates: try again next tick.
    let unknown = params(&[("city", "Atlantis"), ("state", "Sea"), ("country", "Ocean")]);
    let err = expect_err(
        fetch(&*adapter, &sim.endpoint("city"), KEY, &unknown).await,
        "city",
    );
    assert_eq!((err.class, err.retry), (FailureClass::Api, Retry::NextTick));
    assert_eq!(err.message, "city_not_found");
    let bad = params(&[("lat", "123"), ("lon", "0")]);
    let err = expect_err(fetch(&*adapter, &nearest, KEY, &bad).await, "coordinates");
    assert_eq!(
        (err.class, err.message.as_str()),
        (FailureClass::Api, "wrong_coordinates")
    );

    // The per-minute window: every keyed call to a Community endpoint counts, the two 400s too.
    expect_ok(fetch(&*adapter, &nearest, KEY, &none).await, "first");
    expect_ok(fetch(&*adapter, &nearest, KEY, &none).await, "second");
    let err = expect_err(fetch(&*adapter, &nearest, KEY, &none).await, "third");
    assert_eq!(err.class, FailureClass::RateLimited);
    assert_eq!(err.retry, Retry::RateLimited(RateLimitScope::Minute));
    assert_eq!(err.message, "call_per_minute_limit_reached");

    let stats = sim.stats().await;
    assert_eq!(stats["ok"], 2);
    assert_eq!(stats["rate_limited"], 1);
}

#[tokio::test]
async fn connection_refused_is_a_network_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let adapter = adapter();
    let endpoint = format!("http://{addr}/v2/nearest_city");
    let p = params(&[("lat", "1"), ("lon", "2")]);
    let err = expect_err(fetch(&*adapter, &endpoint, KEY, &p).await, "refused");
    assert_eq!(
        (err.class, err.retry),
        (FailureClass::Network, Retry::Transient)
    );
    assert!(!err.message.contains(KEY));
    assert!(!err.message.contains("key="), "{err}");
}

#[tokio::test]
async fn a_bad_endpoint_stops_the_stream() {
    let adapter = adapter();
    let p = BTreeMap::new();
    for endpoint in ["not a url", "ftp://127.0.0.1/v2/city"] {
        let err = expect_err(fetch(&*adapter, endpoint, KEY, &p).await, endpoint);
        assert_eq!(err.retry, Retry::StopStream, "{endpoint}");
    }
}
