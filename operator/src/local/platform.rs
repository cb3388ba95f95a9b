//! Local mode's side of the decision core: child processes play the StatefulSet, its
//! EndpointSlices and the proxy Deployment, and the status lives in memory.
//!
//! It answers the decision core's questions and carries out its decisions; it decides nothing
//! itself. The one rule of its own is the StatefulSet controller's: when the replica count
//! changes, missing ordinals below it are started and running ones at or above it are stopped
//! (SIGTERM). Unlike Kubernetes, a node killed on request is not restarted until it is asked
//! for (a restart, or a scale-up), so the demo can show a dead node.

use std::future::Future;

use crate::converge::{NodeCounts, Platform};
use wscluster_ring::RingSnapshot;

use crate::crd::WsClusterStatus;
use crate::error::Result;
use crate::membership::Endpoint;
use crate::probe::{ConnectionProbe, CountFuture};

use super::children::{Children, node_id};
use super::process::{ChildKind, Signal};

/// Child processes plus the state Kubernetes would keep in its API.
pub struct LocalPlatform {
    /// The node and proxy processes.
    pub children: Children,
    /// The "StatefulSet's" `spec.replicas`; `None` until the first pass creates it.
    pub node_replicas: Option<i32>,
    /// The status the last pass recorded (the drain in progress, the last ring).
    pub status: Option<WsClusterStatus>,
    /// The ring version last written to the fallback ring file (written once per version).
    ring_file_version: Option<u64>,
}

impl LocalPlatform {
    /// A platform with no processes yet.
    pub fn new(children: Children) -> LocalPlatform {
        LocalPlatform {
            children,
            node_replicas: None,
            status: None,
            ring_file_version: None,
        }
    }

    fn counts(&self) -> NodeCounts {
        let alive = self.children.nodes.values().filter(|p| p.alive);
        let (mut replicas, mut ready) = (0, 0);
        for p in alive {
            replicas += 1;
            if p.ready {
                ready += 1;
            }
        }
        NodeCounts {
            replicas,
            ready_replicas: ready,
        }
    }

    fn resize(&mut self, replicas: i32) {
        let wanted = u32::try_from(replicas).unwrap_or(0);
        for ordinal in 0..wanted {
            self.children.spawn_node(ordinal);
        }
        let leaving: Vec<u32> = self
            .children
            .nodes
            .iter()
            .filter(|(o, p)| **o >= wanted && p.alive && !p.stopping)
            .map(|(o, _)| *o)
            .collect();
        for ordinal in leaving {
            tracing::info!(node = %node_id(ordinal), "stopping");
            self.children
                .signal(ChildKind::Node(ordinal), Signal::Term, false);
        }
    }
}

impl Platform for LocalPlatform {
    fn node_replicas(&mut self) -> impl Future<Output = Result<Option<i32>>> + Send {
        std::future::ready(Ok(self.node_replicas))
    }

    fn set_node_replicas(
        &mut self,
        replicas: i32,
    ) -> impl Future<Output = Result<NodeCounts>> + Send {
        if self.node_replicas != Some(replicas) {
            self.resize(replicas);
            self.node_replicas = Some(replicas);
        }
        std::future::ready(Ok(self.counts()))
    }

    fn sync_proxies(&mut self) -> impl Future<Output = Result<i32>> + Send {
        let available = self
            .children
            .proxies
            .values()
            .filter(|p| p.alive && p.ready)
            .count();
        std::future::ready(Ok(i32::try_from(available).unwrap_or(i32::MAX)))
    }

    fn endpoints(&mut self) -> impl Future<Output = Result<Vec<Endpoint>>> + Send {
        let endpoints = self
            .children
            .nodes
            .iter()
            .filter(|(_, p)| p.alive && p.ready && !p.stopping)
            .filter_map(|(&ordinal, p)| {
                Some(Endpoint {
                    id: node_id(ordinal),
                    ordinal: i32::try_from(ordinal).ok()?,
                    address: p.address.clone()?,
                })
            })
            .collect();
        std::future::ready(Ok(endpoints))
    }

    fn probe(&self) -> &dyn ConnectionProbe {
        self
    }

    fn record_status(
        &mut self,
        status: &WsClusterStatus,
    ) -> impl Future<Output = Result<()>> + Send {
        self.status = Some(status.clone());
        std::future::ready(Ok(()))
    }

    /// Writes `ring.json` in the run directory, the children's `--ring-file`, once per
    /// version: to a temporary file renamed over it, so a reader never sees half a ring.
    fn record_ring(&mut self, snapshot: &RingSnapshot) -> impl Future<Output = Result<()>> + Send {
        if self.ring_file_version == Some(snapshot.version) {
            return std::future::ready(Ok(()));
        }
        let path = self.children.ring_file();
        let written = write_ring_file(&path, snapshot);
        match &written {
            Ok(()) => self.ring_file_version = Some(snapshot.version),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the fallback ring file");
            }
        }
        std::future::ready(written)
    }
}

/// Writes `snapshot` to `path` atomically (a sibling temporary file renamed over it).
fn write_ring_file(path: &std::path::Path, snapshot: &RingSnapshot) -> Result<()> {
    let temporary = path.with_extension("json.tmp");
    let io = |source: std::io::Error| crate::Error::RingFile {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&temporary, snapshot.to_json()).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

/// Sessions from the children's own `/count` probes, so a pass never waits on HTTP. A node
/// that no longer runs holds nothing; a running node that has not answered yet is unknown.
impl ConnectionProbe for LocalPlatform {
    fn sessions<'a>(&'a self, address: &'a str) -> CountFuture<'a> {
        let count = self
            .children
            .nodes
            .values()
            .find(|p| p.address.as_deref() == Some(address))
            .map_or(Some(0), |p| if p.alive { p.connections } else { Some(0) });
        Box::pin(std::future::ready(count))
    }
}
