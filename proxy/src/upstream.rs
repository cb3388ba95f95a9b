//! The upstream half of a WebSocket upgrade, spoken directly on the owner's `TcpStream`: the
//! request head is written in one `write`, the answer's head parsed with `httparse`, and on a
//! 101 the same socket goes straight to the [`crate::splice`].
//!
//! A hyper client connection per upgrade cost more than the whole rest of the upgrade (its
//! dispatcher, request channel, read and write buffers and the `Upgraded` hand-back), for a
//! connection that carries exactly one request; plain HTTP forwarding keeps the pooled hyper
//! client. A refusal (any status but 101) is read whole — head and a bounded body, framed by
//! `Content-Length`, chunked encoding or the end of the stream (RFC 9112 §6.3) — and passed on
//! to the client.

use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream, lookup_host};

use wscluster_ring::contract::{
    INTERNAL_HEADER_PREFIX, KEY_HEADER, PROXY_SECRET_HEADER, RING_VERSION_HEADER, percent_encode,
};

/// Most header fields accepted in the owner's answer.
const MAX_HEADERS: usize = 64;
/// Largest refusal body passed on; the owner's refusals are short JSON documents.
pub const MAX_REFUSAL_BODY: usize = 64 * 1024;
/// First read size for the answer: a 101 from the node is about 200 bytes.
const FIRST_READ: usize = 1024;

/// Opens a TCP connection to a member: `socket` when its address is an IP address and port,
/// else `address` resolved now. With `source`, the connection leaves from that local address
/// (`--upstream-source-address`), and only the member's addresses of the same family are tried.
pub async fn connect(
    socket: Option<SocketAddr>,
    address: &str,
    source: Option<IpAddr>,
) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return match socket {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(address).await,
        };
    };
    let targets: Vec<SocketAddr> = match socket {
        Some(addr) => vec![addr],
        None => lookup_host(address).await?.collect(),
    };
    let mut last = None;
    for target in targets
        .into_iter()
        .filter(|t| t.is_ipv4() == source.is_ipv4())
    {
        match connect_from(source, target).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{address} has no address of the source address {source}'s family"),
        )
    }))
}

/// One connection from `source` (any free port of it) to `target`.
async fn connect_from(source: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// The connector of the pooled HTTP clients to members (forwarded requests, the server API):
/// the same connect timeout and source address as an upgrade's connection.
pub fn http_connector(connect_timeout: Duration, source: Option<IpAddr>) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.set_local_address(source);
    connector
}

/// Why the owner's answer could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamError {
    /// The owner closed the connection before a whole answer arrived.
    #[error("the owner closed the connection mid-answer")]
    Closed,
    /// A socket error (kind only; the error itself goes to the debug log).
    #[error("I/O error: {0:?}")]
    Io(std::io::ErrorKind),
    /// Not HTTP/1.x, or a malformed head or chunk.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// The head or the refusal body is over its limit.
    #[error("answer too large")]
    TooLarge,
}

impl From<std::io::Error> for UpstreamError {
    fn from(e: std::io::Error) -> Self {
        UpstreamError::Io(e.kind())
    }
}

/// The owner's answer to the upgrade request.
#[derive(Debug)]
pub enum Answer {
    /// 101: the connection now speaks WebSocket.
    Switched {
        /// The answer's head as it came, status line to the empty line: written to the client
        /// as is on the fast path, parsed by [`fields`] for hyper's.
        head: Bytes,
        /// Bytes the owner sent right after its head (its first frames), to forward first.
        early: Bytes,
    },
    /// Any other final status: the owner refused the upgrade.
    Refused(Refusal),
}

/// An owner's refusal of an upgrade, read whole.
#[derive(Debug)]
pub struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// The header fields (hop-by-hop fields are the caller's to strip).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// How an upgrade sent to an owner ended, as the adaptive pacer and the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 101.
    Switched,
    /// Another status.
    Status(StatusCode),
    /// No answer; the [`crate::server`] failure's metric label (`upstream-unreachable`, ...).
    Failed(&'static str),
}

impl Outcome {
    /// The kind of refusal this is, if it says the owner is short of capacity (or not ready
    /// for the key yet): 5xx, 429, 421, or no answer. Other statuses are the request's
    /// fault (a bad key, an expired token) and say nothing about the owner's load.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Outcome::Switched => None,
            Outcome::Status(s) if s.is_server_error() => Some("5xx"),
            Outcome::Status(StatusCode::TOO_MANY_REQUESTS) => Some("429"),
            Outcome::Status(StatusCode::MISDIRECTED_REQUEST) => Some("421"),
            Outcome::Status(_) => None,
            Outcome::Failed(label) => Some(label),
        }
    }
}

/// The fields the proxy sets itself on every request it routes to a member, after removing
/// every client field named with [`INTERNAL_HEADER_PREFIX`]: the key it verified, the cluster's
/// proxy secret (when configured) and the ring version it routed with.
#[derive(Debug, Clone, Copy)]
pub struct ProxyFields<'a> {
    /// The business key the proxy chose and verified, sent percent-encoded as [`KEY_HEADER`]
    /// (none for a server API broadcast, which names no user).
    pub key: Option<&'a str>,
    /// The current proxy secret, sent as [`PROXY_SECRET_HEADER`]; `None` in dev mode.
    pub secret: Option<&'a str>,
    /// The ring version routed with, sent as [`RING_VERSION_HEADER`].
    pub ring_version: u64,
}

/// Whether a header field name is one of wscluster's own ([`INTERNAL_HEADER_PREFIX`], compared
/// case-insensitively): a client's such field is never passed on.
pub fn is_internal(name: &[u8]) -> bool {
    let prefix = INTERNAL_HEADER_PREFIX.as_bytes();
    name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Appends the upgrade request head for the owner to `out`: the client's method, path and
/// header fields, except that `X-Forwarded-For` gains `peer_ip` ([`push_forwarded_for`]),
/// every field the client sent with [`INTERNAL_HEADER_PREFIX`] is dropped and the proxy's own
/// ([`ProxyFields`]) are set, and the framing fields (`Content-Length`, `Transfer-Encoding`)
/// are dropped because no body is forwarded with an upgrade. `fields` are (name, value) pairs
/// as parsed (by hyper or `httparse`, both of which refuse CR and LF in them), so nothing a
/// client sends can split the head.
pub fn write_request<'a>(
    out: &mut Vec<u8>,
    method: &str,
    path_and_query: &str,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    peer_ip: std::net::IpAddr,
    own: ProxyFields<'_>,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The client's own X-Forwarded-For values, joined into one field after the others; a
    // second one is rare, so only it costs an allocation.
    let mut forwarded_for: Option<&[u8]> = None;
    let mut more_forwarded_for: Vec<&[u8]> = Vec::new();
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            match forwarded_for {
                None => forwarded_for = Some(value),
                Some(_) => more_forwarded_for.push(value),
            }
            continue;
        }
        if is_internal(name)
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            continue;
        }
        push_field(out, name, value);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    push_forwarded_for(
        out,
        forwarded_for.into_iter().chain(more_forwarded_for),
        peer_ip,
    );
    out.extend_from_slice(b"\r\n");
    if let Some(key) = own.key {
        push_field(out, KEY_HEADER.as_bytes(), percent_encode(key).as_bytes());
    }
    if let Some(secret) = own.secret {
        push_field(out, PROXY_SECRET_HEADER.as_bytes(), secret.as_bytes());
    }
    push_field(
        out,
        RING_VERSION_HEADER.as_bytes(),
        own.ring_version.to_string().as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
}

/// Appends the `X-Forwarded-For` value a request is passed on with (on upgrades and plain
/// HTTP alike): the values the client sent, in order, then `peer_ip`, comma-separated.
pub fn push_forwarded_for<'a>(
    out: &mut Vec<u8>,
    prior: impl IntoIterator<Item = &'a [u8]>,
    peer_ip: std::net::IpAddr,
) {
    for value in prior {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    push_ip(out, peer_ip);
}

/// Writes an address in its usual text form; IPv4 by hand, being on every upgrade's path
/// (`Display` costs as much as the rest of the request head).
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads the owner's answer from `io`: the head (at most `max_head` bytes) and, for a refusal,
/// its body (at most [`MAX_REFUSAL_BODY`]). The caller bounds the time.
pub async fn read_answer<R: AsyncRead + Unpin>(
    io: &mut R,
    max_head: usize,
) -> Result<Answer, UpstreamError> {
    let mut buf = BytesMut::with_capacity(FIRST_READ.min(max_head.max(1)));
    let (status, head_len) = loop {
        if buf.len() >= max_head {
            return Err(UpstreamError::TooLarge);
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(max_head - buf.len()).max(FIRST_READ));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(UpstreamError::Closed);
        }
        if let Some(parsed) = parse_status(&buf[..buf.len().min(max_head)])? {
            break parsed;
        }
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Both copied so the read buffer is freed now: an idle spliced connection keeps
        // nothing of it.
        let head = Bytes::copy_from_slice(&buf[..head_len]);
        let early = Bytes::copy_from_slice(&buf[head_len..]);
        return Ok(Answer::Switched { head, early });
    }
    if status.is_informational() {
        return Err(UpstreamError::Malformed(
            "an interim status instead of an answer",
        ));
    }
    let headers = fields(&buf[..head_len])?;
    buf.advance(head_len);
    let body = read_body(io, buf, status, &headers).await?;
    Ok(Answer::Refused(Refusal {
        status,
        headers,
        body,
    }))
}

/// Parses a response head's status; `None` when more bytes are needed. Returns the status and
/// the head's length.
fn parse_status(bytes: &[u8]) -> Result<Option<(StatusCode, usize)>, UpstreamError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(UpstreamError::TooLarge),
        Err(_) => return Err(UpstreamError::Malformed("not an HTTP/1.x response head")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(UpstreamError::Malformed("bad status code"))?;
    Ok(Some((status, len)))
}

/// The header fields of a complete response head, such as [`Answer::Switched`]'s.
pub fn fields(head: &[u8]) -> Result<HeaderMap, UpstreamError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
        return Err(UpstreamError::Malformed("not an HTTP/1.x response head"));
    }
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| UpstreamError::Malformed("bad header name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| UpstreamError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// How a refusal's body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

fn framing(status: StatusCode, headers: &HeaderMap) -> Result<Framing, UpstreamError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::None);
    }
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|t| !t.is_empty())
        .map(|last| last.eq_ignore_ascii_case("chunked"));
    match chunked {
        Some(true) => return Ok(Framing::Chunked),
        Some(false) => return Ok(Framing::UntilClose),
        None => {}
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(Framing::UntilClose);
    };
    let len: u64 = first
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or(UpstreamError::Malformed("bad Content-Length"))?;
    if lengths.any(|other| other != first) {
        return Err(UpstreamError::Malformed(
            "conflicting Content-Length fields",
        ));
    }
    match usize::try_from(len) {
        Ok(len) if len <= MAX_REFUSAL_BODY => Ok(Framing::Length(len)),
        _ => Err(UpstreamError::TooLarge),
    }
}

async fn read_body<R: AsyncRead + Unpin>(
    io: &mut R,
    mut buf: BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Bytes, UpstreamError> {
    match framing(status, headers)? {
        Framing::None => Ok(Bytes::new()),
        Framing::Length(len) => {
            while buf.len() < len {
                buf.reserve(len - buf.len());
                if io.read_buf(&mut buf).await? == 0 {
                    return Err(UpstreamError::Closed);
                }
            }
            buf.truncate(len);
            Ok(buf.freeze())
        }
        Framing::UntilClose => {
            loop {
                if buf.len() > MAX_REFUSAL_BODY {
                    return Err(UpstreamError::TooLarge);
                }
                buf.reserve(FIRST_READ);
                if io.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            Ok(buf.freeze())
        }
        Framing::Chunked => read_chunked(io, buf).await,
    }
}

/// Decodes a chunked body; stops at the last (zero-size) chunk. Trailer fields are not read:
/// the connection is closed after a refusal, so nothing follows that needs framing.
async fn read_chunked<R: AsyncRead + Unpin>(
    io: &mut R,
    mut buf: BytesMut,
) -> Result<Bytes, UpstreamError> {
    let mut body = BytesMut::new();
    loop {
        let (skip, size) = loop {
            match httparse::parse_chunk_size(&buf) {
                Ok(httparse::Status::Complete(parsed)) => break parsed,
                Ok(httparse::Status::Partial) => {
                    // A chunk-size line with extensions is short; a long one is not a chunk.
                    if buf.len() > FIRST_READ {
                        return Err(UpstreamError::Malformed("chunk size line too long"));
                    }
                    fill(io, &mut buf).await?;
                }
                Err(_) => return Err(UpstreamError::Malformed("bad chunk size")),
            }
        };
        buf.advance(skip);
        if size == 0 {
            return Ok(body.freeze());
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|s| body.len() + s <= MAX_REFUSAL_BODY)
            .ok_or(UpstreamError::TooLarge)?;
        // The chunk's data and its CRLF.
        while buf.len() < size + 2 {
            fill(io, &mut buf).await?;
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(UpstreamError::Malformed("chunk without its CRLF"));
        }
        body.extend_from_slice(&buf[..size]);
        buf.advance(size + 2);
    }
}

async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<(), UpstreamError> {
    buf.reserve(FIRST_READ);
    if io.read_buf(buf).await? == 0 {
        return Err(UpstreamError::Closed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_leave_from_the_source_address_and_a_foreign_family_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target = listener.local_addr().expect("addr");
        let source: IpAddr = "127.1.0.9".parse().expect("ip");
        let dialled = connect(Some(target), "", Some(source));
        let (dialled, accepted) = tokio::join!(dialled, listener.accept());
        assert_eq!(
            dialled.expect("connect").local_addr().expect("local").ip(),
            source
        );
        assert_eq!(accepted.expect("accept").1.ip(), source);
        let name = target.to_string();
        let by_name = connect(None, &name, Some(source));
        let (by_name, _) = tokio::join!(by_name, listener.accept());
        assert_eq!(
            by_name.expect("connect").local_addr().expect("local").ip(),
            source
        );

        let v6: IpAddr = "::1".parse().expect("ip");
        let refused = connect(Some(target), "127.0.0.1:1", Some(v6))
            .await
            .expect_err("no IPv6 address to dial");
        assert_eq!(refused.kind(), io::ErrorKind::AddrNotAvailable);
        assert!(refused.to_string().contains("::1"), "{refused}");
    }

    /// A reader that hands out `data` in pieces of `step` bytes, to cover split reads.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            out: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let end = (self.pos + self.step)
                .min(self.data.len())
                .min(self.pos + out.remaining());
            let chunk = self.data[self.pos..end].to_vec();
            out.put_slice(&chunk);
            self.pos = end;
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn answer(raw: &[u8], step: usize) -> Result<Answer, UpstreamError> {
        let mut io = Trickle {
            data: raw.to_vec(),
            pos: 0,
            step,
        };
        read_answer(&mut io, 16 * 1024).await
    }

    #[tokio::test]
    async fn a_101_gives_its_headers_and_the_frames_that_followed_it() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc=\r\n\r\n\x81\x02hi";
        for step in [1, 7, raw.len()] {
            let Ok(Answer::Switched { head, early }) = answer(raw, step).await else {
                panic!("expected a 101 at step {step}");
            };
            assert!(head.ends_with(b"abc=\r\n\r\n"));
            let headers = fields(&head).expect("fields");
            assert_eq!(headers["sec-websocket-accept"], "abc=");
            assert_eq!(headers.len(), 3);
            // With one-byte reads the head ends exactly at a read, so nothing follows it yet.
            if step == raw.len() {
                assert_eq!(&early[..], b"\x81\x02hi");
            }
        }
    }

    #[tokio::test]
    async fn a_refusal_is_read_whole_whatever_its_framing() {
        let cases: [(&[u8], StatusCode, &[u8]); 5] = [
            (
                b"HTTP/1.1 421 Misdirected Request\r\ncontent-length: 5\r\n\r\nhello",
                StatusCode::MISDIRECTED_REQUEST,
                b"hello",
            ),
            (
                b"HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                StatusCode::FORBIDDEN,
                b"abcde",
            ),
            (
                b"HTTP/1.0 400 Bad Request\r\n\r\nuntil the end",
                StatusCode::BAD_REQUEST,
                b"until the end",
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                StatusCode::NO_CONTENT,
                b"",
            ),
            (
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                StatusCode::NOT_FOUND,
                b"",
            ),
        ];
        for (raw, want_status, want_body) in cases {
            for step in [1, 5, raw.len()] {
                match answer(raw, step).await {
                    Ok(Answer::Refused(Refusal { status, body, .. })) => {
                        assert_eq!(status, want_status);
                        assert_eq!(&body[..], want_body, "step {step}");
                    }
                    other => panic!("{raw:?} step {step}: {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn broken_or_oversized_answers_are_errors_not_hangs() {
        let big_len = format!(
            "HTTP/1.1 400 x\r\ncontent-length: {}\r\n\r\n",
            MAX_REFUSAL_BODY + 1
        );
        let huge_head = format!("HTTP/1.1 101 x\r\nx: {}\r\n\r\n", "a".repeat(20_000));
        let many = format!(
            "HTTP/1.1 101 x\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        let cases: Vec<(&[u8], UpstreamError)> = vec![
            (b"", UpstreamError::Closed),
            (b"HTTP/1.1 101 Switching", UpstreamError::Closed),
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                UpstreamError::Malformed("not an HTTP/1.x response head"),
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                UpstreamError::Malformed("an interim status instead of an answer"),
            ),
            (
                b"HTTP/1.1 400 x\r\ncontent-length: 5\r\n\r\nab",
                UpstreamError::Closed,
            ),
            (
                b"HTTP/1.1 400 x\r\ncontent-length: nope\r\n\r\n",
                UpstreamError::Malformed("bad Content-Length"),
            ),
            (
                b"HTTP/1.1 400 x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
                UpstreamError::Malformed("conflicting Content-Length fields"),
            ),
            (big_len.as_bytes(), UpstreamError::TooLarge),
            (huge_head.as_bytes(), UpstreamError::TooLarge),
            (many.as_bytes(), UpstreamError::TooLarge),
            (
                b"HTTP/1.1 400 x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                UpstreamError::Malformed("bad chunk size"),
            ),
            (
                b"HTTP/1.1 400 x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
                UpstreamError::Malformed("chunk without its CRLF"),
            ),
            (
                b"HTTP/1.1 400 x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
                UpstreamError::Closed,
            ),
        ];
        for (raw, want) in cases {
            let got = answer(raw, 3).await.map(|_| ()).expect_err("an error");
            assert_eq!(
                got,
                want,
                "{:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(60)])
            );
        }
    }

    #[test]
    fn only_statuses_that_speak_of_the_owner_s_load_are_refusals() {
        for (outcome, want) in [
            (Outcome::Switched, None),
            (
                Outcome::Status(StatusCode::SERVICE_UNAVAILABLE),
                Some("5xx"),
            ),
            (Outcome::Status(StatusCode::BAD_GATEWAY), Some("5xx")),
            (Outcome::Status(StatusCode::TOO_MANY_REQUESTS), Some("429")),
            (
                Outcome::Status(StatusCode::MISDIRECTED_REQUEST),
                Some("421"),
            ),
            (Outcome::Status(StatusCode::FORBIDDEN), None),
            (Outcome::Status(StatusCode::NOT_FOUND), None),
            (
                Outcome::Failed("upstream-unreachable"),
                Some("upstream-unreachable"),
            ),
        ] {
            assert_eq!(outcome.refusal(), want, "{outcome:?}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.0.0.2",
            "127.0.0.1",
            "192.168.100.255",
            "::1",
            "fe80::1:2",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("ascii"), ip.to_string());
        }
    }

    #[test]
    fn the_request_head_keeps_the_clients_fields_and_sets_the_proxys_own() {
        let ring_upper = RING_VERSION_HEADER.to_ascii_uppercase();
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Host", b"chat.example"),
            (b"upgrade", b"websocket"),
            (b"Sec-WebSocket-Protocol", b"a"),
            (b"sec-websocket-protocol", b"b"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (ring_upper.as_bytes(), b"999"),
            (b"x-forwarded-for", b"10.0.0.5"),
            (b"X-WsCluster-Key", b"mallory"),
            (b"x-wscluster-proxy-secret", b"guess"),
            (b"X-WSCLUSTER-SENDER", b"mallory"),
            (b"x-wscluster-anything-else", b"1"),
            (b"Content-Length", b"4"),
        ];
        let mut out = Vec::new();
        write_request(
            &mut out,
            "GET",
            "/connect/u1?since=3",
            fields,
            std::net::IpAddr::from([10, 0, 0, 2]),
            ProxyFields {
                key: Some("u 1/é"),
                secret: Some("s3cret"),
                ring_version: 7,
            },
        );
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with("GET /connect/u1?since=3 HTTP/1.1\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
        for line in [
            "Host: chat.example\r\n",
            "upgrade: websocket\r\n",
            "Sec-WebSocket-Protocol: a\r\nsec-websocket-protocol: b\r\n",
            "x-forwarded-for: 10.0.0.1, 10.0.0.5, 10.0.0.2\r\n",
            &format!("{RING_VERSION_HEADER}: 7\r\n"),
            &format!("{KEY_HEADER}: u%201%2F%C3%A9\r\n"),
            &format!("{PROXY_SECRET_HEADER}: s3cret\r\n"),
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
        assert_eq!(text.matches(RING_VERSION_HEADER).count(), 1);
        // Nothing the client named x-wscluster-* survives: only the proxy's three fields.
        let internal = text.lines().filter(|l| is_internal(l.as_bytes())).count();
        assert_eq!(internal, 3, "{text}");
        assert!(
            !text.contains("mallory") && !text.contains("guess"),
            "{text}"
        );
        assert!(!text.to_ascii_lowercase().contains("content-length"));
        // The head parses as a request with every field intact.
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut fields);
        assert!(
            matches!(req.parse(text.as_bytes()), Ok(httparse::Status::Complete(n)) if n == text.len())
        );
    }
}
