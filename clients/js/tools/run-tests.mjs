// Runs the compiled tests (dist-test/*.test.js) with node:test. Node 20
// keeps the global WebSocket the tests use behind --experimental-websocket;
// later versions have it on by default, so the flag is passed only when
// needed. Extra arguments go to `node --test` (e.g. --test-name-pattern).
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "dist-test");
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".test.js"))
  .sort()
  .map((f) => join(dir, f));
const flags = typeof globalThis.WebSocket === "undefined" ? ["--experimental-websocket"] : [];
const r = spawnSync(process.execPath, [...flags, "--test", ...process.argv.slice(2), ...files], { stdio: "inherit" });
process.exit(r.status ?? 1);
