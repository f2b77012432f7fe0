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
    fn header_lengths() {
        assert_eq!(&frame(Opcode::Text, b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = frame(Opcode::Binary, &[0u8; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        let f = frame(Opcode::Binary, &vec![0u8; 70000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70000 + 10);
    }
}
