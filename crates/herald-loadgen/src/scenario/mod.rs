//! The scenarios. Each builds its load, measures one window and returns a
//! [`Report`]; none runs longer than its parameters say (the binary adds a
//! hard deadline on top).
//!
//! - [`delivery`]: `fanout`, `channels` and `ramp` (subscribers + publisher);
//! - [`conns`]: `connect` (storm) and `idle` (memory per connection);
//! - [`ingest`]: publish throughput with no subscribers;
//! - [`drain`]: a SIGTERMed server closing its connections (it starts that
//!   server itself, the only scenario that does).

pub mod conns;
pub mod delivery;
pub mod drain;
pub mod ingest;

use std::time::Duration;

use crate::procstat::ProcFigures;
use crate::report::Report;
use crate::target::Target;

/// Settings every scenario shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// The server.
    pub target: Target,
    /// Server processes to measure (`--pid`).
    pub pids: Vec<String>,
    /// Bytes of JSON in each message's `data`.
    pub size: usize,
    /// Publish requests in flight at once.
    pub publish_concurrency: usize,
    /// Handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Bound on one connect + welcome.
    pub connect_timeout: Duration,
    /// After publishing, how long to wait for outstanding deliveries.
    pub drain: Duration,
}

/// A fresh run id: channel names and subs of one run never meet another's,
/// so each run starts every channel at seq 0 on a reused server.
pub fn run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// `pids` plus nothing else; the load generator is measured separately.
fn watch_list(c: &Common) -> Vec<String> {
    let mut v = c.pids.clone();
    v.push("self".into());
    v
}

/// Splits watch figures into (server processes, load generator).
fn split_figures(mut f: Vec<ProcFigures>) -> (Vec<ProcFigures>, ProcFigures) {
    let me = f.pop().unwrap_or_default();
    (f, me)
}

/// Fills the server and loadgen fields of `r` from watch figures.
fn put_figures(r: &mut Report, f: Vec<ProcFigures>) {
    let (server, me) = split_figures(f);
    r.server_cpu_s = crate::procstat::round3(server.iter().map(|s| s.cpu_s).sum());
    r.server = server;
    r.loadgen = me;
}
