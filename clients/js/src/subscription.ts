/**
 * A channel subscription as the app sees it: events in seq order, each
 * message once, across reconnects. The client owns the wire side (subscribe
 * ops, positions, resyncs); this object owns the app side (events, state,
 * `ready`) and the channel's {@link Sequencer}.
 */

import { Emitter } from "./emitter.js";
import { HeraldError } from "./errors.js";
import { Sequencer, type Message } from "./sequencer.js";
import type { PresenceEvent, RecoveredEvent, Signal, SubscribeResult, UnsubscribedEvent } from "./types.js";

/** `subscribing` until the first reply on the current connection, then `subscribed`; `unsubscribed` at the end. */
export type SubscriptionState = "subscribing" | "subscribed" | "unsubscribed";

/** Events of a {@link Subscription}. */
export interface SubscriptionEvents {
  /** A persisted message, in seq order, never twice. */
  message: (m: Message) => void;
  /** Someone joined or left (needs a presence grant). */
  presence: (e: PresenceEvent) => void;
  /** An ephemeral signal (typing indicators); never from this connection. */
  signal: (s: Signal) => void;
  /**
   * After each recovery attempt (reconnect with `recover=`/`since`, or a
   * first subscribe with `since`). `recovered: false`: reload from the app's API.
   */
  recovered: (r: RecoveredEvent) => void;
  /** Each time the subscription is (re)established on a connection. */
  subscribed: (r: SubscribeResult) => void;
  /** The subscription ended (by the app or the server); no more events. */
  unsubscribed: (e: UnsubscribedEvent) => void;
  /** The subscribe was refused (then `unsubscribed` follows). */
  error: (err: HeraldError) => void;
}

/** Options of `Herald.subscribe`. */
export interface SubscribeOptions {
  /** The last seq the app has seen: messages after it are replayed first. */
  since?: number;
  /** A subscription token granting this channel (PROTOCOL.md section 3). */
  token?: string;
  /** Returns a fresh subscription token; called before each subscribe op (reconnects included). */
  getToken?: (channel: string) => Promise<string> | string;
}

/** @internal What a subscription needs from its client. */
export interface SubscriptionHost {
  _unsubscribe(sub: Subscription): Promise<void>;
  _reportListenerError(err: unknown, event: string): void;
}

export class Subscription extends Emitter<SubscriptionEvents> {
  /** The channel name. */
  readonly channel: string;
  /** Resolves with the first subscribe reply; rejects if the subscription fails or ends first. */
  readonly ready: Promise<SubscribeResult>;

  readonly #host: SubscriptionHost;
  readonly #options: SubscribeOptions;
  #state: SubscriptionState = "subscribing";
  #automatic: boolean;
  /** Whether lastSeq is a real position (a `since`, or a reply seen). */
  #hasPosition: boolean;
  #settle: { resolve: (r: SubscribeResult) => void; reject: (e: HeraldError) => void } | undefined;
  /** @internal */
  readonly _seq: Sequencer;
  /** @internal A resync (unsubscribe + subscribe with since) is in flight. */
  _resyncing = false;

  /** @internal Created by the client (`subscribe()` or a welcome). */
  constructor(host: SubscriptionHost, channel: string, options: SubscribeOptions, automatic: boolean) {
    super();
    this.#host = host;
    this.channel = channel;
    this.#options = options;
    this.#automatic = automatic;
    this.#hasPosition = options.since !== undefined;
    this._seq = new Sequencer(options.since ?? 0);
    this.onListenerError = (err, event) => host._reportListenerError(err, event);
    this.ready = new Promise((resolve, reject) => {
      this.#settle = { resolve, reject };
    });
    // An app that never awaits `ready` must not get an unhandled rejection.
    this.ready.catch(() => undefined);
  }

  /** The last seq delivered to the app (or the `since` it started from): store it to resume later. */
  get lastSeq(): number {
    return this._seq.lastSeq;
  }

  get state(): SubscriptionState {
    return this.#state;
  }

  /** Whether the server subscribed it on connect (token `channels` claim or route). */
  get automatic(): boolean {
    return this.#automatic;
  }

  /**
   * Leaves the channel. Resolves once the server confirmed (or at once when
   * not connected). No event is emitted for this subscription afterwards.
   */
  unsubscribe(): Promise<void> {
    return this.#host._unsubscribe(this);
  }

  /** @internal */
  get _hasPosition(): boolean {
    return this.#hasPosition;
  }

  /** @internal */
  get _options(): SubscribeOptions {
    return this.#options;
  }

  /** @internal */
  _setAutomatic(v: boolean): void {
    this.#automatic = v;
  }

  /** @internal The connection was lost: wait for the next one. */
  _connectionLost(): void {
    this._resyncing = false;
    this._seq.unposition(false);
    if (this.#state === "subscribed") {
      this.#state = "subscribing";
    }
  }

  /** @internal Positioned on the current connection. */
  _subscribed(r: SubscribeResult): void {
    this.#hasPosition = true;
    this.#state = "subscribed";
    if (this.#settle !== undefined) {
      this.#settle.resolve(r);
      this.#settle = undefined;
    }
    this.emit("subscribed", r);
  }

  /** @internal The subscription ended; `err` when it failed. */
  _ended(reason: string, err?: HeraldError): void {
    if (this.#state === "unsubscribed") {
      return;
    }
    this.#state = "unsubscribed";
    this._resyncing = false;
    this._seq.unposition(false);
    if (this.#settle !== undefined) {
      this.#settle.reject(
        err ?? new HeraldError("unsubscribed", `subscription to ${this.channel} ended (${reason})`, { channel: this.channel }),
      );
      this.#settle = undefined;
    }
    if (err !== undefined) {
      this.emit("error", err);
    }
    this.emit("unsubscribed", { reason });
  }

  /** @internal */
  _emitMessage(m: Message): void {
    this.emit("message", m);
  }

  /** @internal */
  _emitRecovered(r: RecoveredEvent): void {
    this.emit("recovered", r);
  }

  /** @internal */
  _emitPresence(e: PresenceEvent): void {
    this.emit("presence", e);
  }

  /** @internal */
  _emitSignal(s: Signal): void {
    this.emit("signal", s);
  }
}
