//! `wscluster-load`: the load tool behind `scripts/bench-proxy.sh`. Loopback only, every run
//! bounded in time and count, one JSON line of results on stdout.
//!
//! * `serve` — a minimal WebSocket echo backend (the same one for every target).
//! * `echo` — closed loop: N connections each send a message and wait for its echo, for T s.
//! * `paced` — open loop at a fixed total rate; round-trip p50/p90/p99 from every echo.
//! * `upgrades` — connect + upgrade + close, C at a time, for T s.
//! * `idle` — opens N connections, prints `{"opened":N,...}`, holds them for T s.
//!
//! URLs are templates: `{i}` becomes the connection's index, so each connection has its own
//! key, e.g. `ws://127.0.0.1:8080/ws?userId=u{i}`. A `wss://` URL runs the same workload over
//! TLS (rustls, ring provider) trusting `--ca-file`: full handshakes by default, resumed ones
//! (TLS 1.3 tickets kept in a session store; `upgrades` gives each loop its own) with `--resume`; every result then carries
//! `"tls": {"full", "resumed", "resumed_fraction", "negotiated"}`
//! ([`wscluster_tests::load_tls`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wscluster_tests::load_tls::{Dialer, LoadWs as Ws};

/// Longest any run may last, whatever the flags say.
const MAX_SECONDS: u64 = 600;
/// Most connections any run may open.
const MAX_CONNECTIONS: usize = 50_000;
/// How long a paced connection waits for echoes still in flight after its last send.
const IN_FLIGHT_GRACE_MS: u64 = 500;

#[derive(Debug, Parser)]
#[command(about = "Load generator and echo backend for wscluster proxy benchmarks (loopback only)")]
struct Args {
    /// Tokio worker threads.
    #[arg(
        long,
        env = "WSCLUSTER_LOAD_THREADS",
        default_value_t = 1,
        global = true
    )]
    threads: usize,
    /// PEM CA certificates trusted for `wss://` URLs.
    #[arg(long, env = "WSCLUSTER_LOAD_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// For `wss://`: share one TLS session store so handshakes resume (TLS 1.3 tickets);
    /// without it every handshake is a full one.
    #[arg(long, env = "WSCLUSTER_LOAD_RESUME", global = true)]
    resume: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A WebSocket echo backend.
    Serve {
        /// Listen address (127.0.0.1 only).
        #[arg(long, env = "WSCLUSTER_LOAD_LISTEN", default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Stop after this many seconds.
        #[arg(long, env = "WSCLUSTER_LOAD_SECONDS", default_value_t = MAX_SECONDS)]
        seconds: u64,
    },
    /// Closed-loop echo throughput.
    Echo {
        /// URL template; `{i}` is the connection index.
        #[arg(long, env = "WSCLUSTER_LOAD_URL")]
        url: String,
        /// Connections.
        #[arg(long, env = "WSCLUSTER_LOAD_CONNECTIONS", default_value_t = 100)]
        connections: usize,
        /// Measured seconds (after all connections are open).
        #[arg(long, env = "WSCLUSTER_LOAD_SECONDS", default_value_t = 5)]
        seconds: u64,
        /// Message size in bytes.
        #[arg(long, env = "WSCLUSTER_LOAD_SIZE", default_value_t = 32)]
        size: usize,
    },
    /// Open-loop echo at a fixed rate, with round-trip percentiles.
    Paced {
        /// URL template; `{i}` is the connection index.
        #[arg(long, env = "WSCLUSTER_LOAD_URL")]
        url: String,
        /// Connections.
        #[arg(long, env = "WSCLUSTER_LOAD_CONNECTIONS", default_value_t = 100)]
        connections: usize,
        /// Total messages per second across all connections.
        #[arg(long, env = "WSCLUSTER_LOAD_RATE", default_value_t = 10_000)]
        rate: u64,
        /// Measured seconds.
        #[arg(long, env = "WSCLUSTER_LOAD_SECONDS", default_value_t = 5)]
        seconds: u64,
        /// Message size in bytes (at least 24, the timestamp).
        #[arg(long, env = "WSCLUSTER_LOAD_SIZE", default_value_t = 32)]
        size: usize,
    },
    /// Connect + upgrade + close rate.
    Upgrades {
        /// URL template; `{i}` is a running counter.
        #[arg(long, env = "WSCLUSTER_LOAD_URL")]
        url: String,
        /// Handshakes in flight at once.
        #[arg(long, env = "WSCLUSTER_LOAD_CONCURRENCY", default_value_t = 16)]
        concurrency: usize,
        /// Measured seconds.
        #[arg(long, env = "WSCLUSTER_LOAD_SECONDS", default_value_t = 3)]
        seconds: u64,
    },
    /// Opens N idle connections and holds them.
    Idle {
        /// URL template; `{i}` is the connection index.
        #[arg(long, env = "WSCLUSTER_LOAD_URL")]
        url: String,
        /// Connections.
        #[arg(long, env = "WSCLUSTER_LOAD_CONNECTIONS", default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them after all are open.
        #[arg(long, env = "WSCLUSTER_LOAD_SECONDS", default_value_t = 10)]
        seconds: u64,
    },
}

fn url_for(template: &str, i: usize) -> String {
    template.replace("{i}", &i.to_string())
}

fn check_url(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .context("only ws:// and wss:// URLs are supported")?;
    if !(rest.starts_with("127.0.0.1:") || rest.starts_with("localhost:")) {
        bail!("the load tool only talks to 127.0.0.1");
    }
    Ok(())
}

fn bounded(seconds: u64, connections: usize) -> anyhow::Result<()> {
    if seconds == 0 || seconds > MAX_SECONDS {
        bail!("seconds must be 1 to {MAX_SECONDS}");
    }
    if connections == 0 || connections > MAX_CONNECTIONS {
        bail!("connections must be 1 to {MAX_CONNECTIONS}");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dial = |url: &str| Dialer::for_url(url, args.ca_file.as_deref(), args.resume);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        match args.command {
            Cmd::Serve { listen, seconds } => serve(listen, seconds).await,
            Cmd::Echo {
                url,
                connections,
                seconds,
                size,
            } => echo(&dial(&url)?, &url, connections, seconds, size).await,
            Cmd::Paced {
                url,
                connections,
                rate,
                seconds,
                size,
            } => paced(&dial(&url)?, &url, connections, rate, seconds, size).await,
            Cmd::Upgrades {
                url,
                concurrency,
                seconds,
            } => upgrades(&dial(&url)?, &url, concurrency, seconds).await,
            Cmd::Idle {
                url,
                connections,
                seconds,
            } => idle(&dial(&url)?, &url, connections, seconds).await,
        }
    })?;
    println!("{result}");
    Ok(())
}

async fn serve(listen: SocketAddr, seconds: u64) -> anyhow::Result<serde_json::Value> {
    if !listen.ip().is_loopback() {
        bail!("the echo backend listens on loopback only");
    }
    let listener = TcpListener::bind(listen).await?;
    eprintln!("echo backend listening on {}", listener.local_addr()?);
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    let accept = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                // After a close frame, tungstenite sends the reply on the next read and then
                // ends the stream: the close handshake completes as RFC 6455 §7.1.1 describes.
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = msg.is_text() || msg.is_binary();
                    if echo && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = tokio::time::sleep(Duration::from_secs(seconds.min(MAX_SECONDS))) => {}
    }
    Ok(json!({"accepted": accepted.load(Ordering::Relaxed)}))
}

async fn open_all(dialer: &Dialer, template: &str, n: usize) -> anyhow::Result<Vec<Ws>> {
    let mut out = Vec::with_capacity(n);
    // Open in batches so the listen backlog is never the limit.
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let batch = futures_util::future::join_all(chunk.iter().map(|&i| {
            let url = url_for(template, i);
            async move { dialer.connect(&url).await }
        }))
        .await;
        for r in batch {
            out.push(r.context("opening a connection")?);
        }
    }
    Ok(out)
}

async fn echo(
    dialer: &Dialer,
    template: &str,
    connections: usize,
    seconds: u64,
    size: usize,
) -> anyhow::Result<serde_json::Value> {
    check_url(template)?;
    bounded(seconds, connections)?;
    let conns = open_all(dialer, template, connections).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let payload = "x".repeat(size.max(1));
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut ws| {
            let stop = Arc::clone(&stop);
            let total = Arc::clone(&total);
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if ws.send(Message::text(payload.as_str())).await.is_err() {
                        break;
                    }
                    match ws.next().await {
                        Some(Ok(Message::Text(_))) => n += 1,
                        _ => break,
                    }
                }
                total.fetch_add(n, Ordering::Relaxed);
                let _ = ws.close(None).await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let messages = total.load(Ordering::Relaxed);
    Ok(json!({
        "mode": "echo", "connections": connections, "seconds": elapsed,
        "messages": messages, "msgs_per_sec": messages as f64 / elapsed,
        "tls": dialer.handshakes(),
    }))
}

async fn paced(
    dialer: &Dialer,
    template: &str,
    connections: usize,
    rate: u64,
    seconds: u64,
    size: usize,
) -> anyhow::Result<serde_json::Value> {
    check_url(template)?;
    bounded(seconds, connections)?;
    if rate == 0 || rate > 1_000_000 {
        bail!("rate must be 1 to 1000000");
    }
    let conns = open_all(dialer, template, connections).await?;
    let period = Duration::from_secs_f64(connections as f64 / rate as f64);
    let base = Instant::now();
    let end = base + Duration::from_secs(seconds);
    let pad = "x".repeat(size.saturating_sub(24));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            // Stagger connections evenly across one period.
            let pacing = Pacing {
                base,
                end,
                period,
                offset: period.mul_f64(i as f64 / connections as f64),
            };
            tokio::spawn(paced_connection(ws, pacing, pad.clone()))
        })
        .collect();
    let mut all = Echoes::default();
    for t in tasks {
        if let Ok(echoes) = t.await {
            all.samples_us.extend(echoes.samples_us);
            all.sent += echoes.sent;
            all.received += echoes.received;
        }
    }
    all.samples_us.sort_unstable();
    let pct = |p| percentile_ms(&all.samples_us, p);
    Ok(json!({
        "mode": "paced", "connections": connections, "rate": rate, "seconds": seconds,
        "sent": all.sent, "received": all.received,
        "achieved_rate": all.received as f64 / seconds as f64,
        "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        "tls": dialer.handshakes(),
    }))
}

/// When one paced connection sends.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    /// The run's clock zero: timestamps in messages are nanoseconds since it.
    base: Instant,
    /// When sending stops.
    end: Instant,
    /// Time between two sends of this connection.
    period: Duration,
    /// This connection's first send after `base`, so connections do not send in lockstep.
    offset: Duration,
}

/// What paced connections sent and got back.
#[derive(Debug, Default)]
struct Echoes {
    /// Round trips in microseconds, one per echo.
    samples_us: Vec<u32>,
    /// Messages sent.
    sent: u64,
    /// Echoes received.
    received: u64,
}

impl Echoes {
    /// Takes one frame from the echo stream; false when the stream ended or failed.
    fn take(&mut self, frame: Option<Result<Message, WsError>>, base: Instant) -> bool {
        let Some(Ok(Message::Text(t))) = frame else {
            return false;
        };
        if let Some(sent_at) = t.get(..24).and_then(|s| s.parse::<u64>().ok()) {
            let rtt = base.elapsed().as_nanos() as u64 - sent_at;
            self.samples_us
                .push((rtt / 1_000).min(u64::from(u32::MAX)) as u32);
            self.received += 1;
        }
        true
    }
}

/// Sends a timestamped message every `pacing.period` until `pacing.end`, records each echo's
/// round trip, then collects the echoes still in flight for a moment.
async fn paced_connection(ws: Ws, pacing: Pacing, pad: String) -> Echoes {
    let (mut tx, mut rx) = ws.split();
    let first = tokio::time::Instant::from_std(pacing.base + pacing.offset);
    let mut ticks = tokio::time::interval_at(first, pacing.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut echoes = Echoes::default();
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if Instant::now() >= pacing.end {
                    break;
                }
                let t = pacing.base.elapsed().as_nanos() as u64;
                if tx.send(Message::text(format!("{t:024}{pad}"))).await.is_err() {
                    break;
                }
                echoes.sent += 1;
            }
            frame = rx.next() => if !echoes.take(frame, pacing.base) {
                break;
            },
        }
    }
    let grace = tokio::time::sleep(Duration::from_millis(IN_FLIGHT_GRACE_MS));
    tokio::pin!(grace);
    while echoes.received < echoes.sent {
        tokio::select! {
            () = &mut grace => break,
            frame = rx.next() => if !echoes.take(frame, pacing.base) {
                break;
            },
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    echoes
}

/// The `p` quantile (0 to 1) of sorted microsecond samples, in milliseconds; NaN when empty.
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted_us[idx]) / 1000.0
}

async fn upgrades(
    dialer: &Dialer,
    template: &str,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<serde_json::Value> {
    check_url(template)?;
    bounded(seconds, concurrency)?;
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (stop, counter, failures) = (
                Arc::clone(&stop),
                Arc::clone(&counter),
                Arc::clone(&failures),
            );
            let template = template.to_owned();
            // Each loop resumes from its own session store: one shared store holds too few
            // tickets for many loops (see `load_tls`).
            let dialer = dialer.with_own_sessions();
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let url = url_for(&template, i);
                    i += concurrency;
                    match dialer.connect(&url).await {
                        Ok(mut ws) => {
                            let _ = ws.close(None).await;
                            // Wait for the peer's close (the full handshake).
                            while let Some(Ok(_)) = ws.next().await {}
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let count = counter.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(json!({
        "mode": "upgrades", "concurrency": concurrency, "seconds": elapsed,
        "upgrades": count, "failures": failures.load(Ordering::Relaxed),
        "upgrades_per_sec": count as f64 / elapsed,
        "tls": dialer.handshakes(),
    }))
}

async fn idle(
    dialer: &Dialer,
    template: &str,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<serde_json::Value> {
    check_url(template)?;
    bounded(seconds, connections)?;
    let started = Instant::now();
    let conns = open_all(dialer, template, connections).await?;
    // Tell the caller (the bench script) that everything is open; it measures now.
    println!(
        "{}",
        json!({"opened": conns.len(), "open_seconds": started.elapsed().as_secs_f64()})
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let mut alive = 0;
    for mut ws in conns {
        if ws.send(Message::Ping(Vec::new().into())).await.is_ok() {
            alive += 1;
        }
    }
    Ok(json!({
        "mode": "idle", "connections": connections, "alive_at_end": alive,
        "tls": dialer.handshakes(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank_in_milliseconds() {
        let sorted = [1_000, 2_000, 3_000, 4_000, 5_000];
        assert_eq!(percentile_ms(&sorted, 0.5), 3.0);
        assert_eq!(percentile_ms(&sorted, 1.0), 5.0);
        assert_eq!(percentile_ms(&sorted, 0.0), 1.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn runs_stay_on_loopback_and_within_their_bounds() {
        assert!(check_url("ws://127.0.0.1:8080/ws?userId=u{i}").is_ok());
        assert!(check_url("ws://10.0.0.1:8080/").is_err());
        assert!(check_url("wss://127.0.0.1:8080/").is_ok());
        assert!(check_url("wss://10.0.0.1:8080/").is_err());
        assert!(check_url("http://127.0.0.1:8080/").is_err());
        assert!(bounded(1, 1).is_ok());
        assert!(bounded(0, 1).is_err() && bounded(MAX_SECONDS + 1, 1).is_err());
        assert!(bounded(1, 0).is_err() && bounded(1, MAX_CONNECTIONS + 1).is_err());
        assert_eq!(url_for("ws://127.0.0.1:1/u{i}", 7), "ws://127.0.0.1:1/u7");
    }
}
