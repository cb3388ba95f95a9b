//! Key extraction: which business key a request is for. Pure: a request head in, a [`Key`] or a
//! [`KeyError`] out, no I/O (JWT keys are loaded once, when [`KeySources`] is built).
//!
//! Sources are tried in the configured order and the first that yields a key wins. A JWT source
//! is authoritative: when one is configured the key is the token's claim, a request without a
//! valid token is refused with 401, and any other source that also yields a key must agree with
//! it (403 otherwise), so a client cannot claim someone else's key.

use std::fmt;

use http::{HeaderName, Request, StatusCode};
use serde_json::json;
use wscluster_ring::KeyHash;
use wscluster_ring::contract::{
    DecodeError, RequestTarget, percent_decode, split_target, validate_key,
};

use crate::config::{KeySourceSpec, TokenFrom};
use crate::error::{Error, Result};
use crate::jwt::JwtSource;

/// A validated business key and its ring hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key, 1 to `MAX_KEY_LEN` bytes, no control characters.
    pub key: String,
    /// Its hash on the ring, stored per connection.
    pub hash: KeyHash,
}

impl Key {
    fn new(key: String) -> Self {
        let hash = KeyHash::of(&key);
        Key { key, hash }
    }
}

/// Why no key could be taken from a request. Each maps to one HTTP answer with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// No source yielded a key; lists what was expected.
    Missing {
        /// Human descriptions of the configured sources, in order.
        expected: Vec<String>,
    },
    /// A source yielded something that is not a valid key.
    Invalid {
        /// The source that yielded it.
        source: String,
        /// Why it is refused.
        reason: String,
    },
    /// The JWT is missing, malformed, badly signed, expired or lacks the claim.
    Unauthorized {
        /// Why.
        reason: String,
    },
    /// Another source named a different key than the verified token.
    Mismatch {
        /// The source that disagreed.
        source: String,
    },
}

impl KeyError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            KeyError::Missing { .. } | KeyError::Invalid { .. } => StatusCode::BAD_REQUEST,
            KeyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            KeyError::Mismatch { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// The JSON body for this error.
    pub fn body(&self) -> serde_json::Value {
        match self {
            KeyError::Missing { expected } => json!({
                "error": "missing-key",
                "message": "no routing key in the request",
                "expected": expected,
            }),
            KeyError::Invalid { source, reason } => json!({
                "error": "invalid-key", "source": source, "message": reason,
            }),
            KeyError::Unauthorized { reason } => json!({
                "error": "unauthorized", "message": reason,
            }),
            KeyError::Mismatch { source } => json!({
                "error": "key-mismatch",
                "source": source,
                "message": "the key differs from the one in the verified token",
            }),
        }
    }

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            KeyError::Missing { .. } => "missing-key",
            KeyError::Invalid { .. } => "invalid-key",
            KeyError::Unauthorized { .. } => "unauthorized",
            KeyError::Mismatch { .. } => "key-mismatch",
        }
    }
}

/// A path pattern with exactly one `{key}` segment, such as `/connect/{key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    /// The literal segments, with `None` at the key's position.
    segments: Vec<Option<String>>,
}

impl PathPattern {
    /// Parses a pattern: starts with `/`, exactly one segment is `{key}`, no other braces.
    pub fn parse(pattern: &str) -> Result<PathPattern, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("path pattern {pattern:?} must start with '/'"));
        };
        let segments: Vec<Option<String>> = rest
            .split('/')
            .map(|s| (s != "{key}").then(|| s.to_owned()))
            .collect();
        let keys = segments.iter().filter(|s| s.is_none()).count();
        if keys != 1 {
            return Err(format!(
                "path pattern {pattern:?} must have exactly one {{key}} segment, found {keys}"
            ));
        }
        if segments
            .iter()
            .flatten()
            .any(|s| s.contains('{') || s.contains('}'))
        {
            return Err(format!(
                "path pattern {pattern:?}: braces are only allowed as a whole {{key}} segment"
            ));
        }
        Ok(PathPattern { segments })
    }

    /// The raw (still percent-encoded) key segment of `path`, if it matches.
    fn capture<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix('/')?;
        let mut captured = None;
        let mut count = 0;
        for (i, seg) in rest.split('/').enumerate() {
            count += 1;
            match self.segments.get(i)? {
                Some(lit) if lit == seg => {}
                Some(_) => return None,
                None => captured = Some(seg),
            }
        }
        (count == self.segments.len()).then_some(captured).flatten()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.segments {
            write!(f, "/{}", s.as_deref().unwrap_or("{key}"))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Source {
    Path(PathPattern),
    Query(String),
    Header(HeaderName),
    Cookie(String),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Path(p) => format!("path {p}"),
            Source::Query(q) => format!("query parameter {q}"),
            Source::Header(h) => format!("header {h}"),
            Source::Cookie(c) => format!("cookie {c}"),
        }
    }
}

/// The configured key sources, compiled: patterns parsed, JWT keys loaded.
#[derive(Debug)]
pub struct KeySources {
    sources: Vec<Source>,
    jwt: Option<JwtSource>,
}

impl KeySources {
    /// Compiles the config's sources, reading JWT key files.
    pub fn from_specs(specs: &[KeySourceSpec]) -> Result<KeySources> {
        let mut sources = Vec::new();
        let mut jwt = None;
        for spec in specs {
            match spec {
                KeySourceSpec::Path(p) => {
                    sources.push(Source::Path(PathPattern::parse(p).map_err(Error::Config)?))
                }
                KeySourceSpec::Query(q) => sources.push(Source::Query(q.clone())),
                KeySourceSpec::Header(h) => sources.push(Source::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|e| Error::Config(format!("header {h:?}: {e}")))?,
                )),
                KeySourceSpec::Cookie(c) => sources.push(Source::Cookie(c.clone())),
                KeySourceSpec::Jwt(spec) => jwt = Some(JwtSource::open(spec)?),
            }
        }
        Ok(KeySources { sources, jwt })
    }

    /// Builds sources with a JWT key given as bytes rather than a file (tests, embedding).
    pub fn with_jwt_key(specs: &[KeySourceSpec], key: &[u8]) -> Result<KeySources> {
        let mut out = KeySources::from_specs(
            &specs
                .iter()
                .filter(|s| !matches!(s, KeySourceSpec::Jwt(_)))
                .cloned()
                .collect::<Vec<_>>(),
        )?;
        if let Some(KeySourceSpec::Jwt(spec)) =
            specs.iter().find(|s| matches!(s, KeySourceSpec::Jwt(_)))
        {
            out.jwt = Some(JwtSource::with_key(spec, key)?);
        }
        Ok(out)
    }

    /// Re-reads the JWT key file, if there is one: `Ok(true)` when new keys are in use. On
    /// error the previous keys stay.
    ///
    /// # Errors
    ///
    /// The file cannot be read or holds no usable key.
    pub fn reload(&self) -> Result<bool> {
        self.jwt.as_ref().map_or(Ok(false), JwtSource::reload)
    }

    /// Whether there is a key file to follow.
    pub fn has_key_file(&self) -> bool {
        self.jwt.as_ref().and_then(JwtSource::path).is_some()
    }

    fn expected(&self) -> Vec<String> {
        let mut e: Vec<String> = self.sources.iter().map(Source::describe).collect();
        if let Some(j) = &self.jwt {
            e.push(match j.from {
                TokenFrom::Header => format!("jwt claim {} (Authorization: Bearer)", j.claim),
                TokenFrom::Query => format!("jwt claim {} (query {})", j.claim, j.query_param),
            });
        }
        e
    }
}

/// The verified key of a request whose query is `query`, by its `jwt` source.
fn verified_key<I: KeyInput + ?Sized>(
    jwt: &JwtSource,
    req: &I,
    query: Option<&str>,
) -> Result<Key, KeyError> {
    {
        let unauthorized = |reason: &str| KeyError::Unauthorized {
            reason: reason.to_owned(),
        };
        let token = match jwt.from {
            TokenFrom::Header => {
                bearer(req).ok_or_else(|| unauthorized("missing Authorization: Bearer token"))?
            }
            TokenFrom::Query => query_param(query, &jwt.query_param)
                .ok_or_else(|| {
                    unauthorized(&format!("missing token in query {}", jwt.query_param))
                })?
                .map_err(|_| unauthorized("token is not valid percent-encoding"))?,
        };
        let claims = jwt.verify(&token).map_err(|e| unauthorized(&e))?;
        let Some(serde_json::Value::String(key)) = claims.get(&jwt.claim) else {
            return Err(unauthorized(&format!(
                "token has no string claim {}",
                jwt.claim
            )));
        };
        validate_key(key).map_err(|e| unauthorized(&format!("claim {}: {e}", jwt.claim)))?;
        Ok(Key::new(key.clone()))
    }
}

/// What key extraction reads from a request head: implemented for hyper's requests and for the
/// raw head the upgrade fast path parses ([`crate::head::RawHead`]), so both paths apply the
/// same rules.
pub trait KeyInput {
    /// The request target's path and query, cut by [`split_target`] on both paths.
    fn target(&self) -> RequestTarget<'_>;
    /// Every value of the header field `name` (given in lowercase), in order.
    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;
}

impl<B> KeyInput for Request<B> {
    fn target(&self) -> RequestTarget<'_> {
        split_target(self.uri().path_and_query().map_or("/", |p| p.as_str()))
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .get_all(name)
            .into_iter()
            .map(http::HeaderValue::as_bytes)
    }
}

/// A header value as text, if it is visible ASCII (what `HeaderValue::to_str` accepts).
fn visible(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Takes the routing key from a request head. See the module docs for the rules.
pub fn extract_key<I: KeyInput + ?Sized>(req: &I, sources: &KeySources) -> Result<Key, KeyError> {
    let target = req.target();
    let verified = match &sources.jwt {
        Some(jwt) => Some(verified_key(jwt, req, target.query)?),
        None => None,
    };
    for source in &sources.sources {
        let raw: Option<Result<String, &'static str>> = match source {
            Source::Path(p) => p.capture(target.path).map(|s| decode(s, false)),
            Source::Query(q) => query_param(target.query, q),
            Source::Header(h) => req.header_values(h.as_str()).next().map(|v| {
                visible(v)
                    .map(str::to_owned)
                    .ok_or("header is not visible ASCII")
            }),
            Source::Cookie(c) => cookie(req, c),
        };
        let Some(raw) = raw else { continue };
        let invalid = |reason: String| KeyError::Invalid {
            source: source.describe(),
            reason,
        };
        let key = raw.map_err(|e| invalid(e.to_owned()))?;
        validate_key(&key).map_err(|e| invalid(e.to_string()))?;
        return match verified {
            Some(v) if v.key != key => Err(KeyError::Mismatch {
                source: source.describe(),
            }),
            Some(v) => Ok(v),
            None => Ok(Key::new(key)),
        };
    }
    verified.ok_or_else(|| KeyError::Missing {
        expected: sources.expected(),
    })
}

fn bearer<I: KeyInput + ?Sized>(req: &I) -> Option<String> {
    let v = visible(req.header_values("authorization").next()?)?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The first value of a query parameter, form-decoded (`+` is a space).
fn query_param(query: Option<&str>, name: &str) -> Option<Result<String, &'static str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k, true).ok()? == name).then(|| decode(v, true))
    })
}

/// [`percent_decode`] with the message the key errors carry.
fn decode(raw: &str, plus_is_space: bool) -> Result<String, &'static str> {
    percent_decode(raw, plus_is_space).map_err(DecodeError::as_str)
}

fn cookie<I: KeyInput + ?Sized>(req: &I, name: &str) -> Option<Result<String, &'static str>> {
    req.header_values("cookie")
        .filter_map(visible)
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| {
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                decode(v, false)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JwtAlgorithm, JwtSpec, ProxyConfig};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn defaults() -> KeySources {
        KeySources::from_specs(&ProxyConfig::default().key_sources).expect("defaults compile")
    }

    fn key_of(r: &Request<()>, s: &KeySources) -> Result<String, KeyError> {
        extract_key(r, s).map(|k| k.key)
    }

    #[test]
    fn the_seed_path_and_query_both_yield_the_user_id() {
        let s = defaults();
        assert_eq!(
            key_of(&req("/connect/alice", &[]), &s).as_deref(),
            Ok("alice")
        );
        assert_eq!(
            key_of(&req("/send?userId=bob&message=hi", &[]), &s).as_deref(),
            Ok("bob")
        );
        assert_eq!(
            key_of(&req("/connect/caf%C3%A9", &[]), &s).as_deref(),
            Ok("café")
        );
        assert_eq!(
            key_of(&req("/x?userId=a+b%2Fc", &[]), &s).as_deref(),
            Ok("a b/c")
        );
        let k = extract_key(&req("/connect/alice", &[]), &s).expect("key");
        assert_eq!(k.hash, KeyHash::of("alice"));
    }

    #[test]
    fn the_path_pattern_matches_whole_segments_only() {
        let s = defaults();
        for uri in [
            "/connect/alice/x",
            "/connect",
            "/connect/",
            "/connec/alice",
            "/",
        ] {
            let e = extract_key(&req(uri, &[]), &s);
            assert!(
                matches!(
                    e,
                    Err(KeyError::Missing { .. }) | Err(KeyError::Invalid { .. })
                ),
                "{uri}: {e:?}"
            );
        }
    }

    #[test]
    fn a_missing_key_names_the_expected_sources() {
        let e = extract_key(&req("/other", &[]), &defaults()).expect_err("no key");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body()["expected"],
            json!(["path /connect/{key}", "query parameter userId"])
        );
    }

    #[test]
    fn invalid_keys_are_refused_with_the_source_named() {
        let s = defaults();
        let long = format!("/connect/{}", "x".repeat(129));
        for uri in [
            "/connect/a%0Ab",
            "/connect/%ZZ",
            "/connect/%FF",
            long.as_str(),
        ] {
            let e = extract_key(&req(uri, &[]), &s).expect_err(uri);
            assert!(matches!(e, KeyError::Invalid { .. }), "{uri}: {e:?}");
            assert_eq!(e.body()["source"], "path /connect/{key}");
        }
        let e = extract_key(&req("/x?userId=", &[]), &s).expect_err("empty");
        assert!(matches!(e, KeyError::Invalid { .. }));
    }

    #[test]
    fn header_and_cookie_sources_work_in_order() {
        let specs = vec![
            KeySourceSpec::Header("X-User-Id".into()),
            KeySourceSpec::Cookie("uid".into()),
        ];
        let s = KeySources::from_specs(&specs).expect("compile");
        assert_eq!(
            key_of(&req("/", &[("x-user-id", "h1"), ("cookie", "uid=c1")]), &s).as_deref(),
            Ok("h1")
        );
        assert_eq!(
            key_of(&req("/", &[("cookie", "a=1; uid=\"c%201\"; b=2")]), &s).as_deref(),
            Ok("c 1")
        );
        assert!(matches!(
            extract_key(&req("/", &[("cookie", "a=1")]), &s),
            Err(KeyError::Missing { .. })
        ));
    }

    fn jwt_sources(from: TokenFrom) -> KeySources {
        let specs = vec![
            KeySourceSpec::Path("/connect/{key}".into()),
            KeySourceSpec::Jwt(JwtSpec {
                claim: "sub".into(),
                algorithm: JwtAlgorithm::HS256,
                key_file: "unused".into(),
                from,
                query_param: "access_token".into(),
                audience: None,
                issuer: None,
                leeway_seconds: 30,
                jwks_file: None,
            }),
        ];
        KeySources::with_jwt_key(&specs, SECRET).expect("compile")
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .expect("encode")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    #[test]
    fn a_verified_jwt_claim_is_the_key_and_other_sources_must_agree() {
        let s = jwt_sources(TokenFrom::Header);
        let t = token(json!({"sub": "alice", "exp": now() + 600}), SECRET);
        let auth = format!("Bearer {t}");
        assert_eq!(
            key_of(&req("/anything", &[("authorization", &auth)]), &s).as_deref(),
            Ok("alice")
        );
        assert_eq!(
            key_of(&req("/connect/alice", &[("authorization", &auth)]), &s).as_deref(),
            Ok("alice")
        );
        let e = extract_key(&req("/connect/bob", &[("authorization", &auth)]), &s)
            .expect_err("bob is not alice");
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        let q = jwt_sources(TokenFrom::Query);
        assert_eq!(
            key_of(&req(&format!("/connect/alice?access_token={t}"), &[]), &q).as_deref(),
            Ok("alice")
        );
    }

    #[test]
    fn bad_tokens_are_401() {
        let s = jwt_sources(TokenFrom::Header);
        let cases = [
            None,
            Some(token(
                json!({"sub": "alice", "exp": now() + 600}),
                b"another-secret-of-32-bytes......",
            )),
            Some(token(json!({"sub": "alice", "exp": now() - 600}), SECRET)),
            Some(token(
                json!({"sub": "alice", "exp": now() + 900, "nbf": now() + 600}),
                SECRET,
            )),
            Some(token(json!({"sub": "alice"}), SECRET)),
            Some(token(json!({"sub": 42, "exp": now() + 600}), SECRET)),
            Some(token(json!({"sub": "", "exp": now() + 600}), SECRET)),
            Some("not.a.token".into()),
        ];
        for (i, t) in cases.into_iter().enumerate() {
            let auth = t.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let e = extract_key(&req("/connect/alice", &headers), &s).expect_err("refused");
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "case {i}: {e:?}");
        }
    }
}
