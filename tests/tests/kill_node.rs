//! `kill -9` a node under load, across real processes (local mode, 2 proxies, real Redis and
//! RabbitMQ): the node leaves the ring at once, its clients reconnect to their new owners and
//! get every message sent meanwhile from the mailbox; nobody else is disturbed. Then the node
//! is restarted: it takes its keys back, and those clients move back without loss.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 500).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use wscluster_tests::{Record, Scenario, Started, ensure_delivered, ring_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_reconnect_to_new_owners_and_lose_nothing() {
    Scenario::new("kill-node", 3, "k", 500).run(scenario).await;
}

async fn scenario(mut s: Started) -> anyhow::Result<()> {
    let old_ring = s.local.ring().await?;
    let victims = s.fleet.users(|user| old_ring.owns("local-node-1", user));

    let started = Instant::now();
    s.local.post("nodes/1/kill", None).await?;
    let limit = Duration::from_secs(30);
    let after_kill = s
        .send_until_settled(2, started, limit, "the killed node to leave the ring")
        .await?;
    let ring = ring_of(&after_kill)?;
    anyhow::ensure!(
        ring.members().iter().all(|m| m.id != "local-node-1"),
        "the killed node left the ring"
    );
    s.fleet
        .wait_on_owners(&ring, Duration::from_secs(30))
        .await?;
    let all_back = started.elapsed();
    s.deliver_round().await?;
    let records = s.fleet.records();
    ensure_undisturbed(&records, &victims)?;
    ensure_delivered(&records, s.rounds, "after the kill")?;
    println!(
        "clients {}, on the killed node {}, all on new owners {all_back:?} after the kill",
        s.clients,
        victims.len(),
    );

    // The node comes back and takes its keys back; its clients move home without loss.
    s.local.post("nodes/1/restart", None).await?;
    let restarted = Instant::now();
    let limit = Duration::from_secs(60);
    let after_restart = s
        .send_until_settled(3, restarted, limit, "the restarted node to rejoin")
        .await?;
    let ring = ring_of(&after_restart)?;
    s.fleet
        .wait_on_owners(&ring, Duration::from_secs(30))
        .await?;
    s.deliver_round().await?;
    let records = s.fleet.records();
    ensure_delivered(&records, s.rounds, "after the restart")?;
    for (user, r) in &records {
        anyhow::ensure!(
            r.node.as_deref() == ring.owner(user).ok().map(|m| m.id.as_str()),
            "{user} is not on its owner"
        );
    }
    s.finish().await
}

/// Nobody but the killed node's clients lost a session or got a reset.
fn ensure_undisturbed(
    records: &BTreeMap<String, Record>,
    victims: &BTreeSet<String>,
) -> anyhow::Result<()> {
    for (user, r) in records {
        if !victims.contains(user) {
            anyhow::ensure!(
                r.drops == 0 && r.resets.is_empty(),
                "{user} was not on the killed node but was disturbed: {r:?}"
            );
        }
    }
    Ok(())
}
