//! What the worker port reports: a worker connected or went away, what it runs, what it stored.

use common::now_ms;
use protocol::{LinkHandle, ResultRecord, RunFailure, RunReport, RunStatus, RunningStream};

use super::Supervisor;
use crate::db::{DbError, FailureRow, PersistStats, Persisted, ResultRow};
use crate::live::LiveMessage;
use crate::stream::Rfc3339;

impl Supervisor {
    /// Register a worker that passed the handshake. An older session of the same worker is
    /// closed: the newest connection wins. Returns this connection's id.
    pub async fn worker_connected(
        &self,
        worker_id: &str,
        capacity: u32,
        adapters: Vec<String>,
        link: LinkHandle,
    ) -> Result<u64, DbError> {
        self.inner
            .db
            .upsert_worker(worker_id, i64::from(capacity), &adapters, now_ms())
            .await?;
        let (conn_id, previous) = self
            .inner
            .sessions
            .insert(worker_id, capacity, adapters, link);
        if let Some(old) = previous {
            tracing::warn!(
                worker_id,
                "worker connected again; closing its older connection"
            );
            old.link.close().await;
        }
        metrics::gauge!("ds_workers_connected").set(self.inner.sessions.len() as f64);
        self.inner.live.publish(
            None,
            &LiveMessage::Worker {
                worker_id,
                connected: true,
            },
        );
        Ok(conn_id)
    }

    /// A worker's link ended. Its streams stay assigned for the grace period; if it has not come
    /// back by then, they go to the other workers.
    pub async fn worker_disconnected(&self, worker_id: &str, conn_id: u64) {
        if !self.inner.sessions.remove(worker_id, conn_id) {
            return;
        }
        metrics::gauge!("ds_workers_connected").set(self.inner.sessions.len() as f64);
        self.inner.live.publish(
            None,
            &LiveMessage::Worker {
                worker_id,
                connected: false,
            },
        );
        if let Err(err) = self
            .inner
            .db
            .set_worker_disconnected(worker_id, now_ms())
            .await
        {
            tracing::error!(worker_id, "could not record the disconnect: {err}");
        }
        let this = self.clone();
        let worker_id = worker_id.to_owned();
        crate::cluster::spawn_in_term(async move {
            tokio::time::sleep(this.inner.grace).await;
            if this.inner.sessions.get(&worker_id).is_none() {
                this.release_worker(&worker_id).await;
            }
        });
    }

    /// Answer `data-streams:worker_available` (every connect): index what the worker stored
    /// but could not report (the reconciler, soon: the streams it held and no longer runs, a
    /// restarted process, are its suspects), stop what it runs that is no longer its own,
    /// (re)start what it should run, then assign pending streams. It calls the worker over the
    /// link whose session reported this, so the session runs it beside its loop, never in it.
    pub async fn worker_available(&self, worker_id: &str, running: Vec<RunningStream>) {
        self.bring_in_line(worker_id, running).await;
        self.inner.reconcile.soon();
    }

    /// Commit a batch of a worker's events (one transaction), then mark failed the streams whose
    /// worker stopped them (bad or expired key). The caller acknowledges the batch only after
    /// this returns `Ok`.
    pub async fn persist(
        &self,
        worker_id: &str,
        results: &[ResultRecord],
        failures: &[RunFailure],
        reports: &[RunReport],
    ) -> Result<PersistStats, DbError> {
        let persisted = self
            .inner
            .db
            .persist_runs(results, failures, reports)
            .await?;
        // A failed run of several steps is announced and acted on like a failed fetch (the
        // database stored its failure too, under the same run id).
        let failed: Vec<RunFailure> = reports
            .iter()
            .filter(|r| r.status == RunStatus::Failed)
            .map(crate::db::failure_of)
            .collect();
        let failures: std::borrow::Cow<'_, [RunFailure]> = if failed.is_empty() {
            std::borrow::Cow::Borrowed(failures)
        } else {
            std::borrow::Cow::Owned(failures.iter().cloned().chain(failed).collect())
        };
        self.announce_new(results, &failures, &persisted);
        for failure in failures.iter().filter(|f| f.stream_stopped) {
            self.stream_failed(
                failure.stream_id,
                worker_id,
                &format!("{}: {}", failure.class, failure.message),
            )
            .await;
        }
        Ok(persisted.stats)
    }

    /// Publish what a commit added: each new result (with its reading, when that is new too)
    /// and each new failed run. A replayed event stored before is not news.
    fn announce_new(&self, results: &[ResultRecord], failures: &[RunFailure], new: &Persisted) {
        let live = &self.inner.live;
        if live.is_idle() {
            return;
        }
        let committed_at = Rfc3339(now_ms());
        for record in results
            .iter()
            .filter(|r| new.new_results.contains(&r.result_id))
        {
            let measurement = record.measurement.as_deref().and_then(|m| {
                let ts = m.ts_ms()?;
                if !new.new_readings.contains(&record.result_id) {
                    return None;
                }
                let mut json = serde_json::Map::new();
                json.insert("ts".into(), serde_json::json!(Rfc3339(ts)));
                json.insert("result_id".into(), serde_json::json!(record.result_id));
                // The version the event path stores it with (`Db::persist_batch`).
                json.insert(
                    "parser_version".into(),
                    serde_json::json!(catalogue::iqair::PARSER_VERSION),
                );
                json.extend(catalogue::reading::to_json(
                    catalogue::iqair::COLUMNS,
                    &m.cells(),
                ));
                Some(json)
            });
            live.publish(
                Some(record.stream_id),
                &LiveMessage::Result {
                    stream_id: record.stream_id,
                    result: &ResultRow::reported(record),
                    measurement,
                    committed_at,
                },
            );
        }
        for failure in failures
            .iter()
            .filter(|f| new.new_failures.contains(&f.run_id))
        {
            live.publish(
                Some(failure.stream_id),
                &LiveMessage::Failure {
                    stream_id: failure.stream_id,
                    failure: &FailureRow::reported(failure),
                    committed_at,
                },
            );
        }
    }
}
