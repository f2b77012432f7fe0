//! Scale-out across real processes (DESIGN.md "Shape" and "Real parts in
//! tests"; PROTOCOL.md sections 2-9): several `herald gateway` and `herald
//! ingest` nodes on 127.0.0.1 around a private Redis (or Redis Cluster) and
//! one PostgreSQL database, nginx in front of the gateways for the
//! load-balancer test.
//!
//! Every process of one topology shares the JWT secret and the API key;
//! gateway `i` is `--node-id gw-i`, sends publishes to ingest `i % ingests`
//! and checks its channels every `--catchup-interval 1` second, so repair
//! after a bus outage is quick. Frames are generic values (the suites' own
//! client in `tests/src/lib.rs`), never herald's types.
//!
//! Waits are conditions with deadlines; the only sleeps pace publish loops.
//! When a test panics, the tail of every herald log of its topology is
//! printed (see [`LogsOnPanic`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::join_all;
use herald_testkit::cluster::RedisCluster;
use herald_testkit::{Nginx, RedisServer, TestDb, eventually, test_database};
use herald_tests::*;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// `--catchup-interval` (seconds) of every gateway here.
const CATCHUP: &str = "1";
/// Bound for the subscribers to hold everything acknowledged, once the last
/// publish was answered: catch-up runs every second, the rest is slack for
/// a loaded two-core machine running two topologies at once.
const SETTLE: Duration = Duration::from_secs(20);
/// `[presence] ttl` of the presence test (seconds).
const PRESENCE_TTL: u64 = 3;
/// Scheduling slack on top of a deadline the protocol sets (a loaded
/// two-core machine, debug builds).
const SLACK: Duration = Duration::from_secs(2);
/// Log lines printed per process when a test fails.
const TAIL: usize = 60;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// Real parts
// ---------------------------------------------------------------------------

async fn start_redis() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("starting redis-server panicked")
        .unwrap_or_else(|e| panic!("cannot start a private redis-server: {e}"))
}

async fn start_redis_cluster(masters: usize, replicas: usize) -> RedisCluster {
    tokio::task::spawn_blocking(move || RedisCluster::start(masters, replicas))
        .await
        .expect("starting the Redis Cluster panicked")
        .unwrap_or_else(|e| panic!("cannot start a private Redis Cluster: {e}"))
}

/// One command to the Redis on 127.0.0.1:`port` (RESP over a fresh TCP
/// connection), its reply as JSON: integers, strings (bulk and simple),
/// arrays, null, and `{"error": ..}`. Blocking: call through
/// `block_in_place`.
fn redis_command(port: u16, args: &[&str]) -> Value {
    use std::io::{BufRead, BufReader, Write};
    fn read(r: &mut impl BufRead) -> Value {
        let mut line = String::new();
        r.read_line(&mut line).expect("reading a RESP reply");
        let line = line.trim_end_matches("\r\n");
        assert!(!line.is_empty(), "empty RESP line");
        let (kind, rest) = line.split_at(1);
        match kind {
            "*" => {
                let n: i64 = rest.parse().expect("RESP array length");
                if n < 0 {
                    Value::Null
                } else {
                    Value::Array((0..n).map(|_| read(r)).collect())
                }
            }
            "$" => {
                let n: i64 = rest.parse().expect("RESP bulk length");
                let Ok(n) = usize::try_from(n) else {
                    return Value::Null;
                };
                let mut b = vec![0u8; n + 2];
                r.read_exact(&mut b).expect("reading a RESP bulk string");
                Value::String(String::from_utf8_lossy(&b[..n]).into_owned())
            }
            ":" => json!(rest.parse::<i64>().expect("RESP integer")),
            "+" => json!(rest),
            "-" => json!({ "error": rest }),
            _ => panic!("unexpected RESP line {line:?}"),
        }
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connecting to Redis on port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("setting a read timeout");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).expect("writing a RESP command");
    read(&mut BufReader::new(s))
}

/// Waits until `PUBSUB <numsub> <channel>` on `port` counts `want`
/// subscribers (DESIGN.md "Shape": ONE Redis subscription per channel per
/// gateway, reference counted).
async fn wait_bus_subscribers(port: u16, numsub: &str, channel: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last =
            tokio::task::block_in_place(|| redis_command(port, &["PUBSUB", numsub, channel]));
        if last[1].as_i64() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "PUBSUB {numsub} {channel} on port {port}: want {want} subscribers (one per gateway), last answer {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

/// What to start.
struct Spec {
    /// `--redis-url` of every process (comma-separated seeds: cluster).
    redis_url: String,
    gateways: usize,
    ingests: usize,
    /// Ingest on one fresh PostgreSQL database (else SQLite, one ingest).
    postgres: bool,
    /// Extra gateway arguments.
    gateway_args: Vec<String>,
    /// Extra environment of every process.
    env: Vec<(String, String)>,
}

impl Spec {
    fn new(redis_url: String, gateways: usize, ingests: usize) -> Spec {
        Spec {
            redis_url,
            gateways,
            ingests,
            postgres: true,
            gateway_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// Ingest and gateway processes of one cluster.
struct Topology {
    secret: String,
    api_key: String,
    redis_url: String,
    gateway_args: Vec<String>,
    env: Vec<(String, String)>,
    ingests: Vec<HeraldProcess>,
    gateways: Vec<HeraldProcess>,
    /// Dropped after the processes (field order).
    _db: Option<TestDb>,
}

impl Topology {
    async fn start(spec: Spec) -> Topology {
        assert!(
            spec.postgres || spec.ingests <= 1,
            "several ingest nodes need one shared PostgreSQL database"
        );
        let fresh = HeraldOptions::default();
        let db = if spec.postgres && spec.ingests > 0 {
            Some(test_database().await)
        } else {
            None
        };
        let mut t = Topology {
            secret: fresh.jwt_secret.clone(),
            api_key: fresh.api_key.clone(),
            redis_url: spec.redis_url,
            gateway_args: spec.gateway_args,
            env: spec.env,
            ingests: Vec::new(),
            gateways: Vec::new(),
            _db: None,
        };
        let db_url = db.as_ref().map(|d| d.url().to_string());
        t.ingests = join_all((0..spec.ingests).map(|i| {
            HeraldProcess::start(HeraldOptions {
                subcommand: "ingest".into(),
                args: strings(&[
                    "--redis-url",
                    &t.redis_url,
                    "--node-id",
                    &format!("ingest-{i}"),
                ]),
                env: t.env.clone(),
                database_url: db_url.clone(),
                jwt_secret: t.secret.clone(),
                api_key: t.api_key.clone(),
                ..HeraldOptions::default()
            })
        }))
        .await;
        let opts: Vec<HeraldOptions> = (0..spec.gateways)
            .map(|i| {
                let ingest = t.ingests[i % t.ingests.len()].http_url();
                t.gateway_options(&format!("gw-{i}"), &ingest)
            })
            .collect();
        t.gateways = join_all(opts.into_iter().map(HeraldProcess::start)).await;
        t._db = db;
        t
    }

    /// Options of a gateway of this topology named `node` sending publishes
    /// to `ingest_url`.
    fn gateway_options(&self, node: &str, ingest_url: &str) -> HeraldOptions {
        let mut args = strings(&[
            "--redis-url",
            &self.redis_url,
            "--ingest-url",
            ingest_url,
            "--node-id",
            node,
            "--catchup-interval",
            CATCHUP,
        ]);
        args.extend(self.gateway_args.iter().cloned());
        HeraldOptions {
            subcommand: "gateway".into(),
            args,
            env: self.env.clone(),
            jwt_secret: self.secret.clone(),
            api_key: self.api_key.clone(),
            ..HeraldOptions::default()
        }
    }

    fn apis(&self) -> Vec<Api> {
        self.ingests.iter().map(Api::new).collect()
    }

    fn sign(&self, b: TokenBuilder) -> String {
        b.sign(&self.secret)
    }

    /// Prints every herald log of this topology if the test panics before
    /// the guard drops (declare it after the topology).
    fn logs_on_panic(&self) -> LogsOnPanic {
        let mut logs = LogsOnPanic::new(TAIL, &[]);
        for (i, p) in self.ingests.iter().enumerate() {
            logs.add(&format!("ingest-{i}"), p);
        }
        for (i, p) in self.gateways.iter().enumerate() {
            logs.add(&format!("gw-{i}"), p);
        }
        logs
    }
}

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

/// What one reading connection has received.
#[derive(Debug, Default)]
struct Seen {
    /// `message` frames, in arrival order.
    messages: Vec<Value>,
    /// Every other data frame.
    other: Vec<Value>,
    /// How the connection ended, if it did.
    end: Option<String>,
}

/// A connection read by a task of its own into [`Seen`].
struct Reader {
    name: String,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Reader {
    fn spawn(name: String, mut c: Client) -> Reader {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                match c.next_event(Duration::from_secs(3600)).await {
                    Some(Event::Frame(v)) => {
                        let mut s = lock(&s);
                        if v["type"] == "message" {
                            s.messages.push(v);
                        } else {
                            s.other.push(v);
                        }
                    }
                    Some(other) => {
                        lock(&s).end = Some(format!("{other:?}"));
                        return;
                    }
                    None => {}
                }
            }
        });
        Reader { name, seen, task }
    }

    fn seqs(&self, ch: &str) -> Vec<u64> {
        seqs_of(&lock(&self.seen).messages, ch)
    }

    fn messages(&self, ch: &str) -> Vec<Value> {
        lock(&self.seen)
            .messages
            .iter()
            .filter(|m| m["channel"] == ch)
            .cloned()
            .collect()
    }
}

fn seqs_of(messages: &[Value], ch: &str) -> Vec<u64> {
    messages.iter().filter_map(|m| message_seq(m, ch)).collect()
}

/// What is wrong with `seqs` as "1..=n, each once, in order".
fn describe(seqs: &[u64], n: u64) -> String {
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    let missing: Vec<u64> = (1..=n).filter(|s| !set.contains(s)).collect();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for s in seqs {
        *counts.entry(*s).or_default() += 1;
    }
    let dups: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(s, _)| *s)
        .take(20)
        .collect();
    let disorder: Vec<(u64, u64)> = seqs
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .map(|w| (w[0], w[1]))
        .take(10)
        .collect();
    let beyond: Vec<u64> = set.range(n + 1..).take(10).copied().collect();
    format!(
        "{} message frames, last seq {:?}; missing {} (first {:?}); duplicated {dups:?}; out of order (prev, next) {disorder:?}; beyond {n}: {beyond:?}",
        seqs.len(),
        seqs.last(),
        missing.len(),
        &missing[..missing.len().min(20)],
    )
}

/// Fails with the panic of a task that died; a task that returned is left
/// as a finished placeholder (a `JoinHandle` must not be polled twice).
async fn propagate_panic(task: &mut JoinHandle<()>) {
    if task.is_finished() {
        let done = std::mem::replace(task, tokio::spawn(async {}));
        if let Err(e) = done.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// The task's output; its panic, re-raised, if it panicked.
async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

/// Waits (bounded by `timeout`) until every reader holds seq `n` of each
/// `(channel, n)`, then asserts each received exactly 1..=n in order, each
/// once. A reader whose connection ended fails the test at once.
async fn wait_delivery(readers: &mut [Reader], want: &[(&str, u64)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        for r in readers.iter_mut() {
            propagate_panic(&mut r.task).await;
            let seen = lock(&r.seen);
            if let Some(end) = &seen.end {
                panic!(
                    "reader {} lost its connection ({end}); received: {}",
                    r.name,
                    want.iter()
                        .map(|(ch, n)| format!(
                            "{ch}: {}",
                            describe(&seqs_of(&seen.messages, ch), *n)
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            for (ch, n) in want {
                let seqs = seqs_of(&seen.messages, ch);
                if !seqs.iter().any(|s| s >= n) {
                    pending.push(format!("{} on {ch}: {}", r.name, describe(&seqs, *n)));
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within {timeout:?} not every subscriber received its messages:\n{}",
            pending.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in readers.iter() {
        for (ch, n) in want {
            let seqs = r.seqs(ch);
            let exact: Vec<u64> = (1..=*n).collect();
            assert!(
                seqs == exact,
                "{} on {ch}: expected seq 1..={n}, each once, in order; got {}",
                r.name,
                describe(&seqs, *n)
            );
        }
    }
}

/// Two subscribers per gateway to `channels`: one JSON with automatic
/// subscriptions (token `channels`, checked in `welcome.subs`), one
/// MessagePack subscribing explicitly. Every channel must be new (seq 0).
async fn subscribe_everywhere(t: &Topology, channels: &[&str]) -> Vec<Reader> {
    let mut readers = Vec::new();
    for (i, gw) in t.gateways.iter().enumerate() {
        let tok = t.sign(TokenBuilder::new(&format!("reader:json:{i}")).channels(channels));
        let (c, w) = Connect::new(gw)
            .token(&tok)
            .encoding(Encoding::Json)
            .ready()
            .await;
        assert_eq!(w["node"], format!("gw-{i}"), "welcome on gateway {i}: {w}");
        let mut subs: Vec<Value> = w["subs"].as_array().cloned().unwrap_or_default();
        subs.sort_by_key(|s| s["channel"].as_str().unwrap_or_default().to_string());
        let mut want: Vec<Value> = channels
            .iter()
            .map(|ch| json!({"channel": ch, "seq": 0}))
            .collect();
        want.sort_by_key(|s| s["channel"].as_str().unwrap_or_default().to_string());
        assert_eq!(subs, want, "welcome.subs on gateway {i}: {w}");
        readers.push(Reader::spawn(format!("gw-{i}/json"), c));

        let tok = t.sign(TokenBuilder::new(&format!("reader:mp:{i}")).allow("subscribe", &["*"]));
        let (mut c, w) = Connect::new(gw)
            .token(&tok)
            .encoding(Encoding::Msgpack)
            .ready()
            .await;
        assert_eq!(c.encoding, Encoding::Msgpack, "herald.msgpack not echoed");
        assert_eq!(w["node"], format!("gw-{i}"), "welcome on gateway {i}: {w}");
        for ch in channels {
            let r = c.subscribe(ch).await;
            assert_eq!(r, json!({"channel": ch, "seq": 0}), "subscribe reply");
        }
        readers.push(Reader::spawn(format!("gw-{i}/msgpack"), c));
    }
    readers
}

/// `last_seq` of `ch` in the store, through the ingest API.
async fn last_seq(api: &Api, ch: &str) -> u64 {
    let h = api.history(ch, &[("after", "0"), ("limit", "1")]).await;
    h["last_seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("history of {ch} without last_seq: {h}"))
}

// ---------------------------------------------------------------------------
// Publish load with phases (fault tests)
// ---------------------------------------------------------------------------

/// One acknowledged publish: its seq and the phase when it was sent and
/// when its answer came.
#[derive(Debug, Clone, Copy)]
struct Ack {
    seq: u64,
    sent: u8,
    acked: u8,
}

/// Publishers posting to one channel until stopped, `per_api` tasks per
/// ingest, each pausing `pace` between publishes.
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    acks: Arc<Mutex<Vec<Ack>>>,
    refused: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(apis: &[Api], per_api: usize, ch: &str, pace: Duration) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            phase: Arc::new(AtomicU8::new(0)),
            acks: Arc::new(Mutex::new(Vec::new())),
            refused: Arc::new(Mutex::new(Vec::new())),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for (a, api) in apis.iter().enumerate() {
            for k in 0..per_api {
                let (api, ch) = (api.clone(), ch.to_string());
                let (stop, phase) = (load.stop.clone(), load.phase.clone());
                let (acks, refused) = (load.acks.clone(), load.refused.clone());
                tasks.push(tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let sent = phase.load(Ordering::SeqCst);
                        let (s, b) = api
                            .publish_body(
                                json!({"channel": ch, "data": {"ingest": a, "task": k, "i": i}}),
                            )
                            .await;
                        let acked = phase.load(Ordering::SeqCst);
                        if s == 200 {
                            let seq = b["seqs"][&ch]
                                .as_u64()
                                .unwrap_or_else(|| panic!("publish answer without seqs.{ch}: {b}"));
                            lock(&acks).push(Ack { seq, sent, acked });
                        } else {
                            lock(&refused)
                                .push(format!("ingest {a} phase {sent}->{acked}: {s} {b}"));
                        }
                        tokio::time::sleep(pace).await;
                    }
                }));
            }
        }
        Load { tasks, ..load }
    }

    fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::SeqCst);
    }

    fn count(&self, f: impl Fn(&Ack) -> bool) -> usize {
        lock(&self.acks).iter().filter(|a| f(a)).count()
    }

    /// Waits until `n` acknowledged publishes satisfy `f`.
    async fn wait_acks(
        &mut self,
        what: &str,
        n: usize,
        f: impl Fn(&Ack) -> bool,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            for t in &mut self.tasks {
                propagate_panic(t).await;
            }
            let got = self.count(&f);
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "within {timeout:?} only {got} of {n} publishes {what} were acknowledged; refused: {:?}",
                lock(&self.refused)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the publishers and waits for them; every ack and refusal.
    async fn stop(self) -> (Vec<Ack>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            match tokio::time::timeout(Duration::from_secs(40), t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(e)) => panic!("publisher task failed: {e}"),
                Err(_) => panic!("a publisher did not finish within 40 s of being stopped"),
            }
        }
        let acks = lock(&self.acks).clone();
        let refused = lock(&self.refused).clone();
        (acks, refused)
    }
}

/// The acknowledged seqs are distinct and are exactly 1..=`last` (every
/// publish answered 200, so every committed message was acknowledged).
fn check_acks(acks: &[Ack], last: u64) {
    let mut seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    seqs.sort_unstable();
    let exact: Vec<u64> = (1..=last).collect();
    assert!(
        seqs == exact,
        "acknowledged seqs must be 1..={last} (the store's last_seq), each once: {}",
        describe(&seqs, last)
    );
}

// ---------------------------------------------------------------------------
// 1. Fan-out across nodes
// ---------------------------------------------------------------------------

/// DESIGN.md "Shape" with guarantees 1 and 2 across nodes: 3 gateways, 2
/// ingest nodes, one Redis, one PostgreSQL. Subscribers on every gateway
/// (JSON with automatic subscriptions, MessagePack subscribing explicitly)
/// receive every message published through either ingest's HTTP API and by
/// WebSocket clients of every gateway (`publish` op), in the same seq order
/// everywhere, each frame carrying the publish answer's `id`, `seq` and `ts`,
/// the data, and `from` (the publishing client's `sub`, the API's `from`, or
/// absent); each gateway holds one Redis subscription for the channel
/// however many local subscribers it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_across_gateways_and_ingests() {
    const CH: &str = "chat_scaleout";
    const N: usize = 30;
    let redis = start_redis().await;
    let t = Topology::start(Spec::new(redis.url(), 3, 2)).await;
    let _logs = t.logs_on_panic();

    let mut readers = subscribe_everywhere(&t, &[CH]).await;
    wait_bus_subscribers(redis.port(), "NUMSUB", &format!("herald:{CH}"), 3).await;

    let mut ws_publishers = Vec::new();
    for (i, gw) in t.gateways.iter().enumerate() {
        let sub = format!("publisher:{i}");
        let tok = t.sign(TokenBuilder::new(&sub).allow("publish", &["chat_*"]));
        let (c, _) = Connect::new(gw).token(&tok).ready().await;
        ws_publishers.push((sub, c));
    }
    let apis = t.apis();
    // Expected frames: (seq, id, ts, from, data).
    let mut expected: Vec<(u64, Value, Value, Option<String>, Value)> = Vec::new();
    for i in 0..N {
        let data = json!({"i": i, "text": format!("message {i}"), "nested": {"ok": true}});
        let (seq, id, ts, from) = match i % 5 {
            0 => {
                let b = apis[0].publish(CH, data.clone()).await;
                (
                    b["seqs"][CH].clone(),
                    b["id"].clone(),
                    b["ts"].clone(),
                    None,
                )
            }
            1 => {
                let (s, b) = apis[1]
                    .publish_body(json!({"channel": CH, "data": data, "from": "backend:1"}))
                    .await;
                assert_eq!(s, 200, "POST /v1/publish on ingest 1: {b}");
                (
                    b["seqs"][CH].clone(),
                    b["id"].clone(),
                    b["ts"].clone(),
                    Some("backend:1".to_string()),
                )
            }
            k => {
                let (sub, c) = &mut ws_publishers[k - 2];
                let r = c.publish(CH, data.clone()).await;
                (
                    r["seq"].clone(),
                    r["id"].clone(),
                    r["ts"].clone(),
                    Some(sub.clone()),
                )
            }
        };
        let want = u64::try_from(i + 1).expect("small");
        assert_eq!(
            seq,
            json!(want),
            "publish {i} (one after the other) must get seq {want}"
        );
        assert!(
            id.is_string() && ts.is_u64(),
            "publish answer: id {id}, ts {ts}"
        );
        expected.push((want, id, ts, from, data));
    }

    let n = u64::try_from(N).expect("small");
    wait_delivery(&mut readers, &[(CH, n)], SETTLE).await;
    for r in &readers {
        for (m, (seq, id, ts, from, data)) in r.messages(CH).iter().zip(&expected) {
            let what = format!("{} message seq {seq}: {m}", r.name);
            assert_eq!(m["type"], "message", "{what}");
            assert_eq!(m["channel"], CH, "{what}");
            assert_eq!(m["seq"], json!(seq), "{what}");
            assert_eq!(&m["id"], id, "{what}: id of the publish answer");
            assert_eq!(&m["ts"], ts, "{what}: ts of the publish answer");
            assert_eq!(&m["data"], data, "{what}");
            match from {
                Some(f) => assert_eq!(m["from"], json!(f), "{what}"),
                None => assert!(m.get("from").is_none(), "{what}: no from was given"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Concurrent publishers through both ingests
// ---------------------------------------------------------------------------

/// DESIGN.md guarantee 2 with several ingest replicas: 500 concurrent
/// publishes to one channel (25 tasks x 20, alternating between the two
/// ingest nodes) get distinct seqs 1..=500, and every subscriber on every
/// gateway receives seq 1..=500 in order, each once, each seq with the id
/// its publish was answered with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_through_both_ingests() {
    const CH: &str = "chat_burst";
    const TASKS: usize = 25;
    const PER: usize = 20;
    let redis = start_redis().await;
    let t = Topology::start(Spec::new(redis.url(), 3, 2)).await;
    let _logs = t.logs_on_panic();
    let mut readers = subscribe_everywhere(&t, &[CH]).await;

    let apis = t.apis();
    let tasks: Vec<_> = (0..TASKS)
        .map(|k| {
            let api = apis[k % apis.len()].clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for j in 0..PER {
                    let b = api.publish(CH, json!({"task": k, "j": j})).await;
                    acks.push((
                        b["seqs"][CH].as_u64().expect("seq in the answer"),
                        b["id"].clone(),
                    ));
                }
                acks
            })
        })
        .collect();
    let mut by_seq: BTreeMap<u64, Value> = BTreeMap::new();
    for task in tasks {
        for (seq, id) in join(task).await {
            assert!(
                by_seq.insert(seq, id).is_none(),
                "seq {seq} acknowledged twice"
            );
        }
    }
    let n = u64::try_from(TASKS * PER).expect("small");
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "acknowledged seqs"
    );

    wait_delivery(&mut readers, &[(CH, n)], SETTLE).await;
    for r in &readers {
        for m in r.messages(CH) {
            let seq = m["seq"].as_u64().expect("seq");
            assert_eq!(m["id"], by_seq[&seq], "{}: id of seq {seq}", r.name);
        }
    }
}

// ---------------------------------------------------------------------------
// 3. Redis restart
// ---------------------------------------------------------------------------

/// DESIGN.md guarantees 1 and 3 across a Redis restart (PROTOCOL.md section
/// 8 "200 means committed", section 9 catch-up, section 7 readiness): while
/// 4 publishers post through both ingests, Redis is SIGKILLed and restarted.
/// Every publish is answered 200, those during the outage included (the
/// store commits; the bus publish failure is repaired by the gateways);
/// gateways stay ready and keep their clients; every subscriber ends with
/// exactly the acknowledged messages, seq 1..=last, in order, each once,
/// within the catch-up interval plus slack after the last publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_acknowledged_message() {
    const CH: &str = "chat_outage";
    let mut redis = start_redis().await;
    let t = Topology::start(Spec::new(redis.url(), 3, 2)).await;
    let _logs = t.logs_on_panic();
    let mut readers = subscribe_everywhere(&t, &[CH]).await;
    let apis = t.apis();

    let mut load = Load::start(&apis, 2, CH, Duration::from_millis(10));
    load.wait_acks(
        "before the outage",
        20,
        |a| a.acked == 0,
        Duration::from_secs(20),
    )
    .await;

    tokio::task::block_in_place(|| redis.kill());
    load.set_phase(1);
    load.wait_acks(
        "sent and answered while Redis was down",
        4,
        |a| a.sent == 1 && a.acked == 1,
        Duration::from_secs(30),
    )
    .await;
    for (i, gw) in t.gateways.iter().enumerate() {
        assert_eq!(
            Api::new(gw).admin_status("/readyz").await,
            Some(200),
            "gateway {i} /readyz during the Redis outage (PROTOCOL.md section 7: stays ready)"
        );
    }
    for (i, ing) in t.ingests.iter().enumerate() {
        assert_eq!(
            Api::new(ing).admin_status("/readyz").await,
            Some(503),
            "ingest {i} /readyz during the Redis outage (PROTOCOL.md section 8: readiness = store and bus reachable)"
        );
    }

    tokio::task::block_in_place(|| redis.restart())
        .unwrap_or_else(|e| panic!("restarting redis-server: {e}"));
    for ing in &t.ingests {
        let api = Api::new(ing);
        eventually(
            Duration::from_secs(20),
            "ingest /readyz back to 200 after Redis restarts",
            || {
                let api = &api;
                async move { api.admin_status("/readyz").await == Some(200) }
            },
        )
        .await;
    }
    load.set_phase(2);
    load.wait_acks(
        "after the restart",
        20,
        |a| a.sent == 2,
        Duration::from_secs(30),
    )
    .await;
    let (acks, refused) = load.stop().await;
    assert!(
        refused.is_empty(),
        "publishes refused while the store was up (PROTOCOL.md section 8: 200 once committed, even when the bus publish fails): {refused:?}"
    );
    let last = last_seq(&apis[0], CH).await;
    check_acks(&acks, last);

    wait_delivery(&mut readers, &[(CH, last)], SETTLE).await;
    for r in &readers {
        assert!(lock(&r.seen).end.is_none(), "{} was disconnected", r.name);
    }
}

// ---------------------------------------------------------------------------
// 4. Redis Cluster
// ---------------------------------------------------------------------------

/// DESIGN.md guarantee 2 on Redis Cluster (PROTOCOL.md section 9: sharded
/// pub/sub): with `--redis-url` a list of seeds, 200 concurrent publishes
/// through both ingests to three channels served by three different masters
/// reach every subscriber on every gateway as each channel's seq 1..=n, in
/// order, each once; each gateway holds one sharded subscription per channel
/// on that channel's master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_sharded_delivery() {
    const TASKS: usize = 20;
    const PER: usize = 10;
    let mut cluster = start_redis_cluster(3, 0).await;
    // One channel per master.
    let mut by_master: BTreeMap<u16, String> = BTreeMap::new();
    for i in 0..500 {
        let ch = format!("shard_{i}");
        let master = tokio::task::block_in_place(|| cluster.master_of(&format!("herald:{ch}")))
            .unwrap_or_else(|e| panic!("master of herald:{ch}: {e}"))
            .unwrap_or_else(|| panic!("no master serves herald:{ch}"));
        by_master.entry(master).or_insert(ch);
        if by_master.len() == 3 {
            break;
        }
    }
    assert_eq!(
        by_master.len(),
        3,
        "channels on three masters: {by_master:?}"
    );
    let channels: Vec<String> = by_master.values().cloned().collect();
    let chs: Vec<&str> = channels.iter().map(String::as_str).collect();

    let t = Topology::start(Spec::new(cluster.seeds(), 3, 2)).await;
    let _logs = t.logs_on_panic();
    let mut readers = subscribe_everywhere(&t, &chs).await;
    for (port, ch) in &by_master {
        wait_bus_subscribers(*port, "SHARDNUMSUB", &format!("herald:{ch}"), 3).await;
    }

    let apis = t.apis();
    let tasks: Vec<_> = (0..TASKS)
        .map(|k| {
            let api = apis[k % apis.len()].clone();
            let channels = channels.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for j in 0..PER {
                    let ch = &channels[(k + j) % channels.len()];
                    let b = api.publish(ch, json!({"task": k, "j": j})).await;
                    acks.push((
                        ch.clone(),
                        b["seqs"][ch].as_u64().expect("seq in the answer"),
                    ));
                }
                acks
            })
        })
        .collect();
    let mut per_channel: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for task in tasks {
        for (ch, seq) in join(task).await {
            per_channel.entry(ch).or_default().push(seq);
        }
    }
    let mut want = Vec::new();
    for (ch, seqs) in &mut per_channel {
        seqs.sort_unstable();
        let n = u64::try_from(seqs.len()).expect("small");
        assert_eq!(
            *seqs,
            (1..=n).collect::<Vec<_>>(),
            "acknowledged seqs of {ch}"
        );
        want.push((ch.as_str(), n));
    }
    assert_eq!(want.len(), 3);
    wait_delivery(&mut readers, &want, SETTLE).await;
}

// ---------------------------------------------------------------------------
// 5. Redis Cluster failover
// ---------------------------------------------------------------------------

/// DESIGN.md guarantees 1 and 3 across a Redis Cluster failover: with 3
/// masters and one replica each, the master serving `herald:<channel>` is
/// SIGKILLed while 4 publishers post through both ingests; its replica
/// takes over. Every publish is answered 200 (PROTOCOL.md section 8), and
/// every subscriber on every gateway ends with exactly the acknowledged
/// messages, seq 1..=last, in order, each once (gap fill and catch-up repair
/// what the bus lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_failover_loses_no_acknowledged_message() {
    const CH: &str = "chat_failover";
    let mut cluster = start_redis_cluster(3, 1).await;
    let t = Topology::start(Spec::new(cluster.seeds(), 3, 2)).await;
    let _logs = t.logs_on_panic();
    let mut readers = subscribe_everywhere(&t, &[CH]).await;
    let apis = t.apis();
    let key = format!("herald:{CH}");

    let mut load = Load::start(&apis, 2, CH, Duration::from_millis(10));
    load.wait_acks(
        "before the failover",
        20,
        |a| a.acked == 0,
        Duration::from_secs(20),
    )
    .await;

    let old = tokio::task::block_in_place(|| cluster.kill_master_of(&key));
    load.set_phase(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let m = tokio::task::block_in_place(|| cluster.master_of(&key));
        if let Ok(Some(p)) = m
            && p != old
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no replica took over {key} from port {old} within 30 s (last: {m:?}); nodes:\n{}",
            cluster.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    load.set_phase(2);
    load.wait_acks(
        "after the failover",
        20,
        |a| a.sent == 2,
        Duration::from_secs(30),
    )
    .await;
    let (acks, refused) = load.stop().await;
    eprintln!(
        "failover {old} -> {new}: {} acks, {} sent and answered during the failover",
        acks.len(),
        acks.iter().filter(|a| a.sent == 1 && a.acked == 1).count()
    );
    assert!(
        refused.is_empty(),
        "publishes refused while the store was up (PROTOCOL.md section 8): {refused:?}"
    );
    let last = last_seq(&apis[0], CH).await;
    check_acks(&acks, last);
    wait_delivery(&mut readers, &[(CH, last)], SETTLE).await;
}

// ---------------------------------------------------------------------------
// 6. Presence across nodes
// ---------------------------------------------------------------------------

/// A presence-granted connection and the presence events it got.
struct Member {
    name: &'static str,
    c: Client,
    sub: String,
    conn: String,
    info: Value,
    events: Vec<Value>,
}

impl Member {
    async fn connect(t: &Topology, gw: usize, name: &'static str, enc: Encoding) -> Member {
        Self::connect_granted(t, gw, name, enc, true).await
    }

    /// As [`Member::connect`]; `presence` says whether the token grants
    /// presence on `room_*` (without it the client is still listed, it
    /// just may not read the list or its events).
    async fn connect_granted(
        t: &Topology,
        gw: usize,
        name: &'static str,
        enc: Encoding,
        presence: bool,
    ) -> Member {
        let sub = format!("user:{name}");
        let info = json!({"name": name, "role": "operator", "gateway": gw});
        let mut b = TokenBuilder::new(&sub).allow("subscribe", &["room_*"]);
        if presence {
            b = b.allow("presence", &["room_*"]);
        }
        let tok = t.sign(b.info(info.clone()));
        let (c, w) = Connect::new(&t.gateways[gw])
            .token(&tok)
            .encoding(enc)
            .ready()
            .await;
        let conn = w["conn"]
            .as_str()
            .unwrap_or_else(|| panic!("welcome without conn: {w}"))
            .to_string();
        Member {
            name,
            c,
            sub,
            conn,
            info,
            events: Vec::new(),
        }
    }

    /// `{sub, conn, info}` as in presence lists and events.
    fn client(&self) -> Value {
        json!({"sub": self.sub, "conn": self.conn, "info": self.info})
    }

    /// Reads until the presence `event` about `who` on `ch` (bounded by
    /// `within`); other frames are kept in `events` when they are presence
    /// events.
    async fn expect_event(&mut self, ch: &str, event: &str, who: &Value, within: Duration) {
        let want = json!({"type": "presence", "channel": ch, "event": event, "client": who});
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.c.next_event(left).await {
                Some(Event::Frame(v)) if v["type"] == "presence" => {
                    self.events.push(v.clone());
                    if v == want {
                        return;
                    }
                }
                Some(Event::Frame(_)) => {}
                Some(other) => panic!(
                    "{} waiting for {want}: {other:?}; presence events so far {:?}",
                    self.name, self.events
                ),
                None => panic!(
                    "{} got no {want} within {within:?}; presence events so far {:?}",
                    self.name, self.events
                ),
            }
        }
    }

    /// No presence event this member received was about itself.
    fn check_no_own_events(&self) {
        for e in &self.events {
            assert_ne!(
                e["client"]["conn"], self.conn,
                "{} was sent an event about itself: {e}",
                self.name
            );
        }
    }
}

/// The clients of a presence answer, sorted by `conn`.
fn sorted_clients(clients: &Value) -> Vec<Value> {
    let mut v = clients.as_array().cloned().unwrap_or_default();
    v.sort_by_key(|c| c["conn"].as_str().unwrap_or_default().to_string());
    v
}

/// `who` as a presence list, sorted by `conn`.
fn roster(who: &[&Member]) -> Vec<Value> {
    sorted_clients(&Value::Array(who.iter().map(|m| m.client()).collect()))
}

/// Waits (bounded) until the `presence` op of `m` lists exactly `want`.
async fn wait_presence_op(m: &mut Member, ch: &str, want: &[Value], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = m.c.call_ok("presence", json!({ "channel": ch })).await;
        let got = sorted_clients(&r["clients"]);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "presence op of {} on {ch} within {within:?}: want {want:?}, got {got:?}",
            m.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until `GET /v1/channels/{ch}/presence` lists exactly `want`.
async fn wait_presence_http(api: &Api, ch: &str, want: &[Value], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = sorted_clients(&api.presence(ch).await["clients"]);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET /v1/channels/{ch}/presence within {within:?}: want {want:?}, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PROTOCOL.md section 5 (presence) across nodes, DESIGN.md `[presence]
/// ttl`: clients of three gateways on one channel see each other's `join`
/// and `leave` (unsubscribe and disconnect) whatever node they are on,
/// never their own; the `presence` op on any gateway and `GET
/// /v1/channels/{ch}/presence` on either ingest list all of them with their
/// token's `info`. When a gateway is SIGKILLed, its clients vanish from
/// every list within the presence ttl (3 s here) and a `leave` for each
/// reaches the clients of the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_nodes() {
    const CH: &str = "room_presence";
    let redis = start_redis().await;
    let mut spec = Spec::new(redis.url(), 3, 2);
    spec.env = vec![("HERALD_PRESENCE__TTL".into(), PRESENCE_TTL.to_string())];
    let mut t = Topology::start(spec).await;
    let _logs = t.logs_on_panic();
    let apis = t.apis();

    let mut a = Member::connect(&t, 0, "a", Encoding::Json).await;
    let mut b = Member::connect(&t, 1, "b", Encoding::Msgpack).await;
    let mut c = Member::connect(&t, 2, "c", Encoding::Json).await;
    let (bc, cc) = (b.client(), c.client());

    a.c.subscribe(CH).await;
    b.c.subscribe(CH).await;
    a.expect_event(CH, "join", &bc, STEP).await;
    c.c.subscribe(CH).await;
    a.expect_event(CH, "join", &cc, STEP).await;
    b.expect_event(CH, "join", &cc, STEP).await;

    let all = roster(&[&a, &b, &c]);
    wait_presence_op(&mut a, CH, &all, STEP).await;
    wait_presence_op(&mut b, CH, &all, STEP).await;
    wait_presence_op(&mut c, CH, &all, STEP).await;
    for api in &apis {
        wait_presence_http(api, CH, &all, STEP).await;
    }

    // A fourth client on gateway 1: join, unsubscribe (leave), subscribe
    // again (join), disconnect (leave), seen from gateways 0 and 2.
    let mut d = Member::connect(&t, 1, "d", Encoding::Json).await;
    let dc = d.client();
    d.c.subscribe(CH).await;
    for m in [&mut a, &mut c] {
        m.expect_event(CH, "join", &dc, STEP).await;
    }
    wait_presence_http(&apis[1], CH, &roster(&[&a, &b, &c, &d]), STEP).await;
    d.c.call_ok("unsubscribe", json!({ "channel": CH })).await;
    for m in [&mut a, &mut c] {
        m.expect_event(CH, "leave", &dc, STEP).await;
    }
    d.c.subscribe(CH).await;
    for m in [&mut a, &mut c] {
        m.expect_event(CH, "join", &dc, STEP).await;
    }
    d.check_no_own_events();
    d.c.close().await;
    for m in [&mut a, &mut c] {
        m.expect_event(CH, "leave", &dc, STEP).await;
    }
    wait_presence_op(&mut c, CH, &all, STEP).await;

    // Gateway 2 dies without a word: c's entry expires within the ttl and
    // the others hear its leave.
    t.gateways[2].kill();
    let killed = Instant::now();
    let ttl = Duration::from_secs(PRESENCE_TTL);
    let survivors = roster(&[&a, &b]);
    wait_presence_op(&mut a, CH, &survivors, ttl + SLACK).await;
    eprintln!(
        "presence: gw-2's client left the lists {:?} after the kill",
        killed.elapsed()
    );
    wait_presence_http(
        &apis[0],
        CH,
        &survivors,
        (ttl + SLACK).saturating_sub(killed.elapsed()),
    )
    .await;
    // Expired entries are swept every ttl / 3.
    let leave_by = ttl + ttl / 3 + SLACK;
    a.expect_event(CH, "leave", &cc, leave_by.saturating_sub(killed.elapsed()))
        .await;
    b.expect_event(CH, "leave", &cc, leave_by.saturating_sub(killed.elapsed()))
        .await;
    eprintln!(
        "presence: its leave reached gw-0 and gw-1 {:?} after the kill",
        killed.elapsed()
    );
    wait_presence_op(&mut b, CH, &survivors, STEP).await;

    for m in [&a, &b, &c] {
        m.check_no_own_events();
    }
}

/// PROTOCOL.md section 5: the presence list is who is subscribed now,
/// whatever their grants (a chat widget's visitor holds no presence grant,
/// yet the operators see it in the conversation). Such an entry must live
/// as long as the subscription: a Redis-backed gateway refreshes every
/// local entry every ttl / 3, not only the granted ones, so the visitor is
/// never seen to `leave` while connected. Watched for three ttl (the entry
/// would expire after one), then the visitor disconnects and its `leave`
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_keeps_subscribers_without_a_grant() {
    const CH: &str = "room_widget";
    let redis = start_redis().await;
    let mut spec = Spec::new(redis.url(), 2, 1);
    spec.postgres = false;
    spec.env = vec![("HERALD_PRESENCE__TTL".into(), PRESENCE_TTL.to_string())];
    let t = Topology::start(spec).await;
    let _logs = t.logs_on_panic();
    let api = Api::new(&t.ingests[0]);

    let mut op = Member::connect(&t, 0, "op", Encoding::Json).await;
    let mut visitor = Member::connect_granted(&t, 1, "visitor", Encoding::Json, false).await;
    op.c.subscribe(CH).await;
    visitor.c.subscribe(CH).await;
    let vc = visitor.client();
    op.expect_event(CH, "join", &vc, STEP).await;
    let both = roster(&[&op, &visitor]);
    wait_presence_op(&mut op, CH, &both, STEP).await;

    // Three ttl with no leave about anyone: each refresh must have kept the
    // visitor's entry alive.
    let watch = Duration::from_secs(3 * PRESENCE_TTL);
    let until = Instant::now() + watch;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match op.c.next_event(left).await {
            Some(Event::Frame(v)) if v["type"] == "presence" => {
                panic!("presence event while everyone stayed subscribed: {v}")
            }
            Some(Event::Frame(_)) => {}
            Some(other) => panic!("operator connection ended: {other:?}"),
            None => break,
        }
    }
    wait_presence_op(&mut op, CH, &both, STEP).await;
    wait_presence_http(&api, CH, &both, STEP).await;

    visitor.c.close().await;
    op.expect_event(CH, "leave", &vc, STEP).await;
    let alone = roster(&[&op]);
    wait_presence_op(&mut op, CH, &alone, STEP).await;
}

// ---------------------------------------------------------------------------
// 7. Signals across nodes
// ---------------------------------------------------------------------------

/// Reads until the next `signal` frame (bounded by [`STEP`]); panics if
/// the connection ends first.
async fn next_signal(c: &mut Client, who: &str) -> Value {
    c.recv_until(&format!("a signal at {who}"), |v| v["type"] == "signal")
        .await
}

/// PROTOCOL.md sections 4-5 (`signal`) and DESIGN.md guarantee 7 across
/// nodes: a `signal` op on gateway A reaches the channel's subscribers on
/// gateways B and C as `{type, channel, from, data}` (no seq), never the
/// sender, and no connection not subscribed to the channel; `POST
/// /v1/signal` reaches all three; nothing is stored (history stays empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_across_nodes() {
    const CH: &str = "room_signals";
    const OTHER: &str = "room_elsewhere";
    let redis = start_redis().await;
    let mut spec = Spec::new(redis.url(), 3, 1);
    spec.postgres = false;
    let t = Topology::start(spec).await;
    let _logs = t.logs_on_panic();
    let api = Api::new(&t.ingests[0]);

    let tok = |sub: &str| {
        t.sign(
            TokenBuilder::new(sub)
                .allow("subscribe", &["room_*"])
                .allow("signal", &["room_*"]),
        )
    };
    let mut members = Vec::new();
    for (i, (sub, enc)) in [
        ("user:a", Encoding::Json),
        ("user:b", Encoding::Msgpack),
        ("user:c", Encoding::Json),
    ]
    .into_iter()
    .enumerate()
    {
        let (mut c, _) = Connect::new(&t.gateways[i])
            .token(&tok(sub))
            .encoding(enc)
            .ready()
            .await;
        c.subscribe(CH).await;
        members.push(c);
    }
    // On A's node, subscribed to another channel only.
    let (mut outsider, _) = Connect::new(&t.gateways[0])
        .token(&tok("user:d"))
        .ready()
        .await;
    outsider.subscribe(OTHER).await;
    let [a, b, c] = &mut members[..] else {
        unreachable!()
    };

    let r = a
        .call_ok("signal", json!({"channel": CH, "data": {"typing": true}}))
        .await;
    assert_eq!(r, json!({}), "signal reply");
    let from_a =
        json!({"type": "signal", "channel": CH, "from": "user:a", "data": {"typing": true}});
    assert_eq!(next_signal(b, "b").await, from_a);
    assert_eq!(next_signal(c, "c").await, from_a);

    // B's signal is published after A's reached B and C, so A would see its
    // own signal first if it were echoed.
    b.call_ok("signal", json!({"channel": CH, "data": {"n": 2}}))
        .await;
    let from_b = json!({"type": "signal", "channel": CH, "from": "user:b", "data": {"n": 2}});
    assert_eq!(
        next_signal(a, "a").await,
        from_b,
        "a must not get its own signal"
    );
    assert_eq!(next_signal(c, "c").await, from_b);
    c.call_ok("signal", json!({"channel": CH, "data": {"n": 3}}))
        .await;
    let from_c = json!({"type": "signal", "channel": CH, "from": "user:c", "data": {"n": 3}});
    assert_eq!(next_signal(a, "a").await, from_c);
    assert_eq!(
        next_signal(b, "b").await,
        from_c,
        "b must not get its own signal"
    );

    // Through the ingest API, to every node.
    let (s, body) = api
        .post(
            "/v1/signal",
            &json!({"channel": CH, "data": {"n": 4}, "from": "backend"}),
        )
        .await;
    assert_eq!(s, 202, "POST /v1/signal: {body}");
    let from_api = json!({"type": "signal", "channel": CH, "from": "backend", "data": {"n": 4}});
    assert_eq!(next_signal(a, "a").await, from_api);
    assert_eq!(next_signal(b, "b").await, from_api);
    assert_eq!(
        next_signal(c, "c").await,
        from_api,
        "c must not get its own signal"
    );

    // The outsider's first signal is the one of its own channel.
    let (s, body) = api
        .post("/v1/signal", &json!({"channel": OTHER, "data": {"n": 5}}))
        .await;
    assert_eq!(s, 202, "POST /v1/signal: {body}");
    let v = next_signal(&mut outsider, "the outsider").await;
    assert_eq!(
        v["channel"], OTHER,
        "a connection not subscribed to {CH} got {v}"
    );

    let h = api.history(CH, &[]).await;
    assert_eq!(
        h,
        json!({"messages": [], "last_seq": 0}),
        "signals are never stored"
    );
}

// ---------------------------------------------------------------------------
// 8. Load balancer and drain
// ---------------------------------------------------------------------------

/// What one client behind nginx saw.
#[derive(Debug, Default)]
struct LbState {
    seqs: Vec<u64>,
    /// `welcome.node` of every connection, in order.
    nodes: Vec<String>,
    disconnects: Vec<Value>,
    closes: Vec<Option<u16>>,
    /// `{"since", "reply"}` of every re-subscribe.
    resubscribes: Vec<Value>,
    error: Option<String>,
}

/// Reads `c` forever; on close 1012 reconnects through `lb_port` and
/// subscribes to `ch` with `since` = the last seq seen (PROTOCOL.md section
/// 6: "reconnect at once, with recovery").
async fn lb_client(
    lb_port: u16,
    token: String,
    ch: &'static str,
    mut c: Client,
    st: Arc<Mutex<LbState>>,
) {
    loop {
        match c.next_event(Duration::from_secs(3600)).await {
            Some(Event::Frame(v)) => {
                let mut s = lock(&st);
                if let Some(seq) = message_seq(&v, ch) {
                    s.seqs.push(seq);
                } else if v["type"] == "disconnect" {
                    s.disconnects.push(v);
                }
            }
            Some(Event::Close(code, reason)) => {
                lock(&st).closes.push(code);
                if code != Some(1012) {
                    lock(&st).error = Some(format!("closed with {code:?} ({reason})"));
                    return;
                }
                let (mut nc, w) = Connect::port(lb_port).token(&token).ready().await;
                let since = lock(&st).seqs.last().copied().unwrap_or(0);
                lock(&st)
                    .nodes
                    .push(w["node"].as_str().unwrap_or_default().to_string());
                let r = nc
                    .call("subscribe", json!({"channel": ch, "since": since}))
                    .await;
                lock(&st)
                    .resubscribes
                    .push(json!({"since": since, "reply": r}));
                c = nc;
            }
            Some(Event::End(e)) => {
                lock(&st).error = Some(format!("ended without a close frame: {e}"));
                return;
            }
            None => {}
        }
    }
}

/// DESIGN.md guarantee 6 behind a load balancer (PROTOCOL.md sections 6-7):
/// nginx spreads 30 clients over three gateways (distinct `welcome.node`);
/// one gateway gets SIGTERM with `--drain-window 2`: each of its clients
/// gets `disconnect` 1012 (reconnect: true) and close 1012, reconnects at
/// once through nginx (which skips the draining node) and subscribes with
/// `since` = its last seq (`recovered: true`), while a publisher keeps
/// publishing through ingest. The drained process exits 0 within the drain
/// window + 5 s; the other clients are never disconnected; every client
/// ends with seq 1..=N, in order, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_drain_and_reconnect() {
    const CH: &str = "chat_lb";
    const CLIENTS: usize = 30;
    const DRAIN: u64 = 2;
    let redis = start_redis().await;
    let mut spec = Spec::new(redis.url(), 3, 1);
    spec.postgres = false;
    spec.gateway_args = strings(&["--drain-window", &DRAIN.to_string()]);
    let mut t = Topology::start(spec).await;
    let _logs = t.logs_on_panic();
    let ports: Vec<u16> = t.gateways.iter().map(|g| g.port).collect();
    let lb = tokio::task::block_in_place(|| Nginx::start(&ports))
        .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
    let api = Api::new(&t.ingests[0]);

    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let token = t.sign(TokenBuilder::new(&format!("lb:{i}")).allow("subscribe", &["chat_*"]));
        let (mut c, w) = Connect::port(lb.port()).token(&token).ready().await;
        let r = c.subscribe(CH).await;
        assert_eq!(r, json!({"channel": CH, "seq": 0}), "subscribe reply");
        let st = Arc::new(Mutex::new(LbState {
            nodes: vec![w["node"].as_str().unwrap_or_default().to_string()],
            ..LbState::default()
        }));
        let task = tokio::spawn(lb_client(lb.port(), token, CH, c, st.clone()));
        clients.push((st, task));
    }
    let nodes: BTreeSet<String> = clients
        .iter()
        .map(|(s, _)| lock(s).nodes[0].clone())
        .collect();
    assert_eq!(
        nodes,
        ["gw-0", "gw-1", "gw-2"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        "nginx round robin must spread {CLIENTS} clients over all three gateways"
    );
    let drained: Vec<usize> = (0..CLIENTS)
        .filter(|i| lock(&clients[*i].0).nodes[0] == "gw-0")
        .collect();
    assert!(!drained.is_empty());

    let mut load = Load::start(std::slice::from_ref(&api), 1, CH, Duration::from_millis(20));
    let wait_all = |min: usize| clients.iter().all(|(s, _)| lock(s).seqs.len() >= min);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !wait_all(3) {
        assert!(
            Instant::now() < deadline,
            "clients did not receive 3 messages within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let term = Instant::now();
    t.gateways[0].signal_term();
    let status = t.gateways[0]
        .wait_exit(Duration::from_secs(DRAIN + 5))
        .await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "gw-0 still running {} s after SIGTERM (drain window {DRAIN} s + 5 s)",
            DRAIN + 5
        )
    });
    assert!(
        status.success(),
        "gw-0 exit status after the drain: {status}"
    );
    eprintln!("gw-0 exited {status} {:?} after SIGTERM", term.elapsed());

    // Every drained client reconnected elsewhere and recovered.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for (_, task) in &mut clients {
            propagate_panic(task).await;
        }
        let waiting: Vec<usize> = drained
            .iter()
            .copied()
            .filter(|i| lock(&clients[*i].0).resubscribes.is_empty())
            .collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clients {waiting:?} of gw-0 did not reconnect within 15 s: {:?}",
            waiting
                .iter()
                .map(|i| format!("{:?}", lock(&clients[*i].0)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, (st, _)) in clients.iter().enumerate() {
        let s = lock(st);
        assert!(s.error.is_none(), "client {i}: {s:?}");
        if !drained.contains(&i) {
            assert!(
                s.closes.is_empty() && s.disconnects.is_empty(),
                "client {i} of {} was disconnected: {s:?}",
                s.nodes[0]
            );
            continue;
        }
        assert_eq!(s.closes, vec![Some(1012)], "client {i}: {s:?}");
        assert_eq!(
            s.disconnects.len(),
            1,
            "client {i}: one disconnect frame: {s:?}"
        );
        let d = &s.disconnects[0];
        assert_eq!(d["code"], 1012, "client {i}: {d}");
        assert_eq!(
            d["reconnect"], true,
            "client {i}: 1012 means reconnect at once: {d}"
        );
        assert!(d["reason"].is_string(), "client {i}: {d}");
        assert_eq!(s.nodes.len(), 2, "client {i}: {s:?}");
        assert_ne!(
            s.nodes[1], "gw-0",
            "client {i} reconnected to the drained node: {s:?}"
        );
        let r = &s.resubscribes[0];
        let since = r["since"].as_u64().expect("since");
        let res = &r["reply"]["result"];
        assert_eq!(res["channel"], CH, "client {i}: {r}");
        assert_eq!(res["recovered"], true, "client {i}: {r}");
        let seq = res["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("client {i}: {r}"));
        assert!(seq >= since, "client {i}: {r}");
        assert_eq!(
            res["replayed"],
            json!(seq - since),
            "client {i}: replayed = seq - since: {r}"
        );
    }

    let acked = load.count(|_| true);
    load.wait_acks(
        "after the reconnections",
        acked + 20,
        |_| true,
        Duration::from_secs(20),
    )
    .await;
    let (acks, refused) = load.stop().await;
    assert!(refused.is_empty(), "publishes refused: {refused:?}");
    let last = last_seq(&api, CH).await;
    check_acks(&acks, last);

    let deadline = Instant::now() + SETTLE;
    loop {
        for (_, task) in &mut clients {
            propagate_panic(task).await;
        }
        let behind: Vec<String> = clients
            .iter()
            .enumerate()
            .filter(|(_, (s, _))| !lock(s).seqs.iter().any(|q| *q >= last))
            .map(|(i, (s, _))| format!("client {i}: {}", describe(&lock(s).seqs, last)))
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within {SETTLE:?} not every client reached seq {last}:\n{}",
            behind.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, (st, _)) in clients.iter().enumerate() {
        let s = lock(st);
        assert!(
            s.seqs == (1..=last).collect::<Vec<_>>(),
            "client {i} ({:?}): expected seq 1..={last}, each once, in order; got {}",
            s.nodes,
            describe(&s.seqs, last)
        );
    }
    drop(lb);
}

// ---------------------------------------------------------------------------
// 9. Ingest unreachable
// ---------------------------------------------------------------------------

/// PROTOCOL.md section 5 (`unavailable`: "ingest or bus down; retry") and
/// "a bad request never closes the connection": a client `publish` on a
/// gateway whose ingest was killed, and on a gateway whose `--ingest-url`
/// points where nothing listens, gets an `unavailable` error reply; the
/// connection stays open (ping/pong, and the subscription still delivers);
/// once the ingest is back the same connection publishes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_without_ingest_is_unavailable() {
    const CH: &str = "chat_noingest";
    let redis = start_redis().await;
    let mut spec = Spec::new(redis.url(), 1, 1);
    spec.postgres = false;
    let mut t = Topology::start(spec).await;
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let bad = HeraldProcess::start(t.gateway_options("gw-bad", &nowhere)).await;
    // Declared after every process: dropped (and printed) before their dirs go.
    let mut logs = t.logs_on_panic();
    logs.add("gw-bad", &bad);

    let tok = t.sign(
        TokenBuilder::new("user:p")
            .channels(&[CH])
            .allow("publish", &["chat_*"]),
    );
    let (mut c, _) = Connect::new(&t.gateways[0]).token(&tok).ready().await;
    let r = c.publish(CH, json!({"n": 1})).await;
    assert_eq!(r["seq"], 1, "{r}");
    let m = c
        .recv_until("message 1", |v| message_seq(v, CH).is_some())
        .await;
    assert_eq!(m["seq"], 1, "{m}");

    t.ingests[0].kill();
    for n in [2, 3] {
        let code = c
            .call_err("publish", json!({"channel": CH, "data": {"n": n}}))
            .await;
        assert_eq!(code, "unavailable", "publish with the ingest down");
        c.ping().await;
    }

    t.ingests[0].restart().await;
    let r = c.publish(CH, json!({"n": 4})).await;
    assert_eq!(r["seq"], 2, "the refused publishes stored nothing: {r}");
    let m = c
        .recv_until("message 2", |v| message_seq(v, CH).is_some())
        .await;
    assert_eq!(m["seq"], 2, "{m}");
    assert_eq!(m["data"], json!({"n": 4}), "{m}");

    let tok = t.sign(TokenBuilder::new("user:q").allow("publish", &["chat_*"]));
    let (mut q, w) = Connect::new(&bad).token(&tok).ready().await;
    assert_eq!(w["node"], "gw-bad");
    for n in [1, 2] {
        let code = q
            .call_err("publish", json!({"channel": CH, "data": {"n": n}}))
            .await;
        assert_eq!(
            code, "unavailable",
            "publish through a gateway whose ingest URL is dead"
        );
        q.ping().await;
    }
}
