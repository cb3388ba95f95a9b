//! Errors of the ring crate. Each is a value a caller can match on; none is a panic.

use thiserror::Error;

/// Why a snapshot is not a valid ring.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The JSON did not parse or had fields the contract does not know.
    #[error("ring snapshot does not parse: {0}")]
    Parse(String),
    /// `clusterId` is empty.
    #[error("ring snapshot has an empty clusterId")]
    EmptyClusterId,
    /// Two members share an id.
    #[error("member id {id:?} appears more than once")]
    DuplicateMember {
        /// The repeated id.
        id: String,
    },
    /// A member id is empty, too long, or has whitespace or control characters.
    #[error(
        "member id {id:?} is invalid: ids are 1 to 253 printable characters without whitespace"
    )]
    InvalidMemberId {
        /// The offending id.
        id: String,
    },
    /// A member's address is empty, too long or has control characters.
    #[error("member {id:?} has an empty or invalid address")]
    InvalidAddress {
        /// The member whose address is wrong.
        id: String,
    },
    /// A weight is zero or above the maximum.
    #[error("member {id:?} has weight {weight}; weights must be 1 to {max}")]
    WeightOutOfRange {
        /// The member.
        id: String,
        /// The weight it had.
        weight: u32,
        /// The largest weight accepted.
        max: u32,
    },
    /// More members than a slot table can index.
    #[error("ring has {count} members; at most {max} are supported")]
    TooManyMembers {
        /// How many members the snapshot had.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The slot table size is out of range.
    #[error("params.slots is {slots}; it must be {min} to {max}")]
    SlotsOutOfRange {
        /// The requested size.
        slots: u32,
        /// Smallest size accepted.
        min: u32,
        /// Largest size accepted.
        max: u32,
    },
}

/// Why a ring cannot replace the current one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingError {
    /// The snapshot itself is invalid.
    #[error(transparent)]
    Invalid(#[from] SnapshotError),
    /// The offered version is not newer than the current one.
    #[error("ring version {offered} is not newer than the current version {current}")]
    NotNewer {
        /// The version in use.
        current: u64,
        /// The version offered.
        offered: u64,
    },
    /// The snapshot belongs to another cluster.
    #[error("ring for cluster {offered:?} cannot replace the ring of cluster {current:?}")]
    WrongCluster {
        /// The cluster of the ring in use.
        current: String,
        /// The cluster of the offered ring.
        offered: String,
    },
}

/// The ring has no active member, so no key has an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the ring has no active member")]
pub struct NoOwner;
