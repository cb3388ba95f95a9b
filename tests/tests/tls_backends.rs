//! Redis and RabbitMQ over TLS (issue 15 §3), across real processes: the test makes a CA and a
//! server certificate for 127.0.0.1 (rcgen), starts its own `redis-server` serving TLS only and
//! its own `rabbitmq-server` with only an AMQPS listener, and runs real `wscluster-node`
//! binaries against them with `--redis-ca-file` and `--amqp-ca-file`.
//!
//! * A message sent to a user and a broadcast are both delivered: the user's mailbox is written
//!   over `rediss://` (its key is read back over TLS), and a broadcast posted to one node
//!   reaches a client of the other only through the broker over `amqps://`.
//! * A CA that did not sign the server's certificate fails clearly and quickly: for Redis the
//!   node refuses to start, naming Redis and the certificate problem; for RabbitMQ (which the
//!   node keeps retrying in the background) the first warning names both and `/readyz` reports
//!   the bus down.
//!
//! The node binary: `WSCLUSTER_NODE_BIN`, else `target/debug/wscluster-node`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use hyper::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use wscluster_ring::contract::api::Route;
use wscluster_runtime::Announcement;
use wscluster_tests::chaos::services::RABBIT_START_SECONDS;
use wscluster_tests::chaos::{PrivateRabbit, PrivateRedis, ServerTls};
use wscluster_tests::http::{request, request_with};
use wscluster_tests::{TempDir, binary, run_bounded, unique, wait_for};

/// The server API key the test's nodes accept.
const API_KEY: &str = "tls-backends-api-key-0123456789";
/// Longest wait for one expected event (a frame, a log line, a process exit).
const STEP: Duration = Duration::from_secs(20);
/// Longest a wrong CA may take to be reported. The node bounds its Redis probe at 5 s and a
/// RabbitMQ attempt at 10 s; a certificate failure takes one round trip.
const WRONG_CA_WITHIN: Duration = Duration::from_secs(12);

/// A test CA, a server certificate it signed for `127.0.0.1` and `localhost`, and a second CA
/// that signed nothing, as files in one temporary directory.
struct Pki {
    /// Holds the files; removed when dropped.
    dir: TempDir,
    /// What the servers present.
    server: ServerTls,
    /// A CA unrelated to the servers' certificates.
    wrong_ca: PathBuf,
}

impl Pki {
    fn new() -> anyhow::Result<Pki> {
        let dir = TempDir::new("wsc-tls-backends")?;
        let (ca, ca_key) = ca_certificate("wscluster test CA")?;
        let (wrong, _) = ca_certificate("wscluster unrelated CA")?;
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let key = rcgen::KeyPair::generate()?;
        let issuer = rcgen::Issuer::new(ca_params("wscluster test CA")?, ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.crt"), ca.pem())?;
        std::fs::write(path("wrong-ca.crt"), wrong.pem())?;
        std::fs::write(path("tls.crt"), cert.pem())?;
        std::fs::write(path("tls.key"), key.serialize_pem())?;
        Ok(Pki {
            server: ServerTls {
                cert_file: path("tls.crt"),
                key_file: path("tls.key"),
                ca_file: path("ca.crt"),
            },
            wrong_ca: path("wrong-ca.crt"),
            dir,
        })
    }

    /// A file of the server API's key, for `--api-keys-file`.
    fn api_keys_file(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("api-keys");
        std::fs::write(&path, format!("{API_KEY}\n"))?;
        Ok(path)
    }
}

fn ca_params(name: &str) -> anyhow::Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}

fn ca_certificate(name: &str) -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = ca_params(name)?.self_signed(&key)?;
    Ok((cert, key))
}

/// A `wscluster-node` process, killed when dropped; its stderr lines are collected.
struct NodeProcess {
    /// The process, held for `kill_on_drop`.
    _child: Child,
    /// The public address (upgrades, the server API).
    addr: String,
    /// The admin address (`/readyz`).
    admin: String,
    /// Every stderr line so far.
    stderr: LogLines,
}

/// A child's stdout, line by line.
type StdoutLines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;
/// A child's stderr lines so far, filled by a reader task.
type LogLines = Arc<Mutex<Vec<String>>>;

/// Spawns the node binary with `args` and collects its stderr; returns the child, the stdout
/// lines and the stderr store.
fn spawn_node(args: &[String]) -> anyhow::Result<(Child, StdoutLines, LogLines)> {
    let mut child = Command::new(binary("WSCLUSTER_NODE_BIN", "wscluster-node")?)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting wscluster-node")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let stderr = child.stderr.take().context("node stderr")?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&lines);
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            eprintln!("node: {line}");
            if let Ok(mut all) = store.lock() {
                all.push(line);
            }
        }
    });
    Ok((child, BufReader::new(stdout).lines(), lines))
}

impl NodeProcess {
    /// Starts a node and waits for its `listening on` line.
    async fn start(args: &[String]) -> anyhow::Result<NodeProcess> {
        let (child, mut stdout, stderr) = spawn_node(args)?;
        let line = tokio::time::timeout(STEP, stdout.next_line())
            .await
            .context("the node announced its address in time")??
            .context("the node exited before announcing its address")?;
        let announced: Announcement = line.parse().context("the announcement line")?;
        let admin = announced.get("admin").context("an admin address")?;
        Ok(NodeProcess {
            _child: child,
            addr: announced.addr.to_string(),
            admin: admin.to_string(),
            stderr,
        })
    }

    /// Waits until `/readyz` reports the bus connected.
    async fn wait_bus_connected(&self) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.admin);
        wait_for("the node's bus connected over amqps", STEP, || async {
            let body = request(Method::GET, &url, None).await?.json()?;
            Ok((body["busConnected"] == true).then_some(()))
        })
        .await
    }

    /// A server API call with the test's key; returns the status and JSON body.
    async fn api(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let url = format!("http://{}{path}", self.addr);
        let auth = format!("Bearer {API_KEY}");
        let response =
            request_with(Method::POST, &url, Some(body), &[("authorization", &auth)]).await?;
        Ok((
            response.status.as_u16(),
            response.json().unwrap_or(Value::Null),
        ))
    }
}

/// The flags that put a node on the test's TLS backends.
fn tls_args(redis: &PrivateRedis, rabbit: &PrivateRabbit, ca: &std::path::Path) -> Vec<String> {
    let ca = ca.display().to_string();
    [
        ("--redis-url", redis.url()),
        ("--redis-ca-file", ca.clone()),
        ("--amqp-url", rabbit.url()),
        ("--amqp-ca-file", ca),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `node` as `user`, after its ready frame.
async fn connect(node: &NodeProcess, user: &str) -> anyhow::Result<Ws> {
    let url = format!("ws://{}/connect/{user}", node.addr);
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .context("upgrade in time")??;
    next_frame_where(&mut ws, |v| v["type"] == "ready").await?;
    Ok(ws)
}

/// The next JSON text frame that satisfies `wanted`, skipping others, within [`STEP`].
async fn next_frame_where(ws: &mut Ws, wanted: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let read = async {
        while let Some(frame) = ws.next().await {
            if let Message::Text(text) = frame? {
                let value: Value = serde_json::from_str(&text)?;
                if wanted(&value) {
                    return Ok(value);
                }
            }
        }
        anyhow::bail!("the socket closed before the frame arrived")
    };
    tokio::time::timeout(STEP, read)
        .await
        .context("the frame arrived in time")?
}

/// Keys under `prefix` in `redis`, read over TLS with the test's CA.
async fn redis_keys(
    redis: &PrivateRedis,
    ca: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    wscluster_runtime::ca::install_crypto_provider();
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(ca)?),
    };
    let client = redis::Client::build_with_tls(redis.url(), certificates)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_user_and_a_broadcast_are_delivered_over_rediss_and_amqps() {
    // RabbitMQ takes 6-20 s to start on 2 cores, up to RABBIT_START_SECONDS when they are
    // crowded.
    let limit = Duration::from_secs(RABBIT_START_SECONDS + 90);
    run_bounded(limit, delivered_over_tls()).await;
}

async fn delivered_over_tls() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let redis = PrivateRedis::start_tls(false, pki.server.clone()).await?;
    let rabbit = PrivateRabbit::start_tls(pki.server.clone()).await?;
    let prefix = unique("wsc-tls");
    let cluster = unique("tls/chat");
    let keys = pki.api_keys_file()?.display().to_string();
    let mut common = tls_args(&redis, &rabbit, &pki.server.ca_file);
    common.extend([
        "--redis-prefix".into(),
        prefix.clone(),
        "--cluster-id".into(),
        cluster,
    ]);
    common.extend(["--api-keys-file".into(), keys]);
    let node = |id: &str| {
        let mut args = common.clone();
        args.extend(["--id".to_owned(), id.to_owned()]);
        async move { NodeProcess::start(&args).await }
    };
    let a = node("tls-a").await?;
    let b = node("tls-b").await?;
    a.wait_bus_connected().await?;
    b.wait_bus_connected().await?;
    let mut alice = connect(&a, "alice").await?;
    let mut bob = connect(&b, "bob").await?;

    let path = Route::UserMessages("alice".into()).path();
    let (status, body) = a.api(&path, &json!({ "message": "to alice" })).await?;
    anyhow::ensure!(status == 200, "send answered {status}: {body}");
    let got = next_frame_where(&mut alice, |v| v["content"] == "to alice").await?;
    anyhow::ensure!(
        got["offset"].as_u64().is_some(),
        "a stored message has an offset: {got}"
    );
    let stored = redis_keys(&redis, &pki.server.ca_file, &prefix).await?;
    anyhow::ensure!(
        !stored.is_empty(),
        "the mailbox is in the TLS Redis under {prefix}"
    );

    let (status, body) = a
        .api(&Route::Broadcast.path(), &json!({ "message": "to all" }))
        .await?;
    anyhow::ensure!(status == 202, "broadcast answered {status}: {body}");
    for (who, ws) in [("alice", &mut alice), ("bob", &mut bob)] {
        let got = next_frame_where(ws, |v| v["content"] == "to all")
            .await
            .with_context(|| format!("{who} got the broadcast"))?;
        anyhow::ensure!(got["type"] == "broadcast", "{got}");
    }

    // The same broker, a CA that did not sign its certificate: reported, not hung.
    let mut wrong = tls_args(&redis, &rabbit, &pki.wrong_ca);
    wrong.drain(..4); // AMQP only: Redis with the wrong CA would refuse the start.
    wrong.extend(["--id".into(), "tls-wrong".into()]);
    let c = NodeProcess::start(&wrong).await?;
    let line = wait_for(
        "a warning naming rabbitmq and the certificate",
        WRONG_CA_WITHIN,
        || async {
            let lines = c.stderr.lock().map(|l| l.clone()).unwrap_or_default();
            Ok(lines.into_iter().find(|l| {
                let l = l.to_lowercase();
                l.contains("rabbitmq") && l.contains("certificate")
            }))
        },
    )
    .await?;
    eprintln!("wrong CA for amqps reported as: {line}");
    let ready = request(Method::GET, &format!("http://{}/readyz", c.admin), None)
        .await?
        .json()?;
    anyhow::ensure!(ready["busConnected"] == false, "the bus is down: {ready}");
    drop((a, b, c));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_for_rediss_fails_the_start_quickly_naming_redis_and_the_certificate() {
    run_bounded(Duration::from_secs(60), wrong_redis_ca()).await;
}

async fn wrong_redis_ca() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let redis = PrivateRedis::start_tls(false, pki.server.clone()).await?;
    let args = [
        "--id".to_owned(),
        "tls-wrong-redis".to_owned(),
        "--redis-url".to_owned(),
        redis.url(),
        "--redis-ca-file".to_owned(),
        pki.wrong_ca.display().to_string(),
    ];
    let started = std::time::Instant::now();
    let (mut child, _stdout, stderr) = spawn_node(&args)?;
    let status = tokio::time::timeout(WRONG_CA_WITHIN, child.wait())
        .await
        .context("the node gave up within the bound")??;
    let took = started.elapsed();
    anyhow::ensure!(!status.success(), "the node refused to start: {status}");
    // The exit closed stderr; give the reader a moment to store the last line.
    let error = wait_for("the error line", STEP, || async {
        let lines = stderr.lock().map(|l| l.clone()).unwrap_or_default();
        Ok(lines.into_iter().find(|l| l.starts_with("error:")))
    })
    .await?;
    let lower = error.to_lowercase();
    anyhow::ensure!(
        lower.contains("redis") && lower.contains("certificate"),
        "the error names Redis and the certificate: {error}"
    );
    eprintln!("wrong CA for rediss refused in {took:?}: {error}");
    Ok(())
}
