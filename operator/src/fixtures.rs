//! Test fixtures: `WsCluster` builders, EndpointSlice builders and (in `controller` tests) the
//! API server mock.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::{ConnectionSpec, SecretKeyRef, WsCluster, WsClusterSpec, WsClusterStatus};
use crate::resources::labels;

/// Builders for test clusters.
pub trait WsClusterExt: Sized {
    /// `default/chat` with uid, generation 1 and the default spec.
    fn test() -> Self;
    /// With `spec.replicas`.
    fn with_replicas(self, replicas: i32) -> Self;
    /// With Redis from a Secret.
    fn with_redis_secret(self, name: &str, key: &str) -> Self;
    /// With an inline AMQP URL.
    fn with_amqp_url(self, url: &str) -> Self;
    /// With a status.
    fn with_status(self, status: WsClusterStatus) -> Self;
}

impl WsClusterExt for WsCluster {
    fn test() -> Self {
        let mut c = WsCluster::new("chat", WsClusterSpec::default());
        c.metadata.namespace = Some("default".into());
        c.metadata.uid = Some("8c1e4a9e-0000-4000-8000-000000000001".into());
        c.metadata.generation = Some(1);
        c
    }

    fn with_replicas(mut self, replicas: i32) -> Self {
        self.spec.replicas = replicas;
        self
    }

    fn with_redis_secret(mut self, name: &str, key: &str) -> Self {
        self.spec.redis = Some(ConnectionSpec {
            cluster: false,
            url: None,
            secret_ref: Some(SecretKeyRef {
                name: name.into(),
                key: key.into(),
            }),
            ca_secret_ref: None,
        });
        self
    }

    fn with_amqp_url(mut self, url: &str) -> Self {
        self.spec.rabbitmq = Some(ConnectionSpec {
            cluster: false,
            url: Some(url.into()),
            secret_ref: None,
            ca_secret_ref: None,
        });
        self
    }

    fn with_status(mut self, status: WsClusterStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// One endpoint of pod `pod` at `ip`, ready or not.
pub fn endpoint(pod: &str, ip: &str, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(pod.into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

/// An IPv4 EndpointSlice of Service `chat-node` with port `ws` 8080.
pub fn slice(name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some([(labels::SERVICE_NAME.to_string(), "chat-node".to_string())].into()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("ws".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

/// `n` ready pods `chat-node-0..n` at `10.0.0.<i+10>`, in one slice.
pub fn ready_slice(n: usize) -> EndpointSlice {
    slice(
        "chat-node-abc",
        (0..n)
            .map(|i| {
                endpoint(
                    &format!("chat-node-{i}"),
                    &format!("10.0.0.{}", i + 10),
                    true,
                )
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// The API server mock, in the style of kube-rs/controller-rs `src/fixtures.rs`: reconcile runs
// against a `kube::Client` whose service is a `tower_test` mock, and a scenario answers each
// request after asserting its method, path and (where it matters) body.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tower_test::mock;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring::{RingError, RingSnapshot};
use wscluster_ring_stream::{KindTokens, RingHub, SubscriberInfo};

use crate::controller::{Context, RingAuthority};
use std::collections::BTreeMap;

use crate::metrics::Metrics;
use crate::probe::{ConnectionProbe, CountFuture};
use crate::rbac;
use crate::resources::Settings;

/// How long a scenario waits for the next request before failing.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A ring hub whose proxy acknowledgements the test sets.
pub struct FakeHub {
    /// The real hub for tokens and snapshots.
    hub: Arc<RingHub>,
    /// The subscribers the controller sees.
    proxies: Mutex<Vec<SubscriberInfo>>,
}

impl FakeHub {
    /// A hub with no subscribers.
    pub fn new() -> Arc<FakeHub> {
        Arc::new(FakeHub {
            hub: RingHub::new(),
            proxies: Mutex::new(Vec::new()),
        })
    }

    /// Connected proxies with these applied versions.
    pub fn set_proxies(&self, applied: &[Option<u64>]) {
        *self.proxies.lock().unwrap_or_else(PoisonError::into_inner) = applied
            .iter()
            .enumerate()
            .map(|(i, v)| SubscriberInfo {
                id: format!("chat-proxy-{i}"),
                kind: SubscriberKind::Proxy,
                applied_version: *v,
                connected: true,
            })
            .collect();
    }
}

impl RingAuthority for FakeHub {
    fn set_tokens(&self, cluster_id: &str, tokens: KindTokens) {
        self.hub.set_tokens(cluster_id, tokens);
    }
    fn current(&self, cluster_id: &str) -> Option<Arc<RingSnapshot>> {
        self.hub.current(cluster_id)
    }
    fn publish(&self, snapshot: RingSnapshot) -> Result<(), RingError> {
        self.hub.publish(snapshot)
    }
    fn remove_cluster(&self, cluster_id: &str) {
        self.hub.remove_cluster(cluster_id);
    }
    fn subscribers(&self, _cluster_id: &str) -> Vec<SubscriberInfo> {
        self.proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The proxies' ring token of the Secret tests serve as existing.
pub const TEST_TOKEN: &str = "test-token";
/// The nodes' ring token of that Secret.
pub const TEST_NODE_TOKEN: &str = "test-node-token";

/// The value tests generate for a Secret key: `test-<secret>/<key>`, so each key differs.
pub fn test_token(purpose: &str) -> String {
    format!("test-{purpose}")
}

/// A clock the test moves.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<i64>>);

impl TestClock {
    /// At a fixed second.
    pub fn new() -> TestClock {
        TestClock(Arc::new(Mutex::new(1_800_000_000)))
    }
    /// Moves forward.
    pub fn advance(&self, seconds: i64) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += seconds;
    }
    /// Now.
    pub fn now(&self) -> Timestamp {
        let s = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }
}

/// The server side of the mock.
pub struct ApiServer {
    handle: mock::Handle<Request<Body>, Response<Body>>,
}

/// A context over a mock client, plus the mock's server side.
pub fn mock_context(hub: Arc<FakeHub>, clock: TestClock) -> (Arc<Context>, ApiServer) {
    mock_context_with(hub, clock, Arc::new(FakeProbe::default()))
}

/// Session counts by member address, as the test sets them; unknown addresses are unknown.
#[derive(Default)]
pub struct FakeProbe(Mutex<BTreeMap<String, u64>>);

impl FakeProbe {
    /// Sets the count of an address.
    pub fn set(&self, address: &str, sessions: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address.into(), sessions);
    }
}

impl ConnectionProbe for FakeProbe {
    fn sessions<'a>(&'a self, address: &'a str) -> CountFuture<'a> {
        let count = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(address)
            .copied();
        Box::pin(async move { count })
    }
}

/// A context over a mock client with any ring authority (a real `RingHub` in the ring stream
/// tests).
pub fn mock_context_with(
    hub: Arc<dyn RingAuthority>,
    clock: TestClock,
    probe: Arc<dyn ConnectionProbe>,
) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "wscluster-operator".into(),
                instance: None,
            },
        ),
        client,
        ring: hub,
        settings: Settings {
            ring_url: "http://wscluster-operator.wscluster-system.svc:7400".into(),
            operator_namespace: "wscluster-system".into(),
        },
        metrics: Arc::new(Metrics::default()),
        clock: Arc::new(move || clock.now()),
        new_token: test_token,
        probe: probe.clone(),
        known: Mutex::default(),
    };
    (Arc::new(ctx), ApiServer { handle })
}

/// The RBAC `(group, resource, verb)` of a request, from its method and path.
pub fn rbac_of(method: &Method, path: &str, query: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_string(), rest),
        _ => panic!("unexpected path {path}"),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_string(), false),
        [resource, _name] => ((*resource).to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => panic!("unexpected path {path}"),
    };
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    (group, resource, verb.to_string())
}

/// A request the scenario received, and how to answer it.
pub struct Received {
    /// Its JSON body (`Null` when empty).
    pub body: Value,
    /// Its query string.
    pub query: String,
    send: mock::SendResponse<Response<Body>>,
}

impl Received {
    /// Answers with `status` and a JSON body.
    pub fn respond(self, status: StatusCode, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        self.send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(bytes))
                .expect("response"),
        );
    }

    /// Answers 200 with the request's own body (what an apply returns, near enough).
    pub fn echo(self) -> Value {
        let body = self.body.clone();
        self.respond(StatusCode::OK, &body);
        body
    }

    /// Answers 404 NotFound.
    pub fn not_found(self) {
        self.respond(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "not found", "reason": "NotFound", "code": 404}),
        );
    }
}

impl ApiServer {
    /// Waits for the next request, asserts its method and path, and that the operator's RBAC
    /// table allows it. Server-side applies must use the operator's field manager and force.
    pub async fn expect(&mut self, method: Method, path: &str) -> Received {
        let (request, send) = tokio::time::timeout(REQUEST_TIMEOUT, self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("client gone before {method} {path}"));
        let query = request.uri().query().unwrap_or("").to_string();
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, path),
            "unexpected request (query {query})"
        );
        let (group, resource, verb) = rbac_of(request.method(), request.uri().path(), &query);
        assert!(
            rbac::allows(&group, &resource, &verb),
            "RBAC table does not allow {verb} {resource} in group {group:?}"
        );
        if method == Method::PATCH {
            assert!(query.contains("fieldManager=wscluster-operator"), "{query}");
            assert!(query.contains("force=true"), "{query}");
        }
        let bytes = request
            .into_body()
            .collect()
            .await
            .expect("request body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        Received { body, query, send }
    }

    /// Expects an apply (PATCH) of `path` and echoes it.
    pub async fn apply(&mut self, path: &str) -> Value {
        self.expect(Method::PATCH, path).await.echo()
    }

    /// Expects the status apply of `default/chat`, answers with the whole object, and returns
    /// the applied body.
    pub async fn apply_status(&mut self) -> Value {
        let r = self
            .expect(
                Method::PATCH,
                "/apis/wscluster.io/v1alpha1/namespaces/default/wsclusters/chat/status",
            )
            .await;
        let body = r.body.clone();
        assert_eq!(body["metadata"]["name"], "chat");
        let answer = json!({"apiVersion": "wscluster.io/v1alpha1", "kind": "WsCluster",
                            "metadata": {"name": "chat", "namespace": "default"},
                            "spec": {}, "status": body["status"]});
        r.respond(StatusCode::OK, &answer);
        body
    }

    /// Expects an Event and returns its reason after answering.
    pub async fn event(&mut self) -> (String, String) {
        let r = self
            .expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/default/events",
            )
            .await;
        let reason = r.body["reason"].as_str().unwrap_or_default().to_string();
        let type_ = r.body["type"].as_str().unwrap_or_default().to_string();
        r.echo();
        (type_, reason)
    }
}
