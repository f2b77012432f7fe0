// Runs an SDK package's compiled tests with node:test; `npm test` starts it
// in the package directory (clients/js or clients/node), whose
// tsconfig.test.json compiles test/*.ts to dist-test/<package>/test/ (rootDir
// is clients/, for clients/testing). Node 20 keeps the global WebSocket the
// tests use behind --experimental-websocket; later versions have it on by
// default, so the flag is passed only when needed. Extra arguments go to
// `node --test` (e.g. --test-name-pattern).
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { basename, join } from "node:path";

const pkg = process.cwd();
const dir = join(pkg, "dist-test", basename(pkg), "test");
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".test.js"))
  .sort()
  .map((f) => join(dir, f));
const flags = typeof globalThis.WebSocket === "undefined" ? ["--experimental-websocket"] : [];
const r = spawnSync(process.execPath, [...flags, "--test", ...process.argv.slice(2), ...files], { stdio: "inherit" });
process.exit(r.status ?? 1);
