//! What local mode was asked for, resolved from its flags, and the command lines of its
//! children rendered from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::children::{PROXY_STOP_GRACE, node_id};
use super::process::{ChildKind, ChildSpec};

/// Everything the supervisor needs to know, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Ring cluster id (`local/demo`), also the node's Redis namespace and exchange name.
    pub cluster_id: String,
    /// Bearer token of the ring stream, handed to children through the environment.
    pub token: String,
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

impl Settings {
    /// The ring stream URL children use.
    pub fn ring_url(&self) -> String {
        format!("http://{}", self.ring_addr)
    }

    /// The environment every child gets: the ring stream's token (never on a command line,
    /// where `ps` would show it).
    fn child_env(&self) -> Vec<(String, String)> {
        vec![("WSCLUSTER_RING_TOKEN".to_string(), self.token.clone())]
    }

    /// How node `ordinal` is started.
    pub fn node_spec(&self, ordinal: u32, generation: u64) -> ChildSpec {
        let mut args = strings(&[
            "node",
            "--listen",
            "127.0.0.1:0",
            "--id",
            &node_id(ordinal),
            "--cluster-id",
            &self.cluster_id,
            "--ring-url",
            &self.ring_url(),
            "--grace-period-seconds",
            &self.node_grace.as_secs().to_string(),
        ]);
        if let Some(url) = &self.redis_url {
            args.extend(strings(&[
                "--redis-url",
                url,
                "--redis-prefix",
                &self.redis_prefix,
            ]));
        }
        if let Some(url) = &self.amqp_url {
            args.extend(strings(&["--amqp-url", url]));
        }
        ChildSpec {
            kind: ChildKind::Node(ordinal),
            generation,
            program: self.program.clone(),
            args,
            env: self.child_env(),
            log_file: self.log_dir.join(format!("{}.log", node_id(ordinal))),
            known_address: None,
            readyz_url: "http://{address}/readyz".to_string(),
            count_url: Some("http://{address}/count".to_string()),
            grace: self.node_grace + Duration::from_secs(2),
        }
    }

    /// How proxy `index` is started, if there is such a proxy.
    pub fn proxy_spec(&self, index: u32, generation: u64) -> Option<ChildSpec> {
        let &(listen, admin) = self.proxy_addresses.get(usize::try_from(index).ok()?)?;
        let id = ChildKind::Proxy(index).id();
        let mut args = strings(&[
            "proxy",
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--id",
            &id,
            "--cluster-id",
            &self.cluster_id,
            "--ring-url",
            &self.ring_url(),
        ]);
        // Keyless plain HTTP (the demo page and its API) reaches the control server through
        // the proxy, so the page is served at the proxy's root.
        if let Some(control) = self.control_url.strip_prefix("http://") {
            args.extend(strings(&["--fallback-upstream", control]));
        }
        if let Some(path) = &self.proxy_config {
            args.extend(strings(&["--config", &path.display().to_string()]));
        }
        if let Some(url) = &self.amqp_url {
            args.extend(strings(&["--amqp-url", url]));
        }
        Some(ChildSpec {
            kind: ChildKind::Proxy(index),
            generation,
            program: self.program.clone(),
            args,
            env: self.child_env(),
            log_file: self.log_dir.join(format!("{id}.log")),
            known_address: Some(admin.to_string()),
            readyz_url: "http://{address}/readyz".to_string(),
            count_url: None,
            grace: PROXY_STOP_GRACE,
        })
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}
