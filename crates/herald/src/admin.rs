//! `/metrics` (Prometheus text), `/healthz` (liveness) and `/readyz`
//! (readiness: not draining, and for ingest the store and bus answer).

use bytes::Bytes;
use herald_gateway::Gateway;
use herald_ingest::IngestService;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Histogram buckets in seconds: sub-millisecond to tens of seconds.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (metrics handles taken before it
/// are no-ops forever, so call this first) and starts its upkeep.
pub fn install_metrics(node_id: &str) -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let h = PrometheusBuilder::new()
        .add_global_label("node", node_id)
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    let _ = HANDLE.set(h.clone());
    let up = h.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_secs(5));
        loop {
            t.tick().await;
            up.run_upkeep();
        }
    });
    Ok(h)
}

/// The admin routes.
#[derive(Clone)]
pub struct Admin {
    /// The recorder.
    pub metrics: PrometheusHandle,
    /// The gateway, for draining state.
    pub gateway: Option<Gateway>,
    /// Ingest, for store and bus readiness.
    pub ingest: Option<Arc<IngestService>>,
    /// Set when the node drains.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The admin page and its API (`[admin] ui`), when enabled.
    pub ui: Option<Arc<crate::admin_ui::AdminUi>>,
}

impl Admin {
    /// Answers an admin path, or `None` when the path is not one.
    pub async fn handle(&self, method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
        if method != Method::GET {
            return None;
        }
        let (status, ctype, body) = match path {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(self.metrics.render()),
            ),
            "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
            "/readyz" => {
                let draining = self.draining.load(std::sync::atomic::Ordering::SeqCst)
                    || self.gateway.as_ref().is_some_and(Gateway::is_draining);
                let ingest_ok = match &self.ingest {
                    Some(i) => i.ready().await,
                    None => true,
                };
                if draining {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        Bytes::from_static(b"draining\n"),
                    )
                } else if !ingest_ok {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        Bytes::from_static(b"store or bus unreachable\n"),
                    )
                } else {
                    (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n"))
                }
            }
            _ => return None,
        };
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        Some(r)
    }
}
