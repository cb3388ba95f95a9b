//! The operator's error type.

use thiserror::Error;

/// Everything that can fail in the operator library.
#[derive(Debug, Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A Secret the spec references does not exist.
    #[error("secret {name} does not exist")]
    SecretNotFound {
        /// The Secret's name.
        name: String,
    },
    /// A Secret exists but lacks the referenced key.
    #[error("secret {name} has no key {key}")]
    SecretKeyMissing {
        /// The Secret's name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// The spec breaks a rule the schema could not check.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The object lacks a field the API server always sets (name, namespace, uid).
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// A ring could not be built or published.
    #[error("ring: {0}")]
    Ring(#[from] wscluster_ring::RingError),
    /// Rendering a configuration document failed.
    #[error("rendering {what}: {message}")]
    Render {
        /// What was rendered.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// Another replica took the leader Lease; this one stopped reconciling.
    #[error("leadership lost")]
    LeadershipLost,
    /// Local mode could not write its fallback ring file.
    #[error("writing the ring file {}: {source}", path.display())]
    RingFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener or server failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A short stable label for metrics and condition reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::SecretNotFound { .. } => "SecretNotFound",
            Error::SecretKeyMissing { .. } => "SecretKeyMissing",
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingField(_) => "MissingField",
            Error::Ring(_) => "RingError",
            Error::Render { .. } => "RenderError",
            Error::LeadershipLost => "LeadershipLost",
            Error::RingFile { .. } => "RingFile",
            Error::Io(_) => "Io",
        }
    }

    /// Whether the error is about the user's input (reported as `Degraded`, retried slowly)
    /// rather than a transient failure (retried with backoff).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::SecretNotFound { .. } | Error::SecretKeyMissing { .. } | Error::InvalidSpec(_)
        )
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
