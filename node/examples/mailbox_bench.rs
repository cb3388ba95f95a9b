//! What the mailbox epoch costs a Redis append: the append script before epochs (`INCR` +
//! `XADD` + `EXPIRE` × 2, kept here as the reference) against [`RedisMailbox::append`] (epoch +
//! offset in the same one script call), in the same run, on the same connection, in alternating
//! rounds so machine load hits both alike. Not a test: it prints one JSON object.
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
use wscluster_node::mailbox::{Mailbox, RedisMailbox, Retention};

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
async fn run(
    appends: u64,
    concurrency: u64,
    append: impl Fn(u64) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>>,
) -> anyhow::Result<f64> {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = redis::Client::open(args.redis_url.as_str())?;
    let con =
        tokio::time::timeout(Duration::from_secs(5), ConnectionManager::new(client)).await??;
    let prefix = format!("wsc-bench-{}", std::process::id());
    let retention = Retention {
        max_len: MAX_LEN,
        ttl: Duration::from_secs(600),
    };
    let after = Arc::new(RedisMailbox::new(
        con.clone(),
        format!("{prefix}:after:"),
        retention,
    ));
    let before = Arc::new(redis::Script::new(APPEND_BEFORE_EPOCHS_LUA));
    let (mut before_rates, mut after_rates) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let before_run = {
            let (before, con, prefix) = (before.clone(), con.clone(), prefix.clone());
            run(args.appends, args.concurrency, move |i| {
                let (script, mut con) = (before.clone(), con.clone());
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
        };
        let after_run = {
            let after = after.clone();
            run(args.appends, args.concurrency, move |i| {
                let after = after.clone();
                Box::pin(async move {
                    after
                        .append(&format!("{}", i % USERS), "hello", None, i)
                        .await?;
                    Ok(())
                })
            })
        };
        if round % 2 == 0 {
            before_rates.push(before_run.await?);
            after_rates.push(after_run.await?);
        } else {
            after_rates.push(after_run.await?);
            before_rates.push(before_run.await?);
        }
    }
    cleanup(con, &prefix).await;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, a) = (median(&mut before_rates), median(&mut after_rates));
    println!(
        "{}",
        serde_json::json!({
            "appends_per_round": args.appends,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "appends_per_sec_before_epochs": before_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "appends_per_sec_with_epochs": after_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
            "median_ratio_with_over_before": (a / b * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
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
