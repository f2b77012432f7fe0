/**
 * Real processes for the tests: `herald dev`, or a private `redis-server`
 * with `herald ingest` and `herald gateway`, started by the shared test
 * support (clients/testing/harness.mts: free 127.0.0.1 ports, a fresh
 * temporary directory, stopped by PID afterwards). Nothing is mocked: the
 * SDK talks to the herald binary. This file holds what is @herald/server's
 * own: the {@link Deployment} handle its tests take, and its credentials.
 */

import { writeFileSync } from "node:fs";
import { join } from "node:path";

import {
  ProcGroup,
  type Proc,
  freePort,
  heraldBin,
  launchDev,
  launchGateway,
  startRedisAndIngest,
  startWithRetry,
  tempDir,
} from "../../testing/harness.mjs";

export { PKG_DIR, eventually, freePort, heraldBin, uniq } from "../../testing/harness.mjs";

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
  // A missing binary fails before anything is created.
  heraldBin();
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
    const { proc, port } = await launchDev(tmp.dir, args);
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

/** The Redis topology, with a handle on Redis for fault tests. */
export interface Cluster extends Deployment {
  redis: Proc;
}

/**
 * A private `redis-server`, one `herald ingest` on a SQLite file and one
 * `herald gateway`, all on 127.0.0.1.
 */
export async function startCluster(): Promise<Cluster> {
  // A missing binary fails before Redis starts.
  heraldBin();
  const group = new ProcGroup();
  try {
    const { redis, redisUrl, ingestUrl } = await startRedisAndIngest(group, API_KEY);
    const gateway = await startWithRetry(async () => {
      const port = await freePort();
      const proc = await launchGateway(group.dir, "gw-1", port, {
        redisUrl,
        ingestUrl,
        jwtSecret: JWT_SECRET,
        apiKey: API_KEY,
      });
      return { proc, wsUrl: `ws://127.0.0.1:${port}/ws` };
    });
    group.add(gateway.proc);

    return {
      apiUrl: ingestUrl,
      wsUrl: gateway.wsUrl,
      jwtSecret: JWT_SECRET,
      apiKey: API_KEY,
      redis,
      stop: () => group.stop(),
    };
  } catch (e) {
    await group.stop();
    throw e;
  }
}
