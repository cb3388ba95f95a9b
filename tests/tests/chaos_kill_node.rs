//! Chaos (issue 14 §8 e): SIGKILL a node under send load, across real processes (local mode,
//! 3 nodes, 2 proxies, the shared Redis and RabbitMQ). Its clients reconnect to their new
//! owners and get what was stored meanwhile; no acknowledged send is lost, reordered or
//! misdelivered. `kill_node.rs` checks the same fault round by round (and the node's return);
//! this one counts it under continuous load. See `docs/reliability.md`.
//!
//! Clients: `WSCLUSTER_CHAOS_CLIENTS` (default 1,000); rate: `WSCLUSTER_CHAOS_RATE`.

use std::time::{Duration, Instant};

use wscluster_tests::chaos::{ChaosRun, SendLoad, settle_sends, users_of, wait_answered_after};
use wscluster_tests::{ring_of, run_bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_clients_lose_no_acknowledged_send_under_load() {
    let run = ChaosRun::new("chaos-kill-node", 3, "kn");
    run_bounded(run.limit(), scenario(run)).await;
}

async fn scenario(run: ChaosRun) -> anyhow::Result<()> {
    let s = run.start(run.options(None, None)).await?;
    let ring = s.local.ring().await?;
    let victims = s.fleet.users(|u| ring.owns("local-node-1", u));
    let load = SendLoad::start(&s.api, &users_of(&s.fleet), run.rate);
    wait_answered_after(&load, Instant::now(), run.rate, Duration::from_secs(10)).await?;

    let killed = Instant::now();
    s.local.post("nodes/1/kill", None).await?;
    let state = s.local.wait_settled(2, Duration::from_secs(30)).await?;
    let ring = ring_of(&state)?;
    s.fleet.wait_on_owners(&ring, s.connect_limit()).await?;
    let recovery = killed.elapsed();
    wait_answered_after(&load, Instant::now(), run.rate, Duration::from_secs(10)).await?;

    let (_, tally) = settle_sends(load, || s.fleet.records(), |t| t.lost == 0).await;
    let tally = tally.with_recovery(recovery);
    println!("{}", tally.line("e-kill-node", s.clients));
    println!(
        "chaos e-kill-node: {} clients on the killed node, all on new owners {recovery:?} after \
         the kill",
        victims.len()
    );
    tally.ensure_kept("e-kill-node", s.clients)?;
    for (user, r) in s.fleet.records() {
        anyhow::ensure!(
            victims.contains(&user) || (r.drops == 0 && r.resets.is_empty()),
            "{user} was not on the killed node but was disturbed"
        );
    }
    s.finish().await
}
