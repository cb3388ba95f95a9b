//! Limits per client address (`limits.perIpConnections`, `limits.perIpUpgradesPerSecond`,
//! `limits.perIpBurst`), all off unless configured.
//!
//! * Concurrent connections: a count per address, taken at accept and given back when the
//!   connection ends ([`IpSlot`]); over the limit the connection is answered 429 once its
//!   request head is in, and closed.
//! * Upgrade rate: a token bucket per address (the `governor` crate's keyed GCRA limiter):
//!   `perIpUpgradesPerSecond` tokens a second, at most `perIpBurst` saved up; an upgrade
//!   without a token gets 429 before it reaches a member.
//!
//! The address is the TCP peer's: behind a load balancer that rewrites it, put the limit where
//! the client's address is still known (or keep the source address, as
//! `externalTrafficPolicy: Local` does).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::state::Shared;

/// How often idle buckets are dropped, so addresses seen once do not stay in memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Counts of live connections by address.
type Counts = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// The per-address limits of one proxy. The counts are kept whatever the config, so a limit
/// set or lowered by a config reload ([`ClientLimits::update`]) applies to the connections
/// already open too; the upgrade buckets start full again when the rate or burst changes.
pub struct ClientLimits {
    /// Live connections by address.
    counts: Counts,
    /// The numbers in use, swapped whole on a reload.
    rules: ArcSwap<Rules>,
}

/// What one config's `limits.perIp*` set.
struct Rules {
    /// `perIpConnections`.
    max_connections: Option<u32>,
    /// `perIpUpgradesPerSecond` and the burst it comes with.
    quota: Option<(NonZeroU32, NonZeroU32)>,
    /// The upgrade buckets, when `quota` is set.
    upgrades: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl Rules {
    /// The rules of `limits`, keeping `previous`'s buckets when the quota is unchanged.
    fn new(limits: &Limits, previous: Option<&Rules>) -> Rules {
        let quota = limits
            .per_ip_upgrades_per_second
            .and_then(NonZeroU32::new)
            .map(|rate| {
                let burst = limits
                    .per_ip_burst
                    .and_then(NonZeroU32::new)
                    .unwrap_or(rate);
                (rate, burst)
            });
        let upgrades = match previous {
            Some(p) if p.quota == quota => p.upgrades.clone(),
            _ => quota.map(|(rate, burst)| {
                Arc::new(RateLimiter::keyed(
                    Quota::per_second(rate).allow_burst(burst),
                ))
            }),
        };
        Rules {
            max_connections: limits.per_ip_connections,
            quota,
            upgrades,
        }
    }
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules = self.rules.load();
        f.debug_struct("ClientLimits")
            .field("connections", &rules.max_connections)
            .field("upgrades", &rules.quota)
            .finish()
    }
}

/// A connection's place under its address's count; given back when dropped.
#[derive(Debug)]
pub struct IpSlot {
    ip: IpAddr,
    counts: Counts,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl ClientLimits {
    /// The limits `limits` sets (none by default).
    pub fn new(limits: &Limits) -> ClientLimits {
        ClientLimits {
            counts: Counts::default(),
            rules: ArcSwap::from_pointee(Rules::new(limits, None)),
        }
    }

    /// Applies a reloaded config's numbers to new connections and upgrades; the counts of
    /// open connections are kept.
    pub fn update(&self, limits: &Limits) {
        let previous = self.rules.load();
        self.rules
            .store(Arc::new(Rules::new(limits, Some(&previous))));
    }

    /// A new connection from `ip`: its slot, or `Err` when the address already holds
    /// `perIpConnections`.
    #[allow(clippy::result_unit_err)]
    pub fn admit_connection(&self, ip: IpAddr) -> Result<IpSlot, ()> {
        let max = self.rules.load().max_connections;
        let mut held = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(ip).or_insert(0);
        if max.is_some_and(|max| *n >= max) {
            if *n == 0 {
                held.remove(&ip);
            }
            return Err(());
        }
        *n += 1;
        Ok(IpSlot {
            ip,
            counts: Arc::clone(&self.counts),
        })
    }

    /// Whether an upgrade from `ip` may go ahead now (spending a token when the rate is set).
    pub fn admit_upgrade(&self, ip: IpAddr) -> bool {
        self.rules
            .load()
            .upgrades
            .as_ref()
            .is_none_or(|limiter| limiter.check_key(&ip).is_ok())
    }

    /// Drops the buckets of addresses that are full again (as if never seen).
    fn sweep(&self) {
        if let Some(limiter) = &self.rules.load().upgrades {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Sweeps idle buckets every minute until `stop` (whether a rate is set is read each time: a
/// reload can set one).
pub async fn run_sweeper(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => shared.client_limits.sweep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: Option<u32>, rate: Option<u32>, burst: Option<u32>) -> ClientLimits {
        ClientLimits::new(&Limits {
            per_ip_connections: conns,
            per_ip_upgrades_per_second: rate,
            per_ip_burst: burst,
            ..Limits::default()
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn connections_are_counted_per_address_and_given_back() {
        let l = limits(Some(2), None, None);
        let first = l.admit_connection(A).expect("1");
        let second = l.admit_connection(A).expect("2");
        assert!(l.admit_connection(A).is_err(), "a third from A");
        assert!(l.admit_connection(B).is_ok(), "B has its own count");
        drop(first);
        assert!(l.admit_connection(A).is_ok(), "a slot is free again");
        drop(second);
        let off = limits(None, None, None);
        let held: Vec<IpSlot> = (0..100)
            .map(|_| off.admit_connection(A).expect("no limit"))
            .collect();
        assert_eq!(held.len(), 100);
    }

    #[test]
    fn upgrades_spend_a_bucket_per_address() {
        let l = limits(None, Some(1), Some(3));
        for i in 0..3 {
            assert!(l.admit_upgrade(A), "burst token {i}");
        }
        assert!(!l.admit_upgrade(A), "the bucket is empty");
        assert!(l.admit_upgrade(B), "B has its own bucket");
        let off = limits(None, None, None);
        assert!((0..1000).all(|_| off.admit_upgrade(A)));
    }

    #[test]
    fn a_reload_applies_to_open_connections_and_keeps_buckets_of_an_unchanged_rate() {
        let l = limits(None, Some(1), Some(2));
        let open: Vec<IpSlot> = (0..3)
            .map(|_| l.admit_connection(A).expect("no limit yet"))
            .collect();
        assert!(l.admit_upgrade(A) && l.admit_upgrade(A), "the burst");
        // A connection limit below what A holds: counted, so A gets no more.
        let lower = |conns, rate, burst| Limits {
            per_ip_connections: conns,
            per_ip_upgrades_per_second: rate,
            per_ip_burst: burst,
            ..Limits::default()
        };
        l.update(&lower(Some(2), Some(1), Some(2)));
        assert!(l.admit_connection(A).is_err(), "A holds 3 of 2");
        assert!(!l.admit_upgrade(A), "same quota: the spent bucket is kept");
        drop(open);
        assert!(
            l.admit_connection(A).is_ok(),
            "given back under the new limit"
        );
        // A new burst: new buckets.
        l.update(&lower(None, Some(1), Some(5)));
        assert!((0..5).all(|_| l.admit_upgrade(A)), "the new burst");
        assert!(!l.admit_upgrade(A));
        l.update(&lower(None, None, None));
        assert!((0..100).all(|_| l.admit_upgrade(A)), "no rate: no limit");
    }
}
