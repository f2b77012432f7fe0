/**
 * Test doubles for the unit tests: a fake clock (timers run only when the
 * test advances time) and a fake WebSocket the test plays the server on.
 * Frames the client sends are decoded (JSON or MessagePack) into `sent`.
 */

import { decode, encode } from "@msgpack/msgpack";

import type { Clock, WebSocketLike } from "@herald/client";

interface Timer {
  id: number;
  due: number;
  fn: () => void;
}

export class FakeClock implements Clock {
  #now: number;
  #timers: Timer[] = [];
  #nextId = 1;
  /** What random() returns (jitter); tests set it. */
  rand = 0.5;

  constructor(start = 1_700_000_000_000) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  random(): number {
    return this.rand;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const t = { id: this.#nextId++, due: this.#now + Math.max(0, ms), fn };
    this.#timers.push(t);
    return t.id;
  }

  clearTimeout(h: unknown): void {
    this.#timers = this.#timers.filter((t) => t.id !== h);
  }

  /** Timers not yet run. */
  get pending(): number {
    return this.#timers.length;
  }

  /** Delays (from now) of the pending timers, ascending. */
  delays(): number[] {
    return this.#timers.map((t) => t.due - this.#now).sort((a, b) => a - b);
  }

  /** Moves time forward by `ms` at once (a throttled timer), then runs what is due. */
  jump(ms: number): void {
    this.#now += ms;
    this.advance(0);
  }

  /** Moves time forward by `ms`, running every timer that falls due, in order. */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      const next = this.#timers.filter((t) => t.due <= end).sort((a, b) => a.due - b.due || a.id - b.id)[0];
      if (next === undefined) {
        break;
      }
      this.#timers = this.#timers.filter((t) => t !== next);
      this.#now = Math.max(this.#now, next.due);
      next.fn();
    }
    this.#now = end;
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = Record<string, any>;

export class FakeSocket implements WebSocketLike {
  static all: FakeSocket[] = [];
  /** Answer app-level pings at once (tests of heartbeats turn it off). */
  static autoPong = true;
  static reset(): void {
    FakeSocket.all = [];
    FakeSocket.autoPong = true;
  }
  static get last(): FakeSocket {
    const s = FakeSocket.all[FakeSocket.all.length - 1];
    if (s === undefined) {
      throw new Error("no socket was opened");
    }
    return s;
  }

  readonly url: string;
  readonly protocols: string[];
  readyState = 0;
  binaryType = "blob";
  /** Frames the client sent, decoded. */
  readonly sent: Json[] = [];
  /** The close the client asked for, if any. */
  closedByClient: { code?: number; reason?: string } | undefined;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;

  constructor(url: string, protocols?: string | string[]) {
    this.url = url;
    this.protocols = protocols === undefined ? [] : Array.isArray(protocols) ? protocols : [protocols];
    FakeSocket.all.push(this);
  }

  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  get msgpack(): boolean {
    return this.protocols.includes("herald.msgpack");
  }

  send(data: string | Uint8Array): void {
    if (this.readyState !== 1) {
      throw new Error("send on a socket that is not open");
    }
    const f = (typeof data === "string" ? JSON.parse(data) : decode(data)) as Json;
    this.sent.push(f);
    if (f.op === "ping" && FakeSocket.autoPong) {
      this.receive({ type: "pong", id: f.id });
    }
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // ---- the test plays the server ----

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame: Json): void {
    const data = this.msgpack ? encode(frame).slice().buffer : JSON.stringify(frame);
    this.onmessage?.({ data });
  }

  welcome(subs: Json[] = [], heartbeat = 25): void {
    this.open();
    this.receive({ type: "welcome", conn: `c_${FakeSocket.all.length}`, node: "gw-1", heartbeat, subs });
  }

  /** The server closes (with a disconnect frame first when `frame`). */
  serverClose(code: number, reason = "", frame?: { reconnect: boolean }): void {
    if (frame !== undefined) {
      this.receive({ type: "disconnect", code, reason, reconnect: frame.reconnect });
    }
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The network drops the connection (no close frame). */
  drop(): void {
    this.serverClose(1006, "");
  }

  /** Requests sent with `op`. */
  ops(op: string): Json[] {
    return this.sent.filter((f) => f.op === op);
  }

  /** The last request sent with `op`; throws when none. */
  lastOp(op: string): Json {
    const all = this.ops(op);
    const f = all[all.length - 1];
    if (f === undefined) {
      throw new Error(`no ${op} sent; sent: ${JSON.stringify(this.sent)}`);
    }
    return f;
  }

  reply(req: Json, result: Json = {}): void {
    this.receive({ type: "reply", id: req.id, result });
  }

  replyError(req: Json, code: string, message = code): void {
    this.receive({ type: "reply", id: req.id, error: { code, message } });
  }

  message(channel: string, seq: number, data: unknown = { n: seq }): void {
    this.receive({ type: "message", channel, seq, id: `m_${channel}_${seq}`, ts: 1_700_000_000_000 + seq, data });
  }
}

/** Lets promise callbacks (getToken, replies) run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await new Promise<void>((r) => setImmediate(r));
  }
}

/** An unsigned-looking JWT with the given claims (the SDK never verifies). */
export function jwt(claims: Json): string {
  const b64 = (o: Json): string => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.c2ln`;
}
