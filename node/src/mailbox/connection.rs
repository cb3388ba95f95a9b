//! One Redis connection type for the mailbox, the batcher and presence, whichever Redis the
//! node is given: a standalone server (`--redis-url`, a [`ConnectionManager`]) or a Redis
//! Cluster (`--redis-cluster`, redis-rs's cluster client, which routes every command by its
//! key's slot, follows `MOVED`/`ASK` and refreshes the slot map after a failover).
//!
//! The logic above it is the same for both; the one thing it asks the connection is
//! [`RedisConnection::shard`]: which commands may travel together (one script call, one
//! pipeline). On a cluster that is "the same hash slot"; on a standalone server everything may.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisFuture, Value};

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
