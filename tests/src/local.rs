//! Starting, driving and stopping `wscluster-operator local`.
//!
//! Local mode needs only the operator binary ([`crate::env::operator_binary`]): it runs nodes
//! and proxies as subcommands of its own executable. Its first stdout line announces the
//! control API (`listening on <addr>`, possibly followed by named extra listeners); everything
//! else comes from `GET /api/state`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wscluster_ring::{Ring, RingSnapshot};
use wscluster_runtime::announce::Announcement;

use crate::backends::{delete_redis_keys, require_service};
use crate::env::{amqp_url, operator_binary, redis_url, unique};
use crate::http;
use crate::wait::wait_for;

/// Longest local mode may take to announce its control address.
pub const ANNOUNCE_TIMEOUT_SECONDS: u64 = 30;
/// Longest local mode may take to stop after SIGTERM (it stops its children first).
pub const STOP_TIMEOUT_SECONDS: u64 = 30;
/// Longest [`Local::start`] waits for every node in the ring and every proxy on it.
pub const SETTLE_TIMEOUT_SECONDS: u64 = 60;

/// How to start local mode.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Initial nodes.
    pub nodes: u32,
    /// Proxy processes.
    pub proxies: u32,
    /// Unique cluster id (`e2e/<unique>`): names the RabbitMQ exchange and the Redis keys.
    pub cluster_id: String,
    /// Redis URL, if any (else in-memory mailboxes).
    pub redis_url: Option<String>,
    /// Unique Redis key prefix, deleted when the run stops.
    pub redis_prefix: String,
    /// RabbitMQ URL, if any (else an in-memory bus).
    pub amqp_url: Option<String>,
    /// Seconds a drain waits for the leaving nodes to empty.
    pub drain_timeout_seconds: u64,
    /// Nodes' grace period.
    pub node_grace_period_seconds: u64,
    /// Proxy config YAML written to a file in the log directory and passed with
    /// `--proxy-config`.
    pub proxy_config: Option<String>,
    /// `--proxy-source-addresses`: each proxy dials the nodes from its own loopback address.
    pub proxy_source_addresses: bool,
}

impl LocalOptions {
    /// Real Redis and RabbitMQ, unique names derived from `name`.
    pub fn real_backends(name: &str, nodes: u32, proxies: u32) -> LocalOptions {
        let id = unique(name);
        LocalOptions {
            nodes,
            proxies,
            cluster_id: format!("e2e/{id}"),
            redis_url: Some(redis_url()),
            redis_prefix: format!("wscluster-test-{id}"),
            amqp_url: Some(amqp_url()),
            drain_timeout_seconds: 30,
            node_grace_period_seconds: 5,
            proxy_config: None,
            proxy_source_addresses: false,
        }
    }

    /// The `local` command line for these options, logging to `log_dir`.
    fn command(&self, log_dir: &Path) -> anyhow::Result<Command> {
        let mut command = Command::new(operator_binary()?);
        command
            .arg("local")
            .args(["--nodes", &self.nodes.to_string()])
            .args(["--proxies", &self.proxies.to_string()])
            .args(["--control-listen", "127.0.0.1:0", "--proxy-port", "0"])
            .args(
                self.proxy_source_addresses
                    .then_some("--proxy-source-addresses"),
            )
            .args(["--cluster-id", &self.cluster_id])
            .args([
                "--drain-timeout-seconds",
                &self.drain_timeout_seconds.to_string(),
            ])
            .args([
                "--node-grace-period-seconds",
                &self.node_grace_period_seconds.to_string(),
            ])
            .args(["--redis-prefix", &self.redis_prefix])
            .arg("--log-dir")
            .arg(log_dir)
            .stderr(std::fs::File::create(log_dir.join("operator.log"))?);
        if let Some(url) = &self.redis_url {
            command.args(["--redis-url", url]);
        }
        if let Some(url) = &self.amqp_url {
            command.args(["--amqp-url", url]);
        }
        if let Some(yaml) = &self.proxy_config {
            let path = log_dir.join("proxy.yaml");
            std::fs::write(&path, yaml)?;
            command.arg("--proxy-config").arg(path);
        }
        Ok(command)
    }

    /// Fails unless the backends these options name are reachable.
    async fn require_backends(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.redis_url {
            require_service(url, "Redis").await?;
        }
        if let Some(url) = &self.amqp_url {
            require_service(url, "RabbitMQ").await?;
        }
        Ok(())
    }
}

/// The Redis keys a run owns, deleted when it stops.
#[derive(Debug, Clone)]
struct RedisKeys {
    /// The Redis the run used.
    url: String,
    /// The run's unique key prefix.
    prefix: String,
}

/// A running `wscluster-operator local`. Dropping it sends SIGTERM (it stops its children).
pub struct Local {
    /// The process; `None` once stopped.
    child: Option<Child>,
    /// `http://<addr>` of the control API, from the announcement line.
    pub control: String,
    /// Where the children's logs are, when the harness chose it (removed after a clean stop).
    pub log_dir: Option<PathBuf>,
    /// Keys to delete at [`Local::stop`].
    redis_keys: Option<RedisKeys>,
}

impl Local {
    /// Starts local mode and waits until every node is in the ring and every proxy applied it.
    pub async fn start(options: LocalOptions) -> anyhow::Result<Local> {
        Local::start_within(options, Duration::from_secs(SETTLE_TIMEOUT_SECONDS)).await
    }

    /// [`Local::start`] waiting up to `settle` for the ring: a dozen proxies and several
    /// nodes starting on two loaded cores take longer than the tests' handful.
    pub async fn start_within(options: LocalOptions, settle: Duration) -> anyhow::Result<Local> {
        options.require_backends().await?;
        let log_dir = std::env::temp_dir().join(unique("wscluster-e2e"));
        std::fs::create_dir_all(&log_dir)?;
        let log = log_dir.join("operator.log");
        let mut local =
            Local::launch(options.command(&log_dir)?, &log.display().to_string()).await?;
        local.log_dir = Some(log_dir);
        local.redis_keys = options.redis_url.clone().map(|url| RedisKeys {
            url,
            prefix: options.redis_prefix.clone(),
        });
        let nodes = options.nodes as usize;
        local.wait_settled(nodes, settle).await?;
        Ok(local)
    }

    /// Spawns `command` (a `local` command line; stdin and stdout are taken over) and reads
    /// the control address from its first stdout line. `stderr_at` says where its stderr
    /// goes, for the error when it exits first.
    pub async fn launch(mut command: Command, stderr_at: &str) -> anyhow::Result<Local> {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command
            .spawn()
            .context("starting wscluster-operator local")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(
            Duration::from_secs(ANNOUNCE_TIMEOUT_SECONDS),
            lines.next_line(),
        )
        .await
        .with_context(|| {
            format!("wscluster-operator local printed nothing within {ANNOUNCE_TIMEOUT_SECONDS} s")
        })??;
        // Keep reading so the banner and anything after it never fill the pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        // Built before the checks below, so a failure still stops the process (Drop).
        let mut local = Local {
            child: Some(child),
            control: String::new(),
            log_dir: None,
            redis_keys: None,
        };
        let Some(first) = first else {
            bail!("wscluster-operator local exited before announcing its address; see {stderr_at}");
        };
        let address = first
            .trim()
            .parse::<Announcement>()
            .with_context(|| format!("the first line of wscluster-operator local: {first:?}"))?
            .addr;
        local.control = format!("http://{address}");
        Ok(local)
    }

    /// The process id of `wscluster-operator local` while it runs (its children are the nodes
    /// and proxies), for reading its peak memory from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// `GET /api/state`.
    pub async fn state(&self) -> anyhow::Result<Value> {
        http::get_json(&format!("{}/api/state", self.control)).await
    }

    /// A control command: `POST /api/<path>` with an optional body; fails unless 200, and
    /// answers the reply (`{"ok":true,"ring":…}`, the ring published right after the command).
    pub async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/api/{path}", self.control);
        let r = http::request(Method::POST, &url, body.as_ref()).await?;
        if r.status != StatusCode::OK {
            bail!("POST /api/{path} answered {}: {}", r.status, r.text());
        }
        r.json()
    }

    /// Sets the desired node count; answers the reply, whose `ring` is the ring published by
    /// the change (for a scale-down, the drain ring).
    pub async fn scale(&self, replicas: u32) -> anyhow::Result<Value> {
        self.post("scale", Some(serde_json::json!({ "replicas": replicas })))
            .await
    }

    /// The current ring as local mode published it.
    pub async fn ring(&self) -> anyhow::Result<Ring> {
        ring_of(&self.state().await?)
    }

    /// The proxies' client URLs (`http://…`).
    pub async fn proxy_urls(&self) -> anyhow::Result<Vec<String>> {
        let state = self.state().await?;
        Ok(state["proxies"]
            .as_array()
            .context("no proxies in /api/state")?
            .iter()
            .filter_map(|p| p["url"].as_str().map(str::to_owned))
            .collect())
    }

    /// The proxies' server API URLs and the run's first API key.
    pub async fn server_api(&self) -> anyhow::Result<crate::fleet::ServerApi> {
        let state = self.state().await?;
        let urls = state["proxies"]
            .as_array()
            .context("no proxies in /api/state")?
            .iter()
            .filter_map(|p| p["apiUrl"].as_str().map(str::to_owned))
            .collect();
        let file = state["apiKeysFile"]
            .as_str()
            .context("no apiKeysFile in /api/state")?;
        let keys = wscluster_runtime::credentials::CredentialSet::from_file(Path::new(file))?;
        Ok(crate::fleet::ServerApi {
            urls,
            key: keys.current().to_owned(),
        })
    }

    /// Waits until the ring has exactly `nodes` members, all active, and every running proxy
    /// applied the current version. Returns that state.
    pub async fn wait_settled(&self, nodes: usize, timeout: Duration) -> anyhow::Result<Value> {
        let what = format!("{nodes} active members applied by every proxy");
        wait_for(&what, timeout, || async {
            let s = self.state().await?;
            Ok(settled(&s, nodes).then_some(s))
        })
        .await
    }

    /// Stops local mode (SIGTERM), fails unless it exits successfully within
    /// [`STOP_TIMEOUT_SECONDS`], and deletes the run's Redis keys either way. The log
    /// directory the harness chose is removed after a clean exit and kept otherwise.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let exit = self.stop_process().await;
        if let Some(keys) = &self.redis_keys {
            delete_redis_keys(&keys.url, &keys.prefix).await?;
        }
        let status = exit?;
        let logs = self.log_dir.as_ref().map(|d| d.display().to_string());
        anyhow::ensure!(
            status.success(),
            "wscluster-operator local exited with {status}; logs in {logs:?}"
        );
        if let Some(dir) = &self.log_dir {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the logs of a clean run, {}", dir.display()))?;
        }
        Ok(())
    }

    async fn stop_process(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .context("local mode was already stopped")?;
        terminate(&child);
        let limit = Duration::from_secs(STOP_TIMEOUT_SECONDS);
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = child.start_kill();
                bail!("wscluster-operator local did not stop within {limit:?} of SIGTERM");
            }
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SIGTERM rather than SIGKILL: local mode then stops its own children.
            terminate(child);
        }
    }
}

/// SIGTERM through `kill(1)` (the workspace forbids `unsafe`, so no `libc::kill`).
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether a state shows `nodes` active members and every running proxy on the version.
pub fn settled(state: &Value, nodes: usize) -> bool {
    let members = state["ring"]["members"].as_array();
    let active = members.map_or(0, |m| m.iter().filter(|m| m["state"] == "active").count());
    let version = state["ringVersion"].as_u64();
    let proxies_on_version = state["proxies"].as_array().is_some_and(|ps| {
        ps.iter()
            .filter(|p| p["process"] == "running")
            .all(|p| p["appliedVersion"].as_u64() == version)
    });
    active == nodes && members.map_or(0, Vec::len) == nodes && proxies_on_version
}

/// The ring in a state.
pub fn ring_of(state: &Value) -> anyhow::Result<Ring> {
    let snapshot: RingSnapshot = serde_json::from_value(state["ring"].clone())
        .context("the state's ring is not a ring snapshot")?;
    Ok(Ring::build(snapshot)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_means_exactly_n_active_members_on_every_running_proxy() {
        let state = |states: &[&str], applied: &[(&str, u64)]| {
            serde_json::json!({
                "ringVersion": 7,
                "ring": {"members": states.iter().map(|s| serde_json::json!({"state": s})).collect::<Vec<_>>()},
                "proxies": applied.iter().map(|(p, v)| serde_json::json!({"process": p, "appliedVersion": v})).collect::<Vec<_>>(),
            })
        };
        assert!(settled(
            &state(&["active", "active"], &[("running", 7), ("exited", 3)]),
            2
        ));
        assert!(!settled(
            &state(&["active", "draining"], &[("running", 7)]),
            1
        ));
        assert!(!settled(
            &state(&["active", "active"], &[("running", 6)]),
            2
        ));
        assert!(!settled(&state(&["active"], &[("running", 7)]), 2));
    }
}
