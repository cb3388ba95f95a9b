//! Sessions, `/send`, the mailbox with `since`, presence, replacement and bad input, against
//! the real binary and a real Redis.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use wscluster_ring::contract::CLOSE_REPLACED;

#[tokio::test]
async fn a_message_sent_to_a_connected_user_is_delivered_with_its_offset() {
    within(STEP * 3, async {
        let store = RedisScope::new().await;
        let node = store.node("n-0", &[]).await;
        let (mut ws, before) = node.connect("/connect/alice").await;
        assert!(before.is_empty());
        let (status, body) = node.send("alice", "hello there").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["delivered"], true);
        assert_eq!(body["offset"], 1);
        let msg = next_json(&mut ws).await;
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["content"], "hello there");
        assert_eq!(msg["offset"], 1);
        assert_eq!(msg["server"], "n-0");
        assert_eq!(msg["serverUserCount"], 1);
        assert!(msg["timestamp"].as_u64().expect("timestamp") > 0);

        let (status, body) = node.send("alice", "via json").await;
        assert_eq!(status, 200, "{body}");
        let msg = next_json(&mut ws).await;
        assert_eq!(
            (msg["content"].as_str(), msg["offset"].as_u64()),
            (Some("via json"), Some(2))
        );

        let (_, count) = node.http("GET", "/count", None).await;
        assert_eq!(count["count"], 1);
        let (status, presence) = node.http("GET", "/users/alice", None).await;
        assert_eq!(status, 200);
        assert_eq!(presence["node"], "n-0");
        assert_eq!(presence["connectedHere"], true);

        ws.close(None).await.expect("close");
        node.poll("presence removed", "/users/alice", |status, _| {
            status == 404
        })
        .await;
        store.finish().await;
    })
    .await;
}

#[tokio::test]
async fn messages_sent_while_disconnected_are_replayed_in_order_after_reconnect_with_since() {
    within(STEP * 3, async {
        let store = RedisScope::new().await;
        let node = store.node("n-0", &[]).await;
        let (mut ws, _) = node.connect("/connect/bob").await;
        node.send("bob", "m1").await;
        let m1 = next_json(&mut ws).await;
        assert_eq!(m1["offset"], 1);
        let epoch = m1["epoch"]
            .as_str()
            .expect("every message has an epoch")
            .to_owned();
        ws.close(None).await.expect("close");
        node.poll("bob disconnected", "/count", |_, c| c["count"] == 0)
            .await;

        for i in 2..=4 {
            let (status, body) = node.send("bob", &format!("m{i}")).await;
            assert_eq!(status, 202, "{body}");
            assert_eq!(body["delivered"], false);
            assert_eq!(body["offset"], i);
            assert_eq!(body["epoch"], epoch.as_str());
            assert_eq!(body["sessions"], 0);
        }
        // A restart must not lose them: the mailbox is in Redis.
        node.stop().await;
        let node = store.node("n-0", &[]).await;
        let (mut ws, replay, ready) = node
            .connect_ready(&format!("/connect/bob?since=1&epoch={epoch}"))
            .await;
        assert_eq!(ready["recovered"], true, "{ready}");
        assert_eq!(
            (ready["epoch"].as_str(), ready["offset"].as_u64()),
            (Some(epoch.as_str()), Some(4))
        );
        let got: Vec<(String, u64)> = replay
            .iter()
            .map(|v| {
                (
                    v["content"].as_str().unwrap_or("").to_owned(),
                    v["offset"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("m2".into(), 2), ("m3".into(), 3), ("m4".into(), 4)]
        );
        node.send("bob", "live").await;
        let live = next_json(&mut ws).await;
        assert_eq!(
            (live["content"].as_str(), live["offset"].as_u64()),
            (Some("live"), Some(5))
        );
        store.finish().await;
    })
    .await;
}

#[tokio::test]
async fn a_since_that_was_trimmed_or_of_another_epoch_is_not_recovered_and_bad_ones_get_400() {
    within(STEP * 3, async {
        let store = RedisScope::new().await;
        let node = store.node("n-0", &["--mailbox-max-len", "3"]).await;
        let mut epoch = String::new();
        for i in 1..=6 {
            let (_, body) = node.send("carol", &format!("m{i}")).await;
            epoch = body["epoch"].as_str().expect("epoch").to_owned();
        }
        // Offsets 2 and 3 were trimmed: not recovered, nothing replayed, told where it stands.
        let (mut ws, before, ready) = node
            .connect_ready(&format!("/connect/carol?since=1&epoch={epoch}"))
            .await;
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(ready["recovered"], false);
        assert_eq!(
            (ready["epoch"].as_str(), ready["offset"].as_u64()),
            (Some(epoch.as_str()), Some(6))
        );
        node.send("carol", "live").await;
        assert_eq!(next_json(&mut ws).await["offset"], 7);
        ws.close(None).await.expect("close");

        // Another epoch (or none) with since > 0: not recovered either.
        for path in [
            "/connect/carol?since=5&epoch=0123456789abcdef",
            "/connect/carol?since=5",
        ] {
            let (_, before, ready) = node.connect_ready(path).await;
            assert!(before.is_empty(), "{path}: {before:?}");
            assert_eq!(ready["recovered"], false, "{path}");
            assert_eq!(ready["epoch"], epoch.as_str(), "{path}");
        }
        // since=0 replays all that is kept, and says that is not everything.
        let (_, before, ready) = node.connect_ready("/connect/carol?since=0").await;
        let offsets: Vec<u64> = before.iter().filter_map(|v| v["offset"].as_u64()).collect();
        assert_eq!(offsets, vec![5, 6, 7]);
        assert_eq!(ready["recovered"], false);

        for bad in ["since=abc", "since=-1", "since=1&epoch=a%20b", "epoch=e1"] {
            let (status, body) = node.refused(&format!("/connect/carol?{bad}")).await;
            assert_eq!(status, 400, "{bad}: {body}");
            assert_eq!(body["error"], "bad-resume", "{bad}");
        }
        store.finish().await;
    })
    .await;
}

#[tokio::test]
async fn every_session_of_a_user_receives_every_message_and_each_resumes_on_its_own() {
    within(STEP * 3, async {
        let store = RedisScope::new().await;
        let node = store.node("n-0", &[]).await;
        let (mut tab1, _) = node.connect("/connect/dave").await;
        let (mut tab2, _) = node.connect("/connect/dave").await;
        let (status, body) = node.send("dave", "both").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sessions"], 2);
        let epoch = body["epoch"].as_str().expect("epoch").to_owned();
        for tab in [&mut tab1, &mut tab2] {
            let m = next_json(tab).await;
            assert_eq!(
                (m["content"].as_str(), m["offset"].as_u64()),
                (Some("both"), Some(1))
            );
        }
        // One tab goes away and misses a message; the other stays live.
        tab1.close(None).await.expect("close");
        node.poll("one session left", "/count", |_, c| c["count"] == 1)
            .await;
        node.send("dave", "second").await;
        assert_eq!(next_json(&mut tab2).await["offset"], 2);
        let (_tab3, replay, ready) = node
            .connect_ready(&format!("/connect/dave?since=1&epoch={epoch}"))
            .await;
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0]["content"], "second");
        assert_eq!(ready["recovered"], true);
        let (_, presence) = node.http("GET", "/users/dave", None).await;
        assert_eq!(presence["sessionsHere"], 2);
        store.finish().await;
    })
    .await;
}

#[tokio::test]
async fn over_the_session_cap_a_connect_is_refused_with_429_or_replaces_the_oldest_with_4002() {
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &["--sessions-per-key", "2"]).await;
        let (_a, _) = node.connect("/connect/erin").await;
        let (_b, _) = node.connect("/connect/erin").await;
        let (status, body) = node.refused("/connect/erin").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (429, Some("too-many-sessions")),
            "{body}"
        );
        let (_other, _) = node.connect("/connect/frank").await;

        let node = Node::spawn(
            "n-1",
            &[
                "--sessions-per-key",
                "1",
                "--session-policy",
                "replace-oldest",
            ],
        )
        .await;
        let (mut first, _) = node.connect("/connect/dave").await;
        let (mut second, _) = node.connect("/connect/dave").await;
        let (code, _) = expect_close(&mut first).await;
        assert_eq!(code, CLOSE_REPLACED);
        node.send("dave", "to-second").await;
        assert_eq!(next_json(&mut second).await["content"], "to-second");
        let (_, c) = node.http("GET", "/count", None).await;
        assert_eq!(c["count"], 1);
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_disturb_no_other_session() {
    within(STEP * 4, async {
        let node = Node::spawn("n-0", &["--max-frame-bytes", "1024", "--legacy-send"]).await;
        let (mut bystander, _) = node.connect("/connect/eve").await;

        let (s, b) = node.refused("/connect/").await;
        assert_eq!((s, b["error"].as_str()), (400, Some("missing-user-id")));
        let (s, b) = node.refused("/connect?userId=").await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid-user-id")));
        let (s, b) = node.refused(&format!("/connect/{}", "x".repeat(129))).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid-user-id")));
        let (s, b) = node.refused("/connect/a%0Ab").await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid-user-id")));
        let (s, b) = node.http("GET", "/send?message=x", None).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("missing-user-id")));
        let (s, b) = node.http("GET", "/send?userId=eve", None).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("missing-message")));
        let (s, b) = node.http("POST", "/send", Some("{not json")).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid-json")));
        let (s, b) = node.http("GET", "/api/v1/nowhere", None).await;
        assert_eq!((s, b["error"].as_str()), (404, Some("not-found")));
        let (s, b) = node
            .http("POST", "/api/v1/users/eve/messages", Some("{}"))
            .await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid-json")));
        let (s, b) = node.http("POST", "/api/v1/users/eve/messages", None).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("missing-body")));
        let (s, b) = node
            .http(
                "POST",
                "/api/v1/users/a%0Ab/messages",
                Some(r#"{"message":"x"}"#),
            )
            .await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid-user-id")));
        let (s, _) = node.http("GET", "/api/v1/users/eve/messages", None).await;
        assert_eq!(s, 405);
        let (s, _) = node.http("DELETE", "/send", None).await;
        assert_eq!(s, 405);
        let big = "y".repeat(2000);
        let (s, b) = node
            .http("GET", &format!("/send?userId=eve&message={big}"), None)
            .await;
        assert_eq!((s, b["error"].as_str()), (413, Some("message-too-large")));
        let (s, b) = node.send("eve", &"y".repeat(1025)).await;
        assert_eq!((s, b["error"].as_str()), (413, Some("message-too-large")));

        let (mut big_frame, _) = node.connect("/connect/frank").await;
        big_frame
            .send(Message::text("z".repeat(1025)))
            .await
            .expect("send");
        assert_eq!(expect_close(&mut big_frame).await.0, 1009);

        let (mut bad_utf8, _) = node.connect("/connect/grace").await;
        let frame = Frame::message(vec![0xff, 0xfe, 0x41], OpCode::Data(Data::Text), true);
        bad_utf8.send(Message::Frame(frame)).await.expect("send");
        assert_eq!(expect_close(&mut bad_utf8).await.0, 1007);

        // The bystander is untouched.
        let (s, b) = node.send("eve", "still-here").await;
        assert_eq!(s, 200, "{b}");
        let v: Value = next_json(&mut bystander).await;
        assert_eq!(v["content"], "still-here");
    })
    .await;
}

#[tokio::test]
async fn without_rabbitmq_a_broadcast_reaches_the_users_of_a_standalone_node_through_the_in_memory_bus()
 {
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &[]).await;
        let (mut a, _) = node.connect("/connect/ann").await;
        let (mut b, _) = node.connect("/connect/ben").await;
        let (status, body) = node
            .http("POST", "/api/v1/broadcast", Some(r#"{"message":"hi all"}"#))
            .await;
        assert_eq!(status, 202, "{body}");
        for ws in [&mut a, &mut b] {
            let v = next_json(ws).await;
            assert_eq!(
                (v["type"].as_str(), v["content"].as_str()),
                (Some("broadcast"), Some("hi all"))
            );
        }
        let (status, body) = node
            .http(
                "POST",
                "/api/v1/broadcast",
                Some(r#"{"userId":"ann","message":"x"}"#),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid-json"))
        );
    })
    .await;
}

#[tokio::test]
async fn presence_is_refreshed_in_redis_while_the_socket_lives_and_deleted_when_it_closes() {
    within(STEP * 3, async {
        let store = RedisScope::new().await;
        let node = store
            .node(
                "n-0",
                &["--presence-ttl-seconds", "3", "--cluster-id", "t/p"],
            )
            .await;
        let (ws, _) = node.connect("/connect/henry").await;
        let namespace = format!("{}:t/p:", store.prefix);
        let key = wscluster_node::mailbox::keys::presence(&namespace, "henry");
        let mut con = redis().await;
        let raw: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut con)
            .await
            .expect("GET");
        let entry: Value = serde_json::from_str(&raw).expect("presence json");
        assert_eq!(entry["node"], "n-0");
        // The TTL (3 s) is refreshed every second: it must go down and then back up.
        let lowest = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
        eventually("the presence TTL is refreshed", || {
            let key = key.clone();
            let mut con = con.clone();
            let lowest = lowest.clone();
            async move {
                let pttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut con)
                    .await
                    .expect("PTTL");
                assert!(pttl > 0, "presence expired while the socket was open");
                let min = lowest.fetch_min(pttl, std::sync::atomic::Ordering::Relaxed);
                (min != i64::MAX && pttl > min + 300).then_some(())
            }
        })
        .await;
        drop(ws);
        eventually("presence deleted after close", || {
            let key = key.clone();
            let mut con = con.clone();
            async move {
                let exists: i64 = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async(&mut con)
                    .await
                    .expect("EXISTS");
                (exists == 0).then_some(())
            }
        })
        .await;
        store.finish().await;
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused_with_503() {
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &["--max-connections", "1"]).await;
        let (_first, _) = node.connect("/connect/ivy").await;
        let (status, body) = node.refused("/connect/jack").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("too-many-connections"))
        );
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_1001_after_two_intervals() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &["--ping-interval-seconds", "1"]).await;
        // A raw client: handshake by hand, then read without ever answering a ping.
        let mut tcp = tokio::net::TcpStream::connect(&node.addr).await.expect("connect");
        let req = format!(
            "GET /connect/mute HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            node.addr
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let code = loop {
            let n = tokio::time::timeout(STEP, tcp.read(&mut buf))
                .await
                .expect("bytes in time")
                .expect("read");
            assert!(n > 0, "connection ended without a close frame");
            seen.extend_from_slice(&buf[..n]);
            // Skip the HTTP response head, then walk the (unmasked, short) server frames.
            let Some(head_end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let mut frames = &seen[head_end + 4..];
            let mut close = None;
            while frames.len() >= 2 {
                let opcode = frames[0] & 0x0f;
                let len = usize::from(frames[1] & 0x7f);
                if len > 125 || frames.len() < 2 + len {
                    break;
                }
                if opcode == 0x8 && len >= 2 {
                    close = Some(u16::from_be_bytes([frames[2], frames[3]]));
                }
                frames = &frames[2 + len..];
            }
            if let Some(code) = close {
                break code;
            }
        };
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 101"));
        assert_eq!(code, 1001);
    })
    .await;
}

/// A masked client frame (RFC 6455 §5.3) with `opcode` and a payload shorter than 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let len = u8::try_from(payload.len()).expect("short payload");
    assert!(len < 126);
    let mut frame = vec![0x80 | opcode, 0x80 | len];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads from a raw client until `done` finds what it waits for in the server's frames (after
/// the 101 head): returns that.
async fn read_until<T>(
    tcp: &mut tokio::net::TcpStream,
    seen: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<T>,
) -> T {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(head_end) = seen.windows(4).position(|w| w == b"\r\n\r\n")
            && let Some(found) = done(&seen[head_end + 4..])
        {
            return found;
        }
        let n = tokio::time::timeout(STEP, tcp.read(&mut buf))
            .await
            .expect("bytes in time")
            .expect("read");
        assert!(n > 0, "connection ended early");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// The (opcode, payload) of each whole, short, unmasked server frame in `bytes`.
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let len = usize::from(bytes[1] & 0x7f);
        let (start, len) = match len {
            126 if bytes.len() >= 4 => (4, usize::from(u16::from_be_bytes([bytes[2], bytes[3]]))),
            126 | 127 => break,
            len => (2, len),
        };
        if bytes.len() < start + len {
            break;
        }
        frames.push((bytes[0] & 0x0f, bytes[start..start + len].to_vec()));
        bytes = &bytes[start + len..];
    }
    frames
}

#[tokio::test]
async fn a_frame_that_trickles_in_while_the_session_waits_is_read_whole_and_a_close_is_answered() {
    use tokio::io::AsyncWriteExt;
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &[]).await;
        let mut tcp = tokio::net::TcpStream::connect(&node.addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let req = format!(
            "GET /connect/slow HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            node.addr
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut seen = Vec::new();
        let ready = |frames: &[u8]| {
            server_frames(frames)
                .into_iter()
                .any(|(op, p)| op == 0x1 && String::from_utf8_lossy(&p).contains("\"ready\""))
                .then_some(())
        };
        read_until(&mut tcp, &mut seen, ready).await;
        // The session now waits with nothing to read. A ping arrives a few bytes at a time,
        // each piece read by an idle session (the pauses only make that likely; the test
        // holds either way).
        let ping = client_frame(0x9, b"still here");
        for piece in ping.chunks(3) {
            tcp.write_all(piece).await.expect("write piece");
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let pong = |frames: &[u8]| {
            server_frames(frames)
                .into_iter()
                .find(|(op, _)| *op == 0xA)
                .map(|(_, p)| p)
        };
        assert_eq!(read_until(&mut tcp, &mut seen, pong).await, b"still here");
        // A close from an idle client is answered with its code.
        tcp.write_all(&client_frame(0x8, &1000u16.to_be_bytes()))
            .await
            .expect("write close");
        let close = |frames: &[u8]| {
            server_frames(frames)
                .into_iter()
                .find(|(op, _)| *op == 0x8)
                .map(|(_, p)| u16::from_be_bytes([p[0], p[1]]))
        };
        assert_eq!(read_until(&mut tcp, &mut seen, close).await, 1000);
        node.poll("the session is gone", "/count", |_, body| body["count"] == 0)
            .await;
    })
    .await;
}

#[tokio::test]
async fn after_idling_a_session_takes_a_frame_near_the_limit_and_delivers_one_as_large() {
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &[]).await;
        let (mut ws, _) = node.connect("/connect/big").await;
        // Far larger than the session's own read buffer: read through borrowed buffers.
        let big_in = "c".repeat(60_000);
        send_text(&mut ws, &big_in).await;
        let big_out = "s".repeat(60_000);
        let (status, body) = node.send("big", &big_out).await;
        assert_eq!(status, 200, "{body}");
        let msg = next_json(&mut ws).await;
        assert_eq!(msg["content"].as_str().map(str::len), Some(60_000));
        // And the session goes on as before.
        let (status, _) = node.send("big", "small again").await;
        assert_eq!(status, 200);
        assert_eq!(next_json(&mut ws).await["content"], "small again");
        ws.send(Message::Ping(b"p".to_vec().into()))
            .await
            .expect("ping");
        ws.close(None).await.expect("close");
        let (code, _) = expect_close(&mut ws).await;
        assert_eq!(code, 1005);
    })
    .await;
}

#[tokio::test]
async fn a_frame_sent_with_the_handshake_itself_is_read() {
    use tokio::io::AsyncWriteExt;
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &[]).await;
        let mut tcp = tokio::net::TcpStream::connect(&node.addr).await.expect("connect");
        // The handshake and a ping in one write: hyper usually reads the ping with the head,
        // and the session must find it among the bytes hyper hands over.
        let mut bytes = format!(
            "GET /connect/eager HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            node.addr
        )
        .into_bytes();
        bytes.extend_from_slice(&client_frame(0x9, b"early"));
        tcp.write_all(&bytes).await.expect("write");
        let mut seen = Vec::new();
        let pong = |frames: &[u8]| {
            server_frames(frames)
                .into_iter()
                .find(|(op, _)| *op == 0xA)
                .map(|(_, p)| p)
        };
        assert_eq!(read_until(&mut tcp, &mut seen, pong).await, b"early");
        assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 101"));
    })
    .await;
}
