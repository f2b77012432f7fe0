//! CPU time and resident memory of processes, read from `/proc`: the
//! server under test (`--pid`, repeatable) and the load generator itself
//! (to show when the generator, not the server, was the bottleneck).
//!
//! CPU is `utime + stime` of `/proc/PID/stat` in clock ticks of 1/100 s
//! (`CLK_TCK` is 100 on every Linux architecture herald targets); memory is
//! `VmRSS` of `/proc/PID/status`. A watcher samples RSS every 200 ms to catch
//! the peak between the before and after readings.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Clock ticks per second for `/proc/PID/stat` times.
const CLK_TCK: f64 = 100.0;
/// RSS sampling period of the watcher.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size in KiB.
    pub rss_kb: u64,
}

/// Reads `/proc/<pid>` (`self` for the current process).
pub fn read(pid: &str) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted
    // after the last ')'. utime and stime are fields 14 and 15 of the line,
    // i.e. the 12th and 13th after the name.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut f = after.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Ticks to seconds: exact for any realistic tick count (< 2^53).
    #[allow(clippy::cast_precision_loss)]
    let cpu_s = (utime + stime) as f64 / CLK_TCK;
    Some(Reading { cpu_s, rss_kb })
}

/// Figures for one process over a measured window.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProcFigures {
    /// The process id (`self` for the load generator).
    pub pid: String,
    /// CPU seconds spent in the window.
    pub cpu_s: f64,
    /// RSS at the window's start, KiB.
    pub rss_before_kb: u64,
    /// RSS at the window's end, KiB.
    pub rss_after_kb: u64,
    /// Highest RSS sampled during the window, KiB.
    pub rss_peak_kb: u64,
}

/// Watches a set of processes over a window.
pub struct Watch {
    pids: Vec<String>,
    before: Vec<Reading>,
    peaks: Arc<Mutex<Vec<u64>>>,
    stop: CancellationToken,
}

impl Watch {
    /// Starts a window now for `pids` (each a number or `self`). Missing
    /// processes read as zero.
    pub fn start(pids: &[String]) -> Self {
        let pids = pids.to_vec();
        let before: Vec<Reading> = pids.iter().map(|p| read(p).unwrap_or_default()).collect();
        let peaks = Arc::new(Mutex::new(
            before.iter().map(|r| r.rss_kb).collect::<Vec<_>>(),
        ));
        let stop = CancellationToken::new();
        let (p2, peaks2, stop2) = (pids.clone(), peaks.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now: Vec<u64> = p2.iter().map(|p| read(p).map_or(0, |r| r.rss_kb)).collect();
                let mut pk = peaks2.lock().unwrap_or_else(|e| e.into_inner());
                for (p, n) in pk.iter_mut().zip(now) {
                    *p = (*p).max(n);
                }
            }
        });
        Self {
            pids,
            before,
            peaks,
            stop,
        }
    }

    /// Current figures since the start (the window goes on).
    pub fn figures(&self) -> Vec<ProcFigures> {
        let peaks = self.peaks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.pids
            .iter()
            .zip(&self.before)
            .zip(peaks)
            .map(|((pid, b), peak)| {
                let now = read(pid).unwrap_or_default();
                ProcFigures {
                    pid: pid.clone(),
                    cpu_s: round3(now.cpu_s - b.cpu_s),
                    rss_before_kb: b.rss_kb,
                    rss_after_kb: now.rss_kb,
                    rss_peak_kb: peak.max(now.rss_kb),
                }
            })
            .collect()
    }

    /// Ends the window: final figures.
    pub fn finish(self) -> Vec<ProcFigures> {
        let f = self.figures();
        self.stop.cancel();
        f
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Rounds to 3 decimals (figures for people and JSON).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_self() {
        let r = read("self").unwrap();
        assert!(r.rss_kb > 0);
        assert!(r.cpu_s >= 0.0);
        assert!(read("999999999").is_none());
    }
}
