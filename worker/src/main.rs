//! The `worker` binary: settings from flags and environment, logs, and shutdown on a signal.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let settings = Settings::parse();
    tracing::info!("worker starting: {}", settings.describe());
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            shutdown.cancel();
        }
    });
    if let Err(err) = worker::run(settings, shutdown).await {
        // One line, naming the dependency and the cause; not anyhow's multi-line report.
        tracing::error!("cannot start: {}", error_chain(&err));
        std::process::exit(1);
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// `error` and its causes in one line, leaving out a cause whose message the line already holds.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let message = current.to_string().replace(['\n', '\r'], " ");
        if !message.is_empty() && !line.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
        next = current.source();
    }
    line
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(err) => {
                    tracing::warn!("cannot listen for SIGTERM: {err}");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
