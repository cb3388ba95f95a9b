//! Command-line flags (each also read from a `WSCLUSTER_*` environment variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// How the node is configured. The flag set is a cross-component contract (the operator and the
/// Helm chart set these through the environment), documented in `docs/node.md`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wscluster-node",
    version,
    about = "Reference stateful WebSocket server for wscluster"
)]
pub struct Config {
    /// Address to serve WebSocket, the HTTP API, /healthz, /readyz and /metrics on.
    #[arg(long, env = "WSCLUSTER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// This node's member id on the ring (default: env POD_NAME, else the hostname).
    #[arg(long, env = "WSCLUSTER_ID")]
    pub id: Option<String>,
    /// Cluster id `namespace/name`; namespaces Redis keys and names the RabbitMQ exchange.
    #[arg(long, env = "WSCLUSTER_CLUSTER_ID", default_value = "default/chat")]
    pub cluster_id: String,
    /// Redis URL for presence and mailboxes; absent means in-memory (not durable).
    #[arg(long, env = "WSCLUSTER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key the node writes.
    #[arg(long, env = "WSCLUSTER_REDIS_PREFIX", default_value = "wscluster")]
    pub redis_prefix: String,
    /// RabbitMQ URL for broadcasts and reset events; absent means an in-process bus.
    #[arg(long, env = "WSCLUSTER_AMQP_URL")]
    pub amqp_url: Option<String>,
    /// Base URL of the ring stream (the operator), e.g. `http://wscluster-operator:7400`.
    #[arg(long, env = "WSCLUSTER_RING_URL", conflicts_with = "ring_file")]
    pub ring_url: Option<String>,
    /// File holding the bearer token for the ring stream.
    #[arg(long, env = "WSCLUSTER_RING_TOKEN_FILE")]
    pub ring_token_file: Option<PathBuf>,
    /// Bearer token for the ring stream (prefer --ring-token-file).
    #[arg(long, env = "WSCLUSTER_RING_TOKEN", hide_env_values = true)]
    pub ring_token: Option<String>,
    /// A JSON ring snapshot file, re-read when it changes. Without --ring-url or --ring-file
    /// the node owns every key (standalone).
    #[arg(long, env = "WSCLUSTER_RING_FILE")]
    pub ring_file: Option<PathBuf>,
    /// Messages kept per user mailbox (older ones are trimmed).
    #[arg(long, env = "WSCLUSTER_MAILBOX_MAX_LEN", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub mailbox_max_len: u64,
    /// Seconds a mailbox lives after its last message.
    #[arg(long, env = "WSCLUSTER_MAILBOX_TTL_SECONDS", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub mailbox_ttl_seconds: u64,
    /// Seconds a presence entry lives unless refreshed (refreshed every third of this).
    #[arg(long, env = "WSCLUSTER_PRESENCE_TTL_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(3..))]
    pub presence_ttl_seconds: u64,
    /// Seconds between SIGTERM and exit: clients get a drain reset, then the node closes.
    #[arg(long, env = "WSCLUSTER_GRACE_PERIOD_SECONDS", default_value_t = 20)]
    pub grace_period_seconds: u64,
    /// Largest WebSocket frame and message accepted from a client, and largest `/send` body.
    #[arg(long, env = "WSCLUSTER_MAX_FRAME_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(128..=(64 << 20)))]
    pub max_frame_bytes: u64,
    /// Most concurrent WebSocket sessions; more are refused with 503.
    #[arg(long, env = "WSCLUSTER_MAX_CONNECTIONS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Seconds between keepalive pings; a client silent for two intervals is closed.
    #[arg(long, env = "WSCLUSTER_PING_INTERVAL_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_seconds: u64,
    /// Messages queued per session before a client that does not read is closed (1013).
    #[arg(long, env = "WSCLUSTER_SESSION_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub session_queue: u64,
}

impl Config {
    /// A configuration with every default, for tests and embedding (local mode).
    pub fn for_tests(id: &str) -> Config {
        let mut config = Config::parse_from(["wscluster-node"]);
        config.id = Some(id.to_owned());
        config
    }

    /// Checks what clap cannot: the cluster id, the Redis prefix and the member id are
    /// non-empty printable text without whitespace (they end up in Redis keys, AMQP names and
    /// URLs).
    pub fn validate(&self) -> crate::Result<()> {
        let checks = [
            ("--cluster-id", self.cluster_id.clone()),
            ("--redis-prefix", self.redis_prefix.clone()),
            ("--id", self.member_id()),
        ];
        for (flag, value) in checks {
            if value.is_empty()
                || value.len() > 253
                || value.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(crate::Error::Config(format!(
                    "{flag} must be 1 to 253 printable characters without whitespace, got {value:?}"
                )));
            }
        }
        if self.ring_url.is_some() && self.ring_token.is_none() && self.ring_token_file.is_none() {
            return Err(crate::Error::Config(
                "--ring-url needs --ring-token-file or --ring-token".into(),
            ));
        }
        Ok(())
    }

    /// The member id: `--id`, else env `POD_NAME`, else the hostname.
    pub fn member_id(&self) -> String {
        if let Some(id) = self.id.as_deref().filter(|s| !s.trim().is_empty()) {
            return id.trim().to_owned();
        }
        if let Ok(pod) = std::env::var("POD_NAME")
            && !pod.trim().is_empty()
        {
            return pod.trim().to_owned();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "wscluster-node".to_owned())
    }

    /// The grace period as a duration.
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.grace_period_seconds)
    }

    /// The presence TTL as a duration.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl_seconds)
    }

    /// The keepalive interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_seconds)
    }

    /// The frame limit in bytes.
    pub fn max_frame(&self) -> usize {
        usize::try_from(self.max_frame_bytes).unwrap_or(usize::MAX)
    }
}
