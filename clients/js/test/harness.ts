/**
 * Real processes for the integration tests: `herald dev`, or a private
 * `redis-server` with `herald ingest`, two `herald gateway`s and a private
 * nginx in front of them (as crates/herald-testkit/src/nginx.rs does),
 * started by the shared test support (clients/testing/harness.mts: free
 * 127.0.0.1 ports, a fresh temporary directory, stopped by PID afterwards,
 * readiness polled with a deadline). Between the SDK and the server sits a
 * small TCP proxy of our own ({@link TcpProxy}) that can sever, stall or
 * refuse connections. Nothing is mocked: the SDK talks to the herald binary.
 *
 * This file holds what is @herald/client's own: its credentials and tokens,
 * the backend's ingest calls, the proxy, nginx, and the restartable
 * {@link DevServer} and {@link Cluster} handles. A missing herald binary,
 * redis-server or nginx fails the suite with a message saying how to get it.
 */

import { spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";

import {
  Fatal,
  Proc,
  ProcGroup,
  READY_DEADLINE_MS,
  eventually,
  freePort,
  heraldBin,
  launchDev,
  launchGateway,
  startRedisAndIngest,
  startWithRetry,
  tempDir,
  type GatewayConfig,
} from "../../testing/harness.mjs";

export { eventually, uniq } from "../../testing/harness.mjs";

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
      const { proc, port } = await launchDev(tmp.dir, args);
      return new DevServer(tmp, args, proc, port);
    } catch (e) {
      tmp.remove();
      throw e;
    }
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
    const { proc, port } = await launchDev(this.#tmp.dir, this.#args);
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
  /** Redis, ingest and nginx (not the gateways, which restart) and the directory. */
  readonly #group: ProcGroup;
  readonly #gatewayConfig: GatewayConfig;

  private constructor(
    group: ProcGroup,
    apiUrl: string,
    gateways: Gateway[],
    nginxPort: number,
    gatewayConfig: GatewayConfig,
  ) {
    this.#group = group;
    this.apiUrl = apiUrl;
    this.gateways = gateways;
    this.nginxPort = nginxPort;
    this.#gatewayConfig = gatewayConfig;
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
    // A missing binary fails before anything starts.
    heraldBin();
    const nginx = nginxBin();
    const group = new ProcGroup();
    const gateways: Gateway[] = [];
    try {
      const { redisUrl, ingestUrl } = await startRedisAndIngest(group, API_KEY);
      const gatewayConfig: GatewayConfig = {
        redisUrl,
        ingestUrl,
        jwtSecret: JWT_SECRET,
        apiKey: API_KEY,
        extra: extraGatewayArgs,
      };
      for (const node of ["gw-1", "gw-2"]) {
        const g = await startWithRetry(async () => {
          const port = await freePort();
          const proc = await launchGateway(group.dir, node, port, gatewayConfig);
          return { node, port, proc };
        });
        gateways.push(g);
      }

      const nginxPort = await startWithRetry(async () => {
        const port = await freePort();
        const d = group.dir;
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
          throw e instanceof Fatal ? new Error(`cannot listen: ${e.message}`) : e;
        }
        group.add(p);
        return port;
      });

      return new Cluster(group, ingestUrl, gateways, nginxPort, gatewayConfig);
    } catch (e) {
      await Cluster.#stop(gateways, group);
      throw e;
    }
  }

  /** The gateways first, then nginx, ingest and Redis; removes the directory. */
  static async #stop(gateways: Gateway[], group: ProcGroup): Promise<void> {
    for (const g of gateways) {
      await g.proc.stop();
    }
    await group.stop();
  }

  /** Starts a gateway that was killed or drained again, on its old port. */
  async restart(node: string): Promise<void> {
    const g = this.gateway(node);
    if (g.proc.alive) {
      await g.proc.stop();
    }
    g.proc = await launchGateway(this.#group.dir, node, g.port, this.#gatewayConfig);
  }

  async stop(): Promise<void> {
    await Cluster.#stop(this.gateways, this.#group);
  }
}

/** The `exp` claim (seconds) of a token minted here. */
export function tokenExp(token: string): number {
  const part = token.split(".")[1] ?? "";
  return (JSON.parse(Buffer.from(part, "base64url").toString("utf8")) as { exp: number }).exp;
}
