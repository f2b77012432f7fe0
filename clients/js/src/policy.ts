/**
 * Reconnect policy: the backoff delays and what each close code of
 * PROTOCOL.md section 6 makes the client do. Pure functions, unit-tested.
 */

/** Backoff settings (`reconnect` option). */
export interface BackoffOptions {
  /** Upper bound of the first delay, ms. Default 500. */
  minDelayMs: number;
  /** Largest delay, ms. Default 20000. */
  maxDelayMs: number;
  /** Growth per failed attempt. Default 2. */
  factor: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { minDelayMs: 500, maxDelayMs: 20_000, factor: 2 };

/**
 * The ceiling for attempt `attempt` (0-based):
 * `min(maxDelayMs, minDelayMs * factor^attempt)`.
 */
export function backoffCap(attempt: number, o: BackoffOptions): number {
  const exp = o.minDelayMs * Math.pow(o.factor, Math.max(0, attempt));
  return Math.min(o.maxDelayMs, Number.isFinite(exp) ? exp : o.maxDelayMs);
}

/**
 * Full jitter (uniform in [0, cap)), so a node restart does not bring all
 * its clients back in the same millisecond.
 */
export function backoffDelay(attempt: number, o: BackoffOptions, random: () => number): number {
  return Math.floor(random() * backoffCap(attempt, o));
}

/**
 * After a "back off" close (4009 connection limit, 4029 rate limited): three
 * steps further along the curve and at least half of that ceiling, so the
 * client really waits before it tries a server that said it is full.
 */
export function slowBackoffDelay(attempt: number, o: BackoffOptions, random: () => number): number {
  const cap = backoffCap(attempt + 3, o);
  return Math.floor(cap / 2 + (random() * cap) / 2);
}

/** What to do after a connection ended. */
export type CloseAction =
  /** Reconnect after a backoff delay (`slow`: 4009/4029). */
  | { kind: "reconnect"; slow: boolean }
  /** Ask `getToken` for a new token, then reconnect. */
  | { kind: "token" }
  /** Stay closed, reporting an error with this code. */
  | { kind: "stop"; error: "unauthorized" | "token_expired" | "protocol" | null };

/**
 * The action for close `code`. `reconnectFlag` is the `reconnect` field of
 * the `disconnect` frame that preceded the close, when one did;
 * `hasGetToken` whether a `getToken` option can supply a new token.
 *
 * | code | action |
 * |---|---|
 * | 1000 | stay closed (unless the server's frame said reconnect) |
 * | 1012, 4008, 4408 | reconnect (first delay in [0, minDelayMs)) |
 * | 4001, 4003 | getToken then reconnect; without getToken stay closed |
 * | 4004 | getToken then reconnect; without getToken stay closed |
 * | 4009, 4029 | reconnect after a longer delay |
 * | 1002, 1007, 1009, 4000 | stay closed (a client bug; reconnecting would repeat it) |
 * | anything else (1001, 1006, 1011, ...) | reconnect, unless the frame said not to |
 */
export function closeAction(code: number, reconnectFlag: boolean | undefined, hasGetToken: boolean): CloseAction {
  switch (code) {
    case 1000:
      return reconnectFlag === true ? { kind: "reconnect", slow: false } : { kind: "stop", error: null };
    case 1012:
    case 4008:
    case 4408:
      return { kind: "reconnect", slow: false };
    case 4001:
    case 4003:
      return hasGetToken ? { kind: "token" } : { kind: "stop", error: "unauthorized" };
    case 4004:
      return hasGetToken ? { kind: "token" } : { kind: "stop", error: "token_expired" };
    case 4009:
    case 4029:
      return { kind: "reconnect", slow: true };
    case 1002:
    case 1007:
    case 1009:
    case 4000:
      return { kind: "stop", error: "protocol" };
    default:
      return reconnectFlag === false ? { kind: "stop", error: null } : { kind: "reconnect", slow: false };
  }
}
