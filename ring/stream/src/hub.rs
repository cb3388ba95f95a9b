//! The hub side: the current ring per cluster, served as an NDJSON stream, and the acks.
//!
//! Per cluster the hub keeps a `tokio::sync::watch` of the current snapshot (with its stream
//! line serialised once), the cluster's bearer tokens (one per [`SubscriberKind`]), and what it
//! knows of each subscriber.
//!
//! Credentials per kind: a request proves its kind with the token it presents. A watch or an
//! ack that declares a kind its token does not prove answers 403, so a node (whose token is in
//! every node pod) can never acknowledge a ring as a proxy and release a drain. An unknown
//! cluster, a cluster without tokens and a wrong token all answer the same 401, so the hub
//! cannot be probed for the clusters it serves.
//! A watch stream only ever needs the newest snapshot, so a slow subscriber costs one slot, never
//! a queue: it skips the versions it was too slow to read.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use wscluster_ring::contract::percent_decode;
use wscluster_ring::contract::stream::{Ack, HEARTBEAT_INTERVAL_MS, StreamEvent, SubscriberKind};
use wscluster_ring::{RingError, RingSnapshot};

use wscluster_runtime::serve::ServeOptions;

use crate::BoxBody;

/// Largest ack body accepted, in bytes. An [`Ack`] is under 400 bytes with a 253-character id;
/// 4 KiB leaves room for whitespace and refuses anything else before parsing it.
const MAX_ACK_BODY_BYTES: usize = 4 << 10;
/// How long the hub remembers a subscriber after its last stream closed, so a restarting pod
/// keeps its applied version in [`RingHub::subscribers`] but departed pods do not pile up.
const FORGET_DISCONNECTED_AFTER: Duration = Duration::from_secs(5 * 60);
/// Most subscribers remembered per cluster. A cluster has one subscriber per proxy and node
/// pod; 10,000 is far above any real cluster and bounds what a token holder can make us store.
const MAX_SUBSCRIBERS_PER_CLUSTER: usize = 10_000;
/// Longest subscriber id, the same limit as a member id (a Kubernetes object name).
const MAX_SUBSCRIBER_ID_LEN: usize = 253;
/// Prefix of every path the hub owns.
const PATH_PREFIX: &str = "/v1/clusters/";

/// What the hub knows about one subscriber of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// The subscriber's id (its pod name).
    pub id: String,
    /// Proxy or node.
    pub kind: SubscriberKind,
    /// The last version it acknowledged; `None` before its first ack.
    pub applied_version: Option<u64>,
    /// Whether a watch stream of it is open now.
    pub connected: bool,
}

/// The ring authority's server state: per cluster the current snapshot, the token and the
/// subscribers. Share it as `Arc<RingHub>`; every method is cheap and never blocks on I/O.
#[derive(Debug)]
pub struct RingHub {
    /// The known clusters by id (`namespace/name`). A cluster becomes known through
    /// [`RingHub::set_token`] or [`RingHub::publish`].
    clusters: RwLock<HashMap<String, Arc<Cluster>>>,
    /// Interval between heartbeats on an idle stream.
    heartbeat: Duration,
}

/// The bearer tokens of one cluster, one per subscriber kind. `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KindTokens {
    /// What proxies present; only it may watch or acknowledge as [`SubscriberKind::Proxy`].
    pub proxy: Option<String>,
    /// What nodes present; only it may watch or acknowledge as [`SubscriberKind::Node`].
    pub node: Option<String>,
}

impl std::fmt::Debug for KindTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindTokens")
            .field("proxy", &self.proxy.as_ref().map(|_| "<set>"))
            .field("node", &self.node.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl KindTokens {
    /// Distinct tokens for proxies and nodes: the deployment shape.
    pub fn new(proxy: String, node: String) -> KindTokens {
        KindTokens {
            proxy: Some(proxy),
            node: Some(node),
        }
    }

    /// The kinds `presented` proves, compared in constant time against both tokens (both
    /// comparisons always run). Empty for a missing or wrong token.
    fn proven(&self, presented: Option<&str>) -> Proven {
        let Some(presented) = presented else {
            return Proven::default();
        };
        let check = |token: &Option<String>| {
            token.as_deref().is_some_and(|t| {
                wscluster_runtime::credentials::constant_time_eq(t.as_bytes(), presented.as_bytes())
            })
        };
        let proxy = check(&self.proxy);
        let node = check(&self.node);
        Proven { proxy, node }
    }
}

/// The subscriber kinds a presented token proves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Proven {
    /// It is the proxy token.
    proxy: bool,
    /// It is the node token.
    node: bool,
}

impl Proven {
    fn any(self) -> bool {
        self.proxy || self.node
    }

    fn allows(self, kind: SubscriberKind) -> bool {
        match kind {
            SubscriberKind::Proxy => self.proxy,
            SubscriberKind::Node => self.node,
        }
    }
}

/// One cluster's state.
#[derive(Debug)]
struct Cluster {
    /// The bearer tokens subscribers must present, per kind; a kind without one is refused.
    tokens: Mutex<KindTokens>,
    /// The current snapshot; watch streams subscribe to it.
    ring: watch::Sender<Option<Arc<Published>>>,
    /// Subscribers by id.
    subscribers: Mutex<HashMap<String, Subscriber>>,
    /// Cancelled when the cluster is removed, ending its streams.
    removed: CancellationToken,
}

/// A published snapshot with its stream line, serialised once for every subscriber.
#[derive(Debug)]
struct Published {
    /// The snapshot.
    snapshot: Arc<RingSnapshot>,
    /// `{"type":"snapshot",…}\n`.
    line: Bytes,
}

/// What the hub remembers of a subscriber.
#[derive(Debug)]
struct Subscriber {
    /// Its kind, as last declared.
    kind: SubscriberKind,
    /// Its last acknowledged version.
    applied_version: Option<u64>,
    /// How many of its watch streams are open (a reconnect may briefly overlap the old one).
    open_streams: u32,
    /// When it was last seen (stream closed or ack), to forget departed subscribers.
    last_seen: Instant,
}

/// The request extension [`serve`] adds so the streams it serves end at shutdown.
#[derive(Debug, Clone)]
struct StreamCloser(CancellationToken);

/// Which endpoint a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `…/ring/watch`.
    Watch,
    /// `…/ring/ack`.
    Ack,
    /// `…/ring`.
    Snapshot,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            tokens: Mutex::new(KindTokens::default()),
            ring: watch::Sender::new(None),
            subscribers: Mutex::new(HashMap::new()),
            removed: CancellationToken::new(),
        }
    }

    fn current(&self) -> Option<Arc<Published>> {
        self.ring.borrow().clone()
    }

    fn current_version(&self) -> u64 {
        self.ring
            .borrow()
            .as_ref()
            .map_or(0, |p| p.snapshot.version)
    }

    /// The kinds `presented` proves for this cluster.
    fn proven(&self, presented: Option<&str>) -> Proven {
        self.tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .proven(presented)
    }

    /// Runs `f` on the subscriber `id`, creating it if there is room. `None` when the cluster
    /// already remembers [`MAX_SUBSCRIBERS_PER_CLUSTER`] others.
    fn with_subscriber<R>(
        &self,
        id: &str,
        kind: SubscriberKind,
        f: impl FnOnce(&mut Subscriber) -> R,
    ) -> Option<R> {
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !subscribers.contains_key(id) {
            forget_departed(&mut subscribers, Instant::now());
            if subscribers.len() >= MAX_SUBSCRIBERS_PER_CLUSTER {
                return None;
            }
        }
        let entry = subscribers
            .entry(id.to_string())
            .or_insert_with(|| Subscriber {
                kind,
                applied_version: None,
                open_streams: 0,
                last_seen: Instant::now(),
            });
        entry.kind = kind;
        entry.last_seen = Instant::now();
        Some(f(entry))
    }
}

/// Drops subscribers whose streams closed more than [`FORGET_DISCONNECTED_AFTER`] ago.
fn forget_departed(subscribers: &mut HashMap<String, Subscriber>, now: Instant) {
    subscribers.retain(|_, s| {
        s.open_streams > 0 || now.duration_since(s.last_seen) < FORGET_DISCONNECTED_AFTER
    });
}

impl RingHub {
    /// An empty hub with the contract's heartbeat interval.
    pub fn new() -> Arc<RingHub> {
        RingHub::with_heartbeat(Duration::from_millis(HEARTBEAT_INTERVAL_MS))
    }

    /// An empty hub with another heartbeat interval (tests use a short one). Subscribers
    /// reconnect after [`SILENCE_TIMEOUT_MS`](wscluster_ring::contract::stream::SILENCE_TIMEOUT_MS)
    /// of silence, so the interval must stay well below it.
    pub fn with_heartbeat(heartbeat: Duration) -> Arc<RingHub> {
        Arc::new(RingHub {
            clusters: RwLock::new(HashMap::new()),
            heartbeat,
        })
    }

    fn cluster(&self, cluster_id: &str) -> Option<Arc<Cluster>> {
        let clusters = self.clusters.read().unwrap_or_else(PoisonError::into_inner);
        clusters.get(cluster_id).cloned()
    }

    fn cluster_or_insert(&self, cluster_id: &str) -> Arc<Cluster> {
        if let Some(cluster) = self.cluster(cluster_id) {
            return cluster;
        }
        let mut clusters = self
            .clusters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            clusters
                .entry(cluster_id.to_string())
                .or_insert_with(|| Arc::new(Cluster::new())),
        )
    }

    /// Sets (or replaces) the bearer tokens of a cluster, one per subscriber kind; the cluster
    /// becomes known to the hub. Open streams stay open; new requests need the new tokens.
    /// Until a kind has a token, every request as that kind answers 401.
    pub fn set_tokens(&self, cluster_id: &str, tokens: KindTokens) {
        let cluster = self.cluster_or_insert(cluster_id);
        *cluster
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tokens;
    }

    /// Sets one token for both kinds. The kind a subscriber declares is then not proven: use
    /// it only where every subscriber is equally trusted (single-process tests);
    /// deployments use [`RingHub::set_tokens`] with distinct tokens.
    pub fn set_token(&self, cluster_id: &str, token: String) {
        self.set_tokens(
            cluster_id,
            KindTokens {
                proxy: Some(token.clone()),
                node: Some(token),
            },
        );
    }

    /// Publishes a snapshot for its cluster (`snapshot.cluster_id`); open streams receive it at
    /// once. Refused, leaving the current one in place, unless it is valid
    /// ([`RingError::Invalid`]) and strictly newer ([`RingError::NotNewer`]).
    pub fn publish(&self, snapshot: RingSnapshot) -> Result<(), RingError> {
        snapshot.validate()?;
        let cluster = self.cluster_or_insert(&snapshot.cluster_id);
        let version = snapshot.version;
        let cluster_id = snapshot.cluster_id.clone();
        let snapshot = Arc::new(snapshot);
        let line = Bytes::from(
            StreamEvent::Snapshot {
                snapshot: RingSnapshot::clone(&snapshot),
            }
            .to_line(),
        );
        let mut refused = None;
        cluster.ring.send_if_modified(|current| {
            if let Some(current) = current {
                if current.snapshot.cluster_id != snapshot.cluster_id {
                    refused = Some(RingError::WrongCluster {
                        current: current.snapshot.cluster_id.clone(),
                        offered: snapshot.cluster_id.clone(),
                    });
                    return false;
                }
                if version <= current.snapshot.version {
                    refused = Some(RingError::NotNewer {
                        current: current.snapshot.version,
                        offered: version,
                    });
                    return false;
                }
            }
            *current = Some(Arc::new(Published { snapshot, line }));
            true
        });
        match refused {
            Some(error) => Err(error),
            None => {
                debug!(cluster = cluster_id, version, "ring published");
                Ok(())
            }
        }
    }

    /// The current snapshot of a cluster, `None` for an unknown cluster or before the first
    /// publish.
    pub fn current(&self, cluster_id: &str) -> Option<Arc<RingSnapshot>> {
        self.cluster(cluster_id)?
            .current()
            .map(|p| Arc::clone(&p.snapshot))
    }

    /// The subscribers of a cluster, sorted by id: connected ones and those disconnected for
    /// less than five minutes.
    pub fn subscribers(&self, cluster_id: &str) -> Vec<SubscriberInfo> {
        let Some(cluster) = self.cluster(cluster_id) else {
            return Vec::new();
        };
        let mut subscribers = cluster
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        forget_departed(&mut subscribers, Instant::now());
        let mut list: Vec<SubscriberInfo> = subscribers
            .iter()
            .map(|(id, s)| SubscriberInfo {
                id: id.clone(),
                kind: s.kind,
                applied_version: s.applied_version,
                connected: s.open_streams > 0,
            })
            .collect();
        drop(subscribers);
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Forgets a cluster (token, ring, subscribers) and ends its open streams.
    pub fn remove_cluster(&self, cluster_id: &str) {
        let removed = self
            .clusters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cluster_id);
        if let Some(cluster) = removed {
            cluster.removed.cancel();
            info!(cluster = cluster_id, "ring cluster removed");
        }
    }

    /// Answers a request under `/v1/clusters/`; `None` for any other path, so the caller can
    /// serve it (for example `/metrics`) on the same port. Errors are JSON
    /// `{"error":"…"}`: 404 unknown path (or no ring published yet), 401 missing or wrong
    /// token or unknown cluster (one answer, so clusters cannot be probed), 403 a kind the
    /// token does not prove, 405 wrong method, 400 bad query or ack, 413 oversized ack.
    ///
    /// Streams end when the client goes, when the cluster is removed, or (when served by
    /// [`serve`]) at shutdown; a server that mounts `handle` itself ends them by dropping its
    /// connections.
    pub async fn handle(&self, req: Request<Incoming>) -> Option<Response<BoxBody>> {
        let path = req.uri().path();
        let rest = path.strip_prefix(PATH_PREFIX)?;
        let (cluster_id, endpoint) = if let Some(id) = rest.strip_suffix("/ring/watch") {
            (id, Endpoint::Watch)
        } else if let Some(id) = rest.strip_suffix("/ring/ack") {
            (id, Endpoint::Ack)
        } else if let Some(id) = rest.strip_suffix("/ring") {
            (id, Endpoint::Snapshot)
        } else {
            return Some(error(StatusCode::NOT_FOUND, "unknown path"));
        };
        let cluster_id = cluster_id.to_string();
        let presented = wscluster_runtime::credentials::bearer(req.headers().get(AUTHORIZATION));
        // An unknown cluster answers exactly as a wrong token does: no probing for clusters.
        let Some((cluster, proven)) = self
            .cluster(&cluster_id)
            .map(|c| {
                let proven = c.proven(presented);
                (c, proven)
            })
            .filter(|(_, proven)| proven.any())
        else {
            return Some(unauthorised());
        };
        let expected = match endpoint {
            Endpoint::Watch | Endpoint::Snapshot => Method::GET,
            Endpoint::Ack => Method::POST,
        };
        if req.method() != expected {
            let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            response.headers_mut().insert(
                ALLOW,
                HeaderValue::from_static(if expected == Method::GET {
                    "GET"
                } else {
                    "POST"
                }),
            );
            return Some(response);
        }
        Some(match endpoint {
            Endpoint::Snapshot => match cluster.current() {
                Some(p) => json(StatusCode::OK, p.snapshot.to_json()),
                None => error(StatusCode::NOT_FOUND, "no ring published yet"),
            },
            Endpoint::Watch => self.watch(cluster, &cluster_id, proven, &req),
            Endpoint::Ack => ack(cluster, &cluster_id, proven, req).await,
        })
    }

    /// Opens a watch stream.
    fn watch(
        &self,
        cluster: Arc<Cluster>,
        cluster_id: &str,
        proven: Proven,
        req: &Request<Incoming>,
    ) -> Response<BoxBody> {
        let query = req.uri().query().unwrap_or("");
        let subscriber = match query_param(query, "subscriber") {
            Ok(Some(id)) if valid_subscriber_id(&id) => id,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "query parameter subscriber must be 1 to 253 printable characters without whitespace",
                );
            }
        };
        let kind = match query_param(query, "kind").as_ref().map(|k| k.as_deref()) {
            Ok(Some("proxy")) => SubscriberKind::Proxy,
            Ok(Some("node")) => SubscriberKind::Node,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "query parameter kind must be proxy or node",
                );
            }
        };
        if !proven.allows(kind) {
            return wrong_kind(kind);
        }
        if cluster
            .with_subscriber(&subscriber, kind, |s| s.open_streams += 1)
            .is_none()
        {
            return error(StatusCode::TOO_MANY_REQUESTS, "too many subscribers");
        }
        info!(
            cluster = cluster_id,
            subscriber,
            kind = kind.as_str(),
            "ring stream opened"
        );
        let state = StreamState {
            ring: cluster.ring.subscribe(),
            removed: cluster.removed.clone(),
            closer: req.extensions().get::<StreamCloser>().map(|c| c.0.clone()),
            heartbeat: self.heartbeat,
            first: true,
            _guard: StreamGuard {
                cluster,
                cluster_id: cluster_id.to_string(),
                subscriber,
            },
        };
        let stream = futures_util::stream::unfold(state, next_line);
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// Records an ack.
async fn ack(
    cluster: Arc<Cluster>,
    cluster_id: &str,
    proven: Proven,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    let body = match Limited::new(req.into_body(), MAX_ACK_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "ack body too large");
        }
        Err(e) => {
            debug!(error = %e, "ack body could not be read");
            return error(StatusCode::BAD_REQUEST, "ack body could not be read");
        }
    };
    let ack: Ack = match serde_json::from_slice(&body) {
        Ok(ack) => ack,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid ack: {e}")),
    };
    if !valid_subscriber_id(&ack.subscriber) {
        return error(
            StatusCode::BAD_REQUEST,
            "subscriber must be 1 to 253 printable characters without whitespace",
        );
    }
    if !proven.allows(ack.kind) {
        return wrong_kind(ack.kind);
    }
    let current = cluster.current_version();
    if ack.version > current {
        // 409, not 400: a process may hold that version already (from its fallback ring file)
        // before this hub has published it; the subscriber posts the ack again later.
        return error(
            StatusCode::CONFLICT,
            &format!(
                "version {} is newer than the current {current}",
                ack.version
            ),
        );
    }
    if cluster
        .with_subscriber(&ack.subscriber, ack.kind, |s| {
            s.applied_version = Some(ack.version)
        })
        .is_none()
    {
        return error(StatusCode::TOO_MANY_REQUESTS, "too many subscribers");
    }
    debug!(
        cluster = cluster_id,
        subscriber = ack.subscriber,
        version = ack.version,
        "ring ack"
    );
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A watch stream's state between lines.
struct StreamState {
    /// The cluster's current snapshot.
    ring: watch::Receiver<Option<Arc<Published>>>,
    /// Cancelled when the cluster is removed.
    removed: CancellationToken,
    /// Cancelled when the server shuts down, if the server provided one.
    closer: Option<CancellationToken>,
    /// Idle time before a heartbeat.
    heartbeat: Duration,
    /// Whether the current snapshot has not been sent yet.
    first: bool,
    /// Marks the subscriber disconnected when the stream is dropped.
    _guard: StreamGuard,
}

/// Counts an open stream for its subscriber; dropping it (the client went, or the stream
/// ended) counts it closed.
struct StreamGuard {
    /// The cluster.
    cluster: Arc<Cluster>,
    /// Its id, for the log.
    cluster_id: String,
    /// The subscriber.
    subscriber: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut subscribers = self
            .cluster
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = subscribers.get_mut(&self.subscriber) {
            s.open_streams = s.open_streams.saturating_sub(1);
            s.last_seen = Instant::now();
        }
        drop(subscribers);
        info!(
            cluster = self.cluster_id,
            subscriber = self.subscriber,
            "ring stream closed"
        );
    }
}

/// What a stream does next.
enum Next {
    /// Send the current snapshot.
    Snapshot,
    /// Send a heartbeat.
    Heartbeat,
    /// End the stream.
    End,
}

/// Produces the stream's next line: the current snapshot first, then each newer one, and a
/// heartbeat after `heartbeat` of silence. Ends when the cluster is removed or at shutdown.
async fn next_line(
    mut state: StreamState,
) -> Option<(Result<Frame<Bytes>, Infallible>, StreamState)> {
    let next = if state.first {
        state.first = false;
        Next::Snapshot
    } else {
        let closer = state.closer.clone();
        tokio::select! {
            biased;
            () = state.removed.cancelled() => Next::End,
            () = async {
                match &closer {
                    Some(closer) => closer.cancelled().await,
                    None => std::future::pending().await,
                }
            } => Next::End,
            changed = state.ring.changed() => match changed {
                Ok(()) => Next::Snapshot,
                Err(_) => Next::End,
            },
            () = tokio::time::sleep(state.heartbeat) => Next::Heartbeat,
        }
    };
    let line = match next {
        Next::End => return None,
        Next::Snapshot => match state.ring.borrow_and_update().clone() {
            Some(published) => published.line.clone(),
            // Nothing published yet: a heartbeat at version 0 tells the subscriber it is
            // connected.
            None => heartbeat_line(0),
        },
        Next::Heartbeat => {
            let version = state
                .ring
                .borrow()
                .as_ref()
                .map_or(0, |p| p.snapshot.version);
            heartbeat_line(version)
        }
    };
    Some((Ok(Frame::data(line)), state))
}

fn heartbeat_line(version: u64) -> Bytes {
    Bytes::from(StreamEvent::Heartbeat { version }.to_line())
}

/// How [`serve`] serves the hub: at most 16,384 connections at once (subscribers are the proxy
/// and node pods, each holding one stream plus short ack requests), a 10 s header-read timeout,
/// and five seconds for connections to finish after shutdown (streams end at once on shutdown;
/// the grace only bounds a peer that does not read).
pub const SERVE_OPTIONS: ServeOptions = ServeOptions {
    max_connections: 16_384,
    ..ServeOptions::new("ring-stream")
};

/// Serves the hub on `listener` until `shutdown` with the shared accept loop
/// ([`wscluster_runtime::serve`], [`SERVE_OPTIONS`]): at shutdown it stops accepting, ends open
/// streams, and waits for connections to finish within the grace period. Paths the hub does
/// not own answer 404.
///
/// # Errors
///
/// None: accept errors are logged and survived. The `io::Result` is the signature callers
/// already match on.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<RingHub>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let closer = shutdown.clone();
    let handler = move |mut req: Request<Incoming>| {
        let hub = Arc::clone(&hub);
        req.extensions_mut().insert(StreamCloser(closer.clone()));
        async move {
            match hub.handle(req).await {
                Some(response) => response,
                None => error(StatusCode::NOT_FOUND, "unknown path"),
            }
        }
    };
    wscluster_runtime::serve::serve(listener, SERVE_OPTIONS, handler, shutdown).await;
    Ok(())
}

/// Whether a subscriber id is 1 to 253 bytes without control characters or whitespace (the
/// rule for member ids: a pod name or a process id passes).
pub(crate) fn valid_subscriber_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_SUBSCRIBER_ID_LEN
        && !id.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// The percent-decoded value of query parameter `name`: `Ok(None)` when absent, `Err` when
/// repeated or badly encoded.
fn query_param(query: &str, name: &str) -> Result<Option<String>, ()> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            if found.is_some() {
                return Err(());
            }
            found = Some(percent_decode(value, true).map_err(|_| ())?);
        }
    }
    Ok(found)
}

fn empty() -> BoxBody {
    Full::new(Bytes::new()).boxed_unsync()
}

fn json(status: StatusCode, body: String) -> Response<BoxBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The one answer to a missing or wrong token and to an unknown cluster.
fn unauthorised() -> Response<BoxBody> {
    let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// A valid token of another kind than the request declares.
fn wrong_kind(kind: SubscriberKind) -> Response<BoxBody> {
    error(
        StatusCode::FORBIDDEN,
        &format!("the token is not a {} token", kind.as_str()),
    )
}

/// A JSON error response, `{"error":"…"}`.
fn error(status: StatusCode, message: &str) -> Response<BoxBody> {
    json(status, serde_json::json!({ "error": message }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_and_repeats_refused() {
        assert_eq!(
            query_param("subscriber=a%2Fb&kind=node", "subscriber"),
            Ok(Some("a/b".to_string()))
        );
        assert_eq!(query_param("kind=node", "subscriber"), Ok(None));
        assert_eq!(query_param("kind=node&kind=proxy", "kind"), Err(()));
        assert_eq!(query_param("subscriber=%zz", "subscriber"), Err(()));
        assert_eq!(query_param("subscriber=%ff", "subscriber"), Err(()));
        assert_eq!(query_param("subscriber=%4", "subscriber"), Err(()));
    }

    #[test]
    fn subscriber_ids_are_printable_and_bounded() {
        assert!(valid_subscriber_id("chat-proxy-0"));
        assert!(!valid_subscriber_id(""));
        assert!(!valid_subscriber_id("a b"));
        assert!(!valid_subscriber_id("a\u{7}"));
        assert!(valid_subscriber_id(&"x".repeat(253)));
        assert!(!valid_subscriber_id(&"x".repeat(254)));
    }

    #[test]
    fn publish_refuses_stale_and_invalid_snapshots() {
        use wscluster_ring::Member;
        let hub = RingHub::new();
        let v2 = RingSnapshot::new("ns/c", 2, vec![Member::active("n-0", "h:1")]);
        hub.publish(v2.clone()).expect("first publish");
        assert_eq!(
            hub.publish(v2.clone()),
            Err(RingError::NotNewer {
                current: 2,
                offered: 2
            })
        );
        let mut v1 = v2.clone();
        v1.version = 1;
        assert!(matches!(hub.publish(v1), Err(RingError::NotNewer { .. })));
        let mut dup = v2.clone();
        dup.version = 3;
        dup.members.push(Member::active("n-0", "h:2"));
        assert!(matches!(hub.publish(dup), Err(RingError::Invalid(_))));
        assert_eq!(hub.current("ns/c").map(|s| s.version), Some(2));
        assert_eq!(hub.current("ns/other"), None);
    }
}
