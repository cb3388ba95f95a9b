//! Scale 4 → 2 with drain, across real processes (local mode, 2 proxies, real Redis and
//! RabbitMQ): the leaving nodes are first marked draining; their clients are reset once, by the
//! proxies, after the drain ring is out and onto owners already in the ring; nobody is cut
//! without a reset; the leaving nodes stop only afterwards; no message is lost.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 500).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use wscluster_ring::Ring;
use wscluster_ring::contract::ResetReason;
use wscluster_tests::{Record, Scenario, Started, ensure_delivered, reset_users, ring_of};

/// The nodes a scale from 4 to 2 removes (the highest ordinals).
const LEAVING: [&str; 2] = ["local-node-2", "local-node-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_drains_first_and_cuts_no_client_before_its_new_owner_is_in_the_ring() {
    Scenario::new("scale-down", 4, "d", 500).run(scenario).await;
}

async fn scenario(mut s: Started) -> anyhow::Result<()> {
    let old_ring = s.local.ring().await?;

    // 1. The scale call publishes the drain ring before it answers, and answers with it (a
    // later read of the state could already show the ring after the drain, once the nodes
    // are empty).
    let started = Instant::now();
    let drain_ring = ring_of(&s.local.scale(2).await?)?;
    ensure_drain_ring(&drain_ring)?;
    let diff = old_ring.diff(&drain_ring);
    let predicted = s.fleet.users(|user| diff.moved(user));

    // 2. Messages keep flowing until the drain is over and everyone is on an owner.
    let final_state = s
        .send_until_settled(2, started, Duration::from_secs(90), "the drain to finish")
        .await?;
    let new_ring = ring_of(&final_state)?;
    let back = s
        .fleet
        .wait_on_owners(&new_ring, Duration::from_secs(30))
        .await?;
    s.deliver_round().await?;

    // 3. Exactly the leaving nodes' clients were reset, once, by the drain; nothing lost.
    let records = s.fleet.records();
    let reset = reset_users(&records);
    println!(
        "clients {}, on leaving nodes {}, reset {}, drain took {:?}, all on owners {back:?} later, rounds {}",
        s.clients,
        predicted.len(),
        reset.len(),
        started.elapsed(),
        s.rounds
    );
    anyhow::ensure!(
        reset == predicted,
        "reset clients differ from the clients of the leaving nodes"
    );
    ensure_reset_once_by_the_drain(&records, &predicted, &drain_ring)?;
    ensure_stopped_after_drain(&final_state)?;
    ensure_delivered(&records, s.rounds, "after the drain")?;
    s.finish().await
}

/// The drain ring keeps the leaving nodes, marked draining.
fn ensure_drain_ring(drain_ring: &Ring) -> anyhow::Result<()> {
    let draining: Vec<&str> = drain_ring
        .members()
        .iter()
        .filter(|m| !m.is_active())
        .map(|m| m.id.as_str())
        .collect();
    anyhow::ensure!(
        draining == LEAVING,
        "the drain ring marks {draining:?} draining"
    );
    anyhow::ensure!(
        drain_ring.members().len() == 4,
        "the leaving nodes are still in the ring while they drain"
    );
    Ok(())
}

/// Nobody was cut without a reset; each client of a leaving node was reset exactly once, for
/// the drain, under the drain ring or a later one.
fn ensure_reset_once_by_the_drain(
    records: &BTreeMap<String, Record>,
    predicted: &BTreeSet<String>,
    drain_ring: &Ring,
) -> anyhow::Result<()> {
    for (user, r) in records {
        anyhow::ensure!(r.drops == 0, "{user} was cut without a reset frame");
        if !predicted.contains(user) {
            continue;
        }
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
    Ok(())
}

/// The leaving nodes' processes were stopped once their drain was over.
fn ensure_stopped_after_drain(final_state: &Value) -> anyhow::Result<()> {
    let nodes = final_state["nodes"].as_array().cloned().unwrap_or_default();
    for leaving in [2, 3] {
        anyhow::ensure!(
            nodes
                .iter()
                .any(|n| n["ordinal"] == leaving && n["process"] == "exited"),
            "node {leaving} was stopped after its drain"
        );
    }
    Ok(())
}
