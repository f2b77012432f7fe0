//! The bus's metrics. Names carry the `herald_` prefix; labels only from
//! closed sets (never a channel). Recorded with the `metrics` facade: they are no-ops until the
//! binary installs a recorder, and [`describe`] gives them help texts.

use metrics::{Counter, counter, describe_counter};

/// Bus payloads dropped because they were not a valid envelope for the Redis
/// channel they came on. The same series the gateway counts its unusable
/// envelopes in (docs/metrics.md): one "unreadable bus input" figure.
pub fn malformed_payloads() -> Counter {
    counter!("herald_bus_bad_envelopes_total")
}

/// Times an attachment re-subscribed its whole channel set after its Redis
/// connection was lost (each one is followed by a catch-up from history).
pub fn resubscribes() -> Counter {
    counter!("herald_bus_resubscribes_total")
}

/// Series of [`subscriber_rebuilds`] and [`command_rebuilds`].
const CONNECTION_REBUILDS: &str = "herald_bus_connection_rebuilds_total";

/// Times an attachment's Redis subscriber connection was found unresponsive
/// (consecutive failed PINGs or requests: a half-open link, a partition, a
/// hung Redis) and dropped to be rebuilt; each rebuild re-subscribes the
/// whole channel set and is followed by a catch-up from history.
/// `herald_bus_connection_rebuilds_total{conn="subscriber"}`.
pub fn subscriber_rebuilds() -> Counter {
    counter!(CONNECTION_REBUILDS, "conn" => "subscriber")
}

/// Times the shared Redis command connection (publish, presence, ping) was
/// found unresponsive (consecutive failed requests or PINGs) and dropped to
/// be rebuilt; requests fail fast until the new one is up.
/// `herald_bus_connection_rebuilds_total{conn="command"}`.
pub fn command_rebuilds() -> Counter {
    counter!(CONNECTION_REBUILDS, "conn" => "command")
}

/// Registers the help texts (call once after installing the recorder).
pub fn describe() {
    describe_counter!("herald_bus_bad_envelopes_total", "Unreadable bus envelopes");
    describe_counter!(
        "herald_bus_resubscribes_total",
        "Bus re-subscriptions after a lost Redis connection"
    );
    describe_counter!(
        CONNECTION_REBUILDS,
        "Unresponsive Redis connections dropped and rebuilt, by conn (subscriber, command)"
    );
}
