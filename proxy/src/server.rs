//! The client-facing listener: accept loop, per-request routing, WebSocket upgrades handed to
//! the [`crate::splice`], plain HTTP forwarded to the same owner, and every failure before the
//! upgrade mapped to one JSON response here.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use wscluster_ring::contract::RING_VERSION_HEADER;

use crate::head::{self, First, Prefixed, RawHead};
use crate::key::{KeyError, extract_key};
use crate::resets::check_late_registration;
use crate::splice::{End, Splice};
use crate::state::{MemberRoute, Routing, Shared};
use crate::upstream;
use prometheus_client::metrics::gauge::Gauge;

/// Response body: our own JSON or a forwarded upstream body.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;
/// The pooled client for plain HTTP forwarding.
pub type HttpClient = Client<HttpConnector, Incoming>;

/// Pause after an accept error (such as running out of file descriptors) so the loop does not
/// spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Hop-by-hop headers (RFC 9110 §7.6.1) that a proxy must not forward.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A failure before the upgrade, tagged with its side; the one place errors become responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No ring yet.
    NoRing,
    /// The ring has no active member.
    NoOwner,
    /// The owner did not accept a TCP connection.
    UpstreamUnreachable,
    /// The owner did not accept a TCP connection within the connect timeout.
    UpstreamConnectTimeout,
    /// The owner accepted but the HTTP exchange failed.
    UpstreamError,
    /// The owner did not answer the upgrade in time.
    UpstreamTimeout,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::NoRing => "no-ring",
            Failure::NoOwner => "no-owner",
            Failure::UpstreamUnreachable => "upstream-unreachable",
            Failure::UpstreamConnectTimeout => "upstream-connect-timeout",
            Failure::UpstreamError => "upstream-error",
            Failure::UpstreamTimeout => "upstream-timeout",
        }
    }

    fn response(self, shared: &Shared, member: Option<&str>) -> Response<Body> {
        let (status, headers, body) = self.parts(shared, member);
        let mut resp = Response::new(
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }

    /// Counts the failure and gives its status, header fields and JSON body.
    fn parts(self, shared: &Shared, member: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
        shared.metrics.error(self.label());
        let (status, message) = match self {
            Failure::NoRing => (StatusCode::SERVICE_UNAVAILABLE, "the proxy has no ring yet"),
            Failure::NoOwner => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no active member owns keys right now",
            ),
            Failure::UpstreamUnreachable => {
                (StatusCode::BAD_GATEWAY, "the key's owner is unreachable")
            }
            Failure::UpstreamConnectTimeout => (
                StatusCode::BAD_GATEWAY,
                "the key's owner did not accept a connection in time",
            ),
            Failure::UpstreamError => (
                StatusCode::BAD_GATEWAY,
                "the key's owner failed the request",
            ),
            Failure::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "the key's owner did not answer in time",
            ),
        };
        let mut body = serde_json::json!({"error": self.label(), "message": message});
        if let Some(m) = member {
            body["member"] = m.into();
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        (status, headers, Bytes::from(body.to_string()))
    }
}

/// The client for forwarded HTTP: pooled per owner, with the configured connect timeout.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(32)
        .build(connector)
}

/// Accepts client connections until `shutdown`, each served on its own task in `tracker`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let limits = shared.config.limits;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let client = http_client(limits.connect_timeout());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let ctx = Arc::new(ConnCtx {
        shared: Arc::clone(&shared),
        client,
        builder,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    });
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    shared.metrics.error("accept");
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            shared.metrics.error("connection-limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            peer,
            ctx: Arc::clone(&ctx),
        };
        tracker.spawn(
            conn.run(stream, permit)
                .instrument(debug_span!("conn", %peer)),
        );
    }
}

/// What every connection's task shares, built once per listener.
struct ConnCtx {
    shared: Arc<Shared>,
    client: HttpClient,
    builder: http1::Builder,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// One client connection's task. Kept small: its future lives as long as the connection, and
/// for a spliced connection it is most of what an idle connection costs.
struct Conn {
    peer: SocketAddr,
    ctx: Arc<ConnCtx>,
}

/// What a connection does after its first request head.
enum Next {
    /// Nothing: it is closed or answered.
    Done,
    /// Splice (the fast path upgraded it).
    Splice(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Hyper serves it from the first byte.
    Http(Conn, Prefixed, OwnedSemaphorePermit),
}

/// How the fast path left a connection.
enum Fast {
    /// Not for the fast path after all: hyper gets the bytes read so far and the socket.
    Declined(Bytes, TcpStream),
    /// Answered (an error or the owner's refusal) and done.
    Answered,
    /// Upgraded: splice these.
    Switched(Switched),
}

/// An upgraded connection ready to splice.
struct Switched {
    key: crate::key::Key,
    member: (Arc<str>, Gauge),
    version: u64,
    client: (TcpStream, Bytes),
    upstream: (TcpStream, Bytes),
}

impl Conn {
    /// Reads the first request head; a WebSocket upgrade that can be routed is spliced here
    /// ([`Conn::fast_upgrade`]), anything else is served by hyper from the first byte.
    async fn run(self, stream: TcpStream, permit: OwnedSemaphorePermit) {
        // This task's future stays allocated, at the size of its largest state, for the whole
        // life of the connection: so it only ever holds pointers, and each step is its own
        // boxed future, freed when done (the first read and fast path, the splice, hyper).
        match Box::pin(self.start(stream, permit)).await {
            Next::Done => {}
            Next::Splice(splice) => splice.await,
            Next::Http(conn, io, permit) => Box::pin(conn.serve_http(io, permit)).await,
        }
    }

    /// Reads the first request head and takes the fast path when it applies; says what the
    /// connection does next.
    async fn start(self, mut stream: TcpStream, permit: OwnedSemaphorePermit) -> Next {
        let shared = Arc::clone(&self.ctx.shared);
        let limits = shared.config.limits;
        let first = tokio::select! {
            () = self.ctx.shutdown.cancelled() => return Next::Done,
            first = tokio::time::timeout(
                limits.header_read_timeout(),
                head::read_first(&mut stream, limits.max_header_bytes),
            ) => first,
        };
        let prefix = match first {
            // Slow or silent: closed, as hyper does for a head not read in time.
            Err(_) | Ok(Err(_)) | Ok(Ok(First::Closed)) => return Next::Done,
            Ok(Ok(First::Other(prefix))) => prefix,
            Ok(Ok(First::Head(raw))) => {
                match self.fast_upgrade(raw, stream).await {
                    Fast::Declined(raw, back) => {
                        stream = back;
                        raw
                    }
                    Fast::Answered => return Next::Done,
                    Fast::Switched(switched) => {
                        let span =
                            debug_span!("ws", key = %switched.key.key, member = %switched.member.0);
                        // Boxed directly: wrapping it in another async block would store it
                        // twice (the captured future and the awaited one).
                        return Next::Splice(Box::pin(
                            spliced(
                                shared,
                                switched.key,
                                switched.member,
                                switched.version,
                                switched.client,
                                switched.upstream,
                                permit,
                            )
                            .instrument(span),
                        ));
                    }
                }
            }
        };
        Next::Http(self, Prefixed::new(prefix, stream), permit)
    }

    /// Serves the connection with hyper (plain HTTP, and upgrades after earlier requests or
    /// that the fast path left to it), until it ends or shutdown drains it.
    async fn serve_http(self, io: Prefixed, permit: OwnedSemaphorePermit) {
        let Conn { peer, ctx } = self;
        let permit = Arc::new(permit);
        let service_ctx = Arc::clone(&ctx);
        let service = service_fn(move |req| {
            let shared = Arc::clone(&service_ctx.shared);
            let permit = Arc::clone(&permit);
            let tracker = service_ctx.tracker.clone();
            let client = service_ctx.client.clone();
            async move { Ok::<_, Infallible>(handle(req, peer, shared, client, permit, tracker).await) }
        });
        let conn = ctx
            .builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut conn = pin!(conn);
        tokio::select! {
            r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "client connection ended with an error") },
            () = ctx.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }

    /// The fast path for a connection whose first request is a WebSocket upgrade: routed and
    /// asked of the owner here, with the owner's 101 head passed on as it came. When the
    /// request would be refused before reaching an owner (no key, no ring, no owner) it goes
    /// back, with the socket, for hyper to answer in the one place that does. Failures after
    /// that are answered here, closing the connection.
    async fn fast_upgrade(&self, raw: Bytes, mut client: TcpStream) -> Fast {
        let shared = &self.ctx.shared;
        let Some(routed) = self.route(&raw) else {
            return Fast::Declined(raw, client);
        };
        let Some(member) = routed.routing.members.get(routed.index) else {
            return Fast::Declined(raw, client);
        };
        let write_wait = shared.config.limits.header_read_timeout();
        let (status, headers, body) = match ask_owner(&routed.request, member, shared).await {
            Ok((upstream, upstream::Answer::Switched { head, early })) => {
                if !matches!(
                    tokio::time::timeout(write_wait, client.write_all(&head)).await,
                    Ok(Ok(()))
                ) {
                    return Fast::Answered;
                }
                return Fast::Switched(Switched {
                    key: routed.key,
                    member: (Arc::clone(&member.id), member.connections.clone()),
                    version: routed.routing.ring.version(),
                    client: (client, Bytes::copy_from_slice(&raw[routed.head_len..])),
                    upstream: (upstream, early),
                });
            }
            Ok((_, upstream::Answer::Refused(refusal))) => for_client(refusal),
            Err(failure) => failure.parts(shared, Some(&member.id)),
        };
        let mut out = Vec::new();
        head::write_closing_response(&mut out, status, &headers, &body);
        let _ = tokio::time::timeout(write_wait, client.write_all(&out)).await;
        Fast::Answered
    }

    /// Routes an upgrade head straight from its bytes (no `HeaderMap`, no `Uri`): its key, the
    /// ring and owner it maps to, and the request head for the owner. `None` when hyper's path
    /// should answer instead (not an upgrade the fast path takes, no key, a bad token, no
    /// ring, no owner).
    fn route(&self, bytes: &[u8]) -> Option<Routed> {
        let shared = &self.ctx.shared;
        let mut fields = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
        let (head, head_len) = RawHead::parse(bytes, &mut fields)?;
        let key = extract_key(&head, &shared.keys).ok()?;
        let routing = shared.routing.load_full();
        if !routing.known {
            return None;
        }
        let index = routing.ring.owner_index(key.hash).ok()?;
        let mut request = Vec::with_capacity(bytes.len() + 96);
        upstream::write_request(
            &mut request,
            "GET",
            head.target,
            head.field_pairs(),
            self.peer.ip(),
            routing.ring.version(),
        );
        Some(Routed {
            key,
            routing,
            index,
            request,
            head_len,
        })
    }
}

/// An upgrade routed by the fast path.
struct Routed {
    key: crate::key::Key,
    routing: Arc<Routing>,
    index: usize,
    /// The request head for the owner.
    request: Vec<u8>,
    /// Length of the client's head; bytes after it are early frames.
    head_len: usize,
}

/// Whether a request asks for a WebSocket upgrade (RFC 6455 §4.1).
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let values = |name| headers.get_all(name).into_iter().map(HeaderValue::as_bytes);
    head::lists_token(values(header::CONNECTION), b"upgrade")
        && head::lists_token(values(header::UPGRADE), b"websocket")
}

/// An owner's refusal of an upgrade as passed on to the client, on either upgrade path: its
/// status and body, and its header fields without hop-by-hop fields and without
/// `Content-Length`, since the proxy frames the body it read.
fn for_client(refusal: upstream::Refusal) -> (StatusCode, HeaderMap, Bytes) {
    let upstream::Refusal {
        status,
        mut headers,
        body,
    } = refusal;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    (status, headers, body)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Tells the owner which ring routed the request (replacing anything the client sent), so a
/// new owner that lags behind waits for that ring instead of refusing; see
/// [`RING_VERSION_HEADER`].
fn set_ring_version(headers: &mut HeaderMap, version: Option<u64>) {
    let name = HeaderName::from_static(RING_VERSION_HEADER);
    match version {
        Some(v) => {
            headers.insert(name, HeaderValue::from(v));
        }
        None => {
            headers.remove(name);
        }
    }
}

fn add_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    client: HttpClient,
    permit: Arc<OwnedSemaphorePermit>,
    tracker: TaskTracker,
) -> Response<Body> {
    let key = match extract_key(&req, &shared.keys) {
        Ok(k) => k,
        Err(KeyError::Missing { .. })
            if shared.fallback_upstream.is_some() && !is_websocket_upgrade(req.headers()) =>
        {
            let upstream = shared.fallback_upstream.as_deref().unwrap_or_default();
            return forward(req, peer, upstream, "fallback", None, &shared, &client).await;
        }
        Err(e) => {
            shared.metrics.error(e.metric_label());
            return json_response(e.status(), &e.body());
        }
    };
    let routing = shared.routing.load_full();
    if !routing.known {
        return Failure::NoRing.response(&shared, None);
    }
    let Ok(index) = routing.ring.owner_index(key.hash) else {
        return Failure::NoOwner.response(&shared, None);
    };
    if is_websocket_upgrade(req.headers()) {
        upgrade(req, peer, key, routing, index, shared, permit, tracker).await
    } else {
        let Some(member) = routing.members.get(index) else {
            return Failure::NoOwner.response(&shared, None);
        };
        let version = Some(routing.ring.version());
        forward(
            req,
            peer,
            &member.address,
            &member.id,
            version,
            &shared,
            &client,
        )
        .await
    }
}

/// Forwards a plain HTTP request to `address` (`host:port`); `target` names it in errors and logs
/// (the owning member's id, or "fallback"); `ring_version` is the ring it was routed with.
async fn forward(
    req: Request<Incoming>,
    peer: SocketAddr,
    address: &str,
    target: &str,
    ring_version: Option<u64>,
    shared: &Shared,
    client: &HttpClient,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(uri) = format!("http://{address}{path}").parse::<http::Uri>() else {
        return Failure::UpstreamUnreachable.response(shared, Some(target));
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded_for(&mut parts.headers, peer);
    set_ring_version(&mut parts.headers, ring_version);
    shared.metrics.http_requests.inc();
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) if e.is_connect() => {
            debug!(error = %e, member = %target, "upstream unreachable");
            Failure::UpstreamUnreachable.response(shared, Some(target))
        }
        Err(e) => {
            debug!(error = %e, member = %target, "forwarding failed");
            Failure::UpstreamError.response(shared, Some(target))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn upgrade(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    key: crate::key::Key,
    routing: Arc<Routing>,
    index: usize,
    shared: Arc<Shared>,
    permit: Arc<OwnedSemaphorePermit>,
    tracker: TaskTracker,
) -> Response<Body> {
    let Some(member) = routing.members.get(index) else {
        return Failure::NoOwner.response(&shared, None);
    };
    let version = routing.ring.version();
    let mut request = Vec::with_capacity(512);
    upstream::write_request(
        &mut request,
        req.method().as_str(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.headers()
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        peer.ip(),
        version,
    );
    let (upstream, head, early) = match ask_owner(&request, member, &shared).await {
        Ok((upstream, upstream::Answer::Switched { head, early })) => (upstream, head, early),
        Ok((_, upstream::Answer::Refused(refusal))) => {
            // The owner refused the upgrade: its answer goes to the client whole.
            let (status, headers, body) = for_client(refusal);
            let mut resp = Response::new(
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            return resp;
        }
        Err(failure) => return failure.response(&shared, Some(&member.id)),
    };
    let Ok(headers) = upstream::fields(&head) else {
        return Failure::UpstreamError.response(&shared, Some(&member.id));
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut client_resp = empty_body_response(StatusCode::SWITCHING_PROTOCOLS);
    *client_resp.headers_mut() = headers;
    let member = (Arc::clone(&member.id), member.connections.clone());
    let span = debug_span!("ws", key = %key.key, member = %member.0);
    tracker.spawn(
        async move {
            let client = match client_upgrade.await {
                Ok(client) => client,
                Err(e) => {
                    shared.metrics.error("upgrade");
                    debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let Ok(client) = client.downcast::<TokioIo<Prefixed>>() else {
                shared.metrics.error("upgrade");
                return;
            };
            // Bytes still in front of the socket (unlikely: hyper reads the prefix first), then
            // hyper's read-ahead, copied out so hyper's buffer is freed now.
            let (prefix, socket) = client.io.into_inner().into_parts();
            let mut client_pre = Vec::with_capacity(client.read_buf.len() + prefix.len());
            client_pre.extend_from_slice(&client.read_buf);
            client_pre.extend_from_slice(&prefix);
            drop((client.read_buf, prefix));
            spliced(
                shared,
                key,
                member,
                version,
                (socket, Bytes::from(client_pre)),
                (upstream, early),
                permit,
            )
            .await;
        }
        .instrument(span),
    );
    client_resp
}

/// Connects to `member` and sends it `head`, an upgrade request from
/// [`upstream::write_request`], within the connect and header-read timeouts.
async fn ask_owner(
    head: &[u8],
    member: &MemberRoute,
    shared: &Shared,
) -> Result<(TcpStream, upstream::Answer), Failure> {
    let limits = shared.config.limits;
    let connect = async {
        match member.socket {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(member.address.as_str()).await,
        }
    };
    let mut tcp = match tokio::time::timeout(limits.connect_timeout(), connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            debug!(error = %e, member = %member.id, "owner unreachable");
            return Err(Failure::UpstreamUnreachable);
        }
        Err(_) => return Err(Failure::UpstreamConnectTimeout),
    };
    let _ = tcp.set_nodelay(true);
    let exchange = async {
        tcp.write_all(head).await?;
        upstream::read_answer(&mut tcp, limits.max_header_bytes).await
    };
    match tokio::time::timeout(limits.header_read_timeout(), exchange).await {
        Ok(Ok(answer)) => Ok((tcp, answer)),
        Ok(Err(e)) => {
            debug!(error = %e, member = %member.id, "upgrade request failed");
            Err(Failure::UpstreamError)
        }
        Err(_) => Err(Failure::UpstreamTimeout),
    }
}

/// Registers an upgraded connection and splices it until it ends. `member` is the owner's id
/// and connection gauge; `client` and `upstream` each come with the bytes that side sent right
/// after the handshake; `permit` is the connection's slot under `maxConnections`, held until it
/// ends.
async fn spliced(
    shared: Arc<Shared>,
    key: crate::key::Key,
    member: (Arc<str>, Gauge),
    version: u64,
    client: (TcpStream, Bytes),
    upstream: (TcpStream, Bytes),
    permit: impl Send,
) {
    let _permit = permit;
    let (member_id, gauge) = member;
    let registration =
        shared
            .registry
            .register(&key.key, key.hash, Arc::clone(&member_id), version);
    check_late_registration(&shared, &registration.control, &member_id, version);
    drop(key);
    shared.metrics.upgrades.inc();
    gauge.inc();
    let end = Splice::new(
        client.0,
        upstream.0,
        shared.config.limits.max_frame_bytes,
        &registration.control,
        &shared.registry,
    )
    .run(client.1, upstream.1)
    .await;
    gauge.dec();
    if let End::FrameTooBig { .. } = end {
        shared.metrics.error("frame-too-big");
    }
    debug!(end = end.label(), "connection ended");
}

fn empty_body_response(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(empty_body());
    *resp.status_mut() = status;
    resp
}

/// The body type's empty value, for tests and the admin server.
pub fn empty_body() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_detection_needs_both_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&h));
        h.remove(header::CONNECTION);
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_websocket_upgrade(&h));
    }

    #[test]
    fn the_ring_version_header_replaces_the_clients_and_is_dropped_for_the_fallback() {
        let mut h = HeaderMap::new();
        h.insert(RING_VERSION_HEADER, HeaderValue::from_static("999"));
        set_ring_version(&mut h, Some(7));
        assert_eq!(h.get_all(RING_VERSION_HEADER).iter().count(), 1);
        assert_eq!(h.get(RING_VERSION_HEADER), Some(&HeaderValue::from(7u64)));
        set_ring_version(&mut h, None);
        assert!(h.get(RING_VERSION_HEADER).is_none());
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        add_forwarded_for(&mut h, "10.1.2.3:5".parse().expect("addr"));
        add_forwarded_for(&mut h, "10.9.9.9:5".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, 10.9.9.9");
    }
}
