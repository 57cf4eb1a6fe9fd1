//! What every data request goes through around its handler: counting and logging, the auth
//! prefix and credentials, faults, the rate limit and its headers.

use std::sync::atomic::Ordering;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::{self, AuthKind};
use super::error::ApiError;
use super::faults::{self, Action};
use super::limits::RateState;
use super::observe::{auth_scheme, redact_query, LoggedRequest};
use super::JsonSimState;

/// How a faulted answer's body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Whole,
    Slow,
    Truncated,
}

/// One request being answered: counted at the start, logged when dropped, so a request whose
/// client went away (a `hang`) is logged too, as 499.
struct Record {
    state: JsonSimState,
    data: bool,
    /// Taken when logged.
    entry: Option<LoggedRequest>,
    status: Option<StatusCode>,
}

impl Record {
    fn begin(state: &JsonSimState, request: &Request, data: bool) -> Record {
        let route = match request.extensions().get::<MatchedPath>() {
            Some(matched) => matched
                .as_str()
                .trim_start_matches("/{auth}/")
                .trim_start_matches('/'),
            None => "unmatched",
        };
        state.inner.observe.begin(route, data);
        let query = request.uri().query().unwrap_or("");
        Record {
            state: state.clone(),
            data,
            entry: Some(LoggedRequest {
                at: common::rfc3339_ms(common::now_ms()).unwrap_or_default(),
                method: request.method().to_string(),
                path: request.uri().path().to_string(),
                query: redact_query(query),
                status: 0,
                authorization: auth_scheme(request.headers(), query),
            }),
            status: None,
        }
    }

    /// Notes the status of `response` and hands it on.
    fn answer(&mut self, response: Response) -> Response {
        self.status = Some(response.status());
        response
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        // 499: the client closed the connection before the answer (nginx's convention).
        entry.status = self.status.map_or(499, |s| s.as_u16());
        self.state.inner.observe.finish(self.data, entry);
    }
}

/// The layer of every `/{auth}/…` route.
pub(crate) async fn data_route(
    State(state): State<JsonSimState>,
    request: Request,
    next: Next,
) -> Response {
    let mut record = Record::begin(&state, &request, true);
    let sim = &state.inner;
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();

    let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let Some(kind) = AuthKind::parse(segment) else {
        let error = ApiError::not_found(format!(
            "unknown auth kind {segment:?}; the first path segment is one of none, bearer, header, query, basic, oauth2"
        ));
        return record.answer(error.into_response());
    };

    let limit = sim.tunables.rate_per_minute.load(Ordering::Relaxed);
    let peek = |state: &JsonSimState| {
        (limit > 0).then(|| state.inner.rate.check(limit, common::now_ms(), false))
    };
    let stamped = |mut response: Response, rate: Option<RateState>| {
        if let Some(rate) = rate {
            rate.stamp(&mut response);
        }
        response
    };

    if let Err(refusal) = auth::check(&state, kind, request.headers(), &query) {
        sim.observe.unauthorized.fetch_add(1, Ordering::Relaxed);
        return record.answer(stamped(refusal.into_response(), peek(&state)));
    }

    let mut delivery = Delivery::Whole;
    if let Some((fault, status)) = sim.faults.take(&path, &query) {
        sim.observe.faulted.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%fault, "injecting fault");
        match fault.action(status) {
            Action::Replace(response) => {
                return record.answer(stamped(response, peek(&state)));
            }
            Action::Hang => {
                let response = faults::hang(&sim.shutdown).await;
                return record.answer(response);
            }
            Action::SlowBody => delivery = Delivery::Slow,
            Action::Truncated => delivery = Delivery::Truncated,
        }
    }

    let rate = (limit > 0).then(|| sim.rate.check(limit, common::now_ms(), true));
    if let Some(refused) = rate.filter(|r| r.retry_after_s.is_some()) {
        sim.observe.rate_limited.fetch_add(1, Ordering::Relaxed);
        let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited").with(
            "detail",
            format!(
                "more than {limit} requests this minute; retry after {} s",
                refused.retry_after_s.unwrap_or(1)
            ),
        );
        return record.answer(stamped(error.into_response(), Some(refused)));
    }

    let response = next.run(request).await;
    let response = match delivery {
        Delivery::Whole => response,
        Delivery::Slow => faults::slow(response, sim.slow_body, sim.shutdown.clone()).await,
        Delivery::Truncated => faults::truncated(response).await,
    };
    record.answer(stamped(response, rate))
}

/// The layer of `/oauth/token`: counted and logged, never limited or faulted.
pub(crate) async fn token_route(
    State(state): State<JsonSimState>,
    request: Request,
    next: Next,
) -> Response {
    let mut record = Record::begin(&state, &request, false);
    let response = next.run(request).await;
    record.answer(response)
}
