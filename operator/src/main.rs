//! `wscluster-operator`: the Kubernetes operator binary. See the library docs for the design.
//!
//! Subcommands: `run` (the controller), `crd` (print the CRD YAML), `rbac` (print the API
//! permissions as JSON), `local` (everything on 127.0.0.1 without Kubernetes), and `node` and
//! `proxy`, which run exactly what `wscluster-node` and `wscluster-proxy` run (same flags), so
//! this one executable is enough for local mode: it spawns itself as its nodes and proxies.
//! `kubectl` is the kubectl plugin (`kubectl wscluster owner|ring|status`); invoked under the
//! name `kubectl-wscluster` the binary runs it directly.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use wscluster_runtime::Announcement;
use wscluster_runtime::log::LogArgs;
use wscluster_runtime::process::{self, ProcessSpec};

/// jemalloc, as in `wscluster-proxy` and for the same reason: this binary also runs the proxy
/// (`wscluster-operator proxy`, local mode's proxies), whose upgrades allocate cache-line
/// aligned blocks that glibc serves through its slow `memalign` path; jemalloc saves about
/// 9 % of the proxy's instructions and 12 % of its CPU per upgrade (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long `run` may take to stop after SIGTERM or SIGINT: the servers' grace plus the Lease
/// release.
const RUN_HARD_DEADLINE: Duration = Duration::from_secs(20);
/// Time `local` may take to stop beyond its nodes' grace period: the children's own drain and
/// local mode's wait for them (15 s) plus a margin.
const LOCAL_HARD_DEADLINE_EXTRA: Duration = Duration::from_secs(20);

/// wscluster operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// What to run.
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (needs a Kubernetes API server).
    Run(RunArgs),
    /// Print the WsCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print, as JSON, the API permissions the operator needs.
    Rbac,
    /// Run ring authority, proxy and nodes on 127.0.0.1 without Kubernetes.
    Local(LocalCli),
    /// Run a node, exactly as `wscluster-node` does (same flags).
    Node(Box<wscluster_node::Config>),
    /// Run a proxy, exactly as `wscluster-proxy` does (same flags).
    Proxy(Box<wscluster_proxy::cli::Args>),
    /// `kubectl wscluster`: owner of a key, the ring, the cluster's sync and drain status.
    /// Linked as `kubectl-wscluster` on the PATH, this binary is the kubectl plugin.
    Kubectl(wscluster_operator::plugin::PluginArgs),
}

/// The name under which this binary is the kubectl plugin.
const PLUGIN_NAME: &str = "kubectl-wscluster";

/// The command line, read as `wscluster-operator kubectl …` when invoked as the plugin.
fn command_line() -> Cli {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_stem().map(|s| s.to_owned()));
    if invoked_as.as_deref() == Some(std::ffi::OsStr::new(PLUGIN_NAME)) {
        args.insert(1, "kubectl".into());
    }
    Cli::parse_from(args)
}

/// Flags of `run`.
#[derive(Args, Debug)]
struct RunArgs {
    /// Where the ring stream listens.
    #[arg(long, env = "WSCLUSTER_RING_LISTEN", default_value = "0.0.0.0:7400")]
    ring_listen: SocketAddr,
    /// Where /healthz, /readyz and /metrics listen.
    #[arg(long, env = "WSCLUSTER_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    /// The ring stream URL nodes and proxies are told to use.
    #[arg(
        long,
        env = "WSCLUSTER_RING_PUBLIC_URL",
        default_value = "http://wscluster-operator.wscluster-system.svc:7400"
    )]
    ring_public_url: String,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "WSCLUSTER_LEASE_NAME",
        default_value = "wscluster-operator-leader"
    )]
    lease_name: String,
    /// Namespace of the Lease (usually the operator's own).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the election.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Reconcile only this namespace (default: all).
    #[arg(long, env = "WSCLUSTER_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Logging (`--log-format`).
    #[command(flatten)]
    log: LogArgs,
}

/// Flags of `local`: local mode's own and the logging flags.
#[derive(Args, Debug)]
struct LocalCli {
    /// Local mode's own flags.
    #[command(flatten)]
    args: wscluster_operator::local::LocalArgs,
    /// Logging (`--log-format`).
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    match command_line().command {
        Command::Crd => match wscluster_operator::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => process::fail(e),
        },
        Command::Rbac => {
            println!("{}", wscluster_operator::rbac::rules_json());
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(args),
        Command::Local(cli) => local(cli),
        Command::Node(config) => wscluster_node::main(*config),
        Command::Proxy(args) => wscluster_proxy::cli::main(*args),
        Command::Kubectl(args) => kubectl(args),
    }
}

/// `kubectl wscluster …`: one answer on stdout, or one `error: …` line.
fn kubectl(args: wscluster_operator::plugin::PluginArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return process::fail(e),
    };
    let answer = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
        wscluster_operator::plugin::run(client, &args).await
    });
    match answer {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => process::fail(e),
    }
}

/// `run`: connect to the API server, bind, print `listening on <ring stream> admin=<admin>`,
/// run until the signal.
fn run(args: RunArgs) -> ExitCode {
    let spec = ProcessSpec {
        name: "wscluster-operator",
        log: args.log,
        worker_threads: None,
        hard_deadline: RUN_HARD_DEADLINE,
    };
    process::run(spec, |shutdown| async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
        let ring = bind(args.ring_listen, "the ring stream").await?;
        let admin = bind(args.admin_listen, "the admin port").await?;
        Announcement::new(ring.local_addr()?)
            .with("admin", admin.local_addr()?)
            .print()
            .context("announcing the addresses on stdout")?;
        let config = wscluster_operator::Config {
            ring_public_url: args.ring_public_url,
            lease_name: args.lease_name,
            lease_namespace: args.lease_namespace,
            pod_name: args.pod_name,
            watch_namespace: args.watch_namespace,
        };
        wscluster_operator::run(config, client, ring, admin, shutdown)
            .await
            .context("operator stopped")
    })
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} to {addr}"))
}

/// `local`: ring authority, proxy and nodes on 127.0.0.1 (see `docs/local.md`).
fn local(cli: LocalCli) -> ExitCode {
    let spec = ProcessSpec {
        name: "wscluster-operator local",
        log: cli.log,
        worker_threads: None,
        hard_deadline: Duration::from_secs(cli.args.node_grace_period_seconds)
            + LOCAL_HARD_DEADLINE_EXTRA,
    };
    process::run(spec, |shutdown| async move {
        wscluster_operator::local::run(cli.args, shutdown)
            .await
            .context("local mode")
    })
}
