//! What a test takes from its environment — binaries, service URLs, counts — and the unique
//! names and temporary directories that keep parallel runs apart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

/// The variable naming the operator binary (the only binary local mode needs).
pub const OPERATOR_BIN_ENV: &str = "WSCLUSTER_OPERATOR_BIN";

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A binary from `env`, else `debug/<name>` under `CARGO_TARGET_DIR` (or the workspace's
/// `target/`); fails clearly when it does not exist.
pub fn binary(env: &str, name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("debug").join(name));
    if !path.is_file() {
        bail!(
            "{name} not found at {} (build it with `cargo build -p {name}` or set {env})",
            path.display()
        );
    }
    Ok(path)
}

/// The operator binary: [`OPERATOR_BIN_ENV`], else `debug/wscluster-operator` under the target
/// directory.
pub fn operator_binary() -> anyhow::Result<PathBuf> {
    binary(OPERATOR_BIN_ENV, "wscluster-operator")
}

/// Redis for tests.
pub fn redis_url() -> String {
    std::env::var("WSCLUSTER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// RabbitMQ for tests.
pub fn amqp_url() -> String {
    std::env::var("WSCLUSTER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A count from an environment variable, or a default when it is unset or not a number.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A name unique to this process and call: `<base>-<pid>-<counter>-<millis>`.
pub fn unique(base: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    format!(
        "{base}-{}-{}-{millis}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A new, empty directory under the system's temporary directory, removed with everything in
/// it when dropped.
#[derive(Debug)]
pub struct TempDir {
    /// The directory; unique per call ([`unique`]), so parallel tests never share one.
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp>/<unique(base)>`.
    pub fn new(base: &str) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(unique(base));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the directory {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_temp_dirs_go_away() {
        assert_ne!(unique("a"), unique("a"));
        let dir = TempDir::new("wscluster-tests-env").expect("creates");
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("f"), b"x").expect("writes");
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists(), "removed with its contents");
    }

    #[test]
    fn a_missing_binary_names_the_variable_to_set() {
        let e = binary("WSCLUSTER_TESTS_NO_SUCH_BIN", "no-such-binary").expect_err("missing");
        let text = e.to_string();
        assert!(text.contains("no-such-binary") && text.contains("WSCLUSTER_TESTS_NO_SUCH_BIN"));
    }
}
