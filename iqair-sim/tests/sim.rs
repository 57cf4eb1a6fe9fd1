//! The IQAir simulator over real sockets: endpoints, headers, gzip, keys, rate limits, faults,
//! the admin API and shutdown.

use std::time::{Duration, Instant};

use iqair_sim::{self as sim, Fault, FaultRule, Limits, SimConfig, Stats};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Sim {
    base: String,
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Sim {
    async fn start(config: SimConfig) -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sim::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Sim {
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    async fn start_open() -> Sim {
        Sim::start(SimConfig {
            keys: vec!["k1".into(), "k2".into()],
            limits: Limits::off(),
            ..SimConfig::default()
        })
        .await
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.url(path_and_query))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(format!("<not json> {}", String::from_utf8_lossy(&bytes)))
        });
        (status, body)
    }

    async fn raw(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(self.url(path_and_query))
            .send()
            .await
            .expect("request")
    }

    async fn fault(&self, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url("/admin/faults"))
            .json(&body)
            .send()
            .await
            .expect("admin request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("admin JSON"))
    }

    async fn stats(&self) -> Stats {
        self.raw("/admin/stats")
            .await
            .json()
            .await
            .expect("stats JSON")
    }

    async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the simulator stops within 5 s")
            .expect("the serve task does not panic")
    }
}

fn message(body: &Value) -> &str {
    body["data"]["message"].as_str().unwrap_or("<no message>")
}

#[tokio::test]
async fn listing_endpoints() {
    let sim = Sim::start_open().await;
    let (status, body) = sim.get("/v2/countries?key=k1").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "success");
    let countries: Vec<&str> = body["data"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["country"].as_str())
        .collect();
    assert!(countries.contains(&"USA") && countries.contains(&"Germany"));

    let (status, body) = sim.get("/v2/states?country=USA&key=k1").await;
    assert_eq!(status, 200);
    assert!(body["data"]
        .as_array()
        .expect("array")
        .contains(&json!({"state": "California"})));

    let (status, body) = sim
        .get("/v2/cities?state=New%20South%20Wales&country=Australia&key=k1")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"], json!([{"city": "Sydney"}]));

    let (status, body) = sim.get("/v2/states?country=Atlantis&key=k1").await;
    assert_eq!((status, message(&body)), (400, "country_not_found"));
    let (status, body) = sim.get("/v2/cities?state=Bavaria&country=USA&key=k1").await;
    assert_eq!((status, message(&body)), (400, "state_not_found"));
    let (status, body) = sim
        .get("/v2/cities?state=Texas&country=Narnia&key=k1")
        .await;
    assert_eq!((status, message(&body)), (400, "country_not_found"));
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn city_endpoints_have_the_community_shape() {
    let sim = Sim::start_open().await;
    let (status, body) = sim.get("/v2/nearest_city?lat=52.52&lon=13.40&key=k1").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "success");
    let data = &body["data"];
    assert_eq!(
        (&data["city"], &data["state"], &data["country"]),
        (&json!("Berlin"), &json!("Berlin"), &json!("Germany"))
    );
    assert_eq!(
        data["location"],
        json!({"type": "Point", "coordinates": [13.405, 52.52]})
    );
    let pollution = &data["current"]["pollution"];
    for field in ["ts", "mainus", "maincn"] {
        assert!(pollution[field].is_string(), "{field}");
    }
    for field in ["aqius", "aqicn"] {
        assert!(pollution[field].is_u64(), "{field}");
    }
    let ts = pollution["ts"].as_str().unwrap_or("");
    assert_eq!(ts.len(), "2026-01-01T00:00:00.000Z".len());
    assert!(ts.ends_with(":00:00.000Z"), "{ts}");
    let weather = &data["current"]["weather"];
    for field in ["ts", "ic"] {
        assert!(weather[field].is_string(), "{field}");
    }
    for field in ["tp", "pr", "hu", "ws", "wd", "heatIndex"] {
        assert!(weather[field].is_number(), "{field}");
    }

    // IP mode: a fixed city. lat/lon 0 is a real point, not IP mode.
    let (_, ip) = sim.get("/v2/nearest_city?key=k1").await;
    assert_eq!(ip["data"]["city"], "Los Angeles");
    let (status, zero) = sim.get("/v2/nearest_city?lat=0&lon=0&key=k1").await;
    assert_eq!(status, 200);
    assert_eq!(zero["data"]["city"], "Grid 0.0N 0.0E");
    assert_eq!(zero["data"]["location"]["coordinates"], json!([0.0, 0.0]));
    // Different places, different data.
    let (_, elsewhere) = sim
        .get("/v2/nearest_city?lat=-45.5&lon=-120.25&key=k1")
        .await;
    assert_eq!(elsewhere["data"]["city"], "Grid 45.5S 120.3W");
    assert_ne!(elsewhere["data"]["current"], zero["data"]["current"]);

    let (status, beijing) = sim
        .get("/v2/city?city=Beijing&state=Beijing&country=China&key=k2")
        .await;
    assert_eq!(status, 200);
    assert_eq!(beijing["data"]["city"], "Beijing");
    assert_ne!(beijing["data"]["current"], body["data"]["current"]);

    for query in [
        "/v2/city?city=Beijing&state=Shanghai&country=China&key=k1",
        "/v2/city?city=beijing&state=Beijing&country=China&key=k1",
        "/v2/city?city=Beijing&key=k1",
    ] {
        let (status, body) = sim.get(query).await;
        assert_eq!((status, message(&body)), (400, "city_not_found"), "{query}");
    }
    for query in [
        "/v2/nearest_city?lat=91&lon=0&key=k1",
        "/v2/nearest_city?lat=abc&lon=0&key=k1",
        "/v2/nearest_city?lat=10&key=k1",
    ] {
        let (status, body) = sim.get(query).await;
        assert_eq!(
            (status, message(&body)),
            (400, "wrong_coordinates"),
            "{query}"
        );
    }
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn readings_are_stable_within_the_hour() {
    let sim = Sim::start_open().await;
    let query = "/v2/city?city=Delhi&state=Delhi&country=India&key=k1";
    let (_, first) = sim.get(query).await;
    let (_, second) = sim.get(query).await;
    let pollution = |v: &Value| v["data"]["current"]["pollution"].clone();
    if pollution(&first)["ts"] == pollution(&second)["ts"] {
        assert_eq!(first, second);
    } else {
        // The UTC hour turned between the two calls; the next two must agree.
        let (_, third) = sim.get(query).await;
        let (_, fourth) = sim.get(query).await;
        assert_eq!(third, fourth);
    }
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn higher_plan_and_unknown_paths() {
    let sim = Sim::start_open().await;
    for endpoint in ["stations", "nearest_station", "station", "city_ranking"] {
        let (status, body) = sim.get(&format!("/v2/{endpoint}?key=k1")).await;
        assert_eq!(status, 403, "{endpoint}");
        assert!(message(&body).starts_with("permission_denied"), "{body}");
    }
    for path in [
        "/v2/nope?key=k1",
        "/v3/city?key=k1",
        "/",
        "/v2/city/extra?key=k1",
    ] {
        let (status, body) = sim.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["status"], "fail", "{path}");
    }
    let post = sim
        .client
        .post(sim.url("/v2/countries?key=k1"))
        .send()
        .await
        .expect("request");
    assert_eq!(post.status().as_u16(), 405);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn keys_are_checked_from_the_query_only() {
    let sim = Sim::start_open().await;
    for query in [
        "/v2/countries",
        "/v2/countries?key=",
        "/v2/countries?key=K1",
        "/v2/countries?key=nope",
        "/v2/nearest_city?lat=1&lon=1&key=k3",
    ] {
        let (status, body) = sim.get(query).await;
        assert_eq!(
            (status, message(&body)),
            (401, "incorrect_api_key"),
            "{query}"
        );
    }
    let in_header = sim
        .client
        .get(sim.url("/v2/countries"))
        .header("key", "k1")
        .header("authorization", "Bearer k1")
        .send()
        .await
        .expect("request");
    assert_eq!(in_header.status().as_u16(), 401);
    assert_eq!(sim.get("/v2/countries?key=k1").await.0, 200);
    assert_eq!(sim.get("/v2/countries?key=k2").await.0, 200);
    let stats = sim.stats().await;
    assert_eq!(stats.unauthorized, 6);
    assert_eq!(stats.requests, 8);
    assert_eq!(stats.by_key.get("k1"), Some(&1));
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn captured_headers_and_no_rate_limit_headers() {
    let sim = Sim::start(SimConfig {
        keys: vec!["k1".into()],
        limits: Limits {
            per_minute: 1,
            ..Limits::community()
        },
        ..SimConfig::default()
    })
    .await;
    let ok = sim.raw("/v2/nearest_city?key=k1").await;
    let limited = sim.raw("/v2/nearest_city?key=k1").await;
    let unauthorized = sim.raw("/v2/nearest_city?key=zz").await;
    assert_eq!(
        [ok.status(), limited.status(), unauthorized.status()].map(|s| s.as_u16()),
        [200, 429, 401]
    );
    for response in [&ok, &limited, &unauthorized] {
        let h = response.headers();
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(get("content-type"), "application/json");
        assert_eq!(get("cache-control"), "no-store");
        assert_eq!(get("pragma"), "no-cache");
        assert_eq!(get("access-control-allow-origin"), "*");
        assert_eq!(
            get("access-control-allow-headers"),
            "Origin, X-Requested-With, Content-Type, Accept"
        );
        assert!(get("vary").eq_ignore_ascii_case("accept-encoding"));
        for name in h.keys() {
            let name = name.as_str();
            assert!(
                !name.contains("ratelimit") && name != "retry-after",
                "unexpected header {name}"
            );
        }
    }
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn gzip_when_the_client_accepts_it() {
    let sim = Sim::start_open().await;
    let plain = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client");
    let url = sim.url("/v2/nearest_city?lat=35.68&lon=139.65&key=k1");
    let gzipped = plain
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(
        gzipped
            .headers()
            .get("content-encoding")
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let bytes = gzipped.bytes().await.expect("body");
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");

    let identity = plain.get(&url).send().await.expect("request");
    assert!(identity.headers().get("content-encoding").is_none());
    let text = identity.text().await.expect("body");
    assert!(text.starts_with(r#"{"status":"success""#), "{text}");

    // reqwest (gzip feature) asks for gzip and decodes it transparently.
    let decoded = sim
        .raw("/v2/nearest_city?lat=35.68&lon=139.65&key=k1")
        .await;
    let value: Value = decoded.json().await.expect("decoded JSON");
    assert_eq!(value["data"]["city"], "Tokyo");
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn each_window_answers_with_its_message() {
    let short = Limits {
        per_second: 0,
        per_minute: 2,
        per_day: 0,
        per_month: 0,
        second_window: Duration::from_millis(200),
        minute_window: Duration::from_millis(400),
    };
    let sim = Sim::start(SimConfig {
        keys: vec!["k1".into(), "k2".into()],
        limits: short,
        ..SimConfig::default()
    })
    .await;
    let q = "/v2/nearest_city?key=k1";
    assert_eq!(sim.get(q).await.0, 200);
    assert_eq!(sim.get(q).await.0, 200);
    let (status, body) = sim.get(q).await;
    assert_eq!(
        (status, message(&body)),
        (429, "call_per_minute_limit_reached")
    );
    // Limits are per key.
    assert_eq!(sim.get("/v2/nearest_city?key=k2").await.0, 200);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(sim.get(q).await.0, 200, "a new window opened");
    sim.stop().await.expect("clean stop");

    let per_second = Limits {
        per_second: 3,
        ..Limits::off()
    };
    let sim = Sim::start(SimConfig {
        keys: vec!["k1".into()],
        limits: Limits {
            second_window: Duration::from_millis(300),
            ..per_second
        },
        ..SimConfig::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(sim.get(q).await.0, 200);
    }
    let (status, body) = sim.get(q).await;
    assert_eq!((status, message(&body)), (429, "too_many_requests"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(sim.get(q).await.0, 200);
    sim.stop().await.expect("clean stop");

    let sim = Sim::start(SimConfig {
        keys: vec!["k1".into()],
        limits: Limits {
            per_day: 2,
            ..Limits::off()
        },
        ..SimConfig::default()
    })
    .await;
    assert_eq!(sim.get(q).await.0, 200);
    assert_eq!(sim.get(q).await.0, 200);
    for _ in 0..3 {
        let (status, body) = sim.get(q).await;
        assert_eq!(
            (status, message(&body)),
            (429, "call_per_day_limit_reached")
        );
    }
    let stats = sim.stats().await;
    assert_eq!((stats.ok, stats.rate_limited), (2, 3));
    // Reset opens every window again.
    let reset = sim
        .client
        .post(sim.url("/admin/reset"))
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status().as_u16(), 200);
    assert_eq!(
        sim.stats().await,
        Stats {
            by_key: [("k1".to_string(), 0)].into(),
            ..Stats::default()
        }
    );
    assert_eq!(sim.get(q).await.0, 200);
    sim.stop().await.expect("clean stop");

    let sim = Sim::start(SimConfig {
        keys: vec!["k1".into()],
        limits: Limits {
            per_month: 1,
            per_day: 5,
            ..Limits::off()
        },
        ..SimConfig::default()
    })
    .await;
    assert_eq!(sim.get(q).await.0, 200);
    let (status, body) = sim.get(q).await;
    assert_eq!(
        (status, message(&body)),
        (429, "call_per_month_limit_reached")
    );
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn every_fault_answers_as_documented() {
    let sim = Sim::start(SimConfig {
        keys: vec!["k1".into()],
        limits: Limits::off(),
        slow_body: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let fail_faults = [
        ("call_limit_reached", 429, "call_limit_reached"),
        (
            "call_per_minute_limit_reached",
            429,
            "call_per_minute_limit_reached",
        ),
        (
            "call_per_day_limit_reached",
            429,
            "call_per_day_limit_reached",
        ),
        (
            "call_per_month_limit_reached",
            429,
            "call_per_month_limit_reached",
        ),
        ("too_many_requests", 429, "too_many_requests"),
        ("incorrect_api_key", 401, "incorrect_api_key"),
        ("api_key_expired", 401, "api_key_expired"),
        ("forbidden", 403, "Forbidden"),
        ("payment_required", 402, "Payment Required"),
        (
            "permission_denied",
            403,
            "permission_denied (you don't have access to this endpoint)",
        ),
        ("feature_not_available", 403, "feature_not_available"),
        ("city_not_found", 400, "city_not_found"),
        ("no_nearest_city", 404, "no_nearest_city"),
        ("fail_200", 200, "call_per_minute_limit_reached"),
    ];
    let q = "/v2/nearest_city?lat=48.85&lon=2.35&key=k1";
    for (fault, status, expected) in fail_faults {
        let (admin, _) = sim
            .fault(json!({"key": "k1", "fault": fault, "count": 1}))
            .await;
        assert_eq!(admin, 201, "{fault}");
        let (got, body) = sim.get(q).await;
        assert_eq!(got, status, "{fault}");
        assert_eq!(
            body,
            json!({"status": "fail", "data": {"message": expected}})
        );
        assert_eq!(sim.get(q).await.0, 200, "{fault} used up");
    }

    let raw_faults = [
        (
            "bare_string",
            200,
            Some("application/json"),
            "\"node not found\"",
        ),
        (
            "not_json",
            200,
            Some("text/plain; charset=utf-8"),
            "This is a valid response, but it isn't JSON.",
        ),
        ("server_error", 500, None, ""),
    ];
    for (fault, status, content_type, expected) in raw_faults {
        sim.fault(json!({"key": null, "fault": fault, "count": 1}))
            .await;
        let response = sim.raw(q).await;
        assert_eq!(response.status().as_u16(), status, "{fault}");
        let got_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        assert_eq!(got_type, content_type, "{fault}");
        assert_eq!(response.text().await.expect("body"), expected, "{fault}");
    }
    for (fault, status, title) in [
        ("html_502", 502, "502 Bad Gateway"),
        ("html_504", 504, "504 Gateway Time-out"),
    ] {
        sim.fault(json!({"fault": fault, "count": 1})).await;
        let response = sim.raw(q).await;
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/html"[..])
        );
        let page = response.text().await.expect("body");
        assert!(page.contains(title) && page.starts_with("<html>"), "{page}");
    }

    sim.fault(json!({"key": "k1", "fault": "missing_pollution", "count": 1}))
        .await;
    let (status, body) = sim.get(q).await;
    assert_eq!(status, 200);
    assert!(body["data"]["current"].get("pollution").is_none(), "{body}");
    assert!(body["data"]["current"]["weather"].is_object());

    sim.fault(json!({"key": "k1", "fault": "missing_main", "count": 1}))
        .await;
    let (status, body) = sim.get(q).await;
    assert_eq!(status, 200);
    let pollution = &body["data"]["current"]["pollution"];
    assert!(pollution.get("mainus").is_none() && pollution.get("maincn").is_none());
    assert!(pollution["aqius"].is_u64());

    // Status override.
    sim.fault(json!({"key": "k1", "fault": "forbidden", "count": 1, "status": 200}))
        .await;
    let (status, body) = sim.get(q).await;
    assert_eq!((status, message(&body)), (200, "Forbidden"));

    let stats = sim.stats().await;
    assert_eq!(stats.faulted, 14 + 3 + 2 + 2 + 1);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn slow_body_trickles_but_completes() {
    let sim = Sim::start(SimConfig {
        keys: vec!["k1".into()],
        limits: Limits::off(),
        slow_body: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await;
    sim.fault(json!({"key": "k1", "fault": "slow_body", "count": 1}))
        .await;
    let started = Instant::now();
    let response = sim.raw("/v2/nearest_city?key=k1").await;
    let headers_after = started.elapsed();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().get("content-encoding").is_none());
    let body: Value = response.json().await.expect("complete JSON");
    let total = started.elapsed();
    assert_eq!(body["status"], "success");
    assert!(
        headers_after < Duration::from_millis(300),
        "{headers_after:?}"
    );
    assert!(total >= Duration::from_millis(400), "{total:?}");
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn truncated_declares_more_than_it_sends() {
    let sim = Sim::start_open().await;
    sim.fault(json!({"key": "k1", "fault": "truncated", "count": 2}))
        .await;

    // Over a raw socket: the declared length is larger than what arrives before the close.
    let mut socket = TcpStream::connect(sim.addr).await.expect("connect");
    let request =
        "GET /v2/nearest_city?key=k1 HTTP/1.1\r\nhost: sim\r\naccept-encoding: gzip\r\n\r\n";
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .expect("read");
    let text = String::from_utf8_lossy(&received);
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let declared: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !body.is_empty() && body.len() < declared,
        "{} of {declared}",
        body.len()
    );
    assert!(body.starts_with(r#"{"status":"success""#));

    // Through reqwest: reading the body fails.
    let response = sim.raw("/v2/nearest_city?key=k1").await;
    assert!(response.bytes().await.is_err());
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn hang_holds_until_the_client_gives_up_and_shutdown_ends_it() {
    let sim = Sim::start_open().await;
    sim.fault(json!({"key": null, "fault": "hang"})).await;
    let started = Instant::now();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        sim.raw("/v2/nearest_city?key=k1"),
    )
    .await;
    assert!(gave_up.is_err(), "no answer within 300 ms");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A request still hanging when the simulator stops gets a 503 and the server exits.
    let client = sim.client.clone();
    let url = sim.url("/v2/nearest_city?key=k2");
    let pending = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped_at = Instant::now();
    sim.stop().await.expect("clean stop");
    assert!(stopped_at.elapsed() < Duration::from_secs(2));
    let answer = pending.await.expect("task");
    if let Ok(response) = answer {
        assert_eq!(response.status().as_u16(), 503);
    }
}

#[tokio::test]
async fn admin_api_switches_faults_per_key_and_counts() {
    let sim = Sim::start_open().await;
    let q1 = "/v2/nearest_city?key=k1";
    let q2 = "/v2/nearest_city?key=k2";

    // Per key, with a count.
    let (status, body) = sim
        .fault(json!({"key": "k1", "fault": "server_error", "count": 2}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        body["active"],
        json!([{"key": "k1", "fault": "server_error", "remaining": 2, "status": null}])
    );
    assert_eq!(sim.get(q2).await.0, 200, "other keys are untouched");
    assert_eq!(sim.get(q1).await.0, 500);
    assert_eq!(sim.get(q1).await.0, 500);
    assert_eq!(sim.get(q1).await.0, 200, "the count ran out");

    // All keys, until cleared; the newest rule wins.
    sim.fault(json!({"key": null, "fault": "too_many_requests", "count": null}))
        .await;
    sim.fault(json!({"key": "k2", "fault": "city_not_found"}))
        .await;
    assert_eq!(message(&sim.get(q1).await.1), "too_many_requests");
    assert_eq!(message(&sim.get(q2).await.1), "city_not_found");
    assert_eq!(message(&sim.get(q2).await.1), "city_not_found");
    let listed: Value = sim
        .client
        .get(sim.url("/admin/faults"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["active"].as_array().map(Vec::len), Some(2));
    let cleared: Value = sim
        .client
        .delete(sim.url("/admin/faults"))
        .send()
        .await
        .expect("clear")
        .json()
        .await
        .expect("JSON");
    assert_eq!(cleared, json!({"cleared": 2}));
    assert_eq!(sim.get(q1).await.0, 200);
    assert_eq!(sim.get(q2).await.0, 200);

    // Mistakes are 400 with a reason.
    let (status, body) = sim.fault(json!({"fault": "no_such_fault"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unknown fault");
    assert_eq!(
        body["detail"]["known"].as_array().map(Vec::len),
        Some(Fault::ALL.len())
    );
    for bad in [
        json!({"key": "k9", "fault": "hang"}),
        json!({"fault": "hang", "count": 0}),
        json!({"fault": "hang", "status": 1000}),
        json!({"fault": "hang", "surprise": true}),
        json!({"count": 1}),
    ] {
        let (status, body) = sim.fault(bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let not_json = sim
        .client
        .post(sim.url("/admin/faults"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("request");
    assert_eq!(not_json.status().as_u16(), 400);

    let stats = sim.stats().await;
    assert_eq!(stats.requests, 9);
    assert_eq!(stats.faulted, 5);
    assert_eq!(stats.ok, 4);
    assert_eq!(stats.by_key.get("k1"), Some(&5));
    assert_eq!(stats.by_key.get("k2"), Some(&4));
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn faults_from_the_config_are_on_at_start() {
    let sim = Sim::start(SimConfig {
        keys: vec!["k1".into(), "expired".into()],
        limits: Limits::off(),
        faults: vec![FaultRule {
            key: Some("expired".into()),
            ..FaultRule::always(Fault::ApiKeyExpired)
        }],
        ..SimConfig::default()
    })
    .await;
    let (status, body) = sim.get("/v2/nearest_city?key=expired").await;
    assert_eq!((status, message(&body)), (401, "api_key_expired"));
    assert_eq!(sim.get("/v2/nearest_city?key=k1").await.0, 200);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn many_concurrent_requests_are_all_answered() {
    let sim = Sim::start_open().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = sim.client.clone();
        let url = sim.url(&format!(
            "/v2/nearest_city?lat={}&lon={}&key=k1",
            -60.0 + f64::from(i) * 0.6,
            -170.0 + f64::from(i) * 1.7
        ));
        tasks.push(tokio::spawn(async move {
            let response = client.get(url).send().await.expect("request");
            (response.status().as_u16(), response.bytes().await.is_ok())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), (200, true));
    }
    assert_eq!(sim.stats().await.ok, 200);
    sim.stop().await.expect("clean stop");
}
