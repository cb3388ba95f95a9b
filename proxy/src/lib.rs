//! # wscluster-proxy
//!
//! The data plane of wscluster: every client connection passes through it. For each request it
//! takes the business key ([`key`]), finds the key's owner on the current ring, and either
//! splices the WebSocket upgrade to that owner byte for byte ([`splice`]) or forwards the plain
//! HTTP request to it ([`server`]). When a newer ring arrives ([`resets`]) it finds the live
//! connections whose owner changed with the ring crate's diff ([`registry`]) and resets exactly
//! those, paced, with the shared reset frame and close code; connections whose owner did not
//! change are never touched.
//!
//! Layout: [`config`] (the YAML file), [`key`] (pure key extraction, JWT verification),
//! [`route`] (the routing decision, key → ring → owner, and the upgrade request for the owner,
//! for both upgrade paths and plain HTTP), [`head`] (the first request head read raw, for the
//! upgrade fast path), [`registry`] (live connections, pure reset planning), [`resets`] (ring
//! application, pacer, idle sweep, drain), [`frame`] (RFC 6455 frame boundaries and the frames
//! the proxy writes), [`splice`] (the low-memory copy loop), [`upstream`] (the owner's side of
//! an upgrade, spoken directly), [`server`] (accept loop, the fast path and hyper's path, HTTP
//! forwarding, every answer before the upgrade), [`admin`] (`/healthz`, `/readyz`,
//! `/metrics`), [`bus`] (reset events to RabbitMQ), [`metrics`], [`state`] (what tasks share),
//! [`error`], [`cli`] (the flags and the whole process, for `wscluster-proxy` and
//! `wscluster-operator proxy`).
//!
//! Flags (each also read from `WSCLUSTER_<FLAG>`; [`cli::Args`]): `--listen 0.0.0.0:8080`,
//! `--admin-listen 0.0.0.0:9090`, `--id` (default `POD_NAME`, else the hostname),
//! `--cluster-id default/chat`, `--config /etc/wscluster/proxy.yaml` (optional),
//! `--ring-url` with `--ring-token-file` or `--ring-token` (not both), or `--ring-file`,
//! `--amqp-url`, `--fallback-upstream host:port` (where keyless plain HTTP goes instead of a
//! 400), `--worker-threads` and `--log-format text|json`.
//!
//! ```no_run
//! use wscluster_proxy::{RingSource, Settings, config::ProxyConfig, run};
//! # async fn example() -> Result<(), wscluster_proxy::error::Error> {
//! let settings = Settings {
//!     id: "proxy-0".into(),
//!     cluster_id: "default/chat".into(),
//!     config: ProxyConfig::default(),
//!     ring: RingSource::File("ring.json".into()),
//!     amqp_url: None,
//!     fallback_upstream: None,
//! };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! run(settings, listener, admin, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

pub mod admin;
pub mod bus;
pub mod cli;
pub mod config;
pub mod error;
pub mod frame;
pub mod head;
pub mod key;
pub mod metrics;
pub mod registry;
pub mod resets;
pub mod route;
pub mod server;
pub mod splice;
pub mod state;
pub mod tls;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use wscluster_ring::Ring;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring_stream::{SubscriberConfig, Subscription, watch_ring_file};

use crate::config::ProxyConfig;
use crate::error::Result;
use crate::key::KeySources;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::resets::{Applied, ResetQueue, apply_ring};
use crate::state::{Routing, Shared};

/// Extra time after the drain resets for connections to finish their close handshakes
/// (the splice lingers up to about 3 s: boundary wait, write, linger).
const AFTER_DRAIN: Duration = Duration::from_secs(4);

/// Where rings come from: the ring-source flags' value, shared with the node.
pub use wscluster_runtime::ring_args::RingSource;

/// Everything [`run`] needs besides its listeners.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This proxy's subscriber id (pod name).
    pub id: String,
    /// The cluster served, `namespace/name`.
    pub cluster_id: String,
    /// The config file's values.
    pub config: ProxyConfig,
    /// Where rings come from.
    pub ring: RingSource,
    /// RabbitMQ URL for reset events, if any.
    pub amqp_url: Option<String>,
    /// Where plain HTTP requests that carry no key go (`host:port`), instead of a 400; local
    /// mode points it at its control server so the demo page is served at the proxy's root.
    pub fallback_upstream: Option<String>,
}

/// Runs the proxy until `shutdown`: then stops accepting, lets spliced connections finish for
/// `drainTimeoutSeconds`, resets the rest with reason "drain", and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    // 1. The shared state; background work stops when `run` returns.
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    let shared = shared_state(&settings, &background)?;
    // 2. Rings, resets, the idle sweep and the admin port.
    let (rings, subscription) = ring_source(&settings, &background);
    tokio::spawn(
        follow_rings(Arc::clone(&shared), rings, subscription, background.clone())
            .instrument(info_span!("rings")),
    );
    tokio::spawn(
        resets::run_pacer(Arc::clone(&shared), background.clone()).instrument(info_span!("pacer")),
    );
    tokio::spawn(resets::run_sweeper(Arc::clone(&shared), background.clone()));
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&shared),
        shutdown.clone(),
        background.clone(),
    ));
    // 3. Clients until the signal.
    info!(addr = ?listener.local_addr().ok(), id = %settings.id, cluster = %settings.cluster_id, "proxy listening");
    let tracker = TaskTracker::new();
    server::serve(
        listener,
        Arc::clone(&shared),
        shutdown.clone(),
        tracker.clone(),
    )
    .await;
    tracker.close();
    // 4. The drain.
    let grace = Duration::from_secs(settings.config.drain_timeout_seconds);
    drain(&shared, &tracker, grace).await;
    Ok(())
}

/// What every task shares, built from the settings: key sources (JWT keys loaded), metrics,
/// the reset publisher when `--amqp-url` is given, and an unknown ring until the first arrives.
fn shared_state(settings: &Settings, background: &CancellationToken) -> Result<Arc<Shared>> {
    settings.config.validate()?;
    let keys = KeySources::from_specs(&settings.config.key_sources)?;
    let metrics = Arc::new(Metrics::new());
    let reset_sink = settings.amqp_url.as_ref().map(|url| {
        bus::spawn_publisher(
            url.clone(),
            settings.cluster_id.clone(),
            Arc::clone(&metrics),
            background.clone(),
        )
    });
    Ok(Arc::new(Shared {
        cluster_id: settings.cluster_id.clone(),
        config: settings.config.clone(),
        keys,
        routing: ArcSwap::from_pointee(Routing::unknown(&settings.cluster_id)),
        registry: Arc::new(Registry::new()),
        resets: ResetQueue::default(),
        reset_sink,
        metrics,
        fallback_upstream: settings.fallback_upstream.clone(),
    }))
}

/// The rings the settings name: a watched file, or the ring stream (with its subscription, to
/// ack and to report the connection).
fn ring_source(
    settings: &Settings,
    background: &CancellationToken,
) -> (watch::Receiver<Option<Arc<Ring>>>, Option<Subscription>) {
    match &settings.ring {
        RingSource::File(path) => (watch_ring_file(path.clone(), background.clone()), None),
        RingSource::Stream { url, token } => {
            let s = Subscription::spawn(
                SubscriberConfig {
                    base_url: url.clone(),
                    cluster_id: settings.cluster_id.clone(),
                    token: token.clone(),
                    kind: SubscriberKind::Proxy,
                    subscriber_id: settings.id.clone(),
                },
                background.clone(),
            );
            (s.rings(), Some(s))
        }
    }
}

/// Shutdown: spliced connections get `grace` to finish; the rest are reset with reason
/// "drain" and get [`AFTER_DRAIN`] for their close handshakes.
async fn drain(shared: &Shared, tracker: &TaskTracker, grace: Duration) {
    info!(
        live = shared.registry.len(),
        grace_s = grace.as_secs(),
        "stopped accepting; draining"
    );
    if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
        return;
    }
    resets::drain_all(shared);
    if tokio::time::timeout(AFTER_DRAIN, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            live = shared.registry.len(),
            "connections still open after the drain"
        );
    }
}

/// Applies each ring the source produces and acknowledges the version in use.
async fn follow_rings(
    shared: Arc<Shared>,
    mut rings: watch::Receiver<Option<Arc<Ring>>>,
    subscription: Option<Subscription>,
    stop: CancellationToken,
) {
    let mut connected = subscription.as_ref().map(Subscription::connected);
    let mut seen: Option<u64> = None;
    loop {
        let ring = rings.borrow_and_update().clone();
        if let Some(ring) = ring.filter(|r| seen != Some(r.version())) {
            seen = Some(ring.version());
            match apply_ring(&shared, ring) {
                Applied::Applied { version, .. } => {
                    if let Some(s) = &subscription {
                        s.ack(version);
                    }
                }
                Applied::Ignored(why) => warn!(%why, "ring ignored"),
            }
        }
        if let Some(c) = &connected {
            shared
                .metrics
                .ring_stream_connected
                .set(i64::from(*c.borrow()));
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = rings.changed() => if r.is_err() { return },
            r = async {
                match connected.as_mut() {
                    Some(c) => c.changed().await,
                    None => std::future::pending().await,
                }
            } => if r.is_err() { connected = None },
        }
    }
}
