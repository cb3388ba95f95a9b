//! The node's one error type.

use thiserror::Error;

/// Result with the node's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong inside the node, tagged by the backend it came from.
#[derive(Debug, Error)]
pub enum Error {
    /// A Redis command failed (mailbox or presence).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A RabbitMQ operation failed.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// The message bus is not connected right now (it reconnects in the background).
    #[error("the message bus is not connected")]
    BusUnavailable,
    /// A backend did not answer in time (the operation may or may not have happened; nothing
    /// is acknowledged).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A backend answered something the node did not expect.
    #[error("unexpected backend reply: {0}")]
    Protocol(String),
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Socket or file I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// JSON (de)serialisation.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// A short, bounded label for the `wscluster_node_errors_total{kind}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Redis(_) => "redis",
            Error::Amqp(_) => "amqp",
            Error::BusUnavailable => "bus-unavailable",
            Error::Timeout(_) => "backend-timeout",
            Error::Protocol(_) => "backend-protocol",
            Error::Config(_) => "config",
            Error::Io(_) => "io",
            Error::Json(_) => "json",
        }
    }
}
