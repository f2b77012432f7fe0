//! Ingest: the HTTP API for application backends (PROTOCOL.md section 8) and
//! the publish pipeline: commit to the store, then publish on the bus, then
//! answer (DESIGN.md guarantee 1).
//!
//! # Layout
//! - `lib.rs`: [`IngestService`] (publish, signal, history, presence,
//!   positions) and [`IngestError`].
//! - [`http`]: the `/v1/*` routes, JSON bodies and error format.
//! - [`metrics`]: metric names.
//! - [`webhooks`]: the application's endpoints: the outbox workers and the
//!   before-commit hook.
//! - `publisher.rs`: the store's commit sink: each committed batch's
//!   messages published in one bus call (one Redis pipeline), in seq order
//!   per channel, before their publishers are answered.
//!
//! Nothing is published for a message that was not committed; a bus failure
//! after the commit still answers 200, and gateways' catch-up delivers it.

pub mod http;
pub mod metrics;
mod publisher;
pub mod webhooks;

#[cfg(test)]
mod fuzz;

use herald_bus::{Bus, Presence};
use herald_protocol::api::HistoryPage;
use herald_protocol::bus::Envelope;
use herald_protocol::server::{ClientInfo, Message};
use herald_protocol::{ChannelName, ErrorCode, JsonData};
use herald_store::{AppendRequest, Appended, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ingest settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The bearer key of the API (also what gateways send).
    pub api_key: String,
    /// Largest `data` as JSON text (PROTOCOL.md section 7, 16 KiB).
    pub max_data_bytes: usize,
    /// Most channels in one publish (herald's knob, 100).
    pub max_publish_channels: usize,
    /// How often retention and expired idempotency keys are pruned (60 s).
    pub prune_interval: Duration,
    /// `[[webhooks]]` (none by default).
    pub webhooks: Vec<webhooks::Endpoint>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            max_data_bytes: 16384,
            max_publish_channels: 100,
            prune_interval: Duration::from_secs(60),
            webhooks: Vec::new(),
        }
    }
}

/// A failed ingest operation, with its PROTOCOL.md code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct IngestError {
    /// Code (and so HTTP status).
    pub code: ErrorCode,
    /// Detail for the caller.
    pub message: String,
}

impl IngestError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::new(
                ErrorCode::Conflict,
                "idempotency key reused with other channels or data",
            ),
            StoreError::Unavailable(ref cause) => {
                tracing::warn!(error = %cause, "store unavailable");
                Self::new(ErrorCode::Unavailable, "store unavailable; retry")
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

/// A publish, from the HTTP API or a gateway.
#[derive(Debug, Clone)]
pub struct PublishInput {
    /// Distinct channels, at least one.
    pub channels: Vec<ChannelName>,
    /// Payload.
    pub data: JsonData,
    /// Idempotency key.
    pub key: Option<String>,
    /// Shown as `from`.
    pub from: Option<String>,
    /// Idempotency scope: `api:<owner>` or `sub:<sub>`.
    pub publisher: String,
}

/// Longest the bus publishes of one committed message may take, all
/// channels together (one bus call for its whole commit batch, or
/// concurrent publishes for a republished duplicate), counted from the
/// commit. Past it the answer goes out anyway: the message is committed,
/// and the gateways' catch-up delivers it (PROTOCOL.md section 9).
pub const BUS_PUBLISH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Commits a publish, then publishes it on the bus (see
/// [`IngestService::publish`], which runs this in its own task).
///
/// With `handed_off` (the store routes stored appends through the
/// publisher, `publisher.rs`), a stored message was published (or given
/// up on) by the publisher before `append` returned: only a duplicate is
/// published here. Otherwise every result is published here.
async fn commit_and_publish(
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    input: PublishInput,
    outbox: Vec<herald_store::OutboxTarget>,
    handed_off: bool,
) -> Result<Appended, IngestError> {
    let started = Instant::now();
    let id = format!("m_{}", uuid::Uuid::now_v7().simple());
    let ts = herald_protocol::now_ms();
    let req = AppendRequest {
        outbox,
        channels: input.channels,
        data: input.data.clone(),
        from: input.from.clone(),
        publisher: input.publisher,
        key: input.key,
        id,
        ts,
    };
    let result = store.append(req).await;
    let published = handed_off && matches!(&result, Ok(a) if !a.duplicate);
    if !published {
        // The publisher records the commit time of what it was handed.
        metrics::publish_duration().record(started.elapsed().as_secs_f64());
    }
    let appended = match result {
        Ok(a) => a,
        Err(e) => {
            metrics::publishes("error").increment(1);
            return Err(e.into());
        }
    };
    metrics::publishes(if appended.duplicate {
        "duplicate"
    } else {
        "ok"
    })
    .increment(1);
    if !appended.duplicate {
        metrics::messages_published().increment(appended.seqs.len() as u64);
    }
    if !published {
        publish_committed(bus, store, appended.clone(), input.from, input.data).await;
    }
    Ok(appended)
}

/// Publishes a committed message on the bus, every channel at once under
/// [`BUS_PUBLISH_DEADLINE`]: a duplicate, or any message of a store without
/// the commit hand-off.
///
/// A duplicate (an idempotency key seen before) is published again, from
/// the stored message: the retry may be the publisher's answer to a first
/// attempt whose bus publish failed or was cut off, and gateways drop a seq
/// they already delivered (DESIGN.md guarantee 2).
async fn publish_committed(
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    appended: Appended,
    from: Option<String>,
    data: JsonData,
) {
    let one = |ch: ChannelName, seq: u64| {
        let bus = bus.clone();
        let store = store.clone();
        let from = from.clone();
        let data = data.clone();
        let id = appended.id.clone();
        let ts = appended.ts;
        let duplicate = appended.duplicate;
        async move {
            let env = if duplicate {
                // What is stored, not what the retry says (`from` is not
                // part of the key's fingerprint).
                let page = match store.history(&ch, seq.saturating_sub(1), 1).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, channel = %ch, msg_id = %id, "reading a duplicate back for republish failed");
                        return;
                    }
                };
                match page
                    .messages
                    .into_iter()
                    .find(|m| m.seq == seq && m.id == id)
                {
                    Some(m) => Envelope::message(ch.clone(), seq, m.id, m.ts, m.from, &m.data),
                    // Pruned by retention meanwhile: nothing to repair.
                    None => return,
                }
            } else {
                Envelope::message(ch.clone(), seq, id.clone(), ts, from, &data)
            };
            // Committed already: a failed bus publish is repaired by the
            // gateways' catch-up (PROTOCOL.md section 9).
            if let Err(e) = bus.publish(&env).await {
                metrics::bus_publish_failures().increment(1);
                tracing::warn!(error = %e, channel = %ch, msg_id = %id, "bus publish failed after commit");
            }
        }
    };
    let all =
        futures_util::future::join_all(appended.seqs.iter().map(|(ch, seq)| one(ch.clone(), *seq)));
    if tokio::time::timeout(BUS_PUBLISH_DEADLINE, all)
        .await
        .is_err()
    {
        metrics::bus_publish_failures().increment(1);
        tracing::warn!(msg_id = %appended.id, channels = appended.seqs.len(), "bus publish deadline passed after commit");
    }
}

/// The ingest service.
pub struct IngestService {
    cfg: IngestConfig,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    webhooks: Arc<webhooks::Webhooks>,
    /// The store hands every stored message to the publisher
    /// (`publisher.rs`), which publishes it before the append returns.
    handed_off: bool,
}

impl IngestService {
    /// Builds the service, makes its publisher the store's commit sink
    /// (one per store: a second service on the same store takes it over)
    /// and starts its prune loop.
    pub fn new(
        cfg: IngestConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        presence: Arc<dyn Presence>,
    ) -> Arc<Self> {
        // Every series exists from the start (zero until the first publish).
        metrics::register_all();
        let webhooks = Arc::new(webhooks::Webhooks::new(
            cfg.webhooks.clone(),
            cfg.max_data_bytes,
        ));
        webhooks.start(store.clone(), "ingest");
        let handed_off = store.set_commit_sink(publisher::Publisher::spawn(bus.clone()));
        let svc = Arc::new(Self {
            cfg,
            store,
            bus,
            presence,
            webhooks,
            handed_off,
        });
        let weak = Arc::downgrade(&svc);
        let every = svc.cfg.prune_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(svc) = weak.upgrade() else { return };
                match svc.store.prune(herald_protocol::now_ms()).await {
                    Ok(n) if n > 0 => tracing::debug!(deleted = n, "retention pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention prune failed"),
                }
            }
        });
        svc
    }

    /// The configuration.
    pub fn config(&self) -> &IngestConfig {
        &self.cfg
    }

    /// The webhook endpoints.
    pub fn webhooks(&self) -> &Arc<webhooks::Webhooks> {
        &self.webhooks
    }

    /// Commits a message, then publishes it on the bus, then returns.
    ///
    /// A client's publish (publisher `sub:...`, forwarded by a gateway)
    /// first goes through the `before` webhooks, which may reject or
    /// rewrite it, and is committed with a `publish` event for each
    /// after-commit endpoint that wants it. API publishes send no events:
    /// the backend made them.
    pub async fn publish(&self, mut input: PublishInput) -> Result<Appended, IngestError> {
        if input.data.len() > self.cfg.max_data_bytes {
            return Err(IngestError::new(
                ErrorCode::TooLarge,
                format!("data is larger than {} bytes", self.cfg.max_data_bytes),
            ));
        }
        let mut outbox = Vec::new();
        if input.publisher.starts_with("sub:") && !self.webhooks.is_empty() {
            match self
                .webhooks
                .before_publish(&input.channels, input.data.clone(), input.from.as_deref())
                .await?
            {
                webhooks::BeforeVerdict::Reject(reason) => {
                    return Err(IngestError::new(ErrorCode::Forbidden, reason));
                }
                webhooks::BeforeVerdict::Accept(Some(data)) => input.data = data,
                webhooks::BeforeVerdict::Accept(None) => {}
            }
            outbox = self.webhooks.publish_targets(&input.channels);
        }
        let wake: Vec<String> = outbox.iter().map(|t| t.endpoint.clone()).collect();
        // Commit and publish run in their own task, and this future only
        // waits for it: a caller that hangs up (hyper then drops this
        // future) cancels neither the commit in flight nor the bus publish
        // after it, or a committed message would reach subscribers only
        // through the gateways' catch-up. The answer still waits for both,
        // so a publisher that reads its answer knows the bus has the
        // message.
        let task = tokio::spawn(commit_and_publish(
            self.store.clone(),
            self.bus.clone(),
            input,
            outbox,
            self.handed_off,
        ));
        match task.await {
            Ok(r) => {
                if r.as_ref().is_ok_and(|a| !a.duplicate) {
                    self.webhooks.wake(wake.iter().map(String::as_str));
                }
                r
            }
            Err(e) => {
                tracing::error!(error = %e, "publish task failed");
                Err(IngestError::new(ErrorCode::Internal, "internal error"))
            }
        }
    }

    /// Stores the webhook deliveries of gateways' client events (join,
    /// leave, connect, disconnect) for the endpoints that want them;
    /// returns how many were stored (an event already pending for an
    /// endpoint is stored once).
    pub async fn events(
        &self,
        events: &[herald_protocol::webhook::GatewayEvent],
    ) -> Result<u64, IngestError> {
        let items = self.webhooks.gateway_items(events);
        if items.is_empty() {
            return Ok(0);
        }
        let names: std::collections::BTreeSet<String> =
            items.iter().map(|i| i.endpoint.clone()).collect();
        let n = self.store.enqueue(items).await?;
        self.webhooks.wake(names.iter().map(String::as_str));
        Ok(n)
    }

    /// Fans a signal out on the bus; never stored (DESIGN.md guarantee 7).
    pub async fn signal(
        &self,
        channel: ChannelName,
        data: JsonData,
        from: Option<String>,
    ) -> Result<(), IngestError> {
        if data.len() > self.cfg.max_data_bytes {
            return Err(IngestError::new(
                ErrorCode::TooLarge,
                format!("data is larger than {} bytes", self.cfg.max_data_bytes),
            ));
        }
        self.bus
            .publish(&Envelope::signal(channel, from, &data))
            .await
            .map_err(|e| IngestError::new(ErrorCode::Unavailable, format!("bus unavailable: {e}")))
    }

    /// One page of history.
    pub async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, IngestError> {
        let h = self.store.history(channel, after, limit).await?;
        Ok(HistoryPage {
            messages: h
                .messages
                .into_iter()
                .map(|m| Message {
                    kind: None,
                    channel: m.channel,
                    seq: m.seq,
                    id: m.id,
                    ts: m.ts,
                    from: m.from,
                    data: m.data,
                })
                .collect(),
            last_seq: h.last_seq,
        })
    }

    /// Last seq of each channel.
    pub async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, IngestError> {
        Ok(self.store.positions(channels).await?)
    }

    /// Clients on a channel now.
    pub async fn presence(&self, channel: &ChannelName) -> Result<Vec<ClientInfo>, IngestError> {
        self.presence.list(channel).await.map_err(|e| {
            IngestError::new(ErrorCode::Unavailable, format!("presence unavailable: {e}"))
        })
    }

    /// Readiness: the store and the bus answer.
    pub async fn ready(&self) -> bool {
        let store = tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await;
        let bus = tokio::time::timeout(Duration::from_secs(2), self.bus.ping()).await;
        matches!(store, Ok(Ok(()))) && matches!(bus, Ok(Ok(())))
    }
}
