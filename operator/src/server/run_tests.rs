//! `run` as a whole against a fake API server: it elects itself through the Lease, becomes
//! Ready, reconciles the one `WsCluster` the API lists, serves its ring to a real subscriber on
//! the ring port, and shuts down cleanly. Every request it makes is checked against the RBAC
//! table.
//!
//! Unlike the reconcile scenarios (which assert an exact order), the controller's watchers run
//! concurrently, so this fake answers by route: lists from fixed data, watches with a stream
//! that never ends, applies by echoing.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_test::mock;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring_stream::{SubscriberConfig, Subscription};

use super::*;
use crate::fixtures::{WsClusterExt, rbac_of, ready_slice};
use crate::rbac;

type MockBody = BoxBody<Bytes, Infallible>;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

fn json_body(status: StatusCode, value: &Value) -> Response<MockBody> {
    let bytes = Bytes::from(serde_json::to_vec(value).expect("json"));
    Response::builder()
        .status(status)
        .body(Full::new(bytes).boxed())
        .expect("response")
}

fn not_found() -> Response<MockBody> {
    json_body(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

fn list(items: Vec<Value>) -> Response<MockBody> {
    json_body(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
                "items": items}),
    )
}

/// A watch that stays open and silent.
fn endless_watch() -> Response<MockBody> {
    let stream = futures_util::stream::pending::<Result<Frame<Bytes>, Infallible>>();
    Response::builder()
        .status(StatusCode::OK)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}

/// What the fake saw.
#[derive(Default)]
struct Seen {
    /// `(method, path)` of every request.
    requests: Vec<(Method, String, String)>,
    /// The proxies' ring token the operator created for `chat`.
    token: Option<String>,
    /// Status bodies applied, by cluster name.
    statuses: std::collections::BTreeMap<String, Value>,
}

async fn answer(req: Request<Body>, seen: &Mutex<Seen>) -> Response<MockBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    seen.lock()
        .expect("lock")
        .requests
        .push((method.clone(), path.clone(), query.clone()));
    let bytes = req.into_body().collect().await.expect("body").to_bytes();
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("json body")
    };
    if query.contains("watch=true") {
        return endless_watch();
    }
    let (_, resource, verb) = rbac_of(&method, &path, &query);
    match (verb.as_str(), resource.as_str()) {
        ("list", "wsclusters") => {
            let chat = serde_json::to_value(WsCluster::test()).expect("json");
            list(vec![chat, broken_cluster()])
        }
        ("list", "endpointslices") => {
            list(vec![serde_json::to_value(ready_slice(3)).expect("json")])
        }
        ("list", _) => list(vec![]),
        ("get", _) => not_found(),
        ("create", _) => json_body(StatusCode::CREATED, &body),
        ("patch", "secrets") => {
            let secret: Secret = serde_json::from_value(body.clone()).expect("secret");
            let token = secret.data.and_then(|d| {
                d.get(crate::resources::RING_TOKEN_PROXY_KEY)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            });
            if path.ends_with("/chat-ring-token") {
                seen.lock().expect("lock").token = token;
            }
            json_body(StatusCode::OK, &body)
        }
        ("patch", "wsclusters/status") => {
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut c = if name == "broken" {
                broken_cluster()
            } else {
                serde_json::to_value(WsCluster::test()).expect("json")
            };
            c["status"] = body["status"].clone();
            seen.lock()
                .expect("lock")
                .statuses
                .insert(name, body["status"].clone());
            json_body(StatusCode::OK, &c)
        }
        ("patch" | "update", _) => json_body(StatusCode::OK, &body),
        _ => panic!("unexpected {method} {path}"),
    }
}

/// A second cluster whose Redis Secret does not exist.
fn broken_cluster() -> Value {
    let mut c = WsCluster::test().with_redis_secret("no-such-secret", "url");
    c.metadata.name = Some("broken".into());
    c.metadata.uid = Some("8c1e4a9e-0000-4000-8000-000000000002".into());
    serde_json::to_value(c).expect("json")
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out).await;
    out
}

#[tokio::test]
async fn run_elects_itself_reconciles_serves_the_ring_and_shuts_down_while_a_broken_cluster_is_degraded()
 {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<MockBody>>();
    let client = Client::new(service, "default");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    send.send_response(answer(req, &seen).await);
                });
            }
        })
    };

    let ring_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let ring_addr = ring_listener.local_addr().expect("addr");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_addr = admin_listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let config = Config {
        ring_public_url: format!("http://{ring_addr}"),
        lease_name: "leader".into(),
        lease_namespace: Some("ops".into()),
        pod_name: Some("op-0".into()),
        watch_namespace: None,
    };
    let operator = tokio::spawn(run(
        config,
        client,
        ring_listener,
        admin_listener,
        shutdown.clone(),
    ));

    tokio::time::timeout(TEST_TIMEOUT, async {
        // Elected: /readyz turns 200.
        while !http_get(admin_addr, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Reconciled: the ring token exists and ring 1 has the three Ready pods.
        let token = loop {
            if let Some(t) = seen.lock().expect("lock").token.clone() {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(token.len(), 64, "256 random bits in hex");
        let stop = CancellationToken::new();
        let sub = Subscription::spawn(
            SubscriberConfig {
                base_url: format!("http://{ring_addr}"),
                cluster_id: "default/chat".into(),
                token,
                kind: SubscriberKind::Proxy,
                subscriber_id: "chat-proxy-0".into(),
            },
            stop.clone(),
        );
        let mut rings = sub.rings();
        let ring = rings
            .wait_for(|r| r.is_some())
            .await
            .expect("subscription alive")
            .clone()
            .expect("a ring");
        assert_eq!(ring.version(), 1);
        assert_eq!(ring.snapshot().members.len(), 3);
        // The broken cluster beside it is Degraded, with the reason, and disturbed nothing.
        let degraded = loop {
            let status = seen.lock().expect("lock").statuses.get("broken").cloned();
            if let Some(status) = status {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let condition = degraded["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Degraded"))
            .cloned()
            .expect("a Degraded condition");
        assert_eq!(condition["status"], "True");
        assert_eq!(condition["reason"], "SecretNotFound");
        let metrics = http_get(admin_addr, "/metrics").await;
        assert!(metrics.contains("wscluster_operator_leader 1"), "{metrics}");
        assert!(
            metrics.contains("wscluster_operator_ring_version{cluster=\"default/chat\"} 1"),
            "{metrics}"
        );
        stop.cancel();

        shutdown.cancel();
        operator
            .await
            .expect("run task")
            .expect("run returns Ok after shutdown");
    })
    .await
    .expect("in time");
    fake.abort();

    let seen = seen.lock().expect("lock");
    for (method, path, query) in &seen.requests {
        let (group, resource, verb) = rbac_of(method, path, query);
        assert!(
            rbac::allows(&group, &resource, &verb),
            "RBAC table does not allow {verb} {resource} in {group:?} ({method} {path}?{query})"
        );
    }
    // Leadership came from the Lease.
    assert!(
        seen.requests.iter().any(|(m, p, _)| m == Method::POST
            && p == "/apis/coordination.k8s.io/v1/namespaces/ops/leases")
    );
}
