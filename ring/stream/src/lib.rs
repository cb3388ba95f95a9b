//! # wscluster-ring-stream
//!
//! The ring stream protocol of [`wscluster_ring::contract::stream`], both sides. The operator
//! (or local mode) is the ring authority and runs the hub; every proxy and node subscribes.
//!
//! * [`RingHub`] and [`serve`] — the server: per cluster one current
//!   [`RingSnapshot`](wscluster_ring::RingSnapshot) in a `tokio::sync::watch`, streamed as NDJSON
//!   to every subscriber (the current snapshot at once, each newer one as published, a heartbeat
//!   after [`HEARTBEAT_INTERVAL_MS`](wscluster_ring::contract::stream::HEARTBEAT_INTERVAL_MS) of
//!   idleness), the ack endpoint that records which version each subscriber applies, and the
//!   one-shot snapshot endpoint. A slow subscriber skips to the newest snapshot; nothing queues.
//! * [`Subscription`] — the client: a background task that follows the stream, reconnects with
//!   backoff (up to 100 ms doubling to 5 s, full jitter) after a failure, an invalid or over-long line,
//!   or [`SILENCE_TIMEOUT_MS`](wscluster_ring::contract::stream::SILENCE_TIMEOUT_MS) of silence,
//!   and publishes only ever newer [`Ring`](wscluster_ring::Ring)s of its cluster; the last ring
//!   stays while disconnected. [`Subscription::ack`] reports the applied version without
//!   blocking.
//! * [`load_ring_file`] and [`watch_ring_file`] — the same rings from a JSON snapshot file
//!   (polled every [`FILE_POLL_INTERVAL_MS`]), for tests and local runs without a hub.
//! * [`merge_rings`] — the stream with a fallback ring file beside it (the operator's ConfigMap):
//!   a process starts from the file while the stream is unavailable; versions only move forward
//!   and [`RingOrigin`] says which source the ring in use came from.
//!
//! Plain HTTP/1.1 (hyper 1) without TLS: the stream runs inside the cluster, pod to pod, and
//! each request carries the cluster's bearer token (`Authorization: Bearer …`, compared in
//! constant time). Put it behind a mesh or a network policy if the pod network is untrusted.
//!
//! Layout: `hub.rs` (server), `client.rs` (subscription), `file.rs` (ring files),
//! `fallback.rs` (stream plus fallback file), `error.rs` (the crate's [`Error`]).
//!
//! Both sides in one process:
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

//!
//! To serve the hub beside other paths (the operator's `/metrics`), call [`RingHub::handle`]
//! from your own service and answer the requests it returns `None` for (everything outside
//! `/v1/clusters/`):
//!
//! ```no_run
//! # use std::{convert::Infallible, sync::Arc};
//! # use wscluster_ring_stream::{BoxBody, RingHub};
//! # use http_body_util::{BodyExt, Full};
//! async fn route(
//!     hub: Arc<RingHub>,
//!     req: http::Request<hyper::body::Incoming>,
//! ) -> Result<http::Response<BoxBody>, Infallible> {
//!     if req.uri().path() == "/metrics" {
//!         let text = bytes::Bytes::from("# metrics here\n");
//!         return Ok(http::Response::new(Full::new(text).boxed_unsync()));
//!     }
//!     Ok(hub.handle(req).await.unwrap_or_else(|| {
//!         let mut response = http::Response::new(Full::new(bytes::Bytes::new()).boxed_unsync());
//!         *response.status_mut() = http::StatusCode::NOT_FOUND;
//!         response
//!     }))
//! }
//! ```
//!
//! [`serve`] also ends open streams at shutdown; a server of your own does so by dropping its
//! connections.

mod client;
mod error;
mod fallback;
mod file;
mod hub;

pub use client::{SubscriberConfig, Subscription};
pub use error::{Error, Result};
pub use fallback::{Choice, FallbackRings, RingOrigin, choose, merge_rings};
pub use file::{FILE_POLL_INTERVAL_MS, load_ring_file, watch_ring_file};
pub use hub::{KindTokens, RingHub, SubscriberInfo, serve};

/// The response body type of [`RingHub::handle`]: boxed, `Send` but not `Sync` (a stream body
/// holds a timer), and infallible. Build your own responses with
/// `http_body_util::BodyExt::boxed_unsync` to serve them beside the hub's.
pub type BoxBody =
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;
