//! Minting tokens: [`Minter`] signs claims (for `herald token`, `herald dev`,
//! loadgen and tests) and [`TokenSpec`] builds the claims of PROTOCOL.md
//! section 3 from command-line style lists.
//!
//! Minting does not validate: `TokenSpec` may produce a token the verifier
//! refuses (a bad channel name, say), and that is the verifier's call. The
//! private key never appears in `Debug` output.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::AuthError;
use crate::keys::{self, Alg};

/// Signs tokens with one key and algorithm.
#[derive(Clone)]
pub struct Minter {
    alg: Alg,
    kid: Option<String>,
    key: EncodingKey,
}

impl Minter {
    /// An HS256 minter with a shared secret; tokens carry no `kid`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self {
            alg: Alg::HS256,
            kid: None,
            key: EncodingKey::from_secret(secret),
        }
    }

    /// A minter for an RS256, ES256 or EdDSA PKCS#8 private key PEM; `kid`
    /// goes in the header. [`AuthError::Config`] for HS256, a PEM that does
    /// not fit `alg`, or a key that cannot sign.
    pub fn from_pem(
        alg: Alg,
        kid: Option<String>,
        private_key_pem: &[u8],
    ) -> Result<Self, AuthError> {
        Ok(Self {
            alg,
            kid,
            key: keys::encoding_key(alg, private_key_pem)?,
        })
    }

    /// Signs `claims`, which must be a JSON object.
    pub fn mint(&self, claims: &Value) -> Result<String, AuthError> {
        if !claims.is_object() {
            return Err(AuthError::Malformed("claims must be a JSON object".into()));
        }
        let mut header = Header::new(self.alg.jwt());
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| AuthError::Config(format!("signing failed: {e}")))
    }
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What a connection token should grant; [`TokenSpec::to_claims`] turns it
/// into the claims JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenSpec {
    /// `sub`.
    pub sub: String,
    /// Lifetime; `exp` = now + ttl (whole seconds). `None`: no `exp`.
    pub ttl: Option<Duration>,
    /// `channels` (automatic subscriptions).
    pub channels: Vec<String>,
    /// `allow.subscribe` patterns.
    pub subscribe: Vec<String>,
    /// `allow.publish` patterns.
    pub publish: Vec<String>,
    /// `allow.signal` patterns.
    pub signal: Vec<String>,
    /// `allow.presence` patterns.
    pub presence: Vec<String>,
    /// `info` object.
    pub info: Option<Value>,
}

impl TokenSpec {
    /// The claims: `sub`, `iat`, `exp` (with a ttl), `channels` (when
    /// non-empty), `allow` with only the non-empty lists (absent when all are
    /// empty), `info` (when set).
    pub fn to_claims(&self, now_unix: i64) -> Value {
        let mut c = Map::new();
        c.insert("sub".into(), json!(self.sub));
        c.insert("iat".into(), json!(now_unix));
        if let Some(ttl) = self.ttl {
            let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
            c.insert("exp".into(), json!(now_unix.saturating_add(secs)));
        }
        if !self.channels.is_empty() {
            c.insert("channels".into(), json!(self.channels));
        }
        let mut allow = Map::new();
        for (op, list) in [
            ("subscribe", &self.subscribe),
            ("publish", &self.publish),
            ("signal", &self.signal),
            ("presence", &self.presence),
        ] {
            if !list.is_empty() {
                allow.insert(op.into(), json!(list));
            }
        }
        if !allow.is_empty() {
            c.insert("allow".into(), Value::Object(allow));
        }
        if let Some(info) = &self.info {
            c.insert("info".into(), info.clone());
        }
        Value::Object(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::fixtures::*;
    use crate::{AuthConfig, GrantOp, KeyConfig, Verifier};
    use herald_protocol::ChannelName;

    #[test]
    fn to_claims_minimal() {
        let spec = TokenSpec {
            sub: "u1".into(),
            ..TokenSpec::default()
        };
        assert_eq!(spec.to_claims(100), json!({"sub": "u1", "iat": 100}));
    }

    #[test]
    fn to_claims_full() {
        let spec = TokenSpec {
            sub: "op:42".into(),
            ttl: Some(Duration::from_secs(3600)),
            channels: vec!["dashboard_user_42".into()],
            subscribe: vec!["chat_*".into()],
            publish: vec![],
            signal: vec!["chat_*".into()],
            presence: vec![],
            info: Some(json!({"name": "Purna"})),
        };
        assert_eq!(
            spec.to_claims(1000),
            json!({
                "sub": "op:42", "iat": 1000, "exp": 4600,
                "channels": ["dashboard_user_42"],
                "allow": {"subscribe": ["chat_*"], "signal": ["chat_*"]},
                "info": {"name": "Purna"}
            })
        );
    }

    #[test]
    fn minted_spec_verifies() {
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
        let spec = TokenSpec {
            sub: "op:42".into(),
            ttl: Some(Duration::from_secs(60)),
            channels: vec!["dashboard_user_42".into()],
            publish: vec!["chat_*".into()],
            ..TokenSpec::default()
        };
        let m = Minter::from_pem(Alg::ES256, Some("k".into()), EC.as_bytes()).unwrap();
        let token = m.mint(&spec.to_claims(now)).unwrap();
        let v = Verifier::new(&AuthConfig {
            keys: vec![KeyConfig {
                kid: "k".into(),
                alg: Alg::ES256,
                public_key_pem: EC_PUB.into(),
            }],
            ..AuthConfig::default()
        })
        .unwrap();
        let c = v.verify(&token).unwrap();
        assert_eq!(c.exp, Some(now + 60));
        let chat = ChannelName::new("chat_1").unwrap();
        assert!(c.allows(GrantOp::Publish, &chat));
        assert!(!c.allows(GrantOp::Subscribe, &chat));
    }

    #[test]
    fn mint_rejects_non_objects_and_hides_key() {
        let m = Minter::hs256(b"topsecret");
        assert!(matches!(m.mint(&json!([1])), Err(AuthError::Malformed(_))));
        assert!(!format!("{m:?}").contains("topsecret"));
        assert!(matches!(
            Minter::from_pem(Alg::HS256, None, b"x"),
            Err(AuthError::Config(_))
        ));
    }

    #[test]
    fn kid_goes_in_the_header() {
        let m = Minter::from_pem(Alg::EdDSA, Some("ed-2026".into()), ED.as_bytes()).unwrap();
        let t = m.mint(&json!({"sub": "u"})).unwrap();
        let h = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(h.kid.as_deref(), Some("ed-2026"));
        assert_eq!(h.alg, jsonwebtoken::Algorithm::EdDSA);
    }
}
