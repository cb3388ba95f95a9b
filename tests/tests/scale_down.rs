//! Scale 4 → 2 with drain, across real processes (local mode, 2 proxies, real Redis and
//! RabbitMQ): the leaving nodes are first marked draining; their clients are reset once, by the
//! proxies, after the drain ring is out and onto owners already in the ring; nobody is cut
//! without a reset; the leaving nodes stop only afterwards; no message is lost.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 500).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wscluster_ring::contract::ResetReason;
use wscluster_tests::{Scenario, Started, ensure_delivered, ring_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_drains_first_and_cuts_no_client_before_its_new_owner_is_in_the_ring() {
    Scenario::new("scale-down", 4, "d", 500).run(scenario).await;
}

async fn scenario(mut s: Started) -> anyhow::Result<()> {
    let old_ring = s.local.ring().await?;

    let started = Instant::now();
    // The scale call publishes the drain ring before it answers, and answers with it (a later
    // read of the state could already show the ring after the drain, once the nodes are empty).
    let drain_ring = ring_of(&s.local.scale(2).await?)?;
    let draining: Vec<&str> = drain_ring
        .members()
        .iter()
        .filter(|m| !m.is_active())
        .map(|m| m.id.as_str())
        .collect();
    anyhow::ensure!(
        draining == ["local-node-2", "local-node-3"],
        "the drain ring marks {draining:?} draining"
    );
    anyhow::ensure!(
        drain_ring.members().len() == 4,
        "the leaving nodes are still in the ring while they drain"
    );
    let predicted: BTreeSet<String> = s
        .fleet
        .clients
        .iter()
        .filter(|c| old_ring.diff(&drain_ring).moved(&c.user))
        .map(|c| c.user.clone())
        .collect();

    let final_state = s
        .send_until_settled(2, started, Duration::from_secs(90), "the drain to finish")
        .await?;
    let new_ring = ring_of(&final_state)?;
    let back = s
        .fleet
        .wait_on_owners(&new_ring, Duration::from_secs(30))
        .await?;
    s.deliver_round().await?;

    let (clients, rounds) = (s.clients, s.rounds);
    let records = s.fleet.records();
    let reset: BTreeSet<String> = records
        .iter()
        .filter(|(_, r)| !r.resets.is_empty())
        .map(|(u, _)| u.clone())
        .collect();
    println!(
        "clients {clients}, on leaving nodes {}, reset {}, drain took {:?}, all on owners {back:?} later, rounds {rounds}",
        predicted.len(),
        reset.len(),
        started.elapsed()
    );
    anyhow::ensure!(
        reset == predicted,
        "reset clients differ from the clients of the leaving nodes"
    );
    for (user, r) in &records {
        anyhow::ensure!(r.drops == 0, "{user} was cut without a reset frame");
        if predicted.contains(user) {
            anyhow::ensure!(
                r.resets.len() == 1,
                "{user} was reset {} times: {:?}",
                r.resets.len(),
                r.resets
            );
            let reset = &r.resets[0];
            anyhow::ensure!(
                reset.reason == ResetReason::Drain,
                "{user} was reset for {}",
                reset.reason.as_str()
            );
            anyhow::ensure!(
                reset
                    .ring_version
                    .is_some_and(|v| v >= drain_ring.version()),
                "{user} was reset under ring {:?}, before the drain ring {}",
                reset.ring_version,
                drain_ring.version()
            );
        }
    }
    let nodes = final_state["nodes"].as_array().cloned().unwrap_or_default();
    for leaving in [2, 3] {
        anyhow::ensure!(
            nodes
                .iter()
                .any(|n| n["ordinal"] == leaving && n["process"] == "exited"),
            "node {leaving} was stopped after its drain"
        );
    }
    ensure_delivered(&records, rounds, "after the drain")?;
    s.finish().await
}
