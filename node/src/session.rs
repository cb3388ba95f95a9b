//! One WebSocket session: register (replacing an older session of the same key), record
//! presence, replay the mailbox after `?since=`, then deliver live messages until the client
//! leaves or the node closes it.
//!
//! Ordering without loss: the session is registered (so live messages queue up) *before* the
//! mailbox is read; it then sends the replay and afterwards only queued messages whose offset is
//! greater than the last one sent. A message appended around the registration is therefore in
//! the replay, in the queue, or both — and sent exactly once, in offset order.
//!
//! [`drive`] is generic over any `Sink + Stream` of tungstenite messages, so tests run it over
//! an in-memory duplex pipe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use wscluster_ring::contract::{CLOSE_POLICY, CLOSE_REPLACED, MessageKind};

use crate::mailbox::READ_PAGE;
use crate::presence::PresenceEntry;
use crate::registry::{CONTROL_QUEUE, Close, Handle, Outbound};
use crate::state::{NodeState, now_ms};

/// Longest wait for one frame to be written before the client is considered gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the client's half of the closing handshake (RFC 6455 §7.1.2).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Runs a session on an upgraded socket until it ends, then cleans up.
pub async fn run<S>(
    state: Arc<NodeState>,
    ws: S,
    key: Arc<str>,
    since: Since,
    _permit: OwnedSemaphorePermit,
) -> End
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let (conn, conn_tag) = state.next_conn();
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

    let end = drive(&state, ws, &key, since, data_rx, control_rx).await;

    state.registry.remove(&key, conn);
    state.metrics.connections.dec();
    if let Err(e) = state.presence.remove(&key, &conn_tag).await {
        tracing::warn!(error = %e, "presence not removed (it expires on its own)");
        state.metrics.error(e.metric_label());
    }
    tracing::debug!(?end, "session ended");
    end
}

/// Writes one frame with a timeout.
async fn send<S>(ws: &mut S, msg: Message) -> Result<(), End>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::WriteFailed),
    }
}

/// Sends a close frame and waits briefly for the client's close (or the end of the stream).
async fn close<S>(ws: &mut S, code: u16, reason: &str)
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
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

/// Sends the replay after `since`; returns the last offset the client now has.
async fn replay<S>(state: &NodeState, ws: &mut S, key: &str, since: u64) -> Result<u64, End>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let mut after = since;
    let mut first = true;
    loop {
        let page = match state.mailbox.read(key, after, READ_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                state.metrics.error(e.metric_label());
                tracing::warn!(error = %e, "mailbox read failed; replay skipped");
                let text = format!(
                    "the mailbox is unavailable; messages after offset {after} were not replayed"
                );
                send(ws, notice(state, MessageKind::Error, text)).await?;
                return Ok(after);
            }
        };
        if first {
            first = false;
            if since > page.latest {
                state.metrics.error("since-ahead");
                let text = format!(
                    "since={since} is ahead of the latest offset {}; delivering live messages only",
                    page.latest
                );
                send(ws, notice(state, MessageKind::Error, text)).await?;
                return Ok(page.latest);
            }
            match page.oldest {
                Some(oldest) if since + 1 < oldest => {
                    state.metrics.error("since-expired");
                    let text = format!(
                        "since={since} is older than the retention; the oldest available offset is {oldest}; replaying from there"
                    );
                    send(ws, notice(state, MessageKind::Error, text)).await?;
                }
                None if since < page.latest => {
                    state.metrics.error("since-expired");
                    let text = format!(
                        "offsets {}..={} are no longer retained; delivering live messages only",
                        since + 1,
                        page.latest
                    );
                    send(ws, notice(state, MessageKind::Error, text)).await?;
                    return Ok(page.latest);
                }
                _ => {}
            }
        }
        let n = page.entries.len();
        for entry in page.entries {
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
        if n < READ_PAGE {
            return Ok(after);
        }
    }
}

/// The session loop; see the module docs. Returns why it ended (the socket is closed).
pub async fn drive<S>(
    state: &NodeState,
    mut ws: S,
    key: &str,
    since: Since,
    mut data: mpsc::Receiver<Outbound>,
    mut control: mpsc::Receiver<Close>,
) -> End
where
    S: Sink<Message, Error = WsError> + Stream<Item = Result<Message, WsError>> + Unpin,
{
    let mut last = 0u64;
    let start = async {
        match &since {
            Since::Absent => {}
            Since::Invalid(raw) => {
                state.metrics.error("since-invalid");
                let text = format!(
                    "since={raw:?} is not a non-negative integer offset; delivering live messages only"
                );
                send(&mut ws, notice(state, MessageKind::Error, text)).await?;
            }
            Since::Offset(n) => last = replay(state, &mut ws, key, *n).await?,
        }
        send(
            &mut ws,
            notice(state, MessageKind::System, "ready".to_owned()),
        )
        .await
    };
    if let Err(end) = start.await {
        return end;
    }

    let period = state.config.ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            biased;
            cmd = control.recv() => {
                let Some(cmd) = cmd else { return End::Closed("removed") };
                if let Some(frame) = cmd.frame
                    && send(&mut ws, Message::Text(frame)).await.is_err()
                {
                    return End::WriteFailed;
                }
                state.metrics.reset(cmd.reason);
                close(&mut ws, cmd.code, cmd.reason).await;
                return End::Closed(cmd.reason);
            }
            out = data.recv() => {
                let Some(out) = out else { return End::Closed("removed") };
                if let Some(offset) = out.offset {
                    if offset <= last {
                        continue;
                    }
                    last = offset;
                }
                if send(&mut ws, Message::Text(out.text)).await.is_err() {
                    return End::WriteFailed;
                }
                state.metrics.delivered(out.kind);
            }
            frame = ws.next() => {
                last_seen = Instant::now();
                match frame {
                    None | Some(Ok(Message::Close(_))) => {
                        // Drive the queued close reply (tungstenite answers a close itself).
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
                        return End::Client;
                    }
                    Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => {
                        state.metrics.error("binary-frame");
                        close(&mut ws, CLOSE_POLICY, "binary frames are not accepted").await;
                        return End::Protocol(CLOSE_POLICY);
                    }
                    Some(Err(e)) => {
                        let (code, kind, reason) = match &e {
                            WsError::Capacity(_) => (1009, "frame-too-big", "message too big"),
                            WsError::Utf8(_) => (1007, "invalid-utf8", "invalid UTF-8 in a text frame"),
                            WsError::Protocol(_) => (1002, "protocol", "protocol error"),
                            _ => return End::Client,
                        };
                        tracing::debug!(error = %e, "client protocol error");
                        state.metrics.error(kind);
                        close(&mut ws, code, reason).await;
                        return End::Protocol(code);
                    }
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > 2 * period {
                    state.metrics.reset("keepalive");
                    close(&mut ws, 1001, "keepalive timeout").await;
                    return End::Keepalive;
                }
                if send(&mut ws, Message::Ping(Default::default())).await.is_err() {
                    return End::WriteFailed;
                }
            }
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

    async fn next(ws: &mut WebSocketStream<tokio::io::DuplexStream>) -> ClientMessage {
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

    #[tokio::test]
    async fn live_messages_that_race_the_replay_are_delivered_once_and_in_offset_order() {
        let state = state();
        for i in 1..=3 {
            state
                .mailbox
                .append("alice", &format!("m{i}"), i)
                .await
                .expect("append");
        }
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let (data_tx, data_rx) = mpsc::channel(16);
        let (_control_tx, control_rx) = mpsc::channel(2);
        // Offsets 2 and 3 were queued live while the replay read them too; 4 is new.
        for offset in [2u64, 3, 4] {
            let text =
                state.client_message(MessageKind::Message, format!("m{offset}"), 0, Some(offset));
            data_tx
                .send(Outbound {
                    offset: Some(offset),
                    text,
                    kind: "message",
                })
                .await
                .expect("queue");
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
        let state = state();
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
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
}
