//! TLS termination: certificates from PEM files (a Kubernetes TLS Secret's `tls.crt` and
//! `tls.key`, as cert-manager writes them), re-read when they change, with optional SNI.
//!
//! * One [`rustls::ServerConfig`] lives for the life of the listener: TLS 1.2 and 1.3, ALPN
//!   `http/1.1`, the `ring` provider (already in the tree through kube; no cmake or aws-lc
//!   build), stateless session tickets and a session cache so clients resume. Its certificate
//!   comes from a [`CertStore`] behind an `ArcSwap`, so a reload changes what new handshakes
//!   get and nothing else: connections already open keep their session.
//! * A certificate set is loaded whole or not at all: every chain must parse, every key must
//!   match its certificate, and no certificate may be expired or not yet valid. A bad set at
//!   start is one clear error; a bad set on reload is logged and the previous one kept.
//! * With SNI entries, a client hello naming one of their DNS names gets that certificate; any
//!   other name, or none, gets the default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How often the certificate files are looked at for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The only application protocol served.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// One certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertFiles {
    /// PEM certificate chain, end-entity first (`tls.crt`).
    pub cert_file: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1 (`tls.key`).
    pub key_file: PathBuf,
}

/// A certificate served to clients that ask for one of its names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SniCert {
    /// DNS names (case-insensitive; `*.example.com` matches one label) that select this
    /// certificate; empty: the DNS names in the certificate itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// Its files.
    #[serde(flatten)]
    pub files: CertFiles,
}

/// The TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// The default certificate.
    #[serde(flatten)]
    pub default: CertFiles,
    /// Further certificates chosen by SNI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniCert>,
}

/// Why a certificate set cannot be used. Messages name the file, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM item of the expected kind.
    #[error("{}: {what}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The key is not one the provider can sign with, or does not match the certificate.
    #[error("{}: {what}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate is outside its validity period.
    #[error("{}: the certificate {what}", path.display())]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// `has expired` or `is not valid yet`.
        what: &'static str,
    },
    /// An SNI entry has no name, or an invalid one.
    #[error("tls.sni[{index}]: {what}")]
    Sni {
        /// The entry's position.
        index: usize,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Why a TLS handshake failed, as the `reason` label of `tls_handshake_failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client sent something that is not TLS (plain HTTP, usually): `plain-http`.
    PlainHttp,
    /// The client's ALPN list has no `http/1.1`: `bad-alpn`.
    BadAlpn,
    /// The handshake did not finish within the header-read timeout: `timeout`.
    Timeout,
    /// Anything else (no common version or cipher suite, a closed connection, ...): `other`.
    Other,
}

impl HandshakeFailure {
    /// The failure of a handshake that ended with `error`; `plain` says the client's first byte
    /// was not a TLS handshake record.
    pub fn of(plain: bool, error: &std::io::Error) -> HandshakeFailure {
        if plain {
            return HandshakeFailure::PlainHttp;
        }
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::NoApplicationProtocol) => HandshakeFailure::BadAlpn,
            _ => HandshakeFailure::Other,
        }
    }

    /// The metric label.
    pub fn metric_label(self) -> &'static str {
        match self {
            HandshakeFailure::PlainHttp => "plain-http",
            HandshakeFailure::BadAlpn => "bad-alpn",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Other => "other",
        }
    }
}

/// A loaded certificate set: the default and the SNI certificates by lower-case name.
#[derive(Debug)]
pub struct CertStore {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads and checks every certificate of `spec` at `now`.
    ///
    /// # Errors
    ///
    /// The first file that cannot be read, parsed, matched or is out of its validity period.
    pub fn load(spec: &TlsSpec, now: UnixTime) -> Result<CertStore, TlsError> {
        let provider = provider();
        let default = load_pair(&spec.default, &provider, now)?;
        let mut by_name = HashMap::new();
        for (index, entry) in spec.sni.iter().enumerate() {
            let key = load_pair(&entry.files, &provider, now)?;
            for name in sni_names(entry, &key.cert).map_err(|what| TlsError::Sni { index, what })? {
                by_name.insert(name, Arc::clone(&key));
            }
        }
        Ok(CertStore { default, by_name })
    }

    /// The certificate for a client hello's server name: an exact name, else a wildcard
    /// (`*.example.com` for `chat.example.com`, one label only), else the default.
    fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        let wildcard = name
            .split_once('.')
            .map(|(_, parent)| format!("*.{parent}"));
        self.by_name
            .get(&name)
            .or_else(|| wildcard.and_then(|w| self.by_name.get(&w)))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// The lower-case names an SNI entry answers: its `serverNames`, each a DNS name (or a
/// `*.` wildcard), or, when it lists none, the DNS names in its certificate's subject
/// alternative names (a cert-manager Secret needs no second list that could drift from it).
fn sni_names(entry: &SniCert, chain: &[CertificateDer<'static>]) -> Result<Vec<String>, String> {
    if entry.server_names.is_empty() {
        let leaf = chain.first().ok_or("holds no certificate")?;
        let parsed = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("not an X.509 certificate ({e})"))?;
        let names: Vec<String> = parsed
            .valid_dns_names()
            .map(str::to_ascii_lowercase)
            .collect();
        if names.is_empty() {
            return Err(format!(
                "{} names no DNS name; give serverNames",
                entry.files.cert_file.display()
            ));
        }
        return Ok(names);
    }
    entry
        .server_names
        .iter()
        .map(|name| {
            let bare = name.strip_prefix("*.").unwrap_or(name);
            rustls::pki_types::DnsName::try_from(bare)
                .map(|_| name.to_ascii_lowercase())
                .map_err(|_| format!("{name:?} is not a DNS name"))
        })
        .collect()
}

/// The provider every TLS listener uses.
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn file_error(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// One chain and key, checked: parses, key matches, valid at `now`.
fn load_pair(
    files: &CertFiles,
    provider: &CryptoProvider,
    now: UnixTime,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_chain(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| file_error(&files.key_file, format!("no usable PEM private key ({e})")))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Key {
        path: files.key_file.clone(),
        what: match e {
            rustls::Error::InconsistentKeys(_) => {
                format!(
                    "the key does not match the certificate in {}",
                    files.cert_file.display()
                )
            }
            other => format!("not a key this proxy can sign with ({other})"),
        },
    })?;
    check_validity(&certified.cert, &files.cert_file, provider, now)?;
    Ok(Arc::new(certified))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read it ({e})")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate chain ({e})")))?;
    if chain.is_empty() {
        return Err(file_error(path, "holds no certificate"));
    }
    Ok(chain)
}

/// Refuses an end-entity certificate outside its validity period. webpki checks the period
/// before it looks for an issuer, so the chain's last certificate serves as the anchor and any
/// error other than the period's (an issuer not in the file, say) is not this check's business.
fn check_validity(
    chain: &[CertificateDer<'static>],
    path: &Path,
    provider: &CryptoProvider,
    now: UnixTime,
) -> Result<(), TlsError> {
    let (Some(leaf), Some(last)) = (chain.first(), chain.last()) else {
        return Err(file_error(path, "holds no certificate"));
    };
    let parsed = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| file_error(path, format!("not an X.509 certificate ({e})")))?;
    let Ok(anchor) = webpki::anchor_from_trusted_cert(last) else {
        return Ok(());
    };
    let anchors = [anchor];
    let verdict = parsed.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &anchors,
        chain
            .get(1..chain.len().saturating_sub(1))
            .unwrap_or_default(),
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    match verdict {
        Err(webpki::Error::CertExpired { .. }) => Err(TlsError::Validity {
            path: path.to_owned(),
            what: "has expired",
        }),
        Err(webpki::Error::CertNotValidYet { .. }) => Err(TlsError::Validity {
            path: path.to_owned(),
            what: "is not valid yet",
        }),
        _ => Ok(()),
    }
}

/// The certificate resolver: the current [`CertStore`], swapped whole on reload.
#[derive(Debug)]
struct Resolver(ArcSwap<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().choose(hello.server_name()))
    }
}

/// A TLS listener's configuration and its certificates, reloadable.
#[derive(Debug, Clone)]
pub struct Tls {
    spec: TlsSpec,
    resolver: Arc<Resolver>,
    config: Arc<rustls::ServerConfig>,
    /// The files' stamps as they were just before the certificates in use were read.
    loaded: Arc<std::sync::Mutex<Vec<Stamp>>>,
}

/// A file's modification time and length; `None` when it cannot be read.
type Stamp = Option<(std::time::SystemTime, u64)>;

impl Tls {
    /// Loads `spec` and builds the server configuration.
    ///
    /// # Errors
    ///
    /// As [`CertStore::load`], or rustls refuses the protocol set.
    pub fn new(spec: TlsSpec) -> Result<Tls, TlsError> {
        let stamps = stamps(&spec);
        let store = CertStore::load(&spec, UnixTime::now())?;
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(store)));
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Tls {
            spec,
            resolver,
            config: Arc::new(config),
            loaded: Arc::new(std::sync::Mutex::new(stamps)),
        })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }

    /// Re-reads the files; on error the current certificates stay.
    ///
    /// # Errors
    ///
    /// As [`CertStore::load`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.spec);
        let store = CertStore::load(&self.spec, UnixTime::now())?;
        self.resolver.0.store(Arc::new(store));
        *self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stamps;
        Ok(())
    }

    /// Whether a file changed since the certificates in use were read.
    fn changed(&self) -> bool {
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *loaded != stamps(&self.spec)
    }

    /// Reloads whenever a file's modification time or length changes, until `shutdown`. A
    /// change that does not load is logged once per change and retried on the next one.
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failed: Option<Vec<Stamp>> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if !self.changed() || failed.as_ref() == Some(&stamps(&self.spec)) {
                continue;
            }
            match self.reload() {
                Ok(()) => {
                    failed = None;
                    tracing::info!("TLS certificates changed; new handshakes get the new ones");
                }
                Err(error) => {
                    failed = Some(stamps(&self.spec));
                    tracing::warn!(%error, "TLS certificates unusable; keeping the previous ones");
                }
            }
        }
    }
}

/// The stamps of every file of `spec`, in order.
fn stamps(spec: &TlsSpec) -> Vec<Stamp> {
    std::iter::once(&spec.default)
        .chain(spec.sni.iter().map(|s| &s.files))
        .flat_map(|f| [&f.cert_file, &f.key_file])
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
