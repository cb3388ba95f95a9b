//! Rings from a JSON file holding one [`RingSnapshot`]: a static ring for tests and local runs,
//! optionally watched for rewrites.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};
use wscluster_ring::{Ring, RingSnapshot};

use crate::client::apply_snapshot;
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
/// changes whenever the file is rewritten with a newer version of the same cluster. The file's
/// modification time and size are checked every [`FILE_POLL_INTERVAL_MS`] and the file is
/// re-read when either changed (a Kubernetes ConfigMap's atomic symlink swap counts). An
/// unreadable or invalid file, or one that is not newer or names another cluster, is logged and
/// the previous ring kept. The cluster is the one of the first valid file.
///
/// The first read happens before this returns, so a valid file is visible at once. Must be
/// called inside a Tokio runtime; the watcher stops at `shutdown` or when every receiver is
/// dropped.
pub fn watch_ring_file(
    path: PathBuf,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<Arc<Ring>>> {
    let stamp = stamp(&path);
    let initial = match load_ring_file(&path).and_then(|s| Ok(Ring::build(s)?)) {
        Ok(ring) => Some(Arc::new(ring)),
        Err(e) => {
            warn!(error = %e, "no ring from the ring file yet");
            None
        }
    };
    let (rings, receiver) = watch::channel(initial);
    let span = info_span!("ring_file", path = %path.display());
    tokio::spawn(poll_file(path, stamp, rings, shutdown).instrument(span));
    receiver
}

/// What identifies a version of the file without reading it.
type Stamp = Option<(Option<SystemTime>, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

async fn poll_file(
    path: PathBuf,
    mut last: Stamp,
    rings: watch::Sender<Option<Arc<Ring>>>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(FILE_POLL_INTERVAL_MS));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = rings.closed() => return,
            _ = interval.tick() => {}
        }
        let check = path.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || stamp(&check)).await else {
            continue;
        };
        if now == last {
            continue;
        }
        // Remember the stamp before reading, so a write during the read is seen next time.
        last = now;
        let read = path.clone();
        let loaded = match tokio::task::spawn_blocking(move || load_ring_file(&read)).await {
            Ok(loaded) => loaded,
            Err(e) => {
                warn!(error = %e, "ring file read failed");
                continue;
            }
        };
        match loaded {
            Ok(snapshot) => {
                let cluster_id = match rings.borrow().as_ref() {
                    Some(ring) => ring.snapshot().cluster_id.clone(),
                    None => snapshot.cluster_id.clone(),
                };
                apply_snapshot(&cluster_id, snapshot, &rings).await;
            }
            Err(e) => warn!(error = %e, "ring file ignored; keeping the previous ring"),
        }
    }
}
