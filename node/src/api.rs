//! The server API on the public port (`/api/v1/...`, [`wscluster_ring::contract::api`]) and
//! the seed-compatible `/send` behind `--legacy-send`: parsing, bounds, and the mapping of each
//! delivery outcome to its answer. Who may call them is decided before, in [`crate::auth`].
//!
//! | call | success | refusals |
//! |---|---|---|
//! | `POST /api/v1/users/{u}/messages` `{"message": …}` | 200 [`SendReceipt`] delivered, 202 stored only | 400 bad input, 413 too large, 421 not the owner (with the ring version header), 503 not stored / overloaded |
//! | `GET /api/v1/users/{u}/presence` | 200 [`Presence`](wscluster_ring::contract::api::Presence) | 503 presence unreadable |
//! | `POST /api/v1/broadcast` `{"message": …}` | 202 [`BroadcastReceipt`](wscluster_ring::contract::api::BroadcastReceipt) | 503 bus unavailable / overloaded |
//! | `GET\|POST /send?userId=…&message=…` (legacy) | as a send | as a send, plus 403 when the user is not the verified key |
//! | `POST /broadcast?message=…` (legacy) | as a broadcast | as a broadcast, plus 403 for a caller with a user key |

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::OwnedSemaphorePermit;
use wscluster_ring::contract::api::{MessageRequest, Route, RouteError, SendReceipt};

use crate::auth::{AuthError, Caller};
use crate::http::{
    ApiError, Edge, Resp, check_owner_routed, check_user, query_param, routed_version, served_key,
};
use crate::state::NodeState;

/// How long a client may take to send a request body once its headers are in (a slow body
/// must not hold a connection and a send permit).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Room in a body beyond the message itself (the JSON envelope, a user id).
const ENVELOPE_BYTES: usize = 1024;

/// A server API call, after its credentials were checked.
pub(crate) async fn server_api(edge: &Arc<Edge>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let route = Route::parse(req.uri().path()).map_err(|e| match e {
        RouteError::Unknown => ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such server API path; see docs/node.md",
        ),
        RouteError::BadUser(_) => ApiError::bad(
            "invalid-user-id",
            "userId is not valid percent-encoded UTF-8",
        ),
    })?;
    match (req.method().clone(), route) {
        (Method::POST, Route::UserMessages(user)) => {
            let user = check_user(Some(user))?;
            let routed = routed_version(&req);
            let body: MessageRequest = read_json(&edge.state, req).await?;
            let message = check_message(&edge.state, Some(body.message))?;
            send(edge, user, message, routed).await
        }
        (Method::GET, Route::UserPresence(user)) => {
            let user = check_user(Some(user))?;
            let presence = edge
                .state
                .presence(&user)
                .await
                .map_err(|e| ApiError::delivery(&edge.state, &e))?;
            Ok(contract_response(StatusCode::OK, &presence))
        }
        (Method::POST, Route::Broadcast) => {
            let body: MessageRequest = read_json(&edge.state, req).await?;
            let message = check_message(&edge.state, Some(body.message))?;
            broadcast(edge, message).await
        }
        (method, route) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed on {}", route.path()),
        )),
    }
}

/// Body of the legacy `POST /send`: the seed's `{"userId": …, "message": …}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LegacyBody {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The seed's `GET|POST /send?userId=…&message=…` (`--legacy-send`): the same answers as the
/// server API's send. The user must be the key the request was verified as, when a proxy
/// verified one, so an end user's token cannot send to someone else.
pub(crate) async fn legacy_send(
    edge: &Arc<Edge>,
    req: Request<Incoming>,
    caller: &Caller,
) -> Result<Resp, ApiError> {
    let routed = routed_version(&req);
    let query = req.uri().query().map(str::to_owned);
    let q_user = query_param(query.as_deref(), "userId")?;
    let q_message = query_param(query.as_deref(), "message")?;
    let body: Option<LegacyBody> = if req.method() == Method::POST {
        read_optional_json(&edge.state, req).await?
    } else {
        None
    };
    let (b_user, b_message) = body.map_or((None, None), |b| (b.user_id, b.message));
    if let (Some(q), Some(b)) = (&q_user, &b_user)
        && q != b
    {
        return Err(ApiError::bad(
            "conflicting-user-id",
            "the query and the body name different users",
        ));
    }
    let user = served_key(caller, q_user.or(b_user))?;
    let message = check_message(&edge.state, q_message.or(b_message))?;
    send(edge, user, message, routed).await
}

/// The seed's `POST /broadcast?message=…` or `{"message": …}` (`--legacy-send`): the same
/// answer as the server API's broadcast, but never for a caller a proxy identified as an end
/// user (403): only a backend that reaches the node without a user key may broadcast.
pub(crate) async fn legacy_broadcast(
    edge: &Arc<Edge>,
    req: Request<Incoming>,
    caller: &Caller,
) -> Result<Resp, ApiError> {
    if let Caller::Proxy { key: Some(_) } | Caller::Direct { asserted: Some(_) } = caller {
        return Err(AuthError::EndUser.into());
    }
    let q_message = query_param(req.uri().query(), "message")?;
    let body: Option<LegacyBody> = read_optional_json(&edge.state, req).await?;
    if body.as_ref().is_some_and(|b| b.user_id.is_some()) {
        return Err(ApiError::bad(
            "unexpected-user-id",
            "a broadcast has no userId",
        ));
    }
    let message = check_message(&edge.state, q_message.or(body.and_then(|b| b.message)))?;
    broadcast(edge, message).await
}

/// Stores and delivers one message to a user this node owns; 200 when a live session got
/// it, 202 when it is stored only.
async fn send(
    edge: &Arc<Edge>,
    user: String,
    message: String,
    routed: Option<u64>,
) -> Result<Resp, ApiError> {
    let state = &edge.state;
    check_owner_routed(state, &user, routed).await?;
    let permit = send_permit(edge)?;
    let receipt: SendReceipt = state
        .spawn_send(user, message, None, permit)
        .await
        .map_err(|e| ApiError::delivery(state, &e))?;
    let status = if receipt.delivered {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(contract_response(status, &receipt))
}

/// Publishes a broadcast; 202 once the bus has it.
async fn broadcast(edge: &Arc<Edge>, message: String) -> Result<Resp, ApiError> {
    let permit = send_permit(edge)?;
    let state = Arc::clone(&edge.state);
    let job = edge.state.tasks.spawn(async move {
        let _permit = permit;
        state.broadcast(message).await
    });
    let receipt = job
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::delivery(&edge.state, &e))?;
    Ok(contract_response(StatusCode::ACCEPTED, &receipt))
}

/// A place under `--max-inflight-sends`, counted in `sends_in_flight` while held.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A place under `--max-inflight-sends`, or 503 `overloaded`.
fn send_permit(edge: &Edge) -> Result<InFlight, ApiError> {
    let permit = Arc::clone(&edge.sends).try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the node is already storing {} sends; retry",
                edge.state.config.max_inflight_sends
            ),
        )
    })?;
    let gauge = edge.state.metrics.sends_in_flight.clone();
    gauge.inc();
    Ok(InFlight {
        _permit: permit,
        gauge,
    })
}

/// A contract type as a JSON answer, serialised straight into the body: through a
/// `serde_json::Value` every field name would be allocated and the map built and walked again,
/// once per send. (They hold only strings, numbers and booleans: serialisation cannot fail.)
fn contract_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    let mut resp = Resp::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The message payload: present, within the frame limit.
fn check_message(state: &NodeState, message: Option<String>) -> Result<String, ApiError> {
    let message = message.ok_or_else(|| ApiError::bad("missing-message", "message is required"))?;
    if message.len() > state.config.max_frame() {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message-too-large",
            format!("message is larger than {} bytes", state.config.max_frame()),
        ));
    }
    Ok(message)
}

/// A JSON body that must be there.
async fn read_json<T: DeserializeOwned>(
    state: &NodeState,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    read_optional_json(state, req)
        .await?
        .ok_or_else(|| ApiError::bad("missing-body", "a JSON body is required"))
}

/// A JSON body (`None` when empty), bounded by `--max-frame-bytes` plus the envelope and by
/// [`BODY_TIMEOUT`].
async fn read_optional_json<T: DeserializeOwned>(
    state: &NodeState,
    req: Request<Incoming>,
) -> Result<Option<T>, ApiError> {
    let limit = state.config.max_frame().saturating_add(ENVELOPE_BYTES);
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit).collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    format!("the body did not arrive within {BODY_TIMEOUT:?}"),
                )
            })?;
    let body = collected
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!("the body is larger than {limit} bytes (or broken)"),
            )
        })?
        .to_bytes();
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        ApiError::bad(
            "invalid-json",
            format!("the body is not the expected JSON: {e}"),
        )
    })
}
