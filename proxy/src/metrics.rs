//! Prometheus metrics, prefix `wscluster_proxy_`, served on the admin port at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label, e.g. `("member", "chat-node-0")`.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Spliced WebSocket connections by member.
    pub connections: Family<Labels, Gauge>,
    /// WebSocket upgrades spliced to an owner.
    pub upgrades: Counter,
    /// Plain HTTP requests forwarded.
    pub http_requests: Counter,
    /// Resets sent to clients, by reason.
    pub resets: Family<Labels, Counter>,
    /// The ring version in use (0 before any ring).
    pub ring_version: Gauge,
    /// Errors by kind (`missing-key`, `upstream-unreachable`, `connection-limit`, ...).
    pub errors: Family<Labels, Counter>,
    /// Time to scan the live connections after a ring change, seconds.
    pub reset_scan_seconds: Histogram,
    /// Resets waiting for the pacer.
    pub reset_queue: Gauge,
    /// 1 while the ring stream is connected (always 0 with a ring file).
    pub ring_stream_connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wscluster_proxy");
        let connections = Family::<Labels, Gauge>::default();
        let upgrades = Counter::default();
        let http_requests = Counter::default();
        let resets = Family::<Labels, Counter>::default();
        let ring_version = Gauge::default();
        let errors = Family::<Labels, Counter>::default();
        // 10 µs to ~0.3 s: a scan of 100k connections is about a millisecond.
        let reset_scan_seconds = Histogram::new(exponential_buckets(1e-5, 2.0, 16));
        let reset_queue = Gauge::default();
        let ring_stream_connected = Gauge::default();
        registry.register(
            "connections",
            "Spliced WebSocket connections by member",
            connections.clone(),
        );
        registry.register("upgrades", "WebSocket upgrades spliced", upgrades.clone());
        registry.register(
            "http_requests",
            "Plain HTTP requests forwarded",
            http_requests.clone(),
        );
        registry.register("resets", "Resets sent, by reason", resets.clone());
        registry.register("ring_version", "Ring version in use", ring_version.clone());
        registry.register("errors", "Errors by kind", errors.clone());
        registry.register(
            "reset_scan_seconds",
            "Time to find moved connections after a ring change",
            reset_scan_seconds.clone(),
        );
        registry.register(
            "reset_queue",
            "Resets waiting for the pacer",
            reset_queue.clone(),
        );
        registry.register(
            "ring_stream_connected",
            "1 while the ring stream is connected",
            ring_stream_connected.clone(),
        );
        Metrics {
            registry,
            connections,
            upgrades,
            http_requests,
            resets,
            ring_version,
            errors,
            reset_scan_seconds,
            reset_queue,
            ring_stream_connected,
        }
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &'static str) {
        self.errors
            .get_or_create(&vec![("kind", kind.to_owned())])
            .inc();
    }

    /// Counts a reset.
    pub fn reset(&self, reason: &'static str) {
        self.resets
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// The gauge of a member's connections.
    pub fn member_gauge(&self, member: &str) -> Gauge {
        self.connections
            .get_or_create_owned(&vec![("member", member.to_owned())])
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
