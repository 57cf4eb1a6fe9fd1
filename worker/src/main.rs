//! The `worker` binary: settings from flags and environment, logs, and shutdown on a signal.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let settings = Settings::parse();
    tracing::info!("worker starting: {}", settings.describe());
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            common::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    if let Err(err) = worker::run(settings, shutdown).await {
        // One line, naming the dependency and the cause; not anyhow's multi-line report.
        tracing::error!("cannot start: {}", common::error_chain(&err));
        std::process::exit(1);
    }
    tracing::info!("worker stopped");
    Ok(())
}
