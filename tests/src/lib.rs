//! # wscluster-tests
//!
//! Cross-process end-to-end tests of wscluster and the harness they share. Everything runs as
//! real processes on 127.0.0.1: `wscluster-operator local` supervises the ring authority, the
//! nodes and the proxies (membership exactly as in local mode), with real Redis and RabbitMQ.
//!
//! * [`Local`] — starts `wscluster-operator local` with unique names, reads its control address,
//!   drives its control API, and stops it (SIGTERM; it stops its children) when dropped.
//! * [`Fleet`] / [`Client`] — WebSocket clients with the reconnect logic of `docs/client.md`
//!   (reset frames, close codes 4000-4003, `?since=` resumption, de-duplication by offset) that
//!   record what they saw: resets, the node they are on, every message in order.
//! * [`http`] — a minimal HTTP/1.1 client (one request per connection) for the control API and
//!   the proxies' `/send`.
//!
//! Binaries come from `WSCLUSTER_OPERATOR_BIN`, `WSCLUSTER_NODE_BIN`, `WSCLUSTER_PROXY_BIN`,
//! defaulting to `debug/<name>` under `CARGO_TARGET_DIR` or the workspace's `target/`; Redis and RabbitMQ from
//! `WSCLUSTER_TEST_REDIS_URL` / `WSCLUSTER_TEST_AMQP_URL` (defaults: the local servers). A
//! missing binary or an unreachable service fails the test with a clear message.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use wscluster_tests::{Local, LocalOptions};
//! let local = Local::start(LocalOptions::real_backends("doc", 3, 2)).await?;
//! local.scale(4).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use wscluster_ring::{Ring, RingSnapshot};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A binary from `env`, else `debug/<name>` under `CARGO_TARGET_DIR` (or the workspace's
/// `target/`); fails clearly when it does not exist.
pub fn binary(env: &str, name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("debug").join(name));
    if !path.is_file() {
        bail!(
            "{name} not found at {} (build it with `cargo build -p {name}` or set {env})",
            path.display()
        );
    }
    Ok(path)
}

/// Redis for tests.
pub fn redis_url() -> String {
    std::env::var("WSCLUSTER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// RabbitMQ for tests.
pub fn amqp_url() -> String {
    std::env::var("WSCLUSTER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A name unique to this process and call: `<base>-<pid>-<counter>-<millis>`.
pub fn unique(base: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    format!(
        "{base}-{}-{}-{millis}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// How every end-to-end scenario begins: local mode with real backends, `clients` clients
/// (`WSCLUSTER_E2E_CLIENTS`, else the scenario's default) connected through its proxies, and a
/// first round of messages delivered to all of them.
pub struct Started {
    /// Local mode.
    pub local: Local,
    /// The proxies' WebSocket base URLs.
    pub proxies: Vec<String>,
    /// The connected clients.
    pub fleet: Fleet,
    /// How many clients.
    pub clients: usize,
}

impl Started {
    /// Starts local mode (`name`, `nodes` nodes, 2 proxies), connects the fleet with user ids
    /// starting `prefix`, and waits for the first round of messages.
    pub async fn new(
        name: &str,
        nodes: u32,
        prefix: &str,
        default_clients: usize,
    ) -> anyhow::Result<Started> {
        let clients = env_count("WSCLUSTER_E2E_CLIENTS", default_clients);
        let local = Local::start(LocalOptions::real_backends(name, nodes, 2)).await?;
        let proxies = local.proxy_urls().await?;
        let fleet = Fleet::connect(prefix, clients, &proxies);
        fleet
            .wait_connected(Duration::from_secs(30 + clients as u64 / 100))
            .await?;
        fleet.send_round(&proxies, 1, 64).await?;
        fleet.wait_messages(1, Duration::from_secs(60)).await?;
        Ok(Started {
            local,
            proxies,
            fleet,
            clients,
        })
    }
}

/// Runs an end-to-end scenario within `limit`, failing the test with the whole error chain
/// (or a timeout) otherwise: the body of every e2e `#[tokio::test]`.
pub async fn run_bounded(
    limit: Duration,
    scenario: impl std::future::Future<Output = anyhow::Result<()>>,
) {
    tokio::time::timeout(limit, scenario)
        .await
        .expect("the test finished within its time bound")
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// A count from an environment variable, or a default.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fails unless a TCP connection to the URL's host:port succeeds: tests must not skip silently.
pub async fn require_service(url: &str, what: &str) -> anyhow::Result<()> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = host_port.split('/').next().unwrap_or(host_port);
    tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(host_port),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timeout"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("{what} is not reachable at {host_port} ({url}); start it or set the WSCLUSTER_TEST_* URL"))?;
    Ok(())
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub mod http {
    //! A minimal HTTP/1.1 client: one request per connection, `Connection: close`, body read
    //! to the end (content-length or chunked). Enough for the control API and `/send`.

    use std::time::Duration;

    use anyhow::{Context, bail};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A response: status and body.
    #[derive(Debug, Clone)]
    pub struct Response {
        /// HTTP status code.
        pub status: u16,
        /// The body, de-chunked.
        pub body: Vec<u8>,
    }

    impl Response {
        /// The body as JSON.
        pub fn json(&self) -> anyhow::Result<serde_json::Value> {
            serde_json::from_slice(&self.body).with_context(|| {
                format!(
                    "response {} is not JSON: {}",
                    self.status,
                    String::from_utf8_lossy(&self.body)
                )
            })
        }
    }

    /// Sends `method` to `http://host:port/path…` with an optional JSON body.
    pub async fn request(
        method: &str,
        url: &str,
        json: Option<&serde_json::Value>,
    ) -> anyhow::Result<Response> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("not an http URL: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let body = json.map(|v| v.to_string()).unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if json.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let call = async {
            let mut stream = tokio::net::TcpStream::connect(host).await?;
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            anyhow::Ok(raw)
        };
        let raw = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .with_context(|| format!("{method} {url}: no answer within 10 s"))?
            .with_context(|| format!("{method} {url}"))?;
        parse(&raw).with_context(|| format!("{method} {url}: bad response"))
    }

    fn parse(raw: &[u8]) -> anyhow::Result<Response> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers")?;
        let head = std::str::from_utf8(&raw[..split])?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .context("no status line")?
            .parse()?;
        let chunked = lines.any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let mut body = raw[split + 4..].to_vec();
        if chunked {
            let mut out = Vec::new();
            let mut rest = &body[..];
            loop {
                let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                    bail!("truncated chunk size");
                };
                let size = usize::from_str_radix(std::str::from_utf8(&rest[..end])?.trim(), 16)?;
                rest = &rest[end + 2..];
                if size == 0 {
                    break;
                }
                if rest.len() < size {
                    bail!("truncated chunk");
                }
                out.extend_from_slice(&rest[..size]);
                rest = rest.get(size + 2..).unwrap_or_default();
            }
            body = out;
        }
        Ok(Response { status, body })
    }

    /// Percent-encodes everything but RFC 3986 unreserved characters.
    pub fn encode(raw: &str) -> String {
        let mut out = String::with_capacity(raw.len());
        for b in raw.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn responses_with_a_length_or_chunks_parse_to_the_same_body() {
            let plain =
                parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").expect("parses");
            assert_eq!((plain.status, plain.body.as_slice()), (200, &b"hello"[..]));
            let chunked = parse(
                b"HTTP/1.1 421 Misdirected Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            )
            .expect("parses");
            assert_eq!(
                (chunked.status, chunked.body.as_slice()),
                (421, &b"hello"[..])
            );
            assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err(), "no end of headers");
            assert!(
                parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab").is_err(),
                "truncated chunk"
            );
        }

        #[test]
        fn encoding_escapes_everything_but_unreserved_characters() {
            assert_eq!(encode("u-1_a.b~"), "u-1_a.b~");
            assert_eq!(encode("a b:c/d?é"), "a%20b%3Ac%2Fd%3F%C3%A9");
        }
    }
}

/// How to start local mode.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Initial nodes.
    pub nodes: u32,
    /// Proxy processes.
    pub proxies: u32,
    /// Unique cluster id (`e2e/<unique>`): names the RabbitMQ exchange and the Redis keys.
    pub cluster_id: String,
    /// Redis URL, if any.
    pub redis_url: Option<String>,
    /// Unique Redis key prefix.
    pub redis_prefix: String,
    /// RabbitMQ URL, if any.
    pub amqp_url: Option<String>,
    /// Seconds a drain waits for the leaving nodes to empty.
    pub drain_timeout_seconds: u64,
    /// Nodes' grace period.
    pub node_grace_period_seconds: u64,
    /// Proxy config YAML written to a temp file and passed with `--proxy-config`.
    pub proxy_config: Option<String>,
}

impl LocalOptions {
    /// Real Redis and RabbitMQ, unique names derived from `name`.
    pub fn real_backends(name: &str, nodes: u32, proxies: u32) -> LocalOptions {
        let id = unique(name);
        LocalOptions {
            nodes,
            proxies,
            cluster_id: format!("e2e/{id}"),
            redis_url: Some(redis_url()),
            redis_prefix: format!("wscluster-test-{id}"),
            amqp_url: Some(amqp_url()),
            drain_timeout_seconds: 30,
            node_grace_period_seconds: 5,
            proxy_config: None,
        }
    }
}

/// A running `wscluster-operator local`. Dropping it sends SIGTERM (it stops its children).
pub struct Local {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>` of the control API.
    pub control: String,
    /// The options it was started with.
    pub options: LocalOptions,
    /// Where the children's logs are.
    pub log_dir: PathBuf,
}

impl Local {
    /// Starts local mode and waits until every node is in the ring and every proxy applied it.
    pub async fn start(options: LocalOptions) -> anyhow::Result<Local> {
        if let Some(url) = &options.redis_url {
            require_service(url, "Redis").await?;
        }
        if let Some(url) = &options.amqp_url {
            require_service(url, "RabbitMQ").await?;
        }
        let operator = binary("WSCLUSTER_OPERATOR_BIN", "wscluster-operator")?;
        let node = binary("WSCLUSTER_NODE_BIN", "wscluster-node")?;
        let proxy = binary("WSCLUSTER_PROXY_BIN", "wscluster-proxy")?;
        let log_dir = std::env::temp_dir().join(unique("wscluster-e2e"));
        std::fs::create_dir_all(&log_dir)?;
        let mut command = Command::new(operator);
        command
            .arg("local")
            .args(["--nodes", &options.nodes.to_string()])
            .args(["--proxies", &options.proxies.to_string()])
            .args(["--control-listen", "127.0.0.1:0", "--proxy-port", "0"])
            .args(["--cluster-id", &options.cluster_id])
            .args([
                "--drain-timeout-seconds",
                &options.drain_timeout_seconds.to_string(),
            ])
            .args([
                "--node-grace-period-seconds",
                &options.node_grace_period_seconds.to_string(),
            ])
            .args(["--redis-prefix", &options.redis_prefix])
            .arg("--log-dir")
            .arg(&log_dir)
            .arg("--node-bin")
            .arg(node)
            .arg("--proxy-bin")
            .arg(proxy)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log_dir.join("operator.log"))?);
        if let Some(url) = &options.redis_url {
            command.args(["--redis-url", url]);
        }
        if let Some(url) = &options.amqp_url {
            command.args(["--amqp-url", url]);
        }
        if let Some(yaml) = &options.proxy_config {
            let path = log_dir.join("proxy.yaml");
            std::fs::write(&path, yaml)?;
            command.arg("--proxy-config").arg(path);
        }
        let mut child = command
            .spawn()
            .context("starting wscluster-operator local")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // The address line comes first; skip anything a wrapper may log before it.
        let find = async {
            while let Some(line) = lines.next_line().await? {
                if let Ok(announced) = line.parse::<wscluster_runtime::Announcement>() {
                    return anyhow::Ok(Some(announced.addr.to_string()));
                }
            }
            anyhow::Ok(None)
        };
        let address = tokio::time::timeout(Duration::from_secs(30), find)
            .await
            .context("wscluster-operator local printed no address within 30 s")??
            .with_context(|| {
                format!(
                    "wscluster-operator local exited at once; see {}",
                    log_dir.join("operator.log").display()
                )
            })?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let local = Local {
            child: Some(child),
            control: format!("http://{address}"),
            options,
            log_dir,
        };
        local
            .wait_settled(local.options.nodes as usize, Duration::from_secs(60))
            .await?;
        Ok(local)
    }

    /// `GET /api/state`.
    pub async fn state(&self) -> anyhow::Result<Value> {
        let r = http::request("GET", &format!("{}/api/state", self.control), None).await?;
        if r.status != 200 {
            bail!("/api/state answered {}", r.status);
        }
        r.json()
    }

    /// A control command: `POST /api/<path>` with an optional body; fails unless 200, and
    /// answers the reply (`{"ok":true,"ring":…}`, the ring published right after the command).
    pub async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let r = http::request(
            "POST",
            &format!("{}/api/{path}", self.control),
            body.as_ref(),
        )
        .await?;
        if r.status != 200 {
            bail!(
                "POST /api/{path} answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
        Ok(serde_json::from_slice(&r.body)?)
    }

    /// Sets the desired node count; answers the reply, whose `ring` is the ring published by
    /// the change (for a scale-down, the drain ring).
    pub async fn scale(&self, replicas: u32) -> anyhow::Result<Value> {
        self.post("scale", Some(serde_json::json!({ "replicas": replicas })))
            .await
    }

    /// The current ring as local mode published it.
    pub async fn ring(&self) -> anyhow::Result<Ring> {
        ring_of(&self.state().await?)
    }

    /// The proxies' client URLs (`http://…`).
    pub async fn proxy_urls(&self) -> anyhow::Result<Vec<String>> {
        let state = self.state().await?;
        Ok(state["proxies"]
            .as_array()
            .context("no proxies")?
            .iter()
            .filter_map(|p| p["url"].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until the ring has exactly `nodes` members, all active, and every running proxy
    /// applied the current version. Returns that state.
    pub async fn wait_settled(&self, nodes: usize, timeout: Duration) -> anyhow::Result<Value> {
        wait_for(
            &format!("{nodes} active members applied by every proxy"),
            timeout,
            || async {
                let s = self.state().await?;
                Ok(settled(&s, nodes).then_some(s))
            },
        )
        .await
    }

    /// Stops local mode (SIGTERM), waits for it to exit, and deletes the run's Redis keys.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let result = self.stop_process().await;
        if let Some(url) = &self.options.redis_url {
            delete_redis_keys(url, &self.options.redis_prefix).await?;
        }
        result
    }

    async fn stop_process(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(status) => {
                    let status = status?;
                    if !status.success() {
                        bail!("wscluster-operator local exited with {status}");
                    }
                }
                Err(_) => {
                    let _ = child.start_kill();
                    bail!("wscluster-operator local did not stop within 30 s");
                }
            }
        }
        Ok(())
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SIGTERM rather than SIGKILL: local mode then stops its own children.
            terminate(child);
        }
    }
}

/// Deletes every Redis key starting with `prefix` (one `EVAL` over RESP; the prefix holds no
/// glob characters). Test Redis only: `KEYS` walks the whole keyspace.
pub async fn delete_redis_keys(url: &str, prefix: &str) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    anyhow::ensure!(
        prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "unsafe key prefix {prefix:?}"
    );
    let rest = url.strip_prefix("redis://").unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = host_port.split('/').next().unwrap_or(host_port);
    let script = "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                  redis.call('DEL', k) n = n + 1 end return n";
    let pattern = format!("{prefix}*");
    let args = ["EVAL", script, "0", &pattern];
    let mut command = format!("*{}\r\n", args.len());
    for a in args {
        command.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let mut stream = tokio::net::TcpStream::connect(host_port)
        .await
        .with_context(|| format!("connecting to Redis at {host_port} to clean up"))?;
    stream.write_all(command.as_bytes()).await?;
    let mut reply = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut reply))
        .await
        .context("Redis cleanup: no answer")??;
    let text = String::from_utf8_lossy(&reply[..n]);
    let deleted = text
        .strip_prefix(':')
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| format!("Redis cleanup answered {text:?}"))?;
    Ok(deleted)
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

/// Whether a state shows `nodes` active members and every running proxy on the version.
pub fn settled(state: &Value, nodes: usize) -> bool {
    let members = state["ring"]["members"].as_array();
    let active = members.map_or(0, |m| m.iter().filter(|m| m["state"] == "active").count());
    let version = state["ringVersion"].as_u64();
    active == nodes
        && members.map_or(0, Vec::len) == nodes
        && state["proxies"].as_array().is_some_and(|ps| {
            ps.iter()
                .filter(|p| p["process"] == "running")
                .all(|p| p["appliedVersion"].as_u64() == version)
        })
}

/// The ring in a state.
pub fn ring_of(state: &Value) -> anyhow::Result<Ring> {
    let snapshot: RingSnapshot = serde_json::from_value(state["ring"].clone())?;
    Ok(Ring::build(snapshot)?)
}

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// The node of the current (or last) session, from the `ready` notice.
    pub node: Option<String>,
    /// Whether a session is open and past its `ready` notice.
    pub connected: bool,
    /// Reset frames received: (reason, ring version).
    pub resets: Vec<(String, Option<u64>)>,
    /// Sessions opened (1 + reconnects).
    pub sessions: u64,
    /// Established sessions that ended without a reset frame (cut).
    pub drops: u64,
    /// Connection attempts refused or failed before the WebSocket opened (for example a node
    /// refusing a key it does not own yet under its ring, or a dead proxy).
    pub failed_connects: u64,
    /// The last such failure, for diagnostics.
    pub last_connect_error: Option<String>,
    /// Message contents accepted, in order, after de-duplication by offset.
    pub messages: Vec<String>,
    /// The highest offset accepted.
    pub last_offset: u64,
    /// Messages dropped as duplicates (offset already seen).
    pub duplicates: u64,
    /// Messages whose content names another user: must stay 0.
    pub misdelivered: u64,
    /// When the last session became ready.
    pub ready_at: Option<Instant>,
}

/// One reconnecting client (the logic of docs/client.md), sending nothing, recording all.
#[derive(Clone)]
pub struct Client {
    /// Its user id.
    pub user: String,
    /// What it saw.
    pub record: Arc<Mutex<Record>>,
}

impl Client {
    /// A copy of its record.
    pub fn snapshot(&self) -> Record {
        self.record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Many clients, spread over the proxies, each in its own task.
pub struct Fleet {
    /// The clients, in user order.
    pub clients: Vec<Client>,
    stop: tokio_util_lite::Stop,
}

mod tokio_util_lite {
    //! A stop flag with a notifier, so the crate needs no tokio-util.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::Notify;

    /// Cloneable stop signal.
    #[derive(Clone, Default)]
    pub struct Stop(Arc<(AtomicBool, Notify)>);

    impl Stop {
        pub fn stop(&self) {
            self.0.0.store(true, Ordering::SeqCst);
            self.0.1.notify_waiters();
        }
        pub fn stopped(&self) -> bool {
            self.0.0.load(Ordering::SeqCst)
        }
        pub async fn wait(&self) {
            let notified = self.0.1.notified();
            if self.stopped() {
                return;
            }
            notified.await;
        }
    }
}

impl Fleet {
    /// Connects `count` users named `<prefix>-<i>`, client i through proxy `i % proxies`
    /// (falling over to the next proxy after an unexpected drop).
    pub fn connect(prefix: &str, count: usize, proxies: &[String]) -> Fleet {
        let stop = tokio_util_lite::Stop::default();
        let ws: Vec<String> = proxies
            .iter()
            .map(|p| p.replacen("http://", "ws://", 1))
            .collect();
        let clients = (0..count)
            .map(|i| {
                let client = Client {
                    user: format!("{prefix}-{i}"),
                    record: Arc::new(Mutex::new(Record::default())),
                };
                tokio::spawn(run_client(client.clone(), ws.clone(), i, stop.clone()));
                client
            })
            .collect();
        Fleet { clients, stop }
    }

    /// Copies of every record, by user.
    pub fn records(&self) -> BTreeMap<String, Record> {
        self.clients
            .iter()
            .map(|c| (c.user.clone(), c.snapshot()))
            .collect()
    }

    /// Waits until every client is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for("every client connected", timeout, || async {
            let missing = self
                .clients
                .iter()
                .filter(|c| !c.snapshot().connected)
                .count();
            if missing == 0 {
                Ok(Some(()))
            } else {
                Err(anyhow::anyhow!("{missing} not connected"))
            }
        })
        .await
    }

    /// Waits until every client accepted at least `count` messages.
    pub async fn wait_messages(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            &format!("{count} messages at every client"),
            timeout,
            || async {
                let behind: Vec<String> = self
                    .clients
                    .iter()
                    .filter(|c| c.snapshot().messages.len() < count)
                    .map(|c| c.user.clone())
                    .collect();
                if behind.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(anyhow::anyhow!(
                        "{} behind, e.g. {:?}",
                        behind.len(),
                        &behind[..behind.len().min(5)]
                    ))
                }
            },
        )
        .await
    }

    /// Sends message `<user>:<seq>` to every client through the proxies (round robin, retrying
    /// a refused send on the next proxy for up to 20 s), `concurrency` at a time.
    pub async fn send_round(
        &self,
        proxies: &[String],
        seq: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let users: Vec<(usize, String)> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.user.clone()))
            .collect();
        let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(users)
            .map(|(i, user)| async move {
                send_with_retry(proxies, i, &user, &format!("{user}:{seq}")).await
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Waits until every client is connected to the owner `ring` names for it; answers how
    /// long that took.
    pub async fn wait_on_owners(&self, ring: &Ring, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        wait_for("every client on its owner", timeout, || async {
            let misplaced: Vec<String> = self
                .clients
                .iter()
                .filter(|c| {
                    let r = c.snapshot();
                    let owner = ring.owner(&c.user).map(|m| m.id.as_str()).ok();
                    !r.connected || r.node.as_deref() != owner
                })
                .map(|c| c.user.clone())
                .collect();
            if misplaced.is_empty() {
                Ok(Some(started.elapsed()))
            } else {
                Err(anyhow::anyhow!(
                    "{} not on their owner, e.g. {:?}",
                    misplaced.len(),
                    &misplaced[..misplaced.len().min(3)]
                ))
            }
        })
        .await
    }

    /// Stops every client.
    pub fn close(&self) {
        self.stop.stop();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// `GET /send?userId=…&message=…` through proxy `i % n`, retried on the next proxy while it
/// fails (a proxy being killed, a node refusing under a newer ring), for up to 20 s.
pub async fn send_with_retry(
    proxies: &[String],
    i: usize,
    user: &str,
    message: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    loop {
        let proxy = &proxies[(i + attempt) % proxies.len()];
        let url = format!(
            "{proxy}/send?userId={}&message={}",
            http::encode(user),
            http::encode(message)
        );
        let error = match http::request("GET", &url, None).await {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("sending to {user} failed for 20 s: {error}");
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_client(
    client: Client,
    proxies: Vec<String>,
    index: usize,
    stop: tokio_util_lite::Stop,
) {
    let mut proxy = index;
    let mut backoff = Duration::from_millis(100);
    loop {
        if stop.stopped() {
            return;
        }
        let since = client
            .record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_offset;
        let base = &proxies[proxy % proxies.len()];
        let mut url = format!("{base}/connect/{}", http::encode(&client.user));
        if since > 0 {
            url.push_str(&format!("?since={since}"));
        }
        let outcome = tokio::select! {
            outcome = session(&client, &url) => outcome,
            () = stop.wait() => return,
        };
        {
            let mut r = client.record.lock().unwrap_or_else(PoisonError::into_inner);
            r.connected = false;
        }
        let delay = match outcome {
            SessionEnd::Planned(retry) => {
                backoff = Duration::from_millis(100);
                retry
            }
            SessionEnd::DoNotReconnect => return,
            SessionEnd::Unexpected | SessionEnd::ConnectFailed(_) => {
                {
                    let mut r = client.record.lock().unwrap_or_else(PoisonError::into_inner);
                    match outcome {
                        SessionEnd::ConnectFailed(e) => {
                            r.failed_connects += 1;
                            r.last_connect_error = Some(e);
                        }
                        _ => r.drops += 1,
                    }
                }
                proxy += 1;
                let d = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                d
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.wait() => return,
        }
    }
}

enum SessionEnd {
    /// A reset frame and a 4000-4003 close: reconnect after this delay.
    Planned(Duration),
    /// 4002 (replaced) or 4008 (policy).
    DoNotReconnect,
    /// An open session ended any other way.
    Unexpected,
    /// The WebSocket never opened.
    ConnectFailed(String),
}

async fn session(client: &Client, url: &str) -> SessionEnd {
    let mut ws = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return SessionEnd::ConnectFailed(e.to_string()),
        Err(_) => return SessionEnd::ConnectFailed("no handshake within 10 s".into()),
    };
    let mut retry_after: Option<Duration> = None;
    while let Some(frame) = ws.next().await {
        let Ok(frame) = frame else {
            return SessionEnd::Unexpected;
        };
        match frame {
            Message::Text(text) => {
                let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                let mut r = client.record.lock().unwrap_or_else(PoisonError::into_inner);
                match msg["type"].as_str() {
                    Some("reset") => {
                        retry_after = Some(Duration::from_millis(
                            msg["retryAfterMs"].as_u64().unwrap_or(0),
                        ));
                        r.resets.push((
                            msg["reason"].as_str().unwrap_or("").to_string(),
                            msg["ringVersion"].as_u64(),
                        ));
                    }
                    Some("system") if msg["content"] == "ready" => {
                        r.node = msg["server"].as_str().map(str::to_owned);
                        r.connected = true;
                        r.sessions += 1;
                        r.ready_at = Some(Instant::now());
                    }
                    Some("message") => {
                        let offset = msg["offset"].as_u64().unwrap_or(0);
                        if offset <= r.last_offset {
                            r.duplicates += 1;
                            continue;
                        }
                        r.last_offset = offset;
                        let content = msg["content"].as_str().unwrap_or("").to_string();
                        let owner = content.rsplit_once(':').map(|(u, _)| u);
                        if owner != Some(client.user.as_str()) {
                            r.misdelivered += 1;
                        }
                        r.messages.push(content);
                    }
                    _ => {}
                }
            }
            Message::Close(close) => {
                let code = close.as_ref().map(|c: &CloseFrame| u16::from(c.code));
                let _ = ws.close(None).await;
                return match (code, retry_after) {
                    (Some(4002 | 4008), _) => SessionEnd::DoNotReconnect,
                    (Some(4000..=4003), Some(d)) => SessionEnd::Planned(d),
                    _ => SessionEnd::Unexpected,
                };
            }
            Message::Ping(p) => {
                let _ = ws.send(Message::Pong(p)).await;
            }
            _ => {}
        }
    }
    SessionEnd::Unexpected
}

/// Checks that each record holds exactly `<user>:1 … <user>:rounds` in order (after
/// de-duplication by offset) and nothing for anyone else. Returns the problems found.
pub fn delivery_problems(records: &BTreeMap<String, Record>, rounds: usize) -> Vec<String> {
    let mut problems = Vec::new();
    for (user, r) in records {
        if r.misdelivered > 0 {
            problems.push(format!(
                "{user}: {} messages for another user",
                r.misdelivered
            ));
        }
        let expected: Vec<String> = (1..=rounds).map(|s| format!("{user}:{s}")).collect();
        // A send retried after a lost answer may store the same content twice (at-least-once
        // from the sender's side); collapse consecutive repeats before comparing.
        let mut got = r.messages.clone();
        got.dedup();
        if got != expected {
            problems.push(format!("{user}: got {got:?}, expected {expected:?}"));
        }
    }
    problems
}
