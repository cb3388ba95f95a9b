//! Ring membership from the node Service's EndpointSlices, and ring versioning. Pure.
//!
//! A member is a Ready endpoint (`conditions.ready` not false, not terminating) whose
//! `targetRef` is a pod of this cluster's StatefulSet (`<c>-node-<ordinal>`). Its id is the pod
//! name, so a restarted pod takes back exactly its own keys; its address is `podIP:port`.
//! Members whose ordinal is at or above the scale-down target are `draining`: they stay in the
//! snapshot (so proxies know to reset their clients with reason `drain`) but own no keys.
//!
//! ## Versions across restarts
//!
//! The status stores the last published snapshot (`ringVersion`, `ringSlots`, `members`). The
//! controller writes that status *before* it publishes to the hub, so every version a
//! subscriber ever saw is recorded with its content. After an operator restart (or a leader
//! change) the hub is empty: [`plan_ring`] takes the status as the base, re-publishes the same
//! snapshot at the same version if membership is unchanged (subscribers that already have it
//! ignore it, new ones get it), and publishes `ringVersion + 1` otherwise. A version number is
//! therefore never reused for different content.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use wscluster_ring::{Member, MemberState, RingParams, RingSnapshot};

use crate::crd::{MemberStateStatus, MemberStatus, WsClusterStatus};
use crate::resources::labels;

/// The ordinal of `pod` if it is `<statefulset>-<n>`.
pub fn ordinal(statefulset: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(statefulset)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse::<i32>().ok().filter(|n| *n >= 0)
}

/// A node endpoint as a platform observes it: a pod of the node set that is ready and not
/// terminating. Kubernetes reads these from EndpointSlices ([`endpoints`]); local mode from its
/// child processes. Both turn them into ring members with the same rule, [`members_of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The member id: the pod name, stable across restarts so a restarted pod takes back its
    /// own keys.
    pub id: String,
    /// Position in the node set; ordinals at or above the scale-down target drain.
    pub ordinal: i32,
    /// `host:port` proxies route to.
    pub address: String,
}

/// The ready endpoints of Service `statefulset` (the headless node Service has the
/// StatefulSet's name) in its EndpointSlices. `port_name` is the Service port (`ws`);
/// `fallback_port` is used when a slice does not list it.
///
/// Sorted by ordinal; a pod listed in several slices (dual-stack) appears once, with its IPv4
/// address preferred.
pub fn endpoints(
    slices: &[EndpointSlice],
    statefulset: &str,
    port_name: &str,
    fallback_port: i32,
) -> Vec<Endpoint> {
    let mut ordered: Vec<&EndpointSlice> = slices
        .iter()
        .filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::SERVICE_NAME))
                .is_some_and(|svc| svc == statefulset)
        })
        .filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6")
        .collect();
    // IPv4 slices first, then by name, so the choice is deterministic.
    ordered.sort_by(|a, b| {
        (a.address_type != "IPv4", &a.metadata.name)
            .cmp(&(b.address_type != "IPv4", &b.metadata.name))
    });
    let mut by_ordinal: BTreeMap<i32, Endpoint> = BTreeMap::new();
    for slice in ordered {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(port_name))
            .and_then(|p| p.port)
            .unwrap_or(fallback_port);
        for endpoint in &slice.endpoints {
            if let Some(e) =
                slice_endpoint(endpoint, slice.address_type == "IPv6", port, statefulset)
            {
                by_ordinal.entry(e.ordinal).or_insert(e);
            }
        }
    }
    by_ordinal.into_values().collect()
}

/// One EndpointSlice entry as an [`Endpoint`], if it is a ready, non-terminating pod of the
/// StatefulSet with an address.
fn slice_endpoint(
    endpoint: &k8s_openapi::api::discovery::v1::Endpoint,
    ipv6: bool,
    port: i32,
    statefulset: &str,
) -> Option<Endpoint> {
    let conditions = endpoint.conditions.as_ref();
    // The API: a nil `ready` means unknown and is to be read as ready.
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    if !ready || terminating {
        return None;
    }
    let pod = endpoint
        .target_ref
        .as_ref()
        .filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| r.name.as_deref())?;
    let ordinal = ordinal(statefulset, pod)?;
    let ip = endpoint.addresses.first()?;
    let address = if ipv6 {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    Some(Endpoint {
        id: pod.to_string(),
        ordinal,
        address,
    })
}

/// Ring members from observed endpoints: the one membership rule of every platform. Every
/// endpoint is a member, sorted by ordinal (the first endpoint of an ordinal wins); those with
/// an ordinal at or above `active_below` are `draining`: they stay in the snapshot (so proxies
/// know to reset their clients with reason `drain`) but own no keys.
pub fn members_of(endpoints: &[Endpoint], active_below: i32) -> Vec<Member> {
    let mut by_ordinal: BTreeMap<i32, Member> = BTreeMap::new();
    for e in endpoints {
        by_ordinal.entry(e.ordinal).or_insert_with(|| {
            let m = Member::active(e.id.clone(), e.address.clone());
            if e.ordinal >= active_below {
                m.draining()
            } else {
                m
            }
        });
    }
    by_ordinal.into_values().collect()
}

/// Ring members from the EndpointSlices of Service `statefulset`: [`endpoints`] then
/// [`members_of`].
pub fn members(
    slices: &[EndpointSlice],
    statefulset: &str,
    port_name: &str,
    fallback_port: i32,
    active_below: i32,
) -> Vec<Member> {
    members_of(
        &endpoints(slices, statefulset, port_name, fallback_port),
        active_below,
    )
}

/// The snapshot recorded in a status, if any was ever published.
pub fn snapshot_from_status(
    cluster_id: &str,
    status: Option<&WsClusterStatus>,
) -> Option<RingSnapshot> {
    let status = status?;
    let version = u64::try_from(status.ring_version).ok().filter(|v| *v > 0)?;
    let mut params = RingParams::default();
    if let Some(slots) = status.ring_slots.and_then(|s| u32::try_from(s).ok()) {
        params.slots = slots;
    }
    let members = status
        .members
        .iter()
        .map(|m| {
            let member = Member::active(m.id.clone(), m.address.clone());
            match m.state {
                MemberStateStatus::Active => member,
                MemberStateStatus::Draining => member.draining(),
            }
        })
        .collect();
    Some(RingSnapshot {
        cluster_id: cluster_id.into(),
        version,
        members,
        params,
    })
}

/// Members as reported in status.
pub fn member_statuses(snapshot: &RingSnapshot) -> Vec<MemberStatus> {
    snapshot
        .members
        .iter()
        .map(|m| MemberStatus {
            id: m.id.clone(),
            address: m.address.clone(),
            state: match m.state {
                MemberState::Active => MemberStateStatus::Active,
                MemberState::Draining => MemberStateStatus::Draining,
            },
        })
        .collect()
}

/// What to do with the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingPlan {
    /// The snapshot that is current after this reconcile.
    pub snapshot: RingSnapshot,
    /// A new version was made (membership or parameters changed).
    pub changed: bool,
    /// The hub does not hold `snapshot` yet: publish it (after the status is written).
    pub publish: bool,
}

fn same_content(a: &RingSnapshot, b: &RingSnapshot) -> bool {
    let key = |s: &RingSnapshot| {
        let mut m: Vec<_> = s
            .members
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    m.address.clone(),
                    m.weight,
                    m.state == MemberState::Active,
                )
            })
            .collect();
        m.sort();
        m
    };
    a.params == b.params && key(a) == key(b)
}

/// Decides the current snapshot from what the hub holds (`hub`, lost on restart), what the
/// status recorded (`recorded`), and the members and parameters observed now. See the module
/// docs for why the status is the base after a restart.
pub fn plan_ring(
    cluster_id: &str,
    hub: Option<&RingSnapshot>,
    recorded: Option<&RingSnapshot>,
    members: Vec<Member>,
    params: RingParams,
) -> RingPlan {
    let base = match (hub, recorded) {
        (Some(h), Some(r)) if r.version > h.version => Some(r),
        (Some(h), _) => Some(h),
        (None, r) => r,
    };
    let mut snapshot = RingSnapshot {
        cluster_id: cluster_id.into(),
        version: 1,
        members,
        params,
    };
    match base {
        Some(base) if same_content(base, &snapshot) => {
            snapshot.version = base.version;
            let publish = hub.is_none_or(|h| h.version < base.version);
            RingPlan {
                snapshot,
                changed: false,
                publish,
            }
        }
        Some(base) => {
            snapshot.version = base.version.saturating_add(1);
            RingPlan {
                snapshot,
                changed: true,
                publish: true,
            }
        }
        None => RingPlan {
            snapshot,
            changed: true,
            publish: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{endpoint, ready_slice, slice};

    fn ids(members: &[Member]) -> Vec<(&str, &str, bool)> {
        members
            .iter()
            .map(|m| (m.id.as_str(), m.address.as_str(), m.is_active()))
            .collect()
    }

    #[test]
    fn ordinals_are_parsed_strictly() {
        assert_eq!(ordinal("chat-node", "chat-node-0"), Some(0));
        assert_eq!(ordinal("chat-node", "chat-node-12"), Some(12));
        assert_eq!(ordinal("chat-node", "chat-node-"), None);
        assert_eq!(ordinal("chat-node", "chat-node-01"), None);
        assert_eq!(ordinal("chat-node", "chat-node-x"), None);
        assert_eq!(ordinal("chat-node", "chat-nodes-1"), None);
        assert_eq!(ordinal("chat-node", "other-node-1"), None);
    }

    #[test]
    fn only_ready_pods_of_the_statefulset_become_members_in_ordinal_order() {
        let s = slice(
            "chat-node-x",
            vec![
                endpoint("chat-node-10", "10.0.0.20", true),
                endpoint("chat-node-2", "10.0.0.12", true),
                endpoint("chat-node-1", "10.0.0.11", false),
                endpoint("intruder-0", "10.0.0.99", true),
            ],
        );
        let m = members(&[s], "chat-node", "ws", 8080, 100);
        assert_eq!(
            ids(&m),
            [
                ("chat-node-2", "10.0.0.12:8080", true),
                ("chat-node-10", "10.0.0.20:8080", true)
            ]
        );
    }

    #[test]
    fn terminating_endpoints_and_other_services_are_ignored() {
        let mut s = ready_slice(2);
        if let Some(c) = s.endpoints[1].conditions.as_mut() {
            c.terminating = Some(true);
        }
        let mut other = ready_slice(3);
        other.metadata.labels = Some([(labels::SERVICE_NAME.to_string(), "x".to_string())].into());
        let m = members(&[s, other], "chat-node", "ws", 8080, 100);
        assert_eq!(ids(&m), [("chat-node-0", "10.0.0.10:8080", true)]);
    }

    #[test]
    fn a_nil_ready_condition_counts_as_ready_as_the_api_documents() {
        let mut s = ready_slice(1);
        s.endpoints[0].conditions = None;
        assert_eq!(members(&[s], "chat-node", "ws", 8080, 1).len(), 1);
    }

    #[test]
    fn ordinals_at_or_above_the_target_are_draining() {
        let m = members(&[ready_slice(4)], "chat-node", "ws", 8080, 2);
        assert_eq!(
            m.iter().map(|m| m.is_active()).collect::<Vec<_>>(),
            [true, true, false, false]
        );
    }

    #[test]
    fn dual_stack_pods_appear_once_with_their_ipv4_address() {
        let mut v6 = slice(
            "chat-node-a6",
            vec![
                endpoint("chat-node-0", "fd00::10", true),
                endpoint("chat-node-1", "fd00::11", true),
            ],
        );
        v6.address_type = "IPv6".into();
        let v4 = slice(
            "chat-node-z4",
            vec![endpoint("chat-node-0", "10.0.0.10", true)],
        );
        let m = members(&[v6, v4], "chat-node", "ws", 8080, 5);
        assert_eq!(
            ids(&m),
            [
                ("chat-node-0", "10.0.0.10:8080", true),
                ("chat-node-1", "[fd00::11]:8080", true)
            ]
        );
    }

    #[test]
    fn the_port_comes_from_the_slice_or_the_fallback() {
        let mut s = ready_slice(1);
        s.ports = None;
        assert_eq!(
            members(&[s], "chat-node", "ws", 9999, 1)[0].address,
            "10.0.0.10:9999"
        );
    }

    fn snap(version: u64, n: usize) -> RingSnapshot {
        RingSnapshot::new(
            "default/chat",
            version,
            members(&[ready_slice(n)], "chat-node", "ws", 8080, 100),
        )
    }

    #[test]
    fn the_first_ring_is_version_one() {
        let p = plan_ring(
            "default/chat",
            None,
            None,
            snap(0, 3).members,
            RingParams::default(),
        );
        assert_eq!((p.snapshot.version, p.changed, p.publish), (1, true, true));
    }

    #[test]
    fn unchanged_membership_keeps_the_version_and_does_not_republish() {
        let hub = snap(4, 3);
        let p = plan_ring(
            "default/chat",
            Some(&hub),
            Some(&hub),
            snap(0, 3).members,
            RingParams::default(),
        );
        assert_eq!(
            (p.snapshot.version, p.changed, p.publish),
            (4, false, false)
        );
    }

    #[test]
    fn a_membership_change_bumps_the_version() {
        let hub = snap(4, 3);
        let p = plan_ring(
            "default/chat",
            Some(&hub),
            Some(&hub),
            snap(0, 4).members,
            RingParams::default(),
        );
        assert_eq!((p.snapshot.version, p.changed, p.publish), (5, true, true));
        let mut state_change = snap(0, 3).members;
        state_change[2] = state_change[2].clone().draining();
        let p = plan_ring(
            "default/chat",
            Some(&hub),
            Some(&hub),
            state_change,
            RingParams::default(),
        );
        assert_eq!(p.snapshot.version, 5);
        let slots = RingParams {
            slots: 1024,
            ..RingParams::default()
        };
        let p = plan_ring(
            "default/chat",
            Some(&hub),
            Some(&hub),
            snap(0, 3).members,
            slots,
        );
        assert_eq!(p.snapshot.version, 5);
    }

    #[test]
    fn after_a_restart_the_recorded_ring_is_republished_at_its_own_version() {
        let recorded = snap(7, 3);
        let p = plan_ring(
            "default/chat",
            None,
            Some(&recorded),
            snap(0, 3).members,
            RingParams::default(),
        );
        assert_eq!((p.snapshot.version, p.changed, p.publish), (7, false, true));
    }

    #[test]
    fn after_a_restart_a_changed_membership_continues_above_the_recorded_version() {
        let recorded = snap(7, 3);
        let p = plan_ring(
            "default/chat",
            None,
            Some(&recorded),
            snap(0, 2).members,
            RingParams::default(),
        );
        assert_eq!((p.snapshot.version, p.changed, p.publish), (8, true, true));
    }

    #[test]
    fn a_status_newer_than_the_hub_wins_so_versions_never_go_back() {
        // Another leader published 9 while this process still holds 5.
        let hub = snap(5, 3);
        let recorded = snap(9, 3);
        let p = plan_ring(
            "default/chat",
            Some(&hub),
            Some(&recorded),
            snap(0, 3).members,
            RingParams::default(),
        );
        assert_eq!((p.snapshot.version, p.publish), (9, true));
        let p = plan_ring(
            "default/chat",
            Some(&hub),
            Some(&recorded),
            snap(0, 4).members,
            RingParams::default(),
        );
        assert_eq!(p.snapshot.version, 10);
    }

    #[test]
    fn status_round_trips_the_snapshot() {
        let mut s = snap(3, 2);
        s.members[1] = s.members[1].clone().draining();
        s.params.slots = 2048;
        let status = WsClusterStatus {
            ring_version: 3,
            ring_slots: Some(2048),
            members: member_statuses(&s),
            ..WsClusterStatus::default()
        };
        assert_eq!(snapshot_from_status("default/chat", Some(&status)), Some(s));
        assert_eq!(
            snapshot_from_status("default/chat", Some(&WsClusterStatus::default())),
            None
        );
    }
}
