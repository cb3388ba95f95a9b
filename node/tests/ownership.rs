//! Ownership refusal (ring file and ring stream) and graceful drain, against the real binary.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring::contract::{CLOSE_DRAIN, ResetReason};
use wscluster_ring::{Member, RingSnapshot};
use wscluster_ring_stream::RingHub;

fn snapshot(version: u64, draining_n0: bool) -> RingSnapshot {
    let n0 = Member::active("n-0", "127.0.0.1:1");
    let n0 = if draining_n0 { n0.draining() } else { n0 };
    RingSnapshot::new(
        "test/own",
        version,
        vec![n0, Member::active("n-1", "127.0.0.1:2")],
    )
}

/// A node `id` of cluster `test/own` following `ring`.
async fn ring_node(id: &str, ring: &RingFile) -> Node {
    Node::spawn(id, &["--cluster-id", "test/own", "--ring-file", &ring.path]).await
}

#[tokio::test]
async fn a_node_refuses_upgrades_and_sends_for_keys_it_does_not_own_under_its_newest_ring() {
    within(STEP * 3, async {
        let v1 = snapshot(1, false);
        let ring = RingFile::holding(&v1);
        let node = ring_node("n-0", &ring).await;

        let mine = key_owned_by(&v1, "n-0");
        let theirs = key_owned_by(&v1, "n-1");
        let (status, body) = node.refused(&format!("/connect/{theirs}")).await;
        assert_eq!(status, 421, "{body}");
        assert_eq!(body["error"], "not-owner");
        assert_eq!(body["owner"], "n-1");
        assert_eq!(body["ringVersion"], 1);
        let (status, body) = node.send(&theirs, "x").await;
        assert_eq!((status, body["owner"].as_str()), (421, Some("n-1")));
        let (_ws, _) = node.connect(&format!("/connect/{mine}")).await;

        // n-0 starts draining in v2: it owns nothing, n-1 owns everything.
        ring.write(&snapshot(2, true));
        let body = node
            .poll_send("the node applies ring v2", &mine, |status, body| {
                status == 421 && body["ringVersion"] == 2
            })
            .await;
        assert_eq!(body["owner"], "n-1");
        let (status, _) = node.refused(&format!("/connect/{mine}")).await;
        assert_eq!(status, 421);
    })
    .await;
}

/// An upgrade carrying the proxy's ring-version header, answered with the status it got.
async fn upgrade_routed_with(addr: &str, path: &str, version: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        wscluster_ring::contract::RING_VERSION_HEADER,
        version.parse().expect("header value"),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((_ws, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn a_request_routed_under_a_newer_ring_waits_for_it_instead_of_being_refused() {
    within(STEP * 3, async {
        let v1 = snapshot(1, false);
        let ring = RingFile::holding(&v1);
        let node = ring_node("n-1", &ring).await;
        // Under v1 n-0 owns `moved`; in v2 n-0 drains and n-1 (this node) owns every key.
        let moved = key_owned_by(&v1, "n-0");
        let connect = format!("/connect/{moved}");

        // Routed with the node's own version, or with garbage: refused at once.
        assert_eq!(upgrade_routed_with(&node.addr, &connect, "1").await, 421);
        assert_eq!(
            upgrade_routed_with(&node.addr, &connect, "not-a-number").await,
            421
        );

        // Routed with v2 while the node still has v1: the node holds the request...
        let addr = node.addr.clone();
        let path2 = connect.clone();
        let mut pending =
            tokio::spawn(async move { upgrade_routed_with(&addr, &path2, "2").await });
        let early = tokio::time::timeout(Duration::from_millis(500), &mut pending).await;
        assert!(
            early.is_err(),
            "answered before the node had ring v2: {early:?}"
        );
        // ...and accepts it once v2 arrives.
        ring.write(&snapshot(2, true));
        assert_eq!(pending.await.expect("task"), 101);

        // A version that never comes: refused, but only once the bounded wait is over.
        let v3 = RingSnapshot::new(
            "test/own",
            3,
            vec![
                Member::active("n-0", "127.0.0.1:1"),
                Member::active("n-1", "127.0.0.1:2").draining(),
            ],
        );
        ring.write(&v3);
        node.poll_send("the node applies ring v3", &moved, |status, body| {
            status == 421 && body["ringVersion"] == 3
        })
        .await;
        let started = std::time::Instant::now();
        assert_eq!(upgrade_routed_with(&node.addr, &connect, "99").await, 421);
        assert!(
            started.elapsed() >= Duration::from_millis(1_500),
            "the node waited for the newer ring before refusing: {:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn a_node_follows_the_ring_stream_and_acks_the_version_it_applies() {
    within(STEP * 3, async {
        let hub = RingHub::new();
        hub.set_token("test/own", "secret".into());
        hub.publish(snapshot(7, false)).expect("publish");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        tokio::spawn(wscluster_ring_stream::serve(
            listener,
            Arc::clone(&hub),
            stop.clone(),
        ));

        let node = Node::spawn(
            "n-0",
            &[
                "--cluster-id",
                "test/own",
                "--ring-url",
                &url,
                "--ring-token",
                "secret",
            ],
        )
        .await;
        eventually("the node acks version 7", || async {
            hub.subscribers("test/own")
                .iter()
                .any(|s| {
                    s.id == "n-0" && s.kind == SubscriberKind::Node && s.applied_version == Some(7)
                })
                .then_some(())
        })
        .await;
        let theirs = key_owned_by(&snapshot(7, false), "n-1");
        let (status, body) = node.refused(&format!("/connect/{theirs}")).await;
        assert_eq!((status, body["ringVersion"].as_u64()), (421, Some(7)));
        stop.cancel();
    })
    .await;
}

#[tokio::test]
async fn sigterm_sends_every_client_a_drain_reset_and_the_node_exits_within_the_grace_period() {
    within(STEP * 3, async {
        let mut node = Node::spawn("n-0", &["--grace-period-seconds", "5"]).await;
        let (mut a, _) = node.connect("/connect/alice").await;
        let (mut b, _) = node.connect("/connect/bob").await;
        node.terminate();
        for ws in [&mut a, &mut b] {
            let (code, texts) = expect_close(ws).await;
            assert_eq!(code, CLOSE_DRAIN);
            assert_eq!(texts.len(), 1, "{texts:?}");
            assert_eq!(texts[0]["type"], "reset");
            assert_eq!(texts[0]["reason"], ResetReason::Drain.as_str());
            assert!(texts[0]["retryAfterMs"].as_u64().expect("retryAfterMs") < 2_000);
        }
        let status = tokio::time::timeout(STEP, node.child.wait())
            .await
            .expect("exited within the grace period")
            .expect("wait");
        assert!(status.success(), "{status:?}");
    })
    .await;
}

#[tokio::test]
async fn until_its_ring_arrives_a_node_is_not_ready_and_refuses_upgrades_with_ring_unknown() {
    within(STEP * 3, async {
        let ring = RingFile::empty();
        let node = ring_node("n-0", &ring).await;
        let (status, body) = node.http("GET", "/readyz", None).await;
        assert_eq!((status, body["ringKnown"].as_bool()), (503, Some(false)));
        let (status, body) = node.refused("/connect/alice").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("ring-unknown"))
        );

        let v1 = snapshot(1, false);
        ring.write(&v1);
        node.poll("the node becomes ready", "/readyz", |status, _| {
            status == 200
        })
        .await;
        let mine = key_owned_by(&v1, "n-0");
        let (_ws, _) = node.connect(&format!("/connect/{mine}")).await;
    })
    .await;
}
