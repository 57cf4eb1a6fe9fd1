//! The general `HTTP_JSON` source and IQAir sweeps end to end, through the real binaries as
//! child processes over real TCP: json-sim (or iqair-sim), the supervisor on SQLite and a folder
//! store, and one worker. Streams are made only through `POST /streams`; every check reads the
//! supervisor's API (runs as records, results, raw pages, measurements) and the simulator's own
//! `/admin/requests` and `/admin/stats`.
//!
//! 1. cursor pages, bearer auth, window templates: every page stored byte for byte and in order,
//!    and the next run's window starts where the last one ended (as the simulator saw it);
//! 2. `Link` header pages with the key in the query: the key appears in no API answer and no log;
//! 3. an asynchronous report job behind OAuth2: the job's states on the run, then a job the API
//!    fails, listed as the stream's only failure;
//! 4. a failed run does not move the window (the next stored run covers it), and a run that
//!    failed half way leaves its pages for the next run, which stores none of them twice;
//! 5. an IQAir sweep of one voivodeship, and the sweeps `POST /streams` refuses.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use support::{
    addr_after, bin, eventually, folder_store_url, sim_env, sqlite_url, start_sim, start_worker,
    stream_objects, supervisor_env, worker_env, Api, Env, Proc, Supervisor, BUCKET, IQAIR_KEY,
};

/// What json-sim prints once it listens (`json-sim listening on http://127.0.0.1:…`).
const JSON_SIM_READY: &str = "listening on";
/// The start of every `HTTP_JSON` stream's first window here: json-sim's epoch, so the first
/// run covers all 1000 items (updated 2026-01-01 + i minutes) and later windows hold none.
const START_AT: &str = "2026-01-01T00:00:00Z";
/// No local budget: json-sim has no limit unless a test gives it one.
fn unlimited() -> Value {
    json!({"per_minute": 0, "per_day": 0, "per_month": 0})
}

/// A simulator (json-sim or iqair-sim), a supervisor and one worker, with their logs, database
/// and folder store in one temporary folder. Fields drop in order: processes first, the folder
/// last.
struct Stack {
    api: Api,
    /// The simulator's `host:port`.
    sim: String,
    http: reqwest::Client,
    worker: Proc,
    supervisor: Supervisor,
    _sim_proc: Proc,
    dir: tempfile::TempDir,
}

impl Stack {
    /// json-sim on a free port with `env` (its defaults otherwise), then the rest.
    fn json_sim(env: Env) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = env.set("JSON_SIM_ADDR", "127.0.0.1:0");
        let (proc, line) = Proc::start(
            "json-sim",
            &bin("json-sim"),
            &env,
            JSON_SIM_READY,
            dir.path(),
        );
        let addr = addr_after(&line, JSON_SIM_READY);
        Stack::around(dir, proc, addr)
    }

    /// iqair-sim on a free port accepting [`IQAIR_KEY`] with its limits off, then the rest.
    fn iqair_sim() -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let (proc, addr) = start_sim(dir.path(), &sim_env());
        Stack::around(dir, proc, addr)
    }

    fn around(dir: tempfile::TempDir, sim_proc: Proc, sim: String) -> Stack {
        let store = folder_store_url(dir.path());
        let supervisor =
            Supervisor::start(dir.path(), &supervisor_env(&sqlite_url(dir.path()), &store));
        let worker = start_worker(dir.path(), "w1", &worker_env(&supervisor.workers, &store));
        Stack {
            api: supervisor.api.clone(),
            sim,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a client"),
            worker,
            supervisor,
            _sim_proc: sim_proc,
            dir,
        }
    }

    fn sim_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sim)
    }

    async fn sim_get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.sim_url(path))
            .send()
            .await
            .expect("GET the sim");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON from the sim")
    }

    async fn sim_post(&self, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .post(self.sim_url(path))
            .json(body)
            .send()
            .await
            .expect("POST to the sim");
        assert!(
            response.status().is_success(),
            "POST {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON from the sim")
    }

    /// `DELETE /admin/faults`.
    async fn clear_faults(&self) {
        let response = self
            .http
            .delete(self.sim_url("/admin/faults"))
            .send()
            .await
            .expect("DELETE faults");
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// The simulator's request log, oldest first, as (path, query parameters, status,
    /// authorization scheme).
    async fn sim_requests(&self) -> Vec<Logged> {
        let log = self.sim_get("/admin/requests?limit=10000").await;
        log.as_array()
            .expect("a list")
            .iter()
            .map(|entry| Logged {
                path: entry["path"].as_str().expect("path").to_owned(),
                query: query_pairs(entry["query"].as_str().unwrap_or_default()),
                status: entry["status"].as_u64().expect("status"),
                authorization: entry["authorization"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect()
    }

    async fn create(&self, body: &Value) -> String {
        let created = self.api.create_stream(body).await;
        assert_eq!(created["secret_key"], "***", "{created}");
        created["id"].as_str().expect("an id").to_owned()
    }

    /// The stream's runs with `status` (all when `None`), newest first.
    async fn runs(&self, stream: &str, status: Option<&str>) -> Vec<Value> {
        let filter = status.map(|s| format!("&status={s}")).unwrap_or_default();
        let (code, body) = self
            .api
            .get(&format!("/streams/{stream}/runs?limit=1000{filter}"))
            .await;
        assert_eq!(code, 200, "{body}");
        body["items"].as_array().expect("items").clone()
    }

    /// The stream's finished runs (stored, failed or truncated), oldest first.
    async fn finished(&self, stream: &str) -> Vec<Value> {
        let mut runs: Vec<Value> = self
            .runs(stream, None)
            .await
            .into_iter()
            .filter(|run| {
                matches!(
                    run["status"].as_str(),
                    Some("stored" | "failed" | "truncated")
                )
            })
            .collect();
        runs.reverse();
        runs
    }

    /// Wait (at most `within`) until the stream's finished runs, oldest first, satisfy `enough`;
    /// returns them.
    async fn finished_until(
        &self,
        stream: &str,
        within: Duration,
        what: &str,
        enough: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        eventually(within, what, || async {
            let runs = self.finished(stream).await;
            if enough(&runs) {
                Ok(runs)
            } else {
                Err(summary(&runs))
            }
        })
        .await
    }

    /// `GET /runs/{id}`.
    async fn run(&self, id: &Value) -> Value {
        let id = id.as_str().expect("a run id");
        let (code, body) = self.api.get(&format!("/runs/{id}")).await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// The raw bytes of a result, checked against its reference's size and SHA-256.
    async fn raw(&self, reference: &Value) -> Vec<u8> {
        let id = reference["id"].as_str().expect("a result id");
        let (code, raw) = self.api.get_bytes(&format!("/results/{id}/raw")).await;
        assert_eq!(code, 200, "raw of {id}");
        assert_eq!(raw.len() as u64, reference["size"].as_u64().expect("size"));
        assert_eq!(
            objects::sha256_hex(&raw),
            reference["sha256"].as_str().expect("sha256")
        );
        raw
    }
}

/// One request in json-sim's log.
#[derive(Debug, Clone)]
struct Logged {
    path: String,
    query: BTreeMap<String, String>,
    status: u64,
    authorization: String,
}

impl Logged {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

/// A raw query string's parameters, decoded.
fn query_pairs(query: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .expect("a query")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Epoch milliseconds of an RFC 3339 time (a JSON string).
fn ms(time: &Value) -> i64 {
    let text = time
        .as_str()
        .unwrap_or_else(|| panic!("a time, not {time}"));
    ms_of(text)
}

fn ms_of(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

/// Runs in one line each, for failure messages.
fn summary(runs: &[Value]) -> String {
    runs.iter()
        .map(|r| {
            format!(
                "{} pages={} records={} window=[{}, {}) class={} message={}",
                r["status"],
                r["pages"],
                r["records"],
                r["window_start"],
                r["window_end"],
                r["class"],
                r["message"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `id`s of the records at `/data` of a raw page.
fn ids(raw: &[u8]) -> Vec<u64> {
    let page: Value = serde_json::from_slice(raw).expect("a stored page is JSON");
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|item| item["id"].as_u64().expect("an id"))
        .collect()
}

/// The job states a run went through, in order.
fn job_states(run: &Value) -> Vec<String> {
    run["job"]
        .as_array()
        .unwrap_or_else(|| panic!("a job on {run}"))
        .iter()
        .map(|step| {
            assert!(step["at"].is_string(), "{step}");
            step["state"].as_str().expect("state").to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_with_bearer_auth_cover_one_window_after_another() {
    let stack = Stack::json_sim(Env::new());
    let endpoint = stack.sim_url("/bearer/items/cursor");
    let id = stack
        .create(&json!({
            "adapter": "HTTP_JSON", "endpoint": endpoint, "secret_key": "sim-secret",
            "interval": 2000, "bucket_name": BUCKET, "start_at": START_AT,
            "params": {"limit": "100", "updated_since": "{{window_start}}", "until": "{{window_end}}"},
            "request": {"auth": {"kind": "bearer"}},
            "pagination": {"kind": "cursor", "param": "cursor", "next_pointer": "/meta/next_cursor"},
            "records": "/data",
            "rate_limit": unlimited(),
        }))
        .await;

    let runs = stack
        .finished_until(&id, Duration::from_secs(20), "two finished runs", |r| {
            r.len() >= 2
        })
        .await;
    let (first, second) = (&runs[0], &runs[1]);
    // Ten full pages; the tenth has no next cursor, so no empty page is asked for.
    assert_eq!(first["status"], "stored", "{}", summary(&runs));
    assert_eq!(
        (first["pages"].as_i64(), first["records"].as_i64()),
        (Some(10), Some(1000))
    );
    assert_eq!(ms(&first["window_start"]), ms_of(START_AT));
    // The next window starts where the first ended; it holds no item: one empty page, stored.
    assert_eq!(second["status"], "stored", "{}", summary(&runs));
    assert_eq!(ms(&second["window_start"]), ms(&first["window_end"]));
    assert!(ms(&second["window_end"]) > ms(&first["window_end"]));
    assert_eq!(
        (second["pages"].as_i64(), second["records"].as_i64()),
        (Some(1), Some(0))
    );

    // What the simulator saw: the first run's ten calls share its window, the first without a
    // cursor; the second run asks from the first's `until`, exactly as sent.
    let log: Vec<Logged> = stack
        .sim_requests()
        .await
        .into_iter()
        .filter(|r| r.path == "/bearer/items/cursor")
        .collect();
    let of_first: Vec<&Logged> = log
        .iter()
        .filter(|r| r.param("updated_since").map(ms_of) == Some(ms(&first["window_start"])))
        .collect();
    assert_eq!(of_first.len(), 10, "{of_first:#?}");
    assert!(of_first
        .iter()
        .all(|r| r.status == 200 && r.authorization == "bearer"));
    assert_eq!(of_first[0].param("cursor"), None);
    assert!(of_first[1..].iter().all(|r| r.param("cursor").is_some()));
    assert!(of_first.iter().all(|r| r.param("limit") == Some("100")));
    let until = of_first[0].param("until").expect("until").to_owned();
    assert!(of_first
        .iter()
        .all(|r| r.param("until") == Some(until.as_str())));
    assert_eq!(ms_of(&until), ms(&first["window_end"]));
    let of_second: Vec<&Logged> = log
        .iter()
        .filter(|r| r.param("updated_since") == Some(until.as_str()))
        .collect();
    assert!(!of_second.is_empty(), "no request from {until}: {log:#?}");
    assert_eq!(of_second[0].status, 200);
    assert_eq!(
        ms_of(of_second[0].param("until").expect("until")),
        ms(&second["window_end"])
    );

    // The stream's next window moves on with its runs.
    eventually(
        Duration::from_secs(10),
        "the stream's window_end past the second run",
        || async {
            let stream = stack.api.stream(&id).await;
            let end = stream["window_end"].as_str().map(ms_of);
            (end >= Some(ms(&second["window_end"]))).then_some(())
        },
    )
    .await;

    // The first run's pages, in order: each byte for byte what the simulator answers to the same
    // request (asked again here, following the stored pages' own cursors), 100 ids each.
    let detail = stack.run(&first["id"]).await;
    let pages = detail["pages_stored"].as_array().expect("pages_stored");
    assert_eq!(pages.len(), 10, "{detail}");
    let mut cursor: Option<String> = None;
    for (index, page) in pages.iter().enumerate() {
        assert_eq!(page["page"].as_u64(), Some(index as u64), "{page}");
        assert_eq!(page["run_id"], first["id"]);
        let raw = stack.raw(page).await;
        let start = index as u64 * 100;
        assert_eq!(ids(&raw), (start..start + 100).collect::<Vec<_>>());
        let mut query = vec![
            ("limit", "100".to_owned()),
            (
                "updated_since",
                of_first[0].param("updated_since").unwrap().to_owned(),
            ),
            ("until", until.clone()),
        ];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let again = stack
            .http
            .get(&endpoint)
            .bearer_auth("sim-secret")
            .query(&query)
            .send()
            .await
            .expect("the sim")
            .bytes()
            .await
            .expect("a body");
        assert_eq!(
            raw,
            again.to_vec(),
            "page {index} is not what the sim answers"
        );
        let body: Value = serde_json::from_slice(&raw).unwrap();
        cursor = body["meta"]["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(cursor, None, "the last stored page ends the cursor chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_header_pages_with_the_key_in_the_query_never_show_the_key() {
    const SECRET: &str = "e2e-query-key-5c1d9a";
    let stack = Stack::json_sim(Env::new().set("JSON_SIM_SECRET", SECRET));
    let id = stack
        .create(&json!({
            "adapter": "HTTP_JSON", "endpoint": stack.sim_url("/query/items/link?per_page=250"),
            "secret_key": SECRET, "interval": 2000, "bucket_name": BUCKET, "start_at": START_AT,
            "params": {"updated_since": "{{window_start}}", "until": "{{window_end}}"},
            "request": {"auth": {"kind": "query", "name": "api_key"}},
            "pagination": {"kind": "link_header"},
            "records": "/data",
            "rate_limit": unlimited(),
        }))
        .await;
    let runs = stack
        .finished_until(&id, Duration::from_secs(20), "two finished runs", |r| {
            r.len() >= 2
        })
        .await;
    let first = &runs[0];
    assert_eq!(first["status"], "stored", "{}", summary(&runs));
    assert_eq!(
        (first["pages"].as_i64(), first["records"].as_i64()),
        (Some(4), Some(1000))
    );
    let detail = stack.run(&first["id"]).await;
    let pages = detail["pages_stored"].as_array().expect("pages_stored");
    assert_eq!(pages.len(), 4);
    for (index, page) in pages.iter().enumerate() {
        assert_eq!(page["page"].as_u64(), Some(index as u64));
        let start = index as u64 * 250;
        assert_eq!(
            ids(&stack.raw(page).await),
            (start..start + 250).collect::<Vec<_>>()
        );
    }

    // The simulator got the key in the query on every call, the next pages by their Link URLs.
    let log: Vec<Logged> = stack
        .sim_requests()
        .await
        .into_iter()
        .filter(|r| r.path == "/query/items/link")
        .collect();
    assert!(
        log.iter()
            .all(|r| r.status == 200 && r.authorization == "query"),
        "{log:#?}"
    );
    assert!(log.iter().all(|r| r.param("api_key") == Some("***")));
    let pages_asked: BTreeSet<&str> = log.iter().filter_map(|r| r.param("page")).collect();
    assert_eq!(pages_asked, BTreeSet::from(["2", "3", "4"]), "{log:#?}");

    // The key is in no answer of the API and in no log line.
    let mut answers = vec![stack.api.get(&format!("/streams/{id}")).await.1];
    answers.push(stack.api.get(&format!("/streams/{id}/runs")).await.1);
    for run in &runs {
        answers.push(stack.run(&run["id"]).await);
    }
    answers.extend(stack.api.all_results(&id).await);
    answers.push(stack.api.get(&format!("/streams/{id}/failures")).await.1);
    for answer in &answers {
        assert!(!answer.to_string().contains(SECRET), "the key in {answer}");
    }
    let stream = stack.api.stream(&id).await;
    assert_eq!(stream["secret_key"], "***");
    for proc in [&stack.supervisor.proc, &stack.worker] {
        let log = proc.log_text();
        assert!(!log.is_empty(), "{} logged nothing", proc.name);
        assert!(!log.contains(SECRET), "the key in the log of {}", proc.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_report_job_is_followed_to_its_pages_and_its_failure_is_recorded() {
    let stack = Stack::json_sim(Env::new().set("JSON_SIM_JOB_DELAY_MS", "1000"));
    let id = stack
        .create(&json!({
            "adapter": "HTTP_JSON", "endpoint": stack.sim_url("/oauth2/reports"),
            "secret_key": "sim-secret", "interval": 5000, "timeout": 10000,
            "bucket_name": BUCKET, "start_at": START_AT,
            "request": {"auth": {"kind": "oauth2_client_credentials",
                                 "token_url": stack.sim_url("/oauth/token"),
                                 "client_id": "sim-client"}},
            "job": {"submit": {"method": "POST",
                               "body": {"from": "{{window_start}}", "to": "{{window_end}}"}},
                    "status_url_pointer": "/links/status", "status_pointer": "/status",
                    "done": ["success"], "failed": ["failed"],
                    "result_url_pointer": "/links/result", "poll_interval": 200, "deadline": 10000},
            "pagination": {"kind": "page", "param": "page", "size_param": "per_page", "size": 200,
                           "total_pages_pointer": "/meta/total_pages"},
            "records": "/data",
            "rate_limit": unlimited(),
        }))
        .await;
    let runs = stack
        .finished_until(&id, Duration::from_secs(20), "a finished run", |r| {
            !r.is_empty()
        })
        .await;
    let first = &runs[0];
    assert_eq!(first["status"], "stored", "{}", summary(&runs));
    assert_eq!(
        (first["pages"].as_i64(), first["records"].as_i64()),
        (Some(5), Some(1000))
    );
    let mut states = job_states(first);
    states.dedup();
    assert_eq!(
        states,
        ["queued", "processing", "success", "downloaded"],
        "{first}"
    );
    let detail = stack.run(&first["id"]).await;
    let pages = detail["pages_stored"].as_array().expect("pages_stored");
    assert_eq!(pages.len(), 5);
    for (index, page) in pages.iter().enumerate() {
        let start = index as u64 * 200;
        assert_eq!(
            ids(&stack.raw(page).await),
            (start..start + 200).collect::<Vec<_>>()
        );
    }
    let stats = stack.sim_get("/admin/stats").await;
    assert!(stats["tokens_issued"].as_u64() >= Some(1), "{stats}");
    assert!(stats["jobs_submitted"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["unauthorized"], 0, "{stats}");
    // The submission carried the run's window, and the data calls a token.
    let log = stack.sim_requests().await;
    let submit = log
        .iter()
        .find(|r| r.path == "/oauth2/reports")
        .expect("a submission");
    assert_eq!(
        (submit.status, submit.authorization.as_str()),
        (202, "bearer")
    );

    // The API fails the next job: that run fails with class `api`, and is the only failure.
    let mode = stack
        .sim_post("/admin/jobs", &json!({"mode": "fail", "count": 1}))
        .await;
    assert_eq!(mode["remaining"], 1, "{mode}");
    let runs = stack
        .finished_until(&id, Duration::from_secs(25), "a failed run", |r| {
            r.iter().any(|run| run["status"] == "failed")
        })
        .await;
    let failed: Vec<&Value> = runs.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{}", summary(&runs));
    let failed = failed[0];
    assert_eq!(failed["class"], "api", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("failed"),
        "{failed}"
    );
    assert_eq!(
        job_states(failed).last().map(String::as_str),
        Some("failed"),
        "{failed}"
    );
    let listed = stack.runs(&id, Some("failed")).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], failed["id"]);
    let (code, failures) = stack.api.get(&format!("/streams/{id}/failures")).await;
    assert_eq!(code, 200, "{failures}");
    let failures = failures["items"].as_array().expect("items");
    assert!(
        failures
            .iter()
            .any(|f| f["run_id"] == failed["id"] && f["class"] == "api"),
        "{failures:?}"
    );
}

/// A `page` stream on json-sim's open `/none/items/page`, 100 items a page, pages told by the
/// first one.
fn paged_stream(stack: &Stack, page_concurrency: u32) -> Value {
    json!({
        "adapter": "HTTP_JSON", "endpoint": stack.sim_url("/none/items/page"),
        "secret_key": "unused", "interval": 2000, "timeout": 1800,
        "bucket_name": BUCKET, "start_at": START_AT,
        "params": {"updated_since": "{{window_start}}", "until": "{{window_end}}"},
        "pagination": {"kind": "page", "param": "page", "size_param": "per_page", "size": 100,
                       "total_pages_pointer": "/meta/total_pages"},
        "records": "/data",
        "page_concurrency": page_concurrency,
        "rate_limit": unlimited(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_leaves_its_window_and_its_pages_to_the_next_run() {
    let stack = Stack::json_sim(Env::new());
    let id = stack.create(&paged_stream(&stack, 4)).await;
    let runs = stack
        .finished_until(&id, Duration::from_secs(15), "a stored run", |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(runs[0]["status"], "stored", "{}", summary(&runs));
    assert_eq!(runs[0]["pages"], 10);

    // Every page call fails: the runs fail with class `http` and store no window.
    let fault = json!({"fault": "server_error", "count": null, "path_contains": "/items/page"});
    stack.sim_post("/admin/faults", &fault).await;
    let runs = stack
        .finished_until(&id, Duration::from_secs(15), "a failed run", |r| {
            r.iter().any(|run| run["status"] == "failed")
        })
        .await;
    let failed = runs.iter().find(|r| r["status"] == "failed").unwrap();
    assert_eq!(failed["class"], "http", "{failed}");
    stack.clear_faults().await;

    // The first stored run after the failures starts at the last stored run's end.
    let runs = stack
        .finished_until(
            &id,
            Duration::from_secs(15),
            "a stored run after the failure",
            |r| {
                let last_failed = r.iter().rposition(|run| run["status"] == "failed");
                last_failed.is_some_and(|i| r[i..].iter().any(|run| run["status"] == "stored"))
            },
        )
        .await;
    let first_failed = runs.iter().position(|r| r["status"] == "failed").unwrap();
    let last_failed = runs.iter().rposition(|r| r["status"] == "failed").unwrap();
    let before = runs[..first_failed]
        .iter()
        .rev()
        .find(|r| r["status"] == "stored")
        .expect("a stored run before");
    let after = runs[last_failed..]
        .iter()
        .find(|r| r["status"] == "stored")
        .expect("a stored run after");
    let summary_text = summary(&runs);
    for failed in &runs[first_failed..=last_failed] {
        if failed["status"] == "failed" {
            assert_eq!(failed["class"], "http", "{summary_text}");
            assert_eq!(
                ms(&failed["window_start"]),
                ms(&before["window_end"]),
                "{summary_text}"
            );
        }
    }
    assert_eq!(
        ms(&after["window_start"]),
        ms(&before["window_end"]),
        "{summary_text}"
    );
    assert!(
        ms(&after["window_end"]) > ms(&runs[last_failed]["window_end"]),
        "the stored run covers the failed runs' windows: {summary_text}"
    );
    // The simulator answered that window's start with 200 once the fault was gone.
    let log = stack.sim_requests().await;
    let answered = log.iter().find(|r| {
        r.path == "/none/items/page"
            && r.status == 200
            && r.param("updated_since").map(ms_of) == Some(ms(&after["window_start"]))
    });
    let answered =
        answered.unwrap_or_else(|| panic!("no 200 from {}: {log:#?}", after["window_start"]));
    assert_eq!(
        answered.param("until").map(ms_of),
        Some(ms(&after["window_end"]))
    );
    assert!(
        log.iter().any(|r| r.status == 500
            && r.param("updated_since").map(ms_of) == Some(ms(&before["window_end"]))),
        "the failed runs asked from the same start"
    );

    // A run failing on its third page (one page at a time): pages 1 and 2 stay stored and
    // referenced; the next run asks for the same window, stores the rest and none of them again.
    let fault = json!({"fault": "server_error", "count": null, "path_contains": "/items/page",
                       "query_contains": "page=3"});
    stack.sim_post("/admin/faults", &fault).await;
    let other = stack.create(&paged_stream(&stack, 1)).await;
    let runs = stack
        .finished_until(&other, Duration::from_secs(15), "a failed run", |r| {
            !r.is_empty()
        })
        .await;
    let failed = &runs[0];
    assert_eq!(
        (failed["status"].as_str(), failed["class"].as_str()),
        (Some("failed"), Some("http")),
        "{failed}"
    );
    assert_eq!(failed["pages"], 2, "{failed}");
    let detail = stack.run(&failed["id"]).await;
    let kept: Vec<Value> = detail["pages_stored"]
        .as_array()
        .expect("pages_stored")
        .clone();
    assert_eq!(
        kept.iter()
            .map(|p| p["page"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(
        ids(&stack.raw(&kept[1]).await),
        (100..200).collect::<Vec<_>>()
    );
    stack.clear_faults().await;

    let runs = stack
        .finished_until(&other, Duration::from_secs(15), "a stored run", |r| {
            r.iter().any(|run| run["status"] == "stored")
        })
        .await;
    let stored = runs.iter().find(|r| r["status"] == "stored").unwrap();
    let summary_text = summary(&runs);
    assert_eq!(
        ms(&stored["window_start"]),
        ms_of(START_AT),
        "{summary_text}"
    );
    assert_eq!(stored["pages"], 8, "{summary_text}");
    let message = stored["message"].as_str().unwrap_or_default();
    assert!(message.contains("2 page(s) identical"), "{summary_text}");

    // Every page of the window once: ten references, ten distinct contents, ten objects.
    let results = stack.api.all_results(&other).await;
    let mut per_sha: HashMap<&str, usize> = HashMap::new();
    for result in &results {
        *per_sha
            .entry(result["sha256"].as_str().unwrap())
            .or_default() += 1;
    }
    assert!(
        per_sha.values().all(|&n| n == 1),
        "a page stored twice: {per_sha:?}"
    );
    let pages: BTreeSet<u64> = results
        .iter()
        .map(|r| r["page"].as_u64().unwrap())
        .collect();
    assert_eq!(pages, (0..10).collect());
    assert_eq!(results.len(), 10);
    let objects = stream_objects(&stack.dir.path().join("objects"), &other);
    assert_eq!(objects.len(), 10, "{objects:?}");
    let mut all_ids = Vec::new();
    for result in results.iter().rev() {
        all_ids.extend(ids(&stack.raw(result).await));
    }
    all_ids.sort_unstable();
    assert_eq!(all_ids, (0..1000).collect::<Vec<_>>());
}

/// `POST /streams` expecting 422; returns `detail`.
async fn refused(api: &Api, body: &Value) -> Value {
    let (code, answer) = api.post("/streams", body).await;
    assert_eq!(code, 422, "{answer}");
    answer["detail"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iqair_sweep_reads_every_city_of_a_state_and_sweeps_over_budget_are_refused() {
    let stack = Stack::iqair_sim();
    let city = stack.sim_url("/v2/city");
    // The simulator's own list of Mazovia's cities.
    let listed = stack
        .sim_get(&format!(
            "/v2/cities?state=Mazovia&country=Poland&key={IQAIR_KEY}"
        ))
        .await;
    let cities: BTreeSet<String> = listed["data"]
        .as_array()
        .expect("cities")
        .iter()
        .map(|c| c["city"].as_str().expect("a name").to_owned())
        .collect();
    assert!(cities.len() >= 2, "{listed}");

    let id = stack
        .create(&json!({
            "adapter": "IQAIR_DAILY", "endpoint": city, "secret_key": IQAIR_KEY,
            "interval": 4000, "bucket_name": BUCKET,
            "params": {"country": "Poland", "state": "Mazovia"},
            "rate_limit": unlimited(),
        }))
        .await;
    let runs = stack
        .finished_until(&id, Duration::from_secs(20), "a finished run", |r| {
            !r.is_empty()
        })
        .await;
    let run = &runs[0];
    assert_eq!(run["status"], "stored", "{}", summary(&runs));
    assert_eq!(run["pages"].as_u64(), Some(cities.len() as u64), "{run}");
    let detail = stack.run(&run["id"]).await;
    let pages: Vec<u64> = detail["pages_stored"]
        .as_array()
        .expect("pages_stored")
        .iter()
        .map(|p| p["page"].as_u64().unwrap())
        .collect();
    assert_eq!(pages, (0..cities.len() as u64).collect::<Vec<_>>());
    let (code, measurements) = stack.api.get(&format!("/streams/{id}/measurements")).await;
    assert_eq!(code, 200, "{measurements}");
    let mut per_hour: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in measurements["items"].as_array().expect("items") {
        assert_eq!(
            (m["country"].as_str(), m["state"].as_str()),
            (Some("Poland"), Some("Mazovia")),
            "{m}"
        );
        let key = (
            m["city"].as_str().expect("city").to_owned(),
            m["ts"].as_str().expect("ts").to_owned(),
        );
        *per_hour.entry(key).or_default() += 1;
    }
    assert!(per_hour.values().all(|&n| n == 1), "{per_hour:?}");
    let seen: BTreeSet<String> = per_hour.keys().map(|(city, _)| city.clone()).collect();
    assert_eq!(seen, cities);

    // All of Poland every 15 minutes on a Community key (no rate_limit: 5/min, 500/day).
    let before = stack.sim_get("/admin/stats").await["requests"].as_u64();
    let poland = json!({"adapter": "IQAIR_DAILY", "endpoint": city, "secret_key": IQAIR_KEY,
                        "interval": 900_000, "bucket_name": BUCKET, "params": {"country": "Poland"}});
    let detail = refused(&stack.api, &poland).await;
    assert_eq!(detail["code"], "sweep_over_budget", "{detail}");
    assert_eq!(
        detail["message"],
        "17 cities × 96 runs a day = 1,632 calls a day; the key allows 500"
    );
    assert!(
        detail["interval_that_fits_ms"].as_u64().is_some(),
        "{detail}"
    );
    // The discovery went through to the simulator (its limits are off).
    let after = stack.sim_get("/admin/stats").await["requests"].as_u64();
    assert!(after > before, "{before:?} → {after:?}");

    let narnia = json!({"adapter": "IQAIR_DAILY", "endpoint": city, "secret_key": IQAIR_KEY,
                        "interval": 900_000, "bucket_name": BUCKET, "params": {"country": "Narnia"}});
    let detail = refused(&stack.api, &narnia).await;
    assert_eq!(detail["code"], "sweep_discovery", "{detail}");
    assert!(
        detail["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Narnia"),
        "{detail}"
    );

    let nearest = json!({"adapter": "IQAIR_DAILY", "endpoint": stack.sim_url("/v2/nearest_city"),
                         "secret_key": IQAIR_KEY, "interval": 900_000, "bucket_name": BUCKET,
                         "params": {"country": "Poland"}});
    let detail = refused(&stack.api, &nearest).await;
    assert_eq!(detail["code"], "invalid_stream", "{detail}");
    assert!(detail.to_string().contains("`city` endpoint"), "{detail}");
    assert!(!detail.to_string().contains(IQAIR_KEY), "{detail}");
    // Only the Mazovia stream exists.
    let (_, streams) = stack.api.get("/streams").await;
    let count = streams.as_array().map(Vec::len);
    assert_eq!(count, Some(1), "{streams}");
}
