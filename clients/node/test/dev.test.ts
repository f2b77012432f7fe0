/**
 * The SDK against a real `herald dev` (gateway and ingest in one process,
 * SQLite): publishes reach WebSocket subscribers, idempotent retries store
 * once, history, positions, presence, signals, every error answer herald
 * gives, and tokens minted here accepted (or refused) by herald's verifier.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";

import {
  BadChannelError,
  BadRequestError,
  ConflictError,
  Herald,
  HeraldError,
  NotFoundError,
  TooLargeError,
  UnauthorizedError,
  mintToken,
  subscriptionToken,
  type MintTokenOptions,
} from "@herald/server";

import { type Deployment, eventually, heraldBin, startDev, uniq } from "./harness.js";
import { lossyProxy } from "./stub.js";
import { WsClient } from "./ws.js";

const T = { timeout: 60_000 };

/** Key pairs herald is configured with, by kid. */
const es = generateKeyPairSync("ec", { namedCurve: "P-256" });
const rs = generateKeyPairSync("rsa", { modulusLength: 2048 });
const ed = generateKeyPairSync("ed25519");
const pub = (k: typeof es.publicKey): string => k.export({ type: "spki", format: "pem" }).toString();
const priv = (k: typeof es.privateKey): string => k.export({ type: "pkcs8", format: "pem" }).toString();
const CONFIG = [
  ["es-1", "ES256", pub(es.publicKey)],
  ["rs-1", "RS256", pub(rs.publicKey)],
  ["ed-1", "EdDSA", pub(ed.publicKey)],
]
  .map(([kid, alg, pem]) => `[[auth.keys]]\nkid = "${kid}"\nalg = "${alg}"\npublic_key_pem = '''\n${pem}'''\n`)
  .join("\n");

describe("herald dev", { timeout: 300_000 }, () => {
  let d: Deployment;
  let h: Herald;
  const sockets: WsClient[] = [];

  before(async () => {
    d = await startDev(CONFIG);
    h = new Herald({ url: d.apiUrl, apiKey: d.apiKey, retryBaseMs: 20 });
  }, T);

  after(async () => {
    await Promise.all(sockets.map((s) => s.close()));
    await d?.stop();
  });

  function token(o: Partial<MintTokenOptions> & { sub?: string }): string {
    return mintToken({ secret: d.jwtSecret, sub: "op:1", ttlSeconds: 60, ...o } as MintTokenOptions);
  }

  async function subscriber(o: Partial<MintTokenOptions>) {
    const c = await WsClient.connect(d.wsUrl, token(o));
    sockets.push(c.ws);
    return c;
  }

  it("publish to one channel reaches a subscriber", T, async () => {
    const ch = uniq("chat_");
    const { ws, welcome } = await subscriber({ channels: [ch] });
    assert.deepEqual(welcome.subs, [{ channel: ch, seq: 0 }]);
    const data = { content: "Hello from customer", role: "user" };
    const r = await h.publish(ch, data, { from: "visitor:abc" });
    assert.equal(typeof r.id, "string");
    assert.equal(typeof r.ts, "number");
    assert.deepEqual(r.seqs, { [ch]: 1 });
    const m = await ws.next((f) => f.type === "message" && f.channel === ch);
    assert.deepEqual(m, { type: "message", channel: ch, seq: 1, id: r.id, ts: r.ts, from: "visitor:abc", data });
  });

  it("publish to two channels: one id, one seq per channel, both delivered", T, async () => {
    const chat = uniq("chat_");
    const dash = uniq("dashboard_website_");
    const { ws } = await subscriber({ channels: [chat, dash] });
    await h.publish(dash, { earlier: true });
    const r = await h.publish([chat, dash], { content: "hi" });
    assert.deepEqual(r.seqs, { [chat]: 1, [dash]: 2 });
    const a = await ws.next((f) => f.type === "message" && f.channel === chat);
    const b = await ws.next((f) => f.type === "message" && f.channel === dash && f.seq === 2);
    assert.equal(a.id, r.id);
    assert.equal(b.id, r.id);
    assert.equal(a.from, undefined);
    // A one-element array is the one-channel form.
    const one = await h.publish([chat], { n: 2 });
    assert.deepEqual(one.seqs, { [chat]: 2 });
  });

  it("an answer lost after the commit is retried with the same key and stored once", T, async () => {
    const ch = uniq("chat_");
    const proxy = await lossyProxy(d.apiUrl, 1);
    try {
      const hp = new Herald({ url: proxy.url, apiKey: d.apiKey, retryBaseMs: 20 });
      const r = await hp.publish(ch, { n: 1 });
      assert.equal(proxy.dropped.length, 1);
      assert.equal(proxy.dropped[0]?.status, 200);
      const first = JSON.parse(proxy.dropped[0]?.body ?? "") as { id: string };
      assert.equal(r.id, first.id, "the retry returns the first attempt's message");
      assert.equal(proxy.seen.length, 2);
      const keys = proxy.seen.map((s) => (JSON.parse(s.body) as { key: string }).key);
      assert.equal(keys[0], keys[1]);
      const page = await h.history(ch);
      assert.equal(page.lastSeq, 1);
      assert.deepEqual(
        page.messages.map((m) => m.id),
        [r.id],
      );
    } finally {
      await proxy.close();
    }
  });

  it("the same idempotency key returns the first result; other data is ConflictError", T, async () => {
    const ch = uniq("chat_");
    const a = await h.publish(ch, { n: 1 }, { idempotencyKey: "order-7" });
    const b = await h.publish(ch, { n: 1 }, { idempotencyKey: "order-7" });
    assert.deepEqual(b, a);
    await assert.rejects(h.publish(ch, { n: 2 }, { idempotencyKey: "order-7" }), (e: unknown) => {
      assert.ok(e instanceof ConflictError);
      assert.equal(e.status, 409);
      assert.equal(e.code, "conflict");
      return true;
    });
    assert.equal((await h.positions([ch]))[ch], 1);
  });

  it("history pages and iterators", T, async () => {
    const ch = uniq("chat_");
    const ids: string[] = [];
    for (let i = 1; i <= 5; i++) {
      ids.push((await h.publish(ch, { i }, { from: "bot" })).id);
    }
    const page = await h.history<{ i: number }>(ch, { limit: 2 });
    assert.equal(page.lastSeq, 5);
    assert.deepEqual(
      page.messages.map((m) => [m.seq, m.data.i, m.from, m.channel, m.id]),
      [
        [1, 1, "bot", ch, ids[0]],
        [2, 2, "bot", ch, ids[1]],
      ],
    );
    const later = await h.history(ch, { after: 4 });
    assert.deepEqual(
      later.messages.map((m) => m.seq),
      [5],
    );
    const pages: number[][] = [];
    for await (const p of h.historyPages(ch, { limit: 2 })) {
      pages.push(p.messages.map((m) => m.seq));
    }
    assert.deepEqual(pages, [[1, 2], [3, 4], [5]]);
    const seqs: number[] = [];
    for await (const m of h.historyMessages(ch, { after: 2, limit: 2 })) {
      seqs.push(m.seq);
    }
    assert.deepEqual(seqs, [3, 4, 5]);

    const empty = uniq("chat_");
    assert.deepEqual(await h.history(empty), { messages: [], lastSeq: 0 });
    for await (const _ of h.historyPages(empty)) {
      assert.fail("an empty channel has no pages");
    }
  });

  it("positions", T, async () => {
    const a = uniq("chat_");
    const b = uniq("chat_");
    await h.publish(a, 1);
    await h.publish([a, b], 2);
    const never = uniq("chat_");
    assert.deepEqual(await h.positions([a, b, never]), { [a]: 2, [b]: 1, [never]: 0 });
    assert.deepEqual(await h.positions([]), {});
  });

  it("presence lists subscribed clients with their info", T, async () => {
    const ch = uniq("chat_");
    assert.deepEqual(await h.presence(ch), []);
    const { ws, welcome } = await subscriber({ sub: "op:42", channels: [ch], info: { name: "Purna Acharya" } });
    const clients = await eventually("op:42 in presence", async () => {
      const c = await h.presence(ch);
      return c.length > 0 ? c : undefined;
    });
    assert.deepEqual(clients, [{ sub: "op:42", conn: welcome.conn, info: { name: "Purna Acharya" } }]);
    await ws.close();
    await eventually("op:42 gone from presence", async () => ((await h.presence(ch)).length === 0 ? true : undefined));
  });

  it("signals reach subscribers and are never stored", T, async () => {
    const ch = uniq("chat_");
    const { ws } = await subscriber({ channels: [ch] });
    await h.signal(ch, { typing: true }, { from: "op:7" });
    const s = await ws.next((f) => f.type === "signal" && f.channel === ch);
    assert.deepEqual(s, { type: "signal", channel: ch, from: "op:7", data: { typing: true } });
    await h.signal(ch, "no from");
    const s2 = await ws.next((f) => f.type === "signal" && f.channel === ch);
    assert.equal(s2.from, undefined);
    assert.deepEqual(await h.positions([ch]), { [ch]: 0 });
  });

  it("each error answer herald gives is its class", T, async () => {
    const ch = uniq("chat_");
    const is =
      (cls: new (...a: never[]) => HeraldError, code: string, status: number) =>
      (e: unknown): boolean => {
        assert.ok(e instanceof cls, `${String(e)} is not a ${cls.name}`);
        assert.ok(e instanceof HeraldError);
        assert.equal(e.code, code);
        assert.equal(e.status, status);
        assert.ok(e.message.length > 0);
        return true;
      };
    await assert.rejects(h.publish("bad channel", 1), is(BadChannelError, "bad_channel", 400));
    await assert.rejects(h.history("bad channel"), is(BadChannelError, "bad_channel", 400));
    await assert.rejects(h.positions([ch, "no/slash"]), is(BadChannelError, "bad_channel", 400));
    await assert.rejects(h.history(ch, { limit: 0 }), is(BadRequestError, "bad_request", 400));
    await assert.rejects(h.publish([], 1), is(BadRequestError, "bad_request", 400));
    await assert.rejects(h.publish([ch, ch], 1), is(BadRequestError, "bad_request", 400));
    await assert.rejects(h.publish(ch, 1, { idempotencyKey: "k".repeat(257) }), is(BadRequestError, "bad_request", 400));
    await assert.rejects(h.publish(ch, "x".repeat(17 * 1024)), is(TooLargeError, "too_large", 413));
    const wrongKey = new Herald({ url: d.apiUrl, apiKey: "wrong" });
    await assert.rejects(wrongKey.publish(ch, 1), is(UnauthorizedError, "unauthorized", 401));
    await assert.rejects(wrongKey.presence(ch), is(UnauthorizedError, "unauthorized", 401));
    // A base URL that already ends in /v1: herald's own 404 body.
    const doubled = new Herald({ url: `${d.apiUrl}/v1`, apiKey: d.apiKey });
    await assert.rejects(doubled.publish(ch, 1), is(NotFoundError, "not_found", 404));
    // Outside /v1 the dev router answers a bare 404: classified by status.
    const elsewhere = new Herald({ url: `${d.apiUrl}/nope`, apiKey: d.apiKey });
    await assert.rejects(elsewhere.publish(ch, 1), is(NotFoundError, "http_404", 404));
    assert.deepEqual(await h.positions([ch]), { [ch]: 0 }, "no failed publish stored anything");
  });

  it("HS256 tokens: the claims of `herald token`, accepted by herald", T, async () => {
    const ch = uniq("dashboard_user_");
    const out = await promisify(execFile)(heraldBin(), [
      "token",
      "--jwt-secret", d.jwtSecret,
      "--sub", "op:42",
      "--channels", ch,
      "--allow-subscribe", "chat_*",
      "--allow-publish", "chat_1,chat_2",
      "--allow-presence", "chat_*",
      "--info", '{"name":"Purna"}',
      "--ttl", "3600",
    ]);
    const theirs = out.stdout.trim();
    const claims = (t: string): Record<string, unknown> =>
      JSON.parse(Buffer.from(t.split(".")[1] ?? "", "base64url").toString()) as Record<string, unknown>;
    const iat = claims(theirs).iat as number;
    const mine = mintToken({
      secret: d.jwtSecret,
      sub: "op:42",
      channels: [ch],
      allow: { subscribe: ["chat_*"], publish: ["chat_1", "chat_2"], presence: ["chat_*"] },
      info: { name: "Purna" },
      ttlSeconds: 3600,
      now: iat,
    });
    assert.deepEqual(claims(mine), claims(theirs));
    for (const t of [mine, theirs]) {
      const { ws, welcome } = await WsClient.connect(d.wsUrl, t);
      sockets.push(ws);
      assert.deepEqual(welcome.subs, [{ channel: ch, seq: 0 }]);
      const r = await ws.request("subscribe", { channel: "chat_9" });
      assert.deepEqual(r.result, { channel: "chat_9", seq: 0 });
      await ws.close();
    }
  });

  it("ES256, RS256 and EdDSA tokens signed with configured keys are accepted", T, async () => {
    for (const [kid, key] of [
      ["es-1", priv(es.privateKey)],
      ["rs-1", priv(rs.privateKey)],
      ["ed-1", priv(ed.privateKey)],
    ] as const) {
      const ch = uniq("chat_");
      const t = mintToken({ privateKeyPem: key, kid, sub: `u:${kid}`, channels: [ch], ttlSeconds: 60 });
      const { ws, welcome } = await WsClient.connect(d.wsUrl, t);
      sockets.push(ws);
      assert.deepEqual(welcome.subs, [{ channel: ch, seq: 0 }], kid);
      const r = await h.publish(ch, { kid });
      const m = await ws.next((f) => f.type === "message" && f.channel === ch);
      assert.equal(m.id, r.id);
      await ws.close();
    }
    // Signed with an ES256 key herald does not know under that kid: 4001.
    const stranger = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const bad = mintToken({ privateKeyPem: stranger.privateKey, kid: "es-1", sub: "u", ttlSeconds: 60 });
    const ws = await WsClient.open(d.wsUrl, bad);
    const disc = await ws.next((f) => f.type === "disconnect");
    assert.equal(disc.code, 4001);
    assert.equal((await ws.closed).code, 4001);
  });

  it("a token signed with another secret is closed with 4001", T, async () => {
    const t = mintToken({ secret: "not-the-secret", sub: "u", channels: ["chat_1"], ttlSeconds: 60 });
    const ws = await WsClient.open(d.wsUrl, t);
    const disc = await ws.next((f) => f.type === "disconnect");
    assert.equal(disc.code, 4001);
    assert.equal((await ws.closed).code, 4001);
  });

  it("an expired token is closed with 4004", T, async () => {
    const t = token({ now: Math.floor(Date.now() / 1000) - 3600, ttlSeconds: 60 });
    const ws = await WsClient.open(d.wsUrl, t);
    assert.equal((await ws.closed).code, 4004);
  });

  it("a subscription token grants its one channel to its sub", T, async () => {
    const ch = uniq("chat_");
    const other = uniq("chat_");
    const { ws } = await subscriber({ sub: "visitor:9" });
    const sub = subscriptionToken({ secret: d.jwtSecret, sub: "visitor:9", channel: ch, ttlSeconds: 60 });
    assert.equal((await ws.request("subscribe", { channel: other })).error?.code, "forbidden");
    assert.equal((await ws.request("subscribe", { channel: other, token: sub })).error?.code, "forbidden");
    const forSomeoneElse = subscriptionToken({ secret: d.jwtSecret, sub: "visitor:10", channel: ch, ttlSeconds: 60 });
    assert.equal((await ws.request("subscribe", { channel: ch, token: forSomeoneElse })).error?.code, "forbidden");
    assert.deepEqual((await ws.request("subscribe", { channel: ch, token: sub })).result, { channel: ch, seq: 0 });
    const r = await h.publish(ch, "granted");
    assert.equal((await ws.next((f) => f.type === "message" && f.channel === ch)).id, r.id);
  });
});
