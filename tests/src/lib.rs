//! # wscluster-tests
//!
//! Cross-process end-to-end tests of wscluster and the harness they share. Everything runs as
//! real processes on 127.0.0.1: `wscluster-operator local` supervises the ring authority, the
//! nodes and the proxies, with real Redis and RabbitMQ (or in-memory backends).
//!
//! | module | concern |
//! | --- | --- |
//! | [`env`] | binaries (`WSCLUSTER_OPERATOR_BIN`, default `debug/wscluster-operator` under `CARGO_TARGET_DIR` or `target/`), service URLs (`WSCLUSTER_TEST_REDIS_URL`, `WSCLUSTER_TEST_AMQP_URL`), counts, unique names, temp dirs |
//! | [`local`] | [`Local`]: starts `wscluster-operator local`, reads its announcement line, drives its control API, stops it (SIGTERM; it stops its children) |
//! | [`client`] / [`fleet`] | [`Client`] / [`Fleet`]: WebSocket clients with the reconnect logic of `docs/client.md` (reset frames, their close codes, `?since=` resumption, de-duplication by offset) recording what they saw; sending through the proxies' `/send` |
//! | [`scenario`] | [`Scenario`] / [`Started`]: how every e2e test starts, sends rounds, waits for a new ring, and ends |
//! | [`delivery`] | [`delivery_problems`] / [`ensure_delivered`]: every user got its own messages, all, in order |
//! | [`wait`] | [`wait_for`] (bounded polling) and [`run_bounded`] (the time bound of every test) |
//! | [`load_tls`] | how `wscluster-load` opens `ws://` and `wss://` connections (rustls, full or resumed handshakes, counted by kind) |
//! | [`http`] | requests on hyper-util's client, one connection each |
//! | [`backends`] | Redis and RabbitMQ reachability, Redis key cleanup |
//! | [`chaos`] | the chaos suite: private Redis/RabbitMQ it kills, recorded load, the figures ([`chaos::Tally`]) |
//!
//! A missing binary or an unreachable service fails the test with a clear message.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use wscluster_tests::{Local, LocalOptions};
//! let local = Local::start(LocalOptions::real_backends("doc", 3, 2)).await?;
//! local.scale(4).await?;
//! local.stop().await
//! # }
//! ```

pub mod backends;
pub mod chaos;
pub mod client;
pub mod delivery;
pub mod env;
pub mod fleet;
pub mod http;
pub mod load_tls;
pub mod local;
pub mod scenario;
pub mod wait;

pub use client::{Client, Record};
pub use delivery::{delivery_problems, ensure_delivered};
pub use env::{TempDir, binary, operator_binary, unique};
pub use fleet::{Fleet, ServerApi, broadcast_once, reset_users, send_once, send_with_retry};
pub use local::{Local, LocalOptions, ring_of, settled};
pub use scenario::{Scenario, Started};
pub use wait::{run_bounded, wait_for};
