//! Workers: who connected, with what capacity and adapters, and when they were last heard.

use super::{dispatch, leader_write, Db, DbError, WorkerRow};

const UPSERT_WORKER: &str =
    "INSERT INTO workers (id, capacity, adapters, connected, last_seen, connected_at) \
     VALUES ($1, $2, $3, $4, $5, $5) \
     ON CONFLICT (id) DO UPDATE SET capacity = excluded.capacity, adapters = excluded.adapters, \
       connected = excluded.connected, last_seen = excluded.last_seen, \
       connected_at = excluded.connected_at";

const TOUCH_WORKER: &str = "UPDATE workers SET last_seen = $2 WHERE id = $1";

const DISCONNECT_WORKER: &str = "UPDATE workers SET connected = $2, last_seen = $3 WHERE id = $1";

const LIST_WORKERS: &str = "SELECT w.id, w.capacity, w.adapters, w.connected, w.last_seen, \
       w.connected_at, \
       (SELECT COUNT(*) FROM streams s WHERE s.worker_id = w.id) AS streams \
     FROM workers w ORDER BY w.id";

impl Db {
    /// Records a (re)connected worker: connected, `connected_at = last_seen = now_ms`.
    #[tracing::instrument(level = "debug", skip_all, fields(worker_id = id, capacity = capacity))]
    pub async fn upsert_worker(
        &self,
        id: &str,
        capacity: i64,
        adapters: &[String],
        now_ms: i64,
    ) -> Result<(), DbError> {
        let adapters = serde_json::Value::from(adapters.to_vec()).to_string();
        leader_write!(self, |pool| {
            sqlx::query(UPSERT_WORKER)
                .bind(id)
                .bind(capacity)
                .bind(&adapters)
                .bind(true)
                .bind(now_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Notes a sign of life. A worker never upserted is ignored.
    #[tracing::instrument(level = "debug", skip_all, fields(worker_id = id))]
    pub async fn touch_worker(&self, id: &str, now_ms: i64) -> Result<(), DbError> {
        leader_write!(self, |pool| {
            sqlx::query(TOUCH_WORKER)
                .bind(id)
                .bind(now_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Marks a worker disconnected as of `now_ms`. Its assignments stay until
    /// [`Db::release_worker`]: a short reconnect keeps its streams.
    #[tracing::instrument(level = "debug", skip_all, fields(worker_id = id))]
    pub async fn set_worker_disconnected(&self, id: &str, now_ms: i64) -> Result<(), DbError> {
        leader_write!(self, |pool| {
            sqlx::query(DISCONNECT_WORKER)
                .bind(id)
                .bind(false)
                .bind(now_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Every worker ever seen, by id, with how many streams are assigned to it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn list_workers(&self) -> Result<Vec<WorkerRow>, DbError> {
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(LIST_WORKERS).fetch_all(pool).await?
        });
        Ok(rows)
    }
}
