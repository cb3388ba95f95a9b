//! One WebSocket session: register (replacing an older session of the same key), record
//! presence, replay the mailbox after `?since=`, then deliver live messages until the client
//! leaves or the node closes it.
//!
//! Ordering without loss: the session is registered (so live messages queue up) *before* the
//! mailbox is read; it then sends the replay and afterwards only queued messages whose offset is
//! greater than the last one sent. A message appended around the registration is therefore in
//! the replay, in the queue, or both — and sent exactly once, in offset order.
//!
//! [`drive`] is generic over any [`Socket`] (a `Sink + Stream` of tungstenite messages), so
//! tests run it over an in-memory duplex pipe. It runs in two steps: the greeting (a `since` error or the replay,
//! then `ready`), then the live loop, whose every event (a close command, a queued message, a
//! client frame, a keepalive tick) has its own handler.

use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use wscluster_ring::contract::{CLOSE_POLICY, CLOSE_REPLACED, MessageKind};

use crate::mailbox::{MailboxEntry, MailboxPage, READ_PAGE};
use crate::presence::PresenceEntry;
use crate::registry::{CONTROL_QUEUE, Close, Handle, Outbound};
use crate::state::{NodeState, now_ms};

/// Longest wait for one frame to be written before the client is considered gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the client's half of the closing handshake (RFC 6455 §7.1.2).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// RFC 6455 §7.4.1: going away (sent when the keepalive times out).
const CLOSE_GOING_AWAY: u16 = 1001;
/// RFC 6455 §7.4.1: protocol error.
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// RFC 6455 §7.4.1: data inconsistent with the message type (invalid UTF-8 in a text frame).
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// RFC 6455 §7.4.1: a message too big to process.
const CLOSE_TOO_BIG: u16 = 1009;

/// The `since` query parameter as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Not given: live messages only.
    Absent,
    /// Replay everything after this offset (0 = everything retained).
    Offset(u64),
    /// Given but not a number: an error frame, then live messages.
    Invalid(String),
}

impl Since {
    /// Parses the raw query value.
    pub fn parse(raw: Option<&str>) -> Since {
        match raw {
            None => Since::Absent,
            Some(s) => match s.parse::<u64>() {
                Ok(n) => Since::Offset(n),
                Err(_) => Since::Invalid(s.chars().take(64).collect()),
            },
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client closed or disconnected.
    Client,
    /// The node closed it (reset, drain, replaced, slow consumer).
    Closed(&'static str),
    /// A protocol violation by the client (code sent).
    Protocol(u16),
    /// Writing failed or timed out.
    WriteFailed,
    /// No pong or frame for two keepalive intervals.
    Keepalive,
}

/// What a session runs on: a WebSocket as a sink and a stream of tungstenite messages (the
/// upgraded connection, or an in-memory pipe in tests).
pub trait Socket:
    Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin
{
}

impl<S> Socket for S where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin
{
}

/// Runs a session on an upgraded socket until it ends, then cleans up.
pub async fn run<S: Socket>(
    state: Arc<NodeState>,
    ws: S,
    key: Arc<str>,
    since: Since,
    _permit: OwnedSemaphorePermit,
) -> End {
    let (conn, conn_tag) = state.next_conn();
    let (data, control) = register(&state, &key, conn, &conn_tag);
    let entry = PresenceEntry {
        node: state.id.to_string(),
        ring_version: state.ring.version(),
        since: now_ms(),
        conn: conn_tag.to_string(),
    };
    if let Err(e) = state.presence.set(&key, &entry).await {
        tracing::warn!(error = %e, "presence not recorded");
        state.metrics.error(e.metric_label());
    }

    let end = drive(&state, ws, &key, since, data, control).await;

    state.registry.remove(&key, conn);
    state.metrics.connections.dec();
    if let Err(e) = state.presence.remove(&key, &conn_tag).await {
        tracing::warn!(error = %e, "presence not removed (it expires on its own)");
        state.metrics.error(e.metric_label());
    }
    tracing::debug!(?end, "session ended");
    end
}

/// Makes the session reachable under `key` (closing an older session of the key with
/// `CLOSE_REPLACED`); returns its data and control queues.
fn register(
    state: &NodeState,
    key: &Arc<str>,
    conn: u64,
    conn_tag: &Arc<str>,
) -> (mpsc::Receiver<Outbound>, mpsc::Receiver<Close>) {
    let queue = usize::try_from(state.config.session_queue).unwrap_or(1024);
    let (data_tx, data_rx) = mpsc::channel(queue);
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let handle = Handle {
        conn,
        conn_tag: conn_tag.clone(),
        data: data_tx,
        control: control_tx,
    };
    if let Some(old) = state.registry.insert(key.clone(), handle) {
        let _ = old.control.try_send(Close {
            frame: None,
            code: CLOSE_REPLACED,
            reason: "replaced",
        });
    }
    state.metrics.connections.inc();
    state.metrics.connections_opened.inc();
    (data_rx, control_rx)
}

/// Writes one frame with a timeout.
async fn send<S: Socket>(ws: &mut S, msg: Message) -> Result<(), End> {
    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::WriteFailed),
    }
}

/// Sends a close frame and waits briefly for the client's close (or the end of the stream).
async fn close<S: Socket>(ws: &mut S, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    };
    if send(ws, Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// A `system` or `error` frame.
fn notice(state: &NodeState, kind: MessageKind, content: String) -> Message {
    Message::Text(state.client_message(kind, content, now_ms(), None))
}

/// What is wrong with `?since=` compared with what the mailbox retains; each gap is an
/// `error` frame to the client, after which the session goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinceGap {
    /// `since` is past the latest offset handed out (the mailbox expired, say): live only.
    Ahead {
        /// The latest offset handed out.
        latest: u64,
    },
    /// Messages right after `since` were trimmed: replay from the oldest one retained.
    Trimmed {
        /// The oldest offset retained.
        oldest: u64,
    },
    /// No message after `since` is retained any more: live only.
    Expired {
        /// The latest offset handed out.
        latest: u64,
    },
}

impl SinceGap {
    /// The gap between `since` and the mailbox's first page, if there is one.
    fn of(since: u64, page: &MailboxPage) -> Option<SinceGap> {
        if since > page.latest {
            return Some(SinceGap::Ahead {
                latest: page.latest,
            });
        }
        match page.oldest {
            Some(oldest) if since + 1 < oldest => Some(SinceGap::Trimmed { oldest }),
            None if since < page.latest => Some(SinceGap::Expired {
                latest: page.latest,
            }),
            _ => None,
        }
    }

    /// The `errors_total{kind}` label.
    fn metric(self) -> &'static str {
        match self {
            SinceGap::Ahead { .. } => "since-ahead",
            SinceGap::Trimmed { .. } | SinceGap::Expired { .. } => "since-expired",
        }
    }

    /// The error frame's text.
    fn message(self, since: u64) -> String {
        match self {
            SinceGap::Ahead { latest } => format!(
                "since={since} is ahead of the latest offset {latest}; delivering live messages only"
            ),
            SinceGap::Trimmed { oldest } => format!(
                "since={since} is older than the retention; the oldest available offset is {oldest}; replaying from there"
            ),
            SinceGap::Expired { latest } => format!(
                "offsets {}..={latest} are no longer retained; delivering live messages only",
                since + 1
            ),
        }
    }

    /// The offset the client is at when the gap ends the replay; None when the replay goes on.
    fn stops_at(self) -> Option<u64> {
        match self {
            SinceGap::Ahead { latest } | SinceGap::Expired { latest } => Some(latest),
            SinceGap::Trimmed { .. } => None,
        }
    }
}

/// Reads one mailbox page after `after`. A failed read is told to the client in an `error`
/// frame and ends the replay (None); the session goes on with live messages.
async fn read_page<S: Socket>(
    state: &NodeState,
    ws: &mut S,
    key: &str,
    after: u64,
) -> Result<Option<MailboxPage>, End> {
    match state.mailbox.read(key, after, READ_PAGE).await {
        Ok(page) => Ok(Some(page)),
        Err(e) => {
            state.metrics.error(e.metric_label());
            tracing::warn!(error = %e, "mailbox read failed; replay skipped");
            let text = format!(
                "the mailbox is unavailable; messages after offset {after} were not replayed"
            );
            send(ws, notice(state, MessageKind::Error, text)).await?;
            Ok(None)
        }
    }
}

/// Sends replayed entries, oldest first; returns the last offset sent (`after` if none).
async fn send_entries<S: Socket>(
    state: &NodeState,
    ws: &mut S,
    entries: Vec<MailboxEntry>,
    mut after: u64,
) -> Result<u64, End> {
    for entry in entries {
        let text = state.client_message(
            MessageKind::Message,
            entry.content,
            entry.timestamp,
            Some(entry.offset),
        );
        send(ws, Message::Text(text)).await?;
        state.metrics.delivered("replay");
        after = entry.offset;
    }
    Ok(after)
}

/// Sends the replay after `since`; returns the last offset the client now has.
async fn replay<S: Socket>(
    state: &NodeState,
    ws: &mut S,
    key: &str,
    since: u64,
) -> Result<u64, End> {
    let Some(mut page) = read_page(state, ws, key, since).await? else {
        return Ok(since);
    };
    if let Some(gap) = SinceGap::of(since, &page) {
        state.metrics.error(gap.metric());
        send(ws, notice(state, MessageKind::Error, gap.message(since))).await?;
        if let Some(at) = gap.stops_at() {
            return Ok(at);
        }
    }
    let mut after = since;
    loop {
        let more = page.entries.len() >= READ_PAGE;
        after = send_entries(state, ws, page.entries, after).await?;
        if !more {
            return Ok(after);
        }
        let Some(next) = read_page(state, ws, key, after).await? else {
            return Ok(after);
        };
        page = next;
    }
}

/// What comes before live messages: a `since` error or the replay, then `ready`. Returns the
/// last offset the client has.
async fn greet<S: Socket>(
    state: &NodeState,
    ws: &mut S,
    key: &str,
    since: &Since,
) -> Result<u64, End> {
    let last = match since {
        Since::Absent => 0,
        Since::Invalid(raw) => {
            state.metrics.error("since-invalid");
            let text = format!(
                "since={raw:?} is not a non-negative integer offset; delivering live messages only"
            );
            send(ws, notice(state, MessageKind::Error, text)).await?;
            0
        }
        Since::Offset(n) => replay(state, ws, key, *n).await?,
    };
    send(ws, notice(state, MessageKind::System, "ready".to_owned())).await?;
    Ok(last)
}

/// The session loop; see the module docs. Returns why it ended (the socket is closed).
pub async fn drive<S: Socket>(
    state: &Arc<NodeState>,
    mut ws: S,
    key: &str,
    since: Since,
    data: mpsc::Receiver<Outbound>,
    control: mpsc::Receiver<Close>,
) -> End {
    match greet(state, &mut ws, key, &since).await {
        Ok(last) => {
            let session = Live {
                state,
                key,
                ws,
                last,
                last_seen: Instant::now(),
            };
            session.run(data, control).await
        }
        Err(end) => end,
    }
}

/// A session after its greeting: live delivery until it ends.
struct Live<'a, S> {
    /// The node.
    state: &'a Arc<NodeState>,
    /// The session's verified key (chat mode sends as it).
    key: &'a str,
    /// The client's socket.
    ws: S,
    /// The last mailbox offset the client has; queued messages at or below it are skipped.
    last: u64,
    /// When the client last sent a frame (any frame counts as liveness).
    last_seen: Instant,
}

impl<S: Socket> Live<'_, S> {
    /// The loop: close commands go first, then queued messages, client frames and the
    /// keepalive.
    async fn run(
        mut self,
        mut data: mpsc::Receiver<Outbound>,
        mut control: mpsc::Receiver<Close>,
    ) -> End {
        let period = self.state.config.ping_interval();
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                biased;
                cmd = control.recv() => Break(self.on_close_command(cmd).await),
                out = data.recv() => self.deliver(out).await,
                frame = self.ws.next() => self.on_client_frame(frame).await,
                _ = ping.tick() => self.keepalive(period).await,
            };
            if let Break(end) = step {
                return end;
            }
        }
    }

    /// A close command (reset, drain, replaced, slow consumer): its frame, then the close
    /// code. The queue ending means the registry dropped the session.
    async fn on_close_command(&mut self, cmd: Option<Close>) -> End {
        let Some(cmd) = cmd else {
            return End::Closed("removed");
        };
        if let Some(frame) = cmd.frame
            && send(&mut self.ws, Message::Text(frame)).await.is_err()
        {
            return End::WriteFailed;
        }
        self.state.metrics.reset(cmd.reason);
        close(&mut self.ws, cmd.code, cmd.reason).await;
        End::Closed(cmd.reason)
    }

    /// A queued message, skipped if its offset is not past `last` (the replay sent it).
    async fn deliver(&mut self, out: Option<Outbound>) -> ControlFlow<End> {
        let Some(out) = out else {
            return Break(End::Closed("removed"));
        };
        if let Some(offset) = out.offset {
            if offset <= self.last {
                return Continue(());
            }
            self.last = offset;
        }
        if send(&mut self.ws, Message::Text(out.text)).await.is_err() {
            return Break(End::WriteFailed);
        }
        self.state.metrics.delivered(out.kind);
        Continue(())
    }

    /// A frame from the client (or the end of its stream). Every frame counts as liveness;
    /// text, pings and pongs need nothing else; a close ends the session; a binary or broken
    /// frame closes it.
    async fn on_client_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
    ) -> ControlFlow<End> {
        self.last_seen = Instant::now();
        match frame {
            None | Some(Ok(Message::Close(_))) => {
                // Drive the queued close reply (tungstenite answers a close itself).
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
                Break(End::Client)
            }
            // Chat mode's hook (helper B): a `{"to", "message"}` frame, see `crate::chat`.
            Some(Ok(Message::Text(text))) => {
                match crate::chat::on_text(self.state, self.key, &text).await {
                    Some(reply) => match send(&mut self.ws, Message::Text(reply)).await {
                        Ok(()) => Continue(()),
                        Err(end) => Break(end),
                    },
                    None => Continue(()),
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Continue(()),
            Some(Ok(Message::Binary(_))) => Break(self.refuse(Violation::BINARY_FRAME).await),
            Some(Err(e)) => match Violation::of(&e) {
                Some(violation) => {
                    tracing::debug!(error = %e, "client protocol error");
                    Break(self.refuse(violation).await)
                }
                None => Break(End::Client),
            },
        }
    }

    /// Counts the violation and closes the session with its code.
    async fn refuse(&mut self, violation: Violation) -> End {
        self.state.metrics.error(violation.metric);
        close(&mut self.ws, violation.code, violation.reason).await;
        End::Protocol(violation.code)
    }

    /// A keepalive tick: closes a client silent for two intervals, else pings it.
    async fn keepalive(&mut self, period: Duration) -> ControlFlow<End> {
        if self.last_seen.elapsed() > 2 * period {
            self.state.metrics.reset("keepalive");
            close(&mut self.ws, CLOSE_GOING_AWAY, "keepalive timeout").await;
            return Break(End::Keepalive);
        }
        if send(&mut self.ws, Message::Ping(Default::default()))
            .await
            .is_err()
        {
            return Break(End::WriteFailed);
        }
        Continue(())
    }
}

/// A client input the node answers by closing the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Violation {
    /// The close code sent.
    code: u16,
    /// The `errors_total{kind}` label.
    metric: &'static str,
    /// The close frame's reason.
    reason: &'static str,
}

impl Violation {
    /// A binary frame: the node speaks text only.
    const BINARY_FRAME: Violation = Violation::new(
        CLOSE_POLICY,
        "binary-frame",
        "binary frames are not accepted",
    );
    /// A frame or message over `--max-frame-bytes`.
    const TOO_BIG: Violation = Violation::new(CLOSE_TOO_BIG, "frame-too-big", "message too big");
    /// A text frame that is not UTF-8.
    const INVALID_UTF8: Violation = Violation::new(
        CLOSE_INVALID_PAYLOAD,
        "invalid-utf8",
        "invalid UTF-8 in a text frame",
    );
    /// Any other breach of RFC 6455.
    const PROTOCOL: Violation = Violation::new(CLOSE_PROTOCOL_ERROR, "protocol", "protocol error");

    /// A violation closed with `code`, counted as `metric`, explained by `reason`.
    const fn new(code: u16, metric: &'static str, reason: &'static str) -> Self {
        Violation {
            code,
            metric,
            reason,
        }
    }

    /// The violation behind a read error; None when the connection just failed.
    fn of(e: &WsError) -> Option<Violation> {
        match e {
            WsError::Capacity(_) => Some(Violation::TOO_BIG),
            WsError::Utf8(_) => Some(Violation::INVALID_UTF8),
            WsError::Protocol(_) => Some(Violation::PROTOCOL),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_util::sync::CancellationToken;
    use wscluster_ring::contract::ClientMessage;

    use super::*;
    use crate::bus::MemoryBus;
    use crate::config::Config;
    use crate::mailbox::{MemoryMailbox, Retention};
    use crate::ownership::RingView;
    use crate::presence::MemoryPresence;

    fn state() -> NodeState {
        let config = Config::for_tests("n-0");
        NodeState::new(
            config,
            Arc::new(MemoryMailbox::new(Retention {
                max_len: 100,
                ttl: Duration::from_secs(60),
            })),
            Arc::new(MemoryPresence::new(Duration::from_secs(60))),
            Arc::new(MemoryBus::new()),
            RingView::Standalone,
            CancellationToken::new(),
        )
    }

    /// One end of an in-memory WebSocket.
    type Pipe = WebSocketStream<tokio::io::DuplexStream>;

    async fn next(ws: &mut Pipe) -> ClientMessage {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("frame in time")
                .expect("open")
                .expect("ok");
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).expect("client message");
            }
        }
    }

    /// Both ends of an in-memory WebSocket: the session's and the client's.
    async fn pipe() -> (Pipe, Pipe) {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        (server, client)
    }

    /// Queues a live `message` with `offset`, as `/send` does.
    async fn queue_message(state: &NodeState, data: &mpsc::Sender<Outbound>, offset: u64) {
        let text =
            state.client_message(MessageKind::Message, format!("m{offset}"), 0, Some(offset));
        data.send(Outbound {
            offset: Some(offset),
            text,
            kind: "message",
        })
        .await
        .expect("queue");
    }

    #[tokio::test]
    async fn live_messages_that_race_the_replay_are_delivered_once_and_in_offset_order() {
        let state = Arc::new(state());
        for i in 1..=3 {
            state
                .mailbox
                .append("alice", &format!("m{i}"), i)
                .await
                .expect("append");
        }
        let (server, mut client) = pipe().await;
        let (data_tx, data_rx) = mpsc::channel(16);
        let (_control_tx, control_rx) = mpsc::channel(2);
        // Offsets 2 and 3 were queued live while the replay read them too; 4 is new.
        for offset in [2u64, 3, 4] {
            queue_message(&state, &data_tx, offset).await;
        }
        let session = async {
            drive(
                &state,
                server,
                "alice",
                Since::Offset(1),
                data_rx,
                control_rx,
            )
            .await
        };
        let client_side = async {
            let mut seen = Vec::new();
            loop {
                let m = next(&mut client).await;
                if m.kind == MessageKind::System {
                    assert_eq!(m.content, "ready");
                    continue;
                }
                seen.push(m.offset.expect("offset"));
                if seen.len() == 3 {
                    break;
                }
            }
            client.close(None).await.expect("close");
            seen
        };
        let (end, seen) = tokio::join!(session, client_side);
        assert_eq!(seen, vec![2, 3, 4]);
        assert_eq!(end, End::Client);
    }

    #[tokio::test]
    async fn a_close_command_sends_its_frame_then_the_close_code() {
        let state = Arc::new(state());
        let (server, mut client) = pipe().await;
        let (_data_tx, data_rx) = mpsc::channel(16);
        let (control_tx, control_rx) = mpsc::channel(2);
        control_tx
            .send(Close {
                frame: Some(Utf8Bytes::from("{\"type\":\"reset\"}")),
                code: 4000,
                reason: "rebalance",
            })
            .await
            .expect("queue");
        let session = drive(&state, server, "bob", Since::Absent, data_rx, control_rx);
        let client_side = async {
            let mut frames = Vec::new();
            while let Some(Ok(m)) = client.next().await {
                frames.push(m);
            }
            frames
        };
        let (end, frames) = tokio::join!(session, client_side);
        assert_eq!(end, End::Closed("rebalance"));
        assert!(matches!(&frames[1], Message::Text(t) if t.as_str() == "{\"type\":\"reset\"}"));
        assert!(matches!(&frames[2], Message::Close(Some(f)) if u16::from(f.code) == 4000));
    }

    #[test]
    fn since_is_checked_against_what_the_mailbox_retains() {
        let page = |oldest, latest| MailboxPage {
            entries: Vec::new(),
            oldest,
            latest,
        };
        // Retained 4..=6: since 3 or later replays, since 1 lost 2..=3.
        assert_eq!(SinceGap::of(3, &page(Some(4), 6)), None);
        assert_eq!(SinceGap::of(6, &page(Some(4), 6)), None);
        let trimmed = SinceGap::of(1, &page(Some(4), 6));
        assert_eq!(trimmed, Some(SinceGap::Trimmed { oldest: 4 }));
        assert_eq!(trimmed.and_then(SinceGap::stops_at), None);
        // Past the latest offset, or nothing retained after it: live only, from the latest.
        let ahead = SinceGap::of(9, &page(Some(4), 6));
        assert_eq!(ahead.and_then(SinceGap::stops_at), Some(6));
        assert_eq!(ahead.map(SinceGap::metric), Some("since-ahead"));
        let expired = SinceGap::of(2, &page(None, 6));
        assert_eq!(expired, Some(SinceGap::Expired { latest: 6 }));
        assert_eq!(expired.and_then(SinceGap::stops_at), Some(6));
        assert_eq!(SinceGap::of(0, &page(None, 0)), None);
    }
}
