//! The running operator: ring stream server, admin server, leader election and the controller,
//! under one shutdown token.
//!
//! * Ring stream on `--ring-listen` (`wscluster_ring_stream::serve`): served by every replica,
//!   but only the leader's hub holds rings, and `/readyz` is 200 only on the leader, so the
//!   operator's Service sends subscribers to the leader.
//! * Admin on `--admin-listen`: `/healthz` (the process runs), `/readyz` (leader and
//!   reconciling), `/metrics`.
//! * The controller starts once this replica holds the Lease and stops if it loses it; `run`
//!   then returns [`Error::LeadershipLost`] so the process exits and restarts as a candidate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};
use wscluster_ring_stream::RingHub;
use wscluster_runtime::serve::{ServeOptions, serve};

use crate::controller::{Context, error_policy, random_token, reconcile};
use crate::crd::WsCluster;
use crate::error::{Error, Result};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::resources::{FIELD_MANAGER, Settings, labels};

/// How long shutdown waits for servers and the Lease release before giving up.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Settings of `wscluster-operator run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// URL nodes and proxies are told to subscribe to (`--ring-public-url`).
    pub ring_public_url: String,
    /// Lease name (`--lease-name`).
    pub lease_name: String,
    /// Lease namespace (`--lease-namespace`); without it (or a pod name) there is no election
    /// and this replica leads alone.
    pub lease_namespace: Option<String>,
    /// This replica's identity (`--pod-name`).
    pub pod_name: Option<String>,
    /// Only this namespace (`--watch-namespace`); all by default.
    pub watch_namespace: Option<String>,
}

/// State the admin endpoints read.
#[derive(Clone)]
struct Admin {
    /// Metrics to encode.
    metrics: Arc<Metrics>,
    /// Whether this replica leads (readiness).
    leader: watch::Receiver<bool>,
}

async fn admin_response(admin: Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body, content_type) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
        (&Method::GET, "/readyz") if *admin.leader.borrow() => {
            (StatusCode::OK, "leader\n".to_string(), "text/plain")
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "standby: not the leader\n".to_string(),
            "text/plain",
        ),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            admin.metrics.encode(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found\n".to_string(),
            "text/plain",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// How the admin port is served: probes and scrapes, so the shared defaults (1,024 connections,
/// 10 s header-read timeout, 5 s grace).
const ADMIN_SERVE_OPTIONS: ServeOptions = ServeOptions::new("admin");

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown`.
async fn serve_admin(listener: TcpListener, admin: Admin, shutdown: CancellationToken) {
    let handler = move |req| admin_response(admin.clone(), req);
    serve(listener, ADMIN_SERVE_OPTIONS, handler, shutdown).await;
}

/// Maps an EndpointSlice of a node Service to its `WsCluster` (slices copy the Service's
/// labels, so `app.kubernetes.io/instance` names the cluster).
fn slice_owner(slice: EndpointSlice) -> Option<ObjectRef<WsCluster>> {
    let labels = slice.metadata.labels.as_ref()?;
    let name = labels.get(labels::INSTANCE)?;
    let service = labels.get(labels::SERVICE_NAME)?;
    if service != &format!("{name}-node") {
        return None;
    }
    Some(ObjectRef::new(name).within(&slice.namespace()?))
}

/// How often rings of deleted clusters are looked for.
const PRUNE_PERIOD: Duration = Duration::from_secs(30);

/// Removes the rings of clusters that left the controller's store (deleted), every
/// [`PRUNE_PERIOD`], once the store has its first full list.
async fn prune_departed(
    store: kube::runtime::reflector::Store<WsCluster>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = shutdown.cancelled() => return,
        ready = store.wait_until_ready() => if ready.is_err() { return },
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_PERIOD) => {}
        }
        let present = store
            .state()
            .iter()
            .filter_map(|c| Some(format!("{}/{}", c.namespace()?, c.name_any())))
            .collect();
        ctx.forget_departed(&present);
    }
}

/// Runs the operator until `shutdown` (or until leadership is lost).
pub async fn run(
    config: Config,
    client: Client,
    ring_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let hub = RingHub::new();
    let metrics = Arc::new(Metrics::default());
    let tracker = TaskTracker::new();
    let (leader_tx, leader_rx) = watch::channel(false);
    // 1. The ring stream and the admin port, on every replica.
    tracker.spawn(serve_ring_stream(
        ring_listener,
        hub.clone(),
        shutdown.clone(),
    ));
    let admin = Admin {
        metrics: metrics.clone(),
        leader: leader_rx.clone(),
    };
    tracker.spawn(serve_admin(admin_listener, admin, shutdown.clone()));
    // 2. The election (or leading alone without a Lease).
    let election = shutdown.child_token();
    start_election(&tracker, &config, &client, leader_tx, election.clone());
    // 3. Once elected, the controller, until shutdown or lost leadership.
    let leading = Leading {
        config: &config,
        client: &client,
        hub: &hub,
        metrics: &metrics,
        tracker: &tracker,
    };
    let lost = leading.run(leader_rx, &shutdown).await;
    // 4. Stop the servers and the election, within the deadline.
    election.cancel();
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        warn!("shutdown deadline passed with tasks still running");
    }
    if lost {
        return Err(Error::LeadershipLost);
    }
    Ok(())
}

/// The ring stream on `--ring-listen` until `shutdown`.
async fn serve_ring_stream(listener: TcpListener, hub: Arc<RingHub>, shutdown: CancellationToken) {
    if let Err(e) = wscluster_ring_stream::serve(listener, hub, shutdown)
        .instrument(info_span!("ring_stream"))
        .await
    {
        warn!(error = %e, "ring stream server failed");
    }
}

/// Campaigns for the Lease when a namespace and an identity are configured; otherwise this
/// replica leads alone.
fn start_election(
    tracker: &TaskTracker,
    config: &Config,
    client: &Client,
    leader: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let (Some(namespace), Some(identity)) = (&config.lease_namespace, &config.pod_name) else {
        warn!("no --lease-namespace/--pod-name: running without leader election");
        leader.send_replace(true);
        // Held until the election would stop: a dropped sender reads as lost leadership and
        // would stop the controller as soon as it started.
        tracker.spawn(async move {
            stop.cancelled().await;
            drop(leader);
        });
        return;
    };
    let elector = LeaderElector {
        api: Api::namespaced(client.clone(), namespace),
        config: LeaseConfig {
            name: config.lease_name.clone(),
            identity: identity.clone(),
        },
    };
    tracker.spawn(
        elector
            .run(leader, stop)
            .instrument(info_span!("leader_election")),
    );
}

/// What the leading replica uses to run the controller.
struct Leading<'a> {
    /// The operator's settings.
    config: &'a Config,
    /// The API client.
    client: &'a Client,
    /// Where the controller publishes rings.
    hub: &'a Arc<RingHub>,
    /// Metrics, including the `leader` gauge.
    metrics: &'a Arc<Metrics>,
    /// Where background tasks (the prune loop) run.
    tracker: &'a TaskTracker,
}

impl Leading<'_> {
    /// Waits to be elected, then runs the controller until `shutdown` or until leadership is
    /// lost; returns whether it was lost.
    async fn run(&self, leader: watch::Receiver<bool>, shutdown: &CancellationToken) -> bool {
        let mut elected = leader.clone();
        let elected = tokio::select! {
            () = shutdown.cancelled() => false,
            changed = elected.wait_for(|l| *l) => changed.is_ok(),
        };
        if !elected {
            return false;
        }
        self.metrics.leader.set(1);
        let stop = {
            let shutdown = shutdown.clone();
            let mut leader = leader.clone();
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = leader.wait_for(|l| !*l) => {}
                }
            }
        };
        self.controller(stop, shutdown).await;
        self.metrics.leader.set(0);
        !shutdown.is_cancelled() && !*leader.borrow()
    }

    /// The reconcile context of this term.
    fn context(&self) -> Arc<Context> {
        Arc::new(Context {
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: self.config.pod_name.clone(),
                },
            ),
            client: self.client.clone(),
            ring: self.hub.clone(),
            settings: Settings {
                ring_url: self.config.ring_public_url.clone(),
                operator_namespace: self
                    .config
                    .lease_namespace
                    .clone()
                    .unwrap_or_else(|| crate::resources::DEFAULT_OPERATOR_NAMESPACE.into()),
            },
            metrics: self.metrics.clone(),
            clock: Arc::new(Timestamp::now),
            new_token: random_token,
            probe: Arc::new(crate::probe::HttpProbe::default()),
            known: std::sync::Mutex::default(),
        })
    }

    /// Runs the controller over `WsCluster`s, the objects it owns and the node EndpointSlices
    /// until `stop` resolves.
    async fn controller(
        &self,
        stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
        shutdown: &CancellationToken,
    ) {
        let ctx = self.context();
        let owned = self.config.watch_namespace.clone();
        let clusters = match &owned {
            Some(ns) => Api::<WsCluster>::namespaced(self.client.clone(), ns),
            None => Api::<WsCluster>::all(self.client.clone()),
        };
        let f = ApiFactory(self.client.clone(), owned);
        let ours =
            watcher::Config::default().labels(&format!("{}={FIELD_MANAGER}", labels::MANAGED_BY));
        let node_slices = watcher::Config::default().labels(&format!(
            "{}={FIELD_MANAGER},{}=node",
            labels::MANAGED_BY,
            labels::COMPONENT
        ));
        info!("controller starting");
        let controller = Controller::new(clusters, watcher::Config::default());
        self.tracker.spawn(
            prune_departed(controller.store(), ctx.clone(), shutdown.clone())
                .instrument(info_span!("prune")),
        );
        controller
            .owns(f.api::<StatefulSet>(), ours.clone())
            .owns(f.api::<Deployment>(), ours.clone())
            .owns(f.api::<Service>(), ours.clone())
            .owns(f.api::<ConfigMap>(), ours.clone())
            .owns(f.api::<PodDisruptionBudget>(), ours.clone())
            .owns(f.api::<NetworkPolicy>(), ours)
            .watches(f.api::<EndpointSlice>(), node_slices, slice_owner)
            .graceful_shutdown_on(stop)
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "controller event");
                }
            })
            .await;
    }
}

/// Builds `Api`s for the watched namespace or all namespaces.
struct ApiFactory(Client, Option<String>);

impl ApiFactory {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.1 {
            Some(ns) => Api::namespaced(self.0.clone(), ns),
            None => Api::all(self.0.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn slice_with(labels: &[(&str, &str)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("prod".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: None,
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn admin_serves_health_leader_readiness_and_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::default());
        metrics.reconciles.inc();
        let (leader_tx, leader) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_admin(
            listener,
            Admin { metrics, leader },
            shutdown.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(10), async {
            assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
            assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
            leader_tx.send_replace(true);
            assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
            let metrics = get(addr, "/metrics").await;
            assert!(
                metrics.contains("wscluster_operator_reconciles_total 1"),
                "{metrics}"
            );
            assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
            shutdown.cancel();
            server.await.expect("admin server stops");
        })
        .await
        .expect("in time");
    }

    #[test]
    fn a_node_slice_maps_to_its_cluster() {
        let s = slice_with(&[
            (labels::INSTANCE, "chat"),
            (labels::SERVICE_NAME, "chat-node"),
        ]);
        assert_eq!(slice_owner(s), Some(ObjectRef::new("chat").within("prod")));
        let proxy = slice_with(&[
            (labels::INSTANCE, "chat"),
            (labels::SERVICE_NAME, "chat-proxy"),
        ]);
        assert_eq!(slice_owner(proxy), None);
    }
}

#[cfg(test)]
mod run_tests;
