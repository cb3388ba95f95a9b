//! What the node's delivery operations promise, as types: the outcome of a send, a broadcast,
//! a presence look-up and a session's admission. The HTTP layer ([`crate::http`]) only parses,
//! authenticates and turns these into answers; [`crate::state::NodeState`] decides them.
//!
//! The rule these types carry: a send is acknowledged only once the message is stored (and says
//! whether it also reached a live session); anything else is a [`DeliveryError`], answered with
//! a 5xx, never a 2xx.

use wscluster_ring::contract::api;
pub use wscluster_ring::contract::api::{BroadcastReceipt, Presence, SendReceipt};

/// Why a send, a broadcast or a look-up did not happen. Nothing was stored or published: the
/// caller may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// A backend (the mailbox's Redis, the bus's RabbitMQ, presence) could not take the operation
    /// in time.
    #[error("{what} unavailable: {message}")]
    Unavailable {
        /// Which backend: `mailbox`, `bus`, `presence`.
        what: &'static str,
        /// What it said (never a credential).
        message: String,
    },
}

impl DeliveryError {
    /// A backend failure.
    pub fn unavailable(what: &'static str, error: impl std::fmt::Display) -> DeliveryError {
        DeliveryError::Unavailable {
            what,
            message: error.to_string(),
        }
    }

    /// The stable code of the error answer (`mailbox-unavailable`, …; see
    /// [`wscluster_ring::contract::api`]).
    pub fn code(&self) -> &'static str {
        match self {
            DeliveryError::Unavailable { what, .. } => match *what {
                MAILBOX => api::ERROR_MAILBOX_UNAVAILABLE,
                BUS => api::ERROR_BUS_UNAVAILABLE,
                PRESENCE => api::ERROR_PRESENCE_UNAVAILABLE,
                _ => api::ERROR_BACKEND_UNAVAILABLE,
            },
        }
    }
}

/// [`DeliveryError::Unavailable::what`] of the mailbox.
pub const MAILBOX: &str = "mailbox";
/// [`DeliveryError::Unavailable::what`] of the message bus.
pub const BUS: &str = "bus";
/// [`DeliveryError::Unavailable::what`] of presence.
pub const PRESENCE: &str = "presence";

/// How a new session of a key is let in, decided before the upgrade is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within the per-key cap.
    Admitted,
    /// Over the cap under the `replace-oldest` policy: the key's oldest session is closed
    /// (4002) when this one registers.
    ReplacesOldest,
}

/// Why a new session is refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key already has the most sessions allowed and the policy is `refuse` (429,
    /// [`api::ERROR_TOO_MANY_SESSIONS`]).
    #[error("the key already has {limit} sessions on this node")]
    TooManySessions {
        /// The cap.
        limit: usize,
    },
}
