//! The node's shared state and the operations the HTTP API, the bus and shutdown perform on it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wscluster_ring::KeyHash;
use wscluster_ring::contract::bus::{
    BroadcastEvent, MAX_RESET_KEYS_PER_EVENT, MAX_RETRY_AFTER_MS, ResetEvent,
};
use wscluster_ring::contract::{ClientMessage, MessageKind, ResetFrame, ResetReason, validate_key};

use crate::bus::{Bus, BusEvent};
use crate::config::Config;
use crate::delivery::{
    Admission, BUS, BroadcastReceipt, DeliveryError, MAILBOX, PRESENCE, Presence, Refusal,
    SendReceipt,
};
use crate::error::Result;
use crate::mailbox::{Mailbox, MailboxPage};
use crate::metrics::Metrics;
use crate::ownership::{Ownership, RingView};
use crate::presence::Presence as PresenceStore;
use crate::registry::{Close, Handle, Outbound, Registered, Registry, deliver_to};

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

/// How long a reset event naming a newer ring than the node's waits for that ring before the
/// node checks the event's keys against the ring it has: a few ring-stream round trips.
const RESET_RING_CATCH_UP: Duration = Duration::from_secs(2);

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
        self.spawn_send(user, message, from, ()).await
    }

    /// [`NodeState::send`] in a task of its own, which runs to completion even if the caller
    /// goes away, so an appended message is never left undelivered to a live session while a
    /// later one is. `guard` lives as long as the work (the server API's in-flight permit: a
    /// caller that hangs up does not free a place while its send still runs). One task per
    /// send, not one for the request and another for the store.
    pub fn spawn_send<G: Send + 'static>(
        self: &Arc<Self>,
        user: String,
        message: String,
        from: Option<String>,
        guard: G,
    ) -> impl std::future::Future<Output = Result<SendReceipt, DeliveryError>> + use<G> {
        let state = Arc::clone(self);
        let job = self.tasks.spawn(async move {
            let _guard = guard;
            state.send_to_user(user, message, from).await
        });
        async move {
            match job.await {
                Ok(result) => result.map_err(|e| DeliveryError::unavailable(MAILBOX, e)),
                Err(e) => Err(DeliveryError::unavailable(
                    MAILBOX,
                    format!("send task failed: {e}"),
                )),
            }
        }
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
            .map_err(|e| DeliveryError::unavailable(BUS, e))?;
        Ok(BroadcastReceipt { id: event.id })
    }

    /// Whether `user` is connected, where, and with how many sessions.
    pub async fn presence(&self, user: &str) -> Result<Presence, DeliveryError> {
        let entry = self
            .presence
            .get(user)
            .await
            .map_err(|e| DeliveryError::unavailable(PRESENCE, e))?;
        let here = self.registry.sessions_of(user);
        Ok(Presence {
            online: entry.is_some() || here > 0,
            node: entry
                .map(|e| e.node)
                .or_else(|| (here > 0).then(|| self.id.to_string())),
            sessions: here as u64,
        })
    }

    /// Whether a new session of `key` may open here (decided before the upgrade is answered,
    /// and again, atomically, when the session registers): within `--sessions-per-key`, or over
    /// it under `--session-policy replace-oldest`.
    pub fn admit(&self, key: &str) -> Result<Admission, Refusal> {
        self.config
            .session_limit()
            .admit(self.registry.sessions_of(key))
    }

    /// Registers a session of `key` and reads the first page of its mailbox (entries after
    /// `after`, at most `limit`) under the key's send stripe, so every message is either in the
    /// page (appended before) or queued to the session (appended after). Refused when the key
    /// is over its cap under the `refuse` policy (another session won the race since
    /// [`NodeState::admit`]). If the read fails the session is unregistered again before the
    /// stripe is released (it will close with 4005).
    pub async fn open_session(
        &self,
        key: &Arc<str>,
        handle: Handle,
        after: u64,
        limit: usize,
    ) -> Result<(Registered, Result<MailboxPage>), Refusal> {
        let _order = self.stripe(key).lock().await;
        let conn = handle.conn;
        let registered = self
            .registry
            .insert(key.clone(), handle, self.config.session_limit())?;
        let page = self.mailbox.read(key, after, limit).await;
        if page.is_err() {
            // It closes with 4005 at once: no send may count it as a live session meanwhile.
            self.registry.remove(key, conn);
        }
        Ok((registered, page))
    }

    /// The send stripe of `key`.
    fn stripe(&self, key: &str) -> &tokio::sync::Mutex<()> {
        &self.stripes[(KeyHash::of(key).0 as usize) % SEND_STRIPES]
    }

    /// A client message as JSON text; `position` is a `message`'s (epoch, offset).
    pub fn client_message(
        &self,
        kind: MessageKind,
        content: String,
        timestamp: u64,
        position: Option<(&str, u64)>,
        from: Option<String>,
    ) -> Utf8Bytes {
        let msg = ClientMessage {
            kind,
            content,
            server: self.id.to_string(),
            server_user_count: self.registry.count() as u64,
            timestamp,
            offset: position.map(|(_, offset)| offset),
            epoch: position.map(|(epoch, _)| epoch.to_owned()),
            from,
        };
        // ClientMessage has only strings and integers: serialisation cannot fail.
        Utf8Bytes::from(serde_json::to_string(&msg).unwrap_or_default())
    }

    /// Appends a message to `user`'s mailbox and queues it to every session of the user here
    /// (the body of [`NodeState::spawn_send`]'s task).
    async fn send_to_user(
        &self,
        user: String,
        content: String,
        from: Option<String>,
    ) -> Result<SendReceipt> {
        let _order = self.stripe(&user).lock().await;
        let timestamp = now_ms();
        let started = std::time::Instant::now();
        let stored = self
            .mailbox
            .append(&user, &content, from.as_deref(), timestamp)
            .await?;
        self.metrics
            .mailbox_append_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.messages_appended.inc();
        let position = Some((&*stored.epoch, stored.offset));
        let text = self.client_message(MessageKind::Message, content, timestamp, position, from);
        let delivery = self.registry.deliver(
            &user,
            Outbound {
                position: Some((stored.epoch.clone(), stored.offset)),
                text,
                kind: "message",
            },
        );
        Ok(SendReceipt {
            stored: true,
            delivered: delivery.queued > 0,
            sessions: delivery.queued as u64,
            epoch: stored.epoch.to_string(),
            offset: stored.offset,
        })
    }

    /// Handles one event from the bus. A reset naming a newer ring than the node's is checked
    /// once that ring arrives (or [`RESET_RING_CATCH_UP`] passed), in the background, so the
    /// events behind it are not held up.
    pub fn on_bus_event(self: &Arc<Self>, event: BusEvent) {
        match event {
            BusEvent::Broadcast(b) => self.broadcast_local(b),
            BusEvent::Reset(r) if r.ring_version > self.ring.version() && self.ring.ready() => {
                let state = Arc::clone(self);
                self.tasks.spawn(async move {
                    state
                        .ring
                        .wait_for_version(r.ring_version, RESET_RING_CATCH_UP)
                        .await;
                    state.apply_reset(&r);
                });
            }
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
        let text = self.client_message(
            MessageKind::Broadcast,
            event.content,
            event.timestamp,
            None,
            None,
        );
        for (_, handle) in self.registry.snapshot() {
            // A full queue closes that session (counted when it closes); the others go on.
            let _ = deliver_to(
                &handle,
                Outbound {
                    position: None,
                    text: text.clone(),
                    kind: "broadcast",
                },
            );
        }
    }

    /// Resets the named local users with the contract's reset frame; returns how many sessions
    /// were closed. Checked against the ring: a key this node still owns under its ring is
    /// ignored (resetting it would only bring the user back here), and `retryAfterMs` is capped
    /// at [`MAX_RETRY_AFTER_MS`]. A standalone node has no ring to check and trusts the event.
    pub fn apply_reset(&self, event: &ResetEvent) -> usize {
        if event.member != *self.id {
            tracing::warn!(member = %event.member, "reset event for another member ignored");
            self.metrics.error("reset-wrong-member");
            return 0;
        }
        let retry = event.retry_after_ms.min(MAX_RETRY_AFTER_MS);
        let frame = Utf8Bytes::from(
            ResetFrame::new(event.reason, retry, Some(event.ring_version)).to_json(),
        );
        let (mut closed, mut still_owned) = (0, 0);
        for key in event.keys.iter().take(MAX_RESET_KEYS_PER_EVENT) {
            if validate_key(key).is_err() {
                self.metrics.error("reset-bad-key");
                continue;
            }
            if self.still_owns(key) {
                still_owned += 1;
                continue;
            }
            let close = Close {
                frame: Some(frame.clone()),
                code: event.reason.close_code(),
                reason: event.reason.as_str(),
            };
            closed += self.registry.close(key, close);
        }
        if still_owned > 0 {
            self.metrics.error("reset-key-still-owned");
        }
        tracing::info!(
            closed,
            still_owned,
            keys = event.keys.len(),
            reason = event.reason.as_str(),
            ring_version = event.ring_version,
            "reset event applied"
        );
        closed
    }

    /// Whether this node owns `key` under a ring it follows (never when standalone: there the
    /// reset event is the only word on ownership).
    fn still_owns(&self, key: &str) -> bool {
        matches!(self.ring, RingView::Watched(_))
            && matches!(self.ring.decide(&self.id, key), Ownership::Owned { .. })
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
