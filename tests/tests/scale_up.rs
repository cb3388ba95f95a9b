//! Scale 3 → 4 across real processes: local mode with 2 proxies, 3 nodes, real Redis and
//! RabbitMQ. Exactly the clients the ring predicts to move are reset, every one is back on its
//! new owner within the pacing window, and every message sent before, during and after the move
//! arrives once (after de-duplication by offset), in order, at its own user only.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 1,000 so the suite fits CI on two cores;
//! `scripts/e2e-scale.sh` runs 5,000 and 10,000).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wscluster_tests::{Scenario, Started, ensure_delivered, ring_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_resets_exactly_the_moved_clients_and_loses_no_message() {
    Scenario::new("scale-up", 3, "u", 1_000).run(scenario).await;
}

async fn scenario(mut s: Started) -> anyhow::Result<()> {
    let before = s.local.state().await?;
    let old_ring = ring_of(&before)?;
    // Every client sits on the owner the ring names.
    for (user, r) in s.fleet.records() {
        let owner = &old_ring.owner(&user)?.id;
        anyhow::ensure!(
            r.node.as_deref() == Some(owner.as_str()),
            "{user} is on {:?}, the ring says {owner}",
            r.node
        );
    }

    let refused_before: u64 = s.fleet.records().values().map(|r| r.failed_connects).sum();

    // Scale up while messages keep flowing.
    let started = Instant::now();
    s.local.scale(4).await?;
    let settled = s
        .send_until_settled(
            4,
            started,
            Duration::from_secs(60),
            "the fourth node to join",
        )
        .await?;
    let new_ring = ring_of(&settled)?;
    anyhow::ensure!(new_ring.version() > old_ring.version(), "ring version grew");
    let diff = old_ring.diff(&new_ring);
    let predicted: BTreeSet<String> = s
        .fleet
        .clients
        .iter()
        .filter(|c| diff.moved(&c.user))
        .map(|c| c.user.clone())
        .collect();

    // Pacing window: moved clients at ratePerSecond (500 per proxy, two proxies) plus the
    // largest retryAfterMs (jitterMs 2000), with slack for two shared cores.
    let window = Duration::from_secs_f64(predicted.len() as f64 / 1000.0 + 2.0 + 15.0);
    s.fleet.wait_on_owners(&new_ring, window).await?;

    s.deliver_round().await?;
    let propagation = s.local.state().await?["propagation"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|v| v["version"].as_u64() == Some(new_ring.version()))
        })
        .and_then(|v| v["allProxiesAppliedMs"].as_f64());

    let records = s.fleet.records();
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
    let (clients, rounds) = (s.clients, s.rounds);
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
    ensure_delivered(&records, rounds, "after the scale-up")?;
    s.finish().await
}
