//! Helpers shared by the node's integration tests: spawn the real binary, talk HTTP and
//! WebSocket to it, reach the real Redis and RabbitMQ, and give each test its own Redis
//! prefix, RabbitMQ exchange and ring file, cleaned up afterwards.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wscluster_ring::{Ring, RingSnapshot};

/// Longest wait for any single expected event in a test.
pub const STEP: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a test body under a deadline, so a hung test fails instead of blocking the run.
pub async fn within<F: Future>(limit: Duration, test: F) -> F::Output {
    tokio::time::timeout(limit, test)
        .await
        .expect("test finished in time")
}

/// A name unique to this test process and call.
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn redis_url() -> String {
    std::env::var("WSCLUSTER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn amqp_url() -> String {
    std::env::var("WSCLUSTER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A Redis connection, or a failure that says how to fix it.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("valid redis url");
    tokio::time::timeout(STEP, client.get_multiplexed_async_connection())
        .await
        .unwrap_or_else(|_| panic!("redis at {url} did not answer; start redis-server or set WSCLUSTER_TEST_REDIS_URL"))
        .unwrap_or_else(|e| panic!("redis at {url} is unreachable ({e}); start redis-server or set WSCLUSTER_TEST_REDIS_URL"))
}

/// A connection manager on the test Redis, as the node's mailbox is given one.
pub async fn redis_manager() -> redis::aio::ConnectionManager {
    let client = redis::Client::open(redis_url()).expect("valid redis url");
    tokio::time::timeout(STEP, redis::aio::ConnectionManager::new(client))
        .await
        .expect("redis answered in time")
        .expect("redis reachable")
}

/// Deletes every Redis key under `prefix`.
pub async fn redis_cleanup(prefix: &str) {
    let mut con = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut con)
            .await
            .expect("DEL");
    }
}

/// A RabbitMQ connection, or a failure that says how to fix it.
pub async fn amqp() -> lapin::Connection {
    let url = amqp_url();
    tokio::time::timeout(STEP, lapin::Connection::connect(&url, lapin::ConnectionProperties::default()))
        .await
        .unwrap_or_else(|_| panic!("rabbitmq at {url} did not answer; start rabbitmq-server or set WSCLUSTER_TEST_AMQP_URL"))
        .unwrap_or_else(|e| panic!("rabbitmq at {url} is unreachable ({e}); start rabbitmq-server or set WSCLUSTER_TEST_AMQP_URL"))
}

/// Publishes a JSON payload on the cluster's exchange.
pub async fn amqp_publish(cluster: &str, routing_key: &str, payload: &Value) {
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_publish(
        wscluster_ring::contract::bus::exchange_name(cluster)
            .as_str()
            .into(),
        routing_key.into(),
        lapin::options::BasicPublishOptions::default(),
        payload.to_string().as_bytes(),
        lapin::BasicProperties::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    let _ = conn.close(200, "done".into()).await;
}

/// Deletes the cluster's exchange and the queues of the named members.
pub async fn amqp_cleanup(cluster: &str, members: &[&str]) {
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let exchange = wscluster_ring::contract::bus::exchange_name(cluster);
    for m in members {
        let settings = wscluster_node::bus::AmqpSettings {
            url: String::new(),
            cluster_id: cluster.to_owned(),
            member: (*m).to_owned(),
        };
        let _ = ch
            .queue_delete(settings.queue_name().as_str().into(), Default::default())
            .await;
    }
    let _ = ch
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
}

/// Redis for one test: a key prefix of its own (checked to be reachable first); `finish`
/// deletes every key under it.
pub struct RedisScope {
    /// The node's `--redis-url`.
    pub url: String,
    /// The node's `--redis-prefix`, unique to this test.
    pub prefix: String,
}

impl RedisScope {
    /// A fresh prefix on the test Redis; fails clearly if Redis is down.
    pub async fn new() -> Self {
        let _ = redis().await;
        RedisScope {
            url: redis_url(),
            prefix: unique("wsc-test"),
        }
    }

    /// The node flags that put it on this Redis and prefix.
    pub fn args(&self) -> [&str; 4] {
        ["--redis-url", &self.url, "--redis-prefix", &self.prefix]
    }

    /// A node on this Redis, with `extra` flags.
    pub async fn node(&self, id: &str, extra: &[&str]) -> Node {
        Node::spawn(id, &[&self.args()[..], extra].concat()).await
    }

    /// Deletes the test's keys.
    pub async fn finish(self) {
        redis_cleanup(&self.prefix).await;
    }
}

/// RabbitMQ for one test: a cluster id of its own, so its own exchange (checked to be
/// reachable first); `finish` stops the test's nodes, then deletes the exchange and their
/// queues.
pub struct AmqpScope {
    /// The node's `--amqp-url`.
    pub url: String,
    /// The node's `--cluster-id`, unique to this test; it names the exchange.
    pub cluster: String,
}

impl AmqpScope {
    /// A fresh cluster id starting with `name`; fails clearly if RabbitMQ is down.
    pub async fn new(name: &str) -> Self {
        let probe = amqp().await;
        let _ = probe.close(200, "probe".into()).await;
        AmqpScope {
            url: amqp_url(),
            cluster: unique(name),
        }
    }

    /// The node flags that put it on this cluster's exchange.
    pub fn args(&self) -> [&str; 4] {
        ["--cluster-id", &self.cluster, "--amqp-url", &self.url]
    }

    /// A node on this exchange, returned once its bus is connected.
    pub async fn node(&self, id: &str) -> Node {
        let node = Node::spawn(id, &self.args()).await;
        node.wait_bus_connected().await;
        node
    }

    /// Stops `nodes` (so none redeclares its queue), then deletes the exchange and their queues.
    pub async fn finish(self, nodes: Vec<Node>) {
        let mut members = Vec::new();
        for node in nodes {
            members.push(node.id.clone());
            node.stop().await;
        }
        let members: Vec<&str> = members.iter().map(String::as_str).collect();
        amqp_cleanup(&self.cluster, &members).await;
    }
}

/// A ring file in a temporary directory of its own, removed when dropped.
pub struct RingFile {
    /// The directory, removed with the file.
    dir: PathBuf,
    /// The node's `--ring-file`.
    pub path: String,
}

impl RingFile {
    /// A path for a ring file; nothing is written yet (a node waits for it to appear).
    pub fn empty() -> Self {
        let dir = std::env::temp_dir().join(unique("wsc-ring"));
        std::fs::create_dir_all(&dir).expect("ring file dir");
        let path = dir.join("ring.json").to_string_lossy().into_owned();
        RingFile { dir, path }
    }

    /// A ring file holding `snapshot`.
    pub fn holding(snapshot: &RingSnapshot) -> Self {
        let file = RingFile::empty();
        file.write(snapshot);
        file
    }

    /// Replaces the file's snapshot (nodes watching it apply the new one).
    pub fn write(&self, snapshot: &RingSnapshot) {
        std::fs::write(&self.path, snapshot.to_json()).expect("write ring file");
    }
}

impl Drop for RingFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A key that `member` owns under `snapshot`.
pub fn key_owned_by(snapshot: &RingSnapshot, member: &str) -> String {
    let ring = Ring::build(snapshot.clone()).expect("ring");
    (0..10_000)
        .map(|i| format!("user-{i}"))
        .find(|k| ring.owns(member, k))
        .unwrap_or_else(|| panic!("no key owned by {member}"))
}

/// The server API key every test node accepts unless a test names its own key file.
pub const API_KEY: &str = "test-api-key-0123456789";

/// A file of secrets (one per line) in a directory of its own, removed when dropped.
pub struct SecretFile {
    dir: PathBuf,
    /// The file's path, for `--api-keys-file` or `--proxy-secret-file`.
    pub path: String,
}

impl SecretFile {
    /// A file holding `secrets`, one per line.
    pub fn new(secrets: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("wsc-secret"));
        std::fs::create_dir_all(&dir).expect("secret dir");
        let path = dir.join("secret").to_string_lossy().into_owned();
        let file = SecretFile { dir, path };
        file.write(secrets);
        file
    }

    /// Replaces the file's secrets the way Kubernetes updates a mounted Secret: a new file
    /// renamed over the old one, so a reader never sees half of it.
    pub fn write(&self, secrets: &[&str]) {
        let tmp = format!("{}.tmp", self.path);
        std::fs::write(&tmp, secrets.join("\n") + "\n").expect("write secrets");
        std::fs::rename(&tmp, &self.path).expect("swap secrets");
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node process, killed when dropped.
pub struct Node {
    pub child: Child,
    /// The public port (upgrades, the server API).
    pub addr: String,
    /// The admin port (health, readiness, metrics, counts, presence).
    pub admin: String,
    pub id: String,
    /// The API key file, unless the test passed its own `--api-keys-file`.
    _api_keys: Option<SecretFile>,
}

impl Node {
    /// Spawns the real binary with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --id <id>`
    /// and, unless `args` name one, `--api-keys-file` holding [`API_KEY`], plus `args`; waits
    /// for its `listening on` line.
    pub async fn spawn(id: &str, args: &[&str]) -> Node {
        let own_keys = args.contains(&"--api-keys-file");
        Node::spawn_with(id, args, !own_keys).await
    }

    /// [`Node::spawn`] without an API key file: the server API is off.
    pub async fn spawn_without_api(id: &str, args: &[&str]) -> Node {
        Node::spawn_with(id, args, false).await
    }

    async fn spawn_with(id: &str, args: &[&str], with_api_key: bool) -> Node {
        let api_keys = with_api_key.then(|| SecretFile::new(&[API_KEY]));
        let mut command = Command::new(env!("CARGO_BIN_EXE_wscluster-node"));
        command.args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--id",
            id,
        ]);
        if let Some(file) = &api_keys {
            command.args(["--api-keys-file", &file.path]);
        }
        let mut child = command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("WSCLUSTER_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn wscluster-node");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(STEP, lines.next_line())
            .await
            .expect("node printed its address in time")
            .expect("read stdout")
            .expect("node printed a line");
        let announced: wscluster_runtime::Announcement = line
            .parse()
            .unwrap_or_else(|e| panic!("unexpected first line {line:?}: {e}"));
        let admin = announced
            .get("admin")
            .expect("an admin address")
            .to_string();
        Node {
            child,
            addr: announced.addr.to_string(),
            admin,
            id: id.to_owned(),
            _api_keys: api_keys,
        }
    }

    /// Kills the process and waits until it is gone.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Polls `GET path` until `done(status, body)` holds, or fails after [`STEP`]; returns the
    /// body that satisfied it.
    pub async fn poll(&self, what: &str, path: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
        let done = &done;
        eventually(what, || async move {
            let (status, body) = self.http("GET", path, None).await;
            done(status, &body).then_some(body)
        })
        .await
    }

    /// Waits until `/readyz` reports the message bus connected.
    pub async fn wait_bus_connected(&self) {
        self.poll("the node connects to rabbitmq", "/readyz", |_, r| {
            r["busConnected"] == true
        })
        .await;
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// One HTTP request to the port that serves `path`: the server API (with [`API_KEY`]),
    /// `/send` and `/connect` on the public port, everything else on the admin port. Returns
    /// the status and the JSON body (Null if not JSON).
    pub async fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let public = ["/api/", "/send", "/connect"]
            .iter()
            .any(|p| path.starts_with(p));
        if public {
            let auth = format!("Bearer {API_KEY}");
            http_with(&self.addr, method, path, body, &[("authorization", &auth)]).await
        } else {
            http(&self.admin, method, path, body).await
        }
    }

    /// `POST /api/v1/users/{user}/messages` with `{"message": message}`.
    pub async fn send(&self, user: &str, message: &str) -> (u16, Value) {
        let path = wscluster_ring::contract::api::Route::UserMessages(user.to_owned()).path();
        let body = serde_json::json!({ "message": message }).to_string();
        self.http("POST", &path, Some(&body)).await
    }

    /// Polls [`Node::send`] until `done(status, body)` holds, or fails after [`STEP`].
    pub async fn poll_send(
        &self,
        what: &str,
        user: &str,
        done: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let done = &done;
        eventually(what, || async move {
            let (status, body) = self.send(user, "x").await;
            done(status, &body).then_some(body)
        })
        .await
    }

    /// A WebSocket to `path`, after the server's ready frame (whose preceding frames, such as
    /// the replay, are returned).
    pub async fn connect(&self, path: &str) -> (Ws, Vec<Value>) {
        let (ws, before, _) = self.connect_ready(path).await;
        (ws, before)
    }

    /// [`Node::connect`], also returning the ready frame
    /// (`{"type":"ready","epoch":…,"offset":…,"recovered":…}`).
    pub async fn connect_ready(&self, path: &str) -> (Ws, Vec<Value>, Value) {
        let (mut ws, _) = tokio::time::timeout(
            STEP,
            tokio_tungstenite::connect_async(format!("ws://{}{path}", self.addr)),
        )
        .await
        .expect("connect in time")
        .expect("upgrade accepted");
        let mut before = Vec::new();
        loop {
            let v = next_json(&mut ws).await;
            if v["type"] == "ready" {
                return (ws, before, v);
            }
            before.push(v);
        }
    }

    /// Attempts an upgrade that must be refused; returns the status and JSON body.
    pub async fn refused(&self, path: &str) -> (u16, Value) {
        match tokio::time::timeout(
            STEP,
            tokio_tungstenite::connect_async(format!("ws://{}{path}", self.addr)),
        )
        .await
        .expect("answer in time")
        {
            Ok(_) => panic!("upgrade to {path} was accepted"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                (resp.status().as_u16(), body)
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    http_with(addr, method, path, body, &[]).await
}

/// One HTTP/1.1 request on a fresh connection, with extra headers.
pub async fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let (status, _, body) = http_full(addr, method, path, body, headers).await;
    (status, body)
}

/// One HTTP/1.1 request on a fresh connection, with extra headers; returns the status, the
/// response headers and the JSON body (Null if not JSON).
pub async fn http_full(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Value) {
    let stream = TcpStream::connect(addr).await.expect("tcp connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .expect("request");
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The next text frame as JSON (pings and pongs skipped).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame ok");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("json frame"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the close frame; returns its code and the text frames seen before it.
pub async fn expect_close(ws: &mut Ws) -> (u16, Vec<Value>) {
    let mut texts = Vec::new();
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("close in time");
        match msg {
            Some(Ok(Message::Text(t))) => texts.push(serde_json::from_str(&t).expect("json")),
            Some(Ok(Message::Close(frame))) => {
                return (frame.map_or(1005, |f| u16::from(f.code)), texts);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("error before close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Sends a text frame.
pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// Polls `f` until it returns Some, or fails after [`STEP`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
