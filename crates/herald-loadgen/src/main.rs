//! `herald-loadgen`: load scenarios against a herald on 127.0.0.1.
//!
//! ```text
//! herald-loadgen --url http://127.0.0.1:8080 --api-key K --jwt-secret S --pid 1234 \
//!     fanout --subscribers 5000 --rate 50 --duration 10s
//! ```
//!
//! Against the Redis topology, `--url` names each gateway (connections are
//! spread round robin over them) and `--ingest-url` the ingest node:
//!
//! ```text
//! herald-loadgen --url http://127.0.0.1:9001 --url http://127.0.0.1:9002 \
//!     --ingest-url http://127.0.0.1:9000 --pid 1 --pid 2 --pid 3 fanout ...
//! ```
//!
//! `drain` starts its own `herald dev` (it must SIGTERM it and read its exit
//! status), so it takes no `--url`, `--pid` or secrets:
//!
//! ```text
//! herald-loadgen drain --connections 19000 --window 10s
//! ```
//!
//! Prints a table and one `RESULT {json}` line. Every run stops by itself:
//! on top of its own bounds, a hard deadline (the run's nominal length +
//! 30 s) ends it with `"timed_out": true` and exit status 2.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use herald_loadgen::scenario::{Common, conns, delivery, drain, ingest};
use herald_loadgen::{Report, Target, server, target};
use std::path::PathBuf;
use std::time::Duration;

/// Most connections one run may open (herald's per-node default).
const MAX_CONNECTIONS: usize = 100_000;
/// Longest publishing time one run (or ramp step) may ask for.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Highest publish rate accepted.
const MAX_RATE: f64 = 1_000_000.0;
/// Slack of the hard deadline over a run's nominal length.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);
/// Where the server under test listens unless `--url` says otherwise.
const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Longest drain window `drain` accepts.
const MAX_WINDOW: Duration = Duration::from_secs(600);
/// What `drain` allows for starting its server (herald dev answers
/// `/healthz` within 30 s or the start fails).
const SERVER_START: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    name = "herald-loadgen",
    version,
    about = "Load generator for herald (127.0.0.1 only)"
)]
struct Cli {
    /// Public URL of the herald under test (`/ws`, and `/v1/publish` unless
    /// `--ingest-url` is given) [default: http://127.0.0.1:8080]. Repeat it
    /// for several gateways: connection i goes to the (i mod n)-th URL and
    /// publishes to the first (or `--ingest-url`).
    #[arg(long = "url")]
    urls: Vec<String>,
    /// Where to publish when ingest is a separate node (Redis topology).
    #[arg(long)]
    ingest_url: Option<String>,
    /// Ingest API key (`herald dev` prints it); required except by `drain`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// HS256 secret for connection tokens (`herald dev` prints it);
    /// required except by `drain`.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A server process to measure (CPU, RSS); repeat for several.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Bytes of JSON in each message's `data`.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Publish requests in flight at once.
    #[arg(long, default_value_t = 64)]
    publish_concurrency: usize,
    /// WebSocket handshakes in flight at once (herald listens with a 4096
    /// backlog; a server with tokio's default 128 drops SYNs past it, each
    /// costing a 1 s retry: benches/RESULTS.md, connect).
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Bound on one connect + upgrade + welcome.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// After publishing, how long to wait for outstanding deliveries.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    drain: Duration,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N subscribers on one channel, one publisher at R msg/s.
    Fanout {
        #[arg(long)]
        subscribers: usize,
        #[arg(long)]
        rate: f64,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// N connections on their own channels (+ D on a shared dashboard);
    /// each publish goes to [own, dashboard].
    Channels {
        #[arg(long)]
        connections: usize,
        /// Connections that also hold the dashboard channel (default: all).
        #[arg(long)]
        dashboard_subscribers: Option<usize>,
        #[arg(long)]
        rate: f64,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// Connect storm: connections/s until N welcomes.
    Connect {
        #[arg(long)]
        connections: usize,
    },
    /// N idle connections, one subscription each: server RSS per connection.
    Idle {
        #[arg(long)]
        connections: usize,
        /// Connection counts at which to read RSS on the way, e.g. 1000,5000.
        #[arg(long, value_delimiter = ',')]
        checkpoints: Vec<usize>,
        /// Wait after each count before reading RSS.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        settle: Duration,
        /// Keep the connections open this long at the end.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// Persisted publishes per second (answers 200), no subscribers.
    Ingest {
        /// Publishes per second; 0 = back to back.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Channels to spread the publishes over.
        #[arg(long, default_value_t = 16)]
        channels: usize,
    },
    /// Starts a `herald dev` with `--drain-window`, opens N connections,
    /// SIGTERMs it: each connection's close code and time, the server's exit
    /// time and status. Takes no --url, --ingest-url, --pid or secrets.
    Drain {
        #[arg(long)]
        connections: usize,
        /// The server's drain window (`--drain-window`).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        window: Duration,
        /// The herald binary [default: `herald` beside herald-loadgen].
        #[arg(long, env = "HERALD_BIN")]
        herald_bin: Option<PathBuf>,
    },
    /// Fanout at rising rates until p99 (last subscriber) > bound or loss.
    Ramp {
        #[arg(long)]
        subscribers: usize,
        #[arg(long)]
        start: f64,
        #[arg(long)]
        step: f64,
        #[arg(long)]
        max_p99_ms: f64,
        #[arg(long, value_parser = parse_duration)]
        duration_per_step: Duration,
        #[arg(long, default_value_t = 10)]
        max_steps: usize,
    },
}

/// `10s`, `500ms`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {s:?}"))
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Fanout { .. } => "fanout",
            Cmd::Channels { .. } => "channels",
            Cmd::Connect { .. } => "connect",
            Cmd::Idle { .. } => "idle",
            Cmd::Ingest { .. } => "ingest",
            Cmd::Ramp { .. } => "ramp",
            Cmd::Drain { .. } => "drain",
        }
    }

    /// Connections the run opens.
    fn connections(&self) -> usize {
        match self {
            Cmd::Fanout { subscribers, .. } | Cmd::Ramp { subscribers, .. } => *subscribers,
            Cmd::Channels { connections, .. }
            | Cmd::Connect { connections }
            | Cmd::Idle { connections, .. }
            | Cmd::Drain { connections, .. } => *connections,
            Cmd::Ingest { .. } => 0,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        let n = self.connections();
        if n > MAX_CONNECTIONS {
            bail!("at most {MAX_CONNECTIONS} connections per run");
        }
        let (rates, durations): (Vec<f64>, Vec<Duration>) = match self {
            Cmd::Fanout { rate, duration, .. } | Cmd::Channels { rate, duration, .. } => {
                (vec![*rate], vec![*duration])
            }
            Cmd::Ingest { rate, duration, .. } => (vec![*rate], vec![*duration]),
            Cmd::Ramp {
                start,
                step,
                max_steps,
                duration_per_step,
                ..
            } => {
                #[allow(clippy::cast_precision_loss)]
                let top = start + step * (*max_steps as f64);
                (vec![*start, top], vec![*duration_per_step])
            }
            Cmd::Connect { .. } | Cmd::Idle { .. } | Cmd::Drain { .. } => (vec![], vec![]),
        };
        if rates.iter().any(|r| !(0.0..=MAX_RATE).contains(r)) {
            bail!("rates must be between 0 and {MAX_RATE} msg/s");
        }
        if durations.iter().any(|d| *d > MAX_DURATION || d.is_zero()) {
            bail!("durations must be above 0 and at most {MAX_DURATION:?}");
        }
        if let Cmd::Ramp { max_steps, .. } = self
            && !(1..=100).contains(max_steps)
        {
            bail!("--max-steps must be 1..=100");
        }
        if let Cmd::Drain { window, .. } = self
            && (window.is_zero() || *window > MAX_WINDOW)
        {
            bail!("--window must be above 0 and at most {MAX_WINDOW:?}");
        }
        Ok(())
    }

    /// The run's nominal length; the hard deadline adds [`DEADLINE_SLACK`].
    fn nominal(&self, c: &Common) -> Duration {
        match self {
            Cmd::Fanout { duration, .. } | Cmd::Channels { duration, .. } => *duration + c.drain,
            Cmd::Connect { .. } => c.connect_timeout,
            // Start, connects (1 ms each on top of the bound of one: the
            // storm runs at several thousand per second), SIGTERM to exit.
            Cmd::Drain {
                connections,
                window,
                ..
            } => {
                let n = u64::try_from(*connections).unwrap_or(u64::MAX);
                SERVER_START
                    + c.connect_timeout
                    + Duration::from_millis(n)
                    + drain::after_term(*window)
            }
            Cmd::Idle {
                checkpoints,
                settle,
                hold,
                ..
            } => {
                let rounds = u32::try_from(checkpoints.len() + 1).unwrap_or(u32::MAX);
                *settle * rounds + *hold + c.connect_timeout
            }
            Cmd::Ingest { duration, .. } => *duration + herald_loadgen::publish::REQUEST_TIMEOUT,
            Cmd::Ramp {
                duration_per_step,
                max_steps,
                ..
            } => (*duration_per_step + c.drain) * u32::try_from(*max_steps).unwrap_or(100),
        }
    }
}

async fn run(cmd: &Cmd, c: &Common) -> anyhow::Result<Report> {
    match cmd {
        Cmd::Drain {
            connections,
            window,
            herald_bin,
        } => {
            let p = drain::Drain {
                herald_bin: server::herald_bin(herald_bin.as_deref())?,
                connections: *connections,
                window: *window,
                connect_concurrency: c.connect_concurrency,
                connect_timeout: c.connect_timeout,
            };
            drain::drain(&p).await
        }
        Cmd::Fanout {
            subscribers,
            rate,
            duration,
        } => {
            let p = delivery::Fanout {
                subscribers: *subscribers,
                rate: *rate,
                duration: *duration,
            };
            delivery::fanout(c, &p).await
        }
        Cmd::Channels {
            connections,
            dashboard_subscribers,
            rate,
            duration,
        } => {
            let p = delivery::Channels {
                connections: *connections,
                dashboard_subscribers: dashboard_subscribers.unwrap_or(*connections),
                rate: *rate,
                duration: *duration,
            };
            delivery::channels(c, &p).await
        }
        Cmd::Connect { connections } => {
            conns::connect(
                c,
                &conns::Connect {
                    connections: *connections,
                },
            )
            .await
        }
        Cmd::Idle {
            connections,
            checkpoints,
            settle,
            hold,
        } => {
            let p = conns::Idle {
                connections: *connections,
                checkpoints: checkpoints.clone(),
                settle: *settle,
                hold: *hold,
            };
            conns::idle(c, &p).await
        }
        Cmd::Ingest {
            rate,
            duration,
            concurrency,
            channels,
        } => {
            let p = ingest::Ingest {
                rate: *rate,
                duration: *duration,
                concurrency: *concurrency,
                channels: *channels,
            };
            ingest::ingest(c, &p).await
        }
        Cmd::Ramp {
            subscribers,
            start,
            step,
            max_p99_ms,
            duration_per_step,
            max_steps,
        } => {
            let p = delivery::Ramp {
                subscribers: *subscribers,
                start: *start,
                step: *step,
                max_p99_ms: *max_p99_ms,
                duration_per_step: *duration_per_step,
                max_steps: *max_steps,
            };
            delivery::ramp(c, &p).await
        }
    }
}

/// The server under test named by the flags. `drain` starts its own, so it
/// refuses flags naming another one and gets a placeholder here (its
/// scenario builds the real target once the server listens).
fn cli_target(cli: &Cli) -> anyhow::Result<Target> {
    if let Cmd::Drain { .. } = cli.cmd {
        if !cli.urls.is_empty() || cli.ingest_url.is_some() || !cli.pids.is_empty() {
            bail!(
                "drain starts and measures its own herald dev: --url, --ingest-url and --pid \
                 do not apply"
            );
        }
        return Target::new(&[DEFAULT_URL], "", "");
    }
    let urls: Vec<&str> = if cli.urls.is_empty() {
        vec![DEFAULT_URL]
    } else {
        cli.urls.iter().map(String::as_str).collect()
    };
    let api_key = cli
        .api_key
        .as_deref()
        .context("--api-key (or HERALD_API_KEY) is required")?;
    let jwt_secret = cli
        .jwt_secret
        .as_deref()
        .context("--jwt-secret (or HERALD_JWT_SECRET) is required")?;
    let t = Target::new(&urls, api_key, jwt_secret)?;
    match &cli.ingest_url {
        Some(i) => t.with_ingest(i),
        None => Ok(t),
    }
}

/// Validates the flags, runs the scenario under the hard deadline; the
/// report and the exit status (0 ran, 1 error, 2 deadline).
fn execute(cli: &Cli) -> (Report, i32) {
    let failed = |e: anyhow::Error| {
        let r = Report {
            scenario: cli.cmd.name().into(),
            errors: vec![format!("{e:#}")],
            ..Report::default()
        };
        (r, 1)
    };
    let prepared = (|| {
        cli.cmd.check()?;
        target::check_fd_budget(cli.cmd.connections())?;
        let common = Common {
            target: cli_target(cli)?,
            pids: cli.pids.iter().map(u32::to_string).collect(),
            size: cli.size,
            publish_concurrency: cli.publish_concurrency.max(1),
            connect_concurrency: cli.connect_concurrency.max(1),
            connect_timeout: cli.connect_timeout,
            drain: cli.drain,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        anyhow::Ok((common, rt))
    })();
    let (common, rt) = match prepared {
        Ok(x) => x,
        Err(e) => return failed(e),
    };
    let deadline = cli.cmd.nominal(&common) + DEADLINE_SLACK;
    let outcome =
        rt.block_on(async { tokio::time::timeout(deadline, run(&cli.cmd, &common)).await });
    // Reader tasks may still hold sockets; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(Ok(r)) => (r, 0),
        Ok(Err(e)) => failed(e),
        Err(_) => {
            let r = Report {
                scenario: cli.cmd.name().into(),
                timed_out: true,
                errors: vec![format!("hard deadline of {deadline:?} reached")],
                ..Report::default()
            };
            (r, 2)
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let (report, code) = execute(&cli);
    println!("{}", report.table());
    println!("{}", report.result_line());
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_of(args: &[&str]) -> anyhow::Result<Target> {
        let base = ["herald-loadgen", "--api-key", "k", "--jwt-secret", "s"];
        let tail = [
            "fanout",
            "--subscribers",
            "1",
            "--rate",
            "1",
            "--duration",
            "1s",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(args).chain(&tail))?;
        cli_target(&cli)
    }

    #[test]
    fn urls() {
        let port = |a: &std::net::SocketAddr| a.port();
        // None given: the default, for WebSockets and publishes.
        let t = target_of(&[]).unwrap();
        assert_eq!(t.ws_addrs().iter().map(port).collect::<Vec<_>>(), [8080]);
        assert_eq!(t.ingest_addr.port(), 8080);
        // Two gateways, publishes to the first.
        let t = target_of(&["--url", "http://127.0.0.1:1", "--url", "http://127.0.0.1:2"]).unwrap();
        assert_eq!(t.ws_addrs().iter().map(port).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(t.ingest_addr.port(), 1);
        // ... or to --ingest-url.
        let t = target_of(&[
            "--url",
            "http://127.0.0.1:1",
            "--url",
            "http://127.0.0.1:2",
            "--ingest-url",
            "http://127.0.0.1:3",
        ])
        .unwrap();
        assert_eq!(t.ingest_addr.port(), 3);
        // A second URL off loopback is refused like a first.
        let e = target_of(&[
            "--url",
            "http://127.0.0.1:1",
            "--url",
            "http://192.168.1.9:2",
        ])
        .unwrap_err();
        assert!(format!("{e:#}").contains("loopback"), "{e:#}");
    }

    #[test]
    fn drain_takes_no_url() {
        let cli = Cli::try_parse_from([
            "herald-loadgen",
            "--url",
            "http://127.0.0.1:1",
            "drain",
            "--connections",
            "1",
        ])
        .unwrap();
        assert!(cli_target(&cli).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("1h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
