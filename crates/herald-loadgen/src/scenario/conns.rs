//! Connection scenarios.
//!
//! - `connect`: a storm of N connections, as fast as `--connect-concurrency`
//!   handshakes in flight allow; the figure is connections per second until
//!   the last welcome (each connection authenticated and subscribed).
//! - `idle`: N connections with one subscription each (own channel), then
//!   the server's RSS per connection: `(RSS with N open - RSS before) / N`,
//!   also at intermediate checkpoints for an RSS-vs-connections curve.

use anyhow::bail;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Common, put_figures, run_id, watch_list};
use crate::procstat::{self, Watch, round3};
use crate::report::{ConnFigures, IdleFigures, Report, RssPoint, ratio};
use crate::swarm::{Swarm, SwarmSpec};
use crate::track::Percentiles;

/// `connect` parameters.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Connections to open.
    pub connections: usize,
}

/// `idle` parameters.
#[derive(Debug, Clone)]
pub struct Idle {
    /// Connections to open.
    pub connections: usize,
    /// Connection counts at which to read RSS on the way (each below
    /// `connections`; the full count is always read).
    pub checkpoints: Vec<usize>,
    /// Wait after reaching a count before reading RSS.
    pub settle: Duration,
    /// How long to keep the connections open at the end.
    pub hold: Duration,
}

pub(super) fn conn_figures(swarm: &Swarm, requested: usize, secs: f64) -> ConnFigures {
    let connected = swarm.connected();
    #[allow(clippy::cast_precision_loss)]
    ConnFigures {
        requested: requested as u64,
        connected,
        failed: swarm.stats.failed.load(Ordering::Relaxed),
        closed_by_server: swarm.stats.closed_by_server.load(Ordering::Relaxed),
        connect_s: round3(secs),
        connects_per_s: ratio(connected as f64, secs),
        connect_latency: Percentiles::of(&swarm.connect_latency),
        per_addr: swarm.connected_per_addr(),
    }
}

pub(super) fn swarm_errors(swarm: &Swarm) -> Vec<String> {
    swarm
        .stats
        .first_error
        .lock()
        .unwrap_or_else(|x| x.into_inner())
        .iter()
        .map(|e| format!("connect: {e}"))
        .collect()
}

/// `connect`: connections per second until N welcomes.
pub async fn connect(c: &Common, p: &Connect) -> anyhow::Result<Report> {
    let started = Instant::now();
    let run = run_id();
    let r2 = run.clone();
    let spec = SwarmSpec {
        run: run.clone(),
        channels: Arc::new(move |i| vec![format!("lg_{r2}_c{i}")]),
        concurrency: c.connect_concurrency,
        timeout: c.connect_timeout,
    };
    let mut swarm = Swarm::new(&c.target, spec, None);
    let watch = Watch::start(&watch_list(c));
    let t0 = Instant::now();
    swarm.grow(p.connections).await?;
    let secs = t0.elapsed().as_secs_f64();
    let figures = watch.finish();
    let mut r = Report {
        scenario: "connect".into(),
        run,
        params: serde_json::json!({
            "connections": p.connections, "concurrency": c.connect_concurrency,
        }),
        connections: Some(conn_figures(&swarm, p.connections, secs)),
        errors: swarm_errors(&swarm),
        ..Report::default()
    };
    put_figures(&mut r, figures);
    #[allow(clippy::cast_precision_loss)]
    {
        r.per_server_cpu_s = Some(ratio(swarm.connected() as f64, r.server_cpu_s));
    }
    swarm.stop().await;
    r.elapsed_s = round3(started.elapsed().as_secs_f64());
    Ok(r)
}

/// Sum of the servers' RSS, KiB.
fn server_rss(pids: &[String]) -> u64 {
    pids.iter()
        .filter_map(|p| procstat::read(p))
        .map(|r| r.rss_kb)
        .sum()
}

/// `idle`: server RSS per idle connection.
pub async fn idle(c: &Common, p: &Idle) -> anyhow::Result<Report> {
    let started = Instant::now();
    if c.pids.is_empty() {
        bail!("idle measures the server's memory: pass its process id with --pid");
    }
    if p.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let run = run_id();
    let r2 = run.clone();
    let spec = SwarmSpec {
        run: run.clone(),
        channels: Arc::new(move |i| vec![format!("lg_{r2}_c{i}")]),
        concurrency: c.connect_concurrency,
        timeout: c.connect_timeout,
    };
    let mut swarm = Swarm::new(&c.target, spec, None);
    let watch = Watch::start(&watch_list(c));
    let before = server_rss(&c.pids);
    let mut counts: Vec<usize> = p
        .checkpoints
        .iter()
        .copied()
        .filter(|n| *n > 0 && *n < p.connections)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    counts.push(p.connections);
    let mut points = Vec::new();
    let mut connect_secs = 0.0;
    for n in counts {
        let t0 = Instant::now();
        swarm.grow(n).await?;
        connect_secs += t0.elapsed().as_secs_f64();
        tokio::time::sleep(p.settle).await;
        let rss = server_rss(&c.pids);
        let open = swarm.connected();
        #[allow(clippy::cast_precision_loss)]
        let per = ratio(rss.saturating_sub(before) as f64 * 1024.0, open as f64);
        points.push(RssPoint {
            connections: open,
            rss_kb: rss,
            rss_per_conn_bytes: per,
        });
    }
    tokio::time::sleep(p.hold).await;
    let after_hold = server_rss(&c.pids);
    let last = points.last().cloned().unwrap_or_default();
    let mut r = Report {
        scenario: "idle".into(),
        run,
        params: serde_json::json!({
            "connections": p.connections, "checkpoints": p.checkpoints,
            "settle_s": p.settle.as_secs_f64(), "hold_s": p.hold.as_secs_f64(),
        }),
        connections: Some(conn_figures(&swarm, p.connections, connect_secs)),
        idle: Some(IdleFigures {
            rss_before_kb: before,
            rss_connected_kb: last.rss_kb,
            rss_after_hold_kb: after_hold,
            rss_per_conn_bytes: last.rss_per_conn_bytes,
            points,
        }),
        errors: swarm_errors(&swarm),
        ..Report::default()
    };
    put_figures(&mut r, watch.finish());
    swarm.stop().await;
    r.elapsed_s = round3(started.elapsed().as_secs_f64());
    Ok(r)
}
