/**
 * `@herald/server`: herald for application backends on Node.js.
 *
 * Layout:
 * - client.ts: {@link Herald}, the ingest HTTP API (publish, signal,
 *   history, positions, presence) with timeouts and retries.
 * - errors.ts: {@link HeraldError} and one subclass per error code.
 * - tokens.ts: connection and subscription tokens (HS256, RS256, ES256,
 *   EdDSA) signed with `node:crypto`.
 * - webhooks.ts: `Herald-Signature` verification and the event types.
 * - names.ts: channel name and pattern checks (PROTOCOL.md section 1).
 * - types.ts: the answers' shapes.
 *
 * No runtime dependency: `fetch` and `node:crypto` only (Node 20 or later).
 */

export { Herald } from "./client.js";
export type { HeraldOptions, HistoryOptions, PublishOptions, SignalOptions } from "./client.js";
export {
  BadChannelError,
  BadRequestError,
  ConflictError,
  HeraldError,
  InternalError,
  NotFoundError,
  RateLimitedError,
  TooLargeError,
  TransportError,
  UnauthorizedError,
  UnavailableError,
  errorFor,
} from "./errors.js";
export {
  MAX_CHANNEL_LEN,
  isValidChannel,
  isValidPattern,
  patternMatches,
  validateChannel,
  validatePattern,
} from "./names.js";
export { MAX_INFO_BYTES, mintToken, subscriptionToken } from "./tokens.js";
export type { Grants, MintTokenOptions, SigningKey, SubscriptionTokenOptions, TokenAlg, TokenTimes } from "./tokens.js";
export type { HistoryPage, JsonValue, Message, PresenceClient, PublishResult } from "./types.js";
export { VERSION } from "./version.js";
export {
  DEFAULT_TOLERANCE_SECONDS,
  SIGNATURE_HEADER,
  WebhookSignatureError,
  signWebhook,
  verifyWebhook,
} from "./webhooks.js";
export type {
  ConnectionEvent,
  PresenceEvent,
  PublishEvent,
  VerifyWebhookOptions,
  WebhookEvent,
  WebhookFailure,
} from "./webhooks.js";
