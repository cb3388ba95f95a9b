//! The verified key is the identity (issue 13 §1, §3): the proxy strips every `x-wscluster-*`
//! field a client sends, sets the key it verified and the cluster's proxy secret on every
//! request to a member (both upgrade paths and plain HTTP), follows a rotated secret file
//! without a restart, and serves nothing internal on the public port.

mod support;

use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, connect_async};
use wscluster_ring::contract::{KEY_HEADER, PROXY_SECRET_HEADER, RING_VERSION_HEADER};

/// Fields a hostile client sends, hoping a member trusts them.
const FORGED: [(&str, &str); 4] = [
    ("X-WsCluster-Key", "bob"),
    ("x-wscluster-proxy-secret", "guess"),
    ("X-WSCLUSTER-SENDER", "bob"),
    ("x-wscluster-ring-version", "999"),
];

/// The one value of `name` in `fields` (and that there is exactly one).
fn only<'a>(fields: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let all: Vec<_> = fields.get_all(name).iter().collect();
    assert!(all.len() <= 1, "{name} sent {} times", all.len());
    all.first().and_then(|v| v.to_str().ok())
}

/// Asserts the member saw exactly the proxy's fields: `key`, `secret`, and nothing forged.
fn assert_proxy_fields(fields: &HeaderMap, key: &str, secret: Option<&str>) {
    assert_eq!(only(fields, KEY_HEADER), Some(key), "{fields:?}");
    assert_eq!(only(fields, PROXY_SECRET_HEADER), secret, "{fields:?}");
    assert_ne!(only(fields, RING_VERSION_HEADER), Some("999"));
    assert!(!fields.contains_key("x-wscluster-sender"), "{fields:?}");
}

/// Upgrades to `path` through the proxy with the forged fields; the socket.
async fn forged_upgrade(proxy: &Proxy, path: &str) -> Ws {
    let mut req = proxy.ws_url(path).into_client_request().expect("request");
    for (k, v) in FORGED {
        req.headers_mut().insert(k, v.parse().expect("value"));
    }
    let (ws, _) = connect_async(req).await.expect("upgrade");
    ws
}

/// Writes one raw request on `s` and reads its whole answer (framed by Content-Length),
/// leaving the connection open: the status line and body.
async fn raw_exchange(s: &mut tokio::net::TcpStream, request: &str) -> (String, String) {
    s.write_all(request.as_bytes()).await.expect("write");
    let (head, body) = read_response(s).await;
    (head.lines().next().unwrap_or_default().to_owned(), body)
}

async fn spawn_with_secret(dir: &Path, config: &str, ring: &Path, secret: Option<&Path>) -> Proxy {
    let secret_flag = secret.map(|p| p.display().to_string());
    let extra: Vec<&str> = match &secret_flag {
        Some(p) => vec!["--proxy-secret-file", p],
        None => vec![],
    };
    let proxy = Proxy::spawn_with(dir, config, Ring::File(ring), CLUSTER, &extra).await;
    proxy.wait_ring_version(1).await;
    proxy
}

#[tokio::test]
async fn members_get_the_verified_key_and_the_secret_and_nothing_a_client_forged() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("trust-fields");
        let ring = dir.join("ring.json");
        write_ring(&ring, 1, vec![backend.member()]);
        let secret = dir.join("proxy-secret");
        write_atomically(&secret, "s3cret-one\n");
        let proxy = spawn_with_secret(&dir, "legacySend: true", &ring, Some(&secret)).await;

        // The fast path (a fresh connection's first request is the upgrade).
        let mut alice = forged_upgrade(&proxy, "/connect/alice?since=0").await;
        let (target, fields) = backend
            .requests()
            .pop()
            .expect("the upgrade reached the owner");
        assert_eq!(target, "/connect/alice?since=0");
        assert_proxy_fields(&fields, "alice", Some("s3cret-one"));

        // Plain HTTP (the seed's send), then hyper's upgrade path on the same connection.
        let forged: String = FORGED
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let mut s = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let send = format!("GET /send?userId=caf%C3%A9 HTTP/1.1\r\nhost: x\r\n{forged}\r\n");
        let (status, body) = raw_exchange(&mut s, &send).await;
        assert!(status.contains(" 200 "), "{status}");
        assert_eq!(body, "node-a");
        let (_, fields) = backend
            .requests()
            .pop()
            .expect("the send reached the owner");
        assert_proxy_fields(&fields, "caf%C3%A9", Some("s3cret-one"));
        let mut req = proxy
            .ws_url("/ws?userId=carol")
            .into_client_request()
            .expect("req");
        for (k, v) in FORGED {
            req.headers_mut().insert(k, v.parse().expect("value"));
        }
        let (_carol, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(s))
            .await
            .expect("upgrade after a plain request");
        let (_, fields) = backend
            .requests()
            .pop()
            .expect("the upgrade reached the owner");
        assert_proxy_fields(&fields, "carol", Some("s3cret-one"));

        // Rotation: the file is rewritten; new requests carry the new secret, no restart, and
        // the connection made before it is still spliced.
        write_atomically(&secret, "s3cret-two\ns3cret-one\n");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_ws, _) = connect(&proxy.ws_url("/connect/dave")).await;
            let (_, fields) = backend.requests().pop().expect("upgrade seen");
            if only(&fields, PROXY_SECRET_HEADER) == Some("s3cret-two") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new secret was never sent"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = next_text(&mut alice).await; // the backend's hello
        echo(&mut alice, "still here").await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn without_a_secret_file_the_key_is_still_set_and_forged_fields_still_stripped() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("trust-dev");
        let ring = dir.join("ring.json");
        write_ring(&ring, 1, vec![backend.member()]);
        let proxy = spawn_with_secret(&dir, "", &ring, None).await;
        let _ws = forged_upgrade(&proxy, "/connect/alice").await;
        let (_, fields) = backend
            .requests()
            .pop()
            .expect("the upgrade reached the owner");
        assert_proxy_fields(&fields, "alice", None);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn the_public_port_routes_no_server_call_and_nothing_internal_while_users_carry_on() {
    // Issue 13's table: with `[jwt (from query), path, query userId]`, an end user's token on
    // /send, /broadcast and /metrics reached the node. Now the public port answers them 404
    // itself, and a connected user is not disturbed.
    tokio::time::timeout(TEST_TIMEOUT, async {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("trust-public");
        let ring = dir.join("ring.json");
        write_ring(&ring, 1, vec![backend.member()]);
        let key = b"a-test-secret-of-at-least-32-bytes!!";
        std::fs::write(dir.join("jwt.key"), key).expect("write key");
        let config = format!(
            "keySources:\n  - jwt: {{algorithm: HS256, keyFile: {}, from: query}}\n  - path: \"/connect/{{key}}\"\n  - query: userId\n",
            dir.join("jwt.key").display()
        );
        let proxy = spawn_with_secret(&dir, &config, &ring, None).await;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            + 300;
        let claims = serde_json::json!({"sub": "alice", "exp": exp});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .expect("sign");
        let (mut alice, id) = connect(&proxy.ws_url(&format!("/connect/alice?access_token={token}"))).await;
        assert_eq!(id, "node-a");
        let before = backend.requests().len();
        let body = r#"{"userId":"bob","message":"hi"}"#;
        for (method, path) in [
            (Method::POST, format!("/send?access_token={token}")),
            (Method::GET, format!("/send?userId=bob&message=x&access_token={token}")),
            (Method::POST, format!("/broadcast?access_token={token}")),
            (Method::GET, format!("/metrics?access_token={token}")),
            (Method::GET, format!("/count?access_token={token}")),
            (Method::GET, format!("/users?access_token={token}")),
            (Method::GET, format!("/healthz?access_token={token}")),
            (Method::POST, format!("/api/v1/users/bob/messages?access_token={token}")),
            (Method::POST, "/api/v1/broadcast".to_string()),
            (Method::GET, format!("/connect/alice?access_token={token}")),
        ] {
            let (status, _, answer) = http_call(proxy.addr, method.clone(), &path, &[], body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
        }
        assert_eq!(backend.requests().len(), before, "nothing reached the member");
        echo(&mut alice, "undisturbed").await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn with_legacy_send_a_token_cannot_name_another_user() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("trust-legacy-jwt");
        let ring = dir.join("ring.json");
        write_ring(&ring, 1, vec![backend.member()]);
        let key = b"a-test-secret-of-at-least-32-bytes!!";
        std::fs::write(dir.join("jwt.key"), key).expect("write key");
        let config = format!(
            "legacySend: true\nkeySources:\n  - jwt: {{algorithm: HS256, keyFile: {}, from: query}}\n  - query: userId\n",
            dir.join("jwt.key").display()
        );
        let proxy = spawn_with_secret(&dir, &config, &ring, None).await;
        let claims = serde_json::json!({"sub": "alice", "exp": u64::MAX / 4});
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .expect("sign");
        let (status, body) =
            http_get(proxy.addr, &format!("/send?userId=bob&access_token={token}"), &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(backend.requests().is_empty());
        let (status, body) =
            http_get(proxy.addr, &format!("/send?userId=alice&access_token={token}"), &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "node-a"));
        let (_, fields) = backend.requests().pop().expect("reached");
        assert_proxy_fields(&fields, "alice", None);
    })
    .await
    .expect("test finished in time");
}
