//! One Redis connection type for the mailbox, the batcher and presence, whichever Redis the
//! node is given: a standalone server (`--redis-url`, a [`ConnectionManager`]) or a Redis
//! Cluster (`--redis-cluster`, redis-rs's cluster client, which routes every command by its
//! key's slot, follows `MOVED`/`ASK` and refreshes the slot map after a failover).
//!
//! The logic above it is the same for both; the one thing it asks the connection is
//! [`RedisConnection::shard`]: which commands may travel together (one script call, one
//! pipeline). On a cluster that is "the same hash slot"; on a standalone server everything may.

use std::collections::HashMap;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};

use crate::error::{Error, Result};

/// The oldest Redis the mailbox runs on: its append script numbers entries with `XADD … 0-*`
/// (the next sequence number under id 0), which Redis 7.0 brought.
pub const MIN_REDIS_MAJOR: u32 = 7;

/// A standalone or cluster connection; cheap to clone (both sides are handles to one
/// multiplexed connection task).
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, reconnected by the manager.
    Standalone(ConnectionManager),
    /// A Redis Cluster: one multiplexed connection per master, routed by slot.
    Cluster(ClusterConnection),
}

/// What commands may share one call: `None` everywhere on a standalone server, the key's
/// slot on a cluster.
pub type Shard = Option<Slot>;

impl RedisConnection {
    /// The group `key` belongs to for batching: commands whose keys are in one shard may go in
    /// one script call or pipeline. Keys of one user are always in one shard (`keys.rs`).
    pub fn shard(&self, key: &str) -> Shard {
        match self {
            RedisConnection::Standalone(_) => None,
            RedisConnection::Cluster(_) => Some(Slot::for_key(key)),
        }
    }

    /// Whether this is a Redis Cluster (several masters, each of which may fail on its own).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// Refuses a Redis older than [`MIN_REDIS_MAJOR`] (on a cluster: any master that is), with
    /// the version it reports, so that the node fails at start with the reason instead of
    /// answering every send 503. `what` names the server in the error.
    pub async fn check_version(&mut self, what: &str) -> Result<()> {
        let refuse = |why: String| Error::Config(format!("{what}: {why}"));
        let reply: Value = redis::cmd("INFO")
            .arg("server")
            .query_async(self)
            .await
            .map_err(|e| refuse(format!("INFO server failed: {e}")))?;
        // One server answers one text; a cluster's masters answer one each, by address.
        let infos: Vec<String> = match String::from_redis_value_ref(&reply) {
            Ok(one) => vec![one],
            Err(_) => HashMap::<String, String>::from_redis_value_ref(&reply)
                .map_err(|e| refuse(format!("INFO server answered {e}")))?
                .into_values()
                .collect(),
        };
        match infos.iter().find_map(|info| too_old(info)) {
            Some(version) => Err(refuse(format!(
                "Redis {version} is too old: the mailbox needs Redis {MIN_REDIS_MAJOR}.0 or later"
            ))),
            None => Ok(()),
        }
    }

    /// `standalone` or `cluster`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisConnection::Standalone(_) => "standalone",
            RedisConnection::Cluster(_) => "cluster",
        }
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(con: ConnectionManager) -> Self {
        RedisConnection::Standalone(con)
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(con: ClusterConnection) -> Self {
        RedisConnection::Cluster(con)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Standalone(con) => con.req_packed_command(cmd),
            RedisConnection::Cluster(con) => con.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Standalone(con) => con.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(con) => con.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Standalone(con) => con.get_db(),
            RedisConnection::Cluster(con) => con.get_db(),
        }
    }
}

/// The version an `INFO server` text reports when it is older than [`MIN_REDIS_MAJOR`], or
/// "unknown" when it reports none that parses; `None` when it is new enough.
fn too_old(info: &str) -> Option<String> {
    let version = info
        .lines()
        .find_map(|line| line.trim_end().strip_prefix("redis_version:"));
    let major = version.and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    match (version, major) {
        (_, Some(major)) if major >= MIN_REDIS_MAJOR => None,
        (Some(version), Some(_)) => Some(version.to_owned()),
        _ => Some("unknown".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_seven_and_later_are_taken_older_or_unknown_versions_are_refused() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        assert_eq!(too_old(&info("7.0.15")), None);
        assert_eq!(too_old(&info("8.2.1")), None);
        assert_eq!(too_old(&info("6.2.14")).as_deref(), Some("6.2.14"));
        assert_eq!(too_old(&info("x.y")).as_deref(), Some("unknown"));
        assert_eq!(too_old("# Server\r\n").as_deref(), Some("unknown"));
    }
}
