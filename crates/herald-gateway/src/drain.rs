//! The pacing of a drain (DESIGN.md guarantee 6): N connections are told
//! 1012 evenly over the drain window, in batches, one batch per tick.
//!
//! Why batches: a sleep of `window / N` between single closes cannot be
//! kept, since tokio timers have a 1 ms granularity and every sleep rounds
//! up (4,000 connections took 5.6 s for a 1 s window; 100,000 would take
//! ~100 s for 10 s, and the orchestrator's SIGKILL at the grace period turns
//! the rest's 1012 into 1006). Here the number due is computed from the time
//! elapsed since the start, so late ticks catch up instead of adding up, and
//! the last batch goes out by the window's end whatever N is.

use std::ops::Range;
use std::time::Duration;

/// Time between two batches.
pub const TICK: Duration = Duration::from_millis(10);

/// How many of `n` closes are due `elapsed` into a drain of `window`: the
/// first at once, the last at `window * (n - 1) / n`, evenly between.
pub fn due(n: usize, window: Duration, elapsed: Duration) -> usize {
    if n == 0 {
        return 0;
    }
    let w = window.as_nanos();
    if w == 0 || elapsed >= window {
        return n;
    }
    let n128 = n as u128; // usize fits u128
    let k = n128 * elapsed.as_nanos() / w + 1;
    usize::try_from(k).map_or(n, |k| k.min(n))
}

/// Calls `close` with consecutive index ranges covering `0..n`, paced over
/// `window` by [`due`], one call per [`TICK`] at most; returns once all are
/// closed (by the end of the window, plus the tick and the time `close`
/// takes).
pub async fn pace(n: usize, window: Duration, mut close: impl FnMut(Range<usize>)) {
    let start = tokio::time::Instant::now();
    let mut done = 0;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while done < n {
        tick.tick().await;
        let now = due(n, window, start.elapsed());
        if now > done {
            close(done..now);
            done = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_spreads_evenly_and_ends_by_the_window() {
        let w = Duration::from_secs(10);
        assert_eq!(due(0, w, Duration::ZERO), 0);
        assert_eq!(due(100_000, w, Duration::ZERO), 1);
        assert_eq!(due(100_000, w, Duration::from_secs(5)), 50_001);
        assert_eq!(due(100_000, w, w), 100_000);
        assert_eq!(due(100_000, w, w * 2), 100_000);
        assert_eq!(due(3, Duration::ZERO, Duration::ZERO), 3);
        // Monotone in time.
        let mut last = 0;
        for ms in 0..=10_000 {
            let d = due(19_000, w, Duration::from_millis(ms));
            assert!(d >= last);
            last = d;
        }
    }

    /// The drain finishes inside its window (+ one tick) for N up to
    /// 100,000, each connection closed once, in batches at an even pace.
    #[tokio::test(start_paused = true)]
    async fn pace_keeps_the_window_for_large_n() {
        for (n, window) in [
            (100_000usize, Duration::from_secs(10)),
            (19_000, Duration::from_secs(10)),
            (4_000, Duration::from_secs(1)),
            (7, Duration::from_secs(1)),
            (1, Duration::from_secs(10)),
        ] {
            let start = tokio::time::Instant::now();
            let mut closed = vec![false; n];
            let mut halfway = None;
            pace(n, window, |r| {
                for i in r {
                    assert!(!closed[i], "closed twice");
                    closed[i] = true;
                    if i == n / 2 {
                        halfway = Some(start.elapsed());
                    }
                }
            })
            .await;
            let took = start.elapsed();
            assert!(closed.iter().all(|c| *c));
            assert!(took <= window + TICK, "n={n}: {took:?} for {window:?}");
            // Even: connection i goes out at window * i / n, the middle
            // one about halfway through.
            let half = halfway.expect("closed the middle one");
            let mid = window.mul_f64((n / 2) as f64 / n as f64);
            assert!(
                half + TICK * 2 >= mid && half <= mid + TICK * 2,
                "n={n}: middle at {half:?}"
            );
        }
    }
}
