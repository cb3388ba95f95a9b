//! Ring changes and what follows them: apply a new ring, find the moved connections, and reset
//! them at a paced rate; plus the idle sweep and the drain on shutdown.
//!
//! Pacing is a token bucket without burst (beyond a timer tick's worth): resets start
//! `1 / rate` apart. In `fixed` mode the rate is `ratePerSecond` and each client is told to
//! wait a `retryAfterMs` drawn uniformly from `[0, jitterMs]`. In `adaptive` mode (the
//! default) the rate comes from [`pace::Controller`], which watches the upgrades this proxy
//! routes while it resets (the reset clients coming back to their new owners) and stays
//! under `ratePerSecond`; `retryAfterMs` is drawn from `[0, min(jitterMs, the time the queue
//! still takes at that rate)]`, so the reconnects are spread over the wave and not past it.
//! Before each reset the pacer checks the key's owner under the newest ring again: a
//! connection whose owner came back (two quick ring changes) is left alone.

pub mod pace;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wscluster_ring::Ring;
use wscluster_ring::contract::ResetReason;

use crate::config::{PacingMode, ResetConfig};
use crate::registry::{Command, ConnControl, ConnView, Decision, decide, reason_leaving};
use crate::state::{Routing, Shared};

/// How late the pacer may fall behind its schedule and still catch up (start the resets it
/// owes at once): one tick of tokio's millisecond timer, so rates above 1,000/s are reached
/// although each sleep ends on a tick; later than that (a stall), the schedule starts afresh.
const MAX_LAG: Duration = Duration::from_millis(2);

/// A connection waiting to be reset.
#[derive(Debug)]
pub struct Queued {
    /// The connection (gone if it closed meanwhile).
    pub control: Weak<ConnControl>,
    /// The member it is connected to (the old owner).
    pub member: Arc<str>,
    /// Why.
    pub reason: ResetReason,
    /// The ring version that moved it.
    pub ring_version: u64,
}

/// The pacer's inbox: the queue, bounded by the number of live connections (each is queued at
/// most once per ring change and only while registered), and the upgrades seen while pacing.
#[derive(Debug, Default)]
pub struct ResetQueue {
    items: Mutex<VecDeque<Queued>>,
    notify: Notify,
    /// Whether a wave of resets is under way: upgrades are tallied only then, so the upgrade
    /// path takes no lock in the steady state.
    pacing: AtomicBool,
    /// The upgrades of the adaptive controller's current window.
    tally: Mutex<pace::UpgradeTally>,
}

impl ResetQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, pace::UpgradeTally> {
        self.tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds resets at the back.
    pub fn push_many(&self, items: Vec<Queued>) {
        if items.is_empty() {
            return;
        }
        self.lock().extend(items);
        self.pacing.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Notes an upgrade routed to `member` while a wave of resets is under way (no-op
    /// otherwise): switched after `latency`, or `refused`.
    pub fn note_upgrade(&self, member: &Arc<str>, latency: Duration, refused: bool) {
        if self.pacing.load(Ordering::Relaxed) {
            self.tally().note(member, latency, refused);
        }
    }

    /// The current window's verdict, starting the next.
    fn judge_window(&self, target: Duration) -> pace::Verdict {
        let mut window = self.tally().take();
        pace::judge(&mut window, target)
    }

    /// The wave is over: stop tallying, forget its window.
    fn end_wave(&self) {
        self.pacing.store(false, Ordering::Relaxed);
        self.tally().take();
    }

    fn pop(&self) -> Option<Queued> {
        self.lock().pop_front()
    }

    /// Resets waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One reset, reported to the old owner over RabbitMQ.
#[derive(Debug, Clone)]
pub struct ResetNote {
    /// The old owner.
    pub member: Arc<str>,
    /// The key.
    pub key: Box<str>,
    /// Why.
    pub reason: ResetReason,
    /// The ring version.
    pub ring_version: u64,
    /// What the client was told.
    pub retry_after_ms: u64,
}

/// Where reset notes go; a bounded channel to the bus publisher (a full channel drops the note
/// and counts an error rather than slowing resets).
#[derive(Debug, Clone)]
pub struct ResetSink(pub mpsc::Sender<ResetNote>);

/// What applying a ring did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The ring is in use; `queued` connections wait for a reset.
    Applied {
        /// The version now in use.
        version: u64,
        /// Connections queued for reset.
        queued: usize,
    },
    /// The ring was refused (older, same version, or another cluster).
    Ignored(String),
}

/// Makes `ring` current if it is newer, and queues the connections whose owner changed.
pub fn apply_ring(shared: &Shared, ring: Arc<Ring>) -> Applied {
    let old = shared.routing.load_full();
    if let Err(why) = check_successor(shared, &old, &ring) {
        return Applied::Ignored(why);
    }
    let version = ring.version();
    shared
        .routing
        .store(Arc::new(Routing::new(Arc::clone(&ring), &shared.metrics)));
    shared.metrics.ring_version.set(version as i64);
    if !old.known {
        return Applied::Applied { version, queued: 0 };
    }
    let started = Instant::now();
    let queued = moved_connections(shared, &old.ring, &ring);
    let scan = started.elapsed();
    shared
        .metrics
        .reset_scan_seconds
        .observe(scan.as_secs_f64());
    let count = queued.len();
    shared.resets.push_many(queued);
    shared.metrics.reset_queue.set(shared.resets.len() as i64);
    info!(
        version,
        moved = count,
        live = shared.registry.len(),
        scan_us = scan.as_micros() as u64,
        "ring applied"
    );
    Applied::Applied {
        version,
        queued: count,
    }
}

/// Whether `ring` may replace the routing in use, `old`: same cluster, newer version. The
/// reason (also counted) if not.
fn check_successor(shared: &Shared, old: &Routing, ring: &Ring) -> Result<(), String> {
    if ring.snapshot().cluster_id != shared.cluster_id {
        shared.metrics.error("ring-wrong-cluster");
        return Err(format!(
            "ring is for cluster {:?}, this proxy serves {:?}",
            ring.snapshot().cluster_id,
            shared.cluster_id
        ));
    }
    if old.known && ring.version() <= old.ring.version() {
        shared.metrics.error("ring-not-newer");
        return Err(format!(
            "ring version {} is not newer than {}",
            ring.version(),
            old.ring.version()
        ));
    }
    Ok(())
}

/// Scans the registry once when `new` replaces `old`: the connections whose owner changed are
/// marked and returned for the pacer; the others are confirmed under `new`'s version.
fn moved_connections(shared: &Shared, old: &Ring, new: &Ring) -> Vec<Queued> {
    let version = new.version();
    let diff = old.diff(new);
    let mut queued = Vec::new();
    shared.registry.for_each(|entry| {
        if entry.queued {
            return;
        }
        let view = ConnView {
            hash: entry.control.hash,
            member: &entry.member,
            version: entry.version,
        };
        match decide(old, new, &diff, view) {
            Decision::Keep => entry.version = version,
            Decision::Reset(reason) => {
                entry.queued = true;
                queued.push(Queued {
                    control: Arc::downgrade(&entry.control),
                    member: Arc::clone(&entry.member),
                    reason,
                    ring_version: version,
                });
            }
        }
    });
    queued
}

/// For a connection just registered under `version`: if a newer ring was applied meanwhile and
/// moved its key, queue it now (the scan of that ring may have run before it registered).
pub fn check_late_registration(
    shared: &Shared,
    control: &Arc<ConnControl>,
    member: &Arc<str>,
    version: u64,
) {
    let routing = shared.routing.load();
    if routing.ring.version() == version {
        return;
    }
    let same = routing
        .ring
        .owner_of_hash(control.hash)
        .is_ok_and(|m| *m.id == **member);
    if !same {
        shared.resets.push_many(vec![Queued {
            control: Arc::downgrade(control),
            member: Arc::clone(member),
            reason: reason_leaving(&routing.ring, member),
            ring_version: routing.ring.version(),
        }]);
    }
}

/// The pacer: starts queued resets `1 / rate` apart until shutdown (the rate from the config in
/// use as each reset starts, so a reloaded config applies to the queue at once).
pub async fn run_pacer(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut next = tokio::time::Instant::now();
    let mut controller = pace::Controller::new();
    loop {
        let Some(item) = next_queued(&shared, &shutdown, &mut controller).await else {
            return;
        };
        let Some(control) = item.control.upgrade() else {
            continue;
        };
        // Owner back to where the connection is (a quick second ring change)? Leave it.
        let still_moved = {
            let routing = shared.routing.load();
            !routing
                .ring
                .owner_of_hash(control.hash)
                .is_ok_and(|m| *m.id == *item.member)
        };
        if !still_moved {
            debug!(key = %control.key, "owner came back; reset skipped");
            continue;
        }
        let now = tokio::time::Instant::now();
        if next > now {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        } else if now - next > MAX_LAG {
            next = now;
        }
        let resets = shared.config().resets;
        let rate = current_rate(&shared, &resets, &mut controller);
        next += Duration::from_secs_f64(1.0 / rate);
        let retry_bound = match resets.mode {
            PacingMode::Fixed => resets.jitter_ms,
            PacingMode::Adaptive => {
                pace::retry_bound_ms(resets.jitter_ms, shared.resets.len(), rate)
            }
        };
        send_reset(&shared, item, &control, retry_bound);
        shared.metrics.reset_queue.set(shared.resets.len() as i64);
    }
}

/// The rate to start the next reset at, per second: `ratePerSecond` in fixed mode, the
/// controller's (fed with the window's upgrades) in adaptive mode. Sets the gauge.
fn current_rate(shared: &Shared, resets: &ResetConfig, controller: &mut pace::Controller) -> f64 {
    let rate = match resets.mode {
        PacingMode::Fixed => f64::from(resets.rate_per_second.max(1)),
        PacingMode::Adaptive => {
            let settings = resets.pace_settings();
            let now = tokio::time::Instant::now().into_std();
            controller.rate(now, settings, || {
                shared.resets.judge_window(settings.target)
            })
        }
    };
    shared.metrics.reset_rate.set(rate.round() as i64);
    rate
}

/// The next queued reset, waiting for one; `None` at shutdown. An empty queue ends the wave
/// (the next one starts again at the start rate).
async fn next_queued(
    shared: &Shared,
    shutdown: &CancellationToken,
    controller: &mut pace::Controller,
) -> Option<Queued> {
    loop {
        if let Some(item) = shared.resets.pop() {
            return Some(item);
        }
        shared.metrics.reset_queue.set(0);
        shared.resets.end_wave();
        controller.idle();
        let resets = shared.config().resets;
        let idle_rate = match resets.mode {
            PacingMode::Fixed => f64::from(resets.rate_per_second),
            PacingMode::Adaptive => resets.pace_settings().start,
        };
        shared.metrics.reset_rate.set(idle_rate.round() as i64);
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = shared.resets.notify.notified() => {}
        }
    }
}

/// Tells the connection to reset (`retryAfterMs` uniform over `[0, retry_bound_ms]`), counts
/// it, and reports it to the old owner over the bus.
fn send_reset(shared: &Shared, item: Queued, control: &ConnControl, retry_bound_ms: u64) {
    let retry_after_ms = retry_after_ms(retry_bound_ms);
    let sent = control.send(Command::Reset {
        reason: item.reason,
        retry_after_ms,
        ring_version: Some(item.ring_version),
    });
    if !sent {
        return;
    }
    shared.metrics.reset(item.reason.as_str());
    if let Some(sink) = &shared.reset_sink {
        let note = ResetNote {
            member: item.member,
            key: control.key.clone(),
            reason: item.reason,
            ring_version: item.ring_version,
            retry_after_ms,
        };
        if sink.0.try_send(note).is_err() {
            shared.metrics.error("reset-event-dropped");
        }
    }
}

/// The `retryAfterMs` a reset client is told: uniform over `[0, bound_ms]`, so the
/// reconnects of a ring change are spread.
fn retry_after_ms(bound_ms: u64) -> u64 {
    if bound_ms == 0 {
        0
    } else {
        rand::random_range(0..=bound_ms)
    }
}

/// Advances the registry's clock every second and closes connections idle for longer than
/// `idleTimeoutSeconds` (checked every quarter of that, at least every second; the value of
/// the config in use at each check).
pub async fn run_sweeper(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = shared.registry.tick();
        let idle = u32::try_from(shared.config().limits.idle_timeout_seconds).unwrap_or(u32::MAX);
        if !now.is_multiple_of((idle / 4).max(1)) {
            continue;
        }
        let mut closed = 0;
        shared.registry.for_each(|entry| {
            let last = entry
                .control
                .last_active
                .load(std::sync::atomic::Ordering::Relaxed);
            if now.saturating_sub(last) >= idle && entry.control.send(Command::Idle) {
                closed += 1;
            }
        });
        if closed > 0 {
            debug!(closed, "idle connections closed");
        }
    }
}

/// Resets every live connection with reason "drain" at once (shutdown after the grace period);
/// `retryAfterMs` is still spread over the jitter.
pub fn drain_all(shared: &Shared) -> usize {
    let jitter = shared.config().resets.jitter_ms;
    let version = shared.routing.load().ring.version();
    let mut count = 0;
    shared.registry.for_each(|entry| {
        if entry.control.send(Command::Reset {
            reason: ResetReason::Drain,
            retry_after_ms: retry_after_ms(jitter),
            ring_version: Some(version),
        }) {
            count += 1;
        }
    });
    for _ in 0..count {
        shared.metrics.reset(ResetReason::Drain.as_str());
    }
    if count > 0 {
        warn!(
            count,
            "grace period over; remaining connections reset with reason drain"
        );
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;
    use crate::key::KeySources;
    use crate::metrics::Metrics;
    use crate::registry::{Registration, Registry};
    use arc_swap::ArcSwap;
    use wscluster_ring::{KeyHash, Member, RingSnapshot};

    fn shared() -> Shared {
        let config = ProxyConfig::default();
        Shared {
            cluster_id: "t/c".into(),
            keys: ArcSwap::from_pointee(KeySources::from_specs(&config.key_sources).expect("keys")),
            start_limits: config.limits,
            config: ArcSwap::from_pointee(config),
            routing: ArcSwap::from_pointee(Routing::unknown("t/c")),
            registry: Arc::new(Registry::new()),
            resets: ResetQueue::default(),
            reset_sink: None,
            metrics: Arc::new(Metrics::new()),
            fallback_upstream: None,
            upstream_source: None,
            proxy_secret: None,
            ring_applied: tokio::sync::watch::Sender::new(0),
            client_limits: crate::limits::ClientLimits::new(&crate::config::Limits::default()),
        }
    }

    fn ring(cluster: &str, version: u64, n: usize) -> Arc<Ring> {
        let members = (0..n)
            .map(|i| Member::active(format!("n-{i}"), format!("127.0.0.1:{}", 1000 + i)))
            .collect();
        Arc::new(Ring::build(RingSnapshot::new(cluster, version, members)).expect("ring"))
    }

    fn register_all(s: &Shared, ring: &Ring, n: usize) -> Vec<Registration> {
        (0..n)
            .map(|i| {
                let key = format!("user-{i}");
                let hash = KeyHash::of(&key);
                let owner: Arc<str> =
                    Arc::from(ring.owner_of_hash(hash).expect("owner").id.as_str());
                s.registry.register(&key, hash, owner, ring.version())
            })
            .collect()
    }

    #[test]
    fn older_equal_and_foreign_rings_are_ignored_and_change_nothing() {
        let s = shared();
        assert_eq!(
            apply_ring(&s, ring("t/c", 5, 3)),
            Applied::Applied {
                version: 5,
                queued: 0
            }
        );
        let _live = register_all(&s, &s.routing.load().ring, 100);
        for stale in [ring("t/c", 5, 1), ring("t/c", 4, 1), ring("other/c", 9, 1)] {
            assert!(matches!(apply_ring(&s, stale), Applied::Ignored(_)));
            assert_eq!(s.routing.load().ring.version(), 5);
            assert!(s.resets.is_empty());
        }
    }

    #[test]
    fn a_scan_of_100k_connections_queues_exactly_the_moved_ones_once() {
        let s = shared();
        let v1 = ring("t/c", 1, 3);
        apply_ring(&s, Arc::clone(&v1));
        let live = register_all(&s, &v1, 100_000);
        let v2 = ring("t/c", 2, 4);
        let expected = live
            .iter()
            .filter(|r| {
                v1.owner_of_hash(r.control.hash).expect("o").id
                    != v2.owner_of_hash(r.control.hash).expect("o").id
            })
            .count();
        let started = std::time::Instant::now();
        let applied = apply_ring(&s, Arc::clone(&v2));
        eprintln!(
            "scan of 100k connections (debug build): {:?}",
            started.elapsed()
        );
        assert_eq!(
            applied,
            Applied::Applied {
                version: 2,
                queued: expected
            }
        );
        assert_eq!(s.resets.len(), expected);
        // A third ring that moves nothing new queues nothing again (already queued or kept).
        let mut v3 = v2.snapshot().clone();
        v3.version = 3;
        let v3 = Arc::new(Ring::build(v3).expect("v3"));
        assert_eq!(
            apply_ring(&s, v3),
            Applied::Applied {
                version: 3,
                queued: 0
            }
        );
        assert_eq!(s.resets.len(), expected);
    }
}
