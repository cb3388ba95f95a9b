//! Chaos (issue 14 §8 c): the ring authority dies in the middle of a drain (scale 4 → 2) and
//! comes back, across real processes (local mode, 2 proxies, the shared Redis and RabbitMQ),
//! under send load. The drain completes, no node stops before its clients moved (every client
//! of a leaving node is reset for the drain, none is cut), and no acknowledged send is lost.
//!
//! In local mode the ring authority lives in the supervisor process, so a SIGKILL of it would
//! take the supervisor (and what it knows of the drain) down too, and orphan the children: the
//! scenario stops the authority instead (`POST /api/authority/stop`: the ring stream is cut and
//! refused, acknowledgements cannot reach it — what proxies and nodes see of a dead authority)
//! and starts it again. The Kubernetes operator's restart mid-drain (state from the WsCluster
//! status) is covered by the operator's own tests. See `docs/reliability.md`.
//!
//! Clients: `WSCLUSTER_CHAOS_CLIENTS` (default 1,000); rate: `WSCLUSTER_CHAOS_RATE`.

use std::time::{Duration, Instant};

use wscluster_ring::contract::ResetReason;
use wscluster_tests::chaos::{
    ChaosRun, SendLoad, answers_between, settle_sends, users_of, wait_answered_after,
};
use wscluster_tests::{ring_of, run_bounded, settled, wait_for};

/// How long the authority stays down: long enough for proxies to notice, shorter than the
/// drain timeout (30 s), so the drain must wait for it rather than give up.
const DOWN_SECONDS: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_its_ring_authority_going_down_and_no_node_stops_before_its_clients_moved()
{
    let run = ChaosRun::new("chaos-authority", 4, "ca");
    run_bounded(run.limit(), scenario(run)).await;
}

async fn scenario(run: ChaosRun) -> anyhow::Result<()> {
    let s = run.start(run.options(None, None)).await?;
    let old_ring = s.local.ring().await?;
    let leaving = ["local-node-2", "local-node-3"];
    let moved = s
        .fleet
        .users(|u| leaving.iter().any(|n| old_ring.owns(n, u)));
    let load = SendLoad::start(&s.api, &users_of(&s.fleet), run.rate);
    wait_answered_after(&load, Instant::now(), run.rate, Duration::from_secs(10)).await?;

    let drain_ring = ring_of(&s.local.scale(2).await?)?;
    let draining: Vec<&str> = drain_ring
        .members()
        .iter()
        .filter(|m| !m.is_active())
        .map(|m| m.id.as_str())
        .collect();
    anyhow::ensure!(draining == leaving, "the drain ring drains {draining:?}");
    s.local.post("authority/stop", None).await?;
    let stopped = Instant::now();
    // The fault's length (not a synchronisation): the authority stays down while the load
    // goes on.
    tokio::time::sleep(Duration::from_secs(DOWN_SECONDS)).await;
    s.local.post("authority/start", None).await?;
    let restarted = Instant::now();
    let state = wait_for("the drain to complete", Duration::from_secs(60), || async {
        let state = s.local.state().await?;
        Ok((settled(&state, 2) && state["drain"].is_null()).then_some(state))
    })
    .await?;
    let new_ring = ring_of(&state)?;
    let back = s.fleet.wait_on_owners(&new_ring, s.connect_limit()).await?;
    let recovery = restarted.elapsed();
    wait_answered_after(&load, Instant::now(), run.rate, Duration::from_secs(10)).await?;

    let (log, tally) = settle_sends(load, || s.fleet.records(), |t| t.lost == 0).await;
    let tally = tally.with_recovery(recovery);
    let w = answers_between(&log, stopped, restarted, Duration::from_secs(2));
    println!("{}", tally.line("c-authority-mid-drain", s.clients));
    println!("chaos c-authority-mid-drain: sends while the authority was down: {w:?}");
    println!(
        "chaos c-authority-mid-drain: {} clients moved, authority down {:?}, drain done and \
         everyone on owners {recovery:?} after it came back ({back:?} after the settle)",
        moved.len(),
        restarted - stopped
    );
    tally.ensure_kept("c-authority-mid-drain", s.clients)?;
    for (user, r) in s.fleet.records() {
        anyhow::ensure!(
            r.drops == 0,
            "{user} was cut: its node stopped before it moved"
        );
        let drained = r
            .resets
            .iter()
            .filter(|x| x.reason == ResetReason::Drain)
            .count();
        anyhow::ensure!(
            drained == usize::from(moved.contains(&user)),
            "{user} got {drained} drain resets (moved: {})",
            moved.contains(&user)
        );
    }
    let nodes = state["nodes"].as_array().cloned().unwrap_or_default();
    for leaving in [2, 3] {
        anyhow::ensure!(
            nodes
                .iter()
                .any(|n| n["ordinal"] == leaving && n["process"] == "exited"),
            "node {leaving} was stopped after its drain"
        );
    }
    s.finish().await
}
