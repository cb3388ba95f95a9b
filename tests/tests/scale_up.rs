//! Scale 3 → 4 across real processes: local mode with 2 proxies, 3 nodes, real Redis and
//! RabbitMQ. Exactly the clients the ring predicts to move are reset, every one is back on its
//! new owner within the pacing window, and every message sent before, during and after the move
//! arrives once (after de-duplication by offset), in order, at its own user only.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 1,000 so the suite fits CI on two cores;
//! `scripts/e2e-scale.sh` runs 5,000 and 10,000).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wscluster_tests::{Started, delivery_problems, ring_of, run_bounded};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_resets_exactly_the_moved_clients_and_loses_no_message() {
    run_bounded(TEST_TIMEOUT, scenario()).await;
}

async fn scenario() -> anyhow::Result<()> {
    let Started {
        local,
        proxies,
        fleet,
        clients,
    } = Started::new("scale-up", 3, "u", 1_000).await?;
    let before = local.state().await?;
    let old_ring = ring_of(&before)?;
    // Every client sits on the owner the ring names.
    for (user, r) in fleet.records() {
        let owner = &old_ring.owner(&user)?.id;
        anyhow::ensure!(
            r.node.as_deref() == Some(owner.as_str()),
            "{user} is on {:?}, the ring says {owner}",
            r.node
        );
    }

    let refused_before: u64 = fleet.records().values().map(|r| r.failed_connects).sum();

    // Scale up while messages keep flowing.
    let started = Instant::now();
    local.scale(4).await?;
    let mut rounds = 1;
    let settled = loop {
        rounds += 1;
        fleet.send_round(&proxies, rounds, 64).await?;
        let state = local.state().await?;
        if wscluster_tests::settled(&state, 4) {
            break state;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the fourth node did not join within 60 s"
        );
    };
    let new_ring = ring_of(&settled)?;
    anyhow::ensure!(new_ring.version() > old_ring.version(), "ring version grew");
    let diff = old_ring.diff(&new_ring);
    let predicted: BTreeSet<String> = fleet
        .clients
        .iter()
        .filter(|c| diff.moved(&c.user))
        .map(|c| c.user.clone())
        .collect();

    // Pacing window: moved clients at ratePerSecond (500 per proxy, two proxies) plus the
    // largest retryAfterMs (jitterMs 2000), with slack for two shared cores.
    let window = Duration::from_secs_f64(predicted.len() as f64 / 1000.0 + 2.0 + 15.0);
    wscluster_tests::wait_for("every client on its new owner", window, || async {
        let records = fleet.records();
        let misplaced: Vec<&String> = records
            .iter()
            .filter(|(user, r)| {
                let owner = new_ring.owner(user.as_str()).map(|m| m.id.clone()).ok();
                !r.connected || r.node != owner
            })
            .map(|(user, _)| user)
            .collect();
        if misplaced.is_empty() {
            Ok(Some(()))
        } else {
            Err(anyhow::anyhow!(
                "{} not on their owner yet, e.g. {:?}",
                misplaced.len(),
                &misplaced[..misplaced.len().min(3)]
            ))
        }
    })
    .await?;

    rounds += 1;
    fleet.send_round(&proxies, rounds, 64).await?;
    fleet.wait_messages(rounds, Duration::from_secs(60)).await?;
    let propagation = local.state().await?["propagation"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|v| v["version"].as_u64() == Some(new_ring.version()))
        })
        .and_then(|v| v["allProxiesAppliedMs"].as_f64());

    let records = fleet.records();
    // When the last moved client's new session became ready, from the scale request.
    let back = predicted
        .iter()
        .filter_map(|u| records.get(u).and_then(|r| r.ready_at))
        .map(|t| t.saturating_duration_since(started))
        .max()
        .unwrap_or_default();
    let reset: BTreeSet<String> = records
        .iter()
        .filter(|(_, r)| !r.resets.is_empty())
        .map(|(u, _)| u.clone())
        .collect();
    let drops: u64 = records.values().map(|r| r.drops).sum();
    let duplicates: u64 = records.values().map(|r| r.duplicates).sum();
    let failed_connects: u64 =
        records.values().map(|r| r.failed_connects).sum::<u64>() - refused_before;
    let sample_error = records.values().find_map(|r| r.last_connect_error.clone());
    let fraction = predicted.len() as f64 / clients as f64;
    println!(
        "clients {clients}, predicted moved {} ({:.1} %), reset {}, back on new owners after {back:?}, rounds {rounds}, duplicates {duplicates}, cut sessions {drops}, refused connects at start {refused_before}, during the move {failed_connects} (e.g. {sample_error:?}), ring change to all proxies applied {propagation:?} ms",
        predicted.len(),
        fraction * 100.0,
        reset.len()
    );
    anyhow::ensure!(
        reset == predicted,
        "reset clients differ from the ring's prediction: {} reset but not predicted, {} predicted but not reset",
        reset.difference(&predicted).count(),
        predicted.difference(&reset).count()
    );
    anyhow::ensure!(
        (fraction - 0.25).abs() <= 0.025,
        "moved fraction {fraction:.3} is not within 10 % of 1/4"
    );
    anyhow::ensure!(
        drops == 0,
        "{drops} sessions were cut without a reset frame"
    );
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
