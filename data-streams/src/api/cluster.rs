//! `GET /cluster`: which supervisor process leads, and which are there.

use axum::extract::State;
use axum::Json;

use super::docs::ErrorBody;
use super::{ApiError, AppState};
use crate::cluster::ClusterView;

/// Who leads, and which supervisor processes are there.
///
/// On PostgreSQL, from the leader lease and the processes' heartbeats: `leader` is the process
/// holding an unexpired lease (`null` between one leader's end and the next one's start), its
/// `epoch` one more at every change of leader; `replicas` lists every process heard from within
/// one lease TTL (`LEADER_TTL_MS`), the leader among them. On SQLite, which takes one
/// supervisor per database file, this process alone: the leader with epoch 0, `since` its
/// start.
#[utoipa::path(
    get, path = "/cluster", operation_id = "get_cluster", tag = "system",
    responses(
        (status = 200, description = "The leader and the replicas", body = ClusterView,
         example = json!({
             "leader": {"id": "0192f1e0-7c4a-7d2e-9b1a-3f5c2d4e6a70", "http_addr": "10.0.0.5:8080",
                        "worker_addr": "10.0.0.5:7070", "epoch": 7,
                        "since": "2026-11-28T09:14:03.512Z"},
             "replicas": [
                 {"id": "0192f1e0-7c4a-7d2e-9b1a-3f5c2d4e6a70", "http_addr": "10.0.0.5:8080",
                  "last_seen": "2026-11-28T10:02:41.007Z"},
                 {"id": "0192f1e3-1b2c-7a9d-8e4f-5a6b7c8d9e0f", "http_addr": "10.0.0.6:8080",
                  "last_seen": "2026-11-28T10:02:39.880Z"}
             ]
         })),
        (status = 401, description = "No valid token or session", body = ErrorBody),
        (status = 503, description = "The database is not reachable", body = ErrorBody),
    )
)]
#[tracing::instrument(level = "debug", skip_all)]
pub(super) async fn get(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    Ok(Json(state.cluster.view().await?))
}

/// The routes whose work only the leader does: the reconciler's last pass and its audit, and
/// table compaction. A follower forwards them.
const LEADER_ROUTES: &[&str] = &["/reconciler", "/reconciler/audit", "/tables/compact"];

/// Marks a request a follower forwarded: the receiver never forwards it again.
const FORWARDED: &str = "x-data-streams-forwarded";

/// The largest body forwarded (these routes take a few bytes of JSON).
const FORWARD_MAX_BODY: usize = 64 * 1024;

/// Request headers that belong to one connection, not to the request: never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// How long a forwarded request may take: the API's own request timeout bounds it anyway.
const FORWARD_TIMEOUT: std::time::Duration = super::REQUEST_TIMEOUT;

/// Middleware: on a replica that does not lead, a request to one of [`LEADER_ROUTES`] goes to
/// the leader (its answer is passed back as it is); 503 with `Retry-After` while no replica
/// leads. Everything else is served here.
pub(super) async fn to_leader(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !LEADER_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    if state.supervisor.is_leader() {
        // The leader's own work: its writes are fenced by its term.
        if let Some(answer) = state.supervisor.as_leader(next.run(request)).await {
            return answer;
        }
        return ApiError::Unavailable(
            "this replica stopped leading while it served the request; try again".into(),
        )
        .into_response();
    }
    if request.headers().contains_key(FORWARDED) {
        return ApiError::Unavailable(
            "leadership moved while this request was forwarded; try again".into(),
        )
        .into_response();
    }
    let leader = match state.cluster.view().await {
        Ok(view) => view.leader,
        Err(err) => return ApiError::from(err).into_response(),
    };
    match leader {
        Some(leader) if leader.id != state.cluster.identity().id => {
            forward(&leader.http_addr, request, state.cluster.identity().id)
                .await
                .unwrap_or_else(|err| err.into_response())
        }
        _ => ApiError::Unavailable(
            "no replica leads right now (a failover is under way); try again in a few seconds"
                .into(),
        )
        .into_response(),
    }
}

/// Sends `request` to the leader at `http_addr` and answers what it answered.
async fn forward(
    http_addr: &str,
    request: axum::extract::Request,
    me: uuid::Uuid,
) -> Result<axum::response::Response, ApiError> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client")
    });
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, FORWARD_MAX_BODY)
        .await
        .map_err(|err| {
            ApiError::BadRequest(
                format!("cannot read the request body: {err}"),
                serde_json::Value::Null,
            )
        })?;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let mut headers = parts.headers.clone();
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    headers.insert(
        FORWARDED,
        axum::http::HeaderValue::from_str(&me.to_string()).expect("a UUID is a header value"),
    );
    let answer = client
        .request(parts.method, format!("http://{http_addr}{path}"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|err| {
            ApiError::Unavailable(format!(
                "the leader at {http_addr} did not answer ({err}); try again"
            ))
        })?;
    let mut response = axum::response::Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != axum::http::header::TRANSFER_ENCODING && name != axum::http::header::CONNECTION {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.map_err(|err| {
        ApiError::Unavailable(format!("the leader's answer broke off ({err}); try again"))
    })?;
    response
        .body(axum::body::Body::from(bytes))
        .map_err(ApiError::internal)
}
