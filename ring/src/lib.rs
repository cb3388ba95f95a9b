//! # wscluster-ring
//!
//! The consistent-hash ring at the heart of wscluster, and the wire contracts its processes share.
//! Pure Rust: no async runtime, no I/O, no clock, no randomness. The operator uses it to publish
//! rings, the proxy to route and to find the connections whose owner moved, the node to refuse
//! keys it does not own.
//!
//! * [`RingSnapshot`] — the versioned, serialisable ring (the contract between processes).
//! * [`Ring`] — a built, immutable ring: key → owner in O(1) without allocating.
//! * [`RingDiff`] — which keys changed owner between two rings, one table read per key.
//! * [`contract`] — reset frames and close codes, client messages, the ring stream protocol, the
//!   RabbitMQ events, and the business-key rules.
//! * [`hash`] — the fixed hash functions (XXH3-64 with a fixed seed, SplitMix64).
//! * [`baselines`] — ketama and Maglev reference implementations, used only to measure the
//!   chosen algorithm against them.
//!
//! ```
//! use wscluster_ring::{KeyHash, Member, Ring, RingSnapshot};
//!
//! let members = (0..3).map(|i| Member::active(format!("chat-node-{i}"), format!("10.0.0.{i}:8080")));
//! let v1 = Ring::build(RingSnapshot::new("default/chat", 1, members.collect())).unwrap();
//! let owner = v1.owner("alice").unwrap();
//!
//! let mut next = v1.snapshot().clone();
//! next.version = 2;
//! next.members.push(Member::active("chat-node-3", "10.0.0.3:8080"));
//! let v2 = v1.replace(next).unwrap();
//! let diff = v1.diff(&v2);
//! // A key moves only onto the new member.
//! if diff.moved("alice") {
//!     assert_eq!(v2.owner("alice").unwrap().id, "chat-node-3");
//! } else {
//!     assert_eq!(v2.owner("alice").unwrap().id, owner.id);
//! }
//! # let _ = KeyHash::of("alice");
//! ```

pub mod baselines;
pub mod contract;
pub mod error;
pub mod hash;
mod ring;
mod snapshot;

pub use error::{NoOwner, RingError, SnapshotError};
pub use hash::KeyHash;
pub use ring::{INCREMENTAL_CHANGES_MAX, Move, MoveReason, Ring, RingDiff, Slot};
pub use snapshot::{
    Algorithm, DEFAULT_SLOTS, MAX_MEMBERS, MAX_SLOTS, MAX_WEIGHT, MIN_SLOTS, Member, MemberState,
    RingParams, RingSnapshot, recommended_slots,
};
