//! The proxy's one error type. Request-level failures become HTTP responses in
//! [`crate::server`]; everything else surfaces from [`crate::run`] or config loading.

use std::path::PathBuf;

use thiserror::Error;

/// Result with the proxy's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the proxy outside a single request.
#[derive(Debug, Error)]
pub enum Error {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid YAML for the schema, or breaks a rule.
    #[error("invalid config: {0}")]
    Config(String),
    /// A JWT key file could not be read or parsed.
    #[error("cannot load JWT key {path}: {reason}")]
    JwtKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The ring token file could not be read.
    #[error("cannot read ring token file {path}: {source}")]
    TokenRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The RabbitMQ connection could not be set up.
    #[error("RabbitMQ: {0}")]
    Amqp(String),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ConfigRead { .. } | Error::Config(_) => "config",
            Error::JwtKey { .. } => "jwt-key",
            Error::Io(_) => "io",
            Error::TokenRead { .. } => "token",
            Error::Amqp(_) => "amqp",
        }
    }
}
