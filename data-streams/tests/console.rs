//! The console in a real browser: headless Chromium driven through chromedriver (WebDriver)
//! against the real `data-streams`, `worker` and `iqair-sim` processes, with an API token set.
//!
//! One walk through what a new user does: be refused without the token and log in with it, see
//! a bad interval refused next to its field, create a stream, watch its first reading arrive on
//! the stream page without a reload, open its raw object, stop it and see the status change,
//! drill down the report one level, look at the workers, log out. A screenshot of each page is
//! saved under `target/tmp/console-screenshots/`.
//!
//! Needs Chromium and chromedriver (`apt-get install -y chromium chromium-driver`, which
//! scripts/test.sh does): `CHROMIUM` and `CHROMEDRIVER` name them, else `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`. Missing, the test fails saying so; it never skips.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::{nearest_city, Env, Proc, Stack, API_TOKEN, IQAIR_KEY};

/// A program the test needs: `$var`, else `default`; it must exist.
fn program(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.exists(),
        "{} is missing: the console tests need Chromium and chromedriver; run scripts/test.sh, \
         which installs them (apt-get install -y chromium chromium-driver), or set {var}",
        path.display()
    );
    path
}

/// chromedriver on a free port; returns it and its URL.
fn start_chromedriver(logs: &Path) -> (Proc, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let driver = program("CHROMEDRIVER", "/usr/bin/chromedriver");
    let wrapper = logs.join("chromedriver.sh");
    // chromedriver takes its port as a flag; the process helper takes variables.
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --port={port} --allowed-ips=127.0.0.1\n",
            driver.display()
        ),
    )
    .expect("a wrapper script");
    std::process::Command::new("chmod")
        .args(["+x", &wrapper.display().to_string()])
        .status()
        .expect("chmod");
    let (proc, _) = Proc::start(
        "chromedriver",
        &wrapper,
        &Env::new(),
        "started successfully",
        logs,
    );
    (proc, format!("http://127.0.0.1:{port}"))
}

/// A headless Chromium session at 1280×900 (the flags keep it off the closed network).
async fn browser(webdriver: &str, profile: &Path) -> Client {
    let chromium = program("CHROMIUM", "/usr/bin/chromium");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(webdriver)
        .await
        .expect("a Chromium session through chromedriver")
}

/// The element `data-test=<name>`, waiting for it (at most 20 s).
async fn find(client: &Client, name: &str) -> fantoccini::elements::Element {
    wait_css(client, &format!("[data-test={name}]")).await
}

async fn wait_css(client: &Client, css: &str) -> fantoccini::elements::Element {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            return element;
        }
        assert!(Instant::now() < deadline, "no {css} within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait (at most `within`) until `script` (returning a boolean) is true in the page.
async fn until(client: &Client, within: Duration, what: &str, script: &str) {
    let deadline = Instant::now() + within;
    loop {
        let value = client.execute(script, vec![]).await.expect("a script runs");
        if value == Value::Bool(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Click the element `data-test=<name>`, waiting for it.
async fn click(client: &Client, name: &str) {
    find(client, name)
        .await
        .click()
        .await
        .unwrap_or_else(|err| panic!("clicking {name}: {err}"));
}

/// Wait (at most 10 s) until the element `data-test=<name>` holds `text`.
async fn shows(client: &Client, name: &str, text: &str) {
    let script = format!(
        "const e = document.querySelector('[data-test={name}]'); \
         return !!e && e.textContent.includes({});",
        json!(text)
    );
    until(
        client,
        Duration::from_secs(10),
        &format!("{text:?} in {name}"),
        &script,
    )
    .await;
}

/// Wait (at most 10 s) until the stream page shows the status `status`.
async fn status_is(client: &Client, status: &str) {
    let script = format!(
        "const s = document.querySelector('[data-test=stream-status]'); \
         return !!s && s.dataset.status === '{status}';"
    );
    until(
        client,
        Duration::from_secs(10),
        &format!("the status {status}"),
        &script,
    )
    .await;
}

async fn screenshot(client: &Client, name: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot folder");
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is saved");
}

/// Type into the form input `name`, replacing what it holds.
async fn fill(client: &Client, name: &str, value: &str) {
    let input = wait_css(client, &format!("dialog [name={name}]")).await;
    input.clear().await.expect("clear");
    if !value.is_empty() {
        input.send_keys(value).await.expect("type");
    }
}

/// The HTTP status of a same-origin `fetch` of `path` from the page (it carries the cookie).
async fn fetch_status(client: &Client, path: &str) -> u64 {
    let status = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(arguments[0]).then(r => done(r.status), e => done(String(e)));",
            vec![json!(path)],
        )
        .await
        .expect("a fetch from the page");
    status
        .as_u64()
        .unwrap_or_else(|| panic!("fetch {path}: {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_runs_a_stream_from_the_console() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let logs = dir.path();
    let stack = Stack::start(logs, "console-worker");
    let (sim, supervisor) = (&stack.sim, &stack.supervisor);
    let (_driver, webdriver) = start_chromedriver(logs);
    let client = browser(&webdriver, &logs.join("chromium-profile")).await;
    let base = format!("http://{}", supervisor.http);

    // Refused without the token: only the login form, and the API says 401 to the page.
    client.goto(&format!("{base}/")).await.expect("the console");
    let token = find(&client, "login-token").await;
    assert!(
        client
            .find(Locator::Css("[data-test=streams-table]"))
            .await
            .is_err(),
        "no data before logging in"
    );
    assert_eq!(fetch_status(&client, "/streams").await, 401);
    token.send_keys("not-the-token").await.expect("type");
    click(&client, "login-submit").await;
    shows(&client, "login-error", "not valid").await;
    screenshot(&client, "login").await;
    let token = find(&client, "login-token").await;
    token.clear().await.expect("clear");
    token.send_keys(API_TOKEN).await.expect("type");
    click(&client, "login-submit").await;
    find(&client, "streams-table").await;
    assert_eq!(
        fetch_status(&client, "/streams").await,
        200,
        "the session works"
    );

    // A bad interval is refused by the API, and its message shows next to the field.
    click(&client, "new-stream").await;
    fill(&client, "endpoint", &nearest_city(sim)).await;
    fill(&client, "secret_key", IQAIR_KEY).await;
    fill(&client, "interval", "0.5").await;
    fill(&client, "lat", "52.52").await;
    fill(&client, "lon", "13.40").await;
    for window in ["per_minute", "per_day", "per_month"] {
        fill(&client, window, "0").await;
    }
    let start = wait_css(&client, "dialog [name=start]").await;
    start.click().await.expect("create it stopped");
    click(&client, "create-submit").await;
    shows(&client, "error-interval", "interval must be between").await;
    screenshot(&client, "form-error").await;
    fill(&client, "interval", "2").await;
    click(&client, "create-submit").await;
    let row = find(&client, "stream-row").await;
    let id = row
        .attr("data-id")
        .await
        .expect("an attribute")
        .expect("an id");
    assert_eq!(
        row.attr("data-status")
            .await
            .expect("an attribute")
            .as_deref(),
        Some("stopped")
    );

    // The stream page, then start: the first reading arrives without a reload.
    client
        .goto(&format!("{base}/#/streams/{id}"))
        .await
        .expect("the stream page");
    find(&client, "readings").await;
    client
        .execute("window.__not_reloaded = true; return true;", vec![])
        .await
        .expect("a marker");
    click(&client, "start").await;
    until(
        &client,
        Duration::from_secs(30),
        "a reading arriving live",
        "return document.querySelectorAll('[data-test=reading]').length > 0;",
    )
    .await;
    status_is(&client, "running").await;
    let marker = client
        .execute("return window.__not_reloaded === true;", vec![])
        .await
        .expect("the marker");
    assert_eq!(marker, Value::Bool(true), "the page was reloaded");

    // The raw object, one click away: the bytes the API sent.
    let raw = find(&client, "raw-link").await;
    let href = raw
        .attr("href")
        .await
        .expect("an attribute")
        .expect("a link");
    assert!(href.contains("/raw"), "{href}");

    // Stop: the status changes on the page.
    click(&client, "stop").await;
    status_is(&client, "stopped").await;
    screenshot(&client, "stream").await;
    client
        .goto(&format!("{base}{href}"))
        .await
        .expect("the raw object");
    let body = client.source().await.expect("the page source");
    assert!(body.contains("\"status\":\"success\""), "{body}");

    // The report, and one level down (the simulator puts 52.52, 13.40 in Germany).
    client
        .goto(&format!("{base}/#/reports"))
        .await
        .expect("the report");
    find(&client, "report-sentence").await;
    let row = find(&client, "report-row").await;
    assert_eq!(
        row.attr("data-key").await.expect("an attribute").as_deref(),
        Some("Germany")
    );
    click(&client, "drill").await;
    until(
        &client,
        Duration::from_secs(10),
        "the states of Germany",
        "const t = document.querySelector('[data-test=report-table]'); \
         const b = document.querySelector('[data-test=breadcrumb]'); \
         return !!t && t.dataset.level === 'state' && !!b && b.textContent.includes('Germany');",
    )
    .await;
    screenshot(&client, "reports").await;

    // The workers, connected.
    client
        .goto(&format!("{base}/#/workers"))
        .await
        .expect("the workers");
    let table = find(&client, "workers-table").await;
    shows(&client, "workers-table", "console-worker").await;
    assert!(table.text().await.expect("text").contains("console-worker"));
    screenshot(&client, "workers").await;
    client
        .goto(&format!("{base}/#/streams"))
        .await
        .expect("back");
    find(&client, "streams-table").await;
    screenshot(&client, "streams").await;

    // Log out: the form is back, and the API refuses the page again.
    click(&client, "logout").await;
    find(&client, "login-token").await;
    assert_eq!(fetch_status(&client, "/streams").await, 401);
    client.close().await.expect("the session ends");
}

/// A stream on the stack's simulator every second, without a call budget, that stored at least
/// `results` results and was then stopped and settled (its figures no longer change).
async fn a_stream_that_ran(stack: &Stack, results: usize) -> String {
    let api = &stack.supervisor.api;
    let body = support::unlimited(support::iqair_stream(
        &nearest_city(&stack.sim),
        IQAIR_KEY,
        1_000,
    ));
    let id = api.create_stream(&body).await["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    api.results_at_least(&id, results, Duration::from_secs(30))
        .await;
    api.stop_and_settle(&id, Duration::from_secs(20)).await;
    id
}

/// Chromedriver, a browser, and the stack's console logged in with the API token, on the
/// streams page; the driver (kept alive by the caller), the browser and the console's URL.
async fn logged_in(logs: &Path, stack: &Stack) -> (Proc, Client, String) {
    let (driver, webdriver) = start_chromedriver(logs);
    let client = browser(&webdriver, &logs.join("chromium-profile")).await;
    let base = format!("http://{}", stack.supervisor.http);
    client.goto(&format!("{base}/")).await.expect("the console");
    find(&client, "login-token")
        .await
        .send_keys(API_TOKEN)
        .await
        .expect("type");
    click(&client, "login-submit").await;
    find(&client, "streams-table").await;
    (driver, client, base)
}

/// The stream page draws the coverage strip (`console/coverage.js`) of the last 24 hours with
/// the counts the API gives, for a stream that ran a few seconds on the real worker and was
/// stopped (so the counts no longer change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_page_draws_the_coverage_strip_with_the_api_counts() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let logs = dir.path();
    let stack = Stack::start(logs, "coverage-worker");
    let api = &stack.supervisor.api;
    let id = a_stream_that_ran(&stack, 3).await;
    // Past the open end (timeout 1 s + 2 s): every slot of the run is judged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, ledger) = api.get(&format!("/streams/{id}/coverage")).await;
    assert_eq!(status, 200, "{ledger}");
    let counts = &ledger["counts"];
    assert!(counts["stored"].as_u64().expect("a count") >= 3, "{ledger}");

    let (_driver, client, base) = logged_in(logs, &stack).await;
    client
        .goto(&format!("{base}/#/streams/{id}"))
        .await
        .expect("the stream page");
    find(&client, "coverage-bar").await;
    for outcome in ["expected", "stored", "failed", "skipped", "missing"] {
        let want = counts[outcome].as_u64().expect("a count");
        let script = format!(
            "const e = document.querySelector('[data-test=coverage-{outcome}]'); \
             return !!e && Number(e.textContent.replace(/[^0-9]/g, '')) === {want};"
        );
        until(
            &client,
            Duration::from_secs(10),
            &format!("{outcome} {want}"),
            &script,
        )
        .await;
    }
    until(
        &client,
        Duration::from_secs(10),
        "stored spans in the bar",
        "return document.querySelectorAll('[data-test=coverage-bar] rect[data-outcome=stored]').length > 0;",
    )
    .await;
    // The runs card lists the stream's newest runs as `GET /streams/{id}/runs` gives them.
    let (status, runs) = api.get(&format!("/streams/{id}/runs?limit=20")).await;
    assert_eq!(status, 200, "{runs}");
    let stored = runs["items"]
        .as_array()
        .expect("a list of runs")
        .iter()
        .filter(|r| r["status"] == "stored")
        .count();
    assert!(stored >= 3, "{runs}");
    until(
        &client,
        Duration::from_secs(10),
        &format!("{stored} stored runs in the runs table"),
        &format!(
            "return document.querySelectorAll('[data-test=runs] tr[data-test=run][data-status=stored]').length === {stored};"
        ),
    )
    .await;
    screenshot(&client, "coverage").await;
    client.close().await.expect("close the browser");
}

/// The warehouse page (`console/page-warehouse.js`) on the real stack: a stream fetched a few
/// readings and was stopped; "Write today's tables now" writes today's Parquet file, which the
/// table lists with the row count `GET /tables` gives; "Re-parse everything" (confirmed inline)
/// adds a job that the page follows to `done`, with the objects read the API reports. The page's
/// DuckDB queries are the README's. The stream page's "Re-parse this stream" queues that
/// stream's job and links back to the page, which shows it done too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warehouse_page_writes_todays_tables_and_follows_a_reparse() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let logs = dir.path();
    let stack = Stack::start(logs, "warehouse-worker");
    let api = &stack.supervisor.api;
    let id = a_stream_that_ran(&stack, 2).await;
    let results = api.result_count(&id).await;

    let (_driver, client, base) = logged_in(logs, &stack).await;
    click(&client, "nav-warehouse").await;
    shows(&client, "tables-table", "No Parquet file yet").await;
    shows(&client, "jobs-table", "No re-parse job yet").await;
    for marker in ["read_json(", "read_parquet("] {
        shows(&client, "queries", &support::readme_sql(marker)).await;
    }

    // Today's tables, written from the page: the file the API lists, with its row count.
    click(&client, "compact-now").await;
    shows(&client, "compact-result", "wrote 1 file").await;
    let (status, tables) = api.get("/tables").await;
    assert_eq!(status, 200, "{tables}");
    let files = tables["files"].as_array().expect("files");
    assert_eq!(files.len(), 1, "one stream, one day: {tables}");
    let file = &files[0];
    let rows = file["rows"].as_u64().expect("rows");
    assert!(rows > 0, "{tables}");
    let script = format!(
        "const f = [...document.querySelectorAll('[data-test=table-file]')]
             .find(r => r.dataset.key === {key} && r.dataset.bucket === {bucket});
         return !!f && f.dataset.day === {day}
             && Number(f.querySelector('[data-test=file-rows]').textContent.replace(/[^0-9]/g, '')) === {rows};",
        key = file["key"],
        bucket = file["bucket"],
        day = file["day"],
    );
    until(
        &client,
        Duration::from_secs(10),
        &format!("the file with {rows} rows"),
        &script,
    )
    .await;
    screenshot(&client, "warehouse-tables").await;

    // Re-parse everything: confirmed inline, followed to the end.
    click(&client, "reparse-all").await;
    click(&client, "reparse-confirm").await;
    until(
        &client,
        Duration::from_secs(60),
        "the re-parse job done",
        "const r = document.querySelector('[data-test=job-row]'); \
         return !!r && r.dataset.state === 'done';",
    )
    .await;
    let row = find(&client, "job-row").await;
    let job_id = row
        .attr("data-id")
        .await
        .expect("an attribute")
        .expect("a job id");
    let (status, job) = api.get(&format!("/jobs/{job_id}")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "done", "{job}");
    let read = job["progress"]["objects_read"].as_u64().expect("a count");
    assert_eq!(read as usize, results, "every result's object: {job}");
    let progress = wait_css(&client, "[data-test=job-row] [data-test=job-progress]").await;
    assert_eq!(
        progress.attr("data-read").await.expect("an attribute"),
        Some(read.to_string()),
        "{job}"
    );
    shows(&client, "job-progress", &format!("{read} / {read}")).await;
    let (_, jobs) = api.get("/jobs").await;
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(1), "{jobs}");
    screenshot(&client, "warehouse-jobs").await;

    // The stream page's button re-parses that stream, and its note leads back here.
    client
        .goto(&format!("{base}/#/streams/{id}"))
        .await
        .expect("the stream page");
    click(&client, "reparse-stream").await;
    shows(&client, "reparse-note", "on the warehouse page").await;
    let (_, jobs) = api.get("/jobs").await;
    assert_eq!(
        jobs["items"][0]["scope"]["stream_id"],
        id.as_str(),
        "{jobs}"
    );
    wait_css(&client, "[data-test=reparse-note] a[href='#/warehouse']")
        .await
        .click()
        .await
        .expect("the link to the warehouse");
    until(
        &client,
        Duration::from_secs(30),
        "both jobs done on the warehouse page",
        "const rows = [...document.querySelectorAll('[data-test=job-row]')]; \
         return rows.length === 2 && rows.every(r => r.dataset.state === 'done');",
    )
    .await;
    client.close().await.expect("close the browser");
}

/// The streams page at scale: 250 streams made by one bulk request show a page of 100 at a
/// time, with the counts `GET /streams/count` gives; "Next" and "Previous" walk the pages; a
/// search narrows the list on the server; "Stop matching" stops what the filter matches (here
/// one stream), confirmed, and the counts follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_page_pages_counts_searches_and_stops_what_matches() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let logs = dir.path();
    let stack = Stack::start(logs, "paging-worker");
    let api = &stack.supervisor.api;
    let body: Vec<Value> = (0..250)
        .map(|i| {
            let mut s = support::unlimited(support::iqair_stream(
                &nearest_city(&stack.sim),
                IQAIR_KEY,
                3_600_000,
            ));
            s["params"] = json!({"lat": 10.0 + f64::from(i) / 1000.0, "lon": 20.0});
            s["start"] = json!(i == 7);
            s
        })
        .collect();
    let (status, created) = api.post("/streams", &Value::Array(body)).await;
    assert_eq!(status, 201, "{created}");
    let seventh = created["ids"][7].as_str().expect("an id").to_owned();

    let (_driver, client, _base) = logged_in(logs, &stack).await;
    let rows = "return document.querySelectorAll('[data-test=stream-row]').length";
    until(
        &client,
        Duration::from_secs(10),
        "a page of 100",
        &format!("{rows} === 100;"),
    )
    .await;
    until(
        &client,
        Duration::from_secs(10),
        "249 stopped in the counts",
        "const e = document.querySelector('[data-test=count-stopped]'); \
         return !!e && e.textContent.replace(/[^0-9]/g, '') === '249';",
    )
    .await;
    shows(&client, "streams-count", "250 streams").await;
    click(&client, "page-next").await;
    until(&client, Duration::from_secs(10), "page 2", &format!("{rows} === 100 && document.querySelector('[data-test=page-info]').textContent.startsWith('101');")).await;
    click(&client, "page-next").await;
    until(
        &client,
        Duration::from_secs(10),
        "the last 50",
        &format!("{rows} === 50;"),
    )
    .await;
    click(&client, "page-prev").await;
    until(&client, Duration::from_secs(10), "back to page 2", &format!("{rows} === 100 && document.querySelector('[data-test=page-info]').textContent.startsWith('101');")).await;
    screenshot(&client, "streams-paged").await;

    // The search runs on the server: the seventh stream by its id.
    find(&client, "filter-q")
        .await
        .send_keys(&seventh)
        .await
        .expect("type");
    until(
        &client,
        Duration::from_secs(10),
        "one match",
        &format!("{rows} === 1 && document.querySelector('[data-test=stream-row]').dataset.id === '{seventh}';"),
    )
    .await;
    shows(&client, "streams-count", "1 matching").await;
    // Stop what matches, confirmed.
    client
        .execute("window.confirm = () => true; return true;", vec![])
        .await
        .expect("accept the confirmation");
    click(&client, "stop-matching").await;
    until(
        &client,
        Duration::from_secs(15),
        "the match stopped",
        "const r = document.querySelector('[data-test=stream-row]'); return !!r && r.dataset.status === 'stopped';",
    )
    .await;
    let (_, counts) = api.get("/streams/count").await;
    assert_eq!(counts["stopped"], 250, "{counts}");
    client.close().await.expect("close the browser");
}
