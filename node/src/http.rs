//! The HTTP API: routing, input validation, and the mapping of every refusal to a status and a
//! JSON body `{"error": "<code>", "message": "<text>"}` — all in this one place.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use wscluster_ring::contract::{
    MAX_KEY_LEN, RING_VERSION_HEADER, api, percent_decode, validate_key,
};

use crate::api::{legacy_broadcast, legacy_send, server_api};
use crate::auth::{AuthError, Caller, Trust};
use crate::ownership::Ownership;
use crate::session::{self, Resume};
use crate::state::NodeState;
use crate::wsio::{LeanIo, WS_READ_BUFFER_BYTES};

/// The response type of every route.
pub type Resp = Response<Full<Bytes>>;

/// A refusal: status, machine-readable code, human text, extra fields.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, also the `errors_total{kind}` label.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// More fields for the body (owner, ringVersion, …).
    pub extra: Option<Value>,
    /// The node's ring version, sent as [`RING_VERSION_HEADER`] (on a 421, the proxy's retry
    /// waits for it).
    pub ring_version: Option<u64>,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(e.status(), e.code(), e.to_string())
    }
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            ring_version: None,
        }
    }

    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503 for a backend (mailbox, presence, bus) that failed; the failure is logged and
    /// counted under the backend's own label too.
    pub(crate) fn unavailable(
        state: &NodeState,
        error: &crate::Error,
        code: &'static str,
        message: &'static str,
    ) -> Self {
        tracing::warn!(%error, code, "backend unavailable");
        state.metrics.error(error.metric_label());
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 503 for a delivery that did not happen (nothing stored or published; retry).
    pub(crate) fn delivery(state: &NodeState, error: &crate::delivery::DeliveryError) -> Self {
        tracing::warn!(%error, "delivery refused");
        let code = error.code();
        state.metrics.error(code);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            "the message was not stored; retry",
        )
    }

    /// The answer: an [`ErrorBody`](wscluster_ring::contract::api::ErrorBody) plus the extra
    /// fields, and the ring version header when known.
    pub(crate) fn into_response(self) -> Resp {
        let mut body = json!({"error": self.code, "message": self.message});
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.extra, &mut body) {
            map.extend(extra);
        }
        let mut resp = json_response(self.status, &body);
        if let Some(version) = self.ring_version {
            resp.headers_mut()
                .insert(RING_VERSION_HEADER, HeaderValue::from(version));
        }
        resp
    }
}

/// A JSON response (the shared [`wscluster_runtime::json::response`]).
pub fn json_response(status: StatusCode, body: &Value) -> Resp {
    wscluster_runtime::json::response(status, body)
}

/// What the public port's routes share beyond the node's state: the secrets it checks and the
/// bound on sends in flight.
#[derive(Debug)]
pub struct Edge {
    /// The node.
    pub state: Arc<NodeState>,
    /// The proxy secret and the API keys ([`crate::auth`]).
    pub trust: Trust,
    /// One permit per send or broadcast being stored and delivered (`--max-inflight-sends`).
    pub sends: Arc<Semaphore>,
}

impl Edge {
    /// The public side of `state`, checking `trust`.
    pub fn new(state: Arc<NodeState>, trust: Trust) -> Edge {
        let permits = usize::try_from(state.config.max_inflight_sends)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .min(Semaphore::MAX_PERMITS);
        Edge {
            state,
            trust,
            sends: Arc::new(Semaphore::new(permits)),
        }
    }
}

/// Routes one request on the public port: WebSocket upgrades, the server API and (with
/// `--legacy-send`) `/send`. Everything internal is on the admin port ([`handle_admin`]).
pub async fn handle(edge: Arc<Edge>, req: Request<Incoming>) -> Resp {
    let result = public(&edge, req).await;
    answer(&edge.state, result)
}

async fn public(edge: &Arc<Edge>, mut req: Request<Incoming>) -> Result<Resp, ApiError> {
    let caller = edge.trust.caller(req.headers())?;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, p) if p == "/connect" || p.starts_with("/connect/") => {
            upgrade(&edge.state, &mut req, &caller).await
        }
        (_, p) if p.starts_with(api::PREFIX) || p == api::PREFIX.trim_end_matches('/') => {
            edge.trust.check_api(&caller, req.headers())?;
            server_api(edge, req).await
        }
        (Method::GET | Method::POST, "/send") if edge.state.config.legacy_send => {
            legacy_send(edge, req, &caller).await
        }
        (Method::POST, "/broadcast") if edge.state.config.legacy_send => {
            legacy_broadcast(edge, req, &caller).await
        }
        (method, p) if p == "/connect" || p.starts_with("/connect/") => {
            Err(not_allowed(&method, &path))
        }
        (method, "/send" | "/broadcast") if edge.state.config.legacy_send => {
            Err(not_allowed(&method, &path))
        }
        _ => Err(not_found()),
    }
}

/// Routes one request on the admin port: `/healthz`, `/readyz`, `/metrics`, `/count`,
/// `/users/{userId}`. Never reachable from the public port.
pub async fn handle_admin(state: Arc<NodeState>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let result = match (method.clone(), path.as_str()) {
        (Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (Method::GET, "/readyz") => Ok(readyz(&state)),
        (Method::GET, "/metrics") => Ok(metrics(&state)),
        (Method::GET, "/count") => Ok(json_response(
            StatusCode::OK,
            &json!({"server": &*state.id, "count": state.registry.count()}),
        )),
        (Method::GET, p) if p.starts_with("/users/") => user(&state, &p["/users/".len()..]).await,
        (_, p) if is_admin_route(p) => Err(not_allowed(&method, &path)),
        _ => Err(not_found()),
    };
    answer(&state, result)
}

/// The response of a route, or its refusal counted and rendered.
fn answer(state: &NodeState, result: Result<Resp, ApiError>) -> Resp {
    match result {
        Ok(resp) => resp,
        Err(e) => {
            state.metrics.error(e.code);
            e.into_response()
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "no such route; see docs/node.md",
    )
}

fn not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not allowed on {path}"),
    )
}

/// Whether `path` is one of the admin port's routes, whatever the method.
fn is_admin_route(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/count") || path.starts_with("/users/")
}

fn readyz(state: &NodeState) -> Resp {
    let draining = state.is_draining();
    let ring = state.ring.ready();
    let body = json!({
        "ready": !draining && ring,
        "draining": draining,
        "ringKnown": ring,
        "ringVersion": state.ring.version(),
        "busConnected": state.bus.connected(),
    });
    let status = if !draining && ring {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

fn metrics(state: &NodeState) -> Resp {
    state.metrics.ring_version.set(state.ring.version() as i64);
    state
        .metrics
        .bus_connected
        .set(i64::from(state.bus.connected()));
    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.encode())));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// The first value of a query parameter, decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(k, true).as_deref() == Ok(name) {
            return percent_decode(v, true).map(Some).map_err(|_| {
                ApiError::bad(
                    "bad-query",
                    format!("query parameter {name} is not valid percent-encoded UTF-8"),
                )
            });
        }
    }
    Ok(None)
}

/// Validates a user id from a request.
pub fn check_user(user: Option<String>) -> Result<String, ApiError> {
    let user = user.ok_or_else(|| ApiError::bad("missing-user-id", "userId is required"))?;
    validate_key(&user).map_err(|e| {
        ApiError::bad(
            "invalid-user-id",
            format!("userId is invalid: {e} (1 to {MAX_KEY_LEN} bytes, no control characters)"),
        )
    })?;
    Ok(user)
}

/// The key a `/connect` request names: the path segment, else `?userId=`, if any.
fn connect_key(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    match req.uri().path().strip_prefix("/connect/") {
        Some("") | None => query_param(req.uri().query(), "userId")?
            .map(|u| check_user(Some(u)))
            .transpose(),
        Some(seg) if seg.contains('/') => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "expected /connect/{userId} (encode a slash in userId as %2F)",
        )),
        Some(seg) => user_from_path(seg).map(Some),
    }
}

/// The key a request is served as: the verified key behind proxies (a different `named` key
/// is refused with 403), else the named one, which must then be present and valid.
pub(crate) fn served_key(caller: &Caller, named: Option<String>) -> Result<String, ApiError> {
    check_user(caller.served_key(named)?)
}

/// A user id given as a path segment (`/connect/{userId}`, `/users/{userId}`), decoded.
pub(crate) fn user_from_path(segment: &str) -> Result<String, ApiError> {
    let user = percent_decode(segment, false).map_err(|_| {
        ApiError::bad(
            "invalid-user-id",
            "userId is not valid percent-encoded UTF-8",
        )
    })?;
    check_user(Some(user))
}

/// How long a request routed under a newer ring than the node's waits for that ring before the
/// node decides ownership: a few ring-stream round trips. Bounded so a client that sends the
/// header itself can hold a request no longer than this.
const RING_CATCH_UP: Duration = Duration::from_secs(2);

/// The ring version the proxy routed this request with, if it said (and said it well).
pub(crate) fn routed_version(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(RING_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// [`check_owner`], but when the node would refuse and the proxy routed under a newer ring than
/// the node has applied, first waits up to [`RING_CATCH_UP`] for that ring.
pub(crate) async fn check_owner_routed(
    state: &NodeState,
    key: &str,
    routed: Option<u64>,
) -> Result<u64, ApiError> {
    match check_owner(state, key) {
        Err(e) if routed.is_some_and(|v| v > state.ring.version()) => {
            let version = routed.unwrap_or_default();
            if state.ring.wait_for_version(version, RING_CATCH_UP).await {
                check_owner(state, key)
            } else {
                Err(e)
            }
        }
        decided => decided,
    }
}

/// Refuses a key this node does not own.
fn check_owner(state: &NodeState, key: &str) -> Result<u64, ApiError> {
    match state.ring.decide(&state.id, key) {
        Ownership::Owned { ring_version } => Ok(ring_version),
        Ownership::NotOwner {
            owner,
            ring_version,
        } => Err(ApiError {
            status: StatusCode::MISDIRECTED_REQUEST,
            code: "not-owner",
            message: format!("{owner} owns this key under ring version {ring_version}"),
            extra: Some(json!({"owner": owner, "ringVersion": ring_version})),
            ring_version: Some(ring_version),
        }),
        Ownership::NoOwner { ring_version } => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "no-owner",
            message: format!("ring version {ring_version} has no active member"),
            extra: Some(json!({"ringVersion": ring_version})),
            ring_version: Some(ring_version),
        }),
        Ownership::Unknown => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ring-unknown",
            "the node has not received a ring yet",
        )),
    }
}

fn header_has_token(req: &Request<Incoming>, name: http::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `GET /connect/{userId}`: checks, answers 101 and spawns the session. The checks run in
/// this order, so a request with several faults gets the first one's refusal.
async fn upgrade(
    state: &Arc<NodeState>,
    req: &mut Request<Incoming>,
    caller: &Caller,
) -> Result<Resp, ApiError> {
    let key = served_key(caller, connect_key(req)?)?;
    if state.is_draining() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the node is shutting down; reconnect",
        ));
    }
    check_owner_routed(state, &key, routed_version(req)).await?;
    let accept = handshake_accept(req)?;
    let query = req.uri().query();
    let resume = Resume::parse(
        query_param(query, "since")?.as_deref(),
        query_param(query, "epoch")?.as_deref(),
    )
    .map_err(|e| ApiError::bad(api::ERROR_BAD_RESUME, e.to_string()))?;
    state.admit(&key).map_err(|refusal| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            api::ERROR_TOO_MANY_SESSIONS,
            refusal.to_string(),
        )
    })?;
    let permit = session_permit(state)?;
    spawn_session(state, hyper::upgrade::on(req), key, resume, permit);
    Ok(switching_protocols(&accept))
}

/// Checks that the request is a WebSocket version 13 handshake (RFC 6455 §4.2.1) and returns
/// the `Sec-WebSocket-Accept` value that answers it.
fn handshake_accept(req: &Request<Incoming>) -> Result<String, ApiError> {
    if !header_has_token(req, UPGRADE, "websocket") || !header_has_token(req, CONNECTION, "upgrade")
    {
        return Err(ApiError::bad(
            "not-a-websocket-upgrade",
            "expected a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        ));
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut e = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported-websocket-version",
            "only WebSocket version 13 is supported (RFC 6455 §4.4)",
        );
        e.extra = Some(json!({"supported": 13}));
        return Err(e);
    }
    req.headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .ok_or_else(|| ApiError::bad("not-a-websocket-upgrade", "Sec-WebSocket-Key is missing"))
}

/// A place under `--max-connections`, held for the session's life.
fn session_permit(state: &NodeState) -> Result<OwnedSemaphorePermit, ApiError> {
    state.conn_limit.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-connections",
            format!(
                "the node holds its maximum of {} connections",
                state.config.max_connections
            ),
        )
    })
}

/// Runs the session once hyper hands over the upgraded connection (after the 101 is sent).
///
/// No span per session: a span lives as long as the session and, with logging on, costs a
/// registry slot and its formatted fields for every idle socket; the session's few log lines
/// name the user themselves.
fn spawn_session(
    state: &Arc<NodeState>,
    on_upgrade: OnUpgrade,
    key: String,
    resume: Resume,
    permit: OwnedSemaphorePermit,
) {
    let task_state = state.clone();
    state.sessions.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let key: Arc<str> = Arc::from(key);
                let Some(ws) = Box::pin(websocket(&task_state, upgraded, &key)).await else {
                    return;
                };
                // Boxed: the session's futures take the socket by value, each would keep a
                // copy of its 300 bytes for the session's life; a box is 8.
                session::run(task_state, Box::new(ws), key, resume, permit).await;
            }
            Err(e) => tracing::debug!(error = %e, user = %key, "upgrade failed"),
        }
    });
}

/// The session's WebSocket over the upgraded connection's own `TcpStream`, taken out of
/// hyper's box. Bytes the client sent after its handshake, which hyper had read already, are
/// copied out, so hyper's read buffer is freed now rather than kept by an idle session.
async fn websocket(
    state: &NodeState,
    upgraded: hyper::upgrade::Upgraded,
    key: &str,
) -> Option<WebSocketStream<LeanIo<TcpStream>>> {
    let frame_limit = state.config.max_frame();
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_frame_size(Some(frame_limit))
        .max_message_size(Some(frame_limit));
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        // serve() always upgrades a TcpStream; anything else is a bug, not a client's fault.
        tracing::error!(user = %key, "upgraded connection is not a TcpStream");
        state.metrics.error("upgrade");
        return None;
    };
    let io = LeanIo::new(parts.io.into_inner());
    let early = parts.read_buf.to_vec();
    drop(parts.read_buf);
    Some(if early.is_empty() {
        WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await
    } else {
        WebSocketStream::from_partially_read(io, early, Role::Server, Some(ws_config)).await
    })
}

/// The 101 answer to a handshake whose accept value is `accept`.
fn switching_protocols(accept: &str) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// `GET /users/{userId}`: presence.
async fn user(state: &NodeState, raw: &str) -> Result<Resp, ApiError> {
    let user = user_from_path(raw)?;
    match state.presence.get(&user).await {
        Ok(Some(entry)) => Ok(json_response(
            StatusCode::OK,
            &json!({
                "userId": user,
                "node": entry.node,
                "ringVersion": entry.ring_version,
                "since": entry.since,
                "connectedHere": state.registry.contains(&user),
                "sessionsHere": state.registry.sessions_of(&user),
            }),
        )),
        Ok(None) => Err(ApiError {
            extra: Some(json!({"userId": user})),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "not-connected",
                "the user is not connected to any node",
            )
        }),
        Err(e) => Err(ApiError::unavailable(
            state,
            &e,
            "presence-unavailable",
            "presence could not be read; retry",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_take_the_first_value_and_validate_user_ids() {
        let q = Some("userId=al%69ce&since=3&userId=bob");
        assert_eq!(
            query_param(q, "userId").expect("ok").as_deref(),
            Some("alice")
        );
        assert_eq!(query_param(q, "missing").expect("ok"), None);
        assert!(check_user(None).is_err());
        assert!(check_user(Some(String::new())).is_err());
        assert!(check_user(Some("a\u{1}b".into())).is_err());
        assert!(check_user(Some("x".repeat(MAX_KEY_LEN + 1))).is_err());
        assert_eq!(check_user(Some("alice".into())).expect("valid"), "alice");
    }
}
