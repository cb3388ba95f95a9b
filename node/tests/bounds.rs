//! The node's bounds on send work, against the real binary: `--max-inflight-sends` answers 503
//! `overloaded` at once instead of queueing (or spawning) without limit, and the place comes
//! back when the work ends. A Redis of the test's own, stopped with SIGSTOP, holds a send.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// `GET path` as text.
async fn http_text(addr: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A private redis-server on a free port, killed when dropped.
struct OwnRedis {
    child: std::process::Child,
    url: String,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (install redis)");
        let redis = OwnRedis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        eventually("the private redis answers", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        redis
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sends_beyond_max_inflight_sends_are_refused_at_once_and_the_place_comes_back() {
    within(STEP * 4, async {
        let redis = OwnRedis::start().await;
        let node = Node::spawn(
            "n-0",
            &["--redis-url", &redis.url, "--max-inflight-sends", "1"],
        )
        .await;
        let (status, _) = node.send("amy", "before").await;
        assert_eq!(status, 202);

        // Redis stops answering: the first send holds the only place while it waits.
        redis.signal("-STOP");
        let holder = {
            let (addr, path) = (
                node.addr.clone(),
                wscluster_ring::contract::api::Route::UserMessages("amy".into()).path(),
            );
            tokio::spawn(async move {
                let auth = format!("Bearer {API_KEY}");
                http_with(
                    &addr,
                    "POST",
                    &path,
                    Some(r#"{"message":"held"}"#),
                    &[("authorization", &auth)],
                )
                .await
            })
        };
        eventually("the held send takes the only place", || async {
            let (_, text) = http_text(&node.admin, "/metrics").await;
            text.lines()
                .any(|l| l == "wscluster_node_sends_in_flight 1")
                .then_some(())
        })
        .await;
        let started = Instant::now();
        let (status, body) = node.send("ben", "second").await;
        let overloaded = started.elapsed();
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("overloaded")),
            "{body}"
        );
        assert!(
            overloaded < Duration::from_secs(1),
            "refused at once, not queued: {overloaded:?}"
        );
        let (status, body) = node
            .http("POST", "/api/v1/broadcast", Some(r#"{"message":"b"}"#))
            .await;
        assert_eq!((status, body["error"].as_str()), (503, Some("overloaded")));

        // Redis back: the held send ends (stored or refused, never a false receipt) and the
        // place is free again.
        redis.signal("-CONT");
        let (status, body) = holder.await.expect("the held send");
        assert!(status == 202 || status == 503, "{status} {body}");
        if status == 503 {
            assert_ne!(body["error"], "overloaded");
        }
        let (status, body) = node.send("ben", "after").await;
        assert_eq!(status, 202, "{body}");
    })
    .await;
}

#[tokio::test]
async fn the_public_port_serves_at_most_max_http_connections_at_once() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    within(STEP * 3, async {
        let node = Node::spawn("n-0", &["--max-http-connections", "1"]).await;
        // One connection holds the only place (it sends nothing yet; the accept queue is
        // first in, first out, so it is taken before the next one).
        let holder = tokio::net::TcpStream::connect(&node.addr).await.expect("connect");
        let mut waiting = tokio::net::TcpStream::connect(&node.addr).await.expect("connect");
        let request = format!(
            "POST /api/v1/users/amy/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-length: 15\r\n\r\n{{\"message\":\"m\"}}"
        );
        waiting.write_all(request.as_bytes()).await.expect("write");
        let mut buf = [0u8; 512];
        let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf)).await;
        assert!(early.is_err(), "a second connection was served beyond the cap");
        // The place comes back when the holder leaves: the waiting request is answered.
        drop(holder);
        let n = tokio::time::timeout(STEP, waiting.read(&mut buf))
            .await
            .expect("answered once the place is free")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 202"), "{}", String::from_utf8_lossy(&buf[..n]));
    })
    .await;
}
