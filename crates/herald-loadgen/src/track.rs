//! Delivery accounting shared by the publisher and every receiving
//! connection: the run clock, per-message slots, per-(connection, channel)
//! seq tracking and latency histograms.
//!
//! How figures are derived:
//! - *delivery latency*: receipt time minus the send time the publisher put
//!   in `data.lgt`, recorded at each receipt (one sample per delivery);
//! - *last-subscriber latency*: per message, the latest receipt minus the
//!   send time, for messages every expected subscriber received;
//! - *lost*: expected receipts (subscribers x acknowledged publishes) that
//!   never came; *duplicates*: a seq a connection already had on that
//!   channel; *reordered*: a seq that arrived after a higher one.
//!
//! Invariant: a duplicate never counts as a delivery, so
//! `delivered + lost == expected` whenever nothing unexpected arrived.

use hdrhistogram::Histogram;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

/// The run's clock origin. Publisher and receivers live in one process and
/// share this monotonic reference, so latencies need no clock sync.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds since the run's clock origin.
pub fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Histograms hold microseconds from 1 µs to 10 minutes, 3 significant
/// digits (0.1 % resolution).
const HIST_MAX_US: u64 = 600_000_000;
/// Shards of each latency histogram: receivers on different runtime threads
/// rarely meet on one lock.
const HIST_SHARDS: usize = 16;

/// A latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds are valid")
}

/// A histogram many tasks record into (sharded by a caller-chosen key).
pub struct SharedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        Self {
            shards: (0..HIST_SHARDS)
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }
}

impl SharedHistogram {
    /// Records `ns` (rounded up to whole µs, saturating) into shard `key`.
    pub fn record_ns(&self, key: usize, ns: u64) {
        let us = ns.div_ceil(1000).clamp(1, HIST_MAX_US);
        let mut h = self.shards[key % HIST_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us);
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(|e| e.into_inner());
            out.add(&*h).expect("same bounds");
        }
        out
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Percentiles {
    /// From a µs histogram (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        // u64 µs -> f64 ms: exact below 2^53 µs.
        #[allow(clippy::cast_precision_loss)]
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: (h.mean()).round() / 1000.0,
        }
    }
}

/// Publish outcome of one message slot.
pub mod state {
    /// Not sent yet (or the request is in flight).
    pub const PENDING: u8 = 0;
    /// Answered 200: committed, must be delivered.
    pub const OK: u8 = 1;
    /// Failed or timed out: not expected (it may still arrive).
    pub const FAILED: u8 = 2;
}

/// One published message.
#[derive(Default)]
pub struct Slot {
    /// Send time (ns on the run clock); 0 until sent.
    pub sent_ns: AtomicU64,
    /// Latest receipt time.
    pub last_recv_ns: AtomicU64,
    /// Receipts, duplicates excluded.
    pub received: AtomicU32,
    /// [`state`].
    pub state: AtomicU8,
}

/// Counters of one step of a run (a plain run has one step).
#[derive(Default)]
pub struct StepCounters {
    /// Unique receipts of this step's messages.
    pub delivered: AtomicU64,
    /// Receipts of a seq the connection already had.
    pub duplicates: AtomicU64,
    /// Receipts after a higher seq of the same channel.
    pub reordered: AtomicU64,
    /// Per-delivery latency.
    pub latency: SharedHistogram,
}

/// Every message the run may publish, numbered 0.., split into steps.
pub struct Ledger {
    slots: Vec<Slot>,
    /// First message number of each step, ascending.
    step_starts: Vec<u64>,
    steps: Vec<StepCounters>,
    /// How many receipts each acknowledged message should get.
    pub expected_per_msg: u32,
    /// Message frames that carried no (known) message number.
    pub foreign: AtomicU64,
}

impl Ledger {
    /// A ledger for steps of `caps[i]` messages each.
    pub fn new(caps: &[u64], expected_per_msg: u32) -> Self {
        let mut step_starts = Vec::with_capacity(caps.len());
        let mut total = 0u64;
        for c in caps {
            step_starts.push(total);
            total += c;
        }
        let total = usize::try_from(total).expect("message count fits in memory");
        Self {
            slots: (0..total).map(|_| Slot::default()).collect(),
            step_starts,
            steps: caps.iter().map(|_| StepCounters::default()).collect(),
            expected_per_msg,
            foreign: AtomicU64::new(0),
        }
    }

    /// First message number of step `i`.
    pub fn step_start(&self, i: usize) -> u64 {
        self.step_starts[i]
    }

    /// Capacity (message numbers) of step `i`.
    pub fn step_cap(&self, i: usize) -> u64 {
        let end = self
            .step_starts
            .get(i + 1)
            .copied()
            .unwrap_or(self.slots.len() as u64);
        end - self.step_starts[i]
    }

    /// Slot `n`.
    pub fn slot(&self, n: u64) -> Option<&Slot> {
        self.slots.get(usize::try_from(n).ok()?)
    }

    fn step_of(&self, n: u64) -> usize {
        self.step_starts
            .partition_point(|s| *s <= n)
            .saturating_sub(1)
    }

    /// Counters of step `i`.
    pub fn step(&self, i: usize) -> &StepCounters {
        &self.steps[i]
    }

    /// Records one receipt of message `n`: `dup`/`reordered` from the
    /// connection's [`SeqTrack`], `recv_ns` now, `sent_ns` from the frame.
    pub fn receipt(
        &self,
        key: usize,
        n: Option<u64>,
        sent_ns: Option<u64>,
        recv_ns: u64,
        v: Verdict,
    ) {
        let Some((n, slot)) = n.and_then(|n| Some((n, self.slot(n)?))) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let step = &self.steps[self.step_of(n)];
        match v {
            Verdict::Duplicate => {
                step.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::New { reordered } => {
                if reordered {
                    step.reordered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        step.delivered.fetch_add(1, Ordering::Relaxed);
        slot.received.fetch_add(1, Ordering::Relaxed);
        slot.last_recv_ns.fetch_max(recv_ns, Ordering::Relaxed);
        if let Some(t) = sent_ns {
            step.latency.record_ns(key, recv_ns.saturating_sub(t));
        }
    }

    /// Totals for the first `sent` messages of `step`, read after the run.
    pub fn summarize(&self, step: usize, sent: u64) -> StepSummary {
        let start = self.step_starts[step];
        let c = &self.steps[step];
        let mut out = StepSummary {
            acknowledged: 0,
            failed: 0,
            expected: 0,
            delivered: c.delivered.load(Ordering::Relaxed),
            lost: 0,
            duplicates: c.duplicates.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
            complete: 0,
            latency: c.latency.merged(),
            last_subscriber: new_histogram(),
        };
        let mut last = new_histogram();
        for n in start..start + sent {
            let Some(s) = self.slot(n) else { break };
            match s.state.load(Ordering::Relaxed) {
                state::OK => {
                    out.acknowledged += 1;
                    let got = s.received.load(Ordering::Relaxed);
                    out.expected += u64::from(self.expected_per_msg);
                    out.lost += u64::from(self.expected_per_msg.saturating_sub(got));
                    if got >= self.expected_per_msg {
                        out.complete += 1;
                        let d = s
                            .last_recv_ns
                            .load(Ordering::Relaxed)
                            .saturating_sub(s.sent_ns.load(Ordering::Relaxed));
                        let us = d.div_ceil(1000).clamp(1, HIST_MAX_US);
                        last.saturating_record(us);
                    }
                }
                state::FAILED => out.failed += 1,
                _ => out.failed += 1,
            }
        }
        out.last_subscriber = last;
        out
    }
}

/// What [`Ledger::summarize`] found.
pub struct StepSummary {
    /// Publishes answered 200.
    pub acknowledged: u64,
    /// Publishes that failed or never got an answer.
    pub failed: u64,
    /// Receipts expected (acknowledged x subscribers).
    pub expected: u64,
    /// Unique receipts.
    pub delivered: u64,
    /// Expected receipts that never came.
    pub lost: u64,
    /// Repeated receipts.
    pub duplicates: u64,
    /// Out-of-order receipts.
    pub reordered: u64,
    /// Messages every subscriber received.
    pub complete: u64,
    /// Per-delivery latency (µs).
    pub latency: Histogram<u64>,
    /// Per-message latency at the last subscriber (µs).
    pub last_subscriber: Histogram<u64>,
}

/// Classification of one received seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First receipt; `reordered` when a higher seq came before it.
    New {
        /// Arrived after a higher seq.
        reordered: bool,
    },
    /// Already received.
    Duplicate,
}

/// Seqs one connection received on one channel.
///
/// Keeps the next expected seq and the (normally empty) set of seqs that
/// arrived ahead of a gap, so memory stays constant while delivery is in
/// order, whatever the run's length.
#[derive(Debug)]
pub struct SeqTrack {
    next: u64,
    max_seen: u64,
    ahead: BTreeSet<u64>,
}

impl SeqTrack {
    /// Tracking from a subscription that stood at `after` (the welcome's
    /// seq): the first expected seq is `after + 1`.
    pub fn new(after: u64) -> Self {
        Self {
            next: after + 1,
            max_seen: after,
            ahead: BTreeSet::new(),
        }
    }

    /// Classifies `seq` and remembers it.
    pub fn see(&mut self, seq: u64) -> Verdict {
        if seq < self.next || self.ahead.contains(&seq) {
            return Verdict::Duplicate;
        }
        let reordered = seq < self.max_seen;
        self.max_seen = self.max_seen.max(seq);
        if seq == self.next {
            self.next += 1;
            while self.ahead.remove(&self.next) {
                self.next += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
        Verdict::New { reordered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_track_classifies() {
        let mut t = SeqTrack::new(0);
        assert_eq!(t.see(1), Verdict::New { reordered: false });
        assert_eq!(t.see(3), Verdict::New { reordered: false });
        assert_eq!(t.see(2), Verdict::New { reordered: true });
        assert_eq!(t.see(2), Verdict::Duplicate);
        assert_eq!(t.see(3), Verdict::Duplicate);
        assert_eq!(t.see(5), Verdict::New { reordered: false });
        assert_eq!(t.see(5), Verdict::Duplicate);
        assert_eq!(t.see(4), Verdict::New { reordered: true });
        assert!(t.ahead.is_empty());
        assert_eq!(t.next, 6);
    }

    #[test]
    fn ledger_counts_loss_and_last_subscriber() {
        let l = Ledger::new(&[2, 2], 2);
        for n in 0..4 {
            let s = l.slot(n).unwrap();
            s.sent_ns.store(1_000, Ordering::Relaxed);
            s.state.store(state::OK, Ordering::Relaxed);
        }
        let new = Verdict::New { reordered: false };
        l.receipt(0, Some(0), Some(1_000), 2_000_000, new);
        l.receipt(1, Some(0), Some(1_000), 3_000_000, new);
        l.receipt(1, Some(0), Some(1_000), 3_000_000, Verdict::Duplicate);
        l.receipt(0, Some(1), Some(1_000), 2_000_000, new);
        l.receipt(0, Some(2), Some(1_000), 2_000_000, new);
        l.receipt(0, None, None, 2_000_000, new);
        let s0 = l.summarize(0, 2);
        assert_eq!(
            (s0.expected, s0.delivered, s0.lost, s0.duplicates),
            (4, 3, 1, 1)
        );
        assert_eq!(s0.complete, 1);
        let max = s0.last_subscriber.max();
        assert!((2990..=3010).contains(&max), "{max}");
        let s1 = l.summarize(1, 2);
        assert_eq!((s1.expected, s1.delivered, s1.lost), (4, 1, 3));
        assert_eq!(l.foreign.load(Ordering::Relaxed), 1);
    }
}
