//! Prometheus metrics, prefix `wscluster_node_`, served as text on `GET /metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// A new metric of type `M`, registered in `registry` under `name`.
fn register<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

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
    /// Sessions closed by the node, by reason (`rebalance`, `drain`, `replaced`,
    /// `slow-consumer`, `keepalive`).
    pub resets: Family<Label, Counter>,
    /// Errors by kind (bad requests, protocol errors, backend failures).
    pub errors: Family<Label, Counter>,
    /// Ring version in use (0 when standalone or unknown).
    pub ring_version: Gauge,
    /// 1 while the message bus is connected.
    pub bus_connected: Gauge,
    /// Sends and broadcasts being stored and delivered (at most `--max-inflight-sends`).
    pub sends_in_flight: Gauge,
    /// 1 while the ring this node applies marks it draining (a scale-down is moving its
    /// clients away): the dashboard's drain progress and the stuck-drain alert read it.
    pub member_draining: Gauge,
    /// Time to append one message to its user's mailbox (Redis or memory), seconds.
    pub mailbox_append_seconds: Histogram,
    /// The `messages_delivered` series of the kinds the node delivers, looked up once: a
    /// family look-up hashes the label under a lock, once per delivered frame.
    delivered_kinds: [(&'static str, Counter); 3],
}

/// The kinds of frame [`Metrics::delivered`] counts without a family look-up.
const DELIVERED_KINDS: [&str; 3] = ["message", "replay", "broadcast"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("wscluster_node");
        let messages_delivered: Family<Label, Counter> = register(
            &mut r,
            "messages_delivered",
            "Frames delivered to clients by kind",
        );
        let delivered_kinds = DELIVERED_KINDS.map(|kind| {
            (
                kind,
                messages_delivered.get_or_create(&[("kind", kind)]).clone(),
            )
        });
        Metrics {
            connections: register(&mut r, "connections", "Open WebSocket sessions"),
            connections_opened: register(&mut r, "connections_opened", "WebSocket sessions opened"),
            messages_appended: register(
                &mut r,
                "messages_appended",
                "Messages appended to user mailboxes",
            ),
            messages_delivered,
            delivered_kinds,
            broadcasts: register(
                &mut r,
                "broadcasts",
                "Broadcast events fanned out to local users",
            ),
            resets: register(&mut r, "resets", "Sessions closed by the node by reason"),
            errors: register(&mut r, "errors", "Errors by kind"),
            ring_version: register(&mut r, "ring_version", "Ring version in use"),
            bus_connected: register(
                &mut r,
                "bus_connected",
                "1 while the message bus is connected",
            ),
            sends_in_flight: register(
                &mut r,
                "sends_in_flight",
                "Sends and broadcasts being stored and delivered",
            ),
            member_draining: register(
                &mut r,
                "member_draining",
                "1 while the applied ring marks this node draining",
            ),
            mailbox_append_seconds: {
                // 100 µs to ~3 s: a local Redis answers in well under a millisecond, a
                // struggling one in seconds.
                let h = Histogram::new(exponential_buckets(1e-4, 2.0, 15));
                r.register(
                    "mailbox_append_seconds",
                    "Time to append a message to its user's mailbox",
                    h.clone(),
                );
                h
            },
            registry: r,
        }
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
        match self.delivered_kinds.iter().find(|(k, _)| *k == kind) {
            Some((_, counter)) => counter.inc(),
            None => self
                .messages_delivered
                .get_or_create(&[("kind", kind)])
                .inc(),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_under_the_node_prefix() {
        let m = Metrics::new();
        m.error("redis");
        m.reset("drain");
        m.delivered("replay");
        m.delivered("replay");
        m.delivered("other");
        let text = m.encode();
        for line in [
            "# TYPE wscluster_node_connections gauge",
            "# TYPE wscluster_node_connections_opened counter",
            "# TYPE wscluster_node_messages_appended counter",
            "wscluster_node_messages_delivered_total{kind=\"replay\"} 2",
            "wscluster_node_messages_delivered_total{kind=\"other\"} 1",
            "wscluster_node_messages_delivered_total{kind=\"message\"} 0",
            "# TYPE wscluster_node_broadcasts counter",
            "wscluster_node_resets_total{reason=\"drain\"} 1",
            "wscluster_node_errors_total{kind=\"redis\"} 1",
            "# TYPE wscluster_node_ring_version gauge",
            "# TYPE wscluster_node_bus_connected gauge",
            "# TYPE wscluster_node_member_draining gauge",
            "# TYPE wscluster_node_mailbox_append_seconds histogram",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
