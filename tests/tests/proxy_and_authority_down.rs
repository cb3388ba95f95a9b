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

use wscluster_tests::{Fleet, Scenario, Started, ensure_delivered, ring_of, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_survive_a_killed_proxy_and_proxies_keep_routing_while_the_ring_authority_is_down()
{
    Scenario::new("failures", 3, "p", 500).run(scenario).await;
}

async fn scenario(mut s: Started) -> anyhow::Result<()> {
    // A proxy dies: half the clients lose their connection and come back through the other.
    s.local.post("proxies/0/kill", None).await?;
    let killed = Instant::now();
    s.send_round().await?;
    s.fleet.wait_connected(s.connect_limit()).await?;
    s.deliver_round().await?;
    let records = s.fleet.records();
    let dropped = records.values().filter(|r| r.drops > 0).count();
    let clients = s.clients;
    println!(
        "proxy killed: {dropped} of {clients} clients reconnected through the other proxy within {:?}",
        killed.elapsed()
    );
    anyhow::ensure!(
        dropped > 0 && dropped <= clients.div_ceil(2),
        "only the killed proxy's clients (about half) dropped, not {dropped}"
    );
    ensure_delivered(&records, s.rounds, "after the proxy kill")?;

    // The ring authority goes down: routing goes on with the last ring.
    let before = s.local.state().await?;
    s.local.post("authority/stop", None).await?;
    wait_for(
        "the surviving proxy's ring stream to close",
        Duration::from_secs(10),
        || async {
            let state = s.local.state().await?;
            Ok((state["proxies"][1]["streamConnected"] == false).then_some(()))
        },
    )
    .await?;
    s.deliver_round().await?;
    let late = Fleet::connect("late", 20, &s.proxies[1..]);
    late.wait_connected(Duration::from_secs(30)).await?;

    // A node added while the authority is down cannot join (it gets no ring, so it is not
    // ready); when the authority returns, it joins and the proxies apply the new ring.
    s.local.scale(4).await?;
    s.local.post("authority/start", None).await?;
    let after = s.local.wait_settled(4, Duration::from_secs(60)).await?;
    let ring = ring_of(&after)?;
    anyhow::ensure!(
        ring.version() > before["ringVersion"].as_u64().unwrap_or(0),
        "a newer ring reached the proxies after the authority returned"
    );
    s.fleet
        .wait_on_owners(&ring, Duration::from_secs(30))
        .await?;
    late.wait_on_owners(&ring, Duration::from_secs(30)).await?;
    s.deliver_round().await?;
    ensure_delivered(&s.fleet.records(), s.rounds, "after the authority outage")?;
    late.close();
    s.finish().await
}
