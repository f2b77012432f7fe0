/**
 * The one error type of the SDK. `code` is either a reply error code of
 * PROTOCOL.md section 5 (the server refused a request) or one of the
 * client-side codes below (the SDK could not complete it).
 */

/** Reply error codes of PROTOCOL.md section 5. */
export type ReplyErrorCode =
  | "bad_request"
  | "bad_channel"
  | "unknown_op"
  | "forbidden"
  | "not_subscribed"
  | "too_large"
  | "rate_limited"
  | "limit_reached"
  | "unavailable"
  | "conflict"
  | "internal";

/**
 * Codes the SDK itself uses:
 * - `disconnected`: the connection was lost with the request in flight (a
 *   `signal`, an app-level `ping`) or the request needs a live connection.
 * - `closed`: the client is closed (`disconnect()`, or a close code after
 *   which it does not reconnect); pending requests end with it.
 * - `timeout`: no reply within `requestTimeoutMs`.
 * - `unauthorized`: the server refused the token (close 4001).
 * - `token_expired`: the token expired (close 4004) and there is no
 *   `getToken` to get another one.
 * - `token`: `getToken` threw or returned something that is not a string.
 * - `protocol`: the server sent a frame the SDK cannot read, or closed with
 *   a "fix the client" code (1002, 1007, 1009, 4000).
 * - `transport`: a connection attempt failed (network, refused upgrade).
 * - `unsubscribed`: the subscription was ended (by the app or the server)
 *   before its first subscribe reply.
 * - `history_unavailable`: `history()` cannot read this channel over the
 *   WebSocket (it is held by a subscription and no `history` option is set).
 * - `unrecoverable`: `history()` over the WebSocket asked for messages
 *   beyond the server's retained history (the subscribe reply said
 *   `recovered:false`).
 */
export type ClientErrorCode =
  | "disconnected"
  | "closed"
  | "timeout"
  | "unauthorized"
  | "token_expired"
  | "token"
  | "protocol"
  | "transport"
  | "unsubscribed"
  | "history_unavailable"
  | "unrecoverable";

export type ErrorCode = ReplyErrorCode | ClientErrorCode;

/** Extra facts attached to a {@link HeraldError}. */
export interface HeraldErrorDetails {
  /** The channel the failed request was about. */
  channel?: string;
  /** For a failed `publish`: the idempotency key it used (retry with it). */
  idempotencyKey?: string;
  /** For connection errors: the WebSocket close code. */
  closeCode?: number;
  /** The underlying error, when there is one. */
  cause?: unknown;
}

/** An error of the SDK or a reply error of the server. */
export class HeraldError extends Error {
  /** A PROTOCOL.md section 5 reply code or a client-side code. */
  readonly code: ErrorCode;
  readonly channel: string | undefined;
  readonly idempotencyKey: string | undefined;
  readonly closeCode: number | undefined;

  constructor(code: ErrorCode, message: string, details: HeraldErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "HeraldError";
    this.code = code;
    this.channel = details.channel;
    this.idempotencyKey = details.idempotencyKey;
    this.closeCode = details.closeCode;
  }
}

/** Reply codes after which sending the same request again may succeed. */
export function isRetryable(code: string): boolean {
  return code === "unavailable" || code === "rate_limited" || code === "timeout" || code === "disconnected";
}
