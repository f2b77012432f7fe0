//! Publishing through the ingest API (`POST /v1/publish`, PROTOCOL.md
//! section 8), open-loop at a fixed rate.
//!
//! The schedule does not wait for answers: message `k` of a step is due at
//! `k / rate` seconds, and up to `concurrency` requests are in flight. A
//! server slower than the rate shows up as rising latency, and as
//! `publisher_behind` once every request slot is busy, never as a silently
//! lower rate.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::target::Target;
use crate::track::{Ledger, SharedHistogram, now_ns, state};

/// Bound on one publish request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client for the ingest API.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: http::Uri,
    auth: http::HeaderValue,
}

/// How one publish went.
pub enum Outcome {
    /// 200: committed.
    Ok,
    /// Any other status, with the body's first bytes.
    Status(u16, String),
    /// Transport error or timeout.
    Failed(String),
}

impl Api {
    /// A client for `target`, keeping up to `pool` idle connections.
    pub fn new(target: &Target, pool: usize) -> anyhow::Result<Self> {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool)
            .build(conn);
        Ok(Self {
            client,
            uri: format!("http://{}/v1/publish", target.ingest_addr)
                .parse()
                .context("publish URI")?,
            auth: http::HeaderValue::from_str(&format!("Bearer {}", target.api_key))
                .context("--api-key is not a valid header value")?,
        })
    }

    /// Posts one publish body.
    pub async fn publish(&self, body: Bytes) -> Outcome {
        let req = http::Request::post(self.uri.clone())
            .header(http::header::AUTHORIZATION, self.auth.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Err(_) => Outcome::Failed(format!("no answer within {REQUEST_TIMEOUT:?}")),
            Ok(Err(e)) => Outcome::Failed(e),
            Ok(Ok((200, body))) => {
                // A 200 must carry the committed seqs (PROTOCOL.md section 8).
                match serde_json::from_slice::<herald_protocol::api::PublishAnswer>(&body) {
                    Ok(a) if !a.seqs.is_empty() => Outcome::Ok,
                    _ => Outcome::Status(
                        200,
                        String::from_utf8_lossy(&body).chars().take(200).collect(),
                    ),
                }
            }
            Ok(Ok((status, body))) => Outcome::Status(
                status,
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            ),
        }
    }
}

/// The `data` of a load message: send time, message number, padding up to
/// about `size` bytes of JSON.
pub fn data_json(sent_ns: u64, n: u64, size: usize) -> String {
    let head = format!("{{\"lgt\":{sent_ns},\"lgn\":{n},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// The JSON string of a channel name (names hold no characters that need
/// escaping, PROTOCOL.md section 1).
fn quoted(ch: &str) -> String {
    format!("\"{ch}\"")
}

/// A publish body to `channels` (one: `channel`, several: `channels`).
pub fn body(channels: &[&str], data: &str) -> Bytes {
    let target = match channels {
        [one] => format!("\"channel\":{}", quoted(one)),
        many => format!(
            "\"channels\":[{}]",
            many.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(",")
        ),
    };
    Bytes::from(format!("{{{target},\"data\":{data}}}"))
}

/// Publisher-side counters.
#[derive(Default)]
pub struct PublishStats {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Answered 200.
    pub ok: AtomicU64,
    /// Anything else.
    pub errors: AtomicU64,
    /// Times the schedule had to wait for a free request slot.
    pub behind: AtomicU64,
    /// Request latency (send to answer).
    pub latency: SharedHistogram,
    /// First error seen, for the report.
    pub first_error: std::sync::Mutex<Option<String>>,
}

impl PublishStats {
    /// Counts an error and keeps the first one.
    pub fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|x| x.into_inner());
        if f.is_none() {
            *f = Some(e);
        }
    }
}

/// One step of open-loop publishing.
pub struct Step<'a> {
    /// Messages per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// Ledger step index (message numbers come from it).
    pub step: usize,
    /// Channels of message `k` of the step.
    pub channels: &'a (dyn Fn(u64) -> Vec<String> + Sync),
    /// `data` size in bytes.
    pub size: usize,
}

/// Publishes `rate x duration` messages on schedule; returns how many were
/// sent once every request has its answer (or timed out).
pub async fn run_step(
    api: &Api,
    ledger: &Arc<Ledger>,
    stats: &Arc<PublishStats>,
    slots: &Arc<Semaphore>,
    s: Step<'_>,
) -> u64 {
    let planned = planned(s.rate, s.duration).min(ledger.step_cap(s.step));
    let first = ledger.step_start(s.step);
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    let mut k = 0u64;
    while k < planned {
        // Message k is due at k / rate.
        #[allow(clippy::cast_precision_loss)]
        let due = start + Duration::from_secs_f64(k as f64 / s.rate);
        tokio::time::sleep_until(due).await;
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                stats.behind.fetch_add(1, Ordering::Relaxed);
                match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
        };
        let n = first + k;
        let chans = (s.channels)(k);
        let (api, ledger, stats, size) = (api.clone(), ledger.clone(), stats.clone(), s.size);
        tasks.spawn(async move {
            let _permit = permit;
            let Some(slot) = ledger.slot(n) else { return };
            let t = now_ns();
            slot.sent_ns.store(t, Ordering::Relaxed);
            let refs: Vec<&str> = chans.iter().map(String::as_str).collect();
            let b = body(&refs, &data_json(t, n, size));
            stats.sent.fetch_add(1, Ordering::Relaxed);
            let outcome = api.publish(b).await;
            stats
                .latency
                .record_ns(usize::try_from(n).unwrap_or(0), now_ns().saturating_sub(t));
            match outcome {
                Outcome::Ok => {
                    slot.state.store(state::OK, Ordering::Relaxed);
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Status(code, body) => {
                    slot.state.store(state::FAILED, Ordering::Relaxed);
                    stats.error(format!("HTTP {code}: {body}"));
                }
                Outcome::Failed(e) => {
                    slot.state.store(state::FAILED, Ordering::Relaxed);
                    stats.error(e);
                }
            }
        });
        // Reap finished requests as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
        k += 1;
    }
    while tasks.join_next().await.is_some() {}
    k
}

/// Messages a step of `rate` for `duration` sends.
pub fn planned(rate: f64, duration: Duration) -> u64 {
    let n = (rate * duration.as_secs_f64()).round();
    // Non-negative and far below 2^53 for any run we allow.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = n.max(0.0) as u64;
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_has_the_requested_size_and_keys() {
        let d = data_json(123, 4, 200);
        assert_eq!(d.len(), 200);
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["lgt"], 123);
        assert_eq!(v["lgn"], 4);
        let b = body(&["a", "b"], &d);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["channels"][1], "b");
        let b = body(&["a"], "1");
        assert_eq!(&b[..], br#"{"channel":"a","data":1}"#);
    }

    #[test]
    fn planned_rounds() {
        assert_eq!(planned(20.0, Duration::from_secs(2)), 40);
        assert_eq!(planned(0.4, Duration::from_secs(1)), 0);
    }
}
