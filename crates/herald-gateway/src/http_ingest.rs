//! The gateway's [`Ingest`] over HTTP (`herald gateway --ingest-url`): a
//! pooled keep-alive hyper client with the API key.
//!
//! Client publishes carry an idempotency key (the client's own, or one the
//! gateway makes) and the client's `sub` in the `Herald-Publisher` header, so
//! a retry after a lost answer never stores a message twice and keys stay
//! scoped to the publishing user (PROTOCOL.md section 8).

use crate::ingest::{ApiPublish, Ingest, IngestError, PublishCall};
use crate::positions::Batcher;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use herald_protocol::api::{HistoryPage, PositionsAnswer, PublishAnswer};
use herald_protocol::server::{ErrorBody, PublishResult};
use herald_protocol::{ChannelName, ErrorCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

/// Header naming the WebSocket publisher whose key scope a gateway publish
/// uses, percent-encoded (RFC 3986 unreserved bytes kept). Only trusted with
/// the API key.
pub const PUBLISHER_HEADER: &str = "herald-publisher";

/// Largest ingest answer read (a full history page of large messages).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Ingest reached over HTTP.
pub struct HttpIngest {
    http: Arc<Http>,
    /// One-channel position reads, merged (crate::positions).
    positions: Batcher,
}

/// The pooled client and what every call carries.
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    auth: String,
    attempt_timeout: Duration,
    attempts: u32,
}

impl HttpIngest {
    /// A client for the ingest at `base` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base: &str, api_key: &str) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(conn);
        let http = Arc::new(Http {
            client,
            base: base.trim_end_matches('/').to_owned(),
            auth: format!("Bearer {api_key}"),
            attempt_timeout: Duration::from_secs(3),
            attempts: 3,
        });
        let h = http.clone();
        let positions = Batcher::new(Arc::new(move |names: Vec<ChannelName>| {
            let h = h.clone();
            Box::pin(async move { h.positions(&names).await }) as BoxFuture<'static, _>
        }));
        Self { http, positions }
    }
}

impl Http {
    /// Each channel's last seq, in the order given (one request).
    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, IngestError> {
        let body = serde_json::to_vec(&serde_json::json!({ "channels": channels }))
            .map_err(|e| IngestError::unavailable(e.to_string()))?;
        let a: PositionsAnswer = self
            .call(http::Method::POST, "/v1/positions", Some(body), None)
            .await?;
        Ok(channels
            .iter()
            .map(|c| a.positions.get(c.as_str()).copied().unwrap_or(0))
            .collect())
    }

    /// One call with retries on transport failure and 503 (safe: reads are
    /// idempotent, publishes carry an idempotency key).
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
        publisher: Option<&str>,
    ) -> Result<T, IngestError> {
        let mut backoff = Duration::from_millis(50);
        let mut last = IngestError::unavailable("ingest unreachable");
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 4;
            }
            let mut req = http::Request::builder()
                .method(method.clone())
                .uri(format!("{}{}", self.base, path))
                .header(http::header::AUTHORIZATION, &self.auth)
                .header(http::header::CONTENT_TYPE, "application/json");
            if let Some(p) = publisher {
                // Lossless and header-safe for any UTF-8 `sub` (a raw
                // non-ASCII one was refused by ingest and fell back to the
                // API's scope, merging users' keys).
                req = req.header(PUBLISHER_HEADER, herald_protocol::api::percent_encode(p));
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| IngestError::unavailable(format!("bad ingest request: {e}")))?;
            let resp =
                match tokio::time::timeout(self.attempt_timeout, self.client.request(req)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        last = IngestError::unavailable(format!("ingest unreachable: {e}"));
                        continue;
                    }
                    Err(_) => {
                        last = IngestError::unavailable("ingest timed out");
                        continue;
                    }
                };
            let status = resp.status();
            let bytes = match Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
            {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    last = IngestError::unavailable(format!("reading ingest answer: {e}"));
                    continue;
                }
            };
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| {
                    IngestError::unavailable(format!("unreadable ingest answer: {e}"))
                });
            }
            #[derive(serde::Deserialize)]
            struct ErrAnswer {
                error: ErrorBody,
            }
            let err = serde_json::from_slice::<ErrAnswer>(&bytes)
                .ok()
                .and_then(|a| {
                    ErrorCode::parse(&a.error.code).map(|c| IngestError {
                        code: c,
                        message: a.error.message,
                    })
                })
                .unwrap_or_else(|| IngestError::unavailable(format!("ingest answered {status}")));
            if status == http::StatusCode::SERVICE_UNAVAILABLE {
                last = err;
                continue;
            }
            // The API key or a gateway bug: the client can do nothing.
            if matches!(err.code, ErrorCode::Unauthorized | ErrorCode::NotFound) {
                tracing::error!(code = %err.code, message = %err.message, "ingest refused the gateway");
                return Err(IngestError {
                    code: ErrorCode::Internal,
                    message: "gateway misconfigured".into(),
                });
            }
            return Err(err);
        }
        Err(last)
    }
}

#[async_trait]
impl Ingest for HttpIngest {
    async fn publish(&self, call: PublishCall) -> Result<PublishResult, IngestError> {
        // Our own key when the client gave none: retries below never store
        // twice.
        let key = call
            .key
            .clone()
            .unwrap_or_else(|| format!("gw:{}", uuid::Uuid::now_v7().simple()));
        let body = serde_json::json!({
            "channel": call.channel.as_str(),
            "data": serde_json::value::RawValue::from_string(String::from_utf8_lossy(call.data.as_bytes()).into_owned())
                .map_err(|_| IngestError::unavailable("invalid data"))?,
            "key": key,
            "from": call.publisher,
        });
        let body =
            serde_json::to_vec(&body).map_err(|e| IngestError::unavailable(e.to_string()))?;
        let a: PublishAnswer = self
            .http
            .call(
                http::Method::POST,
                "/v1/publish",
                Some(body),
                Some(&call.publisher),
            )
            .await?;
        let seq = a
            .seqs
            .get(call.channel.as_str())
            .copied()
            .ok_or_else(|| IngestError::unavailable("ingest answer lacks the channel's seq"))?;
        Ok(PublishResult {
            id: a.id,
            seq,
            ts: a.ts,
        })
    }

    async fn events(
        &self,
        events: &[herald_protocol::webhook::GatewayEvent],
    ) -> Result<(), IngestError> {
        let body = serde_json::to_vec(&serde_json::json!({ "events": events }))
            .map_err(|e| IngestError::unavailable(e.to_string()))?;
        let _: serde_json::Value = self
            .http
            .call(http::Method::POST, "/v1/events", Some(body), None)
            .await?;
        Ok(())
    }

    async fn publish_api(&self, p: ApiPublish) -> Result<PublishAnswer, IngestError> {
        // No publisher header: the API key's own scope, as a backend's
        // publish. Our own key when the operator gave none, so the retries
        // of `call` never store twice.
        let key = p
            .key
            .clone()
            .unwrap_or_else(|| format!("admin:{}", uuid::Uuid::now_v7().simple()));
        let body = serde_json::json!({
            "channels": p.channels,
            "data": serde_json::value::RawValue::from_string(String::from_utf8_lossy(p.data.as_bytes()).into_owned())
                .map_err(|_| IngestError::unavailable("invalid data"))?,
            "key": key,
        });
        let body =
            serde_json::to_vec(&body).map_err(|e| IngestError::unavailable(e.to_string()))?;
        self.http
            .call(http::Method::POST, "/v1/publish", Some(body), None)
            .await
    }

    async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, IngestError> {
        let path = format!("/v1/channels/{channel}/messages?after={after}&limit={limit}");
        self.http.call(http::Method::GET, &path, None, None).await
    }

    /// A subscription's read (one channel) is merged with concurrent ones
    /// (crate::positions); catch-up's list goes as it is.
    async fn positions(&self, channels: &[ChannelName]) -> Result<Vec<u64>, IngestError> {
        match channels {
            [one] => Ok(vec![self.positions.position(one).await?]),
            _ => self.http.positions(channels).await,
        }
    }
}
