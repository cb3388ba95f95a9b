//! The admin listener (`--admin-listen`): `/healthz` (the process runs), `/readyz` (a ring is
//! known and the proxy is not shutting down), `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::server::{Body, json_response};
use crate::state::Shared;

/// Serves admin requests until `stop`. `draining` makes `/readyz` answer 503.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let draining = draining.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = answer(&req, &shared, draining.is_cancelled());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
    }
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
