//! The lease row's statements, each one round trip that decides by the database's clock
//! (`now()`), and the timing that says how long a renewed lease may be trusted locally.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::{Identity, Term};

/// How the lease is kept: renewed every `renew_every`, valid `ttl` after each renewal by the
/// database's clock, trusted locally until `ttl - margin` after the renewal attempt *began*.
///
/// The database sets `expires_at = now() + ttl` at some moment after the attempt began, so the
/// local deadline falls at least `margin` before the expiry every other replica sees; the margin
/// covers the drift between this process's monotonic clock and the database's clock over one
/// TTL. Built only through [`LeaseTiming::new`], which keeps room for a retry before the
/// deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    renew_every: Duration,
    ttl: Duration,
    margin: Duration,
}

/// A lease timing that leaves the leader no time to renew before it stops trusting the lease.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "leader lease timing: renewing every {renew_every_ms} ms and trusting the lease until \
     {margin_ms} ms before it expires needs LEADER_TTL_MS above {needed_ms} ms, not {ttl_ms} ms \
     (and all three above 0)"
)]
pub struct InvalidLeaseTiming {
    pub renew_every_ms: u128,
    pub ttl_ms: u128,
    pub margin_ms: u128,
    pub needed_ms: u128,
}

impl LeaseTiming {
    /// `renew_every + margin` must stay below `ttl`: a renewal that fails once is retried
    /// before the leader stops trusting the lease.
    pub fn new(
        renew_every: Duration,
        ttl: Duration,
        margin: Duration,
    ) -> Result<LeaseTiming, InvalidLeaseTiming> {
        if renew_every.is_zero() || margin.is_zero() || renew_every + margin >= ttl {
            return Err(InvalidLeaseTiming {
                renew_every_ms: renew_every.as_millis(),
                ttl_ms: ttl.as_millis(),
                margin_ms: margin.as_millis(),
                needed_ms: (renew_every + margin).as_millis(),
            });
        }
        Ok(LeaseTiming {
            renew_every,
            ttl,
            margin,
        })
    }

    /// How often the leader renews (and every replica heartbeats and, without a lease, polls).
    pub fn renew_every(&self) -> Duration {
        self.renew_every
    }

    /// How long a lease lasts after its last renewal, by the database's clock.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long before the expiry the leader stops trusting the lease.
    pub fn margin(&self) -> Duration {
        self.margin
    }

    /// Until when a lease acquired or renewed by an attempt that began at `attempt_began` may
    /// be trusted here.
    pub fn trusted_until(&self, attempt_began: Instant) -> Instant {
        attempt_began + (self.ttl - self.margin)
    }
}

impl Default for LeaseTiming {
    /// Renew every 5 s, TTL 15 s, stop trusting 2 s before: two retries fit before the
    /// leader lets go, and a dead leader is replaced within 15 s plus one poll.
    fn default() -> Self {
        LeaseTiming {
            renew_every: Duration::from_secs(5),
            ttl: Duration::from_secs(15),
            margin: Duration::from_secs(2),
        }
    }
}

/// `ttl` as the float milliseconds that `$n * interval '1 millisecond'` takes.
fn millis(ttl: Duration) -> f64 {
    ttl.as_secs_f64() * 1000.0
}

/// Takes the lease if it is absent or expired, as a new term (epoch one more than the last,
/// whoever held it). `None`: someone holds it. When two try at once, the row lock orders them
/// and the second finds it held.
pub async fn acquire(
    pool: &PgPool,
    me: &Identity,
    ttl: Duration,
) -> Result<Option<Term>, sqlx::Error> {
    let row: Option<(i64, Uuid, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO leader_lease AS l (id, holder, epoch, expires_at, since, http_addr, worker_addr)
         VALUES (1, $1, 1, now() + $2 * interval '1 millisecond', now(), $3, $4)
         ON CONFLICT (id) DO UPDATE
            SET holder = excluded.holder, epoch = l.epoch + 1, expires_at = excluded.expires_at,
                since = excluded.since, http_addr = excluded.http_addr,
                worker_addr = excluded.worker_addr
          WHERE l.expires_at <= now()
         RETURNING epoch, holder, since",
    )
    .bind(me.id)
    .bind(millis(ttl))
    .bind(&me.http_addr)
    .bind(&me.worker_addr)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(epoch, holder, since)| Term {
        epoch,
        holder,
        since_ms: since.timestamp_millis(),
    }))
}

/// Extends the lease by `ttl` from now, only if it is still `term`'s (holder *and* epoch) and
/// has not expired: a lease that lapsed is taken again as a new term, never revived. False:
/// the term is over.
pub async fn renew(pool: &PgPool, term: &Term, ttl: Duration) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE leader_lease SET expires_at = now() + $3 * interval '1 millisecond'
          WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now()",
    )
    .bind(term.holder)
    .bind(term.epoch)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends `term` now (if it is still the lease's) and tells the waiting replicas on
/// [`super::NOTIFY_CHANNEL`], at commit, so one of them takes over at once. True: it was
/// still ours.
pub async fn resign(pool: &PgPool, term: &Term, channel: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "WITH resigned AS (
             UPDATE leader_lease SET expires_at = LEAST(expires_at, now())
              WHERE id = 1 AND holder = $1 AND epoch = $2
             RETURNING epoch)
         SELECT epoch FROM resigned, pg_notify($3, epoch::text) AS notified",
    )
    .bind(term.holder)
    .bind(term.epoch)
    .bind(channel)
    .fetch_optional(pool)
    .await?;
    Ok(row.is_some())
}

/// The lease as it stands, if it has not expired.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(super) struct LeaseRow {
    pub holder: Uuid,
    pub epoch: i64,
    pub since: DateTime<Utc>,
    pub http_addr: String,
    pub worker_addr: String,
}

/// The current lease, `None` when there is none or it expired.
pub(super) async fn current<'c>(
    conn: impl sqlx::PgExecutor<'c>,
) -> Result<Option<LeaseRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT holder, epoch, since, http_addr, worker_addr FROM leader_lease
          WHERE id = 1 AND expires_at > now()",
    )
    .fetch_optional(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timing_must_leave_room_to_renew_before_the_trust_deadline() {
        let ms = Duration::from_millis;
        assert_eq!(
            LeaseTiming::new(ms(5_000), ms(15_000), ms(2_000)),
            Ok(LeaseTiming::default())
        );
        let too_short = LeaseTiming::new(ms(5_000), ms(7_000), ms(2_000)).unwrap_err();
        assert_eq!(too_short.needed_ms, 7_000);
        assert!(too_short
            .to_string()
            .contains("LEADER_TTL_MS above 7000 ms"));
        assert!(LeaseTiming::new(ms(0), ms(15_000), ms(2_000)).is_err());
        assert!(LeaseTiming::new(ms(5_000), ms(15_000), ms(0)).is_err());
    }

    #[test]
    fn the_lease_is_trusted_until_ttl_less_margin_after_the_attempt_began() {
        let timing = LeaseTiming::default();
        let began = Instant::now();
        assert_eq!(timing.trusted_until(began) - began, Duration::from_secs(13));
    }
}
