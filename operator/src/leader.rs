//! Leader election through a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! both publish rings.
//!
//! kube-rs has none built in. `kube-lease-manager` exists, but it is one more dependency tree
//! for a few dozen lines, and the rule we need is simple enough to test as a pure function:
//!
//! * [`decide`] reads the Lease and says: create it, take it (free, expired, or already ours:
//!   a renewal), or wait for its holder.
//! * Expiry is judged as client-go judges it, by this process's own clock only: an
//!   [`Observer`] remembers when this process last saw the Lease record change (holder, renew
//!   time, resource version) on its monotonic clock, and another holder's Lease counts as expired
//!   only once it has gone unchanged for its duration *as observed here*. The `renewTime` a
//!   holder writes is never compared with the local wall clock, so clock skew between machines
//!   cannot make two candidates lead at once (`renewTime` is still written, for people).
//! * [`try_acquire`] acts on that with optimistic concurrency: a create, or a replace carrying
//!   the `resourceVersion` it read, so of two candidates racing for an expired Lease exactly
//!   one wins and the other gets `409 Conflict`.
//! * [`LeaderElector::run`] loops: until leader, try every [`RETRY_PERIOD`]; once leader, renew
//!   every [`RENEW_PERIOD`]. If a renewal does not succeed within [`LEASE_DURATION`] of the
//!   last one, leadership is lost; the caller stops the controller (and exits, so Kubernetes
//!   restarts it as a fresh candidate) — it never keeps publishing on a Lease it may have lost.
//!   On shutdown the leader releases the Lease so a standby takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// How long a Lease holds without renewal. 15 s is the Kubernetes components' default:
/// a crashed leader is replaced within 15 s, and a slow API server has time to answer
/// two renewals.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews: a third of the duration, so two renewals may fail in a row.
pub const RENEW_PERIOD: Duration = Duration::from_secs(5);
/// How often a candidate retries.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What to do about the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it.
    Create,
    /// Write ourselves as holder (renewal if `renewal`).
    Take {
        /// We already hold it.
        renewal: bool,
    },
    /// Someone else holds an unexpired Lease.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Decides from the Lease (or its absence), our identity, and how long the Lease's record has
/// gone unchanged as this process observed it ([`Observer::observe`]).
pub fn decide(lease: Option<&Lease>, identity: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            Decision::Take { renewal: false }
        } else {
            Decision::Create
        };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Take { renewal: true };
    }
    if holder.is_empty() {
        return Decision::Take { renewal: false };
    }
    if unchanged_for < lease_duration(spec) {
        Decision::Wait {
            holder: holder.to_string(),
        }
    } else {
        Decision::Take { renewal: false }
    }
}

/// The Lease's own duration, or ours when it states none (or nonsense).
fn lease_duration(spec: &LeaseSpec) -> Duration {
    spec.lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(LEASE_DURATION, Duration::from_secs)
}

/// What identifies one write of a Lease: any renewal changes at least one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    /// `metadata.resourceVersion`: changes on every write.
    resource_version: Option<String>,
    /// `spec.holderIdentity`.
    holder: Option<String>,
    /// `spec.renewTime`, as written by the holder's clock (compared only for change).
    renew_time: Option<Timestamp>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.as_ref();
        Record {
            resource_version: lease.metadata.resource_version.clone(),
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        }
    }
}

/// When this process last saw the Lease's record change, on its own monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    /// The record last seen and when it was first seen.
    last: Option<(Record, Instant)>,
}

impl Observer {
    /// Records the Lease as read at `now`; answers how long its record has been unchanged as
    /// seen by this process (zero for a record seen for the first time, or no Lease).
    pub fn observe(&mut self, lease: Option<&Lease>, now: Instant) -> Duration {
        let Some(record) = lease.map(Record::of) else {
            self.last = None;
            return Duration::ZERO;
        };
        match &self.last {
            Some((seen, since)) if *seen == record => now.saturating_duration_since(*since),
            _ => {
                self.last = Some((record, now));
                Duration::ZERO
            }
        }
    }
}

/// Where the Lease is and who we are.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name (`--lease-name`).
    pub name: String,
    /// Our identity, the pod name (`--pod-name`).
    pub identity: String,
}

fn lease_spec(
    identity: Option<&str>,
    now: Timestamp,
    previous: Option<&LeaseSpec>,
    renewal: bool,
) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: identity.map(str::to_string),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: if renewal {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if renewal {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// The clocks of one attempt: `wall` is what is written into the Lease (for people), `monotonic`
/// is what expiry is judged by.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// This machine's wall clock, written as `acquireTime` / `renewTime`.
    pub wall: Timestamp,
    /// This process's monotonic clock, for [`Observer`].
    pub monotonic: Instant,
}

impl Clocks {
    /// Both clocks now.
    pub fn now() -> Clocks {
        Clocks {
            wall: Timestamp::now(),
            monotonic: Instant::now(),
        }
    }
}

/// One attempt to become (or stay) leader. `Ok(true)`: we hold the Lease until
/// `now + LEASE_DURATION`. A lost race is `Ok(false)`, not an error.
pub async fn try_acquire(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observer: &mut Observer,
    clocks: Clocks,
) -> Result<bool> {
    let now = clocks.wall;
    let current = api.get_opt(&config.name).await?;
    let unchanged_for = observer.observe(current.as_ref(), clocks.monotonic);
    let result = match decide(current.as_ref(), &config.identity, unchanged_for) {
        Decision::Wait { .. } => return Ok(false),
        Decision::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(lease_spec(Some(&config.identity), now, None, false)),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Decision::Take { renewal } => {
            let Some(mut lease) = current else {
                return Ok(false);
            };
            lease.spec = Some(lease_spec(
                Some(&config.identity),
                now,
                lease.spec.as_ref(),
                renewal,
            ));
            // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Gives the Lease up (holder cleared) if we hold it, so a standby need not wait for expiry.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig, now: Timestamp) -> Result<()> {
    if let Some(mut lease) = api.get_opt(&config.name).await?
        && lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(config.identity.as_str())
    {
        let mut spec = lease_spec(None, now, lease.spec.as_ref(), true);
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        api.replace(&config.name, &PostParams::default(), &lease)
            .await?;
    }
    Ok(())
}

/// Runs the election loop.
pub struct LeaderElector {
    /// The Lease API in the operator's namespace.
    pub api: Api<Lease>,
    /// Lease name and identity.
    pub config: LeaseConfig,
}

impl LeaderElector {
    /// Campaigns until leader, then renews. `leader` turns true when elected and false when
    /// leadership is lost; after a loss this returns (the caller shuts down). Returns when
    /// `shutdown` fires, releasing the Lease if held.
    pub async fn run(self, leader: watch::Sender<bool>, shutdown: CancellationToken) {
        let mut last_renewal: Option<tokio::time::Instant> = None;
        let mut observer = Observer::default();
        loop {
            let attempt = try_acquire(&self.api, &self.config, &mut observer, Clocks::now()).await;
            match attempt {
                Ok(true) => {
                    if last_renewal.is_none() {
                        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                        leader.send_replace(true);
                    }
                    last_renewal = Some(tokio::time::Instant::now());
                }
                Ok(false) => {
                    if last_renewal.is_some() {
                        tracing::error!("leadership lost: another candidate holds the lease");
                        leader.send_replace(false);
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lease request failed"),
            }
            if let Some(t) = last_renewal
                && t.elapsed() >= LEASE_DURATION
            {
                tracing::error!("leadership lost: could not renew the lease in time");
                leader.send_replace(false);
                return;
            }
            let period = if last_renewal.is_some() {
                RENEW_PERIOD
            } else {
                RETRY_PERIOD
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
        }
        if last_renewal.is_some() {
            leader.send_replace(false);
            if let Err(e) = release(&self.api, &self.config, Timestamp::now()).await {
                tracing::warn!(error = %e, "releasing the lease failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("valid")
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(t(renewed))),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "a", Duration::ZERO), Decision::Create);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&lease(Some("a"), 0)), "a", secs(100)),
            Decision::Take { renewal: true }
        );
    }

    #[test]
    fn another_holders_fresh_lease_is_respected() {
        assert_eq!(
            decide(Some(&lease(Some("b"), 0)), "a", secs(14)),
            Decision::Wait { holder: "b".into() }
        );
    }

    #[test]
    fn an_expired_or_released_lease_is_taken() {
        assert_eq!(
            decide(Some(&lease(Some("b"), 0)), "a", secs(15)),
            Decision::Take { renewal: false }
        );
        assert_eq!(
            decide(Some(&lease(None, 0)), "a", secs(1)),
            Decision::Take { renewal: false }
        );
    }

    /// A Lease written by the holder's clock, as another machine reads it.
    fn renewal(holder: &str, holder_clock: Timestamp, version: u64) -> Lease {
        let mut l = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(lease_spec(Some(holder), holder_clock, None, true)),
        };
        l.metadata.resource_version = Some(version.to_string());
        l
    }

    #[test]
    fn candidates_whose_clocks_differ_by_more_than_the_lease_never_both_lead() {
        // A leads and renews every RENEW_PERIOD, writing renewTime by its own clock; B's wall
        // clock runs an hour ahead, so by B's clock every renewal A writes looks an hour old.
        let skew = 3600;
        let start = Instant::now();
        let mut b = Observer::default();
        let mut version = 1;
        let mut lease = renewal("a", t(0), version);
        for tick in 0..60u64 {
            let elapsed = tick * RETRY_PERIOD.as_secs();
            if elapsed > 0 && elapsed % RENEW_PERIOD.as_secs() < RETRY_PERIOD.as_secs() {
                version += 1;
                lease = renewal("a", t(i64::try_from(elapsed).unwrap_or(0)), version);
            }
            let b_wall = t(i64::try_from(elapsed).unwrap_or(0) + skew);
            let renewed = lease
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0);
            assert!(
                renewed.is_some_and(|r| b_wall.as_second() >= r.as_second() + 15),
                "the skew makes A's renewals look expired by B's wall clock"
            );
            let unchanged = b.observe(Some(&lease), start + secs(elapsed));
            assert_eq!(
                decide(Some(&lease), "b", unchanged),
                Decision::Wait { holder: "a".into() },
                "B must not take A's renewed lease at {elapsed}s"
            );
        }
    }

    #[test]
    fn a_holder_that_stops_renewing_is_replaced_one_lease_duration_after_its_last_write() {
        let start = Instant::now();
        let mut b = Observer::default();
        let lease = renewal("a", t(0), 7);
        for elapsed in [0, 2, 8, 14] {
            let unchanged = b.observe(Some(&lease), start + secs(elapsed));
            assert!(matches!(
                decide(Some(&lease), "b", unchanged),
                Decision::Wait { .. }
            ));
        }
        let unchanged = b.observe(Some(&lease), start + secs(15));
        assert_eq!(
            decide(Some(&lease), "b", unchanged),
            Decision::Take { renewal: false }
        );
        // A new write (a renewal that finally got through) starts the observation again.
        let renewed = renewal("a", t(16), 8);
        assert_eq!(b.observe(Some(&renewed), start + secs(16)), Duration::ZERO);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewal_keeps_the_acquire_time() {
        let prev = lease_spec(Some("b"), t(0), None, false);
        assert_eq!(prev.lease_transitions, Some(1));
        let renewed = lease_spec(Some("b"), t(5), Some(&prev), true);
        assert_eq!(renewed.acquire_time, Some(MicroTime(t(0))));
        assert_eq!(renewed.lease_transitions, Some(1));
        let taken = lease_spec(Some("a"), t(30), Some(&renewed), false);
        assert_eq!(taken.acquire_time, Some(MicroTime(t(30))));
        assert_eq!(taken.lease_transitions, Some(2));
    }
}

#[cfg(test)]
mod api_tests {
    //! The election's API requests against the mock server.

    use http::{Method, StatusCode};
    use kube::Api;
    use serde_json::json;

    use super::*;
    use crate::fixtures::{FakeHub, TestClock, mock_context};

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/leader";

    fn config() -> LeaseConfig {
        LeaseConfig {
            name: "leader".into(),
            identity: "op-a".into(),
        }
    }

    fn lease_json(holder: &str, renewed: &str) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "leader", "namespace": "ops", "resourceVersion": "41"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                        "renewTime": renewed, "leaseTransitions": 3}})
    }

    fn clocks() -> Clocks {
        Clocks {
            wall: "2027-01-15T08:00:00Z".parse().expect("time"),
            monotonic: Instant::now() + LEASE_DURATION,
        }
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_with_us_as_holder() {
        let (ctx, mut server) = mock_context(FakeHub::new(), TestClock::new());
        let api: Api<Lease> = Api::namespaced(ctx.client.clone(), "ops");
        let config = config();
        let mut observer = Observer::default();
        let clocks = clocks();
        let (won, ()) = tokio::join!(try_acquire(&api, &config, &mut observer, clocks), async {
            server.expect(Method::GET, LEASE).await.not_found();
            let create = server
                .expect(
                    Method::POST,
                    "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
                )
                .await;
            assert_eq!(create.body["spec"]["holderIdentity"], "op-a");
            assert_eq!(create.body["spec"]["leaseDurationSeconds"], 15);
            let body = create.body.clone();
            create.respond(StatusCode::CREATED, &body);
        });
        assert!(won.expect("no error"));
    }

    #[tokio::test]
    async fn a_fresh_lease_of_another_replica_is_left_alone() {
        let (ctx, mut server) = mock_context(FakeHub::new(), TestClock::new());
        let api: Api<Lease> = Api::namespaced(ctx.client.clone(), "ops");
        let config = config();
        let mut observer = Observer::default();
        let clocks = clocks();
        let (won, ()) = tokio::join!(try_acquire(&api, &config, &mut observer, clocks), async {
            server.expect(Method::GET, LEASE).await.respond(
                StatusCode::OK,
                &lease_json("op-b", "2027-01-15T07:59:55.000000Z"),
            );
        });
        assert!(!won.expect("no error"));
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_with_its_resource_version_and_a_lost_race_is_no_error() {
        let (ctx, mut server) = mock_context(FakeHub::new(), TestClock::new());
        let api: Api<Lease> = Api::namespaced(ctx.client.clone(), "ops");
        let config = config();
        // This process has watched the same record for longer than its duration.
        let stale: Lease =
            serde_json::from_value(lease_json("op-b", "2027-01-15T07:59:00.000000Z"))
                .expect("lease");
        let mut observer = Observer::default();
        let clocks = clocks();
        observer.observe(Some(&stale), clocks.monotonic - LEASE_DURATION);
        let (won, ()) = tokio::join!(try_acquire(&api, &config, &mut observer, clocks), async {
            server.expect(Method::GET, LEASE).await.respond(
                StatusCode::OK,
                &lease_json("op-b", "2027-01-15T07:59:00.000000Z"),
            );
            let put = server.expect(Method::PUT, LEASE).await;
            assert_eq!(put.body["metadata"]["resourceVersion"], "41");
            assert_eq!(put.body["spec"]["holderIdentity"], "op-a");
            assert_eq!(put.body["spec"]["leaseTransitions"], 4);
            put.respond(
                StatusCode::CONFLICT,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "the object has been modified", "reason": "Conflict", "code": 409}),
            );
        });
        assert!(!won.expect("a conflict is a lost race, not an error"));
    }
}
