//! The demo's HTTP routes in `herald dev` (never in `herald gateway` or
//! `herald ingest`): the page and its files, embedded in the binary, and two
//! STAND-INS FOR THE APPLICATION'S OWN ENDPOINTS, which a real app serves
//! from its backend after its own login:
//!
//! | route | what |
//! |---|---|
//! | `GET /` | 302 to `/demo` |
//! | `GET /demo` | the page (`demo/index.html`): role picker, visitor widget, operator dashboard |
//! | `GET /demo/demo.js`, `/demo/demo.css` | its script and style |
//! | `GET /demo/herald.js` | the `@herald/client` browser bundle (`clients/js`, `npm run bundle`) |
//! | `GET /demo/config` | the cast: websites, operators, whether the bot runs |
//! | `POST /demo/token` | stand-in token endpoint: `{"role":"visitor","site":"1","conversation"?}` or `{"role":"operator","operator":"1"}` -> `{"token",..}` signed with the dev secret |
//! | `GET /demo/api/history?channel=&after=&limit=` | stand-in history API (`Authorization: Bearer <demo token>`, the token must grant subscribe on the channel): how a page reloads an automatic subscription, or after `recovered:false` |
//!
//! Invariants: anyone who reaches `herald dev` can get an operator token
//! here, which is the point of a demo and why `herald dev` listens on
//! 127.0.0.1; the page loads nothing from elsewhere (a strict CSP, the SDK
//! served from the binary) and renders message data as text only.

use super::scenario::{self, Site};
use bytes::Bytes;
use herald_auth::{ConnClaims, GrantOp, Minter, Verifier};
use herald_ingest::IngestService;
use herald_ingest::http::{error, json};
use herald_protocol::{ChannelName, ErrorCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

type Resp = Response<Full<Bytes>>;

const INDEX: &str = include_str!("../demo/index.html");
const SCRIPT: &str = include_str!("../demo/demo.js");
const STYLE: &str = include_str!("../demo/demo.css");
/// A copy of `clients/js/dist/herald.browser.js`; CI checks it equals a
/// fresh bundle.
const SDK: &str = include_str!("../demo/herald.js");

/// Largest token request body.
const MAX_BODY: usize = 4096;
/// Default and largest history page of the stand-in API.
const HISTORY_DEFAULT: u32 = 100;
const HISTORY_MAX: u32 = 1000;

/// Content-Security-Policy of the page: its own files only, WebSockets and
/// fetches to this origin, framed only by itself (the side-by-side view).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; frame-src 'self'; \
     frame-ancestors 'self'; base-uri 'none'; form-action 'none'";

/// The demo of one `herald dev`.
pub struct Demo {
    minter: Minter,
    verifier: Verifier,
    ingest: Arc<IngestService>,
    bot: bool,
}

/// Whether `path` is one of the demo's.
pub fn is_demo_path(path: &str) -> bool {
    path == "/" || path == "/demo" || path.starts_with("/demo/")
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn asset(body: &'static str, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    // Embedded in the binary: a rebuilt herald serves new files at once.
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    r
}

fn status(code: StatusCode, text: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = code;
    r
}

fn bad(message: &str) -> Resp {
    error(ErrorCode::BadRequest, message)
}

/// A field given as a string or a number (`"1"` or `1`).
fn id_field(body: &Value, key: &str) -> Option<String> {
    match body.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| herald_protocol::api::percent_decode(v, true))
    })
}

impl Demo {
    /// Mints with the dev secret (`minter`), checks the history API's
    /// tokens with the gateway's own rules (`verifier`).
    pub fn new(minter: Minter, verifier: Verifier, ingest: Arc<IngestService>, bot: bool) -> Self {
        Self {
            minter,
            verifier,
            ingest,
            bot,
        }
    }

    /// Answers a request for one of [`is_demo_path`]'s paths.
    pub async fn handle(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        match path.as_str() {
            "/" if get => {
                let mut r = status(StatusCode::FOUND, "see /demo\n");
                r.headers_mut().insert(
                    http::header::LOCATION,
                    http::HeaderValue::from_static("/demo"),
                );
                r
            }
            "/demo" | "/demo/" if get => {
                let mut r = asset(INDEX, "text/html; charset=utf-8");
                let h = r.headers_mut();
                h.insert(
                    http::header::CONTENT_SECURITY_POLICY,
                    http::HeaderValue::from_static(CSP),
                );
                h.insert(
                    http::header::REFERRER_POLICY,
                    http::HeaderValue::from_static("no-referrer"),
                );
                r
            }
            "/demo/demo.js" if get => asset(SCRIPT, "text/javascript; charset=utf-8"),
            "/demo/herald.js" if get => asset(SDK, "text/javascript; charset=utf-8"),
            "/demo/demo.css" if get => asset(STYLE, "text/css; charset=utf-8"),
            "/demo/config" if get => json(StatusCode::OK, &self.config()),
            "/demo/token" if req.method() == Method::POST => self.token(req).await,
            "/demo/api/history" if get => self.history(&req).await,
            "/" | "/demo" | "/demo/" | "/demo/demo.js" | "/demo/herald.js" | "/demo/demo.css"
            | "/demo/config" | "/demo/token" | "/demo/api/history" => {
                status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => status(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn config(&self) -> Value {
        json!({
            "sites": scenario::SITES.iter()
                .map(|s| json!({"id": s.id, "name": s.name, "dashboard": scenario::dashboard_channel(s)}))
                .collect::<Vec<_>>(),
            "operators": scenario::OPERATORS.iter()
                .map(|o| json!({"id": o.id, "username": o.username, "name": o.name,
                    "sub": format!("op:{}", o.id), "inbox": scenario::chat_channel(o.username)}))
                .collect::<Vec<_>>(),
            "bot": self.bot,
            "bot_sub": scenario::BOT_SUB,
        })
    }

    /// The stand-in token endpoint. A real app mints after its own login,
    /// for the user it knows; here the caller says who it wants to be.
    async fn token(&self, req: Request<Incoming>) -> Resp {
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => return bad("the body must be a JSON object of at most 4096 bytes"),
        };
        let Ok(body) = serde_json::from_slice::<Value>(&body) else {
            return bad("the body must be JSON");
        };
        let (spec, answer) = match body.get("role").and_then(Value::as_str) {
            Some("visitor") => {
                let Some(site) = id_field(&body, "site").and_then(|s| scenario::site(&s)) else {
                    return bad("site must be one of the demo's websites (1 or 2)");
                };
                let conversation = match body.get("conversation") {
                    None | Some(Value::Null) => new_conversation(site),
                    Some(Value::String(c)) => c.clone(),
                    Some(_) => return bad("conversation must be a string"),
                };
                if scenario::conversation_site(&conversation) != Some(site) {
                    return bad(
                        "conversation must be site<N>-<1 to 64 of A-Z a-z 0-9 _ -> with N the site",
                    );
                }
                let answer = json!({
                    "sub": format!("visitor:{conversation}"),
                    "conversation": conversation,
                    "channel": scenario::chat_channel(&conversation),
                    "site": {"id": site.id, "name": site.name},
                });
                (scenario::visitor_token(&conversation, site), answer)
            }
            Some("operator") => {
                let Some(op) = id_field(&body, "operator").and_then(|o| scenario::operator(&o))
                else {
                    return bad("operator must be 1 or 2");
                };
                let answer = json!({
                    "sub": format!("op:{}", op.id),
                    "operator": {"id": op.id, "username": op.username, "name": op.name},
                    "inbox": scenario::chat_channel(op.username),
                    "dashboards": scenario::SITES.iter().map(scenario::dashboard_channel).collect::<Vec<_>>(),
                });
                (scenario::operator_token(op), answer)
            }
            _ => return bad("role must be \"visitor\" or \"operator\""),
        };
        let token = match self.minter.mint(&spec.to_claims(now_unix())) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "demo: cannot mint a token");
                return error(ErrorCode::Internal, "cannot mint a token");
            }
        };
        let mut answer = answer;
        if let Some(o) = answer.as_object_mut() {
            o.insert("token".into(), json!(token));
            o.insert("expires_in".into(), json!(scenario::TOKEN_TTL.as_secs()));
        }
        json(StatusCode::OK, &answer)
    }

    fn claims(&self, req: &Request<Incoming>) -> Option<ConnClaims> {
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        self.verifier.verify(token.trim()).ok()
    }

    /// The stand-in history API: one page of a channel the token may
    /// subscribe to.
    async fn history(&self, req: &Request<Incoming>) -> Resp {
        let Some(claims) = self.claims(req) else {
            return error(
                ErrorCode::Unauthorized,
                "a valid demo token is needed (Authorization: Bearer)",
            );
        };
        let query = req.uri().query().unwrap_or("");
        let raw = query_param(query, "channel").unwrap_or_default();
        let channel = match ChannelName::new(&raw) {
            Ok(c) => c,
            Err(e) => return error(ErrorCode::BadChannel, &format!("{raw:?}: {e}")),
        };
        if !claims.allows(GrantOp::Subscribe, &channel) {
            return error(ErrorCode::Forbidden, "the token may not read this channel");
        }
        let after = match query_param(query, "after").map(|s| s.parse::<u64>()) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => return bad("after must be a seq"),
        };
        let limit = match query_param(query, "limit").map(|s| s.parse::<u32>()) {
            None => HISTORY_DEFAULT,
            Some(Ok(n)) if (1..=HISTORY_MAX).contains(&n) => n,
            Some(_) => return bad("limit must be 1 to 1000"),
        };
        match self.ingest.history(&channel, after, limit).await {
            Ok(page) => json(StatusCode::OK, &page),
            Err(e) => error(e.code, &e.message),
        }
    }
}

/// A new conversation id of `site`: `site<N>-<10 hex digits>`.
fn new_conversation(site: &Site) -> String {
    let n: u64 = rand::random();
    format!("site{}-{:010x}", site.id, n & 0xff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_conversations_belong_to_their_site() {
        for site in &scenario::SITES {
            let c = new_conversation(site);
            assert_eq!(scenario::conversation_site(&c), Some(site), "{c}");
        }
    }

    #[test]
    fn query_params_are_decoded() {
        let q = "channel=dashboard_website_1&after=12&x";
        assert_eq!(
            query_param(q, "channel").as_deref(),
            Some("dashboard_website_1")
        );
        assert_eq!(query_param(q, "after").as_deref(), Some("12"));
        assert_eq!(
            query_param("channel=a%3Ab", "channel").as_deref(),
            Some("a:b")
        );
        assert_eq!(query_param(q, "limit"), None);
        assert_eq!(id_field(&json!({"site": 2}), "site").as_deref(), Some("2"));
        assert_eq!(
            id_field(&json!({"site": "1"}), "site").as_deref(),
            Some("1")
        );
        assert_eq!(id_field(&json!({"site": [1]}), "site"), None);
    }
}
