/**
 * What the TypeScript SDKs' tests (clients/js, clients/node) share: real
 * processes on free 127.0.0.1 ports in fresh temporary directories, stopped
 * by PID (and the directory removed) afterwards, with readiness polled with
 * a deadline, never waited for with a fixed sleep. The pieces every topology
 * uses are here: `herald dev`, and a private `redis-server` with
 * `herald ingest` and `herald gateway`s. What only one SDK's tests need (a
 * deployment handle, nginx, a TCP proxy, tokens) stays in that package's
 * `test/harness.ts`, which re-exports what its tests use from here.
 *
 * Not a package: each SDK's `tsconfig.test.json` compiles this file with its
 * own tests (rootDir `..`), so it lands in `<package>/dist-test/testing/`;
 * it must import nothing but Node's built-in modules (there is no
 * node_modules beside it), and is `.mts` because no package.json here says
 * `"type": "module"`.
 *
 * The binary comes from `HERALD_BIN` or `<repo>/target/debug/herald`; a
 * missing one (or a missing redis-server) fails the suite with a message
 * saying how to get it.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

/** The SDK package under test (this file runs from `<package>/dist-test/testing`). */
export const PKG_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The repository root. */
export const REPO_DIR = resolve(PKG_DIR, "..", "..");
/** `js` or `node`: names the guardian processes and temporary directories. */
const SDK = basename(PKG_DIR);

/** How long a process gets to become ready. Generous: 2 shared cores. */
export const READY_DEADLINE_MS = 30_000;
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
  const g = spawn("sh", ["-c", script, `herald-${SDK}-guardian`, String(child.pid), dir], {
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
export async function startWithRetry<T>(start: () => Promise<T>): Promise<T> {
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
  const dir = mkdtempSync(join(tmpdir(), `herald-${SDK}-sdk-`));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * The processes of one deployment and the fresh temporary directory they
 * share: `stop` stops them, last added first, then removes the directory.
 */
export class ProcGroup {
  readonly dir: string;
  readonly #remove: () => void;
  readonly #procs: Proc[] = [];

  constructor() {
    const tmp = tempDir();
    this.dir = tmp.dir;
    this.#remove = tmp.remove;
  }

  /** `proc`, now also stopped by {@link stop}. */
  add(proc: Proc): Proc {
    this.#procs.push(proc);
    return proc;
  }

  async stop(): Promise<void> {
    for (const p of [...this.#procs].reverse()) {
      await p.stop();
    }
    this.#remove();
  }
}

/** A channel name no other test uses (never `chat_`: the dev demo's backend watches those). */
export function uniq(prefix: string): string {
  return `${prefix}${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

// ---- herald processes ---------------------------------------------------------

/**
 * Runs `herald <args>` in `dir` until `healthUrl` answers 200; stops it
 * again when it never does.
 */
async function launchHerald(name: string, args: string[], dir: string, healthUrl: string): Promise<Proc> {
  const proc = new Proc(name, heraldBin(), args, dir);
  try {
    await waitHttp(proc, healthUrl);
  } catch (e) {
    await proc.stop();
    throw e;
  }
  return proc;
}

/** `herald dev <args>` in `dir`, listening on a free port. */
export async function launchDev(dir: string, args: string[]): Promise<{ proc: Proc; port: number }> {
  return startWithRetry(async () => {
    const port = await freePort();
    const proc = await launchHerald(
      "herald dev",
      ["dev", "--listen", `127.0.0.1:${port}`, ...args],
      dir,
      `http://127.0.0.1:${port}/healthz`,
    );
    return { proc, port };
  });
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

/**
 * A private `redis-server` (`REDIS_SERVER` or the one on `PATH`) on a free
 * port, no persistence, its files in `dir`.
 */
async function startRedis(dir: string): Promise<{ proc: Proc; url: string }> {
  const redisBin = process.env.REDIS_SERVER ?? "redis-server";
  return startWithRetry(async () => {
    const port = await freePort();
    const proc = new Proc(
      "redis-server",
      redisBin,
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
      dir,
    );
    try {
      await eventually(
        `redis-server on ${port}`,
        async () => {
          if (!proc.alive) {
            throw new Fatal(`redis-server exited (is Debian's redis-server package installed?):\n${proc.log}`);
          }
          return (await redisPing(port)) ? true : undefined;
        },
        READY_DEADLINE_MS,
      );
    } catch (e) {
      await proc.stop();
      throw e instanceof Fatal ? e : new Error(`${String(e)}\n--- redis-server log ---\n${proc.log}`);
    }
    return { proc, url: `redis://127.0.0.1:${port}` };
  });
}

/** `herald ingest` (`ingest-1`) on Redis at `redisUrl`, storing to a SQLite file in `dir`. */
async function startIngest(dir: string, redisUrl: string, apiKey: string): Promise<{ proc: Proc; url: string }> {
  return startWithRetry(async () => {
    const [port, admin] = [await freePort(), await freePort()];
    const proc = await launchHerald(
      "herald ingest",
      [
        "ingest",
        "--listen", `127.0.0.1:${port}`,
        "--admin-listen", `127.0.0.1:${admin}`,
        "--redis-url", redisUrl,
        "--database-url", `sqlite://${join(dir, "h.db")}`,
        "--api-key", apiKey,
        "--node-id", "ingest-1",
      ],
      dir,
      `http://127.0.0.1:${admin}/healthz`,
    );
    return { proc, url: `http://127.0.0.1:${port}` };
  });
}

/**
 * What every Redis topology starts with, into `group`: a private
 * `redis-server` and one `herald ingest` (`apiKey`) on a SQLite file.
 */
export async function startRedisAndIngest(
  group: ProcGroup,
  apiKey: string,
): Promise<{ redis: Proc; redisUrl: string; ingestUrl: string }> {
  const redis = await startRedis(group.dir);
  group.add(redis.proc);
  const ingest = await startIngest(group.dir, redis.url, apiKey);
  group.add(ingest.proc);
  return { redis: redis.proc, redisUrl: redis.url, ingestUrl: ingest.url };
}

/** What every `herald gateway` of one Redis topology is told. */
export interface GatewayConfig {
  redisUrl: string;
  ingestUrl: string;
  jwtSecret: string;
  apiKey: string;
  /** More flags, after the others. */
  extra?: string[];
}

/**
 * `herald gateway` as `node` on `port` (a restarted gateway keeps its port),
 * its admin listener on a free port, a drain window of 1 s.
 */
export async function launchGateway(dir: string, node: string, port: number, c: GatewayConfig): Promise<Proc> {
  const admin = await freePort();
  return launchHerald(
    `herald gateway ${node}`,
    [
      "gateway",
      "--listen", `127.0.0.1:${port}`,
      "--admin-listen", `127.0.0.1:${admin}`,
      "--redis-url", c.redisUrl,
      "--ingest-url", c.ingestUrl,
      "--jwt-secret", c.jwtSecret,
      "--api-key", c.apiKey,
      "--node-id", node,
      "--drain-window", "1",
      ...(c.extra ?? []),
    ],
    dir,
    `http://127.0.0.1:${admin}/healthz`,
  );
}
