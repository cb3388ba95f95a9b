//! Chaos (issue 14 §8 d): SIGTERM to a proxy under send load, across real processes (local
//! mode, 3 nodes, 2 proxies — 3 from 8,001 clients on, so the survivors stay within the
//! open-file limit — the shared Redis and RabbitMQ). The proxy stops accepting, waits
//! its `drainTimeoutSeconds`, then resets every client it carries: each gets the drain reset
//! frame and close code 4001 (none sees a cut, 1006), comes back through the other proxy within
//! the pacing window (`resets.jitterMs`), and no acknowledged send is lost. See
//! `docs/reliability.md`.
//!
//! Clients: `WSCLUSTER_CHAOS_CLIENTS` (default 1,000); rate: `WSCLUSTER_CHAOS_RATE`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wscluster_ring::contract::ResetReason;
use wscluster_tests::chaos::{
    ChaosRun, SendLoad, pid_listening, settle_sends, signal_pid, users_of, wait_answered_after,
};
use wscluster_tests::{Fleet, run_bounded};

/// The dying proxy's grace before it resets what is left.
const DRAIN_SECONDS: u64 = 1;
/// The pacing window: clients are told to wait uniformly in `[0, JITTER_MS]`.
const JITTER_MS: u64 = 2_000;
/// Time allowed beyond the pacing window for the reconnect itself (a refused first attempt at
/// the stopped proxy, then the other one), more with more clients.
const RECONNECT_SLACK: Duration = Duration::from_secs(5);
/// Clients one surviving proxy may take: each holds two sockets there, and a process may open
/// 20,000 files on this machine.
const CLIENTS_PER_PROXY_MAX: usize = 8_000;

/// Enough proxies that the survivors can hold every client once one stops (at least two).
fn proxies_for(clients: usize) -> u32 {
    let survivors = clients.div_ceil(CLIENTS_PER_PROXY_MAX).max(1);
    u32::try_from(survivors + 1).unwrap_or(u32::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_proxy_resets_every_client_with_4001_and_they_are_back_within_the_window() {
    let run = ChaosRun::new("chaos-proxy", 3, "pt");
    run_bounded(run.limit(), scenario(run)).await;
}

async fn scenario(run: ChaosRun) -> anyhow::Result<()> {
    let mut options = run.options(None, None);
    options.proxies = proxies_for(run.clients);
    let proxies = options.proxies as usize;
    options.proxy_config = Some(format!(
        "drainTimeoutSeconds: {DRAIN_SECONDS}\nresets: {{ratePerSecond: 1000, jitterMs: {JITTER_MS}}}\n"
    ));
    let s = run.start(options).await?;
    let load = SendLoad::start(&s.api, &users_of(&s.fleet), run.rate);
    let second = Duration::from_secs(10);
    wait_answered_after(&load, Instant::now(), run.rate, second).await?;

    // Clients i connected through proxy i % proxies: every proxies-th one is on proxy 0.
    let victims: BTreeSet<String> = s
        .fleet
        .clients
        .iter()
        .step_by(proxies)
        .map(|c| c.user.clone())
        .collect();
    let address = s.proxies[0].trim_start_matches("http://");
    let pid = pid_listening(address)?;
    let terminated = Instant::now();
    signal_pid(pid, "TERM")?;
    let back = wait_all_reset_and_back(&s.fleet, &victims, s.connect_limit()).await?;
    let window = Duration::from_secs(DRAIN_SECONDS) + Duration::from_millis(JITTER_MS);
    wait_answered_after(&load, Instant::now(), run.rate, second).await?;

    let (_, tally) = settle_sends(load, || s.fleet.records(), |t| t.lost == 0).await;
    let tally = tally.with_recovery(back);
    println!("{}", tally.line("d-proxy-sigterm", s.clients));
    println!(
        "chaos d-proxy-sigterm: {} clients on the stopped proxy, all back {back:?} after SIGTERM \
         (window {window:?} + slack {RECONNECT_SLACK:?}), {:?} in all",
        victims.len(),
        terminated.elapsed()
    );
    tally.ensure_kept("d-proxy-sigterm", s.clients)?;
    ensure_drained_cleanly(&s.fleet, &victims)?;
    anyhow::ensure!(
        back <= window + RECONNECT_SLACK,
        "clients came back {back:?} after SIGTERM, beyond the pacing window {window:?}"
    );
    s.finish().await
}

/// Waits until every victim holds a reset frame and every client is connected; answers how
/// long that took.
async fn wait_all_reset_and_back(
    fleet: &Fleet,
    victims: &BTreeSet<String>,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    wscluster_tests::wait_for("every client reset and back", limit, || async {
        let records = fleet.records();
        let away = records.values().filter(|r| !r.connected).count();
        let unreset: Vec<(&String, &wscluster_tests::Record)> = records
            .iter()
            .filter(|(u, r)| victims.contains(*u) && r.resets.is_empty())
            .collect();
        if let Some((user, r)) = unreset.first() {
            anyhow::bail!(
                "{away} clients not connected, {} of the stopped proxy's not reset, e.g. {user}: \
                 connected {}, drops {}, sessions {}, failed connects {}",
                unreset.len(),
                r.connected,
                r.drops,
                r.sessions,
                r.failed_connects
            );
        }
        anyhow::ensure!(away == 0, "{away} clients not connected yet");
        Ok(Some(started.elapsed()))
    })
    .await
}

/// Each victim got exactly one reset, for the drain, and a 4001 close (the client counts any
/// other end as a drop); nobody else was disturbed.
fn ensure_drained_cleanly(fleet: &Fleet, victims: &BTreeSet<String>) -> anyhow::Result<()> {
    for (user, r) in fleet.records() {
        anyhow::ensure!(r.drops == 0, "{user} was cut without a reset (1006): {r:?}");
        if victims.contains(&user) {
            anyhow::ensure!(
                r.resets.len() == 1 && r.resets[0].reason == ResetReason::Drain,
                "{user} was reset {:?}",
                r.resets
            );
            anyhow::ensure!(
                r.resets[0].retry_after_ms <= JITTER_MS,
                "{user} was told to wait beyond the window"
            );
        } else {
            anyhow::ensure!(r.resets.is_empty(), "{user} was not on the stopped proxy");
        }
    }
    Ok(())
}
