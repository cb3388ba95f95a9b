//! How `wscluster-load` opens its connections: plain `ws://`, or `wss://` with rustls (the ring
//! provider) trusting one CA file, with or without TLS session resumption.
//!
//! * Without resumption every connection makes a full handshake: one shared
//!   [`ClientConfig`] whose resumption is disabled, so no ticket or session id is ever offered.
//! * With resumption connections share one [`ClientConfig`] and its in-memory session store:
//!   the tickets a server sends after one handshake (TLS 1.3 `NewSessionTicket`) are offered on
//!   the next connection. Whether the server accepted one is read back from each connection
//!   ([`ClientConnection::handshake_kind`]) and counted, so a benchmark of resumed handshakes
//!   can show that they were resumed. rustls keeps at most 8 TLS 1.3 tickets per server and a
//!   server sends fewer after a resumed handshake than after a full one, so more than a few
//!   concurrent loops on one store run out of tickets; [`Dialer::with_own_sessions`] gives each
//!   loop its own store, as a client reconnecting to its server has.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use wscluster_tests::load_tls::Dialer;
//! let dialer = Dialer::for_url("wss://127.0.0.1:8443/ws", Some("ca.pem".as_ref()), true)?;
//! let _ws = dialer.connect("wss://127.0.0.1:8443/ws?userId=u1").await?;
//! println!("{}", dialer.handshakes());
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

/// The byte stream under a load connection: TCP, or TLS over TCP.
pub type LoadStream = Either<TcpStream, TlsStream<TcpStream>>;

/// A load connection.
pub type LoadWs = WebSocketStream<LoadStream>;

/// The ALPN protocol offered: the one every benchmarked proxy speaks on its TLS port.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Opens load connections, plain or TLS, and counts the TLS handshakes by kind.
#[derive(Debug)]
pub struct Dialer {
    /// `None` for `ws://`; for `wss://` the configuration (and with it the session store)
    /// every connection shares.
    tls: Option<Arc<ClientConfig>>,
    /// Whether connections offer the tickets of earlier ones.
    resume: bool,
    /// Handshakes made so far, by kind.
    counts: Arc<HandshakeCounts>,
}

/// TLS handshakes by kind, and what the first one negotiated.
#[derive(Debug, Default)]
struct HandshakeCounts {
    /// Full handshakes (with or without a HelloRetryRequest).
    full: AtomicU64,
    /// Handshakes that resumed a session.
    resumed: AtomicU64,
    /// Protocol version, cipher suite and key exchange group of the first handshake, so a
    /// benchmark shows that every target negotiated the same thing.
    negotiated: Mutex<Option<String>>,
}

impl Dialer {
    /// The dialer a URL template asks for: plain for `ws://`; for `wss://`, TLS trusting the
    /// certificates in `ca_file` (PEM), resuming sessions when `resume` is set.
    pub fn for_url(template: &str, ca_file: Option<&Path>, resume: bool) -> anyhow::Result<Self> {
        let tls = if template.starts_with("wss://") {
            let ca_file = ca_file.context("a wss:// URL needs --ca-file")?;
            Some(Arc::new(client_config(ca_file, resume)?))
        } else {
            None
        };
        Ok(Self {
            tls,
            resume,
            counts: Arc::default(),
        })
    }

    /// A dialer with the same trust and counters but its own session store (when resuming),
    /// for one sequential loop of connections.
    pub fn with_own_sessions(&self) -> Self {
        let tls = self.tls.as_ref().map(|config| {
            let mut own = ClientConfig::clone(config);
            if self.resume {
                own.resumption = Resumption::default();
            }
            Arc::new(own)
        });
        Self {
            tls,
            resume: self.resume,
            counts: Arc::clone(&self.counts),
        }
    }

    /// Connects to `url`'s host and port, makes the TLS handshake for `wss://`, then the
    /// WebSocket upgrade.
    pub async fn connect(&self, url: &str) -> anyhow::Result<LoadWs> {
        let (host, port) = host_port(url)?;
        let tcp = TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let stream = match &self.tls {
            None => Either::Left(tcp),
            Some(config) => {
                let name = ServerName::try_from(host.to_owned())
                    .with_context(|| format!("{host} is not a TLS server name"))?;
                let tls = TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {host}:{port}"))?;
                self.counts.record(tls.get_ref().1);
                Either::Right(tls)
            }
        };
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .with_context(|| format!("WebSocket upgrade at {url}"))?;
        Ok(ws)
    }

    /// The handshakes so far as JSON: `null` for plain connections, else
    /// `{"full", "resumed", "resumed_fraction", "negotiated"}`.
    pub fn handshakes(&self) -> serde_json::Value {
        if self.tls.is_none() {
            return serde_json::Value::Null;
        }
        let full = self.counts.full.load(Ordering::Relaxed);
        let resumed = self.counts.resumed.load(Ordering::Relaxed);
        let total = full + resumed;
        let fraction = if total == 0 {
            0.0
        } else {
            resumed as f64 / total as f64
        };
        let negotiated = self
            .counts
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        json!({
            "full": full, "resumed": resumed, "resumed_fraction": fraction,
            "negotiated": negotiated,
        })
    }
}

impl HandshakeCounts {
    fn record(&self, conn: &ClientConnection) {
        match conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => &self.resumed,
            _ => &self.full,
        }
        .fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .negotiated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(format!(
                "{:?} {:?} {:?}",
                conn.protocol_version(),
                conn.negotiated_cipher_suite().map(|s| s.suite()),
                conn.negotiated_key_exchange_group().map(|g| g.name()),
            ));
        }
    }
}

/// A client configuration trusting the PEM certificates in `ca_file`, offering ALPN
/// `http/1.1`, TLS 1.2 and 1.3; resumption kept (rustls' default in-memory store) or disabled.
fn client_config(ca_file: &Path, resume: bool) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("reading --ca-file {}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("parsing --ca-file {}", ca_file.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate in --ca-file {}", ca_file.display()))?;
    }
    if roots.is_empty() {
        bail!("--ca-file {} holds no certificate", ca_file.display());
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the ring provider's TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(config)
}

/// Host and port of a `ws://` or `wss://` URL (an explicit port is required).
fn host_port(url: &str) -> anyhow::Result<(&str, u16)> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .with_context(|| format!("{url}: not a ws:// or wss:// URL"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("{url}: no port"))?;
    let port = port
        .parse()
        .with_context(|| format!("{url}: bad port {port:?}"))?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;

    #[test]
    fn host_and_port_come_from_either_scheme() {
        assert_eq!(
            host_port("ws://127.0.0.1:80/ws?userId=u1").ok(),
            Some(("127.0.0.1", 80))
        );
        assert_eq!(
            host_port("wss://localhost:8443?x=1").ok(),
            Some(("localhost", 8443))
        );
        assert!(host_port("http://127.0.0.1:80/").is_err());
        assert!(host_port("wss://127.0.0.1/").is_err());
        assert!(host_port("wss://127.0.0.1:x/").is_err());
    }

    #[test]
    fn a_wss_url_needs_a_ca_file_that_holds_a_certificate() {
        let err = Dialer::for_url("wss://127.0.0.1:1/", None, false).err();
        assert!(format!("{err:?}").contains("--ca-file"));
        let dir = std::env::temp_dir().join(format!("load-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").ok();
        let err = Dialer::for_url("wss://127.0.0.1:1/", Some(&empty), false).err();
        assert!(format!("{err:?}").contains("holds no certificate"));
        let plain = Dialer::for_url("ws://127.0.0.1:1/", None, false).ok();
        assert!(plain.is_some_and(|d| d.handshakes().is_null()));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A CA and a leaf for 127.0.0.1 signed by it; the CA's PEM and a server config.
    fn test_pki(dir: &Path) -> anyhow::Result<(std::path::PathBuf, ServerConfig)> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])?
            .signed_by(&leaf_key, &Issuer::new(ca_params, ca_key))?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(anyhow::Error::msg)?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)?;
        Ok((ca_file, config))
    }

    /// A TLS WebSocket server on 127.0.0.1 that accepts upgrades and closes them.
    async fn tls_server(
        config: ServerConfig,
    ) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("wss://{}/ws", listener.local_addr()?);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await {
                        let _ = ws.close(None).await;
                    }
                });
            }
        });
        Ok((url, task))
    }

    async fn handshakes_with(resume: bool) -> anyhow::Result<serde_json::Value> {
        use futures_util::StreamExt;
        let dir = std::env::temp_dir().join(format!("load-tls-{}-{resume}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (ca_file, config) = test_pki(&dir)?;
        let (url, server) = tls_server(config).await?;
        let dialer = Dialer::for_url(&url, Some(&ca_file), resume)?;
        for _ in 0..3 {
            let mut ws = dialer.connect(&url).await?;
            while let Some(Ok(_)) = ws.next().await {}
        }
        server.abort();
        std::fs::remove_dir_all(&dir).ok();
        Ok(dialer.handshakes())
    }

    #[tokio::test]
    async fn own_session_stores_resume_separately_and_count_together() -> anyhow::Result<()> {
        use futures_util::StreamExt;
        let dir = std::env::temp_dir().join(format!("load-tls-{}-own", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (ca_file, config) = test_pki(&dir)?;
        let (url, server) = tls_server(config).await?;
        let shared = Dialer::for_url(&url, Some(&ca_file), true)?;
        let run = async {
            for dialer in [shared.with_own_sessions(), shared.with_own_sessions()] {
                for _ in 0..2 {
                    let mut ws = dialer.connect(&url).await?;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), run).await??;
        server.abort();
        std::fs::remove_dir_all(&dir).ok();
        let counts = shared.handshakes();
        assert_eq!(counts["full"], 2, "{counts}");
        assert_eq!(counts["resumed"], 2, "{counts}");
        Ok(())
    }

    #[tokio::test]
    async fn shared_session_store_resumes_and_disabled_resumption_does_not() -> anyhow::Result<()> {
        let bound = std::time::Duration::from_secs(20);
        let resumed = tokio::time::timeout(bound, handshakes_with(true)).await??;
        assert_eq!(resumed["full"], 1, "{resumed}");
        assert_eq!(resumed["resumed"], 2, "{resumed}");
        let negotiated = resumed["negotiated"].as_str().unwrap_or_default();
        assert!(negotiated.contains("TLSv1_3"), "{negotiated}");
        let full = tokio::time::timeout(bound, handshakes_with(false)).await??;
        assert_eq!(full["full"], 3, "{full}");
        assert_eq!(full["resumed"], 0, "{full}");
        Ok(())
    }
}
