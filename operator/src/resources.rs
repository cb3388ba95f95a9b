//! Desired child objects of a `WsCluster`, as pure functions of the spec.
//!
//! Each function returns the complete object the operator server-side applies; it never reads
//! the cluster. Names, labels, ports and mount paths follow the project's fixed contract:
//!
//! | object | name | notes |
//! |---|---|---|
//! | StatefulSet + headless Service | `<c>-node` | port `ws`; member id = pod name |
//! | Deployment + Service | `<c>-proxy` | Service port → 8080 `ws` only (clients) |
//! | Service | `<c>-api` | `ClusterIP` 8081 `api`: the proxies' server API |
//! | Service | `<c>-metrics` | headless 9090 `admin` of every proxy and node pod |
//! | NetworkPolicy | `<c>-node` | node `ws` from proxies only; `admin` from the namespace, monitoring, operator |
//! | PodDisruptionBudget | `<c>-node` | one node pod down at a time |
//! | PodDisruptionBudget | `<c>-proxy` | one proxy pod down at a time |
//! | ConfigMap | `<c>-config` | `proxy.yaml`, the directory at `/etc/wscluster/config` |
//! | ConfigMap | `<c>-ring` | written by the ring publisher; optional dir `/etc/wscluster/ring` (both) |
//! | Secret | `spec.proxy.tls.secretRef` | the user's TLS Secret, whole, at `/etc/wscluster/tls` (proxies) |
//! | Secret | `spec.{redis,rabbitmq}.caSecretRef` | `ca.crt` in `/etc/wscluster/{redis,amqp}-ca` |
//! | Secret | `<c>-ring-token` | keys `proxy`, `node`; each kind's at `/var/run/wscluster/ring/token` |
//! | Secret | `<c>-proxy-secret` | `secret` at `/var/run/wscluster/proxy-secret/secret` (both) |
//! | Secret | `<c>-api-keys` | `keys` at `/var/run/wscluster/api-keys/keys` (both) |
//!
//! The three Secrets are [`Generated`]: created once with random values, owned by the
//! `WsCluster`, never regenerated over an existing value (a user may rotate them).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile, Secret,
    SecretKeySelector, SecretProjection, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, SleepAction, TopologySpreadConstraint, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use wscluster_proxy::config::{DEFAULT_JWT_KEY_FILE, KeySourceSpec, ProxyConfig};
use wscluster_proxy::error::Error as ProxyError;

use wscluster_runtime::flags::{self, Flag};

use crate::crd::{
    ConnectionSpec, PodTemplate, ProbeTimings, SecretKeyRef, WsCluster, WsClusterSpec,
};
use crate::error::{Error, Result};

/// Port the proxy serves clients on inside its pod.
pub const PROXY_PORT: i32 = 8080;
/// Port of the proxy's admin endpoints (`/healthz`, `/readyz`, `/metrics`).
pub const PROXY_ADMIN_PORT: i32 = 9090;
/// Directory the ring token Secret is mounted at.
pub const RING_TOKEN_DIR: &str = "/var/run/wscluster/ring";
/// File of the ring token inside the pods.
pub const RING_TOKEN_FILE: &str = "/var/run/wscluster/ring/token";
/// Path of the token inside the ring token volume (each kind's key is projected to it).
pub const RING_TOKEN_PATH: &str = "token";
/// Key of the proxies' ring stream token in the ring token Secret.
pub const RING_TOKEN_PROXY_KEY: &str = "proxy";
/// Key of the nodes' ring stream token in the ring token Secret.
pub const RING_TOKEN_NODE_KEY: &str = "node";
/// Directory the proxy secret is mounted at, in proxies and nodes.
pub const PROXY_SECRET_DIR: &str = "/var/run/wscluster/proxy-secret";
/// Key of the proxy secret in its Secret (and its file name).
pub const PROXY_SECRET_KEY: &str = "secret";
/// File of the proxy secret inside the pods (`--proxy-secret-file`).
pub const PROXY_SECRET_FILE: &str = "/var/run/wscluster/proxy-secret/secret";
/// Directory the API keys are mounted at, in proxies and nodes.
pub const API_KEYS_DIR: &str = "/var/run/wscluster/api-keys";
/// Key of the API keys in their Secret (and its file name): one key per line.
pub const API_KEYS_KEY: &str = "keys";
/// File of the API keys inside the pods (`--api-keys-file`).
pub const API_KEYS_FILE: &str = "/var/run/wscluster/api-keys/keys";
/// Port of the proxy's server API (`/api/v1/...`), apart from the client port.
pub const PROXY_API_PORT: i32 = 8081;
/// Port of the node's admin endpoints (`/healthz`, `/readyz`, `/metrics`, `/count`).
pub const NODE_ADMIN_PORT: i32 = 9090;

/// Where node and proxy pods mount the fallback ring ConfigMap ([`ring_config_map_name`]).
pub const RING_FILE_DIR: &str = "/etc/wscluster/ring";
/// The fallback ring ConfigMap's key: the last published ring as a JSON snapshot, the format
/// `--ring-file` reads.
pub const RING_FILE_KEY: &str = "ring.json";
/// The fallback ring file inside node and proxy pods.
pub const RING_FILE: &str = "/etc/wscluster/ring/ring.json";

/// The ConfigMap the operator writes every published ring into (`<cluster>-ring`), mounted by
/// nodes and proxies so they can start when the ring stream is unavailable.
pub fn ring_config_map_name(cluster: &str) -> String {
    format!("{cluster}-ring")
}

/// Directory the proxy configuration ConfigMap is mounted at: a directory, never `subPath`,
/// because only a directory mount sees the ConfigMap change, so the proxy can re-read it.
pub const PROXY_CONFIG_DIR: &str = "/etc/wscluster/config";
/// File of the proxy configuration inside proxy pods ([`PROXY_CONFIG_DIR`] + its key).
pub const PROXY_CONFIG_FILE: &str = "/etc/wscluster/config/proxy.yaml";
/// Port of the proxy's TLS listener inside its pod (`spec.proxy.tls`).
pub const PROXY_TLS_PORT: i32 = 8443;
/// Directory the TLS Secret (`tls.crt`, `tls.key`) is mounted at, whole, in proxy pods.
pub const TLS_DIR: &str = "/etc/wscluster/tls";
/// The certificate chain inside proxy pods (`--tls-cert-file`).
pub const TLS_CERT_FILE: &str = "/etc/wscluster/tls/tls.crt";
/// The private key inside proxy pods (`--tls-key-file`).
pub const TLS_KEY_FILE: &str = "/etc/wscluster/tls/tls.key";
/// Directory the SNI Secrets (`spec.proxy.tls.sniSecretRefs`) are projected into, one
/// subdirectory per Secret (`0/`, `1/`, …, each with `tls.crt` and `tls.key`).
pub const TLS_SNI_DIR: &str = "/etc/wscluster/tls-sni";
/// File name of a CA bundle inside its directory.
pub const CA_FILE_NAME: &str = "ca.crt";
/// Directory of Redis's CA bundle in node pods.
pub const REDIS_CA_DIR: &str = "/etc/wscluster/redis-ca";
/// Redis's CA bundle in node pods (`--redis-ca-file`).
pub const REDIS_CA_FILE: &str = "/etc/wscluster/redis-ca/ca.crt";
/// Directory of RabbitMQ's CA bundle in node and proxy pods.
pub const AMQP_CA_DIR: &str = "/etc/wscluster/amqp-ca";
/// RabbitMQ's CA bundle in node and proxy pods (`--amqp-ca-file`).
pub const AMQP_CA_FILE: &str = "/etc/wscluster/amqp-ca/ca.crt";
/// Key of the proxy configuration in the ConfigMap.
pub const PROXY_CONFIG_KEY: &str = "proxy.yaml";
/// Directory the JWT key Secret is mounted at.
pub const JWT_KEY_DIR: &str = "/etc/wscluster/jwt";
/// File of the JWT key inside proxy pods (`JWT_KEY_DIR` + the Secret item's path `key`): the
/// proxy's default `keyFile`.
pub const JWT_KEY_FILE: &str = DEFAULT_JWT_KEY_FILE;
/// Pod annotation holding a hash of the rendered proxy configuration, so a config change
/// rolls the proxies.
pub const CONFIG_HASH_ANNOTATION: &str = "wscluster.io/config-hash";
/// The node's `--grace-period-seconds`, rendered: time from SIGTERM to exit in which it closes
/// its sessions (the node's own default).
pub const NODE_GRACE_PERIOD_SECONDS: i64 = 20;
/// Seconds a node pod gets to close its sessions on shutdown: the node's grace period plus
/// margin for the last writes to Redis and RabbitMQ.
pub const NODE_TERMINATION_GRACE_SECONDS: i64 = NODE_GRACE_PERIOD_SECONDS + 10;
/// The proxy's preStop sleep: time for the endpoint controllers and kube-proxy (or the cloud
/// load balancer) to stop sending new clients to a terminating proxy before it gets SIGTERM.
/// Five seconds covers the endpoint propagation we see on a loaded API server.
pub const PROXY_PRESTOP_SLEEP_SECONDS: i64 = 5;

/// Label keys.
pub mod labels {
    /// `app.kubernetes.io/name`.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/component`.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// `app.kubernetes.io/part-of`.
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    /// `app.kubernetes.io/managed-by`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The label EndpointSlices carry with their Service's name.
    pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
}

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "wscluster-operator";

/// Which pods a child object is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The WebSocket nodes.
    Node,
    /// The proxies.
    Proxy,
    /// Objects shared by both (ConfigMap, ring token Secret).
    Config,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Node => "node",
            Component::Proxy => "proxy",
            Component::Config => "config",
        }
    }
}

/// What a desired object needs to know besides the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The ring stream URL pods are told to subscribe to (`--ring-public-url`).
    pub ring_url: String,
    /// The operator's own namespace: the node NetworkPolicy lets it reach the admin port
    /// (its session-count probe of draining nodes).
    pub operator_namespace: String,
}

/// The namespace the operator assumes it runs in when `POD_NAMESPACE` is unset: the one
/// `deploy/` and the chart's defaults install into.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "wscluster-system";

/// The Secrets the operator generates for every `WsCluster`: created once with random values
/// and never regenerated over an existing value, so a user can rotate them (API keys: add a
/// line, move the callers, remove the old line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// `<c>-ring-token`: the ring stream tokens, one per subscriber kind.
    RingTokens,
    /// `<c>-proxy-secret`: what proxies present to nodes.
    ProxySecret,
    /// `<c>-api-keys`: the server API's keys, one per line.
    ApiKeys,
}

impl Generated {
    /// Every generated Secret, in the order reconcile ensures them.
    pub const ALL: [Generated; 3] = [
        Generated::RingTokens,
        Generated::ProxySecret,
        Generated::ApiKeys,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Generated::RingTokens => "ring-token",
            Generated::ProxySecret => "proxy-secret",
            Generated::ApiKeys => "api-keys",
        }
    }

    /// The data keys the Secret must hold, each with a non-empty value.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Generated::RingTokens => &[RING_TOKEN_PROXY_KEY, RING_TOKEN_NODE_KEY],
            Generated::ProxySecret => &[PROXY_SECRET_KEY],
            Generated::ApiKeys => &[API_KEYS_KEY],
        }
    }
}

/// Identity of a `WsCluster`, checked once: every object the API server returns has these.
#[derive(Debug, Clone)]
pub struct ClusterRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// Controller owner reference for children.
    pub owner: OwnerReference,
}

impl ClusterRef {
    /// Reads name, namespace and uid.
    pub fn of(c: &WsCluster) -> Result<ClusterRef> {
        let namespace = c
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let owner = c
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?;
        Ok(ClusterRef {
            name: c.name_any(),
            namespace,
            owner,
        })
    }

    /// `namespace/name`, the ring's cluster id.
    pub fn cluster_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// StatefulSet, headless Service and PodDisruptionBudget name.
    pub fn node_name(&self) -> String {
        format!("{}-node", self.name)
    }

    /// Deployment and client Service name.
    pub fn proxy_name(&self) -> String {
        format!("{}-proxy", self.name)
    }

    /// ConfigMap name.
    pub fn config_name(&self) -> String {
        format!("{}-config", self.name)
    }

    /// Ring token Secret name.
    pub fn token_secret_name(&self) -> String {
        format!("{}-ring-token", self.name)
    }

    /// The name of one of the generated Secrets.
    pub fn generated_name(&self, which: Generated) -> String {
        format!("{}-{}", self.name, which.suffix())
    }

    /// The recommended labels of a component.
    pub fn labels(&self, component: Component) -> BTreeMap<String, String> {
        let mut l = self.selector_labels(component);
        l.insert(labels::PART_OF.into(), "wscluster".into());
        l.insert(labels::MANAGED_BY.into(), FIELD_MANAGER.into());
        l
    }

    /// The labels that select a component's pods.
    pub fn selector_labels(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::NAME.to_string(), "wscluster".to_string()),
            (labels::INSTANCE.to_string(), self.name.clone()),
            (
                labels::COMPONENT.to_string(),
                component.as_str().to_string(),
            ),
        ])
    }

    /// The node pod selector in string form (`status.selector`, for `kubectl scale` and HPAs).
    pub fn node_selector_string(&self) -> String {
        self.selector_labels(Component::Node)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn meta(&self, name: String, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// `flag`'s environment variable set to `value`. Every variable the operator renders for a node
/// or proxy comes from a [`wscluster_runtime::flags`] definition, the one their parsers read.
fn env_value(flag: Flag, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: flag.env.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn env_from_connection(flag: Flag, conn: &ConnectionSpec) -> EnvVar {
    match (&conn.url, &conn.secret_ref) {
        (_, Some(r)) => EnvVar {
            name: flag.env.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
        (url, None) => env_value(flag, url.clone().unwrap_or_default()),
    }
}

/// `POD_NAME` from the downward API: the member id of a node, the subscriber id of a proxy.
fn pod_name_env() -> EnvVar {
    EnvVar {
        name: flags::POD_NAME_ENV.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: "metadata.name".into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Whether `binary` (its `flags::node::ALL` or `flags::proxy::ALL`) reads `flag`.
///
/// The integration gate for the trust flags (`--proxy-secret-file`, `--api-keys-file`,
/// `--api-listen`, `--admin-listen` on nodes, the node limits): the operator and local mode
/// render such a flag only once the binary's parser lists it, so every rendered variable stays
/// one the binary reads. When a binary adds the flag to its `ALL`, the wiring turns on.
pub fn binary_reads(binary: &[Flag], flag: Flag) -> bool {
    binary.contains(&flag)
}

/// Pushes `flag = value` when `binary` reads it ([`binary_reads`]).
fn push_if_read(env: &mut Vec<EnvVar>, binary: &[Flag], flag: Flag, value: impl Into<String>) {
    if binary_reads(binary, flag) {
        env.push(env_value(flag, value));
    }
}

/// Environment every node and proxy pod gets: identity, cluster, ring stream, credentials,
/// RabbitMQ. `binary` is the flags its parser reads.
fn common_env(
    c: &WsCluster,
    cluster: &ClusterRef,
    settings: &Settings,
    binary: &[Flag],
) -> Vec<EnvVar> {
    let mut env = vec![
        pod_name_env(),
        env_value(flags::CLUSTER_ID, cluster.cluster_id()),
        env_value(flags::RING_URL, settings.ring_url.clone()),
        env_value(flags::RING_TOKEN_FILE, RING_TOKEN_FILE),
    ];
    push_if_read(
        &mut env,
        binary,
        flags::PROXY_SECRET_FILE,
        PROXY_SECRET_FILE,
    );
    push_if_read(&mut env, binary, flags::API_KEYS_FILE, API_KEYS_FILE);
    push_if_read(
        &mut env,
        binary,
        flags::LOG_FORMAT,
        c.spec.log_format.as_str(),
    );
    if fallback_ring_file_accepted() {
        push_if_read(&mut env, binary, flags::RING_FILE, RING_FILE);
    }
    if let Some(amqp) = &c.spec.rabbitmq {
        env.push(env_from_connection(flags::AMQP_URL, amqp));
        if amqp.ca_secret_ref.is_some() {
            push_if_read(&mut env, binary, flags::AMQP_CA_FILE, AMQP_CA_FILE);
        }
    }
    env
}

/// Whether the node and proxy accept `--ring-file` beside `--ring-url` (the stream
/// authoritative, the file its fallback), read from their shared parser
/// ([`wscluster_runtime::ring_args::RingArgs`]). Until they do, the two conflict and a pod
/// given both would refuse to start, so the operator mounts the fallback ring but does not
/// name it; the same integration gate as [`binary_reads`].
pub fn fallback_ring_file_accepted() -> bool {
    use clap::Args as _;
    let command = wscluster_runtime::ring_args::RingArgs::augment_args(clap::Command::new("ring"));
    let url = command
        .get_arguments()
        .find(|a| a.get_long() == Some(flags::RING_URL.long));
    url.is_some_and(|url| {
        !command
            .get_arg_conflicts_with(url)
            .iter()
            .any(|a| a.get_long() == Some(flags::RING_FILE.long))
    })
}

/// A node container's environment: the common part, Redis, the listen port, then the user's.
fn node_env(c: &WsCluster, cluster: &ClusterRef, settings: &Settings) -> Vec<EnvVar> {
    let all = flags::node::ALL;
    let mut env = common_env(c, cluster, settings, all);
    if let Some(redis) = &c.spec.redis {
        let flag = match redis.cluster {
            true => flags::node::REDIS_CLUSTER,
            false => flags::node::REDIS_URL,
        };
        env.push(env_from_connection(flag, redis));
        if redis.ca_secret_ref.is_some() {
            push_if_read(&mut env, all, flags::REDIS_CA_FILE, REDIS_CA_FILE);
        }
    }
    let grace = NODE_GRACE_PERIOD_SECONDS.to_string();
    push_if_read(&mut env, all, flags::GRACE_PERIOD_SECONDS, grace);
    env.push(env_value(
        flags::node::LISTEN,
        format!("0.0.0.0:{}", c.spec.node.port),
    ));
    env.extend(node_feature_env(c));
    env.extend(c.spec.node.env.iter().cloned());
    env
}

/// The node's admin port, features and limits from the spec, each only when the node reads
/// the flag ([`binary_reads`]); an unset limit keeps the node's default.
fn node_feature_env(c: &WsCluster) -> Vec<EnvVar> {
    let all = flags::node::ALL;
    let spec = &c.spec;
    let mut env = Vec::new();
    let admin = format!("0.0.0.0:{NODE_ADMIN_PORT}");
    push_if_read(&mut env, all, flags::ADMIN_LISTEN, admin);
    let on_off = |b: bool| if b { "true" } else { "false" };
    push_if_read(
        &mut env,
        all,
        flags::LEGACY_SEND,
        on_off(spec.server.legacy_send),
    );
    push_if_read(&mut env, all, flags::CHAT, on_off(spec.server.chat));
    let limits = [
        (flags::SESSIONS_PER_KEY, spec.sessions.per_key),
        (flags::MAX_HTTP_CONNECTIONS, spec.node.max_http_connections),
        (flags::MAX_INFLIGHT_SENDS, spec.node.max_inflight_sends),
    ];
    for (flag, value) in limits {
        if let Some(v) = value {
            push_if_read(&mut env, all, flag, v.to_string());
        }
    }
    if let Some(policy) = spec.sessions.policy {
        push_if_read(&mut env, all, flags::SESSION_POLICY, policy.as_str());
    }
    env
}

/// The node container port its probes use: `admin` once the node serves an admin port
/// (`--admin-listen`, see [`binary_reads`]), `ws` until then.
fn node_probe_port() -> &'static str {
    if binary_reads(flags::node::ALL, flags::ADMIN_LISTEN) {
        "admin"
    } else {
        "ws"
    }
}

/// A proxy container's environment: the common part (proxies need no Redis), both listen
/// ports, the config file, then the user's.
fn proxy_env(c: &WsCluster, cluster: &ClusterRef, settings: &Settings) -> Vec<EnvVar> {
    let mut env = common_env(c, cluster, settings, flags::proxy::ALL);
    env.push(env_value(
        flags::proxy::LISTEN,
        format!("0.0.0.0:{PROXY_PORT}"),
    ));
    env.push(env_value(
        flags::proxy::ADMIN_LISTEN,
        format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
    ));
    push_if_read(
        &mut env,
        flags::proxy::ALL,
        flags::API_LISTEN,
        format!("0.0.0.0:{PROXY_API_PORT}"),
    );
    env.push(env_value(flags::proxy::CONFIG, PROXY_CONFIG_FILE));
    if c.spec.proxy.tls.is_some() {
        let all = flags::proxy::ALL;
        let listen = format!("0.0.0.0:{PROXY_TLS_PORT}");
        push_if_read(&mut env, all, flags::TLS_LISTEN, listen);
        push_if_read(&mut env, all, flags::TLS_CERT_FILE, TLS_CERT_FILE);
        push_if_read(&mut env, all, flags::TLS_KEY_FILE, TLS_KEY_FILE);
        if let Some(dirs) = tls_sni_dirs(c) {
            push_if_read(&mut env, all, flags::TLS_SNI_CERT, dirs);
        }
    }
    env.extend(c.spec.proxy.env.iter().cloned());
    env
}

/// Names of environment variables a user `env` entry must not set: the ones the operator sets
/// itself, and the ring sources that would conflict with them (`--ring-token` with the token
/// file, `--ring-file` with the ring URL), which the node and proxy refuse at start.
pub const RESERVED_ENV: &[&str] = &[
    flags::POD_NAME_ENV,
    flags::CLUSTER_ID.env,
    flags::RING_URL.env,
    flags::RING_TOKEN_FILE.env,
    flags::RING_TOKEN.env,
    flags::RING_FILE.env,
    flags::PROXY_SECRET_FILE.env,
    flags::API_KEYS_FILE.env,
    flags::API_LISTEN.env,
    flags::REDIS_URL.env,
    flags::REDIS_CLUSTER.env,
    flags::AMQP_URL.env,
    flags::LISTEN.env,
    flags::ADMIN_LISTEN.env,
    flags::CONFIG.env,
    flags::LEGACY_SEND.env,
    flags::CHAT.env,
    flags::SESSIONS_PER_KEY.env,
    flags::SESSION_POLICY.env,
    flags::MAX_HTTP_CONNECTIONS.env,
    flags::MAX_INFLIGHT_SENDS.env,
    flags::LOG_FORMAT.env,
    flags::GRACE_PERIOD_SECONDS.env,
    flags::TLS_LISTEN.env,
    flags::TLS_CERT_FILE.env,
    flags::TLS_KEY_FILE.env,
    flags::TLS_SNI_CERT.env,
    flags::REDIS_CA_FILE.env,
    flags::AMQP_CA_FILE.env,
    flags::RING_CA_FILE.env,
];

fn http_probe(path: &str, port: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        ..Probe::default()
    }
}

/// A read-only volume of one Secret key at `dir/path`.
fn secret_file_volume(
    name: &str,
    secret_name: String,
    key: &str,
    dir: &str,
    path: &str,
) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name),
                items: Some(vec![KeyToPath {
                    key: key.into(),
                    path: path.into(),
                    mode: None,
                }]),
                // Owner read-only: the containers run as a non-root user of the pod's fsGroup.
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: name.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The ring token of `component`'s kind at [`RING_TOKEN_FILE`]: a node pod never holds the
/// proxy token, so a node cannot acknowledge a ring as a proxy.
fn ring_token_volume(cluster: &ClusterRef, component: Component) -> (Volume, VolumeMount) {
    let key = match component {
        Component::Proxy => RING_TOKEN_PROXY_KEY,
        Component::Node | Component::Config => RING_TOKEN_NODE_KEY,
    };
    secret_file_volume(
        "ring-token",
        cluster.token_secret_name(),
        key,
        RING_TOKEN_DIR,
        RING_TOKEN_PATH,
    )
}

/// What every node and proxy pod mounts: the credentials ([`credential_volumes`]), the
/// fallback ring, and the RabbitMQ CA bundle (nodes also Redis's) when the spec names one.
fn shared_volumes(
    c: &WsCluster,
    cluster: &ClusterRef,
    component: Component,
) -> Vec<(Volume, VolumeMount)> {
    let mut volumes = credential_volumes(cluster, component);
    volumes.push(ring_file_volume(cluster));
    let mut cas = vec![(&c.spec.rabbitmq, "amqp-ca", AMQP_CA_DIR)];
    if component == Component::Node {
        cas.push((&c.spec.redis, "redis-ca", REDIS_CA_DIR));
    }
    for (conn, name, dir) in cas {
        if let Some(ca) = conn.as_ref().and_then(|c| c.ca_secret_ref.as_ref()) {
            volumes.push(ca_volume(name, ca, dir));
        }
    }
    volumes
}

/// A CA bundle from a Secret key, as [`CA_FILE_NAME`] in its own directory (never `subPath`:
/// a rotated bundle must reach the pod).
fn ca_volume(name: &str, ca: &SecretKeyRef, dir: &str) -> (Volume, VolumeMount) {
    secret_file_volume(name, ca.name.clone(), &ca.key, dir, CA_FILE_NAME)
}

/// The fallback ring ConfigMap as the directory [`RING_FILE_DIR`], `optional`: a pod starts
/// before the operator has written it.
fn ring_file_volume(cluster: &ClusterRef) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "ring".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ring_config_map_name(&cluster.name),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "ring".into(),
            mount_path: RING_FILE_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The credentials every node and proxy pod mounts: its kind's ring token, the proxy secret
/// and the API keys.
fn credential_volumes(cluster: &ClusterRef, component: Component) -> Vec<(Volume, VolumeMount)> {
    vec![
        ring_token_volume(cluster, component),
        secret_file_volume(
            "proxy-secret",
            cluster.generated_name(Generated::ProxySecret),
            PROXY_SECRET_KEY,
            PROXY_SECRET_DIR,
            PROXY_SECRET_KEY,
        ),
        secret_file_volume(
            "api-keys",
            cluster.generated_name(Generated::ApiKeys),
            API_KEYS_KEY,
            API_KEYS_DIR,
            API_KEYS_KEY,
        ),
    ]
}

fn label_selector(cluster: &ClusterRef, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(cluster.selector_labels(component)),
        match_expressions: None,
    }
}

/// The default spread of a component's pods: at most one more on any host, and on any zone,
/// than on another, as a preference (`ScheduleAnyway`), so a small or single-zone cluster
/// still schedules every pod.
pub fn default_spread(cluster: &ClusterRef, component: Component) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(label_selector(cluster, component)),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// A probe with the user's timings over the operator's.
fn with_timings(mut probe: Probe, timings: Option<&ProbeTimings>) -> Probe {
    if let Some(t) = timings {
        probe.initial_delay_seconds = t.initial_delay_seconds.or(probe.initial_delay_seconds);
        probe.period_seconds = t.period_seconds.or(probe.period_seconds);
        probe.timeout_seconds = t.timeout_seconds.or(probe.timeout_seconds);
        probe.failure_threshold = t.failure_threshold.or(probe.failure_threshold);
    }
    probe
}

/// The pod template of a component: the operator's `pod` (one container) with the user's
/// [`PodTemplate`] added. The user adds labels, annotations, scheduling, pull secrets, volumes
/// and mounts, `envFrom`, command, args and probe timings; the operator's labels, annotations,
/// environment, volumes and security context stay as rendered (validation refuses a user value
/// that would collide with one). A user spread replaces [`default_spread`]. A startup probe
/// (on `startup_path`) exists only when the user gives its timings.
fn customised(
    cluster: &ClusterRef,
    component: Component,
    user: &PodTemplate,
    annotations: BTreeMap<String, String>,
    mut pod: PodSpec,
    startup_path: &str,
) -> PodTemplateSpec {
    let mut all_labels = user.labels.clone();
    all_labels.extend(cluster.labels(component));
    let mut all_annotations = user.annotations.clone();
    all_annotations.extend(annotations);
    pod.node_selector = (!user.node_selector.is_empty()).then(|| user.node_selector.clone());
    pod.affinity = user.affinity.clone();
    pod.tolerations = (!user.tolerations.is_empty()).then(|| user.tolerations.clone());
    pod.topology_spread_constraints = Some(if user.topology_spread_constraints.is_empty() {
        default_spread(cluster, component)
    } else {
        user.topology_spread_constraints.clone()
    });
    pod.priority_class_name = user.priority_class_name.clone();
    pod.image_pull_secrets =
        (!user.image_pull_secrets.is_empty()).then(|| user.image_pull_secrets.clone());
    pod.volumes
        .get_or_insert_with(Vec::new)
        .extend(user.volumes.iter().cloned());
    for container in &mut pod.containers {
        customise_container(container, user, startup_path);
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(all_labels),
            annotations: (!all_annotations.is_empty()).then_some(all_annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    }
}

/// The container half of [`customised`].
fn customise_container(container: &mut Container, user: &PodTemplate, startup_path: &str) {
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .extend(user.volume_mounts.iter().cloned());
    container.env_from = (!user.env_from.is_empty()).then(|| user.env_from.clone());
    container.command = (!user.command.is_empty()).then(|| user.command.clone());
    container.args = (!user.args.is_empty()).then(|| user.args.clone());
    container.readiness_probe = container
        .readiness_probe
        .take()
        .map(|p| with_timings(p, user.readiness_probe.as_ref()));
    container.liveness_probe = container
        .liveness_probe
        .take()
        .map(|p| with_timings(p, user.liveness_probe.as_ref()));
    container.startup_probe = user.startup_probe.as_ref().and_then(|t| {
        let port = container
            .liveness_probe
            .as_ref()?
            .http_get
            .as_ref()?
            .port
            .clone();
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                path: Some(startup_path.into()),
                port,
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            ..Probe::default()
        };
        Some(with_timings(probe, Some(t)))
    });
}

/// Seconds a proxy pod gets from deletion to SIGKILL: the proxy's own rule
/// ([`wscluster_proxy::termination_grace_seconds`]: the preStop sleep, `drainTimeoutSeconds`
/// in which clients may leave on their own, the proxy's hard deadline past it in which every
/// remaining client gets the drain frame at once and closes, and a margin), so the kubelet's
/// SIGKILL never races the reset frames.
pub fn proxy_termination_grace_seconds(spec: &WsClusterSpec) -> i64 {
    let drain = u64::try_from(spec.drain_timeout_seconds).unwrap_or(0);
    let pre_stop = u64::try_from(PROXY_PRESTOP_SLEEP_SECONDS).unwrap_or(0);
    let grace = wscluster_proxy::termination_grace_seconds(drain, pre_stop);
    i64::try_from(grace).unwrap_or(i64::MAX)
}

/// The node container: clients on `ws`, probes on [`node_probe_port`].
fn node_container(c: &WsCluster, env: Vec<EnvVar>, mounts: Vec<VolumeMount>) -> Container {
    let node = &c.spec.node;
    Container {
        name: "node".into(),
        image: Some(node.image.clone()),
        image_pull_policy: Some(node.image_pull_policy.as_str().into()),
        ports: Some(vec![
            tcp_port("ws", node.port),
            tcp_port("admin", NODE_ADMIN_PORT),
        ]),
        env: Some(env),
        readiness_probe: Some(http_probe(&node.readiness_path, node_probe_port(), 2)),
        liveness_probe: Some(http_probe(&node.liveness_path, node_probe_port(), 10)),
        // Added by the pod template, only when the user gives its timings.
        startup_probe: None,
        resources: node.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container()),
        ..Container::default()
    }
}

/// The node StatefulSet with `replicas` pods (the scale-down state machine decides how many;
/// it is not always `spec.replicas`).
pub fn node_statefulset(c: &WsCluster, settings: &Settings, replicas: i32) -> Result<StatefulSet> {
    let cluster = ClusterRef::of(c)?;
    let node = &c.spec.node;
    let env = node_env(c, &cluster, settings);
    let (volumes, mounts): (Vec<Volume>, Vec<VolumeMount>) =
        shared_volumes(c, &cluster, Component::Node)
            .into_iter()
            .unzip();
    let container = node_container(c, env, mounts);
    Ok(StatefulSet {
        metadata: cluster.meta(cluster.node_name(), Component::Node),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(cluster.node_name()),
            // The operator orders scale-down itself (drain first), so pods may start and stop
            // in parallel; OrderedReady would only slow scale-up.
            pod_management_policy: Some("Parallel".into()),
            selector: label_selector(&cluster, Component::Node),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Delete".into()),
                },
            ),
            template: customised(
                &cluster,
                Component::Node,
                &node.pod,
                BTreeMap::new(),
                PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(NODE_TERMINATION_GRACE_SECONDS),
                    security_context: Some(restricted_pod()),
                    service_account_name: node.service_account_name.clone(),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                },
                &node.liveness_path,
            ),
            ..StatefulSetSpec::default()
        }),
        status: None,
    })
}

/// The headless Service of the nodes; its EndpointSlices are the ring's membership.
pub fn node_service(c: &WsCluster) -> Result<Service> {
    let cluster = ClusterRef::of(c)?;
    Ok(Service {
        metadata: cluster.meta(cluster.node_name(), Component::Node),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(cluster.selector_labels(Component::Node)),
            // Only Ready pods may join the ring.
            publish_not_ready_addresses: Some(false),
            ports: Some(vec![ServicePort {
                name: Some("ws".into()),
                port: c.spec.node.port,
                target_port: Some(IntOrString::String("ws".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The proxy Deployment. `config_hash` is [`proxy_config_hash`]: only a change the proxy
/// cannot apply live rolls the pods.
pub fn proxy_deployment(
    c: &WsCluster,
    settings: &Settings,
    config_hash: &str,
) -> Result<Deployment> {
    let cluster = ClusterRef::of(c)?;
    // 1. Volumes: the shared ones, proxy.yaml, the JWT key when a key source verifies one,
    // the TLS Secret when the proxy terminates TLS.
    let mut volumes = shared_volumes(c, &cluster, Component::Proxy);
    volumes.push(proxy_config_volume(&cluster));
    volumes.extend(jwt_key_volume(c));
    volumes.extend(tls_volume(c));
    volumes.extend(tls_sni_volume(c));
    let (volumes, mounts): (Vec<Volume>, Vec<VolumeMount>) = volumes.into_iter().unzip();
    // 2. The container: its environment, ports, probes and mounts.
    let container = proxy_container(c, proxy_env(c, &cluster, settings), mounts);
    // 3. The Deployment, annotated with the config hash so a config change that needs a
    // restart rolls the pods (the proxies follow every other change of the mounted file).
    Ok(Deployment {
        metadata: cluster.meta(cluster.proxy_name(), Component::Proxy),
        spec: Some(DeploymentSpec {
            replicas: Some(c.spec.proxy.replicas),
            selector: label_selector(&cluster, Component::Proxy),
            template: customised(
                &cluster,
                Component::Proxy,
                &c.spec.proxy.pod,
                BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string())]),
                PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(proxy_termination_grace_seconds(
                        &c.spec,
                    )),
                    security_context: Some(restricted_pod()),
                    automount_service_account_token: Some(false),
                    ..PodSpec::default()
                },
                "/healthz",
            ),
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// The ConfigMap as the directory [`PROXY_CONFIG_DIR`] (`proxy.yaml` inside): a directory
/// mount sees the ConfigMap change, so the proxy can re-read its configuration live.
fn proxy_config_volume(cluster: &ClusterRef) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cluster.config_name(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "config".into(),
            mount_path: PROXY_CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The JWT verification key's Secret at [`JWT_KEY_DIR`], if a key source verifies JWTs.
fn jwt_key_volume(c: &WsCluster) -> Option<(Volume, VolumeMount)> {
    let jwt = c.spec.key_sources.iter().find_map(|s| s.jwt.as_ref())?;
    Some((
        Volume {
            name: "jwt-key".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(jwt.secret_ref.name.clone()),
                items: Some(vec![KeyToPath {
                    key: jwt.secret_ref.key.clone(),
                    path: "key".into(),
                    mode: None,
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "jwt-key".into(),
            mount_path: JWT_KEY_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ))
}

/// `--tls-sni-cert`: the SNI Secrets' directories under [`TLS_SNI_DIR`], comma-separated.
fn tls_sni_dirs(c: &WsCluster) -> Option<String> {
    let refs = &c.spec.proxy.tls.as_ref()?.sni_secret_refs;
    let dirs: Vec<String> = (0..refs.len())
        .map(|i| format!("{TLS_SNI_DIR}/{i}"))
        .collect();
    (!dirs.is_empty()).then(|| dirs.join(","))
}

/// The SNI Secrets projected into one volume at [`TLS_SNI_DIR`], Secret `i` as `i/tls.crt`
/// and `i/tls.key`: a projected volume (not `subPath`) sees renewals.
fn tls_sni_volume(c: &WsCluster) -> Option<(Volume, VolumeMount)> {
    let refs = &c.spec.proxy.tls.as_ref()?.sni_secret_refs;
    if refs.is_empty() {
        return None;
    }
    let sources = refs
        .iter()
        .enumerate()
        .map(|(i, secret)| VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.name.clone(),
                items: Some(
                    ["tls.crt", "tls.key"]
                        .map(|key| KeyToPath {
                            key: key.into(),
                            path: format!("{i}/{key}"),
                            mode: None,
                        })
                        .to_vec(),
                ),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        })
        .collect();
    let volume = Volume {
        name: "tls-sni".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "tls-sni".into(),
        mount_path: TLS_SNI_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

/// The TLS Secret, whole, at [`TLS_DIR`] when the proxy terminates TLS: no items and no
/// `subPath`, so a renewed certificate reaches the running proxy.
fn tls_volume(c: &WsCluster) -> Option<(Volume, VolumeMount)> {
    let tls = c.spec.proxy.tls.as_ref()?;
    Some((
        Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_ref.name.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ))
}

/// The proxy container: clients on `ws` (and `wss` with TLS), probes on `admin`. A preStop
/// sleep keeps it serving while the endpoints drop it, before SIGTERM starts its drain.
fn proxy_container(c: &WsCluster, env: Vec<EnvVar>, mounts: Vec<VolumeMount>) -> Container {
    let proxy = &c.spec.proxy;
    let mut ports = vec![
        tcp_port("ws", PROXY_PORT),
        tcp_port("api", PROXY_API_PORT),
        tcp_port("admin", PROXY_ADMIN_PORT),
    ];
    if proxy.tls.is_some() {
        ports.push(tcp_port("wss", PROXY_TLS_PORT));
    }
    Container {
        name: "proxy".into(),
        image: Some(proxy.image.clone()),
        image_pull_policy: Some(proxy.image_pull_policy.as_str().into()),
        ports: Some(ports),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PROXY_PRESTOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            post_start: None,
            stop_signal: None,
        }),
        env: Some(env),
        readiness_probe: Some(http_probe("/readyz", "admin", 2)),
        liveness_probe: Some(http_probe("/healthz", "admin", 10)),
        resources: proxy.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container()),
        ..Container::default()
    }
}

/// A named TCP container port.
fn tcp_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// A `ClusterIP`-style port of a Service onto the named container port.
fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The client-facing Service of the proxies: the public port, and the TLS port when the
/// proxy terminates TLS; nothing else. The admin port (metrics, health) is on
/// [`metrics_service`], the server API on [`proxy_api_service`]. The user's annotations,
/// source ranges, traffic policy and IP families are passed through.
pub fn proxy_service(c: &WsCluster) -> Result<Service> {
    let cluster = ClusterRef::of(c)?;
    let proxy = &c.spec.proxy;
    let mut ports = vec![ServicePort {
        node_port: proxy.node_port,
        ..service_port("ws", proxy.service_port)
    }];
    if let Some(tls) = &proxy.tls {
        ports.push(service_port("wss", tls.port));
    }
    let mut metadata = cluster.meta(cluster.proxy_name(), Component::Proxy);
    metadata.annotations =
        (!proxy.service_annotations.is_empty()).then(|| proxy.service_annotations.clone());
    let non_empty = |v: Vec<String>| (!v.is_empty()).then_some(v);
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(proxy.service_type.as_str().into()),
            selector: Some(cluster.selector_labels(Component::Proxy)),
            ports: Some(ports),
            load_balancer_source_ranges: non_empty(proxy.load_balancer_source_ranges.clone()),
            external_traffic_policy: proxy.external_traffic_policy.map(|p| p.as_str().into()),
            ip_families: non_empty(
                proxy
                    .ip_families
                    .iter()
                    .map(|f| f.as_str().into())
                    .collect(),
            ),
            ip_family_policy: proxy.ip_family_policy.map(|p| p.as_str().into()),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// `<c>-api`: the proxies' server API (`/api/v1/...`, API keys), inside the cluster only
/// (`ClusterIP`): the user's backend calls it, end users never do.
pub fn proxy_api_service(c: &WsCluster) -> Result<Service> {
    let cluster = ClusterRef::of(c)?;
    Ok(Service {
        metadata: cluster.meta(format!("{}-api", cluster.name), Component::Proxy),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(cluster.selector_labels(Component::Proxy)),
            ports: Some(vec![service_port("api", PROXY_API_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// `<c>-metrics`: a headless Service over every proxy and node pod's `admin` port, for
/// Prometheus (a ServiceMonitor, or `kubernetes_sd` on its endpoints). Headless, so each pod
/// is scraped on its own address.
pub fn metrics_service(c: &WsCluster) -> Result<Service> {
    let cluster = ClusterRef::of(c)?;
    let mut selector = cluster.selector_labels(Component::Node);
    selector.remove(labels::COMPONENT);
    Ok(Service {
        metadata: cluster.meta(format!("{}-metrics", cluster.name), Component::Config),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector),
            ports: Some(vec![service_port("admin", PROXY_ADMIN_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The NetworkPolicy of the node pods: their public port only from the cluster's proxy pods
/// (a client cannot bypass the proxy's key check); their admin port from pods of the same
/// namespace, from namespaces labelled [`MONITORING_NAMESPACE_LABEL`]` = "true"` (Prometheus)
/// and from the operator's namespace (its session-count probe). Everything else is refused.
pub fn node_network_policy(c: &WsCluster, operator_namespace: &str) -> Result<NetworkPolicy> {
    let cluster = ClusterRef::of(c)?;
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..NetworkPolicyPort::default()
    };
    let namespace_named = |key: &str, value: &str| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    };
    let from_proxies = NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(label_selector(&cluster, Component::Proxy)),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![port(c.spec.node.port)]),
    };
    let to_admin = NetworkPolicyIngressRule {
        from: Some(vec![
            NetworkPolicyPeer {
                pod_selector: Some(LabelSelector::default()),
                ..NetworkPolicyPeer::default()
            },
            namespace_named(MONITORING_NAMESPACE_LABEL, "true"),
            namespace_named(NAMESPACE_NAME_LABEL, operator_namespace),
        ]),
        ports: Some(vec![port(NODE_ADMIN_PORT)]),
    };
    Ok(NetworkPolicy {
        metadata: cluster.meta(cluster.node_name(), Component::Node),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(label_selector(&cluster, Component::Node)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![from_proxies, to_admin]),
            egress: None,
        }),
    })
}

/// Label of namespaces whose pods (Prometheus) may scrape the node admin ports.
pub const MONITORING_NAMESPACE_LABEL: &str = "wscluster.io/monitoring";
/// The label Kubernetes sets on every namespace with its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The user id (and group) the pods run as: distroless's `nonroot`, as in the Dockerfile.
pub const POD_USER_ID: i64 = 65532;

/// The pod-level half of the Restricted Pod Security Standard: a non-root user and group,
/// the runtime's default seccomp profile, and the group mounted Secrets are readable by.
pub fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(POD_USER_ID),
        run_as_group: Some(POD_USER_ID),
        fs_group: Some(POD_USER_ID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The container-level half: no privilege escalation, no capabilities, a read-only root
/// filesystem (nodes and proxies write nothing to disk; logs go to stdout).
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// The PodDisruptionBudget of the nodes: voluntary evictions take one node at a time, so a
/// drain of the Kubernetes node never empties the ring.
pub fn node_pdb(c: &WsCluster) -> Result<PodDisruptionBudget> {
    let cluster = ClusterRef::of(c)?;
    Ok(PodDisruptionBudget {
        metadata: cluster.meta(cluster.node_name(), Component::Node),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(label_selector(&cluster, Component::Node)),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The PodDisruptionBudget of the proxies: voluntary evictions (node drains, cluster
/// upgrades) take one proxy at a time, so the other proxies keep taking the clients of the one
/// that drains.
pub fn proxy_pdb(c: &WsCluster) -> Result<PodDisruptionBudget> {
    let cluster = ClusterRef::of(c)?;
    Ok(PodDisruptionBudget {
        metadata: cluster.meta(cluster.proxy_name(), Component::Proxy),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(label_selector(&cluster, Component::Proxy)),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The ConfigMap with the rendered `proxy.yaml`.
pub fn config_map(c: &WsCluster) -> Result<ConfigMap> {
    let cluster = ClusterRef::of(c)?;
    Ok(ConfigMap {
        metadata: cluster.meta(cluster.config_name(), Component::Config),
        data: Some(BTreeMap::from([(
            PROXY_CONFIG_KEY.to_string(),
            proxy_config_yaml(c)?,
        )])),
        ..ConfigMap::default()
    })
}

/// One generated Secret with its values (the controller generates each missing value once and
/// keeps every existing one).
pub fn generated_secret(
    c: &WsCluster,
    which: Generated,
    values: &BTreeMap<String, String>,
) -> Result<Secret> {
    let cluster = ClusterRef::of(c)?;
    Ok(Secret {
        metadata: cluster.meta(cluster.generated_name(which), Component::Config),
        type_: Some("Opaque".into()),
        data: Some(
            values
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    })
}

/// The value a generated Secret's key starts with: a random `token`, and for the API keys file
/// a comment saying how to rotate, then the key on its own line.
pub fn initial_value(which: Generated, token: &str) -> String {
    match which {
        Generated::ApiKeys => format!(
            "# One API key per line. To rotate: add a line, move the callers, remove the old line.\n{token}\n"
        ),
        Generated::RingTokens | Generated::ProxySecret => token.to_string(),
    }
}

/// The proxy's configuration for a spec, as the proxy's own type: `keySources` (a jwt
/// `secretRef` becomes [`JWT_KEY_FILE`], where [`proxy_deployment`] mounts it), `resets`,
/// `drainTimeoutSeconds` and `proxy.limits`, checked by [`ProxyConfig::validate`] so the
/// operator never renders a file the proxy would refuse. The error names the spec field.
pub fn proxy_config(spec: &WsClusterSpec) -> Result<ProxyConfig, String> {
    let key_sources = spec
        .key_sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let source = source.clone().map_jwt(|jwt| jwt.into_proxy(JWT_KEY_FILE));
            KeySourceSpec::try_from(source).map_err(|e| format!("keySources[{i}] {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let drain_timeout_seconds = u64::try_from(spec.drain_timeout_seconds)
        .map_err(|_| "drainTimeoutSeconds must not be negative".to_string())?;
    let config = ProxyConfig {
        key_sources,
        resets: spec.resets,
        drain_timeout_seconds,
        limits: spec.proxy.limits,
        // The seed's `/send` on the public port: one switch for nodes and proxies together.
        legacy_send: spec.server.legacy_send,
        allowed_origins: spec.proxy.allowed_origins.clone(),
    };
    config.validate().map_err(|e| match e {
        // `limits` is the one field the spec nests elsewhere (under `proxy`).
        ProxyError::Config(m) if m.starts_with("limits.") => format!("proxy.{m}"),
        ProxyError::Config(m) => m,
        other => other.to_string(),
    })?;
    Ok(config)
}

/// Renders `proxy.yaml` from the spec: [`proxy_config`], serialised.
pub fn proxy_config_yaml(c: &WsCluster) -> Result<String> {
    let config = proxy_config(&c.spec).map_err(Error::InvalidSpec)?;
    serde_yaml::to_string(&config).map_err(|e| Error::Render {
        what: "proxy.yaml",
        message: e.to_string(),
    })
}

/// The proxy pods' [`CONFIG_HASH_ANNOTATION`]: [`config_hash`] of the rendered config's
/// [`ProxyConfig::restart_fingerprint`], the fields a running proxy does not re-read. A
/// change to any other field reaches the proxies through the mounted ConfigMap (they follow
/// the file) without rolling them, so without resetting their clients.
pub fn proxy_config_hash(c: &WsCluster) -> Result<String> {
    let config = proxy_config(&c.spec).map_err(Error::InvalidSpec)?;
    Ok(config_hash(&config.restart_fingerprint()))
}

/// A stable hash of a document (XXH3-64 with the ring's fixed seed), hex.
pub fn config_hash(text: &str) -> String {
    format!("{:016x}", wscluster_ring::KeyHash::of(text).0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::Parser as _;

    use super::*;
    use std::path::{Path, PathBuf};

    use wscluster_proxy::config::{JwtAlgorithm, JwtSpec, Limits, ResetConfig, TokenFrom};

    use crate::crd::{ConnectionSpec, JwtSource, KeySource, SecretKeyRef};
    use crate::fixtures::WsClusterExt;

    fn settings() -> Settings {
        Settings {
            ring_url: "http://op:7400".into(),
            operator_namespace: "wscluster-system".into(),
        }
    }

    fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.clone()))
            .collect()
    }

    #[test]
    fn the_node_statefulset_follows_the_naming_contract() {
        let c = WsCluster::test();
        let sts = node_statefulset(&c, &settings(), 3).expect("sts");
        assert_eq!(sts.metadata.name.as_deref(), Some("chat-node"));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("default"));
        let owner = &sts.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "WsCluster");
        assert_eq!(owner.controller, Some(true));
        let spec = sts.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("chat-node"));
        let labels = spec
            .template
            .metadata
            .expect("meta")
            .labels
            .expect("labels");
        assert_eq!(labels[labels::COMPONENT], "node");
        assert_eq!(labels[labels::INSTANCE], "chat");
        assert_eq!(labels[labels::MANAGED_BY], "wscluster-operator");
        let pod = spec.template.spec.expect("pod");
        let env = env_of(&pod.containers[0]);
        assert_eq!(
            env["WSCLUSTER_CLUSTER_ID"].value.as_deref(),
            Some("default/chat")
        );
        assert_eq!(
            env["WSCLUSTER_RING_URL"].value.as_deref(),
            Some("http://op:7400")
        );
        assert_eq!(
            env["WSCLUSTER_RING_TOKEN_FILE"].value.as_deref(),
            Some(RING_TOKEN_FILE)
        );
        assert!(env["POD_NAME"].value_from.is_some());
        assert!(!env.contains_key("WSCLUSTER_REDIS_URL"));
        assert_eq!(
            pod.containers[0].ports.as_ref().expect("ports")[0]
                .name
                .as_deref(),
            Some("ws")
        );
    }

    #[test]
    fn redis_from_a_secret_becomes_a_secret_key_ref_and_inline_amqp_a_value() {
        let c = WsCluster::test()
            .with_redis_secret("redis-auth", "url")
            .with_amqp_url("amqp://rabbit:5672/%2f");
        let sts = node_statefulset(&c, &settings(), 1).expect("sts");
        let pod = sts.spec.expect("spec").template.spec.expect("pod");
        let env = env_of(&pod.containers[0]);
        let redis = env["WSCLUSTER_REDIS_URL"]
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("secret ref");
        assert_eq!(
            (redis.name.as_str(), redis.key.as_str()),
            ("redis-auth", "url")
        );
        assert_eq!(
            env["WSCLUSTER_AMQP_URL"].value.as_deref(),
            Some("amqp://rabbit:5672/%2f")
        );
        let dep = proxy_deployment(&c, &settings(), "h").expect("deployment");
        let pod = dep.spec.expect("spec").template.spec.expect("pod");
        let env = env_of(&pod.containers[0]);
        assert!(
            !env.contains_key("WSCLUSTER_REDIS_URL"),
            "proxies need no redis"
        );
        assert!(env.contains_key("WSCLUSTER_AMQP_URL"));
    }

    #[test]
    fn the_headless_service_publishes_only_ready_pods() {
        let svc = node_service(&WsCluster::test()).expect("svc");
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(false));
        assert_eq!(spec.ports.expect("ports")[0].port, 8080);
    }

    #[test]
    fn the_proxy_service_maps_the_service_port_to_ws_and_nothing_else() {
        let mut c = WsCluster::test();
        c.spec.proxy.service_port = 443;
        let svc = proxy_service(&c).expect("svc");
        let ports = svc.spec.expect("spec").ports.expect("ports");
        assert_eq!(ports.len(), 1, "admin and API stay off the client Service");
        assert_eq!(ports[0].port, 443);
        assert_eq!(ports[0].target_port, Some(IntOrString::String("ws".into())));
        let api = proxy_api_service(&c).expect("api").spec.expect("spec");
        assert_eq!(api.type_.as_deref(), Some("ClusterIP"));
        let api_port = &api.ports.expect("ports")[0];
        assert_eq!(
            (api_port.port, api_port.target_port.clone()),
            (PROXY_API_PORT, Some(IntOrString::String("api".into())))
        );
        let metrics = metrics_service(&c).expect("metrics").spec.expect("spec");
        assert_eq!(metrics.cluster_ip.as_deref(), Some("None"));
        assert_eq!(metrics.ports.expect("ports")[0].port, PROXY_ADMIN_PORT);
        let selector = metrics.selector.expect("selector");
        assert!(
            !selector.contains_key(labels::COMPONENT),
            "proxies and nodes"
        );
    }

    /// What the proxy reads from the rendered file: parsed and validated by its own loader.
    fn rendered(c: &WsCluster) -> ProxyConfig {
        let yaml = proxy_config_yaml(c).expect("renders");
        ProxyConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("the proxy refuses {yaml}: {e}"))
    }

    fn jwt_source(algorithm: JwtAlgorithm, from: TokenFrom) -> KeySource {
        KeySource {
            jwt: Some(JwtSource {
                claim: "uid".into(),
                algorithm,
                secret_ref: SecretKeyRef {
                    name: "jwt-pub".into(),
                    key: "pem".into(),
                },
                from,
                query_param: "t".into(),
                audience: Some("chat".into()),
                issuer: Some("https://idp.example".into()),
                leeway_seconds: 10,
                jwks: true,
            }),
            ..KeySource::default()
        }
    }

    #[test]
    fn the_default_spec_renders_the_proxy_s_own_defaults() {
        assert_eq!(rendered(&WsCluster::test()), ProxyConfig::default());
    }

    #[test]
    fn every_option_of_the_spec_reaches_the_proxy_as_written() {
        let limits = Limits {
            max_connections: 5_000,
            header_read_timeout_ms: 3_000,
            max_header_bytes: 8_192,
            idle_timeout_seconds: 60,
            max_frame_bytes: 65_536,
            connect_timeout_ms: 500,
            max_body_bytes: 4_096,
            body_timeout_ms: 1_500,
            per_ip_connections: Some(20),
            per_ip_upgrades_per_second: Some(5),
            per_ip_burst: Some(10),
        };
        let resets = ResetConfig {
            rate_per_second: 42,
            jitter_ms: 0,
            ..ResetConfig::default()
        };
        for from in [TokenFrom::Header, TokenFrom::Query] {
            let mut c = WsCluster::test();
            c.spec.key_sources = vec![
                jwt_source(JwtAlgorithm::ES256, from),
                KeySource {
                    path: Some("/ws/{key}/chat".into()),
                    ..KeySource::default()
                },
                KeySource {
                    query: Some("room".into()),
                    ..KeySource::default()
                },
                KeySource {
                    header: Some("X-Room".into()),
                    ..KeySource::default()
                },
                KeySource {
                    cookie: Some("room".into()),
                    ..KeySource::default()
                },
            ];
            c.spec.resets = resets;
            c.spec.drain_timeout_seconds = 7;
            c.spec.proxy.limits = limits;
            c.spec.proxy.allowed_origins = vec!["https://chat.example".into()];
            let expected = ProxyConfig {
                key_sources: vec![
                    KeySourceSpec::Jwt(JwtSpec {
                        claim: "uid".into(),
                        algorithm: JwtAlgorithm::ES256,
                        key_file: PathBuf::from("/etc/wscluster/jwt/key"),
                        from,
                        query_param: "t".into(),
                        audience: Some("chat".into()),
                        issuer: Some("https://idp.example".into()),
                        leeway_seconds: 10,
                        jwks_file: Some(PathBuf::from("/etc/wscluster/jwt/key")),
                    }),
                    KeySourceSpec::Path("/ws/{key}/chat".into()),
                    KeySourceSpec::Query("room".into()),
                    KeySourceSpec::Header("X-Room".into()),
                    KeySourceSpec::Cookie("room".into()),
                ],
                resets,
                drain_timeout_seconds: 7,
                limits,
                legacy_send: false,
                allowed_origins: vec!["https://chat.example".into()],
            };
            assert_eq!(rendered(&c), expected, "from {from:?}");
        }
    }

    #[test]
    fn a_spec_the_proxy_would_refuse_is_not_rendered() {
        let mut c = WsCluster::test();
        c.spec.proxy.limits.max_frame_bytes = 1;
        match proxy_config_yaml(&c) {
            Err(Error::InvalidSpec(m)) => assert!(m.contains("proxy.limits.maxFrameBytes"), "{m}"),
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    }

    #[test]
    fn a_jwt_source_renders_the_mounted_key_file_and_mounts_the_secret() {
        let mut c = WsCluster::test();
        c.spec.key_sources = vec![jwt_source(JwtAlgorithm::RS256, TokenFrom::Query)];
        let KeySourceSpec::Jwt(jwt) = &rendered(&c).key_sources[0] else {
            panic!("expected a jwt source");
        };
        assert_eq!(
            (
                jwt.claim.as_str(),
                jwt.algorithm,
                jwt.from,
                jwt.query_param.as_str()
            ),
            ("uid", JwtAlgorithm::RS256, TokenFrom::Query, "t")
        );
        let dep = proxy_deployment(&c, &settings(), "h").expect("deployment");
        let pod = dep.spec.expect("spec").template.spec.expect("pod");
        let vol = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "jwt-key")
            .expect("jwt volume");
        let secret = vol.secret.expect("secret");
        assert_eq!(secret.secret_name.as_deref(), Some("jwt-pub"));
        let item = &secret.items.expect("items")[0];
        assert_eq!(item.key, "pem");
        let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
        let mount = mounts
            .iter()
            .find(|m| m.name == "jwt-key")
            .expect("jwt mount");
        assert_eq!(mount.mount_path, JWT_KEY_DIR);
        // The file the proxy is told to read is the one the Secret's item becomes.
        assert_eq!(jwt.key_file, Path::new(&mount.mount_path).join(&item.path));
    }

    #[test]
    fn only_a_restart_needing_config_change_changes_the_pod_template() {
        let settings = settings();
        let template = |c: &WsCluster| {
            let hash = proxy_config_hash(c).expect("hash");
            let d = proxy_deployment(c, &settings, &hash).expect("deployment");
            serde_json::to_value(d.spec.expect("spec").template).expect("json")
        };
        let a = WsCluster::test();
        // Live fields: the rendered file changes, the pods do not roll.
        let mut live = WsCluster::test();
        live.spec.resets.rate_per_second = 50;
        live.spec.proxy.limits.per_ip_connections = Some(7);
        live.spec.proxy.limits.idle_timeout_seconds = 60;
        assert_ne!(
            proxy_config_yaml(&a).expect("yaml"),
            proxy_config_yaml(&live).expect("yaml")
        );
        assert_eq!(template(&a), template(&live));
        // A restart field: a new hash, so a new template.
        let mut restart = WsCluster::test();
        restart.spec.proxy.limits.max_connections = 10;
        assert_ne!(
            proxy_config_hash(&a).expect("a"),
            proxy_config_hash(&restart).expect("restart")
        );
        assert_ne!(template(&a), template(&restart));
        assert_eq!(template(&a), template(&WsCluster::test()), "stable");
    }

    #[test]
    fn the_selector_string_is_sorted_and_selects_only_nodes() {
        let cluster = ClusterRef::of(&WsCluster::test()).expect("ref");
        assert_eq!(
            cluster.node_selector_string(),
            "app.kubernetes.io/component=node,app.kubernetes.io/instance=chat,app.kubernetes.io/name=wscluster"
        );
    }

    #[test]
    fn an_object_without_uid_is_refused() {
        let mut c = WsCluster::test();
        c.metadata.uid = None;
        assert!(matches!(
            node_service(&c),
            Err(Error::MissingField("metadata.uid"))
        ));
    }

    /// A cluster whose node and proxy containers get every variable the operator renders.
    fn full_cluster() -> WsCluster {
        WsCluster::test()
            .with_redis_secret("redis-auth", "url")
            .with_amqp_url("amqp://rabbit:5672/%2f")
    }

    /// The variables a clap parser reads.
    fn variables_read_by(command: &clap::Command) -> BTreeSet<String> {
        command
            .get_arguments()
            .filter_map(|a| a.get_env()?.to_str().map(str::to_owned))
            .collect()
    }

    /// The rendered variables with a plain value, as the command line of the same flags.
    fn as_command_line(
        program: &str,
        env: &BTreeMap<String, EnvVar>,
        defined: &[Flag],
    ) -> Vec<std::ffi::OsString> {
        let mut args = vec![program.into()];
        for var in env.values() {
            let flag = defined.iter().find(|f| f.env == var.name);
            // A switch's variable is `true` or `false`; on a command line it is the bare flag.
            match (flag, var.value.as_deref()) {
                (Some(flag), Some("true")) => args.push(flag.dashed().into()),
                (Some(_), Some("false")) => {}
                (Some(flag), Some(value)) => args.extend(flag.arg(value)),
                _ => {}
            }
        }
        args
    }

    fn node_container_env() -> BTreeMap<String, EnvVar> {
        let sts = node_statefulset(&full_cluster(), &settings(), 1).expect("sts");
        env_of(
            &sts.spec
                .expect("spec")
                .template
                .spec
                .expect("pod")
                .containers[0],
        )
    }

    fn proxy_container_env() -> BTreeMap<String, EnvVar> {
        let dep = proxy_deployment(&full_cluster(), &settings(), "h").expect("deployment");
        env_of(
            &dep.spec
                .expect("spec")
                .template
                .spec
                .expect("pod")
                .containers[0],
        )
    }

    #[test]
    fn every_variable_rendered_for_a_node_is_one_the_node_reads() {
        use clap::CommandFactory as _;
        let reads = variables_read_by(&wscluster_node::Config::command());
        let env = node_container_env();
        for name in env.keys() {
            // POD_NAME is Kubernetes' name, read by Config::member_id, not by clap.
            assert!(
                name == flags::POD_NAME_ENV || reads.contains(name),
                "the node does not read {name}"
            );
        }
        let args = as_command_line("wscluster-node", &env, flags::node::ALL);
        let config = wscluster_node::Config::try_parse_from(&args).expect("the node parses it");
        assert_eq!(config.cluster_id, "default/chat");
        assert_eq!(config.ring.ring_url.as_deref(), Some("http://op:7400"));
        assert_eq!(
            config.ring.ring_token_file.as_deref(),
            Some(std::path::Path::new(RING_TOKEN_FILE))
        );
        assert_eq!(config.amqp_url.as_deref(), Some("amqp://rabbit:5672/%2f"));
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn a_redis_cluster_is_rendered_as_the_nodes_seed_list_which_the_node_accepts() {
        let mut c = WsCluster::test();
        c.spec.redis = Some(ConnectionSpec {
            url: Some("redis://r-0:6379,redis://r-1:6379".into()),
            secret_ref: None,
            ca_secret_ref: None,
            cluster: true,
        });
        let sts = node_statefulset(&c, &settings(), 1).expect("sts");
        let pod = sts.spec.expect("spec").template.spec.expect("pod");
        let env = env_of(&pod.containers[0]);
        assert!(!env.contains_key(flags::REDIS_URL.env));
        let args = as_command_line("wscluster-node", &env, flags::node::ALL);
        let config = wscluster_node::Config::try_parse_from(&args).expect("the node parses it");
        config.validate().expect("a valid node configuration");
        assert_eq!(
            config.redis_cluster.as_deref(),
            Some(&["redis://r-0:6379".to_owned(), "redis://r-1:6379".to_owned()][..])
        );
        let mut from_secret = WsCluster::test().with_redis_secret("redis-seeds", "seeds");
        if let Some(r) = from_secret.spec.redis.as_mut() {
            r.cluster = true;
        }
        let sts = node_statefulset(&from_secret, &settings(), 1).expect("sts");
        let pod = sts.spec.expect("spec").template.spec.expect("pod");
        let env = env_of(&pod.containers[0]);
        let seeds = env[flags::REDIS_CLUSTER.env]
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("a secret ref");
        assert_eq!(
            (seeds.name.as_str(), seeds.key.as_str()),
            ("redis-seeds", "seeds")
        );
    }

    #[test]
    fn every_variable_rendered_for_a_proxy_is_one_the_proxy_reads() {
        use clap::CommandFactory as _;
        let reads = variables_read_by(&wscluster_proxy::cli::Args::command());
        let env = proxy_container_env();
        for name in env.keys() {
            assert!(
                name == flags::POD_NAME_ENV || reads.contains(name),
                "the proxy does not read {name}"
            );
        }
        let args = as_command_line("wscluster-proxy", &env, flags::proxy::ALL);
        let parsed =
            wscluster_proxy::cli::Args::try_parse_from(&args).expect("the proxy parses it");
        assert_eq!(parsed.cluster_id, "default/chat");
        assert_eq!(parsed.ring.ring_url.as_deref(), Some("http://op:7400"));
        assert_eq!(
            parsed.ring.ring_token_file.as_deref(),
            Some(std::path::Path::new(RING_TOKEN_FILE))
        );
        assert_eq!(parsed.listen.to_string(), format!("0.0.0.0:{PROXY_PORT}"));
        assert_eq!(
            parsed.admin_listen.to_string(),
            format!("0.0.0.0:{PROXY_ADMIN_PORT}")
        );
        assert_eq!(
            parsed.config.as_deref(),
            Some(std::path::Path::new(PROXY_CONFIG_FILE))
        );
    }

    #[test]
    fn every_rendered_variable_is_reserved_in_user_env() {
        for name in node_container_env()
            .keys()
            .chain(proxy_container_env().keys())
        {
            assert!(
                RESERVED_ENV.contains(&name.as_str()),
                "{name} is not reserved"
            );
        }
    }

    fn pod_of_node(c: &WsCluster) -> PodSpec {
        node_statefulset(c, &settings(), 1)
            .expect("sts")
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod")
    }

    fn pod_of_proxy(c: &WsCluster) -> PodSpec {
        proxy_deployment(c, &settings(), "h")
            .expect("deployment")
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod")
    }

    /// (volume, Secret, key, mount dir, read-only) of every Secret volume of a pod.
    fn secret_mounts(pod: &PodSpec) -> Vec<(String, String, String, String, bool)> {
        let mounts = pod.containers[0].volume_mounts.clone().unwrap_or_default();
        pod.volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let secret = v.secret.as_ref()?;
                let item = &secret.items.as_ref()?[0];
                let mount = mounts.iter().find(|m| m.name == v.name)?;
                Some((
                    v.name.clone(),
                    secret.secret_name.clone().unwrap_or_default(),
                    item.key.clone(),
                    mount.mount_path.clone(),
                    mount.read_only == Some(true),
                ))
            })
            .collect()
    }

    #[test]
    fn each_pod_mounts_its_own_kinds_ring_token_and_the_shared_credentials_read_only() {
        let c = WsCluster::test();
        let row = |v: &str, s: &str, k: &str, d: &str| {
            (
                v.to_string(),
                s.to_string(),
                k.to_string(),
                d.to_string(),
                true,
            )
        };
        let shared = [
            row(
                "proxy-secret",
                "chat-proxy-secret",
                "secret",
                PROXY_SECRET_DIR,
            ),
            row("api-keys", "chat-api-keys", "keys", API_KEYS_DIR),
        ];
        let mut node = vec![row("ring-token", "chat-ring-token", "node", RING_TOKEN_DIR)];
        node.extend(shared.clone());
        assert_eq!(secret_mounts(&pod_of_node(&c)), node);
        let mut proxy = vec![row(
            "ring-token",
            "chat-ring-token",
            "proxy",
            RING_TOKEN_DIR,
        )];
        proxy.extend(shared);
        assert_eq!(secret_mounts(&pod_of_proxy(&c)), proxy);
    }

    #[test]
    fn every_pod_meets_the_restricted_pod_security_standard() {
        let c = WsCluster::test();
        for pod in [pod_of_node(&c), pod_of_proxy(&c)] {
            let p = pod.security_context.as_ref().expect("pod context");
            assert_eq!(p.run_as_non_root, Some(true));
            assert_eq!(p.run_as_user, Some(POD_USER_ID));
            assert_eq!(
                p.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                Some("RuntimeDefault")
            );
            assert_eq!(pod.automount_service_account_token, Some(false));
            let sc = pod.containers[0]
                .security_context
                .as_ref()
                .expect("container");
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()])
            );
        }
    }

    #[test]
    fn the_proxy_routes_the_seeds_send_exactly_when_the_nodes_serve_it() {
        let mut c = WsCluster::test();
        assert!(!proxy_config(&c.spec).expect("valid").legacy_send);
        c.spec.server.legacy_send = true;
        assert!(proxy_config(&c.spec).expect("valid").legacy_send);
    }

    #[test]
    fn the_trust_flags_are_rendered_exactly_when_the_binary_reads_them() {
        let mut c = WsCluster::test();
        c.spec.server.legacy_send = true;
        c.spec.server.chat = true;
        c.spec.sessions.per_key = Some(2);
        c.spec.sessions.policy = Some(crate::crd::SessionPolicy::ReplaceOldest);
        c.spec.node.max_http_connections = Some(100);
        c.spec.node.max_inflight_sends = Some(10);
        let node = env_of(&pod_of_node(&c).containers[0]);
        let expected_node = [
            (flags::PROXY_SECRET_FILE, PROXY_SECRET_FILE.to_string()),
            (flags::API_KEYS_FILE, API_KEYS_FILE.to_string()),
            (flags::ADMIN_LISTEN, format!("0.0.0.0:{NODE_ADMIN_PORT}")),
            (flags::LEGACY_SEND, "true".into()),
            (flags::CHAT, "true".into()),
            (flags::SESSIONS_PER_KEY, "2".into()),
            (flags::SESSION_POLICY, "replace-oldest".into()),
            (flags::MAX_HTTP_CONNECTIONS, "100".into()),
            (flags::MAX_INFLIGHT_SENDS, "10".into()),
        ];
        for (flag, value) in expected_node {
            let rendered = node.get(flag.env).and_then(|e| e.value.clone());
            let want = binary_reads(flags::node::ALL, flag).then_some(value);
            assert_eq!(rendered, want, "node {}", flag.env);
        }
        let proxy = env_of(&pod_of_proxy(&c).containers[0]);
        let expected_proxy = [
            (flags::PROXY_SECRET_FILE, PROXY_SECRET_FILE.to_string()),
            (flags::API_KEYS_FILE, API_KEYS_FILE.to_string()),
            (flags::API_LISTEN, format!("0.0.0.0:{PROXY_API_PORT}")),
        ];
        for (flag, value) in expected_proxy {
            let rendered = proxy.get(flag.env).and_then(|e| e.value.clone());
            let want = binary_reads(flags::proxy::ALL, flag).then_some(value);
            assert_eq!(rendered, want, "proxy {}", flag.env);
        }
        let probe = pod_of_node(&c).containers[0]
            .readiness_probe
            .clone()
            .and_then(|p| p.http_get)
            .map(|h| h.port);
        assert_eq!(probe, Some(IntOrString::String(node_probe_port().into())));
    }

    #[test]
    fn only_proxies_reach_the_node_port_and_the_admin_port_stays_inside() {
        let policy = node_network_policy(&WsCluster::test(), "ops").expect("policy");
        let spec = policy.spec.expect("spec");
        assert_eq!(
            spec.pod_selector.and_then(|s| s.match_labels),
            Some(
                ClusterRef::of(&WsCluster::test())
                    .expect("ref")
                    .selector_labels(Component::Node)
            )
        );
        let rules = spec.ingress.expect("ingress");
        assert_eq!(rules.len(), 2);
        let ports = |r: &NetworkPolicyIngressRule| -> Vec<IntOrString> {
            r.ports
                .iter()
                .flatten()
                .filter_map(|p| p.port.clone())
                .collect()
        };
        assert_eq!(ports(&rules[0]), vec![IntOrString::Int(8080)]);
        let from = rules[0].from.clone().expect("from");
        assert_eq!(from.len(), 1);
        assert_eq!(
            from[0]
                .pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .map(|l| l[labels::COMPONENT].as_str()),
            Some("proxy")
        );
        assert!(
            from[0].namespace_selector.is_none(),
            "proxies of this namespace only"
        );
        assert_eq!(ports(&rules[1]), vec![IntOrString::Int(NODE_ADMIN_PORT)]);
        let namespaces: Vec<BTreeMap<String, String>> = rules[1]
            .from
            .iter()
            .flatten()
            .filter_map(|p| p.namespace_selector.as_ref()?.match_labels.clone())
            .collect();
        assert_eq!(
            namespaces,
            vec![
                BTreeMap::from([(MONITORING_NAMESPACE_LABEL.to_string(), "true".to_string())]),
                BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), "ops".to_string())]),
            ]
        );
    }

    fn mount_of<'a>(pod: &'a PodSpec, volume: &str) -> &'a VolumeMount {
        pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume)
            .unwrap_or_else(|| panic!("no mount of {volume}"))
    }

    fn volume_of<'a>(pod: &'a PodSpec, volume: &str) -> Option<&'a Volume> {
        pod.volumes.iter().flatten().find(|v| v.name == volume)
    }

    #[test]
    fn no_operator_mount_uses_sub_path_so_rotation_reaches_the_pods() {
        let mut c = full_cluster();
        c.spec.proxy.tls = Some(crate::crd::ProxyTls {
            secret_ref: crate::crd::SecretRef {
                name: "edge-tls".into(),
            },
            port: 443,
            sni_secret_refs: Vec::new(),
        });
        for pod in [pod_of_node(&c), pod_of_proxy(&c)] {
            for m in pod.containers[0].volume_mounts.iter().flatten() {
                assert_eq!(m.sub_path, None, "{} uses subPath", m.name);
                assert_eq!(m.read_only, Some(true), "{} is writable", m.name);
            }
        }
        let proxy = pod_of_proxy(&c);
        assert_eq!(mount_of(&proxy, "config").mount_path, PROXY_CONFIG_DIR);
        assert_eq!(
            Path::new(PROXY_CONFIG_DIR).join(PROXY_CONFIG_KEY),
            Path::new(PROXY_CONFIG_FILE)
        );
    }

    #[test]
    fn both_kinds_mount_the_fallback_ring_as_an_optional_directory() {
        let c = WsCluster::test();
        for pod in [pod_of_node(&c), pod_of_proxy(&c)] {
            let cm = volume_of(&pod, "ring")
                .and_then(|v| v.config_map.clone())
                .expect("ring volume");
            assert_eq!(cm.name, "chat-ring");
            assert_eq!(cm.optional, Some(true));
            assert_eq!(mount_of(&pod, "ring").mount_path, RING_FILE_DIR);
            assert_eq!(
                Path::new(RING_FILE_DIR).join(RING_FILE_KEY),
                Path::new(RING_FILE)
            );
            let env = env_of(&pod.containers[0]);
            let want = fallback_ring_file_accepted().then(|| RING_FILE.to_string());
            assert_eq!(
                env.get(flags::RING_FILE.env).and_then(|e| e.value.clone()),
                want
            );
        }
    }

    #[test]
    fn sni_secrets_are_projected_where_the_proxy_reads_them_and_named_by_its_flag() {
        let mut c = WsCluster::test();
        let secret = |name: &str| crate::crd::SecretRef { name: name.into() };
        c.spec.proxy.tls = Some(crate::crd::ProxyTls {
            secret_ref: secret("edge-tls"),
            port: 443,
            sni_secret_refs: vec![secret("rooms-tls"), secret("admin-tls")],
        });
        let pod = pod_of_proxy(&c);
        let projected = volume_of(&pod, "tls-sni")
            .and_then(|v| v.projected.clone())
            .expect("tls-sni volume");
        let sources = projected.sources.expect("sources");
        assert_eq!(mount_of(&pod, "tls-sni").mount_path, TLS_SNI_DIR);
        let env = env_of(&pod.containers[0]);
        let dirs = format!("{TLS_SNI_DIR}/0,{TLS_SNI_DIR}/1");
        let value = env
            .get(flags::TLS_SNI_CERT.env)
            .and_then(|e| e.value.clone());
        assert_eq!(value, Some(dirs));
        for (i, name) in ["rooms-tls", "admin-tls"].into_iter().enumerate() {
            let projection = sources[i].secret.clone().expect("a Secret");
            assert_eq!(projection.name, name);
            let paths: Vec<String> = projection
                .items
                .expect("items")
                .into_iter()
                .map(|k| format!("{TLS_SNI_DIR}/{}", k.path))
                .collect();
            let dir = format!("{TLS_SNI_DIR}/{i}");
            let expected: Vec<String> = [
                wscluster_proxy::cli::TLS_SECRET_CERT,
                wscluster_proxy::cli::TLS_SECRET_KEY,
            ]
            .map(|file| format!("{dir}/{file}"))
            .to_vec();
            assert_eq!(paths, expected);
        }
    }

    #[test]
    fn tls_mounts_the_whole_secret_and_opens_the_wss_port_on_pod_and_service() {
        let mut c = WsCluster::test();
        c.spec.proxy.tls = Some(crate::crd::ProxyTls {
            secret_ref: crate::crd::SecretRef {
                name: "edge-tls".into(),
            },
            port: 443,
            sni_secret_refs: Vec::new(),
        });
        let pod = pod_of_proxy(&c);
        let secret = volume_of(&pod, "tls")
            .and_then(|v| v.secret.clone())
            .expect("tls volume");
        assert_eq!(secret.secret_name.as_deref(), Some("edge-tls"));
        assert_eq!(secret.items, None, "the whole Secret, so both files rotate");
        assert_eq!(mount_of(&pod, "tls").mount_path, TLS_DIR);
        for file in [TLS_CERT_FILE, TLS_KEY_FILE] {
            assert_eq!(Path::new(file).parent(), Some(Path::new(TLS_DIR)));
        }
        let ports = pod.containers[0].ports.clone().expect("ports");
        assert!(
            ports
                .iter()
                .any(|p| p.name.as_deref() == Some("wss") && p.container_port == PROXY_TLS_PORT)
        );
        let env = env_of(&pod.containers[0]);
        for (flag, value) in [
            (flags::TLS_LISTEN, format!("0.0.0.0:{PROXY_TLS_PORT}")),
            (flags::TLS_CERT_FILE, TLS_CERT_FILE.to_string()),
            (flags::TLS_KEY_FILE, TLS_KEY_FILE.to_string()),
        ] {
            let want = binary_reads(flags::proxy::ALL, flag).then_some(value);
            assert_eq!(env.get(flag.env).and_then(|e| e.value.clone()), want);
        }
        let svc = proxy_service(&c).expect("svc").spec.expect("spec");
        let names: Vec<_> = svc
            .ports
            .expect("ports")
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.port, p.target_port))
            .collect();
        assert_eq!(
            names,
            [
                ("ws".to_string(), 80, Some(IntOrString::String("ws".into()))),
                (
                    "wss".to_string(),
                    443,
                    Some(IntOrString::String("wss".into()))
                ),
            ]
        );
        let plain = pod_of_proxy(&WsCluster::test());
        assert!(volume_of(&plain, "tls").is_none());
    }

    #[test]
    fn ca_bundles_are_mounted_where_their_flags_point() {
        let mut c = full_cluster();
        let ca = |name: &str| {
            Some(SecretKeyRef {
                name: name.into(),
                key: "ca.crt".into(),
            })
        };
        if let Some(r) = c.spec.redis.as_mut() {
            r.ca_secret_ref = ca("redis-ca");
        }
        if let Some(r) = c.spec.rabbitmq.as_mut() {
            r.ca_secret_ref = ca("amqp-ca");
        }
        let node = pod_of_node(&c);
        let proxy = pod_of_proxy(&c);
        let cases = [
            (
                &node,
                "redis-ca",
                "redis-ca",
                REDIS_CA_FILE,
                flags::REDIS_CA_FILE,
                flags::node::ALL,
            ),
            (
                &node,
                "amqp-ca",
                "amqp-ca",
                AMQP_CA_FILE,
                flags::AMQP_CA_FILE,
                flags::node::ALL,
            ),
            (
                &proxy,
                "amqp-ca",
                "amqp-ca",
                AMQP_CA_FILE,
                flags::AMQP_CA_FILE,
                flags::proxy::ALL,
            ),
        ];
        for (pod, volume, secret, file, flag, all) in cases {
            let v = volume_of(pod, volume)
                .and_then(|v| v.secret.clone())
                .expect("ca");
            assert_eq!(v.secret_name.as_deref(), Some(secret));
            let item = &v.items.expect("items")[0];
            let mount = mount_of(pod, volume);
            assert_eq!(
                Path::new(&mount.mount_path).join(&item.path),
                Path::new(file)
            );
            let env = env_of(&pod.containers[0]);
            let want = binary_reads(all, flag).then(|| file.to_string());
            assert_eq!(env.get(flag.env).and_then(|e| e.value.clone()), want);
        }
        assert!(
            volume_of(&proxy, "redis-ca").is_none(),
            "proxies need no redis"
        );
    }

    #[test]
    fn the_proxy_grace_period_exceeds_its_drain_and_hard_deadline_at_the_schema_extremes() {
        // After SIGTERM (which follows the preStop sleep) the proxy waits the drain, then resets
        // every remaining client at once and exits by its hard deadline: the kubelet must wait
        // longer than all of that.
        let hard_deadline =
            i64::try_from(wscluster_proxy::cli::HARD_DEADLINE_EXTRA.as_secs()).expect("seconds");
        for drain in [0, 1, 30, 3600] {
            let mut c = WsCluster::test();
            c.spec.drain_timeout_seconds = drain;
            let grace = pod_of_proxy(&c)
                .termination_grace_period_seconds
                .expect("grace");
            let needed = PROXY_PRESTOP_SLEEP_SECONDS + i64::from(drain) + hard_deadline;
            assert!(grace > needed, "drain {drain}: grace {grace} <= {needed}");
        }
        let pod = pod_of_proxy(&WsCluster::test());
        // 5 s preStop + 30 s drain + the proxy's 15 s hard deadline + 5 s margin.
        assert_eq!(pod.termination_grace_period_seconds, Some(55));
        let sleep = pod.containers[0]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map(|s| s.seconds);
        assert_eq!(sleep, Some(PROXY_PRESTOP_SLEEP_SECONDS));
        let node = pod_of_node(&WsCluster::test());
        assert!(node.termination_grace_period_seconds > Some(NODE_GRACE_PERIOD_SECONDS));
    }

    #[test]
    fn a_pod_template_adds_to_the_pods_and_never_replaces_the_operators_parts() {
        use crate::crd::{PodTemplate, ProbeTimings};
        use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, LocalObjectReference, Toleration};
        let user = PodTemplate {
            labels: BTreeMap::from([("team".into(), "chat".into())]),
            annotations: BTreeMap::from([("a".into(), "b".into())]),
            node_selector: BTreeMap::from([("pool".into(), "ws".into())]),
            tolerations: vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            }],
            priority_class_name: Some("high".into()),
            image_pull_secrets: vec![LocalObjectReference {
                name: "regcred".into(),
            }],
            volumes: vec![Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }],
            volume_mounts: vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            }],
            command: vec!["/app/server".into()],
            args: vec!["--verbose".into()],
            startup_probe: Some(ProbeTimings {
                failure_threshold: Some(60),
                ..ProbeTimings::default()
            }),
            readiness_probe: Some(ProbeTimings {
                period_seconds: Some(5),
                ..ProbeTimings::default()
            }),
            ..PodTemplate::default()
        };
        let mut c = WsCluster::test();
        c.spec.node.pod = user.clone();
        c.spec.node.service_account_name = Some("app".into());
        c.spec.proxy.pod = user;
        let sts = node_statefulset(&c, &settings(), 1).expect("sts");
        let dep = proxy_deployment(&c, &settings(), "h").expect("dep");
        let templates = [
            sts.spec.expect("spec").template,
            dep.spec.expect("spec").template,
        ];
        for (t, component) in templates
            .into_iter()
            .zip([Component::Node, Component::Proxy])
        {
            let meta = t.metadata.expect("meta");
            let labels = meta.labels.expect("labels");
            assert_eq!(labels["team"], "chat");
            assert_eq!(labels[labels::COMPONENT], component.as_str());
            assert_eq!(meta.annotations.expect("annotations")["a"], "b");
            let pod = t.spec.expect("pod");
            assert_eq!(pod.node_selector.as_ref().expect("selector")["pool"], "ws");
            assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
            assert_eq!(
                pod.image_pull_secrets.as_ref().expect("pull")[0].name,
                "regcred"
            );
            assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
            assert!(volume_of(&pod, "tmp").is_some());
            assert!(
                volume_of(&pod, "ring-token").is_some(),
                "the operator's stay"
            );
            assert_eq!(pod.security_context, Some(restricted_pod()));
            let container = &pod.containers[0];
            assert_eq!(mount_of(&pod, "tmp").mount_path, "/tmp");
            assert_eq!(container.command, Some(vec!["/app/server".to_string()]));
            assert_eq!(container.args, Some(vec!["--verbose".to_string()]));
            assert_eq!(container.security_context, Some(restricted_container()));
            let ready = container.readiness_probe.as_ref().expect("readiness");
            assert_eq!(ready.period_seconds, Some(5));
            assert!(ready.http_get.is_some(), "the operator's endpoint stays");
            let startup = container.startup_probe.as_ref().expect("startup");
            assert_eq!(startup.failure_threshold, Some(60));
            assert_eq!(
                startup.http_get.as_ref().map(|h| h.port.clone()),
                container
                    .liveness_probe
                    .as_ref()
                    .and_then(|p| p.http_get.as_ref())
                    .map(|h| h.port.clone())
            );
            let spread = pod.topology_spread_constraints.expect("spread");
            assert_eq!(spread.len(), 2, "defaults kept when the user gives none");
        }
        assert_eq!(pod_of_node(&c).service_account_name.as_deref(), Some("app"));
        assert_eq!(pod_of_node(&c).automount_service_account_token, Some(false));
        assert_eq!(
            pod_of_node(&WsCluster::test()).containers[0].startup_probe,
            None
        );
    }

    #[test]
    fn pods_spread_over_hosts_and_zones_unless_the_user_gives_a_spread() {
        let c = WsCluster::test();
        for (pod, component) in [
            (pod_of_node(&c), Component::Node),
            (pod_of_proxy(&c), Component::Proxy),
        ] {
            let spread = pod.topology_spread_constraints.expect("spread");
            let keys: Vec<_> = spread.iter().map(|s| s.topology_key.as_str()).collect();
            assert_eq!(
                keys,
                ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
            );
            for s in &spread {
                assert_eq!(s.when_unsatisfiable, "ScheduleAnyway");
                assert_eq!(s.max_skew, 1);
                let selector = s
                    .label_selector
                    .as_ref()
                    .and_then(|l| l.match_labels.clone());
                let cluster = ClusterRef::of(&c).expect("ref");
                assert_eq!(selector, Some(cluster.selector_labels(component)));
            }
        }
        let mut own = WsCluster::test();
        own.spec.proxy.pod.topology_spread_constraints = vec![TopologySpreadConstraint {
            max_skew: 2,
            topology_key: "rack".into(),
            when_unsatisfiable: "DoNotSchedule".into(),
            ..TopologySpreadConstraint::default()
        }];
        let spread = pod_of_proxy(&own)
            .topology_spread_constraints
            .expect("spread");
        assert_eq!(spread.len(), 1);
        assert_eq!(spread[0].topology_key, "rack");
    }

    #[test]
    fn the_client_service_passes_the_users_exposure_settings_through() {
        use crate::crd::{IpFamily, IpFamilyPolicy, ServiceType, TrafficPolicy};
        let mut c = WsCluster::test();
        let p = &mut c.spec.proxy;
        p.service_type = ServiceType::LoadBalancer;
        p.service_annotations = BTreeMap::from([("lb.example/internal".into(), "true".into())]);
        p.load_balancer_source_ranges = vec!["10.0.0.0/8".into()];
        p.external_traffic_policy = Some(TrafficPolicy::Local);
        p.ip_families = vec![IpFamily::IPv6, IpFamily::IPv4];
        p.ip_family_policy = Some(IpFamilyPolicy::PreferDualStack);
        let svc = proxy_service(&c).expect("svc");
        let annotations = svc.metadata.annotations.expect("annotations");
        assert_eq!(annotations["lb.example/internal"], "true");
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec!["10.0.0.0/8".to_string()])
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            spec.ip_families,
            Some(vec!["IPv6".to_string(), "IPv4".to_string()])
        );
        assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
        let plain = proxy_service(&WsCluster::test()).expect("svc");
        assert_eq!(plain.metadata.annotations, None);
        let spec = plain.spec.expect("spec");
        assert_eq!(
            (
                spec.load_balancer_source_ranges,
                spec.external_traffic_policy,
                spec.ip_families
            ),
            (None, None, None)
        );
    }

    #[test]
    fn proxies_may_lose_one_pod_at_a_time_to_voluntary_disruption() {
        let pdb = proxy_pdb(&WsCluster::test()).expect("pdb");
        assert_eq!(pdb.metadata.name.as_deref(), Some("chat-proxy"));
        let spec = pdb.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        let cluster = ClusterRef::of(&WsCluster::test()).expect("ref");
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(cluster.selector_labels(Component::Proxy))
        );
    }

    #[test]
    fn pods_log_json_unless_the_spec_says_text() {
        let mut c = WsCluster::test();
        for (format, want) in [
            (crate::crd::LogFormat::Json, "json"),
            (crate::crd::LogFormat::Text, "text"),
        ] {
            c.spec.log_format = format;
            for pod in [pod_of_node(&c), pod_of_proxy(&c)] {
                let env = env_of(&pod.containers[0]);
                assert_eq!(env[flags::LOG_FORMAT.env].value.as_deref(), Some(want));
            }
        }
    }
}
