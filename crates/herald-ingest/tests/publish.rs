//! The publish pipeline (commit, then publish, then answer) against real,
//! private servers: PostgreSQL or SQLite for the store, `redis-server` for
//! the bus, a [`Proxy`] between ingest and Redis for the faults. An
//! observer (a second [`RedisBus`], connected directly) records what Redis
//! delivers, in the order Redis ran the PUBLISHes.
//!
//! Guarantees checked: 1 (every publish is answered, committed, also while
//! the bus fails), 2 (this ingest's PUBLISHes of a channel go out in seq
//! order: a commit batch is one pipeline, batches in commit order) and 3
//! (a message whose bus publish failed mid-batch is still delivered: the
//! publisher's retry with its key republishes it from the store).

#![allow(clippy::unwrap_used)] // test code: a failure here is a test failure

use herald_bus::conformance::Recorder;
use herald_bus::local::LocalPresence;
use herald_bus::redis::{RedisBus, RedisBusConfig};
use herald_bus::{Bus, BusSubscriber};
use herald_ingest::{BUS_PUBLISH_DEADLINE, IngestConfig, IngestService, PublishInput};
use herald_protocol::{ChannelName, JsonData};
use herald_store::{PgStore, SqliteStore, Store, StoreConfig};
use herald_testkit::proxy::Proxy;
use herald_testkit::{RedisServer, eventually, test_database};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CHANNELS: [&str; 4] = ["chat_a", "chat_b", "chat_c", "dashboard_1"];

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn redis_server() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("cannot start a private redis-server: {e}"))
}

async fn redis_bus(url: &str) -> RedisBus {
    RedisBus::connect(RedisBusConfig {
        url: url.to_owned(),
        ping_interval: Duration::from_millis(200),
        ..RedisBusConfig::default()
    })
    .await
    .expect("connect the redis bus")
}

fn ingest(store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Arc<IngestService> {
    IngestService::new(
        IngestConfig {
            api_key: "test-key".into(),
            ..IngestConfig::default()
        },
        store,
        bus,
        Arc::new(LocalPresence::new()),
    )
}

/// Publish `j` of a run: one channel, or two for every fourth; keyed when
/// `keyed` (so a retry is a duplicate).
fn input(j: usize, keyed: bool) -> PublishInput {
    let mut channels = vec![ch(CHANNELS[j % 4])];
    if j % 4 == 3 {
        channels.push(ch(CHANNELS[(j + 1) % 4]));
    }
    PublishInput {
        channels,
        data: JsonData::from_value(&serde_json::json!({ "j": j })),
        key: keyed.then(|| format!("k-{j}")),
        from: Some("tester".into()),
        publisher: "api:test".into(),
    }
}

/// The observer's own channel: what it receives there after publishing it
/// follows everything Redis ran before (one Redis runs one command at a
/// time and writes to a subscriber in that order).
const FENCE: &str = "fence";

/// A direct subscriber of every test channel.
struct Observer {
    rec: Arc<Recorder>,
    _sub: Arc<dyn BusSubscriber>,
    bus: RedisBus,
    fences: AtomicUsize,
}

impl Observer {
    async fn start(url: &str) -> Observer {
        let bus = redis_bus(url).await;
        let rec = Arc::new(Recorder::default());
        let sub = bus.attach(rec.clone());
        let chans: Vec<ChannelName> = CHANNELS.iter().chain([&FENCE]).map(|c| ch(c)).collect();
        sub.subscribe(&chans).await.expect("subscribe");
        Observer {
            rec,
            _sub: sub,
            bus,
            fences: AtomicUsize::new(0),
        }
    }

    /// Returns once the observer received everything Redis ran so far.
    async fn fence(&self) {
        let n = u64::try_from(self.fences.fetch_add(1, Ordering::SeqCst) + 1).unwrap();
        let env = herald_protocol::bus::Envelope::message(
            ch(FENCE),
            n,
            format!("fence-{n}"),
            0,
            None,
            &JsonData::from_value(&serde_json::json!(null)),
        );
        self.bus.publish(&env).await.expect("publish the fence");
        eventually(Duration::from_secs(10), "the fence comes back", || {
            let back = self
                .rec
                .got
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.ch.as_str() == FENCE && e.seq == Some(n));
            async move { back }
        })
        .await;
    }

    /// (channel, seq) of the test channels, in delivery order.
    fn got(&self) -> Vec<(String, u64)> {
        self.rec
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.ch.as_str() != FENCE)
            .map(|e| (e.ch.as_str().to_owned(), e.seq.unwrap()))
            .collect()
    }
}

/// Runs `tasks` × `each` publishes at once; returns the answers by `j`.
async fn publish_all(
    svc: &Arc<IngestService>,
    tasks: usize,
    each: usize,
    keyed: bool,
    answered: &Arc<AtomicUsize>,
) -> BTreeMap<usize, herald_store::Appended> {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (svc, answered) = (svc.clone(), answered.clone());
        set.spawn(async move {
            let mut got = Vec::new();
            for i in 0..each {
                let j = t * each + i;
                let a = svc.publish(input(j, keyed)).await;
                let a = a.unwrap_or_else(|e| panic!("publish {j}: {e}"));
                answered.fetch_add(1, Ordering::SeqCst);
                got.push((j, a));
            }
            got
        });
    }
    let mut all = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

/// Per channel: the seqs the answers report, sorted.
fn expected(answers: &BTreeMap<usize, herald_store::Appended>) -> BTreeMap<String, Vec<u64>> {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for a in answers.values() {
        for (c, s) in &a.seqs {
            by.entry(c.as_str().to_owned()).or_default().push(*s);
        }
    }
    for seqs in by.values_mut() {
        seqs.sort_unstable();
    }
    by
}

/// 640 publishes from 32 tasks over 4 channels (every fourth on two): the
/// observer receives each channel's messages exactly in seq order, 1..=n.
/// Before the commit hand-off, the tasks of one commit batch each sent
/// their own PUBLISH, in the order the scheduler woke them (the last one
/// answered first, tokio's LIFO slot): seq 40 could reach Redis before 39.
async fn publishes_reach_redis_in_seq_order(store: Arc<dyn Store>) {
    let redis = redis_server();
    let observer = Observer::start(&redis.url()).await;
    let svc = ingest(store, Arc::new(redis_bus(&redis.url()).await));
    let answers = publish_all(&svc, 32, 20, false, &Arc::new(AtomicUsize::new(0))).await;
    let want = expected(&answers);
    let total: usize = want.values().map(Vec::len).sum();
    // Every answer came after its PUBLISH ran.
    observer.fence().await;
    let got = observer.got();
    assert_eq!(got.len(), total, "each message once");
    for (c, seqs) in &want {
        let n = u64::try_from(seqs.len()).unwrap();
        assert_eq!(seqs, &(1..=n).collect::<Vec<_>>(), "{c}: answered seqs");
        let order: Vec<u64> = got
            .iter()
            .filter(|(g, _)| g == c)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            order, *seqs,
            "{c}: Redis must run this ingest's PUBLISHes in seq order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_redis_in_seq_order_postgres() {
    let db = test_database().await;
    let store = PgStore::open(db.url(), StoreConfig::default())
        .await
        .unwrap();
    publishes_reach_redis_in_seq_order(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_redis_in_seq_order_sqlite() {
    let dir = herald_testkit::temp_dir();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(path.to_str().unwrap(), StoreConfig::default())
        .await
        .unwrap();
    publishes_reach_redis_in_seq_order(Arc::new(store)).await;
}

/// Ingest's Redis link goes down mid-run (a [`Proxy`] refusing
/// connections after a third of 480 keyed publishes were answered, healed
/// once 100 more were answered during the outage): every publish is still
/// answered (committed), some of them unpublished (the failure really
/// happened mid-batch); what did reach Redis is still in seq order per
/// channel; and the publishers' retries with their keys, once the link is
/// back, republish what was lost from the store, so in the end the
/// observer has every message (DESIGN.md guarantee 3, the path of
/// reliability.rs item 4b).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_mid_batch_loses_no_message() {
    const TASKS: usize = 16;
    const EACH: usize = 30;
    let db = test_database().await;
    let store = PgStore::open(db.url(), StoreConfig::default())
        .await
        .unwrap();
    let redis = redis_server();
    let proxy = Proxy::start(redis.port()).unwrap();
    let observer = Observer::start(&redis.url()).await;
    let svc = ingest(
        Arc::new(store),
        Arc::new(redis_bus(&proxy.redis_url()).await),
    );

    let answered = Arc::new(AtomicUsize::new(0));
    let faults = {
        let answered = answered.clone();
        async move {
            let wait_for = |n: usize| {
                let answered = answered.clone();
                async move {
                    eventually(Duration::from_secs(60), "publishes answered", || {
                        let a = answered.load(Ordering::SeqCst);
                        async move { a >= n }
                    })
                    .await;
                }
            };
            wait_for(TASKS * EACH / 3).await;
            proxy.down();
            let at_down = answered.load(Ordering::SeqCst);
            wait_for(at_down + 100).await;
            proxy.heal();
            proxy
        }
    };
    let (answers, proxy) = tokio::join!(publish_all(&svc, TASKS, EACH, true, &answered), faults);
    assert_eq!(answers.len(), TASKS * EACH, "every publish answered");
    let want = expected(&answers);

    // What got through kept its order per channel.
    observer.fence().await;
    let first = observer.got();
    for c in want.keys() {
        let order: Vec<u64> = first
            .iter()
            .filter(|(g, _)| g == c)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{c}: seq order on Redis despite the failure: {order:?}"
        );
    }
    let seen: BTreeSet<(String, u64)> = first.iter().cloned().collect();
    let lost: Vec<usize> = answers
        .iter()
        .filter(|(_, a)| {
            a.seqs
                .iter()
                .any(|(c, s)| !seen.contains(&(c.as_str().to_owned(), *s)))
        })
        .map(|(j, _)| *j)
        .collect();
    assert!(
        !lost.is_empty(),
        "the outage cost no publish: the test did not fail Redis mid-batch"
    );

    // The publishers retry (same key): duplicates, republished from the
    // store once the link is back (the bus connection is rebuilt first).
    eventually(
        Duration::from_secs(20),
        "ingest's Redis link is back",
        || {
            let svc = svc.clone();
            async move { svc.ready().await }
        },
    )
    .await;
    for j in &lost {
        let again = svc.publish(input(*j, true)).await.unwrap();
        assert!(again.duplicate, "retry {j} must be a duplicate: {again:?}");
        assert_eq!(again.seqs, answers[j].seqs);
    }
    let all: BTreeSet<(String, u64)> = want
        .iter()
        .flat_map(|(c, seqs)| seqs.iter().map(move |s| (c.clone(), *s)))
        .collect();
    eventually(
        Duration::from_secs(30),
        "every message on Redis after the retries",
        || {
            let got: BTreeSet<(String, u64)> = observer.got().into_iter().collect();
            let done = all.is_subset(&got);
            async move { done }
        },
    )
    .await;
    drop(proxy);
}

/// Ingest's Redis link freezes (half-open: no byte moves, no RST) while 40
/// publishes come in one every 50 ms: each is answered (committed) within
/// the bus deadline and a margin, also those queued behind a publish that
/// waits for its response timeout: the deadline counts from each batch's
/// commit, not from when its turn came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_bus_costs_at_most_the_deadline() {
    let dir = herald_testkit::temp_dir();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(path.to_str().unwrap(), StoreConfig::default())
        .await
        .unwrap();
    let redis = redis_server();
    let proxy = Proxy::start(redis.port()).unwrap();
    let svc = ingest(
        Arc::new(store),
        Arc::new(redis_bus(&proxy.redis_url()).await),
    );
    svc.publish(input(0, false)).await.unwrap();
    proxy.freeze();
    let mut set = tokio::task::JoinSet::new();
    for j in 1..=40usize {
        let svc = svc.clone();
        set.spawn(async move {
            tokio::time::sleep(Duration::from_millis(50) * u32::try_from(j).unwrap()).await;
            let started = Instant::now();
            let a = svc.publish(input(j, false)).await;
            (j, a, started.elapsed())
        });
    }
    let bound = BUS_PUBLISH_DEADLINE + Duration::from_millis(1500);
    while let Some(r) = set.join_next().await {
        let (j, a, took) = r.unwrap();
        a.unwrap_or_else(|e| panic!("publish {j} with a frozen bus must commit: {e}"));
        assert!(
            took < bound,
            "publish {j} answered after {took:?} (bound {bound:?})"
        );
    }
}
