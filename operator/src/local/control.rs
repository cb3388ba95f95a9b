//! The control API and the demo page, on the control port.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the demo page (`/app.js`, `/style.css` beside it) |
//! | `GET /wscluster.js` | the JavaScript client library (`clients/js/src/index.js`, an ES module) the page uses |
//! | `GET /api/state` | ring version, nodes, proxies, drain, ring snapshot and arcs |
//! | `POST /api/scale` `{"replicas":N}` | desired node count, 1 to [`super::MAX_REPLICAS`] (16) |
//! | `POST /api/nodes/{ordinal}/kill` | SIGKILL a node |
//! | `POST /api/nodes/{ordinal}/restart` | start it again (a live one is stopped first) |
//! | `POST /api/proxies/{index}/kill`, `/restart` | the same for proxies |
//! | `POST /api/authority/stop`, `/start` | stop or resume serving the ring stream |
//! | `POST /api/send` `{"userId","message"}` | the server API's send through the first live proxy's API port |
//! | `POST /api/broadcast` `{"message"}` | the server API's broadcast through that proxy (with the in-memory bus: to every node, with the proxy secret) |
//!
//! Writes (every method but GET and HEAD) from a browser page of another origin are refused
//! with 403 `cross-origin`: a request whose `Origin` header is not one of the control page's
//! own origins ([`page_origins`]: the control port and each proxy's client port, on
//! `127.0.0.1`, `localhost` or `[::1]`) never reaches the supervisor, so a web page the user
//! happens to visit cannot scale or kill the local cluster. Requests without `Origin` (curl,
//! scripts) are not browser cross-origin requests and pass.
//!
//! Commands (scale, kill, restart, authority) answer `{"ok": true, "ring": <snapshot>}`, the ring
//! published right after the command. Errors are JSON `{"error": "<code>", "message": "<text>"}`
//! with a 4xx/5xx status.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use wscluster_ring::contract::{MAX_KEY_LEN, PROXY_SECRET_HEADER, api, validate_key};
use wscluster_runtime::json::{self, BodyError};
use wscluster_runtime::serve::{ServeOptions, serve as serve_http};

use super::process::{HttpClient, http_call_with};
use super::supervisor::{ApiError, Command, Request as SupervisorRequest};
use super::view::StateView;

const INDEX_HTML: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const STYLE_CSS: &str = include_str!("../../assets/style.css");
/// The client library, served as is so the page runs the same code as `@wscluster/client`.
const CLIENT_JS: &str = include_str!("../../../clients/js/src/index.js");

/// Largest request body the control API reads.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest message the API forwards (it travels in a query string).
const MAX_MESSAGE_BYTES: usize = 4096;

/// What the control handlers share.
#[derive(Clone)]
pub struct Control {
    /// Commands to the supervisor.
    pub commands: mpsc::Sender<SupervisorRequest>,
    /// The latest rendered state.
    pub view: watch::Receiver<Arc<StateView>>,
    /// For forwarding `/api/send` and `/api/broadcast` to a proxy.
    pub client: HttpClient,
    /// The origins the control page is served from ([`page_origins`]); a write whose
    /// `Origin` is another one is refused.
    pub origins: Arc<Vec<String>>,
    /// What sends and broadcasts present: the server API is the only way in.
    pub credentials: Arc<ServerCredentials>,
}

/// The run's credentials as the control API presents them: an API key to the proxies' server
/// API port and, for the in-memory bus's broadcast to every node, the proxy secret nodes trust.
pub struct ServerCredentials {
    /// A line of the run's API keys file.
    pub api_key: String,
    /// The run's proxy secret.
    pub proxy_secret: String,
}

impl ServerCredentials {
    /// Reads the run's files.
    ///
    /// # Errors
    ///
    /// A file is unreadable or holds no secret.
    pub fn read(
        api_keys: &std::path::Path,
        proxy_secret: &std::path::Path,
    ) -> Result<ServerCredentials, wscluster_runtime::credentials::CredentialError> {
        use wscluster_runtime::credentials::CredentialSet;
        Ok(ServerCredentials {
            api_key: CredentialSet::from_file(api_keys)?.current().to_owned(),
            proxy_secret: CredentialSet::from_file(proxy_secret)?.current().to_owned(),
        })
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.api_key)
    }
}

/// The origins the control page is served from: each of `ports` (the control port and the
/// proxies' client ports, which forward keyless HTTP to it) on the loopback names a browser
/// may use. An explicit list, not a comparison with `Host`: a DNS-rebinding page has a
/// matching `Host` but never one of these origins.
pub fn page_origins(ports: impl IntoIterator<Item = u16>) -> Vec<String> {
    ports
        .into_iter()
        .flat_map(|port| {
            ["127.0.0.1", "localhost", "[::1]"].map(|host| format!("http://{host}:{port}"))
        })
        .collect()
}

/// Whether a request may change anything: reads always may; a write may unless a browser
/// sent it from a page of another origin.
fn same_origin_or_not_a_browser(control: &Control, req: &Request<Incoming>) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return true;
    }
    match req.headers().get(http::header::ORIGIN) {
        None => true,
        Some(origin) => origin
            .to_str()
            .is_ok_and(|o| control.origins.iter().any(|allowed| allowed == o)),
    }
}

type Resp = Response<Full<Bytes>>;

/// How the control port is served: one person's browser and scripts, so the shared defaults
/// (1,024 connections, 10 s header-read timeout, 5 s grace).
const SERVE_OPTIONS: ServeOptions = ServeOptions::new("control");

/// Serves the control API until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Control,
    shutdown: CancellationToken,
) {
    let handler = move |req| {
        let control = control.clone();
        async move { handle(&control, req).await }
    };
    serve_http(listener, SERVE_OPTIONS, handler, shutdown).await;
}

/// A JSON response that browsers do not cache (the state changes all the time).
fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut resp = json::response(status, body);
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error_response(e: &ApiError) -> Resp {
    json_response(e.status, &json!({"error": e.code, "message": e.message}))
}

fn asset(content_type: &'static str, body: &'static str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Routes one request.
pub async fn handle(control: &Control, req: Request<Incoming>) -> Resp {
    if !same_origin_or_not_a_browser(control, &req) {
        return error_response(&ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-origin",
            "writes are accepted only from the control page's own origin",
        ));
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, [""] | ["index.html"]) => Ok(asset("text/html; charset=utf-8", INDEX_HTML)),
        (&Method::GET, ["app.js"]) => Ok(asset("text/javascript; charset=utf-8", APP_JS)),
        (&Method::GET, ["style.css"]) => Ok(asset("text/css; charset=utf-8", STYLE_CSS)),
        (&Method::GET, ["wscluster.js"]) => Ok(asset("text/javascript; charset=utf-8", CLIENT_JS)),
        (&Method::GET, ["api", "state"]) => {
            let view = Arc::clone(&control.view.borrow());
            Ok(json_response(
                StatusCode::OK,
                &serde_json::to_value(&*view).unwrap_or(Value::Null),
            ))
        }
        (&Method::POST, ["api", "scale"]) => scale(control, req).await,
        (&Method::POST, ["api", "nodes", n, action]) => {
            let n = number(n, "node ordinal");
            match (n, *action) {
                (Ok(n), "kill") => command(control, Command::KillNode(n)).await,
                (Ok(n), "restart") => command(control, Command::RestartNode(n)).await,
                (Err(e), _) => Err(e),
                _ => Err(not_found()),
            }
        }
        (&Method::POST, ["api", "proxies", n, action]) => {
            let n = number(n, "proxy index");
            match (n, *action) {
                (Ok(n), "kill") => command(control, Command::KillProxy(n)).await,
                (Ok(n), "restart") => command(control, Command::RestartProxy(n)).await,
                (Err(e), _) => Err(e),
                _ => Err(not_found()),
            }
        }
        (&Method::POST, ["api", "authority", "stop"]) => {
            command(control, Command::StopAuthority).await
        }
        (&Method::POST, ["api", "authority", "start"]) => {
            command(control, Command::StartAuthority).await
        }
        (&Method::POST, ["api", "send"]) => send(control, req).await,
        (&Method::POST, ["api", "broadcast"]) => broadcast(control, req).await,
        (_, ["api", ..])
        | (_, [""] | ["app.js"] | ["style.css"] | ["index.html"] | ["wscluster.js"]) => {
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{method} is not allowed on {path}"),
            ))
        }
        _ => Err(not_found()),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such route; see docs/local.md",
    )
}

fn number(raw: &str, what: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad-number",
            format!("{what} must be a non-negative integer, not {raw:?}"),
        )
    })
}

async fn body_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, ApiError> {
    json::read_json(req.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("the body must be at most {limit} bytes"),
            ),
            BodyError::Read(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "body-unreadable",
                "the body could not be read",
            ),
            BodyError::Json(e) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad-json",
                format!("the body is not the expected JSON: {e}"),
            ),
        })
}

async fn command(control: &Control, command: Command) -> Result<Resp, ApiError> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "local mode is shutting down",
        )
    };
    control
        .commands
        .send((command, tx))
        .await
        .map_err(|_| unavailable())?;
    let ring = rx.await.map_err(|_| unavailable())??;
    Ok(json_response(
        StatusCode::OK,
        &json!({"ok": true, "ring": ring.as_deref()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    replicas: u32,
}

async fn scale(control: &Control, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let body: ScaleBody = body_json(req).await?;
    command(control, Command::Scale(body.replicas)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SendBody {
    user_id: String,
    message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    message: String,
}

fn check_message(message: &str) -> Result<(), ApiError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "message-too-long",
            format!("the message must be at most {MAX_MESSAGE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The server API base URL of the first running proxy.
fn api_url(control: &Control) -> Result<String, ApiError> {
    let view = control.view.borrow();
    view.proxies
        .iter()
        .filter(|p| p.process == "running")
        .find_map(|p| p.api_url.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-proxy",
                "no proxy with a server API port is running; restart one",
            )
        })
}

/// Posts `{"message": …}` to a server API URL with the run's credentials and answers with
/// what it answered.
async fn post_message(
    control: &Control,
    url: &str,
    message: String,
    with_secret: bool,
) -> Result<(StatusCode, Bytes), ApiError> {
    let body = serde_json::to_vec(&api::MessageRequest { message })
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding", e.to_string()))?;
    let bearer = control.credentials.bearer();
    let mut headers = vec![("authorization", bearer.as_str())];
    if with_secret {
        headers.push((
            PROXY_SECRET_HEADER,
            control.credentials.proxy_secret.as_str(),
        ));
    }
    let json = Some(("application/json", Bytes::from(body)));
    http_call_with(&control.client, Method::POST, url, json, &headers)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "proxy-unreachable", e))
}

fn passed_on(status: StatusCode, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `POST /api/send`: the server API's send, through the first running proxy's API port.
async fn send(control: &Control, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let body: SendBody = body_json(req).await?;
    validate_key(&body.user_id).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid-user-id",
            format!("userId is invalid: {e} (1 to {MAX_KEY_LEN} bytes, no control characters)"),
        )
    })?;
    check_message(&body.message)?;
    let path = api::Route::UserMessages(body.user_id).path();
    let url = format!("{}{path}", api_url(control)?);
    let (status, answer) = post_message(control, &url, body.message, false).await?;
    Ok(passed_on(status, answer))
}

/// `POST /api/broadcast`: the server API's broadcast through a proxy, or, with the in-memory
/// bus (each node has its own), to every running node directly.
async fn broadcast(control: &Control, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let body: BroadcastBody = body_json(req).await?;
    check_message(&body.message)?;
    let (in_memory, nodes): (bool, Vec<String>) = {
        let view = control.view.borrow();
        let nodes = view
            .nodes
            .iter()
            .filter(|n| n.process == "running")
            .filter_map(|n| n.address.clone())
            .collect();
        (view.bus == "memory", nodes)
    };
    if !in_memory {
        let url = format!("{}{}", api_url(control)?, api::BROADCAST_PATH);
        let (status, answer) = post_message(control, &url, body.message, false).await?;
        return Ok(passed_on(status, answer));
    }
    let mut accepted = Vec::new();
    for address in nodes {
        let url = format!("http://{address}{}", api::BROADCAST_PATH);
        if let Ok((status, _)) = post_message(control, &url, body.message.clone(), true).await
            && status.is_success()
        {
            accepted.push(address);
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"deliveredVia": "every node (in-memory bus)", "nodes": accepted}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::process::{http_call, http_client};

    /// A control server whose supervisor accepts every command and records it.
    async fn server() -> (String, mpsc::Receiver<Command>, CancellationToken) {
        let (commands, mut requests) = mpsc::channel::<SupervisorRequest>(8);
        let (seen_tx, seen) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some((command, reply)) = requests.recv().await {
                let _ = seen_tx.send(command).await;
                let result = match command {
                    Command::KillNode(7) => Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "no-such-child",
                        "there is no node 7",
                    )),
                    _ => Ok(Some(Arc::new(wscluster_ring::RingSnapshot::new(
                        "local/demo",
                        9,
                        Vec::new(),
                    )))),
                };
                let _ = reply.send(result);
            }
        });
        let (_view_tx, view) = watch::channel(Arc::new(StateView::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        let port = listener.local_addr().expect("address").port();
        let control = Control {
            commands,
            view,
            client: http_client(),
            origins: Arc::new(page_origins([port, 8080])),
            credentials: Arc::new(ServerCredentials {
                api_key: "k3y".into(),
                proxy_secret: "s3cret".into(),
            }),
        };
        tokio::spawn(serve(listener, control, shutdown.clone()));
        (base, seen, shutdown)
    }

    async fn call(method: Method, url: &str, body: &str) -> (StatusCode, Value) {
        let client = http_client();
        let (status, bytes) = http_call(
            &client,
            method,
            url,
            Some(("application/json", Bytes::from(body.to_owned()))),
        )
        .await
        .expect("the control server answers");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    #[tokio::test]
    async fn valid_commands_reach_the_supervisor_and_bad_input_gets_a_clear_error() {
        let (base, mut seen, shutdown) = server().await;
        let (status, body) = call(
            Method::POST,
            &format!("{base}/api/scale"),
            r#"{"replicas":4}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["ring"]["version"], 9,
            "the reply carries the ring: {body}"
        );
        assert!(matches!(seen.recv().await, Some(Command::Scale(4))));
        let (status, _) = call(Method::POST, &format!("{base}/api/nodes/2/kill"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(matches!(seen.recv().await, Some(Command::KillNode(2))));
        let (status, body) = call(Method::POST, &format!("{base}/api/nodes/7/kill"), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "no-such-child");
        assert!(matches!(seen.recv().await, Some(Command::KillNode(7))));

        for (method, path, body, status, code) in [
            (
                Method::POST,
                "/api/scale",
                "{",
                StatusCode::BAD_REQUEST,
                "bad-json",
            ),
            (
                Method::POST,
                "/api/scale",
                r#"{"replica":2}"#,
                StatusCode::BAD_REQUEST,
                "bad-json",
            ),
            (
                Method::POST,
                "/api/scale",
                r#"{"replicas":-1}"#,
                StatusCode::BAD_REQUEST,
                "bad-json",
            ),
            (
                Method::POST,
                "/api/nodes/x/kill",
                "",
                StatusCode::BAD_REQUEST,
                "bad-number",
            ),
            (
                Method::POST,
                "/api/nodes/1/explode",
                "",
                StatusCode::NOT_FOUND,
                "not-found",
            ),
            (
                Method::GET,
                "/api/scale",
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
            ),
            (
                Method::GET,
                "/nowhere",
                "",
                StatusCode::NOT_FOUND,
                "not-found",
            ),
            (
                Method::POST,
                "/api/send",
                r#"{"userId":"","message":"x"}"#,
                StatusCode::BAD_REQUEST,
                "invalid-user-id",
            ),
            (
                Method::POST,
                "/api/send",
                r#"{"userId":"a\nb","message":"x"}"#,
                StatusCode::BAD_REQUEST,
                "invalid-user-id",
            ),
        ] {
            let (got, value) = call(method.clone(), &format!("{base}{path}"), body).await;
            assert_eq!(
                (got, value["error"].as_str()),
                (status, Some(code)),
                "{method} {path} {body}"
            );
        }
        let big = format!(
            r#"{{"userId":"a","message":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let (status, value) = call(Method::POST, &format!("{base}/api/send"), &big).await;
        assert_eq!(
            (status, value["error"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body-too-large"))
        );
        let long = format!(
            r#"{{"userId":"a","message":"{}"}}"#,
            "x".repeat(MAX_MESSAGE_BYTES + 1)
        );
        let (status, value) = call(Method::POST, &format!("{base}/api/send"), &long).await;
        assert_eq!(
            (status, value["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("message-too-long"))
        );
        // With no proxy running, a valid send says so instead of hanging.
        let (status, value) = call(
            Method::POST,
            &format!("{base}/api/send"),
            r#"{"userId":"a","message":"hi"}"#,
        )
        .await;
        assert_eq!(
            (status, value["error"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("no-proxy"))
        );
        // Nothing invalid reached the supervisor.
        assert!(seen.try_recv().is_err());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn the_demo_page_and_its_assets_are_served_from_the_binary() {
        let (base, _seen, shutdown) = server().await;
        let client = http_client();
        for (path, needle) in [
            ("/", "<canvas id=\"ring\""),
            ("/app.js", "function connectUser"),
            ("/wscluster.js", "export class WsClusterClient"),
            ("/style.css", "#log"),
        ] {
            let (status, body) = http_call(&client, Method::GET, &format!("{base}{path}"), None)
                .await
                .expect("answers");
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(
                String::from_utf8_lossy(&body).contains(needle),
                "{path} contains {needle}"
            );
        }
        let (status, body) = http_call(&client, Method::GET, &format!("{base}/api/state"), None)
            .await
            .expect("answers");
        assert_eq!(status, StatusCode::OK);
        let state: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(state.get("ringVersion").is_some());
        shutdown.cancel();
    }

    #[test]
    fn numbers_must_be_plain_non_negative_integers() {
        assert_eq!(number("3", "x").ok(), Some(3));
        assert!(number("-1", "x").is_err());
        assert!(number("1e3", "x").is_err());
        assert!(number("", "x").is_err());
    }

    /// A raw request with an `Origin` header (the shared client sets none).
    async fn call_from(method: Method, url: &str, origin: &str) -> StatusCode {
        let url: http::Uri = url.parse().expect("url");
        let authority = url.authority().expect("authority").to_string();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(url.path())
            .header(http::header::HOST, authority)
            .header(http::header::ORIGIN, origin)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(br#"{"replicas":2}"#)))
            .expect("request");
        sender.send_request(req).await.expect("response").status()
    }

    #[tokio::test]
    async fn a_write_from_another_origin_is_refused_and_never_reaches_the_supervisor() {
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let (base, mut seen, shutdown) = server().await;
            let port = base.rsplit(':').next().expect("port").to_string();
            let scale = format!("{base}/api/scale");
            for origin in [
                "http://evil.example".to_string(),
                format!("http://evil.example:{port}"),
                "null".to_string(),
                format!("https://127.0.0.1:{port}"),
                "http://127.0.0.1:1".to_string(),
            ] {
                assert_eq!(
                    call_from(Method::POST, &scale, &origin).await,
                    StatusCode::FORBIDDEN,
                    "{origin}"
                );
            }
            assert!(seen.try_recv().is_err(), "nothing reached the supervisor");
            // Reads stay open to any origin (the page's state is not a secret).
            assert_eq!(
                call_from(
                    Method::GET,
                    &format!("{base}/api/state"),
                    "http://evil.example"
                )
                .await,
                StatusCode::OK
            );
            // The page's own origins, through the control port or a proxy, may write.
            for origin in [
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
                "http://127.0.0.1:8080".to_string(),
            ] {
                assert_eq!(
                    call_from(Method::POST, &scale, &origin).await,
                    StatusCode::OK
                );
                assert!(matches!(seen.recv().await, Some(Command::Scale(2))));
            }
            shutdown.cancel();
        })
        .await
        .expect("within the limit");
    }
}
