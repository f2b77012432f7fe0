//! A swarm of load connections: opened with bounded concurrency from
//! cycling 127.0.0.N sources, connection `i` to the target's `i % n`-th
//! WebSocket address ([`Target::ws_addr`]), each then read by its own task
//! until the run stops, feeding the [`Ledger`] when there is one and the
//! [`CloseLog`] when there is one.
//!
//! Invariant: every task ends when the swarm's stop token fires or the
//! swarm drops; no connection outlives its run.

use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::closes::{ABNORMAL, CloseLog, NO_STATUS};
use crate::conn::{Conn, Incoming, scan_disconnect, scan_message};
use crate::report::AddrConns;
use crate::target::{SourceAddrs, Target};
use crate::track::{Ledger, SeqTrack, new_histogram, now_ns};

/// Channels of connection `i` (its token's automatic subscriptions).
pub type ChannelsOf = Arc<dyn Fn(usize) -> Vec<String> + Send + Sync>;

/// How to open the swarm's connections.
#[derive(Clone)]
pub struct SwarmSpec {
    /// Run id, part of every `sub` (one sub per connection keeps clear of
    /// the per-user connection limit).
    pub run: String,
    /// Channels of connection `i`.
    pub channels: ChannelsOf,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Bound on one connect + upgrade + welcome.
    pub timeout: Duration,
}

/// Connection-level counters.
#[derive(Default)]
pub struct SwarmStats {
    /// Welcomes received.
    pub connected: AtomicU64,
    /// Connections that failed to open.
    pub failed: AtomicU64,
    /// Connections the server closed during the run.
    pub closed_by_server: AtomicU64,
    /// Message frames on a channel the connection did not hold.
    pub unexpected_channel: AtomicU64,
    /// Close code of the last server close (0: none or EOF).
    pub last_close_code: AtomicU64,
    /// First connect error, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
    /// Welcomes received per WebSocket address, in [`Target::ws_addrs`]
    /// order.
    pub connected_per_addr: Vec<AtomicU64>,
}

/// Open connections and their reader tasks.
pub struct Swarm {
    target: Target,
    spec: SwarmSpec,
    ledger: Option<Arc<Ledger>>,
    closes: Option<Arc<CloseLog>>,
    sources: Arc<SourceAddrs>,
    /// Counters.
    pub stats: Arc<SwarmStats>,
    /// Connect + welcome latency of every successful connection.
    pub connect_latency: Histogram<u64>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    opened: usize,
}

impl Swarm {
    /// An empty swarm; `ledger` receives every message frame.
    pub fn new(target: &Target, spec: SwarmSpec, ledger: Option<Arc<Ledger>>) -> Self {
        Self {
            target: target.clone(),
            spec,
            ledger,
            closes: None,
            sources: Arc::new(SourceAddrs::default()),
            stats: Arc::new(SwarmStats {
                connected_per_addr: target
                    .ws_addrs()
                    .iter()
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                ..SwarmStats::default()
            }),
            connect_latency: new_histogram(),
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
            opened: 0,
        }
    }

    /// Records every server close (code, time, `disconnect` frame) of the
    /// connections opened from now on in `log`, by connection index.
    pub fn with_close_log(mut self, log: Arc<CloseLog>) -> Self {
        self.closes = Some(log);
        self
    }

    /// Connections attempted so far.
    pub fn attempted(&self) -> usize {
        self.opened
    }

    /// Welcomes received so far.
    pub fn connected(&self) -> u64 {
        self.stats.connected.load(Ordering::Relaxed)
    }

    /// Welcomes received so far from each WebSocket address.
    pub fn connected_per_addr(&self) -> Vec<AddrConns> {
        self.target
            .ws_addrs()
            .iter()
            .zip(&self.stats.connected_per_addr)
            .map(|(addr, n)| AddrConns {
                addr: addr.to_string(),
                connected: n.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Opens connections until `total` were attempted; returns once each of
    /// them has its welcome or failed. Tokens are minted before the first
    /// connect so the connect figures measure the server alone.
    pub async fn grow(&mut self, total: usize) -> anyhow::Result<()> {
        let first = self.opened;
        let mut tokens = Vec::with_capacity(total.saturating_sub(first));
        for i in first..total {
            let sub = format!("lg:{}:{i}", self.spec.run);
            tokens.push((i, self.target.token(&sub, &(self.spec.channels)(i))?));
        }
        let slots = Arc::new(Semaphore::new(self.spec.concurrency.max(1)));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Option<u64>>(1024);
        for (i, token) in tokens {
            let permit = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let addr_index = self.target.ws_index(i);
            let (addr, sources, stats, stop, done, timeout) = (
                self.target.ws_addr(i),
                self.sources.clone(),
                self.stats.clone(),
                self.stop.clone(),
                done_tx.clone(),
                self.spec.timeout,
            );
            let sinks = Sinks {
                ledger: self.ledger.clone(),
                closes: self.closes.clone(),
            };
            self.tasks.spawn(async move {
                let t0 = now_ns();
                let opened = Conn::open(addr, Some(sources.next()), &token, timeout).await;
                drop(token);
                drop(permit);
                let conn = match opened {
                    Ok(c) => {
                        stats.connected.fetch_add(1, Ordering::Relaxed);
                        if let Some(n) = stats.connected_per_addr.get(addr_index) {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = done.send(Some(now_ns().saturating_sub(t0))).await;
                        c
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        {
                            let mut f = stats.first_error.lock().unwrap_or_else(|x| x.into_inner());
                            if f.is_none() {
                                *f = Some(format!("{e:#}"));
                            }
                        }
                        let _ = done.send(None).await;
                        return;
                    }
                };
                drop(done);
                read_loop(i, conn, sinks, stats, stop).await;
            });
            // Account for finished handshakes as we go (the channel is bounded).
            while let Ok(r) = done_rx.try_recv() {
                self.record(r);
            }
        }
        drop(done_tx);
        while let Some(r) = done_rx.recv().await {
            self.record(r);
        }
        self.opened = total;
        Ok(())
    }

    fn record(&mut self, r: Option<u64>) {
        if let Some(ns) = r {
            self.connect_latency
                .saturating_record(ns.div_ceil(1000).max(1));
        }
    }

    /// Stops every reader and closes every connection.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Where a reader reports what it sees.
struct Sinks {
    ledger: Option<Arc<Ledger>>,
    closes: Option<Arc<CloseLog>>,
}

/// Reads one connection until the run stops, tracking seqs per channel.
async fn read_loop(
    idx: usize,
    mut conn: Conn,
    sinks: Sinks,
    stats: Arc<SwarmStats>,
    stop: CancellationToken,
) {
    let Sinks { ledger, closes } = sinks;
    let mut tracks: Vec<(Vec<u8>, SeqTrack)> = conn
        .subs
        .iter()
        .map(|(ch, seq)| (ch.as_bytes().to_vec(), SeqTrack::new(*seq)))
        .collect();
    loop {
        // Dropping a half-read frame is fine here: the connection is being
        // closed (read_frame is not cancel-safe, CRATES.md).
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            r = conn.next() => r,
        };
        let frame = match next {
            Ok(Incoming::Text(t)) => t,
            Ok(Incoming::Closed(code)) => {
                stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_close_code
                    .store(u64::from(code.unwrap_or(0)), Ordering::Relaxed);
                if let Some(log) = &closes {
                    log.closed(idx, code.unwrap_or(NO_STATUS), now_ns());
                }
                return;
            }
            Ok(Incoming::Dropped) | Err(_) => {
                stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
                if let Some(log) = &closes {
                    log.closed(idx, ABNORMAL, now_ns());
                }
                return;
            }
        };
        if let Some(log) = &closes
            && let Some(code) = scan_disconnect(&frame)
        {
            log.disconnect(idx, code, now_ns());
            continue;
        }
        let Some(ledger) = &ledger else { continue };
        let Some(d) = scan_message(&frame) else {
            continue;
        };
        let recv = now_ns();
        let Some((_, track)) = tracks.iter_mut().find(|(c, _)| c[..] == *d.channel) else {
            stats.unexpected_channel.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let verdict = track.see(d.seq);
        ledger.receipt(idx, d.n, d.sent_ns, recv, verdict);
    }
}
