//! The first request on a client connection, read before hyper sees it, so that the common case
//! — a fresh connection whose first request is a WebSocket upgrade — is routed and spliced
//! without an HTTP server stack: parse the head with `httparse`, write the owner's 101 head to
//! the client as it came, splice. Everything else (plain HTTP, odd or malformed heads, heads
//! over the size limit, upgrades that would be refused) goes to hyper with the bytes already
//! read put back in front of the socket ([`Prefixed`]), so there is one place that answers
//! errors and one HTTP implementation for everything that is not the fast path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;

use wscluster_ring::contract::{RequestTarget, split_target};

use crate::key::KeyInput;
use crate::route::RequestHead;

/// Most header fields in a request head the fast path takes (hyper's own default is 100).
pub const MAX_HEADERS: usize = 100;
/// First read size: a browser's upgrade request is about 500 bytes.
const FIRST_READ: usize = 1024;

/// What the first read of a connection found.
#[derive(Debug)]
pub enum First {
    /// A complete request head, then anything the client sent after it (frames sent before
    /// the 101, rare): the fast path parses it once ([`RawHead::parse`]) and gives it to hyper
    /// whole if it is not an upgrade the fast path takes.
    Head(Bytes),
    /// Bytes that are not a complete head (malformed, over the size limit, or cut short by
    /// the client): these go to hyper first, which answers them.
    Other(Bytes),
    /// The client closed before sending anything.
    Closed,
}

/// Reads until the first request head is complete, over `max_head` bytes, or unparseable.
/// The caller bounds the time (the header read timeout).
pub async fn read_first(
    stream: &mut (impl AsyncRead + Unpin),
    max_head: usize,
) -> io::Result<First> {
    let mut buf = BytesMut::with_capacity(FIRST_READ.min(max_head.max(1)));
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(FIRST_READ);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(if buf.is_empty() {
                First::Closed
            } else {
                First::Other(buf.freeze())
            });
        }
        match head_complete(&buf) {
            Some(true) => return Ok(First::Head(buf.freeze())),
            Some(false) => return Ok(First::Other(buf.freeze())),
            None if buf.len() >= max_head => return Ok(First::Other(buf.freeze())),
            None => {}
        }
    }
}

/// `None`: the head is not complete yet. `Some(true)`: it is (the fast path parses it then).
/// `Some(false)`: it can never be (malformed), so hyper should answer it at once.
///
/// The common case, a whole head in the first read, is one search for its blank line; only a
/// head without one (split across reads, bare-LF line ends, garbage) is run through httparse.
fn head_complete(bytes: &[u8]) -> Option<bool> {
    if memchr::memmem::find(bytes, b"\r\n\r\n").is_some() {
        return Some(true);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut fields).parse(bytes) {
        Ok(httparse::Status::Complete(_)) => Some(true),
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(false),
    }
}

/// Whether any of a header field's `values` (comma-separated lists, RFC 9110 §5.6.1) holds
/// `token`, compared case-insensitively: the `Connection: upgrade` / `Upgrade: websocket`
/// check (RFC 6455 §4.1) for both the fast path and hyper's.
pub fn lists_token<'a>(mut values: impl Iterator<Item = &'a [u8]>, token: &[u8]) -> bool {
    values.any(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// A parsed upgrade request head, borrowed from the bytes read: what the fast path routes on
/// and forwards, with no allocation.
#[derive(Debug)]
pub struct RawHead<'h> {
    /// The request target's path and query, cut as hyper's path cuts them.
    target: RequestTarget<'h>,
    /// The header fields as sent.
    fields: &'h [httparse::Header<'h>],
    /// The head's length in bytes: what follows it in the buffer are early frames.
    pub len: usize,
}

impl<'h> RawHead<'h> {
    /// Parses the head at the start of `bytes` into `fields`, if it is a WebSocket upgrade the
    /// fast path takes; `None` for anything else.
    pub fn parse(
        bytes: &'h [u8],
        fields: &'h mut [httparse::Header<'h>; MAX_HEADERS],
    ) -> Option<RawHead<'h>> {
        let mut parsed = httparse::Request::new(fields);
        let Ok(httparse::Status::Complete(len)) = parsed.parse(bytes) else {
            return None;
        };
        RawHead::of(parsed, len)
    }

    /// The head, if it is an HTTP/1.1 `GET` in origin form asking for a WebSocket upgrade with
    /// no body.
    fn of(parsed: httparse::Request<'h, 'h>, len: usize) -> Option<RawHead<'h>> {
        if parsed.version != Some(1) || parsed.method != Some("GET") {
            return None;
        }
        let target = parsed.path?;
        if !target.starts_with('/') {
            return None;
        }
        let head = RawHead {
            target: split_target(target),
            fields: parsed.headers,
            len,
        };
        let body = head.header_values("transfer-encoding").next().is_some()
            || head.header_values("content-length").any(|v| v != b"0");
        let upgrade = lists_token(head.header_values("upgrade"), b"websocket")
            && lists_token(head.header_values("connection"), b"upgrade");
        (!body && upgrade).then_some(head)
    }
}

impl KeyInput for RawHead<'_> {
    fn target(&self) -> RequestTarget<'_> {
        self.target
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

impl RequestHead for RawHead<'_> {
    fn method(&self) -> &str {
        // `RawHead::of` takes nothing else.
        "GET"
    }

    fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|h| (h.name.as_bytes(), h.value))
    }
}

/// Appends a whole response that ends the connection: status line, `fields` (hop-by-hop and
/// framing fields are the caller's to have removed), `content-length`, `connection: close`,
/// and `body`.
pub fn write_closing_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: &HeaderMap,
    body: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(body);
}

/// A client socket (plain or TLS) with bytes already read from it put back in front, for
/// hyper.
#[derive(Debug)]
pub struct Prefixed<S = TcpStream> {
    prefix: Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is read before anything else from `io`.
    pub fn new(prefix: Bytes, io: S) -> Self {
        Prefixed { prefix, io }
    }

    /// The bytes not read yet and the socket.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.io)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // Release the read buffer the prefix was cut from.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

wscluster_runtime::delegate_async_write!(Prefixed, io);

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderValue};

    /// What the fast path makes of a first read: wait for more, hand it to hyper, or take it.
    fn kind(raw: &str) -> &'static str {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match head_complete(raw.as_bytes()) {
            None => "partial",
            Some(false) => "other",
            Some(true) if RawHead::parse(raw.as_bytes(), &mut fields).is_none() => "other",
            Some(true) => "upgrade",
        }
    }

    const UPGRADE: &str = "GET /connect/u1?since=4 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn only_a_plain_websocket_upgrade_takes_the_fast_path() {
        assert_eq!(kind(UPGRADE), "upgrade");
        assert_eq!(kind(&UPGRADE[..40]), "partial");
        assert_eq!(
            kind(&UPGRADE.replace("\r\n", "\n")),
            "upgrade",
            "bare LF line ends"
        );
        assert_eq!(
            kind("\x16\x03\x01\x02\x00"),
            "other",
            "garbage with no blank line"
        );
        for (what, raw) in [
            (
                "plain GET",
                "GET /send?userId=a HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            ),
            ("HTTP/1.0", UPGRADE.replace("HTTP/1.1", "HTTP/1.0")),
            ("POST", UPGRADE.replace("GET", "POST")),
            ("h2c", UPGRADE.replace("websocket", "h2c")),
            (
                "no Connection token",
                UPGRADE.replace("keep-alive, Upgrade", "keep-alive"),
            ),
            (
                "a body",
                UPGRADE.replace("Host: x", "Host: x\r\nContent-Length: 3"),
            ),
            (
                "chunked",
                UPGRADE.replace("Host: x", "Host: x\r\nTransfer-Encoding: chunked"),
            ),
            (
                "absolute form",
                UPGRADE.replace("/connect/u1?since=4", "http://h/connect/u1"),
            ),
            ("garbage", "\x16\x03\x01\x02\x00\r\n\r\n".to_owned()),
            ("bad header name", UPGRADE.replace("Host: x", "Ho st: x")),
        ] {
            assert_eq!(kind(&raw), "other", "{what}");
        }
        // An explicit empty body is still fine.
        assert_eq!(
            kind(&UPGRADE.replace("Host: x", "Host: x\r\nContent-Length: 0")),
            "upgrade"
        );
    }

    #[test]
    fn the_raw_head_gives_path_query_and_every_field_case_insensitively() {
        let bytes = [UPGRADE.as_bytes(), &[0x81, 0x80]].concat();
        assert_eq!(head_complete(&bytes), Some(true));
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = RawHead::parse(&bytes, &mut fields).expect("upgrade");
        assert_eq!(head.len, UPGRADE.len());
        assert_eq!(head.target().path_and_query, "/connect/u1?since=4");
        assert_eq!(head.target().path, "/connect/u1");
        assert_eq!(head.target().query, Some("since=4"));
        assert_eq!(head.fields.len(), 5);
        let version: Vec<&[u8]> = head.header_values("sec-websocket-version").collect();
        assert_eq!(version, [b"13"]);
        assert_eq!(head.fields().count(), 5);
    }

    #[test]
    fn a_closing_response_is_framed_by_its_length() {
        let mut fields = HeaderMap::new();
        fields.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        let mut out = Vec::new();
        write_closing_response(&mut out, StatusCode::SERVICE_UNAVAILABLE, &fields, b"{}");
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
        );
    }

    #[tokio::test]
    async fn prefixed_bytes_come_first_then_the_socket() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(b" world").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), server);
        let mut got = String::new();
        p.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "hello world");
        let (rest, _) = p.into_parts();
        assert!(rest.is_empty());
    }
}
