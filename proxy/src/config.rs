//! The proxy's config file (`--config`, YAML). Every field is optional, unknown fields are
//! rejected, and [`ProxyConfig::validate`] checks what the types cannot express.
//!
//! ```yaml
//! keySources:
//!   - path: "/connect/{key}"
//!   - query: userId
//! resets: {mode: adaptive, ratePerSecond: 5000, startRatePerSecond: 1000,
//!          minRatePerSecond: 500, upgradeLatencyTargetMs: 50, jitterMs: 1000}
//! drainTimeoutSeconds: 30
//! limits: {maxConnections: 100000, headerReadTimeoutMs: 10000, maxHeaderBytes: 16384,
//!          idleTimeoutSeconds: 600, maxFrameBytes: 1048576, connectTimeoutMs: 2000,
//!          maxBodyBytes: 1048576, bodyTimeoutMs: 10000}
//! legacySend: false
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Smallest header buffer hyper accepts (its `max_buf_size` minimum).
pub const MIN_HEADER_BYTES: usize = 8192;
/// Largest `limits.maxHeaderBytes` accepted (1 MiB).
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Smallest `limits.maxFrameBytes`: the largest control frame payload (RFC 6455 §5.5).
pub const MIN_FRAME_BYTES: u64 = 125;
/// Largest `resets.ratePerSecond`: far above what one proxy can reset, and a bound the
/// `WsCluster` schema can state.
pub const MAX_RESETS_PER_SECOND: u32 = 100_000;
/// Largest `resets.jitterMs` (10 minutes).
pub const MAX_JITTER_MS: u64 = 600_000;
/// Longest name a key source may use in a `WsCluster` (the schema needs a bound so the API
/// server can cost its CEL rules; the proxy itself accepts longer ones).
pub const MAX_KEY_SOURCE_NAME_CHARS: usize = 256;
/// The default `jwt.keyFile`: where the operator mounts the key Secret.
pub const DEFAULT_JWT_KEY_FILE: &str = "/etc/wscluster/jwt/key";
/// The default `jwt.claim`.
pub const DEFAULT_JWT_CLAIM: &str = "sub";
/// The default `jwt.queryParam`.
pub const DEFAULT_TOKEN_QUERY_PARAM: &str = "access_token";

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
    /// Route the seed's `GET|POST /send?userId=…` on the public port to the key's owner, for
    /// migrations from the seed (off by default: sends belong on the server API port).
    pub legacy_send: bool,
    /// Origins (`https://app.example.com`) a browser's WebSocket upgrade may come from; an
    /// upgrade with another `Origin` gets 403. Empty: not checked. Required with a cookie key
    /// source (cross-site WebSocket hijacking).
    pub allowed_origins: Vec<String>,
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
            legacy_send: false,
            allowed_origins: Vec::new(),
        }
    }
}

/// One place a key can come from. In YAML a one-entry map: `path: "/connect/{key}"`,
/// `query: userId`, `header: X-User-Id`, `cookie: uid`, `jwt: {...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "KeySourceMap<JwtSpec>", into = "KeySourceMap<JwtSpec>")]
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

/// One place to find the business key: a map that sets exactly one of `path`, `query`,
/// `header`, `cookie`, `jwt`. In a `WsCluster` the jwt entry names a Secret where `proxy.yaml`
/// names a key file; the operator renders the one into the other.
// This is the YAML shape of a `KeySourceSpec` (serde_yaml writes externally tagged enums as
// YAML tags, `!path ...`; the documented form is a plain map). `J` is the jwt entry: `JwtSpec`
// here, the operator's Secret-backed `JwtSource` in the CRD. A missing `Option` field is `None`
// without `#[serde(default)]`, which would demand `J: Default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "schema", schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.path) ? 1 : 0) + (has(self.query) ? 1 : 0) + (has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.jwt) ? 1 : 0) == 1",
        "message": "a keySource sets exactly one of path, query, header, cookie, jwt"
    },
    {
        "rule": "!has(self.path) || self.path.matches('^/([^{}/]*/)*[{]key[}](/[^{}/]*)*$')",
        "message": "path must start with / and contain {key} exactly once, as a whole segment"
    }
])))]
pub struct KeySourceMap<J> {
    /// A path pattern with exactly one `{key}` segment, such as `/connect/{key}`; other
    /// segments are literal and may not contain braces.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = MAX_KEY_SOURCE_NAME_CHARS))
    )]
    pub path: Option<String>,
    /// A query parameter name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = MAX_KEY_SOURCE_NAME_CHARS))
    )]
    pub query: Option<String>,
    /// A request header name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(
            regex(pattern = "^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"),
            length(min = 1, max = MAX_KEY_SOURCE_NAME_CHARS)
        )
    )]
    pub header: Option<String>,
    /// A cookie name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = MAX_KEY_SOURCE_NAME_CHARS))
    )]
    pub cookie: Option<String>,
    /// A claim of a verified JWT. When configured it is authoritative: no valid token, no
    /// connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<J>,
}

impl<J> Default for KeySourceMap<J> {
    fn default() -> Self {
        KeySourceMap {
            path: None,
            query: None,
            header: None,
            cookie: None,
            jwt: None,
        }
    }
}

impl<J> KeySourceMap<J> {
    /// The same entry with its jwt source converted (the operator turns a Secret reference
    /// into the file it mounts).
    pub fn map_jwt<K>(self, f: impl FnOnce(J) -> K) -> KeySourceMap<K> {
        KeySourceMap {
            path: self.path,
            query: self.query,
            header: self.header,
            cookie: self.cookie,
            jwt: self.jwt.map(f),
        }
    }

    fn set_count(&self) -> usize {
        [
            self.path.is_some(),
            self.query.is_some(),
            self.header.is_some(),
            self.cookie.is_some(),
            self.jwt.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }
}

impl TryFrom<KeySourceMap<JwtSpec>> for KeySourceSpec {
    type Error = String;

    /// The one entry that is set; the message (without a subject, so callers can prefix the
    /// entry's position) says how many were.
    fn try_from(map: KeySourceMap<JwtSpec>) -> std::result::Result<Self, String> {
        let set = map.set_count();
        match (map.path, map.query, map.header, map.cookie, map.jwt) {
            (Some(p), None, None, None, None) => Ok(KeySourceSpec::Path(p)),
            (None, Some(q), None, None, None) => Ok(KeySourceSpec::Query(q)),
            (None, None, Some(h), None, None) => Ok(KeySourceSpec::Header(h)),
            (None, None, None, Some(c), None) => Ok(KeySourceSpec::Cookie(c)),
            (None, None, None, None, Some(j)) => Ok(KeySourceSpec::Jwt(j)),
            _ => Err(format!(
                "sets {set} of path, query, header, cookie, jwt; exactly one is needed"
            )),
        }
    }
}

impl From<KeySourceSpec> for KeySourceMap<JwtSpec> {
    fn from(spec: KeySourceSpec) -> Self {
        let mut map = KeySourceMap::default();
        match spec {
            KeySourceSpec::Path(p) => map.path = Some(p),
            KeySourceSpec::Query(q) => map.query = Some(q),
            KeySourceSpec::Header(h) => map.header = Some(h),
            KeySourceSpec::Cookie(c) => map.cookie = Some(c),
            KeySourceSpec::Jwt(j) => map.jwt = Some(j),
        }
        map
    }
}

/// Signature algorithms accepted for JWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (the key's bytes, trailing newline trimmed).
    #[default]
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256; the key is a PEM public key.
    RS256,
    /// ECDSA P-256 with SHA-256; the key is a PEM public key.
    ES256,
    /// RSASSA-PSS with SHA-256; the key is a PEM public key.
    PS256,
    /// Ed25519 (EdDSA); the key is a PEM public key.
    EdDSA,
}

/// Where the token is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum TokenFrom {
    /// `Authorization: Bearer <token>`.
    #[default]
    Header,
    /// A query parameter (`queryParam`), for browsers that cannot set headers on a
    /// WebSocket upgrade.
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
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// The HS256 secret or the PEM public key (default [`DEFAULT_JWT_KEY_FILE`], where the
    /// operator mounts it).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Where the token is read from.
    #[serde(default)]
    pub from: TokenFrom,
    /// The query parameter holding the token when `from: query`.
    #[serde(default = "default_query_param")]
    pub query_param: String,
    /// The audience a token must name in `aud`; when unset, `aud` is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The issuer a token must name in `iss`; when unset, `iss` is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (at most [`MAX_JWT_LEEWAY_SECONDS`]).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// A JWKS document (`{"keys":[...]}`) holding the verifying keys, chosen by the token's
    /// `kid`; when set, `keyFile` is not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
}

/// The default `jwt.leewaySeconds`: clocks drift, and 30 s is short against token lifetimes.
pub const DEFAULT_JWT_LEEWAY_SECONDS: u64 = 30;
/// The largest `jwt.leewaySeconds` accepted (5 minutes).
pub const MAX_JWT_LEEWAY_SECONDS: u64 = 300;

fn default_leeway() -> u64 {
    DEFAULT_JWT_LEEWAY_SECONDS
}

fn default_key_file() -> PathBuf {
    PathBuf::from(DEFAULT_JWT_KEY_FILE)
}

fn default_claim() -> String {
    DEFAULT_JWT_CLAIM.into()
}

fn default_query_param() -> String {
    DEFAULT_TOKEN_QUERY_PARAM.into()
}

/// How a proxy paces its resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum PacingMode {
    /// Start at `startRatePerSecond`, raise the rate while the owners the reset clients come
    /// back to answer their upgrades under `upgradeLatencyTargetMs` and refuse none, halve it
    /// when they do not; `ratePerSecond` is the cap.
    #[default]
    Adaptive,
    /// Exactly `ratePerSecond`, whatever the owners do.
    Fixed,
}

/// Pacing of resets after a ring change (per proxy, no coordination between proxies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ResetConfig {
    /// `adaptive` (default) or `fixed`.
    pub mode: PacingMode,
    /// Resets started per second by each proxy: the rate in `fixed` mode, the cap in
    /// `adaptive` mode.
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = 1, max = MAX_RESETS_PER_SECOND))
    )]
    pub rate_per_second: u32,
    /// `adaptive` mode: the rate each wave of resets starts at, per second (at most
    /// `ratePerSecond`, which wins when lower).
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = 1, max = MAX_RESETS_PER_SECOND))
    )]
    pub start_rate_per_second: u32,
    /// `adaptive` mode: the lowest rate backing off goes to, per second (at most
    /// `startRatePerSecond` and `ratePerSecond`, which win when lower). The default, 500, is
    /// the old fixed rate: a slow owner never makes a wave slower than it was.
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = 1, max = MAX_RESETS_PER_SECOND))
    )]
    pub min_rate_per_second: u32,
    /// `adaptive` mode: the 99th percentile of the owners' upgrade latency (this proxy's
    /// connect to their 101) above which the rate goes down, over 100 ms windows.
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = 1, max = MAX_UPGRADE_LATENCY_TARGET_MS))
    )]
    pub upgrade_latency_target_ms: u64,
    /// The largest `retryAfterMs` handed to clients. `fixed` mode: uniform over
    /// `[0, jitterMs]`; `adaptive` mode: uniform over `[0, min(jitterMs, the time the resets
    /// still queued take at the current rate)]`. Drains on shutdown: uniform over
    /// `[0, jitterMs]`.
    #[cfg_attr(feature = "schema", schemars(range(max = MAX_JITTER_MS)))]
    pub jitter_ms: u64,
}

/// Largest `resets.upgradeLatencyTargetMs` (10 s: an upgrade slower than that is broken, not
/// busy).
pub const MAX_UPGRADE_LATENCY_TARGET_MS: u64 = 10_000;

impl Default for ResetConfig {
    fn default() -> Self {
        // The 3 -> 4 scale-up with 10,000 clients moves about 1,250 per proxy (two proxies):
        // 1,000/s rising by half each good 100 ms window reaches the 5,000/s cap in 0.4 s and
        // sends them all within about 0.5 s (docs/local.md, "Measured").
        ResetConfig {
            mode: PacingMode::Adaptive,
            rate_per_second: 5_000,
            start_rate_per_second: 1_000,
            min_rate_per_second: 500,
            upgrade_latency_target_ms: 50,
            jitter_ms: 1_000,
        }
    }
}

impl ResetConfig {
    /// The adaptive controller's settings from this config.
    pub fn pace_settings(&self) -> crate::resets::pace::Settings {
        let cap = f64::from(self.rate_per_second.max(1));
        crate::resets::pace::Settings {
            start: f64::from(self.start_rate_per_second).min(cap),
            floor: f64::from(self.min_rate_per_second.min(self.start_rate_per_second)).min(cap),
            cap,
            target: Duration::from_millis(self.upgrade_latency_target_ms),
        }
    }
}

/// Resource limits of each proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections held at once (HTTP and WebSocket); more are closed at accept.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub max_connections: usize,
    /// Time a client has to send complete request headers (slowloris defence).
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub header_read_timeout_ms: u64,
    /// Largest request head accepted; larger gets 431.
    #[cfg_attr(
        feature = "schema",
        schemars(range(min = MIN_HEADER_BYTES, max = MAX_HEADER_BYTES))
    )]
    pub max_header_bytes: usize,
    /// A spliced WebSocket with no bytes in either direction for this long is closed.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub idle_timeout_seconds: u64,
    /// Largest WebSocket frame payload passed through in either direction.
    #[cfg_attr(feature = "schema", schemars(range(min = MIN_FRAME_BYTES)))]
    pub max_frame_bytes: u64,
    /// Time allowed to connect to an owner before answering 502.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub connect_timeout_ms: u64,
    /// Largest request body read on the server API port (bodies are held whole so a call
    /// refused with 421 can be retried); larger gets 413.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = MAX_BODY_BYTES)))]
    pub max_body_bytes: usize,
    /// Time a client has to send a whole request body on the server API port; slower gets
    /// 408.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub body_timeout_ms: u64,
    /// Client connections held at once per client IP address; more get 429 (unset: no limit).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub per_ip_connections: Option<u32>,
    /// WebSocket upgrades per second per client IP address, a token bucket refilled at this
    /// rate; more get 429 (unset: no limit).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub per_ip_upgrades_per_second: Option<u32>,
    /// The bucket's size: upgrades an address may make at once after a quiet spell (default:
    /// `perIpUpgradesPerSecond`; without that rate, no effect).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub per_ip_burst: Option<u32>,
}

/// Largest `limits.maxBodyBytes` accepted (64 MiB).
pub const MAX_BODY_BYTES: usize = 64 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16_384,
            idle_timeout_seconds: 600,
            max_frame_bytes: 1_048_576,
            connect_timeout_ms: 2_000,
            max_body_bytes: 1_048_576,
            body_timeout_ms: 10_000,
            per_ip_connections: None,
            per_ip_upgrades_per_second: None,
            per_ip_burst: None,
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
    /// [`Limits::body_timeout_ms`] as a duration.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
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

    /// The fields a running proxy does not take from a reloaded file, serialized (YAML): a
    /// change here needs a restart, any other change applies live (docs/proxy.md, "Live
    /// configuration"). The operator hashes this into the proxy pods' annotation, so only
    /// such a change rolls the proxies.
    pub fn restart_fingerprint(&self) -> String {
        let fields = RestartFields {
            drain_timeout_seconds: self.drain_timeout_seconds,
            max_connections: self.limits.max_connections,
            header_read_timeout_ms: self.limits.header_read_timeout_ms,
            max_header_bytes: self.limits.max_header_bytes,
            connect_timeout_ms: self.limits.connect_timeout_ms,
        };
        // Plain numbers: serializing them cannot fail; a failure would still change the value.
        serde_yaml::to_string(&fields).unwrap_or_else(|e| format!("unserializable: {e}"))
    }

    /// Checks the rules the types cannot express. Messages name the field, with the
    /// position of a key source (`keySources[2]: ...`).
    pub fn validate(&self) -> Result<()> {
        validate_key_sources(&self.key_sources)
            .and_then(|()| validate_origins(&self.allowed_origins, &self.key_sources))
            .and_then(|()| self.resets.validate())
            .and_then(|()| self.limits.validate())
            .map_err(Error::Config)
    }
}

/// The fields [`ProxyConfig::restart_fingerprint`] covers: each is read once at start.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RestartFields {
    /// The process's hard deadline at shutdown is set from it at start (and the operator
    /// derives the pods' grace period from it, which rolls them anyway).
    drain_timeout_seconds: u64,
    /// The accept loops' semaphore.
    max_connections: usize,
    /// hyper's connection builder and the server API's listener.
    header_read_timeout_ms: u64,
    /// hyper's connection builder (`max_buf_size`).
    max_header_bytes: usize,
    /// The HTTP clients' connectors (forwarding and the server API).
    connect_timeout_ms: u64,
}

/// Each origin is `scheme://host[:port]` (http or https, nothing after the authority), as a
/// browser sends it; a cookie key source needs at least one.
fn validate_origins(
    origins: &[String],
    sources: &[KeySourceSpec],
) -> std::result::Result<(), String> {
    for (i, origin) in origins.iter().enumerate() {
        let bad = |why: &str| format!("allowedOrigins[{i}] {origin:?}: {why}");
        let uri: http::Uri = origin.parse().map_err(|_| bad("not an origin"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(bad("must be http(s)://host[:port]"));
        }
        if origin.len()
            != format!(
                "{}://{}",
                uri.scheme_str().unwrap_or_default(),
                uri.authority().map_or("", |a| a.as_str())
            )
            .len()
        {
            return Err(bad("must have no path, not even /, and no query"));
        }
    }
    let cookie = sources
        .iter()
        .any(|s| matches!(s, KeySourceSpec::Cookie(_)));
    if cookie && origins.is_empty() {
        return Err(
            "a cookie key source needs allowedOrigins: browsers send cookies on \
            cross-site WebSocket upgrades (cross-site WebSocket hijacking)"
                .into(),
        );
    }
    Ok(())
}

fn validate_key_sources(sources: &[KeySourceSpec]) -> std::result::Result<(), String> {
    if sources.is_empty() {
        return Err("keySources must list at least one source".into());
    }
    for (i, source) in sources.iter().enumerate() {
        validate_key_source(source).map_err(|m| format!("keySources[{i}]: {m}"))?;
    }
    let jwt = sources
        .iter()
        .filter(|s| matches!(s, KeySourceSpec::Jwt(_)))
        .count();
    if jwt > 1 {
        return Err("at most one jwt key source may be configured".into());
    }
    Ok(())
}

fn validate_key_source(source: &KeySourceSpec) -> std::result::Result<(), String> {
    match source {
        KeySourceSpec::Path(p) => crate::key::PathPattern::parse(p).map(drop),
        KeySourceSpec::Query(n) | KeySourceSpec::Cookie(n) if n.is_empty() => {
            Err("query and cookie key sources need a non-empty name".into())
        }
        KeySourceSpec::Header(n) if http::HeaderName::from_bytes(n.as_bytes()).is_err() => {
            Err(format!("header key source {n:?} is not a header name"))
        }
        KeySourceSpec::Jwt(j) if j.claim.is_empty() => Err("jwt.claim must not be empty".into()),
        KeySourceSpec::Jwt(j) if j.from == TokenFrom::Query && j.query_param.is_empty() => {
            Err("jwt.queryParam must not be empty".into())
        }
        KeySourceSpec::Jwt(j) if j.leeway_seconds > MAX_JWT_LEEWAY_SECONDS => Err(format!(
            "jwt.leewaySeconds must be at most {MAX_JWT_LEEWAY_SECONDS}"
        )),
        KeySourceSpec::Jwt(j)
            if [&j.audience, &j.issuer]
                .into_iter()
                .any(|v| v.as_deref() == Some("")) =>
        {
            Err("jwt.audience and jwt.issuer must not be empty when set".into())
        }
        _ => Ok(()),
    }
}

impl ResetConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=MAX_RESETS_PER_SECOND).contains(&self.rate_per_second) {
            return Err(format!(
                "resets.ratePerSecond must be 1 to {MAX_RESETS_PER_SECOND}"
            ));
        }
        if !(1..=MAX_RESETS_PER_SECOND).contains(&self.start_rate_per_second) {
            return Err(format!(
                "resets.startRatePerSecond must be 1 to {MAX_RESETS_PER_SECOND}"
            ));
        }
        if !(1..=MAX_RESETS_PER_SECOND).contains(&self.min_rate_per_second) {
            return Err(format!(
                "resets.minRatePerSecond must be 1 to {MAX_RESETS_PER_SECOND}"
            ));
        }
        if !(1..=MAX_UPGRADE_LATENCY_TARGET_MS).contains(&self.upgrade_latency_target_ms) {
            return Err(format!(
                "resets.upgradeLatencyTargetMs must be 1 to {MAX_UPGRADE_LATENCY_TARGET_MS}"
            ));
        }
        if self.jitter_ms > MAX_JITTER_MS {
            return Err(format!(
                "resets.jitterMs must be at most {MAX_JITTER_MS} (10 minutes)"
            ));
        }
        Ok(())
    }
}

impl Limits {
    fn validate(&self) -> std::result::Result<(), String> {
        let zero = [
            ("maxConnections", self.max_connections == 0),
            ("headerReadTimeoutMs", self.header_read_timeout_ms == 0),
            ("idleTimeoutSeconds", self.idle_timeout_seconds == 0),
            ("connectTimeoutMs", self.connect_timeout_ms == 0),
            ("bodyTimeoutMs", self.body_timeout_ms == 0),
            ("perIpConnections", self.per_ip_connections == Some(0)),
            (
                "perIpUpgradesPerSecond",
                self.per_ip_upgrades_per_second == Some(0),
            ),
            ("perIpBurst", self.per_ip_burst == Some(0)),
        ];

        if let Some((name, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err(format!("limits.{name} must be at least 1"));
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return Err(format!(
                "limits.maxHeaderBytes must be {MIN_HEADER_BYTES} to {MAX_HEADER_BYTES}"
            ));
        }
        if !(1..=MAX_BODY_BYTES).contains(&self.max_body_bytes) {
            return Err(format!("limits.maxBodyBytes must be 1 to {MAX_BODY_BYTES}"));
        }
        if self.max_frame_bytes < MIN_FRAME_BYTES {
            return Err(format!(
                "limits.maxFrameBytes must be at least {MIN_FRAME_BYTES} (a control frame)"
            ));
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
        assert_eq!(c.resets.rate_per_second, 5000);
        assert_eq!(c.resets.mode, PacingMode::Adaptive);
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
allowedOrigins: ["https://app.example"]
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
            ("resets: {mode: fast}", "unknown variant `fast`"),
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
            ("keySources: [{cookie: uid}]", "allowedOrigins"),
            ("allowedOrigins: [\"https://a.example/\"]", "no path"),
            ("allowedOrigins: [\"a.example\"]", "allowedOrigins[0]"),
            ("allowedOrigins: [\"ftp://a.example\"]", "http(s)"),
            ("limits: {perIpConnections: 0}", "perIpConnections"),
        ] {
            let err = ProxyConfig::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn the_limits_of_each_field_are_refused_just_past_their_bound() {
        for (yaml, needle) in [
            (
                "resets: {ratePerSecond: 100001}",
                "resets.ratePerSecond must be 1 to 100000",
            ),
            (
                "resets: {startRatePerSecond: 0}",
                "resets.startRatePerSecond must be 1 to 100000",
            ),
            (
                "resets: {minRatePerSecond: 0}",
                "resets.minRatePerSecond must be 1 to 100000",
            ),
            (
                "resets: {upgradeLatencyTargetMs: 10001}",
                "resets.upgradeLatencyTargetMs must be 1 to 10000",
            ),
            (
                "resets: {upgradeLatencyTargetMs: 0}",
                "resets.upgradeLatencyTargetMs must be 1 to 10000",
            ),
            (
                "resets: {jitterMs: 600001}",
                "resets.jitterMs must be at most 600000",
            ),
            (
                "limits: {maxConnections: 0}",
                "limits.maxConnections must be at least 1",
            ),
            (
                "limits: {headerReadTimeoutMs: 0}",
                "limits.headerReadTimeoutMs",
            ),
            (
                "limits: {idleTimeoutSeconds: 0}",
                "limits.idleTimeoutSeconds",
            ),
            (
                "limits: {maxHeaderBytes: 1048577}",
                "limits.maxHeaderBytes must be 8192 to",
            ),
            (
                "limits: {maxFrameBytes: 124}",
                "limits.maxFrameBytes must be at least 125",
            ),
        ] {
            let err = ProxyConfig::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
        let edges = "resets: {ratePerSecond: 100000, startRatePerSecond: 100000, minRatePerSecond: 100000, upgradeLatencyTargetMs: 10000, jitterMs: 600000}\nlimits: {maxConnections: 1, headerReadTimeoutMs: 1, maxHeaderBytes: 1048576, idleTimeoutSeconds: 1, maxFrameBytes: 125, connectTimeoutMs: 1}";
        ProxyConfig::from_yaml(edges).expect("every bound itself is accepted");
    }

    #[test]
    fn the_adaptive_rates_are_clamped_under_the_cap_and_the_floor_under_the_start() {
        let c = ProxyConfig::from_yaml("resets: {ratePerSecond: 20}").expect("valid");
        let p = c.resets.pace_settings();
        assert_eq!((p.start, p.floor, p.cap), (20.0, 20.0, 20.0));
        let c =
            ProxyConfig::from_yaml("resets: {startRatePerSecond: 100, upgradeLatencyTargetMs: 7}")
                .expect("valid");
        let p = c.resets.pace_settings();
        assert_eq!((p.start, p.floor, p.cap), (100.0, 100.0, 5000.0));
        assert_eq!(p.target, Duration::from_millis(7));
        let c = ProxyConfig::from_yaml("resets: {mode: fixed}").expect("valid");
        assert_eq!(c.resets.mode, PacingMode::Fixed);
    }

    #[test]
    fn a_broken_key_source_is_named_by_its_position() {
        for (yaml, needle) in [
            (
                "keySources: [{query: a}, {path: /connect}]",
                "keySources[1]: path pattern",
            ),
            (
                "keySources: [{cookie: \"\"}]",
                "keySources[0]: query and cookie",
            ),
            // serde_yaml names the list (and where it starts) rather than the entry.
            (
                "keySources: [{query: a}, {query: b, cookie: c}]",
                "keySources: sets 2 of path, query, header, cookie, jwt; exactly one is needed",
            ),
        ] {
            let err = ProxyConfig::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn a_config_written_by_serde_reads_back_equal() {
        // The operator renders proxy.yaml by serialising this type; what it writes must be
        // what the proxy reads.
        let config = ProxyConfig {
            key_sources: vec![
                KeySourceSpec::Jwt(JwtSpec {
                    claim: "uid".into(),
                    algorithm: JwtAlgorithm::ES256,
                    key_file: PathBuf::from("/k"),
                    from: TokenFrom::Query,
                    query_param: "t".into(),
                    audience: Some("wscluster".into()),
                    issuer: Some("https://idp.example".into()),
                    leeway_seconds: 5,
                    jwks_file: Some(PathBuf::from("/jwks.json")),
                }),
                KeySourceSpec::Path("/c/{key}".into()),
                KeySourceSpec::Query("u".into()),
                KeySourceSpec::Header("X-U".into()),
                KeySourceSpec::Cookie("c".into()),
            ],
            resets: ResetConfig {
                mode: PacingMode::Fixed,
                rate_per_second: 7,
                start_rate_per_second: 3,
                min_rate_per_second: 2,
                upgrade_latency_target_ms: 20,
                jitter_ms: 0,
            },
            drain_timeout_seconds: 9,
            limits: Limits {
                max_connections: 3,
                header_read_timeout_ms: 4,
                max_header_bytes: 9000,
                idle_timeout_seconds: 5,
                max_frame_bytes: 126,
                connect_timeout_ms: 6,
                max_body_bytes: 7,
                body_timeout_ms: 8,
                per_ip_connections: Some(9),
                per_ip_upgrades_per_second: Some(10),
                per_ip_burst: Some(11),
            },
            legacy_send: true,
            allowed_origins: vec!["https://app.example".into()],
        };
        let yaml = serde_yaml::to_string(&config).expect("serialises");
        assert!(
            yaml.contains("- header: X-U\n"),
            "plain maps, not tags: {yaml}"
        );
        assert_eq!(ProxyConfig::from_yaml(&yaml).expect("parses"), config);
    }

    #[test]
    fn only_a_restart_field_changes_the_restart_fingerprint() {
        let base = ProxyConfig::default();
        let mut live = base.clone();
        live.key_sources = vec![KeySourceSpec::Query("u".into())];
        live.resets = ResetConfig {
            mode: PacingMode::Fixed,
            rate_per_second: 7,
            start_rate_per_second: 2,
            min_rate_per_second: 1,
            upgrade_latency_target_ms: 9,
            jitter_ms: 1,
        };
        live.limits.per_ip_connections = Some(3);
        live.limits.per_ip_upgrades_per_second = Some(3);
        live.limits.idle_timeout_seconds = 5;
        live.limits.max_frame_bytes = 4096;
        live.limits.max_body_bytes = 10;
        live.limits.body_timeout_ms = 10;
        live.allowed_origins = vec!["https://a.example".into()];
        live.legacy_send = true;
        assert_eq!(base.restart_fingerprint(), live.restart_fingerprint());
        let restarts: [fn(&mut ProxyConfig); 5] = [
            |c| c.drain_timeout_seconds += 1,
            |c| c.limits.max_connections += 1,
            |c| c.limits.header_read_timeout_ms += 1,
            |c| c.limits.max_header_bytes += 1,
            |c| c.limits.connect_timeout_ms += 1,
        ];
        for (i, change) in restarts.iter().enumerate() {
            let mut c = base.clone();
            change(&mut c);
            assert_ne!(
                base.restart_fingerprint(),
                c.restart_fingerprint(),
                "restart field {i}"
            );
        }
    }
}
