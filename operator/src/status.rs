//! Status and conditions from what reconcile observed and decided. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use wscluster_ring::RingSnapshot;

use crate::crd::{
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, DrainStatus, WsClusterStatus,
};
use crate::membership::member_statuses;
use crate::scaling::{ScalePlan, Step};

/// Proxies connected to the ring stream, and how many applied a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxySync {
    /// Connected proxies.
    pub total: usize,
    /// Connected proxies whose applied version is at least the one asked about.
    pub in_sync: usize,
}

impl ProxySync {
    /// Counts `(connected, applied_version)` of proxy subscribers against `version`.
    pub fn count(
        proxies: impl IntoIterator<Item = (bool, Option<u64>)>,
        version: u64,
    ) -> ProxySync {
        let mut sync = ProxySync::default();
        for (connected, applied) in proxies {
            if connected {
                sync.total += 1;
                if applied.is_some_and(|v| v >= version) {
                    sync.in_sync += 1;
                }
            }
        }
        sync
    }
}

/// Everything the status is computed from.
#[derive(Debug, Clone)]
pub struct StatusInput<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub desired: i32,
    /// StatefulSet `status.replicas`.
    pub replicas: i32,
    /// StatefulSet `status.readyReplicas`.
    pub ready_replicas: i32,
    /// Node pod selector string.
    pub selector: String,
    /// The current ring.
    pub ring: &'a RingSnapshot,
    /// Proxies in sync with `ring.version`.
    pub proxies: ProxySync,
    /// `spec.proxy.replicas`.
    pub proxies_desired: i32,
    /// The proxy Deployment's `status.availableReplicas`.
    pub proxies_available: i32,
    /// The scaling decision.
    pub scale: &'a ScalePlan,
    /// The previous status (for condition transition times).
    pub previous: Option<&'a WsClusterStatus>,
    /// Now.
    pub now: Timestamp,
}

/// One condition to set.
#[derive(Debug, Clone)]
pub struct ConditionUpdate<'a> {
    /// `Ready`, `Progressing` or `Degraded`.
    pub type_: &'a str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'a str,
    /// Human-readable message.
    pub message: String,
}

/// Sets or updates a condition, keeping `lastTransitionTime` when its status is unchanged.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    previous: &[Condition],
    update: ConditionUpdate<'_>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let ConditionUpdate {
        type_,
        status,
        reason,
        message,
    } = update;
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    });
}

/// The status after a successful reconcile.
pub fn compute_status(input: &StatusInput<'_>) -> WsClusterStatus {
    let previous = input
        .previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or(&[]);
    let mut conditions = Vec::new();
    let degraded = ConditionUpdate {
        type_: CONDITION_DEGRADED,
        status: false,
        reason: "AsExpected",
        message: "the spec is reconciled".into(),
    };
    for update in [
        ready_condition(input),
        progressing_condition(input),
        degraded,
    ] {
        set_condition(
            &mut conditions,
            previous,
            update,
            input.generation,
            input.now,
        );
    }
    WsClusterStatus {
        replicas: input.replicas,
        ready_replicas: input.ready_replicas,
        selector: input.selector.clone(),
        ring_version: i64::try_from(input.ring.version).unwrap_or(i64::MAX),
        ring_slots: i32::try_from(input.ring.params.slots).ok(),
        members: member_statuses(input.ring),
        proxies: count_i32(input.proxies.total),
        proxies_in_sync: count_i32(input.proxies.in_sync),
        drain: input.scale.drain.as_ref().map(|d| DrainStatus {
            target_replicas: d.target,
            since: Time(d.since),
            ring_version: i64::try_from(d.ring_version).unwrap_or(i64::MAX),
        }),
        observed_generation: input.generation,
        conditions,
    }
}

/// `Ready`: nodes ready, a ring with active members, proxies available and in sync — the first
/// that fails is the reason.
fn ready_condition<'a>(input: &StatusInput<'_>) -> ConditionUpdate<'a> {
    let version = input.ring.version;
    let active = input.ring.active_members().count();
    let (status, reason, message) = if input.ready_replicas < input.desired {
        (
            false,
            "NodesNotReady",
            format!("{}/{} nodes ready", input.ready_replicas, input.desired),
        )
    } else if input.desired > 0 && active == 0 {
        (
            false,
            "RingEmpty",
            format!("ring {version} has no active member"),
        )
    } else if input.proxies_available < input.proxies_desired {
        (
            false,
            "ProxiesNotAvailable",
            format!(
                "{}/{} proxies available",
                input.proxies_available, input.proxies_desired
            ),
        )
    } else if input.proxies.in_sync != input.proxies.total {
        (false, "ProxiesNotInSync", proxies_in_sync_message(input))
    } else {
        (
            true,
            "Ready",
            format!(
                "{} nodes ready, ring {version} with {active} active members, {} proxies in sync",
                input.ready_replicas, input.proxies.total
            ),
        )
    };
    ConditionUpdate {
        type_: CONDITION_READY,
        status,
        reason,
        message,
    }
}

fn proxies_in_sync_message(input: &StatusInput<'_>) -> String {
    format!(
        "{}/{} proxies run ring {}",
        input.proxies.in_sync, input.proxies.total, input.ring.version
    )
}

/// `Progressing`: what the scaling step is doing, or what a steady cluster still waits for.
fn progressing_condition<'a>(input: &StatusInput<'_>) -> ConditionUpdate<'a> {
    let desired = input.desired;
    let (status, reason, message) = match &input.scale.step {
        Step::Create => (
            true,
            "Creating",
            "creating the node StatefulSet".to_string(),
        ),
        Step::ScaleUp { from } => (
            true,
            "ScalingUp",
            format!("scaling nodes from {from} to {desired}"),
        ),
        Step::StartDrain => (
            true,
            "Draining",
            format!("draining nodes down to {desired}"),
        ),
        Step::WaitForProxies { acked, total } => (
            true,
            "Draining",
            format!("waiting for proxies to apply the drain ring: {acked}/{total}"),
        ),
        Step::WaitForDrainTimeout { remaining_seconds } => (
            true,
            "Draining",
            format!("proxies reset the leaving nodes' clients; {remaining_seconds}s of drain left"),
        ),
        Step::FinishDrain { from } => (
            true,
            "ScalingDown",
            format!("scaling nodes from {from} to {desired}"),
        ),
        Step::ForceDrain { from, acked, total } => (
            true,
            "ScalingDown",
            format!(
                "drain forced after waiting for proxies ({acked}/{total} acked); scaling nodes from {from} to {desired}"
            ),
        ),
        Step::CancelDrain => (
            true,
            "DrainCancelled",
            "replicas went back up; the draining members are active again".to_string(),
        ),
        Step::Steady => return steady_progress(input),
    };
    ConditionUpdate {
        type_: CONDITION_PROGRESSING,
        status,
        reason,
        message,
    }
}

/// `Progressing` of a cluster with nothing to scale: still waiting for nodes or proxies, or
/// stable.
fn steady_progress<'a>(input: &StatusInput<'_>) -> ConditionUpdate<'a> {
    let (status, reason, message) = if input.ready_replicas < input.desired {
        (
            true,
            "WaitingForNodes",
            format!("{}/{} nodes ready", input.ready_replicas, input.desired),
        )
    } else if input.proxies.in_sync != input.proxies.total {
        (true, "WaitingForProxies", proxies_in_sync_message(input))
    } else {
        (false, "Stable", "nothing to do".to_string())
    };
    ConditionUpdate {
        type_: CONDITION_PROGRESSING,
        status,
        reason,
        message,
    }
}

fn count_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The status when the spec cannot be reconciled: the previous status with `Degraded=True`
/// (and `Ready=False` if nothing was ever reconciled), so the ring bookkeeping survives.
pub fn degraded_status(
    previous: Option<&WsClusterStatus>,
    generation: Option<i64>,
    reason: &str,
    message: String,
    now: Timestamp,
) -> WsClusterStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let old = status.conditions.clone();
    set_condition(
        &mut status.conditions,
        &old,
        ConditionUpdate {
            type_: CONDITION_DEGRADED,
            status: true,
            reason,
            message: message.clone(),
        },
        generation,
        now,
    );
    if !old.iter().any(|c| c.type_ == CONDITION_READY) {
        set_condition(
            &mut status.conditions,
            &old,
            ConditionUpdate {
                type_: CONDITION_READY,
                status: false,
                reason,
                message,
            },
            generation,
            now,
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::Drain;
    use wscluster_ring::Member;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn ring(active: usize, draining: usize) -> RingSnapshot {
        let mut members: Vec<Member> = (0..active)
            .map(|i| Member::active(format!("chat-node-{i}"), format!("10.0.0.{i}:8080")))
            .collect();
        members.extend((active..active + draining).map(|i| {
            Member::active(format!("chat-node-{i}"), format!("10.0.0.{i}:8080")).draining()
        }));
        RingSnapshot::new("default/chat", 5, members)
    }

    fn plan(step: Step) -> ScalePlan {
        ScalePlan {
            step,
            statefulset_replicas: 3,
            active_below: 3,
            drain: None,
        }
    }

    fn cond<'a>(s: &'a WsClusterStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    fn input<'a>(
        ring: &'a RingSnapshot,
        scale: &'a ScalePlan,
        ready: i32,
        proxies: ProxySync,
    ) -> StatusInput<'a> {
        StatusInput {
            generation: Some(2),
            desired: 3,
            replicas: 3,
            ready_replicas: ready,
            selector: "a=b".into(),
            ring,
            proxies,
            proxies_desired: 2,
            proxies_available: 2,
            scale,
            previous: None,
            now: t(0),
        }
    }

    #[test]
    fn proxies_count_only_connected_ones_at_or_above_the_version() {
        let s = ProxySync::count(
            [
                (true, Some(5)),
                (true, Some(6)),
                (true, Some(4)),
                (true, None),
                (false, Some(5)),
            ],
            5,
        );
        assert_eq!(
            s,
            ProxySync {
                total: 4,
                in_sync: 2
            }
        );
    }

    #[test]
    fn a_fully_ready_cluster_is_ready_and_stable() {
        let r = ring(3, 0);
        let p = plan(Step::Steady);
        let s = compute_status(&input(
            &r,
            &p,
            3,
            ProxySync {
                total: 2,
                in_sync: 2,
            },
        ));
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(
            (s.ring_version, s.members.len(), s.proxies_in_sync),
            (5, 3, 2)
        );
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.selector, "a=b");
    }

    #[test]
    fn missing_nodes_or_lagging_proxies_make_it_not_ready_with_a_reason() {
        let r = ring(3, 0);
        let p = plan(Step::Steady);
        let s = compute_status(&input(
            &r,
            &p,
            2,
            ProxySync {
                total: 2,
                in_sync: 2,
            },
        ));
        assert_eq!(cond(&s, "Ready").reason, "NodesNotReady");
        assert_eq!(cond(&s, "Ready").message, "2/3 nodes ready");
        assert_eq!(cond(&s, "Progressing").reason, "WaitingForNodes");
        let s = compute_status(&input(
            &r,
            &p,
            3,
            ProxySync {
                total: 2,
                in_sync: 1,
            },
        ));
        assert_eq!(cond(&s, "Ready").reason, "ProxiesNotInSync");
        assert_eq!(cond(&s, "Ready").message, "1/2 proxies run ring 5");
    }

    #[test]
    fn unavailable_proxies_make_it_not_ready() {
        let r = ring(3, 0);
        let p = plan(Step::Steady);
        let mut i = input(&r, &p, 3, ProxySync::default());
        i.proxies_available = 1;
        let s = compute_status(&i);
        assert_eq!(cond(&s, "Ready").reason, "ProxiesNotAvailable");
        assert_eq!(cond(&s, "Ready").message, "1/2 proxies available");
    }

    #[test]
    fn a_drain_is_progressing_and_recorded() {
        let r = ring(3, 1);
        let mut p = plan(Step::WaitForProxies { acked: 1, total: 2 });
        p.drain = Some(Drain {
            target: 3,
            since: t(-10),
            ring_version: 5,
        });
        let s = compute_status(&input(
            &r,
            &p,
            4,
            ProxySync {
                total: 2,
                in_sync: 1,
            },
        ));
        assert_eq!(cond(&s, "Progressing").reason, "Draining");
        let d = s.drain.expect("drain");
        assert_eq!((d.target_replicas, d.ring_version), (3, 5));
        assert_eq!(
            s.members
                .iter()
                .filter(|m| m.state == crate::crd::MemberStateStatus::Draining)
                .count(),
            1
        );
    }

    #[test]
    fn transition_times_change_only_when_the_status_flips() {
        let r = ring(3, 0);
        let p = plan(Step::Steady);
        let first = compute_status(&input(&r, &p, 3, ProxySync::default()));
        let mut later = input(&r, &p, 3, ProxySync::default());
        later.previous = Some(&first);
        later.now = t(100);
        let second = compute_status(&later);
        assert_eq!(
            cond(&second, "Ready").last_transition_time,
            cond(&first, "Ready").last_transition_time
        );
        let mut flipped = input(&r, &p, 1, ProxySync::default());
        flipped.previous = Some(&second);
        flipped.now = t(200);
        let third = compute_status(&flipped);
        assert_eq!(cond(&third, "Ready").last_transition_time, Time(t(200)));
    }

    #[test]
    fn degraded_keeps_the_ring_bookkeeping() {
        let r = ring(3, 0);
        let p = plan(Step::Steady);
        let ok = compute_status(&input(&r, &p, 3, ProxySync::default()));
        let bad = degraded_status(
            Some(&ok),
            Some(3),
            "SecretNotFound",
            "secret x does not exist".into(),
            t(5),
        );
        assert_eq!(bad.ring_version, 5);
        assert_eq!(bad.members, ok.members);
        let d = cond(&bad, "Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "SecretNotFound")
        );
        let fresh = degraded_status(None, Some(1), "SecretNotFound", "m".into(), t(5));
        assert_eq!(cond(&fresh, "Ready").status, "False");
    }
}
