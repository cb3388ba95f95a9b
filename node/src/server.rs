//! Process wiring: the whole process from parsed flags ([`main`]), backends from the
//! configuration, the HTTP listener, background tasks, and the graceful shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wscluster_ring::Ring;
use wscluster_runtime::Announcement;
use wscluster_runtime::process::{self, ProcessSpec};
use wscluster_runtime::ring_args::RingSource;
use wscluster_runtime::serve::{ServeOptions, serve};

use crate::auth::Trust;
use crate::bus::{AmqpBus, AmqpSettings, Bus, BusEvent, MemoryBus};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::Edge;
use crate::mailbox::{Mailbox, MemoryMailbox, RedisMailbox, Retention};
use crate::ownership::RingView;
use crate::presence::{MemoryPresence, Presence, RedisPresence};
use crate::state::{Backends, NodeState};
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring_stream::{SubscriberConfig, Subscription, watch_ring_file};

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
        let (mailbox, presence) = match &config.redis_url {
            Some(url) => redis_backends(config, url).await?,
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
                let (bus, rx) = AmqpBus::start(settings, shutdown);
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

/// Mailbox and presence on Redis at `url`, which must answer within [`REDIS_CONNECT_TIMEOUT`].
async fn redis_backends(
    config: &Config,
    url: &str,
) -> Result<(Arc<dyn Mailbox>, Arc<dyn Presence>)> {
    let client = redis::Client::open(url)?;
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
    let con = tokio::time::timeout(
        REDIS_CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client, manager_config),
    )
    .await
    .map_err(|_| Error::Config(format!("redis at {} did not answer", redact(url))))??;
    let ns = format!("{}:{}:", config.redis_prefix, config.cluster_id);
    Ok((
        Arc::new(RedisMailbox::new(
            con.clone(),
            ns.clone(),
            retention(config),
        )),
        Arc::new(RedisPresence::new(con, ns, config.presence_ttl())),
    ))
}

/// Hides a password in a URL for logs.
fn redact(url: &str) -> String {
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
/// applied version), a watched ring file, or standalone.
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
        Some(RingSource::Stream { url, token }) => {
            let subscription = Arc::new(Subscription::spawn(
                SubscriberConfig {
                    base_url: url,
                    cluster_id: config.cluster_id.clone(),
                    token,
                    kind: SubscriberKind::Node,
                    subscriber_id: member.to_owned(),
                },
                shutdown,
            ));
            let rings = subscription.rings();
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
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProcessError::Bind { addr, source })
        };
        Ok(Listeners {
            public: bind(config.listen).await?,
            admin: bind(config.admin_listen).await?,
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
    let owns_slots = ring
        .members()
        .iter()
        .position(|m| *m.id == *state.id)
        .map(|i| ring.slots_owned(i));
    tracing::info!(version, owns_slots, "ring applied");
}
