//! The HTTP/1.1 accept loop of every hyper listener in wscluster (node, proxy admin, operator
//! admin, ring hub, local mode's control API).
//!
//! Per listener: at most [`ServeOptions::max_connections`] connections at once (more wait in
//! the listen backlog), `TCP_NODELAY`, a task and a span per connection, accept errors (such
//! as running out of file descriptors) logged and survived after a short pause. Per
//! connection: a header-read timeout, upgrades (WebSocket) handed to the handler, and at
//! shutdown a graceful close (in-flight requests finish, idle keep-alive connections close)
//! bounded by [`ServeOptions::grace`]. [`serve`] returns once every connection is closed or the
//! grace has passed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info_span, warn};

use crate::BoxError;

/// Default of [`ServeOptions::max_connections`]: plenty for an admin or control port.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`ServeOptions::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`ServeOptions::grace`].
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (for example EMFILE) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Listen backlog of the node's and the proxy's listeners (tokio's `bind` uses 1,024). A ring
/// change sends the moved clients of every proxy to one new node within a second or two, and a
/// SYN dropped at a full accept queue costs its client the kernel's 1 s retransmit: the
/// 10,000-client scale-up saw up to a tenth of the new node's upgrades in the (1 s, 2 s]
/// bucket. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 8192;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's `bind`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How a listener is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Names the listener in log lines and connection spans (`admin`, `ring-stream`).
    pub name: &'static str,
    /// Most connections served at once (at least 1); the next waits in the backlog until one
    /// closes.
    pub max_connections: usize,
    /// How long a client may take to send a request head, on every request of a connection
    /// (so it also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// How long connections may take to finish after shutdown before they are dropped.
    pub grace: Duration,
}

impl ServeOptions {
    /// The defaults: [`DEFAULT_MAX_CONNECTIONS`], [`DEFAULT_HEADER_READ_TIMEOUT`],
    /// [`DEFAULT_GRACE`].
    pub const fn new(name: &'static str) -> ServeOptions {
        ServeOptions {
            name,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            grace: DEFAULT_GRACE,
        }
    }
}

/// Serves `listener` with `handler` until `shutdown`; see the module docs. The handler answers
/// every request (it cannot fail: errors are responses). For an upgrade it answers 101 and
/// takes the connection with `hyper::upgrade::on(&mut request)`.
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    options: ServeOptions,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tracker = TaskTracker::new();
    // 0 would serve nothing and more than MAX_PERMITS would panic: clamp to what works.
    let cap = options.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(cap));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    while let Some((stream, peer, permit)) = accept(&listener, &permits, &options, &shutdown).await
    {
        let connection = connection(
            stream,
            builder.clone(),
            handler.clone(),
            shutdown.clone(),
            options.grace,
        );
        tracker.spawn(
            async move {
                connection.await;
                drop(permit);
            }
            .instrument(info_span!("connection", listener = options.name, %peer)),
        );
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(options.grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            listener = options.name,
            "connections still open after the shutdown grace period"
        );
    }
}

/// The next connection and its permit; `None` at shutdown.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    options: &ServeOptions,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let permit = tokio::select! {
        () = shutdown.cancelled() => return None,
        permit = Arc::clone(permits).acquire_owned() => permit.ok()?,
    };
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small responses and WebSocket frames should leave at once.
                let _ = stream.set_nodelay(true);
                return Some((stream, peer, permit));
            }
            Err(e) => {
                warn!(listener = options.name, error = %e, "accept failed; pausing");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Serves one connection until it closes, or at shutdown closes it gracefully within `grace`.
async fn connection<H, Fut, B>(
    stream: TcpStream,
    builder: http1::Builder,
    handler: H,
    shutdown: CancellationToken,
    grace: Duration,
) where
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let service = service_fn(move |req| {
        let response = handler(req);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(grace, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    debug!("connection dropped after the shutdown grace period");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests;
