//! `wss://` end to end across real processes: a real node (`wscluster-operator node --chat`)
//! behind a real proxy (`wscluster-operator proxy`) with its plain and TLS listeners both
//! open. A Rust client over tokio-rustls (trusting only the test's CA, made here with rcgen)
//! and a plain `ws://` client chat with each other through the one proxy, both ways.

#[path = "../../proxy/tests/support/tls_ca.rs"]
mod tls_ca;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tls_ca::{TestCa, tls_connect};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wscluster_ring::{Member, RingSnapshot};
use wscluster_runtime::announce::read_announcement;
use wscluster_tests::{TempDir, operator_binary};

const CLUSTER: &str = "test/tls";
const LIMIT: Duration = Duration::from_secs(60);

/// Spawns `wscluster-operator <args>` (killed on drop) and reads its announced addresses.
async fn spawn(args: &[&str]) -> (Child, wscluster_runtime::Announcement) {
    let mut child = Command::new(operator_binary().expect("the operator binary"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let announced = read_announcement(&mut BufReader::new(stdout))
        .await
        .expect("the process announces its addresses");
    (child, announced)
}

/// A node with chat on, serving the ring file at `ring`, and the ring naming it.
async fn node(dir: &Path, ring: &Path) -> Child {
    let keys = dir.join("api-keys");
    std::fs::write(&keys, "tls-test-api-key-0123456789\n").expect("api keys");
    let ring_arg = ring.to_str().expect("utf-8 path");
    let keys_arg = keys.to_str().expect("utf-8 path");
    let (child, announced) = spawn(&[
        "node",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--id",
        "tls-node",
        "--cluster-id",
        CLUSTER,
        "--ring-file",
        ring_arg,
        "--api-keys-file",
        keys_arg,
        "--chat",
    ])
    .await;
    let member = Member::active("tls-node".to_owned(), announced.addr.to_string());
    let snapshot = RingSnapshot::new(CLUSTER, 1, vec![member]);
    let tmp = ring.with_extension("tmp");
    std::fs::write(&tmp, snapshot.to_json()).expect("ring");
    std::fs::rename(&tmp, ring).expect("ring");
    child
}

/// The next JSON text frame of type `kind`, skipping others.
async fn next_of<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    kind: &str,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("valid frame");
        if let Message::Text(text) = msg {
            let value: Value = serde_json::from_str(&text).expect("JSON frame");
            if value["type"] == kind {
                return value;
            }
        }
    }
}

/// Alice over `wss://` (the TLS listener), retried until the proxy has the ring.
async fn alice_over_tls(
    ca: &TestCa,
    tls: SocketAddr,
) -> WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    loop {
        let (stream, _) = tls_connect(&ca.connector(), tls)
            .await
            .expect("TLS handshake");
        let url = format!("wss://localhost:{}/connect/alice", tls.port());
        if let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, stream).await {
            next_of(&mut ws, "ready").await;
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_wss_client_and_a_ws_client_chat_through_one_proxy_to_a_real_node() {
    tokio::time::timeout(LIMIT, async {
        let dir = TempDir::new("tls-e2e").expect("temp dir");
        let ca = TestCa::new(dir.path());
        let issued = ca.valid("server", 9);
        let ring = dir.path().join("ring.json");
        let _node = node(dir.path(), &ring).await;
        let (cert, key) = (issued.cert_file.to_str(), issued.key_file.to_str());
        let (_proxy, announced) = spawn(&[
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert-file",
            cert.expect("utf-8"),
            "--tls-key-file",
            key.expect("utf-8"),
            "--cluster-id",
            CLUSTER,
            "--ring-file",
            ring.to_str().expect("utf-8"),
        ])
        .await;
        let tls = announced.get("tls").expect("the TLS listener is announced");
        let mut alice = alice_over_tls(&ca, tls).await;
        let bob_url = format!("ws://{}/connect/bob", announced.addr);
        let (mut bob, _) = tokio_tungstenite::connect_async(bob_url)
            .await
            .expect("bob over ws");
        next_of(&mut bob, "ready").await;
        for i in 0..10 {
            let to_bob = json!({"to": "bob", "message": format!("over tls {i}")});
            alice
                .send(Message::text(to_bob.to_string()))
                .await
                .expect("alice sends");
            assert_eq!(
                next_of(&mut bob, "message").await["content"],
                format!("over tls {i}")
            );
            let to_alice = json!({"to": "alice", "message": format!("in the clear {i}")});
            bob.send(Message::text(to_alice.to_string()))
                .await
                .expect("bob sends");
            let got = next_of(&mut alice, "message").await;
            assert_eq!(got["content"], format!("in the clear {i}"));
        }
        alice.close(None).await.expect("alice closes");
    })
    .await
    .expect("the test ends in time");
}
