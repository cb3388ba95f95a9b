//! Prometheus metrics, prefix `wscluster_proxy_`, served on the admin port at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label, e.g. `("member", "chat-node-0")`.
pub type Labels = Vec<(&'static str, String)>;

/// Bucket bounds of `upstream_upgrade_seconds`: fine around the pacer's 50 ms target and the
/// 100 ms a scale-up should stay under, coarse beyond.
const UPGRADE_BUCKETS_SECONDS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
];

/// A `upstream_upgrade_seconds` histogram (a plain fn, so the family's type can be named).
fn upgrade_histogram() -> Histogram {
    Histogram::new(UPGRADE_BUCKETS_SECONDS)
}

/// The upgrade latency histograms by member.
pub type UpgradeHistograms = Family<Labels, Histogram, fn() -> Histogram>;

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
    /// The rate the pacer resets at now, per second (the start rate between waves in adaptive
    /// mode, `ratePerSecond` in fixed mode).
    pub reset_rate: Gauge,
    /// Time from connecting to an owner to its 101, by member: what the adaptive pacer watches.
    pub upstream_upgrade_seconds: UpgradeHistograms,
    /// Upgrades an owner refused or did not answer, by member and kind (`5xx`, `429`, `421`,
    /// or the failure's error kind: `upstream-unreachable`, `upstream-connect-timeout`,
    /// `upstream-error`, `upstream-timeout`).
    pub upstream_refusals: Family<Labels, Counter>,
    /// 1 while the ring stream is connected (always 0 with a ring file).
    pub ring_stream_connected: Gauge,
    /// 1 for the source of the ring in use (`source` = `none`, `stream` or `file`), 0 for the
    /// others: a proxy on its fallback ring file routes, and says so here.
    pub ring_source: Family<Labels, Gauge>,
    /// TLS handshakes completed on the TLS listener.
    pub tls_handshakes: Counter,
    /// TLS handshakes that failed, by reason (`plain-http`, `bad-alpn`, `timeout`, `other`).
    pub tls_handshake_failures: Family<Labels, Counter>,
    /// Config file changes applied without a restart (`--config` re-read and valid).
    pub config_reloads: Counter,
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
        let reset_rate = Gauge::default();
        let upstream_upgrade_seconds =
            UpgradeHistograms::new_with_constructor(upgrade_histogram as fn() -> Histogram);
        let upstream_refusals = Family::<Labels, Counter>::default();
        let ring_stream_connected = Gauge::default();
        let ring_source = Family::<Labels, Gauge>::default();
        let tls_handshakes = Counter::default();
        let tls_handshake_failures = Family::<Labels, Counter>::default();
        let config_reloads = Counter::default();
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
            "reset_rate",
            "Resets per second the pacer starts now",
            reset_rate.clone(),
        );
        registry.register(
            "upstream_upgrade_seconds",
            "Time from connecting to an owner to its 101, by member",
            upstream_upgrade_seconds.clone(),
        );
        registry.register(
            "upstream_refusals",
            "Upgrades an owner refused or did not answer, by member and kind",
            upstream_refusals.clone(),
        );
        registry.register(
            "ring_stream_connected",
            "1 while the ring stream is connected",
            ring_stream_connected.clone(),
        );
        registry.register(
            "ring_source",
            "1 for the source of the ring in use (stream, file or none)",
            ring_source.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes completed",
            tls_handshakes.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes failed, by reason",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "config_reloads",
            "Config file changes applied without a restart",
            config_reloads.clone(),
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
            reset_rate,
            upstream_upgrade_seconds,
            upstream_refusals,
            ring_stream_connected,
            ring_source,
            tls_handshakes,
            tls_handshake_failures,
            config_reloads,
        }
    }

    /// Sets the `ring_source` gauges: 1 for `source`, 0 for the others.
    pub fn set_ring_source(&self, source: wscluster_ring_stream::RingOrigin) {
        for origin in wscluster_ring_stream::RingOrigin::ALL {
            self.ring_source
                .get_or_create(&vec![("source", origin.as_str().to_owned())])
                .set(i64::from(origin == source));
        }
    }

    /// Counts a TLS handshake: completed (`None`) or failed and why.
    pub fn tls_handshake(&self, failure: Option<crate::tls::HandshakeFailure>) {
        match failure {
            None => self.tls_handshakes.inc(),
            Some(f) => self
                .tls_handshake_failures
                .get_or_create(&vec![("reason", f.metric_label().to_owned())])
                .inc(),
        };
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

    /// The upgrade latency histogram of a member.
    pub fn member_upgrade_histogram(&self, member: &str) -> Histogram {
        self.upstream_upgrade_seconds
            .get_or_create_owned(&vec![("member", member.to_owned())])
    }

    /// Counts an upgrade `member` refused (or did not answer), of `kind`.
    pub fn upstream_refusal(&self, member: &str, kind: &'static str) {
        self.upstream_refusals
            .get_or_create(&vec![
                ("member", member.to_owned()),
                ("kind", kind.to_owned()),
            ])
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
