/**
 * The SDK against the real `herald dev` (gateway + ingest in one process),
 * reached through a TCP proxy the tests control. Each scenario breaks the
 * connection in its own way and ends with the same check: the app saw the
 * channel's messages 1..n, in order, each once (DESIGN.md guarantees 2 and
 * 3, now at the app's level).
 *
 * herald dev runs with a 500 ms heartbeat (so a stalled socket is noticed
 * in about 2 s) and a 1 s JWT leeway (so short-lived tokens expire fast).
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { Herald, HeraldError, type HeraldOptions, type RecoveredEvent } from "@herald/client";

import {
  DevServer,
  TcpProxy,
  apiHistory,
  apiPublish,
  eventually,
  mintToken,
  signJwt,
  tokenExp,
  uniq,
  type TokenClaims,
} from "./harness.js";
import { ConnLog, Stream, connected } from "./stream.js";

const T = { timeout: 60_000 };

describe("herald dev", { timeout: 300_000 }, () => {
  let dev: DevServer;
  let proxy: TcpProxy;
  const clients: Herald[] = [];

  before(async () => {
    dev = await DevServer.start(["--heartbeat-interval", "500ms", "--jwt-leeway", "1"]);
    proxy = await TcpProxy.start(dev.port);
  }, T);

  after(async () => {
    for (const h of clients) {
      h.disconnect();
    }
    await proxy?.close();
    await dev?.stop();
  });

  /** A client through the proxy, getting tokens for `claims` (default sub `user-1`). */
  function client(claims: Partial<TokenClaims> = {}, opts: HeraldOptions = {}): { h: Herald; log: ConnLog } {
    const h = new Herald(proxy.wsUrl, {
      getToken: () => mintToken({ sub: "user-1", ...claims }),
      reconnect: { minDelayMs: 100, maxDelayMs: 1_000 },
      ...opts,
    });
    clients.push(h);
    if (process.env.DEBUG_SDK) {
      const t0 = Date.now();
      h.on("state", (st) => console.log(Date.now() - t0, "state", st));
      h.on("disconnected", (e) => console.log(Date.now() - t0, "disconnected", e));
      h.on("error", (e) => console.log(Date.now() - t0, "error", e.code, e.message));
    }
    return { h, log: new ConnLog(h) };
  }

  it("messages from the client and the backend arrive once each, in order", T, async () => {
    const ch = uniq("room_");
    const { h } = client();
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    assert.deepEqual(await sub.ready, { channel: ch, seq: 0 });
    const mine = [];
    for (let i = 0; i < 5; i++) {
      mine.push(await h.publish(ch, { i, by: "client" }));
      await apiPublish(dev.apiUrl, ch, { i, by: "backend" });
    }
    await s.waitFor(10);
    s.assertComplete(10);
    for (const r of mine) {
      const m = s.messages.find((x) => x.id === r.id);
      assert.equal(m?.seq, r.seq, "the echo of a publish is its one delivery");
      assert.equal(m?.ts, r.ts);
      assert.equal(m?.from, "user-1");
    }
    assert.equal(s.messages.find((m) => m.from === "backend")?.seq, 2);
    assert.equal(sub.lastSeq, 10);
    h.disconnect();
  });

  it("sockets severed mid-stream: no gap, no duplicate", T, async () => {
    const ch = uniq("room_");
    const { h, log } = client();
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    await sub.ready;
    for (let i = 1; i <= 60; i++) {
      if (i === 10 || i === 25 || i === 40) {
        const before = log.connects;
        proxy.sever();
        // A few publishes land while the client is away...
        for (let k = 0; k < 3; k++, i++) {
          await apiPublish(dev.apiUrl, ch, { i });
        }
        // ...and it is back (with since) before the next cut.
        await eventually("a reconnect", () => (log.connects > before ? true : undefined), 20_000);
      }
      await apiPublish(dev.apiUrl, ch, { i });
    }
    await s.waitFor(60);
    s.assertComplete(60);
    assert.ok(log.connects >= 4, `reconnected after each cut (connects: ${log.connects})`);
    assert.ok(log.closes.every((c) => c.code === 1006 && c.reconnect));
    h.disconnect();
  });

  it("publishes during an outage: the client's are sent once on reconnect, the backend's are recovered", T, async () => {
    const ch = uniq("room_");
    const { h, log } = client();
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    await sub.ready;
    await apiPublish(dev.apiUrl, ch, { n: "before" });
    await s.waitFor(1);
    proxy.refusing = true;
    proxy.sever();
    await eventually("the client to notice", () => (h.state !== "connected" ? true : undefined));
    const mine = [1, 2, 3, 4, 5].map((i) => h.publish(ch, { i, by: "client" }));
    for (let i = 1; i <= 5; i++) {
      await apiPublish(dev.apiUrl, ch, { i, by: "backend" });
    }
    await eventually("a refused attempt", () => (log.errors.includes("transport") ? true : undefined), 20_000);
    proxy.refusing = false;
    const results = await Promise.all(mine);
    await s.waitFor(11);
    s.assertComplete(11);
    const stored = await apiHistory(dev.apiUrl, ch);
    assert.equal(stored.length, 11, "each client publish stored once");
    assert.deepEqual(
      results.map((r) => r.seq),
      results.map((r) => stored.find((m) => m.id === r.id)?.seq),
    );
    // The client's queued publishes went out in the order they were made.
    const order = s.messages.filter((m) => (m.data as { by?: string }).by === "client").map((m) => (m.data as { i: number }).i);
    assert.deepEqual(order, [1, 2, 3, 4, 5]);
    h.disconnect();
  });

  it("a publish whose reply was lost is re-sent with the same key and stored once", T, async () => {
    const ch = uniq("room_");
    const { h, log } = client();
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    await sub.ready;
    await h.subscription(ch)?.ready;
    // The request reaches herald; nothing comes back.
    proxy.mute();
    const p = h.publish(ch, { text: "exactly once" });
    await eventually("the publish to be committed", async () => ((await apiHistory(dev.apiUrl, ch)).length === 1 ? true : undefined));
    const before = log.connects;
    proxy.sever();
    const r = await p;
    assert.ok(log.connects > before);
    const stored = await apiHistory(dev.apiUrl, ch);
    assert.equal(stored.length, 1, "the retry with the same key stored nothing new");
    assert.equal(r.id, stored[0]?.id, "the retry answered with the first result");
    await s.waitFor(1);
    s.assertComplete(1);
    h.disconnect();
  });

  it("a stalled socket (no close) is found dead by the heartbeat and recovered", T, async () => {
    const ch = uniq("room_");
    const { h, log } = client();
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    await sub.ready;
    await apiPublish(dev.apiUrl, ch, { i: 1 });
    await s.waitFor(1);
    proxy.stall();
    for (let i = 2; i <= 6; i++) {
      await apiPublish(dev.apiUrl, ch, { i });
    }
    await eventually("the dead socket to be noticed", () => (log.closes.length > 0 ? true : undefined), 20_000);
    assert.equal(log.closes[0]?.code, 4408);
    assert.equal(log.closes[0]?.reconnect, true);
    await s.waitFor(6);
    await apiPublish(dev.apiUrl, ch, { i: 7 });
    await s.waitFor(7);
    s.assertComplete(7);
    h.disconnect();
  });

  it("automatic subscriptions (token channels) recover through recover= on reconnect", T, async () => {
    const dash = uniq("dashboard_website_");
    const { h, log } = client({ channels: [dash] });
    // Declared before connecting: adopted by the welcome, no message missed.
    const sub = h.subscribe(dash);
    const s = new Stream(sub);
    const recovered: RecoveredEvent[] = [];
    sub.on("recovered", (r) => recovered.push(r));
    const welcome = await h.connect();
    assert.deepEqual(welcome.subs, [{ channel: dash, seq: 0 }]);
    assert.equal(sub.automatic, true);
    for (let i = 1; i <= 5; i++) {
      await apiPublish(dev.apiUrl, dash, { i });
    }
    await s.waitFor(5);
    proxy.sever();
    for (let i = 6; i <= 10; i++) {
      await apiPublish(dev.apiUrl, dash, { i });
    }
    await eventually("a reconnect", () => (log.connects >= 2 ? true : undefined), 20_000);
    for (let i = 11; i <= 15; i++) {
      await apiPublish(dev.apiUrl, dash, { i });
    }
    await s.waitFor(15);
    s.assertComplete(15);
    assert.equal(recovered.length, 1);
    assert.equal(recovered[0]?.recovered, true);
    const second = h.welcome?.subs.find((x) => x.channel === dash);
    assert.equal(second?.recovered, true, "the server recovered it from recover=");
    h.disconnect();
  });

  it("msgpack: the same guarantees, and data survives the encoding", T, async () => {
    const ch = uniq("room_");
    const { h, log } = client({}, { encoding: "msgpack" });
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    await sub.ready;
    const data = (i: number) => ({ i, text: "Grüße, 你好 👋", nested: { list: [1, 2.5, null, true], empty: {} } });
    for (let i = 1; i <= 20; i++) {
      if (i === 8) {
        const before = log.connects;
        proxy.sever();
        await apiPublish(dev.apiUrl, ch, data(i));
        await eventually("a reconnect", () => (log.connects > before ? true : undefined), 20_000);
        continue;
      }
      if (i % 2 === 0) {
        await h.publish(ch, data(i));
      } else {
        await apiPublish(dev.apiUrl, ch, data(i));
      }
    }
    await s.waitFor(20);
    s.assertComplete(20);
    assert.deepEqual(
      s.messages.map((m) => m.data),
      Array.from({ length: 20 }, (_, k) => data(k + 1)),
    );
    h.disconnect();
  });

  it("tokens are refreshed before they expire: no disconnect", T, async () => {
    const ch = uniq("room_");
    const issued: string[] = [];
    const { h, log } = client(
      {},
      {
        getToken: () => {
          const t = mintToken({ sub: "user-1", ttl: 3 });
          issued.push(t);
          return t;
        },
      },
    );
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    await sub.ready;
    const firstExp = tokenExp(issued[0] ?? "");
    // Past the first token's expiry plus herald's leeway: it would have
    // been closed with 4004 without a refresh.
    await eventually(
      "the first token's expiry to pass",
      () => (issued.length >= 2 && Date.now() > firstExp * 1000 + 1_500 ? true : undefined),
      20_000,
    );
    for (let i = 1; i <= 3; i++) {
      await apiPublish(dev.apiUrl, ch, { i });
    }
    await s.waitFor(3);
    s.assertComplete(3);
    assert.deepEqual(log.closes, [], "never disconnected");
    assert.equal(log.connects, 1);
    h.disconnect();
  });

  it("an expired token: with getToken the client reconnects with recovery; without it, it stays closed", T, async () => {
    const ch = uniq("room_");
    let calls = 0;
    const a = client(
      {},
      {
        autoRefresh: false,
        getToken: () => {
          calls += 1;
          return mintToken({ sub: "user-a", ttl: calls === 1 ? 2 : 3600 });
        },
      },
    );
    const b = new Herald(proxy.wsUrl, { token: mintToken({ sub: "user-b", ttl: 2 }) });
    clients.push(b);
    const bLog = new ConnLog(b);
    const subA = a.h.subscribe(ch);
    const s = new Stream(subA);
    if (process.env.DEBUG_SDK) {
      a.h.on("state", (st) => console.log(Date.now(), "A state", st));
      a.h.on("disconnected", (e) => console.log(Date.now(), "A disc", e));
      subA.on("subscribed", (r) => console.log(Date.now(), "A subscribed", r));
      subA.on("message", (m) => console.log(Date.now(), "A msg", m.seq));
      subA.on("recovered", (m) => console.log(Date.now(), "A recovered", m));
    }
    b.subscribe(ch);
    await Promise.all([a.h.connect(), b.connect()]);
    await subA.ready;
    await apiPublish(dev.apiUrl, ch, { i: 1 });
    await eventually("both tokens to expire", () => (a.log.closes.length > 0 && b.state === "closed" ? true : undefined), 20_000);
    await apiPublish(dev.apiUrl, ch, { i: 2 });
    await connected(a.h);
    await apiPublish(dev.apiUrl, ch, { i: 3 });
    await s.waitFor(3);
    s.assertComplete(3);
    assert.deepEqual(
      a.log.closes.map((c) => [c.code, c.reconnect]),
      [[4004, true]],
    );
    assert.equal(calls, 2, "getToken asked again after 4004");
    assert.deepEqual(bLog.closes.map((c) => [c.code, c.reconnect]), [[4004, false]]);
    assert.deepEqual(bLog.errors, ["token_expired"]);
    a.h.disconnect();
  });

  it("a refused token closes the client without retrying", T, async () => {
    const before = proxy.accepted;
    const h = new Herald(proxy.wsUrl, { token: signJwt({ sub: "x", exp: Math.floor(Date.now() / 1000) + 60 }, "wrong-secret") });
    clients.push(h);
    const log = new ConnLog(h);
    await assert.rejects(h.connect(), (e: HeraldError) => e.code === "unauthorized" && e.closeCode === 4001);
    assert.equal(h.state, "closed");
    assert.deepEqual(log.closes.map((c) => [c.code, c.reconnect]), [[4001, false]]);
    assert.equal(proxy.accepted - before, 1, "one attempt only");
  });

  it("history over the WebSocket, then a subscription that continues after it", T, async () => {
    const ch = uniq("room_");
    for (let i = 1; i <= 5; i++) {
      await apiPublish(dev.apiUrl, ch, { i });
    }
    const { h } = client();
    await h.connect();
    const page = await h.history(ch, { after: 1, limit: 3 });
    assert.deepEqual(page.map((m) => m.seq), [2, 3, 4]);
    assert.equal(page.lastSeq, 5);
    assert.deepEqual(page[0]?.data, { i: 2 });
    const empty = await h.history(ch, { after: 5 });
    assert.equal(empty.length, 0);
    const sub = h.subscribe(ch, { since: 4 });
    const s = new Stream(sub);
    await sub.ready;
    await s.waitFor(1);
    assert.deepEqual(s.seqs, [5]);
    await assert.rejects(h.history(ch), (e: HeraldError) => e.code === "history_unavailable");
    h.disconnect();
  });

  it("presence and signals between two clients", T, async () => {
    const ch = uniq("room_");
    const a = client({ sub: "user-a", info: { name: "A" } });
    const b = client({ sub: "user-b", info: { name: "B" } });
    const subA = a.h.subscribe(ch);
    const joins: string[] = [];
    const signals: unknown[] = [];
    subA.on("presence", (e) => joins.push(`${e.event}:${e.client.sub}`));
    subA.on("signal", (x) => signals.push([x.from, x.data]));
    await a.h.connect();
    await subA.ready;
    const subB = b.h.subscribe(ch);
    await b.h.connect();
    await subB.ready;
    await eventually("B's join", () => (joins.includes("join:user-b") ? true : undefined));
    await b.h.signal(ch, { typing: true });
    await eventually("B's signal", () => (signals.length > 0 ? true : undefined));
    assert.deepEqual(signals, [["user-b", { typing: true }]]);
    const who = await a.h.presence(ch);
    assert.deepEqual(who.map((c) => c.sub).sort(), ["user-a", "user-b"]);
    assert.deepEqual(who.find((c) => c.sub === "user-b")?.info, { name: "B" });
    await subB.unsubscribe();
    await eventually("B's leave", () => (joins.includes("leave:user-b") ? true : undefined));
    a.h.disconnect();
    b.h.disconnect();
  });

  // Last: it restarts the server.
  it("SIGTERM drain (1012): the client reconnects to the restarted server with recovery", T, async () => {
    const ch = uniq("room_");
    const { h, log } = client();
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    await sub.ready;
    for (let i = 1; i <= 5; i++) {
      await apiPublish(dev.apiUrl, ch, { i });
    }
    await s.waitFor(5);
    const draining = dev.terminate();
    await eventually("the drain's 1012", () => (log.closes.some((c) => c.code === 1012) ? true : undefined), 20_000);
    assert.equal(log.closes[0]?.reconnect, true);
    await draining;
    // The client publishes while the server is down: queued, sent once.
    const mine = [1, 2, 3].map((i) => h.publish(ch, { i, by: "client" }));
    await dev.restart();
    proxy.target = dev.port;
    for (let i = 6; i <= 8; i++) {
      await apiPublish(dev.apiUrl, ch, { i });
    }
    await Promise.all(mine);
    await s.waitFor(11);
    s.assertComplete(11);
    assert.equal((await apiHistory(dev.apiUrl, ch)).length, 11);
    h.disconnect();
  });
});
