//! `wscluster-operator`: the Kubernetes operator binary. See the library docs for the design.
//!
//! Subcommands: `run` (the controller), `crd` (print the CRD YAML), `rbac` (print the API
//! permissions as JSON), `local` (everything on 127.0.0.1 without Kubernetes).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// wscluster operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
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
    Local(wscluster_operator::local::LocalArgs),
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!(
                "{}",
                wscluster_operator::crd_yaml().context("rendering the CRD")?
            );
            Ok(())
        }
        Command::Rbac => {
            println!("{}", wscluster_operator::rbac::rules_json());
            Ok(())
        }
        Command::Run(args) => run(args),
        Command::Local(args) => run_local(args),
    }
}

/// How long after the first signal the process exits even if shutdown is not finished.
const HARD_DEADLINE: Duration = Duration::from_secs(20);

fn run(args: RunArgs) -> anyhow::Result<()> {
    block_on_until_signal("operator", |shutdown| async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
        let ring = tokio::net::TcpListener::bind(args.ring_listen)
            .await
            .with_context(|| format!("binding the ring stream to {}", args.ring_listen))?;
        let admin = tokio::net::TcpListener::bind(args.admin_listen)
            .await
            .with_context(|| format!("binding the admin port to {}", args.admin_listen))?;
        let config = wscluster_operator::Config {
            ring_public_url: args.ring_public_url,
            lease_name: args.lease_name,
            lease_namespace: args.lease_namespace,
            pod_name: args.pod_name,
            watch_namespace: args.watch_namespace,
        };
        wscluster_operator::run(config, client, ring, admin, shutdown).await?;
        Ok(())
    })
}

/// `local`: ring authority, proxy and nodes on 127.0.0.1 (see `docs/local.md`).
fn run_local(args: wscluster_operator::local::LocalArgs) -> anyhow::Result<()> {
    block_on_until_signal("local mode", |shutdown| {
        wscluster_operator::local::run(args, shutdown)
    })
}

/// Initialises tracing, starts the runtime, cancels the token given to `main_task` on SIGTERM
/// or SIGINT, and gives up [`HARD_DEADLINE`] after the signal if the task has not finished.
fn block_on_until_signal<F, Fut>(what: &'static str, main_task: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signal(shutdown.clone()));
        let deadline = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(HARD_DEADLINE).await;
            }
        };
        tokio::select! {
            result = main_task(shutdown) => result.with_context(|| format!("{what} stopped")),
            () = deadline => anyhow::bail!("{what}: shutdown took longer than {HARD_DEADLINE:?}"),
        }
    })
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signal(shutdown: CancellationToken) {
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
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}
