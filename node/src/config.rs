//! Command-line flags (each also read from a `WSCLUSTER_*` environment variable). Every flag's
//! name and variable come from [`wscluster_runtime::flags::node`], which the operator also renders
//! pod environments from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use wscluster_runtime::flags::{self, node as flag};
use wscluster_runtime::log::LogArgs;
use wscluster_runtime::ring_args::RingArgs;

/// How the node is configured. The flag set is a cross-component contract (the operator and the
/// Helm chart set these through the environment), documented in `docs/node.md`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wscluster-node",
    version,
    about = "Reference stateful WebSocket server for wscluster",
    after_help = "Without --ring-url or --ring-file the node owns every key (standalone)."
)]
pub struct Config {
    /// The public address: WebSocket upgrades, the server API (`/api/v1/...`, with
    /// `--api-keys-file`) and, with `--legacy-send`, `/send`. Reached only through proxies.
    #[arg(long = flag::LISTEN.long, env = flag::LISTEN.env, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The admin address: `/healthz`, `/readyz`, `/metrics`, `/count`, `/users/{userId}`.
    /// Never on the public address; port 0 picks a free port (announced as `admin=`).
    #[arg(long = flag::ADMIN_LISTEN.long, env = flag::ADMIN_LISTEN.env, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// File holding the cluster's proxy secret(s), one per line, re-read when it changes. When
    /// set, every public request must carry it and the node serves exactly the key the proxy
    /// verified; unset (direct mode), the key comes from the path or query.
    #[arg(long = flag::PROXY_SECRET_FILE.long, env = flag::PROXY_SECRET_FILE.env)]
    pub proxy_secret_file: Option<PathBuf>,
    /// File holding the server API's keys (`Authorization: Bearer`), one per line, re-read when
    /// it changes (several at once for rotation). Unset, the server API is off (404).
    #[arg(long = flag::API_KEYS_FILE.long, env = flag::API_KEYS_FILE.env)]
    pub api_keys_file: Option<PathBuf>,
    /// Serve the seed-compatible `/send?userId=` on the public port, for migrations.
    #[arg(long = flag::LEGACY_SEND.long, env = flag::LEGACY_SEND.env)]
    pub legacy_send: bool,
    /// Let a client send `{"to": "<userId>", "message": "…"}` over its socket to another user;
    /// the message's `from` is the session's verified key.
    #[arg(long = flag::CHAT.long, env = flag::CHAT.env)]
    pub chat: bool,
    /// Most HTTP connections served at once on the public port (an upgraded WebSocket no
    /// longer counts); more wait in the listen backlog.
    #[arg(long = flag::MAX_HTTP_CONNECTIONS.long, env = flag::MAX_HTTP_CONNECTIONS.env, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_http_connections: u64,
    /// Most sends and broadcasts being stored and delivered at once; more get 503 `overloaded`.
    #[arg(long = flag::MAX_INFLIGHT_SENDS.long, env = flag::MAX_INFLIGHT_SENDS.env, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_inflight_sends: u64,
    /// This node's member id on the ring (default: env POD_NAME, else the hostname).
    #[arg(long = flag::ID.long, env = flag::ID.env)]
    pub id: Option<String>,
    /// Cluster id `namespace/name`; namespaces Redis keys and names the RabbitMQ exchange.
    #[arg(long = flag::CLUSTER_ID.long, env = flag::CLUSTER_ID.env, default_value = "default/chat")]
    pub cluster_id: String,
    /// Redis URL for presence and mailboxes (`redis://`, or `rediss://` for TLS); absent means
    /// in-memory (not durable).
    #[arg(long = flag::REDIS_URL.long, env = flag::REDIS_URL.env)]
    pub redis_url: Option<String>,
    /// Seed URLs of a Redis Cluster, comma-separated (`redis://host:port`, or all `rediss://`
    /// for TLS), instead of `--redis-url`: any few masters or replicas; the node learns the
    /// rest of the cluster from them and follows failovers.
    #[arg(long = flag::REDIS_CLUSTER.long, env = flag::REDIS_CLUSTER.env, value_delimiter = ',')]
    pub redis_cluster: Option<Vec<String>>,
    /// PEM CA bundle that a `rediss://` server's certificate must chain to (a Secret's
    /// `ca.crt`), instead of the platform's roots. Read at start.
    #[arg(long = flag::REDIS_CA_FILE.long, env = flag::REDIS_CA_FILE.env)]
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key the node writes.
    #[arg(long = flag::REDIS_PREFIX.long, env = flag::REDIS_PREFIX.env, default_value = "wscluster")]
    pub redis_prefix: String,
    /// RabbitMQ URL for broadcasts and reset events (`amqp://`, or `amqps://` for TLS); absent
    /// means an in-process bus.
    #[arg(long = flag::AMQP_URL.long, env = flag::AMQP_URL.env)]
    pub amqp_url: Option<String>,
    /// PEM CA bundle trusted for an `amqps://` broker, besides the platform's roots. Read at
    /// start.
    #[arg(long = flag::AMQP_CA_FILE.long, env = flag::AMQP_CA_FILE.env)]
    pub amqp_ca_file: Option<PathBuf>,
    /// The ring source: `--ring-url` with its token, or `--ring-file`, or neither (standalone).
    #[command(flatten)]
    pub ring: RingArgs,
    /// Messages kept per user mailbox (older ones are trimmed).
    #[arg(long = flag::MAILBOX_MAX_LEN.long, env = flag::MAILBOX_MAX_LEN.env, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub mailbox_max_len: u64,
    /// Seconds a mailbox lives after its last message.
    #[arg(long = flag::MAILBOX_TTL_SECONDS.long, env = flag::MAILBOX_TTL_SECONDS.env, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub mailbox_ttl_seconds: u64,
    /// Seconds a presence entry lives unless refreshed (refreshed every third of this).
    #[arg(long = flag::PRESENCE_TTL_SECONDS.long, env = flag::PRESENCE_TTL_SECONDS.env, default_value_t = 60, value_parser = clap::value_parser!(u64).range(3..))]
    pub presence_ttl_seconds: u64,
    /// Seconds between SIGTERM and exit: clients get a drain reset, then the node closes.
    #[arg(long = flag::GRACE_PERIOD_SECONDS.long, env = flag::GRACE_PERIOD_SECONDS.env, default_value_t = 20)]
    pub grace_period_seconds: u64,
    /// Largest WebSocket frame and message accepted from a client, and largest `/send` body.
    #[arg(long = flag::MAX_FRAME_BYTES.long, env = flag::MAX_FRAME_BYTES.env, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(128..=(64 << 20)))]
    pub max_frame_bytes: u64,
    /// Most concurrent WebSocket sessions; more are refused with 503.
    #[arg(long = flag::MAX_CONNECTIONS.long, env = flag::MAX_CONNECTIONS.env, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Seconds between keepalive pings; a client silent for two intervals is closed.
    #[arg(long = flag::PING_INTERVAL_SECONDS.long, env = flag::PING_INTERVAL_SECONDS.env, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_seconds: u64,
    /// Messages queued per session before a client that does not read is closed (1013).
    #[arg(long = flag::SESSION_QUEUE.long, env = flag::SESSION_QUEUE.env, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub session_queue: u64,
    /// Most live sessions one key (user) may have on this node: its tabs and devices. Every
    /// session of a key receives every message.
    #[arg(long = flag::SESSIONS_PER_KEY.long, env = flag::SESSIONS_PER_KEY.env, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub sessions_per_key: u64,
    /// Over `--sessions-per-key`: `refuse` the new session (429), or `replace-oldest` (the
    /// key's oldest session is closed with 4002).
    #[arg(long = flag::SESSION_POLICY.long, env = flag::SESSION_POLICY.env, value_enum, default_value_t = crate::registry::SessionPolicy::Refuse)]
    pub session_policy: crate::registry::SessionPolicy,
    /// Logging (`--log-format`).
    #[command(flatten)]
    pub log: LogArgs,
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
    /// URLs), the first two without braces (the keys' hash tags, `mailbox/keys.rs`, must be
    /// the first braces of a key), the Redis flags name one Redis, and a CA file comes with a
    /// TLS URL.
    pub fn validate(&self) -> crate::Result<()> {
        self.validate_redis()?;
        self.validate_tls()?;
        for (flag, value) in [
            (flag::CLUSTER_ID, &self.cluster_id),
            (flag::REDIS_PREFIX, &self.redis_prefix),
        ] {
            if value.contains(['{', '}']) {
                return Err(crate::Error::Config(format!(
                    "{} must not contain {{ or }} (they would change the Redis keys' hash tag), got {value:?}",
                    flag.dashed()
                )));
            }
        }
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
        Ok(())
    }

    /// The Redis to use: one `--redis-url` or the `--redis-cluster` seeds (never both), each
    /// seed a `redis://` or `rediss://` URL, all with the same scheme (the cluster client
    /// speaks TLS to every node or to none).
    fn validate_redis(&self) -> crate::Result<()> {
        let Some(seeds) = &self.redis_cluster else {
            return Ok(());
        };
        let (cluster, url) = (flag::REDIS_CLUSTER.dashed(), flag::REDIS_URL.dashed());
        let fail = |why: String| Err(crate::Error::Config(format!("{cluster} {why}")));
        if self.redis_url.is_some() {
            return fail(format!("and {url} name two Redis: give one"));
        }
        let Some(first) = seeds.first() else {
            return fail("needs at least one seed URL".into());
        };
        let scheme = |s: &str| {
            ["redis://", "rediss://"]
                .into_iter()
                .find(|p| s.starts_with(p))
        };
        for seed in seeds {
            match scheme(seed) {
                None => {
                    return fail(format!(
                        "seed {:?} is not a redis:// or rediss:// URL",
                        crate::server::redact(seed)
                    ));
                }
                Some(s) if Some(s) != scheme(first) => {
                    return fail("seeds must all be redis:// or all rediss://".into());
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The Redis URL whose scheme decides TLS: `--redis-url`, else the first cluster seed.
    fn redis_tls_url(&self) -> Option<String> {
        self.redis_url.clone().or_else(|| {
            self.redis_cluster
                .as_ref()
                .and_then(|seeds| seeds.first().cloned())
        })
    }

    /// A CA file is only given with the TLS URL it is for: `--redis-ca-file` with a `rediss://`
    /// `--redis-url` or `--redis-cluster`, `--amqp-ca-file` with an `amqps://` `--amqp-url`.
    /// Anything else is a mistake (a plain URL would silently ignore the CA).
    fn validate_tls(&self) -> crate::Result<()> {
        let redis_url = self.redis_tls_url();
        let redis_flag = match self.redis_cluster {
            Some(_) => flag::REDIS_CLUSTER,
            None => flag::REDIS_URL,
        };
        let pairs = [
            (
                flag::REDIS_CA_FILE,
                &self.redis_ca_file,
                redis_flag,
                &redis_url,
                "rediss://",
                "a",
            ),
            (
                flag::AMQP_CA_FILE,
                &self.amqp_ca_file,
                flag::AMQP_URL,
                &self.amqp_url,
                "amqps://",
                "an",
            ),
        ];
        for (ca_flag, ca, url_flag, url, scheme, article) in pairs {
            let tls = url.as_deref().is_some_and(|u| u.starts_with(scheme));
            if ca.is_some() && !tls {
                return Err(crate::Error::Config(format!(
                    "{} needs {article} {scheme} {}",
                    ca_flag.dashed(),
                    url_flag.dashed()
                )));
            }
        }
        Ok(())
    }

    /// The member id: `--id`, else env `POD_NAME`, else the hostname.
    pub fn member_id(&self) -> String {
        if let Some(id) = self.id.as_deref().filter(|s| !s.trim().is_empty()) {
            return id.trim().to_owned();
        }
        if let Ok(pod) = std::env::var(flags::POD_NAME_ENV)
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

    /// The per-key session cap and policy.
    pub fn session_limit(&self) -> crate::registry::SessionLimit {
        crate::registry::SessionLimit {
            per_key: usize::try_from(self.sessions_per_key).unwrap_or(1).max(1),
            policy: self.session_policy,
        }
    }

    /// The frame limit in bytes.
    pub fn max_frame(&self) -> usize {
        usize::try_from(self.max_frame_bytes).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_parser_reads_exactly_the_defined_node_flags() {
        let problems = flags::parser_mismatches(&Config::command(), flag::ALL);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_command_line_rendered_from_the_definitions_parses_to_its_values() {
        let rendered = [
            flag::LISTEN.arg("127.0.0.1:0"),
            flag::ID.arg("chat-node-3"),
            flag::CLUSTER_ID.arg("prod/chat"),
            flag::RING_URL.arg("http://127.0.0.1:7400"),
            flag::RING_TOKEN.arg("t0ken"),
            flag::REDIS_URL.arg("redis://127.0.0.1:6379"),
            flag::REDIS_PREFIX.arg("p"),
            flag::AMQP_URL.arg("amqp://127.0.0.1:5672"),
            flag::GRACE_PERIOD_SECONDS.arg("7"),
            flag::LOG_FORMAT.arg("json"),
        ];
        let args =
            std::iter::once(OsString::from("wscluster-node")).chain(rendered.into_iter().flatten());
        let config = Config::try_parse_from(args).expect("parses");
        assert_eq!(config.listen, "127.0.0.1:0".parse().expect("addr"));
        assert_eq!(config.member_id(), "chat-node-3");
        assert_eq!(config.cluster_id, "prod/chat");
        assert_eq!(
            config.ring.ring_url.as_deref(),
            Some("http://127.0.0.1:7400")
        );
        assert_eq!(config.ring.ring_token.as_deref(), Some("t0ken"));
        assert_eq!(config.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(config.redis_prefix, "p");
        assert_eq!(config.amqp_url.as_deref(), Some("amqp://127.0.0.1:5672"));
        assert_eq!(config.grace_period_seconds, 7);
        assert_eq!(
            config.log.log_format,
            wscluster_runtime::log::LogFormat::Json
        );
    }

    #[test]
    fn a_ca_file_needs_the_tls_url_it_is_for() {
        let parse = |args: &[&str]| {
            let all = std::iter::once("wscluster-node").chain(args.iter().copied());
            Config::try_parse_from(all).expect("parses")
        };
        let plain_redis = parse(&["--redis-url", "redis://r:6379", "--redis-ca-file", "/ca"]);
        let err = plain_redis.validate().expect_err("plain redis with a CA");
        assert_eq!(
            err.to_string(),
            "configuration: --redis-ca-file needs a rediss:// --redis-url"
        );
        let no_amqp = parse(&["--amqp-ca-file", "/ca"]);
        let err = no_amqp.validate().expect_err("a CA without a URL");
        assert!(
            err.to_string().contains("--amqp-ca-file needs an amqps://"),
            "{err}"
        );
        let tls = parse(&[
            "--redis-url",
            "rediss://r:6380",
            flag::REDIS_CA_FILE.dashed().as_str(),
            "/ca",
            "--amqp-url",
            "amqps://u:p@b:5671/%2f",
            flag::AMQP_CA_FILE.dashed().as_str(),
            "/ca2",
        ]);
        tls.validate().expect("TLS URLs with their CAs");
        assert_eq!(
            tls.redis_ca_file.as_deref(),
            Some(std::path::Path::new("/ca"))
        );
        assert_eq!(
            tls.amqp_ca_file.as_deref(),
            Some(std::path::Path::new("/ca2"))
        );
    }

    #[test]
    fn redis_cluster_seeds_are_checked() {
        let config = |args: &[&str]| {
            let all = std::iter::once("wscluster-node").chain(args.iter().copied());
            Config::try_parse_from(all).expect("parses")
        };
        let error = |args: &[&str]| config(args).validate().expect_err("refused").to_string();
        let seeds = config(&["--redis-cluster", "redis://a:7000,redis://b:7001"]);
        seeds.validate().expect("two plain seeds");
        assert_eq!(
            seeds.redis_cluster.as_deref(),
            Some(&["redis://a:7000".to_owned(), "redis://b:7001".to_owned()][..])
        );
        assert_eq!(
            error(&[
                "--redis-cluster",
                "redis://a:7000",
                "--redis-url",
                "redis://r:6379"
            ]),
            "configuration: --redis-cluster and --redis-url name two Redis: give one"
        );
        assert_eq!(
            error(&["--redis-cluster", "http://a:7000"]),
            "configuration: --redis-cluster seed \"http://a:7000\" is not a redis:// or rediss:// URL"
        );
        assert!(error(&["--redis-cluster", ""]).contains("seed \"\" is not a redis://"));
        assert!(
            error(&["--redis-cluster", "redis://:secret@a:7000,https://:pw@b"])
                .contains("\"https://***@b\""),
            "the password is not shown"
        );
        assert_eq!(
            error(&["--redis-cluster", "redis://a:7000,rediss://b:7001"]),
            "configuration: --redis-cluster seeds must all be redis:// or all rediss://"
        );
        assert_eq!(
            error(&[
                "--redis-cluster",
                "redis://a:7000",
                "--redis-ca-file",
                "/ca"
            ]),
            "configuration: --redis-ca-file needs a rediss:// --redis-cluster"
        );
        config(&[
            "--redis-cluster",
            "rediss://a:7000",
            "--redis-ca-file",
            "/ca",
        ])
        .validate()
        .expect("TLS seeds with a CA");
    }

    #[test]
    fn braces_in_the_key_namespace_are_refused() {
        for (flag, value) in [("--redis-prefix", "ws{x}"), ("--cluster-id", "a/{b")] {
            let config = Config::try_parse_from(["wscluster-node", flag, value]).expect("parses");
            let err = config.validate().expect_err("braces refused").to_string();
            assert!(
                err.contains(&format!("{flag} must not contain {{ or }}")),
                "{err}"
            );
        }
    }

    #[test]
    fn the_two_ring_token_flags_conflict() {
        let both = [
            "wscluster-node",
            "--ring-url",
            "http://127.0.0.1:7400",
            "--ring-token",
            "a",
            "--ring-token-file",
            "/t",
        ];
        assert!(Config::try_parse_from(both).is_err());
    }
}
