//! The headline guarantee: a message sent while its user moves between nodes is not lost.
//! Two node processes share a real Redis (mailbox, presence) and a real RabbitMQ (the reset
//! event), and follow the same ring file.

mod common;

use common::*;
use serde_json::{Value, json};
use wscluster_ring::contract::CLOSE_REBALANCE;
use wscluster_ring::contract::bus::reset_routing_key;
use wscluster_ring::{Member, RingSnapshot};

/// A server API send of `message` to `user` on `node`: the status and body.
async fn send(node: &Node, user: &str, message: &str) -> (u16, Value) {
    node.send(user, message).await
}

/// Waits until `node` routes with ring `version`.
async fn wait_ring_version(node: &Node, version: u64) {
    node.poll("the node applies the new ring", "/readyz", |_, r| {
        r["ringVersion"] == version
    })
    .await;
}

/// Ring v1 (n-a alone) and v2 (n-a and n-b) of `cluster`.
fn rings(cluster: &str) -> (RingSnapshot, RingSnapshot) {
    let a = Member::active("n-a", "127.0.0.1:1");
    let b = Member::active("n-b", "127.0.0.1:2");
    (
        RingSnapshot::new(cluster, 1, vec![a.clone()]),
        RingSnapshot::new(cluster, 2, vec![a, b]),
    )
}

/// Nodes n-a and n-b on the test's Redis and exchange, following `ring`, once both buses are up.
async fn spawn_pair(store: &RedisScope, broker: &AmqpScope, ring: &RingFile) -> (Node, Node) {
    let args = [
        &store.args()[..],
        &broker.args()[..],
        &["--ring-file", ring.path.as_str()],
    ]
    .concat();
    let a = Node::spawn("n-a", &args).await;
    let b = Node::spawn("n-b", &args).await;
    for node in [&a, &b] {
        node.wait_bus_connected().await;
    }
    (a, b)
}

#[tokio::test]
async fn a_message_sent_while_its_user_moves_to_another_node_is_replayed_there_with_since() {
    within(STEP * 6, async {
        let store = RedisScope::new().await;
        let broker = AmqpScope::new("test/move").await;
        let cluster = broker.cluster.clone();
        let (v1, v2) = rings(&cluster);
        let user = key_owned_by(&v2, "n-b");
        let ring = RingFile::holding(&v1);
        let (a, b) = spawn_pair(&store, &broker, &ring).await;

        let (mut ws, _) = a.connect(&format!("/connect/{user}")).await;
        let (status, _) = send(&a, &user, "before").await;
        assert_eq!(status, 200);
        let first = next_json(&mut ws).await;
        assert_eq!(first["offset"], 1);
        let epoch = first["epoch"].as_str().expect("epoch").to_owned();
        let (_, presence) = b.http("GET", &format!("/users/{user}"), None).await;
        assert_eq!(presence["node"], "n-a");

        // The ring grows: the user now belongs to n-b; n-a refuses new work for it.
        ring.write(&v2);
        for node in [&a, &b] {
            wait_ring_version(node, 2).await;
        }
        let (status, body) = send(&a, &user, "x").await;
        assert_eq!((status, body["owner"].as_str()), (421, Some("n-b")));

        // The proxy's reset event moves the user off n-a.
        let event = json!({"member": "n-a", "ringVersion": 2, "reason": "rebalance", "keys": [user], "retryAfterMs": 100});
        amqp_publish(&cluster, &reset_routing_key("n-a"), &event).await;
        let (code, texts) = expect_close(&mut ws).await;
        assert_eq!(code, CLOSE_REBALANCE);
        assert_eq!(texts[0]["type"], "reset");

        // Sent during the gap, to the new owner: stored, not delivered.
        let (status, body) = send(&b, &user, "during").await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["offset"], 2);

        let (mut ws, replay, ready) = b
            .connect_ready(&format!("/connect/{user}?since=1&epoch={epoch}"))
            .await;
        assert_eq!(ready["recovered"], true, "the Redis mailbox is shared: {ready}");
        assert_eq!(replay.len(), 1, "{replay:?}");
        assert_eq!(
            (replay[0]["content"].as_str(), replay[0]["offset"].as_u64()),
            (Some("during"), Some(2))
        );
        assert_eq!(replay[0]["server"], "n-b");
        let (status, _) = send(&b, &user, "after").await;
        assert_eq!(status, 200);
        assert_eq!(next_json(&mut ws).await["offset"], 3);
        let (_, presence) = a.http("GET", &format!("/users/{user}"), None).await;
        assert_eq!(presence["node"], "n-b");

        broker.finish(vec![a, b]).await;
        store.finish().await;
    })
    .await;
}
