//! The gateway: terminates WebSockets, checks tokens and grants, keeps the
//! local subscription table and fans bus messages out to local clients.
//!
//! # Layout
//! - [`config`]: limits (PROTOCOL.md section 7), routes, repair timing.
//! - [`ingest`]: the [`Ingest`] trait through which publishes and history go.
//! - [`http_ingest`]: [`Ingest`] over HTTP, for `herald gateway`.
//! - [`hub`]: sharded channel -> subscribers table, ordering by seq, gap fill.
//! - [`conn`]: one task per connection (reader + writer).
//! - [`outbox`]: the byte-bounded outbound queue, and direct writes of
//!   fan-out to idle sockets.
//! - [`drain`]: the pacing of a drain's closes over its window.
//! - [`ws`]: server-side WebSocket framing.
//! - [`metrics`]: metric names.
//!
//! The gateway never touches the store: everything durable goes through
//! [`Ingest`]; the bus and presence come in as traits.

pub mod config;
pub mod conn;
pub mod drain;
pub mod events;
pub mod gate;
pub mod http_ingest;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod positions;
pub mod ws;

#[cfg(test)]
mod fuzz;

pub use config::{AllowedOrigins, GatewayConfig, Limits, Route};
pub use hub::ChannelStats;
pub use ingest::{ApiPublish, Ingest, IngestError, PublishCall};

use bytes::Bytes;
use herald_auth::Verifier;
use herald_bus::{Bus, Presence};
use herald_protocol::api::{HistoryPage, PublishAnswer, percent_decode};
use herald_protocol::server::{ClientInfo, PublishResult};
use herald_protocol::{ChannelName, CloseCode, Encoding};
use http_body_util::Full;
use hub::{ConnHandle, Hub};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Shared gateway state (one per node).
pub struct Inner {
    cfg: GatewayConfig,
    verifier: Verifier,
    ingest: Arc<dyn Ingest>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    hub: Arc<Hub>,
    registry: Mutex<Registry>,
    next_num: AtomicU64,
    draining: AtomicBool,
    tracker: TaskTracker,
    /// Counter handles looked up once, not per write.
    sent: metrics::Sent,
    /// Client events for webhooks.
    events: events::Events,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Arc<ConnHandle>>,
    per_user: HashMap<String, usize>,
}

/// A gateway node. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl Inner {
    fn next_conn_num(&self) -> u64 {
        self.next_num.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a connection against the node and per-user limits. While the
    /// node drains, a connection whose upgrade was already under way is
    /// refused with 1012 (it reconnects elsewhere with recovery), so none
    /// is left open behind the drain's snapshot.
    fn register(&self, h: &Arc<ConnHandle>, sub: &str) -> Result<(), CloseCode> {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Read under the registry lock that drain() takes for its snapshot:
        // either this connection is in the snapshot or it sees the flag.
        if self.draining.load(Ordering::SeqCst) {
            return Err(CloseCode::ServiceRestart);
        }
        if r.conns.len() >= self.cfg.limits.max_connections {
            return Err(CloseCode::ConnectionLimit);
        }
        let n = r.per_user.get(sub).copied().unwrap_or(0);
        if n >= self.cfg.limits.max_connections_per_user {
            return Err(CloseCode::ConnectionLimit);
        }
        r.per_user.insert(sub.to_owned(), n + 1);
        r.conns.insert(h.num, h.clone());
        Ok(())
    }

    fn unregister(&self, h: &Arc<ConnHandle>, sub: &str) {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        r.conns.remove(&h.num);
        if let Some(n) = r.per_user.get_mut(sub) {
            *n -= 1;
            if *n == 0 {
                r.per_user.remove(sub);
            }
        }
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, IngestError>>,
    ) -> Result<T, IngestError> {
        match tokio::time::timeout(self.cfg.ingest_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(IngestError::unavailable("ingest timed out")),
        }
    }

    async fn ingest_publish(&self, call: PublishCall) -> Result<PublishResult, IngestError> {
        self.timed(self.ingest.publish(call)).await
    }

    async fn ingest_history(
        &self,
        ch: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, IngestError> {
        self.timed(self.ingest.history(ch, after, limit)).await
    }

    async fn ingest_positions(&self, chs: &[ChannelName]) -> Result<Vec<u64>, IngestError> {
        self.timed(self.ingest.positions(chs)).await
    }
}

type Body = Full<Bytes>;

/// This node's connections seen from the admin page
/// ([`Gateway::connection_stats`]).
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    /// Open WebSocket connections.
    pub connections: usize,
    /// Distinct `sub`s among them.
    pub users: usize,
    /// The users with the most connections here and their counts, most
    /// first (ties by `sub`).
    pub top_users: Vec<(String, usize)>,
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r
}

impl Gateway {
    /// Builds a gateway and starts its catch-up loop.
    pub fn new(
        cfg: GatewayConfig,
        verifier: Verifier,
        ingest: Arc<dyn Ingest>,
        bus: Arc<dyn Bus>,
        presence: Arc<dyn Presence>,
    ) -> Self {
        // Every series exists from the start, so a scrape shows 0 rather
        // than nothing (absent-series alerts, dashboards).
        metrics::register_all();
        metrics::max_connections().set(f64::from(
            u32::try_from(cfg.limits.max_connections).unwrap_or(u32::MAX),
        ));
        let attach_bus = bus.clone();
        let hub = Hub::new(
            ingest.clone(),
            move |h| attach_bus.attach(h),
            cfg.gap_timeout,
            cfg.limits.max_queue_bytes,
        );
        let events = events::Events::new(cfg.webhook_events.clone(), ingest.clone());
        let inner = Arc::new(Inner {
            cfg,
            verifier,
            ingest,
            bus,
            presence,
            hub,
            registry: Mutex::new(Registry::default()),
            next_num: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            tracker: TaskTracker::new(),
            sent: metrics::Sent::default(),
            events,
        });
        let weak = Arc::downgrade(&inner.hub);
        let every = inner.cfg.catchup_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(hub) = weak.upgrade() else { return };
                hub.catch_up().await;
            }
        });
        // Presence across nodes: keep this node's entries alive, and
        // announce the leave of entries whose node died (DESIGN.md
        // `[presence] ttl`).
        let weak = Arc::downgrade(&inner);
        let every = (inner.cfg.presence_ttl / 3).max(Duration::from_millis(100));
        // In-process presence neither expires nor needs refreshing: no sweep
        // copying every entry of the node every ttl/3.
        let sweeps = inner.presence.expires();
        tokio::spawn(async move {
            if !sweeps {
                return;
            }
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                // A shard at a time (see Hub::presence_entries).
                for shard in 0..inner.hub.shard_count() {
                    let entries = inner.hub.presence_entries(shard);
                    if entries.is_empty() {
                        continue;
                    }
                    match inner.presence.refresh(&entries).await {
                        // Entries that vanished (expired during an outage)
                        // while their client is still here: join again, and
                        // say so, since others saw them leave.
                        Ok(missing) => {
                            for (ch, client) in missing {
                                if inner.hub.holds(&ch, &client.conn) {
                                    if let Err(e) = inner.presence.join(&ch, &client).await {
                                        tracing::warn!(error = %e, "presence re-join failed");
                                    }
                                    hub::publish_presence(&*inner.bus, &ch, "join", client).await;
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "presence refresh failed"),
                    }
                }
                for ch in inner.hub.channel_names() {
                    match inner.presence.expire(&ch).await {
                        Ok(gone) => {
                            for client in gone {
                                hub::publish_presence(&*inner.bus, &ch, "leave", client).await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, channel = %ch, "presence expiry failed")
                        }
                    }
                }
            }
        });
        Self { inner }
    }

    /// Whether `path` is a WebSocket endpoint: `/ws` or a configured route.
    pub fn is_ws_path(&self, path: &str) -> bool {
        path == "/ws"
            || self
                .inner
                .cfg
                .routes
                .iter()
                .any(|r| r.channels_for(path).is_some())
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .conns
            .len()
    }

    /// This node's name (`welcome.node`).
    pub fn node_id(&self) -> &str {
        &self.inner.cfg.node_id
    }

    /// Connection totals and the `top` users by connections here. One
    /// registry lock, held to walk the per-user counts (not at all for
    /// `top` 0); only the `top` names are copied.
    pub fn connection_stats(&self, top: usize) -> ConnectionStats {
        let mut heap = hub::TopN::new(top);
        let r = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if top > 0 {
            for (sub, n) in &r.per_user {
                heap.offer(*n, sub, || sub.clone());
            }
        }
        let (connections, users) = (r.conns.len(), r.per_user.len());
        drop(r);
        ConnectionStats {
            connections,
            users,
            top_users: heap.into_sorted(),
        }
    }

    /// Channel totals and the `top` channels by local subscribers
    /// ([`Hub::channel_stats`]).
    pub fn channel_stats(&self, top: usize) -> ChannelStats {
        self.inner.hub.channel_stats(top)
    }

    /// Who is on `channel` now, on every node (the presence store).
    pub async fn presence(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<ClientInfo>, herald_bus::BusError> {
        self.inner.presence.list(channel).await
    }

    /// A page of `channel`'s history through ingest, within the ingest
    /// timeout.
    pub async fn history(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: u32,
    ) -> Result<HistoryPage, IngestError> {
        self.inner.ingest_history(channel, after, limit).await
    }

    /// `channel`'s last seq through ingest, within the ingest timeout.
    pub async fn position(&self, channel: &ChannelName) -> Result<u64, IngestError> {
        let p = self
            .inner
            .ingest_positions(std::slice::from_ref(channel))
            .await?;
        Ok(p.first().copied().unwrap_or(0))
    }

    /// An operator's publish through ingest ([`Ingest::publish_api`]),
    /// within the ingest timeout.
    pub async fn publish_api(&self, publish: ApiPublish) -> Result<PublishAnswer, IngestError> {
        self.inner
            .timed(self.inner.ingest.publish_api(publish))
            .await
    }

    /// Whether the node is draining (then `/readyz` is 503).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Answers a WebSocket upgrade on `/ws` or a route and spawns the
    /// connection task.
    pub fn upgrade(&self, mut req: Request<Incoming>, peer: String) -> Response<Body> {
        if self.is_draining() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        if !fastwebsockets::upgrade::is_upgrade_request(&req) {
            return plain(StatusCode::UPGRADE_REQUIRED, "WebSocket upgrade required\n");
        }
        // Cross-site WebSocket hijacking: a browser always sends the page's
        // origin; refuse the ones not configured (docs/operations.md).
        let origin = req
            .headers()
            .get(http::header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        if !self.inner.cfg.allowed_origins.allows(origin) {
            tracing::debug!(origin = ?origin, peer = %peer, "origin refused");
            return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
        }
        // Subprotocol: echoed only when offered; an offer naming neither of
        // ours is refused before the upgrade (PROTOCOL.md section 2).
        let offered: Vec<String> = req
            .headers()
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .collect();
        let (enc, echo) = if offered.is_empty() {
            (Encoding::Json, false)
        } else {
            match offered.iter().find_map(|s| Encoding::from_subprotocol(s)) {
                Some(e) => (e, true),
                None => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "unsupported subprotocol: offer herald.json or herald.msgpack\n",
                    );
                }
            }
        };
        let path = req.uri().path().to_owned();
        let route_channels = if path == "/ws" {
            Vec::new()
        } else {
            match self
                .inner
                .cfg
                .routes
                .iter()
                .find_map(|r| r.channels_for(&path))
            {
                Some(Ok(chs)) => chs,
                Some(Err(_)) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "route parameter makes an invalid channel name\n",
                    );
                }
                None => return plain(StatusCode::NOT_FOUND, "not found\n"),
            }
        };
        let query = parse_query(req.uri().query().unwrap_or(""));
        let token = query.get("token").cloned().or_else(|| {
            req.headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .map(|t| t.trim().to_owned())
        });
        let recover: HashMap<ChannelName, u64> = match query.get("recover") {
            None => HashMap::new(),
            Some(r) => match herald_protocol::api::parse_recover(r) {
                Ok(entries) => entries.into_iter().collect(),
                Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("{e}\n")),
            },
        };
        let (mut resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok(x) => x,
            Err(e) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!("bad upgrade request: {e}\n"),
                );
            }
        };
        if echo {
            resp.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(enc.subprotocol()),
            );
        }
        let inner = self.inner.clone();
        // Boxed: every async frame that carries it until the welcome would
        // otherwise hold its own 128-byte copy for the connection's life.
        let hs = Box::new(conn::Handshake {
            enc,
            token,
            recover,
            route_channels,
            peer,
        });
        self.inner.tracker.spawn(async move {
            let ws = match fut.await {
                Ok(ws) => ws,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            let (rd, wr) = split_upgraded(ws.into_inner());
            conn::run(inner, rd, wr, hs).await;
        });
        resp.map(|_| Full::new(Bytes::new()))
    }

    /// Graceful drain (DESIGN.md guarantee 6): stop being ready, close every
    /// client with 1012 at an even pace over the drain window, then wait for
    /// the connection tasks (at most the window + 5 s).
    pub async fn drain(&self) {
        let conns: Vec<Arc<ConnHandle>> = {
            let r = self
                .inner
                .registry
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.inner.draining.store(true, Ordering::SeqCst);
            r.conns.values().cloned().collect()
        };
        let window = self.inner.cfg.limits.drain_window;
        tracing::info!(
            connections = conns.len(),
            window_s = window.as_secs_f64(),
            "draining"
        );
        drain::pace(conns.len(), window, |range| {
            for c in &conns[range] {
                c.outbox.close(CloseCode::ServiceRestart);
            }
        })
        .await;
        self.inner.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tracker.wait()).await;
    }
}

/// The upgraded socket, split: over TCP one socket shared by the reader, the
/// writer and the outbox (lock-free: tokio keeps readiness per direction;
/// the outbox writes directly, [`outbox::Outbox::deliver`]), with bytes
/// hyper already read replayed first.
fn split_upgraded(io: TokioIo<hyper::upgrade::Upgraded>) -> (conn::Reader, conn::Writer) {
    let upgraded = io.into_inner();
    match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => {
            // One allocation shared by the reader, the writer and the
            // outbox (not `into_split`, which adds a write half between the
            // outbox and the socket: a cache miss per direct write).
            let tcp = Arc::new(parts.io.into_inner());
            let wr = conn::Writer::Tcp(conn::SharedTcpWriter(tcp.clone()));
            let r = conn::SharedTcpReader(tcp);
            if parts.read_buf.is_empty() {
                // Dropping the empty view frees hyper's 8 KiB read buffer,
                // which would otherwise live as long as the connection.
                (Box::new(r), wr)
            } else {
                let pre = std::io::Cursor::new(Bytes::copy_from_slice(&parts.read_buf));
                (Box::new(tokio::io::AsyncReadExt::chain(pre, r)), wr)
            }
        }
        Err(upgraded) => {
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            (Box::new(r), conn::Writer::Other(Box::new(w)))
        }
    }
}

/// Parses a query string with percent-decoding.
pub fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("token=a.b.c&recover=chat_1%3A5%2Cchat_2%3A0&x");
        assert_eq!(q["token"], "a.b.c");
        assert_eq!(q["recover"], "chat_1:5,chat_2:0");
        assert_eq!(q["x"], "");
    }
}
