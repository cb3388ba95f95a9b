//! TLS termination with certificates a test CA issues (rcgen): real handshakes over 127.0.0.1.

use std::sync::Arc;

use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A CA that issues leaf certificates, and a temporary directory for their files.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    dir: PathBuf,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wscluster test CA");
        let cert = params.self_signed(&key).expect("CA cert");
        let dir = std::env::temp_dir().join(format!("wscluster-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TestCa {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            dir,
        }
    }

    /// Issues a leaf for `names` with `serial`, valid from `not_before` to `not_after` (years),
    /// and writes it as `<file>.crt` / `<file>.key`.
    fn issue(&self, file: &str, names: &[&str], serial: u64, years: (i32, i32)) -> CertFiles {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let files = CertFiles {
            cert_file: self.dir.join(format!("{file}.crt")),
            key_file: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert_file, cert.pem()).expect("write cert");
        std::fs::write(&files.key_file, key.serialize_pem()).expect("write key");
        files
    }

    fn valid(&self, file: &str, names: &[&str], serial: u64) -> CertFiles {
        self.issue(file, names, serial, (2020, 2090))
    }

    fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("CA pem");
        roots.add(ca).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec(default: CertFiles) -> TlsSpec {
    TlsSpec {
        default,
        sni: Vec::new(),
    }
}

/// An echo server behind `tls` on 127.0.0.1.
async fn echo_server(tls: &Tls) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = tls.acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Connects with SNI `name`; returns the stream and the serial of the certificate served.
async fn connect(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    name: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let server_name = ServerName::try_from(name.to_owned()).expect("name");
    let stream = tokio::time::timeout(TIMEOUT, ca.client().connect(server_name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (_, conn) = stream.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let leaf = conn.peer_certificates().expect("certificates")[0].clone();
    (stream, serial_of(&leaf))
}

/// The serial number of a DER certificate, as rcgen encodes small serials.
fn serial_of(cert: &CertificateDer<'_>) -> Vec<u8> {
    // tbsCertificate's serial is the first INTEGER after the version; find it by its encoding.
    let der = cert.as_ref();
    let at = der
        .windows(2)
        .position(|w| w == [0xa0, 0x03])
        .expect("version field")
        + 5;
    assert_eq!(der[at], 0x02, "serial INTEGER");
    let len = der[at + 1] as usize;
    der[at + 2..at + 2 + len].to_vec()
}

/// `n` as DER encodes a small positive INTEGER: big-endian, no leading zero bytes.
fn der_serial(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    bytes[first..].to_vec()
}

async fn echo(stream: &mut tokio_rustls::client::TlsStream<TcpStream>, text: &[u8]) {
    stream.write_all(text).await.expect("write");
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(TIMEOUT, stream.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, text);
}

#[tokio::test]
async fn a_valid_certificate_serves_and_a_rotation_keeps_open_connections() {
    let ca = TestCa::new("rotate");
    let files = ca.valid("server", &["localhost"], 1001);
    let tls = Tls::new(spec(files.clone())).expect("loads");
    let addr = echo_server(&tls).await;
    let mut open = Vec::new();
    for _ in 0..100 {
        let (stream, serial) = connect(&ca, addr, "localhost").await;
        assert_eq!(serial, der_serial(1001));
        open.push(stream);
    }
    ca.valid("server", &["localhost"], 2002);
    tls.reload().expect("reloads");
    let (_, serial) = connect(&ca, addr, "localhost").await;
    assert_eq!(serial, der_serial(2002), "new handshakes get the new cert");
    for stream in &mut open {
        echo(stream, b"still here").await;
    }
}

#[tokio::test]
async fn the_watch_task_picks_up_a_rewritten_secret() {
    let ca = TestCa::new("watch");
    let files = ca.valid("server", &["localhost"], 7);
    let tls = Tls::new(spec(files)).expect("loads");
    let addr = echo_server(&tls).await;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(
        tls.clone()
            .watch(Duration::from_millis(20), shutdown.clone()),
    );
    // A different length, so the change is seen even within one mtime tick.
    ca.valid("server", &["localhost", "extra.example"], 8);
    let seen = tokio::time::timeout(TIMEOUT, async {
        loop {
            let (_, serial) = connect(&ca, addr, "localhost").await;
            if serial == der_serial(8) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the new certificate was not served");
    shutdown.cancel();
    tokio::time::timeout(TIMEOUT, task)
        .await
        .expect("stops")
        .expect("no panic");
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_unknown_names_get_the_default() {
    let ca = TestCa::new("sni");
    let default = ca.valid("default", &["localhost"], 1);
    let other = ca.valid("other", &["chat.example.com"], 2);
    let tls = Tls::new(TlsSpec {
        default,
        sni: vec![SniCert {
            server_names: vec!["Chat.Example.com".into()],
            files: other,
        }],
    })
    .expect("loads");
    let addr = echo_server(&tls).await;
    let (_, serial) = connect(&ca, addr, "chat.example.com").await;
    assert_eq!(serial, der_serial(2));
    let (_, serial) = connect(&ca, addr, "localhost").await;
    assert_eq!(serial, der_serial(1));
}

#[test]
fn expired_mismatched_and_missing_certificates_are_refused_with_the_file_named() {
    let ca = TestCa::new("bad");
    let expired = ca.issue("expired", &["localhost"], 3, (2000, 2001));
    let err = Tls::new(spec(expired.clone())).expect_err("expired");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the certificate has expired",
            expired.cert_file.display()
        )
    );
    let future = ca.issue("future", &["localhost"], 4, (2080, 2090));
    assert!(
        Tls::new(spec(future))
            .expect_err("future")
            .to_string()
            .ends_with("is not valid yet")
    );

    let a = ca.valid("a", &["localhost"], 5);
    let b = ca.valid("b", &["localhost"], 6);
    let mismatched = CertFiles {
        cert_file: a.cert_file.clone(),
        key_file: b.key_file.clone(),
    };
    let err = Tls::new(spec(mismatched))
        .expect_err("mismatch")
        .to_string();
    assert!(
        err.contains("the key does not match the certificate"),
        "{err}"
    );

    let missing = CertFiles {
        cert_file: ca.dir.join("nope.crt"),
        key_file: a.key_file.clone(),
    };
    let err = Tls::new(spec(missing)).expect_err("missing").to_string();
    assert!(err.contains("nope.crt: cannot read it"), "{err}");

    std::fs::write(&b.cert_file, "not pem").expect("write");
    let err = Tls::new(spec(b)).expect_err("garbage").to_string();
    assert!(err.ends_with("holds no certificate"), "{err}");
}

#[test]
fn a_broken_rewrite_keeps_the_previous_certificate() {
    let ca = TestCa::new("keep");
    let files = ca.valid("server", &["localhost"], 9);
    let tls = Tls::new(spec(files.clone())).expect("loads");
    std::fs::write(&files.key_file, "garbage").expect("write");
    assert!(tls.reload().is_err());
    let chosen = tls.resolver.0.load().choose(Some("localhost"));
    assert_eq!(serial_of(&chosen.cert[0]), der_serial(9));
}

#[test]
fn an_sni_entry_needs_a_valid_name_or_a_certificate_that_names_one() {
    let ca = TestCa::new("names");
    let files = ca.valid("server", &["localhost"], 10);
    let ip_only = ca.valid("ip", &["127.0.0.1"], 13);
    for (names, entry_files, want) in [
        (vec![], ip_only, "names no DNS name; give serverNames"),
        (
            vec!["not a name".to_string()],
            files.clone(),
            "is not a DNS name",
        ),
    ] {
        let err = Tls::new(TlsSpec {
            default: files.clone(),
            sni: vec![SniCert {
                server_names: names,
                files: entry_files,
            }],
        })
        .expect_err("refused")
        .to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[test]
fn without_server_names_an_entry_answers_its_certificates_names_and_a_wildcard_one_label() {
    let ca = TestCa::new("sans");
    let tls = Tls::new(TlsSpec {
        default: ca.valid("default", &["localhost"], 1),
        sni: vec![SniCert {
            server_names: vec![],
            files: ca.valid("rooms", &["chat.example.com", "*.rooms.example.com"], 2),
        }],
    })
    .expect("loads");
    let store = tls.resolver.0.load();
    for (name, serial) in [
        ("chat.example.com", 2),
        ("CHAT.example.com", 2),
        ("eu.rooms.example.com", 2),
        ("a.eu.rooms.example.com", 1),
        ("rooms.example.com", 1),
        ("other.example.com", 1),
    ] {
        let chosen = store.choose(Some(name));
        assert_eq!(serial_of(&chosen.cert[0]), der_serial(serial), "{name}");
    }
    assert_eq!(serial_of(&store.choose(None).cert[0]), der_serial(1));
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_a_clean_close() {
    let ca = TestCa::new("plain");
    let tls = Tls::new(spec(ca.valid("server", &["localhost"], 11))).expect("loads");
    let addr = echo_server(&tls).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("a close (FIN), not a reset");
    assert!(
        !rest.starts_with(b"HTTP/"),
        "no HTTP answer on the TLS port"
    );
}
