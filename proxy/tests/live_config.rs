//! Live configuration (issue 16 §4), through the real proxy binary: the `--config` file is
//! rewritten under a running proxy, and new connections follow the new key sources and
//! per-address limit while a connection spliced before stays open and echoing; a broken
//! rewrite keeps the config in use and is counted.

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

/// The proxy re-reads its config every 5 s (`DEFAULT_RELOAD_INTERVAL`): three changes, each
/// seen within two intervals, on a loaded machine.
const LIVE_CONFIG_TIMEOUT: Duration = Duration::from_secs(120);

const RELOADS: &str = "wscluster_proxy_config_reloads_total";
const RELOAD_ERRORS: &str = "wscluster_proxy_errors_total{kind=\"config-reload\"}";

/// An upgrade through the proxy: the socket, or the refusal's status.
async fn upgrade(proxy: &Proxy, path: &str) -> Result<Ws, StatusCode> {
    match tokio_tungstenite::connect_async(proxy.ws_url(path)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status()),
        Err(e) => panic!("upgrade to {path} failed: {e}"),
    }
}

/// A connection made now reaches its owner and says hello; proves the upgrade was spliced.
async fn open(proxy: &Proxy, path: &str) -> Ws {
    let mut ws = upgrade(proxy, path)
        .await
        .unwrap_or_else(|status| panic!("{path} refused with {status}"));
    let hello = next_text(&mut ws).await;
    assert!(hello.contains("node-a"), "hello from the owner: {hello}");
    ws
}

/// [`open`] under `perIpConnections`: a connection refused a moment ago (400, 429) holds its
/// address's slot until the proxy sees it end, so a 429 is retried until then (bounded by the
/// test's timeout).
async fn open_when_free(proxy: &Proxy, path: &str) -> Ws {
    loop {
        match upgrade(proxy, path).await {
            Ok(mut ws) => {
                let hello = next_text(&mut ws).await;
                assert!(hello.contains("node-a"), "hello from the owner: {hello}");
                return ws;
            }
            Err(StatusCode::TOO_MANY_REQUESTS) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(status) => panic!("{path} refused with {status}"),
        }
    }
}

#[tokio::test]
async fn a_rewritten_config_applies_to_new_connections_and_a_broken_one_is_refused() {
    tokio::time::timeout(LIVE_CONFIG_TIMEOUT, async {
        let first = "keySources: [{path: \"/connect/{key}\"}]\n";
        let behind = BehindProxy::start("live-config", &["node-a"], first, 1).await;
        let proxy = &behind.proxy;
        let config = behind.dir.join("proxy.yaml");
        let mut alice = open(proxy, "/connect/alice").await;
        echo(&mut alice, "before").await;
        assert_eq!(
            upgrade(proxy, "/ws?userId=bob").await.err(),
            Some(StatusCode::BAD_REQUEST),
            "no query source yet"
        );

        // 1. Another key source and a per-address limit, applied without a restart.
        let second = "keySources: [{query: userId}]\nlimits: {perIpConnections: 2}\n";
        write_atomically(&config, second);
        proxy.wait_metric(RELOADS, 1.0).await;
        assert_eq!(
            upgrade(proxy, "/connect/carol").await.err(),
            Some(StatusCode::BAD_REQUEST),
            "the path source is gone for new connections"
        );
        let mut bob = open_when_free(proxy, "/ws?userId=bob").await;
        // alice (opened before the limit existed) and bob hold the address's two slots.
        assert_eq!(
            upgrade(proxy, "/ws?userId=carol").await.err(),
            Some(StatusCode::TOO_MANY_REQUESTS),
            "the new limit counts the connection opened before it"
        );
        echo(&mut alice, "after the reload").await;
        echo(&mut bob, "bob").await;

        // 2. A broken rewrite: counted, and the config in use stays.
        write_atomically(&config, "keySources: []\n");
        proxy.wait_metric(RELOAD_ERRORS, 1.0).await;
        drop(bob);
        // bob's slot is given back when the proxy sees his connection end.
        let mut carol = open_when_free(proxy, "/ws?userId=carol").await;
        echo(&mut carol, "carol").await;
        assert_eq!(
            upgrade(proxy, "/ws?userId=dave").await.err(),
            Some(StatusCode::TOO_MANY_REQUESTS),
            "the limit still holds"
        );
        echo(&mut alice, "after the broken rewrite").await;
        assert_eq!(proxy.metric(RELOADS).await, Some(1.0), "not applied");

        // 3. A valid file again: applied, the error not counted twice.
        write_atomically(&config, "keySources: [{query: userId}]\n");
        proxy.wait_metric(RELOADS, 2.0).await;
        assert_eq!(proxy.metric(RELOAD_ERRORS).await, Some(1.0));
        let mut dave = open(proxy, "/ws?userId=dave").await;
        echo(&mut dave, "no limit now").await;
        echo(&mut alice, "still spliced").await;
    })
    .await
    .expect("test finished in time");
}
