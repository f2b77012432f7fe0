/**
 * Real processes for the tests: `herald dev`, or a private `redis-server`
 * with `herald ingest` and `herald gateway`, on free 127.0.0.1 ports in a
 * fresh temporary directory, stopped by PID (and the directory removed)
 * afterwards. Nothing is mocked: the SDK talks to the herald binary.
 *
 * The binary comes from `HERALD_BIN` or `<repo>/target/debug/herald`; a
 * missing one fails the suite with a message saying how to build it.
 * Readiness is polled with a deadline, never waited for with a fixed sleep.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

/** clients/node (this file runs from clients/node/dist-test). */
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
  const g = spawn("sh", ["-c", script, "herald-node-guardian", String(child.pid), dir], {
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
  const dir = mkdtempSync(join(tmpdir(), "herald-node-sdk-"));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Where a herald deployment under test answers. */
export interface Deployment {
  /** The ingest API base URL (for `new Herald({ url })`). */
  apiUrl: string;
  /** The WebSocket endpoint, `ws://.../ws`. */
  wsUrl: string;
  /** HS256 secret herald checks tokens with. */
  jwtSecret: string;
  /** API key. */
  apiKey: string;
  /** Stops every process and removes the directory. */
  stop: () => Promise<void>;
}

export const JWT_SECRET = "node-sdk-test-secret";
export const API_KEY = "node-sdk-test-key";

/**
 * `herald dev` with an optional TOML file (for `[[auth.keys]]`), on a
 * SQLite file in a fresh directory.
 */
export async function startDev(configToml?: string): Promise<Deployment> {
  const bin = heraldBin();
  const tmp = tempDir();
  try {
    const args = ["--database-url", `sqlite://${join(tmp.dir, "h.db")}`, "--jwt-secret", JWT_SECRET, "--api-key", API_KEY];
    if (configToml !== undefined) {
      const file = join(tmp.dir, "herald.toml");
      writeFileSync(file, configToml);
      args.push("--config", file);
    }
    // A short drain window keeps teardown quick if a socket is left open.
    args.push("--drain-window", "1");
    const { proc, port } = await startWithRetry(async () => {
      const port = await freePort();
      const proc = new Proc("herald dev", bin, ["dev", "--listen", `127.0.0.1:${port}`, ...args], tmp.dir);
      try {
        await waitHttp(proc, `http://127.0.0.1:${port}/healthz`);
      } catch (e) {
        await proc.stop();
        throw e;
      }
      return { proc, port };
    });
    return {
      apiUrl: `http://127.0.0.1:${port}`,
      wsUrl: `ws://127.0.0.1:${port}/ws`,
      jwtSecret: JWT_SECRET,
      apiKey: API_KEY,
      stop: async () => {
        await proc.stop();
        tmp.remove();
      },
    };
  } catch (e) {
    tmp.remove();
    throw e;
  }
}

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

/** The Redis topology, with a handle on Redis for fault tests. */
export interface Cluster extends Deployment {
  redis: Proc;
}

/**
 * A private `redis-server`, one `herald ingest` on a SQLite file and one
 * `herald gateway`, all on 127.0.0.1.
 */
export async function startCluster(): Promise<Cluster> {
  const bin = heraldBin();
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
    const { redis, redisPort } = await startWithRetry(async () => {
      const redisPort = await freePort();
      const redis = new Proc(
        "redis-server",
        redisBin,
        ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp.dir],
        tmp.dir,
      );
      try {
        await eventually(
          `redis-server on ${redisPort}`,
          async () => {
            if (!redis.alive) {
              throw new Fatal(`redis-server exited (is Debian's redis-server package installed?):\n${redis.log}`);
            }
            return (await redisPing(redisPort)) ? true : undefined;
          },
          READY_DEADLINE_MS,
        );
      } catch (e) {
        await redis.stop();
        throw e instanceof Fatal ? e : new Error(`${String(e)}\n--- redis-server log ---\n${redis.log}`);
      }
      return { redis, redisPort };
    });
    procs.push(redis);
    const redisUrl = `redis://127.0.0.1:${redisPort}`;

    const ingest = await startWithRetry(async () => {
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
      try {
        await waitHttp(p, `http://127.0.0.1:${admin}/healthz`);
      } catch (e) {
        await p.stop();
        throw e;
      }
      return { p, url: `http://127.0.0.1:${port}` };
    });
    procs.push(ingest.p);

    const gateway = await startWithRetry(async () => {
      const [port, admin] = [await freePort(), await freePort()];
      const p = new Proc(
        "herald gateway",
        bin,
        [
          "gateway",
          "--listen", `127.0.0.1:${port}`,
          "--admin-listen", `127.0.0.1:${admin}`,
          "--redis-url", redisUrl,
          "--ingest-url", ingest.url,
          "--jwt-secret", JWT_SECRET,
          "--api-key", API_KEY,
          "--node-id", "gw-1",
          "--drain-window", "1",
        ],
        tmp.dir,
      );
      try {
        await waitHttp(p, `http://127.0.0.1:${admin}/healthz`);
      } catch (e) {
        await p.stop();
        throw e;
      }
      return { p, wsUrl: `ws://127.0.0.1:${port}/ws` };
    });
    procs.push(gateway.p);

    return {
      apiUrl: ingest.url,
      wsUrl: gateway.wsUrl,
      jwtSecret: JWT_SECRET,
      apiKey: API_KEY,
      redis,
      stop: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}

/** A channel name no other test uses. */
export function uniq(prefix: string): string {
  return `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}
