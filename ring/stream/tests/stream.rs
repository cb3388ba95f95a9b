//! The ring stream over real HTTP on 127.0.0.1: a hub served by `serve`, subscriptions, raw
//! requests for the error cases, and a scripted fake hub for bad input.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wscluster_ring::contract::stream::{
    MAX_LINE_BYTES, SILENCE_TIMEOUT_MS, StreamEvent, SubscriberKind, ack_path, snapshot_path,
    watch_path,
};
use wscluster_ring::{Member, Ring, RingError, RingSnapshot};
use wscluster_ring_stream::{
    KindTokens, RingHub, SubscriberConfig, SubscriberInfo, Subscription, load_ring_file, serve,
    watch_ring_file,
};

const CLUSTER: &str = "ns/chat";
const TOKEN: &str = "s3cret-token";
/// Upper bound of every test. The slowest path is a retry after a 401, which waits the maximum
/// backoff of five seconds.
const LIMIT: Duration = Duration::from_secs(20);

fn snapshot(version: u64, members: usize) -> RingSnapshot {
    RingSnapshot::new(
        CLUSTER,
        version,
        (0..members)
            .map(|i| Member::active(format!("chat-node-{i}"), format!("10.0.0.{i}:8080")))
            .collect(),
    )
}

fn config(addr: SocketAddr, token: &str, id: &str) -> SubscriberConfig {
    SubscriberConfig {
        base_url: format!("http://{addr}"),
        cluster_id: CLUSTER.to_string(),
        token: token.to_string(),
        kind: SubscriberKind::Proxy,
        subscriber_id: id.to_string(),
    }
}

/// A served hub: its address, the token that stops it, and the serve task.
struct Served {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(hub: Arc<RingHub>) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_on(listener, hub)
}

fn start_on(listener: TcpListener, hub: Arc<RingHub>) -> Served {
    let addr = listener.local_addr().expect("local addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, hub, shutdown.clone()));
    Served {
        addr,
        shutdown,
        task,
    }
}

fn hub_with_ring(version: u64) -> Arc<RingHub> {
    let hub = RingHub::with_heartbeat(Duration::from_millis(100));
    hub.set_token(CLUSTER, TOKEN.to_string());
    hub.publish(snapshot(version, 3)).expect("publish");
    hub
}

async fn wait_version(rings: &mut watch::Receiver<Option<Arc<Ring>>>, version: u64) -> Arc<Ring> {
    rings
        .wait_for(|r| r.as_ref().is_some_and(|r| r.version() >= version))
        .await
        .expect("subscription alive")
        .clone()
        .expect("a ring")
}

/// Polls `check` until it holds (the hub's subscriber table has no change event to await).
async fn eventually(mut check: impl FnMut() -> bool) {
    while !check() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One raw request on a new connection.
async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, HeaderMap, Incoming) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = sender.send_request(req).await.expect("response");
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body)
}

async fn text(body: Incoming) -> String {
    let bytes = body.collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// Reads `n` lines of a stream body.
async fn lines(body: &mut Incoming, n: usize) -> Vec<StreamEvent> {
    let mut buf = Vec::new();
    let mut events = Vec::new();
    while events.len() < n {
        let frame = body.frame().await.expect("open").expect("frame");
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            events.push(StreamEvent::parse_line(&line[..pos]).expect("valid line"));
        }
    }
    events
}

fn watch_uri(subscriber: &str) -> String {
    format!("{}?subscriber={subscriber}&kind=node", watch_path(CLUSTER))
}

#[tokio::test]
async fn a_subscriber_gets_the_current_ring_at_once_and_each_newer_one_in_order() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_ring(1);
        let served = start(Arc::clone(&hub)).await;
        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(served.addr, TOKEN, "p-0"), shutdown.clone());
        let mut rings = sub.rings();
        let first = wait_version(&mut rings, 1).await;
        assert_eq!(first.version(), 1);
        assert_eq!(first.members().len(), 3);
        assert!(*sub.connected().borrow());
        for version in 2..=4 {
            hub.publish(snapshot(version, 3 + version as usize))
                .expect("publish");
            rings.changed().await.expect("alive");
            let ring = rings.borrow_and_update().clone().expect("ring");
            assert_eq!(ring.version(), version, "each version arrives in order");
            assert_eq!(ring.members().len(), 3 + version as usize);
        }
        shutdown.cancel();
        served.shutdown.cancel();
        served.task.await.expect("join").expect("serve");
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn stale_publishes_are_refused_and_never_reach_subscribers() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_ring(5);
        assert_eq!(
            hub.publish(snapshot(5, 3)),
            Err(RingError::NotNewer {
                current: 5,
                offered: 5
            })
        );
        assert!(matches!(
            hub.publish(snapshot(4, 1)),
            Err(RingError::NotNewer { .. })
        ));
        let served = start(Arc::clone(&hub)).await;
        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(served.addr, TOKEN, "p-0"), shutdown.clone());
        let mut rings = sub.rings();
        assert_eq!(wait_version(&mut rings, 5).await.version(), 5);
        rings.borrow_and_update();
        assert!(hub.publish(snapshot(3, 1)).is_err());
        hub.publish(snapshot(6, 2)).expect("newer");
        rings.changed().await.expect("alive");
        let ring = rings.borrow_and_update().clone().expect("ring");
        assert_eq!(ring.version(), 6, "the stale ring was never streamed");
        assert_eq!(hub.current(CLUSTER).map(|s| s.version), Some(6));
        shutdown.cancel();
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn a_wrong_token_gets_401_and_the_subscriber_connects_once_the_token_matches() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_ring(1);
        let served = start(Arc::clone(&hub)).await;

        for token in [None, Some("wrong"), Some("s3cret-tokeN"), Some("")] {
            let (status, headers, body) =
                request(served.addr, Method::GET, &watch_uri("n-0"), token, "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}");
            assert_eq!(headers["www-authenticate"], "Bearer");
            assert_eq!(headers["content-type"], "application/json");
            let error: serde_json::Value =
                serde_json::from_str(&text(body).await).expect("json error");
            assert!(error["error"].is_string());
        }

        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(served.addr, "rotated", "p-0"), shutdown.clone());
        let mut rings = sub.rings();
        let mut connected = sub.connected();
        // Its first attempt is immediate and refused: no ring, not connected, for a while.
        let refused =
            tokio::time::timeout(Duration::from_millis(300), rings.wait_for(|r| r.is_some())).await;
        assert!(refused.is_err(), "no ring with a wrong token");
        drop(refused);
        assert!(!*connected.borrow());
        // It retries (every five seconds after a 401) and gets in once the token matches.
        hub.set_token(CLUSTER, "rotated".to_string());
        assert_eq!(wait_version(&mut rings, 1).await.version(), 1);
        connected.wait_for(|c| *c).await.expect("alive");
        shutdown.cancel();
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn acks_are_recorded_and_subscribers_show_connected_until_they_leave() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_ring(1);
        let served = start(Arc::clone(&hub)).await;
        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(served.addr, TOKEN, "chat-proxy-7"), shutdown.clone());
        let mut rings = sub.rings();
        wait_version(&mut rings, 1).await;
        sub.ack(1);
        let expected = SubscriberInfo {
            id: "chat-proxy-7".to_string(),
            kind: SubscriberKind::Proxy,
            applied_version: Some(1),
            connected: true,
        };
        eventually(|| hub.subscribers(CLUSTER) == vec![expected.clone()]).await;

        hub.publish(snapshot(2, 4)).expect("publish");
        wait_version(&mut rings, 2).await;
        sub.ack(2);
        eventually(|| {
            hub.subscribers(CLUSTER)
                .first()
                .is_some_and(|s| s.applied_version == Some(2))
        })
        .await;

        let mut connected = sub.connected();
        shutdown.cancel();
        connected.wait_for(|c| !*c).await.expect("alive");
        eventually(|| {
            hub.subscribers(CLUSTER)
                .first()
                .is_some_and(|s| !s.connected)
        })
        .await;
        let left = hub.subscribers(CLUSTER);
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].applied_version,
            Some(2),
            "the applied version is kept"
        );
        assert!(hub.subscribers("ns/unknown").is_empty());
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn an_ack_of_a_version_the_hub_has_not_published_yet_is_posted_again_until_it_has() {
    tokio::time::timeout(LIMIT, async {
        // A proxy that read version 2 from its fallback ring file before this hub published it.
        let hub = hub_with_ring(1);
        let served = start(Arc::clone(&hub)).await;
        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(served.addr, TOKEN, "chat-proxy-8"), shutdown.clone());
        let mut rings = sub.rings();
        wait_version(&mut rings, 1).await;
        sub.ack(2);
        let (status, _, body) = request(
            served.addr,
            Method::POST,
            &ack_path(CLUSTER),
            Some(TOKEN),
            &ack_body("chat-proxy-8", "proxy", 2),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{}", text(body).await);
        hub.publish(snapshot(2, 4)).expect("publish");
        eventually(|| {
            hub.subscribers(CLUSTER)
                .iter()
                .any(|s| s.id == "chat-proxy-8" && s.applied_version == Some(2))
        })
        .await;
        shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn dropping_a_subscription_closes_its_stream() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_ring(1);
        let served = start(Arc::clone(&hub)).await;
        let never_cancelled = CancellationToken::new();
        let sub = Subscription::spawn(config(served.addr, TOKEN, "p-0"), never_cancelled);
        wait_version(&mut sub.rings(), 1).await;
        eventually(|| {
            hub.subscribers(CLUSTER)
                .first()
                .is_some_and(|s| s.connected)
        })
        .await;
        drop(sub);
        eventually(|| {
            hub.subscribers(CLUSTER)
                .first()
                .is_some_and(|s| !s.connected)
        })
        .await;
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn a_subscriber_keeps_its_ring_while_the_hub_restarts_and_takes_the_newer_one_after() {
    tokio::time::timeout(LIMIT, async {
        let first = start(hub_with_ring(1)).await;
        let addr = first.addr;
        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(addr, TOKEN, "p-0"), shutdown.clone());
        let mut rings = sub.rings();
        let mut connected = sub.connected();
        wait_version(&mut rings, 1).await;
        sub.ack(1);
        connected.wait_for(|c| *c).await.expect("alive");

        first.shutdown.cancel();
        first.task.await.expect("join").expect("serve");
        connected.wait_for(|c| !*c).await.expect("alive");
        assert_eq!(
            rings.borrow().as_ref().map(|r| r.version()),
            Some(1),
            "the last ring stays while disconnected"
        );

        // A new hub process on the same port, which knows a newer ring.
        let hub = RingHub::with_heartbeat(Duration::from_millis(100));
        hub.set_token(CLUSTER, TOKEN.to_string());
        hub.publish(snapshot(2, 5)).expect("publish");
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let second = start_on(listener, Arc::clone(&hub));
        assert_eq!(wait_version(&mut rings, 2).await.members().len(), 5);
        connected.wait_for(|c| *c).await.expect("alive");
        // The subscriber acks again after the reconnect, so the new hub learns of it.
        eventually(|| {
            hub.subscribers(CLUSTER)
                .first()
                .is_some_and(|s| s.applied_version == Some(1))
        })
        .await;
        shutdown.cancel();
        second.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn idle_streams_carry_heartbeats_and_a_cluster_without_a_ring_starts_with_one() {
    tokio::time::timeout(LIMIT, async {
        let hub = RingHub::with_heartbeat(Duration::from_millis(50));
        hub.set_token(CLUSTER, TOKEN.to_string());
        let served = start(Arc::clone(&hub)).await;
        let (status, headers, mut body) =
            request(served.addr, Method::GET, &watch_uri("n-0"), Some(TOKEN), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/x-ndjson");
        assert_eq!(
            lines(&mut body, 1).await,
            vec![StreamEvent::Heartbeat { version: 0 }]
        );
        hub.publish(snapshot(3, 2)).expect("publish");
        assert_eq!(
            lines(&mut body, 3).await,
            vec![
                StreamEvent::Snapshot {
                    snapshot: snapshot(3, 2)
                },
                StreamEvent::Heartbeat { version: 3 },
                StreamEvent::Heartbeat { version: 3 },
            ]
        );
        served.shutdown.cancel();
        // Shutdown ends the stream cleanly.
        while let Some(frame) = body.frame().await {
            frame.expect("clean end");
        }
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_ring(2);
        let served = start(Arc::clone(&hub)).await;
        let addr = served.addr;
        let ack = ack_path(CLUSTER);
        let cases: Vec<(Method, String, Option<&str>, String, StatusCode)> = vec![
            (
                Method::GET,
                watch_path("ns/unknown"),
                Some(TOKEN),
                String::new(),
                StatusCode::UNAUTHORIZED,
            ),
            (
                Method::GET,
                "/v1/clusters/ns/chat/other".into(),
                Some(TOKEN),
                String::new(),
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                "/metrics".into(),
                Some(TOKEN),
                String::new(),
                StatusCode::NOT_FOUND,
            ),
            (
                Method::GET,
                watch_path(CLUSTER),
                Some(TOKEN),
                String::new(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                format!("{}?subscriber=a&kind=router", watch_path(CLUSTER)),
                Some(TOKEN),
                String::new(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                format!("{}?subscriber=a%20b&kind=node", watch_path(CLUSTER)),
                Some(TOKEN),
                String::new(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                format!(
                    "{}?subscriber={}&kind=node",
                    watch_path(CLUSTER),
                    "x".repeat(254)
                ),
                Some(TOKEN),
                String::new(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                format!(
                    "{}?subscriber=a&subscriber=b&kind=node",
                    watch_path(CLUSTER)
                ),
                Some(TOKEN),
                String::new(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                watch_uri("n-0"),
                Some(TOKEN),
                String::new(),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::GET,
                ack.clone(),
                Some(TOKEN),
                String::new(),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::POST,
                ack.clone(),
                None,
                r#"{"subscriber":"n-0","kind":"node","version":1}"#.into(),
                StatusCode::UNAUTHORIZED,
            ),
            (
                Method::POST,
                ack.clone(),
                Some(TOKEN),
                "{not json".into(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                ack.clone(),
                Some(TOKEN),
                r#"{"subscriber":"n-0","kind":"node"}"#.into(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                ack.clone(),
                Some(TOKEN),
                r#"{"subscriber":"n-0","kind":"node","version":1,"extra":1}"#.into(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                ack.clone(),
                Some(TOKEN),
                r#"{"subscriber":"","kind":"node","version":1}"#.into(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                ack.clone(),
                Some(TOKEN),
                r#"{"subscriber":"n-0","kind":"robot","version":1}"#.into(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                ack.clone(),
                Some(TOKEN),
                // Newer than the hub's: a conflict the subscriber retries, not a bad request.
                r#"{"subscriber":"n-0","kind":"node","version":3}"#.into(),
                StatusCode::CONFLICT,
            ),
            (
                Method::POST,
                ack.clone(),
                Some(TOKEN),
                format!(
                    r#"{{"subscriber":"{}","kind":"node","version":1}}"#,
                    "n".repeat(5000)
                ),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (method, path, token, body, expected) in cases {
            let (status, headers, response) =
                request(addr, method.clone(), &path, token, &body).await;
            assert_eq!(status, expected, "{method} {path} {body}");
            assert_eq!(
                headers["content-type"], "application/json",
                "{method} {path}"
            );
            let error: serde_json::Value =
                serde_json::from_str(&text(response).await).expect("json error");
            assert!(error["error"].is_string(), "{method} {path}");
        }
        assert!(
            hub.subscribers(CLUSTER).is_empty(),
            "no bad request recorded anything"
        );

        let (status, _, _) = request(
            addr,
            Method::POST,
            &ack,
            Some(TOKEN),
            r#"{"subscriber":"n-0","kind":"node","version":2}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(
            hub.subscribers(CLUSTER),
            vec![SubscriberInfo {
                id: "n-0".into(),
                kind: SubscriberKind::Node,
                applied_version: Some(2),
                connected: false
            }]
        );

        let (status, _, body) =
            request(addr, Method::GET, &snapshot_path(CLUSTER), Some(TOKEN), "").await;
        assert_eq!(status, StatusCode::OK);
        let current = RingSnapshot::from_json(&text(body).await).expect("snapshot");
        assert_eq!(current, snapshot(2, 3));
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn removing_a_cluster_ends_its_streams() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_ring(1);
        let served = start(Arc::clone(&hub)).await;
        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(served.addr, TOKEN, "p-0"), shutdown.clone());
        let mut rings = sub.rings();
        let mut connected = sub.connected();
        wait_version(&mut rings, 1).await;
        connected.wait_for(|c| *c).await.expect("alive");
        hub.remove_cluster(CLUSTER);
        connected.wait_for(|c| !*c).await.expect("alive");
        assert_eq!(hub.current(CLUSTER), None);
        let (status, _, _) =
            request(served.addr, Method::GET, &watch_uri("p-0"), Some(TOKEN), "").await;
        // A removed cluster is an unknown one: the same 401 as a wrong token.
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(rings.borrow().as_ref().map(|r| r.version()), Some(1));
        shutdown.cancel();
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

/// A fake hub that answers the n-th watch request with the n-th script (the last one
/// repeats): its lines, then an open, silent stream.
struct FakeHub {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

async fn fake_hub(scripts: Vec<Vec<Bytes>>) -> FakeHub {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let scripts = Arc::new(scripts);
    let counter = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let scripts = Arc::clone(&scripts);
            let counter = Arc::clone(&counter);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let is_watch = req.uri().path().ends_with("/ring/watch");
                let n = if is_watch {
                    counter.fetch_add(1, Ordering::SeqCst)
                } else {
                    0
                };
                let script = scripts[n.min(scripts.len() - 1)].clone();
                async move {
                    let body = if is_watch {
                        let frames = futures_util::stream::iter(script)
                            .map(|line| Ok::<_, Infallible>(Frame::data(line)))
                            .chain(futures_util::stream::pending());
                        StreamBody::new(frames).boxed_unsync()
                    } else {
                        Full::new(Bytes::new()).boxed_unsync()
                    };
                    let mut response = hyper::Response::new(body);
                    if !is_watch {
                        *response.status_mut() = StatusCode::NO_CONTENT;
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    FakeHub { addr, requests }
}

fn line(event: StreamEvent) -> Bytes {
    Bytes::from(event.to_line())
}

#[tokio::test]
async fn malformed_oversized_and_invalid_lines_are_ignored_and_the_ring_kept() {
    tokio::time::timeout(LIMIT, async {
        let mut duplicate = snapshot(9, 2);
        duplicate
            .members
            .push(Member::active("chat-node-0", "10.9.9.9:1"));
        let mut foreign = snapshot(8, 2);
        foreign.cluster_id = "ns/other".to_string();
        let v1 = line(StreamEvent::Snapshot {
            snapshot: snapshot(1, 2),
        });
        let scripts = vec![
            // A good ring, then a line that is not JSON.
            vec![v1.clone(), Bytes::from_static(b"{\"type\":\"snap\n")],
            // A line longer than the limit, in pieces, without a newline.
            vec![
                Bytes::from(vec![b' '; MAX_LINE_BYTES / 2]),
                Bytes::from(vec![b' '; MAX_LINE_BYTES / 2 + 2]),
            ],
            // A snapshot with a duplicate member (serialised by hand: the type would refuse it).
            vec![Bytes::from(format!(
                "{{\"type\":\"snapshot\",\"snapshot\":{}}}\n",
                serde_json::to_string(&duplicate).expect("json")
            ))],
            // An unknown event type, then invalid UTF-8.
            vec![Bytes::from_static(b"{\"type\":\"gossip\"}\n\xff\xfe\n")],
            // Another cluster's ring (ignored without reconnecting), an older ring, then v2.
            vec![
                line(StreamEvent::Snapshot { snapshot: foreign }),
                v1,
                line(StreamEvent::Snapshot {
                    snapshot: snapshot(2, 4),
                }),
            ],
        ];
        let fake = fake_hub(scripts).await;
        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(fake.addr, TOKEN, "p-0"), shutdown.clone());
        let mut rings = sub.rings();
        wait_version(&mut rings, 1).await;
        let ring = wait_version(&mut rings, 2).await;
        assert_eq!(
            ring.version(),
            2,
            "neither v9 (invalid) nor v8 (foreign) was applied"
        );
        assert_eq!(ring.members().len(), 4);
        assert_eq!(
            fake.requests.load(Ordering::SeqCst),
            5,
            "one reconnect per bad line"
        );
        shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_dropped_and_reconnected() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let v1 = line(StreamEvent::Snapshot {
            snapshot: snapshot(1, 2),
        });
        let v2 = line(StreamEvent::Snapshot {
            snapshot: snapshot(2, 2),
        });
        // The first stream sends v1 and falls silent; the second sends v2.
        let fake = fake_hub(vec![vec![v1], vec![v2]]).await;
        let shutdown = CancellationToken::new();
        let sub = Subscription::spawn(config(fake.addr, TOKEN, "p-0"), shutdown.clone());
        let mut rings = sub.rings();
        wait_version(&mut rings, 1).await;
        let silent_since = tokio::time::Instant::now();
        wait_version(&mut rings, 2).await;
        assert!(silent_since.elapsed() >= Duration::from_millis(SILENCE_TIMEOUT_MS));
        assert_eq!(fake.requests.load(Ordering::SeqCst), 2);
        shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

fn temp_file(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wscluster-ring-stream-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[tokio::test]
async fn a_watched_ring_file_picks_up_a_rewrite_and_ignores_an_invalid_one() {
    tokio::time::timeout(LIMIT, async {
        let path = temp_file("ring.json");
        std::fs::write(&path, snapshot(1, 2).to_json()).expect("write");
        assert_eq!(load_ring_file(&path).expect("valid"), snapshot(1, 2));
        let shutdown = CancellationToken::new();
        let mut rings = watch_ring_file(path.clone(), shutdown.clone());
        assert_eq!(
            rings.borrow_and_update().as_ref().map(|r| r.version()),
            Some(1),
            "a valid file is visible at once"
        );
        // An invalid version 9 first (the watcher may or may not see it before the next write):
        // had it been applied, version 2 would be refused below.
        let mut duplicate = snapshot(9, 2);
        duplicate
            .members
            .push(Member::active("chat-node-1", "10.9.9.9:1"));
        std::fs::write(&path, serde_json::to_string(&duplicate).expect("json")).expect("write");
        std::fs::write(&path, snapshot(2, 3).to_json()).expect("write");
        let ring = wait_version(&mut rings, 2).await;
        assert_eq!(ring.version(), 2);
        assert_eq!(ring.members().len(), 3);
        shutdown.cancel();
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    })
    .await
    .expect("within the limit");
}

const PROXY_TOKEN: &str = "proxy-token-1";
const NODE_TOKEN: &str = "node-token-2";

fn hub_with_kind_tokens() -> Arc<RingHub> {
    let hub = RingHub::with_heartbeat(Duration::from_millis(100));
    hub.set_tokens(
        CLUSTER,
        KindTokens::new(PROXY_TOKEN.to_string(), NODE_TOKEN.to_string()),
    );
    hub.publish(snapshot(2, 3)).expect("publish");
    hub
}

fn ack_body(subscriber: &str, kind: &str, version: u64) -> String {
    format!(r#"{{"subscriber":"{subscriber}","kind":"{kind}","version":{version}}}"#)
}

#[tokio::test]
async fn a_node_token_can_neither_watch_nor_ack_as_a_proxy() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_kind_tokens();
        let served = start(Arc::clone(&hub)).await;
        let addr = served.addr;
        let as_proxy = format!("{}?subscriber=p-0&kind=proxy", watch_path(CLUSTER));
        let (status, _, body) = request(addr, Method::GET, &as_proxy, Some(NODE_TOKEN), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(text(body).await.contains("not a proxy token"));
        let (status, _, body) = request(
            addr,
            Method::POST,
            &ack_path(CLUSTER),
            Some(NODE_TOKEN),
            &ack_body("p-0", "proxy", 2),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(text(body).await.contains("not a proxy token"));
        // The refused ack recorded nothing: no proxy appears to have applied the ring.
        assert_eq!(hub.subscribers(CLUSTER), Vec::new());
        // A proxy token cannot pose as a node either.
        let (status, _, _) =
            request(addr, Method::GET, &watch_uri("n-0"), Some(PROXY_TOKEN), "").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn each_kind_token_watches_and_acks_as_its_own_kind() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_kind_tokens();
        let served = start(Arc::clone(&hub)).await;
        let addr = served.addr;
        let as_proxy = format!("{}?subscriber=p-0&kind=proxy", watch_path(CLUSTER));
        let (status, _, mut body) =
            request(addr, Method::GET, &as_proxy, Some(PROXY_TOKEN), "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(matches!(
            lines(&mut body, 1).await[0],
            StreamEvent::Snapshot { .. }
        ));
        let (status, _, _) =
            request(addr, Method::GET, &watch_uri("n-0"), Some(NODE_TOKEN), "").await;
        assert_eq!(status, StatusCode::OK);
        for (token, id, kind) in [(PROXY_TOKEN, "p-0", "proxy"), (NODE_TOKEN, "n-0", "node")] {
            let (status, _, _) = request(
                addr,
                Method::POST,
                &ack_path(CLUSTER),
                Some(token),
                &ack_body(id, kind, 2),
            )
            .await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{kind} ack");
        }
        let applied: Vec<(String, SubscriberKind, Option<u64>)> = hub
            .subscribers(CLUSTER)
            .into_iter()
            .map(|s| (s.id, s.kind, s.applied_version))
            .collect();
        assert_eq!(
            applied,
            vec![
                ("n-0".to_string(), SubscriberKind::Node, Some(2)),
                ("p-0".to_string(), SubscriberKind::Proxy, Some(2)),
            ]
        );
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn an_unknown_cluster_answers_exactly_like_a_wrong_token() {
    tokio::time::timeout(LIMIT, async {
        let hub = hub_with_kind_tokens();
        // A known cluster whose tokens were never set answers the same way too.
        hub.publish(RingSnapshot::new(
            "ns/untokened",
            1,
            vec![Member::active("n-0", "h:1")],
        ))
        .expect("publish");
        let served = start(Arc::clone(&hub)).await;
        let addr = served.addr;
        let mut answers = Vec::new();
        for (cluster, token) in [
            (CLUSTER, Some("wrong")),
            (CLUSTER, None),
            ("ns/unknown", Some(PROXY_TOKEN)),
            ("ns/unknown", None),
            ("ns/untokened", Some(PROXY_TOKEN)),
        ] {
            let uri = format!("{}?subscriber=p-0&kind=proxy", watch_path(cluster));
            let (status, headers, body) = request(addr, Method::GET, &uri, token, "").await;
            answers.push((
                status,
                headers.get("www-authenticate").cloned(),
                text(body).await,
            ));
            let (status, _, body) =
                request(addr, Method::GET, &snapshot_path(cluster), token, "").await;
            answers.push((status, None, text(body).await));
        }
        let watch = answers[0].clone();
        let snapshot = answers[1].clone();
        assert_eq!(watch.0, StatusCode::UNAUTHORIZED);
        assert_eq!(watch.1.as_ref().map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
        for (i, answer) in answers.iter().enumerate() {
            let expected = if i % 2 == 0 { &watch } else { &snapshot };
            let answer = if i % 2 == 0 {
                answer.clone()
            } else {
                (answer.0, None, answer.2.clone())
            };
            assert_eq!(&answer, expected, "answer {i}");
        }
        served.shutdown.cancel();
    })
    .await
    .expect("within the limit");
}
