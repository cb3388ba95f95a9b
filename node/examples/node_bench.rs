//! Benchmark of one node. Not a test: it measures and prints one JSON object.
//!
//! ```text
//! cargo run --release -p wscluster-node --example node_bench -- [--sockets 10000] \
//!     [--messages 50000] [--concurrency 32] [--mailbox-ops 3000] [--redis-url redis://127.0.0.1:6379] \
//!     [--checkpoints 1000,9000] [--idle-only] [--open-parallelism 256]
//! ```
//!
//! It re-executes itself as the node (`node_bench serve …`) so the node's memory can be read
//! from `/proc/<pid>/status` apart from the clients', then measures on 127.0.0.1 only:
//! * `idle_sockets` / `rss_bytes_per_socket` — RSS growth of the node for N idle WebSockets
//!   (N is capped by the file-descriptor limit, which both processes share), and `idle_rss`:
//!   the same figure at each of `--checkpoints` on the way to N (`--idle-only` stops there);
//! * `send_msgs_per_sec_memory` — `/send` requests per second, each delivered to a connected
//!   user, with `concurrency` keep-alive HTTP clients, counted when the frames arrive;
//! * `send_msgs_per_sec_redis` — the same with the Redis mailbox and presence;
//! * `send_latency_us_memory` / `send_latency_us_redis` — mean latency of one `/send` (append
//!   and deliver) from a single client, and their ratio: the cost the Redis mailbox adds.
//!
//! Every phase is bounded by a count and a deadline.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// Longest any phase may take.
const PHASE_DEADLINE: Duration = Duration::from_secs(120);
/// File descriptors kept free for everything that is not a benchmark socket.
const FD_HEADROOM: u64 = 500;

#[derive(Debug, Parser)]
struct Args {
    /// Idle WebSockets to open.
    #[arg(long, default_value_t = 10_000)]
    sockets: u64,
    /// Messages sent with /send in each throughput run.
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Concurrent keep-alive HTTP clients sending.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Users receiving in the throughput runs.
    #[arg(long, default_value_t = 1_000)]
    receivers: u64,
    /// Sequential /send calls for the latency comparison.
    #[arg(long, default_value_t = 3_000)]
    mailbox_ops: u64,
    /// Concurrent handshakes while opening idle sockets. Each holds buffers on the node for a
    /// moment, and the allocator may keep that peak resident: at small socket counts it shows
    /// in the per-socket figure.
    #[arg(long, default_value_t = 256)]
    open_parallelism: usize,
    /// Socket counts (comma-separated, below `--sockets`) at which the idle RSS is also read.
    #[arg(long, value_delimiter = ',')]
    checkpoints: Vec<u64>,
    /// Measure idle sockets only (no /send runs, no Redis).
    #[arg(long)]
    idle_only: bool,
    /// Redis for the Redis-backed runs.
    #[arg(
        long,
        env = "WSCLUSTER_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if argv.get(1).map(String::as_str) == Some("serve") {
        return rt.block_on(serve(argv[2..].to_vec()));
    }
    rt.block_on(bench(Args::parse()))
}

/// The node, in this process (child mode).
async fn serve(args: Vec<String>) -> anyhow::Result<()> {
    let config = wscluster_node::Config::parse_from(
        std::iter::once("wscluster-node".to_owned()).chain(args),
    );
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let shutdown = tokio_util::sync::CancellationToken::new();
    wscluster_node::run(config, listener, shutdown).await?;
    Ok(())
}

struct NodeProc {
    child: Child,
    addr: String,
}

async fn spawn_node(extra: &[&str]) -> anyhow::Result<NodeProc> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--id", "bench-0"])
        // The seed's /send on the public port (the benchmark's load), admin on any free port.
        .args(["--legacy-send", "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let line = tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).lines().next_line(),
    )
    .await??
    .ok_or_else(|| anyhow::anyhow!("node printed nothing"))?;
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected line {line}"))?
        .to_owned();
    Ok(NodeProc { child, addr })
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

fn fd_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

/// Opens a socket for `user`, waits for `ready`, then counts `message` frames into `received`.
async fn open_reader(addr: String, user: String, received: Arc<AtomicU64>) -> anyhow::Result<()> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/connect/{user}")).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg?
            && t.contains("\"ready\"")
        {
            break;
        }
    }
    received.fetch_add(1, Ordering::Relaxed); // counts "ready" while opening
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg
                && t.starts_with("{\"type\":\"message\"")
            {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(())
}

/// Opens sockets for users `u{i}`, `i` in `users`, `parallelism` handshakes at a time; returns
/// how many opened.
async fn open_many(
    addr: &str,
    users: Range<u64>,
    parallelism: usize,
    received: &Arc<AtomicU64>,
) -> u64 {
    let opened = futures_util::stream::iter(users)
        .map(|i| open_reader(addr.to_owned(), format!("u{i}"), received.clone()))
        .buffer_unordered(parallelism.max(1))
        .filter(|r| std::future::ready(r.is_ok()))
        .count();
    tokio::time::timeout(PHASE_DEADLINE, opened)
        .await
        .unwrap_or(0) as u64
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http_client(addr: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send_once(sender: &mut Sender, addr: &str, user: u64, i: u64) -> anyhow::Result<u16> {
    sender.ready().await?;
    let req = http::Request::get(format!("/send?userId=u{user}&message=m{i}"))
        .header("host", addr)
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// `messages` sends spread over `receivers` users by `concurrency` clients; returns msgs/s
/// counted when every frame arrived (or the deadline passed).
async fn throughput(
    addr: &str,
    messages: u64,
    concurrency: u64,
    receivers: u64,
    received: &Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let start_count = received.load(Ordering::Relaxed);
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let addr = addr.to_owned();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut sender = http_client(&addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= messages {
                    return anyhow::Ok(());
                }
                send_once(&mut sender, &addr, i % receivers, i).await?;
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(PHASE_DEADLINE, w).await???;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) - start_count < messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = received.load(Ordering::Relaxed) - start_count;
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

/// Mean latency of one /send (append + deliver), sequential, in microseconds.
async fn latency(addr: &str, ops: u64) -> anyhow::Result<f64> {
    let mut sender = http_client(addr).await?;
    let start = Instant::now();
    for i in 0..ops {
        send_once(&mut sender, addr, i % 10, i).await?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / ops as f64)
}

/// What phase 1 measured: idle sockets held and the node's memory around them.
struct IdleSockets {
    /// Sockets open at the end (warm-up ones included), all connected as `u0..`.
    opened: u64,
    /// Node RSS after the warm-up sockets, before the measured ones.
    rss_before: u64,
    /// Node RSS with every socket open.
    rss_after: u64,
    /// RSS growth per measured socket, in bytes.
    per_socket: f64,
    /// (sockets open, RSS growth per measured socket) at each checkpoint, then at the end.
    steps: Vec<(u64, f64)>,
}

/// Sockets opened first to warm the node up, not counted in the per-socket figures.
const WARM_SOCKETS: u64 = 100;

/// Phase 1: `sockets` idle WebSockets on `node`; the first [`WARM_SOCKETS`] warm the node up
/// and are not counted in the per-socket figures, which are also read at each of
/// `checkpoints`. Frames they receive are counted into `received`.
async fn idle_sockets(
    node: &NodeProc,
    sockets: u64,
    checkpoints: &[u64],
    parallelism: usize,
    received: &Arc<AtomicU64>,
) -> anyhow::Result<IdleSockets> {
    let pid = node
        .child
        .id()
        .ok_or_else(|| anyhow::anyhow!("node exited"))?;
    let warm = open_many(&node.addr, 0..WARM_SOCKETS, parallelism, received).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(pid);
    let mut stops: Vec<u64> = checkpoints
        .iter()
        .copied()
        .filter(|&c| c > WARM_SOCKETS && c < sockets)
        .collect();
    stops.sort_unstable();
    stops.push(sockets);
    let (mut opened, mut next, mut steps) = (warm, WARM_SOCKETS, Vec::new());
    let mut rss_after = rss_before;
    for stop in stops {
        opened += open_many(&node.addr, next..stop, parallelism, received).await;
        next = stop;
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_after = rss_bytes(pid);
        let measured = opened.saturating_sub(warm).max(1);
        let per_socket = rss_after.saturating_sub(rss_before) as f64 / measured as f64;
        steps.push((opened, per_socket));
    }
    let per_socket = steps.last().map_or(0.0, |s| s.1);
    Ok(IdleSockets {
        opened,
        rss_before,
        rss_after,
        per_socket,
        steps,
    })
}

/// What a /send run measured on one node.
struct SendFigures {
    /// Messages per second delivered with `--concurrency` senders.
    throughput: f64,
    /// Mean latency of one sequential /send, in microseconds.
    latency_us: f64,
}

/// Throughput to `receivers` connected users, then sequential latency, on `node`.
async fn send_figures(
    args: &Args,
    node: &NodeProc,
    receivers: u64,
    received: &Arc<AtomicU64>,
) -> anyhow::Result<SendFigures> {
    let throughput = throughput(
        &node.addr,
        args.messages,
        args.concurrency,
        receivers,
        received,
    )
    .await?;
    let latency_us = latency(&node.addr, args.mailbox_ops).await?;
    Ok(SendFigures {
        throughput,
        latency_us,
    })
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let limit = fd_limit();
    let sockets = args.sockets.min(limit.saturating_sub(FD_HEADROOM));

    // Phases 1 and 2: idle sockets, then /send with them connected, on an in-memory node.
    let node = spawn_node(&[]).await?;
    let received = Arc::new(AtomicU64::new(0));
    let idle = idle_sockets(
        &node,
        sockets,
        &args.checkpoints,
        args.open_parallelism,
        &received,
    )
    .await?;
    if args.idle_only {
        println!("{}", idle_report(limit, &idle));
        return Ok(());
    }
    let receivers = args.receivers.min(idle.opened);
    let memory = send_figures(&args, &node, receivers, &received).await?;
    drop(node);

    // Phase 3: the same /send runs with the Redis mailbox and presence.
    let prefix = format!("wsc-bench-{}", std::process::id());
    let node = spawn_node(&["--redis-url", &args.redis_url, "--redis-prefix", &prefix]).await?;
    let received = Arc::new(AtomicU64::new(0));
    let r_open = open_many(&node.addr, 0..receivers, args.open_parallelism, &received).await;
    let redis = send_figures(&args, &node, r_open.max(1), &received).await?;
    drop(node);
    cleanup_redis(&args.redis_url, &prefix).await;

    println!(
        "{}",
        report(&args, limit, receivers, &idle, &memory, &redis)
    );
    Ok(())
}

/// The idle-socket figures, as JSON.
fn idle_report(fd_limit: u64, idle: &IdleSockets) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = idle
        .steps
        .iter()
        .map(|(sockets, per)| serde_json::json!({"sockets": sockets, "rss_bytes_per_socket": per.round()}))
        .collect();
    serde_json::json!({
        "fd_limit": fd_limit,
        "idle_sockets": idle.opened,
        "node_rss_bytes_before": idle.rss_before,
        "node_rss_bytes_after": idle.rss_after,
        "rss_bytes_per_socket": idle.per_socket.round(),
        "idle_rss": steps,
    })
}

/// The one JSON object the benchmark prints.
fn report(
    args: &Args,
    fd_limit: u64,
    receivers: u64,
    idle: &IdleSockets,
    memory: &SendFigures,
    redis: &SendFigures,
) -> serde_json::Value {
    let tenths = |v: f64| (v * 10.0).round() / 10.0;
    let mut out = idle_report(fd_limit, idle);
    let send = serde_json::json!({
        "send_messages": args.messages,
        "send_concurrency": args.concurrency,
        "send_receivers": receivers,
        "send_msgs_per_sec_memory": memory.throughput.round(),
        "send_msgs_per_sec_redis": redis.throughput.round(),
        "send_latency_us_memory": tenths(memory.latency_us),
        "send_latency_us_redis": tenths(redis.latency_us),
        "redis_vs_memory_latency_ratio": ((redis.latency_us / memory.latency_us) * 100.0).round() / 100.0,
    });
    if let (Some(out), serde_json::Value::Object(send)) = (out.as_object_mut(), send) {
        out.extend(send);
    }
    out
}

async fn cleanup_redis(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut con) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(1000) {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(chunk).query_async(&mut con).await;
    }
}
