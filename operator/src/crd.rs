//! The `WsCluster` custom resource (`wscluster.io/v1alpha1`), generated into a CRD with schemars.
//!
//! Everything here is data: the spec a user writes, the status the operator reports, their
//! defaults and the schema rules the API server enforces (ranges, enums, and CEL
//! `x-kubernetes-validations` for rules across fields). Every field of the spec has a default,
//! so this is a complete cluster:
//!
//! ```yaml
//! apiVersion: wscluster.io/v1alpha1
//! kind: WsCluster
//! metadata:
//!   name: chat
//! spec: {}
//! ```
//!
//! Rules the schema cannot check (a referenced Secret exists, an env var does not shadow one the
//! operator sets) are checked by [`crate::validate`] during reconciliation and reported as a
//! `Degraded` condition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use wscluster_proxy::config::{
    DEFAULT_JWT_CLAIM, DEFAULT_JWT_LEEWAY_SECONDS, DEFAULT_TOKEN_QUERY_PARAM, JwtSpec,
    MAX_JWT_LEEWAY_SECONDS, MAX_KEY_SOURCE_NAME_CHARS,
};
pub use wscluster_proxy::config::{JwtAlgorithm, KeySourceMap, Limits, ResetConfig, TokenFrom};

/// Default node image.
pub const DEFAULT_NODE_IMAGE: &str = "ghcr.io/wscluster/wscluster-node:0.1.0";
/// Default proxy image.
pub const DEFAULT_PROXY_IMAGE: &str = "ghcr.io/wscluster/wscluster-proxy:0.1.0";
/// Largest `spec.replicas` and `spec.proxy.replicas` accepted: far above any cluster we have
/// measured, and it bounds the size of the status member list.
pub const MAX_REPLICAS: i32 = 1000;

/// The spec of a `WsCluster`: a ring of WebSocket nodes behind key-routing proxies.
// clippy reads the repeated `type_ = …` of the printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "wscluster.io",
    version = "v1alpha1",
    kind = "WsCluster",
    plural = "wsclusters",
    shortname = "wsc",
    namespaced,
    status = "WsClusterStatus",
    derive = "PartialEq",
    doc = "A cluster of stateful WebSocket nodes behind proxies that route each client to the node owning its key on a consistent-hash ring.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired node replicas"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready node replicas"
    ),
    printcolumn(
        name = "Ring",
        type_ = "integer",
        json_path = ".status.ringVersion",
        description = "Version of the ring the operator publishes"
    ),
    printcolumn(
        name = "InSync",
        type_ = "integer",
        json_path = ".status.proxiesInSync",
        description = "Connected proxies that applied the published ring"
    ),
    printcolumn(
        name = "Proxies",
        type_ = "integer",
        json_path = ".status.proxies",
        description = "Proxies connected to the ring stream"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.redis) || !has(self.redis.url) || (has(self.redis.cluster) && self.redis.cluster) || self.redis.url.startsWith('redis://') || self.redis.url.startsWith('rediss://')",
        "message": "redis.url must start with redis:// or rediss://"
    },
    {
        "rule": "!has(self.redis) || !has(self.redis.url) || !has(self.redis.cluster) || !self.redis.cluster || self.redis.url.matches('^redis://[^,]+(,redis://[^,]+)*$') || self.redis.url.matches('^rediss://[^,]+(,rediss://[^,]+)*$')",
        "message": "with redis.cluster, redis.url must be comma-separated seed URLs, all redis:// or all rediss://"
    },
    {
        "rule": "!has(self.rabbitmq) || !has(self.rabbitmq.cluster) || !self.rabbitmq.cluster",
        "message": "cluster is for redis only"
    },
    {
        "rule": "!has(self.rabbitmq) || !has(self.rabbitmq.url) || self.rabbitmq.url.startsWith('amqp://') || self.rabbitmq.url.startsWith('amqps://')",
        "message": "rabbitmq.url must start with amqp:// or amqps://"
    },
    {
        "rule": "!has(self.keySources) || self.keySources.filter(s, has(s.jwt)).size() <= 1",
        "message": "at most one keySource may be a jwt source"
    }
]))]
pub struct WsClusterSpec {
    /// Number of WebSocket nodes (StatefulSet replicas). Scale-down is ordered: the highest
    /// ordinals drain first.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// The node pods.
    #[serde(default)]
    pub node: NodeSpec,
    /// The proxy pods and their client-facing Service.
    #[serde(default)]
    pub proxy: ProxySpec,
    /// Where the proxies find a connection's business key, tried in order; the first that yields
    /// a key wins. Rendered 1:1 into the proxy's `proxy.yaml` (`keySources`).
    #[serde(default = "default_key_sources")]
    #[schemars(length(min = 1, max = 8))]
    pub key_sources: Vec<KeySource>,
    /// Pacing of client resets when the ring changes, per proxy. Rendered 1:1 into
    /// `proxy.yaml` (`resets`).
    #[serde(default)]
    pub resets: ResetConfig,
    /// How long draining nodes keep their pods after every proxy applied the ring that drains
    /// them, so their clients can be reset and reconnect elsewhere.
    #[serde(default = "default_drain_timeout_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_seconds: i32,
    /// Ring algorithm parameters.
    #[serde(default)]
    pub ring: RingSpec,
    /// Redis for presence and mailboxes; without it nodes keep them in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<ConnectionSpec>,
    /// RabbitMQ for broadcasts and reset events; without it nodes use an in-memory bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq: Option<ConnectionSpec>,
    /// What the nodes serve beyond WebSocket sessions and the server API. Everything here is
    /// off by default: each opens a way for clients to send.
    #[serde(default)]
    pub server: ServerSpec,
    /// How many live sessions one key may hold on its node, and what happens to one more.
    #[serde(default)]
    pub sessions: SessionsSpec,
    /// Log line format of the node and proxy pods (`--log-format`): `json` for log
    /// collectors, `text` for people.
    #[serde(default)]
    pub log_format: LogFormat,
}

/// The log line format of node and proxy pods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

impl LogFormat {
    /// The `--log-format` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

/// Node features that let clients send, each off unless asked for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Serve the seed-compatible `GET /send?userId=…&message=…` on the public port. Anyone who
    /// reaches the port can then send to any user: keep it off outside trusted networks and
    /// use the server API (API keys) instead.
    #[serde(default)]
    pub legacy_send: bool,
    /// Let authenticated clients publish to other users over their own socket.
    #[serde(default)]
    pub chat: bool,
}

/// The per-key session cap on a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionsSpec {
    /// Most live sessions per key on its owner; unset keeps the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub per_key: Option<i32>,
    /// What a session over the cap does: `refuse` it, or `replace-oldest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SessionPolicy>,
}

/// What a session over the per-key cap does (the node's `--session-policy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SessionPolicy {
    /// The new session is refused.
    Refuse,
    /// The oldest session of the key is closed to make room.
    ReplaceOldest,
}

impl SessionPolicy {
    /// The node flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionPolicy::Refuse => "refuse",
            SessionPolicy::ReplaceOldest => "replace-oldest",
        }
    }
}

/// Largest `node.maxHttpConnections` and `node.maxInflightSends`: far above what one pod can
/// serve, so only a typo is refused.
pub const MAX_NODE_LIMIT: i32 = 1_000_000;

fn default_replicas() -> i32 {
    3
}

fn default_drain_timeout_seconds() -> i32 {
    30
}

fn default_key_sources() -> Vec<KeySource> {
    vec![
        KeySource {
            path: Some("/connect/{key}".into()),
            ..KeySource::default()
        },
        KeySource {
            query: Some("userId".into()),
            ..KeySource::default()
        },
    ]
}

impl Default for WsClusterSpec {
    fn default() -> Self {
        WsClusterSpec {
            replicas: default_replicas(),
            node: NodeSpec::default(),
            proxy: ProxySpec::default(),
            key_sources: default_key_sources(),
            resets: ResetConfig::default(),
            drain_timeout_seconds: default_drain_timeout_seconds(),
            ring: RingSpec::default(),
            redis: None,
            rabbitmq: None,
            server: ServerSpec::default(),
            sessions: SessionsSpec::default(),
            log_format: LogFormat::default(),
        }
    }
}

/// When the kubelet pulls an image.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the image is not on the node.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The WebSocket node pods (any WebSocket server; the reference one is `wscluster-node`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// Container image.
    #[serde(default = "default_node_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Image pull policy.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// The port the node serves WebSocket and HTTP on (also its ring address port).
    #[serde(default = "default_node_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path of the readiness probe; a node joins the ring only while it is Ready.
    #[serde(default = "default_readiness_path")]
    #[schemars(regex(pattern = "^/"), length(max = 256))]
    pub readiness_path: String,
    /// HTTP path of the liveness probe.
    #[serde(default = "default_liveness_path")]
    #[schemars(regex(pattern = "^/"), length(max = 256))]
    pub liveness_path: String,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment (node flags read `WSCLUSTER_*`, e.g. `WSCLUSTER_MAILBOX_MAX_LEN`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// Most concurrent HTTP connections per node; unset keeps the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_http_connections: Option<i32>,
    /// Most sends being stored and delivered at once per node (more get 503); unset keeps the
    /// node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_inflight_sends: Option<i32>,
    /// The service account node pods run as (their API token is still not mounted: mount a
    /// `projected` token volume through `pod.volumes` if the app needs one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub service_account_name: Option<String>,
    /// What the user sets on the node pods: scheduling, metadata, volumes, command, probe
    /// timings (docs/operator.md, "Pod templates").
    #[serde(default)]
    pub pod: PodTemplate,
}

fn default_node_image() -> String {
    DEFAULT_NODE_IMAGE.into()
}

fn default_node_port() -> i32 {
    8080
}

fn default_readiness_path() -> String {
    "/readyz".into()
}

fn default_liveness_path() -> String {
    "/healthz".into()
}

impl Default for NodeSpec {
    fn default() -> Self {
        NodeSpec {
            image: default_node_image(),
            image_pull_policy: PullPolicy::default(),
            port: default_node_port(),
            readiness_path: default_readiness_path(),
            liveness_path: default_liveness_path(),
            resources: None,
            env: Vec::new(),
            max_http_connections: None,
            max_inflight_sends: None,
            service_account_name: None,
            pod: PodTemplate::default(),
        }
    }
}

/// How the proxies' Service is exposed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    /// Inside the cluster only.
    #[default]
    ClusterIP,
    /// On a port of every node.
    NodePort,
    /// Through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The proxy pods and their Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.nodePort) || self.serviceType != 'ClusterIP'",
        "message": "nodePort needs serviceType NodePort or LoadBalancer"
    },
    {
        "rule": "!has(self.loadBalancerSourceRanges) || self.serviceType == 'LoadBalancer'",
        "message": "loadBalancerSourceRanges needs serviceType LoadBalancer"
    },
    {
        "rule": "!has(self.externalTrafficPolicy) || self.serviceType != 'ClusterIP'",
        "message": "externalTrafficPolicy needs serviceType NodePort or LoadBalancer"
    },
    {
        "rule": "!has(self.ipFamilies) || size(self.ipFamilies) < 2 || (self.ipFamilies[0] != self.ipFamilies[1] && has(self.ipFamilyPolicy) && self.ipFamilyPolicy != 'SingleStack')",
        "message": "two ipFamilies must differ and need ipFamilyPolicy PreferDualStack or RequireDualStack"
    },
    {
        "rule": "!has(self.tls) || self.tls.port != self.servicePort",
        "message": "tls.port must differ from servicePort"
    }
]))]
pub struct ProxySpec {
    /// Number of proxy pods (a Deployment).
    #[serde(default = "default_proxy_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Container image.
    #[serde(default = "default_proxy_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Image pull policy.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Type of the client-facing Service.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Port of the client-facing Service (forwarded to the proxy's port 8080).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub service_port: i32,
    /// Fixed node port for `NodePort` and `LoadBalancer` Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// Resource limits of each proxy. Rendered 1:1 into `proxy.yaml` (`limits`).
    #[serde(default)]
    pub limits: Limits,
    /// Origins (`https://app.example.com`) a browser's WebSocket upgrade may come from; an
    /// upgrade with another `Origin` gets 403. Required with a cookie key source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_origins: Vec<String>,
    /// TLS termination at the proxy (`wss://`): a second listener beside the plain one, with
    /// the certificate from a `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ProxyTls>,
    /// Annotations of the client-facing Service (cloud load balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub service_annotations: BTreeMap<String, String>,
    /// CIDRs allowed to reach a `LoadBalancer` Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    pub load_balancer_source_ranges: Vec<String>,
    /// `Local` keeps the client's source address (and sends only to nodes with a proxy pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// IP families of the client Service, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub ip_families: Vec<IpFamily>,
    /// Single or dual stack for the client Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family_policy: Option<IpFamilyPolicy>,
    /// What the user sets on the proxy pods (docs/operator.md, "Pod templates").
    #[serde(default)]
    pub pod: PodTemplate,
}

/// Drops the descriptions inside an embedded Kubernetes type's schema, keeping the field's
/// own: the CRD carries `Volume`, `Affinity` and their kin twice (nodes and proxies), and
/// with every upstream description it would pass the 256 KiB that `kubectl apply` can store
/// in its annotation. `kubectl explain` on a Pod still documents those fields.
fn nested_descriptions_removed(schema: &mut schemars::Schema) {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("description");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        map.iter_mut()
            .filter(|(k, _)| k.as_str() != "description")
            .for_each(|(_, v)| strip(v));
    }
}

/// TLS at the proxy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTls {
    /// The `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`; cert-manager writes one), mounted
    /// whole at `/etc/wscluster/tls` so a renewed certificate reaches the running proxy.
    pub secret_ref: SecretRef,
    /// Port of the client Service for `wss://` (to the proxy's TLS port 8443).
    #[serde(default = "default_tls_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Further `kubernetes.io/tls` Secrets chosen by SNI: a client asking for a DNS name in one
    /// of their certificates (`*.example.com` covers one label) gets that certificate, others
    /// the default `secretRef`. Mounted like it, so renewals reach the running proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub sni_secret_refs: Vec<SecretRef>,
}

fn default_tls_port() -> i32 {
    8443
}

/// A Secret in the cluster's namespace, used whole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(
        regex(pattern = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
}

/// A Service's `externalTrafficPolicy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TrafficPolicy {
    /// Any node forwards to any proxy (the client address is lost).
    Cluster,
    /// Only nodes with a proxy pod take traffic, keeping the client address.
    Local,
}

impl TrafficPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

/// An IP family of a Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum IpFamily {
    /// IPv4.
    IPv4,
    /// IPv6.
    IPv6,
}

impl IpFamily {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        }
    }
}

/// A Service's `ipFamilyPolicy`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum IpFamilyPolicy {
    /// One family.
    SingleStack,
    /// Both where the cluster has both.
    PreferDualStack,
    /// Both, or the Service is refused.
    RequireDualStack,
}

impl IpFamilyPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamilyPolicy::SingleStack => "SingleStack",
            IpFamilyPolicy::PreferDualStack => "PreferDualStack",
            IpFamilyPolicy::RequireDualStack => "RequireDualStack",
        }
    }
}

/// The kubelet's timings of one probe; unset fields keep the operator's values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTimings {
    /// Seconds before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Failures in a row that count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: Option<i32>,
}

/// Volume names the operator uses in node and proxy pods; a user volume may not take one.
/// The CEL rule on [`PodTemplate`] lists the same names (a unit test checks they agree).
pub const OPERATOR_VOLUMES: &[&str] = &[
    "ring-token",
    "proxy-secret",
    "api-keys",
    "config",
    "jwt-key",
    "tls",
    "tls-sni",
    "redis-ca",
    "amqp-ca",
    "ring",
];

/// Directories the operator mounts under; a user volume may not be mounted inside them.
pub const OPERATOR_MOUNT_ROOTS: &[&str] = &["/etc/wscluster", "/var/run/wscluster"];

/// The labels the operator sets on its pods (selector and recommended labels); a user label
/// may not take one, so a pod template can never change a selector.
pub const OPERATOR_LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
];

/// What a user sets on the node or proxy pods. Everything is added to what the operator
/// renders; the operator keeps its labels, environment, volumes, mount directories and
/// security context (docs/operator.md, "Pod templates").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.labels) || self.labels.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/part-of', 'app.kubernetes.io/managed-by']))",
        "message": "pod.labels must not set an app.kubernetes.io label the operator sets (name, instance, component, part-of, managed-by)"
    },
    {
        "rule": "!has(self.annotations) || !('wscluster.io/config-hash' in self.annotations)",
        "message": "pod.annotations must not set wscluster.io/config-hash"
    },
    {
        "rule": "!has(self.volumes) || self.volumes.all(v, !(v.name in ['ring-token', 'proxy-secret', 'api-keys', 'config', 'jwt-key', 'tls', 'tls-sni', 'redis-ca', 'amqp-ca', 'ring']))",
        "message": "pod.volumes must not use a volume name the operator uses (ring-token, proxy-secret, api-keys, config, jwt-key, tls, tls-sni, redis-ca, amqp-ca, ring)"
    },
    {
        "rule": "!has(self.volumeMounts) || self.volumeMounts.all(m, !(m.mountPath == '/etc/wscluster' || m.mountPath.startsWith('/etc/wscluster/') || m.mountPath == '/var/run/wscluster' || m.mountPath.startsWith('/var/run/wscluster/')))",
        "message": "pod.volumeMounts must not mount inside /etc/wscluster or /var/run/wscluster"
    },
    {
        "rule": "!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && self.volumes.exists(v, v.name == m.name))",
        "message": "every pod.volumeMounts[].name must name an entry of pod.volumes"
    }
]))]
pub struct PodTemplate {
    /// Extra pod labels (never the operator's own `app.kubernetes.io` labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
    /// The pod's `nodeSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: BTreeMap<String, String>,
    /// The pod's `affinity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = nested_descriptions_removed)]
    pub affinity: Option<Affinity>,
    /// The pod's `tolerations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(transform = nested_descriptions_removed)]
    pub tolerations: Vec<Toleration>,
    /// Replaces the default spread (one pod per host and zone where possible,
    /// `ScheduleAnyway`) when given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(transform = nested_descriptions_removed)]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// The pod's `priorityClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(transform = nested_descriptions_removed)]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Environment from ConfigMaps and Secrets; the operator's own variables win over these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(transform = nested_descriptions_removed)]
    pub env_from: Vec<EnvFromSource>,
    /// Extra volumes (names must differ from the operator's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(transform = nested_descriptions_removed)]
    pub volumes: Vec<Volume>,
    /// Where the container mounts the extra volumes (outside the operator's directories).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(transform = nested_descriptions_removed)]
    pub volume_mounts: Vec<VolumeMount>,
    /// The container's command (replaces the image's entrypoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub command: Vec<String>,
    /// The container's arguments. The operator passes its settings as environment variables,
    /// so these never replace them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub args: Vec<String>,
    /// Adds a startup probe on the liveness path with these timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<ProbeTimings>,
    /// Timings of the readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<ProbeTimings>,
    /// Timings of the liveness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<ProbeTimings>,
}

fn default_proxy_replicas() -> i32 {
    2
}

fn default_proxy_image() -> String {
    DEFAULT_PROXY_IMAGE.into()
}

fn default_service_port() -> i32 {
    80
}

impl Default for ProxySpec {
    fn default() -> Self {
        ProxySpec {
            replicas: default_proxy_replicas(),
            image: default_proxy_image(),
            image_pull_policy: PullPolicy::default(),
            service_type: ServiceType::default(),
            service_port: default_service_port(),
            node_port: None,
            resources: None,
            env: Vec::new(),
            limits: Limits::default(),
            allowed_origins: Vec::new(),
            tls: None,
            service_annotations: BTreeMap::new(),
            load_balancer_source_ranges: Vec::new(),
            external_traffic_policy: None,
            ip_families: Vec::new(),
            ip_family_policy: None,
            pod: PodTemplate::default(),
        }
    }
}

/// One place to find the business key: the proxy's own `keySources` entry (its shape, its
/// schema and its CEL rules), except that a jwt source names a Secret ([`JwtSource`]) where
/// the proxy reads a file.
pub type KeySource = KeySourceMap<JwtSource>;

/// The key is a claim of a verified JWT: the proxy's jwt source with the key in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtSource {
    /// The claim holding the key.
    #[serde(default = "default_claim")]
    #[schemars(length(min = 1, max = MAX_KEY_SOURCE_NAME_CHARS))]
    pub claim: String,
    /// The signature algorithm.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// The Secret key holding the HS256 secret or the PEM public key; mounted into the proxy at
    /// `/etc/wscluster/jwt/key`.
    pub secret_ref: SecretKeyRef,
    /// Where the token is read.
    #[serde(default)]
    pub from: TokenFrom,
    /// The query parameter for `from: query`.
    #[serde(default = "default_query_param")]
    #[schemars(length(min = 1, max = MAX_KEY_SOURCE_NAME_CHARS))]
    pub query_param: String,
    /// The audience a token must name in `aud`; unset, `aud` is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// The issuer a token must name in `iss`; unset, `iss` is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    #[schemars(range(max = MAX_JWT_LEEWAY_SECONDS))]
    pub leeway_seconds: u64,
    /// The Secret key holds a JWKS document (keys chosen by the token's `kid`) rather than one
    /// key. Kubernetes updates the mounted Secret in place and the proxy re-reads it, so keys
    /// rotate without a restart.
    #[serde(default)]
    pub jwks: bool,
}

fn default_leeway() -> u64 {
    DEFAULT_JWT_LEEWAY_SECONDS
}

impl JwtSource {
    /// The proxy's jwt source: the same settings, with the key read from `key_file`, where
    /// the operator mounts [`JwtSource::secret_ref`].
    pub fn into_proxy(self, key_file: &str) -> JwtSpec {
        let key_file = PathBuf::from(key_file);
        JwtSpec {
            claim: self.claim,
            algorithm: self.algorithm,
            jwks_file: self.jwks.then(|| key_file.clone()),
            key_file,
            from: self.from,
            query_param: self.query_param,
            audience: self.audience,
            issuer: self.issuer,
            leeway_seconds: self.leeway_seconds,
        }
    }
}

fn default_claim() -> String {
    DEFAULT_JWT_CLAIM.into()
}

fn default_query_param() -> String {
    DEFAULT_TOKEN_QUERY_PARAM.into()
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(
        regex(pattern = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// The key inside the Secret.
    #[serde(default = "default_secret_key")]
    #[schemars(regex(pattern = "^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "key".into()
}

/// Ring algorithm parameters (see `wscluster_ring::RingParams`).
///
/// `slots` is immutable once set (a CEL transition rule): a new slot count moves most keys to
/// another node, so every client reconnects. `allowRemap: true` lets one change through on
/// purpose; a spec field because CEL in a CRD cannot read annotations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.slots == oldSelf.slots || (has(self.allowRemap) && self.allowRemap)",
        "message": "ring.slots is immutable: a new slot count remaps most keys; set ring.allowRemap: true to change it on purpose"
    }
]))]
pub struct RingSpec {
    /// Size of the slot table of the rendezvous-table algorithm. More slots: finer balance,
    /// more memory per proxy (2 bytes a slot).
    #[serde(default = "default_slots")]
    #[schemars(range(min = 1024, max = 4194304))]
    pub slots: i32,
    /// Lets a change of `slots` through (it remaps most keys: every client reconnects).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_remap: bool,
}

fn default_slots() -> i32 {
    wscluster_ring::DEFAULT_SLOTS as i32
}

impl Default for RingSpec {
    fn default() -> Self {
        RingSpec {
            slots: default_slots(),
            allow_remap: false,
        }
    }
}

/// A connection URL, inline or from a Secret (for URLs carrying passwords).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.url) != has(self.secretRef)",
        "message": "set exactly one of url or secretRef"
    },
    {
        "rule": "!has(self.caSecretRef) || !has(self.url) || self.url.startsWith('rediss://') || self.url.startsWith('amqps://')",
        "message": "caSecretRef needs a TLS url (rediss:// or amqps://)"
    }
]))]
pub struct ConnectionSpec {
    /// The URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// A Secret key holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// A Secret key holding the PEM CA bundle the server's certificate is checked against
    /// (`rediss://`, `amqps://`); unset, the web's public roots. Mounted as a directory, so a
    /// rotated bundle reaches the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Redis only: the Redis is a Redis Cluster, and the URL (or the Secret's value) is a
    /// comma-separated list of seed URLs (`redis://a:6379,redis://b:6379`, all `redis://` or all
    /// `rediss://`), rendered to the nodes' `--redis-cluster` instead of `--redis-url`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
}

impl ConnectionSpec {
    /// The checks the schema's CEL states for `cluster`, for API servers that do not run CEL:
    /// only Redis is a cluster, and an inline seed list is `redis://` or `rediss://` URLs, one
    /// scheme for all. `field` names the connection (`redis`, `rabbitmq`).
    pub fn check_cluster(&self, field: &str) -> Result<(), String> {
        if !self.cluster {
            return Ok(());
        }
        if field != "redis" {
            return Err(format!("{field}: cluster is for redis only"));
        }
        let Some(url) = &self.url else { return Ok(()) };
        let seeds: Vec<&str> = url.split(',').collect();
        let one_scheme = ["redis://", "rediss://"].iter().any(|scheme| {
            seeds
                .iter()
                .all(|s| s.len() > scheme.len() && s.starts_with(scheme))
        });
        if one_scheme {
            Ok(())
        } else {
            Err(format!(
                "{field}: with cluster, url must be comma-separated seed URLs, all redis:// or all rediss://"
            ))
        }
    }
}

/// What the operator observed and decided.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WsClusterStatus {
    /// Node pods that exist (StatefulSet status replicas); the scale subresource's status.
    #[serde(default)]
    pub replicas: i32,
    /// Node pods that are Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the node pods in string form, for the scale subresource and HPAs.
    #[serde(default)]
    pub selector: String,
    /// Version of the ring last published; strictly increasing, kept across operator restarts.
    #[serde(default)]
    pub ring_version: i64,
    /// Slot count of the ring last published (part of the ring's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_slots: Option<i32>,
    /// Members of the ring last published.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Proxies connected to the ring stream.
    #[serde(default)]
    pub proxies: i32,
    /// Connected proxies that reported applying `ringVersion`.
    #[serde(default)]
    pub proxies_in_sync: i32,
    /// A scale-down in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A ring member as reported in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member id: the node pod's name.
    pub id: String,
    /// `podIP:port`.
    pub address: String,
    /// `active` owns keys, `draining` owns none and is leaving.
    pub state: MemberStateStatus,
}

/// A member's state, as in `wscluster_ring::MemberState`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberStateStatus {
    /// Owns keys.
    Active,
    /// Owns no keys; leaving.
    Draining,
}

/// Bookkeeping of an ordered scale-down, so an operator restart continues it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// Replicas the StatefulSet goes down to; ordinals at or above it are draining.
    pub target_replicas: i32,
    /// When the drain started.
    pub since: Time,
    /// The first ring version in which the leaving members were draining; proxies must have
    /// applied it before the pods go.
    pub ring_version: i64,
}

/// Condition type: the cluster serves (nodes Ready, ring published, proxies available).
pub const CONDITION_READY: &str = "Ready";
/// Condition type: a rollout, scale or drain is under way.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition type: the operator cannot reconcile the spec as written.
pub const CONDITION_DEGRADED: &str = "Degraded";

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn a_redis_cluster_takes_seed_urls_of_one_scheme_and_rabbitmq_is_never_a_cluster() {
        let conn = |url: &str| ConnectionSpec {
            url: Some(url.into()),
            secret_ref: None,
            ca_secret_ref: None,
            cluster: true,
        };
        conn("redis://a:6379,redis://b:6379")
            .check_cluster("redis")
            .expect("two seeds");
        conn("rediss://a:6380")
            .check_cluster("redis")
            .expect("one TLS seed");
        for bad in [
            "redis://a:6379,rediss://b:6380",
            "redis://a:6379,",
            "http://a",
            "redis://",
        ] {
            let err = conn(bad).check_cluster("redis").expect_err(bad);
            assert!(err.contains("comma-separated seed URLs"), "{bad}: {err}");
        }
        let err = conn("amqp://r")
            .check_cluster("rabbitmq")
            .expect_err("rabbitmq");
        assert_eq!(err, "rabbitmq: cluster is for redis only");
        let yaml = "url: redis://a:6379,redis://b:6379\ncluster: true\n";
        let parsed: ConnectionSpec = serde_yaml::from_str(yaml).expect("parses");
        assert!(parsed.cluster);
        let plain: ConnectionSpec = serde_yaml::from_str("url: redis://a\n").expect("parses");
        assert!(!plain.cluster, "off by default");
        assert!(
            !serde_yaml::to_string(&plain)
                .expect("prints")
                .contains("cluster")
        );
    }

    #[test]
    fn a_five_line_manifest_gets_every_default() {
        let yaml = "apiVersion: wscluster.io/v1alpha1\nkind: WsCluster\nmetadata:\n  name: chat\nspec: {}\n";
        let c: WsCluster = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(c.spec, WsClusterSpec::default());
        assert_eq!(c.spec.replicas, 3);
        assert_eq!(c.spec.node.image, DEFAULT_NODE_IMAGE);
        assert_eq!(c.spec.key_sources.len(), 2);
        assert_eq!(c.spec.ring.slots, 65536);
    }

    #[test]
    fn the_crd_has_scale_status_short_name_and_printer_columns() {
        let crd = WsCluster::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("wsclusters.wscluster.io")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["wsc".to_string()]));
        let v = &crd.spec.versions[0];
        let sub = v.subresources.as_ref().expect("subresources");
        let scale = sub.scale.as_ref().expect("scale");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        assert!(sub.status.is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .expect("columns")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            cols,
            ["Replicas", "Ready", "Ring", "InSync", "Proxies", "Age"]
        );
    }

    #[test]
    fn the_schema_carries_cel_rules_ranges_and_enums() {
        let json = serde_json::to_string(&WsCluster::crd()).expect("serialises");
        for needle in [
            "set exactly one of url or secretRef",
            "a keySource sets exactly one of path, query, header, cookie, jwt",
            "nodePort needs serviceType NodePort or LoadBalancer",
            "at most one keySource may be a jwt source",
            r#""maximum":1000"#,
            r#""enum":["ClusterIP","NodePort","LoadBalancer"]"#,
            r#""enum":["HS256","RS256","ES256","PS256","EdDSA"]"#,
        ] {
            assert!(json.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn key_sources_serialise_as_single_key_maps() {
        let yaml = serde_yaml::to_string(&default_key_sources()).expect("serialises");
        assert_eq!(yaml, "- path: /connect/{key}\n- query: userId\n");
    }

    /// The `x-kubernetes-validations` rule texts anywhere in the CRD.
    fn rules() -> Vec<String> {
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::Array(rules)) =
                        map.get("x-kubernetes-validations")
                    {
                        out.extend(
                            rules
                                .iter()
                                .filter_map(|r| r["rule"].as_str().map(str::to_owned)),
                        );
                    }
                    map.values().for_each(|v| walk(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(
            &serde_json::to_value(WsCluster::crd()).expect("json"),
            &mut out,
        );
        out
    }

    #[test]
    fn the_pod_template_rules_name_exactly_the_operators_volumes_labels_and_directories() {
        let rules = rules();
        let quoted = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for list in [quoted(OPERATOR_VOLUMES), quoted(OPERATOR_LABELS)] {
            let wanted = format!("[{list}]");
            assert!(
                rules.iter().any(|r| r.contains(&wanted)),
                "no rule lists {wanted}"
            );
        }
        for root in OPERATOR_MOUNT_ROOTS {
            assert!(
                rules
                    .iter()
                    .any(|r| r.contains(&format!("m.mountPath.startsWith('{root}/')")))
            );
        }
        assert!(
            rules.iter().any(|r| r.contains("oldSelf.slots")),
            "ring.slots transition rule"
        );
    }

    #[test]
    fn embedded_kubernetes_types_carry_no_nested_descriptions() {
        let crd = serde_json::to_value(WsCluster::crd()).expect("json");
        let pod = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["proxy"]["properties"]["pod"]["properties"];
        let volumes = &pod["volumes"];
        assert!(
            volumes["description"].is_string(),
            "the field keeps its own"
        );
        let text = volumes["items"].to_string();
        assert!(
            !text.contains("\"description\""),
            "nested descriptions remain"
        );
        assert!(
            volumes["items"]["properties"]["secret"].is_object(),
            "the schema itself stays"
        );
    }
}
