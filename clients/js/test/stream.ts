/**
 * What the app sees: a recorder on a subscription, and the one assertion
 * every integration scenario ends with: the channel's messages 1..n, each
 * once, in order (no gap, no duplicate).
 */

import assert from "node:assert/strict";

import type { Herald, Message, Subscription } from "@herald/client";

import { eventually } from "./harness.js";

export class Stream {
  readonly messages: Message[] = [];

  constructor(sub: Subscription) {
    sub.on("message", (m) => this.messages.push(m));
  }

  get seqs(): number[] {
    return this.messages.map((m) => m.seq);
  }

  /** Waits (with a deadline) until `n` messages were seen. */
  async waitFor(n: number, deadlineMs = 20_000): Promise<void> {
    try {
      await eventually(`${n} messages`, () => (this.messages.length >= n ? true : undefined), deadlineMs);
    } catch (e) {
      throw new Error(`${String(e)}; seen ${this.messages.length}, last seqs ${JSON.stringify(this.seqs.slice(-10))}`);
    }
  }

  /** The app saw exactly seqs 1..n, in order, once each. */
  assertComplete(n: number): void {
    assert.deepEqual(
      this.seqs,
      Array.from({ length: n }, (_, i) => i + 1),
      "the app-visible stream has a gap, a duplicate or a reordering",
    );
    assert.equal(new Set(this.messages.map((m) => m.id)).size, n, "message ids are unique");
  }
}

/** Records a client's connection events. */
export class ConnLog {
  readonly nodes: string[] = [];
  readonly closes: Array<{ code: number; reason: string; reconnect: boolean }> = [];
  readonly errors: string[] = [];

  constructor(h: Herald) {
    h.on("connected", (w) => this.nodes.push(w.node));
    h.on("disconnected", (e) => this.closes.push(e));
    h.on("error", (e) => this.errors.push(e.code));
  }

  get connects(): number {
    return this.nodes.length;
  }
}

/** Waits until the client is connected (after a reconnect too). */
export async function connected(h: Herald, deadlineMs = 20_000): Promise<void> {
  await eventually("the client to be connected", () => (h.state === "connected" ? true : undefined), deadlineMs);
}
