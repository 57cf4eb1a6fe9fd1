//! Streams by the thousand: `POST /streams` with an array or NDJSON (one transaction, all or
//! nothing, each bad item named), `POST /streams/start` and `POST /streams/stop` with ids or a
//! filter, the paged, filtered `GET /streams` and `GET /streams/count`.
//!
//! These bodies are read here, against their own limit ([`BulkLimits`]), not through the
//! 64 KiB limit of the other routes: 100,000 streams are tens of MiB.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::ingest::{content_type, idempotency_key, NDJSON_TYPES};
use super::results::limit;
use super::streams::parse_id;
use super::{ApiError, AppState};
use crate::db::{Selection, StreamFilter};
use crate::stream::{StreamInput, StreamSpec, StreamStatus, StreamView};
use crate::supervisor::{BulkCreated, BulkItem};

/// The limits of the bulk routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkLimits {
    /// The largest body of a single-stream request (the other routes' limit).
    pub max_body_bytes: usize,
    /// The largest body of a bulk request.
    pub max_bulk_bytes: usize,
    /// The most streams (or ids) one bulk request names.
    pub max_streams: usize,
    /// How long a bulk request may take before it is abandoned (408, rolled back).
    pub timeout: std::time::Duration,
}

/// Problems reported per item at most; the count says how many there were in all.
const ITEMS_SHOWN: usize = 1_000;

/// One item of a bulk request that was refused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ItemProblem {
    /// Its position in the request (0-based; the line, 1-based, for NDJSON is `index + 1`).
    pub index: usize,
    /// Its id, when it had or was given one.
    pub id: Option<Uuid>,
    /// Every problem with it.
    pub problems: Vec<String>,
}

/// How the body came: one stream, many, or a format we do not read.
pub(super) enum StreamsBody {
    One(bytes::Bytes),
    Many(Vec<Result<StreamInput, String>>),
}

/// NDJSON, by the media types a push takes too.
fn is_ndjson(headers: &HeaderMap) -> bool {
    content_type(headers).is_some_and(|m| NDJSON_TYPES.contains(&m.as_str()))
}

fn is_json(headers: &HeaderMap) -> bool {
    content_type(headers).is_some_and(|m| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    })
}

/// Reads a whole body of at most `max` bytes; over it is a 413 naming the limit.
pub(super) async fn read_body(
    body: Body,
    max: usize,
    what: &str,
) -> Result<bytes::Bytes, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            ApiError::BadRequest(
                "the request body could not be read".into(),
                json!(err.to_string()),
            )
        })?;
        if bytes.len() + chunk.len() > max {
            return Err(ApiError::PayloadTooLarge(format!(
                "{what} is over {max} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// One JSON value as `T`; a shape error names the field (`interval: -5 is not …`), as axum's
/// `Json` does.
pub(super) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonProblem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let syntax = inner.is_syntax() || inner.is_eof();
        let text = if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        JsonProblem { syntax, text }
    })?;
    de.end().map_err(|e| JsonProblem {
        syntax: true,
        text: e.to_string(),
    })?;
    Ok(value)
}

/// Why a JSON body did not parse: malformed (`syntax`), or of another shape.
#[derive(Debug)]
pub(super) struct JsonProblem {
    pub syntax: bool,
    pub text: String,
}

impl From<JsonProblem> for ApiError {
    fn from(p: JsonProblem) -> Self {
        let message = if p.syntax {
            "malformed JSON"
        } else {
            "JSON does not match the expected shape"
        };
        ApiError::BadRequest(message.into(), json!(p.text))
    }
}

/// Reads `POST /streams`' body: one JSON object (the original form, under the small limit), a
/// JSON array or NDJSON (under the bulk limit). A malformed item is kept as its error, so
/// every bad item can be named.
pub(super) async fn read_streams(
    limits: &BulkLimits,
    headers: &HeaderMap,
    body: Body,
) -> Result<StreamsBody, ApiError> {
    let ndjson = is_ndjson(headers);
    if !ndjson && !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "send the body as JSON (Content-Type: application/json), or many streams as \
             NDJSON (Content-Type: application/x-ndjson)"
                .into(),
        ));
    }
    let bytes = read_body(body, limits.max_bulk_bytes, "the request body").await?;
    if ndjson {
        let mut items = Vec::new();
        for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if items.len() == limits.max_streams {
                return Err(too_many(limits));
            }
            items.push(
                from_json::<StreamInput>(line).map_err(|e| format!("line {}: {}", n + 1, e.text)),
            );
        }
        return Ok(StreamsBody::Many(items));
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'[') {
        if bytes.len() > limits.max_body_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "one stream's body is over {} bytes; many streams go in a JSON array or NDJSON",
                limits.max_body_bytes
            )));
        }
        return Ok(StreamsBody::One(bytes));
    }
    let raw: Vec<&RawValue> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest("malformed JSON".into(), json!(e.to_string())))?;
    if raw.len() > limits.max_streams {
        return Err(too_many(limits));
    }
    Ok(StreamsBody::Many(
        raw.into_iter()
            .map(|item| from_json::<StreamInput>(item.get().as_bytes()).map_err(|e| e.text))
            .collect(),
    ))
}

fn too_many(limits: &BulkLimits) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "at most {} streams per request; send the rest in another",
        limits.max_streams
    ))
}

/// The id of the `index`th stream of a request under `Idempotency-Key: key`: the same on
/// every retry of that request, different for every key and position.
fn derived_id(key: &str, index: usize) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"data-streams bulk create\0")
        .chain_update(key.as_bytes())
        .chain_update(b"\0")
        .chain_update((index as u64).to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // A UUID of version 4 layout whose "random" bits are the digest.
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// What a bulk create answers.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BulkCreateAnswer {
    /// Streams stored now.
    created: usize,
    /// Streams that were there already with the same spec (a retried request).
    existing: usize,
    /// Every stream's id, in the order of the request.
    ids: Vec<Uuid>,
}

/// Validates every item, then stores them all in one transaction (or none). Answers 201 when
/// something was created, 200 when everything existed already (a retry).
pub(super) async fn create_many(
    state: &AppState,
    headers: &HeaderMap,
    items: Vec<Result<StreamInput, String>>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(headers)?;
    let mut problems: Vec<ItemProblem> = Vec::new();
    let mut bulk: Vec<BulkItem> = Vec::with_capacity(items.len());
    let mut seen: HashMap<Uuid, usize> = HashMap::with_capacity(items.len());
    let mut problem_count = 0usize;
    for (index, item) in items.into_iter().enumerate() {
        let mut note = |id: Option<Uuid>, list: Vec<String>| {
            problem_count += 1;
            if problems.len() < ITEMS_SHOWN {
                problems.push(ItemProblem {
                    index,
                    id,
                    problems: list,
                });
            }
        };
        let mut input = match item {
            Ok(input) => input,
            Err(message) => {
                note(None, vec![message]);
                continue;
            }
        };
        let id = input.id.take().unwrap_or_else(|| match &key {
            Some(key) => derived_id(key, index),
            None => Uuid::now_v7(),
        });
        if let Some(first) = seen.insert(id, index) {
            note(Some(id), vec![format!("id {id} repeats item {first}")]);
            continue;
        }
        let start = input.start.unwrap_or(true);
        match StreamSpec::parse(input) {
            Ok(spec) => {
                if let Err(err) = super::streams::plan_sweep(state, &spec).await {
                    note(Some(id), vec![err.to_string()]);
                    continue;
                }
                bulk.push(BulkItem { id, spec, start });
            }
            Err(invalid) => note(Some(id), invalid.0),
        }
    }
    if problem_count > 0 {
        return Err(ApiError::Items {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_streams",
            message: format!(
                "{problem_count} of {} streams are not valid; nothing was created",
                bulk.len() + problem_count
            ),
            items: problems,
        });
    }
    let ids: Vec<Uuid> = bulk.iter().map(|b| b.id).collect();
    match state.supervisor.create_many(&bulk).await? {
        BulkCreated::Conflicts(at) => Err(ApiError::Items {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: format!(
                "{} ids name streams that exist with another spec; nothing was created",
                at.len()
            ),
            items: at
                .into_iter()
                .take(ITEMS_SHOWN)
                .map(|index| ItemProblem {
                    index,
                    id: Some(ids[index]),
                    problems: vec!["a stream with this id exists with another spec".into()],
                })
                .collect(),
        }),
        BulkCreated::Done { created, existing } => {
            let status = if created > 0 || ids.is_empty() {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let answer = BulkCreateAnswer {
                created,
                existing,
                ids,
            };
            Ok((status, Json(answer)).into_response())
        }
    }
}

/// The body of `POST /streams/start` and `POST /streams/stop`: `ids`, or a `filter`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SelectionInput {
    /// The streams, by id (at most 100,000). Ids of no stream are skipped.
    #[serde(default)]
    ids: Option<Vec<Uuid>>,
    /// The streams matching every field given (at least one).
    #[serde(default)]
    filter: Option<FilterInput>,
}

/// A filter over streams; every field given narrows it.
#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct FilterInput {
    /// `running`, `pending`, `stopped` or `failed`, as the streams show it.
    #[param(value_type = Option<StreamStatus>)]
    #[schema(value_type = Option<StreamStatus>)]
    status: Option<String>,
    /// An adapter, e.g. `IQAIR_DAILY`.
    adapter: Option<String>,
    /// A worker's id: the streams assigned to it.
    worker: Option<String>,
    /// A stream id, or text found (case-insensitively) in the endpoint, bucket, params,
    /// adapter or worker id.
    q: Option<String>,
}

impl FilterInput {
    fn parse(self) -> Result<StreamFilter, ApiError> {
        let status = match self.status.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => Some(
                serde_json::from_value::<StreamStatus>(Value::String(raw.to_owned())).map_err(
                    |_| {
                        ApiError::bad(format!(
                            "status {raw:?} is not one of running, pending, stopped, failed"
                        ))
                    },
                )?,
            ),
        };
        let text = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(StreamFilter {
            status,
            adapter: text(self.adapter),
            worker: text(self.worker),
            q: text(self.q),
        })
    }
}

/// What a bulk start or stop answers.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SelectionAnswer {
    success: bool,
    /// e.g. `Started 250 streams.`
    message: String,
    /// Streams whose desired state changed (those already so are not counted).
    changed: usize,
}

/// Reads a selection body (under the bulk limit): ids or a non-empty filter, not both.
pub(super) async fn read_selection(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Selection, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "send the body as JSON with Content-Type: application/json".into(),
        ));
    }
    let limits = state.bulk;
    let bytes = read_body(body, limits.max_bulk_bytes, "the request body").await?;
    let input: SelectionInput = from_json(&bytes)?;
    match (input.ids, input.filter) {
        (Some(ids), None) => {
            if ids.len() > limits.max_streams {
                return Err(too_many(&limits));
            }
            Ok(Selection::Ids(ids))
        }
        (None, Some(filter)) => {
            let filter = filter.parse()?;
            if filter.is_empty() {
                return Err(ApiError::Invalid(
                    "an empty filter would select every stream".into(),
                    vec!["filter: name at least one of status, adapter, worker, q".into()],
                ));
            }
            Ok(Selection::Filter(filter))
        }
        _ => Err(ApiError::Invalid(
            "say which streams".into(),
            vec!["give either ids or filter, not both".into()],
        )),
    }
}

/// Start many streams: by id or by filter. Idempotent (streams already running are left
/// alone); workers get them in the background.
#[utoipa::path(
    post, path = "/streams/start", operation_id = "start_streams", tag = "streams",
    request_body(content = SelectionInput, example = json!({"filter": {"adapter": "IQAIR_DAILY", "status": "stopped"}})),
    responses(
        (status = 200, description = "Changed", body = SelectionAnswer),
        super::docs::CommonErrors, super::docs::BodyErrors,
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn start_many(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let selection = read_selection(&state, &headers, body).await?;
    let changed = state.supervisor.start_selection(&selection).await?;
    Ok(Json(SelectionAnswer {
        success: true,
        message: format!("Started {changed} streams."),
        changed,
    })
    .into_response())
}

/// Stop many streams: by id or by filter. Idempotent.
#[utoipa::path(
    post, path = "/streams/stop", operation_id = "stop_streams", tag = "streams",
    request_body(content = SelectionInput, example = json!({"ids": ["0192f0c4-5f0e-7c1a-9a57-3c1f0e6f2b10"]})),
    responses(
        (status = 200, description = "Changed", body = SelectionAnswer),
        super::docs::CommonErrors, super::docs::BodyErrors,
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn stop_many(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let selection = read_selection(&state, &headers, body).await?;
    let changed = state.supervisor.stop_selection(&selection).await?;
    Ok(Json(SelectionAnswer {
        success: true,
        message: format!("Stopped {changed} streams."),
        changed,
    })
    .into_response())
}

/// The query of `GET /streams`: paging and the filter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Streams per page, 1 to 1000 (default 100). Without `limit`, `after` or a filter the
    /// answer is every stream as a plain array (the original form).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next` of the previous page.
    #[param(value_type = Option<String>, pattern = "^([0-9a-fA-F-]{32,36})?$")]
    after: Option<String>,
    #[param(value_type = Option<StreamStatus>)]
    status: Option<String>,
    adapter: Option<String>,
    worker: Option<String>,
    q: Option<String>,
}

impl ListQuery {
    /// The filter, and the page (`None`: the original unpaged form).
    pub(super) fn parse(self) -> Result<(StreamFilter, Option<PageAsked>), ApiError> {
        let paged = self.limit.is_some()
            || self.after.is_some()
            || [&self.status, &self.adapter, &self.worker, &self.q]
                .iter()
                .any(|v| v.is_some());
        let page = if paged {
            let limit = limit(self.limit.as_deref(), 100, 1000)?;
            let after = match self.after.as_deref() {
                None | Some("") => None,
                Some(raw) => Some(parse_id(raw, "stream")?),
            };
            Some((limit, after))
        } else {
            None
        };
        let filter = FilterInput {
            status: self.status,
            adapter: self.adapter,
            worker: self.worker,
            q: self.q,
        }
        .parse()?;
        Ok((filter, page))
    }
}

/// A page asked for: its size and the cursor (the last id of the page before).
pub(super) type PageAsked = (i64, Option<Uuid>);

/// A page of streams, by id.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StreamsPage<'a> {
    items: Vec<StreamView<'a>>,
    /// Pass as `after` for the next page; `null` on the last.
    next: Option<Uuid>,
}

/// `GET /streams` with paging or a filter.
pub(super) async fn list_page(
    state: &AppState,
    filter: StreamFilter,
    limit: i64,
    after: Option<Uuid>,
) -> Result<Response, ApiError> {
    let connected = state.supervisor.connected_workers();
    let workers: Vec<String> = connected.iter().cloned().collect();
    let mut rows = state
        .db
        .list_streams_page(&filter, &workers, after, limit + 1)
        .await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let items = rows.iter().map(|r| r.view(&connected)).collect();
    Ok(Json(StreamsPage { items, next }).into_response())
}

/// How many streams there are, by status.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StreamCounts {
    total: i64,
    running: i64,
    pending: i64,
    stopped: i64,
    failed: i64,
}

/// How many streams match the filter, by status (what the console's tabs show).
#[utoipa::path(
    get, path = "/streams/count", operation_id = "count_streams", tag = "streams",
    params(FilterInput),
    responses(
        (status = 200, description = "Counts by status", body = StreamCounts),
        super::docs::CommonErrors,
    )
)]
pub(super) async fn count(
    axum::extract::State(state): axum::extract::State<AppState>,
    super::ApiQuery(filter): super::ApiQuery<FilterInput>,
) -> Result<Response, ApiError> {
    let filter = filter.parse()?;
    let workers: Vec<String> = state.supervisor.connected_workers().into_iter().collect();
    let counts = state.db.count_streams(&filter, &workers).await?;
    let of = |status| counts.get(&status).copied().unwrap_or(0);
    let answer = StreamCounts {
        total: counts.values().sum(),
        running: of(StreamStatus::Running),
        pending: of(StreamStatus::Pending),
        stopped: of(StreamStatus::Stopped),
        failed: of(StreamStatus::Failed),
    };
    Ok(Json(answer).into_response())
}
