//! What every request handler and background task shares: the current routing table (swapped
//! whole on each ring, never mutated), the connection registry, the reset queue and metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;
use wscluster_ring::{KeyHash, Member, NoOwner, Ring};
use wscluster_runtime::credentials::{CredentialSet, WatchedCredentials};

use crate::config::ProxyConfig;
use crate::key::KeySources;
use crate::limits::ClientLimits;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::resets::{ResetQueue, ResetSink};

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
    /// The config file's values.
    pub config: ProxyConfig,
    /// Compiled key sources.
    pub keys: KeySources,
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
    /// The proxy secrets as they are now (hold the value while using its
    /// [`CredentialSet::current`]).
    pub fn proxy_secret(&self) -> Option<Arc<CredentialSet>> {
        self.proxy_secret.as_ref().map(WatchedCredentials::load)
    }
}
