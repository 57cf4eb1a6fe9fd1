//! Sweep planning at stream creation ([`Sweeps::plan`]) against the IQAir simulator on loopback:
//! a sweep that fits its key, one refused with the arithmetic, the listing cache (and its
//! resumption after a rate limit), unknown names and a wrong key.

mod support;

use data_streams::sweep::{LimitWindowName, SweepBudget, SweepError, Sweeps};
use protocol::{RateLimit, Schedule};
use serde_json::{json, Map, Value};

use support::{Sim, IQAIR_KEY};

fn city_endpoint(sim: &Sim) -> String {
    format!("http://{}/v2/city", sim.addr)
}

fn params(value: Value) -> Map<String, Value> {
    value.as_object().expect("params are an object").clone()
}

fn every_minutes(minutes: u64) -> Schedule {
    Schedule::Interval {
        millis: minutes * 60_000,
    }
}

/// Requests the simulator has answered so far.
async fn requests(sim: &Sim) -> u64 {
    let stats: Value = reqwest::get(format!("http://{}/admin/stats", sim.addr))
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats JSON");
    stats["requests"].as_u64().expect("a request count")
}

async fn plan(
    sweeps: &Sweeps,
    sim: &Sim,
    key: &str,
    params_json: Value,
    schedule: Schedule,
) -> Result<Option<SweepBudget>, SweepError> {
    sweeps
        .plan(
            &city_endpoint(sim),
            &common::SecretKey::new(key),
            &params(params_json),
            &schedule,
            RateLimit::COMMUNITY,
        )
        .await
}

fn discovery_error(result: Result<Option<SweepBudget>, SweepError>) -> (String, Option<u64>) {
    match result {
        Err(SweepError::Discovery {
            message,
            retry_after_s,
        }) => {
            assert!(!message.contains(IQAIR_KEY), "key leaked: {message}");
            (message, retry_after_s)
        }
        other => panic!("expected a discovery error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_state_sweep_that_fits_gets_its_budget_and_the_lists_are_cached() {
    let sim = Sim::start().await;
    let sweeps = Sweeps::new();
    let state = json!({"country": "Poland", "state": "Lesser Poland Voivodeship"});
    let before = requests(&sim).await;
    let budget = plan(&sweeps, &sim, IQAIR_KEY, state.clone(), every_minutes(60))
        .await
        .expect("fits")
        .expect("a sweep");
    // Krakow, Nowy Sacz, Tarnow, Zakopane; one listing call, no states call.
    assert_eq!((budget.cities, budget.states_to_list), (4, 0));
    assert_eq!(
        (budget.runs_per_day, budget.calls_per_day),
        (24, 4 * 24 + 1)
    );
    assert_eq!(requests(&sim).await - before, 1);

    // Planned again (an edit of the stream): from the cache, no call.
    let before = requests(&sim).await;
    let again = plan(&sweeps, &sim, IQAIR_KEY, state, every_minutes(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.runs_per_day, 48);
    assert_eq!(requests(&sim).await - before, 0);
}

#[tokio::test]
async fn a_country_sweep_too_big_for_the_key_is_refused_with_the_arithmetic() {
    let sim = Sim::start().await;
    let sweeps = Sweeps::new();
    let poland = json!({"country": "Poland"});
    let refusal = match plan(&sweeps, &sim, IQAIR_KEY, poland.clone(), every_minutes(15)).await {
        Err(SweepError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refusal.message,
        "17 cities × 96 runs a day = 1,632 calls a day; the key allows 500"
    );
    assert_eq!(refusal.window, LimitWindowName::Day);
    assert_eq!(refusal.limit, 500);
    // 17 cities in 5 voivodeships: the states call and 5 cities calls a day on top.
    assert_eq!(refusal.budget.states_to_list, 5);
    assert_eq!(refusal.calls, 1_632 + 6);
    // The month binds: 31 × (17 r + 6) ≤ 10,000 allows 18 runs a day, every 80 minutes.
    assert_eq!(refusal.interval_that_fits_ms, Some(80 * 60_000));

    let fits = plan(&sweeps, &sim, IQAIR_KEY, poland.clone(), every_minutes(80))
        .await
        .expect("the offered interval fits")
        .unwrap();
    assert_eq!(fits.cities, 17);
    match plan(&sweeps, &sim, IQAIR_KEY, poland, every_minutes(60)).await {
        Err(SweepError::Refused(refusal)) => {
            assert_eq!(refusal.window, LimitWindowName::Month);
            assert_eq!(
                refusal.message,
                "17 cities × 744 runs a month = 12,648 calls a month; the key allows 10,000"
            );
        }
        other => panic!("hourly is too often for a month: {other:?}"),
    }
}

#[tokio::test]
async fn streams_that_are_not_sweeps_need_no_plan() {
    let sim = Sim::start().await;
    let sweeps = Sweeps::new();
    for not_a_sweep in [
        json!({"city": "Krakow", "state": "Lesser Poland Voivodeship", "country": "Poland"}),
        json!({"lat": 50.06, "lon": 19.94}),
        json!({}),
    ] {
        assert_eq!(
            plan(&sweeps, &sim, IQAIR_KEY, not_a_sweep, every_minutes(15)).await,
            Ok(None)
        );
    }
    // A country on nearest_city is no sweep here; the stream validation refuses it.
    let nearest = format!("http://{}/v2/nearest_city", sim.addr);
    let planned = sweeps
        .plan(
            &nearest,
            &common::SecretKey::new(IQAIR_KEY),
            &params(json!({"country": "Poland"})),
            &every_minutes(15),
            RateLimit::COMMUNITY,
        )
        .await;
    assert_eq!(planned, Ok(None));
    assert_eq!(requests(&sim).await, 0);
}

#[tokio::test]
async fn unknown_names_are_refused_with_what_iqair_lists() {
    let sim = Sim::start().await;
    let sweeps = Sweeps::new();
    let (message, retry) = discovery_error(
        plan(
            &sweeps,
            &sim,
            IQAIR_KEY,
            json!({"country": "Narnia"}),
            every_minutes(60),
        )
        .await,
    );
    assert_eq!(
        message,
        "IQAir lists no country \"Narnia\"; use the English name GET /v2/countries gives (e.g. \"Poland\", \"USA\")"
    );
    assert_eq!(retry, None);
    let (message, retry) = discovery_error(
        plan(
            &sweeps,
            &sim,
            IQAIR_KEY,
            json!({"country": "Poland", "state": "Atlantis"}),
            every_minutes(60),
        )
        .await,
    );
    assert_eq!(
        message,
        "IQAir lists no state \"Atlantis\" in \"Poland\"; use a name GET /v2/states?country=Poland gives"
    );
    assert_eq!(retry, None);
}

#[tokio::test]
async fn a_wrong_key_is_named_as_the_problem_without_showing_it() {
    let sim = Sim::start().await;
    let sweeps = Sweeps::new();
    let wrong = "5d9f0c2a-wrong-key-for-this-test";
    let (message, retry) = discovery_error(
        plan(
            &sweeps,
            &sim,
            wrong,
            json!({"country": "Poland"}),
            every_minutes(60),
        )
        .await,
    );
    assert_eq!(
        message,
        "IQAir refused the key while listing the states of Poland (incorrect_api_key); check secret_key (Community keys expire after 12 months)"
    );
    assert!(!message.contains(wrong));
    assert_eq!(retry, None);
}

#[tokio::test]
async fn a_rate_limited_discovery_says_when_to_retry_and_keeps_what_it_counted() {
    // The Community minute: 5 calls; Poland needs 6 (the states, then 5 states' cities).
    let sim = Sim::start_with(iqair_sim::Limits::community()).await;
    let sweeps = Sweeps::new();
    let poland = json!({"country": "Poland"});
    let (message, retry) =
        discovery_error(plan(&sweeps, &sim, IQAIR_KEY, poland.clone(), every_minutes(120)).await);
    assert_eq!(
        message,
        "IQAir rate-limited this key while listing the cities of Silesia, Poland (call_per_minute_limit_reached); 5 lists are counted and kept; try again in 60 s"
    );
    assert_eq!(retry, Some(60));
    // Trying again asks only for the list still missing.
    let before = requests(&sim).await;
    let (_, retry) =
        discovery_error(plan(&sweeps, &sim, IQAIR_KEY, poland, every_minutes(120)).await);
    assert_eq!(retry, Some(60));
    assert_eq!(requests(&sim).await - before, 1);
}
