//! One WebSocket session: register (within the key's session cap), record presence, replay
//! the mailbox after `?since=` (within `?epoch=`), send the ready frame, then deliver live
//! messages until the client leaves or the node closes it.
//!
//! Ordering without loss: the session is registered and the mailbox's first page read under
//! the key's send stripe ([`NodeState::open_session`]), so every message appended before the
//! read is in the mailbox (and in the page's `latest`) and every message appended after it is
//! queued to the session. The session sends the replay, then only queued messages past the
//! last (epoch, offset) it sent: each message exactly once, in order. A queued message of
//! another epoch than the last one sent is always delivered — a live session never drops a
//! message because of an offset from an older epoch.
//!
//! No silent gap: if a mailbox read fails or times out during the replay, the session sends
//! no ready frame and does not go live: it closes with a reset frame `unavailable` and
//! `CLOSE_UNAVAILABLE` (4005), and the client resumes from where it was.
//!
//! [`drive`] is generic over any [`Socket`] (a `Sink + Stream` of tungstenite messages), so
//! tests run it over an in-memory duplex pipe. It runs in two steps: the greeting (the replay,
//! then the ready frame), then the live loop, whose every event (a close command, a queued
//! message, a client frame, a keepalive tick) has its own handler.

use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use wscluster_ring::contract::{
    CLOSE_POLICY, CLOSE_REPLACED, MessageKind, ReadyFrame, ResetFrame, ResetReason,
};

use crate::mailbox::{MailboxEntry, MailboxPage, READ_PAGE};
use crate::presence::PresenceEntry;
use crate::registry::{Close, Handle, InboxReceiver, Outbound, Received, Removed, over_cap_close};
use crate::state::{NodeState, now_ms};

/// Longest wait for one frame to be written before the client is considered gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the client's half of the closing handshake (RFC 6455 §7.1.2).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A session closed as unavailable (4005) is told to come back after a delay drawn from
/// `[UNAVAILABLE_RETRY_MIN_MS, 2 × UNAVAILABLE_RETRY_MIN_MS]`: long enough for a Redis
/// failover or restart to make progress, spread so the clients of a node do not return at once.
pub const UNAVAILABLE_RETRY_MIN_MS: u64 = 1_000;
/// Longest `epoch` query parameter accepted (epochs this node makes are 16 hex digits).
pub const MAX_EPOCH_LEN: usize = 64;

/// RFC 6455 §7.4.1: going away (sent when the keepalive times out).
const CLOSE_GOING_AWAY: u16 = 1001;
/// RFC 6455 §7.4.1: protocol error.
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// RFC 6455 §7.4.1: data inconsistent with the message type (invalid UTF-8 in a text frame).
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// RFC 6455 §7.4.1: a message too big to process.
const CLOSE_TOO_BIG: u16 = 1009;

/// Where a client asks to resume: `?since=<offset>&epoch=<epoch>`, both checked before the
/// upgrade is answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resume {
    /// The last offset the client has (`0`: it has nothing, replay all that is retained);
    /// `None`: live messages only.
    pub since: Option<u64>,
    /// The epoch `since` belongs to.
    pub epoch: Option<String>,
}

/// Why `since` or `epoch` is refused (400 before the upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// `since` is not a decimal offset.
    #[error("since must be a non-negative integer offset")]
    Since,
    /// `epoch` is not an epoch.
    #[error("epoch must be 1 to 64 ASCII letters, digits, '-' or '_'")]
    Epoch,
    /// `epoch` without `since`.
    #[error("epoch is only meaningful together with since")]
    EpochWithoutSince,
}

impl Resume {
    /// Checks the raw (decoded) query values.
    pub fn parse(since: Option<&str>, epoch: Option<&str>) -> Result<Resume, ResumeError> {
        let since = match since {
            None => None,
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                Some(s.parse::<u64>().map_err(|_| ResumeError::Since)?)
            }
            Some(_) => return Err(ResumeError::Since),
        };
        let epoch = match epoch {
            None => None,
            Some(e)
                if !e.is_empty()
                    && e.len() <= MAX_EPOCH_LEN
                    && e.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Some(e.to_owned())
            }
            Some(_) => return Err(ResumeError::Epoch),
        };
        if epoch.is_some() && since.is_none() {
            return Err(ResumeError::EpochWithoutSince);
        }
        Ok(Resume { since, epoch })
    }

    /// The offset the first mailbox read starts after.
    fn read_after(&self) -> u64 {
        self.since.unwrap_or(0)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client closed or disconnected.
    Client,
    /// The node closed it (reset, drain, replaced, slow consumer, unavailable).
    Closed(&'static str),
    /// A protocol violation by the client (code sent).
    Protocol(u16),
    /// Writing failed or timed out.
    WriteFailed,
    /// No pong or frame for two keepalive intervals.
    Keepalive,
}

/// What a session runs on: a WebSocket as a sink and a stream of tungstenite messages (the
/// upgraded connection, or an in-memory pipe in tests), and the byte stream under it.
pub trait Socket:
    Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin
{
    /// The connection under the WebSocket, for [`send_text`]'s frames.
    fn io(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send);
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for WebSocketStream<T> {
    fn io(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        self.get_mut()
    }
}

impl<S: Socket + ?Sized> Socket for Box<S> {
    fn io(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        (**self).io()
    }
}

/// Runs a session on an upgraded socket until it ends, then cleans up.
///
/// Memory: this future lives as long as the session, idle or not, so what only the start or
/// the end of a session needs (opening it, the greeting, a close handshake) is boxed and
/// freed when done; while idle the future holds the socket, the inbox and the live loop's
/// few waits.
pub async fn run<S: Socket>(
    state: Arc<NodeState>,
    mut ws: S,
    key: Arc<str>,
    resume: Resume,
    _permit: OwnedSemaphorePermit,
) -> End {
    let (conn, conn_tag) = state.next_conn();
    let queue = usize::try_from(state.config.session_queue).unwrap_or(1024);
    let (handle, inbox) = Handle::new(conn, conn_tag, queue);
    let first = match Box::pin(open(&state, &key, &resume, handle)).await {
        Ok(first) => first,
        Err(c) => {
            Box::pin(close(&mut ws, c.code, c.reason)).await;
            return End::Closed(c.reason);
        }
    };
    let end = drive(&state, ws, &key, &resume, first, inbox).await;
    Box::pin(finish(&state, &key, conn, &end)).await;
    end
}

/// Registers the session and records its presence; returns the mailbox's first page (or why
/// it could not be read), or the close for a session that lost the race for the key's last
/// place.
async fn open(
    state: &NodeState,
    key: &Arc<str>,
    resume: &Resume,
    handle: Handle,
) -> Result<crate::Result<MailboxPage>, Close> {
    let limit = if resume.since.is_some() { READ_PAGE } else { 1 };
    let opened = state
        .open_session(key, handle, resume.read_after(), limit)
        .await;
    let (registered, first) = match opened {
        Ok(opened) => opened,
        Err(refusal) => {
            tracing::debug!(user = %key, %refusal, "session lost the race for the key's last place");
            state.metrics.error("too-many-sessions");
            return Err(over_cap_close());
        }
    };
    if let Some(old) = registered.replaced {
        let _ = old.control.try_send(Close {
            frame: None,
            code: CLOSE_REPLACED,
            reason: "replaced",
        });
    }
    state.metrics.connections.inc();
    state.metrics.connections_opened.inc();
    let entry = PresenceEntry {
        node: state.id.to_string(),
        ring_version: state.ring.version(),
        since: now_ms(),
        conn: registered.presence_tag.to_string(),
    };
    // Without a mailbox the session closes at once (4005): no presence to record then.
    if first.is_ok()
        && let Err(e) = state.presence.set(key, &entry).await
    {
        tracing::warn!(user = %key, error = %e, "presence not recorded");
        state.metrics.error(e.metric_label());
    }
    Ok(first)
}

/// After a registered session ended: unregisters it and, with the key's last session, its
/// presence.
async fn finish(state: &NodeState, key: &str, conn: u64, end: &End) {
    state.metrics.connections.dec();
    if let Removed::Last(tag) = state.registry.remove(key, conn)
        && let Err(e) = state.presence.remove(key, &tag).await
    {
        tracing::warn!(user = %key, error = %e, "presence not removed (it expires on its own)");
        state.metrics.error(e.metric_label());
    }
    tracing::debug!(user = %key, ?end, "session ended");
}

/// Writes one frame with a timeout.
async fn send<S: Socket>(ws: &mut S, msg: Message) -> Result<(), End> {
    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::WriteFailed),
    }
}

/// Writes one text frame with a timeout, straight to the connection rather than through
/// tungstenite's write buffer: that buffer is a `Vec` that keeps the capacity of the largest
/// frame it ever held, so one large message would stay in an idle session's memory (and the
/// copy into it is saved). Whatever tungstenite has queued (a pong) is flushed first, so
/// frames never interleave; a frame cut by the timeout ends the session.
async fn send_text<S: Socket>(ws: &mut S, text: Utf8Bytes) -> Result<(), End> {
    let write = async {
        ws.flush().await.map_err(std::io::Error::other)?;
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let mut head = [0u8; 10];
        let mut cursor = std::io::Cursor::new(&mut head[..]);
        header
            .format(text.len() as u64, &mut cursor)
            .map_err(std::io::Error::other)?;
        let head_len = usize::try_from(cursor.position()).unwrap_or(head.len());
        write_frame(ws.io(), &head[..head_len], text.as_bytes()).await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::WriteFailed),
    }
}

/// Writes `head` then `body`, in one vectored write when the connection takes it.
async fn write_frame(
    io: &mut (dyn AsyncWrite + Unpin + Send),
    mut head: &[u8],
    mut body: &[u8],
) -> std::io::Result<()> {
    while !head.is_empty() {
        let slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        let n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    io.write_all(body).await?;
    io.flush().await
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

/// What the greeting does with the client's [`Resume`], decided from the first mailbox page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Send every retained entry after `after`, then the ready frame with `recovered`.
    Replay {
        /// The offset the replay starts after.
        after: u64,
        /// Whether the client then has everything after its `since`.
        recovered: bool,
    },
    /// Replay nothing; the ready frame says `recovered` and where the stream is.
    Skip {
        /// False when the client asked to resume and cannot be given everything after `since`.
        recovered: bool,
    },
}

impl Plan {
    /// The plan for `resume` against the stream `page` describes (Centrifugo's recovery
    /// model): `since` is recovered only within the same epoch and while every offset after it
    /// is still retained; `since=0` replays all that is retained (recovered when nothing was
    /// trimmed and the epoch, if given, matches); no `since` means live only.
    pub fn of(resume: &Resume, page: &MailboxPage) -> Plan {
        let Some(since) = resume.since else {
            return Plan::Skip { recovered: true };
        };
        let same_epoch = match resume.epoch.as_deref() {
            Some(epoch) => epoch == &*page.epoch,
            None => since == 0,
        };
        let kept_from = page.oldest.unwrap_or(page.latest.saturating_add(1));
        let kept = since <= page.latest && since.saturating_add(1) >= kept_from;
        match since {
            0 => Plan::Replay {
                after: 0,
                recovered: same_epoch && kept,
            },
            _ if same_epoch && kept => Plan::Replay {
                after: since,
                recovered: true,
            },
            _ => Plan::Skip { recovered: false },
        }
    }
}

/// Why the greeting did not end in a live session.
#[derive(Debug)]
enum Failed {
    /// The socket failed.
    End(End),
    /// The mailbox could not be read (or changed epoch mid-replay): close with 4005.
    Unavailable(String),
}

impl From<End> for Failed {
    fn from(end: End) -> Self {
        Failed::End(end)
    }
}

/// Sends replayed entries, oldest first; returns the last offset sent (`after` if none).
async fn send_entries<S: Socket>(
    state: &NodeState,
    ws: &mut S,
    epoch: &str,
    entries: Vec<MailboxEntry>,
    mut after: u64,
) -> Result<u64, End> {
    for entry in entries {
        let text = state.client_message(
            MessageKind::Message,
            entry.content,
            entry.timestamp,
            Some((epoch, entry.offset)),
            entry.from,
        );
        send_text(ws, text).await?;
        state.metrics.delivered("replay");
        after = entry.offset;
    }
    Ok(after)
}

/// Sends the replay from `page` on; returns the last offset the client now has and the
/// stream's latest offset. A later page that fails, or belongs to another epoch, fails it.
async fn replay<S: Socket>(
    state: &NodeState,
    ws: &mut S,
    key: &str,
    mut page: MailboxPage,
    mut after: u64,
) -> Result<(u64, u64), Failed> {
    let epoch = page.epoch.clone();
    loop {
        let more = page.entries.len() >= READ_PAGE;
        let latest = page.latest;
        after = send_entries(state, ws, &epoch, page.entries, after).await?;
        if !more {
            return Ok((after, latest.max(after)));
        }
        page = state
            .mailbox
            .read(key, after, READ_PAGE)
            .await
            .map_err(|e| {
                state.metrics.error(e.metric_label());
                Failed::Unavailable(e.to_string())
            })?;
        if page.epoch != epoch {
            return Err(Failed::Unavailable(
                "the mailbox was made anew during the replay".into(),
            ));
        }
    }
}

/// What comes before live messages: the replay the [`Plan`] asks for, then the ready frame.
/// Returns the (epoch, offset) the client is at.
async fn greet<S: Socket>(
    state: &NodeState,
    ws: &mut S,
    key: &str,
    resume: &Resume,
    first: MailboxPage,
) -> Result<(Arc<str>, u64), Failed> {
    let epoch = first.epoch.clone();
    let (at, recovered) = match Plan::of(resume, &first) {
        Plan::Skip { recovered } => (first.latest, recovered),
        Plan::Replay { after, recovered } => {
            let (_, latest) = replay(state, ws, key, first, after).await?;
            (latest, recovered)
        }
    };
    if !recovered {
        state.metrics.error("resume-not-recovered");
    }
    let ready = ReadyFrame::new(&*state.id, &*epoch, at, recovered);
    send_text(ws, Utf8Bytes::from(ready.to_json())).await?;
    Ok((epoch, at))
}

/// Closes a session whose replay could not be completed: a reset frame `unavailable`, then
/// `CLOSE_UNAVAILABLE` (4005). No ready frame was sent, so the client keeps its position.
async fn close_unavailable<S: Socket>(state: &NodeState, ws: &mut S, key: &str, why: &str) -> End {
    tracing::warn!(user = %key, error = %why, "mailbox unavailable or inconsistent; closing with 4005");
    let reason = ResetReason::Unavailable;
    let retry = UNAVAILABLE_RETRY_MIN_MS + rand::random_range(0..=UNAVAILABLE_RETRY_MIN_MS);
    let frame = ResetFrame::new(reason, retry, None).to_json();
    state.metrics.reset(reason.as_str());
    if send_text(ws, Utf8Bytes::from(frame)).await.is_ok() {
        close(ws, reason.close_code(), reason.as_str()).await;
    }
    End::Closed(reason.as_str())
}

/// The session loop; see the module docs. `first` is the mailbox's first page (or why it
/// could not be read). Returns why it ended (the socket is closed).
pub async fn drive<S: Socket>(
    state: &Arc<NodeState>,
    mut ws: S,
    key: &str,
    resume: &Resume,
    first: crate::Result<MailboxPage>,
    inbox: InboxReceiver,
) -> End {
    match Box::pin(greeting(state, &mut ws, key, resume, first)).await {
        Ok(last) => {
            let session = Live {
                state,
                key,
                ws,
                last,
                last_queued: None,
                last_seen: Instant::now(),
            };
            session.run(inbox).await
        }
        Err(end) => end,
    }
}

/// The greeting, or the session's end when it fails (closed with 4005 when the mailbox could
/// not be read).
async fn greeting<S: Socket>(
    state: &NodeState,
    ws: &mut S,
    key: &str,
    resume: &Resume,
    first: crate::Result<MailboxPage>,
) -> Result<(Arc<str>, u64), End> {
    let greeted = match first {
        Ok(page) => greet(state, ws, key, resume, page).await,
        Err(e) => {
            state.metrics.error(e.metric_label());
            Err(Failed::Unavailable(e.to_string()))
        }
    };
    match greeted {
        Ok(last) => Ok(last),
        Err(Failed::End(end)) => Err(end),
        Err(Failed::Unavailable(why)) => Err(close_unavailable(state, ws, key, &why).await),
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
    /// The last mailbox (epoch, offset) the client has; queued messages of that epoch at or
    /// below that offset are skipped (the replay sent them).
    last: (Arc<str>, u64),
    /// The last mailbox position that came through the inbox. Within one epoch these strictly
    /// increase (a user's append and delivery run under its send stripe), so one that does not
    /// means the stream lost its tip — a Redis failover promoted a replica that lacked the
    /// newest appends — and is handing out again an offset the client already has. The
    /// session then closes as unavailable rather than skip the new message as a duplicate:
    /// the client resumes, and its `since` past the stream's end is answered `recovered: false`.
    last_queued: Option<(Arc<str>, u64)>,
    /// When the client last sent a frame (any frame counts as liveness).
    last_seen: Instant,
}

impl<S: Socket> Live<'_, S> {
    /// The loop: close commands go first, then queued messages, client frames and the
    /// keepalive. What runs only when something happens (writing a batch of messages, a close,
    /// a keepalive, a chat reply, a refusal) is boxed for that while, so the loop's own future,
    /// which an idle session keeps, stays small.
    async fn run(mut self, inbox: InboxReceiver) -> End {
        let period = self.state.config.ping_interval();
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                biased;
                received = inbox.recv() => Box::pin(self.on_inbox(received, &inbox)).await,
                frame = self.ws.next() => self.on_client_frame(frame).await,
                _ = ping.tick() => Box::pin(self.keepalive(period)).await,
            };
            if let Break(end) = step {
                return end;
            }
        }
    }

    /// What the inbox had: a close command, or every queued message, each written unless a
    /// close command arrives first (it overtakes the messages not yet written).
    async fn on_inbox(&mut self, received: Received, inbox: &InboxReceiver) -> ControlFlow<End> {
        let batch = match received {
            Received::Close(cmd) => return Break(Box::pin(self.on_close_command(cmd)).await),
            Received::Removed => return Break(End::Closed("removed")),
            Received::Messages(batch) => batch,
        };
        for out in batch {
            if let Some(cmd) = inbox.take_close() {
                return Break(Box::pin(self.on_close_command(cmd)).await);
            }
            self.deliver(out).await?;
        }
        Continue(())
    }

    /// A close command (reset, drain, replaced, slow consumer): its frame, then the close
    /// code.
    async fn on_close_command(&mut self, cmd: Close) -> End {
        if let Some(frame) = cmd.frame
            && send_text(&mut self.ws, frame).await.is_err()
        {
            return End::WriteFailed;
        }
        self.state.metrics.reset(cmd.reason);
        close(&mut self.ws, cmd.code, cmd.reason).await;
        End::Closed(cmd.reason)
    }

    /// A queued message, skipped only if it is of the last epoch and not past its offset (the
    /// replay sent it); a message of another epoch is always delivered.
    async fn deliver(&mut self, out: Outbound) -> ControlFlow<End> {
        if let Some((epoch, offset)) = out.position {
            if self
                .last_queued
                .as_ref()
                .is_some_and(|(e, o)| *e == epoch && offset <= *o)
            {
                let why = format!("the mailbox handed out offset {offset} of epoch {epoch} again");
                self.state.metrics.error("mailbox-offset-reused");
                let closed = close_unavailable(self.state, &mut self.ws, self.key, &why);
                return Break(Box::pin(closed).await);
            }
            self.last_queued = Some((epoch.clone(), offset));
            if epoch == self.last.0 && offset <= self.last.1 {
                return Continue(());
            }
            self.last = (epoch, offset);
        }
        if send_text(&mut self.ws, out.text).await.is_err() {
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
                let flushed = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush());
                let _ = Box::pin(flushed).await;
                Break(End::Client)
            }
            Some(Ok(Message::Text(text))) => Box::pin(self.on_text(text)).await,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Continue(()),
            Some(Ok(Message::Binary(_))) => {
                Break(Box::pin(self.refuse(Violation::BINARY_FRAME)).await)
            }
            Some(Err(e)) => match Violation::of(&e) {
                Some(violation) => {
                    tracing::debug!(user = %self.key, error = %e, "client protocol error");
                    Break(Box::pin(self.refuse(violation)).await)
                }
                None => Break(End::Client),
            },
        }
    }

    /// A text frame: chat mode's hook (a `{"to", "message"}` frame, see `crate::chat`).
    async fn on_text(&mut self, text: Utf8Bytes) -> ControlFlow<End> {
        match crate::chat::on_text(self.state, self.key, &text).await {
            Some(reply) => match send_text(&mut self.ws, reply).await {
                Ok(()) => Continue(()),
                Err(end) => Break(end),
            },
            None => Continue(()),
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

    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_util::sync::CancellationToken;

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

    async fn next(ws: &mut Pipe) -> serde_json::Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("frame in time")
                .expect("open")
                .expect("ok");
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).expect("json frame");
            }
        }
    }

    /// Both ends of an in-memory WebSocket: the session's and the client's.
    /// Every frame the client side receives until the stream ends.
    async fn frames_until_closed(client: &mut Pipe) -> Vec<Message> {
        let mut frames = Vec::new();
        while let Some(Ok(m)) = client.next().await {
            frames.push(m);
        }
        frames
    }

    async fn pipe() -> (Pipe, Pipe) {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        (server, client)
    }

    /// A session's handle and inbox (16 messages).
    fn inbox() -> (Handle, InboxReceiver) {
        Handle::new(1, Arc::from("n-0:1"), 16)
    }

    /// Queues a live `message` at (`epoch`, `offset`), as `/send` does.
    async fn queue_message(state: &NodeState, handle: &Handle, epoch: &str, offset: u64) {
        let text = state.client_message(
            MessageKind::Message,
            format!("m{offset}"),
            0,
            Some((epoch, offset)),
            None,
        );
        handle
            .data
            .try_send(Outbound {
                position: Some((Arc::from(epoch), offset)),
                text,
                kind: "message",
            })
            .expect("queue");
    }

    /// Runs a session with `first` as its first page until the client has `want` messages;
    /// returns (epoch, offset, content) of each and the ready frame.
    async fn session_until(
        state: &Arc<NodeState>,
        resume: Resume,
        first: crate::Result<MailboxPage>,
        queued: &[(&str, u64)],
        want: usize,
    ) -> (Vec<(String, u64)>, serde_json::Value) {
        let (server, mut client) = pipe().await;
        let (handle, inbox) = inbox();
        for (epoch, offset) in queued {
            queue_message(state, &handle, epoch, *offset).await;
        }
        let session = drive(state, server, "alice", &resume, first, inbox);
        let client_side = async {
            let mut seen = Vec::new();
            let mut ready = serde_json::Value::Null;
            while seen.len() < want {
                let m = next(&mut client).await;
                if m["type"] == "ready" {
                    ready = m;
                    continue;
                }
                let epoch = m["epoch"].as_str().expect("epoch").to_owned();
                seen.push((epoch, m["offset"].as_u64().expect("offset")));
            }
            client.close(None).await.expect("close");
            (seen, ready)
        };
        let (end, seen) = tokio::join!(session, client_side);
        assert_eq!(end, End::Client);
        seen
    }

    fn since(n: u64, epoch: Option<&str>) -> Resume {
        Resume {
            since: Some(n),
            epoch: epoch.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn live_messages_that_race_the_replay_are_delivered_once_and_in_offset_order() {
        let state = Arc::new(state());
        let mut epoch = None;
        for i in 1..=3 {
            let stored = state
                .mailbox
                .append("alice", &format!("m{i}"), None, i)
                .await
                .expect("append");
            epoch = Some(stored.epoch);
        }
        let epoch = epoch.expect("appended");
        let first = state.mailbox.read("alice", 1, READ_PAGE).await;
        // Offsets 2 and 3 were queued live while the replay read them too; 4 is new.
        let queued = [(&*epoch, 2), (&*epoch, 3), (&*epoch, 4)];
        let (seen, ready) = session_until(&state, since(1, Some(&epoch)), first, &queued, 3).await;
        let offsets: Vec<u64> = seen.iter().map(|(_, o)| *o).collect();
        assert_eq!(offsets, vec![2, 3, 4]);
        assert!(seen.iter().all(|(e, _)| *e == *epoch));
        assert_eq!(ready["recovered"], true);
        assert_eq!(
            ready["offset"], 3,
            "the ready frame names the latest offset replayed"
        );
    }

    #[tokio::test]
    async fn a_message_of_a_new_epoch_is_delivered_even_with_an_offset_already_seen() {
        let state = Arc::new(state());
        for i in 1..=3 {
            state
                .mailbox
                .append("alice", "x", None, i)
                .await
                .expect("append");
        }
        let first = state.mailbox.read("alice", 0, READ_PAGE).await;
        // The stream expired and was made again: its offset 1 is a new message.
        let (seen, _) = session_until(&state, since(0, None), first, &[("fresh", 1)], 4).await;
        let offsets: Vec<u64> = seen.iter().map(|(_, o)| *o).collect();
        assert_eq!(offsets, vec![1, 2, 3, 1]);
        assert_eq!(seen[3].0, "fresh");
    }

    #[tokio::test]
    async fn an_offset_handed_out_again_in_its_epoch_closes_with_4005_instead_of_being_skipped() {
        let state = Arc::new(state());
        state
            .mailbox
            .append("alice", "x", None, 1)
            .await
            .expect("append");
        let first = state.mailbox.read("alice", 0, READ_PAGE).await;
        let epoch = first.as_ref().expect("page").epoch.to_string();
        let (server, mut client) = pipe().await;
        let (handle, inbox) = inbox();
        // Offsets 2 and 3 went live, then the stream lost its tip and handed out 3 again.
        for offset in [2, 3, 3] {
            queue_message(&state, &handle, &epoch, offset).await;
        }
        let resume = since(0, None);
        let session = drive(&state, server, "alice", &resume, first, inbox);
        let (end, frames) = tokio::join!(session, frames_until_closed(&mut client));
        assert_eq!(end, End::Closed("unavailable"));
        let offsets: Vec<u64> = frames
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => serde_json::from_str::<serde_json::Value>(t).ok(),
                _ => None,
            })
            .filter_map(|m| m["offset"].as_u64().filter(|_| m["type"] != "ready"))
            .collect();
        assert_eq!(offsets, vec![1, 2, 3], "the reused offset is not delivered");
        assert!(frames.iter().any(
            |m| matches!(m, Message::Close(Some(f)) if u16::from(f.code) == CLOSE_UNAVAILABLE_CODE)
        ));
    }

    #[tokio::test]
    async fn a_failed_mailbox_read_closes_with_4005_after_a_reset_frame_and_no_ready_frame() {
        let state = Arc::new(state());
        let (server, mut client) = pipe().await;
        let (_handle, inbox) = inbox();
        let failed = Err(crate::Error::Timeout("test".into()));
        let resume = since(7, Some("e"));
        let session = drive(&state, server, "bob", &resume, failed, inbox);
        let client_side = frames_until_closed(&mut client);
        let (end, frames) = tokio::join!(session, client_side);
        assert_eq!(end, End::Closed("unavailable"));
        let texts: Vec<serde_json::Value> = frames
            .iter()
            .filter_map(|m| match m {
                Message::Text(t) => serde_json::from_str(t).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(texts.len(), 1, "only the reset frame: {texts:?}");
        let reset: ResetFrame = serde_json::from_value(texts[0].clone()).expect("reset frame");
        assert_eq!(reset.reason, ResetReason::Unavailable);
        assert!(
            (UNAVAILABLE_RETRY_MIN_MS..=2 * UNAVAILABLE_RETRY_MIN_MS)
                .contains(&reset.retry_after_ms)
        );
        assert!(frames.iter().any(
            |m| matches!(m, Message::Close(Some(f)) if u16::from(f.code) == CLOSE_UNAVAILABLE_CODE)
        ));
    }

    const CLOSE_UNAVAILABLE_CODE: u16 = wscluster_ring::contract::CLOSE_UNAVAILABLE;

    #[tokio::test]
    async fn a_close_command_sends_its_frame_then_the_close_code() {
        let state = Arc::new(state());
        let (server, mut client) = pipe().await;
        let (handle, inbox) = inbox();
        handle
            .control
            .try_send(Close {
                frame: Some(Utf8Bytes::from("{\"type\":\"reset\"}")),
                code: 4000,
                reason: "rebalance",
            })
            .expect("queue");
        let first = state.mailbox.read("bob", 0, 1).await;
        let resume = Resume::default();
        let session = drive(&state, server, "bob", &resume, first, inbox);
        let client_side = frames_until_closed(&mut client);
        let (end, frames) = tokio::join!(session, client_side);
        assert_eq!(end, End::Closed("rebalance"));
        let ready: ReadyFrame = match &frames[0] {
            Message::Text(t) => serde_json::from_str(t).expect("ready frame first"),
            other => panic!("expected the ready frame, got {other:?}"),
        };
        assert!(ready.recovered);
        assert!(matches!(&frames[1], Message::Text(t) if t.as_str() == "{\"type\":\"reset\"}"));
        assert!(matches!(&frames[2], Message::Close(Some(f)) if u16::from(f.code) == 4000));
    }

    /// The session's future is what an idle session costs beyond its socket and inbox: the
    /// one-off phases are boxed so it stays small (in a debug build: 3,536 bytes with the
    /// socket inline and nothing boxed, 952 now).
    #[tokio::test]
    async fn the_session_future_stays_small() {
        let state = Arc::new(state());
        let (server, _client) = pipe().await;
        let permit = state
            .conn_limit
            .clone()
            .try_acquire_owned()
            .expect("a permit");
        let session = run(
            state.clone(),
            Box::new(server),
            Arc::from("k"),
            Resume::default(),
            permit,
        );
        let size = std::mem::size_of_val(&session);
        println!(
            "session future: {size} bytes; socket (boxed) {}; inbox {}",
            std::mem::size_of::<Pipe>(),
            std::mem::size_of::<crate::registry::Inbox>()
        );
        assert!(size <= 1280, "the session future grew to {size} bytes");
    }

    #[tokio::test]
    async fn text_frames_written_past_tungstenite_arrive_whole_at_every_length_form() {
        let (mut server, mut client) = pipe().await;
        let lengths = [0, 125, 126, 65_535, 65_536, 70_000];
        let writer = async {
            for len in lengths {
                send_text(&mut server, Utf8Bytes::from("x".repeat(len)))
                    .await
                    .expect("written");
            }
            server
        };
        let reader = async {
            let mut got = Vec::new();
            while got.len() < lengths.len() {
                match client.next().await {
                    Some(Ok(Message::Text(t))) => got.push(t.len()),
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
            got
        };
        let (_server, got) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(writer, reader)
        })
        .await
        .expect("in time");
        assert_eq!(got, lengths);
    }

    #[test]
    fn resume_parameters_are_validated() {
        assert_eq!(Resume::parse(None, None), Ok(Resume::default()));
        assert_eq!(
            Resume::parse(Some("7"), Some("ab-9_Z")),
            Ok(since(7, Some("ab-9_Z")))
        );
        assert_eq!(Resume::parse(Some("0"), None), Ok(since(0, None)));
        for bad in ["", "-1", "+1", "1.5", "x", "99999999999999999999999"] {
            assert_eq!(
                Resume::parse(Some(bad), None),
                Err(ResumeError::Since),
                "{bad}"
            );
        }
        let long = "e".repeat(MAX_EPOCH_LEN + 1);
        for bad in ["", "a b", "é", "a/b", long.as_str()] {
            assert_eq!(
                Resume::parse(Some("1"), Some(bad)),
                Err(ResumeError::Epoch),
                "{bad:?}"
            );
        }
        assert_eq!(
            Resume::parse(None, Some("e")),
            Err(ResumeError::EpochWithoutSince)
        );
    }

    #[test]
    fn since_is_recovered_only_within_its_epoch_and_while_every_later_offset_is_kept() {
        let page = |oldest, latest| MailboxPage {
            epoch: Arc::from("e1"),
            entries: Vec::new(),
            oldest,
            latest,
        };
        let replay = |after, recovered| Plan::Replay { after, recovered };
        let lost = Plan::Skip { recovered: false };
        // Retained 4..=6 of epoch e1.
        let kept = page(Some(4), 6);
        assert_eq!(Plan::of(&since(3, Some("e1")), &kept), replay(3, true));
        assert_eq!(Plan::of(&since(6, Some("e1")), &kept), replay(6, true));
        // Trimmed past since, ahead of the stream, another epoch, no epoch: not recovered.
        assert_eq!(Plan::of(&since(2, Some("e1")), &kept), lost);
        assert_eq!(Plan::of(&since(7, Some("e1")), &kept), lost);
        assert_eq!(Plan::of(&since(5, Some("e0")), &kept), lost);
        assert_eq!(Plan::of(&since(5, None), &kept), lost);
        // since=0: everything retained, recovered only if nothing was trimmed.
        assert_eq!(Plan::of(&since(0, None), &kept), replay(0, false));
        assert_eq!(
            Plan::of(&since(0, None), &page(Some(1), 6)),
            replay(0, true)
        );
        assert_eq!(
            Plan::of(&since(0, Some("e0")), &page(Some(1), 6)),
            replay(0, false)
        );
        // A new, empty stream: since=0 is whole; an old since is not.
        assert_eq!(Plan::of(&since(0, None), &page(None, 0)), replay(0, true));
        assert_eq!(Plan::of(&since(3, Some("e0")), &page(None, 0)), lost);
        // The expired tail of an epoch (meta kept, entries gone) is not recovered.
        assert_eq!(Plan::of(&since(2, Some("e1")), &page(None, 6)), lost);
        assert_eq!(
            Plan::of(&since(6, Some("e1")), &page(None, 6)),
            replay(6, true)
        );
        // No since: live only, nothing was asked.
        assert_eq!(
            Plan::of(&Resume::default(), &kept),
            Plan::Skip { recovered: true }
        );
    }
}
