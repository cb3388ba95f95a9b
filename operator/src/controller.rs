//! `reconcile` and `error_policy`: the I/O around the pure decisions.
//!
//! One reconcile of cluster `<ns>/<c>`, in this order (the API mock tests assert it):
//!
//! 1. check the spec ([`crate::validate`]) and GET every Secret it references; a problem sets
//!    `Degraded` (status + Warning Event) and stops here, touching nothing else;
//! 2. GET the generated Secrets (ring tokens, proxy secret, API keys), creating each missing
//!    value once at random and never replacing an existing one; hand the ring tokens (one per
//!    subscriber kind) to the ring hub;
//! 3. apply (server-side, field manager `wscluster-operator`, forced) the ConfigMap, the
//!    node, proxy, API and metrics Services, the PodDisruptionBudget and the node
//!    NetworkPolicy;
//! 4. GET the StatefulSet, decide the scaling step ([`crate::scaling`]), apply the StatefulSet
//!    with the replicas it chose, apply the proxy Deployment;
//! 5. LIST the node Service's EndpointSlices, compute members and the ring
//!    ([`crate::membership`]);
//! 6. apply the status (ring version and members first in status, *then* publish: see
//!    `membership` for why), publish to the hub, emit Events for what changed.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};
use wscluster_ring::RingSnapshot;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring_stream::KindTokens;

use crate::converge::{Intent, NodeCounts, Pass, Platform, converge};
use crate::crd::{WsCluster, WsClusterStatus};
use crate::error::{Error, Result};
use crate::membership::{Endpoint, endpoints, snapshot_from_status};
use crate::metrics::Metrics;
use crate::probe::ConnectionProbe;
use crate::resources::{
    self, ClusterRef, FIELD_MANAGER, Generated, RING_TOKEN_NODE_KEY, RING_TOKEN_PROXY_KEY,
    Settings, labels,
};
use crate::scaling::{ScalePlan, Step};
use crate::status::degraded_status;
use crate::validate::{referenced_secrets, validate_ring_change, validate_spec};

/// Requeue interval of a cluster whose spec cannot be reconciled. Secrets are not watched
/// (the operator may not list them), so a missing one is polled at this pace.
pub const DEGRADED_REQUEUE: Duration = Duration::from_secs(30);
/// Requeue interval while waiting for proxies to apply a ring: acks are not events the
/// controller watches, so it looks again soon.
pub const WAIT_REQUEUE: Duration = Duration::from_secs(2);
/// Requeue interval while a drain waits for its timeout: how often the leaving nodes are asked
/// whether they are empty.
pub const DRAIN_POLL: Duration = Duration::from_secs(5);
/// Requeue interval of a settled cluster: refreshes "proxies in sync" and catches proxies that
/// connected since.
pub const STEADY_REQUEUE: Duration = Duration::from_secs(60);
/// Requeue interval after a transient error.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(5);

pub use crate::converge::RingAuthority;

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client (a `tower_test` mock in tests).
    pub client: Client,
    /// The ring stream's hub: rings are published here and acks read from here.
    pub ring: Arc<dyn RingAuthority>,
    /// The ring URL pods are told to use.
    pub settings: Settings,
    /// Publishes Kubernetes Events (ring changes, drains, errors).
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The clock, an argument so tests fix time (drain timeouts, condition times).
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Makes a new secret value for a generated Secret's key (`<secret>/<key>` names it);
    /// tests fix it so request bodies are predictable.
    pub new_token: fn(&str) -> String,
    /// Asks draining nodes for their session count, so a drain ends early once they are empty.
    pub probe: Arc<dyn ConnectionProbe>,
    /// Cluster ids this process handed to the hub, so those of deleted clusters can be
    /// removed (without a finalizer, reconcile never sees a deletion).
    pub known: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Context {
    /// Removes from the hub and the metrics every known cluster not in `present` (the
    /// controller's store), returning their ids.
    pub fn forget_departed(&self, present: &std::collections::BTreeSet<String>) -> Vec<String> {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let departed: Vec<String> = known.difference(present).cloned().collect();
        for id in &departed {
            known.remove(id);
        }
        drop(known);
        for id in &departed {
            self.ring.remove_cluster(id);
            self.metrics.forget_cluster(id);
            info!(cluster = %id, "cluster deleted; ring removed");
        }
        departed
    }
}

/// A random 256-bit token, hex. The argument (what it is for) does not matter: every value is
/// independent.
pub fn random_token(_purpose: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .patch(&name, &apply_params(), &Patch::Apply(object))
        .await?)
}

async fn publish_event(
    ctx: &Context,
    obj: &WsCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(error = %e, reason, "publishing an event failed");
    }
}

async fn patch_status(ctx: &Context, obj: &WsCluster, status: &WsClusterStatus) -> Result<()> {
    let cluster = ClusterRef::of(obj)?;
    let api: Api<WsCluster> = Api::namespaced(ctx.client.clone(), &cluster.namespace);
    let patch = serde_json::json!({
        "apiVersion": "wscluster.io/v1alpha1",
        "kind": "WsCluster",
        "metadata": {"name": cluster.name, "namespace": cluster.namespace},
        "status": status,
    });
    api.patch_status(&cluster.name, &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Records a user error: `Degraded` in status and a Warning Event. Other clusters are not
/// affected; this one is retried at [`DEGRADED_REQUEUE`].
async fn degrade(obj: &WsCluster, ctx: &Context, error: &Error) -> Result<Action> {
    let reason = error.metric_label();
    ctx.metrics
        .reconcile_errors
        .get_or_create(&[("error", reason)])
        .inc();
    warn!(cluster = %obj.name_any(), %error, "spec cannot be reconciled");
    let mut status = degraded_status(
        obj.status.as_ref(),
        obj.metadata.generation,
        reason,
        error.to_string(),
        (ctx.clock)(),
    );
    let cluster = ClusterRef::of(obj)?;
    if status.selector.is_empty() {
        // The scale subresource (and an HPA) needs the selector even before the first success.
        status.selector = cluster.node_selector_string();
    }
    serve_recorded_ring(obj, ctx, &cluster).await?;
    patch_status(ctx, obj, &status).await?;
    publish_event(ctx, obj, EventType::Warning, reason, error.to_string()).await;
    Ok(Action::requeue(DEGRADED_REQUEUE))
}

/// While degraded nothing is applied, but the ring the status recorded stays served: after an
/// operator restart the hub is empty, and proxies or nodes starting meanwhile would otherwise
/// get no ring at all. Needs both ring tokens; without them there is nothing to serve.
async fn serve_recorded_ring(obj: &WsCluster, ctx: &Context, cluster: &ClusterRef) -> Result<()> {
    let cluster_id = cluster.cluster_id();
    if ctx.ring.current(&cluster_id).is_some() {
        return Ok(());
    }
    let Some(recorded) = snapshot_from_status(&cluster_id, obj.status.as_ref()) else {
        return Ok(());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &cluster.namespace);
    let Some(tokens) = read_tokens(&secrets, cluster).await? else {
        return Ok(());
    };
    ctx.ring.set_tokens(&cluster_id, tokens);
    remember(ctx, &cluster_id);
    let version = recorded.version;
    ctx.ring.publish(recorded)?;
    info!(version, "serving the recorded ring while degraded");
    Ok(())
}

fn remember(ctx: &Context, cluster_id: &str) {
    ctx.known
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(cluster_id.to_string());
}

/// The values of a generated Secret's keys that exist and are not blank.
async fn read_generated(
    secrets: &Api<Secret>,
    cluster: &ClusterRef,
    which: Generated,
) -> Result<BTreeMap<String, String>> {
    let data = secrets
        .get_opt(&cluster.generated_name(which))
        .await?
        .and_then(|s| s.data)
        .unwrap_or_default();
    Ok(data
        .into_iter()
        .filter(|(k, _)| which.keys().contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
        .filter(|(_, v)| !v.trim().is_empty())
        .collect())
}

/// The ring tokens from the ring token Secret, if it holds both.
async fn read_tokens(secrets: &Api<Secret>, cluster: &ClusterRef) -> Result<Option<KindTokens>> {
    let values = read_generated(secrets, cluster, Generated::RingTokens).await?;
    Ok(kind_tokens(&values))
}

fn kind_tokens(values: &BTreeMap<String, String>) -> Option<KindTokens> {
    let get = |key: &str| values.get(key).map(|v| v.trim().to_string());
    Some(KindTokens::new(
        get(RING_TOKEN_PROXY_KEY)?,
        get(RING_TOKEN_NODE_KEY)?,
    ))
}

/// Reads a generated Secret, creating its missing values once (existing values are kept, so a
/// rotated key is never overwritten) and applying it only when something was missing.
async fn ensure_generated(
    ctx: &Context,
    secrets: &Api<Secret>,
    obj: &WsCluster,
    cluster: &ClusterRef,
    which: Generated,
) -> Result<BTreeMap<String, String>> {
    let mut values = read_generated(secrets, cluster, which).await?;
    let mut missing = false;
    for key in which.keys() {
        if !values.contains_key(*key) {
            let name = cluster.generated_name(which);
            let token = (ctx.new_token)(&format!("{name}/{key}"));
            values.insert((*key).to_string(), resources::initial_value(which, &token));
            missing = true;
        }
    }
    if missing {
        let secret = resources::generated_secret(obj, which, &values)?;
        apply(&ctx.client, &cluster.namespace, &secret).await?;
        info!(cluster = %cluster.cluster_id(), secret = %cluster.generated_name(which), "generated the missing secret values");
    }
    Ok(values)
}

/// Ensures every generated Secret and returns the ring tokens.
async fn ensure_credentials(
    ctx: &Context,
    secrets: &Api<Secret>,
    obj: &WsCluster,
    cluster: &ClusterRef,
) -> Result<KindTokens> {
    let mut tokens = None;
    for which in Generated::ALL {
        let values = ensure_generated(ctx, secrets, obj, cluster, which).await?;
        if which == Generated::RingTokens {
            tokens = kind_tokens(&values);
        }
    }
    tokens.ok_or(Error::MissingField("ring token secret keys"))
}

/// Checks the Secrets the spec references: they must exist and hold the key.
async fn check_secrets(secrets: &Api<Secret>, obj: &WsCluster) -> Result<()> {
    for used in referenced_secrets(&obj.spec) {
        let name = &used.secret.name;
        let Some(secret) = secrets.get_opt(name).await? else {
            return Err(Error::SecretNotFound { name: name.clone() });
        };
        let has_key = secret
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(&used.secret.key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(&used.secret.key));
        if !has_key {
            return Err(Error::SecretKeyMissing {
                name: name.clone(),
                key: used.secret.key.clone(),
            });
        }
    }
    Ok(())
}

/// Reconciles one `WsCluster`. See the module docs for the steps.
#[instrument(skip_all, fields(cluster = %obj.namespace().unwrap_or_default() + "/" + &obj.name_any()))]
pub async fn reconcile(obj: Arc<WsCluster>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    let result = reconcile_inner(&obj, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(obj: &WsCluster, ctx: &Context) -> Result<Action> {
    let cluster = ClusterRef::of(obj)?;
    let cluster_id = cluster.cluster_id();
    let ns = cluster.namespace.as_str();

    // 1. Input the schema could not check.
    let checked = validate_spec(&obj.spec)
        .and_then(|()| validate_ring_change(&obj.spec, obj.status.as_ref()));
    if let Err(message) = checked {
        return degrade(obj, ctx, &Error::InvalidSpec(message)).await;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Err(e) = check_secrets(&secrets, obj).await {
        return if e.is_user_error() {
            degrade(obj, ctx, &e).await
        } else {
            Err(e)
        };
    }

    // 2. The generated credentials; the ring tokens go to the hub.
    let tokens = ensure_credentials(ctx, &secrets, obj, &cluster).await?;
    ctx.ring.set_tokens(&cluster_id, tokens);
    remember(ctx, &cluster_id);

    // 3. Configuration and Services.
    let config_hash = resources::proxy_config_hash(obj)?;
    apply(&ctx.client, ns, &resources::config_map(obj)?).await?;
    apply(&ctx.client, ns, &resources::node_service(obj)?).await?;
    apply(&ctx.client, ns, &resources::proxy_service(obj)?).await?;
    apply(&ctx.client, ns, &resources::proxy_api_service(obj)?).await?;
    apply(&ctx.client, ns, &resources::metrics_service(obj)?).await?;
    apply(&ctx.client, ns, &resources::node_pdb(obj)?).await?;
    apply(&ctx.client, ns, &resources::proxy_pdb(obj)?).await?;
    let policy = resources::node_network_policy(obj, &ctx.settings.operator_namespace)?;
    apply(&ctx.client, ns, &policy).await?;

    // 4-6. Scaling, membership, ring and status: the decision core (`crate::converge`) on the
    // StatefulSet, its EndpointSlices and the proxy Deployment.
    let intent = Intent {
        cluster_id: &cluster_id,
        spec: &obj.spec,
        generation: obj.metadata.generation,
        previous: obj.status.as_ref(),
        selector: cluster.node_selector_string(),
        now: (ctx.clock)(),
    };
    let mut platform = KubePlatform {
        ctx,
        obj,
        cluster: &cluster,
        config_hash,
    };
    let pass = converge(&mut platform, ctx.ring.as_ref(), &intent).await?;
    report(ctx, obj, &cluster_id, &pass).await;
    Ok(requeue_after(&pass))
}

/// The Kubernetes side of the decision core: the node StatefulSet, its EndpointSlices, the proxy
/// Deployment and the WsCluster's status.
struct KubePlatform<'a> {
    /// What every reconcile shares (client, probe, settings).
    ctx: &'a Context,
    /// The cluster being reconciled.
    obj: &'a WsCluster,
    /// Its checked identity.
    cluster: &'a ClusterRef,
    /// Hash of the rendered proxy configuration, a pod template annotation.
    config_hash: String,
}

impl Platform for KubePlatform<'_> {
    async fn node_replicas(&mut self) -> Result<Option<i32>> {
        let statefulsets: Api<StatefulSet> =
            Api::namespaced(self.ctx.client.clone(), &self.cluster.namespace);
        Ok(statefulsets
            .get_opt(&self.cluster.node_name())
            .await?
            .and_then(|s| s.spec.and_then(|s| s.replicas)))
    }

    async fn set_node_replicas(&mut self, replicas: i32) -> Result<NodeCounts> {
        let desired = resources::node_statefulset(self.obj, &self.ctx.settings, replicas)?;
        let sts = apply(&self.ctx.client, &self.cluster.namespace, &desired).await?;
        let status = sts.status.unwrap_or_default();
        Ok(NodeCounts {
            replicas: status.replicas,
            ready_replicas: status.ready_replicas.unwrap_or(0),
        })
    }

    async fn sync_proxies(&mut self) -> Result<i32> {
        let desired = resources::proxy_deployment(self.obj, &self.ctx.settings, &self.config_hash)?;
        let deployment = apply(&self.ctx.client, &self.cluster.namespace, &desired).await?;
        Ok(deployment
            .status
            .and_then(|s| s.available_replicas)
            .unwrap_or(0))
    }

    async fn endpoints(&mut self) -> Result<Vec<Endpoint>> {
        let slices: Api<EndpointSlice> =
            Api::namespaced(self.ctx.client.clone(), &self.cluster.namespace);
        let selector = format!("{}={}", labels::SERVICE_NAME, self.cluster.node_name());
        let slices = slices
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        Ok(endpoints(
            &slices,
            &self.cluster.node_name(),
            "ws",
            self.obj.spec.node.port,
        ))
    }

    fn probe(&self) -> &dyn ConnectionProbe {
        self.ctx.probe.as_ref()
    }

    async fn record_status(&mut self, status: &WsClusterStatus) -> Result<()> {
        patch_status(self.ctx, self.obj, status).await
    }

    async fn record_ring(&mut self, snapshot: &RingSnapshot) -> Result<()> {
        crate::ring_map::apply_ring_config_map(&self.ctx.client, self.cluster, snapshot).await
    }
}

/// After a pass: metrics and Kubernetes Events for what changed.
async fn report(ctx: &Context, obj: &WsCluster, cluster_id: &str, pass: &Pass) {
    let version = pass.ring.snapshot.version;
    let cluster_label = [("cluster", cluster_id.to_string())];
    if pass.ring.publish {
        ctx.metrics
            .rings_published
            .get_or_create(&cluster_label)
            .inc();
        if pass.ring.changed {
            info!(version, "ring published");
            let note = ring_note(&pass.ring.snapshot);
            publish_event(ctx, obj, EventType::Normal, "RingUpdated", note).await;
        }
    }
    ctx.metrics
        .ring_version
        .get_or_create(&cluster_label)
        .set(i64::try_from(version).unwrap_or(i64::MAX));
    for kind in [SubscriberKind::Proxy, SubscriberKind::Node] {
        let n = pass
            .subscribers
            .iter()
            .filter(|s| s.kind == kind && s.connected)
            .count();
        ctx.metrics
            .subscribers
            .get_or_create(&[
                ("cluster", cluster_id.to_string()),
                ("kind", kind.as_str().to_string()),
            ])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    scale_events(ctx, obj, &pass.scale, pass.previous_replicas).await;
}

/// When to look again: soon while waiting for proxies, at the drain's end (or its next probe)
/// while a drain waits for its timeout, rarely when settled.
fn requeue_after(pass: &Pass) -> Action {
    match &pass.scale.step {
        Step::StartDrain | Step::WaitForProxies { .. } => Action::requeue(WAIT_REQUEUE),
        Step::WaitForDrainTimeout { remaining_seconds } => Action::requeue(
            Duration::from_secs(u64::try_from(*remaining_seconds).unwrap_or(1).max(1))
                .min(DRAIN_POLL),
        ),
        _ if pass.sync.in_sync < pass.sync.total => Action::requeue(WAIT_REQUEUE),
        _ => Action::requeue(STEADY_REQUEUE),
    }
}

fn ring_note(snapshot: &RingSnapshot) -> String {
    let active = snapshot.active_members().count();
    let draining = snapshot.members.len() - active;
    format!(
        "ring version {}: {} active, {} draining members",
        snapshot.version, active, draining
    )
}

async fn scale_events(ctx: &Context, obj: &WsCluster, scale: &ScalePlan, current: Option<i32>) {
    let desired = obj.spec.replicas;
    let mut type_ = EventType::Normal;
    let (reason, note) = match scale.step {
        Step::ForceDrain { from, acked, total } => {
            type_ = EventType::Warning;
            (
                "DrainForced",
                format!(
                    "only {acked}/{total} proxies applied the drain ring within the limit; scaling nodes from {from} to {desired} anyway"
                ),
            )
        }
        Step::ScaleUp { from } => (
            "ScalingUp",
            format!("scaling nodes from {from} to {desired}"),
        ),
        Step::StartDrain => (
            "DrainStarted",
            format!(
                "draining nodes {}..{} before scaling down to {desired}",
                desired,
                current.unwrap_or(desired).saturating_sub(1)
            ),
        ),
        Step::FinishDrain { from } => (
            "ScaledDown",
            format!("drain finished; scaling nodes from {from} to {desired}"),
        ),
        Step::CancelDrain => (
            "DrainCancelled",
            format!("replicas back to {desired}; draining members are active again"),
        ),
        _ => return,
    };
    publish_event(ctx, obj, type_, reason, note).await;
}

/// What to do after a failed reconcile: count it and retry soon. User errors never reach
/// here (they are reported as `Degraded` and requeued by `reconcile`), so this is for API
/// failures, which are usually transient.
pub fn error_policy(obj: Arc<WsCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %obj.name_any(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&[("error", error.metric_label())])
        .inc();
    // A Warning Event so `kubectl describe wsc` shows the failure. Published in the
    // background (this function is synchronous); the recorder folds repeats into one series.
    let note = error.to_string();
    tokio::spawn(async move {
        publish_event(&ctx, &obj, EventType::Warning, "ReconcileFailed", note).await;
    });
    Action::requeue(ERROR_REQUEUE)
}

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
