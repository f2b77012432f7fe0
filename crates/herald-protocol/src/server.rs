//! Server-to-client frames (PROTOCOL.md section 5).
//!
//! Frames are plain serde structs; [`crate::encode`] writes them in either
//! encoding. The `message` and `signal` frames, the hot path, are encoded once
//! per message and encoding and the bytes shared by every subscriber.

use crate::data::JsonData;
use crate::{ChannelName, CloseCode, ErrorCode};
use serde::Serialize;

/// One entry of `welcome.subs` and the subscribe reply's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SubResult {
    /// The channel.
    pub channel: ChannelName,
    /// The channel's last seq (0 when empty).
    pub seq: u64,
    /// With `since`/`recover=`: whether every missed message was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// With `since`/`recover=`: how many messages were replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
}

/// `{"type":"welcome",...}`.
#[derive(Debug, Serialize)]
pub struct Welcome<'a> {
    /// Always `"welcome"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// This connection's id.
    pub conn: &'a str,
    /// The node's id.
    pub node: &'a str,
    /// Seconds between server pings.
    pub heartbeat: f64,
    /// Automatic subscriptions.
    pub subs: &'a [SubResult],
}

/// A successful `reply`.
#[derive(Debug, Serialize)]
pub struct ReplyOk<'a, T: Serialize> {
    /// Always `"reply"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request's id.
    pub id: i64,
    /// The op's result.
    pub result: &'a T,
}

/// The error object of a failed reply or an ingest API error.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// PROTOCOL.md error code.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

/// A failed `reply`.
#[derive(Debug, Serialize)]
pub struct ReplyErr<'a> {
    /// Always `"reply"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request's id, absent when the request had none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The error.
    pub error: ErrorRef<'a>,
}

/// Borrowed error object.
#[derive(Debug, Serialize)]
pub struct ErrorRef<'a> {
    /// The code.
    pub code: ErrorCode,
    /// Detail.
    pub message: &'a str,
}

/// A persisted message, as delivered (`{"type":"message",...}`) and, without
/// `type`, as a history item.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    /// Always `"message"` on the wire; omitted in history items.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none", default)]
    pub kind: Option<MessageKind>,
    /// The channel.
    pub channel: ChannelName,
    /// Per-channel sequence number.
    pub seq: u64,
    /// Message id.
    pub id: String,
    /// Milliseconds since the epoch, set by ingest.
    pub ts: i64,
    /// Publisher's `sub` or the API's `from`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from: Option<String>,
    /// The payload.
    pub data: JsonData,
}

/// The constant `"message"` type tag.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
pub enum MessageKind {
    /// `"message"`.
    #[serde(rename = "message")]
    Message,
}

/// `{"type":"signal",...}`.
#[derive(Debug, Serialize)]
pub struct Signal<'a> {
    /// Always `"signal"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The channel.
    pub channel: &'a ChannelName,
    /// Sender's `sub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
    /// The payload.
    pub data: &'a JsonData,
}

/// A connected client as shown in presence.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ClientInfo {
    /// The token's `sub`.
    pub sub: String,
    /// The connection id.
    pub conn: String,
    /// The token's `info` object.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<serde_json::Value>,
}

/// `{"type":"presence","event":"join"|"leave",...}`.
#[derive(Debug, Serialize)]
pub struct PresenceEvent<'a> {
    /// Always `"presence"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The channel.
    pub channel: &'a ChannelName,
    /// `"join"` or `"leave"`.
    pub event: &'a str,
    /// Who.
    pub client: &'a ClientInfo,
}

/// `{"type":"pong","id":N}`.
#[derive(Debug, Serialize)]
pub struct Pong {
    /// Always `"pong"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The ping's id.
    pub id: i64,
}

/// `{"type":"disconnect",...}`, sent before a close frame.
#[derive(Debug, Serialize)]
pub struct Disconnect {
    /// Always `"disconnect"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The close code.
    pub code: u16,
    /// Why.
    pub reason: &'static str,
    /// Whether the client should reconnect.
    pub reconnect: bool,
}

impl Disconnect {
    /// The frame for a close code.
    pub fn new(code: CloseCode) -> Self {
        Self {
            kind: "disconnect",
            code: code.code(),
            reason: code.reason(),
            reconnect: code.reconnect(),
        }
    }
}

/// `{"type":"unsubscribed","channel":..,"reason":..}`.
#[derive(Debug, Serialize)]
pub struct Unsubscribed<'a> {
    /// Always `"unsubscribed"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The channel ended.
    pub channel: &'a ChannelName,
    /// Why (an error code, e.g. `forbidden`).
    pub reason: ErrorCode,
}

/// Result of a `publish` reply and of `POST /v1/publish` (one channel).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PublishResult {
    /// Message id.
    pub id: String,
    /// The channel's seq.
    pub seq: u64,
    /// Timestamp in ms.
    pub ts: i64,
}

/// Result of a `presence` reply and `GET .../presence`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PresenceList {
    /// Clients subscribed now.
    pub clients: Vec<ClientInfo>,
}

/// `result: {}`.
#[derive(Debug, Serialize)]
pub struct Empty {}
