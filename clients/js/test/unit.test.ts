/**
 * Unit tests with a fake socket and a fake clock: the state machine, the
 * backoff and close-code policy, dedup and ordering, publish retries,
 * recover= building, heartbeats and token refresh. No network, no waiting:
 * time moves only when a test advances the fake clock.
 */

import assert from "node:assert/strict";
import { beforeEach, describe, it } from "node:test";

import {
  DEFAULT_BACKOFF,
  Herald,
  HeraldError,
  Sequencer,
  backoffCap,
  backoffDelay,
  buildUrl,
  closeAction,
  refreshDelayMs,
  slowBackoffDelay,
  tokenExpiryMs,
  type HeraldOptions,
  type Message,
  type State,
} from "@herald/client";

import { FakeClock, FakeSocket, jwt, settle, type Json } from "./fakes.js";

const URL_ = "ws://herald.test/ws";

function client(clock: FakeClock, opts: HeraldOptions = {}): Herald {
  return new Herald(URL_, { token: "t0", websocket: FakeSocket, clock, ...opts });
}

function msg(channel: string, seq: number): Message {
  return { channel, seq, id: `m${seq}`, ts: seq, data: { n: seq } };
}

/** Records what the app sees of a channel. */
function seqsOf(h: Herald, channel: string): number[] {
  const seen: number[] = [];
  h.on("message", (m) => {
    if (m.channel === channel) {
      seen.push(m.seq);
    }
  });
  return seen;
}

beforeEach(() => FakeSocket.reset());

describe("backoff", () => {
  it("grows by factor up to the max, with full jitter below the cap", () => {
    const o = DEFAULT_BACKOFF;
    assert.deepEqual([0, 1, 2, 3].map((a) => backoffCap(a, o)), [500, 1000, 2000, 4000]);
    assert.equal(backoffCap(30, o), 20_000);
    assert.equal(backoffCap(5000, o), 20_000, "no overflow to Infinity/NaN");
    for (let a = 0; a < 10; a++) {
      assert.equal(backoffDelay(a, o, () => 0), 0);
      const hi = backoffDelay(a, o, () => 0.999999);
      assert.ok(hi < backoffCap(a, o) && hi >= backoffCap(a, o) * 0.99, `attempt ${a}: ${hi}`);
    }
    const spread = new Set(Array.from({ length: 20 }, (_, i) => backoffDelay(3, o, () => i / 20)));
    assert.equal(spread.size, 20, "jitter spreads the delays");
  });

  it("backs off harder after 4009/4029: at least half of a cap three steps on", () => {
    const o = { minDelayMs: 100, maxDelayMs: 10_000, factor: 2 };
    assert.equal(slowBackoffDelay(0, o, () => 0), 400);
    assert.equal(slowBackoffDelay(0, o, () => 0.999999), 799);
    assert.equal(slowBackoffDelay(20, o, () => 0), 5_000);
  });
});

describe("close codes", () => {
  it("follow PROTOCOL.md section 6", () => {
    assert.deepEqual(closeAction(1000, undefined, true), { kind: "stop", error: null });
    assert.deepEqual(closeAction(1000, true, false), { kind: "reconnect", slow: false });
    for (const c of [1012, 4008, 4408]) {
      assert.deepEqual(closeAction(c, true, false), { kind: "reconnect", slow: false }, String(c));
    }
    assert.deepEqual(closeAction(4001, false, false), { kind: "stop", error: "unauthorized" });
    assert.deepEqual(closeAction(4001, false, true), { kind: "token" });
    assert.deepEqual(closeAction(4003, undefined, true), { kind: "token" });
    assert.deepEqual(closeAction(4004, true, false), { kind: "stop", error: "token_expired" });
    assert.deepEqual(closeAction(4004, true, true), { kind: "token" });
    assert.deepEqual(closeAction(4009, true, true), { kind: "reconnect", slow: true });
    assert.deepEqual(closeAction(4029, true, true), { kind: "reconnect", slow: true });
    for (const c of [1002, 1007, 1009, 4000]) {
      assert.deepEqual(closeAction(c, false, true), { kind: "stop", error: "protocol" }, String(c));
    }
    assert.deepEqual(closeAction(1006, undefined, false), { kind: "reconnect", slow: false });
    assert.deepEqual(closeAction(1001, undefined, false), { kind: "reconnect", slow: false });
    assert.deepEqual(closeAction(4999, false, false), { kind: "stop", error: null });
  });
});

describe("sequencer", () => {
  it("buffers until positioned, then delivers in order once", () => {
    const s = new Sequencer();
    assert.deepEqual(s.push(msg("c", 6)).deliver, []);
    assert.deepEqual(s.push(msg("c", 5)).deliver, []);
    const p = s.position(4, false, undefined, undefined);
    assert.deepEqual(p.deliver.map((m) => m.seq), [5, 6]);
    assert.equal(p.gap, false);
    assert.equal(s.lastSeq, 6);
    assert.deepEqual(s.push(msg("c", 6)).deliver, [], "duplicate dropped");
    assert.deepEqual(s.push(msg("c", 7)).deliver.map((m) => m.seq), [7]);
  });

  it("drops buffered messages at or below a fresh position", () => {
    const s = new Sequencer();
    s.push(msg("c", 3));
    s.push(msg("c", 4));
    assert.deepEqual(s.position(4, false, undefined, undefined).deliver, []);
    assert.equal(s.buffered, 0);
  });

  it("reports a gap, holds what follows it, and fills in order", () => {
    const s = new Sequencer(0);
    s.position(0, false, undefined, undefined);
    s.push(msg("c", 1));
    const g = s.push(msg("c", 3));
    assert.equal(g.gap, true);
    assert.deepEqual(g.deliver, []);
    assert.deepEqual(s.push(msg("c", 4)).deliver, []);
    assert.deepEqual(s.push(msg("c", 2)).deliver.map((m) => m.seq), [2, 3, 4]);
    assert.equal(s.buffered, 0);
  });

  it("keeps the position on recovered:true and jumps on recovered:false", () => {
    const a = new Sequencer(10);
    const r = a.position(15, true, true, 5);
    assert.equal(r.recovered, true);
    assert.equal(r.replayed, 5);
    assert.equal(a.lastSeq, 10);
    const b = new Sequencer(10);
    const f = b.position(50_000, true, false, 0);
    assert.equal(f.recovered, false);
    assert.equal(b.lastSeq, 50_000);
    assert.deepEqual(b.push(msg("c", 50_000)).deliver, []);
    assert.deepEqual(b.push(msg("c", 50_001)).deliver.map((m) => m.seq), [50_001]);
  });

  it("asks for a resync when a recovery got a plain answer past the position", () => {
    const s = new Sequencer(3);
    assert.equal(s.position(9, true, undefined, undefined).gap, true);
    assert.equal(s.lastSeq, 3);
    const t = new Sequencer(9);
    assert.equal(t.position(9, true, undefined, undefined).gap, false);
  });

  it("bounds its buffer", () => {
    const s = new Sequencer(0, 3);
    s.position(0, false, undefined, undefined);
    for (const q of [5, 6, 7, 8]) {
      s.push(msg("c", q));
    }
    assert.ok(s.buffered <= 3);
  });
});

describe("urls and tokens", () => {
  it("puts token and recover= in the query, URL-encoded", () => {
    const u = new URL(buildUrl("ws://h:1/ws", "a.b.c", [["dashboard_website_12", 991], ["x:y", 0]]));
    assert.equal(u.searchParams.get("token"), "a.b.c");
    assert.equal(u.searchParams.get("recover"), "dashboard_website_12:991,x:y:0");
    assert.match(u.search, /recover=dashboard_website_12%3A991%2Cx%3Ay%3A0/);
    assert.equal(new URL(buildUrl("https://h/ws?x=1", undefined, [])).protocol, "wss:");
    assert.equal(new URL(buildUrl("http://h/ws?x=1", undefined, [])).searchParams.get("x"), "1");
    assert.throws(() => buildUrl("/ws", undefined, []), TypeError);
  });

  it("reads exp without verifying and refreshes before it", () => {
    assert.equal(tokenExpiryMs(jwt({ sub: "a", exp: 1_800_000_000, info: { name: "Zoë" } })), 1_800_000_000_000);
    assert.equal(tokenExpiryMs("not-a-jwt"), undefined);
    assert.equal(tokenExpiryMs(jwt({ sub: "a" })), undefined);
    // An hour left: 30 s before expiry.
    assert.equal(refreshDelayMs(3_600_000, 0, 30_000), 3_570_000);
    // Ten seconds left: at 80% of it.
    assert.equal(refreshDelayMs(10_000, 0, 30_000), 8_000);
    assert.equal(refreshDelayMs(10, 20, 30_000), 0);
  });
});

describe("state machine", () => {
  it("disconnected -> connecting -> connected -> disconnected -> connecting -> connected -> closed -> connecting", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    const states: State[] = [];
    h.on("state", (s) => states.push(s));
    assert.equal(h.state, "disconnected");
    const ready = h.connect();
    assert.equal(h.state, "connecting");
    FakeSocket.last.welcome();
    const w = await ready;
    assert.equal(w.node, "gw-1");
    assert.equal(h.state, "connected");
    const events: Json[] = [];
    h.on("disconnected", (e) => events.push(e));
    FakeSocket.last.drop();
    assert.equal(h.state, "disconnected");
    assert.deepEqual(events, [{ code: 1006, reason: "", reconnect: true }]);
    assert.equal(FakeSocket.all.length, 1, "waits for the backoff timer");
    clock.advance(DEFAULT_BACKOFF.minDelayMs);
    assert.equal(h.state, "connecting");
    assert.equal(FakeSocket.all.length, 2);
    FakeSocket.last.welcome();
    h.disconnect();
    assert.equal(h.state, "closed");
    assert.deepEqual(FakeSocket.last.closedByClient, { code: 1000, reason: undefined });
    assert.equal(clock.pending, 0, "a closed client leaves no timer behind");
    void h.connect();
    assert.deepEqual(states, ["connecting", "connected", "disconnected", "connecting", "connected", "closed", "connecting"]);
    h.disconnect();
  });

  it("connect() keeps trying through failed attempts and rejects on disconnect()", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    const errors: HeraldError[] = [];
    h.on("error", (e) => errors.push(e));
    const ready = h.connect();
    for (let i = 0; i < 3; i++) {
      FakeSocket.last.drop();
      assert.equal(h.state, "disconnected");
      clock.advance(clock.delays()[0] ?? 0);
    }
    assert.equal(FakeSocket.all.length, 4);
    assert.equal(errors.length, 3);
    assert.equal(errors[0]?.code, "transport");
    h.disconnect();
    await assert.rejects(ready, (e: HeraldError) => e.code === "closed");
    assert.equal(clock.pending, 0);
  });

  it("connect() during the backoff wait retries at once", () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    FakeSocket.last.drop();
    assert.equal(FakeSocket.all.length, 1);
    void h.connect();
    assert.equal(FakeSocket.all.length, 2);
    assert.equal(clock.pending, 1, "only the new socket's handshake deadline");
    h.disconnect();
  });

  it("backs off exponentially between failed attempts and resets after a welcome", () => {
    const clock = new FakeClock();
    clock.rand = 0.999999;
    const h = client(clock);
    void h.connect();
    const delays: number[] = [];
    for (let i = 0; i < 7; i++) {
      FakeSocket.last.drop();
      const d = clock.delays();
      delays.push(d[0] ?? -1);
      clock.advance(d[0] ?? 0);
    }
    assert.deepEqual(delays, [499, 999, 1999, 3999, 7999, 15999, 19999]);
    FakeSocket.last.welcome();
    FakeSocket.last.drop();
    assert.deepEqual(clock.delays(), [499]);
    h.disconnect();
  });

  it("offers the subprotocol of the encoding and reads binary frames on msgpack", async () => {
    const clock = new FakeClock();
    const h = client(clock, { encoding: "msgpack" });
    const ready = h.connect();
    assert.deepEqual(FakeSocket.last.protocols, ["herald.msgpack"]);
    FakeSocket.last.welcome([], 0.5);
    assert.equal((await ready).heartbeat, 0.5);
    const sub = h.subscribe("room_1");
    const req = FakeSocket.last.lastOp("subscribe");
    assert.deepEqual(req, { op: "subscribe", id: req.id, channel: "room_1" }, "no nil for absent fields");
    FakeSocket.last.reply(req, { channel: "room_1", seq: 0 });
    const got: unknown[] = [];
    sub.on("message", (m) => got.push(m.data));
    FakeSocket.last.message("room_1", 1, { text: "héllo", n: [1, 2] });
    assert.deepEqual(got, [{ text: "héllo", n: [1, 2] }]);
    h.disconnect();
  });
});

describe("close code handling", () => {
  it("4001 without getToken: closed, no retry", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    const errors: string[] = [];
    const disc: Json[] = [];
    h.on("error", (e) => errors.push(e.code));
    h.on("disconnected", (e) => disc.push(e));
    const ready = h.connect();
    FakeSocket.last.open();
    FakeSocket.last.serverClose(4001, "unauthorized", { reconnect: false });
    await assert.rejects(ready, (e: HeraldError) => e.code === "unauthorized" && e.closeCode === 4001);
    assert.equal(h.state, "closed");
    assert.deepEqual(errors, ["unauthorized"]);
    assert.deepEqual(disc, [{ code: 4001, reason: "unauthorized", reconnect: false }]);
    clock.advance(600_000);
    assert.equal(FakeSocket.all.length, 1, "never retried");
  });

  it("4001 with getToken: one retry with a new token, then stop", async () => {
    const clock = new FakeClock();
    let n = 0;
    const h = client(clock, { token: undefined, getToken: () => `tok${++n}` });
    const ready = h.connect();
    await settle();
    assert.equal(FakeSocket.last.query.get("token"), "tok1");
    FakeSocket.last.open();
    FakeSocket.last.serverClose(4001, "bad", { reconnect: false });
    clock.advance(1_000);
    await settle();
    assert.equal(FakeSocket.all.length, 2);
    assert.equal(FakeSocket.last.query.get("token"), "tok2");
    FakeSocket.last.open();
    FakeSocket.last.serverClose(4001, "bad", { reconnect: false });
    await assert.rejects(ready, (e: HeraldError) => e.code === "unauthorized");
    clock.advance(600_000);
    await settle();
    assert.equal(FakeSocket.all.length, 2);
  });

  it("4001 when getToken returns the refused token: stop", async () => {
    const clock = new FakeClock();
    const h = client(clock, { token: undefined, getToken: () => "same" });
    const ready = h.connect();
    await settle();
    FakeSocket.last.open();
    FakeSocket.last.serverClose(4001, "bad", { reconnect: false });
    clock.advance(60_000);
    await settle();
    await assert.rejects(ready, (e: HeraldError) => e.code === "unauthorized");
    assert.equal(FakeSocket.all.length, 1);
  });

  it("4004: getToken first, then reconnect at once with recovery", async () => {
    const clock = new FakeClock();
    const tokens = [jwt({ sub: "a", exp: 1_700_000_060 }), jwt({ sub: "a", exp: 1_700_003_600 })];
    let calls = 0;
    const h = client(clock, { token: undefined, getToken: () => tokens[calls++] ?? "x", autoRefresh: false });
    void h.connect();
    await settle();
    FakeSocket.last.welcome([{ channel: "dash_1", seq: 7 }]);
    FakeSocket.last.message("dash_1", 8);
    FakeSocket.last.serverClose(4004, "token expired", { reconnect: true });
    assert.equal(h.state, "disconnected");
    clock.advance(0);
    await settle();
    assert.equal(calls, 2);
    assert.equal(FakeSocket.all.length, 2);
    assert.equal(FakeSocket.last.query.get("token"), tokens[1]);
    assert.equal(FakeSocket.last.query.get("recover"), "dash_1:8");
    h.disconnect();
  });

  it("4004 without getToken: closed with token_expired", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    const errs: string[] = [];
    h.on("error", (e) => errs.push(e.code));
    void h.connect();
    FakeSocket.last.welcome();
    FakeSocket.last.serverClose(4004, "token expired", { reconnect: true });
    assert.equal(h.state, "closed");
    assert.deepEqual(errs, ["token_expired"]);
  });

  it("1012 reconnects within the first backoff step; 4009 waits longer", () => {
    const clock = new FakeClock();
    clock.rand = 0.999999;
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    FakeSocket.last.serverClose(1012, "service restart", { reconnect: true });
    assert.ok((clock.delays()[0] ?? Infinity) < DEFAULT_BACKOFF.minDelayMs);
    clock.advance(1_000);
    FakeSocket.last.welcome();
    clock.rand = 0;
    FakeSocket.last.serverClose(4009, "connection limit reached", { reconnect: true });
    assert.ok((clock.delays()[0] ?? 0) >= 2_000, `4009 delay ${clock.delays()[0]}`);
    h.disconnect();
  });

  it("1000 and fix-the-client codes stay closed", () => {
    for (const [code, reconnect] of [[1000, false], [4000, false], [1009, false]] as const) {
      const clock = new FakeClock();
      const h = client(clock);
      h.on("error", () => undefined);
      void h.connect();
      FakeSocket.last.welcome();
      FakeSocket.last.serverClose(code, "x", { reconnect });
      assert.equal(h.state, "closed", String(code));
      clock.advance(600_000);
      assert.equal(h.state, "closed");
    }
  });

  it("an error event before open is a failed attempt even when no close follows (Node 20)", () => {
    const clock = new FakeClock();
    const h = client(clock);
    const errors: string[] = [];
    h.on("error", (e) => errors.push(e.code));
    void h.connect();
    FakeSocket.last.onerror?.({});
    assert.equal(h.state, "disconnected");
    assert.deepEqual(errors, ["transport"]);
    clock.advance(clock.delays()[0] ?? 0);
    assert.equal(FakeSocket.all.length, 2);
    // On an open socket an error waits a moment for the close event.
    FakeSocket.last.welcome();
    FakeSocket.last.onerror?.({});
    assert.equal(h.state, "connected");
    clock.advance(1_000);
    assert.equal(h.state, "disconnected");
    h.disconnect();
  });

  it("without any WebSocket implementation the client closes with a clear error", async () => {
    const saved = (globalThis as { WebSocket?: unknown }).WebSocket;
    delete (globalThis as { WebSocket?: unknown }).WebSocket;
    try {
      const h = new Herald(URL_, { token: "t", clock: new FakeClock() });
      h.on("error", () => undefined);
      await assert.rejects(h.connect(), (e: HeraldError) => e.code === "transport" && /websocket/i.test(e.message));
      assert.equal(h.state, "closed");
    } finally {
      (globalThis as { WebSocket?: unknown }).WebSocket = saved;
    }
  });

  it("a welcome that never comes is a failed attempt", () => {
    const clock = new FakeClock();
    const h = client(clock, { connectTimeoutMs: 3_000 });
    h.on("error", () => undefined);
    void h.connect();
    FakeSocket.last.open();
    clock.advance(3_000);
    assert.equal(h.state, "disconnected");
    assert.equal(FakeSocket.all[0]?.closedByClient?.code, 3000);
    h.disconnect();
  });
});

describe("subscriptions", () => {
  it("dedup and order across a reconnect: since, replay, buffer", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    const sub = h.subscribe("room_1");
    const seen: number[] = [];
    sub.on("message", (m) => seen.push(m.seq));
    const s1 = FakeSocket.last;
    s1.reply(s1.lastOp("subscribe"), { channel: "room_1", seq: 0 });
    assert.deepEqual(await sub.ready, { channel: "room_1", seq: 0 });
    for (const q of [1, 2, 3, 2, 3]) {
      s1.message("room_1", q);
    }
    s1.drop();
    assert.equal(sub.state, "subscribing");
    clock.advance(1_000);
    const s2 = FakeSocket.last;
    s2.welcome();
    const req = s2.lastOp("subscribe");
    assert.equal(req.since, 3);
    // A live message before the reply is held, then released in order.
    s2.message("room_1", 6);
    const recovered: Json[] = [];
    sub.on("recovered", (r) => recovered.push(r));
    s2.reply(req, { channel: "room_1", seq: 5, recovered: true, replayed: 2 });
    for (const q of [3, 4, 5, 6, 7]) {
      s2.message("room_1", q);
    }
    assert.deepEqual(seen, [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(recovered, [{ recovered: true, replayed: 2 }]);
    assert.equal(sub.lastSeq, 7);
    h.disconnect();
  });

  it("recovered:false is told and the stream goes on after the server's seq", () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    const sub = h.subscribe("room_1", { since: 10 });
    const events: Json[] = [];
    sub.on("recovered", (r) => events.push(r));
    const seen = seqsOf(h, "room_1");
    const req = FakeSocket.last.lastOp("subscribe");
    assert.equal(req.since, 10);
    FakeSocket.last.reply(req, { channel: "room_1", seq: 20_000, recovered: false, replayed: 0 });
    FakeSocket.last.message("room_1", 20_001);
    assert.deepEqual(events, [{ recovered: false, replayed: 0 }]);
    assert.deepEqual(seen, [20_001]);
    h.disconnect();
  });

  it("a gap on a live connection resubscribes with since and fills it without duplicates", () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    const s = FakeSocket.last;
    s.welcome();
    const sub = h.subscribe("room_1");
    const seen: number[] = [];
    sub.on("message", (m) => seen.push(m.seq));
    s.reply(s.lastOp("subscribe"), { channel: "room_1", seq: 0 });
    s.message("room_1", 1);
    s.message("room_1", 3);
    assert.equal(s.lastOp("unsubscribe").channel, "room_1");
    const again = s.lastOp("subscribe");
    assert.equal(again.since, 1);
    s.message("room_1", 4);
    s.reply(s.lastOp("unsubscribe"));
    s.reply(again, { channel: "room_1", seq: 4, recovered: true, replayed: 3 });
    for (const q of [2, 3, 4, 5]) {
      s.message("room_1", q);
    }
    assert.deepEqual(seen, [1, 2, 3, 4, 5]);
    assert.equal(s.ops("subscribe").length, 2, "one resync only");
    h.disconnect();
  });

  it("automatic subscriptions: created from welcome, recovered with recover=", () => {
    const clock = new FakeClock();
    const h = client(clock);
    const dash = h.subscribe("dashboard_website_12");
    const seen: number[] = [];
    dash.on("message", (m) => seen.push(m.seq));
    const created: string[] = [];
    h.on("subscription", (s) => created.push(s.channel));
    void h.connect();
    assert.equal(FakeSocket.last.query.get("recover"), null);
    FakeSocket.last.welcome([
      { channel: "dashboard_website_12", seq: 991 },
      { channel: "dashboard_user_7", seq: 4 },
    ]);
    assert.deepEqual(FakeSocket.last.ops("subscribe"), [], "declared channel adopted, not subscribed again");
    assert.equal(dash.automatic, true);
    assert.equal(dash.state, "subscribed");
    assert.deepEqual(created, ["dashboard_user_7"]);
    assert.equal(h.subscription("dashboard_user_7")?.lastSeq, 4);
    FakeSocket.last.message("dashboard_website_12", 992);
    FakeSocket.last.drop();
    clock.advance(1_000);
    const q = FakeSocket.last.query.get("recover") ?? "";
    assert.deepEqual(q.split(",").sort(), ["dashboard_user_7:4", "dashboard_website_12:992"]);
    FakeSocket.last.welcome([
      { channel: "dashboard_website_12", seq: 994, recovered: true, replayed: 2 },
      { channel: "dashboard_user_7", seq: 4, recovered: true, replayed: 0 },
    ]);
    FakeSocket.last.message("dashboard_website_12", 993);
    FakeSocket.last.message("dashboard_website_12", 994);
    assert.deepEqual(seen, [992, 993, 994]);
    assert.deepEqual(created, ["dashboard_user_7"], "no duplicate subscription objects");
    h.disconnect();
  });

  it("an app channel that turns out automatic without recover= is resynced, not skipped", () => {
    const clock = new FakeClock();
    const h = client(clock);
    const sub = h.subscribe("dashboard_website_1", { since: 5 });
    const seen = seqsOf(h, "dashboard_website_1");
    void h.connect();
    const s = FakeSocket.last;
    s.welcome([{ channel: "dashboard_website_1", seq: 8 }]);
    assert.equal(s.lastOp("unsubscribe").channel, "dashboard_website_1");
    const req = s.lastOp("subscribe");
    assert.equal(req.since, 5);
    s.reply(s.lastOp("unsubscribe"));
    s.reply(req, { channel: "dashboard_website_1", seq: 8, recovered: true, replayed: 3 });
    for (const q of [6, 7, 8]) {
      s.message("dashboard_website_1", q);
    }
    assert.deepEqual(seen, [6, 7, 8]);
    assert.equal(sub.lastSeq, 8);
    h.disconnect();
  });

  it("a refused subscribe rejects ready, emits error and unsubscribed", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    const sub = h.subscribe("secret_1");
    const ev: string[] = [];
    sub.on("error", (e) => ev.push(`error:${e.code}`));
    sub.on("unsubscribed", (e) => ev.push(`unsubscribed:${e.reason}`));
    FakeSocket.last.replyError(FakeSocket.last.lastOp("subscribe"), "forbidden", "not allowed");
    await assert.rejects(sub.ready, (e: HeraldError) => e.code === "forbidden" && e.channel === "secret_1");
    assert.deepEqual(ev, ["error:forbidden", "unsubscribed:forbidden"]);
    assert.equal(h.subscription("secret_1"), undefined);
    h.disconnect();
  });

  it("unavailable on subscribe is retried on the same connection", () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    h.subscribe("room_1");
    FakeSocket.last.replyError(FakeSocket.last.lastOp("subscribe"), "unavailable");
    clock.advance(5_000);
    assert.equal(FakeSocket.last.ops("subscribe").length, 2);
    h.disconnect();
  });

  it("the server's unsubscribed frame ends the subscription", () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome([{ channel: "room_9", seq: 0 }]);
    const sub = h.subscription("room_9");
    assert.ok(sub);
    const reasons: string[] = [];
    sub.on("unsubscribed", (e) => reasons.push(e.reason));
    FakeSocket.last.receive({ type: "unsubscribed", channel: "room_9", reason: "forbidden" });
    assert.deepEqual(reasons, ["forbidden"]);
    assert.equal(sub.state, "unsubscribed");
    h.disconnect();
  });

  it("unsubscribe() sends the op and stops events", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    const sub = h.subscribe("room_1");
    FakeSocket.last.reply(FakeSocket.last.lastOp("subscribe"), { channel: "room_1", seq: 0 });
    const seen: number[] = [];
    sub.on("message", (m) => seen.push(m.seq));
    const done = sub.unsubscribe();
    FakeSocket.last.reply(FakeSocket.last.lastOp("unsubscribe"));
    await done;
    FakeSocket.last.message("room_1", 1);
    assert.deepEqual(seen, []);
    assert.notEqual(h.subscribe("room_1"), sub, "a new subscription after unsubscribe");
    h.disconnect();
  });

  it("presence and signal events reach the subscription", () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome([{ channel: "room_1", seq: 0 }]);
    const sub = h.subscription("room_1");
    assert.ok(sub);
    const got: Json[] = [];
    sub.on("presence", (e) => got.push(e));
    sub.on("signal", (s) => got.push(s));
    FakeSocket.last.receive({ type: "presence", channel: "room_1", event: "join", client: { sub: "op:1", conn: "c_9" } });
    FakeSocket.last.receive({ type: "signal", channel: "room_1", from: "op:1", data: { typing: true } });
    assert.deepEqual(got, [
      { channel: "room_1", event: "join", client: { sub: "op:1", conn: "c_9" } },
      { channel: "room_1", from: "op:1", data: { typing: true } },
    ]);
    h.disconnect();
  });

  it("a throwing listener is reported and does not stop delivery", () => {
    const clock = new FakeClock();
    const h = client(clock);
    const errors: HeraldError[] = [];
    h.on("error", (e) => errors.push(e));
    void h.connect();
    FakeSocket.last.welcome([{ channel: "room_1", seq: 0 }]);
    const sub = h.subscription("room_1");
    assert.ok(sub);
    const seen: number[] = [];
    sub.on("message", (m) => {
      seen.push(m.seq);
      if (m.seq === 1) {
        throw new Error("app bug");
      }
    });
    FakeSocket.last.message("room_1", 1);
    FakeSocket.last.message("room_1", 2);
    assert.deepEqual(seen, [1, 2]);
    assert.equal(errors.length, 1);
    assert.match(errors[0]?.message ?? "", /app bug/);
    h.disconnect();
  });

  it("rejects bad channel names synchronously", () => {
    const h = client(new FakeClock());
    assert.throws(() => h.subscribe("bad channel"), (e: HeraldError) => e.code === "bad_channel");
    assert.throws(() => h.subscribe(""), (e: HeraldError) => e.code === "bad_channel");
  });
});

describe("publish", () => {
  it("generates a key and reuses it when re-sent after a reconnect", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    const p = h.publish("room_1", { text: "hi" });
    const first = FakeSocket.last.lastOp("publish");
    assert.match(first.key, /^[0-9a-f-]{36}$/);
    FakeSocket.last.drop();
    clock.advance(1_000);
    FakeSocket.last.welcome();
    const again = FakeSocket.last.lastOp("publish");
    assert.equal(again.key, first.key);
    assert.deepEqual(again.data, { text: "hi" });
    FakeSocket.last.reply(again, { id: "m_1", seq: 1, ts: 5 });
    assert.deepEqual(await p, { id: "m_1", seq: 1, ts: 5 });
    h.disconnect();
  });

  it("queues while offline, sends in order after the welcome, keeps a given key", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    const a = h.publish("room_1", 1, { idempotencyKey: "k-a" });
    const b = h.publish("room_1", 2);
    void h.connect();
    const s = FakeSocket.last;
    assert.equal(s.sent.length, 0);
    s.welcome();
    const pubs = s.ops("publish");
    assert.deepEqual(pubs.map((f) => f.data), [1, 2]);
    assert.equal(pubs[0]?.key, "k-a");
    s.reply(pubs[1] as Json, { id: "b", seq: 2, ts: 0 });
    s.reply(pubs[0] as Json, { id: "a", seq: 1, ts: 0 });
    assert.equal((await a).id, "a");
    assert.equal((await b).id, "b");
    h.disconnect();
  });

  it("retries unavailable with the same key; other errors carry the key", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    const s = FakeSocket.last;
    s.welcome();
    const p = h.publish("room_1", 1);
    const first = s.lastOp("publish");
    s.replyError(first, "unavailable");
    await settle();
    clock.advance(10_000);
    await settle();
    const second = s.lastOp("publish");
    assert.notEqual(second.id, first.id);
    assert.equal(second.key, first.key);
    s.replyError(second, "conflict", "key reused");
    await assert.rejects(p, (e: HeraldError) => e.code === "conflict" && e.idempotencyKey === first.key);
    h.disconnect();
  });

  it("pending publishes reject with closed on disconnect()", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    const p = h.publish("room_1", 1);
    h.disconnect();
    await assert.rejects(p, (e: HeraldError) => e.code === "closed");
    await assert.rejects(h.publish("room_1", 1), (e: HeraldError) => e.code === "closed");
  });

  it("times out without a reply", async () => {
    const clock = new FakeClock();
    const h = client(clock, { requestTimeoutMs: 2_000 });
    void h.connect();
    FakeSocket.last.welcome();
    const p = h.publish("room_1", 1, { idempotencyKey: "k" });
    clock.advance(2_000);
    await assert.rejects(p, (e: HeraldError) => e.code === "timeout" && e.idempotencyKey === "k");
    h.disconnect();
  });

  it("refuses frames over maxFrameBytes instead of getting closed with 1009", async () => {
    const clock = new FakeClock();
    const h = client(clock, { maxFrameBytes: 1_000 });
    void h.connect();
    FakeSocket.last.welcome();
    await assert.rejects(h.publish("room_1", "x".repeat(2_000)), (e: HeraldError) => e.code === "too_large");
    h.disconnect();
  });

  it("signal needs a connection; one in flight at a drop rejects with disconnected", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    await assert.rejects(h.signal("room_1", {}), (e: HeraldError) => e.code === "disconnected");
    void h.connect();
    FakeSocket.last.welcome();
    const p = h.signal("room_1", { typing: true });
    FakeSocket.last.drop();
    await assert.rejects(p, (e: HeraldError) => e.code === "disconnected");
    h.disconnect();
  });
});

describe("heartbeats", () => {
  it("pings when idle and drops a socket that answers nothing", () => {
    FakeSocket.autoPong = false;
    const clock = new FakeClock();
    const h = client(clock);
    const disc: Json[] = [];
    h.on("disconnected", (e) => disc.push(e));
    void h.connect();
    const s = FakeSocket.last;
    s.welcome([], 1);
    clock.advance(1_000);
    const ping = s.lastOp("ping");
    s.receive({ type: "pong", id: ping.id });
    clock.advance(900);
    assert.equal(s.ops("ping").length, 1, "no ping while frames are fresh");
    clock.advance(100);
    assert.equal(s.ops("ping").length, 2, "a ping after a heartbeat without frames");
    // Silence since the pong at 1 s: dead at 2 x 1 s + 1 s margin.
    clock.advance(1_900);
    assert.equal(h.state, "connected");
    clock.advance(100);
    assert.equal(h.state, "disconnected");
    assert.equal(disc[0]?.code, 4408);
    assert.equal(s.closedByClient?.code, 3000);
    h.disconnect();
  });

  it("a late timer (throttled tab) pings before judging", () => {
    FakeSocket.autoPong = false;
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    const s = FakeSocket.last;
    s.welcome([], 1);
    // A minute passes with no tick in between.
    clock.jump(60_000);
    assert.equal(h.state, "connected");
    s.receive({ type: "pong", id: s.lastOp("ping").id });
    clock.jump(60_000);
    assert.equal(h.state, "connected");
    assert.equal(s.ops("ping").length, 2);
    // This time the ping stays unanswered.
    clock.advance(2_000);
    assert.equal(h.state, "disconnected");
    h.disconnect();
  });
});

describe("tokens", () => {
  it("refreshes before exp through getToken and the refresh op", async () => {
    const clock = new FakeClock();
    const now = clock.now() / 1000;
    const t1 = jwt({ sub: "a", exp: now + 3600 });
    const t2 = jwt({ sub: "a", exp: now + 7200 });
    const issued = [t1, t2];
    let calls = 0;
    const h = client(clock, { token: undefined, getToken: () => issued[calls++] ?? "x" });
    void h.connect();
    await settle();
    FakeSocket.last.welcome();
    clock.advance(3_570_000 - 1);
    await settle();
    assert.equal(calls, 1);
    clock.advance(1);
    await settle();
    assert.equal(calls, 2);
    const req = FakeSocket.last.lastOp("refresh");
    assert.equal(req.token, t2);
    FakeSocket.last.reply(req);
    await settle();
    assert.equal(h.token, t2);
    // The next refresh: 30 s before the new exp (7200 s - 3570 s - 30 s from now).
    assert.deepEqual(clock.delays().filter((d) => d > 60_000), [3_600_000]);
    h.disconnect();
  });

  it("asks getToken before connecting with an expired token", async () => {
    const clock = new FakeClock();
    const now = clock.now() / 1000;
    const h = client(clock, { token: jwt({ sub: "a", exp: now - 10 }), getToken: () => jwt({ sub: "a", exp: now + 60 }) });
    void h.connect();
    await settle();
    assert.equal(tokenExpiryMs(FakeSocket.last.query.get("token") ?? ""), (now + 60) * 1000);
    h.disconnect();
  });

  it("refresh(token) refused keeps the previous token", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    FakeSocket.last.welcome();
    const p = h.refresh("bad");
    FakeSocket.last.replyError(FakeSocket.last.lastOp("refresh"), "forbidden");
    await assert.rejects(p, (e: HeraldError) => e.code === "forbidden");
    assert.equal(h.token, "t0");
    const ok = h.refresh("good");
    FakeSocket.last.reply(FakeSocket.last.lastOp("refresh"));
    await ok;
    FakeSocket.last.drop();
    clock.advance(1_000);
    assert.equal(FakeSocket.last.query.get("token"), "good");
    h.disconnect();
  });
});

describe("history", () => {
  it("replays over the WebSocket on a channel not held, then leaves it", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    const s = FakeSocket.last;
    s.welcome();
    const p = h.history("room_1", { after: 2, limit: 2 });
    await settle();
    const req = s.lastOp("subscribe");
    assert.equal(req.since, 2);
    s.reply(req, { channel: "room_1", seq: 10, recovered: true, replayed: 8 });
    await settle();
    for (const q of [3, 4, 5]) {
      s.message("room_1", q);
    }
    const page = await p;
    assert.deepEqual(page.map((m) => m.seq), [3, 4]);
    assert.equal(page.lastSeq, 10);
    assert.equal(s.lastOp("unsubscribe").channel, "room_1");
    h.disconnect();
  });

  it("refuses a held channel without the history option; uses the option when given", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    h.subscribe("room_1");
    await assert.rejects(h.history("room_1"), (e: HeraldError) => e.code === "history_unavailable");
    const asked: Json[] = [];
    const g = client(clock, {
      history: async (channel, o) => {
        asked.push({ channel, ...o });
        return { messages: [msg(channel, 5)], last_seq: 9 };
      },
    });
    g.subscribe("room_1");
    const page = await g.history("room_1", { after: 4 });
    assert.deepEqual(asked, [{ channel: "room_1", after: 4, limit: 100 }]);
    assert.deepEqual(page.map((m) => m.seq), [5]);
    assert.equal(page.lastSeq, 9);
  });

  it("an app subscribe during a history replay waits for it", async () => {
    const clock = new FakeClock();
    const h = client(clock);
    void h.connect();
    const s = FakeSocket.last;
    s.welcome();
    const p = h.history("room_1", { after: 0 });
    await settle();
    const sub = h.subscribe("room_1");
    assert.equal(s.ops("subscribe").length, 1, "the app's subscribe is held back");
    s.reply(s.lastOp("subscribe"), { channel: "room_1", seq: 1, recovered: true, replayed: 1 });
    s.message("room_1", 1);
    await p;
    await settle();
    const ops = s.sent.map((f) => f.op);
    assert.deepEqual(ops.slice(-2), ["unsubscribe", "subscribe"]);
    assert.equal(sub.state, "subscribing");
    h.disconnect();
  });
});
