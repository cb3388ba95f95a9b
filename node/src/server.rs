//! Process wiring: backends from the configuration, the accept loop, background tasks, and the
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{AmqpBus, AmqpSettings, Bus, MemoryBus};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::mailbox::{Mailbox, MemoryMailbox, RedisMailbox, Retention};
use crate::ownership::RingView;
use crate::presence::{MemoryPresence, Presence, RedisPresence};
use crate::state::{Backends, NodeState};
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring_stream::{SubscriberConfig, Subscription, watch_ring_file};

/// How long an HTTP client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (for example out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
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
        let (mailbox, presence): (Arc<dyn Mailbox>, Arc<dyn Presence>) = match &config.redis_url {
            Some(url) => {
                let client = redis::Client::open(url.as_str())?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
                    .set_response_timeout(Some(REDIS_CONNECT_TIMEOUT));
                let con = tokio::time::timeout(
                    REDIS_CONNECT_TIMEOUT,
                    ConnectionManager::new_with_config(client, manager_config),
                )
                .await
                .map_err(|_| Error::Config(format!("redis at {} did not answer", redact(url))))??;
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
            None => (
                Arc::new(MemoryMailbox::new(retention(config))),
                Arc::new(MemoryPresence::new(config.presence_ttl())),
            ),
        };
        let (bus, bus_events): (Arc<dyn Bus>, _) = match &config.amqp_url {
            Some(url) => {
                let (bus, rx) = AmqpBus::start(
                    AmqpSettings {
                        url: url.clone(),
                        cluster_id: config.cluster_id.clone(),
                        member: member.clone(),
                    },
                    shutdown,
                );
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
    if let Some(url) = &config.ring_url {
        let token = match (&config.ring_token, &config.ring_token_file) {
            (Some(t), _) if !t.trim().is_empty() => t.trim().to_owned(),
            (_, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("--ring-token-file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
            _ => {
                return Err(Error::Config(
                    "--ring-url needs --ring-token-file or --ring-token".into(),
                ));
            }
        };
        if token.is_empty() {
            return Err(Error::Config("the ring token is empty".into()));
        }
        let subscription = Arc::new(Subscription::spawn(
            SubscriberConfig {
                base_url: url.clone(),
                cluster_id: config.cluster_id.clone(),
                token,
                kind: SubscriberKind::Node,
                subscriber_id: member.to_owned(),
            },
            shutdown,
        ));
        let rings = subscription.rings();
        let ack: Ack = Some(Box::new(move |v| subscription.ack(v)));
        return Ok((RingView::Watched(rings), ack));
    }
    if let Some(path) = &config.ring_file {
        return Ok((
            RingView::Watched(watch_ring_file(path.clone(), shutdown)),
            None,
        ));
    }
    Ok((RingView::Standalone, None))
}

/// Runs a node with the backends its configuration names until `shutdown`, then drains.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    let background = CancellationToken::new();
    let backends = Backends::from_config(&config, background.clone()).await?;
    let result = run_with(config, backends, listener, shutdown).await;
    background.cancel();
    result
}

/// Runs a node on the given backends until `shutdown`, then drains: refuse new work, send every
/// session a `drain` reset and close it, wait for them up to `--grace-period-seconds`.
pub async fn run_with(
    config: Config,
    backends: Backends,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let grace = config.grace_period();
    let Backends {
        mailbox,
        presence,
        bus,
        mut bus_events,
        ring,
        ack,
    } = backends;
    let state = Arc::new(NodeState::new(
        config,
        mailbox,
        presence,
        bus,
        ring,
        shutdown.clone(),
    ));
    let background = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Bus events → local sessions.
    {
        let state = state.clone();
        let stop = background.clone();
        tracker.spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = bus_events.recv() => e,
                };
                match event {
                    Some(e) => state.on_bus_event(e),
                    None => return,
                }
            }
        });
    }
    // Presence refresh and gauges.
    {
        let state = state.clone();
        let stop = background.clone();
        let period = state.config.presence_ttl() / 3;
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let live: Vec<(String, String)> = state
                    .registry
                    .snapshot()
                    .into_iter()
                    .map(|(k, h)| (k.to_string(), h.conn_tag.to_string()))
                    .collect();
                if let Err(e) = state.presence.refresh(&live).await {
                    tracing::warn!(error = %e, "presence refresh failed");
                    state.metrics.error(e.metric_label());
                }
            }
        });
    }
    // Ring changes: log, gauge, ack.
    if let RingView::Watched(mut rx) = state.ring.clone() {
        let state = state.clone();
        let stop = background.clone();
        tracker.spawn(async move {
            loop {
                if let Some(ring) = rx.borrow_and_update().clone() {
                    let v = ring.version();
                    if ring.snapshot().cluster_id != state.config.cluster_id {
                        tracing::warn!(ring_cluster = %ring.snapshot().cluster_id, cluster = %state.config.cluster_id, "the ring names another cluster than --cluster-id");
                        state.metrics.error("ring-cluster-mismatch");
                    }
                    state.metrics.ring_version.set(v as i64);
                    if let Some(ack) = &ack {
                        ack(v);
                    }
                    tracing::info!(
                        version = v,
                        owns_slots = ring
                            .members()
                            .iter()
                            .position(|m| *m.id == *state.id)
                            .map(|i| ring.slots_owned(i)),
                        "ring applied"
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
    }

    tracing::info!(id = %state.id, cluster = %state.config.cluster_id, "node serving");
    let http = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let stop = shutdown.clone();
        http.spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(crate::http::handle(state, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
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
    http.close();
    state.tasks.close();
    let _ = tokio::time::timeout(HTTP_DRAIN, async {
        http.wait().await;
        state.tasks.wait().await;
    })
    .await;
    background.cancel();
    tracker.close();
    let _ = tokio::time::timeout(HTTP_DRAIN, tracker.wait()).await;
    tracing::info!("node stopped");
    Ok(())
}
