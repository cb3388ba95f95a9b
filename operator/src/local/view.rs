//! The state local mode renders for `GET /api/state` and the demo page: ring, nodes, proxies,
//! drain, arcs of the slot circle, ring propagation times, and the WsCluster status the decision
//! core computed (the same conditions `kubectl describe wsc` shows in a cluster).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring::{KeyHash, MemberState, Ring, RingSnapshot};
use wscluster_ring_stream::SubscriberInfo;

use crate::crd::WsClusterStatus;

use super::children::{Children, Proc, node_id};
use super::process::ChildKind;
use super::settings::Settings;

/// The rendered state, as `GET /api/state` answers it.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    /// Ring cluster id.
    pub cluster_id: String,
    /// Current ring version.
    pub ring_version: u64,
    /// Desired node count.
    pub replicas: u32,
    /// Largest replica count accepted.
    pub max_replicas: u32,
    /// `memory` or `redis`.
    pub mailbox: &'static str,
    /// `memory` or `rabbitmq`.
    pub bus: &'static str,
    /// The control API's base URL.
    pub control_url: String,
    /// The file holding the server API's keys, one per line.
    pub api_keys_file: String,
    /// Ring authority state.
    pub authority: AuthorityView,
    /// Nodes by ordinal.
    pub nodes: Vec<NodeView>,
    /// Proxies by index.
    pub proxies: Vec<ProxyView>,
    /// The scale-down in progress.
    pub drain: Option<DrainView>,
    /// The current ring.
    pub ring: Option<RingSnapshot>,
    /// The status the decision core computed in its last pass.
    pub status: Option<WsClusterStatus>,
    /// Who owns which part of the slot circle, in degrees.
    pub arcs: Vec<ArcView>,
    /// For recent ring versions: how long until every running proxy applied it.
    pub propagation: Vec<PropagationView>,
}

/// How fast one ring version reached the proxies.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PropagationView {
    /// The version.
    pub version: u64,
    /// Milliseconds from publishing it to the last running proxy acknowledging it (or a newer
    /// one); `None` while some proxy has not.
    pub all_proxies_applied_ms: Option<f64>,
}

/// The ring authority.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthorityView {
    /// Whether the ring stream is served.
    pub running: bool,
    /// Its base URL.
    pub url: String,
}

/// One node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Ordinal.
    pub ordinal: u32,
    /// Member id.
    pub id: String,
    /// `host:port`, once known.
    pub address: Option<String>,
    /// `starting`, `running`, `stopping` or `exited`.
    pub process: &'static str,
    /// `/readyz` said 200 at the last probe.
    pub ready: bool,
    /// `active`, `draining`, or `none` (not in the ring).
    pub ring_state: &'static str,
    /// Connections from `/count`.
    pub connections: Option<u64>,
    /// How the last process ended.
    pub last_exit: Option<String>,
}

/// One proxy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyView {
    /// Index.
    pub index: u32,
    /// Subscriber id.
    pub id: String,
    /// `http://host:port` for HTTP clients.
    pub url: String,
    /// `ws://host:port` for WebSocket clients.
    pub ws_url: String,
    /// Admin base URL.
    pub admin_url: String,
    /// Base URL of its server API port (`/api/v1/...`, an API key from `apiKeysFile`).
    pub api_url: Option<String>,
    /// `starting`, `running` or `exited`.
    pub process: &'static str,
    /// `/readyz` said 200 at the last probe.
    pub ready: bool,
    /// The ring version it acknowledged.
    pub applied_version: Option<u64>,
    /// Whether its ring stream is open.
    pub stream_connected: bool,
    /// How the last process ended.
    pub last_exit: Option<String>,
}

/// A drain.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainView {
    /// Leaving ordinals.
    pub ordinals: Vec<u32>,
    /// Ring version proxies must acknowledge.
    pub ring_version: u64,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
}

/// An arc of the slot circle owned by one member.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArcView {
    /// Start, degrees clockwise from the top.
    pub from: f64,
    /// End, degrees.
    pub to: f64,
    /// Owner's member id.
    pub member: String,
}

/// Samples of the slot circle for [`arcs`]: one per half degree.
pub const ARC_SAMPLES: u32 = 720;

/// The owners of `samples` evenly spaced slots, merged into runs: what the demo page draws.
pub fn arcs(ring: &Ring, samples: u32) -> Vec<ArcView> {
    let slots = u128::from(ring.slot_count());
    let mut out: Vec<ArcView> = Vec::new();
    for i in 0..samples {
        let slot = u128::from(i) * slots / u128::from(samples);
        // The smallest hash that falls in `slot` (multiply-shift reduction, see KeyHash::slot).
        let hash = ((slot << 64).div_ceil(slots)) as u64;
        let Ok(owner) = ring.owner_of_hash(KeyHash(hash)) else {
            continue;
        };
        let from = f64::from(i) * 360.0 / f64::from(samples);
        let to = f64::from(i + 1) * 360.0 / f64::from(samples);
        match out.last_mut() {
            Some(last) if last.member == owner.id && (last.to - from).abs() < 1e-9 => {
                last.to = to;
            }
            _ => out.push(ArcView {
                from,
                to,
                member: owner.id.clone(),
            }),
        }
    }
    out
}

/// Ring versions whose propagation is remembered.
const PROPAGATION_KEPT: usize = 32;

/// For recent ring versions: when each was published and how long until every running proxy
/// applied it.
#[derive(Debug, Default)]
pub struct Propagation {
    /// `(version, published at, time until every running proxy applied it)`, oldest first.
    versions: VecDeque<(u64, Instant, Option<Duration>)>,
}

impl Propagation {
    /// A version was published now.
    pub fn published(&mut self, version: u64) {
        self.versions.push_back((version, Instant::now(), None));
        if self.versions.len() > PROPAGATION_KEPT {
            self.versions.pop_front();
        }
    }

    /// Whether the newest version is still on its way to the proxies (for at most 10 s).
    pub fn awaiting(&self) -> bool {
        self.versions
            .back()
            .is_some_and(|p| p.2.is_none() && p.1.elapsed() < Duration::from_secs(10))
    }

    /// Records when every running proxy applied each pending version.
    pub fn check(&mut self, children: &Children, subscribers: &[SubscriberInfo]) {
        if !self.versions.iter().any(|p| p.2.is_none()) {
            return;
        }
        let slowest = children
            .proxies
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(&i, _)| applied(subscribers, &ChildKind::Proxy(i).id()).unwrap_or(0))
            .min();
        let Some(slowest) = slowest else {
            return;
        };
        for p in self.versions.iter_mut().filter(|p| p.2.is_none()) {
            if slowest >= p.0 {
                p.2 = Some(p.1.elapsed());
            }
        }
    }

    fn view(&self) -> Vec<PropagationView> {
        self.versions
            .iter()
            .map(|&(version, _, applied)| PropagationView {
                version,
                all_proxies_applied_ms: applied.map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect()
    }
}

/// The proxy subscriber `id`, if connected once.
fn subscriber<'a>(subscribers: &'a [SubscriberInfo], id: &str) -> Option<&'a SubscriberInfo> {
    subscribers
        .iter()
        .find(|s| s.id == id && s.kind == SubscriberKind::Proxy)
}

fn applied(subscribers: &[SubscriberInfo], id: &str) -> Option<u64> {
    subscriber(subscribers, id).and_then(|s| s.applied_version)
}

/// Everything one render reads.
pub struct RenderInput<'a> {
    /// The resolved flags.
    pub settings: &'a Settings,
    /// The processes.
    pub children: &'a Children,
    /// Desired node count.
    pub replicas: u32,
    /// The "StatefulSet's" replicas (a drain's leaving ordinals are below it).
    pub node_replicas: Option<i32>,
    /// The last status the decision core recorded.
    pub status: Option<&'a WsClusterStatus>,
    /// The ring the hub serves.
    pub ring: Option<Arc<RingSnapshot>>,
    /// Its arcs.
    pub arcs: &'a [ArcView],
    /// The hub's subscribers.
    pub subscribers: &'a [SubscriberInfo],
    /// Whether the ring stream is served.
    pub authority_running: bool,
    /// Propagation times.
    pub propagation: &'a Propagation,
}

/// The state as `GET /api/state` answers it.
pub fn render(input: &RenderInput<'_>) -> StateView {
    let s = input.settings;
    let ring = input.ring.as_deref();
    StateView {
        cluster_id: s.cluster_id.clone(),
        ring_version: ring.map_or(0, |r| r.version),
        replicas: input.replicas,
        max_replicas: s.max_replicas,
        mailbox: if s.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        },
        bus: if s.amqp_url.is_some() {
            "rabbitmq"
        } else {
            "memory"
        },
        control_url: s.control_url.clone(),
        api_keys_file: s.api_keys_file.display().to_string(),
        authority: AuthorityView {
            running: input.authority_running,
            url: s.ring_url(),
        },
        nodes: node_views(input.children, ring),
        proxies: proxy_views(s, input.children, input.subscribers),
        drain: drain_view(input.status, input.node_replicas),
        ring: ring.cloned(),
        status: input.status.cloned(),
        arcs: input.arcs.to_vec(),
        propagation: input.propagation.view(),
    }
}

fn node_views(children: &Children, ring: Option<&RingSnapshot>) -> Vec<NodeView> {
    children
        .nodes
        .iter()
        .map(|(&ordinal, p)| {
            let id = node_id(ordinal);
            let ring_state = match ring.and_then(|r| r.member(&id)).map(|m| m.state) {
                Some(MemberState::Active) => "active",
                Some(MemberState::Draining) => "draining",
                None => "none",
            };
            NodeView {
                ordinal,
                id,
                address: p.address.clone(),
                process: p.process_state(),
                ready: p.ready,
                ring_state,
                connections: p.connections,
                last_exit: p.last_exit.clone(),
            }
        })
        .collect()
}

fn proxy_views(
    s: &Settings,
    children: &Children,
    subscribers: &[SubscriberInfo],
) -> Vec<ProxyView> {
    (0..s.proxies)
        .filter_map(|index| {
            let &(listen, admin) = s.proxy_addresses.get(usize::try_from(index).ok()?)?;
            let id = ChildKind::Proxy(index).id();
            let sub = subscriber(subscribers, &id);
            let p: Option<&Proc> = children.proxies.get(&index);
            Some(ProxyView {
                index,
                url: format!("http://{listen}"),
                ws_url: format!("ws://{listen}"),
                admin_url: format!("http://{admin}"),
                api_url: s
                    .proxy_api_addresses
                    .get(usize::try_from(index).ok()?)
                    .map(|api| format!("http://{api}")),
                process: p.map_or("exited", Proc::process_state),
                ready: p.is_some_and(|p| p.ready),
                applied_version: sub.and_then(|x| x.applied_version),
                stream_connected: sub.is_some_and(|x| x.connected),
                last_exit: p.and_then(|p| p.last_exit.clone()),
                id,
            })
        })
        .collect()
}

/// The drain recorded in status: its leaving ordinals are the target up to the node set's size.
fn drain_view(status: Option<&WsClusterStatus>, node_replicas: Option<i32>) -> Option<DrainView> {
    let drain = status?.drain.as_ref()?;
    let upto = node_replicas.unwrap_or(drain.target_replicas);
    let elapsed = Timestamp::now().duration_since(drain.since.0);
    Some(DrainView {
        ordinals: (drain.target_replicas..upto)
            .filter_map(|o| u32::try_from(o).ok())
            .collect(),
        ring_version: u64::try_from(drain.ring_version).unwrap_or(0),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wscluster_ring::Member;

    #[test]
    fn arcs_cover_the_circle_in_shares_close_to_the_members_slot_shares() {
        let snapshot = RingSnapshot::new(
            "local/demo",
            2,
            vec![
                Member::active("local-node-0", "h:0"),
                Member::active("local-node-1", "h:1"),
                Member::active("local-node-2", "h:2"),
            ],
        );
        let ring = Ring::build(snapshot).expect("valid ring");
        let arcs = arcs(&ring, ARC_SAMPLES);
        let total: f64 = arcs.iter().map(|a| a.to - a.from).sum();
        assert!((total - 360.0).abs() < 1e-6, "covers the circle: {total}");
        for pair in arcs.windows(2) {
            assert!((pair[0].to - pair[1].from).abs() < 1e-9, "contiguous");
            assert_ne!(pair[0].member, pair[1].member, "runs are merged");
        }
        for m in ring.members() {
            let share: f64 = arcs
                .iter()
                .filter(|a| a.member == m.id)
                .map(|a| a.to - a.from)
                .sum::<f64>()
                / 360.0;
            assert!((share - 1.0 / 3.0).abs() < 0.06, "{}: {share}", m.id);
        }
    }

    #[test]
    fn each_sample_is_drawn_in_its_slots_owner() {
        let snapshot = RingSnapshot::new(
            "local/demo",
            2,
            vec![
                Member::active("local-node-0", "h:0"),
                Member::active("local-node-1", "h:1"),
            ],
        );
        let ring = Ring::build(snapshot).expect("valid ring");
        let arcs = arcs(&ring, 16);
        // Sample i sits at slot i * S / 16; a key hash at the start of that slot has that owner.
        let slots = u64::from(ring.slot_count());
        for i in 0..16u64 {
            let slot = i * slots / 16;
            let hash = KeyHash(slot << (64 - slots.trailing_zeros()));
            let owner = ring.owner_of_hash(hash).expect("owner").id.clone();
            let deg = (i as f64 + 0.5) * 360.0 / 16.0;
            let arc = arcs
                .iter()
                .find(|a| a.from <= deg && deg < a.to)
                .expect("an arc covers every sample");
            assert_eq!(arc.member, owner, "sample {i}");
        }
    }

    #[test]
    fn an_empty_ring_has_no_arcs() {
        let ring = Ring::build(RingSnapshot::new("local/demo", 1, vec![])).expect("valid");
        assert!(arcs(&ring, ARC_SAMPLES).is_empty());
    }
}
