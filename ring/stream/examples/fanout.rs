//! Measures fan-out: how long from `RingHub::publish` until every subscriber has built and
//! published the new ring, over real HTTP on 127.0.0.1.
//!
//! ```text
//! cargo run -p wscluster-ring-stream --example fanout -- [subscribers=100] [members=10] [publishes=20]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring::{Member, RingSnapshot};
use wscluster_ring_stream::{RingHub, SubscriberConfig, Subscription, serve};

const CLUSTER: &str = "bench/fanout";

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn snapshot(version: u64, members: usize) -> RingSnapshot {
    let members = (0..members + version as usize % 2)
        .map(|i| {
            Member::active(
                format!("node-{i}"),
                format!("10.0.{}.{}:8080", i / 250, i % 250),
            )
        })
        .collect();
    RingSnapshot::new(CLUSTER, version, members)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let subscribers = arg(1, 100);
    let members = arg(2, 10);
    let publishes = arg(3, 20).max(1) as u64;
    let shutdown = CancellationToken::new();
    let hub = RingHub::new();
    hub.set_token(CLUSTER, "bench".to_string());
    hub.publish(snapshot(1, members))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(serve(listener, Arc::clone(&hub), shutdown.clone()));

    let subs: Vec<Subscription> = (0..subscribers)
        .map(|i| {
            Subscription::spawn(
                SubscriberConfig {
                    base_url: base_url.clone(),
                    cluster_id: CLUSTER.to_string(),
                    token: "bench".to_string(),
                    kind: SubscriberKind::Proxy,
                    subscriber_id: format!("proxy-{i}"),
                },
                shutdown.clone(),
            )
        })
        .collect();
    let wait_all = |version: u64| {
        let mut receivers: Vec<_> = subs.iter().map(Subscription::rings).collect();
        async move {
            for rings in &mut receivers {
                rings
                    .wait_for(|r| r.as_ref().is_some_and(|r| r.version() >= version))
                    .await?;
            }
            Ok::<_, tokio::sync::watch::error::RecvError>(())
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait_all(1)).await??;

    let mut samples = Vec::new();
    for version in 2..=publishes + 1 {
        let start = Instant::now();
        hub.publish(snapshot(version, members))?;
        tokio::time::timeout(Duration::from_secs(60), wait_all(version)).await??;
        samples.push(start.elapsed());
    }
    samples.sort();
    let pct = |p: usize| samples[(samples.len() - 1) * p / 100];
    println!(
        "subscribers={subscribers} members={members} publishes={publishes}: publish→all applied p50={:?} p90={:?} max={:?}",
        pct(50),
        pct(90),
        pct(100)
    );
    shutdown.cancel();
    Ok(())
}
