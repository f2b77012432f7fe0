//! The Redis bus and presence against real, private servers (DESIGN.md "Real
//! parts in tests"): the conformance suites unchanged on one Redis and on a
//! 3-master Redis Cluster, plus the faults the Redis bus exists to survive.
//!
//! Guarantees checked: 3 (no silent loss: after a Redis restart, a cluster
//! failover or a half-open link (a [`Proxy`] frozen or partitioned between
//! the bus and Redis) the attachment re-subscribes by itself and reports
//! `on_reconnect`, so the gateway catches up from history; the publishing
//! connection is rebuilt too), 5 (a payload
//! published on one channel never reaches another's subscribers; bad bus
//! input never breaks delivery) and 7 (presence expires, never stored).
//!
//! Every wait is a condition with a deadline; every server is private, on
//! 127.0.0.1, killed by PID when its handle drops. A missing `redis-server`
//! or `redis-cli` fails the test with what to install.

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a test failure

use herald_bus::conformance::{self, Recorder};
use herald_bus::redis::{RedisBus, RedisBusConfig, RedisPresence};
use herald_bus::{Bus, BusSubscriber, Presence};
use herald_protocol::bus::Envelope;
use herald_protocol::server::ClientInfo;
use herald_protocol::{ChannelName, JsonData};
use herald_testkit::cluster::RedisCluster;
use herald_testkit::proxy::Proxy;
use herald_testkit::{RedisServer, eventually};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PREFIX: &str = "herald:";

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn msg(c: &str, seq: u64) -> Envelope {
    Envelope::message(
        ch(c),
        seq,
        format!("m{seq}"),
        1_700_000_000_000,
        None,
        &JsonData::from_value(&serde_json::json!({ "n": seq })),
    )
}

fn cfg(url: &str) -> RedisBusConfig {
    RedisBusConfig {
        url: url.to_owned(),
        prefix: PREFIX.to_owned(),
        ping_interval: Duration::from_millis(500),
        ..RedisBusConfig::default()
    }
}

fn redis_server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("cannot start a private redis-server: {e}"))
}

fn redis_cluster(masters: usize, replicas: usize) -> RedisCluster {
    RedisCluster::start(masters, replicas)
        .unwrap_or_else(|e| panic!("cannot start a private Redis Cluster: {e}"))
}

async fn bus(url: &str) -> RedisBus {
    RedisBus::connect(cfg(url))
        .await
        .expect("connect the redis bus")
}

fn got(rec: &Recorder) -> Vec<Envelope> {
    rec.got.lock().unwrap().clone()
}

fn reconnects(rec: &Recorder) -> u32 {
    *rec.reconnects.lock().unwrap()
}

fn seqs(rec: &Recorder) -> Vec<u64> {
    got(rec).iter().filter_map(|e| e.seq).collect()
}

/// Waits up to `within` for `rec` to report an `on_reconnect`.
async fn reconnected(rec: &Recorder, within: Duration, what: &str) {
    eventually(within, what, || {
        let r = reconnects(rec);
        async move { r >= 1 }
    })
    .await;
}

/// Waits up to 10 s for the envelope with `seq` to reach `rec`.
async fn delivered(rec: &Recorder, seq: u64, what: &str) {
    eventually(Duration::from_secs(10), what, || {
        let s = seqs(rec);
        async move { s.contains(&seq) }
    })
    .await;
}

/// Publishes `c` envelopes with rising seqs from `from` on `bus` until one
/// goes through (deadline `within`): failures are expected while its
/// connection is being rebuilt. The seq of the one that went through.
async fn publish_until_ok(bus: &RedisBus, c: &str, from: u64, within: Duration, what: &str) -> u64 {
    let seq = AtomicU64::new(from);
    let last = AtomicU64::new(0);
    eventually(within, what, || {
        let s = seq.fetch_add(1, Ordering::SeqCst);
        let last = &last;
        async move {
            let ok = bus.publish(&msg(c, s)).await.is_ok();
            if ok {
                last.store(s, Ordering::SeqCst);
            }
            ok
        }
    })
    .await;
    last.load(Ordering::SeqCst)
}

/// A plain connection for what herald never does (raw PUBLISH, PUBSUB).
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Subscribers Redis counts on a channel (`PUBSUB NUMSUB`).
async fn numsub(conn: &mut redis::aio::MultiplexedConnection, redis_channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(redis_channel)
        .query_async(conn)
        .await
        .unwrap();
    n
}

fn client(conn: &str) -> ClientInfo {
    ClientInfo {
        sub: format!("u:{conn}"),
        conn: conn.to_owned(),
        info: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_conformance() {
    let server = redis_server();
    let url = server.url();
    // Each call is a new RedisBus on the same Redis: a separate node.
    conformance::run_bus(|| {
        let url = url.clone();
        async move { Arc::new(bus(&url).await) as Arc<dyn Bus> }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_presence_conformance() {
    let server = redis_server();
    let url = server.url();
    conformance::run_presence(|| {
        let url = url.clone();
        async move {
            Arc::new(
                RedisPresence::connect(&url, PREFIX, Duration::from_secs(30))
                    .await
                    .unwrap(),
            ) as Arc<dyn Presence>
        }
    })
    .await;
}

/// Guarantee 3: Redis killed and restarted on the same port while a channel
/// is subscribed. The attachment re-subscribes by itself, reports
/// `on_reconnect`, and envelopes published afterwards arrive again without
/// any new subscribe call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_resubscribes_and_reports_reconnect() {
    let mut server = redis_server();
    let bus = bus(&server.url()).await;
    let rec = Arc::new(Recorder::default());
    let sub = bus.attach(rec.clone());
    sub.subscribe(&[ch("rs_a")]).await.unwrap();
    bus.publish(&msg("rs_a", 1)).await.unwrap();
    eventually(Duration::from_secs(10), "the first envelope", || {
        let n = got(&rec).len();
        async move { n == 1 }
    })
    .await;

    server.kill();
    server
        .restart()
        .expect("restart redis-server on the same port");

    reconnected(
        &rec,
        Duration::from_secs(20),
        "on_reconnect after the restart",
    )
    .await;
    // The attachment's subscription is back on the new server.
    let mut rc = raw(&server.url()).await;
    assert_eq!(numsub(&mut rc, "herald:rs_a").await, 1);

    // The shared publish connection reconnects on its first failure: retry
    // until a publish goes through, then that envelope must arrive.
    let last = publish_until_ok(
        &bus,
        "rs_a",
        2,
        Duration::from_secs(20),
        "a publish after the restart succeeds",
    )
    .await;
    delivered(&rec, last, "the envelope published after the restart").await;
    drop(sub);
}

/// Unsubscribing the last channel removes the subscription from Redis
/// (nothing is sent to this node any more); dropping the attachment closes
/// its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_of_last_interest_stops_delivery() {
    let server = redis_server();
    let bus = bus(&server.url()).await;
    let mut rc = raw(&server.url()).await;
    let rec = Arc::new(Recorder::default());
    let sub = bus.attach(rec.clone());

    sub.subscribe(&[ch("ul_a")]).await.unwrap();
    assert_eq!(numsub(&mut rc, "herald:ul_a").await, 1);
    bus.publish(&msg("ul_a", 1)).await.unwrap();
    eventually(Duration::from_secs(10), "ul_a 1", || {
        let n = got(&rec).len();
        async move { n == 1 }
    })
    .await;

    sub.unsubscribe(&[ch("ul_a")]).await.unwrap();
    assert_eq!(
        numsub(&mut rc, "herald:ul_a").await,
        0,
        "Redis still sends ul_a here"
    );
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("herald:ul_a")
        .arg(msg("ul_a", 2).encode())
        .query_async(&mut rc)
        .await
        .unwrap();
    assert_eq!(receivers, 0);
    // A marker on the same attachment: once it arrives, ul_a 2 would have too.
    sub.subscribe(&[ch("ul_marker")]).await.unwrap();
    bus.publish(&msg("ul_marker", 1)).await.unwrap();
    eventually(Duration::from_secs(10), "the marker", || {
        let n = got(&rec).len();
        async move { n >= 2 }
    })
    .await;
    let chans: Vec<String> = got(&rec).iter().map(|e| e.ch.as_str().to_owned()).collect();
    assert_eq!(chans, ["ul_a", "ul_marker"]);

    drop(sub);
    eventually(
        Duration::from_secs(10),
        "the dropped attachment's connection closes",
        || {
            let mut rc = rc.clone();
            async move { numsub(&mut rc, "herald:ul_marker").await == 0 }
        },
    )
    .await;
}

/// Guarantee 5: garbage, an unknown version, a message without seq, and an
/// envelope of another channel published on this one (raw PUBLISH, as a bad
/// client of Redis could) are dropped; the next valid envelope arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_dropped_and_delivery_goes_on() {
    let server = redis_server();
    let bus = bus(&server.url()).await;
    let mut rc = raw(&server.url()).await;
    let rec = Arc::new(Recorder::default());
    let sub = bus.attach(rec.clone());
    sub.subscribe(&[ch("mf_a"), ch("mf_b")]).await.unwrap();

    let mut newer = msg("mf_a", 9);
    newer.v = 2;
    let mut no_seq = msg("mf_a", 9);
    no_seq.seq = None;
    let junk: Vec<Vec<u8>> = vec![
        b"not msgpack at all".to_vec(),
        vec![0xc1],
        Vec::new(),
        newer.encode(),
        no_seq.encode(),
        msg("mf_b", 9).encode(), // mf_b's envelope on mf_a's Redis channel
    ];
    for payload in junk {
        let n: i64 = redis::cmd("PUBLISH")
            .arg("herald:mf_a")
            .arg(payload)
            .query_async(&mut rc)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    // Published after the junk (each raw PUBLISH was answered first), so
    // once it arrives the junk has been handled.
    bus.publish(&msg("mf_a", 1)).await.unwrap();
    eventually(Duration::from_secs(10), "the valid envelope", || {
        let n = got(&rec).len();
        async move { n >= 1 }
    })
    .await;
    assert_eq!(got(&rec), vec![msg("mf_a", 1)]);
    bus.publish(&msg("mf_b", 2)).await.unwrap();
    eventually(Duration::from_secs(10), "delivery goes on", || {
        let n = got(&rec).len();
        async move { n >= 2 }
    })
    .await;
    assert_eq!(got(&rec), vec![msg("mf_a", 1), msg("mf_b", 2)]);
}

/// Entries expire `ttl` after their last join/refresh: `expire` returns each
/// once, `list` stops showing it; `refresh` extends live entries and reports
/// (never resurrects) gone ones.
async fn presence_expiry(p: &RedisPresence) {
    let c = ch("exp_p");
    let a = client("c_a");
    p.join(&c, &a).await.unwrap();
    assert_eq!(p.list(&c).await.unwrap(), vec![a.clone()]);
    assert!(
        p.expire(&c).await.unwrap().is_empty(),
        "nothing expired yet"
    );

    let expired = Arc::new(Mutex::new(Vec::new()));
    eventually(Duration::from_secs(10), "expire returns the entry", || {
        let (expired, c) = (expired.clone(), c.clone());
        async move {
            let got = p.expire(&c).await.unwrap();
            let mut e = expired.lock().unwrap();
            e.extend(got);
            !e.is_empty()
        }
    })
    .await;
    assert_eq!(*expired.lock().unwrap(), vec![a.clone()]);
    assert!(p.list(&c).await.unwrap().is_empty());
    assert!(p.expire(&c).await.unwrap().is_empty(), "returned once");

    // refresh never writes back an entry that is gone (it left or expired
    // after the caller's snapshot): it reports it instead.
    let mut missing = p
        .refresh(&[(c.clone(), a.clone()), (ch("exp_q"), client("c_b"))])
        .await
        .unwrap();
    missing.sort_by(|x, y| x.1.conn.cmp(&y.1.conn));
    assert_eq!(
        missing,
        vec![(c.clone(), a.clone()), (ch("exp_q"), client("c_b"))]
    );
    assert!(p.list(&c).await.unwrap().is_empty());
    assert!(p.list(&ch("exp_q")).await.unwrap().is_empty());

    // refresh keeps a live entry alive past its ttl (1 s here): refreshed
    // every 300 ms for 2.5 s, it stays listed and is never reported missing.
    p.join(&c, &a).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < until {
        assert!(
            p.refresh(&[(c.clone(), a.clone())])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            p.expire(&c).await.unwrap().is_empty(),
            "refreshed entry expired"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(p.list(&c).await.unwrap(), vec![a.clone()]);

    // Two sweeps racing (two gateways): the entry comes out of exactly one.
    eventually(
        Duration::from_secs(10),
        "the refreshed entry's expiry passes",
        || async { p.list(&c).await.unwrap().is_empty() },
    )
    .await;
    let (x, y) = tokio::join!(p.expire(&c), p.expire(&c));
    assert_eq!(x.unwrap().len() + y.unwrap().len(), 1);

    p.join(&c, &a).await.unwrap();
    p.leave(&c, "c_a").await.unwrap();
    assert!(p.list(&c).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_entries_expire() {
    let server = redis_server();
    let p = RedisPresence::connect(&server.url(), PREFIX, Duration::from_secs(1))
        .await
        .unwrap();
    presence_expiry(&p).await;
}

/// The suites unchanged on a 3-master cluster: sharded pub/sub, presence
/// keys hash-tagged into one slot (the scripts would fail with CROSSSLOT
/// otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_conformance() {
    let cluster = redis_cluster(3, 0);
    let seeds = cluster.seeds();
    let probe = bus(&seeds).await;
    assert!(probe.is_cluster());
    conformance::run_bus(|| {
        let seeds = seeds.clone();
        async move { Arc::new(bus(&seeds).await) as Arc<dyn Bus> }
    })
    .await;
    conformance::run_presence(|| {
        let seeds = seeds.clone();
        async move {
            Arc::new(
                RedisPresence::connect(&seeds, PREFIX, Duration::from_secs(30))
                    .await
                    .unwrap(),
            ) as Arc<dyn Presence>
        }
    })
    .await;
    let p = RedisPresence::connect(&seeds, PREFIX, Duration::from_secs(1))
        .await
        .unwrap();
    presence_expiry(&p).await;
}

/// Guarantee 3 on a cluster: the master of the channel's slot is SIGKILLed
/// while envelopes are published continuously. Once a replica took over,
/// the attachment re-subscribes on it by itself and reports `on_reconnect`;
/// from then on every envelope whose publish succeeded is delivered.
/// (Publishes that failed, or that landed before the re-subscribe, may be
/// lost: the gateway repairs those from history after `on_reconnect`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_resubscribes() {
    let mut cluster = redis_cluster(3, 1);
    let seeds = cluster.seeds();
    let bus = Arc::new(bus(&seeds).await);
    let rec = Arc::new(Recorder::default());
    let sub = bus.attach(rec.clone());
    sub.subscribe(&[ch("fo_a")]).await.unwrap();

    // The publisher: seq numbers in order; remembers which publishes succeeded.
    let next = Arc::new(AtomicU64::new(1));
    let ok_seqs = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (bus, next, ok_seqs, stop) = (bus.clone(), next.clone(), ok_seqs.clone(), stop.clone());
        async move {
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::SeqCst) {
                pace.tick().await;
                let seq = next.fetch_add(1, Ordering::SeqCst);
                if bus.publish(&msg("fo_a", seq)).await.is_ok() {
                    ok_seqs.lock().unwrap().push(seq);
                }
            }
        }
    });
    eventually(
        Duration::from_secs(10),
        "delivery before the failover",
        || {
            let n = got(&rec).len();
            async move { n >= 5 }
        },
    )
    .await;

    let killed = cluster.kill_master_of("herald:fo_a");
    eventually(
        Duration::from_secs(30),
        "a replica serves the slot of herald:fo_a",
        || {
            let now = cluster.master_of("herald:fo_a");
            async move { matches!(now, Ok(Some(p)) if p != killed) }
        },
    )
    .await;
    reconnected(
        &rec,
        Duration::from_secs(30),
        "on_reconnect after the failover",
    )
    .await;

    // Every publish from here on that succeeds must be delivered.
    let from = next.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(30),
        "20 publishes succeed after the failover",
        || {
            let n = ok_seqs
                .lock()
                .unwrap()
                .iter()
                .filter(|s| **s >= from)
                .count();
            async move { n >= 20 }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    publisher.await.unwrap();
    let want: Vec<u64> = ok_seqs
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|s| *s >= from)
        .collect();
    eventually(
        Duration::from_secs(10),
        "every successful publish after on_reconnect arrives",
        || {
            let have = seqs(&rec);
            let all = want.iter().all(|s| have.contains(s));
            async move { all }
        },
    )
    .await;
    // In order, once each (one publishing connection, one shard). A publish
    // that timed out may still have been delivered, so `after` may hold more.
    let after: Vec<u64> = seqs(&rec).into_iter().filter(|s| *s >= from).collect();
    assert!(
        after.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {after:?}"
    );
}

/// Publishes `ch` envelopes with rising seqs from `publisher` until `rec`
/// received one of them at or above `from` (deadline `within`).
async fn publish_until_delivered(
    publisher: &RedisBus,
    rec: &Recorder,
    c: &str,
    from: u64,
    within: Duration,
    what: &str,
) {
    let seq = AtomicU64::new(from);
    eventually(within, what, || {
        let s = seq.fetch_add(1, Ordering::SeqCst);
        async move {
            // Failures are expected while a connection is being rebuilt.
            let _ = publisher.publish(&msg(c, s)).await;
            seqs(rec).iter().any(|got| *got >= from)
        }
    })
    .await;
}

/// Which bus of a [`ProxiedLink`] reaches Redis through its proxy, so that
/// the test's fault breaks its connection.
enum ThroughProxy {
    /// The subscribing bus (its attachment's connection); the publisher is
    /// connected directly.
    Subscriber,
    /// The publishing bus (its shared command connection); the subscriber
    /// is connected directly.
    Publisher,
}

/// A link to break: a private Redis, a [`Proxy`] in front of it, a bus
/// through the proxy and one connected directly, and `rec`'s attachment
/// subscribed to one channel, its envelope seq 1 delivered through the
/// proxied link before any fault.
struct ProxiedLink {
    // Fields drop in this order: the attachment first, the server last.
    _sub: Arc<dyn BusSubscriber>,
    rec: Arc<Recorder>,
    direct: RedisBus,
    via_proxy: RedisBus,
    proxy: Proxy,
    _server: RedisServer,
}

impl ProxiedLink {
    /// Subscribes to `c` on one bus, publishes seq 1 on the other and waits
    /// (10 s) for its delivery, named "delivery before the `fault`".
    async fn start(through: ThroughProxy, c: &str, fault: &str) -> ProxiedLink {
        let server = redis_server();
        let proxy = Proxy::start(server.port()).unwrap();
        let via_proxy = bus(&proxy.redis_url()).await;
        let direct = bus(&server.url()).await;
        let rec = Arc::new(Recorder::default());
        let (subscriber, publisher) = match through {
            ThroughProxy::Subscriber => (&via_proxy, &direct),
            ThroughProxy::Publisher => (&direct, &via_proxy),
        };
        let sub = subscriber.attach(rec.clone());
        sub.subscribe(&[ch(c)]).await.unwrap();
        publisher.publish(&msg(c, 1)).await.unwrap();
        eventually(
            Duration::from_secs(10),
            &format!("delivery before the {fault}"),
            || {
                let s = seqs(&rec);
                async move { s == [1] }
            },
        )
        .await;
        ProxiedLink {
            _sub: sub,
            rec,
            direct,
            via_proxy,
            proxy,
            _server: server,
        }
    }
}

/// Guarantee 3 on a half-open link (a Redis host gone without RST): the
/// subscriber connection goes silent, both ways, and stays open. Failed
/// PINGs make the attachment drop it, connect again, re-subscribe its
/// wanted set and report `on_reconnect`; an envelope published after the
/// freeze (directly on Redis, by another node) is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_subscriber_connection_is_rebuilt() {
    let t = ProxiedLink::start(ThroughProxy::Subscriber, "hf_a", "freeze").await;
    assert_eq!(reconnects(&t.rec), 0);
    let before = t.proxy.connections();

    t.proxy.freeze();
    publish_until_delivered(
        &t.direct,
        &t.rec,
        "hf_a",
        2,
        Duration::from_secs(20),
        "an envelope published after the freeze",
    )
    .await;
    reconnected(
        &t.rec,
        Duration::from_secs(10),
        "on_reconnect after the freeze",
    )
    .await;
    assert!(
        t.proxy.connections() > before,
        "delivery resumed without a new connection"
    );
}

/// The shared publishing connection on a half-open link: publishes fail,
/// each within its bound (never a hang), until consecutive failures make
/// the bus drop the connection and build a new one; then a publish goes
/// through and a node connected directly to Redis receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_command_connection_is_rebuilt() {
    let t = ProxiedLink::start(ThroughProxy::Publisher, "hc_a", "freeze").await;
    let before = t.proxy.connections();

    t.proxy.freeze();
    // Issued at once on the frozen connection: it fails within its bound.
    let first = tokio::time::timeout(
        Duration::from_secs(15),
        t.via_proxy.publish(&msg("hc_a", 2)),
    )
    .await
    .expect("a publish on a frozen connection must not hang");
    assert!(first.is_err(), "a publish on a frozen connection succeeded");

    let last = publish_until_ok(
        &t.via_proxy,
        "hc_a",
        3,
        Duration::from_secs(20),
        "a publish through a rebuilt connection succeeds",
    )
    .await;
    delivered(
        &t.rec,
        last,
        "the envelope published through the rebuilt connection",
    )
    .await;
    assert!(t.proxy.connections() > before);
    // Presence shares the command connection: it works again too.
    let p = t.via_proxy.presence(Duration::from_secs(30));
    p.join(&ch("hc_a"), &client("c_1")).await.unwrap();
    assert_eq!(p.list(&ch("hc_a")).await.unwrap(), vec![client("c_1")]);
}

/// A partition (every connection, old and new, silent) and its heal: the
/// attachment keeps trying while partitioned and, once healed, connects,
/// re-subscribes and reports `on_reconnect`; delivery resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_subscriber_resumes_after_heal() {
    let t = ProxiedLink::start(ThroughProxy::Subscriber, "hp_a", "partition").await;
    let before = t.proxy.connections();

    t.proxy.partition();
    eventually(
        Duration::from_secs(20),
        "a reconnect attempt during the partition",
        || {
            let n = t.proxy.connections();
            async move { n > before }
        },
    )
    .await;
    // Nothing gets through meanwhile.
    t.direct.publish(&msg("hp_a", 2)).await.unwrap();
    t.proxy.heal();
    publish_until_delivered(
        &t.direct,
        &t.rec,
        "hp_a",
        3,
        Duration::from_secs(30),
        "an envelope published after the heal",
    )
    .await;
    reconnected(
        &t.rec,
        Duration::from_secs(10),
        "on_reconnect after the heal",
    )
    .await;
    assert!(!seqs(&t.rec).contains(&2), "delivered through a partition");
}
