//! Client-to-server requests (PROTOCOL.md section 4), decoded from either
//! encoding into one [`Request`] type.
//!
//! Both encodings go through the same field checks: a MessagePack frame is
//! first turned into JSON values (refusing what JSON cannot hold), so the two
//! encodings cannot disagree on what is valid.

use crate::data::{JsonData, msgpack_to_json};
use crate::{ChannelName, Encoding, ErrorCode};
use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

/// One client request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Client-chosen id, echoed in the reply.
    pub id: i64,
    /// What to do.
    pub op: Op,
}

/// The operations of PROTOCOL.md section 4.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Join a channel, optionally replaying after `since`.
    Subscribe {
        /// The channel.
        channel: ChannelName,
        /// Last seq seen, for replay.
        since: Option<u64>,
        /// Subscription token granting this one channel.
        token: Option<String>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// The channel.
        channel: ChannelName,
    },
    /// Persist through ingest and fan out.
    Publish {
        /// The channel.
        channel: ChannelName,
        /// The payload.
        data: JsonData,
        /// Idempotency key.
        key: Option<String>,
    },
    /// Ephemeral fan-out.
    Signal {
        /// The channel.
        channel: ChannelName,
        /// The payload.
        data: JsonData,
    },
    /// Who is subscribed now.
    Presence {
        /// The channel.
        channel: ChannelName,
    },
    /// Replace the connection token.
    Refresh {
        /// The new token.
        token: String,
    },
    /// Application-level liveness.
    Ping,
}

impl Op {
    /// Name of the op, for metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Subscribe { .. } => "subscribe",
            Op::Unsubscribe { .. } => "unsubscribe",
            Op::Publish { .. } => "publish",
            Op::Signal { .. } => "signal",
            Op::Presence { .. } => "presence",
            Op::Refresh { .. } => "refresh",
            Op::Ping => "ping",
        }
    }
}

/// A request that could not be decoded; answered with a `reply` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The request's id when it was an integer.
    pub id: Option<i64>,
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable detail (never echoes `data`).
    pub message: String,
}

impl RequestError {
    fn new(id: Option<i64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}

/// Limits that apply while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest `data` as JSON text (PROTOCOL.md section 7, `max_data_bytes`).
    pub max_data_bytes: usize,
}

/// The fields of a request frame before checking.
#[derive(Default)]
struct Fields {
    op: Option<Value>,
    id: Option<Value>,
    channel: Option<Value>,
    since: Option<Value>,
    token: Option<Value>,
    key: Option<Value>,
    /// `data` as JSON text, exactly as received (JSON) or as transcoded.
    data: Option<Bytes>,
    /// Set when MessagePack `data` had no JSON form.
    data_error: Option<&'static str>,
    /// The first known field whose value has no `serde_json::Value` form.
    unreadable: Option<&'static str>,
}

/// Decodes one request frame of the given encoding.
pub fn decode_request(
    enc: Encoding,
    payload: &[u8],
    limits: DecodeLimits,
) -> Result<Request, RequestError> {
    let fields = match enc {
        Encoding::Json => json_fields(payload)?,
        Encoding::Msgpack => msgpack_fields(payload)?,
    };
    check(fields, limits)
}

#[derive(serde::Deserialize)]
struct RawJsonFrame<'a> {
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// `Some` for any value present, `null` included (serde's `Option` would
/// read `"data": null` as absent).
pub fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

impl Fields {
    /// Records a known field whose value has no `serde_json::Value` form (a
    /// number beyond f64, nesting past 128 levels; in MessagePack binary,
    /// extension types, NaN): the request is a `bad_request` naming it,
    /// with the frame's id, whatever the op. (Read as `null` it would have
    /// passed for an absent optional field: found by fuzzing.)
    fn unreadable(&mut self, name: &'static str) -> Option<Value> {
        self.unreadable.get_or_insert(name);
        None
    }

    /// One field of a JSON frame as a value; `null` is absent.
    fn json(&mut self, name: &'static str, raw: Option<&RawValue>) -> Option<Value> {
        match serde_json::from_str::<Value>(raw?.get()) {
            Ok(Value::Null) => None,
            Ok(v) => Some(v),
            Err(_) => self.unreadable(name),
        }
    }
}

fn json_fields(payload: &[u8]) -> Result<Fields, RequestError> {
    let not_object =
        || RequestError::new(None, ErrorCode::BadRequest, "frame is not a JSON object");
    // serde's derived Deserialize also reads a struct from a sequence of
    // its fields: only an object is a request (found by fuzzing).
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(not_object());
    }
    // A frame that is not one JSON object is a bad request with no id.
    let raw: RawJsonFrame<'_> = serde_json::from_slice(payload).map_err(|_| not_object())?;
    let mut f = Fields {
        // `"data": null` is a present null value, unlike a missing field.
        data: raw.data.map(|d| Bytes::copy_from_slice(d.get().as_bytes())),
        ..Fields::default()
    };
    f.op = f.json("op", raw.op);
    f.id = f.json("id", raw.id);
    f.channel = f.json("channel", raw.channel);
    f.since = f.json("since", raw.since);
    f.token = f.json("token", raw.token);
    f.key = f.json("key", raw.key);
    Ok(f)
}

fn msgpack_fields(payload: &[u8]) -> Result<Fields, RequestError> {
    let not_map = || {
        RequestError::new(
            None,
            ErrorCode::BadRequest,
            "frame is not a MessagePack map",
        )
    };
    let mut rd = payload;
    let value = rmpv::decode::read_value(&mut rd).map_err(|_| not_map())?;
    if !rd.is_empty() {
        return Err(RequestError::new(
            None,
            ErrorCode::BadRequest,
            "trailing bytes after the MessagePack map",
        ));
    }
    let rmpv::Value::Map(entries) = value else {
        return Err(not_map());
    };
    let mut f = Fields::default();
    for (k, v) in entries {
        let Some(k) = k.as_str().map(str::to_owned) else {
            continue;
        };
        let name: &'static str = match k.as_str() {
            "op" => "op",
            "id" => "id",
            "channel" => "channel",
            "since" => "since",
            "token" => "token",
            "key" => "key",
            "data" => {
                match msgpack_to_json(v).and_then(|j| JsonData::try_from_value(&j)) {
                    Ok(d) => f.data = Some(d.bytes().clone()),
                    Err(e) => {
                        f.data_error = Some(match e {
                            crate::DataError::NotJson(w) => w,
                            crate::DataError::Invalid => "invalid",
                        })
                    }
                }
                continue;
            }
            _ => continue,
        };
        // Other fields only hold scalars; anything without a JSON form is
        // a wrong type, caught below as a bad request.
        let value = match msgpack_to_json(v) {
            Ok(Value::Null) => None,
            Ok(j) => Some(j),
            Err(_) => f.unreadable(name),
        };
        let slot = match name {
            "op" => &mut f.op,
            "id" => &mut f.id,
            "channel" => &mut f.channel,
            "since" => &mut f.since,
            "token" => &mut f.token,
            _ => &mut f.key,
        };
        *slot = value;
    }
    Ok(f)
}

fn check(f: Fields, limits: DecodeLimits) -> Result<Request, RequestError> {
    let id = match f.id {
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    let Some(id) = id else {
        return Err(RequestError::new(
            None,
            ErrorCode::BadRequest,
            "missing or non-integer id",
        ));
    };
    let bad = |m: &str| RequestError::new(Some(id), ErrorCode::BadRequest, m);
    if let Some(name) = f.unreadable {
        return Err(bad(&format!(
            "{name} has no readable value (a number out of range, or nested too deep)"
        )));
    }
    let op = match f.op {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("op must be a string")),
        None => return Err(bad("missing op")),
    };
    let channel = || -> Result<ChannelName, RequestError> {
        match &f.channel {
            Some(Value::String(s)) => ChannelName::new(s)
                .map_err(|e| RequestError::new(Some(id), ErrorCode::BadChannel, e.to_string())),
            Some(_) => Err(bad("channel must be a string")),
            None => Err(bad("missing channel")),
        }
    };
    let opt_string = |v: &Option<Value>, name: &str| -> Result<Option<String>, RequestError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&format!("{name} must be a string"))),
        }
    };
    let data = || -> Result<JsonData, RequestError> {
        if let Some(why) = f.data_error {
            return Err(bad(&format!("data has no JSON form: {why}")));
        }
        let Some(text) = f.data.clone() else {
            return Err(bad("missing data"));
        };
        if text.len() > limits.max_data_bytes {
            return Err(RequestError::new(
                Some(id),
                ErrorCode::TooLarge,
                format!("data is larger than {} bytes", limits.max_data_bytes),
            ));
        }
        JsonData::from_json_text(text).map_err(|_| bad("data is not valid JSON"))
    };
    let op = match op.as_str() {
        "subscribe" => {
            let since = match &f.since {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(s) => Some(s),
                    None => return Err(bad("since must be a non-negative integer")),
                },
                Some(_) => return Err(bad("since must be a non-negative integer")),
            };
            Op::Subscribe {
                channel: channel()?,
                since,
                token: opt_string(&f.token, "token")?,
            }
        }
        "unsubscribe" => Op::Unsubscribe {
            channel: channel()?,
        },
        "publish" => {
            let channel = channel()?;
            let key = opt_string(&f.key, "key")?;
            if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 256) {
                return Err(bad("key must be 1 to 256 bytes"));
            }
            Op::Publish {
                channel,
                data: data()?,
                key,
            }
        }
        "signal" => Op::Signal {
            channel: channel()?,
            data: data()?,
        },
        "presence" => Op::Presence {
            channel: channel()?,
        },
        "refresh" => match opt_string(&f.token, "token")? {
            Some(token) => Op::Refresh { token },
            None => return Err(bad("missing token")),
        },
        "ping" => Op::Ping,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(RequestError::new(
                Some(id),
                ErrorCode::UnknownOp,
                format!("unknown op {shown:?}"),
            ));
        }
    };
    Ok(Request { id, op })
}

/// Encodes a request (used by clients and property tests).
pub fn encode_request(enc: Encoding, req: &Request) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("op".into(), Value::from(req.op.name()));
    m.insert("id".into(), Value::from(req.id));
    match &req.op {
        Op::Subscribe {
            channel,
            since,
            token,
        } => {
            m.insert("channel".into(), Value::from(channel.as_str()));
            if let Some(s) = since {
                m.insert("since".into(), Value::from(*s));
            }
            if let Some(t) = token {
                m.insert("token".into(), Value::from(t.as_str()));
            }
        }
        Op::Unsubscribe { channel } | Op::Presence { channel } => {
            m.insert("channel".into(), Value::from(channel.as_str()));
        }
        Op::Publish { channel, data, key } => {
            m.insert("channel".into(), Value::from(channel.as_str()));
            m.insert("data".into(), data.to_value());
            if let Some(k) = key {
                m.insert("key".into(), Value::from(k.as_str()));
            }
        }
        Op::Signal { channel, data } => {
            m.insert("channel".into(), Value::from(channel.as_str()));
            m.insert("data".into(), data.to_value());
        }
        Op::Refresh { token } => {
            m.insert("token".into(), Value::from(token.as_str()));
        }
        Op::Ping => {}
    }
    crate::encode(enc, &Value::Object(m))
}
