// Headless Chromium check of herald's admin page (docs/operations.md,
// "Admin page"), run by tests/tests/admin.rs against a herald it started:
//
//   node tests/browser/admin.mjs --url http://127.0.0.1:PORT --key KEY \
//     --node dev --connections 2 --channel chat_x --presence-sub visitor:1 \
//     --expect-text hello-1 --publish-text from-browser-1 [--screenshot FILE]
//
// It opens /admin, signs in with the key, checks the node panel, the
// connection count, the channel's presence and recent messages, publishes
// through the form and sees the message in the page's recent list. The Rust
// test checks that its WebSocket client received that message too.
//
// Uses Debian's /usr/bin/chromium through playwright-core (no browser
// download) with a fresh profile directory. Exit 0 when every check passed;
// 1 with a message naming the failed check otherwise.

import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const CHROMIUM = "/usr/bin/chromium";
const STEP_MS = 15000;
const TOTAL_MS = 90000;

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${a} needs a value`);
    out[a.slice(2)] = v;
    i++;
  }
  for (const k of ["url", "key", "node", "connections", "channel", "presence-sub", "expect-text", "publish-text"]) {
    if (!(k in out)) throw new Error(`missing --${k}`);
  }
  return out;
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

/// Polls the text of `selector` (in Node, not in the page: the page's CSP
/// allows no eval) until `pred` holds, for at most STEP_MS.
async function waitText(page, selector, pred, what) {
  const until = Date.now() + STEP_MS;
  let now = null;
  for (;;) {
    now = await page.locator(selector).first().textContent({ timeout: STEP_MS }).catch(() => null);
    if (now !== null && pred(now)) break;
    if (Date.now() > until) {
      throw new Error(`check failed: ${what} (${selector} reads ${JSON.stringify(now)})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(`ok: ${what}`);
}

async function run(opts, profile) {
  const origin = new URL(opts.url).origin;
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1360, height: 1000 },
  });
  try {
    const page = ctx.pages()[0] ?? (await ctx.newPage());
    page.setDefaultTimeout(STEP_MS);
    const external = [];
    const problems = [];
    page.on("request", (r) => {
      const u = r.url();
      if (!u.startsWith(origin + "/") && !u.startsWith("data:")) external.push(u);
    });
    // CSP violations and script errors surface here.
    // (Answers with an error status are logged as "Failed to load
    // resource": the 401 of the wrong key is one; statuses are checked
    // where they matter.)
    page.on("console", (m) => {
      if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(m.text());
    });
    page.on("pageerror", (e) => problems.push(String(e)));

    const resp = await page.goto(opts.url + "/admin");
    check(resp && resp.status() === 200, "GET /admin answers 200");
    await page.locator("#key").waitFor({ state: "visible" });
    check(await page.locator("#app").isHidden(), "the dashboard stays hidden before sign-in");

    // A wrong key is refused and the sign-in form comes back.
    await page.fill("#key", "not-the-key");
    await page.click("#login-btn");
    await waitText(page, "#error", (t) => t.includes("refused"), "a wrong key is refused");
    await page.locator("#login").waitFor({ state: "visible" });

    await page.fill("#key", opts.key);
    await page.click("#login-btn");
    await waitText(page, "#node-id", (t) => t === opts.node, `node panel shows node ${opts.node}`);
    await waitText(page, "#node-role", (t) => t.length > 0, "node panel shows the role");
    await waitText(page, "#node-version", (t) => /^\d+\.\d+\.\d+/.test(t), "node panel shows the version");
    check((await page.inputValue("#key")) === "", "the key field is emptied after sign-in");
    const html = await page.content();
    check(!html.includes(opts.key), "the API key appears nowhere in the page");

    const conns = opts.connections;
    await waitText(page, "#conn-total", (t) => t === conns, `connections panel shows ${conns}`);
    const ch = opts.channel;
    await waitText(page, "#channels-body", (t) => t.includes(ch), `top channels list ${ch}`);

    // Look the channel up by clicking it in the top-channels table.
    await page.locator("#channels-body button", { hasText: ch }).first().click();
    const sub = opts["presence-sub"];
    await waitText(page, "#presence-body", (t) => t.includes(sub), `presence of ${ch} lists ${sub}`);
    const before = opts["expect-text"];
    await waitText(page, "#messages", (t) => t.includes(before), `recent messages of ${ch} show ${before}`);

    // Publish through the form; the data carries markup that must stay text.
    const text = opts["publish-text"];
    const data = { text, html: "<b id=\"injected\">bold</b><img src=x id=\"injected-img\">" };
    await page.fill("#pub-channels", ch);
    await page.fill("#pub-data", JSON.stringify(data));
    await page.click("#publish");
    await waitText(page, "#pub-result", (t) => t.startsWith("published m_"), "the form's publish is answered");
    await waitText(page, "#messages", (t) => t.includes(text), `the published ${text} shows in recent messages`);
    check(
      (await page.locator("#injected, #injected-img").count()) === 0,
      "message data is rendered as text, never as markup",
    );
    await waitText(page, "#messages", (t) => t.includes("<b id="), "the markup shows literally");

    if (opts.screenshot) {
      await page.screenshot({ path: opts.screenshot, fullPage: true });
      console.log(`ok: screenshot in ${opts.screenshot}`);
    }

    // Sign out forgets the key.
    await page.click("#logout");
    await page.locator("#login").waitFor({ state: "visible" });
    const left = await page.evaluate(() => sessionStorage.length);
    check(left === 0, "sign-out clears the session storage");

    check(external.length === 0, `no request leaves ${origin} (${external.join(", ")})`);
    check(problems.length === 0, `no script error or CSP violation (${problems.join(" | ")})`);
  } finally {
    await ctx.close();
  }
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`admin.mjs: ${e.message}`);
    process.exit(2);
  }
  const profile = mkdtempSync(join(tmpdir(), "herald-chromium-"));
  const deadline = setTimeout(() => {
    console.error(`admin.mjs: gave up after ${TOTAL_MS / 1000} s`);
    process.exit(1);
  }, TOTAL_MS);
  let code = 0;
  try {
    await run(opts, profile);
    console.log("admin page: all checks passed");
  } catch (e) {
    console.error(`admin.mjs: ${e.message}`);
    code = 1;
  } finally {
    clearTimeout(deadline);
    rmSync(profile, { recursive: true, force: true });
  }
  process.exit(code);
}

main();
