//! Fuzzing (issue 9) of token verification ([`Verifier::verify`] and
//! [`Verifier::verify_subscription`]): arbitrary strings, mutations of
//! valid tokens of every algorithm (flipped bytes, cut or swapped segments,
//! forged headers with `alg: none` and friends, huge base64), and correctly
//! signed payloads with claims of every shape.
//!
//! The properties: nothing panics; a token verifies only when it is one of
//! the valid tokens unmodified, or, when signed with the key, when its
//! claims are valid per PROTOCOL.md section 3 (a model written here).
//!
//! proptest on the stable toolchain: CI-sized case counts, or
//! `HERALD_FUZZ_CASES` per property for the long local run
//! (docs/fuzzing.md). Failures go to `proptest-regressions/fuzz.txt`
//! (committed) and are replayed first.

use crate::keys::fixtures::{EC, EC_PUB, ED, ED_PUB, RSA, RSA_PUB};
use crate::{Alg, AuthConfig, KeyConfig, Minter, Verifier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_protocol::ChannelName;
use herald_testkit::fuzz::config;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::LazyLock;

// ---- keys and the valid tokens ----

const SECRET: &str = "fuzz-secret";

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

/// The HS256 secret and one key per asymmetric algorithm, by `kid`.
static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let key = |kid: &str, alg, pem: &str| KeyConfig {
        kid: kid.into(),
        alg,
        public_key_pem: pem.into(),
    };
    Verifier::new(&AuthConfig {
        secret: Some(SECRET.into()),
        keys: vec![
            key("rsa1", Alg::RS256, RSA_PUB),
            key("ec1", Alg::ES256, EC_PUB),
            key("ed1", Alg::EdDSA, ED_PUB),
        ],
        ..AuthConfig::default()
    })
    .unwrap()
});

fn valid_claims() -> Value {
    json!({
        "sub": "op:42",
        "exp": now() + 3600,
        "channels": ["dashboard_user_42"],
        "allow": {"subscribe": ["chat_*"], "publish": ["chat_1"]},
        "info": {"name": "Purna"},
    })
}

/// One valid token per algorithm (HS256 without `kid`), minted once.
static VALID: LazyLock<Vec<String>> = LazyLock::new(|| {
    let claims = valid_claims();
    let mut v = vec![Minter::hs256(SECRET.as_bytes()).mint(&claims).unwrap()];
    for (alg, kid, pem) in [
        (Alg::RS256, "rsa1", RSA),
        (Alg::ES256, "ec1", EC),
        (Alg::EdDSA, "ed1", ED),
    ] {
        let m = Minter::from_pem(alg, Some(kid.into()), pem.as_bytes()).unwrap();
        v.push(m.mint(&claims).unwrap());
    }
    for t in &v {
        VERIFIER.verify(t).unwrap();
    }
    v
});

/// A subscription token for `op:42` on `chat_1`.
static VALID_SUB: LazyLock<String> = LazyLock::new(|| {
    Minter::hs256(SECRET.as_bytes())
        .mint(&json!({"sub": "op:42", "channel": "chat_1", "exp": now() + 3600}))
        .unwrap()
});

fn chat_1() -> ChannelName {
    ChannelName::new("chat_1").unwrap()
}

/// Both verifications refuse `t` (and neither panics).
fn refused(t: &str) -> Result<(), TestCaseError> {
    let r = VERIFIER.verify(t);
    prop_assert!(r.is_err(), "verified: {:?}", t);
    let r = VERIFIER.verify_subscription(t, "op:42", &chat_1());
    prop_assert!(
        r.is_err() || t == VALID_SUB.as_str(),
        "subscription verified: {:?}",
        t
    );
    Ok(())
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `message` (header.payload) with an HS256 signature by the secret.
fn hs_signed(message: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
        .unwrap();
    format!("{message}.{sig}")
}

// ---- generators ----

/// Characters of compact JWS and the ones that must not be in it.
fn token_char() -> impl Strategy<Value = char> {
    prop_oneof![
        10 => prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                .chars()
                .collect::<Vec<_>>()
        ),
        2 => prop::sample::select(vec!['.', '=', '+', '/', ' ', '\n', '%', '\0']),
        1 => any::<char>(),
    ]
}

/// A mutation of a token's text.
#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, char),
    Insert(prop::sample::Index, char),
    Delete(prop::sample::Index, usize),
    /// Swap two of the three segments.
    Swap(usize, usize),
    /// Replace a segment by another token's same segment.
    Splice(usize, usize),
    /// Drop or repeat a segment.
    Drop(usize),
    Repeat(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        6 => (any::<prop::sample::Index>(), token_char()).prop_map(|(i, c)| Edit::Replace(i, c)),
        2 => (any::<prop::sample::Index>(), token_char()).prop_map(|(i, c)| Edit::Insert(i, c)),
        2 => (any::<prop::sample::Index>(), 1usize..8).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => (0usize..3, 0usize..3).prop_map(|(a, b)| Edit::Swap(a, b)),
        1 => (0usize..3, 0usize..4).prop_map(|(s, t)| Edit::Splice(s, t)),
        1 => (0usize..3).prop_map(Edit::Drop),
        1 => (0usize..3).prop_map(Edit::Repeat),
    ]
}

fn apply(token: &str, e: &Edit) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let segs = |t: &str| t.split('.').map(str::to_owned).collect::<Vec<_>>();
    match e {
        Edit::Replace(i, c) => {
            if !chars.is_empty() {
                let i = i.index(chars.len());
                chars[i] = *c;
            }
        }
        Edit::Insert(i, c) => chars.insert(i.index(chars.len() + 1), *c),
        Edit::Delete(i, n) => {
            if !chars.is_empty() {
                let i = i.index(chars.len());
                let end = (i + n).min(chars.len());
                chars.drain(i..end);
            }
        }
        Edit::Swap(a, b) => {
            let mut s = segs(token);
            if *a < s.len() && *b < s.len() {
                s.swap(*a, *b);
            }
            return s.join(".");
        }
        Edit::Splice(seg, other) => {
            let mut s = segs(token);
            let o = segs(&VALID[other % VALID.len()]);
            if let (Some(x), Some(y)) = (s.get_mut(*seg), o.get(*seg)) {
                x.clone_from(y);
            }
            return s.join(".");
        }
        Edit::Drop(seg) => {
            let mut s = segs(token);
            if *seg < s.len() {
                s.remove(*seg);
            }
            return s.join(".");
        }
        Edit::Repeat(seg) => {
            let mut s = segs(token);
            if let Some(x) = s.get(*seg).cloned() {
                s.insert(*seg, x);
            }
            return s.join(".");
        }
    }
    chars.into_iter().collect()
}

/// A claim value and whether PROTOCOL.md section 3 accepts it there:
/// `Some(true)`, `Some(false)`, or `None` where the model does not say.
type Claim = (Option<Value>, Option<bool>);

fn claim(choices: Vec<(u32, Claim)>) -> BoxedStrategy<Claim> {
    let total: u32 = choices.iter().map(|(w, _)| w).sum();
    (0..total)
        .prop_map(move |mut pick| {
            for (w, c) in &choices {
                if pick < *w {
                    return c.clone();
                }
                pick -= w;
            }
            unreachable!("pick is below the total weight")
        })
        .boxed()
}

/// Claims objects with each claim of the right or a wrong shape, and
/// whether they should verify.
fn claims() -> impl Strategy<Value = (Value, Option<bool>)> {
    let n = now();
    let y = Some(true);
    let no = Some(false);
    let big_info: String = "x".repeat(1100);
    let sub = claim(vec![
        (30, (Some(json!("op:42")), y)),
        (1, (Some(json!("é \u{0} \"")), y)),
        (1, (Some(json!("")), no)),
        (1, (None, no)),
        (1, (Some(json!(42)), no)),
        (1, (Some(json!(null)), no)),
        (1, (Some(json!(["op:42"])), no)),
    ]);
    let exp = claim(vec![
        (40, (Some(json!(n + 600)), y)),
        (1, (Some(json!(i64::MAX)), y)),
        (1, (Some(json!(n - 600)), no)),
        (1, (Some(json!(-1)), no)),
        (1, (Some(json!(u64::MAX)), no)),
        (1, (Some(json!(1e300)), no)),
        (1, (Some(json!("tomorrow")), no)),
        (1, (None, no)),
        (1, (Some(json!(n as f64 + 600.5)), None)),
        (1, (Some(json!(null)), None)),
    ]);
    let nbf = claim(vec![
        (24, (None, y)),
        (6, (Some(json!(n - 600)), y)),
        (1, (Some(json!(n + 600)), no)),
        (1, (Some(json!("now")), None)),
    ]);
    let channels = claim(vec![
        (12, (None, y)),
        (12, (Some(json!(["chat_1", "dashboard_website_12"])), y)),
        (1, (Some(json!([])), y)),
        (1, (Some(json!(null)), y)),
        (1, (Some(json!(["chat 1"])), no)),
        (1, (Some(json!(["a".repeat(201)])), no)),
        (1, (Some(json!("chat_1")), no)),
        (1, (Some(json!([1])), no)),
    ]);
    let allow = claim(vec![
        (12, (None, y)),
        (
            12,
            (Some(json!({"subscribe": ["chat_*"], "presence": ["*"]})), y),
        ),
        (1, (Some(json!({"future_op": [1, 2]})), y)),
        (1, (Some(json!({"publish": ["chat 1*"]})), no)),
        (1, (Some(json!({"subscribe": "chat_*"})), no)),
        (1, (Some(json!({"signal": [null]})), no)),
        (1, (Some(json!("everything")), no)),
        // serde reads a struct from a sequence too (see docs/fuzzing.md).
        (1, (Some(json!([["chat_*"]])), None)),
    ]);
    let info = claim(vec![
        (12, (None, y)),
        (12, (Some(json!({"name": "Purna", "n": [1, 2.5, null]})), y)),
        (1, (Some(json!(null)), y)),
        (1, (Some(json!({"big": big_info})), no)),
        (1, (Some(json!([1])), no)),
        (1, (Some(json!("info")), no)),
    ]);
    let other = claim(vec![
        (6, (None, y)),
        (1, (Some(json!(5)), y)),
        (1, (Some(json!({"deep": [[[[[[1]]]]]]})), y)),
        (1, (Some(json!(1e308)), y)),
    ]);
    let aud = claim(vec![
        (6, (None, y)),
        (1, (Some(json!("elsewhere")), y)),
        (1, (Some(json!(["a", "b"])), y)),
        (1, (Some(json!(5)), None)),
    ]);
    (sub, exp, nbf, channels, allow, info, other, aud).prop_map(
        |(sub, exp, nbf, channels, allow, info, other, aud)| {
            let mut m = serde_json::Map::new();
            let mut ok = Some(true);
            for (name, (v, verdict)) in [
                ("sub", sub),
                ("exp", exp),
                ("nbf", nbf),
                ("channels", channels),
                ("allow", allow),
                ("info", info),
                ("custom", other),
                ("aud", aud),
            ] {
                ok = match (ok, verdict) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (None, _) | (_, None) => None,
                    _ => Some(true),
                };
                if let Some(v) = v {
                    m.insert(name.into(), v);
                }
            }
            (Value::Object(m), ok)
        },
    )
}

/// JOSE headers, mostly forged: `alg` none or foreign or of a wrong type,
/// `kid` naming another key, an unknown one or of a wrong type, `crit`.
fn header() -> impl Strategy<Value = (String, Option<bool>)> {
    let alg = prop_oneof![
        4 => Just((json!("HS256"), Some(true))),
        1 => prop::sample::select(vec!["none", "None", "NONE", "nOnE", "RS256", "ES256", "EdDSA", "HS384", "HS512", "PS256", "ES384", "", "hs256", "HS256 "])
            .prop_map(|a| (json!(a), Some(false))),
        1 => prop::sample::select(vec![json!(null), json!(256), json!(["HS256"]), json!({"alg": "HS256"})])
            .prop_map(|a| (a, Some(false))),
    ];
    let kid = prop_oneof![
        4 => Just((None, Some(true))),
        1 => prop::sample::select(vec!["rsa1", "ec1", "ed1"]).prop_map(|k| (Some(json!(k)), Some(false))),
        1 => prop::sample::select(vec!["nope", "", "RSA1"]).prop_map(|k| (Some(json!(k)), Some(true))),
        1 => Just((Some(json!("k".repeat(100_000))), Some(true))),
        1 => prop::sample::select(vec![json!(5), json!(["rsa1"])]).prop_map(|k| (Some(k), Some(false))),
        1 => Just((Some(json!(null)), None)),
    ];
    let extra = prop_oneof![
        6 => Just((None, Some(true))),
        1 => Just((Some(("typ", json!("at+jwt"))), None)),
        1 => Just((Some(("jku", json!("https://evil.example/keys"))), None)),
        1 => Just((Some(("crit", json!(["exp"]))), None)),
        1 => Just((Some(("b64", json!(false))), None)),
    ];
    (alg, kid, extra).prop_map(|((alg, a), (kid, k), (extra, e))| {
        let mut m = serde_json::Map::new();
        m.insert("alg".into(), alg);
        if let Some(kid) = kid {
            m.insert("kid".into(), kid);
        }
        if let Some((name, v)) = extra {
            m.insert(name.into(), v);
        }
        let ok = match (a, k, e) {
            (Some(false), ..) | (_, Some(false), _) | (.., Some(false)) => Some(false),
            (Some(true), Some(true), Some(true)) => Some(true),
            _ => None,
        };
        (serde_json::to_string(&Value::Object(m)).unwrap(), ok)
    })
}

// ---- the properties ----

proptest! {
    #![proptest_config(config(12000))]

    /// Arbitrary strings, and three base64url segments of arbitrary bytes.
    #[test]
    fn arbitrary_strings_are_refused(s in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.=-]{0,300}",
        (prop::collection::vec(any::<u8>(), 0..80), prop::collection::vec(any::<u8>(), 0..200),
         prop::collection::vec(any::<u8>(), 0..80))
            .prop_map(|(h, p, s)| format!("{}.{}.{}", b64(&h), b64(&p), b64(&s))),
        (r#"\{"alg":"[A-Za-z0-9]{0,6}"(,"kid":"[a-z0-9]{0,5}")?\}"#, prop::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(h, p)| format!("{}.{}.", b64(h.as_bytes()), b64(&p))),
    ]) {
        refused(&s)?;
    }
}

proptest! {
    #![proptest_config(config(4000))]

    /// A valid token of any algorithm, edited: refused unless the edits
    /// gave back the very same token.
    #[test]
    fn mutated_tokens_are_refused(which in 0usize..4, edits in prop::collection::vec(edit(), 1..4)) {
        let original = &VALID[which];
        let mut t = original.clone();
        for e in &edits {
            t = apply(&t, e);
        }
        if VALID.contains(&t) {
            prop_assert!(VERIFIER.verify(&t).is_ok());
        } else {
            refused(&t)?;
        }
    }

    /// Forged headers over a valid payload, with the HS256 signature of the
    /// new message, the original signature or none: only an HS256 header
    /// whose key falls to the secret and a matching signature verifies.
    #[test]
    fn forged_headers_are_refused((h, ok) in header(), which in 0usize..4, sig in 0u8..3) {
        let original = &VALID[which];
        let mut parts = original.split('.');
        let (_, payload, orig_sig) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let message = format!("{}.{payload}", b64(h.as_bytes()));
        let t = match sig {
            0 => hs_signed(&message),
            1 => format!("{message}.{orig_sig}"),
            _ => format!("{message}."),
        };
        let r = VERIFIER.verify(&t);
        if VALID.contains(&t) {
            prop_assert!(r.is_ok());
        } else if sig != 0 {
            prop_assert!(r.is_err(), "{} verified", h);
        } else if let Some(ok) = ok {
            prop_assert_eq!(r.is_ok(), ok, "{} -> {:?}", h, r);
        }
    }

    /// Correctly signed payloads: verify exactly when the claims are valid.
    #[test]
    fn signed_claims_match_model((c, ok) in claims()) {
        let t = Minter::hs256(SECRET.as_bytes()).mint(&c).unwrap();
        let r = VERIFIER.verify(&t);
        if let Some(ok) = ok {
            prop_assert_eq!(r.is_ok(), ok, "{} -> {:?}", c, r);
        }
        if let Ok(cl) = &r {
            prop_assert!(!cl.sub.is_empty());
            prop_assert!(cl.info.as_ref().is_none_or(|i| i.is_object() && serde_json::to_vec(i).unwrap().len() <= crate::MAX_INFO_BYTES));
            prop_assert!(cl.exp.is_some_and(|e| e >= now() - 5));
        }
    }

    /// Correctly signed payloads that are no claims object: any JSON value,
    /// or bytes that are not JSON.
    #[test]
    fn signed_non_objects_are_refused(payload in prop_oneof![
        prop::sample::select(vec![
            "[]", "null", "1", "\"op:42\"", "[{\"sub\":\"op:42\"}]", "{\"sub\":\"op:42\",\"exp\":1e400}",
            "{\"sub\":\"op:42\",\"exp\":18446744073709551616}", "{\"sub\":\"op:42\"", "",
            "{\"sub\":\"op:42\",\"sub\":\"admin\",\"exp\":99999999999}",
        ]).prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]) {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let t = hs_signed(&format!("{header}.{}", b64(&payload)));
        refused(&t)?;
    }

    /// Subscription tokens: valid only for the same `sub` and channel.
    #[test]
    fn subscription_tokens_match_model(sub in prop_oneof![Just("op:42".to_owned()), "\\PC{0,8}"],
                                       channel in prop_oneof![Just(json!("chat_1")), Just(json!("chat_2")), Just(json!(1)), Just(json!(null)), "\\PC{0,8}".prop_map(Value::from)],
                                       expired in any::<bool>()) {
        let exp = if expired { now() - 600 } else { now() + 600 };
        let t = Minter::hs256(SECRET.as_bytes()).mint(&json!({"sub": sub, "channel": channel, "exp": exp})).unwrap();
        let r = VERIFIER.verify_subscription(&t, "op:42", &chat_1());
        let ok = sub == "op:42" && channel == json!("chat_1") && !expired;
        prop_assert_eq!(r.is_ok(), ok, "{} {} -> {:?}", sub, channel, r);
    }
}

// ---- seed corpus ----

#[test]
fn seed_tokens_are_refused() {
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64(serde_json::to_vec(&valid_claims()).unwrap().as_slice());
    let huge = "A".repeat(1 << 20);
    let valid = &VALID[0];
    let (h, rest) = valid.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let seeds = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "a.b.c".into(),
        "a.b.c.d".into(),
        format!("{none_header}.{claims}."),
        format!("{none_header}.{claims}.{s}"),
        format!("{huge}.{p}.{s}"),
        format!("{h}.{huge}.{s}"),
        format!("{h}.{p}.{huge}"),
        format!("{h}.{p}.{s}="),
        format!("{h}=.{p}.{s}"),
        format!(" {valid}"),
        format!("{valid} "),
        format!("{valid}."),
        format!("{p}.{h}.{s}"),
        format!("{h}.{p}"),
        valid.replace('-', "+").replace('_', "/"),
        hs_signed(&format!("{}.{claims}", b64(br#"{"alg":"HS256","kid":5}"#))),
        hs_signed(&format!(
            "{}.{claims}",
            b64(br#"{"alg":"HS256","alg":"none"}"#)
        )),
        hs_signed(&format!("{}.{claims}", b64(b"[\"HS256\"]"))),
        hs_signed(&format!("{}.{claims}", b64(b"{}"))),
        hs_signed(&format!("{h}.{}", b64(b"[]"))),
    ];
    for t in &seeds {
        if t.as_bytes() != valid.as_bytes() {
            assert!(VERIFIER.verify(t).is_err(), "{:.80}", t);
        }
    }
}

#[test]
fn seed_deep_claims_are_refused_or_valid() {
    // Nesting far past serde_json's recursion limit, in a claim the
    // verifier reads (`info`) and in one it ignores.
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let base = format!(r#""sub":"op:42","exp":{}"#, now() + 600);
    for payload in [
        format!(r#"{{{base},"info":{{"a":{deep}}}}}"#),
        format!(r#"{{{base},"custom":{deep}}}"#),
    ] {
        let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
        let t = hs_signed(&format!("{header}.{}", b64(payload.as_bytes())));
        if let Ok(c) = VERIFIER.verify(&t) {
            assert_eq!(c.sub, "op:42");
            assert!(c.info.is_none());
        }
    }
}
