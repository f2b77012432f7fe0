//! Error codes (PROTOCOL.md section 5) and close codes (section 6) as types.
//!
//! Every client-visible failure is mapped to one of these in exactly one
//! place per boundary; nothing else writes the strings or numbers.

use std::fmt;

/// Error code carried by a `reply` error or an ingest API error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed frame or body, missing or mistyped field.
    BadRequest,
    /// Channel name outside PROTOCOL.md section 1.
    BadChannel,
    /// `op` not in section 4.
    UnknownOp,
    /// The token does not grant this.
    Forbidden,
    /// `unsubscribe` of a channel not held.
    NotSubscribed,
    /// `data` over its limit.
    TooLarge,
    /// Over the request rate.
    RateLimited,
    /// A cap was reached (e.g. the channel's subscriber cap on this node).
    LimitReached,
    /// Ingest, store or bus down; retry.
    Unavailable,
    /// A publish `key` reused with another channel or data.
    Conflict,
    /// A bug or an unexpected failure on the server.
    Internal,
    /// Ingest API only: bad or missing API key (HTTP 401).
    Unauthorized,
    /// Ingest API only: unknown path (HTTP 404).
    NotFound,
}

impl ErrorCode {
    /// The wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BadChannel => "bad_channel",
            Self::UnknownOp => "unknown_op",
            Self::Forbidden => "forbidden",
            Self::NotSubscribed => "not_subscribed",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::LimitReached => "limit_reached",
            Self::Unavailable => "unavailable",
            Self::Conflict => "conflict",
            Self::Internal => "internal",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
        }
    }

    /// Parses a wire string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// Every code, for metrics descriptions and tests.
    pub const ALL: [ErrorCode; 13] = [
        Self::BadRequest,
        Self::BadChannel,
        Self::UnknownOp,
        Self::Forbidden,
        Self::NotSubscribed,
        Self::TooLarge,
        Self::RateLimited,
        Self::LimitReached,
        Self::Unavailable,
        Self::Conflict,
        Self::Internal,
        Self::Unauthorized,
        Self::NotFound,
    ];

    /// HTTP status of the ingest API for this code (PROTOCOL.md section 8).
    pub const fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::BadChannel | Self::UnknownOp => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound | Self::NotSubscribed => 404,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::RateLimited | Self::LimitReached => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// Whether the same request may succeed later.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::RateLimited | Self::LimitReached | Self::Internal
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// WebSocket close code (PROTOCOL.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal.
    Normal,
    /// 1012: node draining; reconnect at once with recovery.
    ServiceRestart,
    /// 1007: invalid UTF-8 in a text frame (or in a close frame's reason).
    InvalidUtf8,
    /// 1002: RFC 6455 protocol error in a close frame (a 1-byte payload, a
    /// code RFC 6455 section 7.4 does not allow on the wire).
    ProtocolError,
    /// The client closed with this (valid) code: the server's close frame
    /// echoes it (RFC 6455 section 5.5.1).
    Peer(u16),
    /// 1009: inbound message over `max_frame_bytes`.
    TooBig,
    /// 4000: protocol violation.
    ProtocolViolation,
    /// 4001: missing, malformed or badly signed token.
    Unauthorized,
    /// 4004: token expired.
    TokenExpired,
    /// 4008: outbound queue over its bound.
    SlowConsumer,
    /// 4009: node, user or channel connection limit.
    ConnectionLimit,
    /// 4029: over the request rate for too long.
    RateLimited,
    /// 4408: nothing received within the heartbeat timeout.
    HeartbeatTimeout,
}

impl CloseCode {
    /// The numeric code.
    pub const fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::ServiceRestart => 1012,
            Self::InvalidUtf8 => 1007,
            Self::ProtocolError => 1002,
            Self::Peer(c) => c,
            Self::TooBig => 1009,
            Self::ProtocolViolation => 4000,
            Self::Unauthorized => 4001,
            Self::TokenExpired => 4004,
            Self::SlowConsumer => 4008,
            Self::ConnectionLimit => 4009,
            Self::RateLimited => 4029,
            Self::HeartbeatTimeout => 4408,
        }
    }

    /// Short reason text sent in the close frame and the `disconnect` frame.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::ServiceRestart => "service restart",
            Self::InvalidUtf8 => "invalid utf-8",
            Self::ProtocolError => "protocol error",
            Self::Peer(_) => "",
            Self::TooBig => "message too big",
            Self::ProtocolViolation => "protocol violation",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token expired",
            Self::SlowConsumer => "slow consumer",
            Self::ConnectionLimit => "connection limit reached",
            Self::RateLimited => "rate limited",
            Self::HeartbeatTimeout => "heartbeat timeout",
        }
    }

    /// Whether the client should reconnect (the `disconnect.reconnect` flag).
    pub const fn reconnect(self) -> bool {
        matches!(
            self,
            Self::ServiceRestart
                | Self::SlowConsumer
                | Self::ConnectionLimit
                | Self::RateLimited
                | Self::HeartbeatTimeout
                | Self::TokenExpired
        )
    }

    /// Whether a `disconnect` frame precedes the close frame: not for a
    /// normal close, nor when echoing the client's own close.
    pub const fn announced(self) -> bool {
        !matches!(self, Self::Normal | Self::Peer(_))
    }

    /// Whether `code`, received in a client's close frame, is one RFC 6455
    /// section 7.4 allows on the wire: 1000-1003, 1007-1014 (the IANA
    /// registry's 1012-1014 included) and 3000-4999.
    pub const fn valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// Label value for metrics (a closed set).
    pub const fn label(self) -> &'static str {
        match self {
            Self::Normal => "1000",
            Self::ServiceRestart => "1012",
            Self::InvalidUtf8 => "1007",
            Self::ProtocolError => "1002",
            Self::Peer(_) => "peer",
            Self::TooBig => "1009",
            Self::ProtocolViolation => "4000",
            Self::Unauthorized => "4001",
            Self::TokenExpired => "4004",
            Self::SlowConsumer => "4008",
            Self::ConnectionLimit => "4009",
            Self::RateLimited => "4029",
            Self::HeartbeatTimeout => "4408",
        }
    }
}
