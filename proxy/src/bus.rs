//! Reset events to RabbitMQ (`--amqp-url`): for each reset the proxy performs, the old owner
//! hears `ResetEvent { member, keys, .. }` on the cluster's topic exchange with routing key
//! `reset.{member}` (see `wscluster_ring::contract::bus`). Notes are batched per member for up
//! to [`BATCH_WINDOW`] or [`MAX_RESET_KEYS_PER_EVENT`] keys. Publishing never slows resets: the
//! pacer hands notes over a bounded channel and a full channel drops them (counted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};
use wscluster_ring::contract::ResetReason;
use wscluster_ring::contract::bus::{
    MAX_RESET_KEYS_PER_EVENT, ResetEvent, exchange_name, reset_routing_key,
};

use crate::metrics::Metrics;
use crate::resets::{ResetNote, ResetSink};

/// Notes buffered between the pacer and the publisher: a few seconds of resets at the default
/// rate; beyond that the broker is too slow and notes are dropped rather than held.
const CHANNEL_CAPACITY: usize = 10_000;
/// How long notes wait to be batched into one event.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// First and longest pause between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Starts the publisher; returns the sink the pacer writes to.
pub fn spawn_publisher(
    url: String,
    cluster_id: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> ResetSink {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(
        publish_loop(url, exchange_name(&cluster_id), rx, metrics, shutdown)
            .instrument(info_span!("amqp")),
    );
    ResetSink(tx)
}

async fn connect(url: &str, exchange: &str) -> Result<(Connection, Channel), lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel))
}

async fn publish_loop(
    url: String,
    exchange: String,
    mut rx: mpsc::Receiver<ResetNote>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    'connect: loop {
        let (_conn, channel) = tokio::select! {
            () = shutdown.cancelled() => return,
            c = connect(&url, &exchange) => match c {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "RabbitMQ unreachable; retrying");
                    metrics.error("amqp-connect");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue 'connect;
                }
            },
        };
        info!(%exchange, "publishing reset events");
        backoff = BACKOFF_MIN;
        loop {
            let Some(first) = (tokio::select! {
                () = shutdown.cancelled() => return,
                n = rx.recv() => n,
            }) else {
                return;
            };
            let mut batch = vec![first];
            let deadline = tokio::time::sleep(BATCH_WINDOW);
            tokio::pin!(deadline);
            while batch.len() < MAX_RESET_KEYS_PER_EVENT {
                tokio::select! {
                    () = &mut deadline => break,
                    n = rx.recv() => match n { Some(n) => batch.push(n), None => break },
                }
            }
            for event in events(batch) {
                let body = match serde_json::to_vec(&event) {
                    Ok(b) => b,
                    Err(_) => continue,
                };
                let sent = channel
                    .basic_publish(
                        exchange.as_str().into(),
                        reset_routing_key(&event.member).as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_content_type("application/json".into()),
                    )
                    .await;
                if let Err(e) = sent {
                    warn!(error = %e, "reset event not published; reconnecting");
                    metrics.error("amqp-publish");
                    continue 'connect;
                }
            }
        }
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
