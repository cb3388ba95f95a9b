//! One WebSocket client with the reconnect logic of `docs/client.md`, recording what it saw.
//!
//! It reads frames with the contract's own types ([`ResetFrame`], [`ReadyFrame`],
//! [`ClientMessage`]), so a frame the node or proxy sends in any other shape is counted
//! ([`Record::unreadable`]) and reported by [`crate::delivery`], not skipped. It resumes with
//! `since` and `epoch`, and de-duplicates by offset within an epoch only: a message of a new
//! epoch is always taken.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wscluster_ring::contract::{
    CLOSE_POLICY, CLOSE_REPLACED, ClientMessage, MessageKind, ReadyFrame, ResetFrame,
    percent_encode,
};

/// Longest a WebSocket handshake may take before the attempt counts as failed.
pub const HANDSHAKE_TIMEOUT_SECONDS: u64 = 10;
/// First wait after an unexpected drop or a failed connect.
const BACKOFF_FIRST_MS: u64 = 100;
/// Longest wait after repeated unexpected drops.
const BACKOFF_MAX_MS: u64 = 2_000;
/// Read buffer of each client's WebSocket. tungstenite's default (128 KiB, allocated up front)
/// would make 16,000 clients in one process (`wscluster-clients`) hold 2 GiB of buffers for
/// frames of a few hundred bytes, and it zero-fills that buffer again on every read (28 % of
/// `wscluster-sendload`'s CPU under `perf` before it used this); a larger frame still arrives,
/// the buffer grows.
pub const READ_BUFFER_BYTES: usize = 4096;
/// The node's notice that a session is open and replayed.
const READY_NOTICE: &str = "ready";

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// The node of the current (or last) session, from the `ready` notice.
    pub node: Option<String>,
    /// Whether a session is open and past its `ready` notice.
    pub connected: bool,
    /// Reset frames received, in order.
    pub resets: Vec<ResetFrame>,
    /// Sessions opened (1 + reconnects).
    pub sessions: u64,
    /// Established sessions that ended without a reset frame (cut).
    pub drops: u64,
    /// Connection attempts refused or failed before the WebSocket opened (for example a node
    /// refusing a key it does not own yet under its ring, or a dead proxy).
    pub failed_connects: u64,
    /// The last such failure, for diagnostics.
    pub last_connect_error: Option<String>,
    /// Message contents accepted, in order, after de-duplication by offset.
    pub messages: Vec<String>,
    /// The highest offset accepted (within [`Record::epoch`]).
    pub last_offset: u64,
    /// The epoch of the user's stream the offsets belong to, once the node named one.
    pub epoch: Option<String>,
    /// Ready frames that said `recovered: false`: the node could not give everything after
    /// `since`, so messages may have been missed (and the client knows it).
    pub not_recovered: u64,
    /// Broadcast contents received, in order.
    pub broadcasts: Vec<String>,
    /// Messages dropped as duplicates (offset already seen).
    pub duplicates: u64,
    /// Messages whose content names another user: must stay 0.
    pub misdelivered: u64,
    /// Text frames that are neither a reset frame nor a client message with what its kind
    /// requires (a `message` without an offset): a contract break, must stay 0.
    pub unreadable: u64,
    /// When the last session became ready.
    pub ready_at: Option<Instant>,
}

impl Record {
    /// Takes one client message for `user`: a `ready` notice opens the session; a `message` is
    /// kept once per offset and checked to be `user`'s own (`<user>:<seq>`).
    fn accept(&mut self, user: &str, message: ClientMessage) {
        match message.kind {
            MessageKind::System if message.content == READY_NOTICE => {
                self.node = Some(message.server);
                self.connected = true;
                self.sessions += 1;
                self.ready_at = Some(Instant::now());
            }
            MessageKind::Message => {
                let Some(offset) = message.offset else {
                    self.unreadable += 1;
                    return;
                };
                let new_epoch = message.epoch.is_some() && message.epoch != self.epoch;
                if new_epoch {
                    self.epoch = message.epoch;
                } else if offset <= self.last_offset {
                    self.duplicates += 1;
                    return;
                }
                self.last_offset = offset;
                if message.content.rsplit_once(':').map(|(u, _)| u) != Some(user) {
                    self.misdelivered += 1;
                }
                self.messages.push(message.content);
            }
            MessageKind::Broadcast => self.broadcasts.push(message.content),
            _ => {}
        }
    }

    /// Takes a ready frame: the session is live. When the node could not recover everything
    /// after `since` (or the epoch changed), the client adopts the stream's epoch and latest
    /// offset, as `docs/client.md` says, and counts the incomplete recovery.
    fn ready(&mut self, frame: ReadyFrame) {
        self.node = Some(frame.server);
        self.connected = true;
        self.sessions += 1;
        self.ready_at = Some(Instant::now());
        if !frame.recovered {
            self.not_recovered += 1;
        }
        if self.epoch.as_deref() != Some(frame.epoch.as_str()) {
            self.epoch = Some(frame.epoch);
            self.last_offset = frame.offset;
        } else if !frame.recovered {
            self.last_offset = self.last_offset.max(frame.offset);
        }
    }
}

/// How a session ended, which decides what the client does next.
enum SessionEnd {
    /// A reset frame and its own close code: reconnect after this delay.
    Planned(Duration),
    /// 4002 (replaced) or 4008 (policy): stay away.
    DoNotReconnect,
    /// An open session ended any other way.
    Unexpected,
    /// The WebSocket never opened.
    ConnectFailed(String),
}

impl SessionEnd {
    /// The end a close frame with `code` means after the session's `resets`: planned only when
    /// a reset frame announced exactly that close code.
    fn after_close(code: Option<u16>, resets: &[ResetFrame]) -> SessionEnd {
        match code {
            Some(CLOSE_REPLACED | CLOSE_POLICY) => SessionEnd::DoNotReconnect,
            Some(code) => resets
                .iter()
                .rev()
                .find(|r| r.reason.close_code() == code)
                .map_or(SessionEnd::Unexpected, |r| {
                    SessionEnd::Planned(Duration::from_millis(r.retry_after_ms))
                }),
            None => SessionEnd::Unexpected,
        }
    }
}

/// A client's WebSocket.
type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One reconnecting client, sending nothing, recording all.
#[derive(Clone)]
pub struct Client {
    /// Its user id: the key the proxy routes by and the owner of its messages.
    pub user: String,
    /// What it saw, shared with the task that runs it.
    pub record: Arc<Mutex<Record>>,
    /// The loopback address its connections leave from, if it has its own
    /// ([`Client::with_source`]).
    source: Option<Ipv4Addr>,
}

impl Client {
    /// A client for `user` that has seen nothing yet.
    pub fn new(user: String) -> Client {
        Client {
            user,
            record: Arc::default(),
            source: None,
        }
    }

    /// A client whose connections leave from `source`, a loopback address of its own: a
    /// fleet of ten thousands then spreads over many (source, proxy) pairs as real clients do,
    /// instead of drawing on 127.0.0.1's one pool of ports per proxy, where the kernel's port
    /// search in `connect()` grows with every connection already open.
    pub fn with_source(user: String, source: Ipv4Addr) -> Client {
        Client {
            source: Some(source),
            ..Client::new(user)
        }
    }

    /// A copy of its record.
    pub fn snapshot(&self) -> Record {
        self.update(|r| r.clone())
    }

    fn update<T>(&self, change: impl FnOnce(&mut Record) -> T) -> T {
        change(&mut self.record.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Connects through `proxies[first]` (WebSocket base URLs), reconnects as `docs/client.md`
    /// says — after a reset frame when it asks, else with backoff through the next proxy —
    /// until `stop` is cancelled or the server says not to.
    pub async fn run(self, proxies: Vec<String>, first: usize, stop: CancellationToken) {
        let mut proxy = first;
        let mut backoff = Duration::from_millis(BACKOFF_FIRST_MS);
        loop {
            let url = self.connect_url(&proxies[proxy % proxies.len()]);
            let Some(end) = stop.run_until_cancelled(self.session(&url)).await else {
                return;
            };
            self.update(|r| r.connected = false);
            let delay = match end {
                SessionEnd::Planned(retry) => {
                    backoff = Duration::from_millis(BACKOFF_FIRST_MS);
                    retry
                }
                SessionEnd::DoNotReconnect => return,
                SessionEnd::Unexpected | SessionEnd::ConnectFailed(_) => {
                    self.update(|r| match end {
                        SessionEnd::ConnectFailed(e) => {
                            r.failed_connects += 1;
                            r.last_connect_error = Some(e);
                        }
                        _ => r.drops += 1,
                    });
                    proxy += 1;
                    let delay = backoff;
                    backoff = (backoff * 2).min(Duration::from_millis(BACKOFF_MAX_MS));
                    delay
                }
            };
            if stop
                .run_until_cancelled(tokio::time::sleep(delay))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// `<base>/connect/<user>`, with `?since=<last offset>&epoch=<its epoch>` once the node
    /// named an epoch (even at offset 0: an empty stream that was made again is news), else
    /// `?since=<last offset>` once it has seen one (a node without epochs).
    fn connect_url(&self, base: &str) -> String {
        let (since, epoch) = self.update(|r| (r.last_offset, r.epoch.clone()));
        let mut url = format!("{base}/connect/{}", percent_encode(&self.user));
        match epoch {
            Some(epoch) => {
                url.push_str(&format!("?since={since}&epoch={}", percent_encode(&epoch)));
            }
            None if since > 0 => url.push_str(&format!("?since={since}")),
            None => {}
        }
        url
    }

    /// The WebSocket handshake with `url`, from [`Client::source`] when it has one.
    async fn open(&self, url: &str, config: WebSocketConfig) -> anyhow::Result<Ws> {
        let Some(source) = self.source else {
            let (ws, _) =
                tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
            return Ok(ws);
        };
        let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse()?;
        let host = uri.host().context("the URL has no host")?;
        let target = tokio::net::lookup_host((host, uri.port_u16().unwrap_or(80)))
            .await?
            .find(SocketAddr::is_ipv4)
            .context("the URL's host has no IPv4 address")?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source.into(), 0))?;
        let tcp = socket.connect(target).await?;
        let stream = MaybeTlsStream::Plain(tcp);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        Ok(ws)
    }

    async fn session(&self, url: &str) -> SessionEnd {
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let handshake = tokio::time::timeout(
            Duration::from_secs(HANDSHAKE_TIMEOUT_SECONDS),
            self.open(url, config),
        );
        let mut ws = match handshake.await {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return SessionEnd::ConnectFailed(e.to_string()),
            Err(_) => {
                return SessionEnd::ConnectFailed(format!(
                    "no handshake within {HANDSHAKE_TIMEOUT_SECONDS} s"
                ));
            }
        };
        let mut resets = Vec::new();
        while let Some(Ok(frame)) = ws.next().await {
            match frame {
                Message::Text(text) => resets.extend(self.on_text(text.as_str())),
                Message::Close(close) => {
                    let code = close.map(|c| u16::from(c.code));
                    let _ = ws.close(None).await;
                    return SessionEnd::after_close(code, &resets);
                }
                Message::Ping(p) => {
                    let _ = ws.send(Message::Pong(p)).await;
                }
                _ => {}
            }
        }
        SessionEnd::Unexpected
    }

    /// Records one text frame; answers it when it is a reset frame.
    fn on_text(&self, text: &str) -> Option<ResetFrame> {
        if let Ok(reset) = serde_json::from_str::<ResetFrame>(text) {
            self.update(|r| r.resets.push(reset));
            return Some(reset);
        }
        if let Ok(ready) = serde_json::from_str::<ReadyFrame>(text) {
            self.update(|r| r.ready(ready));
            return None;
        }
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => self.update(|r| r.accept(&self.user, message)),
            Err(_) => self.update(|r| r.unreadable += 1),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use wscluster_ring::contract::{CLOSE_DRAIN, CLOSE_REBALANCE, ResetReason};

    use super::*;

    fn message(kind: MessageKind, content: &str, offset: Option<u64>) -> String {
        let m = ClientMessage {
            kind,
            content: content.to_owned(),
            server: "node-1".to_owned(),
            server_user_count: 1,
            timestamp: 0,
            offset,
            epoch: None,
            from: None,
        };
        serde_json::to_string(&m).expect("serialises")
    }

    #[test]
    fn frames_are_read_with_the_contract_types() {
        let client = Client::new("alice".to_owned());
        assert!(
            client
                .on_text(&message(MessageKind::System, "ready", None))
                .is_none()
        );
        client.on_text(&message(MessageKind::Message, "alice:1", Some(1)));
        client.on_text(&message(MessageKind::Message, "alice:1", Some(1)));
        client.on_text(&message(MessageKind::Message, "bob:2", Some(2)));
        client.on_text(&message(MessageKind::Message, "alice:3", None));
        client.on_text(r#"{"type":"gossip"}"#);
        let reset = ResetFrame::new(ResetReason::Drain, 250, Some(8));
        assert_eq!(client.on_text(&reset.to_json()), Some(reset));
        let r = client.snapshot();
        assert_eq!(r.node.as_deref(), Some("node-1"));
        assert!(r.connected && r.sessions == 1);
        assert_eq!(r.messages, ["alice:1", "bob:2"]);
        assert_eq!((r.last_offset, r.duplicates, r.misdelivered), (2, 1, 1));
        assert_eq!(
            r.unreadable, 2,
            "a message without offset and an unknown type"
        );
        assert_eq!(r.resets, [reset]);
    }

    fn epoch_message(content: &str, offset: u64, epoch: &str) -> String {
        let mut m: ClientMessage =
            serde_json::from_str(&message(MessageKind::Message, content, Some(offset)))
                .expect("parses");
        m.epoch = Some(epoch.to_owned());
        serde_json::to_string(&m).expect("serialises")
    }

    #[test]
    fn offsets_compare_within_an_epoch_and_an_unrecovered_ready_frame_is_counted() {
        let client = Client::new("alice".to_owned());
        assert!(client.connect_url("ws://p").ends_with("/connect/alice"));
        client.on_text(&ReadyFrame::new("node-1", "e1", 0, true).to_json());
        assert!(
            client
                .connect_url("ws://p")
                .ends_with("/connect/alice?since=0&epoch=e1")
        );
        client.on_text(&epoch_message("alice:1", 1, "e1"));
        client.on_text(&epoch_message("alice:2", 2, "e1"));
        client.on_text(&epoch_message("alice:2", 2, "e1"));
        assert!(
            client
                .connect_url("ws://p")
                .ends_with("/connect/alice?since=2&epoch=e1")
        );
        // The stream was made again: offset 1 of the new epoch is new, not a duplicate.
        client.on_text(&epoch_message("alice:3", 1, "e2"));
        client.on_text(&ReadyFrame::new("node-2", "e3", 7, false).to_json());
        client.on_text(&epoch_message("alice:4", 8, "e3"));
        client.on_text(&message(MessageKind::Broadcast, "all:1", None));
        let r = client.snapshot();
        assert_eq!(r.messages, ["alice:1", "alice:2", "alice:3", "alice:4"]);
        assert_eq!((r.duplicates, r.not_recovered, r.sessions), (1, 1, 2));
        assert_eq!((r.epoch.as_deref(), r.last_offset), (Some("e3"), 8));
        assert_eq!(r.node.as_deref(), Some("node-2"));
        assert_eq!(r.broadcasts, ["all:1"]);
        assert_eq!(r.unreadable, 0);
    }

    #[test]
    fn only_a_close_code_announced_by_a_reset_frame_is_a_planned_move() {
        let drain = [ResetFrame::new(ResetReason::Drain, 250, Some(3))];
        let planned = |code, resets: &[ResetFrame]| match SessionEnd::after_close(code, resets) {
            SessionEnd::Planned(d) => Some(d),
            _ => None,
        };
        assert_eq!(
            planned(Some(CLOSE_DRAIN), &drain),
            Some(Duration::from_millis(250))
        );
        assert_eq!(planned(Some(CLOSE_REBALANCE), &drain), None);
        assert_eq!(planned(Some(CLOSE_DRAIN), &[]), None);
        assert_eq!(planned(None, &drain), None);
        assert!(matches!(
            SessionEnd::after_close(Some(CLOSE_REPLACED), &drain),
            SessionEnd::DoNotReconnect
        ));
        assert!(matches!(
            SessionEnd::after_close(Some(CLOSE_POLICY), &[]),
            SessionEnd::DoNotReconnect
        ));
    }
}
