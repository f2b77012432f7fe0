/**
 * The SDK against herald's production topology: a private Redis, one
 * `herald ingest`, two `herald gateway`s (gw-1, gw-2) and a private nginx
 * balancing WebSockets over them. Gateways are SIGKILLed and drained
 * (SIGTERM, 1012) under the client, which must land on the other node and
 * recover there: the app-visible stream stays 1..n, in order, once each,
 * also for automatic subscriptions and for the client's own publishes.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { Herald, type Subscription } from "@herald/client";

import { Cluster, apiHistory, apiPublish, eventually, mintToken, uniq } from "./harness.js";
import { ConnLog, Stream } from "./stream.js";

const T = { timeout: 90_000 };

describe("redis, ingest, two gateways behind nginx", { timeout: 300_000 }, () => {
  let c: Cluster;
  const clients: Herald[] = [];

  before(async () => {
    c = await Cluster.start();
  }, T);

  after(async () => {
    for (const h of clients) {
      h.disconnect();
    }
    await c?.stop();
  });

  function client(sub: string, channels: string[] = []): { h: Herald; log: ConnLog } {
    const h = new Herald(c.wsUrl, {
      getToken: () => mintToken({ sub, channels }),
      reconnect: { minDelayMs: 100, maxDelayMs: 1_000 },
    });
    clients.push(h);
    return { h, log: new ConnLog(h) };
  }

  async function ready(sub: Subscription | undefined): Promise<Subscription> {
    assert.ok(sub);
    await sub.ready;
    return sub;
  }

  it("SIGKILL of the client's gateway: it moves to the other node and loses nothing", T, async () => {
    const ch = uniq("room_");
    const dash = uniq("dashboard_website_");
    const { h, log } = client("op:1", [dash]);
    const room = h.subscribe(ch);
    const dashSub = h.subscribe(dash);
    const rs = new Stream(room);
    const ds = new Stream(dashSub);
    await h.connect();
    await ready(room);
    await ready(dashSub);
    assert.equal(dashSub.automatic, true);
    const first = log.nodes[0] ?? "";
    for (let i = 1; i <= 10; i++) {
      await apiPublish(c.apiUrl, ch, { i });
      await apiPublish(c.apiUrl, dash, { i });
    }
    // Client publishes in flight (or not yet sent) when the node dies.
    const mine = [1, 2, 3].map((i) => h.publish(ch, { i, by: "client" }));
    await c.gateway(first).proc.kill();
    for (let i = 11; i <= 20; i++) {
      await apiPublish(c.apiUrl, ch, { i });
      await apiPublish(c.apiUrl, dash, { i });
    }
    await eventually("a reconnect", () => (log.connects >= 2 ? true : undefined), 30_000);
    assert.notEqual(log.nodes[1], first, "moved to the surviving gateway");
    assert.equal(log.closes[0]?.code, 1006);
    await Promise.all(mine);
    for (let i = 21; i <= 30; i++) {
      await apiPublish(c.apiUrl, ch, { i });
      await apiPublish(c.apiUrl, dash, { i });
    }
    await rs.waitFor(33);
    rs.assertComplete(33);
    await ds.waitFor(30);
    ds.assertComplete(30);
    assert.equal((await apiHistory(c.apiUrl, ch)).length, 33, "client publishes stored once");
    assert.equal(h.welcome?.subs.find((s) => s.channel === dash)?.recovered, true);
    h.disconnect();
    await c.restart(first);
  });

  it("SIGTERM drain (1012): reconnect on the other node with recovery", T, async () => {
    const ch = uniq("room_");
    const { h, log } = client("op:2");
    const sub = h.subscribe(ch);
    const s = new Stream(sub);
    await h.connect();
    await sub.ready;
    const first = log.nodes[0] ?? "";
    for (let i = 1; i <= 5; i++) {
      await apiPublish(c.apiUrl, ch, { i });
    }
    const draining = c.gateway(first).proc.stop();
    await eventually("the drain's 1012", () => (log.closes.length > 0 ? true : undefined), 30_000);
    assert.deepEqual(log.closes.map((x) => [x.code, x.reconnect]), [[1012, true]]);
    for (let i = 6; i <= 10; i++) {
      await apiPublish(c.apiUrl, ch, { i });
    }
    await draining;
    await eventually("a reconnect", () => (log.connects >= 2 ? true : undefined), 30_000);
    assert.notEqual(log.nodes[1], first);
    for (let i = 11; i <= 15; i++) {
      await apiPublish(c.apiUrl, ch, { i });
    }
    await s.waitFor(15);
    s.assertComplete(15);
    h.disconnect();
    await c.restart(first);
  });

  it("clients on both nodes publish to one channel and see the same stream", T, async () => {
    const ch = uniq("room_");
    const a = client("user-a");
    await a.h.connect();
    // Round robin: the next connection goes to the other node; retry a few
    // times in case another connection came in between.
    let b = client("user-b");
    for (let tries = 0; ; tries++) {
      await b.h.connect();
      if (b.log.nodes[0] !== a.log.nodes[0]) {
        break;
      }
      assert.ok(tries < 5, "nginx keeps sending both clients to one node");
      b.h.disconnect();
      b = client("user-b");
    }
    const sa = new Stream(a.h.subscribe(ch));
    const sb = new Stream(b.h.subscribe(ch));
    await Promise.all([a.h.subscription(ch)?.ready, b.h.subscription(ch)?.ready]);
    const writes: Promise<unknown>[] = [];
    for (let i = 1; i <= 10; i++) {
      writes.push(a.h.publish(ch, { i, by: "a" }), b.h.publish(ch, { i, by: "b" }));
    }
    await Promise.all(writes);
    await apiPublish(c.apiUrl, ch, { by: "backend" });
    await sa.waitFor(21);
    await sb.waitFor(21);
    sa.assertComplete(21);
    sb.assertComplete(21);
    assert.deepEqual(
      sa.messages.map((m) => m.id),
      sb.messages.map((m) => m.id),
    );
    a.h.disconnect();
    b.h.disconnect();
  });
});
