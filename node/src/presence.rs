//! Presence: which node holds a user's socket, since when, under which ring version.
//!
//! Redis layout: `{prefix}:{cluster}:presence:{<tag>}` (the user's hash tag, shared with its
//! mailbox keys: `mailbox/keys.rs`) → JSON [`PresenceEntry`], with an expiry of
//! `--presence-ttl-seconds`, refreshed every third of it while the socket lives and deleted when
//! it closes. Refresh and delete only touch the entry if it still names this connection (`conn`),
//! so a user who already reconnected elsewhere is never erased by the old node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mailbox::{RedisConnection, Shard, bounded, keys};

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry {
    /// Member id of the node holding the socket.
    pub node: String,
    /// The ring version that node applied when the socket opened (0 when standalone).
    pub ring_version: u64,
    /// Milliseconds since the Unix epoch when the socket opened.
    pub since: u64,
    /// Unique id of the connection, so only its own node removes or refreshes the entry.
    pub conn: String,
}

/// Where presence is kept. Implemented by [`MemoryPresence`] and [`RedisPresence`].
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records that `user` is connected (overwriting any older entry).
    async fn set(&self, user: &str, entry: &PresenceEntry) -> Result<()>;
    /// Extends the expiry of each `(user, conn)` whose entry still names `conn`.
    async fn refresh(&self, live: &[(String, String)]) -> Result<()>;
    /// Removes `user`'s entry if it still names `conn`.
    async fn remove(&self, user: &str, conn: &str) -> Result<()>;
    /// The user's entry, if any.
    async fn get(&self, user: &str) -> Result<Option<PresenceEntry>>;
}

/// In-process presence (local mode, tests).
#[derive(Debug)]
pub struct MemoryPresence {
    /// Entry lifetime without refresh.
    ttl: Duration,
    /// Entries with their deadline; never held across an await.
    entries: Mutex<HashMap<String, (PresenceEntry, Instant)>>,
}

impl MemoryPresence {
    /// An empty store whose entries live `ttl` unless refreshed.
    pub fn new(ttl: Duration) -> Self {
        MemoryPresence {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, (PresenceEntry, Instant)>>> {
        self.entries
            .lock()
            .map_err(|_| Error::Protocol("memory presence lock poisoned".into()))
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn set(&self, user: &str, entry: &PresenceEntry) -> Result<()> {
        let deadline = Instant::now() + self.ttl;
        self.lock()?
            .insert(user.to_owned(), (entry.clone(), deadline));
        Ok(())
    }

    async fn refresh(&self, live: &[(String, String)]) -> Result<()> {
        let now = Instant::now();
        let mut entries = self.lock()?;
        entries.retain(|_, (_, deadline)| *deadline > now);
        for (user, conn) in live {
            if let Some((entry, deadline)) = entries.get_mut(user)
                && &entry.conn == conn
            {
                *deadline = now + self.ttl;
            }
        }
        Ok(())
    }

    async fn remove(&self, user: &str, conn: &str) -> Result<()> {
        let mut entries = self.lock()?;
        if entries.get(user).is_some_and(|(e, _)| e.conn == conn) {
            entries.remove(user);
        }
        Ok(())
    }

    async fn get(&self, user: &str) -> Result<Option<PresenceEntry>> {
        let now = Instant::now();
        Ok(self
            .lock()?
            .get(user)
            .filter(|(_, deadline)| *deadline > now)
            .map(|(e, _)| e.clone()))
    }
}

/// KEYS: presence key. ARGV: conn id, ttl seconds. Extends the expiry if the entry is ours.
const REFRESH_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v).conn == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// KEYS: presence key. ARGV: conn id. Deletes the entry if it is ours.
const REMOVE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v).conn == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Longest a presence write or look-up may take: presence is advisory, so a slow Redis must
/// not hold up a session's start or a presence answer (which is then 503).
pub const PRESENCE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest one refresh batch may take.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// Entries refreshed per Redis pipeline.
const REFRESH_BATCH: usize = 500;
/// Refresh pipelines out at once: on a cluster a pipeline holds one slot's entries, so there
/// are many small ones; a few at a time keep the refresh short without flooding Redis.
const REFRESH_PARALLEL: usize = 16;

/// Presence in Redis (see the module docs for the layout).
#[derive(Clone)]
pub struct RedisPresence {
    /// Shared multiplexed connection (standalone or cluster) that reconnects by itself.
    con: RedisConnection,
    /// `{prefix}:{cluster}:`.
    namespace: String,
    /// Entry lifetime without refresh.
    ttl: Duration,
    /// Compare-and-expire.
    refresh: redis::Script,
    /// Compare-and-delete.
    remove: redis::Script,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisPresence {
    /// Presence on an existing connection; `namespace` is `{prefix}:{cluster}:`.
    pub fn new(con: impl Into<RedisConnection>, namespace: String, ttl: Duration) -> Self {
        RedisPresence {
            con: con.into(),
            namespace,
            ttl,
            refresh: redis::Script::new(REFRESH_LUA),
            remove: redis::Script::new(REMOVE_LUA),
        }
    }

    fn key(&self, user: &str) -> String {
        keys::presence(&self.namespace, user)
    }

    /// The refresh pipelines for `live`: at most [`REFRESH_BATCH`] entries each, and on a
    /// cluster each within one slot (a cluster pipeline goes to one node, for one slot).
    fn refresh_pipelines(&self, live: &[(String, String)]) -> Vec<redis::Pipeline> {
        let mut parts: HashMap<Shard, Vec<(String, &str)>> = HashMap::new();
        for (user, conn) in live {
            let key = self.key(user);
            parts
                .entry(self.con.shard(&key))
                .or_default()
                .push((key, conn));
        }
        let ttl = self.ttl.as_secs().max(1);
        let mut pipes = Vec::new();
        for part in parts.values() {
            for chunk in part.chunks(REFRESH_BATCH) {
                let mut pipe = redis::pipe();
                for (key, conn) in chunk {
                    pipe.cmd("EVALSHA")
                        .arg(self.refresh.get_hash())
                        .arg(1)
                        .arg(key)
                        .arg(*conn)
                        .arg(ttl)
                        .ignore();
                }
                pipes.push(pipe);
            }
        }
        pipes
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn set(&self, user: &str, entry: &PresenceEntry) -> Result<()> {
        let mut con = self.con.clone();
        let value = serde_json::to_string(entry)?;
        let mut set = redis::cmd("SET");
        set.arg(self.key(user))
            .arg(value)
            .arg("EX")
            .arg(self.ttl.as_secs().max(1));
        bounded(
            PRESENCE_TIMEOUT,
            "presence set",
            set.query_async::<()>(&mut con),
        )
        .await
    }

    async fn refresh(&self, live: &[(String, String)]) -> Result<()> {
        // Load once so the pipeline can use EVALSHA.
        let mut con = self.con.clone();
        let _: String = bounded(
            REFRESH_TIMEOUT,
            "presence script load",
            self.refresh.load_async(&mut con),
        )
        .await?;
        futures_util::stream::iter(self.refresh_pipelines(live))
            .map(|pipe| {
                let mut con = con.clone();
                async move {
                    bounded(
                        REFRESH_TIMEOUT,
                        "presence refresh",
                        pipe.query_async::<()>(&mut con),
                    )
                    .await
                }
            })
            .buffer_unordered(REFRESH_PARALLEL)
            .try_collect::<()>()
            .await
    }

    async fn remove(&self, user: &str, conn: &str) -> Result<()> {
        let mut con = self.con.clone();
        let mut call = self.remove.prepare_invoke();
        call.key(self.key(user)).arg(conn);
        let _: i64 = bounded(
            PRESENCE_TIMEOUT,
            "presence remove",
            call.invoke_async(&mut con),
        )
        .await?;
        Ok(())
    }

    async fn get(&self, user: &str) -> Result<Option<PresenceEntry>> {
        let mut con = self.con.clone();
        let mut get = redis::cmd("GET");
        get.arg(self.key(user));
        let value: Option<String> =
            bounded(PRESENCE_TIMEOUT, "presence get", get.query_async(&mut con)).await?;
        match value {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_str(&v)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(conn: &str) -> PresenceEntry {
        PresenceEntry {
            node: "n-0".into(),
            ring_version: 3,
            since: 1,
            conn: conn.into(),
        }
    }

    #[tokio::test]
    async fn memory_presence_only_removes_the_entry_of_its_own_connection() {
        let p = MemoryPresence::new(Duration::from_secs(60));
        p.set("alice", &entry("c1")).await.expect("set");
        p.set("alice", &entry("c2")).await.expect("set");
        p.remove("alice", "c1").await.expect("remove");
        assert_eq!(p.get("alice").await.expect("get"), Some(entry("c2")));
        p.remove("alice", "c2").await.expect("remove");
        assert_eq!(p.get("alice").await.expect("get"), None);
    }
}
