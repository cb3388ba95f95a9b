//! The built ring: key → owner in O(1) without allocating, and the diff between two rings.
//!
//! # Algorithm
//!
//! Weighted rendezvous hashing, evaluated once per slot into a table. For a table of `S` slots
//! (default 65,536) and members sorted by id, slot `s` belongs to the active member with the best
//! score: with equal weights the highest `mix64(member_hash ^ mix64(s + SLOT_SALT))`, with unequal
//! weights the lowest `-ln(u) / weight` where `u` comes from that same score. A key belongs to the
//! owner of its slot, `KeyHash::of(key).slot(S)`.
//!
//! Rendezvous hashing gives the table its guarantees: adding a member moves only the slots the
//! new member now wins (each from its previous winner to the new member), removing or draining a
//! member moves only its own slots, and shares are proportional to weight. The table turns its
//! O(members) lookup into one multiply and one array read. `docs/architecture.md` records the
//! measurements against ketama and Maglev that chose it.

use crate::error::{NoOwner, RingError};
use crate::hash::{KeyHash, member_hash, mix64, neg_ln_unit};
use crate::snapshot::{Member, MemberState, RingSnapshot};

/// Table entry meaning "no active member".
const NO_OWNER: u16 = u16::MAX;
/// Salt added to a slot index before mixing, so slot 0 does not mix the value 0.
const SLOT_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// A slot of a ring's table. Valid for rings with the same slot count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

/// An immutable, validated ring ready for lookups. Build once per snapshot and share it (for
/// example behind an `ArcSwap`); replace the whole ring rather than changing it.
#[derive(Debug, Clone)]
pub struct Ring {
    /// The snapshot with members sorted by id; member indices below refer to this order.
    snapshot: RingSnapshot,
    /// Slot → index of the owning member, or [`NO_OWNER`].
    table: Box<[u16]>,
    /// How many slots each member owns, by member index.
    slots_owned: Box<[u32]>,
}

impl Ring {
    /// Validates the snapshot and builds its table. Cost: one score per (slot, active member),
    /// about 0.5 ms for 10 members with the default table, linear in members.
    pub fn build(mut snapshot: RingSnapshot) -> Result<Ring, RingError> {
        snapshot.validate()?;
        snapshot.members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Ring::build_sorted(snapshot))
    }

    /// [`Ring::build`] of a validated snapshot whose members are sorted by id.
    fn build_sorted(snapshot: RingSnapshot) -> Ring {
        let slots = snapshot.params.slots as usize;
        let classes = weight_classes(&snapshot.members);
        let mut table = vec![NO_OWNER; slots].into_boxed_slice();
        match classes.as_slice() {
            [] => {}
            [(_, members)] => {
                for (s, owner) in table.iter_mut().enumerate() {
                    *owner = best_in_class(members, slot_hash(s)).0;
                }
            }
            _ => {
                for (s, owner) in table.iter_mut().enumerate() {
                    *owner = best_weighted(&classes, slot_hash(s));
                }
            }
        }
        Ring::with_table(snapshot, table)
    }

    /// The ring of a sorted snapshot and its finished table.
    fn with_table(snapshot: RingSnapshot, table: Box<[u16]>) -> Ring {
        let mut slots_owned = vec![0u32; snapshot.members.len()].into_boxed_slice();
        for &owner in table.iter() {
            if owner != NO_OWNER {
                slots_owned[owner as usize] += 1;
            }
        }
        Ring {
            snapshot,
            table,
            slots_owned,
        }
    }

    /// An empty ring (no members) for a cluster, at version 0: every lookup answers [`NoOwner`].
    pub fn empty(cluster_id: impl Into<String>) -> Ring {
        let snapshot = RingSnapshot::new(cluster_id, 0, Vec::new());
        let slots = snapshot.params.slots as usize;
        Ring {
            snapshot,
            table: vec![NO_OWNER; slots].into_boxed_slice(),
            slots_owned: Box::new([]),
        }
    }

    /// Builds `next` if it may replace this ring: same cluster, strictly newer version. Built
    /// from this ring with [`Ring::build_from`], so a join or a leave costs O(slots).
    pub fn replace(&self, next: RingSnapshot) -> Result<Ring, RingError> {
        self.check_successor(&next)?;
        self.build_from(next)
    }

    /// Builds `next` as [`Ring::build`] would, bit for bit, reusing this ring's table when that
    /// is cheaper: when both rings have the same slot count, every active member of each has one
    /// weight, and at most [`INCREMENTAL_CHANGES_MAX`] members joined or left the active set.
    /// Then a slot whose owner stayed active keeps it unless a joining member beats the owner's
    /// score, and only the slots of members that left are scored against every member: about
    /// two scores per slot for one change instead of one per (slot, member). Anything else is a
    /// full build. Versions and clusters are not compared (see [`Ring::replace`]).
    pub fn build_from(&self, mut next: RingSnapshot) -> Result<Ring, RingError> {
        next.validate()?;
        next.members.sort_by(|a, b| a.id.cmp(&b.id));
        match Incremental::plan(self, &next) {
            Some(plan) => Ok(plan.build(self, next)),
            None => Ring::build(next),
        }
    }

    /// Whether `next` may replace this ring, without building it.
    pub fn check_successor(&self, next: &RingSnapshot) -> Result<(), RingError> {
        if next.cluster_id != self.snapshot.cluster_id {
            return Err(RingError::WrongCluster {
                current: self.snapshot.cluster_id.clone(),
                offered: next.cluster_id.clone(),
            });
        }
        if next.version <= self.snapshot.version {
            return Err(RingError::NotNewer {
                current: self.snapshot.version,
                offered: next.version,
            });
        }
        Ok(())
    }

    /// The snapshot this ring was built from, members sorted by id.
    pub fn snapshot(&self) -> &RingSnapshot {
        &self.snapshot
    }

    /// The ring's version.
    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.snapshot.members
    }

    /// The number of slots in the table.
    pub fn slot_count(&self) -> u32 {
        self.table.len() as u32
    }

    /// How many slots the member at `index` (in [`Ring::members`] order) owns.
    pub fn slots_owned(&self, index: usize) -> u32 {
        self.slots_owned.get(index).copied().unwrap_or(0)
    }

    /// The slot a key hash falls in.
    #[inline]
    pub fn slot_of(&self, hash: KeyHash) -> Slot {
        Slot(hash.slot(self.table.len() as u32))
    }

    /// Index (in [`Ring::members`] order) of the owner of a key hash.
    #[inline]
    pub fn owner_index(&self, hash: KeyHash) -> Result<usize, NoOwner> {
        match self.table[hash.slot(self.table.len() as u32) as usize] {
            NO_OWNER => Err(NoOwner),
            index => Ok(index as usize),
        }
    }

    /// The owner of a key hash.
    #[inline]
    pub fn owner_of_hash(&self, hash: KeyHash) -> Result<&Member, NoOwner> {
        self.owner_index(hash).map(|i| &self.snapshot.members[i])
    }

    /// The owner of a key. Never allocates.
    #[inline]
    pub fn owner(&self, key: impl AsRef<[u8]>) -> Result<&Member, NoOwner> {
        self.owner_of_hash(KeyHash::of(key))
    }

    /// Whether the member with this id owns the key.
    pub fn owns(&self, member_id: &str, key: impl AsRef<[u8]>) -> bool {
        self.owner(key).is_ok_and(|m| m.id == member_id)
    }

    /// What changed between this ring and `next`, for finding moved connections.
    pub fn diff<'a>(&'a self, next: &'a Ring) -> RingDiff<'a> {
        RingDiff::new(self, next)
    }
}

/// The most members that may join or leave the active set for [`Ring::build_from`] to reuse the
/// previous table; past it a full build is as cheap.
pub const INCREMENTAL_CHANGES_MAX: usize = 4;

/// How [`Ring::build_from`] turns the previous table into the next one.
struct Incremental {
    /// Old member index → its index in the next ring when it is still active there.
    kept: Vec<Option<u16>>,
    /// Members active in the next ring and not in the old one: (next index, member hash).
    joined: Vec<(u16, u64)>,
    /// Every active member of the next ring, in id order: (index, member hash).
    active: Vec<(u16, u64)>,
}

impl Incremental {
    /// The plan, or `None` when the change is not one [`Ring::build_from`] reuses.
    fn plan(old: &Ring, next: &RingSnapshot) -> Option<Incremental> {
        if old.table.len() != next.params.slots as usize
            || weight_classes(&old.snapshot.members).len() > 1
        {
            return None;
        }
        let classes = weight_classes(&next.members);
        let active = match classes.as_slice() {
            [] => Vec::new(),
            [(_, members)] => members.clone(),
            _ => return None,
        };
        let next_index = |id: &str| {
            next.members
                .binary_search_by(|m| m.id.as_str().cmp(id))
                .ok()
        };
        let kept: Vec<Option<u16>> = old
            .snapshot
            .members
            .iter()
            .map(|m| {
                let index = next_index(&m.id).filter(|_| m.is_active())?;
                next.members[index].is_active().then_some(index as u16)
            })
            .collect();
        let left = old
            .snapshot
            .members
            .iter()
            .zip(&kept)
            .filter(|(m, k)| m.is_active() && k.is_none())
            .count();
        let was_active = |index: u16| {
            let id = &next.members[index as usize].id;
            old.snapshot
                .members
                .binary_search_by(|m| m.id.cmp(id))
                .is_ok_and(|i| old.snapshot.members[i].is_active())
        };
        let joined: Vec<(u16, u64)> = active
            .iter()
            .copied()
            .filter(|&(index, _)| !was_active(index))
            .collect();
        (left + joined.len() <= INCREMENTAL_CHANGES_MAX).then_some(Incremental {
            kept,
            joined,
            active,
        })
    }

    /// The next ring: each slot keeps its owner unless a joining member scores higher, and a
    /// slot whose owner left is scored against every active member.
    fn build(self, old: &Ring, next: RingSnapshot) -> Ring {
        let old_hashes: Vec<u64> = old
            .snapshot
            .members
            .iter()
            .map(|m| member_hash(&m.id))
            .collect();
        let table: Box<[u16]> = old
            .table
            .iter()
            .enumerate()
            .map(|(s, &owner)| {
                let sh = slot_hash(s);
                let kept = (owner != NO_OWNER)
                    .then(|| self.kept[owner as usize])
                    .flatten();
                let Some(index) = kept else {
                    return best_in_class(&self.active, sh).0;
                };
                let mut best = (index, mix64(old_hashes[owner as usize] ^ sh));
                for &(j, hash) in &self.joined {
                    let score = mix64(hash ^ sh);
                    if score > best.1 || (score == best.1 && j < best.0) {
                        best = (j, score);
                    }
                }
                best.0
            })
            .collect();
        Ring::with_table(next, table)
    }
}

/// Active members grouped by weight, each group in id order: `(weight, [(index, member hash)])`.
type WeightClasses = Vec<(u32, Vec<(u16, u64)>)>;

fn weight_classes(members: &[Member]) -> WeightClasses {
    let mut classes: WeightClasses = Vec::new();
    for (index, member) in members.iter().enumerate().filter(|(_, m)| m.is_active()) {
        let entry = (index as u16, member_hash(&member.id));
        match classes.iter_mut().find(|(w, _)| *w == member.weight) {
            Some((_, class)) => class.push(entry),
            None => classes.push((member.weight, vec![entry])),
        }
    }
    classes.sort_by_key(|(w, _)| *w);
    classes
}

#[inline]
fn slot_hash(slot: usize) -> u64 {
    mix64((slot as u64).wrapping_add(SLOT_SALT))
}

/// The rendezvous winner among members of equal weight: the highest score; on a tie the member
/// with the smaller id (they are in id order and only a strictly higher score replaces).
#[inline]
fn best_in_class(members: &[(u16, u64)], slot_hash: u64) -> (u16, u64) {
    let mut best = (NO_OWNER, 0u64);
    for &(index, hash) in members {
        let score = mix64(hash ^ slot_hash);
        if best.0 == NO_OWNER || score > best.1 {
            best = (index, score);
        }
    }
    best
}

/// Weighted rendezvous: the lowest `-ln(u) / weight`. Within a weight class that order is the
/// order of raw scores, so only each class's winner needs the logarithm; ties across classes go
/// to the smaller id (smaller index).
#[inline]
fn best_weighted(classes: &[(u32, Vec<(u16, u64)>)], slot_hash: u64) -> u16 {
    let mut best = (NO_OWNER, f64::INFINITY);
    for (weight, members) in classes {
        let (index, score) = best_in_class(members, slot_hash);
        let value = neg_ln_unit(score) / f64::from(*weight);
        if best.0 == NO_OWNER || value < best.1 || (value == best.1 && index < best.0) {
            best = (index, value);
        }
    }
    best.0
}

/// Why a key's connection must move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoveReason {
    /// Its owner is still active but the key now belongs to another member (a member joined or
    /// weights changed).
    Rebalance,
    /// Its owner is draining.
    Drain,
    /// Its owner left the ring (failed or deleted); the connection is probably dead already.
    OwnerGone,
}

/// The difference between two rings, precomputed per slot so each live connection is checked
/// with one table read: [`RingDiff::moved_hash`] costs a few nanoseconds, so 100,000 connections
/// take well under a millisecond.
#[derive(Debug)]
pub struct RingDiff<'a> {
    old: &'a Ring,
    new: &'a Ring,
    /// Old member index → new member index (or `NO_OWNER` if it left).
    remap: Vec<u16>,
    /// With equal slot counts, one bit per slot: set when the slot's owner changed.
    moved_bits: Option<Vec<u64>>,
    /// Number of moved slots, when `moved_bits` is set.
    moved_slots: u32,
}

impl<'a> RingDiff<'a> {
    fn new(old: &'a Ring, new: &'a Ring) -> Self {
        let remap: Vec<u16> = old
            .snapshot
            .members
            .iter()
            .map(|m| {
                new.snapshot
                    .members
                    .binary_search_by(|n| n.id.as_str().cmp(&m.id))
                    .map_or(NO_OWNER, |i| i as u16)
            })
            .collect();
        let mut diff = RingDiff {
            old,
            new,
            remap,
            moved_bits: None,
            moved_slots: 0,
        };
        if old.table.len() == new.table.len() {
            let mut bits = vec![0u64; old.table.len().div_ceil(64)];
            let mut moved = 0;
            for (s, (&o, &n)) in old.table.iter().zip(new.table.iter()).enumerate() {
                if diff.remapped(o) != n && o != NO_OWNER {
                    bits[s / 64] |= 1 << (s % 64);
                    moved += 1;
                }
            }
            diff.moved_bits = Some(bits);
            diff.moved_slots = moved;
        }
        diff
    }

    #[inline]
    fn remapped(&self, old_index: u16) -> u16 {
        if old_index == NO_OWNER {
            NO_OWNER
        } else {
            self.remap[old_index as usize]
        }
    }

    /// Whether the owner of this key hash changed. A key that had no owner in the old ring has
    /// no connection to move, so it counts as not moved.
    #[inline]
    pub fn moved_hash(&self, hash: KeyHash) -> bool {
        match &self.moved_bits {
            Some(bits) => {
                let s = hash.slot(self.old.table.len() as u32) as usize;
                bits[s / 64] & (1 << (s % 64)) != 0
            }
            None => {
                let o = self.old.table[hash.slot(self.old.table.len() as u32) as usize];
                let n = self.new.table[hash.slot(self.new.table.len() as u32) as usize];
                o != NO_OWNER && self.remapped(o) != n
            }
        }
    }

    /// Whether the owner of this key changed.
    pub fn moved(&self, key: impl AsRef<[u8]>) -> bool {
        self.moved_hash(KeyHash::of(key))
    }

    /// The keys among `keys` whose owner changed, lazily.
    pub fn moved_keys<'k, K, I>(&'k self, keys: I) -> impl Iterator<Item = K> + 'k
    where
        K: AsRef<[u8]> + 'k,
        I: IntoIterator<Item = K> + 'k,
    {
        keys.into_iter().filter(move |k| self.moved(k))
    }

    /// For a key hash whose owner changed: the old owner, the new owner (if any) and why.
    /// `None` when the key did not move.
    pub fn change(&self, hash: KeyHash) -> Option<Move<'a>> {
        if !self.moved_hash(hash) {
            return None;
        }
        let from = self.old.owner_of_hash(hash).ok()?;
        let to = self.new.owner_of_hash(hash).ok();
        let reason = match self.new.snapshot.member(&from.id) {
            None => MoveReason::OwnerGone,
            Some(m) if m.state == MemberState::Draining => MoveReason::Drain,
            Some(_) => MoveReason::Rebalance,
        };
        Some(Move { from, to, reason })
    }

    /// Fraction of slots whose owner changed, when both rings have the same slot count.
    pub fn moved_slot_fraction(&self) -> Option<f64> {
        self.moved_bits
            .as_ref()
            .map(|_| f64::from(self.moved_slots) / self.old.table.len() as f64)
    }
}

/// A key's change of owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move<'a> {
    /// The owner under the old ring (where the connection is now).
    pub from: &'a Member,
    /// The owner under the new ring, if the new ring has any active member.
    pub to: Option<&'a Member>,
    /// Why it moved.
    pub reason: MoveReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member::active(format!("node-{i}"), format!("127.0.0.1:{}", 9000 + i)))
            .collect()
    }

    fn ring(version: u64, members: Vec<Member>) -> Ring {
        Ring::build(RingSnapshot::new("default/chat", version, members)).expect("valid ring")
    }

    #[test]
    fn empty_ring_answers_no_owner() {
        let r = ring(1, vec![]);
        assert_eq!(r.owner("alice"), Err(NoOwner));
        assert_eq!(Ring::empty("x").owner("alice"), Err(NoOwner));
    }

    #[test]
    fn ring_of_only_draining_members_has_no_owner() {
        let r = ring(1, vec![Member::active("a", "h:1").draining()]);
        assert_eq!(r.owner("alice"), Err(NoOwner));
    }

    #[test]
    fn member_order_in_the_snapshot_does_not_change_owners() {
        let mut reversed = members(7);
        reversed.reverse();
        let a = ring(1, members(7));
        let b = ring(1, reversed);
        for i in 0..2_000 {
            let key = format!("user-{i}");
            assert_eq!(a.owner(&key).map(|m| &m.id), b.owner(&key).map(|m| &m.id));
        }
    }

    #[test]
    fn replace_refuses_older_equal_and_foreign_versions() {
        let r = ring(5, members(3));
        let same = RingSnapshot::new("default/chat", 5, members(3));
        assert_eq!(
            r.replace(same).err(),
            Some(RingError::NotNewer {
                current: 5,
                offered: 5
            })
        );
        let older = RingSnapshot::new("default/chat", 4, members(3));
        assert!(matches!(r.replace(older), Err(RingError::NotNewer { .. })));
        let other = RingSnapshot::new("default/other", 6, members(3));
        assert!(matches!(
            r.replace(other),
            Err(RingError::WrongCluster { .. })
        ));
        let newer = RingSnapshot::new("default/chat", 6, members(4));
        assert_eq!(r.replace(newer).map(|n| n.version()).ok(), Some(6));
    }

    #[test]
    fn replace_refuses_an_invalid_snapshot() {
        let r = ring(1, members(3));
        let bad = RingSnapshot::new(
            "default/chat",
            2,
            vec![Member::active("a", "h:1").with_weight(0)],
        );
        assert!(matches!(r.replace(bad), Err(RingError::Invalid(_))));
    }

    #[test]
    fn weights_give_proportional_shares() {
        let mut m = members(3);
        m[0].weight = 2;
        let r = ring(1, m);
        let total = f64::from(r.slot_count());
        let share0 = f64::from(r.slots_owned(0)) / total;
        let share1 = f64::from(r.slots_owned(1)) / total;
        assert!((share0 - 0.5).abs() < 0.01, "weight 2 of 4 owns {share0}");
        assert!((share1 - 0.25).abs() < 0.01, "weight 1 of 4 owns {share1}");
    }

    #[test]
    fn diff_reports_reason_and_new_owner() {
        let old = ring(1, members(4));
        let mut next = members(4);
        next[3] = next[3].clone().draining();
        let new = ring(2, next);
        let diff = old.diff(&new);
        let mut drained = 0;
        for i in 0..5_000 {
            let h = KeyHash::of(format!("u{i}"));
            match diff.change(h) {
                Some(mv) => {
                    assert_eq!(mv.from.id, "node-3");
                    assert_eq!(mv.reason, MoveReason::Drain);
                    assert_ne!(mv.to.map(|m| m.id.as_str()), Some("node-3"));
                    drained += 1;
                }
                None => assert_ne!(old.owner_of_hash(h).map(|m| m.id.as_str()), Ok("node-3")),
            }
        }
        assert!(
            drained > 1_000,
            "about a quarter of keys were on node-3, got {drained}"
        );
    }

    #[test]
    fn diff_with_different_slot_counts_compares_owners_per_key() {
        let old = ring(1, members(5));
        let mut snap = RingSnapshot::new("default/chat", 2, members(5));
        snap.params.slots = 1 << 12;
        let new = Ring::build(snap).expect("valid");
        let diff = old.diff(&new);
        assert_eq!(diff.moved_slot_fraction(), None);
        for i in 0..3_000 {
            let key = format!("k{i}");
            let changed = old.owner(&key).map(|m| &m.id) != new.owner(&key).map(|m| &m.id);
            assert_eq!(diff.moved(&key), changed, "{key}");
        }
    }

    fn assert_same_table(incremental: &Ring, full: &Ring) {
        assert_eq!(incremental.members(), full.members());
        assert!(incremental.table == full.table, "tables differ");
        assert_eq!(incremental.slots_owned, full.slots_owned);
    }

    #[test]
    fn build_from_equals_a_full_build_for_joins_leaves_and_drains() {
        let old = ring(1, members(10));
        let mut changes: Vec<Vec<Member>> = Vec::new();
        let mut joined = members(10);
        joined.push(Member::active("node-10", "h:10"));
        joined.push(Member::active("a-first", "h:0"));
        changes.push(joined);
        let mut left = members(10);
        left.remove(3);
        changes.push(left);
        let mut drained = members(10);
        drained[0] = drained[0].clone().draining();
        drained[9] = drained[9].clone().draining();
        changes.push(drained);
        let mut both = members(10);
        both.remove(5);
        both.push(Member::active("node-77", "h:77"));
        changes.push(both);
        changes.push(vec![]);
        for (i, next) in changes.into_iter().enumerate() {
            let snap = RingSnapshot::new("default/chat", 2 + i as u64, next);
            let full = Ring::build(snap.clone()).expect("valid");
            assert_same_table(&old.build_from(snap).expect("valid"), &full);
        }
    }

    #[test]
    fn build_from_falls_back_to_a_full_build_and_still_agrees() {
        let old = ring(1, members(6));
        let mut weighted = members(6);
        weighted[2].weight = 3;
        let many = members(6 + INCREMENTAL_CHANGES_MAX + 1);
        let mut small = RingSnapshot::new("default/chat", 2, members(6));
        small.params.slots = 1 << 12;
        for snap in [
            RingSnapshot::new("default/chat", 2, weighted),
            RingSnapshot::new("default/chat", 2, many),
            small,
        ] {
            let full = Ring::build(snap.clone()).expect("valid");
            assert_same_table(&old.build_from(snap).expect("valid"), &full);
        }
        let from_empty = Ring::empty("default/chat");
        let snap = RingSnapshot::new("default/chat", 1, members(3));
        assert_same_table(
            &from_empty.build_from(snap.clone()).expect("valid"),
            &Ring::build(snap).expect("valid"),
        );
    }

    #[test]
    fn build_from_validates_like_build() {
        let old = ring(1, members(3));
        let bad = RingSnapshot::new(
            "default/chat",
            2,
            vec![Member::active("a", "h:1").with_weight(0)],
        );
        assert!(matches!(old.build_from(bad), Err(RingError::Invalid(_))));
    }

    #[test]
    fn keys_without_an_old_owner_are_not_moved() {
        let old = ring(1, vec![]);
        let new = ring(2, members(3));
        let diff = old.diff(&new);
        assert_eq!(diff.moved_keys(["a", "b", "c"]).count(), 0);
    }
}
