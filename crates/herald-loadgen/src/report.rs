//! What a run found: one [`Report`], printed as a table for people and as
//! one `RESULT {json}` line for scripts (the smoke tests and RESULTS.md
//! parse it).

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::procstat::{ProcFigures, round3};
use crate::track::Percentiles;

/// Prefix of the machine-readable line.
pub const RESULT_PREFIX: &str = "RESULT ";

/// Connection figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnFigures {
    /// Connections asked for.
    pub requested: u64,
    /// Welcomes received.
    pub connected: u64,
    /// Connections that failed to open.
    pub failed: u64,
    /// Connections the server closed during the run.
    pub closed_by_server: u64,
    /// Seconds from the first connect to the last welcome.
    pub connect_s: f64,
    /// `connected / connect_s`.
    pub connects_per_s: f64,
    /// Connect + upgrade + welcome latency.
    pub connect_latency: Percentiles,
    /// Welcomes per WebSocket address (`--url`, in order); left out of the
    /// `RESULT` line when there is only one, so single-server records keep
    /// their shape.
    #[serde(skip_serializing_if = "one_or_none")]
    pub per_addr: Vec<AddrConns>,
}

/// Welcomes from one WebSocket address.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AddrConns {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Welcomes received from it.
    pub connected: u64,
}

fn one_or_none(v: &[AddrConns]) -> bool {
    v.len() <= 1
}

/// Delivery figures (fanout, channels, ramp steps).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryFigures {
    /// Publishes sent.
    pub published: u64,
    /// Publishes answered 200.
    pub acknowledged: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Times the publisher waited for a free request slot.
    pub publisher_behind: u64,
    /// Receipts per acknowledged publish.
    pub subscribers_per_message: u64,
    /// Receipts expected.
    pub expected: u64,
    /// Unique receipts.
    pub delivered: u64,
    /// Expected receipts that never came.
    pub lost: u64,
    /// Repeated receipts.
    pub duplicates: u64,
    /// Receipts after a higher seq.
    pub reordered: u64,
    /// Message frames without a known message number or on a channel the
    /// connection did not hold.
    pub foreign: u64,
    /// Messages every subscriber received.
    pub complete_messages: u64,
    /// Seconds of the measured window (publishing + drain).
    pub window_s: f64,
    /// `delivered / window_s`.
    pub delivered_per_s: f64,
    /// Publish send -> frame received, per delivery.
    pub latency: Percentiles,
    /// Publish send -> frame received at the message's last subscriber.
    pub last_subscriber: Percentiles,
    /// Publish request -> 200 answer.
    pub publish_latency: Percentiles,
}

/// Ingest throughput figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestFigures {
    /// Requests sent.
    pub sent: u64,
    /// Answered 200 (persisted).
    pub persisted: u64,
    /// Anything else.
    pub errors: u64,
    /// Seconds from the first request to the last answer.
    pub elapsed_s: f64,
    /// `persisted / elapsed_s`.
    pub persisted_per_s: f64,
    /// Request latency.
    pub latency: Percentiles,
}

/// RSS at one connection count (idle).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RssPoint {
    /// Connections open.
    pub connections: u64,
    /// Server RSS (sum over `--pid`s), KiB.
    pub rss_kb: u64,
    /// `(rss - rss before) / connections`, bytes.
    pub rss_per_conn_bytes: f64,
}

/// Idle figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleFigures {
    /// Server RSS before the first connection, KiB.
    pub rss_before_kb: u64,
    /// Server RSS with every connection open (after settling), KiB.
    pub rss_connected_kb: u64,
    /// Server RSS at the end of the hold, KiB.
    pub rss_after_hold_kb: u64,
    /// `(rss_connected - rss_before) / connections`, bytes.
    pub rss_per_conn_bytes: f64,
    /// RSS at each checkpoint.
    pub points: Vec<RssPoint>,
}

/// Drain figures: how a SIGTERMed server closed its connections. Times are
/// seconds (`_s`) or milliseconds (`_ms`) after the SIGTERM, as the load
/// generator saw them (it shares the machine with the server).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainFigures {
    /// Connections open (welcomed) when the SIGTERM went out.
    pub connections: u64,
    /// The drain window the server was started with.
    pub window_s: f64,
    /// Connections whose end was seen.
    pub closed: u64,
    /// Connections still open when the run stopped waiting.
    pub still_open: u64,
    /// Close code (`"1012"`, `"1006"` for a socket that just ended, ...)
    /// -> connections.
    pub codes: BTreeMap<String, u64>,
    /// Connections that received a `disconnect` frame.
    pub disconnect_frames: u64,
    /// Of those, the ones whose close code was not the frame's.
    pub disconnect_mismatches: u64,
    /// Closes seen before the SIGTERM (none expected).
    pub closed_before_term: u64,
    /// First 1012.
    pub first_1012_s: Option<f64>,
    /// Last 1012.
    pub last_1012_s: Option<f64>,
    /// Last close of any code.
    pub last_close_s: f64,
    /// `last_close_s / window_s` (the target: at most 1.1).
    pub last_close_per_window: f64,
    /// Close times (ms after the SIGTERM), every code; exact, from the
    /// sorted times (not a histogram).
    pub close_time: Percentiles,
    /// Largest gap between two consecutive closes.
    pub max_gap_ms: f64,
    /// Where that gap began.
    pub max_gap_at_s: f64,
    /// Largest lateness of the i-th close against `window * i / N`.
    pub max_late_ms: f64,
    /// Largest earliness of the i-th close against `window * i / N`.
    pub max_early_ms: f64,
    /// `max(max_late_ms, max_early_ms) / window`.
    pub max_deviation_per_window: f64,
    /// Closes in each tenth of the window, then after the window (11).
    pub per_tenth: Vec<u64>,
    /// When the server's exit was seen (it is the loadgen's child).
    pub server_exit_s: Option<f64>,
    /// Its exit status, when it exited normally.
    pub server_exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub server_exit_signal: Option<i32>,
    /// The run killed the server: it outlived the window + 5 s + slack.
    pub server_killed: bool,
    /// Server CPU seconds from the SIGTERM to its exit.
    pub server_drain_cpu_s: f64,
    /// Server RSS with every connection open, just before the SIGTERM, KiB.
    pub server_rss_at_term_kb: u64,
}

/// One ramp step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RampStep {
    /// Target publish rate (messages/s).
    pub rate: f64,
    /// Whether the step met the bound with no loss.
    pub passed: bool,
    /// Delivery figures of the step.
    pub delivery: DeliveryFigures,
    /// Server CPU seconds in the step.
    pub server_cpu_s: f64,
    /// Delivered frames per server CPU second.
    pub frames_per_server_cpu_s: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `fanout`, `channels`, `connect`, `idle`, `ingest`, `ramp` or `drain`.
    pub scenario: String,
    /// Random id of the run (in channel names and subs).
    pub run: String,
    /// The parameters, as given.
    pub params: serde_json::Value,
    /// Wall-clock seconds of the whole run.
    pub elapsed_s: f64,
    /// The hard deadline fired.
    pub timed_out: bool,
    /// Connection figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnFigures>,
    /// Delivery figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryFigures>,
    /// Ingest figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestFigures>,
    /// Idle figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleFigures>,
    /// Drain figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainFigures>,
    /// Ramp steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<RampStep>>,
    /// Ramp: the highest rate that passed (0 when none did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sustained_rate: Option<f64>,
    /// The server processes (`--pid`) over the measured window.
    pub server: Vec<ProcFigures>,
    /// Sum of `server[].cpu_s`.
    pub server_cpu_s: f64,
    /// Delivered frames (or persisted publishes, or connections) per
    /// server CPU second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_server_cpu_s: Option<f64>,
    /// The load generator itself over the same window.
    pub loadgen: ProcFigures,
    /// First errors seen (connect, publish), for diagnosis.
    pub errors: Vec<String>,
}

impl Report {
    /// The machine-readable line.
    pub fn result_line(&self) -> String {
        format!(
            "{RESULT_PREFIX}{}",
            serde_json::to_string(self).expect("a report always serializes")
        )
    }

    /// A readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<34} {v}");
        };
        row("scenario", format!("{} (run {})", self.scenario, self.run));
        row("params", self.params.to_string());
        row("elapsed", format!("{:.2} s", self.elapsed_s));
        if self.timed_out {
            row("TIMED OUT", "hard deadline reached".into());
        }
        if let Some(c) = &self.connections {
            row(
                "connections",
                format!(
                    "{} of {} ({} failed, {} closed by server)",
                    c.connected, c.requested, c.failed, c.closed_by_server
                ),
            );
            if c.per_addr.len() > 1 {
                let per: Vec<String> = c
                    .per_addr
                    .iter()
                    .map(|a| format!("{} {}", a.addr, a.connected))
                    .collect();
                row("connections per address", per.join(", "));
            }
            row("connect time", format!("{:.3} s", c.connect_s));
            row("connect rate", format!("{:.0} /s", c.connects_per_s));
            row("connect latency", pct(&c.connect_latency));
        }
        if let Some(d) = &self.delivery {
            delivery_rows(&mut row, d);
        }
        if let Some(i) = &self.ingest {
            row(
                "publishes",
                format!(
                    "{} sent, {} persisted, {} errors",
                    i.sent, i.persisted, i.errors
                ),
            );
            row(
                "persisted rate",
                format!("{:.0} /s over {:.2} s", i.persisted_per_s, i.elapsed_s),
            );
            row("publish latency", pct(&i.latency));
        }
        if let Some(i) = &self.idle {
            row("rss before", format!("{} KiB", i.rss_before_kb));
            row("rss connected", format!("{} KiB", i.rss_connected_kb));
            row("rss after hold", format!("{} KiB", i.rss_after_hold_kb));
            row(
                "rss per connection",
                format!("{:.0} bytes", i.rss_per_conn_bytes),
            );
            for p in &i.points {
                row(
                    &format!("  at {} connections", p.connections),
                    format!("{} KiB, {:.0} bytes/conn", p.rss_kb, p.rss_per_conn_bytes),
                );
            }
        }
        if let Some(d) = &self.drain {
            drain_rows(&mut row, d);
        }
        if let Some(steps) = &self.steps {
            for s in steps {
                row(
                    &format!("step {:.0} msg/s", s.rate),
                    format!(
                        "{} | last-sub {} | lost {} | {:.0} frames/cpu-s",
                        if s.passed { "pass" } else { "FAIL" },
                        pct(&s.delivery.last_subscriber),
                        s.delivery.lost,
                        s.frames_per_server_cpu_s
                    ),
                );
            }
        }
        if let Some(r) = self.max_sustained_rate {
            row("max sustained rate", format!("{r:.0} msg/s"));
        }
        for s in &self.server {
            row(
                &format!("server pid {}", s.pid),
                format!(
                    "cpu {:.2} s, rss {} -> {} KiB (peak {})",
                    s.cpu_s, s.rss_before_kb, s.rss_after_kb, s.rss_peak_kb
                ),
            );
        }
        if let Some(x) = self.per_server_cpu_s {
            row("per server cpu-second", format!("{x:.0}"));
        }
        row(
            "loadgen",
            format!(
                "cpu {:.2} s, rss {} KiB",
                self.loadgen.cpu_s, self.loadgen.rss_after_kb
            ),
        );
        for e in &self.errors {
            row("error", e.clone());
        }
        t
    }
}

fn delivery_rows(row: &mut impl FnMut(&str, String), d: &DeliveryFigures) {
    row(
        "published",
        format!(
            "{} sent, {} acknowledged, {} errors, behind {}",
            d.published, d.acknowledged, d.publish_errors, d.publisher_behind
        ),
    );
    row(
        "delivered",
        format!(
            "{} of {} expected ({} per message)",
            d.delivered, d.expected, d.subscribers_per_message
        ),
    );
    row(
        "lost / duplicated / reordered",
        format!(
            "{} / {} / {} (foreign {})",
            d.lost, d.duplicates, d.reordered, d.foreign
        ),
    );
    row(
        "delivered rate",
        format!("{:.0} frames/s over {:.2} s", d.delivered_per_s, d.window_s),
    );
    row("latency (per delivery)", pct(&d.latency));
    row("latency (last subscriber)", pct(&d.last_subscriber));
    row("publish request latency", pct(&d.publish_latency));
}

fn drain_rows(row: &mut impl FnMut(&str, String), d: &DrainFigures) {
    let secs = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |s| format!("{s:.3} s"));
    let codes: Vec<String> = d.codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    row(
        "drained",
        format!(
            "{} of {} closed ({} still open), window {:.3} s",
            d.closed, d.connections, d.still_open, d.window_s
        ),
    );
    row("close codes", codes.join(", "));
    row(
        "disconnect frames",
        format!(
            "{} ({} not matching the close)",
            d.disconnect_frames, d.disconnect_mismatches
        ),
    );
    row(
        "first / last 1012",
        format!("{} / {}", secs(d.first_1012_s), secs(d.last_1012_s)),
    );
    row(
        "last close / window",
        format!(
            "{:.3} s = {:.3} x window",
            d.last_close_s, d.last_close_per_window
        ),
    );
    row("close time after SIGTERM", pct(&d.close_time));
    row(
        "largest gap",
        format!("{:.3} ms (from {:.3} s)", d.max_gap_ms, d.max_gap_at_s),
    );
    row(
        "i-th close vs window*i/N",
        format!(
            "late <= {:.3} ms, early <= {:.3} ms ({:.4} x window)",
            d.max_late_ms, d.max_early_ms, d.max_deviation_per_window
        ),
    );
    row(
        "closes per tenth of window",
        format!("{:?} (last: after the window)", d.per_tenth),
    );
    let exit = match (d.server_exit_code, d.server_exit_signal) {
        (Some(c), _) => format!("code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        (None, None) => "not seen".to_owned(),
    };
    row(
        "server exit",
        format!(
            "{} after {}{}",
            exit,
            secs(d.server_exit_s),
            if d.server_killed {
                " (KILLED by the run)"
            } else {
                ""
            }
        ),
    );
    row(
        "server during the drain",
        format!(
            "cpu {:.2} s, rss at SIGTERM {} KiB",
            d.server_drain_cpu_s, d.server_rss_at_term_kb
        ),
    );
}

fn pct(p: &Percentiles) -> String {
    format!(
        "p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms (n={})",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.count
    )
}

/// `num / den`, 0 when `den` is 0, rounded to 3 decimals.
pub fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 { round3(num / den) } else { 0.0 }
}
