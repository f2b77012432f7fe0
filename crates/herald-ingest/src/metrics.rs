//! Ingest metrics: [`CATALOG`] lists every one (docs/metrics.md, "Ingest",
//! must agree: a unit test compares them) and the accessor functions take
//! their names and label values from it. [`register_all`] (called by
//! [`crate::IngestService::new`]) creates every series at zero, so a node
//! that took no publish yet already shows them all.

use herald_bus::metrics::Metric;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// `herald_messages_published_total`.
pub const MESSAGES_PUBLISHED: Metric = Metric::counter(
    "herald_messages_published_total",
    "Messages committed, one per channel",
);
/// `herald_publishes_total{result}`.
pub const PUBLISHES: Metric = Metric::counter_by(
    "herald_publishes_total",
    "Publish calls by result",
    "result",
    &["ok", "duplicate", "error"],
);
/// `herald_publish_duration_seconds`.
pub const PUBLISH_DURATION: Metric = Metric::histogram(
    "herald_publish_duration_seconds",
    "Time to commit a publish",
);
/// `herald_bus_publish_failures_total`.
pub const BUS_PUBLISH_FAILURES: Metric = Metric::counter(
    "herald_bus_publish_failures_total",
    "Bus publishes that failed after commit",
);
/// `herald_ingest_requests_total{status}`.
pub const INGEST_REQUESTS: Metric = Metric::counter_by(
    "herald_ingest_requests_total",
    "Ingest API requests by status class",
    "status",
    &["2xx", "4xx", "5xx"],
);

/// `herald_webhook_deliveries_total{result}`.
pub const WEBHOOK_DELIVERIES: Metric = Metric::counter_by(
    "herald_webhook_deliveries_total",
    "Webhook delivery attempts by result",
    "result",
    &["ok", "failed", "timeout", "dropped"],
);
/// `herald_webhook_duration_seconds`.
pub const WEBHOOK_DURATION: Metric = Metric::histogram(
    "herald_webhook_duration_seconds",
    "Time of one webhook request, answer included",
);
/// `herald_webhook_outbox_depth`.
pub const WEBHOOK_OUTBOX_DEPTH: Metric = Metric::gauge(
    "herald_webhook_outbox_depth",
    "Webhook deliveries pending in the store, all endpoints",
);
/// `herald_webhook_events_skipped_total`.
pub const WEBHOOK_EVENTS_SKIPPED: Metric = Metric::counter(
    "herald_webhook_events_skipped_total",
    "Webhook events not stored because the endpoint's backlog was at max_pending",
);
/// `herald_webhook_before_total{result}`.
pub const WEBHOOK_BEFORE: Metric = Metric::counter_by(
    "herald_webhook_before_total",
    "Before-commit webhook calls by result",
    "result",
    &["accept", "rewrite", "reject", "fail_open", "fail_closed"],
);

/// Every metric an ingest node records (docs/metrics.md, "Ingest").
pub const CATALOG: &[Metric] = &[
    MESSAGES_PUBLISHED,
    PUBLISHES,
    PUBLISH_DURATION,
    BUS_PUBLISH_FAILURES,
    INGEST_REQUESTS,
    WEBHOOK_DELIVERIES,
    WEBHOOK_DURATION,
    WEBHOOK_OUTBOX_DEPTH,
    WEBHOOK_EVENTS_SKIPPED,
    WEBHOOK_BEFORE,
];

/// Describes and creates every series of [`CATALOG`] at zero (call once the
/// recorder is installed; [`crate::IngestService::new`] does).
pub fn register_all() {
    herald_bus::metrics::register(CATALOG);
}

/// Messages published, one per channel of each committed publish.
pub fn messages_published() -> Counter {
    counter!(MESSAGES_PUBLISHED.name)
}
/// Publish calls by result (`ok`, `duplicate`, `error`).
pub fn publishes(result: &'static str) -> Counter {
    debug_assert!(
        PUBLISHES.allows(result),
        "result {result} missing from the catalog"
    );
    counter!(PUBLISHES.name, "result" => result)
}
/// Seconds to commit a publish in the store.
pub fn publish_duration() -> Histogram {
    histogram!(PUBLISH_DURATION.name)
}
/// Bus publishes that failed after the commit.
pub fn bus_publish_failures() -> Counter {
    counter!(BUS_PUBLISH_FAILURES.name)
}
/// HTTP API requests by status class (`2xx`, `4xx`, `5xx`).
pub fn http_requests(status: &'static str) -> Counter {
    debug_assert!(
        INGEST_REQUESTS.allows(status),
        "status {status} missing from the catalog"
    );
    counter!(INGEST_REQUESTS.name, "status" => status)
}

/// Webhook delivery attempts by result (`ok`, `failed`, `timeout`,
/// `dropped`: the last attempt failed or the event grew too old).
pub fn webhook_deliveries(result: &'static str) -> Counter {
    debug_assert!(
        WEBHOOK_DELIVERIES.allows(result),
        "result {result} missing from the catalog"
    );
    counter!(WEBHOOK_DELIVERIES.name, "result" => result)
}
/// Seconds of one webhook request.
pub fn webhook_duration() -> Histogram {
    histogram!(WEBHOOK_DURATION.name)
}
/// Pending webhook deliveries in the store.
pub fn webhook_outbox_depth() -> Gauge {
    gauge!(WEBHOOK_OUTBOX_DEPTH.name)
}
/// Webhook events skipped at an endpoint's `max_pending`.
pub fn webhook_events_skipped() -> Counter {
    counter!(WEBHOOK_EVENTS_SKIPPED.name)
}
/// Before-commit webhook calls by result.
pub fn webhook_before(result: &'static str) -> Counter {
    debug_assert!(
        WEBHOOK_BEFORE.allows(result),
        "result {result} missing from the catalog"
    );
    counter!(WEBHOOK_BEFORE.name, "result" => result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_bus::metrics::docs_mismatches;

    const DOCS: &str = include_str!("../../../docs/metrics.md");

    #[test]
    fn docs_list_exactly_the_ingest_catalog() {
        let diff = docs_mismatches(DOCS, "Ingest", CATALOG);
        assert!(
            diff.is_empty(),
            "docs/metrics.md and the ingest catalog disagree:\n{}",
            diff.join("\n")
        );
    }
}
