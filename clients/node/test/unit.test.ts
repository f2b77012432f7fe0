/**
 * The SDK on its own: names, token encoding, webhook signatures, and the
 * client's error classes, retries and timeouts against local stub servers
 * (for the answers herald cannot be made to give: 429, 500, silence).
 * Everything herald does answer is tested against herald in dev.test.ts
 * and cluster.test.ts.
 */

import assert from "node:assert/strict";
import { createHmac, createPublicKey, generateKeyPairSync, verify } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";

import {
  BadChannelError,
  BadRequestError,
  ConflictError,
  Herald,
  HeraldError,
  InternalError,
  NotFoundError,
  RateLimitedError,
  TooLargeError,
  TransportError,
  UnauthorizedError,
  UnavailableError,
  VERSION,
  WebhookSignatureError,
  errorFor,
  isValidChannel,
  isValidPattern,
  mintToken,
  patternMatches,
  signWebhook,
  subscriptionToken,
  verifyWebhook,
  type WebhookEvent,
} from "@herald/server";

import { PKG_DIR, freePort } from "./harness.js";
import { errorBody, stub } from "./stub.js";

function decode(token: string): { header: Record<string, unknown>; claims: Record<string, unknown>; sig: Buffer } {
  const [h, p, s] = token.split(".");
  assert.ok(h !== undefined && p !== undefined && s !== undefined, "three parts");
  return {
    header: JSON.parse(Buffer.from(h, "base64url").toString()) as Record<string, unknown>,
    claims: JSON.parse(Buffer.from(p, "base64url").toString()) as Record<string, unknown>,
    sig: Buffer.from(s, "base64url"),
  };
}

describe("package", () => {
  it("VERSION is package.json's version", () => {
    const pkg = JSON.parse(readFileSync(join(PKG_DIR, "package.json"), "utf8")) as { version: string };
    assert.equal(VERSION, pkg.version);
  });
});

describe("names (PROTOCOL.md section 1)", () => {
  it("accepts the real names herald must accept", () => {
    for (const n of [
      "dashboard_website_12",
      "dashboard_user_7",
      "chat_updates",
      "chat_8942b9df-77c8-4e5f-a7eb-097aace75053",
      "chat_sishirbhusal",
      "a.b:c@d=e",
      "x".repeat(200),
    ]) {
      assert.ok(isValidChannel(n), n);
    }
  });

  it("refuses empty, long and foreign names", () => {
    for (const n of ["", "x".repeat(201), "chat 1", "chat/1", "chat_*", "é", "chat#1"]) {
      assert.ok(!isValidChannel(n), n);
    }
    assert.ok(isValidPattern("chat_*"));
    assert.ok(!isValidPattern("chat_#"));
  });

  it("matches patterns with the reference semantics", () => {
    assert.ok(patternMatches("chat_*", "chat_42"));
    assert.ok(patternMatches("chat_*", "chat_"));
    assert.ok(!patternMatches("chat_*", "xchat_42"));
    assert.ok(patternMatches("*_website_*", "dashboard_website_12"));
    // `.` is a literal, not "any character".
    assert.ok(!patternMatches("a.b", "axb"));
    assert.ok(patternMatches("a.b", "a.b"));
    assert.ok(!patternMatches("chat_*", "chat_bad name"));
    assert.throws(() => patternMatches("chat_#", "chat_1"), TypeError);
  });
});

describe("tokens", () => {
  const now = 1_767_225_600;

  it("HS256 claims mirror herald token", () => {
    const t = mintToken({
      secret: "s3cret",
      sub: "op:42",
      channels: ["dashboard_website_12"],
      allow: { subscribe: ["chat_*"], publish: [], signal: ["chat_*"] },
      info: { name: "Purna Acharya" },
      ttlSeconds: 3600,
      now,
    });
    const { header, claims, sig } = decode(t);
    assert.deepEqual(header, { alg: "HS256", typ: "JWT" });
    assert.deepEqual(claims, {
      sub: "op:42",
      iat: now,
      exp: now + 3600,
      channels: ["dashboard_website_12"],
      allow: { subscribe: ["chat_*"], signal: ["chat_*"] },
      info: { name: "Purna Acharya" },
    });
    const input = t.slice(0, t.lastIndexOf("."));
    assert.deepEqual(sig, createHmac("sha256", "s3cret").update(input).digest());
  });

  it("leaves out empty lists, adds aud, iss, nbf and kid when asked", () => {
    const t = mintToken({
      secret: "s",
      kid: "k1",
      sub: "u",
      channels: [],
      allow: {},
      ttlSeconds: 60,
      now: new Date(now * 1000),
      audience: "app",
      issuer: "backend",
      notBeforeSeconds: 0,
    });
    const { header, claims } = decode(t);
    assert.deepEqual(header, { alg: "HS256", typ: "JWT", kid: "k1" });
    assert.deepEqual(claims, { sub: "u", iat: now, exp: now + 60, nbf: now, aud: "app", iss: "backend" });
  });

  it("ES256 signs r||s (64 bytes) that verify with the public key", () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const pem = privateKey.export({ type: "pkcs8", format: "pem" });
    const t = mintToken({ privateKeyPem: pem, kid: "es", sub: "u", ttlSeconds: 60 });
    const { header, sig } = decode(t);
    assert.deepEqual(header, { alg: "ES256", typ: "JWT", kid: "es" });
    assert.equal(sig.length, 64);
    const input = Buffer.from(t.slice(0, t.lastIndexOf(".")));
    assert.ok(verify("sha256", input, { key: publicKey, dsaEncoding: "ieee-p1363" }, sig));
  });

  it("RS256 and EdDSA sign with their keys; the alg must fit the key", () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const t = mintToken({ privateKeyPem: rsa.privateKey, alg: "RS256", sub: "u", ttlSeconds: 60 });
    const input = Buffer.from(t.slice(0, t.lastIndexOf(".")));
    assert.equal(decode(t).header.alg, "RS256");
    assert.ok(verify("sha256", input, rsa.publicKey, decode(t).sig));

    const ed = generateKeyPairSync("ed25519");
    const e = mintToken({ privateKeyPem: ed.privateKey.export({ type: "pkcs8", format: "pem" }), sub: "u", ttlSeconds: 60 });
    assert.equal(decode(e).header.alg, "EdDSA");
    assert.ok(verify(null, Buffer.from(e.slice(0, e.lastIndexOf("."))), ed.publicKey, decode(e).sig));

    assert.throws(() => mintToken({ privateKeyPem: rsa.privateKey, alg: "ES256", sub: "u", ttlSeconds: 1 }), /does not fit/);
    assert.throws(() => mintToken({ secret: "s", alg: "ES256", sub: "u", ttlSeconds: 1 }), /HS256 only/);
    const pub = createPublicKey(rsa.privateKey).export({ type: "spki", format: "pem" });
    assert.throws(() => mintToken({ privateKeyPem: pub, sub: "u", ttlSeconds: 1 }), /not a private key/);
    const p384 = generateKeyPairSync("ec", { namedCurve: "P-384" });
    assert.throws(() => mintToken({ privateKeyPem: p384.privateKey, sub: "u", ttlSeconds: 1 }), /P-256/);
  });

  it("checks names, patterns, sub, ttl, info and now before signing", () => {
    const base = { secret: "s", sub: "u", ttlSeconds: 60 };
    assert.throws(() => mintToken({ ...base, channels: ["bad channel"] }), /outside/);
    assert.throws(() => mintToken({ ...base, allow: { publish: ["chat_#"] } }), /outside/);
    assert.throws(() => mintToken({ ...base, sub: "" }), /sub/);
    assert.throws(() => mintToken({ ...base, ttlSeconds: 0 }), /ttlSeconds/);
    assert.throws(() => mintToken({ ...base, ttlSeconds: 1.5 }), /ttlSeconds/);
    assert.throws(() => mintToken({ ...base, info: { x: "y".repeat(1100) } }), /info/);
    assert.throws(() => mintToken({ ...base, now: Date.now() }), /milliseconds/);
    assert.throws(() => mintToken({ sub: "u", ttlSeconds: 1 }), /exactly one/);
    assert.throws(() => subscriptionToken({ ...base, channel: "chat_*" }), /outside/);
  });

  it("subscription token claims", () => {
    const t = subscriptionToken({ secret: "s", sub: "op:42", channel: "chat_42", ttlSeconds: 30, now });
    assert.deepEqual(decode(t).claims, { sub: "op:42", channel: "chat_42", iat: now, exp: now + 30 });
  });
});

describe("webhooks", () => {
  const secret = "whsec_test";
  const t = 1_767_225_600;
  const event = {
    id: "ev_1",
    type: "publish",
    ts: t * 1000,
    channel: "chat_42",
    message: { channel: "chat_42", seq: 3, id: "m_1", ts: t * 1000, from: "visitor:abc", data: { content: "hi" } },
  };
  const body = JSON.stringify(event);

  it("signs as the contract says", () => {
    const want = createHmac("sha256", secret).update(`${t}.${body}`).digest("hex");
    assert.equal(signWebhook(body, secret, t), `t=${t},v1=${want}`);
  });

  it("accepts a good signature, from a string or a Buffer, and types the event", () => {
    const header = signWebhook(body, secret, t);
    const ev: WebhookEvent = verifyWebhook(body, header, secret, { now: t + 10 });
    assert.deepEqual(ev, event);
    assert.deepEqual(verifyWebhook(Buffer.from(body), header, secret, { now: new Date((t - 10) * 1000) }), event);
    if (ev.type === "publish") {
      assert.equal(ev.message.seq, 3);
    } else {
      assert.fail("type");
    }
  });

  it("refuses a tampered body or signature", () => {
    const header = signWebhook(body, secret, t);
    const tampered = body.replace('"hi"', '"ho"');
    assert.throws(
      () => verifyWebhook(tampered, header, secret, { now: t }),
      (e: unknown) => e instanceof WebhookSignatureError && e.reason === "mismatch",
    );
    const flipped = header.slice(0, -1) + (header.endsWith("0") ? "1" : "0");
    assert.throws(() => verifyWebhook(body, flipped, secret, { now: t }), WebhookSignatureError);
    assert.throws(() => verifyWebhook(body, header, "other", { now: t }), /no signature matches/);
    // A signature for another timestamp does not carry over.
    const other = signWebhook(body, secret, t - 1).replace(`t=${t - 1}`, `t=${t}`);
    assert.throws(() => verifyWebhook(body, other, secret, { now: t }), WebhookSignatureError);
  });

  it("refuses a stale or future timestamp, within the tolerance only", () => {
    const header = signWebhook(body, secret, t);
    assert.throws(
      () => verifyWebhook(body, header, secret, { now: t + 301 }),
      (e: unknown) => e instanceof WebhookSignatureError && e.reason === "stale",
    );
    assert.throws(() => verifyWebhook(body, header, secret, { now: t - 301 }), /in the future/);
    verifyWebhook(body, header, secret, { now: t + 300 });
    assert.throws(() => verifyWebhook(body, header, secret, { now: t + 61, toleranceSeconds: 60 }), /tolerance 60/);
  });

  it("rotated secrets: any v1 matching any secret passes", () => {
    const oldSig = signWebhook(body, "old", t);
    const newSig = signWebhook(body, "new", t).split(",")[1] as string;
    const both = `${oldSig},${newSig}`;
    assert.deepEqual(verifyWebhook(body, both, "new", { now: t }), event);
    assert.deepEqual(verifyWebhook(body, both, "old", { now: t }), event);
    assert.deepEqual(verifyWebhook(body, oldSig, ["new", "old"], { now: t }), event);
    assert.throws(() => verifyWebhook(body, both, ["third"], { now: t }), WebhookSignatureError);
    // Unknown schemes and spaces are ignored.
    assert.deepEqual(verifyWebhook(body, `t=${t}, v0=abc, ${newSig}`, "new", { now: t }), event);
  });

  it("refuses malformed headers and bodies", () => {
    const reason = (r: string) => (e: unknown) => e instanceof WebhookSignatureError && e.reason === r;
    assert.throws(() => verifyWebhook(body, undefined, secret), reason("malformed_header"));
    assert.throws(() => verifyWebhook(body, "", secret), reason("malformed_header"));
    assert.throws(() => verifyWebhook(body, "v1=00", secret), reason("malformed_header"));
    assert.throws(() => verifyWebhook(body, `t=x,v1=${"0".repeat(64)}`, secret), reason("malformed_header"));
    assert.throws(() => verifyWebhook(body, `t=${t}`, secret, { now: t }), reason("no_signature"));
    assert.throws(() => verifyWebhook(body, `t=${t},v1=zz`, secret, { now: t }), reason("no_signature"));
    const notJson = "not json";
    assert.throws(() => verifyWebhook(notJson, signWebhook(notJson, secret, t), secret, { now: t }), reason("malformed_body"));
    const noId = JSON.stringify({ type: "join", ts: 1 });
    assert.throws(() => verifyWebhook(noId, signWebhook(noId, secret, t), secret, { now: t }), reason("malformed_body"));
    assert.throws(() => verifyWebhook(body, signWebhook(body, secret, t), [], { now: t }), TypeError);
  });
});

describe("error classes", () => {
  it("map by code, then by status, else the base class", () => {
    const cases: Array<[string, number, new (...a: never[]) => HeraldError]> = [
      ["bad_request", 400, BadRequestError],
      ["bad_channel", 400, BadChannelError],
      ["unauthorized", 401, UnauthorizedError],
      ["not_found", 404, NotFoundError],
      ["conflict", 409, ConflictError],
      ["too_large", 413, TooLargeError],
      ["rate_limited", 429, RateLimitedError],
      ["unavailable", 503, UnavailableError],
      ["internal", 500, InternalError],
    ];
    for (const [code, status, cls] of cases) {
      const e = errorFor(status, code, "m");
      assert.ok(e instanceof cls && e instanceof HeraldError && e instanceof Error, code);
      assert.equal(e.code, code);
      assert.equal(e.status, status);
      assert.equal(e.name, cls.name);
    }
    const proxy = errorFor(502, undefined, "bad gateway");
    assert.equal(proxy.constructor, HeraldError);
    assert.equal(proxy.code, "http_502");
    assert.ok(errorFor(503, undefined, "x") instanceof UnavailableError);
    assert.ok(errorFor(403, "forbidden", "x").constructor === HeraldError);
    assert.equal(String(new TransportError("down")), "TransportError: down");
  });
});

describe("client against stub servers", () => {
  const fast = { apiKey: "k", retryBaseMs: 5 };

  it("429 is RateLimitedError and 500 InternalError, neither retried", async () => {
    for (const [status, code, cls] of [
      [429, "rate_limited", RateLimitedError],
      [500, "internal", InternalError],
    ] as const) {
      const s = await stub(() => ({ status, body: errorBody(code, "nope") }));
      try {
        const h = new Herald({ url: s.url, ...fast });
        await assert.rejects(h.publish("chat_1", { a: 1 }), (e: unknown) => {
          assert.ok(e instanceof cls);
          assert.equal(e.status, status);
          assert.equal(e.message, "nope");
          return true;
        });
        assert.equal(s.seen.length, 1, "not retried");
      } finally {
        await s.close();
      }
    }
  });

  it("503 is retried with backoff, with the same idempotency key each time", async () => {
    const s = await stub((n) =>
      n < 2
        ? { status: 503, body: errorBody("unavailable") }
        : { status: 200, body: JSON.stringify({ id: "m_1", ts: 5, seqs: { chat_1: 1 } }) },
    );
    try {
      const h = new Herald({ url: s.url, ...fast, retries: 2 });
      const r = await h.publish("chat_1", { a: 1 });
      assert.deepEqual(r, { id: "m_1", ts: 5, seqs: { chat_1: 1 } });
      assert.equal(s.seen.length, 3);
      const keys = s.seen.map((x) => (JSON.parse(x.body) as { key: string }).key);
      assert.match(keys[0] ?? "", /^[0-9a-f-]{36}$/);
      assert.deepEqual(new Set(keys).size, 1);
      assert.equal(s.seen[0]?.headers.authorization, "Bearer k");
    } finally {
      await s.close();
    }
  });

  it("gives up after `retries` and throws the last UnavailableError", async () => {
    const s = await stub(() => ({ status: 503, body: errorBody("unavailable", "store down") }));
    try {
      const h = new Herald({ url: s.url, ...fast, retries: 2 });
      await assert.rejects(h.positions(["a"]), UnavailableError);
      assert.equal(s.seen.length, 3);
    } finally {
      await s.close();
    }
  });

  it("4xx is never retried", async () => {
    const s = await stub(() => ({ status: 409, body: errorBody("conflict") }));
    try {
      const h = new Herald({ url: s.url, ...fast, retries: 5 });
      await assert.rejects(h.publish("chat_1", 1, { idempotencyKey: "k1" }), ConflictError);
      assert.equal(s.seen.length, 1);
      assert.equal((JSON.parse(s.seen[0]?.body ?? "") as { key: string }).key, "k1");
    } finally {
      await s.close();
    }
  });

  it("a silent server is a timeout: retried, then TransportError", async () => {
    const s = await stub(() => "hang");
    try {
      const h = new Herald({ url: s.url, ...fast, retries: 1, timeoutMs: 150 });
      const t0 = Date.now();
      await assert.rejects(h.presence("chat_1"), (e: unknown) => {
        assert.ok(e instanceof TransportError && e instanceof HeraldError);
        assert.equal(e.code, "transport");
        assert.equal(e.status, undefined);
        assert.match(e.message, /no answer within 150 ms/);
        return true;
      });
      assert.equal(s.seen.length, 2);
      assert.ok(Date.now() - t0 < 5_000);
    } finally {
      await s.close();
    }
  });

  it("a reset connection is retried with the same key", async () => {
    const s = await stub((n) => (n === 0 ? "drop" : { status: 200, body: JSON.stringify({ id: "m_2", ts: 1, seqs: { a: 1, b: 1 } }) }));
    try {
      const h = new Herald({ url: s.url, ...fast });
      const r = await h.publish(["a", "b"], "x");
      assert.equal(r.id, "m_2");
      assert.equal(s.seen.length, 2);
      const [b0, b1] = s.seen.map((x) => JSON.parse(x.body) as Record<string, unknown>);
      assert.equal(b0?.key, b1?.key);
      assert.deepEqual(b0?.channels, ["a", "b"]);
      assert.equal(b0?.channel, undefined);
    } finally {
      await s.close();
    }
  });

  it("nothing listening: TransportError after the retries", async () => {
    const port = await freePort();
    const h = new Herald({ url: `http://127.0.0.1:${port}`, ...fast, retries: 1 });
    await assert.rejects(h.signal("chat_1", 1), (e: unknown) => e instanceof TransportError && /ECONNREFUSED/.test(e.message));
  });

  it("a non-JSON error page is classified by status; a non-JSON 200 is bad_response", async () => {
    const s = await stub((n) =>
      n === 0
        ? { status: 502, body: "<html>bad gateway</html>", contentType: "text/html" }
        : { status: 200, body: "<html>login</html>", contentType: "text/html" },
    );
    try {
      const h = new Herald({ url: s.url, ...fast });
      await assert.rejects(h.presence("c"), (e: unknown) => e instanceof HeraldError && e.code === "http_502" && e.status === 502);
      await assert.rejects(h.presence("c"), (e: unknown) => e instanceof HeraldError && e.code === "bad_response");
    } finally {
      await s.close();
    }
  });

  it("refuses bad options and undefined data without a request", async () => {
    assert.throws(() => new Herald({ url: "127.0.0.1:8080", apiKey: "k" }), TypeError);
    assert.throws(() => new Herald({ url: "http://x", apiKey: "" }), TypeError);
    assert.throws(() => new Herald({ url: "http://x", apiKey: "k", retries: -1 }), TypeError);
    const h = new Herald({ url: "http://127.0.0.1:1", apiKey: "k" });
    await assert.rejects(h.publish("chat_1", undefined), TypeError);
  });
});
