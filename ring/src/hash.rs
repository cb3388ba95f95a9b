//! The fixed hash functions every process agrees on.
//!
//! The mapping from key to owner is part of the wire contract: an operator, a proxy and a node
//! built from different releases, on different machines, must compute the same owner. So the
//! functions here are fixed forever for a given [`crate::Algorithm`]:
//!
//! * keys and member ids are hashed with **XXH3-64** (the xxHash 0.8 specification, which reads
//!   input as little-endian on every platform) seeded with [`HASH_SEED`];
//! * per-slot scores mix two 64-bit values with the **SplitMix64 finalizer** ([`mix64`]), which is
//!   a bijection with full avalanche, so scores of different members on one slot are independent;
//! * weighted scores use [`neg_ln_unit`], a logarithm computed only with IEEE 754 basic
//!   operations (which are correctly rounded everywhere), never the platform's `libm`.
//!
//! Changing any of these is a breaking change to the contract; `tests/golden.rs` fails if it
//! happens by accident.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed for every XXH3 call: the ASCII bytes of `"wsclustr"` read as a big-endian integer.
/// Chosen once, arbitrarily; it only has to be non-zero and never change.
pub const HASH_SEED: u64 = 0x7773_636c_7573_7472;

/// The 64-bit hash of a business key (for example a user id).
///
/// Store this per connection: [`crate::RingDiff::moved_hash`] answers "did this connection's
/// owner change" from it without touching the key again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub u64);

impl KeyHash {
    /// Hashes a key's bytes (UTF-8 for string keys) with XXH3-64 and [`HASH_SEED`].
    #[inline]
    pub fn of(key: impl AsRef<[u8]>) -> Self {
        KeyHash(xxh3_64_with_seed(key.as_ref(), HASH_SEED))
    }

    /// The slot this hash falls in for a table of `slots` entries, by multiply-shift
    /// (Lemire's fast range reduction), which is unbiased for any `slots` and needs no division.
    #[inline]
    pub fn slot(self, slots: u32) -> u32 {
        ((u128::from(self.0) * u128::from(slots)) >> 64) as u32
    }
}

/// Hash of a member id; the member's identity on the ring.
#[inline]
pub fn member_hash(id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), HASH_SEED)
}

/// SplitMix64's finalizer (Steele, Lea, Flood 2014): a bijective 64-bit mixer with full avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `-ln(u)` for `u = (top 53 bits of score + 1) / 2^53`, so `u` is in `(0, 1]` and the result is
/// finite and non-negative.
///
/// Used by weighted rendezvous hashing (`score = -ln(u) / weight`, lowest wins), which gives each
/// member a share proportional to its weight. It is computed from `ln(m * 2^e) = e ln 2 + ln m`
/// with `ln m = 2 atanh((m - 1) / (m + 1))` summed as a fixed series. Only `+ - * /` on `f64` are
/// used, and Rust never fuses or reorders them, so the result is bit-identical on every IEEE 754
/// platform. Absolute error is below 1e-12, far finer than any weight ratio a user can express.
pub fn neg_ln_unit(score: u64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    const INV_2_POW_53: f64 = 1.0 / 9_007_199_254_740_992.0;
    let u = ((score >> 11) + 1) as f64 * INV_2_POW_53;
    // Exact decomposition u = m * 2^e with m in [1, 2): u is a normal number (u >= 2^-53).
    let bits = u.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    // m in [1, 2) gives s in [0, 1/3); the series' 12th term is below 3^-23 / 23 < 1e-12.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    for _ in 0..12 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    let ln_u = exponent as f64 * LN_2 + 2.0 * sum;
    -ln_u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_ln_unit_matches_std_ln_closely() {
        for score in [
            0u64,
            1,
            1 << 11,
            12_345_678_901,
            u64::MAX / 3,
            u64::MAX / 2,
            u64::MAX,
        ] {
            let u = ((score >> 11) + 1) as f64 / 9_007_199_254_740_992.0;
            let expected = -u.ln();
            let got = neg_ln_unit(score);
            assert!(
                (got - expected).abs() < 1e-11,
                "score {score}: {got} vs {expected}"
            );
            assert!(got >= 0.0);
        }
    }

    #[test]
    fn slot_reduction_stays_in_range() {
        for h in [0u64, 1, u64::MAX / 2, u64::MAX] {
            for slots in [1u32, 7, 65_536, 1 << 22] {
                assert!(KeyHash(h).slot(slots) < slots);
            }
        }
    }
}
