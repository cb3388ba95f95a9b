//! Wire contracts between wscluster processes and with clients, other than the snapshot itself.
//!
//! * [`ResetFrame`] and the `CLOSE_*` codes: what a client sees when it must reconnect.
//! * [`ClientMessage`]: what the reference node sends to its clients.
//! * [`stream`]: the operator's ring stream that proxies and nodes subscribe to.
//! * [`bus`]: the RabbitMQ events (broadcasts and resets).
//! * [`validate_key`]: the rules for a business key, shared by proxy and node.
//! * [`percent_decode`] / [`percent_encode`]: the one strict URL-component codec.
//! * [`split_target`]: a request target's path and query, as proxy and node both read them.
//!
//! All are plain serde types; `docs/architecture.md` documents them for non-Rust peers.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Close code after a reset frame with reason `rebalance`: the key moved to another node;
/// reconnect after `retryAfterMs`. Application codes are 4000-4999 (RFC 6455 §7.4.2).
pub const CLOSE_REBALANCE: u16 = 4000;
/// Close code after a reset frame with reason `drain`: the node is leaving; reconnect after
/// `retryAfterMs`.
pub const CLOSE_DRAIN: u16 = 4001;
/// Close code when a newer connection for the same key replaced this one on the same node.
/// Do not reconnect automatically (the other connection is yours).
pub const CLOSE_REPLACED: u16 = 4002;
/// Close code after a reset frame with reason `unavailable`: the node could not serve the session
/// now (its mailbox read failed during the replay), so it did not go live with a gap. Retryable:
/// reconnect after `retryAfterMs` with the same `since` and `epoch`.
pub const CLOSE_UNAVAILABLE: u16 = 4005;
/// Close code for a protocol-level misuse the node refuses (for example a binary frame where
/// text is expected). Standard codes are used where RFC 6455 has one: 1007 invalid UTF-8,
/// 1009 message too big.
pub const CLOSE_POLICY: u16 = 4008;

/// Why a client is asked to reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetReason {
    /// The key's owner changed; reconnect and the proxy routes you to the new owner.
    Rebalance,
    /// The node is draining (scale-down or shutdown).
    Drain,
    /// The node cannot serve the session right now (a mailbox read failed during the replay);
    /// reconnect with the same `since` and `epoch`.
    Unavailable,
}

impl ResetReason {
    /// The close code that follows the reset frame.
    pub fn close_code(self) -> u16 {
        match self {
            ResetReason::Rebalance => CLOSE_REBALANCE,
            ResetReason::Drain => CLOSE_DRAIN,
            ResetReason::Unavailable => CLOSE_UNAVAILABLE,
        }
    }

    /// The label used in metrics and close-frame reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Rebalance => "rebalance",
            ResetReason::Drain => "drain",
            ResetReason::Unavailable => "unavailable",
        }
    }
}

/// The text frame sent before a reset close frame:
/// `{"type":"reset","reason":"rebalance","retryAfterMs":250,"ringVersion":8}`.
///
/// A client that sees it waits `retryAfterMs` and reconnects with `?since=<last offset>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetFrame {
    /// Always `"reset"`.
    #[serde(rename = "type")]
    pub kind: ResetTag,
    /// Why.
    pub reason: ResetReason,
    /// How long to wait before reconnecting, spread by the sender to avoid a reconnect storm.
    pub retry_after_ms: u64,
    /// The ring version that caused the reset, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_version: Option<u64>,
}

/// The constant tag `"reset"` of a [`ResetFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResetTag {
    /// `"reset"`.
    #[default]
    Reset,
}

impl ResetFrame {
    /// A reset frame.
    pub fn new(reason: ResetReason, retry_after_ms: u64, ring_version: Option<u64>) -> Self {
        ResetFrame {
            kind: ResetTag::Reset,
            reason,
            retry_after_ms,
            ring_version,
        }
    }

    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("reset frame serialises: {e}"))
    }
}

/// Kinds of [`ClientMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A message sent to this user with `/send`; carries an offset.
    Message,
    /// A broadcast to every user.
    Broadcast,
    /// Information from the server (welcome, replay finished).
    System,
    /// An error about this session's input (bad `since`, for example); the session goes on.
    Error,
}

/// What the reference node sends to a client, in the spirit of the seed's message
/// (`type`, `content`, `server`, `serverUserCount`, `timestamp`) plus the per-user `offset` a
/// client resumes from with `?since=<offset>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientMessage {
    /// What kind of message this is.
    #[serde(rename = "type")]
    pub kind: MessageKind,
    /// The payload.
    pub content: String,
    /// Id of the node that delivered it.
    pub server: String,
    /// Users connected to that node when it was sent.
    pub server_user_count: u64,
    /// Milliseconds since the Unix epoch when the node accepted the message.
    pub timestamp: u64,
    /// The user's mailbox offset (1, 2, 3, … within its epoch) for `message`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The epoch of the user's mailbox stream the offset belongs to, for `message`: a random id
    /// made with the stream and made anew whenever the stream is (expiry, data loss, another
    /// node's in-memory mailbox). Offsets only compare within one epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The sender's verified key, for a `message` sent by another user in chat mode; never taken
    /// from the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The frame a node sends once a session is live (after any replay):
/// `{"type":"ready","server":"chat-node-1","epoch":"9f…","offset":42,"recovered":true}`.
///
/// `recovered` is false when the client asked to resume (`since` > 0) but the node could not
/// give it everything after `since`: its `epoch` differs from the stream's (or it sent none), or
/// `since` is no longer kept. The application then knows it may have missed messages. `epoch` and
/// `offset` are the stream's current epoch and latest offset, to resume from next time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadyFrame {
    /// Always `"ready"`.
    #[serde(rename = "type")]
    pub kind: ReadyTag,
    /// Id of the node serving the session.
    pub server: String,
    /// The user's stream epoch now.
    pub epoch: String,
    /// The latest offset of that epoch (0 for an empty stream).
    pub offset: u64,
    /// Whether everything after the client's `since` was delivered before this frame.
    pub recovered: bool,
}

/// The constant tag `"ready"` of a [`ReadyFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadyTag {
    /// `"ready"`.
    #[default]
    Ready,
}

impl ReadyFrame {
    /// A ready frame.
    pub fn new(
        server: impl Into<String>,
        epoch: impl Into<String>,
        offset: u64,
        recovered: bool,
    ) -> Self {
        ReadyFrame {
            kind: ReadyTag::Ready,
            server: server.into(),
            epoch: epoch.into(),
            offset,
            recovered,
        }
    }

    /// The frame's JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("ready frame serialises: {e}"))
    }
}

/// What a client sends over its socket in chat mode (the node's `--chat`):
/// `{"to": "bob", "message": "hi"}`. The node delivers `message` to `to` as a `message` whose
/// `from` is the sender's verified key. A frame naming its own `from` (or any other field) is
/// refused: the sender is never taken from the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatFrame {
    /// The recipient's key.
    pub to: String,
    /// The text delivered.
    pub message: String,
}

/// Prefix of every header wscluster sets between its own processes. A proxy removes every
/// request header with this prefix that a client sent before it sets its own.
pub const INTERNAL_HEADER_PREFIX: &str = "x-wscluster-";

/// Request header a proxy sets on every request it routes by a client's key: the business key it
/// verified (percent-encoded with [`percent_encode`]). A node behind proxies serves exactly this
/// key and refuses a path, query or body key that differs.
pub const KEY_HEADER: &str = "x-wscluster-key";

/// Request header a proxy sets on every request it forwards to a member: the cluster's proxy
/// secret, which the member compares in constant time before it trusts [`KEY_HEADER`].
pub const PROXY_SECRET_HEADER: &str = "x-wscluster-proxy-secret";

/// Request header a proxy sets on a chat send: the sender's verified key, recorded as the
/// message's `from`.
pub const SENDER_HEADER: &str = "x-wscluster-sender";

/// Request header a proxy sets on every request it routes to a member: the ring version it
/// routed with. A node that does not own the key under an older ring waits briefly for that
/// version before refusing, so a client moved by a new ring is not bounced by a new owner that
/// has not applied it yet. Proxies overwrite any value a client sent.
pub const RING_VERSION_HEADER: &str = "x-wscluster-ring-version";

/// A request target (origin form, RFC 9112 §3.2.1) cut into the parts a business key is read
/// from: see [`split_target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTarget<'t> {
    /// The path: up to the first `?` or `#`.
    pub path: &'t str,
    /// The query, without its `?`: up to the next `#`. `None` without a `?`; `Some("")` for a
    /// bare `?`.
    pub query: Option<&'t str>,
    /// Path and query as sent, without the fragment: what is forwarded to a member.
    pub path_and_query: &'t str,
}

/// Splits a request target into path and query the way `http::Uri` does (the node's parser):
/// the path ends at the first `?` or `#`, the query at the next `#`, and a fragment, which
/// clients must not send (RFC 9110 §7.1) but some do, is dropped. The proxy reads keys from
/// raw request heads with this, so proxy and node agree on a target's key (and so on its
/// owner) whichever parser read it.
pub fn split_target(target: &str) -> RequestTarget<'_> {
    let path_and_query = target.split_once('#').map_or(target, |(before, _)| before);
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    RequestTarget {
        path,
        query,
        path_and_query,
    }
}

/// Longest business key accepted, in bytes. Keys are user ids, room ids and the like; 128 bytes
/// holds a UUID with a prefix or an email address, and bounds the memory a key costs per
/// connection, per presence entry and per mailbox name.
pub const MAX_KEY_LEN: usize = 128;

/// Why a business key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("the key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] bytes.
    #[error("the key is {len} bytes; at most {max} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key has a control character (including newline and tab).
    #[error("the key contains a control character")]
    ControlCharacter,
}

/// Checks a business key: 1 to [`MAX_KEY_LEN`] bytes of UTF-8 without control characters.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    if key.chars().any(char::is_control) {
        return Err(KeyError::ControlCharacter);
    }
    Ok(())
}

/// Why a URL component does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A `%` not followed by two characters.
    #[error("truncated percent escape")]
    TruncatedEscape,
    /// A `%` followed by something other than two hex digits.
    #[error("bad percent escape")]
    BadEscape,
    /// The decoded bytes are not UTF-8.
    #[error("not valid UTF-8 after percent-decoding")]
    NotUtf8,
}

impl DecodeError {
    /// The message, for error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::TruncatedEscape => "truncated percent escape",
            DecodeError::BadEscape => "bad percent escape",
            DecodeError::NotUtf8 => "not valid UTF-8 after percent-decoding",
        }
    }
}

/// Percent-decodes one URL component (RFC 3986 §2.1), strictly: a malformed escape or invalid
/// UTF-8 is an error, never passed through or replaced. `plus_is_space` decodes `+` as a space,
/// as `application/x-www-form-urlencoded` query strings do; paths and cookies keep `+`.
///
/// Proxy and node both take the business key from the request URL, so they must decode it the
/// same way or they would disagree on the key (and so on its owner): this is the one decoder.
pub fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, DecodeError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(DecodeError::TruncatedEscape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| DecodeError::BadEscape)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(DecodeError::BadEscape);
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| DecodeError::BadEscape)?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

/// Percent-encodes one URL component (RFC 3986 §2.1): every byte but the unreserved characters
/// (§2.3: ASCII letters, digits, `-._~`) becomes `%XX` with upper-case hex digits.
///
/// The inverse of [`percent_decode`] with either `plus_is_space` (the output holds no `+`), so
/// every string survives a round trip through a path segment or a query value. This is the one
/// encoder, used by whoever builds a URL another wscluster process decodes.
pub fn percent_encode(raw: &str) -> String {
    const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX_DIGITS[usize::from(b >> 4)]));
            out.push(char::from(HEX_DIGITS[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// The server API: calls from a user's own backends (not end users) to send to a user, to
/// broadcast and to look up presence, authenticated by API keys (`Authorization: Bearer`).
/// Proxies serve it on their API port and route each call by its target user; nodes answer it.
/// Both read a path with [`api::Route::parse`], so they agree on the target.
pub mod api {
    use serde::{Deserialize, Serialize};

    use super::{DecodeError, percent_decode, percent_encode};

    /// Every server API path starts with this.
    pub const PREFIX: &str = "/api/v1/";
    /// `POST`: broadcast to every connected user.
    pub const BROADCAST_PATH: &str = "/api/v1/broadcast";

    /// A server API call, by path.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Route {
        /// `POST /api/v1/users/{userId}/messages`: send to one user.
        UserMessages(String),
        /// `GET /api/v1/users/{userId}/presence`: is the user connected, where, how often.
        UserPresence(String),
        /// `POST /api/v1/broadcast`.
        Broadcast,
    }

    /// Why a server API path is refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum RouteError {
        /// Not a server API path at all.
        #[error("no such server API path")]
        Unknown,
        /// The user segment does not decode.
        #[error("the user id in the path: {0}")]
        BadUser(DecodeError),
    }

    impl Route {
        /// Reads a request path (without its query).
        pub fn parse(path: &str) -> Result<Route, RouteError> {
            if path == BROADCAST_PATH {
                return Ok(Route::Broadcast);
            }
            let rest = path
                .strip_prefix("/api/v1/users/")
                .ok_or(RouteError::Unknown)?;
            let (user, tail) = rest.split_once('/').ok_or(RouteError::Unknown)?;
            let build: fn(String) -> Route = match tail {
                "messages" => Route::UserMessages,
                "presence" => Route::UserPresence,
                _ => return Err(RouteError::Unknown),
            };
            if user.is_empty() {
                return Err(RouteError::Unknown);
            }
            let user = percent_decode(user, false).map_err(RouteError::BadUser)?;
            Ok(build(user))
        }

        /// The path of this call.
        pub fn path(&self) -> String {
            match self {
                Route::UserMessages(u) => format!("/api/v1/users/{}/messages", percent_encode(u)),
                Route::UserPresence(u) => format!("/api/v1/users/{}/presence", percent_encode(u)),
                Route::Broadcast => BROADCAST_PATH.to_string(),
            }
        }

        /// The user the call is routed by: its target (`None` for a broadcast, which any active
        /// member takes).
        pub fn user(&self) -> Option<&str> {
            match self {
                Route::UserMessages(u) | Route::UserPresence(u) => Some(u),
                Route::Broadcast => None,
            }
        }
    }

    /// Body of a send or a broadcast: `{"message": "hi"}`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MessageRequest {
        /// The text delivered to the user(s).
        pub message: String,
    }

    /// The answer to a send that was stored (200 when also queued to a live session, 202 when
    /// stored only). A send that was neither stored nor delivered never gets a receipt: it is
    /// answered with a 5xx [`ErrorBody`].
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct SendReceipt {
        /// Always true: the message is in the user's mailbox.
        pub stored: bool,
        /// Whether it was queued to at least one live session.
        pub delivered: bool,
        /// How many live sessions it was queued to.
        pub sessions: u64,
        /// The mailbox epoch it was stored under.
        pub epoch: String,
        /// Its offset within that epoch.
        pub offset: u64,
    }

    /// The answer to an accepted broadcast (202): the message bus has it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BroadcastReceipt {
        /// The broadcast's id, unique across nodes and restarts.
        pub id: String,
    }

    /// The answer to a presence look-up.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Presence {
        /// Whether the user has a live session anywhere.
        pub online: bool,
        /// The node holding its sessions, when online.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub node: Option<String>,
        /// Live sessions of the user on that node.
        pub sessions: u64,
    }

    /// Error code (503): the user's mailbox could not store the message in time; nothing was
    /// acknowledged, retry.
    pub const ERROR_MAILBOX_UNAVAILABLE: &str = "mailbox-unavailable";
    /// Error code (503): the message bus did not confirm a broadcast; retry.
    pub const ERROR_BUS_UNAVAILABLE: &str = "bus-unavailable";
    /// Error code (503): presence could not be read in time; retry.
    pub const ERROR_PRESENCE_UNAVAILABLE: &str = "presence-unavailable";
    /// Error code (503): another backend failed; retry.
    pub const ERROR_BACKEND_UNAVAILABLE: &str = "backend-unavailable";
    /// Error code (429): the key already has the most sessions allowed on its node and the
    /// node's policy is `refuse`.
    pub const ERROR_TOO_MANY_SESSIONS: &str = "too-many-sessions";
    /// Error code (400): the `since` or `epoch` query parameter of a connect is malformed.
    pub const ERROR_BAD_RESUME: &str = "bad-resume";

    /// Every error answer of the server API (and of the node's other routes):
    /// `{"error": "<stable code>", "message": "<for people>"}`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ErrorBody {
        /// A stable, machine-readable code (`mailbox-unavailable`, `unauthorized`, …).
        pub error: String,
        /// What happened, for people.
        pub message: String,
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn paths_and_routes_round_trip_with_any_user_id() {
            for user in ["alice", "a b/c?d#e%", "é", "x".repeat(128).as_str()] {
                for route in [
                    Route::UserMessages(user.to_string()),
                    Route::UserPresence(user.to_string()),
                ] {
                    assert_eq!(Route::parse(&route.path()), Ok(route.clone()));
                    assert_eq!(route.user(), Some(user));
                }
            }
            assert_eq!(Route::parse("/api/v1/broadcast"), Ok(Route::Broadcast));
            assert_eq!(Route::Broadcast.user(), None);
        }

        #[test]
        fn other_paths_are_not_server_api_calls() {
            for path in [
                "/api/v1/users//messages",
                "/api/v1/users/alice",
                "/api/v1/users/alice/messages/x",
                "/api/v1/users/alice/other",
                "/api/v2/broadcast",
                "/send",
                "/api/v1/broadcast/",
            ] {
                assert_eq!(Route::parse(path), Err(RouteError::Unknown), "{path}");
            }
            assert!(matches!(
                Route::parse("/api/v1/users/%zz/messages"),
                Err(RouteError::BadUser(_))
            ));
        }
    }
}

pub mod stream {
    //! The ring stream: how the operator (or local mode's ring authority) hands ring snapshots to
    //! proxies and nodes.
    //!
    //! * `GET /v1/clusters/{namespace}/{name}/ring/watch?subscriber={id}&kind={proxy|node}` with
    //!   `Authorization: Bearer {token}` answers `200` with `Content-Type: application/x-ndjson`
    //!   and never ends on its own: one [`StreamEvent`] per line, the current snapshot first,
    //!   then every new one, and a heartbeat every [`HEARTBEAT_INTERVAL_MS`] milliseconds.
    //!   `401` for a missing or wrong token, `404` for an unknown cluster.
    //! * `POST /v1/clusters/{namespace}/{name}/ring/ack` with the same token and an [`Ack`] body
    //!   reports the version a subscriber applied (`204`).
    //! * `GET /v1/clusters/{namespace}/{name}/ring` answers the current snapshot once.
    //!
    //! A subscriber that hears nothing for [`SILENCE_TIMEOUT_MS`] reconnects with backoff and
    //! keeps using its last ring meanwhile; it ignores snapshots that are not newer.

    use serde::{Deserialize, Serialize};

    use crate::error::SnapshotError;
    use crate::snapshot::RingSnapshot;

    /// Interval between heartbeats on an idle stream.
    pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;
    /// Silence after which a subscriber considers the stream dead: three missed heartbeats.
    pub const SILENCE_TIMEOUT_MS: u64 = 3 * HEARTBEAT_INTERVAL_MS;
    /// Longest line a subscriber accepts (a 10,000-member snapshot is about 1 MiB).
    pub const MAX_LINE_BYTES: usize = 4 << 20;

    /// The path of the watch endpoint for a cluster id `namespace/name`.
    pub fn watch_path(cluster_id: &str) -> String {
        format!("/v1/clusters/{cluster_id}/ring/watch")
    }

    /// The path of the ack endpoint for a cluster id `namespace/name`.
    pub fn ack_path(cluster_id: &str) -> String {
        format!("/v1/clusters/{cluster_id}/ring/ack")
    }

    /// The path of the one-shot snapshot endpoint for a cluster id `namespace/name`.
    pub fn snapshot_path(cluster_id: &str) -> String {
        format!("/v1/clusters/{cluster_id}/ring")
    }

    /// Who subscribes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum SubscriberKind {
        /// A wscluster proxy.
        Proxy,
        /// A node (learns the ring to refuse keys it does not own).
        Node,
    }

    impl SubscriberKind {
        /// The query-string form.
        pub fn as_str(self) -> &'static str {
            match self {
                SubscriberKind::Proxy => "proxy",
                SubscriberKind::Node => "node",
            }
        }
    }

    /// One line of the ring stream.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
    pub enum StreamEvent {
        /// A ring to apply if newer than the one in use.
        Snapshot {
            /// The ring.
            snapshot: RingSnapshot,
        },
        /// The stream is alive; `version` is the newest version the server has.
        Heartbeat {
            /// The server's current version.
            version: u64,
        },
    }

    impl StreamEvent {
        /// Parses and validates one line (without its newline).
        pub fn parse_line(line: &[u8]) -> Result<StreamEvent, SnapshotError> {
            if line.len() > MAX_LINE_BYTES {
                return Err(SnapshotError::Parse(format!(
                    "line of {} bytes is too long",
                    line.len()
                )));
            }
            let event: StreamEvent =
                serde_json::from_slice(line).map_err(|e| SnapshotError::Parse(e.to_string()))?;
            if let StreamEvent::Snapshot { snapshot } = &event {
                snapshot.validate()?;
            }
            Ok(event)
        }

        /// The event as one line, newline included.
        pub fn to_line(&self) -> String {
            let mut line = serde_json::to_string(self)
                .unwrap_or_else(|e| unreachable!("event serialises: {e}"));
            line.push('\n');
            line
        }
    }

    /// Body of the ack endpoint: "subscriber X applied version V".
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Ack {
        /// The subscriber's id (pod name, or a process id in local mode).
        pub subscriber: String,
        /// Proxy or node.
        pub kind: SubscriberKind,
        /// The ring version it now routes with.
        pub version: u64,
    }
}

pub mod bus {
    //! RabbitMQ events. Each cluster has one topic exchange, [`exchange_name`]; messages are JSON
    //! with `content_type: application/json`.
    //!
    //! * Broadcasts: routing key [`BROADCAST_ROUTING_KEY`], published persistent with publisher
    //!   confirms. Every node binds its own durable queue (named by cluster and member id, with
    //!   an expiry), so each node receives each broadcast once — also one published while it
    //!   was briefly away — and delivers it to its local users.
    //! * Resets: routing key `reset.{member id}` ([`reset_routing_key`]), published by a proxy for
    //!   the old owner of moved keys; that node sends those users a reset frame and closes them.

    use serde::{Deserialize, Serialize};

    use crate::contract::ResetReason;

    /// Routing key of broadcasts.
    pub const BROADCAST_ROUTING_KEY: &str = "broadcast";
    /// Most keys in one reset event; larger sets are split so no message is huge.
    pub const MAX_RESET_KEYS_PER_EVENT: usize = 1_000;

    /// Largest `retryAfterMs` a node passes on from a reset event; a larger value is clamped
    /// to it. Pacing spreads a rebalance over a few seconds; a minute is far beyond any sane
    /// pacing window, so a malformed or hostile event cannot park clients for hours.
    pub const MAX_RETRY_AFTER_MS: u64 = 60_000;

    /// The topic exchange of a cluster: `wscluster.{namespace}.{name}`. AMQP exchange names
    /// allow letters, digits, `-`, `_`, `.` and `:`; anything else becomes `_`.
    pub fn exchange_name(cluster_id: &str) -> String {
        let mut name = String::with_capacity(10 + cluster_id.len());
        name.push_str("wscluster.");
        name.extend(cluster_id.chars().map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') => c,
            _ => '_',
        }));
        name
    }

    /// The routing key of reset events for a member.
    pub fn reset_routing_key(member_id: &str) -> String {
        format!("reset.{member_id}")
    }

    /// A broadcast to every user of the cluster.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct BroadcastEvent {
        /// Unique id of the broadcast, so a node can drop a redelivered copy.
        pub id: String,
        /// The node that accepted the `/broadcast` request.
        pub origin: String,
        /// The payload.
        pub content: String,
        /// Milliseconds since the Unix epoch when it was accepted.
        pub timestamp: u64,
    }

    /// "These keys moved away from this member": the member resets them.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct ResetEvent {
        /// The member that held the keys (the old owner).
        pub member: String,
        /// The ring version under which they moved.
        pub ring_version: u64,
        /// Why.
        pub reason: ResetReason,
        /// The keys, at most [`MAX_RESET_KEYS_PER_EVENT`].
        pub keys: Vec<String>,
        /// How long clients should wait before reconnecting.
        pub retry_after_ms: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::stream::StreamEvent;
    use super::*;
    use crate::snapshot::{Member, RingSnapshot};

    #[test]
    fn reset_frame_has_the_documented_shape() {
        let f = ResetFrame::new(ResetReason::Rebalance, 250, Some(8));
        assert_eq!(
            f.to_json(),
            r#"{"type":"reset","reason":"rebalance","retryAfterMs":250,"ringVersion":8}"#
        );
        let parsed: ResetFrame = serde_json::from_str(&f.to_json()).expect("parses");
        assert_eq!(parsed, f);
        assert_eq!(ResetReason::Drain.close_code(), 4001);
    }

    #[test]
    fn a_target_splits_at_the_first_question_mark_and_drops_the_fragment() {
        let cases: [(&str, &str, Option<&str>, &str); 8] = [
            ("/connect/alice", "/connect/alice", None, "/connect/alice"),
            (
                "/ws?userId=a&b=c",
                "/ws",
                Some("userId=a&b=c"),
                "/ws?userId=a&b=c",
            ),
            ("/ws?", "/ws", Some(""), "/ws?"),
            ("/ws?a=1?b=2", "/ws", Some("a=1?b=2"), "/ws?a=1?b=2"),
            ("/connect/alice#x", "/connect/alice", None, "/connect/alice"),
            ("/ws?userId=a#b", "/ws", Some("userId=a"), "/ws?userId=a"),
            ("/ws#frag?userId=a", "/ws", None, "/ws"),
            ("/", "/", None, "/"),
        ];
        for (target, path, query, path_and_query) in cases {
            assert_eq!(
                split_target(target),
                RequestTarget {
                    path,
                    query,
                    path_and_query
                },
                "{target}"
            );
        }
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(validate_key("alice"), Ok(()));
        assert_eq!(validate_key("ünïcødé-користувач"), Ok(()));
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert_eq!(validate_key("a\u{0}b"), Err(KeyError::ControlCharacter));
        assert_eq!(validate_key("a\nb"), Err(KeyError::ControlCharacter));
        assert_eq!(
            validate_key(&"x".repeat(129)),
            Err(KeyError::TooLong { len: 129, max: 128 })
        );
        assert_eq!(validate_key(&"x".repeat(128)), Ok(()));
    }

    #[test]
    fn stream_lines_round_trip_and_invalid_snapshots_are_refused() {
        let snap = RingSnapshot::new("ns/c", 3, vec![Member::active("n-0", "h:1")]);
        let line = StreamEvent::Snapshot {
            snapshot: snap.clone(),
        }
        .to_line();
        assert!(line.ends_with('\n'));
        let parsed = StreamEvent::parse_line(line.trim_end().as_bytes()).expect("parses");
        assert_eq!(parsed, StreamEvent::Snapshot { snapshot: snap });
        let hb = StreamEvent::parse_line(br#"{"type":"heartbeat","version":3}"#).expect("parses");
        assert_eq!(hb, StreamEvent::Heartbeat { version: 3 });
        let dup = br#"{"type":"snapshot","snapshot":{"clusterId":"a/b","version":1,"members":[{"id":"n","address":"h:1"},{"id":"n","address":"h:2"}]}}"#;
        assert!(StreamEvent::parse_line(dup).is_err());
        assert!(StreamEvent::parse_line(b"{\"type\":\"gossip\"}").is_err());
        assert!(StreamEvent::parse_line(b"\xff\xfe").is_err());
    }

    #[test]
    fn url_components_decode_strictly() {
        assert_eq!(percent_decode("a%20b+c", true).as_deref(), Ok("a b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Ok("a+b"));
        assert_eq!(percent_decode("%E2%9C%93", false).as_deref(), Ok("✓"));
        assert_eq!(percent_decode("%zz", false), Err(DecodeError::BadEscape));
        assert_eq!(percent_decode("%+1", false), Err(DecodeError::BadEscape));
        assert_eq!(
            percent_decode("%4", false),
            Err(DecodeError::TruncatedEscape)
        );
        assert_eq!(percent_decode("%FF", false), Err(DecodeError::NotUtf8));
        assert_eq!(percent_decode("", true).as_deref(), Ok(""));
    }

    #[test]
    fn url_components_encode_to_what_the_decoder_gives_back() {
        assert_eq!(percent_encode("u-1_a.b~Z9"), "u-1_a.b~Z9");
        assert_eq!(percent_encode("a b:c/d?é+"), "a%20b%3Ac%2Fd%3F%C3%A9%2B");
        assert_eq!(percent_encode(""), "");
        let every_ascii: String = (0u8..=127).map(char::from).collect();
        for raw in [every_ascii.as_str(), "a+b c", "✓ %41 %zz", "\u{10ffff}\0"] {
            let encoded = percent_encode(raw);
            for plus_is_space in [false, true] {
                assert_eq!(
                    percent_decode(&encoded, plus_is_space).as_deref(),
                    Ok(raw),
                    "{raw:?} survives {encoded:?}"
                );
            }
        }
    }

    #[test]
    fn exchange_names_are_amqp_safe() {
        assert_eq!(bus::exchange_name("default/chat"), "wscluster.default.chat");
        assert_eq!(bus::exchange_name("a b/c*d"), "wscluster.a_b.c_d");
        assert_eq!(bus::reset_routing_key("chat-node-2"), "reset.chat-node-2");
    }
}
