//! What a Redis append costs, three ways in the same run, on the same connection, in rounds that
//! rotate which goes first so machine load hits all alike: the append script before epochs
//! (`INCR` + `XADD` + `EXPIRE` × 2, kept here as the reference), [`RedisMailbox::append`] with
//! one script call per append (`max_batch: 1`, the release before batching), and
//! [`RedisMailbox::append`] as the node runs it (batched, [`Batching::default`]). Not a test: it
//! prints one JSON object.
//!
//! ```text
//! cargo run --release -p wscluster-node --example mailbox_bench -- \
//!     [--appends 20000] [--concurrency 32] [--rounds 3] [--redis-url redis://127.0.0.1:6379]
//! ```
//!
//! Every key it writes is under a prefix of its own, deleted at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::aio::ConnectionManager;
use wscluster_node::mailbox::{Batching, Mailbox, RedisMailbox, Retention};

/// The append script of the release before epochs. KEYS: stream, counter. ARGV: content,
/// timestamp, max length, ttl seconds.
const APPEND_BEFORE_EPOCHS_LUA: &str = r#"
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '0-' .. seq, 'c', ARGV[1], 't', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return seq
"#;

/// Distinct users the appends are spread over.
const USERS: u64 = 1_000;
/// Messages kept per user (the node's default).
const MAX_LEN: u64 = 1_000;

#[derive(Debug, Parser)]
struct Args {
    /// Appends per round and variant.
    #[arg(long, default_value_t = 20_000)]
    appends: u64,
    /// Appends in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Rounds (each runs both variants, alternating which goes first).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The Redis to measure.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

/// One variant's appends per second.
async fn run(appends: u64, concurrency: u64, append: &Append) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut next = 0;
    while next < appends.min(concurrency) {
        inflight.push(append(next));
        next += 1;
    }
    while let Some(done) = inflight.next().await {
        done?;
        if next < appends {
            inflight.push(append(next));
            next += 1;
        }
    }
    Ok(appends as f64 / started.elapsed().as_secs_f64())
}

/// The variants, in the order of the JSON fields.
const VARIANTS: [&str; 3] = ["before_epochs", "one_call_per_append", "batched"];

type Append = Box<dyn Fn(u64) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>>>;

/// The reference: the pre-epoch script, one call per append.
fn before_epochs(con: &ConnectionManager, prefix: &str) -> Append {
    let (script, con, prefix) = (
        Arc::new(redis::Script::new(APPEND_BEFORE_EPOCHS_LUA)),
        con.clone(),
        prefix.to_owned(),
    );
    Box::new(move |i| {
        let (script, mut con) = (script.clone(), con.clone());
        let user = i % USERS;
        let stream = format!("{prefix}:before:mailbox:{user}");
        let seq = format!("{prefix}:before:mailbox-seq:{user}");
        Box::pin(async move {
            let _: u64 = script
                .key(stream)
                .key(seq)
                .arg("hello")
                .arg(i)
                .arg(MAX_LEN)
                .arg(600)
                .invoke_async(&mut con)
                .await?;
            Ok(())
        })
    })
}

/// The node's mailbox with `batching`.
fn mailbox(con: &ConnectionManager, namespace: String, batching: Batching) -> Append {
    let retention = Retention {
        max_len: MAX_LEN,
        ttl: Duration::from_secs(600),
    };
    let mailbox = Arc::new(RedisMailbox::with_batching(
        con.clone(),
        namespace,
        retention,
        batching,
    ));
    Box::new(move |i| {
        let mailbox = mailbox.clone();
        Box::pin(async move {
            mailbox
                .append(&format!("{}", i % USERS), "hello", None, i)
                .await?;
            Ok(())
        })
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = redis::Client::open(args.redis_url.as_str())?;
    let con =
        tokio::time::timeout(Duration::from_secs(5), ConnectionManager::new(client)).await??;
    let prefix = format!("wsc-bench-{}", std::process::id());
    let single = Batching {
        max_batch: 1,
        in_flight: args.concurrency as usize,
    };
    let variants: [Append; 3] = [
        before_epochs(&con, &prefix),
        mailbox(&con, format!("{prefix}:single:"), single),
        mailbox(&con, format!("{prefix}:batched:"), Batching::default()),
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..args.rounds as usize {
        for k in 0..VARIANTS.len() {
            let v = (round + k) % VARIANTS.len();
            rates[v].push(run(args.appends, args.concurrency, &variants[v]).await?);
        }
    }
    cleanup(con, &prefix).await;
    println!("{}", report(&args, &mut rates));
    Ok(())
}

/// The JSON printed: every round's rate per variant and the medians' ratios.
fn report(args: &Args, rates: &mut [Vec<f64>; 3]) -> serde_json::Value {
    let mut out = serde_json::json!({
        "appends_per_round": args.appends,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
    });
    let mut medians = [0.0; 3];
    for (v, name) in VARIANTS.iter().enumerate() {
        out[format!("appends_per_sec_{name}")] = rates[v]
            .iter()
            .map(|r| r.round())
            .collect::<Vec<_>>()
            .into();
        rates[v].sort_by(f64::total_cmp);
        medians[v] = rates[v][rates[v].len() / 2];
    }
    let ratio = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
    out["median_ratio_one_call_over_before_epochs"] = ratio(medians[1], medians[0]).into();
    out["median_ratio_batched_over_one_call"] = ratio(medians[2], medians[1]).into();
    out
}

/// Deletes every key under `prefix`.
async fn cleanup(mut con: ConnectionManager, prefix: &str) {
    let mut cursor: u64 = 0;
    loop {
        let reply: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await;
        let Ok((next, keys)) = reply else { return };
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(keys).query_async(&mut con).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
