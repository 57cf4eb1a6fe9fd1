//! json-sim over real sockets: every auth kind, every pagination style, the window filter,
//! report jobs, the rate limit, faults, the request log, stats and shutdown.

use std::time::{Duration, Instant};

use iqair_sim::json::{self as sim, JsonSimConfig, LoggedRequest, RuntimeConfig, Stats};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SECRET: &str = "test-secret";

struct Sim {
    base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// One answer, its body parsed as JSON when it is JSON.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn ids(&self) -> Vec<u64> {
        self.body["data"]
            .as_array()
            .unwrap_or_else(|| panic!("no data array in {}", self.body))
            .iter()
            .map(|item| item["id"].as_u64().expect("an id"))
            .collect()
    }
}

impl Sim {
    async fn start(config: JsonSimConfig) -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sim::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Sim {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    /// The defaults of the spec, with a test secret and jobs that finish quickly.
    async fn start_default() -> Sim {
        Sim::start(JsonSimConfig {
            secret: common::SecretKey::new(SECRET),
            runtime: RuntimeConfig {
                job_delay_ms: 0,
                ..RuntimeConfig::default()
            },
            slow_body: Duration::from_millis(600),
            ..JsonSimConfig::default()
        })
        .await
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            Value::String(format!("<not json> {}", String::from_utf8_lossy(&bytes)))
        });
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path_and_query: &str) -> Answer {
        self.send(self.client.get(self.url(path_and_query))).await
    }

    async fn get_absolute(&self, url: &str) -> Answer {
        self.send(self.client.get(url)).await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let answer = self.post(path, body).await;
        assert!(
            answer.status < 300,
            "{path}: {} {}",
            answer.status,
            answer.body
        );
        answer.body
    }

    async fn fault(&self, body: Value) {
        let answer = self.post("/admin/faults", body).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
    }

    async fn stats(&self) -> Stats {
        serde_json::from_value(self.get("/admin/stats").await.body).expect("stats")
    }

    async fn log(&self, limit: usize) -> Vec<LoggedRequest> {
        serde_json::from_value(
            self.get(&format!("/admin/requests?limit={limit}"))
                .await
                .body,
        )
        .expect("request log")
    }

    async fn token(&self) -> String {
        let answer = self
            .send(self.client.post(self.url("/oauth/token")).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "sim-client"),
                ("client_secret", SECRET),
            ]))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["access_token"]
            .as_str()
            .expect("a token")
            .to_string()
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

/// The `rel` → URL pairs of an RFC 8288 `Link` header.
fn links(header: &str) -> Vec<(String, String)> {
    header
        .split(',')
        .map(|value| {
            let (target, params) = value.trim().split_once(';').expect("a link-value");
            let url = target.trim().trim_start_matches('<').trim_end_matches('>');
            let rel = params
                .split(';')
                .find_map(|p| p.trim().strip_prefix("rel="))
                .expect("a rel")
                .trim_matches('"');
            (rel.to_string(), url.to_string())
        })
        .collect()
}

#[tokio::test]
async fn every_auth_kind_takes_the_secret_and_refuses_anything_else() {
    let sim = Sim::start_default().await;
    let client = &sim.client;
    let url = sim.url("/none/items/page?per_page=1");
    assert_eq!(sim.send(client.get(&url)).await.status, 200);

    let bearer = sim.url("/bearer/items/page?per_page=1");
    assert_eq!(
        sim.send(client.get(&bearer).bearer_auth(SECRET))
            .await
            .status,
        200
    );
    for request in [client.get(&bearer), client.get(&bearer).bearer_auth("nope")] {
        let answer = sim.send(request).await;
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (401, &json!("unauthorized"))
        );
        assert!(answer.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("Bearer"));
    }

    let header = sim.url("/header/items/page?per_page=1");
    let ok = client.get(&header).header("X-Api-Key", SECRET);
    assert_eq!(sim.send(ok).await.status, 200);
    let wrong = client.get(&header).header("X-Api-Key", "nope");
    assert_eq!(sim.send(wrong).await.status, 401);
    assert_eq!(
        sim.send(client.get(&header).bearer_auth(SECRET))
            .await
            .status,
        401
    );

    let ok = sim
        .get(&format!("/query/items/page?per_page=1&api_key={SECRET}"))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(sim.get("/query/items/page?api_key=nope").await.status, 401);
    assert_eq!(sim.get("/query/items/page").await.status, 401);

    let basic = sim.url("/basic/items/page?per_page=1");
    let ok = client.get(&basic).basic_auth("sim", Some(SECRET));
    assert_eq!(sim.send(ok).await.status, 200);
    for request in [
        client.get(&basic).basic_auth("someone", Some(SECRET)),
        client.get(&basic).basic_auth("sim", Some("nope")),
        client
            .get(&basic)
            .header("Authorization", "Basic !!!not-base64"),
    ] {
        let answer = sim.send(request).await;
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (401, &json!("unauthorized"))
        );
        assert_eq!(
            answer.header("www-authenticate"),
            Some("Basic realm=\"json-sim\"")
        );
    }

    let oauth2 = sim.url("/oauth2/items/page?per_page=1");
    let token = sim.token().await;
    assert_eq!(
        sim.send(client.get(&oauth2).bearer_auth(&token))
            .await
            .status,
        200
    );
    // The static secret is not a token.
    for request in [
        client.get(&oauth2).bearer_auth(SECRET),
        client.get(&oauth2).bearer_auth("made-up"),
    ] {
        let answer = sim.send(request).await;
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (401, &json!("invalid_token"))
        );
        assert_eq!(
            answer.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
    }
    assert_eq!(sim.send(client.get(&oauth2)).await.status, 401);

    let unknown = sim.get("/apikey/items/page").await;
    assert_eq!(
        (unknown.status, &unknown.body["error"]),
        (404, &json!("not_found"))
    );
    assert_eq!(sim.get("/none/widgets").await.status, 404);

    let stats = sim.stats().await;
    assert_eq!(stats.unauthorized, 12);
    assert_eq!(stats.tokens_issued, 1);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn oauth2_tokens_are_issued_expire_and_can_be_revoked() {
    let sim = Sim::start_default().await;
    let client = &sim.client;
    let token_url = sim.url("/oauth/token");

    let answer = sim
        .send(client.post(&token_url).form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", SECRET),
            ("scope", "read items"),
        ]))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.body["expires_in"], 3600);
    assert_eq!(answer.body["scope"], "read items");
    assert!(answer.body["access_token"].as_str().unwrap_or("").len() >= 16);
    assert_eq!(answer.header("cache-control"), Some("no-store"));

    // Client credentials in HTTP Basic instead of the form; no scope.
    let answer = sim
        .send(
            client
                .post(&token_url)
                .basic_auth("sim-client", Some(SECRET))
                .form(&[("grant_type", "client_credentials")]),
        )
        .await;
    assert_eq!((answer.status, &answer.body["scope"]), (200, &json!("")));

    for form in [
        [
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "nope"),
        ],
        [
            ("grant_type", "client_credentials"),
            ("client_id", "other"),
            ("client_secret", SECRET),
        ],
    ] {
        let answer = sim.send(client.post(&token_url).form(&form)).await;
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (401, &json!("invalid_client"))
        );
    }
    let answer = sim
        .send(client.post(&token_url).form(&[
            ("grant_type", "password"),
            ("client_id", "sim-client"),
            ("client_secret", SECRET),
        ]))
        .await;
    assert_eq!(
        (answer.status, &answer.body["error"]),
        (400, &json!("unsupported_grant_type"))
    );

    // A one-second token works, then expires.
    let config = sim.admin("/admin/config", json!({"token_ttl_s": 1})).await;
    assert_eq!(config["token_ttl_s"], 1);
    let short = sim.token().await;
    let items = sim.url("/oauth2/items/page?per_page=1");
    assert_eq!(
        sim.send(client.get(&items).bearer_auth(&short))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = sim.send(client.get(&items).bearer_auth(&short)).await;
    assert_eq!(
        (expired.status, &expired.body["error"]),
        (401, &json!("invalid_token"))
    );

    // Revocation ends every token issued so far; a new one works.
    sim.admin("/admin/config", json!({"token_ttl_s": 3600}))
        .await;
    let long = sim.token().await;
    assert_eq!(
        sim.send(client.get(&items).bearer_auth(&long)).await.status,
        200
    );
    let revoked = sim.admin("/admin/tokens/revoke", json!({})).await;
    assert!(revoked["revoked"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(
        sim.send(client.get(&items).bearer_auth(&long)).await.status,
        401
    );
    let fresh = sim.token().await;
    assert_eq!(
        sim.send(client.get(&items).bearer_auth(&fresh))
            .await
            .status,
        200
    );

    let stats = sim.stats().await;
    assert_eq!(stats.tokens_issued, 5);
    assert_eq!(stats.by_route["oauth/token"], 8);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn page_pagination_covers_the_dataset_once() {
    let sim = Sim::start_default().await;
    let mut ids = Vec::new();
    for page in 1..=4 {
        let answer = sim
            .get(&format!("/none/items/page?page={page}&per_page=300"))
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body["meta"],
            json!({"page": page, "per_page": 300, "total_pages": 4, "total": 1000})
        );
        ids.extend(answer.ids());
    }
    assert_eq!(ids, (0..1000).collect::<Vec<u64>>());
    let past = sim.get("/none/items/page?page=5&per_page=300").await;
    assert_eq!((past.status, past.body["data"].clone()), (200, json!([])));

    let first = sim.get("/none/items/page").await;
    assert_eq!(first.body["meta"]["per_page"], 50);
    let item = &first.body["data"][3];
    assert_eq!(item["id"], 3);
    assert_eq!(item["updated_at"], "2026-01-01T00:03:00.000Z");
    assert_eq!(item["name"], "item-3");
    assert!(item["value"].is_f64());
    assert_eq!(
        sim.get("/none/items/page").await.body,
        first.body,
        "deterministic"
    );

    for bad in ["page=0", "per_page=0", "per_page=1001", "page=x"] {
        let answer = sim.get(&format!("/none/items/page?{bad}")).await;
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (400, &json!("bad_request")),
            "{bad}"
        );
        let field = bad.split('=').next().unwrap_or("");
        assert!(
            answer.body["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with(field),
            "{bad}: {}",
            answer.body
        );
    }

    let all = sim.get("/none/items").await;
    assert_eq!(all.ids().len(), 1000);
    assert!(all.body.get("meta").is_none());
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn post_page_takes_a_templated_body() {
    let sim = Sim::start_default().await;
    let answer = sim
        .post("/none/items/page", json!({"page": 2, "per_page": 10}))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.ids(), (10..20).collect::<Vec<u64>>());
    assert_eq!(answer.body["meta"]["total_pages"], 100);

    let strings = sim
        .post(
            "/none/items/page",
            json!({"page": "3", "per_page": "5", "updated_since": "2026-01-01T01:00:00Z", "until": 1_767_229_800}),
        )
        .await;
    // The window 01:00..01:10 holds items 60..70: two pages of 5, so page 3 is empty.
    assert_eq!(strings.status, 200, "{}", strings.body);
    assert_eq!(strings.body["meta"]["total"], 10);
    assert_eq!(strings.body["data"], json!([]));
    let second = sim
        .post(
            "/none/items/page",
            json!({"page": "2", "per_page": "5", "updated_since": "2026-01-01T01:00:00Z", "until": 1_767_229_800}),
        )
        .await;
    assert_eq!(second.ids(), vec![65, 66, 67, 68, 69]);

    let empty = sim
        .send(sim.client.post(sim.url("/none/items/page?per_page=7")))
        .await;
    assert_eq!((empty.status, empty.ids().len()), (200, 7));

    for (body, field) in [
        (json!({"page": 1.5}), "page"),
        (json!({"per_page": [1]}), "per_page"),
        (json!({"pages": 1}), "body"),
        (json!([1]), "body"),
    ] {
        let answer = sim.post("/none/items/page", body.clone()).await;
        assert_eq!(answer.status, 400, "{body}");
        assert!(
            answer.body["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with(field),
            "{body}: {}",
            answer.body
        );
    }
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn offset_and_cursor_pagination_cover_the_dataset_once() {
    let sim = Sim::start_default().await;
    let mut ids = Vec::new();
    let mut offset = 0;
    loop {
        let answer = sim
            .get(&format!("/none/items/offset?offset={offset}&limit=333"))
            .await;
        assert_eq!(answer.body["total"], 1000);
        let page = answer.ids();
        if page.is_empty() {
            break;
        }
        offset += page.len();
        ids.extend(page);
    }
    assert_eq!(ids, (0..1000).collect::<Vec<u64>>());

    let mut ids = Vec::new();
    let mut path = "/bearer/items/cursor?limit=400".to_string();
    let mut pages = 0;
    loop {
        let answer = sim
            .send(sim.client.get(sim.url(&path)).bearer_auth(SECRET))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        ids.extend(answer.ids());
        pages += 1;
        match answer.body["meta"]["next_cursor"].as_str() {
            Some(cursor) => path = format!("/bearer/items/cursor?limit=400&cursor={cursor}"),
            None => {
                assert!(answer.body["meta"]["next_cursor"].is_null());
                break;
            }
        }
    }
    assert_eq!((pages, ids), (3, (0..1000).collect::<Vec<u64>>()));

    for bad in ["garbage", "NDAw", "MTAuMDAwMDAwMDAwMDAwMDAwMA"] {
        let answer = sim.get(&format!("/none/items/cursor?cursor={bad}")).await;
        assert_eq!(answer.status, 400, "{bad}");
        assert!(answer.body["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with("cursor:"));
    }
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn link_headers_and_next_urls_are_absolute_and_keep_the_query() {
    let sim = Sim::start_default().await;
    let mut url = sim.url(&format!(
        "/query/items/link?api_key={SECRET}&updated_since=2026-01-01T10:00:00Z&per_page=100"
    ));
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let answer = sim.get_absolute(&url).await;
        assert_eq!(answer.status, 200, "{url}: {}", answer.body);
        ids.extend(answer.ids());
        pages += 1;
        let links = links(answer.header("link").expect("a Link header"));
        let first = links
            .iter()
            .find(|(rel, _)| rel == "first")
            .expect("rel=first");
        assert!(first.1.contains("page=1"), "{}", first.1);
        match links.iter().find(|(rel, _)| rel == "next") {
            Some((_, next)) => {
                assert!(next.starts_with(&sim.base), "{next}");
                assert!(next.contains(&format!("api_key={SECRET}")), "{next}");
                assert!(
                    next.contains("updated_since=2026-01-01T10:00:00Z"),
                    "{next}"
                );
                assert_eq!(links[0].0, "next", "next comes first, first second");
                url = next.clone();
            }
            None => break,
        }
    }
    // 10:00 is item 600.
    assert_eq!((pages, ids), (4, (600..1000).collect::<Vec<u64>>()));

    let mut url = sim.url("/none/items/next?per_page=250&page=1");
    let mut ids = Vec::new();
    loop {
        let answer = sim.get_absolute(&url).await;
        ids.extend(answer.ids());
        match answer.body["next"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&sim.base) && next.contains("per_page=250"),
                    "{next}"
                );
                url = next.to_string();
            }
            None => {
                assert!(answer.body["next"].is_null());
                break;
            }
        }
    }
    assert_eq!(ids, (0..1000).collect::<Vec<u64>>());
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_window_filter_takes_every_format_and_refuses_garbage() {
    let sim = Sim::start_default().await;
    // Items 60..120 are updated from 01:00 (inclusive) to 02:00 (exclusive).
    let hour: Vec<u64> = (60..120).collect();
    for (since, until) in [
        ("2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"),
        ("2026-01-01T02:00:00%2B01:00", "2026-01-01T03:00:00%2B01:00"),
        ("1767229200", "1767232800"),
        ("1767229200000", "1767232800000"),
    ] {
        let answer = sim
            .get(&format!("/none/items?updated_since={since}&until={until}"))
            .await;
        assert_eq!(answer.status, 200, "{since}: {}", answer.body);
        assert_eq!(answer.ids(), hour, "{since}..{until}");
    }
    let day = sim
        .get("/none/items/page?updated_since=2026-01-01&until=2026-01-02&per_page=1000")
        .await;
    assert_eq!(
        day.body["meta"]["total"], 1000,
        "all 1000 minutes fall on Jan 1"
    );
    let offset = sim
        .get("/none/items/offset?updated_since=2026-01-01T16:00:00Z&offset=30")
        .await;
    assert_eq!(offset.body["total"], 40);
    assert_eq!(offset.ids(), (990..1000).collect::<Vec<u64>>());

    for (query, field) in [
        ("updated_since=yesterday", "updated_since:"),
        ("until=2026-13-01", "until:"),
    ] {
        let answer = sim.get(&format!("/none/items/page?{query}")).await;
        assert_eq!(
            (answer.status, &answer.body["error"]),
            (400, &json!("bad_request"))
        );
        assert!(answer.body["detail"]
            .as_str()
            .unwrap_or("")
            .starts_with(field));
    }
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn report_jobs_go_queued_processing_success_and_page_their_result() {
    let sim = Sim::start_default().await;
    sim.admin("/admin/config", json!({"job_delay_ms": 600}))
        .await;
    let client = &sim.client;
    let submit = sim
        .send(
            client
                .post(sim.url("/header/reports"))
                .header("X-Api-Key", SECRET)
                .json(&json!({"from": "2026-01-01T00:10:00Z", "to": "2026-01-01T00:30:00Z"})),
        )
        .await;
    assert_eq!(submit.status, 202, "{}", submit.body);
    assert_eq!(submit.body["status"], "queued");
    let id = submit.body["id"].as_str().expect("an id").to_string();
    let status_url = submit.body["links"]["status"]
        .as_str()
        .expect("a status link")
        .to_string();
    assert_eq!(status_url, sim.url(&format!("/header/reports/{id}")));
    let poll = || async {
        sim.send(client.get(&status_url).header("X-Api-Key", SECRET))
            .await
    };
    let result_url = sim.url(&format!("/header/reports/{id}/result?per_page=15"));
    let result = |page: u64| {
        let url = format!("{result_url}&page={page}");
        let sim = &sim;
        async move {
            sim.send(sim.client.get(&url).header("X-Api-Key", SECRET))
                .await
        }
    };

    let queued = poll().await;
    assert_eq!(queued.body["status"], "queued");
    assert!(queued.body["links"].get("result").is_none());
    let early = result(1).await;
    assert_eq!(
        (early.status, &early.body["error"]),
        (409, &json!("not_ready"))
    );
    // Queued for 500 ms, processing until 1000 ms.
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(poll().await.body["status"], "processing");
    tokio::time::sleep(Duration::from_millis(550)).await;
    let done = poll().await;
    assert_eq!(done.body["status"], "success");
    assert_eq!(
        done.body["links"]["result"],
        json!(sim.url(&format!("/header/reports/{id}/result")))
    );
    let first = result(1).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.body["meta"],
        json!({"page": 1, "per_page": 15, "total_pages": 2, "total": 20})
    );
    let mut ids = first.ids();
    ids.extend(result(2).await.ids());
    assert_eq!(ids, (10..30).collect::<Vec<u64>>());
    assert_eq!(result(3).await.body["data"], json!([]));
    // The result takes the window filter too.
    let narrowed = sim
        .send(
            client
                .get(format!("{result_url}&until=2026-01-01T00:12:00Z"))
                .header("X-Api-Key", SECRET),
        )
        .await;
    assert_eq!(narrowed.ids(), vec![10, 11]);

    let unknown = sim.get("/none/reports/nope").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(sim.get("/none/reports/nope/result").await.status, 404);
    let bad = sim.post("/none/reports", json!({"from": "soon"})).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body["detail"]
        .as_str()
        .unwrap_or("")
        .starts_with("from:"));
    let no_body = sim.send(client.post(sim.url("/none/reports"))).await;
    assert_eq!(no_body.status, 202);
    assert_eq!(sim.stats().await.jobs_submitted, 2);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn job_modes_fail_or_stick_the_next_jobs() {
    let sim = Sim::start_default().await;
    sim.admin("/admin/config", json!({"job_delay_ms": 100}))
        .await;
    let mode = sim
        .admin("/admin/jobs", json!({"mode": "fail", "count": 1}))
        .await;
    assert_eq!(mode, json!({"mode": "fail", "remaining": 1}));
    let submit = || async {
        let answer = sim.post("/none/reports", json!({})).await;
        answer.body["id"].as_str().expect("an id").to_string()
    };
    let failing = submit().await;
    let normal = submit().await;
    sim.admin("/admin/jobs", json!({"mode": "stuck", "count": null}))
        .await;
    let stuck = submit().await;
    let stuck_too = submit().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let failed = sim.get(&format!("/none/reports/{failing}")).await;
    assert_eq!(failed.body["status"], "failed");
    assert!(failed.body["links"].get("result").is_none());
    let result = sim.get(&format!("/none/reports/{failing}/result")).await;
    assert_eq!(
        (result.status, &result.body["status"]),
        (409, &json!("failed"))
    );
    assert_eq!(
        sim.get(&format!("/none/reports/{normal}")).await.body["status"],
        "success"
    );
    for id in [&stuck, &stuck_too] {
        assert_eq!(
            sim.get(&format!("/none/reports/{id}")).await.body["status"],
            "processing"
        );
    }
    let bad = sim.post("/admin/jobs", json!({"mode": "sometimes"})).await;
    assert_eq!(bad.status, 400);
    // Reset goes back to normal.
    sim.admin("/admin/reset", json!({})).await;
    let after = submit().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        sim.get(&format!("/none/reports/{after}")).await.body["status"],
        "success"
    );
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_rate_limit_counts_every_credential_and_answers_429_with_retry_after() {
    // The window is the wall-clock minute: keep the test inside one.
    let second = chrono::Utc::now().timestamp_millis().rem_euclid(60_000);
    if second > 50_000 {
        tokio::time::sleep(Duration::from_millis((60_500 - second) as u64)).await;
    }
    let sim = Sim::start_default().await;
    let config = sim
        .admin("/admin/config", json!({"rate_per_minute": 3}))
        .await;
    assert_eq!(
        config,
        json!({"page_delay_ms": 0, "token_ttl_s": 3600, "job_delay_ms": 0, "rate_per_minute": 3})
    );
    let client = &sim.client;
    let now_s = chrono::Utc::now().timestamp();
    let reset_s = (now_s / 60 + 1) * 60;
    let answers = [
        sim.get("/none/items/page").await,
        sim.send(
            client
                .get(sim.url("/bearer/items/offset"))
                .bearer_auth(SECRET),
        )
        .await,
        sim.get("/none/items/cursor").await,
    ];
    for (answer, remaining) in answers.iter().zip(["2", "1", "0"]) {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(answer.header("x-ratelimit-remaining"), Some(remaining));
        assert_eq!(
            answer.header("x-ratelimit-reset"),
            Some(reset_s.to_string().as_str())
        );
        assert!(answer.header("retry-after").is_none());
    }
    // Not limited: the token endpoint and the admin API.
    sim.token().await;
    assert_eq!(sim.get("/admin/stats").await.status, 200);

    let refused = sim.get("/none/items/page").await;
    assert_eq!(
        (refused.status, &refused.body["error"]),
        (429, &json!("rate_limited"))
    );
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    let retry_after: i64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(retry_after >= reset_s - chrono::Utc::now().timestamp() - 1);
    // A 401 carries the headers but uses no quota.
    let unauthorized = sim.get("/bearer/items").await;
    assert_eq!(unauthorized.status, 401);
    assert_eq!(unauthorized.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(sim.stats().await.rate_limited, 1);

    // Lifting the limit lets calls through and drops the headers.
    sim.admin("/admin/config", json!({"rate_per_minute": 0}))
        .await;
    let free = sim.get("/none/items/page").await;
    assert_eq!(free.status, 200);
    assert!(free.header("x-ratelimit-limit").is_none());
    let bad = sim.post("/admin/config", json!({"rate": 1})).await;
    assert_eq!(bad.status, 400);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn faults_replace_answers_and_follow_their_filters_and_counts() {
    let sim = Sim::start_default().await;
    let cases = [
        (
            "server_error",
            500,
            Some("application/json"),
            "\"internal\"",
        ),
        ("html_502", 502, Some("text/html"), "502 Bad Gateway"),
        ("html_504", 504, Some("text/html"), "504 Gateway Time-out"),
        (
            "not_json",
            200,
            Some("text/plain; charset=utf-8"),
            "not JSON",
        ),
        (
            "too_many_requests",
            429,
            Some("application/json"),
            "\"rate_limited\"",
        ),
        (
            "unauthorized",
            401,
            Some("application/json"),
            "\"invalid_token\"",
        ),
    ];
    for (fault, status, content_type, needle) in cases {
        sim.fault(json!({"fault": fault, "count": 1})).await;
        let response = sim
            .client
            .get(sim.url("/none/items/page"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{fault}");
        let headers = response.headers().clone();
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            content_type,
            "{fault}"
        );
        let text = response.text().await.expect("body");
        assert!(text.contains(needle), "{fault}: {text}");
        match fault {
            "too_many_requests" => assert_eq!(headers["retry-after"], "1"),
            "unauthorized" => {
                assert_eq!(
                    headers["www-authenticate"],
                    "Bearer error=\"invalid_token\""
                )
            }
            _ => {}
        }
        // The count ran out: the next call is normal.
        assert_eq!(sim.get("/none/items/page").await.status, 200, "{fault}");
    }

    // Path and query filters; a status override; the newest matching rule wins.
    sim.fault(json!({"fault": "server_error", "count": 2, "path_contains": "/cursor"}))
        .await;
    sim.fault(
        json!({"fault": "html_502", "count": null, "query_contains": "page=3", "status": 503}),
    )
    .await;
    assert_eq!(sim.get("/none/items/page?page=2").await.status, 200);
    assert_eq!(sim.get("/none/items/page?page=3").await.status, 503);
    assert_eq!(sim.get("/none/items/link?page=3").await.status, 503);
    assert_eq!(sim.get("/none/items/cursor").await.status, 500);
    assert_eq!(sim.get("/none/items/cursor?page=3").await.status, 503);
    assert_eq!(sim.get("/none/items/cursor").await.status, 500);
    assert_eq!(sim.get("/none/items/cursor").await.status, 200);
    let listed = sim.get("/admin/faults").await;
    assert_eq!(
        listed.body["active"],
        json!([{"fault": "html_502", "remaining": null, "status": 503, "path_contains": null, "query_contains": "page=3"}])
    );
    let cleared = sim.send(sim.client.delete(sim.url("/admin/faults"))).await;
    assert_eq!(cleared.body["cleared"], 1);
    assert_eq!(sim.get("/none/items/page?page=3").await.status, 200);

    // Faults come after the credentials: a bad key still gets its 401.
    sim.fault(json!({"fault": "server_error", "count": 1}))
        .await;
    assert_eq!(sim.get("/bearer/items").await.status, 401);
    assert_eq!(sim.get("/none/items").await.status, 500);

    let unknown = sim
        .post("/admin/faults", json!({"fault": "gremlins"}))
        .await;
    assert_eq!(
        (unknown.status, &unknown.body["error"]),
        (400, &json!("unknown_fault"))
    );
    assert!(unknown.body["known"]
        .as_array()
        .is_some_and(|k| k.contains(&json!("slow_body"))));
    for bad in [
        json!({"fault": "hang", "status": 500}),
        json!({"fault": "server_error", "count": 0}),
        json!({"fault": "server_error", "status": 42}),
        json!({"fault": "server_error", "colour": "red"}),
    ] {
        assert_eq!(
            sim.post("/admin/faults", bad.clone()).await.status,
            400,
            "{bad}"
        );
    }
    // 6 single faults, 5 filtered, 1 after the credentials.
    assert_eq!(sim.stats().await.faulted, 12);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn body_faults_hang_trickle_and_cut() {
    let sim = Sim::start_default().await;
    let normal = sim.get("/none/items/page?per_page=200").await.body;

    sim.fault(json!({"fault": "slow_body", "count": 1})).await;
    let started = Instant::now();
    let slow = sim.get("/none/items/page?per_page=200").await;
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (slow.status, &slow.body),
        (200, &normal),
        "the whole answer arrives"
    );

    sim.fault(json!({"fault": "truncated", "count": 1})).await;
    let response = sim
        .client
        .get(sim.url("/none/items/page?per_page=200"))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(response.status().as_u16(), 200);
    let declared = response.content_length().expect("a Content-Length");
    assert!(declared > 1000);
    assert!(response.bytes().await.is_err(), "the body is cut short");

    sim.fault(json!({"fault": "hang", "count": 1, "path_contains": "/offset"}))
        .await;
    let hung = sim
        .client
        .get(sim.url("/none/items/offset"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(hung.is_err_and(|err| err.is_timeout()));
    assert_eq!(sim.get("/none/items/offset").await.status, 200);
    // The request the client gave up on is logged as 499 and no longer in flight.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let log = sim.log(2).await;
    assert_eq!(log[0].status, 499, "{log:?}");
    assert_eq!(sim.stats().await.in_flight, 0);
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn shutdown_ends_hanging_and_delayed_requests() {
    let sim = Sim::start_default().await;
    sim.fault(json!({"fault": "hang", "path_contains": "/offset"}))
        .await;
    sim.admin("/admin/config", json!({"page_delay_ms": 3_600_000}))
        .await;
    let hung = tokio::spawn(sim.client.get(sim.url("/none/items/offset")).send());
    let delayed = tokio::spawn(sim.client.get(sim.url("/none/items/page")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.stats().await.in_flight, 2);
    let started = Instant::now();
    sim.stop().await.expect("clean stop");
    assert!(started.elapsed() < Duration::from_secs(3));
    let hung = hung.await.expect("task");
    assert!(hung.is_err() || hung.is_ok_and(|r| r.status() == 503));
    delayed.await.expect("task").ok();
}

#[tokio::test]
async fn pages_are_answered_in_parallel_after_the_page_delay() {
    let sim = Sim::start_default().await;
    sim.admin("/admin/config", json!({"page_delay_ms": 300}))
        .await;
    let started = Instant::now();
    let fetches = (1..=8).map(|page| {
        let url = sim.url(&format!("/none/items/page?page={page}&per_page=10"));
        let client = sim.client.clone();
        async move { client.get(url).send().await.expect("request").status() }
    });
    let statuses = futures::future::join_all(fetches).await;
    let took = started.elapsed();
    assert!(statuses.iter().all(|s| s.as_u16() == 200));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "not one after another: {took:?}"
    );
    let stats = sim.stats().await;
    assert!(stats.max_in_flight >= 6, "{stats:?}");
    assert_eq!(stats.in_flight, 0);
    // Job submissions and status polls do not wait.
    let started = Instant::now();
    assert_eq!(sim.post("/none/reports", json!({})).await.status, 202);
    assert!(started.elapsed() < Duration::from_millis(250));
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_request_log_and_stats_say_what_happened_without_secrets() {
    let sim = Sim::start_default().await;
    let client = &sim.client;
    sim.get(&format!("/query/items/page?page=2&api_key={SECRET}"))
        .await;
    sim.send(
        client
            .get(sim.url("/bearer/items/offset"))
            .bearer_auth(SECRET),
    )
    .await;
    sim.send(
        client
            .get(sim.url("/basic/items"))
            .basic_auth("sim", Some("wrong")),
    )
    .await;
    sim.send(
        client
            .get(sim.url("/header/items/cursor"))
            .header("X-Api-Key", SECRET),
    )
    .await;
    sim.get("/none/reports/missing").await;
    sim.token().await;

    let log = sim.log(100).await;
    let seen: Vec<(&str, &str, &str, u16, &str)> = log
        .iter()
        .map(|r| {
            (
                r.method.as_str(),
                r.path.as_str(),
                r.query.as_str(),
                r.status,
                r.authorization.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "GET",
                "/query/items/page",
                "page=2&api_key=***",
                200,
                "query"
            ),
            ("GET", "/bearer/items/offset", "", 200, "bearer"),
            ("GET", "/basic/items", "", 401, "basic"),
            ("GET", "/header/items/cursor", "", 200, "x-api-key"),
            ("GET", "/none/reports/missing", "", 404, "none"),
            ("POST", "/oauth/token", "", 200, "none"),
        ]
    );
    let raw = serde_json::to_string(&log).expect("json");
    assert!(!raw.contains(SECRET), "{raw}");
    assert!(chrono::DateTime::parse_from_rfc3339(&log[0].at).is_ok());
    assert_eq!(sim.log(2).await, log[4..].to_vec());

    let stats = sim.stats().await;
    assert_eq!(stats.requests, 6);
    assert_eq!(stats.by_route["items/page"], 1);
    assert_eq!(stats.by_route["reports/{id}"], 1);
    assert_eq!(stats.by_route["oauth/token"], 1);
    assert_eq!((stats.unauthorized, stats.tokens_issued), (1, 1));
    assert_eq!(stats.max_in_flight, 1);
    let bad = sim.get("/admin/requests?limit=0").await;
    assert_eq!(bad.status, 400);

    sim.admin("/admin/reset", json!({})).await;
    assert_eq!(sim.stats().await, Stats::default());
    assert!(sim.log(100).await.is_empty());
    sim.stop().await.expect("clean stop");
}

#[tokio::test]
async fn admin_config_changes_any_subset_and_answers_the_whole() {
    let sim = Sim::start_default().await;
    let config = sim.get("/admin/config").await.body;
    assert_eq!(
        config,
        json!({"page_delay_ms": 0, "token_ttl_s": 3600, "job_delay_ms": 0, "rate_per_minute": 0})
    );
    let changed = sim
        .admin(
            "/admin/config",
            json!({"page_delay_ms": 5, "job_delay_ms": 7}),
        )
        .await;
    assert_eq!(
        changed,
        json!({"page_delay_ms": 5, "token_ttl_s": 3600, "job_delay_ms": 7, "rate_per_minute": 0})
    );
    let bad = sim
        .post("/admin/config", json!({"page_delay_ms": -1}))
        .await;
    assert_eq!(
        (bad.status, &bad.body["error"]),
        (400, &json!("bad_request"))
    );
    let method = sim.send(sim.client.delete(sim.url("/none/items"))).await;
    assert_eq!(method.status, 405);
    sim.stop().await.expect("clean stop");
}
