//! [`AuthError`]: every way a token or the auth config can be refused, and the
//! one place that maps it to a close code (PROTOCOL.md sections 2 and 6).
//!
//! Messages never carry a token, a secret or a key; `Malformed` may name the
//! offending claim entry (a channel or pattern), shortened.

use herald_protocol::CloseCode;

/// Why a token (or the auth configuration) was refused.
///
/// Display is lowercase and one level; details for the log only, the client
/// sees the close code or `forbidden`.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No token was given (empty string).
    #[error("token missing")]
    Missing,
    /// Not a JWT, bad base64 or JSON, or a claim of the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not match the selected key.
    #[error("bad token signature")]
    BadSignature,
    /// The header's `alg` is `none`, unknown, or not the key's pinned algorithm.
    #[error("token algorithm not allowed for its key")]
    WrongAlgorithm,
    /// The header's `kid` selects no configured key (and the secret cannot apply).
    #[error("unknown token key id")]
    UnknownKey,
    /// `exp` is past, beyond the leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` does not name the configured audience.
    #[error("wrong token audience")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// A required claim is absent.
    #[error("token lacks the {0} claim")]
    MissingClaim(&'static str),
    /// A subscription or refresh token for another `sub`.
    #[error("token is for another subject")]
    WrongSubject,
    /// A subscription token for another channel.
    #[error("token is for another channel")]
    WrongChannel,
    /// Neither a secret nor any key is configured.
    #[error("no jwt secret or key configured")]
    NoKey,
    /// A bad key or setting in the auth configuration (names the `kid`).
    #[error("bad auth config: {0}")]
    Config(String),
}

impl AuthError {
    /// The close code for a connection refused with this error
    /// (PROTOCOL.md section 2): 4004 when expired, 4001 otherwise.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::Expired => CloseCode::TokenExpired,
            _ => CloseCode::Unauthorized,
        }
    }

    /// Maps a jsonwebtoken failure. Its `ErrorKind` is non_exhaustive: new
    /// kinds fall back to `Malformed`, which still refuses the token.
    pub(crate) fn from_jwt(e: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => Self::Expired,
            K::ImmatureSignature => Self::NotYetValid,
            K::InvalidAudience => Self::WrongAudience,
            K::InvalidIssuer => Self::WrongIssuer,
            K::InvalidSubject => Self::WrongSubject,
            K::InvalidSignature => Self::BadSignature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                Self::WrongAlgorithm
            }
            K::MissingRequiredClaim(c) => Self::MissingClaim(spec_claim(c)),
            K::InvalidClaimFormat(c) => Self::Malformed(format!("bad {} claim", spec_claim(c))),
            K::InvalidToken => Self::Malformed("not a jwt".into()),
            K::Base64(_) => Self::Malformed("bad base64".into()),
            K::Json(e) => Self::Malformed(format!("bad json: {e}")),
            K::Utf8(_) => Self::Malformed("bad utf-8".into()),
            // A configured key that the crypto backend cannot use: the
            // operator's fault, caught at startup where possible (keys.rs).
            K::InvalidEcdsaKey
            | K::InvalidEddsaKey
            | K::InvalidRsaKey(_)
            | K::InvalidKeyFormat
            | K::MissingAlgorithm => Self::Config(format!("key unusable: {e}")),
            _ => Self::Malformed(e.to_string()),
        }
    }
}

/// The static name of a registered claim jsonwebtoken reports by string.
fn spec_claim(c: &str) -> &'static str {
    match c {
        "sub" => "sub",
        "exp" => "exp",
        "nbf" => "nbf",
        "aud" => "aud",
        "iss" => "iss",
        _ => "unknown",
    }
}

/// `s` quoted for an error message, cut to 64 characters: token content is
/// client input and ends up in logs.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}...", s.get(..i).unwrap_or_default()),
        None => format!("{s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        assert_eq!(AuthError::Expired.close_code().code(), 4004);
        for e in [
            AuthError::Missing,
            AuthError::Malformed("x".into()),
            AuthError::BadSignature,
            AuthError::WrongAlgorithm,
            AuthError::UnknownKey,
            AuthError::NotYetValid,
            AuthError::WrongAudience,
            AuthError::WrongIssuer,
            AuthError::MissingClaim("sub"),
            AuthError::WrongSubject,
            AuthError::WrongChannel,
            AuthError::NoKey,
            AuthError::Config("x".into()),
        ] {
            assert_eq!(e.close_code().code(), 4001, "{e}");
        }
    }

    #[test]
    fn shown_cuts_long_input() {
        assert_eq!(shown("ab"), "\"ab\"");
        let long = "é".repeat(100);
        assert_eq!(shown(&long), format!("{:?}...", "é".repeat(64)));
    }
}
