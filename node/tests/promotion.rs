//! A Redis master replaced by its replica (a failover, here `REPLICAOF NO ONE` on a standalone
//! replica, then the node pointed at it, as a failover behind one address looks to a client):
//! replication is asynchronous, so the old master may have acknowledged a message the replica
//! never got. The replica must not hand that message's offset out again in the same epoch: a
//! client that received the lost message would resume "after" its replacement and miss it
//! without being told. The promoted replica's new replication history starts a new epoch, so
//! every client resuming from before it is told `recovered: false`, whether it comes back
//! before or after the next message (`node/src/mailbox/scripts.rs`).

mod cluster_harness;
mod common;

use std::time::Duration;

use serde_json::Value;

use cluster_harness::MasterAndReplica;
use common::{Node, next_json, unique, within};

/// A node on the standalone Redis at `port`, keys under `prefix`.
async fn node_on(port: u16, prefix: &str) -> Node {
    let url = format!("redis://127.0.0.1:{port}");
    Node::spawn("n-0", &["--redis-url", &url, "--redis-prefix", prefix]).await
}

/// `(epoch, offset)` of a message, a receipt or a ready frame.
fn position(v: &Value) -> (String, u64) {
    let epoch = v["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("an epoch: {v}"));
    let offset = v["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("an offset: {v}"));
    (epoch.to_owned(), offset)
}

/// Sends `content` to `user`'s live session on `node` and returns where it was stored, after
/// checking that the session received it there.
async fn send_live(node: &Node, ws: &mut common::Ws, user: &str, content: &str) -> (String, u64) {
    let (status, receipt) = node.send(user, content).await;
    assert_eq!(status, 200, "{user} {content}: {receipt}");
    let got = next_json(ws).await;
    assert_eq!(got["content"], content, "{got}");
    assert_eq!(position(&got), position(&receipt), "{got} vs {receipt}");
    position(&receipt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_starts_a_new_epoch_so_no_client_resumes_past_a_lost_message() {
    within(Duration::from_secs(90), async {
        let redis = MasterAndReplica::start(17300).await;
        let prefix = unique("wsc-promotion");
        let old = node_on(redis.master, &prefix).await;
        let (mut bob, _) = old.connect("/connect/bob").await;
        let (mut carol, _) = old.connect("/connect/carol").await;
        let (epoch, _) = send_live(&old, &mut bob, "bob", "m1").await;
        send_live(&old, &mut carol, "carol", "m1").await;
        redis.wait_replicated().await;
        redis.promote().await;

        // Acknowledged and delivered by the old master only: lost with it.
        let bob_at = send_live(&old, &mut bob, "bob", "lost").await;
        let carol_at = send_live(&old, &mut carol, "carol", "lost").await;
        assert_eq!(bob_at, (epoch.clone(), 2));
        drop((bob, carol));
        old.stop().await;

        let new = node_on(redis.replica, &prefix).await;
        // Carol comes back before anything new was sent: the read itself starts the new epoch.
        let query = |(e, o): &(String, u64)| format!("?since={o}&epoch={e}");
        let (mut carol, replay, ready) = new
            .connect_ready(&format!("/connect/carol{}", query(&carol_at)))
            .await;
        assert_eq!(ready["recovered"], false, "carol: {ready}");
        assert!(replay.is_empty(), "carol: {replay:?}");
        let carol_epoch = position(&ready).0;
        assert_ne!(carol_epoch, carol_at.0, "carol: a new epoch");
        assert_eq!(position(&ready).1, 0, "carol: {ready}");
        let next = send_live(&new, &mut carol, "carol", "after").await;
        assert_eq!(next, (carol_epoch, 1), "carol: the read's epoch carries on");

        // Bob comes back after a new message: it did not take the lost offset in bob's epoch.
        let (status, receipt) = new.send("bob", "after").await;
        assert_eq!(status, 202, "{receipt}");
        let stored = position(&receipt);
        assert_ne!(stored.0, epoch, "bob: a new epoch, not offset 2 again");
        assert_eq!(stored.1, 1, "bob: {receipt}");
        let (_, replay, ready) = new
            .connect_ready(&format!("/connect/bob{}", query(&bob_at)))
            .await;
        assert_eq!(ready["recovered"], false, "bob is told: {ready}");
        assert!(replay.is_empty(), "bob: {replay:?}");
        assert_eq!(position(&ready), stored, "bob resumes from the new epoch");
        new.stop().await;
    })
    .await;
}
