//! Reset events to RabbitMQ (`--amqp-url`): for each reset the proxy performs, the old owner
//! hears `ResetEvent { member, keys, .. }` on the cluster's topic exchange with routing key
//! `reset.{member}` (see `wscluster_ring::contract::bus`). Notes are batched per member for up
//! to [`BATCH_WINDOW`] or [`MAX_RESET_KEYS_PER_EVENT`] keys. Publishing never slows resets: the
//! pacer hands notes over a bounded channel and a full channel drops them (counted). A lost
//! connection is retried by the shared reconnect loop ([`wscluster_runtime::amqp`]: backoff up
//! to 100 ms doubling to 5 s, full jitter).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};
use wscluster_ring::contract::ResetReason;
use wscluster_ring::contract::bus::{
    MAX_RESET_KEYS_PER_EVENT, ResetEvent, exchange_name, reset_routing_key,
};
use wscluster_runtime::amqp::{self, AmqpTarget, Link, SessionEnd};

use crate::metrics::Metrics;
use crate::resets::{ResetNote, ResetSink};

/// Notes buffered between the pacer and the publisher: a few seconds of resets at the default
/// rate; beyond that the broker is too slow and notes are dropped rather than held.
const CHANNEL_CAPACITY: usize = 10_000;
/// How long notes wait to be batched into one event.
const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Starts the publisher (trusting `ca` besides the platform roots for `amqps://`); returns the
/// sink the pacer writes to.
pub fn spawn_publisher(
    url: String,
    ca: Option<wscluster_runtime::ca::CaBundle>,
    cluster_id: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> ResetSink {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let target = AmqpTarget {
        url,
        ca,
        connection_name: format!("wscluster-proxy {cluster_id}"),
        exchange: exchange_name(&cluster_id),
    };
    let mut publisher = Publisher {
        exchange: target.exchange.clone(),
        notes: rx,
        metrics,
    };
    tokio::spawn(
        async move { amqp::keep_connected(&target, &mut publisher, &shutdown).await }
            .instrument(info_span!("amqp")),
    );
    ResetSink(tx)
}

/// One connection's life: batch the pacer's notes and publish them as reset events.
struct Publisher {
    /// The cluster's exchange.
    exchange: String,
    /// Notes from the pacer.
    notes: mpsc::Receiver<ResetNote>,
    /// For the `amqp-connect` and `amqp-publish` error counts.
    metrics: Arc<Metrics>,
}

impl amqp::Session for Publisher {
    async fn run(&mut self, link: Link) -> SessionEnd {
        info!(exchange = %self.exchange, "publishing reset events");
        loop {
            let Some(batch) = self.next_batch().await else {
                return SessionEnd::Stop;
            };
            for event in events(batch) {
                if let Err(e) = self.publish(&link, &event).await {
                    self.metrics.error("amqp-publish");
                    return SessionEnd::Lost(format!("reset event not published: {e}"));
                }
            }
        }
    }

    fn connect_failed(&mut self, _error: &lapin::Error) {
        self.metrics.error("amqp-connect");
    }
}

impl Publisher {
    /// The notes that arrive within [`BATCH_WINDOW`] of the first, at most
    /// [`MAX_RESET_KEYS_PER_EVENT`]; `None` once the pacer is gone.
    async fn next_batch(&mut self) -> Option<Vec<ResetNote>> {
        let first = self.notes.recv().await?;
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(BATCH_WINDOW);
        tokio::pin!(deadline);
        while batch.len() < MAX_RESET_KEYS_PER_EVENT {
            tokio::select! {
                () = &mut deadline => break,
                n = self.notes.recv() => match n { Some(n) => batch.push(n), None => break },
            }
        }
        Some(batch)
    }

    async fn publish(&self, link: &Link, event: &ResetEvent) -> Result<(), lapin::Error> {
        // A ResetEvent always serialises; if it ever did not, skip it as before.
        let Ok(body) = serde_json::to_vec(event) else {
            return Ok(());
        };
        link.channel
            .basic_publish(
                self.exchange.as_str().into(),
                reset_routing_key(&event.member).as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await?;
        Ok(())
    }
}

/// Groups notes into events: one per (member, reason, ring version), at most
/// [`MAX_RESET_KEYS_PER_EVENT`] keys each; `retryAfterMs` is the longest of the group.
pub fn events(notes: Vec<ResetNote>) -> Vec<ResetEvent> {
    let mut groups: HashMap<(Arc<str>, ResetReason, u64), ResetEvent> = HashMap::new();
    let mut out = Vec::new();
    for n in notes {
        let e = groups
            .entry((Arc::clone(&n.member), n.reason, n.ring_version))
            .or_insert_with(|| ResetEvent {
                member: n.member.to_string(),
                ring_version: n.ring_version,
                reason: n.reason,
                keys: Vec::new(),
                retry_after_ms: 0,
            });
        e.keys.push(n.key.into());
        e.retry_after_ms = e.retry_after_ms.max(n.retry_after_ms);
        if e.keys.len() == MAX_RESET_KEYS_PER_EVENT
            && let Some(full) = groups.remove(&(n.member, n.reason, n.ring_version))
        {
            out.push(full);
        }
    }
    out.extend(groups.into_values());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_group_by_member_and_split_at_the_key_limit() {
        let note = |m: &str, k: usize, retry| ResetNote {
            member: Arc::from(m),
            key: format!("k{k}").into(),
            reason: ResetReason::Rebalance,
            ring_version: 7,
            retry_after_ms: retry,
        };
        let mut notes: Vec<ResetNote> = (0..1_500).map(|k| note("a", k, k as u64)).collect();
        notes.push(note("b", 0, 3));
        let mut ev = events(notes);
        ev.sort_by_key(|e| (e.member.clone(), e.keys.len()));
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].keys.len(), 500);
        assert_eq!(ev[1].keys.len(), 1_000);
        assert_eq!(ev[1].retry_after_ms, 999);
        assert_eq!(ev[2].member, "b");
        assert_eq!(ev[2].keys, vec!["k0".to_string()]);
    }
}
