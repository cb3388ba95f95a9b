//! The crate's one error type. Every variant is a value a caller can match on; none is a panic.

use std::path::PathBuf;

use thiserror::Error;
use wscluster_ring::SnapshotError;

/// Result with this crate's [`Error`](enum@Error).
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong reading a ring file or talking to a ring hub.
#[derive(Debug, Error)]
pub enum Error {
    /// The ring file could not be read.
    #[error("cannot read ring file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The ring file does not hold a valid snapshot.
    #[error("ring file {path} is invalid: {source}")]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SnapshotError,
    },
    /// The configured hub URL is not `http://host[:port][/prefix]`.
    #[error("invalid ring url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TCP connection to the hub failed.
    #[error("cannot connect to the ring hub: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange with the hub failed.
    #[error("http error talking to the ring hub: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (an id or token with characters HTTP does not allow).
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    /// The hub refused the token (401).
    #[error("the ring hub refused the token (401)")]
    Unauthorized,
    /// The hub answered with an unexpected status.
    #[error("the ring hub answered {status}: {body}")]
    Status {
        /// The status.
        status: http::StatusCode,
        /// The start of the body, for the log.
        body: String,
    },
    /// The hub did not answer in time, or the stream was silent too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A stream line was longer than the limit.
    #[error("stream line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A stream line did not parse or held an invalid snapshot.
    #[error("invalid stream line: {0}")]
    InvalidLine(#[source] SnapshotError),
    /// The hub ended the stream.
    #[error("the ring hub ended the stream")]
    StreamEnded,
}

impl Error {
    /// A short, fixed label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ReadFile { .. } => "read_file",
            Error::InvalidFile { .. } => "invalid_file",
            Error::InvalidUrl { .. } => "invalid_url",
            Error::Connect(_) => "connect",
            Error::Http(_) => "http",
            Error::Request(_) => "request",
            Error::Unauthorized => "unauthorized",
            Error::Status { .. } => "status",
            Error::Timeout(_) => "timeout",
            Error::LineTooLong { .. } => "line_too_long",
            Error::InvalidLine(_) => "invalid_line",
            Error::StreamEnded => "stream_ended",
        }
    }
}
