//! Fuzzing (issue 9) of every parser in this crate that reads untrusted
//! bytes: client frames in JSON and MessagePack ([`decode_request`]), the
//! `recover=` query and percent coding ([`crate::api`]), bus envelopes
//! ([`Envelope::decode`]), channel names and grant patterns.
//!
//! proptest on the stable toolchain (cargo-fuzz needs nightly): each property
//! runs a CI-sized case count, or `HERALD_FUZZ_CASES` cases for the long
//! local run (docs/fuzzing.md). A failure is shrunk and its seed written to
//! `proptest-regressions/fuzz.txt`, which is committed and replayed first on
//! every later run. The plain `#[test]`s at the end are the seed corpus:
//! hand-picked nasty inputs, and one regression test per bug found.
//!
//! The structured properties check results against a small model of
//! PROTOCOL.md sections 1, 4, 5a and 9 written here, not against the code.

use crate::api::{
    MAX_RECOVER_ENTRIES, RecoverError, parse_recover, percent_decode, percent_encode,
};
use crate::bus::{ENVELOPE_VERSION, Envelope, Kind};
use crate::server::{Message, MessageKind};
use crate::{
    ChannelName, DecodeLimits, Encoding, ErrorCode, JsonData, NameError, Op, Pattern, Request,
    decode_request, encode, encode_request,
};
use bytes::Bytes;
use herald_testkit::fuzz::config;
use proptest::prelude::*;
use proptest::strategy::Union;
use serde_json::Value;

/// The error codes PROTOCOL.md section 4 allows for an undecodable request.
const REQUEST_CODES: [ErrorCode; 4] = [
    ErrorCode::BadRequest,
    ErrorCode::UnknownOp,
    ErrorCode::BadChannel,
    ErrorCode::TooLarge,
];

const OPS: [&str; 7] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "signal",
    "presence",
    "refresh",
    "ping",
];

// ---- references (PROTOCOL.md section 1), independent of names.rs ----

fn ref_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.:@=".contains(&b)
}

fn ref_channel_ok(s: &str) -> bool {
    (1..=200).contains(&s.len()) && s.bytes().all(ref_channel_byte)
}

/// The reference regex of a pattern: anchored, each `*` the allowed set.
fn ref_pattern_regex(p: &str) -> regex::Regex {
    let re = format!(
        "^{}$",
        regex::escape(p).replace("\\*", "[A-Za-z0-9_.:@=-]*")
    );
    regex::Regex::new(&re).unwrap()
}

/// Strict percent decoding: `%` and two hex digits is a byte, anything
/// else stays as written; `+` is a space in a query.
fn ref_percent_decode(s: &str, query: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap());
            i += 3;
            continue;
        }
        out.push(if query && b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---- generated field values, for both encodings ----

/// A field value, rendered as JSON text or as a MessagePack value.
#[derive(Debug, Clone)]
enum F {
    Null,
    Bool(bool),
    Int(i64),
    /// Above `i64::MAX`.
    Big(u64),
    /// Finite.
    Float(f64),
    Str(String),
    Arr(Vec<F>),
    /// Keys may repeat; the last one wins in both encodings.
    Obj(Vec<(String, F)>),
    // MessagePack only: no JSON form (PROTOCOL.md section 5a).
    NaN,
    Inf,
    Bin(Vec<u8>),
    Ext(i8, Vec<u8>),
    /// A str whose bytes are not UTF-8.
    BadUtf8,
    /// A map with an integer key.
    IntKey(Box<F>),
}

impl F {
    fn json_text(&self) -> String {
        match self {
            F::Null => "null".into(),
            F::Bool(b) => b.to_string(),
            F::Int(i) => i.to_string(),
            F::Big(u) => u.to_string(),
            F::Float(f) => serde_json::to_string(f).unwrap(),
            F::Str(s) => serde_json::to_string(s).unwrap(),
            F::Arr(a) => format!(
                "[{}]",
                a.iter().map(F::json_text).collect::<Vec<_>>().join(",")
            ),
            F::Obj(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, v)| format!(
                        "{}:{}",
                        serde_json::to_string(k).unwrap(),
                        v.json_text()
                    ))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            other => panic!("{other:?} has no JSON text"),
        }
    }

    fn msgpack(&self) -> rmpv::Value {
        use rmpv::Value as M;
        match self {
            F::Null => M::Nil,
            F::Bool(b) => M::Boolean(*b),
            F::Int(i) => M::from(*i),
            F::Big(u) => M::from(*u),
            F::Float(f) => M::F64(*f),
            F::Str(s) => M::from(s.as_str()),
            F::Arr(a) => M::Array(a.iter().map(F::msgpack).collect()),
            F::Obj(m) => M::Map(
                m.iter()
                    .map(|(k, v)| (M::from(k.as_str()), v.msgpack()))
                    .collect(),
            ),
            F::NaN => M::F64(f64::NAN),
            F::Inf => M::F32(f32::NEG_INFINITY),
            F::Bin(b) => M::Binary(b.clone()),
            F::Ext(t, b) => M::Ext(*t, b.clone()),
            F::BadUtf8 => rmpv::decode::read_value(&mut &[0xa3u8, b'a', 0xff, 0xfe][..]).unwrap(),
            F::IntKey(v) => M::Map(vec![(M::from(7), v.msgpack())]),
        }
    }

    /// The JSON value, `None` when there is none (section 5a).
    fn json(&self) -> Option<Value> {
        Some(match self {
            F::Null => Value::Null,
            F::Bool(b) => Value::Bool(*b),
            F::Int(i) => Value::from(*i),
            F::Big(u) => Value::from(*u),
            F::Float(f) => Value::from(*f),
            F::Str(s) => Value::String(s.clone()),
            F::Arr(a) => Value::Array(a.iter().map(F::json).collect::<Option<_>>()?),
            F::Obj(m) => {
                let mut out = serde_json::Map::new();
                for (k, v) in m {
                    out.insert(k.clone(), v.json()?);
                }
                Value::Object(out)
            }
            F::NaN | F::Inf | F::Bin(_) | F::Ext(..) | F::BadUtf8 | F::IntKey(_) => return None,
        })
    }
}

fn any_float() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
}

fn any_text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[A-Za-z0-9_.:@=-]{1,12}",
        2 => "\\PC{0,12}",
        1 => Just(String::new()),
        1 => any::<String>(),
        1 => "[a-z]{190,210}",
    ]
    .boxed()
}

/// Any field value; `msgpack` adds the values with no JSON form.
fn field(msgpack: bool) -> BoxedStrategy<F> {
    let mut leaves: Vec<(u32, BoxedStrategy<F>)> = vec![
        (1, Just(F::Null).boxed()),
        (1, any::<bool>().prop_map(F::Bool).boxed()),
        (3, any::<i64>().prop_map(F::Int).boxed()),
        (
            1,
            (i64::MAX.unsigned_abs() + 1..=u64::MAX)
                .prop_map(F::Big)
                .boxed(),
        ),
        (2, any_float().prop_map(F::Float).boxed()),
        (3, any_text().prop_map(F::Str).boxed()),
    ];
    if msgpack {
        leaves.extend([
            (1, Just(F::NaN).boxed()),
            (1, Just(F::Inf).boxed()),
            (
                1,
                prop::collection::vec(any::<u8>(), 0..8)
                    .prop_map(F::Bin)
                    .boxed(),
            ),
            (
                1,
                (any::<i8>(), prop::collection::vec(any::<u8>(), 0..8))
                    .prop_map(|(t, b)| F::Ext(t, b))
                    .boxed(),
            ),
            (1, Just(F::BadUtf8).boxed()),
        ]);
    }
    Union::new_weighted(leaves)
        .prop_recursive(3, 16, 4, move |inner| {
            let mut v: Vec<(u32, BoxedStrategy<F>)> = vec![
                (
                    1,
                    prop::collection::vec(inner.clone(), 0..4)
                        .prop_map(F::Arr)
                        .boxed(),
                ),
                (
                    1,
                    prop::collection::vec(("[a-c]{0,2}", inner.clone()), 0..4)
                        .prop_map(F::Obj)
                        .boxed(),
                ),
            ];
            if msgpack {
                v.push((1, inner.prop_map(|f| F::IntKey(Box::new(f))).boxed()));
            }
            Union::new_weighted(v)
        })
        .boxed()
}

/// A value with a JSON form (for `data` in the main properties).
fn json_field() -> BoxedStrategy<F> {
    field(false)
}

/// One request frame as (name, value) pairs in random order, names unique.
type Fields = Vec<(String, F)>;

/// Frames close to valid: mostly the right fields with the right types, so
/// the model's every branch is reached. `mp_all`: MessagePack-only values
/// in every field; otherwise only in op, id, channel and data (see
/// `msgpack_wrong_typed_optional_fields_are_refused` for the others).
fn frame(msgpack: bool, mp_all: bool) -> impl Strategy<Value = Fields> {
    let anyf = field(msgpack);
    let opt_any = if mp_all { field(msgpack) } else { field(false) };
    let op = prop_oneof![
        8 => prop::sample::select(&OPS[..]).prop_map(|s| F::Str(s.into())),
        1 => any_text().prop_map(F::Str),
        1 => anyf.clone(),
    ];
    let id = prop_oneof![
        6 => any::<i64>().prop_map(F::Int),
        1 => anyf.clone(),
    ];
    let channel = prop_oneof![
        6 => "[A-Za-z0-9_.:@=-]{1,24}".prop_map(F::Str),
        1 => any_text().prop_map(F::Str),
        1 => anyf.clone(),
    ];
    let since = prop_oneof![
        3 => any::<u64>().prop_map(|u| i64::try_from(u).map_or(F::Big(u), F::Int)),
        1 => Just(F::Null),
        1 => opt_any.clone(),
    ];
    let token = prop_oneof![
        3 => "[A-Za-z0-9._-]{0,40}".prop_map(F::Str),
        1 => Just(F::Null),
        1 => opt_any.clone(),
    ];
    let key = prop_oneof![
        3 => "[a-z0-9-]{1,16}".prop_map(F::Str),
        1 => prop_oneof![Just(0usize), Just(256), Just(257)].prop_map(|n| F::Str("k".repeat(n))),
        1 => Just(F::Null),
        1 => opt_any,
    ];
    let data = prop_oneof![4 => json_field(), 1 => anyf.clone()];
    let extra = prop::collection::vec(("x[a-z]{0,3}", anyf), 0..2);
    (
        prop::option::weighted(0.95, op),
        prop::option::weighted(0.95, id),
        prop::option::weighted(0.9, channel),
        prop::option::weighted(0.3, since),
        prop::option::weighted(0.3, token),
        prop::option::weighted(0.3, key),
        prop::option::weighted(0.8, data),
        extra,
    )
        .prop_flat_map(|(op, id, channel, since, token, key, data, extra)| {
            let mut v: Fields = Vec::new();
            for (name, f) in [
                ("op", op),
                ("id", id),
                ("channel", channel),
                ("since", since),
                ("token", token),
                ("key", key),
                ("data", data),
            ] {
                if let Some(f) = f {
                    v.push((name.into(), f));
                }
            }
            for (k, f) in extra {
                if !v.iter().any(|(n, _)| *n == k) {
                    v.push((k, f));
                }
            }
            Just(v).prop_shuffle()
        })
}

fn render(enc: Encoding, fields: &Fields) -> Vec<u8> {
    match enc {
        Encoding::Json => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v.json_text()))
                .collect::<Vec<_>>()
                .join(",")
        )
        .into_bytes(),
        Encoding::Msgpack => {
            let m = rmpv::Value::Map(
                fields
                    .iter()
                    .map(|(k, v)| (rmpv::Value::from(k.as_str()), v.msgpack()))
                    .collect(),
            );
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, &m).unwrap();
            out
        }
    }
}

/// What PROTOCOL.md section 4 says a frame decodes to: the id it carries,
/// and the op, or the codes any one of its faults may be reported with.
fn model(
    enc: Encoding,
    fields: &Fields,
    max_data: usize,
) -> (Option<i64>, Result<Op, Vec<ErrorCode>>) {
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v);
    // A MessagePack value without a JSON form is a wrong type: it counts as
    // a value that is no string and no number.
    let seen = |n: &str| get(n).map(|f| f.json().unwrap_or(Value::Bool(false)));
    let id = match seen("id") {
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    let Some(id) = id else {
        return (None, Err(vec![ErrorCode::BadRequest]));
    };
    let op = match seen("op") {
        Some(Value::String(s)) => s,
        _ => return (Some(id), Err(vec![ErrorCode::BadRequest])),
    };
    let mut errs = Vec::new();
    let channel = match seen("channel") {
        Some(Value::String(s)) if ref_channel_ok(&s) => Some(ChannelName::new(&s).unwrap()),
        Some(Value::String(_)) => {
            errs.push(ErrorCode::BadChannel);
            None
        }
        _ => {
            errs.push(ErrorCode::BadRequest);
            None
        }
    };
    let opt_string = |n: &str, errs: &mut Vec<ErrorCode>| match seen(n) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errs.push(ErrorCode::BadRequest);
            None
        }
    };
    let data = |errs: &mut Vec<ErrorCode>| -> Option<JsonData> {
        let Some(f) = get("data") else {
            errs.push(ErrorCode::BadRequest);
            return None;
        };
        let Some(v) = f.json() else {
            errs.push(ErrorCode::BadRequest);
            return None;
        };
        let len = match enc {
            Encoding::Json => f.json_text().len(),
            Encoding::Msgpack => serde_json::to_vec(&v).unwrap().len(),
        };
        if len > max_data {
            errs.push(ErrorCode::TooLarge);
            return None;
        }
        Some(JsonData::from_value(&v))
    };
    let op = match op.as_str() {
        "subscribe" => {
            let since = match seen("since") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
                Some(_) => {
                    errs.push(ErrorCode::BadRequest);
                    None
                }
            };
            let token = opt_string("token", &mut errs);
            channel.map(|channel| Op::Subscribe {
                channel,
                since,
                token,
            })
        }
        "unsubscribe" => channel.map(|channel| Op::Unsubscribe { channel }),
        "presence" => channel.map(|channel| Op::Presence { channel }),
        "publish" => {
            let key = opt_string("key", &mut errs);
            if key.as_ref().is_some_and(|k| !(1..=256).contains(&k.len())) {
                errs.push(ErrorCode::BadRequest);
            }
            let data = data(&mut errs);
            match (channel, data) {
                (Some(channel), Some(data)) => Some(Op::Publish { channel, data, key }),
                _ => None,
            }
        }
        "signal" => {
            let data = data(&mut errs);
            match (channel, data) {
                (Some(channel), Some(data)) => Some(Op::Signal { channel, data }),
                _ => None,
            }
        }
        "refresh" => {
            errs.clear();
            match opt_string("token", &mut errs) {
                Some(token) => Some(Op::Refresh { token }),
                None => {
                    errs.push(ErrorCode::BadRequest);
                    None
                }
            }
        }
        "ping" => {
            errs.clear();
            Some(Op::Ping)
        }
        _ => return (Some(id), Err(vec![ErrorCode::UnknownOp])),
    };
    match op {
        Some(op) if errs.is_empty() => (Some(id), Ok(op)),
        _ => (Some(id), Err(errs)),
    }
}

/// Ops compared with `data` as a JSON value (decoded `data` keeps the bytes
/// as received, whitespace and duplicate keys included).
fn same_op(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (
            Op::Publish { channel, data, key },
            Op::Publish {
                channel: c2,
                data: d2,
                key: k2,
            },
        ) => channel == c2 && key == k2 && data.to_value() == d2.to_value(),
        (
            Op::Signal { channel, data },
            Op::Signal {
                channel: c2,
                data: d2,
            },
        ) => channel == c2 && data.to_value() == d2.to_value(),
        _ => a == b,
    }
}

fn check_frame(enc: Encoding, fields: &Fields, max_data: usize) -> Result<(), TestCaseError> {
    let bytes = render(enc, fields);
    let limits = DecodeLimits {
        max_data_bytes: max_data,
    };
    let got = decode_request(enc, &bytes, limits);
    let (id, want) = model(enc, fields, max_data);
    // A known field with no JSON form is a wrong type even where the op
    // does not read it: bad_request (with the id) is then always allowed.
    let unreadable = fields.iter().any(|(k, f)| {
        ["op", "channel", "since", "token", "key"].contains(&k.as_str()) && f.json().is_none()
    });
    match (&got, &want) {
        (Err(e), _) if unreadable && id.is_some() && e.code == ErrorCode::BadRequest => {
            prop_assert_eq!(e.id, id, "{}", e.message);
        }
        (Ok(req), Ok(op)) => {
            prop_assert_eq!(Some(req.id), id);
            prop_assert!(same_op(&req.op, op), "decoded {:?}, model {:?}", req.op, op);
            // Roundtrip through the encoder.
            let again = decode_request(enc, &encode_request(enc, req), limits).unwrap();
            prop_assert_eq!(again.id, req.id);
            prop_assert!(same_op(&again.op, &req.op));
        }
        (Err(e), Err(codes)) => {
            prop_assert!(
                codes.contains(&e.code),
                "code {:?}, model {:?}: {}",
                e.code,
                codes,
                e.message
            );
            prop_assert_eq!(e.id, id, "{}", e.message);
        }
        _ => prop_assert!(false, "decoded {:?}, model {:?}", got, want),
    }
    Ok(())
}

/// Any decode result: a request, or an error with a section 4 code.
fn check_any(enc: Encoding, bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = DecodeLimits { max_data_bytes: 64 };
    match decode_request(enc, bytes, limits) {
        Ok(req) => match &req.op {
            Op::Publish { data, key, .. } => {
                prop_assert!(data.len() <= 64);
                prop_assert!(key.as_ref().is_none_or(|k| (1..=256).contains(&k.len())));
            }
            Op::Signal { data, .. } => prop_assert!(data.len() <= 64),
            _ => {}
        },
        Err(e) => prop_assert!(REQUEST_CODES.contains(&e.code), "{:?}", e),
    }
    Ok(())
}

/// JSON-ish token soup: reaches the parser's inner states far more often
/// than uniform bytes.
fn json_soup() -> impl Strategy<Value = Vec<u8>> {
    let tok = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"op\"",
        "\"id\"",
        "\"channel\"",
        "\"data\"",
        "\"since\"",
        "\"key\"",
        "\"token\"",
        "\"publish\"",
        "\"subscribe\"",
        "\"ping\"",
        "\"refresh\"",
        "\"chat_1\"",
        "1",
        "-1",
        "0",
        "1.5",
        "1e400",
        "-1e400",
        "18446744073709551616",
        "9223372036854775808",
        "null",
        "true",
        "\"\\ud800\"",
        "\"\\u0000\"",
        "\"",
        "\\",
        " ",
        "\u{ff}",
        "\"é\"",
    ]);
    prop::collection::vec(tok, 0..40).prop_map(|v| v.concat().into_bytes())
}

/// MessagePack-ish soup: map/array/str/bin/ext headers with lengths up to
/// 2^32 - 1, and the field names.
fn msgpack_soup() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            vec![0x80u8],
            vec![0x81],
            vec![0x87],
            vec![0xde, 0xff, 0xff],
            vec![0xdf, 0xff, 0xff, 0xff, 0xff],
            vec![0x90],
            vec![0x93],
            vec![0xdc, 0xff, 0xff],
            vec![0xdd, 0xff, 0xff, 0xff, 0xff],
            vec![0xa2, b'o', b'p'],
            vec![0xa2, b'i', b'd'],
            vec![0xa4, b'd', b'a', b't', b'a'],
            vec![0xa7, b'c', b'h', b'a', b'n', b'n', b'e', b'l'],
            vec![0xa5, b's', b'i', b'n', b'c', b'e'],
            vec![0xa7, b'p', b'u', b'b', b'l', b'i', b's', b'h'],
            vec![0xa4, b'p', b'i', b'n', b'g'],
            vec![0xa6, b'c', b'h', b'a', b't', b'_', b'1'],
            vec![0x01],
            vec![0xff],
            vec![0xc0],
            vec![0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
            vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0xc4, 0x02, 1, 2],
            vec![0xc6, 0xff, 0xff, 0xff, 0xff],
            vec![0xd4, 0x01, 0x00],
            vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
            vec![0xdb, 0xff, 0xff, 0xff, 0xff],
            vec![0xc1],
        ]),
        prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

/// JSON texts serde_json's `Value` cannot hold: numbers outside f64,
/// nesting past its recursion limit (128).
fn unparseable_json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (309u32..5000).prop_map(|e| format!("1e{e}")),
        (309u32..5000).prop_map(|e| format!("-2.5E+{e}")),
        (311usize..400).prop_map(|n| "9".repeat(n)),
        (130usize..400).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        (130usize..400).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
    ]
}

/// Nasty JSON texts for `data`: the unparseable ones, and edge cases that
/// do parse (underflow, deep but within the limit, lone surrogates,
/// duplicate keys).
fn nasty_json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => unparseable_json_text(),
        1 => (1u32..2000).prop_map(|e| format!("1e-{e}")),
        1 => (1usize..129).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        1 => (20usize..309).prop_map(|n| "9".repeat(n)),
        1 => Just("\"\\ud800\"".to_string()),
        1 => Just("\"\\udc00\\ud800\"".to_string()),
        1 => Just("{\"a\":1,\"a\":2}".to_string()),
    ]
}

/// A publish frame carrying `data_text` verbatim.
fn publish_with(data_text: &str) -> Vec<u8> {
    format!(r#"{{"op":"publish","id":7,"channel":"chat_1","data":{data_text}}}"#).into_bytes()
}

/// PROTOCOL.md section 5a: a `data` accepted from a client reaches JSON and
/// MessagePack subscribers alike, so it must transcode (or be refused with
/// bad_request / too_large at the edge).
fn assert_fans_out(data: &JsonData) {
    let msg = Message {
        kind: Some(MessageKind::Message),
        channel: ChannelName::new("chat_1").unwrap(),
        seq: 1,
        id: "m_1".into(),
        ts: 1,
        from: None,
        data: data.clone(),
    };
    let j = encode(Encoding::Json, &msg);
    let m = encode(Encoding::Msgpack, &msg);
    let jv: Value = serde_json::from_slice(&j).unwrap();
    let mv = crate::data::msgpack_to_json(rmpv::decode::read_value(&mut &m[..]).unwrap()).unwrap();
    assert_eq!(jv["data"], mv["data"]);
}

fn json_decode_ok_fans_out(frame: &[u8]) {
    let limits = DecodeLimits {
        max_data_bytes: 1 << 20,
    };
    match decode_request(Encoding::Json, frame, limits) {
        Ok(Request {
            op: Op::Publish { data, .. },
            ..
        }) => assert_fans_out(&data),
        Ok(other) => panic!("not a publish: {other:?}"),
        Err(e) => assert!(
            matches!(e.code, ErrorCode::BadRequest | ErrorCode::TooLarge) && e.id == Some(7),
            "{e:?}"
        ),
    }
}

// ---- envelopes ----

fn envelope_ok_invariants(e: &Envelope) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.v, ENVELOPE_VERSION);
    prop_assert!(ref_channel_ok(e.ch.as_str()));
    if e.k == Kind::Message {
        prop_assert!(e.seq.is_some() && e.id.is_some() && e.ts.is_some());
    }
    prop_assert!(serde_json::from_slice::<&serde_json::value::RawValue>(&e.data).is_ok());
    prop_assert_eq!(&Envelope::decode(&e.encode()).unwrap(), e);
    Ok(())
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        prop::sample::select(vec![Kind::Message, Kind::Signal, Kind::Presence]),
        "[A-Za-z0-9_.:@=-]{1,200}",
        any::<u64>(),
        any::<String>(),
        any::<i64>(),
        prop::option::of(any::<String>()),
        json_field(),
        any::<bool>(),
    )
        .prop_map(|(k, ch, seq, id, ts, from, data, meta)| {
            let message = k == Kind::Message || meta;
            Envelope {
                v: ENVELOPE_VERSION,
                k,
                ch: ChannelName::new(&ch).unwrap(),
                seq: message.then_some(seq),
                id: message.then_some(id),
                ts: message.then_some(ts),
                from,
                data: Bytes::from(data.json_text()),
            }
        })
}

/// An envelope map with each field drawn from right and wrong types.
/// Returns the bytes and whether the envelope is valid (`None`: not
/// modelled, any answer will do).
fn envelope_map() -> impl Strategy<Value = (Vec<u8>, Option<bool>)> {
    use rmpv::Value as M;
    #[derive(Debug, Clone)]
    enum T {
        Ok(M),
        Bad(M),
        Maybe(M),
    }
    let s = |v: &str| M::from(v);
    let v = prop_oneof![
        4 => Just(T::Ok(M::from(1))),
        1 => prop_oneof![Just(M::from(2)), Just(M::from(0)), Just(M::from(256)), Just(M::from(-1)), Just(s("1")), Just(M::Nil)].prop_map(T::Bad),
    ];
    let k = prop_oneof![
        4 => prop::sample::select(vec!["m", "s", "p"]).prop_map(move |k| T::Ok(M::from(k))),
        1 => prop_oneof![Just(s("x")), Just(s("")), Just(M::from(7))].prop_map(T::Bad),
        // rmp_serde also reads a variant from its index or name bytes.
        1 => prop_oneof![Just(M::from(1)), Just(M::Binary(b"m".to_vec()))].prop_map(T::Maybe),
    ];
    let ch = prop_oneof![
        4 => "[A-Za-z0-9_.:@=-]{1,20}".prop_map(|c| T::Ok(M::from(c.as_str()))),
        1 => prop_oneof![Just(s("")), Just(s("a b")), Just(M::from("a".repeat(201).as_str())), Just(M::from(5))].prop_map(T::Bad),
    ];
    let num = |signed: bool| {
        prop_oneof![
            3 => if signed { any::<i64>().prop_map(|i| T::Ok(M::from(i))).boxed() } else { any::<u64>().prop_map(|u| T::Ok(M::from(u))).boxed() },
            1 => Just(T::Ok(M::Nil)),
            1 => prop_oneof![Just(s("5")), Just(M::F64(1.5)), Just(M::Boolean(true))].prop_map(T::Bad),
            1 => if signed { Just(T::Bad(M::from(u64::MAX))).boxed() } else { Just(T::Bad(M::from(-1))).boxed() },
        ]
    };
    let text = prop_oneof![
        3 => any::<String>().prop_map(|t| T::Ok(M::from(t.as_str()))),
        1 => Just(T::Ok(M::Nil)),
        1 => prop_oneof![Just(M::from(1)), Just(M::Array(vec![]))].prop_map(T::Bad),
    ];
    let data = prop_oneof![
        4 => json_field().prop_map(|f| T::Ok(M::Binary(f.json_text().into_bytes()))),
        1 => prop_oneof![Just(M::Binary(b"{".to_vec())), Just(M::Binary(vec![])), Just(M::Nil)].prop_map(T::Bad),
        1 => prop_oneof![Just(M::from("1")), Just(M::Array(vec![M::from(49)]))].prop_map(T::Maybe),
    ];
    let opt = |t: BoxedStrategy<T>| prop::option::weighted(0.9, t);
    (
        opt(v.boxed()),
        opt(k.boxed()),
        opt(ch.boxed()),
        opt(num(false).boxed()),
        opt(text.clone().boxed()),
        opt(num(true).boxed()),
        opt(text.boxed()),
        opt(data.boxed()),
    )
        .prop_map(|(v, k, ch, seq, id, ts, from, data)| {
            let mut entries = Vec::new();
            let mut valid = Some(true);
            let mut kind = None;
            let mut present = [false; 3];
            for (i, (name, t, required)) in [
                ("v", v, true),
                ("k", k, true),
                ("ch", ch, true),
                ("seq", seq, false),
                ("id", id, false),
                ("ts", ts, false),
                ("from", from, false),
                ("data", data, true),
            ]
            .into_iter()
            .enumerate()
            {
                let Some(t) = t else {
                    if required {
                        valid = Some(false);
                    }
                    continue;
                };
                let val = match t {
                    T::Ok(m) => m,
                    T::Bad(m) => {
                        valid = Some(false);
                        m
                    }
                    T::Maybe(m) => {
                        if valid == Some(true) {
                            valid = None;
                        }
                        m
                    }
                };
                if name == "k" {
                    kind = val.as_str().map(str::to_owned);
                }
                if (3..6).contains(&i) && !val.is_nil() {
                    present[i - 3] = true;
                }
                entries.push((M::from(name), val));
            }
            if kind.as_deref() == Some("m") && present != [true; 3] {
                valid = Some(false);
            }
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, &M::Map(entries)).unwrap();
            (out, valid)
        })
}

// ---- the properties ----

proptest! {
    #![proptest_config(config(8000))]

    /// Arbitrary bytes in either encoding: no panic, and a section 4 code.
    #[test]
    fn request_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_any(Encoding::Json, &bytes)?;
        check_any(Encoding::Msgpack, &bytes)?;
    }

    #[test]
    fn request_json_soup(bytes in json_soup()) {
        check_any(Encoding::Json, &bytes)?;
    }

    #[test]
    fn request_msgpack_soup(bytes in msgpack_soup()) {
        check_any(Encoding::Msgpack, &bytes)?;
    }
}

proptest! {
    #![proptest_config(config(4000))]

    /// Structured JSON frames decode as the section 4 model says; accepted
    /// ones roundtrip through `encode_request`.
    #[test]
    fn request_json_matches_model(fields in frame(false, false), small in any::<bool>()) {
        check_frame(Encoding::Json, &fields, if small { 40 } else { 16384 })?;
    }

    /// The same for MessagePack, with binary, ext, NaN, invalid UTF-8 and
    /// integer map keys in op, id, channel and data.
    #[test]
    fn request_msgpack_matches_model(fields in frame(true, false), small in any::<bool>()) {
        check_frame(Encoding::Msgpack, &fields, if small { 40 } else { 16384 })?;
    }

    /// Both encodings of one frame give the same answer.
    #[test]
    fn request_encodings_agree(fields in frame(false, false)) {
        let limits = DecodeLimits { max_data_bytes: 16384 };
        let j = decode_request(Encoding::Json, &render(Encoding::Json, &fields), limits);
        let m = decode_request(Encoding::Msgpack, &render(Encoding::Msgpack, &fields), limits);
        match (&j, &m) {
            (Ok(a), Ok(b)) => prop_assert!(a.id == b.id && same_op(&a.op, &b.op)),
            (Err(a), Err(b)) => prop_assert_eq!((a.id, a.code), (b.id, b.code)),
            _ => prop_assert!(false, "json {:?}, msgpack {:?}", j, m),
        }
    }

    /// Regression for B4 (docs/fuzzing.md): in MessagePack, `since`, `token` and `key`
    /// holding a value with no JSON form are a wrong type: bad_request with
    /// the id, as in JSON.
    #[test]
    fn msgpack_wrong_typed_optional_fields_are_refused(
        fields in frame(true, true),
    ) {
        check_frame(Encoding::Msgpack, &fields, 16384)?;
    }

    /// Regression for B2: a JSON array is not a request, whatever it holds.
    #[test]
    fn json_arrays_are_not_requests(op in prop::sample::select(&OPS[..]), id in any::<i64>(),
                                    rest in prop::collection::vec(json_field(), 5..6)) {
        let mut items = vec![F::Str(op.into()), F::Int(id)];
        items.extend(rest);
        let text = F::Arr(items).json_text();
        let r = decode_request(Encoding::Json, text.as_bytes(), DecodeLimits { max_data_bytes: 16384 });
        prop_assert!(matches!(&r, Err(e) if e.code == ErrorCode::BadRequest), "{} -> {:?}", text, r);
    }

    /// Regression for B1: `data` that decodes must fan out to MessagePack subscribers
    /// (or be refused at the edge).
    #[test]
    fn accepted_data_fans_out_in_both_encodings(text in nasty_json_text()) {
        json_decode_ok_fans_out(&publish_with(&text));
    }

    /// Regression for B3: a known field whose value serde_json cannot hold (a number
    /// out of f64 range, nesting past 128) is a wrong type: bad_request that
    /// carries the integer id.
    #[test]
    fn unparseable_field_values_keep_the_id(
        name in prop::sample::select(vec!["op", "channel", "since", "token", "key"]),
        text in unparseable_json_text(),
    ) {
        let mut parts = vec![("op", "\"subscribe\"".to_string()), ("id", "5".into()), ("channel", "\"chat_1\"".into())];
        match parts.iter_mut().find(|(k, _)| *k == name) {
            Some(p) => p.1.clone_from(&text),
            None => parts.push((name, text.clone())),
        }
        let frame = format!("{{{}}}", parts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(","));
        let r = decode_request(Encoding::Json, frame.as_bytes(), DecodeLimits { max_data_bytes: 16384 });
        prop_assert!(matches!(&r, Err(e) if e.code == ErrorCode::BadRequest && e.id == Some(5)), "{} -> {:?}", frame, r);
    }
}

proptest! {
    #![proptest_config(config(8000))]

    /// Bus envelopes: arbitrary bytes never panic; what decodes is valid
    /// and re-encodes to itself.
    #[test]
    fn envelope_arbitrary_bytes(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        msgpack_soup(),
    ]) {
        if let Ok(e) = Envelope::decode(&bytes) {
            envelope_ok_invariants(&e)?;
        }
    }

    #[test]
    fn envelope_roundtrip(e in envelope()) {
        prop_assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    /// A valid envelope with bytes flipped, cut or inserted.
    #[test]
    fn envelope_mutated(e in envelope(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4)) {
        let mut b = e.encode();
        for (at, byte, how) in edits {
            let i = at.index(b.len() + 1);
            match how {
                0 if i < b.len() => b[i] ^= byte | 1,
                1 if i < b.len() => { b.truncate(i); }
                _ => b.insert(i, byte),
            }
        }
        if let Ok(e) = Envelope::decode(&b) {
            envelope_ok_invariants(&e)?;
        }
    }

    /// Envelope maps with right and wrong field types.
    #[test]
    fn envelope_fields((bytes, valid) in envelope_map()) {
        let r = Envelope::decode(&bytes);
        if let Ok(e) = &r {
            envelope_ok_invariants(e)?;
        }
        if let Some(valid) = valid {
            prop_assert_eq!(r.is_ok(), valid, "{:?}", r);
        }
    }
}

proptest! {
    #![proptest_config(config(12000))]

    /// `percent_decode(percent_encode(s)) == s` for any string, and the
    /// encoding is header- and query-safe.
    #[test]
    fn percent_roundtrip(s in any::<String>()) {
        let e = percent_encode(&s);
        prop_assert!(e.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)), "{}", e);
        prop_assert_eq!(percent_decode(&e, false), s.clone());
        prop_assert_eq!(percent_decode(&e, true), s);
    }

    /// Regression for B5: `percent_decode` equals the strict reference (invalid escapes
    /// such as `%+5` stay as written).
    #[test]
    fn percent_decode_matches_reference(s in "[%+0-9a-fA-Fgz -]{0,24}|\\PC{0,12}", query in any::<bool>()) {
        prop_assert_eq!(percent_decode(&s, query), ref_percent_decode(&s, query), "{:?}", s);
    }

    /// `recover=`: arbitrary text never panics; what parses names valid
    /// channels, at most 1000 of them.
    #[test]
    fn recover_arbitrary(s in "[a-c0-9:,_%+ .-]{0,80}|\\PC{0,40}") {
        if let Ok(list) = parse_recover(&s) {
            prop_assert!(list.len() <= MAX_RECOVER_ENTRIES);
            prop_assert_eq!(list.len(), s.split(',').filter(|p| !p.is_empty()).count());
            for (c, _) in &list {
                prop_assert!(ref_channel_ok(c.as_str()));
            }
        }
        let _ = parse_recover(&percent_decode(&s, true));
    }

    /// A generated list (channels may hold `:`; empty entries between) comes
    /// back in order, also through the query's percent coding.
    #[test]
    fn recover_lists_roundtrip(list in prop::collection::vec(("[A-Za-z0-9_.:@=-]{1,30}", any::<u64>()), 0..20),
                               empties in prop::collection::vec(0usize..3, 0..20)) {
        let mut parts = Vec::new();
        for (i, (c, s)) in list.iter().enumerate() {
            for _ in 0..empties.get(i).copied().unwrap_or(0) {
                parts.push(String::new());
            }
            parts.push(format!("{c}:{s}"));
        }
        let text = parts.join(",");
        let want: Vec<(ChannelName, u64)> = list.iter().map(|(c, s)| (ChannelName::new(c).unwrap(), *s)).collect();
        prop_assert_eq!(parse_recover(&text), Ok(want.clone()));
        prop_assert_eq!(parse_recover(&percent_decode(&percent_encode(&text), true)), Ok(want));
    }

    /// Channel names are exactly section 1's: 1 to 200 bytes of the set.
    #[test]
    fn channel_names_match_reference(s in prop_oneof![
        "[A-Za-z0-9_.:@=-]{0,210}",
        "[A-Za-z0-9_.:@=-]{0,20}[^A-Za-z0-9_.:@=-][A-Za-z0-9_.:@=-]{0,20}",
        any::<String>(),
        "[A-Za-z0-9_.:@=*-]{195,205}",
    ]) {
        let r = ChannelName::new(&s);
        prop_assert_eq!(r.is_ok(), ref_channel_ok(&s), "{:?}", s);
        match &r {
            Ok(c) => prop_assert_eq!(c.as_str(), s.as_str()),
            Err(NameError::Empty) => prop_assert!(s.is_empty()),
            Err(NameError::TooLong) => prop_assert!(s.len() > 200),
            Err(NameError::BadChar) => prop_assert!(!s.is_empty() && s.len() <= 200),
        }
        let p = Pattern::new(&s);
        let ref_p = (1..=200).contains(&s.len()) && s.bytes().all(|b| ref_channel_byte(b) || b == b'*');
        prop_assert_eq!(p.is_ok(), ref_p);
        if let Ok(p) = p {
            prop_assert_eq!(p.is_literal(), !s.contains('*'));
            if p.is_literal() {
                prop_assert!(p.matches(&s));
            }
        }
    }
}

/// A name built from `p` by replacing each `*` with a run of `fill`, so
/// patterns match about half the time.
fn instantiate(p: &str, fill: &[String]) -> String {
    let mut out = String::new();
    let mut k = 0;
    for ch in p.chars() {
        if ch == '*' {
            out.push_str(fill.get(k).map_or("", String::as_str));
            k += 1;
        } else {
            out.push(ch);
        }
    }
    out
}

proptest! {
    #![proptest_config(config(4000))]

    /// Pattern matching equals section 1's reference regex.
    #[test]
    fn pattern_matches_reference(p in "[ab:*]{1,10}|[a*]{1,40}",
                                 fill in prop::collection::vec("[ab:=.]{0,4}", 0..40),
                                 other in "[ab:]{0,12}|a{0,60}",
                                 use_fill in any::<bool>(), flip in any::<prop::sample::Index>()) {
        let pat = Pattern::new(&p).unwrap();
        let mut name = if use_fill { instantiate(&p, &fill) } else { other };
        if !use_fill && !name.is_empty() && flip.index(4) == 0 {
            let i = flip.index(name.len());
            name.replace_range(i..=i, "b");
        }
        if ChannelName::new(&name).is_ok() {
            prop_assert_eq!(pat.matches(&name), ref_pattern_regex(&p).is_match(&name), "{} ~ {}", p, name);
        }
    }
}

// ---- seed corpus ----

fn limits() -> DecodeLimits {
    DecodeLimits {
        max_data_bytes: 16384,
    }
}

#[test]
fn seed_requests_never_panic() {
    let deep_obj = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let deep_arr = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut seeds: Vec<Vec<u8>> = vec![
        vec![],
        b"{".to_vec(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"{\"op\":\"ping\",\"id\":1} trailing".to_vec(),
        b"{\"op\":\"ping\",\"id\":1,\"id\":2}".to_vec(),
        b"{\"op\":\"ping\",\"id\":9223372036854775808}".to_vec(),
        b"{\"op\":\"ping\",\"id\":-9223372036854775809}".to_vec(),
        b"{\"op\":\"ping\",\"id\":1e400}".to_vec(),
        b"{\"op\":\"\\ud800\",\"id\":1}".to_vec(),
        b"\xef\xbb\xbf{\"op\":\"ping\",\"id\":1}".to_vec(),
        deep_obj.into_bytes(),
        deep_arr.into_bytes(),
        // MessagePack: map / array / str / bin headers claiming 2^32 - 1
        // entries or bytes, with nothing after them.
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![
            0x81, 0xa4, b'd', b'a', b't', b'a', 0xdd, 0xff, 0xff, 0xff, 0xff,
        ],
        vec![
            0x81, 0xa4, b'd', b'a', b't', b'a', 0xc6, 0xff, 0xff, 0xff, 0xff,
        ],
        vec![
            0x81, 0xa4, b'd', b'a', b't', b'a', 0xdb, 0xff, 0xff, 0xff, 0xff,
        ],
        vec![0x81, 0xa2, b'i', b'd', 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
        vec![0xc1],
    ];
    // 100 000 nested one-element arrays in MessagePack (past rmpv's depth).
    let mut deep = vec![0x82, 0xa2, b'o', b'p', 0xa4, b'p', b'i', b'n', b'g'];
    deep.extend([0xa4, b'd', b'a', b't', b'a']);
    deep.extend(std::iter::repeat_n(0x91, 100_000));
    deep.push(0xc0);
    seeds.push(deep);
    for s in &seeds {
        for enc in [Encoding::Json, Encoding::Msgpack] {
            if let Err(e) = decode_request(enc, s, limits()) {
                assert!(REQUEST_CODES.contains(&e.code), "{e:?}");
            }
        }
    }
}

#[test]
fn seed_ids_and_codes() {
    let cases: [(&str, Option<i64>, Option<ErrorCode>); 8] = [
        (r#"{"op":"ping","id":1}"#, Some(1), None),
        (
            r#"{"op":"nope","id":2}"#,
            Some(2),
            Some(ErrorCode::UnknownOp),
        ),
        (
            r#"{"op":"subscribe","id":3,"channel":"a b"}"#,
            Some(3),
            Some(ErrorCode::BadChannel),
        ),
        (
            r#"{"op":"subscribe","id":4,"channel":"c","since":-1}"#,
            Some(4),
            Some(ErrorCode::BadRequest),
        ),
        (
            r#"{"op":"publish","id":5,"channel":"c","data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            Some(5),
            Some(ErrorCode::TooLarge),
        ),
        (
            r#"{"op":"publish","id":6,"channel":"c"}"#,
            Some(6),
            Some(ErrorCode::BadRequest),
        ),
        (
            r#"{"op":"ping","id":1.0}"#,
            None,
            Some(ErrorCode::BadRequest),
        ),
        (
            r#"{"op":"ping","id":"1"}"#,
            None,
            Some(ErrorCode::BadRequest),
        ),
    ];
    for (text, id, code) in cases {
        let r = decode_request(
            Encoding::Json,
            text.as_bytes(),
            DecodeLimits { max_data_bytes: 64 },
        );
        match (r, code) {
            (Ok(req), None) => assert_eq!(Some(req.id), id, "{text}"),
            (Err(e), Some(c)) => assert_eq!((e.id, e.code), (id, c), "{text}"),
            (r, _) => panic!("{text}: {r:?}"),
        }
    }
}

#[test]
fn seed_envelopes_never_panic() {
    let seeds: [&[u8]; 7] = [
        &[],
        &[0xdf, 0xff, 0xff, 0xff, 0xff],
        &[0xdd, 0xff, 0xff, 0xff, 0xff],
        &[
            0x88, 0xa1, b'v', 0x01, 0xa4, b'd', b'a', b't', b'a', 0xc6, 0xff, 0xff, 0xff, 0xff,
        ],
        // Positional (array) form, which rmp_serde also reads.
        &[
            0x98, 0x01, 0xa1, b's', 0xa1, b'c', 0xc0, 0xc0, 0xc0, 0xc0, 0xc4, 0x01, b'1',
        ],
        &[0x82, 0xa1, b'v', 0xcd, 0x01, 0x00, 0xa1, b'k', 0xa1, b'm'],
        &[0xc1],
    ];
    for s in seeds {
        if let Ok(e) = Envelope::decode(s) {
            envelope_ok_invariants(&e).unwrap();
        }
    }
}

#[test]
fn seed_percent_and_recover() {
    for (s, want) in [
        ("%", "%"),
        ("a%", "a%"),
        ("%4", "%4"),
        ("%41%", "A%"),
        ("%%41", "%A"),
        ("%zz", "%zz"),
        ("%C3", "\u{fffd}"),
        ("%ff%fe", "\u{fffd}\u{fffd}"),
        ("é%", "é%"),
        ("%é", "%é"),
    ] {
        assert_eq!(percent_decode(s, false), want, "{s}");
    }
    for bad in [
        ":",
        "a:",
        ":1",
        "a:1:",
        "a:18446744073709551616",
        "a:-1",
        "a b:1",
        "é:1",
    ] {
        assert_eq!(parse_recover(bad), Err(RecoverError::Malformed), "{bad}");
    }
    assert_eq!(
        parse_recover("a:b:5").map(|v| (v[0].0.as_str().to_owned(), v[0].1)),
        Ok(("a:b".to_owned(), 5))
    );
    let many = vec!["c:1"; MAX_RECOVER_ENTRIES + 1].join(",");
    assert_eq!(parse_recover(&many), Err(RecoverError::TooMany));
    // Empty entries do not count towards the limit.
    let spaced = vec!["c:1"; MAX_RECOVER_ENTRIES].join(",,,");
    assert_eq!(
        parse_recover(&spaced).map(|v| v.len()),
        Ok(MAX_RECOVER_ENTRIES)
    );
    let long = format!("{}:1", "a".repeat(1 << 20));
    assert_eq!(parse_recover(&long), Err(RecoverError::Malformed));
}

#[test]
fn seed_patterns_worst_case() {
    // Backtracking worst case for a star-only glob: still a plain answer.
    let p = Pattern::new(&format!("{}b", "a*".repeat(99))).unwrap();
    assert!(!p.matches(&"a".repeat(200)));
    let p = Pattern::new(&"*".repeat(200)).unwrap();
    assert!(p.matches(&"a".repeat(200)));
    assert!(p.matches("x"));
}

// ---- regression tests for the bugs found (docs/fuzzing.md, "Findings") ----

/// B1: a number outside f64's range is valid JSON text, so `data: 1e400`
/// is accepted, and then `JsonData::to_value` panics when the message is
/// encoded for a MessagePack subscriber (data.rs `expect`).
#[test]
fn b1_data_out_of_f64_range_fans_out_or_is_refused() {
    json_decode_ok_fans_out(&publish_with("1e400"));
}

/// B1, nesting: 200 nested arrays pass `from_json_text` (serde_json's
/// `RawValue` check has no depth limit) but not `to_value` (limit 128).
#[test]
fn b1_data_nested_200_deep_fans_out_or_is_refused() {
    let text = format!("{}{}", "[".repeat(200), "]".repeat(200));
    json_decode_ok_fans_out(&publish_with(&text));
}

/// B1 from a MessagePack client: 200 nested arrays are within rmpv's depth
/// limit, transcode to JSON text, and then cannot be transcoded back.
#[test]
fn b1_msgpack_data_nested_200_deep_fans_out_or_is_refused() {
    let mut b = vec![0x84];
    for (k, v) in [("op", "publish"), ("channel", "chat_1")] {
        rmpv::encode::write_value(&mut b, &rmpv::Value::from(k)).unwrap();
        rmpv::encode::write_value(&mut b, &rmpv::Value::from(v)).unwrap();
    }
    b.extend([0xa2, b'i', b'd', 0x07, 0xa4, b'd', b'a', b't', b'a']);
    b.extend(std::iter::repeat_n(0x91, 199));
    b.push(0x90);
    match decode_request(Encoding::Msgpack, &b, limits()) {
        Ok(Request {
            op: Op::Publish { data, .. },
            ..
        }) => assert_fans_out(&data),
        Ok(other) => panic!("{other:?}"),
        Err(e) => assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(7))),
    }
}

/// B1 through the bus: an envelope whose data is `1e400` decodes.
#[test]
fn b1_envelope_data_out_of_f64_range_fans_out_or_is_refused() {
    let e = Envelope {
        v: 1,
        k: Kind::Signal,
        ch: ChannelName::new("chat_1").unwrap(),
        seq: None,
        id: None,
        ts: None,
        from: None,
        data: Bytes::from_static(b"1e400"),
    };
    if let Ok(e) = Envelope::decode(&e.encode()) {
        assert_fans_out(&e.json_data());
    }
}

/// B2: serde's derived `Deserialize` also reads a struct from a sequence,
/// so a JSON array of the fields in order is accepted as a request.
#[test]
fn b2_json_array_is_not_a_request() {
    let r = decode_request(
        Encoding::Json,
        br#"["ping",1,null,null,null,null,null]"#,
        limits(),
    );
    assert!(
        matches!(&r, Err(e) if e.code == ErrorCode::BadRequest),
        "{r:?}"
    );
    let r = decode_request(
        Encoding::Json,
        br#"["subscribe",2,"chat_1",null,null,null]"#,
        limits(),
    );
    assert!(
        matches!(&r, Err(e) if e.code == ErrorCode::BadRequest),
        "{r:?}"
    );
}

/// B3: `{"op":"subscribe","id":5,"channel":"chat_1","since":1e400}` is an
/// object with an integer id and a wrongly typed field: bad_request with
/// id 5 (section 4), not an id-less "not a JSON object".
#[test]
fn b3_unparseable_field_keeps_the_id() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for (name, text) in [
        ("since", "1e400"),
        ("token", deep.as_str()),
        ("key", "-1e999"),
    ] {
        let frame = format!(r#"{{"op":"subscribe","id":5,"channel":"chat_1","{name}":{text}}}"#);
        let r = decode_request(Encoding::Json, frame.as_bytes(), limits());
        assert!(
            matches!(&r, Err(e) if e.code == ErrorCode::BadRequest && e.id == Some(5)),
            "{name}: {r:?}"
        );
    }
}

/// B4: in MessagePack a binary `since` (or ext `token`, NaN `key`) becomes
/// `null` and so "absent": the subscribe is accepted without `since`.
#[test]
fn b4_msgpack_binary_since_is_refused() {
    for (name, v) in [
        ("since", rmpv::Value::Binary(vec![1])),
        ("token", rmpv::Value::Ext(1, vec![1])),
        ("key", rmpv::Value::F64(f64::NAN)),
    ] {
        let m = rmpv::Value::Map(vec![
            (
                "op".into(),
                if name == "key" {
                    "publish"
                } else {
                    "subscribe"
                }
                .into(),
            ),
            ("id".into(), 9.into()),
            ("channel".into(), "chat_1".into()),
            ("data".into(), 1.into()),
            (name.into(), v),
        ]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &m).unwrap();
        let r = decode_request(Encoding::Msgpack, &b, limits());
        assert!(
            matches!(&r, Err(e) if e.code == ErrorCode::BadRequest && e.id == Some(9)),
            "{name}: {r:?}"
        );
    }
}

/// B5: `u8::from_str_radix` takes a leading `+`, so `%+5` decodes to the
/// byte 0x05 although the doc says invalid escapes stay as written.
#[test]
fn b5_plus_sign_is_not_a_hex_digit() {
    assert_eq!(percent_decode("%+5", false), "%+5");
    assert_eq!(percent_decode("%+A", true), "% A");
}
