//! The data-streams worker: runs streams on schedule, fetches through adapters, stores raw
//! responses in object storage and reports references and readings to the supervisor.
//!
//! A worker is stateless and interchangeable: everything it runs comes from the supervisor, and
//! what it stored is in the object store. [`run`] wires the pieces: the [`scheduler`] runs each
//! stream through the [`runner`], which queues events in the [`outbox`]; the [`link`] keeps the
//! supervisor connection up and drains the outbox.

pub mod adapters;
pub mod calls;
pub mod clock;
pub mod link;
pub mod outbox;
pub mod ratelimit;
pub mod runner;
pub mod scheduler;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::link::{LinkSettings, LinkTls};
use crate::outbox::Outbox;
use crate::runner::Runner;
use crate::scheduler::Scheduler;
use crate::settings::Settings;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    ObjectStore(#[from] objects::OpenError),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("TLS to the supervisor: {0}")]
    Tls(#[source] protocol::tls::TlsError),
}

/// Run a worker until `shutdown` is cancelled; runs in flight finish within the grace period.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), StartupError> {
    let (token, dev_token) = settings.token();
    if dev_token {
        tracing::warn!("DATA_STREAMS_WORKER_TOKEN is not set: using the development token");
    }
    // Checked before anything else starts: a bad CA file or server name is a start-up error.
    let tls = match settings.tls_ca() {
        Some(ca) => Some(LinkTls {
            connector: protocol::tls::connector(ca).map_err(StartupError::Tls)?,
            server_name: match settings.explicit_tls_server_name() {
                Some(name) => Some(protocol::tls::server_name(name).map_err(StartupError::Tls)?),
                None => {
                    // Each address is checked under its own host name: a bad one is a start-up
                    // error, not a link that never comes up.
                    for addr in link::addresses(&settings.supervisor_addr) {
                        protocol::tls::server_name(protocol::tls::host_of(&addr))
                            .map_err(StartupError::Tls)?;
                    }
                    None
                }
            },
        }),
        None => None,
    };
    // A store that is down at start is not fatal: runs retry the upload and report `storage`
    // failures until it comes back.
    let store = settings.store.open().await?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(settings.http_connect_timeout_ms))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("data-streams-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(StartupError::HttpClient)?;
    let adapters = adapters::registry(client);
    let outbox = Arc::new(Outbox::new(settings.outbox_limit));
    let runner = Arc::new(
        Runner::new(adapters.clone(), store, outbox.clone())
            .with_store_concurrency(settings.store_concurrency),
    );
    let scheduler = Scheduler::with_start_spread(
        runner,
        Clock::System,
        settings.capacity as usize,
        Duration::from_millis(settings.start_spread_ms),
    );

    let link_settings = LinkSettings {
        supervisor_addr: settings.supervisor_addr.clone(),
        token,
        worker_id: settings.worker_id(),
        capacity: settings.capacity,
        adapters: adapters.names(),
        max_frame: settings.max_frame_bytes,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(settings.reconnect_max_ms.max(100)),
        connect_timeout: Duration::from_secs(5),
        tls,
        send_window: settings.send_window,
    };
    let link_shutdown = CancellationToken::new();
    let link_task = tokio::spawn(link::run(
        link_settings,
        scheduler.clone(),
        outbox.clone(),
        link_shutdown.clone(),
    ));

    shutdown.cancelled().await;
    tracing::info!(
        running = scheduler.len(),
        "shutting down: letting runs in flight finish"
    );
    let finished = scheduler.shutdown(settings.shutdown_grace()).await;
    if !finished {
        tracing::warn!("some runs did not finish within the shutdown grace period");
    }
    // Give the link a moment to hand the last events over before closing it.
    let drain_until = tokio::time::Instant::now() + Duration::from_secs(2);
    while !outbox.is_empty() && tokio::time::Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    link_shutdown.cancel();
    let _ = link_task.await;
    if !outbox.is_empty() {
        tracing::warn!(
            unacknowledged = outbox.len(),
            "exiting with unacknowledged events: their objects are stored and the reconciler will index them"
        );
    }
    Ok(())
}
