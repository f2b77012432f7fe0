//! Token verification and minting for herald (PROTOCOL.md section 3).
//!
//! Connection tokens are JWTs signed with the HS256 secret or with a key
//! selected by the header's `kid`, each key pinned to one algorithm (HS256,
//! RS256, ES256 or EdDSA). [`Verifier`] turns a token into [`ConnClaims`]
//! (who, until when, which channels, which grants); the gateway asks
//! [`ConnClaims::allows`] per request and maps a refusal to its close code
//! with [`AuthError::close_code`]. [`Minter`] and [`TokenSpec`] make tokens
//! for `herald token`, `herald dev`, loadgen and tests.
//!
//! # Layout
//!
//! - `error.rs`: [`AuthError`], the one mapping from jsonwebtoken errors and
//!   to close codes (4004 expired, 4001 otherwise).
//! - `keys.rs`: [`Alg`], [`KeyConfig`] (`[[auth.keys]]`), PEM parsing and the
//!   algorithm/PEM fit, checked once at startup.
//! - `claims.rs`: [`ConnClaims`], [`Grants`], [`GrantOp`]; shape checks on the
//!   payload (channel names, patterns, `info` size).
//! - `verify.rs`: [`AuthConfig`], [`Verifier`]: key selection, pinned
//!   algorithm, leeway, `nbf`, `aud`/`iss`, subscription tokens.
//! - `mint.rs`: [`Minter`], [`TokenSpec`].
//!
//! Nothing here logs, and no error or `Debug` output carries a token, secret
//! or private key.

#![warn(missing_docs)]

mod claims;
mod error;
mod keys;
mod mint;
mod verify;

#[cfg(test)]
mod fuzz;

pub use claims::{ConnClaims, GrantOp, Grants, MAX_INFO_BYTES};
pub use error::AuthError;
pub use keys::{Alg, KeyConfig};
pub use mint::{Minter, TokenSpec};
pub use verify::{AuthConfig, Verifier};
