//! PROTOCOL.md section 1: channel names, grant patterns and sequence numbers.
//!
//! Names are validated once at the edge (frames, HTTP bodies, tokens, config)
//! and travel as [`ChannelName`] afterwards, so no inner layer re-checks them.

use std::fmt;
use std::sync::Arc;

/// Longest channel name in bytes (PROTOCOL.md section 1).
pub const MAX_CHANNEL_LEN: usize = 200;

/// Whether `b` is one of the bytes allowed in a channel name.
#[inline]
pub fn is_channel_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'=')
}

/// A validated channel name: 1 to 200 bytes of `A-Z a-z 0-9 _ - . : @ =`.
///
/// Cheap to clone (shared `Arc<str>`), since a name is held by the hub, every
/// subscription and every in-flight message.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a channel name or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty name.
    #[error("channel name is empty")]
    Empty,
    /// Longer than [`MAX_CHANNEL_LEN`].
    #[error("channel name is longer than 200 bytes")]
    TooLong,
    /// A byte outside the allowed set.
    #[error("channel name contains a character outside A-Z a-z 0-9 _ - . : @ =")]
    BadChar,
}

impl ChannelName {
    /// Validates `s` as a channel name.
    pub fn new(s: &str) -> Result<Self, NameError> {
        validate(s, false)?;
        Ok(Self(Arc::from(s)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate(s: &str, allow_star: bool) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > MAX_CHANNEL_LEN {
        return Err(NameError::TooLong);
    }
    if s.bytes()
        .all(|b| is_channel_byte(b) || (allow_star && b == b'*'))
    {
        Ok(())
    } else {
        Err(NameError::BadChar)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ChannelName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ChannelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A grant pattern: a channel name in which `*` matches any run of allowed
/// characters, the empty run included.
///
/// Reference semantics (PROTOCOL.md section 1): the pattern as an anchored
/// regular expression with each `*` turned into `[A-Za-z0-9_.:@=-]*`. Since a
/// [`ChannelName`] only holds allowed characters, `*` matches any substring.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: Arc<str>,
}

impl Pattern {
    /// Validates `s` as a pattern (a channel name that may contain `*`).
    pub fn new(s: &str) -> Result<Self, NameError> {
        validate(s, true)?;
        Ok(Self { raw: Arc::from(s) })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Length in bytes; the longest matching pattern wins for channel caps.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Never true: a pattern is at least one byte.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Whether the pattern has no `*` (it then matches exactly one name).
    pub fn is_literal(&self) -> bool {
        !self.raw.contains('*')
    }

    /// Whether `channel` matches the pattern.
    pub fn matches(&self, channel: &str) -> bool {
        glob_match(self.raw.as_bytes(), channel.as_bytes())
    }
}

/// Iterative glob match with `*` only: linear in practice, worst case
/// O(pattern * name) with backtracking to the last star, no recursion.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.raw, f)
    }
}

impl std::str::FromStr for Pattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether any pattern of `patterns` matches `channel`.
pub fn any_match(patterns: &[Pattern], channel: &str) -> bool {
    patterns.iter().any(|p| p.matches(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for n in [
            "dashboard_website_12",
            "dashboard_user_7",
            "chat_updates",
            "chat_8942b9df-77c8-4e5f-a7eb-097aace75053",
            "chat_sishirbhusal",
            "a:b@c=d.e",
        ] {
            assert!(ChannelName::new(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(ChannelName::new(""), Err(NameError::Empty));
        assert_eq!(ChannelName::new(&"a".repeat(201)), Err(NameError::TooLong));
        assert!(ChannelName::new(&"a".repeat(200)).is_ok());
        for n in ["chat 1", "chat/1", "chat*", "é", "a\0"] {
            assert_eq!(ChannelName::new(n), Err(NameError::BadChar), "{n}");
        }
    }

    #[test]
    fn pattern_basics() {
        let p = Pattern::new("chat_*").unwrap();
        assert!(p.matches("chat_"));
        assert!(p.matches("chat_42"));
        assert!(!p.matches("chat"));
        assert!(!p.matches("xchat_1"));
        let p = Pattern::new("a*b*c").unwrap();
        assert!(p.matches("abc"));
        assert!(p.matches("aXXbYYc"));
        assert!(!p.matches("aXXbYY"));
        assert!(Pattern::new("*").unwrap().matches("anything"));
    }
}
