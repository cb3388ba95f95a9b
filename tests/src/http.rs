//! HTTP calls to local mode's control API and the proxies' `/send`, on hyper-util's client.
//!
//! One connection per request (no idle pool): a test kills proxies on purpose, and a pooled
//! connection to a dead proxy would turn the next call into a spurious failure.

use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Longest one request may take, connect to last body byte.
pub const REQUEST_TIMEOUT_SECONDS: u64 = 10;

/// A response, read to its end.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status, which callers check against what the API documents.
    pub status: StatusCode,
    /// The whole body, for JSON answers and error messages.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response {} is not JSON: {}", self.status, self.text()))
    }

    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method` to an `http://` URL with an optional JSON body, within
/// [`REQUEST_TIMEOUT_SECONDS`].
pub async fn request(method: Method, url: &str, json: Option<&Value>) -> anyhow::Result<Response> {
    request_with(method, url, json, &[]).await
}

/// [`request`] with extra header fields (`authorization` for the server API).
pub async fn request_with(
    method: Method,
    url: &str,
    json: Option<&Value>,
    headers: &[(&str, &str)],
) -> anyhow::Result<Response> {
    let what = format!("{method} {url}");
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if json.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let body = json.map(|v| v.to_string()).unwrap_or_default();
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("{what}: not a valid request"))?;
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let call = async {
        let response = client.request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Response { status, body })
    };
    tokio::time::timeout(Duration::from_secs(REQUEST_TIMEOUT_SECONDS), call)
        .await
        .with_context(|| format!("{what}: no answer within {REQUEST_TIMEOUT_SECONDS} s"))?
        .with_context(|| what)
}

/// `GET` a URL and its JSON answer; fails unless 200.
pub async fn get_json(url: &str) -> anyhow::Result<Value> {
    let response = request(Method::GET, url, None).await?;
    anyhow::ensure!(
        response.status == StatusCode::OK,
        "GET {url} answered {}: {}",
        response.status,
        response.text()
    );
    response.json()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-shot server on 127.0.0.1 that answers `raw` to the first request.
    async fn answer_once(raw: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let address = listener.local_addr().expect("has an address");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accepts");
            let mut head = vec![0u8; 4096];
            let _ = stream.read(&mut head).await;
            stream.write_all(raw).await.expect("writes");
        });
        format!("http://{address}/x")
    }

    #[tokio::test]
    async fn responses_with_a_length_or_chunks_read_to_the_same_body() {
        let plain = answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"a\":1}").await;
        assert_eq!(
            get_json(&plain).await.expect("JSON"),
            serde_json::json!({"a": 1})
        );
        let chunked = answer_once(
            b"HTTP/1.1 421 Misdirected Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        )
        .await;
        let r = request(Method::GET, &chunked, None).await.expect("answers");
        assert_eq!((r.status.as_u16(), r.text().as_str()), (421, "hello"));
        let refused =
            answer_once(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy").await;
        let e = get_json(&refused).await.expect_err("not 200");
        assert!(
            e.to_string().contains("503") && e.to_string().contains("busy"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_bad_url_or_a_closed_port_is_an_error_naming_the_call() {
        assert!(request(Method::GET, "not a url", None).await.is_err());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = listener.local_addr().expect("has an address");
        drop(listener);
        let url = format!("http://{address}/");
        let e = request(Method::POST, &url, None)
            .await
            .expect_err("refused");
        assert!(format!("{e:#}").contains(&url), "{e:#}");
    }
}
