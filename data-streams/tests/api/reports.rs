//! `GET /reports/aqi` through the API, on both backends: the groups, the total that a page's
//! sentence is made of, the drill-down parameters, and what a caller gets wrong.

use serde_json::json;
use uuid::Uuid;

use crate::support::{reading, result, spawn_app_on, Backend, T0};

crate::on_both_backends! {
    crate::support::with_backend: [
        super::the_report_sums_up_readings_by_place => the_report_sums_up_readings_by_place,
    ],
}

const HOUR: i64 = 3_600_000;

async fn the_report_sums_up_readings_by_place(backend: Backend) {
    let app = spawn_app_on(backend).await;
    let (a, b) = (app.create_stopped().await, app.create_stopped().await);
    let (a, b) = (
        Uuid::parse_str(&a).expect("an id"),
        Uuid::parse_str(&b).expect("an id"),
    );
    // Berlin (the fixture's place): 160 and 60; Krakow: 120.
    let mut krakow = reading(T0, 120.0);
    krakow.country = Some("Poland".into());
    krakow.state = Some("Lesser Poland".into());
    krakow.city = Some("Krakow".into());
    let results = [
        result(a, T0 + 1, Some(reading(T0, 160.0))),
        result(a, T0 + 2, Some(reading(T0 + HOUR, 60.0))),
        result(b, T0 + 3, Some(krakow)),
    ];
    app.db()
        .persist_events(&results, &[])
        .await
        .expect("persist");
    let window = format!("from={}&to={}", T0, T0 + 2 * HOUR);

    let (status, report) = app.get(&format!("/reports/aqi?{window}")).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["group_by"], "country");
    assert_eq!(report["bucket"], "hour");
    assert_eq!(
        report["total"],
        json!({"readings": 3, "unhealthy": 2, "unhealthy_share": 2.0 / 3.0})
    );
    let groups = report["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{report}");
    let germany = &groups[0];
    assert_eq!(
        germany["key"], "Germany",
        "a tie on unhealthy: more readings first"
    );
    assert_eq!(germany["readings"], 2);
    assert_eq!(germany["unhealthy_share"], 0.5);
    assert_eq!(germany["aqius_avg"], 110.0);
    assert_eq!(germany["main_pollutant"], "p2");
    assert_eq!(
        germany["series"],
        json!([
            {"t": "2026-01-01T00:00:00.000Z", "readings": 1, "aqius_avg": 160.0, "aqius_max": 160.0},
            {"t": "2026-01-01T01:00:00.000Z", "readings": 1, "aqius_avg": 60.0, "aqius_max": 60.0},
        ])
    );

    let (status, states) = app
        .get(&format!(
            "/reports/aqi?{window}&group_by=city&country=Poland&bucket=day"
        ))
        .await;
    assert_eq!(status, 200, "{states}");
    assert_eq!(states["groups"][0]["key"], "Krakow");
    assert_eq!(states["groups"].as_array().map(Vec::len), Some(1));
    let (_, streams) = app
        .get(&format!("/reports/aqi?{window}&group_by=stream"))
        .await;
    assert_eq!(streams["groups"][0]["key"], a.to_string());
    assert_eq!(streams["groups"][1]["key"], b.to_string());

    for bad in [
        "group_by=planet",
        "bucket=minute",
        "from=yesterday",
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
    ] {
        let (status, body) = app.get(&format!("/reports/aqi?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["detail"]["code"], "bad_request");
    }
    let (status, _) = app.anonymous.get("/reports/aqi").await;
    assert_eq!(status, 401);
}
