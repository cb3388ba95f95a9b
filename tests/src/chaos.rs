//! The chaos suite's harness (`tests/tests/chaos_*.rs`, `docs/reliability.md`): backends the
//! test owns and breaks, load that records every answer, and the figures every scenario prints
//! and asserts.
//!
//! | module | concern |
//! | --- | --- |
//! | [`services`] | [`PrivateRedis`] / [`PrivateRabbit`]: a `redis-server` or `rabbitmq-server` of the test's own on free ports, killed with SIGKILL and started again on the same data; [`signal_pid`] / [`pid_listening`] for the processes local mode runs |
//! | [`load`] | [`SendLoad`] / [`BroadcastLoad`]: sends at a fixed rate, one attempt per message, every answer recorded with its time |
//! | [`tally`] | [`Tally`]: acknowledged, delivered, lost, duplicated, reordered, wrong user, longest recovery, from what was answered and what the clients saw |
//! | this module | [`ChaosRun`]: the client count ([`CLIENTS_ENV`]), the send rate, and starting a scenario on given backends |

pub mod load;
pub mod services;
pub mod tally;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use load::{BroadcastLoad, Outcome, SendLoad, SendLog, Sent};
pub use services::{PrivateRabbit, PrivateRedis, ServerTls, pid_listening, signal_pid};
pub use tally::Tally;

use crate::client::Record;
use crate::env::{amqp_url, env_count, redis_url, unique};
use crate::fleet::Fleet;
use crate::local::LocalOptions;
use crate::scenario::{PROXIES, Scenario, Started};
use crate::wait::wait_for;

/// The variable that sets every chaos scenario's client count (`scripts/chaos.sh --clients`).
pub const CLIENTS_ENV: &str = "WSCLUSTER_CHAOS_CLIENTS";
/// Clients per scenario when [`CLIENTS_ENV`] is unset: what CI runs.
pub const DEFAULT_CLIENTS: usize = 1_000;
/// The variable that sets the total send rate of a [`SendLoad`] (sends per second).
pub const RATE_ENV: &str = "WSCLUSTER_CHAOS_RATE";
/// Sends per second when [`RATE_ENV`] is unset.
pub const DEFAULT_RATE: usize = 300;
/// Longest one chaos scenario may run, start-up and clean-up included (CI budget: 90 s each at
/// 1,000 clients; more clients get more, see [`ChaosRun::limit`]).
pub const SCENARIO_SECONDS: u64 = 90;
/// Longest the final check waits for acknowledged messages still on their way.
pub const SETTLE_SECONDS: u64 = 30;

/// One chaos scenario's sizes, read from the environment.
#[derive(Debug, Clone, Copy)]
pub struct ChaosRun {
    /// What local mode starts and how users are named.
    pub scenario: Scenario,
    /// Clients.
    pub clients: usize,
    /// Total sends per second of the scenario's load.
    pub rate: usize,
}

impl ChaosRun {
    /// `nodes` nodes and [`PROXIES`] proxies, users `<user_prefix>-<i>`, sizes from the
    /// environment.
    pub fn new(name: &'static str, nodes: u32, user_prefix: &'static str) -> ChaosRun {
        ChaosRun {
            scenario: Scenario::new(name, nodes, user_prefix, DEFAULT_CLIENTS),
            clients: env_count(CLIENTS_ENV, DEFAULT_CLIENTS),
            rate: env_count(RATE_ENV, DEFAULT_RATE),
        }
    }

    /// The time bound of the whole scenario: [`SCENARIO_SECONDS`], plus two seconds per 100
    /// clients beyond the default (connecting them alone takes about one).
    pub fn limit(&self) -> Duration {
        let extra = self.clients.saturating_sub(DEFAULT_CLIENTS) as u64 / 50;
        Duration::from_secs(SCENARIO_SECONDS + extra)
    }

    /// Local mode options on the given backends (the shared ones when `None`), unique names.
    pub fn options(&self, redis: Option<String>, amqp: Option<String>) -> LocalOptions {
        let mut options =
            LocalOptions::real_backends(self.scenario.name, self.scenario.nodes, PROXIES);
        options.redis_url = Some(redis.unwrap_or_else(redis_url));
        options.amqp_url = Some(amqp.unwrap_or_else(amqp_url));
        options.redis_prefix = format!("wscluster-chaos-{}", unique(self.scenario.name));
        options
    }

    /// Starts local mode from `options`, connects the clients and delivers round 1.
    pub async fn start(&self, options: LocalOptions) -> anyhow::Result<Started> {
        Started::with_options(self.scenario, options, self.clients).await
    }
}

/// Waits until `load` has an acknowledged send answered after `since` (the system takes sends
/// again); answers how long after `since` that answer came.
pub async fn wait_acknowledged_after(
    load: &SendLoad,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    wait_for("a send acknowledged again", timeout, || async {
        Ok(load.first_acknowledged_after(since).map(|at| at - since))
    })
    .await
}

/// Waits until `load` has `count` answers (of any kind) to sends started at or after `since`:
/// the system answers during a fault rather than hanging.
pub async fn wait_answered_after(
    load: &SendLoad,
    since: Instant,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = format!("{count} sends answered since the fault");
    wait_for(&what, timeout, || async {
        Ok((load.answered_after(since) >= count).then_some(()))
    })
    .await
}

/// Stops `load`, then waits (at most [`SETTLE_SECONDS`]) until `done` holds for the figures of
/// what it sent against `fleet`'s records; answers the log and the final figures either way
/// (the caller asserts them, so a timeout shows as the broken figure).
pub async fn settle_sends(
    load: SendLoad,
    records: impl Fn() -> BTreeMap<String, Record>,
    done: impl Fn(&Tally) -> bool,
) -> (SendLog, Tally) {
    let log = load.stop().await;
    let log_ref = &log;
    let (records, done) = (&records, &done);
    let _ = wait_for(
        "every acknowledged send delivered",
        Duration::from_secs(SETTLE_SECONDS),
        || async move { Ok(done(&Tally::of_sends(log_ref, &records())).then_some(())) },
    )
    .await;
    let tally = Tally::of_sends(&log, &records());
    (log, tally)
}

/// The users of a fleet, in order.
pub fn users_of(fleet: &Fleet) -> Vec<String> {
    fleet.clients.iter().map(|c| c.user.clone()).collect()
}

/// How the sends started during a fault window were answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowAnswers {
    /// Answered 2xx within the window.
    pub acknowledged: usize,
    /// Answered 503 within the window.
    pub refused: usize,
    /// Answered otherwise (or failed) within the window.
    pub failed: usize,
    /// Answered only after the window and later than `fast` after they started: they were
    /// held through the fault instead of being refused.
    pub held: usize,
    /// The slowest answer within the window.
    pub slowest: Duration,
}

/// How the sends started in `[from, to)` were answered. One started shortly before `to` and
/// answered just after it (within `fast`) is neither held nor counted: it met the repair.
pub fn answers_between(log: &SendLog, from: Instant, to: Instant, fast: Duration) -> WindowAnswers {
    let mut w = WindowAnswers::default();
    for s in log.values().flatten() {
        if s.started < from || s.started >= to {
            continue;
        }
        if s.answered >= to {
            if s.answered - s.started > fast {
                w.held += 1;
            }
            continue;
        }
        match s.outcome {
            Outcome::Acknowledged(_) => w.acknowledged += 1,
            Outcome::Refused(_) => w.refused += 1,
            Outcome::Failed(_) => w.failed += 1,
        }
        w.slowest = w.slowest.max(s.answered - s.started);
    }
    w
}
