//! The sessions this node holds: one per key. A second connection for a key replaces the first
//! (which is closed with `CLOSE_REPLACED`).
//!
//! Sharded maps behind short `std::sync::Mutex` sections (never held across an await), each
//! session reachable through two bounded queues: data (messages) and control (close commands).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use wscluster_ring::KeyHash;

/// Number of shards; a power of two well above the core count keeps lock contention negligible.
const SHARDS: usize = 64;
/// Control commands queued per session; a session takes only the first close.
pub const CONTROL_QUEUE: usize = 2;

/// A frame for a session.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The mailbox offset for a `message`; a session skips offsets it already delivered.
    pub offset: Option<u64>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the session.
    Queued,
    /// No session for the key here.
    NotConnected,
    /// The session's queue was full: the session is being closed (1013).
    Overflow,
}

/// One shard of the registry.
type Shard = Mutex<HashMap<Arc<str>, Handle>>;

/// Sessions by key.
#[derive(Debug)]
pub struct Registry {
    /// Key → handle, sharded by key hash.
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

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            count: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Handle>> {
        let i = (KeyHash::of(key).0 as usize) % SHARDS;
        // A poisoned shard only means another thread panicked mid-insert; the map is still valid.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live sessions.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Registers a session; returns the handle it replaced, which the caller closes.
    pub fn insert(&self, key: Arc<str>, handle: Handle) -> Option<Handle> {
        let old = self.shard(&key).insert(key, handle);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        old
    }

    /// Removes the session of `key` if it is connection `conn`; true if it was.
    pub fn remove(&self, key: &str, conn: u64) -> bool {
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|h| h.conn == conn) {
            shard.remove(key);
            self.count.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Whether a session for `key` is here.
    pub fn contains(&self, key: &str) -> bool {
        self.shard(key).contains_key(key)
    }

    /// The handle for `key`.
    pub fn get(&self, key: &str) -> Option<Handle> {
        self.shard(key).get(key).cloned()
    }

    /// Queues a message for `key`'s session.
    pub fn deliver(&self, key: &str, message: Outbound) -> Delivery {
        let Some(handle) = self.get(key) else {
            return Delivery::NotConnected;
        };
        deliver_to(&handle, message)
    }

    /// Asks `key`'s session to close; false if there is none.
    pub fn close(&self, key: &str, close: Close) -> bool {
        match self.get(key) {
            Some(h) => {
                let _ = h.control.try_send(close);
                true
            }
            None => false,
        }
    }

    /// Every live session (a snapshot; sessions may come and go meanwhile).
    pub fn snapshot(&self) -> Vec<(Arc<str>, Handle)> {
        let mut out = Vec::with_capacity(self.count());
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.iter().map(|(k, h)| (k.clone(), h.clone())));
        }
        out
    }
}

/// Queues a message for one session; a full queue closes the session as a slow consumer.
pub fn deliver_to(handle: &Handle, message: Outbound) -> Delivery {
    match handle.data.try_send(message) {
        Ok(()) => Delivery::Queued,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let _ = handle.control.try_send(slow_consumer_close());
            Delivery::Overflow
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Delivery::NotConnected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(queue: usize) -> (Handle, mpsc::Receiver<Outbound>, mpsc::Receiver<Close>) {
        let (data, data_rx) = mpsc::channel(queue);
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let h = Handle {
            conn: 1,
            conn_tag: Arc::from("n:1:1"),
            data,
            control,
        };
        (h, data_rx, control_rx)
    }

    fn msg() -> Outbound {
        Outbound {
            offset: None,
            text: Utf8Bytes::from_static("{}"),
            kind: "broadcast",
        }
    }

    #[test]
    fn a_client_whose_queue_is_full_is_closed_as_a_slow_consumer_instead_of_buffering_more() {
        let registry = Registry::new();
        let (h, _data_rx, mut control_rx) = handle(1);
        registry.insert(Arc::from("alice"), h);
        assert_eq!(registry.deliver("alice", msg()), Delivery::Queued);
        assert_eq!(registry.deliver("alice", msg()), Delivery::Overflow);
        let close = control_rx.try_recv().expect("a close command");
        assert_eq!((close.code, close.reason), (1013, "slow-consumer"));
        assert_eq!(registry.deliver("bob", msg()), Delivery::NotConnected);
    }

    #[test]
    fn only_the_current_connection_of_a_key_can_remove_it() {
        let registry = Registry::new();
        let (mut first, _a, _b) = handle(1);
        first.conn = 1;
        let (mut second, _c, _d) = handle(1);
        second.conn = 2;
        assert!(registry.insert(Arc::from("k"), first).is_none());
        assert!(registry.insert(Arc::from("k"), second).is_some());
        assert_eq!(registry.count(), 1);
        assert!(!registry.remove("k", 1));
        assert!(registry.contains("k"));
        assert!(registry.remove("k", 2));
        assert_eq!(registry.count(), 0);
    }
}
