//! `wscluster-operator local`: the whole system on one machine, without Kubernetes.
//!
//! One command runs a ring authority (an in-process [`RingHub`] served on `--ring-listen`),
//! `--nodes` `wscluster-node` processes and `--proxies` `wscluster-proxy` processes on
//! 127.0.0.1, with in-memory mailboxes and bus unless `--redis-url` / `--amqp-url` are given,
//! and a control API with a demo page on `--control-listen`. Ctrl-C (or SIGTERM) stops the
//! children (SIGTERM, then SIGKILL after their grace period) and exits.
//!
//! Scaling and membership are the operator's own decision code: the supervisor runs one pass of
//! [`crate::converge::converge`] on [`platform::LocalPlatform`] after every event, so a node
//! joins when its `/readyz` answers 200, leaves when its process exits, and a scale-down drains
//! first exactly as in a cluster. The only differences are where membership comes from (child
//! processes instead of EndpointSlices) and the backends.
//!
//! Layout: [`settings`] (flags resolved, children's command lines), [`process`] (one child
//! process), [`children`] (all of them), [`platform`] (the decision core's view of them),
//! [`supervisor`] (the loop), [`view`] (`GET /api/state`), [`control`] (HTTP API and demo page,
//! whose assets are `operator/assets/`). `docs/local.md` is the user guide.
//!
//! The first line on stdout is `listening on <control address>`, so scripts and tests that pass
//! `--control-listen 127.0.0.1:0` learn the port; everything else is in `GET /api/state`.

pub mod children;
pub mod control;
pub mod platform;
pub mod process;
pub mod settings;
pub mod supervisor;
pub mod view;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wscluster_ring_stream::{KindTokens, RingHub};

use self::settings::Settings;
use self::supervisor::Supervisor;

/// Largest node count local mode runs: enough to show scaling, small enough for one laptop.
pub const MAX_REPLICAS: u32 = 16;
/// Largest proxy count local mode runs. A proxy holds two descriptors per client (client side
/// and upstream), so under a 20,000-file limit one proxy holds under 10,000 clients: 100,000
/// clients on one machine need at least 11 (docs/local.md, "100,000 clients").
pub const MAX_PROXIES: u32 = 16;

/// Flags of `wscluster-operator local`.
#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Nodes to start with (1 to 16).
    #[arg(long, env = "WSCLUSTER_NODES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_REPLICAS)))]
    pub nodes: u32,
    /// Proxy processes (1 to 16); clients may use any of them.
    #[arg(long, env = "WSCLUSTER_PROXIES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PROXIES)))]
    pub proxies: u32,
    /// Where the control API and the demo page listen.
    #[arg(
        long,
        env = "WSCLUSTER_CONTROL_LISTEN",
        default_value = "127.0.0.1:9080"
    )]
    pub control_listen: SocketAddr,
    /// Each proxy dials the nodes from its own loopback address (127.1.0.n+1), as each pod has its
    /// own IP: for runs with tens of thousands of clients, where one source address per node
    /// makes every connect() search a crowded port pool. Off by default: binding a source
    /// address takes its port at bind() time, from the half of the range free-port searches use.
    #[arg(long)]
    pub proxy_source_addresses: bool,
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
    check_cluster_id(&args.cluster_id)?;
    let listeners = Listeners::bind(&args).await?;
    let settings = settings(&args, &listeners)?;
    print_banner(&settings, listeners.control_addr)?;
    let credentials =
        control::ServerCredentials::read(&settings.api_keys_file, &settings.proxy_secret_file)
            .context("reading the run's API key and proxy secret")?;

    let client = process::http_client();
    let (supervisor, view) = Supervisor::new(
        settings,
        RingHub::new(),
        client.clone(),
        listeners.ring,
        shutdown.clone(),
    );
    let (commands_tx, commands_rx) = mpsc::channel(64);
    let page_ports = std::iter::once(listeners.control_addr.port())
        .chain(listeners.proxies.iter().map(|(listen, _)| listen.port()));
    let control = control::Control {
        commands: commands_tx,
        view,
        client,
        origins: Arc::new(control::page_origins(page_ports)),
        credentials: Arc::new(credentials),
    };
    let control_task = tokio::spawn(control::serve(listeners.control, control, shutdown.clone()));
    let deadline = Duration::from_secs(args.node_grace_period_seconds + 15);
    let result = supervise(supervisor.run(commands_rx), &shutdown, deadline).await;
    control_task.abort();
    result
}

/// Runs the supervisor until shutdown, then gives it `deadline` to stop the children.
async fn supervise(
    supervisor: impl std::future::Future<Output = ()> + Send + 'static,
    shutdown: &CancellationToken,
    deadline: Duration,
) -> anyhow::Result<()> {
    let task = tokio::spawn(supervisor);
    tokio::pin!(task);
    tokio::select! {
        result = &mut task => {
            result.context("the supervisor failed")?;
            bail!("the supervisor stopped before shutdown");
        }
        () = shutdown.cancelled() => {}
    }
    tracing::info!("shutting down local mode");
    match tokio::time::timeout(deadline, task).await {
        Ok(result) => result.context("the supervisor failed"),
        Err(_) => bail!("children did not stop within {deadline:?}"),
    }
}

/// `--cluster-id` names Redis keys and the RabbitMQ exchange: `namespace/name`, a valid key.
fn check_cluster_id(cluster_id: &str) -> anyhow::Result<()> {
    wscluster_ring::contract::validate_key(cluster_id)
        .ok()
        .filter(|()| cluster_id.split('/').count() == 2 && !cluster_id.contains(' '))
        .with_context(|| format!("--cluster-id must look like namespace/name, not {cluster_id:?}"))
}

/// Everything local mode binds or reserves before it starts a child, so a port in use fails
/// at once with a clear message rather than in a child's log.
struct Listeners {
    /// The control API and demo page.
    control: tokio::net::TcpListener,
    /// Its address (port 0 resolved).
    control_addr: SocketAddr,
    /// The ring authority.
    ring: tokio::net::TcpListener,
    /// Its address.
    ring_addr: SocketAddr,
    /// Client and admin address of each proxy.
    proxies: Vec<(SocketAddr, SocketAddr)>,
    /// Server API address of each proxy.
    proxy_apis: Vec<SocketAddr>,
    /// Admin address of each node ordinal (up to [`MAX_REPLICAS`]).
    node_admins: Vec<SocketAddr>,
}

impl Listeners {
    async fn bind(args: &LocalArgs) -> anyhow::Result<Listeners> {
        let control = tokio::net::TcpListener::bind(args.control_listen)
            .await
            .with_context(|| format!("binding the control API to {}", args.control_listen))?;
        let ring = tokio::net::TcpListener::bind(args.ring_listen)
            .await
            .with_context(|| format!("binding the ring authority to {}", args.ring_listen))?;
        let mut proxies = Vec::new();
        let mut proxy_apis = Vec::new();
        for i in 0..args.proxies {
            proxies.push((proxy_address(args.proxy_port, i)?, free_port()?));
            proxy_apis.push(free_port()?);
        }
        let node_admins = (0..MAX_REPLICAS)
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Listeners {
            proxy_apis,
            node_admins,
            control_addr: control.local_addr()?,
            control,
            ring_addr: ring.local_addr()?,
            ring,
            proxies,
        })
    }
}

/// The client address of proxy `i`: `--proxy-port` + i, checked free, or a free port for 0.
fn proxy_address(first_port: u16, i: u32) -> anyhow::Result<SocketAddr> {
    if first_port == 0 {
        return free_port();
    }
    let port =
        u16::try_from(u32::from(first_port) + i).context("--proxy-port + proxies exceeds 65535")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    drop(StdListener::bind(addr).with_context(|| {
        format!("port {port} for proxy {i} is in use; pass --proxy-port 0 or another port")
    })?);
    Ok(addr)
}

fn settings(args: &LocalArgs, listeners: &Listeners) -> anyhow::Result<Settings> {
    let log_dir = match &args.log_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("wscluster-local-{}", std::process::id())),
    };
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("creating the log directory {}", log_dir.display()))?;
    Ok(Settings {
        cluster_id: args.cluster_id.clone(),
        tokens: KindTokens::new(random_token(), random_token()),
        nodes: args.nodes,
        max_replicas: MAX_REPLICAS,
        proxies: args.proxies,
        // Children are this executable again, with the `node` and `proxy` subcommands.
        program: std::env::current_exe().context("finding this executable")?,
        redis_url: args.redis_url.clone(),
        redis_prefix: args.redis_prefix.clone(),
        amqp_url: args.amqp_url.clone(),
        proxy_config: args.proxy_config.clone(),
        proxy_addresses: listeners.proxies.clone(),
        proxy_source_addresses: args.proxy_source_addresses,
        proxy_api_addresses: listeners.proxy_apis.clone(),
        node_admin_addresses: listeners.node_admins.clone(),
        proxy_secret_file: write_secret_file(&log_dir, "proxy-secret", &random_token())?,
        api_keys_file: write_secret_file(
            &log_dir,
            "api-keys",
            &crate::resources::initial_value(crate::resources::Generated::ApiKeys, &random_token()),
        )?,
        log_dir,
        node_grace: Duration::from_secs(args.node_grace_period_seconds),
        drain_timeout: Duration::from_secs(args.drain_timeout_seconds),
        ring_addr: listeners.ring_addr,
        control_url: format!("http://{}", listeners.control_addr),
    })
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
            "  proxy {i}: ws://{listen}/connect/{{userId}}   admin http://{admin}/metrics"
        )?;
    }
    if let Some(api) = settings.proxy_api_addresses.first() {
        writeln!(
            out,
            "  server API: http://{api}/api/v1/   (Authorization: Bearer <a line of {}>)",
            settings.api_keys_file.display()
        )?;
    }
    writeln!(
        out,
        "  API keys: {}   proxy secret: {}",
        settings.api_keys_file.display(),
        settings.proxy_secret_file.display()
    )?;
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

/// Writes a secret of this run to `dir/name`, readable by this user only, and returns the path
/// children get in `--proxy-secret-file` / `--api-keys-file`.
fn write_secret_file(dir: &Path, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| writeln!(file))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// 128 random bits as hex: a secret for this run (ring stream tokens, proxy secret, API key).
fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
