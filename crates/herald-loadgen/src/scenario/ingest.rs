//! `ingest`: persisted publishes per second through `POST /v1/publish`,
//! with C requests in flight and no subscribers. A publish counts once it
//! is answered 200, which means committed (PROTOCOL.md section 8).
//!
//! With `--rate 0` each worker publishes back to back (closed loop: the
//! throughput the server sustains at that concurrency); with a rate, the
//! schedule is shared by the workers as in the delivery scenarios.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Common, put_figures, run_id, watch_list};
use crate::procstat::{Watch, round3};
use crate::publish::{Api, Outcome, PublishStats, body, data_json};
use crate::report::{IngestFigures, Report, ratio};
use crate::track::{Percentiles, now_ns};

/// `ingest` parameters.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Publishes per second, 0 for as fast as the workers go.
    pub rate: f64,
    /// How long to publish.
    pub duration: Duration,
    /// Workers (requests in flight).
    pub concurrency: usize,
    /// Channels the publishes are spread over.
    pub channels: usize,
}

/// Runs the ingest scenario.
pub async fn ingest(c: &Common, p: &Ingest) -> anyhow::Result<Report> {
    let started = Instant::now();
    let run = run_id();
    let workers = p.concurrency.max(1);
    let api = Api::new(&c.target, workers)?;
    let stats = Arc::new(PublishStats::default());
    let next = Arc::new(AtomicU64::new(0));
    let chans: Arc<Vec<String>> = Arc::new(
        (0..p.channels.max(1))
            .map(|i| format!("lg_{run}_in{i}"))
            .collect(),
    );
    let watch = Watch::start(&watch_list(c));
    let t0 = tokio::time::Instant::now();
    let end = t0 + p.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (api, stats, next, chans, rate, size) = (
            api.clone(),
            stats.clone(),
            next.clone(),
            chans.clone(),
            p.rate,
            c.size,
        );
        tasks.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if rate > 0.0 {
                    #[allow(clippy::cast_precision_loss)]
                    let due = t0 + Duration::from_secs_f64(k as f64 / rate);
                    if due >= end {
                        return;
                    }
                    tokio::time::sleep_until(due).await;
                } else if tokio::time::Instant::now() >= end {
                    return;
                }
                let ch = &chans[usize::try_from(k).unwrap_or(0) % chans.len()];
                let t = now_ns();
                let b = body(&[ch.as_str()], &data_json(t, k, size));
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let outcome = api.publish(b).await;
                stats
                    .latency
                    .record_ns(usize::try_from(k).unwrap_or(0), now_ns().saturating_sub(t));
                match outcome {
                    Outcome::Ok => {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Status(code, b) => stats.error(format!("HTTP {code}: {b}")),
                    Outcome::Failed(e) => stats.error(e),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = t0.elapsed().as_secs_f64();
    let persisted = stats.ok.load(Ordering::Relaxed);
    let mut r = Report {
        scenario: "ingest".into(),
        run,
        params: serde_json::json!({
            "rate": p.rate, "duration_s": p.duration.as_secs_f64(),
            "concurrency": workers, "channels": chans.len(), "size": c.size,
        }),
        ingest: Some(IngestFigures {
            sent: stats.sent.load(Ordering::Relaxed),
            persisted,
            errors: stats.errors.load(Ordering::Relaxed),
            elapsed_s: round3(elapsed),
            #[allow(clippy::cast_precision_loss)]
            persisted_per_s: ratio(persisted as f64, elapsed),
            latency: Percentiles::of(&stats.latency.merged()),
        }),
        errors: stats
            .first_error
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .iter()
            .map(|e| format!("publish: {e}"))
            .collect(),
        ..Report::default()
    };
    put_figures(&mut r, watch.finish());
    #[allow(clippy::cast_precision_loss)]
    {
        r.per_server_cpu_s = Some(ratio(persisted as f64, r.server_cpu_s));
    }
    r.elapsed_s = round3(started.elapsed().as_secs_f64());
    Ok(r)
}
