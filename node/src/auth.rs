//! Who a public request comes from, and which key it may be served as: the node's trust rules,
//! as pure functions of the configured secrets and the request's headers (no I/O), so every
//! rule is unit-tested here and [`crate::http`] only maps the outcome to an answer.
//!
//! * **Behind proxies** (`--proxy-secret-file`): every public request must carry
//!   [`PROXY_SECRET_HEADER`] with one of the cluster's proxy secrets (compared in constant time,
//!   several valid during a rotation) or it is refused with 401. The key served is exactly the
//!   one the proxy verified, [`KEY_HEADER`]; a path, query or body key that differs is refused
//!   with 403.
//! * **Direct** (no secret configured, development): the key comes from the path or query. A
//!   client could set any `x-wscluster-*` header itself, so none grants anything: the proxy
//!   secret header is refused (400: the node cannot check it), [`KEY_HEADER`] (which a
//!   development proxy without a secret still sets) may only *narrow* — a path key that
//!   differs is refused with 403 — and [`RING_VERSION_HEADER`] only bounds a short wait. Any
//!   other `x-wscluster-*` header is refused (400).
//! * **Server API** (`--api-keys-file`): `Authorization: Bearer <api key>`, compared in
//!   constant time against every current key (rotation: old and new are both valid until the
//!   file drops the old one). Anonymous callers get 401; a request a proxy identified as an end
//!   user that does not carry an API key gets 403. Without the file the API is off (404).
//!
//! Secrets are never logged; errors name what was missing, never what was presented.

use std::path::Path;
use std::time::Duration;

use http::HeaderMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wscluster_ring::contract::{
    INTERNAL_HEADER_PREFIX, KEY_HEADER, PROXY_SECRET_HEADER, RING_VERSION_HEADER, percent_decode,
    validate_key,
};
use wscluster_runtime::credentials::{
    CredentialError, DEFAULT_RELOAD_INTERVAL, WatchedCredentials, bearer,
};

/// The secrets the node checks, each re-read when its file changes.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// The cluster's proxy secret(s); `None` in direct mode.
    pub proxy_secret: Option<WatchedCredentials>,
    /// The server API's keys; `None` when the API is off.
    pub api_keys: Option<WatchedCredentials>,
}

/// Why a request is refused before anything else looks at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Behind proxies, the request lacks the proxy secret or carries a wrong one (401).
    #[error("only a proxy of this cluster may call this node")]
    NotFromProxy,
    /// In direct mode, a request carries an `x-wscluster-*` header the node cannot trust (400).
    #[error(
        "header {0} is set only by a proxy with the cluster's secret, which this node does not have"
    )]
    InternalHeader(String),
    /// The proxy's key header is not a valid, percent-encoded key (400).
    #[error("the key header is not a valid key")]
    BadKeyHeader,
    /// Behind proxies, a request to be served as a key arrived without the key header (400).
    #[error("the proxy sent no verified key")]
    NoKeyHeader,
    /// The request names a key other than the one verified (403).
    #[error("the request names another user than the one it authenticated as")]
    KeyMismatch,
    /// The server API is not configured (404).
    #[error("server API disabled")]
    ApiDisabled,
    /// A server API call without a valid API key (401).
    #[error("a server API key is required (Authorization: Bearer <api key>)")]
    NoApiKey,
    /// A server API call from an end user (a proxy verified a user key) without an API key (403).
    #[error("end-user credentials cannot call the server API")]
    EndUser,
}

impl AuthError {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            AuthError::NotFromProxy | AuthError::NoApiKey => S::UNAUTHORIZED,
            AuthError::InternalHeader(_) | AuthError::BadKeyHeader | AuthError::NoKeyHeader => {
                S::BAD_REQUEST
            }
            AuthError::KeyMismatch | AuthError::EndUser => S::FORBIDDEN,
            AuthError::ApiDisabled => S::NOT_FOUND,
        }
    }

    /// The stable code of the refusal (also the `errors_total{kind}` label).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::NotFromProxy | AuthError::NoApiKey => "unauthorized",
            AuthError::InternalHeader(_) => "internal-header",
            AuthError::BadKeyHeader => "invalid-key-header",
            AuthError::NoKeyHeader => "missing-key-header",
            AuthError::KeyMismatch => "key-mismatch",
            AuthError::EndUser => "forbidden",
            AuthError::ApiDisabled => "api-disabled",
        }
    }
}

/// Who sent a public request, as far as the node can tell ([`Trust::caller`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A proxy that presented the cluster's secret; `key` is the key it verified, if it sent
    /// one (it does on every request it routed by a client's key).
    Proxy {
        /// The verified key ([`KEY_HEADER`], decoded and valid).
        key: Option<String>,
    },
    /// No proxy secret is configured. `asserted` is a [`KEY_HEADER`] from an unverifiable
    /// sender: it may narrow what is served, never widen it.
    Direct {
        /// The untrusted key header, decoded and valid.
        asserted: Option<String>,
    },
}

impl Caller {
    /// The key a request is served as: the verified key behind proxies, else the key the
    /// request names. `named` is the path, query or body key, if the request names one.
    ///
    /// # Errors
    ///
    /// [`AuthError::KeyMismatch`] when `named` differs from the proxy's key (or, direct, from
    /// an asserted one); [`AuthError::NoKeyHeader`] behind proxies without a key; `Ok(None)`
    /// when nothing names a key (the caller decides whether that is an error).
    pub fn served_key(&self, named: Option<String>) -> Result<Option<String>, AuthError> {
        let (verified, required) = match self {
            Caller::Proxy { key } => (key, true),
            Caller::Direct { asserted } => (asserted, false),
        };
        match (verified, named) {
            (Some(v), Some(n)) if *v != n => Err(AuthError::KeyMismatch),
            (Some(v), _) => Ok(Some(v.clone())),
            (None, _) if required => Err(AuthError::NoKeyHeader),
            (None, named) => Ok(named),
        }
    }

    /// Whether a proxy identified the caller as an end user.
    fn is_end_user(&self) -> bool {
        matches!(self, Caller::Proxy { key: Some(_) })
    }
}

impl Trust {
    /// The secrets the configuration names, read once (a process must not start without the
    /// secret it was told to use).
    ///
    /// # Errors
    ///
    /// A named file that cannot be read or holds no valid secret.
    pub fn open(
        proxy_secret_file: Option<&Path>,
        api_keys_file: Option<&Path>,
    ) -> Result<Trust, CredentialError> {
        Ok(Trust {
            proxy_secret: proxy_secret_file
                .map(WatchedCredentials::open)
                .transpose()?,
            api_keys: api_keys_file.map(WatchedCredentials::open).transpose()?,
        })
    }

    /// Re-reads each file every `interval` (default [`DEFAULT_RELOAD_INTERVAL`]) on `tasks`
    /// until `shutdown`, so rotating a secret needs no restart.
    pub fn watch(
        &self,
        interval: Option<Duration>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let interval = interval.unwrap_or(DEFAULT_RELOAD_INTERVAL);
        for watched in [&self.proxy_secret, &self.api_keys].into_iter().flatten() {
            tasks.spawn(watched.clone().watch(interval, shutdown.clone()));
        }
    }

    /// Decides who sent a public request, from its headers alone; see the module docs.
    ///
    /// # Errors
    ///
    /// A missing or wrong proxy secret behind proxies; in direct mode, an internal header the
    /// node cannot trust; a key header that is not a valid key.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        match &self.proxy_secret {
            Some(secret) => {
                let presented = headers.get(PROXY_SECRET_HEADER).map(|v| v.as_bytes());
                if !presented.is_some_and(|p| secret.matches(p)) {
                    return Err(AuthError::NotFromProxy);
                }
                Ok(Caller::Proxy {
                    key: key_header(headers)?,
                })
            }
            None => {
                if let Some(name) = headers.keys().map(http::HeaderName::as_str).find(|n| {
                    n.starts_with(INTERNAL_HEADER_PREFIX)
                        && *n != KEY_HEADER
                        && *n != RING_VERSION_HEADER
                }) {
                    return Err(AuthError::InternalHeader(name.to_owned()));
                }
                Ok(Caller::Direct {
                    asserted: key_header(headers)?,
                })
            }
        }
    }

    /// Checks a server API call's credentials (after [`Trust::caller`] accepted the request).
    ///
    /// # Errors
    ///
    /// The API is off; no valid API key (an end user identified by a proxy: 403; anyone else:
    /// 401).
    pub fn check_api(&self, caller: &Caller, headers: &HeaderMap) -> Result<(), AuthError> {
        let keys = self.api_keys.as_ref().ok_or(AuthError::ApiDisabled)?;
        let token = bearer(headers.get(http::header::AUTHORIZATION));
        if token.is_some_and(|t| keys.matches(t.as_bytes())) {
            return Ok(());
        }
        Err(if caller.is_end_user() {
            AuthError::EndUser
        } else {
            AuthError::NoApiKey
        })
    }
}

/// The key of [`KEY_HEADER`], decoded and validated; `None` without the header.
fn key_header(headers: &HeaderMap) -> Result<Option<String>, AuthError> {
    let mut values = headers.get_all(KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::BadKeyHeader);
    }
    let raw = value.to_str().map_err(|_| AuthError::BadKeyHeader)?;
    let key = percent_decode(raw, false).map_err(|_| AuthError::BadKeyHeader)?;
    validate_key(&key).map_err(|_| AuthError::BadKeyHeader)?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use wscluster_ring::contract::{SENDER_HEADER, percent_encode};
    use wscluster_runtime::credentials::CredentialSet;

    use super::*;

    fn set(secrets: &[&str]) -> WatchedCredentials {
        WatchedCredentials::fixed(CredentialSet::new("test", secrets).expect("set"))
    }

    fn behind_proxies() -> Trust {
        Trust {
            proxy_secret: Some(set(&["old-secret", "new-secret"])),
            api_keys: Some(set(&["api-1"])),
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn behind_proxies_only_the_secret_opens_the_door_and_the_header_key_is_served() {
        let trust = behind_proxies();
        for bad in [
            headers(&[]),
            headers(&[(PROXY_SECRET_HEADER, "new-secre")]),
            headers(&[(PROXY_SECRET_HEADER, "new-secret!"), (KEY_HEADER, "bob")]),
            headers(&[(KEY_HEADER, "bob")]),
        ] {
            assert_eq!(trust.caller(&bad), Err(AuthError::NotFromProxy));
        }
        for secret in ["old-secret", "new-secret"] {
            let caller = trust
                .caller(&headers(&[
                    (PROXY_SECRET_HEADER, secret),
                    (KEY_HEADER, "a%2Fb"),
                ]))
                .expect("a proxy");
            assert_eq!(caller.served_key(None), Ok(Some("a/b".into())));
            assert_eq!(
                caller.served_key(Some("a/b".into())),
                Ok(Some("a/b".into()))
            );
            assert_eq!(
                caller.served_key(Some("bob".into())),
                Err(AuthError::KeyMismatch)
            );
        }
        let keyless = trust
            .caller(&headers(&[(PROXY_SECRET_HEADER, "old-secret")]))
            .expect("a proxy");
        assert_eq!(
            keyless.served_key(Some("bob".into())),
            Err(AuthError::NoKeyHeader)
        );
    }

    #[test]
    fn direct_internal_headers_never_grant_anything() {
        let trust = Trust::default();
        for name in [PROXY_SECRET_HEADER, SENDER_HEADER, "x-wscluster-other"] {
            assert_eq!(
                trust.caller(&headers(&[(name, "x")])),
                Err(AuthError::InternalHeader(name.to_owned())),
            );
        }
        let plain = trust
            .caller(&headers(&[(RING_VERSION_HEADER, "3")]))
            .expect("ok");
        assert_eq!(plain.served_key(Some("bob".into())), Ok(Some("bob".into())));
        assert_eq!(plain.served_key(None), Ok(None));
        let narrowed = trust
            .caller(&headers(&[(KEY_HEADER, "alice")]))
            .expect("ok");
        assert_eq!(
            narrowed.served_key(Some("bob".into())),
            Err(AuthError::KeyMismatch)
        );
        assert_eq!(narrowed.served_key(None), Ok(Some("alice".into())));
    }

    #[test]
    fn key_headers_that_are_not_one_valid_key_are_refused() {
        let trust = Trust::default();
        let long = percent_encode(&"x".repeat(200));
        for bad in [
            headers(&[(KEY_HEADER, "%zz")]),
            headers(&[(KEY_HEADER, "")]),
            headers(&[(KEY_HEADER, &long)]),
            headers(&[(KEY_HEADER, "a"), (KEY_HEADER, "b")]),
        ] {
            assert_eq!(trust.caller(&bad), Err(AuthError::BadKeyHeader));
        }
    }

    #[test]
    fn the_server_api_takes_api_keys_only() {
        let trust = behind_proxies();
        let proxy = Caller::Proxy { key: None };
        let user = Caller::Proxy {
            key: Some("alice".into()),
        };
        let with = |auth: &str| headers(&[("authorization", auth)]);
        assert_eq!(trust.check_api(&proxy, &with("Bearer api-1")), Ok(()));
        assert_eq!(trust.check_api(&user, &with("Bearer api-1")), Ok(()));
        assert_eq!(
            trust.check_api(&proxy, &headers(&[])),
            Err(AuthError::NoApiKey)
        );
        assert_eq!(
            trust.check_api(&proxy, &with("Bearer api-2")),
            Err(AuthError::NoApiKey)
        );
        assert_eq!(
            trust.check_api(&user, &with("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x")),
            Err(AuthError::EndUser)
        );
        assert_eq!(
            trust.check_api(&proxy, &with("Basic YXBpLTE=")),
            Err(AuthError::NoApiKey)
        );
        let off = Trust::default();
        assert_eq!(
            off.check_api(&proxy, &with("Bearer api-1")),
            Err(AuthError::ApiDisabled)
        );
        assert_eq!(AuthError::ApiDisabled.status(), http::StatusCode::NOT_FOUND);
    }
}
