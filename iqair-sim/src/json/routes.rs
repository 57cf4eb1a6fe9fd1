//! The data routes' handlers: the items under each pagination style and the report jobs. The
//! gate (`gate.rs`) has already checked the auth prefix, the credentials and the rate limit.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::data::{self, parse_count, Item, DEFAULT_PER_PAGE, MAX_PER_PAGE};
use super::error::ApiError;
use super::jobs::JobStatus;
use super::JsonSimState;

/// A request's query parameters (the last value wins when one repeats).
type Params = HashMap<String, String>;

type Answer = Result<Response, ApiError>;

fn params(query: Result<Query<Params>, QueryRejection>) -> Result<Params, ApiError> {
    query
        .map(|Query(params)| params)
        .map_err(|rejection| ApiError::bad_request(format!("query: {}", rejection.body_text())))
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.get(name).map(String::as_str)
}

/// The ids within the window `updated_since` (inclusive) .. `until` (exclusive).
fn window(
    state: &JsonSimState,
    since_name: &str,
    since: Option<&str>,
    until_name: &str,
    until: Option<&str>,
) -> Result<Range<u64>, ApiError> {
    let parse = |name: &str, raw: Option<&str>| match raw {
        None => Ok(None),
        Some(raw) => data::parse_instant(raw)
            .map(Some)
            .map_err(|err| ApiError::bad_request(format!("{name}: {err}"))),
    };
    let since = parse(since_name, since)?;
    let until = parse(until_name, until)?;
    Ok(state.inner.dataset.window(since, until))
}

fn query_window(state: &JsonSimState, params: &Params) -> Result<Range<u64>, ApiError> {
    window(
        state,
        "updated_since",
        param(params, "updated_since"),
        "until",
        param(params, "until"),
    )
}

fn count(name: &str, raw: Option<&str>, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    parse_count(name, raw, default, min, max).map_err(ApiError::bad_request)
}

/// `page` and `per_page` from `params`.
fn page_params(params: &Params) -> Result<(u64, u64), ApiError> {
    Ok((
        count("page", param(params, "page"), 1, 1, u64::MAX)?,
        count(
            "per_page",
            param(params, "per_page"),
            DEFAULT_PER_PAGE,
            1,
            MAX_PER_PAGE,
        )?,
    ))
}

/// `{"data"}`: `/items` and `/items/link`. (The answers are typed rather than `json!` so
/// items go to the wire in their field order without an intermediate `Value`.)
#[derive(Serialize)]
struct Items {
    data: Vec<Item>,
}

/// `{"data", "meta"}`: `/items/page` and job results.
#[derive(Serialize)]
struct Paged {
    data: Vec<Item>,
    meta: PageMeta,
}

#[derive(Serialize)]
struct PageMeta {
    page: u64,
    per_page: u64,
    total_pages: u64,
    total: u64,
}

/// `{"data", "total"}`: `/items/offset`.
#[derive(Serialize)]
struct Offset {
    data: Vec<Item>,
    total: u64,
}

/// `{"data", "meta": {"next_cursor"}}`: `/items/cursor`.
#[derive(Serialize)]
struct Cursored {
    data: Vec<Item>,
    meta: CursorMeta,
}

#[derive(Serialize)]
struct CursorMeta {
    next_cursor: Option<String>,
}

/// `{"data", "next"}`: `/items/next`.
#[derive(Serialize)]
struct WithNext {
    data: Vec<Item>,
    next: Option<String>,
}

/// `{"data", "meta": {"page", "per_page", "total_pages", "total"}}` for page `page` of `window`.
fn page_answer(state: &JsonSimState, window: &Range<u64>, page: u64, per_page: u64) -> Response {
    let ids = data::page_of(window, page, per_page);
    let total = window.end - window.start;
    Json(Paged {
        data: state.inner.dataset.items(ids),
        meta: PageMeta {
            page,
            per_page,
            total_pages: data::total_pages(total, per_page),
            total,
        },
    })
    .into_response()
}

/// The host the client called, for absolute links: the `Host` header (HTTP/1.1) or the URI's
/// authority (HTTP/2).
fn host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Result<&'a str, ApiError> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .ok_or_else(|| ApiError::bad_request("the request has no Host header to build links from"))
}

/// The absolute URL of this request with its `page` parameter set to `page`, every other
/// parameter kept as sent.
fn page_url(headers: &HeaderMap, uri: &Uri, page: u64) -> Result<String, ApiError> {
    let host = host(headers, uri)?;
    let mut pairs: Vec<String> = Vec::new();
    let mut replaced = false;
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        if pair.split('=').next() == Some("page") {
            if !replaced {
                pairs.push(format!("page={page}"));
                replaced = true;
            }
        } else {
            pairs.push(pair.to_string());
        }
    }
    if !replaced {
        pairs.push(format!("page={page}"));
    }
    Ok(format!("http://{host}{}?{}", uri.path(), pairs.join("&")))
}

/// The absolute URL of `path` on this server.
fn absolute(headers: &HeaderMap, uri: &Uri, path: &str) -> Result<String, ApiError> {
    let host = host(headers, uri)?;
    Ok(format!("http://{host}{path}"))
}

/// `GET /{auth}/items`: every item in the window, unpaginated.
pub(crate) async fn all_items(
    State(state): State<JsonSimState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Answer {
    let params = params(query)?;
    let window = query_window(&state, &params)?;
    state.page_delay().await;
    Ok(Json(Items {
        data: state.inner.dataset.items(window),
    })
    .into_response())
}

/// `GET /{auth}/items/page?page&per_page`.
pub(crate) async fn page_by_query(
    State(state): State<JsonSimState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Answer {
    let params = params(query)?;
    let window = query_window(&state, &params)?;
    let (page, per_page) = page_params(&params)?;
    state.page_delay().await;
    Ok(page_answer(&state, &window, page, per_page))
}

/// `POST /{auth}/items/page` with `{"page", "per_page", "updated_since", "until"}` (all
/// optional; numbers or strings). Query parameters of the same names apply where the body is
/// silent.
pub(crate) async fn page_by_body(
    State(state): State<JsonSimState>,
    query: Result<Query<Params>, QueryRejection>,
    body: Bytes,
) -> Answer {
    let mut params = params(query)?;
    for (name, value) in body_fields(&body, &["page", "per_page", "updated_since", "until"])? {
        params.insert(name, value);
    }
    let window = query_window(&state, &params)?;
    let (page, per_page) = page_params(&params)?;
    state.page_delay().await;
    Ok(page_answer(&state, &window, page, per_page))
}

/// The fields of an optional JSON object body as text (numbers and strings; `null` is absent).
fn body_fields(body: &[u8], known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let object: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("body: expected a JSON object ({err})")))?;
    let mut fields = Vec::new();
    for (name, value) in object {
        if !known.contains(&name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "body: unknown field {name:?}; known: {}",
                known.join(", ")
            )));
        }
        let text = match value {
            Value::Null => continue,
            Value::String(text) => text,
            Value::Number(number) => number.to_string(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "{name}: expected a number or a string, got {other}"
                )))
            }
        };
        fields.push((name, text));
    }
    Ok(fields)
}

/// `GET /{auth}/items/offset?offset&limit`: `{"data", "total"}`.
pub(crate) async fn offset(
    State(state): State<JsonSimState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Answer {
    let params = params(query)?;
    let window = query_window(&state, &params)?;
    let offset = count("offset", param(&params, "offset"), 0, 0, u64::MAX)?;
    let limit = count(
        "limit",
        param(&params, "limit"),
        DEFAULT_PER_PAGE,
        1,
        MAX_PER_PAGE,
    )?;
    let start = window.start.saturating_add(offset).min(window.end);
    let end = start.saturating_add(limit).min(window.end);
    state.page_delay().await;
    Ok(Json(Offset {
        data: state.inner.dataset.items(start..end),
        total: window.end - window.start,
    })
    .into_response())
}

/// `GET /{auth}/items/cursor?cursor&limit`: `{"data", "meta": {"next_cursor"}}`.
pub(crate) async fn cursor(
    State(state): State<JsonSimState>,
    query: Result<Query<Params>, QueryRejection>,
) -> Answer {
    let params = params(query)?;
    let window = query_window(&state, &params)?;
    let limit = count(
        "limit",
        param(&params, "limit"),
        DEFAULT_PER_PAGE,
        1,
        MAX_PER_PAGE,
    )?;
    let resume_at = match param(&params, "cursor").map(str::trim).filter(|c| !c.is_empty()) {
        None => window.start,
        Some(cursor) => state.inner.cursors.decode(cursor).ok_or_else(|| {
            ApiError::bad_request(
                "cursor: not one this simulator made (or made before a restart); start again without a cursor",
            )
        })?,
    };
    // The cursor holds an item id, so a changed window between pages still reads consistently.
    let start = resume_at.clamp(window.start, window.end);
    let end = start.saturating_add(limit).min(window.end);
    let next_cursor = (end < window.end).then(|| state.inner.cursors.encode(end));
    state.page_delay().await;
    Ok(Json(Cursored {
        data: state.inner.dataset.items(start..end),
        meta: CursorMeta { next_cursor },
    })
    .into_response())
}

/// `GET /{auth}/items/link?page&per_page`: `{"data"}` and an RFC 8288 `Link` header with
/// `rel="next"` (unless last page) and `rel="first"`.
pub(crate) async fn link(
    State(state): State<JsonSimState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Params>, QueryRejection>,
) -> Answer {
    let params = params(query)?;
    let window = query_window(&state, &params)?;
    let (page, per_page) = page_params(&params)?;
    let has_next = page < data::total_pages(window.end - window.start, per_page);
    let first = page_url(&headers, &uri, 1)?;
    let link = match has_next {
        true => {
            let next = page_url(&headers, &uri, page + 1)?;
            format!("<{next}>; rel=\"next\", <{first}>; rel=\"first\"")
        }
        false => format!("<{first}>; rel=\"first\""),
    };
    let ids = data::page_of(&window, page, per_page);
    state.page_delay().await;
    let mut response = Json(Items {
        data: state.inner.dataset.items(ids),
    })
    .into_response();
    let link = HeaderValue::from_str(&link)
        .map_err(|_| ApiError::bad_request("the Host header cannot go into a Link header"))?;
    response.headers_mut().insert(header::LINK, link);
    Ok(response)
}

/// `GET /{auth}/items/next?page&per_page`: `{"data", "next": absolute URL or null}`.
pub(crate) async fn next(
    State(state): State<JsonSimState>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<Params>, QueryRejection>,
) -> Answer {
    let params = params(query)?;
    let window = query_window(&state, &params)?;
    let (page, per_page) = page_params(&params)?;
    let has_next = page < data::total_pages(window.end - window.start, per_page);
    let next = match has_next {
        true => Some(page_url(&headers, &uri, page + 1)?),
        false => None,
    };
    let ids = data::page_of(&window, page, per_page);
    state.page_delay().await;
    Ok(Json(WithNext {
        data: state.inner.dataset.items(ids),
        next,
    })
    .into_response())
}

/// `POST /{auth}/reports` with an optional `{"from", "to"}`: `202 {"id", "status": "queued",
/// "links": {"status"}}`.
pub(crate) async fn submit_report(
    State(state): State<JsonSimState>,
    Path(auth): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Answer {
    let fields: HashMap<String, String> =
        body_fields(&body, &["from", "to"])?.into_iter().collect();
    let ids = window(
        &state,
        "from",
        fields.get("from").map(String::as_str),
        "to",
        fields.get("to").map(String::as_str),
    )?;
    let sim = &state.inner;
    let delay = std::time::Duration::from_millis(sim.tunables.job_delay_ms.load(Ordering::Relaxed));
    let id = sim.jobs.submit(ids, delay);
    sim.observe.jobs_submitted.fetch_add(1, Ordering::Relaxed);
    let status_url = absolute(&headers, &uri, &format!("/{auth}/reports/{id}"))?;
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": JobStatus::Queued, "links": {"status": status_url}})),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn unknown_job(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no report job {id:?} (jobs are forgotten at restart); submit one with POST /{{auth}}/reports"
    ))
}

/// `GET /{auth}/reports/{id}`: `{"id", "status", "links": {"status", "result" when success}}`.
pub(crate) async fn report_status(
    State(state): State<JsonSimState>,
    Path((auth, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Answer {
    let (status, _) = state.inner.jobs.get(&id).ok_or_else(|| unknown_job(&id))?;
    let mut links = Map::new();
    links.insert(
        "status".into(),
        json!(absolute(&headers, &uri, &format!("/{auth}/reports/{id}"))?),
    );
    if status == JobStatus::Success {
        links.insert(
            "result".into(),
            json!(absolute(
                &headers,
                &uri,
                &format!("/{auth}/reports/{id}/result")
            )?),
        );
    }
    let mut body = json!({"id": id, "status": status, "links": links});
    if status == JobStatus::Failed {
        body["error"] =
            json!("the report failed (injected with POST /admin/jobs); submit a new one");
    }
    Ok(Json(body).into_response())
}

/// `GET /{auth}/reports/{id}/result?page&per_page`: paged like `/items/page`; 409 before success.
pub(crate) async fn report_result(
    State(state): State<JsonSimState>,
    Path((_auth, id)): Path<(String, String)>,
    query: Result<Query<Params>, QueryRejection>,
) -> Answer {
    let params = params(query)?;
    let (status, ids) = state.inner.jobs.get(&id).ok_or_else(|| unknown_job(&id))?;
    if status != JobStatus::Success {
        let detail = match status {
            JobStatus::Failed => "the job failed and has no result; submit a new one".to_string(),
            _ => format!("the job is {status}; poll its status until success"),
        };
        return Err(ApiError::new(StatusCode::CONFLICT, "not_ready")
            .with("status", json!(status))
            .with("detail", detail));
    }
    let filter = query_window(&state, &params)?;
    let start = ids.start.max(filter.start);
    let window = start..ids.end.min(filter.end).max(start);
    let (page, per_page) = page_params(&params)?;
    state.page_delay().await;
    Ok(page_answer(&state, &window, page, per_page))
}
