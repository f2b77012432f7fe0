/**
 * Real processes for the integration tests: `herald dev`, or a private
 * `redis-server` with `herald ingest`, two `herald gateway`s and a private
 * nginx in front of them (as crates/herald-testkit/src/nginx.rs does), on
 * free 127.0.0.1 ports in a fresh temporary directory, stopped by PID (and
 * the directory removed) afterwards. Between the SDK and the server sits a
 * small TCP proxy of our own ({@link TcpProxy}) that can sever, stall or
 * refuse connections. Nothing is mocked: the SDK talks to the herald binary.
 *
 * The binary comes from `HERALD_BIN` or `<repo>/target/debug/herald`; a
 * missing one (or a missing redis-server or nginx) fails the suite with a
 * message saying how to get it. Readiness is polled with a deadline, never
 * waited for with a fixed sleep.
 *
 * Adapted from clients/node/test/harness.ts.
 */

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

/** clients/js (this file runs from clients/js/dist-test). */
export const PKG_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** The repository root. */
export const REPO_DIR = resolve(PKG_DIR, "..", "..");

/** How long a process gets to become ready. Generous: 2 shared cores. */
const READY_DEADLINE_MS = 30_000;
/** How long a process gets to exit after SIGTERM before SIGKILL. */
const STOP_GRACE_MS = 5_000;

/** The herald binary; throws with instructions when missing. */
export function heraldBin(): string {
  const bin = process.env.HERALD_BIN ?? join(REPO_DIR, "target", "debug", "herald");
  if (!existsSync(bin)) {
    throw new Error(
      `herald binary not found at ${bin}: build it with ` +
        "`cargo build -p herald --bin herald` in the repository, or set HERALD_BIN",
    );
  }
  return bin;
}

/** An error `eventually` does not retry: the thing waited for died. */
export class Fatal extends Error {}

/**
 * Waits until `check` returns a value other than undefined; throws at the
 * deadline, or at once when `check` throws {@link Fatal}.
 */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  deadlineMs = 10_000,
): Promise<T> {
  const end = Date.now() + deadlineMs;
  let delay = 10;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) {
        return v;
      }
    } catch (e) {
      if (e instanceof Fatal) {
        throw e;
      }
      last = e;
    }
    if (Date.now() > end) {
      throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    }
    await sleep(delay);
    delay = Math.min(delay * 2, 200);
  }
}

/** A free TCP port on 127.0.0.1 (free when asked; see startWithRetry). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((ok, fail) => {
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", ok);
  });
  const addr = srv.address();
  await new Promise<void>((ok) => srv.close(() => ok()));
  if (addr === null || typeof addr === "string") {
    throw new Error("no port");
  }
  return addr.port;
}

const running = new Set<ChildProcess>();
// A test run that dies halfway must not leave servers behind.
process.on("exit", () => {
  for (const c of running) {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
      try {
        process.kill(c.pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
});

/**
 * A `sh` that SIGKILLs `child` when this test process dies in a way that
 * runs no handler (SIGKILL, a runner timeout): it blocks reading a pipe from
 * us, which the kernel closes when we die; then it removes the process's
 * temporary directory. Killed itself once `child` has exited, so it never
 * signals a reused PID.
 */
function guard(child: ChildProcess, dir: string): ChildProcess | undefined {
  if (child.pid === undefined) {
    return undefined;
  }
  const script = 'read _ignored; kill -KILL "$1" 2>/dev/null; sleep 0.2; rm -rf "$2"';
  const g = spawn("sh", ["-c", script, "herald-js-guardian", String(child.pid), dir], {
    stdio: ["pipe", "ignore", "ignore"],
  });
  g.on("error", () => undefined);
  // Neither the guardian nor its pipe may keep the test process alive.
  g.unref();
  (g.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  return g;
}

/** A child process with its output kept for error messages. */
export class Proc {
  readonly name: string;
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  #log = "";

  constructor(name: string, cmd: string, args: string[], cwd: string) {
    this.name = name;
    // The flags say everything; a HERALD_* variable of the caller's
    // environment must not change the servers under test.
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (!k.startsWith("HERALD_")) {
        env[k] = v;
      }
    }
    this.child = spawn(cmd, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    running.add(this.child);
    const guardian = guard(this.child, cwd);
    const keep = (b: Buffer): void => {
      this.#log = (this.#log + b.toString("utf8")).slice(-8_000);
    };
    this.child.stdout?.on("data", keep);
    this.child.stderr?.on("data", keep);
    this.exited = new Promise((ok) => {
      this.child.once("exit", () => {
        running.delete(this.child);
        guardian?.kill("SIGKILL");
        ok();
      });
      this.child.once("error", (e) => {
        this.#log += `\nspawn failed: ${e.message}`;
        running.delete(this.child);
        ok();
      });
    });
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && running.has(this.child);
  }

  get log(): string {
    return this.#log;
  }

  /** Sends `sig` to the process by its PID. */
  signal(sig: NodeJS.Signals): void {
    if (this.child.pid !== undefined && this.alive) {
      process.kill(this.child.pid, sig);
    }
  }

  /** SIGTERM, then SIGKILL if it has not exited within the grace period. */
  async stop(): Promise<void> {
    if (!this.alive) {
      return;
    }
    this.signal("SIGTERM");
    const t = setTimeout(() => this.signal("SIGKILL"), STOP_GRACE_MS);
    await this.exited;
    clearTimeout(t);
  }

  /** SIGKILL, for fault tests. */
  async kill(): Promise<void> {
    this.signal("SIGKILL");
    await this.exited;
  }
}

/** Polls `url` until it answers 200; fails early if `proc` exits. */
async function waitHttp(proc: Proc, url: string): Promise<void> {
  await eventually(
    `${proc.name} at ${url}`,
    async () => {
      if (!proc.alive) {
        throw new Fatal(`${proc.name} exited:\n${proc.log}`);
      }
      const r = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await r.arrayBuffer();
      return r.status === 200 ? true : undefined;
    },
    READY_DEADLINE_MS,
  ).catch((e: unknown) => {
    throw e instanceof Fatal ? e : new Error(`${String(e)}\n--- ${proc.name} log ---\n${proc.log}`);
  });
}

/**
 * Starts a process on ports picked by `freePort`; another program may take
 * such a port between the pick and the bind, so a start whose process exits
 * complaining it cannot listen is tried again with new ports.
 */
async function startWithRetry<T>(start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (e) {
      const msg = String(e);
      if (attempt >= 3 || !/cannot listen|address already in use|Address in use/i.test(msg)) {
        throw e;
      }
    }
  }
}

/** A temporary directory, removed by the returned function. */
export function tempDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "herald-js-sdk-"));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}


export const JWT_SECRET = "js-sdk-test-secret";
export const API_KEY = "js-sdk-test-key";

// ---- tokens ----------------------------------------------------------------

/** Claims of a test connection token. */
export interface TokenClaims {
  sub: string;
  /** Automatic subscriptions. */
  channels?: string[];
  /** Lifetime in seconds (default 3600). */
  ttl?: number;
  info?: Record<string, unknown>;
  /** Grant patterns; default `*` for every op. */
  allow?: Record<string, string[]>;
}

/** An HS256 JWT signed with `secret` (herald's `--jwt-secret`). */
export function signJwt(claims: Record<string, unknown>, secret = JWT_SECRET): string {
  const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** A connection token, valid from now for `ttl` seconds. */
export function mintToken(c: TokenClaims, secret = JWT_SECRET): string {
  const iat = Math.floor(Date.now() / 1000);
  const star = ["*"];
  return signJwt(
    {
      sub: c.sub,
      iat,
      exp: iat + (c.ttl ?? 3600),
      ...(c.channels ? { channels: c.channels } : {}),
      allow: c.allow ?? { subscribe: star, publish: star, signal: star, presence: star },
      ...(c.info ? { info: c.info } : {}),
    },
    secret,
  );
}

// ---- the backend: herald's ingest API --------------------------------------

/** What `POST /v1/publish` answered. */
export interface ApiPublished {
  id: string;
  ts: number;
  seqs: Record<string, number>;
}

/** Publishes through the ingest API as the app's backend does. */
export async function apiPublish(apiUrl: string, channel: string, data: unknown, key?: string): Promise<ApiPublished> {
  const r = await fetch(`${apiUrl}/v1/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ channel, data, ...(key ? { key } : {}), from: "backend" }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = (await r.json()) as unknown;
  if (r.status !== 200) {
    throw new Error(`publish answered ${r.status}: ${JSON.stringify(body)}`);
  }
  return body as ApiPublished;
}

/** A stored message as the history API returns it. */
export interface ApiMessage {
  channel: string;
  seq: number;
  id: string;
  ts: number;
  from?: string;
  data: unknown;
}

/** Every stored message of a channel (first 1000). */
export async function apiHistory(apiUrl: string, channel: string): Promise<ApiMessage[]> {
  const r = await fetch(`${apiUrl}/v1/channels/${encodeURIComponent(channel)}/messages?after=0&limit=1000`, {
    headers: { authorization: `Bearer ${API_KEY}` },
    signal: AbortSignal.timeout(10_000),
  });
  const body = (await r.json()) as { messages: ApiMessage[] };
  if (r.status !== 200) {
    throw new Error(`history answered ${r.status}: ${JSON.stringify(body)}`);
  }
  return body.messages;
}

// ---- a TCP proxy the tests control -----------------------------------------

interface Pair {
  client: Socket;
  upstream: Socket;
  /** Drop everything in both directions (a dead network path, no FIN). */
  stalled: boolean;
  /** Drop only server -> client (the client's requests still arrive). */
  muted: boolean;
}

/**
 * A TCP forwarder on a free 127.0.0.1 port in front of `target`: the SDK
 * connects here, so a test can sever every connection (the client sees a
 * close without a close frame, 1006), stall them (bytes vanish, no FIN:
 * only the SDK's heartbeat can tell), mute the server's side, or refuse new
 * connections (the server looks down). A connection it cannot forward is
 * answered 503, as nginx would (Node 20's WebSocket reports nothing at all
 * for a connection closed before any answer, so the SDK could only wait
 * for its handshake deadline).
 */
export class TcpProxy {
  readonly port: number;
  /** Where new connections go; tests may move it (a restarted server). */
  target: number;
  /** Connections accepted so far. */
  accepted = 0;
  /** Refuse new connections (accept and close at once). */
  refusing = false;
  readonly #server: Server;
  readonly #pairs = new Set<Pair>();
  /** Every client socket, so close() never waits for one. */
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server, port: number, target: number) {
    this.#server = server;
    this.port = port;
    this.target = target;
    server.on("connection", (c) => this.#accept(c));
  }

  static async start(target: number): Promise<TcpProxy> {
    const server = createServer();
    await new Promise<void>((ok, fail) => {
      server.once("error", fail);
      server.listen(0, "127.0.0.1", ok);
    });
    const addr = server.address();
    if (addr === null || typeof addr === "string") {
      throw new Error("proxy has no port");
    }
    return new TcpProxy(server, addr.port, target);
  }

  /** `ws://127.0.0.1:PORT/ws`. */
  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Open connections. */
  get open(): number {
    return this.#pairs.size;
  }

  #accept(c: Socket): void {
    this.accepted += 1;
    this.#sockets.add(c);
    c.on("close", () => this.#sockets.delete(c));
    c.on("error", () => undefined);
    if (this.refusing) {
      TcpProxy.#unavailable(c);
      return;
    }
    const upstream = createConnection({ host: "127.0.0.1", port: this.target });
    const pair: Pair = { client: c, upstream, stalled: false, muted: false };
    this.#pairs.add(pair);
    let reached = false;
    upstream.once("connect", () => {
      reached = true;
    });
    const end = (): void => {
      this.#pairs.delete(pair);
      upstream.destroy();
      if (reached) {
        c.destroy();
      } else {
        // Server down: answer as a load balancer would.
        TcpProxy.#unavailable(c);
      }
    };
    c.on("data", (b) => {
      if (!pair.stalled) {
        upstream.write(b);
      }
    });
    upstream.on("data", (b) => {
      if (!pair.stalled && !pair.muted) {
        c.write(b);
      }
    });
    for (const s of [c, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
  }

  /** Answers 503 to the upgrade request and closes (a server that is down behind a balancer). */
  static #unavailable(c: Socket): void {
    c.end("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  }

  /** Destroys every open connection (both sides see the TCP connection end). */
  sever(): void {
    for (const p of [...this.#pairs]) {
      this.#pairs.delete(p);
      p.client.destroy();
      p.upstream.destroy();
    }
  }

  /** Open connections stop carrying bytes either way, without closing. */
  stall(): void {
    for (const p of this.#pairs) {
      p.stalled = true;
    }
  }

  /** Open connections stop carrying the server's bytes to the client. */
  mute(): void {
    for (const p of this.#pairs) {
      p.muted = true;
    }
  }

  async close(): Promise<void> {
    this.sever();
    for (const c of this.#sockets) {
      c.destroy();
    }
    await new Promise<void>((ok) => this.#server.close(() => ok()));
  }
}

// ---- herald dev --------------------------------------------------------------

/** `herald dev` on a SQLite file, restartable on a new port with the same data. */
export class DevServer {
  readonly #tmp: { dir: string; remove: () => void };
  readonly #args: string[];
  #proc: Proc;
  #port: number;

  private constructor(tmp: { dir: string; remove: () => void }, args: string[], proc: Proc, port: number) {
    this.#tmp = tmp;
    this.#args = args;
    this.#proc = proc;
    this.#port = port;
  }

  /**
   * Starts `herald dev` with `extra` flags (e.g. `--heartbeat-interval`).
   * The demo's stand-in bot is off when the binary knows `--no-bot`.
   */
  static async start(extra: string[] = []): Promise<DevServer> {
    const tmp = tempDir();
    const args = [
      "--database-url", `sqlite://${join(tmp.dir, "h.db")}`,
      "--jwt-secret", JWT_SECRET,
      "--api-key", API_KEY,
      // A short drain window keeps SIGTERM tests and teardown quick.
      "--drain-window", "1",
      ...(devKnowsNoBot() ? ["--no-bot"] : []),
      ...extra,
    ];
    try {
      const { proc, port } = await DevServer.#launch(tmp.dir, args);
      return new DevServer(tmp, args, proc, port);
    } catch (e) {
      tmp.remove();
      throw e;
    }
  }

  static async #launch(dir: string, args: string[]): Promise<{ proc: Proc; port: number }> {
    const bin = heraldBin();
    return startWithRetry(async () => {
      const port = await freePort();
      const proc = new Proc("herald dev", bin, ["dev", "--listen", `127.0.0.1:${port}`, ...args], dir);
      try {
        await waitHttp(proc, `http://127.0.0.1:${port}/healthz`);
      } catch (e) {
        await proc.stop();
        throw e;
      }
      return { proc, port };
    });
  }

  get port(): number {
    return this.#port;
  }

  get apiUrl(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  get proc(): Proc {
    return this.#proc;
  }

  /** SIGTERM (drain: clients get 1012) and wait for the exit. */
  async terminate(): Promise<void> {
    await this.#proc.stop();
  }

  /** Starts again on a new port with the same database. */
  async restart(): Promise<void> {
    await this.#proc.stop();
    const { proc, port } = await DevServer.#launch(this.#tmp.dir, this.#args);
    this.#proc = proc;
    this.#port = port;
  }

  async stop(): Promise<void> {
    await this.#proc.stop();
    this.#tmp.remove();
  }
}

let noBot: boolean | undefined;
/** Whether this herald binary has `herald dev --no-bot`. */
function devKnowsNoBot(): boolean {
  if (noBot === undefined) {
    const r = spawnSync(heraldBin(), ["dev", "--help"], { encoding: "utf8" });
    noBot = (r.stdout ?? "").includes("--no-bot");
  }
  return noBot;
}

// ---- redis, ingest, two gateways and nginx -----------------------------------

/** Whether a Redis at `port` answers PING. */
async function redisPing(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = createConnection({ host: "127.0.0.1", port });
    let got = "";
    const done = (v: boolean): void => {
      s.destroy();
      ok(v);
    };
    s.setTimeout(1_000, () => done(false));
    s.on("error", () => done(false));
    s.on("connect", () => s.write("PING\r\n"));
    s.on("data", (b) => {
      got += b.toString();
      if (got.includes("\r\n")) {
        done(got.startsWith("+PONG"));
      }
    });
  });
}

/** Whether something accepts TCP connections on `port`. */
async function accepts(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = createConnection({ host: "127.0.0.1", port });
    s.setTimeout(1_000, () => {
      s.destroy();
      ok(false);
    });
    s.on("error", () => ok(false));
    s.on("connect", () => {
      s.destroy();
      ok(true);
    });
  });
}

function nginxBin(): string {
  for (const p of [process.env.NGINX_BIN, "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]) {
    if (p !== undefined && existsSync(p)) {
      return p;
    }
  }
  throw new Error("nginx not found: install the Debian package `nginx` (apt-get install -y nginx) or set NGINX_BIN");
}

/** One gateway of the cluster, restartable on its port (nginx's config names it). */
export interface Gateway {
  /** `--node-id`, as `welcome.node` shows it. */
  node: string;
  port: number;
  proc: Proc;
}

/**
 * A private `redis-server`, one `herald ingest` on a SQLite file, two
 * `herald gateway`s (`gw-1`, `gw-2`) and a private nginx balancing over
 * them round robin (WebSocket upgrade passed through; a gateway that
 * refuses or answers 503 while draining is skipped for the next).
 */
export class Cluster {
  readonly apiUrl: string;
  readonly gateways: Gateway[];
  readonly nginxPort: number;
  readonly #tmp: { dir: string; remove: () => void };
  readonly #others: Proc[];
  readonly #gatewayArgs: (node: string, port: number, admin: number) => string[];

  private constructor(
    tmp: { dir: string; remove: () => void },
    apiUrl: string,
    gateways: Gateway[],
    nginxPort: number,
    others: Proc[],
    gatewayArgs: (node: string, port: number, admin: number) => string[],
  ) {
    this.#tmp = tmp;
    this.apiUrl = apiUrl;
    this.gateways = gateways;
    this.nginxPort = nginxPort;
    this.#others = others;
    this.#gatewayArgs = gatewayArgs;
  }

  /** `ws://` of nginx. */
  get wsUrl(): string {
    return `ws://127.0.0.1:${this.nginxPort}/ws`;
  }

  gateway(node: string): Gateway {
    const g = this.gateways.find((x) => x.node === node);
    if (g === undefined) {
      throw new Error(`no gateway ${node}`);
    }
    return g;
  }

  static async start(extraGatewayArgs: string[] = []): Promise<Cluster> {
    const bin = heraldBin();
    const nginx = nginxBin();
    const tmp = tempDir();
    const procs: Proc[] = [];
    const stopAll = async (): Promise<void> => {
      for (const p of procs.reverse()) {
        await p.stop();
      }
      tmp.remove();
    };
    try {
      const redisBin = process.env.REDIS_SERVER ?? "redis-server";
      const redisPort = await startWithRetry(async () => {
        const port = await freePort();
        const redis = new Proc(
          "redis-server",
          redisBin,
          ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp.dir],
          tmp.dir,
        );
        procs.push(redis);
        try {
          await eventually(
            `redis-server on ${port}`,
            async () => {
              if (!redis.alive) {
                throw new Fatal(`redis-server exited (is Debian's redis-server package installed?):\n${redis.log}`);
              }
              return (await redisPing(port)) ? true : undefined;
            },
            READY_DEADLINE_MS,
          );
        } catch (e) {
          await redis.stop();
          procs.pop();
          throw e instanceof Fatal ? e : new Error(`${String(e)}\n--- redis-server log ---\n${redis.log}`);
        }
        return port;
      });
      const redisUrl = `redis://127.0.0.1:${redisPort}`;

      const ingestUrl = await startWithRetry(async () => {
        const [port, admin] = [await freePort(), await freePort()];
        const p = new Proc(
          "herald ingest",
          bin,
          [
            "ingest",
            "--listen", `127.0.0.1:${port}`,
            "--admin-listen", `127.0.0.1:${admin}`,
            "--redis-url", redisUrl,
            "--database-url", `sqlite://${join(tmp.dir, "h.db")}`,
            "--api-key", API_KEY,
            "--node-id", "ingest-1",
          ],
          tmp.dir,
        );
        procs.push(p);
        try {
          await waitHttp(p, `http://127.0.0.1:${admin}/healthz`);
        } catch (e) {
          await p.stop();
          procs.pop();
          throw e;
        }
        return `http://127.0.0.1:${port}`;
      });

      const gatewayArgs = (node: string, port: number, admin: number): string[] => [
        "gateway",
        "--listen", `127.0.0.1:${port}`,
        "--admin-listen", `127.0.0.1:${admin}`,
        "--redis-url", redisUrl,
        "--ingest-url", ingestUrl,
        "--jwt-secret", JWT_SECRET,
        "--api-key", API_KEY,
        "--node-id", node,
        "--drain-window", "1",
        ...extraGatewayArgs,
      ];
      const gateways: Gateway[] = [];
      for (const node of ["gw-1", "gw-2"]) {
        const g = await startWithRetry(async () => {
          const port = await freePort();
          const proc = await Cluster.#launchGateway(bin, tmp.dir, node, port, gatewayArgs);
          return { node, port, proc };
        });
        procs.push(g.proc);
        gateways.push(g);
      }

      const nginxPort = await startWithRetry(async () => {
        const port = await freePort();
        const d = tmp.dir;
        const servers = gateways.map((g) => `        server 127.0.0.1:${g.port} max_fails=0;\n`).join("");
        const conf =
          `master_process off;\ndaemon off;\nworker_processes 1;\npid ${d}/nginx.pid;\nerror_log ${d}/nginx-error.log info;\n` +
          "events { worker_connections 1024; }\n" +
          `http {\n    access_log off;\n    client_body_temp_path ${d}/body;\n    proxy_temp_path ${d}/proxy;\n` +
          `    fastcgi_temp_path ${d}/fcgi;\n    uwsgi_temp_path ${d}/uwsgi;\n    scgi_temp_path ${d}/scgi;\n` +
          "    map $http_upgrade $connection_upgrade { default upgrade; '' close; }\n" +
          `    upstream gateways {\n${servers}    }\n` +
          `    server {\n        listen 127.0.0.1:${port};\n        location / {\n` +
          "            proxy_pass http://gateways;\n            proxy_http_version 1.1;\n" +
          "            proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection $connection_upgrade;\n" +
          "            proxy_read_timeout 3600s;\n            proxy_next_upstream error timeout http_503;\n" +
          "        }\n    }\n}\n";
        const confPath = join(d, "nginx.conf");
        writeFileSync(confPath, conf);
        const p = new Proc("nginx", nginx, ["-p", d, "-e", join(d, "nginx-error.log"), "-c", confPath], d);
        procs.push(p);
        try {
          await eventually(
            `nginx on ${port}`,
            async () => {
              if (!p.alive) {
                throw new Fatal(`nginx exited:\n${p.log}`);
              }
              return (await accepts(port)) ? true : undefined;
            },
            READY_DEADLINE_MS,
          );
        } catch (e) {
          await p.stop();
          procs.pop();
          throw e instanceof Fatal ? new Error(`cannot listen: ${e.message}`) : e;
        }
        return port;
      });

      const others = procs.filter((p) => !gateways.some((g) => g.proc === p));
      return new Cluster(tmp, ingestUrl, gateways, nginxPort, others, gatewayArgs);
    } catch (e) {
      await stopAll();
      throw e;
    }
  }

  static async #launchGateway(
    bin: string,
    dir: string,
    node: string,
    port: number,
    gatewayArgs: (node: string, port: number, admin: number) => string[],
  ): Promise<Proc> {
    const admin = await freePort();
    const p = new Proc(`herald gateway ${node}`, bin, gatewayArgs(node, port, admin), dir);
    try {
      await waitHttp(p, `http://127.0.0.1:${admin}/healthz`);
    } catch (e) {
      await p.stop();
      throw e;
    }
    return p;
  }

  /** Starts a gateway that was killed or drained again, on its old port. */
  async restart(node: string): Promise<void> {
    const g = this.gateway(node);
    if (g.proc.alive) {
      await g.proc.stop();
    }
    g.proc = await Cluster.#launchGateway(heraldBin(), this.#tmp.dir, node, g.port, this.#gatewayArgs);
  }

  async stop(): Promise<void> {
    for (const g of this.gateways) {
      await g.proc.stop();
    }
    for (const p of [...this.#others].reverse()) {
      await p.stop();
    }
    this.#tmp.remove();
  }
}

/** A channel name no other test uses (never `chat_`: the dev demo's backend watches those). */
export function uniq(prefix: string): string {
  return `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

/** The `exp` claim (seconds) of a token minted here. */
export function tokenExp(token: string): number {
  const part = token.split(".")[1] ?? "";
  return (JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as { exp: number }).exp;
}
