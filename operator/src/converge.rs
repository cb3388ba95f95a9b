//! One pass of the decision core: the scaling and membership rules, for every platform.
//!
//! Kubernetes ([`crate::controller`]) and local mode ([`crate::local`]) are two shells around
//! [`converge`]. Each implements [`Platform`] — observe the node set and its ready endpoints, set
//! its replica count (which starts or stops members), bring the proxies up, ask a member how many
//! sessions it holds, record the status — and reads proxy acknowledgements from, and publishes
//! rings to, the same [`RingAuthority`] (the ring stream's hub). The decisions themselves are the
//! pure functions [`plan_scale`], [`members_of`], [`plan_ring`] and [`compute_status`]; no shell
//! keeps drain or membership state of its own, so the end-to-end tests of local mode exercise
//! exactly what the controller does in a cluster.
//!
//! One pass, in this order (the Kubernetes API mock tests assert the requests it makes):
//!
//! 1. read the node set's replica count and the drain recorded in the previous status, count the
//!    proxies that applied the drain's ring, and decide the scaling step; while a drain waits for
//!    its timeout, ask the leaving members whether they are empty and decide again;
//! 2. set the node set's replicas to what the step chose, and bring the proxies up;
//! 3. read the ready endpoints, turn them into members (ordinals at or above the target drain)
//!    and decide the ring;
//! 4. record the status, *then* publish the ring (see [`crate::membership`] for why).

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring::{RingError, RingParams, RingSnapshot};
use wscluster_ring_stream::{RingHub, SubscriberInfo};

use crate::crd::{MemberStateStatus, WsClusterSpec, WsClusterStatus};
use crate::error::Result;
use crate::membership::{Endpoint, RingPlan, members_of, plan_ring, snapshot_from_status};
use crate::probe::{ConnectionProbe, all_empty};
use crate::scaling::{Drain, ScaleInput, ScalePlan, Step, plan_scale};
use crate::status::{ProxySync, StatusInput, compute_status};

/// Where rings go and acknowledgements come from: the ring stream's hub. A trait so the
/// controller's tests can play the subscribers' acknowledgements without real proxies.
pub trait RingAuthority: Send + Sync {
    /// Sets the bearer token subscribers of a cluster must present.
    fn set_token(&self, cluster_id: &str, token: String);
    /// The current snapshot of a cluster.
    fn current(&self, cluster_id: &str) -> Option<Arc<RingSnapshot>>;
    /// Publishes a strictly newer snapshot.
    fn publish(&self, snapshot: RingSnapshot) -> Result<(), RingError>;
    /// The subscribers of a cluster, with the versions they acknowledged.
    fn subscribers(&self, cluster_id: &str) -> Vec<SubscriberInfo>;
    /// Forgets a deleted cluster and ends its streams.
    fn remove_cluster(&self, cluster_id: &str);
}

impl RingAuthority for RingHub {
    fn set_token(&self, cluster_id: &str, token: String) {
        RingHub::set_token(self, cluster_id, token);
    }
    fn current(&self, cluster_id: &str) -> Option<Arc<RingSnapshot>> {
        RingHub::current(self, cluster_id)
    }
    fn publish(&self, snapshot: RingSnapshot) -> Result<(), RingError> {
        RingHub::publish(self, snapshot)
    }
    fn subscribers(&self, cluster_id: &str) -> Vec<SubscriberInfo> {
        RingHub::subscribers(self, cluster_id)
    }
    fn remove_cluster(&self, cluster_id: &str) {
        RingHub::remove_cluster(self, cluster_id);
    }
}

/// The node set's pods as the platform counts them after setting its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeCounts {
    /// Pods (processes) that exist.
    pub replicas: i32,
    /// Of those, the ready ones.
    pub ready_replicas: i32,
}

/// What a platform does for the decision core. Kubernetes: a StatefulSet, its EndpointSlices, a
/// proxy Deployment and the WsCluster's status. Local mode: child processes and an in-memory
/// status.
pub trait Platform: Send {
    /// The node set's replica count (a StatefulSet's `spec.replicas`), or `None` before it
    /// exists.
    fn node_replicas(&mut self) -> impl Future<Output = Result<Option<i32>>> + Send;
    /// Sets the node set's replica count: members with an ordinal below it run (missing ones
    /// are started), those at or above it are stopped.
    fn set_node_replicas(
        &mut self,
        replicas: i32,
    ) -> impl Future<Output = Result<NodeCounts>> + Send;
    /// Brings the proxies to their desired state; answers how many are available.
    fn sync_proxies(&mut self) -> impl Future<Output = Result<i32>> + Send;
    /// The node set's ready, non-terminating endpoints.
    fn endpoints(&mut self) -> impl Future<Output = Result<Vec<Endpoint>>> + Send;
    /// Asks members how many sessions they hold (lets a drain end before its timeout).
    fn probe(&self) -> &dyn ConnectionProbe;
    /// Records the status of this pass, before its ring is published.
    fn record_status(
        &mut self,
        status: &WsClusterStatus,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// What one pass is asked to reach.
#[derive(Debug, Clone)]
pub struct Intent<'a> {
    /// Ring cluster id, `namespace/name`.
    pub cluster_id: &'a str,
    /// The desired state.
    pub spec: &'a WsClusterSpec,
    /// `metadata.generation` of the spec, reported as `observedGeneration`.
    pub generation: Option<i64>,
    /// The status recorded by the previous pass: the drain in progress and the last ring.
    pub previous: Option<&'a WsClusterStatus>,
    /// The node pod selector reported in status (for the scale subresource).
    pub selector: String,
    /// Now (an argument, so tests fix time).
    pub now: Timestamp,
}

/// What one pass decided and did.
#[derive(Debug, Clone)]
pub struct Pass {
    /// The node set's replica count before the pass (`None`: it did not exist).
    pub previous_replicas: Option<i32>,
    /// The scaling decision.
    pub scale: ScalePlan,
    /// The ring decision; `ring.publish` says whether it was published.
    pub ring: RingPlan,
    /// The status recorded.
    pub status: WsClusterStatus,
    /// Proxies in sync with the current ring.
    pub sync: ProxySync,
    /// The ring stream's subscribers as the pass saw them.
    pub subscribers: Vec<SubscriberInfo>,
}

/// Runs one pass of the decision core on `platform`. See the module docs for the steps.
pub async fn converge<P: Platform>(
    platform: &mut P,
    hub: &dyn RingAuthority,
    intent: &Intent<'_>,
) -> Result<Pass> {
    // 1. Scaling.
    let previous_replicas = platform.node_replicas().await?;
    let subscribers = hub.subscribers(intent.cluster_id);
    let scale = decide_scale(platform.probe(), intent, previous_replicas, &subscribers).await;

    // 2. The node set and the proxies follow.
    let nodes = platform
        .set_node_replicas(scale.statefulset_replicas)
        .await?;
    let proxies_available = platform.sync_proxies().await?;

    // 3. Members and ring.
    let endpoints = platform.endpoints().await?;
    let (ring, scale) = decide_ring(hub, intent, &endpoints, scale);

    // 4. Status first, then publish.
    let sync = ProxySync::count(proxy_acks(&subscribers), ring.snapshot.version);
    let status = compute_status(&StatusInput {
        generation: intent.generation,
        desired: intent.spec.replicas,
        replicas: nodes.replicas,
        ready_replicas: nodes.ready_replicas,
        selector: intent.selector.clone(),
        ring: &ring.snapshot,
        proxies: sync,
        proxies_desired: intent.spec.proxy.replicas,
        proxies_available,
        scale: &scale,
        previous: intent.previous,
        now: intent.now,
    });
    platform.record_status(&status).await?;
    if ring.publish {
        hub.publish(ring.snapshot.clone())?;
    }
    Ok(Pass {
        previous_replicas,
        scale,
        ring,
        status,
        sync,
        subscribers,
    })
}

/// Step 1: the scaling decision, asking the leaving members whether they are empty only while
/// a drain waits for its timeout.
async fn decide_scale(
    probe: &dyn ConnectionProbe,
    intent: &Intent<'_>,
    current: Option<i32>,
    subscribers: &[SubscriberInfo],
) -> ScalePlan {
    let drain = recorded_drain(intent.previous);
    let drain_sync = ProxySync::count(
        proxy_acks(subscribers),
        drain.as_ref().map_or(0, |d| d.ring_version),
    );
    let input = ScaleInput {
        desired: intent.spec.replicas,
        current,
        drain,
        proxies_total: drain_sync.total,
        proxies_acked: drain_sync.in_sync,
        leaving_empty: false,
        drain_timeout_seconds: i64::from(intent.spec.drain_timeout_seconds),
        now: intent.now,
    };
    let plan = plan_scale(&input);
    if !matches!(plan.step, Step::WaitForDrainTimeout { .. }) {
        return plan;
    }
    if all_empty(probe, &leaving_addresses(intent.previous)).await {
        plan_scale(&ScaleInput {
            leaving_empty: true,
            ..input
        })
    } else {
        plan
    }
}

/// Step 3: members from the endpoints and the ring they make; a new drain learns the version
/// of the ring that first marks its members draining.
fn decide_ring(
    hub: &dyn RingAuthority,
    intent: &Intent<'_>,
    endpoints: &[Endpoint],
    mut scale: ScalePlan,
) -> (RingPlan, ScalePlan) {
    let params = RingParams {
        slots: u32::try_from(intent.spec.ring.slots).unwrap_or(wscluster_ring::DEFAULT_SLOTS),
        ..RingParams::default()
    };
    let hub_current = hub.current(intent.cluster_id);
    let recorded = snapshot_from_status(intent.cluster_id, intent.previous);
    let ring = plan_ring(
        intent.cluster_id,
        hub_current.as_deref(),
        recorded.as_ref(),
        members_of(endpoints, scale.active_below),
        params,
    );
    if let Some(d) = scale.drain.as_mut()
        && d.ring_version == 0
    {
        d.ring_version = ring.snapshot.version;
    }
    (ring, scale)
}

/// `(connected, applied version)` of the proxy subscribers.
pub fn proxy_acks(infos: &[SubscriberInfo]) -> impl Iterator<Item = (bool, Option<u64>)> + '_ {
    infos
        .iter()
        .filter(|s| s.kind == SubscriberKind::Proxy)
        .map(|s| (s.connected, s.applied_version))
}

/// The drain recorded in a status.
pub fn recorded_drain(status: Option<&WsClusterStatus>) -> Option<Drain> {
    let d = status?.drain.as_ref()?;
    Some(Drain {
        target: d.target_replicas,
        since: d.since.0,
        ring_version: u64::try_from(d.ring_version).unwrap_or(0),
    })
}

/// The leaving members as the proxies know them: the draining members of the ring recorded in
/// status.
fn leaving_addresses(status: Option<&WsClusterStatus>) -> Vec<String> {
    status
        .iter()
        .flat_map(|s| s.members.iter())
        .filter(|m| m.state == MemberStateStatus::Draining)
        .map(|m| m.address.clone())
        .collect()
}
