//! Failures of the control plane and of a proxy, across real processes (local mode, 2 proxies,
//! real Redis and RabbitMQ):
//!
//! * a proxy is killed: its clients reconnect through the other proxy and lose nothing;
//! * the ring authority goes down: proxies keep routing on their last ring (sends and new
//!   connections work), and when it returns they resume — a node added meanwhile joins and the
//!   moved clients reach it.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 500).

use std::time::{Duration, Instant};

use wscluster_tests::{Fleet, Started, delivery_problems, ring_of, run_bounded, wait_for};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_survive_a_killed_proxy_and_proxies_keep_routing_while_the_ring_authority_is_down()
{
    run_bounded(TEST_TIMEOUT, scenario()).await;
}

async fn scenario() -> anyhow::Result<()> {
    let Started {
        local,
        proxies,
        fleet,
        clients,
    } = Started::new("failures", 3, "p", 500).await?;

    // A proxy dies: half the clients lose their connection and come back through the other.
    local.post("proxies/0/kill", None).await?;
    let killed = Instant::now();
    fleet.send_round(&proxies, 2, 64).await?;
    fleet
        .wait_connected(Duration::from_secs(30 + clients as u64 / 100))
        .await?;
    fleet.send_round(&proxies, 3, 64).await?;
    fleet.wait_messages(3, Duration::from_secs(60)).await?;
    let records = fleet.records();
    let dropped = records.values().filter(|r| r.drops > 0).count();
    println!(
        "proxy killed: {dropped} of {clients} clients reconnected through the other proxy within {:?}",
        killed.elapsed()
    );
    anyhow::ensure!(
        dropped > 0 && dropped <= clients.div_ceil(2),
        "only the killed proxy's clients (about half) dropped, not {dropped}"
    );
    let problems = delivery_problems(&records, 3);
    anyhow::ensure!(
        problems.is_empty(),
        "after the proxy kill: {} clients with delivery problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(3)]
    );

    // The ring authority goes down: routing goes on with the last ring.
    let before = local.state().await?;
    local.post("authority/stop", None).await?;
    wait_for(
        "the surviving proxy's ring stream to close",
        Duration::from_secs(10),
        || async {
            let state = local.state().await?;
            Ok((state["proxies"][1]["streamConnected"] == false).then_some(()))
        },
    )
    .await?;
    fleet.send_round(&proxies, 4, 64).await?;
    fleet.wait_messages(4, Duration::from_secs(60)).await?;
    let late = Fleet::connect("late", 20, &proxies[1..]);
    late.wait_connected(Duration::from_secs(30)).await?;

    // A node added while the authority is down cannot join (it gets no ring, so it is not
    // ready); when the authority returns, it joins and the proxies apply the new ring.
    local.scale(4).await?;
    local.post("authority/start", None).await?;
    let after = local.wait_settled(4, Duration::from_secs(60)).await?;
    let ring = ring_of(&after)?;
    anyhow::ensure!(
        ring.version() > before["ringVersion"].as_u64().unwrap_or(0),
        "a newer ring reached the proxies after the authority returned"
    );
    fleet.wait_on_owners(&ring, Duration::from_secs(30)).await?;
    late.wait_on_owners(&ring, Duration::from_secs(30)).await?;
    fleet.send_round(&proxies, 5, 64).await?;
    fleet.wait_messages(5, Duration::from_secs(60)).await?;
    let problems = delivery_problems(&fleet.records(), 5);
    anyhow::ensure!(
        problems.is_empty(),
        "after the authority outage: {} clients with delivery problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(3)]
    );
    fleet.close();
    late.close();
    local.stop().await
}
