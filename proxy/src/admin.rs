//! The admin listener (`--admin-listen`): `/healthz` (the process runs), `/readyz` (a ring is
//! known and the proxy is not shutting down), `/metrics` (Prometheus text).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wscluster_runtime::serve::{ServeOptions, serve as serve_http};

use crate::server::{Body, json_response};
use crate::state::Shared;

/// How the admin port is served: probes and scrapes, so the shared defaults (1,024 connections,
/// 10 s header-read timeout, 5 s grace).
const SERVE_OPTIONS: ServeOptions = ServeOptions::new("admin");

/// Serves admin requests until `stop` (after the drain, so probes see `/readyz` fail while the
/// proxy drains). `draining` makes `/readyz` answer 503.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let handler = move |req: Request<Incoming>| {
        let response = answer(&req, &shared, draining.is_cancelled());
        async move { response }
    };
    serve_http(listener, SERVE_OPTIONS, handler, stop).await;
}

fn answer(req: &Request<Incoming>, shared: &Shared, draining: bool) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => {
            let routing = shared.routing.load();
            let body = json!({
                "ringKnown": routing.known,
                "ringVersion": routing.ring.version(),
                "draining": draining,
                "connections": shared.registry.len(),
            });
            let status = if routing.known && !draining {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_response(status, &body)
        }
        "/metrics" => {
            let mut resp = Response::new(
                Full::new(Bytes::from(shared.metrics.encode()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not-found"})),
    }
}
