//! Connection claims (PROTOCOL.md section 3): [`ConnClaims`], [`Grants`] and
//! the raw JSON shapes they are parsed from.
//!
//! Invariant: a [`ConnClaims`] only exists with a non-empty `sub`, valid
//! channel names, valid patterns and an `info` object of at most 1 KiB;
//! anything else is [`AuthError::Malformed`] naming the bad entry. Unknown
//! claims (and unknown `allow` ops) are ignored so backends may add their own.
//! This module checks shapes only; signature and time are verify.rs's job.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_protocol::{ChannelName, Pattern};
use serde::Deserialize;

use crate::AuthError;
use crate::error::shown;

/// Largest `info` object, serialized (PROTOCOL.md section 3).
pub const MAX_INFO_BYTES: usize = 1024;

/// An operation a grant may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantOp {
    /// `subscribe` (also implied by the `channels` claim).
    Subscribe,
    /// `publish`.
    Publish,
    /// `signal`.
    Signal,
    /// `presence` (the query and the join/leave events).
    Presence,
}

/// The `allow` claim: patterns per operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Channels the client may subscribe to.
    pub subscribe: Vec<Pattern>,
    /// Channels the client may publish to.
    pub publish: Vec<Pattern>,
    /// Channels the client may signal on.
    pub signal: Vec<Pattern>,
    /// Channels whose presence the client may see.
    pub presence: Vec<Pattern>,
}

impl Grants {
    /// The patterns granting `op`.
    pub fn patterns(&self, op: GrantOp) -> &[Pattern] {
        match op {
            GrantOp::Subscribe => &self.subscribe,
            GrantOp::Publish => &self.publish,
            GrantOp::Signal => &self.signal,
            GrantOp::Presence => &self.presence,
        }
    }
}

/// The verified claims of a connection token.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnClaims {
    /// Who this is; shown to others as `from`. Never empty.
    pub sub: String,
    /// Expiry, unix seconds; `None` only when the operator made `exp` optional.
    pub exp: Option<i64>,
    /// Automatic subscriptions; they imply subscribe rights.
    pub channels: Vec<ChannelName>,
    /// The `allow` patterns.
    pub grants: Grants,
    /// The `info` object shown in presence (at most [`MAX_INFO_BYTES`]).
    pub info: Option<serde_json::Value>,
}

impl ConnClaims {
    /// Whether the token allows `op` on `channel`. Subscribe is also allowed
    /// on every channel named in `channels`.
    pub fn allows(&self, op: GrantOp, channel: &ChannelName) -> bool {
        (op == GrantOp::Subscribe && self.channels.contains(channel))
            || herald_protocol::names::any_match(self.grants.patterns(op), channel.as_str())
    }

    /// `exp` as a point in time, without leeway; `None` without `exp`.
    pub fn expires_at(&self) -> Option<SystemTime> {
        let secs = u64::try_from(self.exp?).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }
}

/// The connection token payload as sent. Every field is optional here so that
/// jsonwebtoken's own checks (required `sub`/`exp`, times) report first.
#[derive(Deserialize)]
pub(crate) struct RawConnClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    allow: Option<RawAllow>,
    #[serde(default)]
    info: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawAllow {
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    signal: Option<Vec<String>>,
    #[serde(default)]
    presence: Option<Vec<String>>,
}

/// A subscription token payload: `{"sub", "channel", "exp", ...}`.
#[derive(Deserialize)]
pub(crate) struct RawSubClaims {
    #[serde(default)]
    pub(crate) sub: Option<String>,
    #[serde(default)]
    pub(crate) channel: Option<String>,
}

impl RawConnClaims {
    /// Checks shapes and builds the claims.
    pub(crate) fn into_claims(self) -> Result<ConnClaims, AuthError> {
        let sub = non_empty_sub(self.sub)?;
        let exp = self.exp.as_ref().map(unix_seconds).transpose()?;
        let channels = self
            .channels
            .unwrap_or_default()
            .iter()
            .map(|c| {
                ChannelName::new(c).map_err(|e| {
                    AuthError::Malformed(format!("bad channel {} in channels: {e}", shown(c)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let grants = match self.allow {
            None => Grants::default(),
            Some(a) => Grants {
                subscribe: patterns("subscribe", a.subscribe)?,
                publish: patterns("publish", a.publish)?,
                signal: patterns("signal", a.signal)?,
                presence: patterns("presence", a.presence)?,
            },
        };
        let info = match self.info {
            None => None,
            Some(v @ serde_json::Value::Object(_)) => {
                let len = serde_json::to_vec(&v)
                    .map_err(|e| AuthError::Malformed(format!("bad info: {e}")))?
                    .len();
                if len > MAX_INFO_BYTES {
                    return Err(AuthError::Malformed(format!(
                        "info is {len} bytes, more than {MAX_INFO_BYTES}"
                    )));
                }
                Some(v)
            }
            Some(_) => return Err(AuthError::Malformed("info is not an object".into())),
        };
        Ok(ConnClaims {
            sub,
            exp,
            channels,
            grants,
            info,
        })
    }
}

/// `sub` must be present (jsonwebtoken checked) and non-empty.
pub(crate) fn non_empty_sub(sub: Option<String>) -> Result<String, AuthError> {
    match sub {
        None => Err(AuthError::MissingClaim("sub")),
        Some(s) if s.is_empty() => Err(AuthError::Malformed("sub is empty".into())),
        Some(s) => Ok(s),
    }
}

/// A NumericDate (RFC 7519: may be fractional) as whole unix seconds.
fn unix_seconds(n: &serde_json::Number) -> Result<i64, AuthError> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    // Fractional: floor. The range check makes the `as` exact, not saturating.
    match n.as_f64().map(f64::floor) {
        Some(f) if (0.0..9.0e18).contains(&f) => Ok(f as i64),
        _ => Err(AuthError::Malformed("exp out of range".into())),
    }
}

fn patterns(op: &str, raw: Option<Vec<String>>) -> Result<Vec<Pattern>, AuthError> {
    raw.unwrap_or_default()
        .iter()
        .map(|p| {
            Pattern::new(p).map_err(|e| {
                AuthError::Malformed(format!("bad pattern {} in allow.{op}: {e}", shown(p)))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<ConnClaims, AuthError> {
        serde_json::from_value::<RawConnClaims>(v)
            .unwrap()
            .into_claims()
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn malformed(v: serde_json::Value) -> String {
        match parse(v) {
            Err(AuthError::Malformed(m)) => m,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn full_claims_parse() {
        let c = parse(json!({
            "sub": "op:42", "exp": 1767225600, "iat": 1, "custom": [1, 2],
            "channels": ["dashboard_website_12", "dashboard_user_42"],
            "allow": {"subscribe": ["chat_*"], "publish": ["chat_8942b9df-77c8-4e5f-a7eb-097aace75053"],
                      "signal": ["chat_*"], "presence": ["chat_*"], "future_op": ["x"]},
            "info": {"name": "Purna Acharya", "role": "operator"}
        }))
        .unwrap();
        assert_eq!(c.sub, "op:42");
        assert_eq!(c.exp, Some(1767225600));
        assert_eq!(
            c.channels,
            vec![ch("dashboard_website_12"), ch("dashboard_user_42")]
        );
        assert_eq!(c.grants.subscribe, vec![Pattern::new("chat_*").unwrap()]);
        assert_eq!(
            c.info,
            Some(json!({"name": "Purna Acharya", "role": "operator"}))
        );
        assert_eq!(
            c.expires_at(),
            Some(UNIX_EPOCH + Duration::from_secs(1767225600))
        );
    }

    #[test]
    fn minimal_claims_parse() {
        let c = parse(json!({"sub": "u", "channels": null, "info": null})).unwrap();
        assert_eq!(c.exp, None);
        assert_eq!(c.expires_at(), None);
        assert!(c.channels.is_empty());
        assert_eq!(c.grants, Grants::default());
        assert_eq!(c.info, None);
    }

    #[test]
    fn fractional_exp_is_floored() {
        assert_eq!(
            parse(json!({"sub": "u", "exp": 10.9})).unwrap().exp,
            Some(10)
        );
    }

    #[test]
    fn bad_channel_is_named() {
        let m = malformed(json!({"sub": "u", "channels": ["ok", "chat 1"]}));
        assert!(m.contains("\"chat 1\""), "{m}");
    }

    #[test]
    fn bad_pattern_is_named() {
        let m = malformed(json!({"sub": "u", "allow": {"publish": ["chat/*"]}}));
        assert!(
            m.contains("\"chat/*\"") && m.contains("allow.publish"),
            "{m}"
        );
    }

    #[test]
    fn info_must_be_a_small_object() {
        let fits = "x".repeat(MAX_INFO_BYTES - r#"{"n":""}"#.len());
        assert!(parse(json!({"sub": "u", "info": {"n": fits}})).is_ok());
        let over = "x".repeat(MAX_INFO_BYTES);
        assert!(malformed(json!({"sub": "u", "info": {"n": over}})).contains("1024"));
        malformed(json!({"sub": "u", "info": "a string"}));
        malformed(json!({"sub": "u", "info": [1]}));
    }

    #[test]
    fn sub_must_be_non_empty() {
        malformed(json!({"sub": ""}));
        assert_eq!(parse(json!({})), Err(AuthError::MissingClaim("sub")));
    }

    #[test]
    fn allows_each_op_by_pattern() {
        let c = parse(json!({
            "sub": "u",
            "channels": ["dashboard_user_7"],
            "allow": {"subscribe": ["chat_*"], "publish": ["chat_1"],
                      "signal": ["typing_*"], "presence": ["room_*_live"]}
        }))
        .unwrap();
        use GrantOp::*;
        assert!(c.allows(Subscribe, &ch("chat_1")));
        assert!(c.allows(Subscribe, &ch("chat_")));
        assert!(!c.allows(Subscribe, &ch("chat")));
        assert!(
            c.allows(Subscribe, &ch("dashboard_user_7")),
            "channels imply subscribe"
        );
        assert!(
            !c.allows(Publish, &ch("dashboard_user_7")),
            "but nothing else"
        );
        assert!(!c.allows(Subscribe, &ch("dashboard_user_8")));
        assert!(c.allows(Publish, &ch("chat_1")));
        assert!(!c.allows(Publish, &ch("chat_2")));
        assert!(c.allows(Signal, &ch("typing_9")));
        assert!(!c.allows(Signal, &ch("chat_1")));
        assert!(c.allows(Presence, &ch("room_5_live")));
        assert!(!c.allows(Presence, &ch("room_5")));
    }

    #[test]
    fn no_grants_allow_nothing() {
        let c = parse(json!({"sub": "u"})).unwrap();
        for op in [
            GrantOp::Subscribe,
            GrantOp::Publish,
            GrantOp::Signal,
            GrantOp::Presence,
        ] {
            assert!(!c.allows(op, &ch("chat_1")));
        }
    }
}
