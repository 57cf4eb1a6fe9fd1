//! `/streams`: create, list, read, change, delete, start and stop streams, all through the
//! supervisor.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::docs::{BodyErrors, CommonErrors, NotFoundError};
use super::{bulk, ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::stream::{StreamInput, StreamRow, StreamSpec, StreamUpdate, StreamView};
use crate::supervisor::Created;

/// Parse a path id; a malformed one is the caller's mistake.
pub(super) fn parse_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::bad(format!("{raw:?} is not a {what} id")))
}

/// The stream as the API shows it, given the workers connected now.
fn shown(state: &AppState, row: &StreamRow) -> Response {
    Json(row.view(&state.supervisor.connected_workers())).into_response()
}

/// The answer to start and stop, in the original shape.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Command<'a> {
    success: bool,
    /// e.g. `Started fetching from adapter IQAIR_DAILY.`
    message: String,
    stream: StreamView<'a>,
}

/// Create a stream; it starts at once (unless `"start": false`) on a worker that has its
/// adapter and room. Many streams at once: a JSON array or NDJSON (at most 100,000, one
/// transaction, all or nothing: every bad item is named); they are assigned in the background.
/// A client's `id` (or an `Idempotency-Key`, from which each item's id is derived) makes a
/// retry safe: streams already stored with the same spec are not created again.
#[utoipa::path(
    post, path = "/streams", operation_id = "create_stream", tag = "streams",
    request_body(
        content(
            (StreamInput = "application/json", example = json!(crate::api::docs::example_stream())),
            // NDJSON: one StreamInput object per line (documented as text: OpenAPI has no
            // schema for a stream of objects).
            (Value = "application/x-ndjson"),
        ),
        description = "One stream (a JSON object), or many (a JSON array, or NDJSON: one stream per line)"
    ),
    params(("Idempotency-Key" = Option<String>, Header, description = "Bulk: each item's id is derived from it and its position, so a retry creates nothing twice")),
    responses(
        (status = 201, description = "Created; `secret_key` shows as `***`. Many: `{created, existing, ids}`", body = CreateAnswer),
        (status = 200, description = "A retry: the stream (or every stream) existed already with the same spec", body = CreateAnswer),
        (status = 409, description = "An id names a stream with another spec", body = super::docs::ErrorBody),
        CommonErrors, BodyErrors,
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let input = match bulk::read_streams(&state.bulk, &headers, body).await? {
        bulk::StreamsBody::Many(items) => return bulk::create_many(&state, &headers, items).await,
        bulk::StreamsBody::One(bytes) => parse_one(&bytes)?,
    };
    let start = input.start.unwrap_or(true);
    let id = input.id;
    let spec = StreamSpec::parse(input)?;
    plan_sweep(&state, &spec).await?;
    match state.supervisor.create(id, spec, start).await? {
        Created::New(row) => Ok((StatusCode::CREATED, shown(&state, &row)).into_response()),
        Created::Existing(row) => Ok((StatusCode::OK, shown(&state, &row)).into_response()),
        Created::Conflict(id) => Err(ApiError::Conflict(format!(
            "stream {id} exists with another spec"
        ))),
    }
}

/// One stream's JSON, with the errors `Json` would give.
fn parse_one(bytes: &[u8]) -> Result<StreamInput, ApiError> {
    Ok(bulk::from_json(bytes)?)
}

/// The streams with their status. With `limit`, `after` or a filter (`status`, `adapter`,
/// `worker`, `q`): a page `{items, next}` by id; without any: every stream, oldest first, as a
/// plain array (the original form, heavy at a million streams).
#[utoipa::path(
    get, path = "/streams", operation_id = "list_streams", tag = "streams",
    params(bulk::ListQuery),
    responses(
        (status = 200, description = "Every stream (no paging or filter), or a page", body = StreamList),
        (status = 400, description = "A malformed limit, cursor or status", body = super::docs::ErrorBody),
        (status = 401, description = "No valid token or session", body = super::docs::ErrorBody),
        (status = 503, description = "The database is not reachable", body = super::docs::ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<bulk::ListQuery>,
) -> Result<Response, ApiError> {
    if let (filter, Some((limit, after))) = query.parse()? {
        return bulk::list_page(&state, filter, limit, after).await;
    }
    // Every stream, as one JSON array written a thousand rows at a time: a million streams
    // never sit in memory at once. The first page is read before answering, so a database
    // that is down is still a 503; a failure later cuts the array short (and is logged).
    let connected = state.supervisor.connected_workers();
    let first = state.db.list_streams_after(None, UNPAGED_CHUNK).await?;
    let db = state.db.clone();
    let chunks =
        futures::stream::unfold((Some(first), false, false), move |(rows, started, done)| {
            let db = db.clone();
            let connected = connected.clone();
            async move {
                if done {
                    return None;
                }
                let rows = rows.unwrap_or_default();
                let mut out = Vec::with_capacity(rows.len() * 512 + 2);
                if !started {
                    out.push(b'[');
                }
                for (i, row) in rows.iter().enumerate() {
                    if started || i > 0 {
                        out.push(b',');
                    }
                    if let Err(err) = serde_json::to_writer(&mut out, &row.view(&connected)) {
                        tracing::error!("cannot write a stream of the list: {err}");
                        return None;
                    }
                }
                let last = rows.last().map(|r| (r.created_at, r.id));
                let full = rows.len() as i64 == UNPAGED_CHUNK;
                let next = match (full, last) {
                    (true, Some(after)) => {
                        match db.list_streams_after(Some(after), UNPAGED_CHUNK).await {
                            Ok(next) => Some(next),
                            Err(err) => {
                                tracing::error!("the stream list was cut short: {err}");
                                return Some((
                                    Ok::<_, std::io::Error>(bytes::Bytes::from(out)),
                                    (None, true, true),
                                ));
                            }
                        }
                    }
                    _ => None,
                };
                let done = next.is_none();
                if done {
                    out.push(b']');
                }
                Some((Ok(bytes::Bytes::from(out)), (next, true, done)))
            }
        });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// Rows per read of the unpaged list.
const UNPAGED_CHUNK: i64 = 1_000;

/// `POST /streams`' answer: the stream, or for many `{created, existing, ids}` (documentation
/// only).
#[derive(ToSchema)]
#[allow(dead_code, clippy::large_enum_variant)] // Documentation only: never built.
#[serde(untagged)]
pub(super) enum CreateAnswer<'a> {
    One(StreamView<'a>),
    Many(bulk::BulkCreateAnswer),
}

/// `GET /streams`' answer: every stream, or a page (documentation only).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub(super) enum StreamList<'a> {
    All(Vec<StreamView<'a>>),
    Page(bulk::StreamsPage<'a>),
}

/// One stream.
#[utoipa::path(
    get, path = "/streams/{id}", operation_id = "get_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    responses((status = 200, description = "The stream", body = StreamView), CommonErrors, NotFoundError)
)]
pub(super) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state
        .db
        .get_stream(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {id} not found")))?;
    Ok(shown(&state, &row))
}

/// Change any subset of a stream's fields; the stream is validated as a whole and its worker
/// gets the new config at the end of the current interval. Setting `interval` drops `cron`
/// and the other way round.
#[utoipa::path(
    patch, path = "/streams/{id}", operation_id = "update_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    request_body(content = StreamUpdate, example = json!({"interval": 600000})),
    responses((status = 200, description = "The changed stream", body = StreamView), CommonErrors, NotFoundError, BodyErrors)
)]
#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn update(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(update): ApiJson<StreamUpdate>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "stream")?;
    // A sweep is checked against its key's budget as patched, before anything changes.
    if let Some(current) = state.db.get_stream(id).await? {
        let patched = current.spec.patched(update.clone())?;
        plan_sweep(&state, &patched).await?;
    }
    let row = state.supervisor.update(id, update).await?;
    Ok(shown(&state, &row))
}

/// For a sweep (an IQAir stream naming a country or state without a city): count its cities
/// through IQAir's listings and refuse it when its key's limits cannot carry every city each
/// run. Other streams pass untouched.
pub(super) async fn plan_sweep(state: &AppState, spec: &StreamSpec) -> Result<(), ApiError> {
    if spec.adapter() != catalogue::iqair::NAME {
        return Ok(());
    }
    state
        .sweeps
        .plan(
            spec.endpoint(),
            spec.secret_key(),
            spec.params(),
            spec.schedule(),
            spec.rate_limit(),
        )
        .await?;
    Ok(())
}

/// Stop a stream on its worker and delete it with its references, readings and failed runs.
/// Its raw objects stay in the bucket.
#[utoipa::path(
    delete, path = "/streams/{id}", operation_id = "delete_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    responses((status = 204, description = "Deleted"), CommonErrors, NotFoundError)
)]
#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "stream")?;
    state.supervisor.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run a stream (again); clears a past error. Idempotent.
#[utoipa::path(
    post, path = "/streams/{id}/start", operation_id = "start_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    responses((status = 200, description = "Running or pending", body = Command), CommonErrors, NotFoundError)
)]
#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn start(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.start(id).await?;
    let command = Command {
        success: true,
        message: format!("Started fetching from adapter {}.", row.spec.adapter()),
        stream: row.view(&state.supervisor.connected_workers()),
    };
    Ok(Json(command).into_response())
}

/// Stop a stream on its worker. Idempotent.
#[utoipa::path(
    post, path = "/streams/{id}/stop", operation_id = "stop_stream", tag = "streams",
    params(("id" = Uuid, Path, description = "The stream")),
    responses((status = 200, description = "Stopped", body = Command), CommonErrors, NotFoundError)
)]
#[tracing::instrument(skip_all, fields(stream_id = %id))]
pub(super) async fn stop(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id, "stream")?;
    let row = state.supervisor.stop(id).await?;
    let command = Command {
        success: true,
        message: format!("Stopped fetching from adapter {}.", row.spec.adapter()),
        stream: row.view(&state.supervisor.connected_workers()),
    };
    Ok(Json(command).into_response())
}
