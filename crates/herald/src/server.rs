//! HTTP serving: the accept loop (hyper 1, one task per connection), the
//! router of the public and admin listeners, and graceful drain.

use crate::admin::Admin;
use bytes::Bytes;
use herald_gateway::Gateway;
use herald_ingest::IngestService;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Resp = Response<Full<Bytes>>;

/// What one listener serves.
#[derive(Clone)]
pub struct App {
    /// WebSocket endpoints.
    pub gateway: Option<Gateway>,
    /// `/v1/*`.
    pub ingest: Option<Arc<IngestService>>,
    /// `/metrics`, `/healthz`, `/readyz` and, when enabled, `/admin` (when
    /// served on this listener).
    pub admin: Option<Admin>,
    /// `/` and `/demo/*`: the demo page and its stand-in endpoints
    /// (`herald dev` only).
    pub demo: Option<Arc<crate::dev::demo::Demo>>,
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

impl App {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let path = req.uri().path();
        if let Some(gw) = &self.gateway
            && gw.is_ws_path(path)
        {
            return gw.upgrade(req, peer.to_string());
        }
        if let Some(ingest) = &self.ingest
            && herald_ingest::http::is_api_path(path)
        {
            return herald_ingest::http::handle(ingest, req).await;
        }
        if let Some(admin) = &self.admin
            && let Some(ui) = &admin.ui
            && crate::admin_ui::is_ui_path(path)
        {
            return ui.handle(admin, req).await;
        }
        if let Some(admin) = &self.admin
            && let Some(r) = admin.handle(req.method(), path).await
        {
            return r;
        }
        if let Some(demo) = &self.demo
            && crate::dev::demo::is_demo_path(path)
        {
            return demo.handle(req).await;
        }
        if self.ingest.is_some() && path.starts_with("/v1") {
            return herald_ingest::http::error(
                herald_protocol::ErrorCode::NotFound,
                "no such route",
            );
        }
        text(StatusCode::NOT_FOUND, "not found\n")
    }
}

/// Accepts connections until `stop` is cancelled. Upgraded WebSockets live
/// on in the gateway's own tasks; plain HTTP connections are asked to finish
/// gracefully.
pub async fn serve(
    listener: TcpListener,
    app: App,
    stop: CancellationToken,
    header_timeout: Duration,
) {
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "http connection error");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    drop(listener);
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}
