//! The client-facing listener: the accept loop, the two ways an upgrade is served — the fast
//! path from the first request head read raw ([`crate::head`]) and hyper's path for everything
//! else — both routed by the one decision in [`crate::route`] and handed to the
//! [`crate::splice`]; plain HTTP forwarded to the same owner; and every answer the proxy gives
//! before an upgrade ([`Reply`]) made here. The TLS listener ([`serve_tls`]) is the same accept
//! loop with a handshake first ([`crate::tls`]); everything after it is generic over the client
//! side ([`ClientIo`]), so plain and TLS connections are served by the same code.

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
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};
use wscluster_runtime::credentials::CredentialSet;

use wscluster_ring::contract::{
    KEY_HEADER, PROXY_SECRET_HEADER, RING_VERSION_HEADER, api, percent_encode,
};

use crate::head::{self, First, Prefixed, RawHead};
use crate::limits::IpSlot;
use crate::resets::check_late_registration;
use crate::route::{Route, Target, Unrouted, check_origin, route};
use crate::splice::{ClientIo, End, Splice};
use crate::state::{MemberRoute, Shared};
use crate::tls::HandshakeFailure;
use crate::upstream::{self, ProxyFields};

/// Response body: our own JSON or a forwarded upstream body.
pub type Body = UnsyncBoxBody<Bytes, hyper::Error>;
/// The pooled client for plain HTTP forwarding.
pub type HttpClient = Client<HttpConnector, Incoming>;

/// Pause after an accept error (such as running out of file descriptors) so the loop does not
/// spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// The field that lists the addresses a request came through.
const X_FORWARDED_FOR: &str = "x-forwarded-for";
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
    Reply::json(status, body).into_response()
}

/// A whole answer to a client that is not (or not yet) an upgrade: ours or an owner's refusal
/// passed on. Hyper's path sends it as a response; the fast path writes it and closes.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The status.
    status: StatusCode,
    /// The header fields, without framing fields (the body is framed when sent).
    headers: HeaderMap,
    /// The whole body.
    body: Bytes,
}

impl Reply {
    /// A JSON answer.
    fn json(status: StatusCode, body: &serde_json::Value) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Reply {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    /// An owner's refusal of an upgrade as passed on to the client, on either upgrade path:
    /// its status, body and fields, without hop-by-hop fields and without `Content-Length`,
    /// since the proxy frames the body it read.
    fn refused(refusal: upstream::Refusal) -> Reply {
        let upstream::Refusal {
            status,
            mut headers,
            body,
        } = refusal;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::CONTENT_LENGTH);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The answer for a request that has no owner to go to, counted by its kind.
    fn unrouted(unrouted: Unrouted, shared: &Shared) -> Reply {
        match unrouted {
            Unrouted::Key(e) => {
                shared.metrics.error(e.metric_label());
                Reply::json(e.status(), &e.body())
            }
            Unrouted::NoRing => Failure::NoRing.reply(shared, None),
            Unrouted::NoOwner => Failure::NoOwner.reply(shared, None),
            Unrouted::Origin => {
                shared.metrics.error("origin-not-allowed");
                let body = serde_json::json!({
                    "error": "origin-not-allowed",
                    "message": "this Origin may not open a WebSocket here",
                });
                Reply::json(StatusCode::FORBIDDEN, &body)
            }
            Unrouted::RateLimited => Reply::too_many(
                shared,
                "upgrade-rate",
                "too many upgrades from this address; retry later",
            ),
        }
    }

    /// A 429 with `Retry-After: 1`, counted under `kind`.
    fn too_many(shared: &Shared, kind: &'static str, message: &str) -> Reply {
        shared.metrics.error(kind);
        let body = serde_json::json!({"error": kind, "message": message});
        let mut reply = Reply::json(StatusCode::TOO_MANY_REQUESTS, &body);
        reply
            .headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        reply
    }

    /// As hyper's response.
    pub(crate) fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(
            Full::new(self.body)
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }

    /// As the bytes of a response that ends the connection (the fast path's answer).
    fn closing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        head::write_closing_response(&mut out, self.status, &self.headers, &self.body);
        out
    }
}

/// A failure to reach an owner, or to find one; the one place such failures become answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
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

    /// Its status and message for people.
    fn status_and_message(self) -> (StatusCode, &'static str) {
        match self {
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
        }
    }

    /// Counts the failure and gives its answer; `member` names the owner it concerns.
    pub(crate) fn reply(self, shared: &Shared, member: Option<&str>) -> Reply {
        shared.metrics.error(self.label());
        let (status, message) = self.status_and_message();
        let mut body = serde_json::json!({"error": self.label(), "message": message});
        if let Some(m) = member {
            body["member"] = m.into();
        }
        let mut reply = Reply::json(status, &body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            reply
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        reply
    }
}

/// The client for forwarded HTTP: pooled per owner, with the configured connect timeout and
/// source address.
pub fn http_client(connect_timeout: Duration, source: Option<std::net::IpAddr>) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(32)
        .build(upstream::http_connector(connect_timeout, source))
}

/// Accepts client connections until `shutdown`, each served on its own task in `tracker`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    serve_with(listener, None, shared, shutdown, tracker).await;
}

/// As [`serve`], each connection's TLS handshake first (under the header-read timeout, counted
/// in `tls_handshakes`), then the same serving as plain: routing, limits, both upgrade paths,
/// the splice, resets and the drain. The limits count TLS and plain connections together.
pub async fn serve_tls(
    listener: TcpListener,
    tls: TlsAcceptor,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    serve_with(listener, Some(tls), shared, shutdown, tracker).await;
}

/// Both listeners' accept loop; `tls` says whether connections start with a TLS handshake.
async fn serve_with(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let limits = shared.start_limits;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let client = http_client(limits.connect_timeout(), shared.upstream_source);
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
        tls,
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
        admit(&ctx, stream, peer, permit);
    }
}

/// Starts an accepted connection's task: served, or refused under `perIpConnections`.
fn admit(ctx: &Arc<ConnCtx>, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
    let shared = &ctx.shared;
    let ip = match shared.client_limits.admit_connection(peer.ip()) {
        Ok(ip) => ip,
        Err(()) => {
            let reply = Reply::too_many(
                shared,
                "per-ip-connections",
                "too many connections from this address",
            );
            let refusal = refuse(Arc::clone(ctx), stream, reply, permit);
            ctx.tracker.spawn(refusal);
            return;
        }
    };
    let permit = ConnSlot {
        _permit: permit,
        _ip: ip,
    };
    let conn = Conn {
        peer,
        ctx: Arc::clone(ctx),
    };
    let span = debug_span!("conn", %peer);
    match &ctx.tls {
        None => ctx.tracker.spawn(conn.run(stream, permit).instrument(span)),
        Some(_) => ctx
            .tracker
            .spawn(conn.run_tls(stream, permit).instrument(span)),
    };
}

/// Refuses a connection at accept ([`refuse_after_head`]), after its handshake on TLS.
async fn refuse(ctx: Arc<ConnCtx>, stream: TcpStream, reply: Reply, permit: OwnedSemaphorePermit) {
    let limits = ctx.shared.start_limits;
    match &ctx.tls {
        None => refuse_after_head(stream, reply, limits, permit).await,
        Some(acceptor) => {
            if let Some(tls) = handshake(acceptor, stream, &ctx.shared).await {
                refuse_after_head(tls, reply, limits, permit).await;
            }
        }
    }
}

/// The first byte of every TLS connection: a handshake record (RFC 8446 §5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A TLS handshake under the header-read timeout, counted by outcome. A client that speaks
/// plain HTTP (or anything but TLS) gets the handshake's alert and a close; so does one whose
/// ALPN list lacks `http/1.1`.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    shared: &Shared,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let wait = shared.start_limits.header_read_timeout();
    let attempt = async {
        // Peeked, not read: only to tell plain HTTP from a broken TLS client in the metrics.
        let mut first = [0u8; 1];
        let plain = match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return Err(HandshakeFailure::Other),
            Ok(_) => first[0] != TLS_HANDSHAKE_RECORD,
        };
        acceptor.accept(stream).await.map_err(|e| {
            debug!(error = %e, "TLS handshake failed");
            HandshakeFailure::of(plain, &e)
        })
    };
    let outcome = tokio::time::timeout(wait, attempt)
        .await
        .unwrap_or(Err(HandshakeFailure::Timeout));
    shared
        .metrics
        .tls_handshake(outcome.as_ref().err().copied());
    outcome.ok()
}

/// A connection's place under the limits, held until it ends: its slot under
/// `maxConnections` and, with `perIpConnections`, under its address's.
pub struct ConnSlot {
    /// The slot under `maxConnections`.
    _permit: OwnedSemaphorePermit,
    /// The slot under `perIpConnections` (counted whether or not the limit is set).
    _ip: IpSlot,
}

/// Answers a connection refused at accept once its request head is in (so the client reads
/// the answer rather than a reset), within the header-read timeout, and closes it.
async fn refuse_after_head(
    mut stream: impl ClientIo,
    reply: Reply,
    limits: crate::config::Limits,
    _permit: OwnedSemaphorePermit,
) {
    let wait = limits.header_read_timeout();
    let read = head::read_first(&mut stream, limits.max_header_bytes);
    if !matches!(
        tokio::time::timeout(wait, read).await,
        Ok(Ok(First::Head(_) | First::Other(_)))
    ) {
        return;
    }
    let _ = tokio::time::timeout(wait, write_and_close(&mut stream, &reply.closing_bytes())).await;
}

/// Writes a whole answer and closes the write side (on TLS: flushed, with `close_notify`).
async fn write_and_close(stream: &mut impl ClientIo, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.shutdown().await
}

/// What every connection's task shares, built once per listener.
struct ConnCtx {
    /// What every task shares (routing, config, metrics).
    shared: Arc<Shared>,
    /// The pooled client plain HTTP is forwarded with.
    client: HttpClient,
    /// Hyper's connection settings (timeouts, buffer limit).
    builder: http1::Builder,
    /// Where spliced connections run, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Cancelled when the proxy stops accepting.
    shutdown: CancellationToken,
    /// The TLS listener's acceptor; `None` on the plain listener.
    tls: Option<TlsAcceptor>,
}

/// One client connection's task. Kept small: its future lives as long as the connection, and
/// for a spliced connection it is most of what an idle connection costs.
struct Conn {
    /// The client's address, for `X-Forwarded-For`.
    peer: SocketAddr,
    /// What the listener's connections share.
    ctx: Arc<ConnCtx>,
}

/// What a connection does after its first request head.
enum Next<C> {
    /// Nothing: it is closed or answered.
    Done,
    /// Splice (the fast path upgraded it).
    Splice(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Hyper serves it from the first byte.
    Http(Conn, Prefixed<C>, ConnSlot),
}

/// How the fast path left a connection.
enum Fast<C> {
    /// Not for the fast path after all: hyper gets the bytes read so far and the socket.
    Declined(Bytes, C),
    /// Answered (an error or the owner's refusal) and done.
    Answered,
    /// Upgraded: splice it.
    Switched(Upgraded<C>),
}

/// An upgrade the fast path routed, before the owner is asked.
struct FastRoute {
    /// The decision.
    route: Route,
    /// The request head for the owner.
    request: Vec<u8>,
    /// Length of the client's head; bytes after it are early frames.
    head_len: usize,
}

/// One side of an upgraded connection.
struct Leg<S = TcpStream> {
    /// Its socket.
    socket: S,
    /// What it sent right after the handshake and was already read with the head: forwarded
    /// first.
    early: Bytes,
}

/// The owner switched protocols.
struct Switched {
    /// The owner's side, ready to splice.
    upstream: Leg,
    /// The owner's 101 head as it came: written to the client as is on the fast path, parsed
    /// by [`upstream::fields`] for hyper's.
    head: Bytes,
}

/// An upgraded connection ready to splice.
struct Upgraded<C> {
    /// Whom it was routed to.
    target: Target,
    /// The client's side.
    client: Leg<C>,
    /// The owner's side.
    upstream: Leg,
}

impl Conn {
    /// The TLS listener's connection: the handshake, then [`Conn::run`] over the TLS stream.
    async fn run_tls(self, stream: TcpStream, permit: ConnSlot) {
        let Some(acceptor) = self.ctx.tls.clone() else {
            return;
        };
        let handshake = Box::pin(handshake(&acceptor, stream, &self.ctx.shared));
        let Some(tls) = handshake.await else {
            return;
        };
        self.run(tls, permit).await;
    }

    /// Reads the first request head; a WebSocket upgrade that can be routed is spliced here
    /// ([`Conn::fast_upgrade`]), anything else is served by hyper from the first byte.
    async fn run<C: ClientIo>(self, stream: C, permit: ConnSlot) {
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
    async fn start<C: ClientIo>(self, mut stream: C, permit: ConnSlot) -> Next<C> {
        let limits = self.ctx.shared.start_limits;
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
            Ok(Ok(First::Head(raw))) => match self.fast_upgrade(raw, stream).await {
                Fast::Declined(raw, back) => {
                    stream = back;
                    raw
                }
                Fast::Answered => return Next::Done,
                Fast::Switched(upgraded) => {
                    let shared = Arc::clone(&self.ctx.shared);
                    let span = splice_span(&upgraded.target);
                    // Boxed directly: wrapping it in another async block would store it
                    // twice (the captured future and the awaited one).
                    return Next::Splice(Box::pin(
                        spliced(shared, upgraded, permit).instrument(span),
                    ));
                }
            },
        };
        Next::Http(self, Prefixed::new(prefix, stream), permit)
    }

    /// Serves the connection with hyper (plain HTTP, and upgrades after earlier requests or
    /// that the fast path left to it), until it ends or shutdown drains it.
    async fn serve_http<C: ClientIo>(self, io: Prefixed<C>, permit: ConnSlot) {
        let Conn { peer, ctx } = self;
        let permit = Arc::new(permit);
        let service_ctx = Arc::clone(&ctx);
        let service = service_fn(move |req| {
            let ctx = Arc::clone(&service_ctx);
            let permit = Arc::clone(&permit);
            async move { Ok::<_, Infallible>(handle::<C>(req, peer, ctx, permit).await) }
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
    async fn fast_upgrade<C: ClientIo>(&self, raw: Bytes, mut client: C) -> Fast<C> {
        let shared = &self.ctx.shared;
        let Some(fast) = self.route(&raw) else {
            return Fast::Declined(raw, client);
        };
        let write_wait = shared.start_limits.header_read_timeout();
        let reply = match ask_owner(&fast.request, fast.route.owner(), shared).await {
            Ok(switched) => {
                let write = async {
                    client.write_all(&switched.head).await?;
                    client.flush().await
                };
                let written = tokio::time::timeout(write_wait, write);
                if !matches!(written.await, Ok(Ok(()))) {
                    return Fast::Answered;
                }
                return Fast::Switched(Upgraded {
                    target: fast.route.into_target(),
                    client: Leg {
                        socket: client,
                        early: Bytes::copy_from_slice(&raw[fast.head_len..]),
                    },
                    upstream: switched.upstream,
                });
            }
            Err(reply) => reply,
        };
        let bytes = reply.closing_bytes();
        let _ = tokio::time::timeout(write_wait, write_and_close(&mut client, &bytes)).await;
        Fast::Answered
    }

    /// Routes an upgrade head straight from its bytes (no `HeaderMap`, no `Uri`) and builds
    /// the request head for the owner. `None` when hyper's path should answer instead (not an
    /// upgrade the fast path takes, or [`Unrouted`]).
    fn route(&self, bytes: &[u8]) -> Option<FastRoute> {
        let shared = &self.ctx.shared;
        let mut fields = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
        let head = RawHead::parse(bytes, &mut fields)?;
        check_origin(&head, &shared.config().allowed_origins).ok()?;
        let route = route(&head, &shared.keys(), &shared.routing).ok()?;
        // Last, so only an upgrade that would otherwise go ahead spends a token; refused, it
        // goes to hyper's path, which answers 429.
        if !shared.client_limits.admit_upgrade(self.peer.ip()) {
            return None;
        }
        let secret = shared.proxy_secret();
        let secret = secret.as_deref().map(CredentialSet::current);
        let request = route.upgrade_request(&head, self.peer.ip(), secret);
        Some(FastRoute {
            route,
            request,
            head_len: head.len,
        })
    }
}

/// The span a spliced connection's logs carry.
fn splice_span(target: &Target) -> tracing::Span {
    debug_span!("ws", key = %target.key.key, member = %target.member)
}

/// Whether a request asks for a WebSocket upgrade (RFC 6455 §4.1).
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let values = |name| headers.get_all(name).into_iter().map(HeaderValue::as_bytes);
    head::lists_token(values(header::CONNECTION), b"upgrade")
        && head::lists_token(values(header::UPGRADE), b"websocket")
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Removes every field the client named with the internal prefix, then sets the proxy's own
/// ([`ProxyFields`]) when the request goes to a member: the verified key, the proxy secret and
/// the ring version it was routed with (so a new owner that lags behind waits for that ring
/// instead of refusing; see [`RING_VERSION_HEADER`]).
pub(crate) fn set_proxy_fields(headers: &mut HeaderMap, own: Option<ProxyFields<'_>>) {
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|name| upstream::is_internal(name.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
    }
    let Some(own) = own else { return };
    // A percent-encoded key is ASCII, and a secret has no control characters (credentials.rs
    // refuses them): both are valid field values.
    if let Some(key) = own
        .key
        .and_then(|k| HeaderValue::from_str(&percent_encode(k)).ok())
    {
        headers.insert(HeaderName::from_static(KEY_HEADER), key);
    }
    if let Some(secret) = own.secret.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(HeaderName::from_static(PROXY_SECRET_HEADER), secret);
    }
    headers.insert(
        HeaderName::from_static(RING_VERSION_HEADER),
        HeaderValue::from(own.ring_version),
    );
}

/// Replaces the client's `X-Forwarded-For` fields with the one the proxy passes on
/// ([`upstream::push_forwarded_for`], as for upgrades).
pub(crate) fn add_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let mut value = Vec::with_capacity(64);
    let prior = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes);
    upstream::push_forwarded_for(&mut value, prior, peer.ip());
    // Built from valid field values and an address: it is one, too.
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Hyper's path: routes an upgrade and splices it; plain HTTP goes to [`plain_http`].
async fn handle<C: ClientIo>(
    req: Request<Incoming>,
    peer: SocketAddr,
    ctx: Arc<ConnCtx>,
    permit: Arc<ConnSlot>,
) -> Response<Body> {
    let shared = &ctx.shared;
    if !is_websocket_upgrade(req.headers()) {
        return plain_http(req, peer, &ctx).await;
    }
    let routed = check_origin(&req, &shared.config().allowed_origins)
        .and_then(|()| route(&req, &shared.keys(), &shared.routing))
        .and_then(
            |route| match shared.client_limits.admit_upgrade(peer.ip()) {
                true => Ok(route),
                false => Err(Unrouted::RateLimited),
            },
        );
    match routed {
        Ok(route) => upgrade_with_hyper::<C>(req, peer, route, &ctx, permit).await,
        Err(unrouted) => Reply::unrouted(unrouted, shared).into_response(),
    }
}

/// The seed's send path, routed on the public port only with `legacySend: true`.
pub const LEGACY_SEND_PATH: &str = "/send";

/// Paths that are never passed on from the public port, not even to the fallback: the server
/// API (its own port) and every member's or proxy's internal route (their admin ports).
const INTERNAL_PATHS: [&str; 7] = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/count",
    "/users",
    "/broadcast",
    LEGACY_SEND_PATH,
];

/// Whether the public port must answer `path` itself with 404.
pub fn is_internal_path(path: &str) -> bool {
    path.starts_with(api::PREFIX)
        || path == api::PREFIX.trim_end_matches('/')
        || INTERNAL_PATHS.contains(&path)
}

/// Plain HTTP on the public port: nothing reaches a member but the seed's `/send` when the
/// config enables it (routed by its key like an upgrade). Anything else that is not an
/// internal path goes to the fallback when one is configured (without key or secret), and
/// is answered 404 otherwise.
async fn plain_http(req: Request<Incoming>, peer: SocketAddr, ctx: &ConnCtx) -> Response<Body> {
    let shared = &ctx.shared;
    let path = req.uri().path();
    if shared.config().legacy_send && path == LEGACY_SEND_PATH {
        let route = match route(&req, &shared.keys(), &shared.routing) {
            Ok(route) => route,
            Err(unrouted) => return Reply::unrouted(unrouted, shared).into_response(),
        };
        let owner = route.owner();
        let secret = shared.proxy_secret();
        let destination = Destination {
            address: &owner.address,
            name: &owner.id,
            own: Some(route.proxy_fields(secret.as_deref().map(CredentialSet::current))),
        };
        return forward(req, peer, destination, shared, &ctx.client).await;
    }
    match shared.fallback_upstream.as_deref() {
        Some(address) if !is_internal_path(path) => {
            let fallback = Destination {
                address,
                name: "fallback",
                own: None,
            };
            forward(req, peer, fallback, shared, &ctx.client).await
        }
        _ => not_found(shared),
    }
}

/// The public port's answer to a path it does not serve.
pub fn not_found(shared: &Shared) -> Response<Body> {
    shared.metrics.error("not-found");
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not-found", "message": "no such route on this port"}),
    )
}

/// Where a plain HTTP request is forwarded.
#[derive(Debug, Clone, Copy)]
struct Destination<'a> {
    /// `host:port`.
    address: &'a str,
    /// What errors and logs call it: the owning member's id, or "fallback".
    name: &'a str,
    /// The fields the proxy sets for a member (key, secret, ring version); none for the
    /// fallback, which is not a member and gets neither the key nor the secret.
    own: Option<ProxyFields<'a>>,
}

/// Forwards a plain HTTP request to `to`.
async fn forward(
    req: Request<Incoming>,
    peer: SocketAddr,
    to: Destination<'_>,
    shared: &Shared,
    client: &HttpClient,
) -> Response<Body> {
    let failed = |failure: Failure| failure.reply(shared, Some(to.name)).into_response();
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("http://{}{path}", to.address).parse::<http::Uri>() else {
        return failed(Failure::UpstreamUnreachable);
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded_for(&mut parts.headers, peer);
    set_proxy_fields(&mut parts.headers, to.own);
    shared.metrics.http_requests.inc();
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) if e.is_connect() => {
            debug!(error = %e, member = %to.name, "upstream unreachable");
            failed(Failure::UpstreamUnreachable)
        }
        Err(e) => {
            debug!(error = %e, member = %to.name, "forwarding failed");
            failed(Failure::UpstreamError)
        }
    }
}

/// Hyper's path for an upgrade: asks the owner, answers the client with the owner's 101
/// fields, and splices once hyper hands the client's socket over.
async fn upgrade_with_hyper<C: ClientIo>(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    route: Route,
    ctx: &ConnCtx,
    permit: Arc<ConnSlot>,
) -> Response<Body> {
    let shared = &ctx.shared;
    let secret = shared.proxy_secret();
    let request = route.upgrade_request(
        &req,
        peer.ip(),
        secret.as_deref().map(CredentialSet::current),
    );
    let switched = match ask_owner(&request, route.owner(), shared).await {
        Ok(switched) => switched,
        Err(reply) => return reply.into_response(),
    };
    let Ok(headers) = upstream::fields(&switched.head) else {
        let member = Some(&*route.owner().id);
        return Failure::UpstreamError.reply(shared, member).into_response();
    };
    let client = hyper::upgrade::on(&mut req);
    let target = route.into_target();
    let span = splice_span(&target);
    let shared = Arc::clone(shared);
    let splice = splice_after_101::<C>(client, shared, target, switched.upstream, permit);
    ctx.tracker.spawn(splice.instrument(span));
    let mut resp = Response::new(empty_body());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp
}

/// Waits for hyper to hand over the client's socket after the 101, then splices it to
/// `upstream`.
async fn splice_after_101<C: ClientIo>(
    client: OnUpgrade,
    shared: Arc<Shared>,
    target: Target,
    upstream: Leg,
    permit: Arc<ConnSlot>,
) {
    let client = match client.await {
        Ok(client) => client,
        Err(e) => {
            shared.metrics.error("upgrade");
            debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let Ok(client) = client.downcast::<TokioIo<Prefixed<C>>>() else {
        shared.metrics.error("upgrade");
        return;
    };
    // Bytes still in front of the socket (unlikely: hyper reads the prefix first), then
    // hyper's read-ahead, copied out so hyper's buffer is freed now.
    let (prefix, socket) = client.io.into_inner().into_parts();
    let mut early = Vec::with_capacity(client.read_buf.len() + prefix.len());
    early.extend_from_slice(&client.read_buf);
    early.extend_from_slice(&prefix);
    drop((client.read_buf, prefix));
    let client = Leg {
        socket,
        early: Bytes::from(early),
    };
    let upgraded = Upgraded {
        target,
        client,
        upstream,
    };
    spliced(shared, upgraded, permit).await;
}

/// Connects to `member` and sends it `head`, an upgrade request from
/// [`Route::upgrade_request`], within the connect and header-read timeouts. Anything but a
/// 101 comes back as the client's answer: the owner's refusal, or the proxy's failure. How it
/// ended and how long it took go to [`Shared::upgrade_ended`] (metrics, adaptive pacing).
async fn ask_owner(head: &[u8], member: &MemberRoute, shared: &Shared) -> Result<Switched, Reply> {
    let started = tokio::time::Instant::now();
    let ended = |outcome| shared.upgrade_ended(member, started.elapsed(), outcome);
    let failed = |failure: Failure| {
        ended(upstream::Outcome::Failed(failure.label()));
        failure.reply(shared, Some(&member.id))
    };
    let limits = shared.start_limits;
    let connect = upstream::connect(member.socket, &member.address, shared.upstream_source);
    let mut tcp = match tokio::time::timeout(limits.connect_timeout(), connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            debug!(error = %e, member = %member.id, "owner unreachable");
            return Err(failed(Failure::UpstreamUnreachable));
        }
        Err(_) => return Err(failed(Failure::UpstreamConnectTimeout)),
    };
    let _ = tcp.set_nodelay(true);
    let exchange = async {
        tcp.write_all(head).await?;
        upstream::read_answer(&mut tcp, limits.max_header_bytes).await
    };
    match tokio::time::timeout(limits.header_read_timeout(), exchange).await {
        Ok(Ok(upstream::Answer::Switched { head, early })) => {
            ended(upstream::Outcome::Switched);
            Ok(Switched {
                upstream: Leg { socket: tcp, early },
                head,
            })
        }
        // The owner refused the upgrade: its answer goes to the client whole.
        Ok(Ok(upstream::Answer::Refused(refusal))) => {
            ended(upstream::Outcome::Status(refusal.status));
            Err(Reply::refused(refusal))
        }
        Ok(Err(e)) => {
            debug!(error = %e, member = %member.id, "upgrade request failed");
            Err(failed(Failure::UpstreamError))
        }
        Err(_) => Err(failed(Failure::UpstreamTimeout)),
    }
}

/// Registers an upgraded connection and splices it until it ends; `permit` is the
/// connection's slot under `maxConnections`, held until it ends.
async fn spliced<C: ClientIo>(shared: Arc<Shared>, upgraded: Upgraded<C>, permit: impl Send) {
    let _permit = permit;
    let Upgraded {
        target,
        client,
        upstream,
    } = upgraded;
    let Target {
        key,
        member,
        connections,
        ring_version,
    } = target;
    let registration =
        shared
            .registry
            .register(&key.key, key.hash, Arc::clone(&member), ring_version);
    check_late_registration(&shared, &registration.control, &member, ring_version);
    drop(key);
    shared.metrics.upgrades.inc();
    connections.inc();
    let end = Splice::new(
        client.socket,
        upstream.socket,
        shared.config().limits.max_frame_bytes,
        &registration.control,
        &shared.registry,
    )
    .run(client.early, upstream.early)
    .await;
    connections.dec();
    if let End::FrameTooBig { .. } = end {
        shared.metrics.error("frame-too-big");
    }
    debug!(end = end.label(), "connection ended");
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
    fn the_proxys_fields_replace_the_clients_and_none_go_to_the_fallback() {
        let mut h = HeaderMap::new();
        h.insert(RING_VERSION_HEADER, HeaderValue::from_static("999"));
        h.append(KEY_HEADER, HeaderValue::from_static("mallory"));
        h.append(KEY_HEADER, HeaderValue::from_static("mallory2"));
        h.insert(PROXY_SECRET_HEADER, HeaderValue::from_static("guess"));
        h.insert("x-wscluster-sender", HeaderValue::from_static("mallory"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let own = ProxyFields {
            key: Some("a b"),
            secret: Some("s3cret"),
            ring_version: 7,
        };
        set_proxy_fields(&mut h, Some(own));
        assert_eq!(h.get_all(RING_VERSION_HEADER).iter().count(), 1);
        assert_eq!(h.get(RING_VERSION_HEADER), Some(&HeaderValue::from(7u64)));
        let all_keys: Vec<_> = h.get_all(KEY_HEADER).iter().collect();
        assert_eq!(all_keys, ["a%20b"]);
        assert_eq!(h[PROXY_SECRET_HEADER], "s3cret");
        assert!(!h.contains_key("x-wscluster-sender"));
        set_proxy_fields(&mut h, None);
        assert_eq!(h.len(), 1, "only x-keep is left: {h:?}");
        set_proxy_fields(
            &mut h,
            Some(ProxyFields {
                secret: None,
                ..own
            }),
        );
        assert!(
            !h.contains_key(PROXY_SECRET_HEADER),
            "dev mode sends no secret"
        );
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
        // Several fields from the client: all of them, in order, in one field.
        h.append("x-forwarded-for", HeaderValue::from_static("10.5.5.5"));
        add_forwarded_for(&mut h, "10.7.7.7:5".parse().expect("addr"));
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["10.1.2.3, 10.9.9.9, 10.5.5.5, 10.7.7.7"]);
    }
}
