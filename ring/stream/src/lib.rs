//! # wscluster-ring-stream
//!
//! The ring stream protocol of [`wscluster_ring::contract::stream`], both sides:
//!
//! * [`RingHub`] and [`serve`] — the server the operator (or local mode) runs: one current
//!   [`RingSnapshot`](wscluster_ring::RingSnapshot) per cluster, streamed as NDJSON to every
//!   subscriber, plus the ack endpoint that records which version each subscriber applies.
//! * [`Subscription`] — the client proxies and nodes keep: a background task that follows the
//!   stream, reconnects with backoff, and publishes only ever newer [`Ring`](wscluster_ring::Ring)s.
//! * [`load_ring_file`] and [`watch_ring_file`] — the same rings from a JSON file, for tests and
//!   local runs without a hub.
//!
//! Plain HTTP/1.1 without TLS: the stream runs inside the cluster, between pods, and is
//! authenticated by a per-cluster bearer token.
//!
//! Layout: `hub.rs` (server), `client.rs` (subscription), `file.rs` (ring files),
//! `error.rs` (the crate's [`Error`]).
//!
//! ```
//! use std::sync::Arc;
//! use tokio_util::sync::CancellationToken;
//! use wscluster_ring::{Member, RingSnapshot, contract::stream::SubscriberKind};
//! use wscluster_ring_stream::{RingHub, SubscriberConfig, Subscription, serve};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = CancellationToken::new();
//!
//! // Server side (the operator): a hub, a token per cluster, and a published ring.
//! let hub = RingHub::new();
//! hub.set_token("default/chat", "s3cret".to_string());
//! hub.publish(RingSnapshot::new("default/chat", 1, vec![Member::active("chat-node-0", "10.0.0.1:8080")]))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let base_url = format!("http://{}", listener.local_addr()?);
//! tokio::spawn(serve(listener, Arc::clone(&hub), shutdown.clone()));
//!
//! // Client side (a proxy or node): follow the stream and report the applied version.
//! let subscription = Subscription::spawn(
//!     SubscriberConfig {
//!         base_url,
//!         cluster_id: "default/chat".to_string(),
//!         token: "s3cret".to_string(),
//!         kind: SubscriberKind::Proxy,
//!         subscriber_id: "chat-proxy-0".to_string(),
//!     },
//!     shutdown.clone(),
//! );
//! let mut rings = subscription.rings();
//! let ring = rings.wait_for(Option::is_some).await?.clone().expect("a ring");
//! assert_eq!(ring.owner("alice")?.id, "chat-node-0");
//! subscription.ack(ring.version());
//! shutdown.cancel();
//! # Ok(()) }
//! ```

mod client;
mod error;
mod file;
mod hub;

pub use client::{SubscriberConfig, Subscription};
pub use error::{Error, Result};
pub use file::{FILE_POLL_INTERVAL_MS, load_ring_file, watch_ring_file};
pub use hub::{RingHub, SubscriberInfo, serve};

/// The response body type of [`RingHub::handle`]: boxed, `Send` but not `Sync` (a stream body
/// holds a timer), and infallible. Build your own responses with
/// `http_body_util::BodyExt::boxed_unsync` to serve them beside the hub's.
pub type BoxBody =
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;
