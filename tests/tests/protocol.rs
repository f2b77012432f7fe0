//! PROTOCOL.md end to end against real `herald dev` processes: every op and
//! reply shape, every error code and close code one node can produce, the
//! ingest HTTP API, the admin endpoints and the SIGTERM drain.
//!
//! Each test starts its own herald (dev mode, SQLite in a temp dir) on its
//! own port, so tests run in parallel. Frames are read as generic values
//! (`serde_json::Value`, `rmpv::Value`), tokens are minted with
//! `jsonwebtoken`: nothing here shares code with the server.

use std::time::{Duration, Instant};

use herald_tests::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

/// A token for `sub` allowed subscribe, publish and signal on every
/// channel, but no presence grant (so no presence events arrive).
fn full(sub: &str) -> TokenBuilder {
    TokenBuilder::new(sub)
        .allow("subscribe", &["*"])
        .allow("publish", &["*"])
        .allow("signal", &["*"])
}

/// Opens `connect` (the upgrade must complete) and expects exactly one
/// `disconnect` frame with `code`, then the close frame with `code`.
async fn expect_rejected(connect: Connect, code: u16, what: &str) {
    let mut c = connect.open().await;
    let frames = c.expect_close(code).await;
    assert_eq!(
        frames.len(),
        1,
        "{what}: exactly one frame (the disconnect) before close {code}: {frames:?}"
    );
    let d = &frames[0];
    assert_eq!(d["type"], "disconnect", "{what}: {d}");
    assert_eq!(d["code"], code, "{what}: {d}");
    assert!(
        d["reason"].is_string(),
        "{what}: disconnect without reason: {d}"
    );
    assert!(
        d["reconnect"].is_boolean(),
        "{what}: disconnect without reconnect: {d}"
    );
}

/// Subs of a welcome frame sorted by channel.
fn sorted_subs(welcome: &Value) -> Vec<Value> {
    let mut subs = welcome["subs"]
        .as_array()
        .unwrap_or_else(|| panic!("welcome without a subs array: {welcome}"))
        .clone();
    subs.sort_by_key(|s| s["channel"].as_str().unwrap_or_default().to_string());
    subs
}

/// Asserts `ts` is a millisecond timestamp within a minute of now.
fn assert_recent_ts(ts: &Value) {
    let t = ts
        .as_i64()
        .unwrap_or_else(|| panic!("ts is not an integer: {ts}"));
    assert!(
        (t - now_ms()).abs() < 60_000,
        "ts {t} is not milliseconds near now"
    );
}

/// A `publish` frame whose JSON text is exactly `len` bytes.
fn publish_frame_of_len(id: i64, channel: &str, len: usize) -> String {
    let base = json!({"op": "publish", "id": id, "channel": channel, "data": ""}).to_string();
    assert!(len >= base.len());
    let f = json!({"op": "publish", "id": id, "channel": channel, "data": "x".repeat(len - base.len())})
        .to_string();
    assert_eq!(f.len(), len);
    f
}

// ---------------------------------------------------------------------------
// Section 2: connecting
// ---------------------------------------------------------------------------

/// PROTOCOL.md section 2 "Connecting": the first frame is `welcome` with
/// `conn`, `node`, `heartbeat` (a number) and `subs` = the token's
/// `channels`, each with its current last seq; in both encodings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_lists_token_channels_with_last_seq() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    api.publish_n("dashboard_website_12", 3).await;
    let token = TokenBuilder::new("op:42")
        .channels(&["dashboard_website_12", "dashboard_user_7"])
        .sign(&h.jwt_secret);
    let mut conns = Vec::new();
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let (c, w) = Connect::new(&h).token(&token).encoding(enc).ready().await;
        assert_eq!(c.encoding, enc);
        assert!(w["conn"].as_str().is_some_and(|s| !s.is_empty()), "{w}");
        assert!(w["node"].as_str().is_some_and(|s| !s.is_empty()), "{w}");
        assert_eq!(
            w["heartbeat"].as_f64(),
            Some(25.0),
            "default heartbeat: {w}"
        );
        assert_eq!(
            sorted_subs(&w),
            vec![
                json!({"channel": "dashboard_user_7", "seq": 0}),
                json!({"channel": "dashboard_website_12", "seq": 3}),
            ],
            "{enc:?} welcome: {w}"
        );
        conns.push(w["conn"].clone());
    }
    assert_ne!(conns[0], conns[1], "each connection has its own conn id");
}

/// PROTOCOL.md section 2: the token is taken from the `token` query
/// parameter or from an `Authorization: Bearer` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_query_or_bearer_header() {
    let h = start_dev(&[]).await;
    let token = TokenBuilder::new("u1")
        .channels(&["a_1"])
        .sign(&h.jwt_secret);
    let (_q, wq) = Connect::new(&h).token(&token).ready().await;
    assert_eq!(sorted_subs(&wq), vec![json!({"channel": "a_1", "seq": 0})]);
    let (mut b, wb) = Connect::new(&h).bearer(&token).ready().await;
    assert_eq!(sorted_subs(&wb), vec![json!({"channel": "a_1", "seq": 0})]);
    b.ping().await;
    // A bad bearer token is judged like a bad query token.
    let wrong = TokenBuilder::new("u1").sign("not-the-secret");
    expect_rejected(
        Connect::new(&h).bearer(&wrong),
        4001,
        "bearer with a wrong secret",
    )
    .await;
}

/// PROTOCOL.md section 2 "Subprotocol": no offer -> no header and JSON; an
/// offer is echoed (`herald.json` text, `herald.msgpack` binary frames); an
/// offer naming neither is refused with HTTP 400 before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_echo_rules() {
    let h = start_dev(&[]).await;
    let token = TokenBuilder::new("u1").sign(&h.jwt_secret);
    let proto = |r: &HandshakeResponse| {
        r.headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| v.to_str().unwrap().to_string())
    };

    let (mut c, r) = Connect::new(&h).token(&token).try_open().await.unwrap();
    assert_eq!(proto(&r), None, "no offer, no subprotocol header");
    assert_eq!(c.encoding, Encoding::Json);
    assert_eq!(c.recv().await["type"], "welcome"); // recv asserts a text frame

    let (mut c, r) = Connect::new(&h)
        .token(&token)
        .protocol("herald.json")
        .try_open()
        .await
        .unwrap();
    assert_eq!(proto(&r).as_deref(), Some("herald.json"));
    assert_eq!(c.recv().await["type"], "welcome");

    let (mut c, r) = Connect::new(&h)
        .token(&token)
        .msgpack()
        .try_open()
        .await
        .unwrap();
    assert_eq!(proto(&r).as_deref(), Some("herald.msgpack"));
    assert_eq!(c.encoding, Encoding::Msgpack);
    assert_eq!(c.recv().await["type"], "welcome"); // recv asserts a binary frame
    c.ping().await;

    let (mut c, r) = Connect::new(&h)
        .token(&token)
        .protocol("foo, herald.msgpack")
        .try_open()
        .await
        .unwrap();
    assert_eq!(
        proto(&r).as_deref(),
        Some("herald.msgpack"),
        "the known protocol of a mixed offer"
    );
    assert_eq!(c.recv().await["type"], "welcome");

    match Connect::new(&h)
        .token(&token)
        .protocol("foo")
        .try_open()
        .await
    {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 400),
        Err(e) => panic!("offer \"foo\": expected HTTP 400, got {e}"),
        Ok((_, r)) => panic!("offer \"foo\" was upgraded: {r:?}"),
    }
}

/// PROTOCOL.md sections 2 and 3: a missing, malformed, wrongly signed,
/// unsigned (`alg: none`), not yet valid or claim-lacking token completes the
/// upgrade, gets a `disconnect` frame and close 4001; an expired one 4004.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_disconnect_then_close() {
    let h = start_dev(&[]).await;
    let s = &h.jwt_secret;
    let now = now_secs();
    let cases: Vec<(&str, Connect, u16)> = vec![
        ("missing token", Connect::new(&h), 4001),
        ("missing token, msgpack", Connect::new(&h).msgpack(), 4001),
        ("garbage", Connect::new(&h).token("garbage"), 4001),
        ("three garbage parts", Connect::new(&h).token("a.b.c"), 4001),
        (
            "wrong secret",
            Connect::new(&h).token(&full("u1").sign("not-the-secret")),
            4001,
        ),
        (
            "alg none",
            Connect::new(&h).token(&alg_none_token(&full("u1").claims())),
            4001,
        ),
        (
            "expired",
            Connect::new(&h).token(&full("u1").exp(now - 3600).sign(s)),
            4004,
        ),
        (
            "expired, msgpack",
            Connect::new(&h)
                .msgpack()
                .token(&full("u1").exp(now - 3600).sign(s)),
            4004,
        ),
        (
            "nbf in the future",
            Connect::new(&h).token(&full("u1").claim("nbf", json!(now + 3600)).sign(s)),
            4001,
        ),
        (
            "missing sub",
            Connect::new(&h).token(&full("u1").without("sub").sign(s)),
            4001,
        ),
        (
            "missing exp",
            Connect::new(&h).token(&full("u1").without("exp").sign(s)),
            4001,
        ),
    ];
    for (what, connect, code) in cases {
        expect_rejected(connect, code, what).await;
    }
    // The server survived all of it.
    let (mut c, _) = Connect::new(&h).token(&full("u1").sign(s)).ready().await;
    c.ping().await;
}

/// PROTOCOL.md section 3: `aud` and `iss` are checked only when configured
/// (not here), and the default clock leeway is 5 s: a token expired 2 s ago
/// or valid only from 2 s ahead is accepted; the first is closed with 4004
/// once `exp` + 5 s has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_leeway_and_unchecked_aud_iss() {
    let h = start_dev(&[]).await;
    let s = &h.jwt_secret;
    let with_aud = full("u1")
        .claim("aud", json!("some-app"))
        .claim("iss", json!("backend"))
        .claim("iat", json!(now_secs()))
        .sign(s);
    let (mut c, _) = Connect::new(&h).token(&with_aud).ready().await;
    c.ping().await;

    let nbf_soon = full("u1").claim("nbf", json!(now_secs() + 2)).sign(s);
    let (mut early, _) = Connect::new(&h).token(&nbf_soon).ready().await;
    early.ping().await;

    let exp = now_secs() - 2;
    let (mut late, _) = Connect::new(&h)
        .token(&full("u1").exp(exp).sign(s))
        .ready()
        .await;
    late.ping().await;
    late.expect_disconnect_within(4004, Duration::from_secs(10))
        .await;
    let at = now_ms();
    assert!(
        at >= (exp + 5) * 1000 - 250,
        "closed at {at} ms, before exp + 5 s = {} s",
        exp + 5
    );
}

/// PROTOCOL.md section 3: a connection whose token passes `exp` + leeway
/// (`--jwt-leeway 0`) without a `refresh` gets `disconnect` and close 4004;
/// a successful `refresh` (reply `result: {}`) keeps it open past the old
/// expiry; a refused `refresh` (other `sub`, bad token) gets `forbidden` and
/// keeps the old token and its old expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_and_refresh() {
    let h = start_dev(&["--jwt-leeway", "0"]).await;
    let s = &h.jwt_secret;
    let exp = now_secs() + 4;
    let short = full("u1").exp(exp).sign(s);

    let (mut expiring, _) = Connect::new(&h).token(&short).ready().await;
    let (mut refused, _) = Connect::new(&h).token(&short).ready().await;
    let (mut refreshed, _) = Connect::new(&h).token(&short).ready().await;

    let other_sub = full("u2").exp(now_secs() + 600).sign(s);
    assert_eq!(
        refused
            .call_err("refresh", json!({ "token": other_sub }))
            .await,
        "forbidden"
    );
    assert_eq!(
        refused
            .call_err("refresh", json!({"token": "garbage"}))
            .await,
        "forbidden"
    );
    let wrong_secret = full("u1").exp(now_secs() + 600).sign("not-the-secret");
    assert_eq!(
        refused
            .call_err("refresh", json!({ "token": wrong_secret }))
            .await,
        "forbidden"
    );
    refused.ping().await;

    let long = full("u1").exp(now_secs() + 600).sign(s);
    assert_eq!(
        refreshed.call_ok("refresh", json!({ "token": long })).await,
        json!({})
    );

    expiring
        .expect_disconnect_within(4004, Duration::from_secs(15))
        .await;
    let closed_at = now_ms();
    assert!(
        closed_at >= exp * 1000 - 250,
        "closed at {closed_at} ms, before exp {exp} s"
    );
    refused
        .expect_disconnect_within(4004, Duration::from_secs(5))
        .await;

    // The refreshed connection sees nothing (no disconnect, no close) until
    // well past the old expiry, then still answers.
    let quiet_until = (exp + 2) * 1000;
    let left = Duration::from_millis(u64::try_from((quiet_until - now_ms()).max(0)).unwrap());
    assert_eq!(
        refreshed.next_event(left).await,
        None,
        "refreshed connection got something"
    );
    refreshed.ping().await;
}

/// PROTOCOL.md section 3: a successful `refresh` ends the subscriptions the
/// new token no longer allows, each announced by `unsubscribed` with reason
/// `forbidden`; a `refresh` naming another `sub` gets `forbidden`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ends_subscriptions_no_longer_granted() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let s = &h.jwt_secret;
    let t1 = TokenBuilder::new("u1")
        .channels(&["auto_a"])
        .allow("subscribe", &["room_*", "keep_*"])
        .sign(s);
    let (mut c, _) = Connect::new(&h).token(&t1).ready().await;
    c.subscribe("room_1").await;
    c.subscribe("keep_1").await;

    // Same sub, still the automatic channel and keep_*, no longer room_*.
    let t2 = TokenBuilder::new("u1")
        .channels(&["auto_a"])
        .allow("subscribe", &["keep_*"])
        .sign(s);
    assert_eq!(
        c.call_ok("refresh", json!({ "token": t2 })).await,
        json!({})
    );
    let u = c
        .recv_until("unsubscribed", |v| v["type"] == "unsubscribed")
        .await;
    assert_eq!(
        u,
        json!({"type": "unsubscribed", "channel": "room_1", "reason": "forbidden"})
    );
    assert_eq!(
        c.call_err("unsubscribe", json!({"channel": "room_1"}))
            .await,
        "not_subscribed"
    );

    // room_1 is no longer delivered; keep_1 and auto_a still are.
    api.publish("room_1", json!({"gone": true})).await;
    api.publish("keep_1", json!({"kept": true})).await;
    let m = c.recv().await;
    assert_eq!(
        message_seq(&m, "keep_1"),
        Some(1),
        "expected keep_1's message, got {m}"
    );
    api.publish("auto_a", json!({"auto": true})).await;
    let m = c.recv().await;
    assert_eq!(
        message_seq(&m, "auto_a"),
        Some(1),
        "expected auto_a's message, got {m}"
    );

    // Another sub: forbidden, nothing ended.
    let other = TokenBuilder::new("u2").allow_all().sign(s);
    assert_eq!(
        c.call_err("refresh", json!({ "token": other })).await,
        "forbidden"
    );

    // A token without `channels` no longer implies auto_a.
    let t3 = TokenBuilder::new("u1")
        .allow("subscribe", &["keep_*"])
        .sign(s);
    assert_eq!(
        c.call_ok("refresh", json!({ "token": t3 })).await,
        json!({})
    );
    let u = c
        .recv_until("unsubscribed", |v| v["type"] == "unsubscribed")
        .await;
    assert_eq!(
        u,
        json!({"type": "unsubscribed", "channel": "auto_a", "reason": "forbidden"})
    );
    c.ping().await;
    assert!(c.take_pending().is_empty());
}

// ---------------------------------------------------------------------------
// Sections 1, 3, 4, 5: ops and replies
// ---------------------------------------------------------------------------

/// PROTOCOL.md section 5: the subscribe reply carries `channel` and `seq`;
/// a repeated subscribe answers `channel` and `seq` only and replays nothing;
/// `unsubscribe` answers `{}` (automatic subscriptions too) and then
/// `not_subscribed`; grants decide (`forbidden`); names outside section 1
/// get `bad_channel`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_replies() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    api.publish_n("room_a", 2).await;
    let t = TokenBuilder::new("u1")
        .channels(&["auto_x"])
        .allow("subscribe", &["room_*"])
        .sign(&h.jwt_secret);
    let (mut c, _) = Connect::new(&h).token(&t).ready().await;

    let r = c.subscribe("room_a").await;
    assert_eq!(r["channel"], "room_a", "{r}");
    assert_eq!(r["seq"], 2, "{r}");
    let r = c.subscribe("room_b").await;
    assert_eq!(
        (&r["channel"], &r["seq"]),
        (&json!("room_b"), &json!(0)),
        "{r}"
    );

    // Already held: channel and seq only, whatever since says, no replay.
    let r = c
        .call_ok("subscribe", json!({"channel": "room_a", "since": 0}))
        .await;
    assert_eq!(r, json!({"channel": "room_a", "seq": 2}));
    api.publish("room_a", json!({"marker": 3})).await;
    let m = c.recv().await;
    assert_eq!(
        message_seq(&m, "room_a"),
        Some(3),
        "a repeated subscribe replayed: {m}"
    );

    assert_eq!(
        c.call_err("subscribe", json!({"channel": "secret_1"}))
            .await,
        "forbidden"
    );
    let too_long = format!("room_{}", "x".repeat(196));
    for bad in ["room a", "room_!", "", "room_é", too_long.as_str()] {
        assert_eq!(
            c.call_err("subscribe", json!({ "channel": bad })).await,
            "bad_channel",
            "channel {bad:?}"
        );
    }
    // 200 bytes is still a name.
    let longest = format!("room_{}", "x".repeat(195));
    assert_eq!(c.subscribe(&longest).await["channel"], json!(longest));

    assert_eq!(
        c.call_ok("unsubscribe", json!({"channel": "room_b"})).await,
        json!({})
    );
    assert_eq!(
        c.call_err("unsubscribe", json!({"channel": "room_b"}))
            .await,
        "not_subscribed"
    );
    assert_eq!(
        c.call_err("unsubscribe", json!({"channel": "room_never"}))
            .await,
        "not_subscribed"
    );

    // `since` on an empty channel: nothing missed, nothing lost.
    let r = c
        .call_ok("subscribe", json!({"channel": "room_c", "since": 0}))
        .await;
    assert_eq!(
        r,
        json!({"channel": "room_c", "seq": 0, "recovered": true, "replayed": 0})
    );
    // An automatic subscription can be left like any other.
    assert_eq!(
        c.call_ok("unsubscribe", json!({"channel": "auto_x"})).await,
        json!({})
    );

    // Nothing of room_b, auto_x or secret_1 arrives any more.
    api.publish("auto_x", json!({"late": true})).await;
    api.publish("room_b", json!({"late": true})).await;
    api.publish("secret_1", json!({"secret": true})).await;
    api.publish("room_a", json!({"marker": 4})).await;
    let m = c.recv().await;
    assert_eq!(
        message_seq(&m, "room_a"),
        Some(4),
        "expected only room_a's marker, got {m}"
    );
}

/// PROTOCOL.md sections 1 and 3: a pattern is anchored and `*` matches any
/// run of allowed characters, the empty run included; the real channel names
/// of section 1 are accepted; every op checks its own grant (`forbidden`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_and_channel_names() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let t = TokenBuilder::new("u1")
        .allow("subscribe", &["chat_*", "dashboard_website_*"])
        .sign(&h.jwt_secret);
    let (mut c, _) = Connect::new(&h).token(&t).ready().await;
    for ok in [
        "chat_",
        "chat_updates",
        "chat_8942b9df-77c8-4e5f-a7eb-097aace75053",
        "chat_sishirbhusal",
        "chat_a.b:c@d=e-f",
        "dashboard_website_12",
    ] {
        assert_eq!(c.subscribe(ok).await["channel"], ok);
    }
    for no in [
        "chat",
        "xchat_1",
        "dashboard_user_7",
        "Chat_1",
        "dashboard_website",
    ] {
        assert_eq!(
            c.call_err("subscribe", json!({ "channel": no })).await,
            "forbidden",
            "{no}"
        );
    }
    // Subscribe rights do not grant publish, signal or presence.
    for op in ["publish", "signal"] {
        assert_eq!(
            c.call_err(op, json!({"channel": "chat_updates", "data": {"x": 1}}))
                .await,
            "forbidden",
            "{op}"
        );
    }
    assert_eq!(
        c.call_err("presence", json!({"channel": "chat_updates"}))
            .await,
        "forbidden"
    );
    // The forbidden publish stored nothing.
    let hist = api.history("chat_updates", &[]).await;
    assert_eq!(hist, json!({"messages": [], "last_seq": 0}));

    // Every allowed character in a channel name, end to end.
    let (mut all, _) = Connect::new(&h)
        .token(&full("u2").sign(&h.jwt_secret))
        .ready()
        .await;
    let name = "AZaz09_-.:@=";
    all.subscribe(name).await;
    let r = all.publish(name, json!({"ok": true})).await;
    assert_eq!(r["seq"], 1);
    let m = all.recv_until("message", |v| v["type"] == "message").await;
    assert_eq!(m["channel"], name);
}

/// PROTOCOL.md section 3: a subscription token `{"sub","channel","exp"}`
/// grants one channel; one for another sub, another channel, expired or
/// wrongly signed gets `forbidden`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_tokens() {
    let h = start_dev(&[]).await;
    let s = &h.jwt_secret;
    let t = TokenBuilder::new("u1").sign(s);
    let (mut c, _) = Connect::new(&h).token(&t).ready().await;
    let later = now_secs() + 600;

    let cases = [
        (
            "priv_2",
            subscription_token(s, "u2", "priv_2", later),
            "another sub",
        ),
        (
            "priv_3",
            subscription_token(s, "u1", "priv_4", later),
            "another channel",
        ),
        (
            "priv_5",
            subscription_token(s, "u1", "priv_5", now_secs() - 3600),
            "expired",
        ),
        (
            "priv_6",
            subscription_token("not-the-secret", "u1", "priv_6", later),
            "wrong secret",
        ),
        ("priv_7", "garbage".to_string(), "garbage"),
    ];
    for (ch, tok, what) in cases {
        assert_eq!(
            c.call_err("subscribe", json!({"channel": ch, "token": tok}))
                .await,
            "forbidden",
            "{what}"
        );
    }
    assert_eq!(
        c.call_err("subscribe", json!({"channel": "priv_1"})).await,
        "forbidden"
    );
    let r = c
        .call_ok(
            "subscribe",
            json!({"channel": "priv_1", "token": subscription_token(s, "u1", "priv_1", later)}),
        )
        .await;
    assert_eq!(r["channel"], "priv_1");
    assert_eq!(r["seq"], 0);
    Api::new(&h).publish("priv_1", json!({"hello": 1})).await;
    let m = c.recv().await;
    assert_eq!(message_seq(&m, "priv_1"), Some(1), "{m}");
}

/// PROTOCOL.md section 4: a frame that is not an object, lacks `op` or `id`
/// or has a field of the wrong type gets `bad_request` (carrying the id only
/// when it is an integer); an unknown op gets `unknown_op`; a bad request
/// never closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_json() {
    let h = start_dev(&[]).await;
    let (mut c, _) = Connect::new(&h)
        .token(&full("u1").sign(&h.jwt_secret))
        .ready()
        .await;

    let no_id: Vec<Message> = vec![
        Message::text("[1,2,3]"),
        Message::text("42"),
        Message::text("\"op\""),
        Message::text("not json"),
        Message::text("{\"op\":\"ping\""),
        Message::text(json!({"op": "ping"}).to_string()),
        Message::text(json!({"op": "ping", "id": "7"}).to_string()),
        Message::text(json!({"op": "ping", "id": 1.5}).to_string()),
    ];
    for m in no_id {
        let shown = format!("{m:?}");
        c.send_message(m).await;
        let r = c.recv().await;
        assert_eq!(error_code(&r), "bad_request", "{shown}: {r}");
        assert!(
            r.get("id").is_none_or(Value::is_null),
            "{shown}: id carried: {r}"
        );
    }

    let with_id = [
        (json!({"id": 5}), "bad_request"),
        (json!({"op": 5, "id": 6}), "bad_request"),
        (
            json!({"op": "subscribe", "id": 7, "channel": 42}),
            "bad_request",
        ),
        (json!({"op": "subscribe", "id": 8}), "bad_request"),
        (
            json!({"op": "subscribe", "id": 9, "channel": "ok_1", "since": "x"}),
            "bad_request",
        ),
        (
            json!({"op": "subscribe", "id": 10, "channel": "ok_1", "since": -1}),
            "bad_request",
        ),
        (
            json!({"op": "publish", "id": 11, "channel": "ok_1"}),
            "bad_request",
        ),
        (
            json!({"op": "publish", "id": 12, "channel": "ok_1", "data": 1, "key": 5}),
            "bad_request",
        ),
        (json!({"op": "refresh", "id": 13}), "bad_request"),
        (json!({"op": "frobnicate", "id": 14}), "unknown_op"),
        (
            json!({"op": "publish", "id": 15, "channel": "bad channel", "data": 1}),
            "bad_channel",
        ),
    ];
    for (frame, code) in with_id {
        let r = c.request(frame.clone()).await;
        assert_eq!(error_code(&r), code, "{frame}: {r}");
        assert_eq!(r["id"], frame["id"], "{frame}: {r}");
    }
    c.ping().await;
}

/// PROTOCOL.md sections 4 and 7: `data` in publish is at most 16 KiB of JSON
/// text as received; one byte more gets `too_large` (the connection stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_data_size_limit_json() {
    let h = start_dev(&[]).await;
    let (mut c, _) = Connect::new(&h)
        .token(&full("u1").sign(&h.jwt_secret))
        .ready()
        .await;
    let r = c.publish("big_1", json_string_of_len(16 * 1024)).await;
    assert_eq!(r["seq"], 1);
    let code = c
        .call_err(
            "publish",
            json!({"channel": "big_1", "data": json_string_of_len(16 * 1024 + 1)}),
        )
        .await;
    assert_eq!(code, "too_large");
    let r = c.publish("big_1", json!({"small": true})).await;
    assert_eq!(r["seq"], 2, "the refused publish must not be stored");
}

/// PROTOCOL.md section 5a: on herald.msgpack, inbound `data` with no JSON
/// form (binary, extension, non-string keys, NaN) gets `bad_request`; a frame
/// that is not a map gets `bad_request`; size limits apply to the JSON form;
/// native data round-trips to subscribers of both encodings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_requests() {
    let h = start_dev(&[]).await;
    let t = full("u1").sign(&h.jwt_secret);
    let (mut m, _) = Connect::new(&h).token(&t).msgpack().ready().await;
    let (mut j, _) = Connect::new(&h).token(&t).ready().await;
    m.subscribe("mp_1").await;
    j.subscribe("mp_1").await;

    let publish = |id: i64, data: rmpv::Value| {
        rmpv::Value::Map(vec![
            ("op".into(), "publish".into()),
            ("id".into(), id.into()),
            ("channel".into(), "mp_1".into()),
            ("data".into(), data),
        ])
    };
    let bad = [
        (21, rmpv::Value::Binary(vec![1, 2, 3]), "binary"),
        (
            22,
            rmpv::Value::Map(vec![(1.into(), "x".into())]),
            "integer key",
        ),
        (23, rmpv::Value::Ext(5, vec![1]), "extension"),
        (24, rmpv::Value::F64(f64::NAN), "NaN"),
        (
            25,
            rmpv::Value::Array(vec![rmpv::Value::Binary(vec![0])]),
            "nested binary",
        ),
    ];
    for (id, data, what) in bad {
        m.send_mp(&publish(id, data)).await;
        let r = m.wait_reply(&json!(id)).await;
        assert_eq!(error_code(&r), "bad_request", "{what}: {r}");
    }
    m.send_mp(&rmpv::Value::Array(vec![1.into()])).await;
    let r = m.recv().await;
    assert_eq!(error_code(&r), "bad_request", "array frame: {r}");
    assert!(r.get("id").is_none_or(Value::is_null), "{r}");
    m.send_mp(&rmpv::Value::Map(vec![
        ("op".into(), "ping".into()),
        ("id".into(), "x".into()),
    ]))
    .await;
    let r = m.recv().await;
    assert_eq!(error_code(&r), "bad_request", "string id: {r}");

    // Size limit on the JSON form: a 16382-char string is 16384 bytes of JSON.
    m.send_mp(&publish(31, rmpv::Value::from("x".repeat(16 * 1024 - 1))))
        .await;
    let r = m.wait_reply(&json!(31)).await;
    assert_eq!(error_code(&r), "too_large", "{r}");
    m.send_mp(&publish(32, rmpv::Value::from("x".repeat(16 * 1024 - 2))))
        .await;
    let r = m.wait_reply(&json!(32)).await;
    assert_eq!(r["result"]["seq"], 1, "{r}");

    let data = json!({"content": "Hello", "n": [1, -2, 2.5, null, true], "nested": {"k": "v"}});
    m.send_mp(&publish(33, json_to_mp(&data))).await;
    let r = m.wait_reply(&json!(33)).await;
    assert_eq!(r["result"]["seq"], 2, "{r}");
    for c in [&mut m, &mut j] {
        let msg = c
            .recv_until("seq 2", |v| message_seq(v, "mp_1") == Some(2))
            .await;
        assert_eq!(msg["data"], data, "{:?}", c.encoding);
        assert_eq!(msg["from"], "u1");
    }
    m.ping().await;
}

/// PROTOCOL.md section 4: `ping` is answered by `{"type":"pong","id":N}` in
/// both encodings, whatever integer the client chose as id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_pong() {
    let h = start_dev(&[]).await;
    let t = TokenBuilder::new("u1").sign(&h.jwt_secret);
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let (mut c, _) = Connect::new(&h).token(&t).encoding(enc).ready().await;
        for id in [
            json!(7),
            json!(0),
            json!(-7),
            json!(9_007_199_254_740_993_i64),
        ] {
            c.send(&json!({"op": "ping", "id": id})).await;
            assert_eq!(c.recv().await, json!({"type": "pong", "id": id}), "{enc:?}");
        }
    }
}

/// PROTOCOL.md section 5: the publish reply is `{id, seq, ts}`; every
/// subscriber (the publisher included, both encodings) gets the `message`
/// frame with the same id, seq and ts, `from` = the publisher's sub (or the
/// HTTP `from`, absent when none was given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reply_and_message_frames() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let (mut alice, _) = Connect::new(&h)
        .token(&full("alice").sign(&h.jwt_secret))
        .ready()
        .await;
    let (mut bob, _) = Connect::new(&h)
        .token(&full("bob").sign(&h.jwt_secret))
        .msgpack()
        .ready()
        .await;
    alice.subscribe("chat_42").await;
    bob.subscribe("chat_42").await;

    let data = json!({"content": "Hello from customer", "role": "user", "n": [1, 2.5, null, true]});
    let r = alice
        .call_ok(
            "publish",
            json!({"channel": "chat_42", "data": data, "key": "m-6f1c"}),
        )
        .await;
    assert!(r["id"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
    assert_eq!(r["seq"], 1, "{r}");
    assert_recent_ts(&r["ts"]);
    let expected = json!({
        "type": "message", "channel": "chat_42", "seq": 1, "id": r["id"], "ts": r["ts"],
        "from": "alice", "data": data,
    });
    assert_eq!(alice.recv().await, expected, "publisher's own copy");
    assert_eq!(bob.recv().await, expected, "msgpack subscriber");

    let (s, b) = api
        .publish_body(json!({"channel": "chat_42", "data": {"x": 1}, "from": "backend"}))
        .await;
    assert_eq!(s, 200, "{b}");
    let expected = json!({
        "type": "message", "channel": "chat_42", "seq": 2, "id": b["id"], "ts": b["ts"],
        "from": "backend", "data": {"x": 1},
    });
    assert_eq!(alice.recv().await, expected);
    assert_eq!(bob.recv().await, expected);

    let b = api.publish("chat_42", json!("plain")).await;
    let expected = json!({
        "type": "message", "channel": "chat_42", "seq": 3, "id": b["id"], "ts": b["ts"],
        "data": "plain",
    });
    assert_eq!(alice.recv().await, expected, "no from when none was given");
    assert_eq!(bob.recv().await, expected);
}

/// PROTOCOL.md sections 4 and 5: `signal` replies `{}`, reaches the other
/// subscribers as `{"type":"signal",channel,from,data}` (no seq), never the
/// sender, needs the signal grant, and is never stored (DESIGN.md
/// guarantee 7); `POST /v1/signal` answers 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let s = &h.jwt_secret;
    let (mut alice, _) = Connect::new(&h).token(&full("alice").sign(s)).ready().await;
    let (mut bob, _) = Connect::new(&h)
        .token(&full("bob").sign(s))
        .msgpack()
        .ready()
        .await;
    let carol_t = TokenBuilder::new("carol")
        .allow("subscribe", &["*"])
        .sign(s);
    let (mut carol, _) = Connect::new(&h).token(&carol_t).ready().await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.subscribe("room_s").await;
    }

    let r = alice
        .call_ok(
            "signal",
            json!({"channel": "room_s", "data": {"typing": true}}),
        )
        .await;
    assert_eq!(r, json!({}));
    let expected =
        json!({"type": "signal", "channel": "room_s", "from": "alice", "data": {"typing": true}});
    assert_eq!(bob.recv().await, expected);
    assert_eq!(carol.recv().await, expected);

    assert_eq!(
        carol
            .call_err("signal", json!({"channel": "room_s", "data": 1}))
            .await,
        "forbidden"
    );

    let (st, body) = api
        .post(
            "/v1/signal",
            &json!({"channel": "room_s", "data": {"x": 1}, "from": "backend"}),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let expected =
        json!({"type": "signal", "channel": "room_s", "from": "backend", "data": {"x": 1}});
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.recv().await, expected, "{:?}", c.encoding);
    }

    // The sender never got its own signal: its next frame is this marker.
    api.publish("room_s", json!({"marker": true})).await;
    let m = alice.recv().await;
    assert_eq!(message_seq(&m, "room_s"), Some(1), "alice got {m}");
    // Signals are never stored.
    let hist = api.history("room_s", &[]).await;
    assert_eq!(hist["last_seq"], 1, "{hist}");
    assert_eq!(hist["messages"].as_array().map(Vec::len), Some(1), "{hist}");
}

/// PROTOCOL.md section 5 (presence): the reply lists `{sub, conn, info}` of
/// every subscriber; `join`/`leave` events reach the other subscribers that
/// hold a presence grant, never the client itself; `GET
/// /v1/channels/{ch}/presence` agrees; an empty channel answers `[]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reply_and_events() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let s = &h.jwt_secret;
    let ai = json!({"name": "Alice"});
    let bi = json!({"name": "Purna Acharya", "role": "operator"});
    let ci = json!({"name": "Carol"});
    let (mut alice, aw) = Connect::new(&h)
        .token(
            &TokenBuilder::new("alice")
                .allow_all()
                .info(ai.clone())
                .sign(s),
        )
        .ready()
        .await;
    let (mut bob, bw) = Connect::new(&h)
        .token(
            &TokenBuilder::new("bob")
                .allow_all()
                .info(bi.clone())
                .sign(s),
        )
        .msgpack()
        .ready()
        .await;
    let carol_t = TokenBuilder::new("carol")
        .allow("subscribe", &["*"])
        .info(ci.clone())
        .sign(s);
    let (mut carol, cw) = Connect::new(&h).token(&carol_t).ready().await;
    let client =
        |sub: &str, w: &Value, info: &Value| json!({"sub": sub, "conn": w["conn"], "info": info});
    let (a, b, c) = (
        client("alice", &aw, &ai),
        client("bob", &bw, &bi),
        client("carol", &cw, &ci),
    );
    let event = |ev: &str, who: &Value| json!({"type": "presence", "channel": "room_p", "event": ev, "client": who});

    assert_eq!(api.presence("room_p").await, json!({"clients": []}));

    alice.subscribe("room_p").await;
    bob.subscribe("room_p").await;
    assert_eq!(alice.recv().await, event("join", &b));
    carol.subscribe("room_p").await;
    assert_eq!(alice.recv().await, event("join", &c));
    assert_eq!(bob.recv().await, event("join", &c));

    let sort = |v: &Value| {
        let mut l = v["clients"].as_array().cloned().unwrap_or_default();
        l.sort_by_key(|x| x["sub"].as_str().unwrap_or_default().to_string());
        l
    };
    let r = bob.call_ok("presence", json!({"channel": "room_p"})).await;
    assert_eq!(sort(&r), vec![a.clone(), b.clone(), c.clone()], "{r}");
    assert_eq!(
        sort(&api.presence("room_p").await),
        vec![a.clone(), b.clone(), c.clone()]
    );
    assert_eq!(
        carol
            .call_err("presence", json!({"channel": "room_p"}))
            .await,
        "forbidden"
    );

    assert_eq!(
        bob.call_ok("unsubscribe", json!({"channel": "room_p"}))
            .await,
        json!({})
    );
    assert_eq!(alice.recv().await, event("leave", &b));
    // Carol holds no presence grant: no events at all.
    carol.ping().await;
    assert!(
        carol.take_pending().is_empty(),
        "carol (no presence grant) got presence events"
    );
    carol.close().await;
    assert_eq!(alice.recv().await, event("leave", &c));
    eventually(STEP, "HTTP presence shows alice alone", || {
        let api = api.clone();
        let a = a.clone();
        async move { api.presence("room_p").await == json!({"clients": [a]}) }
    })
    .await;

    // No one got their own join, and bob (gone) got no leave of his own:
    // their next frames are this marker.
    api.publish("room_p", json!({"marker": true})).await;
    let m = alice.recv().await;
    assert_eq!(message_seq(&m, "room_p"), Some(1), "alice got {m}");
    bob.ping().await;
    assert!(
        bob.take_pending().is_empty(),
        "bob got frames after unsubscribing"
    );
}

// ---------------------------------------------------------------------------
// Section 6: close codes
// ---------------------------------------------------------------------------

/// PROTOCOL.md sections 5a and 6: a binary frame on herald.json or a text
/// frame on herald.msgpack closes with 4000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_frame_kind_closes_4000() {
    let h = start_dev(&[]).await;
    let t = TokenBuilder::new("u1").sign(&h.jwt_secret);
    let (mut j, _) = Connect::new(&h).token(&t).ready().await;
    let ping_mp = encode_mp(&json_to_mp(&json!({"op": "ping", "id": 1})));
    j.send_message(Message::binary(ping_mp)).await;
    j.expect_close(4000).await;

    let (mut m, _) = Connect::new(&h).token(&t).msgpack().ready().await;
    m.send_message(Message::text(json!({"op": "ping", "id": 1}).to_string()))
        .await;
    m.expect_close(4000).await;
}

/// PROTOCOL.md section 6 (1000 normal): a client's close 1000 is answered
/// with close 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_answered_1000() {
    let h = start_dev(&[]).await;
    let t = TokenBuilder::new("u1").sign(&h.jwt_secret);
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let (mut c, _) = Connect::new(&h).token(&t).encoding(enc).ready().await;
        c.send_close(1000).await;
        let frames = c.expect_close(1000).await;
        assert!(
            frames.is_empty(),
            "{enc:?}: frames after our close: {frames:?}"
        );
    }
}

/// PROTOCOL.md section 6 (4000 protocol violation): frames RFC 6455 forbids
/// (RSV bits without an extension, an unmasked client frame, a reserved
/// opcode, a continuation with nothing to continue, a fragmented or
/// oversized control frame, a new message inside a fragmented one) close
/// with 4000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc6455_violations_close_4000() {
    let h = start_dev(&[]).await;
    let t = TokenBuilder::new("u1").sign(&h.jwt_secret);
    let ping = json!({"op": "ping", "id": 1}).to_string().into_bytes();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("RSV1 set", encode_raw_frame(0xC1, true, &ping)),
        (
            "unmasked client frame",
            encode_raw_frame(0x81, false, &ping),
        ),
        ("reserved opcode 3", encode_raw_frame(0x83, true, &ping)),
        (
            "continuation without a start",
            encode_raw_frame(0x80, true, &ping),
        ),
        ("fragmented ping", encode_raw_frame(0x09, true, b"x")),
        (
            "ping with 126 bytes",
            encode_raw_frame(0x89, true, &[b'x'; 126]),
        ),
        (
            "text frame inside a fragmented message",
            [
                encode_raw_frame(0x01, true, b"{\"op\":"),
                encode_raw_frame(0x81, true, &ping),
            ]
            .concat(),
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes) in cases {
        let mut raw = RawWs::connect(h.port, &format!("/ws?token={t}"), None, None).await;
        let w = raw.read_frame(STEP).await.unwrap().and_then(|f| f.json());
        assert_eq!(
            w.as_ref().map(|w| w["type"].clone()),
            Some(json!("welcome")),
            "{what}"
        );
        raw.write_raw(&bytes).await;
        match raw.try_read_until_close(Duration::from_secs(5)).await {
            Ok((_, Some(4000))) => {}
            Ok((frames, code)) => failures.push(format!("{what}: close {code:?} after {frames:?}")),
            Err(e) => failures.push(format!("{what}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "not closed with 4000:\n{}",
        failures.join("\n")
    );
}

/// PROTOCOL.md section 6 (RFC 6455): invalid UTF-8 in a text frame closes
/// with 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_1007() {
    let h = start_dev(&[]).await;
    let t = TokenBuilder::new("u1").sign(&h.jwt_secret);
    let (mut c, _) = Connect::new(&h).token(&t).ready().await;
    let bad = b"{\"op\":\"ping\",\"id\":1,\"x\":\"\xff\xfe\"}".to_vec();
    c.send_message(Message::Frame(Frame::message(
        bad,
        OpCode::Data(Data::Text),
        true,
    )))
    .await;
    c.expect_close(1007).await;

    // Split across fragments too.
    let (mut c, _) = Connect::new(&h).token(&t).ready().await;
    c.send_message(Message::Frame(Frame::message(
        b"{\"op\":\"ping\",\"id\":1,\"x\":\"\xe2".to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_message(Message::Frame(Frame::message(
        b"\x28\"}".to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    c.expect_close(1007).await;
}

/// PROTOCOL.md sections 6 and 7: a message larger than `max_frame_bytes`
/// (here `--max-frame-bytes 1024`) after reassembling fragments closes with
/// 1009; exactly the limit is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_1009() {
    let h = start_dev(&["--max-frame-bytes", "1024"]).await;
    let t = full("u1").sign(&h.jwt_secret);

    let (mut c, _) = Connect::new(&h).token(&t).ready().await;
    c.send_message(Message::text(publish_frame_of_len(1, "f_1", 1024)))
        .await;
    let r = c.wait_reply(&json!(1)).await;
    assert_eq!(
        r["result"]["seq"], 1,
        "a 1024-byte frame is within the limit: {r}"
    );
    // Fragments adding up to exactly the limit.
    let f = publish_frame_of_len(2, "f_1", 1024);
    c.send_message(Message::Frame(Frame::message(
        f[..500].to_string(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_message(Message::Frame(Frame::message(
        f[500..].to_string(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    let r = c.wait_reply(&json!(2)).await;
    assert_eq!(r["result"]["seq"], 2, "1024 bytes in two fragments: {r}");
    c.send_message(Message::text(publish_frame_of_len(3, "f_1", 1025)))
        .await;
    c.expect_close(1009).await;

    // Fragments each under the limit, together over it.
    let (mut c, _) = Connect::new(&h).token(&t).ready().await;
    let f = publish_frame_of_len(4, "f_1", 1500);
    c.send_message(Message::Frame(Frame::message(
        f[..500].to_string(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await;
    c.send_message(Message::Frame(Frame::message(
        f[500..1000].to_string(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await;
    c.send_message(Message::Frame(Frame::message(
        f[1000..].to_string(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await;
    c.expect_close(1009).await;

    // Binary frames on herald.msgpack are bounded the same way.
    let (mut m, _) = Connect::new(&h).token(&t).msgpack().ready().await;
    let big = json!({"op": "publish", "id": 5, "channel": "f_1", "data": "x".repeat(2000)});
    m.send(&big).await;
    m.expect_close(1009).await;

    // Nothing over the limit was stored.
    let hist = Api::new(&h).history("f_1", &[]).await;
    assert_eq!(hist["last_seq"], 2, "{hist}");
}

/// A subscriber of `ch` as `sub` on a bare socket with a 4 KiB receive
/// window (nothing is read behind the test's back), and its first frame.
async fn small_window_subscriber(h: &HeraldProcess, sub: &str, ch: &str) -> (RawWs, Value) {
    let t = TokenBuilder::new(sub).channels(&[ch]).sign(&h.jwt_secret);
    let mut ws = RawWs::connect(h.port, &format!("/ws?token={t}"), None, Some(4096)).await;
    let welcome = ws
        .read_frame(STEP)
        .await
        .unwrap_or_else(|e| panic!("{sub}'s welcome: {e}"))
        .and_then(|f| f.json())
        .expect("welcome");
    (ws, welcome)
}

/// Reads `c` in a task until the `{"final": true}` message on `ch`: the
/// seqs of `ch`'s messages in arrival order.
fn seqs_until_final(mut c: Client, ch: &'static str) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let m = c.recv_within(Duration::from_secs(60)).await;
            let Some(seq) = message_seq(&m, ch) else {
                continue;
            };
            seqs.push(seq);
            if m["data"]["final"] == true {
                return seqs;
            }
        }
    })
}

/// Publishes 15 KB messages to `ch`, four at a time, while `more` says so
/// (asked before each batch; a panic naming `still` after 60 s), then
/// `{"final": true}`. How many 15 KB messages went out, and the final seq.
async fn flood_then_final<F>(
    api: &Api,
    ch: &'static str,
    still: &str,
    mut more: impl FnMut() -> F,
) -> (u64, u64)
where
    F: std::future::Future<Output = bool>,
{
    let payload = "y".repeat(15_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = 0u64;
    while more().await {
        assert!(
            Instant::now() < deadline,
            "{still} after {published} messages of 15 KB"
        );
        let batch: Vec<_> = (0..4)
            .map(|_| {
                let (api, data) = (api.clone(), json!({ "pad": payload }));
                tokio::spawn(async move { api.publish(ch, data).await })
            })
            .collect();
        for b in batch {
            b.await.expect("a publish task panicked");
        }
        published += 4;
    }
    let last = api.publish(ch, json!({"final": true})).await;
    let seq = last["seqs"][ch]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq of {ch} in {last}"));
    (published, seq)
}

/// Asserts `got` (the seqs `who` received) is 1, 2, 3, ... and shorter
/// than the `last_seq` published.
fn assert_gap_free_prefix(got: &[u64], last_seq: u64, who: &str) {
    assert!(
        got.iter()
            .copied()
            .eq(1..=u64::try_from(got.len()).expect("a count fits in u64")),
        "{who}'s messages are not a gap-free prefix: {got:?}"
    );
    assert!(got.len() < usize::try_from(last_seq).expect("a seq fits in usize"));
}

/// PROTOCOL.md sections 6 and 7, DESIGN.md guarantee 4: a client that
/// keeps falling behind (a 4 KiB receive window; it reads nothing for 1.5 s,
/// then whatever has arrived, and again) overflows `--max-queue-bytes
/// 262144` and is closed with 4008 after a gap-free prefix of the messages,
/// while another subscriber of the same channel receives every message in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_closed_4008_others_unaffected() {
    const CH: &str = "firehose";
    let h = start_dev(&["--max-queue-bytes", "262144"]).await;
    let api = Api::new(&h);
    let s = &h.jwt_secret;

    // The slow client: a bare socket, so nothing is read behind our back.
    let (mut slow, welcome) = small_window_subscriber(&h, "slow", CH).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let slow_reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        loop {
            // Away: a mobile client in a tunnel. (Shorter than any sane
            // grace a server gives a stuck write before dropping the socket,
            // so the close frame can reach it.)
            tokio::time::sleep(Duration::from_millis(1500)).await;
            // Back: reads whatever has arrived.
            loop {
                match slow.read_frame(Duration::from_millis(200)).await {
                    Ok(Some(f)) if f.opcode == 8 => return (frames, f.close_code()),
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) | Err(RawReadError::Io(_)) => return (frames, None),
                    Err(RawReadError::Timeout(_)) => break,
                    Err(e) => panic!("slow client: {e}"),
                }
            }
        }
    });

    let fast_t = TokenBuilder::new("fast").channels(&[CH]).sign(s);
    let (fast, _) = Connect::new(&h).token(&fast_t).msgpack().ready().await;
    let fast_reader = seqs_until_final(fast, CH);

    // Publish 15 KB messages, four at a time, until the slow client is done.
    let (published, last_seq) =
        flood_then_final(&api, CH, "the slow client was not disconnected", || {
            std::future::ready(!slow_reader.is_finished())
        })
        .await;
    let seqs = fast_reader.await.unwrap();
    assert_eq!(
        seqs,
        (1..=last_seq).collect::<Vec<_>>(),
        "the other subscriber missed or reordered messages"
    );

    let (frames, code) = slow_reader.await.unwrap();
    let got: Vec<u64> = frames
        .iter()
        .filter_map(|f| f.json())
        .filter_map(|v| message_seq(&v, CH))
        .collect();
    assert_eq!(
        code,
        Some(4008),
        "close code of the slow consumer (None: the stream ended without a close frame) \
         after {} messages of {published} published",
        got.len()
    );
    assert_gap_free_prefix(&got, last_seq, "the slow consumer");
}

/// DESIGN.md guarantee 4 (isolation) for a client that stopped reading for
/// good (a 4 KiB receive window, never read after the welcome): herald drops
/// it (gone from presence) instead of buffering for it, and another
/// subscriber receives every message. What the stuck client was sent is a
/// gap-free prefix; the 4008 close frame cannot get past its full socket, so
/// its stream may end without one (the slow-reader test above checks 4008).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_client_is_dropped_others_unaffected() {
    const CH: &str = "firehose";
    let h = start_dev(&["--max-queue-bytes", "262144"]).await;
    let api = Api::new(&h);
    let s = &h.jwt_secret;

    let (mut stuck, welcome) = small_window_subscriber(&h, "stuck", CH).await;
    let stuck_conn = welcome["conn"].as_str().unwrap().to_string();

    let fast_t = TokenBuilder::new("fast").channels(&[CH]).sign(s);
    let (fast, _) = Connect::new(&h).token(&fast_t).ready().await;
    let reader = seqs_until_final(fast, CH);

    eventually(STEP, "the stuck client shows in presence", || {
        let (api, conn) = (api.clone(), stuck_conn.clone());
        async move { api.present_conns(CH).await.contains(&conn) }
    })
    .await;
    let (_, last_seq) = flood_then_final(&api, CH, "the stuck client was still connected", || {
        let (api, conn) = (api.clone(), stuck_conn.clone());
        async move { api.present_conns(CH).await.contains(&conn) }
    })
    .await;
    assert_eq!(
        reader.await.unwrap(),
        (1..=last_seq).collect::<Vec<_>>(),
        "the other subscriber missed or reordered messages"
    );

    let mut got = Vec::new();
    let end = loop {
        match stuck.read_frame(STEP).await {
            Ok(Some(f)) if f.opcode == 8 => break f.close_code(),
            Ok(Some(f)) => got.extend(f.json().and_then(|v| message_seq(&v, CH))),
            Ok(None) | Err(RawReadError::Io(_)) => break None,
            Err(e) => panic!("stuck client after {} messages: {e}", got.len()),
        }
    };
    assert!(
        end.is_none() || end == Some(4008),
        "the stuck client was closed with {end:?}"
    );
    assert_gap_free_prefix(&got, last_seq, "the stuck client");
}

/// PROTOCOL.md section 7 (rate limit, `--rate-per-second 5 --rate-burst
/// 5`): a burst gets the burst answered and the rest refused with
/// `rate_limited` (a refused ping gets a `reply`); a client that stops is
/// not closed; WebSocket control frames do not count; a sustained flood is
/// closed with 4029 after 2 s over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_replies_then_4029() {
    let h = start_dev(&["--rate-per-second", "5", "--rate-burst", "5"]).await;
    let t = TokenBuilder::new("u1").sign(&h.jwt_secret);

    // A burst of 20 pings.
    let (mut calm, _) = Connect::new(&h).token(&t).ready().await;
    for id in 1..=20 {
        calm.send(&json!({"op": "ping", "id": id})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = calm.recv().await;
        ids.push(r["id"].as_i64().unwrap());
        if r["type"] == "pong" {
            pongs += 1;
        } else {
            assert_eq!(error_code(&r), "rate_limited", "{r}");
            limited += 1;
        }
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=20).collect::<Vec<_>>(),
        "every request answered exactly once"
    );
    assert!(
        (5..=7).contains(&pongs),
        "burst 5 (+ refill at 5/s): {pongs} pongs"
    );
    assert!(limited >= 13, "{limited} refused");
    // It stops: nothing happens to it (no 4029) ...
    assert_eq!(calm.next_event(Duration::from_millis(3500)).await, None);
    // ... and it is served again.
    calm.ping().await;

    // WebSocket control frames do not count: 30 pings, then a request.
    let (mut pinger, _) = Connect::new(&h).token(&t).ready().await;
    for i in 0..30u8 {
        pinger.send_message(Message::Ping(vec![i].into())).await;
    }
    pinger.ping().await;

    // A flood of 25 requests per second: refused, then closed with 4029.
    let (mut flood, _) = Connect::new(&h).token(&t).ready().await;
    let started = Instant::now();
    let mut first_refusal: Option<Instant> = None;
    let mut id = 100;
    let code = loop {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no 4029 after 15 s of flood"
        );
        id += 1;
        // A failed send means the server closed; the close frame follows.
        let _ = flood
            .try_send_message(Message::text(json!({"op": "ping", "id": id}).to_string()))
            .await;
        // Tiny pacing: read for 40 ms between requests.
        let pace = Instant::now() + Duration::from_millis(40);
        let mut closed = None;
        while let Some(left) = pace.checked_duration_since(Instant::now()) {
            match flood.next_event(left).await {
                Some(Event::Frame(v)) => {
                    if v["type"] == "reply" {
                        assert_eq!(error_code(&v), "rate_limited", "{v}");
                        first_refusal.get_or_insert_with(Instant::now);
                    }
                }
                Some(Event::Close(c, _)) => {
                    closed = Some(c);
                    break;
                }
                Some(Event::End(e)) => panic!("flood connection ended without a close frame: {e}"),
                None => break,
            }
        }
        if let Some(c) = closed {
            break c;
        }
    };
    assert_eq!(code, Some(4029));
    let over = first_refusal.expect("refusals before 4029").elapsed();
    assert!(
        over >= Duration::from_millis(1500),
        "closed {over:?} after the first refusal; 2 s expected"
    );
}

/// PROTOCOL.md sections 6 and 7 (heartbeat, `--heartbeat-interval 1
/// --heartbeat-timeout 2`): the welcome says `heartbeat: 1`; a client that
/// sends nothing (no pong, no frame) is closed with 4408; one that answers
/// pings stays, and so does one that sends requests but no pongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_timeout_closes_4408() {
    let h = start_dev(&["--heartbeat-interval", "1", "--heartbeat-timeout", "2"]).await;
    let t = TokenBuilder::new("u1").sign(&h.jwt_secret);

    let (mut alive, w) = Connect::new(&h).token(&t).ready().await;
    assert_eq!(w["heartbeat"].as_f64(), Some(1.0), "{w}");
    // tungstenite answers pings while it reads: this one keeps reading.
    let keeper = tokio::spawn(async move {
        let e = alive.next_event(Duration::from_secs(5)).await;
        assert_eq!(e, None, "a client answering pings got something");
        alive.ping().await;
    });

    // A client that never answers pings but sends requests: not silent, so
    // not timed out.
    let mut chatty = RawWs::connect(h.port, &format!("/ws?token={t}"), None, None).await;
    let chatter = tokio::spawn(async move {
        let w = chatty
            .read_frame(STEP)
            .await
            .unwrap()
            .and_then(|f| f.json())
            .unwrap();
        assert_eq!(w["type"], "welcome");
        let started = Instant::now();
        let (mut id, mut pongs, mut pings) = (0, 0, 0);
        while started.elapsed() < Duration::from_secs(4) {
            id += 1;
            let req = json!({"op": "ping", "id": id}).to_string();
            chatty.write_frame(true, 1, req.as_bytes()).await;
            // Tiny pacing: one request per 500 ms, reading meanwhile.
            let until = Instant::now() + Duration::from_millis(500);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match chatty.read_frame(left).await {
                    Ok(Some(f)) if f.opcode == 8 => {
                        panic!("a client sending requests was closed: {:?}", f.close_code())
                    }
                    Ok(Some(f)) if f.opcode == 9 => pings += 1,
                    Ok(Some(f)) => {
                        let v = f.json().unwrap();
                        assert_eq!(v, json!({"type": "pong", "id": id}));
                        pongs += 1;
                    }
                    Ok(None) => panic!("a client sending requests lost its connection"),
                    Err(RawReadError::Timeout(_)) => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(pongs, id, "every request answered");
        assert!(pings >= 2, "{pings} server pings in 4 s at interval 1 s");
    });

    let started = Instant::now();
    let mut dead = RawWs::connect(h.port, &format!("/ws?token={t}"), None, None).await;
    let (frames, code) = dead.read_until_close(Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert_eq!(code, Some(4408), "frames before: {frames:?}");
    assert!(
        frames.iter().any(|f| f.opcode == 9),
        "no server ping before the timeout"
    );
    assert!(
        took >= Duration::from_secs(2),
        "closed after {took:?}, before the 2 s timeout"
    );
    keeper.await.unwrap();
    chatter.await.unwrap();
}

/// PROTOCOL.md sections 6 and 7: past `--max-connections-per-user 2` or
/// `--max-connections 3`, a connection gets `disconnect` and close 4009;
/// other users are unaffected; a freed slot can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_close_4009() {
    let (per_user, per_node) = tokio::join!(
        start_dev(&["--max-connections-per-user", "2"]),
        start_dev(&["--max-connections", "3"]),
    );

    let u1 = TokenBuilder::new("u1").sign(&per_user.jwt_secret);
    let (a, _) = Connect::new(&per_user).token(&u1).ready().await;
    let (_b, _) = Connect::new(&per_user).token(&u1).ready().await;
    expect_rejected(
        Connect::new(&per_user).token(&u1),
        4009,
        "third connection of u1",
    )
    .await;
    let u2 = TokenBuilder::new("u2").sign(&per_user.jwt_secret);
    let (mut other, _) = Connect::new(&per_user).token(&u2).ready().await;
    other.ping().await;
    a.close().await;
    let deadline = Instant::now() + STEP;
    loop {
        let mut c = Connect::new(&per_user).token(&u1).open().await;
        match c.recv().await {
            w if w["type"] == "welcome" => break,
            d => assert!(
                Instant::now() < deadline,
                "u1's freed slot was never reusable: {d}"
            ),
        }
    }

    let mut held = Vec::new();
    for i in 0..3 {
        let t = TokenBuilder::new(&format!("n{i}")).sign(&per_node.jwt_secret);
        held.push(Connect::new(&per_node).token(&t).ready().await.0);
    }
    let t = TokenBuilder::new("n9").sign(&per_node.jwt_secret);
    expect_rejected(
        Connect::new(&per_node).token(&t),
        4009,
        "fourth connection on the node",
    )
    .await;
}

/// PROTOCOL.md section 7 (channel caps, `--channel-caps
/// 'capped_*=1,capped_big_*=3'`): a subscribe past the cap gets
/// `limit_reached`; an automatic subscription past it is left out of
/// `welcome.subs`; the longest matching pattern applies; a freed place can
/// be taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_caps() {
    let h = start_dev(&["--channel-caps", "capped_*=1,capped_big_*=3"]).await;
    let s = &h.jwt_secret;
    let mut cs = Vec::new();
    for i in 0..4 {
        cs.push(
            Connect::new(&h)
                .token(&full(&format!("u{i}")).sign(s))
                .ready()
                .await
                .0,
        );
    }
    cs[0].subscribe("capped_1").await;
    assert_eq!(
        cs[1]
            .call_err("subscribe", json!({"channel": "capped_1"}))
            .await,
        "limit_reached"
    );
    cs[1].subscribe("free_1").await;

    let auto = full("u9").channels(&["capped_1", "free_1"]).sign(s);
    let (_auto, w) = Connect::new(&h).token(&auto).ready().await;
    assert_eq!(
        sorted_subs(&w),
        vec![json!({"channel": "free_1", "seq": 0})],
        "{w}"
    );

    for c in cs.iter_mut().take(3) {
        c.subscribe("capped_big_1").await;
    }
    assert_eq!(
        cs[3]
            .call_err("subscribe", json!({"channel": "capped_big_1"}))
            .await,
        "limit_reached"
    );

    assert_eq!(
        cs[0]
            .call_ok("unsubscribe", json!({"channel": "capped_1"}))
            .await,
        json!({})
    );
    cs[1].subscribe("capped_1").await;
}

/// PROTOCOL.md section 2 (routes): with `[[routes]] path =
/// "/ws/chat/{conversation_id}" channels = ["chat_{conversation_id}"]`,
/// `/ws/chat/42` subscribes `chat_42` automatically when the token allows
/// it; grants still apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_add_automatic_subscriptions() {
    let h = HeraldProcess::start(HeraldOptions {
        config_toml: Some(
            "[[routes]]\npath = \"/ws/chat/{conversation_id}\"\nchannels = [\"chat_{conversation_id}\"]\n"
                .into(),
        ),
        ..Default::default()
    })
    .await;
    let api = Api::new(&h);
    api.publish_n("chat_42", 2).await;
    let t = TokenBuilder::new("visitor:abc")
        .channels(&["dashboard_user_7"])
        .allow("subscribe", &["chat_*"])
        .sign(&h.jwt_secret);
    let (mut c, w) = Connect::new(&h).path("/ws/chat/42").token(&t).ready().await;
    assert_eq!(
        sorted_subs(&w),
        vec![
            json!({"channel": "chat_42", "seq": 2}),
            json!({"channel": "dashboard_user_7", "seq": 0})
        ],
        "{w}"
    );
    api.publish("chat_42", json!({"hi": 1})).await;
    assert_eq!(message_seq(&c.recv().await, "chat_42"), Some(3));

    let (_plain, w) = Connect::new(&h).token(&t).ready().await;
    assert_eq!(
        sorted_subs(&w),
        vec![json!({"channel": "dashboard_user_7", "seq": 0})]
    );

    let no_grant = TokenBuilder::new("visitor:def")
        .allow("subscribe", &["other_*"])
        .sign(&h.jwt_secret);
    let (mut c, w) = Connect::new(&h)
        .path("/ws/chat/42")
        .token(&no_grant)
        .ready()
        .await;
    assert_eq!(
        sorted_subs(&w),
        Vec::<Value>::new(),
        "a route does not bypass grants: {w}"
    );
    api.publish("chat_42", json!({"hi": 2})).await;
    assert_eq!(c.next_event(Duration::from_millis(500)).await, None);
}

// ---------------------------------------------------------------------------
// Section 8: ingest HTTP API
// ---------------------------------------------------------------------------

/// PROTOCOL.md section 8: bearer API key (401 `unauthorized` without or with
/// a wrong one), publish to one channel and to several (one id, one seq per
/// channel), the 400/404/413 errors and their body shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_publish_and_errors() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let body = json!({"channel": "chat_42", "data": {"x": 1}});

    assert_http_error(
        &api.with_key(None).publish_body(body.clone()).await,
        401,
        "unauthorized",
    );
    assert_http_error(
        &api.with_key(Some("wrong")).publish_body(body.clone()).await,
        401,
        "unauthorized",
    );
    assert_http_error(
        &api.with_key(None)
            .get("/v1/channels/chat_42/messages", &[])
            .await,
        401,
        "unauthorized",
    );

    let (s, b) = api.publish_body(body.clone()).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["id"].as_str().is_some_and(|x| !x.is_empty()), "{b}");
    assert_recent_ts(&b["ts"]);
    assert_eq!(b["seqs"], json!({"chat_42": 1}), "{b}");

    let (s, b) = api
        .publish_body(json!({"channels": ["chat_42", "dashboard_website_12"], "data": {"y": 2}}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["seqs"],
        json!({"chat_42": 2, "dashboard_website_12": 1}),
        "{b}"
    );
    let id = b["id"].clone();
    for ch in ["chat_42", "dashboard_website_12"] {
        let hist = api.history(ch, &[]).await;
        let last = hist["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["id"], id, "one message id across channels: {hist}");
    }

    assert_http_error(
        &api.publish_body(json!({"channel": "a_1", "channels": ["b_1"], "data": 1}))
            .await,
        400,
        "bad_request",
    );
    assert_http_error(
        &api.publish_body(json!({"data": 1})).await,
        400,
        "bad_request",
    );
    assert_http_error(
        &api.publish_body(json!({"channel": "a_1"})).await,
        400,
        "bad_request",
    );
    assert_http_error(
        &api.publish_body(json!({"channel": "bad channel", "data": 1}))
            .await,
        400,
        "bad_channel",
    );
    assert_http_error(
        &api.publish_body(json!({"channels": ["ok_1", "bad/ch"], "data": 1}))
            .await,
        400,
        "bad_channel",
    );
    assert_http_error(
        &api.post_raw("/v1/publish", "{\"channel\":").await,
        400,
        "bad_request",
    );
    assert_http_error(
        &api.post_raw("/v1/publish", "[1,2]").await,
        400,
        "bad_request",
    );

    let (s, b) = api
        .publish_body(json!({"channel": "big_1", "data": json_string_of_len(16 * 1024)}))
        .await;
    assert_eq!(s, 200, "exactly 16 KiB of data: {b}");
    assert_http_error(
        &api.publish_body(json!({"channel": "big_1", "data": json_string_of_len(16 * 1024 + 1)}))
            .await,
        413,
        "too_large",
    );

    for malformed in [
        json!({"channels": [], "data": 1}),
        json!({"channel": "a_1", "data": 1, "from": 5}),
        json!({"channel": "a_1", "data": 1, "key": 5}),
        json!({"channel": 5, "data": 1}),
    ] {
        assert_http_error(
            &api.publish_body(malformed.clone()).await,
            400,
            "bad_request",
        );
    }
    assert_http_error(&api.get("/v1/nope", &[]).await, 404, "not_found");
    assert_http_error(&api.post("/v1/publishx", &body).await, 404, "not_found");
    // Nothing refused was stored.
    assert_eq!(
        api.history("a_1", &[]).await,
        json!({"messages": [], "last_seq": 0})
    );
    assert_eq!(api.history("big_1", &[]).await["last_seq"], 1);
}

/// PROTOCOL.md section 8 (idempotency): publishing the same `key` again
/// returns the first answer and stores nothing new; the same key with other
/// data or another channel set gets 409 `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_idempotency_keys() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let body = json!({"channel": "idem_1", "data": {"v": 1}, "key": "k-1"});
    let (s1, b1) = api.publish_body(body.clone()).await;
    assert_eq!(s1, 200, "{b1}");
    let (s2, b2) = api.publish_body(body.clone()).await;
    assert_eq!(s2, 200, "{b2}");
    assert_eq!(b2, b1, "a retried key returns the first answer");
    assert_http_error(
        &api.publish_body(json!({"channel": "idem_1", "data": {"v": 2}, "key": "k-1"}))
            .await,
        409,
        "conflict",
    );
    assert_http_error(
        &api.publish_body(json!({"channel": "idem_2", "data": {"v": 1}, "key": "k-1"}))
            .await,
        409,
        "conflict",
    );
    let hist = api.history("idem_1", &[]).await;
    assert_eq!(hist["last_seq"], 1, "{hist}");
    assert_eq!(hist["messages"].as_array().unwrap().len(), 1);
    assert_eq!(api.history("idem_2", &[]).await["last_seq"], 0);
    // Another key is another message.
    let (_, b3) = api
        .publish_body(json!({"channel": "idem_1", "data": {"v": 1}, "key": "k-2"}))
        .await;
    assert_eq!(b3["seqs"]["idem_1"], 2, "{b3}");
}

/// PROTOCOL.md section 8 (history): `after` and `limit` (1..1000), items in
/// seq order equal to the `message` frame without `type`, `last_seq`; an
/// empty channel answers `{"messages":[],"last_seq":0}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_history() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let (mut c, _) = Connect::new(&h)
        .token(
            &TokenBuilder::new("u1")
                .channels(&["hist_1"])
                .sign(&h.jwt_secret),
        )
        .ready()
        .await;
    let mut frames = Vec::new();
    for i in 1..=5 {
        let (s, b) = api
            .publish_body(json!({"channel": "hist_1", "data": {"i": i}, "from": "backend"}))
            .await;
        assert_eq!(s, 200, "{b}");
        let mut m = c.recv().await;
        assert_eq!(m["seq"], i, "{m}");
        m.as_object_mut().unwrap().remove("type");
        frames.push(m);
    }

    let all = api.history("hist_1", &[]).await;
    assert_eq!(all, json!({"messages": frames, "last_seq": 5}));
    let page = api
        .history("hist_1", &[("after", "2"), ("limit", "2")])
        .await;
    assert_eq!(page, json!({"messages": frames[2..4], "last_seq": 5}));
    let tail = api
        .history("hist_1", &[("after", "4"), ("limit", "1000")])
        .await;
    assert_eq!(tail, json!({"messages": frames[4..], "last_seq": 5}));
    let past = api.history("hist_1", &[("after", "5")]).await;
    assert_eq!(past, json!({"messages": [], "last_seq": 5}));
    for bad in ["0", "1001", "-1", "x"] {
        assert_http_error(
            &api.get("/v1/channels/hist_1/messages", &[("limit", bad)])
                .await,
            400,
            "bad_request",
        );
    }
    assert_http_error(
        &api.get("/v1/channels/bad%20ch/messages", &[]).await,
        400,
        "bad_channel",
    );
    assert_http_error(
        &api.get("/v1/channels/bad%20ch/presence", &[]).await,
        400,
        "bad_channel",
    );
    assert_http_error(
        &api.get("/v1/channels/hist_1/messages", &[("after", "x")])
            .await,
        400,
        "bad_request",
    );
    assert_eq!(
        api.history("never_1", &[]).await,
        json!({"messages": [], "last_seq": 0})
    );
}

/// PROTOCOL.md section 8: `POST /v1/positions` answers each channel's last
/// seq; `POST /v1/signal` answers 202 and is never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_positions_and_signal() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    api.publish_n("pos_a", 3).await;
    api.publish_n("pos_b", 1).await;
    let (s, b) = api
        .post("/v1/positions", &json!({"channels": ["pos_a", "pos_b"]}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b, json!({"positions": {"pos_a": 3, "pos_b": 1}}));
    let many: Vec<String> = (0..1001).map(|i| format!("c_{i}")).collect();
    assert_http_error(
        &api.post("/v1/positions", &json!({ "channels": many }))
            .await,
        400,
        "bad_request",
    );
    assert_http_error(
        &api.post("/v1/positions", &json!({"channels": ["bad ch"]}))
            .await,
        400,
        "bad_channel",
    );

    let (s, b) = api
        .post(
            "/v1/signal",
            &json!({"channel": "pos_a", "data": {"typing": true}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    assert_http_error(
        &api.post("/v1/signal", &json!({"channel": "bad ch", "data": 1}))
            .await,
        400,
        "bad_channel",
    );
    assert_http_error(
        &api.with_key(None)
            .post("/v1/signal", &json!({"channel": "pos_a", "data": 1}))
            .await,
        401,
        "unauthorized",
    );
    assert_eq!(
        api.history("pos_a", &[]).await["last_seq"],
        3,
        "a signal was stored"
    );
}

/// PROTOCOL.md section 8 (`/healthz`, `/readyz`, `/metrics`): both probes
/// answer 200; the metrics name connections and published messages, and the
/// counter grows with each publish (one per channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_metrics() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    assert_eq!(api.admin_text("/healthz").await.0, 200);
    assert_eq!(api.admin_text("/readyz").await.0, 200);
    let metrics = || async {
        let (s, text) = api.admin_text("/metrics").await;
        assert_eq!(s, 200);
        text
    };

    api.publish("m_1", json!(1)).await;
    let before = metrics().await;
    let published = metric_sum(&before, "herald_messages_published_total")
        .unwrap_or_else(|| panic!("no herald_messages_published_total in\n{before}"));
    assert!(
        published >= 1.0,
        "{published} messages published after one publish"
    );
    api.publish_body(json!({"channels": ["m_1", "m_2"], "data": 2}))
        .await;
    api.publish("m_1", json!(3)).await;
    eventually(
        STEP,
        "herald_messages_published_total grows by 3 (one per channel)",
        || {
            let metrics = &metrics;
            async move {
                metric_sum(&metrics().await, "herald_messages_published_total")
                    == Some(published + 3.0)
            }
        },
    )
    .await;

    let t = TokenBuilder::new("u1").sign(&h.jwt_secret);
    let (_a, _) = Connect::new(&h).token(&t).ready().await;
    let (b, _) = Connect::new(&h).token(&t).ready().await;
    eventually(STEP, "herald_connections = 2", || {
        let metrics = &metrics;
        async move { metric_sum(&metrics().await, "herald_connections") == Some(2.0) }
    })
    .await;
    b.close().await;
    eventually(STEP, "herald_connections = 1 after a close", || {
        let metrics = &metrics;
        async move { metric_sum(&metrics().await, "herald_connections") == Some(1.0) }
    })
    .await;
}

/// PROTOCOL.md sections 5 and 8 (`unavailable`, 503) and DESIGN.md
/// guarantee 1: with its PostgreSQL store down, a publish is refused with
/// `unavailable` (WebSocket reply) and 503 `unavailable` (HTTP) instead of
/// hanging or being acknowledged; the connection stays; once the store is
/// back, publishing resumes with the next seq, delivered to subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_answers_unavailable() {
    const CH: &str = "outage_1";
    let pg = tokio::task::spawn_blocking(herald_testkit::PgServer::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("private PostgreSQL: {e}"));
    let h = HeraldProcess::start(HeraldOptions {
        database_url: Some(pg.url()),
        ..Default::default()
    })
    .await;
    let api = Api::new(&h);
    api.publish(CH, json!({"n": 1})).await;
    let t = full("u1").channels(&[CH]).sign(&h.jwt_secret);
    let (mut c, _) = Connect::new(&h).token(&t).ready().await;
    assert_eq!(c.publish(CH, json!({"n": 2})).await["seq"], 2);
    assert_eq!(message_seq(&c.recv().await, CH), Some(2));

    let mut pg = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.kill();
        pg
    })
    .await
    .unwrap();
    let started = Instant::now();
    assert_http_error(
        &api.publish_body(json!({"channel": CH, "data": {"n": "lost"}}))
            .await,
        503,
        "unavailable",
    );
    assert_eq!(
        c.call_err("publish", json!({"channel": CH, "data": {"n": "lost"}}))
            .await,
        "unavailable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refusals took {:?}",
        started.elapsed()
    );
    c.ping().await;

    let pg = tokio::task::spawn_blocking(move || pg.restart().map(|()| pg))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("restarting PostgreSQL: {e}"));
    let mut seq = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seq.is_none() {
        assert!(
            Instant::now() < deadline,
            "publishing never recovered after the store came back"
        );
        let (s, b) = api
            .publish_body(json!({"channel": CH, "data": {"n": 3}}))
            .await;
        match s {
            200 => seq = b["seqs"][CH].as_u64(),
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("publish after the outage: {other} {b}"),
        }
    }
    assert_eq!(seq, Some(3), "refused publishes must not take a seq");
    let m = c.recv().await;
    assert_eq!(message_seq(&m, CH), Some(3), "{m}");
    drop(pg);
}

// ---------------------------------------------------------------------------
// Section 7: drain
// ---------------------------------------------------------------------------

/// PROTOCOL.md section 7 and DESIGN.md guarantee 6: on SIGTERM the node
/// answers `/readyz` 503, accepts no new client, sends each client
/// `disconnect` 1012 with `reconnect: true` and closes 1012 at an even pace
/// over the drain window (`--drain-window 2`, four clients), then exits 0
/// within window + 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_1012() {
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let mut h = start_dev(&["--drain-window", "2", "--admin-listen", admin_addr.as_str()]).await;
    let api = Api::new(&h);
    assert_eq!(api.admin_status("/readyz").await, Some(200));
    let t = TokenBuilder::new("u1")
        .channels(&["drain_1"])
        .sign(&h.jwt_secret);
    let mut clients = Vec::new();
    for enc in [
        Encoding::Json,
        Encoding::Msgpack,
        Encoding::Json,
        Encoding::Msgpack,
    ] {
        clients.push(Connect::new(&h).token(&t).encoding(enc).ready().await.0);
    }

    let started = Instant::now();
    h.signal_term();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let d = c
                    .expect_disconnect_within(1012, Duration::from_secs(10))
                    .await;
                (d, started.elapsed())
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = api.admin_status("/readyz").await;
        if s == Some(503) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 503 while draining (last {s:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // No new client is welcomed while draining.
    match tokio::time::timeout(
        Duration::from_secs(3),
        Connect::new(&h).token(&t).try_open(),
    )
    .await
    {
        Err(_) | Ok(Err(_)) => {}
        Ok(Ok((mut c, _))) => {
            let first = c.next_event(Duration::from_secs(3)).await;
            assert!(
                !matches!(&first, Some(Event::Frame(v)) if v["type"] == "welcome"),
                "a new client was welcomed while draining"
            );
        }
    }

    let mut at = Vec::new();
    for task in tasks {
        let (d, when) = task.await.unwrap();
        assert_eq!(d["reconnect"], true, "{d}");
        at.push(when);
    }
    at.sort();
    let (first, last) = (at[0], at[at.len() - 1]);
    assert!(
        last - first >= Duration::from_secs(1),
        "four closes over a 2 s window came within {:?} of each other: {at:?}",
        last - first
    );
    assert!(
        last <= Duration::from_secs(3),
        "the last close came {last:?} after SIGTERM"
    );
    let status = h
        .wait_exit(Duration::from_secs(7).saturating_sub(started.elapsed()))
        .await
        .unwrap_or_else(|| panic!("herald still running {:?} after SIGTERM", started.elapsed()));
    assert!(status.success(), "exit status {status}; log:\n{}", h.log());
}

/// DESIGN.md "Processes": `herald dev` serves the demo page from the binary,
/// and its stand-in token endpoint (`POST /demo/token`) mints tokens the
/// gateway accepts: an operator's connects with its two dashboards and its
/// DM inbox as automatic subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_the_demo_page_with_working_tokens() {
    let h = start_dev(&[]).await;
    let resp = reqwest::get(format!("{}/demo", h.http_url()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let tok: Value = reqwest::Client::new()
        .post(format!("{}/demo/token", h.http_url()))
        .json(&json!({"role": "operator", "operator": "1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tok["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {tok}"));
    let (_c, welcome) = Connect::new(&h).token(token).ready().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let mut subs: Vec<&str> = welcome["subs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["channel"].as_str().unwrap())
        .collect();
    subs.sort_unstable();
    assert_eq!(subs.len(), 3, "{welcome}");
    assert!(
        subs.contains(&"dashboard_website_1") && subs.contains(&"dashboard_website_2"),
        "{welcome}"
    );
}
