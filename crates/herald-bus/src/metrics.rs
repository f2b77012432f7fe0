//! The bus's metrics, and the catalog type every herald crate declares its
//! metrics with.
//!
//! Each crate that records metrics (`herald-bus`, `herald-gateway`,
//! `herald-ingest`) lists them in one `CATALOG` of [`Metric`]s: name, kind,
//! help text and, for a labelled series, the label's closed value set. The
//! accessor functions take their names from the catalog entries, and
//! [`register`] describes and creates every series of a catalog, so a
//! scrape right after start shows each one at zero (absent-series alerts and
//! dashboards need that: docs/metrics.md). This crate is the lowest one that
//! records metrics, so the shared type lives here.
//!
//! Names carry the `herald_` prefix and base units; labels come from closed
//! sets only (never a channel). Recorded through the `metrics` facade: they
//! are no-ops until the binary installs a recorder, and handles taken before
//! that stay no-ops, so [`register_all`] runs after the install.

use metrics::{
    Counter, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// What a catalog entry is, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Exported as `_bucket{le}`, `_sum` and `_count`; always in seconds.
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word (and docs/metrics.md's type column).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric's one label and every value it can take.
#[derive(Debug, Clone, Copy)]
pub struct Label {
    /// The label name (`code`, `op`, `result`, ...).
    pub key: &'static str,
    /// The closed set of values; [`register`] creates one series per value.
    pub values: &'static [&'static str],
}

/// One metric of a crate's catalog.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The exported name (`herald_...`).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The label, when the series is split by one.
    pub label: Option<Label>,
}

impl Metric {
    /// An unlabelled counter.
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            help,
            label: None,
        }
    }

    /// A counter split by `key`, one series per value of `values`.
    pub const fn counter_by(
        name: &'static str,
        help: &'static str,
        key: &'static str,
        values: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            help,
            label: Some(Label { key, values }),
        }
    }

    /// An unlabelled gauge.
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            help,
            label: None,
        }
    }

    /// An unlabelled histogram in seconds.
    pub const fn histogram(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind: Kind::Histogram,
            help,
            label: None,
        }
    }

    /// Whether `value` is one of this metric's label values (debug checks
    /// of the accessor functions: a value outside the catalog would be a
    /// series no dashboard or alert knows).
    pub fn allows(&self, value: &str) -> bool {
        self.label.is_some_and(|l| l.values.contains(&value))
    }
}

/// Describes every metric of `catalog` and creates each of its series (every
/// label value of a labelled one): counters and gauges at 0, histograms with
/// no sample (metrics-exporter-prometheus 0.18 renders a registered histogram
/// without samples as its buckets, `_sum` and `_count` at 0). Creating a
/// gauge does not reset one already set. Call it after the recorder is
/// installed, once per catalog the process records (again is harmless).
pub fn register(catalog: &[Metric]) {
    for m in catalog {
        match m.kind {
            Kind::Counter => describe_counter!(m.name, m.help),
            Kind::Gauge => describe_gauge!(m.name, m.help),
            Kind::Histogram => describe_histogram!(m.name, metrics::Unit::Seconds, m.help),
        }
        let create = |labels: Vec<(&'static str, &'static str)>| match m.kind {
            Kind::Counter => counter!(m.name, &labels).increment(0),
            Kind::Gauge => {
                let _ = gauge!(m.name, &labels);
            }
            Kind::Histogram => {
                let _ = histogram!(m.name, &labels);
            }
        };
        match m.label {
            None => create(Vec::new()),
            Some(l) => {
                for v in l.values {
                    create(vec![(l.key, *v)]);
                }
            }
        }
    }
}

/// Compares `catalog` with the table under the `## {heading}` heading of
/// docs/metrics.md (`| `name` | type | `label` | meaning |` rows) and with
/// its "Label values" table (`| `name` | `label` | `v1` `v2` ... |` rows, for
/// the catalog's labelled metrics), and returns every difference, one
/// sentence each (empty: they agree). Each crate's unit tests run it on its
/// own catalog, so the docs list exactly what the code exports.
pub fn docs_mismatches(docs: &str, heading: &str, catalog: &[Metric]) -> Vec<String> {
    let mut out = Vec::new();
    let documented = table_rows(section(docs, heading));
    let label_rows = table_rows(section(docs, "Label values"));
    for m in catalog {
        let Some(row) = documented
            .iter()
            .find(|r| r.first().map(String::as_str) == Some(m.name))
        else {
            out.push(format!(
                "{} is exported but missing from the {heading} table",
                m.name
            ));
            continue;
        };
        if row.get(1).map(String::as_str) != Some(m.kind.as_str()) {
            out.push(format!(
                "{}: the {heading} table says {:?}, the code {}",
                m.name,
                row.get(1),
                m.kind.as_str()
            ));
        }
        let label = row.get(2).map(String::as_str).unwrap_or_default();
        match m.label {
            None if !label.is_empty() => {
                out.push(format!(
                    "{}: documented with label {label}, exported without",
                    m.name
                ));
            }
            None => {}
            Some(l) => {
                if label != l.key {
                    out.push(format!(
                        "{}: documented label {label:?}, exported {}",
                        m.name, l.key
                    ));
                }
                let values = label_rows
                    .iter()
                    .find(|r| r.first().map(String::as_str) == Some(m.name))
                    .and_then(|r| r.get(2))
                    .map(|v| words(v))
                    .unwrap_or_default();
                let mut want: Vec<&str> = l.values.to_vec();
                want.sort_unstable();
                let mut got: Vec<&str> = values.iter().map(String::as_str).collect();
                got.sort_unstable();
                if want != got {
                    out.push(format!(
                        "{}: the Label values table lists {got:?}, the code {want:?}",
                        m.name
                    ));
                }
            }
        }
    }
    for row in &documented {
        let Some(name) = row.first() else { continue };
        if name.starts_with("herald_") && !catalog.iter().any(|m| m.name == name) {
            out.push(format!("{name} is in the {heading} table but not exported"));
        }
    }
    out
}

/// The text under `## {heading}` up to the next `## ` heading.
fn section<'a>(docs: &'a str, heading: &str) -> &'a str {
    let start = docs
        .lines()
        .scan(0, |at, line| {
            let here = *at;
            *at += line.len() + 1;
            Some((here, line))
        })
        .find(|(_, line)| {
            line.strip_prefix("## ")
                .is_some_and(|h| h.starts_with(heading))
        })
        .map(|(at, _)| at);
    let Some(start) = start else { return "" };
    let rest = docs.get(start..).unwrap_or_default();
    let body_at = rest.find('\n').map_or(rest.len(), |i| i + 1);
    let body = rest.get(body_at..).unwrap_or_default();
    match body.find("\n## ") {
        Some(end) => body.get(..end).unwrap_or_default(),
        None => body,
    }
}

/// A Markdown table's rows as cells with backticks and spaces trimmed.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| name"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

/// The backticked words of a cell whose outer backticks were trimmed:
/// `1000` `1002` -> ["1000", "1002"].
fn words(cell: &str) -> Vec<String> {
    cell.split('`')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `herald_bus_bad_envelopes_total`. The gateway counts its unusable
/// envelopes in the same series (docs/metrics.md): one "unreadable bus
/// input" figure.
pub const BAD_ENVELOPES: Metric =
    Metric::counter("herald_bus_bad_envelopes_total", "Unreadable bus envelopes");

/// `herald_bus_resubscribes_total`.
pub const RESUBSCRIBES: Metric = Metric::counter(
    "herald_bus_resubscribes_total",
    "Bus re-subscriptions after a lost Redis connection",
);

/// `herald_bus_connection_rebuilds_total{conn}`.
pub const CONNECTION_REBUILDS: Metric = Metric::counter_by(
    "herald_bus_connection_rebuilds_total",
    "Unresponsive Redis connections dropped and rebuilt, by conn (subscriber, command)",
    "conn",
    &["subscriber", "command"],
);

/// Every metric the Redis bus records (docs/metrics.md, "Bus"). The local
/// bus of `herald dev` records none.
pub const CATALOG: &[Metric] = &[BAD_ENVELOPES, RESUBSCRIBES, CONNECTION_REBUILDS];

/// Describes and creates every series of [`CATALOG`] (see [`register`]):
/// called where a process starts a Redis bus, after the recorder is
/// installed.
pub fn register_all() {
    register(CATALOG);
}

/// Bus payloads dropped because they were not a valid envelope for the Redis
/// channel they came on.
pub fn malformed_payloads() -> Counter {
    counter!(BAD_ENVELOPES.name)
}

/// Times an attachment re-subscribed its whole channel set after its Redis
/// connection was lost (each one is followed by a catch-up from history).
pub fn resubscribes() -> Counter {
    counter!(RESUBSCRIBES.name)
}

/// Times an attachment's Redis subscriber connection was found unresponsive
/// (consecutive failed PINGs or requests: a half-open link, a partition, a
/// hung Redis) and dropped to be rebuilt; each rebuild re-subscribes the
/// whole channel set and is followed by a catch-up from history.
/// `herald_bus_connection_rebuilds_total{conn="subscriber"}`.
pub fn subscriber_rebuilds() -> Counter {
    counter!(CONNECTION_REBUILDS.name, "conn" => "subscriber")
}

/// Times the shared Redis command connection (publish, presence, ping) was
/// found unresponsive (consecutive failed requests or PINGs) and dropped to
/// be rebuilt; requests fail fast until the new one is up.
/// `herald_bus_connection_rebuilds_total{conn="command"}`.
pub fn command_rebuilds() -> Counter {
    counter!(CONNECTION_REBUILDS.name, "conn" => "command")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = include_str!("../../../docs/metrics.md");

    #[test]
    fn docs_list_exactly_the_bus_catalog() {
        let diff = docs_mismatches(DOCS, "Bus", CATALOG);
        assert!(
            diff.is_empty(),
            "docs/metrics.md and the bus catalog disagree:\n{}",
            diff.join("\n")
        );
    }

    #[test]
    fn accessors_use_catalog_label_values() {
        assert!(CONNECTION_REBUILDS.allows("subscriber"));
        assert!(CONNECTION_REBUILDS.allows("command"));
        assert!(!BAD_ENVELOPES.allows("x"));
    }

    #[test]
    fn docs_check_finds_each_kind_of_drift() {
        let docs = "# M\n\n## Bus (x)\n\n| name | type | labels | meaning |\n|---|---|---|---|\n\
                    | `herald_a_total` | counter | `k` | a |\n| `herald_old_total` | counter | | gone |\n\
                    \n## Label values\n\n| name | label | values |\n|---|---|---|\n\
                    | `herald_a_total` | `k` | `x` `y` |\n";
        let catalog = [
            Metric::counter_by("herald_a_total", "a", "k", &["x", "z"]),
            Metric::gauge("herald_new", "new"),
        ];
        let diff = docs_mismatches(docs, "Bus", &catalog);
        assert_eq!(diff.len(), 3, "{diff:#?}");
        assert!(
            diff.iter()
                .any(|d| d.contains("herald_new is exported but missing"))
        );
        assert!(
            diff.iter()
                .any(|d| d.contains("herald_old_total is in the Bus table"))
        );
        assert!(diff.iter().any(|d| d.contains("Label values table lists")));
        let good = [
            Metric::counter_by("herald_a_total", "a", "k", &["y", "x"]),
            Metric::counter("herald_old_total", "o"),
        ];
        assert!(docs_mismatches(docs, "Bus", &good).is_empty());
    }
}
