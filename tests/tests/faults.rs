//! Issue 9: the seeded randomized fault run (DESIGN.md guarantees 1-4 and 6
//! under fire, all at once, against real processes).
//!
//! # The rig
//! - one private PostgreSQL and one private Redis (restarted on their ports);
//! - two `herald ingest` and three `herald gateway` processes; each one's
//!   Redis link goes through its own fault-injecting TCP proxy
//!   (`herald_testkit::proxy::Proxy`), so "a Redis link goes silent" is a
//!   fault on one process;
//! - nginx in front of both ingests as every gateway's `--ingest-url`, so a
//!   gateway keeps reading positions and history while one ingest is down;
//! - gateways run with `--catchup-interval 1 --drain-window 1
//!   --heartbeat-interval 1 --heartbeat-timeout 3` and `[presence] ttl` 3 s,
//!   so repair, drains and dead-socket detection are fast.
//!
//! # The load
//! - keyed publishers POST `/v1/publish` to random ingests and retry the same
//!   key (same body) on any failure until they get a 200; unkeyed
//!   publishers POST once and never retry; some publishes name two channels;
//! - [`SUBSCRIBERS`] subscribers on random gateways, each on several of the
//!   [`CHANNELS`] channels: half subscribe with the `subscribe` op (`since` =
//!   the last seq seen, after the first time), half through their token's
//!   `channels` claim (`recover=` on reconnect); some speak MessagePack,
//!   some read slowly. On any socket loss or close (1012 drain, 4408, 4008,
//!   a killed gateway, a silent socket) they reconnect to a live gateway.
//!
//! # The faults
//! A plan of [`DEFAULT_FAULTS`] (or `HERALD_FAULT_COUNT`) faults is drawn
//! from the seed before anything starts: Redis SIGKILL + restart, one
//! process's Redis link frozen (half-open) or partitioned then healed,
//! gateway SIGKILL or SIGTERM (drain) then restart, ingest SIGKILL with
//! publishes in flight then restart, publishers hanging up mid-request
//! (some keyed and retried afterwards), PostgreSQL restart (fast shutdown or
//! crash), a checked subscriber that stops reading for a while, and a
//! non-reading client (expected to get 4408 or 4008). The first ten faults
//! are one of each kind, so every kind occurs in every run. At most two
//! gateways and one ingest are down at a time.
//!
//! # The checker
//! After the last fault, everything is healed, the publishers stop, and the
//! store's history (read through ingest) is the truth: per channel seq
//! 1..=last, contiguous, each id once; every acknowledged id at its
//! acknowledged seq; a key (and a publisher's message number) stored at most
//! once. Once every subscriber has caught up (or a deadline passed), for each
//! subscriber and channel the seqs received after its first subscribe must be
//! strictly increasing across reconnects (no duplicate, no reorder), carry
//! the stored id and ts, and cover every seq from its first position to the
//! end, except the ranges a `recovered:false` reply excused.
//!
//! # Replay
//! The seed is printed first and in every panic message:
//! `HERALD_FAULT_SEED=N cargo test -p herald-tests --test faults` draws the
//! same plan (the same faults, targets, holds and gaps, the same publishes
//! and subscriptions); the processes' timing still differs run to run.
//! On failure the logs of every process are copied to
//! `target/herald-faults/seed-N/` (also with `HERALD_FAULT_KEEP_LOGS=1`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_testkit::proxy::Proxy;
use herald_testkit::{Nginx, PgServer, RedisServer, TestkitError};
use herald_tests::{
    HeraldOptions, HeraldProcess, TokenBuilder, decode_mp, encode_mp, json_to_mp, mp_to_json,
    now_ms, percent_encode,
};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Channels published to (`fault_0` ..).
const CHANNELS: usize = 8;
/// Checked subscribers.
const SUBSCRIBERS: usize = 10;
/// Publishers that retry a key until it is acknowledged.
const KEYED_PUBLISHERS: usize = 3;
/// Publishers that never retry.
const UNKEYED_PUBLISHERS: usize = 2;
const GATEWAYS: usize = 3;
const INGESTS: usize = 2;
/// Faults of a default run (`HERALD_FAULT_COUNT` overrides).
const DEFAULT_FAULTS: usize = 100;
/// Pause between the starts of two faults, uniform (ms): 100 faults take
/// about 150 s, which keeps the whole run near 4 minutes on two cores.
const GAP_MS: (u64, u64) = (700, 2300);
/// Pause between two publishes of one publisher, uniform (ms).
const PACE_MS: (u64, u64) = (80, 250);
/// Gateway knobs that make repair, drain and dead-socket detection quick.
const GATEWAY_ARGS: &[&str] = &[
    "--catchup-interval",
    "1",
    "--drain-window",
    "1",
    "--heartbeat-interval",
    "1",
    "--heartbeat-timeout",
    "3",
];
/// `[presence] ttl` of every node (seconds).
const PRESENCE_TTL: &str = "3";
/// A subscriber that gets no frame at all (the server pings every second)
/// for this long takes its socket for dead and reconnects.
const LIVENESS: Duration = Duration::from_secs(5);
/// A subscribe without a reply for this long: the connection is abandoned.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// A `subscribe` reply slower than this is noted in the subscriber's events
/// and counted (not a failure: the messages are owed all the same).
const SLOW_SUBSCRIBE: Duration = Duration::from_secs(2);
/// Deliveries of messages committed up to this long after their
/// subscriber's stall ended count as held up by it (the stall may end in a
/// 4408 and a reconnect).
const STALL_MARGIN_MS: i64 = 2000;
/// A SIGTERMed gateway must have exited by then (PROTOCOL.md section 7:
/// drain window + 5 s; the rest is slack for a loaded two-core machine).
const DRAIN_EXIT: Duration = Duration::from_secs(12);
/// A keyed publish is retried for this long before it counts as unacked.
const KEY_RETRY_FOR: Duration = Duration::from_secs(60);
/// One publish request's bound.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Once everything is healed and the publishers stopped: bound for every
/// subscriber to hold its channels' last seq.
const SETTLE: Duration = Duration::from_secs(90);
/// A process that does not come back within this is an infrastructure
/// failure (reported, and fatal at the end).
const BRING_UP: Duration = Duration::from_secs(90);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn chan(i: usize) -> String {
    format!("fault_{i}")
}

fn chan_index(name: &str) -> Option<usize> {
    name.strip_prefix("fault_")?
        .parse()
        .ok()
        .filter(|i| *i < CHANNELS)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// Seeded randomness
// ---------------------------------------------------------------------------

/// splitmix64: small, fast, good enough to draw a plan; `rand` is not a
/// dependency of the tests package and this needs no crate.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("below n fits usize")
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An independent stream for a task.
    fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.index(i + 1);
            v.swap(i, j);
        }
    }
}

fn seed_from_env() -> u64 {
    match std::env::var("HERALD_FAULT_SEED") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("HERALD_FAULT_SEED={s:?} is not a u64: {e}")),
        _ => {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_i64(now_ms());
            h.write_u32(std::process::id());
            h.finish()
        }
    }
}

fn fault_count_from_env() -> usize {
    match std::env::var("HERALD_FAULT_COUNT") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("HERALD_FAULT_COUNT={s:?} is not a count: {e}")),
        _ => DEFAULT_FAULTS,
    }
}

// ---------------------------------------------------------------------------
// The fault plan
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    RedisKill,
    LinkFreeze,
    LinkPartition,
    GatewayKill,
    GatewayTerm,
    IngestKill,
    PublisherHangup,
    PgRestart,
    SlowClient,
    NonReadingClient,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::RedisKill,
        Kind::LinkFreeze,
        Kind::LinkPartition,
        Kind::GatewayKill,
        Kind::GatewayTerm,
        Kind::IngestKill,
        Kind::PublisherHangup,
        Kind::PgRestart,
        Kind::SlowClient,
        Kind::NonReadingClient,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::RedisKill => "redis_kill9_restart",
            Kind::LinkFreeze => "redis_link_freeze",
            Kind::LinkPartition => "redis_link_partition",
            Kind::GatewayKill => "gateway_kill9_restart",
            Kind::GatewayTerm => "gateway_sigterm_restart",
            Kind::IngestKill => "ingest_kill9_restart",
            Kind::PublisherHangup => "publisher_hangup",
            Kind::PgRestart => "postgres_restart",
            Kind::SlowClient => "slow_client",
            Kind::NonReadingClient => "non_reading_client",
        }
    }

    fn weight(self) -> u64 {
        match self {
            Kind::RedisKill => 8,
            Kind::LinkFreeze => 10,
            Kind::LinkPartition => 10,
            Kind::GatewayKill => 12,
            Kind::GatewayTerm => 10,
            Kind::IngestKill => 10,
            Kind::PublisherHangup => 14,
            Kind::PgRestart => 6,
            Kind::SlowClient => 10,
            Kind::NonReadingClient => 8,
        }
    }

    fn draw(rng: &mut Rng) -> Kind {
        let total: u64 = Kind::ALL.iter().map(|k| k.weight()).sum();
        let mut r = rng.below(total);
        for k in Kind::ALL {
            if r < k.weight() {
                return k;
            }
            r -= k.weight();
        }
        Kind::PublisherHangup
    }
}

/// What a fault occupies while it runs (planned time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Res {
    Redis,
    Pg,
    Link(usize),
    Gateway(usize),
    Ingests,
    Sub(usize),
}

/// One fault of the plan.
#[derive(Clone, Debug)]
struct Planned {
    n: usize,
    /// Start, from the start of the fault phase.
    at: Duration,
    kind: Kind,
    /// Gateway, ingest, link (0-1 ingests, 2-4 gateways) or subscriber.
    target: usize,
    /// How long the fault lasts before it is healed.
    hold: Duration,
    /// Kind-specific choice (PostgreSQL crash or not, hang-up count...).
    variant: u64,
}

fn link_name(i: usize) -> String {
    if i < INGESTS {
        format!("link:ingest-{i}")
    } else {
        format!("link:gw-{}", i - INGESTS)
    }
}

fn plan_faults(rng: &mut Rng, count: usize) -> Vec<Planned> {
    let mut busy: HashMap<Res, Duration> = HashMap::new();
    let mut first: Vec<Kind> = Kind::ALL.to_vec();
    rng.shuffle(&mut first);
    let mut out = Vec::with_capacity(count);
    let mut at = Duration::ZERO;
    for n in 0..count {
        at += rng.range_ms(GAP_MS.0, GAP_MS.1);
        let mut tries = 0;
        let p = loop {
            tries += 1;
            let kind = match first.get(n) {
                Some(k) => *k,
                None if tries > 20 => Kind::PublisherHangup,
                None => Kind::draw(rng),
            };
            if let Some(p) = try_plan(rng, &mut busy, n, at, kind) {
                break p;
            }
            if n < first.len() {
                at += Duration::from_millis(500);
            }
        };
        out.push(p);
    }
    out
}

fn pick_free(rng: &mut Rng, n: usize, free: impl Fn(usize) -> bool) -> Option<usize> {
    let c: Vec<usize> = (0..n).filter(|i| free(*i)).collect();
    if c.is_empty() {
        None
    } else {
        Some(c[rng.index(c.len())])
    }
}

fn try_plan(
    rng: &mut Rng,
    busy: &mut HashMap<Res, Duration>,
    n: usize,
    at: Duration,
    kind: Kind,
) -> Option<Planned> {
    let free = |busy: &HashMap<Res, Duration>, r: Res| busy.get(&r).is_none_or(|u| *u <= at);
    let s = Duration::from_secs;
    let (target, hold, variant, occupies): (usize, Duration, u64, Option<(Res, Duration)>) =
        match kind {
            Kind::RedisKill => {
                if !free(busy, Res::Redis) {
                    return None;
                }
                let hold = rng.range_ms(300, 2500);
                (0, hold, 0, Some((Res::Redis, hold + s(2))))
            }
            Kind::LinkFreeze => {
                let t = pick_free(rng, INGESTS + GATEWAYS, |i| free(busy, Res::Link(i)))?;
                (t, Duration::ZERO, 0, Some((Res::Link(t), s(7))))
            }
            Kind::LinkPartition => {
                let t = pick_free(rng, INGESTS + GATEWAYS, |i| free(busy, Res::Link(i)))?;
                let hold = rng.range_ms(1000, 4000);
                (t, hold, 0, Some((Res::Link(t), hold + s(1))))
            }
            Kind::GatewayKill | Kind::GatewayTerm => {
                let down = (0..GATEWAYS)
                    .filter(|i| !free(busy, Res::Gateway(*i)))
                    .count();
                if down >= GATEWAYS - 1 {
                    return None;
                }
                let t = pick_free(rng, GATEWAYS, |i| free(busy, Res::Gateway(i)))?;
                let (hold, extra) = if kind == Kind::GatewayKill {
                    (rng.range_ms(200, 2000), s(4))
                } else {
                    (rng.range_ms(200, 1500), s(7))
                };
                (t, hold, 0, Some((Res::Gateway(t), hold + extra)))
            }
            Kind::IngestKill => {
                if !free(busy, Res::Ingests) {
                    return None;
                }
                let hold = rng.range_ms(200, 2000);
                (
                    rng.index(INGESTS),
                    hold,
                    0,
                    Some((Res::Ingests, hold + s(4))),
                )
            }
            Kind::PgRestart => {
                if !free(busy, Res::Pg) {
                    return None;
                }
                let crash = rng.below(2);
                let hold = if crash == 1 {
                    rng.range_ms(300, 2000)
                } else {
                    Duration::ZERO
                };
                (0, hold, crash, Some((Res::Pg, hold + s(5))))
            }
            Kind::PublisherHangup => (rng.index(INGESTS), Duration::ZERO, rng.below(6), None),
            Kind::SlowClient => {
                let t = pick_free(rng, SUBSCRIBERS, |i| free(busy, Res::Sub(i)))?;
                let hold = rng.range_ms(500, 4500);
                (t, hold, 0, Some((Res::Sub(t), hold)))
            }
            Kind::NonReadingClient => (
                rng.index(GATEWAYS),
                rng.range_ms(5000, 7000),
                rng.next_u64(),
                None,
            ),
        };
    if let Some((r, d)) = occupies {
        busy.insert(r, at + d);
    }
    Some(Planned {
        n,
        at,
        kind,
        target,
        hold,
        variant,
    })
}

/// A fault as it happened.
#[derive(Clone, Debug)]
struct FaultRec {
    n: usize,
    kind: Kind,
    target: String,
    /// Wall clock (ms since the epoch), comparable with message `ts`.
    start_ms: i64,
    end_ms: i64,
    /// Seconds since the run started.
    started: f64,
    note: String,
}

impl FaultRec {
    fn describe(&self) -> String {
        format!(
            "#{} {} {} [{:.1}s +{:.1}s] {}",
            self.n,
            self.kind.name(),
            self.target,
            self.started,
            (self.end_ms - self.start_ms) as f64 / 1000.0,
            self.note
        )
    }
}

// ---------------------------------------------------------------------------
// The world: processes, proxies and shared records
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Ack {
    id: String,
    ts: i64,
    seqs: Vec<(usize, u64)>,
    key: Option<String>,
}

#[derive(Debug, Default)]
struct PubStats {
    attempts: u64,
    failed_attempts: u64,
    /// Failed attempts by HTTP status or "error".
    failures: BTreeMap<String, u64>,
    unkeyed_unacked: u64,
    unacked_keys: Vec<String>,
    hangups: u64,
    /// Keyed publishes sent to an ingest just before its SIGKILL, and how
    /// many of them needed another attempt (caught in flight or refused).
    burst: u64,
    burst_retried: u64,
}

/// Field order is drop order: herald processes first, PostgreSQL last.
struct World {
    seed: u64,
    t0: Instant,
    /// `t0` as ms since the epoch (message `ts` are on that clock).
    t0_ms: i64,
    secret: String,
    api_key: String,
    http: reqwest::Client,

    gateways: Vec<tokio::sync::Mutex<HeraldProcess>>,
    gw_ports: Vec<u16>,
    gw_up: Vec<AtomicBool>,
    /// At most two gateways down at once.
    gw_down: Semaphore,
    ingests: Vec<tokio::sync::Mutex<HeraldProcess>>,
    ingest_ports: Vec<u16>,
    ingest_up: Vec<AtomicBool>,
    /// At most one ingest down at once.
    ingest_down: Semaphore,
    nginx: Nginx,
    /// 0..INGESTS: the ingests' Redis links; then the gateways'.
    proxies: Vec<Proxy>,
    proxy_locks: Vec<tokio::sync::Mutex<()>>,
    redis: Arc<Mutex<RedisServer>>,
    redis_lock: tokio::sync::Mutex<()>,
    pg: Arc<Mutex<PgServer>>,
    pg_lock: tokio::sync::Mutex<()>,

    /// Per subscriber: stop reading until this time (ms since the epoch).
    stall_until: Vec<AtomicI64>,
    acks: Mutex<Vec<Ack>>,
    pubs: Mutex<PubStats>,
    hangup_n: AtomicU64,
    burst_n: AtomicU64,
    /// Non-reading clients: how each ended.
    stuck_outcomes: Mutex<BTreeMap<String, u64>>,
    /// Violations found while running (besides the final check).
    anomalies: Mutex<Vec<String>>,
    /// Tasks spawned by faults (retries after hang-ups, bursts, stuck
    /// clients); joined before the check.
    aux: Mutex<Vec<JoinHandle<()>>>,
}

impl World {
    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn anomaly(&self, what: String) {
        let line = format!("[{:.1}s] {what}", self.secs());
        println!("ANOMALY {line}");
        lock(&self.anomalies).push(line);
    }

    fn pick_gateway(&self, rng: &mut Rng) -> usize {
        pick_up(rng, &self.gw_up)
    }

    fn pick_ingest(&self, rng: &mut Rng) -> usize {
        pick_up(rng, &self.ingest_up)
    }

    fn spawn_aux(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        lock(&self.aux).push(tokio::spawn(fut));
    }

    fn replay_line(&self) -> String {
        replay_line(self.seed)
    }
}

fn replay_line(seed: u64) -> String {
    format!(
        "fault run seed = {seed} (replay: HERALD_FAULT_SEED={seed} cargo test -p herald-tests --test faults)"
    )
}

async fn healthz(http: &reqwest::Client, admin_port: u16) -> bool {
    let r = http
        .get(format!("http://127.0.0.1:{admin_port}/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    matches!(r, Ok(resp) if resp.status().as_u16() == 200)
}

fn pick_up(rng: &mut Rng, up: &[AtomicBool]) -> usize {
    let live: Vec<usize> = (0..up.len())
        .filter(|i| up[*i].load(Ordering::SeqCst))
        .collect();
    if live.is_empty() {
        rng.index(up.len())
    } else {
        live[rng.index(live.len())]
    }
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking fault step panicked")
}

/// Waits for `/healthz` 200; the reason when the process exits or `within`
/// passes first.
async fn wait_healthy(
    http: &reqwest::Client,
    p: &mut HeraldProcess,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if healthz(http, p.admin_port).await {
            return Ok(());
        }
        if let Some(st) = p.wait_exit(Duration::ZERO).await {
            return Err(format!("exited with {st}"));
        }
        if Instant::now() >= deadline {
            return Err(format!("no /healthz 200 within {within:?}"));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

/// (Re)starts `p` until it is healthy (it may exit at start while Redis or
/// PostgreSQL is down: then again); the number of starts.
async fn bring_up(w: &World, p: &mut HeraldProcess, name: &str) -> Result<usize, String> {
    let deadline = Instant::now() + BRING_UP;
    let mut why = Vec::new();
    for attempt in 1.. {
        p.restart().await;
        match wait_healthy(&w.http, p, Duration::from_secs(20)).await {
            Ok(()) => return Ok(attempt),
            Err(e) => why.push(e),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} not healthy after {attempt} starts ({}); last log lines:\n{}",
                why.join("; "),
                tail(&p.log(), 30)
            ));
        }
        sleep(Duration::from_millis(500)).await;
    }
    unreachable!("the loop returns")
}

/// Restarts the private server in `server` (`name` in anomalies) with
/// `restart`: up to 5 starts, 500 ms apart; `"{done} (start N)"`, or
/// `NOT restarted`.
async fn restart_server<S: Send + 'static>(
    w: &World,
    server: &Arc<Mutex<S>>,
    name: &str,
    done: &str,
    restart: fn(&mut S) -> Result<(), TestkitError>,
) -> String {
    for attempt in 1..=5 {
        let s = server.clone();
        match run_blocking(move || restart(&mut lock(&s))).await {
            Ok(()) => return format!("{done} (start {attempt})"),
            Err(e) => {
                w.anomaly(format!("{name} restart attempt {attempt} failed: {e}"));
                sleep(Duration::from_millis(500)).await;
            }
        }
    }
    "NOT restarted".into()
}

async fn restart_redis(w: &World) -> String {
    restart_server(w, &w.redis, "redis", "restarted", RedisServer::restart).await
}

async fn restart_pg(w: &World) -> String {
    restart_server(w, &w.pg, "postgres", "up again", PgServer::restart).await
}

/// Starts the node `name` of the world of `seed` and waits (30 s) for its
/// `/healthz`; a panic with the replay line and its log when it does not
/// come up.
async fn start_node(
    http: &reqwest::Client,
    seed: u64,
    name: &str,
    options: HeraldOptions,
) -> HeraldProcess {
    let mut p = HeraldProcess::start(options).await;
    if let Err(e) = wait_healthy(http, &mut p, Duration::from_secs(30)).await {
        panic!(
            "{}\n{name} did not start: {e}; log:\n{}",
            replay_line(seed),
            tail(&p.log(), 50)
        );
    }
    p
}

async fn start_world(seed: u64, t0: Instant) -> World {
    let fresh = HeraldOptions::default();
    let (secret, api_key) = (fresh.jwt_secret.clone(), fresh.api_key.clone());
    let http = reqwest::Client::builder()
        .timeout(PUBLISH_TIMEOUT)
        .build()
        .expect("building a reqwest client");
    let pg = run_blocking(PgServer::start)
        .await
        .unwrap_or_else(|e| panic!("cannot start a private PostgreSQL: {e}"));
    let pg_url = pg.url();
    let redis = run_blocking(RedisServer::start)
        .await
        .unwrap_or_else(|e| panic!("cannot start a private redis-server: {e}"));
    let proxies: Vec<Proxy> = (0..INGESTS + GATEWAYS)
        .map(|_| {
            Proxy::start(redis.port()).unwrap_or_else(|e| panic!("cannot start a Redis proxy: {e}"))
        })
        .collect();
    let env = vec![("HERALD_PRESENCE__TTL".to_string(), PRESENCE_TTL.to_string())];
    let mut ingests = Vec::new();
    let mut ingest_ports = Vec::new();
    for (i, proxy) in proxies.iter().take(INGESTS).enumerate() {
        let name = format!("ingest-{i}");
        let options = HeraldOptions {
            subcommand: "ingest".into(),
            args: vec![
                "--redis-url".into(),
                proxy.redis_url(),
                "--node-id".into(),
                name.clone(),
            ],
            env: env.clone(),
            database_url: Some(pg_url.clone()),
            jwt_secret: secret.clone(),
            api_key: api_key.clone(),
            wait_ready: false,
            ..HeraldOptions::default()
        };
        let p = start_node(&http, seed, &name, options).await;
        ingest_ports.push(p.port);
        ingests.push(tokio::sync::Mutex::new(p));
    }
    // nginx proxies plain HTTP too: the gateways' way to "any live ingest".
    let nginx = Nginx::start(&ingest_ports).unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
    let ingest_url = format!("http://127.0.0.1:{}", nginx.port());
    let mut gateways = Vec::new();
    let mut gw_ports = Vec::new();
    for (i, proxy) in proxies.iter().skip(INGESTS).enumerate() {
        let name = format!("gw-{i}");
        let mut args = vec![
            "--redis-url".to_string(),
            proxy.redis_url(),
            "--ingest-url".into(),
            ingest_url.clone(),
            "--node-id".into(),
            name.clone(),
        ];
        args.extend(GATEWAY_ARGS.iter().map(|s| s.to_string()));
        let options = HeraldOptions {
            subcommand: "gateway".into(),
            args,
            env: env.clone(),
            jwt_secret: secret.clone(),
            api_key: api_key.clone(),
            wait_ready: false,
            ..HeraldOptions::default()
        };
        let p = start_node(&http, seed, &name, options).await;
        gw_ports.push(p.port);
        gateways.push(tokio::sync::Mutex::new(p));
    }
    World {
        seed,
        t0,
        t0_ms: now_ms() - i64::try_from(ms(t0.elapsed())).unwrap_or(0),
        secret,
        api_key,
        http,
        gateways,
        gw_ports,
        gw_up: (0..GATEWAYS).map(|_| AtomicBool::new(true)).collect(),
        gw_down: Semaphore::new(GATEWAYS - 1),
        ingests,
        ingest_ports,
        ingest_up: (0..INGESTS).map(|_| AtomicBool::new(true)).collect(),
        ingest_down: Semaphore::new(1),
        nginx,
        proxy_locks: (0..proxies.len())
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
        proxies,
        redis: Arc::new(Mutex::new(redis)),
        redis_lock: tokio::sync::Mutex::new(()),
        pg: Arc::new(Mutex::new(pg)),
        pg_lock: tokio::sync::Mutex::new(()),
        stall_until: (0..SUBSCRIBERS).map(|_| AtomicI64::new(0)).collect(),
        acks: Mutex::new(Vec::new()),
        pubs: Mutex::new(PubStats::default()),
        hangup_n: AtomicU64::new(0),
        burst_n: AtomicU64::new(0),
        stuck_outcomes: Mutex::new(BTreeMap::new()),
        anomalies: Mutex::new(Vec::new()),
        aux: Mutex::new(Vec::new()),
    }
}

/// Copies every process's log to `target/herald-faults/seed-N/`.
async fn save_logs(w: &World) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let dir = target
        .join("herald-faults")
        .join(format!("seed-{}", w.seed));
    let _ = std::fs::create_dir_all(&dir);
    for (i, g) in w.gateways.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("gw-{i}.log")), g.lock().await.log());
    }
    for (i, g) in w.ingests.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("ingest-{i}.log")), g.lock().await.log());
    }
    let _ = std::fs::write(dir.join("redis.log"), lock(&w.redis).log());
    let _ = std::fs::write(dir.join("postgres.log"), lock(&w.pg).log());
    dir
}

/// Warnings and errors of every herald log (the last `n` of each).
async fn log_warnings(w: &World, n: usize) -> String {
    let mut out = String::new();
    let mut add = |name: String, log: String| {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        out.push_str(&format!(
            "----- {name}: {} warnings/errors, last {n}:\n{}\n",
            lines.len(),
            lines[lines.len().saturating_sub(n)..].join("\n")
        ));
    };
    for (i, g) in w.gateways.iter().enumerate() {
        add(format!("gw-{i}"), g.lock().await.log());
    }
    for (i, g) in w.ingests.iter().enumerate() {
        add(format!("ingest-{i}"), g.lock().await.log());
    }
    out
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

async fn run_fault(w: Arc<World>, f: Planned, mut rng: Rng) -> FaultRec {
    let start_ms = now_ms();
    let started = w.secs();
    let hold_s = f.hold.as_secs_f64();
    let (target, note): (String, String) = match f.kind {
        Kind::RedisKill => {
            let _g = w.redis_lock.lock().await;
            let r = w.redis.clone();
            run_blocking(move || lock(&r).kill()).await;
            sleep(f.hold).await;
            let note = restart_redis(&w).await;
            ("redis".into(), format!("down {hold_s:.1}s, {note}"))
        }
        Kind::LinkFreeze => {
            let i = f.target;
            let _g = w.proxy_locks[i].lock().await;
            let before = w.proxies[i].connections();
            tokio::task::block_in_place(|| w.proxies[i].freeze());
            // Note how long the process takes to open a fresh connection
            // (it noticed the silent one); the checker judges the effects.
            let t = Instant::now();
            let mut note = "no new connection within 6s".to_string();
            while t.elapsed() < Duration::from_secs(6) {
                if w.proxies[i].connections() > before {
                    note = format!("new connection after {}ms", ms(t.elapsed()));
                    break;
                }
                sleep(Duration::from_millis(50)).await;
            }
            (link_name(i), note)
        }
        Kind::LinkPartition => {
            let i = f.target;
            let _g = w.proxy_locks[i].lock().await;
            let before = w.proxies[i].connections();
            tokio::task::block_in_place(|| w.proxies[i].partition());
            sleep(f.hold).await;
            tokio::task::block_in_place(|| w.proxies[i].heal());
            let during = w.proxies[i].connections() - before;
            (
                link_name(i),
                format!("silent {hold_s:.1}s, {during} connection attempts meanwhile"),
            )
        }
        Kind::GatewayKill | Kind::GatewayTerm => {
            let i = f.target;
            let _permit = w
                .gw_down
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let mut p = w.gateways[i].lock().await;
            w.gw_up[i].store(false, Ordering::SeqCst);
            let mut note = String::new();
            if f.kind == Kind::GatewayKill {
                tokio::task::block_in_place(|| p.kill());
            } else {
                let t = Instant::now();
                p.signal_term();
                match p.wait_exit(DRAIN_EXIT).await {
                    Some(st) if st.success() => {
                        note = format!("drained, exit 0 after {}ms, ", ms(t.elapsed()));
                    }
                    Some(st) => {
                        w.anomaly(format!(
                            "fault #{}: gw-{i} exited with {st} after SIGTERM (PROTOCOL.md section 7: exit 0)",
                            f.n
                        ));
                        note = format!("exit {st} after {}ms, ", ms(t.elapsed()));
                    }
                    None => {
                        w.anomaly(format!(
                            "fault #{}: gw-{i} still running {DRAIN_EXIT:?} after SIGTERM (PROTOCOL.md section 7: drain window 1 s + 5 s); killed",
                            f.n
                        ));
                        tokio::task::block_in_place(|| p.kill());
                        note = "drain never ended, killed, ".into();
                    }
                }
            }
            sleep(f.hold).await;
            match bring_up(&w, &mut p, &format!("gw-{i}")).await {
                Ok(n) => {
                    note.push_str(&format!("down {hold_s:.1}s, up after {n} start(s)"));
                    w.gw_up[i].store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    w.anomaly(format!("fault #{}: {e}", f.n));
                    note.push_str("NOT back up");
                }
            }
            (format!("gw-{i}"), note)
        }
        Kind::IngestKill => {
            let i = f.target;
            let _permit = w
                .ingest_down
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let mut p = w.ingests[i].lock().await;
            // Publishes in flight on this ingest when it dies: keyed, so
            // they are retried elsewhere and must end as one message each.
            let b = w.burst_n.fetch_add(1, Ordering::SeqCst);
            for k in 0..4 {
                let key = format!("b{b}-{k}");
                let body = publish_body(&mut rng, "b", b * 10 + k, Some(&key));
                let (w2, mut r2) = (w.clone(), rng.fork());
                w.spawn_aux(async move {
                    let tries = publish_keyed(&w2, &mut r2, body, Some(i)).await;
                    let mut p = lock(&w2.pubs);
                    p.burst += 1;
                    if tries > 1 {
                        p.burst_retried += 1;
                    }
                });
            }
            sleep(rng.range_ms(1, 15)).await;
            w.ingest_up[i].store(false, Ordering::SeqCst);
            tokio::task::block_in_place(|| p.kill());
            sleep(f.hold).await;
            let note = match bring_up(&w, &mut p, &format!("ingest-{i}")).await {
                Ok(n) => {
                    w.ingest_up[i].store(true, Ordering::SeqCst);
                    format!("4 keyed publishes in flight, down {hold_s:.1}s, up after {n} start(s)")
                }
                Err(e) => {
                    w.anomaly(format!("fault #{}: {e}", f.n));
                    "NOT back up".into()
                }
            };
            (format!("ingest-{i}"), note)
        }
        Kind::PublisherHangup => {
            let count = 1 + f.variant % 3;
            let keyed = (f.variant / 3) % 2 == 1;
            let mut outcomes = Vec::new();
            for _ in 0..count {
                let h = w.hangup_n.fetch_add(1, Ordering::SeqCst);
                let key = keyed.then(|| format!("h-{h}"));
                let name = if keyed { "hk" } else { "hu" };
                let body = publish_body(&mut rng, name, h, key.as_deref());
                outcomes.push(hang_up(&w, f.target, &body, &mut rng).await);
                lock(&w.pubs).hangups += 1;
                if keyed {
                    // The publisher retries the key it hung up on: one
                    // message, whether the first try was committed or not.
                    let (w2, mut r2) = (w.clone(), rng.fork());
                    let wait = rng.range_ms(200, 1500);
                    w.spawn_aux(async move {
                        sleep(wait).await;
                        publish_keyed(&w2, &mut r2, body, None).await;
                    });
                }
            }
            (
                format!("ingest-{}", f.target),
                format!(
                    "{count} {} request(s): {}",
                    if keyed {
                        "keyed (then retried)"
                    } else {
                        "unkeyed"
                    },
                    outcomes.join(", ")
                ),
            )
        }
        Kind::PgRestart => {
            let _g = w.pg_lock.lock().await;
            let note = if f.variant == 1 {
                let pg = w.pg.clone();
                run_blocking(move || lock(&pg).kill()).await;
                sleep(f.hold).await;
                format!(
                    "crashed (SIGQUIT), down {hold_s:.1}s, {}",
                    restart_pg(&w).await
                )
            } else {
                format!("fast shutdown and start, {}", restart_pg(&w).await)
            };
            ("postgres".into(), note)
        }
        Kind::SlowClient => {
            let until = now_ms() + i64::try_from(ms(f.hold)).unwrap_or(i64::MAX);
            w.stall_until[f.target].fetch_max(until, Ordering::SeqCst);
            (
                format!("sub-{}", f.target),
                format!("stops reading for {hold_s:.1}s"),
            )
        }
        Kind::NonReadingClient => {
            let gw = if w.gw_up[f.target].load(Ordering::SeqCst) {
                f.target
            } else {
                w.pick_gateway(&mut rng)
            };
            let mut chans: Vec<usize> = (0..CHANNELS).collect();
            rng.shuffle(&mut chans);
            chans.truncate(4);
            let (w2, hold, n) = (w.clone(), f.hold, f.n);
            w.spawn_aux(async move {
                let outcome = non_reading_client(&w2, gw, &chans, hold, n).await;
                *lock(&w2.stuck_outcomes).entry(outcome).or_default() += 1;
            });
            (
                format!("gw-{gw}"),
                format!("connects, never reads for {hold_s:.1}s"),
            )
        }
    };
    // A stalled or stuck client is the fault for as long as it holds.
    let end_ms = match f.kind {
        Kind::SlowClient | Kind::NonReadingClient => {
            start_ms + i64::try_from(ms(f.hold)).unwrap_or(0)
        }
        _ => now_ms(),
    };
    let rec = FaultRec {
        n: f.n,
        kind: f.kind,
        target,
        start_ms,
        end_ms,
        started,
        note,
    };
    println!("[{:>6.1}s] fault {}", w.secs(), rec.describe());
    rec
}

/// Sends a whole publish request on a fresh connection and closes it
/// without reading the answer.
async fn hang_up(w: &World, ingest: usize, body: &Value, rng: &mut Rng) -> String {
    let port = w.ingest_ports[ingest];
    let text = body.to_string();
    let req = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        w.api_key,
        text.len()
    );
    let mut s = match timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => return "refused".into(),
    };
    if s.write_all(req.as_bytes()).await.is_err() {
        return "write failed".into();
    }
    // Sometimes at once, sometimes while the commit may be under way.
    let linger = rng.range(0, 15);
    if linger > 0 {
        sleep(Duration::from_millis(linger)).await;
    }
    drop(s);
    format!("hung up after {linger}ms")
}

/// A client that connects (token channels: automatic subscriptions, so it
/// never writes) and never reads for `hold`: no pong, its queue grows.
/// PROTOCOL.md section 6/7: it must be closed (4408 or 4008) without
/// slowing anyone else. Returns how it ended.
async fn non_reading_client(
    w: &World,
    gw: usize,
    chans: &[usize],
    hold: Duration,
    n: usize,
) -> String {
    let names: Vec<String> = chans.iter().map(|c| chan(*c)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let token = TokenBuilder::new(&format!("stuck-{n}"))
        .channels(&names)
        .sign(&w.secret);
    let port = w.gw_ports[gw];
    let connect = async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.set_recv_buffer_size(4096).ok()?;
        let stream = sock
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .ok()?;
        let req = format!("ws://127.0.0.1:{port}/ws?token={}", percent_encode(&token))
            .into_client_request()
            .ok()?;
        tokio_tungstenite::client_async(req, stream).await.ok()
    };
    let Ok(Some((mut ws, _))) = timeout(Duration::from_secs(5), connect).await else {
        return "could not connect".into();
    };
    sleep(hold).await;
    // Now read what is there: the server must have given up on it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, ws.next()).await {
            Err(_) => {
                w.anomaly(format!(
                    "non-reading client of fault #{n} on gw-{gw}: still open {:.0}s after it stopped reading (PROTOCOL.md section 7: 4408 after 3 s of silence)",
                    hold.as_secs_f64() + 30.0
                ));
                return "never closed".into();
            }
            Ok(None) | Ok(Some(Err(_))) => return "dropped without a close frame".into(),
            Ok(Some(Ok(Message::Close(cf)))) => {
                return match cf {
                    Some(cf) => format!("close {}", u16::from(cf.code)),
                    None => "close without code".into(),
                };
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Publishers
// ---------------------------------------------------------------------------

fn publish_body(rng: &mut Rng, publisher: &str, n: u64, key: Option<&str>) -> Value {
    let pad = "x".repeat(usize::try_from(rng.range(40, 400)).expect("small"));
    let mut data = json!({"p": publisher, "n": n, "pad": pad});
    if let Some(k) = key {
        data["key"] = json!(k);
    }
    let mut body = if rng.chance(12) {
        let a = rng.index(CHANNELS);
        let b = (a + 1 + rng.index(CHANNELS - 1)) % CHANNELS;
        json!({"channels": [chan(a), chan(b)], "data": data})
    } else {
        json!({"channel": chan(rng.index(CHANNELS)), "data": data})
    };
    if let Some(k) = key {
        body["key"] = json!(k);
    }
    body
}

async fn post_publish(w: &World, ingest: usize, body: &Value) -> Result<(u16, Value), String> {
    let resp = w
        .http
        .post(format!(
            "http://127.0.0.1:{}/v1/publish",
            w.ingest_ports[ingest]
        ))
        .bearer_auth(&w.api_key)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Records a 200 answer as an acknowledgement.
fn record_ack(w: &World, body: &Value, answer: &Value) {
    let key = body["key"].as_str().map(str::to_string);
    let (Some(id), Some(ts), Some(seqs)) = (
        answer["id"].as_str(),
        answer["ts"].as_i64(),
        answer["seqs"].as_object(),
    ) else {
        w.anomaly(format!("publish answer 200 without id/ts/seqs: {answer}"));
        return;
    };
    let wanted: Vec<&str> = match body["channels"].as_array() {
        Some(a) => a.iter().filter_map(Value::as_str).collect(),
        None => body["channel"].as_str().into_iter().collect(),
    };
    let mut out = Vec::new();
    for ch in wanted {
        match (seqs.get(ch).and_then(Value::as_u64), chan_index(ch)) {
            (Some(seq), Some(c)) => out.push((c, seq)),
            _ => w.anomaly(format!("publish answer without a seq for {ch}: {answer}")),
        }
    }
    lock(&w.acks).push(Ack {
        id: id.to_string(),
        ts,
        seqs: out,
        key,
    });
}

fn count_failure(w: &World, what: String) {
    let mut p = lock(&w.pubs);
    p.failed_attempts += 1;
    *p.failures.entry(what).or_default() += 1;
}

/// POSTs a keyed publish until it is acknowledged (first to `first`, then
/// to random live ingests), for at most [`KEY_RETRY_FOR`]; the number of
/// attempts (0 when never acknowledged).
async fn publish_keyed(w: &World, rng: &mut Rng, body: Value, first: Option<usize>) -> u32 {
    let key = body["key"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + KEY_RETRY_FOR;
    let mut ingest = first.unwrap_or_else(|| w.pick_ingest(rng));
    for attempt in 1.. {
        lock(&w.pubs).attempts += 1;
        match post_publish(w, ingest, &body).await {
            Ok((200, answer)) => {
                record_ack(w, &body, &answer);
                return attempt;
            }
            Ok((409, answer)) => {
                w.anomaly(format!(
                    "retry of key {key} with the same body got 409 conflict: {answer}"
                ));
                return 0;
            }
            Ok((s, _)) => count_failure(w, s.to_string()),
            Err(_) => count_failure(w, "error".into()),
        }
        if Instant::now() >= deadline {
            lock(&w.pubs).unacked_keys.push(key);
            return 0;
        }
        sleep(rng.range_ms(150, 500)).await;
        ingest = w.pick_ingest(rng);
    }
    unreachable!("the loop returns")
}

/// Sleeps one publish pace; false when told to stop.
async fn pace(rng: &mut Rng, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = stop.changed() => false,
        _ = sleep(rng.range_ms(PACE_MS.0, PACE_MS.1)) => !*stop.borrow(),
    }
}

async fn keyed_publisher(w: Arc<World>, p: usize, mut rng: Rng, mut stop: watch::Receiver<bool>) {
    let name = format!("k{p}");
    for n in 1.. {
        if *stop.borrow() {
            return;
        }
        let key = format!("{name}-{n}");
        let body = publish_body(&mut rng, &name, n, Some(&key));
        publish_keyed(&w, &mut rng, body, None).await;
        if !pace(&mut rng, &mut stop).await {
            return;
        }
    }
}

async fn unkeyed_publisher(w: Arc<World>, p: usize, mut rng: Rng, mut stop: watch::Receiver<bool>) {
    let name = format!("u{p}");
    for n in 1.. {
        if *stop.borrow() {
            return;
        }
        let body = publish_body(&mut rng, &name, n, None);
        let ingest = w.pick_ingest(&mut rng);
        lock(&w.pubs).attempts += 1;
        match post_publish(&w, ingest, &body).await {
            Ok((200, answer)) => record_ack(&w, &body, &answer),
            Ok((s, _)) => {
                count_failure(&w, s.to_string());
                lock(&w.pubs).unkeyed_unacked += 1;
            }
            Err(_) => {
                count_failure(&w, "error".into());
                lock(&w.pubs).unkeyed_unacked += 1;
            }
        }
        if !pace(&mut rng, &mut stop).await {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

/// One subscriber's position on one channel.
#[derive(Debug, Default, Clone)]
struct Track {
    /// The channel's seq at the first successful subscribe: every later seq
    /// is owed.
    start: Option<u64>,
    /// The last seq seen (or `start`): the next `since`.
    pos: u64,
    /// Ranges a `recovered:false` reply excused (inclusive).
    excused: Vec<(u64, u64)>,
}

#[derive(Debug, Clone)]
struct Delivery {
    ch: usize,
    seq: u64,
    id: String,
    ts: i64,
    recv_ms: i64,
    conn: u64,
}

#[derive(Debug, Default)]
struct SubLog {
    tracks: BTreeMap<usize, Track>,
    deliveries: Vec<Delivery>,
    /// (ms since the epoch, what happened) per connection.
    events: Vec<(i64, String)>,
    conns: u64,
    closes: BTreeMap<String, u64>,
    /// How connections ended besides a close frame: "reset", "silent"
    /// (nothing, not even a ping, for [`LIVENESS`] from a gateway that was
    /// up), "no reply", "connect failed".
    ends: BTreeMap<&'static str, u64>,
    sub_errors: BTreeMap<String, u64>,
    recovered_false: u64,
    replayed: u64,
    /// Longest wait for a `subscribe` reply, and how many took longer than
    /// [`SLOW_SUBSCRIBE`].
    slowest_subscribe: Duration,
    slow_subscribes: u64,
    anomalies: Vec<String>,
}

struct Sub {
    idx: usize,
    channels: Vec<usize>,
    /// Token `channels` claim + `recover=`, instead of `subscribe` + `since`.
    auto: bool,
    msgpack: bool,
    slow: bool,
    token: String,
    log: Arc<Mutex<SubLog>>,
}

impl Sub {
    fn name(&self) -> String {
        format!("sub-{}", self.idx)
    }

    fn event(&self, what: String) {
        lock(&self.log).events.push((now_ms(), what));
    }

    fn ended(&self, how: &'static str, what: String) {
        let mut l = lock(&self.log);
        *l.ends.entry(how).or_default() += 1;
        l.events.push((now_ms(), what));
    }

    fn anomaly(&self, what: String) {
        let line = format!("{}: {what}", self.name());
        println!("ANOMALY {line}");
        let mut l = lock(&self.log);
        l.events.push((now_ms(), format!("ANOMALY {what}")));
        l.anomalies.push(line);
    }

    /// The `since` to send for `c`: none before the first subscribe.
    fn since(&self, c: usize) -> Option<u64> {
        lock(&self.log)
            .tracks
            .get(&c)
            .and_then(|t| t.start.map(|_| t.pos))
    }

    /// A subscribe result (a `reply` or a `welcome.subs` entry).
    fn on_result(&self, c: usize, since: Option<u64>, res: &Value) {
        let Some(seq) = res["seq"].as_u64() else {
            self.anomaly(format!(
                "subscribe result without seq on {}: {res}",
                chan(c)
            ));
            return;
        };
        let mut problems = Vec::new();
        {
            let mut l = lock(&self.log);
            let SubLog {
                tracks,
                events,
                recovered_false,
                replayed,
                ..
            } = &mut *l;
            let t = tracks.entry(c).or_default();
            match since {
                None => {
                    if t.start.is_none() {
                        t.start = Some(seq);
                        t.pos = seq;
                    }
                }
                Some(p) => {
                    if seq < p {
                        problems.push(format!(
                            "{}: subscribe since {p} answered seq {seq}: committed messages vanished from the store",
                            chan(c)
                        ));
                    }
                    match res["recovered"].as_bool() {
                        Some(true) => {
                            let r = res["replayed"].as_u64();
                            if r != Some(seq.saturating_sub(p)) {
                                problems.push(format!(
                                    "{}: since {p}, seq {seq}, recovered:true but replayed {r:?}",
                                    chan(c)
                                ));
                            }
                            *replayed += r.unwrap_or(0);
                        }
                        Some(false) => {
                            if seq > p {
                                t.excused.push((p + 1, seq));
                            }
                            t.pos = t.pos.max(seq);
                            *recovered_false += 1;
                            events.push((
                                now_ms(),
                                format!("recovered:false on {} since {p} seq {seq}", chan(c)),
                            ));
                        }
                        None => problems.push(format!(
                            "{}: subscribe with since {p} answered without recovered: {res}",
                            chan(c)
                        )),
                    }
                }
            }
        }
        for p in problems {
            self.anomaly(p);
        }
    }

    fn on_message(&self, v: &Value, live: &BTreeSet<usize>, conn: u64) {
        let name = v["channel"].as_str().unwrap_or_default();
        let (Some(c), Some(seq), Some(id), Some(ts)) = (
            chan_index(name),
            v["seq"].as_u64(),
            v["id"].as_str(),
            v["ts"].as_i64(),
        ) else {
            self.anomaly(format!("malformed message frame: {v}"));
            return;
        };
        if !self.channels.contains(&c) {
            self.anomaly(format!("message on {name}, never subscribed: seq {seq}"));
            return;
        }
        if !live.contains(&c) {
            self.anomaly(format!(
                "message on {name} seq {seq} before its subscribe result on connection {conn}"
            ));
        }
        let mut l = lock(&self.log);
        l.deliveries.push(Delivery {
            ch: c,
            seq,
            id: id.to_string(),
            ts,
            recv_ms: now_ms(),
            conn,
        });
        if let Some(t) = l.tracks.get_mut(&c) {
            t.pos = t.pos.max(seq);
        }
    }

    /// Records how long a `subscribe` waited for its reply.
    fn subscribed_after(&self, c: usize, took: Duration, gw: usize) {
        let mut l = lock(&self.log);
        l.slowest_subscribe = l.slowest_subscribe.max(took);
        if took > SLOW_SUBSCRIBE {
            l.slow_subscribes += 1;
            l.events.push((
                now_ms(),
                format!(
                    "subscribe {} on gw-{gw} answered after {}ms",
                    chan(c),
                    ms(took)
                ),
            ));
        }
    }

    /// Records a close; whether to reconnect at once.
    fn on_close(&self, code: Option<u16>, when: &str) -> After {
        let key = code.map_or("close without code".to_string(), |c| c.to_string());
        *lock(&self.log).closes.entry(key.clone()).or_default() += 1;
        self.event(format!("close {key} {when}"));
        if !matches!(code, Some(1012 | 4008 | 4408)) {
            self.anomaly(format!(
                "closed with {key} {when} (expected only 1012, 4008 or 4408 here)"
            ));
        }
        if code == Some(1012) {
            After::Now
        } else {
            After::Backoff
        }
    }
}

enum After {
    Stop,
    Now,
    Backoff,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Incoming {
    Frame(Value),
    Control,
    Close(Option<u16>),
    End(String),
    Silent,
    Bad(String),
}

async fn read_next(ws: &mut Ws, msgpack: bool) -> Incoming {
    match timeout(LIVENESS, ws.next()).await {
        Err(_) => Incoming::Silent,
        Ok(None) => Incoming::End("stream ended".into()),
        Ok(Some(Err(e))) => Incoming::End(e.to_string()),
        Ok(Some(Ok(m))) => match m {
            Message::Text(t) if !msgpack => match serde_json::from_str::<Value>(&t) {
                Ok(v) => Incoming::Frame(v),
                Err(e) => Incoming::Bad(format!("frame is not JSON ({e}): {t}")),
            },
            Message::Binary(b) if msgpack => match decode_mp(&b).and_then(|v| mp_to_json(&v)) {
                Ok(v) => Incoming::Frame(v),
                Err(e) => Incoming::Bad(format!("bad msgpack frame: {e}")),
            },
            Message::Text(_) | Message::Binary(_) => {
                Incoming::Bad("data frame of the wrong kind for the subprotocol".into())
            }
            Message::Close(cf) => Incoming::Close(cf.map(|c| u16::from(c.code))),
            _ => Incoming::Control,
        },
    }
}

async fn send_frame(ws: &mut Ws, msgpack: bool, frame: &Value) -> bool {
    let msg = if msgpack {
        Message::binary(encode_mp(&json_to_mp(frame)))
    } else {
        Message::text(frame.to_string())
    };
    matches!(
        timeout(Duration::from_secs(5), ws.send(msg)).await,
        Ok(Ok(()))
    )
}

type Pending = HashMap<i64, (usize, Option<u64>, Instant)>;

/// Sends `subscribe` for channel `c` (with `since` after the first time).
async fn send_subscribe(
    s: &Sub,
    ws: &mut Ws,
    c: usize,
    next_id: &mut i64,
    pending: &mut Pending,
) -> bool {
    *next_id += 1;
    let id = *next_id;
    let since = s.since(c);
    let mut f = json!({"op": "subscribe", "id": id, "channel": chan(c)});
    if let Some(p) = since {
        f["since"] = json!(p);
    }
    pending.insert(id, (c, since, Instant::now()));
    send_frame(ws, s.msgpack, &f).await
}

/// One connection: connect, subscribe (or recover), read until it ends.
async fn session(s: &Sub, w: &World, rng: &mut Rng, stop: &mut watch::Receiver<bool>) -> After {
    let gw = w.pick_gateway(rng);
    let port = w.gw_ports[gw];
    let mut url = format!(
        "ws://127.0.0.1:{port}/ws?token={}",
        percent_encode(&s.token)
    );
    let mut since_sent: BTreeMap<usize, Option<u64>> = BTreeMap::new();
    if s.auto {
        let mut rec = Vec::new();
        for &c in &s.channels {
            let since = s.since(c);
            since_sent.insert(c, since);
            if let Some(p) = since {
                rec.push(format!("{}:{p}", chan(c)));
            }
        }
        if !rec.is_empty() {
            url.push_str("&recover=");
            url.push_str(&percent_encode(&rec.join(",")));
        }
    }
    let mut req = url
        .as_str()
        .into_client_request()
        .expect("a ws:// URL with an encoded query is a valid request");
    if s.msgpack {
        req.headers_mut().insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("herald.msgpack"),
        );
    }
    let mut ws = match timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(req),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            s.ended("connect failed", format!("connect to gw-{gw} failed: {e}"));
            return After::Backoff;
        }
        Err(_) => {
            s.ended("connect failed", format!("connect to gw-{gw} timed out"));
            return After::Backoff;
        }
    };
    let conn = {
        let mut l = lock(&s.log);
        l.conns += 1;
        l.conns
    };
    s.event(format!("connection {conn} to gw-{gw}"));
    let welcome = loop {
        match read_next(&mut ws, s.msgpack).await {
            Incoming::Frame(v) => break v,
            Incoming::Control => {}
            Incoming::Close(c) => return s.on_close(c, "before welcome"),
            Incoming::End(e) => {
                s.ended("reset", format!("ended before welcome: {e}"));
                return After::Backoff;
            }
            Incoming::Silent => {
                s.ended("silent", format!("no welcome within {LIVENESS:?}"));
                return After::Backoff;
            }
            Incoming::Bad(e) => {
                s.anomaly(e);
                return After::Backoff;
            }
        }
    };
    if welcome["type"] == "disconnect" {
        // An automatic subscription failed (bus or ingest unavailable): the
        // gateway says so and closes (1012) before any welcome.
        s.event(format!("disconnect {} before welcome", welcome["code"]));
        loop {
            match read_next(&mut ws, s.msgpack).await {
                Incoming::Close(c) => return s.on_close(c, "after a disconnect before welcome"),
                Incoming::Control => {}
                Incoming::Frame(v) => {
                    s.anomaly(format!("frame after a disconnect frame: {v}"));
                    return After::Backoff;
                }
                Incoming::Bad(e) => {
                    s.anomaly(e);
                    return After::Backoff;
                }
                Incoming::End(_) | Incoming::Silent => return After::Backoff,
            }
        }
    }
    if welcome["type"] != "welcome" {
        s.anomaly(format!("first frame is not a welcome: {welcome}"));
        return After::Backoff;
    }
    let mut live: BTreeSet<usize> = BTreeSet::new();
    let mut pending: Pending = HashMap::new();
    let mut retries: Vec<(Instant, usize)> = Vec::new();
    let mut fails: HashMap<usize, u32> = HashMap::new();
    let mut next_id: i64 = 0;
    if s.auto {
        let subs = welcome["subs"].as_array().cloned().unwrap_or_default();
        for e in &subs {
            let Some(c) = e["channel"].as_str().and_then(chan_index) else {
                s.anomaly(format!("welcome.subs entry for an unknown channel: {e}"));
                continue;
            };
            s.on_result(c, since_sent.get(&c).copied().flatten(), e);
            live.insert(c);
        }
        for &c in &s.channels {
            if !live.contains(&c) {
                s.anomaly(format!(
                    "automatic subscription {} missing from welcome.subs: {welcome}",
                    chan(c)
                ));
            }
        }
    }
    if !s.auto {
        for &c in &s.channels {
            if !send_subscribe(s, &mut ws, c, &mut next_id, &mut pending).await {
                s.event("send failed".into());
                return After::Backoff;
            }
        }
    }
    loop {
        // The slow-client fault: not a byte read (so no pong) until then.
        let stall = w.stall_until[s.idx].load(Ordering::SeqCst) - now_ms();
        if stall > 0 {
            let d = Duration::from_millis(u64::try_from(stall).unwrap_or(0));
            tokio::select! {
                _ = stop.changed() => return After::Stop,
                _ = sleep(d) => {}
            }
            continue;
        }
        if s.slow && rng.chance(15) {
            sleep(rng.range_ms(20, 200)).await;
        }
        if let Some(oldest) = pending.values().map(|p| p.2).min()
            && oldest.elapsed() > REPLY_TIMEOUT
        {
            s.ended(
                "no reply",
                format!("no subscribe reply within {REPLY_TIMEOUT:?}"),
            );
            return After::Backoff;
        }
        let retry_at = retries.iter().map(|r| r.0).min();
        tokio::select! {
            _ = stop.changed() => {
                let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                return After::Stop;
            }
            _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                let now = Instant::now();
                let due: Vec<usize> = retries.iter().filter(|r| r.0 <= now).map(|r| r.1).collect();
                retries.retain(|r| r.0 > now);
                for c in due {
                    if !send_subscribe(s, &mut ws, c, &mut next_id, &mut pending).await {
                        s.event("send failed".into());
                        return After::Backoff;
                    }
                }
            }
            inc = read_next(&mut ws, s.msgpack) => match inc {
                Incoming::Frame(v) => match v["type"].as_str() {
                    Some("message") => s.on_message(&v, &live, conn),
                    Some("reply") => {
                        let Some((c, since, asked)) = v["id"].as_i64().and_then(|id| pending.remove(&id)) else {
                            s.anomaly(format!("reply to no pending request: {v}"));
                            continue;
                        };
                        if let Some(res) = v.get("result") {
                            s.on_result(c, since, res);
                            live.insert(c);
                            fails.remove(&c);
                            s.subscribed_after(c, asked.elapsed(), gw);
                        } else {
                            let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
                            *lock(&s.log).sub_errors.entry(code.clone()).or_default() += 1;
                            s.event(format!("subscribe {} failed: {code}", chan(c)));
                            let f = fails.entry(c).or_default();
                            *f += 1;
                            if *f > 4 {
                                return After::Backoff;
                            }
                            retries.push((Instant::now() + rng.range_ms(300, 800), c));
                        }
                    }
                    Some("disconnect") => s.event(format!("disconnect frame {}", v["code"])),
                    _ => {}
                },
                Incoming::Control => {}
                Incoming::Close(c) => return s.on_close(c, &format!("on connection {conn} (gw-{gw})")),
                Incoming::End(e) => {
                    s.ended("reset", format!("connection {conn} (gw-{gw}) ended: {e}"));
                    return After::Backoff;
                }
                Incoming::Silent => {
                    let up = w.gw_up[gw].load(Ordering::SeqCst);
                    s.ended(
                        if up { "silent" } else { "silent (gateway down)" },
                        format!("connection {conn} (gw-{gw}) silent for {LIVENESS:?}"),
                    );
                    return After::Backoff;
                }
                Incoming::Bad(e) => s.anomaly(e),
            },
        }
    }
}

async fn run_subscriber(s: Arc<Sub>, w: Arc<World>, mut rng: Rng, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&s, &w, &mut rng, &mut stop).await {
            After::Stop => return,
            After::Now => {}
            After::Backoff => {
                let d = rng.range_ms(100, 400);
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = sleep(d) => {}
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The truth: history from ingest
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Stored {
    seq: u64,
    id: String,
    ts: i64,
    publisher: String,
    n: u64,
    key: Option<String>,
}

async fn history_once(w: &World, ingest: usize, c: usize) -> Result<(Vec<Stored>, u64), String> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let url = format!(
            "http://127.0.0.1:{}/v1/channels/{}/messages?after={after}&limit=1000",
            w.ingest_ports[ingest],
            chan(c)
        );
        let resp = w
            .http
            .get(url)
            .bearer_auth(&w.api_key)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("history {}: {status} {body}", chan(c)));
        }
        let last = body["last_seq"].as_u64().ok_or("no last_seq")?;
        let msgs = body["messages"].as_array().ok_or("no messages")?;
        for m in msgs {
            let seq = m["seq"].as_u64().ok_or("message without seq")?;
            out.push(Stored {
                seq,
                id: m["id"].as_str().unwrap_or_default().to_string(),
                ts: m["ts"].as_i64().unwrap_or_default(),
                publisher: m["data"]["p"].as_str().unwrap_or_default().to_string(),
                n: m["data"]["n"].as_u64().unwrap_or_default(),
                key: m["data"]["key"].as_str().map(str::to_string),
            });
            after = seq;
        }
        if msgs.is_empty() || after >= last {
            return Ok((out, last));
        }
    }
}

/// Every channel's history and last seq (retried for 60 s).
async fn fetch_truth(w: &World) -> BTreeMap<usize, (Vec<Stored>, u64)> {
    let mut out = BTreeMap::new();
    for c in 0..CHANNELS {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut i = 0;
        let got = loop {
            match history_once(w, i % INGESTS, c).await {
                Ok(h) => break h,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "{}\nreading the history of {}: {e}",
                        w.replay_line(),
                        chan(c)
                    )
                }
                Err(_) => {
                    i += 1;
                    sleep(Duration::from_millis(300)).await;
                }
            }
        };
        out.insert(c, got);
    }
    out
}

// ---------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Figures {
    committed: u64,
    acked_publishes: u64,
    acked_messages: u64,
    deliveries: u64,
    owed: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    mismatched: u64,
    excused: u64,
    recovered_false: u64,
    ack_missing: u64,
    store_problems: u64,
    worst_delay: i64,
    worst_at: String,
    delays: Vec<i64>,
    /// Delays of deliveries not held up by a `slow_client` stall of their
    /// own subscriber.
    delays_unstalled: Vec<i64>,
    stalled_deliveries: u64,
    /// The slowest deliveries: (delay, where, context).
    slowest: Vec<(i64, String)>,
    details: Vec<String>,
}

impl Figures {
    fn detail(&mut self, what: String) {
        if self.details.len() < 60 {
            self.details.push(what);
        }
    }
}

fn faults_near(faults: &[FaultRec], ts: i64) -> String {
    let near: Vec<String> = faults
        .iter()
        .filter(|f| f.end_ms >= ts - 8000 && f.start_ms <= ts + 1000)
        .map(|f| {
            format!(
                "#{} {} {} ({:+.1}s..{:+.1}s)",
                f.n,
                f.kind.name(),
                f.target,
                (f.start_ms - ts) as f64 / 1000.0,
                (f.end_ms - ts) as f64 / 1000.0
            )
        })
        .collect();
    if near.is_empty() {
        "no fault within 8 s before".into()
    } else {
        near.join("; ")
    }
}

fn events_near(log: &SubLog, ts: i64) -> String {
    let ev: Vec<String> = log
        .events
        .iter()
        .filter(|(t, _)| *t >= ts - 5000 && *t <= ts + 15000)
        .take(12)
        .map(|(t, e)| format!("{:+.1}s {e}", (*t - ts) as f64 / 1000.0))
        .collect();
    ev.join(" | ")
}

fn check(
    truth: &BTreeMap<usize, (Vec<Stored>, u64)>,
    subs: &[Arc<Sub>],
    acks: &[Ack],
    faults: &[FaultRec],
    t0_ms: i64,
) -> Figures {
    let mut f = Figures::default();
    // The store: seq 1..=last contiguous, each id once, each (publisher, n)
    // and each key at most once per channel (a retried key is one message).
    for (c, (msgs, last)) in truth {
        f.committed += last;
        let mut ids = HashSet::new();
        let mut pn = HashSet::new();
        let mut keys = HashSet::new();
        for (i, m) in msgs.iter().enumerate() {
            let want = i as u64 + 1;
            if m.seq != want {
                f.store_problems += 1;
                f.detail(format!(
                    "STORE {}: position {i} holds seq {} (want {want})",
                    chan(*c),
                    m.seq
                ));
            }
            if !ids.insert(m.id.clone()) {
                f.store_problems += 1;
                f.detail(format!("STORE {}: id {} stored twice", chan(*c), m.id));
            }
            if !pn.insert((m.publisher.clone(), m.n)) {
                f.store_problems += 1;
                f.detail(format!(
                    "STORE {}: publish {}#{} stored twice (seq {})",
                    chan(*c),
                    m.publisher,
                    m.n,
                    m.seq
                ));
            }
            if let Some(k) = &m.key
                && !keys.insert(k.clone())
            {
                f.store_problems += 1;
                f.detail(format!(
                    "STORE {}: key {k} stored twice (seq {})",
                    chan(*c),
                    m.seq
                ));
            }
        }
        if msgs.len() as u64 != *last {
            f.store_problems += 1;
            f.detail(format!(
                "STORE {}: {} messages in history, last_seq {last}",
                chan(*c),
                msgs.len()
            ));
        }
    }
    // Every acknowledged message is stored at its acknowledged seq.
    f.acked_publishes = acks.len() as u64;
    for a in acks {
        for (c, seq) in &a.seqs {
            f.acked_messages += 1;
            let stored = truth
                .get(c)
                .and_then(|(msgs, _)| msgs.get(usize::try_from(*seq).ok()?.checked_sub(1)?));
            match stored {
                Some(m) if m.id == a.id && m.ts == a.ts => {}
                other => {
                    f.ack_missing += 1;
                    f.detail(format!(
                        "ACK {} seq {seq}: acknowledged id {} (key {:?}) but the store has {:?}",
                        chan(*c),
                        a.id,
                        a.key,
                        other.map(|m| (&m.id, m.ts))
                    ));
                }
            }
        }
    }
    // Every subscriber and channel.
    for s in subs {
        let log = lock(&s.log);
        f.recovered_false += log.recovered_false;
        for &c in &s.channels {
            let (msgs, last) = &truth[&c];
            let Some(t) = log.tracks.get(&c) else {
                f.lost += last;
                f.detail(format!("{} never subscribed to {}", s.name(), chan(c)));
                continue;
            };
            let Some(start) = t.start else {
                f.lost += last;
                f.detail(format!("{} never subscribed to {}", s.name(), chan(c)));
                continue;
            };
            let mut seen = HashSet::new();
            let mut max = start;
            let stalls: Vec<(i64, i64)> = faults
                .iter()
                .filter(|x| x.kind == Kind::SlowClient && x.target == s.name())
                .map(|x| (x.start_ms, x.end_ms))
                .collect();
            for d in log.deliveries.iter().filter(|d| d.ch == c) {
                f.deliveries += 1;
                let delay = d.recv_ms - d.ts;
                f.delays.push(delay);
                if delay > f.worst_delay {
                    f.worst_delay = delay;
                    f.worst_at = format!("{} {} seq {}", s.name(), chan(c), d.seq);
                }
                // A message held up by its own subscriber's deliberate stall
                // says nothing about herald: kept apart.
                let stalled = stalls
                    .iter()
                    .any(|(from, to)| *from <= d.recv_ms && d.ts <= to + STALL_MARGIN_MS);
                if stalled {
                    f.stalled_deliveries += 1;
                } else {
                    f.delays_unstalled.push(delay);
                }
                if !stalled && (f.slowest.len() < 5 || delay > f.slowest[f.slowest.len() - 1].0) {
                    f.slowest.push((
                        delay,
                        format!(
                            "{} {} seq {} committed at {:.1}s on connection {}; faults: {}; events: {}",
                            s.name(),
                            chan(c),
                            d.seq,
                            (d.ts - t0_ms) as f64 / 1000.0,
                            d.conn,
                            faults_near(faults, d.ts),
                            events_near(&log, d.ts)
                        ),
                    ));
                    f.slowest.sort_by_key(|d| std::cmp::Reverse(d.0));
                    f.slowest.truncate(5);
                }
                let stored = usize::try_from(d.seq)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| msgs.get(i));
                if !matches!(stored, Some(m) if m.id == d.id && m.ts == d.ts) {
                    f.mismatched += 1;
                    f.detail(format!(
                        "MISMATCH {} {} seq {}: got id {} ts {}, store has {:?}",
                        s.name(),
                        chan(c),
                        d.seq,
                        d.id,
                        d.ts,
                        stored.map(|m| (&m.id, m.ts))
                    ));
                }
                if !seen.insert(d.seq) {
                    f.duplicated += 1;
                    f.detail(format!(
                        "DUPLICATE {} {} seq {} (connection {}); faults: {}; events: {}",
                        s.name(),
                        chan(c),
                        d.seq,
                        d.conn,
                        faults_near(faults, d.ts),
                        events_near(&log, d.ts)
                    ));
                } else if d.seq <= max {
                    f.reordered += 1;
                    f.detail(format!(
                        "REORDER {} {} seq {} after seq {max} (connection {}; first position {start}); faults: {}; events: {}",
                        s.name(),
                        chan(c),
                        d.seq,
                        d.conn,
                        faults_near(faults, d.ts),
                        events_near(&log, d.ts)
                    ));
                } else {
                    max = d.seq;
                }
            }
            let mut lost_here: Vec<u64> = Vec::new();
            for seq in start + 1..=*last {
                if t.excused.iter().any(|(a, b)| (*a..=*b).contains(&seq)) {
                    f.excused += 1;
                    continue;
                }
                f.owed += 1;
                if !seen.contains(&seq) {
                    f.lost += 1;
                    lost_here.push(seq);
                }
            }
            // One detail per run of consecutive lost seqs.
            let mut i = 0;
            while i < lost_here.len() {
                let mut j = i;
                while j + 1 < lost_here.len() && lost_here[j + 1] == lost_here[j] + 1 {
                    j += 1;
                }
                let (a, b) = (lost_here[i], lost_here[j]);
                let ts = usize::try_from(a)
                    .ok()
                    .and_then(|i| msgs.get(i.wrapping_sub(1)))
                    .map_or(0, |m| m.ts);
                let acked = acks.iter().any(|k| {
                    k.seqs
                        .iter()
                        .any(|(kc, ks)| *kc == c && (a..=b).contains(ks))
                });
                f.detail(format!(
                    "LOST {} {} seqs {a}..={b} (first position {start}, last seen {}, {}acknowledged); committed at {:+.1}s; faults: {}; events: {}",
                    s.name(),
                    chan(c),
                    t.pos,
                    if acked { "" } else { "not " },
                    (ts - t0_ms) as f64 / 1000.0,
                    faults_near(faults, ts),
                    events_near(&log, ts)
                ));
                i = j + 1;
            }
        }
    }
    f
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn caught_up(subs: &[Arc<Sub>], truth: &BTreeMap<usize, (Vec<Stored>, u64)>) -> Vec<String> {
    let mut behind = Vec::new();
    for s in subs {
        let log = lock(&s.log);
        for &c in &s.channels {
            let last = truth[&c].1;
            match log.tracks.get(&c) {
                Some(t) if t.start.is_some() && t.pos >= last => {}
                Some(t) => behind.push(format!("{} {} at {} of {last}", s.name(), chan(c), t.pos)),
                None => behind.push(format!("{} {} not subscribed", s.name(), chan(c))),
            }
        }
    }
    behind
}

async fn join_all_bounded(what: &str, seed: u64, handles: Vec<JoinHandle<()>>, within: Duration) {
    let deadline = Instant::now() + within;
    for h in handles {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, h).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("{}\n{what}: task failed: {e}", replay_line(seed)),
            Err(_) => panic!(
                "{}\n{what}: still running after {within:?}",
                replay_line(seed)
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// DESIGN.md guarantees 1 (durable), 2 (ordered, no duplicates), 3 (no
/// silent loss), 4 (isolation) and 6 (graceful drain) under >= 100 random
/// faults on real processes; see the file header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_fault_run() {
    let seed = seed_from_env();
    let count = fault_count_from_env();
    let line = replay_line(seed);
    println!("{line}");
    {
        let line = line.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            eprintln!("{line}");
            previous(info);
        }));
    }
    // Everything below is bounded; this is the last resort.
    let budget = Duration::from_secs(120)
        + Duration::from_millis(GAP_MS.1) * u32::try_from(count).unwrap_or(u32::MAX)
        + Duration::from_secs(300);
    match timeout(budget, run(seed, count)).await {
        Ok(()) => {}
        Err(_) => panic!("{line}\nthe fault run took longer than {budget:?}"),
    }
}

async fn run(seed: u64, count: usize) {
    let line = replay_line(seed);
    let t0 = Instant::now();
    let mut rng = Rng(seed);
    let plan = plan_faults(&mut rng.fork(), count);
    let w = Arc::new(start_world(seed, t0).await);
    let setup_s = w.secs();
    let day_ms = w.t0_ms.rem_euclid(86_400_000);
    println!(
        "t0 = {:02}:{:02}:{:02}.{:03} UTC (process logs are in UTC; every time below is seconds since t0)",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    );
    println!(
        "[{setup_s:>6.1}s] rig up: postgres, redis, {INGESTS} ingests, {GATEWAYS} gateways, nginx on {}, {} proxies; {count} faults planned over {:.0}s",
        w.nginx.port(),
        w.proxies.len(),
        plan.last().map_or(0.0, |p| p.at.as_secs_f64())
    );

    // Subscribers.
    let (sub_stop_tx, sub_stop) = watch::channel(false);
    let mut srng = rng.fork();
    let mut subs: Vec<Arc<Sub>> = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut chans: BTreeSet<usize> = [i % CHANNELS, (i + 3) % CHANNELS].into();
        for _ in 0..srng.range(1, 3) {
            chans.insert(srng.index(CHANNELS));
        }
        let channels: Vec<usize> = chans.into_iter().collect();
        let auto = i % 2 == 1;
        let names: Vec<String> = channels.iter().map(|c| chan(*c)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut tb = TokenBuilder::new(&format!("sub-{i}")).allow("subscribe", &["fault_*"]);
        if auto {
            tb = tb.channels(&names);
        }
        subs.push(Arc::new(Sub {
            idx: i,
            channels,
            auto,
            msgpack: i % 3 == 2,
            slow: i % 4 == 3,
            token: tb.sign(&w.secret),
            log: Arc::new(Mutex::new(SubLog::default())),
        }));
    }
    let sub_tasks: Vec<JoinHandle<()>> = subs
        .iter()
        .map(|s| {
            tokio::spawn(run_subscriber(
                s.clone(),
                w.clone(),
                srng.fork(),
                sub_stop.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let unsubscribed: usize = subs
            .iter()
            .map(|s| {
                let l = lock(&s.log);
                s.channels
                    .iter()
                    .filter(|c| l.tracks.get(c).is_none_or(|t| t.start.is_none()))
                    .count()
            })
            .sum();
        if unsubscribed == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{unsubscribed} subscriptions still not made 60 s after start",
            w.replay_line()
        );
        sleep(Duration::from_millis(50)).await;
    }
    println!(
        "[{:>6.1}s] {SUBSCRIBERS} subscribers on {} subscriptions",
        w.secs(),
        subs.iter().map(|s| s.channels.len()).sum::<usize>()
    );

    // Publishers.
    let (pub_stop_tx, pub_stop) = watch::channel(false);
    let mut pub_tasks = Vec::new();
    for p in 0..KEYED_PUBLISHERS {
        pub_tasks.push(tokio::spawn(keyed_publisher(
            w.clone(),
            p,
            rng.fork(),
            pub_stop.clone(),
        )));
    }
    for p in 0..UNKEYED_PUBLISHERS {
        pub_tasks.push(tokio::spawn(unkeyed_publisher(
            w.clone(),
            p,
            rng.fork(),
            pub_stop.clone(),
        )));
    }

    // Faults.
    let fault_phase = Instant::now();
    let mut frng = rng.fork();
    let mut fault_tasks = Vec::new();
    for f in plan {
        sleep_until(fault_phase + f.at).await;
        fault_tasks.push(tokio::spawn(run_fault(w.clone(), f, frng.fork())));
    }
    let mut faults: Vec<FaultRec> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    for t in fault_tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, t).await {
            Ok(Ok(rec)) => faults.push(rec),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("{}\na fault task failed: {e}", w.replay_line()),
            Err(_) => panic!(
                "{}\nfaults still running 180 s after the last one started",
                w.replay_line()
            ),
        }
    }
    let faults_done_s = w.secs();

    // Heal everything (every fault heals itself; this is the safety net).
    for p in &w.proxies {
        tokio::task::block_in_place(|| p.heal());
    }
    if lock(&w.redis).pid().is_none() {
        restart_redis(&w).await;
    }
    for (i, g) in w.gateways.iter().enumerate() {
        let mut p = g.lock().await;
        if !healthz(&w.http, p.admin_port).await {
            if let Err(e) = bring_up(&w, &mut p, &format!("gw-{i}")).await {
                panic!("{}\nhealing: {e}", w.replay_line());
            }
            w.gw_up[i].store(true, Ordering::SeqCst);
        }
    }
    for (i, g) in w.ingests.iter().enumerate() {
        let mut p = g.lock().await;
        if !healthz(&w.http, p.admin_port).await {
            if let Err(e) = bring_up(&w, &mut p, &format!("ingest-{i}")).await {
                panic!("{}\nhealing: {e}", w.replay_line());
            }
            w.ingest_up[i].store(true, Ordering::SeqCst);
        }
    }

    // Stop publishing; let keyed retries, bursts and stuck clients finish.
    let _ = pub_stop_tx.send(true);
    join_all_bounded("publishers", seed, pub_tasks, Duration::from_secs(120)).await;
    let aux: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&w.aux));
    join_all_bounded("fault side tasks", seed, aux, Duration::from_secs(120)).await;
    let publish_done_s = w.secs();

    // Quiescence: every subscriber holds its channels' last seq, and the
    // store did not move meanwhile (an unanswered request may commit late).
    let mut truth = fetch_truth(&w).await;
    let mut behind;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let deadline = Instant::now() + SETTLE;
        loop {
            behind = caught_up(&subs, &truth);
            if behind.is_empty() || Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(200)).await;
        }
        let again = fetch_truth(&w).await;
        let moved = again.iter().any(|(c, (_, last))| truth[c].1 != *last);
        truth = again;
        if !moved || rounds >= 3 {
            break;
        }
    }
    let settle_s = w.secs() - publish_done_s;
    if !behind.is_empty() {
        println!(
            "NOT CAUGHT UP after {SETTLE:?}: {}",
            behind
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let _ = sub_stop_tx.send(true);
    join_all_bounded("subscribers", seed, sub_tasks, Duration::from_secs(30)).await;

    // Check.
    let acks = lock(&w.acks).clone();
    let mut fig = check(&truth, &subs, &acks, &faults, w.t0_ms);
    fig.delays.sort_unstable();
    fig.delays_unstalled.sort_unstable();
    let mut per_kind: BTreeMap<&str, usize> = Kind::ALL.iter().map(|k| (k.name(), 0)).collect();
    for f in &faults {
        *per_kind.entry(f.kind.name()).or_default() += 1;
    }
    let mut closes: BTreeMap<String, u64> = BTreeMap::new();
    let mut ends: BTreeMap<&str, u64> = BTreeMap::new();
    let mut sub_errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut conns, mut replayed, mut slow_subscribes) = (0, 0, 0);
    let mut slowest_subscribe = Duration::ZERO;
    let mut sub_anomalies = Vec::new();
    for s in &subs {
        let l = lock(&s.log);
        conns += l.conns;
        replayed += l.replayed;
        slow_subscribes += l.slow_subscribes;
        slowest_subscribe = slowest_subscribe.max(l.slowest_subscribe);
        for (k, v) in &l.closes {
            *closes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &l.ends {
            *ends.entry(k).or_default() += v;
        }
        for (k, v) in &l.sub_errors {
            *sub_errors.entry(k.clone()).or_default() += v;
        }
        sub_anomalies.extend(l.anomalies.iter().cloned());
    }
    let pubs = std::mem::take(&mut *lock(&w.pubs));
    let hung_up_committed: usize = truth
        .values()
        .flat_map(|(msgs, _)| msgs.iter())
        .filter(|m| m.publisher == "hu")
        .map(|m| m.n)
        .collect::<HashSet<u64>>()
        .len();
    let stuck = lock(&w.stuck_outcomes).clone();
    let mut anomalies = lock(&w.anomalies).clone();
    anomalies.extend(sub_anomalies);
    let p50 = percentile(&fig.delays, 0.5);
    let p99 = percentile(&fig.delays, 0.99);
    let p99_unstalled = percentile(&fig.delays_unstalled, 0.99);
    let worst_unstalled = fig.delays_unstalled.last().copied().unwrap_or(0);
    let total_s = w.secs();

    println!("================ fault run figures ================");
    println!("{line}");
    println!(
        "time: setup {setup_s:.0}s, faults until {faults_done_s:.0}s, publishers done {publish_done_s:.0}s, settle {settle_s:.1}s, total {total_s:.0}s"
    );
    println!(
        "faults: {} ({})",
        faults.len(),
        per_kind
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "messages: {} committed on {CHANNELS} channels; {} publishes acknowledged ({} channel messages); {} publish attempts, {} failed ({:?}); {} unkeyed never acknowledged; {} hang-ups; {} keys never acknowledged",
        fig.committed,
        fig.acked_publishes,
        fig.acked_messages,
        pubs.attempts,
        pubs.failed_attempts,
        pubs.failures,
        pubs.unkeyed_unacked,
        pubs.hangups,
        pubs.unacked_keys.len()
    );
    println!(
        "deliveries: {} to {SUBSCRIBERS} subscribers ({} owed); {conns} connections, {replayed} replayed by recovery; closes {closes:?}; other ends {ends:?}; subscribe errors {sub_errors:?}",
        fig.deliveries, fig.owed
    );
    println!(
        "publisher hang-ups: {} sent, {hung_up_committed} of the unkeyed ones committed anyway (owed to subscribers like any other); ingest kills: {} of {} keyed publishes sent just before a SIGKILL needed another attempt",
        pubs.hangups, pubs.burst_retried, pubs.burst
    );
    println!(
        "subscribe replies: slowest {}ms, {slow_subscribes} slower than {SLOW_SUBSCRIBE:?}",
        ms(slowest_subscribe)
    );
    println!("non-reading clients: {stuck:?}");
    println!(
        "lost {}, duplicated {}, reordered {}, mismatched {}, acknowledged-but-not-stored {}, store problems {}, recovered:false {} ({} seqs excused)",
        fig.lost,
        fig.duplicated,
        fig.reordered,
        fig.mismatched,
        fig.ack_missing,
        fig.store_problems,
        fig.recovered_false,
        fig.excused
    );
    println!(
        "delivery delay (receive time - ts): p50 {p50} ms, p99 {p99} ms, worst {} ms at {}",
        fig.worst_delay, fig.worst_at
    );
    println!(
        "  without the {} deliveries held up by their own subscriber's slow_client stall: p99 {p99_unstalled} ms, worst {worst_unstalled} ms; slowest:",
        fig.stalled_deliveries
    );
    for (delay, at) in &fig.slowest {
        println!("  slow: {delay} ms: {at}");
    }
    for d in &fig.details {
        println!("  {d}");
    }
    for a in &anomalies {
        println!("  ANOMALY {a}");
    }
    let summary = format!(
        "FAULT RUN: seed={seed} faults={} messages={} acked={} deliveries={} lost={} duplicated={} reordered={} recovered_false={} worst_delay_ms={} p99_delay_ms={p99} worst_delay_unstalled_ms={worst_unstalled} anomalies={} duration_s={total_s:.0}",
        faults.len(),
        fig.committed,
        fig.acked_publishes,
        fig.deliveries,
        fig.lost,
        fig.duplicated,
        fig.reordered,
        fig.recovered_false,
        fig.worst_delay,
        anomalies.len()
    );
    println!("{summary}");
    // Straight to the process's stderr, past the test harness's capture, so
    // CI's log shows the figures of a passing run too.
    {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{summary}");
    }

    let missing_kinds: Vec<&str> = per_kind
        .iter()
        .filter(|(_, v)| **v == 0)
        .map(|(k, _)| *k)
        .collect();
    let failed = fig.lost
        + fig.duplicated
        + fig.reordered
        + fig.mismatched
        + fig.ack_missing
        + fig.store_problems
        > 0
        || !anomalies.is_empty()
        || !pubs.unacked_keys.is_empty();
    if failed || std::env::var_os("HERALD_FAULT_KEEP_LOGS").is_some() {
        let dir = save_logs(&w).await;
        println!("logs of every process: {}", dir.display());
    }
    if failed {
        println!("{}", log_warnings(&w, 15).await);
    }
    assert!(
        missing_kinds.is_empty() || count < Kind::ALL.len(),
        "{line}\nfault kinds that never ran: {missing_kinds:?}"
    );
    assert!(
        faults.len() >= count,
        "{line}\nonly {} of {count} faults ran",
        faults.len()
    );
    assert!(
        pubs.unacked_keys.is_empty(),
        "{line}\nkeyed publishes never acknowledged in {KEY_RETRY_FOR:?} of retries: {:?}",
        pubs.unacked_keys
    );
    assert!(
        fig.store_problems == 0 && fig.ack_missing == 0,
        "{line}\nthe store broke DESIGN.md guarantee 1/2: {} store problems, {} acknowledged messages not stored as acknowledged (details above)",
        fig.store_problems,
        fig.ack_missing
    );
    assert!(
        fig.lost == 0 && fig.duplicated == 0 && fig.reordered == 0 && fig.mismatched == 0,
        "{line}\ndelivery broke DESIGN.md guarantees 2/3: lost {}, duplicated {}, reordered {}, mismatched {} (details above)",
        fig.lost,
        fig.duplicated,
        fig.reordered,
        fig.mismatched
    );
    assert!(
        anomalies.is_empty(),
        "{line}\n{} protocol anomalies: {anomalies:#?}",
        anomalies.len()
    );
}

// ---------------------------------------------------------------------------
// The checker and the plan, on made-up histories
// ---------------------------------------------------------------------------

fn stored(seq: u64) -> Stored {
    Stored {
        seq,
        id: format!("m{seq}"),
        ts: 1000 + i64::try_from(seq).expect("small"),
        publisher: "k0".into(),
        n: seq,
        key: None,
    }
}

fn made_up_sub(start: u64, got: &[u64], excused: Vec<(u64, u64)>) -> Arc<Sub> {
    let mut log = SubLog::default();
    log.tracks.insert(
        0,
        Track {
            start: Some(start),
            pos: got.iter().copied().max().unwrap_or(start).max(start),
            excused,
        },
    );
    for (i, seq) in got.iter().enumerate() {
        log.deliveries.push(Delivery {
            ch: 0,
            seq: *seq,
            id: format!("m{seq}"),
            ts: 1000 + i64::try_from(*seq).expect("small"),
            recv_ms: 2000 + i64::try_from(i).expect("small"),
            conn: 1,
        });
    }
    Arc::new(Sub {
        idx: 0,
        channels: vec![0],
        auto: false,
        msgpack: false,
        slow: false,
        token: String::new(),
        log: Arc::new(Mutex::new(log)),
    })
}

fn made_up_truth(last: u64) -> BTreeMap<usize, (Vec<Stored>, u64)> {
    (0..CHANNELS)
        .map(|c| {
            if c == 0 {
                (c, ((1..=last).map(stored).collect(), last))
            } else {
                (c, (Vec::new(), 0))
            }
        })
        .collect()
}

/// The checker itself: it must see what it is there to see.
#[test]
fn checker_counts_lost_duplicated_reordered_and_excuses() {
    let truth = made_up_truth(8);
    // First position 1: owed 2..=8. 3 twice, 5 before 4, 8 never.
    let sub = made_up_sub(1, &[2, 3, 3, 5, 4, 6, 7], Vec::new());
    let f = check(&truth, &[sub], &[], &[], 0);
    assert_eq!(
        (f.owed, f.lost, f.duplicated, f.reordered, f.mismatched),
        (7, 1, 1, 1, 0),
        "{:#?}",
        f.details
    );
    // A recovered:false told the subscriber 7..=8 are gone: nothing lost.
    let sub = made_up_sub(1, &[2, 3, 4, 5, 6], vec![(7, 8)]);
    let f = check(&truth, &[sub], &[], &[], 0);
    assert_eq!((f.lost, f.excused, f.owed), (0, 2, 5), "{:#?}", f.details);
    // A seq at or before the first position is out of order.
    let sub = made_up_sub(4, &[3, 5, 6, 7, 8], Vec::new());
    let f = check(&truth, &[sub], &[], &[], 0);
    assert_eq!((f.lost, f.reordered), (0, 1), "{:#?}", f.details);
    // A delivery whose id is not the stored one.
    let sub = made_up_sub(7, &[8], Vec::new());
    lock(&sub.log).deliveries[0].id = "other".into();
    assert_eq!(check(&truth, &[sub], &[], &[], 0).mismatched, 1);
    // An acknowledged message the store does not have at its seq.
    let ack = Ack {
        id: "m9".into(),
        ts: 1009,
        seqs: vec![(0, 9)],
        key: None,
    };
    let f = check(&truth, &[], &[ack], &[], 0);
    assert_eq!(f.ack_missing, 1);
    // A store with a gap, and one publish stored twice.
    let mut bad = made_up_truth(3);
    if let Some((msgs, _)) = bad.get_mut(&0) {
        msgs[1].seq = 5;
        msgs[2].n = 1;
    }
    assert_eq!(check(&bad, &[], &[], &[], 0).store_problems, 2);
}

/// The plan is a function of the seed, starts with one fault of each kind,
/// and never plans a third gateway down or a second ingest down.
#[test]
fn plan_is_seeded_and_keeps_a_gateway_and_an_ingest_up() {
    let a = plan_faults(&mut Rng(42), 150);
    let b = plan_faults(&mut Rng(42), 150);
    let show = |p: &[Planned]| format!("{p:?}");
    assert_eq!(show(&a), show(&b));
    assert_ne!(show(&a), show(&plan_faults(&mut Rng(43), 150)));
    let first: BTreeSet<Kind> = a.iter().take(Kind::ALL.len()).map(|p| p.kind).collect();
    assert_eq!(first.len(), Kind::ALL.len());
    assert!(a.windows(2).all(|w| w[0].at < w[1].at));
    // Planned occupancy windows (as try_plan estimates them).
    let window = |p: &Planned| match p.kind {
        Kind::GatewayKill => Some((p.at, p.at + p.hold + Duration::from_secs(4))),
        Kind::GatewayTerm => Some((p.at, p.at + p.hold + Duration::from_secs(7))),
        _ => None,
    };
    for p in &a {
        let overlapping = a
            .iter()
            .filter_map(&window)
            .filter(|(s, e)| *s <= p.at && p.at < *e)
            .count();
        assert!(
            overlapping < GATEWAYS,
            "fault #{} plans {overlapping} gateways down",
            p.n
        );
    }
}
