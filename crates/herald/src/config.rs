//! Settings: a TOML file (`--config`) overridden by `HERALD_*` environment
//! variables, overridden by flags (DESIGN.md). All three are merged into one
//! TOML table and deserialized once with `deny_unknown_fields`, so every
//! source is checked by the same rules and an error names the key.

use anyhow::{Context, anyhow, bail};
use herald_protocol::Pattern;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Public HTTP address.
    pub listen: Option<String>,
    /// Admin address (`/metrics`, `/healthz`, `/readyz`).
    pub admin_listen: Option<String>,
    /// Redis URL (or comma-separated cluster seeds).
    pub redis_url: Option<String>,
    /// `postgres://...` or `sqlite://PATH`.
    pub database_url: Option<String>,
    /// Where a gateway sends publishes and history reads.
    pub ingest_url: Option<String>,
    /// Node name.
    pub node_id: Option<String>,
    /// HS256 key.
    pub jwt_secret: Option<String>,
    /// Ingest API key.
    pub api_key: Option<String>,
    /// `human` (default) or `json`.
    pub log_format: Option<LogFormat>,
    /// `[auth]`.
    #[serde(default)]
    pub auth: AuthSection,
    /// `[bus]`.
    #[serde(default)]
    pub bus: BusSection,
    /// `[store]`.
    #[serde(default)]
    pub store: StoreSection,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[[routes]]`.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// `[[webhooks]]`.
    #[serde(default)]
    pub webhooks: Vec<WebhookSection>,
    /// `[presence]`.
    #[serde(default)]
    pub presence: PresenceSection,
    /// `[gateway]`.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// `[admin]`.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[dev]`.
    #[serde(default)]
    pub dev: DevSection,
}

/// `[dev]`: `herald dev` only (the other subcommands ignore it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevSection {
    /// The demo's stand-in bot (`bot:ai`) answers visitors and honours an
    /// operator's handoff. Off (`--no-bot`, `HERALD_DEV__BOT=false`) when
    /// the application's own backend plays the bot.
    pub bot: bool,
}

impl Default for DevSection {
    fn default() -> Self {
        Self { bot: true }
    }
}

/// `[admin]`: what the admin listener serves besides `/metrics`,
/// `/healthz` and `/readyz`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// The admin page (`GET /admin`) and its API (`/admin/api/*`, behind
    /// the API key). Off by default: the page can publish.
    pub ui: bool,
}

/// `[gateway]`: what the WebSocket endpoint accepts before the upgrade.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Browser origins allowed to open a WebSocket (`Origin` header,
    /// `scheme://host[:port]`, compared case-insensitively; a `*.` after
    /// the scheme allows subdomains: `https://*.example.com`). Empty: any.
    /// A request without `Origin` (not a browser) is always allowed.
    pub allowed_origins: Vec<String>,
    /// Longest time a client may take to send a whole HTTP request head
    /// (the upgrade request or an API request), from the moment it
    /// connects; past it the connection is closed (slowloris).
    #[serde(deserialize_with = "duration")]
    pub handshake_timeout: Duration,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Clock leeway.
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Whether `exp` is required.
    pub require_exp: bool,
    /// Public keys by `kid`.
    pub keys: Vec<herald_auth::KeyConfig>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(5),
            audience: None,
            issuer: None,
            require_exp: true,
            keys: Vec::new(),
        }
    }
}

/// `[bus]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusSection {
    /// Redis channel prefix.
    pub prefix: String,
    /// Catch-up interval.
    #[serde(deserialize_with = "duration")]
    pub catchup_interval: Duration,
    /// How long a later seq waits for a missing earlier one (herald's knob).
    #[serde(deserialize_with = "duration")]
    pub gap_timeout: Duration,
}

impl Default for BusSection {
    fn default() -> Self {
        Self {
            prefix: "herald:".into(),
            catchup_interval: Duration::from_secs(5),
            gap_timeout: Duration::from_millis(200),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Idempotency key lifetime.
    #[serde(deserialize_with = "duration")]
    pub idempotency_window: Duration,
    /// Messages kept per channel.
    pub retention_max_messages: u64,
    /// Message age limit.
    #[serde(deserialize_with = "duration")]
    pub retention_max_age: Duration,
}

impl Default for StoreSection {
    fn default() -> Self {
        let d = herald_store::StoreConfig::default();
        Self {
            idempotency_window: d.idempotency_window,
            retention_max_messages: d.retention_max_messages,
            retention_max_age: d.retention_max_age,
        }
    }
}

/// `[limits]` (PROTOCOL.md section 7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Seconds between pings.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// Silence before 4408.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_timeout: Duration,
    /// Largest inbound message.
    pub max_frame_bytes: usize,
    /// Largest `data`.
    pub max_data_bytes: usize,
    /// Outbound queue bound.
    pub max_queue_bytes: usize,
    /// Connections per node.
    pub max_connections: usize,
    /// Connections per user per node.
    pub max_connections_per_user: usize,
    /// Requests per second.
    pub rate_per_second: u32,
    /// Burst.
    pub rate_burst: u32,
    /// Drain window.
    #[serde(deserialize_with = "duration")]
    pub drain_window: Duration,
    /// Replay bound.
    pub max_replay: u64,
    /// Subscriber caps by pattern.
    pub channel_caps: BTreeMap<String, usize>,
    /// Subscriptions per connection (herald's knob).
    pub max_subscriptions_per_connection: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = herald_gateway::Limits::default();
        Self {
            heartbeat_interval: d.heartbeat_interval,
            heartbeat_timeout: d.heartbeat_timeout,
            max_frame_bytes: d.max_frame_bytes,
            max_data_bytes: d.max_data_bytes,
            max_queue_bytes: d.max_queue_bytes,
            max_connections: d.max_connections,
            max_connections_per_user: d.max_connections_per_user,
            rate_per_second: d.rate_per_second,
            rate_burst: d.rate_burst,
            drain_window: d.drain_window,
            max_replay: d.max_replay,
            channel_caps: BTreeMap::new(),
            max_subscriptions_per_connection: d.max_subscriptions_per_connection,
        }
    }
}
/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// e.g. `/ws/chat/{conversation_id}`.
    pub path: String,
    /// e.g. `["chat_{conversation_id}"]`.
    pub channels: Vec<String>,
}

/// `[[webhooks]]`: an application endpoint told of client events
/// (docs/backend.md). Environment: `HERALD_WEBHOOKS__<NAME>__<KEY>` sets a
/// key of the entry named `<name>` (lower-cased), adding the entry when the
/// file has none, so a secret can stay out of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Unique name (letters, digits, `_` and `-`).
    pub name: String,
    /// `http://host[:port]/path`.
    pub url: String,
    /// Channel patterns (default: every channel).
    #[serde(default = "all_channels")]
    pub channels: Vec<String>,
    /// `publish`, `join`, `leave`, `connect`, `disconnect` (default
    /// `["publish"]`).
    #[serde(default = "publish_only")]
    pub events: Vec<String>,
    /// Signing secret; a list signs with each (rotation).
    pub secret: SecretList,
    /// One attempt's timeout (default 5 s; `before`: 1 s, at most 2.5 s).
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Deliveries in flight per ingest (default 4).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Attempts before an event is dropped (default 15: about 40 min).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Age after which an undelivered event is dropped (default 24 h).
    #[serde(default = "default_max_age", deserialize_with = "duration")]
    pub max_age: Duration,
    /// Backlog at which new events are skipped (default 100 000).
    #[serde(default = "default_max_pending")]
    pub max_pending: u64,
    /// `after` (default) or `before`.
    #[serde(default = "after")]
    pub mode: String,
    /// `before` only: `open` (default) or `closed`.
    #[serde(default = "open")]
    pub on_failure: String,
}

/// One secret or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SecretList {
    /// One secret.
    One(String),
    /// Several (the first is the new one).
    Many(Vec<String>),
}

fn all_channels() -> Vec<String> {
    vec!["*".into()]
}
fn publish_only() -> Vec<String> {
    vec!["publish".into()]
}
fn default_concurrency() -> usize {
    4
}
fn default_attempts() -> u32 {
    15
}
fn default_max_age() -> Duration {
    Duration::from_secs(86400)
}
fn default_max_pending() -> u64 {
    100_000
}
fn after() -> String {
    "after".into()
}
fn open() -> String {
    "open".into()
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

impl WebhookSection {
    /// The checked endpoint.
    pub fn endpoint(&self) -> anyhow::Result<herald_ingest::webhooks::Endpoint> {
        use herald_ingest::webhooks::{Endpoint, Mode, OnFailure};
        use herald_protocol::webhook::EventKind;
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bail!("webhooks: name {n:?} must be 1 to 64 letters, digits, _ or -");
        }
        let url: http::Uri = self
            .url
            .parse()
            .map_err(|e| anyhow!("webhooks.{n}.url {:?}: {e}", self.url))?;
        if url.scheme_str() != Some("http") || url.host().is_none() {
            bail!(
                "webhooks.{n}.url {:?} must be http://host[:port]/path (herald speaks plain HTTP to webhooks: put a TLS proxy beside it for https; docs/backend.md)",
                self.url
            );
        }
        let channels = self
            .channels
            .iter()
            .map(|p| Pattern::new(p).map_err(|e| anyhow!("webhooks.{n}.channels {p:?}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let events = self
            .events
            .iter()
            .map(|e| {
                EventKind::parse(e).ok_or_else(|| {
                    anyhow!("webhooks.{n}.events: {e:?} is not publish, join, leave, connect or disconnect")
                })
            })
            .collect::<anyhow::Result<std::collections::BTreeSet<_>>>()?;
        if events.is_empty() {
            bail!("webhooks.{n}.events is empty");
        }
        let secrets = match &self.secret {
            SecretList::One(s) => vec![s.clone()],
            SecretList::Many(v) => v.clone(),
        };
        if secrets.is_empty() || secrets.iter().any(String::is_empty) {
            bail!("webhooks.{n}.secret must be set and not empty");
        }
        let mode = match self.mode.as_str() {
            "after" => Mode::After,
            "before" => Mode::Before,
            other => bail!("webhooks.{n}.mode {other:?} must be after or before"),
        };
        let on_failure = match self.on_failure.as_str() {
            "open" => OnFailure::Open,
            "closed" => OnFailure::Closed,
            other => bail!("webhooks.{n}.on_failure {other:?} must be open or closed"),
        };
        let timeout = match mode {
            Mode::After => self.timeout.unwrap_or(Duration::from_secs(5)),
            Mode::Before => self.timeout.unwrap_or(Duration::from_secs(1)),
        };
        if timeout.is_zero() {
            bail!("webhooks.{n}.timeout must be greater than 0");
        }
        if mode == Mode::Before {
            // A gateway gives ingest 3 s per publish attempt.
            if timeout > Duration::from_millis(2500) {
                bail!(
                    "webhooks.{n}.timeout of a before hook is at most 2.5s (a gateway waits 3 s for a publish)"
                );
            }
            if events.iter().any(|e| *e != EventKind::Publish) {
                bail!("webhooks.{n}: a before hook takes the publish event only");
            }
        }
        if self.concurrency == 0 || self.max_attempts == 0 || self.max_pending == 0 {
            bail!("webhooks.{n}: concurrency, max_attempts and max_pending must be at least 1");
        }
        Ok(Endpoint {
            name: n.clone(),
            url,
            channels,
            events,
            secrets,
            timeout,
            concurrency: self.concurrency,
            max_attempts: self.max_attempts,
            max_age: self.max_age,
            max_pending: self.max_pending,
            mode,
            on_failure,
        })
    }
}

/// `[presence]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSection {
    /// Expiry of a dead gateway's entries.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
}

impl Default for PresenceSection {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
        }
    }
}

/// Parses `30`, `"30"`, `"500ms"`, `"5s"`, `"10m"`, `"24h"`, `"7d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected e.g. 30, \"500ms\", \"5s\", \"1h\"")
    })?;
    let mult = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        u => {
            return Err(format!(
                "invalid duration unit {u:?} in {s:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(n * mult).map_err(|_| format!("invalid duration {s:?}"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Float(f64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(Duration::from_secs(n)),
        Raw::Float(f) => Duration::try_from_secs_f64(f).map_err(serde::de::Error::custom),
        Raw::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

/// Turns an environment or flag string into a TOML value: numbers and
/// booleans as such, everything else as a string. `channel_caps` takes
/// `'chat_*=50,room_*=10'`.
fn scalar(key: &str, v: &str) -> anyhow::Result<toml::Value> {
    if key == "allowed_origins" {
        let list = v
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| toml::Value::String(o.to_owned()))
            .collect();
        return Ok(toml::Value::Array(list));
    }
    if key == "channel_caps" {
        let mut t = toml::Table::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (p, n) = part
                .split_once('=')
                .ok_or_else(|| anyhow!("channel_caps entry {part:?} must be PATTERN=N"))?;
            let n: i64 = n
                .trim()
                .parse()
                .map_err(|_| anyhow!("channel_caps entry {part:?}: {n:?} is not a number"))?;
            t.insert(p.trim().to_owned(), toml::Value::Integer(n));
        }
        return Ok(toml::Value::Table(t));
    }
    // Keys whose type is text stay text even when they look like a number
    // (`--jwt-secret 123456`, `--node-id 1`); durations accept text too.
    const TEXT: &[&str] = &[
        "listen",
        "admin_listen",
        "redis_url",
        "database_url",
        "ingest_url",
        "node_id",
        "jwt_secret",
        "api_key",
        "log_format",
        "prefix",
        "audience",
        "issuer",
        "url",
        "secret",
        "name",
        "mode",
        "on_failure",
    ];
    if TEXT.contains(&key) {
        return Ok(toml::Value::String(v.to_owned()));
    }
    if let Ok(i) = v.parse::<i64>() {
        return Ok(toml::Value::Integer(i));
    }
    if let Ok(b) = v.parse::<bool>() {
        return Ok(toml::Value::Boolean(b));
    }
    Ok(toml::Value::String(v.to_owned()))
}

/// One override: a dotted key path (`limits.max_queue_bytes`) and its text.
pub type Override = (Vec<String>, String);

fn set(table: &mut toml::Table, path: &[String], v: toml::Value) -> anyhow::Result<()> {
    // `webhooks.<name>.<key>`: the `[[webhooks]]` entry of that name.
    if let [first, name, key] = path
        && first == "webhooks"
    {
        let list = table
            .entry("webhooks")
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .ok_or_else(|| anyhow!("webhooks is not an array of tables"))?;
        let pos = list
            .iter()
            .position(|e| e.get("name").and_then(toml::Value::as_str) == Some(name.as_str()));
        let entry = match pos {
            Some(i) => &mut list[i],
            None => {
                let mut t = toml::Table::new();
                t.insert("name".into(), toml::Value::String(name.clone()));
                list.push(toml::Value::Table(t));
                list.last_mut().context("just pushed")?
            }
        };
        let t = entry
            .as_table_mut()
            .ok_or_else(|| anyhow!("webhooks entry {name} is not a table"))?;
        // A list key given as `a,b` in the environment.
        let v = match (key.as_str(), v) {
            ("channels" | "events" | "secret", toml::Value::String(s)) if s.contains(',') => {
                toml::Value::Array(
                    s.split(',')
                        .map(|p| toml::Value::String(p.trim().to_owned()))
                        .collect(),
                )
            }
            ("channels" | "events", toml::Value::String(s)) => {
                toml::Value::Array(vec![toml::Value::String(s)])
            }
            (_, v) => v,
        };
        t.insert(key.clone(), v);
        return Ok(());
    }
    let (last, parents) = path.split_last().context("empty key")?;
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| anyhow!("{p} is not a table"))?;
    }
    t.insert(last.clone(), v);
    Ok(())
}

/// The overrides found in an environment map: `HERALD_KEY` for top-level
/// keys, `HERALD_SECTION__KEY` for tables. Other `HERALD_*` names are
/// reported so a typo does not pass silently.
pub fn env_overrides(env: &BTreeMap<String, String>) -> (Vec<Override>, Vec<String>) {
    const TOP: &[&str] = &[
        "listen",
        "admin_listen",
        "redis_url",
        "database_url",
        "ingest_url",
        "node_id",
        "jwt_secret",
        "api_key",
        "log_format",
    ];
    const SECTIONS: &[&str] = &[
        "auth", "bus", "store", "limits", "presence", "gateway", "admin", "dev",
    ];
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("HERALD_") else {
            continue;
        };
        // The test harness's own variables, and the binary locator.
        if rest.starts_with("TEST_") || rest == "BIN" || rest == "CONFIG" {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        if let Some(entry) = lower.strip_prefix("webhooks__")
            && let Some((name, key)) = entry.split_once("__")
        {
            out.push((
                vec!["webhooks".into(), name.to_owned(), key.to_owned()],
                v.clone(),
            ));
            continue;
        }
        if let Some((sec, key)) = lower.split_once("__") {
            if SECTIONS.contains(&sec) {
                out.push((vec![sec.to_owned(), key.to_owned()], v.clone()));
                continue;
            }
        } else if TOP.contains(&lower.as_str()) {
            out.push((vec![lower], v.clone()));
            continue;
        }
        unknown.push(k.clone());
    }
    (out, unknown)
}

/// Merges file < environment < flags and checks the result.
pub fn load(file: Option<&str>, env: &[Override], flags: &[Override]) -> anyhow::Result<Config> {
    let mut table: toml::Table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {path}"))?;
            // Parse as the typed config first so an unknown key or bad value
            // is reported with the file's own line.
            toml::from_str::<Config>(&text).map_err(|e| anyhow!("config file {path}: {e}"))?;
            toml::from_str(&text).map_err(|e| anyhow!("config file {path}: {e}"))?
        }
        None => toml::Table::new(),
    };
    for (source, list) in [("environment", env), ("flag", flags)] {
        for (path, v) in list {
            let key = path.last().map(String::as_str).unwrap_or("");
            let value =
                scalar(key, v).with_context(|| format!("{source} value for {}", path.join(".")))?;
            set(&mut table, path, value)?;
        }
    }
    let text = toml::to_string(&table).context("re-encoding the merged configuration")?;
    toml::from_str::<Config>(&text).map_err(|e| {
        anyhow!("invalid configuration (file, HERALD_* environment and flags merged): {e}")
    })
}

impl Config {
    /// What a gateway reports for webhooks: the client events (join,
    /// leave, connect, disconnect) the after-commit endpoints want.
    pub fn webhook_event_filters(
        &self,
    ) -> anyhow::Result<Vec<herald_gateway::events::EventFilter>> {
        Ok(self
            .webhooks()?
            .into_iter()
            .filter(|e| e.mode == herald_ingest::webhooks::Mode::After)
            .map(|e| herald_gateway::events::EventFilter {
                kinds: e.events,
                channels: e.channels,
            })
            .collect())
    }

    /// `[[webhooks]]`, checked (names unique).
    pub fn webhooks(&self) -> anyhow::Result<Vec<herald_ingest::webhooks::Endpoint>> {
        let mut out: Vec<herald_ingest::webhooks::Endpoint> = Vec::new();
        for w in &self.webhooks {
            let e = w.endpoint()?;
            if out.iter().any(|o| o.name == e.name) {
                bail!("webhooks: two entries are named {:?}", e.name);
            }
            out.push(e);
        }
        Ok(out)
    }

    /// `[gateway] allowed_origins`, checked.
    pub fn allowed_origins(&self) -> anyhow::Result<herald_gateway::AllowedOrigins> {
        herald_gateway::AllowedOrigins::new(&self.gateway.allowed_origins)
            .map_err(|e| anyhow!("gateway.allowed_origins: {e}"))
    }

    /// The gateway limits, checked.
    pub fn gateway_limits(&self) -> anyhow::Result<herald_gateway::Limits> {
        let l = &self.limits;
        let mut caps = Vec::new();
        for (p, n) in &l.channel_caps {
            let pat =
                Pattern::new(p).map_err(|e| anyhow!("limits.channel_caps: pattern {p:?}: {e}"))?;
            caps.push((pat, *n));
        }
        let positive = |name: &str, v: u64| -> anyhow::Result<()> {
            if v == 0 {
                bail!("limits.{name} must be greater than 0");
            }
            Ok(())
        };
        positive("max_frame_bytes", l.max_frame_bytes as u64)?;
        positive("max_data_bytes", l.max_data_bytes as u64)?;
        positive("max_queue_bytes", l.max_queue_bytes as u64)?;
        positive("rate_per_second", u64::from(l.rate_per_second))?;
        positive("rate_burst", u64::from(l.rate_burst))?;
        if self.bus.catchup_interval.is_zero() {
            bail!("bus.catchup_interval must be greater than 0");
        }
        if self.gateway.handshake_timeout.is_zero() {
            bail!("gateway.handshake_timeout must be greater than 0");
        }
        if self.presence.ttl.is_zero() {
            bail!("presence.ttl must be greater than 0");
        }
        if l.heartbeat_interval.is_zero() || l.heartbeat_timeout <= l.heartbeat_interval {
            bail!(
                "limits.heartbeat_timeout must be longer than limits.heartbeat_interval, which must be > 0"
            );
        }
        Ok(herald_gateway::Limits {
            heartbeat_interval: l.heartbeat_interval,
            heartbeat_timeout: l.heartbeat_timeout,
            max_frame_bytes: l.max_frame_bytes,
            max_data_bytes: l.max_data_bytes,
            max_queue_bytes: l.max_queue_bytes,
            max_connections: l.max_connections,
            max_connections_per_user: l.max_connections_per_user,
            rate_per_second: l.rate_per_second,
            rate_burst: l.rate_burst,
            drain_window: l.drain_window,
            max_replay: l.max_replay,
            channel_caps: caps,
            max_subscriptions_per_connection: l.max_subscriptions_per_connection,
        })
    }

    /// The routes, checked.
    pub fn gateway_routes(&self) -> anyhow::Result<Vec<herald_gateway::Route>> {
        self.routes
            .iter()
            .map(|r| {
                herald_gateway::Route::new(&r.path, &r.channels).map_err(|e| anyhow!("routes: {e}"))
            })
            .collect()
    }

    /// The auth settings.
    pub fn auth_config(&self) -> herald_auth::AuthConfig {
        herald_auth::AuthConfig {
            secret: self.jwt_secret.clone(),
            keys: self.auth.keys.clone(),
            leeway: self.auth.leeway,
            audience: self.auth.audience.clone(),
            issuer: self.auth.issuer.clone(),
            require_exp: self.auth.require_exp,
        }
    }

    /// The store settings.
    pub fn store_config(&self) -> herald_store::StoreConfig {
        herald_store::StoreConfig {
            idempotency_window: self.store.idempotency_window,
            retention_max_messages: self.store.retention_max_messages,
            retention_max_age: self.store.retention_max_age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ov(path: &str, v: &str) -> Override {
        (path.split('.').map(str::to_owned).collect(), v.to_owned())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn precedence_file_env_flag() {
        let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[limits]\nmax_data_bytes = 100\nmax_queue_bytes = 100\nrate_burst = 7\n",
        )
        .unwrap();
        let env = vec![
            ov("limits.max_data_bytes", "200"),
            ov("limits.max_queue_bytes", "200"),
        ];
        let flags = vec![ov("limits.max_data_bytes", "300")];
        let c = load(f.to_str(), &env, &flags).unwrap();
        assert_eq!(c.limits.max_data_bytes, 300);
        assert_eq!(c.limits.max_queue_bytes, 200);
        assert_eq!(c.limits.rate_burst, 7);
        assert_eq!(c.limits.max_frame_bytes, 65536);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_and_bad_values_are_named() {
        let e = load(None, &[ov("limits.max_qeue_bytes", "1")], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("max_qeue_bytes"), "{e:#}");
        let e = load(None, &[], &[ov("limits.max_queue_bytes", "lots")]).unwrap_err();
        assert!(format!("{e:#}").contains("max_queue_bytes"), "{e:#}");
        let e = load(None, &[], &[ov("bus.catchup_interval", "5 parsecs")]).unwrap_err();
        assert!(format!("{e:#}").contains("catchup_interval"), "{e:#}");
    }

    #[test]
    fn text_keys_stay_text() {
        let c = load(
            None,
            &[ov("jwt_secret", "123456")],
            &[ov("node_id", "1"), ov("api_key", "true")],
        )
        .unwrap();
        assert_eq!(c.jwt_secret.as_deref(), Some("123456"));
        assert_eq!(c.node_id.as_deref(), Some("1"));
        assert_eq!(c.api_key.as_deref(), Some("true"));
        let e = load(None, &[], &[ov("bus.catchup_interval", "0")])
            .unwrap()
            .gateway_limits()
            .unwrap_err();
        assert!(format!("{e:#}").contains("catchup_interval"), "{e:#}");
    }

    #[test]
    fn admin_ui_is_off_unless_asked() {
        assert!(!load(None, &[], &[]).unwrap().admin.ui);
        assert!(load(None, &[ov("admin.ui", "true")], &[]).unwrap().admin.ui);
        let c = load(None, &[ov("admin.ui", "true")], &[ov("admin.ui", "false")]).unwrap();
        assert!(!c.admin.ui);
        let e = load(None, &[ov("admin.ui", "yes please")], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("ui"), "{e:#}");
    }

    #[test]
    fn dev_bot_is_on_unless_turned_off() {
        assert!(load(None, &[], &[]).unwrap().dev.bot);
        let env: BTreeMap<String, String> = [("HERALD_DEV__BOT".to_owned(), "false".to_owned())]
            .into_iter()
            .collect();
        let (o, unknown) = env_overrides(&env);
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(!load(None, &o, &[]).unwrap().dev.bot);
        let e = load(None, &[ov("dev.bott", "false")], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("bott"), "{e:#}");
    }

    #[test]
    fn env_names() {
        let env: BTreeMap<String, String> = [
            ("HERALD_LIMITS__MAX_QUEUE_BYTES", "5"),
            ("HERALD_LISTEN", "1.2.3.4:5"),
            ("HERALD_TEST_DATABASE_URL", "x"),
            ("HERALD_LIMIT__TYPO", "1"),
            ("HERALD_ADMIN__UI", "true"),
            ("HERALD_ADMIN_LISTEN", "127.0.0.1:9"),
            ("PATH", "/bin"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        let (o, unknown) = env_overrides(&env);
        assert!(o.contains(&ov("limits.max_queue_bytes", "5")));
        assert!(o.contains(&ov("admin.ui", "true")));
        assert!(o.contains(&ov("admin_listen", "127.0.0.1:9")));
        assert!(o.contains(&ov("listen", "1.2.3.4:5")));
        assert_eq!(unknown, vec!["HERALD_LIMIT__TYPO".to_owned()]);
        let caps = load(
            None,
            &[ov("limits.channel_caps", "chat_*=50,room_*=10")],
            &[],
        )
        .unwrap();
        assert_eq!(caps.limits.channel_caps["chat_*"], 50);
    }
}
