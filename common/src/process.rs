//! What each binary's `main` does the same way: logs, shutdown on a signal, one-line errors.

/// `error` and its causes in one line, `: `-separated, leaving out a cause whose message the
/// line already holds. Our errors name the dependency; the cause says why (connection refused,
/// login refused, unknown host), so a log line needs both.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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

/// Logs to stdout at `RUST_LOG` (default `info`), coloured only on a terminal.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

/// Resolves on Ctrl-C or SIGTERM (what an orchestrator sends before it kills).
pub async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("database db.local:5432 not reachable")
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_chain_is_one_line_without_repeats() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused\nhere");
        assert_eq!(
            error_chain(&Outer(inner)),
            "database db.local:5432 not reachable: refused here"
        );
    }
}
