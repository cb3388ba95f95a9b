//! The supervisor: one task that owns the membership state machine and the child processes,
//! applies the control API's commands, and renders the state the API and the demo page read.
//!
//! Everything that changes state goes through its loop (child events, commands, a 250 ms tick
//! for drains), so there is no lock around the membership and no ordering puzzle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wscluster_ring::contract::stream::SubscriberKind;
use wscluster_ring::{KeyHash, MemberState, Ring, RingSnapshot};
use wscluster_ring_stream::RingHub;

use super::membership::{Effect, Membership, ProxyAck, node_id};
use super::process::{ChildEvent, ChildKind, ChildSpec, HttpClient, Signal, run_child};

/// Everything the supervisor needs to know, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Ring cluster id (`local/demo`), also the node's Redis namespace and exchange name.
    pub cluster_id: String,
    /// Bearer token of the ring stream, handed to children through the environment.
    pub token: String,
    /// Initial node count.
    pub nodes: u32,
    /// Largest replica count the control API accepts.
    pub max_replicas: u32,
    /// Proxy process count.
    pub proxies: u32,
    /// `wscluster-node` executable.
    pub node_bin: PathBuf,
    /// `wscluster-proxy` executable.
    pub proxy_bin: PathBuf,
    /// Passed to nodes (`--redis-url`); none means in-memory.
    pub redis_url: Option<String>,
    /// Passed to nodes (`--redis-prefix`).
    pub redis_prefix: String,
    /// Passed to nodes and proxies (`--amqp-url`); none means in-memory.
    pub amqp_url: Option<String>,
    /// Passed to proxies (`--config`).
    pub proxy_config: Option<PathBuf>,
    /// Client and admin addresses of each proxy, fixed for the run so restarts keep them.
    pub proxy_addresses: Vec<(SocketAddr, SocketAddr)>,
    /// Where children's logs go.
    pub log_dir: PathBuf,
    /// Nodes' `--grace-period-seconds`.
    pub node_grace: Duration,
    /// How long a drain may wait for the leaving nodes to empty.
    pub drain_timeout: Duration,
    /// Where the ring authority listens.
    pub ring_addr: SocketAddr,
    /// The control API's (and demo page's) base URL.
    pub control_url: String,
}

impl Settings {
    /// The ring stream URL children use.
    pub fn ring_url(&self) -> String {
        format!("http://{}", self.ring_addr)
    }
}

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

/// The rendered state, as `GET /api/state` answers it.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StateView {
    /// Ring cluster id.
    pub cluster_id: String,
    /// Current ring version.
    pub ring_version: u64,
    /// Desired node count.
    pub replicas: u32,
    /// Largest replica count accepted.
    pub max_replicas: u32,
    /// `memory` or `redis`.
    pub mailbox: &'static str,
    /// `memory` or `rabbitmq`.
    pub bus: &'static str,
    /// The control API's base URL.
    pub control_url: String,
    /// Ring authority state.
    pub authority: AuthorityView,
    /// Nodes by ordinal.
    pub nodes: Vec<NodeView>,
    /// Proxies by index.
    pub proxies: Vec<ProxyView>,
    /// The scale-down in progress.
    pub drain: Option<DrainView>,
    /// The current ring.
    pub ring: Option<RingSnapshot>,
    /// Who owns which part of the slot circle, in degrees.
    pub arcs: Vec<ArcView>,
    /// For recent ring versions: how long until every running proxy applied it.
    pub propagation: Vec<PropagationView>,
}

/// How fast one ring version reached the proxies.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PropagationView {
    /// The version.
    pub version: u64,
    /// Milliseconds from publishing it to the last running proxy acknowledging it (or a newer
    /// one); `None` while some proxy has not.
    pub all_proxies_applied_ms: Option<f64>,
}

/// Ring versions whose propagation is remembered.
const PROPAGATION_KEPT: usize = 32;

/// The ring authority.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthorityView {
    /// Whether the ring stream is served.
    pub running: bool,
    /// Its base URL.
    pub url: String,
}

/// One node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Ordinal.
    pub ordinal: u32,
    /// Member id.
    pub id: String,
    /// `host:port`, once known.
    pub address: Option<String>,
    /// `starting`, `running`, `stopping` or `exited`.
    pub process: &'static str,
    /// `/readyz` said 200 at the last probe.
    pub ready: bool,
    /// `active`, `draining`, or `none` (not in the ring).
    pub ring_state: &'static str,
    /// Connections from `/count`.
    pub connections: Option<u64>,
    /// How the last process ended.
    pub last_exit: Option<String>,
}

/// One proxy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyView {
    /// Index.
    pub index: u32,
    /// Subscriber id.
    pub id: String,
    /// `http://host:port` for HTTP clients.
    pub url: String,
    /// `ws://host:port` for WebSocket clients.
    pub ws_url: String,
    /// Admin base URL.
    pub admin_url: String,
    /// `starting`, `running` or `exited`.
    pub process: &'static str,
    /// `/readyz` said 200 at the last probe.
    pub ready: bool,
    /// The ring version it acknowledged.
    pub applied_version: Option<u64>,
    /// Whether its ring stream is open.
    pub stream_connected: bool,
    /// How the last process ended.
    pub last_exit: Option<String>,
}

/// A drain.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainView {
    /// Leaving ordinals.
    pub ordinals: Vec<u32>,
    /// Ring version proxies must acknowledge.
    pub ring_version: u64,
    /// Milliseconds since it started.
    pub elapsed_ms: u64,
}

/// An arc of the slot circle owned by one member.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArcView {
    /// Start, degrees clockwise from the top.
    pub from: f64,
    /// End, degrees.
    pub to: f64,
    /// Owner's member id.
    pub member: String,
}

/// Samples of the slot circle for [`arcs`]: one per half degree.
pub const ARC_SAMPLES: u32 = 720;

/// The owners of `samples` evenly spaced slots, merged into runs: what the demo page draws.
pub fn arcs(ring: &Ring, samples: u32) -> Vec<ArcView> {
    let slots = u128::from(ring.slot_count());
    let mut out: Vec<ArcView> = Vec::new();
    for i in 0..samples {
        let slot = u128::from(i) * slots / u128::from(samples);
        // The smallest hash that falls in `slot` (multiply-shift reduction, see KeyHash::slot).
        let hash = ((slot << 64).div_ceil(slots)) as u64;
        let Ok(owner) = ring.owner_of_hash(KeyHash(hash)) else {
            continue;
        };
        let from = f64::from(i) * 360.0 / f64::from(samples);
        let to = f64::from(i + 1) * 360.0 / f64::from(samples);
        match out.last_mut() {
            Some(last) if last.member == owner.id && (last.to - from).abs() < 1e-9 => {
                last.to = to;
            }
            _ => out.push(ArcView {
                from,
                to,
                member: owner.id.clone(),
            }),
        }
    }
    out
}

/// The supervisor's view of one child process.
#[derive(Debug)]
struct Proc {
    /// Which spawn this is; events from older spawns of the same child are ignored.
    generation: u64,
    /// SIGTERM / SIGKILL requests to the child's task.
    signals: mpsc::Sender<Signal>,
    /// The process was spawned and has not exited.
    alive: bool,
    /// It reported its address (so it is past "starting").
    started: bool,
    /// The last readiness probe answered 200.
    ready: bool,
    /// A SIGTERM was sent (drain finished, restart, or shutdown).
    stopping: bool,
    /// Where it listens, for the state page.
    address: Option<String>,
    /// Connections from the last `/count` (nodes); decides when a drain is empty.
    connections: Option<u64>,
    /// Start it again once it exits (a restart of a running child).
    restart_pending: bool,
    /// How the previous process ended, for the state page.
    last_exit: Option<String>,
}

/// The supervisor. Build with [`Supervisor::new`], then [`Supervisor::run`].
pub struct Supervisor {
    /// The resolved flags.
    settings: Arc<Settings>,
    /// The ring authority: rings are published here, acks read from here.
    hub: Arc<RingHub>,
    /// For the children's probes.
    client: HttpClient,
    /// The pure membership state machine; its effects are carried out by [`Supervisor::apply`].
    membership: Membership,
    /// Node processes by ordinal.
    nodes: BTreeMap<u32, Proc>,
    /// Proxy processes by index.
    proxies: BTreeMap<u32, Proc>,
    /// Source of spawn generations.
    next_generation: u64,
    /// Handed to child tasks for their events.
    events_tx: mpsc::Sender<ChildEvent>,
    /// Child events, read by the loop.
    events_rx: mpsc::Receiver<ChildEvent>,
    /// The rendered state the control API reads.
    view: watch::Sender<Arc<StateView>>,
    /// Arcs of the current ring version (building a ring per render would waste time).
    arcs_cache: (u64, Arc<Vec<ArcView>>),
    /// Child tasks, awaited at shutdown.
    tracker: TaskTracker,
    /// Cancelled at Ctrl-C / SIGTERM.
    shutdown: CancellationToken,
    /// Stops the ring stream server; `None` while it is stopped on request.
    authority: Option<CancellationToken>,
    /// The listener bound at startup, used by the first start of the ring stream.
    authority_listener: Option<tokio::net::TcpListener>,
    /// The effects of [`Membership::new`], applied when the loop starts.
    pending: Vec<Effect>,
    /// Recent versions: when published, and when every running proxy had applied them.
    propagation: std::collections::VecDeque<(u64, Instant, Option<Duration>)>,
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
        let (membership, effects) = Membership::new(
            settings.cluster_id.clone(),
            settings.nodes,
            settings.drain_timeout,
        );
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (view, view_rx) = watch::channel(Arc::new(StateView::default()));
        let supervisor = Supervisor {
            settings: Arc::new(settings),
            hub,
            client,
            membership,
            nodes: BTreeMap::new(),
            proxies: BTreeMap::new(),
            next_generation: 0,
            events_tx,
            events_rx,
            view,
            arcs_cache: (0, Arc::new(Vec::new())),
            tracker: TaskTracker::new(),
            shutdown,
            authority: None,
            authority_listener: Some(ring_listener),
            pending: effects,
            propagation: std::collections::VecDeque::new(),
        };
        (supervisor, view_rx)
    }

    /// Runs until `shutdown`, then stops every child (SIGTERM, SIGKILL after the grace period)
    /// and returns when they are gone.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Request>) {
        self.hub
            .set_token(&self.settings.cluster_id, self.settings.token.clone());
        self.start_authority();
        let effects = std::mem::take(&mut self.pending);
        self.apply(effects);
        for index in 0..self.settings.proxies {
            self.spawn_proxy(index);
        }
        self.render();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // While a version is on its way to the proxies (for at most 10 s), look at the acks
            // every 2 ms so the measured propagation time is not the tick's.
            let awaiting_acks = self
                .propagation
                .back()
                .is_some_and(|p| p.2.is_none() && p.1.elapsed() < Duration::from_secs(10));
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                Some(event) = self.events_rx.recv() => self.on_event(event),
                Some((command, reply)) = commands.recv() => {
                    let result = self
                        .on_command(command)
                        .map(|()| self.hub.current(&self.settings.cluster_id));
                    let _ = reply.send(result);
                }
                _ = tick.tick() => self.on_tick(),
                () = tokio::time::sleep(Duration::from_millis(2)), if awaiting_acks => {
                    self.check_propagation();
                    continue;
                }
            }
            self.check_propagation();
            self.render();
        }
        tracing::info!("stopping children");
        self.tracker.close();
        // Children stop on the same token; keep draining their events so none blocks.
        let wait = self.tracker.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                Some(_) = self.events_rx.recv() => {}
            }
        }
        if let Some(token) = self.authority.take() {
            token.cancel();
        }
    }

    fn start_authority(&mut self) {
        if self.authority.is_some() {
            return;
        }
        let listener = match self.authority_listener.take() {
            Some(l) => l,
            None => match std::net::TcpListener::bind(self.settings.ring_addr)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .and_then(tokio::net::TcpListener::from_std)
            {
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

    fn apply(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Publish(snapshot) => {
                    let version = snapshot.version;
                    let members: Vec<String> = snapshot
                        .members
                        .iter()
                        .map(|m| format!("{}({:?})", m.id, m.state))
                        .collect();
                    match self.hub.publish(snapshot) {
                        Ok(()) => {
                            tracing::info!(version, ?members, "ring published");
                            self.propagation.push_back((version, Instant::now(), None));
                            if self.propagation.len() > PROPAGATION_KEPT {
                                self.propagation.pop_front();
                            }
                        }
                        Err(e) => tracing::error!(version, error = %e, "ring refused"),
                    }
                }
                Effect::Start(ordinal) => self.spawn_node(ordinal),
                Effect::Stop(ordinal) => {
                    if let Some(p) = self.nodes.get_mut(&ordinal) {
                        p.stopping = true;
                        let _ = p.signals.try_send(Signal::Term);
                    }
                }
            }
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn base_env(&self) -> Vec<(String, String)> {
        vec![(
            "WSCLUSTER_RING_TOKEN".to_string(),
            self.settings.token.clone(),
        )]
    }

    fn spawn_node(&mut self, ordinal: u32) {
        if self.shutdown.is_cancelled() || self.nodes.get(&ordinal).is_some_and(|p| p.alive) {
            return;
        }
        let s = Arc::clone(&self.settings);
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--id".to_string(),
            node_id(ordinal),
            "--cluster-id".to_string(),
            s.cluster_id.clone(),
            "--ring-url".to_string(),
            s.ring_url(),
            "--grace-period-seconds".to_string(),
            s.node_grace.as_secs().to_string(),
        ];
        if let Some(url) = &s.redis_url {
            args.extend([
                "--redis-url".to_string(),
                url.clone(),
                "--redis-prefix".to_string(),
                s.redis_prefix.clone(),
            ]);
        }
        if let Some(url) = &s.amqp_url {
            args.extend(["--amqp-url".to_string(), url.clone()]);
        }
        let generation = self.generation();
        let spec = ChildSpec {
            kind: ChildKind::Node(ordinal),
            generation,
            program: s.node_bin.clone(),
            args,
            env: self.base_env(),
            log_file: s.log_dir.join(format!("{}.log", node_id(ordinal))),
            known_address: None,
            readyz_url: "http://{address}/readyz".to_string(),
            count_url: Some("http://{address}/count".to_string()),
            grace: s.node_grace + Duration::from_secs(2),
        };
        let last_exit = self.nodes.get(&ordinal).and_then(|p| p.last_exit.clone());
        let signals = self.spawn_child(spec);
        self.nodes
            .insert(ordinal, new_proc(generation, signals, last_exit));
    }

    fn spawn_proxy(&mut self, index: u32) {
        if self.shutdown.is_cancelled() || self.proxies.get(&index).is_some_and(|p| p.alive) {
            return;
        }
        let s = Arc::clone(&self.settings);
        let Some(&(listen, admin)) = s.proxy_addresses.get(index as usize) else {
            return;
        };
        let id = ChildKind::Proxy(index).id();
        let mut args = vec![
            "--listen".to_string(),
            listen.to_string(),
            "--admin-listen".to_string(),
            admin.to_string(),
            "--id".to_string(),
            id.clone(),
            "--cluster-id".to_string(),
            s.cluster_id.clone(),
            "--ring-url".to_string(),
            s.ring_url(),
        ];
        // Keyless plain HTTP (the demo page and its API) reaches the control server through
        // the proxy, so the page is served at the proxy's root.
        if let Some(control) = s.control_url.strip_prefix("http://") {
            args.extend(["--fallback-upstream".to_string(), control.to_string()]);
        }
        if let Some(path) = &s.proxy_config {
            args.extend(["--config".to_string(), path.display().to_string()]);
        }
        if let Some(url) = &s.amqp_url {
            args.extend(["--amqp-url".to_string(), url.clone()]);
        }
        let generation = self.generation();
        let spec = ChildSpec {
            kind: ChildKind::Proxy(index),
            generation,
            program: s.proxy_bin.clone(),
            args,
            env: self.base_env(),
            log_file: s.log_dir.join(format!("{id}.log")),
            known_address: Some(admin.to_string()),
            readyz_url: "http://{address}/readyz".to_string(),
            count_url: None,
            grace: Duration::from_secs(5),
        };
        let last_exit = self.proxies.get(&index).and_then(|p| p.last_exit.clone());
        let signals = self.spawn_child(spec);
        self.proxies
            .insert(index, new_proc(generation, signals, last_exit));
    }

    fn spawn_child(&self, spec: ChildSpec) -> mpsc::Sender<Signal> {
        let (signals_tx, signals_rx) = mpsc::channel(8);
        self.tracker.spawn(run_child(
            spec,
            self.client.clone(),
            self.events_tx.clone(),
            signals_rx,
            self.shutdown.clone(),
        ));
        signals_tx
    }

    fn on_event(&mut self, event: ChildEvent) {
        let (kind, generation) = match &event {
            ChildEvent::Started {
                kind, generation, ..
            }
            | ChildEvent::Probed {
                kind, generation, ..
            }
            | ChildEvent::Exited {
                kind, generation, ..
            } => (*kind, *generation),
        };
        let procs = match kind {
            ChildKind::Node(o) => self.nodes.get_mut(&o),
            ChildKind::Proxy(i) => self.proxies.get_mut(&i),
        };
        let Some(proc) = procs.filter(|p| p.generation == generation) else {
            return;
        };
        let effects = match event {
            ChildEvent::Started { address, .. } => {
                tracing::info!(child = %kind.id(), %address, "started");
                proc.started = true;
                proc.address = Some(address.clone());
                match kind {
                    ChildKind::Node(o) => self.membership.node_started(o, address),
                    ChildKind::Proxy(_) => Vec::new(),
                }
            }
            ChildEvent::Probed {
                ready, connections, ..
            } => {
                proc.ready = ready;
                proc.connections = connections;
                match kind {
                    ChildKind::Node(o) => self.membership.node_readiness(o, ready),
                    ChildKind::Proxy(_) => Vec::new(),
                }
            }
            ChildEvent::Exited { status, .. } => {
                tracing::info!(child = %kind.id(), %status, "exited");
                proc.alive = false;
                proc.ready = false;
                proc.stopping = false;
                proc.connections = None;
                proc.last_exit = Some(status);
                let restart = std::mem::take(&mut proc.restart_pending);
                match kind {
                    ChildKind::Node(o) => {
                        let mut effects = self.membership.node_exited(o);
                        if restart {
                            effects.push(Effect::Start(o));
                        }
                        effects
                    }
                    ChildKind::Proxy(i) => {
                        if restart {
                            self.spawn_proxy(i);
                        }
                        Vec::new()
                    }
                }
            }
        };
        self.apply(effects);
    }

    fn on_command(&mut self, command: Command) -> Result<(), ApiError> {
        match command {
            Command::Scale(replicas) => {
                if !(1..=self.settings.max_replicas).contains(&replicas) {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "replicas-out-of-range",
                        format!(
                            "replicas must be 1 to {} in local mode, not {replicas}",
                            self.settings.max_replicas
                        ),
                    ));
                }
                tracing::info!(replicas, "scale");
                let effects = self.membership.set_replicas(replicas, Instant::now());
                self.apply(effects);
                Ok(())
            }
            Command::KillNode(ordinal) => {
                let proc = running(self.nodes.get(&ordinal), "node", ordinal)?;
                tracing::info!(ordinal, "kill -9 node");
                let _ = proc.signals.try_send(Signal::Kill);
                Ok(())
            }
            Command::RestartNode(ordinal) => {
                if ordinal >= self.membership.replicas() {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "ordinal-beyond-replicas",
                        format!(
                            "node {ordinal} is not wanted with {} replicas; scale up instead",
                            self.membership.replicas()
                        ),
                    ));
                }
                match self.nodes.get_mut(&ordinal) {
                    Some(p) if p.alive => {
                        p.restart_pending = true;
                        p.stopping = true;
                        let _ = p.signals.try_send(Signal::Term);
                    }
                    _ => self.spawn_node(ordinal),
                }
                Ok(())
            }
            Command::KillProxy(index) => {
                let proc = running(self.proxies.get(&index), "proxy", index)?;
                tracing::info!(index, "kill -9 proxy");
                let _ = proc.signals.try_send(Signal::Kill);
                Ok(())
            }
            Command::RestartProxy(index) => {
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
                match self.proxies.get_mut(&index) {
                    Some(p) if p.alive => {
                        p.restart_pending = true;
                        p.stopping = true;
                        let _ = p.signals.try_send(Signal::Term);
                    }
                    _ => self.spawn_proxy(index),
                }
                Ok(())
            }
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

    fn on_tick(&mut self) {
        let Some(drain) = self.membership.drain() else {
            return;
        };
        let leaving = drain
            .ordinals
            .iter()
            .map(|o| self.nodes.get(o).and_then(|p| p.connections))
            .sum::<Option<u64>>();
        let acks: Vec<ProxyAck> = self
            .hub
            .subscribers(&self.settings.cluster_id)
            .into_iter()
            .filter(|s| s.kind == SubscriberKind::Proxy && s.connected)
            .map(|s| ProxyAck {
                applied_version: s.applied_version,
            })
            .collect();
        let effects = self.membership.tick(Instant::now(), &acks, leaving);
        if !effects.is_empty() {
            tracing::info!(?effects, "drain finished");
        }
        self.apply(effects);
    }

    /// Records when every running proxy applied each pending version.
    fn check_propagation(&mut self) {
        if !self.propagation.iter().any(|p| p.2.is_none()) {
            return;
        }
        let running: Vec<String> = self
            .proxies
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(&i, _)| ChildKind::Proxy(i).id())
            .collect();
        if running.is_empty() {
            return;
        }
        let subscribers = self.hub.subscribers(&self.settings.cluster_id);
        let slowest = running
            .iter()
            .map(|id| {
                subscribers
                    .iter()
                    .find(|s| &s.id == id && s.kind == SubscriberKind::Proxy)
                    .and_then(|s| s.applied_version)
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        for p in self.propagation.iter_mut().filter(|p| p.2.is_none()) {
            if slowest >= p.0 {
                p.2 = Some(p.1.elapsed());
            }
        }
    }

    fn render(&mut self) {
        let s = &self.settings;
        let snapshot = self.membership.snapshot();
        if self.arcs_cache.0 != snapshot.version {
            let arcs = Ring::build(snapshot.clone())
                .map(|ring| arcs(&ring, ARC_SAMPLES))
                .unwrap_or_default();
            self.arcs_cache = (snapshot.version, Arc::new(arcs));
        }
        let subscribers = self.hub.subscribers(&s.cluster_id);
        let ring_state = |ordinal: u32| {
            let id = node_id(ordinal);
            match snapshot.member(&id).map(|m| m.state) {
                Some(MemberState::Active) => "active",
                Some(MemberState::Draining) => "draining",
                None => "none",
            }
        };
        let process = |p: &Proc| match (p.alive, p.started, p.stopping) {
            (false, _, _) => "exited",
            (true, false, _) => "starting",
            (true, true, true) => "stopping",
            (true, true, false) => "running",
        };
        let nodes = self
            .nodes
            .iter()
            .map(|(&ordinal, p)| NodeView {
                ordinal,
                id: node_id(ordinal),
                address: p.address.clone(),
                process: process(p),
                ready: p.ready,
                ring_state: ring_state(ordinal),
                connections: p.connections,
                last_exit: p.last_exit.clone(),
            })
            .collect();
        let proxies = (0..s.proxies)
            .filter_map(|index| {
                let (listen, admin) = *s.proxy_addresses.get(index as usize)?;
                let id = ChildKind::Proxy(index).id();
                let sub = subscribers
                    .iter()
                    .find(|x| x.id == id && x.kind == SubscriberKind::Proxy);
                let p = self.proxies.get(&index);
                Some(ProxyView {
                    index,
                    url: format!("http://{listen}"),
                    ws_url: format!("ws://{listen}"),
                    admin_url: format!("http://{admin}"),
                    process: p.map_or("exited", process),
                    ready: p.is_some_and(|p| p.ready),
                    applied_version: sub.and_then(|x| x.applied_version),
                    stream_connected: sub.is_some_and(|x| x.connected),
                    last_exit: p.and_then(|p| p.last_exit.clone()),
                    id,
                })
            })
            .collect();
        let view = StateView {
            cluster_id: s.cluster_id.clone(),
            ring_version: snapshot.version,
            replicas: self.membership.replicas(),
            max_replicas: s.max_replicas,
            mailbox: if s.redis_url.is_some() {
                "redis"
            } else {
                "memory"
            },
            bus: if s.amqp_url.is_some() {
                "rabbitmq"
            } else {
                "memory"
            },
            control_url: s.control_url.clone(),
            authority: AuthorityView {
                running: self.authority.is_some(),
                url: s.ring_url(),
            },
            nodes,
            proxies,
            drain: self.membership.drain().map(|d| DrainView {
                ordinals: d.ordinals.clone(),
                ring_version: d.ring_version,
                elapsed_ms: u64::try_from(d.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
            ring: Some(snapshot),
            arcs: self.arcs_cache.1.as_ref().clone(),
            propagation: self
                .propagation
                .iter()
                .map(|&(version, _, applied)| PropagationView {
                    version,
                    all_proxies_applied_ms: applied.map(|d| d.as_secs_f64() * 1000.0),
                })
                .collect(),
        };
        self.view.send_replace(Arc::new(view));
    }
}

fn new_proc(generation: u64, signals: mpsc::Sender<Signal>, last_exit: Option<String>) -> Proc {
    Proc {
        generation,
        signals,
        alive: true,
        started: false,
        ready: false,
        stopping: false,
        address: None,
        connections: None,
        restart_pending: false,
        last_exit,
    }
}

fn running<'a>(proc: Option<&'a Proc>, what: &str, n: u32) -> Result<&'a Proc, ApiError> {
    match proc {
        Some(p) if p.alive => Ok(p),
        Some(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not-running",
            format!("{what} {n} is not running"),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no-such-child",
            format!("there is no {what} {n}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wscluster_ring::Member;

    #[test]
    fn arcs_cover_the_circle_in_shares_close_to_the_members_slot_shares() {
        let snapshot = RingSnapshot::new(
            "local/demo",
            2,
            vec![
                Member::active("local-node-0", "h:0"),
                Member::active("local-node-1", "h:1"),
                Member::active("local-node-2", "h:2"),
            ],
        );
        let ring = Ring::build(snapshot).expect("valid ring");
        let arcs = arcs(&ring, ARC_SAMPLES);
        let total: f64 = arcs.iter().map(|a| a.to - a.from).sum();
        assert!((total - 360.0).abs() < 1e-6, "covers the circle: {total}");
        for pair in arcs.windows(2) {
            assert!((pair[0].to - pair[1].from).abs() < 1e-9, "contiguous");
            assert_ne!(pair[0].member, pair[1].member, "runs are merged");
        }
        for m in ring.members() {
            let share: f64 = arcs
                .iter()
                .filter(|a| a.member == m.id)
                .map(|a| a.to - a.from)
                .sum::<f64>()
                / 360.0;
            assert!((share - 1.0 / 3.0).abs() < 0.06, "{}: {share}", m.id);
        }
    }

    #[test]
    fn each_sample_is_drawn_in_its_slots_owner() {
        let snapshot = RingSnapshot::new(
            "local/demo",
            2,
            vec![
                Member::active("local-node-0", "h:0"),
                Member::active("local-node-1", "h:1"),
            ],
        );
        let ring = Ring::build(snapshot).expect("valid ring");
        let arcs = arcs(&ring, 16);
        // Sample i sits at slot i * S / 16; a key hash at the start of that slot has that owner.
        let slots = u64::from(ring.slot_count());
        for i in 0..16u64 {
            let slot = i * slots / 16;
            let hash = KeyHash(slot << (64 - slots.trailing_zeros()));
            let owner = ring.owner_of_hash(hash).expect("owner").id.clone();
            let deg = (i as f64 + 0.5) * 360.0 / 16.0;
            let arc = arcs
                .iter()
                .find(|a| a.from <= deg && deg < a.to)
                .expect("an arc covers every sample");
            assert_eq!(arc.member, owner, "sample {i}");
        }
    }

    #[test]
    fn an_empty_ring_has_no_arcs() {
        let ring = Ring::build(RingSnapshot::new("local/demo", 1, vec![])).expect("valid");
        assert!(arcs(&ring, ARC_SAMPLES).is_empty());
    }
}
