//! The proxy process: its flags ([`Args`], each also read from `WSCLUSTER_<FLAG>`; names from
//! [`wscluster_runtime::flags::proxy`]), what they resolve to ([`Args::settings`]), and the whole
//! process run from them ([`main`]), used by `wscluster-proxy` and by `wscluster-operator proxy`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wscluster_runtime::Announcement;
use wscluster_runtime::ca::{CaBundle, CaError};
use wscluster_runtime::credentials::{CredentialError, WatchedCredentials};
use wscluster_runtime::flags::{self, proxy as flag};
use wscluster_runtime::log::LogArgs;
use wscluster_runtime::process::{self, ProcessSpec};
use wscluster_runtime::ring_args::{RingArgs, RingArgsError};

use crate::Settings;
use crate::config::ProxyConfig;
use crate::tls::{CertFiles, SniCert, Tls, TlsError, TlsSpec};

/// Time allowed after the drain for the drain resets to complete before the process gives up:
/// the proxy waits `drainTimeoutSeconds`, resets the rest, then lingers a few seconds.
pub const HARD_DEADLINE_EXTRA: Duration = Duration::from_secs(15);

/// Data-plane proxy for wscluster: routes WebSocket upgrades and HTTP by consistent hash of a
/// business key and resets the connections whose owner changes.
#[derive(Debug, Clone, Parser)]
#[command(name = "wscluster-proxy", version, about)]
pub struct Args {
    /// Address for client connections.
    #[arg(long = flag::LISTEN.long, env = flag::LISTEN.env, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long = flag::ADMIN_LISTEN.long, env = flag::ADMIN_LISTEN.env, default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Subscriber id reported to the ring stream (default: POD_NAME, else the hostname).
    #[arg(long = flag::ID.long, env = flag::ID.env)]
    pub id: Option<String>,
    /// The cluster served, namespace/name.
    #[arg(long = flag::CLUSTER_ID.long, env = flag::CLUSTER_ID.env, default_value = "default/chat")]
    pub cluster_id: String,
    /// The YAML config file (optional; every field has a default), followed while running:
    /// a valid change applies without a restart (docs/proxy.md, "Live configuration").
    #[arg(long = flag::CONFIG.long, env = flag::CONFIG.env)]
    pub config: Option<PathBuf>,
    /// The ring source: `--ring-url` with its token, or `--ring-file` (exactly one).
    #[command(flatten)]
    pub ring: RingArgs,
    /// RabbitMQ URL; when set, reset events are published for the old owners.
    #[arg(long = flag::AMQP_URL.long, env = flag::AMQP_URL.env, hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// PEM CA bundle trusted for an `amqps://` broker, besides the platform's roots.
    #[arg(long = flag::AMQP_CA_FILE.long, env = flag::AMQP_CA_FILE.env, requires = "amqp_url")]
    pub amqp_ca_file: Option<PathBuf>,
    /// `host:port` that plain HTTP requests without a key are forwarded to instead of being
    /// refused with 400 (local mode serves its demo page this way). WebSocket upgrades always
    /// need a key.
    #[arg(long = flag::FALLBACK_UPSTREAM.long, env = flag::FALLBACK_UPSTREAM.env, value_parser = parse_upstream)]
    pub fallback_upstream: Option<String>,
    /// Local IP address the connections to members leave from (an address of this host). Every
    /// connection to one member from one source address needs its own port, and Linux's
    /// `connect()` searches the port range linearly, so many proxies sharing 127.0.0.1 pay
    /// milliseconds of kernel time per upgrade once a member holds ~10,000 of their
    /// connections; local mode gives each proxy its own loopback address. Default: the
    /// kernel's choice.
    #[arg(long = flag::UPSTREAM_SOURCE_ADDRESS.long, env = flag::UPSTREAM_SOURCE_ADDRESS.env)]
    pub upstream_source_address: Option<IpAddr>,
    /// Worker threads (default: one per CPU). 1 runs a single-threaded event loop, like one
    /// NGINX worker, which is the cheapest per message when one core is enough.
    #[arg(long = flag::WORKER_THREADS.long, env = flag::WORKER_THREADS.env, value_parser = parse_worker_threads)]
    pub worker_threads: Option<NonZeroUsize>,
    /// File holding the cluster's proxy secret (one per line; the first is sent): set on
    /// every request to a member so it can trust the key this proxy sets. Re-read when it
    /// changes. Without it members cannot verify the proxy (dev mode).
    #[arg(long = flag::PROXY_SECRET_FILE.long, env = flag::PROXY_SECRET_FILE.env)]
    pub proxy_secret_file: Option<PathBuf>,
    /// Address of the server API (`/api/v1/...`, `Authorization: Bearer <API key>`); off
    /// unless given. Needs --api-keys-file.
    #[arg(long = flag::API_LISTEN.long, env = flag::API_LISTEN.env, requires = "api_keys_file")]
    pub api_listen: Option<SocketAddr>,
    /// File holding the server API's keys, one per line (several at once for rotation);
    /// re-read when it changes.
    #[arg(long = flag::API_KEYS_FILE.long, env = flag::API_KEYS_FILE.env)]
    pub api_keys_file: Option<PathBuf>,
    /// TLS settings (`--tls-listen`, `--tls-cert-file`, `--tls-key-file`).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Logging (`--log-format`).
    #[command(flatten)]
    pub log: LogArgs,
}

/// The TLS listener's flags: off unless `--tls-listen` is given, which needs both files.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Address of the TLS (`wss://`) listener, beside the plain `--listen` (for example
    /// 0.0.0.0:8443); off unless given. Needs --tls-cert-file and --tls-key-file.
    #[arg(
        long = flag::TLS_LISTEN.long,
        env = flag::TLS_LISTEN.env,
        requires_all = ["tls_cert_file", "tls_key_file"]
    )]
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain, end-entity first (a TLS Secret's `tls.crt`); re-read when it
    /// changes, for new handshakes.
    #[arg(long = flag::TLS_CERT_FILE.long, env = flag::TLS_CERT_FILE.env, requires = "tls_listen")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (`tls.key`); re-read with it.
    #[arg(long = flag::TLS_KEY_FILE.long, env = flag::TLS_KEY_FILE.env, requires = "tls_listen")]
    pub tls_key_file: Option<PathBuf>,
    /// Further certificates chosen by SNI: directories each holding a TLS Secret's `tls.crt`
    /// and `tls.key`, served to clients that ask for a DNS name in that certificate
    /// (`*.example.com` covers one label); others get the default. Repeat the flag, or
    /// separate with commas in the variable. Re-read with the default.
    #[arg(
        long = flag::TLS_SNI_CERT.long,
        env = flag::TLS_SNI_CERT.env,
        value_delimiter = ',',
        requires = "tls_listen"
    )]
    pub tls_sni_cert: Vec<PathBuf>,
}

impl TlsArgs {
    /// The TLS listener's address and its loaded certificates; `None` without `--tls-listen`.
    ///
    /// # Errors
    ///
    /// A certificate or key that cannot be read, does not match, or is out of its validity
    /// period; the message names the file.
    pub fn load(&self) -> Result<Option<(SocketAddr, Tls)>, TlsError> {
        let (Some(addr), Some(cert_file), Some(key_file)) =
            (self.tls_listen, &self.tls_cert_file, &self.tls_key_file)
        else {
            return Ok(None);
        };
        let spec = TlsSpec {
            default: CertFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            },
            sni: self.tls_sni_cert.iter().map(|dir| sni_entry(dir)).collect(),
        };
        Ok(Some((addr, Tls::new(spec)?)))
    }
}

/// An SNI certificate from a mounted TLS Secret: its names come from the certificate.
fn sni_entry(dir: &std::path::Path) -> SniCert {
    SniCert {
        server_names: Vec::new(),
        files: CertFiles {
            cert_file: dir.join(TLS_SECRET_CERT),
            key_file: dir.join(TLS_SECRET_KEY),
        },
    }
}

/// The certificate chain's file in a mounted `kubernetes.io/tls` Secret.
pub const TLS_SECRET_CERT: &str = "tls.crt";
/// The private key's file in a mounted `kubernetes.io/tls` Secret.
pub const TLS_SECRET_KEY: &str = "tls.key";

/// What the flags resolve to: the settings of [`crate::run`] and the addresses to bind.
#[derive(Debug, Clone)]
pub struct Start {
    /// Everything [`crate::run`] needs besides its listeners.
    pub settings: Settings,
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--admin-listen`.
    pub admin_listen: SocketAddr,
    /// `--api-listen`.
    pub api_listen: Option<SocketAddr>,
    /// `--tls-listen` and its certificates, loaded and checked.
    pub tls: Option<(SocketAddr, Tls)>,
}

/// Why the proxy process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `--ring-url` and `--ring-file` are both absent.
    #[error("give one of --{} or --{}", flags::RING_URL.long, flags::RING_FILE.long)]
    NoRingSource,
    /// The ring flags are unusable (a missing or empty token, say).
    #[error(transparent)]
    Ring(#[from] RingArgsError),
    /// The config file is unusable (the error says why).
    #[error(transparent)]
    Config(crate::error::Error),
    /// A secret file (`--proxy-secret-file`, `--api-keys-file`) is unusable.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// `--amqp-ca-file` is unusable.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The TLS certificate or key (`--tls-cert-file`, `--tls-key-file`) is
    /// unusable; the message names the file.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address line could not be written to stdout.
    #[error("cannot announce the addresses on stdout")]
    Announce(#[source] std::io::Error),
    /// The proxy failed while running.
    #[error("proxy failed")]
    Run(#[source] crate::error::Error),
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

/// A worker thread count of at least 1.
fn parse_worker_threads(value: &str) -> Result<NonZeroUsize, String> {
    value
        .parse::<usize>()
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| format!("{value:?} is not a thread count of at least 1"))
}

/// `POD_NAME`, else the hostname, else a name with the process id.
fn default_id() -> String {
    std::env::var(flags::POD_NAME_ENV)
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

impl Args {
    /// Reads the config file and the token and checks both, before anything binds.
    ///
    /// # Errors
    ///
    /// No ring source, an unusable token, or an invalid config file.
    pub fn settings(self) -> Result<Start, ProcessError> {
        let config = match &self.config {
            Some(path) => ProxyConfig::load(path).map_err(ProcessError::Config)?,
            None => ProxyConfig::default(),
        };
        config.validate().map_err(ProcessError::Config)?;
        let ring = self.ring.source()?.ok_or(ProcessError::NoRingSource)?;
        let open = |path: &Option<PathBuf>| path.as_deref().map(WatchedCredentials::open);
        let proxy_secret = open(&self.proxy_secret_file).transpose()?;
        let api_keys = open(&self.api_keys_file).transpose()?;
        let amqp_ca = self
            .amqp_ca_file
            .as_deref()
            .map(|path| CaBundle::load(&flag::AMQP_CA_FILE.dashed(), path))
            .transpose()?;
        let tls = self.tls.load()?;
        let settings = Settings {
            id: self.id.unwrap_or_else(default_id),
            cluster_id: self.cluster_id,
            config,
            config_file: self.config.clone(),
            ring,
            amqp_url: self.amqp_url,
            amqp_ca,
            fallback_upstream: self.fallback_upstream,
            upstream_source: self.upstream_source_address,
            proxy_secret,
            api_keys,
        };
        Ok(Start {
            settings,
            listen: self.listen,
            admin_listen: self.admin_listen,
            api_listen: self.api_listen,
            tls,
        })
    }
}

/// The whole `wscluster-proxy` process from parsed flags (also `wscluster-operator proxy`):
/// the settings, logging, the runtime (`--worker-threads`), SIGTERM/SIGINT, the listeners,
/// `listening on <client addr> admin=<admin addr>[ api=<api addr>][ tls=<tls addr>]` as the first line of stdout, and the proxy
/// until the signal and its drain (`drainTimeoutSeconds` plus 15 s at most). Any failure is one
/// `error: …` line on stderr and exit code 1.
pub fn main(args: Args) -> ExitCode {
    let log = args.log;
    let worker_threads = args.worker_threads;
    let start = match args.settings() {
        Ok(start) => start,
        Err(e) => return process::fail(e),
    };
    let spec = ProcessSpec {
        name: "wscluster-proxy",
        log,
        worker_threads,
        hard_deadline: Duration::from_secs(start.settings.config.drain_timeout_seconds)
            + HARD_DEADLINE_EXTRA,
    };
    process::run(spec, |shutdown| run_process(start, shutdown))
}

/// [`main`]'s work: bind, announce, run.
async fn run_process(start: Start, shutdown: CancellationToken) -> Result<(), ProcessError> {
    let (client, listen) = bind(start.listen).await?;
    let (admin, admin_listen) = bind(start.admin_listen).await?;
    let mut announcement = Announcement::new(listen).with("admin", admin_listen);
    let api = match start.api_listen {
        Some(addr) => {
            let (api, api_listen) = bind(addr).await?;
            announcement = announcement.with("api", api_listen);
            Some(api)
        }
        None => None,
    };
    let tls = match start.tls {
        Some((addr, tls)) => {
            let (listener, tls_listen) = bind(addr).await?;
            announcement = announcement.with("tls", tls_listen);
            Some(crate::TlsListener { listener, tls })
        }
        None => None,
    };
    announcement.print().map_err(ProcessError::Announce)?;
    let listeners = crate::Listeners {
        client,
        admin,
        api,
        tls,
    };
    crate::run(start.settings, listeners, shutdown)
        .await
        .map_err(ProcessError::Run)
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ProcessError> {
    let failed = |source| ProcessError::Bind { addr, source };
    let listener = wscluster_runtime::serve::bind(addr).map_err(failed)?;
    let bound = listener.local_addr().map_err(failed)?;
    Ok((listener, bound))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use crate::RingSource;

    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_parser_reads_exactly_the_defined_proxy_flags() {
        let problems = flags::parser_mismatches(&Args::command(), flag::ALL);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_command_line_rendered_from_the_definitions_parses_to_its_values() {
        let rendered = [
            flag::LISTEN.arg("127.0.0.1:0"),
            flag::ADMIN_LISTEN.arg("127.0.0.1:1"),
            flag::ID.arg("chat-proxy-1"),
            flag::CLUSTER_ID.arg("prod/chat"),
            flag::RING_URL.arg("http://127.0.0.1:7400"),
            flag::RING_TOKEN.arg(" t0ken\n"),
            flag::AMQP_URL.arg("amqp://127.0.0.1:5672"),
            flag::FALLBACK_UPSTREAM.arg("127.0.0.1:9080"),
            flag::WORKER_THREADS.arg("1"),
        ];
        let args = std::iter::once(OsString::from("wscluster-proxy"))
            .chain(rendered.into_iter().flatten());
        let start = Args::try_parse_from(args)
            .expect("parses")
            .settings()
            .expect("valid");
        assert_eq!(start.listen, "127.0.0.1:0".parse().expect("addr"));
        assert_eq!(start.admin_listen, "127.0.0.1:1".parse().expect("addr"));
        let s = start.settings;
        assert_eq!(
            (s.id.as_str(), s.cluster_id.as_str()),
            ("chat-proxy-1", "prod/chat")
        );
        assert!(
            matches!(&s.ring, RingSource::Stream { url, token, .. } if url == "http://127.0.0.1:7400" && token == "t0ken"),
            "{:?}",
            s.ring
        );
        assert_eq!(s.amqp_url.as_deref(), Some("amqp://127.0.0.1:5672"));
        assert_eq!(s.fallback_upstream.as_deref(), Some("127.0.0.1:9080"));
    }

    #[test]
    fn flag_errors_are_named() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("wscluster-proxy").chain(args.iter().copied()))
        };
        let no_ring = parse(&[]).expect("parses").settings();
        assert_eq!(
            no_ring.expect_err("no ring").to_string(),
            "give one of --ring-url or --ring-file"
        );
        let no_token = parse(&["--ring-url", "http://h:1"])
            .expect("parses")
            .settings();
        assert_eq!(
            no_token.expect_err("no token").to_string(),
            "--ring-url needs --ring-token-file or --ring-token"
        );
        let zero = parse(&["--ring-file", "r.json", "--worker-threads", "0"]);
        assert!(
            zero.expect_err("0 threads")
                .to_string()
                .contains("at least 1")
        );
        assert!(parse(&["--fallback-upstream", "no-port"]).is_err());
        let source = parse(&[
            "--ring-file",
            "r.json",
            "--upstream-source-address",
            "127.1.0.x",
        ]);
        assert!(
            source
                .expect_err("not an address")
                .to_string()
                .contains("--upstream-source-address")
        );
        let no_keys = parse(&["--ring-file", "r.json", "--api-listen", "127.0.0.1:0"]);
        assert!(
            no_keys
                .expect_err("an API port without keys")
                .to_string()
                .contains("--api-keys-file"),
            "the server API never starts without its keys"
        );
        let missing = parse(&[
            "--ring-file",
            "r.json",
            "--proxy-secret-file",
            "/nonexistent/s",
        ])
        .expect("parses")
        .settings();
        assert!(
            missing.is_err(),
            "a proxy never starts without its secret file"
        );
    }
}
