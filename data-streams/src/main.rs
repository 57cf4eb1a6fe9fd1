//! The `data-streams` binary: settings from flags and environment, logs, shutdown on a signal.

use clap::Parser;
use data_streams::settings::{Command, Settings};
use data_streams::Application;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_tracing();
    let settings = Settings::parse();
    if let Some(Command::MigrateLayout { objects_per_second }) = settings.command {
        match data_streams::migrate_layout(&settings, objects_per_second).await {
            Ok(report) => {
                println!("{}", serde_json::to_string(&report)?);
                std::process::exit(if report.failed == 0 { 0 } else { 1 });
            }
            Err(err) => {
                tracing::error!("migrate-layout: {}", common::error_chain(&err));
                std::process::exit(1);
            }
        }
    }
    tracing::info!("data-streams starting: {}", settings.describe());
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!("cannot start: {}", common::error_chain(&err));
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
            common::shutdown_signal().await;
            tracing::info!("shutdown requested");
            shutdown.cancel();
        }
    });
    if let Err(err) = app.run_until_stopped(shutdown).await {
        tracing::error!("stopped: {}", common::error_chain(&err));
        std::process::exit(1);
    }
    tracing::info!("data-streams stopped");
    Ok(())
}
