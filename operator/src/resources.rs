//! Desired child objects of a `WsCluster`, as pure functions of the spec.
//!
//! Each function returns the complete object the operator server-side applies; it never reads
//! the cluster. Names, labels, ports and mount paths follow the project's fixed contract:
//!
//! | object | name | notes |
//! |---|---|---|
//! | StatefulSet + headless Service | `<c>-node` | port `ws`; member id = pod name |
//! | Deployment + Service | `<c>-proxy` | Service port → 8080 `ws`, admin 9090 |
//! | PodDisruptionBudget | `<c>-node` | one node pod down at a time |
//! | ConfigMap | `<c>-config` | `proxy.yaml` at `/etc/wscluster/proxy.yaml` |
//! | Secret | `<c>-ring-token` | `token` at `/var/run/wscluster/ring/token` |

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, Secret,
    SecretKeySelector, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use wscluster_proxy::config::{DEFAULT_JWT_KEY_FILE, KeySourceSpec, ProxyConfig};
use wscluster_proxy::error::Error as ProxyError;

use wscluster_runtime::flags::{self, Flag};

use crate::crd::{ConnectionSpec, WsCluster, WsClusterSpec};
use crate::error::{Error, Result};

/// Port the proxy serves clients on inside its pod.
pub const PROXY_PORT: i32 = 8080;
/// Port of the proxy's admin endpoints (`/healthz`, `/readyz`, `/metrics`).
pub const PROXY_ADMIN_PORT: i32 = 9090;
/// Directory the ring token Secret is mounted at.
pub const RING_TOKEN_DIR: &str = "/var/run/wscluster/ring";
/// File of the ring token inside the pods.
pub const RING_TOKEN_FILE: &str = "/var/run/wscluster/ring/token";
/// Key of the token in the ring token Secret.
pub const RING_TOKEN_KEY: &str = "token";
/// File of the proxy configuration inside proxy pods.
pub const PROXY_CONFIG_FILE: &str = "/etc/wscluster/proxy.yaml";
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
/// Seconds a node pod gets to close its sessions on shutdown: the node's own grace period
/// (20 s by default) plus margin for the last writes to Redis.
pub const NODE_TERMINATION_GRACE_SECONDS: i64 = 30;

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

/// Environment every node and proxy pod gets: identity, cluster, ring stream, RabbitMQ.
fn common_env(c: &WsCluster, cluster: &ClusterRef, settings: &Settings) -> Vec<EnvVar> {
    let mut env = vec![
        pod_name_env(),
        env_value(flags::CLUSTER_ID, cluster.cluster_id()),
        env_value(flags::RING_URL, settings.ring_url.clone()),
        env_value(flags::RING_TOKEN_FILE, RING_TOKEN_FILE),
    ];
    if let Some(amqp) = &c.spec.rabbitmq {
        env.push(env_from_connection(flags::AMQP_URL, amqp));
    }
    env
}

/// A node container's environment: the common part, Redis, the listen port, then the user's.
fn node_env(c: &WsCluster, cluster: &ClusterRef, settings: &Settings) -> Vec<EnvVar> {
    let mut env = common_env(c, cluster, settings);
    if let Some(redis) = &c.spec.redis {
        env.push(env_from_connection(flags::node::REDIS_URL, redis));
    }
    env.push(env_value(
        flags::node::LISTEN,
        format!("0.0.0.0:{}", c.spec.node.port),
    ));
    env.extend(c.spec.node.env.iter().cloned());
    env
}

/// A proxy container's environment: the common part (proxies need no Redis), both listen
/// ports, the config file, then the user's.
fn proxy_env(c: &WsCluster, cluster: &ClusterRef, settings: &Settings) -> Vec<EnvVar> {
    let mut env = common_env(c, cluster, settings);
    env.push(env_value(
        flags::proxy::LISTEN,
        format!("0.0.0.0:{PROXY_PORT}"),
    ));
    env.push(env_value(
        flags::proxy::ADMIN_LISTEN,
        format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
    ));
    env.push(env_value(flags::proxy::CONFIG, PROXY_CONFIG_FILE));
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
    flags::REDIS_URL.env,
    flags::AMQP_URL.env,
    flags::LISTEN.env,
    flags::ADMIN_LISTEN.env,
    flags::CONFIG.env,
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

fn ring_token_volume(cluster: &ClusterRef) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "ring-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(cluster.token_secret_name()),
                items: Some(vec![KeyToPath {
                    key: RING_TOKEN_KEY.into(),
                    path: RING_TOKEN_KEY.into(),
                    mode: None,
                }]),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "ring-token".into(),
            mount_path: RING_TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

fn label_selector(cluster: &ClusterRef, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(cluster.selector_labels(component)),
        match_expressions: None,
    }
}

/// The node StatefulSet with `replicas` pods (the scale-down state machine decides how many;
/// it is not always `spec.replicas`).
pub fn node_statefulset(c: &WsCluster, settings: &Settings, replicas: i32) -> Result<StatefulSet> {
    let cluster = ClusterRef::of(c)?;
    let node = &c.spec.node;
    let env = node_env(c, &cluster, settings);
    let (volume, mount) = ring_token_volume(&cluster);
    let container = Container {
        name: "node".into(),
        image: Some(node.image.clone()),
        image_pull_policy: Some(node.image_pull_policy.as_str().into()),
        ports: Some(vec![tcp_port("ws", node.port)]),
        env: Some(env),
        readiness_probe: Some(http_probe(&node.readiness_path, "ws", 2)),
        liveness_probe: Some(http_probe(&node.liveness_path, "ws", 10)),
        resources: node.resources.clone(),
        volume_mounts: Some(vec![mount]),
        ..Container::default()
    };
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
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(cluster.labels(Component::Node)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![volume]),
                    termination_grace_period_seconds: Some(NODE_TERMINATION_GRACE_SECONDS),
                    ..PodSpec::default()
                }),
            },
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

/// The proxy Deployment. `config_hash` is [`config_hash`] of the rendered `proxy.yaml`.
pub fn proxy_deployment(
    c: &WsCluster,
    settings: &Settings,
    config_hash: &str,
) -> Result<Deployment> {
    let cluster = ClusterRef::of(c)?;
    // 1. Volumes: the ring token, proxy.yaml, and the JWT key when a key source verifies one.
    let mut volumes = vec![ring_token_volume(&cluster), proxy_config_volume(&cluster)];
    volumes.extend(jwt_key_volume(c));
    let (volumes, mounts): (Vec<Volume>, Vec<VolumeMount>) = volumes.into_iter().unzip();
    // 2. The container: its environment, ports, probes and mounts.
    let container = proxy_container(c, proxy_env(c, &cluster, settings), mounts);
    // 3. The Deployment, annotated with the config hash so a config change rolls the pods.
    Ok(Deployment {
        metadata: cluster.meta(cluster.proxy_name(), Component::Proxy),
        spec: Some(DeploymentSpec {
            replicas: Some(c.spec.proxy.replicas),
            selector: label_selector(&cluster, Component::Proxy),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(cluster.labels(Component::Proxy)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// The ConfigMap's `proxy.yaml`, mounted as a single file at [`PROXY_CONFIG_FILE`].
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
            mount_path: PROXY_CONFIG_FILE.into(),
            sub_path: Some(PROXY_CONFIG_KEY.into()),
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

/// The proxy container: clients on `ws`, probes on `admin`.
fn proxy_container(c: &WsCluster, env: Vec<EnvVar>, mounts: Vec<VolumeMount>) -> Container {
    let proxy = &c.spec.proxy;
    Container {
        name: "proxy".into(),
        image: Some(proxy.image.clone()),
        image_pull_policy: Some(proxy.image_pull_policy.as_str().into()),
        ports: Some(vec![
            tcp_port("ws", PROXY_PORT),
            tcp_port("admin", PROXY_ADMIN_PORT),
        ]),
        env: Some(env),
        readiness_probe: Some(http_probe("/readyz", "admin", 2)),
        liveness_probe: Some(http_probe("/healthz", "admin", 10)),
        resources: proxy.resources.clone(),
        volume_mounts: Some(mounts),
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

/// The client-facing Service of the proxies.
pub fn proxy_service(c: &WsCluster) -> Result<Service> {
    let cluster = ClusterRef::of(c)?;
    let proxy = &c.spec.proxy;
    Ok(Service {
        metadata: cluster.meta(cluster.proxy_name(), Component::Proxy),
        spec: Some(ServiceSpec {
            type_: Some(proxy.service_type.as_str().into()),
            selector: Some(cluster.selector_labels(Component::Proxy)),
            ports: Some(vec![
                ServicePort {
                    name: Some("ws".into()),
                    port: proxy.service_port,
                    target_port: Some(IntOrString::String("ws".into())),
                    node_port: proxy.node_port,
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("admin".into()),
                    port: PROXY_ADMIN_PORT,
                    target_port: Some(IntOrString::String("admin".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
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

/// The ring token Secret with a given token (generated once by the controller, then kept).
pub fn ring_token_secret(c: &WsCluster, token: &str) -> Result<Secret> {
    let cluster = ClusterRef::of(c)?;
    Ok(Secret {
        metadata: cluster.meta(cluster.token_secret_name(), Component::Config),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            RING_TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
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
        // The seed's `/send` on the public port: off until the WsCluster has the switch that
        // turns it on for nodes and proxies together.
        legacy_send: false,
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

    use crate::crd::{JwtSource, KeySource, SecretKeyRef};
    use crate::fixtures::WsClusterExt;

    fn settings() -> Settings {
        Settings {
            ring_url: "http://op:7400".into(),
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
    fn the_proxy_service_maps_the_service_port_to_ws_and_exposes_admin() {
        let mut c = WsCluster::test();
        c.spec.proxy.service_port = 443;
        let svc = proxy_service(&c).expect("svc");
        let ports = svc.spec.expect("spec").ports.expect("ports");
        assert_eq!(ports[0].port, 443);
        assert_eq!(ports[0].target_port, Some(IntOrString::String("ws".into())));
        assert_eq!(ports[1].port, 9090);
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
    fn a_config_change_changes_the_pod_template_hash() {
        let a = WsCluster::test();
        let mut b = WsCluster::test();
        b.spec.resets.rate_per_second = 50;
        let ha = config_hash(&proxy_config_yaml(&a).expect("yaml"));
        let hb = config_hash(&proxy_config_yaml(&b).expect("yaml"));
        assert_ne!(ha, hb);
        assert_eq!(ha, config_hash(&proxy_config_yaml(&a).expect("yaml")));
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
            if let (Some(flag), Some(value)) = (flag, &var.value) {
                args.extend(flag.arg(value.as_str()));
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
}
