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
//! 4. record the status, *then* publish the ring on the stream (see [`crate::membership`] for
//!    why status comes first), *then* write it as the fallback ring file
//!    ([`Platform::record_ring`]: the ConfigMap, or local mode's file). The file never holds a
//!    ring the hub has not published: a process that read it first would acknowledge a version
//!    the hub refuses as newer than its own, and the drain would wait for that proxy forever.
//!    The file is written on every pass, like every other desired object (an apply of
//!    unchanged content changes nothing, and a deleted or edited ConfigMap is repaired); a
//!    failed write fails the pass, and the next pass writes it again; meanwhile the file is
//!    only older, which the fallback rule ignores once the stream is back.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring::{RingError, RingParams, RingSnapshot};
use wscluster_ring_stream::{KindTokens, RingHub, SubscriberInfo};

use crate::crd::{MemberStateStatus, WsClusterSpec, WsClusterStatus};
use crate::error::Result;
use crate::membership::{Endpoint, RingPlan, members_of, plan_ring, snapshot_from_status};
use crate::probe::{ConnectionProbe, all_empty};
use crate::scaling::{Drain, ScaleInput, ScalePlan, Step, plan_scale};
use crate::status::{ProxySync, StatusInput, compute_status};

/// Where rings go and acknowledgements come from: the ring stream's hub. A trait so the
/// controller's tests can play the subscribers' acknowledgements without real proxies.
pub trait RingAuthority: Send + Sync {
    /// Sets the bearer tokens subscribers of a cluster must present, one per kind.
    fn set_tokens(&self, cluster_id: &str, tokens: KindTokens);
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
    fn set_tokens(&self, cluster_id: &str, tokens: KindTokens) {
        RingHub::set_tokens(self, cluster_id, tokens);
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
    /// Writes the pass's ring where nodes and proxies read their fallback ring file
    /// (`--ring-file`): the ring ConfigMap, or local mode's `ring.json`. Called on every pass,
    /// after the status and after the ring is published on the stream.
    fn record_ring(&mut self, snapshot: &RingSnapshot) -> impl Future<Output = Result<()>> + Send;
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
    platform.record_ring(&ring.snapshot).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{FakeHub, FakeProbe};

    /// A platform of `n` ready nodes whose calls are logged, so the order of a pass shows.
    struct Recorded {
        replicas: Option<i32>,
        ready: i32,
        probe: FakeProbe,
        log: Vec<String>,
        status: Option<WsClusterStatus>,
        hub: Arc<FakeHub>,
    }

    impl Recorded {
        fn new(hub: Arc<FakeHub>) -> Recorded {
            Recorded {
                replicas: None,
                ready: 0,
                probe: FakeProbe::default(),
                log: Vec::new(),
                status: None,
                hub,
            }
        }
    }

    impl Platform for Recorded {
        async fn node_replicas(&mut self) -> Result<Option<i32>> {
            Ok(self.replicas)
        }
        async fn set_node_replicas(&mut self, replicas: i32) -> Result<NodeCounts> {
            self.log.push(format!("set_node_replicas {replicas}"));
            self.replicas = Some(replicas);
            self.ready = self.ready.min(replicas);
            Ok(NodeCounts {
                replicas,
                ready_replicas: self.ready,
            })
        }
        async fn sync_proxies(&mut self) -> Result<i32> {
            Ok(1)
        }
        async fn endpoints(&mut self) -> Result<Vec<Endpoint>> {
            Ok((0..self.ready)
                .map(|o| Endpoint {
                    id: format!("n-{o}"),
                    ordinal: o,
                    address: format!("10.0.0.{o}:8080"),
                })
                .collect())
        }
        fn probe(&self) -> &dyn ConnectionProbe {
            &self.probe
        }
        async fn record_status(&mut self, status: &WsClusterStatus) -> Result<()> {
            let published = self.hub.current("ns/c").map_or(0, |r| r.version);
            self.log.push(format!(
                "record ring {} while the hub serves {published}",
                status.ring_version
            ));
            self.status = Some(status.clone());
            Ok(())
        }
        async fn record_ring(&mut self, snapshot: &RingSnapshot) -> Result<()> {
            let published = self.hub.current("ns/c").map_or(0, |r| r.version);
            self.log.push(format!(
                "write ring file {} while the hub serves {published}",
                snapshot.version
            ));
            Ok(())
        }
    }

    fn spec(replicas: i32) -> WsClusterSpec {
        WsClusterSpec {
            replicas,
            ..WsClusterSpec::default()
        }
    }

    async fn pass(p: &mut Recorded, hub: &FakeHub, replicas: i32, second: i64) -> Pass {
        let previous = p.status.clone();
        let spec = spec(replicas);
        let intent = Intent {
            cluster_id: "ns/c",
            spec: &spec,
            generation: Some(1),
            previous: previous.as_ref(),
            selector: "s".into(),
            now: Timestamp::from_second(1_800_000_000 + second).unwrap_or(Timestamp::UNIX_EPOCH),
        };
        converge(p, hub, &intent).await.expect("a pass")
    }

    #[tokio::test]
    async fn a_pass_records_the_status_and_the_ring_file_before_it_publishes_the_ring() {
        let hub = FakeHub::new();
        let mut p = Recorded::new(Arc::clone(&hub));
        let first = pass(&mut p, &hub, 3, 0).await;
        assert_eq!(first.scale.step, Step::Create);
        p.ready = 3;
        let second = pass(&mut p, &hub, 3, 1).await;
        assert!(second.ring.publish && second.ring.changed);
        assert_eq!(second.ring.snapshot.members.len(), 3);
        assert_eq!(
            p.log,
            [
                "set_node_replicas 3",
                "record ring 1 while the hub serves 0",
                "write ring file 1 while the hub serves 1",
                "set_node_replicas 3",
                "record ring 2 while the hub serves 1",
                "write ring file 2 while the hub serves 2",
            ]
        );
        assert_eq!(hub.current("ns/c").map(|r| r.version), Some(2));
    }

    #[tokio::test]
    async fn scale_down_keeps_the_nodes_until_proxies_acked_and_the_leaving_are_empty() {
        let hub = FakeHub::new();
        let mut p = Recorded::new(Arc::clone(&hub));
        pass(&mut p, &hub, 3, 0).await;
        p.ready = 3;
        let ring = pass(&mut p, &hub, 3, 1).await.ring.snapshot.version;
        hub.set_proxies(&[Some(ring)]);

        // Drain: the ring marks n-2 draining, the node set keeps 3.
        let drain = pass(&mut p, &hub, 2, 2).await;
        assert_eq!(drain.scale.step, Step::StartDrain);
        assert_eq!(drain.scale.statefulset_replicas, 3);
        let drain_version = drain.ring.snapshot.version;
        assert!(!drain.ring.snapshot.members[2].is_active());
        assert_eq!(
            drain.status.drain.as_ref().map(|d| d.ring_version),
            Some(i64::try_from(drain_version).unwrap_or(0))
        );

        // The proxy has not applied it: wait, even when the leaving node is empty.
        p.probe.set("10.0.0.2:8080", 0);
        let wait = pass(&mut p, &hub, 2, 3).await;
        assert_eq!(wait.scale.step, Step::WaitForProxies { acked: 0, total: 1 });
        assert_eq!(p.replicas, Some(3));

        // Applied, but the leaving node still has sessions: wait for the timeout.
        hub.set_proxies(&[Some(drain_version)]);
        p.probe.set("10.0.0.2:8080", 4);
        let timeout = pass(&mut p, &hub, 2, 4).await;
        assert!(matches!(
            timeout.scale.step,
            Step::WaitForDrainTimeout { .. }
        ));
        assert_eq!(p.replicas, Some(3));

        // Empty: the node set shrinks and the drain record is cleared.
        p.probe.set("10.0.0.2:8080", 0);
        let done = pass(&mut p, &hub, 2, 5).await;
        assert_eq!(done.scale.step, Step::FinishDrain { from: 3 });
        assert_eq!(p.replicas, Some(2));
        assert!(done.status.drain.is_none());
        let shrunk = pass(&mut p, &hub, 2, 6).await;
        assert_eq!(shrunk.ring.snapshot.members.len(), 2);
        assert!(shrunk.ring.snapshot.members.iter().all(|m| m.is_active()));
    }
}
