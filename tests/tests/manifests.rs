//! Issue 12: the Kubernetes manifests of `deploy/k8s/`, checked offline.
//!
//! No validator for Kubernetes manifests (kubeconform, kubeval) can be
//! installed from this machine's package registries, so this file carries
//! its own check of what the API server and the controllers need from each
//! kind, plus the cross-references no schema validator sees:
//!
//! - every YAML document parses; `apiVersion`, `kind`, `metadata.name` (and
//!   the namespace of `kustomization.yaml`) on each; labels are strings of
//!   the allowed shape; only the kinds this set is meant to hold;
//! - `kustomization.yaml` lists every file of the directory, and only those;
//! - Deployment: the selector matches the pod template's labels; containers
//!   have an image and valid, unique ports; readiness on `/readyz` and
//!   liveness on `/healthz`, on a declared port that is the admin listener of
//!   the herald configuration the container runs; the public port too;
//!   requests and limits; non-root, read-only root file system, no privilege
//!   escalation; anti-affinity on hostname that selects its own pods;
//!   `terminationGracePeriodSeconds` > preStop + the time herald needs to
//!   stop (gateway: `drain_window` + 5 s, read from the ConfigMap; ingest:
//!   5 s); volumes, mounts, `--config` resolving to a ConfigMap key;
//! - env: every name is a setting herald reads (derived from
//!   `docs/configuration.md`), each secret and ConfigMap reference names an
//!   existing key, and no process gets a secret it ignores;
//! - Service: the selector matches a Deployment, each target port exists in
//!   it; HPA: the target Deployment exists (and leaves `replicas` to the
//!   HPA), the custom metric is a gauge herald exports (`docs/metrics.md`)
//!   and is scraped, the CPU fallback has CPU requests to work from; PDB:
//!   selects a Deployment and never blocks every eviction; ServiceMonitor:
//!   selects Services whose named port exists and is the admin listener of
//!   every herald Deployment;
//! - ConfigMap: each `*.toml` parses and every key is documented in
//!   `docs/configuration.md`; what must match across processes
//!   (`redis_url`, `[bus] prefix`, `[limits] max_data_bytes`) matches; the
//!   gateway's `ingest_url` is the ingest Service.
//!
//! A checker that cannot fail is worth nothing: the `catches_*` tests break
//! one thing at a time in the real manifests and expect the matching
//! complaint. `configmap_runs_herald_and_drains_within_the_grace_period`
//! then starts the real binary with each Deployment's args, its ConfigMap
//! file and its env (Secret values replaced by test values, listen
//! addresses and Redis/ingest URLs pointed at private servers), checks
//! `/readyz`, a message end to end, and that SIGTERM finishes within the
//! grace period the manifests give it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use herald_tests::*;
use serde_json::{Map, Value, json};

/// The manifests, from the workspace root.
const K8S_DIR: &str = "deploy/k8s";
/// After `drain_window` a gateway waits at most this long for its
/// connection tasks (docs/operations.md "Graceful drain", step 4); an ingest
/// node takes at most this long to finish its requests.
const STOP_TAIL_S: f64 = 5.0;
/// `[limits] drain_window` when the file does not set it
/// (docs/configuration.md).
const DEFAULT_DRAIN_WINDOW_S: f64 = 10.0;
/// Clients connected to the gateway when it gets SIGTERM in the run test.
const DRAIN_CLIENTS: usize = 20;
/// The admin routes herald serves (docs/operations.md "Admin endpoints").
const ADMIN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];
/// Environment variables herald reads that are not settings.
const NON_SETTING_ENV: &[&str] = &["RUST_LOG"];

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// One YAML document of one file.
#[derive(Debug, Clone)]
struct Doc {
    file: String,
    v: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.v["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.v["metadata"]["name"].as_str().unwrap_or("")
    }

    fn what(&self) -> String {
        format!("{}: {}/{}", self.file, self.kind(), self.name())
    }
}

/// Everything the checker reads.
#[derive(Debug, Clone)]
struct Set {
    /// File names in the manifests directory.
    files: Vec<String>,
    /// Every document except the kustomization's.
    docs: Vec<Doc>,
    kustomization: Value,
    /// docs/configuration.md: the settings herald has.
    configuration_md: String,
    /// docs/metrics.md: the series herald exports.
    metrics_md: String,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the workspace root")
        .to_path_buf()
}

/// YAML (1.2 core schema) to JSON values: mappings must have scalar keys.
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
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                if m.insert(key.clone(), yaml_to_json(v)?).is_some() {
                    return Err(format!("duplicate key {key:?}"));
                }
            }
            Value::Object(m)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not used in manifests".into()),
        Yaml::BadValue => return Err("unparsable YAML value".into()),
    })
}

fn parse_yaml(file: &str, text: &str) -> Result<Vec<Value>, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text)
        .map_err(|e| format!("{file}: YAML does not parse: {e}"))?;
    docs.iter()
        .filter(|d| !matches!(d, yaml_rust2::Yaml::Null))
        .map(|d| yaml_to_json(d).map_err(|e| format!("{file}: {e}")))
        .collect()
}

impl Set {
    fn load() -> Set {
        let root = workspace_root();
        let dir = root.join(K8S_DIR);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        files.sort();
        let mut docs = Vec::new();
        let mut kustomization = Value::Null;
        for f in &files {
            if !(f.ends_with(".yaml") || f.ends_with(".yml")) {
                continue;
            }
            let text = std::fs::read_to_string(dir.join(f))
                .unwrap_or_else(|e| panic!("reading {K8S_DIR}/{f}: {e}"));
            let parsed = parse_yaml(f, &text).unwrap_or_else(|e| panic!("{e}"));
            if f == "kustomization.yaml" || f == "kustomization.yml" {
                kustomization = parsed.into_iter().next().unwrap_or(Value::Null);
                continue;
            }
            docs.extend(parsed.into_iter().map(|v| Doc { file: f.clone(), v }));
        }
        let read = |p: &str| {
            std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("reading {p}: {e}"))
        };
        Set {
            files,
            docs,
            kustomization,
            configuration_md: read("docs/configuration.md"),
            metrics_md: read("docs/metrics.md"),
        }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Doc> + 'a {
        self.docs.iter().filter(move |d| d.kind() == kind)
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Doc> {
        self.docs
            .iter()
            .find(|d| d.kind() == kind && d.name() == name)
    }

    /// The document `kind`/`name`, for tests that break it.
    fn doc_mut(&mut self, kind: &str, name: &str) -> &mut Value {
        &mut self
            .docs
            .iter_mut()
            .find(|d| d.kind() == kind && d.name() == name)
            .unwrap_or_else(|| panic!("no {kind}/{name} in {K8S_DIR}"))
            .v
    }
}

// ---------------------------------------------------------------------------
// What herald has: settings from docs/configuration.md, gauges from metrics.md
// ---------------------------------------------------------------------------

/// Sections of docs/configuration.md ("" = top level) and their keys.
#[derive(Debug, Default)]
struct Settings {
    keys: BTreeMap<String, BTreeSet<String>>,
    /// Sections that are arrays of tables (file only, no environment).
    arrays: BTreeSet<String>,
}

impl Settings {
    /// Reads the key tables: `## Top-level keys`, `## \`[auth]\``,
    /// `### \`[[auth.keys]]\``, ...; a row's first cell is the key.
    fn from_doc(md: &str) -> Settings {
        let mut s = Settings::default();
        let mut current: Option<String> = None;
        for line in md.lines() {
            if line.starts_with('#') {
                let title = line.trim_start_matches('#').trim();
                current = if title == "Top-level keys" {
                    Some(String::new())
                } else if let Some(rest) = title.strip_prefix("`[[") {
                    rest.split("]]`").next().map(|n| {
                        s.arrays.insert(n.to_string());
                        n.to_string()
                    })
                } else if let Some(rest) = title.strip_prefix("`[") {
                    rest.split("]`").next().map(str::to_string)
                } else {
                    None
                };
                if let Some(c) = &current {
                    s.keys.entry(c.clone()).or_default();
                }
                continue;
            }
            let Some(section) = &current else { continue };
            if let Some(rest) = line.strip_prefix("| `") {
                let key = rest.split('`').next().unwrap_or("");
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    s.keys
                        .get_mut(section)
                        .expect("section inserted at its heading")
                        .insert(key.to_string());
                }
            }
        }
        s
    }

    fn has(&self, section: &str, key: &str) -> bool {
        self.keys.get(section).is_some_and(|k| k.contains(key))
    }

    /// Whether herald reads the environment variable `name`: `HERALD_KEY`
    /// for a top-level key, `HERALD_SECTION__KEY` for a key of a table
    /// section, `HERALD_CONFIG`, and the few non-settings herald reads.
    fn reads_env(&self, name: &str) -> bool {
        if NON_SETTING_ENV.contains(&name) || name == "HERALD_CONFIG" {
            return true;
        }
        let Some(rest) = name.strip_prefix("HERALD_") else {
            return false;
        };
        if rest != rest.to_ascii_uppercase() {
            return false;
        }
        let lower = rest.to_ascii_lowercase();
        match lower.split_once("__") {
            None => self.has("", &lower),
            Some((section, key)) => !self.arrays.contains(section) && self.has(section, key),
        }
    }
}

/// Whether docs/metrics.md lists `name` as a gauge.
fn is_documented_gauge(metrics_md: &str, name: &str) -> bool {
    metrics_md
        .lines()
        .any(|l| l.starts_with(&format!("| `{name}` | gauge |")))
}

// ---------------------------------------------------------------------------
// Small parsers
// ---------------------------------------------------------------------------

/// A herald duration (docs/configuration.md "Durations") in seconds.
fn duration_s(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        toml::Value::String(s) => duration_text_s(s),
        _ => None,
    }
}

fn duration_text_s(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    Some(n * mult)
}

/// A Kubernetes quantity ("500m", "1", "512Mi", "1Gi", "1G") as a number.
fn quantity(v: &Value) -> Option<f64> {
    if let Some(n) = v.as_f64() {
        return Some(n);
    }
    let s = v.as_str()?;
    let units: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0_f64.powi(4)),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (u, mult) in units {
        if let Some(num) = s.strip_suffix(u) {
            return num.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    s.parse().ok()
}

/// The port of a `host:port` listen address.
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit(':').next()?.parse().ok()
}

/// DNS-1123 label: what Services, ports' owners and containers are named.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: most object names.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// IANA service name: what a named container or Service port may be called.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// The "name" part of a label key, or a label value (which may be empty).
fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && (s.is_empty()
            || (s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && s.as_bytes()[0].is_ascii_alphanumeric()
                && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()))
}

fn is_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && !name.is_empty() && is_label_name(name),
        None => !k.is_empty() && is_label_name(k),
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a LabelSelector (`matchLabels` and `matchExpressions`) selects
/// `labels`. An empty selector selects nothing here: none of ours is meant
/// to select everything.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let ml = string_map(&selector["matchLabels"]);
    let exprs = selector["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if ml.is_empty() && exprs.is_empty() {
        return false;
    }
    let labels_ok = ml.iter().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = exprs.iter().all(|e| {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let have = labels.get(key).map(String::as_str);
        match e["operator"].as_str() {
            Some("In") => have.is_some_and(|h| values.contains(&h)),
            Some("NotIn") => have.is_none_or(|h| !values.contains(&h)),
            Some("Exists") => have.is_some(),
            Some("DoesNotExist") => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// A selector given as a plain map (Service `spec.selector`).
fn selects_map(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    selects(&json!({ "matchLabels": selector }), labels)
}

// ---------------------------------------------------------------------------
// The herald processes the Deployments run
// ---------------------------------------------------------------------------

/// One herald container, with the configuration it runs.
#[derive(Debug)]
struct HeraldContainer<'a> {
    deployment: &'a Doc,
    container: &'a Value,
    /// `gateway` or `ingest`.
    subcommand: String,
    /// The `--config` path inside the container.
    config_path: Option<String>,
    /// ConfigMap name and key of that file.
    config_source: Option<(String, String)>,
    /// The parsed file (empty when missing or unparsable: reported apart).
    config: toml::Table,
}

impl HeraldContainer<'_> {
    /// A setting as herald would see it: a flag in `args`, else a literal
    /// env value, else the file, else `None` (the default). Settings whose
    /// env value comes from a secret are `Err`: unknown here.
    fn setting(&self, section: &str, key: &str) -> Result<Option<toml::Value>, String> {
        let args = string_list(&self.container["args"]);
        let flag = format!("--{}", key.replace('_', "-"));
        let flag_ok = section.is_empty() || section == "limits" || section == "gateway";
        if flag_ok {
            for (i, a) in args.iter().enumerate() {
                if *a == flag {
                    return Ok(args.get(i + 1).map(|v| text_setting(v)));
                }
                if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                    return Ok(Some(text_setting(v)));
                }
            }
        }
        let env_name = if section.is_empty() {
            format!("HERALD_{}", key.to_ascii_uppercase())
        } else {
            format!(
                "HERALD_{}__{}",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            )
        };
        for e in self.container["env"].as_array().into_iter().flatten() {
            if e["name"].as_str() == Some(env_name.as_str()) {
                return match e["value"].as_str() {
                    Some(v) => Ok(Some(text_setting(v))),
                    None => Err(format!("{env_name} comes from {}", e["valueFrom"])),
                };
            }
        }
        let table = if section.is_empty() {
            Some(&self.config)
        } else {
            self.config.get(section).and_then(toml::Value::as_table)
        };
        Ok(table.and_then(|t| t.get(key)).cloned())
    }

    /// A listen address's port, with herald's default when unset.
    fn port_setting(&self, key: &str) -> Result<Option<u16>, String> {
        let default = match (self.subcommand.as_str(), key) {
            ("gateway", "listen") => "0.0.0.0:8080",
            ("gateway", "admin_listen") => "0.0.0.0:9090",
            ("ingest", "listen") => "0.0.0.0:8081",
            ("ingest", "admin_listen") => "0.0.0.0:9091",
            _ => return Ok(None),
        };
        let v = self.setting("", key)?;
        let addr = v
            .as_ref()
            .and_then(toml::Value::as_str)
            .unwrap_or(default)
            .to_string();
        Ok(port_of(&addr))
    }

    /// `[limits] drain_window` in seconds (default 10 s).
    fn drain_window_s(&self) -> Result<f64, String> {
        match self.setting("limits", "drain_window")? {
            None => Ok(DEFAULT_DRAIN_WINDOW_S),
            Some(v) => duration_s(&v).ok_or_else(|| format!("drain_window {v} is not a duration")),
        }
    }

    /// Seconds herald may take from SIGTERM to its exit.
    fn stop_budget_s(&self) -> Result<f64, String> {
        if self.subcommand == "gateway" {
            Ok(self.drain_window_s()? + STOP_TAIL_S)
        } else {
            Ok(STOP_TAIL_S)
        }
    }

    /// Container port number of a probe's or a Service's `port` /
    /// `targetPort` (a name or a number), when declared.
    fn resolve_port(&self, port: &Value) -> Option<u16> {
        let ports = self.container["ports"].as_array()?;
        if let Some(name) = port.as_str() {
            ports
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_u64())
                .and_then(|n| u16::try_from(n).ok())
        } else {
            let n = port.as_u64()?;
            ports
                .iter()
                .any(|p| p["containerPort"].as_u64() == Some(n))
                .then(|| u16::try_from(n).ok())
                .flatten()
        }
    }
}

/// An env or flag value as herald types it (docs/configuration.md: integer,
/// boolean, else text).
fn text_setting(v: &str) -> toml::Value {
    if let Ok(i) = v.parse::<i64>() {
        toml::Value::Integer(i)
    } else if v == "true" || v == "false" {
        toml::Value::Boolean(v == "true")
    } else {
        toml::Value::String(v.to_string())
    }
}

fn string_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The herald containers of every Deployment, with their configuration.
fn herald_containers(set: &Set) -> Vec<HeraldContainer<'_>> {
    let mut out = Vec::new();
    for d in set.of_kind("Deployment") {
        let spec = &d.v["spec"]["template"]["spec"];
        for c in spec["containers"].as_array().into_iter().flatten() {
            let args = string_list(&c["args"]);
            let subcommand = args.first().copied().unwrap_or("").to_string();
            let config_path = args
                .iter()
                .enumerate()
                .find_map(|(i, a)| {
                    if *a == "--config" {
                        args.get(i + 1).map(|s| s.to_string())
                    } else {
                        a.strip_prefix("--config=").map(str::to_string)
                    }
                })
                .or_else(|| {
                    c["env"].as_array().into_iter().flatten().find_map(|e| {
                        (e["name"] == "HERALD_CONFIG")
                            .then(|| e["value"].as_str().map(str::to_string))
                            .flatten()
                    })
                });
            let config_source = config_path
                .as_deref()
                .and_then(|p| config_map_file(spec, c, p));
            let config = config_source
                .as_ref()
                .and_then(|(cm, key)| set.find("ConfigMap", cm).map(|d| (d, key)))
                .and_then(|(d, key)| d.v["data"][key.as_str()].as_str())
                .and_then(|t| t.parse::<toml::Table>().ok())
                .unwrap_or_default();
            out.push(HeraldContainer {
                deployment: d,
                container: c,
                subcommand,
                config_path,
                config_source,
                config,
            });
        }
    }
    out
}

/// The ConfigMap name and key that `path` is in the container: the mount
/// that holds it, its volume, and the volume's `items` mapping.
fn config_map_file(pod_spec: &Value, container: &Value, path: &str) -> Option<(String, String)> {
    let mount = container["volumeMounts"]
        .as_array()?
        .iter()
        .filter(|m| {
            let mp = m["mountPath"].as_str().unwrap_or("");
            path.starts_with(&format!("{}/", mp.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().map(str::len))?;
    let mp = mount["mountPath"].as_str()?.trim_end_matches('/');
    let rel = path.strip_prefix(&format!("{mp}/"))?;
    let rel = match mount["subPath"].as_str() {
        Some(sub) => format!("{sub}/{rel}"),
        None => rel.to_string(),
    };
    let volume = pod_spec["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    let cm = &volume["configMap"];
    let name = cm["name"].as_str()?.to_string();
    let key = match cm["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"].as_str() == Some(rel.as_str()))?["key"]
            .as_str()?
            .to_string(),
        None => rel,
    };
    Some((name, key))
}

/// Seconds a container's preStop hook takes: `sleep N` (exec) or the
/// `sleep` action; 0 without a hook; `None` when it cannot be told.
fn pre_stop_s(container: &Value) -> Option<f64> {
    let hook = &container["lifecycle"]["preStop"];
    if hook.is_null() {
        return Some(0.0);
    }
    if let Some(s) = hook["sleep"]["seconds"].as_f64() {
        return Some(s);
    }
    let cmd = string_list(&hook["exec"]["command"]);
    match cmd.as_slice() {
        [sleep, n] if sleep.ends_with("sleep") => duration_text_s(n),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------

/// What `check` found wrong, one line each.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn at(&mut self, d: &Doc, msg: impl std::fmt::Display) {
        self.0.push(format!("{}: {msg}", d.what()));
    }

    fn top(&mut self, msg: impl std::fmt::Display) {
        self.0.push(msg.to_string());
    }
}

/// The apiVersion each kind of this set must use.
const KINDS: &[(&str, &str)] = &[
    ("Namespace", "v1"),
    ("ConfigMap", "v1"),
    ("Secret", "v1"),
    ("Service", "v1"),
    ("Deployment", "apps/v1"),
    ("HorizontalPodAutoscaler", "autoscaling/v2"),
    ("PodDisruptionBudget", "policy/v1"),
    ("ServiceMonitor", "monitoring.coreos.com/v1"),
];

/// Every problem of the set, empty when it is fine.
fn check(set: &Set) -> Vec<String> {
    let mut p = Problems::default();
    let settings = Settings::from_doc(&set.configuration_md);
    if !settings.has("", "listen") || !settings.has("limits", "drain_window") {
        p.top("docs/configuration.md: cannot find the key tables (listen, [limits] drain_window)");
    }
    let namespace = check_kustomization(set, &mut p);
    for d in &set.docs {
        check_common(d, &namespace, &mut p);
    }
    for (kind, min) in [
        ("Namespace", 1),
        ("ConfigMap", 1),
        ("Secret", 1),
        ("Deployment", 2),
        ("Service", 2),
        ("HorizontalPodAutoscaler", 1),
        ("PodDisruptionBudget", 2),
        ("ServiceMonitor", 1),
    ] {
        let n = set.of_kind(kind).count();
        if n < min {
            p.top(format!("{K8S_DIR}: {n} {kind}, expected at least {min}"));
        }
    }
    for d in set.of_kind("ConfigMap") {
        check_config_map(d, &settings, &mut p);
    }
    for d in set.of_kind("Secret") {
        check_secret(d, &mut p);
    }
    let herald = herald_containers(set);
    for d in set.of_kind("Deployment") {
        check_deployment(set, d, &herald, &settings, &mut p);
    }
    check_across_processes(set, &herald, &mut p);
    for d in set.of_kind("Service") {
        check_service(set, d, &herald, &mut p);
    }
    for d in set.of_kind("HorizontalPodAutoscaler") {
        check_hpa(set, d, &mut p);
    }
    for d in set.of_kind("PodDisruptionBudget") {
        check_pdb(set, d, &mut p);
    }
    for d in set.of_kind("ServiceMonitor") {
        check_service_monitor(set, d, &herald, &namespace, &mut p);
    }
    p.0
}

/// The kustomization lists every file (and nothing else); returns its
/// namespace.
fn check_kustomization(set: &Set, p: &mut Problems) -> String {
    let k = &set.kustomization;
    if k["apiVersion"] != "kustomize.config.k8s.io/v1beta1" || k["kind"] != "Kustomization" {
        p.top(
            "kustomization.yaml: missing, or not a kustomize.config.k8s.io/v1beta1 Kustomization",
        );
    }
    let resources: BTreeSet<&str> = string_list(&k["resources"]).into_iter().collect();
    for f in &set.files {
        let is_kustomization = f == "kustomization.yaml" || f == "kustomization.yml";
        if !is_kustomization && !resources.contains(f.as_str()) {
            p.top(format!(
                "kustomization.yaml: {f} is in {K8S_DIR} but not listed in resources"
            ));
        }
    }
    for r in &resources {
        if !set.files.iter().any(|f| f == r) {
            p.top(format!(
                "kustomization.yaml: resource {r} is not a file of {K8S_DIR}"
            ));
        }
    }
    let ns = k["namespace"].as_str().unwrap_or("").to_string();
    if ns.is_empty() {
        p.top("kustomization.yaml: no namespace");
    } else if set.find("Namespace", &ns).is_none() {
        p.top(format!(
            "kustomization.yaml: namespace {ns} is not a Namespace of the set"
        ));
    }
    let images: BTreeSet<String> = set
        .of_kind("Deployment")
        .flat_map(|d| {
            d.v["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|c| {
            c["image"]
                .as_str()
                .map(|i| i.split(['@', ':']).next().unwrap_or("").to_string())
        })
        .collect();
    for i in k["images"].as_array().into_iter().flatten() {
        let name = i["name"].as_str().unwrap_or("");
        if !images.contains(name) {
            p.top(format!(
                "kustomization.yaml: images entry {name:?} matches no container image"
            ));
        }
    }
    ns
}

fn check_common(d: &Doc, namespace: &str, p: &mut Problems) {
    let kind = d.kind();
    match KINDS.iter().find(|(k, _)| *k == kind) {
        None => p.at(d, format!("kind {kind:?} is not one this set should hold")),
        Some((_, api)) if d.v["apiVersion"] != *api => p.at(
            d,
            format!("apiVersion {} (expected {api})", d.v["apiVersion"]),
        ),
        Some(_) => {}
    }
    let name = d.name();
    let name_ok = if matches!(kind, "Service" | "Namespace") {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !name_ok {
        p.at(d, format!("metadata.name {name:?} is missing or invalid"));
    }
    if kind != "Namespace" {
        match d.v["metadata"]["namespace"].as_str() {
            Some(ns) if ns != namespace => p.at(
                d,
                format!("metadata.namespace {ns} differs from the kustomization's {namespace}"),
            ),
            _ => {}
        }
    }
    check_labels(d, &d.v["metadata"]["labels"], "metadata.labels", p);
    if kind == "Deployment" {
        check_labels(
            d,
            &d.v["spec"]["template"]["metadata"]["labels"],
            "pod template labels",
            p,
        );
    }
}

fn check_labels(d: &Doc, labels: &Value, what: &str, p: &mut Problems) {
    if labels.is_null() {
        return;
    }
    let Some(m) = labels.as_object() else {
        p.at(d, format!("{what} is not a map"));
        return;
    };
    for (k, v) in m {
        if !is_label_key(k) {
            p.at(d, format!("{what}: bad label key {k:?}"));
        }
        match v.as_str() {
            Some(s) if is_label_name(s) => {}
            _ => p.at(
                d,
                format!("{what}: label {k} = {v} is not a valid label value (a string)"),
            ),
        }
    }
}

fn check_config_map(d: &Doc, settings: &Settings, p: &mut Problems) {
    let Some(data) = d.v["data"].as_object() else {
        p.at(d, "no data");
        return;
    };
    for (key, v) in data {
        let Some(text) = v.as_str() else {
            p.at(d, format!("data.{key} is not a string"));
            continue;
        };
        if !key.ends_with(".toml") {
            continue;
        }
        match text.parse::<toml::Table>() {
            Err(e) => p.at(d, format!("data.{key} is not TOML: {e}")),
            Ok(t) => check_toml_keys(d, key, &t, settings, p),
        }
    }
}

/// Every key of a herald file is documented in docs/configuration.md.
fn check_toml_keys(d: &Doc, file: &str, t: &toml::Table, settings: &Settings, p: &mut Problems) {
    for (k, v) in t {
        match v {
            toml::Value::Table(section) if !settings.has("", k) => {
                if !settings.keys.contains_key(k) || settings.arrays.contains(k) {
                    p.at(
                        d,
                        format!("{file}: [{k}] is not a section of docs/configuration.md"),
                    );
                    continue;
                }
                for (sk, sv) in section {
                    // [auth] keys = [[auth.keys]] written as an array of tables
                    let nested = format!("{k}.{sk}");
                    if settings.arrays.contains(&nested) {
                        check_array_of_tables(d, file, &nested, sv, settings, p);
                    } else if !settings.has(k, sk) {
                        p.at(
                            d,
                            format!(
                                "{file}: [{k}] {sk} is not documented in docs/configuration.md"
                            ),
                        );
                    }
                }
            }
            toml::Value::Array(_) if settings.arrays.contains(k) => {
                check_array_of_tables(d, file, k, v, settings, p);
            }
            _ if !settings.has("", k) => p.at(
                d,
                format!("{file}: {k} is not documented in docs/configuration.md"),
            ),
            _ => {}
        }
    }
}

fn check_array_of_tables(
    d: &Doc,
    file: &str,
    section: &str,
    v: &toml::Value,
    settings: &Settings,
    p: &mut Problems,
) {
    let Some(items) = v.as_array() else {
        p.at(
            d,
            format!("{file}: [[{section}]] must be an array of tables"),
        );
        return;
    };
    for item in items {
        for k in item.as_table().map(|t| t.keys()).into_iter().flatten() {
            if !settings.has(section, k) {
                p.at(
                    d,
                    format!("{file}: [[{section}]] {k} is not documented in docs/configuration.md"),
                );
            }
        }
    }
}

fn check_secret(d: &Doc, p: &mut Problems) {
    use base64::Engine as _;
    if let Some(t) = d.v["type"].as_str()
        && t != "Opaque"
    {
        p.at(d, format!("type {t} (herald's secrets are Opaque)"));
    }
    let mut n = 0;
    for (field, base64) in [("stringData", false), ("data", true)] {
        for (k, v) in d.v[field].as_object().into_iter().flatten() {
            n += 1;
            if !is_env_name(k) {
                p.at(d, format!("{field}.{k}: not a valid key"));
            }
            match v.as_str() {
                None => p.at(d, format!("{field}.{k} is not a string")),
                Some(s)
                    if base64 && base64::engine::general_purpose::STANDARD.decode(s).is_err() =>
                {
                    p.at(d, format!("data.{k} is not base64"));
                }
                Some(_) => {}
            }
        }
    }
    if n == 0 {
        p.at(d, "no keys");
    }
}

/// Keys of the Secret or ConfigMap `name` (both data fields).
fn keys_of(set: &Set, kind: &str, name: &str) -> Option<BTreeSet<String>> {
    let d = set.find(kind, name)?;
    Some(
        ["data", "stringData", "binaryData"]
            .iter()
            .flat_map(|f| {
                d.v[*f]
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect(),
    )
}

fn check_deployment(
    set: &Set,
    d: &Doc,
    herald: &[HeraldContainer<'_>],
    settings: &Settings,
    p: &mut Problems,
) {
    let spec = &d.v["spec"];
    let pod = &spec["template"]["spec"];
    let labels = string_map(&spec["template"]["metadata"]["labels"]);
    if !selects(&spec["selector"], &labels) {
        p.at(
            d,
            format!(
                "spec.selector {} does not match the pod template's labels {labels:?}",
                spec["selector"]
            ),
        );
    }
    let hpa = set
        .of_kind("HorizontalPodAutoscaler")
        .find(|h| h.v["spec"]["scaleTargetRef"]["name"] == d.name());
    match (hpa, spec.get("replicas")) {
        (Some(h), Some(_)) => p.at(
            d,
            format!(
                "sets spec.replicas although {} scales it (each apply would reset the scale)",
                h.what()
            ),
        ),
        (None, Some(r)) if r.as_u64().is_none_or(|n| n < 1) => {
            p.at(d, format!("spec.replicas {r} is not a positive integer"));
        }
        _ => {}
    }
    // Pod-level settings.
    let pod_sc = &pod["securityContext"];
    if pod["automountServiceAccountToken"] != false {
        p.at(
            d,
            "automountServiceAccountToken is not false (herald never calls the API)",
        );
    }
    let anti = &pod["affinity"]["podAntiAffinity"];
    let terms: Vec<&Value> = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            anti["preferredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| &w["podAffinityTerm"]),
        )
        .collect();
    if !terms.iter().any(|t| {
        t["topologyKey"] == "kubernetes.io/hostname" && selects(&t["labelSelector"], &labels)
    }) {
        p.at(
            d,
            "no pod anti-affinity on kubernetes.io/hostname selecting its own pods",
        );
    }
    let volumes: Vec<&Value> = pod["volumes"].as_array().into_iter().flatten().collect();
    for v in &volumes {
        if let Some(cm) = v["configMap"]["name"].as_str() {
            match keys_of(set, "ConfigMap", cm) {
                None => p.at(
                    d,
                    format!("volume {} uses missing ConfigMap {cm}", v["name"]),
                ),
                Some(keys) => {
                    for it in v["configMap"]["items"].as_array().into_iter().flatten() {
                        let key = it["key"].as_str().unwrap_or("");
                        if !keys.contains(key) {
                            p.at(
                                d,
                                format!("volume {}: ConfigMap {cm} has no key {key}", v["name"]),
                            );
                        }
                    }
                }
            }
        }
        if let Some(s) = v["secret"]["secretName"].as_str()
            && set.find("Secret", s).is_none()
        {
            p.at(d, format!("volume {} uses missing Secret {s}", v["name"]));
        }
    }
    let grace = pod["terminationGracePeriodSeconds"].as_f64();
    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        p.at(d, "no containers");
    }
    for c in &containers {
        let cname = c["name"].as_str().unwrap_or("");
        let at = format!("container {cname:?}");
        if !is_dns_label(cname) {
            p.at(d, format!("{at}: missing or invalid name"));
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            p.at(d, format!("{at}: no image"));
        }
        // Ports.
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        let ports = c["ports"].as_array().cloned().unwrap_or_default();
        if ports.is_empty() {
            p.at(d, format!("{at}: no ports"));
        }
        for port in &ports {
            let n = port["containerPort"].as_u64();
            if !n.is_some_and(|n| (1..=65535).contains(&n)) || !numbers.insert(n) {
                p.at(
                    d,
                    format!(
                        "{at}: bad or duplicate containerPort {}",
                        port["containerPort"]
                    ),
                );
            }
            match port["name"].as_str() {
                Some(name) if is_port_name(name) && names.insert(name.to_string()) => {}
                other => p.at(
                    d,
                    format!("{at}: bad, missing or duplicate port name {other:?}"),
                ),
            }
            if let Some(proto) = port["protocol"].as_str()
                && !matches!(proto, "TCP" | "UDP" | "SCTP")
            {
                p.at(d, format!("{at}: protocol {proto}"));
            }
        }
        // Mounts.
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            if !volumes.iter().any(|v| v["name"] == m["name"]) {
                p.at(
                    d,
                    format!("{at}: volumeMount {} names no volume", m["name"]),
                );
            }
        }
        // Resources.
        let r = &c["resources"];
        for (field, res) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            if quantity(&r[field][res]).is_none() {
                p.at(d, format!("{at}: no resources.{field}.{res}"));
            }
        }
        for res in ["cpu", "memory"] {
            if let (Some(req), Some(lim)) =
                (quantity(&r["requests"][res]), quantity(&r["limits"][res]))
                && req > lim
            {
                p.at(d, format!("{at}: {res} request above its limit"));
            }
        }
        // Security.
        let sc = &c["securityContext"];
        if sc["runAsNonRoot"] != true && pod_sc["runAsNonRoot"] != true {
            p.at(d, format!("{at}: runAsNonRoot is not true"));
        }
        if sc["runAsUser"] == 0 || pod_sc["runAsUser"] == 0 {
            p.at(d, format!("{at}: runs as uid 0"));
        }
        if sc["readOnlyRootFilesystem"] != true {
            p.at(d, format!("{at}: readOnlyRootFilesystem is not true"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            p.at(d, format!("{at}: allowPrivilegeEscalation is not false"));
        }
        if sc["privileged"] == true {
            p.at(d, format!("{at}: privileged"));
        }
        check_env(set, d, c, &at, settings, p);
    }
    // What only a herald container has.
    for h in herald.iter().filter(|h| std::ptr::eq(h.deployment, d)) {
        let at = format!("container {:?}", h.container["name"].as_str().unwrap_or(""));
        if !matches!(h.subcommand.as_str(), "gateway" | "ingest") {
            p.at(
                d,
                format!(
                    "{at}: args[0] {:?} is not `gateway` or `ingest`",
                    h.subcommand
                ),
            );
            continue;
        }
        match (&h.config_path, &h.config_source) {
            (None, _) => p.at(d, format!("{at}: no --config")),
            (Some(path), None) => p.at(
                d,
                format!("{at}: --config {path} is not a file of a mounted ConfigMap"),
            ),
            (Some(path), Some((cm, key))) => {
                if keys_of(set, "ConfigMap", cm).is_none_or(|k| !k.contains(key)) {
                    p.at(
                        d,
                        format!("{at}: --config {path}: ConfigMap {cm} has no key {key}"),
                    );
                }
            }
        }
        let admin = match h.port_setting("admin_listen") {
            Ok(port) => port,
            Err(e) => {
                p.at(d, format!("{at}: admin_listen unknown: {e}"));
                None
            }
        };
        match h.port_setting("listen") {
            Ok(Some(port)) if h.resolve_port(&json!(port)).is_none() => p.at(
                d,
                format!("{at}: herald listens on {port} but no containerPort declares it"),
            ),
            Err(e) => p.at(d, format!("{at}: listen unknown: {e}")),
            _ => {}
        }
        if let Some(port) = admin
            && h.resolve_port(&json!(port)).is_none()
        {
            p.at(
                d,
                format!("{at}: the admin listener {port} is not a declared containerPort"),
            );
        }
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &h.container[probe]["httpGet"];
            if get.is_null() {
                p.at(d, format!("{at}: no {probe}.httpGet"));
                continue;
            }
            let have = get["path"].as_str().unwrap_or("");
            if !ADMIN_PATHS.contains(&have) {
                p.at(
                    d,
                    format!("{at}: {probe} path {have:?} is not an admin route of herald"),
                );
            } else if have != path {
                p.at(d, format!("{at}: {probe} path {have} (expected {path})"));
            }
            match h.resolve_port(&get["port"]) {
                None => p.at(
                    d,
                    format!("{at}: {probe} port {} is not a declared container port", get["port"]),
                ),
                Some(port) if Some(port) != admin => p.at(
                    d,
                    format!(
                        "{at}: {probe} port {port} is not the admin listener ({admin:?}): herald serves {path} only there"
                    ),
                ),
                Some(_) => {}
            }
        }
        // Shutdown budget.
        let pre = pre_stop_s(h.container);
        let budget = h.stop_budget_s();
        match (pre, budget, grace) {
            (None, _, _) => p.at(
                d,
                format!("{at}: cannot tell how long its preStop hook takes"),
            ),
            (_, Err(e), _) => p.at(d, format!("{at}: drain window unknown: {e}")),
            (_, _, None) => p.at(d, "no terminationGracePeriodSeconds"),
            (Some(pre), Ok(budget), Some(grace)) => {
                if pre <= 0.0 {
                    p.at(d, format!("{at}: no preStop delay: the pod stops accepting before the endpoints drop it"));
                }
                if grace <= pre + budget {
                    p.at(
                        d,
                        format!(
                            "terminationGracePeriodSeconds {grace} must exceed preStop {pre} s + {budget} s herald needs to stop ({})",
                            if h.subcommand == "gateway" { "drain_window + 5 s" } else { "5 s" }
                        ),
                    );
                }
                if h.subcommand == "gateway" {
                    let min_ready = spec["minReadySeconds"].as_f64().unwrap_or(0.0);
                    if min_ready < pre + budget {
                        p.at(
                            d,
                            format!(
                                "minReadySeconds {min_ready} below preStop {pre} s + {budget} s: a rolling update would overlap two drains"
                            ),
                        );
                    }
                }
            }
        }
        // Secrets a process ignores do not belong in its environment.
        let ignored: &[&str] = if h.subcommand == "gateway" {
            &["HERALD_DATABASE_URL"]
        } else {
            &["HERALD_JWT_SECRET"]
        };
        for e in h.container["env"].as_array().into_iter().flatten() {
            if let Some(n) = e["name"].as_str()
                && ignored.contains(&n)
            {
                p.at(
                    d,
                    format!(
                        "{at}: {n} is given to `herald {}`, which ignores it",
                        h.subcommand
                    ),
                );
            }
        }
    }
}

fn check_env(set: &Set, d: &Doc, c: &Value, at: &str, settings: &Settings, p: &mut Problems) {
    let mut seen = BTreeSet::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("");
        if !seen.insert(name.to_string()) {
            p.at(d, format!("{at}: env {name} twice"));
        }
        if !settings.reads_env(name) {
            p.at(
                d,
                format!("{at}: env {name:?} is not a variable herald reads (docs/configuration.md); herald refuses unknown HERALD_* names"),
            );
        }
        let from = &e["valueFrom"];
        match (e.get("value"), from.is_null()) {
            (Some(_), false) => p.at(d, format!("{at}: env {name} has value and valueFrom")),
            (None, true) => p.at(d, format!("{at}: env {name} has no value")),
            _ => {}
        }
        for (field, kind) in [("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")] {
            let r = &from[field];
            if r.is_null() || r["optional"] == true {
                continue;
            }
            let (rn, key) = (
                r["name"].as_str().unwrap_or(""),
                r["key"].as_str().unwrap_or(""),
            );
            match keys_of(set, kind, rn) {
                None => p.at(
                    d,
                    format!("{at}: env {name} refers to missing {kind} {rn:?}"),
                ),
                Some(keys) if !keys.contains(key) => {
                    p.at(
                        d,
                        format!("{at}: env {name}: {kind} {rn} has no key {key:?}"),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(fp) = from["fieldRef"]["fieldPath"].as_str()
            && !matches!(
                fp,
                "metadata.name"
                    | "metadata.namespace"
                    | "metadata.uid"
                    | "spec.nodeName"
                    | "status.podIP"
                    | "status.hostIP"
            )
        {
            p.at(d, format!("{at}: env {name}: fieldPath {fp}"));
        }
    }
    for ef in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = ef["prefix"].as_str().unwrap_or("");
        for (field, kind) in [("secretRef", "Secret"), ("configMapRef", "ConfigMap")] {
            let Some(rn) = ef[field]["name"].as_str() else {
                continue;
            };
            match keys_of(set, kind, rn) {
                None => p.at(d, format!("{at}: envFrom refers to missing {kind} {rn}")),
                Some(keys) => {
                    for k in keys {
                        let name = format!("{prefix}{k}");
                        if !settings.reads_env(&name) {
                            p.at(d, format!("{at}: envFrom {kind} {rn} brings {name}, not a variable herald reads"));
                        }
                    }
                }
            }
        }
    }
}

/// Settings that must be equal on every herald process of a deployment, and
/// the gateway's way to ingest.
fn check_across_processes(set: &Set, herald: &[HeraldContainer<'_>], p: &mut Problems) {
    for (section, key) in [
        ("", "redis_url"),
        ("bus", "prefix"),
        ("limits", "max_data_bytes"),
    ] {
        let values: BTreeMap<String, String> = herald
            .iter()
            .map(|h| {
                let v = match h.setting(section, key) {
                    Ok(v) => v.map_or_else(|| "(default)".to_string(), |v| v.to_string()),
                    Err(e) => format!("({e})"),
                };
                (h.deployment.name().to_string(), v)
            })
            .collect();
        let distinct: BTreeSet<&String> = values.values().collect();
        if distinct.len() > 1 {
            let what = if section.is_empty() {
                key.to_string()
            } else {
                format!("[{section}] {key}")
            };
            p.top(format!(
                "{what} differs between herald processes: {values:?}"
            ));
        }
    }
    for h in herald.iter().filter(|h| h.subcommand == "gateway") {
        let url = match h.setting("", "ingest_url") {
            Ok(Some(toml::Value::String(u))) => u,
            other => {
                p.at(
                    h.deployment,
                    format!("ingest_url is not set in the file or env ({other:?})"),
                );
                continue;
            }
        };
        let rest = url.strip_prefix("http://").unwrap_or("");
        let hostport = rest.split('/').next().unwrap_or("");
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "80"));
        let svc_name = host.split('.').next().unwrap_or("");
        let port: Option<u64> = port.parse().ok();
        let Some(svc) = set.find("Service", svc_name) else {
            p.at(
                h.deployment,
                format!("ingest_url {url}: no Service {svc_name:?} in the set"),
            );
            continue;
        };
        let sp = svc.v["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|sp| sp["port"].as_u64() == port);
        let ingest = herald.iter().find(|i| {
            i.subcommand == "ingest"
                && selects_map(
                    &svc.v["spec"]["selector"],
                    &string_map(&i.deployment.v["spec"]["template"]["metadata"]["labels"]),
                )
        });
        match (sp, ingest) {
            (None, _) => p.at(
                h.deployment,
                format!("ingest_url {url}: Service {svc_name} has no port {port:?}"),
            ),
            (_, None) => p.at(
                h.deployment,
                format!(
                    "ingest_url {url}: Service {svc_name} does not select an ingest Deployment"
                ),
            ),
            (Some(sp), Some(i)) => {
                let target = i.resolve_port(&sp["targetPort"]);
                if target.is_none() || target != i.port_setting("listen").ok().flatten() {
                    p.at(
                        h.deployment,
                        format!(
                            "ingest_url {url}: Service port {} does not reach ingest's listen port",
                            sp["port"]
                        ),
                    );
                }
            }
        }
    }
}

/// The herald containers of the Deployments a pod selector matches.
fn selected<'a, 'b>(
    herald: &'b [HeraldContainer<'a>],
    matches: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Vec<&'b HeraldContainer<'a>> {
    herald
        .iter()
        .filter(|h| {
            matches(&string_map(
                &h.deployment.v["spec"]["template"]["metadata"]["labels"],
            ))
        })
        .collect()
}

fn check_service(set: &Set, d: &Doc, herald: &[HeraldContainer<'_>], p: &mut Problems) {
    let spec = &d.v["spec"];
    if spec["type"] == "ExternalName" {
        return;
    }
    let sel = &spec["selector"];
    let deployments: Vec<&Doc> = set
        .of_kind("Deployment")
        .filter(|dep| {
            selects_map(
                sel,
                &string_map(&dep.v["spec"]["template"]["metadata"]["labels"]),
            )
        })
        .collect();
    if deployments.is_empty() {
        p.at(
            d,
            format!("spec.selector {sel} selects no Deployment's pods"),
        );
    }
    let backends = selected(herald, |l| selects_map(sel, l));
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() {
        p.at(d, "no ports");
    }
    let mut names = BTreeSet::new();
    for sp in &ports {
        let port = sp["port"].as_u64();
        if !port.is_some_and(|n| (1..=65535).contains(&n)) {
            p.at(d, format!("bad port {}", sp["port"]));
        }
        match sp["name"].as_str() {
            Some(n) if is_port_name(n) && names.insert(n.to_string()) => {}
            None if ports.len() == 1 => {}
            other => p.at(d, format!("bad, missing or duplicate port name {other:?}")),
        }
        let target = if sp["targetPort"].is_null() {
            &sp["port"]
        } else {
            &sp["targetPort"]
        };
        for b in &backends {
            if b.resolve_port(target).is_none() {
                p.at(
                    d,
                    format!(
                        "targetPort {target} of port {} is not a container port of {}",
                        sp["name"],
                        b.deployment.what()
                    ),
                );
            }
        }
    }
}

fn check_hpa(set: &Set, d: &Doc, p: &mut Problems) {
    let spec = &d.v["spec"];
    let target = &spec["scaleTargetRef"];
    let name = target["name"].as_str().unwrap_or("");
    let dep = set.find("Deployment", name);
    if target["kind"] != "Deployment" || target["apiVersion"] != "apps/v1" || dep.is_none() {
        p.at(
            d,
            format!("scaleTargetRef {target} is not a Deployment of the set"),
        );
    }
    let min = spec["minReplicas"].as_u64().unwrap_or(1);
    match spec["maxReplicas"].as_u64() {
        Some(max) if max >= min && min >= 1 => {}
        _ => p.at(
            d,
            format!("replicas: min {min}, max {}", spec["maxReplicas"]),
        ),
    }
    let metrics = spec["metrics"].as_array().cloned().unwrap_or_default();
    if metrics.is_empty() {
        p.at(d, "no metrics");
    }
    let mut has_pods = false;
    let mut has_cpu = false;
    for m in &metrics {
        match m["type"].as_str() {
            Some("Pods") => {
                let metric = m["pods"]["metric"]["name"].as_str().unwrap_or("");
                let t = &m["pods"]["target"];
                if t["type"] != "AverageValue"
                    || quantity(&t["averageValue"]).is_none_or(|v| v <= 0.0)
                {
                    p.at(
                        d,
                        format!("Pods metric {metric}: target must be a positive AverageValue"),
                    );
                }
                if !is_documented_gauge(&set.metrics_md, metric) {
                    p.at(
                        d,
                        format!(
                            "Pods metric {metric:?} is not a gauge herald exports (docs/metrics.md)"
                        ),
                    );
                }
                has_pods = metric == "herald_connections";
            }
            Some("Resource") => {
                let r = &m["resource"];
                let t = &r["target"];
                if r["name"] == "cpu" {
                    has_cpu = true;
                }
                if t["type"] == "Utilization"
                    && t["averageUtilization"].as_u64().is_none_or(|u| u == 0)
                {
                    p.at(
                        d,
                        "Resource metric: averageUtilization must be a positive integer",
                    );
                }
                let res = r["name"].as_str().unwrap_or("");
                if let Some(dep) = dep {
                    for c in dep.v["spec"]["template"]["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        if quantity(&c["resources"]["requests"][res]).is_none() {
                            p.at(d, format!("Resource metric {res}: container {} has no {res} request to compute utilization from", c["name"]));
                        }
                    }
                }
            }
            other => p.at(d, format!("metric type {other:?} not used by this set")),
        }
    }
    if !has_pods {
        p.at(d, "no Pods metric herald_connections");
    }
    if !has_cpu {
        p.at(
            d,
            "no CPU Resource metric (the fallback when custom metrics are unavailable)",
        );
    }
    // The custom metric needs the target's pods to be scraped.
    if let Some(dep) = dep {
        let labels = string_map(&dep.v["spec"]["template"]["metadata"]["labels"]);
        let scraped = set.of_kind("ServiceMonitor").any(|sm| {
            set.of_kind("Service").any(|svc| {
                selects(
                    &sm.v["spec"]["selector"],
                    &string_map(&svc.v["metadata"]["labels"]),
                ) && selects_map(&svc.v["spec"]["selector"], &labels)
            })
        });
        if !scraped {
            p.at(
                d,
                format!(
                    "no ServiceMonitor scrapes {}: herald_connections would have no data",
                    dep.what()
                ),
            );
        }
    }
}

fn check_pdb(set: &Set, d: &Doc, p: &mut Problems) {
    let spec = &d.v["spec"];
    let (min, max) = (&spec["minAvailable"], &spec["maxUnavailable"]);
    if min.is_null() == max.is_null() {
        p.at(d, "set exactly one of minAvailable and maxUnavailable");
    }
    let deps: Vec<&Doc> = set
        .of_kind("Deployment")
        .filter(|dep| {
            selects(
                &spec["selector"],
                &string_map(&dep.v["spec"]["template"]["metadata"]["labels"]),
            )
        })
        .collect();
    if deps.is_empty() {
        p.at(
            d,
            format!(
                "spec.selector {} selects no Deployment's pods",
                spec["selector"]
            ),
        );
    }
    if let Some(n) = max.as_u64()
        && n == 0
    {
        p.at(
            d,
            "maxUnavailable 0 blocks every eviction (node drains hang)",
        );
    }
    if max.as_str() == Some("0%") {
        p.at(
            d,
            "maxUnavailable 0% blocks every eviction (node drains hang)",
        );
    }
    if let Some(n) = min.as_u64() {
        for dep in deps {
            let replicas = dep.v["spec"]["replicas"].as_u64().or_else(|| {
                set.of_kind("HorizontalPodAutoscaler")
                    .find(|h| h.v["spec"]["scaleTargetRef"]["name"] == dep.name())
                    .map(|h| h.v["spec"]["minReplicas"].as_u64().unwrap_or(1))
            });
            if replicas.is_none_or(|r| n >= r) {
                p.at(
                    d,
                    format!(
                        "minAvailable {n} leaves no eviction possible for {}",
                        dep.what()
                    ),
                );
            }
        }
    }
}

fn check_service_monitor(
    set: &Set,
    d: &Doc,
    herald: &[HeraldContainer<'_>],
    namespace: &str,
    p: &mut Problems,
) {
    let spec = &d.v["spec"];
    let names = string_list(&spec["namespaceSelector"]["matchNames"]);
    if !spec["namespaceSelector"].is_null()
        && spec["namespaceSelector"]["any"] != true
        && !names.contains(&namespace)
    {
        p.at(d, format!("namespaceSelector does not include {namespace}"));
    }
    let services: Vec<&Doc> = set
        .of_kind("Service")
        .filter(|s| selects(&spec["selector"], &string_map(&s.v["metadata"]["labels"])))
        .collect();
    if services.is_empty() {
        p.at(
            d,
            format!(
                "spec.selector {} selects no Service (by its labels)",
                spec["selector"]
            ),
        );
    }
    let endpoints = spec["endpoints"].as_array().cloned().unwrap_or_default();
    if endpoints.is_empty() {
        p.at(d, "no endpoints");
    }
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for ep in &endpoints {
        let port = ep["port"].as_str().unwrap_or("");
        if let Some(path) = ep["path"].as_str()
            && path != "/metrics"
        {
            p.at(d, format!("endpoint path {path} (herald serves /metrics)"));
        }
        for svc in &services {
            let sp = svc.v["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|sp| sp["name"].as_str() == Some(port));
            let Some(sp) = sp else {
                p.at(
                    d,
                    format!(
                        "endpoint port {port:?} is not a named port of {}",
                        svc.what()
                    ),
                );
                continue;
            };
            let target = if sp["targetPort"].is_null() {
                &sp["port"]
            } else {
                &sp["targetPort"]
            };
            for h in selected(herald, |l| selects_map(&svc.v["spec"]["selector"], l)) {
                let admin = h.port_setting("admin_listen").ok().flatten();
                if h.resolve_port(target).is_none() || h.resolve_port(target) != admin {
                    p.at(
                        d,
                        format!(
                            "endpoint port {port:?} of {} does not reach the admin listener of {}",
                            svc.what(),
                            h.deployment.what()
                        ),
                    );
                } else {
                    covered.insert(h.deployment.name().to_string());
                }
            }
        }
    }
    for h in herald {
        if !covered.contains(h.deployment.name()) {
            p.at(d, format!("{} is not scraped", h.deployment.what()));
        }
    }
}

// ---------------------------------------------------------------------------
// The checker on the real manifests, and on broken copies of them
// ---------------------------------------------------------------------------

#[test]
fn deploy_k8s_passes_the_checker() {
    let set = Set::load();
    let problems = check(&set);
    assert!(
        problems.is_empty(),
        "{K8S_DIR} has {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    // Not vacuous: the set holds what issue 12 asks for.
    let kinds: BTreeMap<&str, usize> = set.docs.iter().fold(BTreeMap::new(), |mut m, d| {
        *m.entry(d.kind()).or_default() += 1;
        m
    });
    for (kind, n) in [
        ("Namespace", 1),
        ("ConfigMap", 1),
        ("Secret", 1),
        ("Deployment", 2),
        ("Service", 3),
        ("HorizontalPodAutoscaler", 1),
        ("PodDisruptionBudget", 2),
        ("ServiceMonitor", 1),
    ] {
        assert_eq!(
            kinds.get(kind),
            Some(&n),
            "{kind} documents in {K8S_DIR}: {kinds:?}"
        );
    }
    let herald = herald_containers(&set);
    let subs: BTreeSet<&str> = herald.iter().map(|h| h.subcommand.as_str()).collect();
    assert_eq!(subs, BTreeSet::from(["gateway", "ingest"]));
}

/// The settings table parser sees what the environment names are built from.
#[test]
fn settings_come_from_docs_configuration_md() {
    let set = Set::load();
    let s = Settings::from_doc(&set.configuration_md);
    for name in [
        "HERALD_JWT_SECRET",
        "HERALD_API_KEY",
        "HERALD_DATABASE_URL",
        "HERALD_NODE_ID",
        "HERALD_REDIS_URL",
        "HERALD_LIMITS__DRAIN_WINDOW",
        "HERALD_GATEWAY__ALLOWED_ORIGINS",
        "HERALD_PRESENCE__TTL",
        "HERALD_CONFIG",
    ] {
        assert!(s.reads_env(name), "{name} must be a variable herald reads");
    }
    for name in [
        "HERALD_JWT",
        "HERALD_jwt_secret",
        "HERALD_ROUTES__PATH",
        "HERALD_LIMITS__DRAIN",
        "HERALD_TEST_REDIS_URL",
        "JWT_SECRET",
    ] {
        assert!(
            !s.reads_env(name),
            "{name} must not be a variable herald reads"
        );
    }
    assert!(s.arrays.contains("routes") && s.arrays.contains("auth.keys"));
    assert!(is_documented_gauge(&set.metrics_md, "herald_connections"));
    assert!(!is_documented_gauge(
        &set.metrics_md,
        "herald_frames_sent_total"
    ));
}

/// Runs the checker on the real set changed by `break_it`; panics unless a
/// problem contains `expect`.
fn assert_caught(expect: &str, break_it: impl FnOnce(&mut Set)) {
    let mut set = Set::load();
    assert!(check(&set).is_empty(), "the real set must pass first");
    break_it(&mut set);
    let problems = check(&set);
    assert!(
        problems.iter().any(|p| p.contains(expect)),
        "expected a problem containing {expect:?}, got:\n{}",
        problems.join("\n")
    );
}

fn set_at(v: &mut Value, pointer: &str, new: Value) {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the document")) = new;
}

fn gateway_toml(set: &mut Set) -> &mut Value {
    set.doc_mut("ConfigMap", "herald-config")
        .pointer_mut("/data/gateway.toml")
        .expect("herald-config has gateway.toml")
}

fn replace_in_toml(v: &mut Value, from: &str, to: &str) {
    let text = v.as_str().expect("a TOML text").to_string();
    assert!(text.contains(from), "the TOML holds {from:?}");
    *v = Value::String(text.replacen(from, to, 1));
}

#[test]
fn catches_a_deployment_selector_that_misses_its_pods() {
    assert_caught("does not match the pod template's labels", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-gateway"),
            "/spec/selector/matchLabels/app.kubernetes.io~1component",
            json!("gatewy"),
        );
    });
}

#[test]
fn catches_a_service_that_selects_nothing() {
    assert_caught("selects no Deployment's pods", |s| {
        set_at(
            s.doc_mut("Service", "herald-ingest"),
            "/spec/selector/app.kubernetes.io~1component",
            json!("ingester"),
        );
    });
}

#[test]
fn catches_a_service_target_port_the_pods_do_not_have() {
    assert_caught("is not a container port of", |s| {
        set_at(
            s.doc_mut("Service", "herald-gateway"),
            "/spec/ports/0/targetPort",
            json!("websocket"),
        );
    });
}

#[test]
fn catches_a_probe_on_an_undeclared_port() {
    assert_caught("is not a declared container port", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-gateway"),
            "/spec/template/spec/containers/0/readinessProbe/httpGet/port",
            json!("health"),
        );
    });
}

#[test]
fn catches_a_probe_on_the_public_port() {
    assert_caught("is not the admin listener", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-ingest"),
            "/spec/template/spec/containers/0/livenessProbe/httpGet/port",
            json!("api"),
        );
    });
}

#[test]
fn catches_a_probe_path_herald_does_not_serve() {
    assert_caught("is not an admin route of herald", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-gateway"),
            "/spec/template/spec/containers/0/livenessProbe/httpGet/path",
            json!("/health"),
        );
    });
}

#[test]
fn catches_a_grace_period_shorter_than_the_drain() {
    assert_caught("terminationGracePeriodSeconds 20 must exceed", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-gateway"),
            "/spec/template/spec/terminationGracePeriodSeconds",
            json!(20),
        );
    });
}

/// The relation follows the ConfigMap: a longer drain window needs a longer
/// grace period.
#[test]
fn catches_a_drain_window_raised_past_the_grace_period() {
    assert_caught("must exceed preStop 5 s + 35 s", |s| {
        replace_in_toml(
            gateway_toml(s),
            "drain_window = 10",
            "drain_window = \"30s\"",
        );
    });
}

#[test]
fn catches_an_ingest_grace_period_without_room_for_prestop() {
    assert_caught(
        "terminationGracePeriodSeconds 10 must exceed preStop 5 s + 5 s",
        |s| {
            set_at(
                s.doc_mut("Deployment", "herald-ingest"),
                "/spec/template/spec/terminationGracePeriodSeconds",
                json!(10),
            );
        },
    );
}

#[test]
fn catches_an_hpa_aimed_at_a_missing_deployment() {
    assert_caught("scaleTargetRef", |s| {
        set_at(
            s.doc_mut("HorizontalPodAutoscaler", "herald-gateway"),
            "/spec/scaleTargetRef/name",
            json!("herald-gw"),
        );
    });
}

#[test]
fn catches_an_hpa_metric_herald_does_not_export() {
    assert_caught("is not a gauge herald exports", |s| {
        set_at(
            s.doc_mut("HorizontalPodAutoscaler", "herald-gateway"),
            "/spec/metrics/0/pods/metric/name",
            json!("herald_connection_count"),
        );
    });
}

#[test]
fn catches_replicas_fixed_under_an_hpa() {
    assert_caught("sets spec.replicas although", |s| {
        let spec = s
            .doc_mut("Deployment", "herald-gateway")
            .pointer_mut("/spec")
            .and_then(Value::as_object_mut)
            .expect("a spec");
        spec.insert("replicas".into(), json!(3));
    });
}

#[test]
fn catches_a_pdb_that_selects_nothing() {
    assert_caught("selects no Deployment's pods", |s| {
        set_at(
            s.doc_mut("PodDisruptionBudget", "herald-ingest"),
            "/spec/selector/matchLabels/app.kubernetes.io~1name",
            json!("heraldd"),
        );
    });
}

#[test]
fn catches_a_pdb_that_blocks_every_eviction() {
    assert_caught("blocks every eviction", |s| {
        set_at(
            s.doc_mut("PodDisruptionBudget", "herald-gateway"),
            "/spec/maxUnavailable",
            json!(0),
        );
    });
}

#[test]
fn catches_a_service_monitor_port_the_services_lack() {
    assert_caught("is not a named port of", |s| {
        set_at(
            s.doc_mut("ServiceMonitor", "herald"),
            "/spec/endpoints/0/port",
            json!("metrics"),
        );
    });
}

#[test]
fn catches_a_service_monitor_that_misses_the_gateways() {
    assert_caught("Deployment/herald-gateway is not scraped", |s| {
        let labels = s
            .doc_mut("Service", "herald-gateway-admin")
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
            .expect("labels");
        labels.remove("herald-metrics");
    });
}

#[test]
fn catches_an_undocumented_config_key() {
    assert_caught(
        "gateway.toml: [limits] drain_windw is not documented",
        |s| {
            replace_in_toml(gateway_toml(s), "drain_window = 10", "drain_windw = 10");
        },
    );
}

#[test]
fn catches_config_that_differs_between_processes() {
    assert_caught("[bus] prefix differs between herald processes", |s| {
        replace_in_toml(
            gateway_toml(s),
            "prefix = \"herald:\"",
            "prefix = \"chat:\"",
        );
    });
}

#[test]
fn catches_an_env_name_herald_does_not_read() {
    assert_caught("env \"HERALD_JWT\" is not a variable herald reads", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-gateway"),
            "/spec/template/spec/containers/0/env/1/name",
            json!("HERALD_JWT"),
        );
    });
}

#[test]
fn catches_a_secret_key_that_does_not_exist() {
    assert_caught(
        "Secret herald-secrets has no key \"HERALD_API_TOKEN\"",
        |s| {
            set_at(
                s.doc_mut("Deployment", "herald-ingest"),
                "/spec/template/spec/containers/0/env/1/valueFrom/secretKeyRef/key",
                json!("HERALD_API_TOKEN"),
            );
        },
    );
}

#[test]
fn catches_a_secret_given_to_a_process_that_ignores_it() {
    assert_caught("HERALD_DATABASE_URL is given to `herald gateway`", |s| {
        let env = s
            .doc_mut("Deployment", "herald-gateway")
            .pointer_mut("/spec/template/spec/containers/0/env")
            .and_then(Value::as_array_mut)
            .expect("env");
        env.push(json!({"name": "HERALD_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "herald-secrets", "key": "HERALD_DATABASE_URL"}}}));
    });
}

#[test]
fn catches_a_file_missing_from_the_kustomization() {
    assert_caught("ingest-pdb.yaml is in deploy/k8s but not listed", |s| {
        let r = s
            .kustomization
            .pointer_mut("/resources")
            .and_then(Value::as_array_mut)
            .expect("resources");
        r.retain(|f| f != "ingest-pdb.yaml");
    });
}

#[test]
fn catches_a_label_value_that_is_not_a_string() {
    // `herald-metrics: true` unquoted is a YAML boolean, refused by the API.
    assert_caught("is not a valid label value", |s| {
        set_at(
            s.doc_mut("Service", "herald-ingest"),
            "/metadata/labels/herald-metrics",
            json!(true),
        );
    });
}

#[test]
fn catches_a_container_without_an_image() {
    assert_caught("no image", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-ingest"),
            "/spec/template/spec/containers/0/image",
            json!(""),
        );
    });
}

#[test]
fn catches_an_ingest_url_that_is_not_the_ingest_service() {
    assert_caught("ingest_url http://herald-ingress:8081: no Service", |s| {
        replace_in_toml(
            gateway_toml(s),
            "http://herald-ingest:8081",
            "http://herald-ingress:8081",
        );
    });
}

#[test]
fn catches_a_root_container_with_a_writable_root() {
    assert_caught("readOnlyRootFilesystem is not true", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-gateway"),
            "/spec/template/spec/containers/0/securityContext/readOnlyRootFilesystem",
            json!(false),
        );
    });
}

#[test]
fn catches_a_config_path_outside_the_mounted_config_map() {
    assert_caught("is not a file of a mounted ConfigMap", |s| {
        set_at(
            s.doc_mut("Deployment", "herald-gateway"),
            "/spec/template/spec/containers/0/args/2",
            json!("/etc/herald-config/gateway.toml"),
        );
    });
}

#[test]
fn yaml_errors_are_reported() {
    assert!(parse_yaml("x.yaml", "a: [1, 2\n").is_err());
    assert!(
        parse_yaml("x.yaml", "a: 1\na: 2\n").is_err(),
        "duplicate keys"
    );
    let docs = parse_yaml("x.yaml", "---\na: 1\n---\nb: \"true\"\nc: true\n").expect("valid");
    assert_eq!(docs, vec![json!({"a": 1}), json!({"b": "true", "c": true})]);
}

// ---------------------------------------------------------------------------
// The ConfigMap's herald configuration, run for real
// ---------------------------------------------------------------------------

/// A herald process started as a Deployment would start it; SIGKILLed by
/// PID when dropped.
struct PodProcess {
    child: Child,
    log: PathBuf,
    admin_port: u16,
    port: u16,
    exited: Option<ExitStatus>,
    _dir: tempfile::TempDir,
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl PodProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    fn sigterm(&self) {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits in i32"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM to herald");
    }

    /// Waits until `GET /readyz` answers 200; panics with the log if the
    /// process exits first or 30 s pass.
    async fn wait_ready(&mut self, what: &str) {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("reqwest client");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.poll_exit() {
                panic!(
                    "{what} exited with {st} before /readyz answered 200:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: /readyz not 200 within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the exit, up to `timeout`; the status and the time taken.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(st) = self.poll_exit() {
                return Some((st, start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

fn random_text() -> String {
    let a = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let b = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{a:016x}{b:016x}")
}

/// Starts the herald container of `deployment` exactly as the manifests
/// say: its args (the `--config` path swapped for a temp copy of the
/// ConfigMap file) and its env, with each Secret value taken from
/// `secrets`, `fieldRef`s filled in, and `overrides` (listen addresses,
/// Redis, ingest: the cluster's names do not resolve here) added. Every
/// `HERALD_*` variable of this process is removed first.
fn start_pod(
    set: &Set,
    deployment: &str,
    secrets: &BTreeMap<&str, String>,
    overrides: &[(&str, String)],
) -> PodProcess {
    let herald = herald_containers(set);
    let h = herald
        .iter()
        .find(|h| h.deployment.name() == deployment)
        .unwrap_or_else(|| panic!("no herald container in {deployment}"));
    let dir = herald_testkit::temp_dir();
    let (cm, key) = h
        .config_source
        .clone()
        .expect("the checker resolved --config");
    let text = set
        .find("ConfigMap", &cm)
        .and_then(|d| d.v["data"][key.as_str()].as_str())
        .expect("the ConfigMap holds the file");
    let config = dir.path().join(&key);
    std::fs::write(&config, text).expect("writing the config copy");
    let container_path = h.config_path.clone().expect("--config");
    let args: Vec<String> = string_list(&h.container["args"])
        .into_iter()
        .map(|a| {
            if a == container_path {
                config.display().to_string()
            } else if let Some(rest) = a.strip_prefix("--config=") {
                assert_eq!(rest, container_path);
                format!("--config={}", config.display())
            } else {
                a.to_string()
            }
        })
        .collect();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for e in h.container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(k) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            secrets
                .get(k)
                .unwrap_or_else(|| panic!("no test value for Secret key {k}"))
                .clone()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            format!("{deployment}-test-pod")
        } else {
            panic!("no test value for env {e}");
        };
        env.insert(name, value);
    }
    for (k, v) in overrides {
        env.insert((*k).to_string(), v.clone());
    }
    let port_of_env = |k: &str| {
        env.get(k)
            .and_then(|a| port_of(a))
            .unwrap_or_else(|| panic!("override {k} with a 127.0.0.1 address"))
    };
    let (port, admin_port) = (
        port_of_env("HERALD_LISTEN"),
        port_of_env("HERALD_ADMIN_LISTEN"),
    );
    let log = dir.path().join("herald.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file clone");
    let mut cmd = Command::new(herald_testkit::herald_bin());
    cmd.args(&args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(&k);
        }
    }
    let child = cmd
        .envs(&env)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawning herald");
    PodProcess {
        child,
        log,
        admin_port,
        port,
        exited: None,
        _dir: dir,
    }
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The grace period a Deployment gives its pod minus its preStop hook: what
/// is left for herald after SIGTERM.
fn time_after_sigterm(set: &Set, deployment: &str) -> Duration {
    let d = set.find("Deployment", deployment).expect("the Deployment");
    let pod = &d.v["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .expect("grace period");
    let pre = pre_stop_s(&pod["containers"][0]).expect("preStop");
    Duration::from_secs_f64(grace - pre)
}

/// The ConfigMap's files and the Deployments' env start real herald
/// processes (Secret values replaced by test values; listen addresses,
/// Redis and the ingest URL pointed at private servers on 127.0.0.1): both
/// become ready, a message goes from the ingest API and from a client's
/// publish to a subscriber through the gateway, and on SIGTERM each process
/// exits 0 within what its grace period leaves after preStop, the gateway's
/// client being told 1012.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_runs_herald_and_drains_within_the_grace_period() {
    let set = Set::load();
    assert!(
        check(&set).is_empty(),
        "run deploy_k8s_passes_the_checker first"
    );
    let redis = tokio::task::spawn_blocking(herald_testkit::RedisServer::start)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("starting a private redis-server: {e}"));
    let db = herald_testkit::test_database().await;
    let jwt_secret = random_text();
    let api_key = random_text();
    let secrets: BTreeMap<&str, String> = BTreeMap::from([
        ("HERALD_JWT_SECRET", jwt_secret.clone()),
        ("HERALD_API_KEY", api_key.clone()),
        ("HERALD_DATABASE_URL", db.url().to_string()),
    ]);
    let secret_keys = keys_of(&set, "Secret", "herald-secrets").expect("the Secret");
    assert_eq!(
        secret_keys,
        secrets
            .keys()
            .map(|k| k.to_string())
            .collect::<BTreeSet<_>>(),
        "every key of the Secret gets a test value"
    );

    let (ingest_port, ingest_admin) = (free_port(), free_port());
    let mut ingest = start_pod(
        &set,
        "herald-ingest",
        &secrets,
        &[
            ("HERALD_LISTEN", local(ingest_port)),
            ("HERALD_ADMIN_LISTEN", local(ingest_admin)),
            ("HERALD_REDIS_URL", redis.url()),
        ],
    );
    ingest.wait_ready("herald ingest").await;
    let (gw_port, gw_admin) = (free_port(), free_port());
    let mut gateway = start_pod(
        &set,
        "herald-gateway",
        &secrets,
        &[
            ("HERALD_LISTEN", local(gw_port)),
            ("HERALD_ADMIN_LISTEN", local(gw_admin)),
            ("HERALD_REDIS_URL", redis.url()),
            (
                "HERALD_INGEST_URL",
                format!("http://{}", local(ingest.port)),
            ),
        ],
    );
    gateway.wait_ready("herald gateway").await;

    // End to end with the Secret's JWT secret and API key.
    let token = TokenBuilder::new("k8s").allow_all().sign(&jwt_secret);
    let (mut c, welcome) = Connect::port(gateway.port).token(&token).ready().await;
    assert_eq!(
        welcome["node"], "herald-gateway-test-pod",
        "HERALD_NODE_ID from the pod name: {welcome}"
    );
    c.call_ok("subscribe", json!({"channel": "k8s_smoke"}))
        .await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://127.0.0.1:{}/v1/publish", ingest.port))
        .bearer_auth(&api_key)
        .json(&json!({"channel": "k8s_smoke", "data": {"from": "app"}}))
        .send()
        .await
        .expect("POST /v1/publish");
    assert_eq!(r.status(), 200, "publish with the Secret's API key");
    let m = c
        .recv_until("the app's message", |v| {
            v["type"] == "message" && v["data"]["from"] == "app"
        })
        .await;
    assert_eq!(m["channel"], "k8s_smoke");
    // A client publish goes gateway -> ingest with the same key.
    c.publish("k8s_smoke", json!({"from": "client"})).await;
    c.recv_until("the client's message", |v| {
        v["type"] == "message" && v["data"]["from"] == "client"
    })
    .await;

    // SIGTERM: what the kubelet sends after preStop. With several clients
    // the drain spreads their 1012s over the ConfigMap's drain_window, so
    // this measures a whole drain against the grace period.
    let drain_window = herald_containers(&set)
        .iter()
        .find(|h| h.subcommand == "gateway")
        .expect("a gateway")
        .drain_window_s()
        .expect("drain_window");
    let mut clients = vec![c];
    for i in 1..DRAIN_CLIENTS {
        let t = TokenBuilder::new(&format!("k8s-{i}"))
            .allow_all()
            .sign(&jwt_secret);
        clients.push(Connect::port(gateway.port).token(&t).ready().await.0);
    }
    let gw_budget = time_after_sigterm(&set, "herald-gateway");
    gateway.sigterm();
    let told = futures_util::future::join_all(clients.iter_mut().map(|c| async {
        c.expect_disconnect_within(1012, gw_budget).await;
    }));
    let (_, exit) = tokio::join!(told, gateway.wait_exit(gw_budget));
    let (st, took) = exit.unwrap_or_else(|| {
        panic!(
            "gateway still running {gw_budget:?} after SIGTERM: the kubelet would SIGKILL it mid-drain"
        )
    });
    assert!(st.success(), "gateway exit {st}:\n{}", gateway.log());
    eprintln!(
        "gateway drained {DRAIN_CLIENTS} clients and exited {took:?} after SIGTERM \
         (drain_window {drain_window} s; budget after preStop: {gw_budget:?})"
    );
    // The window in the ConfigMap is the one herald used: the last of N
    // clients is told at about drain_window x (N-1)/N.
    assert!(
        took.as_secs_f64() >= drain_window * 0.5,
        "the drain took {took:?}, far less than the ConfigMap's drain_window {drain_window} s"
    );

    let ingest_budget = time_after_sigterm(&set, "herald-ingest");
    ingest.sigterm();
    let (st, took) = ingest.wait_exit(ingest_budget).await.unwrap_or_else(|| {
        panic!(
            "ingest still running {ingest_budget:?} after SIGTERM\n{}",
            ingest.log()
        )
    });
    assert!(st.success(), "ingest exit {st}:\n{}", ingest.log());
    eprintln!("ingest exited {took:?} after SIGTERM (budget after preStop: {ingest_budget:?})");
}

/// The Secret as shipped (empty values) must stop herald at start instead
/// of running with a guessable key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_empty_secret_stops_herald_at_start() {
    let set = Set::load();
    let secret = set.find("Secret", "herald-secrets").expect("the Secret");
    let shipped: BTreeMap<&str, String> = secret.v["stringData"]
        .as_object()
        .expect("stringData")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("").to_string()))
        .collect();
    assert!(
        shipped.values().all(String::is_empty),
        "shipped secrets must be empty: {shipped:?}"
    );
    for deployment in ["herald-gateway", "herald-ingest"] {
        let mut p = start_pod(
            &set,
            deployment,
            &shipped,
            &[
                ("HERALD_LISTEN", local(free_port())),
                ("HERALD_ADMIN_LISTEN", local(free_port())),
                // Never reached: configuration is refused first.
                (
                    "HERALD_REDIS_URL",
                    format!("redis://{}", local(free_port())),
                ),
            ],
        );
        let (st, _) = p
            .wait_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| {
                panic!("{deployment} kept running with empty secrets:\n{}", p.log())
            });
        assert_eq!(st.code(), Some(2), "{deployment}: {}", p.log());
        // Refused for the empty secret itself ("... is required" for an
        // empty API key or database URL, "jwt secret is empty"), before
        // anything is contacted.
        let log = p.log();
        assert!(
            log.contains("is required") || log.contains("is empty"),
            "{deployment} must name the missing secret: {log}"
        );
    }
}
