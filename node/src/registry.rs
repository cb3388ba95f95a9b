//! The sessions this node holds, by key: up to `--sessions-per-key` per key (a user's tabs and
//! devices). Every session of a key gets every message for it. Over the cap, the
//! [`SessionPolicy`] decides: refuse the newcomer, or close the key's oldest session with
//! `CLOSE_REPLACED` (4002).
//!
//! Sharded maps behind short `std::sync::Mutex` sections (never held across an await), each
//! session reachable through its [`Inbox`]: a bounded queue of messages and one close command.
//! The cap is checked under the shard lock when a session registers, so two racing connects
//! cannot both take the last place.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use wscluster_ring::KeyHash;

use crate::delivery::{Admission, Refusal};

/// Number of shards; a power of two well above the core count keeps lock contention negligible.
const SHARDS: usize = 64;

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
    pub data: DataSender,
    /// Close commands.
    pub control: CloseSender,
}

impl Handle {
    /// A handle for connection `conn` and the receiving end of its inbox, which holds at most
    /// `queue` messages (at least 1).
    pub fn new(conn: u64, conn_tag: Arc<str>, queue: usize) -> (Handle, InboxReceiver) {
        let inbox = Arc::new(Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                close: None,
                open: true,
            }),
            senders: AtomicUsize::new(1),
            wake: Notify::new(),
            capacity: queue.max(1),
        });
        let handle = Handle {
            conn,
            conn_tag,
            data: DataSender(inbox.clone()),
            control: CloseSender(inbox.clone()),
        };
        (handle, InboxReceiver(inbox))
    }
}

/// A session's inbox: the messages queued for it and the close command it will act on.
///
/// It replaces two tokio `mpsc` channels for memory's sake: a bounded `mpsc` allocates a block
/// of 32 slots when it is made (2.3 KB for [`Outbound`], 1.8 KB for [`Close`]) and keeps it for
/// the session's life, idle or not. Here an idle session holds no queue storage at all: the
/// queue is an empty `VecDeque` (no allocation) and the session takes the whole queue at once
/// when it wakes, so the storage of a burst is freed as soon as the burst is written.
#[derive(Debug)]
pub struct Inbox {
    /// Under a short lock, never held across an await.
    state: Mutex<InboxState>,
    /// Wakes the session; `notify_one` keeps a permit when the session is not waiting yet, so
    /// a message queued between its check and its wait is never missed.
    wake: Notify,
    /// Most messages queued (`--session-queue`).
    capacity: usize,
    /// Live [`DataSender`]s: at 0 the registry has let the session go. Outside the lock, as
    /// the registry clones and drops handles on every delivery.
    senders: AtomicUsize,
}

/// What an [`Inbox`] holds.
#[derive(Debug)]
struct InboxState {
    /// Messages not yet taken by the session, oldest first.
    queue: VecDeque<Outbound>,
    /// The first close command sent; later ones are dropped (a session takes only one).
    close: Option<Close>,
    /// Whether the session still receives.
    open: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        // A poisoned lock only means a thread panicked while holding it; the state is whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a message or close command was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue is full (or, for a close, a close is already queued).
    Full(T),
    /// The session is gone.
    Closed(T),
}

/// Queues messages for a session; the session ends ("removed") once every one is dropped.
#[derive(Debug)]
pub struct DataSender(Arc<Inbox>);

impl DataSender {
    /// Queues `message` unless the queue is full or the session gone.
    pub fn try_send(&self, message: Outbound) -> Result<(), TrySendError<Outbound>> {
        {
            let mut state = self.0.lock();
            if !state.open {
                return Err(TrySendError::Closed(message));
            }
            if state.queue.len() >= self.0.capacity {
                return Err(TrySendError::Full(message));
            }
            state.queue.push_back(message);
        }
        self.0.wake.notify_one();
        Ok(())
    }
}

impl Clone for DataSender {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        DataSender(self.0.clone())
    }
}

impl Drop for DataSender {
    fn drop(&mut self) {
        // AcqRel: the session that sees 0 also sees every message these senders queued.
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake.notify_one();
        }
    }
}

/// Sends a session its close command.
#[derive(Debug, Clone)]
pub struct CloseSender(Arc<Inbox>);

impl CloseSender {
    /// Queues `close` unless a close is already queued or the session is gone.
    pub fn try_send(&self, close: Close) -> Result<(), TrySendError<Close>> {
        {
            let mut state = self.0.lock();
            if !state.open {
                return Err(TrySendError::Closed(close));
            }
            if state.close.is_some() {
                return Err(TrySendError::Full(close));
            }
            state.close = Some(close);
        }
        self.0.wake.notify_one();
        Ok(())
    }
}

/// What a session finds in its inbox, close commands first.
#[derive(Debug)]
pub enum Received {
    /// A close command.
    Close(Close),
    /// Every message queued, oldest first (the inbox is empty again).
    Messages(VecDeque<Outbound>),
    /// The registry let the session go (every [`DataSender`] dropped).
    Removed,
}

/// The session's end of its [`Inbox`]. Dropping it refuses further messages and frees the
/// queued ones.
#[derive(Debug)]
pub struct InboxReceiver(Arc<Inbox>);

impl InboxReceiver {
    /// Waits until the inbox has something; cancel-safe (nothing is taken until it returns).
    pub async fn recv(&self) -> Received {
        loop {
            if let Some(received) = self.try_recv() {
                return received;
            }
            self.0.wake.notified().await;
        }
    }

    /// What the inbox has now, if anything: the close command first, else all messages.
    pub fn try_recv(&self) -> Option<Received> {
        let mut state = self.0.lock();
        if let Some(close) = state.close.take() {
            return Some(Received::Close(close));
        }
        if !state.queue.is_empty() {
            return Some(Received::Messages(std::mem::take(&mut state.queue)));
        }
        (self.0.senders.load(Ordering::Acquire) == 0).then_some(Received::Removed)
    }

    /// The close command, if one is queued (checked between the messages of a batch, so a
    /// close overtakes messages not yet written, as it always goes first).
    pub fn take_close(&self) -> Option<Close> {
        self.0.lock().close.take()
    }
}

impl Drop for InboxReceiver {
    fn drop(&mut self) {
        let queued = {
            let mut state = self.0.lock();
            state.open = false;
            std::mem::take(&mut state.queue)
        };
        drop(queued);
    }
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
        // Room for one: most keys have one session, and `Vec` would otherwise start at four.
        let entry = shard.entry(key).or_insert_with(|| KeySessions {
            presence_tag: handle.conn_tag.clone(),
            sessions: Vec::with_capacity(1),
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
        Err(TrySendError::Full(_)) => {
            let _ = handle.control.try_send(slow_consumer_close());
            Queued::Overflow
        }
        Err(TrySendError::Closed(_)) => Queued::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EIGHT: SessionLimit = SessionLimit {
        per_key: 8,
        policy: SessionPolicy::Refuse,
    };

    fn handle(conn: u64, queue: usize) -> (Handle, InboxReceiver) {
        Handle::new(conn, Arc::from(format!("n:1:{conn}")), queue)
    }

    fn messages(rx: &InboxReceiver) -> usize {
        match rx.try_recv() {
            Some(Received::Messages(m)) => m.len(),
            _ => 0,
        }
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
        let (h, rx) = handle(1, 1);
        registry
            .insert(Arc::from("alice"), h, EIGHT)
            .expect("admitted");
        assert_eq!(registry.deliver("alice", msg()).queued, 1);
        assert_eq!(registry.deliver("alice", msg()).overflowed, 1);
        let Some(Received::Close(close)) = rx.try_recv() else {
            panic!("a close command first")
        };
        assert_eq!((close.code, close.reason), (1013, "slow-consumer"));
        assert_eq!(messages(&rx), 1, "the message queued before the overflow");
        assert_eq!(registry.deliver("bob", msg()), Delivery::default());
    }

    #[test]
    fn every_session_of_a_key_gets_each_message_and_presence_goes_with_the_last() {
        let registry = Registry::new();
        let (a, a_rx) = handle(1, 4);
        let (b, b_rx) = handle(2, 4);
        let first = registry.insert(Arc::from("k"), a, EIGHT).expect("admitted");
        let second = registry.insert(Arc::from("k"), b, EIGHT).expect("admitted");
        assert_eq!(first.presence_tag, second.presence_tag);
        assert_eq!(registry.deliver("k", msg()).queued, 2);
        assert_eq!((messages(&a_rx), messages(&b_rx)), (1, 1));
        assert_eq!(registry.count(), 2);
        assert_eq!(registry.remove("k", 9), Removed::NotFound);
        assert_eq!(registry.remove("k", 1), Removed::Others);
        assert_eq!(registry.remove("k", 2), Removed::Last(first.presence_tag));
        assert_eq!(registry.count(), 0);
        assert!(!registry.contains("k"));
    }

    #[test]
    fn an_inbox_keeps_the_first_close_hands_over_every_message_at_once_and_refuses_once_closed() {
        let (h, rx) = handle(1, 8);
        for _ in 0..3 {
            h.data.try_send(msg()).expect("queued");
        }
        let first = Close {
            frame: None,
            code: 4000,
            reason: "first",
        };
        h.control.try_send(first).expect("queued");
        assert!(matches!(
            h.control.try_send(slow_consumer_close()),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(rx.try_recv(), Some(Received::Close(c)) if c.reason == "first"));
        assert_eq!(messages(&rx), 3);
        assert!(rx.try_recv().is_none(), "empty again, nothing held");
        drop(rx);
        assert!(matches!(
            h.data.try_send(msg()),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(
            h.control.try_send(slow_consumer_close()),
            Err(TrySendError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_for_a_message_and_for_its_last_sender_leaving() {
        let (h, rx) = handle(1, 8);
        let copy = h.clone();
        let waiting = tokio::spawn(async move {
            let first = matches!(rx.recv().await, Received::Messages(m) if m.len() == 1);
            (first, matches!(rx.recv().await, Received::Removed))
        });
        h.data.try_send(msg()).expect("queued");
        drop(h);
        drop(copy);
        let woke = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken in time")
            .expect("task");
        assert_eq!(woke, (true, true));
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
