//! Reference implementations of the algorithms the chosen one was measured against.
//!
//! They exist so `examples/ring-stats.rs`, `examples/ring-compare.rs` and the criterion bench can
//! compare balance, movement, lookup speed, build time and memory **in the same run**; nothing in
//! wscluster routes with them. Each uses the same key hash ([`KeyHash`]) as [`crate::Ring`], so the
//! comparison measures the algorithms, not the hash functions.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::hash::{HASH_SEED, KeyHash, member_hash, mix64};

/// A ketama-style ring (as in libketama and NGINX's `hash … consistent`): each member places
/// `points_per_weight × weight` points on a 64-bit circle; a key belongs to the first point at or
/// after its hash, wrapping around.
#[derive(Debug, Clone)]
pub struct Ketama {
    /// Sorted (point, member index) pairs.
    points: Vec<(u64, u32)>,
}

impl Ketama {
    /// Builds a ring from `(member id, weight)` pairs.
    pub fn new<'a>(
        members: impl IntoIterator<Item = (&'a str, u32)>,
        points_per_weight: u32,
    ) -> Self {
        let mut points = Vec::new();
        for (index, (id, weight)) in members.into_iter().enumerate() {
            for p in 0..points_per_weight * weight {
                let point = xxh3_64_with_seed(format!("{id}-{p}").as_bytes(), HASH_SEED);
                points.push((point, index as u32));
            }
        }
        points.sort_unstable();
        Ketama { points }
    }

    /// The owner's index (in construction order), or `None` for an empty ring.
    #[inline]
    pub fn owner(&self, hash: KeyHash) -> Option<u32> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|&(p, _)| p < hash.0);
        Some(self.points[if i == self.points.len() { 0 } else { i }].1)
    }

    /// Bytes held by the ring's points.
    pub fn memory_bytes(&self) -> usize {
        self.points.len() * std::mem::size_of::<(u64, u32)>()
    }
}

/// Maglev hashing (Eisenbud et al., NSDI 2016): every member fills a prime-sized lookup table by
/// walking its own permutation, round-robin, weighted by taking `weight` turns per round.
#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// The paper's recommended table size for up to a few hundred backends (a prime).
    pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

    /// Builds the table from `(member id, weight)` pairs; `table_size` should be a prime larger
    /// than 100 × members.
    pub fn new<'a>(members: impl IntoIterator<Item = (&'a str, u32)>, table_size: u32) -> Self {
        let members: Vec<(u64, u64, u32)> = members
            .into_iter()
            .map(|(id, w)| {
                let h = member_hash(id);
                let offset = h % u64::from(table_size);
                let skip = mix64(h) % (u64::from(table_size) - 1) + 1;
                (offset, skip, w)
            })
            .collect();
        let m = table_size as usize;
        let mut table = vec![u32::MAX; m];
        if members.is_empty() {
            return Maglev { table: Vec::new() };
        }
        let mut next = vec![0u64; members.len()];
        let mut filled = 0;
        'fill: loop {
            for (i, &(offset, skip, weight)) in members.iter().enumerate() {
                for _ in 0..weight {
                    let mut c = ((offset + next[i] * skip) % m as u64) as usize;
                    while table[c] != u32::MAX {
                        next[i] += 1;
                        c = ((offset + next[i] * skip) % m as u64) as usize;
                    }
                    table[c] = i as u32;
                    next[i] += 1;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table }
    }

    /// The owner's index (in construction order), or `None` for an empty table.
    #[inline]
    pub fn owner(&self, hash: KeyHash) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[hash.slot(self.table.len() as u32) as usize])
    }

    /// Bytes held by the table.
    pub fn memory_bytes(&self) -> usize {
        self.table.len() * std::mem::size_of::<u32>()
    }
}

/// Plain weighted rendezvous hashing without a table: every lookup scores every member, O(n).
#[derive(Debug, Clone)]
pub struct Rendezvous {
    members: Vec<(u64, u32)>,
}

impl Rendezvous {
    /// Builds from `(member id, weight)` pairs.
    pub fn new<'a>(members: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        Rendezvous {
            members: members
                .into_iter()
                .map(|(id, w)| (member_hash(id), w))
                .collect(),
        }
    }

    /// The owner's index (in construction order), or `None` when empty.
    #[inline]
    pub fn owner(&self, hash: KeyHash) -> Option<u32> {
        let k = mix64(hash.0);
        let uniform = self.members.windows(2).all(|w| w[0].1 == w[1].1);
        let mut best: Option<(u32, f64)> = None;
        for (i, &(mh, w)) in self.members.iter().enumerate() {
            let score = mix64(mh ^ k);
            let value = if uniform {
                -(score as f64)
            } else {
                crate::hash::neg_ln_unit(score) / f64::from(w)
            };
            if best.is_none_or(|(_, b)| value < b) {
                best = Some((i as u32, value));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.members.len() * std::mem::size_of::<(u64, u32)>()
    }
}

/// Balance of a key distribution over members.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Balance {
    /// Most-loaded member's keys over the mean.
    pub max_over_mean: f64,
    /// Least-loaded member's keys over the mean.
    pub min_over_mean: f64,
    /// Coefficient of variation (standard deviation over mean).
    pub cv: f64,
}

impl Balance {
    /// Balance of per-member key counts, each count divided by the member's weight first so a
    /// weighted ring is judged against its intended shares. `None` for no members.
    pub fn of(counts: &[u64], weights: &[u32]) -> Option<Balance> {
        if counts.is_empty() || counts.len() != weights.len() {
            return None;
        }
        let per_weight: Vec<f64> = counts
            .iter()
            .zip(weights)
            .map(|(&c, &w)| c as f64 / f64::from(w.max(1)))
            .collect();
        let n = per_weight.len() as f64;
        let mean = per_weight.iter().sum::<f64>() / n;
        if mean == 0.0 {
            return None;
        }
        let max = per_weight.iter().copied().fold(f64::MIN, f64::max);
        let min = per_weight.iter().copied().fold(f64::MAX, f64::min);
        let var = per_weight.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / n;
        Some(Balance {
            max_over_mean: max / mean,
            min_over_mean: min / mean,
            cv: var.sqrt() / mean,
        })
    }
}
