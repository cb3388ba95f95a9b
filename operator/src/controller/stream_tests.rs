//! The ring stream over real HTTP: reconcile publishes into a real `RingHub` served on
//! 127.0.0.1, real subscribers (`wscluster_ring_stream::Subscription`) receive the snapshots,
//! their acks show up in status, and a subscriber whose server goes away reconnects and gets
//! the newest ring.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring_stream::{RingHub, SubscriberConfig, Subscription};

use super::tests::{Observed, run, standard, status_of};
use super::*;
use crate::fixtures::{
    TEST_NODE_TOKEN, TEST_TOKEN, TestClock, WsClusterExt, mock_context_with, ready_slice,
};

/// Bound on every wait for the stream (reconnect backoff included).
const STREAM_TIMEOUT: Duration = Duration::from_secs(20);

async fn serve_hub(listener: TcpListener, hub: Arc<RingHub>) -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        wscluster_ring_stream::serve(listener, hub, token)
            .await
            .expect("ring stream serves");
    });
    stop
}

fn subscribe(addr: std::net::SocketAddr, shutdown: &CancellationToken) -> Subscription {
    Subscription::spawn(
        SubscriberConfig {
            base_url: format!("http://{addr}"),
            cluster_id: "default/chat".into(),
            token: TEST_TOKEN.into(),
            kind: SubscriberKind::Proxy,
            subscriber_id: "chat-proxy-0".into(),
        },
        shutdown.clone(),
    )
}

async fn wait_for_version(sub: &Subscription, version: u64) {
    let mut rings = sub.rings();
    tokio::time::timeout(
        STREAM_TIMEOUT,
        rings.wait_for(|r| r.as_ref().is_some_and(|r| r.version() == version)),
    )
    .await
    .unwrap_or_else(|_| panic!("ring {version} did not arrive"))
    .expect("subscription alive");
}

#[tokio::test]
async fn a_published_ring_reaches_a_real_subscriber_and_its_ack_counts_in_status() {
    let hub = RingHub::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = serve_hub(listener, hub.clone()).await;
    let (ctx, mut server) = mock_context_with(
        hub.clone(),
        TestClock::new(),
        Arc::new(crate::probe::NoProbe),
    );
    let observed = || Observed {
        token_exists: true,
        sts: Some(3),
        sts_status: (3, 3),
        slices: vec![ready_slice(3)],
    };

    let obj = WsCluster::test();
    let (result, (applied, server2)) = run(obj.clone(), ctx.clone(), async move {
        let applied = standard(&mut server, observed()).await;
        server.event().await;
        (applied, server)
    })
    .await;
    server = server2;
    result.expect("reconciled");
    let status = status_of(&applied);
    assert_eq!((status.ring_version, status.proxies), (1, 0));

    let shutdown = CancellationToken::new();
    let sub = subscribe(addr, &shutdown);
    wait_for_version(&sub, 1).await;
    sub.ack(1);
    tokio::time::timeout(STREAM_TIMEOUT, async {
        while !hub
            .subscribers("default/chat")
            .iter()
            .any(|s| s.applied_version == Some(1) && s.connected)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the ack reached the hub");

    let obj = obj.with_status(status);
    let (result, applied) = run(
        obj,
        ctx,
        async move { standard(&mut server, observed()).await },
    )
    .await;
    result.expect("reconciled");
    let status = status_of(&applied);
    assert_eq!((status.proxies, status.proxies_in_sync), (1, 1));
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("ready");
    assert_eq!(ready.status, "True", "{}", ready.message);
    shutdown.cancel();
    stop.cancel();
}

#[tokio::test]
async fn a_subscriber_reconnects_after_the_server_restarts_and_gets_the_newest_ring() {
    let hub = RingHub::new();
    hub.set_token("default/chat", TEST_TOKEN.into());
    hub.publish(wscluster_ring::RingSnapshot::new(
        "default/chat",
        1,
        vec![wscluster_ring::Member::active(
            "chat-node-0",
            "10.0.0.10:8080",
        )],
    ))
    .expect("publish 1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = serve_hub(listener, hub.clone()).await;
    let shutdown = CancellationToken::new();
    let sub = subscribe(addr, &shutdown);
    wait_for_version(&sub, 1).await;

    // The operator's server goes away (a restart); a new ring is published meanwhile.
    stop.cancel();
    let mut connected = sub.connected();
    tokio::time::timeout(STREAM_TIMEOUT, connected.wait_for(|c| !*c))
        .await
        .expect("the subscriber noticed")
        .expect("alive");
    hub.publish(wscluster_ring::RingSnapshot::new(
        "default/chat",
        2,
        vec![
            wscluster_ring::Member::active("chat-node-0", "10.0.0.10:8080"),
            wscluster_ring::Member::active("chat-node-1", "10.0.0.11:8080"),
        ],
    ))
    .expect("publish 2");
    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let stop = serve_hub(listener, hub.clone()).await;
    wait_for_version(&sub, 2).await;
    assert!(*sub.connected().borrow());
    shutdown.cancel();
    stop.cancel();
}

#[tokio::test]
async fn after_reconcile_the_node_token_cannot_pose_as_a_proxy_on_the_operators_hub() {
    let hub = RingHub::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = serve_hub(listener, hub.clone()).await;
    let (ctx, mut server) = mock_context_with(
        hub.clone(),
        TestClock::new(),
        Arc::new(crate::probe::NoProbe),
    );
    let (result, ()) = run(WsCluster::test(), ctx, async move {
        let observed = Observed {
            token_exists: true,
            sts: Some(3),
            sts_status: (3, 3),
            slices: vec![ready_slice(3)],
        };
        standard(&mut server, observed).await;
        server.event().await;
    })
    .await;
    result.expect("reconciled");
    let shutdown = CancellationToken::new();
    let subscription = |token: &str, kind: SubscriberKind, id: &str| {
        Subscription::spawn(
            SubscriberConfig {
                base_url: format!("http://{addr}"),
                cluster_id: "default/chat".into(),
                token: token.into(),
                kind,
                subscriber_id: id.into(),
            },
            shutdown.clone(),
        )
    };
    // The node token, as a node: served. As a proxy: refused, so it can never ack one.
    let node = subscription(TEST_NODE_TOKEN, SubscriberKind::Node, "chat-node-0");
    wait_for_version(&node, 1).await;
    let watch = |kind: &str| {
        format!("/v1/clusters/default/chat/ring/watch?subscriber=chat-proxy-9&kind={kind}")
    };
    let ack = r#"{"subscriber":"chat-proxy-9","kind":"proxy","version":1}"#;
    let requests = [
        (http::Method::GET, watch("proxy"), TEST_NODE_TOKEN, ""),
        (
            http::Method::POST,
            "/v1/clusters/default/chat/ring/ack".to_string(),
            TEST_NODE_TOKEN,
            ack,
        ),
    ];
    for (method, path, token, body) in requests {
        let status = raw_status(addr, method, &path, token, body).await;
        assert_eq!(status, http::StatusCode::FORBIDDEN, "{path}");
    }
    assert!(
        hub.subscribers("default/chat")
            .iter()
            .all(|s| s.id != "chat-proxy-9"),
        "the hub recorded nothing of the impostor"
    );
    let proxy = subscription(TEST_TOKEN, SubscriberKind::Proxy, "chat-proxy-0");
    wait_for_version(&proxy, 1).await;
    shutdown.cancel();
    stop.cancel();
}

/// The status of one request to the hub with a bearer token.
async fn raw_status(
    addr: std::net::SocketAddr,
    method: http::Method,
    path: &str,
    token: &str,
    body: &'static str,
) -> http::StatusCode {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            body.as_bytes(),
        )))
        .expect("request");
    tokio::time::timeout(STREAM_TIMEOUT, sender.send_request(req))
        .await
        .expect("in time")
        .expect("response")
        .status()
}
