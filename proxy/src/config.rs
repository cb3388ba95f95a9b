//! The proxy's config file (`--config`, YAML). Every field is optional, unknown fields are
//! rejected, and [`ProxyConfig::validate`] checks what the types cannot express.
//!
//! ```yaml
//! keySources:
//!   - path: "/connect/{key}"
//!   - query: userId
//! resets: {ratePerSecond: 500, jitterMs: 2000}
//! drainTimeoutSeconds: 30
//! limits: {maxConnections: 100000, headerReadTimeoutMs: 10000, maxHeaderBytes: 16384,
//!          idleTimeoutSeconds: 600, maxFrameBytes: 1048576, connectTimeoutMs: 2000}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Smallest header buffer hyper accepts (its `max_buf_size` minimum).
pub const MIN_HEADER_BYTES: usize = 8192;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Where the routing key comes from, tried in order.
    pub key_sources: Vec<KeySourceSpec>,
    /// Pacing of resets after a ring change.
    pub resets: ResetConfig,
    /// Grace period on shutdown before remaining connections are reset with reason "drain".
    pub drain_timeout_seconds: u64,
    /// Resource limits.
    pub limits: Limits,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            key_sources: vec![
                KeySourceSpec::Path("/connect/{key}".into()),
                KeySourceSpec::Query("userId".into()),
            ],
            resets: ResetConfig::default(),
            drain_timeout_seconds: 30,
            limits: Limits::default(),
        }
    }
}

/// One place a key can come from. In YAML a one-entry map: `path: "/connect/{key}"`,
/// `query: userId`, `header: X-User-Id`, `cookie: uid`, `jwt: {...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawKeySource", into = "RawKeySource")]
pub enum KeySourceSpec {
    /// A path pattern with exactly one `{key}` segment, e.g. `/connect/{key}`.
    Path(String),
    /// A query parameter name.
    Query(String),
    /// A header name.
    Header(String),
    /// A cookie name.
    Cookie(String),
    /// A claim of a JWT the proxy verifies.
    Jwt(JwtSpec),
}

/// The YAML shape of a key source: a map with exactly one of these keys. (serde_yaml writes
/// externally tagged enums as YAML tags, `!path ...`; the documented form is a plain map.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawKeySource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwt: Option<JwtSpec>,
}

impl TryFrom<RawKeySource> for KeySourceSpec {
    type Error = String;

    fn try_from(raw: RawKeySource) -> std::result::Result<Self, String> {
        let mut found = Vec::new();
        if let Some(p) = raw.path {
            found.push(KeySourceSpec::Path(p));
        }
        if let Some(q) = raw.query {
            found.push(KeySourceSpec::Query(q));
        }
        if let Some(h) = raw.header {
            found.push(KeySourceSpec::Header(h));
        }
        if let Some(c) = raw.cookie {
            found.push(KeySourceSpec::Cookie(c));
        }
        if let Some(j) = raw.jwt {
            found.push(KeySourceSpec::Jwt(j));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            n => Err(format!(
                "a key source needs exactly one of path, query, header, cookie, jwt; found {n}"
            )),
        }
    }
}

impl From<KeySourceSpec> for RawKeySource {
    fn from(spec: KeySourceSpec) -> Self {
        let mut raw = RawKeySource::default();
        match spec {
            KeySourceSpec::Path(p) => raw.path = Some(p),
            KeySourceSpec::Query(q) => raw.query = Some(q),
            KeySourceSpec::Header(h) => raw.header = Some(h),
            KeySourceSpec::Cookie(c) => raw.cookie = Some(c),
            KeySourceSpec::Jwt(j) => raw.jwt = Some(j),
        }
        raw
    }
}

/// Signature algorithms accepted for JWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (the key file's bytes, trailing newline trimmed).
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256; the key file is a PEM public key.
    RS256,
    /// ECDSA P-256 with SHA-256; the key file is a PEM public key.
    ES256,
}

/// Where the token is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenFrom {
    /// `Authorization: Bearer <token>`.
    #[default]
    Header,
    /// A query parameter (browsers cannot set headers on a WebSocket upgrade).
    Query,
}

/// A JWT key source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtSpec {
    /// The claim holding the key (a string), e.g. `sub`.
    #[serde(default = "default_claim")]
    pub claim: String,
    /// The signature algorithm (default HS256); tokens signed otherwise are refused.
    #[serde(default = "default_algorithm")]
    pub algorithm: JwtAlgorithm,
    /// The HS256 secret or the PEM public key (default `/etc/wscluster/jwt/key`, where the
    /// operator mounts it).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Where the token is read from.
    #[serde(default)]
    pub from: TokenFrom,
    /// The query parameter holding the token when `from: query`.
    #[serde(default = "default_query_param")]
    pub query_param: String,
}

fn default_algorithm() -> JwtAlgorithm {
    JwtAlgorithm::HS256
}

fn default_key_file() -> PathBuf {
    PathBuf::from("/etc/wscluster/jwt/key")
}

fn default_claim() -> String {
    "sub".into()
}

fn default_query_param() -> String {
    "access_token".into()
}

/// Reset pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResetConfig {
    /// Resets started per second by this proxy.
    pub rate_per_second: u32,
    /// `retryAfterMs` handed to clients is uniform over `[0, jitterMs]`.
    pub jitter_ms: u64,
}

impl Default for ResetConfig {
    fn default() -> Self {
        ResetConfig {
            rate_per_second: 500,
            jitter_ms: 2000,
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections held at once (HTTP and WebSocket); more are closed at accept.
    pub max_connections: usize,
    /// Time a client has to send complete request headers (slowloris defence).
    pub header_read_timeout_ms: u64,
    /// Largest request head accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// A spliced WebSocket with no bytes in either direction for this long is closed.
    pub idle_timeout_seconds: u64,
    /// Largest WebSocket frame payload passed through in either direction.
    pub max_frame_bytes: u64,
    /// Time allowed to connect to an owner before answering 502.
    pub connect_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16_384,
            idle_timeout_seconds: 600,
            max_frame_bytes: 1_048_576,
            connect_timeout_ms: 2_000,
        }
    }
}

impl Limits {
    /// [`Limits::header_read_timeout_ms`] as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    /// [`Limits::idle_timeout_seconds`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_seconds)
    }
    /// [`Limits::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

impl ProxyConfig {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self> {
        // An empty file is a valid "all defaults" config.
        if text.trim().is_empty() {
            return Ok(ProxyConfig::default());
        }
        let config: ProxyConfig =
            serde_yaml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        ProxyConfig::from_yaml(&text)
    }

    /// Checks the rules the types cannot express.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.key_sources.is_empty() {
            return fail("keySources must list at least one source".into());
        }
        let mut jwt = 0;
        for source in &self.key_sources {
            match source {
                KeySourceSpec::Path(p) => {
                    crate::key::PathPattern::parse(p).map_err(Error::Config)?;
                }
                KeySourceSpec::Query(n) | KeySourceSpec::Cookie(n) if n.is_empty() => {
                    return fail("query and cookie key sources need a non-empty name".into());
                }
                KeySourceSpec::Header(n) if http::HeaderName::from_bytes(n.as_bytes()).is_err() => {
                    return fail(format!("header key source {n:?} is not a header name"));
                }
                KeySourceSpec::Jwt(j) => {
                    jwt += 1;
                    if j.claim.is_empty() {
                        return fail("jwt.claim must not be empty".into());
                    }
                    if j.from == TokenFrom::Query && j.query_param.is_empty() {
                        return fail("jwt.queryParam must not be empty".into());
                    }
                }
                _ => {}
            }
        }
        if jwt > 1 {
            return fail("at most one jwt key source may be configured".into());
        }
        if self.resets.rate_per_second == 0 {
            return fail("resets.ratePerSecond must be at least 1".into());
        }
        if self.resets.jitter_ms > 600_000 {
            return fail("resets.jitterMs must be at most 600000 (10 minutes)".into());
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return fail("limits.maxConnections must be at least 1".into());
        }
        if l.header_read_timeout_ms == 0 {
            return fail("limits.headerReadTimeoutMs must be at least 1".into());
        }
        if l.max_header_bytes < MIN_HEADER_BYTES || l.max_header_bytes > 1 << 20 {
            return fail(format!(
                "limits.maxHeaderBytes must be {MIN_HEADER_BYTES} to 1048576"
            ));
        }
        if l.idle_timeout_seconds == 0 {
            return fail("limits.idleTimeoutSeconds must be at least 1".into());
        }
        if l.max_frame_bytes < 125 {
            return fail("limits.maxFrameBytes must be at least 125 (a control frame)".into());
        }
        if l.connect_timeout_ms == 0 {
            return fail("limits.connectTimeoutMs must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_the_documented_defaults() {
        let c = ProxyConfig::from_yaml("").expect("empty is fine");
        assert_eq!(c, ProxyConfig::default());
        assert_eq!(c.resets.rate_per_second, 500);
        assert_eq!(c.limits.max_header_bytes, 16_384);
        let c = ProxyConfig::from_yaml("drainTimeoutSeconds: 5").expect("partial is fine");
        assert_eq!(c.drain_timeout_seconds, 5);
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn every_key_source_kind_parses() {
        let yaml = r#"
keySources:
  - path: "/connect/{key}"
  - query: userId
  - header: X-User-Id
  - cookie: uid
  - jwt: {claim: sub, algorithm: HS256, keyFile: /tmp/k, from: query, queryParam: t}
resets: {ratePerSecond: 10, jitterMs: 0}
"#;
        let c = ProxyConfig::from_yaml(yaml).expect("valid");
        assert_eq!(c.key_sources.len(), 5);
        assert_eq!(c.key_sources[1], KeySourceSpec::Query("userId".into()));
        match &c.key_sources[4] {
            KeySourceSpec::Jwt(j) => {
                assert_eq!(j.algorithm, JwtAlgorithm::HS256);
                assert_eq!(j.from, TokenFrom::Query);
                assert_eq!(j.query_param, "t");
            }
            other => panic!("expected jwt, got {other:?}"),
        }
    }

    #[test]
    fn a_jwt_source_defaults_to_hs256_sub_bearer_and_the_operator_s_key_path() {
        let c = ProxyConfig::from_yaml("keySources: [{jwt: {}}]").expect("valid");
        let KeySourceSpec::Jwt(j) = &c.key_sources[0] else {
            panic!("expected jwt");
        };
        assert_eq!(j.algorithm, JwtAlgorithm::HS256);
        assert_eq!(j.claim, "sub");
        assert_eq!(j.from, TokenFrom::Header);
        assert_eq!(j.key_file, PathBuf::from("/etc/wscluster/jwt/key"));
    }

    #[test]
    fn unknown_fields_and_broken_rules_are_refused_with_the_field_named() {
        for (yaml, needle) in [
            ("bogus: 1", "unknown field"),
            ("limits: {maxConection: 3}", "unknown field"),
            ("resets: {ratePerSecond: 0}", "ratePerSecond"),
            ("keySources: [{path: /connect}]", "{key}"),
            ("keySources: [{path: \"/a/{key}/{key}\"}]", "exactly one"),
            ("keySources: []", "at least one"),
            ("keySources: [{header: \"bad header\"}]", "header name"),
            ("limits: {maxHeaderBytes: 100}", "maxHeaderBytes"),
            ("limits: {connectTimeoutMs: 0}", "connectTimeoutMs"),
            (
                "keySources: [{jwt: {algorithm: HS512, keyFile: k}}]",
                "HS512",
            ),
            (
                "keySources: [{path: \"/a/{key}\", query: x}]",
                "exactly one",
            ),
            ("keySources: [{queries: x}]", "unknown field"),
        ] {
            let err = ProxyConfig::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }
}
