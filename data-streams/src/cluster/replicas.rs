//! Each supervisor process's heartbeat row, and the cluster as `GET /cluster` shows it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{lease, Identity};
use crate::stream::Rfc3339;

/// How long the row of a process that stopped heartbeating is kept before a heartbeat of
/// another deletes it.
const FORGET_AFTER: &str = "1 hour";

/// Records that `me` is alive now (the database's clock), and forgets processes silent for an
/// hour: a row per process start would otherwise pile up.
pub(super) async fn heartbeat(pool: &PgPool, me: &Identity) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "WITH forgotten AS (
             DELETE FROM replicas WHERE last_seen < now() - interval '{FORGET_AFTER}')
         INSERT INTO replicas (id, http_addr, worker_addr, last_seen)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (id) DO UPDATE
            SET http_addr = excluded.http_addr, worker_addr = excluded.worker_addr,
                last_seen = excluded.last_seen"
    ))
    .bind(me.id)
    .bind(&me.http_addr)
    .bind(&me.worker_addr)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes `me`'s row: a process that stops cleanly leaves the list at once.
pub(super) async fn leave(pool: &PgPool, me: &Identity) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM replicas WHERE id = $1")
        .bind(me.id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The leader as `GET /cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LeaderView {
    /// The holding process's id (fresh at every process start).
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub http_addr: String,
    pub worker_addr: String,
    /// The fencing token of its term: one more at every change of leader (0 on SQLite, which
    /// has no lease).
    pub epoch: i64,
    /// When its term began.
    #[schema(value_type = String, format = DateTime)]
    pub since: Rfc3339,
}

/// A supervisor process as `GET /cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReplicaView {
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    pub http_addr: String,
    /// Its last heartbeat, by the database's clock.
    #[schema(value_type = String, format = DateTime)]
    pub last_seen: Rfc3339,
}

/// Who leads, and which supervisor processes are there (the leader among them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ClusterView {
    /// `null` while no process holds an unexpired lease (between a leader's end and the next
    /// one's start).
    pub leader: Option<LeaderView>,
    /// Every process heard from within one lease TTL, by id.
    pub replicas: Vec<ReplicaView>,
}

impl ClusterView {
    /// SQLite: this process alone, the leader with epoch 0 since it started.
    pub(super) fn single(me: &Identity, now_ms: i64) -> ClusterView {
        ClusterView {
            leader: Some(LeaderView {
                id: me.id,
                http_addr: me.http_addr.clone(),
                worker_addr: me.worker_addr.clone(),
                epoch: 0,
                since: Rfc3339(me.started_ms),
            }),
            replicas: vec![ReplicaView {
                id: me.id,
                http_addr: me.http_addr.clone(),
                last_seen: Rfc3339(now_ms),
            }],
        }
    }
}

/// The lease and the replicas seen within `seen_within`, read in one snapshot.
pub(super) async fn read_view(
    pool: &PgPool,
    seen_within: Duration,
) -> Result<ClusterView, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let leader = lease::current(&mut *tx).await?.map(|row| LeaderView {
        id: row.holder,
        http_addr: row.http_addr,
        worker_addr: row.worker_addr,
        epoch: row.epoch,
        since: Rfc3339(row.since.timestamp_millis()),
    });
    let rows: Vec<(Uuid, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, http_addr, last_seen FROM replicas
          WHERE last_seen > now() - $1 * interval '1 millisecond' ORDER BY id",
    )
    .bind(seen_within.as_secs_f64() * 1000.0)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ClusterView {
        leader,
        replicas: rows
            .into_iter()
            .map(|(id, http_addr, last_seen)| ReplicaView {
                id,
                http_addr,
                last_seen: Rfc3339(last_seen.timestamp_millis()),
            })
            .collect(),
    })
}
