//! How the gateway reaches ingest: client publishes, history reads for
//! replay and gap repair, and positions for catch-up.
//!
//! The gateway never links the store or the ingest crate: `herald dev` plugs
//! in an in-process implementation, `herald gateway` an HTTP one.

use async_trait::async_trait;
use herald_protocol::api::{HistoryPage, PublishAnswer};
use herald_protocol::server::PublishResult;
use herald_protocol::{ChannelName, ErrorCode, JsonData};

/// A client publish, forwarded to ingest.
#[derive(Debug, Clone)]
pub struct PublishCall {
    /// The channel.
    pub channel: ChannelName,
    /// The payload.
    pub data: JsonData,
    /// Idempotency key, scoped to `publisher`.
    pub key: Option<String>,
    /// The client's `sub`: shown as `from`, and the idempotency scope.
    pub publisher: String,
}

/// An operator's publish (the admin page): one message to one or more
/// channels, in the API key's idempotency scope and without a `from`, as
/// `POST /v1/publish` from an application backend.
#[derive(Debug, Clone)]
pub struct ApiPublish {
    /// Distinct channels, at least one (ingest checks the bound).
    pub channels: Vec<ChannelName>,
    /// The payload.
    pub data: JsonData,
    /// Idempotency key, scoped to the API key's owner.
    pub key: Option<String>,
}

/// A failed ingest call, already mapped to its PROTOCOL.md code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct IngestError {
    /// The code to give the client.
    pub code: ErrorCode,
    /// Detail for the client.
    pub message: String,
}

impl IngestError {
    /// An `unavailable` error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Unavailable,
            message: message.into(),
        }
    }
}

/// The ingest operations a gateway needs.
#[async_trait]
pub trait Ingest: Send + Sync + 'static {
    /// Persists and fans out a client publish.
    async fn publish(&self, call: PublishCall) -> Result<PublishResult, IngestError>;
    /// Messages with seq > `after`, at most `limit`, and the last seq.
    async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, IngestError>;
    /// Each channel's last seq, in the order given (at most 1000).
    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, IngestError>;
    /// Stores client events for webhooks (at most 1000; `POST /v1/events`).
    async fn events(
        &self,
        events: &[herald_protocol::webhook::GatewayEvent],
    ) -> Result<(), IngestError>;
    /// Persists and fans out an operator's publish (the admin page's form).
    /// Default: refused, for an ingest that serves only clients (tests).
    async fn publish_api(&self, publish: ApiPublish) -> Result<PublishAnswer, IngestError> {
        let _ = publish;
        Err(IngestError::unavailable(
            "this ingest does not take operator publishes",
        ))
    }
}
