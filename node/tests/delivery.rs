//! Delivery that never fails silently, against the real binary, a real Redis and RabbitMQ:
//! epochs across a mailbox expiry, fast 503s and 4005 closes while Redis is down, reset
//! events checked against the ring, and broadcasts the broker confirmed.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use wscluster_node::bus::queue_name;
use wscluster_ring::contract::bus::{MAX_RETRY_AFTER_MS, reset_routing_key};
use wscluster_ring::contract::{
    CLOSE_REBALANCE, CLOSE_UNAVAILABLE, ReadyFrame, ResetFrame, ResetReason,
};
use wscluster_ring::{Member, RingSnapshot};

/// The ready frame of a fresh live-only session of `user`, whose socket is then closed.
async fn probe_ready(node: &Node, user: &str) -> ReadyFrame {
    let (mut ws, _, ready) = node.connect_ready(&format!("/connect/{user}")).await;
    let _ = futures_util::SinkExt::close(&mut ws).await;
    serde_json::from_value(ready).expect("a ready frame")
}

/// The issue's measured scenario: a client connected with `since=0` receives offsets 1-3, stays
/// connected while the mailbox expires, and then still receives the next message (offset 1 of
/// a new epoch); reconnecting with the old epoch says recovered false.
async fn expiry_keeps_every_message(node: &Node) {
    let (mut ws, _, ready) = node.connect_ready("/connect/ursula?since=0").await;
    assert_eq!(ready["recovered"], true);
    let first_epoch = ready["epoch"].as_str().expect("epoch").to_owned();
    for i in 1..=3u64 {
        let (status, body) = node.send("ursula", &format!("m{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["epoch"].as_str(), body["sessions"].as_u64()),
            (Some(first_epoch.as_str()), Some(1))
        );
        let m = next_json(&mut ws).await;
        assert_eq!(
            (m["offset"].as_u64(), m["epoch"].as_str()),
            (Some(i), Some(first_epoch.as_str()))
        );
    }
    // The mailbox expires (2 s after the last append): a new session then sees a new epoch.
    let new_epoch = eventually("the mailbox expires", || async {
        let ready = probe_ready(node, "ursula").await;
        (ready.epoch != first_epoch).then_some(ready.epoch)
    })
    .await;
    let (status, body) = node.send("ursula", "after").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["offset"].as_u64(), body["epoch"].as_str()),
        (Some(1), Some(new_epoch.as_str()))
    );
    let m = next_json(&mut ws).await;
    assert_eq!(
        m["content"], "after",
        "the live client gets offset 1 of the new epoch"
    );
    assert_eq!(
        (m["offset"].as_u64(), m["epoch"].as_str()),
        (Some(1), Some(new_epoch.as_str()))
    );

    let (_, replay, ready) = node
        .connect_ready(&format!("/connect/ursula?since=3&epoch={first_epoch}"))
        .await;
    assert!(replay.is_empty(), "{replay:?}");
    let ready: ReadyFrame = serde_json::from_value(ready).expect("ready frame");
    assert_eq!(
        ready,
        ReadyFrame::new(node.id.as_str(), new_epoch, 1, false)
    );
}

#[tokio::test]
async fn after_a_redis_mailbox_expires_a_live_client_still_gets_the_next_message_in_a_new_epoch() {
    within(STEP * 3, async {
        let store = RedisScope::new().await;
        let node = store.node("n-0", &["--mailbox-ttl-seconds", "2"]).await;
        expiry_keeps_every_message(&node).await;
        store.finish().await;
    })
    .await;
}

#[tokio::test]
async fn after_an_in_memory_mailbox_expires_a_live_client_still_gets_the_next_message_in_a_new_epoch()
 {
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &["--mailbox-ttl-seconds", "2"]).await;
        expiry_keeps_every_message(&node).await;
    })
    .await;
}

/// A redis-server of this test's own on a free port, without persistence (killed on drop).
struct PrivateRedis {
    /// The process.
    child: Child,
    /// Its port.
    port: u16,
}

impl PrivateRedis {
    /// Starts one on a free port.
    async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        PrivateRedis::on(port).await
    }

    /// Starts one on `port` and waits until it answers PING.
    async fn on(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (the test script installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        eventually("the private redis answers", || {
            let url = url.clone();
            async move {
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut con = client.get_multiplexed_async_connection().await.ok()?;
                let pong: String = redis::cmd("PING").query_async(&mut con).await.ok()?;
                (pong == "PONG").then_some(())
            }
        })
        .await;
        PrivateRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9, waited for.
    async fn kill(mut self) -> u16 {
        let _ = self.child.kill().await;
        self.port
    }
}

#[tokio::test]
async fn with_redis_down_sends_fail_fast_with_503_and_a_replay_closes_with_4005_until_it_is_back() {
    within(STEP * 4, async {
        let redis = PrivateRedis::start().await;
        let url = redis.url();
        let node = Node::spawn("n-0", &["--redis-url", &url]).await;
        let (mut live, _, ready) = node.connect_ready("/connect/vera").await;
        let (status, body) = node.send("vera", "m1").await;
        assert_eq!((status, body["offset"].as_u64()), (200, Some(1)), "{body}");
        assert_eq!(next_json(&mut live).await["epoch"], ready["epoch"]);

        let port = redis.kill().await;
        for _ in 0..3 {
            let started = Instant::now();
            let (status, body) = node.send("vera", "lost").await;
            let took = started.elapsed();
            assert_eq!(
                (status, body["error"].as_str()),
                (503, Some("mailbox-unavailable")),
                "{body}"
            );
            assert!(took < Duration::from_millis(1_500), "503 after {took:?}");
        }
        // A session that cannot be replayed is closed as unavailable, never told it is ready.
        let (mut ws, _) = tokio::time::timeout(
            STEP,
            tokio_tungstenite::connect_async(format!("ws://{}/connect/walt?since=0", node.addr)),
        )
        .await
        .expect("connect in time")
        .expect("the upgrade is accepted");
        let (code, texts) = expect_close(&mut ws).await;
        assert_eq!(code, CLOSE_UNAVAILABLE);
        assert_eq!(texts.len(), 1, "only the reset frame: {texts:?}");
        let reset: ResetFrame = serde_json::from_value(texts[0].clone()).expect("reset frame");
        assert_eq!(reset.reason, ResetReason::Unavailable);

        // Redis comes back empty (no persistence): sends work again, under a new epoch, and the
        // live session, which had offset 1 of the old epoch, receives offset 1 of the new one.
        let _redis = PrivateRedis::on(port).await;
        let body = eventually("sends succeed again", || async {
            let (status, body) = node.send("vera", "back").await;
            (status == 200).then_some(body)
        })
        .await;
        assert_ne!(body["epoch"], ready["epoch"]);
        let m = next_json(&mut live).await;
        assert_eq!(
            (m["content"].as_str(), m["offset"].as_u64()),
            (Some("back"), Some(1))
        );
        assert_eq!(m["epoch"], body["epoch"]);
    })
    .await;
}

fn rings(cluster: &str) -> (RingSnapshot, RingSnapshot) {
    let v1 = RingSnapshot::new(cluster, 1, vec![Member::active("n-a", "127.0.0.1:1")]);
    let v2 = RingSnapshot::new(
        cluster,
        2,
        vec![
            Member::active("n-a", "127.0.0.1:1"),
            Member::active("n-b", "127.0.0.1:2"),
        ],
    );
    (v1, v2)
}

#[tokio::test]
async fn a_reset_event_resets_only_keys_that_moved_under_the_ring_and_its_retry_after_is_capped() {
    within(STEP * 4, async {
        let broker = AmqpScope::new("test/reset-ring").await;
        let cluster = broker.cluster.clone();
        let (v1, v2) = rings(&cluster);
        let ring = RingFile::holding(&v1);
        let args = [&broker.args()[..], &["--ring-file", ring.path.as_str()]].concat();
        let node = Node::spawn("n-a", &args).await;
        node.wait_bus_connected().await;
        let stays = key_owned_by(&v2, "n-a");
        let moves = key_owned_by(&v2, "n-b");
        let (mut stays_ws, _) = node.connect(&format!("/connect/{stays}")).await;
        let (mut moves_ws, _) = node.connect(&format!("/connect/{moves}")).await;

        ring.write(&v2);
        node.poll("ring v2 applied", "/readyz", |_, r| r["ringVersion"] == 2)
            .await;
        let event = json!({"member": "n-a", "ringVersion": 2, "reason": "rebalance",
            "keys": [stays, moves], "retryAfterMs": 86_400_000u64});
        amqp_publish(&cluster, &reset_routing_key("n-a"), &event).await;

        let (code, texts) = expect_close(&mut moves_ws).await;
        assert_eq!(code, CLOSE_REBALANCE);
        let reset: ResetFrame = serde_json::from_value(texts[0].clone()).expect("reset frame");
        assert_eq!(reset.retry_after_ms, MAX_RETRY_AFTER_MS, "a day is capped");
        // The key n-a still owns was not reset: its session still gets messages.
        let (status, body) = node.send(&stays, "still-here").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(next_json(&mut stays_ws).await["content"], "still-here");
        broker.finish(vec![node]).await;
    })
    .await;
}

/// Messages waiting in `queue` (passive declare), or None if it does not exist.
async fn queued_messages(queue: &str) -> Option<u32> {
    let conn = amqp().await;
    let ch = conn.create_channel().await.expect("channel");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .ok()
        .map(|q| q.message_count());
    let _ = conn.close(200, "done".into()).await;
    count
}

#[tokio::test]
async fn a_broadcast_answered_202_waits_in_the_durable_queue_of_a_node_that_is_away() {
    within(STEP * 4, async {
        let broker = AmqpScope::new("test/durable").await;
        let a = broker.node("n-a").await;
        let b = broker.node("n-b").await;
        let queue = queue_name(&broker.cluster, "n-b");
        b.stop().await;
        let (status, body) = a
            .http(
                "POST",
                "/api/v1/broadcast",
                Some(r#"{"message":"while away"}"#),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(
            queued_messages(&queue).await,
            Some(1),
            "the broker kept it for n-b"
        );
        // n-b comes back under the same id and takes what waited for it.
        let b = broker.node("n-b").await;
        eventually("n-b drained its queue", || async {
            (queued_messages(&queue).await == Some(0)).then_some(())
        })
        .await;
        broker.finish(vec![a, b]).await;
    })
    .await;
}

#[tokio::test]
async fn without_a_reachable_broker_a_broadcast_is_refused_with_503_never_202() {
    within(STEP * 2, async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let node = Node::spawn("n-0", &["--amqp-url", &url]).await;
        let (status, body): (u16, Value) = node
            .http(
                "POST",
                "/api/v1/broadcast",
                Some(r#"{"message":"nobody has it"}"#),
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("bus-unavailable")),
            "{body}"
        );
    })
    .await;
}
