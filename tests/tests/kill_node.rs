//! `kill -9` a node under load, across real processes (local mode, 2 proxies, real Redis and
//! RabbitMQ): the node leaves the ring at once, its clients reconnect to their new owners and
//! get every message sent meanwhile from the mailbox; nobody else is disturbed. Then the node
//! is restarted: it takes its keys back, and those clients move back without loss.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 500).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wscluster_tests::{Started, delivery_problems, ring_of, run_bounded};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_reconnect_to_new_owners_and_lose_nothing() {
    run_bounded(TEST_TIMEOUT, scenario()).await;
}

async fn scenario() -> anyhow::Result<()> {
    let Started {
        local,
        proxies,
        fleet,
        clients,
    } = Started::new("kill-node", 3, "k", 500).await?;
    let old_ring = local.ring().await?;
    let victims: BTreeSet<String> = fleet
        .clients
        .iter()
        .filter(|c| old_ring.owns("local-node-1", &c.user))
        .map(|c| c.user.clone())
        .collect();

    let started = Instant::now();
    local.post("nodes/1/kill", None).await?;
    let mut rounds = 1;
    let after_kill = loop {
        rounds += 1;
        fleet.send_round(&proxies, rounds, 64).await?;
        let state = local.state().await?;
        if wscluster_tests::settled(&state, 2) {
            break state;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the killed node did not leave the ring within 30 s"
        );
    };
    let ring = ring_of(&after_kill)?;
    anyhow::ensure!(
        ring.members().iter().all(|m| m.id != "local-node-1"),
        "the killed node left the ring"
    );
    fleet.wait_on_owners(&ring, Duration::from_secs(30)).await?;
    let all_back = started.elapsed();
    rounds += 1;
    fleet.send_round(&proxies, rounds, 64).await?;
    fleet.wait_messages(rounds, Duration::from_secs(60)).await?;
    let records = fleet.records();
    for (user, r) in &records {
        if !victims.contains(user) {
            anyhow::ensure!(
                r.drops == 0 && r.resets.is_empty(),
                "{user} was not on the killed node but was disturbed: {r:?}"
            );
        }
    }
    let problems = delivery_problems(&records, rounds);
    anyhow::ensure!(
        problems.is_empty(),
        "after the kill: {} clients with delivery problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(3)]
    );
    println!(
        "clients {clients}, on the killed node {}, all on new owners {all_back:?} after the kill",
        victims.len(),
    );

    // The node comes back and takes its keys back; its clients move home without loss.
    local.post("nodes/1/restart", None).await?;
    let restarted = Instant::now();
    let after_restart = loop {
        rounds += 1;
        fleet.send_round(&proxies, rounds, 64).await?;
        let state = local.state().await?;
        if wscluster_tests::settled(&state, 3) {
            break state;
        }
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(60),
            "the restarted node did not rejoin within 60 s"
        );
    };
    let ring = ring_of(&after_restart)?;
    fleet.wait_on_owners(&ring, Duration::from_secs(30)).await?;
    rounds += 1;
    fleet.send_round(&proxies, rounds, 64).await?;
    fleet.wait_messages(rounds, Duration::from_secs(60)).await?;
    let records = fleet.records();
    let problems = delivery_problems(&records, rounds);
    anyhow::ensure!(
        problems.is_empty(),
        "after the restart: {} clients with delivery problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(3)]
    );
    for (user, r) in &records {
        anyhow::ensure!(
            r.node.as_deref() == ring.owner(user).ok().map(|m| m.id.as_str()),
            "{user} is not on its owner"
        );
    }
    fleet.close();
    local.stop().await
}
