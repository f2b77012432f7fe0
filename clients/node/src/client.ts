/**
 * {@link Herald}: the ingest HTTP API of PROTOCOL.md section 8, for an
 * application backend.
 *
 * Every call is one HTTP request with the API key as a bearer token, retried
 * on a transport failure (connection refused or reset, no answer within
 * `timeoutMs`) and on 503 `unavailable`, with exponential backoff and
 * jitter; never on any other answer. A publish carries an idempotency key,
 * generated when the caller gives none and the same on every retry, so a
 * retry whose first attempt did commit returns the first result and stores
 * nothing new. Errors are thrown as the classes of errors.ts.
 */

import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import { HeraldError, TransportError, UnavailableError, errorFor } from "./errors.js";
import type { HistoryPage, JsonValue, Message, PresenceClient, PublishResult } from "./types.js";
import { VERSION } from "./version.js";

/** Options of {@link Herald}. */
export interface HeraldOptions {
  /**
   * Base URL of the ingest API: an ingest node (or a load balancer in front
   * of several), or `herald dev`'s address, e.g. `http://127.0.0.1:8081`. A
   * path prefix is kept (`https://example.com/herald` calls
   * `https://example.com/herald/v1/publish`).
   */
  url: string;
  /** The API key (`--api-key`, `HERALD_API_KEY`). */
  apiKey: string;
  /** Longest wait for one attempt's whole answer, in ms. Default 10 000. */
  timeoutMs?: number;
  /**
   * How many times a call is retried after a transport failure or a 503;
   * 0 turns retries off. Default 3.
   */
  retries?: number;
  /**
   * First backoff delay in ms, doubled on each retry up to 5 s; each actual
   * delay is picked at random between half of it and all of it. Default 200.
   */
  retryBaseMs?: number;
}

/** Options of {@link Herald.publish}. */
export interface PublishOptions {
  /**
   * Shown to subscribers as the message's `from` (free text, e.g.
   * `"visitor:abc"` or `"bot"`); absent when not given.
   */
  from?: string;
  /**
   * 1 to 256 bytes making the publish idempotent: publishing again with the
   * same key returns the first result (for 24 h by default); reusing it with
   * other channels or data is a {@link ConflictError}. Default: a random
   * UUID per call, so the SDK's own retries are idempotent; give your own
   * (e.g. your database's message id) to make your retries idempotent too.
   */
  idempotencyKey?: string;
}

/** Options of {@link Herald.signal}. */
export interface SignalOptions {
  /** Shown to subscribers as the signal's `from`; absent when not given. */
  from?: string;
}

/** Options of {@link Herald.history} and its iterators. */
export interface HistoryOptions {
  /** Return messages with seq greater than this. Default 0 (from the start). */
  after?: number;
  /** Page size, 1 to 1000. Default 100. */
  limit?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_RETRIES = 3;
const DEFAULT_RETRY_BASE_MS = 200;
const MAX_RETRY_DELAY_MS = 5_000;
/** How much of an unparseable error body goes into the error message. */
const MAX_ERROR_TEXT = 200;

/** A client of herald's ingest API. Safe to share: it holds no per-call state. */
export class Herald {
  /** The base URL, without a trailing `/`. */
  readonly url: string;
  readonly #apiKey: string;
  readonly #timeoutMs: number;
  readonly #retries: number;
  readonly #retryBaseMs: number;

  constructor(options: HeraldOptions) {
    const { url, apiKey } = options;
    if (typeof url !== "string" || !/^https?:\/\//i.test(url)) {
      throw new TypeError(`url must be an http:// or https:// URL, not ${JSON.stringify(url)}`);
    }
    // Fails early on a malformed URL rather than on the first call.
    new URL(url);
    if (typeof apiKey !== "string" || apiKey.length === 0) {
      throw new TypeError("apiKey must be a non-empty string");
    }
    this.url = url.replace(/\/+$/, "");
    this.#apiKey = apiKey;
    this.#timeoutMs = nonNegative(options.timeoutMs, DEFAULT_TIMEOUT_MS, "timeoutMs", 1);
    this.#retries = Math.floor(nonNegative(options.retries, DEFAULT_RETRIES, "retries", 0));
    this.#retryBaseMs = nonNegative(options.retryBaseMs, DEFAULT_RETRY_BASE_MS, "retryBaseMs", 0);
  }

  /**
   * Publishes `data` to one channel or several, as one message (one id, one
   * seq per channel). Resolves once the store committed it; herald then
   * delivers it to every subscriber of those channels.
   *
   * @param channels A channel name, or several (at most 100).
   * @param data Any JSON-serializable value (at most 16 KiB of JSON by default).
   */
  async publish(
    channels: string | readonly string[],
    data: unknown,
    options: PublishOptions = {},
  ): Promise<PublishResult> {
    const body: Record<string, unknown> = {};
    if (typeof channels === "string") {
      body.channel = channels;
    } else if (Array.isArray(channels)) {
      if (channels.length === 1) {
        body.channel = channels[0];
      } else {
        body.channels = channels;
      }
    } else {
      throw new TypeError("channels must be a string or an array of strings");
    }
    body.data = jsonData(data);
    // One key for every attempt of this call: a retry after a lost answer
    // returns the first attempt's result instead of storing a second copy.
    body.key = options.idempotencyKey ?? randomUUID();
    if (options.from !== undefined) {
      body.from = options.from;
    }
    const v = await this.#call("POST", "/v1/publish", body);
    return publishResult(v);
  }

  /**
   * Sends an ephemeral signal (a typing indicator, say) to a channel's
   * current subscribers: never stored, no seq, best effort. A retry after a
   * lost answer may deliver it twice.
   */
  async signal(channel: string, data: unknown, options: SignalOptions = {}): Promise<void> {
    const body: Record<string, unknown> = { channel, data: jsonData(data) };
    if (options.from !== undefined) {
      body.from = options.from;
    }
    await this.#call("POST", "/v1/signal", body);
  }

  /**
   * One page of a channel's history: the messages with seq greater than
   * `after`, in seq order, at most `limit`, and the channel's last seq. A
   * channel that never had a message answers an empty page with `lastSeq` 0.
   */
  async history<T = JsonValue>(channel: string, options: HistoryOptions = {}): Promise<HistoryPage<T>> {
    const q = new URLSearchParams();
    if (options.after !== undefined) {
      q.set("after", String(options.after));
    }
    if (options.limit !== undefined) {
      q.set("limit", String(options.limit));
    }
    const qs = q.toString();
    const query = qs.length > 0 ? `?${qs}` : "";
    const v = await this.#call("GET", `/v1/channels/${encodeURIComponent(channel)}/messages${query}`);
    return historyPage<T>(v);
  }

  /**
   * Every page of a channel's history after `after`, `limit` messages each,
   * until the last seq the channel had when the page was read. Yields nothing
   * for an empty channel. Messages published meanwhile are included.
   */
  async *historyPages<T = JsonValue>(
    channel: string,
    options: HistoryOptions = {},
  ): AsyncGenerator<HistoryPage<T>, void, undefined> {
    let after = options.after ?? 0;
    for (;;) {
      const page = await this.history<T>(channel, { ...options, after });
      const last = page.messages.at(-1);
      if (last === undefined) {
        return;
      }
      yield page;
      if (last.seq >= page.lastSeq) {
        return;
      }
      after = last.seq;
    }
  }

  /** Every message of {@link historyPages}, one by one. */
  async *historyMessages<T = JsonValue>(
    channel: string,
    options: HistoryOptions = {},
  ): AsyncGenerator<Message<T>, void, undefined> {
    for await (const page of this.historyPages<T>(channel, options)) {
      yield* page.messages;
    }
  }

  /**
   * Each channel's last seq (0 for a channel that never had a message), for
   * at most 1000 channels.
   */
  async positions(channels: readonly string[]): Promise<Record<string, number>> {
    const v = await this.#call("POST", "/v1/positions", { channels });
    const positions = field(obj(v, "positions answer"), "positions");
    return numbers(positions, "positions answer.positions");
  }

  /** The clients subscribed to a channel now, with their token's `info`. */
  async presence(channel: string): Promise<PresenceClient[]> {
    const v = await this.#call("GET", `/v1/channels/${encodeURIComponent(channel)}/presence`);
    const clients = field(obj(v, "presence answer"), "clients");
    if (!Array.isArray(clients)) {
      throw badResponse("presence answer.clients is not an array");
    }
    return clients.map((c) => presenceClient(c));
  }

  /**
   * One call with its retries: the parsed JSON of a 2xx answer, or the
   * error. Retries transport failures and 503s; every other answer is final.
   */
  async #call(method: "GET" | "POST", path: string, body?: unknown): Promise<unknown> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = {
      authorization: `Bearer ${this.#apiKey}`,
      accept: "application/json",
      "user-agent": `herald-node/${VERSION}`,
    };
    if (payload !== undefined) {
      headers["content-type"] = "application/json";
    }
    for (let attempt = 0; ; attempt++) {
      const last = attempt >= this.#retries;
      let status: number;
      let text: string;
      try {
        const res = await fetch(this.url + path, {
          method,
          headers,
          body: payload,
          // Covers the body too: the answer is read within the same signal.
          signal: AbortSignal.timeout(this.#timeoutMs),
        });
        status = res.status;
        text = await res.text();
      } catch (e) {
        if (last) {
          throw new TransportError(`${method} ${path}: ${describe(e, this.#timeoutMs)}`, { cause: e });
        }
        await sleep(this.#delay(attempt));
        continue;
      }
      if (status >= 200 && status < 300) {
        try {
          return JSON.parse(text) as unknown;
        } catch {
          throw new HeraldError("bad_response", `${method} ${path}: answer ${status} is not JSON`, status);
        }
      }
      const err = answerError(status, text);
      if (err instanceof UnavailableError && !last) {
        await sleep(this.#delay(attempt));
        continue;
      }
      throw err;
    }
  }

  /** Backoff before retry `attempt + 1`: exponential, capped, jittered. */
  #delay(attempt: number): number {
    const full = Math.min(MAX_RETRY_DELAY_MS, this.#retryBaseMs * 2 ** attempt);
    return full / 2 + Math.random() * (full / 2);
  }
}

function nonNegative(v: number | undefined, dflt: number, what: string, min: number): number {
  if (v === undefined) {
    return dflt;
  }
  if (typeof v !== "number" || !Number.isFinite(v) || v < min) {
    throw new TypeError(`${what} must be a finite number >= ${min}`);
  }
  return v;
}

/** `data` as it will go on the wire; refuses what JSON.stringify would drop. */
function jsonData(data: unknown): unknown {
  if (data === undefined || typeof data === "function" || typeof data === "symbol") {
    throw new TypeError("data must be a JSON value (not undefined, a function or a symbol)");
  }
  return data;
}

function describe(e: unknown, timeoutMs: number): string {
  if (e instanceof Error && (e.name === "TimeoutError" || e.name === "AbortError")) {
    return `no answer within ${timeoutMs} ms`;
  }
  if (e instanceof Error) {
    // undici's `fetch failed` says little; its cause says what failed.
    const cause = (e as { cause?: unknown }).cause;
    return cause instanceof Error ? `${e.message}: ${cause.message}` : e.message;
  }
  return String(e);
}

/** The error for a non-2xx answer, from herald's error body when it has one. */
function answerError(status: number, text: string): HeraldError {
  try {
    const v = JSON.parse(text) as unknown;
    if (isObj(v) && isObj(v.error)) {
      const { code, message } = v.error;
      return errorFor(
        status,
        typeof code === "string" ? code : undefined,
        typeof message === "string" ? message : `HTTP ${status}`,
      );
    }
  } catch {
    // Not JSON: a proxy's page, say. Classified by status below.
  }
  const snippet = text.trim().slice(0, MAX_ERROR_TEXT);
  return errorFor(status, undefined, snippet.length > 0 ? `HTTP ${status}: ${snippet}` : `HTTP ${status}`);
}

// ---- answer shapes: checked, so a wrong URL fails loudly, not with undefined ----

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function badResponse(what: string): HeraldError {
  return new HeraldError("bad_response", `unexpected answer: ${what}`, 200);
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (!isObj(v)) {
    throw badResponse(`${what} is not a JSON object`);
  }
  return v;
}

function field(o: Record<string, unknown>, k: string): unknown {
  return Object.hasOwn(o, k) ? o[k] : undefined;
}

function num(o: Record<string, unknown>, k: string, what: string): number {
  const v = field(o, k);
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw badResponse(`${what}.${k} is not a number`);
  }
  return v;
}

function str(o: Record<string, unknown>, k: string, what: string): string {
  const v = field(o, k);
  if (typeof v !== "string") {
    throw badResponse(`${what}.${k} is not a string`);
  }
  return v;
}

function numbers(v: unknown, what: string): Record<string, number> {
  const o = obj(v, what);
  const out: Record<string, number> = {};
  for (const k of Object.keys(o)) {
    out[k] = num(o, k, what);
  }
  return out;
}

function publishResult(v: unknown): PublishResult {
  const o = obj(v, "publish answer");
  return {
    id: str(o, "id", "publish answer"),
    ts: num(o, "ts", "publish answer"),
    seqs: numbers(field(o, "seqs"), "publish answer.seqs"),
  };
}

function message<T>(v: unknown): Message<T> {
  const o = obj(v, "message");
  str(o, "channel", "message");
  num(o, "seq", "message");
  str(o, "id", "message");
  num(o, "ts", "message");
  const from = field(o, "from");
  if (from !== undefined && from !== null && typeof from !== "string") {
    throw badResponse("message.from is not a string");
  }
  if (!Object.hasOwn(o, "data")) {
    throw badResponse("message has no data");
  }
  return o as unknown as Message<T>;
}

function historyPage<T>(v: unknown): HistoryPage<T> {
  const o = obj(v, "history answer");
  const items = field(o, "messages");
  if (!Array.isArray(items)) {
    throw badResponse("history answer.messages is not an array");
  }
  return { messages: items.map((m) => message<T>(m)), lastSeq: num(o, "last_seq", "history answer") };
}

function presenceClient(v: unknown): PresenceClient {
  const o = obj(v, "presence client");
  str(o, "sub", "presence client");
  str(o, "conn", "presence client");
  const info = field(o, "info");
  if (info !== undefined && info !== null && !isObj(info)) {
    throw badResponse("presence client.info is not an object");
  }
  return o as unknown as PresenceClient;
}
