//! The bus envelope (PROTOCOL.md section 9): one MessagePack map per bus
//! message, `{"v":1,"k":"m"|"s"|"p","ch","seq","id","ts","from","data"}`,
//! with `data` the bytes of the JSON value.

use crate::ChannelName;
use crate::data::JsonData;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Envelope version this code writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A persisted message (has seq, id, ts).
    #[serde(rename = "m")]
    Message,
    /// A signal (ephemeral).
    #[serde(rename = "s")]
    Signal,
    /// A presence event; `data` is `{"event":..,"client":{..}}`.
    #[serde(rename = "p")]
    Presence,
}

/// A bus message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version, 1.
    pub v: u8,
    /// Kind.
    pub k: Kind,
    /// Channel.
    pub ch: ChannelName,
    /// Seq (messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Message id (messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Timestamp in ms (messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The JSON value as bytes (MessagePack bin).
    pub data: Bytes,
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a MessagePack envelope map.
    #[error("malformed envelope")]
    Malformed(#[source] rmp_serde::decode::Error),
    /// Unknown version.
    #[error("unsupported envelope version {0}")]
    Version(u8),
    /// Missing fields for its kind, or data that is not JSON.
    #[error("invalid envelope: {0}")]
    Invalid(&'static str),
}

impl Envelope {
    /// A persisted message.
    pub fn message(
        ch: ChannelName,
        seq: u64,
        id: String,
        ts: i64,
        from: Option<String>,
        data: &JsonData,
    ) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            k: Kind::Message,
            ch,
            seq: Some(seq),
            id: Some(id),
            ts: Some(ts),
            from,
            data: data.bytes().clone(),
        }
    }

    /// A signal.
    pub fn signal(ch: ChannelName, from: Option<String>, data: &JsonData) -> Self {
        Self {
            v: ENVELOPE_VERSION,
            k: Kind::Signal,
            ch,
            seq: None,
            id: None,
            ts: None,
            from,
            data: data.bytes().clone(),
        }
    }

    /// Encodes as a MessagePack map with field names.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("an envelope always serializes")
    }

    /// Decodes and checks an envelope.
    pub fn decode(b: &[u8]) -> Result<Self, EnvelopeError> {
        let e: Envelope = rmp_serde::from_slice(b).map_err(EnvelopeError::Malformed)?;
        if e.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(e.v));
        }
        if e.k == Kind::Message && (e.seq.is_none() || e.id.is_none() || e.ts.is_none()) {
            return Err(EnvelopeError::Invalid("message without seq, id or ts"));
        }
        JsonData::from_json_text(e.data.clone())
            .map_err(|_| EnvelopeError::Invalid("data is not JSON"))?;
        Ok(e)
    }

    /// The data as validated JSON (checked by [`Envelope::decode`]).
    pub fn json_data(&self) -> JsonData {
        JsonData::from_json_text(self.data.clone())
            .unwrap_or_else(|_| JsonData::from_value(&serde_json::Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_roundtrip_and_field_names() {
        let d = JsonData::from_value(&serde_json::json!({"a":1}));
        let e = Envelope::message(
            ChannelName::new("chat_1").unwrap(),
            5,
            "m1".into(),
            7,
            Some("u".into()),
            &d,
        );
        let b = e.encode();
        let v = rmpv::decode::read_value(&mut &b[..]).unwrap();
        let m = v.as_map().unwrap();
        let keys: Vec<_> = m
            .iter()
            .map(|(k, _)| k.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["v", "k", "ch", "seq", "id", "ts", "from", "data"]);
        assert!(matches!(m[7].1, rmpv::Value::Binary(_)));
        assert_eq!(Envelope::decode(&b).unwrap(), e);
    }
}
