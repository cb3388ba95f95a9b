//! The name and environment variable of every flag the operator and local mode pass to nodes
//! and proxies, defined once.
//!
//! The node's and the proxy's clap parsers take `long` and `env` from these constants
//! (`#[arg(long = flags::RING_URL.long, env = flags::RING_URL.env)]`), and the operator renders
//! pod environments and local mode renders command lines from the same constants, so a flag
//! cannot be renamed on one side only. [`node::ALL`] and [`proxy::ALL`] list each binary's flags;
//! the binaries' tests check that their parser reads exactly those.

use std::ffi::OsString;

/// One command-line flag and the environment variable clap also reads it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flag {
    /// The long name without its dashes (`ring-url`), as clap's `long` takes it.
    pub long: &'static str,
    /// The environment variable read when the flag is absent (`WSCLUSTER_RING_URL`).
    pub env: &'static str,
}

impl Flag {
    /// `--ring-url`: the flag as written on a command line.
    pub fn dashed(&self) -> String {
        format!("--{}", self.long)
    }

    /// `["--ring-url", value]`: the flag and its value for a command line.
    pub fn arg(&self, value: impl Into<OsString>) -> [OsString; 2] {
        [OsString::from(self.dashed()), value.into()]
    }

    /// `("WSCLUSTER_RING_URL", value)`: the flag as an environment variable.
    pub fn env_var(&self, value: impl Into<String>) -> (&'static str, String) {
        (self.env, value.into())
    }
}

/// Defines flag constants: `NAME = "long-name"` gets env `WSCLUSTER_NAME`.
macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $long:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $name: Flag = Flag {
                long: $long,
                env: concat!("WSCLUSTER_", stringify!($name)),
            };
        )*
    };
}

flags! {
    /// Address to serve on (node: everything; proxy: clients).
    LISTEN = "listen";
    /// The admin address (`/healthz`, `/readyz`, `/metrics`; the node's `/count`, `/users`),
    /// never on the public port.
    ADMIN_LISTEN = "admin-listen";
    /// Member id (node) or subscriber id (proxy); default [`POD_NAME_ENV`], else the hostname.
    ID = "id";
    /// Cluster id `namespace/name`.
    CLUSTER_ID = "cluster-id";
    /// The proxy's YAML config file.
    CONFIG = "config";
    /// Redis URL (node).
    REDIS_URL = "redis-url";
    /// Prefix of the node's Redis keys.
    REDIS_PREFIX = "redis-prefix";
    /// RabbitMQ URL.
    AMQP_URL = "amqp-url";
    /// Base URL of the ring stream.
    RING_URL = "ring-url";
    /// The ring stream's bearer token.
    RING_TOKEN = "ring-token";
    /// File holding the ring stream's bearer token.
    RING_TOKEN_FILE = "ring-token-file";
    /// A watched JSON ring snapshot file.
    RING_FILE = "ring-file";
    /// Where the proxy forwards keyless plain HTTP.
    FALLBACK_UPSTREAM = "fallback-upstream";
    /// The local address the proxy's connections to members leave from (local mode gives each
    /// proxy its own loopback address, as each pod has its own IP).
    UPSTREAM_SOURCE_ADDRESS = "upstream-source-address";
    /// The proxy's tokio worker threads.
    WORKER_THREADS = "worker-threads";
    /// Messages kept per mailbox (node).
    MAILBOX_MAX_LEN = "mailbox-max-len";
    /// Mailbox lifetime after its last message (node).
    MAILBOX_TTL_SECONDS = "mailbox-ttl-seconds";
    /// Presence entry lifetime (node).
    PRESENCE_TTL_SECONDS = "presence-ttl-seconds";
    /// Time between SIGTERM and exit (node).
    GRACE_PERIOD_SECONDS = "grace-period-seconds";
    /// Largest WebSocket frame and message (node).
    MAX_FRAME_BYTES = "max-frame-bytes";
    /// Most concurrent WebSocket sessions (node).
    MAX_CONNECTIONS = "max-connections";
    /// Keepalive ping interval (node).
    PING_INTERVAL_SECONDS = "ping-interval-seconds";
    /// Messages queued per session (node).
    SESSION_QUEUE = "session-queue";
    /// Log line format, `text` or `json` (every binary; [`crate::log::LogArgs`]).
    LOG_FORMAT = "log-format";
    /// File holding the cluster's proxy secret(s): the proxy presents it on every upstream
    /// request, the node trusts proxy-set headers only with it (node and proxy).
    PROXY_SECRET_FILE = "proxy-secret-file";
    /// File holding the server API's keys, one per line (node and proxy).
    API_KEYS_FILE = "api-keys-file";
    /// The proxy's server API address (`/api/v1/...`), apart from the client port.
    API_LISTEN = "api-listen";
    /// Serve the seed-compatible `/send?userId=` on the public port (node; off by default).
    LEGACY_SEND = "legacy-send";
    /// Let authenticated clients publish to other users over their socket (node; off by default).
    CHAT = "chat";
    /// Most concurrent HTTP connections (node).
    MAX_HTTP_CONNECTIONS = "max-http-connections";
    /// Most sends being stored and delivered at once; more get 503 (node).
    MAX_INFLIGHT_SENDS = "max-inflight-sends";
    /// Most live sessions per key on its owner (node).
    SESSIONS_PER_KEY = "sessions-per-key";
    /// What a session over the per-key cap does: `refuse` or `replace-oldest` (node).
    SESSION_POLICY = "session-policy";
    /// Address of the proxy's TLS listener for clients (`wss://`, `https://`); off unless given,
    /// and beside `--listen`, which stays plain.
    TLS_LISTEN = "tls-listen";
    /// PEM certificate chain for the TLS listener (a TLS Secret's `tls.crt`; re-read on change).
    TLS_CERT_FILE = "tls-cert-file";
    /// PEM private key for the TLS listener (a TLS Secret's `tls.key`; re-read on change).
    TLS_KEY_FILE = "tls-key-file";
    /// Directories of further TLS Secrets the TLS listener chooses by SNI (proxy).
    TLS_SNI_CERT = "tls-sni-cert";
    /// PEM CA bundle trusted for `rediss://` (node; default: the platform's web roots).
    REDIS_CA_FILE = "redis-ca-file";
    /// Seed URLs of a Redis Cluster, comma-separated (node; instead of [`REDIS_URL`]).
    REDIS_CLUSTER = "redis-cluster";
    /// PEM CA bundle trusted for `amqps://` (node and proxy; default: the web roots).
    AMQP_CA_FILE = "amqp-ca-file";
    /// PEM CA bundle trusted for an `https://` ring stream (node and proxy).
    RING_CA_FILE = "ring-ca-file";
}

/// The pod's name, set by the operator from the downward API; nodes and proxies default their
/// id to it. Not a flag: Kubernetes names it.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// What differs between a clap parser and the flags it should read: every flag in `defined` must
/// be an argument with that long name and variable, and every other argument except `--help` and
/// `--version` must not exist. Empty when they agree; the binaries' tests assert that.
pub fn parser_mismatches(command: &clap::Command, defined: &[Flag]) -> Vec<String> {
    let mut problems = Vec::new();
    for flag in defined {
        match command
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.long))
        {
            None => problems.push(format!("--{} is not an argument", flag.long)),
            Some(arg) if arg.get_env().and_then(|e| e.to_str()) != Some(flag.env) => {
                problems.push(format!(
                    "--{} reads {:?}, not {}",
                    flag.long,
                    arg.get_env(),
                    flag.env
                ))
            }
            Some(_) => {}
        }
    }
    for arg in command.get_arguments() {
        let long = arg.get_long().unwrap_or_else(|| arg.get_id().as_str());
        if !matches!(long, "help" | "version") && !defined.iter().any(|f| f.long == long) {
            problems.push(format!("--{long} is not a defined flag"));
        }
    }
    problems
}

/// The node's flags (`wscluster-node`, `wscluster-operator node`).
pub mod node {
    use super::Flag;
    pub use super::{
        ADMIN_LISTEN, AMQP_CA_FILE, AMQP_URL, API_KEYS_FILE, CHAT, CLUSTER_ID,
        GRACE_PERIOD_SECONDS, ID, LEGACY_SEND, LISTEN, LOG_FORMAT, MAILBOX_MAX_LEN,
        MAILBOX_TTL_SECONDS, MAX_CONNECTIONS, MAX_FRAME_BYTES, MAX_HTTP_CONNECTIONS,
        MAX_INFLIGHT_SENDS, PING_INTERVAL_SECONDS, PRESENCE_TTL_SECONDS, PROXY_SECRET_FILE,
        REDIS_CA_FILE, REDIS_CLUSTER, REDIS_PREFIX, REDIS_URL, RING_FILE, RING_TOKEN,
        RING_TOKEN_FILE, RING_URL, SESSION_POLICY, SESSION_QUEUE, SESSIONS_PER_KEY,
    };

    /// Every flag of the node's parser.
    pub const ALL: &[Flag] = &[
        LISTEN,
        ADMIN_LISTEN,
        PROXY_SECRET_FILE,
        API_KEYS_FILE,
        LEGACY_SEND,
        CHAT,
        MAX_HTTP_CONNECTIONS,
        MAX_INFLIGHT_SENDS,
        ID,
        CLUSTER_ID,
        REDIS_URL,
        REDIS_CLUSTER,
        REDIS_CA_FILE,
        REDIS_PREFIX,
        AMQP_URL,
        AMQP_CA_FILE,
        RING_URL,
        RING_TOKEN_FILE,
        RING_TOKEN,
        RING_FILE,
        MAILBOX_MAX_LEN,
        MAILBOX_TTL_SECONDS,
        PRESENCE_TTL_SECONDS,
        GRACE_PERIOD_SECONDS,
        MAX_FRAME_BYTES,
        MAX_CONNECTIONS,
        PING_INTERVAL_SECONDS,
        SESSION_QUEUE,
        SESSIONS_PER_KEY,
        SESSION_POLICY,
        LOG_FORMAT,
    ];
}

/// The proxy's flags (`wscluster-proxy`, `wscluster-operator proxy`).
pub mod proxy {
    use super::Flag;
    pub use super::{
        ADMIN_LISTEN, AMQP_CA_FILE, AMQP_URL, API_KEYS_FILE, API_LISTEN, CLUSTER_ID, CONFIG,
        FALLBACK_UPSTREAM, ID, LISTEN, LOG_FORMAT, PROXY_SECRET_FILE, RING_FILE, RING_TOKEN,
        RING_TOKEN_FILE, RING_URL, TLS_CERT_FILE, TLS_KEY_FILE, TLS_LISTEN, TLS_SNI_CERT,
        UPSTREAM_SOURCE_ADDRESS, WORKER_THREADS,
    };

    /// Every flag of the proxy's parser.
    pub const ALL: &[Flag] = &[
        LISTEN,
        ADMIN_LISTEN,
        ID,
        CLUSTER_ID,
        CONFIG,
        RING_URL,
        RING_TOKEN_FILE,
        RING_TOKEN,
        RING_FILE,
        AMQP_URL,
        AMQP_CA_FILE,
        FALLBACK_UPSTREAM,
        UPSTREAM_SOURCE_ADDRESS,
        WORKER_THREADS,
        LOG_FORMAT,
        PROXY_SECRET_FILE,
        API_LISTEN,
        API_KEYS_FILE,
        TLS_LISTEN,
        TLS_CERT_FILE,
        TLS_KEY_FILE,
        TLS_SNI_CERT,
    ];
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_flag_renders_as_an_argument_pair_and_an_environment_variable() {
        assert_eq!(RING_URL.dashed(), "--ring-url");
        assert_eq!(
            RING_URL.arg("http://hub:7400"),
            [
                OsString::from("--ring-url"),
                OsString::from("http://hub:7400")
            ]
        );
        assert_eq!(
            RING_TOKEN_FILE.env_var("/t"),
            ("WSCLUSTER_RING_TOKEN_FILE", "/t".to_string())
        );
    }

    #[test]
    fn every_env_name_is_the_long_name_in_upper_snake_case() {
        for flag in node::ALL.iter().chain(proxy::ALL) {
            let expected = format!("WSCLUSTER_{}", flag.long.replace('-', "_").to_uppercase());
            assert_eq!(flag.env, expected, "{flag:?}");
        }
    }

    #[test]
    fn a_parser_that_differs_from_its_definitions_is_reported() {
        #[derive(clap::Parser)]
        struct Cli {
            #[arg(long = LISTEN.long, env = LISTEN.env)]
            listen: Option<String>,
            #[arg(long = "ring-url", env = "WSCLUSTER_RING")]
            ring_url: Option<String>,
            #[arg(long)]
            extra: Option<String>,
        }
        let command = <Cli as clap::CommandFactory>::command();
        assert!(parser_mismatches(&command, &[LISTEN]).len() == 2);
        let problems = parser_mismatches(&command, &[LISTEN, RING_URL, ID]);
        assert_eq!(
            problems,
            [
                "--ring-url reads Some(\"WSCLUSTER_RING\"), not WSCLUSTER_RING_URL",
                "--id is not an argument",
                "--extra is not a defined flag",
            ]
        );
    }

    #[test]
    fn no_binary_lists_a_flag_twice() {
        for all in [node::ALL, proxy::ALL] {
            let unique: HashSet<_> = all.iter().collect();
            assert_eq!(unique.len(), all.len());
        }
    }
}
