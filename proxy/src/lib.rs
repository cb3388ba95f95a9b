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
//! forwarding, every answer before the upgrade), [`api`] (the server API port, its API keys
//! and the retry on 421), [`jwt`] (token verification, JWKS, key reloads), [`limits`]
//! (per-address limits), [`admin`] (`/healthz`, `/readyz`, `/metrics`), [`bus`] (reset events
//! to RabbitMQ), [`metrics`], [`state`] (what tasks share), [`error`], [`cli`] (the flags and
//! the whole process, for `wscluster-proxy` and `wscluster-operator proxy`).
//!
//! Flags (each also read from `WSCLUSTER_<FLAG>`; [`cli::Args`]): `--listen 0.0.0.0:8080`,
//! `--admin-listen 0.0.0.0:9090`, `--id` (default `POD_NAME`, else the hostname),
//! `--cluster-id default/chat`, `--config /etc/wscluster/proxy.yaml` (optional; followed while
//! running, [`config::ProxyConfig::restart_fingerprint`] names what needs a restart),
//! `--ring-url` with `--ring-token-file` or `--ring-token` (not both), `--ring-file`, or both
//! (the file is then the stream's fallback, [`wscluster_ring_stream::merge_rings`]),
//! `--amqp-url`, `--fallback-upstream host:port` (where plain HTTP that is not for a member
//! goes instead of a 404), `--proxy-secret-file` (the secret sent to members),
//! `--api-listen 0.0.0.0:8081` with `--api-keys-file` (the server API, [`api`]),
//! `--tls-listen 0.0.0.0:8443` with `--tls-cert-file` and `--tls-key-file` (the `wss://`
//! listener beside the plain one, [`tls`]), `--worker-threads` and `--log-format text|json`.
//!
//! ```no_run
//! use wscluster_proxy::{Listeners, RingSource, Settings, config::ProxyConfig, run};
//! # async fn example() -> Result<(), wscluster_proxy::error::Error> {
//! let settings = Settings {
//!     id: "proxy-0".into(),
//!     cluster_id: "default/chat".into(),
//!     config: ProxyConfig::default(),
//!     config_file: None,
//!     ring: RingSource::File("ring.json".into()),
//!     amqp_url: None,
//!     amqp_ca: None,
//!     fallback_upstream: None,
//!     upstream_source: None,
//!     proxy_secret: None,
//!     api_keys: None,
//! };
//! let listeners = Listeners {
//!     client: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
//!     admin: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
//!     api: None,
//!     tls: None,
//! };
//! run(settings, listeners, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

pub mod admin;
pub mod api;
pub mod bus;
pub mod cli;
pub mod config;
pub mod error;
pub mod frame;
pub mod head;
pub mod jwt;
pub mod key;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod resets;
pub mod route;
pub mod server;
pub mod splice;
pub mod state;
pub mod tls;
pub mod upstream;

use std::path::PathBuf;
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
use wscluster_ring_stream::{
    RingOrigin, SubscriberConfig, Subscription, merge_rings, watch_ring_file,
};
use wscluster_runtime::credentials::{DEFAULT_RELOAD_INTERVAL, WatchedCredentials};
use wscluster_runtime::flags;

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

/// Margin, in seconds, a supervisor leaves past the proxy's own hard deadline before SIGKILL:
/// the signal's delivery and the process's exit, on a loaded node.
pub const STOP_MARGIN_SECONDS: u64 = 5;

/// How long a supervisor (the kubelet's `terminationGracePeriodSeconds`, local mode) must wait
/// between SIGTERM and SIGKILL so that clients get the drain frame rather than 1006: the
/// `preStop` hook's time, the drain, the proxy's own hard deadline past it (which bounds the
/// resets and their close handshakes), and [`STOP_MARGIN_SECONDS`]. See docs/proxy.md.
pub fn termination_grace_seconds(drain_timeout_seconds: u64, pre_stop_seconds: u64) -> u64 {
    pre_stop_seconds
        .saturating_add(drain_timeout_seconds)
        .saturating_add(cli::HARD_DEADLINE_EXTRA.as_secs())
        .saturating_add(STOP_MARGIN_SECONDS)
}

/// Where rings come from: the ring-source flags' value, shared with the node.
pub use wscluster_runtime::ring_args::RingSource;

/// Everything [`run`] needs besides its listeners.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This proxy's subscriber id (pod name).
    pub id: String,
    /// The cluster served, `namespace/name`.
    pub cluster_id: String,
    /// The config file's values at start.
    pub config: ProxyConfig,
    /// The config file (`--config`), followed while running: a valid rewrite applies live
    /// (docs/proxy.md, "Live configuration"); `None` keeps `config`.
    pub config_file: Option<PathBuf>,
    /// Where rings come from.
    pub ring: RingSource,
    /// RabbitMQ URL for reset events, if any.
    pub amqp_url: Option<String>,
    /// Extra CA certificates trusted for an `amqps://` URL (`--amqp-ca-file`).
    pub amqp_ca: Option<wscluster_runtime::ca::CaBundle>,
    /// Where plain HTTP requests that are not for a member go (`host:port`), instead of a
    /// 404; local mode points it at its control server so the demo page is served at the
    /// proxy's root. Never the key, never the secret, never an internal path.
    pub fallback_upstream: Option<String>,
    /// The local address connections to members leave from (`--upstream-source-address`);
    /// `None` leaves it to the kernel.
    pub upstream_source: Option<std::net::IpAddr>,
    /// The cluster's proxy secret(s) (`--proxy-secret-file`): the first goes to members on
    /// every request. `None` is dev mode: members cannot tell this proxy from a client.
    pub proxy_secret: Option<WatchedCredentials>,
    /// The server API's keys (`--api-keys-file`); required when [`Listeners::api`] is given.
    pub api_keys: Option<WatchedCredentials>,
}

/// The sockets [`run`] serves, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// Clients (WebSocket upgrades, and the seed's `/send` when `legacySend` is on).
    pub client: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: TcpListener,
    /// The server API (`/api/v1/...`), when `--api-listen` is given.
    pub api: Option<TcpListener>,
    /// Clients over TLS (`wss://`), when `--tls-listen` is given.
    pub tls: Option<TlsListener>,
}

/// The TLS listener and its certificates: served like [`Listeners::client`], each connection
/// after its handshake; the certificate files are re-read when they change.
#[derive(Debug)]
pub struct TlsListener {
    /// The bound socket.
    pub listener: TcpListener,
    /// The loaded certificates and the server configuration.
    pub tls: tls::Tls,
}

/// Runs the proxy until `shutdown`: then stops accepting, lets spliced connections finish for
/// `drainTimeoutSeconds`, resets the rest with reason "drain", and returns.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let Listeners {
        client: listener,
        admin: admin_listener,
        api: api_listener,
        tls: tls_listener,
    } = listeners;
    // 1. The shared state; background work stops when `run` returns.
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    let shared = shared_state(&settings, &background)?;
    watch_credentials(&settings, &background);
    // Always followed: a reloaded config can add a JWT key source.
    tokio::spawn(follow_jwt_keys(Arc::clone(&shared), background.clone()));
    if let Some(path) = &settings.config_file {
        tokio::spawn(follow_config(
            Arc::clone(&shared),
            path.clone(),
            background.clone(),
        ));
    }
    if let Some(api_listener) = api_listener {
        let keys = settings.api_keys.clone().ok_or_else(|| {
            error::Error::Config(format!(
                "--{} needs --{}",
                flags::API_LISTEN.long,
                flags::API_KEYS_FILE.long
            ))
        })?;
        let api = api::Api::new(Arc::clone(&shared), keys);
        info!(addr = ?api_listener.local_addr().ok(), "server API listening");
        tokio::spawn(api.serve(api_listener, shutdown.clone()));
    }
    // 2. Rings, resets, the idle sweep and the admin port.
    let feed = ring_source(&settings, &background);
    tokio::spawn(
        follow_rings(Arc::clone(&shared), feed, background.clone()).instrument(info_span!("rings")),
    );
    tokio::spawn(
        resets::run_pacer(Arc::clone(&shared), background.clone()).instrument(info_span!("pacer")),
    );
    tokio::spawn(resets::run_sweeper(Arc::clone(&shared), background.clone()));
    tokio::spawn(limits::run_sweeper(Arc::clone(&shared), background.clone()));
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::clone(&shared),
        shutdown.clone(),
        background.clone(),
    ));
    // 3. Clients until the signal.
    info!(addr = ?listener.local_addr().ok(), id = %settings.id, cluster = %settings.cluster_id, "proxy listening");
    let tracker = TaskTracker::new();
    let tls_loop =
        tls_listener.map(|tls| serve_tls(tls, &shared, &shutdown, &tracker, &background));
    server::serve(
        listener,
        Arc::clone(&shared),
        shutdown.clone(),
        tracker.clone(),
    )
    .await;
    if let Some(tls_loop) = tls_loop {
        let _ = tls_loop.await;
    }
    tracker.close();
    // 4. The drain, for the start's `drainTimeoutSeconds`: the process's hard deadline was
    // set from it (a restart field, [`ProxyConfig::restart_fingerprint`]).
    let grace = Duration::from_secs(settings.config.drain_timeout_seconds);
    drain(&shared, &tracker, grace).await;
    Ok(())
}

/// Starts the TLS listener's accept loop (it ends with `shutdown`, like the plain one) and
/// the certificate watch (it ends with `background`): rotated files apply to new handshakes;
/// connections already open keep theirs.
fn serve_tls(
    tls: TlsListener,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    background: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let TlsListener { listener, tls } = tls;
    info!(addr = ?listener.local_addr().ok(), "TLS listening");
    let acceptor = tls.acceptor();
    tokio::spawn(tls.watch(tls::RELOAD_INTERVAL, background.clone()));
    tokio::spawn(server::serve_tls(
        listener,
        acceptor,
        Arc::clone(shared),
        shutdown.clone(),
        tracker.clone(),
    ))
}

/// Follows the secret files: rotation needs no restart. Says once, at start, when there is no
/// proxy secret, since members then cannot verify what this proxy sets.
fn watch_credentials(settings: &Settings, background: &CancellationToken) {
    match &settings.proxy_secret {
        Some(secret) => {
            tokio::spawn(
                secret
                    .clone()
                    .watch(DEFAULT_RELOAD_INTERVAL, background.clone()),
            );
        }
        None => warn!(
            "no --{}: members cannot verify that requests come from this proxy (dev mode)",
            flags::PROXY_SECRET_FILE.long
        ),
    }
    if let Some(keys) = &settings.api_keys {
        tokio::spawn(
            keys.clone()
                .watch(DEFAULT_RELOAD_INTERVAL, background.clone()),
        );
    }
}

/// Re-reads the JWT key file every few seconds, so a rotated key needs no restart and drops no
/// connection; a broken file keeps the previous keys.
async fn follow_jwt_keys(shared: Arc<Shared>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(DEFAULT_RELOAD_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match shared.keys().reload() {
            Ok(true) => info!("JWT key file changed; new keys in use"),
            Ok(false) => {}
            Err(error) => {
                shared.metrics.error("jwt-key-reload");
                warn!(%error, "JWT key file unusable; keeping the previous keys");
            }
        }
    }
}

/// Re-reads the config file every few seconds; a changed, valid file applies live
/// ([`reload_config`]). A broken or unreadable one keeps the config in use, logged and counted
/// (`errors_total{kind="config-reload"}`) once per change of what is read.
async fn follow_config(shared: Arc<Shared>, path: PathBuf, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(DEFAULT_RELOAD_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<std::result::Result<String, String>> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let read = std::fs::read_to_string(&path).map_err(|e| e.to_string());
        if seen.as_ref() == Some(&read) {
            continue;
        }
        seen = Some(read.clone());
        let outcome = read
            .map_err(|e| error::Error::Config(format!("cannot read it: {e}")))
            .and_then(|text| reload_config(&shared, &text));
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                shared.metrics.config_reloads.inc();
                info!(path = %path.display(), "config file changed; new config in use");
            }
            Err(error) => {
                shared.metrics.error("config-reload");
                warn!(path = %path.display(), %error, "config file unusable; keeping the config in use");
            }
        }
    }
}

/// Parses and validates `text` and, when it differs from the config in use, swaps it in with
/// its key sources (rebuilt only when they changed, so loaded JWT keys stay) and its
/// per-address limits; says whether it did. Fields that need a restart are taken into the
/// config but not into what was built from them at start: a warning names that case.
fn reload_config(shared: &Shared, text: &str) -> Result<bool> {
    let config = ProxyConfig::from_yaml(text)?;
    let old = shared.config();
    if *old == config {
        return Ok(false);
    }
    if old.key_sources != config.key_sources {
        shared
            .keys
            .store(Arc::new(KeySources::from_specs(&config.key_sources)?));
    }
    shared.client_limits.update(&config.limits);
    if old.restart_fingerprint() != config.restart_fingerprint() {
        warn!(
            "the new config changes drainTimeoutSeconds or limits.maxConnections, \
            headerReadTimeoutMs, maxHeaderBytes or connectTimeoutMs: those apply after a restart"
        );
    }
    shared.config.store(Arc::new(config));
    Ok(true)
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
            settings.amqp_ca.clone(),
            settings.cluster_id.clone(),
            Arc::clone(&metrics),
            background.clone(),
        )
    });
    Ok(Arc::new(Shared {
        cluster_id: settings.cluster_id.clone(),
        config: ArcSwap::from_pointee(settings.config.clone()),
        start_limits: settings.config.limits,
        keys: ArcSwap::from_pointee(keys),
        routing: ArcSwap::from_pointee(Routing::unknown(&settings.cluster_id)),
        registry: Arc::new(Registry::new()),
        resets: ResetQueue::default(),
        reset_sink,
        metrics,
        fallback_upstream: settings.fallback_upstream.clone(),
        upstream_source: settings.upstream_source,
        proxy_secret: settings.proxy_secret.clone(),
        ring_applied: watch::Sender::new(0),
        client_limits: limits::ClientLimits::new(&settings.config.limits),
    }))
}

/// The rings the settings name, with where the one in use came from, and the subscription
/// (to ack and to report the connection) when the stream is one of the sources.
struct RingFeed {
    /// The ring in use.
    rings: watch::Receiver<Option<Arc<Ring>>>,
    /// Its source.
    origin: watch::Receiver<RingOrigin>,
    /// The ring stream's subscription, if any.
    subscription: Option<Subscription>,
}

/// The ring source the settings name: a watched file, the ring stream, or the stream with a
/// fallback file (merged by [`merge_rings`]: the stream is authoritative, versions only move
/// forward).
fn ring_source(settings: &Settings, background: &CancellationToken) -> RingFeed {
    let (url, token, fallback) = match &settings.ring {
        RingSource::File(path) => {
            let rings = watch_ring_file(path.clone(), background.clone());
            return RingFeed {
                origin: single_origin(&rings, RingOrigin::File, background),
                rings,
                subscription: None,
            };
        }
        RingSource::Stream {
            url,
            token,
            fallback,
        } => (url, token, fallback),
    };
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
    let (rings, origin) = match fallback {
        Some(path) => {
            let file = watch_ring_file(path.clone(), background.clone());
            let merged = merge_rings(
                settings.cluster_id.clone(),
                s.rings(),
                file,
                background.clone(),
            );
            (merged.rings, merged.origin)
        }
        None => {
            let rings = s.rings();
            let origin = single_origin(&rings, RingOrigin::Stream, background);
            (rings, origin)
        }
    };
    RingFeed {
        rings,
        origin,
        subscription: Some(s),
    }
}

/// The origin of a single source's rings: `from` once it has one.
fn single_origin(
    rings: &watch::Receiver<Option<Arc<Ring>>>,
    from: RingOrigin,
    background: &CancellationToken,
) -> watch::Receiver<RingOrigin> {
    let (tx, rx) = watch::channel(RingOrigin::None);
    let mut rings = rings.clone();
    let stop = background.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            r = rings.wait_for(Option::is_some) => if r.is_ok() { tx.send_replace(from); },
        }
        // Kept open until the stop, so the follower's select never sees it end.
        stop.cancelled().await;
    });
    rx
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
async fn follow_rings(shared: Arc<Shared>, feed: RingFeed, stop: CancellationToken) {
    let RingFeed {
        mut rings,
        mut origin,
        subscription,
    } = feed;
    let mut connected = subscription.as_ref().map(Subscription::connected);
    let mut seen: Option<u64> = None;
    loop {
        let ring = rings.borrow_and_update().clone();
        if let Some(ring) = ring.filter(|r| seen != Some(r.version())) {
            seen = Some(ring.version());
            match apply_ring(&shared, ring) {
                Applied::Applied { version, .. } => {
                    shared.ring_applied.send_replace(version);
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
        shared.metrics.set_ring_source(*origin.borrow_and_update());
        tokio::select! {
            () = stop.cancelled() => return,
            r = rings.changed() => if r.is_err() { return },
            r = origin.changed() => if r.is_err() { return },
            r = async {
                match connected.as_mut() {
                    Some(c) => c.changed().await,
                    None => std::future::pending().await,
                }
            } => if r.is_err() { connected = None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_covers_pre_stop_drain_resets_and_a_margin() {
        // 30 s drain (the default) with a 5 s preStop: 5 + 30 + 15 + 5.
        assert_eq!(termination_grace_seconds(30, 5), 55);
        assert_eq!(termination_grace_seconds(0, 0), 20);
        assert_eq!(termination_grace_seconds(u64::MAX, 1), u64::MAX);
    }
}
