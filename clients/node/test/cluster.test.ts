/**
 * The SDK against herald's production topology: a private Redis, one
 * `herald ingest` (the SDK's URL) and one `herald gateway` (the WebSocket
 * subscribers'), so every message and signal crosses the Redis bus. Ends by
 * killing Redis: what ingest cannot serve without it is UnavailableError
 * once the SDK's retries are spent, while publishes still commit.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { Herald, UnavailableError, mintToken } from "@herald/server";

import { type Cluster, eventually, startCluster, uniq } from "./harness.js";
import { WsClient } from "./ws.js";

const T = { timeout: 60_000 };

describe("redis, ingest and gateway", { timeout: 300_000 }, () => {
  let c: Cluster;
  let h: Herald;
  const sockets: WsClient[] = [];

  before(async () => {
    c = await startCluster();
    h = new Herald({ url: c.apiUrl, apiKey: c.apiKey, retryBaseMs: 20 });
  }, T);

  after(async () => {
    await Promise.all(sockets.map((s) => s.close()));
    await c?.stop();
  });

  async function subscriber(sub: string, channels: string[], info?: Record<string, string>) {
    const t = mintToken({ secret: c.jwtSecret, sub, channels, ttlSeconds: 60, ...(info ? { info } : {}) });
    const r = await WsClient.connect(c.wsUrl, t);
    sockets.push(r.ws);
    return r;
  }

  it("a publish to two channels reaches a gateway subscriber over Redis", T, async () => {
    const chat = uniq("chat_");
    const dash = uniq("dashboard_website_");
    const { ws, welcome } = await subscriber("op:1", [chat, dash]);
    assert.equal(welcome.node, "gw-1");
    const r = await h.publish([chat, dash], { content: "Hello" }, { from: "visitor:abc" });
    assert.deepEqual(r.seqs, { [chat]: 1, [dash]: 1 });
    for (const ch of [chat, dash]) {
      const m = await ws.next((f) => f.type === "message" && f.channel === ch);
      assert.deepEqual(m, {
        type: "message",
        channel: ch,
        seq: 1,
        id: r.id,
        ts: r.ts,
        from: "visitor:abc",
        data: { content: "Hello" },
      });
    }
    const one = await h.publish(chat, { n: 2 });
    assert.equal((await ws.next((f) => f.type === "message" && f.channel === chat)).seq, 2);
    assert.deepEqual(await h.positions([chat, dash]), { [chat]: 2, [dash]: 1 });
    const seqs: number[] = [];
    for await (const m of h.historyMessages(chat, { limit: 1 })) {
      seqs.push(m.seq);
    }
    assert.deepEqual(seqs, [1, 2]);
    assert.equal((await h.history(chat, { after: 1 })).messages[0]?.id, one.id);
  });

  it("signals cross the bus; presence is read from Redis", T, async () => {
    const ch = uniq("chat_");
    const { ws, welcome } = await subscriber("op:2", [ch], { name: "Op Two" });
    await h.signal(ch, { typing: true }, { from: "visitor:abc" });
    assert.deepEqual(await ws.next((f) => f.type === "signal" && f.channel === ch), {
      type: "signal",
      channel: ch,
      from: "visitor:abc",
      data: { typing: true },
    });
    const clients = await eventually("op:2 in presence", async () => {
      const l = await h.presence(ch);
      return l.length > 0 ? l : undefined;
    });
    assert.deepEqual(clients, [{ sub: "op:2", conn: welcome.conn, info: { name: "Op Two" } }]);
  });

  it("with Redis down: signal and presence are UnavailableError, publish still commits", T, async () => {
    const ch = uniq("chat_");
    await c.redis.kill();
    const once = new Herald({ url: c.apiUrl, apiKey: c.apiKey, retries: 1, retryBaseMs: 20 });
    await assert.rejects(once.signal(ch, { typing: true }), (e: unknown) => {
      assert.ok(e instanceof UnavailableError, String(e));
      assert.equal(e.status, 503);
      assert.equal(e.code, "unavailable");
      return true;
    });
    await assert.rejects(once.presence(ch), UnavailableError);
    // The store is SQLite: the commit needs no Redis (PROTOCOL.md section 8).
    const r = await h.publish(ch, { during: "outage" });
    assert.deepEqual(r.seqs, { [ch]: 1 });
    assert.equal((await h.history(ch)).messages[0]?.id, r.id);
  });
});
