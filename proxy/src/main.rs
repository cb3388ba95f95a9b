//! `wscluster-proxy`: parses flags and the config file, initialises tracing, binds the
//! listeners and calls [`wscluster_proxy::run`]. See the library docs for what it does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio_util::sync::CancellationToken;
use wscluster_proxy::config::ProxyConfig;
use wscluster_proxy::{RingSource, Settings};

/// jemalloc rather than glibc's allocator. An upgrade allocates about two dozen times, three of
/// them cache-line aligned (tokio's task cell and two I/O registrations), which glibc serves
/// through `memalign`, its slowest path, and a busy proxy's churn of same-sized blocks keeps
/// overflowing glibc's small per-thread cache. With jemalloc the proxy runs 9 % fewer
/// user-space instructions and 12 % less CPU per upgrade, and an idle connection costs less
/// (2.63 against 2.81 KiB); see docs/benchmarks.md. (mimalloc saved as many instructions but
/// nearly doubled the memory per idle connection.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Data-plane proxy for wscluster: routes WebSocket upgrades and HTTP by consistent hash of a
/// business key and resets the connections whose owner changes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address for client connections.
    #[arg(long, env = "WSCLUSTER_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "WSCLUSTER_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    /// Subscriber id reported to the ring stream (default: POD_NAME, else the hostname).
    #[arg(long, env = "WSCLUSTER_ID")]
    id: Option<String>,
    /// The cluster served, namespace/name.
    #[arg(long, env = "WSCLUSTER_CLUSTER_ID", default_value = "default/chat")]
    cluster_id: String,
    /// The YAML config file (optional; every field has a default).
    #[arg(long, env = "WSCLUSTER_CONFIG")]
    config: Option<PathBuf>,
    /// Base URL of the operator's ring stream.
    #[arg(long, env = "WSCLUSTER_RING_URL", conflicts_with = "ring_file")]
    ring_url: Option<String>,
    /// File holding the ring stream's bearer token.
    #[arg(long, env = "WSCLUSTER_RING_TOKEN_FILE", conflicts_with = "ring_token")]
    ring_token_file: Option<PathBuf>,
    /// The ring stream's bearer token.
    #[arg(long, env = "WSCLUSTER_RING_TOKEN", hide_env_values = true)]
    ring_token: Option<String>,
    /// A JSON RingSnapshot file, watched for changes (tests and local runs).
    #[arg(long, env = "WSCLUSTER_RING_FILE")]
    ring_file: Option<PathBuf>,
    /// RabbitMQ URL; when set, reset events are published for the old owners.
    #[arg(long, env = "WSCLUSTER_AMQP_URL", hide_env_values = true)]
    amqp_url: Option<String>,
    /// `host:port` that plain HTTP requests without a key are forwarded to instead of being
    /// refused with 400 (local mode serves its demo page this way). WebSocket upgrades always
    /// need a key.
    #[arg(long, env = "WSCLUSTER_FALLBACK_UPSTREAM", value_parser = parse_upstream)]
    fallback_upstream: Option<String>,
    /// Worker threads (default: one per CPU). 1 runs a single-threaded event loop, like one
    /// NGINX worker, which is the cheapest per message when one core is enough.
    #[arg(long, env = "WSCLUSTER_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

/// Accepts `host:port` (a DNS name or an IP literal, and a port), nothing else.
fn parse_upstream(value: &str) -> Result<String, String> {
    let authority: http::uri::Authority = value
        .parse()
        .map_err(|e| format!("{value:?} is not host:port: {e}"))?;
    if authority.port_u16().is_none() || authority.as_str().contains('@') {
        return Err(format!("{value:?} is not host:port"));
    }
    Ok(authority.as_str().to_owned())
}

fn default_id() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("wscluster-proxy-{}", std::process::id()))
}

fn settings(args: Args) -> anyhow::Result<(Settings, SocketAddr, SocketAddr)> {
    let config = match &args.config {
        Some(path) => ProxyConfig::load(path)?,
        None => ProxyConfig::default(),
    };
    let ring = match (args.ring_url, args.ring_file) {
        (Some(url), None) => {
            let token = match (args.ring_token, args.ring_token_file) {
                (Some(t), _) => t,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .with_context(|| format!("reading ring token file {}", path.display()))?
                    .trim()
                    .to_owned(),
                (None, None) => bail!("--ring-url needs --ring-token-file or --ring-token"),
            };
            if token.is_empty() {
                bail!("the ring token is empty");
            }
            RingSource::Stream { url, token }
        }
        (None, Some(path)) => RingSource::File(path),
        _ => bail!("give exactly one of --ring-url or --ring-file"),
    };
    Ok((
        Settings {
            id: args.id.unwrap_or_else(default_id),
            cluster_id: args.cluster_id,
            config,
            ring,
            amqp_url: args.amqp_url,
            fallback_upstream: args.fallback_upstream,
        },
        args.listen,
        args.admin_listen,
    ))
}

/// Cancels `token` on SIGTERM or SIGINT.
async fn signal(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
    token.cancel();
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = match args.worker_threads {
        Some(0) => bail!("--worker-threads must be at least 1"),
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async_main(args))
}

async fn async_main(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let (settings, listen, admin_listen) = settings(args)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let admin = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("binding {admin_listen}"))?;
    // Tests and scripts bind port 0 and read the real addresses from this line.
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = %admin.local_addr()?,
        "bound"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signal(shutdown.clone()));
    // Hard deadline: the grace period plus time for the drain resets to complete.
    let hard = Duration::from_secs(settings.config.drain_timeout_seconds + 15);
    let deadline_token = shutdown.clone();
    let run = wscluster_proxy::run(settings, listener, admin, shutdown);
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r.context("proxy failed")?,
        () = async {
            deadline_token.cancelled().await;
            tokio::time::sleep(hard).await;
        } => bail!("shutdown did not finish within {}s", hard.as_secs()),
    }
    Ok(())
}
