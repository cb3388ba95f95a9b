//! The sessions this node holds, by key: up to `--sessions-per-key` per key (a user's tabs and
//! devices). Every session of a key gets every message for it. Over the cap, the
//! [`SessionPolicy`] decides: refuse the newcomer, or close the key's oldest session with
//! `CLOSE_REPLACED` (4002).
//!
//! Sharded maps behind short `std::sync::Mutex` sections (never held across an await), each
//! session reachable through two bounded queues: data (messages) and control (close commands).
//! The cap is checked under the shard lock when a session registers, so two racing connects
//! cannot both take the last place.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use wscluster_ring::KeyHash;

use crate::delivery::{Admission, Refusal};

/// Number of shards; a power of two well above the core count keeps lock contention negligible.
const SHARDS: usize = 64;
/// Control commands queued per session; a session takes only the first close.
pub const CONTROL_QUEUE: usize = 2;

/// What a session over the per-key cap does (`--session-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SessionPolicy {
    /// Refuse the new session (429 before the upgrade).
    #[default]
    Refuse,
    /// Let it in and close the key's oldest session with 4002 (the seed's behaviour with a cap
    /// of 1).
    ReplaceOldest,
}

/// The per-key cap and what to do over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimit {
    /// Most sessions one key may have here (at least 1).
    pub per_key: usize,
    /// Over the cap.
    pub policy: SessionPolicy,
}

impl SessionLimit {
    /// Whether a key with `sessions` open sessions may open one more.
    pub fn admit(self, sessions: usize) -> Result<Admission, Refusal> {
        if sessions < self.per_key {
            Ok(Admission::Admitted)
        } else if self.policy == SessionPolicy::ReplaceOldest {
            Ok(Admission::ReplacesOldest)
        } else {
            Err(Refusal::TooManySessions {
                limit: self.per_key,
            })
        }
    }
}

/// A frame for a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The mailbox epoch and offset of a `message`; a session skips a message whose epoch and
    /// offset it already delivered.
    pub position: Option<(Arc<str>, u64)>,
    /// The JSON text.
    pub text: Utf8Bytes,
    /// Metric label (`message`, `broadcast`).
    pub kind: &'static str,
}

/// A command that ends a session.
#[derive(Debug, Clone)]
pub struct Close {
    /// A text frame to send first (a reset frame), if any.
    pub frame: Option<Utf8Bytes>,
    /// The close code.
    pub code: u16,
    /// The close reason (also the metric label).
    pub reason: &'static str,
}

/// How to reach a live session.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Unique id of the connection within this process.
    pub conn: u64,
    /// The presence connection id (unique across restarts and nodes).
    pub conn_tag: Arc<str>,
    /// Messages.
    pub data: mpsc::Sender<Outbound>,
    /// Close commands.
    pub control: mpsc::Sender<Close>,
}

/// What happened to a message for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Sessions it was queued to.
    pub queued: usize,
    /// Sessions whose queue was full: they are being closed (1013).
    pub overflowed: usize,
}

/// A key's sessions here, oldest first, and the presence tag they share.
#[derive(Debug)]
struct KeySessions {
    /// The presence connection id recorded for the key while any of its sessions lives: the
    /// first session's tag, so presence names this node until the last session leaves.
    presence_tag: Arc<str>,
    /// Oldest first.
    sessions: Vec<Handle>,
}

/// The outcome of registering a session.
#[derive(Debug)]
pub struct Registered {
    /// The presence tag to record for the key.
    pub presence_tag: Arc<str>,
    /// The oldest session, removed to make room (replace-oldest): the caller closes it.
    pub replaced: Option<Handle>,
}

/// The outcome of removing a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// It was not registered (already removed, or replaced).
    NotFound,
    /// Removed; other sessions of the key remain.
    Others,
    /// Removed, and it was the key's last: presence under this tag can go.
    Last(Arc<str>),
}

/// One shard of the registry.
type Shard = Mutex<HashMap<Arc<str>, KeySessions>>;

/// Sessions by key.
#[derive(Debug)]
pub struct Registry {
    /// Key → sessions, sharded by key hash.
    shards: Box<[Shard]>,
    /// Live sessions.
    count: AtomicUsize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

/// The close sent to a client that does not read fast enough: 1013 "try again later".
pub fn slow_consumer_close() -> Close {
    Close {
        frame: None,
        code: 1013,
        reason: "slow-consumer",
    }
}

/// The close sent to a session that lost the race for a key's last place under the `refuse`
/// policy (it passed the check before the upgrade, another session registered first): 1013
/// "try again later".
pub fn over_cap_close() -> Close {
    Close {
        frame: None,
        code: 1013,
        reason: "too-many-sessions",
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            count: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, KeySessions>> {
        let i = (KeyHash::of(key).0 as usize) % SHARDS;
        // A poisoned shard only means another thread panicked mid-insert; the map is still valid.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live sessions.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Registers a session under `limit`: refused over the cap with [`SessionPolicy::Refuse`],
    /// or admitted with the oldest session taken out (returned, for the caller to close).
    pub fn insert(
        &self,
        key: Arc<str>,
        handle: Handle,
        limit: SessionLimit,
    ) -> Result<Registered, Refusal> {
        let mut shard = self.shard(&key);
        let entry = shard.entry(key).or_insert_with(|| KeySessions {
            presence_tag: handle.conn_tag.clone(),
            sessions: Vec::new(),
        });
        let replaced = match limit.admit(entry.sessions.len())? {
            Admission::Admitted => None,
            Admission::ReplacesOldest => Some(entry.sessions.remove(0)),
        };
        entry.sessions.push(handle);
        if replaced.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Registered {
            presence_tag: entry.presence_tag.clone(),
            replaced,
        })
    }

    /// Removes connection `conn` of `key`.
    pub fn remove(&self, key: &str, conn: u64) -> Removed {
        let mut shard = self.shard(key);
        let Some(entry) = shard.get_mut(key) else {
            return Removed::NotFound;
        };
        let Some(i) = entry.sessions.iter().position(|h| h.conn == conn) else {
            return Removed::NotFound;
        };
        entry.sessions.remove(i);
        self.count.fetch_sub(1, Ordering::Relaxed);
        if entry.sessions.is_empty() {
            let tag = entry.presence_tag.clone();
            shard.remove(key);
            Removed::Last(tag)
        } else {
            Removed::Others
        }
    }

    /// Whether a session for `key` is here.
    pub fn contains(&self, key: &str) -> bool {
        self.shard(key).contains_key(key)
    }

    /// How many sessions `key` has here.
    pub fn sessions_of(&self, key: &str) -> usize {
        self.shard(key).get(key).map_or(0, |e| e.sessions.len())
    }

    /// The handles of `key`'s sessions, oldest first.
    pub fn get(&self, key: &str) -> Vec<Handle> {
        self.shard(key)
            .get(key)
            .map_or_else(Vec::new, |e| e.sessions.clone())
    }

    /// Queues a message for every session of `key`.
    pub fn deliver(&self, key: &str, message: Outbound) -> Delivery {
        let mut delivery = Delivery::default();
        for handle in self.get(key) {
            match deliver_to(&handle, message.clone()) {
                Queued::Yes => delivery.queued += 1,
                Queued::Overflow => delivery.overflowed += 1,
                Queued::Gone => {}
            }
        }
        delivery
    }

    /// Asks every session of `key` to close; returns how many there were.
    pub fn close(&self, key: &str, close: Close) -> usize {
        let handles = self.get(key);
        for h in &handles {
            let _ = h.control.try_send(close.clone());
        }
        handles.len()
    }

    /// Every live session (a snapshot; sessions may come and go meanwhile).
    pub fn snapshot(&self) -> Vec<(Arc<str>, Handle)> {
        let mut out = Vec::with_capacity(self.count());
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (k, e) in shard.iter() {
                out.extend(e.sessions.iter().map(|h| (k.clone(), h.clone())));
            }
        }
        out
    }

    /// Every key here with the presence tag it is recorded under (for the presence refresh).
    pub fn presence_tags(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(
                shard
                    .iter()
                    .map(|(k, e)| (k.to_string(), e.presence_tag.to_string())),
            );
        }
        out
    }
}

/// What happened to a message for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// In its queue.
    Yes,
    /// Its queue was full: it is being closed as a slow consumer (1013).
    Overflow,
    /// It is gone.
    Gone,
}

/// Queues a message for one session; a full queue closes the session as a slow consumer.
pub fn deliver_to(handle: &Handle, message: Outbound) -> Queued {
    match handle.data.try_send(message) {
        Ok(()) => Queued::Yes,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let _ = handle.control.try_send(slow_consumer_close());
            Queued::Overflow
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Queued::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EIGHT: SessionLimit = SessionLimit {
        per_key: 8,
        policy: SessionPolicy::Refuse,
    };

    fn handle(
        conn: u64,
        queue: usize,
    ) -> (Handle, mpsc::Receiver<Outbound>, mpsc::Receiver<Close>) {
        let (data, data_rx) = mpsc::channel(queue);
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let h = Handle {
            conn,
            conn_tag: Arc::from(format!("n:1:{conn}")),
            data,
            control,
        };
        (h, data_rx, control_rx)
    }

    fn msg() -> Outbound {
        Outbound {
            position: None,
            text: Utf8Bytes::from_static("{}"),
            kind: "broadcast",
        }
    }

    #[test]
    fn a_client_whose_queue_is_full_is_closed_as_a_slow_consumer_instead_of_buffering_more() {
        let registry = Registry::new();
        let (h, _data_rx, mut control_rx) = handle(1, 1);
        registry
            .insert(Arc::from("alice"), h, EIGHT)
            .expect("admitted");
        assert_eq!(registry.deliver("alice", msg()).queued, 1);
        assert_eq!(registry.deliver("alice", msg()).overflowed, 1);
        let close = control_rx.try_recv().expect("a close command");
        assert_eq!((close.code, close.reason), (1013, "slow-consumer"));
        assert_eq!(registry.deliver("bob", msg()), Delivery::default());
    }

    #[test]
    fn every_session_of_a_key_gets_each_message_and_presence_goes_with_the_last() {
        let registry = Registry::new();
        let (a, mut a_rx, _ac) = handle(1, 4);
        let (b, mut b_rx, _bc) = handle(2, 4);
        let first = registry.insert(Arc::from("k"), a, EIGHT).expect("admitted");
        let second = registry.insert(Arc::from("k"), b, EIGHT).expect("admitted");
        assert_eq!(first.presence_tag, second.presence_tag);
        assert_eq!(registry.deliver("k", msg()).queued, 2);
        assert!(a_rx.try_recv().is_ok() && b_rx.try_recv().is_ok());
        assert_eq!(registry.count(), 2);
        assert_eq!(registry.remove("k", 9), Removed::NotFound);
        assert_eq!(registry.remove("k", 1), Removed::Others);
        assert_eq!(registry.remove("k", 2), Removed::Last(first.presence_tag));
        assert_eq!(registry.count(), 0);
        assert!(!registry.contains("k"));
    }

    #[test]
    fn over_the_cap_a_session_is_refused_or_replaces_the_oldest() {
        let registry = Registry::new();
        let refuse = SessionLimit {
            per_key: 2,
            policy: SessionPolicy::Refuse,
        };
        for conn in 1..=2 {
            registry
                .insert(Arc::from("k"), handle(conn, 1).0, refuse)
                .expect("within the cap");
        }
        let refused = registry.insert(Arc::from("k"), handle(3, 1).0, refuse);
        assert_eq!(refused.err(), Some(Refusal::TooManySessions { limit: 2 }));
        let replace = SessionLimit {
            policy: SessionPolicy::ReplaceOldest,
            ..refuse
        };
        let registered = registry
            .insert(Arc::from("k"), handle(4, 1).0, replace)
            .expect("replaces");
        assert_eq!(registered.replaced.map(|h| h.conn), Some(1));
        assert_eq!(registry.sessions_of("k"), 2);
        assert_eq!(registry.count(), 2);
        assert_eq!(
            registry.get("k").iter().map(|h| h.conn).collect::<Vec<_>>(),
            vec![2, 4]
        );
    }
}
