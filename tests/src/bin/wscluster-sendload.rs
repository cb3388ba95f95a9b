//! `wscluster-sendload`: the driver behind `scripts/bench-node.sh`. It measures the node and its
//! peers (`ws`, Socket.IO with and without the Redis Streams adapter, `scripts/bench-node/`)
//! through the same server API, `POST /api/v1/users/<user>/messages {"message": …}` with a
//! bearer key, and the same receivers. Loopback only, every run bounded in time and count, one
//! JSON line of results on stdout.
//!
//! * `idle` — opens N connections (after 100 warm-up ones) and reads the server's RSS from
//!   `/proc/<pid>/status` before and after: KiB per idle connection.
//! * `sends` — connects `--users` receivers, then `--clients` keep-alive HTTP clients send in a
//!   closed loop for T s: sends/s (2xx answers), frames received, send → receipt p50/p99.
//! * `recover` — a receiver takes one message, goes away, N messages are sent, it reconnects
//!   with its position: how many of the N it got back and how long that took.
//!
//! `--proto node|ws` speaks plain WebSocket (`ws://…/connect/u{i}`, a `ready` frame, then
//! `{"type":"message","content":…}` frames); `--proto sio` the minimal Socket.IO v4 framing over
//! the websocket transport (EIO=4: `0{…}` open, `40` connect, `42[…]` events, ping `2` / pong
//! `3`), with `?userId=u{i}` on the URL.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wscluster_tests::client::READ_BUFFER_BYTES;

/// Longest any run may last, whatever the flags say.
const MAX_SECONDS: u64 = 300;
/// Most connections any run may open.
const MAX_CONNECTIONS: usize = 20_000;
/// Most messages `recover` may send.
const MAX_RECOVER: usize = 10_000;
/// Connections opened (and not counted) before `idle` reads the first RSS.
const WARM_CONNECTIONS: usize = 100;
/// Connects in flight at once while opening many.
const OPEN_PARALLELISM: usize = 64;
/// How long any one connect, open handshake or HTTP answer may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `sends` waits for frames still in flight after its last answer.
const DRAIN: Duration = Duration::from_secs(2);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Parser)]
#[command(about = "Send benchmark driver for the node, ws and Socket.IO (loopback only)")]
struct Args {
    /// Tokio worker threads.
    #[arg(
        long,
        env = "WSCLUSTER_SENDLOAD_THREADS",
        default_value_t = 1,
        global = true
    )]
    threads: usize,
    /// How receivers speak: `node` and `ws` plain WebSocket, `sio` Socket.IO v4.
    #[arg(long, env = "WSCLUSTER_SENDLOAD_PROTO", value_enum, global = true, default_value_t = Proto::Node)]
    proto: Proto,
    /// Receiver URL template; `{i}` is the user's index (users are `u{i}`).
    #[arg(
        long,
        env = "WSCLUSTER_SENDLOAD_URL",
        global = true,
        default_value = ""
    )]
    url: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// The node: `ready` frames with epoch and offset, `?since=&epoch=` to resume.
    Node,
    /// The `ws` peer: plain frames, no resume.
    Ws,
    /// Socket.IO v4 over the websocket transport; resume with `40{"pid","offset"}`.
    Sio,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// RSS per idle connection of the server process `--pid`.
    Idle {
        /// The server's process id (its RSS is read from /proc).
        #[arg(long)]
        pid: u32,
        /// Measured connections (after the warm-up ones).
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to let the server settle before each RSS reading.
        #[arg(long, default_value_t = 1)]
        settle_seconds: u64,
    },
    /// Closed-loop sends to connected users.
    Sends {
        /// The server API, `127.0.0.1:<port>`.
        #[arg(long)]
        api: String,
        /// A file whose first line is the API key.
        #[arg(long)]
        api_key_file: PathBuf,
        /// Connected receivers `u0..`.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Keep-alive HTTP clients, each with one send in flight.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// The server's process id: with it, the server's CPU time per send is reported.
        #[arg(long)]
        pid: Option<u32>,
        /// The store's process id (the Redis the server writes to): with it, the store's CPU
        /// time per send and its share of a core are reported, since it is not pinned.
        #[arg(long)]
        store_pid: Option<u32>,
    },
    /// Messages sent while a receiver was away, recovered on reconnect.
    Recover {
        /// The server API, `127.0.0.1:<port>`.
        #[arg(long)]
        api: String,
        /// A file whose first line is the API key.
        #[arg(long)]
        api_key_file: PathBuf,
        /// Messages sent while away.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// The receiver's user index (`u{i}`); pick one no other run used.
        #[arg(long, default_value_t = 0)]
        user: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    check_url(&args.url)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        let proto = args.proto;
        let url = args.url;
        match args.command {
            Cmd::Idle {
                pid,
                connections,
                settle_seconds,
            } => idle(proto, &url, pid, connections, settle_seconds).await,
            Cmd::Sends {
                api,
                api_key_file,
                users,
                clients,
                seconds,
                pid,
                store_pid,
            } => {
                let target = Target::new(&api, &api_key_file)?;
                let load = Load {
                    users,
                    clients,
                    seconds,
                };
                let watched = Watched {
                    server: pid,
                    store: store_pid,
                };
                sends(proto, &url, &target, load, watched).await
            }
            Cmd::Recover {
                api,
                api_key_file,
                messages,
                user,
            } => {
                let target = Target::new(&api, &api_key_file)?;
                recover(proto, &url, &target, messages, user).await
            }
        }
    })?;
    println!("{result}");
    Ok(())
}

fn check_url(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .context("--url must be a ws:// URL template")?;
    if !rest.starts_with("127.0.0.1:") {
        bail!("the send driver only talks to 127.0.0.1");
    }
    Ok(())
}

fn check_count(what: &str, n: usize, max: usize) -> anyhow::Result<()> {
    if n == 0 || n > max {
        bail!("{what} must be 1 to {max}");
    }
    Ok(())
}

fn check_seconds(seconds: u64) -> anyhow::Result<()> {
    if seconds == 0 || seconds > MAX_SECONDS {
        bail!("seconds must be 1 to {MAX_SECONDS}");
    }
    Ok(())
}

/// The server API of a target: where, and the bearer key.
struct Target {
    addr: String,
    authorization: String,
}

impl Target {
    fn new(addr: &str, key_file: &std::path::Path) -> anyhow::Result<Target> {
        if !addr.starts_with("127.0.0.1:") {
            bail!("--api must be 127.0.0.1:<port>");
        }
        let text = std::fs::read_to_string(key_file)
            .with_context(|| format!("reading {}", key_file.display()))?;
        let key = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .context("the API key file is empty")?;
        Ok(Target {
            addr: addr.to_owned(),
            authorization: format!("Bearer {key}"),
        })
    }

    /// A keep-alive HTTP/1.1 connection to the server API.
    async fn client(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .context("connect to the server API timed out")??;
        stream.set_nodelay(true)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// Sends `message` to user `u{user}`; answers the HTTP status.
    async fn send(
        &self,
        client: &mut SendRequest<Full<Bytes>>,
        user: usize,
        message: &str,
    ) -> anyhow::Result<u16> {
        let body = serde_json::to_vec(&json!({ "message": message }))?;
        let req = hyper::Request::post(format!("/api/v1/users/u{user}/messages"))
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let answer = tokio::time::timeout(STEP_TIMEOUT, async {
            client.ready().await?;
            let resp = client.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            anyhow::Ok(status)
        });
        answer
            .await
            .context("the server API did not answer in time")?
    }
}

/// What a receiver learns from the server's open handshake.
#[derive(Debug, Default, Clone)]
struct Opened {
    /// Socket.IO: the private session id, for recovery.
    pid: Option<String>,
}

/// A delivered message: its content and where to resume after it.
#[derive(Debug)]
struct Delivered {
    content: String,
    /// Socket.IO: the packet offset; the node: `since=<offset>&epoch=<epoch>`.
    resume: Option<String>,
}

/// What a received text frame was.
#[derive(Debug)]
enum Frame {
    Message(Delivered),
    /// The node's / ws peer's ready frame, or Socket.IO's connect answer.
    Ready(Opened),
    /// Socket.IO ping: answer `3`.
    Ping,
    Other,
}

/// Reads one text frame of `proto`.
fn parse(proto: Proto, text: &str) -> Frame {
    match proto {
        Proto::Node | Proto::Ws => parse_plain(text),
        Proto::Sio => parse_sio(text),
    }
}

/// The fields of a plain frame the driver reads, borrowed from the text where they hold no
/// escapes (through a `serde_json::Value` every field would be allocated, once per frame).
#[derive(Debug, serde::Deserialize)]
struct PlainFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    content: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    epoch: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
}

fn parse_plain(text: &str) -> Frame {
    let Ok(f) = serde_json::from_str::<PlainFrame<'_>>(text) else {
        return Frame::Other;
    };
    match &*f.kind {
        "message" => Frame::Message(Delivered {
            resume: f
                .epoch
                .zip(f.offset)
                .map(|(e, o)| format!("since={o}&epoch={e}")),
            content: f.content.into_owned(),
        }),
        "ready" => Frame::Ready(Opened { pid: None }),
        _ => Frame::Other,
    }
}

fn parse_sio(text: &str) -> Frame {
    if text == "2" {
        return Frame::Ping;
    }
    if let Some(open) = text.strip_prefix("40") {
        let v: Value = serde_json::from_str(open).unwrap_or(Value::Null);
        return Frame::Ready(Opened {
            pid: v["pid"].as_str().map(str::to_owned),
        });
    }
    let Some(event) = text.strip_prefix("42") else {
        return Frame::Other;
    };
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(event) else {
        return Frame::Other;
    };
    if items.first().and_then(Value::as_str) != Some("message") {
        return Frame::Other;
    }
    Frame::Message(Delivered {
        content: items
            .get(1)
            .and_then(|p| p["content"].as_str())
            .unwrap_or_default()
            .to_owned(),
        // With connection state recovery the offset is the event's last argument.
        resume: items.get(2).and_then(Value::as_str).map(str::to_owned),
    })
}

fn url_for(template: &str, i: usize) -> String {
    template.replace("{i}", &i.to_string())
}

/// Connects `url` and completes `proto`'s open handshake (the ready frame, or Socket.IO's
/// `0{…}` / `40` / `40{…}`), sending `connect` as the Socket.IO connect packet. Messages that
/// arrive before the ready frame (the node's replay) go to `early`.
async fn open(
    proto: Proto,
    url: &str,
    connect: &str,
    early: &mut Vec<Delivered>,
) -> anyhow::Result<(Ws, Opened)> {
    let handshake = async {
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let (mut ws, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
        if proto == Proto::Sio {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
                other => bail!("expected an Engine.IO open packet, got {other:?}"),
            }
            ws.send(Message::text(connect)).await?;
        }
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg? else { continue };
            match parse(proto, &text) {
                Frame::Ready(opened) => return Ok((ws, opened)),
                Frame::Message(m) => early.push(m),
                Frame::Ping => ws.send(Message::text("3")).await?,
                Frame::Other => {}
            }
        }
        bail!("the server closed before the ready frame")
    };
    tokio::time::timeout(STEP_TIMEOUT, handshake)
        .await
        .with_context(|| format!("opening {url} timed out"))?
}

/// Opens receivers `u{i}` for `i` in `range`, `OPEN_PARALLELISM` at a time.
async fn open_many(
    proto: Proto,
    template: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Ws>> {
    let results: Vec<_> = futures_util::stream::iter(range)
        .map(|i| {
            let url = url_for(template, i);
            async move { open(proto, &url, "40", &mut Vec::new()).await }
        })
        .buffer_unordered(OPEN_PARALLELISM)
        .collect()
        .await;
    results.into_iter().map(|r| r.map(|(ws, _)| ws)).collect()
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

async fn idle(
    proto: Proto,
    url: &str,
    pid: u32,
    connections: usize,
    settle_seconds: u64,
) -> anyhow::Result<Value> {
    check_count("connections", connections, MAX_CONNECTIONS)?;
    check_seconds(settle_seconds)?;
    let settle = Duration::from_secs(settle_seconds);
    let warm = open_many(proto, url, 0..WARM_CONNECTIONS).await?;
    tokio::time::sleep(settle).await;
    let before = rss_kib(pid)?;
    let measured = open_many(proto, url, WARM_CONNECTIONS..WARM_CONNECTIONS + connections).await?;
    tokio::time::sleep(settle).await;
    let after = rss_kib(pid)?;
    let per = after.saturating_sub(before) as f64 / measured.len().max(1) as f64;
    drop((warm, measured));
    Ok(json!({
        "opened": connections,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": (per * 10.0).round() / 10.0,
    }))
}

/// Latencies (µs) and frames seen by every receiver of a `sends` run.
#[derive(Default)]
struct Receipts {
    received: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

/// Reads `ws` until it closes (or the task is aborted), recording each message's latency: its
/// content is `t<µs since start>`, stamped by the sender.
async fn receive(proto: Proto, mut ws: Ws, start: Instant, receipts: Arc<Receipts>) {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        match parse(proto, &text) {
            Frame::Message(m) => {
                let Some(sent) = m
                    .content
                    .strip_prefix('t')
                    .and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                let now = start.elapsed().as_micros() as u64;
                let latency = u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX);
                if let Ok(mut all) = receipts.latencies_us.lock() {
                    all.push(latency);
                }
                receipts.received.fetch_add(1, Ordering::Relaxed);
            }
            Frame::Ping => {
                if ws.send(Message::text("3")).await.is_err() {
                    break;
                }
            }
            Frame::Ready(_) | Frame::Other => {}
        }
    }
}

/// One closed-loop sender: sends until `stop`, counting 2xx answers and others.
async fn sender(
    target: Arc<Target>,
    next: Arc<AtomicU64>,
    users: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(u64, u64)> {
    let mut client = target.client().await?;
    let (mut ok, mut refused) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        let stamp = format!("t{}", start.elapsed().as_micros());
        match target.send(&mut client, i % users, &stamp).await? {
            200..=299 => ok += 1,
            _ => refused += 1,
        }
    }
    Ok((ok, refused))
}

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    (f64::from(sorted[i]) / 100.0).round() / 10.0
}

/// CPU seconds (user + system) process `pid` used so far (`self` for this one).
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command (which may hold spaces), from its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
    let (user, system) = ticks(11).zip(ticks(12)).context("short /proc/<pid>/stat")?;
    Ok((user + system) as f64 / CLOCK_TICKS)
}

/// `sysconf(_SC_CLK_TCK)` on Linux (USER_HZ, fixed at 100 for user space).
const CLOCK_TICKS: f64 = 100.0;

/// The shape of a `sends` run.
#[derive(Debug, Clone, Copy)]
struct Load {
    users: usize,
    clients: usize,
    seconds: u64,
}

/// The processes whose CPU time a `sends` run reports.
struct Watched {
    /// The server under test.
    server: Option<u32>,
    /// Its store (Redis).
    store: Option<u32>,
}

async fn sends(
    proto: Proto,
    url: &str,
    target: &Target,
    load: Load,
    watched: Watched,
) -> anyhow::Result<Value> {
    let Load {
        users,
        clients,
        seconds,
    } = load;
    check_count("users", users, MAX_CONNECTIONS)?;
    check_count("clients", clients, 1024)?;
    check_seconds(seconds)?;
    let receivers = open_many(proto, url, 0..users).await?;
    let server = watched.server.map(|p| p.to_string());
    let store = watched.store.map(|p| p.to_string());
    let cpu = |who: Option<&str>| who.map(cpu_seconds).transpose();
    let (server_before, self_before) = (cpu(server.as_deref())?, cpu(Some("self"))?);
    let store_before = cpu(store.as_deref())?;
    let start = Instant::now();
    let receipts = Arc::new(Receipts::default());
    let readers: Vec<_> = receivers
        .into_iter()
        .map(|ws| tokio::spawn(receive(proto, ws, start, receipts.clone())))
        .collect();
    let target = Arc::new(Target {
        addr: target.addr.clone(),
        authorization: target.authorization.clone(),
    });
    let (next, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let senders: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(sender(
                target.clone(),
                next.clone(),
                users,
                start,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut refused) = (0, 0);
    for s in senders {
        let (o, r) = tokio::time::timeout(STEP_TIMEOUT, s).await???;
        ok += o;
        refused += r;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (server_after, self_after) = (cpu(server.as_deref())?, cpu(Some("self"))?);
    let store_after = cpu(store.as_deref())?;
    let used = |before: Option<f64>, after: Option<f64>| after.zip(before).map(|(a, b)| a - b);
    let server_cpu = used(server_before, server_after);
    let store_cpu = used(store_before, store_after);
    let driver_cpu = used(self_before, self_after).unwrap_or_default();
    let deadline = Instant::now() + DRAIN;
    while receipts.received.load(Ordering::Relaxed) < ok && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    readers.iter().for_each(tokio::task::JoinHandle::abort);
    let mut latencies = receipts
        .latencies_us
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    latencies.sort_unstable();
    Ok(json!({
        "users": users,
        "clients": clients,
        "sends": ok,
        "refused": refused,
        "sends_per_s": (ok as f64 / elapsed).round(),
        "received": receipts.received.load(Ordering::Relaxed),
        "p50_ms": percentile_ms(&latencies, 0.50),
        "p99_ms": percentile_ms(&latencies, 0.99),
        "server_cpu_us_per_send": server_cpu.map(|c| (c * 1e6 / ok.max(1) as f64).round()),
        "driver_cpu_fraction": (driver_cpu / elapsed * 100.0).round() / 100.0,
        "store_cpu_us_per_send": store_cpu.map(|c| (c * 1e6 / ok.max(1) as f64).round()),
        "store_cpu_fraction": store_cpu.map(|c| (c / elapsed * 100.0).round() / 100.0),
    }))
}

/// The connect packet / URL that resumes after `last` (`None`: a plain reconnect).
fn resume_url(proto: Proto, template: &str, user: usize, last: Option<&str>) -> String {
    let url = url_for(template, user);
    match (proto, last) {
        (Proto::Node, Some(position)) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}{position}")
        }
        _ => url,
    }
}

fn resume_packet(proto: Proto, pid: Option<&str>, last: Option<&str>) -> String {
    match (proto, pid, last) {
        (Proto::Sio, Some(pid), Some(offset)) => {
            format!("40{}", json!({ "pid": pid, "offset": offset }))
        }
        _ => "40".to_owned(),
    }
}

/// Reads `ws` until `want` messages arrived (counting `already`) or `limit` passed.
async fn collect(proto: Proto, ws: &mut Ws, already: usize, want: usize, limit: Duration) -> usize {
    let mut got = already;
    let reading = async {
        while got < want {
            let Some(Ok(Message::Text(text))) = ws.next().await else {
                break;
            };
            match parse(proto, &text) {
                Frame::Message(m) if m.content.starts_with('r') => got += 1,
                Frame::Ping => {
                    let _ = ws.send(Message::text("3")).await;
                }
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(limit, reading).await;
    got
}

async fn recover(
    proto: Proto,
    template: &str,
    target: &Target,
    messages: usize,
    user: usize,
) -> anyhow::Result<Value> {
    check_count("messages", messages, MAX_RECOVER)?;
    let mut client = target.client().await?;
    let url = url_for(template, user);
    let (mut ws, opened) = open(proto, &url, "40", &mut Vec::new()).await?;
    // One message first, so the receiver has a position to resume from.
    target.send(&mut client, user, "first").await?;
    let first = tokio::time::timeout(STEP_TIMEOUT, async {
        while let Some(Ok(Message::Text(text))) = ws.next().await {
            if let Frame::Message(m) = parse(proto, &text) {
                return Some(m);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .context("the first message did not arrive")?;
    ws.close(None).await.ok();
    drop(ws);
    for i in 0..messages {
        target.send(&mut client, user, &format!("r{i}")).await?;
    }
    let last = first.resume.as_deref();
    let started = Instant::now();
    let mut early = Vec::new();
    let (mut ws, _) = open(
        proto,
        &resume_url(proto, template, user, last),
        &resume_packet(proto, opened.pid.as_deref(), last),
        &mut early,
    )
    .await?;
    let already = early.iter().filter(|m| m.content.starts_with('r')).count();
    let limit = Duration::from_secs(2);
    let recovered = collect(proto, &mut ws, already, messages, limit).await;
    let took = started.elapsed();
    ws.close(None).await.ok();
    Ok(json!({
        "sent_while_away": messages,
        "recovered": recovered,
        "ms": if recovered == messages { (took.as_secs_f64() * 1e4).round() / 10.0 } else { limit.as_secs_f64() * 1e3 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wscluster_ring::contract::{ClientMessage, MessageKind};

    #[test]
    fn a_node_message_parses_with_its_resume_position_and_escaped_content() {
        let sent = ClientMessage {
            kind: MessageKind::Message,
            content: "t42 \"quoted\"".into(),
            server: "n1".into(),
            server_user_count: 3,
            timestamp: 1,
            offset: Some(7),
            epoch: Some("e9".into()),
            from: None,
        };
        let text = serde_json::to_string(&sent).expect("serialise");
        match parse_plain(&text) {
            Frame::Message(m) => {
                assert_eq!(m.content, "t42 \"quoted\"");
                assert_eq!(m.resume.as_deref(), Some("since=7&epoch=e9"));
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn ready_frames_and_garbage_are_told_apart() {
        assert!(matches!(
            parse_plain(
                r#"{"type":"ready","server":"n1","epoch":"e","offset":0,"recovered":true}"#
            ),
            Frame::Ready(_)
        ));
        assert!(matches!(
            parse_plain(r#"{"type":"system","content":"hi"}"#),
            Frame::Other
        ));
        assert!(matches!(parse_plain("not json"), Frame::Other));
        assert!(matches!(
            parse_plain(r#"{"content":"no type"}"#),
            Frame::Other
        ));
    }
}
