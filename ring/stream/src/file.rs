//! Rings from a JSON file holding one [`RingSnapshot`]: a static ring for tests and local runs,
//! optionally watched for rewrites.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};
use wscluster_ring::{Ring, RingSnapshot, SnapshotError};

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
/// changes whenever the file is rewritten with a newer version of the same cluster. The file is
/// checked every [`FILE_POLL_INTERVAL_MS`]: re-read when its modification time or size changed
/// (a Kubernetes ConfigMap's atomic symlink swap counts), and also while its modification time
/// is under two seconds old, because coarse file-system clocks can give two quick rewrites the
/// same time; unchanged content is not parsed again. An unreadable or invalid file, or one that
/// is not newer or names another cluster, is logged and the previous ring kept. The cluster is
/// the one of the first valid file.
///
/// The first read happens before this returns, so a valid file is visible at once. Must be
/// called inside a Tokio runtime; the watcher stops at `shutdown` or when every receiver is
/// dropped.
pub fn watch_ring_file(
    path: PathBuf,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<Arc<Ring>>> {
    let mut source = FileSource::new(path);
    let initial = match source.read_sync() {
        Ok(snapshot) => match Ring::build(snapshot) {
            Ok(ring) => Some(Arc::new(ring)),
            Err(e) => {
                warn!(error = %e, "no ring from the ring file yet");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "no ring from the ring file yet");
            None
        }
    };
    let (rings, receiver) = watch::channel(initial);
    let span = info_span!("ring_file", path = %source.path.display());
    tokio::spawn(
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(FILE_POLL_INTERVAL_MS));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = rings.closed() => return,
                    _ = interval.tick() => {}
                }
                source.check(&rings).await;
            }
        }
        .instrument(span),
    );
    receiver
}

/// How long after a write the file is re-read even if its stamp looks unchanged: file-system
/// timestamps can be as coarse as a clock tick (ext4) or a second (some network file systems).
const RECENT_WRITE: Duration = Duration::from_secs(2);

/// What identifies a version of the file without reading it: modification time and size.
type Stamp = Option<(Option<SystemTime>, u64)>;

/// What one look at the file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// Same stamp and content as last time.
    Unchanged,
    /// A newer ring was published.
    Applied,
    /// The file changed but was unreadable, invalid, not newer or of another cluster.
    Ignored,
}

/// A watched ring file and what was last seen of it.
#[derive(Debug)]
struct FileSource {
    /// The file.
    path: PathBuf,
    /// Its stamp at the last read.
    stamp: Stamp,
    /// A hash of the content last read, so an unchanged file is not parsed again.
    content: Option<u64>,
}

impl FileSource {
    fn new(path: PathBuf) -> FileSource {
        FileSource {
            path,
            stamp: None,
            content: None,
        }
    }

    /// Reads the file (blocking), remembering its stamp and content.
    fn read_sync(&mut self) -> Result<RingSnapshot> {
        // The stamp is taken before reading, so a write during the read is seen next time.
        self.stamp = stamp(&self.path);
        let bytes = std::fs::read(&self.path).map_err(|source| Error::ReadFile {
            path: self.path.clone(),
            source,
        })?;
        self.content = Some(content_hash(&bytes));
        parse(&self.path, &bytes)
    }

    /// Looks at the file once and publishes a newer ring.
    ///
    /// The `stat` (and the read, when the file changed) happen right here on the runtime
    /// thread: the file is small and local (a ConfigMap volume, or local mode's own file), so
    /// each costs microseconds. Handing them to the blocking pool instead kept a pool thread
    /// alive for the life of the process, and with it every socket call of a one-worker proxy
    /// paid for a multi-threaded process (libc's cancellation bookkeeping, the kernel's shared
    /// file-table reference counts).
    async fn check(&mut self, rings: &watch::Sender<Option<Arc<Ring>>>) -> Checked {
        let now = stamp(&self.path);
        let recent = now
            .and_then(|(modified, _)| modified)
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age < RECENT_WRITE);
        if !recent && now == self.stamp {
            return Checked::Unchanged;
        }
        let bytes = std::fs::read(&self.path);
        self.stamp = now;
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(source) => {
                if self.content.take().is_some() {
                    let e = Error::ReadFile {
                        path: self.path.clone(),
                        source,
                    };
                    warn!(error = %e, "ring file unreadable; keeping the previous ring");
                }
                return Checked::Ignored;
            }
        };
        let hash = content_hash(&bytes);
        if self.content == Some(hash) {
            return Checked::Unchanged;
        }
        self.content = Some(hash);
        let snapshot = match parse(&self.path, &bytes) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                warn!(error = %e, "ring file ignored; keeping the previous ring");
                return Checked::Ignored;
            }
        };
        let cluster_id = match rings.borrow().as_ref() {
            Some(ring) => ring.snapshot().cluster_id.clone(),
            None => snapshot.cluster_id.clone(),
        };
        if apply_snapshot(&cluster_id, snapshot, rings).await {
            Checked::Applied
        } else {
            Checked::Ignored
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

fn parse(path: &Path, bytes: &[u8]) -> Result<RingSnapshot> {
    let invalid = |source| Error::InvalidFile {
        path: path.to_path_buf(),
        source,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|e| invalid(SnapshotError::Parse(e.to_string())))?;
    RingSnapshot::from_json(text).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use wscluster_ring::Member;

    use super::*;

    fn temp_file(name: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wscluster-ring-file-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    fn snapshot(version: u64) -> RingSnapshot {
        RingSnapshot::new("ns/c", version, vec![Member::active("n-0", "h:1")])
    }

    #[tokio::test]
    async fn each_rewrite_is_checked_and_only_valid_newer_rings_apply() {
        let path = temp_file("ring.json");
        std::fs::write(&path, snapshot(1).to_json()).expect("write");
        let mut source = FileSource::new(path.clone());
        let first = Ring::build(source.read_sync().expect("valid")).expect("builds");
        let (rings, receiver) = watch::channel(Some(Arc::new(first)));
        let version = || receiver.borrow().as_ref().map(|r| r.version());

        assert_eq!(source.check(&rings).await, Checked::Unchanged);

        std::fs::write(&path, "{not json").expect("write");
        assert_eq!(source.check(&rings).await, Checked::Ignored);
        assert_eq!(version(), Some(1));

        let mut dup = snapshot(3);
        dup.members.push(Member::active("n-0", "h:2"));
        std::fs::write(&path, serde_json::to_string(&dup).expect("json")).expect("write");
        assert_eq!(source.check(&rings).await, Checked::Ignored);
        assert_eq!(version(), Some(1));

        let mut other = snapshot(4);
        other.cluster_id = "ns/other".to_string();
        std::fs::write(&path, other.to_json()).expect("write");
        assert_eq!(source.check(&rings).await, Checked::Ignored);

        std::fs::write(&path, snapshot(1).to_json()).expect("write");
        assert_eq!(source.check(&rings).await, Checked::Ignored, "not newer");

        std::fs::write(&path, snapshot(2).to_json()).expect("write");
        assert_eq!(source.check(&rings).await, Checked::Applied);
        assert_eq!(version(), Some(2));
        assert_eq!(source.check(&rings).await, Checked::Unchanged);

        std::fs::remove_file(&path).expect("remove");
        assert_eq!(source.check(&rings).await, Checked::Ignored);
        assert_eq!(version(), Some(2));
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn load_ring_file_reports_missing_and_invalid_files() {
        let path = temp_file("missing.json");
        assert!(matches!(load_ring_file(&path), Err(Error::ReadFile { .. })));
        std::fs::write(&path, "[]").expect("write");
        assert!(matches!(
            load_ring_file(&path),
            Err(Error::InvalidFile { .. })
        ));
        std::fs::write(&path, snapshot(7).to_json()).expect("write");
        assert_eq!(load_ring_file(&path).expect("valid").version, 7);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
