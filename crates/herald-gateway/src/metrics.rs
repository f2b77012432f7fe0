//! The gateway's metrics: [`CATALOG`] lists every one (docs/metrics.md,
//! "Gateway", must agree: a unit test compares them), and the accessor
//! functions take their names and label values from it. Names carry the
//! `herald_` prefix and base units; labels come from closed sets only.
//!
//! [`register_all`] (called by [`crate::Gateway::new`]) creates every series
//! at zero, so a node that served no client yet already shows them all.

use herald_bus::metrics::{BAD_ENVELOPES, Metric};
use herald_protocol::{CloseCode, ErrorCode};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// `herald_connections`.
pub const CONNECTIONS: Metric = Metric::gauge("herald_connections", "Open WebSocket connections");
/// `herald_max_connections`.
pub const MAX_CONNECTIONS: Metric = Metric::gauge(
    "herald_max_connections",
    "The node's connection cap (max_connections, lowered to the fd limit at start)",
);
/// `herald_subscriptions`.
pub const SUBSCRIPTIONS: Metric = Metric::gauge(
    "herald_subscriptions",
    "Subscriptions held by local connections",
);
/// `herald_channels`.
pub const CHANNELS: Metric = Metric::gauge(
    "herald_channels",
    "Channels with at least one local subscriber",
);
/// `herald_frames_sent_total`.
pub const FRAMES_SENT: Metric =
    Metric::counter("herald_frames_sent_total", "Frames written to clients");
/// `herald_bytes_sent_total`.
pub const BYTES_SENT: Metric =
    Metric::counter("herald_bytes_sent_total", "Bytes written to clients");

/// Every close code herald closes with ([`CloseCode::label`]: `peer` for an
/// echoed client code), plus `abnormal` (the peer vanished without a close).
const DISCONNECT_CODES: &[&str] = &[
    CloseCode::Normal.label(),
    CloseCode::ProtocolError.label(),
    CloseCode::InvalidUtf8.label(),
    CloseCode::TooBig.label(),
    CloseCode::ServiceRestart.label(),
    CloseCode::ProtocolViolation.label(),
    CloseCode::Unauthorized.label(),
    CloseCode::TokenExpired.label(),
    CloseCode::SlowConsumer.label(),
    CloseCode::ConnectionLimit.label(),
    CloseCode::RateLimited.label(),
    CloseCode::HeartbeatTimeout.label(),
    CloseCode::Peer(1000).label(),
    ABNORMAL,
];

/// The `code` of a connection whose peer vanished without a close frame.
pub const ABNORMAL: &str = "abnormal";

/// Fails to compile when [`CloseCode`] gains a variant, so
/// [`DISCONNECT_CODES`] is revisited with it.
const fn _every_close_code_is_listed(c: CloseCode) {
    match c {
        CloseCode::Normal
        | CloseCode::ProtocolError
        | CloseCode::InvalidUtf8
        | CloseCode::TooBig
        | CloseCode::ServiceRestart
        | CloseCode::ProtocolViolation
        | CloseCode::Unauthorized
        | CloseCode::TokenExpired
        | CloseCode::SlowConsumer
        | CloseCode::ConnectionLimit
        | CloseCode::RateLimited
        | CloseCode::HeartbeatTimeout
        | CloseCode::Peer(_) => {}
    }
}

/// `herald_disconnects_total{code}`.
pub const DISCONNECTS: Metric = Metric::counter_by(
    "herald_disconnects_total",
    "Connections closed, by close code",
    "code",
    DISCONNECT_CODES,
);

/// The error codes a WebSocket `reply` can carry: [`ErrorCode::ALL`] less
/// the ingest-API-only `unauthorized` and `not_found` (the gateway turns
/// those into `internal`, `http_ingest.rs`). A unit test keeps the two
/// lists in step.
const WS_ERROR_CODES: &[&str] = &[
    ErrorCode::BadRequest.as_str(),
    ErrorCode::BadChannel.as_str(),
    ErrorCode::UnknownOp.as_str(),
    ErrorCode::Forbidden.as_str(),
    ErrorCode::NotSubscribed.as_str(),
    ErrorCode::TooLarge.as_str(),
    ErrorCode::RateLimited.as_str(),
    ErrorCode::LimitReached.as_str(),
    ErrorCode::Unavailable.as_str(),
    ErrorCode::Conflict.as_str(),
    ErrorCode::Internal.as_str(),
];

/// `herald_errors_total{code}`.
pub const ERRORS: Metric = Metric::counter_by(
    "herald_errors_total",
    "Error replies, by error code",
    "code",
    WS_ERROR_CODES,
);

/// `herald_requests_total{op}`: every [`herald_protocol::client::Op`] name
/// (a unit test builds each op and checks).
pub const REQUESTS: Metric = Metric::counter_by(
    "herald_requests_total",
    "Client requests, by op",
    "op",
    &[
        "subscribe",
        "unsubscribe",
        "publish",
        "signal",
        "presence",
        "refresh",
        "ping",
    ],
);
/// `herald_delivery_lag_seconds`.
pub const DELIVERY_LAG: Metric = Metric::histogram(
    "herald_delivery_lag_seconds",
    "From message ts to hand-off to subscriber queues",
);
/// `herald_bus_duplicates_total`.
pub const DUPLICATES: Metric = Metric::counter(
    "herald_bus_duplicates_total",
    "Bus messages dropped as already delivered",
);
/// `herald_bus_gaps_total`.
pub const GAPS: Metric = Metric::counter("herald_bus_gaps_total", "Seq gaps detected");
/// `herald_gap_fill_reads_total`.
pub const GAP_FILL_READS: Metric = Metric::counter(
    "herald_gap_fill_reads_total",
    "History reads to fill gaps or catch up",
);
/// `herald_gaps_unfillable_total`.
pub const GAPS_UNFILLABLE: Metric = Metric::counter(
    "herald_gaps_unfillable_total",
    "Gaps beyond retained history",
);
/// `herald_catchup_repairs_total`.
pub const CATCHUP_REPAIRS: Metric = Metric::counter(
    "herald_catchup_repairs_total",
    "Channels found behind by catch-up",
);
/// `herald_replay_holes_total`.
pub const REPLAY_HOLES: Metric = Metric::counter(
    "herald_replay_holes_total",
    "Replays cut short by a seq missing from history",
);
/// `herald_write_stalls_total`.
pub const WRITE_STALLS: Metric = Metric::counter(
    "herald_write_stalls_total",
    "Connections closed 4408 because their socket took no write for the heartbeat timeout",
);
/// `herald_catchup_stuck_channels`.
pub const STUCK_CHANNELS: Metric = Metric::gauge(
    "herald_catchup_stuck_channels",
    "Channels whose history read failed through every retry of the last catch-up or gap fill",
);

/// `herald_webhook_events_dropped_total`.
pub const WEBHOOK_EVENTS_DROPPED: Metric = Metric::counter(
    "herald_webhook_events_dropped_total",
    "Client events for webhooks dropped because the queue to ingest was full",
);

/// Every metric a gateway records (docs/metrics.md, "Gateway").
/// `herald_bus_bad_envelopes_total` is shared with the Redis bus's catalog.
pub const CATALOG: &[Metric] = &[
    CONNECTIONS,
    MAX_CONNECTIONS,
    SUBSCRIPTIONS,
    CHANNELS,
    FRAMES_SENT,
    BYTES_SENT,
    DISCONNECTS,
    ERRORS,
    REQUESTS,
    DELIVERY_LAG,
    DUPLICATES,
    GAPS,
    GAP_FILL_READS,
    GAPS_UNFILLABLE,
    CATCHUP_REPAIRS,
    REPLAY_HOLES,
    WRITE_STALLS,
    STUCK_CHANNELS,
    WEBHOOK_EVENTS_DROPPED,
    BAD_ENVELOPES,
];

/// Describes and creates every series of [`CATALOG`] at zero (call once the
/// recorder is installed; [`crate::Gateway::new`] does).
pub fn register_all() {
    herald_bus::metrics::register(CATALOG);
}

/// Client events for webhooks dropped at the full queue.
pub fn webhook_events_dropped() -> Counter {
    counter!(WEBHOOK_EVENTS_DROPPED.name)
}
/// Open WebSocket connections.
pub fn connections() -> Gauge {
    gauge!(CONNECTIONS.name)
}
/// The connection cap this node enforces.
pub fn max_connections() -> Gauge {
    gauge!(MAX_CONNECTIONS.name)
}
/// Subscriptions held by local connections.
pub fn subscriptions() -> Gauge {
    gauge!(SUBSCRIPTIONS.name)
}
/// Channels with at least one local subscriber.
pub fn channels() -> Gauge {
    gauge!(CHANNELS.name)
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
            frames: counter!(FRAMES_SENT.name),
            bytes: counter!(BYTES_SENT.name),
        }
    }
}

/// Connections closed, by close code ([`CloseCode::label`] or [`ABNORMAL`]).
pub fn disconnects(code: &'static str) -> Counter {
    debug_assert!(
        DISCONNECTS.allows(code),
        "close code {code} missing from the catalog"
    );
    counter!(DISCONNECTS.name, "code" => code)
}
/// Error replies, by error code.
pub fn errors(code: &'static str) -> Counter {
    debug_assert!(
        ERRORS.allows(code),
        "error code {code} missing from the catalog"
    );
    counter!(ERRORS.name, "code" => code)
}
/// Requests handled, by op.
pub fn requests(op: &'static str) -> Counter {
    debug_assert!(REQUESTS.allows(op), "op {op} missing from the catalog");
    counter!(REQUESTS.name, "op" => op)
}
/// Seconds from a message's `ts` to its hand-off to subscriber queues.
pub fn delivery_lag() -> Histogram {
    histogram!(DELIVERY_LAG.name)
}
/// Messages dropped because their seq was already delivered.
pub fn duplicates_dropped() -> Counter {
    counter!(DUPLICATES.name)
}
/// Seq gaps detected on the bus.
pub fn gaps_detected() -> Counter {
    counter!(GAPS.name)
}
/// History reads made to fill gaps or catch up.
pub fn gap_fills() -> Counter {
    counter!(GAP_FILL_READS.name)
}
/// Gaps that history could not fill (beyond retention).
pub fn gaps_skipped() -> Counter {
    counter!(GAPS_UNFILLABLE.name)
}
/// Channels found behind by the periodic catch-up.
pub fn catchups() -> Counter {
    counter!(CATCHUP_REPAIRS.name)
}
/// Replays cut short because history lost a seq meanwhile (client told to
/// reconnect with 1012).
pub fn replay_holes() -> Counter {
    counter!(REPLAY_HOLES.name)
}
/// Bus envelopes that could not be read.
pub fn bad_envelopes() -> Counter {
    counter!(BAD_ENVELOPES.name)
}
/// Connections closed because their socket took no write for the
/// heartbeat timeout (a client that stopped reading).
pub fn write_stalls() -> Counter {
    counter!(WRITE_STALLS.name)
}
/// Channels whose last catch-up or gap fill gave up after its retries
/// (history unreadable); retried at the next catch-up round.
pub fn stuck_channels() -> Gauge {
    gauge!(STUCK_CHANNELS.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_bus::metrics::{Kind, docs_mismatches};
    use herald_protocol::ChannelName;
    use herald_protocol::client::Op;
    use herald_protocol::data::JsonData;

    const DOCS: &str = include_str!("../../../docs/metrics.md");

    #[test]
    fn docs_list_exactly_the_gateway_catalog() {
        let diff = docs_mismatches(DOCS, "Gateway", CATALOG);
        assert!(
            diff.is_empty(),
            "docs/metrics.md and the gateway catalog disagree:\n{}",
            diff.join("\n")
        );
    }

    #[test]
    fn catalog_follows_the_naming_rules() {
        let mut names: Vec<&str> = CATALOG.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len(), "a metric is listed twice");
        for m in CATALOG {
            assert!(m.name.starts_with("herald_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
        }
    }

    #[test]
    fn every_close_code_has_a_disconnect_series() {
        let all = [
            CloseCode::Normal,
            CloseCode::ProtocolError,
            CloseCode::InvalidUtf8,
            CloseCode::TooBig,
            CloseCode::ServiceRestart,
            CloseCode::ProtocolViolation,
            CloseCode::Unauthorized,
            CloseCode::TokenExpired,
            CloseCode::SlowConsumer,
            CloseCode::ConnectionLimit,
            CloseCode::RateLimited,
            CloseCode::HeartbeatTimeout,
            CloseCode::Peer(1001),
            CloseCode::Peer(4321),
        ];
        for c in all {
            _every_close_code_is_listed(c);
            assert!(DISCONNECTS.allows(c.label()), "{c:?}");
        }
        assert!(DISCONNECTS.allows(ABNORMAL));
    }

    #[test]
    fn error_series_are_the_codes_a_reply_can_carry() {
        for code in ErrorCode::ALL {
            let api_only = matches!(code, ErrorCode::Unauthorized | ErrorCode::NotFound);
            assert_eq!(ERRORS.allows(code.as_str()), !api_only, "{code}");
        }
        assert_eq!(WS_ERROR_CODES.len(), ErrorCode::ALL.len() - 2);
    }

    #[test]
    fn every_op_has_a_request_series() {
        let ch = ChannelName::new("a").expect("a valid name");
        let data = JsonData::from_value(&serde_json::json!(1));
        let ops = [
            Op::Subscribe {
                channel: ch.clone(),
                since: None,
                token: None,
            },
            Op::Unsubscribe {
                channel: ch.clone(),
            },
            Op::Publish {
                channel: ch.clone(),
                data: data.clone(),
                key: None,
            },
            Op::Signal {
                channel: ch.clone(),
                data,
            },
            Op::Presence { channel: ch },
            Op::Refresh { token: "t".into() },
            Op::Ping,
        ];
        for op in &ops {
            // Fails to compile when Op gains a variant: add it above.
            match op {
                Op::Subscribe { .. }
                | Op::Unsubscribe { .. }
                | Op::Publish { .. }
                | Op::Signal { .. }
                | Op::Presence { .. }
                | Op::Refresh { .. }
                | Op::Ping => {}
            }
            assert!(REQUESTS.allows(op.name()), "{}", op.name());
        }
        assert_eq!(REQUESTS.label.map(|l| l.values.len()), Some(ops.len()));
    }
}
