//! `herald dev`: gateway + ingest in one process with the in-process bus,
//! SQLite, the demo page and a printed token, for a laptop.
//!
//! # Layout
//! - this file: [`InProcessIngest`], the gateway's ingest served in-process;
//!   it hands each client publish to the demo's stand-in backend.
//! - [`scenario`]: the demo's websites, operators and per-role grants.
//! - [`backend`]: the stand-in for the application's backend (dashboard
//!   routing, the bot and its handoff, DM copies). Not herald: an app does
//!   this itself, e.g. through webhooks; `herald dev --no-bot` turns the bot
//!   off.
//! - [`demo`]: the demo's HTTP routes (the page, the SDK bundle, the
//!   stand-in token and history endpoints).

pub mod backend;
pub mod demo;
pub mod scenario;

use async_trait::async_trait;
use herald_gateway::{ApiPublish, Ingest, IngestError, PublishCall};
use herald_ingest::{IngestService, PublishInput};
use herald_protocol::ChannelName;
use herald_protocol::api::{HistoryPage, PublishAnswer};
use herald_protocol::server::PublishResult;
use std::sync::Arc;

/// The gateway's [`Ingest`] served in-process by the ingest service.
pub struct InProcessIngest {
    /// The ingest service of this process.
    pub ingest: Arc<IngestService>,
    /// The demo's stand-in backend, told of every committed client publish.
    pub backend: Option<backend::Hook>,
}

fn map(e: herald_ingest::IngestError) -> IngestError {
    IngestError {
        code: e.code,
        message: e.message,
    }
}

#[async_trait]
impl Ingest for InProcessIngest {
    async fn publish(&self, call: PublishCall) -> Result<PublishResult, IngestError> {
        let channel = call.channel.clone();
        let data = call.data.clone(); // shared bytes, for the backend
        let a = self
            .ingest
            .publish(PublishInput {
                channels: vec![call.channel],
                data: call.data,
                key: call.key,
                from: Some(call.publisher.clone()),
                // WebSocket publishers' keys are scoped to their sub
                // (PROTOCOL.md section 8), apart from the API's.
                publisher: format!("sub:{}", call.publisher),
            })
            .await
            .map_err(map)?;
        let seq = a
            .seqs
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, s)| *s)
            .ok_or_else(|| IngestError::unavailable("store returned no seq"))?;
        if let Some(hook) = &self.backend {
            // After the commit, as a webhook would be: never waits.
            hook.notify(backend::Event {
                channel,
                id: a.id.clone(),
                seq,
                from: call.publisher,
                data,
            });
        }
        Ok(PublishResult {
            id: a.id,
            seq,
            ts: a.ts,
        })
    }

    async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, IngestError> {
        self.ingest
            .history(channel, after, limit)
            .await
            .map_err(map)
    }

    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, IngestError> {
        self.ingest.positions(channels).await.map_err(map)
    }

    async fn events(
        &self,
        events: &[herald_protocol::webhook::GatewayEvent],
    ) -> Result<(), IngestError> {
        self.ingest.events(events).await.map(drop).map_err(map)
    }

    async fn publish_api(&self, p: ApiPublish) -> Result<PublishAnswer, IngestError> {
        let a = self
            .ingest
            .publish(PublishInput {
                channels: p.channels,
                data: p.data,
                key: p.key,
                from: None,
                publisher: herald_ingest::http::API_PUBLISHER.to_owned(),
            })
            .await
            .map_err(map)?;
        Ok(PublishAnswer {
            id: a.id,
            ts: a.ts,
            seqs: a
                .seqs
                .into_iter()
                .map(|(c, s)| (c.as_str().to_owned(), s))
                .collect(),
        })
    }
}
