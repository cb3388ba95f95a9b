//! Local membership: the pure state machine that plays the part of a StatefulSet and its
//! EndpointSlices in local mode. No I/O and no clock: the supervisor feeds it events (a node
//! started, became ready, exited; the desired replicas changed; time passed with these proxy
//! acks) and carries out the [`Effect`]s it returns.
//!
//! The rules are the ones Kubernetes membership follows:
//!
//! * a node is a ring member only while its process is alive and its `/readyz` answered 200;
//!   it joins as `active` when its ordinal is below the desired replicas;
//! * a node whose process exited (killed, crashed) leaves the ring at once;
//! * scale-down drains first: ordinals at or above the new replicas stay in the ring as
//!   `draining` (they own no keys, so proxies move their clients), and they are stopped only
//!   when every connected proxy acknowledged that ring version **and** either their
//!   connections reached zero or the drain timeout passed;
//! * every change of the member list is a new ring version (strictly increasing).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wscluster_ring::{Member, RingSnapshot};

/// The member id of the node with this ordinal (`local-node-<ordinal>`), stable across
/// restarts so a restarted node takes its keys back, as a StatefulSet pod name does.
pub fn node_id(ordinal: u32) -> String {
    format!("local-node-{ordinal}")
}

/// What local mode knows about one node process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSlot {
    /// Position in the "StatefulSet"; decides whether the node is wanted under the replicas.
    pub ordinal: u32,
    /// `host:port` the node listens on, once its process reported it.
    pub address: Option<String>,
    /// Whether `/readyz` answered 200 at the last probe; only ready nodes join.
    pub ready: bool,
    /// Whether the process is running (or starting).
    pub alive: bool,
    /// Whether a stop (SIGTERM) was already requested, so it is not requested twice.
    pub stopping: bool,
}

/// A scale-down in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// Ordinals being drained (all at or above the target replicas).
    pub ordinals: Vec<u32>,
    /// When the drain started, for the timeout.
    pub started: Instant,
    /// The ring version in which those members first appear as draining; proxies must have
    /// acknowledged it before the nodes are stopped.
    pub ring_version: u64,
}

/// How long past the drain timeout a drain still waits for a proxy's ack. A proxy that is
/// connected but never acknowledges (stuck, or an old build) must not hold a scale-down forever;
/// 30 s is six heartbeat intervals of the ring stream, far beyond a healthy proxy's ack time.
pub const ACK_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// What the supervisor must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Publish this snapshot to the ring hub.
    Publish(RingSnapshot),
    /// Start the node process with this ordinal.
    Start(u32),
    /// Stop the node process with this ordinal gracefully (SIGTERM: it resets what is left with
    /// reason `drain`).
    Stop(u32),
}

/// A connected proxy's acknowledgement, from the hub's subscriber list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyAck {
    /// The ring version the proxy reported as applied, if any.
    pub applied_version: Option<u64>,
}

/// Membership state: desired replicas, the node slots, the last published member list.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Put in every snapshot.
    cluster_id: String,
    /// Desired node count: ordinals below it are wanted.
    replicas: u32,
    /// What is known about each node process.
    nodes: BTreeMap<u32, NodeSlot>,
    /// The last published version; the next change publishes `version + 1`.
    version: u64,
    /// The last published members, to publish only real changes.
    members: Vec<Member>,
    /// The scale-down in progress.
    drain: Option<Drain>,
    /// How long a drain waits for the leaving nodes to empty.
    drain_timeout: Duration,
}

impl Membership {
    /// A membership with `replicas` desired nodes and nothing running, and the effects that
    /// start it: an empty ring at version 1 (so nodes and proxies become ready) and one
    /// `Start` per ordinal.
    pub fn new(
        cluster_id: impl Into<String>,
        replicas: u32,
        drain_timeout: Duration,
    ) -> (Membership, Vec<Effect>) {
        let cluster_id = cluster_id.into();
        let membership = Membership {
            cluster_id: cluster_id.clone(),
            replicas,
            nodes: BTreeMap::new(),
            version: 1,
            members: Vec::new(),
            drain: None,
            drain_timeout,
        };
        let mut effects = vec![Effect::Publish(RingSnapshot::new(
            cluster_id,
            1,
            Vec::new(),
        ))];
        effects.extend((0..replicas).map(Effect::Start));
        (membership, effects)
    }

    /// The desired replicas.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The current ring version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The current members (as last published).
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The node slots by ordinal.
    pub fn nodes(&self) -> &BTreeMap<u32, NodeSlot> {
        &self.nodes
    }

    /// The drain in progress, if any.
    pub fn drain(&self) -> Option<&Drain> {
        self.drain.as_ref()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> RingSnapshot {
        RingSnapshot::new(self.cluster_id.clone(), self.version, self.members.clone())
    }

    /// The desired replicas changed. Scale-up starts the missing ordinals (and cancels a drain
    /// of ordinals that are wanted again); scale-down marks the leaving ordinals draining.
    pub fn set_replicas(&mut self, replicas: u32, now: Instant) -> Vec<Effect> {
        self.replicas = replicas;
        let mut effects: Vec<Effect> = (0..replicas)
            .filter(|o| !self.nodes.get(o).is_some_and(|n| n.alive))
            .map(Effect::Start)
            .collect();
        let leaving: Vec<u32> = self
            .nodes
            .values()
            .filter(|n| n.ordinal >= replicas && n.alive && !n.stopping)
            .map(|n| n.ordinal)
            .collect();
        // A leaving node that never joined the ring has no clients: stop it at once.
        let (in_ring, never_joined): (Vec<u32>, Vec<u32>) = leaving
            .into_iter()
            .partition(|o| self.members.iter().any(|m| m.id == node_id(*o)));
        for ordinal in never_joined {
            effects.extend(self.stop(ordinal));
        }
        effects.extend(self.republish());
        self.drain = match (in_ring.is_empty(), self.drain.take()) {
            (true, _) => None,
            // The same set keeps its start time and version; a different set starts over.
            (false, Some(d)) if d.ordinals == in_ring => Some(d),
            (false, _) => Some(Drain {
                ordinals: in_ring,
                started: now,
                ring_version: self.version,
            }),
        };
        effects
    }

    /// A node process was spawned and reported its address. A node that is no longer wanted
    /// (replicas went down while it started) is stopped before it can join.
    pub fn node_started(&mut self, ordinal: u32, address: String) -> Vec<Effect> {
        let unwanted = ordinal >= self.replicas;
        self.nodes.insert(
            ordinal,
            NodeSlot {
                ordinal,
                address: Some(address),
                ready: false,
                alive: true,
                stopping: unwanted,
            },
        );
        let mut effects = self.republish();
        if unwanted {
            effects.push(Effect::Stop(ordinal));
        }
        effects
    }

    /// A readiness probe answered: `ready` is whether `/readyz` said 200.
    pub fn node_readiness(&mut self, ordinal: u32, ready: bool) -> Vec<Effect> {
        match self.nodes.get_mut(&ordinal) {
            Some(n) if n.alive && n.ready != ready => {
                n.ready = ready;
                self.republish()
            }
            _ => Vec::new(),
        }
    }

    /// A node process exited (for whatever reason): it leaves the ring at once.
    pub fn node_exited(&mut self, ordinal: u32) -> Vec<Effect> {
        if let Some(n) = self.nodes.get_mut(&ordinal) {
            n.alive = false;
            n.ready = false;
            n.stopping = false;
        }
        if let Some(d) = &mut self.drain {
            d.ordinals.retain(|o| *o != ordinal);
            if d.ordinals.is_empty() {
                self.drain = None;
            }
        }
        self.republish()
    }

    /// Time passed: finishes a drain once every connected proxy applied its ring version and
    /// the leaving nodes are empty (`leaving_connections == Some(0)`) or the timeout passed,
    /// or in any case [`ACK_WAIT_LIMIT`] after the timeout.
    pub fn tick(
        &mut self,
        now: Instant,
        proxies: &[ProxyAck],
        leaving_connections: Option<u64>,
    ) -> Vec<Effect> {
        let Some(drain) = &self.drain else {
            return Vec::new();
        };
        let acked = proxies
            .iter()
            .all(|p| p.applied_version.is_some_and(|v| v >= drain.ring_version));
        let elapsed = now.saturating_duration_since(drain.started);
        let timed_out = elapsed >= self.drain_timeout;
        let forced = elapsed >= self.drain_timeout + ACK_WAIT_LIMIT;
        if !forced && (!acked || !(timed_out || leaving_connections == Some(0))) {
            return Vec::new();
        }
        let ordinals = drain.ordinals.clone();
        self.drain = None;
        ordinals.into_iter().flat_map(|o| self.stop(o)).collect()
    }

    fn stop(&mut self, ordinal: u32) -> Vec<Effect> {
        match self.nodes.get_mut(&ordinal) {
            Some(n) if n.alive && !n.stopping => {
                n.stopping = true;
                vec![Effect::Stop(ordinal)]
            }
            _ => Vec::new(),
        }
    }

    /// The member list the current facts call for.
    fn desired_members(&self) -> Vec<Member> {
        self.nodes
            .values()
            .filter(|n| n.alive && n.ready)
            .filter_map(|n| {
                let address = n.address.clone()?;
                let member = Member::active(node_id(n.ordinal), address);
                if n.ordinal < self.replicas {
                    Some(member)
                } else if self.members.iter().any(|m| m.id == member.id) {
                    // Only a node that is in the ring drains; one that never joined stays out.
                    Some(member.draining())
                } else {
                    None
                }
            })
            .collect()
    }

    /// Publishes a new version if the member list changed.
    fn republish(&mut self) -> Vec<Effect> {
        let members = self.desired_members();
        if members == self.members {
            return Vec::new();
        }
        self.members = members;
        self.version += 1;
        vec![Effect::Publish(self.snapshot())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wscluster_ring::MemberState;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn started(replicas: u32) -> (Membership, Instant) {
        let now = Instant::now();
        let (mut m, effects) = Membership::new("local/demo", replicas, TIMEOUT);
        assert_eq!(effects.len(), 1 + replicas as usize);
        for o in 0..replicas {
            m.node_started(o, format!("127.0.0.1:{}", 9000 + o));
            m.node_readiness(o, true);
        }
        (m, now)
    }

    fn states(m: &Membership) -> Vec<(String, MemberState)> {
        m.members()
            .iter()
            .map(|x| (x.id.clone(), x.state))
            .collect()
    }

    fn published(effects: &[Effect]) -> Vec<&RingSnapshot> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn start_publishes_an_empty_ring_and_starts_every_ordinal() {
        let (m, effects) = Membership::new("local/demo", 3, TIMEOUT);
        assert_eq!(
            effects,
            vec![
                Effect::Publish(RingSnapshot::new("local/demo", 1, vec![])),
                Effect::Start(0),
                Effect::Start(1),
                Effect::Start(2),
            ]
        );
        assert_eq!(m.version(), 1);
    }

    #[test]
    fn a_node_joins_only_when_ready() {
        let (mut m, _) = Membership::new("local/demo", 1, TIMEOUT);
        assert!(m.node_started(0, "127.0.0.1:1".into()).is_empty());
        assert!(m.members().is_empty());
        let effects = m.node_readiness(0, true);
        let snaps = published(&effects);
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].version, 2);
        assert_eq!(
            snaps[0].members,
            vec![Member::active("local-node-0", "127.0.0.1:1")]
        );
        // The same readiness again changes nothing.
        assert!(m.node_readiness(0, true).is_empty());
        assert_eq!(m.version(), 2);
    }

    #[test]
    fn a_killed_node_leaves_the_ring_at_once_and_rejoins_when_restarted_and_ready() {
        let (mut m, _) = started(3);
        let v = m.version();
        let effects = m.node_exited(1);
        assert_eq!(published(&effects).len(), 1);
        assert_eq!(m.version(), v + 1);
        assert!(!states(&m).iter().any(|(id, _)| id == "local-node-1"));
        // Restarted on a new port: out of the ring until ready, then back with its id.
        assert!(m.node_started(1, "127.0.0.1:7777".into()).is_empty());
        m.node_readiness(1, true);
        assert_eq!(m.version(), v + 2);
        assert!(
            m.members()
                .iter()
                .any(|x| x.id == "local-node-1" && x.address == "127.0.0.1:7777")
        );
    }

    #[test]
    fn scale_up_starts_the_new_ordinals_and_they_join_when_ready() {
        let (mut m, now) = started(3);
        let v = m.version();
        let effects = m.set_replicas(4, now);
        assert_eq!(effects, vec![Effect::Start(3)]);
        assert_eq!(m.version(), v);
        m.node_started(3, "127.0.0.1:9003".into());
        m.node_readiness(3, true);
        assert_eq!(m.version(), v + 1);
        assert_eq!(m.members().len(), 4);
        assert!(m.members().iter().all(Member::is_active));
    }

    #[test]
    fn scale_down_drains_first_and_stops_only_after_acks_and_empty_or_timeout() {
        let (mut m, now) = started(4);
        let effects = m.set_replicas(2, now);
        let snaps = published(&effects);
        assert_eq!(snaps.len(), 1, "one new version marks both leaving members");
        let drain_version = snaps[0].version;
        assert!(!effects.iter().any(|e| matches!(e, Effect::Stop(_))));
        assert_eq!(
            states(&m),
            vec![
                ("local-node-0".into(), MemberState::Active),
                ("local-node-1".into(), MemberState::Active),
                ("local-node-2".into(), MemberState::Draining),
                ("local-node-3".into(), MemberState::Draining),
            ]
        );
        let later = now + Duration::from_secs(1);
        // A proxy still on the old version: nothing stops, even when empty.
        let behind = [
            ProxyAck {
                applied_version: Some(drain_version),
            },
            ProxyAck {
                applied_version: Some(drain_version - 1),
            },
        ];
        assert!(m.tick(later, &behind, Some(0)).is_empty());
        // Every proxy acked, but the leaving nodes still hold clients and time is left.
        let acked = [ProxyAck {
            applied_version: Some(drain_version),
        }];
        assert!(m.tick(later, &acked, Some(5)).is_empty());
        // Empty: they stop.
        assert_eq!(
            m.tick(later, &acked, Some(0)),
            vec![Effect::Stop(2), Effect::Stop(3)]
        );
        assert!(m.drain().is_none());
        // Still in the ring as draining until their processes exit.
        assert_eq!(m.members().len(), 4);
        m.node_exited(2);
        m.node_exited(3);
        assert_eq!(m.members().len(), 2);
        assert!(m.members().iter().all(Member::is_active));
    }

    #[test]
    fn a_drain_ends_at_its_timeout_even_with_clients_left() {
        let (mut m, now) = started(3);
        m.set_replicas(2, now);
        let acked = [ProxyAck {
            applied_version: Some(m.version()),
        }];
        assert!(m.tick(now + TIMEOUT / 2, &acked, Some(3)).is_empty());
        assert_eq!(
            m.tick(now + TIMEOUT, &acked, Some(3)),
            vec![Effect::Stop(2)]
        );
        assert!(m.tick(now + TIMEOUT * 2, &acked, Some(3)).is_empty());
    }

    #[test]
    fn a_proxy_that_never_acks_holds_a_drain_only_until_the_ack_wait_limit() {
        let (mut m, now) = started(3);
        m.set_replicas(2, now);
        let stuck = [ProxyAck {
            applied_version: Some(m.version() - 1),
        }];
        assert!(m.tick(now + TIMEOUT, &stuck, Some(0)).is_empty());
        assert!(
            m.tick(now + TIMEOUT + ACK_WAIT_LIMIT / 2, &stuck, Some(0))
                .is_empty()
        );
        assert_eq!(
            m.tick(now + TIMEOUT + ACK_WAIT_LIMIT, &stuck, Some(0)),
            vec![Effect::Stop(2)]
        );
    }

    #[test]
    fn scaling_back_up_during_a_drain_cancels_it_and_reactivates_the_members() {
        let (mut m, now) = started(3);
        m.set_replicas(1, now);
        assert_eq!(m.drain().map(|d| d.ordinals.clone()), Some(vec![1, 2]));
        let effects = m.set_replicas(3, now);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Start(_))));
        assert!(m.drain().is_none());
        assert!(m.members().iter().all(Member::is_active));
        assert_eq!(m.members().len(), 3);
    }

    #[test]
    fn a_node_that_never_joined_is_stopped_at_once_on_scale_down() {
        let (mut m, now) = started(2);
        m.set_replicas(3, now);
        m.node_started(2, "127.0.0.1:9002".into());
        let v = m.version();
        assert_eq!(m.set_replicas(2, now), vec![Effect::Stop(2)]);
        assert!(m.drain().is_none());
        assert_eq!(m.version(), v);
    }

    #[test]
    fn a_node_that_finishes_starting_after_a_scale_down_is_stopped_without_joining() {
        let (mut m, now) = started(2);
        assert_eq!(m.set_replicas(3, now), vec![Effect::Start(2)]);
        m.set_replicas(2, now);
        let v = m.version();
        assert_eq!(m.node_started(2, "h:2".into()), vec![Effect::Stop(2)]);
        assert!(m.node_readiness(2, true).is_empty());
        assert_eq!(m.version(), v);
        assert_eq!(m.members().len(), 2);
    }

    #[test]
    fn a_node_killed_during_its_drain_ends_the_drain() {
        let (mut m, now) = started(3);
        m.set_replicas(2, now);
        m.node_exited(2);
        assert!(m.drain().is_none());
        assert_eq!(m.members().len(), 2);
    }

    #[test]
    fn scale_up_restarts_a_dead_ordinal_below_the_replicas() {
        let (mut m, now) = started(3);
        m.node_exited(0);
        assert_eq!(
            m.set_replicas(4, now),
            vec![Effect::Start(0), Effect::Start(3)]
        );
    }

    type Step = Box<dyn Fn(&mut Membership) -> Vec<Effect>>;

    #[test]
    fn versions_strictly_increase_across_every_change() {
        let (mut m, now) = started(2);
        let mut last = m.version();
        let steps: Vec<Step> = vec![
            Box::new(move |m| m.set_replicas(3, now)),
            Box::new(|m| m.node_started(2, "h:3".into())),
            Box::new(|m| m.node_readiness(2, true)),
            Box::new(|m| m.node_readiness(0, false)),
            Box::new(|m| m.node_exited(1)),
            Box::new(move |m| m.set_replicas(1, now)),
        ];
        for step in steps {
            for snap in published(&step(&mut m)) {
                assert!(snap.version > last);
                last = snap.version;
            }
        }
        assert_eq!(m.version(), last);
    }
}
