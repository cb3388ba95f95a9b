//! What local mode was asked for, resolved from its flags, and the command lines of its
//! children rendered from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring_stream::KindTokens;
use wscluster_runtime::flags::{self, Flag, node, proxy};

use super::children::{PROXY_STOP_GRACE, node_id};
use super::process::{ChildKind, ChildSpec};
use crate::resources::binary_reads;

/// Everything the supervisor needs to know, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Ring cluster id (`local/demo`), also the node's Redis namespace and exchange name.
    pub cluster_id: String,
    /// Ring stream bearer tokens, one per kind (only the proxy token may acknowledge as a
    /// proxy), handed to children through the environment.
    pub tokens: KindTokens,
    /// Initial node count.
    pub nodes: u32,
    /// Largest replica count the control API accepts.
    pub max_replicas: u32,
    /// Proxy process count.
    pub proxies: u32,
    /// The executable children run (this one: `… node`, `… proxy`).
    pub program: PathBuf,
    /// Passed to nodes (`--redis-url`); none means in-memory.
    pub redis_url: Option<String>,
    /// Passed to nodes (`--redis-prefix`).
    pub redis_prefix: String,
    /// Passed to nodes and proxies (`--amqp-url`); none means in-memory.
    pub amqp_url: Option<String>,
    /// Passed to proxies (`--config`).
    pub proxy_config: Option<PathBuf>,
    /// Client and admin addresses of each proxy, fixed for the run so restarts keep them.
    pub proxy_addresses: Vec<(SocketAddr, SocketAddr)>,
    /// Whether proxy n dials the nodes from its own loopback address ([`proxy_source_address`]).
    pub proxy_source_addresses: bool,
    /// Server API address of each proxy (`--api-listen`), fixed for the run.
    pub proxy_api_addresses: Vec<SocketAddr>,
    /// Admin address of each node ordinal (`--admin-listen`), fixed for the run.
    pub node_admin_addresses: Vec<SocketAddr>,
    /// The run's proxy secret (`--proxy-secret-file`, proxies and nodes), in the temp dir.
    pub proxy_secret_file: PathBuf,
    /// The run's API keys, one per line (`--api-keys-file`, proxies and nodes).
    pub api_keys_file: PathBuf,
    /// Where children's logs go.
    pub log_dir: PathBuf,
    /// Nodes' `--grace-period-seconds`.
    pub node_grace: Duration,
    /// How long a drain may wait for the leaving nodes to empty.
    pub drain_timeout: Duration,
    /// Where the ring authority listens.
    pub ring_addr: SocketAddr,
    /// The control API's (and demo page's) base URL.
    pub control_url: String,
}

/// The loopback address proxy `index` dials the nodes from: 127.1.0.1, 127.1.0.2, …, as each
/// proxy pod has its own IP. Sharing 127.0.0.1, every proxy's connections to one node would
/// draw on one pool of ports, and `connect()` searches it linearly: at 100,000 clients that
/// took the proxies most of the machine's CPU (docs/local.md, "100,000 clients").
fn proxy_source_address(index: u32) -> std::net::Ipv4Addr {
    let [_, _, high, low] = index.saturating_add(1).to_be_bytes();
    std::net::Ipv4Addr::new(127, 1, high, low)
}

impl Settings {
    /// The ring stream URL children use.
    pub fn ring_url(&self) -> String {
        format!("http://{}", self.ring_addr)
    }

    /// The fallback ring file (`ring.json` in the run directory): the supervisor writes every
    /// ring it publishes there, and children read it beside the stream (`--ring-file`), so a
    /// child started while the authority is down routes on the last ring, as a pod mounting the
    /// operator's ring ConfigMap does.
    pub fn ring_file(&self) -> PathBuf {
        self.log_dir.join("ring.json")
    }

    /// The environment a child of `kind` gets: its kind's ring stream token (never on a
    /// command line, where `ps` would show it).
    fn child_env(&self, kind: SubscriberKind) -> Vec<(String, String)> {
        let token = match kind {
            SubscriberKind::Proxy => &self.tokens.proxy,
            SubscriberKind::Node => &self.tokens.node,
        };
        let (name, value) = flags::RING_TOKEN.env_var(token.clone().unwrap_or_default());
        vec![(name.to_string(), value)]
    }

    /// How node `ordinal` is started: `<this executable> node <flags>`.
    pub fn node_spec(&self, ordinal: u32, generation: u64) -> ChildSpec {
        let mut args = CommandLine::new("node");
        args.push(node::LISTEN, "127.0.0.1:0")
            .push(node::ID, &node_id(ordinal))
            .push(node::CLUSTER_ID, &self.cluster_id)
            .push(node::RING_URL, &self.ring_url())
            .push(node::RING_FILE, &self.ring_file().display().to_string())
            .push(
                node::GRACE_PERIOD_SECONDS,
                &self.node_grace.as_secs().to_string(),
            );
        if let Some(url) = &self.redis_url {
            args.push(node::REDIS_URL, url)
                .push(node::REDIS_PREFIX, &self.redis_prefix);
        }
        if let Some(url) = &self.amqp_url {
            args.push(node::AMQP_URL, url);
        }
        let admin = self.node_admin(ordinal);
        args.push_if_read(node::ALL, flags::PROXY_SECRET_FILE, &self.secret_path())
            .push_if_read(node::ALL, flags::API_KEYS_FILE, &self.keys_path());
        if let Some(admin) = admin {
            args.push_if_read(node::ALL, flags::ADMIN_LISTEN, &admin.to_string());
        }
        // Once the node serves an admin port, its health and count live there.
        let probe_base = match admin {
            Some(admin) if binary_reads(node::ALL, flags::ADMIN_LISTEN) => {
                format!("http://{admin}")
            }
            _ => "http://{address}".to_string(),
        };
        ChildSpec {
            kind: ChildKind::Node(ordinal),
            generation,
            program: self.program.clone(),
            args: args.0,
            env: self.child_env(SubscriberKind::Node),
            log_file: self.log_dir.join(format!("{}.log", node_id(ordinal))),
            known_address: None,
            readyz_url: format!("{probe_base}/readyz"),
            count_url: Some(format!("{probe_base}/count")),
            grace: self.node_grace + Duration::from_secs(2),
        }
    }

    /// How proxy `index` is started, if there is such a proxy: `<this executable> proxy <flags>`.
    pub fn proxy_spec(&self, index: u32, generation: u64) -> Option<ChildSpec> {
        let &(listen, admin) = self.proxy_addresses.get(usize::try_from(index).ok()?)?;
        let id = ChildKind::Proxy(index).id();
        let mut args = CommandLine::new("proxy");
        args.push(proxy::LISTEN, &listen.to_string())
            .push(proxy::ADMIN_LISTEN, &admin.to_string())
            .push(proxy::ID, &id)
            .push(proxy::CLUSTER_ID, &self.cluster_id)
            .push(proxy::RING_URL, &self.ring_url())
            .push(proxy::RING_FILE, &self.ring_file().display().to_string());
        // Keyless plain HTTP (the demo page and its API) reaches the control server through
        // the proxy, so the page is served at the proxy's root.
        if let Some(control) = self.control_url.strip_prefix("http://") {
            args.push(proxy::FALLBACK_UPSTREAM, control);
        }
        if let Some(path) = &self.proxy_config {
            args.push(proxy::CONFIG, &path.display().to_string());
        }
        if let Some(url) = &self.amqp_url {
            args.push(proxy::AMQP_URL, url);
        }
        args.push_if_read(proxy::ALL, flags::PROXY_SECRET_FILE, &self.secret_path())
            .push_if_read(proxy::ALL, flags::API_KEYS_FILE, &self.keys_path());
        if let Some(api) = self.proxy_api_addresses.get(usize::try_from(index).ok()?) {
            args.push_if_read(proxy::ALL, flags::API_LISTEN, &api.to_string());
        }
        if self.proxy_source_addresses {
            let source = proxy_source_address(index).to_string();
            args.push_if_read(proxy::ALL, flags::UPSTREAM_SOURCE_ADDRESS, &source);
        }
        Some(ChildSpec {
            kind: ChildKind::Proxy(index),
            generation,
            program: self.program.clone(),
            args: args.0,
            env: self.child_env(SubscriberKind::Proxy),
            log_file: self.log_dir.join(format!("{id}.log")),
            known_address: Some(admin.to_string()),
            readyz_url: "http://{address}/readyz".to_string(),
            count_url: None,
            grace: PROXY_STOP_GRACE,
        })
    }
}

impl Settings {
    fn node_admin(&self, ordinal: u32) -> Option<SocketAddr> {
        self.node_admin_addresses
            .get(usize::try_from(ordinal).ok()?)
            .copied()
    }

    fn secret_path(&self) -> String {
        self.proxy_secret_file.display().to_string()
    }

    fn keys_path(&self) -> String {
        self.api_keys_file.display().to_string()
    }
}

/// A child's command line: its subcommand, then flags rendered from the binaries' own flag
/// definitions (`wscluster_runtime::flags`), so a renamed flag cannot drift.
struct CommandLine(Vec<String>);

impl CommandLine {
    fn new(subcommand: &str) -> CommandLine {
        CommandLine(vec![subcommand.to_string()])
    }

    fn push(&mut self, flag: Flag, value: &str) -> &mut CommandLine {
        self.0.push(flag.dashed());
        self.0.push(value.to_string());
        self
    }

    /// Pushes `flag value` once the child's parser (`binary`, its `flags::*::ALL`) reads the
    /// flag: the same integration gate as the operator's ([`binary_reads`]).
    fn push_if_read(&mut self, binary: &[Flag], flag: Flag, value: &str) -> &mut CommandLine {
        if binary_reads(binary, flag) {
            self.push(flag, value);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings() -> Settings {
        Settings {
            cluster_id: "local/demo".into(),
            tokens: KindTokens::new("pr0xy".into(), "n0de".into()),
            nodes: 3,
            max_replicas: 16,
            proxies: 1,
            program: PathBuf::from("/bin/wscluster-operator"),
            redis_url: Some("redis://127.0.0.1:6379".into()),
            redis_prefix: "p".into(),
            amqp_url: Some("amqp://127.0.0.1:5672/%2f".into()),
            proxy_config: Some(PathBuf::from("/tmp/proxy.yaml")),
            proxy_addresses: vec![(
                "127.0.0.1:8080".parse().expect("addr"),
                "127.0.0.1:9090".parse().expect("addr"),
            )],
            proxy_source_addresses: true,
            proxy_api_addresses: vec!["127.0.0.1:8081".parse().expect("addr")],
            node_admin_addresses: (0..16)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 9100 + i)))
                .collect(),
            proxy_secret_file: PathBuf::from("/tmp/run/proxy-secret"),
            api_keys_file: PathBuf::from("/tmp/run/api-keys"),
            log_dir: PathBuf::from("/tmp/logs"),
            node_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            ring_addr: "127.0.0.1:7400".parse().expect("addr"),
            control_url: "http://127.0.0.1:9080".into(),
        }
    }

    #[test]
    fn a_node_command_line_parses_with_the_nodes_own_parser() {
        let spec = settings().node_spec(2, 1);
        assert_eq!(spec.args[0], "node");
        let config = wscluster_node::Config::try_parse_from(
            std::iter::once("wscluster-node").chain(spec.args[1..].iter().map(String::as_str)),
        )
        .expect("the node parses what local mode renders");
        assert_eq!(config.id.as_deref(), Some("local-node-2"));
        assert_eq!(config.cluster_id, "local/demo");
        assert_eq!(config.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(config.grace_period_seconds, 5);
        assert_eq!(
            spec.env,
            [("WSCLUSTER_RING_TOKEN".to_string(), "n0de".to_string())]
        );
    }

    #[test]
    fn a_proxy_command_line_parses_with_the_proxys_own_parser() {
        let spec = settings().proxy_spec(0, 1).expect("proxy 0 exists");
        assert_eq!(spec.args[0], "proxy");
        let args = wscluster_proxy::cli::Args::try_parse_from(
            std::iter::once("wscluster-proxy").chain(spec.args[1..].iter().map(String::as_str)),
        )
        .expect("the proxy parses what local mode renders");
        let rendered = format!("{args:?}");
        for expected in [
            "127.0.0.1:8080",
            "127.0.0.1:9090",
            "local-proxy-0",
            "127.0.0.1:9080",
        ] {
            assert!(rendered.contains(expected), "{expected} in {rendered}");
        }
        assert_eq!(
            spec.env,
            [("WSCLUSTER_RING_TOKEN".to_string(), "pr0xy".to_string())],
            "a proxy gets the proxy token, never the node token"
        );
        assert!(settings().proxy_spec(1, 1).is_none(), "there is one proxy");
        assert_eq!(
            value_of(&spec.args, flags::UPSTREAM_SOURCE_ADDRESS).as_deref(),
            Some("127.1.0.1"),
            "each proxy dials the nodes from its own loopback address"
        );
    }

    #[test]
    fn every_proxy_gets_its_own_loopback_source_address() {
        let addresses: std::collections::BTreeSet<_> = (0..300).map(proxy_source_address).collect();
        assert_eq!(addresses.len(), 300);
        assert!(addresses.iter().all(|a| a.is_loopback()));
    }

    /// The value of `flag` on a command line, if present.
    fn value_of(args: &[String], flag: Flag) -> Option<String> {
        let dashed = flag.dashed();
        let at = args.iter().position(|a| *a == dashed)?;
        args.get(at + 1).cloned()
    }

    #[test]
    fn children_get_the_runs_secret_files_and_ports_once_their_parsers_read_the_flags() {
        let settings = settings();
        let node = settings.node_spec(2, 1);
        let node_expected = [
            (flags::PROXY_SECRET_FILE, "/tmp/run/proxy-secret"),
            (flags::API_KEYS_FILE, "/tmp/run/api-keys"),
            (flags::ADMIN_LISTEN, "127.0.0.1:9102"),
        ];
        for (flag, value) in node_expected {
            let want = binary_reads(node::ALL, flag).then(|| value.to_string());
            assert_eq!(value_of(&node.args, flag), want, "node {}", flag.long);
        }
        let admin_on = binary_reads(node::ALL, flags::ADMIN_LISTEN);
        assert_eq!(node.readyz_url.contains("127.0.0.1:9102"), admin_on);
        let proxy = settings.proxy_spec(0, 1).expect("proxy 0");
        let proxy_expected = [
            (flags::PROXY_SECRET_FILE, "/tmp/run/proxy-secret"),
            (flags::API_KEYS_FILE, "/tmp/run/api-keys"),
            (flags::API_LISTEN, "127.0.0.1:8081"),
        ];
        for (flag, value) in proxy_expected {
            let want = binary_reads(proxy::ALL, flag).then(|| value.to_string());
            assert_eq!(value_of(&proxy.args, flag), want, "proxy {}", flag.long);
        }
        // Secrets travel as files or environment, never as a command-line value.
        for args in [&node.args, &proxy.args] {
            assert!(
                !args
                    .iter()
                    .any(|a| a.contains("pr0xy") || a.contains("n0de"))
            );
        }
    }
}
