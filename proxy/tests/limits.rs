//! Browser hardening and limits per client (issue 13 §5, §6), through the real proxy binary:
//! a foreign Origin is refused, and the connection over the per-address limit from 127.0.0.1
//! is refused while 127.0.0.2 still connects; the upgrade rate per address.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use support::*;
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// An upgrade to `path` from local address `from` with extra fields: the socket, or the
/// refusal's status.
async fn upgrade_from(
    proxy: &Proxy,
    from: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> Result<Ws, StatusCode> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse::<SocketAddr>().expect("addr"))
        .expect("bind");
    let stream = socket.connect(proxy.addr).await.expect("connect");
    let mut req = proxy.ws_url(path).into_client_request().expect("request");
    for (k, v) in fields {
        let name = http::HeaderName::from_bytes(k.as_bytes()).expect("name");
        req.headers_mut().insert(name, v.parse().expect("value"));
    }
    match tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

#[tokio::test]
async fn an_upgrade_from_a_foreign_origin_is_refused_and_allowed_ones_pass() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let config = "allowedOrigins: [\"https://app.example\"]\nkeySources: [{cookie: uid}]";
        let behind = BehindProxy::start("origins", &["node-a"], config, 1).await;
        let proxy = &behind.proxy;
        let cookie = ("cookie", "uid=alice");
        let evil = upgrade_from(
            proxy,
            "127.0.0.1",
            "/ws",
            &[cookie, ("origin", "https://evil.example")],
        )
        .await;
        assert_eq!(evil.err(), Some(StatusCode::FORBIDDEN));
        let ok = upgrade_from(
            proxy,
            "127.0.0.1",
            "/ws",
            &[cookie, ("origin", "https://APP.example")],
        )
        .await;
        assert!(ok.is_ok(), "the allowed origin (any case)");
        let no_origin = upgrade_from(proxy, "127.0.0.1", "/ws", &[cookie]).await;
        assert!(no_origin.is_ok(), "not a browser");
        let refused = proxy
            .metric("wscluster_proxy_errors_total{kind=\"origin-not-allowed\"}")
            .await;
        assert_eq!(refused, Some(1.0));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn a_cookie_source_without_allowed_origins_is_refused_at_start() {
    let dir = temp_dir("cookie-no-origins");
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, "keySources: [{cookie: uid}]").expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wscluster-proxy"))
        .args(["--ring-file", "/nonexistent", "--config"])
        .arg(&config)
        .output();
    let out = tokio::time::timeout(TEST_TIMEOUT, out)
        .await
        .expect("exits in time")
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allowedOrigins"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_connection_over_the_per_address_limit_is_refused_while_another_address_connects() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let behind =
            BehindProxy::start("per-ip", &["node-a"], "limits: {perIpConnections: 2}", 1).await;
        let proxy = &behind.proxy;
        let mut first = upgrade_from(proxy, "127.0.0.1", "/connect/a", &[])
            .await
            .expect("1st");
        let _second = upgrade_from(proxy, "127.0.0.1", "/connect/b", &[])
            .await
            .expect("2nd");
        let third = upgrade_from(proxy, "127.0.0.1", "/connect/c", &[]).await;
        assert_eq!(third.err(), Some(StatusCode::TOO_MANY_REQUESTS));
        let mut other = upgrade_from(proxy, "127.0.0.2", "/connect/d", &[])
            .await
            .expect("another address still connects");
        let _ = next_text(&mut other).await;
        echo(&mut other, "hello from .2").await;
        // The connections already open are not disturbed, and a closed one frees its slot.
        let _ = next_text(&mut first).await;
        echo(&mut first, "still here").await;
        drop(first);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match upgrade_from(proxy, "127.0.0.1", "/connect/e", &[]).await {
                Ok(_) => break,
                Err(status) => assert_eq!(status, StatusCode::TOO_MANY_REQUESTS),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slot never came back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn upgrades_over_the_per_address_rate_get_429() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        // One token a second, three saved up: the fourth upgrade in quick succession has none.
        let config = "limits: {perIpUpgradesPerSecond: 1, perIpBurst: 3}";
        let behind = BehindProxy::start("per-ip-rate", &["node-a"], config, 1).await;
        let proxy = &behind.proxy;
        let mut open = Vec::new();
        for i in 0..3 {
            open.push(
                upgrade_from(proxy, "127.0.0.1", &format!("/connect/u{i}"), &[])
                    .await
                    .expect("burst"),
            );
        }
        let over = upgrade_from(proxy, "127.0.0.1", "/connect/u3", &[]).await;
        assert_eq!(over.err(), Some(StatusCode::TOO_MANY_REQUESTS));
        assert!(
            upgrade_from(proxy, "127.0.0.2", "/connect/u4", &[])
                .await
                .is_ok()
        );
    })
    .await
    .expect("test finished in time");
}
