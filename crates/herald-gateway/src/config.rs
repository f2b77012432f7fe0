//! Gateway settings: PROTOCOL.md section 7 limits, routes and bus repair
//! timing. Parsed and validated by the `herald` binary; typed here.

use herald_protocol::{ChannelName, NameError, Pattern};
use std::time::Duration;

/// Every limit of PROTOCOL.md section 7 with its default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Seconds between server pings (25 s).
    pub heartbeat_interval: Duration,
    /// Close with 4408 after this long without any inbound frame (40 s).
    pub heartbeat_timeout: Duration,
    /// Largest inbound message after reassembly (64 KiB); beyond: 1009.
    pub max_frame_bytes: usize,
    /// Largest `data` JSON text (16 KiB); beyond: `too_large`.
    pub max_data_bytes: usize,
    /// Outbound queue bound per connection (1 MiB); beyond: 4008.
    pub max_queue_bytes: usize,
    /// Connections per node (100 000, lowered to the fd limit minus 1000).
    pub max_connections: usize,
    /// Connections per `sub` per node (1000).
    pub max_connections_per_user: usize,
    /// Token bucket refill per second (50).
    pub rate_per_second: u32,
    /// Token bucket size (100).
    pub rate_burst: u32,
    /// SIGTERM drain window (10 s).
    pub drain_window: Duration,
    /// Most messages a `since` may be behind before `recovered:false` (10 000).
    pub max_replay: u64,
    /// Per-node subscriber caps by channel pattern; the longest matching
    /// pattern applies.
    pub channel_caps: Vec<(Pattern, usize)>,
    /// Subscriptions one connection may hold (herald's own knob, 1000);
    /// beyond: `limit_reached`.
    pub max_subscriptions_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(40),
            max_frame_bytes: 65536,
            max_data_bytes: 16384,
            max_queue_bytes: 1_048_576,
            max_connections: 100_000,
            max_connections_per_user: 1000,
            rate_per_second: 50,
            rate_burst: 100,
            drain_window: Duration::from_secs(10),
            max_replay: 10_000,
            channel_caps: Vec::new(),
            max_subscriptions_per_connection: 1000,
        }
    }
}

impl Limits {
    /// The subscriber cap for a channel: the longest matching pattern's.
    pub fn channel_cap(&self, channel: &str) -> Option<usize> {
        self.channel_caps
            .iter()
            .filter(|(p, _)| p.matches(channel))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, cap)| *cap)
    }
}

/// A configured WebSocket route adding automatic subscriptions, e.g.
/// `path = "/ws/chat/{conversation_id}"`, `channels = ["chat_{conversation_id}"]`.
#[derive(Debug, Clone)]
pub struct Route {
    segments: Vec<Segment>,
    channels: Vec<String>,
    path: String,
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A route that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The path does not start with `/`, or has an empty `{}`.
    #[error("route path {0:?} must start with / and name its parameters, e.g. /ws/chat/{{id}}")]
    BadPath(String),
    /// A channel template names a parameter the path does not have.
    #[error("route channel {channel:?} uses {{{param}}}, which path {path:?} does not define")]
    UnknownParam {
        /// The template.
        channel: String,
        /// The parameter.
        param: String,
        /// The path.
        path: String,
    },
    /// A channel template that cannot produce a valid name.
    #[error("route channel {0:?} is not a valid channel template")]
    BadChannel(String),
}

impl Route {
    /// Parses and checks a route.
    pub fn new(path: &str, channels: &[String]) -> Result<Self, RouteError> {
        if !path.starts_with('/') {
            return Err(RouteError::BadPath(path.into()));
        }
        let mut segments = Vec::new();
        for seg in path.trim_start_matches('/').split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if name.is_empty() {
                    return Err(RouteError::BadPath(path.into()));
                }
                segments.push(Segment::Param(name.into()));
            } else {
                segments.push(Segment::Literal(seg.into()));
            }
        }
        for ch in channels {
            // Every {param} must exist; the literal parts must be valid.
            let mut rest = ch.as_str();
            let mut literal = String::new();
            while let Some(open) = rest.find('{') {
                literal.push_str(&rest[..open]);
                let Some(close) = rest[open..].find('}') else {
                    return Err(RouteError::BadChannel(ch.clone()));
                };
                let param = &rest[open + 1..open + close];
                if !segments
                    .iter()
                    .any(|s| matches!(s, Segment::Param(p) if p == param))
                {
                    return Err(RouteError::UnknownParam {
                        channel: ch.clone(),
                        param: param.into(),
                        path: path.into(),
                    });
                }
                literal.push('x');
                rest = &rest[open + close + 1..];
            }
            literal.push_str(rest);
            ChannelName::new(&literal).map_err(|_| RouteError::BadChannel(ch.clone()))?;
        }
        Ok(Self {
            segments,
            channels: channels.to_vec(),
            path: path.into(),
        })
    }

    /// The configured path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The channels for a request path, when it matches this route.
    /// `Some(Err)` when it matches but a parameter makes an invalid name.
    pub fn channels_for(&self, path: &str) -> Option<Result<Vec<ChannelName>, NameError>> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params: Vec<(&str, &str)> = Vec::new();
        for (seg, part) in self.segments.iter().zip(&parts) {
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.as_str(), part)),
            }
        }
        let mut out = Vec::with_capacity(self.channels.len());
        for tpl in &self.channels {
            // One pass over the template: a value that spells another
            // parameter (`{user}`) is not substituted again.
            let mut name = String::with_capacity(tpl.len());
            let mut rest = tpl.as_str();
            while let Some(open) = rest.find('{') {
                name.push_str(&rest[..open]);
                let after = &rest[open + 1..];
                match after.find('}').and_then(|close| {
                    let key = &after[..close];
                    params
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| (close, *v))
                }) {
                    Some((close, v)) => {
                        name.push_str(v);
                        rest = &after[close + 1..];
                    }
                    None => {
                        name.push('{');
                        rest = after;
                    }
                }
            }
            name.push_str(rest);
            match ChannelName::new(&name) {
                Ok(c) => out.push(c),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(out))
    }
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Name in `welcome.node` and metrics.
    pub node_id: String,
    /// PROTOCOL.md section 7 limits.
    pub limits: Limits,
    /// Extra WebSocket paths with automatic subscriptions.
    pub routes: Vec<Route>,
    /// How long an out-of-order message waits for the missing earlier seq
    /// before the gap is filled from history (herald's knob, 200 ms).
    pub gap_timeout: Duration,
    /// How often subscribed channels' latest seqs are checked against ingest
    /// (`[bus] catchup_interval`, 5 s).
    pub catchup_interval: Duration,
    /// Timeout of each call to ingest (herald's knob, 10 s).
    pub ingest_timeout: Duration,
    /// `[presence] ttl`: entries of a node that died expire within it; live
    /// entries are refreshed every third of it.
    pub presence_ttl: Duration,
    /// `[gateway] allowed_origins`: browser origins allowed to upgrade.
    pub allowed_origins: AllowedOrigins,
    /// What the `[[webhooks]]` endpoints want of client events (join,
    /// leave, connect, disconnect); empty: none is reported.
    pub webhook_events: Vec<crate::events::EventFilter>,
}

/// `[gateway] allowed_origins`: the browser origins that may open a
/// WebSocket, against cross-site WebSocket hijacking (a page on another
/// site using the visitor's cookies or ambient credentials). Empty: any
/// origin. A request without `Origin` is not from a browser page and is
/// allowed: the check guards browsers, tokens guard everything.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    /// Lower-cased `scheme://host[:port]`, or `scheme://*.suffix`.
    list: Vec<String>,
}

impl AllowedOrigins {
    /// Checks and normalizes a configured list; the error names the entry.
    pub fn new(list: &[String]) -> Result<Self, String> {
        let mut out = Vec::with_capacity(list.len());
        for o in list {
            let lower = o.trim().trim_end_matches('/').to_ascii_lowercase();
            let ok = lower.split_once("://").is_some_and(|(scheme, host)| {
                !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
                    && !host.is_empty()
                    && !host.contains('/')
                    && !host.strip_prefix("*.").unwrap_or(host).contains('*')
            });
            if !ok {
                return Err(format!(
                    "allowed origin {o:?} must look like https://app.example.com[:port] or https://*.example.com"
                ));
            }
            out.push(lower);
        }
        Ok(Self { list: out })
    }

    /// Whether an upgrade with this `Origin` header (if any) may go on.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.list.is_empty() {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        self.list
            .iter()
            .any(|allowed| match allowed.split_once("://*.") {
                Some((scheme, suffix)) => origin
                    .strip_prefix(scheme)
                    .and_then(|r| r.strip_prefix("://"))
                    .and_then(|host| host.strip_suffix(suffix))
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => *allowed == origin,
            })
    }

    /// Whether a list is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            node_id: "herald".into(),
            limits: Limits::default(),
            routes: Vec::new(),
            gap_timeout: Duration::from_millis(200),
            catchup_interval: Duration::from_secs(5),
            ingest_timeout: Duration::from_secs(10),
            presence_ttl: Duration::from_secs(30),
            allowed_origins: AllowedOrigins::default(),
            webhook_events: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let any = AllowedOrigins::default();
        assert!(any.allows(Some("https://evil.example")));
        assert!(any.allows(None));
        let o = AllowedOrigins::new(&[
            "https://App.example.com/".into(),
            "http://localhost:8080".into(),
            "https://*.example.org".into(),
        ])
        .unwrap();
        assert!(o.allows(Some("https://app.example.com")));
        assert!(o.allows(Some("HTTPS://APP.EXAMPLE.COM")));
        assert!(o.allows(Some("http://localhost:8080")));
        assert!(o.allows(Some("https://a.b.example.org")));
        assert!(o.allows(None), "non-browser clients send no Origin");
        for bad in [
            "https://evil.example",
            "http://app.example.com",
            "https://app.example.com.evil.example",
            "http://localhost:8081",
            "https://example.org",
            "https://evilexample.org",
            "null",
            "",
        ] {
            assert!(!o.allows(Some(bad)), "{bad}");
        }
        for bad in [
            "example.com",
            "https://",
            "https://a.example/path",
            "https://a*.example",
        ] {
            assert!(AllowedOrigins::new(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_matching() {
        let r = Route::new(
            "/ws/chat/{conversation_id}",
            &["chat_{conversation_id}".into()],
        )
        .unwrap();
        let got = r.channels_for("/ws/chat/42").unwrap().unwrap();
        assert_eq!(got[0].as_str(), "chat_42");
        assert!(r.channels_for("/ws/chat").is_none());
        assert!(r.channels_for("/ws/other/42").is_none());
        assert!(r.channels_for("/ws/chat/a%20b").unwrap().is_err());
        assert!(Route::new("/ws/x/{a}", &["c_{b}".into()]).is_err());
        assert!(Route::new("ws", &[]).is_err());
    }

    #[test]
    fn longest_cap_wins() {
        let l = Limits {
            channel_caps: vec![
                (Pattern::new("chat_*").unwrap(), 50),
                (Pattern::new("chat_vip_*").unwrap(), 5),
            ],
            ..Limits::default()
        };
        assert_eq!(l.channel_cap("chat_1"), Some(50));
        assert_eq!(l.channel_cap("chat_vip_1"), Some(5));
        assert_eq!(l.channel_cap("room_1"), None);
    }
}
