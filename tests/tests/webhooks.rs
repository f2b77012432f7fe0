//! Issue 11: webhooks, against real processes (`herald dev`, or `herald
//! ingest` + `herald gateway` around a private Redis, with SQLite or a
//! private PostgreSQL behind ingest) and a real HTTP receiver this file
//! runs on 127.0.0.1, whose behaviour each test switches: answer 2xx, fail
//! with 500, hang past the timeout, or answer a before hook.
//!
//! What a backend developer checks: every event arrives, signed with the
//! configured secret over `t.` + the exact body; the event id is the same
//! on every attempt; a receiver that fails, times out or is down gets the
//! events once it is back, even across an ingest SIGKILL; two ingest
//! replicas on one database deliver each event once; a before hook can
//! reject, rewrite, and fails open or closed as configured; gateways'
//! connect/join/leave/disconnect events arrive.
//!
//! Timing: every wait is a condition polled with a deadline (no fixed
//! sleeps, no thresholds). Retries back off from 1 s, so the deadlines
//! below leave room for several attempts on a loaded two-core machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use herald_testkit::{RedisServer, eventually, test_database};
use herald_tests::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound for deliveries that need a few retries (backoff 1 s, 2 s, 4 s).
const DELIVER: Duration = Duration::from_secs(30);
/// Bound for one delivery of a healthy receiver.
const STEP: Duration = Duration::from_secs(15);
const SECRET: &str = "whsec_test_secret";

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// How the receiver answers.
#[derive(Debug, Clone)]
enum Behaviour {
    /// 200 `{}`.
    Ok,
    /// This status, no body.
    Status(u16),
    /// No answer until the client gives up.
    Hang,
    /// 200 with the body this function makes of the request's JSON.
    Answer(fn(&Value) -> Value),
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HashMap<String, String>,
    raw: Vec<u8>,
    body: Value,
    /// What the receiver answered (`None`: it hung).
    answered: Option<u16>,
}

#[derive(Clone)]
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Delivery>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Receiver {
    async fn start(b: Behaviour) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let r = Receiver {
            port: l.local_addr().expect("receiver address").port(),
            got: Arc::default(),
            behaviour: Arc::new(Mutex::new(b)),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(me.clone().serve(s));
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().expect("receiver state") = b;
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().expect("receiver state").clone()
    }

    /// Event ids answered 2xx, with how many times each was.
    fn delivered(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for d in self.deliveries() {
            if d.answered.is_some_and(|s| (200..300).contains(&s)) {
                *m.entry(d.body["id"].as_str().unwrap_or("").to_owned())
                    .or_insert(0) += 1;
            }
        }
        m
    }

    /// Waits (bounded) until `n` distinct events were taken; panics with
    /// what arrived.
    async fn wait_delivered(&self, n: usize, within: Duration) {
        let end = tokio::time::Instant::now() + within;
        while self.delivered().len() != n {
            if tokio::time::Instant::now() > end {
                let got: Vec<String> = self
                    .deliveries()
                    .iter()
                    .map(|d| format!("{:?} {}", d.answered, d.body))
                    .collect();
                panic!(
                    "{n} events not taken within {within:?}; got:\n{}",
                    got.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every request so far, for a failure message.
    fn dump(&self) -> String {
        self.deliveries()
            .iter()
            .map(|d| format!("{:?} {}", d.answered, d.body))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Keep-alive HTTP/1.1, one request at a time.
    async fn serve(self, mut s: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let headers: HashMap<String, String> = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let mut chunk = [0u8; 8192];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let raw = buf[head_end..head_end + len].to_vec();
            buf.drain(..head_end + len);
            let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            let b = self.behaviour.lock().expect("receiver state").clone();
            let (status, answer) = match b {
                Behaviour::Ok => (Some(200), "{}".to_owned()),
                Behaviour::Status(c) => (Some(c), String::new()),
                Behaviour::Hang => (None, String::new()),
                Behaviour::Answer(f) => (Some(200), f(&body).to_string()),
            };
            self.got.lock().expect("receiver state").push(Delivery {
                headers,
                raw,
                body,
                answered: status,
            });
            let Some(status) = status else {
                // Hold the request until herald gives up and closes.
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                return;
            };
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// HMAC-SHA256 of `msg` under `key`, hex, computed with jsonwebtoken's HS256
/// (an implementation independent of herald's).
fn hmac_hex(key: &str, msg: &[u8]) -> String {
    let sig = jsonwebtoken::crypto::sign(
        msg,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("hmac");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("base64url signature");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the `Herald-Signature` of `d` is valid for `secret`: `t=<secs>,
/// v1=<hex HMAC(secret, "<t>." + raw body)>` (one `v1` must match), `t`
/// within a minute of now, and `Herald-Event-Id` is the body's id.
fn signature_check(d: &Delivery, secret: &str) -> Result<(), String> {
    let h = d
        .headers
        .get("herald-signature")
        .ok_or_else(|| format!("no Herald-Signature header: {:?}", d.headers))?;
    let mut t = None;
    let mut v1 = Vec::new();
    for part in h.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_owned()),
            Some(("v1", v)) => v1.push(v.to_owned()),
            _ => return Err(format!("unexpected signature part {part:?} in {h}")),
        }
    }
    let t = t.ok_or_else(|| format!("no t= in {h}"))?;
    let secs: i64 = t.parse().map_err(|_| format!("t={t} is not a number"))?;
    if (now_secs() - secs).abs() >= 60 {
        return Err(format!("t={secs} is not now"));
    }
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(&d.raw);
    if !v1.contains(&hmac_hex(secret, &msg)) {
        return Err(format!("no v1 in {h} matches HMAC-SHA256 over t.body"));
    }
    if d.headers.get("herald-event-id").map(String::as_str) != d.body["id"].as_str() {
        return Err("Herald-Event-Id header is not the body's id".into());
    }
    Ok(())
}

fn check_signature(d: &Delivery, secret: &str) {
    if let Err(e) = signature_check(d, secret) {
        panic!("{e}");
    }
}

fn metric_value(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| label.is_none_or(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metric(api: &Api, name: &str, label: Option<&str>) -> f64 {
    let (status, text) = api.admin_text("/metrics").await;
    assert_eq!(status, 200, "GET /metrics");
    metric_value(&text, name, label)
}

fn webhook_toml(name: &str, url: &str, extra: &str) -> String {
    format!("[[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n")
}

fn dev_with(config: String) -> HeraldOptions {
    HeraldOptions {
        config_toml: Some(config),
        ..HeraldOptions::default()
    }
}

fn client_token(h: &HeraldProcess, sub: &str) -> String {
    TokenBuilder::new(sub)
        .allow("subscribe", &["*"])
        .allow("publish", &["*"])
        .info(json!({"name": sub}))
        .sign(&h.jwt_secret)
}

async fn start_redis() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("starting redis-server panicked")
        .unwrap_or_else(|e| panic!("cannot start a private redis-server: {e}"))
}

/// `herald ingest` + `herald gateway` sharing keys, Redis and `config`.
async fn topology_node(
    sub: &str,
    redis: &str,
    ingest: Option<&HeraldProcess>,
    keys: &HeraldOptions,
    config: &str,
    database_url: Option<&str>,
) -> HeraldProcess {
    let mut args = vec!["--redis-url".to_owned(), redis.to_owned()];
    if let Some(i) = ingest {
        args.extend(["--ingest-url".to_owned(), i.http_url()]);
    }
    HeraldProcess::start(HeraldOptions {
        subcommand: sub.into(),
        args,
        config_toml: Some(config.to_owned()),
        database_url: database_url.map(str::to_owned),
        jwt_secret: keys.jwt_secret.clone(),
        api_key: keys.api_key.clone(),
        ..HeraldOptions::default()
    })
    .await
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A client's publishes to matching channels reach the endpoint as signed
/// `publish` events carrying the committed message (channel, seq, id, ts,
/// from, data); the endpoint fails (500), then hangs past the timeout,
/// then recovers: every event is retried with the same id until it is
/// taken, and none is lost. Publishes to other channels and API publishes
/// (the backend's own) send nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_events_survive_a_failing_then_hanging_receiver() {
    let rx = Receiver::start(Behaviour::Status(500)).await;
    let h = HeraldProcess::start(dev_with(webhook_toml(
        "bot",
        &rx.url(),
        "channels = [\"chat_*\"]\ntimeout = \"500ms\"",
    )))
    .await;
    let api = Api::new(&h);
    let (mut c, _) = Connect::new(&h)
        .token(&client_token(&h, "visitor:1"))
        .ready()
        .await;
    let mut published = Vec::new();
    for i in 0..3 {
        let r = c
            .publish(
                "chat_1",
                json!({"content": format!("m{i}"), "role": "user"}),
            )
            .await;
        published.push(r);
    }
    c.publish("other_1", json!({"content": "not wanted"})).await;
    api.publish("chat_1", json!({"content": "from the backend"}))
        .await;

    // Failing: each event is attempted (and answered 500).
    eventually(DELIVER, "a 500 for each of the 3 events", || async {
        let ids: BTreeSet<String> = rx
            .deliveries()
            .iter()
            .map(|d| d.body["id"].as_str().unwrap_or("").to_owned())
            .collect();
        ids.len() >= 3
    })
    .await;
    let failing: BTreeSet<String> = rx
        .deliveries()
        .iter()
        .map(|d| d.body["id"].as_str().unwrap().to_owned())
        .collect();
    // Hanging: attempts time out.
    rx.set(Behaviour::Hang);
    let seen = rx.deliveries().len();
    eventually(DELIVER, "an attempt on the hanging receiver", || async {
        rx.deliveries().len() > seen
    })
    .await;
    eventually(DELIVER, "a timeout counted", || async {
        metric(
            &api,
            "herald_webhook_deliveries_total",
            Some("result=\"timeout\""),
        )
        .await
            >= 1.0
    })
    .await;
    // Back: everything arrives.
    rx.set(Behaviour::Ok);
    eventually(DELIVER, "all 3 events taken", || async {
        rx.delivered().len() == 3
    })
    .await;

    let delivered = rx.delivered();
    assert_eq!(
        delivered.keys().cloned().collect::<BTreeSet<_>>(),
        failing,
        "the ids taken are the ids first attempted: one id per event on every attempt"
    );
    for d in rx.deliveries() {
        check_signature(&d, SECRET);
        assert_eq!(d.body["type"], "publish");
        assert_eq!(
            d.body["channel"], "chat_1",
            "only chat_* and only client publishes: {}",
            d.body
        );
    }
    let ok: Vec<Delivery> = rx
        .deliveries()
        .into_iter()
        .filter(|d| d.answered == Some(200))
        .collect();
    for (i, p) in published.iter().enumerate() {
        let d = ok
            .iter()
            .find(|d| d.body["message"]["id"] == p["id"])
            .unwrap_or_else(|| panic!("no delivery for publish {p}"));
        assert_eq!(
            d.body["message"],
            json!({"channel": "chat_1", "seq": p["seq"], "id": p["id"], "ts": p["ts"],
                "from": "visitor:1", "data": {"content": format!("m{i}"), "role": "user"}})
        );
        assert_eq!(d.body["ts"], p["ts"]);
    }
    assert!(
        metric(
            &api,
            "herald_webhook_deliveries_total",
            Some("result=\"failed\"")
        )
        .await
            >= 3.0
    );
    assert_eq!(
        metric(
            &api,
            "herald_webhook_deliveries_total",
            Some("result=\"ok\"")
        )
        .await,
        3.0
    );
}

/// Deliveries pending when ingest is SIGKILLed are in the store: the
/// restarted ingest delivers every one (at least once, by id) once the
/// receiver is back, and the client events a gateway reported (connect,
/// join, leave, disconnect on `room_*`) arrive through `POST /v1/events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_an_ingest_sigkill() {
    let redis = start_redis().await;
    let rx = Receiver::start(Behaviour::Status(503)).await;
    let keys = HeraldOptions::default();
    let config = webhook_toml(
        "app",
        &rx.url(),
        "channels = [\"room_*\"]\nevents = [\"publish\", \"join\", \"leave\", \"connect\", \"disconnect\"]",
    );
    let mut ingest = topology_node("ingest", &redis.url(), None, &keys, &config, None).await;
    let gw = topology_node("gateway", &redis.url(), Some(&ingest), &keys, &config, None).await;
    let api = Api::new(&ingest);

    let (mut c, w) = Connect::new(&gw)
        .token(&client_token(&gw, "user:a"))
        .ready()
        .await;
    let conn = w["conn"].as_str().unwrap().to_owned();
    c.subscribe("room_1").await;
    c.subscribe("lobby").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(c.publish("room_1", json!({"n": i})).await["id"].clone());
    }
    c.call_ok("unsubscribe", json!({"channel": "room_1"})).await;
    c.close().await;
    // Every event was attempted (so it is in the outbox), none taken.
    let end = tokio::time::Instant::now() + DELIVER;
    loop {
        let seen: BTreeSet<String> = rx
            .deliveries()
            .iter()
            .map(|d| d.body["id"].as_str().unwrap_or("").to_owned())
            .collect();
        if seen.len() >= 9 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no attempt for each of the 9 events within {DELIVER:?}; got:\n{}\ngateway log:\n{}\ningest log:\n{}",
            rx.dump(),
            gw.log(),
            ingest.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.delivered().is_empty());
    eventually(STEP, "outbox depth 9", || async {
        metric(&api, "herald_webhook_outbox_depth", None).await == 9.0
    })
    .await;

    ingest.kill();
    rx.set(Behaviour::Ok);
    ingest.restart().await;
    rx.wait_delivered(9, DELIVER).await;

    let firsts: Vec<Delivery> = {
        let mut seen = BTreeSet::new();
        rx.deliveries()
            .into_iter()
            .filter(|d| d.answered == Some(200) && seen.insert(d.body["id"].to_string()))
            .collect()
    };
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for d in &firsts {
        check_signature(d, SECRET);
        *kinds
            .entry(d.body["type"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        if d.body["type"] != "publish" {
            assert_eq!(d.body["client"]["sub"], "user:a", "{}", d.body);
            assert_eq!(d.body["client"]["conn"], conn.as_str(), "{}", d.body);
            assert_eq!(d.body["client"]["info"], json!({"name": "user:a"}));
        }
        if ["join", "leave"].contains(&d.body["type"].as_str().unwrap()) {
            assert_eq!(
                d.body["channel"], "room_1",
                "lobby is not room_*: {}",
                d.body
            );
        }
    }
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("connect".to_owned(), 1),
            ("disconnect".to_owned(), 1),
            ("join".to_owned(), 1),
            ("leave".to_owned(), 1),
            ("publish".to_owned(), 5),
        ])
    );
    let published: BTreeSet<String> = ids.iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let got: BTreeSet<String> = firsts
        .iter()
        .filter(|d| d.body["type"] == "publish")
        .map(|d| d.body["message"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, published);
    eventually(STEP, "outbox empty", || async {
        metric(&Api::new(&ingest), "herald_webhook_outbox_depth", None).await == 0.0
    })
    .await;
}

/// Two ingest replicas on one PostgreSQL store, both running delivery
/// workers for the same endpoint: 40 client publishes through both are
/// each delivered exactly once (a healthy receiver, so nothing is retried:
/// the claims with SKIP LOCKED and leases never hand one row to both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_replicas_deliver_each_event_once() {
    let redis = start_redis().await;
    let db = test_database().await;
    let rx = Receiver::start(Behaviour::Ok).await;
    let keys = HeraldOptions::default();
    let config = webhook_toml("app", &rx.url(), "concurrency = 2");
    let i1 = topology_node("ingest", &redis.url(), None, &keys, &config, Some(db.url())).await;
    let i2 = topology_node("ingest", &redis.url(), None, &keys, &config, Some(db.url())).await;
    let g1 = topology_node("gateway", &redis.url(), Some(&i1), &keys, &config, None).await;
    let g2 = topology_node("gateway", &redis.url(), Some(&i2), &keys, &config, None).await;
    let (mut a, _) = Connect::new(&g1)
        .token(&client_token(&g1, "user:a"))
        .ready()
        .await;
    let (mut b, _) = Connect::new(&g2)
        .token(&client_token(&g2, "user:b"))
        .ready()
        .await;
    let mut ids = BTreeSet::new();
    for i in 0..20 {
        ids.insert(
            a.publish("chat_x", json!({"n": i})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        ids.insert(
            b.publish("chat_x", json!({"n": i})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    eventually(DELIVER, "40 events delivered", || async {
        rx.delivered().len() == 40
    })
    .await;
    let delivered = rx.delivered();
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events delivered twice: {twice:?}");
    let msg_ids: BTreeSet<String> = rx
        .deliveries()
        .iter()
        .map(|d| d.body["message"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(msg_ids, ids);
    let total = metric(
        &Api::new(&i1),
        "herald_webhook_deliveries_total",
        Some("result=\"ok\""),
    )
    .await
        + metric(
            &Api::new(&i2),
            "herald_webhook_deliveries_total",
            Some("result=\"ok\""),
        )
        .await;
    assert_eq!(
        total, 40.0,
        "the replicas' ok counts add up to the deliveries"
    );
}

fn moderate(req: &Value) -> Value {
    match req["message"]["data"]["content"].as_str() {
        Some("spam") => json!({"action": "reject", "reason": "no spam here"}),
        Some("rewrite me") => json!({"data": {"content": "rewritten", "by": "moderator"}}),
        _ => json!({}),
    }
}

/// `mode = "before"`: the endpoint sees a client publish before it is
/// stored and may reject it (`forbidden` with its reason, nothing stored),
/// rewrite it (subscribers and history get the new data), or accept it.
/// When it does not answer in time, `on_failure = "closed"` refuses the
/// publish with `unavailable` and `"open"` lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_hook_rejects_rewrites_and_fails_open_or_closed() {
    let rx = Receiver::start(Behaviour::Answer(moderate)).await;
    let config = format!(
        "{}{}",
        webhook_toml(
            "strict",
            &rx.url(),
            "mode = \"before\"\nchannels = [\"chat_*\"]\non_failure = \"closed\"\ntimeout = \"300ms\""
        ),
        webhook_toml(
            "lenient",
            &rx.url(),
            "mode = \"before\"\nchannels = [\"room_*\"]\non_failure = \"open\"\ntimeout = \"300ms\""
        ),
    );
    let h = HeraldProcess::start(dev_with(config)).await;
    let api = Api::new(&h);
    let (mut c, _) = Connect::new(&h)
        .token(&client_token(&h, "visitor:9"))
        .ready()
        .await;
    c.subscribe("chat_m").await;

    let err = c
        .call(
            "publish",
            json!({"channel": "chat_m", "data": {"content": "spam"}}),
        )
        .await;
    assert_eq!(err["error"]["code"], "forbidden", "{err}");
    assert_eq!(err["error"]["message"], "no spam here", "{err}");
    let ok = c.publish("chat_m", json!({"content": "rewrite me"})).await;
    let m = c
        .recv_until("the rewritten message", |v| v["type"] == "message")
        .await;
    assert_eq!(
        m["data"],
        json!({"content": "rewritten", "by": "moderator"})
    );
    assert_eq!(m["id"], ok["id"]);
    c.publish("chat_m", json!({"content": "fine"})).await;
    let m = c
        .recv_until("the accepted message", |v| v["type"] == "message")
        .await;
    assert_eq!(m["data"], json!({"content": "fine"}));
    let hist = api.history("chat_m", &[]).await;
    let stored: Vec<Value> = hist["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(
        stored,
        [
            json!({"content": "rewritten", "by": "moderator"}),
            json!({"content": "fine"})
        ],
        "the rejected publish stored nothing"
    );
    // The hook saw the client's sub and the would-be message.
    let first = &rx.deliveries()[0];
    check_signature(first, SECRET);
    assert_eq!(first.body["type"], "publish");
    assert_eq!(first.body["message"]["from"], "visitor:9");
    assert_eq!(first.body["message"]["channel"], "chat_m");

    rx.set(Behaviour::Hang);
    let err = c
        .call(
            "publish",
            json!({"channel": "chat_m", "data": {"content": "while down"}}),
        )
        .await;
    assert_eq!(err["error"]["code"], "unavailable", "closed: {err}");
    let through = c.publish("room_m", json!({"content": "while down"})).await;
    assert!(through["seq"].as_u64().is_some(), "open: {through}");
    assert_eq!(api.history("chat_m", &[]).await["last_seq"], 2);
    assert_eq!(
        metric(
            &api,
            "herald_webhook_before_total",
            Some("result=\"reject\"")
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &api,
            "herald_webhook_before_total",
            Some("result=\"rewrite\"")
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &api,
            "herald_webhook_before_total",
            Some("result=\"fail_closed\"")
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &api,
            "herald_webhook_before_total",
            Some("result=\"fail_open\"")
        )
        .await,
        1.0
    );
}

/// A bad `[[webhooks]]` entry stops the process at start with a message
/// naming the key: an https URL, an unknown event, a before hook with a
/// timeout over 2.5 s, two entries with one name, no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_config_is_refused_at_start() {
    let cases = [
        (
            webhook_toml("a", "https://example.com/x", ""),
            "must be http://",
        ),
        (
            webhook_toml("a", "http://127.0.0.1:1/x", "events = [\"message\"]"),
            "is not publish, join",
        ),
        (
            webhook_toml(
                "a",
                "http://127.0.0.1:1/x",
                "mode = \"before\"\ntimeout = \"3s\"",
            ),
            "at most 2.5s",
        ),
        (
            format!(
                "{}{}",
                webhook_toml("a", "http://127.0.0.1:1/x", ""),
                webhook_toml("a", "http://127.0.0.1:2/x", "")
            ),
            "two entries are named",
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/x\"\n".to_owned(),
            "secret",
        ),
    ];
    for (config, want) in cases {
        let mut h = HeraldProcess::start(HeraldOptions {
            wait_ready: false,
            ..dev_with(config.clone())
        })
        .await;
        let status = h.wait_exit(Duration::from_secs(20)).await;
        assert!(
            status.is_some_and(|s| !s.success()),
            "herald started with {config}"
        );
        assert!(
            h.log().contains(want),
            "log for {config} lacks {want:?}:\n{}",
            h.log()
        );
    }
}

/// `HERALD_WEBHOOKS__<NAME>__<KEY>` sets a key of the entry named `<name>`
/// (here the secret, kept out of the file) and can define a whole entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secret_from_the_environment() {
    let rx = Receiver::start(Behaviour::Ok).await;
    let h = HeraldProcess::start(HeraldOptions {
        config_toml: Some(format!(
            "[[webhooks]]\nname = \"bot\"\nurl = \"{}\"\nsecret = \"in-the-file\"\n",
            rx.url()
        )),
        env: vec![
            ("HERALD_WEBHOOKS__BOT__SECRET".into(), "from-the-env".into()),
            ("HERALD_WEBHOOKS__AUDIT__URL".into(), rx.url()),
            (
                "HERALD_WEBHOOKS__AUDIT__SECRET".into(),
                "audit-secret".into(),
            ),
            ("HERALD_WEBHOOKS__AUDIT__CHANNELS".into(), "audit_*".into()),
        ],
        ..HeraldOptions::default()
    })
    .await;
    let (mut c, _) = Connect::new(&h).token(&client_token(&h, "u")).ready().await;
    c.publish("chat_1", json!({"a": 1})).await;
    c.publish("audit_1", json!({"b": 2})).await;
    // bot (every channel) gets both; audit (audit_*) gets the second under
    // the same event id: ids are per event, deliveries per endpoint.
    eventually(STEP, "3 deliveries (bot: 2, audit: 1)", || async {
        rx.deliveries()
            .iter()
            .filter(|d| d.answered == Some(200))
            .count()
            == 3
    })
    .await;
    let ds = rx.deliveries();
    let chat = ds.iter().find(|d| d.body["channel"] == "chat_1").unwrap();
    check_signature(chat, "from-the-env");
    let audits: Vec<&Delivery> = ds
        .iter()
        .filter(|d| d.body["channel"] == "audit_1")
        .collect();
    assert_eq!(audits.len(), 2, "bot (every channel) and audit");
    assert_eq!(
        audits
            .iter()
            .filter(|d| signature_check(d, "audit-secret").is_ok())
            .count(),
        1,
        "one of them is signed with the audit endpoint's secret"
    );
}
