//! Per-user mailboxes: every message for a user is appended here before it is delivered, and
//! gets the stream's epoch and the next offset (1, 2, 3, … within the epoch), so a client that
//! reconnects with `?since=<offset>&epoch=<epoch>` receives what it missed — or learns that it
//! cannot (the epoch differs or the offset is no longer kept).
//!
//! The epoch is a random id made together with the stream, and made anew whenever the stream
//! is made again: after it expired, after Redis lost it, after the Redis master that kept it
//! was replaced or restarted (a new replication history, `scripts.rs`), in another process's
//! memory. Offsets
//! only compare within one epoch; that is what stops a client (or a live session) from taking a
//! fresh offset 1 for a duplicate of the old offset 1.
//!
//! Retention is bounded two ways: at most `--mailbox-max-len` messages per user (older ones are
//! trimmed) and `--mailbox-ttl-seconds` after the last append (the whole mailbox expires, epoch
//! included).
//!
//! Redis layout (one stream and one hash per user, both under the user's hash tag, `keys.rs`):
//! * `{prefix}:{cluster}:mailbox:{<tag>}` — a stream whose entry ids are `0-<offset>`, fields
//!   `c` (content) and `t` (timestamp, ms since the Unix epoch);
//! * `{prefix}:{cluster}:mailbox-meta:{<tag>}` — a hash: the epoch under `e<history>` (the
//!   Redis replication history that wrote it, `scripts.rs`), `s` the last offset handed out.
//!
//! The same code runs on a standalone Redis and on a Redis Cluster ([`RedisConnection`]): the
//! two keys of a user share one slot, so every script call stays in one slot, and a batch is
//! split by slot on a cluster (`batch.rs`).
//!
//! One Lua script makes the epoch when the hash has none of the current replication history
//! (dropping the stream), allocates the offset, `XADD`s with `MAXLEN` and `EXPIRE`s both keys together, and
//! returns epoch and offset, atomic with other writers. Under load, appends that wait for the
//! connection go together in one call of that script ([`Batching`], `batch.rs`), so a busy node
//! pays one round trip and one script dispatch per batch rather than per message. A read is
//! one script too, which makes the epoch by the same rule so the client is told the epoch its
//! next messages will carry.
//!
//! Every Redis call is bounded ([`APPEND_TIMEOUT`], [`READ_TIMEOUT`]): with Redis down a send
//! fails fast instead of waiting for a reconnect.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::{Error, Result};

mod batch;
mod connection;
pub mod keys;
mod scripts;

pub use batch::Batching;
use batch::{Appender, Message};
pub use connection::{RedisConnection, Shard};

/// Most entries one [`Mailbox::read`] returns; replays page through larger backlogs.
pub const READ_PAGE: usize = 256;
/// Longest an append may take before the send is answered 503. A local Redis appends in well
/// under a millisecond; one second absorbs a slow fsync (`appendfsync always`) and a GC pause
/// while keeping "Redis is down" a fast answer rather than a hung request.
pub const APPEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest one replay page may take to read before the session is closed as unavailable
/// (4005): a page is at most [`READ_PAGE`] entries, so two seconds is generous.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// A stream epoch: 16 random hex digits (64 bits), made with the stream.
pub fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", rand::random::<u64>()))
}

/// Where an appended message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream's epoch.
    pub epoch: Arc<str>,
    /// The message's offset within it.
    pub offset: u64,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// The user's offset of this message.
    pub offset: u64,
    /// The payload.
    pub content: String,
    /// Milliseconds since the Unix epoch when the node accepted it.
    pub timestamp: u64,
    /// The sender's verified key, for a chat message (never taken from a payload).
    pub from: Option<String>,
}

/// The answer to a read: some entries after an offset, and the bounds of what is retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxPage {
    /// The stream's epoch (made by the read if the stream had none).
    pub epoch: Arc<str>,
    /// Entries with offset greater than the one asked for, oldest first, at most the limit.
    pub entries: Vec<MailboxEntry>,
    /// The oldest offset still retained, if any entry is.
    pub oldest: Option<u64>,
    /// The last offset handed out in this epoch (0 for a new stream).
    pub latest: u64,
}

/// Where messages wait for their user. Implemented by [`MemoryMailbox`] and [`RedisMailbox`];
/// local mode or another embedding can bring its own.
#[async_trait]
pub trait Mailbox: Send + Sync + 'static {
    /// Appends a message for `user`; returns its epoch and offset once it is stored.
    async fn append(
        &self,
        user: &str,
        content: &str,
        from: Option<&str>,
        timestamp: u64,
    ) -> Result<Appended>;

    /// Reads up to `limit` entries with offset greater than `after` in the current epoch.
    async fn read(&self, user: &str, after: u64, limit: usize) -> Result<MailboxPage>;
}

/// Retention settings shared by both implementations.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Messages kept per user.
    pub max_len: u64,
    /// Lifetime of a mailbox after its last append.
    pub ttl: Duration,
}

/// An in-process mailbox (local mode, tests): same semantics as Redis, lost on restart (a new
/// process makes new epochs, so clients notice).
#[derive(Debug)]
pub struct MemoryMailbox {
    /// Retention limits.
    retention: Retention,
    /// Mailboxes by user; never held across an await.
    boxes: Mutex<HashMap<String, MemoryBox>>,
    /// Appends since start; every [`SWEEP_EVERY_APPENDS`]th one sweeps expired mailboxes.
    appends: std::sync::atomic::AtomicU64,
}

/// Expired in-memory mailboxes are dropped every this many appends, which bounds memory without
/// a timer task: the sweep is O(users) and runs at most once per 4096 messages.
const SWEEP_EVERY_APPENDS: u64 = 4096;

/// One user's in-memory stream.
#[derive(Debug)]
struct MemoryBox {
    /// Made with the stream.
    epoch: Arc<str>,
    /// The last offset handed out.
    seq: u64,
    /// Retained entries, oldest first.
    entries: VecDeque<MailboxEntry>,
    /// When the stream expires (with its epoch).
    expires: Instant,
}

impl MemoryBox {
    fn new(expires: Instant) -> Self {
        MemoryBox {
            epoch: new_epoch(),
            seq: 0,
            entries: VecDeque::new(),
            expires,
        }
    }
}

impl MemoryMailbox {
    /// An empty in-memory mailbox store.
    pub fn new(retention: Retention) -> Self {
        MemoryMailbox {
            retention,
            boxes: Mutex::new(HashMap::new()),
            appends: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Drops expired mailboxes; call periodically so memory stays bounded.
    pub fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut boxes) = self.boxes.lock() {
            boxes.retain(|_, b| b.expires > now);
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, MemoryBox>>> {
        self.boxes
            .lock()
            .map_err(|_| Error::Protocol("memory mailbox lock poisoned".into()))
    }

    /// `user`'s live stream, made (with a new epoch) when absent or expired.
    fn live_box<'m>(
        boxes: &'m mut HashMap<String, MemoryBox>,
        user: &str,
        ttl: Duration,
    ) -> &'m mut MemoryBox {
        let now = Instant::now();
        let b = boxes
            .entry(user.to_owned())
            .or_insert_with(|| MemoryBox::new(now + ttl));
        if b.expires <= now {
            *b = MemoryBox::new(now + ttl);
        }
        b
    }
}

#[async_trait]
impl Mailbox for MemoryMailbox {
    async fn append(
        &self,
        user: &str,
        content: &str,
        from: Option<&str>,
        timestamp: u64,
    ) -> Result<Appended> {
        let n = self
            .appends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY_APPENDS == SWEEP_EVERY_APPENDS - 1 {
            self.sweep();
        }
        let mut boxes = self.lock()?;
        let b = Self::live_box(&mut boxes, user, self.retention.ttl);
        b.seq += 1;
        b.entries.push_back(MailboxEntry {
            offset: b.seq,
            content: content.to_owned(),
            timestamp,
            from: from.map(str::to_owned),
        });
        while b.entries.len() as u64 > self.retention.max_len {
            b.entries.pop_front();
        }
        b.expires = Instant::now() + self.retention.ttl;
        Ok(Appended {
            epoch: b.epoch.clone(),
            offset: b.seq,
        })
    }

    async fn read(&self, user: &str, after: u64, limit: usize) -> Result<MailboxPage> {
        let mut boxes = self.lock()?;
        let b = Self::live_box(&mut boxes, user, self.retention.ttl);
        Ok(MailboxPage {
            epoch: b.epoch.clone(),
            entries: b
                .entries
                .iter()
                .filter(|e| e.offset > after)
                .take(limit)
                .cloned()
                .collect(),
            oldest: b.entries.front().map(|e| e.offset),
            latest: b.seq,
        })
    }
}

/// Mailboxes in Redis streams (see the module docs for the layout).
#[derive(Clone)]
pub struct RedisMailbox {
    /// Shared multiplexed connection (standalone or cluster) that reconnects by itself.
    con: RedisConnection,
    /// `{prefix}:{cluster}:` — every key starts with it.
    namespace: String,
    /// Retention limits.
    retention: Retention,
    /// Where appends go to be batched into script calls.
    appender: Appender,
    /// The read script.
    read: redis::Script,
}

impl std::fmt::Debug for RedisMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMailbox")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

type RangeReply = Vec<(String, HashMap<String, String>)>;

impl RedisMailbox {
    /// A mailbox store on an existing connection; `namespace` is `{prefix}:{cluster}:`.
    /// Appends are batched by default ([`Batching`]); needs a Tokio runtime.
    pub fn new(con: impl Into<RedisConnection>, namespace: String, retention: Retention) -> Self {
        Self::with_batching(con, namespace, retention, Batching::default())
    }

    /// [`RedisMailbox::new`] with explicit batching (`max_batch: 1` sends every append alone).
    pub fn with_batching(
        con: impl Into<RedisConnection>,
        namespace: String,
        retention: Retention,
        batching: Batching,
    ) -> Self {
        let con = con.into();
        RedisMailbox {
            appender: Appender::spawn(con.clone(), retention, batching),
            con,
            namespace,
            retention,
            read: redis::Script::new(scripts::READ),
        }
    }

    fn stream_key(&self, user: &str) -> String {
        keys::stream(&self.namespace, user)
    }

    fn meta_key(&self, user: &str) -> String {
        keys::meta(&self.namespace, user)
    }
}

/// Runs a Redis call under `limit`; a late answer is an error (the caller answers 503 or
/// closes the session with 4005, never pretends).
pub(crate) async fn bounded<T>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(reply) => Ok(reply?),
        Err(_) => Err(Error::Timeout(format!("{what} took longer than {limit:?}"))),
    }
}

/// `0-<offset>` → offset.
fn parse_entry_id(id: &str) -> Result<u64> {
    id.strip_prefix("0-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("mailbox entry id {id:?} is not 0-<offset>")))
}

fn parse_entry(id: &str, mut fields: HashMap<String, String>) -> Result<MailboxEntry> {
    Ok(MailboxEntry {
        offset: parse_entry_id(id)?,
        content: fields.remove("c").unwrap_or_default(),
        timestamp: fields.get("t").and_then(|t| t.parse().ok()).unwrap_or(0),
        from: fields.remove("f"),
    })
}

#[async_trait]
impl Mailbox for RedisMailbox {
    async fn append(
        &self,
        user: &str,
        content: &str,
        from: Option<&str>,
        timestamp: u64,
    ) -> Result<Appended> {
        self.appender
            .append(Message {
                stream: self.stream_key(user),
                meta: self.meta_key(user),
                content: content.to_owned(),
                timestamp,
                from: from.unwrap_or_default().to_owned(),
            })
            .await
    }

    async fn read(&self, user: &str, after: u64, limit: usize) -> Result<MailboxPage> {
        let mut con = self.con.clone();
        let mut call = self.read.prepare_invoke();
        call.key(self.stream_key(user))
            .key(self.meta_key(user))
            .arg(after)
            .arg(limit.max(1))
            .arg(self.retention.ttl.as_secs().max(1))
            .arg(&*new_epoch());
        let (epoch, latest, first, page): (String, u64, RangeReply, RangeReply) =
            bounded(READ_TIMEOUT, "mailbox read", call.invoke_async(&mut con)).await?;
        let oldest = match first.first() {
            Some((id, _)) => Some(parse_entry_id(id)?),
            None => None,
        };
        let entries = page
            .into_iter()
            .map(|(id, fields)| parse_entry(&id, fields))
            .collect::<Result<Vec<_>>>()?;
        Ok(MailboxPage {
            epoch: Arc::from(epoch),
            entries,
            oldest,
            latest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_expired_memory_stream_comes_back_with_a_new_epoch_and_offsets_from_one() {
        let m = MemoryMailbox::new(Retention {
            max_len: 10,
            ttl: Duration::from_millis(50),
        });
        let before = m.append("u", "a", None, 1).await.expect("append");
        m.append("u", "b", None, 2).await.expect("append");
        tokio::time::sleep(Duration::from_millis(80)).await;
        let after = m.append("u", "c", None, 3).await.expect("append");
        assert_eq!(after.offset, 1);
        assert_ne!(after.epoch, before.epoch);
    }

    #[test]
    fn entry_ids_must_be_zero_dash_offset() {
        assert_eq!(parse_entry_id("0-42").expect("parses"), 42);
        assert!(parse_entry_id("1-42").is_err());
        assert!(parse_entry_id("0-x").is_err());
    }
}
