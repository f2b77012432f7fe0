/**
 * The connection: one WebSocket at a time, the state machine around it,
 * reconnects with recovery, requests and their replies, heartbeats and
 * token refresh. The app-side view of each channel is a {@link Subscription}.
 *
 * State machine (docs/client.md has the diagram):
 *
 *   disconnected --connect()--> connecting --welcome--> connected
 *   connecting/connected --close that allows a retry--> disconnected
 *        (a backoff timer runs) --timer--> connecting
 *   any --disconnect() or a close that forbids a retry--> closed
 *   closed --connect()--> connecting
 *
 * Invariants:
 * - Each socket gets an epoch; an event of an older socket is ignored, so a
 *   late close or frame can never touch the current connection.
 * - State is updated before any event is emitted; listeners that throw are
 *   reported on `error`, never break the bookkeeping.
 * - Every timer is cleared on `disconnect()`: a closed client keeps no Node
 *   process alive.
 */

import { systemClock, randomUuid, type Clock, type TimerHandle } from "./clock.js";
import { codecFor, type Codec, type ServerFrame } from "./codec.js";
import { Emitter } from "./emitter.js";
import { HeraldError, type ErrorCode } from "./errors.js";
import { checkChannel } from "./names.js";
import {
  DEFAULT_BACKOFF,
  backoffDelay,
  closeAction,
  slowBackoffDelay,
  type BackoffOptions,
} from "./policy.js";
import type { Message } from "./sequencer.js";
import { Subscription, type SubscribeOptions } from "./subscription.js";
import { refreshDelayMs, tokenExpiryMs } from "./token.js";
import type {
  DisconnectedEvent,
  HeraldOptions,
  HistoryAnswer,
  HistoryOptions,
  HistoryPage,
  PresenceClient,
  PresenceEvent,
  PublishResult,
  Signal,
  State,
  SubscribeResult,
  WebSocketConstructor,
  WebSocketLike,
  Welcome,
  WelcomeSub,
} from "./types.js";

/** Events of a {@link Herald} client. */
export interface HeraldEvents {
  /** Every state change: `(state, previous)`. */
  state: (state: State, previous: State) => void;
  /** A connection was established (each reconnect too). */
  connected: (welcome: Welcome) => void;
  /** An established connection ended. */
  disconnected: (e: DisconnectedEvent) => void;
  /** Something went wrong that no promise reports (connection attempts, token refresh, listeners). */
  error: (err: HeraldError) => void;
  /** Every message of every subscription, after dedup and ordering (handy for automatic subscriptions). */
  message: (m: Message) => void;
  /** A subscription the server made on connect (token `channels`, route) that the app had not declared. */
  subscription: (sub: Subscription) => void;
}

/** Options of {@link Herald.publish}. */
export interface PublishOptions {
  /** Makes retries idempotent; generated (UUIDv4) when absent and reused on every retry. */
  idempotencyKey?: string;
}

/** A request waiting for its reply (or for a connection to be sent on). */
interface Pending {
  op: string;
  fields: Record<string, unknown>;
  resolve: (result: Record<string, unknown>) => void;
  reject: (err: HeraldError) => void;
  /** Sent again after a reconnect instead of rejected (publish with its key, presence). */
  resend: boolean;
  channel?: string;
  key?: string;
  timer?: TimerHandle;
}

/** One WebSocket and what belongs to it alone. */
interface Socket {
  ws: WebSocketLike;
  opened: boolean;
  welcome?: Welcome;
  lastFrameAt: number;
  pingId?: number;
  pingSentAt?: number;
  /** Handshake deadline, then the heartbeat tick. */
  timer?: TimerHandle;
  /** After an error event on an open socket: ends it if no close follows. */
  errorTimer?: TimerHandle;
  /** The `disconnect` frame, when the server sent one. */
  disconnect?: { code: number; reason: string; reconnect: boolean };
  /** Channels named in this connection's `recover=`. */
  recoverAsked: Set<string>;
}

/** A `history()` over the WebSocket collecting a channel's replay. */
interface Collector {
  push(m: Message): void;
  abort(err: HeraldError): void;
}

const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
const DEFAULT_REFRESH_LEAD_MS = 30_000;
const DEFAULT_MAX_FRAME_BYTES = 65_536;
const DEFAULT_PUBLISH_RETRIES = 3;
/** Keeps `recover=` (and so the upgrade request line) well under proxies' 8 KiB header limits. */
const MAX_RECOVER_CHARS = 4_000;
/** Close code the client uses when it drops a socket itself (dead, handshake timeout). */
const CLIENT_RESET = 3000;

/** Builds the connection URL: `token` and `recover=` in the query (browsers cannot set headers). */
export function buildUrl(base: string, token: string | undefined, recover: ReadonlyArray<readonly [string, number]>): string {
  let u: URL;
  try {
    u = new URL(base);
  } catch {
    const here = (globalThis as { location?: { href: string } }).location?.href;
    if (here === undefined) {
      throw new TypeError(`invalid herald URL ${base}: give an absolute ws:// or wss:// URL`);
    }
    u = new URL(base, here);
  }
  if (u.protocol === "http:") {
    u.protocol = "ws:";
  } else if (u.protocol === "https:") {
    u.protocol = "wss:";
  }
  if (token !== undefined) {
    u.searchParams.set("token", token);
  }
  if (recover.length > 0) {
    u.searchParams.set("recover", recover.map(([c, s]) => `${c}:${s}`).join(","));
  } else {
    u.searchParams.delete("recover");
  }
  return u.toString();
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

function isSeq(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0;
}

/** A `message` frame as a Message, or undefined when malformed. */
function parseMessage(f: ServerFrame): Message | undefined {
  const { channel, seq, id, ts, from, data } = f;
  if (typeof channel !== "string" || !isSeq(seq) || seq < 1 || typeof id !== "string" || typeof ts !== "number") {
    return undefined;
  }
  const m: Message = { channel, seq, id, ts, data };
  if (typeof from === "string") {
    m.from = from;
  }
  return m;
}

function parseWelcome(f: ServerFrame): Welcome | undefined {
  const { conn, node, heartbeat, subs } = f;
  if (typeof conn !== "string" || typeof node !== "string" || !Array.isArray(subs)) {
    return undefined;
  }
  const out: WelcomeSub[] = [];
  for (const s of subs) {
    if (!isObject(s) || typeof s.channel !== "string" || !isSeq(s.seq)) {
      return undefined;
    }
    const e: WelcomeSub = { channel: s.channel, seq: s.seq };
    if (typeof s.recovered === "boolean") {
      e.recovered = s.recovered;
    }
    if (isSeq(s.replayed)) {
      e.replayed = s.replayed;
    }
    out.push(e);
  }
  return { conn, node, heartbeat: typeof heartbeat === "number" ? heartbeat : 25, subs: out };
}

function subscribeResult(r: Record<string, unknown>, channel: string): SubscribeResult {
  const out: SubscribeResult = { channel, seq: isSeq(r.seq) ? r.seq : 0 };
  if (typeof r.recovered === "boolean") {
    out.recovered = r.recovered;
  }
  if (isSeq(r.replayed)) {
    out.replayed = r.replayed;
  }
  return out;
}

function toHeraldError(e: unknown, fallback: ErrorCode): HeraldError {
  if (e instanceof HeraldError) {
    return e;
  }
  return new HeraldError(fallback, e instanceof Error ? e.message : String(e), { cause: e });
}

/**
 * A herald client: one connection (reconnected as needed) and its
 * subscriptions.
 *
 * ```ts
 * const h = new Herald("wss://rt.example.com/ws", { getToken: () => api.heraldToken() });
 * const sub = h.subscribe("chat_42");
 * sub.on("message", (m) => render(m));
 * await h.connect();
 * await h.publish("chat_42", { text: "hi" });
 * ```
 */
export class Herald extends Emitter<HeraldEvents> {
  readonly #url: string;
  readonly #codec: Codec;
  readonly #clock: Clock;
  readonly #backoff: BackoffOptions;
  readonly #ws: WebSocketConstructor | undefined;
  readonly #getToken: (() => Promise<string> | string) | undefined;
  readonly #historyFn: HeraldOptions["history"];
  readonly #requestTimeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #refreshLeadMs: number;
  readonly #autoRefresh: boolean;
  readonly #pingIntervalMs: number | undefined;
  readonly #deadTimeoutMs: number | undefined;
  readonly #maxFrameBytes: number;
  readonly #publishRetries: number;

  #state: State = "disconnected";
  #sock: Socket | undefined;
  /** Bumped for every socket and by `disconnect()`: stale async work checks it. */
  #epoch = 0;
  /** Failed attempts since the last welcome: the backoff step. */
  #attempt = 0;
  /** Auth closes (4001/4003/4004) since the last welcome. */
  #authFailures = 0;
  #token: string | undefined;
  /** getToken must be asked before the next attempt (after 4001/4004). */
  #needToken = false;
  /** The token the server just refused; getToken returning it again stops the client. */
  #refusedToken: string | undefined;
  /** The close code (4001/4003/4004) that made the token need replacing. */
  #refusedCode = 0;
  #nextId = 1;
  readonly #inflight = new Map<number, Pending>();
  #queue: Pending[] = [];
  readonly #subs = new Map<string, Subscription>();
  readonly #collectors = new Map<string, Collector>();
  readonly #historyLocks = new Map<string, Promise<void>>();
  #connectWaiters: Array<{ resolve: (w: Welcome) => void; reject: (e: HeraldError) => void }> = [];
  #welcome: Welcome | undefined;
  #reconnectTimer: TimerHandle | undefined;
  #refreshTimer: TimerHandle | undefined;
  /** Timers of delayed retries (subscribe, publish), cleared on close. */
  readonly #retryTimers = new Map<TimerHandle, () => void>();

  constructor(url: string, options: HeraldOptions = {}) {
    super();
    this.#url = url;
    // Fail early on a bad URL, not at the first connect.
    buildUrl(url, undefined, []);
    this.#codec = codecFor(options.encoding ?? "json");
    this.#clock = options.clock ?? systemClock;
    this.#backoff = { ...DEFAULT_BACKOFF, ...options.reconnect };
    this.#ws = options.websocket;
    this.#getToken = options.getToken;
    this.#token = options.token;
    this.#historyFn = options.history;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? this.#requestTimeoutMs;
    this.#refreshLeadMs = options.refreshLeadMs ?? DEFAULT_REFRESH_LEAD_MS;
    this.#autoRefresh = options.autoRefresh ?? true;
    this.#pingIntervalMs = options.pingIntervalMs;
    this.#deadTimeoutMs = options.deadTimeoutMs;
    this.#maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.#publishRetries = options.publishRetries ?? DEFAULT_PUBLISH_RETRIES;
    this.onListenerError = (err, event) => this._reportListenerError(err, event);
  }

  /** The connection state. */
  get state(): State {
    return this.#state;
  }

  /** The latest `welcome` (the current connection's while connected). */
  get welcome(): Welcome | undefined {
    return this.#welcome;
  }

  /** The token the next connection will use. */
  get token(): string | undefined {
    return this.#token;
  }

  /**
   * Connects (and keeps reconnecting). Resolves at the first `welcome`;
   * rejects only when the client closes before it (`disconnect()`, or a
   * close code that forbids a retry, e.g. 4001). A failing network only
   * delays it. Calling it while a reconnect timer runs retries at once.
   */
  connect(): Promise<Welcome> {
    if (this.#state === "connected" && this.#welcome !== undefined) {
      return Promise.resolve(this.#welcome);
    }
    const p = new Promise<Welcome>((resolve, reject) => {
      this.#connectWaiters.push({ resolve, reject });
    });
    // The app may ignore the promise: no unhandled rejection then.
    p.catch(() => undefined);
    if (this.#state === "closed" || (this.#state === "disconnected" && this.#reconnectTimer === undefined)) {
      this.#attempt = 0;
      this.#authFailures = 0;
      void this.#open();
    } else if (this.#state === "disconnected") {
      this.#clearReconnectTimer();
      void this.#open();
    }
    return p;
  }

  /**
   * Closes the connection and stays closed (state `closed`): no reconnect,
   * pending requests reject with `closed`. Subscriptions are kept and
   * resume (with recovery) on the next `connect()`.
   */
  disconnect(): void {
    if (this.#state === "closed") {
      return;
    }
    const wasConnected = this.#sock?.welcome !== undefined;
    this.#stop(undefined);
    if (wasConnected) {
      this.emit("disconnected", { code: 1000, reason: "disconnect() called", reconnect: false });
    }
  }

  /**
   * Subscribes to `channel` (synchronously; the subscribe op goes out when
   * connected). Returns the existing subscription when there is one.
   * Throws a `bad_channel` HeraldError for an invalid name.
   */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    checkChannel(channel);
    const existing = this.#subs.get(channel);
    if (existing !== undefined) {
      return existing;
    }
    if (options.since !== undefined && !isSeq(options.since)) {
      throw new HeraldError("bad_request", `since must be a non-negative integer, not ${String(options.since)}`, { channel });
    }
    const sub = new Subscription(this, channel, options, false);
    this.#subs.set(channel, sub);
    if (this.#sock?.welcome !== undefined) {
      this.#sendSubscribe(sub);
    }
    return sub;
  }

  /** The subscription of `channel` (app-made or automatic), if any. */
  subscription(channel: string): Subscription | undefined {
    return this.#subs.get(channel);
  }

  /** Every current subscription. */
  subscriptions(): Subscription[] {
    return [...this.#subs.values()];
  }

  /**
   * Publishes `data` to `channel`; resolves with the stored message's id,
   * seq and ts. Retry-safe: the idempotency key (generated when absent) is
   * reused when the request is re-sent after a reconnect or an
   * `unavailable` answer, so the message is stored once. Waits for a
   * connection when there is none. The message also arrives on the
   * channel's subscription, once.
   */
  async publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<PublishResult> {
    checkChannel(channel);
    const key = options.idempotencyKey ?? randomUuid();
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.#request("publish", { channel, data, key }, { resend: true, channel, key });
        return { id: String(r.id), seq: Number(r.seq), ts: Number(r.ts) };
      } catch (e) {
        const err = toHeraldError(e, "internal");
        if (err.code === "unavailable" && attempt < this.#publishRetries && this.#state !== "closed") {
          await this.#sleep(backoffDelay(attempt + 1, this.#backoff, () => this.#clock.random()));
          continue;
        }
        throw err.idempotencyKey === undefined
          ? new HeraldError(err.code, err.message, { channel, idempotencyKey: key, cause: err })
          : err;
      }
    }
  }

  /**
   * Sends an ephemeral signal (typing indicators): never stored, not echoed
   * to this connection. Needs a live connection: rejects with
   * `disconnected` otherwise, or if the connection drops before the reply.
   */
  async signal(channel: string, data: unknown): Promise<void> {
    checkChannel(channel);
    if (this.#sock?.welcome === undefined) {
      throw new HeraldError(this.#state === "closed" ? "closed" : "disconnected", "not connected: signals are not queued", { channel });
    }
    await this.#request("signal", { channel, data }, { resend: false, channel });
  }

  /** Who is subscribed to `channel` now (needs a presence grant). Waits for a connection. */
  async presence(channel: string): Promise<PresenceClient[]> {
    checkChannel(channel);
    const r = await this.#request("presence", { channel }, { resend: true, channel });
    return Array.isArray(r.clients) ? (r.clients as PresenceClient[]) : [];
  }

  /**
   * Replaces the connection token. Connected: sends `refresh` and resolves
   * on the server's OK (a refused token rejects with `forbidden`, and the
   * previous token stays in use). Not connected: the token is used by the
   * next connection.
   */
  async refresh(token: string): Promise<void> {
    if (typeof token !== "string" || token === "") {
      throw new HeraldError("bad_request", "refresh needs a token string");
    }
    const previous = this.#token;
    this.#token = token;
    this.#needToken = false;
    this.#scheduleRefresh();
    if (this.#sock?.welcome === undefined) {
      return;
    }
    try {
      await this.#request("refresh", { token }, { resend: false });
    } catch (e) {
      const err = toHeraldError(e, "internal");
      if (err.code === "disconnected") {
        // The next connection presents the new token: the server checks it then.
        return;
      }
      if (this.#token === token) {
        this.#token = previous;
        this.#scheduleRefresh();
      }
      throw err;
    }
  }

  /**
   * A channel's messages with seq > `after` (at most `limit`, default 100),
   * in seq order. Uses the `history` option when given (the app's backend);
   * otherwise replays over the WebSocket: a temporary subscribe with
   * `since: after`, collecting the replay, then unsubscribe. That fallback
   * needs a subscribe grant, announces presence join/leave to the channel,
   * and refuses (`history_unavailable`) a channel this client holds.
   */
  async history(channel: string, options: HistoryOptions = {}): Promise<HistoryPage> {
    checkChannel(channel);
    const after = options.after ?? 0;
    const limit = options.limit ?? 100;
    if (!isSeq(after)) {
      throw new HeraldError("bad_request", `after must be a non-negative integer, not ${String(after)}`, { channel });
    }
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000) {
      throw new HeraldError("bad_request", `limit must be an integer in 1..1000, not ${String(limit)}`, { channel });
    }
    if (this.#historyFn !== undefined) {
      const answer = await this.#historyFn(channel, { after, limit });
      return this.#historyPage(answer, after);
    }
    if (this.#subs.has(channel)) {
      throw new HeraldError(
        "history_unavailable",
        `${channel} is subscribed on this connection: herald replays it only through since/recover; ` +
          "give the `history` option (the app's backend reading herald's history API) to read it",
        { channel },
      );
    }
    for (let lock = this.#historyLocks.get(channel); lock !== undefined; lock = this.#historyLocks.get(channel)) {
      await lock;
    }
    let release = (): void => undefined;
    this.#historyLocks.set(
      channel,
      new Promise<void>((ok) => {
        release = ok;
      }),
    );
    try {
      return await this.#historyOverWs(channel, after, limit);
    } finally {
      this.#historyLocks.delete(channel);
      release();
    }
  }

  /** @internal */
  _reportListenerError(err: unknown, event: string): void {
    if (event !== "error" && this.listenerCount("error") > 0) {
      this.emit("error", toHeraldError(err, "internal"));
    } else {
      console.error(`herald: a "${event}" listener threw`, err);
    }
  }

  /** @internal Subscription.unsubscribe(). */
  async _unsubscribe(sub: Subscription): Promise<void> {
    if (this.#subs.get(sub.channel) !== sub) {
      return;
    }
    this.#subs.delete(sub.channel);
    sub._ended("client");
    if (this.#sock?.welcome === undefined) {
      return;
    }
    try {
      await this.#request("unsubscribe", { channel: sub.channel }, { resend: false, channel: sub.channel });
    } catch (e) {
      const err = toHeraldError(e, "internal");
      // Not held (any more), or the connection went: either way it is gone.
      if (err.code !== "not_subscribed" && err.code !== "disconnected" && err.code !== "closed") {
        throw err;
      }
    }
  }

  // ---- connection ----------------------------------------------------------

  #setState(next: State): void {
    const prev = this.#state;
    if (prev === next) {
      return;
    }
    this.#state = next;
    this.emit("state", next, prev);
  }

  async #open(): Promise<void> {
    const epoch = ++this.#epoch;
    this.#setState("connecting");
    let token = this.#token;
    if (this.#getToken !== undefined && (token === undefined || this.#needToken || this.#expiresSoon(token))) {
      try {
        token = await this.#fetchToken();
      } catch (e) {
        if (epoch !== this.#epoch) {
          return;
        }
        this.emit("error", toHeraldError(e, "token"));
        this.#scheduleReconnect(false);
        return;
      }
      if (epoch !== this.#epoch) {
        return;
      }
      if (this.#needToken && token === this.#refusedToken) {
        this.#stop(
          new HeraldError(
            this.#refusedCode === 4004 ? "token_expired" : "unauthorized",
            `getToken returned the token the server just refused (${this.#refusedCode})`,
            { closeCode: this.#refusedCode },
          ),
        );
        return;
      }
      this.#needToken = false;
      this.#token = token;
    }
    const recover: Array<[string, number]> = [];
    let chars = 0;
    for (const sub of this.#subs.values()) {
      if (sub.automatic && sub._hasPosition) {
        const n = sub.channel.length + String(sub.lastSeq).length + 2;
        if (chars + n > MAX_RECOVER_CHARS) {
          // The rest resync with `since` after the welcome.
          break;
        }
        chars += n;
        recover.push([sub.channel, sub.lastSeq]);
      }
    }
    const Ctor = this.#ws ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (Ctor === undefined) {
      this.#stop(
        new HeraldError(
          "transport",
          "no WebSocket implementation: pass the `websocket` option (Node 20 needs --experimental-websocket for a global one)",
        ),
      );
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new Ctor(buildUrl(this.#url, token, recover), [this.#codec.subprotocol]);
    } catch (e) {
      this.emit("error", toHeraldError(e, "transport"));
      this.#scheduleReconnect(false);
      return;
    }
    ws.binaryType = "arraybuffer";
    const sock: Socket = {
      ws,
      opened: false,
      lastFrameAt: this.#clock.now(),
      recoverAsked: new Set(recover.map(([c]) => c)),
    };
    this.#sock = sock;
    ws.onopen = () => {
      if (this.#sock === sock) {
        sock.opened = true;
        sock.lastFrameAt = this.#clock.now();
      }
    };
    ws.onmessage = (ev: { data: unknown }) => {
      if (this.#sock === sock) {
        this.#onData(sock, ev.data);
      }
    };
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      if (this.#sock === sock) {
        this.#onSocketEnd(sock, ev.code ?? 1006, ev.reason ?? "");
      }
    };
    ws.onerror = () => {
      if (this.#sock !== sock) {
        return;
      }
      if (!sock.opened) {
        // A failed attempt. Browsers fire close next; Node 20's WebSocket
        // (undici before nodejs/undici#3546 was fixed) never does.
        this.#drop(sock, 1006, "connection failed");
      } else if (sock.errorTimer === undefined) {
        // The close event should follow; end the socket ourselves if not.
        sock.errorTimer = this.#clock.setTimeout(() => {
          if (this.#sock === sock) {
            this.#drop(sock, 1006, "socket error");
          }
        }, 1_000);
      }
    };
    sock.timer = this.#clock.setTimeout(() => {
      if (this.#sock === sock && sock.welcome === undefined) {
        this.#drop(sock, 1006, `no welcome within ${this.#connectTimeoutMs} ms`);
      }
    }, this.#connectTimeoutMs);
  }

  /** Ends a socket from this side (dead, handshake timeout) and reacts as to a close with `code`. */
  #drop(sock: Socket, code: number, reason: string): void {
    this.#detach(sock);
    try {
      sock.ws.close(CLIENT_RESET, "herald client reset");
    } catch {
      // Already closing.
    }
    this.#onSocketEnd(sock, code, reason);
  }

  #detach(sock: Socket): void {
    sock.ws.onopen = null;
    sock.ws.onmessage = null;
    sock.ws.onclose = null;
    sock.ws.onerror = () => undefined;
    if (sock.timer !== undefined) {
      this.#clock.clearTimeout(sock.timer);
      sock.timer = undefined;
    }
    if (sock.errorTimer !== undefined) {
      this.#clock.clearTimeout(sock.errorTimer);
      sock.errorTimer = undefined;
    }
  }

  #onSocketEnd(sock: Socket, code: number, reason: string): void {
    if (this.#sock !== sock) {
      return;
    }
    this.#sock = undefined;
    this.#detach(sock);
    if (sock.ws.readyState === 0 || sock.ws.readyState === 1) {
      try {
        sock.ws.close(1000);
      } catch {
        // Already closing.
      }
    }
    this.#clearRefreshTimer();
    this.#connectionLost();
    const info = sock.disconnect ?? { code, reason, reconnect: undefined };
    const action = closeAction(info.code, info.reconnect, this.#getToken !== undefined);
    const event = (reconnect: boolean): DisconnectedEvent => ({ code: info.code, reason: info.reason, reconnect });
    switch (action.kind) {
      case "reconnect":
        this.#scheduleReconnect(action.slow);
        break;
      case "token": {
        this.#authFailures += 1;
        if (this.#authFailures > 1) {
          this.#stop(this.#closeError(info.code === 4004 ? "token_expired" : "unauthorized", info));
          if (sock.opened) {
            this.emit("disconnected", event(false));
          }
          return;
        }
        this.#needToken = true;
        this.#refusedToken = this.#token;
        this.#refusedCode = info.code;
        // 4004: the token simply ran out; ask at once. 4001: back off.
        this.#scheduleReconnect(false, info.code === 4004 ? 0 : undefined);
        break;
      }
      case "stop":
        this.#stop(action.error === null ? undefined : this.#closeError(action.error, info));
        if (sock.opened) {
          this.emit("disconnected", event(false));
        }
        return;
    }
    if (sock.opened) {
      this.emit("disconnected", event(true));
    } else {
      this.emit(
        "error",
        new HeraldError("transport", `connection attempt failed (${info.code}${info.reason ? `: ${info.reason}` : ""})`, {
          closeCode: info.code,
        }),
      );
    }
  }

  #closeError(code: ErrorCode, info: { code: number; reason: string }): HeraldError {
    return new HeraldError(code, `server closed the connection with ${info.code}${info.reason ? ` (${info.reason})` : ""}`, {
      closeCode: info.code,
    });
  }

  /** In-flight requests and subscriptions after a socket is gone. */
  #connectionLost(): void {
    const resend: Pending[] = [];
    for (const p of this.#inflight.values()) {
      if (p.timer !== undefined) {
        this.#clock.clearTimeout(p.timer);
        p.timer = undefined;
      }
      if (p.resend) {
        resend.push(p);
      } else {
        p.reject(new HeraldError("disconnected", `connection lost before the ${p.op} reply`, this.#details(p)));
      }
    }
    this.#inflight.clear();
    // Map order is id order: retried requests keep their order, ahead of queued ones.
    this.#queue = [...resend, ...this.#queue];
    for (const sub of this.#subs.values()) {
      sub._connectionLost();
    }
    for (const c of [...this.#collectors.values()]) {
      c.abort(new HeraldError("disconnected", "connection lost during history replay"));
    }
    // Subscribe retries of this connection check its epoch when they fire.
  }

  #scheduleReconnect(slow: boolean, delayMs?: number): void {
    const delay = delayMs ?? (slow ? slowBackoffDelay : backoffDelay)(this.#attempt, this.#backoff, () => this.#clock.random());
    this.#attempt += 1;
    this.#clearReconnectTimer();
    this.#setState("disconnected");
    this.#reconnectTimer = this.#clock.setTimeout(() => {
      this.#reconnectTimer = undefined;
      void this.#open();
    }, delay);
  }

  #clearReconnectTimer(): void {
    if (this.#reconnectTimer !== undefined) {
      this.#clock.clearTimeout(this.#reconnectTimer);
      this.#reconnectTimer = undefined;
    }
  }

  /** Terminal: state `closed`; everything pending fails with `err` (or `closed`). */
  #stop(err: HeraldError | undefined): void {
    this.#epoch += 1;
    this.#clearReconnectTimer();
    this.#clearRefreshTimer();
    const sock = this.#sock;
    this.#sock = undefined;
    if (sock !== undefined) {
      this.#detach(sock);
      try {
        sock.ws.close(1000);
      } catch {
        // Already closing.
      }
    }
    this.#connectionLost();
    this.#clearRetryTimers();
    const reason = err ?? new HeraldError("closed", "the client is closed");
    for (const p of this.#queue) {
      p.reject(new HeraldError(reason.code, reason.message, { ...this.#details(p), closeCode: reason.closeCode }));
    }
    this.#queue = [];
    this.#setState("closed");
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const w of waiters) {
      w.reject(reason);
    }
    if (err !== undefined) {
      this.emit("error", err);
    }
  }

  // ---- frames --------------------------------------------------------------

  #onData(sock: Socket, data: unknown): void {
    sock.lastFrameAt = this.#clock.now();
    let f: ServerFrame;
    try {
      f = this.#codec.decode(data);
    } catch (e) {
      this.emit("error", toHeraldError(e, "protocol"));
      return;
    }
    switch (f.type) {
      case "welcome":
        this.#onWelcome(sock, f);
        break;
      case "message":
        this.#onMessage(f);
        break;
      case "reply":
        this.#onReply(sock, f);
        break;
      case "pong":
        if (f.id === sock.pingId) {
          sock.pingId = undefined;
          sock.pingSentAt = undefined;
        }
        break;
      case "signal": {
        const sub = typeof f.channel === "string" ? this.#subs.get(f.channel) : undefined;
        if (sub !== undefined) {
          const s: Signal = { channel: sub.channel, data: f.data };
          if (typeof f.from === "string") {
            s.from = f.from;
          }
          sub._emitSignal(s);
        }
        break;
      }
      case "presence": {
        const sub = typeof f.channel === "string" ? this.#subs.get(f.channel) : undefined;
        if (sub !== undefined && (f.event === "join" || f.event === "leave") && isObject(f.client)) {
          sub._emitPresence({ channel: sub.channel, event: f.event, client: f.client as unknown as PresenceClient } satisfies PresenceEvent);
        }
        break;
      }
      case "unsubscribed": {
        const sub = typeof f.channel === "string" ? this.#subs.get(f.channel) : undefined;
        if (sub !== undefined) {
          this.#subs.delete(sub.channel);
          sub._ended(typeof f.reason === "string" ? f.reason : "server");
        }
        break;
      }
      case "disconnect":
        if (typeof f.code === "number") {
          sock.disconnect = {
            code: f.code,
            reason: typeof f.reason === "string" ? f.reason : "",
            reconnect: f.reconnect === true,
          };
          // Act now; the close frame that follows changes nothing.
          this.#onSocketEnd(sock, f.code, sock.disconnect.reason);
        }
        break;
      default:
        // Unknown frame types are ignored (forward compatibility).
        break;
    }
  }

  #onWelcome(sock: Socket, f: ServerFrame): void {
    if (sock.welcome !== undefined) {
      return;
    }
    const w = parseWelcome(f);
    if (w === undefined) {
      this.emit("error", new HeraldError("protocol", "malformed welcome frame"));
      this.#drop(sock, 1006, "malformed welcome");
      return;
    }
    if (sock.timer !== undefined) {
      this.#clock.clearTimeout(sock.timer);
      sock.timer = undefined;
    }
    sock.welcome = w;
    sock.lastFrameAt = this.#clock.now();
    this.#welcome = w;
    this.#attempt = 0;
    this.#authFailures = 0;
    this.#refusedToken = undefined;

    // Wire order first: subscribes of the app's other channels, then the
    // requests queued while offline, in the order they were made. Requests
    // made by listeners below go out after them.
    const automatic = new Set(w.subs.map((e) => e.channel));
    for (const sub of this.#subs.values()) {
      if (!automatic.has(sub.channel)) {
        sub._setAutomatic(false);
        this.#sendSubscribe(sub);
      }
    }
    const queued = this.#queue;
    this.#queue = [];
    for (const p of queued) {
      this.#transmit(p);
    }
    this.#startHeartbeat(sock, w);
    // Automatic subscriptions are positioned now, before any of their
    // messages (later frames) arrives.
    const fresh: Subscription[] = [];
    const gaps: Subscription[] = [];
    for (const e of w.subs) {
      let sub = this.#subs.get(e.channel);
      if (sub === undefined) {
        sub = new Subscription(this, e.channel, {}, true);
        this.#subs.set(e.channel, sub);
        fresh.push(sub);
      }
      sub._setAutomatic(true);
      const asked = sock.recoverAsked.has(e.channel);
      // A known position not sent in recover= must not be skipped either:
      // the sequencer reports the gap and the channel is resynced.
      if (this.#position(sub, e.seq, asked || sub._hasPosition, asked ? e.recovered : undefined, e.replayed)) {
        gaps.push(sub);
      }
    }
    for (const sub of gaps) {
      this.#resync(sub);
    }
    this.#scheduleRefresh();
    this.#setState("connected");
    for (const sub of fresh) {
      this.emit("subscription", sub);
    }
    this.emit("connected", w);
    const waiters = this.#connectWaiters;
    this.#connectWaiters = [];
    for (const x of waiters) {
      x.resolve(w);
    }
  }

  /**
   * Positions a subscription from a reply or welcome entry, delivers what
   * that releases and emits `recovered`/`subscribed`. Returns whether the
   * channel needs a resync.
   */
  #position(sub: Subscription, seq: number, asked: boolean, recovered: boolean | undefined, replayed: number | undefined): boolean {
    const r = sub._seq.position(seq, asked, recovered, replayed);
    const result: SubscribeResult = { channel: sub.channel, seq };
    if (recovered !== undefined) {
      result.recovered = recovered;
    }
    if (replayed !== undefined) {
      result.replayed = replayed;
    }
    sub._subscribed(result);
    if (r.recovered !== undefined) {
      sub._emitRecovered({ recovered: r.recovered, replayed: r.replayed ?? 0 });
    }
    this.#deliver(sub, r.deliver);
    return r.gap;
  }

  #deliver(sub: Subscription, msgs: Message[]): void {
    for (const m of msgs) {
      // The subscription may have ended in a listener of the previous message.
      if (this.#subs.get(sub.channel) !== sub) {
        return;
      }
      sub._emitMessage(m);
      this.emit("message", m);
    }
  }

  #onMessage(f: ServerFrame): void {
    const m = parseMessage(f);
    if (m === undefined) {
      this.emit("error", new HeraldError("protocol", "malformed message frame"));
      return;
    }
    this.#collectors.get(m.channel)?.push(m);
    const sub = this.#subs.get(m.channel);
    if (sub === undefined) {
      return;
    }
    const r = sub._seq.push(m);
    this.#deliver(sub, r.deliver);
    if (r.gap) {
      this.#resync(sub);
    }
  }

  /**
   * A seq is missing on a live connection (the gateway fills gaps itself,
   * so this is defensive): leave and rejoin the channel with `since` =
   * lastSeq; what arrived meanwhile stays buffered and dedup drops repeats.
   */
  #resync(sub: Subscription): void {
    if (this.#sock?.welcome === undefined || sub._resyncing || this.#subs.get(sub.channel) !== sub) {
      return;
    }
    sub._resyncing = true;
    sub._seq.unposition(true);
    this.#request("unsubscribe", { channel: sub.channel }, { resend: false, channel: sub.channel }).catch(() => undefined);
    this.#sendSubscribe(sub);
  }

  #sendSubscribe(sub: Subscription): void {
    const epoch = this.#epoch;
    const current = (): boolean => epoch === this.#epoch && this.#subs.get(sub.channel) === sub && this.#sock?.welcome !== undefined;
    const lock = this.#historyLocks.get(sub.channel);
    if (lock !== undefined) {
      // A history() replay holds the channel: subscribe after its unsubscribe.
      void lock.then(() => {
        if (current()) {
          this.#sendSubscribe(sub);
        }
      });
      return;
    }
    const send = (token: string | undefined): void => {
      const asked = sub._hasPosition;
      const fields: Record<string, unknown> = { channel: sub.channel };
      if (asked) {
        fields.since = sub.lastSeq;
      }
      if (token !== undefined) {
        fields.token = token;
      }
      this.#call(
        "subscribe",
        fields,
        { resend: false, channel: sub.channel },
        (r) => {
          if (!current()) {
            return;
          }
          sub._resyncing = false;
          const res = subscribeResult(r, sub.channel);
          if (this.#position(sub, res.seq, asked, res.recovered, res.replayed)) {
            this.#resync(sub);
          }
        },
        (e: unknown) => {
          if (!current()) {
            return;
          }
          sub._resyncing = false;
          const err = toHeraldError(e, "internal");
          if (err.code === "disconnected" || err.code === "closed") {
            return;
          }
          if (err.code === "unavailable" || err.code === "timeout" || err.code === "rate_limited" || err.code === "internal") {
            // Transient: try again on this connection after a backoff delay.
            this.#later(backoffDelay(2, this.#backoff, () => this.#clock.random()), () => {
              if (current()) {
                this.#sendSubscribe(sub);
              }
            });
            return;
          }
          this.#subs.delete(sub.channel);
          sub._ended(err.code, err);
        },
      );
    };
    const opts = sub._options;
    if (opts.getToken !== undefined) {
      Promise.resolve()
        .then(() => opts.getToken?.(sub.channel))
        .then(
          (t) => {
            if (current()) {
              send(typeof t === "string" ? t : opts.token);
            }
          },
          (e: unknown) => {
            if (current()) {
              this.emit("error", toHeraldError(e, "token"));
              send(opts.token);
            }
          },
        );
    } else {
      send(opts.token);
    }
  }

  #onReply(sock: Socket, f: ServerFrame): void {
    if (typeof f.id !== "number") {
      if (isObject(f.error)) {
        this.emit("error", new HeraldError(String(f.error.code) as ErrorCode, String(f.error.message ?? "request refused")));
      }
      return;
    }
    if (f.id === sock.pingId) {
      // A refused ping (rate_limited) still shows the socket is alive.
      sock.pingId = undefined;
      sock.pingSentAt = undefined;
      return;
    }
    const p = this.#inflight.get(f.id);
    if (p === undefined) {
      return;
    }
    this.#inflight.delete(f.id);
    if (p.timer !== undefined) {
      this.#clock.clearTimeout(p.timer);
    }
    if (isObject(f.error)) {
      const code = typeof f.error.code === "string" ? f.error.code : "internal";
      const message = typeof f.error.message === "string" ? f.error.message : code;
      p.reject(new HeraldError(code as ErrorCode, message, this.#details(p)));
    } else {
      p.resolve(isObject(f.result) ? f.result : {});
    }
  }

  // ---- requests ------------------------------------------------------------

  #details(p: Pending): { channel?: string; idempotencyKey?: string } {
    const d: { channel?: string; idempotencyKey?: string } = {};
    if (p.channel !== undefined) {
      d.channel = p.channel;
    }
    if (p.key !== undefined) {
      d.idempotencyKey = p.key;
    }
    return d;
  }

  /** A request as a promise. */
  #request(
    op: string,
    fields: Record<string, unknown>,
    o: { resend: boolean; channel?: string; key?: string },
  ): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.#call(op, fields, o, resolve, reject);
    });
  }

  /**
   * A request with callbacks run synchronously with the reply frame (the
   * subscribe reply must position the channel before the next frame).
   * Sent now when connected, queued otherwise.
   */
  #call(
    op: string,
    fields: Record<string, unknown>,
    o: { resend: boolean; channel?: string; key?: string },
    resolve: (result: Record<string, unknown>) => void,
    reject: (err: HeraldError) => void,
  ): void {
    if (this.#state === "closed") {
      reject(new HeraldError("closed", `the client is closed: ${op} not sent`, o.channel === undefined ? {} : { channel: o.channel }));
      return;
    }
    const p: Pending = { op, fields, resolve, reject, resend: o.resend };
    if (o.channel !== undefined) {
      p.channel = o.channel;
    }
    if (o.key !== undefined) {
      p.key = o.key;
    }
    if (this.#sock?.welcome !== undefined) {
      this.#transmit(p);
    } else {
      this.#queue.push(p);
    }
  }

  #transmit(p: Pending): void {
    const sock = this.#sock;
    if (sock === undefined) {
      this.#queue.push(p);
      return;
    }
    const id = this.#nextId++;
    let frame: string | Uint8Array;
    try {
      frame = this.#codec.encode({ op: p.op, id, ...p.fields });
    } catch (e) {
      p.reject(new HeraldError("bad_request", `cannot encode the ${p.op} request: ${String(e)}`, { ...this.#details(p), cause: e }));
      return;
    }
    if (!this.#codec.fits(frame, this.#maxFrameBytes)) {
      p.reject(new HeraldError("too_large", `the ${p.op} request is larger than ${this.#maxFrameBytes} bytes`, this.#details(p)));
      return;
    }
    this.#inflight.set(id, p);
    p.timer = this.#clock.setTimeout(() => {
      if (this.#inflight.get(id) === p) {
        this.#inflight.delete(id);
        p.reject(new HeraldError("timeout", `no ${p.op} reply within ${this.#requestTimeoutMs} ms`, this.#details(p)));
      }
    }, this.#requestTimeoutMs);
    try {
      sock.ws.send(frame);
    } catch {
      // The socket is closing: its close event re-sends or rejects this request.
    }
  }

  #later(ms: number, fn: () => void): void {
    const h = this.#clock.setTimeout(() => {
      this.#retryTimers.delete(h);
      fn();
    }, ms);
    this.#retryTimers.set(h, () => undefined);
  }

  /** Waits `ms`; rejects with `closed` if the client closes meanwhile. */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const h = this.#clock.setTimeout(() => {
        this.#retryTimers.delete(h);
        resolve();
      }, ms);
      this.#retryTimers.set(h, () => reject(new HeraldError("closed", "the client is closed")));
    });
  }

  /** On close: clears every retry timer; sleeping publishes fail with `closed`. */
  #clearRetryTimers(): void {
    for (const [h, onClose] of [...this.#retryTimers]) {
      this.#clock.clearTimeout(h);
      this.#retryTimers.delete(h);
      onClose();
    }
  }

  // ---- heartbeats ----------------------------------------------------------

  /**
   * Browsers cannot see WebSocket pings, so liveness is judged from frames:
   * after `pingIntervalMs` without one an app-level `ping` goes out; no
   * frame for `deadTimeoutMs` with that ping unanswered for
   * deadTimeoutMs - pingIntervalMs means the socket is dead: it is dropped
   * and the client reconnects with recovery. Requiring the unanswered ping
   * keeps a throttled timer (a background tab) from killing a live socket.
   */
  #startHeartbeat(sock: Socket, w: Welcome): void {
    const hbMs = w.heartbeat > 0 && Number.isFinite(w.heartbeat) ? w.heartbeat * 1000 : 25_000;
    const pingEvery = this.#pingIntervalMs ?? hbMs;
    const deadAfter = Math.max(this.#deadTimeoutMs ?? 2 * hbMs + Math.max(1000, hbMs / 2), pingEvery + 1);
    const period = Math.max(20, Math.min(pingEvery, deadAfter - pingEvery) / 2);
    const tick = (): void => {
      if (this.#sock !== sock) {
        return;
      }
      const now = this.#clock.now();
      const idle = now - sock.lastFrameAt;
      if (sock.pingSentAt !== undefined && idle >= deadAfter && now - sock.pingSentAt >= deadAfter - pingEvery) {
        this.#drop(sock, 4408, `no frame from the server for ${Math.round(idle)} ms (client heartbeat)`);
        return;
      }
      if (sock.pingSentAt === undefined && idle >= pingEvery) {
        const id = this.#nextId++;
        sock.pingId = id;
        sock.pingSentAt = now;
        try {
          sock.ws.send(this.#codec.encode({ op: "ping", id }));
        } catch {
          // Closing: the close event follows.
        }
      }
      sock.timer = this.#clock.setTimeout(tick, period);
    };
    sock.timer = this.#clock.setTimeout(tick, period);
  }

  // ---- tokens --------------------------------------------------------------

  async #fetchToken(): Promise<string> {
    const get = this.#getToken;
    if (get === undefined) {
      throw new HeraldError("token", "no getToken option");
    }
    let t: unknown;
    try {
      t = await get();
    } catch (e) {
      throw new HeraldError("token", `getToken failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (typeof t !== "string" || t === "") {
      throw new HeraldError("token", "getToken returned no token string");
    }
    return t;
  }

  #expiresSoon(token: string): boolean {
    const exp = tokenExpiryMs(token);
    return exp !== undefined && exp - this.#clock.now() < 1000;
  }

  #clearRefreshTimer(): void {
    if (this.#refreshTimer !== undefined) {
      this.#clock.clearTimeout(this.#refreshTimer);
      this.#refreshTimer = undefined;
    }
  }

  /** Arms the automatic refresh of the current token (getToken given, connected). */
  #scheduleRefresh(delayOverride?: number): void {
    this.#clearRefreshTimer();
    if (this.#getToken === undefined || !this.#autoRefresh || this.#token === undefined || this.#sock?.welcome === undefined) {
      return;
    }
    const exp = tokenExpiryMs(this.#token);
    if (exp === undefined) {
      return;
    }
    const delay = delayOverride ?? refreshDelayMs(exp, this.#clock.now(), this.#refreshLeadMs);
    const epoch = this.#epoch;
    this.#refreshTimer = this.#clock.setTimeout(() => {
      this.#refreshTimer = undefined;
      if (epoch === this.#epoch) {
        void this.#autoRefreshNow(exp);
      }
    }, delay);
  }

  async #autoRefreshNow(exp: number): Promise<void> {
    const epoch = this.#epoch;
    const retry = (): void => {
      const left = exp - this.#clock.now();
      // Until expiry, try again; after it the server closes with 4004 and
      // the reconnect asks getToken anyway.
      if (epoch === this.#epoch && left > 0) {
        this.#scheduleRefresh(Math.max(200, Math.min(5_000, left / 2)));
      }
    };
    let token: string;
    try {
      token = await this.#fetchToken();
    } catch (e) {
      if (epoch === this.#epoch) {
        this.emit("error", toHeraldError(e, "token"));
      }
      retry();
      return;
    }
    if (epoch !== this.#epoch) {
      return;
    }
    try {
      await this.#request("refresh", { token }, { resend: false });
    } catch (e) {
      const err = toHeraldError(e, "internal");
      if (err.code !== "disconnected" && err.code !== "closed") {
        this.emit("error", err);
        retry();
      }
      return;
    }
    if (epoch === this.#epoch) {
      this.#token = token;
      this.#scheduleRefresh();
    }
  }

  // ---- history -------------------------------------------------------------

  #historyPage(answer: HistoryAnswer, after: number): HistoryPage {
    const messages = Array.isArray(answer) ? answer : Array.isArray(answer?.messages) ? answer.messages : undefined;
    if (messages === undefined) {
      throw new HeraldError("protocol", "the history option returned neither an array nor { messages }");
    }
    const last = messages.length > 0 ? (messages[messages.length - 1]?.seq ?? after) : after;
    let lastSeq = last;
    if (!Array.isArray(answer)) {
      const given = answer.lastSeq ?? answer.last_seq;
      if (typeof given === "number") {
        lastSeq = given;
      }
    }
    return Object.assign([...messages], { lastSeq });
  }

  async #historyOverWs(channel: string, after: number, limit: number): Promise<HistoryPage> {
    if (this.#sock?.welcome === undefined) {
      throw new HeraldError(this.#state === "closed" ? "closed" : "disconnected", "history() over the WebSocket needs a connection", { channel });
    }
    const collected: Message[] = [];
    let target = Number.POSITIVE_INFINITY;
    let finish: (() => void) | undefined;
    let fail: ((e: HeraldError) => void) | undefined;
    let timer: TimerHandle | undefined;
    const done = new Promise<void>((resolve, reject) => {
      finish = resolve;
      fail = reject;
    });
    done.catch(() => undefined);
    const arm = (): void => {
      if (timer !== undefined) {
        this.#clock.clearTimeout(timer);
      }
      timer = this.#clock.setTimeout(() => fail?.(new HeraldError("timeout", "history replay stalled", { channel })), this.#requestTimeoutMs);
    };
    const check = (): void => {
      if (after + collected.length >= target) {
        finish?.();
      }
    };
    this.#collectors.set(channel, {
      push: (m) => {
        const next = after + collected.length + 1;
        if (m.seq === next && m.seq <= target) {
          collected.push(m);
          arm();
          check();
        }
      },
      abort: (e) => fail?.(e),
    });
    let subscribed = false;
    try {
      const r = subscribeResult(await this.#request("subscribe", { channel, since: after }, { resend: false, channel }), channel);
      subscribed = true;
      if (r.seq <= after) {
        return Object.assign([], { lastSeq: r.seq });
      }
      if (r.recovered === false) {
        throw new HeraldError(
          "unrecoverable",
          `${channel}: messages after ${after} are beyond herald's retained replay; ` +
            "ask from a later seq, or give the `history` option (the app's backend reading herald's history API)",
          { channel },
        );
      }
      target = Math.min(r.seq, after + limit);
      arm();
      check();
      await done;
      return Object.assign(collected.slice(0, limit), { lastSeq: r.seq });
    } finally {
      if (timer !== undefined) {
        this.#clock.clearTimeout(timer);
      }
      this.#collectors.delete(channel);
      if (subscribed && this.#sock?.welcome !== undefined) {
        // Sent now, so a subscribe waiting on the history lock goes out after it.
        this.#request("unsubscribe", { channel }, { resend: false, channel }).catch(() => undefined);
      }
    }
  }
}
