//! Helpers shared by herald's end-to-end suites (`tests/tests/*.rs`).
//!
//! The suites drive real `herald` processes (started by `herald-testkit`)
//! over the wire and judge them against PROTOCOL.md. They never use herald's
//! own crates: frames are read as generic values (`serde_json::Value` for
//! `herald.json`, `rmpv::Value` for `herald.msgpack`) and tokens are minted
//! with `jsonwebtoken` directly, so a codec or auth bug in herald cannot hide
//! itself behind the same bug in the test.
//!
//! # Layout
//! - tokens: [`TokenBuilder`], [`subscription_token`], [`alg_none_token`].
//! - [`Connect`] / [`Client`]: a tokio-tungstenite client (JSON or
//!   MessagePack) with bounded reads, request/reply matching and close-code
//!   checks. One client for every suite.
//! - [`RawWs`]: a hand-made WebSocket client on a bare `TcpStream` for the
//!   clients that must never write anything (no automatic pong): heartbeat
//!   timeout and slow-consumer tests.
//! - [`Api`]: the ingest HTTP API (PROTOCOL.md section 8) through reqwest.
//! - msgpack: [`json_to_mp`], [`mp_to_json`] (strict: a value with no JSON
//!   form is an error, as PROTOCOL.md section 5a demands of the server).
//! - [`LogsOnPanic`]: the tail of each herald log of a topology when a
//!   test panics.
//! - browser: [`browser_prerequisites`], [`run_browser_script`] (the
//!   `tests/browser` scripts in headless Chromium).
//!
//! Every wait here has a deadline; nothing sleeps for a fixed time.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use herald_testkit::{HeraldOptions, HeraldProcess, eventually, free_port};

/// Default bound for one expected frame or HTTP answer. Generous: the suites
/// run in parallel on two cores next to several herald processes.
pub const STEP: Duration = Duration::from_secs(10);

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(d.as_millis()).expect("milliseconds since 1970 fit in i64")
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Options for `herald dev` with extra CLI arguments.
pub fn dev_options(args: &[&str]) -> HeraldOptions {
    HeraldOptions {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Starts `herald dev` with extra CLI arguments and waits until it is ready.
pub async fn start_dev(args: &[&str]) -> HeraldProcess {
    HeraldProcess::start(dev_options(args)).await
}

/// On panic, prints the last `tail` lines of each named herald log
/// (`HeraldProcess` writes `<dir>/herald.log`). Declare it after the
/// processes: it must drop before their temp dirs.
#[derive(Debug)]
pub struct LogsOnPanic {
    tail: usize,
    logs: Vec<(String, PathBuf)>,
}

impl LogsOnPanic {
    /// A guard printing `tail` lines of each of `nodes`' logs.
    pub fn new(tail: usize, nodes: &[(&str, &HeraldProcess)]) -> LogsOnPanic {
        let mut guard = LogsOnPanic {
            tail,
            logs: Vec::new(),
        };
        for (name, p) in nodes {
            guard.add(name, p);
        }
        guard
    }

    /// Adds `p`'s log, printed under `name`.
    pub fn add(&mut self, name: &str, p: &HeraldProcess) {
        self.logs.push((name.into(), p.dir().join("herald.log")));
    }
}

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let n = self.tail;
        for (name, path) in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(n)..].join("\n");
            eprintln!(
                "----- {name}: last {n} lines of {} -----\n{tail}",
                path.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens (PROTOCOL.md section 3)
// ---------------------------------------------------------------------------

/// Builds JWT claims and signs them with HS256.
#[derive(Debug, Clone)]
pub struct TokenBuilder {
    claims: Map<String, Value>,
}

impl TokenBuilder {
    /// `{"sub": sub, "exp": now + 1 h}`.
    pub fn new(sub: &str) -> TokenBuilder {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(sub));
        claims.insert("exp".into(), json!(now_secs() + 3600));
        TokenBuilder { claims }
    }

    /// The `channels` claim (automatic subscriptions).
    pub fn channels(self, channels: &[&str]) -> TokenBuilder {
        self.claim("channels", json!(channels))
    }

    /// Adds `allow.<op>` = patterns.
    pub fn allow(mut self, op: &str, patterns: &[&str]) -> TokenBuilder {
        let allow = self
            .claims
            .entry("allow")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = allow {
            m.insert(op.into(), json!(patterns));
        }
        self
    }

    /// Every op on every channel (`"*"` matches any channel name).
    pub fn allow_all(self) -> TokenBuilder {
        self.allow("subscribe", &["*"])
            .allow("publish", &["*"])
            .allow("signal", &["*"])
            .allow("presence", &["*"])
    }

    /// The `info` claim.
    pub fn info(self, info: Value) -> TokenBuilder {
        self.claim("info", info)
    }

    /// `exp` as seconds since the epoch.
    pub fn exp(self, at: i64) -> TokenBuilder {
        self.claim("exp", json!(at))
    }

    /// Sets any claim.
    pub fn claim(mut self, key: &str, value: Value) -> TokenBuilder {
        self.claims.insert(key.into(), value);
        self
    }

    /// Removes a claim.
    pub fn without(mut self, key: &str) -> TokenBuilder {
        self.claims.remove(key);
        self
    }

    /// The claims as a JSON object.
    pub fn claims(&self) -> Value {
        Value::Object(self.claims.clone())
    }

    /// HS256 with `secret`.
    pub fn sign(&self, secret: &str) -> String {
        sign_claims(&self.claims(), secret)
    }
}

/// Signs any claims object with HS256.
pub fn sign_claims(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of a JSON object cannot fail")
}

/// A subscription token: `{"sub", "channel", "exp"}` (PROTOCOL.md section 3).
pub fn subscription_token(secret: &str, sub: &str, channel: &str, exp: i64) -> String {
    sign_claims(&json!({"sub": sub, "channel": channel, "exp": exp}), secret)
}

/// A hand-crafted unsigned token with header `{"alg":"none"}` and an empty
/// signature part.
pub fn alg_none_token(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

/// Decodes and verifies an HS256 token; the claims or the error text.
pub fn verify_hs256(token: &str, secret: &str) -> Result<Value, String> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.leeway = 0;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &v,
    )
    .map(|d| d.claims)
    .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// MessagePack <-> JSON values
// ---------------------------------------------------------------------------

/// A JSON value as the same MessagePack value (maps with string keys).
pub fn json_to_mp(v: &Value) -> rmpv::Value {
    match v {
        Value::Null => rmpv::Value::Nil,
        Value::Bool(b) => rmpv::Value::Boolean(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                rmpv::Value::from(u)
            } else if let Some(i) = n.as_i64() {
                rmpv::Value::from(i)
            } else {
                rmpv::Value::F64(n.as_f64().expect("a JSON number is u64, i64 or f64"))
            }
        }
        Value::String(s) => rmpv::Value::from(s.as_str()),
        Value::Array(a) => rmpv::Value::Array(a.iter().map(json_to_mp).collect()),
        Value::Object(m) => rmpv::Value::Map(
            m.iter()
                .map(|(k, v)| (rmpv::Value::from(k.as_str()), json_to_mp(v)))
                .collect(),
        ),
    }
}

/// A MessagePack value as JSON; an error for anything without a JSON form
/// (binary, extension types, non-string or invalid UTF-8 keys and strings,
/// NaN and infinities).
pub fn mp_to_json(v: &rmpv::Value) -> Result<Value, String> {
    Ok(match v {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => Value::Bool(*b),
        rmpv::Value::Integer(i) => {
            if let Some(u) = i.as_u64() {
                json!(u)
            } else if let Some(s) = i.as_i64() {
                json!(s)
            } else {
                return Err(format!("integer out of range: {i}"));
            }
        }
        rmpv::Value::F32(f) => serde_json::Number::from_f64(f64::from(*f))
            .map(Value::Number)
            .ok_or_else(|| format!("float with no JSON form: {f}"))?,
        rmpv::Value::F64(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("float with no JSON form: {f}"))?,
        rmpv::Value::String(s) => Value::String(
            s.as_str()
                .ok_or_else(|| format!("invalid UTF-8 in a msgpack string: {s:?}"))?
                .to_string(),
        ),
        rmpv::Value::Binary(b) => {
            return Err(format!(
                "msgpack binary ({} bytes) has no JSON form",
                b.len()
            ));
        }
        rmpv::Value::Array(a) => Value::Array(a.iter().map(mp_to_json).collect::<Result<_, _>>()?),
        rmpv::Value::Map(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    rmpv::Value::String(s) => s
                        .as_str()
                        .ok_or_else(|| format!("invalid UTF-8 in a msgpack map key: {s:?}"))?
                        .to_string(),
                    other => return Err(format!("msgpack map key that is not a string: {other}")),
                };
                out.insert(key, mp_to_json(v)?);
            }
            Value::Object(out)
        }
        rmpv::Value::Ext(t, b) => {
            return Err(format!(
                "msgpack extension type {t} ({} bytes) has no JSON form",
                b.len()
            ));
        }
    })
}

/// Encodes one MessagePack value.
pub fn encode_mp(v: &rmpv::Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).expect("writing msgpack into a Vec cannot fail");
    out
}

/// Decodes exactly one MessagePack value (trailing bytes are an error).
pub fn decode_mp(bytes: &[u8]) -> Result<rmpv::Value, String> {
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd).map_err(|e| format!("invalid msgpack: {e}"))?;
    if !rd.is_empty() {
        return Err(format!(
            "{} trailing bytes after the msgpack value",
            rd.len()
        ));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

/// The subprotocol a [`Client`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `herald.json`: text frames.
    Json,
    /// `herald.msgpack`: binary frames.
    Msgpack,
}

impl Encoding {
    /// The subprotocol name.
    pub fn protocol(self) -> &'static str {
        match self {
            Encoding::Json => "herald.json",
            Encoding::Msgpack => "herald.msgpack",
        }
    }
}

/// What the server sent next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A data frame, decoded according to the connection's encoding.
    Frame(Value),
    /// A close frame: code (None for a close without a body) and reason.
    Close(Option<u16>, String),
    /// The stream ended or failed without a close frame.
    End(String),
}

/// How to open a WebSocket connection to herald.
#[derive(Debug, Clone)]
pub struct Connect {
    port: u16,
    path: String,
    query: Vec<(String, String)>,
    bearer: Option<String>,
    protocol: Option<String>,
}

/// The HTTP response of a completed handshake.
pub type HandshakeResponse = tungstenite::handshake::client::Response;

impl Connect {
    /// `ws://127.0.0.1:PORT/ws` of `herald`, no token, no subprotocol offer.
    pub fn new(herald: &HeraldProcess) -> Connect {
        Connect::port(herald.port)
    }

    /// `ws://127.0.0.1:PORT/ws`.
    pub fn port(port: u16) -> Connect {
        Connect {
            port,
            path: "/ws".into(),
            query: Vec::new(),
            bearer: None,
            protocol: None,
        }
    }

    /// Another path (routes), e.g. `/ws/chat/42`.
    pub fn path(mut self, path: &str) -> Connect {
        self.path = path.into();
        self
    }

    /// The token as the `token` query parameter.
    pub fn token(self, token: &str) -> Connect {
        self.query("token", token)
    }

    /// Any query parameter (URL-encoded here).
    pub fn query(mut self, key: &str, value: &str) -> Connect {
        self.query.push((key.into(), value.into()));
        self
    }

    /// The token as `Authorization: Bearer`.
    pub fn bearer(mut self, token: &str) -> Connect {
        self.bearer = Some(token.into());
        self
    }

    /// The raw `Sec-WebSocket-Protocol` offer, e.g. `herald.msgpack` or
    /// `foo, herald.json`.
    pub fn protocol(mut self, offer: &str) -> Connect {
        self.protocol = Some(offer.into());
        self
    }

    /// Offers `herald.msgpack`.
    pub fn msgpack(self) -> Connect {
        self.protocol("herald.msgpack")
    }

    /// Offers `encoding`'s subprotocol (`herald.json` is offered explicitly).
    pub fn encoding(self, encoding: Encoding) -> Connect {
        self.protocol(encoding.protocol())
    }

    /// The URL this connects to.
    pub fn url(&self) -> String {
        let mut url = format!("ws://127.0.0.1:{}{}", self.port, self.path);
        for (i, (k, v)) in self.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&percent_encode(k));
            url.push('=');
            url.push_str(&percent_encode(v));
        }
        url
    }

    /// Performs the handshake. The encoding is the subprotocol the server
    /// echoed (`herald.json` when none).
    pub async fn try_open(self) -> Result<(Client, HandshakeResponse), tungstenite::Error> {
        let url = self.url();
        let mut req = url.as_str().into_client_request()?;
        if let Some(p) = &self.protocol {
            req.headers_mut().insert(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                p.parse()
                    .expect("a test's subprotocol offer is a valid header value"),
            );
        }
        if let Some(t) = &self.bearer {
            req.headers_mut().insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}")
                    .parse()
                    .expect("a JWT is a valid header value"),
            );
        }
        let (ws, resp) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| {
                panic!("WebSocket handshake with {url} took longer than {STEP:?}")
            })?;
        let encoding = match resp
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
        {
            Some("herald.msgpack") => Encoding::Msgpack,
            _ => Encoding::Json,
        };
        Ok((
            Client {
                ws,
                encoding,
                pending: VecDeque::new(),
                next_id: 1000,
                url,
            },
            resp,
        ))
    }

    /// Performs the handshake; panics when it fails.
    pub async fn open(self) -> Client {
        let url = self.url();
        match self.try_open().await {
            Ok((c, _)) => c,
            Err(e) => panic!("WebSocket handshake with {url} failed: {e}"),
        }
    }

    /// Opens and reads the first frame, which must be a `welcome`.
    pub async fn ready(self) -> (Client, Value) {
        let mut c = self.open().await;
        let w = c.recv().await;
        assert_eq!(
            w["type"], "welcome",
            "first frame on {} is not a welcome: {w}",
            c.url
        );
        (c, w)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A WebSocket connection to herald reading frames as generic values.
///
/// Frames that arrive while [`Client::request`] waits for its reply are kept
/// in order and returned by the next reads.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol in use (from the handshake's echo).
    pub encoding: Encoding,
    pending: VecDeque<Value>,
    next_id: i64,
    url: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("encoding", &self.encoding)
            .finish()
    }
}

impl Client {
    /// A fresh request id (starts at 1000 so it never meets the small ids
    /// tests write by hand).
    pub fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends one frame in the connection's encoding (text JSON or binary
    /// MessagePack).
    pub async fn send(&mut self, frame: &Value) {
        let msg = match self.encoding {
            Encoding::Json => Message::text(frame.to_string()),
            Encoding::Msgpack => Message::binary(encode_mp(&json_to_mp(frame))),
        };
        self.send_message(msg).await;
    }

    /// Sends one frame as JSON text, whatever the encoding.
    pub async fn send_json(&mut self, frame: &Value) {
        self.send_message(Message::text(frame.to_string())).await;
    }

    /// Sends one MessagePack value as a binary frame, whatever the encoding.
    pub async fn send_mp(&mut self, frame: &rmpv::Value) {
        self.send_message(Message::binary(encode_mp(frame))).await;
    }

    /// Sends any message (raw frames included); panics when the write fails.
    pub async fn send_message(&mut self, msg: Message) {
        if let Err(e) = self.try_send_message(msg).await {
            panic!("sending on {} failed: {e}", self.url);
        }
    }

    /// Sends any message; the error when the write fails.
    pub async fn try_send_message(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        match tokio::time::timeout(STEP, self.ws.send(msg)).await {
            Ok(r) => r,
            Err(_) => panic!("sending on {} blocked for {STEP:?}", self.url),
        }
    }

    /// Reads the next event from the socket (ignoring pending frames);
    /// `None` when `timeout` passes first.
    async fn read_event(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Event::End("stream ended".into())),
                Ok(Some(Err(e))) => return Some(Event::End(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    assert_eq!(
                        self.encoding,
                        Encoding::Json,
                        "text frame on a herald.msgpack connection ({}): {t}",
                        self.url
                    );
                    let v: Value = serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("server frame is not JSON ({e}): {t}"));
                    assert!(v.is_object(), "server frame is not a JSON object: {v}");
                    return Some(Event::Frame(v));
                }
                Message::Binary(b) => {
                    assert_eq!(
                        self.encoding,
                        Encoding::Msgpack,
                        "binary frame on a herald.json connection ({}): {b:?}",
                        self.url
                    );
                    let mp = decode_mp(&b).unwrap_or_else(|e| panic!("server frame: {e}: {b:?}"));
                    assert!(mp.is_map(), "server msgpack frame is not a map: {mp}");
                    let v = mp_to_json(&mp)
                        .unwrap_or_else(|e| panic!("server msgpack frame {mp}: {e}"));
                    return Some(Event::Frame(v));
                }
                Message::Close(cf) => {
                    return Some(match cf {
                        Some(cf) => Event::Close(Some(u16::from(cf.code)), cf.reason.to_string()),
                        None => Event::Close(None, String::new()),
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The next event (pending frames first); `None` when `timeout` passes.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        if let Some(v) = self.pending.pop_front() {
            return Some(Event::Frame(v));
        }
        self.read_event(timeout).await
    }

    /// The next data frame within [`STEP`]; panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(STEP).await
    }

    /// The next data frame within `timeout`; panics on close or timeout.
    pub async fn recv_within(&mut self, timeout: Duration) -> Value {
        match self.next_event(timeout).await {
            Some(Event::Frame(v)) => v,
            Some(other) => panic!("expected a frame on {}, got {other:?}", self.url),
            None => panic!("no frame on {} within {timeout:?}", self.url),
        }
    }

    /// Skips frames until one matches `pred` (within [`STEP`] in all);
    /// returns it. Panics with `what` on close or timeout.
    pub async fn recv_until(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + STEP;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(v)) if pred(&v) => return v,
                Some(Event::Frame(v)) => skipped.push(v),
                Some(other) => panic!(
                    "waiting for {what} on {}: got {other:?}; skipped {skipped:?}",
                    self.url
                ),
                None => panic!(
                    "no {what} on {} within {STEP:?}; skipped {skipped:?}",
                    self.url
                ),
            }
        }
    }

    /// Sends `frame` (which carries an `id`) and returns the `reply` (or
    /// `pong`) with that id. Other frames are kept, in order, for later reads.
    pub async fn request(&mut self, frame: Value) -> Value {
        let id = frame["id"].clone();
        assert!(id.is_i64(), "request without an integer id: {frame}");
        self.send(&frame).await;
        self.wait_reply(&id).await
    }

    /// Waits for the `reply`/`pong` with `id`, keeping other frames.
    pub async fn wait_reply(&mut self, id: &Value) -> Value {
        let deadline = tokio::time::Instant::now() + STEP;
        let mut kept = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_event(left).await {
                Some(Event::Frame(v))
                    if (v["type"] == "reply" || v["type"] == "pong") && &v["id"] == id =>
                {
                    self.pending.extend(kept);
                    return v;
                }
                Some(Event::Frame(v)) => kept.push(v),
                Some(other) => panic!(
                    "waiting for the reply to id {id} on {}: got {other:?}; frames before: {kept:?}",
                    self.url
                ),
                None => panic!(
                    "no reply to id {id} on {} within {STEP:?}; frames meanwhile: {kept:?}",
                    self.url
                ),
            }
        }
    }

    /// `{"op": op, "id": <fresh>, ..fields}` and its reply.
    pub async fn call(&mut self, op: &str, fields: Value) -> Value {
        let id = self.next_id();
        let mut frame = Map::new();
        frame.insert("op".into(), json!(op));
        frame.insert("id".into(), json!(id));
        if let Value::Object(m) = fields {
            frame.extend(m);
        }
        self.request(Value::Object(frame)).await
    }

    /// Like [`Client::call`]; panics unless the reply has a `result`, which
    /// it returns.
    pub async fn call_ok(&mut self, op: &str, fields: Value) -> Value {
        let r = self.call(op, fields).await;
        assert!(r.get("error").is_none(), "{op} failed on {}: {r}", self.url);
        assert!(r.get("result").is_some(), "{op} reply without result: {r}");
        r["result"].clone()
    }

    /// Like [`Client::call`]; panics unless the reply is an error, whose
    /// `code` it returns. Also checks the error shape (`code`, `message`).
    pub async fn call_err(&mut self, op: &str, fields: Value) -> String {
        let r = self.call(op, fields).await;
        error_code(&r)
    }

    /// Subscribes; the reply's `result`.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.call_ok("subscribe", json!({ "channel": channel }))
            .await
    }

    /// Publishes; the reply's `result` (`id`, `seq`, `ts`).
    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.call_ok("publish", json!({ "channel": channel, "data": data }))
            .await
    }

    /// `ping` answered by a `pong` with the same id (the connection is alive
    /// and every frame before the pong has been read or kept).
    pub async fn ping(&mut self) {
        let id = self.next_id();
        let r = self.request(json!({"op": "ping", "id": id})).await;
        assert_eq!(r, json!({"type": "pong", "id": id}), "ping on {}", self.url);
    }

    /// Frames kept by [`Client::request`] and not read yet.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Reads until the close frame; panics unless its code is `code`.
    /// Returns the data frames read before it.
    pub async fn expect_close(&mut self, code: u16) -> Vec<Value> {
        self.expect_close_within(code, STEP).await
    }

    /// [`Client::expect_close`] with another deadline.
    pub async fn expect_close_within(&mut self, code: u16, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Frame(v)) => frames.push(v),
                Some(Event::Close(c, reason)) => {
                    assert_eq!(
                        c,
                        Some(code),
                        "close code on {} (reason {reason:?}); frames before: {frames:?}",
                        self.url
                    );
                    return frames;
                }
                Some(Event::End(e)) => panic!(
                    "{} ended without a close frame (expected {code}): {e}; frames before: {frames:?}",
                    self.url
                ),
                None => panic!(
                    "no close {code} on {} within {timeout:?}; frames meanwhile: {frames:?}",
                    self.url
                ),
            }
        }
    }

    /// Expects a `disconnect` frame with `code` (after any other frames),
    /// then the close frame with the same code. Returns the disconnect frame.
    pub async fn expect_disconnect(&mut self, code: u16) -> Value {
        self.expect_disconnect_within(code, STEP).await
    }

    /// [`Client::expect_disconnect`] with another deadline.
    pub async fn expect_disconnect_within(&mut self, code: u16, timeout: Duration) -> Value {
        let frames = self.expect_close_within(code, timeout).await;
        let last = frames.last().cloned().unwrap_or(Value::Null);
        assert_eq!(
            last["type"], "disconnect",
            "the last frame before close {code} on {} must be a disconnect; frames: {frames:?}",
            self.url
        );
        assert_eq!(last["code"], code, "disconnect frame: {last}");
        assert!(
            last["reason"].is_string(),
            "disconnect without a reason: {last}"
        );
        assert!(
            last["reconnect"].is_boolean(),
            "disconnect without reconnect: {last}"
        );
        last
    }

    /// Starts the closing handshake with `code`.
    pub async fn send_close(&mut self, code: u16) {
        use tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        self.send_message(Message::Close(Some(frame))).await;
    }

    /// Sends a normal close (1000) and reads until the server's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(STEP, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Asserts `reply` is an error reply with a well-formed `error` object;
/// returns its `code`.
pub fn error_code(reply: &Value) -> String {
    assert_eq!(reply["type"], "reply", "not a reply: {reply}");
    assert!(
        reply.get("result").is_none(),
        "expected an error, got {reply}"
    );
    let e = &reply["error"];
    assert!(
        e["code"].is_string(),
        "error without a string code: {reply}"
    );
    assert!(
        e["message"].is_string(),
        "error without a string message: {reply}"
    );
    e["code"].as_str().unwrap_or_default().to_string()
}

/// The `seq` of a `message` frame on `channel`, if `v` is one.
pub fn message_seq(v: &Value, channel: &str) -> Option<u64> {
    if v["type"] == "message" && v["channel"] == channel {
        v["seq"].as_u64()
    } else {
        None
    }
}

/// A JSON string value of exactly `json_len` bytes of JSON text (quotes
/// included).
pub fn json_string_of_len(json_len: usize) -> Value {
    assert!(json_len >= 2);
    Value::String("x".repeat(json_len - 2))
}

// ---------------------------------------------------------------------------
// Raw WebSocket client
// ---------------------------------------------------------------------------

/// One frame read by [`RawWs`].
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (1 text, 2 binary, 8 close, 9 ping, 10 pong, 0 continuation).
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The close code of a close frame with a body.
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode == 8 && self.payload.len() >= 2 {
            Some(u16::from_be_bytes([self.payload[0], self.payload[1]]))
        } else {
            None
        }
    }

    /// A text frame's payload as JSON.
    pub fn json(&self) -> Option<Value> {
        if self.opcode == 1 {
            serde_json::from_slice(&self.payload).ok()
        } else {
            None
        }
    }
}

/// A WebSocket client on a bare TCP socket that writes only what the test
/// tells it to: it never answers pings, so it looks dead to the heartbeat,
/// and it reads only when asked, so it can play a stuck client.
#[derive(Debug)]
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects to 127.0.0.1:`port` and upgrades `path_and_query`. With
    /// `recv_buffer`, SO_RCVBUF is set before connecting (a small window makes
    /// a non-reading client back up fast). Panics unless the answer is 101.
    pub async fn connect(
        port: u16,
        path_and_query: &str,
        protocol: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> RawWs {
        let sock = tokio::net::TcpSocket::new_v4().expect("creating a TCP socket");
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).expect("setting SO_RCVBUF");
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = tokio::time::timeout(STEP, sock.connect(addr))
            .await
            .expect("TCP connect to herald timed out")
            .expect("TCP connect to herald");
        let mut req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n"
        );
        if let Some(p) = protocol {
            req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("writing the upgrade request");
        let mut buf = Vec::new();
        let end = tokio::time::timeout(STEP, async {
            loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let mut chunk = [0u8; 1024];
                let n = stream
                    .read(&mut chunk)
                    .await
                    .expect("reading the upgrade answer");
                assert!(
                    n > 0,
                    "connection closed during the upgrade: {:?}",
                    String::from_utf8_lossy(&buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("upgrade answer timed out");
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade of {path_and_query} refused: {head}"
        );
        let rest = buf.split_off(end);
        RawWs { stream, buf: rest }
    }

    /// Writes one masked frame.
    pub async fn write_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let first = if fin { 0x80 } else { 0 } | (opcode & 0x0f);
        self.write_raw(&encode_raw_frame(first, true, payload))
            .await;
    }

    /// Writes bytes as they are (hand-made, possibly malformed frames).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("writing raw bytes");
    }

    /// Reads until `buf` holds `need` bytes; `Ok(false)` at EOF. Cancel-safe:
    /// bytes read stay in `buf`, and a frame is parsed from its start.
    async fn fill(&mut self, need: usize) -> Result<bool, RawReadError> {
        while self.buf.len() < need {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| RawReadError::Io(e.to_string()))?;
            if n == 0 {
                return Ok(false);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(true)
    }

    /// Reads one frame; `Ok(None)` at EOF.
    pub async fn read_frame(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<RawFrame>, RawReadError> {
        match tokio::time::timeout(timeout, self.read_frame_inner()).await {
            Ok(r) => r,
            Err(_) => Err(RawReadError::Timeout(timeout)),
        }
    }

    async fn read_frame_inner(&mut self) -> Result<Option<RawFrame>, RawReadError> {
        if !self.fill(2).await? {
            return Ok(None);
        }
        let fin = self.buf[0] & 0x80 != 0;
        let opcode = self.buf[0] & 0x0f;
        let masked = self.buf[1] & 0x80 != 0;
        let len7 = usize::from(self.buf[1] & 0x7f);
        let (len, mut at) = match len7 {
            126 => {
                if !self.fill(4).await? {
                    return Ok(None);
                }
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                if !self.fill(10).await? {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (
                    usize::try_from(u64::from_be_bytes(b))
                        .map_err(|e| RawReadError::Protocol(e.to_string()))?,
                    10,
                )
            }
            n => (n, 2),
        };
        if masked {
            return Err(RawReadError::Protocol(
                "server frame is masked (RFC 6455 forbids it)".into(),
            ));
        }
        if !self.fill(at + len).await? {
            return Ok(None);
        }
        let payload = self.buf[at..at + len].to_vec();
        at += len;
        self.buf.drain(..at);
        Ok(Some(RawFrame {
            fin,
            opcode,
            payload,
        }))
    }

    /// Reads frames until a close frame; returns the frames before it and the
    /// close code. Panics on EOF, timeout or error before the close frame.
    pub async fn read_until_close(&mut self, timeout: Duration) -> (Vec<RawFrame>, Option<u16>) {
        match self.try_read_until_close(timeout).await {
            Ok(r) => r,
            Err(e) => panic!("raw client: {e}"),
        }
    }

    /// Like [`RawWs::read_until_close`]; an error (saying what was read)
    /// on EOF, timeout or a failed read before the close frame.
    pub async fn try_read_until_close(
        &mut self,
        timeout: Duration,
    ) -> Result<(Vec<RawFrame>, Option<u16>), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let why = match self.read_frame(left).await {
                Ok(Some(f)) if f.opcode == 8 => {
                    let code = f.close_code();
                    return Ok((frames, code));
                }
                Ok(Some(f)) => {
                    frames.push(f);
                    continue;
                }
                Ok(None) => "EOF".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(format!(
                "{why} before a close frame; {} frames read, last: {:?}",
                frames.len(),
                frames.last().map(summarize_raw)
            ));
        }
    }
}

/// One frame on the wire: `first` is the first header byte as is (FIN, RSV
/// bits, opcode); `masked` applies a fixed client mask.
pub fn encode_raw_frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(first);
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | u8::try_from(len).expect("len < 126"));
    } else if let Ok(l) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&l.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Why [`RawWs::read_frame`] returned no frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawReadError {
    /// Nothing complete arrived in time (the partial frame is kept).
    Timeout(Duration),
    /// The socket failed (e.g. reset).
    Io(String),
    /// The server broke RFC 6455.
    Protocol(String),
}

impl std::fmt::Display for RawReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawReadError::Timeout(t) => write!(f, "no frame within {t:?}"),
            RawReadError::Io(e) => write!(f, "read failed: {e}"),
            RawReadError::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

fn summarize_raw(f: &RawFrame) -> String {
    let text = String::from_utf8_lossy(&f.payload);
    let cut: String = text.chars().take(200).collect();
    format!(
        "opcode {} fin {} {} bytes: {cut}",
        f.opcode,
        f.fin,
        f.payload.len()
    )
}

// ---------------------------------------------------------------------------
// Ingest HTTP API
// ---------------------------------------------------------------------------

/// The ingest HTTP API of one herald (PROTOCOL.md section 8).
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    /// No connection reuse: a draining node may close idle connections.
    admin_http: reqwest::Client,
    base: String,
    admin: String,
    key: Option<String>,
}

impl Api {
    /// The API of `herald`, authorized with its API key.
    pub fn new(herald: &HeraldProcess) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("building a reqwest client"),
            admin_http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .expect("building a reqwest client"),
            base: herald.http_url(),
            admin: herald.admin_url(),
            key: Some(herald.api_key.clone()),
        }
    }

    /// The same API with another key (`None`: no Authorization header).
    pub fn with_key(&self, key: Option<&str>) -> Api {
        Api {
            key: key.map(str::to_string),
            ..self.clone()
        }
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn finish(rb: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
        let resp = rb.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what} body: {e}"));
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    /// `POST path` with a JSON body: status and body (JSON, or the text as a
    /// JSON string when it is not JSON, or null when empty).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let rb = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(body);
        Self::finish(rb, &format!("POST {path}")).await
    }

    /// `POST path` with a raw body and `content-type: application/json`.
    pub async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        let rb = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        Self::finish(rb, &format!("POST {path}")).await
    }

    /// `GET path` with query parameters.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let rb = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .query(query);
        Self::finish(rb, &format!("GET {path}")).await
    }

    /// The status of `GET` on the admin listener, `None` when it cannot be
    /// reached.
    pub async fn admin_status(&self, path: &str) -> Option<u16> {
        let resp = self
            .admin_http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .ok()?;
        Some(resp.status().as_u16())
    }

    /// `GET` on the admin listener; status and body text.
    pub async fn admin_text(&self, path: &str) -> (u16, String) {
        let resp = self
            .admin_http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} (admin): {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// `POST /v1/publish` of `data` to one channel; panics unless 200.
    /// Returns `{"id","ts","seqs"}`.
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        let (s, b) = self
            .post("/v1/publish", &json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(s, 200, "POST /v1/publish to {channel}: {b}");
        b
    }

    /// `POST /v1/publish` of any body.
    pub async fn publish_body(&self, body: Value) -> (u16, Value) {
        self.post("/v1/publish", &body).await
    }

    /// Publishes `n` messages `{"n": i}` (i from 1) to `channel` one after
    /// the other.
    pub async fn publish_n(&self, channel: &str, n: u64) {
        for i in 1..=n {
            self.publish(channel, json!({ "n": i })).await;
        }
    }

    /// `GET /v1/channels/{channel}/messages` with query parameters; panics
    /// unless 200.
    pub async fn history(&self, channel: &str, query: &[(&str, &str)]) -> Value {
        let (s, b) = self
            .get(&format!("/v1/channels/{channel}/messages"), query)
            .await;
        assert_eq!(s, 200, "history of {channel}: {b}");
        b
    }

    /// `GET /v1/channels/{channel}/presence`; panics unless 200.
    pub async fn presence(&self, channel: &str) -> Value {
        let (s, b) = self
            .get(&format!("/v1/channels/{channel}/presence"), &[])
            .await;
        assert_eq!(s, 200, "presence of {channel}: {b}");
        b
    }

    /// The `conn`s present on `channel` (HTTP presence).
    pub async fn present_conns(&self, channel: &str) -> Vec<String> {
        self.presence(channel).await["clients"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["conn"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Asserts an HTTP error answer: `status` and `{"error":{"code","message"}}`.
pub fn assert_http_error(got: &(u16, Value), status: u16, code: &str) {
    let (s, b) = got;
    assert_eq!(*s, status, "HTTP status; body {b}");
    assert_eq!(b["error"]["code"], code, "error code; body {b}");
    assert!(
        b["error"]["message"].is_string(),
        "error without a message: {b}"
    );
}

/// Runs `herald` directly with `args` (no kit, env cleared of `HERALD_*`),
/// waits at most `timeout` for it to exit; returns (exit code, stdout,
/// stderr). Panics (after killing it) if it is still running.
pub async fn run_herald(
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(herald_testkit::herald_bin());
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HERALD_") {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(env.iter().copied());
    let child = cmd.spawn().expect("spawning herald");
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("waiting for herald");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => panic!("herald {args:?} still running after {timeout:?}"),
    }
}

// ---------------------------------------------------------------------------
// Pages in headless Chromium (tests/browser; admin.rs, demo.rs)
// ---------------------------------------------------------------------------

/// Debian's Chromium, which the scripts in `tests/browser` drive through
/// playwright-core (no browser download).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `tests/browser`, once what its scripts need is there: `node`,
/// playwright-core from `npm ci`, [`CHROMIUM`]. Else a panic naming what to
/// install (never a silent skip).
pub fn browser_prerequisites() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "`node` is not on PATH: install Node.js 20 or later with npm \
             (Debian: apt-get install -y nodejs npm), then run `npm ci` in {}",
            dir.display()
        ),
    }
    if !dir.join("node_modules").join("playwright-core").is_dir() {
        panic!(
            "{} is missing: run `npm ci` in {} (installs playwright-core; no browser download)",
            dir.join("node_modules").display(),
            dir.display()
        );
    }
    if !Path::new(CHROMIUM).is_file() {
        panic!("{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium)");
    }
    dir
}

/// Runs `cmd`, a `node` script of `tests/browser` against `h` (`what` names
/// it, e.g. `tests/browser/admin.mjs`), for at most `timeout`. Its stdout,
/// once it exited 0 and printed `all checks passed`; else a panic with its
/// output and the last 40 lines of `h`'s log, newest first.
pub async fn run_browser_script(
    mut cmd: tokio::process::Command,
    what: &str,
    timeout: Duration,
    h: &HeraldProcess,
) -> String {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} ran longer than {timeout:?}"))
        .unwrap_or_else(|e| panic!("cannot run node {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}\nherald log tail:\n{}",
        out.status,
        h.log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    stdout
}

// ---------------------------------------------------------------------------
// Hostile clients: raw HTTP, process memory, metrics (tests/tests/hostile.rs)
// ---------------------------------------------------------------------------

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`);
/// `None` when the process is gone or the line is missing.
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Bytes as MiB with one decimal, for `MEASURED:` lines.
pub fn mib(bytes: u64) -> String {
    // Display only: the precision of an f64 is plenty for a memory figure.
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Samples a process's `VmRSS` in a background task and keeps the peak, so a
/// test can check memory stayed bounded *while* it was attacking, not only
/// afterwards. The task stops when [`RssWatch::stop`] is called or the value
/// drops, and after at most 10 minutes in any case.
#[derive(Debug)]
pub struct RssWatch {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    samples: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RssWatch {
    /// Starts sampling `pid` every `every` (the first sample at once).
    pub fn start(pid: u32, every: Duration) -> RssWatch {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let samples = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let (p, s) = (peak.clone(), samples.clone());
        let task = tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(600);
            let mut tick = tokio::time::interval(every);
            while tokio::time::Instant::now() < until {
                tokio::select! {
                    _ = &mut rx => return,
                    _ = tick.tick() => {
                        let Some(rss) = vm_rss_bytes(pid) else { return };
                        p.fetch_max(rss, Ordering::Relaxed);
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        RssWatch {
            peak,
            samples,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The highest sample so far (0 before the first).
    pub fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops sampling; returns (peak bytes, number of samples).
    pub async fn stop(mut self) -> (u64, u64) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(STEP, t).await;
        }
        (
            self.peak(),
            self.samples.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Sum of a Prometheus metric's samples over all label sets in `/metrics`
/// text; `None` when the metric has no sample.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += v;
    }
    found
}

/// An HTTP answer read off a bare socket.
#[derive(Debug, Clone)]
pub struct RawHttpAnswer {
    /// The status code of the status line.
    pub status: u16,
    /// Status line and headers, as text.
    pub head: String,
    /// The body (per `Content-Length`, else up to EOF; empty for 101).
    pub body: Vec<u8>,
}

impl RawHttpAnswer {
    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A WebSocket upgrade request for 127.0.0.1:`port` with extra header lines
/// (e.g. `("Origin", "https://a.example")`).
pub fn upgrade_request(port: u16, path_and_query: &str, headers: &[(&str, &str)]) -> String {
    let mut req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Reads an HTTP answer's head (and, unless it is 101, its body) from
/// `stream`; what follows a 101 head stays in the returned buffer. An error
/// (saying what was read) on EOF, a failed read or a malformed status line.
async fn read_http_answer(stream: &mut TcpStream) -> Result<(RawHttpAnswer, Vec<u8>), String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) => {
                return Err(format!(
                    "closed before a complete answer head ({:?})",
                    String::from_utf8_lossy(&buf)
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Err(format!(
                    "read failed before a complete answer head ({e}; got {:?})",
                    String::from_utf8_lossy(&buf)
                ));
            }
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line: {head:?}"))?;
    let mut rest = buf.split_off(end);
    if status == 101 {
        return Ok((
            RawHttpAnswer {
                status,
                head,
                body: Vec::new(),
            },
            rest,
        ));
    }
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    // Bounded: a body is read up to its length, or to EOF but at most 1 MiB.
    let want = length.unwrap_or(1 << 20);
    while rest.len() < want {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
        }
    }
    rest.truncate(want);
    Ok((
        RawHttpAnswer {
            status,
            head,
            body: rest,
        },
        Vec::new(),
    ))
}

/// How a [`raw_http`] exchange ended without an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawHttpEnd {
    /// The server closed or reset the connection (what was seen).
    Closed(String),
    /// Neither an answer nor a close within the deadline.
    TimedOut(Duration),
}

/// Sends `request` as it is on a fresh connection to 127.0.0.1:`port` and
/// reads the HTTP answer within `timeout`. `Err` says what happened instead:
/// a hostile request may legitimately be answered by a closed connection.
pub async fn raw_http(
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<RawHttpAnswer, RawHttpEnd> {
    let r = tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("TCP connect to 127.0.0.1:{port}: {e}"));
        if let Err(e) = stream.write_all(request).await {
            // The server may answer and close before taking the whole
            // request: read what it said, if anything.
            return match read_http_answer(&mut stream).await {
                Ok((a, _)) => Ok(a),
                Err(why) => Err(RawHttpEnd::Closed(format!(
                    "write failed ({e}), then {why}"
                ))),
            };
        }
        read_http_answer(&mut stream)
            .await
            .map(|(a, _)| a)
            .map_err(RawHttpEnd::Closed)
    })
    .await;
    match r {
        Ok(r) => r,
        Err(_) => Err(RawHttpEnd::TimedOut(timeout)),
    }
}

impl RawWs {
    /// Like [`RawWs::connect`] with extra request header lines; `Err` with
    /// the answer when the server does not upgrade (e.g. 403, 400). Panics
    /// when the connection fails or no answer comes within [`STEP`].
    pub async fn connect_with(
        port: u16,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawWs, RawHttpAnswer> {
        let req = upgrade_request(port, path_and_query, headers);
        let (stream, answer, rest) = tokio::time::timeout(STEP, async {
            let mut stream = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("TCP connect to herald");
            stream
                .write_all(req.as_bytes())
                .await
                .expect("writing the upgrade request");
            let (answer, rest) = read_http_answer(&mut stream)
                .await
                .unwrap_or_else(|e| panic!("upgrade of {path_and_query}: {e}"));
            (stream, answer, rest)
        })
        .await
        .unwrap_or_else(|_| panic!("no upgrade answer within {STEP:?}"));
        if answer.status == 101 {
            Ok(RawWs { stream, buf: rest })
        } else {
            Err(answer)
        }
    }

    /// Writes bytes as they are; the error when the socket fails (the
    /// server closed or reset the connection) or `timeout` passes.
    pub async fn try_write_raw(&mut self, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
        match tokio::time::timeout(timeout, self.stream.write_all(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("write of {} bytes blocked for {timeout:?}", bytes.len()),
            )),
        }
    }

    /// Reads and drops what the server sent, up to EOF, a failed read or
    /// `timeout`; returns the first close frame's code if one was seen
    /// (`Some(None)` for a close frame without a code), the data frames' JSON
    /// and how the stream ended.
    pub async fn drain_to_end(
        &mut self,
        timeout: Duration,
    ) -> (Option<Option<u16>>, Vec<Value>, String) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut close = None;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(Some(f)) if f.opcode == 8 => {
                    close.get_or_insert(f.close_code());
                }
                Ok(Some(f)) => frames.extend(f.json()),
                Ok(None) => return (close, frames, "EOF".into()),
                Err(e) => return (close, frames, e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpack_json_roundtrip_and_strictness() {
        let v = json!({"a": [1, -2, 1.5, "s", null, true], "b": {"c": {}}});
        assert_eq!(
            mp_to_json(&decode_mp(&encode_mp(&json_to_mp(&v))).unwrap()).unwrap(),
            v
        );
        assert!(mp_to_json(&rmpv::Value::Binary(vec![1])).is_err());
        assert!(mp_to_json(&rmpv::Value::Map(vec![(1.into(), 2.into())])).is_err());
        assert!(mp_to_json(&rmpv::Value::Ext(1, vec![0])).is_err());
        assert!(mp_to_json(&rmpv::Value::F64(f64::NAN)).is_err());
    }

    #[test]
    fn tokens_verify() {
        let t = TokenBuilder::new("u1")
            .channels(&["a"])
            .allow("subscribe", &["chat_*"])
            .sign("s");
        let c = verify_hs256(&t, "s").unwrap();
        assert_eq!(c["sub"], "u1");
        assert_eq!(c["allow"]["subscribe"], json!(["chat_*"]));
        assert!(verify_hs256(&t, "other").is_err());
        assert!(verify_hs256(&alg_none_token(&json!({"sub": "x"})), "s").is_err());
    }

    #[test]
    fn urls() {
        let c = Connect::port(1).token("a.b").query("recover", "c:5,d:0");
        assert_eq!(
            c.url(),
            "ws://127.0.0.1:1/ws?token=a.b&recover=c%3A5%2Cd%3A0"
        );
        assert_eq!(json_string_of_len(10).to_string().len(), 10);
    }
}
