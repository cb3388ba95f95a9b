//! Prometheus metrics, prefix `wscluster_node_`, served as text on `GET /metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One label, `kind` or `reason`.
type Label = [(&'static str, &'static str); 1];

/// Every metric of the node.
#[derive(Debug)]
pub struct Metrics {
    /// The registry the text endpoint encodes.
    registry: Registry,
    /// Open WebSocket sessions.
    pub connections: Gauge,
    /// Sessions opened since start.
    pub connections_opened: Counter,
    /// Messages appended to mailboxes.
    pub messages_appended: Counter,
    /// Frames delivered to clients, by kind (`message`, `replay`, `broadcast`).
    pub messages_delivered: Family<Label, Counter>,
    /// Broadcast events received from the bus and fanned out locally.
    pub broadcasts: Counter,
    /// Sessions closed by the node, by reason (`rebalance`, `drain`, `not-owner`, `replaced`,
    /// `slow-consumer`, `keepalive`).
    pub resets: Family<Label, Counter>,
    /// Errors by kind (bad requests, protocol errors, backend failures).
    pub errors: Family<Label, Counter>,
    /// Ring version in use (0 when standalone or unknown).
    pub ring_version: Gauge,
    /// 1 while the message bus is connected.
    pub bus_connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wscluster_node");
        let m = Metrics {
            registry: Registry::default(),
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            messages_appended: Counter::default(),
            messages_delivered: Family::default(),
            broadcasts: Counter::default(),
            resets: Family::default(),
            errors: Family::default(),
            ring_version: Gauge::default(),
            bus_connected: Gauge::default(),
        };
        registry.register(
            "connections",
            "Open WebSocket sessions",
            m.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket sessions opened",
            m.connections_opened.clone(),
        );
        registry.register(
            "messages_appended",
            "Messages appended to user mailboxes",
            m.messages_appended.clone(),
        );
        registry.register(
            "messages_delivered",
            "Frames delivered to clients by kind",
            m.messages_delivered.clone(),
        );
        registry.register(
            "broadcasts",
            "Broadcast events fanned out to local users",
            m.broadcasts.clone(),
        );
        registry.register(
            "resets",
            "Sessions closed by the node by reason",
            m.resets.clone(),
        );
        registry.register("errors", "Errors by kind", m.errors.clone());
        registry.register(
            "ring_version",
            "Ring version in use",
            m.ring_version.clone(),
        );
        registry.register(
            "bus_connected",
            "1 while the message bus is connected",
            m.bus_connected.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// Counts a session closed for `reason`.
    pub fn reset(&self, reason: &'static str) {
        self.resets.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a delivered frame of `kind`.
    pub fn delivered(&self, kind: &'static str) {
        self.messages_delivered
            .get_or_create(&[("kind", kind)])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
