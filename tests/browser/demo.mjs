// End-to-end check of herald dev's demo page (/demo, built on the
// @herald/client SDK) in headless Chromium, run by tests/tests/demo.rs
// against a herald dev it started:
//
//   node tests/browser/demo.mjs --url http://127.0.0.1:PORT --shots DIR
//
// Three browser contexts: a visitor (website 1), operator 1 (Alice) and
// operator 2 (Bob); a fourth page in the visitor's context is a visitor of
// website 2. Flows, each printed as "ok: ..." when it passed:
//   1. a visitor message reaches both dashboards' lists with an unread count,
//      and the conversation once opened (history through `since`);
//   2. the bot's reply reaches the visitor;
//   3. typing indicators both ways (signals);
//   4. operators' presence in the conversation (join, and leave);
//   5. handoff: both sides see the handoff event and the bot stops;
//   6. a DM between the operators;
//   7. "Drop connection" mid-conversation, and a reload mid-conversation, of
//      the visitor (its WebSocket held down meanwhile, so messages really are
//      published while it is away), and a reload of an operator: each
//      message shows once, in order, seqs without gap.
// With `--flow recovery` (herald dev started with a tiny `--max-replay`),
// instead: a visitor away for more messages than herald replays gets
// `recovered:false`, and the page reloads the conversation from the app's
// history API (the stand-in) and loses nothing; a fresh operator's
// dashboard and conversation (more than max_replay behind) do the same.
// Screenshots go to --shots. The last line is "all checks passed"; the
// conversation ids are printed ("conversation: ...") for the Rust test's
// own checks through the ingest API.
//
// Every wait is a bounded poll (Playwright's waitFor, or a poll with a
// deadline); nothing sleeps for a fixed time, no assertion reads a clock.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const CHROMIUM = "/usr/bin/chromium";
/** Bound of one expected change on a page (debug build, two loaded cores). */
const STEP_MS = 20000;
const POLL_MS = 50;

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const a = argv[i];
    if (!a.startsWith("--") || argv[i + 1] === undefined) throw new Error(`bad argument ${a}`);
    out[a.slice(2)] = argv[i + 1];
  }
  for (const k of ["url", "shots"]) if (!(k in out)) throw new Error(`missing --${k}`);
  return out;
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

/** Polls `probe` (async, in Node) until `pred` holds on its value, for at most STEP_MS. */
async function until(probe, pred, what) {
  const deadline = Date.now() + STEP_MS;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (pred(last)) return last;
    } catch (e) {
      last = `error: ${e.message}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`check failed: ${what} (last seen: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function eventually(probe, pred, what) {
  const v = await until(probe, pred, what);
  console.log(`ok: ${what}`);
  return v;
}

/** The rendered messages of a list: seq, role, from, kind and text. */
function rows(scope, testid = "message") {
  return scope.locator(`[data-testid="${testid}"]`).evaluateAll((els) =>
    els.map((e) => ({
      seq: Number(e.dataset.seq),
      role: e.dataset.role || "",
      from: e.dataset.from || "",
      kind: e.dataset.kind || "",
      text: (e.querySelector('[data-testid="message-text"]') || e).textContent,
    })),
  );
}

const texts = (rs) => rs.map((r) => r.text);
const has = (text) => (rs) => rs.some((r) => r.text.includes(text));
const count = (rs, text) => rs.filter((r) => r.text === text).length;

/** Seqs 1..n, each once, in order: nothing lost, duplicated or reordered. */
function contiguous(rs) {
  return rs.length > 0 && rs.every((r, i) => r.seq === i + 1);
}

async function connected(page, what) {
  await page.locator('[data-testid="conn-state"][data-state="connected"]').waitFor({ timeout: STEP_MS });
  console.log(`ok: ${what} is connected`);
}

async function send(page, scope, text) {
  await scope.locator('[data-testid="composer-input"]').fill(text);
  await scope.locator('[data-testid="send"]').click();
}

function conversationItem(page, conversation) {
  return page.locator(`[data-testid="conversation"][data-conversation="${conversation}"]`);
}

async function unread(page, conversation) {
  return Number(await conversationItem(page, conversation).getAttribute("data-unread", { timeout: STEP_MS }));
}

function uniq() {
  return Math.random().toString(16).slice(2, 10);
}

/** Pages, the visitor's gate and the checks every flow ends with. */
async function setup(opts, browser) {
  const base = opts.url.replace(/\/$/, "");
  const origin = new URL(base).origin;
  mkdirSync(opts.shots, { recursive: true });
  const shot = async (page, name) => {
    const path = join(opts.shots, `${name}.png`);
    await page.screenshot({ path, fullPage: true });
    console.log(`ok: screenshot ${path}`);
  };

  const problems = [];
  const external = [];
  const contexts = [];
  const watch = (page, who) => {
    page.setDefaultTimeout(STEP_MS);
    page.on("pageerror", (e) => problems.push(`${who}: ${e}`));
    page.on("console", (m) => {
      if (m.type() === "error") problems.push(`${who}: ${m.text()}`);
    });
    page.on("request", (r) => {
      const u = r.url();
      if (!u.startsWith(origin + "/") && !u.startsWith("data:") && !u.startsWith(origin.replace("http", "ws"))) {
        external.push(u);
      }
    });
    return page;
  };
  const newPage = async (who) => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    contexts.push(ctx);
    return watch(await ctx.newPage(), who);
  };

  const visitorUrl = (c, site) => `${base}/demo?role=visitor&site=${site}&conversation=${c}`;
  const op1 = await newPage("operator 1");
  const op2 = await newPage("operator 2");
  const visitor = await newPage("visitor");

  // The visitor's WebSocket goes through a gate the test can close: while
  // closed, a connection attempt is held (it opens but never hears from
  // herald), so what is published meanwhile really happens while the
  // visitor is away. Opening the gate ends the held attempt (1012): the SDK
  // reconnects at once.
  const gate = { closed: false, held: [] };
  await visitor.routeWebSocket(/\/ws\?/, (ws) => {
    if (gate.closed) {
      gate.held.push(ws);
      return;
    }
    ws.connectToServer();
  });
  const openGate = async () => {
    gate.closed = false;
    for (const ws of gate.held.splice(0)) await ws.close({ code: 1012, reason: "network is back" }).catch(() => {});
  };
  const finish = () => {
    check(external.length === 0, `no request leaves ${origin} (${external.join(", ")})`);
    check(problems.length === 0, `no script error or CSP violation (${problems.join(" | ")})`);
  };
  return { base, shot, watch, contexts, visitorUrl, op1, op2, visitor, gate, openGate, finish };
}

async function anomalies(scope, who) {
  const a = await scope.locator('[data-testid="messages"]').getAttribute("data-anomalies");
  check(a === "0", `the ${who} page saw no duplicate, gap or reordering`);
}

async function runMain(opts, browser) {
  const { base, shot, watch, contexts, visitorUrl, op1, op2, visitor, gate, openGate, finish } = await setup(opts, browser);
  const conv = `site1-e2e${uniq()}`;
  const conv2 = `site2-e2e${uniq()}`;
  console.log(`conversation: ${conv}`);
  console.log(`conversation: ${conv2}`);

  let r = await op1.goto(`${base}/demo?role=operator&op=1`);
  check(r && r.status() === 200, "GET /demo answers 200");
  await op2.goto(`${base}/demo?role=operator&op=2`);
  await visitor.goto(visitorUrl(conv, 1));
  await connected(op1, "operator 1");
  await connected(op2, "operator 2");
  await connected(visitor, "the visitor");
  check((await op1.locator('[data-testid="operator-name"]').textContent()) === "Alice", "operator 1 is Alice");

  const vList = visitor.locator('[data-testid="widget"]');
  const pane1 = op1.locator('[data-testid="conversation-pane"]');
  const pane2 = op2.locator('[data-testid="conversation-pane"]');

  // ---- 1, 2: dashboards, unread counts, the bot's reply ----------------
  const q1 = "What are your prices?";
  await send(visitor, vList, q1);
  for (const [page, who] of [[op1, "operator 1"], [op2, "operator 2"]]) {
    await conversationItem(page, conv).waitFor({ timeout: STEP_MS });
    await eventually(() => unread(page, conv), (n) => n === 1, `${who}'s dashboard lists ${conv} with 1 unread`);
    check((await conversationItem(page, conv).getAttribute("data-site")) === "1", `${who} sees it as website 1's`);
  }
  const v1 = await eventually(() => rows(vList), (rs) => rs.some((x) => x.role === "bot"), "the bot's reply reaches the visitor");
  const reply = v1.find((x) => x.role === "bot");
  check(reply.from === "bot:ai" && reply.text.includes("Our plans start at $10"), "the reply is bot:ai's answer to prices");
  check(v1[0].text === q1 && v1[0].from === `visitor:${conv}` && v1[0].role === "user", "the visitor's own message shows first");

  await conversationItem(op1, conv).click();
  await pane1.waitFor({ state: "visible" });
  await eventually(() => rows(pane1), (rs) => rs.length === 2 && rs[0].text === q1 && rs[1].role === "bot",
    "operator 1 opens the conversation: its history (visitor, bot) through the subscription");
  await eventually(() => unread(op1, conv), (n) => n === 0, "opening it clears operator 1's unread count");

  const q2 = `Second question ${uniq()}`;
  await send(visitor, vList, q2);
  await eventually(() => rows(pane1), has(q2), "a new visitor message reaches the open conversation");
  await eventually(() => unread(op2, conv), (n) => n === 2, "operator 2 (not in it) counts 2 unread");
  check((await unread(op1, conv)) === 0, "operator 1 (in it) counts none");
  await eventually(() => rows(vList), (rs) => rs.filter((x) => x.role === "bot").length === 2, "the bot answers the second message too");

  // ---- 4: presence --------------------------------------------------------
  await eventually(() => visitor.locator('[data-testid="present-operator"]').evaluateAll((e) => e.map((x) => x.dataset.sub)),
    (subs) => subs.length === 1 && subs[0] === "op:1", "the visitor sees operator 1 present");
  await eventually(() => pane1.locator('[data-testid="present"]').evaluateAll((e) => e.map((x) => x.dataset.sub)),
    (subs) => subs.includes(`visitor:${conv}`) && subs.includes("op:1"), "operator 1 sees the visitor and itself present");
  await conversationItem(op2, conv).click();
  await eventually(() => rows(pane2), (rs) => rs.length === 4, "operator 2 opens it too: the 4 messages");
  await eventually(() => visitor.locator('[data-testid="present-operator"]').evaluateAll((e) => e.map((x) => x.dataset.sub)),
    (subs) => subs.includes("op:1") && subs.includes("op:2"), "the visitor sees both operators present");
  await eventually(() => pane1.locator('[data-testid="present"]').evaluateAll((e) => e.map((x) => x.dataset.sub)),
    (subs) => subs.includes("op:2"), "operator 1 sees operator 2 join");
  await eventually(() => unread(op2, conv), (n) => n === 0, "opening it clears operator 2's unread count");

  // ---- 3: typing both ways -----------------------------------------------
  await vList.locator('[data-testid="composer-input"]').pressSequentially("I am typ");
  await eventually(() => pane1.locator('[data-testid="typing"]').textContent(), (t) => t.includes("Visitor is typing"),
    "operator 1 sees the visitor typing");
  await pane1.locator('[data-testid="composer-input"]').pressSequentially("Let me ch");
  await eventually(() => vList.locator('[data-testid="typing"]').textContent(), (t) => t.includes("Alice is typing"),
    "the visitor sees Alice typing");
  await shot(visitor, "1-visitor-typing");
  await pane1.locator('[data-testid="composer-input"]').fill("");
  await vList.locator('[data-testid="composer-input"]').fill("");

  // ---- 5: handoff: the bot stops ------------------------------------------
  await pane1.locator('[data-testid="handoff"]').click();
  const handoff = (rs) => rs.some((x) => x.kind === "handoff" && x.from === "bot:ai");
  await eventually(() => rows(vList), handoff, "the visitor sees the handoff event");
  await eventually(() => rows(pane1), handoff, "operator 1 sees the handoff event");
  await eventually(() => rows(pane2), handoff, "operator 2 sees the handoff event");
  await eventually(() => pane1.locator('[data-testid="handoff"]').isDisabled(), (d) => d, "the Take over button is spent");
  const h = (await rows(vList)).find((x) => x.kind === "handoff");
  check(h.text.includes("joined the conversation") && h.text.includes("Alice"), "the handoff names the operator");

  const q3 = `Are you still a bot? ${uniq()}`;
  await send(visitor, vList, q3);
  await eventually(() => rows(pane1), has(q3), "operator 1 gets the visitor's message after the handoff");
  const a3 = `Alice here, a human ${uniq()}`;
  await send(op1, pane1, a3);
  const after = await eventually(() => rows(vList), has(a3), "the visitor gets operator 1's answer");
  const i3 = after.findIndex((x) => x.text === q3);
  const j3 = after.findIndex((x) => x.text === a3);
  check(i3 >= 0 && j3 === i3 + 1, "no bot message between the visitor's message and the operator's answer");
  // The stand-in backend handles messages one at a time in commit order, so
  // once it has answered a later message elsewhere, it has handled q3: a
  // bot reply to q3 would be committed by then.
  const visitor2 = watch(await contexts[2].newPage(), "visitor 2");
  await visitor2.goto(visitorUrl(conv2, 2));
  await connected(visitor2, "the visitor of website 2");
  const v2List = visitor2.locator('[data-testid="widget"]');
  await send(visitor2, v2List, "hello");
  await eventually(() => rows(v2List), (rs) => rs.some((x) => x.role === "bot" && x.text.startsWith("Hello!")),
    "the bot still answers in another conversation (website 2)");
  const settled = await rows(vList);
  const hi = settled.findIndex((x) => x.kind === "handoff");
  check(settled.slice(hi + 1).every((x) => x.role !== "bot"), "the bot never answered after the handoff");
  for (const [page, who] of [[op1, "operator 1"], [op2, "operator 2"]]) {
    await eventually(() => unread(page, conv2), (n) => n === 1, `${who}'s dashboard lists website 2's conversation too`);
    check((await conversationItem(page, conv2).getAttribute("data-site")) === "2", `${who} sees it as website 2's`);
  }
  await shot(op2, "2-operator2-dashboard");

  // Presence leave: operator 2 moves to the other conversation.
  await conversationItem(op2, conv2).click();
  await eventually(() => visitor.locator('[data-testid="present-operator"]').evaluateAll((e) => e.map((x) => x.dataset.sub)),
    (subs) => subs.length === 1 && subs[0] === "op:1", "operator 2 left: the visitor sees operator 1 only");

  // ---- 6: DM between the operators ----------------------------------------
  const dm1 = `Bob, website 2 is yours ${uniq()}`;
  await op1.locator('[data-testid="dm-input"]').fill(dm1);
  await op1.locator('[data-testid="dm-send"]').click();
  const dmBob = await eventually(() => rows(op2, "dm-message"), has(dm1), "operator 2 gets operator 1's DM");
  check(dmBob.find((x) => x.text === dm1).from === "op:1", "the DM comes from op:1");
  await eventually(() => rows(op1, "dm-message"), has(dm1), "operator 1's own DM shows in its thread");
  const dm2 = `On it ${uniq()}`;
  await op2.locator('[data-testid="dm-input"]').fill(dm2);
  await op2.locator('[data-testid="dm-send"]').click();
  await eventually(() => rows(op1, "dm-message"), (rs) => texts(rs).join("|") === `${dm1}|${dm2}`, "operator 1 gets the answer, in order");
  await eventually(() => rows(op2, "dm-message"), (rs) => texts(rs).join("|") === `${dm1}|${dm2}`, "operator 2's thread has both, in order");
  await shot(op1, "3-operator1-conversation-and-dm");

  // ---- 7a: "Drop connection" mid-conversation -----------------------------
  const before = await rows(vList);
  gate.closed = true;
  await vList.locator('[data-testid="drop"]').click();
  await eventually(() => vList.locator('[data-testid="conn-state"]').getAttribute("data-state"), (s) => s !== "connected",
    "Drop connection: the visitor is disconnected");
  const dropped = [1, 2, 3].map((i) => `while dropped ${i} ${uniq()}`);
  for (const t of dropped) {
    await send(op1, pane1, t);
    await eventually(() => rows(pane1), has(t), `operator 1 publishes "${t}"`);
  }
  const offline = `sent while offline ${uniq()}`;
  await send(visitor, vList, offline);
  check((await vList.locator('[data-testid="conn-state"]').getAttribute("data-state")) !== "connected",
    "all of it happened while the visitor was away");
  await openGate();
  await connected(visitor, "the visitor (reconnected)");
  const back = await eventually(() => rows(vList), (rs) => dropped.every((t) => rs.some((x) => x.text === t)) && has(offline)(rs),
    "what was published while dropped reaches the visitor, and its own queued message goes out");
  check(dropped.every((t) => count(back, t) === 1) && count(back, offline) === 1, "each message shows once");
  const idx = dropped.map((t) => back.findIndex((x) => x.text === t));
  check(idx[0] < idx[1] && idx[1] < idx[2], "in the order they were published");
  check(contiguous(back), `the visitor's list is seqs 1..${back.length}, no gap, no duplicate`);
  check(JSON.stringify(back.slice(0, before.length)) === JSON.stringify(before), "what was shown before is unchanged");
  await eventually(() => rows(pane1), has(offline), "the visitor's queued message reaches operator 1");
  check(count(await rows(pane1), offline) === 1, "once");

  // ---- 7b: reload mid-conversation ------------------------------------------
  const beforeReload = await rows(vList);
  gate.closed = true;
  await visitor.reload();
  await eventually(() => rows(vList), (rs) => rs.length === beforeReload.length,
    "after a reload the visitor shows the kept conversation at once");
  const reloaded = [1, 2].map((i) => `while reloading ${i} ${uniq()}`);
  for (const t of reloaded) {
    await send(op1, pane1, t);
    await eventually(() => rows(pane1), has(t), `operator 1 publishes "${t}"`);
  }
  check((await vList.locator('[data-testid="conn-state"]').getAttribute("data-state")) !== "connected",
    "the reloaded visitor was not connected meanwhile");
  await openGate();
  await connected(visitor, "the reloaded visitor");
  const afterReload = await eventually(() => rows(vList), (rs) => reloaded.every((t) => rs.some((x) => x.text === t)),
    "messages published during the reload reach the visitor");
  check(reloaded.every((t) => count(afterReload, t) === 1), "each once");
  check(afterReload.findIndex((x) => x.text === reloaded[0]) < afterReload.findIndex((x) => x.text === reloaded[1]), "in order");
  check(contiguous(afterReload), `the visitor's list is seqs 1..${afterReload.length}, no gap, no duplicate`);
  check(afterReload.length === beforeReload.length + 2, "nothing else was added");
  await eventually(() => visitor.locator('[data-testid="log"]').textContent(), (t) => t.includes("recovered, 2 replayed"),
    "the reloaded visitor subscribed with since: exactly the 2 missed messages were replayed");
  await shot(visitor, "4-visitor-after-drop-and-reload");

  // ---- 7c: an operator reloads mid-conversation ------------------------------
  const opBefore = await rows(pane1);
  await op1.reload();
  await connected(op1, "operator 1 (reloaded)");
  const during = `during the operator's reload ${uniq()}`;
  await send(visitor, vList, during);
  const opAfter = await eventually(() => rows(op1.locator('[data-testid="conversation-pane"]')), has(during),
    "operator 1 reloaded: the open conversation comes back and gets the new message");
  check(count(opAfter, during) === 1 && contiguous(opAfter), `operator 1's list is seqs 1..${opAfter.length}, once each`);
  check(JSON.stringify(opAfter.slice(0, opBefore.length)) === JSON.stringify(opBefore), "what operator 1 showed before is unchanged");
  await eventually(() => unread(op1, conv2), (n) => n === 1, "the reloaded dashboard still counts website 2's unread message");
  await eventually(() => rows(op1, "dm-message"), (rs) => texts(rs).join("|") === `${dm1}|${dm2}`, "and still has the DM thread");

  // ---- the page checks what the SDK promises -------------------------------
  await anomalies(vList, "visitor");
  await anomalies(op1.locator('[data-testid="conversation-pane"]'), "operator 1");
  await anomalies(pane2, "operator 2");
  await shot(op1, "5-operator1-after-reload");
  await shot(visitor2, "6-visitor-website2");
  finish();
}

/** recovered:false: the page reloads from the app's API (herald dev --max-replay 3). */
async function runRecovery(opts, browser) {
  const { base, shot, visitorUrl, op1, op2, visitor, gate, openGate, finish } = await setup(opts, browser);
  const conv = `site1-rec${uniq()}`;
  console.log(`conversation: ${conv}`);
  await op1.goto(`${base}/demo?role=operator&op=1`);
  await visitor.goto(visitorUrl(conv, 1));
  await connected(op1, "operator 1");
  await connected(visitor, "the visitor");
  const vList = visitor.locator('[data-testid="widget"]');
  const pane1 = op1.locator('[data-testid="conversation-pane"]');
  await send(visitor, vList, "hello");
  await eventually(() => rows(vList), (rs) => rs.length === 2, "the visitor's message and the bot's reply");
  await conversationItem(op1, conv).click();
  await eventually(() => rows(pane1), (rs) => rs.length === 2, "operator 1 opens the conversation");

  gate.closed = true;
  await vList.locator('[data-testid="drop"]').click();
  await eventually(() => vList.locator('[data-testid="conn-state"]').getAttribute("data-state"), (s) => s !== "connected",
    "Drop connection: the visitor is disconnected");
  const away = [1, 2, 3, 4, 5, 6].map((i) => `while away ${i} ${uniq()}`);
  for (const t of away) {
    await send(op1, pane1, t);
    await eventually(() => rows(pane1), has(t), `operator 1 publishes "${t}"`);
  }
  await openGate();
  await connected(visitor, "the visitor (back, 6 messages behind, max_replay 3)");
  await eventually(() => visitor.locator('[data-testid="log"]').textContent(), (t) => t.includes("history gap: reloading"),
    "the SDK reports recovered:false and the page reloads the conversation from the app's API");
  const back = await eventually(() => rows(vList), (rs) => away.every((t) => rs.some((x) => x.text === t)),
    "what was published while away reaches the visitor anyway");
  check(away.every((t) => count(back, t) === 1) && contiguous(back), `seqs 1..${back.length}, each once, in order`);
  const after = `after the gap ${uniq()}`;
  await send(op1, pane1, after);
  const live = await eventually(() => rows(vList), has(after), "live messages go on after the reload");
  check(contiguous(live) && count(live, after) === 1, "still seqs 1..n, each once");
  await anomalies(vList, "visitor");

  // A fresh operator: its dashboard and the conversation are more than
  // max_replay behind from the start.
  await op2.goto(`${base}/demo?role=operator&op=2`);
  await connected(op2, "operator 2");
  await conversationItem(op2, conv).waitFor({ timeout: STEP_MS });
  console.log("ok: a fresh dashboard, too far behind for a replay, lists the conversation (reloaded from the app's API)");
  await conversationItem(op2, conv).click();
  const pane2 = op2.locator('[data-testid="conversation-pane"]');
  const all = await eventually(() => rows(pane2), (rs) => rs.length === live.length,
    "opening it shows the whole conversation (reloaded from the app's API)");
  check(contiguous(all) && JSON.stringify(texts(all)) === JSON.stringify(texts(live)), "the same messages as the visitor's, in order");
  await shot(visitor, "7-visitor-after-recovered-false");
  finish();
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  try {
    if ((opts.flow || "main") === "main") await runMain(opts, browser);
    else if (opts.flow === "recovery") await runRecovery(opts, browser);
    else throw new Error(`unknown --flow ${opts.flow}`);
  } finally {
    await browser.close();
  }
  console.log("all checks passed");
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
