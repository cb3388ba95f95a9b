//! Scale 3 → 4 across real processes: local mode with 2 proxies, 3 nodes, real Redis and
//! RabbitMQ. Exactly the clients the ring predicts to move are reset, every one is back on its
//! new owner within the pacing window, and every message sent before, during and after the move
//! arrives once (after de-duplication by offset), in order, at its own user only.
//!
//! Client count: `WSCLUSTER_E2E_CLIENTS` (default 1,000 so the suite fits CI on two cores;
//! `scripts/e2e-scale.sh` runs 5,000 and 10,000).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use wscluster_ring::Ring;
use wscluster_tests::{Record, Scenario, Started, ensure_delivered, reset_users, ring_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_resets_exactly_the_moved_clients_and_loses_no_message() {
    Scenario::new("scale-up", 3, "u", 1_000).run(scenario).await;
}

async fn scenario(mut s: Started) -> anyhow::Result<()> {
    // 1. Every client sits on the owner the ring names.
    let old_ring = s.local.ring().await?;
    ensure_on_owners(&s.fleet.records(), &old_ring)?;
    let refused_before = failed_connects(&s.fleet.records());

    // 2. Scale up while messages keep flowing.
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
    let predicted = s.fleet.users(|user| diff.moved(user));

    // 3. Pacing window: under the defaults the pacer never goes below minRatePerSecond (500
    // per proxy, two proxies) and retryAfterMs is at most jitterMs (1000); adaptive pacing
    // goes up to 5,000/s while the new node keeps up. 15 s of slack for two shared cores.
    let window = Duration::from_secs_f64(predicted.len() as f64 / 1000.0 + 1.0 + 15.0);
    s.fleet.wait_on_owners(&new_ring, window).await?;
    s.deliver_round().await?;
    let propagation = all_proxies_applied_ms(&s.local.state().await?, &new_ring);
    let new_node = new_member(&old_ring, &new_ring)?;
    let upgrades = s.upgrade_figures(&new_node).await?;

    // 4. Exactly the predicted clients were reset, nobody was cut, nothing was lost.
    let records = s.fleet.records();
    let moves = Moves::of(&records, &predicted, started, refused_before);
    let fraction = predicted.len() as f64 / s.clients as f64;
    moves.print(&s, predicted.len(), refused_before, propagation);
    // The same line goes on: what the new node did with the upgrades (scripts/e2e-scale.sh
    // keeps the lines starting with "clients").
    println!(
        ", new node {new_node}: upgrades {}, p99 upgrade latency {} ms, refused upgrades {}",
        upgrades.upgrades,
        upgrades.p99_ms.map_or("-".into(), |ms| format!("<= {ms}")),
        upgrades.refused,
    );
    anyhow::ensure!(
        moves.reset == predicted,
        "reset clients differ from the ring's prediction: {} reset but not predicted, {} predicted but not reset",
        moves.reset.difference(&predicted).count(),
        predicted.difference(&moves.reset).count()
    );
    anyhow::ensure!(
        (fraction - 0.25).abs() <= 0.025,
        "moved fraction {fraction:.3} is not within 10 % of 1/4"
    );
    anyhow::ensure!(
        moves.drops == 0,
        "{} sessions were cut without a reset frame",
        moves.drops
    );
    ensure_delivered(&records, s.rounds, "after the scale-up")?;
    s.finish().await
}

/// What the move did to the clients, from their records.
struct Moves {
    /// Clients that got a reset frame.
    reset: BTreeSet<String>,
    /// Sessions cut without a reset frame.
    drops: u64,
    /// Messages delivered again (dropped by offset).
    duplicates: u64,
    /// Connection attempts refused since the scale request.
    failed_connects: u64,
    /// One such refusal, for the report.
    sample_error: Option<String>,
    /// When the last moved client's new session became ready, from the scale request.
    back: Duration,
}

impl Moves {
    /// The scenario's one line of figures.
    fn print(&self, s: &Started, predicted: usize, refused_before: u64, propagation: Option<f64>) {
        let fraction = predicted as f64 / s.clients as f64;
        print!(
            "clients {}, predicted moved {predicted} ({:.1} %), reset {}, back on new owners after {:?}, rounds {}, duplicates {}, cut sessions {}, refused connects at start {refused_before}, during the move {} (e.g. {:?}), ring change to all proxies applied {propagation:?} ms",
            s.clients,
            fraction * 100.0,
            self.reset.len(),
            self.back,
            s.rounds,
            self.duplicates,
            self.drops,
            self.failed_connects,
            self.sample_error,
        );
    }

    fn of(
        records: &BTreeMap<String, Record>,
        predicted: &BTreeSet<String>,
        started: Instant,
        refused_before: u64,
    ) -> Moves {
        Moves {
            reset: reset_users(records),
            drops: records.values().map(|r| r.drops).sum(),
            duplicates: records.values().map(|r| r.duplicates).sum(),
            failed_connects: failed_connects(records) - refused_before,
            sample_error: records.values().find_map(|r| r.last_connect_error.clone()),
            back: predicted
                .iter()
                .filter_map(|u| records.get(u).and_then(|r| r.ready_at))
                .map(|t| t.saturating_duration_since(started))
                .max()
                .unwrap_or_default(),
        }
    }
}

/// Every client sits on the owner `ring` names.
fn ensure_on_owners(records: &BTreeMap<String, Record>, ring: &Ring) -> anyhow::Result<()> {
    for (user, r) in records {
        let owner = &ring.owner(user)?.id;
        anyhow::ensure!(
            r.node.as_deref() == Some(owner.as_str()),
            "{user} is on {:?}, the ring says {owner}",
            r.node
        );
    }
    Ok(())
}

/// Connection attempts refused so far, over all clients.
fn failed_connects(records: &BTreeMap<String, Record>) -> u64 {
    records.values().map(|r| r.failed_connects).sum()
}

/// The member `new` has and `old` has not: the node the scale-up added.
fn new_member(old: &Ring, new: &Ring) -> anyhow::Result<String> {
    new.members()
        .iter()
        .map(|m| m.id.clone())
        .find(|id| !old.members().iter().any(|o| o.id == *id))
        .ok_or_else(|| anyhow::anyhow!("the new ring adds no member"))
}

/// How long `ring` took to reach every proxy, from local mode's propagation record.
fn all_proxies_applied_ms(state: &Value, ring: &Ring) -> Option<f64> {
    state["propagation"]
        .as_array()?
        .iter()
        .find(|v| v["version"].as_u64() == Some(ring.version()))?["allProxiesAppliedMs"]
        .as_f64()
}
