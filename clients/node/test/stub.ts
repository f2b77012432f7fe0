/**
 * Local HTTP servers for what a real herald cannot be made to do on demand:
 * answer 429 or 500, or stay silent. They check the SDK's side (which class
 * each answer becomes, what is retried, with which key); everything herald
 * does answer is tested against herald itself.
 */

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** One request the stub received. */
export interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage["headers"];
  body: string;
}

/** What the stub does with a request: answer, or never answer. */
export type Reply = { status: number; body: string; contentType?: string } | "hang" | "drop";

export interface Stub {
  url: string;
  seen: Seen[];
  close: () => Promise<void>;
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((ok, fail) => {
    server.once("error", fail);
    server.listen(0, "127.0.0.1", ok);
  });
  const { port } = server.address() as AddressInfo;
  return `http://127.0.0.1:${port}`;
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) {
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((ok) => server.close(() => ok()));
}

/** A server that answers the n-th request (0-based) with `reply(n, seen)`. */
export async function stub(reply: (n: number, req: Seen) => Reply): Promise<Stub> {
  const seen: Seen[] = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const s: Seen = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: await readBody(req) };
      const n = seen.length;
      seen.push(s);
      const r = reply(n, s);
      if (r === "hang") {
        return;
      }
      if (r === "drop") {
        req.socket.destroy();
        return;
      }
      res.writeHead(r.status, { "content-type": r.contentType ?? "application/json" });
      res.end(r.body);
    })();
  });
  const url = await listen(server);
  return { url, seen, close: () => closeServer(server) };
}

/** A herald error body. */
export function errorBody(code: string, message = code): string {
  return JSON.stringify({ error: { code, message } });
}

/**
 * A proxy in front of a real herald that forwards every request, but for
 * the first `drop` requests throws herald's answer away and resets the
 * connection: the request was committed, the caller never learns it.
 */
export async function lossyProxy(
  target: string,
  drop: number,
): Promise<Stub & { dropped: Array<{ status: number; body: string }> }> {
  const seen: Seen[] = [];
  const dropped: Array<{ status: number; body: string }> = [];
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const s: Seen = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: await readBody(req) };
      seen.push(s);
      const headers: Record<string, string> = {};
      for (const h of ["authorization", "content-type", "accept"]) {
        const v = req.headers[h];
        if (typeof v === "string") {
          headers[h] = v;
        }
      }
      const r = await fetch(target + s.url, {
        method: s.method,
        headers,
        body: s.method === "GET" ? undefined : s.body,
      });
      const body = await r.text();
      if (dropped.length < drop) {
        dropped.push({ status: r.status, body });
        req.socket.destroy();
        return;
      }
      res.writeHead(r.status, { "content-type": r.headers.get("content-type") ?? "application/json" });
      res.end(body);
    })();
  });
  const url = await listen(server);
  return { url, seen, dropped, close: () => closeServer(server) };
}
