//! Webhook events: the body herald POSTs to an application's endpoint, its
//! signature, and the events gateways hand to ingest (`POST /v1/events`).
//! docs/backend.md is the reference; the Python and Node SDKs parse and
//! verify exactly this.
//!
//! ```json
//! {"id":"ev_...","type":"publish","ts":1767225600123,"channel":"chat_42",
//!  "message":{"channel":"chat_42","seq":7,"id":"m_...","ts":..,"from":"visitor:1","data":{..}}}
//! {"id":"ev_...","type":"join","ts":..,"channel":"chat_42","client":{"sub":..,"conn":..,"info":..}}
//! {"id":"ev_...","type":"connect","ts":..,"client":{..}}
//! ```

use crate::ChannelName;
use crate::server::{ClientInfo, Message};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The request header carrying the signature.
pub const SIGNATURE_HEADER: &str = "herald-signature";
/// The request header carrying the event id (also in the body), so a
/// receiver can drop a duplicate before parsing.
pub const EVENT_ID_HEADER: &str = "herald-event-id";
/// Most events in one `POST /v1/events` body.
pub const MAX_EVENTS_PER_BATCH: usize = 1000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A client published a message over the WebSocket (after commit).
    Publish,
    /// A client subscribed to a channel.
    Join,
    /// A client unsubscribed or disconnected.
    Leave,
    /// A client connected (its token verified).
    Connect,
    /// A client's connection ended.
    Disconnect,
}

impl EventKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EventKind; 5] = [
        EventKind::Publish,
        EventKind::Join,
        EventKind::Leave,
        EventKind::Connect,
        EventKind::Disconnect,
    ];

    /// The name used in config and bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Publish => "publish",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
        }
    }

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether events of this kind belong to a channel.
    pub const fn has_channel(self) -> bool {
        matches!(
            self,
            EventKind::Publish | EventKind::Join | EventKind::Leave
        )
    }
}

/// One webhook event, as POSTed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// `ev_...`: the same on every delivery attempt, for dedup.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When, in ms since the epoch (the message's `ts` for publish).
    pub ts: i64,
    /// The channel (publish, join, leave).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub channel: Option<ChannelName>,
    /// The committed message (publish), as a history item.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<Message>,
    /// The client (join, leave, connect, disconnect).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client: Option<ClientInfo>,
}

impl Event {
    /// The event of a committed client publish in `message.channel`. Its id
    /// is derived from the message id and channel, so it is the same
    /// whichever ingest writes or delivers it.
    pub fn publish(message: Message) -> Self {
        Event {
            id: format!("ev_{}.{}", message.id, message.channel),
            kind: EventKind::Publish,
            ts: message.ts,
            channel: Some(message.channel.clone()),
            message: Some(message),
            client: None,
        }
    }

    /// The JSON body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("webhook event serializes")
    }
}

/// An event reported by a gateway (`POST /v1/events` item): ingest stores
/// one delivery per endpoint that wants it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayEvent {
    /// `ev_...`, made by the gateway: a batch sent twice (its first answer
    /// lost) stores each event once.
    pub id: String,
    /// join, leave, connect or disconnect.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When it happened on the gateway, ms since the epoch.
    pub ts: i64,
    /// The channel, for join and leave.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub channel: Option<ChannelName>,
    /// The client.
    pub client: ClientInfo,
}

/// `POST /v1/events` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// At most [`MAX_EVENTS_PER_BATCH`].
    pub events: Vec<GatewayEvent>,
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`, lower-case hex.
pub fn hmac_sha256_hex(key: &[u8], msg: &[&[u8]]) -> String {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for m in msg {
        inner.update(m);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Herald-Signature` value for `body` sent at `t` (Unix seconds):
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`, one `v1` per
/// secret (during a rotation, the new and the old).
pub fn signature_header(secrets: &[impl AsRef<[u8]>], t: i64, body: &[u8]) -> String {
    let ts = t.to_string();
    let mut out = format!("t={ts}");
    for s in secrets {
        out.push_str(",v1=");
        out.push_str(&hmac_sha256_hex(s.as_ref(), &[ts.as_bytes(), b".", body]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231 test cases 1, 2 and 6 (a key longer than the block).
        assert_eq!(
            hmac_sha256_hex(&[0x0b; 20], &[b"Hi There"]),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hmac_sha256_hex(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hmac_sha256_hex(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signature_header_signs_timestamp_dot_body_per_secret() {
        let h = signature_header(&["new", "old"], 1_767_225_600, b"{}");
        let want_new = hmac_sha256_hex(b"new", &[b"1767225600.{}"]);
        let want_old = hmac_sha256_hex(b"old", &[b"1767225600.{}"]);
        assert_eq!(h, format!("t=1767225600,v1={want_new},v1={want_old}"));
    }

    #[test]
    fn publish_event_body_is_the_documented_shape() {
        let m = Message {
            kind: None,
            channel: ChannelName::new("chat_42").unwrap(),
            seq: 7,
            id: "m_1".into(),
            ts: 1000,
            from: Some("visitor:1".into()),
            data: crate::JsonData::from_value(&serde_json::json!({"content": "hi"})),
        };
        let v: serde_json::Value = serde_json::from_str(&Event::publish(m).to_body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "ev_m_1.chat_42", "type": "publish", "ts": 1000,
                "channel": "chat_42",
                "message": {"channel": "chat_42", "seq": 7, "id": "m_1", "ts": 1000,
                    "from": "visitor:1", "data": {"content": "hi"}}})
        );
    }

    #[test]
    fn event_kinds_parse_their_names_only() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("Publish"), None);
        assert_eq!(EventKind::parse(""), None);
    }
}
