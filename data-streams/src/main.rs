//! The `data-streams` binary: settings from flags and environment, logs, shutdown on a signal.

use clap::Parser;
use data_streams::settings::Settings;
use data_streams::Application;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let settings = Settings::parse();
    tracing::info!("data-streams starting: {}", settings.describe());
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {}", data_streams::error_chain(&err));
            std::process::exit(1);
        }
    };
    println!(
        "data-streams listening: http://{} (API), {} (workers)",
        app.http_addr(),
        app.worker_addr()
    );
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested");
            shutdown.cancel();
        }
    });
    if let Err(err) = app.run_until_stopped(shutdown).await {
        tracing::error!("stopped: {}", data_streams::error_chain(&err));
        std::process::exit(1);
    }
    tracing::info!("data-streams stopped");
    Ok(())
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
