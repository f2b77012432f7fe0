//! Server-side WebSocket framing (RFC 6455): server frames are unmasked, so
//! a frame is encoded once and the same bytes go to every subscriber.

use bytes::{BufMut, Bytes, BytesMut};
use herald_protocol::{CloseCode, Encoding};

/// RFC 6455 opcodes the server sends.
#[derive(Debug, Clone, Copy)]
pub enum Opcode {
    /// Text data.
    Text = 0x1,
    /// Binary data.
    Binary = 0x2,
    /// Close.
    Close = 0x8,
    /// Ping.
    Ping = 0x9,
    /// Pong.
    Pong = 0xA,
}

/// The data opcode of an encoding: text for JSON, binary for MessagePack.
pub fn data_opcode(enc: Encoding) -> Opcode {
    match enc {
        Encoding::Json => Opcode::Text,
        Encoding::Msgpack => Opcode::Binary,
    }
}

/// One complete, unmasked, unfragmented frame.
pub fn frame(op: Opcode, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut b = BytesMut::with_capacity(len + 10);
    b.put_u8(0x80 | op as u8);
    if len < 126 {
        b.put_u8(len as u8); // fits: checked above
    } else if let Ok(l) = u16::try_from(len) {
        b.put_u8(126);
        b.put_u16(l);
    } else {
        b.put_u8(127);
        b.put_u64(len as u64); // usize always fits u64 on supported targets
    }
    b.put_slice(payload);
    b.freeze()
}

/// An empty ping (FIN + opcode 0x9, length 0): a static, so a heartbeat
/// allocates nothing in each of thousands of idle connections.
pub const EMPTY_PING: &[u8] = &[0x89, 0x00];

/// A data frame carrying an encoded protocol frame.
pub fn data_frame(enc: Encoding, payload: &[u8]) -> Bytes {
    frame(data_opcode(enc), payload)
}

/// Encodes a protocol frame as a data frame.
pub fn encode_frame<T: serde::Serialize + ?Sized>(enc: Encoding, value: &T) -> Bytes {
    data_frame(enc, &herald_protocol::encode(enc, value))
}

/// A close frame with a code and its reason text.
pub fn close_frame(code: CloseCode) -> Bytes {
    let mut p = Vec::with_capacity(2 + code.reason().len());
    p.extend_from_slice(&code.code().to_be_bytes());
    p.extend_from_slice(code.reason().as_bytes());
    frame(Opcode::Close, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_ping_is_an_empty_ping_frame() {
        assert_eq!(EMPTY_PING, &frame(Opcode::Ping, b"")[..]);
    }

    #[test]
    fn header_lengths() {
        assert_eq!(&frame(Opcode::Text, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = frame(Opcode::Binary, &[0u8; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        let f = frame(Opcode::Binary, &vec![0u8; 70000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70000 + 10);
    }
}

/// Opcode of an inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InOp {
    /// 0x0.
    Continuation,
    /// 0x1.
    Text,
    /// 0x2.
    Binary,
    /// 0x8.
    Close,
    /// 0x9.
    Ping,
    /// 0xA.
    Pong,
}

/// One inbound frame, unmasked.
#[derive(Debug)]
pub struct InFrame {
    /// Final fragment.
    pub fin: bool,
    /// Opcode.
    pub op: InOp,
    /// Unmasked payload.
    pub payload: Bytes,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the TCP stream or it failed.
    #[error("connection lost")]
    Gone,
    /// A frame breaking RFC 6455 (unmasked, reserved bits, unknown opcode,
    /// fragmented or long control frame): close 4000.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A data frame over the inbound limit: close 1009.
    #[error("frame too large")]
    TooBig,
    /// A close frame RFC 6455 forbids (a 1-byte payload, a code section 7.4
    /// does not allow on the wire): close 1002.
    #[error("invalid close frame: {0}")]
    BadClose(&'static str),
    /// A close frame whose reason is not UTF-8: close 1007.
    #[error("close reason is not UTF-8")]
    BadCloseReason,
}

/// What a client's close frame asks for, once validated (RFC 6455 sections
/// 5.5.1 and 7.4): `None` for an empty close, else the code to echo.
pub fn close_code_of(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::BadClose("one-byte close payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::valid_on_wire(code) {
                return Err(ReadError::BadClose("close code not allowed on the wire"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(ReadError::BadCloseReason);
            }
            Ok(Some(code))
        }
    }
}

/// Reads client frames (RFC 6455 section 5) from a stream.
///
/// Cancel-safe: bytes are appended to the buffer by `read_buf` and a frame
/// is consumed only once complete, so dropping a pending
/// [`FrameReader::read`] inside `select!` loses nothing. Written here rather
/// than taken from fastwebsockets, which accepts unmasked client frames
/// (RFC 6455 section 5.1 requires closing) and keeps an 8 KiB buffer per
/// connection from the start.
pub struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    max_payload: usize,
}

/// Read buffer growth step; an idle connection holds no buffer.
const READ_CHUNK: usize = 2048;
/// Most a frame's announced length grows the buffer by before its bytes
/// arrive.
const MAX_RESERVE: usize = 64 * 1024;

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    /// A reader refusing data frames over `max_payload` bytes.
    pub fn new(rd: R, max_payload: usize) -> Self {
        Self {
            rd,
            buf: BytesMut::new(),
            max_payload,
        }
    }

    /// The next frame.
    pub async fn read(&mut self) -> Result<InFrame, ReadError> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(f) = self.parse()? {
                if self.buf.is_empty() {
                    // Nothing pending: give the buffer back, so an idle
                    // connection holds none (the per-connection memory
                    // budget of DESIGN.md); clients send little.
                    self.buf = BytesMut::new();
                }
                return Ok(f);
            }
            // An empty buffer waits with no allocation (read_buf then takes
            // 64 bytes when data arrives); a buffer that filled up grows,
            // and parse() reserves a whole frame once its header is known.
            if !self.buf.is_empty() && self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(READ_CHUNK);
            }
            match self.rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(ReadError::Gone),
                Ok(_) => {}
            }
        }
    }

    /// Parses one complete frame off the buffer, or `None` if more bytes
    /// are needed (nothing consumed then).
    fn parse(&mut self) -> Result<Option<InFrame>, ReadError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(ReadError::Protocol(
                "reserved bits set (no extension was negotiated)",
            ));
        }
        let op = match b[0] & 0x0F {
            0x0 => InOp::Continuation,
            0x1 => InOp::Text,
            0x2 => InOp::Binary,
            0x8 => InOp::Close,
            0x9 => InOp::Ping,
            0xA => InOp::Pong,
            _ => return Err(ReadError::Protocol("unknown opcode")),
        };
        if b[1] & 0x80 == 0 {
            return Err(ReadError::Protocol("client frame not masked"));
        }
        let control = matches!(op, InOp::Close | InOp::Ping | InOp::Pong);
        let (len, head) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                let l = u16::from_be_bytes([b[2], b[3]]);
                // RFC 6455 section 5.2: the minimal number of bytes must
                // be used to encode the length.
                if l < 126 {
                    return Err(ReadError::Protocol("non-minimal payload length"));
                }
                (u64::from(l), 4)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                let l = u64::from_be_bytes(l);
                if l >> 63 != 0 {
                    return Err(ReadError::Protocol("frame length has its high bit set"));
                }
                if l <= u64::from(u16::MAX) {
                    return Err(ReadError::Protocol("non-minimal payload length"));
                }
                (l, 10)
            }
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Err(ReadError::Protocol("fragmented or long control frame"));
        }
        let max = u64::try_from(self.max_payload).unwrap_or(u64::MAX);
        if len > max {
            return Err(ReadError::TooBig);
        }
        // Fits usize: bounded by max_payload above.
        let len = usize::try_from(len).map_err(|_| ReadError::TooBig)?;
        let total = len.checked_add(head + 4).ok_or(ReadError::TooBig)?;
        if b.len() < total {
            // Grow toward the whole frame as its bytes come, never by more
            // than MAX_RESERVE at once: a header's claim alone must not
            // allocate (whatever max_payload is configured to).
            self.buf.reserve((total - b.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        let mask = [b[head], b[head + 1], b[head + 2], b[head + 3]];
        let _ = self.buf.split_to(head + 4);
        let mut payload = self.buf.split_to(len);
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
        Ok(Some(InFrame {
            fin,
            op,
            payload: payload.freeze(),
        }))
    }
}

#[cfg(test)]
mod reader_tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![first];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<InFrame, ReadError>> {
        let mut r = FrameReader::new(&bytes[..], max);
        let mut out = Vec::new();
        loop {
            let f = r.read().await;
            let stop = f.is_err();
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn reads_masked_frames_split_anywhere() {
        let mut bytes = masked(0x81, b"hello");
        bytes.extend(masked(0x82, &[7u8; 300]));
        bytes.extend(masked(0x89, b"p"));
        let frames = read_all(bytes, 1000).await;
        let f0 = frames[0].as_ref().unwrap();
        assert_eq!(
            (f0.fin, f0.op, &f0.payload[..]),
            (true, InOp::Text, &b"hello"[..])
        );
        let f1 = frames[1].as_ref().unwrap();
        assert_eq!((f1.op, f1.payload.len()), (InOp::Binary, 300));
        assert_eq!(frames[2].as_ref().unwrap().op, InOp::Ping);
        assert!(matches!(frames[3], Err(ReadError::Gone)));
    }

    #[tokio::test]
    async fn refuses_what_rfc6455_forbids() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        assert!(matches!(
            read_all(unmasked, 100).await[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            read_all(masked(0xC1, b"x"), 100).await[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            read_all(masked(0x83, b"x"), 100).await[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            read_all(masked(0x09, b"x"), 100).await[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            read_all(masked(0x89, &[0; 126]), 1000).await[0],
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            read_all(masked(0x81, &[b'a'; 101]), 100).await[0],
            Err(ReadError::TooBig)
        ));
        assert!(read_all(masked(0x81, &[b'a'; 100]), 100).await[0].is_ok());
    }

    #[tokio::test]
    async fn refuses_non_minimal_lengths() {
        // 16-bit form for 5 bytes.
        let mut v = vec![0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4];
        v.extend_from_slice(b"hello");
        assert!(matches!(
            read_all(v, 1000).await[0],
            Err(ReadError::Protocol("non-minimal payload length"))
        ));
        // 64-bit form for 200 bytes.
        let mut v = vec![0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 200, 1, 2, 3, 4];
        v.extend_from_slice(&[0; 200]);
        assert!(matches!(
            read_all(v, 1000).await[0],
            Err(ReadError::Protocol("non-minimal payload length"))
        ));
        // The minimal forms at their edges are fine.
        assert!(read_all(masked(0x82, &[0; 126]), 1000).await[0].is_ok());
        assert!(read_all(masked(0x82, &[0; 125]), 1000).await[0].is_ok());
    }

    #[test]
    fn close_frames_are_validated() {
        assert!(matches!(close_code_of(b""), Ok(None)));
        assert!(matches!(close_code_of(&[3]), Err(ReadError::BadClose(_))));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(
                matches!(
                    close_code_of(&code.to_be_bytes()),
                    Err(ReadError::BadClose(_))
                ),
                "{code}"
            );
        }
        for code in [
            1000u16, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4000, 4999,
        ] {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice("bye é".as_bytes());
            assert_eq!(close_code_of(&p).unwrap(), Some(code));
        }
        assert!(matches!(
            close_code_of(&[0x03, 0xE8, 0xFF, 0xFE]),
            Err(ReadError::BadCloseReason)
        ));
    }
}
