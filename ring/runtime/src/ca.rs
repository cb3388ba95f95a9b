//! CA bundles for the TLS clients of every process (`--redis-ca-file`, `--amqp-ca-file`), by
//! one rule, and the one rustls crypto provider they use.
//!
//! * A bundle is a PEM file of one or more `CERTIFICATE` blocks (a Secret's `ca.crt`). It is
//!   read once at start, capped at [`MAX_CA_FILE_BYTES`], and every certificate must be usable
//!   as a trust anchor; a file with none, an unreadable file or a broken block is an error that
//!   names the flag and the file, so a wrong mount fails the start instead of every handshake.
//! * The crypto provider is rustls's `ring` one (already in the tree through kube and the
//!   proxy; no aws-lc, no cmake). [`install_crypto_provider`] makes it the process default,
//!   which the redis crate's and lapin's rustls connectors pick up.
//!
//! ```
//! # fn demo(path: &std::path::Path) {
//! use wscluster_runtime::ca::CaBundle;
//! match CaBundle::load("--redis-ca-file", path) {
//!     Ok(bundle) => assert!(bundle.len() >= 1),
//!     Err(e) => eprintln!("{e}"), // "--redis-ca-file /etc/…/ca.crt: …"
//! }
//! # }
//! ```

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The largest CA file read, in bytes. Debian's whole system bundle is about 220 KiB; a
/// private CA is a few KiB, so 1 MiB leaves room and still bounds a wrong path (a log file).
pub const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// Why a CA bundle could not be loaded. Each names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The file could not be opened or read.
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        /// The flag that named the file.
        flag: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CA_FILE_BYTES`].
    #[error("{flag} {}: larger than {MAX_CA_FILE_BYTES} bytes; not a CA bundle", path.display())]
    TooLarge {
        /// The flag that named the file.
        flag: String,
        /// The file.
        path: PathBuf,
    },
    /// A PEM block is broken, or a certificate is not usable as a trust anchor.
    #[error("{flag} {}: {problem}", path.display())]
    Invalid {
        /// The flag that named the file.
        flag: String,
        /// The file.
        path: PathBuf,
        /// What is wrong, from the PEM or X.509 parser.
        problem: String,
    },
    /// The file holds no `CERTIFICATE` block.
    #[error("{flag} {}: no PEM CERTIFICATE in it", path.display())]
    Empty {
        /// The flag that named the file.
        flag: String,
        /// The file.
        path: PathBuf,
    },
}

/// A validated CA bundle: the PEM text (what lapin takes) and the parsed certificates (what
/// rustls takes). Cheap to clone.
#[derive(Clone)]
pub struct CaBundle {
    /// Where it was read from, for logs.
    path: Arc<Path>,
    /// The file's text, as read.
    pem: Arc<str>,
    /// Its certificates, each checked to be a usable trust anchor.
    certs: Arc<[CertificateDer<'static>]>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl CaBundle {
    /// Reads and checks the bundle at `path`, named by `flag` in errors.
    pub fn load(flag: &str, path: &Path) -> Result<CaBundle, CaError> {
        let read_error = |source| CaError::Read {
            flag: flag.to_owned(),
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(MAX_CA_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_CA_FILE_BYTES {
            return Err(CaError::TooLarge {
                flag: flag.to_owned(),
                path: path.to_owned(),
            });
        }
        let invalid = |problem: String| CaError::Invalid {
            flag: flag.to_owned(),
            path: path.to_owned(),
            problem,
        };
        let pem = String::from_utf8(bytes).map_err(|_| invalid("not PEM text (UTF-8)".into()))?;
        CaBundle::from_pem(&pem)
            .map(|certs| CaBundle {
                path: Arc::from(path),
                pem: Arc::from(pem.as_str()),
                certs: Arc::from(certs),
            })
            .map_err(|problem| match problem {
                None => CaError::Empty {
                    flag: flag.to_owned(),
                    path: path.to_owned(),
                },
                Some(problem) => invalid(problem),
            })
    }

    /// The certificates of `pem`, each a usable trust anchor; `Err(None)` when there is none.
    fn from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, Option<String>> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Some(format!("broken PEM: {e}")))?;
        if certs.is_empty() {
            return Err(None);
        }
        let mut store = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| Some(format!("certificate {} is not a usable CA: {e}", i + 1)))?;
        }
        Ok(certs)
    }

    /// The file's PEM text.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The file's certificates (DER).
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// How many certificates it holds (at least one).
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Always false: a bundle holds at least one certificate.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes rustls's `ring` provider the process default, once; later calls do nothing. Call
/// before building any TLS client (the redis crate builds its config with the default).
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in a fresh temporary directory, removed when dropped.
    struct Temp(PathBuf);

    impl Temp {
        fn with(name: &str, contents: &[u8]) -> Temp {
            let dir = std::env::temp_dir().join(format!(
                "wsc-ca-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join("ca.crt");
            std::fs::write(&path, contents).expect("write");
            Temp(path)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_the_flag_and_the_path() {
        let err = CaBundle::load("--redis-ca-file", Path::new("/nonexistent/ca.crt"))
            .expect_err("missing");
        let text = err.to_string();
        assert!(
            text.starts_with("--redis-ca-file /nonexistent/ca.crt: cannot read it"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let file = Temp::with("empty", b"# nothing here\n");
        let err = CaBundle::load("--amqp-ca-file", &file.0).expect_err("empty");
        assert!(matches!(err, CaError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
    }

    #[test]
    fn a_broken_certificate_is_refused_with_the_reason() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIBnotacert\n-----END CERTIFICATE-----\n";
        let file = Temp::with("broken", pem);
        let err = CaBundle::load("--amqp-ca-file", &file.0).expect_err("broken");
        assert!(matches!(err, CaError::Invalid { .. }), "{err}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_before_parsing() {
        let size = usize::try_from(MAX_CA_FILE_BYTES).expect("fits") + 1;
        let file = Temp::with("large", &vec![b'a'; size]);
        let err = CaBundle::load("--redis-ca-file", &file.0).expect_err("large");
        assert!(matches!(err, CaError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_bundle_of_two_cas_loads_both_and_keeps_the_text() {
        let pem: String = ["one", "two"]
            .iter()
            .map(|name| {
                let mut params =
                    rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, *name);
                let key = rcgen::KeyPair::generate().expect("key");
                params.self_signed(&key).expect("self-signed").pem()
            })
            .collect();
        let file = Temp::with("two", pem.as_bytes());
        let bundle = CaBundle::load("--redis-ca-file", &file.0).expect("loads");
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle.pem(), pem);
        assert_eq!(bundle.path(), file.0.as_path());
        assert!(
            !format!("{bundle:?}").contains("BEGIN"),
            "Debug prints no certificate"
        );
    }

    #[test]
    fn installing_the_provider_twice_keeps_one_default() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
