//! The HTTP_JSON adapter driven by a real `Runner` (folder object store, outbox) against
//! json-sim on loopback: every pagination kind and auth kind, the window templates, OAuth2
//! refresh, `max_pages`, failures mid-run, parallel pages, rate limits, async report jobs —
//! and the secret in no message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use catalogue::http_json::TimeFormat;
use chrono::{DateTime, Utc};
use iqair_sim::json::{self as sim, JsonSimConfig, LoggedRequest, RuntimeConfig, Stats};
use objects::{FolderStore, ObjectStore, StoreOptions};
use protocol::{
    Event, FailureClass, JobState, RateLimit, ResultRecord, RunReport, RunStatus, RunWindow,
    Schedule, StreamConfig,
};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;
use worker::adapters::registry;
use worker::outbox::Outbox;
use worker::runner::{RunOutcome, Runner};

/// Distinctive, so a leak into a message cannot be a coincidence.
const SECRET: &str = "7d1c9e42-sim-secret-b85f";
/// Items in the simulator's dataset: five pages of 50 (the last one short).
const ITEMS: u64 = 230;
/// The dataset's epoch, 2026-01-01T00:00:00Z; item `i` is updated `i` minutes later.
const EPOCH_MS: i64 = 1_767_225_600_000;

struct Rig {
    base: String,
    admin: reqwest::Client,
    runner: Runner,
    outbox: Arc<Outbox>,
    store: FolderStore,
    _dir: TempDir,
    _stop: oneshot::Sender<()>,
}

impl Rig {
    async fn start(runtime: RuntimeConfig) -> Rig {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = JsonSimConfig {
            secret: common::SecretKey::new(SECRET),
            items: ITEMS,
            runtime,
            slow_body: Duration::from_millis(300),
            ..JsonSimConfig::default()
        };
        tokio::spawn(sim::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FolderStore::new(
            dir.path().join("objects"),
            StoreOptions {
                create_buckets: true,
            },
        )
        .await
        .expect("folder store");
        let outbox = Arc::new(Outbox::new(100_000));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let runner = Runner::new(registry(client), Arc::new(store.clone()), outbox.clone());
        Rig {
            base: format!("http://{addr}"),
            admin: reqwest::Client::new(),
            runner,
            outbox,
            store,
            _dir: dir,
            _stop: stop,
        }
    }

    async fn open() -> Rig {
        Rig::start(RuntimeConfig {
            job_delay_ms: 400,
            ..RuntimeConfig::default()
        })
        .await
    }

    /// A stream of `path` (under the simulator) described by `spec`, its window from the
    /// dataset's epoch.
    fn stream(&self, path: &str, spec: Value) -> StreamConfig {
        StreamConfig {
            stream_id: Uuid::now_v7(),
            generation: 1,
            adapter: "HTTP_JSON".into(),
            endpoint: format!("{}{path}", self.base),
            secret_key: SECRET.into(),
            schedule: Schedule::Interval { millis: 900_000 },
            timeout_ms: 20_000,
            bucket_name: "results".into(),
            params: BTreeMap::new(),
            rate_limit: RateLimit::UNLIMITED,
            source: spec.to_string(),
            window_start_ms: Some(EPOCH_MS),
        }
    }

    async fn run(&self, cfg: &StreamConfig) -> RunReport {
        match self.runner.run(cfg, Instant::now()).await {
            RunOutcome::Paged(report) => {
                let printed = format!("{report:?}");
                assert!(!printed.contains(SECRET), "secret in {printed}");
                *report
            }
            other => panic!("expected a paged run, got {other:?}"),
        }
    }

    /// Every page reference the run queued, by page number.
    fn pages(&self, run_id: Uuid) -> Vec<ResultRecord> {
        let mut pages: Vec<ResultRecord> = self
            .outbox
            .after(0, usize::MAX)
            .into_iter()
            .filter_map(|(_, event)| match event {
                Event::Results(record) if record.run_id == run_id => {
                    Some(std::sync::Arc::unwrap_or_clone(record))
                }
                _ => None,
            })
            .collect();
        pages.sort_by_key(|r| r.page);
        pages
    }

    /// The ids of every item in the run's stored pages, sorted; each page's stored bytes hold
    /// as many records as its reference says.
    async fn stored_ids(&self, run_id: Uuid) -> Vec<u64> {
        let mut ids = Vec::new();
        for record in self.pages(run_id) {
            let body = self
                .store
                .get(&record.bucket, &record.key)
                .await
                .expect("stored page");
            let json: Value = serde_json::from_slice(&body).expect("a stored page is JSON");
            let data = json["data"].as_array().expect("a data array");
            assert_eq!(
                record.records,
                Some(data.len() as u64),
                "page {}",
                record.page
            );
            assert_eq!(record.size, body.len() as u64);
            ids.extend(data.iter().map(|item| item["id"].as_u64().expect("an id")));
        }
        ids.sort_unstable();
        ids
    }

    async fn admin(&self, path: &str, body: Value) -> Value {
        let response = self
            .admin
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("admin request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("admin JSON")
    }

    async fn stats(&self) -> Stats {
        self.admin
            .get(format!("{}/admin/stats", self.base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON")
    }

    async fn requests(&self) -> Vec<LoggedRequest> {
        self.admin
            .get(format!("{}/admin/requests?limit=10000", self.base))
            .send()
            .await
            .expect("requests")
            .json()
            .await
            .expect("requests JSON")
    }

    /// No event queued so far carries the secret.
    fn assert_secret_free(&self) {
        for (_, event) in self.outbox.after(0, usize::MAX) {
            let printed = format!("{event:?}");
            assert!(!printed.contains(SECRET), "secret in {printed}");
        }
    }
}

fn all_ids() -> Vec<u64> {
    (0..ITEMS).collect()
}

fn page_numbers(pages: &[ResultRecord]) -> Vec<u32> {
    pages.iter().map(|r| r.page).collect()
}

/// The stored pages and the report agree, and the run stored every item once.
async fn assert_stored_all(rig: &Rig, what: &str, report: &RunReport, pages: u32) {
    assert_eq!(report.status, RunStatus::Stored, "{what}: {report:?}");
    assert_eq!(report.pages, pages, "{what}");
    assert_eq!(report.records, Some(ITEMS), "{what}");
    assert_eq!(
        page_numbers(&rig.pages(report.run_id)),
        (0..pages).collect::<Vec<_>>(),
        "{what}"
    );
    assert_eq!(rig.stored_ids(report.run_id).await, all_ids(), "{what}");
}

#[tokio::test]
async fn every_pagination_kind_fetches_every_item_once() {
    let rig = Rig::open().await;
    let page = json!({"kind": "page", "param": "page", "size_param": "per_page", "size": 50});
    let mut page_total = page.clone();
    page_total["total_pages_pointer"] = json!("/meta/total_pages");
    let offset = json!({"kind": "offset", "param": "offset", "limit_param": "limit", "limit": 50});
    let mut offset_total = offset.clone();
    offset_total["total_pointer"] = json!("/total");
    let cases = [
        ("none", "/none/items", json!({"records": "/data"}), 1),
        (
            "page, one after another",
            "/none/items/page",
            json!({"pagination": page, "records": "/data"}),
            5,
        ),
        (
            "page, with the total",
            "/none/items/page",
            json!({"pagination": page_total, "records": "/data"}),
            5,
        ),
        (
            "page by POST body",
            "/none/items/page",
            json!({"request": {"method": "POST", "body": {"page": "{{page}}", "per_page": 50}},
                   "pagination": {"kind": "page", "param": "page",
                                  "total_pages_pointer": "/meta/total_pages"},
                   "records": "/data"}),
            5,
        ),
        (
            "offset, one after another",
            "/none/items/offset",
            json!({"pagination": offset, "records": "/data"}),
            5,
        ),
        (
            "offset, with the total",
            "/none/items/offset",
            json!({"pagination": offset_total, "records": "/data"}),
            5,
        ),
        (
            "cursor",
            "/none/items/cursor?limit=50",
            json!({"pagination": {"kind": "cursor", "param": "cursor",
                                  "next_pointer": "/meta/next_cursor"},
                   "records": "/data"}),
            5,
        ),
        (
            "link header",
            "/none/items/link?per_page=50",
            json!({"pagination": {"kind": "link_header"}, "records": "/data"}),
            5,
        ),
        (
            "next url",
            "/none/items/next?per_page=50",
            json!({"pagination": {"kind": "next_url", "next_pointer": "/next"},
                   "records": "/data"}),
            5,
        ),
    ];
    for (what, path, spec, pages) in cases {
        let cfg = rig.stream(path, spec);
        let report = rig.run(&cfg).await;
        assert_stored_all(&rig, what, &report, pages).await;
    }
    // The POST pages asked by body: five POSTs with page 1..=5 in their JSON.
    let posts: Vec<LoggedRequest> = rig
        .requests()
        .await
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 5, "{posts:?}");
    rig.assert_secret_free();
}

#[tokio::test]
async fn every_auth_kind_gets_in() {
    let rig = Rig::open().await;
    let token_url = format!("{}/oauth/token", rig.base);
    let cases = [
        ("none", json!({"kind": "none"}), "none"),
        ("bearer", json!({"kind": "bearer"}), "bearer"),
        (
            "header",
            json!({"kind": "header", "name": "X-Api-Key"}),
            "x-api-key",
        ),
        (
            "query",
            json!({"kind": "query", "name": "api_key"}),
            "query",
        ),
        (
            "basic",
            json!({"kind": "basic", "username": "sim"}),
            "basic",
        ),
        (
            "oauth2",
            json!({"kind": "oauth2_client_credentials", "token_url": token_url,
                   "client_id": "sim-client", "scope": "items:read"}),
            "bearer",
        ),
    ];
    for (auth, spec_auth, scheme) in cases {
        let cfg = rig.stream(
            &format!("/{auth}/items/cursor?limit=100"),
            json!({"request": {"auth": spec_auth},
                   "pagination": {"kind": "cursor", "param": "cursor",
                                  "next_pointer": "/meta/next_cursor"},
                   "records": "/data"}),
        );
        let report = rig.run(&cfg).await;
        assert_stored_all(&rig, auth, &report, 3).await;
        let calls: Vec<LoggedRequest> = rig
            .requests()
            .await
            .into_iter()
            .filter(|r| r.path == format!("/{auth}/items/cursor"))
            .collect();
        assert_eq!(calls.len(), 3, "{auth}: {calls:?}");
        for call in &calls {
            assert_eq!(call.status, 200, "{auth}: {call:?}");
            assert_eq!(call.authorization, scheme, "{auth}: {call:?}");
            assert!(!call.query.contains(SECRET), "{call:?}");
        }
    }
    assert_eq!(rig.stats().await.tokens_issued, 1);
    rig.assert_secret_free();
}

#[tokio::test]
async fn a_refused_secret_stops_the_stream_and_is_never_shown() {
    let rig = Rig::open().await;
    let spec = |auth: Value| {
        json!({"request": {"auth": auth},
               "pagination": {"kind": "page", "param": "page", "total_pages_pointer": "/meta/total_pages"},
               "records": "/data"})
    };
    let wrong = "wrong-secret-0f3a9d";
    let token_url = format!("{}/oauth/token", rig.base);
    let cases = [
        ("bearer", json!({"kind": "bearer"})),
        ("query", json!({"kind": "query", "name": "api_key"})),
        ("basic", json!({"kind": "basic", "username": "sim"})),
        (
            "oauth2",
            json!({"kind": "oauth2_client_credentials", "token_url": token_url,
                   "client_id": "sim-client"}),
        ),
    ];
    for (auth, spec_auth) in cases {
        let mut cfg = rig.stream(&format!("/{auth}/items/page"), spec(spec_auth));
        cfg.secret_key = wrong.into();
        let report = rig.run(&cfg).await;
        assert_eq!(report.status, RunStatus::Failed, "{auth}: {report:?}");
        assert_eq!(report.class, Some(FailureClass::Auth), "{auth}");
        assert!(report.stream_stopped, "{auth}");
        assert_eq!(report.pages, 0);
        let message = report.message.expect("a message");
        assert!(!message.contains(wrong), "{auth}: {message}");
        assert!(message.contains("401"), "{auth}: {message}");
        if auth == "oauth2" {
            assert!(message.contains("token endpoint"), "{message}");
            assert!(message.contains("invalid_client"), "{message}");
        }
    }
    // One call each: a refused key is not retried.
    assert_eq!(rig.stats().await.requests, 4);
}

#[tokio::test]
async fn the_window_goes_out_in_the_templates() {
    let rig = Rig::open().await;
    let mut cfg = rig.stream(
        "/none/items/page",
        json!({"pagination": {"kind": "page", "param": "page", "size_param": "per_page",
                              "size": 50, "total_pages_pointer": "/meta/total_pages"},
               "records": "/data"}),
    );
    // From item 100 on (100 minutes after the epoch), to the slot (now).
    cfg.window_start_ms = Some(EPOCH_MS + 100 * 60_000);
    cfg.params = BTreeMap::from([
        ("updated_since".to_string(), "{{window_start}}".to_string()),
        ("until".to_string(), "{{window_end:epoch_ms}}".to_string()),
    ]);
    let report = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Stored, "{report:?}");
    let window = report.window.expect("a window");
    assert_eq!(window.start_ms, EPOCH_MS + 100 * 60_000);
    assert!(window.end_ms >= Utc::now().timestamp_millis() - 60_000);
    assert_eq!(
        rig.stored_ids(report.run_id).await,
        (100..ITEMS).collect::<Vec<_>>()
    );
    let requests = rig.requests().await;
    assert_eq!(requests.len(), 3, "130 items: three pages");
    for request in &requests {
        assert!(
            request
                .query
                .contains("updated_since=2026-01-01T01%3A40%3A00Z"),
            "{}",
            request.query
        );
        assert!(
            request.query.contains(&format!("until={}", window.end_ms)),
            "{}",
            request.query
        );
    }

    // The next run starts where this one ended: nothing new since, one empty page.
    let again = rig.run(&cfg).await;
    assert_eq!(again.status, RunStatus::Stored, "{again:?}");
    let RunWindow { start_ms, end_ms } = again.window.expect("a window");
    assert_eq!(start_ms, window.end_ms);
    assert!(end_ms >= start_ms);
    assert_eq!((again.pages, again.records), (1, Some(0)));
    let last = rig.requests().await.pop().expect("a request");
    let since = TimeFormat::Rfc3339
        .format(window.end_ms)
        .replace(':', "%3A");
    assert!(last.query.contains(&since), "{} / {since}", last.query);
}

#[tokio::test]
async fn oauth2_tokens_are_refreshed_before_expiry_and_after_a_401() {
    let rig = Rig::start(RuntimeConfig {
        token_ttl_s: 2,
        ..RuntimeConfig::default()
    })
    .await;
    let cfg = rig.stream(
        "/oauth2/items/offset",
        json!({"request": {"auth": {"kind": "oauth2_client_credentials",
                                    "token_url": format!("{}/oauth/token", rig.base),
                                    "client_id": "sim-client"}},
               "pagination": {"kind": "offset", "param": "offset", "limit_param": "limit",
                              "limit": 100, "total_pointer": "/total"},
               "records": "/data"}),
    );
    let first = rig.run(&cfg).await;
    assert_stored_all(&rig, "first", &first, 3).await;
    assert_eq!(rig.stats().await.tokens_issued, 1);
    // Token plus three pages.
    assert_eq!(first.attempts, 4);

    // Cached while fresh.
    let cached = rig.run(&cfg).await;
    assert_eq!(cached.status, RunStatus::Stored);
    assert_eq!(rig.stats().await.tokens_issued, 1);
    assert_eq!(cached.attempts, 3);

    // Shortly before it expires (2 s), a new one, without a refusal first.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    let renewed = rig.run(&cfg).await;
    assert_eq!(renewed.status, RunStatus::Stored);
    let stats = rig.stats().await;
    assert_eq!(stats.tokens_issued, 2);
    assert_eq!(stats.unauthorized, 0);

    // Revoked: the first page is refused, a new token fetched, and the page asked again.
    rig.admin("/admin/tokens/revoke", json!({})).await;
    let after_revoke = rig.run(&cfg).await;
    assert_stored_all(&rig, "after revoke", &after_revoke, 3).await;
    let stats = rig.stats().await;
    assert_eq!(stats.tokens_issued, 3);
    assert_eq!(stats.unauthorized, 1);
    // 401, token, the page again, two more pages.
    assert_eq!(after_revoke.attempts, 5);
    let statuses: Vec<u16> = rig
        .requests()
        .await
        .iter()
        .rev()
        .take(5)
        .rev()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [401, 200, 200, 200, 200]);
    rig.assert_secret_free();
}

#[tokio::test]
async fn max_pages_truncates_and_says_so() {
    let rig = Rig::open().await;
    let cases = [
        (
            "page, with the total",
            "/none/items/page",
            json!({"pagination": {"kind": "page", "param": "page", "size_param": "per_page",
                                  "size": 50, "total_pages_pointer": "/meta/total_pages"},
                   "records": "/data", "max_pages": 3}),
        ),
        (
            "page, one after another",
            "/none/items/page",
            json!({"pagination": {"kind": "page", "param": "page", "size_param": "per_page",
                                  "size": 50},
                   "records": "/data", "max_pages": 3}),
        ),
        (
            "cursor",
            "/none/items/cursor?limit=50",
            json!({"pagination": {"kind": "cursor", "param": "cursor",
                                  "next_pointer": "/meta/next_cursor"},
                   "records": "/data", "max_pages": 3}),
        ),
        (
            "next url",
            "/none/items/next?per_page=50",
            json!({"pagination": {"kind": "next_url", "next_pointer": "/next"},
                   "records": "/data", "max_pages": 3}),
        ),
    ];
    for (what, path, spec) in cases {
        let before = rig.stats().await.requests;
        let report = rig.run(&rig.stream(path, spec)).await;
        assert_eq!(report.status, RunStatus::Truncated, "{what}: {report:?}");
        assert_eq!(
            report.message.as_deref(),
            Some("max_pages (3) reached with more to fetch"),
            "{what}"
        );
        assert_eq!((report.pages, report.records), (3, Some(150)), "{what}");
        assert_eq!(
            rig.stored_ids(report.run_id).await,
            (0..150).collect::<Vec<_>>()
        );
        // Three calls: none beyond the cap.
        assert_eq!(rig.stats().await.requests - before, 3, "{what}");
    }
    // Exactly as many pages as allowed is not truncated.
    let report = rig
        .run(&rig.stream(
            "/none/items/page",
            json!({"pagination": {"kind": "page", "param": "page", "size_param": "per_page",
                                  "size": 50, "total_pages_pointer": "/meta/total_pages"},
                   "records": "/data", "max_pages": 5}),
        ))
        .await;
    assert_stored_all(&rig, "exactly max_pages", &report, 5).await;
}

#[tokio::test]
async fn a_page_that_fails_ends_the_run_and_keeps_the_pages_before() {
    let rig = Rig::open().await;
    let spec = json!({"pagination": {"kind": "page", "param": "page", "size_param": "per_page",
                                     "size": 50},
                      "records": "/data"});
    rig.admin(
        "/admin/faults",
        json!({"fault": "not_json", "count": null, "query_contains": "page=3"}),
    )
    .await;
    let report = rig.run(&rig.stream("/none/items/page", spec.clone())).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert_eq!(report.class, Some(FailureClass::InvalidBody));
    assert!(!report.stream_stopped);
    let message = report.message.as_deref().unwrap_or_default();
    assert!(message.contains("not JSON"), "{message}");
    assert!(message.contains("page=3"), "{message}");
    assert_eq!(report.pages, 2);
    assert_eq!(page_numbers(&rig.pages(report.run_id)), [0, 1]);
    assert_eq!(
        rig.stored_ids(report.run_id).await,
        (0..100).collect::<Vec<_>>()
    );
    rig.admin_delete_faults().await;

    // Transient trouble is retried: two 500s and a gateway page on page 2, then all is well.
    rig.admin(
        "/admin/faults",
        json!({"fault": "server_error", "count": 2, "query_contains": "page=2&"}),
    )
    .await;
    rig.admin(
        "/admin/faults",
        json!({"fault": "html_502", "count": 1, "query_contains": "page=4&"}),
    )
    .await;
    let report = rig.run(&rig.stream("/none/items/page", spec)).await;
    assert_stored_all(&rig, "after retries", &report, 5).await;
    // Five pages, the empty sixth that ends it, three retries.
    assert_eq!(report.attempts, 9);
    rig.assert_secret_free();
}

impl Rig {
    async fn admin_delete_faults(&self) {
        let response = self
            .admin
            .delete(format!("{}/admin/faults", self.base))
            .send()
            .await
            .expect("delete faults");
        assert!(response.status().is_success());
    }
}

#[tokio::test]
async fn pages_come_in_parallel_up_to_page_concurrency() {
    let rig = Rig::start(RuntimeConfig {
        page_delay_ms: 150,
        ..RuntimeConfig::default()
    })
    .await;
    let cfg = rig.stream(
        "/none/items/page",
        json!({"pagination": {"kind": "page", "param": "page", "size_param": "per_page",
                              "size": 10, "total_pages_pointer": "/meta/total_pages"},
               "records": "/data", "page_concurrency": 4}),
    );
    let started = Instant::now();
    let report = rig.run(&cfg).await;
    let took = started.elapsed();
    assert_stored_all(&rig, "parallel", &report, 23).await;
    let stats = rig.stats().await;
    assert!(
        (2..=4).contains(&stats.max_in_flight),
        "max_in_flight {}",
        stats.max_in_flight
    );
    // One after another, 23 pages of 150 ms would take 3.45 s; four at a time about 1 s.
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

#[tokio::test]
async fn retry_after_is_waited_out_and_the_call_made_again() {
    let rig = Rig::open().await;
    rig.admin(
        "/admin/faults",
        json!({"fault": "too_many_requests", "count": 1, "path_contains": "items/cursor"}),
    )
    .await;
    let cfg = rig.stream(
        "/bearer/items/cursor?limit=100",
        json!({"request": {"auth": {"kind": "bearer"}},
               "pagination": {"kind": "cursor", "param": "cursor",
                              "next_pointer": "/meta/next_cursor"},
               "records": "/data"}),
    );
    let report = rig.run(&cfg).await;
    assert_stored_all(&rig, "after a 429", &report, 3).await;
    assert_eq!(report.attempts, 4);
    let requests = rig.requests().await;
    assert_eq!(requests[0].status, 429);
    assert_eq!(requests[1].status, 200);
    let at = |r: &LoggedRequest| {
        DateTime::parse_from_rfc3339(&r.at)
            .expect("a time")
            .timestamp_millis()
    };
    // Retry-After: 1.
    let waited = at(&requests[1]) - at(&requests[0]);
    assert!(waited >= 950, "waited {waited} ms");
}

#[tokio::test]
async fn a_used_up_rate_limit_is_not_called_into() {
    // The limit's window is the wall-clock minute: start well inside one, so its reset comes
    // after the run's 3 s.
    let second = Utc::now().timestamp() % 60;
    if second > 50 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    let rig = Rig::start(RuntimeConfig {
        rate_per_minute: 2,
        ..RuntimeConfig::default()
    })
    .await;
    let mut cfg = rig.stream(
        "/none/items/page",
        json!({"pagination": {"kind": "page", "param": "page", "size_param": "per_page",
                              "size": 50},
               "records": "/data"}),
    );
    cfg.timeout_ms = 3_000;
    let report = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert_eq!(report.class, Some(FailureClass::RateLimited));
    // Two pages, then `X-RateLimit-Remaining: 0` said to wait past the run's end: no third
    // call, so no 429.
    assert_eq!(report.pages, 2);
    let stats = rig.stats().await;
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.rate_limited, 0);
}

fn job_spec(base: &str, deadline_ms: u64) -> Value {
    json!({
        "request": {"auth": {"kind": "bearer"}},
        "pagination": {"kind": "page", "param": "page", "size_param": "per_page", "size": 50,
                       "total_pages_pointer": "/meta/total_pages"},
        "records": "/data",
        "job": {"submit": {"url": format!("{base}/bearer/reports"),
                           "body": {"from": "{{window_start}}", "to": "{{window_end}}"}},
                "status_url_pointer": "/links/status", "status_pointer": "/status",
                "done": ["success"], "failed": ["failed"],
                "result_url_pointer": "/links/result",
                "poll_interval": 100, "deadline": deadline_ms}
    })
}

fn job_states(report: &RunReport) -> Vec<JobState> {
    report.job.iter().map(|step| step.state).collect()
}

#[tokio::test]
async fn a_report_job_is_queued_processed_and_downloaded() {
    let rig = Rig::open().await;
    let cfg = rig.stream("/bearer/reports", job_spec(&rig.base, 10_000));
    let report = rig.run(&cfg).await;
    assert_stored_all(&rig, "job", &report, 5).await;
    assert_eq!(
        job_states(&report),
        [
            JobState::Queued,
            JobState::Processing,
            JobState::Success,
            JobState::Downloaded
        ]
    );
    // Each state went out as it came: one Run event per state between start and end.
    let updates: Vec<RunStatus> = rig
        .outbox
        .after(0, usize::MAX)
        .into_iter()
        .filter_map(|(_, event)| match event {
            Event::Run(r) if r.run_id == report.run_id => Some(r.status),
            _ => None,
        })
        .collect();
    assert_eq!(
        updates,
        [
            RunStatus::Running,
            RunStatus::Queued,
            RunStatus::Processing,
            RunStatus::Running,
            RunStatus::Running,
            RunStatus::Stored
        ]
    );
    let stats = rig.stats().await;
    assert_eq!(stats.jobs_submitted, 1);
    assert_eq!(stats.by_route.get("reports/{id}/result"), Some(&5));
    // The job asked for the run's window.
    let submit = rig
        .requests()
        .await
        .into_iter()
        .find(|r| r.method == "POST")
        .expect("the submission");
    assert_eq!(submit.path, "/bearer/reports");
    assert_eq!(submit.status, 202);
}

#[tokio::test]
async fn a_failed_job_fails_the_run() {
    let rig = Rig::open().await;
    rig.admin("/admin/jobs", json!({"mode": "fail", "count": 1}))
        .await;
    let report = rig
        .run(&rig.stream("/bearer/reports", job_spec(&rig.base, 10_000)))
        .await;
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert_eq!(report.class, Some(FailureClass::Api));
    assert!(!report.stream_stopped);
    let message = report.message.as_deref().unwrap_or_default();
    assert!(message.contains("\"failed\""), "{message}");
    assert_eq!(job_states(&report).last(), Some(&JobState::Failed));
    assert_eq!(job_states(&report)[0], JobState::Queued);
    assert_eq!(report.pages, 0);
}

#[tokio::test]
async fn a_stuck_job_is_submitted_again_once_then_times_out() {
    let rig = Rig::start(RuntimeConfig {
        job_delay_ms: 100,
        ..RuntimeConfig::default()
    })
    .await;
    rig.admin("/admin/jobs", json!({"mode": "stuck", "count": null}))
        .await;
    let report = rig
        .run(&rig.stream("/bearer/reports", job_spec(&rig.base, 600)))
        .await;
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert_eq!(report.class, Some(FailureClass::Timeout));
    let message = report.message.as_deref().unwrap_or_default();
    assert!(message.contains("job.deadline (600 ms)"), "{message}");
    assert_eq!(
        job_states(&report),
        [
            JobState::Queued,
            JobState::Processing,
            JobState::Resubmitted,
            JobState::Processing
        ]
    );
    assert_eq!(rig.stats().await.jobs_submitted, 2);
}

#[tokio::test]
async fn the_secret_is_in_no_message_even_when_the_api_echoes_it() {
    let rig = Rig::open().await;
    // The sim's next URLs carry the query as sent, `api_key` too; page 3 keeps failing.
    rig.admin(
        "/admin/faults",
        json!({"fault": "server_error", "count": null, "query_contains": "page=3"}),
    )
    .await;
    let mut cfg = rig.stream(
        "/query/items/next?per_page=50",
        json!({"request": {"auth": {"kind": "query", "name": "api_key"}},
               "pagination": {"kind": "next_url", "next_pointer": "/next"},
               "records": "/data"}),
    );
    cfg.timeout_ms = 2_000;
    let report = rig.run(&cfg).await;
    assert_eq!(report.status, RunStatus::Failed, "{report:?}");
    assert_eq!(report.class, Some(FailureClass::Http));
    assert_eq!(report.pages, 2);
    let message = report.message.as_deref().unwrap_or_default();
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(message.contains("gave up after"), "{message}");
    assert!(message.contains("api_key=***"), "{message}");
    assert!(!message.contains(SECRET), "{message}");
    rig.assert_secret_free();
}
