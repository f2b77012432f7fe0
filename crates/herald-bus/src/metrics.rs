//! The bus's metrics. Names carry the `herald_` prefix; no labels (never a
//! channel). Recorded with the `metrics` facade: they are no-ops until the
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

/// Registers the help texts (call once after installing the recorder).
pub fn describe() {
    describe_counter!("herald_bus_bad_envelopes_total", "Unreadable bus envelopes");
    describe_counter!(
        "herald_bus_resubscribes_total",
        "Bus re-subscriptions after a lost Redis connection"
    );
}
