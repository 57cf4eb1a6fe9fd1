//! What only the leader does, started at each term and stopped when it ends: the housekeeping
//! sweep (assignment, failover), the reconciler, re-parse jobs, the table compactor and, with
//! replicas, applying the desired state that followers store. On SQLite the one process leads
//! from start to shutdown; on PostgreSQL it leads while the elector says it holds the lease,
//! and follows otherwise (its worker port then redirects to the leader).

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{self, Leadership, Term};
use crate::db::Db;
use crate::reconcile::Reconciler;
use crate::reparse::Reparse;
use crate::supervisor::{Housekeeping, Supervisor};
use crate::tables::Tables;

/// How often a follower looks again who leads and which workers the leader has.
const FOLLOWER_REFRESH: Duration = Duration::from_secs(1);

/// The leader's work, and how often each part runs.
#[derive(Clone)]
pub(crate) struct Duties {
    pub supervisor: Supervisor,
    pub db: Db,
    pub reconciler: Reconciler,
    pub reparse: Reparse,
    pub tables: Tables,
    pub assign_every: Duration,
    pub reconcile_every: Duration,
    /// `None`: the compactor is off.
    pub tables_every: Option<(Duration, u32)>,
}

impl Duties {
    /// Leads under `term` (`None`: alone, SQLite) until `until` is cancelled, then stops every
    /// duty and waits for them (bounded).
    async fn lead(&self, term: Option<Term>, until: CancellationToken) {
        let supervisor = &self.supervisor;
        if let Some(term) = term {
            // A new term starts with no worker of its own: whatever the database says is
            // connected was the previous leader's (or this process's before a restart). Each
            // gets one heartbeat timeout from now to reconnect before its streams move. Done
            // before this process takes workers, so no new connection is marked.
            if let Err(err) = cluster::in_term(term, mark_disconnected(&self.db)).await {
                tracing::warn!("cannot mark the previous term's workers disconnected: {err}");
            }
            supervisor.lead(Some(term));
        }
        // Alone (SQLite), the process leads from its start, and its workers were marked
        // disconnected before its port opened (`Application::build`).
        let tasks = TaskTracker::new();
        let spawn = |work: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
            match term {
                Some(term) => tasks.spawn(cluster::in_term(term, work)),
                None => tasks.spawn(work),
            };
        };
        spawn(Box::pin(
            self.reconciler
                .clone()
                .run(self.reconcile_every, until.clone()),
        ));
        spawn(Box::pin(self.reparse.clone().run(until.clone())));
        if let Some((every, days)) = self.tables_every {
            spawn(Box::pin(self.tables.clone().run(
                every,
                days,
                until.clone(),
            )));
        }
        if let Db::Postgres(pool) = &self.db {
            spawn(Box::pin(cluster::desired::listen(
                pool.clone(),
                supervisor.clone(),
                until.clone(),
            )));
        }
        tasks.close();
        match Housekeeping::start(supervisor.clone(), self.assign_every).await {
            Ok(housekeeping) => {
                until.cancelled().await;
                housekeeping.stop().await;
            }
            Err(err) => {
                tracing::error!("cannot start the housekeeping sweep: {err}");
                until.cancelled().await;
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some of the leader's duties did not stop within 10 s");
        }
    }

    /// SQLite: leads until `shutdown`.
    pub(crate) async fn lead_alone(self, shutdown: CancellationToken) {
        self.lead(None, shutdown).await;
    }

    /// PostgreSQL: leads while `leadership` holds a term, follows otherwise, until `shutdown`.
    pub(crate) async fn follow_the_lease(
        self,
        mut leadership: Leadership,
        pool: PgPool,
        shutdown: CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            if let Some(term) = leadership.term() {
                let until = shutdown.child_token();
                let watch = async {
                    // Ends when the term does: another term, none, or the elector ended. The
                    // role changes at once (sessions close, writes stop), and the duties are
                    // then stopped.
                    loop {
                        match leadership.changed().await {
                            Ok(Some(next)) if next == term => continue,
                            _ => break,
                        }
                    }
                    self.supervisor.follow(None);
                    until.cancel();
                };
                tracing::info!(epoch = term.epoch, "leading");
                tokio::join!(self.lead(Some(term), until.clone()), watch);
                self.supervisor.follow(None);
                tracing::info!(epoch = term.epoch, "no longer leading");
                continue;
            }
            self.refresh_follower(&pool).await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = leadership.changed() => {
                    if changed.is_err() {
                        // The elector ended (only at shutdown): nothing more to follow.
                        shutdown.cancelled().await;
                        break;
                    }
                }
                () = tokio::time::sleep(FOLLOWER_REFRESH) => {}
            }
        }
        self.supervisor.follow(None);
    }

    /// A follower's view of the leader: where workers go, and which are connected to it.
    async fn refresh_follower(&self, pool: &PgPool) {
        match cluster::leader_worker_addr(pool).await {
            Ok(addr) => self.supervisor.follow(addr),
            Err(err) => tracing::debug!("cannot read who leads: {err}"),
        }
        match self.db.list_workers().await {
            Ok(workers) => self.supervisor.set_leader_workers(
                workers
                    .into_iter()
                    .filter(|w| w.connected)
                    .map(|w| w.id)
                    .collect::<HashSet<_>>(),
            ),
            Err(err) => tracing::debug!("cannot read the leader's workers: {err}"),
        }
    }
}

/// Marks every worker the database calls connected as disconnected, as of now.
pub(crate) async fn mark_disconnected(db: &Db) -> Result<(), crate::db::DbError> {
    for w in db.list_workers().await?.iter().filter(|w| w.connected) {
        db.set_worker_disconnected(&w.id, common::now_ms()).await?;
    }
    Ok(())
}
