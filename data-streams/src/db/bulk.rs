//! Streams by the thousand: bulk create in one transaction, set-based assignment, changes of
//! desired state for a selection (ids or a filter), and the paged, filtered list with its
//! counts. Every write here is one statement per chunk of streams, never one per stream.

use std::collections::{HashMap, HashSet};

use sqlx::{Database, QueryBuilder};
use uuid::Uuid;

use super::streams::{select_streams, SpecColumns, STREAM_COLUMNS};
use super::{dispatch, Db, DbError, Tx, CHUNK_ROWS};
use crate::stream::{StreamRow, StreamSpec, StreamState, StreamStatus};

/// Rows per multi-row statement of the narrow writes here (two or three binds a row).
const WIDE_CHUNK: usize = 5_000;

/// A stream to create.
pub struct NewStream<'a> {
    pub id: Uuid,
    pub spec: &'a StreamSpec,
    pub state: StreamState,
    /// The worker it is placed on as it is stored (generation 1), if any: a running stream
    /// placed in the same transaction needs no assignment write of its own.
    pub worker: Option<&'a str>,
}

/// What a bulk insert did.
#[derive(Debug)]
pub enum BulkInsert {
    /// Committed: the ids created now, and the streams that were there already with the same
    /// spec (a retried request), by id.
    Done {
        created: HashSet<Uuid>,
        existing: HashMap<Uuid, StreamRow>,
    },
    /// Nothing written: these positions name an id that exists with another spec.
    Conflicts(Vec<usize>),
}

/// Which streams a list, a count or a bulk start/stop covers. Every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamFilter {
    pub status: Option<StreamStatus>,
    pub adapter: Option<String>,
    pub worker: Option<String>,
    /// An id (exact), or text found (case-insensitively) in the endpoint, bucket, params,
    /// adapter or worker id.
    pub q: Option<String>,
}

impl StreamFilter {
    pub fn is_empty(&self) -> bool {
        *self == StreamFilter::default()
    }
}

/// A selection of streams for a bulk command.
#[derive(Debug, Clone)]
pub enum Selection {
    Ids(Vec<Uuid>),
    Filter(StreamFilter),
}

/// A stream whose desired state a bulk command changed, as it was assigned before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub id: Uuid,
    pub worker_id: Option<String>,
    pub generation: i64,
}

/// `%text%` for LIKE, lower-cased, with LIKE's wildcards in `text` taken literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// `worker_id IN (<connected>)`, or a false condition when none is connected.
fn push_connected<'a, DB: Database>(query: &mut QueryBuilder<'a, DB>, connected: &'a [String])
where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    if connected.is_empty() {
        query.push("1 = 0");
        return;
    }
    query.push("worker_id IN (");
    let mut list = query.separated(", ");
    for worker in connected {
        list.push_bind(worker.as_str());
    }
    query.push(")");
}

/// Appends ` AND <condition>` for each field of `filter`. `connected` (the connected workers)
/// tells `running` from `pending`, as the API shows them.
fn push_filter<'a, DB: Database>(
    query: &mut QueryBuilder<'a, DB>,
    filter: &'a StreamFilter,
    connected: &'a [String],
) where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Uuid: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match filter.status {
        None => {}
        Some(StreamStatus::Stopped) => {
            query.push(" AND state = 'stopped'");
        }
        Some(StreamStatus::Failed) => {
            query.push(" AND state = 'failed'");
        }
        Some(StreamStatus::Running) => {
            query.push(" AND state = 'running' AND (adapter = 'PUSH' OR ");
            push_connected(query, connected);
            query.push(")");
        }
        Some(StreamStatus::Pending) => {
            query.push(
                " AND state = 'running' AND adapter <> 'PUSH' AND (worker_id IS NULL OR NOT (",
            );
            push_connected(query, connected);
            query.push("))");
        }
    }
    if let Some(adapter) = &filter.adapter {
        query.push(" AND adapter = ").push_bind(adapter.as_str());
    }
    if let Some(worker) = &filter.worker {
        query.push(" AND worker_id = ").push_bind(worker.as_str());
    }
    if let Some(q) = filter.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        if let Ok(id) = Uuid::parse_str(q) {
            query.push(" AND id = ").push_bind(id);
        } else {
            let pattern = like_pattern(q);
            query.push(" AND (");
            let columns = ["endpoint", "bucket_name", "params", "adapter", "worker_id"];
            for (i, column) in columns.iter().enumerate() {
                if i > 0 {
                    query.push(" OR ");
                }
                query
                    .push(format!("LOWER({column}) LIKE "))
                    .push_bind(pattern.clone())
                    .push(" ESCAPE '\\'");
            }
            query.push(")");
        }
    }
}

impl Db {
    /// Stores many streams in ONE transaction. An id already stored with the same spec is a
    /// replay and is left alone (reported in `existing`); an id stored with another spec makes
    /// the whole insert a [`BulkInsert::Conflicts`] and nothing is written.
    #[tracing::instrument(level = "debug", skip_all, fields(streams = streams.len()))]
    pub async fn insert_streams(
        &self,
        streams: &[NewStream<'_>],
        now_ms: i64,
    ) -> Result<BulkInsert, DbError> {
        let mut tx = self.begin_write().await?;
        let ids: Vec<Uuid> = streams.iter().map(|s| s.id).collect();
        let existing = tx.streams_by_id(&ids).await?;
        let conflicts: Vec<usize> = streams
            .iter()
            .enumerate()
            .filter(|(_, s)| existing.get(&s.id).is_some_and(|row| row.spec != *s.spec))
            .map(|(i, _)| i)
            .collect();
        if !conflicts.is_empty() {
            return Ok(BulkInsert::Conflicts(conflicts));
        }
        let fresh: Vec<&NewStream<'_>> = streams
            .iter()
            .filter(|s| !existing.contains_key(&s.id))
            .collect();
        let mut created = HashSet::with_capacity(fresh.len());
        // 18 binds a row: 500 rows stay under both backends' parameter limits.
        for chunk in fresh.chunks(CHUNK_ROWS) {
            let columns: Vec<SpecColumns<'_>> =
                chunk.iter().map(|s| SpecColumns::of(s.spec)).collect();
            let ids: Vec<Uuid> = dispatch!(Tx, &mut tx, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(
                    "INSERT INTO streams (id, adapter, endpoint, secret_key, interval_ms, cron, \
                     timeout_ms, bucket_name, params, rate_per_minute, rate_per_day, \
                     rate_per_month, state, worker_id, generation, created_at, updated_at, \
                     source, start_at) ",
                );
                query.push_values(chunk.iter().zip(&columns), |mut row, (s, c)| {
                    row.push_bind(s.id)
                        .push_bind(c.adapter)
                        .push_bind(c.endpoint)
                        .push_bind(c.secret_key)
                        .push_bind(c.interval_ms)
                        .push_bind(c.cron)
                        .push_bind(c.timeout_ms)
                        .push_bind(c.bucket_name)
                        .push_bind(c.params.as_str())
                        .push_bind(c.rate[0])
                        .push_bind(c.rate[1])
                        .push_bind(c.rate[2])
                        .push_bind(s.state.as_str())
                        .push_bind(s.worker)
                        .push_bind(i64::from(s.worker.is_some()))
                        .push_bind(now_ms)
                        .push_bind(now_ms)
                        .push_bind(c.source.as_str())
                        .push_bind(c.start_at);
                });
                // A concurrent request that created the same id first wins; ours is a replay.
                query.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
                query.build_query_scalar().fetch_all(&mut **tx).await?
            });
            created.extend(ids);
        }
        let states: Vec<(Uuid, StreamState)> = fresh
            .iter()
            .filter(|s| created.contains(&s.id))
            .map(|s| (s.id, s.state))
            .collect();
        tx.record_states(&states, now_ms).await?;
        tx.commit().await?;
        Ok(BulkInsert::Done { created, existing })
    }

    /// Assigns running, unassigned streams to workers and bumps their generations: one
    /// statement per worker per chunk of decisions. Returns (stream, new generation) for those
    /// assigned; a stream stopped, deleted or placed since it was read is left out.
    #[tracing::instrument(level = "debug", skip_all, fields(streams = decisions.len()))]
    pub async fn assign_many(
        &self,
        decisions: &[(Uuid, &str)],
    ) -> Result<Vec<(Uuid, i64)>, DbError> {
        if decisions.is_empty() {
            return Ok(Vec::new());
        }
        let mut per_worker: HashMap<&str, Vec<Uuid>> = HashMap::new();
        for &(id, worker) in decisions {
            per_worker.entry(worker).or_default().push(id);
        }
        let mut tx = self.begin_write().await?;
        let mut ids: Vec<Uuid> = decisions.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        tx.lock_in_id_order(&ids).await?;
        let streams = tx.streams_by_id_table();
        let mut assigned = Vec::with_capacity(decisions.len());
        for (worker, ids) in &per_worker {
            for chunk in ids.chunks(WIDE_CHUNK) {
                let rows: Vec<(Uuid, i64)> = dispatch!(Tx, &mut tx, |tx, DB| {
                    let mut query =
                        QueryBuilder::<DB>::new(format!("UPDATE {streams} SET worker_id = "));
                    query
                        .push_bind(*worker)
                        .push(", generation = generation + 1 WHERE id IN (");
                    let mut list = query.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    query.push(
                        ") AND state = 'running' AND worker_id IS NULL RETURNING id, generation",
                    );
                    query.build_query_as().fetch_all(&mut **tx).await?
                });
                assigned.extend(rows);
            }
        }
        tx.commit().await?;
        Ok(assigned)
    }

    /// Clears assignments that are still (worker, generation); stale ones are left alone.
    /// One transaction; a statement each (this is the rare path: refused or failed starts).
    /// Returns how many were cleared.
    #[tracing::instrument(level = "debug", skip_all, fields(streams = assignments.len()))]
    pub async fn unassign_many(&self, assignments: &[(Uuid, &str, i64)]) -> Result<u64, DbError> {
        if assignments.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut cleared = 0;
        for (id, worker, generation) in assignments {
            cleared += dispatch!(Tx, &mut tx, |tx| {
                sqlx::query(super::streams::UNASSIGN)
                    .bind(*id)
                    .bind(*worker)
                    .bind(*generation)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
            });
        }
        tx.commit().await?;
        Ok(cleared)
    }

    /// The running streams of one key on one worker: a budgeted key about to move.
    #[tracing::instrument(level = "debug", skip_all, fields(worker_id = worker))]
    pub async fn key_streams_on(
        &self,
        worker: &str,
        secret_key: &str,
    ) -> Result<Vec<StreamRow>, DbError> {
        let sql = select_streams(
            "WHERE worker_id = $1 AND secret_key = $2 AND state = 'running' ORDER BY id",
        );
        let rows = dispatch!(Db, self, |pool| {
            sqlx::query_as(&sql)
                .bind(worker)
                .bind(secret_key)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Moves streams that are still (`from`, generation) and running to `to`, bumping their
    /// generations; one transaction, a statement each (a key's streams: a few). Returns (stream,
    /// new generation) for those moved.
    #[tracing::instrument(level = "debug", skip_all, fields(from, to, streams = streams.len()))]
    pub async fn move_streams(
        &self,
        streams: &[(Uuid, i64)],
        from: &str,
        to: &str,
    ) -> Result<Vec<(Uuid, i64)>, DbError> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "UPDATE {} SET worker_id = $1, generation = generation + 1 \
             WHERE id = $2 AND worker_id = $3 AND generation = $4 AND state = 'running' \
             RETURNING id, generation",
            tx.streams_by_id_table()
        );
        let mut moved = Vec::with_capacity(streams.len());
        for (id, generation) in streams {
            let row: Option<(Uuid, i64)> = dispatch!(Tx, &mut tx, |tx| {
                sqlx::query_as(&sql)
                    .bind(to)
                    .bind(*id)
                    .bind(from)
                    .bind(*generation)
                    .fetch_optional(&mut **tx)
                    .await?
            });
            moved.extend(row);
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// Streams no longer desired `running` that are still assigned (stopped on a replica that
    /// does not lead, or a stop whose clearing failed), at most `limit`, by id.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn stopped_assigned(&self, limit: i64) -> Result<Vec<Changed>, DbError> {
        let rows: Vec<(Uuid, Option<String>, i64)> = dispatch!(Db, self, |pool| {
            sqlx::query_as(
                "SELECT id, worker_id, generation FROM streams \
                 WHERE worker_id IS NOT NULL AND state <> 'running' ORDER BY id LIMIT $1",
            )
            .bind(limit.max(0))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, worker_id, generation)| Changed {
                id,
                worker_id,
                generation,
            })
            .collect())
    }

    /// Clears the assignments of stopped streams on `worker` (a stream started again since
    /// keeps its assignment). One statement per chunk.
    #[tracing::instrument(level = "debug", skip_all, fields(worker_id = worker, streams = ids.len()))]
    pub async fn clear_stopped(&self, worker: &str, ids: &[Uuid]) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let streams = tx.streams_by_id_table();
        let mut cleared = 0;
        for chunk in ids.chunks(WIDE_CHUNK) {
            cleared += dispatch!(Tx, &mut tx, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(format!(
                    "UPDATE {streams} SET worker_id = NULL WHERE worker_id = "
                ));
                query
                    .push_bind(worker)
                    .push(" AND state <> 'running' AND id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(")");
                query.build().execute(&mut **tx).await?.rows_affected()
            });
        }
        tx.commit().await?;
        Ok(cleared)
    }

    /// Sets the desired state of every selected stream not in it already (`running` also
    /// takes streams whose last error is set, and clears it), in one transaction, recording
    /// the change in the coverage ledger. Returns the changed streams as assigned before.
    /// Push streams are included: they have no worker to tell.
    #[tracing::instrument(level = "debug", skip_all, fields(state = %state))]
    pub async fn set_state_many(
        &self,
        selection: &Selection,
        state: StreamState,
        connected: &[String],
        now_ms: i64,
    ) -> Result<Vec<Changed>, DbError> {
        let mut tx = self.begin_write().await?;
        let clear_error = state == StreamState::Running;
        let table = match selection {
            Selection::Ids(_) => tx.streams_by_id_table(),
            Selection::Filter(_) => "streams",
        };
        let head = if clear_error {
            format!("UPDATE {table} SET state = 'running', last_error = NULL, updated_at = ")
        } else {
            format!("UPDATE {table} SET state = ")
        };
        let mut changed: Vec<Changed> = Vec::new();
        let chunks: Vec<Option<&[Uuid]>> = match selection {
            Selection::Ids(ids) => ids.chunks(CHUNK_ROWS).map(Some).collect(),
            Selection::Filter(_) => vec![None],
        };
        let no_filter = StreamFilter::default();
        let filter = match selection {
            Selection::Filter(filter) => filter,
            Selection::Ids(_) => &no_filter,
        };
        for ids in chunks {
            let rows: Vec<(Uuid, Option<String>, i64)> = dispatch!(Tx, &mut tx, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(&head);
                if clear_error {
                    query
                        .push_bind(now_ms)
                        .push(" WHERE (state <> 'running' OR last_error IS NOT NULL)");
                } else {
                    query
                        .push_bind(state.as_str())
                        .push(", updated_at = ")
                        .push_bind(now_ms)
                        .push(" WHERE state <> ")
                        .push_bind(state.as_str());
                }
                if let Some(ids) = ids {
                    query.push(" AND id IN (");
                    let mut list = query.separated(", ");
                    for id in ids {
                        list.push_bind(*id);
                    }
                    query.push(")");
                }
                push_filter(&mut query, filter, connected);
                query.push(" RETURNING id, worker_id, generation");
                query.build_query_as().fetch_all(&mut **tx).await?
            });
            changed.extend(rows.into_iter().map(|(id, worker_id, generation)| Changed {
                id,
                worker_id,
                generation,
            }));
        }
        let states: Vec<(Uuid, StreamState)> = changed.iter().map(|c| (c.id, state)).collect();
        tx.record_states(&states, now_ms).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// One page of streams matching `filter`, by id, after `after`: at most `limit` rows.
    #[tracing::instrument(level = "debug", skip_all, fields(limit = limit))]
    pub async fn list_streams_page(
        &self,
        filter: &StreamFilter,
        connected: &[String],
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<StreamRow>, DbError> {
        let head = select_streams("WHERE 1 = 1");
        let rows = dispatch!(Db, self, |pool, DB| {
            let mut query = QueryBuilder::<DB>::new(&head);
            if let Some(after) = after {
                query.push(" AND id > ").push_bind(after);
            }
            push_filter(&mut query, filter, connected);
            query.push(" ORDER BY id LIMIT ").push_bind(limit.max(0));
            query.build_query_as().fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// How many streams match `filter`, by the status the API shows.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn count_streams(
        &self,
        filter: &StreamFilter,
        connected: &[String],
    ) -> Result<HashMap<StreamStatus, i64>, DbError> {
        let rows: Vec<(String, i64)> = dispatch!(Db, self, |pool, DB| {
            let mut query = QueryBuilder::<DB>::new(
                "SELECT CASE WHEN state = 'running' AND adapter <> 'PUSH' \
                 AND (worker_id IS NULL OR NOT (",
            );
            push_connected(&mut query, connected);
            query.push(
                ")) THEN 'pending' ELSE state END AS status, COUNT(*) FROM streams \
                 WHERE 1 = 1",
            );
            push_filter(&mut query, filter, connected);
            query.push(" GROUP BY 1");
            query.build_query_as().fetch_all(pool).await?
        });
        let mut counts = HashMap::new();
        for (status, count) in rows {
            let status = match status.as_str() {
                "running" => StreamStatus::Running,
                "pending" => StreamStatus::Pending,
                "stopped" => StreamStatus::Stopped,
                _ => StreamStatus::Failed,
            };
            *counts.entry(status).or_insert(0) += count;
        }
        Ok(counts)
    }
}

impl Tx {
    /// PostgreSQL: takes the row locks of `ids` (sorted) in id order, so transactions that
    /// update many streams at once (assignment, the event path's bookkeeping) lock the streams
    /// they share in one order and never deadlock. SQLite has one writer: nothing to do.
    pub(super) async fn lock_in_id_order(&mut self, ids: &[Uuid]) -> Result<(), DbError> {
        let Tx::Postgres(tx) = self else {
            return Ok(());
        };
        for chunk in ids.chunks(WIDE_CHUNK) {
            let mut lock =
                QueryBuilder::<sqlx::Postgres>::new("SELECT 1 FROM streams WHERE id IN (");
            let mut list = lock.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            lock.push(") ORDER BY id FOR NO KEY UPDATE");
            lock.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// `streams`, with the hint that makes lookups by id seek the primary key where the
    /// backend needs one.
    fn streams_by_id_table(&self) -> &'static str {
        match self {
            Tx::Sqlite(_) => super::sqlite::STREAMS_BY_ID,
            Tx::Postgres(_) => super::postgres::STREAMS_BY_ID,
        }
    }

    /// The streams among `ids` that exist, by id.
    async fn streams_by_id(&mut self, ids: &[Uuid]) -> Result<HashMap<Uuid, StreamRow>, DbError> {
        let head = format!(
            "SELECT {STREAM_COLUMNS} FROM {} WHERE id IN (",
            self.streams_by_id_table()
        );
        let mut found = HashMap::new();
        for chunk in ids.chunks(CHUNK_ROWS) {
            let rows: Vec<StreamRow> = dispatch!(Tx, self, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(&head);
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                query.push(")");
                query.build_query_as().fetch_all(&mut **tx).await?
            });
            found.extend(rows.into_iter().map(|row| (row.id, row)));
        }
        Ok(found)
    }

    /// The coverage ledger's history for many streams at once.
    async fn record_states(
        &mut self,
        states: &[(Uuid, StreamState)],
        at_ms: i64,
    ) -> Result<(), DbError> {
        for chunk in states.chunks(CHUNK_ROWS * 4) {
            dispatch!(Tx, self, |tx, DB| {
                let mut query = QueryBuilder::<DB>::new(
                    "INSERT INTO stream_states (id, stream_id, at, state) ",
                );
                query.push_values(chunk, |mut row, (id, state)| {
                    row.push_bind(Uuid::now_v7())
                        .push_bind(*id)
                        .push_bind(at_ms)
                        .push_bind(state.as_str());
                });
                query.build().execute(&mut **tx).await?;
            });
        }
        Ok(())
    }
}
