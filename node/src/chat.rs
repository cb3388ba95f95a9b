//! Chat mode (`--chat`, off by default): an authenticated client sends
//! [`ChatFrame`] `{"to": "bob", "message": "…"}` over its own socket and the node sends it to
//! `bob` with `from` = the session's verified key — the key the session was admitted as (behind
//! proxies, the proxy's verified key), never anything in the payload ([`ChatFrame`] refuses
//! unknown fields, `from` included).
//!
//! A text frame that is not a JSON object naming `to` is ignored, as before chat mode existed.
//! Every refusal is an `error` frame to the sender and the session stays open: chat mode off, a
//! bad frame, an invalid recipient, a recipient another node owns (a node delivers chat only to
//! users it owns; across nodes use the server API), a send that was not stored.

use std::sync::Arc;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use wscluster_ring::contract::{ChatFrame, MessageKind, validate_key};

use crate::ownership::Ownership;
use crate::state::{NodeState, now_ms};

/// What the session answers a text frame from `from`: `None` (nothing to say: ignored, or
/// sent), or an `error` frame.
pub async fn on_text(state: &Arc<NodeState>, from: &str, text: &str) -> Option<Utf8Bytes> {
    if !names_a_recipient(text) {
        return None;
    }
    let refusal = match decide(state, text) {
        Ok(frame) => match state
            .send(frame.to, frame.message, Some(from.to_owned()))
            .await
        {
            Ok(_) => return None,
            Err(e) => {
                state.metrics.error(e.code());
                format!("the message was not stored ({}); retry", e.code())
            }
        },
        Err(refusal) => {
            state.metrics.error("chat-refused");
            refusal
        }
    };
    Some(state.client_message(MessageKind::Error, refusal, now_ms(), None, None))
}

/// Whether a text frame is meant as a chat frame: a JSON object with a `to` field.
fn names_a_recipient(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && serde_json::from_str::<Value>(text).is_ok_and(|v| v.get("to").is_some())
}

/// The frame, if chat mode is on and the frame is one this node delivers; else why not.
fn decide(state: &NodeState, text: &str) -> Result<ChatFrame, String> {
    if !state.config.chat {
        return Err("chat is off on this node: messages to other users are not sent".into());
    }
    let frame: ChatFrame = serde_json::from_str(text).map_err(|e| {
        format!("a chat frame is {{\"to\": \"<userId>\", \"message\": \"…\"}} only: {e}")
    })?;
    validate_key(&frame.to).map_err(|e| format!("\"to\" is not a valid user id: {e}"))?;
    match state.ring.decide(&state.id, &frame.to) {
        Ownership::Owned { .. } => Ok(frame),
        _ => Err(format!(
            "{:?} is not served by this node; chat reaches the users of the sender's node only",
            frame.to
        )),
    }
}
