//! The WebSocket splice: bytes copied both ways between the client's side (a plain `TcpStream`
//! or a TLS stream over one, anything [`ClientIo`]) and the owner's `TcpStream` after the 101,
//! with the proxy's own frames injected only when it must end the connection.
//!
//! Memory is the point of this module's shape. An idle connection holds no copy buffer: the
//! task waits for readiness (`poll_read_ready`, which uses the socket's own waker slot, no
//! allocation), then borrows a buffer from a small per-thread pool, reads and writes until the
//! socket would block, and gives the buffer back. A buffer stays with a connection only while
//! the other side cannot take the bytes yet (backpressure). So an idle connection costs its two
//! sockets, this task and its registry entry. Over TLS the client side is read the same way,
//! into the borrowed buffer; what rustls itself keeps while idle is its connection state and
//! its record buffer (see `docs/architecture.md`). Bytes a TLS stream accepted but has not
//! sent yet are flushed on every wake-up (a no-op for a `TcpStream`).
//!
//! Each direction runs a [`FrameTracker`] so the proxy knows where frames and messages end:
//! to reset a client it waits (briefly) for a message boundary on the upstream→client
//! direction, then writes the reset text frame and a close frame (RFC 6455 §5.5.1) with the
//! reason's application code, and sends the upstream a masked close frame (§5.3) with 1001.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use wscluster_ring::contract::{ResetFrame, ResetReason};
use wscluster_runtime::buffers::BufferPool;

use crate::frame::{FrameTracker, client_close, server_close, server_text};
use crate::registry::{Command, ConnControl, Registry};

/// Size of a pooled copy buffer. 16 KiB covers a typical TCP read on loopback and a full TLS
/// record's worth of data; larger frames simply take several reads.
const BUF_BYTES: usize = 16 * 1024;
/// Buffers kept per worker thread. Only connections with bytes in flight hold one, so a few
/// dozen per thread cover bursts without keeping memory for idle connections.
const POOL_PER_THREAD: usize = 64;
/// Reads (each written on at once) or retried writes per direction per poll before the task
/// yields, for fairness between connections on one worker: a busy connection moves up to 16
/// reads' worth of bytes each way per turn.
const STEPS_PER_POLL: usize = 16;
/// How long a reset waits for the current upstream message to end before giving up on the
/// reset text (a close frame alone may still go at a frame boundary).
const BOUNDARY_WAIT: Duration = Duration::from_millis(1000);
/// How long the proxy's final frames may take to write.
const WRITE_WAIT: Duration = Duration::from_millis(1000);
/// How long the proxy waits for both peers to close after its close frames, so the sockets
/// end with FIN rather than RST (§7.1.1: the server closes TCP after the close handshake).
const LINGER: Duration = Duration::from_millis(1000);
/// Close code "going away" (§7.4.1), sent to the upstream on a reset, and to both on idle.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code "message too big" (§7.4.1), sent to the side that exceeded `maxFrameBytes`.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// A close frame the proxy sends (RFC 6455 §5.5.1): its code and reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Close {
    /// The status code.
    code: u16,
    /// The reason, for people reading logs.
    reason: &'static str,
}

/// To the side that is not at fault when the proxy ends a connection.
const GOING_AWAY: Close = Close {
    code: CLOSE_GOING_AWAY,
    reason: "going away",
};
/// To both sides of a connection idle for `idleTimeoutSeconds`.
const IDLE_TIMEOUT: Close = Close {
    code: CLOSE_GOING_AWAY,
    reason: "idle timeout",
};
/// To the side that sent a frame over `maxFrameBytes`.
const TOO_BIG: Close = Close {
    code: CLOSE_TOO_BIG,
    reason: "message too big",
};

/// The copy buffers, borrowed only while bytes move.
const BUFFERS: BufferPool = BufferPool {
    size: BUF_BYTES,
    keep: POOL_PER_THREAD,
};

/// How a splice ended.
#[derive(Debug)]
pub enum End {
    /// Both peers closed.
    Closed,
    /// The proxy reset the client (a ring change or a drain).
    Reset(ResetReason),
    /// Nothing passed for the idle timeout.
    Idle,
    /// A frame over `maxFrameBytes`; `from_client` says who sent it.
    FrameTooBig {
        /// Whether the client (rather than the upstream) sent it.
        from_client: bool,
    },
    /// A socket failed.
    Error(io::Error),
}

impl End {
    /// A label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Reset(_) => "reset",
            End::Idle => "idle",
            End::FrameTooBig { .. } => "frame-too-big",
            End::Error(_) => "io",
        }
    }
}

/// Bytes read but not yet written.
struct Pending {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

/// One direction of the splice.
struct Dir {
    tracker: FrameTracker,
    pending: Option<Pending>,
    /// The source sent FIN.
    eof: bool,
    /// The destination's write side is shut down.
    shut: bool,
    /// The stream was cut mid-frame: no frame of ours may follow.
    broken: bool,
}

impl Dir {
    fn new(max_frame_bytes: u64) -> Self {
        Dir {
            tracker: FrameTracker::new(max_frame_bytes),
            pending: None,
            eof: false,
            shut: false,
            broken: false,
        }
    }

    /// Whether a frame of ours may be written to this direction's destination now.
    fn can_inject(&self) -> bool {
        !self.broken
            && self.pending.is_none()
            && self.tracker.at_frame_boundary()
            && !self.tracker.closed()
    }
}

/// Why the copy loop stopped.
enum Stop {
    Closed,
    Command(Command),
    TooBig { from_client: bool },
    Error(io::Error),
}

/// The client side of a splice or of the fast path: a plain `TcpStream`, or a TLS stream over
/// one. One splice serves both; only the client side differs.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for T {}

/// A spliced connection: the client and upstream sockets and each direction's state.
pub struct Splice<'a, C> {
    client: C,
    upstream: TcpStream,
    c2u: Dir,
    u2c: Dir,
    control: &'a ConnControl,
    registry: &'a Registry,
}

impl<'a, C: ClientIo> Splice<'a, C> {
    /// A splice of two upgraded sockets; `control` is how the registry reaches it.
    pub fn new(
        client: C,
        upstream: TcpStream,
        max_frame_bytes: u64,
        control: &'a ConnControl,
        registry: &'a Registry,
    ) -> Self {
        Splice {
            client,
            upstream,
            c2u: Dir::new(max_frame_bytes),
            u2c: Dir::new(max_frame_bytes),
            control,
            registry,
        }
    }

    /// Copies until both sides close, a command arrives, or something breaks; then ends the
    /// connection as the cause requires. `client_pre` and `upstream_pre` are bytes each side
    /// sent right after the handshake that the HTTP layer had already read.
    pub async fn run(mut self, client_pre: Bytes, upstream_pre: Bytes) -> End {
        // Both buffers are dropped here either way: an empty `Bytes` from hyper can still pin
        // its whole read buffer, which an idle connection must not keep.
        let early = if client_pre.is_empty() && upstream_pre.is_empty() {
            drop((client_pre, upstream_pre));
            None
        } else {
            Box::pin(self.forward_pre(client_pre, upstream_pre)).await
        };
        let stop = match early {
            Some(stop) => stop,
            None => self.copy().await,
        };
        match stop {
            Stop::Closed => End::Closed,
            Stop::Error(e) => End::Error(e),
            Stop::Command(Command::Reset {
                reason,
                retry_after_ms,
                ring_version,
            }) => {
                let text = ResetFrame::new(reason, retry_after_ms, ring_version).to_json();
                let to_client = Close {
                    code: reason.close_code(),
                    reason: reason.as_str(),
                };
                Box::pin(self.finish(Some(text), to_client, GOING_AWAY)).await;
                End::Reset(reason)
            }
            Stop::Command(Command::Idle) => {
                Box::pin(self.finish(None, IDLE_TIMEOUT, IDLE_TIMEOUT)).await;
                End::Idle
            }
            Stop::TooBig { from_client } => {
                let (to_client, to_upstream) = if from_client {
                    (TOO_BIG, GOING_AWAY)
                } else {
                    (GOING_AWAY, TOO_BIG)
                };
                Box::pin(self.finish(None, to_client, to_upstream)).await;
                End::FrameTooBig { from_client }
            }
        }
    }

    async fn forward_pre(&mut self, client_pre: Bytes, upstream_pre: Bytes) -> Option<Stop> {
        for (from_client, bytes) in [(true, client_pre), (false, upstream_pre)] {
            if bytes.is_empty() {
                continue;
            }
            let (dir, dst): (_, &mut dyn ClientIo) = if from_client {
                (&mut self.c2u, &mut self.upstream)
            } else {
                (&mut self.u2c, &mut self.client)
            };
            if dir.tracker.feed(&bytes, false).is_err() {
                dir.broken = true;
                return Some(Stop::TooBig { from_client });
            }
            if let Err(e) = dst.write_all(&bytes).await {
                return Some(Stop::Error(e));
            }
        }
        None
    }

    /// The copy loop: both directions driven from one poll, so an idle connection is one
    /// parked task with its wakers in the two sockets' reader slots.
    ///
    /// A wake-up is paid for per message, so it does as little as it can: the task's waker is
    /// registered with the control handle once (again only if it changes), one copy buffer per
    /// poll serves both directions and bytes are written on from it at once, and budgeting is
    /// left to this loop's own step limit (`unconstrained`) rather than checked per read.
    async fn copy(&mut self) -> Stop {
        let Splice {
            client,
            upstream,
            c2u,
            u2c,
            control,
            registry,
        } = self;
        let mut registered: Option<Waker> = None;
        tokio::task::unconstrained(poll_fn(|cx| {
            if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                control.register(cx.waker());
                registered = Some(cx.waker().clone());
            }
            if let Some(cmd) = control.signalled() {
                return Poll::Ready(Stop::Command(cmd));
            }
            let mut scratch = BUFFERS.take();
            let driven = drive(cx, &mut *client, &mut *upstream, c2u, &mut scratch, true).and_then(
                |moved| {
                    let back = drive(cx, &mut *upstream, &mut *client, u2c, &mut scratch, false);
                    back.map(|more| moved | more)
                },
            );
            BUFFERS.give(scratch);
            // What a TLS stream took but could not send yet goes out when the socket can take
            // it; this poll is woken then.
            if let Poll::Ready(Err(e)) = Pin::new(&mut *client).poll_flush(cx) {
                return Poll::Ready(Stop::Error(e));
            }
            let moved = match driven {
                Ok(moved) => moved,
                Err(stop) => return Poll::Ready(stop),
            };
            if moved {
                control
                    .last_active
                    .store(registry.now_secs(), Ordering::Relaxed);
            }
            closing(cx, c2u, u2c, &mut *upstream, &mut *client)
        }))
        .await
    }

    /// Ends the connection with the proxy's own frames: waits briefly for the upstream's current
    /// message to end, writes `text` (if any) and a close frame to the client, a masked close to
    /// the upstream, shuts both down and lingers for their FINs.
    async fn finish(&mut self, text: Option<String>, to_client: Close, to_upstream: Close) {
        let at_message = tokio::time::timeout(BOUNDARY_WAIT, self.reach_message_boundary())
            .await
            .unwrap_or(false);
        // Bytes the client already sent go to the upstream first, so its stream stays whole.
        if let Some(p) = self.c2u.pending.take() {
            let ok =
                tokio::time::timeout(WRITE_WAIT, self.upstream.write_all(&p.buf[p.start..p.end]))
                    .await
                    .is_ok_and(|r| r.is_ok());
            self.c2u.broken |= !ok;
            BUFFERS.give(p.buf);
        }
        let mut out = Vec::new();
        if self.u2c.can_inject() {
            if let Some(text) = text.as_deref().filter(|_| at_message) {
                server_text(&mut out, text);
            }
            server_close(&mut out, to_client.code, to_client.reason);
        }
        let _ = tokio::time::timeout(WRITE_WAIT, async {
            self.client.write_all(&out).await?;
            self.client.shutdown().await
        })
        .await;
        let mut up = Vec::new();
        if self.c2u.can_inject() {
            client_close(
                &mut up,
                to_upstream.code,
                to_upstream.reason,
                rand::random(),
            );
        }
        let _ = tokio::time::timeout(WRITE_WAIT, async {
            self.upstream.write_all(&up).await?;
            self.upstream.shutdown().await
        })
        .await;
        if let Some(p) = self.u2c.pending.take() {
            BUFFERS.give(p.buf);
        }
        let _ = tokio::time::timeout(LINGER, async {
            let (mut a, mut b) = ([0u8; 256], [0u8; 256]);
            let (mut client_eof, mut upstream_eof) = (false, false);
            while !(client_eof && upstream_eof) {
                tokio::select! {
                    r = self.client.read(&mut a), if !client_eof => client_eof = !matches!(r, Ok(n) if n > 0),
                    r = self.upstream.read(&mut b), if !upstream_eof => upstream_eof = !matches!(r, Ok(n) if n > 0),
                }
            }
        })
        .await;
    }

    /// Forwards upstream bytes up to the end of the current message; anything after it is
    /// dropped (the connection is ending). False if the upstream closed or broke first.
    async fn reach_message_boundary(&mut self) -> bool {
        loop {
            if let Some(p) = self.u2c.pending.take() {
                if self.client.write_all(&p.buf[p.start..p.end]).await.is_err() {
                    BUFFERS.give(p.buf);
                    self.u2c.broken = true;
                    return false;
                }
                BUFFERS.give(p.buf);
            }
            if self.u2c.tracker.at_message_boundary() {
                return !self.u2c.broken;
            }
            if self.u2c.eof || self.u2c.broken {
                return false;
            }
            let mut buf = BUFFERS.take();
            let n = match self.upstream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    self.u2c.eof = true;
                    BUFFERS.give(buf);
                    return false;
                }
                Ok(n) => n,
            };
            match self.u2c.tracker.feed(&buf[..n], true) {
                Ok(upto) => {
                    self.u2c.pending = Some(Pending {
                        buf,
                        start: 0,
                        end: upto,
                    })
                }
                Err(_) => {
                    self.u2c.broken = true;
                    BUFFERS.give(buf);
                    return false;
                }
            }
        }
    }
}

/// After a wake-up's copying: whether the splice is over. The close handshake complete both
/// ways (§7.1.1) with one peer having closed TCP ends it (both sockets close, as the server
/// would); otherwise a FIN from one peer is relayed to the other as a half-close, and the
/// splice ends once both are.
#[inline]
fn closing(
    cx: &mut Context<'_>,
    c2u: &mut Dir,
    u2c: &mut Dir,
    upstream_wr: &mut TcpStream,
    client_wr: &mut impl ClientIo,
) -> Poll<Stop> {
    // Every wake-up of a live connection asks; without a FIN (`shut` follows `eof`) nothing
    // below can apply.
    if !c2u.eof && !u2c.eof {
        return Poll::Pending;
    }
    let flushed = c2u.pending.is_none() && u2c.pending.is_none();
    if flushed && (c2u.eof || u2c.eof) && c2u.tracker.closed() && u2c.tracker.closed() {
        return Poll::Ready(Stop::Closed);
    }
    let shutdowns: [(&mut Dir, &mut dyn ClientIo); 2] =
        [(&mut *c2u, upstream_wr), (&mut *u2c, client_wr)];
    for (dir, dst) in shutdowns {
        if dir.eof && dir.pending.is_none() && !dir.shut {
            match Pin::new(dst).poll_shutdown(cx) {
                Poll::Ready(_) => dir.shut = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
    if c2u.shut && u2c.shut {
        return Poll::Ready(Stop::Closed);
    }
    Poll::Pending
}

/// Moves what `src` has to `dst` until one of them would block (or the fairness budget is
/// spent). Bytes are read into `scratch` and written on from it at once; only what `dst` cannot
/// take yet stays behind, in that very buffer (`scratch` is then replaced from the pool), so
/// the common case copies nothing twice. Reads use `poll_read`, which clears a socket's
/// readiness after a short read, so a message costs one `read` and one `write` and no extra
/// `EAGAIN` probe. Returns whether any byte moved.
fn drive(
    cx: &mut Context<'_>,
    src: &mut (impl AsyncRead + Unpin),
    dst: &mut (impl AsyncWrite + Unpin),
    dir: &mut Dir,
    scratch: &mut Box<[u8]>,
    from_client: bool,
) -> Result<bool, Stop> {
    let mut moved = false;
    for _ in 0..STEPS_PER_POLL {
        if dir.pending.is_some() {
            if !write_pending(cx, dst, dir)? {
                return Ok(moved);
            }
            continue;
        }
        if dir.eof {
            return Ok(moved);
        }
        let mut read = ReadBuf::new(scratch);
        let n = match Pin::new(&mut *src).poll_read(cx, &mut read) {
            Poll::Pending => return Ok(moved),
            Poll::Ready(Err(e)) => return Err(Stop::Error(e)),
            Poll::Ready(Ok(())) => read.filled().len(),
        };
        if n == 0 {
            dir.eof = true;
            return Ok(moved);
        }
        moved = true;
        if let Err(e) = dir.tracker.feed(&scratch[..n], false) {
            dir.broken = true;
            tracing::debug!(len = e.len, from_client, "frame over maxFrameBytes");
            return Err(Stop::TooBig { from_client });
        }
        let written = written(Pin::new(&mut *dst).poll_write(cx, &scratch[..n]))?.unwrap_or(0);
        if written < n {
            dir.pending = Some(Pending {
                buf: std::mem::replace(scratch, BUFFERS.take()),
                start: written,
                end: n,
            });
        }
    }
    // Budget spent with bytes still flowing: come back after the other tasks had a turn.
    cx.waker().wake_by_ref();
    Ok(moved)
}

/// Writes on some of the bytes `dir` holds back, giving the buffer back to the pool once they
/// are all written. False when `dst` would block.
fn write_pending(
    cx: &mut Context<'_>,
    dst: &mut (impl AsyncWrite + Unpin),
    dir: &mut Dir,
) -> Result<bool, Stop> {
    let Some(p) = dir.pending.as_mut() else {
        return Ok(true);
    };
    let Some(w) = written(Pin::new(dst).poll_write(cx, &p.buf[p.start..p.end]))? else {
        return Ok(false);
    };
    p.start += w;
    if p.start == p.end
        && let Some(done) = dir.pending.take()
    {
        BUFFERS.give(done.buf);
    }
    Ok(true)
}

/// A write's outcome: how much was written, `None` if the socket would block; writing zero
/// bytes to a socket is an error (it cannot take more, ever).
fn written(poll: Poll<io::Result<usize>>) -> Result<Option<usize>, Stop> {
    match poll {
        Poll::Pending => Ok(None),
        Poll::Ready(Err(e)) => Err(Stop::Error(e)),
        Poll::Ready(Ok(0)) => Err(Stop::Error(io::ErrorKind::WriteZero.into())),
        Poll::Ready(Ok(w)) => Ok(Some(w)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpSocket;
    use wscluster_ring::KeyHash;

    use super::*;

    /// A connected pair on loopback, (peer, proxy side), with small buffers: the peer's
    /// receive buffer and the proxy side's send buffer, so when the peer lags the proxy's
    /// 16 KiB writes fall short (partial writes) or would block.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpSocket::new_v4().expect("socket");
        listener.set_recv_buffer_size(4096).expect("rcvbuf");
        listener
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = listener.listen(16).expect("listen");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(4096).expect("sndbuf");
        let proxy_side = socket
            .connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (peer, _) = listener.accept().await.expect("accept");
        (peer, proxy_side)
    }

    /// Text frames of 0..=125-byte payloads, masked as a client sends them when `mask` is set.
    fn frames(count: usize, mask: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..count {
            let payload: Vec<u8> = (0..i % 126).map(|j| (i + j) as u8).collect();
            if mask {
                let key = [(i % 251) as u8, 1, 2, 3];
                out.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
                out.extend_from_slice(&key);
                out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
            } else {
                out.extend_from_slice(&[0x81, payload.len() as u8]);
                out.extend_from_slice(&payload);
            }
        }
        out
    }

    /// Reads `len` bytes in small pieces, yielding between them, so the writer keeps outrunning
    /// this reader.
    async fn read_slowly(stream: &mut (impl AsyncRead + Unpin), len: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(len);
        let mut piece = [0u8; 512];
        while got.len() < len {
            let n = stream.read(&mut piece).await.expect("read");
            assert!(n > 0, "closed after {} of {len} bytes", got.len());
            got.extend_from_slice(&piece[..n]);
            tokio::task::yield_now().await;
        }
        got
    }

    #[tokio::test]
    async fn bytes_held_back_by_slow_readers_arrive_whole_and_in_order_both_ways() {
        let (mut client_peer, client) = pair().await;
        let (mut upstream_peer, upstream) = pair().await;
        let registry = Arc::new(Registry::new());
        let registration = registry.register("k", KeyHash::of("k"), Arc::from("m"), 1);
        let down = frames(20_000, false);
        let up = frames(20_000, true);
        let splice = Splice::new(client, upstream, 1 << 20, &registration.control, &registry);
        let (mut client_rd, mut client_wr) = client_peer.split();
        let (mut upstream_rd, mut upstream_wr) = upstream_peer.split();
        let peers = async {
            let (got_down, got_up, (), ()) = tokio::join!(
                read_slowly(&mut client_rd, down.len()),
                read_slowly(&mut upstream_rd, up.len()),
                async { client_wr.write_all(&up).await.expect("client writes") },
                async { upstream_wr.write_all(&down).await.expect("upstream writes") },
            );
            client_wr.shutdown().await.expect("client FIN");
            upstream_wr.shutdown().await.expect("upstream FIN");
            (got_down, got_up)
        };
        let (end, (got_down, got_up)) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(splice.run(Bytes::new(), Bytes::new()), peers)
        })
        .await
        .expect("the splice and its peers finish");
        assert!(got_down == down, "upstream→client bytes differ");
        assert!(got_up == up, "client→upstream bytes differ");
        assert!(matches!(end, End::Closed), "ended {end:?}");
    }
}
