//! Algorithms and keys: [`Alg`], the `[[auth.keys]]` table ([`KeyConfig`]),
//! and turning PEM text into jsonwebtoken keys once, at startup.
//!
//! Invariant: a key is only ever used with its one pinned [`Alg`]; a PEM that
//! does not fit its algorithm (an RSA PEM configured as ES256, a P-384 key as
//! ES256, a private key where the public one belongs) is refused here with a
//! [`AuthError::Config`] naming the `kid`, never discovered per token.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// A signing algorithm herald accepts (PROTOCOL.md section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    /// HMAC with SHA-256, keyed by the shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// The JOSE name (`"HS256"`, ...), as in the token header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn jwt(self) -> Algorithm {
        match self {
            Self::HS256 => Algorithm::HS256,
            Self::RS256 => Algorithm::RS256,
            Self::ES256 => Algorithm::ES256,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }

    /// Parses a header `alg`; `None` for `none` and everything we refuse.
    pub(crate) fn from_header(s: &str) -> Option<Self> {
        [Self::HS256, Self::RS256, Self::ES256, Self::EdDSA]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = AuthError;

    /// Exact JOSE names only (`HS256`, `RS256`, `ES256`, `EdDSA`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_header(s).ok_or_else(|| {
            AuthError::Config(format!(
                "unknown algorithm {}, expected HS256, RS256, ES256 or EdDSA",
                crate::error::shown(s)
            ))
        })
    }
}

/// One `[[auth.keys]]` table: a public key selected by the token's `kid`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id, matched against the token header's `kid`.
    pub kid: String,
    /// The only algorithm accepted with this key. Not HS256: the HMAC key is
    /// the secret ([`crate::AuthConfig::secret`]).
    pub alg: Alg,
    /// PKCS#8 / SPKI public key (`-----BEGIN PUBLIC KEY-----`); RS256 also
    /// takes PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    pub public_key_pem: String,
}

/// Builds the decoding key of `k`, checking that it fits `k.alg`.
pub(crate) fn decoding_key(k: &KeyConfig) -> Result<DecodingKey, AuthError> {
    let bad = |why: &str| AuthError::Config(format!("key {}: {why}", crate::error::shown(&k.kid)));
    if k.kid.is_empty() {
        return Err(AuthError::Config("a key has an empty kid".into()));
    }
    if k.public_key_pem.contains("PRIVATE KEY") {
        return Err(bad(
            "public_key_pem holds a private key; configure the public key",
        ));
    }
    let pem = k.public_key_pem.as_bytes();
    let key = match k.alg {
        Alg::HS256 => {
            return Err(bad(
                "HS256 is keyed by the jwt secret, not by [[auth.keys]]",
            ));
        }
        Alg::RS256 => DecodingKey::from_rsa_pem(pem),
        Alg::ES256 => DecodingKey::from_ec_pem(pem),
        Alg::EdDSA => DecodingKey::from_ed_pem(pem),
    }
    .map_err(|e| bad(&format!("not a {} public key PEM ({e})", k.alg)))?;
    // Key sizes the backend expects: an uncompressed P-256 point, a 32-byte
    // Ed25519 key (its verifier slices 32 bytes and would panic on fewer).
    let bytes = key.try_get_as_bytes().map_err(|e| bad(&e.to_string()))?;
    let size_ok = match k.alg {
        Alg::ES256 => bytes.len() == 65,
        Alg::EdDSA => bytes.len() == 32,
        Alg::HS256 | Alg::RS256 => true,
    };
    if !size_ok {
        return Err(bad(&format!("not a {} public key (wrong curve?)", k.alg)));
    }
    // Building a verifier parses the key as the backend will per token; a
    // wrong signature only yields Ok(false), a bad key an Err.
    jsonwebtoken::crypto::verify("AA", b"probe", &key, k.alg.jwt())
        .map_err(|e| bad(&format!("unusable {} public key ({e})", k.alg)))?;
    Ok(key)
}

/// Builds the encoding key for a PKCS#8 private key PEM and checks it can sign.
pub(crate) fn encoding_key(alg: Alg, pem: &[u8]) -> Result<EncodingKey, AuthError> {
    let bad = |why: String| AuthError::Config(format!("{alg} private key: {why}"));
    let key = match alg {
        Alg::HS256 => return Err(bad("HS256 uses a secret, not a PEM".into())),
        Alg::RS256 => EncodingKey::from_rsa_pem(pem),
        Alg::ES256 => EncodingKey::from_ec_pem(pem),
        Alg::EdDSA => EncodingKey::from_ed_pem(pem),
    }
    .map_err(|e| bad(format!("not a PKCS#8 PEM for this algorithm ({e})")))?;
    jsonwebtoken::crypto::sign(b"probe", &key, alg.jwt())
        .map_err(|e| bad(format!("cannot sign ({e})")))?;
    Ok(key)
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Test key pairs from `tests/keys/` (see its README).
    pub const RSA: &str = include_str!("../tests/keys/rsa.pem");
    pub const RSA_PUB: &str = include_str!("../tests/keys/rsa.pub.pem");
    pub const EC: &str = include_str!("../tests/keys/ec.pem");
    pub const EC_PUB: &str = include_str!("../tests/keys/ec.pub.pem");
    pub const EC384_PUB: &str = include_str!("../tests/keys/ec384.pub.pem");
    pub const ED: &str = include_str!("../tests/keys/ed25519.pem");
    pub const ED_PUB: &str = include_str!("../tests/keys/ed25519.pub.pem");
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn key(kid: &str, alg: Alg, pem: &str) -> KeyConfig {
        KeyConfig {
            kid: kid.into(),
            alg,
            public_key_pem: pem.into(),
        }
    }

    fn config_err(k: &KeyConfig) -> String {
        match decoding_key(k) {
            Err(AuthError::Config(m)) => m,
            other => panic!("expected Config error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn alg_names() {
        for a in [Alg::HS256, Alg::RS256, Alg::ES256, Alg::EdDSA] {
            assert_eq!(a.as_str().parse::<Alg>(), Ok(a));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<Alg>(&json).unwrap(), a);
        }
        assert!("none".parse::<Alg>().is_err());
        assert!("hs256".parse::<Alg>().is_err());
        assert!("HS512".parse::<Alg>().is_err());
    }

    #[test]
    fn key_config_rejects_unknown_fields() {
        let ok: KeyConfig =
            serde_json::from_str(r#"{"kid":"a","alg":"RS256","public_key_pem":"x"}"#).unwrap();
        assert_eq!(ok.alg, Alg::RS256);
        assert!(
            serde_json::from_str::<KeyConfig>(
                r#"{"kid":"a","alg":"RS256","public_key_pem":"x","extra":1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn good_public_keys_load() {
        decoding_key(&key("r", Alg::RS256, RSA_PUB)).unwrap();
        decoding_key(&key("e", Alg::ES256, EC_PUB)).unwrap();
        decoding_key(&key("d", Alg::EdDSA, ED_PUB)).unwrap();
    }

    #[test]
    fn mismatched_or_bad_public_keys_name_the_kid() {
        for k in [
            key("k1", Alg::ES256, RSA_PUB),
            key("k1", Alg::RS256, EC_PUB),
            key("k1", Alg::EdDSA, EC_PUB),
            key("k1", Alg::ES256, ED_PUB),
            key("k1", Alg::ES256, EC384_PUB),
            key("k1", Alg::RS256, "not a pem"),
            key("k1", Alg::RS256, RSA),
            key("k1", Alg::HS256, "secret"),
        ] {
            let m = config_err(&k);
            assert!(m.contains("\"k1\""), "{m}");
        }
        assert!(config_err(&key("", Alg::RS256, RSA_PUB)).contains("empty kid"));
    }

    #[test]
    fn private_keys_load_and_mismatches_fail() {
        encoding_key(Alg::RS256, RSA.as_bytes()).unwrap();
        encoding_key(Alg::ES256, EC.as_bytes()).unwrap();
        encoding_key(Alg::EdDSA, ED.as_bytes()).unwrap();
        for (alg, pem) in [
            (Alg::ES256, RSA),
            (Alg::RS256, EC),
            (Alg::EdDSA, RSA),
            (Alg::RS256, RSA_PUB),
            (Alg::HS256, RSA),
        ] {
            assert!(
                matches!(encoding_key(alg, pem.as_bytes()), Err(AuthError::Config(_))),
                "{alg}"
            );
        }
    }
}
