/**
 * Channel names and grant patterns (PROTOCOL.md section 1).
 *
 * A channel name is 1 to 200 bytes of `A-Z a-z 0-9 _ - . : @ =`; a pattern is
 * the same with `*` also allowed, where `*` matches any run of allowed
 * characters, the empty run included. Tokens are checked with these before
 * signing, where a mistake would otherwise only show up later and far away
 * (herald refusing the token at connect time with close 4001). The ingest API
 * checks names itself and answers {@link BadChannelError}, so API calls do
 * not check them here.
 */

/** Longest channel name (and pattern), in bytes. */
export const MAX_CHANNEL_LEN = 200;

const CHANNEL = /^[A-Za-z0-9_.:@=-]+$/;
const PATTERN = /^[A-Za-z0-9_.:@=*-]+$/;
const RUN = "[A-Za-z0-9_.:@=-]*";

function check(name: unknown, rx: RegExp, what: string): string {
  if (typeof name !== "string") {
    throw new TypeError(`${what} must be a string, not ${name === null ? "null" : typeof name}`);
  }
  if (name.length === 0) {
    throw new TypeError(`${what} is empty`);
  }
  // Every allowed character is ASCII, so once the set matches, characters
  // are bytes; the byte length is still what the message reports.
  if (Buffer.byteLength(name, "utf8") > MAX_CHANNEL_LEN) {
    throw new TypeError(`${what} ${JSON.stringify(name.slice(0, 40))}... is longer than ${MAX_CHANNEL_LEN} bytes`);
  }
  if (!rx.test(name)) {
    const allowed = "A-Z a-z 0-9 _ - . : @ =" + (rx === PATTERN ? " *" : "");
    throw new TypeError(`${what} ${JSON.stringify(name)} contains a character outside ${allowed}`);
  }
  return name;
}

/** Returns `name` if it is a valid channel name, else throws `TypeError`. */
export function validateChannel(name: string): string {
  return check(name, CHANNEL, "channel name");
}

/** Returns `pattern` if it is a valid grant pattern, else throws `TypeError`. */
export function validatePattern(pattern: string): string {
  return check(pattern, PATTERN, "pattern");
}

/** Whether `name` is a valid channel name. */
export function isValidChannel(name: string): boolean {
  try {
    validateChannel(name);
    return true;
  } catch {
    return false;
  }
}

/** Whether `pattern` is a valid grant pattern. */
export function isValidPattern(pattern: string): boolean {
  try {
    validatePattern(pattern);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether grant `pattern` matches `channel`, with herald's reference
 * semantics: the pattern as an anchored regular expression, each `*` turned
 * into `[A-Za-z0-9_.:@=-]*`. Throws `TypeError` for an invalid pattern; an
 * invalid channel name matches nothing.
 */
export function patternMatches(pattern: string, channel: string): boolean {
  validatePattern(pattern);
  if (!isValidChannel(channel)) {
    return false;
  }
  // Of the allowed characters only `.` means something in a regular
  // expression; escape it (and, defensively, everything else special).
  const parts = pattern.split("*").map((p) => p.replace(/[.*+?^${}()|[\]\\-]/g, "\\$&"));
  return new RegExp(`^${parts.join(RUN)}$`).test(channel);
}
