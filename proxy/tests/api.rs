//! The server API port (issue 13 §2) and the retry on 421 (issue 14 §5), through the real
//! proxy binary: API keys (rotation included), routing by the target user, broadcasts to any
//! member, and one retry under the newer ring when a member answers 421.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use wscluster_ring::contract::{KEY_HEADER, PROXY_SECRET_HEADER, RING_VERSION_HEADER};
use wscluster_ring::{Member, Ring as RingOf};

const THREE: [&str; 3] = ["node-a", "node-b", "node-c"];

/// A proxy with the server API on, its keys in `keys` and a proxy secret.
async fn api_proxy(
    dir: &Path,
    config: &str,
    ring: &Path,
    keys: &Path,
) -> (Proxy, std::net::SocketAddr) {
    let secret = dir.join("proxy-secret");
    write_atomically(&secret, "proxy-s3cret\n");
    let (keys, secret) = (keys.display().to_string(), secret.display().to_string());
    let extra = [
        "--api-listen",
        "127.0.0.1:0",
        "--api-keys-file",
        &keys,
        "--proxy-secret-file",
        &secret,
    ];
    let proxy = Proxy::spawn_with(dir, config, Ring::File(ring), CLUSTER, &extra).await;
    let api = proxy.api.expect("the API address is announced");
    (proxy, api)
}

async fn post(api: std::net::SocketAddr, path: &str, key: Option<&str>) -> (StatusCode, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, _, body) =
        http_call(api, Method::POST, path, &headers, r#"{"message":"hi"}"#).await;
    (status, body)
}

/// Waits until a call with `key` gets `wanted` (a rotated keys file is re-read every 5 s).
async fn until_status(api: std::net::SocketAddr, key: &str, wanted: StatusCode) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = post(api, "/api/v1/users/alice/messages", Some(key)).await;
        if status == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never got {wanted}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_server_api_takes_only_api_keys_and_routes_by_the_target_user() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let mut backends = Vec::new();
        for id in THREE {
            backends.push(Backend::start(id).await);
        }
        let dir = temp_dir("api-keys");
        let ring_path = dir.join("ring.json");
        let members = backends.iter().map(Backend::member).collect();
        let ring = RingOf::build(write_ring(&ring_path, 1, members)).expect("ring");
        let keys = dir.join("api-keys");
        write_atomically(&keys, "key-old\n");
        let jwt_key = b"a-test-secret-of-at-least-32-bytes!!";
        std::fs::write(dir.join("jwt.key"), jwt_key).expect("write key");
        let config = format!(
            "keySources:\n  - jwt: {{algorithm: HS256, keyFile: {}}}\n",
            dir.join("jwt.key").display()
        );
        let (proxy, api) = api_proxy(&dir, &config, &ring_path, &keys).await;
        proxy.wait_ring_version(1).await;
        let user_token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "exp": u64::MAX / 4}),
            &EncodingKey::from_secret(jwt_key),
        )
        .expect("sign");

        // Anonymous callers, wrong keys and end-user tokens: 401, and no member sees them.
        for key in [
            None,
            Some("key-ol"),
            Some("KEY-OLD"),
            Some("key-oldx"),
            Some(user_token.as_str()),
        ] {
            let (status, body) = post(api, "/api/v1/users/bob/messages", key).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json");
            assert_eq!(v["error"], "unauthorized");
        }
        assert!(backends.iter().all(|b| b.requests().is_empty()));

        // A key: routed to the target user's owner with the key, the secret, the Authorization.
        for user in ["bob", "a b/é"] {
            let owner = ring.owner(user).expect("owner").id.clone();
            let path = format!(
                "/api/v1/users/{}/messages",
                wscluster_ring::contract::percent_encode(user)
            );
            let (status, body) = post(api, &path, Some("key-old")).await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, owner.as_str()),
                "{user}"
            );
            let backend = backends.iter().find(|b| b.id == owner).expect("owner");
            let (target, fields) = backend.requests().pop().expect("seen");
            assert_eq!(target, path);
            assert_eq!(
                fields[KEY_HEADER],
                wscluster_ring::contract::percent_encode(user)
            );
            assert_eq!(fields[PROXY_SECRET_HEADER], "proxy-s3cret");
            assert_eq!(fields["authorization"], "Bearer key-old");
        }
        let (status, _, body) = http_call(
            api,
            Method::GET,
            "/api/v1/users/bob/presence",
            &[("authorization", "Bearer key-old")],
            "",
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, ring.owner("bob").expect("o").id.as_str())
        );
        let (status, body) = post(api, "/api/v1/broadcast", Some("key-old")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(THREE.contains(&body.as_str()), "{body}");
        for path in [
            "/api/v1/nope",
            "/api/v2/broadcast",
            "/send?userId=bob",
            "/metrics",
            "/api/v1/users//messages",
        ] {
            let (status, body) = post(api, path, Some("key-old")).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        }
        let (status, _) = post(api, "/api/v1/users/a%00b/messages", Some("key-old")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Rotation: old and new both work while both are listed; then the old one is refused.
        write_atomically(&keys, "key-new\nkey-old\n");
        until_status(api, "key-new", StatusCode::OK).await;
        assert_eq!(
            post(api, "/api/v1/users/bob/messages", Some("key-old"))
                .await
                .0,
            StatusCode::OK
        );
        write_atomically(&keys, "key-new\n");
        until_status(api, "key-old", StatusCode::UNAUTHORIZED).await;
        assert_eq!(
            post(api, "/api/v1/users/bob/messages", Some("key-new"))
                .await
                .0,
            StatusCode::OK
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn the_api_refuses_bodies_over_the_limit_and_never_starts_without_keys() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("api-limits");
        let ring_path = dir.join("ring.json");
        write_ring(&ring_path, 1, vec![backend.member()]);
        let keys = dir.join("api-keys");
        write_atomically(&keys, "k\n");
        let (proxy, api) = api_proxy(&dir, "limits: {maxBodyBytes: 100}", &ring_path, &keys).await;
        proxy.wait_ring_version(1).await;
        let big = "x".repeat(500);
        let (status, _, body) = http_call(
            api,
            Method::POST,
            "/api/v1/users/bob/messages",
            &[("authorization", "Bearer k")],
            &big,
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(backend.requests().is_empty());
        assert_eq!(
            post(api, "/api/v1/users/bob/messages", Some("k")).await.0,
            StatusCode::OK
        );

        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wscluster-proxy"))
            .args(["--ring-file", "/nonexistent", "--api-listen", "127.0.0.1:0"])
            .env_remove("WSCLUSTER_API_KEYS_FILE")
            .output()
            .await
            .expect("runs");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--api-keys-file"), "{stderr}");
    })
    .await
    .expect("test finished in time");
}

/// A member that refuses every call with 421, naming ring `names` as its own.
async fn misdirecting(names: u64, calls: Arc<AtomicUsize>) -> FakeNode {
    FakeNode::start(move |_, _| {
        calls.fetch_add(1, Ordering::SeqCst);
        let fields = vec![(RING_VERSION_HEADER.to_string(), names.to_string())];
        (
            StatusCode::MISDIRECTED_REQUEST,
            fields,
            r#"{"error":"not-owner"}"#.into(),
        )
    })
    .await
}

#[tokio::test]
async fn a_421_under_a_newer_ring_is_retried_once_against_that_rings_owner() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut stale = misdirecting(2, Arc::clone(&calls)).await;
        let good = Backend::start("node-good").await;
        let dir = temp_dir("api-421");
        let ring_path = dir.join("ring.json");
        let stale_member = Member::active("node-stale", stale.addr.to_string());
        write_ring(&ring_path, 1, vec![stale_member.clone()]);
        let keys = dir.join("api-keys");
        write_atomically(&keys, "k\n");
        let (proxy, api) = api_proxy(&dir, "", &ring_path, &keys).await;
        proxy.wait_ring_version(1).await;

        // The member names ring 2, which the proxy does not have yet: the proxy waits for it.
        // Ring 2 is written as soon as the member has refused (an event, not a sleep).
        let call =
            tokio::spawn(async move { post(api, "/api/v1/users/bob/messages", Some("k")).await });
        let _ = stale.next_request().await;
        write_ring(&ring_path, 2, vec![good.member()]);
        let (status, body) = call.await.expect("call");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "node-good"));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one refusal, one retry");
        let (_, fields) = good
            .requests()
            .pop()
            .expect("the retry reached the new owner");
        assert_eq!(fields[RING_VERSION_HEADER], "2");

        // A member naming a ring that never comes: one retry at most, then its 421 is passed
        // on within about a second.
        write_ring(&ring_path, 3, vec![stale_member.clone()]);
        proxy.wait_ring_version(3).await;
        let mut never = misdirecting(9, Arc::clone(&calls)).await;
        write_ring(
            &ring_path,
            4,
            vec![Member::active("node-never", never.addr.to_string())],
        );
        proxy.wait_ring_version(4).await;
        let started = tokio::time::Instant::now();
        let (status, _) = post(api, "/api/v1/users/bob/messages", Some("k")).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let _ = never.next_request().await;
        assert!(
            never.requests.try_recv().is_err(),
            "no retry without a newer ring"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_421_when_the_proxy_already_has_a_newer_ring_is_retried_at_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let good = Backend::start("node-good").await;
        let dir = temp_dir("api-421-newer");
        let ring_path = dir.join("ring.json");
        let admin = Arc::new(std::sync::Mutex::new(None::<std::net::SocketAddr>));
        // A member that, before it answers, has the proxy move to ring 2 (without it), then
        // refuses naming the old ring: the proxy's ring is the newer one, so it retries at once.
        let (ring_for_node, good_member, admin_for_node) =
            (ring_path.clone(), good.member(), Arc::clone(&admin));
        let moved = FakeNode::start(move |_, _| {
            write_ring(&ring_for_node, 2, vec![good_member.clone()]);
            let admin = admin_for_node
                .lock()
                .ok()
                .and_then(|a| *a)
                .expect("admin known");
            wait_ring_blocking(admin, 2);
            let fields = vec![(RING_VERSION_HEADER.to_string(), "1".to_string())];
            (StatusCode::MISDIRECTED_REQUEST, fields, String::new())
        })
        .await;
        write_ring(
            &ring_path,
            1,
            vec![Member::active("node-moved", moved.addr.to_string())],
        );
        let keys = dir.join("api-keys");
        write_atomically(&keys, "k\n");
        let (proxy, api) = api_proxy(&dir, "", &ring_path, &keys).await;
        *admin.lock().expect("lock") = Some(proxy.admin);
        proxy.wait_ring_version(1).await;
        let (status, body) = post(api, "/api/v1/users/bob/messages", Some("k")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "node-good"));
    })
    .await
    .expect("test finished in time");
}

/// Polls the proxy's `/readyz` from a blocking context (the fake node's handler) until it
/// reports ring `version`, for at most 10 s.
fn wait_ring_blocking(admin: std::net::SocketAddr, version: u64) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(admin) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.contains(&format!("\"ringVersion\":{version}")) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the proxy never applied ring {version}");
}
