//! JSON over HTTP, the small pieces every JSON API here needs: a response, and a request body
//! read up to a limit and parsed.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

/// A complete response body.
pub type JsonResponse = Response<Full<Bytes>>;

/// `status` with `body` as `application/json`.
pub fn response(status: StatusCode, body: &serde_json::Value) -> JsonResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the limit (answer 413).
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The connection failed while the body was read.
    #[error("the body could not be read")]
    Read(#[source] crate::BoxError),
    /// The body is not the expected JSON (answer 400).
    #[error("the body is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads a whole body of at most `limit_bytes`, refusing a larger one without reading past
/// the limit.
///
/// # Errors
///
/// [`BodyError::TooLarge`] or [`BodyError::Read`].
pub async fn read_limited<B>(body: B, limit_bytes: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<crate::BoxError>,
{
    match Limited::new(body, limit_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge { limit: limit_bytes }),
        Err(e) => Err(BodyError::Read(e)),
    }
}

/// Reads a body of at most `limit_bytes` and parses it as `T`.
///
/// # Errors
///
/// As [`read_limited`], and [`BodyError::Json`].
pub async fn read_json<T, B>(body: B, limit_bytes: usize) -> Result<T, BodyError>
where
    T: DeserializeOwned,
    B: hyper::body::Body,
    B::Error: Into<crate::BoxError>,
{
    let bytes = read_limited(body, limit_bytes).await?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    use super::*;

    #[test]
    fn a_response_carries_status_type_and_body() {
        let resp = response(StatusCode::CONFLICT, &serde_json::json!({"error": "x"}));
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_parsed() {
        let body = Full::new(Bytes::from_static(br#"{"replicas":3}"#));
        let v: serde_json::Value = read_json(body, 64).await.expect("parsed");
        assert_eq!(v["replicas"], 3);
    }

    #[tokio::test]
    async fn an_over_long_body_and_bad_json_are_told_apart() {
        let big = Full::new(Bytes::from(vec![b' '; 65]));
        let err = read_limited(big, 64).await.expect_err("too large");
        assert!(matches!(err, BodyError::TooLarge { limit: 64 }), "{err:?}");
        let bad = Full::new(Bytes::from_static(b"{"));
        let err = read_json::<serde_json::Value, _>(bad, 64)
            .await
            .expect_err("bad json");
        assert!(matches!(err, BodyError::Json(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_failing_body_is_a_read_error() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Err(std::io::Error::other("reset by peer"))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let err = read_limited(body, 64).await.expect_err("read error");
        assert!(matches!(err, BodyError::Read(_)), "{err:?}");
    }
}
