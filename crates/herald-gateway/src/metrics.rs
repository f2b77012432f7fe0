//! The gateway's metrics (listed in docs/metrics.md). Names carry the
//! `herald_` prefix and base units; labels come from closed sets only.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Open WebSocket connections.
pub fn connections() -> Gauge {
    gauge!("herald_connections")
}
/// Subscriptions held by local connections.
pub fn subscriptions() -> Gauge {
    gauge!("herald_subscriptions")
}
/// Channels with at least one local subscriber.
pub fn channels() -> Gauge {
    gauge!("herald_channels")
}
/// The write path's counters, looked up once per gateway (a `counter!`
/// lookup hashes the key on every call).
pub struct Sent {
    /// `herald_frames_sent_total`.
    pub frames: Counter,
    /// `herald_bytes_sent_total`.
    pub bytes: Counter,
}

impl Default for Sent {
    /// Looks the counters up in the installed recorder.
    fn default() -> Self {
        Self {
            frames: counter!("herald_frames_sent_total"),
            bytes: counter!("herald_bytes_sent_total"),
        }
    }
}

/// Connections closed, by close code.
pub fn disconnects(code: &'static str) -> Counter {
    counter!("herald_disconnects_total", "code" => code)
}
/// Error replies, by error code.
pub fn errors(code: &'static str) -> Counter {
    counter!("herald_errors_total", "code" => code)
}
/// Requests handled, by op.
pub fn requests(op: &'static str) -> Counter {
    counter!("herald_requests_total", "op" => op)
}
/// Seconds from a message's `ts` to its hand-off to subscriber queues.
pub fn delivery_lag() -> Histogram {
    histogram!("herald_delivery_lag_seconds")
}
/// Messages dropped because their seq was already delivered.
pub fn duplicates_dropped() -> Counter {
    counter!("herald_bus_duplicates_total")
}
/// Seq gaps detected on the bus.
pub fn gaps_detected() -> Counter {
    counter!("herald_bus_gaps_total")
}
/// History reads made to fill gaps or catch up.
pub fn gap_fills() -> Counter {
    counter!("herald_gap_fill_reads_total")
}
/// Gaps that history could not fill (beyond retention).
pub fn gaps_skipped() -> Counter {
    counter!("herald_gaps_unfillable_total")
}
/// Channels found behind by the periodic catch-up.
pub fn catchups() -> Counter {
    counter!("herald_catchup_repairs_total")
}
/// Replays cut short because history lost a seq meanwhile (client told to
/// reconnect with 1012).
pub fn replay_holes() -> Counter {
    counter!("herald_replay_holes_total")
}
/// Bus envelopes that could not be read.
pub fn bad_envelopes() -> Counter {
    counter!("herald_bus_bad_envelopes_total")
}

/// Connections closed because their socket took no write for the
/// heartbeat timeout (a client that stopped reading).
pub fn write_stalls() -> Counter {
    counter!("herald_write_stalls_total")
}
/// Channels whose last catch-up or gap fill gave up after its retries
/// (history unreadable); retried at the next catch-up round.
pub fn stuck_channels() -> Gauge {
    gauge!("herald_catchup_stuck_channels")
}

/// Registers descriptions (call once after installing the recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("herald_connections", "Open WebSocket connections");
    describe_counter!(
        "herald_write_stalls_total",
        "Connections closed 4408 because their socket took no write for the heartbeat timeout"
    );
    describe_gauge!(
        "herald_catchup_stuck_channels",
        "Channels whose history read failed through every retry of the last catch-up or gap fill"
    );
    describe_gauge!(
        "herald_subscriptions",
        "Subscriptions held by local connections"
    );
    describe_gauge!(
        "herald_channels",
        "Channels with at least one local subscriber"
    );
    describe_counter!("herald_frames_sent_total", "Frames written to clients");
    describe_counter!("herald_bytes_sent_total", "Bytes written to clients");
    describe_counter!(
        "herald_disconnects_total",
        "Connections closed, by close code"
    );
    describe_counter!("herald_errors_total", "Error replies, by error code");
    describe_counter!("herald_requests_total", "Client requests, by op");
    describe_histogram!(
        "herald_delivery_lag_seconds",
        metrics::Unit::Seconds,
        "From message ts to hand-off to subscriber queues"
    );
    describe_counter!(
        "herald_bus_duplicates_total",
        "Bus messages dropped as already delivered"
    );
    describe_counter!("herald_bus_gaps_total", "Seq gaps detected");
    describe_counter!(
        "herald_gap_fill_reads_total",
        "History reads to fill gaps or catch up"
    );
    describe_counter!(
        "herald_gaps_unfillable_total",
        "Gaps beyond retained history"
    );
    describe_counter!(
        "herald_catchup_repairs_total",
        "Channels found behind by catch-up"
    );
    describe_counter!("herald_bus_bad_envelopes_total", "Unreadable bus envelopes");
    describe_counter!(
        "herald_replay_holes_total",
        "Replays cut short by a seq missing from history"
    );
}
