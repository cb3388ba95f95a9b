//! The operator binary's processes start, announce, log and fail the same way: `node` and
//! `proxy` (the very code `wscluster-node` and `wscluster-proxy` run), `run` and `local`.
//! A failure at start is one `error: …` line on stderr and exit code 1, also with
//! `RUST_BACKTRACE=1`; success prints `listening on …` as the first stdout line, logs go to
//! stderr, and SIGTERM stops the process with exit code 0.

use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use wscluster_runtime::Announcement;
use wscluster_runtime::announce::read_announcement;

/// Upper bound of every step.
const STEP: Duration = Duration::from_secs(30);

/// The operator binary with a clean environment: no inherited WSCLUSTER_* flags, no cluster.
fn operator(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wscluster-operator"));
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .env("KUBECONFIG", "/nonexistent/wscluster/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WSCLUSTER_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

async fn output(args: &[&str]) -> Output {
    tokio::time::timeout(STEP, operator(args).output())
        .await
        .expect("the process ended in time")
        .expect("the process ran")
}

/// Spawns the operator with `args` and reads its first stdout line; returns the child, the rest
/// of its stdout and the announcement.
async fn announced(args: &[&str], stderr: Stdio) -> (Child, BufReader<ChildStdout>, Announcement) {
    let mut child = operator(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let announcement = tokio::time::timeout(STEP, read_announcement(&mut stdout))
        .await
        .expect("announced in time")
        .expect("an announcement");
    (child, stdout, announcement)
}

/// A port something listens on for as long as the returned listener lives.
fn taken_port() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    (listener, addr)
}

fn assert_one_error_line(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert_eq!(stderr.lines().count(), 1, "exactly one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "{stderr:?} lacks {expected:?}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[tokio::test]
async fn a_failure_at_start_is_one_line_without_a_backtrace() {
    let (_held, addr) = taken_port();
    let ring_file = ["--ring-file", "/nonexistent/ring.json"];
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["node", "--listen", &addr],
            format!("cannot listen on {addr}: "),
        ),
        (
            vec![
                "node",
                "--ring-url",
                "http://127.0.0.1:1",
                "--ring-token",
                " ",
            ],
            "--ring-token is empty".into(),
        ),
        (
            [&["proxy", "--listen", addr.as_str()][..], &ring_file].concat(),
            format!("cannot listen on {addr}: "),
        ),
        (
            vec!["proxy", "--ring-url", "http://127.0.0.1:1"],
            "--ring-url needs --ring-token-file or --ring-token".into(),
        ),
        (
            vec!["local", "--control-listen", &addr],
            format!("binding the control API to {addr}: "),
        ),
        (
            vec!["run", "--ring-listen", "127.0.0.1:0"],
            "connecting to the Kubernetes API".into(),
        ),
    ];
    for (args, expected) in cases {
        let out = output(&args).await;
        assert_one_error_line(&out, &expected);
    }
}

#[tokio::test]
async fn a_node_announces_its_address_logs_json_to_stderr_and_stops_on_sigterm() {
    let args = [
        "node",
        "--listen",
        "127.0.0.1:0",
        "--id",
        "startup-node",
        "--log-format",
        "json",
    ];
    let (mut child, mut stdout, announced) = announced(&args, Stdio::piped()).await;
    assert!(announced.addr.ip().is_loopback() && announced.addr.port() != 0);
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first_log = tokio::time::timeout(STEP, stderr.next_line())
        .await
        .expect("a log line in time")
        .expect("read")
        .expect("a line");
    let record: serde_json::Value = serde_json::from_str(&first_log).expect("a JSON log line");
    assert!(record["level"].is_string(), "{record}");

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .expect("stopped in time")
        .expect("status");
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.expect("read");
    assert_eq!(rest, "", "stdout carries only the announcement");
}

#[tokio::test]
async fn a_proxy_announces_its_client_and_admin_addresses() {
    let dir = std::env::temp_dir().join(format!("wscluster-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ring = dir.join("ring.json");
    std::fs::write(
        &ring,
        r#"{"clusterId":"default/chat","version":1,"members":[{"id":"n-0","address":"127.0.0.1:9"}]}"#,
    )
    .expect("ring");
    let args = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--ring-file",
        ring.to_str().expect("utf-8 path"),
    ];
    let (mut child, _stdout, announced) = announced(&args, Stdio::null()).await;
    let admin = announced.get("admin").expect("the admin address");
    assert_ne!(admin, announced.addr);
    let probe = tokio::net::TcpStream::connect(admin).await;
    assert!(probe.is_ok(), "the admin port listens: {probe:?}");
    child.start_kill().expect("kill");
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
