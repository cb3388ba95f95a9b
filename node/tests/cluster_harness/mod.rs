//! Real Redis servers on loopback for one test: a Redis Cluster of three masters and three
//! replicas (`redis-server --cluster-enabled yes`, `redis-cli --cluster create …
//! --cluster-replicas 1`), or a standalone master with one replica ([`MasterAndReplica`]). Each
//! server has `appendonly yes` and `appendfsync always` in a directory of its own. Every process
//! is killed and the directory removed when the value is dropped, also on a panic.
//!
//! The cluster's node timeout is one second, so a killed master is failed over within a few
//! seconds (the default, 15 s, is for real networks).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// Nodes in the test cluster: three masters, each with one replica.
const NODES: u16 = 6;
/// `--cluster-node-timeout` in milliseconds: how long a silent master takes to be failed.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// Longest wait for the cluster to form or to recover from a failover.
const SETTLE: Duration = Duration::from_secs(30);

/// One node of the cluster, as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node id.
    pub id: String,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    /// Master (`true`) or replica.
    pub master: bool,
    /// Flagged failed by the cluster.
    pub failed: bool,
    /// The slot ranges it serves (masters only), inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// Server processes and their data directory: dropping it kills every process and removes the
/// directory (kept, with the logs, when the test panics).
struct Servers {
    /// The processes, in port order; `None` once killed.
    children: Vec<Option<Child>>,
    /// Data directories and logs.
    dir: PathBuf,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("redis logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Servers {
    /// A fresh directory named after `what` and `base`, nothing started yet.
    fn new(what: &str, base: u16) -> Servers {
        let dir = std::env::temp_dir().join(format!("wsc-{what}-{}-{base}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Servers {
            children: Vec::new(),
            dir,
        }
    }

    /// Starts `redis-server` on `port` with `role` (cluster or replica flags) and waits until
    /// it answers `PING`.
    async fn start(&mut self, port: u16, role: &[&str]) {
        self.children
            .push(Some(spawn_server(&self.dir, port, role)));
        until(&format!("redis-server on {port}"), || async {
            on_node::<String>(port, &redis::cmd("PING")).await.is_ok()
        })
        .await;
    }

    /// Sends `signal` (`STOP`, `CONT`) to the `i`th server.
    fn signal(&self, i: usize, signal: &str) {
        let pid = self.children[i]
            .as_ref()
            .map(Child::id)
            .expect("a running server");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Kills the `i`th server with SIGKILL (no shutdown, no last write) and reaps it.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().expect("kill -9 redis-server");
            let _ = child.wait();
        }
    }
}

/// A running cluster; dropping it kills every process.
pub struct RedisCluster {
    /// The client ports, one per node.
    pub ports: Vec<u16>,
    /// The processes, in the order of `ports`.
    servers: Servers,
}

/// Whether `port` and its cluster bus port (`port + 10000`) are free on loopback now.
fn free(port: u16) -> bool {
    let bind = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    bind(port) && bind(port + 10_000)
}

/// The first base port from `from` (in steps of 10, below 18000) whose `count` ports are free.
fn free_base(from: u16, count: u16) -> u16 {
    (from..18_000)
        .step_by(10)
        .find(|base| (0..count).all(|i| free(base + i)))
        .expect("free ports (and bus ports) between 17000 and 18000")
}

/// `redis-server` on `port` with `role`'s flags, or a failure saying how to get it.
fn spawn_server(dir: &std::path::Path, port: u16, role: &[&str]) -> Child {
    let data = dir.join(port.to_string());
    std::fs::create_dir_all(&data).expect("data dir");
    let data = data.to_str().expect("utf-8 temp path").to_owned();
    let port_s = port.to_string();
    let args = [
        "--port",
        &port_s,
        "--bind",
        "127.0.0.1",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--dir",
        &data,
        "--logfile",
        "redis.log",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ];
    Command::new("redis-server")
        .args(args)
        .args(role)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): install it (scripts/test.sh does)")
        })
}

/// A plain connection to one node (no redirections): for admin commands.
pub async fn node_connection(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    match tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    {
        Ok(con) => con,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "connect timed out",
        ))),
    }
}

/// Runs one command on the node at `port`, bounded.
pub async fn on_node<T: redis::FromRedisValue>(
    port: u16,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let mut con = node_connection(port).await?;
    match tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut con)).await {
        Ok(reply) => reply,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "reply timed out",
        ))),
    }
}

/// Polls `check` every 50 ms until it holds, failing after [`SETTLE`] with `what`.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + SETTLE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server at `port` is a master, or a replica with its master link up.
async fn wait_synced(port: u16) {
    until(&format!("the replica on {port} synced"), || async {
        let info: String = on_node(port, redis::cmd("INFO").arg("replication"))
            .await
            .unwrap_or_default();
        info.contains("role:master") || info.contains("master_link_status:up")
    })
    .await;
}

/// Parses `CLUSTER NODES`.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?.split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags = fields.get(2)?;
            let slots = fields
                .iter()
                .skip(8)
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|n| (n, n)),
                })
                .collect();
            Some(ClusterNode {
                id: (*fields.first()?).to_owned(),
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail") && !flags.contains("pfail"),
                slots,
            })
        })
        .collect()
}

impl RedisCluster {
    /// Starts six servers on free ports from `base_hint` up, makes them a cluster with one
    /// replica per master, and waits until every node reports `cluster_state:ok`.
    pub async fn start(base_hint: u16) -> RedisCluster {
        let base = free_base(base_hint, NODES);
        let mut servers = Servers::new("redis-cluster", base);
        let ports: Vec<u16> = (0..NODES).map(|i| base + i).collect();
        let timeout = NODE_TIMEOUT_MS.to_string();
        let role = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
        ];
        for port in &ports {
            servers.start(*port, &role).await;
        }
        let cluster = RedisCluster { ports, servers };
        cluster.create();
        cluster.wait_ok(&cluster.ports).await;
        cluster.wait_replicas_synced().await;
        cluster
    }

    /// Waits until every replica has its master link up (the first full sync done): a
    /// replica that never synced refuses to take over, so a failover test must not start
    /// before.
    async fn wait_replicas_synced(&self) {
        for port in &self.ports {
            wait_synced(*port).await;
        }
    }

    /// `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`.
    fn create(&self) {
        let addrs: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): install redis-tools"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    /// Waits until every node of `ports` says `cluster_state:ok` with all 16384 slots served
    /// by live masters, and they agree on three masters.
    pub async fn wait_ok(&self, ports: &[u16]) {
        for port in ports {
            until(&format!("cluster_state:ok on {port}"), || async {
                let info: String = match on_node(*port, redis::cmd("CLUSTER").arg("INFO")).await {
                    Ok(info) => info,
                    Err(_) => return false,
                };
                let nodes = self.nodes_seen_by(*port).await;
                let masters = nodes.iter().filter(|n| n.master && !n.failed).count();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && masters == 3
            })
            .await;
        }
    }

    /// `CLUSTER NODES` as the node at `port` sees it (empty if it does not answer).
    pub async fn nodes_seen_by(&self, port: u16) -> Vec<ClusterNode> {
        on_node::<String>(port, redis::cmd("CLUSTER").arg("NODES"))
            .await
            .map(|text| parse_nodes(&text))
            .unwrap_or_default()
    }

    /// The port of the live master serving `slot`, as the node at `seen_by` sees it.
    pub async fn master_of(&self, slot: u16, seen_by: u16) -> Option<u16> {
        self.nodes_seen_by(seen_by)
            .await
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of a live node).
    pub async fn slot_of(&self, key: &str, seen_by: u16) -> u16 {
        on_node(seen_by, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
            .expect("CLUSTER KEYSLOT")
    }

    /// `redis://127.0.0.1:<port>` for each of `ports`, comma-separated: a `--redis-cluster`.
    pub fn seeds(ports: &[u16]) -> String {
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node at `port`.
    fn index(&self, port: u16) -> usize {
        self.ports
            .iter()
            .position(|p| *p == port)
            .expect("a port of this cluster")
    }

    /// Kills the node at `port` with SIGKILL (no shutdown, no last write) and reaps it.
    pub fn kill(&mut self, port: u16) {
        let i = self.index(port);
        self.servers.kill(i);
    }

    /// Stops the node at `port` with SIGSTOP: its connections stay open and nothing is
    /// answered, as a frozen machine or a partition looks to a client (no reset, no refusal).
    pub fn pause(&self, port: u16) {
        self.servers.signal(self.index(port), "STOP");
    }

    /// Lets a node stopped by [`RedisCluster::pause`] run again.
    pub fn resume(&self, port: u16) {
        self.servers.signal(self.index(port), "CONT");
    }

    /// Waits until the nodes other than `dead` see a new live master for `slot` (the dead
    /// master's replica promoted) and report the cluster ok; returns the new master's port.
    pub async fn wait_failover(&self, slot: u16, dead: u16) -> u16 {
        let live: Vec<u16> = self.ports.iter().copied().filter(|p| *p != dead).collect();
        let deadline = Instant::now() + SETTLE;
        let promoted = loop {
            if let Some(port) = self.master_of(slot, live[0]).await.filter(|p| *p != dead) {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for a replica promoted for slot {slot}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.wait_ok(&live).await;
        promoted
    }
}

/// A standalone master and one replica of it (`--replicaof`); dropping it kills both.
pub struct MasterAndReplica {
    /// The master's port.
    pub master: u16,
    /// The replica's port.
    pub replica: u16,
    /// Both processes.
    _servers: Servers,
}

impl MasterAndReplica {
    /// Starts a master and a replica on free ports from `base_hint` up and waits until the
    /// replica's first sync is done.
    pub async fn start(base_hint: u16) -> MasterAndReplica {
        let base = free_base(base_hint, 2);
        let (master, replica) = (base, base + 1);
        let mut servers = Servers::new("redis-pair", base);
        servers.start(master, &[]).await;
        let master_port = master.to_string();
        servers
            .start(replica, &["--replicaof", "127.0.0.1", &master_port])
            .await;
        wait_synced(replica).await;
        MasterAndReplica {
            master,
            replica,
            _servers: servers,
        }
    }

    /// Waits until the replica acknowledged everything the master has written so far
    /// (`WAIT 1`, bounded).
    pub async fn wait_replicated(&self) {
        let acked: i64 = on_node(self.master, redis::cmd("WAIT").arg(1).arg(1900))
            .await
            .expect("WAIT");
        assert_eq!(acked, 1, "the replica acknowledged the master's writes");
    }

    /// `REPLICAOF NO ONE` on the replica: it becomes a master of a history of its own, as a
    /// failover promotes it, and no longer receives what the old master writes.
    pub async fn promote(&self) {
        let ok: String = on_node(self.replica, redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
            .await
            .expect("REPLICAOF NO ONE");
        assert_eq!(ok, "OK");
    }
}
