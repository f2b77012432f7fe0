//! DESIGN.md's delivery guarantees end to end against real `herald dev`
//! processes: ordered exactly-once fan-out under concurrent publishers (on
//! SQLite and PostgreSQL), replay with `since` racing live publishes,
//! `recover=` on connect, retention and `max_replay`, idempotent retries,
//! and persistence across a restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_testkit::test_database;
use herald_tests::*;
use serde_json::{Value, json};

/// Long enough for hundreds of messages on a loaded two-core machine.
const LONG: Duration = Duration::from_secs(60);

/// Reads `channel`'s message frames until `n` have arrived.
async fn collect_messages(c: &mut Client, channel: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let v = c.recv_within(LONG).await;
        if v["type"] == "message" && v["channel"] == channel {
            out.push(v);
        }
    }
    out
}

/// The core of guarantee 2 on one herald: 240 publishes to one channel from
/// 24 parallel publishers (12 over `POST /v1/publish`, 12 WebSocket
/// connections pipelining `publish`) reach four subscribers (two JSON, two
/// MessagePack) as seq 1..=240 in order, each once, each frame matching the
/// publish answer with the same id.
async fn ordered_exactly_once(h: &HeraldProcess) {
    const CH: &str = "fanout_1";
    const HTTP_PUBLISHERS: usize = 12;
    const WS_PUBLISHERS: usize = 12;
    const PER: usize = 10;
    const N: usize = (HTTP_PUBLISHERS + WS_PUBLISHERS) * PER;
    let api = Api::new(h);
    let s = &h.jwt_secret;

    let mut readers = Vec::new();
    for (i, enc) in [
        Encoding::Json,
        Encoding::Msgpack,
        Encoding::Json,
        Encoding::Msgpack,
    ]
    .into_iter()
    .enumerate()
    {
        let t = TokenBuilder::new(&format!("reader_{i}"))
            .channels(&[CH])
            .sign(s);
        let (mut c, w) = Connect::new(h).token(&t).encoding(enc).ready().await;
        assert_eq!(w["subs"], json!([{"channel": CH, "seq": 0}]), "{w}");
        readers.push(tokio::spawn(async move {
            (enc, collect_messages(&mut c, CH, N).await)
        }));
    }

    // Every publish answer: (id, seq, from, data).
    let mut publishers = Vec::new();
    for p in 0..HTTP_PUBLISHERS {
        let api = api.clone();
        publishers.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for k in 0..PER {
                let data = json!({"p": format!("http_{p}"), "k": k});
                let b = api.publish(CH, data.clone()).await;
                acks.push((b["id"].clone(), b["seqs"][CH].clone(), Value::Null, data));
            }
            acks
        }));
    }
    for p in 0..WS_PUBLISHERS {
        let sub = format!("ws_pub_{p}");
        let t = TokenBuilder::new(&sub).allow("publish", &[CH]).sign(s);
        let (mut c, _) = Connect::new(h)
            .token(&t)
            .encoding(if p % 2 == 0 {
                Encoding::Json
            } else {
                Encoding::Msgpack
            })
            .ready()
            .await;
        publishers.push(tokio::spawn(async move {
            // Pipelined: all requests first, then the replies.
            let mut sent = Vec::new();
            for k in 0..PER {
                let id = i64::try_from(k).expect("k < 10") + 1;
                let data = json!({"p": sub.clone(), "k": k});
                c.send(&json!({"op": "publish", "id": id, "channel": CH, "data": data}))
                    .await;
                sent.push((id, data));
            }
            let mut acks = Vec::new();
            for (id, data) in sent {
                let r = c.wait_reply(&json!(id)).await;
                assert!(r.get("result").is_some(), "publish {id} of {sub}: {r}");
                acks.push((
                    r["result"]["id"].clone(),
                    r["result"]["seq"].clone(),
                    json!(sub),
                    data,
                ));
            }
            // Not subscribed, so none of the messages came back to it.
            c.ping().await;
            let stray: Vec<_> = c
                .take_pending()
                .into_iter()
                .filter(|v| v["type"] == "message")
                .collect();
            assert!(
                stray.is_empty(),
                "{sub} is not subscribed but got {stray:?}"
            );
            acks
        }));
    }
    let mut by_id: HashMap<String, (u64, Value, Value)> = HashMap::new();
    for p in publishers {
        for (id, seq, from, data) in p.await.expect("publisher task") {
            let id = id.as_str().expect("message id is a string").to_string();
            let seq = seq.as_u64().expect("seq is an integer");
            assert!(
                by_id.insert(id.clone(), (seq, from, data)).is_none(),
                "message id {id} given twice"
            );
        }
    }
    let mut seqs: Vec<u64> = by_id.values().map(|(s, _, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=N as u64).collect::<Vec<_>>(),
        "acknowledged seqs are not 1..=N"
    );

    for r in readers {
        let (enc, msgs) = r.await.expect("subscriber task");
        let got: Vec<u64> = msgs
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(
            got,
            (1..=N as u64).collect::<Vec<_>>(),
            "{enc:?} subscriber: order or count"
        );
        for m in &msgs {
            let id = m["id"].as_str().expect("message id");
            let (seq, from, data) = by_id.get(id).unwrap_or_else(|| panic!("unknown id in {m}"));
            assert_eq!(&m["seq"], &json!(seq), "{enc:?}: {m}");
            assert_eq!(&m["data"], data, "{enc:?}: {m}");
            if from.is_null() {
                assert!(
                    m.get("from").is_none(),
                    "{enc:?}: from without a publisher: {m}"
                );
            } else {
                assert_eq!(&m["from"], from, "{enc:?}: {m}");
            }
        }
    }
    let hist = api.history(CH, &[("limit", "1000")]).await;
    assert_eq!(hist["last_seq"], N, "history");
    assert_eq!(hist["messages"].as_array().map(Vec::len), Some(N));
}

/// DESIGN.md guarantee 2 (ordered, no duplicates), on SQLite: see
/// [`ordered_exactly_once`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_exactly_once_sqlite() {
    let h = start_dev(&[]).await;
    ordered_exactly_once(&h).await;
}

/// DESIGN.md guarantee 2 (ordered, no duplicates), on PostgreSQL (a fresh
/// database on a real server): see [`ordered_exactly_once`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_exactly_once_postgres() {
    let db = test_database().await;
    let h = HeraldProcess::start(HeraldOptions {
        database_url: Some(db.url().to_string()),
        ..Default::default()
    })
    .await;
    ordered_exactly_once(&h).await;
}

/// PROTOCOL.md section 5 (subscribe with `since`) and DESIGN.md guarantee 3:
/// while a publisher keeps publishing, subscribers with `since` 10 (JSON) and
/// 30 (MessagePack) get the reply first (`recovered: true`, `replayed` =
/// seq - since), then every later message once, in seq order, replay before
/// live, with no gap across the switch from history to live; one without
/// `since` gets every message after the reply's seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replay_races_live_publishes() {
    const CH: &str = "race_1";
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    api.publish_n(CH, 50).await;

    // A publisher that keeps going until told to stop: data n == seq.
    let stop = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let publisher = {
        let (api, stop) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            let mut started = Some(started_tx);
            let mut n = 50u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                assert!(n < 5000, "subscribers never saw live messages");
                let b = api.publish(CH, json!({ "n": n })).await;
                assert_eq!(b["seqs"][CH], n, "one publisher, so seq == n");
                if n == 55 {
                    let _ = started.take().map(|tx| tx.send(()));
                }
            }
            n
        })
    };
    started_rx.await.unwrap();

    let (live_tx, mut live_rx) = tokio::sync::mpsc::channel(3);
    let mut subscribers = Vec::new();
    for (since, enc) in [
        (Some(10u64), Encoding::Json),
        (Some(30), Encoding::Msgpack),
        (None, Encoding::Json),
    ] {
        let t = TokenBuilder::new(&format!("late_{since:?}"))
            .allow("subscribe", &[CH])
            .sign(&h.jwt_secret);
        let (mut c, _) = Connect::new(&h).token(&t).encoding(enc).ready().await;
        let live_tx = live_tx.clone();
        subscribers.push(tokio::spawn(async move {
            let mut req = json!({"op": "subscribe", "id": 1, "channel": CH});
            if let Some(since) = since {
                req["since"] = json!(since);
            }
            c.send(&req).await;
            let r = c.recv().await;
            assert_eq!(r["type"], "reply", "{enc:?}: the reply comes first: {r}");
            let res = &r["result"];
            let at = res["seq"].as_u64().unwrap_or_else(|| panic!("{r}"));
            assert!(at >= 55, "{r}");
            assert_eq!(res["channel"], CH);
            let mut expect = match since {
                Some(since) => {
                    assert_eq!(res["recovered"], true, "{enc:?}: {r}");
                    assert_eq!(res["replayed"], at - since, "{enc:?}: {r}");
                    since + 1
                }
                // After a reply with seq N, every message with seq > N.
                None => at + 1,
            };
            let mut told = false;
            loop {
                let m = c.recv_within(LONG).await;
                let Some(seq) = message_seq(&m, CH) else {
                    panic!("{enc:?}: unexpected frame {m}");
                };
                assert_eq!(seq, expect, "{enc:?}: gap or duplicate at {m}");
                expect += 1;
                if m["data"]["end"] == true {
                    return (at, seq);
                }
                assert_eq!(m["data"]["n"], seq, "{enc:?}: {m}");
                if !told && seq >= at + 20 {
                    told = true;
                    live_tx.send(()).await.unwrap();
                }
            }
        }));
    }
    drop(live_tx);
    for _ in 0..subscribers.len() {
        live_rx
            .recv()
            .await
            .expect("a subscriber ended before seeing live messages");
    }
    stop.store(true, Ordering::SeqCst);
    let last = publisher.await.unwrap();
    let end = api.publish(CH, json!({"end": true})).await;
    assert_eq!(end["seqs"][CH], last + 1);
    for s in subscribers {
        let (_, final_seq) = s.await.unwrap();
        assert_eq!(final_seq, last + 1);
    }
}

/// PROTOCOL.md section 2 ("Recovering automatic subscriptions"): with
/// `recover=<channel>:<seq>,...` the named automatic subscriptions carry
/// `recovered`/`replayed` in `welcome.subs` and their missed messages follow
/// the welcome before live ones; an automatic subscription not named is
/// plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_on_connect() {
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    api.publish_n("auto_1", 8).await;
    api.publish_n("auto_2", 3).await;
    let t = TokenBuilder::new("u1")
        .channels(&["auto_1", "auto_2", "auto_3"])
        .sign(&h.jwt_secret);
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let (mut c, w) = Connect::new(&h)
            .token(&t)
            .encoding(enc)
            .query("recover", "auto_1:5,auto_2:0")
            .ready()
            .await;
        let mut subs = w["subs"].as_array().unwrap().clone();
        subs.sort_by_key(|s| s["channel"].as_str().unwrap().to_string());
        assert_eq!(
            subs,
            vec![
                json!({"channel": "auto_1", "seq": 8, "recovered": true, "replayed": 3}),
                json!({"channel": "auto_2", "seq": 3, "recovered": true, "replayed": 3}),
                json!({"channel": "auto_3", "seq": 0}),
            ],
            "{enc:?}: {w}"
        );
        let mut got: HashMap<String, Vec<u64>> = HashMap::new();
        for _ in 0..6 {
            let m = c.recv().await;
            assert_eq!(m["type"], "message", "{enc:?}: {m}");
            assert_eq!(m["data"]["n"], m["seq"], "{m}");
            got.entry(m["channel"].as_str().unwrap().into())
                .or_default()
                .push(m["seq"].as_u64().unwrap());
        }
        assert_eq!(got["auto_1"], vec![6, 7, 8], "{enc:?}");
        assert_eq!(got["auto_2"], vec![1, 2, 3], "{enc:?}");
        assert_eq!(got.len(), 2, "{enc:?}: {got:?}");
    }
    // Live messages follow the replay.
    let (mut c, _) = Connect::new(&h)
        .token(&t)
        .query("recover", "auto_1:7")
        .ready()
        .await;
    api.publish("auto_1", json!({"n": 9})).await;
    let seqs: Vec<u64> = collect_messages(&mut c, "auto_1", 2)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![8, 9]);
}

/// DESIGN.md guarantee 3 and `[store] retention_max_messages = 5`: a `since`
/// beyond retained history answers `recovered: false` and replays nothing; a
/// `since` inside it replays the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_decides_recovery() {
    const CH: &str = "ret_1";
    let h = HeraldProcess::start(HeraldOptions {
        config_toml: Some("[store]\nretention_max_messages = 5\n".into()),
        ..Default::default()
    })
    .await;
    let api = Api::new(&h);
    api.publish_n(CH, 12).await;
    let t = TokenBuilder::new("u1")
        .allow("subscribe", &[CH])
        .sign(&h.jwt_secret);

    let mut lost = Vec::new();
    for since in [1u64, 6] {
        let (mut c, _) = Connect::new(&h).token(&t).ready().await;
        let r = c
            .call_ok("subscribe", json!({"channel": CH, "since": since}))
            .await;
        assert_eq!(
            r,
            json!({"channel": CH, "seq": 12, "recovered": false, "replayed": 0}),
            "since {since}"
        );
        lost.push(c);
    }
    let (mut ok, _) = Connect::new(&h).token(&t).ready().await;
    let r = ok
        .call_ok("subscribe", json!({"channel": CH, "since": 8}))
        .await;
    assert_eq!(
        r,
        json!({"channel": CH, "seq": 12, "recovered": true, "replayed": 4})
    );

    api.publish(CH, json!({"n": 13})).await;
    let seqs: Vec<u64> = collect_messages(&mut ok, CH, 5)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![9, 10, 11, 12, 13]);
    for mut c in lost {
        let m = c.recv().await;
        assert_eq!(
            message_seq(&m, CH),
            Some(13),
            "nothing replayed, then live: {m}"
        );
    }
}

/// PROTOCOL.md section 5 ("Replay is read from the store page by page at
/// the pace the client reads it and does not count against the outbound
/// queue bound"): 300 messages of 2 KB (600 KB) replayed to a subscriber
/// with `--max-queue-bytes 65536` arrive complete and in order, no 4008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_not_bounded_by_the_queue() {
    const CH: &str = "backlog_1";
    const N: u64 = 300;
    let h = start_dev(&["--max-queue-bytes", "65536"]).await;
    let api = Api::new(&h);
    let pad = "z".repeat(2_000);
    for _ in 0..N / 10 {
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (api, pad) = (api.clone(), pad.clone());
                tokio::spawn(async move { api.publish(CH, json!({ "pad": pad })).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("publish task");
        }
    }
    for enc in [Encoding::Json, Encoding::Msgpack] {
        let t = TokenBuilder::new("u1")
            .allow("subscribe", &[CH])
            .sign(&h.jwt_secret);
        let (mut c, _) = Connect::new(&h).token(&t).encoding(enc).ready().await;
        let r = c
            .call_ok("subscribe", json!({"channel": CH, "since": 0}))
            .await;
        assert_eq!(
            r,
            json!({"channel": CH, "seq": N, "recovered": true, "replayed": N}),
            "{enc:?}"
        );
        let seqs: Vec<u64> = collect_messages(&mut c, CH, N as usize)
            .await
            .iter()
            .map(|m| m["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "{enc:?}");
        c.ping().await;
    }
}

/// PROTOCOL.md section 5 (`max_replay`, here `--max-replay 5`): a `since`
/// more than `max_replay` messages behind gets `recovered: false` and no
/// replay; exactly `max_replay` behind is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_replay_bounds_recovery() {
    const CH: &str = "mr_1";
    let h = start_dev(&["--max-replay", "5"]).await;
    let api = Api::new(&h);
    api.publish_n(CH, 12).await;
    let t = TokenBuilder::new("u1")
        .allow("subscribe", &[CH])
        .sign(&h.jwt_secret);
    let (mut far, _) = Connect::new(&h).token(&t).ready().await;
    let r = far
        .call_ok("subscribe", json!({"channel": CH, "since": 6}))
        .await;
    assert_eq!(
        r,
        json!({"channel": CH, "seq": 12, "recovered": false, "replayed": 0})
    );
    let (mut near, _) = Connect::new(&h).token(&t).ready().await;
    let r = near
        .call_ok("subscribe", json!({"channel": CH, "since": 7}))
        .await;
    assert_eq!(
        r,
        json!({"channel": CH, "seq": 12, "recovered": true, "replayed": 5})
    );
    let seqs: Vec<u64> = collect_messages(&mut near, CH, 5)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![8, 9, 10, 11, 12]);
    api.publish(CH, json!({"n": 13})).await;
    assert_eq!(message_seq(&far.recv().await, CH), Some(13));
}

/// PROTOCOL.md sections 4 and 8 (`key`): a WebSocket publish retried with
/// the same key, on the same or another connection of the same sub, returns
/// the first answer and is delivered once; keys are scoped to the sub; the
/// same key with other data or another channel gets `conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_websocket_publish() {
    const CH: &str = "idem_ws";
    let h = start_dev(&[]).await;
    let api = Api::new(&h);
    let s = &h.jwt_secret;
    let writer = TokenBuilder::new("writer").allow_all().sign(s);
    let (mut a, _) = Connect::new(&h).token(&writer).ready().await;
    let (mut b, _) = Connect::new(&h).token(&writer).msgpack().ready().await;
    let (mut watcher, _) = Connect::new(&h)
        .token(&TokenBuilder::new("watcher").channels(&[CH]).sign(s))
        .ready()
        .await;
    a.subscribe(CH).await;

    let req = json!({"channel": CH, "data": {"v": 1}, "key": "k-1"});
    let first = a.call_ok("publish", req.clone()).await;
    assert_eq!(first["seq"], 1);
    assert_eq!(
        a.call_ok("publish", req.clone()).await,
        first,
        "retry on the same connection"
    );
    assert_eq!(
        b.call_ok("publish", req.clone()).await,
        first,
        "retry on another connection"
    );

    let other = TokenBuilder::new("other").allow_all().sign(s);
    let (mut o, _) = Connect::new(&h).token(&other).ready().await;
    let theirs = o.call_ok("publish", req.clone()).await;
    assert_eq!(
        theirs["seq"], 2,
        "keys are scoped to the publisher: {theirs}"
    );
    assert_ne!(theirs["id"], first["id"]);

    assert_eq!(
        a.call_err(
            "publish",
            json!({"channel": CH, "data": {"v": 2}, "key": "k-1"})
        )
        .await,
        "conflict"
    );
    assert_eq!(
        a.call_err(
            "publish",
            json!({"channel": "idem_other", "data": {"v": 1}, "key": "k-1"})
        )
        .await,
        "conflict"
    );

    let marker = api.publish(CH, json!({"marker": true})).await;
    assert_eq!(marker["seqs"][CH], 3);
    for c in [&mut a, &mut watcher] {
        let msgs = collect_messages(c, CH, 3).await;
        let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(msgs[0]["id"], first["id"]);
    }
    let ids: HashSet<String> = api.history(CH, &[]).await["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(api.history("idem_other", &[]).await["last_seq"], 0);
}

/// DESIGN.md guarantee 1 (durable): messages survive a restart of `herald
/// dev` on the same SQLite file; seq continues at 6; a subscriber
/// reconnecting with `since=5` gets seq 6 and then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_messages_and_seq() {
    const CH: &str = "durable_1";
    let mut h = start_dev(&[]).await;
    let api = Api::new(&h);
    api.publish_n(CH, 5).await;
    let t = TokenBuilder::new("u1").channels(&[CH]).sign(&h.jwt_secret);
    let (mut c, w) = Connect::new(&h).token(&t).ready().await;
    assert_eq!(w["subs"], json!([{"channel": CH, "seq": 5}]));

    h.restart().await;
    match c.next_event(STEP).await {
        Some(Event::Close(..)) | Some(Event::End(_)) => {}
        other => panic!("the old connection should have ended with the process: {other:?}"),
    }
    let b = api.publish(CH, json!({"n": 6})).await;
    assert_eq!(b["seqs"][CH], 6, "seq continues after a restart");

    let (mut c, w) = Connect::new(&h)
        .token(&t)
        .query("recover", &format!("{CH}:5"))
        .ready()
        .await;
    assert_eq!(
        w["subs"],
        json!([{"channel": CH, "seq": 6, "recovered": true, "replayed": 1}])
    );
    let m = c.recv().await;
    assert_eq!(message_seq(&m, CH), Some(6), "{m}");
    assert_eq!(m["data"], json!({"n": 6}));

    let sub_t = TokenBuilder::new("u2")
        .allow("subscribe", &[CH])
        .sign(&h.jwt_secret);
    let (mut s, _) = Connect::new(&h).token(&sub_t).ready().await;
    let r = s
        .call_ok("subscribe", json!({"channel": CH, "since": 5}))
        .await;
    assert_eq!(
        r,
        json!({"channel": CH, "seq": 6, "recovered": true, "replayed": 1})
    );
    assert_eq!(message_seq(&s.recv().await, CH), Some(6));

    api.publish(CH, json!({"n": 7})).await;
    assert_eq!(message_seq(&c.recv().await, CH), Some(7));
    assert_eq!(message_seq(&s.recv().await, CH), Some(7));
    let hist = api.history(CH, &[]).await;
    let seqs: Vec<u64> = hist["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
}
