//! The plugin against a mock API server (exact requests) and a real ring hub on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_test::mock;
use wscluster_ring_stream::RingHub;

use super::*;
use wscluster_ring::Member;

const TIMEOUT: Duration = Duration::from_secs(10);
const CR_PATH: &str = "/apis/wscluster.io/v1alpha1/namespaces/default/wsclusters/chat";

fn status() -> WsClusterStatus {
    serde_json::from_value(json!({
        "replicas": 3, "readyReplicas": 3, "selector": "app=chat",
        "ringVersion": 7, "ringSlots": 4096,
        "members": [
            {"id": "chat-node-0", "address": "10.0.0.1:8080", "state": "active"},
            {"id": "chat-node-1", "address": "10.0.0.2:8080", "state": "active"},
            {"id": "chat-node-2", "address": "10.0.0.3:8080", "state": "draining"}
        ],
        "proxies": 2, "proxiesInSync": 1,
        "drain": {"targetReplicas": 2, "since": "2026-12-01T10:00:00Z", "ringVersion": 7},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving",
                        "message": "3 nodes ready", "lastTransitionTime": "2026-12-01T10:00:00Z"}]
    }))
    .expect("a valid status")
}

fn snapshot() -> RingSnapshot {
    let mut snap = RingSnapshot::new(
        "default/chat",
        7,
        vec![
            Member::active("chat-node-0", "10.0.0.1:8080"),
            Member::active("chat-node-1", "10.0.0.2:8080"),
            Member::active("chat-node-2", "10.0.0.3:8080").draining(),
        ],
    );
    snap.params.slots = 4096;
    snap
}

fn args(command: PluginCommand, output: Output) -> PluginArgs {
    PluginArgs {
        namespace: None,
        ring_url: None,
        ring_token: None,
        ring_token_file: None,
        output,
        command,
    }
}

/// Runs the plugin against a mock API server that expects exactly one GET of the WsCluster and
/// answers it with `answer` (status code, body).
async fn run_against(
    args: PluginArgs,
    answer: (StatusCode, serde_json::Value),
) -> anyhow::Result<String> {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("one request");
        assert_eq!(request.method(), http::Method::GET);
        assert_eq!(request.uri().path(), CR_PATH);
        let body = serde_json::to_vec(&answer.1).expect("json");
        send.send_response(
            Response::builder()
                .status(answer.0)
                .body(Body::from(body))
                .expect("response"),
        );
    });
    let out = tokio::time::timeout(TIMEOUT, run(client, &args))
        .await
        .expect("in time");
    server.await.expect("mock server");
    out
}

fn cluster_json() -> serde_json::Value {
    json!({"apiVersion": "wscluster.io/v1alpha1", "kind": "WsCluster",
           "metadata": {"name": "chat", "namespace": "default", "uid": "u1"},
           "spec": {}, "status": serde_json::to_value(status()).expect("json")})
}

#[test]
fn the_status_ring_is_the_ring_proxies_build_from_the_same_members() {
    let from_status = ring_from_status("default/chat", &status()).expect("valid");
    let built = Ring::build(snapshot()).expect("valid");
    assert_eq!(from_status.version(), 7);
    assert_eq!(from_status.slot_count(), 4096);
    for i in 0..500 {
        let key = format!("user-{i}");
        assert_eq!(
            owner_report(&from_status, RingSource::Status, &key).owner,
            built.owner(&key).ok().map(|m| m.id.clone()),
        );
    }
    let report = ring_report(&from_status, RingSource::Status);
    assert_eq!(report.members.len(), 3);
    assert_eq!(report.members[2].state, "draining");
    assert_eq!(report.members[2].share, 0.0);
    let total: f64 = report.members.iter().map(|m| m.share).sum();
    assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}");
}

#[test]
fn a_status_with_a_negative_version_is_an_error_not_a_ring() {
    let mut bad = status();
    bad.ring_version = -1;
    let err = ring_from_status("default/chat", &bad).expect_err("refused");
    assert!(err.to_string().contains("ringVersion"), "{err}");
}

#[test]
fn status_says_when_proxies_are_not_in_sync_and_what_drains() {
    let report = status_report("default/chat", &status());
    assert!(!report.in_sync);
    let text = status_text(&report);
    assert!(text.contains("proxies in sync 1/2 (NOT IN SYNC)"), "{text}");
    assert!(text.contains("down to 2 replicas"), "{text}");
    assert!(text.contains("Ready=True Serving: 3 nodes ready"), "{text}");
    let mut synced = status();
    synced.proxies_in_sync = 2;
    synced.drain = None;
    let text = status_text(&status_report("default/chat", &synced));
    assert!(
        !text.contains("NOT IN SYNC") && text.contains("drain: none"),
        "{text}"
    );
}

#[tokio::test]
async fn owner_reads_the_cluster_from_the_api_and_answers_from_its_status() {
    let key = "alice";
    let expected = Ring::build(snapshot()).expect("valid");
    let owner = expected.owner(key).expect("has an owner");
    let out = run_against(
        args(
            PluginCommand::Owner {
                cluster: "chat".into(),
                key: key.into(),
            },
            Output::Text,
        ),
        (StatusCode::OK, cluster_json()),
    )
    .await
    .expect("answers");
    assert_eq!(
        out,
        format!(
            "alice -> {} ({}), ring version 7 from the status (weights assumed 1)\n",
            owner.id, owner.address
        )
    );
}

#[tokio::test]
async fn status_as_json_is_one_document() {
    let out = run_against(
        args(
            PluginCommand::Status {
                cluster: "chat".into(),
            },
            Output::Json,
        ),
        (StatusCode::OK, cluster_json()),
    )
    .await
    .expect("answers");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(doc["proxiesInSync"], 1);
    assert_eq!(doc["inSync"], false);
}

#[tokio::test]
async fn a_missing_cluster_is_named_in_the_error() {
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "NotFound", "code": 404, "message": "not found"});
    let err = run_against(
        args(
            PluginCommand::Ring {
                cluster: "chat".into(),
            },
            Output::Text,
        ),
        (StatusCode::NOT_FOUND, not_found),
    )
    .await
    .expect_err("no such cluster");
    assert_eq!(err.to_string(), "wscluster default/chat not found");
}

/// A real hub on 127.0.0.1 holding `snapshot()` under token `t0ken`.
async fn real_hub() -> (String, CancellationToken) {
    let hub: Arc<RingHub> = RingHub::new();
    hub.set_token("default/chat", "t0ken".into());
    hub.publish(snapshot()).expect("publishes");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    tokio::spawn(wscluster_ring_stream::serve(
        listener,
        hub,
        shutdown.clone(),
    ));
    (url, shutdown)
}

#[tokio::test]
async fn the_ring_stream_snapshot_gives_the_same_owners_as_the_proxies() {
    let (url, shutdown) = real_hub().await;
    let ring = tokio::time::timeout(TIMEOUT, fetch_ring(&url, "t0ken", "default/chat"))
        .await
        .expect("in time")
        .expect("fetched");
    let expected = Ring::build(snapshot()).expect("valid");
    for i in 0..500 {
        let key = format!("user-{i}");
        assert_eq!(
            ring.owner(&key).map(|m| &m.id),
            expected.owner(&key).map(|m| &m.id)
        );
    }
    let text = ring_text(&ring_report(&ring, RingSource::Stream));
    assert!(
        text.starts_with("default/chat ring version 7, 4096 slots, from the ring stream\n"),
        "{text}"
    );
    let err = fetch_ring(&url, "wrong", "default/chat")
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("401"), "{err}");
    shutdown.cancel();
}
