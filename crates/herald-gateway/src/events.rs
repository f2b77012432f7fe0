//! Client events for webhooks (join, leave, connect, disconnect): the
//! gateway reports the ones some endpoint wants to ingest
//! (`POST /v1/events`), which stores them in the webhook outbox.
//!
//! Batched and off the connection's path: [`Events::emit`] never waits. A
//! bounded queue ([`QUEUE`]) holds events while ingest is unreachable; the
//! sender retries a batch (same event ids, so a batch whose answer was
//! lost is stored once) until ingest takes it. When the queue is full the
//! event is dropped and counted (`herald_webhook_events_dropped_total`):
//! presence-style events are best effort past that bound, client
//! publishes never are (they are written with the message).

use crate::ingest::Ingest;
use crate::metrics as m;
use herald_protocol::server::ClientInfo;
use herald_protocol::webhook::{EventKind, GatewayEvent, MAX_EVENTS_PER_BATCH};
use herald_protocol::{ChannelName, Pattern};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events queued while ingest is slow or away.
pub const QUEUE: usize = 10_000;

/// What one webhook endpoint wants (from `[[webhooks]]`).
#[derive(Debug, Clone)]
pub struct EventFilter {
    /// The kinds wanted.
    pub kinds: BTreeSet<EventKind>,
    /// Channel patterns (join and leave).
    pub channels: Vec<Pattern>,
}

impl EventFilter {
    fn wants(&self, kind: EventKind, channel: Option<&ChannelName>) -> bool {
        self.kinds.contains(&kind)
            && channel.is_none_or(|c| self.channels.iter().any(|p| p.matches(c.as_str())))
    }
}

/// The gateway's event reporter.
#[derive(Debug)]
pub struct Events {
    filters: Vec<EventFilter>,
    tx: Option<mpsc::Sender<GatewayEvent>>,
}

impl Events {
    /// A reporter for `filters`; with none, nothing is reported and no
    /// task runs.
    pub fn new(filters: Vec<EventFilter>, ingest: Arc<dyn Ingest>) -> Self {
        let filters: Vec<EventFilter> = filters
            .into_iter()
            .filter(|f| f.kinds.iter().any(|k| *k != EventKind::Publish))
            .collect();
        let tx = (!filters.is_empty()).then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(sender(rx, ingest));
            tx
        });
        Self { filters, tx }
    }

    /// Whether some endpoint wants `kind` events (of any channel).
    pub fn wants_any(&self, kind: EventKind) -> bool {
        self.filters.iter().any(|f| f.kinds.contains(&kind))
    }

    /// Reports `kind` about `client` (on `channel` for join and leave) if
    /// some endpoint wants it. Never waits.
    pub fn emit(&self, kind: EventKind, channel: Option<&ChannelName>, client: &ClientInfo) {
        let Some(tx) = &self.tx else { return };
        if !self.filters.iter().any(|f| f.wants(kind, channel)) {
            return;
        }
        let ev = GatewayEvent {
            id: format!("ev_{}", uuid::Uuid::now_v7().simple()),
            kind,
            ts: herald_protocol::now_ms(),
            channel: channel.cloned(),
            client: client.clone(),
        };
        if tx.try_send(ev).is_err() {
            m::webhook_events_dropped().increment(1);
        }
    }
}

/// Sends queued events in batches, retrying a batch until ingest takes it.
async fn sender(mut rx: mpsc::Receiver<GatewayEvent>, ingest: Arc<dyn Ingest>) {
    let mut batch = Vec::with_capacity(MAX_EVENTS_PER_BATCH);
    while rx.recv_many(&mut batch, MAX_EVENTS_PER_BATCH).await > 0 {
        let mut backoff = Duration::from_millis(100);
        loop {
            match ingest.events(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(events = batch.len(), error = %e.message, retry_in = ?backoff,
                        "reporting client events to ingest failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}
