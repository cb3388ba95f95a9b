//! Prints one JSON object with the balance and movement of the wscluster ring, and of a
//! ketama ring with 160 points per member computed in the same run, for 100,000 keys
//! `u0`…`u99999` over members `node-0`…`node-9`.
//!
//! ```text
//! cargo run --release -p wscluster-ring --example ring-stats
//! ```
//!
//! * `max_over_mean`, `min_over_mean`, `cv`: keys per member relative to the mean.
//! * `moved_fraction_add`: keys whose owner changed going from 10 to 11 members;
//!   `optimal_add` = 1/11 is the least any algorithm can move.
//! * `moved_between_old_members_add`: keys that moved from one old member to another (must be 0).
//! * `moved_fraction_remove`: keys whose owner changed going from 10 to 9 members
//!   (`optimal_remove` = 1/10).

use serde_json::{Value, json};
use wscluster_ring::baselines::{Balance, Ketama};
use wscluster_ring::{KeyHash, Member, Ring, RingSnapshot};

const KEYS: usize = 100_000;
const MEMBERS: usize = 10;
const KETAMA_POINTS: u32 = 160;

/// Owner of each key as a member id index for a given member count.
trait Owners {
    fn owners(&self, keys: &[KeyHash]) -> Vec<String>;
}

struct Table(Ring);
impl Owners for Table {
    fn owners(&self, keys: &[KeyHash]) -> Vec<String> {
        keys.iter()
            .map(|&h| {
                self.0
                    .owner_of_hash(h)
                    .map(|m| m.id.clone())
                    .unwrap_or_default()
            })
            .collect()
    }
}

struct Ket(Ketama, Vec<String>);
impl Owners for Ket {
    fn owners(&self, keys: &[KeyHash]) -> Vec<String> {
        keys.iter()
            .map(|&h| {
                self.0
                    .owner(h)
                    .map(|i| self.1[i as usize].clone())
                    .unwrap_or_default()
            })
            .collect()
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn table(n: usize) -> Table {
    let members = ids(n)
        .into_iter()
        .map(|id| Member::active(id, "127.0.0.1:1"))
        .collect();
    Table(Ring::build(RingSnapshot::new("stats/ring", 1, members)).expect("valid ring"))
}

fn ketama(n: usize) -> Ket {
    let ids = ids(n);
    Ket(
        Ketama::new(ids.iter().map(|id| (id.as_str(), 1)), KETAMA_POINTS),
        ids,
    )
}

fn stats(build: impl Fn(usize) -> Box<dyn Owners>, keys: &[KeyHash]) -> Value {
    let base = build(MEMBERS).owners(keys);
    let added = build(MEMBERS + 1).owners(keys);
    let removed = build(MEMBERS - 1).owners(keys);
    let mut counts = vec![0u64; MEMBERS];
    for owner in &base {
        if let Some(i) = owner
            .strip_prefix("node-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            counts[i] += 1;
        }
    }
    let balance = Balance::of(&counts, &[1; MEMBERS]).expect("keys were assigned");
    let new_id = format!("node-{MEMBERS}");
    let moved_add = base.iter().zip(&added).filter(|(a, b)| a != b).count();
    let between_old = base
        .iter()
        .zip(&added)
        .filter(|(a, b)| a != b && **b != new_id)
        .count();
    let moved_remove = base.iter().zip(&removed).filter(|(a, b)| a != b).count();
    let keys_f = keys.len() as f64;
    json!({
        "members": MEMBERS,
        "keys": keys.len(),
        "max_over_mean": balance.max_over_mean,
        "min_over_mean": balance.min_over_mean,
        "cv": balance.cv,
        "moved_fraction_add": moved_add as f64 / keys_f,
        "moved_between_old_members_add": between_old,
        "moved_fraction_remove": moved_remove as f64 / keys_f,
        "optimal_add": 1.0 / (MEMBERS + 1) as f64,
        "optimal_remove": 1.0 / MEMBERS as f64,
        "moved_add_over_optimal": (moved_add as f64 / keys_f) * (MEMBERS + 1) as f64,
    })
}

fn main() {
    let keys: Vec<KeyHash> = (0..KEYS).map(|i| KeyHash::of(format!("u{i}"))).collect();
    let mut out = stats(|n| Box::new(table(n)), &keys);
    out["algorithm"] = json!("rendezvous-table");
    out["slots"] = json!(wscluster_ring::DEFAULT_SLOTS);
    let mut ket = stats(|n| Box::new(ketama(n)), &keys);
    ket["algorithm"] = json!(format!("ketama-{KETAMA_POINTS}"));
    out["ketama"] = ket;
    println!("{out}");
}
