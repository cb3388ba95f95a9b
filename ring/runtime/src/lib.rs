//! # wscluster-runtime
//!
//! Process support that every wscluster binary (node, proxy, operator) shares, so that each
//! start-up and shutdown rule exists once and behaves the same in every process:
//!
//! * [`signal`] — SIGTERM and SIGINT cancel one `CancellationToken`.
//! * [`log`] — one tracing set-up: stderr, `RUST_LOG` filter (default `info`), ANSI only on a
//!   terminal, and the shared `--log-format text|json` flag ([`log::LogArgs`]).
//! * [`process`] — runs a binary's async main under the signal-cancelled token with a hard
//!   deadline after the signal, and turns any failure into one `error: …` line and exit code 1.
//! * [`announce`] — the first stdout line, `listening on <addr> [name=<addr>…]`, printed and
//!   parsed by one type.
//! * [`token`] — a bearer token from `--…-token` or `--…-token-file`, by one rule;
//!   [`ring_args`] — the ring-source flags (`--ring-url` and its token, or `--ring-file`).
//! * [`serve`] — the HTTP/1.1 accept loop of every hyper listener: connection cap, header-read
//!   timeout, upgrades, tracked graceful shutdown.
//! * [`credentials`] — shared secrets: several valid at once for rotation, compared in
//!   constant time, re-read when their file changes.
//! * [`ca`] — CA bundles for the TLS clients (`--redis-ca-file`, `--amqp-ca-file`) and the one
//!   rustls crypto provider (`ring`).
//! * [`backoff`] — exponential backoff with full jitter for every reconnect loop.
//! * [`buffers`] — byte buffers borrowed only while bytes move, pooled per worker thread, and
//!   [`delegate_async_write!`] for read-side stream wrappers.
//! * [`json`] — JSON responses and bounded JSON request bodies.
//! * [`flags`] — the name and environment variable of every node and proxy flag, used by their
//!   clap parsers and by whatever renders their command lines or pod environments.
//! * `amqp` (feature `amqp`) — the RabbitMQ reconnect loop of the node's bus and the proxy's
//!   reset publisher.
//!
//! A binary's `main` is a few lines:
//!
//! ```no_run
//! use std::time::Duration;
//! use wscluster_runtime::log::LogArgs;
//! use wscluster_runtime::process::{self, ProcessSpec};
//!
//! fn main() -> std::process::ExitCode {
//!     let spec = ProcessSpec {
//!         name: "example",
//!         log: LogArgs::default(),
//!         worker_threads: None,
//!         hard_deadline: Duration::from_secs(10),
//!     };
//!     process::run(spec, |shutdown| async move {
//!         shutdown.cancelled().await;
//!         Ok::<(), std::io::Error>(())
//!     })
//! }
//! ```

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod announce;
pub mod backoff;
pub mod buffers;
pub mod ca;
pub mod credentials;
pub mod flags;
pub mod json;
pub mod log;
pub mod process;
pub mod ring_args;
pub mod serve;
pub mod signal;
pub mod token;

pub use announce::Announcement;
pub use backoff::Backoff;
pub use flags::Flag;

/// Any error, boxed: what a binary's main may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
