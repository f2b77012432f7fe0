//! Property tests: every client frame round-trips in both encodings; server
//! frames carry the same values in JSON and MessagePack; the pattern matcher
//! agrees with PROTOCOL.md section 1's reference (an anchored regex); the
//! decoder never panics on arbitrary bytes.
#![allow(clippy::unwrap_used)] // test helpers: a failure here is a test failure

use herald_protocol::data::msgpack_to_json;
use herald_protocol::server::{Message, MessageKind, Signal};
use herald_protocol::{
    ChannelName, DecodeLimits, Encoding, JsonData, Op, Pattern, Request, decode_request, encode,
    encode_request,
};
use proptest::prelude::*;
use serde_json::Value;

const LIMITS: DecodeLimits = DecodeLimits {
    max_data_bytes: 1 << 20,
};

fn channel() -> impl Strategy<Value = ChannelName> {
    "[A-Za-z0-9_.:@=-]{1,40}".prop_map(|s| ChannelName::new(&s).unwrap())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    let tok = "[A-Za-z0-9._-]{1,60}";
    prop_oneof![
        (
            channel(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(tok)
        )
            .prop_map(|(channel, since, token)| Op::Subscribe {
                channel,
                since,
                token
            }),
        channel().prop_map(|channel| Op::Unsubscribe { channel }),
        (
            channel(),
            json_value(),
            proptest::option::of("[a-z0-9-]{1,32}")
        )
            .prop_map(|(channel, v, key)| Op::Publish {
                channel,
                data: JsonData::from_value(&v),
                key
            }),
        (channel(), json_value()).prop_map(|(channel, v)| Op::Signal {
            channel,
            data: JsonData::from_value(&v)
        }),
        channel().prop_map(|channel| Op::Presence { channel }),
        tok.prop_map(|token| Op::Refresh { token }),
        Just(Op::Ping),
    ]
}

fn to_json(enc: Encoding, bytes: &[u8]) -> Value {
    match enc {
        Encoding::Json => serde_json::from_slice(bytes).unwrap(),
        Encoding::Msgpack => {
            msgpack_to_json(rmpv::decode::read_value(&mut &bytes[..]).unwrap()).unwrap()
        }
    }
}

proptest! {
    #[test]
    fn client_frames_roundtrip(id in any::<i64>(), op in op()) {
        let req = Request { id, op };
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let bytes = encode_request(enc, &req);
            let back = decode_request(enc, &bytes, LIMITS).unwrap();
            prop_assert_eq!(&back, &req);
        }
    }

    #[test]
    fn server_frames_agree_across_encodings(ch in channel(), seq in any::<u64>(), ts in any::<i64>(),
                                            from in proptest::option::of("\\PC{0,10}"), v in json_value()) {
        let data = JsonData::from_value(&v);
        let msg = Message { kind: Some(MessageKind::Message), channel: ch.clone(), seq, id: "m_1".into(), ts, from: from.clone(), data: data.clone() };
        let j = to_json(Encoding::Json, &encode(Encoding::Json, &msg));
        let m = to_json(Encoding::Msgpack, &encode(Encoding::Msgpack, &msg));
        prop_assert_eq!(&j, &m);
        prop_assert_eq!(&j["type"], "message");
        prop_assert_eq!(&j["data"], &v);
        prop_assert_eq!(j["seq"].as_u64(), Some(seq));
        let sig = Signal { kind: "signal", channel: &ch, from: from.as_deref(), data: &data };
        let j = to_json(Encoding::Json, &encode(Encoding::Json, &sig));
        let m = to_json(Encoding::Msgpack, &encode(Encoding::Msgpack, &sig));
        prop_assert_eq!(&j, &m);
        prop_assert_eq!(&j["data"], &v);
    }

    #[test]
    fn pattern_matches_reference_regex(p in "[ab_*]{1,8}", n in "[ab_]{1,10}") {
        let pat = Pattern::new(&p).unwrap();
        let re = format!("^{}$", regex::escape(&p).replace("\\*", "[A-Za-z0-9_.:@=-]*"));
        let re = regex::Regex::new(&re).unwrap();
        prop_assert_eq!(pat.matches(&n), re.is_match(&n), "pattern {} name {}", p, n);
    }

    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_request(Encoding::Json, &bytes, LIMITS);
        let _ = decode_request(Encoding::Msgpack, &bytes, LIMITS);
    }

    #[test]
    fn channel_validation_matches_reference(s in "\\PC{0,210}") {
        let re = regex::Regex::new("^[A-Za-z0-9_.:@=-]{1,200}$").unwrap();
        prop_assert_eq!(ChannelName::new(&s).is_ok(), re.is_match(&s) && s.len() <= 200);
    }
}

#[test]
fn wrong_types_carry_the_id() {
    let e = decode_request(
        Encoding::Json,
        br#"{"op":"subscribe","id":7,"channel":5}"#,
        LIMITS,
    )
    .unwrap_err();
    assert_eq!(e.id, Some(7));
    assert_eq!(e.code.as_str(), "bad_request");
    let e = decode_request(
        Encoding::Json,
        br#"{"op":"subscribe","id":"x","channel":"a"}"#,
        LIMITS,
    )
    .unwrap_err();
    assert_eq!(e.id, None);
    let e = decode_request(
        Encoding::Json,
        br#"{"op":"subscribe","id":1,"channel":"a b"}"#,
        LIMITS,
    )
    .unwrap_err();
    assert_eq!(e.code.as_str(), "bad_channel");
    let e = decode_request(
        Encoding::Json,
        br#"{"op":"publish","id":1,"channel":"a","data":"xxxxxxxxxx"}"#,
        DecodeLimits { max_data_bytes: 5 },
    )
    .unwrap_err();
    assert_eq!(e.code.as_str(), "too_large");
}

#[test]
fn msgpack_data_without_json_form_is_bad_request() {
    use rmpv::Value as M;
    let frame = |data: M| {
        let v = M::Map(vec![
            (M::from("op"), M::from("publish")),
            (M::from("id"), M::from(3)),
            (M::from("channel"), M::from("c")),
            (M::from("data"), data),
        ]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &v).unwrap();
        b
    };
    for bad in [
        M::Binary(vec![1, 2]),
        M::Map(vec![(M::from(1), M::from(2))]),
        M::F64(f64::NAN),
        M::Ext(1, vec![0]),
    ] {
        let e = decode_request(Encoding::Msgpack, &frame(bad), LIMITS).unwrap_err();
        assert_eq!(e.id, Some(3));
        assert_eq!(e.code.as_str(), "bad_request");
    }
}

#[test]
fn null_data_is_a_value_not_a_missing_field() {
    let r = decode_request(
        Encoding::Json,
        br#"{"op":"publish","id":1,"channel":"c","data":null}"#,
        LIMITS,
    )
    .unwrap();
    match r.op {
        Op::Publish { data, .. } => assert_eq!(data.as_bytes(), b"null"),
        other => panic!("{other:?}"),
    }
    let e = decode_request(
        Encoding::Json,
        br#"{"op":"publish","id":1,"channel":"c"}"#,
        LIMITS,
    )
    .unwrap_err();
    assert_eq!(e.message, "missing data");
}

/// A history item read back over HTTP keeps `data` byte-exact: key order,
/// `1.50`, integers beyond f64 (a replay must carry what was published).
#[test]
fn history_items_keep_data_verbatim() {
    let text = r#"{"channel":"c","seq":1,"id":"m","ts":1,"data":{"b":1.50,"a":123456789012345678901234567890,"s":"\u00e9"}}"#;
    let m: herald_protocol::server::Message = serde_json::from_str(text).unwrap();
    assert_eq!(
        std::str::from_utf8(m.data.as_bytes()).unwrap(),
        r#"{"b":1.50,"a":123456789012345678901234567890,"s":"\u00e9"}"#
    );
    let page: herald_protocol::api::HistoryPage =
        serde_json::from_str(&format!(r#"{{"messages":[{text}],"last_seq":1}}"#)).unwrap();
    assert_eq!(page.messages[0].data, m.data);
}
