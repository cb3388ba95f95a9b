//! Prometheus metrics (prefix `wscluster_operator`), served on the admin port at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a per-cluster series: `cluster="namespace/name"`.
pub type ClusterLabels = [(&'static str, String); 1];
/// Labels of an error series: `error="SecretNotFound"` (see `Error::metric_label`).
pub type ErrorLabels = [(&'static str, &'static str); 1];
/// Labels of a subscriber series: cluster and kind (`proxy`/`node`).
pub type SubscriberLabels = [(&'static str, String); 2];

/// The operator's metrics.
pub struct Metrics {
    /// The registry they are encoded from.
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by error kind.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// The ring version published per cluster.
    pub ring_version: Family<ClusterLabels, Gauge>,
    /// Connected ring-stream subscribers per cluster and kind.
    pub subscribers: Family<SubscriberLabels, Gauge>,
    /// Rings published (new versions and re-publications after a restart).
    pub rings_published: Family<ClusterLabels, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wscluster_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            reconcile_errors.clone(),
        );
        // Reconciles are a handful of API calls: 5 ms to 10 s covers a local mock to a slow
        // API server.
        let reconcile_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            reconcile_duration.clone(),
        );
        let ring_version = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "ring_version",
            "Ring version published per cluster",
            ring_version.clone(),
        );
        let subscribers = Family::<SubscriberLabels, Gauge>::default();
        registry.register(
            "ring_subscribers",
            "Connected ring-stream subscribers per cluster and kind",
            subscribers.clone(),
        );
        let rings_published = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "rings_published",
            "Ring snapshots published to the hub",
            rings_published.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica is the leader",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            ring_version,
            subscribers,
            rings_published,
            leader,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Drops the series of a deleted cluster.
    pub fn forget_cluster(&self, cluster_id: &str) {
        self.ring_version
            .remove(&[("cluster", cluster_id.to_string())]);
        self.rings_published
            .remove(&[("cluster", cluster_id.to_string())]);
        for kind in ["proxy", "node"] {
            self.subscribers.remove(&[
                ("cluster", cluster_id.to_string()),
                ("kind", kind.to_string()),
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_encoded_with_the_prefix_and_cluster_labels() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.ring_version
            .get_or_create(&[("cluster", "default/chat".to_string())])
            .set(7);
        m.reconcile_errors
            .get_or_create(&[("error", "SecretNotFound")])
            .inc();
        let text = m.encode();
        assert!(
            text.contains("wscluster_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("wscluster_operator_ring_version{cluster=\"default/chat\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("wscluster_operator_reconcile_errors_total{error=\"SecretNotFound\"} 1"),
            "{text}"
        );
        m.forget_cluster("default/chat");
        assert!(!m.encode().contains("default/chat"));
    }
}
