//! Process wiring: the whole process from parsed flags ([`main`]), backends from the
//! configuration, the HTTP listener, background tasks, and the graceful shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wscluster_ring::{MemberState, Ring};
use wscluster_runtime::Announcement;
use wscluster_runtime::flags;
use wscluster_runtime::process::{self, ProcessSpec};
use wscluster_runtime::ring_args::RingSource;
use wscluster_runtime::serve::{ServeOptions, serve};

use crate::auth::Trust;
use crate::bus::{AmqpBus, AmqpSettings, Bus, BusEvent, MemoryBus};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::Edge;
use crate::mailbox::{Mailbox, MemoryMailbox, RedisConnection, RedisMailbox, Retention};
use crate::ownership::RingView;
use crate::presence::{MemoryPresence, Presence, RedisPresence};
use crate::state::{Backends, NodeState};
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring_stream::{SubscriberConfig, Subscription, merge_rings, watch_ring_file};

/// Most connections on the admin port at once (probes, scrapes, operators' look-ups).
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// How long an HTTP client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed beyond the grace period, after SIGTERM, before the process gives up and fails:
/// the drain takes the grace period plus at most twice [`HTTP_DRAIN`].
const HARD_DEADLINE_EXTRA: Duration = Duration::from_secs(5);
/// Time given to in-flight HTTP requests and background sends after the sessions are drained.
const HTTP_DRAIN: Duration = Duration::from_secs(2);
/// How long connecting to Redis at startup may take.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to one cluster node may take: a master that is gone must not hold a
/// retry longer than an append may take in all (`mailbox::APPEND_TIMEOUT`).
const CLUSTER_NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts of one cluster command (redirections and reconnects); its time is bounded anyway.
const CLUSTER_RETRIES: u32 = 8;

impl Backends {
    /// In-memory backends: no external service, nothing durable. `bus` may be shared with
    /// other nodes in the same process.
    pub fn in_memory(
        config: &Config,
        bus: &MemoryBus,
        ring: RingView,
        shutdown: CancellationToken,
    ) -> Backends {
        Backends {
            mailbox: Arc::new(MemoryMailbox::new(retention(config))),
            presence: Arc::new(MemoryPresence::new(config.presence_ttl())),
            bus: Arc::new(bus.clone()),
            bus_events: bus.attach(&config.member_id(), shutdown),
            ring,
            ack: None,
        }
    }

    /// The backends the configuration asks for: Redis and RabbitMQ when their URLs are given,
    /// in-memory otherwise; the ring from `--ring-url`, `--ring-file`, or standalone.
    pub async fn from_config(config: &Config, shutdown: CancellationToken) -> Result<Backends> {
        config.validate()?;
        let member = config.member_id();
        let (ring, ack) = ring_source(config, &member, shutdown.clone())?;
        let redis = match (&config.redis_url, &config.redis_cluster) {
            (Some(url), _) => Some(RedisConnection::from(standalone_redis(config, url).await?)),
            (None, Some(seeds)) => Some(RedisConnection::from(cluster_redis(config, seeds).await?)),
            (None, None) => None,
        };
        let (mailbox, presence) = match redis {
            Some(con) => redis_backends(config, con),
            None => (
                Arc::new(MemoryMailbox::new(retention(config))) as Arc<dyn Mailbox>,
                Arc::new(MemoryPresence::new(config.presence_ttl())) as Arc<dyn Presence>,
            ),
        };
        let (bus, bus_events): (Arc<dyn Bus>, _) = match &config.amqp_url {
            Some(url) => {
                let settings = AmqpSettings {
                    url: url.clone(),
                    cluster_id: config.cluster_id.clone(),
                    member: member.clone(),
                };
                let ca = ca_bundle(flags::AMQP_CA_FILE, &config.amqp_ca_file)?;
                let (bus, rx) = AmqpBus::start(settings, ca, shutdown);
                (bus, rx)
            }
            None => {
                let bus = MemoryBus::new();
                let rx = bus.attach(&member, shutdown);
                (Arc::new(bus), rx)
            }
        };
        Ok(Backends {
            mailbox,
            presence,
            bus,
            bus_events,
            ring,
            ack,
        })
    }
}

/// Mailbox and presence on `con`, standalone or cluster alike.
fn redis_backends(config: &Config, con: RedisConnection) -> (Arc<dyn Mailbox>, Arc<dyn Presence>) {
    tracing::info!(redis = con.kind(), "mailboxes and presence on redis");
    let ns = format!("{}:{}:", config.redis_prefix, config.cluster_id);
    (
        Arc::new(RedisMailbox::new(
            con.clone(),
            ns.clone(),
            retention(config),
        )),
        Arc::new(RedisPresence::new(con, ns, config.presence_ttl())),
    )
}

/// The connection to the Redis at `url`, which must answer within [`REDIS_CONNECT_TIMEOUT`].
/// A `rediss://` URL trusts `--redis-ca-file` when given, else the platform's roots.
async fn standalone_redis(config: &Config, url: &str) -> Result<ConnectionManager> {
    let client = redis_client(config, url)?;
    // redis-rs reconnects by itself, with exponential backoff and jitter; it is given the same
    // schedule as every other reconnect loop (wscluster_runtime::amqp: 100 ms doubling to 5 s)
    // so that after a Redis restart the pods do not come back in lockstep. Each mailbox call is
    // bounded on its own (mailbox::APPEND_TIMEOUT), so a reconnect never holds a send.
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
        .set_response_timeout(Some(REDIS_CONNECT_TIMEOUT))
        .set_min_delay(wscluster_runtime::amqp::RECONNECT_INITIAL)
        .set_max_delay(wscluster_runtime::amqp::RECONNECT_MAX)
        .set_exponent_base(2.0);
    probe_redis(&client, url).await?;
    let con = tokio::time::timeout(
        REDIS_CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client, manager_config),
    )
    .await
    .map_err(|_| Error::Config(format!("redis at {} did not answer", redact(url))))??;
    Ok(con)
}

/// The connection to the Redis Cluster the `--redis-cluster` seeds belong to. Connecting
/// learns the slot map from the first seed that answers, within [`REDIS_CONNECT_TIMEOUT`], so
/// the start fails with the reason when none does. TLS and the CA as for [`redis_client`].
///
/// Retries of a command (after `MOVED`, a refused connection, a failover) wait 100 ms
/// doubling to 5 s, like every other reconnect loop (not redis-rs's 1.28 s minimum, longer than
/// a whole append may take); every mailbox call stays bounded on its own
/// (`mailbox::APPEND_TIMEOUT`), so a failover answers 503 rather than holding sends.
async fn cluster_redis(config: &Config, seeds: &[String]) -> Result<ClusterConnection> {
    wscluster_runtime::ca::install_crypto_provider();
    let shown = seeds
        .iter()
        .map(|s| redact(s))
        .collect::<Vec<_>>()
        .join(",");
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut builder = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .connection_timeout(CLUSTER_NODE_CONNECT_TIMEOUT)
        .response_timeout(REDIS_CONNECT_TIMEOUT)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(millis(wscluster_runtime::amqp::RECONNECT_INITIAL))
        .max_retry_wait(millis(wscluster_runtime::amqp::RECONNECT_MAX))
        .retry_wait_formula(millis(wscluster_runtime::amqp::RECONNECT_INITIAL), 2);
    if let Some(ca) = ca_bundle(flags::REDIS_CA_FILE, &config.redis_ca_file)? {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.pem().as_bytes().to_vec()),
        });
    }
    let what = format!("redis cluster at {shown}");
    let client = builder
        .build()
        .map_err(|e| Error::Config(format!("{what}: {e}")))?;
    match tokio::time::timeout(REDIS_CONNECT_TIMEOUT, client.get_async_connection()).await {
        Err(_) => Err(Error::Config(format!(
            "{what} did not answer within {REDIS_CONNECT_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(Error::Config(format!("{what}: {e}"))),
        Ok(Ok(con)) => Ok(con),
    }
}

/// The Redis client for `url`: with `--redis-ca-file` as the only trusted roots when given.
fn redis_client(config: &Config, url: &str) -> Result<redis::Client> {
    wscluster_runtime::ca::install_crypto_provider();
    let Some(ca) = ca_bundle(flags::REDIS_CA_FILE, &config.redis_ca_file)? else {
        return Ok(redis::Client::open(url)?);
    };
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.pem().as_bytes().to_vec()),
    };
    Ok(redis::Client::build_with_tls(url, certificates)?)
}

/// One connection attempt, bounded by [`REDIS_CONNECT_TIMEOUT`], so that a wrong address, a
/// certificate the roots do not vouch for, or a wrong password fails the start with its own
/// reason. (The connection manager retries every failure until its timeout, which would hide
/// the reason behind "did not answer".)
async fn probe_redis(client: &redis::Client, url: &str) -> Result<()> {
    let attempt = tokio::time::timeout(
        REDIS_CONNECT_TIMEOUT,
        client.get_multiplexed_async_connection(),
    )
    .await;
    let what = format!("redis at {}", redact(url));
    match attempt {
        Err(_) => Err(Error::Config(format!(
            "{what} did not answer within {REDIS_CONNECT_TIMEOUT:?}"
        ))),
        Ok(Err(e)) => Err(Error::Config(format!("{what}: {e}"))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// The CA bundle a `--…-ca-file` flag names, checked; `None` without the flag.
fn ca_bundle(
    flag: flags::Flag,
    path: &Option<std::path::PathBuf>,
) -> Result<Option<wscluster_runtime::ca::CaBundle>> {
    let Some(path) = path else { return Ok(None) };
    wscluster_runtime::ca::CaBundle::load(&flag.dashed(), path)
        .map(Some)
        .map_err(|e| Error::Config(e.to_string()))
}

/// Hides a password in a URL for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

fn retention(config: &Config) -> Retention {
    Retention {
        max_len: config.mailbox_max_len,
        ttl: Duration::from_secs(config.mailbox_ttl_seconds),
    }
}

type Ack = Option<Box<dyn Fn(u64) + Send + Sync>>;

/// The ring source the configuration names: the ring stream (`--ring-url`, acking each
/// applied version; with `--ring-file` beside it as the fallback), a watched ring file, or
/// standalone.
fn ring_source(
    config: &Config,
    member: &str,
    shutdown: CancellationToken,
) -> Result<(RingView, Ack)> {
    let source = config
        .ring
        .source()
        .map_err(|e| Error::Config(process::chain(&e)))?;
    match source {
        Some(RingSource::Stream {
            url,
            token,
            fallback,
        }) => {
            let subscription = Arc::new(Subscription::spawn(
                SubscriberConfig {
                    base_url: url,
                    cluster_id: config.cluster_id.clone(),
                    token,
                    kind: SubscriberKind::Node,
                    subscriber_id: member.to_owned(),
                },
                shutdown.clone(),
            ));
            let rings = match fallback {
                // The stream is authoritative; the file is what a cold start uses meanwhile.
                Some(path) => {
                    let file = watch_ring_file(path, shutdown.clone());
                    let cluster = config.cluster_id.clone();
                    merge_rings(cluster, subscription.rings(), file, shutdown).rings
                }
                None => subscription.rings(),
            };
            let ack: Ack = Some(Box::new(move |v| subscription.ack(v)));
            Ok((RingView::Watched(rings), ack))
        }
        Some(RingSource::File(path)) => {
            Ok((RingView::Watched(watch_ring_file(path, shutdown)), None))
        }
        None => Ok((RingView::Standalone, None)),
    }
}

/// Runs a node with the backends its configuration names until `shutdown`, then drains. The
/// public port is `listener`; the admin port is bound at `--admin-listen`.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    let background = CancellationToken::new();
    let backends = Backends::from_config(&config, background.clone()).await?;
    let admin = TcpListener::bind(config.admin_listen).await?;
    let result = run_with(config, backends, Listeners::new(listener, admin), shutdown).await;
    background.cancel();
    result
}

/// The node's two listeners: the public port (upgrades, the server API) and the admin port
/// (health, readiness, metrics, counts, presence).
#[derive(Debug)]
pub struct Listeners {
    /// `--listen`.
    pub public: TcpListener,
    /// `--admin-listen`.
    pub admin: TcpListener,
}

impl Listeners {
    /// The two listeners.
    pub fn new(public: TcpListener, admin: TcpListener) -> Listeners {
        Listeners { public, admin }
    }

    /// Binds `--listen` and `--admin-listen`.
    async fn bind(config: &Config) -> Result<Listeners, ProcessError> {
        let bind = |addr: SocketAddr| {
            wscluster_runtime::serve::bind(addr)
                .map_err(|source| ProcessError::Bind { addr, source })
        };
        Ok(Listeners {
            public: bind(config.listen)?,
            admin: bind(config.admin_listen)?,
        })
    }

    /// `listening on <public> admin=<admin>`.
    fn announcement(&self) -> std::io::Result<Announcement> {
        Ok(Announcement::new(self.public.local_addr()?).with("admin", self.admin.local_addr()?))
    }
}

/// The proxy secret and API keys the configuration names, read once.
fn open_trust(config: &Config) -> Result<Trust> {
    Trust::open(
        config.proxy_secret_file.as_deref(),
        config.api_keys_file.as_deref(),
    )
    .map_err(|e| Error::Config(e.to_string()))
}

/// Why the node process stopped with an error ([`main`]).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The flags or the backends they name are unusable (the error says which).
    #[error(transparent)]
    Config(Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The address line could not be written to stdout.
    #[error("cannot announce the address on stdout")]
    Announce(#[source] std::io::Error),
    /// The node failed while running.
    #[error("node failed")]
    Run(#[source] Error),
}

/// The whole `wscluster-node` process from parsed flags (also `wscluster-operator node`):
/// logging, SIGTERM/SIGINT, the backends, the listener, `listening on <addr>` as the first line
/// of stdout, the node until the signal, and the drain. Shutdown must finish within the grace
/// period plus five seconds; any failure is one `error: …` line on stderr and exit code 1.
pub fn main(config: Config) -> ExitCode {
    let spec = ProcessSpec {
        name: "wscluster-node",
        log: config.log,
        worker_threads: None,
        hard_deadline: config.grace_period() + HARD_DEADLINE_EXTRA,
    };
    process::run(spec, |shutdown| run_process(config, shutdown))
}

/// [`main`]'s work: backends first (a wrong token or an unreachable Redis fails before the
/// address is announced), then bind, announce and serve.
async fn run_process(config: Config, shutdown: CancellationToken) -> Result<(), ProcessError> {
    config.validate().map_err(ProcessError::Config)?;
    let background = CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    let trust = open_trust(&config).map_err(ProcessError::Config)?;
    let backends = Backends::from_config(&config, background)
        .await
        .map_err(ProcessError::Config)?;
    let listeners = Listeners::bind(&config).await?;
    listeners
        .announcement()
        .and_then(|a| a.print())
        .map_err(ProcessError::Announce)?;
    serve_node(config, backends, trust, listeners, shutdown)
        .await
        .map_err(ProcessError::Run)
}

/// Runs a node on the given backends until `shutdown`, then drains: refuse new work, send every
/// session a `drain` reset and close it, wait for them up to `--grace-period-seconds`.
pub async fn run_with(
    config: Config,
    backends: Backends,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let trust = open_trust(&config)?;
    serve_node(config, backends, trust, listeners, shutdown).await
}

/// [`run_with`] once the secrets are read.
async fn serve_node(
    config: Config,
    backends: Backends,
    trust: Trust,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<()> {
    let grace = config.grace_period();
    // 1. The shared state, and the bus events and ring acks it does not hold.
    let (state, bus_events, ack) = node_state(config, backends, &shutdown);
    // 2. Background work, stopped after the drain.
    let background = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(forward_bus_events(
        Arc::clone(&state),
        bus_events,
        background.clone(),
    ));
    tracker.spawn(refresh_presence(Arc::clone(&state), background.clone()));
    trust.watch(None, &tracker, &background);
    tracker.spawn(serve_admin(
        Arc::clone(&state),
        listeners.admin,
        background.clone(),
    ));
    if let RingView::Watched(rings) = state.ring.clone() {
        tracker.spawn(follow_ring(
            Arc::clone(&state),
            rings,
            ack,
            background.clone(),
        ));
    }
    // 3. HTTP until the signal; at the signal the listener stops accepting.
    tracing::info!(id = %state.id, cluster = %state.config.cluster_id, "node serving");
    let edge = Arc::new(Edge::new(Arc::clone(&state), trust));
    let http = tokio::spawn(serve_http(edge, listeners.public, shutdown.clone()));
    shutdown.cancelled().await;
    // 4. Drain the sessions, then give HTTP and the per-request tasks a moment to finish.
    drain_sessions(&state, grace).await;
    state.tasks.close();
    let _ = tokio::time::timeout(HTTP_DRAIN, async {
        let _ = http.await;
        state.tasks.wait().await;
    })
    .await;
    // 5. Stop the background work.
    background.cancel();
    tracker.close();
    let _ = tokio::time::timeout(HTTP_DRAIN, tracker.wait()).await;
    tracing::info!("node stopped");
    Ok(())
}

/// The state every request and session shares, built from the backends; returns the parts of
/// the backends the state does not keep (the bus events and the ring ack).
fn node_state(
    config: Config,
    backends: Backends,
    shutdown: &CancellationToken,
) -> (Arc<NodeState>, mpsc::Receiver<BusEvent>, Ack) {
    let Backends {
        mailbox,
        presence,
        bus,
        bus_events,
        ring,
        ack,
    } = backends;
    let state = NodeState::new(config, mailbox, presence, bus, ring, shutdown.clone());
    (Arc::new(state), bus_events, ack)
}

/// The node's public listener: at most `--max-http-connections` HTTP connections at once (an
/// upgraded session no longer holds one; sessions are capped by `--max-connections`), the
/// header-read timeout, upgrades; at shutdown in-flight requests get the grace period plus
/// [`HTTP_DRAIN`].
async fn serve_http(edge: Arc<Edge>, listener: TcpListener, shutdown: CancellationToken) {
    let options = ServeOptions {
        max_connections: usize::try_from(edge.state.config.max_http_connections)
            .unwrap_or(usize::MAX),
        header_read_timeout: HEADER_READ_TIMEOUT,
        grace: edge.state.config.grace_period() + HTTP_DRAIN,
        ..ServeOptions::new("node")
    };
    let handler = move |req| crate::http::handle(Arc::clone(&edge), req);
    serve(listener, options, handler, shutdown).await;
}

/// The admin listener: health, readiness (503 while draining), metrics, counts, presence;
/// served until the drain is over, so probes see it. Few connections (probes and scrapes).
async fn serve_admin(state: Arc<NodeState>, listener: TcpListener, stop: CancellationToken) {
    let options = ServeOptions {
        max_connections: ADMIN_MAX_CONNECTIONS,
        header_read_timeout: HEADER_READ_TIMEOUT,
        ..ServeOptions::new("node-admin")
    };
    let handler = move |req| crate::http::handle_admin(Arc::clone(&state), req);
    serve(listener, options, handler, stop).await;
}

/// Sends every session a `drain` reset and waits for them to close, up to `grace`.
async fn drain_sessions(state: &NodeState, grace: Duration) {
    tracing::info!(sessions = state.registry.count(), ?grace, "draining");
    state.drain();
    state.sessions.close();
    if tokio::time::timeout(grace, state.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = state.registry.count(),
            "grace period over; closing the rest"
        );
    }
}

/// Bus events → local sessions, until `stop` or the bus ends.
async fn forward_bus_events(
    state: Arc<NodeState>,
    mut events: mpsc::Receiver<BusEvent>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Some(event) => state.on_bus_event(event),
            None => return,
        }
    }
}

/// Refreshes the presence of every live session every third of the presence TTL.
async fn refresh_presence(state: Arc<NodeState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.presence_ttl() / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let live = state.registry.presence_tags();
        if let Err(e) = state.presence.refresh(&live).await {
            tracing::warn!(error = %e, "presence refresh failed");
            state.metrics.error(e.metric_label());
        }
    }
}

/// Each applied ring: checked against `--cluster-id`, gauged, acked, logged.
async fn follow_ring(
    state: Arc<NodeState>,
    mut rings: watch::Receiver<Option<Arc<Ring>>>,
    ack: Ack,
    stop: CancellationToken,
) {
    loop {
        if let Some(ring) = rings.borrow_and_update().clone() {
            ring_applied(&state, &ring, ack.as_deref());
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = rings.changed() => if changed.is_err() { return },
        }
    }
}

fn ring_applied(state: &NodeState, ring: &Ring, ack: Option<&(dyn Fn(u64) + Send + Sync)>) {
    let version = ring.version();
    if ring.snapshot().cluster_id != state.config.cluster_id {
        tracing::warn!(ring_cluster = %ring.snapshot().cluster_id, cluster = %state.config.cluster_id, "the ring names another cluster than --cluster-id");
        state.metrics.error("ring-cluster-mismatch");
    }
    state.metrics.ring_version.set(version as i64);
    if let Some(ack) = ack {
        ack(version);
    }
    let me = ring.members().iter().position(|m| *m.id == *state.id);
    let draining = me.is_some_and(|i| ring.members()[i].state == MemberState::Draining);
    state.metrics.member_draining.set(i64::from(draining));
    let owns_slots = me.map(|i| ring.slots_owned(i));
    tracing::info!(version, owns_slots, "ring applied");
}

#[cfg(test)]
mod tests {
    use wscluster_ring::{Member, RingSnapshot};

    use super::*;
    use crate::mailbox::Retention;

    fn state() -> NodeState {
        NodeState::new(
            Config::for_tests("n-0"),
            Arc::new(MemoryMailbox::new(Retention {
                max_len: 10,
                ttl: Duration::from_secs(60),
            })),
            Arc::new(MemoryPresence::new(Duration::from_secs(60))),
            Arc::new(MemoryBus::new()),
            RingView::Standalone,
            CancellationToken::new(),
        )
    }

    fn ring(version: u64, me: Member) -> Ring {
        let other = Member::active("n-1", "127.0.0.1:2");
        let snapshot = RingSnapshot::new("default/chat", version, vec![me, other]);
        Ring::build(snapshot).expect("a valid ring")
    }

    #[test]
    fn the_draining_gauge_follows_this_nodes_state_in_the_applied_ring() {
        let state = state();
        let me = Member::active("n-0", "127.0.0.1:1");
        ring_applied(&state, &ring(1, me.clone()), None);
        assert_eq!(state.metrics.member_draining.get(), 0);
        ring_applied(&state, &ring(2, me.clone().draining()), None);
        assert_eq!(state.metrics.member_draining.get(), 1);
        assert_eq!(state.metrics.ring_version.get(), 2);
        ring_applied(&state, &ring(3, me), None);
        assert_eq!(state.metrics.member_draining.get(), 0);
    }
}
