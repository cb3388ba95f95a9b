//! # wscluster-node
//!
//! The reference stateful WebSocket server of wscluster — what the seed projects call the
//! "websocket" service. Proxies route each user (business key) to the node that owns it on the
//! consistent-hash ring; the node holds the user's socket, delivers messages sent to the user,
//! keeps a per-user mailbox so nothing is lost while a user moves between nodes, and refuses
//! users it does not own so a stale proxy cannot split one user across two nodes.
//!
//! Layout:
//! * [`config`] — flags (the fixed cross-component contract) and their env variables.
//! * [`http`] — routing on two ports. Public (`--listen`, reached only through proxies):
//!   `GET /connect/{userId}` (WebSocket), the server API `/api/v1/...` ([`api`]), and with
//!   `--legacy-send` the seed's `/send`. Admin (`--admin-listen`): `/healthz`, `/readyz`,
//!   `/metrics`, `/count`, `/users/{userId}`.
//! * [`chat`] — `--chat`: a client's `{"to", "message"}` frame, sent as the verified key.
//! * [`auth`] — who a request comes from: the proxy secret, the verified key, the API keys.
//! * [`session`] — one socket: register, presence, replay after `?since=`, live delivery.
//! * [`registry`] — sessions by key, one per key.
//! * [`wsio`] — the byte stream under a session's WebSocket, without a read buffer while idle.
//! * [`mailbox`], [`presence`], [`bus`] — backends behind traits: Redis / RabbitMQ when
//!   configured, in-memory otherwise (same behaviour except durability).
//! * [`ownership`] — which keys this node owns under the newest ring it knows.
//! * [`delivery`] — what a send, a broadcast, a presence look-up and an admission promise.
//! * [`state`] — shared state and the operations on it; [`server`] — wiring and shutdown.
//!
//! `docs/node.md` documents the API, the message format and the mailbox semantics for operators
//! and client authors.
//!
//! ```no_run
//! use clap::Parser;
//! # async fn example() -> wscluster_node::Result<()> {
//! let config = wscluster_node::Config::parse_from(["wscluster-node", "--id", "chat-node-0"]);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! wscluster_node::run(config, listener, shutdown).await
//! # }
//! ```

pub mod api;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod config;
pub mod delivery;
pub mod error;
pub mod http;
pub mod mailbox;
pub mod metrics;
pub mod ownership;
pub mod presence;
pub mod registry;
pub mod server;
pub mod session;
pub mod state;
pub mod wsio;

pub use config::Config;
pub use error::{Error, Result};
pub use server::{Listeners, main, run, run_with};
pub use state::Backends;
