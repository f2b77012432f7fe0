//! How and when the server closed each connection of a run: the log the
//! readers fill (`drain`), and the pacing figures derived from it.
//!
//! A close is timed at its first sign on the wire: the `disconnect` frame
//! herald writes just before its close frame (both in one write), else the
//! close frame, else the end of the socket. Its code is the close frame's;
//! 1005 when that frame had no code, 1006 (abnormal) when the socket ended
//! without one (RFC 6455 7.1.5), whatever the `disconnect` frame said.
//!
//! Invariant: a connection's slot is written by its own reader only, and
//! the figures are read after the readers have stopped (the swarm joins
//! them), so relaxed atomics suffice; [`CloseLog::closed_count`] is a
//! progress hint while they run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::procstat::round3;
use crate::report::DrainFigures;
use crate::track::Percentiles;

/// Close code of a close frame without a code (RFC 6455 7.1.5).
pub const NO_STATUS: u16 = 1005;
/// Close code of a socket that ended without a close frame.
pub const ABNORMAL: u16 = 1006;
/// Herald's drain code (PROTOCOL.md section 6).
pub const SERVICE_RESTART: u16 = 1012;

/// One slot per connection index.
pub struct CloseLog {
    /// First sign of the close, ns on the run clock; 0 while open.
    at_ns: Vec<AtomicU64>,
    /// Close code; 0 while open.
    code: Vec<AtomicU32>,
    /// Code of the `disconnect` frame; 0 when none came.
    disconnect: Vec<AtomicU32>,
    /// Connections whose close was recorded.
    closed: AtomicU64,
}

/// What one connection saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closing {
    /// First sign of the close (ns on the run clock), if it closed.
    pub at_ns: Option<u64>,
    /// The close code, if it closed.
    pub code: Option<u16>,
    /// The `disconnect` frame's code, if one came.
    pub disconnect: Option<u16>,
}

impl CloseLog {
    /// A log for connections `0..n`.
    pub fn new(n: usize) -> Self {
        Self {
            at_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            code: (0..n).map(|_| AtomicU32::new(0)).collect(),
            disconnect: (0..n).map(|_| AtomicU32::new(0)).collect(),
            closed: AtomicU64::new(0),
        }
    }

    fn first_sign(&self, i: usize, now_ns: u64) {
        if let Some(at) = self.at_ns.get(i) {
            // 0 means "open", so a close at the clock's origin reads as 1 ns.
            let _ = at.compare_exchange(0, now_ns.max(1), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Connection `i` received a `disconnect` frame with `code`.
    pub fn disconnect(&self, i: usize, code: u16, now_ns: u64) {
        self.first_sign(i, now_ns);
        if let Some(d) = self.disconnect.get(i) {
            let _ = d.compare_exchange(0, u32::from(code), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Connection `i` ended with `code` (a close frame's, [`NO_STATUS`] or
    /// [`ABNORMAL`]).
    pub fn closed(&self, i: usize, code: u16, now_ns: u64) {
        self.first_sign(i, now_ns);
        if let Some(c) = self.code.get(i)
            && c.compare_exchange(0, u32::from(code), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections whose end was recorded so far.
    pub fn closed_count(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Every slot, by connection index.
    pub fn entries(&self) -> Vec<Closing> {
        let nz = |v: u32| u16::try_from(v).ok().filter(|c| *c != 0);
        self.at_ns
            .iter()
            .zip(&self.code)
            .zip(&self.disconnect)
            .map(|((at, code), d)| {
                let code = nz(code.load(Ordering::Relaxed));
                Closing {
                    at_ns: code.and(Some(at.load(Ordering::Relaxed))),
                    code,
                    disconnect: nz(d.load(Ordering::Relaxed)),
                }
            })
            .collect()
    }
}

/// Milliseconds from `term_ns` to `at_ns` (negative: before it).
fn ms_since(at_ns: u64, term_ns: u64) -> f64 {
    let d = i128::from(at_ns) - i128::from(term_ns);
    // ns -> ms as f64: exact enough for any run (< 2^53 ns).
    #[allow(clippy::cast_precision_loss)]
    let ms = d as f64 / 1e6;
    ms
}

/// The close figures of a drain: `entries` from the log, `connected` the
/// connections open when SIGTERM went out at `term_ns`, `window` the drain
/// window the server was given. The server's exit fields stay default.
///
/// Evenness compares the i-th close (by time, from 0) with `window * i /
/// connected`, when herald's pacing (`herald-gateway/src/drain.rs`) makes
/// it due: the first at once, the last at `window * (N - 1) / N`.
pub fn figures(
    entries: &[Closing],
    connected: u64,
    term_ns: u64,
    window: Duration,
) -> DrainFigures {
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut times: Vec<f64> = Vec::with_capacity(entries.len());
    let (mut first_1012, mut last_1012) = (None::<f64>, None::<f64>);
    let mut f = DrainFigures {
        connections: connected,
        window_s: round3(window.as_secs_f64()),
        ..DrainFigures::default()
    };
    for e in entries {
        if let Some(d) = e.disconnect {
            f.disconnect_frames += 1;
            if e.code != Some(d) {
                f.disconnect_mismatches += 1;
            }
        }
        let (Some(code), Some(at)) = (e.code, e.at_ns) else {
            continue;
        };
        *codes.entry(code.to_string()).or_default() += 1;
        let t = ms_since(at, term_ns);
        if t < 0.0 {
            f.closed_before_term += 1;
        }
        if code == SERVICE_RESTART {
            first_1012 = Some(first_1012.map_or(t, |x| x.min(t)));
            last_1012 = Some(last_1012.map_or(t, |x| x.max(t)));
        }
        times.push(t);
    }
    times.sort_by(f64::total_cmp);
    let closed = times.len() as u64;
    f.closed = closed;
    f.still_open = connected.saturating_sub(closed);
    f.codes = codes;
    f.first_1012_s = first_1012.map(|t| round3(t / 1000.0));
    f.last_1012_s = last_1012.map(|t| round3(t / 1000.0));
    f.close_time = exact_percentiles(&times);
    let window_ms = window.as_secs_f64() * 1000.0;
    if let Some(last) = times.last() {
        f.last_close_s = round3(last / 1000.0);
        if window_ms > 0.0 {
            f.last_close_per_window = round3(last / window_ms);
        }
    }
    // Largest gap between consecutive closes, and where it began.
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        if gap > f.max_gap_ms {
            f.max_gap_ms = round3(gap);
            f.max_gap_at_s = round3(w[0] / 1000.0);
        }
    }
    // The i-th close against its due time `window * i / connected`.
    #[allow(clippy::cast_precision_loss)]
    let n = connected.max(1) as f64;
    let (mut late, mut early) = (0.0f64, 0.0f64);
    for (i, t) in times.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let due = window_ms * i as f64 / n;
        late = late.max(t - due);
        early = early.max(due - t);
    }
    f.max_late_ms = round3(late);
    f.max_early_ms = round3(early);
    if window_ms > 0.0 {
        f.max_deviation_per_window = round3(late.max(early) / window_ms);
    }
    // Closes per tenth of the window, and after it.
    let mut tenths = vec![0u64; 11];
    for t in &times {
        let k = if window_ms > 0.0 {
            // Clamped to 0..=10 first, so the cast cannot wrap.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let k = (t / window_ms * 10.0).floor().clamp(0.0, 10.0) as usize;
            k
        } else {
            10
        };
        tenths[k] += 1;
    }
    f.per_tenth = tenths;
    f
}

/// Percentiles of `sorted` (ms, ascending), exact: the histograms of
/// `track` keep 3 significant digits, up to 10 ms off at 10 s, as much as
/// the pacing's tick. A quantile is the smallest sample with at least that
/// share of the samples at or below it (as `hdrhistogram`'s).
fn exact_percentiles(sorted: &[f64]) -> Percentiles {
    let Some(&max) = sorted.last() else {
        return Percentiles::default();
    };
    let at = |q: f64| {
        // ceil(q * n) - 1, in 0..n: q is at most 1.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        round3(sorted[i])
    };
    #[allow(clippy::cast_precision_loss)]
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    Percentiles {
        count: sorted.len() as u64,
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: round3(max),
        mean_ms: round3(mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn log_keeps_the_first_sign_and_the_close_code() {
        let log = CloseLog::new(3);
        log.disconnect(0, 1012, 5 * MS);
        log.closed(0, 1012, 6 * MS);
        log.closed(1, ABNORMAL, 7 * MS);
        log.closed(1, 1000, 8 * MS); // the first end counts
        log.closed(9, 1000, 8 * MS); // out of range: ignored
        assert_eq!(log.closed_count(), 2);
        let e = log.entries();
        assert_eq!(
            e[0],
            Closing {
                at_ns: Some(5 * MS),
                code: Some(1012),
                disconnect: Some(1012)
            }
        );
        assert_eq!(e[1].code, Some(ABNORMAL));
        assert_eq!(e[1].at_ns, Some(7 * MS));
        assert_eq!(e[2], Closing::default());
    }

    fn closing(at_ms: u64, code: u16) -> Closing {
        Closing {
            at_ns: Some(at_ms * MS),
            code: Some(code),
            disconnect: Some(1012),
        }
    }

    #[test]
    fn figures_of_an_even_drain() {
        // SIGTERM at 1000 ms; 4 connections over a 1 s window, due at
        // 0, 250, 500 and 750 ms; one is 30 ms late, one dropped.
        let term = 1000 * MS;
        let entries = [
            closing(1000, 1012),
            closing(1280, 1012),
            closing(1500, 1012),
            closing(1750, ABNORMAL),
            Closing::default(),
        ];
        let f = figures(&entries, 5, term, Duration::from_secs(1));
        assert_eq!((f.connections, f.closed, f.still_open), (5, 4, 1));
        assert_eq!(f.codes.get("1012"), Some(&3));
        assert_eq!(f.codes.get("1006"), Some(&1));
        assert_eq!((f.disconnect_frames, f.disconnect_mismatches), (4, 1));
        assert_eq!(f.first_1012_s, Some(0.0));
        assert_eq!(f.last_1012_s, Some(0.5));
        assert_eq!(f.last_close_s, 0.75);
        assert_eq!(f.close_time.count, 4);
        assert_eq!(
            (
                f.close_time.p50_ms,
                f.close_time.p90_ms,
                f.close_time.max_ms
            ),
            (280.0, 750.0, 750.0)
        );
        assert_eq!(f.close_time.mean_ms, 382.5);
        // Due with 5 connected: 0, 200, 400, 600 ms.
        assert_eq!(f.max_late_ms, 150.0);
        assert_eq!(f.max_early_ms, 0.0);
        assert_eq!(f.max_deviation_per_window, 0.15);
        assert_eq!(f.max_gap_ms, 280.0);
        assert_eq!(f.max_gap_at_s, 0.0);
        assert_eq!(f.per_tenth, vec![1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0]);
        assert_eq!(f.closed_before_term, 0);
    }

    #[test]
    fn exact_percentiles_pick_samples() {
        let ms: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = exact_percentiles(&ms);
        assert_eq!(p.count, 1000);
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(exact_percentiles(&[7.0]).p50_ms, 7.0);
    }

    #[test]
    fn figures_of_nothing() {
        let f = figures(&[], 0, 0, Duration::from_secs(1));
        assert_eq!((f.closed, f.still_open), (0, 0));
        assert_eq!(f.first_1012_s, None);
        assert_eq!(f.per_tenth.iter().sum::<u64>(), 0);
    }
}
