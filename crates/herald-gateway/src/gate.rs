//! When fan-out writes to sockets itself and when it leaves the writing to
//! the connections' writer tasks (issue 13).
//!
//! A direct write ([`crate::outbox::Outbox::deliver`]) costs one `write(2)`
//! per delivery on the hub's thread and no task wake-up: the cheapest path
//! while messages are sparse (at 20 msg/s no two messages of a connection
//! can share a write anyway). But all of a message's sends then run on one
//! thread, one syscall each. When deliveries come faster than most of a
//! core can send them one by one (5,000 subscribers at 50 msg/s is ~1.1 s
//! of sends per second), the hub falls behind and latency grows without
//! bound. Queued frames (`Outbox::push`) are written by the connections'
//! tasks, on every worker thread, and a connection that is behind writes
//! all its waiting frames in one `writev`: more CPU per delivery while
//! idle, far less under load.
//!
//! The gate decides per window of [`WINDOW`]: it counts the window's
//! deliveries and estimates what writing them directly costs (the measured
//! cost per delivery of the direct fan-outs so far, [`PRIOR_COST_NS`] before
//! the first); when that is more than [`MAX_LOAD`] of the window, the next
//! window queues, otherwise it writes directly. The estimate counts
//! deliveries, not the time queued fan-outs take, so the mode does not
//! flip back merely because queueing is cheap for the hub.
//!
//! Only which path a frame takes changes: order, bounds and close rules are
//! the outbox's, the same on both paths.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often the mode is decided.
pub const WINDOW: Duration = Duration::from_millis(100);
/// Most of one thread the direct sends may take, as a fraction of the
/// window. 0.8 rather than the first 0.5: at 5,000 subscribers × 20 msg/s
/// (0.5-0.75 of a thread of sends) queueing cost a third more CPU per
/// delivery and a worse p99 than writing directly, while at 0.8 and above
/// direct sends alone approach a full core and latency grows (ramps in
/// benches/RESULTS.md, issue 13).
pub const MAX_LOAD: f64 = 0.8;
/// Cost of one direct delivery assumed before any was measured (loopback
/// `write(2)` of a ~250-byte frame on the record's machine: ~5 µs).
pub const PRIOR_COST_NS: f64 = 5_000.0;
/// Fewest direct deliveries in a window for its cost to count (a few sends
/// on a cold cache say little).
const MIN_SAMPLE: u64 = 64;

/// The fan-out mode, shared by the hub's threads.
pub struct Gate {
    state: Mutex<State>,
}

struct State {
    direct: bool,
    window_start: Instant,
    deliveries: u64,
    direct_ns: u64,
    direct_deliveries: u64,
    cost_ns: f64,
}

impl Gate {
    /// A gate that starts with direct writes.
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    fn starting_at(now: Instant) -> Self {
        Self {
            state: Mutex::new(State {
                direct: true,
                window_start: now,
                deliveries: 0,
                direct_ns: 0,
                direct_deliveries: 0,
                cost_ns: PRIOR_COST_NS,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the next fan-out writes directly.
    pub fn direct(&self) -> bool {
        self.lock().direct
    }

    /// One fan-out done: `deliveries` frames handed out since `started`,
    /// directly or not (one clock read for both the cost and the window).
    pub fn record(&self, deliveries: usize, started: Instant, direct: bool) {
        let now = Instant::now();
        self.record_at(
            now,
            deliveries,
            now.saturating_duration_since(started),
            direct,
        );
    }

    fn record_at(&self, now: Instant, deliveries: usize, took: Duration, direct: bool) {
        let mut s = self.lock();
        let n = deliveries as u64;
        s.deliveries += n;
        if direct {
            s.direct_ns += u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
            s.direct_deliveries += n;
        }
        let span = now.saturating_duration_since(s.window_start);
        if span < WINDOW {
            return;
        }
        if s.direct_deliveries >= MIN_SAMPLE {
            #[allow(clippy::cast_precision_loss)]
            let measured = s.direct_ns as f64 / s.direct_deliveries as f64;
            s.cost_ns = 0.5 * s.cost_ns + 0.5 * measured;
        }
        #[allow(clippy::cast_precision_loss)]
        let load = s.deliveries as f64 * s.cost_ns / span.as_nanos() as f64;
        let direct_next = load < MAX_LOAD;
        if direct_next != s.direct {
            tracing::debug!(
                load,
                cost_ns = s.cost_ns,
                direct = direct_next,
                "fan-out mode changed"
            );
        }
        s.direct = direct_next;
        s.window_start = now;
        s.deliveries = 0;
        s.direct_ns = 0;
        s.direct_deliveries = 0;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per_window` fan-outs of `subs` deliveries, each taking
    /// `cost_ns` per delivery when direct, over `windows` windows; the
    /// mode of each window.
    fn drive(
        g: &Gate,
        t0: Instant,
        windows: u32,
        per_window: u32,
        subs: usize,
        cost_ns: u64,
    ) -> Vec<bool> {
        let mut modes = Vec::new();
        for w in 0..windows {
            let mut mode = None;
            for i in 0..per_window {
                let direct = g.direct();
                mode.get_or_insert(direct);
                let took = if direct {
                    Duration::from_nanos(cost_ns * subs as u64)
                } else {
                    // Queueing is cheap for the hub.
                    Duration::from_nanos(300 * subs as u64)
                };
                let at = t0 + WINDOW * w + WINDOW * (i + 1) / per_window;
                g.record_at(at, subs, took, direct);
            }
            modes.push(mode.unwrap_or(true));
        }
        modes
    }

    #[test]
    fn sparse_fan_outs_stay_direct() {
        let t0 = Instant::now();
        let g = Gate::starting_at(t0);
        // 1,000 subscribers at 20 msg/s: 2 messages per 100 ms, 5 µs each:
        // 10 % of a thread.
        let modes = drive(&g, t0, 20, 2, 1000, 5_000);
        assert!(modes.iter().all(|d| *d), "{modes:?}");
    }

    #[test]
    fn heavy_fan_out_queues_and_stays_queued_while_the_load_lasts() {
        let t0 = Instant::now();
        let g = Gate::starting_at(t0);
        // 5,000 subscribers at 50 msg/s: 5 messages per 100 ms, 4.5 µs per
        // send: 1.1 s of sends per second.
        let modes = drive(&g, t0, 20, 5, 5000, 4_500);
        assert!(modes[0], "the first window writes directly (nothing known)");
        assert!(
            modes[1..].iter().all(|d| !*d),
            "queued from the second window on, without flapping: {modes:?}"
        );
    }

    #[test]
    fn the_load_going_away_brings_direct_writes_back() {
        let t0 = Instant::now();
        let g = Gate::starting_at(t0);
        let heavy = drive(&g, t0, 5, 5, 5000, 4_500);
        assert!(!heavy[4]);
        let light = drive(&g, t0 + WINDOW * 5, 5, 1, 100, 4_500);
        assert!(light[1..].iter().all(|d| *d), "{light:?}");
    }

    #[test]
    fn the_measured_cost_decides_not_the_prior() {
        let t0 = Instant::now();
        let g = Gate::starting_at(t0);
        // 14 fan-outs of 1,000 per window: 70 % of a thread at the prior
        // (5 µs), 140 % at the measured 10 µs: queued once measured.
        let modes = drive(&g, t0, 6, 14, 1000, 10_000);
        assert!(modes[0]);
        assert!(modes[1..].iter().all(|d| !*d), "{modes:?}");
    }
}
