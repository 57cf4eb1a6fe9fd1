//! The elector: one task per supervisor process on PostgreSQL that takes the leader lease when
//! it is free, renews it while it holds it, publishes the current [`Term`] (a `watch`), keeps
//! this process's replica row alive, and resigns at shutdown.
//!
//! It has a pool of its own (two connections: the listener's and the statements'), with
//! connect and statement timeouts, so a supervisor pool busy with a bulk insert or a sweep
//! never holds up a renewal. It decides nothing by its own clock but when to stop trusting a
//! lease: [`LeaseTiming::trusted_until`] the start of the last successful attempt, and the
//! term is withdrawn at that instant even while a renewal is still waiting for its answer.
//! A replica without the lease tries to take it every `poll_every`, and at once when a
//! leader's resignation is announced on [`NOTIFY_CHANNEL`]; notifications are a shortcut only
//! (a pooler in transaction mode, or a lost listening connection, drops them), polling is
//! what guarantees a takeover.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Executor as _, PgPool};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::{lease, replicas, Identity, LeaseTiming, Term};
use crate::db::redact_url;

/// The channel a resigning leader notifies, and every replica without the lease listens on.
pub const NOTIFY_CHANNEL: &str = "data_streams_leader";

/// How soon a leader tries again after a renewal that failed (not one that was refused).
const RENEW_RETRY: Duration = Duration::from_secs(1);

/// How the elector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectorSettings {
    pub timing: LeaseTiming,
    /// How long one connection attempt or one statement of the elector may take (also the
    /// server's `statement_timeout` on its connections). A renewal is held to the trust
    /// deadline as well, whichever comes first.
    pub db_timeout: Duration,
    /// How often a replica without the lease looks whether it is free (when no notification
    /// says so sooner).
    pub poll_every: Duration,
}

impl ElectorSettings {
    /// `timing`, a 5 s timeout, and polling every second (or as often as the leader renews,
    /// if that is more often): one cheap statement per replica, and a dead leader's lease is
    /// taken at most a second after it expires.
    pub fn new(timing: LeaseTiming) -> ElectorSettings {
        ElectorSettings {
            timing,
            db_timeout: Duration::from_secs(5),
            poll_every: timing.renew_every().min(Duration::from_secs(1)),
        }
    }
}

/// Why the elector could not start.
#[derive(Debug, thiserror::Error)]
pub enum ElectorError {
    #[error("the leader elector cannot use the database URL {target}")]
    InvalidUrl {
        /// The URL without its password.
        target: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Whether this process leads now, and under which term. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<Option<Term>>);

impl Leadership {
    /// The term this process leads under now; `None` while it must not act as the leader,
    /// and once its elector has ended (however it ended).
    pub fn term(&self) -> Option<Term> {
        if self.0.has_changed().is_err() {
            return None;
        }
        *self.0.borrow()
    }

    /// Waits for the next change of term and returns the new one (`None`: not leading).
    /// `Err` once the elector has ended: nothing changes any more, and [`Leadership::term`]
    /// is `None`.
    pub async fn changed(&mut self) -> Result<Option<Term>, ElectorEnded> {
        self.0.changed().await.map_err(|_| ElectorEnded)?;
        Ok(*self.0.borrow_and_update())
    }
}

/// The elector behind a [`Leadership`] has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the leader elector has ended")]
pub struct ElectorEnded;

/// A running elector. [`Elector::stop`] resigns and waits; dropping it leaves the task to end
/// with its cancellation token.
#[derive(Debug)]
pub struct Elector {
    leadership: Leadership,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Elector {
    /// Starts electing `me` on the PostgreSQL database at `url`. The pool connects lazily: a
    /// database that is down makes the elector retry, never fail here. The elector resigns
    /// and ends when `shutdown` is cancelled (or [`Elector::stop`] is called).
    pub fn start(
        url: &str,
        me: Identity,
        settings: ElectorSettings,
        shutdown: &CancellationToken,
    ) -> Result<Elector, ElectorError> {
        let connect_options = PgConnectOptions::from_str(url)
            .map_err(|source| ElectorError::InvalidUrl {
                target: redact_url(url),
                source,
            })?
            .application_name("data-streams elector");
        let statement_timeout = format!(
            "SET statement_timeout = {}",
            settings.db_timeout.as_millis().max(1)
        );
        // A session setting rather than a startup parameter: a pooler in front of the database
        // may refuse unknown startup parameters, and the client-side timeouts below hold anyway.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(settings.db_timeout)
            .after_connect(move |conn, _meta| {
                let set = statement_timeout.clone();
                Box::pin(async move {
                    conn.execute(set.as_str()).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(connect_options);
        let (term_tx, term_rx) = watch::channel(None);
        let stop = shutdown.child_token();
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn({
            let campaign = Campaign {
                pool: pool.clone(),
                me,
                settings,
                term_tx,
                wake: wake.clone(),
                stop: stop.clone(),
                failing: false,
            };
            let listen = listen(pool.clone(), wake, stop.clone(), settings);
            async move {
                tokio::join!(campaign.run(), listen);
                pool.close().await;
            }
        });
        Ok(Elector {
            leadership: Leadership(term_rx),
            stop,
            task,
        })
    }

    /// Whether this process leads, now and as it changes.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Stops: withdraws the term, resigns the lease if held (announcing it so another replica
    /// takes over at once), leaves the replica list, and waits until all that is done (each
    /// step bounded by the elector's timeout).
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(err) = self.task.await {
            tracing::warn!("the leader elector ended abnormally: {err}");
        }
    }

    /// Ends the task at once, without resigning or a last word to the database: what a process
    /// that froze or lost its network looks like to the others. For tests.
    pub fn abandon(self) {
        self.task.abort();
    }
}

/// The lease-holding loop's state.
struct Campaign {
    pool: PgPool,
    me: Identity,
    settings: ElectorSettings,
    term_tx: watch::Sender<Option<Term>>,
    /// A resignation was announced (or may have been missed): try to take the lease now.
    wake: Arc<Notify>,
    stop: CancellationToken,
    /// The last attempt failed (logged once per outage, not once per attempt).
    failing: bool,
}

impl Campaign {
    async fn run(mut self) {
        let timing = self.settings.timing;
        // The term held, and until when it may be trusted.
        let mut held: Option<(Term, Instant)> = None;
        loop {
            let began = Instant::now();
            let mut retry_soon = false;
            match held {
                Some((term, trusted_until)) => {
                    let budget = self.budget(Some(trusted_until));
                    match timeout(budget, lease::renew(&self.pool, &term, timing.ttl())).await {
                        Ok(Ok(true)) => {
                            self.recovered();
                            held = Some((term, timing.trusted_until(began)));
                        }
                        Ok(Ok(false)) => {
                            tracing::warn!(
                                epoch = term.epoch,
                                "the leader lease is no longer this process's: leading ends"
                            );
                            held = None;
                            self.publish(None);
                        }
                        Ok(Err(err)) => {
                            self.failed(format!("cannot renew the leader lease: {err}"));
                            retry_soon = true;
                        }
                        Err(_) => {
                            self.failed(format!("renewing the leader lease took over {budget:?}"));
                            retry_soon = true;
                        }
                    }
                }
                None => {
                    let attempt = lease::acquire(&self.pool, &self.me, timing.ttl());
                    match timeout(self.settings.db_timeout, attempt).await {
                        Ok(Ok(Some(term))) => {
                            self.recovered();
                            tracing::info!(
                                epoch = term.epoch,
                                holder = %term.holder,
                                "this process leads"
                            );
                            held = Some((term, timing.trusted_until(began)));
                            self.publish(Some(term));
                        }
                        Ok(Ok(None)) => self.recovered(),
                        Ok(Err(err)) => {
                            self.failed(format!("cannot look at the leader lease: {err}"));
                        }
                        Err(_) => self.failed(format!(
                            "looking at the leader lease took over {:?}",
                            self.settings.db_timeout
                        )),
                    }
                }
            }
            // Never past the trust deadline: the term must be withdrawn on time.
            let budget = self.budget(held.map(|(_, until)| until));
            match timeout(budget, replicas::heartbeat(&self.pool, &self.me)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::debug!("replica heartbeat: {err}"),
                Err(_) => tracing::debug!("replica heartbeat timed out"),
            }

            let next = match held {
                Some(_) if retry_soon => Instant::now() + RENEW_RETRY.min(timing.renew_every()),
                Some(_) => began + timing.renew_every(),
                None => began + self.settings.poll_every,
            };
            let deadline = held.map(|(_, until)| until);
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                () = sleep_until(deadline.unwrap_or(next)), if deadline.is_some() => {
                    tracing::warn!(
                        "the leader lease was not renewed in time: this process stops leading"
                    );
                    held = None;
                    self.publish(None);
                }
                () = self.wake.notified(), if held.is_none() => {}
                // A fenced write was refused: renew now, which finds the lease gone.
                () = super::fence::deposed(), if held.is_some() => {}
                () = sleep_until(next) => {}
            }
        }
        self.publish(None);
        // One timeout for the last words: a database that is gone must not hold up a shutdown
        // for longer than one statement would.
        let farewell = async {
            if let Some((term, _)) = held {
                match lease::resign(&self.pool, &term, NOTIFY_CHANNEL).await {
                    Ok(true) => tracing::info!(epoch = term.epoch, "resigned the leader lease"),
                    Ok(false) => {}
                    Err(err) => tracing::warn!("cannot resign the leader lease: {err}"),
                }
            }
            if let Err(err) = replicas::leave(&self.pool, &self.me).await {
                tracing::debug!("cannot remove this replica's row: {err}");
            }
        };
        if timeout(self.settings.db_timeout, farewell).await.is_err() {
            tracing::warn!(
                "the elector's last words (resign, leave) took over {:?}; the lease expires by itself",
                self.settings.db_timeout
            );
        }
    }

    /// How long the next statement may take: the elector's timeout, and never past the trust
    /// deadline while leading.
    fn budget(&self, trusted_until: Option<Instant>) -> Duration {
        let limit = self.settings.db_timeout;
        match trusted_until {
            Some(until) => limit.min(until.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }

    fn publish(&self, term: Option<Term>) {
        metrics::gauge!("ds_cluster_leader").set(if term.is_some() { 1.0 } else { 0.0 });
        self.term_tx.send_if_modified(|current| {
            let changed = *current != term;
            *current = term;
            changed
        });
    }

    fn failed(&mut self, what: String) {
        if !self.failing {
            tracing::warn!("{what} (retrying; said again once it works)");
        }
        self.failing = true;
    }

    fn recovered(&mut self) {
        if self.failing {
            tracing::info!("the leader lease is reachable again");
        }
        self.failing = false;
    }
}

/// Listens on [`NOTIFY_CHANNEL`] and wakes the campaign on every notification, and after every
/// (re)connection, since what was sent while nobody listened is lost.
async fn listen(
    pool: PgPool,
    wake: Arc<Notify>,
    stop: CancellationToken,
    settings: ElectorSettings,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let subscribe = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let subscribed = tokio::select! {
            () = stop.cancelled() => return,
            subscribed = timeout(settings.db_timeout, subscribe) => subscribed,
        };
        let mut listener = match subscribed {
            Ok(Ok(listener)) => listener,
            failed => {
                match failed {
                    Ok(Err(err)) => tracing::debug!("cannot listen for resignations: {err}"),
                    _ => tracing::debug!("listening for resignations timed out"),
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(settings.poll_every.max(Duration::from_millis(250)));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        wake.notify_one();
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                // A resignation, or a connection lost and made again (something may have been
                // missed meanwhile): look at the lease now.
                Ok(_) => wake.notify_one(),
                Err(err) => {
                    tracing::debug!("listening for resignations failed, listening again: {err}");
                    break;
                }
            }
        }
    }
}
