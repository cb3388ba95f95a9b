//! The subscriber side: follow a hub's ring stream, build rings, report the applied version.
//!
//! Two background tasks per [`Subscription`]:
//!
//! * the follower opens `GET …/ring/watch`, reads NDJSON lines (at most
//!   [`MAX_LINE_BYTES`] each), builds a [`Ring`] from each newer snapshot and publishes it. Any
//!   failure (refused connection, 401, an invalid or over-long line, [`SILENCE_TIMEOUT_MS`]
//!   without a line) drops the connection and retries after a backoff; the last ring stays
//!   published meanwhile.
//! * the acker posts the newest version given to [`Subscription::ack`], retrying on failure and
//!   posting again after every reconnect (the hub may have restarted and forgotten it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use wscluster_ring::contract::stream::{
    Ack, MAX_LINE_BYTES, SILENCE_TIMEOUT_MS, StreamEvent, SubscriberKind, ack_path, watch_path,
};
use wscluster_ring::{Ring, RingSnapshot};
use wscluster_runtime::Backoff;

use crate::error::{Error, Result};

/// First reconnect delay. Short, so a hub restart costs subscribers about a tenth of a second.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest reconnect delay, also used after a 401 (a wrong token does not fix itself quickly).
/// Five seconds bounds how stale a ring gets after the hub comes back.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Time allowed to connect and to receive the response head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The `User-Agent` the subscriber sends.
const USER_AGENT_VALUE: &str = concat!("wscluster-ring-stream/", env!("CARGO_PKG_VERSION"));
/// While the hub stays unreachable, one failed attempt in this many is logged as a warning (the
/// first, then about once a minute at the maximum backoff); the others at debug level.
const FAILURES_PER_WARNING: u32 = 12;
/// How much of an error response's body is kept for the log.
const MAX_ERROR_BODY_BYTES: usize = 512;

/// Where and as whom to subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberConfig {
    /// The hub's base URL, `http://host:port` (an optional path prefix is kept), for example
    /// `http://wscluster-operator.wscluster-system.svc:7400`.
    pub base_url: String,
    /// The cluster whose ring to follow, `namespace/name`.
    pub cluster_id: String,
    /// The cluster's bearer token.
    pub token: String,
    /// Whether this process is a proxy or a node (the hub reports it per subscriber).
    pub kind: SubscriberKind,
    /// This process's id, usually the pod name: 1 to 253 printable characters without
    /// whitespace.
    pub subscriber_id: String,
}

/// A running subscription. Created by [`Subscription::spawn`]; its background tasks end at
/// `shutdown` or when the subscription and every receiver it handed out are dropped.
#[derive(Debug)]
pub struct Subscription {
    /// The newest ring; `None` until the first one arrives.
    rings: watch::Receiver<Option<Arc<Ring>>>,
    /// Whether the stream is open now.
    connected: watch::Receiver<bool>,
    /// The latest version to report; the ack task posts whatever is newest.
    ack: watch::Sender<Option<u64>>,
}

impl Subscription {
    /// Starts following the ring stream in the background. Connection failures are retried
    /// with exponential backoff and full jitter (a random delay up to 100 ms doubling to 5 s,
    /// back to 100 ms after a connection that delivered a valid line; up to 5 s after a 401;
    /// [`wscluster_runtime::Backoff`]); the last ring stays published
    /// while disconnected. Must be called inside a Tokio runtime.
    pub fn spawn(config: SubscriberConfig, shutdown: CancellationToken) -> Subscription {
        let (rings_tx, rings) = watch::channel(None);
        let (connected_tx, connected) = watch::channel(false);
        let (ack, ack_rx) = watch::channel(None);
        let span = info_span!(
            "ring_subscription",
            cluster = %config.cluster_id,
            subscriber = %config.subscriber_id,
        );
        let client = Arc::new(Client::new(config));
        tokio::spawn(
            follow(
                Arc::clone(&client),
                rings_tx,
                connected_tx,
                shutdown.clone(),
            )
            .instrument(span.clone()),
        );
        tokio::spawn(post_acks(client, ack_rx, connected.clone(), shutdown).instrument(span));
        Subscription {
            rings,
            connected,
            ack,
        }
    }

    /// The rings: `None` until the first, then only ever newer versions of the configured
    /// cluster.
    pub fn rings(&self) -> watch::Receiver<Option<Arc<Ring>>> {
        self.rings.clone()
    }

    /// Reports that this process now applies `version`. Never blocks: the newest value wins
    /// and a background task posts it, retrying on failure and again after each reconnect.
    pub fn ack(&self, version: u64) {
        self.ack.send_replace(Some(version));
    }

    /// Whether the stream is connected now.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}

/// The parts of the base URL a request needs.
#[derive(Debug, Clone)]
struct Target {
    /// Host to connect to (brackets of an IPv6 literal removed).
    host: String,
    /// Port to connect to.
    port: u16,
    /// The `Host` header value.
    authority: String,
    /// Path prefix before `/v1/…`, without a trailing slash.
    prefix: String,
}

impl Target {
    /// Parses `http://host[:port][/prefix]`; the error says what is wrong.
    fn parse(base_url: &str) -> std::result::Result<Target, &'static str> {
        let uri: Uri = base_url.parse().map_err(|_| "not a URL")?;
        if uri.scheme_str() != Some("http") {
            return Err("the scheme must be http (the ring stream has no TLS)");
        }
        if uri.query().is_some() {
            return Err("a query is not allowed");
        }
        let authority = uri.authority().ok_or("no host")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err("no host");
        }
        Ok(Target {
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// What both tasks share: the configuration and the parsed URL.
#[derive(Debug)]
struct Client {
    /// As given to [`Subscription::spawn`].
    config: SubscriberConfig,
    /// The parsed base URL, or why it is unusable (each attempt then fails with that reason).
    target: std::result::Result<Target, &'static str>,
}

impl Client {
    fn new(config: SubscriberConfig) -> Client {
        let target = Target::parse(&config.base_url);
        Client { config, target }
    }

    /// Sends one request on a new connection and returns the response head and body. The
    /// connection lives as long as the returned guard.
    async fn request(
        &self,
        method: http::Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<(Response<Incoming>, AbortOnDrop)> {
        let target = self.target.as_ref().map_err(|&reason| Error::InvalidUrl {
            url: self.config.base_url.clone(),
            reason,
        })?;
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", target.prefix))
            .header(HOST, target.authority.as_str())
            .header(AUTHORIZATION, format!("Bearer {}", self.config.token))
            .header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(content_type) = content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        } else {
            builder = builder.header(ACCEPT, "application/x-ndjson");
        }
        let request = builder.body(Full::new(body))?;
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| Error::Timeout("connecting to the ring hub"))?
        .map_err(Error::Connect)?;
        // Lines are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let guard = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "ring hub connection ended with an error");
            }
        }));
        let response = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| Error::Timeout("waiting for the ring hub's response"))??;
        Ok((response, guard))
    }

    /// Turns a non-success response into an error.
    async fn check(response: Response<Incoming>) -> Result<Response<Incoming>> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // 403: a valid token of another kind. Like a wrong token it does not fix itself soon.
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized);
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY_BYTES)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(Error::Status { status, body })
    }

    /// One watch connection: returns when it ends, always with the reason.
    async fn watch_once(
        &self,
        rings: &watch::Sender<Option<Arc<Ring>>>,
        connected: &watch::Sender<bool>,
        delivered: &mut bool,
    ) -> Error {
        match self.watch_inner(rings, connected, delivered).await {
            Ok(()) => Error::StreamEnded,
            Err(e) => e,
        }
    }

    async fn watch_inner(
        &self,
        rings: &watch::Sender<Option<Arc<Ring>>>,
        connected: &watch::Sender<bool>,
        delivered: &mut bool,
    ) -> Result<()> {
        let path = format!(
            "{}?subscriber={}&kind={}",
            watch_path(&self.config.cluster_id),
            percent_encode(&self.config.subscriber_id),
            self.config.kind.as_str()
        );
        let (response, _connection) = self
            .request(http::Method::GET, &path, None, Bytes::new())
            .await?;
        let mut body = Client::check(response).await?.into_body();
        connected.send_replace(true);
        info!("ring stream connected");
        let silence = Duration::from_millis(SILENCE_TIMEOUT_MS);
        let mut lines = LineBuffer::default();
        loop {
            let frame = match tokio::time::timeout(silence, body.frame()).await {
                Err(_) => return Err(Error::Timeout("the ring stream was silent too long")),
                Ok(None) => return Ok(()),
                Ok(Some(frame)) => frame?,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            lines.extend(&data);
            while let Some(line) = lines.next_line()? {
                self.apply_line(&line, rings).await?;
                *delivered = true;
            }
        }
    }

    /// Applies one line: a newer snapshot of our cluster becomes the published ring; anything
    /// else valid is logged and ignored. An invalid line is an error (the caller reconnects).
    async fn apply_line(
        &self,
        line: &[u8],
        rings: &watch::Sender<Option<Arc<Ring>>>,
    ) -> Result<()> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok(());
        }
        let snapshot = match StreamEvent::parse_line(line).map_err(Error::InvalidLine)? {
            StreamEvent::Heartbeat { version } => {
                debug!(version, "ring stream heartbeat");
                return Ok(());
            }
            StreamEvent::Snapshot { snapshot } => snapshot,
        };
        apply_snapshot(&self.config.cluster_id, snapshot, rings).await;
        Ok(())
    }

    /// Posts one ack.
    async fn post_ack(&self, version: u64) -> Result<()> {
        let ack = Ack {
            subscriber: self.config.subscriber_id.clone(),
            kind: self.config.kind,
            version,
        };
        let body = serde_json::to_vec(&ack)
            .map(Bytes::from)
            .unwrap_or_default();
        let (response, _connection) = self
            .request(
                http::Method::POST,
                &ack_path(&self.config.cluster_id),
                Some("application/json"),
                body,
            )
            .await?;
        Client::check(response).await?;
        Ok(())
    }
}

/// Publishes `snapshot` as the new ring if it belongs to `cluster_id` and is newer than the
/// published one; logs and ignores it otherwise. Also used by the file watcher. Returns whether
/// it was published.
pub(crate) async fn apply_snapshot(
    cluster_id: &str,
    snapshot: RingSnapshot,
    rings: &watch::Sender<Option<Arc<Ring>>>,
) -> bool {
    if snapshot.cluster_id != cluster_id {
        warn!(
            offered = snapshot.cluster_id,
            expected = cluster_id,
            version = snapshot.version,
            "ignoring a ring of another cluster"
        );
        return false;
    }
    let current = rings.borrow().clone();
    if let Some(current) = &current
        && snapshot.version <= current.version()
    {
        debug!(
            offered = snapshot.version,
            current = current.version(),
            "ignoring a ring that is not newer"
        );
        return false;
    }
    let version = snapshot.version;
    // Building costs about 0.5 ms per 10 members; keep large rings off the async workers.
    let built = tokio::task::spawn_blocking(move || match current {
        Some(current) => current.replace(snapshot),
        None => Ring::build(snapshot),
    })
    .await;
    match built {
        Ok(Ok(ring)) => {
            let members = ring.members().len();
            // A newer ring may have been published meanwhile only by this same task, so the
            // replace check above still holds.
            rings.send_replace(Some(Arc::new(ring)));
            info!(version, members, "ring applied");
            true
        }
        Ok(Err(e)) => {
            warn!(version, error = %e, "ring refused");
            false
        }
        Err(e) => {
            warn!(version, error = %e, "ring build failed");
            false
        }
    }
}

/// Follows the stream until shutdown or until nobody listens any more; then reports
/// disconnected.
async fn follow(
    client: Arc<Client>,
    rings: watch::Sender<Option<Arc<Ring>>>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    follow_until_done(&client, &rings, &connected, &shutdown).await;
    connected.send_replace(false);
}

async fn follow_until_done(
    client: &Client,
    rings: &watch::Sender<Option<Arc<Ring>>>,
    connected: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) {
    if let Err(reason) = &client.target {
        error!(
            url = client.config.base_url,
            reason, "the ring url is unusable"
        );
    }
    let mut backoff = backoff();
    // Failed attempts since the last connection that delivered a line.
    let mut failures: u32 = 0;
    loop {
        let mut delivered = false;
        let ended = tokio::select! {
            () = shutdown.cancelled() => return,
            () = rings.closed() => return,
            ended = client.watch_once(rings, connected, &mut delivered) => ended,
        };
        let was_connected = connected.send_replace(false);
        let delay = match &ended {
            Error::Unauthorized => {
                error!("the ring hub refused the token; retrying");
                backoff.max_delay()
            }
            Error::LineTooLong { .. } | Error::InvalidLine(_) => {
                warn!(error = %ended, "ring stream sent an invalid line; reconnecting");
                backoff.next_delay()
            }
            _ => {
                if delivered {
                    backoff.reset();
                    failures = 0;
                }
                failures += 1;
                if was_connected {
                    warn!(error = %ended, "ring stream disconnected; reconnecting");
                } else if failures % FAILURES_PER_WARNING == 1 {
                    warn!(error = %ended, failures, "cannot reach the ring hub; retrying");
                } else {
                    debug!(error = %ended, failures, "cannot reach the ring hub; retrying");
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = rings.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Posts the newest acked version; again after every reconnect.
async fn post_acks(
    client: Arc<Client>,
    mut acks: watch::Receiver<Option<u64>>,
    mut connected: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut posted: Option<u64> = None;
    let mut backoff = backoff();
    loop {
        let wanted = *acks.borrow_and_update();
        if let Some(version) = wanted.filter(|v| posted != Some(*v)) {
            match client.post_ack(version).await {
                Ok(()) => {
                    debug!(version, "ring ack posted");
                    posted = Some(version);
                    backoff.reset();
                }
                Err(Error::Status { status, body })
                    if status.is_client_error()
                        && status != StatusCode::TOO_MANY_REQUESTS
                        && status != StatusCode::CONFLICT =>
                {
                    // The hub refuses this ack for good (a malformed one, say); retrying would
                    // not change that. A newer ack is tried again. 409 (a version the hub has
                    // not published yet, read from the fallback ring file first) is retried
                    // with the backoff like any transient failure.
                    error!(version, %status, body, "the ring hub refused the ack");
                    posted = Some(version);
                }
                Err(e) => {
                    let delay = match e {
                        Error::Unauthorized => backoff.max_delay(),
                        _ => backoff.next_delay(),
                    };
                    debug!(version, error = %e, "ring ack failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                        changed = acks.changed() => if changed.is_err() { return },
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = acks.changed() => if changed.is_err() { return },
            changed = connected.changed() => {
                if changed.is_err() {
                    return;
                }
                if *connected.borrow_and_update() {
                    // The hub may be a new process that never heard our ack.
                    posted = None;
                }
            }
        }
    }
}

/// Splits a byte stream into newline-terminated lines of at most [`MAX_LINE_BYTES`].
#[derive(Debug, Default)]
struct LineBuffer {
    /// Bytes received and not yet returned as lines.
    buf: Vec<u8>,
    /// How far `buf` is known to hold no newline, so each byte is searched once.
    searched: usize,
}

impl LineBuffer {
    fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line without its newline; `Ok(None)` when more bytes are needed;
    /// an error once a line exceeds the limit.
    fn next_line(&mut self) -> Result<Option<Vec<u8>>> {
        match self.buf[self.searched..].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let end = self.searched + offset;
                if end > MAX_LINE_BYTES {
                    return Err(Error::LineTooLong {
                        limit: MAX_LINE_BYTES,
                    });
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.searched = 0;
                Ok(Some(line))
            }
            None => {
                self.searched = self.buf.len();
                if self.buf.len() > MAX_LINE_BYTES {
                    return Err(Error::LineTooLong {
                        limit: MAX_LINE_BYTES,
                    });
                }
                Ok(None)
            }
        }
    }
}

/// The reconnect backoff: [`BACKOFF_INITIAL`] doubling to [`BACKOFF_MAX`], full jitter.
fn backoff() -> Backoff {
    Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Aborts a spawned task when dropped (the connection driver of one request).
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_over_long_ones_refused() {
        let mut lines = LineBuffer::default();
        lines.extend(b"{\"a\":1}\n{\"b\"");
        assert_eq!(
            lines.next_line().expect("fits"),
            Some(b"{\"a\":1}".to_vec())
        );
        assert_eq!(lines.next_line().expect("fits"), None);
        lines.extend(b":2}\n");
        assert_eq!(
            lines.next_line().expect("fits"),
            Some(b"{\"b\":2}".to_vec())
        );
        let mut long = LineBuffer::default();
        long.extend(&vec![b'x'; MAX_LINE_BYTES + 1]);
        assert!(matches!(long.next_line(), Err(Error::LineTooLong { .. })));
    }

    #[test]
    fn the_backoff_doubles_from_100_ms_to_5_s() {
        let mut backoff = backoff();
        assert_eq!(backoff.ceiling(), BACKOFF_INITIAL);
        let first = backoff.next_delay();
        assert!(first <= BACKOFF_INITIAL);
        for _ in 0..20 {
            assert!(backoff.next_delay() <= BACKOFF_MAX);
        }
        assert_eq!(backoff.ceiling(), BACKOFF_MAX);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_INITIAL);
    }

    #[test]
    fn base_urls_are_parsed_and_non_http_refused() {
        let t = Target::parse("http://127.0.0.1:7400").expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("127.0.0.1", 7400, "")
        );
        let t = Target::parse("http://hub.example/prefix/").expect("valid");
        assert_eq!((t.port, t.prefix.as_str()), (80, "/prefix"));
        let t = Target::parse("http://[::1]:9").expect("valid");
        assert_eq!(t.host, "::1");
        assert!(Target::parse("https://hub:7400").is_err());
        assert!(Target::parse("hub:7400").is_err());
        assert!(Target::parse("http://hub:7400/?x=1").is_err());
    }

    #[test]
    fn subscriber_ids_are_percent_encoded() {
        assert_eq!(percent_encode("chat-proxy-0"), "chat-proxy-0");
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
    }
}
