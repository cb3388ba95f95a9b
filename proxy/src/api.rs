//! The server API port (`--api-listen`): calls from a user's own backends to send to a user,
//! broadcast and look up presence ([`wscluster_ring::contract::api::Route`]), apart from the
//! client port.
//!
//! Every call needs `Authorization: Bearer <API key>` with a key from `--api-keys-file`
//! (several at once for rotation, compared in constant time): anything else is 401. Only
//! [`Route`] paths are served (404 otherwise). A user's call goes to the owner of the *target*
//! user; a broadcast to any active member. The body is read whole (at most
//! `limits.maxBodyBytes`, within `limits.bodyTimeoutMs`) and forwarded with the proxy's own
//! fields ([`ProxyFields`]: the target user as the key, the proxy secret, the ring version)
//! and the `Authorization` field unchanged, so the member checks the API key too.
//!
//! A member that answers 421 (it does not own the user under its ring) with a
//! [`RING_VERSION_HEADER`] newer than the ring the call was routed with is retried once: at
//! once when the proxy already has a newer ring, else after waiting up to
//! [`RING_WAIT_ON_421`] for that ring. So a send never fails because two rings are
//! momentarily apart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use wscluster_ring::KeyHash;
use wscluster_ring::contract::api::{ErrorBody, Route, RouteError};
use wscluster_ring::contract::{RING_VERSION_HEADER, validate_key};
use wscluster_runtime::credentials::{CredentialSet, WatchedCredentials, bearer};
use wscluster_runtime::serve::{ServeOptions, serve as serve_http};

use crate::server::{Body, Failure, set_proxy_fields, strip_hop_by_hop};
use crate::state::{Routing, Shared};
use crate::upstream::ProxyFields;

/// How long a call refused with 421 under a newer ring waits for the proxy to have that ring
/// before its one retry. Rings reach every proxy and node within milliseconds; a second
/// covers a slow ring stream without holding a caller long.
pub const RING_WAIT_ON_421: Duration = Duration::from_secs(1);

/// The client calls are forwarded with: pooled per member, bodies held whole.
type ApiClient = Client<HttpConnector, Full<Bytes>>;

/// The server API: what its handler needs.
#[derive(Debug)]
pub struct Api {
    /// What every task shares (routing, config, the proxy secret, metrics).
    shared: Arc<Shared>,
    /// The API keys, followed as their file changes.
    keys: WatchedCredentials,
    /// The forwarding client.
    client: ApiClient,
}

/// The member a call goes to, under one ring.
struct Picked {
    /// The routing table it was picked from (its ring version is the one routed with).
    routing: Arc<Routing>,
    /// The member's index in `routing.members`.
    index: usize,
}

impl Api {
    /// The server API over `shared`'s routing, checking callers against `keys`.
    pub fn new(shared: Arc<Shared>, keys: WatchedCredentials) -> Api {
        let connector = crate::upstream::http_connector(
            shared.start_limits.connect_timeout(),
            shared.upstream_source,
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Api {
            shared,
            keys,
            client,
        }
    }

    /// Serves `listener` until `stop`, with the header-read timeout of `limits` and the
    /// shared connection cap.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        let options = ServeOptions {
            header_read_timeout: self.shared.start_limits.header_read_timeout(),
            ..ServeOptions::new("api")
        };
        let api = Arc::new(self);
        let handler = move |req: Request<Incoming>| {
            let api = Arc::clone(&api);
            async move { api.answer(req).await }
        };
        serve_http(listener, options, handler, stop).await;
    }

    /// One call: authenticated, parsed, its body read, forwarded (and retried once on 421).
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let presented = bearer(req.headers().get(header::AUTHORIZATION));
        if !presented.is_some_and(|key| self.keys.matches(key.as_bytes())) {
            self.shared.metrics.error("api-unauthorized");
            return unauthorized();
        }
        let route = match Route::parse(req.uri().path()) {
            Ok(route) => route,
            Err(RouteError::Unknown) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "no such server API path",
                );
            }
            Err(e @ RouteError::BadUser(_)) => {
                return error(StatusCode::BAD_REQUEST, "invalid-key", &e.to_string());
            }
        };
        if let Some(Err(e)) = route.user().map(validate_key) {
            let message = format!("the user id in the path: {e}");
            return error(StatusCode::BAD_REQUEST, "invalid-key", &message);
        }
        let (parts, body) = req.into_parts();
        let body = match self.read_body(body).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        self.call(&route, &parts, body).await
    }

    /// The whole body, within `maxBodyBytes` (413) and `bodyTimeoutMs` (408).
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Response<Body>> {
        let limits = self.shared.config().limits;
        let read = Limited::new(body, limits.max_body_bytes).collect();
        match tokio::time::timeout(limits.body_timeout(), read).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                self.shared.metrics.error("body-too-large");
                let message = format!("the body is over {} bytes", limits.max_body_bytes);
                Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    &message,
                ))
            }
            Ok(Err(_)) => Err(error(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "the body could not be read",
            )),
            Err(_) => {
                self.shared.metrics.error("body-timeout");
                let message = format!("the body did not arrive within {:?}", limits.body_timeout());
                Err(error(StatusCode::REQUEST_TIMEOUT, "body-timeout", &message))
            }
        }
    }

    /// Forwards a call to its member; on a 421 under a newer ring, once more to the member
    /// of that ring.
    async fn call(
        &self,
        route: &Route,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Response<Body> {
        let first = match self.pick(route) {
            Ok(picked) => picked,
            Err(failure) => return failure.reply(&self.shared, None).into_response(),
        };
        let answer = self.send(&first, route, parts, body.clone()).await;
        if answer.status() != StatusCode::MISDIRECTED_REQUEST {
            return answer;
        }
        let routed = first.routing.ring.version();
        if !self.newer_ring(routed, answer.headers()).await {
            return answer;
        }
        match self.pick(route) {
            Ok(second) => {
                debug!(
                    routed,
                    now = second.routing.ring.version(),
                    "retrying a call refused with 421"
                );
                self.send(&second, route, parts, body).await
            }
            Err(_) => answer,
        }
    }

    /// Whether the proxy has (or gets within [`RING_WAIT_ON_421`]) a ring newer than
    /// `routed`: at once when it has one already, else when the member's answer names a newer
    /// ring and that ring arrives in time.
    async fn newer_ring(&self, routed: u64, answer: &HeaderMap) -> bool {
        let current = || self.shared.routing.load().ring.version();
        if current() > routed {
            return true;
        }
        let wanted = answer
            .get(RING_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let Some(wanted) = wanted.filter(|&w| w > routed) else {
            return false;
        };
        let mut applied = self.shared.ring_applied.subscribe();
        let _ = tokio::time::timeout(RING_WAIT_ON_421, applied.wait_for(|&v| v >= wanted)).await;
        current() > routed
    }

    /// The member for a call under the ring in use: the target user's owner, or for a
    /// broadcast any active member (the owner of a random hash, so broadcasts spread).
    fn pick(&self, route: &Route) -> Result<Picked, Failure> {
        let routing = self.shared.routing.load_full();
        if !routing.known {
            return Err(Failure::NoRing);
        }
        let hash = match route.user() {
            Some(user) => KeyHash::of(user),
            None => KeyHash(rand::random()),
        };
        let index = routing
            .ring
            .owner_index(hash)
            .ok()
            .filter(|&i| i < routing.members.len())
            .ok_or(Failure::NoOwner)?;
        Ok(Picked { routing, index })
    }

    /// Sends the call to `to` and passes its answer on (hop-by-hop fields removed).
    async fn send(
        &self,
        to: &Picked,
        route: &Route,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Response<Body> {
        let shared = &self.shared;
        let member = &to.routing.members[to.index];
        let failed = |f: Failure| f.reply(shared, Some(&member.id)).into_response();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("http://{}{path}", member.address).parse::<http::Uri>() else {
            return failed(Failure::UpstreamUnreachable);
        };
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        let secret = shared.proxy_secret();
        let own = ProxyFields {
            key: route.user(),
            secret: secret.as_deref().map(CredentialSet::current),
            ring_version: to.routing.ring.version(),
        };
        set_proxy_fields(&mut headers, Some(own));
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        shared.metrics.http_requests.inc();
        match self.client.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed_unsync())
            }
            Err(e) if e.is_connect() => {
                debug!(error = %e, member = %member.id, "member unreachable");
                failed(Failure::UpstreamUnreachable)
            }
            Err(e) => {
                debug!(error = %e, member = %member.id, "forwarding failed");
                failed(Failure::UpstreamError)
            }
        }
    }
}

/// An [`ErrorBody`] answer.
fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = ErrorBody {
        error: code.to_owned(),
        message: message.to_owned(),
    };
    let text = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The 401 for a missing or wrong API key (the same whichever it was).
fn unauthorized() -> Response<Body> {
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the server API needs Authorization: Bearer <API key>",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}
