//! The AQI report (`Db::aqi_report`) against figures computed by hand, on both backends.

use data_streams::db::{Db, GroupBy, GroupFigures, GroupKey, ReportFilter};
use protocol::Measurement;

use crate::fixtures::{reading, result, stream, T0};

const HOUR: i64 = 3_600_000;

/// A reading of `place` (country, state, city) for the hour `hour` after T0.
fn at(place: (&str, &str, &str), hour: i64, aqius: Option<f64>, main: Option<&str>) -> Measurement {
    let mut m = reading(T0 + hour * HOUR, aqius.unwrap_or_default());
    m.country = Some(place.0.to_owned());
    m.state = Some(place.1.to_owned());
    m.city = Some(place.2.to_owned());
    m.aqius = aqius;
    m.mainus = main.map(str::to_owned);
    m
}

const KRAKOW: (&str, &str, &str) = ("Poland", "Lesser Poland", "Krakow");
const WARSAW: (&str, &str, &str) = ("Poland", "Masovia", "Warsaw");
const BERLIN: (&str, &str, &str) = ("Germany", "Berlin", "Berlin");
const PARIS: (&str, &str, &str) = ("France", "Ile-de-France", "Paris");

/// Four streams' readings over three hours: Poland has 3 of 5 over 100, Germany one with an AQI
/// and one without, France none with an AQI (no pollution data at all). Returns the streams.
async fn fixture(db: &Db) -> [uuid::Uuid; 4] {
    let [a, b, c, d] = [
        stream(db, T0).await.id,
        stream(db, T0 + 1).await.id,
        stream(db, T0 + 2).await.id,
        stream(db, T0 + 3).await.id,
    ];
    let readings = [
        (a, at(KRAKOW, 0, Some(150.0), Some("p2"))),
        (a, at(KRAKOW, 1, Some(90.0), Some("p2"))),
        (a, at(KRAKOW, 2, Some(120.0), Some("o3"))),
        (b, at(WARSAW, 0, Some(80.0), Some("p2"))),
        (b, at(WARSAW, 1, Some(110.0), Some("p2"))),
        (c, at(BERLIN, 0, Some(40.0), Some("p1"))),
        (c, at(BERLIN, 1, None, None)),
        (d, at(PARIS, 0, None, None)),
    ];
    let results: Vec<_> = readings
        .into_iter()
        .enumerate()
        .map(|(i, (s, m))| result(s, T0 + 10_000 + i as i64, Some(m)))
        .collect();
    let stats = db.persist_events(&results, &[]).await.expect("persist");
    assert_eq!(stats.measurements_inserted, 8);
    [a, b, c, d]
}

fn window(hours: i64) -> ReportFilter {
    ReportFilter {
        from_ms: T0,
        to_ms: T0 + hours * HOUR,
        ..ReportFilter::default()
    }
}

fn place(name: &str) -> GroupKey {
    GroupKey::Place(Some(name.to_owned()))
}

/// (t, readings, avg, max) of a group's series.
fn series(g: &GroupFigures) -> Vec<(i64, i64, Option<f64>, Option<f64>)> {
    g.series
        .iter()
        .map(|b| (b.t, b.readings, b.aqius_avg, b.aqius_max))
        .collect()
}

pub async fn report_by_country_matches_the_hand_computed_figures(db: Db) {
    fixture(&db).await;
    let groups = db
        .aqi_report(GroupBy::Country, HOUR, &window(3))
        .await
        .expect("a report");
    let keys: Vec<&GroupKey> = groups.iter().map(|g| &g.key).collect();
    assert_eq!(
        keys,
        [&place("Poland"), &place("Germany"), &place("France")],
        "most unhealthy first, then most readings"
    );
    let poland = &groups[0];
    assert_eq!(
        (poland.readings, poland.with_aqi, poland.unhealthy),
        (5, 5, 3)
    );
    assert_eq!(poland.aqius_avg, Some(110.0), "(150+90+120+80+110)/5");
    assert_eq!(
        (poland.aqius_min, poland.aqius_max),
        (Some(80.0), Some(150.0))
    );
    assert_eq!(poland.main_pollutant.as_deref(), Some("p2"), "4 of 5");
    assert_eq!(
        series(poland),
        [
            (T0, 2, Some(115.0), Some(150.0)),
            (T0 + HOUR, 2, Some(100.0), Some(110.0)),
            (T0 + 2 * HOUR, 1, Some(120.0), Some(120.0)),
        ]
    );
    let germany = &groups[1];
    assert_eq!(
        (germany.readings, germany.with_aqi, germany.unhealthy),
        (2, 1, 0)
    );
    assert_eq!(
        germany.aqius_avg,
        Some(40.0),
        "a reading without AQI is no zero"
    );
    assert_eq!(germany.main_pollutant.as_deref(), Some("p1"));
    assert_eq!(
        series(germany),
        [(T0, 1, Some(40.0), Some(40.0)), (T0 + HOUR, 1, None, None)]
    );
    let france = &groups[2];
    assert_eq!(
        (france.readings, france.with_aqi, france.unhealthy),
        (1, 0, 0),
        "a group with no pollution data"
    );
    assert_eq!(
        (france.aqius_avg, france.aqius_min, france.aqius_max),
        (None, None, None)
    );
    assert_eq!(france.main_pollutant, None);

    // A day bucket folds Poland's hours into one point.
    let by_day = db
        .aqi_report(GroupBy::Country, 24 * HOUR, &window(3))
        .await
        .expect("a report");
    assert_eq!(series(&by_day[0]), [(T0, 5, Some(110.0), Some(150.0))]);
}

pub async fn report_drills_down_and_windows(db: Db) {
    let [a, b, _, _] = fixture(&db).await;
    let poland = ReportFilter {
        country: Some("Poland".to_owned()),
        ..window(3)
    };
    let states = db
        .aqi_report(GroupBy::State, HOUR, &poland)
        .await
        .expect("a report");
    let figures: Vec<(GroupKey, i64, i64)> = states
        .iter()
        .map(|g| (g.key.clone(), g.readings, g.unhealthy))
        .collect();
    assert_eq!(
        figures,
        [(place("Lesser Poland"), 3, 2), (place("Masovia"), 2, 1)]
    );
    let masovia = ReportFilter {
        state: Some("Masovia".to_owned()),
        ..poland.clone()
    };
    let cities = db
        .aqi_report(GroupBy::City, HOUR, &masovia)
        .await
        .expect("a report");
    assert_eq!(cities.len(), 1);
    assert_eq!((&cities[0].key, cities[0].readings), (&place("Warsaw"), 2));

    let streams = db
        .aqi_report(GroupBy::Stream, HOUR, &poland)
        .await
        .expect("a report");
    let keys: Vec<GroupKey> = streams.iter().map(|g| g.key.clone()).collect();
    assert_eq!(keys, [GroupKey::Stream(a), GroupKey::Stream(b)]);
    assert_eq!(streams[0].aqius_max, Some(150.0));

    // The window is [from, to): the third hour is outside a two-hour report.
    let two_hours = db
        .aqi_report(
            GroupBy::City,
            HOUR,
            &ReportFilter {
                city: Some("Krakow".to_owned()),
                ..window(2)
            },
        )
        .await
        .expect("a report");
    assert_eq!(two_hours[0].readings, 2);
    let empty = db
        .aqi_report(
            GroupBy::Country,
            HOUR,
            &ReportFilter {
                from_ms: T0 + 10 * HOUR,
                to_ms: T0 + 11 * HOUR,
                ..ReportFilter::default()
            },
        )
        .await
        .expect("a report of nothing");
    assert!(empty.is_empty(), "an empty range has no groups: {empty:?}");
    let nowhere = db
        .aqi_report(
            GroupBy::City,
            HOUR,
            &ReportFilter {
                country: Some("Atlantis".to_owned()),
                ..window(3)
            },
        )
        .await
        .expect("a report of nowhere");
    assert!(nowhere.is_empty());
}
