//! Backends a chaos scenario owns: its own `redis-server` and `rabbitmq-server` on free ports,
//! which it kills with SIGKILL and starts again on the same data directory. The shared services
//! (`WSCLUSTER_TEST_*`) are never touched. With [`ServerTls`] they serve TLS only
//! (`rediss://`, `amqps://`), with certificates the test made.
//!
//! Each server runs in a process group of its own, so SIGKILL reaches every process it started
//! (`rabbitmq-server` is a shell script around the Erlang VM), and dropping the value kills it.
//! Binaries: `WSCLUSTER_CHAOS_REDIS_SERVER` (default `redis-server` on `PATH`) and
//! `WSCLUSTER_CHAOS_RABBITMQ_SERVER` (default `/usr/lib/rabbitmq/bin/rabbitmq-server`, the script
//! that runs the VM as the calling user; `/usr/sbin/rabbitmq-server` switches users with `su`,
//! which starts a new session the group kill would not reach).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::env::{TempDir, unique};
use crate::wait::POLL_INTERVAL_MS;

/// Longest a private Redis may take to answer PING after a start.
pub const REDIS_START_SECONDS: u64 = 15;
/// Longest a private RabbitMQ may take to accept AMQP connections after a start (it takes
/// 6-8 s on 2 idle cores, and was seen taking 95 s at load average 12 with several builds on
/// them).
pub const RABBIT_START_SECONDS: u64 = 120;
/// Starts of a private RabbitMQ that may end with the server exiting at once, each on a new
/// distribution port (a port found free can be taken by another process before the server
/// binds it).
const RABBIT_START_ATTEMPTS: u32 = 3;
/// Lines of a server's log shown when it exits at start.
const LOG_TAIL_LINES: usize = 20;
/// Longest a killed server may take to be reaped.
const REAP_SECONDS: u64 = 10;

/// A free port on 127.0.0.1 (bound and released: another process could take it first, which
/// then fails the start clearly).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A server process leading its own process group.
struct Group {
    /// The group leader.
    child: Child,
    /// What it is, for errors.
    what: String,
}

impl Group {
    /// Spawns `command` as the leader of a new process group, output to `log`.
    fn spawn(mut command: Command, what: &str, log: &Path) -> anyhow::Result<Group> {
        let out = std::fs::File::create(log)?;
        command
            .process_group(0)
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = command
            .spawn()
            .with_context(|| format!("starting {what} (see {})", log.display()))?;
        Ok(Group {
            child,
            what: what.to_owned(),
        })
    }

    /// SIGKILL to the whole group, then waits for the leader.
    async fn kill(mut self) -> anyhow::Result<()> {
        kill_group(&self.child);
        tokio::time::timeout(Duration::from_secs(REAP_SECONDS), self.child.wait())
            .await
            .with_context(|| format!("{} did not die within {REAP_SECONDS} s", self.what))??;
        Ok(())
    }

    /// Polls `up` until it answers true (the server serves), failing at once if the server
    /// exits and after `limit` otherwise, naming its log.
    async fn wait_up<F, Fut>(
        &mut self,
        what: &str,
        limit: Duration,
        log: &Path,
        mut up: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(anyhow::Error::new(ExitedAtStart(format!(
                    "{} exited at start with {status}; log: {}; its last lines:\n{}",
                    self.what,
                    log.display(),
                    log_tail(log, LOG_TAIL_LINES)
                ))));
            }
            if up().await.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not {what} within {limit:?}; log: {}",
                    self.what,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(&self.child);
    }
}

/// `kill -KILL -- -<pgid>`: the group this harness created for the child, nothing else.
fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Sends `signal` (`TERM`, `KILL`) to one process, by id.
pub fn signal_pid(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

/// The program named by `env`, else `default`.
fn program(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// The PEM files a private server presents for TLS, made by the test (rcgen): its certificate
/// chain and key, and the CA that signed it (which clients are given to trust).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key_file: PathBuf,
    /// The CA certificate that signed [`ServerTls::cert_file`] (PEM).
    pub ca_file: PathBuf,
}

/// A `redis-server` of the test's own. Durable: `--appendonly yes --appendfsync always`, so
/// every write it answered survives SIGKILL. Volatile: no persistence at all, so a restart
/// starts empty.
pub struct PrivateRedis {
    /// Its port on 127.0.0.1.
    port: u16,
    /// Whether it persists every write before answering.
    durable: bool,
    /// Its data directory and log.
    dir: TempDir,
    /// When set, it serves TLS only on `port` (`--port 0 --tls-port <port>`).
    tls: Option<ServerTls>,
    /// The running server, if any.
    process: Option<Group>,
}

impl PrivateRedis {
    /// Starts one on a free port and waits until it answers PING.
    pub async fn start(durable: bool) -> anyhow::Result<PrivateRedis> {
        PrivateRedis::start_with(durable, None).await
    }

    /// Starts one serving TLS only, with `tls`'s certificate (clients need not present one),
    /// and waits until it answers PING over TLS.
    pub async fn start_tls(durable: bool, tls: ServerTls) -> anyhow::Result<PrivateRedis> {
        PrivateRedis::start_with(durable, Some(tls)).await
    }

    async fn start_with(durable: bool, tls: Option<ServerTls>) -> anyhow::Result<PrivateRedis> {
        let mut redis = PrivateRedis {
            port: free_port()?,
            durable,
            dir: TempDir::new("wscluster-chaos-redis")?,
            tls,
            process: None,
        };
        redis.spawn().await?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client for [`PrivateRedis::url`], trusting the test's CA with TLS.
    fn client(&self) -> anyhow::Result<redis::Client> {
        let Some(tls) = &self.tls else {
            return Ok(redis::Client::open(self.url())?);
        };
        wscluster_runtime::ca::install_crypto_provider();
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&tls.ca_file)?),
        };
        Ok(redis::Client::build_with_tls(self.url(), certificates)?)
    }

    /// SIGKILL, then waits until it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        match self.process.take() {
            Some(group) => group.kill().await,
            None => bail!("the private Redis is not running"),
        }
    }

    /// Starts it again on the same port and directory (a durable one replays its log).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "the private Redis still runs");
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(program("WSCLUSTER_CHAOS_REDIS_SERVER", "redis-server"));
        let port = self.port.to_string();
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => command
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file),
        };
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--daemonize", "no", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path());
        if self.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let log = self.dir.path().join("redis.log");
        let mut group = Group::spawn(command, "the private redis-server", &log)?;
        let client = self.client()?;
        let limit = Duration::from_secs(REDIS_START_SECONDS);
        group
            .wait_up("answer PING", limit, &log, || async {
                let mut c = client.get_multiplexed_async_connection().await?;
                let pong: String = redis::cmd("PING").query_async(&mut c).await?;
                Ok(pong == "PONG")
            })
            .await?;
        self.process = Some(group);
        Ok(())
    }
}

/// A `rabbitmq-server` of the test's own: its own node name, ports, data and config (no
/// plugins, AMQP on 127.0.0.1 only, Erlang distribution on 127.0.0.1 only); the host's epmd is
/// shared, as every Erlang node on a machine shares it.
pub struct PrivateRabbit {
    /// AMQP port.
    port: u16,
    /// Erlang distribution port.
    dist_port: u16,
    /// `<unique>@localhost`, kept across restarts (the data directory belongs to it).
    node_name: String,
    /// Data, config and logs.
    dir: TempDir,
    /// Whether `port` is an AMQPS (TLS) listener instead of plain AMQP.
    tls: bool,
    /// The running server, if any.
    process: Option<Group>,
}

impl PrivateRabbit {
    /// Starts one and waits until it accepts AMQP connections.
    pub async fn start() -> anyhow::Result<PrivateRabbit> {
        PrivateRabbit::start_with(None).await
    }

    /// Starts one with only an AMQPS listener, presenting `tls`'s certificate (clients need
    /// not present one), and waits until it accepts connections.
    pub async fn start_tls(tls: ServerTls) -> anyhow::Result<PrivateRabbit> {
        PrivateRabbit::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<ServerTls>) -> anyhow::Result<PrivateRabbit> {
        let dir = TempDir::new("wscluster-chaos-rabbit")?;
        let port = free_port()?;
        let listeners = match &tls {
            None => format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
            Some(tls) => rabbit_tls_conf(port, tls),
        };
        let files = [
            ("enabled_plugins", "[].\n".to_owned()),
            ("rabbitmq.conf", listeners),
            // Replaces the host's rabbitmq-env.conf, which names the host's own node.
            ("rabbitmq-env.conf", String::new()),
        ];
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text)?;
        }
        let mut rabbit = PrivateRabbit {
            port,
            dist_port: free_port()?,
            node_name: format!("{}@localhost", unique("wscluster-chaos")),
            dir,
            tls: tls.is_some(),
            process: None,
        };
        rabbit.spawn().await?;
        Ok(rabbit)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`, or `amqps://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        format!("{scheme}://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// SIGKILL to the VM and its script, then waits until they are gone and the port is
    /// closed (the VM outlives the script it was started by for a moment).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let group = self
            .process
            .take()
            .context("the private RabbitMQ is not running")?;
        group.kill().await?;
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let limit = Duration::from_secs(REAP_SECONDS);
        let deadline = Instant::now() + limit;
        while tokio::net::TcpStream::connect(address).await.is_ok() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the killed RabbitMQ still accepts connections after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        Ok(())
    }

    /// Starts it again with the same node name and data (durable queues and persistent
    /// messages it confirmed are still there).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "the private RabbitMQ still runs");
        self.spawn().await
    }

    /// Starts the server, again on a new distribution port when it exits at once (at most
    /// [`RABBIT_START_ATTEMPTS`] times). The AMQP port stays: the config file and, on a
    /// restart, the clients know it.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut attempt = 1;
        loop {
            match self.spawn_once().await {
                Err(e) if e.is::<ExitedAtStart>() && attempt < RABBIT_START_ATTEMPTS => {
                    eprintln!("attempt {attempt} of {RABBIT_START_ATTEMPTS}: {e:#}");
                    self.dist_port = free_port()?;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn spawn_once(&mut self) -> anyhow::Result<()> {
        let server = program(
            "WSCLUSTER_CHAOS_RABBITMQ_SERVER",
            "/usr/lib/rabbitmq/bin/rabbitmq-server",
        );
        let d = self.dir.path();
        let mut command = Command::new(&server);
        command
            .current_dir(d)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
        let log = d.join("rabbitmq-server.log");
        let what = format!("the private rabbitmq-server ({})", server.display());
        let mut group = Group::spawn(command, &what, &log)?;
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let limit = Duration::from_secs(RABBIT_START_SECONDS);
        group
            .wait_up("accept AMQP connections", limit, &log, || async {
                Ok(tokio::net::TcpStream::connect(address).await.is_ok())
            })
            .await?;
        self.process = Some(group);
        Ok(())
    }
}

/// A server that exited before it served: the one start failure worth another attempt.
#[derive(Debug)]
struct ExitedAtStart(String);

impl std::fmt::Display for ExitedAtStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExitedAtStart {}

/// The last `lines` lines of the log at `path` (or why it cannot be read).
fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

/// `rabbitmq.conf` lines for an AMQPS listener only (no plain one) on 127.0.0.1:`port`, TLS 1.2
/// and 1.3, presenting `tls`'s certificate, not asking clients for one.
fn rabbit_tls_conf(port: u16, tls: &ServerTls) -> String {
    format!(
        "listeners.tcp = none\n\
         listeners.ssl.local = 127.0.0.1:{port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_none\n\
         ssl_options.fail_if_no_peer_cert = false\n\
         ssl_options.versions.1 = tlsv1.3\n\
         ssl_options.versions.2 = tlsv1.2\n",
        tls.ca_file.display(),
        tls.cert_file.display(),
        tls.key_file.display(),
    )
}

/// The id of the process listening on `address` (`127.0.0.1:<port>`), from `/proc`: the
/// socket's inode in `/proc/net/tcp`, then the process holding it. Local mode does not
/// publish its children's ids; this finds a proxy to send SIGTERM to.
pub fn pid_listening(address: &str) -> anyhow::Result<u32> {
    let address: SocketAddr = address
        .parse()
        .with_context(|| format!("address {address}"))?;
    let std::net::IpAddr::V4(ip) = address.ip() else {
        bail!("only IPv4 listeners are looked up, not {address}");
    };
    // /proc/net/tcp writes the address as the little-endian hex of the u32, then the port.
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        address.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let inode = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1] == wanted && f[3] == "0A")
        .map(|f| f[9].to_owned())
        .with_context(|| format!("nothing listens on {address}"))?;
    let socket = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str())
        });
        if holds {
            return Ok(pid);
        }
    }
    bail!("no process holds the socket listening on {address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_durable_private_redis_keeps_an_answered_write_across_sigkill_a_volatile_one_not() {
        assert_eq!(write_kill_read(true).await.as_deref(), Some("v"));
        assert_eq!(write_kill_read(false).await, None);
    }

    async fn write_kill_read(durable: bool) -> Option<String> {
        let run = async {
            let mut redis = PrivateRedis::start(durable).await?;
            let client = redis::Client::open(redis.url())?;
            let mut c = client.get_multiplexed_async_connection().await?;
            let () = redis::cmd("SET")
                .arg("k")
                .arg("v")
                .query_async(&mut c)
                .await?;
            redis.kill().await?;
            assert!(
                redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_err(),
                "killed"
            );
            redis.restart().await?;
            let mut c = client.get_multiplexed_async_connection().await?;
            let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut c).await?;
            anyhow::Ok(v)
        };
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("within 30 s")
            .expect("runs")
    }

    #[tokio::test]
    async fn the_process_listening_on_a_port_is_found_and_a_free_port_has_none() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = listener.local_addr().expect("address").to_string();
        assert_eq!(pid_listening(&address).expect("found"), std::process::id());
        drop(listener);
        assert!(pid_listening(&address).is_err());
    }
}
