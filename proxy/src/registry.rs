//! The live spliced connections, and the pure decision of which of them a new ring moves.
//!
//! Each connection registers its 8-byte [`KeyHash`], the member it is connected to, the ring
//! version it was routed with, and a small [`ConnControl`] through which it can be told to reset.
//! The registry is sharded so registering and removing do not contend with each other or with
//! a scan; a scan after a ring change visits each shard once and asks the ring crate's
//! [`RingDiff`] about each hash (a table read), so 100,000 connections take about a millisecond.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::sync::atomic::AtomicBool;
use std::task::Waker;

use futures_util::task::AtomicWaker;
use wscluster_ring::contract::ResetReason;
use wscluster_ring::{KeyHash, MemberState, MoveReason, Ring, RingDiff};

/// Number of shards: a power of two comfortably above the core count, so two threads rarely
/// wait on the same lock.
const SHARDS: usize = 64;

/// What a connection is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Send the client the reset frame and the reason's close code; close the upstream.
    Reset {
        /// Why it must reconnect.
        reason: ResetReason,
        /// The `retryAfterMs` it hands its client.
        retry_after_ms: u64,
        /// The ring version behind the reset, when there is one.
        ring_version: Option<u64>,
    },
    /// Nothing passed for the idle timeout: close both sides with 1001 (going away).
    Idle,
}

/// The handle a connection task shares with the registry and the reset pacer.
#[derive(Debug)]
pub struct ConnControl {
    /// Registry id.
    pub id: u64,
    /// The business key, for reset events sent to the old owner.
    pub key: Box<str>,
    /// The key's ring hash.
    pub hash: KeyHash,
    /// Wakes the connection task when `command` is set (lock-free: polled on every wake-up of
    /// the copy loop, so it must cost a couple of atomics, not a lock).
    waker: AtomicWaker,
    /// Set once `command` holds a command.
    signalled: AtomicBool,
    /// The pending command, if any; the first one set wins.
    command: Mutex<Option<Command>>,
    /// Coarse time of the last byte through, in seconds since the registry started (for the
    /// idle sweep; one relaxed store per read keeps it off the fast path's critical cost).
    pub last_active: AtomicU32,
}

impl ConnControl {
    /// Asks the connection to reset. Returns false when a command was already pending.
    pub fn send(&self, command: Command) -> bool {
        let mut slot = lock(&self.command);
        if slot.is_some() {
            return false;
        }
        *slot = Some(command);
        drop(slot);
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
        true
    }

    /// Registers `waker` to be woken when a command is sent. A task registers once and again
    /// only when its waker changes (the copy loop checks `Waker::will_wake`), so a wake-up of
    /// the copy loop costs one atomic load here, not a registration.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// The command, once one has been sent; check it after [`ConnControl::register`].
    pub fn signalled(&self) -> Option<Command> {
        if self.signalled.load(Ordering::Acquire) {
            self.take()
        } else {
            None
        }
    }

    /// Takes the pending command.
    pub fn take(&self) -> Option<Command> {
        lock(&self.command).take()
    }
}

/// What the registry keeps per connection.
#[derive(Debug)]
pub struct Entry {
    /// The connection's control handle.
    pub control: Arc<ConnControl>,
    /// The member it is connected to.
    pub member: Arc<str>,
    /// The ring version its owner was last confirmed under.
    pub version: u64,
    /// Already queued for a reset (so a second ring change does not queue it twice).
    pub queued: bool,
}

/// The live connections.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    next_id: AtomicU64,
    len: AtomicUsize,
    started: std::time::Instant,
    /// Coarse clock in seconds since `started`, advanced by [`Registry::tick`] (the idle sweep)
    /// so the copy loop reads an atomic instead of the system clock.
    clock: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock cannot leave an entry half-written (inserts and
    // removes are single calls), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            len: AtomicUsize::new(0),
            started: std::time::Instant::now(),
            clock: AtomicU32::new(0),
        }
    }

    /// Seconds since the registry started, as of the last [`Registry::tick`].
    pub fn now_secs(&self) -> u32 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Advances the coarse clock; returns the new value.
    pub fn tick(&self) -> u32 {
        let now = u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX);
        self.clock.store(now, Ordering::Relaxed);
        now
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Entry>> {
        &self.shards[(id as usize) % SHARDS]
    }

    /// Registers a connection; it stays until the guard drops.
    pub fn register(
        self: &Arc<Self>,
        key: &str,
        hash: KeyHash,
        member: Arc<str>,
        version: u64,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(ConnControl {
            id,
            key: key.into(),
            hash,
            waker: AtomicWaker::new(),
            signalled: AtomicBool::new(false),
            command: Mutex::new(None),
            last_active: AtomicU32::new(self.now_secs()),
        });
        lock(self.shard(id)).insert(
            id,
            Entry {
                control: Arc::clone(&control),
                member,
                version,
                queued: false,
            },
        );
        self.len.fetch_add(1, Ordering::Relaxed);
        Registration {
            registry: Arc::clone(self),
            control,
        }
    }

    fn remove(&self, id: u64) {
        if lock(self.shard(id)).remove(&id).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Visits every entry, one shard lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(&mut Entry)) {
        for shard in self.shards.iter() {
            for entry in lock(shard).values_mut() {
                f(entry);
            }
        }
    }
}

/// Keeps a connection registered; removes it on drop.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    /// The connection's control handle.
    pub control: Arc<ConnControl>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.remove(self.control.id);
    }
}

/// A connection as the reset planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct ConnView<'a> {
    /// The key's hash.
    pub hash: KeyHash,
    /// The member it is connected to.
    pub member: &'a str,
    /// The ring version its owner was last confirmed under.
    pub version: u64,
}

/// Whether a connection stays or goes after a ring change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Its owner did not change: never touched.
    Keep,
    /// Its owner changed: reset it with this reason.
    Reset(ResetReason),
}

/// Decides one connection's fate when `diff` (from `old` to `new`) applies. Connections routed
/// under `old` are answered by the diff (one table read); the rare connection confirmed under
/// another version (routed while a ring was being applied) is compared with `new` directly.
pub fn decide(old: &Ring, new: &Ring, diff: &RingDiff<'_>, conn: ConnView<'_>) -> Decision {
    if conn.version == old.version() {
        return match diff.change(conn.hash) {
            None => Decision::Keep,
            Some(m) => Decision::Reset(match m.reason {
                MoveReason::Drain => ResetReason::Drain,
                MoveReason::Rebalance | MoveReason::OwnerGone => ResetReason::Rebalance,
            }),
        };
    }
    match new.owner_of_hash(conn.hash) {
        Ok(owner) if owner.id == conn.member => Decision::Keep,
        _ => Decision::Reset(reason_leaving(new, conn.member)),
    }
}

/// The reason to give a connection leaving `member` under `ring`.
pub fn reason_leaving(ring: &Ring, member: &str) -> ResetReason {
    match ring.snapshot().member(member) {
        Some(m) if m.state == MemberState::Draining => ResetReason::Drain,
        _ => ResetReason::Rebalance,
    }
}

/// One connection a ring change resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedReset {
    /// Its position among the connections planned for.
    pub index: usize,
    /// The reason it is given.
    pub reason: ResetReason,
}

/// The connections among `conns` that must reset when `new` replaces `old`, in order.
pub fn plan_resets<'a>(
    old: &Ring,
    new: &Ring,
    conns: impl IntoIterator<Item = ConnView<'a>>,
) -> Vec<PlannedReset> {
    let diff = old.diff(new);
    conns
        .into_iter()
        .enumerate()
        .filter_map(|(index, c)| match decide(old, new, &diff, c) {
            Decision::Keep => None,
            Decision::Reset(reason) => Some(PlannedReset { index, reason }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wscluster_ring::{Member, RingSnapshot};

    fn ring(version: u64, members: Vec<Member>) -> Ring {
        Ring::build(RingSnapshot::new("t/c", version, members)).expect("ring")
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::active(format!("n-{i}"), format!("127.0.0.1:{}", 1000 + i)))
            .collect()
    }

    /// A live connection in these tests: its key's hash and the member it is connected to.
    struct Live {
        hash: KeyHash,
        member: String,
    }

    /// `n` connections `user-0..n`, each on its owner under `r`.
    fn conns(r: &Ring, n: usize) -> Vec<Live> {
        (0..n)
            .map(|i| {
                let hash = KeyHash::of(format!("user-{i}"));
                let member = r.owner_of_hash(hash).expect("owner").id.clone();
                Live { hash, member }
            })
            .collect()
    }

    /// The plan for `live`, all routed under `old`.
    fn plan(old: &Ring, new: &Ring, live: &[Live]) -> Vec<PlannedReset> {
        let views = live.iter().map(|c| ConnView {
            hash: c.hash,
            member: &c.member,
            version: old.version(),
        });
        plan_resets(old, new, views)
    }

    #[test]
    fn adding_a_member_resets_exactly_the_keys_that_moved_to_it() {
        let old = ring(1, members(3));
        let new = ring(2, members(4));
        let live = conns(&old, 10_000);
        let plan = plan(&old, &new, &live);
        let expected: Vec<usize> = live
            .iter()
            .enumerate()
            .filter(|(_, c)| new.owner_of_hash(c.hash).expect("owner").id != c.member)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(plan.iter().map(|p| p.index).collect::<Vec<_>>(), expected);
        assert!(plan.iter().all(|p| p.reason == ResetReason::Rebalance));
        // About a quarter moves onto the fourth member.
        assert!((2_000..3_000).contains(&plan.len()), "{}", plan.len());
    }

    #[test]
    fn a_draining_member_s_connections_reset_with_reason_drain_and_no_others() {
        let old = ring(1, members(3));
        let mut m = members(3);
        m[1] = m[1].clone().draining();
        let new = ring(2, m);
        let live = conns(&old, 3_000);
        let plan = plan(&old, &new, &live);
        let on_n1 = live.iter().filter(|c| c.member == "n-1").count();
        assert_eq!(plan.len(), on_n1);
        assert!(
            plan.iter()
                .all(|p| live[p.index].member == "n-1" && p.reason == ResetReason::Drain)
        );
    }

    #[test]
    fn a_connection_confirmed_under_another_version_is_compared_with_the_new_ring() {
        let old = ring(1, members(3));
        let new = ring(3, members(4));
        let h = (0..)
            .map(|i| KeyHash::of(format!("k{i}")))
            .find(|h| old.owner_of_hash(*h).expect("o").id != new.owner_of_hash(*h).expect("n").id)
            .expect("some key moves");
        let new_owner = new.owner_of_hash(h).expect("n").id.clone();
        let old_owner = old.owner_of_hash(h).expect("o").id.clone();
        // Routed with version 3 already (a race with the ring change): stays.
        let plan = plan_resets(
            &old,
            &new,
            [ConnView {
                hash: h,
                member: &new_owner,
                version: 3,
            }],
        );
        assert!(plan.is_empty());
        // Routed with some version 0 to the old owner: moves.
        let plan = plan_resets(
            &old,
            &new,
            [ConnView {
                hash: h,
                member: &old_owner,
                version: 0,
            }],
        );
        assert_eq!(
            plan,
            vec![PlannedReset {
                index: 0,
                reason: ResetReason::Rebalance
            }]
        );
    }

    #[test]
    fn registrations_leave_on_drop_and_commands_are_sent_once() {
        let reg = Arc::new(Registry::new());
        let a = reg.register("a", KeyHash::of("a"), "n-0".into(), 1);
        let b = reg.register("b", KeyHash::of("b"), "n-0".into(), 1);
        assert_eq!(reg.len(), 2);
        drop(a);
        assert_eq!(reg.len(), 1);
        let cmd = Command::Reset {
            reason: ResetReason::Drain,
            retry_after_ms: 5,
            ring_version: None,
        };
        assert!(b.control.send(cmd));
        assert!(!b.control.send(cmd));
        assert_eq!(b.control.take(), Some(cmd));
        let mut seen = 0;
        reg.for_each(|_| seen += 1);
        assert_eq!(seen, 1);
    }
}
