//! `drain`: how a SIGTERMed herald closes its connections (DESIGN.md
//! guarantee 6; PROTOCOL.md section 7: 1012 at an even pace over the drain
//! window, exit 0 once all are closed, at most the window + 5 s).
//!
//! The run starts its own `herald dev` with `--drain-window` (a server it
//! did not start could not tell it its exit status), opens N connections
//! with one subscription each (as `idle`), and once every one is welcomed
//! sends the SIGTERM. Each reader records its close code and the time of
//! the close's first sign (`closes.rs`); the run waits for the server's
//! exit, then for the readers, and reports the pacing: codes, first and
//! last 1012, percentiles, largest gap, the i-th close against `window * i
//! / N`, exit time and status. Nothing is judged here: the figures are
//! measured, and the server shares the machine with the load generator.

use anyhow::bail;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conns::{conn_figures, swarm_errors};
use super::{put_figures, run_id};
use crate::closes::{self, CloseLog};
use crate::procstat::{self, Watch, round3};
use crate::report::Report;
use crate::server::{DevServer, TAIL_LINES};
use crate::swarm::{Swarm, SwarmSpec};
use crate::track::now_ns;

/// Exit bound of PROTOCOL.md section 7 beyond the window.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How much longer than the window + [`EXIT_GRACE`] the run waits for the
/// exit before it kills the server (and says so).
const EXIT_SLACK: Duration = Duration::from_secs(5);
/// After the exit, how long the readers get to see their sockets end.
const AFTER_EXIT: Duration = Duration::from_secs(2);
/// Server CPU sampling period during the drain (the last sample before the
/// exit is the figure, so up to this much of the end is not counted).
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// `drain` parameters.
#[derive(Debug, Clone)]
pub struct Drain {
    /// The herald binary to start.
    pub herald_bin: PathBuf,
    /// Connections to open.
    pub connections: usize,
    /// The server's `--drain-window`.
    pub window: Duration,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Bound on one connect + welcome.
    pub connect_timeout: Duration,
}

/// Longest the run waits from the SIGTERM to the server's exit and its
/// sockets' ends; the binary's hard deadline adds the start and connects.
pub fn after_term(window: Duration) -> Duration {
    window + EXIT_GRACE + EXIT_SLACK + AFTER_EXIT
}

/// `drain`: N connections, SIGTERM, every close timed.
pub async fn drain(p: &Drain) -> anyhow::Result<Report> {
    let started = Instant::now();
    if p.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let window = format!("{}ms", p.window.as_millis());
    let mut server = DevServer::start(&p.herald_bin, &["--drain-window".into(), window]).await?;
    let pid = server.pid().to_string();
    let run = run_id();
    let r2 = run.clone();
    let spec = SwarmSpec {
        run: run.clone(),
        channels: Arc::new(move |i| vec![format!("lg_{r2}_c{i}")]),
        concurrency: p.connect_concurrency,
        timeout: p.connect_timeout,
    };
    let log = Arc::new(CloseLog::new(p.connections));
    let mut swarm = Swarm::new(&server.target, spec, None).with_close_log(log.clone());
    let watch = Watch::start(&[pid.clone(), "self".into()]);
    let t0 = Instant::now();
    swarm.grow(p.connections).await?;
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = swarm.connected();
    let connect_figures = watch.finish();
    let at_term = procstat::read(&pid).unwrap_or_default();

    let term_ns = now_ns();
    server.terminate()?;
    let mut last = at_term;
    let mut exit_ns = None;
    let mut status = None;
    {
        let limit = tokio::time::sleep(p.window + EXIT_GRACE + EXIT_SLACK);
        let wait = server.wait();
        tokio::pin!(limit, wait);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                s = &mut wait => {
                    exit_ns = Some(now_ns());
                    status = Some(s?);
                    break;
                }
                _ = tick.tick() => {
                    // A zombie still reads until reaped: its CPU is final.
                    if let Some(r) = procstat::read(&pid) {
                        last = r;
                    }
                }
                _ = &mut limit => break,
            }
        }
    }
    let killed = status.is_none();
    if killed {
        status = Some(server.kill().await?);
    }
    // The server is gone: every socket has ended or is about to.
    let until = tokio::time::Instant::now() + AFTER_EXIT;
    while log.closed_count() < connected && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let conns = conn_figures(&swarm, p.connections, connect_secs);
    let mut errors = swarm_errors(&swarm);
    swarm.stop().await;

    let mut f = closes::figures(&log.entries(), connected, term_ns, p.window);
    f.server_exit_s = exit_ns.map(|e| ns_to_s(e.saturating_sub(term_ns)));
    if let Some(s) = status {
        use std::os::unix::process::ExitStatusExt;
        f.server_exit_code = s.code();
        f.server_exit_signal = s.signal();
        if s.code() != Some(0) {
            errors.push(format!(
                "herald exited with {s}; its log ends:\n{}",
                server.log_tail(TAIL_LINES)
            ));
        }
    }
    f.server_killed = killed;
    f.server_drain_cpu_s = round3((last.cpu_s - at_term.cpu_s).max(0.0));
    f.server_rss_at_term_kb = at_term.rss_kb;
    let mut r = Report {
        scenario: "drain".into(),
        run,
        params: serde_json::json!({
            "connections": p.connections, "window_s": p.window.as_secs_f64(),
            "concurrency": p.connect_concurrency,
        }),
        connections: Some(conns),
        drain: Some(f),
        errors,
        ..Report::default()
    };
    // Server and loadgen figures: the connect phase, up to the SIGTERM.
    put_figures(&mut r, connect_figures);
    r.elapsed_s = round3(started.elapsed().as_secs_f64());
    Ok(r)
}

/// ns -> s, 3 decimals.
fn ns_to_s(ns: u64) -> f64 {
    // Exact below 2^53 ns (104 days).
    #[allow(clippy::cast_precision_loss)]
    let s = ns as f64 / 1e9;
    round3(s)
}
