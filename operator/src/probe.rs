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

/// `GET http://<host>:<admin port>/count` over plain HTTP/1.1.
#[derive(Clone)]
pub struct HttpProbe {
    /// A pooled HTTP client.
    client: Client<HttpConnector, Empty<Bytes>>,
    /// The nodes' admin port.
    admin_port: u16,
}

impl Default for HttpProbe {
    /// Asks on [`crate::resources::NODE_ADMIN_PORT`], where the operator's node pods serve it.
    fn default() -> Self {
        // The port is a Kubernetes `i32` constant well inside `u16`.
        HttpProbe::on_admin_port(crate::resources::NODE_ADMIN_PORT as u16)
    }
}

/// Parses `{"count": N, …}`.
pub fn parse_count(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("count")?.as_u64()
}

/// Where a member's `/count` is served, from its ring address (`host:ws-port`): the same host,
/// the admin port (the public port serves nothing internal).
pub fn count_address(member_address: &str, admin_port: u16) -> String {
    let host = member_address
        .rsplit_once(':')
        .map_or(member_address, |(host, _)| host);
    format!("{host}:{admin_port}")
}

impl HttpProbe {
    /// A probe asking each member's host on `admin_port`.
    pub fn on_admin_port(admin_port: u16) -> HttpProbe {
        HttpProbe {
            client: Client::builder(TokioExecutor::new()).build_http(),
            admin_port,
        }
    }

    async fn fetch(&self, address: &str) -> Option<u64> {
        let address = count_address(address, self.admin_port);
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

    /// Serves one canned HTTP answer per connection on `ip:port` (port 0: any); returns the
    /// member address a ring would hold for it (the port does not matter, the probe asks on
    /// the admin port) and the port bound.
    async fn serve(ip: &str, port: u16, answer: &'static str) -> (String, u16) {
        let listener = TcpListener::bind((ip, port)).await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        (format!("{ip}:8080"), port)
    }

    #[tokio::test]
    async fn an_http_node_reporting_zero_is_empty_and_anything_else_is_not() {
        // Three "nodes" on three loopback addresses, each serving its admin port on one port.
        let (empty, port) = serve("127.0.0.1", 0, "HTTP/1.1 200 OK\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{\"server\":\"n-2\",\"count\":0}").await;
        let (busy, _) = serve("127.0.0.2", port, "HTTP/1.1 200 OK\r\nContent-Length: 26\r\nConnection: close\r\n\r\n{\"server\":\"n-3\",\"count\":5}").await;
        let (missing, _) = serve(
            "127.0.0.3",
            port,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        let probe = HttpProbe::on_admin_port(port);
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
    fn the_count_is_asked_on_the_admin_port_of_the_members_host() {
        assert_eq!(count_address("10.0.0.7:8080", 9090), "10.0.0.7:9090");
        assert_eq!(count_address("[fd00::7]:8080", 9090), "[fd00::7]:9090");
    }
}
