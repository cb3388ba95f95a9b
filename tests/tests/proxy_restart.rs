//! A proxy restart with no dropped clients (issue 16 §2), across real processes (local mode,
//! 3 nodes, 2 proxies, real Redis and RabbitMQ): local mode restarts a proxy the way a rollout
//! does (SIGTERM, then a new process on the same address). Every client of that proxy gets the
//! drain reset frame (close 4001) before its connection ends, none is cut (1006), and all come
//! back to their owners through the new process.

use std::time::{Duration, Instant};

use wscluster_ring::contract::ResetReason;
use wscluster_tests::{Fleet, Local, LocalOptions, run_bounded, wait_for};

/// Clients on the restarted proxy.
const CLIENTS: usize = 60;
/// The proxies' drain: shorter than local mode's SIGKILL grace for a proxy (5 s), as the
/// operator's terminationGracePeriodSeconds is longer than the drain (docs/proxy.md).
const CONFIG: &str = "drainTimeoutSeconds: 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_resets_every_client_with_the_drain_frame_and_cuts_none() {
    run_bounded(Duration::from_secs(180), scenario()).await;
}

async fn scenario() -> anyhow::Result<()> {
    let mut options = LocalOptions::real_backends("proxy-restart", 3, 2);
    options.proxy_config = Some(CONFIG.to_string());
    let local = Local::start(options).await?;
    let ring = local.ring().await?;
    let urls = local.proxy_urls().await?;
    let first = urls
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no proxy"))?;
    let fleet = Fleet::connect("restart", CLIENTS, &[first]);
    fleet.wait_on_owners(&ring, Duration::from_secs(30)).await?;

    local.post("proxies/0/restart", None).await?;
    let restarted = Instant::now();
    wait_for(
        "every client reset and back",
        Duration::from_secs(60),
        || async {
            let records = fleet.records();
            let done = records.values().all(|r| r.sessions >= 2 && r.connected);
            Ok(done.then_some(()))
        },
    )
    .await?;
    let back = fleet.wait_on_owners(&ring, Duration::from_secs(30)).await?;
    println!(
        "proxy restart: {CLIENTS} clients drained and back on their owners {:?} after the \
         restart ({back:?} after the last reconnect)",
        restarted.elapsed()
    );
    for (user, r) in fleet.records() {
        anyhow::ensure!(
            r.drops == 0,
            "{user} was cut without the drain frame: {r:?}"
        );
        let drains = r
            .resets
            .iter()
            .filter(|x| x.reason == ResetReason::Drain)
            .count();
        anyhow::ensure!(drains == 1, "{user} got {drains} drain resets: {r:?}");
    }
    fleet.close();
    local.stop().await
}
