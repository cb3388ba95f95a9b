//! The supervisor: one task that owns local mode's platform (the child processes and the
//! in-memory status), runs the decision core on it, applies the control API's commands, and
//! renders the state the API and the demo page read.
//!
//! Everything that changes state goes through its loop (child events, commands, a 250 ms tick),
//! and every turn of the loop runs one pass of [`converge`]: the scaling, drain and membership
//! rules are the operator's, not a copy. There is no lock around the state and no ordering
//! puzzle.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use wscluster_ring::{Ring, RingSnapshot};
use wscluster_ring_stream::RingHub;

use crate::converge::{Intent, converge};
use crate::crd::WsClusterSpec;

use super::children::Children;
use super::platform::LocalPlatform;
use super::process::{ChildEvent, ChildKind, HttpClient, Signal};
use super::settings::Settings;
use super::view::{ARC_SAMPLES, ArcView, Propagation, RenderInput, StateView, arcs, render};

/// A refusal of the control API: status, stable code, message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// A refusal.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

/// What the control API asks of the supervisor.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Set the desired node count.
    Scale(u32),
    /// SIGKILL a node.
    KillNode(u32),
    /// Start a dead node again (or stop and start a live one).
    RestartNode(u32),
    /// SIGKILL a proxy.
    KillProxy(u32),
    /// Start a dead proxy again (or stop and start a live one).
    RestartProxy(u32),
    /// Stop serving the ring stream (proxies and nodes keep their last ring).
    StopAuthority,
    /// Serve the ring stream again.
    StartAuthority,
}

/// A command with its reply channel. The reply carries the ring published right after the
/// command (read inside the supervisor, the only publisher, so no later change can slip in).
pub type Request = (
    Command,
    oneshot::Sender<Result<Option<Arc<RingSnapshot>>, ApiError>>,
);

/// How often the loop runs a pass without an event: drains advance on time.
const TICK: Duration = Duration::from_millis(250);
/// How often acks are looked at while a ring is on its way, so the measured propagation time
/// is not the tick's.
const PROPAGATION_POLL: Duration = Duration::from_millis(2);

/// The supervisor. Build with [`Supervisor::new`], then [`Supervisor::run`].
pub struct Supervisor {
    /// The resolved flags.
    settings: Arc<Settings>,
    /// The desired state, as a WsCluster's spec: the control API's `scale` sets its replicas.
    spec: WsClusterSpec,
    /// The ring authority: rings are published here, acks read from here.
    hub: Arc<RingHub>,
    /// The processes and the in-memory status the decision core works on.
    platform: LocalPlatform,
    /// Child events, read by the loop.
    events: mpsc::Receiver<ChildEvent>,
    /// The rendered state the control API reads.
    view: watch::Sender<Arc<StateView>>,
    /// Arcs of the current ring version (building a ring per render would waste time).
    arcs_cache: (u64, Arc<Vec<ArcView>>),
    /// Cancelled at Ctrl-C / SIGTERM.
    shutdown: CancellationToken,
    /// Stops the ring stream server; `None` while it is stopped on request.
    authority: Option<CancellationToken>,
    /// The listener bound at startup, used by the first start of the ring stream.
    authority_listener: Option<tokio::net::TcpListener>,
    /// When recent ring versions reached every proxy.
    propagation: Propagation,
}

impl Supervisor {
    /// A supervisor with a bound ring listener (served at once) and the view channel the
    /// control API reads.
    pub fn new(
        settings: Settings,
        hub: Arc<RingHub>,
        client: HttpClient,
        ring_listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> (Supervisor, watch::Receiver<Arc<StateView>>) {
        let settings = Arc::new(settings);
        let (events_tx, events) = mpsc::channel(1024);
        let children = Children::new(Arc::clone(&settings), client, events_tx, shutdown.clone());
        let (view, view_rx) = watch::channel(Arc::new(StateView::default()));
        let spec = local_spec(&settings);
        let supervisor = Supervisor {
            settings,
            spec,
            hub,
            platform: LocalPlatform::new(children),
            events,
            view,
            arcs_cache: (0, Arc::new(Vec::new())),
            shutdown,
            authority: None,
            authority_listener: Some(ring_listener),
            propagation: Propagation::default(),
        };
        (supervisor, view_rx)
    }

    /// Runs until `shutdown`, then stops every child (SIGTERM, SIGKILL after the grace period)
    /// and returns when they are gone.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Request>) {
        self.hub
            .set_tokens(&self.settings.cluster_id, self.settings.tokens.clone());
        self.start_authority();
        for index in 0..self.settings.proxies {
            self.platform.children.spawn_proxy(index);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let awaiting_acks = self.propagation.awaiting();
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                Some(event) = self.events.recv() => self.platform.children.on_event(event),
                Some((command, reply)) = commands.recv() => {
                    let result = self.on_command(command);
                    if result.is_ok() {
                        self.pass().await;
                    }
                    let _ = reply.send(result.map(|()| self.hub.current(&self.settings.cluster_id)));
                }
                _ = tick.tick() => {}
                () = tokio::time::sleep(PROPAGATION_POLL), if awaiting_acks => {
                    self.check_propagation();
                    continue;
                }
            }
            self.pass().await;
            self.check_propagation();
            self.render();
        }
        tracing::info!("stopping children");
        self.platform.children.wait_stopped(&mut self.events).await;
        if let Some(token) = self.authority.take() {
            token.cancel();
        }
    }

    /// One pass of the decision core on the processes.
    async fn pass(&mut self) {
        let previous = self.platform.status.clone();
        let intent = Intent {
            cluster_id: &self.settings.cluster_id,
            spec: &self.spec,
            generation: None,
            previous: previous.as_ref(),
            selector: "local".to_string(),
            now: Timestamp::now(),
        };
        match converge(&mut self.platform, self.hub.as_ref(), &intent).await {
            Ok(pass) if pass.ring.publish => {
                let snapshot = &pass.ring.snapshot;
                let members: Vec<String> = snapshot
                    .members
                    .iter()
                    .map(|m| format!("{}({:?})", m.id, m.state))
                    .collect();
                tracing::info!(version = snapshot.version, ?members, step = ?pass.scale.step, "ring published");
                self.propagation.published(snapshot.version);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "a pass of the decision core failed"),
        }
    }

    fn start_authority(&mut self) {
        if self.authority.is_some() {
            return;
        }
        let listener = match self.authority_listener.take() {
            Some(l) => l,
            None => match rebind(self.settings.ring_addr) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(addr = %self.settings.ring_addr, error = %e, "cannot bind the ring authority");
                    return;
                }
            },
        };
        let token = self.shutdown.child_token();
        let hub = Arc::clone(&self.hub);
        let serve_token = token.clone();
        tokio::spawn(async move {
            if let Err(e) = wscluster_ring_stream::serve(listener, hub, serve_token).await {
                tracing::error!(error = %e, "ring authority stopped");
            }
        });
        self.authority = Some(token);
    }

    fn on_command(&mut self, command: Command) -> Result<(), ApiError> {
        match command {
            Command::Scale(replicas) => self.scale(replicas),
            Command::KillNode(o) => self.kill(ChildKind::Node(o)),
            Command::KillProxy(i) => self.kill(ChildKind::Proxy(i)),
            Command::RestartNode(o) => self.restart_node(o),
            Command::RestartProxy(i) => self.restart_proxy(i),
            Command::StopAuthority => {
                if let Some(token) = self.authority.take() {
                    tracing::info!("ring authority stopped on request");
                    token.cancel();
                }
                Ok(())
            }
            Command::StartAuthority => {
                self.start_authority();
                if self.authority.is_none() {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "authority-bind-failed",
                        format!("cannot bind {} again; retry", self.settings.ring_addr),
                    ));
                }
                tracing::info!("ring authority started on request");
                Ok(())
            }
        }
    }

    fn scale(&mut self, replicas: u32) -> Result<(), ApiError> {
        let max = self.settings.max_replicas;
        let Some(replicas) = Some(replicas)
            .filter(|r| (1..=max).contains(r))
            .and_then(|r| i32::try_from(r).ok())
        else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "replicas-out-of-range",
                format!("replicas must be 1 to {max} in local mode, not {replicas}"),
            ));
        };
        tracing::info!(replicas, "scale");
        self.spec.replicas = replicas;
        Ok(())
    }

    fn kill(&mut self, kind: ChildKind) -> Result<(), ApiError> {
        let (what, n) = describe(kind);
        if self.platform.children.signal(kind, Signal::Kill, false) {
            tracing::info!(child = %kind.id(), "kill -9");
            return Ok(());
        }
        let exists = match kind {
            ChildKind::Node(o) => self.platform.children.nodes.contains_key(&o),
            ChildKind::Proxy(i) => self.platform.children.proxies.contains_key(&i),
        };
        Err(if exists {
            ApiError::new(
                StatusCode::CONFLICT,
                "not-running",
                format!("{what} {n} is not running"),
            )
        } else {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no-such-child",
                format!("there is no {what} {n}"),
            )
        })
    }

    fn restart_node(&mut self, ordinal: u32) -> Result<(), ApiError> {
        let wanted = u32::try_from(self.spec.replicas).unwrap_or(0);
        if ordinal >= wanted {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "ordinal-beyond-replicas",
                format!("node {ordinal} is not wanted with {wanted} replicas; scale up instead"),
            ));
        }
        let children = &mut self.platform.children;
        if !children.signal(ChildKind::Node(ordinal), Signal::Term, true) {
            children.spawn_node(ordinal);
        }
        Ok(())
    }

    fn restart_proxy(&mut self, index: u32) -> Result<(), ApiError> {
        if index >= self.settings.proxies {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no-such-proxy",
                format!(
                    "there are proxies 0 to {}",
                    self.settings.proxies.saturating_sub(1)
                ),
            ));
        }
        let children = &mut self.platform.children;
        if !children.signal(ChildKind::Proxy(index), Signal::Term, true) {
            children.spawn_proxy(index);
        }
        Ok(())
    }

    fn check_propagation(&mut self) {
        let subscribers = self.hub.subscribers(&self.settings.cluster_id);
        self.propagation
            .check(&self.platform.children, &subscribers);
    }

    fn render(&mut self) {
        let ring = self.hub.current(&self.settings.cluster_id);
        let version = ring.as_ref().map_or(0, |r| r.version);
        if self.arcs_cache.0 != version {
            let arcs = ring
                .as_deref()
                .and_then(|r| Ring::build(r.clone()).ok())
                .map(|r| arcs(&r, ARC_SAMPLES))
                .unwrap_or_default();
            self.arcs_cache = (version, Arc::new(arcs));
        }
        let subscribers = self.hub.subscribers(&self.settings.cluster_id);
        let view = render(&RenderInput {
            settings: &self.settings,
            children: &self.platform.children,
            replicas: u32::try_from(self.spec.replicas).unwrap_or(0),
            node_replicas: self.platform.node_replicas,
            status: self.platform.status.as_ref(),
            ring,
            arcs: &self.arcs_cache.1,
            subscribers: &subscribers,
            authority_running: self.authority.is_some(),
            propagation: &self.propagation,
        });
        self.view.send_replace(Arc::new(view));
    }
}

/// Local mode's desired state as a WsCluster spec: the node count, the drain timeout and the
/// proxy count; everything else at its default.
fn local_spec(settings: &Settings) -> WsClusterSpec {
    let mut spec = WsClusterSpec {
        replicas: i32::try_from(settings.nodes).unwrap_or(1),
        drain_timeout_seconds: i32::try_from(settings.drain_timeout.as_secs()).unwrap_or(i32::MAX),
        ..WsClusterSpec::default()
    };
    spec.proxy.replicas = i32::try_from(settings.proxies).unwrap_or(1);
    spec
}

fn describe(kind: ChildKind) -> (&'static str, u32) {
    match kind {
        ChildKind::Node(o) => ("node", o),
        ChildKind::Proxy(i) => ("proxy", i),
    }
}

/// Binds the ring authority's address again (after a stop on request).
fn rebind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}
