//! Chaos (issue 14 §8 b): RabbitMQ restarts (SIGKILL, then a start on the same data) during a
//! stream of broadcasts, across real processes (local mode, 3 nodes, 2 proxies, the shared
//! Redis, the test's own `rabbitmq-server`). Every broadcast answered 202 reaches every
//! connected client. See `docs/reliability.md`.
//!
//! Clients: `WSCLUSTER_CHAOS_CLIENTS` (default 1,000); broadcasts per second:
//! `WSCLUSTER_CHAOS_BROADCAST_RATE` (default 10).

use std::time::{Duration, Instant};

use wscluster_tests::chaos::{BroadcastLoad, ChaosRun, PrivateRabbit, SETTLE_SECONDS, Tally};
use wscluster_tests::env::env_count;
use wscluster_tests::{run_bounded, wait_for};

/// Extra time bound for starting RabbitMQ twice.
const BROKER_STARTS: Duration = Duration::from_secs(30);
/// Longest the system may take to acknowledge broadcasts again after the broker is back.
const BACK_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broadcast_answered_202_reaches_every_client_across_a_broker_restart() {
    let run = ChaosRun::new("chaos-broker", 3, "bb");
    // The broker's two starts take 6-20 s on 2 busy cores: beyond the other scenarios' bound.
    run_bounded(run.limit() + BROKER_STARTS, scenario(run)).await;
}

async fn scenario(run: ChaosRun) -> anyhow::Result<()> {
    let mut rabbit = PrivateRabbit::start().await?;
    eprintln!("chaos b: private RabbitMQ at {}", rabbit.url());
    let s = run.start(run.options(None, Some(rabbit.url()))).await?;
    let rate = env_count("WSCLUSTER_CHAOS_BROADCAST_RATE", 10);
    let load = BroadcastLoad::start(&s.api, rate);
    let started = Instant::now();
    let wanted = rate * 2;
    wait_for(
        "broadcasts acknowledged",
        Duration::from_secs(20),
        || async { Ok((load.acknowledged_after(started) >= wanted).then_some(())) },
    )
    .await?;

    let killed = Instant::now();
    eprintln!("chaos b: broadcasts acknowledged; killing the broker");
    rabbit.kill().await?;
    rabbit.restart().await?;
    let restarted = Instant::now();
    eprintln!("chaos b: broker back after {:?}", restarted - killed);
    let back = wait_for("a broadcast acknowledged again", BACK_WITHIN, || async {
        Ok(load
            .first_acknowledged_after(restarted)
            .map(|at| at - killed))
    })
    .await?;
    // Two seconds' worth acknowledged after the restart: the nodes reconnect one by one, and
    // a broadcast one of them takes while another is still away must reach that one's
    // clients too.
    wait_for("broadcasts after the restart", BACK_WITHIN, || async {
        Ok((load.acknowledged_after(restarted) >= wanted).then_some(()))
    })
    .await?;
    let sent = load.stop().await;
    eprintln!(
        "chaos b: {} broadcasts sent; waiting for them at every client",
        sent.len()
    );

    let tally = |records| Tally::of_broadcasts(&sent, &records);
    let _ = wait_for(
        "every acknowledged broadcast at every client",
        Duration::from_secs(SETTLE_SECONDS),
        || async { Ok((tally(s.fleet.records()).lost == 0).then_some(())) },
    )
    .await;
    let t = tally(s.fleet.records()).with_recovery(back);
    println!("{}", t.line("b-broker-restart", s.clients));
    println!(
        "chaos b-broker-restart: broker down {:?}, first 202 {back:?} after the kill",
        restarted - killed
    );
    t.ensure_no_loss("b-broker-restart", s.clients)?;
    let records = s.fleet.records();
    anyhow::ensure!(
        records.values().all(|r| r.drops == 0),
        "the broker restart cut no client"
    );
    s.finish().await
}
