/**
 * Errors thrown by {@link Herald}'s calls.
 *
 * Every failed ingest API call throws a {@link HeraldError} carrying herald's
 * error `code` (PROTOCOL.md section 8), the HTTP `status` and herald's
 * `message`. Each code has its own subclass, so a caller can test
 * `err instanceof ConflictError`. A call that got no answer on any attempt
 * (connection refused or reset, timeout) throws {@link TransportError}.
 *
 * The mapping from an answer to a class lives in {@link errorFor} and nowhere
 * else.
 */

/** Base class of every error an ingest API call throws. */
export class HeraldError extends Error {
  /**
   * herald's error code (`"bad_channel"`, `"conflict"`, ...); `"transport"`
   * for {@link TransportError}, `"bad_response"` for a 2xx answer that is not
   * the documented JSON, `"http_<status>"` for an error answer without a
   * herald error body (e.g. a proxy's bare 502).
   */
  readonly code: string;
  /** The HTTP status, or `undefined` when no answer arrived. */
  readonly status: number | undefined;

  constructor(code: string, message: string, status?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.status = status;
  }
}

/**
 * 400 `bad_request`: malformed body, both `channel` and `channels`, an empty
 * or duplicated channel list, more than 100 channels, `limit` out of
 * 1..1000, a key longer than 256 bytes.
 */
export class BadRequestError extends HeraldError {}

/** 400 `bad_channel`: a channel name outside PROTOCOL.md section 1. */
export class BadChannelError extends HeraldError {}

/** 401 `unauthorized`: missing or wrong API key. */
export class UnauthorizedError extends HeraldError {}

/** 404 `not_found`: no such path (usually a wrong base URL). */
export class NotFoundError extends HeraldError {}

/**
 * 409 `conflict`: an idempotency key reused with another channel set or
 * other data.
 */
export class ConflictError extends HeraldError {}

/** 413 `too_large`: `data` over the limit (16 KiB of JSON by default). */
export class TooLargeError extends HeraldError {}

/** 429 `rate_limited`. Never retried by the SDK. */
export class RateLimitedError extends HeraldError {}

/**
 * 503 `unavailable`: the store or the bus is unreachable. Retried by the
 * SDK; thrown once the retries are used up.
 */
export class UnavailableError extends HeraldError {}

/** 500 `internal`: a bug or an unexpected failure in herald. */
export class InternalError extends HeraldError {}

/**
 * No answer from herald on any attempt: connection refused or reset, DNS
 * failure, or no complete answer within `timeoutMs`. `cause` is the last
 * underlying error. Its `code` is `"transport"` and its `status` undefined.
 */
export class TransportError extends HeraldError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("transport", message, undefined, options);
  }
}

// `name` on each prototype (not the instance, not from `constructor.name`,
// which minifiers rename), so stack traces and `String(err)` say
// `ConflictError: ...` rather than `Error: ...`.
for (const [cls, name] of [
  [HeraldError, "HeraldError"],
  [BadRequestError, "BadRequestError"],
  [BadChannelError, "BadChannelError"],
  [UnauthorizedError, "UnauthorizedError"],
  [NotFoundError, "NotFoundError"],
  [ConflictError, "ConflictError"],
  [TooLargeError, "TooLargeError"],
  [RateLimitedError, "RateLimitedError"],
  [UnavailableError, "UnavailableError"],
  [InternalError, "InternalError"],
  [TransportError, "TransportError"],
] as const) {
  Object.defineProperty(cls.prototype, "name", { value: name, writable: true, configurable: true });
}

type ErrorClass = new (code: string, message: string, status?: number) => HeraldError;

const BY_CODE: Readonly<Record<string, ErrorClass>> = {
  bad_request: BadRequestError,
  bad_channel: BadChannelError,
  unauthorized: UnauthorizedError,
  not_found: NotFoundError,
  conflict: ConflictError,
  too_large: TooLargeError,
  rate_limited: RateLimitedError,
  unavailable: UnavailableError,
  internal: InternalError,
};

const BY_STATUS: Readonly<Record<number, ErrorClass>> = {
  400: BadRequestError,
  401: UnauthorizedError,
  404: NotFoundError,
  409: ConflictError,
  413: TooLargeError,
  429: RateLimitedError,
  500: InternalError,
  503: UnavailableError,
};

/**
 * The error for an error answer: by `code` when herald sent a known one, else
 * by HTTP `status`, else the base {@link HeraldError}.
 */
export function errorFor(status: number, code: string | undefined, message: string): HeraldError {
  const cls =
    (code !== undefined && Object.hasOwn(BY_CODE, code) ? BY_CODE[code] : undefined) ??
    BY_STATUS[status] ??
    HeraldError;
  return new cls(code ?? `http_${status}`, message, status);
}
