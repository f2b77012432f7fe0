//! [`Verifier`]: key selection by `kid`, pinned algorithms, and the time,
//! audience and issuer rules (PROTOCOL.md section 3).
//!
//! Invariants:
//! - the token header's `alg` must equal the selected key's pinned algorithm
//!   before any cryptography runs; `none` and unknown names are
//!   [`AuthError::WrongAlgorithm`];
//! - jsonwebtoken's defaults are not used: leeway comes from the config (its
//!   default is 60 s), `nbf` is checked, `aud` is checked only when an audience
//!   is configured (and then required), likewise `iss`;
//! - keys are parsed once in [`Verifier::new`]; `verify` does no I/O and takes
//!   no lock, so it may run on the connection task.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_protocol::ChannelName;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::claims::{RawConnClaims, RawSubClaims, non_empty_sub};
use crate::keys::{self, Alg, KeyConfig};
use crate::{AuthError, ConnClaims};

/// Longest accepted clock leeway: jsonwebtoken computes `now - leeway` in
/// unsigned seconds, and a leeway of days defeats `exp` anyway.
const MAX_LEEWAY: Duration = Duration::from_secs(24 * 3600);

/// Token verification settings (`[auth]`, `--jwt-secret`, `[[auth.keys]]`).
#[derive(Clone)]
pub struct AuthConfig {
    /// HS256 key from `--jwt-secret`; used for tokens without `kid` (or with a
    /// `kid` not in `keys`, when the token is HS256).
    pub secret: Option<String>,
    /// Public keys selected by the token header's `kid`, algorithm pinned per key.
    pub keys: Vec<KeyConfig>,
    /// Clock leeway for `exp` and `nbf`, in whole seconds (default 5 s).
    pub leeway: Duration,
    /// Required `aud`, checked only when set.
    pub audience: Option<String>,
    /// Required `iss`, checked only when set.
    pub issuer: Option<String>,
    /// Whether `exp` is required (default true).
    pub require_exp: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secret: None,
            keys: Vec::new(),
            leeway: Duration::from_secs(5),
            audience: None,
            issuer: None,
            require_exp: true,
        }
    }
}

impl fmt::Debug for AuthConfig {
    /// Redacts the secret: configs get logged, secrets must not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .field("keys", &self.keys)
            .field("leeway", &self.leeway)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

/// Verifies connection and subscription tokens. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The HS256 secret, for tokens without (or with an unknown) `kid`.
    secret: Option<Key>,
    /// Keys by `kid`.
    keys: HashMap<String, Key>,
    leeway: Duration,
}

/// A decoding key with its pinned algorithm and the validation built for it.
struct Key {
    alg: Alg,
    key: DecodingKey,
    validation: Validation,
}

/// The part of the JOSE header we read before picking a key.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl Verifier {
    /// Builds a verifier, parsing every key once. Fails with
    /// [`AuthError::NoKey`] when neither a secret nor a key is configured and
    /// [`AuthError::Config`] (naming the `kid`) for a bad or mismatched PEM, a
    /// duplicate `kid`, an empty secret or a leeway over a day.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        if cfg.leeway > MAX_LEEWAY {
            return Err(AuthError::Config(format!(
                "leeway {:?} is longer than one day",
                cfg.leeway
            )));
        }
        let validation = |alg: Alg| {
            let mut v = Validation::new(alg.jwt());
            v.leeway = cfg.leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["sub"];
            if cfg.require_exp {
                required.push("exp");
            }
            // A token for an audience (or from an issuer) must say so once
            // one is configured: a token minted without `aud` may be meant
            // for any service sharing the key.
            match &cfg.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.push("aud");
                }
                None => v.validate_aud = false,
            }
            if let Some(iss) = &cfg.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            v
        };
        let secret = match cfg.secret.as_deref() {
            None => None,
            Some("") => return Err(AuthError::Config("jwt secret is empty".into())),
            Some(s) => Some(Key {
                alg: Alg::HS256,
                key: DecodingKey::from_secret(s.as_bytes()),
                validation: validation(Alg::HS256),
            }),
        };
        let mut keys = HashMap::with_capacity(cfg.keys.len());
        for k in &cfg.keys {
            let key = Key {
                alg: k.alg,
                key: keys::decoding_key(k)?,
                validation: validation(k.alg),
            };
            if keys.insert(k.kid.clone(), key).is_some() {
                return Err(AuthError::Config(format!(
                    "duplicate key {}",
                    crate::error::shown(&k.kid)
                )));
            }
        }
        if secret.is_none() && keys.is_empty() {
            return Err(AuthError::NoKey);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                secret,
                keys,
                leeway: cfg.leeway,
            }),
        })
    }

    /// Verifies a connection token (also a `refresh` token) and parses its
    /// claims.
    pub fn verify(&self, token: &str) -> Result<ConnClaims, AuthError> {
        self.decode::<RawConnClaims>(token)?.into_claims()
    }

    /// Verifies a subscription token `{"sub", "channel", "exp", ...}` for the
    /// connection's `sub` and the requested `channel`: same signature, time,
    /// `aud` and `iss` rules as [`Verifier::verify`].
    pub fn verify_subscription(
        &self,
        token: &str,
        sub: &str,
        channel: &ChannelName,
    ) -> Result<(), AuthError> {
        let raw = self.decode::<RawSubClaims>(token)?;
        if non_empty_sub(raw.sub)? != sub {
            return Err(AuthError::WrongSubject);
        }
        match raw.channel {
            None => Err(AuthError::MissingClaim("channel")),
            Some(c) if c == channel.as_str() => Ok(()),
            Some(_) => Err(AuthError::WrongChannel),
        }
    }

    /// The configured clock leeway (for the gateway's expiry timer).
    pub fn leeway(&self) -> Duration {
        self.inner.leeway
    }

    /// Picks the key, pins the algorithm, checks signature and registered
    /// claims, and deserializes the payload into `T`.
    fn decode<T: DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = read_header(token)?;
        let alg = Alg::from_header(&header.alg).ok_or(AuthError::WrongAlgorithm)?;
        let key = self.select(header.kid.as_deref(), alg)?;
        if alg != key.alg {
            return Err(AuthError::WrongAlgorithm);
        }
        jsonwebtoken::decode::<T>(token, &key.key, &key.validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::from_jwt(&e))
    }

    /// Key selection (PROTOCOL.md section 3): a configured `kid` picks its
    /// key; no `kid` picks the secret; an unknown `kid` falls back to the
    /// secret only for an HS256 token.
    fn select(&self, kid: Option<&str>, alg: Alg) -> Result<&Key, AuthError> {
        let inner = &*self.inner;
        match kid.and_then(|k| inner.keys.get(k)) {
            Some(key) => Ok(key),
            None if kid.is_none() || alg == Alg::HS256 => {
                inner.secret.as_ref().ok_or(AuthError::UnknownKey)
            }
            None => Err(AuthError::UnknownKey),
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<_> = self.inner.keys.keys().collect();
        kids.sort();
        f.debug_struct("Verifier")
            .field("secret", &self.inner.secret.is_some())
            .field("kids", &kids)
            .field("leeway", &self.inner.leeway)
            .finish()
    }
}

/// Decodes the JOSE header of a compact JWS with exactly three segments.
fn read_header(token: &str) -> Result<RawHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "not three dot-separated segments".into(),
        ));
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Malformed("header is not base64url".into()))?;
    serde_json::from_slice(&json).map_err(|e| AuthError::Malformed(format!("bad header: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::fixtures::*;
    use crate::{GrantOp, Minter};
    use serde_json::{Value, json};

    const SECRET: &str = "s3cret-for-tests";

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn cfg() -> AuthConfig {
        AuthConfig {
            secret: Some(SECRET.into()),
            ..AuthConfig::default()
        }
    }

    fn verifier(cfg: &AuthConfig) -> Verifier {
        Verifier::new(cfg).unwrap()
    }

    fn hs(claims: Value) -> String {
        Minter::hs256(SECRET.as_bytes()).mint(&claims).unwrap()
    }

    fn valid(extra: Value) -> Value {
        let mut c = json!({"sub": "op:42", "exp": now() + 600});
        if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
            c.extend(extra);
        }
        c
    }

    fn with_keys() -> AuthConfig {
        let key = |kid: &str, alg, pem: &str| KeyConfig {
            kid: kid.into(),
            alg,
            public_key_pem: pem.into(),
        };
        AuthConfig {
            keys: vec![
                key("rsa1", Alg::RS256, RSA_PUB),
                key("ec1", Alg::ES256, EC_PUB),
                key("ed1", Alg::EdDSA, ED_PUB),
            ],
            ..cfg()
        }
    }

    /// base64url(JSON) of a value, for hand-made tokens.
    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    // ---- acceptance ----

    #[test]
    fn accepts_hs256() {
        let c = verifier(&cfg())
            .verify(&hs(valid(json!({"channels": ["chat_1"]}))))
            .unwrap();
        assert_eq!(c.sub, "op:42");
        assert_eq!(c.channels, vec![ch("chat_1")]);
        assert!(c.allows(GrantOp::Subscribe, &ch("chat_1")));
    }

    #[test]
    fn accepts_rs256_es256_eddsa_by_kid() {
        let v = verifier(&with_keys());
        for (alg, kid, pem) in [
            (Alg::RS256, "rsa1", RSA),
            (Alg::ES256, "ec1", EC),
            (Alg::EdDSA, "ed1", ED),
        ] {
            let m = Minter::from_pem(alg, Some(kid.into()), pem.as_bytes()).unwrap();
            let c = v.verify(&m.mint(&valid(json!({}))).unwrap());
            assert_eq!(c.map(|c| c.sub), Ok("op:42".into()), "{alg}");
        }
    }

    #[test]
    fn accepts_keys_without_secret() {
        let cfg = AuthConfig {
            secret: None,
            ..with_keys()
        };
        let m = Minter::from_pem(Alg::EdDSA, Some("ed1".into()), ED.as_bytes()).unwrap();
        verifier(&cfg)
            .verify(&m.mint(&valid(json!({}))).unwrap())
            .unwrap();
        // ...and then an HS256 token has no key.
        assert_eq!(
            verifier(&cfg).verify(&hs(valid(json!({})))),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn accepts_unknown_claims_and_aud_when_no_audience_configured() {
        let t = hs(valid(
            json!({"aud": "elsewhere", "iss": "x", "whatever": {"a": 1}}),
        ));
        verifier(&cfg()).verify(&t).unwrap();
    }

    // ---- rejections ----

    #[test]
    fn rejects_missing() {
        assert_eq!(verifier(&cfg()).verify(""), Err(AuthError::Missing));
    }

    #[test]
    fn rejects_malformed() {
        let v = verifier(&cfg());
        let good = hs(valid(json!({})));
        let (head, rest) = good.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        for t in [
            "garbage".to_string(),
            format!("{head}.{payload}"),
            format!("{good}.extra"),
            format!("!!!.{payload}.{sig}"),
            format!("{head}.{payload}.!!!"),
            format!("{}.{payload}.{sig}", URL_SAFE_NO_PAD.encode("not json")),
            // Correctly signed, but the payload is not base64 / not an object.
            signed(&format!("{head}.!!!")),
            signed(&format!("{head}.{}", b64(&json!([1, 2])))),
            signed(&format!("{head}.{}", URL_SAFE_NO_PAD.encode("{\"sub\""))),
        ] {
            assert!(
                matches!(v.verify(&t), Err(AuthError::Malformed(_))),
                "{t}: {:?}",
                v.verify(&t)
            );
        }
    }

    /// `message` plus a valid HS256 signature over it.
    fn signed(message: &str) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        format!("{message}.{sig}")
    }

    #[test]
    fn rejects_other_secret() {
        let t = Minter::hs256(b"another secret")
            .mint(&valid(json!({})))
            .unwrap();
        assert_eq!(verifier(&cfg()).verify(&t), Err(AuthError::BadSignature));
    }

    #[test]
    fn rejects_tampered_payload() {
        let good = hs(valid(json!({})));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = b64(&valid(json!({"sub": "admin"})));
        let t = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(verifier(&cfg()).verify(&t), Err(AuthError::BadSignature));
    }

    #[test]
    fn rejects_alg_none() {
        let payload = b64(&valid(json!({})));
        for header in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "None", "typ": "JWT"}),
            json!({"alg": "none", "typ": "JWT", "kid": "rsa1"}),
        ] {
            let t = format!("{}.{payload}.", b64(&header));
            assert_eq!(
                verifier(&with_keys()).verify(&t),
                Err(AuthError::WrongAlgorithm),
                "{header}"
            );
        }
    }

    #[test]
    fn rejects_other_algorithms() {
        let payload = b64(&valid(json!({})));
        let t = format!("{}.{payload}.AAAA", b64(&json!({"alg": "HS512"})));
        assert_eq!(verifier(&cfg()).verify(&t), Err(AuthError::WrongAlgorithm));
    }

    /// An HS256 token with header `kid`, signed with `secret` as the HMAC key.
    fn hs_with_kid(kid: &str, secret: &[u8], claims: &Value) -> String {
        let header = jsonwebtoken::Header {
            kid: Some(kid.into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        };
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    #[test]
    fn rejects_hs256_signed_with_rsa_public_key_as_secret() {
        // Key confusion: the RS256 key's public PEM used as an HMAC secret.
        let token = hs_with_kid(
            "rsa1",
            RSA_PUB.as_bytes(),
            &valid(json!({"sub": "attacker"})),
        );
        assert_eq!(
            verifier(&with_keys()).verify(&token),
            Err(AuthError::WrongAlgorithm)
        );
        let no_secret = AuthConfig {
            secret: None,
            ..with_keys()
        };
        assert_eq!(
            verifier(&no_secret).verify(&token),
            Err(AuthError::WrongAlgorithm)
        );
    }

    #[test]
    fn rejects_token_whose_kid_selects_a_key_of_another_alg() {
        // Validly signed, but with another algorithm than the kid's pinned one.
        for (alg, kid, pem) in [
            (Alg::ES256, "rsa1", EC),
            (Alg::RS256, "ec1", RSA),
            (Alg::ES256, "ed1", EC),
        ] {
            let m = Minter::from_pem(alg, Some(kid.into()), pem.as_bytes()).unwrap();
            let t = m.mint(&valid(json!({}))).unwrap();
            assert_eq!(
                verifier(&with_keys()).verify(&t),
                Err(AuthError::WrongAlgorithm),
                "{kid}"
            );
        }
    }

    #[test]
    fn unknown_kid_falls_back_to_secret_only_for_hs256() {
        let v = verifier(&with_keys());
        v.verify(&hs_with_kid("nope", SECRET.as_bytes(), &valid(json!({}))))
            .unwrap();
        let m = Minter::from_pem(Alg::RS256, Some("nope".into()), RSA.as_bytes()).unwrap();
        let t = m.mint(&valid(json!({}))).unwrap();
        assert_eq!(v.verify(&t), Err(AuthError::UnknownKey));
        // An asymmetric token without kid goes to the HS256 secret: wrong alg.
        let m = Minter::from_pem(Alg::RS256, None, RSA.as_bytes()).unwrap();
        let t = m.mint(&valid(json!({}))).unwrap();
        assert_eq!(v.verify(&t), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn rejects_expired_beyond_leeway() {
        let t = hs(valid(json!({"exp": now() - 10})));
        let err = verifier(&cfg()).verify(&t).unwrap_err();
        assert_eq!(err, AuthError::Expired);
        assert_eq!(err.close_code().code(), 4004);
    }

    #[test]
    fn accepts_expired_within_leeway() {
        let t = hs(valid(json!({"exp": now() - 2})));
        verifier(&cfg()).verify(&t).unwrap();
        let strict = AuthConfig {
            leeway: Duration::ZERO,
            ..cfg()
        };
        assert_eq!(verifier(&strict).verify(&t), Err(AuthError::Expired));
    }

    #[test]
    fn rejects_not_yet_valid() {
        let v = verifier(&cfg());
        let t = hs(valid(json!({"nbf": now() + 60})));
        assert_eq!(v.verify(&t), Err(AuthError::NotYetValid));
        // Within leeway: accepted.
        v.verify(&hs(valid(json!({"nbf": now() + 2})))).unwrap();
    }

    #[test]
    fn rejects_wrong_audience() {
        let cfg = AuthConfig {
            audience: Some("herald".into()),
            ..cfg()
        };
        let v = verifier(&cfg);
        v.verify(&hs(valid(json!({"aud": "herald"})))).unwrap();
        v.verify(&hs(valid(json!({"aud": ["other", "herald"]}))))
            .unwrap();
        assert_eq!(
            v.verify(&hs(valid(json!({"aud": "other"})))),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            v.verify(&hs(valid(json!({})))),
            Err(AuthError::MissingClaim("aud"))
        );
    }

    #[test]
    fn rejects_wrong_issuer() {
        let cfg = AuthConfig {
            issuer: Some("backend".into()),
            ..cfg()
        };
        let v = verifier(&cfg);
        v.verify(&hs(valid(json!({"iss": "backend"})))).unwrap();
        assert_eq!(
            v.verify(&hs(valid(json!({"iss": "evil"})))),
            Err(AuthError::WrongIssuer)
        );
        assert_eq!(
            v.verify(&hs(valid(json!({})))),
            Err(AuthError::MissingClaim("iss"))
        );
    }

    #[test]
    fn rejects_missing_sub() {
        let v = verifier(&cfg());
        assert_eq!(
            v.verify(&hs(json!({"exp": now() + 60}))),
            Err(AuthError::MissingClaim("sub"))
        );
        assert!(matches!(
            v.verify(&hs(json!({"sub": "", "exp": now() + 60}))),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&hs(json!({"sub": 42, "exp": now() + 60}))),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_missing_exp_unless_optional() {
        let t = hs(json!({"sub": "u"}));
        assert_eq!(
            verifier(&cfg()).verify(&t),
            Err(AuthError::MissingClaim("exp"))
        );
        let lax = AuthConfig {
            require_exp: false,
            ..cfg()
        };
        let c = verifier(&lax).verify(&t).unwrap();
        assert_eq!(c.exp, None);
        // An exp that is present is still enforced.
        assert_eq!(
            verifier(&lax).verify(&hs(json!({"sub": "u", "exp": now() - 60}))),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn rejects_bad_exp_type() {
        let t = hs(json!({"sub": "u", "exp": "tomorrow"}));
        assert!(matches!(
            verifier(&cfg()).verify(&t),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_info_over_1_kib() {
        let big = "x".repeat(1100);
        let t = hs(valid(json!({"info": {"bio": big}})));
        assert!(matches!(
            verifier(&cfg()).verify(&t),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_bad_channel() {
        let t = hs(valid(json!({"channels": ["chat_1", "bad channel"]})));
        match verifier(&cfg()).verify(&t) {
            Err(AuthError::Malformed(m)) => assert!(m.contains("bad channel"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_pattern() {
        let t = hs(valid(json!({"allow": {"subscribe": ["chat_#"]}})));
        assert!(matches!(
            verifier(&cfg()).verify(&t),
            Err(AuthError::Malformed(_))
        ));
    }

    // ---- subscription tokens ----

    #[test]
    fn subscription_token_ok() {
        let t = hs(valid(json!({"channel": "chat_42"})));
        verifier(&cfg())
            .verify_subscription(&t, "op:42", &ch("chat_42"))
            .unwrap();
    }

    #[test]
    fn subscription_token_other_sub() {
        let t = hs(valid(json!({"channel": "chat_42"})));
        assert_eq!(
            verifier(&cfg()).verify_subscription(&t, "op:43", &ch("chat_42")),
            Err(AuthError::WrongSubject)
        );
    }

    #[test]
    fn subscription_token_other_channel() {
        let v = verifier(&cfg());
        let t = hs(valid(json!({"channel": "chat_42"})));
        assert_eq!(
            v.verify_subscription(&t, "op:42", &ch("chat_43")),
            Err(AuthError::WrongChannel)
        );
        let t = hs(valid(json!({})));
        assert_eq!(
            v.verify_subscription(&t, "op:42", &ch("chat_42")),
            Err(AuthError::MissingClaim("channel"))
        );
    }

    #[test]
    fn subscription_token_expired() {
        let t = hs(valid(json!({"channel": "chat_42", "exp": now() - 60})));
        assert_eq!(
            verifier(&cfg()).verify_subscription(&t, "op:42", &ch("chat_42")),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn subscription_token_bad_signature() {
        let t = Minter::hs256(b"other")
            .mint(&valid(json!({"channel": "chat_42"})))
            .unwrap();
        assert_eq!(
            verifier(&cfg()).verify_subscription(&t, "op:42", &ch("chat_42")),
            Err(AuthError::BadSignature)
        );
    }

    // ---- config ----

    #[test]
    fn config_errors() {
        assert_eq!(
            Verifier::new(&AuthConfig::default()).map(|_| ()),
            Err(AuthError::NoKey)
        );
        let empty = AuthConfig {
            secret: Some(String::new()),
            ..AuthConfig::default()
        };
        assert!(matches!(Verifier::new(&empty), Err(AuthError::Config(_))));
        let mut dup = with_keys();
        dup.keys.push(dup.keys[0].clone());
        match Verifier::new(&dup) {
            Err(AuthError::Config(m)) => assert!(m.contains("rsa1"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let mut bad = with_keys();
        bad.keys[1].public_key_pem = RSA_PUB.into();
        match Verifier::new(&bad) {
            Err(AuthError::Config(m)) => assert!(m.contains("ec1"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let long = AuthConfig {
            leeway: Duration::from_secs(2 * 24 * 3600),
            ..cfg()
        };
        assert!(matches!(Verifier::new(&long), Err(AuthError::Config(_))));
    }

    #[test]
    fn debug_redacts_secret_and_leeway_is_reported() {
        let cfg = cfg();
        assert!(!format!("{cfg:?}").contains(SECRET));
        let v = verifier(&cfg);
        assert!(!format!("{v:?}").contains(SECRET));
        assert_eq!(v.leeway(), Duration::from_secs(5));
    }

    #[test]
    fn verifier_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Verifier>();
    }
}
