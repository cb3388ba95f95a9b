//! The ordered scale-down state machine. Pure: time is an argument.
//!
//! Scale-up raises the StatefulSet at once; new pods join the ring when Ready (membership does
//! that). Scale-down goes through a drain recorded in status (`status.drain`), so an operator
//! restart continues it:
//!
//! ```text
//!   spec.replicas < sts.replicas ──▶ StartDrain: ordinals ≥ target become `draining` in a new
//!        │                           ring version; the StatefulSet keeps its pods
//!        ▼
//!   WaitForProxies ── every connected proxy acked the drain's ring version ──▶
//!   WaitForDrainTimeout ── drainTimeoutSeconds since the start, or the leaving members are
//!        │                  empty ──▶
//!        ▼
//!   FinishDrain: the StatefulSet goes down to the target; the drain record is cleared
//! ```
//!
//! A proxy that stays connected but never acknowledges would hold a drain forever (and block an
//! HPA's scale-down); [`ACK_WAIT_LIMIT_SECONDS`] after the drain timeout the drain finishes
//! anyway ([`Step::ForceDrain`], reported as a Warning Event).
//!
//! A change of `spec.replicas` during a drain restarts it with the new target, or cancels it
//! when the target is at or above the StatefulSet's size (the members become active again).

use k8s_openapi::jiff::Timestamp;

/// How long past the drain timeout a drain waits for lagging proxies before it finishes
/// anyway. Five minutes: far longer than a healthy proxy takes to apply a ring (milliseconds)
/// or to reconnect after an operator restart (seconds), short enough that a stuck proxy does
/// not block scale-down for good.
pub const ACK_WAIT_LIMIT_SECONDS: i64 = 300;

/// A drain in progress, as recorded in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drain {
    /// Replicas the StatefulSet goes down to.
    pub target: i32,
    /// When the drain started.
    pub since: Timestamp,
    /// First ring version with the leaving members draining (0 until published).
    pub ring_version: u64,
}

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct ScaleInput {
    /// `spec.replicas`.
    pub desired: i32,
    /// The StatefulSet's `spec.replicas`, or `None` if it does not exist yet.
    pub current: Option<i32>,
    /// The drain recorded in status.
    pub drain: Option<Drain>,
    /// Connected proxies.
    pub proxies_total: usize,
    /// Connected proxies whose applied version is at least the drain's ring version.
    pub proxies_acked: usize,
    /// Whether the leaving members are known to hold no connections (lets a drain end before
    /// its timeout).
    pub leaving_empty: bool,
    /// `spec.drainTimeoutSeconds`.
    pub drain_timeout_seconds: i64,
    /// Now.
    pub now: Timestamp,
}

/// What happens this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to change.
    Steady,
    /// The StatefulSet is created with the desired replicas.
    Create,
    /// The StatefulSet grows.
    ScaleUp {
        /// Replicas before.
        from: i32,
    },
    /// A drain starts: leaving members become draining.
    StartDrain,
    /// Waiting for proxies to apply the drain's ring.
    WaitForProxies {
        /// Proxies that applied it.
        acked: usize,
        /// Connected proxies.
        total: usize,
    },
    /// Waiting for the drain timeout.
    WaitForDrainTimeout {
        /// Seconds left.
        remaining_seconds: i64,
    },
    /// The drain is done: the StatefulSet shrinks.
    FinishDrain {
        /// Replicas before.
        from: i32,
    },
    /// The drain is done although some proxies never acknowledged its ring.
    ForceDrain {
        /// Replicas before.
        from: i32,
        /// Proxies that applied it.
        acked: usize,
        /// Connected proxies.
        total: usize,
    },
    /// The drain is abandoned because `spec.replicas` went back up.
    CancelDrain,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePlan {
    /// What happens.
    pub step: Step,
    /// The StatefulSet's replicas to apply.
    pub statefulset_replicas: i32,
    /// Members with an ordinal below this are active; the rest draining.
    pub active_below: i32,
    /// The drain to record in status afterwards (`None` clears it). A new drain has
    /// `ring_version` 0: the controller fills in the version it publishes.
    pub drain: Option<Drain>,
}

/// Decides the next step of scaling.
pub fn plan_scale(input: &ScaleInput) -> ScalePlan {
    let desired = input.desired.max(0);
    let Some(current) = input.current else {
        return settled(Step::Create, desired);
    };
    if desired >= current {
        // A recorded drain to exactly `desired` with the StatefulSet already there is a finished
        // drain seen through a status that lags our own write, not a cancellation.
        let step = if input.drain.as_ref().is_some_and(|d| d.target < desired) {
            Step::CancelDrain
        } else if desired > current {
            Step::ScaleUp { from: current }
        } else {
            Step::Steady
        };
        return settled(step, desired);
    }
    // desired < current: drain first.
    match &input.drain {
        Some(d) if d.target == desired => continue_drain(input, d, current, desired),
        _ => ScalePlan {
            step: Step::StartDrain,
            statefulset_replicas: current,
            active_below: desired,
            drain: Some(Drain {
                target: desired,
                since: input.now,
                ring_version: 0,
            }),
        },
    }
}

/// A plan with the StatefulSet at `desired`, every member active and no drain recorded.
fn settled(step: Step, desired: i32) -> ScalePlan {
    ScalePlan {
        step,
        statefulset_replicas: desired,
        active_below: desired,
        drain: None,
    }
}

/// The next step of the drain to `desired` already under way: wait for the proxies to apply its
/// ring, then for the timeout (or empty leaving members), then shrink; or give up waiting for
/// proxies [`ACK_WAIT_LIMIT_SECONDS`] past the timeout.
fn continue_drain(input: &ScaleInput, drain: &Drain, current: i32, desired: i32) -> ScalePlan {
    let hold = |step| ScalePlan {
        step,
        statefulset_replicas: current,
        active_below: desired,
        drain: Some(drain.clone()),
    };
    let elapsed = input.now.as_second() - drain.since.as_second();
    if drain.ring_version == 0 || input.proxies_acked < input.proxies_total {
        if drain.ring_version != 0
            && elapsed >= input.drain_timeout_seconds + ACK_WAIT_LIMIT_SECONDS
        {
            let step = Step::ForceDrain {
                from: current,
                acked: input.proxies_acked,
                total: input.proxies_total,
            };
            return settled(step, desired);
        }
        return hold(Step::WaitForProxies {
            acked: input.proxies_acked,
            total: input.proxies_total,
        });
    }
    let remaining = input.drain_timeout_seconds - elapsed;
    if remaining > 0 && !input.leaving_empty {
        return hold(Step::WaitForDrainTimeout {
            remaining_seconds: remaining,
        });
    }
    settled(Step::FinishDrain { from: current }, desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn input(desired: i32, current: Option<i32>) -> ScaleInput {
        ScaleInput {
            desired,
            current,
            drain: None,
            proxies_total: 2,
            proxies_acked: 0,
            leaving_empty: false,
            drain_timeout_seconds: 30,
            now: t(0),
        }
    }

    fn drain(target: i32, since: i64, version: u64) -> Option<Drain> {
        Some(Drain {
            target,
            since: t(since),
            ring_version: version,
        })
    }

    #[test]
    fn a_missing_statefulset_is_created_with_the_desired_replicas() {
        let p = plan_scale(&input(3, None));
        assert_eq!(
            (p.step, p.statefulset_replicas, p.active_below),
            (Step::Create, 3, 3)
        );
    }

    #[test]
    fn scale_up_raises_the_statefulset_at_once() {
        let p = plan_scale(&input(5, Some(3)));
        assert_eq!(p.step, Step::ScaleUp { from: 3 });
        assert_eq!(
            (p.statefulset_replicas, p.active_below, p.drain),
            (5, 5, None)
        );
    }

    #[test]
    fn equal_replicas_are_steady() {
        assert_eq!(plan_scale(&input(3, Some(3))).step, Step::Steady);
    }

    #[test]
    fn scale_down_starts_a_drain_and_keeps_the_pods() {
        let p = plan_scale(&input(2, Some(4)));
        assert_eq!(p.step, Step::StartDrain);
        assert_eq!((p.statefulset_replicas, p.active_below), (4, 2));
        assert_eq!(p.drain, drain(2, 0, 0));
    }

    #[test]
    fn scale_down_drains_before_deleting_pods_until_every_proxy_acked() {
        let mut i = input(2, Some(4));
        i.drain = drain(2, 0, 7);
        i.proxies_acked = 1;
        i.now = t(300);
        let p = plan_scale(&i);
        assert_eq!(p.step, Step::WaitForProxies { acked: 1, total: 2 });
        assert_eq!(p.statefulset_replicas, 4);
        assert_eq!(p.drain, drain(2, 0, 7));
    }

    #[test]
    fn a_proxy_that_never_acks_holds_the_drain_only_up_to_the_limit() {
        let mut i = input(2, Some(4));
        i.drain = drain(2, 0, 7);
        i.proxies_acked = 1;
        i.now = t(30 + ACK_WAIT_LIMIT_SECONDS - 1);
        assert!(matches!(plan_scale(&i).step, Step::WaitForProxies { .. }));
        i.now = t(30 + ACK_WAIT_LIMIT_SECONDS);
        let p = plan_scale(&i);
        assert_eq!(
            p.step,
            Step::ForceDrain {
                from: 4,
                acked: 1,
                total: 2
            }
        );
        assert_eq!((p.statefulset_replicas, p.drain), (2, None));
    }

    #[test]
    fn a_drain_whose_ring_was_never_published_waits() {
        let mut i = input(2, Some(4));
        i.drain = drain(2, 0, 0);
        i.proxies_acked = 2;
        i.now = t(100);
        assert!(matches!(plan_scale(&i).step, Step::WaitForProxies { .. }));
    }

    #[test]
    fn acked_proxies_still_wait_for_the_drain_timeout() {
        let mut i = input(2, Some(4));
        i.drain = drain(2, 0, 7);
        i.proxies_acked = 2;
        i.now = t(10);
        let p = plan_scale(&i);
        assert_eq!(
            p.step,
            Step::WaitForDrainTimeout {
                remaining_seconds: 20
            }
        );
        assert_eq!(p.statefulset_replicas, 4);
    }

    #[test]
    fn the_statefulset_shrinks_after_acks_and_timeout() {
        let mut i = input(2, Some(4));
        i.drain = drain(2, 0, 7);
        i.proxies_acked = 2;
        i.now = t(30);
        let p = plan_scale(&i);
        assert_eq!(p.step, Step::FinishDrain { from: 4 });
        assert_eq!((p.statefulset_replicas, p.drain), (2, None));
    }

    #[test]
    fn empty_leaving_members_end_the_drain_before_the_timeout() {
        let mut i = input(2, Some(4));
        i.drain = drain(2, 0, 7);
        i.proxies_acked = 2;
        i.leaving_empty = true;
        i.now = t(1);
        assert_eq!(plan_scale(&i).step, Step::FinishDrain { from: 4 });
    }

    #[test]
    fn with_no_proxies_connected_only_the_timeout_counts() {
        let mut i = input(2, Some(4));
        i.drain = drain(2, 0, 7);
        i.proxies_total = 0;
        i.proxies_acked = 0;
        i.now = t(29);
        assert!(matches!(
            plan_scale(&i).step,
            Step::WaitForDrainTimeout { .. }
        ));
        i.now = t(31);
        assert!(matches!(plan_scale(&i).step, Step::FinishDrain { .. }));
    }

    #[test]
    fn a_new_target_during_a_drain_restarts_it() {
        let mut i = input(1, Some(4));
        i.drain = drain(2, 0, 7);
        i.now = t(50);
        let p = plan_scale(&i);
        assert_eq!(p.step, Step::StartDrain);
        assert_eq!((p.active_below, p.drain), (1, drain(1, 50, 0)));
    }

    #[test]
    fn scaling_back_up_during_a_drain_cancels_it() {
        let mut i = input(4, Some(4));
        i.drain = drain(2, 0, 7);
        let p = plan_scale(&i);
        assert_eq!(p.step, Step::CancelDrain);
        assert_eq!(
            (p.statefulset_replicas, p.active_below, p.drain),
            (4, 4, None)
        );
    }

    #[test]
    fn a_finished_drain_seen_in_a_stale_status_is_not_a_cancellation() {
        let mut i = input(2, Some(2));
        i.drain = drain(2, 0, 7);
        let p = plan_scale(&i);
        assert_eq!(p.step, Step::Steady);
        assert_eq!((p.statefulset_replicas, p.drain), (2, None));
    }

    /// Over a small but complete domain: pods are only ever removed by a drain that was
    /// published, and then only after every proxy acked and the timeout passed or the leaving
    /// nodes were empty — or after the ack limit (forced). The ring always drains exactly the
    /// ordinals at or above `spec.replicas`.
    #[test]
    fn pods_are_never_removed_before_their_drain_completed() {
        let mut cases = 0;
        for desired in 0..5 {
            for current in std::iter::once(None).chain((0..5).map(Some)) {
                for target in [None, Some(0), Some(1), Some(2), Some(3)] {
                    for version in [0, 7] {
                        for (acked, total) in [(0, 0), (0, 2), (1, 2), (2, 2)] {
                            for elapsed in [0, 29, 30, 329, 330] {
                                for empty in [false, true] {
                                    let i = ScaleInput {
                                        desired,
                                        current,
                                        drain: target.and_then(|t| drain(t, 0, version)),
                                        proxies_total: total,
                                        proxies_acked: acked,
                                        leaving_empty: empty,
                                        drain_timeout_seconds: 30,
                                        now: t(elapsed),
                                    };
                                    let p = plan_scale(&i);
                                    cases += 1;
                                    assert_eq!(p.active_below, desired, "{i:?}");
                                    let Some(cur) = current else { continue };
                                    if p.statefulset_replicas < cur {
                                        let d = i.drain.as_ref().expect("a recorded drain");
                                        assert_eq!(d.target, desired, "{i:?}");
                                        assert_ne!(d.ring_version, 0, "{i:?}");
                                        let done = acked == total && (elapsed >= 30 || empty);
                                        let forced = elapsed >= 30 + ACK_WAIT_LIMIT_SECONDS;
                                        assert!(done || forced, "{i:?} -> {p:?}");
                                        assert_eq!(p.statefulset_replicas, desired);
                                    } else {
                                        assert!(
                                            p.statefulset_replicas == cur
                                                || p.statefulset_replicas == desired
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(cases > 10_000);
    }

    #[test]
    fn negative_replicas_are_treated_as_zero() {
        let p = plan_scale(&input(-1, None));
        assert_eq!(p.statefulset_replicas, 0);
    }
}
