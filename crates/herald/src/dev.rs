//! `herald dev`: gateway + ingest in one process with the in-process bus,
//! SQLite, the demo page and a printed token, for a laptop.

use async_trait::async_trait;
use herald_gateway::{ApiPublish, Ingest, IngestError, PublishCall};
use herald_ingest::{IngestService, PublishInput};
use herald_protocol::ChannelName;
use herald_protocol::api::{HistoryPage, PublishAnswer};
use herald_protocol::server::PublishResult;
use std::sync::Arc;

/// The gateway's [`Ingest`] served in-process by the ingest service.
pub struct InProcessIngest(pub Arc<IngestService>);

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
        let a = self
            .0
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
        self.0.history(channel, after, limit).await.map_err(map)
    }

    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, IngestError> {
        self.0.positions(channels).await.map_err(map)
    }

    async fn publish_api(&self, p: ApiPublish) -> Result<PublishAnswer, IngestError> {
        let a = self
            .0
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

/// The demo page with its configuration injected.
pub fn demo_page(config_json: &str) -> String {
    include_str!("demo.html").replace("__HERALD_DEMO_CONFIG__", config_json)
}
