//! Push streams over HTTP: `POST /streams/{id}/ingest` (records in), and the stream's ingest
//! tokens (`POST`/`GET /streams/{id}/tokens`, `DELETE /streams/{id}/tokens/{token_id}`).
//!
//! The ingest route is served outside the API's body limit and request timeout (a push may be
//! a never-ending NDJSON body) and checks its own credentials: the API token, or an ingest
//! token of this very stream. Ingest tokens open nothing else.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::docs::{CommonErrors, NotFoundError};
use super::streams::parse_id;
use super::{ApiError, ApiPath, AppState};
use crate::db::TokenRow;
use crate::ingest::{IngestError, Progress, Resume};
use crate::stream::{Rfc3339, StreamRow, StreamState};

/// The header that makes a push idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer replayed for an idempotent retry.
const REPLAYED: &str = "idempotent-replayed";
/// The prefix of every ingest token (so a leaked one is recognisable).
const TOKEN_PREFIX: &str = "dsi_";

/// What a push committed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Accepted {
    /// Records committed (blank lines are not records).
    accepted: u64,
    /// The last line committed, from 1: every line up to it is stored and referenced.
    acked_through_line: u64,
    /// The objects (results) the records went into, in order.
    result_ids: Vec<Uuid>,
    /// Readings that were new (streams with `"records": "iqair"`).
    readings: u64,
}

impl From<&Progress> for Accepted {
    fn from(p: &Progress) -> Self {
        Accepted {
            accepted: p.accepted,
            acked_through_line: p.acked_through_line,
            result_ids: p.result_ids.clone(),
            readings: p.readings,
        }
    }
}

/// Push records to a `PUSH` stream.
///
/// The body is `application/x-ndjson` (one JSON record per line; any length, chunked, possibly
/// never-ending), or `application/json` (an object: one record; an array: one record per
/// element; at most `INGEST_MAX_JSON_BYTES`). Records are batched into raw objects by the
/// stream's `batch` policy; each object is stored and its reference committed before it is
/// acknowledged.
///
/// - Without `Accept: application/x-ndjson`: one answer at the end, `202` with what was
///   committed.
/// - With it: `202` at once, then one NDJSON line per committed object
///   (`{"acked_through_line", "accepted", "result_id"}`) and a last line `{"done": true, …}` or
///   `{"error": …, …}`: what a client may forget as it goes.
///
/// A malformed line (`400`, `malformed_line`) or one longer than `INGEST_MAX_LINE_BYTES`
/// (`400`, `line_too_long`) ends the request: the lines before it are committed (their ids are
/// in the answer), nothing after it is read; the error names the line and its byte offset. A
/// JSON body is checked whole first: all or nothing.
///
/// `Idempotency-Key`: a retry with the same key resumes after the lines its earlier attempts
/// committed, and a finished request's answer is returned again (`Idempotent-Replayed: true`).
#[utoipa::path(
    post, path = "/streams/{id}/ingest", operation_id = "ingest", tag = "push",
    params(
        ("id" = Uuid, Path, description = "A PUSH stream"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry resume (or replay) instead of storing twice; 1 to 255 visible ASCII characters"),
    ),
    request_body(
        description = "One JSON record per line (application/x-ndjson), or a record or an array of records (application/json)",
        content((Value = "application/x-ndjson"), (Value = "application/json")),
    ),
    responses(
        (status = 202, description = "Committed (each object stored and referenced)", body = Accepted),
        (status = 409, description = "Not a PUSH stream, the stream is not running, or a request with this Idempotency-Key is running", body = super::docs::ErrorBody),
        (status = 413, description = "A JSON body over INGEST_MAX_JSON_BYTES", body = super::docs::ErrorBody),
        (status = 415, description = "Neither NDJSON nor JSON", body = super::docs::ErrorBody),
        (status = 429, description = "The stream's requests hold as much as they may; Retry-After", body = super::docs::ErrorBody),
        CommonErrors, NotFoundError
    )
)]
pub(super) async fn ingest(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match start(&state, &id, &headers).await {
        Ok(Start::Replay(response)) => response,
        Ok(Start::Run(run)) => run.go(state, &headers, body).await,
        Err(err) => err.into_response(),
    }
}

enum Start {
    /// A finished idempotent request: its first answer.
    Replay(Response),
    Run(Box<Push>),
}

/// A push that may go ahead: its stream, its reservation, where it resumes.
struct Push {
    stream: StreamRow,
    ndjson: bool,
    resume: Resume,
    _reservation: crate::ingest::Reservation,
    _idempotent: Option<IdempotentGuard>,
}

/// Ends the "running" mark of an idempotent request however the request ends.
struct IdempotentGuard {
    ingest: crate::ingest::Ingest,
    stream_id: Uuid,
    key: String,
}

impl Drop for IdempotentGuard {
    fn drop(&mut self) {
        self.ingest.end_idempotent(self.stream_id, &self.key);
    }
}

async fn start(state: &AppState, id: &str, headers: &HeaderMap) -> Result<Start, ApiError> {
    let stream_id = parse_id(id, "stream")?;
    authorize(state, stream_id, headers).await?;
    let stream = push_stream(state, id).await?;
    if stream.state != StreamState::Running {
        return Err(ApiError::Conflict(format!(
            "stream {stream_id} is {}: POST /streams/{stream_id}/start to accept pushes again",
            stream.state.as_str()
        )));
    }
    let ndjson = match content_type(headers) {
        Some(ct) if NDJSON_TYPES.contains(&ct.as_str()) => true,
        Some(ct) if ct == "application/json" => false,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "push records as application/x-ndjson (one JSON record per line) or \
                 application/json (a record or an array of records); got {}",
                other.as_deref().unwrap_or("no Content-Type")
            )))
        }
    };
    let key = idempotency_key(headers)?;
    let mut resume = Resume {
        idempotency_key: key.clone(),
        ..Resume::default()
    };
    let mut guard = None;
    if let Some(key) = &key {
        if let Some(earlier) = state.db.ingest_request(stream_id, key).await? {
            if let Some((status, body)) = earlier.answer {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
                let mut response =
                    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
                response
                    .headers_mut()
                    .insert(REPLAYED, HeaderValue::from_static("true"));
                return Ok(Start::Replay(response));
            }
            resume.progress = Progress {
                accepted: u64::try_from(earlier.accepted).unwrap_or(0),
                acked_through_line: u64::try_from(earlier.lines).unwrap_or(0),
                result_ids: earlier.result_ids,
                readings: 0,
            };
        }
        if !state.ingest.begin_idempotent(stream_id, key) {
            return Err(busy(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                format!("a push with Idempotency-Key {key:?} is still running on this stream"),
            ));
        }
        guard = Some(IdempotentGuard {
            ingest: state.ingest.clone(),
            stream_id,
            key: key.clone(),
        });
    }
    let reservation = state.ingest.reserve(&stream).map_err(|err| match err {
        IngestError::StreamBusy(_) => {
            busy(StatusCode::TOO_MANY_REQUESTS, err.code(), err.to_string())
        }
        other => busy(
            StatusCode::SERVICE_UNAVAILABLE,
            other.code(),
            other.to_string(),
        ),
    })?;
    Ok(Start::Run(Box::new(Push {
        stream,
        ndjson,
        resume,
        _reservation: reservation,
        _idempotent: guard,
    })))
}

/// Content types read as NDJSON.
pub(super) const NDJSON_TYPES: [&str; 3] = [
    "application/x-ndjson",
    "application/jsonl",
    "application/json-lines",
];

pub(super) fn content_type(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        raw.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::bad(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// An answer asking the client to come back: `Retry-After: 1`.
fn busy(status: StatusCode, code: &str, message: String) -> ApiError {
    ApiError::Busy {
        status,
        code: code.to_owned(),
        message,
        retry_after_s: 1,
    }
}

/// The API token, or an ingest token of this stream (not revoked).
async fn authorize(state: &AppState, stream_id: Uuid, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.auth.is_open() {
        return Ok(());
    }
    let Some(token) = super::auth::bearer(headers) else {
        return Err(ApiError::Unauthorized(
            "push with Authorization: Bearer <an ingest token of this stream, or the API token>"
                .into(),
        ));
    };
    if state.auth.is_api_token(token) {
        return Ok(());
    }
    match state.db.ingest_token_stream(&token_hash(token)).await? {
        Some(owner) if owner == stream_id => Ok(()),
        Some(_) => Err(ApiError::Forbidden(
            "this ingest token belongs to another stream".into(),
        )),
        None => Err(ApiError::Unauthorized(
            "the bearer token is not valid (revoked, or never issued)".into(),
        )),
    }
}

/// How a token is stored: its SHA-256, hex.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Push {
    async fn go(self, state: AppState, headers: &HeaderMap, body: Body) -> Response {
        let streamed = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/x-ndjson"));
        if streamed {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<String, std::io::Error>>();
            tokio::spawn(async move {
                let mut last = 0usize;
                let mut acked = |p: &Progress| {
                    for id in &p.result_ids[last.min(p.result_ids.len())..] {
                        let line = json!({"acked_through_line": p.acked_through_line,
                                          "accepted": p.accepted, "result_id": id});
                        let _ = tx.send(Ok(format!("{line}\n")));
                    }
                    last = p.result_ids.len();
                };
                let (progress, error) = self.run(&state, body, &mut acked).await;
                let end = match &error {
                    None => json!({"done": true, "accepted": progress.accepted,
                                   "acked_through_line": progress.acked_through_line,
                                   "result_ids": progress.result_ids, "readings": progress.readings}),
                    Some(err) => {
                        let mut line = error_detail(err, &progress);
                        line["error"] = json!(err.to_string());
                        line
                    }
                };
                self.remember(&state, &progress, error.as_ref()).await;
                let _ = tx.send(Ok(format!("{end}\n")));
            });
            let stream = tokio_stream_of(rx);
            return (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                Body::from_stream(stream),
            )
                .into_response();
        }
        let (progress, error) = self.run(&state, body, &mut |_| {}).await;
        self.remember(&state, &progress, error.as_ref()).await;
        match error {
            None => (StatusCode::ACCEPTED, Json(Accepted::from(&progress))).into_response(),
            Some(err) => error_response(&err, &progress),
        }
    }

    async fn run(
        &self,
        state: &AppState,
        body: Body,
        acked: &mut (dyn FnMut(&Progress) + Send),
    ) -> (Progress, Option<IngestError>) {
        if self.ndjson {
            state
                .ingest
                .ndjson(
                    &self.stream,
                    body.into_data_stream(),
                    self.resume.clone(),
                    acked,
                )
                .await
        } else {
            match read_json_body(body, state.ingest.limits().max_json_body_bytes).await {
                Ok(bytes) => {
                    state
                        .ingest
                        .json(&self.stream, &bytes, self.resume.clone(), acked)
                        .await
                }
                Err(error) => (self.resume.progress.clone(), Some(error)),
            }
        }
    }

    /// Stores a finished idempotent request's answer, so that a retry gets it again. A request
    /// cut short by the server's side (store, database) or the client's connection is not
    /// finished: its retry resumes after what it committed.
    async fn remember(&self, state: &AppState, progress: &Progress, error: Option<&IngestError>) {
        let Some(key) = &self.resume.idempotency_key else {
            return;
        };
        let (status, body) = match error {
            None => (
                StatusCode::ACCEPTED,
                serde_json::to_string(&Accepted::from(progress)).unwrap_or_default(),
            ),
            Some(
                err @ (IngestError::Malformed { .. }
                | IngestError::LineTooLong { .. }
                | IngestError::NotRecords(_)
                | IngestError::JsonTooLarge(_)),
            ) => {
                let response = error_body(err, progress);
                (status_of(err), response.to_string())
            }
            Some(_) => return,
        };
        let lines = i64::try_from(progress.acked_through_line).unwrap_or(i64::MAX);
        let accepted = i64::try_from(progress.accepted).unwrap_or(i64::MAX);
        if let Err(err) = state
            .db
            .finish_ingest_request(
                self.stream.id,
                key,
                (lines, accepted, &progress.result_ids),
                status.as_u16(),
                &body,
            )
            .await
        {
            tracing::warn!(stream_id = %self.stream.id, "cannot record the answer of idempotent push {key:?}: {err}");
        }
    }
}

/// A JSON body, read whole up to `limit` bytes.
async fn read_json_body(body: Body, limit: usize) -> Result<bytes::Bytes, IngestError> {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| IngestError::Body(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(IngestError::JsonTooLarge(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Result<String, std::io::Error>>,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn status_of(err: &IngestError) -> StatusCode {
    match err {
        IngestError::Malformed { .. }
        | IngestError::LineTooLong { .. }
        | IngestError::NotRecords(_)
        | IngestError::Body(_) => StatusCode::BAD_REQUEST,
        IngestError::JsonTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        IngestError::StreamGone => StatusCode::NOT_FOUND,
        IngestError::StreamBusy(_) => StatusCode::TOO_MANY_REQUESTS,
        IngestError::Store(_) | IngestError::Database(_) | IngestError::ServerBusy => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The `detail` of an error answer: the code, where it happened, and what was committed.
fn error_detail(err: &IngestError, progress: &Progress) -> Value {
    let mut detail = json!({
        "code": err.code(),
        "message": err.to_string(),
        "accepted": progress.accepted,
        "acked_through_line": progress.acked_through_line,
        "result_ids": progress.result_ids,
    });
    if let Some((line, offset)) = err.at() {
        detail["line"] = json!(line);
        detail["offset"] = json!(offset);
    }
    detail
}

fn error_body(err: &IngestError, progress: &Progress) -> Value {
    json!({"error": err.to_string(), "detail": error_detail(err, progress)})
}

fn error_response(err: &IngestError, progress: &Progress) -> Response {
    let status = status_of(err);
    let mut response = (status, Json(error_body(err, progress))).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if matches!(err, IngestError::Store(_) | IngestError::Database(_)) {
        tracing::warn!("push ended early: {err}");
    }
    response
}

/// `POST /streams/{id}/tokens`'s body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenInput {
    /// What the token is for (a device, a service), 1 to 100 characters.
    #[serde(default)]
    name: Option<String>,
}

/// An ingest token as listed: never the token itself.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TokenView {
    id: Uuid,
    stream_id: Uuid,
    name: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    created_at: Rfc3339,
    #[schema(value_type = Option<String>, format = DateTime)]
    revoked_at: Option<Rfc3339>,
}

impl From<TokenRow> for TokenView {
    fn from(row: TokenRow) -> Self {
        TokenView {
            id: row.id,
            stream_id: row.stream_id,
            name: row.name,
            created_at: Rfc3339(row.created_at),
            revoked_at: row.revoked_at.map(Rfc3339),
        }
    }
}

/// A new token: the only time it is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct NewToken {
    #[serde(flatten)]
    view: TokenView,
    /// Send as `Authorization: Bearer <token>` to this stream's ingest route; shown only now.
    token: String,
}

/// The PUSH stream `id`: 404 when there is none, 409 when it is another kind.
async fn push_stream(state: &AppState, id: &str) -> Result<StreamRow, ApiError> {
    let stream_id = parse_id(id, "stream")?;
    let stream = state
        .db
        .get_stream(stream_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no stream {stream_id}")))?;
    if !stream.spec.is_push() {
        return Err(ApiError::Conflict(format!(
            "stream {stream_id} is an {} stream: only PUSH streams take pushed records and \
             ingest tokens",
            stream.spec.adapter()
        )));
    }
    Ok(stream)
}

/// Issue an ingest token for a PUSH stream. The token is in this answer only; it is stored
/// hashed and opens this stream's ingest route, nothing else.
#[utoipa::path(
    post, path = "/streams/{id}/tokens", operation_id = "create_ingest_token", tag = "push",
    params(("id" = Uuid, Path, description = "A PUSH stream")),
    request_body(content = Option<TokenInput>, content_type = "application/json"),
    responses(
        (status = 201, description = "The token, shown once", body = NewToken),
        (status = 409, description = "Not a PUSH stream", body = super::docs::ErrorBody),
        CommonErrors, NotFoundError
    )
)]
pub(super) async fn create_token(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let stream = push_stream(&state, &id).await?;
    let input: TokenInput = if body.iter().all(u8::is_ascii_whitespace) {
        TokenInput::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad(format!(
                "the body must be {{\"name\": \"…\"}} or empty: {e}"
            ))
        })?
    };
    let name = input.name;
    if let Some(name) = &name {
        if !(1..=100).contains(&name.chars().count()) || name.chars().any(char::is_control) {
            return Err(ApiError::bad("name must be 1 to 100 printable characters"));
        }
    }
    let secret: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    let row = TokenRow {
        id: Uuid::now_v7(),
        stream_id: stream.id,
        name,
        created_at: common::now_ms(),
        revoked_at: None,
    };
    state
        .db
        .insert_ingest_token(&row, &token_hash(&token))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            view: row.into(),
            token,
        }),
    )
        .into_response())
}

/// A PUSH stream's ingest tokens, revoked ones included (never the tokens themselves).
#[utoipa::path(
    get, path = "/streams/{id}/tokens", operation_id = "list_ingest_tokens", tag = "push",
    params(("id" = Uuid, Path, description = "A PUSH stream")),
    responses(
        (status = 200, description = "Tokens, oldest first", body = Vec<TokenView>),
        (status = 409, description = "Not a PUSH stream", body = super::docs::ErrorBody),
        CommonErrors, NotFoundError
    )
)]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let stream = push_stream(&state, &id).await?;
    let rows = state.db.list_ingest_tokens(stream.id).await?;
    Ok(Json(rows.into_iter().map(TokenView::from).collect()))
}

/// Revoke an ingest token: the next push with it is refused.
#[utoipa::path(
    delete, path = "/streams/{id}/tokens/{token_id}", operation_id = "revoke_ingest_token", tag = "push",
    params(
        ("id" = Uuid, Path, description = "A PUSH stream"),
        ("token_id" = Uuid, Path, description = "The token's id"),
    ),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 409, description = "Not a PUSH stream", body = super::docs::ErrorBody),
        CommonErrors, NotFoundError
    )
)]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    ApiPath((id, token_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let stream = push_stream(&state, &id).await?;
    let token_id = parse_id(&token_id, "token")?;
    if state
        .db
        .revoke_ingest_token(stream.id, token_id, common::now_ms())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "stream {} has no token {token_id}",
            stream.id
        )))
    }
}

/// `POST /ingest/void` (only with `INGEST_BENCH_VOID_ROUTE=true`): reads the body and discards
/// it, counting bytes and lines, behind the same credentials as a push. The ingest benchmark's
/// ceiling: the same server reading the same body and doing nothing with it.
pub(super) async fn void(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    use futures::StreamExt as _;
    if !state.auth.is_open()
        && !super::auth::bearer(&headers).is_some_and(|t| state.auth.is_api_token(t))
    {
        return ApiError::Unauthorized("the void route takes the API token".into()).into_response();
    }
    let mut stream = body.into_data_stream();
    let (mut bytes, mut lines) = (0u64, 0u64);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                lines += memchr::memchr_iter(b'\n', &chunk).count() as u64;
            }
            Err(err) => {
                return ApiError::bad(format!("the body could not be read: {err}")).into_response()
            }
        }
    }
    Json(json!({"bytes": bytes, "lines": lines})).into_response()
}
