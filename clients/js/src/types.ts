/** Public data shapes of the SDK (frames of PROTOCOL.md sections 2 and 5). */

import type { Clock } from "./clock.js";
import type { Encoding } from "./codec.js";
import type { BackoffOptions } from "./policy.js";
import type { Message } from "./sequencer.js";

export type { Message } from "./sequencer.js";

/** The client's connection state; see docs/client.md for the diagram. */
export type State = "disconnected" | "connecting" | "connected" | "closed";

/** One automatic subscription in `welcome.subs`. */
export interface WelcomeSub {
  channel: string;
  /** The channel's last seq when the connection was made. */
  seq: number;
  /** Present when the channel was named in `recover=`. */
  recovered?: boolean;
  replayed?: number;
}

/** The `welcome` frame (PROTOCOL.md section 2), without `type`. */
export interface Welcome {
  /** This connection's id (`c_...`). */
  conn: string;
  /** The gateway node serving it. */
  node: string;
  /** Seconds between the server's pings (may be fractional). */
  heartbeat: number;
  /** Automatic subscriptions (token `channels` claim and route). */
  subs: WelcomeSub[];
}

/** Payload of the `disconnected` event. */
export interface DisconnectedEvent {
  /** The close code (PROTOCOL.md section 6), 1006 for a lost socket. */
  code: number;
  reason: string;
  /** Whether the client will reconnect by itself. */
  reconnect: boolean;
}

/** The `subscribe` reply's result (PROTOCOL.md section 5). */
export interface SubscribeResult {
  channel: string;
  /** The channel's last seq at subscribe time (0 when empty). */
  seq: number;
  /** With `since`: whether everything after it is replayed. */
  recovered?: boolean;
  /** With `since`: how many messages are replayed. */
  replayed?: number;
}

/** Payload of a subscription's `recovered` event. */
export interface RecoveredEvent {
  /**
   * false: messages were missed beyond the server's retained history; the
   * app must reload the channel's state from its own API. The stream goes
   * on after the server's current seq.
   */
  recovered: boolean;
  /** How many missed messages the server replays (0 when not recovered). */
  replayed: number;
}

/** The `publish` reply's result. */
export interface PublishResult {
  id: string;
  seq: number;
  ts: number;
}

/** A client as presence lists it. */
export interface PresenceClient {
  sub: string;
  conn: string;
  /** The token's whole `info` object, when it has one. */
  info?: Record<string, unknown>;
}

/** A `presence` event frame, without `type`. */
export interface PresenceEvent {
  channel: string;
  event: "join" | "leave";
  client: PresenceClient;
}

/** A `signal` frame, without `type`: ephemeral, no seq. */
export interface Signal {
  channel: string;
  from?: string;
  data: unknown;
}

/** Payload of a subscription's `unsubscribed` event. */
export interface UnsubscribedEvent {
  /**
   * `client` (the app called `unsubscribe()`), or the server's reason: an
   * error code such as `forbidden` (a `refresh` token no longer grants the
   * channel), or the code a subscribe failed with.
   */
  reason: string;
}

/** Options of `history()`. */
export interface HistoryOptions {
  /** Messages with seq > after. Default 0. */
  after?: number;
  /** At most this many, 1..1000. Default 100. */
  limit?: number;
}

/** What a `history` option may return: the messages, or the ingest API's answer shape. */
export type HistoryAnswer =
  | Message[]
  | { messages: Message[]; last_seq?: number; lastSeq?: number };

/** The result of `history()`: the messages in seq order, plus the channel's last seq when known. */
export interface HistoryPage extends Array<Message> {
  /** The channel's last seq as the source reported it (or the last message's seq). */
  lastSeq: number;
}

/**
 * The part of a WebSocket the SDK uses: the browser's `WebSocket`, Node's
 * global one (undici) and the `ws` package all fit.
 */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onopen: ((ev: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onmessage: ((ev: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onclose: ((ev: any) => void) | null;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  onerror: ((ev: any) => void) | null;
}

/** A WebSocket constructor (`globalThis.WebSocket` by default). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Options of `new Herald(url, options)`. */
export interface HeraldOptions {
  /** The connection token (a JWT). */
  token?: string;
  /**
   * Returns a fresh token: called on connect when there is no token (or it
   * is about to expire), after close 4004 (expired) or 4001 (refused), and
   * before `exp` for an automatic `refresh`.
   */
  getToken?: () => Promise<string> | string;
  /** Wire encoding. Default `json`. */
  encoding?: Encoding;
  /** Reconnect backoff (full jitter). Defaults: 500 ms, 20000 ms, factor 2. */
  reconnect?: Partial<BackoffOptions>;
  /** How long a request waits for its reply once sent. Default 10000. */
  requestTimeoutMs?: number;
  /** How long a connection attempt waits for `welcome`. Default 10000. */
  connectTimeoutMs?: number;
  /** The WebSocket implementation. Default `globalThis.WebSocket`. */
  websocket?: WebSocketConstructor;
  /**
   * Reads a channel's history from the app's own backend (which calls
   * herald's ingest API with its API key). Without it, `history()` replays
   * over the WebSocket (see docs/client.md).
   */
  history?: (channel: string, options: { after: number; limit: number }) => Promise<HistoryAnswer>;
  /** Refresh the token this long before its `exp` (at most 20% of its remaining life). Default 30000. */
  refreshLeadMs?: number;
  /** Refresh automatically before `exp` when `getToken` is set. Default true. */
  autoRefresh?: boolean;
  /** Send an app-level `ping` after this long without a frame. Default: the welcome's heartbeat. */
  pingIntervalMs?: number;
  /**
   * Declare the socket dead after this long without any frame (and an
   * unanswered ping). Default: 2 x heartbeat + max(1 s, heartbeat / 2).
   */
  deadTimeoutMs?: number;
  /** Refuse to send frames larger than this (the server closes with 1009 past its limit). Default 65536. */
  maxFrameBytes?: number;
  /** How many times a `publish` answered `unavailable` is retried (same key). Default 3. */
  publishRetries?: number;
  /** Time, timers and randomness (tests inject a fake one). */
  clock?: Clock;
}
