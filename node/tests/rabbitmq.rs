//! Broadcasts, reset events and broker connection loss, against the real binary and a real
//! RabbitMQ (each test on its own exchange).

mod common;

use common::*;
use serde_json::{Value, json};

use wscluster_ring::contract::bus::reset_routing_key;
use wscluster_ring::contract::{CLOSE_REBALANCE, ResetFrame, ResetReason};

/// Sends a marker with the server API and asserts it is the very next frame the user sees, which
/// proves nothing (such as a duplicate broadcast) is queued in between.
async fn assert_next_is_marker(node: &Node, user: &str, ws: &mut Ws) {
    let marker = unique("marker");
    let (status, body) = node.send(user, &marker).await;
    assert_eq!(status, 200, "{body}");
    let v = next_json(ws).await;
    assert_eq!(v["content"], marker.as_str(), "unexpected frame {v}");
}

#[tokio::test]
async fn a_broadcast_reaches_every_user_of_every_node_exactly_once() {
    within(STEP * 4, async {
        let broker = AmqpScope::new("test/bc").await;
        let a = broker.node("n-a").await;
        let b = broker.node("n-b").await;
        let (mut alice, _) = a.connect("/connect/alice").await;
        let (mut carol, _) = a.connect("/connect/carol").await;
        let (mut bob, _) = b.connect("/connect/bob").await;

        let (status, body) = a
            .http(
                "POST",
                "/api/v1/broadcast",
                Some(r#"{"message":"hello all"}"#),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        for (node, user, ws) in [
            (&a, "alice", &mut alice),
            (&a, "carol", &mut carol),
            (&b, "bob", &mut bob),
        ] {
            let v = next_json(ws).await;
            assert_eq!(v["type"], "broadcast", "{v}");
            assert_eq!(v["content"], "hello all");
            assert!(v.get("offset").is_none());
            assert_next_is_marker(node, user, ws).await;
        }
        broker.finish(vec![a, b]).await;
    })
    .await;
}

#[tokio::test]
async fn a_reset_event_closes_exactly_the_named_users_with_the_contract_frame_and_code() {
    within(STEP * 4, async {
        let broker = AmqpScope::new("test/reset").await;
        let cluster = broker.cluster.as_str();
        let node = broker.node("n-r").await;
        let (mut u1, _) = node.connect("/connect/u1").await;
        let (mut u2, _) = node.connect("/connect/u2").await;
        let (mut u3, _) = node.connect("/connect/u3").await;

        // A reset for another member must not reach this node.
        let other = json!({"member": "n-x", "ringVersion": 9, "reason": "rebalance", "keys": ["u2"], "retryAfterMs": 300});
        amqp_publish(cluster, &reset_routing_key("n-x"), &other).await;
        let event = json!({"member": "n-r", "ringVersion": 9, "reason": "rebalance", "keys": ["u1", "u3", "nobody"], "retryAfterMs": 300});
        amqp_publish(cluster, &reset_routing_key("n-r"), &event).await;

        let expected: Value = serde_json::from_str(&ResetFrame::new(ResetReason::Rebalance, 300, Some(9)).to_json())
            .expect("frame json");
        for ws in [&mut u1, &mut u3] {
            let (code, texts) = expect_close(ws).await;
            assert_eq!(code, CLOSE_REBALANCE);
            assert_eq!(texts, vec![expected.clone()]);
        }
        assert_next_is_marker(&node, "u2", &mut u2).await;
        node.poll(
            "the reset sessions are gone and the other stays",
            "/count",
            |_, count| count["count"] == 1,
        )
        .await;
        broker.finish(vec![node]).await;
    })
    .await;
}

/// `rabbitmqctl list_connections` rows whose connection_name is `wanted`: their pids.
async fn broker_connections(wanted: &str) -> Vec<String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "--no-table-headers",
            "list_connections",
            "pid",
            "client_properties",
        ])
        .output()
        .await
        .expect(
            "rabbitmqctl runs (it is needed to close the node's connection from the broker side)",
        );
    assert!(
        out.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(wanted))
        .filter_map(|line| line.split('\t').next().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn losing_the_rabbitmq_connection_drops_no_socket_and_broadcasts_resume_after_reconnect() {
    within(STEP * 6, async {
        let broker = AmqpScope::new("test/loss").await;
        let node = broker.node("n-l").await;
        let (mut alice, _) = node.connect("/connect/alice").await;
        let conn_name = format!("wscluster-node {} n-l", broker.cluster);
        let before = eventually("the broker lists the node's connection", || async {
            let names = broker_connections(&conn_name).await;
            (names.len() == 1).then_some(names)
        })
        .await;
        let status = tokio::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "close_connection",
                &before[0],
                "wscluster node test: simulated loss",
            ])
            .status()
            .await
            .expect("rabbitmqctl close_connection");
        assert!(status.success());
        eventually("the node reconnects with a new connection", || async {
            let names = broker_connections(&conn_name).await;
            (names.len() == 1 && names != before).then_some(())
        })
        .await;
        node.wait_bus_connected().await;
        // The socket survived and broadcasts flow again.
        let (status, body) = node
            .http("POST", "/api/v1/broadcast", Some(r#"{"message":"after"}"#))
            .await;
        assert_eq!(status, 202, "{body}");
        let v = next_json(&mut alice).await;
        assert_eq!(
            (v["type"].as_str(), v["content"].as_str()),
            (Some("broadcast"), Some("after"))
        );
        assert_next_is_marker(&node, "alice", &mut alice).await;
        broker.finish(vec![node]).await;
    })
    .await;
}
