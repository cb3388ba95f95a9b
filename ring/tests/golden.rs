//! Pins the key → owner mapping across releases, machines and endianness.
//!
//! `tests/data/golden.json` holds fixed rings and the owner of fixed keys under each. If this test
//! fails, the mapping changed: every proxy and node of a mixed-version cluster would disagree on
//! owners. That is only acceptable as a new `Algorithm` variant, never as an edit of the current
//! one. Regenerate the file only for a new algorithm: `WSCLUSTER_BLESS=1 cargo test -p
//! wscluster-ring --test golden`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use wscluster_ring::{KeyHash, Member, Ring, RingSnapshot};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Golden {
    key_hashes: Vec<(String, String)>,
    cases: Vec<Case>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Case {
    name: String,
    snapshot: RingSnapshot,
    owners: Vec<(String, String)>,
}

fn keys() -> Vec<String> {
    let mut keys: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    keys.extend(["alice", "bob", "Ünïcødé", "user:42@example.com", "x"].map(String::from));
    keys.push("k".repeat(128));
    keys
}

fn cases() -> Vec<(String, RingSnapshot)> {
    let m = |i: usize| Member::active(format!("chat-node-{i}"), format!("10.0.0.{i}:8080"));
    let three: Vec<Member> = (0..3).map(m).collect();
    let weighted = vec![
        m(0).with_weight(3),
        m(1),
        m(2).with_weight(2),
        m(3).draining(),
    ];
    let mut small = RingSnapshot::new("golden/small-table", 3, (0..5).map(m).collect());
    small.params.slots = 1 << 10;
    vec![
        (
            "three-equal".into(),
            RingSnapshot::new("golden/three", 1, three),
        ),
        (
            "weighted-with-draining".into(),
            RingSnapshot::new("golden/weighted", 2, weighted),
        ),
        ("small-table".into(), small),
        (
            "hundred".into(),
            RingSnapshot::new("golden/hundred", 4, (0..100).map(m).collect()),
        ),
    ]
}

fn compute() -> Golden {
    let key_hashes = keys()
        .into_iter()
        .map(|k| (k.clone(), format!("{:016x}", KeyHash::of(&k).0)))
        .collect();
    let cases = cases()
        .into_iter()
        .map(|(name, snapshot)| {
            let ring = Ring::build(snapshot.clone()).expect("golden rings are valid");
            let owners = keys()
                .into_iter()
                .map(|k| {
                    let owner = ring
                        .owner(&k)
                        .map(|m| m.id.clone())
                        .expect("golden rings have owners");
                    (k, owner)
                })
                .collect();
            Case {
                name,
                snapshot,
                owners,
            }
        })
        .collect();
    Golden { key_hashes, cases }
}

#[test]
fn key_to_owner_mapping_matches_the_checked_in_golden_vectors() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden.json");
    let computed = compute();
    if std::env::var_os("WSCLUSTER_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&computed).expect("serialises");
        std::fs::write(&path, text + "\n").expect("writes golden file");
    }
    let text = std::fs::read_to_string(&path).expect("golden file exists");
    let golden: Golden = serde_json::from_str(&text).expect("golden file parses");
    assert_eq!(
        golden.key_hashes, computed.key_hashes,
        "the key hash function changed"
    );
    for (want, got) in golden.cases.iter().zip(&computed.cases) {
        assert_eq!(
            want.snapshot, got.snapshot,
            "case {} input changed",
            want.name
        );
        assert_eq!(
            want.owners, got.owners,
            "owners changed in case {}",
            want.name
        );
    }
    assert_eq!(golden.cases.len(), computed.cases.len());
}

/// The incremental path must give the golden owners too: each golden ring is built from the
/// same ring without its first member (a join) and from the ring with one more member (a leave).
#[test]
fn incremental_builds_reach_the_golden_owners() {
    for (name, snapshot) in cases() {
        let full = Ring::build(snapshot.clone()).expect("golden rings are valid");
        let mut without_first = snapshot.clone();
        without_first.members.remove(0);
        let mut with_extra = snapshot.clone();
        with_extra
            .members
            .push(Member::active("chat-node-extra", "10.0.0.99:8080"));
        for previous in [without_first, with_extra] {
            let previous = Ring::build(previous).expect("valid");
            let incremental = previous.build_from(snapshot.clone()).expect("valid");
            for key in keys() {
                assert_eq!(
                    incremental.owner(&key).map(|m| &m.id),
                    full.owner(&key).map(|m| &m.id),
                    "case {name}, key {key}"
                );
            }
        }
    }
}
