//! SIGTERM and SIGINT: the one way a wscluster process learns it should stop.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT. The handlers are installed before this
/// returns, so a signal that arrives right after is not missed; the waiting happens on a task
/// of the current tokio runtime (call it inside one). Later signals are ignored: the process
/// keeps shutting down until its hard deadline ([`crate::process`]).
///
/// # Errors
///
/// The operating system refused to install a handler.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    let signals = Signals::install()?;
    tokio::spawn(async move {
        let name = tokio::select! {
            name = signals.first() => name,
            () = token.cancelled() => return,
        };
        tracing::info!(signal = name, "signal received; shutting down");
        token.cancel();
    });
    Ok(())
}

/// The installed handlers.
#[cfg(unix)]
struct Signals {
    /// SIGTERM, what Kubernetes and local mode send.
    term: tokio::signal::unix::Signal,
    /// SIGINT, what Ctrl-C sends.
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the first of the two; returns its name.
    async fn first(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Elsewhere only Ctrl-C exists.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn first(self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Sends `signal` to this test process with kill(1) (the workspace forbids `unsafe`, so no
    /// `libc::kill`).
    fn raise(signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    #[tokio::test]
    async fn sigterm_and_sigint_each_cancel_the_token() {
        // Both signals in one test: each handler, once installed, stays for the process, so two
        // tests would see each other's signals.
        for signal in ["-TERM", "-INT"] {
            let token = CancellationToken::new();
            cancel_on_signal(token.clone()).expect("install handlers");
            assert!(!token.is_cancelled());
            raise(signal);
            tokio::time::timeout(Duration::from_secs(10), token.cancelled())
                .await
                .unwrap_or_else(|_| panic!("{signal} did not cancel the token"));
        }
    }
}
