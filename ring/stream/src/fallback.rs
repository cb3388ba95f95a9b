//! The ring stream with a fallback ring file beside it: one receiver of rings for a process
//! given both `--ring-url` and `--ring-file`.
//!
//! The stream is authoritative; the file (the operator's ConfigMap, mounted) is what a process
//! starts from while the stream is unavailable, so a cold start does not depend on the
//! operator. Versions only ever move forward: whichever source offers a newer version of the
//! cluster wins, a file ring older than (or as old as) the ring in use is ignored, and a stream
//! ring replaces an older file ring. A stream ring of the version already taken from the file
//! changes nothing but the reported [`RingOrigin`]: the ring is the same, so nothing is reset.
//!
//! The decision is the pure [`choose`]; [`merge_rings`] drives it from the two watches.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use wscluster_ring::Ring;

/// Where the ring a process routes on came from, reported on `/metrics` (and in readiness) so
/// an operator can see a fleet running on its fallback rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RingOrigin {
    /// No ring yet.
    #[default]
    None,
    /// The operator's ring stream.
    Stream,
    /// The fallback ring file.
    File,
}

impl RingOrigin {
    /// The name used in metrics labels and JSON: `none`, `stream` or `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            RingOrigin::None => "none",
            RingOrigin::Stream => "stream",
            RingOrigin::File => "file",
        }
    }

    /// Every origin, for exporting one gauge per value.
    pub const ALL: [RingOrigin; 3] = [RingOrigin::None, RingOrigin::Stream, RingOrigin::File];
}

/// What to do with a ring one source offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Use it: it is newer than the ring in use (or the first).
    Adopt,
    /// Keep the ring in use but record that the stream now confirms it (same version).
    Confirm,
    /// Ignore it: not newer, or of another cluster.
    Keep,
}

/// The merge rule: `offered` from `from` against the ring in use (`current`, with its origin).
/// Rings of another cluster than `cluster_id` are never taken.
pub fn choose(
    cluster_id: &str,
    current: Option<(&Ring, RingOrigin)>,
    offered: &Ring,
    from: RingOrigin,
) -> Choice {
    if offered.snapshot().cluster_id != cluster_id {
        return Choice::Keep;
    }
    match current {
        None => Choice::Adopt,
        Some((ring, _)) if offered.version() > ring.version() => Choice::Adopt,
        Some((ring, RingOrigin::File))
            if from == RingOrigin::Stream && offered.version() == ring.version() =>
        {
            Choice::Confirm
        }
        Some(_) => Choice::Keep,
    }
}

/// The merged rings and where the one in use came from.
#[derive(Debug, Clone)]
pub struct FallbackRings {
    /// The ring in use: `None` until either source has one, then only ever newer versions.
    pub rings: watch::Receiver<Option<Arc<Ring>>>,
    /// The source of the ring in use.
    pub origin: watch::Receiver<RingOrigin>,
}

/// The two sources and the merged output, as the merge task holds them.
struct Merge {
    cluster_id: String,
    stream: watch::Receiver<Option<Arc<Ring>>>,
    file: watch::Receiver<Option<Arc<Ring>>>,
    rings: watch::Sender<Option<Arc<Ring>>>,
    origin: watch::Sender<RingOrigin>,
}

/// Merges the stream's rings with the fallback file's by [`choose`]. What both hold now is
/// merged before this returns (a valid file is in use at once); a background task follows both
/// until `shutdown`, until both sources end, or until every receiver is dropped. Must be called
/// inside a Tokio runtime.
pub fn merge_rings(
    cluster_id: String,
    stream: watch::Receiver<Option<Arc<Ring>>>,
    file: watch::Receiver<Option<Arc<Ring>>>,
    shutdown: CancellationToken,
) -> FallbackRings {
    let (rings, rings_rx) = watch::channel(None);
    let (origin, origin_rx) = watch::channel(RingOrigin::None);
    let mut merge = Merge {
        cluster_id,
        stream,
        file,
        rings,
        origin,
    };
    merge.offer_stream();
    merge.offer_file();
    let span = info_span!("ring_fallback", cluster = %merge.cluster_id);
    tokio::spawn(merge.run(shutdown).instrument(span));
    FallbackRings {
        rings: rings_rx,
        origin: origin_rx,
    }
}

impl Merge {
    async fn run(mut self, shutdown: CancellationToken) {
        let (mut stream_open, mut file_open) = (true, true);
        while stream_open || file_open {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.rings.closed() => return,
                r = self.stream.changed(), if stream_open => match r {
                    Ok(()) => self.offer_stream(),
                    Err(_) => stream_open = false,
                },
                r = self.file.changed(), if file_open => match r {
                    Ok(()) => self.offer_file(),
                    Err(_) => file_open = false,
                },
            }
        }
    }

    fn offer_stream(&mut self) {
        let offered = self.stream.borrow_and_update().clone();
        self.offer(offered, RingOrigin::Stream);
    }

    fn offer_file(&mut self) {
        let offered = self.file.borrow_and_update().clone();
        self.offer(offered, RingOrigin::File);
    }

    fn offer(&self, offered: Option<Arc<Ring>>, from: RingOrigin) {
        let Some(offered) = offered else { return };
        let current = self.rings.borrow().clone();
        let origin = *self.origin.borrow();
        let in_use = current.as_deref().map(|ring| (ring, origin));
        match choose(&self.cluster_id, in_use, &offered, from) {
            Choice::Adopt => {
                info!(
                    version = offered.version(),
                    source = from.as_str(),
                    "ring in use"
                );
                self.rings.send_replace(Some(offered));
                self.origin.send_replace(from);
            }
            Choice::Confirm => {
                info!(
                    version = offered.version(),
                    "the ring stream confirms the fallback ring"
                );
                self.origin.send_replace(from);
            }
            Choice::Keep if offered.snapshot().cluster_id != self.cluster_id => warn!(
                offered = %offered.snapshot().cluster_id,
                source = from.as_str(),
                "ignoring a ring of another cluster"
            ),
            Choice::Keep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wscluster_ring::{Member, RingSnapshot};

    use super::*;

    fn ring(cluster: &str, version: u64) -> Arc<Ring> {
        let members = vec![Member::active("n-0", "h:1")];
        Arc::new(Ring::build(RingSnapshot::new(cluster, version, members)).expect("builds"))
    }

    #[test]
    fn versions_only_move_forward_and_the_stream_confirms_an_equal_file_ring() {
        use RingOrigin::{File, Stream};
        let (v1, v2) = (ring("ns/c", 1), ring("ns/c", 2));
        assert_eq!(choose("ns/c", None, &v1, File), Choice::Adopt);
        assert_eq!(
            choose("ns/c", Some((&v1, File)), &v2, Stream),
            Choice::Adopt
        );
        assert_eq!(
            choose("ns/c", Some((&v1, Stream)), &v2, File),
            Choice::Adopt
        );
        assert_eq!(choose("ns/c", Some((&v2, Stream)), &v1, File), Choice::Keep);
        assert_eq!(choose("ns/c", Some((&v2, Stream)), &v2, File), Choice::Keep);
        assert_eq!(choose("ns/c", Some((&v2, File)), &v1, Stream), Choice::Keep);
        assert_eq!(
            choose("ns/c", Some((&v2, File)), &v2, Stream),
            Choice::Confirm
        );
        assert_eq!(
            choose("ns/c", Some((&v2, Stream)), &v2, Stream),
            Choice::Keep
        );
        assert_eq!(choose("ns/c", None, &ring("ns/x", 9), File), Choice::Keep);
    }

    #[tokio::test]
    async fn a_process_starts_from_the_file_and_follows_the_stream_once_it_is_back() {
        let shutdown = CancellationToken::new();
        let (stream_tx, stream) = watch::channel(None);
        let (file_tx, file) = watch::channel(Some(ring("ns/c", 3)));
        let mut merged = merge_rings("ns/c".into(), stream, file, shutdown.clone());
        let first = merged
            .rings
            .borrow_and_update()
            .as_ref()
            .map(|r| r.version());
        assert_eq!(first, Some(3), "the file ring is in use at once");
        assert_eq!(*merged.origin.borrow(), RingOrigin::File);

        stream_tx.send_replace(Some(ring("ns/c", 3)));
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, merged.origin.wait_for(|o| *o == RingOrigin::Stream))
            .await
            .expect("in time")
            .expect("open");
        assert!(!merged.rings.has_changed().expect("open"), "same ring kept");

        file_tx.send_replace(Some(ring("ns/c", 2)));
        stream_tx.send_replace(Some(ring("ns/c", 4)));
        tokio::time::timeout(wait, merged.rings.wait_for(|r| r.is_some_and_version(4)))
            .await
            .expect("in time")
            .expect("open");
        file_tx.send_replace(Some(ring("ns/c", 5)));
        tokio::time::timeout(wait, merged.rings.wait_for(|r| r.is_some_and_version(5)))
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(*merged.origin.borrow(), RingOrigin::File);
        shutdown.cancel();
    }

    trait VersionIs {
        fn is_some_and_version(&self, v: u64) -> bool;
    }

    impl VersionIs for Option<Arc<Ring>> {
        fn is_some_and_version(&self, v: u64) -> bool {
            self.as_ref().is_some_and(|r| r.version() == v)
        }
    }
}
