/**
 * Connection and subscription tokens (PROTOCOL.md section 3), signed with
 * `node:crypto` alone: HS256 with a shared secret (herald's `jwt_secret`),
 * RS256, ES256 (P-256) or EdDSA (Ed25519) with a private key whose public
 * half is in herald's `[[auth.keys]]`, selected by `kid`.
 *
 * {@link mintToken} makes the same claims as `herald token`: `sub`, `iat`,
 * `exp` = `iat` + ttl, `channels` when non-empty, `allow` with only the
 * non-empty lists (absent when all are empty), `info` when given; plus
 * `nbf`, `aud` and `iss` when asked for. Names, patterns and the `info` size
 * are checked before signing, since herald would only refuse the token at
 * connect time (close 4001). Nothing here verifies tokens: that is herald's
 * job.
 */

import { createHmac, createPrivateKey, sign, type KeyObject } from "node:crypto";

import { validateChannel, validatePattern } from "./names.js";
import type { JsonValue } from "./types.js";

/** Signing algorithms herald accepts. */
export type TokenAlg = "HS256" | "RS256" | "ES256" | "EdDSA";

/** Largest `info` object, as JSON text (PROTOCOL.md section 3). */
export const MAX_INFO_BYTES = 1024;

/** The signing key: an HS256 secret, or a private key for RS256/ES256/EdDSA. */
export interface SigningKey {
  /** HS256 shared secret: herald's `jwt_secret` (`--jwt-secret`). */
  secret?: string | Uint8Array;
  /**
   * Private key (PKCS#8 `BEGIN PRIVATE KEY`, or the traditional PKCS#1 /
   * SEC1 forms) for RS256 (RSA, at least 2048 bits), ES256 (P-256) or EdDSA
   * (Ed25519), as PEM text or a `KeyObject`. Its public key goes in herald's
   * `[[auth.keys]]` with the same `kid` and `alg`.
   */
  privateKeyPem?: string | Uint8Array | KeyObject;
  /**
   * Default: `HS256` with `secret`; with `privateKeyPem`, the algorithm its
   * key type implies. When given, it must fit the key.
   */
  alg?: TokenAlg;
  /**
   * Key id in the header, which selects the key in herald's
   * `[[auth.keys]]`. HS256 tokens usually carry none (then herald uses
   * `jwt_secret`).
   */
  kid?: string;
}

/** The `allow` claim: grant patterns per operation (`chat_*`, ...). */
export interface Grants {
  subscribe?: readonly string[];
  publish?: readonly string[];
  signal?: readonly string[];
  presence?: readonly string[];
}

/** Time claims shared by both token kinds. */
export interface TokenTimes {
  /** Lifetime in whole seconds: `exp` = `iat` + this. */
  ttlSeconds: number;
  /**
   * `iat` as a `Date` or Unix time in seconds (not milliseconds). Default:
   * now.
   */
  now?: Date | number;
}

/** Options of {@link mintToken}. */
export interface MintTokenOptions extends SigningKey, TokenTimes {
  /** Who this is; shown to others as `from`. Not empty. */
  sub: string;
  /** Channels subscribed automatically on connect; implies subscribe rights. */
  channels?: readonly string[];
  /** Patterns the client may subscribe, publish, signal and see presence on. */
  allow?: Grants;
  /** A JSON object (at most 1 KiB as JSON) shown to others in presence. */
  info?: Record<string, JsonValue>;
  /** `aud`; herald checks it when `[auth] audience` is set. */
  audience?: string | readonly string[];
  /** `iss`; herald checks it when `[auth] issuer` is set. */
  issuer?: string;
  /** `nbf`: not valid before this many seconds after `iat`. */
  notBeforeSeconds?: number;
}

/** Options of {@link subscriptionToken}. */
export interface SubscriptionTokenOptions extends SigningKey, TokenTimes {
  /** The `sub` of the connection that will use it. */
  sub: string;
  /** The one channel it grants. */
  channel: string;
}

/**
 * A connection token: the JWT a browser passes to herald's `/ws` as
 * `?token=` (or `Authorization: Bearer`).
 */
export function mintToken(options: MintTokenOptions): string {
  const iat = unixSeconds(options.now);
  const claims: Record<string, unknown> = { sub: nonEmptySub(options.sub), iat, exp: iat + ttl(options.ttlSeconds) };
  if (options.notBeforeSeconds !== undefined) {
    if (!Number.isInteger(options.notBeforeSeconds)) {
      throw new TypeError("notBeforeSeconds must be an integer");
    }
    claims.nbf = iat + options.notBeforeSeconds;
  }
  if (options.audience !== undefined) {
    claims.aud = typeof options.audience === "string" ? options.audience : [...options.audience];
  }
  if (options.issuer !== undefined) {
    claims.iss = options.issuer;
  }
  const channels = list(options.channels, "channels").map(validateChannel);
  if (channels.length > 0) {
    claims.channels = channels;
  }
  const allow: Record<string, string[]> = {};
  for (const op of ["subscribe", "publish", "signal", "presence"] as const) {
    const patterns = list(options.allow?.[op], `allow.${op}`).map(validatePattern);
    if (patterns.length > 0) {
      allow[op] = patterns;
    }
  }
  if (Object.keys(allow).length > 0) {
    claims.allow = allow;
  }
  if (options.info !== undefined) {
    claims.info = checkInfo(options.info);
  }
  return signJwt(claims, options);
}

/**
 * A subscription token: grants one channel to the connection of `sub`,
 * passed as `token` in a `subscribe` op. Herald answers `forbidden` when it
 * is invalid, expired, or for another `sub` or channel.
 */
export function subscriptionToken(options: SubscriptionTokenOptions): string {
  const iat = unixSeconds(options.now);
  const claims = {
    sub: nonEmptySub(options.sub),
    channel: validateChannel(options.channel),
    iat,
    exp: iat + ttl(options.ttlSeconds),
  };
  return signJwt(claims, options);
}

function nonEmptySub(sub: unknown): string {
  if (typeof sub !== "string" || sub.length === 0) {
    throw new TypeError("sub must be a non-empty string");
  }
  return sub;
}

function ttl(seconds: unknown): number {
  if (typeof seconds !== "number" || !Number.isSafeInteger(seconds) || seconds <= 0) {
    throw new TypeError("ttlSeconds must be a positive whole number of seconds");
  }
  return seconds;
}

/**
 * Unix time in whole seconds from a `Date` or a number of seconds. A number
 * so large it can only be milliseconds (past the year 5000 as seconds) is
 * refused: mixing up `Date.now()` and seconds would mint tokens that never
 * expire.
 */
export function unixSeconds(now: Date | number | undefined): number {
  if (now === undefined) {
    return Math.floor(Date.now() / 1000);
  }
  if (now instanceof Date) {
    const ms = now.getTime();
    if (!Number.isFinite(ms)) {
      throw new TypeError("now is an invalid Date");
    }
    return Math.floor(ms / 1000);
  }
  if (typeof now !== "number" || !Number.isFinite(now) || now < 0) {
    throw new TypeError("now must be a Date or a non-negative number of seconds");
  }
  if (now >= 1e11) {
    throw new TypeError("now is in seconds, not milliseconds: pass Date.now() / 1000 or a Date");
  }
  return Math.floor(now);
}

function list(v: readonly string[] | undefined, what: string): string[] {
  if (v === undefined) {
    return [];
  }
  if (!Array.isArray(v)) {
    throw new TypeError(`${what} must be an array of strings`);
  }
  return [...v];
}

function checkInfo(info: unknown): Record<string, JsonValue> {
  if (typeof info !== "object" || info === null || Array.isArray(info)) {
    throw new TypeError("info must be a JSON object");
  }
  const size = Buffer.byteLength(JSON.stringify(info), "utf8");
  if (size > MAX_INFO_BYTES) {
    throw new TypeError(`info is ${size} bytes as JSON; at most ${MAX_INFO_BYTES}`);
  }
  return info as Record<string, JsonValue>;
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString("base64url");
}

/** Signs `claims` as a compact JWS: base64url(header).base64url(payload).sig. */
function signJwt(claims: Record<string, unknown>, key: SigningKey): string {
  const { secret, privateKeyPem, kid } = key;
  if ((secret === undefined) === (privateKeyPem === undefined)) {
    throw new TypeError("give exactly one of secret (HS256) and privateKeyPem (RS256, ES256, EdDSA)");
  }
  let alg: TokenAlg;
  let sig: (input: Buffer) => Buffer;
  if (secret !== undefined) {
    if (key.alg !== undefined && key.alg !== "HS256") {
      throw new TypeError(`secret signs HS256 only, not ${key.alg}: give privateKeyPem for ${key.alg}`);
    }
    if (typeof secret === "string" ? secret.length === 0 : !(secret instanceof Uint8Array) || secret.length === 0) {
      throw new TypeError("secret must be a non-empty string or byte array");
    }
    alg = "HS256";
    sig = (input) => createHmac("sha256", secret).update(input).digest();
  } else {
    const pk = privateKey(privateKeyPem);
    alg = algOf(pk, key.alg);
    sig = (input) => {
      switch (alg) {
        case "ES256":
          // JWS wants r || s (RFC 7518 section 3.4), not node's DER default.
          return sign("sha256", input, { key: pk, dsaEncoding: "ieee-p1363" });
        case "EdDSA":
          return sign(null, input, pk);
        default:
          return sign("sha256", input, pk);
      }
    };
  }
  if (kid !== undefined && (typeof kid !== "string" || kid.length === 0)) {
    throw new TypeError("kid must be a non-empty string");
  }
  const header: Record<string, string> = { alg, typ: "JWT" };
  if (kid !== undefined) {
    header.kid = kid;
  }
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${b64url(sig(Buffer.from(input, "ascii")))}`;
}

function privateKey(pem: string | Uint8Array | KeyObject | undefined): KeyObject {
  if (pem !== null && typeof pem === "object" && !(pem instanceof Uint8Array)) {
    if (pem.type !== "private") {
      throw new TypeError(`privateKeyPem is a ${pem.type} key; signing needs the private key`);
    }
    return pem;
  }
  try {
    return createPrivateKey({ key: typeof pem === "string" ? pem : Buffer.from(pem ?? []), format: "pem" });
  } catch (e) {
    throw new TypeError(`privateKeyPem is not a private key PEM: ${(e as Error).message}`, { cause: e });
  }
}

/** The algorithm `key` signs with, checked against the one asked for. */
function algOf(key: KeyObject, asked: TokenAlg | undefined): TokenAlg {
  let alg: TokenAlg;
  switch (key.asymmetricKeyType) {
    case "rsa": {
      const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
      // herald's verifier (ring) refuses RSA keys under 2048 bits.
      if (bits < 2048) {
        throw new TypeError(`RSA key of ${bits} bits: RS256 needs at least 2048`);
      }
      alg = "RS256";
      break;
    }
    case "ec": {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      if (curve !== "prime256v1") {
        throw new TypeError(`EC key on curve ${String(curve)}: ES256 needs P-256 (prime256v1)`);
      }
      alg = "ES256";
      break;
    }
    case "ed25519":
      alg = "EdDSA";
      break;
    default:
      throw new TypeError(`a ${String(key.asymmetricKeyType)} key cannot sign herald tokens (RSA, P-256 or Ed25519)`);
  }
  if (asked !== undefined && asked !== alg) {
    throw new TypeError(`alg ${asked} does not fit this key, which signs ${alg}`);
  }
  return alg;
}
