//! herald-loadgen: drives a running herald with real WebSocket clients and
//! ingest publishes, and reports latency, loss, throughput and the server's
//! CPU and memory (DESIGN.md "Performance model"; figures land in
//! `benches/RESULTS.md`).
//!
//! # Layout
//! - [`target`]: the server under test (127.0.0.1 only; one WebSocket
//!   address per gateway, connections round robin over them), tokens, fd
//!   limit, client source addresses.
//! - [`conn`]: one WebSocket connection (upgrade, welcome, frame scan).
//! - [`swarm`]: many connections and their reader tasks.
//! - [`publish`]: `POST /v1/publish` client and the open-loop schedule.
//! - [`track`]: run clock, message ledger, seq tracking, histograms.
//! - [`procstat`]: CPU and RSS of the server (`--pid`) from `/proc`.
//! - [`closes`]: how and when the server closed each connection (drain).
//! - [`server`]: a `herald dev` the load generator starts and owns (drain).
//! - [`scenario`]: fanout, channels, ramp, connect, idle, ingest, drain.
//! - [`report`]: the table and the `RESULT {json}` line.
//!
//! The binary (`src/main.rs`) parses flags, raises the fd limit, runs one
//! scenario under a hard deadline and prints its report.

pub mod closes;
pub mod conn;
pub mod procstat;
pub mod publish;
pub mod report;
pub mod scenario;
pub mod server;
pub mod swarm;
pub mod target;
pub mod track;

pub use report::{RESULT_PREFIX, Report};
pub use scenario::Common;
pub use target::Target;
