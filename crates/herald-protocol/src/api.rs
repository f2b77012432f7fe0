//! Ingest HTTP API bodies (PROTOCOL.md section 8), shared by ingest (server)
//! and the gateway (client).

use crate::ChannelName;
use crate::server::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/channels/{channel}/messages` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryPage {
    /// Messages with seq > `after`, in seq order, at most `limit`.
    pub messages: Vec<Message>,
    /// The channel's last seq (0 when it never had a message).
    pub last_seq: u64,
}

/// `POST /v1/publish` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishAnswer {
    /// Message id.
    pub id: String,
    /// Timestamp in ms.
    pub ts: i64,
    /// One seq per channel.
    pub seqs: BTreeMap<String, u64>,
}

/// `POST /v1/positions` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionsRequest {
    /// At most [`MAX_POSITIONS`] channels.
    pub channels: Vec<ChannelName>,
}

/// `POST /v1/positions` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PositionsAnswer {
    /// Each channel's last seq.
    pub positions: BTreeMap<String, u64>,
}

/// Most channels in one positions request.
pub const MAX_POSITIONS: usize = 1000;
/// Largest history page.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
/// Default history page.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
