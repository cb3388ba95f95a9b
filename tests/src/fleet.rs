//! Many [`Client`]s spread over the proxies, and the messages sent to them through `/send`.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use hyper::{Method, StatusCode};
use tokio_util::sync::CancellationToken;
use wscluster_ring::Ring;
use wscluster_ring::contract::api::Route;

use crate::client::{Client, Record};
use crate::http;
use crate::wait::wait_for;

/// How long [`send_with_retry`] keeps trying one message.
pub const SEND_RETRY_SECONDS: u64 = 20;
/// Pause between two attempts of one send.
const SEND_RETRY_PAUSE_MS: u64 = 100;
/// Batches a second [`Fleet::connect_paced`] opens its clients in.
const PACING_TICKS_PER_SECOND: usize = 20;
/// Users named in a "still waiting" error.
const EXAMPLES_IN_ERRORS: usize = 5;

/// Many clients, spread over the proxies, each in its own task; dropping it stops them all.
pub struct Fleet {
    /// The clients, in user order.
    pub clients: Vec<Client>,
    /// Cancelled to stop every client's task.
    stop: CancellationToken,
}

impl Fleet {
    /// Connects `count` users named `<prefix>-<i>`, client i through proxy `i % proxies`
    /// (`http://` base URLs), falling over to the next proxy after an unexpected drop.
    pub fn connect(prefix: &str, count: usize, proxies: &[String]) -> Fleet {
        let stop = CancellationToken::new();
        let ws = ws_urls(proxies);
        let clients = (0..count)
            .map(|i| spawn_client(Client::new(format!("{prefix}-{i}")), &ws, i, &stop))
            .collect();
        Fleet { clients, stop }
    }

    /// Connects users `<prefix>-<i>` for `i` in `users` (client `i` through proxy
    /// `i % proxies`), opening at most `per_second` a second: tens of thousands of clients
    /// started at once overflow the proxies' accept backlogs and spend their first seconds
    /// in SYN retries, which measures the kernel rather than the system.
    pub async fn connect_paced(
        prefix: &str,
        users: Range<usize>,
        proxies: &[String],
        per_second: NonZeroU32,
    ) -> Fleet {
        Fleet::connect_paced_with(prefix, users, proxies, per_second, |user, _| {
            Client::new(user)
        })
        .await
    }

    /// [`Fleet::connect_paced`] with every client connecting from its own loopback address
    /// ([`client_source`]), for fleets of tens of thousands: sharing 127.0.0.1, each proxy's
    /// clients would draw on one pool of source ports that `connect()` searches linearly. Not
    /// the default, since a bound source address takes its port at bind() time, from the half
    /// of the range where free-port searches look.
    pub async fn connect_paced_from_own_addresses(
        prefix: &str,
        users: Range<usize>,
        proxies: &[String],
        per_second: NonZeroU32,
    ) -> Fleet {
        let client = |user, i| Client::with_source(user, client_source(i));
        Fleet::connect_paced_with(prefix, users, proxies, per_second, client).await
    }

    /// The paced opening both share: `client` makes user `i`'s client.
    async fn connect_paced_with(
        prefix: &str,
        users: Range<usize>,
        proxies: &[String],
        per_second: NonZeroU32,
        client: impl Fn(String, usize) -> Client,
    ) -> Fleet {
        let stop = CancellationToken::new();
        let ws = ws_urls(proxies);
        let per_tick = (per_second.get() as usize / PACING_TICKS_PER_SECOND).max(1);
        let mut tick =
            tokio::time::interval(Duration::from_secs(1) / PACING_TICKS_PER_SECOND as u32);
        let mut clients = Vec::with_capacity(users.len());
        for i in users {
            if clients.len() % per_tick == 0 {
                tick.tick().await;
            }
            clients.push(spawn_client(
                client(format!("{prefix}-{i}"), i),
                &ws,
                i,
                &stop,
            ));
        }
        Fleet { clients, stop }
    }

    /// Copies of every record, by user.
    pub fn records(&self) -> BTreeMap<String, Record> {
        self.clients
            .iter()
            .map(|c| (c.user.clone(), c.snapshot()))
            .collect()
    }

    /// The users for whom `select` holds (for example: whose key a ring change moved).
    pub fn users(&self, select: impl Fn(&str) -> bool) -> BTreeSet<String> {
        self.clients
            .iter()
            .filter(|c| select(&c.user))
            .map(|c| c.user.clone())
            .collect()
    }

    /// Waits until every client is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until_none("every client connected", timeout, |_, r| !r.connected)
            .await
            .map(drop)
    }

    /// Waits until every client accepted at least `count` messages.
    pub async fn wait_messages(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("{count} messages at every client");
        self.wait_until_none(&what, timeout, |_, r| r.messages.len() < count)
            .await
            .map(drop)
    }

    /// Waits until every client is connected to the owner `ring` names for it; answers how
    /// long that took.
    pub async fn wait_on_owners(&self, ring: &Ring, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_until_none("every client on its owner", timeout, |user, r| {
            let owner = ring.owner(user).map(|m| m.id.as_str()).ok();
            !r.connected || r.node.as_deref() != owner
        })
        .await
    }

    /// Waits until `lagging` holds for no client; answers how long that took.
    async fn wait_until_none(
        &self,
        what: &str,
        timeout: Duration,
        lagging: impl Fn(&str, &Record) -> bool,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let lagging = &lagging;
        wait_for(what, timeout, || async move {
            let behind: Vec<&str> = self
                .clients
                .iter()
                .filter(|c| lagging(&c.user, &c.snapshot()))
                .map(|c| c.user.as_str())
                .collect();
            if behind.is_empty() {
                return Ok(Some(started.elapsed()));
            }
            let examples = &behind[..behind.len().min(EXAMPLES_IN_ERRORS)];
            bail!("{} clients not there yet, e.g. {examples:?}", behind.len())
        })
        .await
    }

    /// Sends message `<user>:<seq>` to every client through the proxies' server API (round
    /// robin, each send retried by [`send_with_retry`]), `concurrency` at a time.
    pub async fn send_round(
        &self,
        api: &ServerApi,
        seq: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let results: Vec<anyhow::Result<()>> =
            futures_util::stream::iter(self.clients.iter().enumerate())
                .map(|(i, c)| async move {
                    send_with_retry(api, i, &c.user, &format!("{}:{seq}", c.user)).await
                })
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        results.into_iter().collect()
    }

    /// Stops every client.
    pub fn close(&self) {
        self.stop.cancel();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `ws://` base URLs of the proxies' `http://` ones.
fn ws_urls(proxies: &[String]) -> Vec<String> {
    proxies
        .iter()
        .map(|p| p.replacen("http://", "ws://", 1))
        .collect()
}

/// A client for `user` run in its own task, first through proxy `i % proxies`.
fn spawn_client(client: Client, proxies: &[String], i: usize, stop: &CancellationToken) -> Client {
    tokio::spawn(client.clone().run(proxies.to_vec(), i, stop.clone()));
    client
}

/// Client `i`'s own loopback address: 127.2.0.1, 127.2.0.2, … (no .0 or .255 in a byte), one
/// per client for the first 12 million.
pub fn client_source(i: usize) -> std::net::Ipv4Addr {
    const PER_BYTE: usize = 250;
    let byte = |n: usize| u8::try_from(n % PER_BYTE).unwrap_or(0) + 1;
    let high = u8::try_from((i / PER_BYTE / PER_BYTE) % 200).unwrap_or(0) + 2;
    std::net::Ipv4Addr::new(127, high, byte(i / PER_BYTE), byte(i))
}

/// The users whose record holds at least one reset frame.
pub fn reset_users(records: &BTreeMap<String, Record>) -> BTreeSet<String> {
    records
        .iter()
        .filter(|(_, r)| !r.resets.is_empty())
        .map(|(u, _)| u.clone())
        .collect()
}

/// The server API of a local-mode run: each proxy's API base URL and an API key.
#[derive(Debug, Clone)]
pub struct ServerApi {
    /// `http://host:port` of each proxy's server API port.
    pub urls: Vec<String>,
    /// A line of the run's API keys file.
    pub key: String,
}

/// `POST /api/v1/users/{user}/messages` through proxy `i % n`'s server API, retried on the
/// next proxy while it fails (a proxy being killed, a node refusing under a newer ring), for up
/// to [`SEND_RETRY_SECONDS`]. A 200 (queued to a live session) and a 202 (stored, replayed on
/// the next connection) both count: the message is in the user's mailbox.
pub async fn send_with_retry(
    api: &ServerApi,
    i: usize,
    user: &str,
    message: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(!api.urls.is_empty(), "no proxy to send {message:?} through");
    let deadline = Instant::now() + Duration::from_secs(SEND_RETRY_SECONDS);
    let mut attempt = 0;
    loop {
        let base = &api.urls[(i + attempt) % api.urls.len()];
        attempt += 1;
        let error = match send_once(base, &api.key, user, message).await {
            Ok(r) if r.status == StatusCode::OK || r.status == StatusCode::ACCEPTED => {
                return Ok(());
            }
            Ok(r) => format!("{} {}", r.status, r.text()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("sending to {user} failed for {SEND_RETRY_SECONDS} s: {error}");
        }
        tokio::time::sleep(Duration::from_millis(SEND_RETRY_PAUSE_MS)).await;
    }
}

/// One send of `message` to `user` through a proxy's server API (`api`, an `http://` base URL)
/// with API key `key`, no retry: the answer as it came (200 delivered, 202 stored only, 5xx not
/// stored), or the transport error. Every send of the harness goes through here.
pub async fn send_once(
    api: &str,
    key: &str,
    user: &str,
    message: &str,
) -> anyhow::Result<http::Response> {
    let url = format!("{api}{}", Route::UserMessages(user.to_owned()).path());
    post_message(&url, key, message).await
}

/// One broadcast of `message` through a proxy's server API, no retry (202 when the bus took
/// it).
pub async fn broadcast_once(api: &str, key: &str, message: &str) -> anyhow::Result<http::Response> {
    let url = format!("{api}{}", wscluster_ring::contract::api::BROADCAST_PATH);
    post_message(&url, key, message).await
}

/// `POST {"message": …}` with `Authorization: Bearer <key>`.
async fn post_message(url: &str, key: &str, message: &str) -> anyhow::Result<http::Response> {
    let body = serde_json::json!({ "message": message });
    let bearer = format!("Bearer {key}");
    let headers = [("authorization", bearer.as_str())];
    http::request_with(Method::POST, url, Some(&body), &headers).await
}

#[cfg(test)]
mod tests {
    use super::client_source;

    #[test]
    fn every_client_of_a_large_fleet_has_its_own_loopback_address() {
        let sources: std::collections::BTreeSet<_> = (0..200_000).map(client_source).collect();
        assert_eq!(sources.len(), 200_000);
        assert!(sources.iter().all(|s| s.is_loopback()));
        assert!(sources.iter().all(|s| !s.octets().contains(&0)));
        assert!(sources.iter().all(|s| !s.octets().contains(&255)));
    }
}
