//! Ingest metrics (listed in docs/metrics.md).

use metrics::{Counter, Histogram, counter, histogram};

/// Messages published, one per channel of each committed publish.
pub fn messages_published() -> Counter {
    counter!("herald_messages_published_total")
}
/// Publish calls by result (`ok`, `duplicate`, `error`).
pub fn publishes(result: &'static str) -> Counter {
    counter!("herald_publishes_total", "result" => result)
}
/// Seconds to commit a publish in the store.
pub fn publish_duration() -> Histogram {
    histogram!("herald_publish_duration_seconds")
}
/// Bus publishes that failed after the commit.
pub fn bus_publish_failures() -> Counter {
    counter!("herald_bus_publish_failures_total")
}
/// HTTP API requests by status class.
pub fn http_requests(status: &'static str) -> Counter {
    counter!("herald_ingest_requests_total", "status" => status)
}

/// Registers descriptions.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        "herald_messages_published_total",
        "Messages committed, one per channel"
    );
    describe_counter!("herald_publishes_total", "Publish calls by result");
    describe_histogram!(
        "herald_publish_duration_seconds",
        metrics::Unit::Seconds,
        "Time to commit a publish"
    );
    describe_counter!(
        "herald_bus_publish_failures_total",
        "Bus publishes that failed after commit"
    );
    describe_counter!(
        "herald_ingest_requests_total",
        "Ingest API requests by status class"
    );
}
