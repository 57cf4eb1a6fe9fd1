//! The fence of the write path: a leader-only write transaction first takes the lease row
//! `FOR KEY SHARE` and goes on only while the lease is still its term's.
//!
//! The row lock is what makes this a fence and not a mere check: taking the lease over changes
//! the epoch, which is a key of the row (a unique index), so the takeover's `UPDATE` waits until
//! every transaction holding the row `FOR KEY SHARE` ends. So every write that passed the fence
//! under epoch N commits (or rolls back) before epoch N+1 begins, and every write after that
//! finds N+1 and is refused. A renewal changes only `expires_at`, not a key, and does not wait
//! for fenced writes: a busy leader keeps its lease. Expiry is not checked here: an expired
//! lease that nobody took yet still belongs to the same term, and the moment someone takes it is
//! ordered by the lock. Fenced transactions must still stay short (seconds): a takeover waits
//! for them, and a frozen one is ended by the server after 10 s idle
//! (`idle_in_transaction_session_timeout`).

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::Term;

/// Why a leader-only write was refused: nothing it did in the transaction may be committed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Another term holds the lease: this process was deposed (its renewals stopped for
    /// longer than the TTL, or it resigned) and a newer leader may already act.
    #[error(
        "deposed: this process led under epoch {ours} but the lease is at epoch {current_epoch}, \
         held by {current_holder}; the write is refused"
    )]
    Deposed {
        /// The term the write was made under.
        ours: i64,
        current_epoch: i64,
        current_holder: Uuid,
    },
    /// The lease row does not exist: nobody ever led on this database.
    #[error("no leader lease exists on this database; the write is refused")]
    NoLease,
    /// The lease row could not be read (and locked).
    #[error("cannot check the leader lease")]
    Db(#[from] sqlx::Error),
}

/// Checks, inside `tx`, that the lease is still `term`'s, and holds the lease row `FOR KEY SHARE`
/// until `tx` ends so that no other term can begin before it commits. Call it first in every
/// leader-only write transaction; on an error, roll back (drop `tx`). Each refusal counts in
/// `ds_cluster_fenced_writes_total`.
#[tracing::instrument(level = "debug", skip_all, fields(epoch = term.epoch))]
pub async fn fence(tx: &mut Transaction<'_, Postgres>, term: &Term) -> Result<(), FenceError> {
    let row: Option<(i64, Uuid)> =
        sqlx::query_as("SELECT epoch, holder FROM leader_lease WHERE id = 1 FOR KEY SHARE")
            .fetch_optional(&mut **tx)
            .await?;
    let refused = match row {
        Some((epoch, holder)) if epoch == term.epoch && holder == term.holder => return Ok(()),
        Some((current_epoch, current_holder)) => FenceError::Deposed {
            ours: term.epoch,
            current_epoch,
            current_holder,
        },
        None => FenceError::NoLease,
    };
    metrics::counter!("ds_cluster_fenced_writes_total").increment(1);
    tracing::warn!("a leader-only write was fenced off: {refused}");
    DEPOSED.notify_one();
    Err(refused)
}

tokio::task_local! {
    /// The term the leader-only work of this task runs under (see [`in_term`]).
    static TERM: Term;
}

/// Wakes the elector when a fenced write was refused: it then checks the lease at once rather
/// than at its next renewal, and steps down.
static DEPOSED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Runs `work` as leader-only work of `term`: every write transaction it opens on PostgreSQL
/// ([`crate::db::Db`]'s leader-only writes) is fenced by `term`. Work spawned from it keeps the
/// term only through [`spawn_in_term`].
pub async fn in_term<F: std::future::Future>(term: Term, work: F) -> F::Output {
    TERM.scope(term, work).await
}

/// The term the current task's leader-only work runs under, if any.
pub fn current_term() -> Option<Term> {
    TERM.try_with(|term| *term).ok()
}

/// `tokio::spawn`, keeping the current task's term (if any) for the spawned work.
pub fn spawn_in_term<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current_term() {
        Some(term) => tokio::spawn(in_term(term, work)),
        None => tokio::spawn(work),
    }
}

/// Resolves when a fenced write was refused somewhere in this process.
pub(super) async fn deposed() {
    DEPOSED.notified().await
}
