/**
 * Reading a JWT's `exp` on the client, to refresh before it passes. The
 * signature is NOT verified (the client has no key; herald verifies): the
 * value only decides when to ask `getToken` for a new token.
 */

/** The token's `exp` in milliseconds since the epoch, or undefined. */
export function tokenExpiryMs(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[1] === undefined) {
    return undefined;
  }
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
    const bin = atob(padded);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims: unknown = JSON.parse(new TextDecoder().decode(bytes));
    if (claims !== null && typeof claims === "object" && "exp" in claims) {
      const exp = (claims as { exp: unknown }).exp;
      if (typeof exp === "number" && Number.isFinite(exp)) {
        return exp * 1000;
      }
    }
  } catch {
    // Not a JWT we can read: no automatic refresh.
  }
  return undefined;
}

/**
 * When to refresh a token expiring at `expMs`, seen at `nowMs`: `leadMs`
 * before expiry, but never earlier than 80% of the remaining lifetime has
 * passed (a short-lived token is not refreshed at once), and not in the past.
 * Returns the delay from now in ms.
 */
export function refreshDelayMs(expMs: number, nowMs: number, leadMs: number): number {
  const remaining = expMs - nowMs;
  if (remaining <= 0) {
    return 0;
  }
  const lead = Math.min(leadMs, remaining * 0.2);
  return Math.max(0, Math.floor(remaining - lead));
}
