//! Reconcile scenarios against the API server mock: every request is asserted in order, and
//! reconcile must finish (an unexpected extra request would hang it until the timeout).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::*;
use crate::crd::WsClusterStatus;
use crate::fixtures::{
    ApiServer, FakeHub, TEST_NODE_TOKEN, TEST_TOKEN, TestClock, WsClusterExt, endpoint,
    mock_context, ready_slice, slice,
};

const NS: &str = "/api/v1/namespaces/default";
const APPS: &str = "/apis/apps/v1/namespaces/default";
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the fake API server holds before a reconcile.
pub(super) struct Observed {
    /// The generated Secrets (ring tokens, proxy secret, API keys) exist.
    pub(super) token_exists: bool,
    /// The StatefulSet's `spec.replicas`, or absent.
    pub(super) sts: Option<i32>,
    /// `(status.replicas, status.readyReplicas)` returned by the StatefulSet apply.
    pub(super) sts_status: (i32, i32),
    /// The node Service's EndpointSlices.
    pub(super) slices: Vec<EndpointSlice>,
}

/// What reconcile applied.
pub(super) struct Applied {
    /// The generated Secrets reconcile created (ring tokens, proxy secret, API keys).
    pub(super) secret: Option<Vec<Value>>,
    pub(super) statefulset: Value,
    pub(super) deployment: Value,
    pub(super) status: Value,
}

pub(super) fn secret_with_token() -> Value {
    let b64 = |v: &str| {
        serde_json::to_value(k8s_openapi::ByteString(v.as_bytes().to_vec())).expect("base64")
    };
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "chat-ring-token", "namespace": "default"},
           "data": {"proxy": b64(TEST_TOKEN), "node": b64(TEST_NODE_TOKEN)}})
}

/// An existing generated Secret (`<name>` under `chat-`) holding `key`.
fn existing_secret(name: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": format!("chat-{name}"), "namespace": "default"},
           "data": {key: "ZXhpc3Rpbmc="}})
}

/// The GETs (and, when they are missing, the applies) of the three generated Secrets.
pub(super) async fn generated_secrets(server: &mut ApiServer, exist: bool) -> Option<Vec<Value>> {
    let mut created = Vec::new();
    for (name, key) in [
        ("ring-token", ""),
        ("proxy-secret", "secret"),
        ("api-keys", "keys"),
    ] {
        let path = format!("{NS}/secrets/chat-{name}");
        let get = server.expect(Method::GET, &path).await;
        if exist {
            if name == "ring-token" {
                get.respond(StatusCode::OK, &secret_with_token());
            } else {
                get.respond(StatusCode::OK, &existing_secret(name, key));
            }
        } else {
            get.not_found();
            created.push(server.apply(&path).await);
        }
    }
    (!exist).then_some(created)
}

/// The requests of a reconcile that gets past validation, in order.
pub(super) async fn standard(server: &mut ApiServer, o: Observed) -> Applied {
    let secret = generated_secrets(server, o.token_exists).await;
    let cm = server.apply(&format!("{NS}/configmaps/chat-config")).await;
    assert!(
        cm["data"]["proxy.yaml"]
            .as_str()
            .is_some_and(|y| y.contains("keySources"))
    );
    let svc = server.apply(&format!("{NS}/services/chat-node")).await;
    assert_eq!(svc["spec"]["clusterIP"], "None");
    let proxy_svc = server.apply(&format!("{NS}/services/chat-proxy")).await;
    let ports: Vec<&Value> = proxy_svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .collect();
    assert_eq!(ports.len(), 1, "clients reach the ws port only: {ports:?}");
    assert_eq!(ports[0]["name"], "ws");
    let api = server.apply(&format!("{NS}/services/chat-api")).await;
    assert_eq!(api["spec"]["type"], "ClusterIP");
    assert_eq!(api["spec"]["ports"][0]["port"], 8081);
    let metrics = server.apply(&format!("{NS}/services/chat-metrics")).await;
    assert_eq!(metrics["spec"]["ports"][0]["name"], "admin");
    server
        .apply("/apis/policy/v1/namespaces/default/poddisruptionbudgets/chat-node")
        .await;
    let proxy_pdb = server
        .apply("/apis/policy/v1/namespaces/default/poddisruptionbudgets/chat-proxy")
        .await;
    assert_eq!(proxy_pdb["spec"]["maxUnavailable"], 1);
    let policy = server
        .apply("/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/chat-node")
        .await;
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let get_sts = server
        .expect(Method::GET, &format!("{APPS}/statefulsets/chat-node"))
        .await;
    match o.sts {
        Some(replicas) => get_sts.respond(
            StatusCode::OK,
            &json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "metadata": {"name": "chat-node", "namespace": "default"},
                    "spec": {"replicas": replicas, "serviceName": "chat-node",
                             "selector": {}, "template": {}}}),
        ),
        None => get_sts.not_found(),
    }
    let apply_sts = server
        .expect(Method::PATCH, &format!("{APPS}/statefulsets/chat-node"))
        .await;
    let mut statefulset = apply_sts.body.clone();
    let mut answer = statefulset.clone();
    answer["status"] = json!({"replicas": o.sts_status.0, "readyReplicas": o.sts_status.1});
    apply_sts.respond(StatusCode::OK, &answer);
    statefulset["status"] = Value::Null;
    let apply_deployment = server
        .expect(Method::PATCH, &format!("{APPS}/deployments/chat-proxy"))
        .await;
    let deployment = apply_deployment.body.clone();
    let mut answer = deployment.clone();
    answer["status"] = json!({"availableReplicas": deployment["spec"]["replicas"]});
    apply_deployment.respond(StatusCode::OK, &answer);
    let list = server
        .expect(
            Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
        )
        .await;
    assert!(
        list.query
            .contains("labelSelector=kubernetes.io%2Fservice-name%3Dchat-node"),
        "{}",
        list.query
    );
    list.respond(
        StatusCode::OK,
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                "metadata": {}, "items": o.slices}),
    );
    let status = server.apply_status().await;
    let ring_file = server.apply(&format!("{NS}/configmaps/chat-ring")).await;
    let text = ring_file["data"]["ring.json"].as_str().expect("ring.json");
    let written = wscluster_ring::RingSnapshot::from_json(text).expect("the --ring-file format");
    assert_eq!(
        i64::try_from(written.version).ok(),
        status["status"]["ringVersion"].as_i64(),
        "the fallback ring file holds the ring the status records"
    );
    Applied {
        secret,
        statefulset,
        deployment,
        status,
    }
}

/// Runs reconcile and the scenario side by side under a timeout.
pub(super) async fn run<F, T>(obj: WsCluster, ctx: Arc<Context>, scenario: F) -> (Result<Action>, T)
where
    F: std::future::Future<Output = T>,
{
    tokio::time::timeout(SCENARIO_TIMEOUT, async {
        tokio::join!(reconcile(Arc::new(obj), ctx), scenario)
    })
    .await
    .expect("scenario finished in time")
}

/// The status a reconcile wrote, as the next reconcile will see it.
pub(super) fn status_of(applied: &Applied) -> WsClusterStatus {
    serde_json::from_value(applied.status["status"].clone()).expect("status parses")
}

fn sts_replicas(applied: &Applied) -> i64 {
    applied.statefulset["spec"]["replicas"]
        .as_i64()
        .expect("replicas")
}

fn member_states(status: &WsClusterStatus) -> Vec<(String, String)> {
    status
        .members
        .iter()
        .map(|m| {
            (
                m.id.clone(),
                serde_json::to_value(m.state)
                    .expect("state")
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_new_cluster_creates_every_child_and_publishes_ring_one() {
    let hub = FakeHub::new();
    let (ctx, mut server) = mock_context(hub.clone(), TestClock::new());
    let obj = WsCluster::test();
    let (result, applied) = run(obj, ctx, async move {
        let applied = standard(
            &mut server,
            Observed {
                token_exists: false,
                sts: None,
                sts_status: (0, 0),
                slices: vec![],
            },
        )
        .await;
        assert_eq!(
            server.event().await,
            ("Normal".into(), "RingUpdated".into())
        );
        applied
    })
    .await;
    assert_eq!(result.expect("reconciled"), Action::requeue(STEADY_REQUEUE));
    let secrets = applied.secret.as_ref().expect("generated secrets created");
    let data: Vec<(String, Value)> = secrets
        .iter()
        .map(|s| (s["metadata"]["name"].to_string(), s["data"].clone()))
        .collect();
    let b64 = |v: &str| {
        serde_json::to_value(k8s_openapi::ByteString(v.as_bytes().to_vec())).expect("base64")
    };
    assert_eq!(
        data,
        vec![
            (
                "\"chat-ring-token\"".to_string(),
                json!({"node": b64("test-chat-ring-token/node"),
                       "proxy": b64("test-chat-ring-token/proxy")})
            ),
            (
                "\"chat-proxy-secret\"".to_string(),
                json!({"secret": b64("test-chat-proxy-secret/secret")})
            ),
            (
                "\"chat-api-keys\"".to_string(),
                json!({"keys": b64(&resources::initial_value(
                    Generated::ApiKeys,
                    "test-chat-api-keys/keys"
                ))})
            ),
        ]
    );
    for secret in secrets {
        assert_eq!(
            secret["metadata"]["ownerReferences"][0]["kind"],
            "WsCluster"
        );
    }
    assert_eq!(sts_replicas(&applied), 3);
    assert_eq!(applied.deployment["spec"]["replicas"], 2);
    let status = status_of(&applied);
    assert_eq!(status.ring_version, 1);
    assert_eq!(
        status.selector,
        "app.kubernetes.io/component=node,app.kubernetes.io/instance=chat,app.kubernetes.io/name=wscluster"
    );
    assert_eq!(
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .map(|c| c.reason.as_str()),
        Some("Creating")
    );
    assert_eq!(hub.current("default/chat").map(|s| s.version), Some(1));
}

fn steady_status(version: i64, n: usize) -> WsClusterStatus {
    let snapshot = wscluster_ring::RingSnapshot {
        version: version as u64,
        ..wscluster_ring::RingSnapshot::new(
            "default/chat",
            1,
            crate::membership::members(&[ready_slice(n)], "chat-node", "ws", 8080, 100),
        )
    };
    WsClusterStatus {
        ring_version: version,
        ring_slots: Some(65536),
        members: crate::membership::member_statuses(&snapshot),
        ..WsClusterStatus::default()
    }
}

#[tokio::test]
async fn after_a_restart_an_unchanged_ring_is_republished_at_its_recorded_version() {
    let hub = FakeHub::new();
    let (ctx, mut server) = mock_context(hub.clone(), TestClock::new());
    let obj = WsCluster::test().with_status(steady_status(7, 3));
    let (result, applied) = run(obj, ctx, async move {
        standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: Some(3),
                sts_status: (3, 3),
                slices: vec![ready_slice(3)],
            },
        )
        .await
    })
    .await;
    result.expect("reconciled");
    assert!(applied.secret.is_none(), "an existing token is kept");
    assert_eq!(status_of(&applied).ring_version, 7);
    assert_eq!(hub.current("default/chat").map(|s| s.version), Some(7));
}

#[tokio::test]
async fn scale_up_raises_the_statefulset_and_new_pods_join_only_when_ready() {
    let hub = FakeHub::new();
    let (ctx, mut server) = mock_context(hub.clone(), TestClock::new());
    let obj = WsCluster::test()
        .with_replicas(4)
        .with_status(steady_status(3, 3));
    let mut not_ready = ready_slice(3);
    not_ready
        .endpoints
        .push(endpoint("chat-node-3", "10.0.0.13", false));
    let (result, applied) = run(obj.clone(), ctx.clone(), async move {
        let applied = standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: Some(3),
                sts_status: (4, 3),
                slices: vec![not_ready],
            },
        )
        .await;
        assert_eq!(server.event().await.1, "ScalingUp");
        (applied, server)
    })
    .await;
    result.expect("reconciled");
    let (applied, mut server) = applied;
    assert_eq!(sts_replicas(&applied), 4);
    let status = status_of(&applied);
    assert_eq!(
        status.ring_version, 3,
        "a pod that is not Ready does not change the ring"
    );
    assert_eq!(status.members.len(), 3);

    // The pod becomes Ready: a new ring version.
    let obj = obj.with_status(status);
    let (result, applied) = run(obj, ctx, async move {
        let applied = standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: Some(4),
                sts_status: (4, 4),
                slices: vec![ready_slice(4)],
            },
        )
        .await;
        assert_eq!(server.event().await.1, "RingUpdated");
        applied
    })
    .await;
    result.expect("reconciled");
    let status = status_of(&applied);
    assert_eq!(status.ring_version, 4);
    assert_eq!(status.members.len(), 4);
    assert_eq!(
        hub.current("default/chat").map(|s| s.members.len()),
        Some(4)
    );
}

#[tokio::test]
async fn scale_down_drains_before_the_statefulset_shrinks() {
    let hub = FakeHub::new();
    let clock = TestClock::new();
    let (ctx, mut server) = mock_context(hub.clone(), clock.clone());
    let obj = WsCluster::test()
        .with_replicas(2)
        .with_status(steady_status(3, 3));

    // 1. The drain starts: chat-node-2 is draining in ring 4, the StatefulSet keeps 3 pods.
    let (result, (applied, server2)) = run(obj.clone(), ctx.clone(), async move {
        let applied = standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: Some(3),
                sts_status: (3, 3),
                slices: vec![ready_slice(3)],
            },
        )
        .await;
        assert_eq!(server.event().await.1, "RingUpdated");
        assert_eq!(server.event().await.1, "DrainStarted");
        (applied, server)
    })
    .await;
    server = server2;
    assert_eq!(result.expect("reconciled"), Action::requeue(WAIT_REQUEUE));
    assert_eq!(sts_replicas(&applied), 3);
    let status = status_of(&applied);
    assert_eq!(status.ring_version, 4);
    assert_eq!(
        member_states(&status),
        [
            ("chat-node-0".to_string(), "active".to_string()),
            ("chat-node-1".to_string(), "active".to_string()),
            ("chat-node-2".to_string(), "draining".to_string())
        ]
    );
    let drain = status.drain.clone().expect("drain recorded");
    assert_eq!((drain.target_replicas, drain.ring_version), (2, 4));
    let published = hub.current("default/chat").expect("published");
    assert_eq!(published.version, 4);
    assert!(
        !published
            .member("chat-node-2")
            .expect("still listed")
            .is_active()
    );

    // 2. One proxy still runs ring 3: the pods stay, well past the timeout.
    hub.set_proxies(&[Some(4), Some(3)]);
    clock.advance(120);
    let obj = obj.with_status(status);
    let (result, (applied, server2)) = run(obj.clone(), ctx.clone(), async move {
        let applied = standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: Some(3),
                sts_status: (3, 3),
                slices: vec![ready_slice(3)],
            },
        )
        .await;
        (applied, server)
    })
    .await;
    server = server2;
    assert_eq!(result.expect("reconciled"), Action::requeue(WAIT_REQUEUE));
    assert_eq!(
        sts_replicas(&applied),
        3,
        "pods stay until every proxy applied the drain"
    );
    let status = status_of(&applied);
    assert_eq!((status.proxies, status.proxies_in_sync), (2, 1));

    // 3. Every proxy applied ring 4 and the timeout passed: the StatefulSet shrinks.
    hub.set_proxies(&[Some(4), Some(4)]);
    let obj = obj.with_status(status);
    let (result, applied) = run(obj, ctx, async move {
        let applied = standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: Some(3),
                sts_status: (3, 3),
                slices: vec![ready_slice(3)],
            },
        )
        .await;
        assert_eq!(server.event().await.1, "ScaledDown");
        applied
    })
    .await;
    result.expect("reconciled");
    assert_eq!(sts_replicas(&applied), 2);
    let status = status_of(&applied);
    assert!(status.drain.is_none());
    assert_eq!(
        status.ring_version, 4,
        "the drained pod stays draining until it is gone"
    );
}

#[tokio::test]
async fn a_deleted_statefulset_is_recreated_with_the_desired_replicas() {
    let hub = FakeHub::new();
    let (ctx, mut server) = mock_context(hub.clone(), TestClock::new());
    let obj = WsCluster::test().with_status(steady_status(5, 3));
    let (result, applied) = run(obj, ctx, async move {
        let applied = standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: None,
                sts_status: (0, 0),
                slices: vec![],
            },
        )
        .await;
        assert_eq!(server.event().await.1, "RingUpdated");
        applied
    })
    .await;
    result.expect("reconciled");
    assert_eq!(sts_replicas(&applied), 3);
    let status = status_of(&applied);
    assert_eq!(
        status.ring_version, 6,
        "members left: a new version above the recorded one"
    );
    assert!(status.members.is_empty());
}

#[tokio::test]
async fn a_missing_secret_sets_degraded_with_an_event_and_touches_nothing_else() {
    let hub = FakeHub::new();
    let (ctx, mut server) = mock_context(hub.clone(), TestClock::new());
    let obj = WsCluster::test().with_redis_secret("redis-auth", "url");
    let (result, (status, event)) = run(obj, ctx, async move {
        server
            .expect(Method::GET, &format!("{NS}/secrets/redis-auth"))
            .await
            .not_found();
        let status = server.apply_status().await;
        let event = server.event().await;
        (status, event)
    })
    .await;
    assert_eq!(result.expect("handled"), Action::requeue(DEGRADED_REQUEUE));
    assert_eq!(event, ("Warning".into(), "SecretNotFound".into()));
    let status: WsClusterStatus = serde_json::from_value(status["status"].clone()).expect("status");
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("degraded");
    assert_eq!(
        (
            degraded.status.as_str(),
            degraded.reason.as_str(),
            degraded.message.as_str()
        ),
        ("True", "SecretNotFound", "secret redis-auth does not exist")
    );
    assert!(
        hub.current("default/chat").is_none(),
        "no ring for a degraded cluster"
    );
}

#[tokio::test]
async fn a_secret_without_the_key_is_reported_by_name_and_key() {
    let (ctx, mut server) = mock_context(FakeHub::new(), TestClock::new());
    let obj = WsCluster::test().with_redis_secret("redis-auth", "url");
    let (result, status) = run(obj, ctx, async move {
        server
            .expect(Method::GET, &format!("{NS}/secrets/redis-auth"))
            .await
            .respond(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "redis-auth"}, "data": {"other": "eA=="}}),
            );
        let status = server.apply_status().await;
        server.event().await;
        status
    })
    .await;
    result.expect("handled");
    assert!(
        status
            .to_string()
            .contains("secret redis-auth has no key url"),
        "{status}"
    );
}

/// Reconciles `obj`, expecting its first request to be the status apply and its second an
/// `InvalidSpec` event (nothing read or applied before them): the status written.
async fn invalid_spec_status(obj: WsCluster) -> String {
    let (ctx, mut server) = mock_context(FakeHub::new(), TestClock::new());
    let (result, status) = run(obj, ctx, async move {
        let status = server.apply_status().await;
        assert_eq!(server.event().await.1, "InvalidSpec");
        status
    })
    .await;
    result.expect("handled");
    status.to_string()
}

#[tokio::test]
async fn an_invalid_spec_is_degraded_without_any_read() {
    let mut obj = WsCluster::test();
    obj.spec.key_sources[0].query = Some("also".into());
    let status = invalid_spec_status(obj).await;
    assert!(status.contains("keySources[0] sets 2"), "{status}");
}

#[tokio::test]
async fn a_slot_change_without_allow_remap_is_degraded_and_keeps_the_published_ring() {
    let mut obj = WsCluster::test().with_status(WsClusterStatus {
        ring_slots: Some(65536),
        ..WsClusterStatus::default()
    });
    obj.spec.ring.slots = 131072;
    let status = invalid_spec_status(obj).await;
    assert!(status.contains("ring.allowRemap: true"), "{status}");
}

#[tokio::test]
async fn an_api_failure_is_an_error_for_the_error_policy() {
    let (ctx, mut server) = mock_context(FakeHub::new(), TestClock::new());
    let obj = WsCluster::test();
    let (result, ()) = run(obj.clone(), ctx.clone(), async move {
        server
            .expect(Method::GET, &format!("{NS}/secrets/chat-ring-token"))
            .await
            .respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "etcd is sad", "reason": "InternalError", "code": 500}),
            );
    })
    .await;
    let error = result.expect_err("fails");
    assert_eq!(error.metric_label(), "KubeApi");
    assert_eq!(
        error_policy(Arc::new(obj), &error, ctx.clone()),
        Action::requeue(ERROR_REQUEUE)
    );
    assert!(ctx.metrics.encode().contains("error=\"KubeApi\"} 1"));
}

#[test]
fn slices_of_another_service_never_count() {
    let s = slice("x", vec![endpoint("chat-node-0", "10.0.0.1", true)]);
    assert_eq!(
        crate::membership::members(&[s], "other-node", "ws", 8080, 3).len(),
        0
    );
}

#[tokio::test]
async fn the_ring_of_a_deleted_cluster_is_removed_from_the_hub() {
    let hub = FakeHub::new();
    let (ctx, mut server) = mock_context(hub.clone(), TestClock::new());
    let (result, ()) = run(WsCluster::test(), ctx.clone(), async move {
        standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: Some(3),
                sts_status: (3, 3),
                slices: vec![ready_slice(3)],
            },
        )
        .await;
        server.event().await;
    })
    .await;
    result.expect("reconciled");
    assert!(hub.current("default/chat").is_some());
    let still_there = ["default/chat".to_string()].into();
    assert!(ctx.forget_departed(&still_there).is_empty());
    assert_eq!(ctx.forget_departed(&Default::default()), ["default/chat"]);
    assert!(hub.current("default/chat").is_none());
}

/// The status after a drain to 2 started in ring 4 at the test clock's start.
fn draining_status() -> WsClusterStatus {
    let mut status = steady_status(4, 3);
    status.members[2].state = crate::crd::MemberStateStatus::Draining;
    status.drain = Some(crate::crd::DrainStatus {
        target_replicas: 2,
        since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(TestClock::new().now()),
        ring_version: 4,
    });
    status
}

#[tokio::test]
async fn a_drain_ends_before_its_timeout_once_the_leaving_node_is_empty() {
    let hub = FakeHub::new();
    hub.set_proxies(&[Some(4), Some(4)]);
    let clock = TestClock::new();
    clock.advance(5);
    let probe = Arc::new(crate::fixtures::FakeProbe::default());
    let (ctx, mut server) =
        crate::fixtures::mock_context_with(hub.clone(), clock.clone(), probe.clone());
    let obj = WsCluster::test()
        .with_replicas(2)
        .with_status(draining_status());
    let observed = || Observed {
        token_exists: true,
        sts: Some(3),
        sts_status: (3, 3),
        slices: vec![ready_slice(3)],
    };

    // chat-node-2 still holds sessions: wait for the rest of the 30 s timeout.
    probe.set("10.0.0.12:8080", 3);
    let (result, (applied, server2)) = run(obj.clone(), ctx.clone(), async move {
        let applied = standard(&mut server, observed()).await;
        (applied, server)
    })
    .await;
    server = server2;
    assert_eq!(result.expect("reconciled"), Action::requeue(DRAIN_POLL));
    assert_eq!(sts_replicas(&applied), 3);

    // It is empty now: the StatefulSet shrinks at once.
    probe.set("10.0.0.12:8080", 0);
    let (result, applied) = run(obj, ctx, async move {
        let applied = standard(&mut server, observed()).await;
        assert_eq!(server.event().await.1, "ScaledDown");
        applied
    })
    .await;
    result.expect("reconciled");
    assert_eq!(sts_replicas(&applied), 2);
    assert!(status_of(&applied).drain.is_none());
}

#[tokio::test]
async fn a_proxy_that_never_acks_cannot_hold_a_drain_forever() {
    let hub = FakeHub::new();
    hub.set_proxies(&[Some(4), Some(3)]);
    let clock = TestClock::new();
    clock.advance(30 + crate::scaling::ACK_WAIT_LIMIT_SECONDS);
    let (ctx, mut server) = mock_context(hub, clock);
    let obj = WsCluster::test()
        .with_replicas(2)
        .with_status(draining_status());
    let (result, applied) = run(obj, ctx, async move {
        let applied = standard(
            &mut server,
            Observed {
                token_exists: true,
                sts: Some(3),
                sts_status: (3, 3),
                slices: vec![ready_slice(3)],
            },
        )
        .await;
        assert_eq!(
            server.event().await,
            ("Warning".into(), "DrainForced".into())
        );
        applied
    })
    .await;
    result.expect("reconciled");
    assert_eq!(sts_replicas(&applied), 2);
}

#[tokio::test]
async fn a_degraded_cluster_keeps_serving_its_recorded_ring_after_a_restart() {
    let hub = FakeHub::new();
    let (ctx, mut server) = mock_context(hub.clone(), TestClock::new());
    let obj = WsCluster::test()
        .with_redis_secret("redis-auth", "url")
        .with_status(steady_status(5, 3));
    let (result, status) = run(obj, ctx, async move {
        server
            .expect(Method::GET, &format!("{NS}/secrets/redis-auth"))
            .await
            .not_found();
        server
            .expect(Method::GET, &format!("{NS}/secrets/chat-ring-token"))
            .await
            .respond(StatusCode::OK, &secret_with_token());
        let status = server.apply_status().await;
        assert_eq!(server.event().await.1, "SecretNotFound");
        status
    })
    .await;
    assert_eq!(result.expect("handled"), Action::requeue(DEGRADED_REQUEUE));
    assert_eq!(status["status"]["ringVersion"], 5);
    let served = hub
        .current("default/chat")
        .expect("the recorded ring is served");
    assert_eq!((served.version, served.members.len()), (5, 3));
}

#[tokio::test]
async fn reconcile_is_idempotent_and_applies_complete_typed_objects() {
    let hub = FakeHub::new();
    let (ctx, mut server) = mock_context(hub, TestClock::new());
    let observed = || Observed {
        token_exists: true,
        sts: Some(3),
        sts_status: (3, 3),
        slices: vec![ready_slice(3)],
    };
    let obj = WsCluster::test().with_status(steady_status(2, 3));
    let (result, (first, server2)) = run(obj.clone(), ctx.clone(), async move {
        let applied = standard(&mut server, observed()).await;
        (applied, server)
    })
    .await;
    server = server2;
    result.expect("reconciled");
    let obj = obj.with_status(status_of(&first));
    let (result, second) = run(
        obj,
        ctx,
        async move { standard(&mut server, observed()).await },
    )
    .await;
    result.expect("reconciled");
    assert_eq!(first.statefulset, second.statefulset);
    assert_eq!(first.deployment, second.deployment);
    assert_eq!(
        first.status, second.status,
        "a settled cluster's status does not churn"
    );
    for (object, kind) in [
        (&first.statefulset, "StatefulSet"),
        (&first.deployment, "Deployment"),
    ] {
        assert_eq!(object["apiVersion"], "apps/v1");
        assert_eq!(object["kind"], kind);
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "wscluster"
        );
    }
}

#[tokio::test]
async fn a_partly_filled_generated_secret_keeps_its_values_and_gets_only_the_missing_ones() {
    let (ctx, mut server) = mock_context(FakeHub::new(), TestClock::new());
    let obj = WsCluster::test();
    let cluster = ClusterRef::of(&obj).expect("ref");
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), "default");
    let b64 = |v: &str| {
        serde_json::to_value(k8s_openapi::ByteString(v.as_bytes().to_vec())).expect("base64")
    };
    let (values, applied) = tokio::time::timeout(SCENARIO_TIMEOUT, async {
        tokio::join!(
            ensure_generated(&ctx, &secrets, &obj, &cluster, Generated::RingTokens),
            async {
                let path = format!("{NS}/secrets/chat-ring-token");
                server.expect(Method::GET, &path).await.respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "chat-ring-token", "namespace": "default"},
                            "data": {"proxy": b64("rotated-by-hand"), "node": b64("  \n")}}),
                );
                server.apply(&path).await
            }
        )
    })
    .await
    .expect("in time");
    let values = values.expect("ensured");
    assert_eq!(
        values["proxy"], "rotated-by-hand",
        "an existing value is kept"
    );
    assert_eq!(
        values["node"], "test-chat-ring-token/node",
        "a blank one is generated"
    );
    assert_eq!(
        applied["data"],
        json!({"proxy": b64("rotated-by-hand"), "node": b64("test-chat-ring-token/node")})
    );
}
