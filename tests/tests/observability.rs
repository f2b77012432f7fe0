//! Issue 12: herald's observability, checked against the real binary and the
//! real files.
//!
//! - Metrics from the start: a fresh `herald dev`, `herald gateway` and
//!   `herald ingest`, scraped before any traffic, export exactly the metrics
//!   docs/metrics.md lists for their role, each labelled one once per value of
//!   its closed set, all at zero (histograms with every documented bucket),
//!   so absent-series alerts and dashboards work on a new node. The docs
//!   tables are in turn compared with each crate's `CATALOG` by the unit tests
//!   in `crates/herald-{gateway,ingest,bus}/src/metrics.rs`: code, docs and
//!   scrape agree.
//! - The Grafana dashboard (`deploy/grafana/herald.json`), the alert rules
//!   (`deploy/prometheus/alerts.yml`) and their unit tests name only metrics
//!   herald exports (a live `herald dev` scrape plus the documented gateway,
//!   ingest and bus catalogs; `_bucket`/`_sum`/`_count` mapped to their
//!   histogram), with labels and label values they have.
//! - `promtool` checks the rules, runs their unit tests (each alert fires on
//!   its input and not on a healthy one), checks `prometheus.yml`, and parses
//!   every dashboard query. `promtool` comes from the Debian package
//!   `prometheus`; without it these tests fail saying so.
//! - Every alert has a runbook subsection in docs/operations.md, at the
//!   anchor its `runbook_url` names.
//! - docker-compose.yml runs Prometheus and Grafana on those files: its YAML
//!   parses, what it mounts exists, and the scrape targets are the Compose
//!   services on their admin ports (config/*.toml).
//!
//! The checkers return their complaints instead of panicking, so the
//! `catches_*` tests can break one thing and expect the matching complaint:
//! a checker that cannot fail is worth nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use herald_testkit::RedisServer;
use herald_tests::*;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = workspace_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// YAML (1.2 core schema) to JSON values, with `<<` merge keys resolved
/// (docker-compose.yml uses them; yaml-rust2 leaves them as plain keys).
fn yaml_to_json(y: &yaml_rust2::Yaml) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    Ok(match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(s) => {
            let f: f64 = s.parse().map_err(|_| format!("bad float {s:?}"))?;
            json!(f)
        }
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect::<Result<_, _>>()?),
        Yaml::Hash(h) => {
            let mut own = Map::new();
            let mut merged = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("non-scalar mapping key {other:?}")),
                };
                let v = yaml_to_json(v)?;
                if key == "<<" {
                    let sources = match v {
                        Value::Array(a) => a,
                        one => vec![one],
                    };
                    for s in sources {
                        let Value::Object(m) = s else {
                            return Err("a << merge key must name mappings".into());
                        };
                        for (k, v) in m {
                            merged.entry(k).or_insert(v);
                        }
                    }
                } else if own.insert(key.clone(), v).is_some() {
                    return Err(format!("duplicate key {key:?}"));
                }
            }
            for (k, v) in merged {
                own.entry(k).or_insert(v);
            }
            Value::Object(own)
        }
        Yaml::Alias(_) => return Err("unresolved alias".into()),
        Yaml::BadValue => return Err("bad value".into()),
    })
}

/// The one YAML document of `rel`, as JSON.
fn yaml_file(rel: &str) -> Value {
    let docs = yaml_rust2::YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one YAML document expected");
    yaml_to_json(&docs[0]).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------------------
// The documented catalog (docs/metrics.md)
// ---------------------------------------------------------------------------

/// One metric as docs/metrics.md lists it.
#[derive(Debug, Clone, PartialEq)]
struct Documented {
    name: String,
    /// `counter`, `gauge` or `histogram`.
    kind: String,
    /// The label and its closed set of values.
    label: Option<(String, BTreeSet<String>)>,
}

/// The text under the `## {heading}...` heading, up to the next `## `.
fn md_section<'a>(md: &'a str, heading: &str) -> &'a str {
    let marker = format!("\n## {heading}");
    let Some(at) = md.find(&marker) else {
        return "";
    };
    let body = &md[at + marker.len()..];
    let body = body.split_once('\n').map_or("", |(_, b)| b);
    body.split("\n## ").next().unwrap_or_default()
}

/// A Markdown table's body rows as cells, backticks and spaces trimmed.
fn md_rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect()
        })
        .collect()
}

/// The metrics of one docs/metrics.md table (`Gateway`, `Ingest`, `Bus`),
/// with label values from its "Label values" table.
fn documented(md: &str, heading: &str) -> Vec<Documented> {
    let values: BTreeMap<String, (String, BTreeSet<String>)> =
        md_rows(md_section(md, "Label values"))
            .into_iter()
            .filter_map(|r| {
                let words = r
                    .get(2)?
                    .split('`')
                    .map(str::trim)
                    .filter(|w| !w.is_empty());
                Some((
                    r.first()?.clone(),
                    (r.get(1)?.clone(), words.map(str::to_owned).collect()),
                ))
            })
            .collect();
    md_rows(md_section(md, heading))
        .into_iter()
        .filter(|r| r.first().is_some_and(|n| n.starts_with("herald_")))
        .map(|r| {
            let label = r.get(2).filter(|l| !l.is_empty()).map(|l| {
                let (k, vals) = values.get(&r[0]).cloned().unwrap_or_default();
                assert_eq!(&k, l, "{}: label values listed for another label", r[0]);
                (l.clone(), vals)
            });
            Documented {
                name: r[0].clone(),
                kind: r.get(1).cloned().unwrap_or_default(),
                label,
            }
        })
        .collect()
}

/// What a process of `role` must export, by name.
fn expected(md: &str, role: &str) -> BTreeMap<String, Documented> {
    let tables: &[&str] = match role {
        "dev" => &["Gateway", "Ingest"],
        "gateway" => &["Gateway", "Bus"],
        "ingest" => &["Ingest", "Bus"],
        other => panic!("no role {other}"),
    };
    let mut out = BTreeMap::new();
    for t in tables {
        let metrics = documented(md, t);
        assert!(!metrics.is_empty(), "docs/metrics.md has no {t} table");
        for m in metrics {
            if let Some(prev) = out.insert(m.name.clone(), m.clone()) {
                assert_eq!(prev, m, "{} is documented twice, differently", m.name);
            }
        }
    }
    out
}

/// Every metric any herald process exports.
fn all_documented(md: &str) -> BTreeMap<String, Documented> {
    let mut out = expected(md, "gateway");
    out.extend(expected(md, "ingest"));
    out
}

/// The histogram bounds of docs/metrics.md's "Histogram buckets" block.
fn documented_buckets(md: &str) -> Vec<f64> {
    let sec = md_section(md, "Histogram buckets");
    let block = sec
        .split("```")
        .nth(1)
        .expect("a ``` block of bucket bounds");
    block
        .split_whitespace()
        .map(|w| w.parse().unwrap_or_else(|_| panic!("bucket bound {w:?}")))
        .collect()
}

// ---------------------------------------------------------------------------
// The Prometheus text format
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// `# TYPE` lines: family name -> type.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad labels {s:?}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("bad escape in {s:?}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        out.insert(k.trim_start_matches(',').trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(out)
}

fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t
                .split_once(' ')
                .ok_or_else(|| format!("bad TYPE {line:?}"))?;
            e.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("bad sample {line:?}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').ok_or("no }")?)?),
            None => (series, BTreeMap::new()),
        };
        e.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(e)
}

/// Everything wrong with a fresh node's scrape: a herald metric missing,
/// extra or of another type, a label value missing or extra, a series not at
/// zero, a histogram without the documented buckets, a sample without the
/// node's `node` label.
fn fresh_scrape_problems(
    text: &str,
    want: &BTreeMap<String, Documented>,
    buckets: &[f64],
    node: &str,
) -> Vec<String> {
    let mut p = Vec::new();
    let e = match parse_exposition(text) {
        Ok(e) => e,
        Err(err) => return vec![format!("unparsable scrape: {err}")],
    };
    let exported: BTreeSet<&String> = e
        .types
        .keys()
        .filter(|n| n.starts_with("herald_"))
        .collect();
    for name in &exported {
        if !want.contains_key(name.as_str()) {
            p.push(format!(
                "{name} is exported but not documented for this role"
            ));
        }
    }
    for (name, m) in want {
        match e.types.get(name) {
            None => {
                p.push(format!("{name} ({}) is missing", m.kind));
                continue;
            }
            Some(t) if *t != m.kind => p.push(format!("{name} is a {t}, documented as {}", m.kind)),
            Some(_) => {}
        }
        let family: Vec<&Sample> = e
            .samples
            .iter()
            .filter(|s| {
                s.name == *name
                    || (m.kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|suf| s.name.strip_suffix(suf) == Some(name)))
            })
            .collect();
        if family.is_empty() {
            p.push(format!("{name} has a TYPE line but no sample"));
        }
        for s in &family {
            if s.labels.get("node").map(String::as_str) != Some(node) {
                p.push(format!(
                    "{} {:?}: node label is not {node:?}",
                    s.name, s.labels
                ));
            }
            let mut keys: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
            keys.remove("node");
            if s.name.ends_with("_bucket") {
                keys.remove("le");
            }
            let want_keys: BTreeSet<&str> = m.label.iter().map(|(k, _)| k.as_str()).collect();
            if keys != want_keys {
                p.push(format!(
                    "{} has labels {keys:?}, documented {want_keys:?}",
                    s.name
                ));
            }
            let zero = match name.as_str() {
                "herald_max_connections" => s.value >= 1.0,
                _ => s.value == 0.0,
            };
            if !zero {
                p.push(format!(
                    "{} {:?} is {} on a node that served nothing",
                    s.name, s.labels, s.value
                ));
            }
        }
        if let Some((k, values)) = &m.label {
            let got: BTreeSet<String> = family
                .iter()
                .filter_map(|s| s.labels.get(k).cloned())
                .collect();
            if &got != values {
                p.push(format!(
                    "{name}{{{k}}}: exported {got:?}, documented {values:?}"
                ));
            }
        }
        if m.kind == "histogram" {
            let les: Vec<&str> = family
                .iter()
                .filter(|s| s.name.ends_with("_bucket"))
                .filter_map(|s| s.labels.get("le").map(String::as_str))
                .collect();
            let mut want_les: Vec<f64> = buckets.to_vec();
            want_les.push(f64::INFINITY);
            let mut got_les: Vec<f64> = les
                .iter()
                .map(|l| {
                    if *l == "+Inf" {
                        f64::INFINITY
                    } else {
                        l.parse().unwrap_or(f64::NAN)
                    }
                })
                .collect();
            got_les.sort_by(f64::total_cmp);
            if got_les != want_les {
                p.push(format!(
                    "{name}: buckets {les:?}, documented {buckets:?} and +Inf"
                ));
            }
            for suf in ["_sum", "_count"] {
                if !family.iter().any(|s| s.name == format!("{name}{suf}")) {
                    p.push(format!("{name}{suf} is missing"));
                }
            }
        }
    }
    p
}

async fn scrape(admin_url: &str) -> String {
    let client = reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("a reqwest client");
    let resp = client
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {admin_url}/metrics: {e}"));
    assert_eq!(resp.status(), 200, "GET {admin_url}/metrics");
    resp.text().await.expect("a /metrics body")
}

/// Scrapes a node that has just answered `/healthz` and checks it against
/// its role's catalog.
async fn assert_fresh(h: &HeraldProcess, role: &str, node: &str) {
    let md = read("docs/metrics.md");
    let text = scrape(&h.admin_url()).await;
    let problems =
        fresh_scrape_problems(&text, &expected(&md, role), &documented_buckets(&md), node);
    assert!(
        problems.is_empty(),
        "a fresh `herald {role}` does not export its catalog (docs/metrics.md):\n{}\n\n--- /metrics ---\n{text}",
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Metric names in PromQL
// ---------------------------------------------------------------------------

/// A metric named in a PromQL expression, with its `{...}` matchers
/// (label, operator, value).
#[derive(Debug)]
struct MetricRef {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// The `herald_*` metrics an expression (or series selector) names. String
/// literals are skipped, so a `job="herald-ingest"` or a legend is not a
/// metric.
fn metric_refs(expr: &str) -> Result<Vec<MetricRef>, String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            let q = c;
            i += 1;
            while i < b.len() && b[i] != q {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if ident(c) && !c.is_ascii_digit() {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            if !word.starts_with("herald_") {
                continue;
            }
            let mut matchers = Vec::new();
            let mut j = i;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            if j < b.len() && b[j] == b'{' {
                let close = expr[j..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed {{ after {word} in {expr:?}"))?;
                let inner = &expr[j + 1..j + close];
                for m in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    let op_at = m
                        .find(['=', '!'])
                        .ok_or_else(|| format!("bad matcher {m:?} in {expr:?}"))?;
                    let (k, rest) = m.split_at(op_at);
                    let op_len = if rest.starts_with("!=")
                        || rest.starts_with("=~")
                        || rest.starts_with("!~")
                    {
                        2
                    } else {
                        1
                    };
                    let (op, v) = rest.split_at(op_len);
                    let v = v.trim().trim_matches('"');
                    matchers.push((k.trim().to_owned(), op.to_owned(), v.to_owned()));
                }
                i = j + close + 1;
            }
            out.push(MetricRef {
                name: word.to_owned(),
                matchers,
            });
            continue;
        }
        i += 1;
    }
    Ok(out)
}

/// Labels every herald series has in Prometheus: herald's global `node`,
/// the scrape's `job` and `instance`.
const SCRAPE_LABELS: &[&str] = &["node", "job", "instance"];

/// What is wrong with the metrics `expr` names, given what herald exports
/// (`known`, by family name): an unknown name, a histogram suffix on a
/// non-histogram, a label the metric does not have, an `=` on a value
/// outside its closed set.
fn expr_problems(whence: &str, expr: &str, known: &BTreeMap<String, Documented>) -> Vec<String> {
    let refs = match metric_refs(expr) {
        Ok(r) => r,
        Err(e) => return vec![format!("{whence}: {e}")],
    };
    let mut p = Vec::new();
    for r in refs {
        let (m, bucket) = match known.get(&r.name) {
            Some(m) => (m, false),
            None => {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| r.name.strip_suffix(s).map(|b| (b, *s == "_bucket")))
                    .and_then(|(b, is_bucket)| {
                        known
                            .get(b)
                            .filter(|m| m.kind == "histogram")
                            .map(|m| (m, is_bucket))
                    });
                match base {
                    Some(x) => x,
                    None => {
                        p.push(format!(
                            "{whence}: {} is not a metric herald exports",
                            r.name
                        ));
                        continue;
                    }
                }
            }
        };
        if m.kind == "histogram" && r.name == m.name {
            p.push(format!(
                "{whence}: {} is a histogram: use _bucket, _sum or _count",
                r.name
            ));
        }
        for (k, op, v) in &r.matchers {
            if SCRAPE_LABELS.contains(&k.as_str()) || (bucket && k == "le") {
                continue;
            }
            match &m.label {
                Some((lk, values)) if lk == k => {
                    if op == "=" && !values.contains(v) {
                        p.push(format!(
                            "{whence}: {}{{{k}={v:?}}}: {k} is one of {values:?}",
                            r.name
                        ));
                    }
                }
                _ => p.push(format!("{whence}: {} has no label {k}", r.name)),
            }
        }
    }
    p
}

/// The metric families a running `herald dev` exports, plus the documented
/// gateway, ingest and bus catalogs (a dev node runs no Redis bus; the
/// gateway and ingest scrapes are compared with the same docs by the
/// `*_at_zero_from_start` tests).
async fn known_metrics() -> BTreeMap<String, Documented> {
    let md = read("docs/metrics.md");
    let mut known = all_documented(&md);
    let dev = start_dev(&[]).await;
    let e = parse_exposition(&scrape(&dev.admin_url()).await).expect("dev's /metrics parses");
    for (name, kind) in e.types.iter().filter(|(n, _)| n.starts_with("herald_")) {
        let m = known.entry(name.clone()).or_insert_with(|| Documented {
            name: name.clone(),
            kind: kind.clone(),
            label: None,
        });
        assert_eq!(
            &m.kind, kind,
            "{name}: dev exports a {kind}, docs say {}",
            m.kind
        );
    }
    known
}

/// Every (where, expr) of the dashboard: panel targets and variable queries.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let here = match m.get("title").and_then(Value::as_str) {
                        Some(t) => format!("{path}/{t}"),
                        None => path.to_owned(),
                    };
                    if (k == "expr" || k == "definition") && v.is_string() {
                        out.push((here.clone(), v.as_str().unwrap_or_default().to_owned()));
                    } else if k == "query" && m.get("type").and_then(Value::as_str) == Some("query")
                    {
                        let q = v.get("query").and_then(Value::as_str).or(v.as_str());
                        if let Some(q) = q {
                            out.push((here.clone(), q.to_owned()));
                        }
                    } else {
                        walk(v, &here, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, path, out)),
            _ => {}
        }
    }
    walk(d, "herald.json", &mut out);
    out
}

/// Every (where, expr) of a rule file: each rule's `expr`.
fn rule_exprs(rules: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in rules["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or("?");
            out.push((
                format!("alerts.yml/{name}"),
                r["expr"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    out
}

/// Every (where, series) of a rule unit-test file's input series.
fn rule_test_series(tests: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in tests["tests"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or("?");
        for s in t["input_series"].as_array().into_iter().flatten() {
            out.push((
                format!("alerts_test.yml/{name}"),
                s["series"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// promtool
// ---------------------------------------------------------------------------

/// `promtool` on PATH, or a failure naming the Debian package.
fn promtool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool not found on PATH: install the Debian package `prometheus` \
                 (apt-get install -y --no-install-recommends prometheus); it checks \
                 deploy/prometheus/*.yml"
            )
        })
}

/// Runs `promtool args...` in `dir`; returns its exit success and output.
fn run_promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool");
    let text = format!(
        "$ promtool {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------
// Tests: metrics from the start
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dev_exports_its_whole_catalog_at_zero_from_start() {
    let dev = start_dev(&[]).await;
    assert_fresh(&dev, "dev", "dev").await;
}

#[tokio::test]
async fn gateway_and_ingest_export_their_whole_catalogs_at_zero_from_start() {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let ingest = HeraldProcess::start(HeraldOptions {
        subcommand: "ingest".into(),
        args: ["--redis-url", &redis.url(), "--node-id", "obs-ingest"]
            .map(str::to_owned)
            .to_vec(),
        ..HeraldOptions::default()
    })
    .await;
    assert_fresh(&ingest, "ingest", "obs-ingest").await;
    let gateway = HeraldProcess::start(HeraldOptions {
        subcommand: "gateway".into(),
        args: [
            "--redis-url",
            &redis.url(),
            "--ingest-url",
            &ingest.http_url(),
            "--node-id",
            "obs-gw",
        ]
        .map(str::to_owned)
        .to_vec(),
        api_key: ingest.api_key.clone(),
        ..HeraldOptions::default()
    })
    .await;
    assert_fresh(&gateway, "gateway", "obs-gw").await;
}

#[test]
fn documented_metrics_follow_the_naming_rules() {
    // STYLE.md: `herald_` prefix, base units, `_total` counters; all
    // histograms are in seconds (docs/metrics.md "Histogram buckets").
    let md = read("docs/metrics.md");
    let mut p = Vec::new();
    for m in all_documented(&md).values() {
        let ok = m.name.starts_with("herald_")
            && match m.kind.as_str() {
                "counter" => m.name.ends_with("_total"),
                "histogram" => m.name.ends_with("_seconds"),
                "gauge" => !m.name.ends_with("_total"),
                _ => false,
            };
        if !ok {
            p.push(format!("{} ({})", m.name, m.kind));
        }
        if let Some((k, values)) = &m.label
            && (values.is_empty() || k.is_empty())
        {
            p.push(format!("{}: label {k:?} without values", m.name));
        }
    }
    assert!(
        p.is_empty(),
        "metrics breaking the naming rules:\n{}",
        p.join("\n")
    );
}

#[test]
fn catches_a_missing_series_a_missing_label_value_and_a_non_zero_value() {
    let md = read("docs/metrics.md");
    let want = expected(&md, "ingest");
    let buckets = documented_buckets(&md);
    // A scrape made from the docs themselves passes...
    let mut good = String::new();
    for m in want.values() {
        good.push_str(&format!("# TYPE {} {}\n", m.name, m.kind));
        match (&m.label, m.kind.as_str()) {
            (Some((k, vals)), _) => {
                for v in vals {
                    good.push_str(&format!("{}{{node=\"n\",{k}=\"{v}\"}} 0\n", m.name));
                }
            }
            (None, "histogram") => {
                for b in &buckets {
                    good.push_str(&format!("{}_bucket{{node=\"n\",le=\"{b}\"}} 0\n", m.name));
                }
                good.push_str(&format!("{}_bucket{{node=\"n\",le=\"+Inf\"}} 0\n", m.name));
                good.push_str(&format!(
                    "{0}_sum{{node=\"n\"}} 0\n{0}_count{{node=\"n\"}} 0\n",
                    m.name
                ));
            }
            (None, _) => good.push_str(&format!("{}{{node=\"n\"}} 0\n", m.name)),
        }
    }
    assert_eq!(
        fresh_scrape_problems(&good, &want, &buckets, "n"),
        Vec::<String>::new()
    );
    // ... and each way of breaking it is named.
    let cases = [
        (
            good.replace("herald_bus_resubscribes_total{node=\"n\"} 0\n", "")
                .replace("# TYPE herald_bus_resubscribes_total counter\n", ""),
            "herald_bus_resubscribes_total (counter) is missing",
        ),
        (
            good.replace(
                "herald_publishes_total{node=\"n\",result=\"error\"} 0\n",
                "",
            ),
            "herald_publishes_total{result}: exported",
        ),
        (
            good.replace(
                "herald_messages_published_total{node=\"n\"} 0",
                "herald_messages_published_total{node=\"n\"} 3",
            ),
            "is 3 on a node that served nothing",
        ),
        (
            good.replace("le=\"+Inf\"", "le=\"60\""),
            "herald_publish_duration_seconds: buckets",
        ),
        (
            good.clone() + "# TYPE herald_surprise gauge\nherald_surprise{node=\"n\"} 0\n",
            "herald_surprise is exported but not documented",
        ),
        (
            good.replace("node=\"n\"", "node=\"m\""),
            "node label is not",
        ),
    ];
    for (text, complaint) in cases {
        let p = fresh_scrape_problems(&text, &want, &buckets, "n");
        assert!(
            p.iter().any(|x| x.contains(complaint)),
            "expected {complaint:?} in {p:#?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Tests: dashboard and rules against the catalog
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    let known = known_metrics().await;
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/herald.json")).expect("herald.json is JSON");
    let mut exprs = dashboard_exprs(&dashboard);
    let n_dashboard = exprs.len();
    exprs.extend(rule_exprs(&yaml_file("deploy/prometheus/alerts.yml")));
    exprs.extend(rule_test_series(&yaml_file(
        "deploy/prometheus/alerts_test.yml",
    )));
    // The query ideas of docs/metrics.md ("What to watch") and the runbooks:
    // every backticked span naming a metric (prose may name a histogram
    // bare, and RUST_LOG names crates).
    let mut doc_spans = Vec::new();
    for doc in ["docs/metrics.md", "docs/operations.md"] {
        for (i, span) in read(doc).split('`').enumerate() {
            if i % 2 == 1 && span.contains("herald_") && !span.contains("RUST_LOG") {
                doc_spans.push((doc.to_owned(), span.to_owned()));
            }
        }
    }
    assert!(!doc_spans.is_empty());
    assert!(
        n_dashboard >= 20,
        "the dashboard has only {n_dashboard} queries"
    );
    let mut problems = Vec::new();
    let mut named = BTreeSet::new();
    for (whence, e) in &exprs {
        problems.extend(expr_problems(whence, e, &known));
        if whence.starts_with("herald.json") {
            for r in metric_refs(e).unwrap_or_default() {
                named.insert(r.name);
            }
        }
    }
    for (whence, e) in &doc_spans {
        let p = expr_problems(whence, e, &known);
        problems.extend(p.into_iter().filter(|p| !p.contains("is a histogram")));
    }
    assert!(
        problems.is_empty(),
        "queries name what herald does not export:\n{}",
        problems.join("\n")
    );
    // What the dashboard must show (issue 12).
    for must in [
        "herald_connections",
        "herald_subscriptions",
        "herald_frames_sent_total",
        "herald_publishes_total",
        "herald_publish_duration_seconds_bucket",
        "herald_disconnects_total",
        "herald_bus_resubscribes_total",
        "herald_bus_connection_rebuilds_total",
        "herald_catchup_repairs_total",
        "herald_gap_fill_reads_total",
        "herald_catchup_stuck_channels",
        "herald_write_stalls_total",
    ] {
        assert!(named.contains(must), "the dashboard has no panel on {must}");
    }
    assert!(
        dashboard_exprs(&dashboard)
            .iter()
            .any(|(_, e)| e.contains("code=\"4008\"")),
        "the dashboard has no 4008 (slow consumer) panel"
    );
}

#[test]
fn catches_unknown_metrics_labels_and_label_values() {
    let known = all_documented(&read("docs/metrics.md"));
    let ok = [
        r#"sum by (node) (rate(herald_disconnects_total{code="4008", node=~"$node"}[5m]))"#,
        r#"histogram_quantile(0.99, sum by (le) (rate(herald_publish_duration_seconds_bucket{le!="+Inf"}[5m])))"#,
        r#"up{job=~"herald-gateway|herald-ingest"} == 0"#,
        r#"label_values(herald_bus_bad_envelopes_total, node)"#,
    ];
    for e in ok {
        assert_eq!(expr_problems("t", e, &known), Vec::<String>::new(), "{e}");
    }
    let bad = [
        (
            "rate(herald_frames_sent[5m])",
            "herald_frames_sent is not a metric",
        ),
        (
            "herald_connections_bucket",
            "herald_connections_bucket is not a metric",
        ),
        (
            "rate(herald_publish_duration_seconds[5m])",
            "is a histogram",
        ),
        (r#"herald_disconnects_total{code="4080"}"#, "code is one of"),
        (
            r#"herald_errors_total{status="5xx"}"#,
            "has no label status",
        ),
        (r#"herald_connections{le="1"}"#, "has no label le"),
    ];
    for (e, complaint) in bad {
        let p = expr_problems("t", e, &known);
        assert!(
            p.iter().any(|x| x.contains(complaint)),
            "{e}: expected {complaint:?} in {p:#?}"
        );
    }
}

#[test]
fn dashboard_is_a_provisionable_grafana_dashboard() {
    let d: Value =
        serde_json::from_str(&read("deploy/grafana/herald.json")).expect("herald.json is JSON");
    let mut p = Vec::new();
    for k in ["title", "uid"] {
        if !d[k].is_string() {
            p.push(format!("no {k}"));
        }
    }
    if d["schemaVersion"].as_u64().is_none_or(|v| v < 30) {
        p.push("schemaVersion missing or older than Grafana 8".into());
    }
    if d.get("id").is_some_and(|id| !id.is_null()) {
        p.push("a provisioned dashboard carries no database id".into());
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => p.push("no `datasource` variable of type datasource, query prometheus".into()),
    }
    match var("node").or_else(|| var("instance")) {
        Some(v) if v["type"] == "query" && v["datasource"]["uid"] == "${datasource}" => {}
        _ => p.push("no `node` (or `instance`) query variable on ${datasource}".into()),
    }
    let mut ids = BTreeSet::new();
    let panels = d["panels"].as_array().cloned().unwrap_or_default();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        match panel["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            _ => p.push(format!("panel {title:?}: missing or duplicate id")),
        }
        let g = &panel["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        if !matches!((x, w, h), (Some(x), Some(w), Some(h)) if x + w <= 24 && w > 0 && h > 0)
            || g["y"].as_u64().is_none()
        {
            p.push(format!(
                "panel {title:?}: gridPos {g} outside the 24-column grid"
            ));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            p.push(format!(
                "panel {title:?}: datasource is not ${{datasource}}"
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            p.push(format!("panel {title:?}: no query"));
        }
        for t in targets {
            if t["expr"].as_str().is_none_or(str::is_empty) || t["refId"].as_str().is_none() {
                p.push(format!("panel {title:?}: a target without expr or refId"));
            }
            if t["datasource"]["uid"] != "${datasource}" {
                p.push(format!(
                    "panel {title:?}: a target's datasource is not ${{datasource}}"
                ));
            }
            let e = t["expr"].as_str().unwrap_or_default();
            if e.contains("herald_") && !e.contains("$node") {
                p.push(format!("panel {title:?}: {e} ignores the node variable"));
            }
        }
    }
    assert!(
        p.is_empty(),
        "deploy/grafana/herald.json:\n{}",
        p.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Tests: alert rules
// ---------------------------------------------------------------------------

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_and_a_firing_and_a_quiet_test() {
    let rules = yaml_file("deploy/prometheus/alerts.yml");
    let tests = yaml_file("deploy/prometheus/alerts_test.yml");
    let ops = read("docs/operations.md");
    let runbooks: BTreeSet<String> = md_section(&ops, "Alerts and runbooks")
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(str::to_owned)
        .collect();
    assert!(
        !runbooks.is_empty(),
        "docs/operations.md has no \"Alerts and runbooks\" section"
    );
    let mut p = Vec::new();
    let mut alerts = BTreeSet::new();
    for g in rules["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let Some(name) = r["alert"].as_str() else {
                continue;
            };
            if !alerts.insert(name.to_owned()) {
                p.push(format!("{name}: defined twice"));
            }
            if !matches!(
                r["labels"]["severity"].as_str(),
                Some("critical" | "warning")
            ) {
                p.push(format!("{name}: severity is not critical or warning"));
            }
            for a in ["summary", "description", "runbook_url"] {
                if r["annotations"][a].as_str().is_none_or(str::is_empty) {
                    p.push(format!("{name}: no {a} annotation"));
                }
            }
            let url = r["annotations"]["runbook_url"].as_str().unwrap_or_default();
            if url != format!("docs/operations.md#{}", anchor(name)) {
                p.push(format!(
                    "{name}: runbook_url {url:?} is not docs/operations.md#{}",
                    anchor(name)
                ));
            }
            if !runbooks.contains(name) {
                p.push(format!(
                    "{name}: no `### {name}` runbook under \"Alerts and runbooks\""
                ));
            }
        }
    }
    for rb in &runbooks {
        if !alerts.contains(rb) {
            p.push(format!("runbook {rb:?} has no alert"));
        }
    }
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_array().into_iter().flatten() {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = a["alertname"].as_str().unwrap_or_default().to_owned();
            match a["exp_alerts"].as_array() {
                Some(e) if !e.is_empty() => fires.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    for a in &alerts {
        if !fires.contains(a) {
            p.push(format!("{a}: no unit test makes it fire"));
        }
        if !quiet.contains(a) {
            p.push(format!("{a}: no unit test where it stays quiet"));
        }
    }
    assert!(
        p.is_empty(),
        "alerts.yml, alerts_test.yml, docs/operations.md:\n{}",
        p.join("\n")
    );
    assert!(alerts.len() >= 10, "only {} alerts", alerts.len());
}

#[test]
fn promtool_checks_the_rules_runs_their_tests_and_checks_the_config() {
    let dir = workspace_root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
        &["check", "config", "prometheus.yml"][..],
    ] {
        let (ok, out) = run_promtool(&dir, args);
        assert!(ok, "{out}");
    }
}

#[test]
fn promtool_parses_every_dashboard_query() {
    let d: Value =
        serde_json::from_str(&read("deploy/grafana/herald.json")).expect("herald.json is JSON");
    // Grafana's variables replaced by what they stand for, each query made a
    // recording rule: `promtool check rules` parses every expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for panel in d["panels"].as_array().into_iter().flatten() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap_or_default();
            let e = e.replace("$__rate_interval", "1m").replace("$node", ".*");
            n += 1;
            rules.push_str(&format!(
                "      - record: dashboard:query_{n}\n        expr: {}\n",
                serde_json::to_string(&e).expect("a JSON string is a YAML string")
            ));
        }
    }
    assert!(n > 0);
    let dir = herald_testkit::temp_dir();
    std::fs::write(dir.path().join("dashboard_rules.yml"), rules).expect("writing the rule file");
    let (ok, out) = run_promtool(dir.path(), &["check", "rules", "dashboard_rules.yml"]);
    assert!(ok, "a dashboard query is not valid PromQL:\n{out}");
}

// ---------------------------------------------------------------------------
// Tests: docker-compose.yml
// ---------------------------------------------------------------------------

/// The port of a `host:port` listen address in a config/*.toml.
fn admin_port(rel: &str) -> u16 {
    let cfg: toml::Table = read(rel).parse().unwrap_or_else(|e| panic!("{rel}: {e}"));
    let addr = cfg["admin_listen"]
        .as_str()
        .unwrap_or_else(|| panic!("{rel}: no admin_listen"));
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{rel}: bad admin_listen"))
}

/// Bind mounts of a Compose service: (host path, container path).
fn bind_mounts(svc: &Value) -> Vec<(String, String)> {
    svc["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            (
                parts.next().unwrap_or_default().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn compose_runs_prometheus_and_grafana_on_the_checked_files() {
    let root = workspace_root();
    let compose = yaml_file("docker-compose.yml");
    let services = compose["services"]
        .as_object()
        .expect("docker-compose.yml has services");
    let mut p = Vec::new();
    // Every bind mount of every service exists.
    for (name, svc) in services {
        for (host, _) in bind_mounts(svc) {
            if !root.join(&host).exists() {
                p.push(format!(
                    "service {name} mounts {host}, which does not exist"
                ));
            }
        }
        for vol in svc["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let src = vol.split(':').next().unwrap_or_default();
            if !src.starts_with('.')
                && !src.starts_with('/')
                && compose["volumes"].get(src).is_none()
            {
                p.push(format!("service {name} uses volume {src}, not declared"));
            }
        }
    }
    let svc = |n: &str| services.get(n).cloned().unwrap_or(Value::Null);
    // Prometheus: its config directory mounted where --config.file points.
    let prom = svc("prometheus");
    if prom.is_null() {
        p.push("no prometheus service".into());
    }
    let config_file = prom["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap_or("/etc/prometheus/prometheus.yml")
        .to_owned();
    let prom_mounts = bind_mounts(&prom);
    let config_host = prom_mounts.iter().find_map(|(h, c)| {
        let rel = config_file
            .strip_prefix(c.as_str())?
            .trim_start_matches('/');
        Some(Path::new(h).join(rel))
    });
    match &config_host {
        Some(h) if h == Path::new("./deploy/prometheus/prometheus.yml") => {}
        other => p.push(format!("prometheus: --config.file {config_file} is {other:?}, not ./deploy/prometheus/prometheus.yml")),
    }
    let prom_cfg = yaml_file("deploy/prometheus/prometheus.yml");
    for f in prom_cfg["rule_files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !root.join("deploy/prometheus").join(f).is_file() {
            p.push(format!("prometheus.yml: rule file {f} is not beside it"));
        }
    }
    if !prom_cfg["rule_files"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f == "alerts.yml")
    {
        p.push("prometheus.yml does not load alerts.yml".into());
    }
    // Its scrape targets are the herald services on their admin ports.
    let (gw_port, ingest_port) = (
        admin_port("config/gateway.toml"),
        admin_port("config/ingest.toml"),
    );
    let runs = |name: &str| svc(name)["command"][0].as_str().map(str::to_owned);
    let mut jobs = BTreeMap::new();
    for job in prom_cfg["scrape_configs"].as_array().into_iter().flatten() {
        let name = job["job_name"].as_str().unwrap_or_default().to_owned();
        let mut targets = Vec::new();
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in sc["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                targets.push(t.to_owned());
            }
        }
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            for n in sd["names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                targets.push(format!("{n}:{}", sd["port"]));
            }
        }
        jobs.insert(name, targets);
    }
    for (job, role, port) in [
        ("herald-gateway", "gateway", gw_port),
        ("herald-ingest", "ingest", ingest_port),
    ] {
        let targets = jobs.get(job).cloned().unwrap_or_default();
        if targets.is_empty() {
            p.push(format!("prometheus.yml: no {job} job with targets"));
        }
        for t in &targets {
            let (host, tport) = t.rsplit_once(':').unwrap_or((t, ""));
            if runs(host).as_deref() != Some(role) {
                p.push(format!(
                    "prometheus.yml: {job} target {t} is not a `herald {role}` service"
                ));
            }
            if tport != port.to_string() {
                p.push(format!(
                    "prometheus.yml: {job} target {t} is not the admin port {port}"
                ));
            }
        }
        let all: Vec<&String> = services
            .keys()
            .filter(|n| runs(n).as_deref() == Some(role))
            .collect();
        for s in all {
            if !targets.iter().any(|t| t.starts_with(&format!("{s}:"))) {
                p.push(format!(
                    "prometheus.yml: `herald {role}` service {s} is not scraped"
                ));
            }
        }
    }
    // Grafana: provisioning mounted, its datasource the Prometheus service,
    // the dashboard where the provider looks.
    let grafana = svc("grafana");
    if grafana.is_null() {
        p.push("no grafana service".into());
    }
    let g_mounts = bind_mounts(&grafana);
    if !g_mounts.iter().any(|(h, c)| {
        h.trim_end_matches('/') == "./deploy/grafana/provisioning"
            && c == "/etc/grafana/provisioning"
    }) {
        p.push(
            "grafana: ./deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning"
                .into(),
        );
    }
    let ds = yaml_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds0 = &ds["datasources"][0];
    if ds0["type"] != "prometheus" || ds0["url"] != "http://prometheus:9090" {
        p.push(format!(
            "grafana datasource is not the prometheus service: {ds0}"
        ));
    }
    let providers = yaml_file("deploy/grafana/provisioning/dashboards/herald.yml");
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let dash = g_mounts
        .iter()
        .find(|(h, _)| h == "./deploy/grafana/herald.json");
    match dash {
        Some((_, c)) if !path.is_empty() && Path::new(c).starts_with(&path) => {}
        _ => p.push(format!(
            "grafana: ./deploy/grafana/herald.json is not mounted under the provider path {path:?}"
        )),
    }
    assert!(
        p.is_empty(),
        "docker-compose.yml and its monitoring files:\n{}",
        p.join("\n")
    );
}
