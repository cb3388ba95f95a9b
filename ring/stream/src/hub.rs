//! The hub side: the current ring per cluster, served as an NDJSON stream, and the acks.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wscluster_ring::contract::stream::{HEARTBEAT_INTERVAL_MS, SubscriberKind};
use wscluster_ring::{RingError, RingSnapshot};

use crate::BoxBody;

/// What the hub knows about one subscriber of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// The subscriber's id (its pod name).
    pub id: String,
    /// Proxy or node.
    pub kind: SubscriberKind,
    /// The last version it acknowledged; `None` before its first ack.
    pub applied_version: Option<u64>,
    /// Whether a watch stream of it is open now.
    pub connected: bool,
}

/// The ring authority's server state: per cluster the current snapshot, the token and the
/// subscribers. Share it as `Arc<RingHub>`.
#[derive(Debug)]
pub struct RingHub {
    /// Interval between heartbeats on an idle stream.
    heartbeat: Duration,
}

impl RingHub {
    /// An empty hub with the contract's heartbeat interval.
    pub fn new() -> Arc<RingHub> {
        RingHub::with_heartbeat(Duration::from_millis(HEARTBEAT_INTERVAL_MS))
    }

    /// An empty hub with another heartbeat interval (tests use a short one).
    pub fn with_heartbeat(heartbeat: Duration) -> Arc<RingHub> {
        Arc::new(RingHub { heartbeat })
    }

    /// Sets (or replaces) the bearer token of a cluster; the cluster becomes known to the hub.
    pub fn set_token(&self, cluster_id: &str, token: String) {
        let _ = (cluster_id, token);
    }

    /// Publishes a snapshot for its cluster. Refused unless valid and strictly newer than the
    /// current one.
    pub fn publish(&self, snapshot: RingSnapshot) -> Result<(), RingError> {
        snapshot.validate()?;
        Ok(())
    }

    /// The current snapshot of a cluster.
    pub fn current(&self, cluster_id: &str) -> Option<Arc<RingSnapshot>> {
        let _ = cluster_id;
        None
    }

    /// The subscribers of a cluster, sorted by id.
    pub fn subscribers(&self, cluster_id: &str) -> Vec<SubscriberInfo> {
        let _ = cluster_id;
        Vec::new()
    }

    /// Forgets a cluster and ends its open streams.
    pub fn remove_cluster(&self, cluster_id: &str) {
        let _ = cluster_id;
    }

    /// Answers a request under `/v1/clusters/`; `None` for any other path, so the caller can
    /// serve it (for example `/metrics`) on the same port.
    pub async fn handle(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> Option<http::Response<BoxBody>> {
        let _ = (req, self.heartbeat);
        None
    }
}

/// Serves the hub on `listener` until `shutdown`: one task per connection, open streams ended
/// on shutdown. Paths the hub does not own answer 404.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<RingHub>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let _ = (listener, hub);
    shutdown.cancelled().await;
    Ok(())
}
