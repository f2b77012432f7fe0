//! `herald-floor`: the machine's floor for fan-out (issue 13).
//!
//! What it is: a server that looks like herald to an unmodified
//! `herald-loadgen fanout` (same loopback TCP WebSockets, same `welcome`,
//! same `message` frames byte for byte, same `POST /v1/publish` answer) but
//! whose whole cost per delivery is one `send(2)` of a frame encoded once.
//! Deliveries per CPU-second of this process is what the kernel's loopback
//! path allows on this machine; herald's figure divided by it is how close
//! herald comes (benches/RESULTS.md, "Fan-out against the floor").
//!
//! How: the main thread accepts; each connection gets a thread that reads
//! its first request. `GET /ws` is upgraded, sent its `welcome` and its
//! socket pushed into the subscriber `Vec` of each channel of the token's
//! `channels` claim; then the thread ends and nobody reads that socket
//! again. Other connections are HTTP/1.1 keep-alive: `POST /v1/publish`
//! takes the next seq of each channel, answers, and writes the frame to
//! every subscriber in a loop over the channel's `Vec<TcpStream>`: blocking
//! `write_all` (std's `send` with `MSG_NOSIGNAL`; a short write is finished),
//! a failed one drops the subscriber. All of it under the channel's lock, so
//! seqs go out in order and a `welcome`'s seq is exact.
//!
//! What it omits, on purpose: JWT signatures and expiry (the payload's
//! `channels` is read, nothing is checked), client ops (`subscribe`, `ping`,
//! ...: the load generator's `fanout` sends none; answering them needs a
//! reader per connection), server pings, presence, history, persistence,
//! idempotency keys, the msgpack encoding, limits and slow-consumer
//! handling. Besides `/ws` and `/v1/publish` it answers `/healthz` and
//! `/readyz` (for `benches/floor.sh`), 404 otherwise.
//!
//! `--io-uring[=MODE]` (issue 13's experiment, `uring.rs`): the same loop
//! as one batch of io_uring sends instead: one `IORING_OP_SEND` per
//! subscriber, all pointing at the frame encoded once, submitted and waited
//! for with one `io_uring_enter(2)` per fan-out (chunks of 4,096
//! subscribers), then per subscriber as above: a short send (or `EAGAIN`) is
//! finished with a blocking `write_all`, an error drops the subscriber;
//! under the same lock. `MODE` is `plain` (the default), `defer`
//! (`SINGLE_ISSUER | DEFER_TASKRUN` ring), `coop` (`COOP_TASKRUN |
//! TASKRUN_FLAG`) or `zc` (`SEND_ZC`). Without the flag no ring is made and
//! the fan-out is the `write_all` loop.
//!
//! ```text
//! herald-floor --listen 127.0.0.1:0 [--api-key KEY] [--io-uring[=MODE]]
//! ```
//! prints `herald-floor listening on http://127.0.0.1:PORT` once bound
//! (with `--io-uring`, first a line on stderr naming the mode).

mod json;
mod uring;
mod wire;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest request head, and body (herald's 16 KiB `data` plus room).
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// herald's limit on `data` (PROTOCOL.md section 7).
const MAX_DATA: usize = 16 * 1024;
/// Bound on reading the first request and on one subscriber write: a stuck
/// peer costs a thread or its subscription, never the process.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One channel: its last seq and its subscribers' sockets.
#[derive(Default)]
struct Channel {
    seq: u64,
    subs: Vec<TcpStream>,
}

/// Everything the threads share.
struct Floor {
    channels: Mutex<HashMap<String, Arc<Mutex<Channel>>>>,
    /// Upgraded connections with no channel: held open, never written.
    idle: Mutex<Vec<TcpStream>>,
    api_key: Option<String>,
    ids: AtomicU64,
    /// `--io-uring`: the fan-out as one batch of io_uring sends.
    uring: Option<uring::Mode>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Floor {
    /// The channels named, deduplicated and sorted (locks are always taken
    /// in name order, so two multi-channel operations cannot deadlock).
    fn channels(&self, names: &[&str]) -> Vec<(String, Arc<Mutex<Channel>>)> {
        let mut names: Vec<&str> = names.to_vec();
        names.sort_unstable();
        names.dedup();
        let mut map = lock(&self.channels);
        names
            .into_iter()
            .map(|n| (n.to_owned(), map.entry(n.to_owned()).or_default().clone()))
            .collect()
    }
}

/// One HTTP/1.1 request.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("herald-floor: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut listen = "127.0.0.1:8080".to_owned();
    let mut api_key = None;
    let mut uring = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?,
            "--api-key" => api_key = Some(args.next().ok_or("--api-key needs a value")?),
            "--io-uring" => uring = Some(uring::Mode::Plain),
            "-h" | "--help" => {
                println!(
                    "herald-floor --listen 127.0.0.1:PORT [--api-key KEY] \
                     [--io-uring[=plain|defer|coop|zc]]"
                );
                return Ok(());
            }
            other if other.starts_with("--io-uring=") => {
                let name = &other["--io-uring=".len()..];
                uring = Some(
                    uring::Mode::parse(name)
                        .ok_or_else(|| format!("--io-uring={name}: plain, defer, coop or zc"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("--listen {listen}: loopback addresses only"));
    }
    if let Some(mode) = uring {
        uring::check(mode).map_err(|e| format!("--io-uring={}: {e}", mode.name()))?;
        eprintln!(
            "herald-floor: fan-out by io_uring ({}), rings of {} entries",
            mode.name(),
            uring::RING_ENTRIES
        );
    }
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("herald-floor listening on http://{bound}");
    let _ = io::stdout().flush();
    let floor = Arc::new(Floor {
        channels: Mutex::default(),
        idle: Mutex::default(),
        api_key,
        ids: AtomicU64::new(0),
        uring,
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let floor = floor.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(&floor, stream) {
                eprintln!("herald-floor: connection: {e}");
            }
        });
    }
    Ok(())
}

/// Serves one connection: an upgrade (then hands the socket over) or
/// HTTP requests until the client closes.
fn serve(floor: &Floor, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf)? {
        match (req.method.as_str(), req.path()) {
            ("GET", "/ws") => return upgrade(floor, stream, &req),
            ("POST", "/v1/publish") => publish(floor, &mut stream, &req)?,
            ("GET", "/healthz" | "/readyz") => respond(&mut stream, "200 OK", "{}")?,
            _ => error(&mut stream, "404 Not Found", "not_found", "unknown path")?,
        }
        if req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
        // A keep-alive client (the load generator's pool) may stay quiet.
        stream.set_read_timeout(None)?;
    }
    Ok(())
}

/// Reads the next request; `None` at a clean end of stream. `buf` carries
/// bytes past the request to the next call.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("truncated request"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut req = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(bad(
            "chunked bodies are not supported (send content-length)",
        ));
    }
    let len: usize = match req.header("content-length") {
        Some(v) => v.parse().map_err(|_| bad("bad content-length"))?,
        None => 0,
    };
    if len > MAX_BODY {
        return Err(bad("body too large"));
    }
    buf.drain(..head_end + 4);
    while buf.len() < len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("truncated body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    req.body = buf.drain(..len).collect();
    Ok(Some(req))
}

fn respond(stream: &mut TcpStream, status: &str, json: &str) -> io::Result<()> {
    let r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    );
    stream.write_all(r.as_bytes())
}

/// An ingest API error (PROTOCOL.md section 8).
fn error(stream: &mut TcpStream, status: &str, code: &str, message: &str) -> io::Result<()> {
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    respond(stream, status, &body)
}

/// PROTOCOL.md section 1; such names need no JSON escaping.
fn valid_channel(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.:@=".contains(&c))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// The fields of a publish body this floor uses, or the API error.
struct Publish<'a> {
    channels: Vec<&'a str>,
    data: &'a str,
    /// The raw JSON string of `from`.
    from: Option<&'a str>,
}

fn parse_publish(body: &[u8]) -> Result<Publish<'_>, (&'static str, &'static str, &'static str)> {
    let bad = ("400 Bad Request", "bad_request", "malformed body");
    let text = std::str::from_utf8(body).map_err(|_| bad)?;
    let members = json::object(text).ok_or(bad)?;
    let field = |k: &str| members.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let channels = match (field("channel"), field("channels")) {
        // A name holds no quote or backslash (checked below), so the
        // string's contents are what lies between its quotes.
        (Some(one), None) => vec![
            one.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .ok_or(bad)?,
        ],
        (None, Some(many)) => json::strings(many).ok_or(bad)?,
        _ => return Err(bad),
    };
    if channels.is_empty() || !channels.iter().all(|c| valid_channel(c)) {
        return Err(("400 Bad Request", "bad_channel", "bad channel name"));
    }
    let data = field("data").ok_or(bad)?;
    if data.len() > MAX_DATA {
        return Err(("413 Payload Too Large", "too_large", "data over 16 KiB"));
    }
    let from = field("from");
    if from.is_some_and(|f| !f.starts_with('"')) {
        return Err(bad);
    }
    Ok(Publish {
        channels,
        data,
        from,
    })
}

/// `POST /v1/publish`: next seq per channel, the answer, then the fan-out.
fn publish(floor: &Floor, stream: &mut TcpStream, req: &Request) -> io::Result<()> {
    if let Some(key) = &floor.api_key
        && req.header("authorization") != Some(&format!("Bearer {key}"))
    {
        return error(stream, "401 Unauthorized", "unauthorized", "bad API key");
    }
    let p = match parse_publish(&req.body) {
        Ok(p) => p,
        Err((status, code, message)) => return error(stream, status, code, message),
    };
    let ts = now_ms();
    let id = format!(
        "m_{ts:012x}{:020x}",
        floor.ids.fetch_add(1, Ordering::Relaxed)
    );
    let from = p
        .from
        .map(|f| format!(r#","from":{f}"#))
        .unwrap_or_default();
    let channels = floor.channels(&p.channels);
    let mut guards: Vec<MutexGuard<'_, Channel>> = channels.iter().map(|(_, c)| lock(c)).collect();
    let mut seqs = Vec::with_capacity(guards.len());
    for ((name, _), ch) in channels.iter().zip(guards.iter_mut()) {
        ch.seq += 1;
        seqs.push(format!(r#""{name}":{}"#, ch.seq));
    }
    let answer = format!(r#"{{"id":"{id}","ts":{ts},"seqs":{{{}}}}}"#, seqs.join(","));
    respond(stream, "200 OK", &answer)?;
    for ((name, _), ch) in channels.iter().zip(guards.iter_mut()) {
        // Encoded once per channel, as herald does; byte for byte its frame.
        let frame = wire::text(&format!(
            r#"{{"type":"message","channel":"{name}","seq":{},"id":"{id}","ts":{ts}{from},"data":{}}}"#,
            ch.seq, p.data
        ));
        let dropped = match floor.uring {
            None => fan_out(&mut ch.subs, &frame),
            Some(mode) => uring::fan_out(mode, &mut ch.subs, &frame),
        };
        if dropped > 0 {
            eprintln!("herald-floor: {name}: {dropped} subscribers dropped (write failed)");
        }
    }
    Ok(())
}

/// The measured loop: one `write_all` (one `send(2)` unless the socket
/// buffer is full) per subscriber, in `Vec` order; a failed write drops the
/// subscriber. Returns how many were dropped.
fn fan_out(subs: &mut Vec<TcpStream>, frame: &[u8]) -> usize {
    let before = subs.len();
    subs.retain(|s| {
        let mut w: &TcpStream = s;
        w.write_all(frame).is_ok()
    });
    before - subs.len()
}

/// The `channels` claim of a JWT, signature unchecked; `None` when the
/// token is not three base64url segments with a JSON object in the middle.
fn token_channels(token: &str) -> Option<Vec<String>> {
    let payload = token.split('.').nth(1)?;
    let bytes = wire::base64url_decode(payload)?;
    let text = String::from_utf8(bytes).ok()?;
    let members = json::object(&text)?;
    let channels = match members.iter().find(|(k, _)| *k == "channels") {
        Some((_, v)) => json::strings(v)?,
        None => Vec::new(),
    };
    channels
        .into_iter()
        .map(|c| valid_channel(c).then(|| c.to_owned()))
        .collect()
}

/// `GET /ws`: 101, then `welcome` with the automatic subscriptions (or
/// `disconnect` 4001 when the token is missing or unreadable, as herald).
fn upgrade(floor: &Floor, mut stream: TcpStream, req: &Request) -> io::Result<()> {
    let Some(key) = req.header("sec-websocket-key") else {
        return error(
            &mut stream,
            "400 Bad Request",
            "bad_request",
            "not an upgrade",
        );
    };
    let proto = match req.header("sec-websocket-protocol") {
        None => "",
        Some(offer) if offer.split(',').any(|p| p.trim() == "herald.json") => {
            "sec-websocket-protocol: herald.json\r\n"
        }
        Some(_) => {
            return error(
                &mut stream,
                "400 Bad Request",
                "bad_request",
                "herald.json only",
            );
        }
    };
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\n{proto}\r\n",
        wire::accept_key(key)
    )
    .into_bytes();
    let query = req
        .target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default();
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .or_else(|| {
            req.header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    let Some(names) = token.and_then(token_channels) else {
        out.extend(wire::text(
            r#"{"type":"disconnect","code":4001,"reason":"unauthorized","reconnect":false}"#,
        ));
        out.extend(wire::close(4001));
        return stream.write_all(&out);
    };
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let conn = floor.ids.fetch_add(1, Ordering::Relaxed);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let channels = floor.channels(&names);
    // Every channel locked while the welcome is written and the socket
    // joined: its seq is then exactly the last one before this subscriber.
    let mut guards: Vec<MutexGuard<'_, Channel>> = channels.iter().map(|(_, c)| lock(c)).collect();
    let subs: Vec<String> = channels
        .iter()
        .zip(&guards)
        .map(|((name, _), ch)| format!(r#"{{"channel":"{name}","seq":{}}}"#, ch.seq))
        .collect();
    out.extend(wire::text(&format!(
        r#"{{"type":"welcome","conn":"c_{conn:016x}","node":"floor","heartbeat":25.0,"subs":[{}]}}"#,
        subs.join(",")
    )));
    stream.write_all(&out)?;
    let Some((last, rest)) = guards.split_last_mut() else {
        lock(&floor.idle).push(stream);
        return Ok(());
    };
    for ch in rest {
        ch.subs.push(stream.try_clone()?);
    }
    last.subs.push(stream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bodies() {
        let p = parse_publish(br#"{"channel":"lg_1_fan","data":{"lgt":1}}"#).unwrap();
        assert_eq!(
            (p.channels, p.data, p.from),
            (vec!["lg_1_fan"], r#"{"lgt":1}"#, None)
        );
        let p = parse_publish(br#"{"channels":["a","b"],"data":1,"from":"x"}"#).unwrap();
        assert_eq!((p.channels, p.from), (vec!["a", "b"], Some(r#""x""#)));
        for bad in [
            &br#"{"channel":"a","channels":["b"],"data":1}"#[..],
            br#"{"data":1}"#,
            br#"{"channel":"a"}"#,
            br#"{"channel":"a b","data":1}"#,
            br#"{"channel":1,"data":1}"#,
        ] {
            assert!(parse_publish(bad).is_err());
        }
    }

    #[test]
    fn token_claims() {
        // {"sub":"lg:1","exp":1,"channels":["lg_1_fan"]}
        let t = "e30.eyJzdWIiOiJsZzoxIiwiZXhwIjoxLCJjaGFubmVscyI6WyJsZ18xX2ZhbiJdfQ.sig";
        assert_eq!(token_channels(t).unwrap(), vec!["lg_1_fan"]);
        assert!(token_channels("nope").is_none());
    }
}
