//! The message bus: broadcasts to every node and reset events for one node.
//!
//! With `--amqp-url`, RabbitMQ: one durable topic exchange per cluster ([`exchange_name`]);
//! each node declares its own **durable** queue [`queue_name`] (cluster and member id) bound to
//! [`BROADCAST_ROUTING_KEY`] and `reset.{member id}`, with an `x-expires` of
//! [`QUEUE_EXPIRES_MS`]: events published while the node restarts or reconnects — even across
//! a broker restart — wait for it, and the queue of a node that is gone disappears on its own.
//! Messages are published persistent (delivery mode 2) on a channel in confirm mode, and a
//! publish returns only once the broker confirmed it (or fails within [`PUBLISH_TIMEOUT`]): a
//! 202 for a broadcast means the broker has it. Broadcast ids are remembered for a while so a
//! redelivered copy is dropped: each node delivers each broadcast once.
//!
//! Without it, an in-process bus ([`MemoryBus`]) that any number of nodes in one process share.
//!
//! A lost RabbitMQ connection is retried by the shared reconnect loop
//! ([`wscluster_runtime::amqp`]: backoff up to 100 ms doubling to 5 s, full jitter); sockets are
//! never touched by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use wscluster_ring::contract::bus::{
    BROADCAST_ROUTING_KEY, BroadcastEvent, ResetEvent, exchange_name, reset_routing_key,
};
use wscluster_runtime::amqp::{self, AmqpTarget, Link, SessionEnd};

use crate::error::{Error, Result};

/// How long RabbitMQ keeps a node's queue after its last consumer left: long enough to ride out
/// a pod restart, a broker restart or a network blip, short enough that a scaled-down node's
/// queue does not collect broadcasts for long.
pub const QUEUE_EXPIRES_MS: i32 = 10 * 60 * 1000;
/// Longest a publish may wait for the broker's confirm before it fails (the broadcast is then
/// answered 503, not 202). A local broker confirms a persistent message within milliseconds.
pub const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// AMQP delivery mode of a persistent message (written to disk by the broker).
const PERSISTENT: u8 = 2;

/// The durable queue of `member` in cluster `cluster_id`: `{exchange}.member.{member}`. (The
/// name differs from the exclusive, non-durable `{exchange}.node.{member}` queues of earlier
/// releases, which a redeclaration as durable would fail on; those expire on their own.)
pub fn queue_name(cluster_id: &str, member: &str) -> String {
    format!("{}.member.{member}", exchange_name(cluster_id))
}
/// Events buffered between the bus and the node before the bus waits (backpressure to the
/// broker through unacknowledged messages).
pub const EVENT_BUFFER: usize = 1024;
/// Unacknowledged deliveries RabbitMQ may push at once.
const PREFETCH: u16 = 256;

/// An event for this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// Deliver to every local user.
    Broadcast(BroadcastEvent),
    /// Reset these local users.
    Reset(ResetEvent),
}

/// Publishing side of the bus. Events for this node arrive on the receiver handed out when the
/// bus was started.
pub trait Bus: Send + Sync + 'static {
    /// Publishes a broadcast to every node of the cluster (this one included).
    fn publish_broadcast<'a>(&'a self, event: &'a BroadcastEvent) -> BoxFuture<'a, Result<()>>;
    /// Publishes a reset event for `event.member`.
    fn publish_reset<'a>(&'a self, event: &'a ResetEvent) -> BoxFuture<'a, Result<()>>;
    /// Whether the bus can publish right now.
    fn connected(&self) -> bool;
}

/// An in-process bus shared by every node in the process.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    /// Every event, to every attached node (each filters resets by member id).
    tx: broadcast::Sender<BusEvent>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new()
    }
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        MemoryBus { tx }
    }

    /// Attaches a node: returns the events meant for `member` until `shutdown`.
    pub fn attach(&self, member: &str, shutdown: CancellationToken) -> mpsc::Receiver<BusEvent> {
        let (out, rx) = mpsc::channel(EVENT_BUFFER);
        let mut sub = self.tx.subscribe();
        let member = member.to_owned();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = sub.recv() => e,
                };
                match event {
                    Ok(BusEvent::Reset(r)) if r.member != member => {}
                    Ok(e) => {
                        if out.send(e).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "in-memory bus lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        rx
    }
}

impl Bus for MemoryBus {
    fn publish_broadcast<'a>(&'a self, event: &'a BroadcastEvent) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _ = self.tx.send(BusEvent::Broadcast(event.clone()));
            Ok(())
        })
    }

    fn publish_reset<'a>(&'a self, event: &'a ResetEvent) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let _ = self.tx.send(BusEvent::Reset(event.clone()));
            Ok(())
        })
    }

    fn connected(&self) -> bool {
        true
    }
}

/// RabbitMQ bus (see the module docs).
pub struct AmqpBus {
    /// The exchange of this cluster.
    exchange: String,
    /// The channel to publish on while connected; replaced on reconnect.
    channel: tokio::sync::RwLock<Option<Channel>>,
    /// Whether the consumer is running.
    connected: AtomicBool,
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus")
            .field("exchange", &self.exchange)
            .field("connected", &self.connected.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What [`AmqpBus::start`] needs.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Cluster id; names the exchange.
    pub cluster_id: String,
    /// This node's member id; names its queue and reset routing key.
    pub member: String,
}

impl AmqpSettings {
    /// The connection name shown by `rabbitmqctl list_connections name client_properties`.
    pub fn connection_name(&self) -> String {
        format!("wscluster-node {} {}", self.cluster_id, self.member)
    }

    /// The node's queue name ([`queue_name`]).
    pub fn queue_name(&self) -> String {
        queue_name(&self.cluster_id, &self.member)
    }
}

impl AmqpBus {
    /// Starts the connection loop in the background and returns the bus and this node's events.
    /// It connects (trusting `ca` besides the platform roots for `amqps://`), declares, consumes,
    /// and on any loss reconnects with backoff until `shutdown`.
    pub fn start(
        settings: AmqpSettings,
        ca: Option<wscluster_runtime::ca::CaBundle>,
        shutdown: CancellationToken,
    ) -> (Arc<AmqpBus>, mpsc::Receiver<BusEvent>) {
        let bus = Arc::new(AmqpBus {
            exchange: exchange_name(&settings.cluster_id),
            channel: tokio::sync::RwLock::new(None),
            connected: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let target = AmqpTarget {
            url: settings.url.clone(),
            ca,
            connection_name: settings.connection_name(),
            exchange: bus.exchange.clone(),
        };
        let mut session = Consumer {
            bus: Arc::clone(&bus),
            settings,
            tx,
        };
        tokio::spawn(async move {
            amqp::keep_connected(&target, &mut session, &shutdown).await;
            session.bus.disconnected().await;
            if let Some(channel) = session.bus.channel.write().await.take() {
                let _ = channel.close(200, "node shutting down".into()).await;
            }
        });
        (bus, rx)
    }

    /// Marks the bus unusable until the next session publishes a channel.
    async fn disconnected(&self) {
        self.connected.store(false, Ordering::SeqCst);
        *self.channel.write().await = None;
    }

    /// Publishes persistent on the confirm-mode channel; returns once the broker confirmed.
    async fn publish(&self, routing_key: &str, payload: Vec<u8>) -> Result<()> {
        let guard = self.channel.read().await;
        let channel = guard.as_ref().ok_or(Error::BusUnavailable)?;
        let confirmed = async {
            channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(PERSISTENT),
                )
                .await?
                .await
        };
        let confirmation = tokio::time::timeout(PUBLISH_TIMEOUT, confirmed)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "the broker did not confirm within {PUBLISH_TIMEOUT:?}"
                ))
            })??;
        match confirmation {
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) => Err(Error::Protocol("the broker refused the message".into())),
            Confirmation::NotRequested => Err(Error::Protocol(
                "the publish channel is not in confirm mode".into(),
            )),
        }
    }
}

/// One connection's life for [`AmqpBus`]: declare the node's queue, consume into the node,
/// publish on the link's channel.
struct Consumer {
    /// The bus whose channel and state the session keeps current.
    bus: Arc<AmqpBus>,
    /// The node's identity, for the queue and routing keys.
    settings: AmqpSettings,
    /// Where this node's events go.
    tx: mpsc::Sender<BusEvent>,
}

impl amqp::Session for Consumer {
    async fn run(&mut self, link: Link) -> SessionEnd {
        let end = match self.consume(link).await {
            Ok(()) => SessionEnd::Stop,
            Err(e) => SessionEnd::Lost(e.to_string()),
        };
        self.bus.disconnected().await;
        end
    }
}

impl Consumer {
    /// Declares and binds the queue, then forwards deliveries until the connection fails
    /// (`Err`) or the node stops reading (`Ok`).
    async fn consume(&self, link: Link) -> Result<()> {
        let consume = link.connection.create_channel().await?;
        let queue = self.settings.queue_name();
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(QUEUE_EXPIRES_MS));
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        consume
            .queue_declare(queue.as_str().into(), durable, args)
            .await?;
        for key in [
            BROADCAST_ROUTING_KEY.to_owned(),
            reset_routing_key(&self.settings.member),
        ] {
            consume
                .queue_bind(
                    queue.as_str().into(),
                    self.bus.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        consume
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = consume
            .basic_consume(
                queue.as_str().into(),
                format!("wscluster-node-{}", self.settings.member)
                    .as_str()
                    .into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        link.channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *self.bus.channel.write().await = Some(link.channel);
        self.bus.connected.store(true, Ordering::SeqCst);
        tracing::info!(exchange = %self.bus.exchange, %queue, "consuming bus events");
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            match parse_delivery(delivery.routing_key.as_str(), &delivery.data) {
                Ok(event) => {
                    if self.tx.send(event).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, routing_key = %delivery.routing_key, "dropping malformed bus message")
                }
            }
            delivery.ack(BasicAckOptions::default()).await?;
        }
        Err(Error::Protocol("the broker ended the consumer".into()))
    }
}

/// Turns a delivery into an event; the routing key decides the type.
pub fn parse_delivery(routing_key: &str, data: &[u8]) -> Result<BusEvent> {
    if routing_key == BROADCAST_ROUTING_KEY {
        Ok(BusEvent::Broadcast(serde_json::from_slice(data)?))
    } else if routing_key.starts_with("reset.") {
        Ok(BusEvent::Reset(serde_json::from_slice(data)?))
    } else {
        Err(Error::Protocol(format!(
            "unexpected routing key {routing_key:?}"
        )))
    }
}

impl Bus for AmqpBus {
    fn publish_broadcast<'a>(&'a self, event: &'a BroadcastEvent) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.publish(BROADCAST_ROUTING_KEY, serde_json::to_vec(event)?)
                .await
        })
    }

    fn publish_reset<'a>(&'a self, event: &'a ResetEvent) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.publish(
                &reset_routing_key(&event.member),
                serde_json::to_vec(event)?,
            )
            .await
        })
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wscluster_ring::contract::ResetReason;

    #[tokio::test]
    async fn memory_bus_delivers_resets_only_to_the_named_member() {
        let bus = MemoryBus::new();
        let stop = CancellationToken::new();
        let mut a = bus.attach("a", stop.clone());
        let mut b = bus.attach("b", stop.clone());
        let reset = ResetEvent {
            member: "b".into(),
            ring_version: 2,
            reason: ResetReason::Rebalance,
            keys: vec!["alice".into()],
            retry_after_ms: 10,
        };
        bus.publish_reset(&reset).await.expect("publish");
        let bc = BroadcastEvent {
            id: "x".into(),
            origin: "a".into(),
            content: "hi".into(),
            timestamp: 1,
        };
        bus.publish_broadcast(&bc).await.expect("publish");
        assert_eq!(a.recv().await, Some(BusEvent::Broadcast(bc.clone())));
        assert_eq!(b.recv().await, Some(BusEvent::Reset(reset)));
        assert_eq!(b.recv().await, Some(BusEvent::Broadcast(bc)));
        stop.cancel();
    }

    #[test]
    fn deliveries_with_unknown_routing_keys_or_bad_json_are_refused() {
        assert!(parse_delivery("gossip", b"{}").is_err());
        assert!(parse_delivery("broadcast", b"{").is_err());
        assert!(parse_delivery("reset.n", b"{\"member\":1}").is_err());
    }
}
