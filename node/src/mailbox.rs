//! Per-user mailboxes: every message for a user is appended here, with the next offset
//! (1, 2, 3, …), before it is delivered, so a client that reconnects with `?since=<offset>`
//! receives what it missed.
//!
//! Retention is bounded two ways: at most `--mailbox-max-len` messages per user (older ones are
//! trimmed) and `--mailbox-ttl-seconds` after the last append (the whole mailbox expires).
//!
//! Redis layout (one stream and one counter per user):
//! * `{prefix}:{cluster}:mailbox:{user}` — a stream whose entry ids are `0-<offset>`, fields
//!   `c` (content) and `t` (timestamp, ms since the Unix epoch);
//! * `{prefix}:{cluster}:mailbox-seq:{user}` — the last offset handed out.
//!
//! A Lua script allocates the offset and appends in one atomic step (`INCR` + `XADD … MAXLEN`
//! + `EXPIRE`), so offsets are dense and ordered even with several writers.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::error::{Error, Result};

/// Most entries one [`Mailbox::read`] returns; replays page through larger backlogs.
pub const READ_PAGE: usize = 256;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// The user's offset of this message.
    pub offset: u64,
    /// The payload.
    pub content: String,
    /// Milliseconds since the Unix epoch when the node accepted it.
    pub timestamp: u64,
}

/// The answer to a read: some entries after an offset, and the bounds of what is retained.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailboxPage {
    /// Entries with offset greater than the one asked for, oldest first, at most the limit.
    pub entries: Vec<MailboxEntry>,
    /// The oldest offset still retained, if any entry is.
    pub oldest: Option<u64>,
    /// The last offset handed out (0 when the mailbox is empty or expired).
    pub latest: u64,
}

/// Where messages wait for their user. Implemented by [`MemoryMailbox`] and [`RedisMailbox`];
/// local mode or another embedding can bring its own.
#[async_trait]
pub trait Mailbox: Send + Sync + 'static {
    /// Appends a message for `user` and returns its offset.
    async fn append(&self, user: &str, content: &str, timestamp: u64) -> Result<u64>;

    /// Reads up to `limit` entries with offset greater than `after`.
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

/// An in-process mailbox (local mode, tests): same semantics as Redis, lost on restart.
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

#[derive(Debug)]
struct MemoryBox {
    seq: u64,
    entries: VecDeque<MailboxEntry>,
    expires: Instant,
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
}

#[async_trait]
impl Mailbox for MemoryMailbox {
    async fn append(&self, user: &str, content: &str, timestamp: u64) -> Result<u64> {
        let n = self
            .appends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY_APPENDS == SWEEP_EVERY_APPENDS - 1 {
            self.sweep();
        }
        let now = Instant::now();
        let mut boxes = self.lock()?;
        let b = boxes.entry(user.to_owned()).or_insert_with(|| MemoryBox {
            seq: 0,
            entries: VecDeque::new(),
            expires: now,
        });
        if b.expires <= now {
            b.seq = 0;
            b.entries.clear();
        }
        b.seq += 1;
        b.entries.push_back(MailboxEntry {
            offset: b.seq,
            content: content.to_owned(),
            timestamp,
        });
        while b.entries.len() as u64 > self.retention.max_len {
            b.entries.pop_front();
        }
        b.expires = now + self.retention.ttl;
        Ok(b.seq)
    }

    async fn read(&self, user: &str, after: u64, limit: usize) -> Result<MailboxPage> {
        let boxes = self.lock()?;
        let Some(b) = boxes.get(user).filter(|b| b.expires > Instant::now()) else {
            return Ok(MailboxPage::default());
        };
        Ok(MailboxPage {
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

/// Offset allocation and append in one atomic step. KEYS: stream, counter. ARGV: content,
/// timestamp, max length, ttl seconds.
const APPEND_LUA: &str = r#"
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '0-' .. seq, 'c', ARGV[1], 't', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return seq
"#;

/// Mailboxes in Redis streams (see the module docs for the layout).
#[derive(Clone)]
pub struct RedisMailbox {
    /// Shared multiplexed connection that reconnects by itself.
    con: ConnectionManager,
    /// `{prefix}:{cluster}:` — every key starts with it.
    namespace: String,
    /// Retention limits.
    retention: Retention,
    /// The append script (sent once, then called by SHA).
    append: redis::Script,
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
    pub fn new(con: ConnectionManager, namespace: String, retention: Retention) -> Self {
        RedisMailbox {
            con,
            namespace,
            retention,
            append: redis::Script::new(APPEND_LUA),
        }
    }

    fn stream_key(&self, user: &str) -> String {
        format!("{}mailbox:{user}", self.namespace)
    }

    fn seq_key(&self, user: &str) -> String {
        format!("{}mailbox-seq:{user}", self.namespace)
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
    })
}

#[async_trait]
impl Mailbox for RedisMailbox {
    async fn append(&self, user: &str, content: &str, timestamp: u64) -> Result<u64> {
        let mut con = self.con.clone();
        let seq: u64 = self
            .append
            .key(self.stream_key(user))
            .key(self.seq_key(user))
            .arg(content)
            .arg(timestamp)
            .arg(self.retention.max_len)
            .arg(self.retention.ttl.as_secs().max(1))
            .invoke_async(&mut con)
            .await?;
        Ok(seq)
    }

    async fn read(&self, user: &str, after: u64, limit: usize) -> Result<MailboxPage> {
        let mut con = self.con.clone();
        let stream = self.stream_key(user);
        let (latest, first, page): (Option<u64>, RangeReply, RangeReply) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(self.seq_key(user))
            .cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&stream)
            .arg(format!("(0-{after}"))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut con)
            .await?;
        let oldest = match first.first() {
            Some((id, _)) => Some(parse_entry_id(id)?),
            None => None,
        };
        let entries = page
            .into_iter()
            .map(|(id, fields)| parse_entry(&id, fields))
            .collect::<Result<Vec<_>>>()?;
        Ok(MailboxPage {
            entries,
            oldest,
            latest: latest.unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_mailbox_hands_out_dense_offsets_and_trims_to_max_len() {
        let m = MemoryMailbox::new(Retention {
            max_len: 3,
            ttl: Duration::from_secs(60),
        });
        for i in 1..=5u64 {
            assert_eq!(m.append("u", &format!("m{i}"), i).await.expect("append"), i);
        }
        let page = m.read("u", 0, 10).await.expect("read");
        assert_eq!(page.oldest, Some(3));
        assert_eq!(page.latest, 5);
        let offsets: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![3, 4, 5]);
        let page = m.read("u", 4, 10).await.expect("read");
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.entries[0].content, "m5");
        assert_eq!(
            m.read("other", 0, 10).await.expect("read"),
            MailboxPage::default()
        );
    }

    #[test]
    fn entry_ids_must_be_zero_dash_offset() {
        assert_eq!(parse_entry_id("0-42").expect("parses"), 42);
        assert!(parse_entry_id("1-42").is_err());
        assert!(parse_entry_id("0-x").is_err());
    }
}
