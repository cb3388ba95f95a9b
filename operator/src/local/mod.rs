//! `wscluster-operator local`: the whole system on one machine, without Kubernetes.
//!
//! One command runs a ring authority (an in-process [`RingHub`] served on `--ring-listen`),
//! `--nodes` `wscluster-node` processes and `--proxies` `wscluster-proxy` processes on
//! 127.0.0.1, with in-memory mailboxes and bus unless `--redis-url` / `--amqp-url` are given,
//! and a control API with a demo page on `--control-listen`. Ctrl-C (or SIGTERM) stops the
//! children (SIGTERM, then SIGKILL after their grace period) and exits.
//!
//! Membership follows the Kubernetes rules ([`membership`]): a node joins the ring when its
//! `/readyz` answers 200, leaves it at once when its process exits, and scale-down drains first.
//! The only differences from a cluster are where membership comes from (child processes
//! instead of EndpointSlices) and the backends.
//!
//! Layout: [`membership`] (pure state machine), [`process`] (child processes), [`supervisor`]
//! (the loop that owns both and renders the state), [`control`] (HTTP API and demo page, whose
//! assets are `operator/assets/`). `docs/local.md` is the user guide.
//!
//! The first line on stdout is `listening on <control address>`, so scripts and tests that pass
//! `--control-listen 127.0.0.1:0` learn the port; everything else is in `GET /api/state`.

pub mod control;
pub mod membership;
pub mod process;
pub mod supervisor;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wscluster_ring_stream::RingHub;

use self::supervisor::{Settings, Supervisor};

/// Largest node count local mode runs: enough to show scaling, small enough for one laptop.
pub const MAX_REPLICAS: u32 = 16;
/// Largest proxy count local mode runs.
pub const MAX_PROXIES: u32 = 8;

/// Flags of `wscluster-operator local`.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Nodes to start with (1 to 16).
    #[arg(long, env = "WSCLUSTER_NODES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_REPLICAS)))]
    pub nodes: u32,
    /// Proxy processes (1 to 8); clients may use any of them.
    #[arg(long, env = "WSCLUSTER_PROXIES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PROXIES)))]
    pub proxies: u32,
    /// Where the control API and the demo page listen.
    #[arg(
        long,
        env = "WSCLUSTER_CONTROL_LISTEN",
        default_value = "127.0.0.1:9080"
    )]
    pub control_listen: SocketAddr,
    /// Client port of the first proxy; proxy i listens on this port + i. 0 picks free ports.
    #[arg(long, env = "WSCLUSTER_PROXY_PORT", default_value_t = 8080)]
    pub proxy_port: u16,
    /// Where the ring authority (ring stream) listens; port 0 picks a free one.
    #[arg(long, env = "WSCLUSTER_RING_LISTEN", default_value = "127.0.0.1:0")]
    pub ring_listen: SocketAddr,
    /// Ring cluster id; also names the nodes' Redis keys and the RabbitMQ exchange.
    #[arg(long, env = "WSCLUSTER_CLUSTER_ID", default_value = "local/demo")]
    pub cluster_id: String,
    /// Redis for presence and mailboxes (default: in-memory per node).
    #[arg(long, env = "WSCLUSTER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of the nodes' Redis keys.
    #[arg(long, env = "WSCLUSTER_REDIS_PREFIX", default_value = "wscluster")]
    pub redis_prefix: String,
    /// RabbitMQ for broadcasts and reset events (default: in-memory per process).
    #[arg(long, env = "WSCLUSTER_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// A proxy config file (YAML, see docs/proxy.md) passed to every proxy.
    #[arg(long, env = "WSCLUSTER_PROXY_CONFIG")]
    pub proxy_config: Option<PathBuf>,
    /// The wscluster-node executable (default: next to this one).
    #[arg(long, env = "WSCLUSTER_NODE_BIN")]
    pub node_bin: Option<PathBuf>,
    /// The wscluster-proxy executable (default: next to this one).
    #[arg(long, env = "WSCLUSTER_PROXY_BIN")]
    pub proxy_bin: Option<PathBuf>,
    /// Directory for the children's logs (default: a new one under the temp directory).
    #[arg(long, env = "WSCLUSTER_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Seconds a scale-down waits for the leaving nodes to empty before stopping them.
    #[arg(long, env = "WSCLUSTER_DRAIN_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub drain_timeout_seconds: u64,
    /// Nodes' --grace-period-seconds (SIGTERM to exit).
    #[arg(long, env = "WSCLUSTER_NODE_GRACE_PERIOD_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub node_grace_period_seconds: u64,
}

/// Runs local mode until `shutdown` is cancelled, then stops every child and returns.
pub async fn run(args: LocalArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    wscluster_ring::contract::validate_key(&args.cluster_id)
        .ok()
        .filter(|()| args.cluster_id.split('/').count() == 2 && !args.cluster_id.contains(' '))
        .with_context(|| {
            format!(
                "--cluster-id must look like namespace/name, not {:?}",
                args.cluster_id
            )
        })?;
    let node_bin = executable(args.node_bin.as_deref(), "wscluster-node", "--node-bin")?;
    let proxy_bin = executable(args.proxy_bin.as_deref(), "wscluster-proxy", "--proxy-bin")?;
    let log_dir = match &args.log_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("wscluster-local-{}", std::process::id())),
    };
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("creating the log directory {}", log_dir.display()))?;

    let control_listener = tokio::net::TcpListener::bind(args.control_listen)
        .await
        .with_context(|| format!("binding the control API to {}", args.control_listen))?;
    let control_addr = control_listener.local_addr()?;
    let ring_listener = tokio::net::TcpListener::bind(args.ring_listen)
        .await
        .with_context(|| format!("binding the ring authority to {}", args.ring_listen))?;
    let ring_addr = ring_listener.local_addr()?;
    let mut proxy_addresses = Vec::new();
    for i in 0..args.proxies {
        let listen = if args.proxy_port == 0 {
            free_port()?
        } else {
            let port = u16::try_from(u32::from(args.proxy_port) + i)
                .context("--proxy-port + proxies exceeds 65535")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            // Fail now, clearly, rather than in a child's log.
            drop(StdListener::bind(addr).with_context(|| {
                format!("port {port} for proxy {i} is in use; pass --proxy-port 0 or another port")
            })?);
            addr
        };
        proxy_addresses.push((listen, free_port()?));
    }

    let settings = Settings {
        cluster_id: args.cluster_id.clone(),
        token: random_token(),
        nodes: args.nodes,
        max_replicas: MAX_REPLICAS,
        proxies: args.proxies,
        node_bin,
        proxy_bin,
        redis_url: args.redis_url.clone(),
        redis_prefix: args.redis_prefix.clone(),
        amqp_url: args.amqp_url.clone(),
        proxy_config: args.proxy_config.clone(),
        proxy_addresses: proxy_addresses.clone(),
        log_dir: log_dir.clone(),
        node_grace: Duration::from_secs(args.node_grace_period_seconds),
        drain_timeout: Duration::from_secs(args.drain_timeout_seconds),
        ring_addr,
        control_url: format!("http://{control_addr}"),
    };
    print_banner(&settings, control_addr)?;

    let hub = RingHub::new();
    let client = process::http_client();
    let (supervisor, view) = Supervisor::new(
        settings,
        hub,
        client.clone(),
        ring_listener,
        shutdown.clone(),
    );
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let control = control::Control {
        commands: commands_tx,
        view,
        client,
    };
    let control_task = tokio::spawn(control::serve(control_listener, control, shutdown.clone()));
    let deadline = Duration::from_secs(args.node_grace_period_seconds + 15);
    let supervisor_task = tokio::spawn(supervisor.run(commands_rx));
    tokio::pin!(supervisor_task);
    tokio::select! {
        result = &mut supervisor_task => {
            result.context("the supervisor failed")?;
            bail!("the supervisor stopped before shutdown");
        }
        () = shutdown.cancelled() => {}
    }
    tracing::info!("shutting down local mode");
    match tokio::time::timeout(deadline, supervisor_task).await {
        Ok(result) => result.context("the supervisor failed")?,
        Err(_) => bail!("children did not stop within {deadline:?}"),
    }
    control_task.abort();
    Ok(())
}

fn print_banner(settings: &Settings, control_addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        wscluster_runtime::Announcement::new(control_addr)
    )?;
    writeln!(
        out,
        "wscluster local: cluster {}, {} node(s), {} proxy(ies), mailbox {}, bus {}",
        settings.cluster_id,
        settings.nodes,
        settings.proxies,
        if settings.redis_url.is_some() {
            "redis"
        } else {
            "in-memory"
        },
        if settings.amqp_url.is_some() {
            "rabbitmq"
        } else {
            "in-memory"
        },
    )?;
    if let Some((listen, _)) = settings.proxy_addresses.first() {
        writeln!(
            out,
            "  demo page: http://{listen}/ (served through the proxy)"
        )?;
    }
    writeln!(out, "  control API and demo page: http://{control_addr}/")?;
    for (i, (listen, admin)) in settings.proxy_addresses.iter().enumerate() {
        writeln!(
            out,
            "  proxy {i}: ws://{listen}/connect/{{userId}}   http://{listen}/send?userId=…&message=…   admin http://{admin}/metrics"
        )?;
    }
    writeln!(
        out,
        "  ring authority: {}/v1/clusters/{}/ring",
        settings.ring_url(),
        settings.cluster_id
    )?;
    writeln!(
        out,
        "  logs of the children: {}",
        settings.log_dir.display()
    )?;
    writeln!(out, "Ctrl-C stops everything.")?;
    out.flush()?;
    Ok(())
}

/// A free port on 127.0.0.1: bound, read, released. A child binds it a moment later; another
/// process taking it in between makes that child fail visibly (its log says so).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = StdListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

fn executable(given: Option<&Path>, name: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .parent()
            .context("this executable has no directory")?
            .join(name),
    };
    if !path.is_file() {
        bail!(
            "{name} not found at {}: build it (cargo build -p {name}) or pass {flag}",
            path.display()
        );
    }
    Ok(path)
}

/// 128 random bits as hex: the ring stream's bearer token for this run.
fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
