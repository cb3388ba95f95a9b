//! Asks a draining node how many sessions it still holds, so a drain can end before its
//! timeout once the leaving nodes are empty.
//!
//! The reference node answers `GET /count` with `{"server": "<id>", "count": N}`. Any other
//! WebSocket backend may not: every failure (no such endpoint, timeout, bad body) is "unknown",
//! and an unknown member is never treated as empty, so the drain timeout still applies.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one probe may take. Nodes answer `/count` from memory; a second means the node is
/// overloaded or gone, and the drain timeout covers that case anyway.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest `/count` body read.
const MAX_BODY_BYTES: usize = 4096;

/// A boxed future of a session count (`None`: unknown).
pub type CountFuture<'a> = Pin<Box<dyn Future<Output = Option<u64>> + Send + 'a>>;

/// Reads a member's session count.
pub trait ConnectionProbe: Send + Sync {
    /// Sessions held by the member at `address` (`host:port`), or `None` if unknown.
    fn sessions<'a>(&'a self, address: &'a str) -> CountFuture<'a>;
}

/// Never knows: drains always run to their timeout.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProbe;

impl ConnectionProbe for NoProbe {
    fn sessions<'a>(&'a self, _address: &'a str) -> CountFuture<'a> {
        Box::pin(async { None })
    }
}

/// `GET http://<address>/count` over plain HTTP/1.1.
#[derive(Clone)]
pub struct HttpProbe {
    /// A pooled HTTP client.
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HttpProbe {
    fn default() -> Self {
        HttpProbe {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

/// Parses `{"count": N, …}`.
pub fn parse_count(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("count")?.as_u64()
}

/// Where a member's `/count` is served, from its ring address (`host:ws-port`): the node's
/// admin port ([`crate::resources::NODE_ADMIN_PORT`]) once nodes serve one (the same gate as
/// the pods' `--admin-listen`, [`crate::resources::binary_reads`]), else the ring address.
pub fn count_address(member_address: &str) -> String {
    use wscluster_runtime::flags;
    let on_admin = crate::resources::binary_reads(flags::node::ALL, flags::ADMIN_LISTEN);
    match member_address.rsplit_once(':') {
        Some((host, _)) if on_admin => {
            format!("{host}:{}", crate::resources::NODE_ADMIN_PORT)
        }
        _ => member_address.to_string(),
    }
}

impl HttpProbe {
    async fn fetch(&self, address: &str) -> Option<u64> {
        let address = count_address(address);
        let uri: http::Uri = format!("http://{address}/count").parse().ok()?;
        let response = self.client.get(uri).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        parse_count(&body)
    }
}

impl ConnectionProbe for HttpProbe {
    fn sessions<'a>(&'a self, address: &'a str) -> CountFuture<'a> {
        Box::pin(async move {
            tokio::time::timeout(PROBE_TIMEOUT, self.fetch(address))
                .await
                .ok()
                .flatten()
        })
    }
}

/// Whether every address reports zero sessions (`true` for no addresses).
pub async fn all_empty(probe: &dyn ConnectionProbe, addresses: &[String]) -> bool {
    let counts = futures_util::future::join_all(addresses.iter().map(|a| probe.sessions(a))).await;
    counts.iter().all(|c| *c == Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn the_count_is_read_from_the_node_answer() {
        assert_eq!(
            parse_count(br#"{"server":"chat-node-2","count":0}"#),
            Some(0)
        );
        assert_eq!(
            parse_count(br#"{"server":"chat-node-2","count":17}"#),
            Some(17)
        );
        assert_eq!(parse_count(br#"{"count":-1}"#), None);
        assert_eq!(parse_count(b"<html>"), None);
    }

    /// Serves one canned HTTP answer per connection.
    async fn serve(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_http_node_reporting_zero_is_empty_and_anything_else_is_not() {
        let probe = HttpProbe::default();
        let empty = serve("HTTP/1.1 200 OK\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{\"server\":\"n-2\",\"count\":0}").await;
        let busy = serve("HTTP/1.1 200 OK\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{\"server\":\"n-3\",\"count\":5}").await;
        let missing =
            serve("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        tokio::time::timeout(Duration::from_secs(10), async {
            assert_eq!(probe.sessions(&empty).await, Some(0));
            assert_eq!(probe.sessions(&busy).await, Some(5));
            assert_eq!(probe.sessions(&missing).await, None);
            assert!(all_empty(&probe, std::slice::from_ref(&empty)).await);
            assert!(!all_empty(&probe, &[empty.clone(), busy.clone()]).await);
            assert!(!all_empty(&probe, &[missing]).await);
            assert!(all_empty(&probe, &[]).await);
            assert!(!all_empty(&NoProbe, &[empty]).await);
        })
        .await
        .expect("in time");
    }

    #[test]
    fn the_count_is_asked_on_the_admin_port_once_nodes_serve_one() {
        use wscluster_runtime::flags;
        let admin = crate::resources::binary_reads(flags::node::ALL, flags::ADMIN_LISTEN);
        let expected = if admin {
            "10.0.0.7:9090"
        } else {
            "10.0.0.7:8080"
        };
        assert_eq!(count_address("10.0.0.7:8080"), expected);
        let v6 = if admin {
            "[fd00::7]:9090"
        } else {
            "[fd00::7]:8080"
        };
        assert_eq!(count_address("[fd00::7]:8080"), v6);
    }
}
