//! Test harness: small WebSocket + HTTP backends that report their id, ring files, and the real
//! proxy binary spawned on 127.0.0.1 port 0.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wscluster_ring::{Member, RingSnapshot};
use wscluster_runtime::announce::read_announcement;

/// Every test bounds its own time with this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const CLUSTER: &str = "test/chat";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique temp directory for this test.
pub fn temp_dir(name: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "wscluster-proxy-test-{}-{n}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// What a backend saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendEvent {
    /// A WebSocket session opened for this path.
    Opened(String),
    /// A session ended; the close code the client (the proxy) sent, if any.
    Closed { path: String, code: Option<u16> },
}

/// A test backend: WebSocket sessions send `{"server":"<id>"}` first and echo every text
/// message; any plain HTTP request answers the id as text.
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub events: mpsc::UnboundedReceiver<BackendEvent>,
    /// Every request it received (upgrades and plain HTTP): target and header fields.
    pub seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

/// The requests a backend received, in order.
pub type Seen = Arc<std::sync::Mutex<Vec<(String, http::HeaderMap)>>>;

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(id: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let (tx, events) = mpsc::unbounded_channel();
        let id_owned: Arc<str> = Arc::from(id);
        let seen = Seen::default();
        let seen_by_task = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let id = Arc::clone(&id_owned);
                let tx = tx.clone();
                let seen = Arc::clone(&seen_by_task);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let id = Arc::clone(&id);
                        let tx = tx.clone();
                        if let Ok(mut seen) = seen.lock() {
                            seen.push((req.uri().to_string(), req.headers().clone()));
                        }
                        async move { Ok::<_, Infallible>(backend_answer(req, id, tx)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            id: id.to_owned(),
            addr,
            events,
            seen,
            task,
        }
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<(String, http::HeaderMap)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn member(&self) -> Member {
        Member::active(self.id.clone(), self.addr.to_string())
    }

    /// The next event, within a deadline.
    pub async fn next_event(&mut self) -> BackendEvent {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("backend event in time")
            .expect("backend running")
    }
}

fn backend_answer(
    mut req: Request<Incoming>,
    id: Arc<str>,
    tx: mpsc::UnboundedSender<BackendEvent>,
) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::new(Full::new(Bytes::from(id.to_string())));
    };
    let path = req.uri().to_string();
    if path.contains("refuse") {
        // A backend that refuses the upgrade with a body (as a node does for a key it does
        // not own): the proxy must pass the answer on whole.
        let mut resp = Response::new(Full::new(Bytes::from(format!("refused by {id}"))));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return resp;
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let _ = tx.send(BackendEvent::Opened(path.clone()));
        let hello = serde_json::json!({"server": &*id}).to_string();
        if ws.send(Message::text(hello)).await.is_err() {
            return;
        }
        let mut code = None;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    if ws.send(Message::Text(t)).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Binary(b)) => {
                    if ws.send(Message::Binary(b)).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(frame)) => {
                    code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(BackendEvent::Closed { path, code });
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("connection", "upgrade".parse().expect("header"));
    h.insert("upgrade", "websocket".parse().expect("header"));
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()).parse().expect("header"),
    );
    resp
}

/// Writes a ring file atomically (write then rename), so the watcher never reads half a file.
pub fn write_ring(path: &Path, version: u64, members: Vec<Member>) -> RingSnapshot {
    write_ring_for(CLUSTER, path, version, members)
}

/// [`write_ring`] for another cluster id.
pub fn write_ring_for(
    cluster: &str,
    path: &Path,
    version: u64,
    members: Vec<Member>,
) -> RingSnapshot {
    let snapshot = RingSnapshot::new(cluster, version, members);
    let tmp = path.with_extension(format!("tmp{version}"));
    std::fs::write(&tmp, snapshot.to_json()).expect("write ring");
    std::fs::rename(&tmp, path).expect("rename ring");
    snapshot
}

/// The proxy binary, running.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The server API address, when started with `--api-listen`.
    pub api: Option<SocketAddr>,
    /// The TLS listener's address, when started with `--tls-listen`.
    pub tls: Option<SocketAddr>,
    pub dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The child is killed right after (kill_on_drop); its temp dir goes now.
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub enum Ring<'a> {
    File(&'a Path),
    Url(&'a str, &'a str),
}

impl Proxy {
    /// Spawns the proxy with this config YAML and ring source; waits for its bound addresses.
    pub async fn spawn(dir: &Path, config_yaml: &str, ring: Ring<'_>) -> Proxy {
        Proxy::spawn_with(dir, config_yaml, ring, CLUSTER, &[]).await
    }

    /// [`Proxy::spawn`] for another cluster id and with extra flags.
    pub async fn spawn_with(
        dir: &Path,
        config_yaml: &str,
        ring: Ring<'_>,
        cluster: &str,
        extra: &[&str],
    ) -> Proxy {
        let config = dir.join("proxy.yaml");
        std::fs::write(&config, config_yaml).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wscluster-proxy"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--id")
            .arg("test-proxy")
            .arg("--cluster-id")
            .arg(cluster)
            .args(extra)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("WSCLUSTER_RING_URL")
            .env_remove("WSCLUSTER_RING_FILE")
            .env_remove("WSCLUSTER_AMQP_URL")
            .env_remove("WSCLUSTER_PROXY_SECRET_FILE")
            .env_remove("WSCLUSTER_API_LISTEN")
            .env_remove("WSCLUSTER_API_KEYS_FILE")
            .env_remove("WSCLUSTER_TLS_LISTEN")
            .env_remove("WSCLUSTER_TLS_CERT_FILE")
            .env_remove("WSCLUSTER_TLS_KEY_FILE")
            .stdout(Stdio::piped())
            // The proxy logs on stderr: shown with PROXY_TEST_LOG set, dropped otherwise.
            .stderr(if std::env::var_os("PROXY_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        match ring {
            Ring::File(p) => {
                cmd.arg("--ring-file").arg(p);
            }
            Ring::Url(url, token) => {
                cmd.arg("--ring-url")
                    .arg(url)
                    .arg("--ring-token")
                    .arg(token);
            }
        }
        let mut child = cmd.spawn().expect("spawn proxy");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = BufReader::new(stdout);
        // The first stdout line is `listening on <clients> admin=<admin>`; logs go to stderr.
        let announced =
            tokio::time::timeout(Duration::from_secs(20), read_announcement(&mut stdout))
                .await
                .expect("proxy announced its addresses in time")
                .expect("proxy announced its addresses");
        let addr = announced.addr;
        let admin = announced
            .get("admin")
            .expect("the admin address is announced");
        let api = announced.get("api");
        let tls = announced.get("tls");
        // Keep draining stdout so the proxy never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = stdout.lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        Proxy {
            child,
            addr,
            admin,
            api,
            tls,
            dir: dir.to_owned(),
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// GET on the admin port: status and body.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        http_get(self.admin, path, &[]).await
    }

    /// Waits until `/readyz` reports this ring version.
    pub async fn wait_ring_version(&self, version: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = self.admin_get("/readyz").await;
            if status == StatusCode::OK
                && serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["ringVersion"].as_u64())
                    == Some(version)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "proxy never applied ring {version}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A metric's value from `/metrics` (the first line starting with `name`).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Polls `/metrics` until `name` reads `value`, within 20 s: for counters the proxy bumps
    /// after the client has already seen the outcome (a TLS alert, a watcher's reload).
    pub async fn wait_metric(&self, name: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.metric(name).await;
            if now == Some(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never reached {value}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// One HTTP/1.1 GET with extra headers: status and body.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let (status, _, body) = http_get_full(addr, path, headers).await;
    (status, body)
}

/// One HTTP/1.1 GET: status, headers and body.
pub async fn http_get_full(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(
            req.body(http_body_util::Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects through the proxy and returns the socket and the backend id it reports.
pub async fn connect(url: &str) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    let first = next_text(&mut ws).await;
    let v: serde_json::Value = serde_json::from_str(&first).expect("hello json");
    let id = v["server"].as_str().expect("server id").to_owned();
    (ws, id)
}

/// The next text message, within a deadline, over any transport (plain or TLS).
pub async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("valid frame");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Reads one whole HTTP/1.1 response from `s` (framed by its Content-Length, none meaning an
/// empty body), leaving the connection open: the head and the body.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 2048];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if body.len() >= len {
            return (head.to_owned(), body.to_owned());
        }
    }
}

/// Echo round trip: proves the connection is alive and still spliced.
pub async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    assert_eq!(next_text(ws).await, text);
}

/// What the proxy sent when it ended a connection: the reset frame (if any) and the close code.
#[derive(Debug)]
pub struct Ending {
    pub reset: Option<serde_json::Value>,
    pub code: Option<u16>,
    pub at: tokio::time::Instant,
}

/// Reads until the connection ends; collects the reset frame and close code.
pub async fn read_ending<S>(ws: &mut WebSocketStream<S>, within: Duration) -> Ending
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut reset = None;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("connection ended in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "reset" {
                    reset = Some(v);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Ending {
                    reset,
                    code: frame.map(|f| u16::from(f.code)),
                    at: tokio::time::Instant::now(),
                };
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                return Ending {
                    reset,
                    code: None,
                    at: tokio::time::Instant::now(),
                };
            }
        }
    }
}

/// Backends behind a proxy that has applied ring `version` of all of them, read from a ring
/// file in the proxy's own temp directory: the set-up most proxy tests start from. A backend
/// stops when dropped: keep the whole value (or its `backends`) while they must answer.
pub struct BehindProxy {
    /// The backends, in the order their ids were given (alive as long as this is).
    pub backends: Vec<Backend>,
    /// The proxy's directory.
    pub dir: PathBuf,
    /// The ring file the proxy watches; rewrite it with [`write_ring`].
    pub ring_path: PathBuf,
    /// The ring the proxy applied, to compute owners with.
    pub ring: wscluster_ring::Ring,
    /// The proxy.
    pub proxy: Proxy,
}

impl BehindProxy {
    /// Backends `ids` behind a proxy with `config_yaml` that has applied ring `version`.
    pub async fn start(name: &str, ids: &[&str], config_yaml: &str, version: u64) -> BehindProxy {
        let mut backends = Vec::with_capacity(ids.len());
        for id in ids {
            backends.push(Backend::start(id).await);
        }
        let dir = temp_dir(name);
        let ring_path = dir.join("ring.json");
        let members = backends.iter().map(Backend::member).collect();
        let ring =
            wscluster_ring::Ring::build(write_ring(&ring_path, version, members)).expect("ring");
        let proxy = Proxy::spawn(&dir, config_yaml, Ring::File(&ring_path)).await;
        proxy.wait_ring_version(version).await;
        BehindProxy {
            backends,
            dir,
            ring_path,
            ring,
            proxy,
        }
    }
}

/// One HTTP/1.1 request with a method, extra headers and a body: status, headers and body.
pub async fn http_call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A plain HTTP server whose every answer `answer` makes from the request's target and
/// fields; what it received goes to the returned channel. Stops when the handle is dropped.
pub struct FakeNode {
    pub addr: SocketAddr,
    pub requests: mpsc::UnboundedReceiver<(String, http::HeaderMap, Bytes)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeNode {
    /// Starts one; `answer(target, fields)` gives the status, extra fields and body.
    pub async fn start<F>(answer: F) -> FakeNode
    where
        F: Fn(&str, &http::HeaderMap) -> (StatusCode, Vec<(String, String)>, String)
            + Send
            + Sync
            + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, requests) = mpsc::unbounded_channel();
        let answer = Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, answer) = (tx.clone(), Arc::clone(&answer));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (tx, answer) = (tx.clone(), Arc::clone(&answer));
                        async move {
                            let target = req.uri().to_string();
                            let headers = req.headers().clone();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let (status, fields, text) = answer(&target, &headers);
                            let _ = tx.send((target, headers, body.unwrap_or_default()));
                            let mut resp = Response::new(Full::new(Bytes::from(text)));
                            *resp.status_mut() = status;
                            for (k, v) in fields {
                                if let (Ok(k), Ok(v)) = (
                                    http::HeaderName::from_bytes(k.as_bytes()),
                                    http::HeaderValue::from_str(&v),
                                ) {
                                    resp.headers_mut().insert(k, v);
                                }
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeNode {
            addr,
            requests,
            task,
        }
    }

    /// The next request it received, within a deadline.
    pub async fn next_request(&mut self) -> (String, http::HeaderMap, Bytes) {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("a request in time")
            .expect("fake node running")
    }
}

/// Writes `text` to `path` atomically (write then rename), as Kubernetes updates a mounted
/// Secret.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
