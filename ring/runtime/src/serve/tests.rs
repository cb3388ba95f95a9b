//! [`serve`] over real loopback sockets.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::*;

/// Upper bound of every step that waits for something to happen.
const STEP: Duration = Duration::from_secs(10);

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// A server on 127.0.0.1:0 with `handler`; returns its address and task.
async fn start<H, Fut>(
    options: ServeOptions,
    handler: H,
    shutdown: &CancellationToken,
) -> (SocketAddr, JoinHandle<()>)
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(serve(listener, options, handler, shutdown.clone()));
    (addr, task)
}

async fn hello(_req: Request<Incoming>) -> Resp {
    text(StatusCode::OK, "hello")
}

/// Sends a keep-alive `GET path` and reads one response (its head and a body of at most
/// 64 bytes); returns the whole text.
async fn get(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    tokio::time::timeout(STEP, async {
        loop {
            let n = stream.read(&mut buf[got..]).await.expect("read");
            assert!(n > 0, "closed before a response");
            got += n;
            let text = String::from_utf8_lossy(&buf[..got]);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got >= head_end + 4 + length {
                    return text.into_owned();
                }
            }
        }
    })
    .await
    .expect("a response in time")
}

/// Waits until the peer closes the connection (EOF or reset), reading and dropping anything.
async fn closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(STEP, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
    .expect("the server closed the connection in time");
}

#[tokio::test]
async fn requests_are_answered_on_a_kept_alive_connection() {
    let shutdown = CancellationToken::new();
    let (addr, server) = start(ServeOptions::new("test"), hello, &shutdown).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..2 {
        let resp = get(&mut stream, "/").await;
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(resp.ends_with("hello"), "{resp}");
    }
    shutdown.cancel();
    tokio::time::timeout(STEP, server)
        .await
        .expect("stops in time")
        .expect("no panic");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let shutdown = CancellationToken::new();
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(200),
        ..ServeOptions::new("test")
    };
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let handler = move |_req: Request<Incoming>| {
        let _ = calls_tx.send(());
        async { text(StatusCode::OK, "") }
    };
    let (addr, _server) = start(options, handler, &shutdown).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("write");
    closed(&mut stream).await;
    assert!(
        calls.try_recv().is_err(),
        "the handler never saw the request"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn the_connection_cap_holds_the_next_client_until_one_leaves() {
    let shutdown = CancellationToken::new();
    let options = ServeOptions {
        max_connections: 1,
        ..ServeOptions::new("test")
    };
    let (addr, _server) = start(options, hello, &shutdown).await;
    let mut first = TcpStream::connect(addr).await.expect("connect");
    assert!(get(&mut first, "/").await.starts_with("HTTP/1.1 200"));
    // The second connection completes in the kernel's backlog but is not served.
    let mut second = TcpStream::connect(addr).await.expect("connect");
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond the cap: {early:?}");
    drop(first);
    let resp = read_response(&mut second).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    shutdown.cancel();
}

#[tokio::test]
async fn an_out_of_range_cap_still_serves() {
    for max_connections in [0, usize::MAX] {
        let shutdown = CancellationToken::new();
        let options = ServeOptions {
            max_connections,
            ..ServeOptions::new("test")
        };
        let (addr, _server) = start(options, hello, &shutdown).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert!(get(&mut stream, "/").await.starts_with("HTTP/1.1 200"));
        shutdown.cancel();
    }
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
    let shutdown = CancellationToken::new();
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (release_tx, release) = watch::channel(false);
    let handler = move |req: Request<Incoming>| {
        let entered = entered_tx.clone();
        let mut release = release.clone();
        async move {
            if req.uri().path() == "/slow" {
                let _ = entered.send(());
                let _ = release.wait_for(|r| *r).await;
            }
            text(StatusCode::OK, "done")
        }
    };
    let (addr, server) = start(ServeOptions::new("test"), handler, &shutdown).await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    assert!(get(&mut idle, "/").await.starts_with("HTTP/1.1 200"));
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(STEP, entered.recv())
        .await
        .expect("the slow request arrived");

    shutdown.cancel();
    closed(&mut idle).await;
    assert!(
        !server.is_finished(),
        "serve waits for the request in flight"
    );
    release_tx.send_replace(true);
    let resp = read_response(&mut busy).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("done"),
        "{resp}"
    );
    tokio::time::timeout(STEP, server)
        .await
        .expect("serve returns once the last connection closed")
        .expect("no panic");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn the_grace_period_bounds_a_request_that_never_ends() {
    let shutdown = CancellationToken::new();
    let options = ServeOptions {
        grace: Duration::from_millis(200),
        ..ServeOptions::new("test")
    };
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let handler = move |_req: Request<Incoming>| {
        let _ = entered_tx.send(());
        std::future::pending::<Resp>()
    };
    let (addr, server) = start(options, handler, &shutdown).await;
    let mut stuck = TcpStream::connect(addr).await.expect("connect");
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(STEP, entered.recv())
        .await
        .expect("the request arrived");
    shutdown.cancel();
    tokio::time::timeout(STEP, server)
        .await
        .expect("serve returns after the grace period")
        .expect("no panic");
    closed(&mut stuck).await;
}

#[tokio::test]
async fn an_upgrade_hands_the_connection_to_the_handler() {
    let shutdown = CancellationToken::new();
    let handler = |mut req: Request<Incoming>| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4];
            if io.read_exact(&mut buf).await.is_ok() {
                let _ = io.write_all(&buf).await;
            }
        });
        let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
        resp.headers_mut()
            .insert(http::header::UPGRADE, "echo".parse().expect("value"));
        resp.headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().expect("value"));
        resp
    };
    let (addr, _server) = start(ServeOptions::new("test"), handler, &shutdown).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let head = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&echoed, b"ping");
    shutdown.cancel();
}
