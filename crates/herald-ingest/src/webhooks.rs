//! Webhooks: herald tells the application's backend what clients did
//! (docs/backend.md, "Webhooks", is the reference).
//!
//! - **After commit** (`mode = "after"`, the default): a client publish's
//!   `publish` events are outbox rows written in the message's own
//!   transaction ([`Webhooks::publish_targets`] names them); gateways'
//!   join/leave/connect/disconnect events arrive on `POST /v1/events` and
//!   become rows too ([`Webhooks::gateway_items`]). One worker per endpoint
//!   per ingest claims due rows with a lease ([`Store::claim`]), POSTs them
//!   signed, and deletes them on a 2xx or reschedules them with backoff.
//!   Delivery is at least once: a receiver dedups by the event id, which
//!   is the same on every attempt and on every ingest.
//! - **Before commit** (`mode = "before"`): a client publish waits for the
//!   endpoint's answer, which may accept, reject or rewrite it
//!   ([`Webhooks::before_publish`]); on a timeout or failure the publish is
//!   accepted (`on_failure = "open"`) or refused with `unavailable`
//!   (`"closed"`).
//!
//! A dead endpoint never slows publishing: after-commit deliveries run
//! beside it, and an endpoint whose backlog reaches `max_pending` stops
//! getting new rows (counted in `herald_webhook_events_skipped_total`)
//! until it drains.

use crate::{IngestError, metrics};
use bytes::Bytes;
use herald_protocol::webhook::{
    EVENT_ID_HEADER, Event, EventKind, GatewayEvent, SIGNATURE_HEADER, signature_header,
};
use herald_protocol::{ChannelName, ErrorCode, JsonData, Pattern};
use herald_store::{Claimed, OutboxItem, OutboxTarget, Settle, Store};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// How often a worker looks for due rows when nothing woke it (retries
/// become due on their own; other ingests' rows appear unannounced).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the outbox depth is read (gauge and `max_pending`).
pub const DEPTH_INTERVAL: Duration = Duration::from_secs(5);
/// Largest answer body read from an endpoint (the before hook's answer).
const MAX_ANSWER_BYTES: usize = 256 << 10;
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// When an endpoint is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// After commit, from the outbox, at least once.
    After,
    /// Before commit, synchronously, for client publishes.
    Before,
}

/// What a `before` endpoint's failure (timeout, non-2xx, unreadable
/// answer) does to the publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The publish goes through unchanged.
    Open,
    /// The publish is refused with `unavailable` (the client may retry).
    Closed,
}

/// One `[[webhooks]]` entry, checked.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Unique name; outbox rows and logs carry it.
    pub name: String,
    /// `http://host:port/path` (plain HTTP: see docs/backend.md).
    pub url: http::Uri,
    /// Channel patterns; events of other channels are not sent
    /// (connect/disconnect have no channel and ignore them).
    pub channels: Vec<Pattern>,
    /// The events wanted.
    pub events: BTreeSet<EventKind>,
    /// Signing secrets: each gives one `v1=` in the signature header (the
    /// new and the old one during a rotation).
    pub secrets: Vec<String>,
    /// Longest one attempt may take, answer included.
    pub timeout: Duration,
    /// Deliveries in flight at once per ingest.
    pub concurrency: usize,
    /// Attempts before an event is dropped.
    pub max_attempts: u32,
    /// Age after which an undelivered event is dropped.
    pub max_age: Duration,
    /// Backlog at which new events for this endpoint are skipped.
    pub max_pending: u64,
    /// After or before commit.
    pub mode: Mode,
    /// Before mode: what a failure does.
    pub on_failure: OnFailure,
}

impl Endpoint {
    /// Whether this endpoint wants `kind` on `channel`.
    pub fn wants(&self, kind: EventKind, channel: Option<&str>) -> bool {
        if !self.events.contains(&kind) {
            return false;
        }
        match channel {
            Some(ch) => self.channels.iter().any(|p| p.matches(ch)),
            None => !kind.has_channel(),
        }
    }

    /// The delay before attempt `attempts + 1`: exponential from
    /// [`MIN_BACKOFF`] to [`MAX_BACKOFF`], with the upper half jittered
    /// (`jitter` in 0..=1) so a fleet's retries spread out.
    pub fn backoff(attempts: u32, jitter: f64) -> Duration {
        let exp = MIN_BACKOFF.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
        let d = exp.min(MAX_BACKOFF);
        d / 2 + d.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// Why a before hook refused a publish, or could not be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeforeVerdict {
    /// Go on with this data (the original or the rewrite).
    Accept(Option<JsonData>),
    /// Refused: `forbidden` with the endpoint's reason.
    Reject(String),
}

/// The answer body of a `before` endpoint.
#[derive(Debug, serde::Deserialize)]
struct BeforeAnswer {
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
}

/// The configured endpoints and their delivery machinery.
pub struct Webhooks {
    endpoints: Vec<Arc<Endpoint>>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Per endpoint: woken when this ingest stored rows for it.
    wake: HashMap<String, Arc<Notify>>,
    /// Per endpoint: its backlog at the last depth read.
    depth: HashMap<String, AtomicU64>,
    /// Largest `data` a rewrite may produce.
    max_data_bytes: usize,
    /// Ensures the workers start once.
    started: Mutex<bool>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    herald_protocol::now_ms()
}

impl Webhooks {
    /// The endpoints (names must be unique: the config checks it).
    pub fn new(endpoints: Vec<Endpoint>, max_data_bytes: usize) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(conn);
        let wake = endpoints
            .iter()
            .map(|e| (e.name.clone(), Arc::new(Notify::new())))
            .collect();
        let depth = endpoints
            .iter()
            .map(|e| (e.name.clone(), AtomicU64::new(0)))
            .collect();
        Self {
            endpoints: endpoints.into_iter().map(Arc::new).collect(),
            client,
            wake,
            depth,
            max_data_bytes,
            started: Mutex::new(false),
        }
    }

    /// No endpoint configured.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Whether `ep`'s backlog is at its bound (then it gets no new rows).
    fn full(&self, ep: &Endpoint) -> bool {
        self.depth
            .get(&ep.name)
            .is_some_and(|d| d.load(Ordering::Relaxed) >= ep.max_pending)
    }

    /// The outbox targets of a client publish to `channels`: one per
    /// after-commit endpoint that wants `publish` on that channel and is
    /// under its backlog bound.
    pub fn publish_targets(&self, channels: &[ChannelName]) -> Vec<OutboxTarget> {
        let mut out = Vec::new();
        for ep in self.endpoints.iter().filter(|e| e.mode == Mode::After) {
            for ch in channels {
                if ep.wants(EventKind::Publish, Some(ch.as_str())) {
                    if self.full(ep) {
                        metrics::webhook_events_skipped().increment(1);
                        continue;
                    }
                    out.push(OutboxTarget {
                        endpoint: ep.name.clone(),
                        channel: ch.clone(),
                    });
                }
            }
        }
        out
    }

    /// Wakes the workers of the endpoints just given rows.
    pub fn wake<'a>(&self, endpoints: impl IntoIterator<Item = &'a str>) {
        for name in endpoints {
            if let Some(n) = self.wake.get(name) {
                n.notify_one();
            }
        }
    }

    /// The outbox rows of gateway events: one per (event, endpoint that
    /// wants it). The event id is the gateway's, so a batch the gateway
    /// sends twice (its first answer lost) stores each event once.
    pub fn gateway_items(&self, events: &[GatewayEvent]) -> Vec<OutboxItem> {
        let mut out = Vec::new();
        for ev in events {
            for ep in self.endpoints.iter().filter(|e| e.mode == Mode::After) {
                if !ep.wants(ev.kind, ev.channel.as_ref().map(ChannelName::as_str)) {
                    continue;
                }
                if self.full(ep) {
                    metrics::webhook_events_skipped().increment(1);
                    continue;
                }
                let body = Event {
                    id: ev.id.clone(),
                    kind: ev.kind,
                    ts: ev.ts,
                    channel: ev.channel.clone(),
                    message: None,
                    client: Some(ev.client.clone()),
                }
                .to_body();
                out.push(OutboxItem {
                    endpoint: ep.name.clone(),
                    event_id: ev.id.clone(),
                    body,
                });
            }
        }
        out
    }

    /// Asks every `before` endpoint that wants `publish` on one of
    /// `channels`, in config order, about a client publish; a rewrite is
    /// what the next endpoint sees. `message` is the would-be message
    /// (seq 0, id and ts provisional).
    pub async fn before_publish(
        &self,
        channels: &[ChannelName],
        data: JsonData,
        from: Option<&str>,
    ) -> Result<BeforeVerdict, IngestError> {
        let mut data = data;
        let mut rewritten = false;
        for ep in self.endpoints.iter().filter(|e| e.mode == Mode::Before) {
            let Some(ch) = channels
                .iter()
                .find(|c| ep.wants(EventKind::Publish, Some(c.as_str())))
            else {
                continue;
            };
            let msg = herald_protocol::server::Message {
                kind: None,
                channel: ch.clone(),
                seq: 0,
                id: String::new(),
                ts: now_ms(),
                from: from.map(str::to_owned),
                data: data.clone(),
            };
            let mut ev = Event::publish(msg);
            ev.id = format!("ev_{}", uuid::Uuid::now_v7().simple());
            let body = ev.to_body();
            let started = Instant::now();
            let answer = self.post(ep, &ev.id, body).await;
            metrics::webhook_duration().record(started.elapsed().as_secs_f64());
            let failure = match answer {
                Ok((status, bytes)) if status.is_success() => {
                    match parse_before(&bytes, self.max_data_bytes) {
                        Ok(BeforeVerdict::Reject(reason)) => {
                            metrics::webhook_before("reject").increment(1);
                            return Ok(BeforeVerdict::Reject(reason));
                        }
                        Ok(BeforeVerdict::Accept(Some(new))) => {
                            metrics::webhook_before("rewrite").increment(1);
                            data = new;
                            rewritten = true;
                            continue;
                        }
                        Ok(BeforeVerdict::Accept(None)) => {
                            metrics::webhook_before("accept").increment(1);
                            continue;
                        }
                        Err(why) => why,
                    }
                }
                Ok((status, _)) => format!("answered {status}"),
                Err(why) => why,
            };
            match ep.on_failure {
                OnFailure::Open => {
                    metrics::webhook_before("fail_open").increment(1);
                    tracing::warn!(endpoint = %ep.name, error = %failure,
                        "before hook failed; publish accepted (on_failure = open)");
                }
                OnFailure::Closed => {
                    metrics::webhook_before("fail_closed").increment(1);
                    tracing::warn!(endpoint = %ep.name, error = %failure,
                        "before hook failed; publish refused (on_failure = closed)");
                    return Err(IngestError::new(
                        ErrorCode::Unavailable,
                        format!("webhook {} did not answer; retry", ep.name),
                    ));
                }
            }
        }
        Ok(BeforeVerdict::Accept(rewritten.then_some(data)))
    }

    /// One signed POST of `body` to `ep`, bounded by its timeout (answer
    /// included): the status and the answer's bytes, or why it failed.
    async fn post(
        &self,
        ep: &Endpoint,
        event_id: &str,
        body: String,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let t = now_ms() / 1000;
        let sig = signature_header(&ep.secrets, t, body.as_bytes());
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(ep.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "herald-webhooks/1")
            .header(SIGNATURE_HEADER, sig)
            .header(EVENT_ID_HEADER, event_id)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request: {e}"))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("unreachable: {e}"))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, bytes))
        };
        match tokio::time::timeout(ep.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {:?}", ep.timeout)),
        }
    }

    /// Starts, once, one delivery worker per after-commit endpoint and the
    /// depth reader. They run for the life of the runtime.
    pub fn start(self: &Arc<Self>, store: Arc<dyn Store>, node: &str) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if *started || self.is_empty() {
            return;
        }
        *started = true;
        for ep in self.endpoints.iter().filter(|e| e.mode == Mode::After) {
            let owner = format!("{node}/{}", uuid::Uuid::now_v7().simple());
            tokio::spawn(worker(self.clone(), ep.clone(), store.clone(), owner));
        }
        tokio::spawn(depth_reader(Arc::downgrade(self), store));
    }

    /// Delivers one claimed row and settles it.
    async fn deliver(&self, ep: &Endpoint, store: &dyn Store, owner: &str, row: Claimed) {
        let started = Instant::now();
        let result = self.post(ep, &row.event_id, row.body).await;
        metrics::webhook_duration().record(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok((status, _)) if status.is_success() => {
                metrics::webhook_deliveries("ok").increment(1);
                Settle::Done
            }
            other => {
                let (kind, why) = match other {
                    Ok((status, _)) => ("failed", format!("answered {status}")),
                    Err(why) if why.starts_with("timed out") => ("timeout", why),
                    Err(why) => ("failed", why),
                };
                let attempts = row.attempts.saturating_add(1);
                let age = now_ms().saturating_sub(row.created_ms);
                let too_old = u128::try_from(age).unwrap_or(0) >= ep.max_age.as_millis();
                if attempts >= ep.max_attempts || too_old {
                    metrics::webhook_deliveries("dropped").increment(1);
                    tracing::error!(endpoint = %ep.name, event = %row.event_id, attempts,
                        error = %why, "webhook event dropped after its last attempt");
                    Settle::Done
                } else {
                    metrics::webhook_deliveries(kind).increment(1);
                    let delay = Endpoint::backoff(attempts, rand::random::<f64>());
                    let at_ms = now_ms()
                        .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                    tracing::warn!(endpoint = %ep.name, event = %row.event_id, attempts,
                        retry_in = ?delay, error = %why, "webhook delivery failed");
                    Settle::Retry { at_ms, attempts }
                }
            }
        };
        // A settle that fails leaves the lease to run out: the row is
        // delivered again (at least once), never lost.
        match store.settle(row.row, owner, outcome).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(endpoint = %ep.name, event = %row.event_id,
                "webhook lease was lost before settling (a slow attempt); the event may be delivered twice"),
            Err(e) => tracing::warn!(endpoint = %ep.name, event = %row.event_id, error = %e,
                "settling a webhook delivery failed; it will be retried after its lease"),
        }
    }
}

/// Parses a `before` endpoint's 2xx answer: empty or `{}` or
/// `{"action":"accept"}` accepts, `{"action":"reject","reason":..}`
/// rejects, `{"data":..}` (with or without `"action":"accept"`) rewrites.
fn parse_before(bytes: &[u8], max_data_bytes: usize) -> Result<BeforeVerdict, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(BeforeVerdict::Accept(None));
    }
    let a: BeforeAnswer =
        serde_json::from_slice(bytes).map_err(|e| format!("unreadable answer: {e}"))?;
    match a.action.as_deref() {
        Some("reject") => Ok(BeforeVerdict::Reject(
            a.reason
                .unwrap_or_else(|| "rejected by the application".into()),
        )),
        None | Some("accept") => match a.data {
            None => Ok(BeforeVerdict::Accept(None)),
            Some(raw) => {
                let text = raw.get();
                if text.len() > max_data_bytes {
                    return Err(format!(
                        "rewritten data is {} bytes, over max_data_bytes {max_data_bytes}",
                        text.len()
                    ));
                }
                JsonData::from_json_text(Bytes::copy_from_slice(text.as_bytes()))
                    .map(|d| BeforeVerdict::Accept(Some(d)))
                    .map_err(|e| format!("rewritten data: {e}"))
            }
        },
        Some(other) => Err(format!("unknown action {other:?}")),
    }
}

/// Claims and delivers `ep`'s due rows, at most `concurrency` at once.
async fn worker(hooks: Arc<Webhooks>, ep: Arc<Endpoint>, store: Arc<dyn Store>, owner: String) {
    let sem = Arc::new(Semaphore::new(ep.concurrency));
    let wake = hooks.wake.get(&ep.name).cloned().unwrap_or_default();
    // The lease covers one attempt with room to settle it.
    let lease = ep.timeout + Duration::from_secs(10);
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    loop {
        let free = sem.available_permits();
        if free == 0 {
            // Wait for a delivery to end.
            drop(sem.clone().acquire_owned().await);
            continue;
        }
        let limit = u32::try_from(free).unwrap_or(u32::MAX);
        match store
            .claim(&ep.name, limit, now_ms(), lease_ms, &owner)
            .await
        {
            Ok(rows) if !rows.is_empty() => {
                for row in rows {
                    let Ok(permit) = sem.clone().try_acquire_owned() else {
                        break; // cannot happen: at most `free` rows
                    };
                    let (hooks, ep, store, owner) =
                        (hooks.clone(), ep.clone(), store.clone(), owner.clone());
                    tokio::spawn(async move {
                        hooks.deliver(&ep, &*store, &owner, row).await;
                        drop(permit);
                        hooks.wake([ep.name.as_str()]);
                    });
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(endpoint = %ep.name, error = %e, "claiming webhook deliveries failed")
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

/// Reads the outbox depth every [`DEPTH_INTERVAL`]: the gauge, and each
/// endpoint's backlog for `max_pending`.
async fn depth_reader(hooks: std::sync::Weak<Webhooks>, store: Arc<dyn Store>) {
    loop {
        let Some(h) = hooks.upgrade() else { return };
        match store.outbox_depth().await {
            Ok(depths) => {
                let mut total = 0;
                for (name, d) in &h.depth {
                    let n = depths
                        .iter()
                        .find(|x| &x.endpoint == name)
                        .map_or(0, |x| x.pending);
                    d.store(n, Ordering::Relaxed);
                    total += n;
                }
                #[allow(clippy::cast_precision_loss)]
                metrics::webhook_outbox_depth().set(total as f64);
            }
            Err(e) => tracing::warn!(error = %e, "reading the webhook outbox depth failed"),
        }
        drop(h);
        tokio::time::sleep(DEPTH_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(events: &[EventKind], channels: &[&str]) -> Endpoint {
        Endpoint {
            name: "e".into(),
            url: "http://127.0.0.1:1/".parse().unwrap(),
            channels: channels.iter().map(|p| Pattern::new(p).unwrap()).collect(),
            events: events.iter().copied().collect(),
            secrets: vec!["s".into()],
            timeout: Duration::from_secs(1),
            concurrency: 1,
            max_attempts: 3,
            max_age: Duration::from_secs(60),
            max_pending: 10,
            mode: Mode::After,
            on_failure: OnFailure::Open,
        }
    }

    #[test]
    fn endpoints_match_event_and_channel() {
        let e = ep(&[EventKind::Publish, EventKind::Connect], &["chat_*"]);
        assert!(e.wants(EventKind::Publish, Some("chat_1")));
        assert!(!e.wants(EventKind::Publish, Some("dashboard_website_1")));
        assert!(!e.wants(EventKind::Join, Some("chat_1")));
        assert!(e.wants(EventKind::Connect, None));
        assert!(!e.wants(EventKind::Publish, None));
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        assert_eq!(Endpoint::backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(Endpoint::backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(Endpoint::backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(Endpoint::backoff(30, 1.0), MAX_BACKOFF);
        assert_eq!(Endpoint::backoff(30, 0.0), MAX_BACKOFF / 2);
    }

    #[test]
    fn before_answers_parse() {
        assert_eq!(parse_before(b"", 100), Ok(BeforeVerdict::Accept(None)));
        assert_eq!(parse_before(b"{}", 100), Ok(BeforeVerdict::Accept(None)));
        assert_eq!(
            parse_before(br#"{"action":"reject","reason":"spam"}"#, 100),
            Ok(BeforeVerdict::Reject("spam".into()))
        );
        let Ok(BeforeVerdict::Accept(Some(d))) = parse_before(br#"{"data":{"a": 1}}"#, 100) else {
            panic!("rewrite expected");
        };
        assert_eq!(d.to_value(), serde_json::json!({"a": 1}));
        assert!(parse_before(br#"{"data":"xxxxxxxxxx"}"#, 5).is_err());
        assert!(parse_before(br#"{"action":"maybe"}"#, 100).is_err());
        assert!(parse_before(b"not json", 100).is_err());
    }

    #[test]
    fn gateway_events_go_to_the_endpoints_that_want_them() {
        let mut a = ep(&[EventKind::Join], &["chat_*"]);
        a.name = "a".into();
        let mut b = ep(&[EventKind::Connect, EventKind::Join], &["*"]);
        b.name = "b".into();
        let hooks = Webhooks::new(vec![a, b], 100);
        let client = herald_protocol::server::ClientInfo {
            sub: "v".into(),
            conn: "c1".into(),
            info: None,
        };
        let join = GatewayEvent {
            id: "ev_1".into(),
            kind: EventKind::Join,
            ts: 5,
            channel: Some(ChannelName::new("chat_1").unwrap()),
            client: client.clone(),
        };
        let connect = GatewayEvent {
            id: "ev_2".into(),
            kind: EventKind::Connect,
            ts: 6,
            channel: None,
            client,
        };
        let items = hooks.gateway_items(&[join, connect]);
        let got: Vec<(&str, &str)> = items
            .iter()
            .map(|i| (i.endpoint.as_str(), i.event_id.as_str()))
            .collect();
        assert_eq!(got, [("a", "ev_1"), ("b", "ev_1"), ("b", "ev_2")]);
        let v: serde_json::Value = serde_json::from_str(&items[0].body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "ev_1", "type": "join", "ts": 5, "channel": "chat_1",
                "client": {"sub": "v", "conn": "c1"}})
        );
    }
}
