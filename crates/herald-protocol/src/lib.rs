//! Herald's wire formats, with no I/O: every byte format in one crate.
//!
//! # Layout
//! - [`names`]: channel names, grant patterns (PROTOCOL.md section 1).
//! - [`codes`]: error codes and close codes (sections 5 and 6).
//! - [`data`]: application `data` as validated JSON text, MessagePack transcoding.
//! - [`client`]: client requests, decoded from either encoding (section 4).
//! - [`server`]: server frames (section 5).
//! - [`api`]: ingest HTTP bodies (section 8).
//! - [`bus`]: the bus envelope (section 9).
//! - [`webhook`]: webhook event bodies and their signature (docs/backend.md).

pub mod api;
pub mod bus;
pub mod client;
pub mod codes;
pub mod data;
pub mod names;
pub mod server;
pub mod webhook;

#[cfg(test)]
mod fuzz;

pub use client::{DecodeLimits, Op, Request, RequestError, decode_request, encode_request};
pub use codes::{CloseCode, ErrorCode};
pub use data::{DataError, JsonData};
pub use names::{ChannelName, NameError, Pattern};

/// The WebSocket subprotocol (PROTOCOL.md section 5a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `herald.json`: one JSON object per text frame.
    Json,
    /// `herald.msgpack`: one MessagePack map per binary frame.
    Msgpack,
}

impl Encoding {
    /// The subprotocol name.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Self::Json => "herald.json",
            Self::Msgpack => "herald.msgpack",
        }
    }

    /// Parses a subprotocol name.
    pub fn from_subprotocol(s: &str) -> Option<Self> {
        match s.trim() {
            "herald.json" => Some(Self::Json),
            "herald.msgpack" => Some(Self::Msgpack),
            _ => None,
        }
    }

    /// Metrics label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Msgpack => "msgpack",
        }
    }

    /// Index for per-encoding caches (0 or 1).
    pub const fn index(self) -> usize {
        match self {
            Self::Json => 0,
            Self::Msgpack => 1,
        }
    }
}

/// Encodes a frame: JSON text, or a MessagePack map with field names.
pub fn encode<T: serde::Serialize + ?Sized>(enc: Encoding, frame: &T) -> Vec<u8> {
    match enc {
        Encoding::Json => {
            serde_json::to_vec(frame).expect("server frames always serialize to JSON")
        }
        Encoding::Msgpack => {
            rmp_serde::to_vec_named(frame).expect("server frames always serialize to MessagePack")
        }
    }
}

/// Current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
