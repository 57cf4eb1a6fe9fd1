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
