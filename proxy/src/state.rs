//! What every request handler and background task shares: the current routing table (swapped
//! whole on each ring, never mutated), the connection registry, the reset queue and metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use wscluster_ring::{KeyHash, Member, NoOwner, Ring};
use wscluster_runtime::credentials::{CredentialSet, WatchedCredentials};

use crate::config::{Limits, ProxyConfig};
use crate::key::KeySources;
use crate::limits::ClientLimits;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::resets::{ResetQueue, ResetSink};
use crate::upstream::Outcome;

/// A member as the proxy routes to it.
#[derive(Debug)]
pub struct MemberRoute {
    /// The member id, shared by every connection to it.
    pub id: Arc<str>,
    /// `host:port`.
    pub address: String,
    /// `address` parsed once, when it is an IP address and port (as EndpointSlice addresses
    /// are); a host name is resolved per connection instead.
    pub socket: Option<SocketAddr>,
    /// Its connection gauge.
    pub connections: Gauge,
    /// Its upgrade latency histogram (looked up once per ring, not per upgrade).
    pub upgrade_seconds: Histogram,
}

/// A ring with what routing needs per member, built once per ring.
#[derive(Debug)]
pub struct Routing {
    /// The ring.
    pub ring: Arc<Ring>,
    /// By member index, in [`Ring::members`] order.
    pub members: Vec<MemberRoute>,
    /// Whether this came from a real ring (false for the empty placeholder before the first).
    pub known: bool,
}

impl Routing {
    /// The placeholder before any ring: routes nothing, not ready.
    pub fn unknown(cluster_id: &str) -> Self {
        Routing {
            ring: Arc::new(Ring::empty(cluster_id)),
            members: Vec::new(),
            known: false,
        }
    }

    /// Routing for a ring.
    pub fn new(ring: Arc<Ring>, metrics: &Metrics) -> Self {
        let members = ring
            .members()
            .iter()
            .map(|m: &Member| MemberRoute {
                id: Arc::from(m.id.as_str()),
                address: m.address.clone(),
                socket: m.address.parse().ok(),
                connections: metrics.member_gauge(&m.id),
                upgrade_seconds: metrics.member_upgrade_histogram(&m.id),
            })
            .collect();
        Routing {
            ring,
            members,
            known: true,
        }
    }

    /// The owner of a key hash.
    pub fn owner(&self, hash: KeyHash) -> Result<&MemberRoute, NoOwner> {
        let i = self.ring.owner_index(hash)?;
        self.members.get(i).ok_or(NoOwner)
    }
}

/// Everything shared across the proxy's tasks.
#[derive(Debug)]
pub struct Shared {
    /// The cluster this proxy serves; rings of other clusters are refused.
    pub cluster_id: String,
    /// The config file's values, swapped whole when the file changes ([`Shared::config`]).
    pub config: ArcSwap<ProxyConfig>,
    /// The limits as they were at start: what the fields that need a restart
    /// ([`ProxyConfig::restart_fingerprint`]: connection cap, header limits, connect timeout)
    /// are read from, so a reload never half-applies one of them.
    pub start_limits: Limits,
    /// Compiled key sources, rebuilt with each new config ([`Shared::keys`]).
    pub keys: ArcSwap<KeySources>,
    /// Current routing, swapped whole on each new ring.
    pub routing: ArcSwap<Routing>,
    /// Live spliced connections.
    pub registry: Arc<Registry>,
    /// Resets waiting for the pacer.
    pub resets: ResetQueue,
    /// Where reset events for old owners go (RabbitMQ), if configured.
    pub reset_sink: Option<ResetSink>,
    /// Metrics (shared with the bus publisher).
    pub metrics: Arc<Metrics>,
    /// Upstream (`host:port`) for plain HTTP requests without a key, if configured.
    pub fallback_upstream: Option<String>,
    /// The local address connections to members leave from, if set.
    pub upstream_source: Option<std::net::IpAddr>,
    /// The cluster's proxy secret(s) (`--proxy-secret-file`), followed as the file changes;
    /// the first is sent to members. `None` in dev mode: members cannot verify the proxy.
    pub proxy_secret: Option<WatchedCredentials>,
    /// The version of the ring in use, announced each time one is applied: what a request
    /// refused with 421 under a newer ring waits for before its retry.
    pub ring_applied: tokio::sync::watch::Sender<u64>,
    /// Per-client-address limits (`limits.perIp*`).
    pub client_limits: ClientLimits,
}

impl Shared {
    /// The config in use now: hold it for one decision (a request, a reset) so every value
    /// read comes from the same file.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.config.load_full()
    }

    /// The key sources in use now.
    pub fn keys(&self) -> Arc<KeySources> {
        self.keys.load_full()
    }

    /// Records how an upgrade sent to `member` ended after `latency`: its histogram (when
    /// switched), its refusal counter (when refused for want of capacity, see
    /// [`Outcome::refusal`]), and the pacer's window while resets are being paced.
    pub fn upgrade_ended(&self, member: &MemberRoute, latency: Duration, outcome: Outcome) {
        let refusal = outcome.refusal();
        match refusal {
            Some(kind) => self.metrics.upstream_refusal(&member.id, kind),
            None if outcome == Outcome::Switched => {
                member.upgrade_seconds.observe(latency.as_secs_f64());
            }
            None => return,
        }
        self.resets
            .note_upgrade(&member.id, latency, refusal.is_some());
    }

    /// The proxy secrets as they are now (hold the value while using its
    /// [`CredentialSet::current`]).
    pub fn proxy_secret(&self) -> Option<Arc<CredentialSet>> {
        self.proxy_secret.as_ref().map(WatchedCredentials::load)
    }
}
