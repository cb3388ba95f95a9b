//! The node's shared state and the operations the HTTP API, the bus and shutdown perform on it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wscluster_ring::KeyHash;
use wscluster_ring::contract::bus::{BroadcastEvent, MAX_RESET_KEYS_PER_EVENT, ResetEvent};
use wscluster_ring::contract::{ClientMessage, MessageKind, ResetFrame, ResetReason, validate_key};

use crate::bus::{Bus, BusEvent};
use crate::config::Config;
use crate::delivery::{Admission, BroadcastReceipt, DeliveryError, Presence, Refusal, SendReceipt};
use crate::error::Result;
use crate::mailbox::Mailbox;
use crate::metrics::Metrics;
use crate::ownership::RingView;
use crate::presence::Presence as PresenceStore;
use crate::registry::{Close, Delivery, Outbound, Registry, deliver_to};

/// Per-user append+deliver critical sections are striped over this many async mutexes, so two
/// `/send`s for one user are appended and queued in the same order while different users
/// proceed in parallel.
const SEND_STRIPES: usize = 1024;
/// Broadcast ids remembered to drop redelivered copies.
const RECENT_BROADCASTS: usize = 4096;
/// Reset frames during a drain spread `retryAfterMs` over `[0, DRAIN_JITTER_MS)` by key hash, so
/// the clients of a draining node do not all reconnect in the same instant.
pub const DRAIN_JITTER_MS: u64 = 2_000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The backends a node runs on.
pub struct Backends {
    /// User mailboxes.
    pub mailbox: Arc<dyn Mailbox>,
    /// User presence.
    pub presence: Arc<dyn PresenceStore>,
    /// Publishing side of the bus.
    pub bus: Arc<dyn Bus>,
    /// Events for this node from the bus.
    pub bus_events: tokio::sync::mpsc::Receiver<BusEvent>,
    /// The ring in use.
    pub ring: RingView,
    /// Called with each ring version the node applies (the ring stream's ack).
    pub ack: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

/// Everything a request or a session needs.
pub struct NodeState {
    /// This node's member id.
    pub id: Arc<str>,
    /// The configuration it runs with.
    pub config: Config,
    /// Live sessions.
    pub registry: Registry,
    /// User mailboxes.
    pub mailbox: Arc<dyn Mailbox>,
    /// User presence.
    pub presence: Arc<dyn PresenceStore>,
    /// Bus publishing.
    pub bus: Arc<dyn Bus>,
    /// The ring in use.
    pub ring: RingView,
    /// Metrics.
    pub metrics: Metrics,
    /// Set once shutdown begins: upgrades are refused and `/readyz` fails.
    pub draining: AtomicBool,
    /// Per-user ordering of append+deliver.
    stripes: Box<[tokio::sync::Mutex<()>]>,
    /// Session tasks (they outlive their HTTP connection), awaited on shutdown.
    pub sessions: TaskTracker,
    /// Background work that must finish even if the request that started it goes away.
    pub tasks: TaskTracker,
    /// Connection ids.
    conn_seq: AtomicU64,
    /// Process start (ms), part of presence connection ids so a restart never reuses one.
    instance: u64,
    /// Caps concurrent sessions at `--max-connections`.
    pub conn_limit: Arc<Semaphore>,
    /// Recently seen broadcast ids (set + eviction order).
    recent_broadcasts: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Cancelled when the node shuts down (sessions watch it only through the drain).
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("id", &self.id)
            .field("sessions", &self.registry.count())
            .finish_non_exhaustive()
    }
}

/// The outcome of a `/send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// The message's offset in the user's mailbox.
    pub offset: u64,
    /// Whether it was queued to a live session here.
    pub delivered: bool,
}

impl NodeState {
    /// Builds the state from a configuration and its backends.
    pub fn new(
        config: Config,
        mailbox: Arc<dyn Mailbox>,
        presence: Arc<dyn PresenceStore>,
        bus: Arc<dyn Bus>,
        ring: RingView,
        shutdown: CancellationToken,
    ) -> Self {
        let max = usize::try_from(config.max_connections)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        NodeState {
            id: Arc::from(config.member_id()),
            conn_limit: Arc::new(Semaphore::new(max)),
            config,
            registry: Registry::new(),
            mailbox,
            presence,
            bus,
            ring,
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            stripes: (0..SEND_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            sessions: TaskTracker::new(),
            tasks: TaskTracker::new(),
            conn_seq: AtomicU64::new(0),
            instance: now_ms(),
            recent_broadcasts: Mutex::new((HashSet::new(), VecDeque::new())),
            shutdown,
        }
    }

    /// A new connection id and its presence tag.
    pub fn next_conn(&self) -> (u64, Arc<str>) {
        let conn = self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1;
        (
            conn,
            Arc::from(format!("{}:{}:{conn}", self.id, self.instance)),
        )
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sends `message` to `user`: stores it in the user's mailbox, then queues it to the user's
    /// live sessions here. Answers a receipt only once the message is stored; `from` is the
    /// sender's verified key in chat mode (never a sender named in a payload).
    pub async fn send(
        self: &Arc<Self>,
        user: String,
        message: String,
        from: Option<String>,
    ) -> Result<SendReceipt, DeliveryError> {
        // Chat senders are recorded from the next issue on; the receipt already has its shape.
        let _ = from;
        let outcome = self
            .send_to_user(user, message)
            .await
            .map_err(|e| DeliveryError::unavailable("mailbox", e))?;
        Ok(SendReceipt {
            stored: true,
            delivered: outcome.delivered,
            sessions: u64::from(outcome.delivered),
            epoch: String::new(),
            offset: outcome.offset,
        })
    }

    /// Broadcasts `message` to every connected user of the cluster through the bus; answers a
    /// receipt once the bus has it.
    pub async fn broadcast(&self, message: String) -> Result<BroadcastReceipt, DeliveryError> {
        let (conn, _) = self.next_conn();
        let event = BroadcastEvent {
            id: format!("{}-{}-{conn}", self.id, now_ms()),
            origin: self.id.to_string(),
            content: message,
            timestamp: now_ms(),
        };
        self.bus
            .publish_broadcast(&event)
            .await
            .map_err(|e| DeliveryError::unavailable("bus", e))?;
        Ok(BroadcastReceipt { id: event.id })
    }

    /// Whether `user` is connected, where, and with how many sessions.
    pub async fn presence(&self, user: &str) -> Result<Presence, DeliveryError> {
        let entry = self
            .presence
            .get(user)
            .await
            .map_err(|e| DeliveryError::unavailable("presence", e))?;
        let here = self.registry.contains(user);
        Ok(Presence {
            online: entry.is_some() || here,
            node: entry
                .map(|e| e.node)
                .or_else(|| here.then(|| self.id.to_string())),
            sessions: u64::from(here),
        })
    }

    /// Whether a new session of `key` may open here (decided before the upgrade is answered).
    pub fn admit(&self, key: &str) -> Result<Admission, Refusal> {
        // One session per key today: a new one replaces the old (4002) when it registers.
        Ok(if self.registry.contains(key) {
            Admission::ReplacesOldest
        } else {
            Admission::Admitted
        })
    }

    /// A client message as JSON text.
    pub fn client_message(
        &self,
        kind: MessageKind,
        content: String,
        timestamp: u64,
        offset: Option<u64>,
    ) -> Utf8Bytes {
        let msg = ClientMessage {
            kind,
            content,
            server: self.id.to_string(),
            server_user_count: self.registry.count() as u64,
            timestamp,
            offset,
            epoch: None,
            from: None,
        };
        // ClientMessage has only strings and integers: serialisation cannot fail.
        Utf8Bytes::from(serde_json::to_string(&msg).unwrap_or_default())
    }

    /// Appends a message to `user`'s mailbox and queues it to the user's session if it is here.
    /// Runs to completion even if the caller goes away, so an appended message is never left
    /// undelivered to a live session while a later one is.
    async fn send_to_user(self: &Arc<Self>, user: String, content: String) -> Result<SendOutcome> {
        let state = self.clone();
        let job = self.tasks.spawn(async move {
            let stripe = (KeyHash::of(&user).0 as usize) % SEND_STRIPES;
            let _order = state.stripes[stripe].lock().await;
            let timestamp = now_ms();
            let offset = state.mailbox.append(&user, &content, timestamp).await?;
            state.metrics.messages_appended.inc();
            let text = state.client_message(MessageKind::Message, content, timestamp, Some(offset));
            let delivered = state.registry.deliver(
                &user,
                Outbound {
                    offset: Some(offset),
                    text,
                    kind: "message",
                },
            );
            Ok(SendOutcome {
                offset,
                delivered: delivered == Delivery::Queued,
            })
        });
        match job.await {
            Ok(r) => r,
            Err(e) => Err(crate::Error::Protocol(format!("send task failed: {e}"))),
        }
    }

    /// Handles one event from the bus.
    pub fn on_bus_event(&self, event: BusEvent) {
        match event {
            BusEvent::Broadcast(b) => self.broadcast_local(b),
            BusEvent::Reset(r) => {
                self.apply_reset(&r);
            }
        }
    }

    /// Delivers a broadcast to every local session, once per broadcast id.
    pub fn broadcast_local(&self, event: BroadcastEvent) {
        {
            let mut recent = self
                .recent_broadcasts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (set, order) = &mut *recent;
            if !set.insert(event.id.clone()) {
                tracing::debug!(id = %event.id, "duplicate broadcast dropped");
                return;
            }
            order.push_back(event.id.clone());
            while order.len() > RECENT_BROADCASTS {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
        self.metrics.broadcasts.inc();
        let text =
            self.client_message(MessageKind::Broadcast, event.content, event.timestamp, None);
        for (_, handle) in self.registry.snapshot() {
            // A full queue closes that session (counted when it closes); the others go on.
            let _ = deliver_to(
                &handle,
                Outbound {
                    offset: None,
                    text: text.clone(),
                    kind: "broadcast",
                },
            );
        }
    }

    /// Resets the named local users with the contract's reset frame; returns how many were here.
    pub fn apply_reset(&self, event: &ResetEvent) -> usize {
        if event.member != *self.id {
            tracing::warn!(member = %event.member, "reset event for another member ignored");
            self.metrics.error("reset-wrong-member");
            return 0;
        }
        let frame = Utf8Bytes::from(
            ResetFrame::new(event.reason, event.retry_after_ms, Some(event.ring_version)).to_json(),
        );
        let mut closed = 0;
        for key in event.keys.iter().take(MAX_RESET_KEYS_PER_EVENT) {
            if validate_key(key).is_err() {
                self.metrics.error("reset-bad-key");
                continue;
            }
            let close = Close {
                frame: Some(frame.clone()),
                code: event.reason.close_code(),
                reason: event.reason.as_str(),
            };
            if self.registry.close(key, close) {
                closed += 1;
            }
        }
        tracing::info!(
            closed,
            keys = event.keys.len(),
            reason = event.reason.as_str(),
            ring_version = event.ring_version,
            "reset event applied"
        );
        closed
    }

    /// Begins the drain: refuse new sessions, send every session a `drain` reset and close it.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let ring_version = self.ring.current().map(|r| r.version());
        for (key, handle) in self.registry.snapshot() {
            let retry = KeyHash::of(&*key).0 % DRAIN_JITTER_MS;
            let frame = ResetFrame::new(ResetReason::Drain, retry, ring_version);
            let _ = handle.control.try_send(Close {
                frame: Some(Utf8Bytes::from(frame.to_json())),
                code: ResetReason::Drain.close_code(),
                reason: ResetReason::Drain.as_str(),
            });
        }
    }
}
