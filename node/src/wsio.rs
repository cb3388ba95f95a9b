//! The byte stream under a session's WebSocket: it holds no read buffer while the client is
//! silent, as the proxy's splice does.
//!
//! tungstenite keeps its own read buffer for the session's life, allocated when the socket is
//! made, and reads into it only as much as it has room for. So the session gives tungstenite
//! a tiny one ([`WS_READ_BUFFER_BYTES`]) and [`LeanIo`] does the reading: when tungstenite asks
//! for bytes, it borrows a [`READ_CHUNK`] buffer from a small per-thread pool
//! ([`wscluster_runtime::buffers`], the same the proxy's splice borrows from), reads what the
//! socket has, hands tungstenite what fits, and keeps the rest only until tungstenite asks
//! again. tungstenite reads until the socket would block, so by the time a session waits for
//! its client, the borrowed buffer is back in the pool: an idle session costs the socket and
//! tungstenite's small state, never a read buffer. One syscall still reads up to
//! [`READ_CHUNK`] bytes, as many as before or more.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use wscluster_runtime::buffers::BufferPool;

/// tungstenite's own read buffer (its `read_buffer_size`), held for the session's life. Large
/// enough for a frame header and a client's ping; bigger frames grow it (up to
/// `--max-frame-bytes`), filled from [`LeanIo`]'s borrowed buffer by copies, not syscalls.
pub const WS_READ_BUFFER_BYTES: usize = 64;
/// Size of a borrowed read buffer: the most one read syscall takes from the socket.
pub const READ_CHUNK: usize = 8 * 1024;
/// Buffers kept per worker thread. Only sessions with unread bytes hold one, and only while
/// tungstenite is between two reads of the same wake-up.
const POOL_PER_THREAD: usize = 16;

/// The read buffers, borrowed only while bytes move.
const BUFFERS: BufferPool = BufferPool {
    size: READ_CHUNK,
    keep: POOL_PER_THREAD,
};

/// Bytes read from the socket that tungstenite has not taken yet.
struct Ahead {
    /// The borrowed buffer.
    buf: Box<[u8]>,
    /// The first byte not taken.
    start: usize,
    /// One past the last byte read.
    end: usize,
}

/// A socket read through borrowed buffers; see the module docs. Writes go straight through.
pub struct LeanIo<S> {
    /// The socket.
    io: S,
    /// Read ahead of tungstenite, only between two of its reads.
    ahead: Option<Ahead>,
}

impl<S> LeanIo<S> {
    /// Reads and writes `io`.
    pub fn new(io: S) -> Self {
        LeanIo { io, ahead: None }
    }

    /// Copies read-ahead bytes into `out`; gives the buffer back once all are taken.
    fn take_ahead(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let Some(ahead) = &mut self.ahead else {
            return false;
        };
        let n = out.remaining().min(ahead.end - ahead.start);
        out.put_slice(&ahead.buf[ahead.start..ahead.start + n]);
        ahead.start += n;
        if ahead.start == ahead.end
            && let Some(done) = self.ahead.take()
        {
            BUFFERS.give(done.buf);
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LeanIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.take_ahead(out) {
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_CHUNK {
            return Pin::new(&mut this.io).poll_read(cx, out);
        }
        let mut buf = BUFFERS.take();
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut this.io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let end = read.filled().len();
                this.ahead = (end > 0).then_some(Ahead { buf, start: 0, end });
                this.take_ahead(out);
                Poll::Ready(Ok(()))
            }
            other => {
                BUFFERS.give(buf);
                other
            }
        }
    }
}

wscluster_runtime::delegate_async_write!(LeanIo, io);

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_are_served_from_one_borrowed_buffer_given_back_when_taken() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        let mut lean = LeanIo::new(io);
        let sent: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        peer.write_all(&sent).await.expect("write");
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        while got.len() < sent.len() {
            let n = lean.read(&mut small).await.expect("read");
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
            assert_eq!(lean.ahead.is_some(), got.len() < sent.len());
        }
        assert_eq!(got, sent);
        assert!(
            lean.ahead.is_none(),
            "nothing held once every byte is taken"
        );
        drop(peer);
        assert_eq!(lean.read(&mut small).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn a_read_that_would_block_holds_no_buffer() {
        let (_peer, io) = tokio::io::duplex(1024);
        let mut lean = LeanIo::new(io);
        let mut small = [0u8; 16];
        let pending = futures_util::FutureExt::now_or_never(lean.read(&mut small));
        assert!(pending.is_none(), "nothing to read");
        assert!(lean.ahead.is_none());
    }
}
