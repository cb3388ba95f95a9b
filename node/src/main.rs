//! `wscluster-node`: parses flags, initialises logging, binds, prints `listening on <addr>` as
//! the first line of stdout, and runs the node until SIGTERM or SIGINT.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wscluster_node::Config;

/// Time allowed beyond the grace period before the process exits regardless.
const HARD_DEADLINE_EXTRA: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    config.validate().context("invalid configuration")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        out.flush()?;
    }
    let shutdown = CancellationToken::new();
    let deadline = config.grace_period() + HARD_DEADLINE_EXTRA;
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down");
        signal_token.cancel();
    });
    let run = wscluster_node::run(config, listener, shutdown.clone());
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r.context("node failed"),
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(deadline, run).await {
        Ok(r) => r.context("node failed"),
        Err(_) => {
            tracing::error!("hard shutdown deadline passed; exiting");
            Ok(())
        }
    }
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
