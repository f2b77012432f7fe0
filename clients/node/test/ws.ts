/**
 * A test-side WebSocket client on Node's global `WebSocket` (undici; behind
 * `--experimental-websocket` on Node 20, which clients/testing/run-tests.mjs passes).
 * Frames are read as plain JSON values, not through any SDK type, so a
 * shape mistake in the SDK cannot hide itself. Every wait has a deadline.
 */

/** A server frame, as parsed JSON. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Frame = Record<string, any>;

interface WsEventMap {
  open: unknown;
  message: { data: unknown };
  close: { code: number; reason: string };
  error: unknown;
}

interface WsLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener<K extends keyof WsEventMap>(type: K, listener: (ev: WsEventMap[K]) => void): void;
}

type WsCtor = new (url: string, protocols?: string | string[]) => WsLike;

function ctor(): WsCtor {
  const c = (globalThis as { WebSocket?: WsCtor }).WebSocket;
  if (c === undefined) {
    throw new Error("no global WebSocket: run the tests with `node --experimental-websocket` (clients/testing/run-tests.mjs does)");
  }
  return c;
}

export class WsClient {
  readonly #ws: WsLike;
  readonly #frames: Frame[] = [];
  #waiters: Array<() => void> = [];
  #nextId = 1;
  /** Resolves with the close code and reason once the socket is closed. */
  readonly closed: Promise<{ code: number; reason: string }>;

  private constructor(ws: WsLike) {
    this.#ws = ws;
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data === "string") {
        this.#frames.push(JSON.parse(ev.data) as Frame);
        this.#wake();
      }
    });
    this.closed = new Promise((ok) => {
      ws.addEventListener("close", (ev) => {
        ok({ code: ev.code, reason: ev.reason });
        this.#wake();
      });
    });
  }

  /** Opens `url?token=...` and waits for the socket to open. */
  static async open(wsUrl: string, token: string, timeoutMs = 10_000): Promise<WsClient> {
    const ws = new (ctor())(`${wsUrl}?token=${encodeURIComponent(token)}`);
    const c = new WsClient(ws);
    await new Promise<void>((ok, fail) => {
      const t = setTimeout(() => fail(new Error(`no WebSocket open within ${timeoutMs} ms`)), timeoutMs);
      ws.addEventListener("open", () => {
        clearTimeout(t);
        ok();
      });
      ws.addEventListener("error", () => {
        clearTimeout(t);
        fail(new Error(`WebSocket to ${wsUrl} failed`));
      });
    });
    return c;
  }

  /** Opens and waits for `welcome`. */
  static async connect(wsUrl: string, token: string): Promise<{ ws: WsClient; welcome: Frame }> {
    const ws = await WsClient.open(wsUrl, token);
    const welcome = await ws.next((f) => f.type === "welcome");
    return { ws, welcome };
  }

  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) {
      f();
    }
  }

  /** Takes the first frame (received or to come) that `pred` accepts. */
  async next(pred: (f: Frame) => boolean, timeoutMs = 10_000): Promise<Frame> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#frames.findIndex(pred);
      if (i >= 0) {
        return this.#frames.splice(i, 1)[0] as Frame;
      }
      const left = end - Date.now();
      if (left <= 0 || this.#ws.readyState === 3) {
        throw new Error(
          `no matching frame within ${timeoutMs} ms${this.#ws.readyState === 3 ? " (socket closed)" : ""}; ` +
            `unmatched: ${JSON.stringify(this.#frames)}`,
        );
      }
      await new Promise<void>((ok) => {
        const t = setTimeout(ok, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          ok();
        });
      });
    }
  }

  /** Sends a request and waits for its reply. */
  async request(op: string, fields: Frame = {}): Promise<Frame> {
    const id = this.#nextId++;
    this.#ws.send(JSON.stringify({ op, id, ...fields }));
    return this.next((f) => f.type === "reply" && f.id === id);
  }

  /** Closes with 1000 and waits for the close. */
  async close(): Promise<void> {
    if (this.#ws.readyState !== 3) {
      this.#ws.close(1000);
    }
    let t: NodeJS.Timeout | undefined;
    await Promise.race([this.closed, new Promise((ok) => (t = setTimeout(ok, 5_000)))]);
    clearTimeout(t);
  }
}
