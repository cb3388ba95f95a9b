//! Compares the wscluster ring with ketama (160 and 1,000 points per member), Maglev and plain
//! rendezvous hashing on balance, movement, build time and memory for 3 to 1,000 members, in one
//! run, and prints a Markdown table (the one recorded in `docs/architecture.md`).
//!
//! ```text
//! cargo run --release -p wscluster-ring --example ring-compare
//! ```
//!
//! Lookup speed is measured by `cargo bench -p wscluster-ring`, not here.

use std::time::Instant;

use wscluster_ring::baselines::{Balance, Ketama, Maglev, Rendezvous};
use wscluster_ring::{KeyHash, Member, Ring, RingSnapshot};

const KEYS: usize = 1_000_000;
const SIZES: [usize; 4] = [3, 10, 100, 1_000];

/// One algorithm under test: builds a lookup for `n` members and answers owner indices.
trait Algo {
    fn name(&self) -> &'static str;
    fn build(&self, ids: &[String]) -> Box<dyn Lookup>;
}

trait Lookup {
    fn owner(&self, h: KeyHash) -> u32;
    fn memory_bytes(&self) -> usize;
}

struct TableAlgo(u32, &'static str);
struct TableLookup(Ring);
impl Algo for TableAlgo {
    fn name(&self) -> &'static str {
        self.1
    }
    fn build(&self, ids: &[String]) -> Box<dyn Lookup> {
        let members = ids
            .iter()
            .map(|id| Member::active(id.clone(), "h:1"))
            .collect();
        let mut snapshot = RingSnapshot::new("cmp/ring", 1, members);
        snapshot.params.slots = self.0;
        Box::new(TableLookup(Ring::build(snapshot).expect("valid")))
    }
}
impl Lookup for TableLookup {
    fn owner(&self, h: KeyHash) -> u32 {
        // Member indices follow id order in the built ring; map back to the node number.
        self.0
            .owner_of_hash(h)
            .ok()
            .and_then(|m| m.id.strip_prefix("node-")?.parse().ok())
            .unwrap_or(u32::MAX)
    }
    fn memory_bytes(&self) -> usize {
        self.0.slot_count() as usize * 2
    }
}

struct KetamaAlgo(u32, &'static str);
impl Algo for KetamaAlgo {
    fn name(&self) -> &'static str {
        self.1
    }
    fn build(&self, ids: &[String]) -> Box<dyn Lookup> {
        Box::new(Ketama::new(ids.iter().map(|id| (id.as_str(), 1)), self.0))
    }
}
impl Lookup for Ketama {
    fn owner(&self, h: KeyHash) -> u32 {
        Ketama::owner(self, h).unwrap_or(u32::MAX)
    }
    fn memory_bytes(&self) -> usize {
        Ketama::memory_bytes(self)
    }
}

struct MaglevAlgo;
impl Algo for MaglevAlgo {
    fn name(&self) -> &'static str {
        "maglev (65,537)"
    }
    fn build(&self, ids: &[String]) -> Box<dyn Lookup> {
        Box::new(Maglev::new(
            ids.iter().map(|id| (id.as_str(), 1)),
            Maglev::DEFAULT_TABLE_SIZE,
        ))
    }
}
impl Lookup for Maglev {
    fn owner(&self, h: KeyHash) -> u32 {
        Maglev::owner(self, h).unwrap_or(u32::MAX)
    }
    fn memory_bytes(&self) -> usize {
        Maglev::memory_bytes(self)
    }
}

struct PlainAlgo;
impl Algo for PlainAlgo {
    fn name(&self) -> &'static str {
        "rendezvous (no table)"
    }
    fn build(&self, ids: &[String]) -> Box<dyn Lookup> {
        Box::new(Rendezvous::new(ids.iter().map(|id| (id.as_str(), 1))))
    }
}
impl Lookup for Rendezvous {
    fn owner(&self, h: KeyHash) -> u32 {
        Rendezvous::owner(self, h).unwrap_or(u32::MAX)
    }
    fn memory_bytes(&self) -> usize {
        Rendezvous::memory_bytes(self)
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn main() {
    let keys: Vec<KeyHash> = (0..KEYS).map(|i| KeyHash::of(format!("u{i}"))).collect();
    let algos: Vec<Box<dyn Algo>> = vec![
        Box::new(TableAlgo(
            1 << 16,
            "rendezvous-table 2^16 (wscluster default)",
        )),
        Box::new(TableAlgo(1 << 20, "rendezvous-table 2^20 (wscluster)")),
        Box::new(KetamaAlgo(160, "ketama-160")),
        Box::new(KetamaAlgo(1_000, "ketama-1000")),
        Box::new(MaglevAlgo),
        Box::new(PlainAlgo),
    ];
    println!(
        "| members | algorithm | max/mean | cv | moved on add / optimal | moved between old members | moved on remove / optimal | build ms | memory KiB |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for n in SIZES {
        for algo in &algos {
            let base_ids = ids(n);
            let started = Instant::now();
            let base = algo.build(&base_ids);
            let build_ms = started.elapsed().as_secs_f64() * 1e3;
            let added = algo.build(&ids(n + 1));
            let removed_ids: Vec<String> = base_ids.iter().take(n - 1).cloned().collect();
            let removed = algo.build(&removed_ids);
            let mut counts = vec![0u64; n];
            let (mut moved_add, mut between_old, mut moved_remove) = (0usize, 0usize, 0usize);
            for &h in &keys {
                let o = base.owner(h);
                counts[o as usize] += 1;
                let a = added.owner(h);
                if a != o {
                    moved_add += 1;
                    if a != n as u32 {
                        between_old += 1;
                    }
                }
                if removed.owner(h) != o {
                    moved_remove += 1;
                }
            }
            let balance = Balance::of(&counts, &vec![1; n]).expect("keys assigned");
            let k = KEYS as f64;
            println!(
                "| {n} | {} | {:.3} | {:.4} | {:.3} | {:.4} | {:.3} | {:.2} | {:.0} |",
                algo.name(),
                balance.max_over_mean,
                balance.cv,
                moved_add as f64 / k * (n + 1) as f64,
                between_old as f64 / k,
                moved_remove as f64 / k * n as f64,
                build_ms,
                base.memory_bytes() as f64 / 1024.0,
            );
        }
    }
}
