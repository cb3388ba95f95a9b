//! Property tests of the ring's movement and balance guarantees.

use proptest::prelude::*;
use wscluster_ring::{KeyHash, Member, Ring, RingSnapshot};

fn ring(members: &[Member], version: u64) -> Ring {
    let mut snap = RingSnapshot::new("prop/ring", version, members.to_vec());
    // A smaller table keeps each case fast; the properties do not depend on its size.
    snap.params.slots = 1 << 12;
    Ring::build(snap).expect("valid ring")
}

fn members_strategy() -> impl Strategy<Value = Vec<Member>> {
    proptest::collection::btree_set("[a-z]{1,6}-[0-9]{1,3}", 1..24).prop_flat_map(|ids| {
        let n = ids.len();
        (Just(ids), proptest::collection::vec(1u32..5, n)).prop_map(|(ids, weights)| {
            ids.into_iter()
                .zip(weights)
                .map(|(id, w)| Member::active(id.clone(), format!("{id}:80")).with_weight(w))
                .collect()
        })
    })
}

fn keys() -> Vec<KeyHash> {
    (0..4_000)
        .map(|i| KeyHash::of(format!("key-{i}")))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn adding_a_member_moves_keys_only_onto_the_new_member(members in members_strategy(), weight in 1u32..5) {
        let old = ring(&members, 1);
        let mut more = members.clone();
        more.push(Member::active("zz-new", "new:80").with_weight(weight));
        let new = ring(&more, 2);
        let diff = old.diff(&new);
        for h in keys() {
            let before = old.owner_of_hash(h).map(|m| m.id.clone());
            let after = new.owner_of_hash(h).map(|m| m.id.clone());
            if before != after {
                prop_assert_eq!(after.as_deref(), Ok("zz-new"));
            }
            prop_assert_eq!(diff.moved_hash(h), before != after);
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_keys(members in members_strategy(), pick in any::<prop::sample::Index>()) {
        prop_assume!(members.len() > 1);
        let gone = pick.index(members.len());
        let old = ring(&members, 1);
        let mut fewer = members.clone();
        let removed = fewer.remove(gone);
        let new = ring(&fewer, 2);
        for h in keys() {
            let before = old.owner_of_hash(h).map(|m| m.id.clone()).expect("has owner");
            let after = new.owner_of_hash(h).map(|m| m.id.clone()).expect("has owner");
            if before != after {
                prop_assert_eq!(&before, &removed.id);
            }
            if before == removed.id {
                prop_assert_ne!(&after, &removed.id);
            }
        }
    }

    #[test]
    fn draining_a_member_moves_only_its_keys_and_it_owns_none(members in members_strategy(), pick in any::<prop::sample::Index>()) {
        prop_assume!(members.len() > 1);
        let drained = pick.index(members.len());
        let old = ring(&members, 1);
        let mut next = members.clone();
        next[drained] = next[drained].clone().draining();
        let new = ring(&next, 2);
        let id = &members[drained].id;
        for h in keys() {
            let before = old.owner_of_hash(h).map(|m| m.id.clone()).expect("has owner");
            let after = new.owner_of_hash(h).map(|m| m.id.clone()).expect("has owner");
            prop_assert_ne!(&after, id);
            if before != after {
                prop_assert_eq!(&before, id);
            }
        }
    }

    #[test]
    fn moved_fraction_on_add_stays_close_to_the_new_members_share(n in 2usize..40) {
        let members: Vec<Member> = (0..n).map(|i| Member::active(format!("m-{i}"), "h:1")).collect();
        let old = ring(&members, 1);
        let mut more = members.clone();
        more.push(Member::active("m-new", "h:1"));
        let new = ring(&more, 2);
        let moved = old.diff(&new).moved_slot_fraction().expect("same slot count");
        let optimal = 1.0 / (n + 1) as f64;
        // Slot-level noise: a binomial share of 4,096 slots; 5 standard deviations plus 1 %.
        let sigma = (optimal * (1.0 - optimal) / 4_096.0).sqrt();
        prop_assert!((moved - optimal).abs() <= 5.0 * sigma + 0.01, "moved {} vs optimal {}", moved, optimal);
    }

    #[test]
    fn lookups_never_panic_for_any_key(key in proptest::collection::vec(any::<u8>(), 0..300), members in members_strategy()) {
        let r = ring(&members, 1);
        prop_assert!(r.owner(&key).is_ok());
        prop_assert!(Ring::empty("x").owner(&key).is_err());
    }

    #[test]
    fn an_incremental_build_is_bit_for_bit_a_full_build(
        ids in proptest::collection::btree_set("[a-z]{1,6}-[0-9]{1,3}", 1..24),
        removed in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
        drained in proptest::collection::vec(any::<prop::sample::Index>(), 0..2),
        added in proptest::collection::btree_set("[a-z]{1,6}-[0-9]{1,3}", 0..3),
    ) {
        let members: Vec<Member> = ids.iter().map(|id| Member::active(id.clone(), format!("{id}:80"))).collect();
        let old = ring(&members, 1);
        let mut next = members.clone();
        for pick in &removed {
            if !next.is_empty() {
                next.remove(pick.index(next.len()));
            }
        }
        for pick in &drained {
            if !next.is_empty() {
                let i = pick.index(next.len());
                next[i] = next[i].clone().draining();
            }
        }
        for id in added.iter().filter(|id| !ids.contains(*id)) {
            next.push(Member::active(id.clone(), format!("{id}:80")));
        }
        let mut snap = RingSnapshot::new("prop/ring", 2, next);
        snap.params.slots = 1 << 12;
        let full = Ring::build(snap.clone()).expect("valid ring");
        let incremental = old.build_from(snap).expect("valid ring");
        prop_assert_eq!(incremental.members(), full.members());
        for slot in 0..full.slot_count() {
            let h = KeyHash(u64::from(slot) << 52);
            prop_assert_eq!(incremental.owner_index(h), full.owner_index(h));
        }
        for (i, _) in full.members().iter().enumerate() {
            prop_assert_eq!(incremental.slots_owned(i), full.slots_owned(i));
        }
    }
}
