//! The `/v2/*` endpoints: key check, faults, plan check, rate limits, then the answer, with the
//! captured header set of IQAIR.md §1.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use chrono::{Datelike, Utc};
use futures::stream;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::cities;
use super::faults::{Action, PERMISSION_DENIED};
use super::reading::{self, Shape};
use super::SimState;

/// How long a `hang` holds the request when nobody gives up.
const HANG_FOR: Duration = Duration::from_secs(3600);

/// Marks a response the compression layer must leave alone: slow and truncated bodies must reach
/// the wire exactly as the fault shapes them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoCompress;

/// The query parameters of every v2 endpoint; unknown ones are ignored.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct V2Query {
    key: Option<String>,
    lat: Option<String>,
    lon: Option<String>,
    city: Option<String>,
    state: Option<String>,
    country: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Countries,
    States,
    Cities,
    NearestCity,
    City,
    /// `stations`, `nearest_station`, `station`, `city_ranking`: Startup or Enterprise only.
    HigherPlan,
}

impl Endpoint {
    fn parse(name: &str) -> Option<Endpoint> {
        Some(match name {
            "countries" => Endpoint::Countries,
            "states" => Endpoint::States,
            "cities" => Endpoint::Cities,
            "nearest_city" => Endpoint::NearestCity,
            "city" => Endpoint::City,
            "stations" | "nearest_station" | "station" | "city_ranking" => Endpoint::HigherPlan,
            _ => return None,
        })
    }
}

/// How the answer's body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Whole,
    Slow,
    Truncated,
}

/// `GET /v2/{endpoint}`.
pub(crate) async fn v2(
    State(state): State<SimState>,
    uri: Uri,
    query: Result<Query<V2Query>, QueryRejection>,
) -> Response {
    let sim = &state.inner;
    sim.totals.requests.fetch_add(1, Ordering::Relaxed);
    let Some(endpoint) = uri.path().strip_prefix("/v2/").and_then(Endpoint::parse) else {
        return fail(StatusCode::NOT_FOUND, "Not Found");
    };
    let Ok(Query(query)) = query else {
        return fail(StatusCode::BAD_REQUEST, "bad_request");
    };
    // The key travels only as a query parameter (IQAIR.md §1); a missing key is a wrong key.
    let Some((key, entry)) = query.key.as_deref().and_then(|k| sim.keys.get_key_value(k)) else {
        sim.totals.unauthorized.fetch_add(1, Ordering::Relaxed);
        return fail(StatusCode::UNAUTHORIZED, "incorrect_api_key");
    };
    entry.requests.fetch_add(1, Ordering::Relaxed);

    let mut shape = Shape::FULL;
    let mut delivery = Delivery::Whole;
    if let Some((fault, status_override)) = sim.faults.take(key) {
        sim.totals.faulted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%fault, "injecting fault");
        let status_or = |default: u16| {
            StatusCode::from_u16(status_override.unwrap_or(default)).unwrap_or(StatusCode::OK)
        };
        match fault.action() {
            Action::FailBody { message, status } => return fail(status_or(status), message),
            Action::Raw {
                status,
                content_type,
                body,
                api_headers,
            } => return raw(status_or(status), content_type, body, api_headers),
            Action::Hang => return hang(&sim.shutdown).await,
            Action::SlowBody => delivery = Delivery::Slow,
            Action::Truncated => delivery = Delivery::Truncated,
            Action::Shape(faulty) => shape = faulty,
        }
    }

    if endpoint == Endpoint::HigherPlan {
        return fail(StatusCode::FORBIDDEN, PERMISSION_DENIED);
    }

    let now = Utc::now();
    if !sim.limits.is_off() {
        let day = now.timestamp().div_euclid(86_400);
        let month = i64::from(now.year()) * 12 + i64::from(now.month0());
        let admitted = entry
            .lock_windows()
            .admit(&sim.limits, Instant::now(), day, month);
        if let Err(hit) = admitted {
            sim.totals.rate_limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(limit = hit.message(), "rate limited");
            return fail(StatusCode::TOO_MANY_REQUESTS, hit.message());
        }
    }

    let hour = now.timestamp().div_euclid(3600);
    let (status, body) = answer(endpoint, &query, hour, shape);
    if status == StatusCode::OK {
        sim.totals.ok.fetch_add(1, Ordering::Relaxed);
    }
    match delivery {
        Delivery::Whole => json(status, Body::from(body)),
        Delivery::Slow => slow(status, body, sim.slow_body, sim.shutdown.clone()),
        Delivery::Truncated => truncated(status, body),
    }
}

/// Any path outside `/v2/{endpoint}` and `/admin/*`.
pub(crate) async fn not_found() -> Response {
    fail(StatusCode::NOT_FOUND, "Not Found")
}

fn answer(endpoint: Endpoint, query: &V2Query, hour: i64, shape: Shape) -> (StatusCode, Vec<u8>) {
    let not_found = |message| (StatusCode::BAD_REQUEST, reading::fail_body(message));
    match endpoint {
        Endpoint::Countries => (
            StatusCode::OK,
            reading::listing_body("country", &cities::countries()),
        ),
        Endpoint::States => match param(&query.country).and_then(cities::states) {
            Some(states) => (StatusCode::OK, reading::listing_body("state", &states)),
            None => not_found("country_not_found"),
        },
        Endpoint::Cities => {
            let country = param(&query.country).unwrap_or("");
            if !cities::is_country(country) {
                return not_found("country_not_found");
            }
            match param(&query.state).and_then(|state| cities::cities(state, country)) {
                Some(names) => (StatusCode::OK, reading::listing_body("city", &names)),
                None => not_found("state_not_found"),
            }
        }
        Endpoint::NearestCity => {
            let place = match (param(&query.lat), param(&query.lon)) {
                (None, None) => cities::ip_mode_place(),
                (Some(lat), Some(lon)) => match coordinates(lat, lon) {
                    Some((lat, lon)) => cities::nearest(lat, lon),
                    None => return not_found("wrong_coordinates"),
                },
                _ => return not_found("wrong_coordinates"),
            };
            (StatusCode::OK, reading::city_body(&place, hour, shape))
        }
        Endpoint::City => {
            let found = match (
                param(&query.city),
                param(&query.state),
                param(&query.country),
            ) {
                (Some(city), Some(state), Some(country)) => cities::find_city(city, state, country),
                _ => None,
            };
            match found {
                Some(place) => (StatusCode::OK, reading::city_body(&place, hour, shape)),
                None => not_found("city_not_found"),
            }
        }
        // Answered before the rate limits; kept total for the compiler.
        Endpoint::HigherPlan => (StatusCode::FORBIDDEN, reading::fail_body(PERMISSION_DENIED)),
    }
}

/// A parameter's value, trimmed; empty counts as absent.
fn param(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn coordinates(lat: &str, lon: &str) -> Option<(f64, f64)> {
    let lat: f64 = lat.parse().ok()?;
    let lon: f64 = lon.parse().ok()?;
    let valid = (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon);
    valid.then_some((lat, lon))
}

/// The headers every API answer carries (IQAIR.md §1); no rate-limit headers.
fn with_api_headers(mut response: Response, content_type: Option<&'static str>) -> Response {
    let headers = response.headers_mut();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Origin, X-Requested-With, Content-Type, Accept"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

fn with_status(body: Body, status: StatusCode) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn json(status: StatusCode, body: Body) -> Response {
    with_api_headers(with_status(body, status), Some("application/json"))
}

/// A fail envelope with the API headers.
pub(crate) fn fail(status: StatusCode, message: &str) -> Response {
    json(status, Body::from(reading::fail_body(message)))
}

fn raw(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: &'static str,
    api_headers: bool,
) -> Response {
    let mut response = with_status(Body::from(body), status);
    if api_headers {
        response = with_api_headers(response, content_type);
    } else if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

/// Holds the request until the client gives up; shutdown ends it so draining cannot hang.
async fn hang(shutdown: &CancellationToken) -> Response {
    tokio::select! {
        () = tokio::time::sleep(HANG_FOR) => raw(
            StatusCode::GATEWAY_TIMEOUT,
            Some("text/html"),
            super::faults::HTML_504,
            false,
        ),
        () = shutdown.cancelled() => with_status(Body::empty(), StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// Headers and the first third of the body at once, the rest in five pieces over `over`.
fn slow(
    status: StatusCode,
    body: Vec<u8>,
    over: Duration,
    shutdown: CancellationToken,
) -> Response {
    const PIECES: usize = 5;
    let body = Bytes::from(body);
    let head_len = body.len() / 3;
    let mut chunks = vec![body.slice(..head_len)];
    let rest = body.len() - head_len;
    let piece = rest.div_ceil(PIECES).max(1);
    let mut start = head_len;
    while start < body.len() {
        let end = (start + piece).min(body.len());
        chunks.push(body.slice(start..end));
        start = end;
    }
    let pause = over / PIECES as u32;
    let chunks = stream::unfold(
        (chunks.into_iter(), true, shutdown),
        move |(mut chunks, first, shutdown)| async move {
            let chunk = chunks.next()?;
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => {
                        let cut = io::Error::other("simulator shutting down");
                        return Some((Err(cut), (Vec::new().into_iter(), false, shutdown)));
                    }
                }
            }
            Some((Ok::<_, io::Error>(chunk), (chunks, false, shutdown)))
        },
    );
    let mut response = json(status, Body::from_stream(chunks));
    response.extensions_mut().insert(NoCompress);
    response
}

/// Declares the whole length, sends half, then cuts the connection.
fn truncated(status: StatusCode, body: Vec<u8>) -> Response {
    let full_len = body.len();
    let half = Bytes::from(body).slice(..full_len / 2);
    // Step 0 sends the half, step 1 cuts (an error makes the server drop the connection).
    let chunks = stream::unfold(0u8, move |step| {
        let half = half.clone();
        async move {
            match step {
                0 => Some((Ok(half), 1)),
                1 => {
                    // Let the half reach the wire before the cut, as a dropped upstream would.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some((Err(io::Error::other("truncated on purpose")), 2))
                }
                _ => None,
            }
        }
    });
    let mut response = json(status, Body::from_stream(chunks));
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full_len));
    response.extensions_mut().insert(NoCompress);
    response
}
