//! The TLS listener of the real proxy binary (`--tls-listen`): `wss://` through it to a backend
//! beside the plain listener, certificate rotation under open connections, plain HTTP on the
//! TLS port, a wrong ALPN, and certificates refused at start. Certificates come from a test CA
//! made here (rcgen).

mod support;
#[path = "support/tls_ca.rs"]
mod tls_ca;

use std::path::Path;
use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tls_ca::{Issued, TestCa, der_serial, tls_connect, tls_connect_as};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket over the test's TLS client.
type Wss = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A proxy with a TLS listener over `issued`, routing to `backend`.
async fn tls_proxy(dir: &Path, backend: &Backend, issued: &Issued) -> Proxy {
    let ring = dir.join("ring.json");
    write_ring(&ring, 1, vec![backend.member()]);
    let cert = issued.cert_file.to_str().expect("utf-8 path");
    let key = issued.key_file.to_str().expect("utf-8 path");
    let flags = [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        cert,
        "--tls-key-file",
        key,
    ];
    let proxy = Proxy::spawn_with(dir, "{}", Ring::File(&ring), CLUSTER, &flags).await;
    proxy.wait_ring_version(1).await;
    proxy
}

/// A `wss://` connection through the proxy's TLS listener: the stream, the serial of the
/// certificate served, and the backend's hello.
async fn wss(ca: &TestCa, proxy: &Proxy, user: &str) -> (Wss, Vec<u8>, String) {
    let addr = proxy.tls.expect("the TLS address is announced");
    let (tls, serial) = tls_connect(&ca.connector(), addr)
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{}/connect/{user}", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("upgrade over TLS");
    let hello = next_text(&mut ws).await;
    (ws, serial, hello)
}

async fn wss_echo(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    assert_eq!(next_text(ws).await, text);
}

#[tokio::test]
async fn wss_and_ws_listeners_of_one_proxy_both_reach_the_backend() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = temp_dir("tls-both");
        let ca = TestCa::new(&dir);
        let backend = Backend::start("node-a").await;
        let proxy = tls_proxy(&dir, &backend, &ca.valid("server", 7)).await;
        let (mut secure, serial, hello) = wss(&ca, &proxy, "alice").await;
        assert_eq!(serial, der_serial(7));
        assert!(hello.contains("node-a"), "{hello}");
        let (mut plain, id) = connect(&proxy.ws_url("/connect/bob")).await;
        assert_eq!(id, "node-a");
        for i in 0..20 {
            wss_echo(&mut secure, &format!("over tls {i}")).await;
            echo(&mut plain, &format!("in the clear {i}")).await;
        }
        // A large message crosses several TLS records both ways.
        let big = "x".repeat(200_000);
        wss_echo(&mut secure, &big).await;
        assert_eq!(
            proxy.metric("wscluster_proxy_tls_handshakes_total").await,
            Some(1.0)
        );
        secure.close(None).await.expect("close");
    })
    .await
    .expect("test in time");
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_on_one_tls_connection_goes_through_hyper() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = temp_dir("tls-hyper");
        let ca = TestCa::new(&dir);
        let backend = Backend::start("node-a").await;
        let proxy = tls_proxy(&dir, &backend, &ca.valid("server", 5)).await;
        let addr = proxy.tls.expect("TLS address");
        let (mut tls, _) = tls_connect(&ca.connector(), addr).await.expect("handshake");
        // Not an upgrade: hyper answers it, and keeps the connection for the next request.
        tls.write_all(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let (answer, _) = read_response(&mut tls).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        let url = format!("wss://localhost:{}/connect/dave", addr.port());
        let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .expect("upgrade on the kept-alive TLS connection");
        assert!(next_text(&mut ws).await.contains("node-a"));
        wss_echo(&mut ws, "through hyper's path").await;
    })
    .await
    .expect("test in time");
}

#[tokio::test]
async fn a_rotation_keeps_100_open_connections_and_new_ones_get_the_new_serial() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = temp_dir("tls-rotate");
        let ca = TestCa::new(&dir);
        let backend = Backend::start("node-a").await;
        let proxy = tls_proxy(&dir, &backend, &ca.valid("server", 1)).await;
        let mut open = Vec::new();
        for i in 0..100 {
            let (ws, serial, _) = wss(&ca, &proxy, &format!("user-{i}")).await;
            assert_eq!(serial, der_serial(1));
            open.push(ws);
        }
        ca.valid("server", 2);
        // The files are looked at every few seconds: new handshakes see serial 2 soon.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, serial, _) = wss(&ca, &proxy, "newcomer").await;
            if serial == der_serial(2) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never served serial 2"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for (i, ws) in open.iter_mut().enumerate() {
            wss_echo(ws, &format!("still here {i}")).await;
        }
    })
    .await
    .expect("test in time");
}

#[tokio::test]
async fn plain_http_and_a_wrong_alpn_on_the_tls_port_get_a_clean_close_and_are_counted() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = temp_dir("tls-plain");
        let ca = TestCa::new(&dir);
        let backend = Backend::start("node-a").await;
        let proxy = tls_proxy(&dir, &backend, &ca.valid("server", 3)).await;
        let addr = proxy.tls.expect("TLS address");
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /connect/alice HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest)
            .await
            .expect("a close (FIN), not a reset");
        assert!(
            !rest.starts_with(b"HTTP/"),
            "no HTTP answer on the TLS port"
        );
        let h2_only = ca.connector_with_alpn(&[b"h2"]);
        assert!(
            tls_connect(&h2_only, addr).await.is_err(),
            "h2 is not served"
        );
        let failures = "wscluster_proxy_tls_handshake_failures_total";
        let plain = format!("{failures}{{reason=\"plain-http\"}}");
        let alpn = format!("{failures}{{reason=\"bad-alpn\"}}");
        // The proxy counts a failure after its alert is on the wire, so the client can be first.
        proxy.wait_metric(&plain, 1.0).await;
        proxy.wait_metric(&alpn, 1.0).await;
        // The listener serves on.
        let (mut ws, _, _) = wss(&ca, &proxy, "carol").await;
        wss_echo(&mut ws, "after the failures").await;
    })
    .await
    .expect("test in time");
}

#[tokio::test]
async fn a_moved_wss_connection_gets_the_reset_frame_and_close_code_over_tls() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = temp_dir("tls-reset");
        let ca = TestCa::new(&dir);
        let a = Backend::start("node-a").await;
        let b = Backend::start("node-b").await;
        let proxy = tls_proxy(&dir, &a, &ca.valid("server", 4)).await;
        let (mut ws, _, hello) = wss(&ca, &proxy, "erin").await;
        assert!(hello.contains("node-a"), "{hello}");
        // node-a leaves the ring: every key moves to node-b.
        write_ring(&dir.join("ring.json"), 2, vec![b.member()]);
        let ending = read_ending(&mut ws, Duration::from_secs(15)).await;
        let reset = ending.reset.expect("a reset frame before the close");
        assert_eq!(reset["reason"], "rebalance");
        assert_eq!(ending.code, Some(4000));
        let (_, _, hello) = wss(&ca, &proxy, "erin").await;
        assert!(
            hello.contains("node-b"),
            "reconnected to the new owner: {hello}"
        );
    })
    .await
    .expect("test in time");
}

/// Runs the proxy binary with `--tls-listen` and these files; its exit status and stderr.
async fn start_refused(dir: &Path, cert: &Path, key: &Path) -> (std::process::ExitStatus, String) {
    let ring = dir.join("ring.json");
    write_ring(&ring, 1, vec![]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wscluster-proxy"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--tls-listen", "127.0.0.1:0", "--tls-cert-file"])
        .arg(cert)
        .arg("--tls-key-file")
        .arg(key)
        .arg("--ring-file")
        .arg(&ring)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("exits in time")
        .expect("runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn expired_mismatched_and_missing_certificates_refuse_the_start_naming_the_file() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = temp_dir("tls-refused");
        let ca = TestCa::new(&dir);
        let expired = ca.issue("expired", 1, (2001, 2002));
        let good = ca.valid("good", 2);
        let other = ca.valid("other", 3);
        let missing = dir.join("missing.crt");
        let cases = [
            (
                &expired.cert_file,
                &expired.key_file,
                &expired.cert_file,
                "has expired",
            ),
            (
                &good.cert_file,
                &other.key_file,
                &other.key_file,
                "does not match",
            ),
            (&missing, &good.key_file, &missing, "cannot read"),
        ];
        for (cert, key, named, what) in cases {
            let (status, stderr) = start_refused(&dir, cert, key).await;
            assert!(!status.success(), "started with {cert:?} {key:?}");
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "one line: {stderr}");
            let line = lines[0];
            assert!(line.starts_with("error: "), "{line}");
            assert!(line.contains(&named.display().to_string()), "{line}");
            assert!(line.contains(what), "{line}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
    .expect("test in time");
}

#[tokio::test]
async fn an_sni_certificate_from_a_secret_directory_answers_the_names_in_it() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = temp_dir("tls-sni");
        let ca = TestCa::new(&dir);
        let backend = Backend::start("n-0").await;
        let default = ca.valid("default", 1);
        // A mounted kubernetes.io/tls Secret: tls.crt and tls.key in a directory of its own.
        let secret = dir.join("rooms");
        std::fs::create_dir_all(&secret).expect("secret dir");
        let rooms = ca.issue_for(
            "rooms",
            2,
            (2020, 2090),
            &["chat.example.com", "*.rooms.example.com"],
        );
        std::fs::rename(&rooms.cert_file, secret.join("tls.crt")).expect("tls.crt");
        std::fs::rename(&rooms.key_file, secret.join("tls.key")).expect("tls.key");
        let ring = dir.join("ring.json");
        write_ring(&ring, 1, vec![backend.member()]);
        let flags = [
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert-file",
            default.cert_file.to_str().expect("utf-8 path"),
            "--tls-key-file",
            default.key_file.to_str().expect("utf-8 path"),
            "--tls-sni-cert",
            secret.to_str().expect("utf-8 path"),
        ];
        let proxy = Proxy::spawn_with(&dir, "{}", Ring::File(&ring), CLUSTER, &flags).await;
        let addr = proxy.tls.expect("the TLS address is announced");
        for (name, serial) in [
            ("chat.example.com", 2),
            ("eu.rooms.example.com", 2),
            ("localhost", 1),
        ] {
            let (_, served) = tls_connect_as(&ca.connector(), addr, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(served, der_serial(serial), "{name}");
        }
        // A name neither certificate covers gets the default, which the client then refuses
        // naming the default's names.
        let refused = tls_connect_as(&ca.connector(), addr, "other.example.com").await;
        let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains(r#"certificate is only valid for DnsName("localhost")"#),
            "{error}"
        );
    })
    .await
    .expect("finished in time");
}
