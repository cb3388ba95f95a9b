//! Routing through the real proxy binary: same key → same backend over WebSocket and HTTP,
//! distribution, and every bad input answered without disturbing anything else.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wscluster_ring::{Member, RingSnapshot};

/// The config of a proxy that routes the seed's `/send` (most tests here route plain HTTP
/// through it).
const LEGACY: &str = "legacySend: true";

/// The ids of the three backends most tests route over.
const THREE: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The HTTP answer a WebSocket upgrade to `url` was refused with.
async fn refused_upgrade(url: &str) -> http::Response<Option<Vec<u8>>> {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => *resp,
        Err(other) => panic!("{url}: expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("{url}: expected an HTTP refusal, got an upgrade"),
    }
}

/// Sends a plain GET for `path` on `s` and reads exactly one response, framed by its
/// Content-Length, leaving the connection open: its body.
async fn get_on_kept_alive(s: &mut tokio::net::TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (head, body) = read_response(s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body
}

#[tokio::test]
async fn the_same_key_always_reaches_the_same_backend_over_websocket_and_http() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let behind = BehindProxy::start("same-key", &THREE, LEGACY, 1).await;
        let (proxy, ring) = (&behind.proxy, &behind.ring);
        let mut per_backend: HashMap<String, usize> = HashMap::new();
        for i in 0..60 {
            let key = format!("user-{i}");
            let expected = ring.owner(&key).expect("owner").id.clone();
            let (mut ws, first) = connect(&proxy.ws_url(&format!("/connect/{key}"))).await;
            assert_eq!(first, expected, "{key} over the path");
            echo(&mut ws, "ping").await;
            let (_ws2, second) = connect(&proxy.ws_url(&format!("/ws?userId={key}"))).await;
            assert_eq!(second, expected, "{key} over the query");
            let (status, body) =
                http_get(proxy.addr, &format!("/send?userId={key}&message=hi"), &[]).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, expected, "{key} over HTTP");
            *per_backend.entry(first).or_default() += 1;
        }
        // Distribution: every backend gets a fair share of 60 keys.
        assert_eq!(per_backend.len(), 3, "{per_backend:?}");
        assert!(per_backend.values().all(|&n| n >= 8), "{per_backend:?}");
        let upgrades = proxy.metric("wscluster_proxy_upgrades_total").await;
        assert_eq!(upgrades, Some(120.0));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn an_upgrade_after_a_plain_request_on_the_same_connection_is_routed_too() {
    // A fresh connection's first upgrade takes the proxy's fast path; an upgrade that follows
    // a plain request on a kept-alive connection goes through hyper. Both reach the owner.
    tokio::time::timeout(TEST_TIMEOUT, async {
        let behind = BehindProxy::start("keepalive-upgrade", &THREE, LEGACY, 1).await;
        let (proxy, ring) = (&behind.proxy, &behind.ring);
        for key in ["carol", "dave", "erin"] {
            let expected = ring.owner(key).expect("owner").id.clone();
            let mut s = tokio::net::TcpStream::connect(proxy.addr)
                .await
                .expect("connect");
            let body = get_on_kept_alive(&mut s, &format!("/send?userId={key}")).await;
            assert_eq!(body, expected, "{key} over HTTP");
            let url = format!("ws://{}/ws?userId={key}", proxy.addr);
            let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(s))
                .await
                .expect("upgrade on the kept-alive connection");
            let hello: serde_json::Value =
                serde_json::from_str(&next_text(&mut ws).await).expect("json");
            assert_eq!(hello["server"], expected.as_str(), "{key} over the upgrade");
            ws.send(Message::text("still spliced")).await.expect("send");
        }
        let upgrades = proxy.metric("wscluster_proxy_upgrades_total").await;
        assert_eq!(upgrades, Some(3.0));
    })
    .await
    .expect("test finished in time");
}

/// Upgrades `s` with a hand-written request for `target` (sent as is, fragment and all) and
/// returns the id the backend reports.
async fn upgrade_raw(mut s: tokio::net::TcpStream, target: &str) -> String {
    let request = format!(
        "GET {target} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let head_len = loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_len]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{target}: {head}");
    let rest = got.split_off(head_len);
    let mut ws =
        WebSocketStream::from_partially_read(MaybeTlsStream::Plain(s), rest, Role::Client, None)
            .await;
    let hello: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).expect("json");
    hello["server"].as_str().expect("server id").to_owned()
}

#[tokio::test]
async fn a_fragment_in_the_target_is_not_part_of_the_key_on_either_path() {
    // Clients should not send a fragment, but some do; hyper (and so the node) drops it, and
    // the fast path, which reads the raw head, must cut the target the same way.
    tokio::time::timeout(TEST_TIMEOUT, async {
        let behind = BehindProxy::start("fragment", &THREE, LEGACY, 1).await;
        let (proxy, ring) = (&behind.proxy, &behind.ring);
        // A key whose owner is not that of the key with the fragment glued on, so routing by
        // the whole target would reach the wrong backend.
        let owner = |k: &str| ring.owner(k).expect("owner").id.clone();
        let key = (0..)
            .map(|i| format!("user-{i}"))
            .find(|k| owner(k) != owner(&format!("{k}#frag")))
            .expect("such a key");
        let fresh = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let id = upgrade_raw(fresh, &format!("/connect/{key}#frag")).await;
        assert_eq!(id, owner(&key), "the fast path");
        let mut kept = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let body = get_on_kept_alive(&mut kept, &format!("/send?userId={key}#frag")).await;
        assert_eq!(body, owner(&key), "plain HTTP");
        let id = upgrade_raw(kept, &format!("/ws?userId={key}#frag")).await;
        assert_eq!(id, owner(&key), "hyper's path");
        let upgrades = proxy.metric("wscluster_proxy_upgrades_total").await;
        assert_eq!(upgrades, Some(2.0));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn readiness_waits_for_a_ring_and_requests_before_it_get_503_with_retry_after() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("no-ring");
        let ring_path = dir.join("ring.json");
        let proxy = Proxy::spawn(&dir, LEGACY, support::Ring::File(&ring_path)).await;
        let (status, _) = proxy.admin_get("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = proxy.admin_get("/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, headers, body) = http_get_full(proxy.addr, "/send?userId=alice", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "1");
        assert!(body.contains("no-ring"), "{body}");

        // A ring with only a draining member: known, but nobody owns keys.
        write_ring(&ring_path, 1, vec![backend.member().draining()]);
        proxy.wait_ring_version(1).await;
        let (status, headers, body) = http_get_full(proxy.addr, "/send?userId=alice", &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers["retry-after"], "1");
        assert!(body.contains("no-owner"), "{body}");

        write_ring(&ring_path, 2, vec![backend.member()]);
        proxy.wait_ring_version(2).await;
        let (status, body) = http_get(proxy.addr, "/send?userId=alice", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "node-a"));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_missing_or_invalid_key_is_400_naming_the_expected_sources() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let behind = BehindProxy::start("bad-key", &["node-a"], LEGACY, 1).await;
        let proxy = &behind.proxy;
        let (status, body) = http_get(proxy.addr, "/send?message=hi", &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"], "missing-key");
        assert_eq!(
            v["expected"],
            serde_json::json!(["path /connect/{key}", "query parameter userId"])
        );
        let long = "x".repeat(200);
        for path in ["/connect/a%00b", &format!("/connect/{long}"), "/x?userId="] {
            let resp = refused_upgrade(&proxy.ws_url(path)).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(body.contains("invalid-key"), "{path}: {body}");
        }
        let (status, body) = http_get(proxy.addr, "/send?userId=", &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("invalid-key"), "{body}");
        // A WebSocket upgrade without a key is refused the same way.
        let resp = refused_upgrade(&proxy.ws_url("/elsewhere")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        // Nothing else was disturbed.
        let (_ws, id) = connect(&proxy.ws_url("/connect/alice")).await;
        assert_eq!(id, "node-a");
        // A backend's refusal of the upgrade reaches the client whole, body included.
        let resp = refused_upgrade(&proxy.ws_url("/connect/refuse-me")).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.body().as_deref(), Some(&b"refused by node-a"[..]));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn keyless_plain_http_goes_to_the_fallback_upstream_but_keyless_upgrades_are_still_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let node = Backend::start("node-a").await;
        let site = Backend::start("fallback-site").await;
        let dir = temp_dir("fallback");
        let ring_path = dir.join("ring.json");
        write_ring(&ring_path, 1, vec![node.member()]);
        let upstream = site.addr.to_string();
        let proxy = Proxy::spawn_with(
            &dir,
            LEGACY,
            support::Ring::File(&ring_path),
            support::CLUSTER,
            &["--fallback-upstream", &upstream],
        )
        .await;
        proxy.wait_ring_version(1).await;
        let (status, body) = http_get(proxy.addr, "/", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fallback-site"));
        let (status, body) = http_get(proxy.addr, "/api/state", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fallback-site"));
        // The seed's send still goes to its owner; an invalid key there is still a 400.
        let (status, body) = http_get(proxy.addr, "/send?userId=alice&message=hi", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "node-a"));
        let (status, _) = http_get(proxy.addr, "/send?userId=", &[]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // Other plain HTTP with a key is not for a member: the fallback gets it.
        let (status, body) = http_get(proxy.addr, "/x?userId=alice", &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fallback-site"));
        // Internal paths reach neither a member nor the fallback.
        for path in [
            "/metrics?userId=alice",
            "/api/v1/broadcast",
            "/healthz",
            "/count",
        ] {
            let (status, body) = http_get(proxy.addr, path, &[]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        }
        // An upgrade without a key is refused, never handed to the fallback.
        let resp = refused_upgrade(&proxy.ws_url("/elsewhere")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_fallback_upstream_that_is_not_host_and_port_is_refused_at_startup() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wscluster-proxy"))
        .args([
            "--ring-file",
            "/nonexistent",
            "--fallback-upstream",
            "http://x:1/path",
        ])
        .output();
    let out = tokio::time::timeout(TEST_TIMEOUT, out)
        .await
        .expect("exits in time")
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--fallback-upstream"), "{stderr}");
}

#[tokio::test]
async fn jwt_keys_are_verified_and_a_client_cannot_claim_someone_else_s_key() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let backend = Backend::start("node-a").await;
        let dir = temp_dir("jwt");
        let ring_path = dir.join("ring.json");
        write_ring(&ring_path, 1, vec![backend.member()]);
        let secret = b"a-test-secret-of-at-least-32-bytes!!";
        std::fs::write(dir.join("jwt.key"), secret).expect("write key");
        let config = format!(
            "legacySend: true\nkeySources:\n  - path: \"/connect/{{key}}\"\n  - jwt: {{claim: sub, algorithm: HS256, keyFile: {}, from: query, queryParam: token}}\n",
            dir.join("jwt.key").display()
        );
        let proxy = Proxy::spawn(&dir, &config, support::Ring::File(&ring_path)).await;
        proxy.wait_ring_version(1).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let sign = |claims: serde_json::Value, key: &[u8]| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key))
                .expect("sign")
        };
        let alice = sign(serde_json::json!({"sub": "alice", "exp": now + 300}), secret);
        let (_ws, id) = connect(&proxy.ws_url(&format!("/connect/alice?token={alice}"))).await;
        assert_eq!(id, "node-a");
        let (status, _) = http_get(proxy.addr, &format!("/send?token={alice}"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        let resp = refused_upgrade(&proxy.ws_url(&format!("/connect/bob?token={alice}"))).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let forged = sign(serde_json::json!({"sub": "alice", "exp": now + 300}), b"another-secret-another-secret-xx");
        let expired = sign(serde_json::json!({"sub": "alice", "exp": now - 300}), secret);
        for token in [None, Some(forged), Some(expired), Some("garbage".to_string())] {
            let path = match &token {
                Some(t) => format!("/connect/alice?token={t}"),
                None => "/connect/alice".to_string(),
            };
            let resp = refused_upgrade(&proxy.ws_url(&path)).await;
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{token:?}: {body}");
            assert!(body.contains("unauthorized"), "{body}");
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn an_unreachable_owner_is_a_quick_502_never_a_hang() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // A port with nothing listening: bind, note it, close.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let dir = temp_dir("unreachable");
        let ring_path = dir.join("ring.json");
        write_ring(
            &ring_path,
            1,
            vec![Member::active("gone", closed.to_string())],
        );
        let proxy = Proxy::spawn(
            &dir,
            "legacySend: true\nlimits: {connectTimeoutMs: 500}",
            support::Ring::File(&ring_path),
        )
        .await;
        proxy.wait_ring_version(1).await;
        let started = Instant::now();
        let (status, body) = http_get(proxy.addr, "/send?userId=alice", &[]).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains("upstream-unreachable"), "{body}");
        let resp = refused_upgrade(&proxy.ws_url("/connect/alice")).await;
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn oversized_headers_get_431_and_a_slow_client_is_cut_off() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let limits = "legacySend: true\nlimits: {maxHeaderBytes: 8192, headerReadTimeoutMs: 500}";
        let behind = BehindProxy::start("limits", &["node-a"], limits, 1).await;
        let proxy = &behind.proxy;
        let big = "y".repeat(20_000);
        let mut s = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        s.write_all(
            format!("GET /send?userId=a HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

        // Slowloris: half a request line, then silence. The proxy closes within the timeout.
        let mut slow = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        slow.write_all(b"GET /send?user").await.expect("write");
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest))
            .await
            .expect("proxy closed the slow connection");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Others are served meanwhile.
        let (status, _) = http_get(proxy.addr, "/send?userId=a", &[]).await;
        assert_eq!(status, StatusCode::OK);
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_frames_over_the_limit_close_with_1009() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let limits = "limits: {maxConnections: 2, maxFrameBytes: 1000}";
        let behind = BehindProxy::start("conn-limit", &["node-a"], limits, 1).await;
        let proxy = &behind.proxy;
        let (mut a, _) = connect(&proxy.ws_url("/connect/a")).await;
        let (_b, _) = connect(&proxy.ws_url("/connect/b")).await;
        assert!(
            tokio_tungstenite::connect_async(proxy.ws_url("/connect/c"))
                .await
                .is_err()
        );
        let refused = proxy
            .metric("wscluster_proxy_errors_total{kind=\"connection-limit\"}")
            .await;
        assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
        // A frame over maxFrameBytes from the client: closed with 1009.
        echo(&mut a, "small is fine").await;
        a.send(Message::text("z".repeat(5_000)))
            .await
            .expect("send");
        let ending = read_ending(&mut a, Duration::from_secs(5)).await;
        assert_eq!(ending.code, Some(1009));
        assert!(ending.reset.is_none());
        // Its slot is free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok((mut ws, _)) =
                tokio_tungstenite::connect_async(proxy.ws_url("/connect/c")).await
            {
                let _ = next_text(&mut ws).await;
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_stale_or_foreign_ring_is_ignored_and_routing_continues() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let BehindProxy {
            backends,
            dir,
            ring_path,
            proxy,
            ..
        } = BehindProxy::start("stale", &THREE, "", 5).await;
        let (mut ws, _) = connect(&proxy.ws_url("/connect/alice")).await;
        // An older ring with a single member would move most keys: it must be ignored.
        write_ring(&ring_path, 3, vec![backends[0].member()]);
        // Another cluster's ring, newer: ignored too.
        let foreign = RingSnapshot::new("other/cluster", 9, vec![backends[1].member()]);
        std::fs::write(dir.join("foreign.tmp"), foreign.to_json()).expect("write");
        // Then a newer valid ring with the same members, which proves the watcher read past
        // the ignored ones.
        tokio::time::sleep(Duration::from_millis(600)).await;
        std::fs::rename(dir.join("foreign.tmp"), &ring_path).expect("rename");
        tokio::time::sleep(Duration::from_millis(600)).await;
        write_ring(
            &ring_path,
            6,
            backends.iter().map(Backend::member).collect(),
        );
        proxy.wait_ring_version(6).await;
        echo(&mut ws, "still here").await;
        let resets = proxy.metric("wscluster_proxy_resets_total").await;
        assert_eq!(resets, None, "no reset happened");
    })
    .await
    .expect("test finished in time");
}
