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

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::state::Shared;

/// How often idle buckets are dropped, so addresses seen once do not stay in memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Counts of live connections by address.
type Counts = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// The per-address limits of one proxy.
pub struct ClientLimits {
    /// `perIpConnections` and the counts, when set.
    connections: Option<(u32, Counts)>,
    /// The upgrade buckets, when `perIpUpgradesPerSecond` is set.
    upgrades: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl std::fmt::Debug for ClientLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimits")
            .field(
                "connections",
                &self.connections.as_ref().map(|(max, _)| max),
            )
            .field("upgrades", &self.upgrades.is_some())
            .finish()
    }
}

/// A connection's place under its address's limit; given back when dropped.
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
        let connections = limits
            .per_ip_connections
            .map(|max| (max, Counts::default()));
        let upgrades = limits
            .per_ip_upgrades_per_second
            .and_then(NonZeroU32::new)
            .map(|rate| {
                let burst = limits
                    .per_ip_burst
                    .and_then(NonZeroU32::new)
                    .unwrap_or(rate);
                RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            });
        ClientLimits {
            connections,
            upgrades,
        }
    }

    /// A new connection from `ip`: its slot (`None` without the limit), or `Err` when the
    /// address already holds `perIpConnections`.
    #[allow(clippy::result_unit_err)]
    pub fn admit_connection(&self, ip: IpAddr) -> Result<Option<IpSlot>, ()> {
        let Some((max, counts)) = &self.connections else {
            return Ok(None);
        };
        let mut held = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(ip).or_insert(0);
        if *n >= *max {
            return Err(());
        }
        *n += 1;
        Ok(Some(IpSlot {
            ip,
            counts: Arc::clone(counts),
        }))
    }

    /// Whether an upgrade from `ip` may go ahead now (spending a token when the rate is set).
    pub fn admit_upgrade(&self, ip: IpAddr) -> bool {
        self.upgrades
            .as_ref()
            .is_none_or(|limiter| limiter.check_key(&ip).is_ok())
    }

    /// Drops the buckets of addresses that are full again (as if never seen).
    fn sweep(&self) {
        if let Some(limiter) = &self.upgrades {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Sweeps idle buckets every minute until `stop`.
pub async fn run_sweeper(shared: Arc<Shared>, stop: CancellationToken) {
    if shared.client_limits.upgrades.is_none() {
        return;
    }
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
        assert!(
            l.admit_connection(B).expect("B").is_some(),
            "B has its own count"
        );
        drop(first);
        assert!(l.admit_connection(A).is_ok(), "a slot is free again");
        drop(second);
        let off = limits(None, None, None);
        for _ in 0..100 {
            assert!(matches!(off.admit_connection(A), Ok(None)));
        }
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
}
