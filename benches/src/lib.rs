//! Inputs shared by herald's criterion benches (`benches/*.rs`); the
//! figures and how to reproduce them are in `benches/RESULTS.md`.
//!
//! # Layout
//! - [`sample_data`]: a ~200-byte `data` object, the size the performance
//!   targets of DESIGN.md are stated for.
//! - [`sample_message`]: a server `message` frame carrying it.
//! - [`NoHistory`]: an [`herald_gateway::Ingest`] that holds nothing, for
//!   driving the gateway's hub without a store.
//! - [`EC_PRIVATE_PEM`], [`EC_PUBLIC_PEM`]: the ES256 test key pair of
//!   `crates/herald-auth/tests/keys/` (test-only keys, never deployed).

use async_trait::async_trait;
use herald_gateway::{Ingest, IngestError, PublishCall};
use herald_protocol::api::HistoryPage;
use herald_protocol::server::{self, MessageKind, PublishResult};
use herald_protocol::{ChannelName, JsonData};

/// ES256 (P-256) private key, PKCS#8 PEM.
pub const EC_PRIVATE_PEM: &str = include_str!("../../crates/herald-auth/tests/keys/ec.pem");
/// Its public key, SPKI PEM.
pub const EC_PUBLIC_PEM: &str = include_str!("../../crates/herald-auth/tests/keys/ec.pub.pem");

/// A chat-like `data` object of about 200 bytes of JSON.
pub fn sample_data() -> JsonData {
    let v = serde_json::json!({
        "content": "Hello from customer, I have a question about my order #8942 and the delivery date that was shown",
        "role": "user",
        "conversation": "8942b9df-77c8-4e5f-a7eb-097aace75053",
        "seen": false,
    });
    JsonData::from_value(&v)
}

/// A `message` frame on `chat_8942b9df-...` carrying [`sample_data`].
pub fn sample_message() -> server::Message {
    server::Message {
        kind: Some(MessageKind::Message),
        channel: ChannelName::new("chat_8942b9df-77c8-4e5f-a7eb-097aace75053")
            .expect("a valid channel name"),
        seq: 4211,
        id: "m_0190f3a2b7c87d3e9a1b2c3d4e5f6a7b".into(),
        ts: 1_731_067_200_123,
        from: Some("visitor:abc".into()),
        data: sample_data(),
    }
}

/// An ingest with no history and no publishes: the hub's gap fill and
/// catch-up never need it while seqs arrive in order.
#[derive(Debug, Default)]
pub struct NoHistory;

#[async_trait]
impl Ingest for NoHistory {
    async fn publish(&self, _: PublishCall) -> Result<PublishResult, IngestError> {
        Err(IngestError::unavailable(
            "benches do not publish through ingest",
        ))
    }

    async fn history(&self, _: &ChannelName, _: u64, _: u32) -> Result<HistoryPage, IngestError> {
        Ok(HistoryPage {
            messages: Vec::new(),
            last_seq: 0,
        })
    }

    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, IngestError> {
        Ok(vec![0; channels.len()])
    }

    async fn events(
        &self,
        _: &[herald_protocol::webhook::GatewayEvent],
    ) -> Result<(), IngestError> {
        Err(IngestError::unavailable(
            "benches configure no webhooks, so no gateway reports events",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_data_is_about_200_bytes() {
        let n = sample_data().len();
        assert!((180..=230).contains(&n), "{n}");
    }
}
