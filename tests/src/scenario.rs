//! How every end-to-end scenario begins, proceeds in rounds of messages, and ends.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

use anyhow::Context;
use hyper::{Method, StatusCode};

use crate::env::env_count;
use crate::fleet::{Fleet, ServerApi};
use crate::local::{Local, LocalOptions, settled};
use crate::wait::run_bounded;

/// The variable that overrides a scenario's client count.
pub const CLIENTS_ENV: &str = "WSCLUSTER_E2E_CLIENTS";
/// Proxy processes in every scenario: enough to kill one and keep routing.
pub const PROXIES: u32 = 2;
/// `/send` calls in flight at once during a round.
pub const SEND_CONCURRENCY: usize = 64;
/// Longest a round may take to reach every client.
pub const ROUND_TIMEOUT_SECONDS: u64 = 60;
/// Longest one scenario may run, start-up and clean-up included.
pub const SCENARIO_TIMEOUT_SECONDS: u64 = 300;

/// What a scenario starts: its name (for unique cluster ids and key prefixes), its node
/// count, its users' name prefix and its client count unless [`CLIENTS_ENV`] says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Base of the unique cluster id and Redis prefix.
    pub name: &'static str,
    /// Nodes local mode starts with.
    pub nodes: u32,
    /// Users are `<user_prefix>-<i>`.
    pub user_prefix: &'static str,
    /// Clients when [`CLIENTS_ENV`] is unset.
    pub default_clients: usize,
}

impl Scenario {
    /// A scenario description.
    pub const fn new(
        name: &'static str,
        nodes: u32,
        user_prefix: &'static str,
        default_clients: usize,
    ) -> Scenario {
        Scenario {
            name,
            nodes,
            user_prefix,
            default_clients,
        }
    }

    /// Starts the scenario ([`Started::new`]) and runs `body` on it, all within
    /// [`SCENARIO_TIMEOUT_SECONDS`]; panics with the whole error chain on failure.
    pub async fn run<F, Fut>(self, body: F)
    where
        F: FnOnce(Started) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let limit = Duration::from_secs(SCENARIO_TIMEOUT_SECONDS);
        run_bounded(limit, async move { body(Started::new(self).await?).await }).await;
    }
}

/// A started scenario: local mode with real backends, the clients connected through its
/// proxies, and the rounds of messages sent so far (round 1 delivered to everyone).
pub struct Started {
    /// Local mode.
    pub local: Local,
    /// The proxies' base URLs (`http://…`).
    pub proxies: Vec<String>,
    /// The proxies' server API and a key for it.
    pub api: ServerApi,
    /// The connected clients.
    pub fleet: Fleet,
    /// How many clients.
    pub clients: usize,
    /// Rounds sent so far; round `n` sends `<user>:<n>` to every user.
    pub rounds: usize,
}

impl Started {
    /// Starts local mode (`scenario.nodes` nodes, [`PROXIES`] proxies), connects the clients
    /// and waits until the first round of messages reached them all.
    pub async fn new(scenario: Scenario) -> anyhow::Result<Started> {
        let clients = env_count(CLIENTS_ENV, scenario.default_clients);
        let options = LocalOptions::real_backends(scenario.name, scenario.nodes, PROXIES);
        Started::with_options(scenario, options, clients).await
    }

    /// The same with local mode started from `options` (its own Redis, RabbitMQ or proxy
    /// config) and `clients` clients.
    pub async fn with_options(
        scenario: Scenario,
        options: LocalOptions,
        clients: usize,
    ) -> anyhow::Result<Started> {
        let local = Local::start(options).await?;
        let proxies = local.proxy_urls().await?;
        let api = local.server_api().await?;
        let fleet = Fleet::connect(scenario.user_prefix, clients, &proxies);
        let mut started = Started {
            local,
            proxies,
            api,
            fleet,
            clients,
            rounds: 0,
        };
        started
            .fleet
            .wait_connected(started.connect_limit())
            .await?;
        started.deliver_round().await?;
        Ok(started)
    }

    /// How long every client may take to (re)connect: more clients, more time.
    pub fn connect_limit(&self) -> Duration {
        Duration::from_secs(30 + self.clients as u64 / 100)
    }

    /// Sends the next round to every client; does not wait for it to arrive.
    pub async fn send_round(&mut self) -> anyhow::Result<()> {
        self.rounds += 1;
        self.fleet
            .send_round(&self.api, self.rounds, SEND_CONCURRENCY)
            .await
    }

    /// Sends the next round and waits until every client has every round so far.
    pub async fn deliver_round(&mut self) -> anyhow::Result<()> {
        self.send_round().await?;
        self.fleet
            .wait_messages(self.rounds, Duration::from_secs(ROUND_TIMEOUT_SECONDS))
            .await
    }

    /// Keeps sending rounds until local mode has `nodes` active members applied by every
    /// proxy, or fails once `limit` has passed since `since`, naming `what` it waited for.
    /// Answers that settled state.
    pub async fn send_until_settled(
        &mut self,
        nodes: usize,
        since: Instant,
        limit: Duration,
        what: &str,
    ) -> anyhow::Result<Value> {
        loop {
            self.send_round().await?;
            let state = self.local.state().await?;
            if settled(&state, nodes) {
                return Ok(state);
            }
            anyhow::ensure!(
                since.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
        }
    }

    /// What the proxies' `/metrics` (admin ports) say about the upgrades they routed to
    /// `member`, summed over the proxies.
    pub async fn upgrade_figures(&self, member: &str) -> anyhow::Result<UpgradeFigures> {
        let state = self.local.state().await?;
        let admins = state["proxies"]
            .as_array()
            .context("no proxies in /api/state")?
            .iter()
            .filter_map(|p| p["adminUrl"].as_str());
        let mut texts = Vec::new();
        for admin in admins {
            let url = format!("{admin}/metrics");
            let r = crate::http::request(Method::GET, &url, None).await?;
            anyhow::ensure!(r.status == StatusCode::OK, "GET {url}: {}", r.status);
            texts.push(r.text());
        }
        Ok(UpgradeFigures::parse(&texts, member))
    }

    /// Stops the clients, then local mode (see [`Local::stop`]).
    pub async fn finish(self) -> anyhow::Result<()> {
        self.fleet.close();
        self.local.stop().await
    }
}

/// The upgrades the proxies routed to one member, from their
/// `wscluster_proxy_upstream_upgrade_seconds` and `wscluster_proxy_upstream_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpgradeFigures {
    /// Upgrades it switched.
    pub upgrades: u64,
    /// Their 99th percentile latency (connect to 101), ms: the upper bound of the histogram
    /// bucket it falls in (`None` without upgrades, infinite past the last bound).
    pub p99_ms: Option<f64>,
    /// Upgrades it refused (5xx, 429, 421) or did not answer.
    pub refused: u64,
}

impl UpgradeFigures {
    /// Sums the figures of `member` over the proxies' metric texts.
    pub fn parse(texts: &[String], member: &str) -> UpgradeFigures {
        let label = format!("member=\"{member}\"");
        // (bucket bound in seconds, cumulative count), summed over the proxies.
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        let mut refused = 0;
        let samples = texts
            .iter()
            .flat_map(|t| t.lines())
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .filter_map(|l| l.rsplit_once(' '));
        for (series, value) in samples {
            let count = value.parse::<f64>().unwrap_or(0.0) as u64;
            if series.starts_with("wscluster_proxy_upstream_refusals_total{") {
                refused += count;
            } else if series.starts_with("wscluster_proxy_upstream_upgrade_seconds_bucket{") {
                let Some(le) = label_value(series, "le") else {
                    continue;
                };
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                match buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, c)) => *c += count,
                    None => buckets.push((bound, count)),
                }
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let upgrades = buckets.last().map_or(0, |(_, c)| *c);
        let rank = (upgrades as f64 * 0.99).ceil() as u64;
        let p99_ms = (upgrades > 0)
            .then(|| {
                buckets
                    .iter()
                    .find(|(_, c)| *c >= rank)
                    .map(|(b, _)| b * 1000.0)
            })
            .flatten();
        UpgradeFigures {
            upgrades,
            p99_ms,
            refused,
        }
    }
}

/// The value of label `name` in a series such as `x_bucket{le="0.05",member="n-3"}`.
fn label_value<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let len = series[start..].find('"')?;
    Some(&series[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_figures_sum_the_proxies_and_take_the_p99_bucket() {
        let one = "# TYPE x histogram\n\
            wscluster_proxy_upstream_upgrade_seconds_bucket{member=\"n-3\",le=\"0.01\"} 90\n\
            wscluster_proxy_upstream_upgrade_seconds_bucket{member=\"n-3\",le=\"0.05\"} 99\n\
            wscluster_proxy_upstream_upgrade_seconds_bucket{member=\"n-3\",le=\"+Inf\"} 100\n\
            wscluster_proxy_upstream_upgrade_seconds_bucket{member=\"n-0\",le=\"+Inf\"} 7\n\
            wscluster_proxy_upstream_refusals_total{member=\"n-3\",kind=\"421\"} 2\n";
        let two = "wscluster_proxy_upstream_upgrade_seconds_bucket{le=\"0.01\",member=\"n-3\"} 100\n\
            wscluster_proxy_upstream_upgrade_seconds_bucket{le=\"0.05\",member=\"n-3\"} 100\n\
            wscluster_proxy_upstream_upgrade_seconds_bucket{le=\"+Inf\",member=\"n-3\"} 100\n";
        let f = UpgradeFigures::parse(&[one.into(), two.into()], "n-3");
        assert_eq!(f.upgrades, 200);
        assert_eq!(f.refused, 2);
        // 190 of 200 within 10 ms, 199 within 50 ms: the 198th is in the 50 ms bucket.
        assert_eq!(f.p99_ms, Some(50.0));
        let none = UpgradeFigures::parse(&[one.into()], "n-9");
        assert_eq!((none.upgrades, none.p99_ms, none.refused), (0, None, 0));
    }
}
