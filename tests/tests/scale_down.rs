//! Scale 4 → 2 with drain, across real processes (local mode, 2 proxies, real Redis and
//! RabbitMQ): the leaving nodes are first marked draining; their clients are reset once, by the
//! proxies, after the drain ring is out and onto owners already in the ring; nobody is cut
//! without a reset; the leaving nodes stop only afterwards; no message is lost.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 500).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wscluster_tests::{Started, delivery_problems, ring_of, run_bounded};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_drains_first_and_cuts_no_client_before_its_new_owner_is_in_the_ring() {
    run_bounded(TEST_TIMEOUT, scenario()).await;
}

async fn scenario() -> anyhow::Result<()> {
    let Started {
        local,
        proxies,
        fleet,
        clients,
    } = Started::new("scale-down", 4, "d", 500).await?;
    let old_ring = local.ring().await?;

    let started = Instant::now();
    // The scale call publishes the drain ring before it answers, and answers with it (a later
    // read of the state could already show the ring after the drain, once the nodes are empty).
    let drain_ring = ring_of(&local.scale(2).await?)?;
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
    let predicted: BTreeSet<String> = fleet
        .clients
        .iter()
        .filter(|c| old_ring.diff(&drain_ring).moved(&c.user))
        .map(|c| c.user.clone())
        .collect();

    let mut rounds = 1;
    let final_state = loop {
        rounds += 1;
        fleet.send_round(&proxies, rounds, 64).await?;
        let state = local.state().await?;
        if wscluster_tests::settled(&state, 2) {
            break state;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(90),
            "the drain did not finish within 90 s"
        );
    };
    let new_ring = ring_of(&final_state)?;
    let back = fleet
        .wait_on_owners(&new_ring, Duration::from_secs(30))
        .await?;
    rounds += 1;
    fleet.send_round(&proxies, rounds, 64).await?;
    fleet.wait_messages(rounds, Duration::from_secs(60)).await?;

    let records = fleet.records();
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
            let (reason, version) = &r.resets[0];
            anyhow::ensure!(reason == "drain", "{user} was reset for {reason}");
            anyhow::ensure!(
                version.is_some_and(|v| v >= drain_ring.version()),
                "{user} was reset under ring {version:?}, before the drain ring {}",
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
    let problems = delivery_problems(&records, rounds);
    anyhow::ensure!(
        problems.is_empty(),
        "{} clients with delivery problems, e.g. {:?}",
        problems.len(),
        &problems[..problems.len().min(3)]
    );
    fleet.close();
    local.stop().await
}
