//! `kubectl wscluster`: answers "which node owns key X?", "what is the ring?" and "are all
//! proxies on the latest ring?" from a WsCluster's status and, when it is reachable, the
//! operator's ring stream.
//!
//! The operator binary is the plugin: linked or copied as `kubectl-wscluster` on the `PATH`,
//! `kubectl wscluster owner chat alice` runs `wscluster-operator kubectl owner chat alice`
//! (see `docs/operator.md`). Owners are computed by the same `wscluster_ring::Ring` the proxies
//! and nodes use, so the answer is the one they act on for that ring version.
//!
//! Where the ring comes from:
//! * with `--ring-url` (for example after `kubectl port-forward -n wscluster-system
//!   svc/wscluster-operator 7400`) and a ring token, the ring stream's current snapshot: exactly
//!   what proxies route by;
//! * otherwise the members the status records for the last published version (weights are not
//!   in the status, so they count as 1; the output says which source it used).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::Api;
use serde::Serialize;
use wscluster_ring::contract::stream::snapshot_path;
use wscluster_ring::{MemberState, Ring, RingSnapshot};
use wscluster_runtime::token::RING_TOKEN;

use crate::crd::{WsCluster, WsClusterStatus};

/// How long the ring stream may take to answer.
const RING_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The largest snapshot the plugin reads (the stream's own line limit).
const MAX_SNAPSHOT_BYTES: usize = wscluster_ring::contract::stream::MAX_LINE_BYTES;

/// Flags of `kubectl wscluster`.
#[derive(Args, Debug)]
pub struct PluginArgs {
    /// Namespace of the WsCluster (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The operator's ring stream, e.g. `http://127.0.0.1:7400` after a port-forward.
    #[arg(long)]
    pub ring_url: Option<String>,
    /// The ring stream's bearer token.
    #[arg(long)]
    pub ring_token: Option<String>,
    /// File holding the ring stream's bearer token.
    #[arg(long)]
    pub ring_token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// What to show.
    #[command(subcommand)]
    pub command: PluginCommand,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines for people.
    Text,
    /// One JSON document.
    Json,
}

/// The plugin's commands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum PluginCommand {
    /// The node that owns a key, and its address.
    Owner {
        /// The WsCluster's name.
        cluster: String,
        /// The business key (user id).
        key: String,
    },
    /// Version, members, states, weights and share of slots.
    Ring {
        /// The WsCluster's name.
        cluster: String,
    },
    /// Proxies in sync, drain progress, conditions.
    Status {
        /// The WsCluster's name.
        cluster: String,
    },
}

impl PluginCommand {
    fn cluster(&self) -> &str {
        match self {
            PluginCommand::Owner { cluster, .. }
            | PluginCommand::Ring { cluster }
            | PluginCommand::Status { cluster } => cluster,
        }
    }
}

/// Where a ring shown by the plugin came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RingSource {
    /// The ring stream's current snapshot.
    Stream,
    /// The WsCluster's status (weights assumed 1).
    Status,
}

/// `owner`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReport {
    /// The key asked about.
    pub key: String,
    /// The ring version the answer holds for.
    pub ring_version: u64,
    /// Where that ring came from.
    pub source: RingSource,
    /// The owning member's id, `None` when no member is active.
    pub owner: Option<String>,
    /// Its address.
    pub address: Option<String>,
}

/// One member in `ring`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    /// Member id.
    pub id: String,
    /// `podIP:port`.
    pub address: String,
    /// `active` or `draining`.
    pub state: &'static str,
    /// Weight.
    pub weight: u32,
    /// Share of the ring's slots, 0 to 1.
    pub share: f64,
}

/// `ring`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RingReport {
    /// Cluster id `namespace/name`.
    pub cluster_id: String,
    /// Ring version.
    pub version: u64,
    /// Slot count.
    pub slots: u32,
    /// Where the ring came from.
    pub source: RingSource,
    /// Members in id order.
    pub members: Vec<MemberReport>,
}

/// `status`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Cluster id `namespace/name`.
    pub cluster_id: String,
    /// Node pods / Ready node pods.
    pub replicas: i32,
    /// Node pods that are Ready.
    pub ready_replicas: i32,
    /// Ring version last published.
    pub ring_version: i64,
    /// Proxies connected to the ring stream.
    pub proxies: i32,
    /// Of those, how many applied `ringVersion`.
    pub proxies_in_sync: i32,
    /// Whether every connected proxy applied the last version.
    pub in_sync: bool,
    /// The drain under way, as a sentence.
    pub drain: Option<String>,
    /// Conditions: `(type, status, reason, message)`.
    pub conditions: Vec<(String, String, String, String)>,
}

/// The ring the status records: the last published version's members, weights 1 (the one
/// reading of a status, [`crate::membership::snapshot_from_status`]).
pub fn ring_from_status(cluster_id: &str, status: &WsClusterStatus) -> anyhow::Result<Ring> {
    let snapshot = crate::membership::snapshot_from_status(cluster_id, Some(status))
        .context("no ring published yet (status.ringVersion is not positive)")?;
    Ring::build(snapshot).context("the status's members do not form a valid ring")
}

/// `owner`'s answer from a ring.
pub fn owner_report(ring: &Ring, source: RingSource, key: &str) -> OwnerReport {
    let owner = ring.owner(key).ok();
    OwnerReport {
        key: key.to_owned(),
        ring_version: ring.version(),
        source,
        owner: owner.map(|m| m.id.clone()),
        address: owner.map(|m| m.address.clone()),
    }
}

/// `ring`'s answer from a ring.
pub fn ring_report(ring: &Ring, source: RingSource) -> RingReport {
    let slots = ring.slot_count();
    let members = ring
        .members()
        .iter()
        .enumerate()
        .map(|(i, m)| MemberReport {
            id: m.id.clone(),
            address: m.address.clone(),
            state: match m.state {
                MemberState::Active => "active",
                MemberState::Draining => "draining",
            },
            weight: m.weight,
            share: f64::from(ring.slots_owned(i)) / f64::from(slots),
        })
        .collect();
    RingReport {
        cluster_id: ring.snapshot().cluster_id.clone(),
        version: ring.version(),
        slots,
        source,
        members,
    }
}

/// `status`'s answer from a WsCluster.
pub fn status_report(cluster_id: &str, status: &WsClusterStatus) -> StatusReport {
    let drain = status.drain.as_ref().map(|d| {
        format!(
            "down to {} replicas since {}, leaving members draining from ring version {}",
            d.target_replicas, d.since.0, d.ring_version
        )
    });
    StatusReport {
        cluster_id: cluster_id.to_owned(),
        replicas: status.replicas,
        ready_replicas: status.ready_replicas,
        ring_version: status.ring_version,
        proxies: status.proxies,
        proxies_in_sync: status.proxies_in_sync,
        in_sync: status.proxies_in_sync >= status.proxies,
        drain,
        conditions: status
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect(),
    }
}

/// The ring stream's current snapshot of `cluster_id`.
///
/// # Errors
///
/// The stream is unreachable, refuses the token, has no ring for the cluster, or answers
/// something that is not a valid ring.
pub async fn fetch_ring(base_url: &str, token: &str, cluster_id: &str) -> anyhow::Result<Ring> {
    let url = format!(
        "{}{}",
        base_url.trim_end_matches('/'),
        snapshot_path(cluster_id)
    );
    let request = http::Request::get(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .with_context(|| format!("--ring-url {base_url}: not a usable URL"))?;
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    let response = tokio::time::timeout(RING_FETCH_TIMEOUT, client.request(request))
        .await
        .with_context(|| format!("{url}: no answer within {RING_FETCH_TIMEOUT:?}"))?
        .with_context(|| format!("{url}: cannot connect"))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_SNAPSHOT_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!(
            "{url}: the ring stream answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let snapshot: RingSnapshot = serde_json::from_slice(&body)
        .with_context(|| format!("{url}: the answer is not a ring snapshot"))?;
    Ring::build(snapshot).with_context(|| format!("{url}: the snapshot is not a valid ring"))
}

/// Runs a command against the API server (and the ring stream when given) and returns its
/// output.
///
/// # Errors
///
/// Bad flags, an unreachable API server or ring stream, a missing WsCluster.
pub async fn run(client: kube::Client, args: &PluginArgs) -> anyhow::Result<String> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let name = args.command.cluster();
    let cluster = Api::<WsCluster>::namespaced(client, &namespace)
        .get_opt(name)
        .await
        .with_context(|| format!("reading wscluster {namespace}/{name}"))?
        .with_context(|| format!("wscluster {namespace}/{name} not found"))?;
    let cluster_id = format!("{namespace}/{name}");
    let status = cluster.status.unwrap_or_default();
    let ring = || async {
        let token = RING_TOKEN.read(args.ring_token.as_deref(), args.ring_token_file.as_deref())?;
        match (&args.ring_url, token) {
            (Some(url), Some(token)) => Ok((
                fetch_ring(url, &token, &cluster_id).await?,
                RingSource::Stream,
            )),
            (Some(_), None) => bail!("--ring-url needs --ring-token-file or --ring-token"),
            (None, _) => Ok((ring_from_status(&cluster_id, &status)?, RingSource::Status)),
        }
    };
    let text = match (&args.command, args.output) {
        (PluginCommand::Owner { key, .. }, output) => {
            let (ring, source) = ring().await?;
            render(&owner_report(&ring, source, key), output, owner_text)?
        }
        (PluginCommand::Ring { .. }, output) => {
            let (ring, source) = ring().await?;
            render(&ring_report(&ring, source), output, ring_text)?
        }
        (PluginCommand::Status { .. }, output) => {
            render(&status_report(&cluster_id, &status), output, status_text)?
        }
    };
    Ok(text)
}

fn render<T: Serialize>(
    report: &T,
    output: Output,
    text: fn(&T) -> String,
) -> anyhow::Result<String> {
    Ok(match output {
        Output::Text => text(report),
        Output::Json => serde_json::to_string_pretty(report)? + "\n",
    })
}

fn source_text(source: RingSource) -> &'static str {
    match source {
        RingSource::Stream => "ring stream",
        RingSource::Status => "status (weights assumed 1)",
    }
}

/// `owner` for people: `alice → chat-node-1 (10.0.0.5:8080), ring version 7 from …`.
pub fn owner_text(r: &OwnerReport) -> String {
    match (&r.owner, &r.address) {
        (Some(owner), Some(address)) => format!(
            "{} -> {owner} ({address}), ring version {} from the {}\n",
            r.key,
            r.ring_version,
            source_text(r.source)
        ),
        _ => format!(
            "{} -> no owner: no active member in ring version {} from the {}\n",
            r.key,
            r.ring_version,
            source_text(r.source)
        ),
    }
}

/// `ring` for people: a header line and one line per member.
pub fn ring_text(r: &RingReport) -> String {
    let mut out = format!(
        "{} ring version {}, {} slots, from the {}\n",
        r.cluster_id,
        r.version,
        r.slots,
        source_text(r.source)
    );
    let _ = writeln!(
        out,
        "{:<32} {:<22} {:<9} {:>6} {:>7}",
        "MEMBER", "ADDRESS", "STATE", "WEIGHT", "SHARE"
    );
    for m in &r.members {
        let _ = writeln!(
            out,
            "{:<32} {:<22} {:<9} {:>6} {:>6.1}%",
            m.id,
            m.address,
            m.state,
            m.weight,
            m.share * 100.0
        );
    }
    out
}

/// `status` for people.
pub fn status_text(r: &StatusReport) -> String {
    let mut out = format!(
        "{}: {}/{} nodes ready, ring version {}, proxies in sync {}/{}{}\n",
        r.cluster_id,
        r.ready_replicas,
        r.replicas,
        r.ring_version,
        r.proxies_in_sync,
        r.proxies,
        if r.in_sync { "" } else { " (NOT IN SYNC)" }
    );
    let _ = writeln!(out, "drain: {}", r.drain.as_deref().unwrap_or("none"));
    for (kind, status, reason, message) in &r.conditions {
        let _ = writeln!(out, "{kind}={status} {reason}: {message}");
    }
    out
}

#[cfg(test)]
mod tests;
