//! # wscluster-operator
//!
//! The Kubernetes operator of wscluster. It reconciles `WsCluster` objects
//! (`wscluster.io/v1alpha1`) into a node StatefulSet with its headless Service, a proxy
//! Deployment with its client-facing Service, a PodDisruptionBudget, a ConfigMap and the Secret
//! that authenticates ring-stream subscribers; it builds each cluster's ring from the
//! EndpointSlices of the node Service and publishes it to proxies and nodes through the ring
//! stream (`wscluster-ring-stream`), and it scales down in order: drain first, pods last.
//!
//! Layout — decisions are pure functions, run by one decision core with two shells:
//!
//! * [`crd`] — the `WsCluster` types; `wscluster-operator crd` prints the CRD.
//! * [`rbac`] — the exact API permissions, printed by `wscluster-operator rbac`.
//! * [`validate`] — spec rules the schema cannot check.
//! * [`resources`] — desired child objects from a spec; [`render`] prints them
//!   (`wscluster-operator render -f wscluster.yaml`).
//! * [`membership`] — endpoints from EndpointSlices, ring members from endpoints, ring versioning.
//! * [`scaling`] — the scale-down state machine.
//! * [`status`] — status and conditions.
//! * [`converge`] — one pass of the decision core over a [`converge::Platform`]: the rules above,
//!   in order, for Kubernetes and local mode alike.
//! * [`controller`] — `reconcile` and `error_policy`: the Kubernetes shell (`KubePlatform`).
//! * [`local`] — `wscluster-operator local`: the local shell (`LocalPlatform`), child processes,
//!   the control API and demo page.
//! * [`server`] — `run`: ring stream, admin endpoints, election and controller.
//! * [`ring_map`] — the fallback ring ConfigMap every published ring is written into.
//! * [`probe`] — asks draining nodes whether they are empty.
//! * [`leader`], [`metrics`] — leader election through a Lease, Prometheus metrics.
//!
//! Processes flags are fixed by the project's contract: `run --ring-listen 0.0.0.0:7400
//! --admin-listen 0.0.0.0:9090 --ring-public-url … --lease-name … --lease-namespace …
//! --pod-name … --watch-namespace …`, `crd`, `rbac`, `local`.
//!
//! ```
//! use kube::CustomResourceExt;
//! let crd = wscluster_operator::crd::WsCluster::crd();
//! assert_eq!(crd.spec.group, "wscluster.io");
//! ```

pub mod controller;
pub mod converge;
pub mod crd;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod local;
pub mod membership;
pub mod metrics;
pub mod plugin;
pub mod probe;
pub mod rbac;
pub mod render;
pub mod resources;
pub mod ring_map;
pub mod scaling;
pub mod server;
pub mod status;
pub mod validate;

pub use error::{Error, Result};
pub use server::{Config, run};

/// The CRD as YAML, exactly what `wscluster-operator crd` prints and `crds/wscluster.yaml`
/// holds.
pub fn crd_yaml() -> Result<String> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&crd::WsCluster::crd()).map_err(|e| Error::Render {
        what: "CRD",
        message: e.to_string(),
    })
}
