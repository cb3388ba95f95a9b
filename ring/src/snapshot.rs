//! The versioned ring snapshot: the one serialised form of a ring that the operator publishes and
//! the proxies, nodes and local mode consume.
//!
//! ```json
//! {
//!   "clusterId": "default/chat",
//!   "version": 7,
//!   "members": [
//!     {"id": "chat-node-0", "address": "10.0.0.5:8080", "weight": 1, "state": "active"},
//!     {"id": "chat-node-1", "address": "10.0.0.6:8080", "weight": 1, "state": "draining"}
//!   ],
//!   "params": {"algorithm": "rendezvous-table", "slots": 65536}
//! }
//! ```
//!
//! Unknown fields are rejected rather than ignored, so a producer and a consumer that disagree
//! on the contract fail loudly instead of routing differently.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::SnapshotError;

/// Longest member id accepted: a DNS subdomain (RFC 1123), which is what a pod name is.
pub const MAX_MEMBER_ID_LEN: usize = 253;
/// Longest member address accepted (`host:port`, an IPv6 literal or a DNS name plus a port).
pub const MAX_ADDRESS_LEN: usize = 512;
/// Largest weight accepted. Weights are relative; 10,000 leaves room for fine ratios while
/// keeping `-ln(u) / weight` far from floating-point underflow.
pub const MAX_WEIGHT: u32 = 10_000;
/// Most members a ring may have. Owners are stored as `u16` indices in the slot table and
/// `u16::MAX` means "no owner".
pub const MAX_MEMBERS: usize = u16::MAX as usize - 1;
/// Smallest slot table accepted; fewer slots make balance visibly coarse even for 3 members.
pub const MIN_SLOTS: u32 = 1 << 10;
/// Largest slot table accepted (4 Mi slots, 8 MiB of `u16`), enough for 10,000 members at
/// about 400 slots each.
pub const MAX_SLOTS: u32 = 1 << 22;
/// Default slot table: 65,536 slots (128 KiB). With 100 members each owns ~655 slots, so slot
/// granularity adds under 4 % (one standard deviation) to the key-level noise; measured in
/// `docs/architecture.md`.
pub const DEFAULT_SLOTS: u32 = 1 << 16;

/// The slot count to use for a cluster of `members`: the power of two at or above 4,096 slots
/// per member, within [`DEFAULT_SLOTS`] and [`MAX_SLOTS`]. At 4,096 slots per member the table
/// adds about 1.6 % (one standard deviation) to each member's share, so the largest share of
/// 100 members stays within 1.05 of the mean (the table in `docs/architecture.md`).
pub fn recommended_slots(members: usize) -> u32 {
    let wanted = (members as u64).saturating_mul(4_096);
    let pow2 = wanted.checked_next_power_of_two().unwrap_or(u64::MAX);
    pow2.clamp(u64::from(DEFAULT_SLOTS), u64::from(MAX_SLOTS)) as u32
}

/// Whether a member takes keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Owns its share of keys.
    #[default]
    Active,
    /// Leaving: owns no keys. Its connections are reset with reason "drain" and it is removed
    /// once empty or when the drain timeout passes.
    Draining,
}

/// One WebSocket server on the ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    /// Stable identity, such as the StatefulSet pod name, so a restarted pod takes back its keys.
    pub id: String,
    /// Where proxies reach it: `host:port`.
    pub address: String,
    /// Relative share of keys, 1 to [`MAX_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Active members own keys; draining members own none.
    #[serde(default)]
    pub state: MemberState,
}

fn default_weight() -> u32 {
    1
}

impl Member {
    /// An active member of weight 1.
    pub fn active(id: impl Into<String>, address: impl Into<String>) -> Self {
        Member {
            id: id.into(),
            address: address.into(),
            weight: 1,
            state: MemberState::Active,
        }
    }

    /// The same member with another weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The same member, draining.
    pub fn draining(mut self) -> Self {
        self.state = MemberState::Draining;
        self
    }

    /// Whether this member owns keys.
    pub fn is_active(&self) -> bool {
        self.state == MemberState::Active
    }
}

/// Which key-to-member algorithm a snapshot uses. Only one exists today; the enum keeps the
/// contract open for another without guessing from the shape of the params.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Weighted rendezvous (highest-random-weight) hashing evaluated once per slot into a lookup
    /// table: O(1) lookups, minimal movement, weights. See `docs/architecture.md` for why.
    #[default]
    RendezvousTable,
}

/// Algorithm parameters carried in every snapshot, so every consumer builds the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingParams {
    /// The algorithm.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Size of the slot table, [`MIN_SLOTS`] to [`MAX_SLOTS`].
    #[serde(default = "default_slots")]
    pub slots: u32,
}

fn default_slots() -> u32 {
    DEFAULT_SLOTS
}

impl Default for RingParams {
    fn default() -> Self {
        RingParams {
            algorithm: Algorithm::default(),
            slots: DEFAULT_SLOTS,
        }
    }
}

/// A versioned ring: the unit the operator publishes and everyone else applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingSnapshot {
    /// Which cluster this ring belongs to, `namespace/name` in Kubernetes.
    pub cluster_id: String,
    /// Strictly increasing per cluster; a consumer refuses a snapshot that is not newer.
    pub version: u64,
    /// The members, in any order (the built ring sorts them by id).
    pub members: Vec<Member>,
    /// Algorithm parameters.
    #[serde(default)]
    pub params: RingParams,
}

impl RingSnapshot {
    /// A snapshot with default parameters.
    pub fn new(cluster_id: impl Into<String>, version: u64, members: Vec<Member>) -> Self {
        RingSnapshot {
            cluster_id: cluster_id.into(),
            version,
            members,
            params: RingParams::default(),
        }
    }

    /// Parses and validates a snapshot from JSON.
    pub fn from_json(text: &str) -> Result<Self, SnapshotError> {
        let snapshot: RingSnapshot =
            serde_json::from_str(text).map_err(|e| SnapshotError::Parse(e.to_string()))?;
        snapshot.validate()?;
        Ok(snapshot)
    }

    /// Serialises to compact JSON. Infallible for this type (string keys, no maps).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("snapshot serialises: {e}"))
    }

    /// Checks every rule the type cannot express: non-empty cluster id, member ids that are
    /// non-empty, short, printable and unique, non-empty addresses, weights in range, and the
    /// slot count in range. Called by [`crate::Ring::build`], so no invalid ring can exist.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        if self.cluster_id.trim().is_empty() {
            return Err(SnapshotError::EmptyClusterId);
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(SnapshotError::TooManyMembers {
                count: self.members.len(),
                max: MAX_MEMBERS,
            });
        }
        if !(MIN_SLOTS..=MAX_SLOTS).contains(&self.params.slots) {
            return Err(SnapshotError::SlotsOutOfRange {
                slots: self.params.slots,
                min: MIN_SLOTS,
                max: MAX_SLOTS,
            });
        }
        let mut seen = HashSet::with_capacity(self.members.len());
        for member in &self.members {
            if member.id.is_empty()
                || member.id.len() > MAX_MEMBER_ID_LEN
                || member
                    .id
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(SnapshotError::InvalidMemberId {
                    id: member.id.clone(),
                });
            }
            if !seen.insert(member.id.as_str()) {
                return Err(SnapshotError::DuplicateMember {
                    id: member.id.clone(),
                });
            }
            if member.address.trim().is_empty()
                || member.address.len() > MAX_ADDRESS_LEN
                || member.address.chars().any(char::is_control)
            {
                return Err(SnapshotError::InvalidAddress {
                    id: member.id.clone(),
                });
            }
            if member.weight == 0 || member.weight > MAX_WEIGHT {
                return Err(SnapshotError::WeightOutOfRange {
                    id: member.id.clone(),
                    weight: member.weight,
                    max: MAX_WEIGHT,
                });
            }
        }
        Ok(())
    }

    /// The member with this id, if any.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Members that own keys.
    pub fn active_members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.is_active())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommended_slots_grow_with_the_cluster_within_the_bounds() {
        assert_eq!(recommended_slots(0), DEFAULT_SLOTS);
        assert_eq!(recommended_slots(3), DEFAULT_SLOTS);
        assert_eq!(recommended_slots(16), DEFAULT_SLOTS);
        assert_eq!(recommended_slots(17), 1 << 17);
        assert_eq!(recommended_slots(100), 1 << 19);
        assert_eq!(recommended_slots(1_024), MAX_SLOTS);
        assert_eq!(recommended_slots(usize::MAX), MAX_SLOTS);
    }

    fn snapshot(members: Vec<Member>) -> RingSnapshot {
        RingSnapshot::new("default/chat", 1, members)
    }

    #[test]
    fn json_round_trips_with_camel_case_fields() {
        let s = snapshot(vec![
            Member::active("n-0", "127.0.0.1:1")
                .with_weight(3)
                .draining(),
        ]);
        let json = s.to_json();
        assert!(json.contains("\"clusterId\":\"default/chat\""), "{json}");
        assert!(json.contains("\"state\":\"draining\""), "{json}");
        assert!(
            json.contains("\"algorithm\":\"rendezvous-table\""),
            "{json}"
        );
        assert_eq!(RingSnapshot::from_json(&json).ok(), Some(s));
    }

    #[test]
    fn defaults_fill_weight_state_and_params() {
        let json = r#"{"clusterId":"a/b","version":2,"members":[{"id":"n","address":"h:1"}]}"#;
        let s = RingSnapshot::from_json(json).expect("valid");
        assert_eq!(s.members[0].weight, 1);
        assert_eq!(s.members[0].state, MemberState::Active);
        assert_eq!(s.params, RingParams::default());
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        for json in [
            r#"{"clusterId":"a/b","version":1,"members":[],"extra":1}"#,
            r#"{"clusterId":"a/b","version":1,"members":[{"id":"n","address":"h:1","zone":"x"}]}"#,
            r#"{"clusterId":"a/b","version":1,"members":[],"params":{"slots":65536,"vnodes":3}}"#,
        ] {
            let err = RingSnapshot::from_json(json).expect_err(json);
            assert!(
                matches!(err, SnapshotError::Parse(ref m) if m.contains("unknown field")),
                "{err}"
            );
        }
    }

    #[test]
    fn duplicate_ids_zero_weight_and_bad_slots_are_refused_with_clear_errors() {
        let dup = snapshot(vec![Member::active("n", "h:1"), Member::active("n", "h:2")]);
        assert_eq!(
            dup.validate(),
            Err(SnapshotError::DuplicateMember { id: "n".into() })
        );
        let zero = snapshot(vec![Member::active("n", "h:1").with_weight(0)]);
        let err = zero.validate().expect_err("zero weight");
        assert_eq!(
            err.to_string(),
            "member \"n\" has weight 0; weights must be 1 to 10000"
        );
        let mut slots = snapshot(vec![]);
        slots.params.slots = 3;
        assert!(matches!(
            slots.validate(),
            Err(SnapshotError::SlotsOutOfRange { slots: 3, .. })
        ));
        let empty_id = snapshot(vec![Member::active("", "h:1")]);
        assert!(matches!(
            empty_id.validate(),
            Err(SnapshotError::InvalidMemberId { .. })
        ));
        let ctl = snapshot(vec![Member::active("a\nb", "h:1")]);
        assert!(matches!(
            ctl.validate(),
            Err(SnapshotError::InvalidMemberId { .. })
        ));
        let no_addr = snapshot(vec![Member::active("n", " ")]);
        assert!(matches!(
            no_addr.validate(),
            Err(SnapshotError::InvalidAddress { .. })
        ));
        let no_cluster = RingSnapshot::new("", 1, vec![]);
        assert_eq!(no_cluster.validate(), Err(SnapshotError::EmptyClusterId));
    }

    #[test]
    fn malformed_json_is_a_parse_error_not_a_panic() {
        for json in [
            "",
            "{",
            "[]",
            r#"{"clusterId":1}"#,
            r#"{"clusterId":"a","version":-1,"members":[]}"#,
        ] {
            assert!(
                matches!(RingSnapshot::from_json(json), Err(SnapshotError::Parse(_))),
                "{json}"
            );
        }
    }
}
