//! The general JSON-over-HTTP source (`HTTP_JSON`): a stream describes the API it calls in a
//! [`Spec`] — the request and its auth, how one page leads to the next, where the records of a
//! page are, and optionally an async report job to submit and poll first — and the worker's
//! engine (`worker/src/adapters/http_json/`) follows it. Pages are stored raw: this source has
//! no reading columns.
//!
//! Request values are [`Template`]s: `{{window_start}}`, `{{window_end}}`, `{{slot}}`,
//! `{{page}}`, `{{offset}}` and `{{cursor}}`, times with an optional format
//! (`{{window_start:epoch}}`). Everything here is checked when the stream is created, and every
//! problem is reported at once, as a sentence naming its field.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::reading::Column;
use crate::Source;

/// The adapter name streams use.
pub const NAME: &str = "HTTP_JSON";

/// The parser's version; see [`Source::parser_version`]. Pages are stored raw, so nothing is
/// parsed yet; the version is there for when readings are.
pub const PARSER_VERSION: u32 = 1;

/// The fields of a stream that make up its [`Spec`] (the supervisor gathers them into one
/// object and sends it to the worker as the stream's `source`).
pub const FIELDS: &[&str] = &[
    "request",
    "pagination",
    "records",
    "max_pages",
    "page_concurrency",
    "job",
];

/// Pages one run fetches at most, unless the stream says otherwise.
pub const DEFAULT_MAX_PAGES: u32 = 1000;
/// The highest `max_pages` a stream may set.
pub const MAX_MAX_PAGES: u32 = 100_000;
/// Pages fetched at once when the first page tells the total, unless the stream says otherwise.
pub const DEFAULT_PAGE_CONCURRENCY: u32 = 4;
/// The highest `page_concurrency` a stream may set.
pub const MAX_PAGE_CONCURRENCY: u32 = 64;
/// Time between two polls of an async job's status, ms, unless the stream says otherwise.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 5_000;
/// The shortest poll interval a stream may set, ms.
pub const MIN_POLL_INTERVAL_MS: u64 = 100;
/// How long a submitted job may take before it is submitted again (once), ms.
pub const DEFAULT_JOB_DEADLINE_MS: u64 = 900_000;

/// The `HTTP_JSON` source in the catalogue.
pub struct HttpJson;

impl Source for HttpJson {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check_params(&self, params: &Map<String, Value>) -> Vec<String> {
        check_params(params)
    }

    fn check_source(&self, source: &Map<String, Value>) -> Vec<String> {
        match Spec::from_map(source) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    fn parser_version(&self) -> u32 {
        PARSER_VERSION
    }

    /// None: pages are kept raw.
    fn reading_columns(&self) -> &'static [Column] {
        &[]
    }
}

/// Every problem with a stream's `params`: each becomes a query parameter of every page, its
/// value a [`Template`]. Values may be strings, numbers or booleans (sent as written).
pub fn check_params(params: &Map<String, Value>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, value) in params {
        let field = format!("params.{name}");
        if name.trim().is_empty() {
            problems.push("params: a parameter name must not be empty".to_string());
            continue;
        }
        match value {
            Value::String(text) => {
                if let Err(problem) = Template::parse(text) {
                    problems.push(format!("{field}: {problem}"));
                }
            }
            Value::Number(_) | Value::Bool(_) => {}
            _ => problems.push(format!(
                "{field} must be a string, number or boolean (it becomes a query parameter)"
            )),
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The spec
// ---------------------------------------------------------------------------------------------

/// What a `HTTP_JSON` stream calls and how: everything but the endpoint, the key and the
/// query `params`, which are the stream's own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The data request (and the basis of every other call: its headers and auth).
    #[serde(default)]
    pub request: Request,
    /// How one page leads to the next.
    #[serde(default)]
    pub pagination: Pagination,
    /// A JSON pointer to the array of records in each page (`/data`); `None`: the page is
    /// stored without counting records, and only an empty top-level array ends the paging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<String>,
    /// Pages one run fetches at most (1..=100000); more than that ends the run `truncated`.
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
    /// Pages fetched at once when the first page tells how many there are (1..=64).
    #[serde(default = "default_page_concurrency")]
    pub page_concurrency: u32,
    /// An async report job to submit and wait for before fetching its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
}

fn default_max_pages() -> u32 {
    DEFAULT_MAX_PAGES
}

fn default_page_concurrency() -> u32 {
    DEFAULT_PAGE_CONCURRENCY
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            request: Request::default(),
            pagination: Pagination::default(),
            records: None,
            max_pages: DEFAULT_MAX_PAGES,
            page_concurrency: DEFAULT_PAGE_CONCURRENCY,
            job: None,
        }
    }
}

/// An HTTP method a request may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Post,
    Put,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }

    fn parse(text: &str) -> Option<Method> {
        match text {
            "GET" => Some(Method::Get),
            "POST" => Some(Method::Post),
            "PUT" => Some(Method::Put),
            _ => None,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The data request: method, extra headers (values are templates), a JSON body (string leaves
/// are templates; POST and PUT only) and how to authenticate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub auth: Auth,
}

/// How a request carries the stream's secret (`secret_key`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No credentials (the secret is unused).
    #[default]
    None,
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<name>: <secret>`, e.g. `X-Api-Key`.
    Header { name: String },
    /// `?<name>=<secret>` on every call.
    Query { name: String },
    /// HTTP Basic with `username`; the secret is the password.
    Basic { username: String },
    /// An OAuth2 access token from `token_url` (client credentials grant); the secret is the
    /// client secret. The token is cached until shortly before it expires.
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

impl Auth {
    /// The `kind` as written in a spec.
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Bearer => "bearer",
            Auth::Header { .. } => "header",
            Auth::Query { .. } => "query",
            Auth::Basic { .. } => "basic",
            Auth::Oauth2ClientCredentials { .. } => "oauth2_client_credentials",
        }
    }
}

/// How one page leads to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One page per run.
    #[default]
    None,
    /// `?<param>=<n>` from `start`, with `?<size_param>=<size>` when given. When
    /// `total_pages_pointer` finds the page count in the first page, the rest are fetched in
    /// parallel; otherwise pages follow one another until an empty one.
    Page {
        param: String,
        #[serde(default = "default_page_start")]
        start: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_param: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total_pages_pointer: Option<String>,
    },
    /// `?<param>=<offset>&<limit_param>=<limit>` from offset 0. When `total_pointer` finds the
    /// record count in the first page, the rest are fetched in parallel.
    Offset {
        param: String,
        limit_param: String,
        limit: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total_pointer: Option<String>,
    },
    /// `?<param>=<cursor>` with the cursor found at `next_pointer` in the previous page (none on
    /// the first); a null or missing cursor ends the paging.
    Cursor { param: String, next_pointer: String },
    /// The next page is the `Link` header's `rel="next"` URL (RFC 8288).
    LinkHeader,
    /// The next page is the URL found at `next_pointer` in the page (relative URLs are
    /// resolved against the page's own).
    NextUrl { next_pointer: String },
}

fn default_page_start() -> u64 {
    1
}

impl Pagination {
    /// The `kind` as written in a spec.
    pub fn kind(&self) -> &'static str {
        match self {
            Pagination::None => "none",
            Pagination::Page { .. } => "page",
            Pagination::Offset { .. } => "offset",
            Pagination::Cursor { .. } => "cursor",
            Pagination::LinkHeader => "link_header",
            Pagination::NextUrl { .. } => "next_url",
        }
    }
}

/// An async report job: submit, poll its status until done, then download its result (paged
/// like the data request, by the stream's `pagination` and `records`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The submission; defaults to `POST` to the stream's endpoint.
    #[serde(default)]
    pub submit: JobSubmit,
    /// Where the status URL is in the submission's answer (relative URLs are resolved).
    pub status_url_pointer: String,
    /// Where the status is in a status answer.
    pub status_pointer: String,
    /// Statuses meaning the result is ready.
    pub done: Vec<String>,
    /// Statuses meaning the job failed (the run fails with class `api`).
    #[serde(default)]
    pub failed: Vec<String>,
    /// Where the result URL is in the status answer that said done.
    pub result_url_pointer: String,
    /// Time between two polls, ms (at least 100).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: u64,
    /// How long a submission may take, ms; past it the job is submitted again once, and past
    /// the second deadline the run fails with class `timeout`.
    #[serde(default = "default_job_deadline")]
    pub deadline: u64,
}

fn default_poll_interval() -> u64 {
    DEFAULT_POLL_INTERVAL_MS
}

fn default_job_deadline() -> u64 {
    DEFAULT_JOB_DEADLINE_MS
}

/// How an async job is submitted. The request's headers and auth apply too (these headers
/// win); `url` and header values and string leaves of `body` are templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSubmit {
    #[serde(default = "default_submit_method")]
    pub method: Method,
    /// Where to submit; `None`: the stream's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
}

fn default_submit_method() -> Method {
    Method::Post
}

impl Default for JobSubmit {
    fn default() -> Self {
        JobSubmit {
            method: Method::Post,
            url: None,
            headers: BTreeMap::new(),
            body: None,
        }
    }
}

impl Spec {
    /// The spec in a stream's `source` text (a JSON object of the [`FIELDS`] the user gave;
    /// empty text: every default), with every problem found.
    pub fn parse(text: &str) -> Result<Spec, Vec<String>> {
        if text.trim().is_empty() {
            return Ok(Spec::default());
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Spec::from_map(&map),
            Ok(_) => Err(vec![
                "the source spec must be a JSON object of request, pagination, records, \
                 max_pages, page_concurrency and job"
                    .to_string(),
            ]),
            Err(err) => Err(vec![format!("the source spec is not JSON: {err}")]),
        }
    }

    /// The spec made of `source`'s fields (absent ones take their defaults), with every
    /// problem found: unknown fields, wrong types, missing fields, bad JSON pointers, bad
    /// templates, values out of range and combinations that cannot work.
    pub fn from_map(source: &Map<String, Value>) -> Result<Spec, Vec<String>> {
        let mut p = Problems::default();
        p.unknown(source, "", FIELDS, "an HTTP_JSON stream");
        let mut spec = Spec::default();
        if let Some(value) = present(source, "request") {
            spec.request = read_request(value, &mut p);
        }
        if let Some(value) = present(source, "pagination") {
            spec.pagination = read_pagination(value, &mut p);
        }
        spec.records = p.string(source, "", "records");
        if let Some(n) = p.uint(source, "", "max_pages") {
            spec.max_pages = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = p.uint(source, "", "page_concurrency") {
            spec.page_concurrency = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(value) = present(source, "job") {
            spec.job = read_job(value, &mut p);
        }
        spec.check(&mut p);
        if p.0.is_empty() {
            Ok(spec)
        } else {
            Err(p.0)
        }
    }

    /// The meaning checks, once every field has its type.
    fn check(&self, p: &mut Problems) {
        if let Some(records) = &self.records {
            p.pointer("records", records);
        }
        if !(1..=MAX_MAX_PAGES).contains(&self.max_pages) {
            p.push(format!(
                "max_pages must be between 1 and {MAX_MAX_PAGES} (got {})",
                self.max_pages
            ));
        }
        if !(1..=MAX_PAGE_CONCURRENCY).contains(&self.page_concurrency) {
            p.push(format!(
                "page_concurrency must be between 1 and {MAX_PAGE_CONCURRENCY} (got {})",
                self.page_concurrency
            ));
        }
        self.check_request(p);
        self.check_pagination(p);
        if let Some(job) = &self.job {
            self.check_job(job, p);
        }
    }

    fn check_request(&self, p: &mut Problems) {
        let request = &self.request;
        self.check_headers("request.headers", &request.headers, p);
        if let Some(body) = &request.body {
            if request.method == Method::Get {
                p.push(
                    "request.body needs request.method POST or PUT (a GET request carries no body)"
                        .to_string(),
                );
            }
            self.check_json_templates("request.body", body, p);
        }
        match &request.auth {
            Auth::None | Auth::Bearer => {}
            Auth::Header { name } => p.header_name("request.auth.name", name),
            Auth::Query { name } => p.non_empty("request.auth.name", name),
            Auth::Basic { username } => {
                p.non_empty("request.auth.username", username);
                if username.contains(':') {
                    p.push(
                        "request.auth.username must not contain `:` (HTTP Basic separates the \
                         username from the password with it)"
                            .to_string(),
                    );
                }
            }
            Auth::Oauth2ClientCredentials {
                token_url,
                client_id,
                scope,
            } => {
                p.http_url("request.auth.token_url", token_url);
                p.non_empty("request.auth.client_id", client_id);
                if let Some(scope) = scope {
                    p.non_empty("request.auth.scope", scope);
                }
            }
        }
    }

    /// Header names are HTTP tokens, values templates without line breaks; the header the auth
    /// sets is the auth's.
    fn check_headers(&self, field: &str, headers: &BTreeMap<String, String>, p: &mut Problems) {
        let auth_header = match &self.request.auth {
            Auth::Bearer | Auth::Basic { .. } | Auth::Oauth2ClientCredentials { .. } => {
                Some("authorization".to_string())
            }
            Auth::Header { name } => Some(name.to_ascii_lowercase()),
            Auth::None | Auth::Query { .. } => None,
        };
        for (name, value) in headers {
            let path = format!("{field}.{name}");
            p.header_name(&path, name);
            if auth_header.as_deref() == Some(name.to_ascii_lowercase().as_str()) {
                p.push(format!(
                    "{path} is set by request.auth (kind {}); remove it from the headers",
                    self.request.auth.kind()
                ));
            }
            if value.chars().any(|c| c == '\r' || c == '\n') {
                p.push(format!("{path} must not contain a line break"));
            }
            self.check_template(&path, value, p);
        }
    }

    fn check_template(&self, field: &str, text: &str, p: &mut Problems) {
        match Template::parse(text) {
            Err(problem) => p.push(format!("{field}: {problem}")),
            Ok(template) => {
                for var in template.vars() {
                    let needs = match var {
                        Var::Cursor => Some("cursor"),
                        Var::Offset => Some("offset"),
                        _ => None,
                    };
                    if let Some(kind) = needs {
                        if self.pagination.kind() != kind {
                            p.push(format!(
                                "{field}: {{{{{}}}}} needs pagination.kind {kind} (it is {})",
                                var.name(),
                                self.pagination.kind()
                            ));
                        }
                    }
                }
            }
        }
    }

    fn check_json_templates(&self, field: &str, value: &Value, p: &mut Problems) {
        match value {
            Value::String(text) => self.check_template(field, text, p),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.check_json_templates(&format!("{field}[{i}]"), item, p);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    self.check_json_templates(&format!("{field}.{key}"), item, p);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn check_pagination(&self, p: &mut Problems) {
        match &self.pagination {
            Pagination::None | Pagination::LinkHeader => {}
            Pagination::Page {
                param,
                start: _,
                size_param,
                size,
                total_pages_pointer,
            } => {
                p.non_empty("pagination.param", param);
                match (size_param, size) {
                    (Some(name), Some(size)) => {
                        p.non_empty("pagination.size_param", name);
                        if *size == 0 {
                            p.push("pagination.size must be at least 1".to_string());
                        }
                    }
                    (None, None) => {}
                    (Some(_), None) => p.push(
                        "pagination.size_param needs pagination.size (the page size to send)"
                            .to_string(),
                    ),
                    (None, Some(_)) => p.push(
                        "pagination.size needs pagination.size_param (the parameter to send it in)"
                            .to_string(),
                    ),
                }
                if let Some(pointer) = total_pages_pointer {
                    p.pointer("pagination.total_pages_pointer", pointer);
                }
            }
            Pagination::Offset {
                param,
                limit_param,
                limit,
                total_pointer,
            } => {
                p.non_empty("pagination.param", param);
                p.non_empty("pagination.limit_param", limit_param);
                if param == limit_param && !param.is_empty() {
                    p.push(
                        "pagination.param and pagination.limit_param must be different parameters"
                            .to_string(),
                    );
                }
                if *limit == 0 {
                    p.push("pagination.limit must be at least 1".to_string());
                }
                if let Some(pointer) = total_pointer {
                    p.pointer("pagination.total_pointer", pointer);
                }
            }
            Pagination::Cursor {
                param,
                next_pointer,
            } => {
                p.non_empty("pagination.param", param);
                p.pointer("pagination.next_pointer", next_pointer);
                if next_pointer.is_empty() && !p.is_missing("pagination.next_pointer") {
                    p.push(
                        "pagination.next_pointer must point into the page (not be the whole page)"
                            .to_string(),
                    );
                }
            }
            Pagination::NextUrl { next_pointer } => {
                p.pointer("pagination.next_pointer", next_pointer);
                if next_pointer.is_empty() && !p.is_missing("pagination.next_pointer") {
                    p.push(
                        "pagination.next_pointer must point into the page (not be the whole page)"
                            .to_string(),
                    );
                }
            }
        }
    }

    fn check_job(&self, job: &Job, p: &mut Problems) {
        let submit = &job.submit;
        if let Some(url) = &submit.url {
            self.check_template("job.submit.url", url, p);
            if !url.starts_with("{{") && !is_http_url(url) {
                p.push(format!(
                    "job.submit.url must be an http:// or https:// URL (got {url:?})"
                ));
            }
        }
        self.check_headers("job.submit.headers", &submit.headers, p);
        if let Some(body) = &submit.body {
            if submit.method == Method::Get {
                p.push(
                    "job.submit.body needs job.submit.method POST or PUT (a GET request carries \
                     no body)"
                        .to_string(),
                );
            }
            self.check_json_templates("job.submit.body", body, p);
        }
        p.pointer("job.status_url_pointer", &job.status_url_pointer);
        p.pointer("job.status_pointer", &job.status_pointer);
        p.pointer("job.result_url_pointer", &job.result_url_pointer);
        if job.done.is_empty() && !p.is_missing("job.done") {
            p.push(
                "job.done must list at least one status (the statuses meaning the result is \
                 ready)"
                    .to_string(),
            );
        }
        for status in job.done.iter().filter(|s| job.failed.contains(s)) {
            p.push(format!(
                "job: status {status:?} is in both job.done and job.failed"
            ));
        }
        if job.poll_interval < MIN_POLL_INTERVAL_MS {
            p.push(format!(
                "job.poll_interval must be at least {MIN_POLL_INTERVAL_MS} ms (got {})",
                job.poll_interval
            ));
        }
        if job.deadline < job.poll_interval {
            p.push(format!(
                "job.deadline ({} ms) must be at least job.poll_interval ({} ms)",
                job.deadline, job.poll_interval
            ));
        }
    }
}

fn is_http_url(text: &str) -> bool {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !host.chars().any(char::is_whitespace)
    })
}

/// A field that is there and not `null` (`null` means "the default", as absent does).
fn present<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).filter(|v| !v.is_null())
}

fn read_request(value: &Value, p: &mut Problems) -> Request {
    let mut request = Request::default();
    let Some(map) = p.object(value, "request") else {
        return request;
    };
    p.unknown(
        map,
        "request",
        &["method", "headers", "body", "auth"],
        "request",
    );
    if let Some(method) = p.method(map, "request", "method") {
        request.method = method;
    }
    request.headers = p.string_map(map, "request", "headers");
    request.body = present(map, "body").cloned();
    if let Some(value) = present(map, "auth") {
        request.auth = read_auth(value, p);
    }
    request
}

fn read_auth(value: &Value, p: &mut Problems) -> Auth {
    const KINDS: &[(&str, &[&str], &[&str])] = &[
        ("none", &[], &[]),
        ("bearer", &[], &[]),
        ("header", &["name"], &[]),
        ("query", &["name"], &[]),
        ("basic", &["username"], &[]),
        (
            "oauth2_client_credentials",
            &["token_url", "client_id"],
            &["scope"],
        ),
    ];
    let Some((map, kind)) = p.tagged(value, "request.auth", KINDS) else {
        return Auth::None;
    };
    let path = "request.auth";
    let mut text = |name: &str| p.string(map, path, name).unwrap_or_default();
    match kind {
        "bearer" => Auth::Bearer,
        "header" => Auth::Header { name: text("name") },
        "query" => Auth::Query { name: text("name") },
        "basic" => Auth::Basic {
            username: text("username"),
        },
        "oauth2_client_credentials" => Auth::Oauth2ClientCredentials {
            token_url: text("token_url"),
            client_id: text("client_id"),
            scope: p.string(map, path, "scope"),
        },
        _ => Auth::None,
    }
}

fn read_pagination(value: &Value, p: &mut Problems) -> Pagination {
    const KINDS: &[(&str, &[&str], &[&str])] = &[
        ("none", &[], &[]),
        (
            "page",
            &["param"],
            &["start", "size_param", "size", "total_pages_pointer"],
        ),
        (
            "offset",
            &["param", "limit_param", "limit"],
            &["total_pointer"],
        ),
        ("cursor", &["param", "next_pointer"], &[]),
        ("link_header", &[], &[]),
        ("next_url", &["next_pointer"], &[]),
    ];
    let path = "pagination";
    let Some((map, kind)) = p.tagged(value, path, KINDS) else {
        return Pagination::None;
    };
    match kind {
        "page" => Pagination::Page {
            param: p.string(map, path, "param").unwrap_or_default(),
            start: p.uint(map, path, "start").unwrap_or(1),
            size_param: p.string(map, path, "size_param"),
            size: p.uint(map, path, "size"),
            total_pages_pointer: p.string(map, path, "total_pages_pointer"),
        },
        "offset" => Pagination::Offset {
            param: p.string(map, path, "param").unwrap_or_default(),
            limit_param: p.string(map, path, "limit_param").unwrap_or_default(),
            // Missing is reported by `tagged`, and then not checked further.
            limit: p.uint(map, path, "limit").unwrap_or(1),
            total_pointer: p.string(map, path, "total_pointer"),
        },
        "cursor" => Pagination::Cursor {
            param: p.string(map, path, "param").unwrap_or_default(),
            next_pointer: p.string(map, path, "next_pointer").unwrap_or_default(),
        },
        "link_header" => Pagination::LinkHeader,
        "next_url" => Pagination::NextUrl {
            next_pointer: p.string(map, path, "next_pointer").unwrap_or_default(),
        },
        _ => Pagination::None,
    }
}

fn read_job(value: &Value, p: &mut Problems) -> Option<Job> {
    const FIELDS: &[&str] = &[
        "submit",
        "status_url_pointer",
        "status_pointer",
        "done",
        "failed",
        "result_url_pointer",
        "poll_interval",
        "deadline",
    ];
    let path = "job";
    let map = p.object(value, path)?;
    p.unknown(map, path, FIELDS, "job");
    let mut submit = JobSubmit::default();
    if let Some(value) = present(map, "submit") {
        if let Some(sub) = p.object(value, "job.submit") {
            p.unknown(
                sub,
                "job.submit",
                &["method", "url", "headers", "body"],
                "job.submit",
            );
            if let Some(method) = p.method(sub, "job.submit", "method") {
                submit.method = method;
            }
            submit.url = p.string(sub, "job.submit", "url");
            submit.headers = p.string_map(sub, "job.submit", "headers");
            submit.body = present(sub, "body").cloned();
        }
    }
    let mut required = |name: &str, what: &str| -> String {
        if present(map, name).is_none() {
            p.missing(
                format!("job.{name}"),
                format!("job.{name} is required ({what})"),
            );
        }
        p.string(map, path, name).unwrap_or_default()
    };
    let status_url_pointer = required(
        "status_url_pointer",
        "the JSON pointer to the status URL in the submission's answer",
    );
    let status_pointer = required(
        "status_pointer",
        "the JSON pointer to the status in a status answer",
    );
    let result_url_pointer = required(
        "result_url_pointer",
        "the JSON pointer to the result URL in the status answer",
    );
    let done = match present(map, "done") {
        None => {
            p.missing(
                "job.done".to_string(),
                "job.done is required (the statuses meaning the result is ready)".to_string(),
            );
            Vec::new()
        }
        Some(_) => p.string_list(map, path, "done"),
    };
    Some(Job {
        submit,
        status_url_pointer,
        status_pointer,
        done,
        failed: p.string_list(map, path, "failed"),
        result_url_pointer,
        poll_interval: p
            .uint(map, path, "poll_interval")
            .unwrap_or(DEFAULT_POLL_INTERVAL_MS),
        deadline: p
            .uint(map, path, "deadline")
            .unwrap_or(DEFAULT_JOB_DEADLINE_MS),
    })
}

/// The problems found so far, and the readers that add to them. Each reader answers `None`
/// (or a default) when the field is absent or has the wrong type, so reading goes on and every
/// problem is found in one pass.
#[derive(Default)]
struct Problems(Vec<String>, Vec<String>);

impl Problems {
    fn push(&mut self, problem: String) {
        self.0.push(problem);
    }

    /// `field` is required and absent: say so once, and say nothing more about it.
    fn missing(&mut self, field: String, problem: String) {
        self.push(problem);
        self.1.push(field);
    }

    /// Whether `field` was reported missing (its placeholder value is not the user's).
    fn is_missing(&self, field: &str) -> bool {
        self.1.iter().any(|f| f == field)
    }

    fn object<'a>(&mut self, value: &'a Value, path: &str) -> Option<&'a Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.push(format!(
                    "{path} must be an object (got {})",
                    type_name(other)
                ));
                None
            }
        }
    }

    fn unknown(&mut self, map: &Map<String, Value>, path: &str, known: &[&str], what: &str) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            self.push(format!(
                "{} is not a field of {what} (fields: {})",
                join(path, key),
                known.join(", ")
            ));
        }
    }

    /// An object with a `kind` among `kinds` (each with its required and optional fields):
    /// the object and its kind, or `None` when either is unusable. Missing and unknown fields
    /// are reported here.
    fn tagged<'a>(
        &mut self,
        value: &'a Value,
        path: &str,
        kinds: &[(&'static str, &[&str], &[&str])],
    ) -> Option<(&'a Map<String, Value>, &'static str)> {
        let map = self.object(value, path)?;
        let names: Vec<&str> = kinds.iter().map(|(k, _, _)| *k).collect();
        let kind = match map.get("kind") {
            None | Some(Value::Null) => {
                self.push(format!(
                    "{path}.kind is required (one of {})",
                    names.join(", ")
                ));
                return None;
            }
            Some(Value::String(kind)) => kind,
            Some(other) => {
                self.push(format!(
                    "{path}.kind must be a string, one of {} (got {})",
                    names.join(", "),
                    type_name(other)
                ));
                return None;
            }
        };
        let Some((kind, required, optional)) = kinds.iter().find(|(k, _, _)| k == kind) else {
            self.push(format!(
                "{path}.kind {kind:?} is not known (one of {})",
                names.join(", ")
            ));
            return None;
        };
        for key in map.keys().filter(|k| k.as_str() != "kind") {
            if !required.contains(&key.as_str()) && !optional.contains(&key.as_str()) {
                let fields: Vec<&str> = required.iter().chain(optional.iter()).copied().collect();
                self.push(if fields.is_empty() {
                    format!("{path}.{key} is not a field of {path} kind {kind} (it takes none)")
                } else {
                    format!(
                        "{path}.{key} is not a field of {path} kind {kind} (fields: {})",
                        fields.join(", ")
                    )
                });
            }
        }
        for name in required.iter().filter(|n| present(map, n).is_none()) {
            self.missing(
                format!("{path}.{name}"),
                format!("{path}.{name} is required when {path}.kind is {kind}"),
            );
        }
        Some((map, kind))
    }

    fn string(&mut self, map: &Map<String, Value>, path: &str, name: &str) -> Option<String> {
        match present(map, name)? {
            Value::String(text) => Some(text.clone()),
            other => {
                self.push(format!(
                    "{} must be a string (got {})",
                    join(path, name),
                    type_name(other)
                ));
                None
            }
        }
    }

    fn uint(&mut self, map: &Map<String, Value>, path: &str, name: &str) -> Option<u64> {
        let value = present(map, name)?;
        match value.as_u64() {
            Some(n) => Some(n),
            None => {
                self.push(format!(
                    "{} must be a whole number of 0 or more (got {value})",
                    join(path, name)
                ));
                None
            }
        }
    }

    fn method(&mut self, map: &Map<String, Value>, path: &str, name: &str) -> Option<Method> {
        let text = self.string(map, path, name)?;
        let method = Method::parse(&text);
        if method.is_none() {
            self.push(format!(
                "{} must be GET, POST or PUT (got {text:?})",
                join(path, name)
            ));
        }
        method
    }

    fn string_map(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        name: &str,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(value) = present(map, name) else {
            return out;
        };
        let field = join(path, name);
        let Some(entries) = self.object(value, &field) else {
            return out;
        };
        for (key, value) in entries {
            match value {
                Value::String(text) => {
                    out.insert(key.clone(), text.clone());
                }
                other => self.push(format!(
                    "{field}.{key} must be a string (got {})",
                    type_name(other)
                )),
            }
        }
        out
    }

    fn string_list(&mut self, map: &Map<String, Value>, path: &str, name: &str) -> Vec<String> {
        let field = join(path, name);
        match present(map, name) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(text) => out.push(text.clone()),
                        other => self.push(format!(
                            "{field}[{i}] must be a string (got {})",
                            type_name(other)
                        )),
                    }
                }
                out
            }
            Some(other) => {
                self.push(format!(
                    "{field} must be a list of strings (got {})",
                    type_name(other)
                ));
                Vec::new()
            }
        }
    }

    fn pointer(&mut self, field: &str, pointer: &str) {
        if self.is_missing(field) {
            return;
        }
        if let Err(problem) = check_pointer(pointer) {
            self.push(format!("{field} {problem}"));
        }
    }

    fn non_empty(&mut self, field: &str, text: &str) {
        if self.is_missing(field) {
            return;
        }
        if text.trim().is_empty() {
            self.push(format!("{field} must not be empty"));
        }
    }

    fn header_name(&mut self, field: &str, name: &str) {
        if self.is_missing(field) {
            return;
        }
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            self.push(format!(
                "{field} must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~), got \
                 {name:?}"
            ));
        }
    }

    fn http_url(&mut self, field: &str, url: &str) {
        if !is_http_url(url) {
            self.push(format!(
                "{field} must be an http:// or https:// URL (got {url:?})"
            ));
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `pointer` is an RFC 6901 JSON pointer: empty (the whole document) or `/`-separated
/// tokens in which `~` is only ever `~0` or `~1`. The error completes "<field> …".
pub fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "must be a JSON pointer starting with / (got {pointer:?}; e.g. \"/data\")"
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "is not a valid JSON pointer ({pointer:?}): write ~ as ~0 and / inside a name \
                 as ~1"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Templates
// ---------------------------------------------------------------------------------------------

/// A variable a template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The run's window start (a time).
    WindowStart,
    /// The run's window end, the slot (a time).
    WindowEnd,
    /// The slot the run is for (a time).
    Slot,
    /// The page's number as sent: from `pagination.start` for page pagination, from 1
    /// otherwise.
    Page,
    /// The page's offset (offset pagination; 0 on the first page).
    Offset,
    /// The cursor the page is fetched with (cursor pagination; empty on the first page).
    Cursor,
}

impl Var {
    const ALL: [Var; 6] = [
        Var::WindowStart,
        Var::WindowEnd,
        Var::Slot,
        Var::Page,
        Var::Offset,
        Var::Cursor,
    ];

    /// The variable's name in a template.
    pub fn name(self) -> &'static str {
        match self {
            Var::WindowStart => "window_start",
            Var::WindowEnd => "window_end",
            Var::Slot => "slot",
            Var::Page => "page",
            Var::Offset => "offset",
            Var::Cursor => "cursor",
        }
    }

    fn is_time(self) -> bool {
        matches!(self, Var::WindowStart | Var::WindowEnd | Var::Slot)
    }
}

/// How a time is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeFormat {
    /// `2026-01-01T00:00:00Z` (with `.mmm` when the time has milliseconds).
    #[default]
    Rfc3339,
    /// Whole seconds since the Unix epoch.
    Epoch,
    /// Milliseconds since the Unix epoch.
    EpochMs,
    /// The UTC date, `2026-01-01`.
    Date,
}

impl TimeFormat {
    const ALL: [TimeFormat; 4] = [
        TimeFormat::Rfc3339,
        TimeFormat::Epoch,
        TimeFormat::EpochMs,
        TimeFormat::Date,
    ];

    /// The format's name in a template.
    pub fn name(self) -> &'static str {
        match self {
            TimeFormat::Rfc3339 => "rfc3339",
            TimeFormat::Epoch => "epoch",
            TimeFormat::EpochMs => "epoch_ms",
            TimeFormat::Date => "date",
        }
    }

    /// `ms` (since the Unix epoch) in this format.
    pub fn format(self, ms: i64) -> String {
        match self {
            TimeFormat::Epoch => ms.div_euclid(1000).to_string(),
            TimeFormat::EpochMs => ms.to_string(),
            TimeFormat::Date => {
                let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
                format!("{y:04}-{m:02}-{d:02}")
            }
            TimeFormat::Rfc3339 => {
                let (y, mo, d) = civil_from_days(ms.div_euclid(86_400_000));
                let in_day = ms.rem_euclid(86_400_000);
                let (h, mi, s, milli) = (
                    in_day / 3_600_000,
                    in_day / 60_000 % 60,
                    in_day / 1000 % 60,
                    in_day % 1000,
                );
                if milli == 0 {
                    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
                } else {
                    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
                }
            }
        }
    }
}

/// The proleptic Gregorian date of a day number (days since 1970-01-01), after Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What the variables stand for in one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateValues {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub slot_ms: i64,
    pub page: u64,
    pub offset: u64,
    /// `None`: the first page (renders empty).
    pub cursor: Option<String>,
}

/// Text with `{{variable}}` or `{{variable:format}}` in it (spaces inside the braces are
/// allowed). Parsed once, rendered per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var, TimeFormat),
}

impl Template {
    /// The template in `text`; the error says what is wrong (an unknown variable or format, a
    /// format on a variable that is not a time, a `{{` without its `}}`).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(format!(
                    "`{{{{` without a closing `}}}}` in {text:?} (write {{{{window_start}}}} \
                     and the like)"
                ));
            };
            let inner = after[..close].trim();
            let (name, format) = match inner.split_once(':') {
                Some((name, format)) => (name.trim(), Some(format.trim())),
                None => (inner, None),
            };
            let Some(var) = Var::ALL.into_iter().find(|v| v.name() == name) else {
                let known: Vec<&str> = Var::ALL.iter().map(|v| v.name()).collect();
                return Err(format!(
                    "unknown template variable {name:?} in `{{{{{inner}}}}}` (known: {})",
                    known.join(", ")
                ));
            };
            let format = match format {
                None => TimeFormat::Rfc3339,
                Some(_) if !var.is_time() => {
                    return Err(format!(
                        "`{{{{{inner}}}}}`: {name} is not a time and takes no format"
                    ))
                }
                Some(format) => match TimeFormat::ALL.into_iter().find(|f| f.name() == format) {
                    Some(format) => format,
                    None => {
                        let known: Vec<&str> = TimeFormat::ALL.iter().map(|f| f.name()).collect();
                        return Err(format!(
                            "unknown time format {format:?} in `{{{{{inner}}}}}` (formats: {})",
                            known.join(", ")
                        ));
                    }
                },
            };
            parts.push(Part::Var(var, format));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The variables it names, in order.
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.parts.iter().filter_map(|part| match part {
            Part::Var(var, _) => Some(*var),
            Part::Text(_) => None,
        })
    }

    /// The text with each variable replaced by its value.
    pub fn render(&self, values: &TemplateValues) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(var, format) => out.push_str(&value_of(*var, *format, values)),
            }
        }
        out
    }

    /// The value as JSON: a template that is exactly one number (`{{page}}`, `{{offset}}`, a
    /// time as `epoch` or `epoch_ms`) is a JSON number, anything else a string.
    pub fn render_json(&self, values: &TemplateValues) -> Value {
        if let [Part::Var(var, format)] = self.parts.as_slice() {
            let number = match (var, format) {
                (Var::Page, _) => Some(values.page as i64),
                (Var::Offset, _) => Some(values.offset as i64),
                (v, TimeFormat::EpochMs) if v.is_time() => Some(time_of(*v, values)),
                (v, TimeFormat::Epoch) if v.is_time() => Some(time_of(*v, values).div_euclid(1000)),
                _ => None,
            };
            if let Some(number) = number {
                return Value::from(number);
            }
        }
        Value::String(self.render(values))
    }
}

fn time_of(var: Var, values: &TemplateValues) -> i64 {
    match var {
        Var::WindowStart => values.window_start_ms,
        Var::WindowEnd => values.window_end_ms,
        _ => values.slot_ms,
    }
}

fn value_of(var: Var, format: TimeFormat, values: &TemplateValues) -> String {
    match var {
        Var::WindowStart | Var::WindowEnd | Var::Slot => format.format(time_of(var, values)),
        Var::Page => values.page.to_string(),
        Var::Offset => values.offset.to_string(),
        Var::Cursor => values.cursor.clone().unwrap_or_default(),
    }
}

/// `text` rendered with `values`, or what is wrong with it as a template.
pub fn render(text: &str, values: &TemplateValues) -> Result<String, String> {
    Template::parse(text).map(|t| t.render(values))
}

/// `value` with every string leaf rendered as a template ([`Template::render_json`]: a leaf
/// that is exactly one number variable becomes a number), or the first bad template's problem.
pub fn render_json(value: &Value, values: &TemplateValues) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Template::parse(text)?.render_json(values),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render_json(item, values))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, values)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The spec of the README's example stream.
    fn example() -> Value {
        json!({
            "request": {"method": "GET", "headers": {"Accept": "application/json"}, "body": null,
                        "auth": {"kind": "bearer"}},
            "pagination": {"kind": "cursor", "param": "cursor", "next_pointer": "/meta/next_cursor"},
            "records": "/data", "max_pages": 1000, "page_concurrency": 16,
            "job": {"submit": {"method": "POST", "url": "https://api.example.com/v1/reports",
                               "headers": {}, "body": {"from": "{{window_start}}"}},
                    "status_url_pointer": "/links/status", "status_pointer": "/status",
                    "done": ["success"], "failed": ["failed", "error"],
                    "result_url_pointer": "/links/result", "poll_interval": 5000, "deadline": 900000}
        })
    }

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn problems(value: Value) -> Vec<String> {
        match Spec::from_map(&map(value)) {
            Ok(spec) => panic!("expected problems, got {spec:?}"),
            Err(problems) => problems,
        }
    }

    /// `value` has exactly the one problem `expected`.
    fn one_problem(value: Value, expected: &str) {
        assert_eq!(problems(value), [expected]);
    }

    #[test]
    fn parses_the_example_stream() {
        let spec = Spec::from_map(&map(example())).expect("valid");
        assert_eq!(spec.request.method, Method::Get);
        assert_eq!(spec.request.headers["Accept"], "application/json");
        assert_eq!(spec.request.body, None);
        assert_eq!(spec.request.auth, Auth::Bearer);
        assert_eq!(
            spec.pagination,
            Pagination::Cursor {
                param: "cursor".into(),
                next_pointer: "/meta/next_cursor".into()
            }
        );
        assert_eq!(spec.records.as_deref(), Some("/data"));
        assert_eq!((spec.max_pages, spec.page_concurrency), (1000, 16));
        let job = spec.job.as_ref().expect("a job");
        assert_eq!(job.submit.method, Method::Post);
        assert_eq!(job.submit.body, Some(json!({"from": "{{window_start}}"})));
        assert_eq!(job.done, ["success"]);
        assert_eq!(job.failed, ["failed", "error"]);
        assert_eq!((job.poll_interval, job.deadline), (5000, 900_000));

        // The text form the worker receives parses the same; serde's derive agrees, and the
        // spec survives a round trip through its own JSON.
        assert_eq!(Spec::parse(&example().to_string()), Ok(spec.clone()));
        let derived: Spec = serde_json::from_value(example()).expect("serde derive");
        assert_eq!(derived, spec);
        let again = Spec::parse(&serde_json::to_string(&spec).unwrap());
        assert_eq!(again, Ok(spec));
    }

    #[test]
    fn absent_fields_take_their_defaults() {
        let spec = Spec::parse("").expect("empty text is every default");
        assert_eq!(spec, Spec::default());
        assert_eq!(Spec::parse("{}"), Ok(Spec::default()));
        assert_eq!(spec.request.method, Method::Get);
        assert!(spec.request.headers.is_empty());
        assert_eq!(spec.request.auth, Auth::None);
        assert_eq!(spec.pagination, Pagination::None);
        assert_eq!(spec.records, None);
        assert_eq!(spec.max_pages, 1000);
        assert_eq!(spec.page_concurrency, 4);
        assert_eq!(spec.job, None);
        // null is "the default" too.
        assert_eq!(
            Spec::from_map(&map(
                json!({"request": null, "job": null, "max_pages": null})
            )),
            Ok(Spec::default())
        );

        let spec = Spec::from_map(&map(json!({
            "pagination": {"kind": "page", "param": "page"},
            "job": {"status_url_pointer": "/s", "status_pointer": "/status", "done": ["ok"],
                    "result_url_pointer": "/r"}
        })))
        .expect("valid");
        assert_eq!(
            spec.pagination,
            Pagination::Page {
                param: "page".into(),
                start: 1,
                size_param: None,
                size: None,
                total_pages_pointer: None
            }
        );
        let job = spec.job.expect("a job");
        assert_eq!(job.submit, JobSubmit::default());
        assert_eq!(job.submit.method, Method::Post);
        assert!(job.failed.is_empty());
        assert_eq!((job.poll_interval, job.deadline), (5000, 900_000));
        let derived: Spec = serde_json::from_value(json!({
            "pagination": {"kind": "page", "param": "page"},
            "job": {"status_url_pointer": "/s", "status_pointer": "/status", "done": ["ok"],
                    "result_url_pointer": "/r"}
        }))
        .expect("serde derive");
        assert_eq!(derived.pagination, spec.pagination);
    }

    #[test]
    fn every_auth_and_pagination_kind_parses() {
        let auths = [
            (json!({"kind": "none"}), Auth::None),
            (json!({"kind": "bearer"}), Auth::Bearer),
            (
                json!({"kind": "header", "name": "X-Api-Key"}),
                Auth::Header {
                    name: "X-Api-Key".into(),
                },
            ),
            (
                json!({"kind": "query", "name": "api_key"}),
                Auth::Query {
                    name: "api_key".into(),
                },
            ),
            (
                json!({"kind": "basic", "username": "sim"}),
                Auth::Basic {
                    username: "sim".into(),
                },
            ),
            (
                json!({"kind": "oauth2_client_credentials", "token_url": "https://a.example/token",
                       "client_id": "c", "scope": "read"}),
                Auth::Oauth2ClientCredentials {
                    token_url: "https://a.example/token".into(),
                    client_id: "c".into(),
                    scope: Some("read".into()),
                },
            ),
        ];
        for (value, expected) in auths {
            let source = json!({"request": {"auth": value.clone()}});
            let spec = Spec::from_map(&map(source.clone())).expect("valid");
            assert_eq!(spec.request.auth, expected, "{value}");
            assert_eq!(spec.request.auth.kind(), value["kind"].as_str().unwrap());
            let derived: Spec = serde_json::from_value(source).expect("serde derive");
            assert_eq!(derived.request.auth, expected);
        }
        let paginations = [
            (json!({"kind": "none"}), Pagination::None),
            (
                json!({"kind": "page", "param": "p", "start": 0, "size_param": "per_page",
                       "size": 50, "total_pages_pointer": "/meta/total_pages"}),
                Pagination::Page {
                    param: "p".into(),
                    start: 0,
                    size_param: Some("per_page".into()),
                    size: Some(50),
                    total_pages_pointer: Some("/meta/total_pages".into()),
                },
            ),
            (
                json!({"kind": "offset", "param": "offset", "limit_param": "limit", "limit": 100,
                       "total_pointer": "/total"}),
                Pagination::Offset {
                    param: "offset".into(),
                    limit_param: "limit".into(),
                    limit: 100,
                    total_pointer: Some("/total".into()),
                },
            ),
            (
                json!({"kind": "cursor", "param": "c", "next_pointer": "/next"}),
                Pagination::Cursor {
                    param: "c".into(),
                    next_pointer: "/next".into(),
                },
            ),
            (json!({"kind": "link_header"}), Pagination::LinkHeader),
            (
                json!({"kind": "next_url", "next_pointer": "/next"}),
                Pagination::NextUrl {
                    next_pointer: "/next".into(),
                },
            ),
        ];
        for (value, expected) in paginations {
            let source = json!({"pagination": value.clone()});
            let spec = Spec::from_map(&map(source.clone())).expect("valid");
            assert_eq!(spec.pagination, expected, "{value}");
            assert_eq!(spec.pagination.kind(), value["kind"].as_str().unwrap());
            let derived: Spec = serde_json::from_value(source).expect("serde derive");
            assert_eq!(derived.pagination, expected);
        }
    }

    #[test]
    fn the_serde_derive_refuses_unknown_fields_too() {
        // (Except beside the tag of a kind without fields — `{"kind": "bearer", "x": 1}` — which
        // serde's derive lets through; `from_map`, what both services use, refuses it:
        // `type_problems_name_the_field`.)
        for bad in [
            json!({"requests": {}}),
            json!({"request": {"methd": "GET"}}),
            json!({"request": {"auth": {"kind": "header", "name": "n", "x": 1}}}),
            json!({"pagination": {"kind": "cursor", "param": "c", "next_pointer": "/n", "x": 1}}),
        ] {
            assert!(
                serde_json::from_value::<Spec>(bad.clone()).is_err(),
                "{bad}"
            );
            assert!(Spec::from_map(&map(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(json!({
            "request": {"method": "PATCH", "auth": {"kind": "header"}, "extra": 1},
            "pagination": {"kind": "cursor", "param": "cursor", "next_pointer": "meta.next"},
            "records": "data",
            "max_pages": 0,
            "page_concurrency": 65,
            "colour": "blue",
        }));
        assert_eq!(
            found,
            [
                "colour is not a field of an HTTP_JSON stream (fields: request, pagination, \
                 records, max_pages, page_concurrency, job)",
                "request.extra is not a field of request (fields: method, headers, body, auth)",
                "request.method must be GET, POST or PUT (got \"PATCH\")",
                "request.auth.name is required when request.auth.kind is header",
                "records must be a JSON pointer starting with / (got \"data\"; e.g. \"/data\")",
                "max_pages must be between 1 and 100000 (got 0)",
                "page_concurrency must be between 1 and 64 (got 65)",
                "pagination.next_pointer must be a JSON pointer starting with / (got \
                 \"meta.next\"; e.g. \"/data\")",
            ]
        );
    }

    #[test]
    fn type_problems_name_the_field() {
        one_problem(
            json!({"request": "GET"}),
            "request must be an object (got a string)",
        );
        one_problem(
            json!({"request": {"headers": {"Accept": 1}}}),
            "request.headers.Accept must be a string (got a number)",
        );
        one_problem(
            json!({"request": {"headers": ["Accept"]}}),
            "request.headers must be an object (got a list)",
        );
        one_problem(
            json!({"records": 3}),
            "records must be a string (got a number)",
        );
        one_problem(
            json!({"max_pages": -1}),
            "max_pages must be a whole number of 0 or more (got -1)",
        );
        one_problem(
            json!({"page_concurrency": "4"}),
            "page_concurrency must be a whole number of 0 or more (got \"4\")",
        );
        one_problem(
            json!({"pagination": {"kind": "page", "param": "p", "start": 1.5}}),
            "pagination.start must be a whole number of 0 or more (got 1.5)",
        );
        one_problem(
            json!({"pagination": {}}),
            "pagination.kind is required (one of none, page, offset, cursor, link_header, \
             next_url)",
        );
        one_problem(
            json!({"pagination": {"kind": 1}}),
            "pagination.kind must be a string, one of none, page, offset, cursor, link_header, \
             next_url (got a number)",
        );
        one_problem(
            json!({"pagination": {"kind": "pages"}}),
            "pagination.kind \"pages\" is not known (one of none, page, offset, cursor, \
             link_header, next_url)",
        );
        one_problem(
            json!({"pagination": {"kind": "link_header", "rel": "next"}}),
            "pagination.rel is not a field of pagination kind link_header (it takes none)",
        );
        one_problem(
            json!({"request": {"auth": {"kind": "bearer", "token": "t"}}}),
            "request.auth.token is not a field of request.auth kind bearer (it takes none)",
        );
        one_problem(
            json!({"request": {"auth": {"kind": "kerberos"}}}),
            "request.auth.kind \"kerberos\" is not known (one of none, bearer, header, query, \
             basic, oauth2_client_credentials)",
        );
        one_problem(json!({"job": []}), "job must be an object (got a list)");
    }

    #[test]
    fn pagination_combinations_that_cannot_work() {
        one_problem(
            json!({"pagination": {"kind": "cursor", "param": "c"}}),
            "pagination.next_pointer is required when pagination.kind is cursor",
        );
        one_problem(
            json!({"pagination": {"kind": "next_url"}}),
            "pagination.next_pointer is required when pagination.kind is next_url",
        );
        one_problem(
            json!({"pagination": {"kind": "next_url", "next_pointer": ""}}),
            "pagination.next_pointer must point into the page (not be the whole page)",
        );
        one_problem(
            json!({"pagination": {"kind": "cursor", "param": "", "next_pointer": "/n"}}),
            "pagination.param must not be empty",
        );
        one_problem(
            json!({"pagination": {"kind": "page"}}),
            "pagination.param is required when pagination.kind is page",
        );
        one_problem(
            json!({"pagination": {"kind": "page", "param": "p", "size_param": "per_page"}}),
            "pagination.size_param needs pagination.size (the page size to send)",
        );
        one_problem(
            json!({"pagination": {"kind": "page", "param": "p", "size": 10}}),
            "pagination.size needs pagination.size_param (the parameter to send it in)",
        );
        one_problem(
            json!({"pagination": {"kind": "page", "param": "p", "size_param": "n", "size": 0}}),
            "pagination.size must be at least 1",
        );
        one_problem(
            json!({"pagination": {"kind": "page", "param": "p", "total_pages_pointer": "x"}}),
            "pagination.total_pages_pointer must be a JSON pointer starting with / (got \"x\"; \
             e.g. \"/data\")",
        );
        assert_eq!(
            problems(json!({"pagination": {"kind": "offset", "param": "o"}})),
            [
                "pagination.limit_param is required when pagination.kind is offset",
                "pagination.limit is required when pagination.kind is offset",
            ]
        );
        one_problem(
            json!({"pagination": {"kind": "offset", "param": "o", "limit_param": "o", "limit": 5}}),
            "pagination.param and pagination.limit_param must be different parameters",
        );
        one_problem(
            json!({"pagination": {"kind": "offset", "param": "o", "limit_param": "l", "limit": 0}}),
            "pagination.limit must be at least 1",
        );
        one_problem(
            json!({"pagination": {"kind": "offset", "param": "o", "limit_param": "l", "limit": 5,
                                  "total_pointer": "/meta/~2"}}),
            "pagination.total_pointer is not a valid JSON pointer (\"/meta/~2\"): write ~ as ~0 \
             and / inside a name as ~1",
        );
    }

    #[test]
    fn request_problems() {
        one_problem(
            json!({"request": {"body": {"q": 1}}}),
            "request.body needs request.method POST or PUT (a GET request carries no body)",
        );
        one_problem(
            json!({"request": {"method": "POST", "body": {"from": "{{since}}"}}}),
            "request.body.from: unknown template variable \"since\" in `{{since}}` (known: \
             window_start, window_end, slot, page, offset, cursor)",
        );
        one_problem(
            json!({"request": {"method": "POST", "body": {"list": [1, "{{page:date}}"]}}}),
            "request.body.list[1]: `{{page:date}}`: page is not a time and takes no format",
        );
        one_problem(
            json!({"request": {"headers": {"X-Since": "{{window_start:iso}}"}}}),
            "request.headers.X-Since: unknown time format \"iso\" in `{{window_start:iso}}` \
             (formats: rfc3339, epoch, epoch_ms, date)",
        );
        one_problem(
            json!({"request": {"headers": {"X-Since": "{{window_start"}}}),
            "request.headers.X-Since: `{{` without a closing `}}` in \"{{window_start\" (write \
             {{window_start}} and the like)",
        );
        one_problem(
            json!({"request": {"headers": {"Bad Name": "x"}}}),
            "request.headers.Bad Name must be an HTTP header name (letters, digits and \
             !#$%&'*+-.^_`|~), got \"Bad Name\"",
        );
        one_problem(
            json!({"request": {"headers": {"X-A": "a\r\nX-B: b"}}}),
            "request.headers.X-A must not contain a line break",
        );
        one_problem(
            json!({"request": {"headers": {"authorization": "Bearer x"}, "auth": {"kind": "bearer"}}}),
            "request.headers.authorization is set by request.auth (kind bearer); remove it from \
             the headers",
        );
        one_problem(
            json!({"request": {"headers": {"X-Api-Key": "k"},
                               "auth": {"kind": "header", "name": "x-api-key"}}}),
            "request.headers.X-Api-Key is set by request.auth (kind header); remove it from the \
             headers",
        );
        one_problem(
            json!({"request": {"headers": {"X-Cursor": "{{cursor}}"}}}),
            "request.headers.X-Cursor: {{cursor}} needs pagination.kind cursor (it is none)",
        );
        one_problem(
            json!({"request": {"method": "POST", "body": {"skip": "{{offset}}"}},
                   "pagination": {"kind": "page", "param": "p"}}),
            "request.body.skip: {{offset}} needs pagination.kind offset (it is page)",
        );
        one_problem(
            json!({"request": {"auth": {"kind": "query", "name": " "}}}),
            "request.auth.name must not be empty",
        );
        one_problem(
            json!({"request": {"auth": {"kind": "basic", "username": "a:b"}}}),
            "request.auth.username must not contain `:` (HTTP Basic separates the username from \
             the password with it)",
        );
        assert_eq!(
            problems(
                json!({"request": {"auth": {"kind": "oauth2_client_credentials",
                                                 "token_url": "ftp://x/token", "client_id": "",
                                                 "scope": ""}}})
            ),
            [
                "request.auth.token_url must be an http:// or https:// URL (got \"ftp://x/token\")",
                "request.auth.client_id must not be empty",
                "request.auth.scope must not be empty",
            ]
        );
        one_problem(
            json!({"request": {"auth": {"kind": "oauth2_client_credentials",
                                        "token_url": "https://a.example/token"}}}),
            "request.auth.client_id is required when request.auth.kind is \
             oauth2_client_credentials",
        );
    }

    fn job(extra: Value) -> Value {
        let mut job = json!({"status_url_pointer": "/links/status", "status_pointer": "/status",
                             "done": ["success"], "result_url_pointer": "/links/result"});
        for (k, v) in map(extra) {
            job[k] = v;
        }
        json!({ "job": job })
    }

    #[test]
    fn job_problems() {
        assert!(Spec::from_map(&map(job(json!({})))).is_ok());
        assert_eq!(
            problems(json!({"job": {}})),
            [
                "job.status_url_pointer is required (the JSON pointer to the status URL in the \
                 submission's answer)",
                "job.status_pointer is required (the JSON pointer to the status in a status \
                 answer)",
                "job.result_url_pointer is required (the JSON pointer to the result URL in the \
                 status answer)",
                "job.done is required (the statuses meaning the result is ready)",
            ]
        );
        one_problem(
            job(json!({"status_pointer": "status"})),
            "job.status_pointer must be a JSON pointer starting with / (got \"status\"; e.g. \
             \"/data\")",
        );
        one_problem(
            job(json!({"done": []})),
            "job.done must list at least one status (the statuses meaning the result is ready)",
        );
        one_problem(
            job(json!({"done": ["ok", 1]})),
            "job.done[1] must be a string (got a number)",
        );
        one_problem(
            job(json!({"failed": "error"})),
            "job.failed must be a list of strings (got a string)",
        );
        one_problem(
            job(json!({"failed": ["success"]})),
            "job: status \"success\" is in both job.done and job.failed",
        );
        one_problem(
            job(json!({"poll_interval": 50})),
            "job.poll_interval must be at least 100 ms (got 50)",
        );
        one_problem(
            job(json!({"poll_interval": 10000, "deadline": 5000})),
            "job.deadline (5000 ms) must be at least job.poll_interval (10000 ms)",
        );
        one_problem(
            job(json!({"wait": 1})),
            "job.wait is not a field of job (fields: submit, status_url_pointer, \
             status_pointer, done, failed, result_url_pointer, poll_interval, deadline)",
        );
        one_problem(
            job(json!({"submit": {"url": "reports"}})),
            "job.submit.url must be an http:// or https:// URL (got \"reports\")",
        );
        one_problem(
            job(json!({"submit": {"method": "GET", "body": {"a": 1}}})),
            "job.submit.body needs job.submit.method POST or PUT (a GET request carries no body)",
        );
        one_problem(
            job(json!({"submit": {"body": {"from": "{{window_start:week}}"}}})),
            "job.submit.body.from: unknown time format \"week\" in `{{window_start:week}}` \
             (formats: rfc3339, epoch, epoch_ms, date)",
        );
        one_problem(
            job(json!({"submit": {"headers": {"X-Until": "{{until}}"}}})),
            "job.submit.headers.X-Until: unknown template variable \"until\" in `{{until}}` \
             (known: window_start, window_end, slot, page, offset, cursor)",
        );
        one_problem(
            job(json!({"submit": {"verb": "POST"}})),
            "job.submit.verb is not a field of job.submit (fields: method, url, headers, body)",
        );
    }

    #[test]
    fn source_text_that_is_not_an_object() {
        assert_eq!(
            Spec::parse("[1]"),
            Err(vec![
                "the source spec must be a JSON object of request, pagination, records, \
                 max_pages, page_concurrency and job"
                    .to_string()
            ])
        );
        let err = Spec::parse("{").unwrap_err();
        assert!(
            err[0].starts_with("the source spec is not JSON: "),
            "{err:?}"
        );
    }

    #[test]
    fn params_are_checked_as_templates() {
        let params = map(json!({
            "updated_since": "{{window_start}}",
            "until": "{{window_end:epoch}}",
            "limit": 50,
            "active": true,
        }));
        assert!(check_params(&params).is_empty());
        let params = map(json!({
            "since": "{{windowstart}}",
            "day": "{{slot:day}}",
            "open": "{{page",
            "list": [1],
            "none": null,
        }));
        assert_eq!(
            check_params(&params),
            [
                "params.day: unknown time format \"day\" in `{{slot:day}}` (formats: rfc3339, \
                 epoch, epoch_ms, date)",
                "params.list must be a string, number or boolean (it becomes a query parameter)",
                "params.none must be a string, number or boolean (it becomes a query parameter)",
                "params.open: `{{` without a closing `}}` in \"{{page\" (write {{window_start}} \
                 and the like)",
                "params.since: unknown template variable \"windowstart\" in `{{windowstart}}` \
                 (known: window_start, window_end, slot, page, offset, cursor)",
            ]
        );
        assert_eq!(
            HttpJson.check_params(&map(json!({"": "x"}))),
            ["params: a parameter name must not be empty"]
        );
    }

    fn values() -> TemplateValues {
        TemplateValues {
            // 2026-01-01T00:00:00Z and 2026-01-01T00:15:00.250Z
            window_start_ms: 1_767_225_600_000,
            window_end_ms: 1_767_226_500_250,
            slot_ms: 1_767_226_500_250,
            page: 3,
            offset: 200,
            cursor: Some("abc=".into()),
        }
    }

    #[test]
    fn templates_render_in_every_format() {
        let v = values();
        let cases = [
            ("{{window_start}}", "2026-01-01T00:00:00Z"),
            ("{{window_start:rfc3339}}", "2026-01-01T00:00:00Z"),
            ("{{window_end}}", "2026-01-01T00:15:00.250Z"),
            ("{{window_start:epoch}}", "1767225600"),
            ("{{window_end:epoch}}", "1767226500"),
            ("{{window_start:epoch_ms}}", "1767225600000"),
            ("{{slot:epoch_ms}}", "1767226500250"),
            ("{{slot:date}}", "2026-01-01"),
            ("{{ window_start : date }}", "2026-01-01"),
            ("{{page}}", "3"),
            ("{{offset}}", "200"),
            ("{{cursor}}", "abc="),
            (
                "from {{window_start:date}} to {{window_end:date}}!",
                "from 2026-01-01 to 2026-01-01!",
            ),
            ("no variables", "no variables"),
            ("}} alone", "}} alone"),
            ("", ""),
        ];
        for (template, expected) in cases {
            assert_eq!(render(template, &v).as_deref(), Ok(expected), "{template}");
        }
        let first = TemplateValues {
            cursor: None,
            ..values()
        };
        assert_eq!(render("c={{cursor}}", &first).as_deref(), Ok("c="));
        let template = Template::parse("{{slot}}/{{page}}").unwrap();
        assert_eq!(template.vars().collect::<Vec<_>>(), [Var::Slot, Var::Page]);
    }

    #[test]
    fn times_before_the_epoch_and_on_leap_days() {
        let f = TimeFormat::Rfc3339;
        assert_eq!(f.format(0), "1970-01-01T00:00:00Z");
        assert_eq!(f.format(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(TimeFormat::Epoch.format(-1), "-1");
        assert_eq!(TimeFormat::Date.format(-1), "1969-12-31");
        // 2024-02-29T12:34:56Z and 2000-03-01 (a leap century).
        assert_eq!(f.format(1_709_210_096_000), "2024-02-29T12:34:56Z");
        assert_eq!(TimeFormat::Date.format(951_868_800_000), "2000-03-01");
        assert_eq!(TimeFormat::Date.format(4_107_542_400_000), "2100-03-01");
    }

    #[test]
    fn json_bodies_render_numbers_as_numbers() {
        let v = values();
        let body = json!({
            "page": "{{page}}", "skip": "{{offset}}", "from": "{{window_start}}",
            "from_s": "{{window_start:epoch}}", "to_ms": "{{window_end:epoch_ms}}",
            "label": "page {{page}}", "cursor": "{{cursor}}", "keep": [1, true, null]
        });
        assert_eq!(
            render_json(&body, &v),
            Ok(json!({
                "page": 3, "skip": 200, "from": "2026-01-01T00:00:00Z",
                "from_s": 1_767_225_600, "to_ms": 1_767_226_500_250_i64,
                "label": "page 3", "cursor": "abc=", "keep": [1, true, null]
            }))
        );
        assert!(render_json(&json!({"a": ["{{nope}}"]}), &v).is_err());
    }

    #[test]
    fn json_pointers() {
        assert!(check_pointer("").is_ok());
        assert!(check_pointer("/").is_ok());
        assert!(check_pointer("/data/0/a~1b/c~0d").is_ok());
        assert!(check_pointer("data").is_err());
        assert!(check_pointer("/a~").is_err());
        assert!(check_pointer("/a~x").is_err());
    }
}
