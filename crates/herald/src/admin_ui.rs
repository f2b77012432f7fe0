//! The admin page (`[admin] ui`, off by default): `GET /admin`, one page
//! embedded in the binary (`admin.html`, inline script and style, no
//! external URL), and the JSON API it calls under `/admin/api/`.
//!
//! What it owns: this node's view for an operator (the node, its
//! connections, its busiest channels, a channel's presence and recent
//! messages) and a publish form that goes through ingest like a backend's
//! `POST /v1/publish`.
//!
//! Invariants:
//! - Served only on the listener that serves the admin routes, and only when
//!   enabled; otherwise every `/admin` path is a 404 like any unknown path.
//! - Every API call needs `Authorization: Bearer <api key>`, compared in
//!   constant time as ingest does; the page itself holds no data and no key
//!   (the browser keeps the key in `sessionStorage`).
//! - Answers are bounded (top lists, presence and history pages are cut at
//!   fixed sizes) and read the gateway with its short sync locks only; remote
//!   reads (presence store, ingest) have a deadline.
//! - It never shows tokens or the key, and logs neither `data` nor keys.

use crate::admin::Admin;
use bytes::Bytes;
use herald_gateway::{ApiPublish, Gateway};
use herald_ingest::http::{API_PUBLISHER, error, json};
use herald_ingest::{IngestService, PublishInput};
use herald_protocol::api::{HistoryPage, PublishAnswer};
use herald_protocol::server::ClientInfo;
use herald_protocol::{ChannelName, ErrorCode, JsonData};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

type Resp = Response<Full<Bytes>>;

/// The page, with `__NONCE__` where each response's CSP nonce goes.
const PAGE: &str = include_str!("admin.html");

/// Default and largest `limit` of `/admin/api/connections` (users listed).
const USERS_DEFAULT: usize = 20;
const USERS_MAX: usize = 1000;
/// Default and largest `limit` of `/admin/api/channels` (channels listed).
const CHANNELS_DEFAULT: usize = 50;
const CHANNELS_MAX: usize = 1000;
/// Default and largest `limit` of a channel's recent messages.
const MESSAGES_DEFAULT: u32 = 20;
const MESSAGES_MAX: u32 = 100;
/// Presence clients listed at most (the total is always given).
const PRESENCE_MAX: usize = 1000;
/// Channels in one publish (ingest's own bound).
const PUBLISH_CHANNELS_MAX: usize = 100;
/// Deadline of one read of the presence store.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// What this node is made of, for [`AdminUi::new`].
pub struct Parts {
    /// `dev`, `gateway` or `ingest`.
    pub role: &'static str,
    /// `node_id`.
    pub node_id: String,
    /// The API key that every API call must carry.
    pub api_key: String,
    /// The gateway, on `gateway` and `dev`.
    pub gateway: Option<Gateway>,
    /// The ingest service, on `ingest` and `dev`.
    pub ingest: Option<Arc<IngestService>>,
    /// `[limits] max_data_bytes`: bounds the publish body.
    pub max_data_bytes: usize,
}

/// The admin page and its API for one node.
pub struct AdminUi {
    parts: Parts,
    started: Instant,
    started_at_ms: i64,
}

/// Whether `path` belongs to the admin page.
pub fn is_ui_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// A failed call: its code and message, answered in ingest's error format.
struct Fail(ErrorCode, String);

impl Fail {
    fn bad(m: impl Into<String>) -> Self {
        Self(ErrorCode::BadRequest, m.into())
    }
    fn unavailable(m: impl Into<String>) -> Self {
        Self(ErrorCode::Unavailable, m.into())
    }
}

impl From<herald_ingest::IngestError> for Fail {
    fn from(e: herald_ingest::IngestError) -> Self {
        Self(e.code, e.message)
    }
}

impl From<herald_gateway::IngestError> for Fail {
    fn from(e: herald_gateway::IngestError) -> Self {
        Self(e.code, e.message)
    }
}

/// `GET /admin/api/node`.
#[derive(Serialize)]
struct NodeInfo<'a> {
    id: &'a str,
    role: &'a str,
    version: &'a str,
    uptime_seconds: u64,
    started_at: i64,
    draining: bool,
    /// Gateway parts; `null` on an ingest node.
    connections: Option<usize>,
    users: Option<usize>,
    channels: Option<usize>,
    subscriptions: Option<usize>,
}

#[derive(Serialize)]
struct UserCount {
    sub: String,
    connections: usize,
}

#[derive(Serialize)]
struct Connections {
    connections: usize,
    users: usize,
    top_users: Vec<UserCount>,
}

#[derive(Serialize)]
struct ChannelCount {
    channel: ChannelName,
    subscribers: usize,
}

#[derive(Serialize)]
struct Channels {
    channels: usize,
    subscriptions: usize,
    top: Vec<ChannelCount>,
}

#[derive(Serialize)]
struct Presence {
    channel: ChannelName,
    total: usize,
    clients: Vec<ClientInfo>,
}

#[derive(Serialize)]
struct Recent {
    channel: ChannelName,
    last_seq: u64,
    /// In seq order, the newest last (as the history API).
    messages: Vec<herald_protocol::server::Message>,
}

/// `POST /admin/api/publish` body: `POST /v1/publish` without `from`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    #[serde(borrow, default, deserialize_with = "herald_protocol::client::present")]
    data: Option<&'a RawValue>,
    key: Option<String>,
}

impl AdminUi {
    /// The page and API of a node, counting uptime from now.
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Self {
            parts,
            started: Instant::now(),
            started_at_ms: herald_protocol::now_ms(),
        })
    }

    /// Answers a request to an [`is_ui_path`] path.
    pub async fn handle(&self, admin: &Admin, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        if path == "/admin" || path == "/admin/" {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return self.fail(Fail(ErrorCode::NotFound, "use GET".into()));
            }
            return page();
        }
        let Some(rest) = path.strip_prefix("/admin/api/") else {
            return self.fail(Fail(ErrorCode::NotFound, "no such page".into()));
        };
        if !self.authorized(&req) {
            tracing::debug!(path = %path, "admin API call without the API key");
            return self.fail(Fail(
                ErrorCode::Unauthorized,
                "missing or wrong API key".into(),
            ));
        }
        let rest = rest.to_owned();
        let segs: Vec<&str> = rest.split('/').collect();
        let query = req.uri().query().unwrap_or("").to_owned();
        let r = match (req.method().clone(), segs.as_slice()) {
            (Method::GET, ["node"]) => Ok(self.node(admin)),
            (Method::GET, ["connections"]) => self.connections(&query),
            (Method::GET, ["channels"]) => self.channels(&query),
            (Method::GET, ["channels", ch, "presence"]) => self.presence(ch).await,
            (Method::GET, ["channels", ch, "messages"]) => self.recent(ch, &query).await,
            (Method::POST, ["publish"]) => self.publish(req).await,
            (m, _) => Err(Fail(
                ErrorCode::NotFound,
                format!("no admin API route for {m} {path}"),
            )),
        };
        let mut resp = match r {
            Ok(r) => r,
            Err(f) => return self.fail(f),
        };
        no_store(&mut resp);
        resp
    }

    fn fail(&self, Fail(code, message): Fail) -> Resp {
        let mut r = error(code, &message);
        no_store(&mut r);
        r
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        herald_ingest::http::bearer_matches(req.headers(), &self.parts.api_key)
    }

    fn gateway(&self) -> Result<&Gateway, Fail> {
        self.parts.gateway.as_ref().ok_or_else(|| {
            Fail(
                ErrorCode::NotFound,
                format!("a {} node holds no WebSocket connections", self.parts.role),
            )
        })
    }

    fn node(&self, admin: &Admin) -> Resp {
        let gw = self.parts.gateway.as_ref();
        let conns = gw.map(|g| g.connection_stats(0));
        let chans = gw.map(|g| g.channel_stats(0));
        let draining =
            admin.draining.load(Ordering::SeqCst) || gw.is_some_and(Gateway::is_draining);
        json(
            StatusCode::OK,
            &NodeInfo {
                id: &self.parts.node_id,
                role: self.parts.role,
                version: env!("CARGO_PKG_VERSION"),
                uptime_seconds: self.started.elapsed().as_secs(),
                started_at: self.started_at_ms,
                draining,
                connections: conns.as_ref().map(|c| c.connections),
                users: conns.as_ref().map(|c| c.users),
                channels: chans.as_ref().map(|c| c.channels),
                subscriptions: chans.as_ref().map(|c| c.subscriptions),
            },
        )
    }

    fn connections(&self, query: &str) -> Result<Resp, Fail> {
        let limit = limit(query, USERS_DEFAULT, USERS_MAX)?;
        let s = self.gateway()?.connection_stats(limit);
        Ok(json(
            StatusCode::OK,
            &Connections {
                connections: s.connections,
                users: s.users,
                top_users: s
                    .top_users
                    .into_iter()
                    .map(|(sub, connections)| UserCount { sub, connections })
                    .collect(),
            },
        ))
    }

    fn channels(&self, query: &str) -> Result<Resp, Fail> {
        let limit = limit(query, CHANNELS_DEFAULT, CHANNELS_MAX)?;
        let s = self.gateway()?.channel_stats(limit);
        Ok(json(
            StatusCode::OK,
            &Channels {
                channels: s.channels,
                subscriptions: s.subscriptions,
                top: s
                    .top
                    .into_iter()
                    .map(|(channel, subscribers)| ChannelCount {
                        channel,
                        subscribers,
                    })
                    .collect(),
            },
        ))
    }

    /// Who is on the channel, every node (ingest's presence read, or the
    /// gateway's presence store: the same data).
    async fn presence(&self, raw: &str) -> Result<Resp, Fail> {
        let ch = channel(raw)?;
        let read = async {
            if let Some(i) = &self.parts.ingest {
                i.presence(&ch).await.map_err(Fail::from)
            } else if let Some(g) = &self.parts.gateway {
                g.presence(&ch)
                    .await
                    .map_err(|e| Fail::unavailable(format!("presence unavailable: {e}")))
            } else {
                Err(Fail::unavailable("no presence on this node"))
            }
        };
        let mut clients = tokio::time::timeout(PRESENCE_TIMEOUT, read)
            .await
            .map_err(|_| Fail::unavailable("presence read timed out"))??;
        let total = clients.len();
        clients.sort_by(|a, b| (&a.sub, &a.conn).cmp(&(&b.sub, &b.conn)));
        clients.truncate(PRESENCE_MAX);
        Ok(json(
            StatusCode::OK,
            &Presence {
                channel: ch,
                total,
                clients,
            },
        ))
    }

    /// The channel's last `limit` messages: its position, then one
    /// history page ending there.
    async fn recent(&self, raw: &str, query: &str) -> Result<Resp, Fail> {
        let ch = channel(raw)?;
        let n = u32::try_from(limit(
            query,
            MESSAGES_DEFAULT as usize,
            MESSAGES_MAX as usize,
        )?)
        .unwrap_or(MESSAGES_MAX);
        let last = self.positions(&ch).await?;
        let page = self
            .history(&ch, last.saturating_sub(u64::from(n)), n)
            .await?;
        Ok(json(
            StatusCode::OK,
            &Recent {
                channel: ch,
                last_seq: page.last_seq.max(last),
                messages: page.messages,
            },
        ))
    }

    async fn positions(&self, ch: &ChannelName) -> Result<u64, Fail> {
        if let Some(i) = &self.parts.ingest {
            let p = i.positions(std::slice::from_ref(ch)).await?;
            Ok(p.first().copied().unwrap_or(0))
        } else if let Some(g) = &self.parts.gateway {
            Ok(g.position(ch).await?)
        } else {
            Err(Fail::unavailable("no history on this node"))
        }
    }

    async fn history(&self, ch: &ChannelName, after: u64, n: u32) -> Result<HistoryPage, Fail> {
        if let Some(i) = &self.parts.ingest {
            Ok(i.history(ch, after, n).await?)
        } else if let Some(g) = &self.parts.gateway {
            Ok(g.history(ch, after, n).await?)
        } else {
            Err(Fail::unavailable("no history on this node"))
        }
    }

    async fn publish(&self, req: Request<Incoming>) -> Result<Resp, Fail> {
        // Room for the largest data plus the channel list and the key.
        let max = self.parts.max_data_bytes + 64 * 1024;
        let body = match Limited::new(req.into_body(), max).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(Fail(
                    ErrorCode::TooLarge,
                    format!("request body is larger than {max} bytes"),
                ));
            }
            Err(_) => return Err(Fail::bad("could not read the request body")),
        };
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(Fail::bad("malformed JSON body: expected a JSON object"));
        }
        let b: PublishBody<'_> = serde_json::from_slice(&body)
            .map_err(|e| Fail::bad(format!("malformed JSON body: {e}")))?;
        let channels = channels_of(b.channel, b.channels)?;
        let raw = b.data.ok_or_else(|| Fail::bad("missing data"))?;
        if raw.get().len() > self.parts.max_data_bytes {
            return Err(Fail(
                ErrorCode::TooLarge,
                format!("data is larger than {} bytes", self.parts.max_data_bytes),
            ));
        }
        let data = JsonData::from_json_text(Bytes::copy_from_slice(raw.get().as_bytes()))
            .map_err(|_| Fail::bad("data is not valid JSON"))?;
        if b.key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 256)
        {
            return Err(Fail::bad("key must be 1 to 256 bytes"));
        }
        let n = channels.len();
        let answer = if let Some(i) = &self.parts.ingest {
            let a = i
                .publish(PublishInput {
                    channels,
                    data,
                    key: b.key,
                    from: None,
                    publisher: API_PUBLISHER.to_owned(),
                })
                .await?;
            PublishAnswer {
                id: a.id,
                ts: a.ts,
                seqs: a
                    .seqs
                    .into_iter()
                    .map(|(c, s)| (c.as_str().to_owned(), s))
                    .collect(),
            }
        } else if let Some(g) = &self.parts.gateway {
            g.publish_api(ApiPublish {
                channels,
                data,
                key: b.key,
            })
            .await?
        } else {
            return Err(Fail::unavailable("no ingest on this node"));
        };
        // An audit line: who can publish here is whoever holds the key.
        tracing::info!(msg_id = %answer.id, channels = n, "admin page publish");
        Ok(json(StatusCode::OK, &answer))
    }
}

/// The page, with a fresh CSP nonce: only its own inline script and style
/// run, nothing loads from anywhere, and no other site may frame it.
fn page() -> Resp {
    let nonce = {
        use base64::Engine;
        let bytes: [u8; 16] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let mut r = Response::new(Full::new(Bytes::from(PAGE.replace("__NONCE__", &nonce))));
    let h = r.headers_mut();
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    if let Ok(v) = http::HeaderValue::from_str(&csp) {
        h.insert(http::header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    no_store(&mut r);
    r
}

fn no_store(r: &mut Resp) {
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
}

fn channel(raw: &str) -> Result<ChannelName, Fail> {
    let decoded = herald_protocol::api::percent_decode(raw, false);
    ChannelName::new(&decoded).map_err(|e| Fail(ErrorCode::BadChannel, format!("{decoded:?}: {e}")))
}

/// The `limit` query parameter: 1..=`max`, `default` when absent.
fn limit(query: &str, default: usize, max: usize) -> Result<usize, Fail> {
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if k == "limit" {
            return match v.parse::<usize>() {
                Ok(l) if (1..=max).contains(&l) => Ok(l),
                _ => Err(Fail::bad(format!("limit must be 1 to {max}"))),
            };
        }
    }
    Ok(default)
}

fn channels_of(one: Option<String>, many: Option<Vec<String>>) -> Result<Vec<ChannelName>, Fail> {
    let names = match (one, many) {
        (Some(_), Some(_)) => return Err(Fail::bad("give either channel or channels, not both")),
        (None, None) => return Err(Fail::bad("missing channel or channels")),
        (Some(c), None) => vec![c],
        (None, Some(cs)) => cs,
    };
    if names.is_empty() {
        return Err(Fail::bad("channels is empty"));
    }
    if names.len() > PUBLISH_CHANNELS_MAX {
        return Err(Fail::bad(format!(
            "at most {PUBLISH_CHANNELS_MAX} channels per publish"
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let c =
            ChannelName::new(&n).map_err(|e| Fail(ErrorCode::BadChannel, format!("{n:?}: {e}")))?;
        if !seen.insert(c.clone()) {
            return Err(Fail::bad(format!("channel {n:?} listed twice")));
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit("", 20, 100).ok(), Some(20));
        assert_eq!(limit("limit=7&x=1", 20, 100).ok(), Some(7));
        assert!(limit("limit=0", 20, 100).is_err());
        assert!(limit("limit=101", 20, 100).is_err());
        assert!(limit("limit=lots", 20, 100).is_err());
    }

    #[test]
    fn publish_channels_are_checked() {
        assert!(channels_of(Some("chat_1".into()), None).is_ok());
        assert!(channels_of(None, None).is_err());
        assert!(channels_of(Some("a".into()), Some(vec!["b".into()])).is_err());
        assert!(channels_of(None, Some(vec!["a".into(), "a".into()])).is_err());
        assert!(matches!(
            channels_of(Some("bad channel".into()), None),
            Err(Fail(ErrorCode::BadChannel, _))
        ));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // No CDN, no external URL: the page runs from the binary alone.
        for needle in ["http://", "https://", "//cdn", "src=\"//"] {
            assert!(!PAGE.contains(needle), "admin.html contains {needle:?}");
        }
        // Data is never parsed as HTML.
        assert!(!PAGE.contains("innerHTML"), "admin.html uses innerHTML");
        assert!(PAGE.contains("nonce=\"__NONCE__\""));
    }
}
