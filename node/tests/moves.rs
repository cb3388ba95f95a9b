//! The headline guarantee: a message sent while its user moves between nodes is not lost.
//! Two node processes share a real Redis (mailbox, presence) and a real RabbitMQ (the reset
//! event), and follow the same ring file.

mod common;

use common::*;
use serde_json::json;
use wscluster_ring::contract::CLOSE_REBALANCE;
use wscluster_ring::contract::bus::reset_routing_key;
use wscluster_ring::{Member, Ring, RingSnapshot};

#[tokio::test]
async fn a_message_sent_while_its_user_moves_to_another_node_is_replayed_there_with_since() {
    tokio::time::timeout(STEP * 6, async {
        let _ = redis().await;
        let probe = amqp().await;
        let _ = probe.close(200, "probe".into()).await;
        let cluster = unique("test/move");
        let prefix = unique("wsc-test");
        let dir = std::env::temp_dir().join(unique("wsc-move"));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("ring.json");
        let v1 = RingSnapshot::new(&cluster, 1, vec![Member::active("n-a", "127.0.0.1:1")]);
        let v2 = RingSnapshot::new(
            &cluster,
            2,
            vec![Member::active("n-a", "127.0.0.1:1"), Member::active("n-b", "127.0.0.1:2")],
        );
        let ring2 = Ring::build(v2.clone()).expect("ring");
        let user = (0..10_000)
            .map(|i| format!("mover-{i}"))
            .find(|k| ring2.owns("n-b", k))
            .expect("a key that moves to n-b");
        std::fs::write(&file, v1.to_json()).expect("write ring");
        let ring_path = file.to_string_lossy().into_owned();
        let (redis, amqp) = (redis_url(), amqp_url());
        let args = [
            "--cluster-id", cluster.as_str(), "--ring-file", ring_path.as_str(),
            "--redis-url", redis.as_str(), "--redis-prefix", prefix.as_str(), "--amqp-url", amqp.as_str(),
        ];
        let a = Node::spawn("n-a", &args).await;
        let b = Node::spawn("n-b", &args).await;
        for node in [&a, &b] {
            eventually("the node connects to rabbitmq", || async {
                let (_, r) = node.http("GET", "/readyz", None).await;
                (r["busConnected"] == true).then_some(())
            })
            .await;
        }

        let (mut ws, _) = a.connect(&format!("/connect/{user}")).await;
        let (status, _) = a.http("GET", &format!("/send?userId={user}&message=before"), None).await;
        assert_eq!(status, 200);
        let first = next_json(&mut ws).await;
        assert_eq!(first["offset"], 1);
        let (_, presence) = b.http("GET", &format!("/users/{user}"), None).await;
        assert_eq!(presence["node"], "n-a");

        // The ring grows: the user now belongs to n-b; n-a refuses new work for it.
        std::fs::write(&file, v2.to_json()).expect("write ring");
        for node in [&a, &b] {
            eventually("both nodes apply ring v2", || async {
                let (_, r) = node.http("GET", "/readyz", None).await;
                (r["ringVersion"] == 2).then_some(())
            })
            .await;
        }
        let (status, body) = a.http("GET", &format!("/send?userId={user}&message=x"), None).await;
        assert_eq!((status, body["owner"].as_str()), (421, Some("n-b")));

        // The proxy's reset event moves the user off n-a.
        let event = json!({"member": "n-a", "ringVersion": 2, "reason": "rebalance", "keys": [user], "retryAfterMs": 100});
        amqp_publish(&cluster, &reset_routing_key("n-a"), &event).await;
        let (code, texts) = expect_close(&mut ws).await;
        assert_eq!(code, CLOSE_REBALANCE);
        assert_eq!(texts[0]["type"], "reset");

        // Sent during the gap, to the new owner: stored, not delivered.
        let (status, body) = b.http("GET", &format!("/send?userId={user}&message=during"), None).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["offset"], 2);

        let (mut ws, replay) = b.connect(&format!("/connect/{user}?since=1")).await;
        assert_eq!(replay.len(), 1, "{replay:?}");
        assert_eq!((replay[0]["content"].as_str(), replay[0]["offset"].as_u64()), (Some("during"), Some(2)));
        assert_eq!(replay[0]["server"], "n-b");
        let (status, _) = b.http("GET", &format!("/send?userId={user}&message=after"), None).await;
        assert_eq!(status, 200);
        assert_eq!(next_json(&mut ws).await["offset"], 3);
        let (_, presence) = a.http("GET", &format!("/users/{user}"), None).await;
        assert_eq!(presence["node"], "n-b");

        drop((a, b));
        let _ = std::fs::remove_dir_all(&dir);
        redis_cleanup(&prefix).await;
        amqp_cleanup(&cluster, &["n-a", "n-b"]).await;
    })
    .await
    .expect("test finished in time");
}
