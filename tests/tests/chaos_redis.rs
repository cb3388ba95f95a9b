//! Chaos (issue 14 §8 a, a′): Redis dies under send load (SIGKILL) and comes back, across real
//! processes (local mode, 3 nodes, 2 proxies, the test's own `redis-server`, the shared
//! RabbitMQ). See `docs/reliability.md`.
//!
//! * (a) Redis with `--appendonly yes --appendfsync always`: every send answered 2xx reaches its
//!   user, at least once and in order; sends during the outage are answered 503, fast.
//! * (a′) Redis keeping no data: what was stored is gone, but not silently: clients that come
//!   back with the old epoch get `recovered: false`.
//!
//! Clients: `WSCLUSTER_CHAOS_CLIENTS` (default 1,000); rate: `WSCLUSTER_CHAOS_RATE`.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wscluster_tests::chaos::{
    ChaosRun, PrivateRedis, SendLoad, answers_between, settle_sends, users_of,
    wait_acknowledged_after, wait_answered_after,
};
use wscluster_tests::{Client, run_bounded, wait_for};

/// A send started this long after the kill cannot have been stored before it.
const KILL_MARGIN: Duration = Duration::from_millis(200);
/// The slowest a refusal during the outage may be: sends fail fast (the node gives Redis 1 s;
/// the rest is the proxy hop and 2 busy cores).
const FAIL_FAST: Duration = Duration::from_secs(3);
/// Longest Redis stays down.
const OUTAGE_MAX: Duration = Duration::from_secs(5);
/// Longest the system may take to acknowledge sends again after Redis is back.
const BACK_WITHIN: Duration = Duration::from_secs(20);

/// The outage lasts until a second's worth of sends was answered during it, or [`OUTAGE_MAX`]
/// (sends that hang are then counted by the assertions, not waited for).
async fn outage(load: &SendLoad, killed: Instant, rate: usize) {
    let _ = wait_answered_after(load, killed + KILL_MARGIN, rate, OUTAGE_MAX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_a_durable_redis_sigkill_and_the_outage_answers_503() {
    let run = ChaosRun::new("chaos-redis", 3, "ra");
    run_bounded(run.limit(), durable(run)).await;
}

async fn durable(run: ChaosRun) -> anyhow::Result<()> {
    let mut redis = PrivateRedis::start(true).await?;
    let s = run.start(run.options(Some(redis.url()), None)).await?;
    let load = SendLoad::start(&s.api, &users_of(&s.fleet), run.rate);
    let second = Duration::from_secs(10);
    wait_for("a second of acknowledged load", second, || async {
        Ok((load.acknowledged() >= run.rate).then_some(()))
    })
    .await?;

    let killed = Instant::now();
    redis.kill().await?;
    outage(&load, killed, run.rate).await;
    // The outage ends when the restart begins: Redis answers before `restart` returns (it polls
    // PING), and a send the node was still retrying may be stored then — an honest 2xx.
    let restarting = Instant::now();
    redis.restart().await?;
    let restarted = Instant::now();
    let back = wait_acknowledged_after(&load, restarted, BACK_WITHIN).await?;
    wait_answered_after(&load, restarted + back, run.rate, second).await?;

    let (log, tally) = settle_sends(load, || s.fleet.records(), |t| t.lost == 0).await;
    let tally = tally.with_recovery(back);
    let w = answers_between(&log, killed + KILL_MARGIN, restarting, FAIL_FAST);
    let starting = answers_between(&log, killed + KILL_MARGIN, restarted, FAIL_FAST);
    println!("{}", tally.line("a-redis-durable", s.clients));
    println!(
        "chaos a-redis-durable outage {:?}: acknowledged {}, refused-503 {}, failed {}, \
         held until Redis returned {}, slowest answer {:?}; acknowledged while Redis started \
         ({:?}) {}; first 2xx {back:?} after the restart",
        restarting - killed,
        w.acknowledged,
        w.refused,
        w.failed,
        w.held,
        w.slowest,
        restarted - restarting,
        starting.acknowledged.saturating_sub(w.acknowledged)
    );
    tally.ensure_kept("a-redis-durable", s.clients)?;
    anyhow::ensure!(
        w.acknowledged == 0,
        "{} sends were acknowledged while Redis was dead",
        w.acknowledged
    );
    anyhow::ensure!(
        w.refused > 0 && w.failed == 0 && w.held == 0,
        "every send during the outage is answered 503 at once: {w:?}"
    );
    anyhow::ensure!(
        w.slowest <= FAIL_FAST,
        "refusals are fast: the slowest took {:?}",
        w.slowest
    );
    s.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_tells_returning_clients_recovered_false() {
    let run = ChaosRun::new("chaos-redis-volatile", 3, "rv");
    run_bounded(run.limit(), volatile(run)).await;
}

/// Clients the test takes offline and brings back, keeping their records (offset, epoch).
struct Offline {
    clients: Vec<Client>,
    stop: CancellationToken,
}

impl Offline {
    fn connect(prefix: &str, count: usize, proxies: &[String]) -> Offline {
        let clients = (0..count)
            .map(|i| Client::new(format!("{prefix}-{i}")))
            .collect();
        let mut offline = Offline {
            clients,
            stop: CancellationToken::new(),
        };
        offline.resume(proxies);
        offline
    }

    fn resume(&mut self, proxies: &[String]) {
        self.stop = CancellationToken::new();
        let ws: Vec<String> = proxies
            .iter()
            .map(|p| p.replacen("http://", "ws://", 1))
            .collect();
        for (i, c) in self.clients.iter().enumerate() {
            tokio::spawn(c.clone().run(ws.clone(), i, self.stop.clone()));
        }
    }

    async fn wait(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&Client) -> bool,
    ) -> anyhow::Result<()> {
        wait_for(what, limit, || async {
            let behind: Vec<&Client> = self.clients.iter().filter(|c| !ok(c)).collect();
            if let Some(first) = behind.first() {
                let r = first.snapshot();
                anyhow::bail!(
                    "{} clients not there yet, e.g. {}: connected {}, epoch {:?}, offset {}, \
                     not recovered {}, sessions {}, last connect error {:?}",
                    behind.len(),
                    first.user,
                    r.connected,
                    r.epoch,
                    r.last_offset,
                    r.not_recovered,
                    r.sessions,
                    r.last_connect_error
                );
            }
            Ok(Some(()))
        })
        .await
    }
}

async fn volatile(run: ChaosRun) -> anyhow::Result<()> {
    let mut redis = PrivateRedis::start(false).await?;
    let half = run.clients / 2;
    let run_online = ChaosRun {
        clients: run.clients - half,
        ..run
    };
    let s = run_online
        .start(run.options(Some(redis.url()), None))
        .await?;
    let mut offline = Offline::connect("rv-off", half, &s.proxies);
    let limit = s.connect_limit();
    offline
        .wait("offline group connected", limit, |c| c.snapshot().connected)
        .await?;
    let mut users = users_of(&s.fleet);
    users.extend(offline.clients.iter().map(|c| c.user.clone()));
    let load = SendLoad::start(&s.api, &users, run.rate);
    // Every offline client received a message (it has an epoch and an offset) before going
    // away; what is stored for it while it is away is then lost with Redis's data.
    offline
        .wait("a message at every offline client", limit, |c| {
            !c.snapshot().messages.is_empty()
        })
        .await?;
    offline.stop.cancel();
    let went = Instant::now();
    wait_answered_after(&load, went, run.rate, Duration::from_secs(20)).await?;

    // Redis loses everything, including what was stored for the offline clients.
    let killed = Instant::now();
    redis.kill().await?;
    outage(&load, killed, run.rate).await;
    redis.restart().await?;
    let restarted = Instant::now();
    wait_acknowledged_after(&load, restarted, BACK_WITHIN).await?;

    // They come back with the old epoch: every one is told its recovery was incomplete.
    offline.resume(&s.proxies);
    let resumed = Instant::now();
    offline
        .wait("recovered=false at every returning client", limit, |c| {
            let r = c.snapshot();
            r.connected && r.not_recovered > 0
        })
        .await?;
    let recovery = resumed.elapsed();
    let records = || {
        let mut all = s.fleet.records();
        all.extend(
            offline
                .clients
                .iter()
                .map(|c| (c.user.clone(), c.snapshot())),
        );
        all
    };
    let (_, tally) = settle_sends(load, records, |t| t.lost_silently == 0).await;
    let tally = tally.with_recovery(recovery);
    println!("{}", tally.line("a'-redis-volatile", run.clients));
    anyhow::ensure!(
        tally.lost_silently == 0 && tally.wrong_user == 0,
        "no silent loss: {}",
        tally.line("a'-redis-volatile", run.clients)
    );
    anyhow::ensure!(
        tally.unrecovered_users >= half,
        "every returning client was told"
    );
    offline.stop.cancel();
    s.finish().await
}
