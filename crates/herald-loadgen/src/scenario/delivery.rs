//! Delivery scenarios: subscribers connected first, then an open-loop
//! publisher through the ingest API, then a drain; every receipt is checked
//! against its channel's seq and timed against the publisher's send time.
//!
//! - `fanout`: N subscribers on one channel.
//! - `channels`: N connections each on its own channel, the first D of them
//!   also on a shared dashboard channel; each publish goes to
//!   [own channel of connection k mod N, dashboard], as the systems herald
//!   replaces notify `chat_<conversation>` and `dashboard_website_<site>`.
//! - `ramp`: `fanout` at rising rates until the last-subscriber p99 passes
//!   a bound or a message is lost.

use anyhow::bail;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use super::{Common, put_figures, run_id, watch_list};
use crate::procstat::{Watch, round3};
use crate::publish::{self, Api, PublishStats, Step, planned};
use crate::report::{ConnFigures, DeliveryFigures, RampStep, Report, ratio};
use crate::swarm::{ChannelsOf, Swarm, SwarmSpec};
use crate::track::{Ledger, Percentiles};

/// `fanout` parameters.
#[derive(Debug, Clone)]
pub struct Fanout {
    /// Subscribers on the channel.
    pub subscribers: usize,
    /// Messages per second.
    pub rate: f64,
    /// Publishing time.
    pub duration: Duration,
}

/// `channels` parameters.
#[derive(Debug, Clone)]
pub struct Channels {
    /// Connections, each with its own channel.
    pub connections: usize,
    /// How many of them also hold the dashboard channel.
    pub dashboard_subscribers: usize,
    /// Publishes per second (spread over the channels).
    pub rate: f64,
    /// Publishing time.
    pub duration: Duration,
}

/// `ramp` parameters.
#[derive(Debug, Clone)]
pub struct Ramp {
    /// Subscribers on the channel.
    pub subscribers: usize,
    /// First rate.
    pub start: f64,
    /// Added each step.
    pub step: f64,
    /// Bound on the last-subscriber p99, ms.
    pub max_p99_ms: f64,
    /// Publishing time of each step.
    pub duration_per_step: Duration,
    /// At most this many steps.
    pub max_steps: usize,
}

/// Most message slots one run may plan (12 bytes of bookkeeping each).
const MAX_PLANNED: u64 = 20_000_000;

/// Connects the swarm and fails when any connection could not open
/// (expected receipt counts assume all of them).
async fn connect_all(swarm: &mut Swarm, n: usize) -> anyhow::Result<ConnFigures> {
    let t0 = Instant::now();
    swarm.grow(n).await?;
    let connect_s = t0.elapsed().as_secs_f64();
    let connected = swarm.connected();
    let failed = swarm.stats.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let e = swarm
            .stats
            .first_error
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .clone()
            .unwrap_or_default();
        bail!("{failed} of {n} subscribers failed to connect; first error: {e}");
    }
    Ok(ConnFigures {
        requested: n as u64,
        connected,
        failed,
        closed_by_server: 0,
        connect_s: round3(connect_s),
        #[allow(clippy::cast_precision_loss)]
        connects_per_s: ratio(connected as f64, connect_s),
        connect_latency: Percentiles::of(&swarm.connect_latency),
        per_addr: swarm.connected_per_addr(),
    })
}

/// One measured step: publish, drain, summarize.
struct StepRun<'a> {
    common: &'a Common,
    api: &'a Api,
    ledger: &'a Arc<Ledger>,
    swarm: &'a Swarm,
    slots: &'a Arc<Semaphore>,
}

struct StepResult {
    delivery: DeliveryFigures,
    figures: Vec<crate::procstat::ProcFigures>,
    errors: Vec<String>,
}

impl StepRun<'_> {
    async fn run(
        &self,
        step: usize,
        rate: f64,
        duration: Duration,
        channels: &(dyn Fn(u64) -> Vec<String> + Sync),
    ) -> StepResult {
        let stats = Arc::new(PublishStats::default());
        let watch = Watch::start(&watch_list(self.common));
        let t0 = Instant::now();
        let sent = publish::run_step(
            self.api,
            self.ledger,
            &stats,
            self.slots,
            Step {
                rate,
                duration,
                step,
                channels,
                size: self.common.size,
            },
        )
        .await;
        // Drain: every acknowledged message to every subscriber, or the
        // drain time is up (what is missing then counts as lost).
        let expected = stats.ok.load(Ordering::Relaxed) * u64::from(self.ledger.expected_per_msg);
        let drain_end = Instant::now() + self.common.drain;
        while self.ledger.step(step).delivered.load(Ordering::Relaxed) < expected
            && Instant::now() < drain_end
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let window = t0.elapsed().as_secs_f64();
        let figures = watch.finish();
        let s = self.ledger.summarize(step, sent);
        let foreign = self.ledger.foreign.load(Ordering::Relaxed)
            + self.swarm.stats.unexpected_channel.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        if let Some(e) = stats
            .first_error
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .clone()
        {
            errors.push(format!("publish: {e}"));
        }
        #[allow(clippy::cast_precision_loss)]
        let delivery = DeliveryFigures {
            published: stats.sent.load(Ordering::Relaxed),
            acknowledged: s.acknowledged,
            publish_errors: stats.errors.load(Ordering::Relaxed),
            publisher_behind: stats.behind.load(Ordering::Relaxed),
            subscribers_per_message: u64::from(self.ledger.expected_per_msg),
            expected: s.expected,
            delivered: s.delivered,
            lost: s.lost,
            duplicates: s.duplicates,
            reordered: s.reordered,
            foreign,
            complete_messages: s.complete,
            window_s: round3(window),
            delivered_per_s: ratio(s.delivered as f64, window),
            latency: Percentiles::of(&s.latency),
            last_subscriber: Percentiles::of(&s.last_subscriber),
            publish_latency: Percentiles::of(&stats.latency.merged()),
        };
        StepResult {
            delivery,
            figures,
            errors,
        }
    }
}

fn check_planned(total: u64) -> anyhow::Result<()> {
    if total > MAX_PLANNED {
        bail!("the run would publish {total} messages; at most {MAX_PLANNED} per run");
    }
    Ok(())
}

/// Fills connection, delivery, server and error fields from one step.
fn finish_report(r: &mut Report, swarm: &Swarm, mut conns: ConnFigures, res: StepResult) {
    conns.closed_by_server = swarm.stats.closed_by_server.load(Ordering::Relaxed);
    put_figures(r, res.figures);
    #[allow(clippy::cast_precision_loss)]
    {
        r.per_server_cpu_s = Some(ratio(res.delivery.delivered as f64, r.server_cpu_s));
    }
    r.connections = Some(conns);
    r.delivery = Some(res.delivery);
    r.errors = res.errors;
}

/// `fanout`: N subscribers on one channel.
pub async fn fanout(c: &Common, p: &Fanout) -> anyhow::Result<Report> {
    let started = Instant::now();
    let run = run_id();
    let channel = format!("lg_{run}_fan");
    let total = planned(p.rate, p.duration);
    check_planned(total)?;
    let ledger = Arc::new(Ledger::new(&[total], u32::try_from(p.subscribers)?));
    let ch = channel.clone();
    let spec = SwarmSpec {
        run: run.clone(),
        channels: Arc::new(move |_| vec![ch.clone()]),
        concurrency: c.connect_concurrency,
        timeout: c.connect_timeout,
    };
    let mut swarm = Swarm::new(&c.target, spec, Some(ledger.clone()));
    let conns = connect_all(&mut swarm, p.subscribers).await?;
    let api = Api::new(&c.target, c.publish_concurrency)?;
    let slots = Arc::new(Semaphore::new(c.publish_concurrency.max(1)));
    let step = StepRun {
        common: c,
        api: &api,
        ledger: &ledger,
        swarm: &swarm,
        slots: &slots,
    };
    let res = step
        .run(0, p.rate, p.duration, &move |_| vec![channel.clone()])
        .await;
    let mut r = Report {
        scenario: "fanout".into(),
        run,
        params: serde_json::json!({
            "subscribers": p.subscribers, "rate": p.rate,
            "duration_s": p.duration.as_secs_f64(), "size": c.size,
        }),
        ..Report::default()
    };
    finish_report(&mut r, &swarm, conns, res);
    swarm.stop().await;
    r.elapsed_s = round3(started.elapsed().as_secs_f64());
    Ok(r)
}

/// `channels`: own channel per connection plus a shared dashboard.
pub async fn channels(c: &Common, p: &Channels) -> anyhow::Result<Report> {
    let started = Instant::now();
    if p.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let run = run_id();
    let dash = format!("lg_{run}_dash");
    let dash_n = p.dashboard_subscribers.min(p.connections);
    let total = planned(p.rate, p.duration);
    check_planned(total)?;
    let per_msg = 1 + u32::try_from(dash_n)?;
    let ledger = Arc::new(Ledger::new(&[total], per_msg));
    let own = {
        let run = run.clone();
        move |i: usize| format!("lg_{run}_c{i}")
    };
    let channels_of: ChannelsOf = {
        let (own, dash) = (own.clone(), dash.clone());
        Arc::new(move |i| {
            let mut v = vec![own(i)];
            if i < dash_n {
                v.push(dash.clone());
            }
            v
        })
    };
    let spec = SwarmSpec {
        run: run.clone(),
        channels: channels_of,
        concurrency: c.connect_concurrency,
        timeout: c.connect_timeout,
    };
    let mut swarm = Swarm::new(&c.target, spec, Some(ledger.clone()));
    let conns = connect_all(&mut swarm, p.connections).await?;
    let api = Api::new(&c.target, c.publish_concurrency)?;
    let slots = Arc::new(Semaphore::new(c.publish_concurrency.max(1)));
    let n = p.connections as u64;
    let publish_to = move |k: u64| {
        let i = usize::try_from(k % n).expect("k mod n < n fits");
        let mut v = vec![own(i)];
        if dash_n > 0 {
            v.push(dash.clone());
        }
        v
    };
    let step = StepRun {
        common: c,
        api: &api,
        ledger: &ledger,
        swarm: &swarm,
        slots: &slots,
    };
    let res = step.run(0, p.rate, p.duration, &publish_to).await;
    let mut r = Report {
        scenario: "channels".into(),
        run,
        params: serde_json::json!({
            "connections": p.connections, "dashboard_subscribers": dash_n,
            "rate": p.rate, "duration_s": p.duration.as_secs_f64(), "size": c.size,
        }),
        ..Report::default()
    };
    finish_report(&mut r, &swarm, conns, res);
    swarm.stop().await;
    r.elapsed_s = round3(started.elapsed().as_secs_f64());
    Ok(r)
}

/// The rates a ramp tries, in order.
pub fn ramp_rates(p: &Ramp) -> Vec<f64> {
    (0..p.max_steps)
        .map(|i| {
            #[allow(clippy::cast_precision_loss)]
            let i = i as f64;
            p.start + i * p.step
        })
        .filter(|r| *r > 0.0)
        .collect()
}

/// `ramp`: raises the rate until the last-subscriber p99 exceeds the bound
/// or a message is lost; reports the highest rate that held.
pub async fn ramp(c: &Common, p: &Ramp) -> anyhow::Result<Report> {
    let started = Instant::now();
    let run = run_id();
    let channel = format!("lg_{run}_ramp");
    let rates = ramp_rates(p);
    if rates.is_empty() {
        bail!("the ramp has no step with a positive rate");
    }
    let caps: Vec<u64> = rates
        .iter()
        .map(|r| planned(*r, p.duration_per_step))
        .collect();
    check_planned(caps.iter().sum())?;
    let ledger = Arc::new(Ledger::new(&caps, u32::try_from(p.subscribers)?));
    let ch = channel.clone();
    let spec = SwarmSpec {
        run: run.clone(),
        channels: Arc::new(move |_| vec![ch.clone()]),
        concurrency: c.connect_concurrency,
        timeout: c.connect_timeout,
    };
    let mut swarm = Swarm::new(&c.target, spec, Some(ledger.clone()));
    let conns = connect_all(&mut swarm, p.subscribers).await?;
    let api = Api::new(&c.target, c.publish_concurrency)?;
    let slots = Arc::new(Semaphore::new(c.publish_concurrency.max(1)));
    let runner = StepRun {
        common: c,
        api: &api,
        ledger: &ledger,
        swarm: &swarm,
        slots: &slots,
    };
    let watch = Watch::start(&watch_list(c));
    let mut steps = Vec::new();
    let mut best = 0.0f64;
    let mut errors = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        let ch = channel.clone();
        let res = runner
            .run(i, *rate, p.duration_per_step, &move |_| vec![ch.clone()])
            .await;
        let d = res.delivery;
        let server_cpu: f64 = res.figures.iter().rev().skip(1).map(|f| f.cpu_s).sum();
        let passed = d.lost == 0
            && d.publish_errors == 0
            && d.acknowledged > 0
            && d.last_subscriber.p99_ms <= p.max_p99_ms;
        #[allow(clippy::cast_precision_loss)]
        let per_cpu = ratio(d.delivered as f64, server_cpu);
        steps.push(RampStep {
            rate: *rate,
            passed,
            delivery: d,
            server_cpu_s: round3(server_cpu),
            frames_per_server_cpu_s: per_cpu,
        });
        errors.extend(res.errors);
        if !passed {
            break;
        }
        best = *rate;
    }
    let mut r = Report {
        scenario: "ramp".into(),
        run,
        params: serde_json::json!({
            "subscribers": p.subscribers, "start": p.start, "step": p.step,
            "max_p99_ms": p.max_p99_ms, "duration_per_step_s": p.duration_per_step.as_secs_f64(),
            "max_steps": p.max_steps, "size": c.size,
        }),
        ..Report::default()
    };
    let mut conns = conns;
    conns.closed_by_server = swarm.stats.closed_by_server.load(Ordering::Relaxed);
    r.connections = Some(conns);
    put_figures(&mut r, watch.finish());
    let delivered: u64 = steps.iter().map(|s| s.delivery.delivered).sum();
    #[allow(clippy::cast_precision_loss)]
    {
        r.per_server_cpu_s = Some(ratio(delivered as f64, r.server_cpu_s));
    }
    r.steps = Some(steps);
    r.max_sustained_rate = Some(best);
    r.errors = errors;
    swarm.stop().await;
    r.elapsed_s = round3(started.elapsed().as_secs_f64());
    Ok(r)
}
