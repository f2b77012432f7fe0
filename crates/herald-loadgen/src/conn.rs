//! One load connection: TCP from a chosen 127.0.0.N source, a hand-written
//! HTTP upgrade, then fastwebsockets frames read straight off the socket.
//!
//! Why not a full client library: at 250 000 frames/s the generator shares
//! two cores with the server it measures, so each frame must cost little.
//! Frames are never parsed as generic JSON on the hot path: [`scan_message`]
//! picks the few fields accounting needs (`channel`, `seq` and the
//! publisher's `lgt`/`lgn` inside `data`). Only the welcome is parsed whole.
//!
//! The close handshake is answered here, not by fastwebsockets' auto-close:
//! its reply is written before the close frame is handed over, so a server
//! that is already gone would turn a received 1012 into an I/O error; here
//! the code is kept and the reply is best effort.

use anyhow::{Context, bail};
use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest handshake answer accepted (hyper's 101 is about 130 bytes).
const MAX_HANDSHAKE: usize = 4096;

/// An authenticated connection: the welcome was received.
pub struct Conn {
    /// The socket, framed.
    pub ws: WebSocket<TcpStream>,
    /// The automatic subscriptions from `welcome.subs`: channel and the seq
    /// it stood at (messages with a higher seq will be delivered).
    pub subs: Vec<(String, u64)>,
}

/// What one frame read produced.
pub enum Incoming {
    /// A text frame (its payload).
    Text(bytes::BytesMut),
    /// The server sent a close frame, with this code if it had one.
    Closed(Option<u16>),
    /// The socket ended (EOF, reset) without a close frame: 1006, abnormal.
    Dropped,
}

impl Conn {
    /// Connects from `src` to `addr` (one of [`Target::ws_addrs`]), upgrades
    /// with `token`, and waits for `welcome` (all within `timeout`). A
    /// `disconnect` instead of a welcome is an error naming its code.
    ///
    /// [`Target::ws_addrs`]: crate::target::Target::ws_addrs
    pub async fn open(
        addr: SocketAddr,
        src: Option<Ipv4Addr>,
        token: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        tokio::time::timeout(timeout, Self::open_inner(addr, src, token))
            .await
            .map_err(|_| anyhow::anyhow!("connect + welcome took longer than {timeout:?}"))?
    }

    async fn open_inner(
        addr: SocketAddr,
        src: Option<Ipv4Addr>,
        token: &str,
    ) -> anyhow::Result<Self> {
        let sock = TcpSocket::new_v4().context("socket")?;
        if let Some(ip) = src {
            sock.bind(SocketAddr::new(ip.into(), 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let mut stream = sock
            .connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let req = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            addr,
            fastwebsockets::handshake::generate_key(),
        );
        stream
            .write_all(req.as_bytes())
            .await
            .context("send upgrade")?;
        read_handshake(&mut stream).await?;
        let mut ws = WebSocket::after_handshake(stream, Role::Client);
        ws.set_auto_close(false);
        ws.set_auto_pong(true);
        let mut conn = Conn {
            ws,
            subs: Vec::new(),
        };
        match conn.next().await? {
            Incoming::Text(t) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&t).context("first frame is not JSON")?;
                match v["type"].as_str() {
                    Some("welcome") => {
                        conn.subs = v["subs"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|s| {
                                        Some((
                                            s["channel"].as_str()?.to_owned(),
                                            s["seq"].as_u64()?,
                                        ))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        Ok(conn)
                    }
                    Some("disconnect") => bail!("refused: disconnect {}", v["code"]),
                    _ => bail!("first frame is not a welcome: {v}"),
                }
            }
            Incoming::Closed(code) => bail!("closed before the welcome (code {code:?})"),
            Incoming::Dropped => bail!("connection dropped before the welcome"),
        }
    }

    /// The next text frame, or the end of the connection. Pings are
    /// answered by fastwebsockets inside `read_frame`; a close frame is
    /// answered here (best effort) and its code returned.
    pub async fn next(&mut self) -> anyhow::Result<Incoming> {
        loop {
            let frame = match self.ws.read_frame().await {
                Ok(f) => f,
                Err(fastwebsockets::WebSocketError::UnexpectedEOF)
                | Err(fastwebsockets::WebSocketError::ConnectionClosed) => {
                    return Ok(Incoming::Dropped);
                }
                Err(e) => return Err(e.into()),
            };
            match frame.opcode {
                OpCode::Text => {
                    return Ok(Incoming::Text(match frame.payload {
                        fastwebsockets::Payload::BorrowedMut(b) => bytes::BytesMut::from(&b[..]),
                        fastwebsockets::Payload::Borrowed(b) => bytes::BytesMut::from(b),
                        fastwebsockets::Payload::Owned(v) => bytes::BytesMut::from(&v[..]),
                        fastwebsockets::Payload::Bytes(b) => b,
                    }));
                }
                OpCode::Close => {
                    let code = (frame.payload.len() >= 2)
                        .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                    // Echo the code (RFC 6455 5.5.1); the server may be gone.
                    let reply = match code {
                        Some(c) => Frame::close(c, b""),
                        None => Frame::close_raw(Vec::new().into()),
                    };
                    let _ = self.ws.write_frame(reply).await;
                    return Ok(Incoming::Closed(code));
                }
                _ => {}
            }
        }
    }
}

/// Reads the HTTP answer to the upgrade, exactly up to its blank line (the
/// welcome frame may follow in the same segment and must stay unread).
async fn read_handshake(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut buf = [0u8; MAX_HANDSHAKE];
    loop {
        let n = stream.peek(&mut buf).await.context("read upgrade answer")?;
        if n == 0 {
            bail!("connection closed during the upgrade");
        }
        if let Some(end) = find(&buf[..n], b"\r\n\r\n") {
            let mut head = vec![0u8; end + 4];
            stream.read_exact(&mut head).await?;
            let status = head.split(|b| *b == b'\n').next().unwrap_or_default();
            if !status.starts_with(b"HTTP/1.1 101") {
                bail!(
                    "upgrade refused: {}",
                    String::from_utf8_lossy(status).trim_end()
                );
            }
            return Ok(());
        }
        if n == buf.len() {
            bail!("upgrade answer larger than {MAX_HANDSHAKE} bytes");
        }
        // Part of the head is here; peek returns at once while any byte is
        // unread, so give the rest a moment to arrive.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Index of the first occurrence of `needle` (non-empty) in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(p) = hay.get(from..)?.iter().position(|b| *b == first) {
        let at = from + p;
        if hay[at + 1..].starts_with(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The fields of a `message` frame that accounting needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The channel name.
    pub channel: &'a [u8],
    /// Its seq.
    pub seq: u64,
    /// `data.lgt`: the publisher's send time (ns on the run's clock).
    pub sent_ns: Option<u64>,
    /// `data.lgn`: the publisher's message number.
    pub n: Option<u64>,
}

const MESSAGE_HEAD: &[u8] = b"{\"type\":\"message\",\"channel\":\"";

/// Picks `channel`, `seq`, `data.lgt` and `data.lgn` out of a JSON
/// `message` frame; `None` for any other frame type.
///
/// The scan follows herald's field order (`type`, `channel`, `seq`, ...,
/// `data` last) in one forward pass and looks for nothing else. Channel
/// names cannot hold `"` or `\` (PROTOCOL.md section 1), so they cannot fool
/// it; `lgt`/`lgn` are the load generator's own keys, first in its `data`.
pub fn scan_message(frame: &[u8]) -> Option<Delivery<'_>> {
    let rest = frame.strip_prefix(MESSAGE_HEAD)?;
    let len = rest.iter().position(|b| *b == b'"')?;
    let channel = &rest[..len];
    let rest = rest[len..].strip_prefix(b"\",\"seq\":")?;
    let (seq, rest) = number(rest)?;
    let data = &rest[find(rest, b"\"data\":")? + 7..];
    let (sent_ns, n) = match data.strip_prefix(b"{\"lgt\":").and_then(number) {
        Some((t, after)) => (
            Some(t),
            after
                .strip_prefix(b",\"lgn\":")
                .and_then(number)
                .map(|(n, _)| n),
        ),
        None => (None, None),
    };
    Some(Delivery {
        channel,
        seq,
        sent_ns,
        n,
    })
}

const DISCONNECT_HEAD: &[u8] = b"{\"type\":\"disconnect\",\"code\":";

/// The code of a JSON `disconnect` frame (PROTOCOL.md section 6, sent just
/// before the close frame); `None` for any other frame. Herald writes
/// `type` then `code` first.
pub fn scan_disconnect(frame: &[u8]) -> Option<u16> {
    let (code, _) = number(frame.strip_prefix(DISCONNECT_HEAD)?)?;
    u16::try_from(code).ok()
}

/// A leading decimal number and what follows it.
fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let v = b[..digits]
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some((v, &b[digits..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_a_message_frame() {
        let f = br#"{"type":"message","channel":"lg_x_c1","seq":21,"id":"m_1","ts":5,"from":"a","data":{"lgt":123456789,"lgn":7,"pad":"zz"}}"#;
        assert_eq!(
            scan_message(f),
            Some(Delivery {
                channel: b"lg_x_c1",
                seq: 21,
                sent_ns: Some(123456789),
                n: Some(7)
            })
        );
    }

    #[test]
    fn scans_a_disconnect_frame() {
        let f = br#"{"type":"disconnect","code":1012,"reason":"service restart","reconnect":true}"#;
        assert_eq!(scan_disconnect(f), Some(1012));
        assert_eq!(
            scan_disconnect(br#"{"type":"disconnect","code":99999}"#),
            None
        );
        assert_eq!(scan_disconnect(br#"{"type":"welcome","code":1}"#), None);
    }

    #[test]
    fn ignores_other_frames_and_foreign_data() {
        assert_eq!(scan_message(br#"{"type":"reply","id":1}"#), None);
        let f = br#"{"type":"message","channel":"c","seq":1,"id":"m","ts":1,"data":{"x":1}}"#;
        let d = scan_message(f).unwrap();
        assert_eq!((d.seq, d.sent_ns, d.n), (1, None, None));
    }
}
