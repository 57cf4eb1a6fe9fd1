//! Several supervisors on one PostgreSQL database: which one leads, which are there, and the
//! fence that keeps a deposed leader's writes out (RFC §4, "Replicas"). On SQLite there is one
//! supervisor per database file ([`SingleReplicaGuard`]), and it leads.
//!
//! - `lease.rs`: the lease row's statements (acquire, renew, resign, read) and its timing;
//! - `elector.rs`: the task that holds or seeks the lease and publishes the current [`Term`];
//! - `fence.rs`: the check that opens every leader-only write transaction;
//! - `replicas.rs`: each process's heartbeat row, and what `GET /cluster` shows;
//! - `single.rs`: the lock that keeps a second supervisor off a SQLite file.
//!
//! - `desired.rs`: desired state stored by a follower, announced to the leader;
//! - `fanout.rs`: the live channel's messages shared by every replica.

pub mod desired;
mod elector;
pub mod fanout;
mod fence;
pub mod lease;
mod listen;
mod replicas;
mod single;

use std::sync::Arc;

use sqlx::PgPool;
use uuid::Uuid;

use crate::db::{Db, DbError};

pub use elector::{
    Elector, ElectorEnded, ElectorError, ElectorSettings, Leadership, NOTIFY_CHANNEL,
};
pub use fence::{current_term, fence, in_term, spawn_in_term, FenceError};
pub use lease::{InvalidLeaseTiming, LeaseTiming};
pub use replicas::{ClusterView, LeaderView, ReplicaView};
pub use single::{SingleReplicaError, SingleReplicaGuard};

/// One term of leadership: the lease as one holder took it. Every acquisition of the lease is
/// a new term with a higher epoch, so `(epoch, holder)` names a term once, ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    /// The fencing token: the write path compares it with the lease row's.
    pub epoch: i64,
    /// The process that holds the lease.
    pub holder: Uuid,
    /// When the term began, epoch ms by the database's clock.
    pub since_ms: i64,
}

/// This process as the other replicas see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Drawn fresh at every process start (UUIDv7): a restarted process is a new holder.
    pub id: Uuid,
    /// Where its HTTP API is reached, as advertised.
    pub http_addr: String,
    /// Where workers reach it, as advertised.
    pub worker_addr: String,
    /// When the process started, epoch ms.
    pub started_ms: i64,
}

impl Identity {
    /// A new identity for a process that serves on these (advertised) addresses.
    pub fn new(http_addr: String, worker_addr: String) -> Identity {
        Identity {
            id: Uuid::now_v7(),
            http_addr,
            worker_addr,
            started_ms: common::now_ms(),
        }
    }
}

/// The worker address of the replica that holds an unexpired lease, if any: where a follower
/// sends workers.
pub async fn leader_worker_addr(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    Ok(lease::current(pool).await?.map(|row| row.worker_addr))
}

/// What the API reads about the cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Cluster {
    /// SQLite: this process is the only replica, and the leader (epoch 0).
    Single(Arc<Identity>),
    /// PostgreSQL: the lease and the replicas' rows, read through the supervisor's pool.
    Replicated {
        identity: Arc<Identity>,
        pool: PgPool,
        /// A replica whose last heartbeat is older than this is not listed.
        seen_within: std::time::Duration,
    },
}

impl Cluster {
    /// The cluster as this process on `db` sees it; `timing` says how long a silent replica
    /// is still listed (one TTL).
    pub fn new(identity: Identity, db: &Db, timing: LeaseTiming) -> Cluster {
        let identity = Arc::new(identity);
        match db {
            Db::Sqlite(_) => Cluster::Single(identity),
            Db::Postgres(pool) => Cluster::Replicated {
                identity,
                pool: pool.clone(),
                seen_within: timing.ttl(),
            },
        }
    }

    /// This process.
    pub fn identity(&self) -> &Identity {
        match self {
            Cluster::Single(identity) | Cluster::Replicated { identity, .. } => identity,
        }
    }

    /// The leader and the replicas now.
    pub async fn view(&self) -> Result<ClusterView, DbError> {
        match self {
            Cluster::Single(identity) => Ok(ClusterView::single(identity, common::now_ms())),
            Cluster::Replicated {
                pool, seen_within, ..
            } => Ok(replicas::read_view(pool, *seen_within).await?),
        }
    }
}
