//! The README's first command on a fresh clone: `cargo run --release -p wscluster-operator --
//! local` builds only the operator, so local mode must bring up the whole system from that one
//! executable.
//!
//! * From a directory that holds only the operator binary, with no `WSCLUSTER_*` variable set,
//!   `RUST_BACKTRACE=1` (as some users have) and in-memory backends, `local` announces its
//!   control address on its first stdout line, gets 2 nodes into the ring applied by its proxy,
//!   and a real WebSocket client connected through the proxy receives a message sent with the
//!   proxy's `/send`. SIGTERM stops it cleanly, and it leaves nothing in that directory but logs.
//! * A failure at start (`local` on a control address already taken, `proxy` without a ring
//!   source) exits non-zero with one clear line on stderr naming the problem, and no stack
//!   backtrace even with `RUST_BACKTRACE=1`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;
use wscluster_tests::{Fleet, Local, TempDir, ensure_delivered, operator_binary, run_bounded};

/// Longest one of these tests may run.
const TEST_TIMEOUT_SECONDS: u64 = 120;
/// Nodes the fresh-clone run starts.
const NODES: usize = 2;
/// Longest a failing start may take to exit.
const EXIT_TIMEOUT_SECONDS: u64 = 30;
/// The file name of the operator binary in the fresh-clone directory.
const BINARY_NAME: &str = "wscluster-operator";
/// Lines of the run's stderr shown when it fails.
const STDERR_HEAD_LINES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_runs_from_a_directory_holding_only_the_operator_binary() {
    run_bounded(Duration::from_secs(TEST_TIMEOUT_SECONDS), async {
        let clone = FreshClone::new()?;
        let stderr = clone.scratch.path().join("stderr.log");
        let mut command = clone.command(&[
            "local",
            "--control-listen",
            "127.0.0.1:0",
            "--proxy-port",
            "0",
            "--nodes",
            &NODES.to_string(),
        ]);
        command.stderr(std::fs::File::create(&stderr)?);
        run_and_message_a_client(command, &stderr)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\n{}", stderr_head(&stderr)))?;
        let stray = clone.stray_files()?;
        anyhow::ensure!(
            stray.is_empty(),
            "local mode left more than logs beside the binary: {stray:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_start_is_one_clear_line_without_a_backtrace() {
    run_bounded(Duration::from_secs(TEST_TIMEOUT_SECONDS), async {
        let clone = FreshClone::new()?;
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = taken.local_addr()?.to_string();
        let local = ["local", "--control-listen", &address, "--proxy-port", "0"];
        let output = run_to_exit(clone.command(&local)).await?;
        ensure_one_clear_line(&output, &address).context("local on a taken address")?;

        let no_ring = [
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        let output = run_to_exit(clone.command(&no_ring)).await?;
        ensure_one_clear_line(&output, "--ring-url").context("proxy without a ring source")?;
        drop(taken);
        Ok(())
    })
    .await;
}

/// Starts local mode, waits for its nodes and proxy, has a client connected through the proxy
/// receive a message sent through the proxy, and stops it (SIGTERM, clean exit).
async fn run_and_message_a_client(command: Command, stderr: &Path) -> anyhow::Result<()> {
    let local = Local::launch(command, &stderr.display().to_string()).await?;
    local.wait_settled(NODES, Duration::from_secs(60)).await?;
    let proxies = local.proxy_urls().await?;
    anyhow::ensure!(!proxies.is_empty(), "local mode reports no proxy");
    let fleet = Fleet::connect("fresh-clone", 1, &proxies);
    fleet.wait_connected(Duration::from_secs(30)).await?;
    fleet.send_round(&local.server_api().await?, 1, 1).await?;
    fleet.wait_messages(1, Duration::from_secs(30)).await?;
    ensure_delivered(&fleet.records(), 1, "through the proxy")?;
    fleet.close();
    local.stop().await
}

/// A directory holding only the operator binary, as a fresh clone has after
/// `cargo run -p wscluster-operator`, and a scratch directory for the run's temp files.
struct FreshClone {
    /// Holds the binary alone; the run's working directory.
    run_dir: TempDir,
    /// The run's `TMPDIR` (local mode's default log directory goes there) and its stderr,
    /// so the test removes everything the run wrote.
    scratch: TempDir,
}

impl FreshClone {
    fn new() -> anyhow::Result<FreshClone> {
        let built = operator_binary()?;
        let run_dir = TempDir::new("wscluster-fresh-clone")?;
        let scratch = TempDir::new("wscluster-fresh-clone-tmp")?;
        let binary = run_dir.path().join(BINARY_NAME);
        // A hard link is the same file without copying a few hundred MB; copy across devices.
        std::fs::hard_link(&built, &binary)
            .or_else(|_| std::fs::copy(&built, &binary).map(drop))
            .with_context(|| format!("placing {} in {}", built.display(), binary.display()))?;
        Ok(FreshClone { run_dir, scratch })
    }

    /// `./wscluster-operator <args>` in the run directory, with a user's environment: no
    /// `WSCLUSTER_*` variable (the CI's and the harness's do not reach it), no `RUST_LOG`, and
    /// `RUST_BACKTRACE=1`.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(format!("./{BINARY_NAME}"));
        command
            .args(args)
            .current_dir(self.run_dir.path())
            .stdin(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("WSCLUSTER_") {
                command.env_remove(name);
            }
        }
        command
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "1")
            .env("TMPDIR", self.scratch.path());
        command
    }

    /// What the run directory holds besides the binary and log files (`*.log`, also in
    /// sub-directories).
    fn stray_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut stray = Vec::new();
        for entry in std::fs::read_dir(self.run_dir.path())? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n == BINARY_NAME) && path.is_file() {
                continue;
            }
            non_logs(&path, &mut stray)?;
        }
        Ok(stray)
    }
}

/// Adds every file under `path` (or `path` itself) that is not a `*.log` file to `stray`.
fn non_logs(path: &Path, stray: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            non_logs(&entry?.path(), stray)?;
        }
    } else if path.extension().is_none_or(|e| e != "log") {
        stray.push(path.to_path_buf());
    }
    Ok(())
}

/// Runs a command that should fail at start, to its exit, within [`EXIT_TIMEOUT_SECONDS`].
async fn run_to_exit(mut command: Command) -> anyhow::Result<Output> {
    // Killed if it outlives the bound. (Not for local mode, whose children SIGKILL would
    // orphan: `Local` stops it with SIGTERM.)
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let limit = Duration::from_secs(EXIT_TIMEOUT_SECONDS);
    tokio::time::timeout(limit, command.output())
        .await
        .with_context(|| format!("still running after {limit:?} instead of failing at start"))?
        .context("running wscluster-operator")
}

/// A failed start: a non-zero exit code, exactly one non-empty stderr line that contains
/// `names`, and no stack backtrace.
fn ensure_one_clear_line(output: &Output, names: &str) -> anyhow::Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.code().is_some_and(|c| c != 0),
        "exit {} (want a non-zero exit code); stderr: {stderr}",
        output.status
    );
    anyhow::ensure!(
        !stderr.to_lowercase().contains("stack backtrace"),
        "stderr holds a stack backtrace: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(
        lines.len() == 1,
        "stderr has {} non-empty lines, want one: {stderr}",
        lines.len()
    );
    anyhow::ensure!(
        lines[0].contains(names),
        "the line does not name {names}: {}",
        lines[0]
    );
    Ok(())
}

/// The start of the run's stderr (where an error at start is), for a failure message.
fn stderr_head(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let head: Vec<&str> = text.lines().take(STDERR_HEAD_LINES).collect();
    format!("wscluster-operator's stderr begins:\n{}", head.join("\n"))
}

#[test]
fn only_log_files_count_as_what_a_run_may_leave() {
    let dir = TempDir::new("wscluster-fresh-clone-logs").expect("creates");
    let sub = dir.path().join("wscluster-local-1");
    std::fs::create_dir_all(&sub).expect("creates");
    for file in [
        dir.path().join("a.log"),
        sub.join("b.log"),
        sub.join("ring.json"),
    ] {
        std::fs::write(file, b"x").expect("writes");
    }
    let mut stray = Vec::new();
    non_logs(dir.path(), &mut stray).expect("reads");
    assert_eq!(stray, [sub.join("ring.json")]);
}
