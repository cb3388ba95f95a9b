//! The child processes of local mode: node processes by ordinal (local mode's "StatefulSet")
//! and proxy processes by index. Each runs this executable again with the `node` or `proxy`
//! subcommand, supervised by one task of [`run_child`], so `kill -9` of a node is a real process
//! death.
//!
//! This module only starts, signals and tracks processes. Which nodes should run and which are
//! ring members is decided by the decision core ([`crate::converge`]) through
//! [`super::platform::LocalPlatform`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::process::{ChildEvent, ChildKind, ChildSpec, HttpClient, Signal, run_child};
use super::settings::Settings;

/// The member id of the node with this ordinal (`local-node-<ordinal>`), stable across
/// restarts so a restarted node takes its keys back, as a StatefulSet pod name does.
pub fn node_id(ordinal: u32) -> String {
    format!("local-node-{ordinal}")
}

/// What local mode knows about one child process.
#[derive(Debug)]
pub struct Proc {
    /// Which spawn this is; events from older spawns of the same child are ignored.
    pub generation: u64,
    /// SIGTERM / SIGKILL requests to the child's task.
    signals: mpsc::Sender<Signal>,
    /// The process was spawned and has not exited.
    pub alive: bool,
    /// It reported its address (so it is past "starting").
    pub started: bool,
    /// The last readiness probe answered 200.
    pub ready: bool,
    /// A SIGTERM was sent (scale-down, restart, or shutdown); a stopping node is no longer an
    /// endpoint, as a terminating pod is not.
    pub stopping: bool,
    /// Where it listens.
    pub address: Option<String>,
    /// Sessions from the last `/count` (nodes); tells a drain when the node is empty.
    pub connections: Option<u64>,
    /// Start it again once it exits (a restart of a running child).
    restart_pending: bool,
    /// How the previous process ended, for the state page.
    pub last_exit: Option<String>,
}

impl Proc {
    /// `starting`, `running`, `stopping` or `exited`, for the state page.
    pub fn process_state(&self) -> &'static str {
        match (self.alive, self.started, self.stopping) {
            (false, _, _) => "exited",
            (true, false, _) => "starting",
            (true, true, true) => "stopping",
            (true, true, false) => "running",
        }
    }
}

/// The node and proxy processes, and what spawns them.
pub struct Children {
    /// The resolved flags.
    settings: Arc<Settings>,
    /// For the children's probes.
    client: HttpClient,
    /// Handed to child tasks for their events.
    events: mpsc::Sender<ChildEvent>,
    /// Child tasks, awaited at shutdown.
    tracker: TaskTracker,
    /// Cancelled at Ctrl-C / SIGTERM: every child task stops its process.
    shutdown: CancellationToken,
    /// Source of spawn generations.
    next_generation: u64,
    /// Node processes by ordinal.
    pub nodes: BTreeMap<u32, Proc>,
    /// Proxy processes by index.
    pub proxies: BTreeMap<u32, Proc>,
}

impl Children {
    /// The fallback ring file every child reads beside the ring stream.
    pub fn ring_file(&self) -> std::path::PathBuf {
        self.settings.ring_file()
    }

    /// No children yet.
    pub fn new(
        settings: Arc<Settings>,
        client: HttpClient,
        events: mpsc::Sender<ChildEvent>,
        shutdown: CancellationToken,
    ) -> Children {
        Children {
            settings,
            client,
            events,
            tracker: TaskTracker::new(),
            shutdown,
            next_generation: 0,
            nodes: BTreeMap::new(),
            proxies: BTreeMap::new(),
        }
    }

    /// Starts the node with this ordinal unless it runs.
    pub fn spawn_node(&mut self, ordinal: u32) {
        if self.shutdown.is_cancelled() || self.nodes.get(&ordinal).is_some_and(|p| p.alive) {
            return;
        }
        let generation = self.generation();
        let spec = self.settings.node_spec(ordinal, generation);
        let last_exit = self.nodes.get(&ordinal).and_then(|p| p.last_exit.clone());
        let proc = self.spawn(spec, last_exit);
        self.nodes.insert(ordinal, proc);
    }

    /// Starts the proxy with this index unless it runs.
    pub fn spawn_proxy(&mut self, index: u32) {
        if self.shutdown.is_cancelled() || self.proxies.get(&index).is_some_and(|p| p.alive) {
            return;
        }
        let generation = self.generation();
        let Some(spec) = self.settings.proxy_spec(index, generation) else {
            return;
        };
        let last_exit = self.proxies.get(&index).and_then(|p| p.last_exit.clone());
        let proc = self.spawn(spec, last_exit);
        self.proxies.insert(index, proc);
    }

    /// Sends a signal to a running child; `restart` starts it again once it has exited.
    /// Answers whether the child was running.
    pub fn signal(&mut self, kind: ChildKind, signal: Signal, restart: bool) -> bool {
        let Some(proc) = self.get_mut(kind).filter(|p| p.alive) else {
            return false;
        };
        if signal == Signal::Term {
            proc.stopping = true;
        }
        proc.restart_pending |= restart;
        // A full queue means signals are already on their way; the child stops either way.
        let _ = proc.signals.try_send(signal);
        true
    }

    /// Whether the child exists and its process runs.
    pub fn is_alive(&self, kind: ChildKind) -> bool {
        self.get(kind).is_some_and(|p| p.alive)
    }

    /// Applies a child task's event. Events of an older spawn are ignored.
    pub fn on_event(&mut self, event: ChildEvent) {
        let (kind, generation) = event.child();
        let Some(proc) = self.get_mut(kind).filter(|p| p.generation == generation) else {
            return;
        };
        match event {
            ChildEvent::Started { address, .. } => {
                tracing::info!(child = %kind.id(), %address, "started");
                proc.started = true;
                proc.address = Some(address);
            }
            ChildEvent::Probed {
                ready, connections, ..
            } => {
                proc.ready = ready;
                proc.connections = connections;
            }
            ChildEvent::Exited { status, .. } => {
                tracing::info!(child = %kind.id(), %status, "exited");
                proc.alive = false;
                proc.ready = false;
                proc.stopping = false;
                proc.connections = None;
                proc.last_exit = Some(status);
                if std::mem::take(&mut proc.restart_pending) {
                    match kind {
                        ChildKind::Node(o) => self.spawn_node(o),
                        ChildKind::Proxy(i) => self.spawn_proxy(i),
                    }
                }
            }
        }
    }

    /// Stops tracking new children and waits until every child task ended (they stop their
    /// processes on the shutdown token), draining `events` meanwhile so none blocks.
    pub async fn wait_stopped(&self, events: &mut mpsc::Receiver<ChildEvent>) {
        self.tracker.close();
        let wait = self.tracker.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => return,
                Some(_) = events.recv() => {}
            }
        }
    }

    fn get(&self, kind: ChildKind) -> Option<&Proc> {
        match kind {
            ChildKind::Node(o) => self.nodes.get(&o),
            ChildKind::Proxy(i) => self.proxies.get(&i),
        }
    }

    fn get_mut(&mut self, kind: ChildKind) -> Option<&mut Proc> {
        match kind {
            ChildKind::Node(o) => self.nodes.get_mut(&o),
            ChildKind::Proxy(i) => self.proxies.get_mut(&i),
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn spawn(&self, spec: ChildSpec, last_exit: Option<String>) -> Proc {
        let (signals, signals_rx) = mpsc::channel(8);
        let generation = spec.generation;
        self.tracker.spawn(run_child(
            spec,
            self.client.clone(),
            self.events.clone(),
            signals_rx,
            self.shutdown.clone(),
        ));
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
}

/// Grace between SIGTERM and SIGKILL for a proxy: it resets its clients with the drain frame.
pub const PROXY_STOP_GRACE: Duration = Duration::from_secs(5);
