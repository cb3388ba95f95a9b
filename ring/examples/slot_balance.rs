//! Prints, for clusters of 10, 100 and 1,000 equal members, the largest member's share of slots
//! over the mean share at each slot count from 2^16 to 2^22, and the slot count
//! `recommended_slots` picks. The table in `docs/architecture.md` ("Choosing `slots`") is its
//! output.
//!
//! ```text
//! cargo run --release -p wscluster-ring --example slot-balance
//! ```

use wscluster_ring::{Member, Ring, RingSnapshot, recommended_slots};

fn max_over_mean(members: usize, slots: u32) -> f64 {
    let list = (0..members)
        .map(|i| Member::active(format!("node-{i}"), "127.0.0.1:1"))
        .collect();
    let mut snap = RingSnapshot::new("stats/balance", 1, list);
    snap.params.slots = slots;
    let ring = Ring::build(snap).expect("valid ring");
    let max = (0..members).map(|i| ring.slots_owned(i)).max().unwrap_or(0);
    f64::from(max) * members as f64 / f64::from(slots)
}

fn main() {
    let exponents = [16u32, 18, 19, 20, 22];
    let header: Vec<String> = exponents.iter().map(|e| format!("2^{e}")).collect();
    println!("| members | {} | recommended |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(exponents.len()));
    for members in [10usize, 100, 1_000] {
        let cells: Vec<String> = exponents
            .iter()
            .map(|e| format!("{:.3}", max_over_mean(members, 1 << e)))
            .collect();
        let recommended = recommended_slots(members);
        println!(
            "| {members} | {} | 2^{} |",
            cells.join(" | "),
            recommended.trailing_zeros()
        );
    }
}
