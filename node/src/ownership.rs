//! Which keys this node owns: the newest ring it knows, from `--ring-url` (the ring stream),
//! `--ring-file`, or nothing at all (standalone: every key is ours).
//!
//! The decision is a pure function, [`decide`], so the HTTP layer only maps its answer. The
//! rings themselves come from `wscluster-ring-stream` (`Subscription` or `watch_ring_file`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wscluster_ring::{KeyHash, Ring};

/// What the node knows about the ring.
#[derive(Debug, Clone)]
pub enum RingView {
    /// No ring configured: this node owns every key.
    Standalone,
    /// The newest ring received (None until the first one arrives).
    Watched(watch::Receiver<Option<Arc<Ring>>>),
}

impl RingView {
    /// The ring in use, if any.
    pub fn current(&self) -> Option<Arc<Ring>> {
        match self {
            RingView::Standalone => None,
            RingView::Watched(rx) => rx.borrow().clone(),
        }
    }

    /// The version in use (0 when standalone or before the first ring).
    pub fn version(&self) -> u64 {
        self.current().map_or(0, |r| r.version())
    }

    /// Whether the node can decide ownership (standalone, or a ring has arrived).
    pub fn ready(&self) -> bool {
        match self {
            RingView::Standalone => true,
            RingView::Watched(rx) => rx.borrow().is_some(),
        }
    }

    /// Waits until the ring in use is at least `version`, for at most `within`; true if it is.
    /// Standalone nodes have no versions and answer false at once.
    pub async fn wait_for_version(&self, version: u64, within: Duration) -> bool {
        let RingView::Watched(rx) = self else {
            return false;
        };
        let mut rx = rx.clone();
        let caught_up = rx.wait_for(|r| r.as_ref().is_some_and(|r| r.version() >= version));
        matches!(tokio::time::timeout(within, caught_up).await, Ok(Ok(_)))
    }

    /// Decides whether `me` owns `key` now.
    pub fn decide(&self, me: &str, key: &str) -> Ownership {
        match self {
            RingView::Standalone => Ownership::Owned { ring_version: 0 },
            RingView::Watched(rx) => decide(rx.borrow().as_deref(), me, KeyHash::of(key)),
        }
    }
}

/// The answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// This node owns the key under `ring_version` (0 when standalone).
    Owned {
        /// The ring version that decided.
        ring_version: u64,
    },
    /// Another member owns it: refuse with 421 and name the owner.
    NotOwner {
        /// The owner's member id.
        owner: String,
        /// The ring version that decided.
        ring_version: u64,
    },
    /// The ring has no active member (everyone draining): refuse with 503.
    NoOwner {
        /// The ring version that decided.
        ring_version: u64,
    },
    /// A ring source is configured but no ring has arrived yet: refuse with 503.
    Unknown,
}

/// Pure ownership decision for a key hash under a ring.
pub fn decide(ring: Option<&Ring>, me: &str, hash: KeyHash) -> Ownership {
    let Some(ring) = ring else {
        return Ownership::Unknown;
    };
    let ring_version = ring.version();
    match ring.owner_of_hash(hash) {
        Ok(m) if m.id == me => Ownership::Owned { ring_version },
        Ok(m) => Ownership::NotOwner {
            owner: m.id.clone(),
            ring_version,
        },
        Err(_) => Ownership::NoOwner { ring_version },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wscluster_ring::{Member, RingSnapshot};

    #[test]
    fn ownership_follows_the_ring_and_draining_members_own_nothing() {
        let ring = Ring::build(RingSnapshot::new(
            "ns/c",
            4,
            vec![Member::active("a", "h:1"), Member::active("b", "h:2")],
        ))
        .expect("ring");
        let owner = ring.owner("alice").expect("owner").id.clone();
        let other = if owner == "a" { "b" } else { "a" };
        let h = KeyHash::of("alice");
        assert_eq!(
            decide(Some(&ring), &owner, h),
            Ownership::Owned { ring_version: 4 }
        );
        assert_eq!(
            decide(Some(&ring), other, h),
            Ownership::NotOwner {
                owner: owner.clone(),
                ring_version: 4
            }
        );
        assert_eq!(decide(None, "a", h), Ownership::Unknown);
        let drained = Ring::build(RingSnapshot::new(
            "ns/c",
            5,
            vec![Member::active("a", "h:1").draining()],
        ))
        .expect("ring");
        assert_eq!(
            decide(Some(&drained), "a", h),
            Ownership::NoOwner { ring_version: 5 }
        );
    }
}
