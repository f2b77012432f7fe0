/**
 * Webhook signatures: what an application's webhook endpoint checks before
 * trusting a request from herald.
 *
 * Herald sends each event as a JSON body with the header
 * `Herald-Signature: t=<unix seconds>,v1=<hex>`, where hex is the lowercase
 * HMAC-SHA256, keyed with the webhook secret, of `${t}.` followed by the raw
 * body bytes. During a secret rotation the header carries one `v1=` per
 * secret; any match passes. The timestamp bounds replays: a request more
 * than `toleranceSeconds` away from now is refused even when its signature
 * matches.
 *
 * Verify the raw bytes as received (`express.raw()`, not a re-serialized
 * `req.body`): any re-encoding changes the signature.
 */

import { createHmac, timingSafeEqual } from "node:crypto";

import { unixSeconds } from "./tokens.js";
import type { Message, PresenceClient } from "./types.js";

/** The header herald signs webhooks in. */
export const SIGNATURE_HEADER = "Herald-Signature";

/** Default largest distance between the header's `t` and now, in seconds. */
export const DEFAULT_TOLERANCE_SECONDS = 300;

/** Fields every webhook event has. */
interface EventBase {
  /** Event id (`ev_...`), unique: use it to ignore a redelivery. */
  id: string;
  /** When it happened, in milliseconds since the Unix epoch. */
  ts: number;
}

/** A message was persisted on `channel`. */
export interface PublishEvent extends EventBase {
  type: "publish";
  channel: string;
  message: Message;
}

/** A client subscribed to (`join`) or left (`leave`) `channel`. */
export interface PresenceEvent extends EventBase {
  type: "join" | "leave";
  channel: string;
  client: PresenceClient;
}

/** A client connected to or disconnected from a gateway. */
export interface ConnectionEvent extends EventBase {
  type: "connect" | "disconnect";
  client: PresenceClient;
}

/**
 * A webhook event, by `type`. A newer herald may send types not listed
 * here: give a `switch` over `type` a default branch.
 */
export type WebhookEvent = PublishEvent | PresenceEvent | ConnectionEvent;

/** Why {@link verifyWebhook} refused a request. */
export type WebhookFailure =
  | "malformed_header"
  | "no_signature"
  | "mismatch"
  | "stale"
  | "malformed_body";

/**
 * The request is not a genuine, fresh herald webhook: answer it with 400
 * (or 401) and do not act on it. `reason` says which check failed.
 */
export class WebhookSignatureError extends Error {
  readonly reason: WebhookFailure;

  constructor(reason: WebhookFailure, message: string) {
    super(message);
    this.reason = reason;
  }
}
Object.defineProperty(WebhookSignatureError.prototype, "name", {
  value: "WebhookSignatureError",
  writable: true,
  configurable: true,
});

/** Options of {@link verifyWebhook}. */
export interface VerifyWebhookOptions {
  /**
   * Largest distance between the header's `t` and now, in seconds, either
   * way. Default 300.
   */
  toleranceSeconds?: number;
  /** Now, as a `Date` or Unix time in seconds. Default: the clock. */
  now?: Date | number;
}

type Secret = string | Uint8Array;

function bytes(body: string | Uint8Array): Buffer {
  return typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

function mac(secret: Secret, t: number | string, body: Buffer): Buffer {
  return createHmac("sha256", secret).update(`${t}.`, "utf8").update(body).digest();
}

/**
 * Checks a webhook request and returns its event.
 *
 * @param rawBody The body exactly as received.
 * @param header The `Herald-Signature` header's value.
 * @param secret The webhook secret, or several while rotating (any match
 *   passes).
 * @throws WebhookSignatureError when the header is missing or malformed, no
 *   signature matches, `t` is outside the tolerance, or the signed body is
 *   not an event.
 */
export function verifyWebhook(
  rawBody: string | Uint8Array,
  header: string | readonly string[] | undefined | null,
  secret: Secret | readonly Secret[],
  options: VerifyWebhookOptions = {},
): WebhookEvent {
  const secrets: readonly Secret[] = typeof secret === "string" || secret instanceof Uint8Array ? [secret] : secret;
  if (!Array.isArray(secrets) || secrets.length === 0 || secrets.some((s) => s.length === 0)) {
    throw new TypeError("secret must be a non-empty string, or a non-empty list of them");
  }
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
  if (typeof tolerance !== "number" || !(tolerance >= 0)) {
    throw new TypeError("toleranceSeconds must be a non-negative number");
  }
  // Node hands a repeated header over as an array; herald sends one.
  const value = Array.isArray(header) ? header.join(",") : header;
  if (typeof value !== "string" || value.trim() === "") {
    throw new WebhookSignatureError("malformed_header", `no ${SIGNATURE_HEADER} header`);
  }

  let t: string | undefined;
  const sigs: Buffer[] = [];
  for (const part of value.split(",")) {
    const eq = part.indexOf("=");
    if (eq < 0) {
      continue;
    }
    const k = part.slice(0, eq).trim();
    const v = part.slice(eq + 1).trim();
    if (k === "t") {
      if (t !== undefined || !/^\d{1,15}$/.test(v)) {
        throw new WebhookSignatureError("malformed_header", `${SIGNATURE_HEADER} has a bad or repeated t=`);
      }
      t = v;
    } else if (k === "v1" && /^[0-9a-fA-F]{64}$/.test(v)) {
      sigs.push(Buffer.from(v, "hex"));
    }
    // Other schemes (and malformed v1 values) are ignored: a newer herald
    // may add them next to v1.
  }
  if (t === undefined) {
    throw new WebhookSignatureError("malformed_header", `${SIGNATURE_HEADER} has no t=`);
  }
  if (sigs.length === 0) {
    throw new WebhookSignatureError("no_signature", `${SIGNATURE_HEADER} has no v1= signature`);
  }

  const body = bytes(rawBody);
  let ok = false;
  for (const s of secrets) {
    const want = mac(s, t, body);
    for (const got of sigs) {
      // Constant time; no early exit, so timing does not tell which matched.
      ok = timingSafeEqual(want, got) || ok;
    }
  }
  if (!ok) {
    throw new WebhookSignatureError("mismatch", "no signature matches the body and secret");
  }

  const now = unixSeconds(options.now);
  const age = now - Number(t);
  if (Math.abs(age) > tolerance) {
    throw new WebhookSignatureError(
      "stale",
      `signed ${Math.abs(age)} s ${age >= 0 ? "ago" : "in the future"}; tolerance ${tolerance} s`,
    );
  }

  let event: unknown;
  try {
    event = JSON.parse(body.toString("utf8"));
  } catch {
    throw new WebhookSignatureError("malformed_body", "signed body is not JSON");
  }
  if (
    typeof event !== "object" ||
    event === null ||
    Array.isArray(event) ||
    typeof (event as { id?: unknown }).id !== "string" ||
    typeof (event as { type?: unknown }).type !== "string" ||
    typeof (event as { ts?: unknown }).ts !== "number"
  ) {
    throw new WebhookSignatureError("malformed_body", "signed body is not an event (id, type, ts)");
  }
  return event as WebhookEvent;
}

/**
 * The `Herald-Signature` value herald would send for `body`: for tests of a
 * webhook endpoint, and for a herald stand-in.
 *
 * @param t Unix time in seconds (or a `Date`). Default: now.
 */
export function signWebhook(body: string | Uint8Array, secret: Secret, t?: Date | number): string {
  if (secret.length === 0) {
    throw new TypeError("secret must not be empty");
  }
  const ts = unixSeconds(t);
  return `t=${ts},v1=${mac(secret, ts, bytes(body)).toString("hex")}`;
}
