//! A test certificate authority (rcgen) that issues server certificates as PEM files, and a
//! rustls client that trusts it: for the TLS listener's tests here and in the workspace's
//! cross-process tests (`tests/tests/tls_proxy.rs` includes this file).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A CA, and the directory its files are written to.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (what a client trusts).
    pub pem: String,
    /// The directory of `ca.crt` and every issued `<name>.crt` / `<name>.key`.
    pub dir: PathBuf,
}

/// A certificate and key as files, as a Kubernetes TLS Secret is mounted.
#[derive(Debug, Clone)]
pub struct Issued {
    /// `tls.crt`.
    pub cert_file: PathBuf,
    /// `tls.key`.
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA writing into `dir` (which must exist); its certificate goes to `dir/ca.crt`.
    pub fn new(dir: &Path) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wscluster test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        let pem = cert.pem();
        std::fs::write(dir.join("ca.crt"), &pem).expect("write CA");
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
            dir: dir.to_owned(),
        }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues a certificate for `127.0.0.1` and `localhost` with `serial`, valid in the years
    /// `from..to`, written to `<name>.crt` and `<name>.key` (replaced atomically, as the kubelet
    /// swaps a Secret's files).
    pub fn issue(&self, name: &str, serial: u64, years: (i32, i32)) -> Issued {
        self.issue_for(name, serial, years, &["localhost", "127.0.0.1"])
    }

    /// [`TestCa::issue`] for these subject alternative names.
    pub fn issue_for(
        &self,
        name: &str,
        serial: u64,
        (from, to): (i32, i32),
        names: &[&str],
    ) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let issued = Issued {
            cert_file: self.dir.join(format!("{name}.crt")),
            key_file: self.dir.join(format!("{name}.key")),
        };
        write_atomically(&issued.key_file, &key.serialize_pem());
        write_atomically(&issued.cert_file, &cert.pem());
        issued
    }

    /// [`TestCa::issue`], valid now (2020 to 2090).
    pub fn valid(&self, name: &str, serial: u64) -> Issued {
        self.issue(name, serial, (2020, 2090))
    }

    /// A client that trusts this CA only, offering ALPN `alpn`.
    pub fn connector_with_alpn(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("CA pem");
        roots.add(ca).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A client that trusts this CA only, offering ALPN `http/1.1` as browsers do.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        self.connector_with_alpn(&[b"http/1.1"])
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A TLS connection to `addr` (server name `localhost`) and the serial of the certificate it
/// was served, as DER INTEGER content bytes.
pub async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>)> {
    tls_connect_as(connector, addr, "localhost").await
}

/// [`tls_connect`] asking for `server_name` by SNI.
pub async fn tls_connect_as(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    server_name: &str,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).expect("name");
    let stream = connector.connect(name, tcp).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(serial_of)
        .unwrap_or_default();
    Ok((stream, leaf))
}

/// The serial number of a DER certificate (rcgen's encoding of small serials).
pub fn serial_of(cert: &CertificateDer<'_>) -> Vec<u8> {
    // tbsCertificate: SEQUENCE { [0] version, serialNumber INTEGER, ... }: the serial is the
    // first INTEGER after the explicit version tag `a0 03 02 01 02`.
    let der = cert.as_ref();
    let at = der
        .windows(2)
        .position(|w| w == [0xa0, 0x03])
        .expect("version field")
        + 5;
    assert_eq!(der[at], 0x02, "serial INTEGER");
    let len = usize::from(der[at + 1]);
    der[at + 2..at + 2 + len].to_vec()
}

/// `n` as the content bytes of a DER INTEGER (big-endian, no leading zeros; small positive).
pub fn der_serial(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    let mut out = bytes[first..].to_vec();
    if out[0] & 0x80 != 0 {
        out.insert(0, 0);
    }
    out
}
