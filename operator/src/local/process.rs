//! Child processes of local mode: one task per node or proxy process that spawns it, learns its
//! address, probes its readiness, forwards signals to it and reports its exit.
//!
//! Each spawn has a generation number; events carry it so that a late event from a previous
//! process of the same ordinal is recognised and ignored by the supervisor.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wscluster_runtime::Announcement;

/// The HTTP client local mode uses for probes and forwarding (plain HTTP on 127.0.0.1).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new HTTP client.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// How long a probe or a forwarded request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET` or `POST` a URL; answers the status and the body.
pub async fn http_call(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    body: Option<(&'static str, Bytes)>,
) -> Result<(http::StatusCode, Bytes), String> {
    http_call_with(client, method, url, body, &[]).await
}

/// [`http_call`] with extra request header fields (credentials for the server API).
pub async fn http_call_with(
    client: &HttpClient,
    method: http::Method,
    url: &str,
    body: Option<(&'static str, Bytes)>,
    headers: &[(&'static str, &str)],
) -> Result<(http::StatusCode, Bytes), String> {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let payload = match body {
        Some((content_type, bytes)) => {
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
            bytes
        }
        None => Bytes::new(),
    };
    let request = builder
        .body(Full::new(payload))
        .map_err(|e| e.to_string())?;
    let call = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(HTTP_TIMEOUT, call)
        .await
        .map_err(|_| format!("{url}: no answer within {HTTP_TIMEOUT:?}"))?
}

/// Which child this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// A `wscluster-node` with this ordinal.
    Node(u32),
    /// A `wscluster-proxy` with this index.
    Proxy(u32),
}

impl ChildKind {
    /// The id the child gets with `--id` (its member or subscriber id).
    pub fn id(self) -> String {
        match self {
            ChildKind::Node(o) => super::children::node_id(o),
            ChildKind::Proxy(i) => format!("local-proxy-{i}"),
        }
    }
}

/// What a child task reports to the supervisor.
#[derive(Debug)]
pub enum ChildEvent {
    /// The process runs and listens on `address`.
    Started {
        /// Which child.
        kind: ChildKind,
        /// Which spawn.
        generation: u64,
        /// `host:port` it serves on.
        address: String,
    },
    /// A readiness probe finished.
    Probed {
        /// Which child.
        kind: ChildKind,
        /// Which spawn.
        generation: u64,
        /// `/readyz` answered 200.
        ready: bool,
        /// Connections from `/count` (nodes only, when it answered).
        connections: Option<u64>,
    },
    /// The process exited, or could not start.
    Exited {
        /// Which child.
        kind: ChildKind,
        /// Which spawn.
        generation: u64,
        /// Exit status or the spawn error, for the state page.
        status: String,
    },
}

impl ChildEvent {
    /// Which child and which spawn the event is about.
    pub fn child(&self) -> (ChildKind, u64) {
        match self {
            ChildEvent::Started {
                kind, generation, ..
            }
            | ChildEvent::Probed {
                kind, generation, ..
            }
            | ChildEvent::Exited {
                kind, generation, ..
            } => (*kind, *generation),
        }
    }
}

/// A signal for a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: graceful stop.
    Term,
    /// SIGKILL: abrupt death.
    Kill,
}

/// Everything needed to spawn one child.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Which child.
    pub kind: ChildKind,
    /// Which spawn.
    pub generation: u64,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it (besides the inherited ones minus `WSCLUSTER_*`).
    pub env: Vec<(String, String)>,
    /// Where its stderr (its log) goes.
    pub log_file: PathBuf,
    /// For proxies: the address chosen for it (nodes report theirs on stdout).
    pub known_address: Option<String>,
    /// The URL probed for readiness (`{address}` is replaced by the address, `{admin}` by the
    /// announced `admin=` address, else the address).
    pub readyz_url: String,
    /// For nodes: the `/count` URL (`{address}`, `{admin}` replaced).
    pub count_url: Option<String>,
    /// Grace between SIGTERM and SIGKILL at shutdown.
    pub grace: Duration,
}

/// How often a child is probed once it is ready, and before.
const PROBE_INTERVAL_READY: Duration = Duration::from_millis(500);
const PROBE_INTERVAL_STARTING: Duration = Duration::from_millis(100);
/// How long a node may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs one child until it exits: spawns it, reports `Started`, probes it, obeys `signals`,
/// and at `shutdown` stops it (SIGTERM, then SIGKILL after the grace period). Always ends
/// with an `Exited` event.
pub async fn run_child(
    spec: ChildSpec,
    client: HttpClient,
    events: mpsc::Sender<ChildEvent>,
    mut signals: mpsc::Receiver<Signal>,
    shutdown: CancellationToken,
) {
    let kind = spec.kind;
    let generation = spec.generation;
    let status = match supervise(&spec, &client, &events, &mut signals, &shutdown).await {
        Ok(status) => status,
        Err(error) => {
            tracing::warn!(child = %kind.id(), %error, "child failed");
            error
        }
    };
    let _ = events
        .send(ChildEvent::Exited {
            kind,
            generation,
            status,
        })
        .await;
}

fn command(spec: &ChildSpec) -> Result<Command, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_file)
        .map_err(|e| format!("cannot open log {}: {e}", spec.log_file.display()))?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    // The children get exactly the configuration local mode chose, not the operator's own
    // WSCLUSTER_* environment (which may hold flags that conflict, such as a ring file).
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WSCLUSTER_") {
            command.env_remove(key);
        }
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    Ok(command)
}

async fn supervise(
    spec: &ChildSpec,
    client: &HttpClient,
    events: &mpsc::Sender<ChildEvent>,
    signals: &mut mpsc::Receiver<Signal>,
    shutdown: &CancellationToken,
) -> Result<String, String> {
    let mut child = command(spec)?
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.program.display()))?;
    let stdout = child.stdout.take();
    let (address, admin) = match &spec.known_address {
        Some(address) => {
            // Proxies announce the addresses local mode chose for them; keep the pipe drained.
            if let Some(stdout) = stdout {
                tokio::spawn(drain(BufReader::new(stdout)));
            }
            (address.clone(), address.clone())
        }
        None => {
            let Some(stdout) = stdout else {
                return Err("no stdout pipe".to_string());
            };
            let mut lines = BufReader::new(stdout);
            let first = tokio::select! {
                line = tokio::time::timeout(STARTUP_TIMEOUT, read_line(&mut lines)) => line,
                status = child.wait() => {
                    return Ok(describe(status, &spec.log_file));
                }
            };
            let addresses = match first {
                Ok(Some(line)) => line
                    .parse::<Announcement>()
                    .map(|a| {
                        let admin = a.get("admin").unwrap_or(a.addr);
                        (a.addr.to_string(), admin.to_string())
                    })
                    .map_err(|e| format!("unexpected first line: {e}"))?,
                Ok(None) => {
                    let status = child.wait().await;
                    return Ok(describe(status, &spec.log_file));
                }
                Err(_) => {
                    let _ = child.start_kill();
                    return Err(format!(
                        "did not report its address within {STARTUP_TIMEOUT:?}"
                    ));
                }
            };
            tokio::spawn(drain(lines));
            addresses
        }
    };
    let _ = events
        .send(ChildEvent::Started {
            kind: spec.kind,
            generation: spec.generation,
            address: address.clone(),
        })
        .await;
    let probing = CancellationToken::new();
    let _stop_probing = probing.clone().drop_guard();
    tokio::spawn(probe_loop(
        spec.clone(),
        address,
        admin,
        client.clone(),
        events.clone(),
        probing,
    ));
    loop {
        tokio::select! {
            status = child.wait() => return Ok(describe(status, &spec.log_file)),
            signal = signals.recv() => match signal {
                Some(signal) => send_signal(&mut child, signal).await,
                None => {
                    // The supervisor is gone: stop like at shutdown.
                    return Ok(stop(&mut child, spec.grace, &spec.log_file).await);
                }
            },
            () = shutdown.cancelled() => return Ok(stop(&mut child, spec.grace, &spec.log_file).await),
        }
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

async fn drain<R: tokio::io::AsyncBufRead + Unpin>(mut reader: R) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// SIGTERM through `kill(1)` (the crate forbids `unsafe`, so no `libc::kill`), SIGKILL through
/// tokio.
async fn send_signal(child: &mut Child, signal: Signal) {
    match signal {
        Signal::Kill => {
            let _ = child.start_kill();
        }
        Signal::Term => {
            if let Some(pid) = child.id() {
                let result = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
                if !result.is_ok_and(|s| s.success()) {
                    let _ = child.start_kill();
                }
            }
        }
    }
}

async fn stop(child: &mut Child, grace: Duration, log: &Path) -> String {
    send_signal(child, Signal::Term).await;
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => describe(status, log),
        Err(_) => {
            let _ = child.start_kill();
            describe(child.wait().await, log)
        }
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>, log: &Path) -> String {
    match status {
        Ok(s) => format!("{s} (log: {})", log.display()),
        Err(e) => format!("wait failed: {e}"),
    }
}

async fn probe_loop(
    spec: ChildSpec,
    address: String,
    admin: String,
    client: HttpClient,
    events: mpsc::Sender<ChildEvent>,
    stop: CancellationToken,
) {
    let fill = |url: &str| {
        url.replace("{address}", &address)
            .replace("{admin}", &admin)
    };
    let readyz = fill(&spec.readyz_url);
    let count = spec.count_url.as_deref().map(fill);
    let mut ready = false;
    loop {
        let interval = if ready {
            PROBE_INTERVAL_READY
        } else {
            PROBE_INTERVAL_STARTING
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        ready = matches!(
            http_call(&client, http::Method::GET, &readyz, None).await,
            Ok((status, _)) if status.is_success()
        );
        let connections = match &count {
            Some(url) => match http_call(&client, http::Method::GET, url, None).await {
                Ok((status, body)) if status.is_success() => {
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("count").and_then(serde_json::Value::as_u64))
                }
                _ => None,
            },
            None => None,
        };
        if stop.is_cancelled() {
            return;
        }
        let event = ChildEvent::Probed {
            kind: spec.kind,
            generation: spec.generation,
            ready,
            connections,
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str, log_dir: &Path) -> ChildSpec {
        ChildSpec {
            kind: ChildKind::Node(0),
            generation: 7,
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".to_string(), script.to_string()],
            env: Vec::new(),
            log_file: log_dir.join("child.log"),
            known_address: None,
            readyz_url: "http://{address}/readyz".to_string(),
            count_url: None,
            grace: Duration::from_secs(2),
        }
    }

    async fn next(events: &mut mpsc::Receiver<ChildEvent>) -> ChildEvent {
        tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("an event within 10 s")
            .expect("the channel is open")
    }

    /// A fresh log directory for one test, removed by [`LogDir`]'s drop.
    struct LogDir(PathBuf);

    impl LogDir {
        fn new(test: &str) -> LogDir {
            let dir = std::env::temp_dir().join(format!(
                "wscluster-local-process-{test}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            LogDir(dir)
        }
    }

    impl Drop for LogDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn a_child_reports_its_address_probes_and_its_death_by_sigkill() {
        let logs = LogDir::new("a_child_reports_its_addr");
        let (events_tx, mut events) = mpsc::channel(16);
        let (signals, signals_rx) = mpsc::channel(4);
        let task = tokio::spawn(run_child(
            spec("echo 'listening on 127.0.0.1:9'; exec sleep 60", &logs.0),
            http_client(),
            events_tx,
            signals_rx,
            CancellationToken::new(),
        ));
        match next(&mut events).await {
            ChildEvent::Started {
                address,
                generation,
                ..
            } => {
                assert_eq!(address, "127.0.0.1:9");
                assert_eq!(generation, 7);
            }
            other => panic!("expected Started, got {other:?}"),
        }
        // Nothing answers on port 9: the probe says not ready.
        match next(&mut events).await {
            ChildEvent::Probed { ready, .. } => assert!(!ready),
            other => panic!("expected Probed, got {other:?}"),
        }
        signals.send(Signal::Kill).await.expect("the task listens");
        loop {
            match next(&mut events).await {
                ChildEvent::Exited { status, .. } => {
                    assert!(status.contains("signal: 9"), "{status}");
                    break;
                }
                ChildEvent::Probed { .. } => {}
                other => panic!("expected Exited, got {other:?}"),
            }
        }
        task.await.expect("the task ends");
    }

    #[tokio::test]
    async fn a_child_that_prints_no_address_is_reported_as_exited() {
        let logs = LogDir::new("a_child_that_prints_no_a");
        let (events_tx, mut events) = mpsc::channel(16);
        let (_signals, signals_rx) = mpsc::channel(4);
        tokio::spawn(run_child(
            spec("echo 'something else'; sleep 60", &logs.0),
            http_client(),
            events_tx,
            signals_rx,
            CancellationToken::new(),
        ));
        match next(&mut events).await {
            ChildEvent::Exited { status, .. } => {
                assert!(status.contains("unexpected first line"), "{status}");
            }
            other => panic!("expected Exited, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn shutdown_stops_a_child_with_sigterm() {
        let logs = LogDir::new("shutdown_stops_a_child_w");
        let (events_tx, mut events) = mpsc::channel(16);
        let (_signals, signals_rx) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        tokio::spawn(run_child(
            spec(
                "trap 'exit 3' TERM; echo 'listening on 127.0.0.1:9'; while true; do sleep 0.1; done",
                &logs.0,
            ),
            http_client(),
            events_tx,
            signals_rx,
            shutdown.clone(),
        ));
        assert!(matches!(
            next(&mut events).await,
            ChildEvent::Started { .. }
        ));
        shutdown.cancel();
        loop {
            match next(&mut events).await {
                ChildEvent::Exited { status, .. } => {
                    assert!(status.contains("exit status: 3"), "{status}");
                    break;
                }
                ChildEvent::Probed { .. } => {}
                other => panic!("expected Exited, got {other:?}"),
            }
        }
    }
}
