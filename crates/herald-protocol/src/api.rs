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
        // Two hex digits, nothing else (`from_str_radix` alone takes a
        // leading `+`: found by fuzzing).
        let hex = (b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit())
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

/// Percent-encodes every byte outside `A-Z a-z 0-9 - . _ ~` (RFC 3986
/// unreserved): the lossless, header-safe form of a publisher identity,
/// which [`percent_decode`] (with `query = false`) turns back into the same
/// string for any UTF-8 input, control characters included.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
    out
}

/// Most entries in a `recover=` query (PROTOCOL.md section 2); more is a
/// malformed handshake, answered 400 before the upgrade.
pub const MAX_RECOVER_ENTRIES: usize = 1000;

/// Why a `recover=` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// An entry is not `channel:seq` with a valid channel and a u64 seq.
    #[error("malformed recover parameter: expected channel:seq,...")]
    Malformed,
    /// More than [`MAX_RECOVER_ENTRIES`] entries.
    #[error("recover parameter names more than {MAX_RECOVER_ENTRIES} channels")]
    TooMany,
}

/// Parses a decoded `recover=` value: `channel:seq,channel:seq` (empty
/// entries are skipped; a channel named twice keeps its last seq).
pub fn parse_recover(s: &str) -> Result<Vec<(ChannelName, u64)>, RecoverError> {
    let mut out: Vec<(ChannelName, u64)> = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        if out.len() >= MAX_RECOVER_ENTRIES {
            return Err(RecoverError::TooMany);
        }
        let (c, seq) = part.rsplit_once(':').ok_or(RecoverError::Malformed)?;
        let c = ChannelName::new(c).map_err(|_| RecoverError::Malformed)?;
        let seq = seq.parse::<u64>().map_err(|_| RecoverError::Malformed)?;
        out.push((c, seq));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_identity_survives_encoding() {
        for sub in ["josé", "zoë", "op:42", "a\nb\u{7f}", "user%41", "a b+c", ""] {
            let enc = percent_encode(sub);
            assert!(enc.bytes().all(|b| b.is_ascii_graphic()), "{enc}");
            assert_eq!(percent_decode(&enc, false), sub);
        }
        assert_ne!(percent_encode("josé"), percent_encode("zoë"));
    }

    #[test]
    fn recover_parsing() {
        let r = parse_recover("chat_1:5,,dashboard_website_2:0").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].0.as_str(), r[0].1), ("chat_1", 5));
        assert_eq!(parse_recover(""), Ok(Vec::new()));
        for bad in ["chat_1", "chat_1:x", "bad channel:1", ":1", "chat_1:-1"] {
            assert_eq!(parse_recover(bad), Err(RecoverError::Malformed), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_RECOVER_ENTRIES)
            .map(|i| format!("c{i}:1"))
            .collect();
        assert_eq!(parse_recover(&many.join(",")), Err(RecoverError::TooMany));
        assert!(parse_recover(&many[..MAX_RECOVER_ENTRIES].join(",")).is_ok());
    }

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
