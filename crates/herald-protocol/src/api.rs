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

/// Percent-decodes a URL component: a channel in a path, or a query value
/// (`query`: `+` is a space there). Invalid escapes stay as written;
/// invalid UTF-8 becomes U+FFFD (and then fails channel validation).
pub fn percent_decode(s: &str, query: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', None) if query => out.push(b' '),
            (c, None) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes_and_keeps_bad_ones() {
        assert_eq!(percent_decode("chat%5F1", false), "chat_1");
        assert_eq!(percent_decode("a%", false), "a%");
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(percent_decode("%zz%4", true), "%zz%4");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(
            percent_decode("chat_1%3A5%2Cchat_2%3A0", true),
            "chat_1:5,chat_2:0"
        );
    }
}
