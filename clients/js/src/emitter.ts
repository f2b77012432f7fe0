/**
 * A small typed event emitter shared by the client and its subscriptions
 * (no dependency on Node's `events`, so it runs in browsers unchanged).
 *
 * A listener that throws never breaks the SDK's own bookkeeping: state is
 * updated before events are emitted, and the exception is handed to the
 * owner's `onListenerError` (the client's `error` event), or logged with
 * `console.error` when nothing listens there.
 */

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (...args: any[]) => void;

/** Event name -> listener signature. */
export type EventMap<E> = { [K in keyof E]: Listener };

export class Emitter<E extends EventMap<E>> {
  readonly #listeners = new Map<keyof E, Listener[]>();
  /** @internal */
  protected onListenerError: (err: unknown, event: string) => void = (err, event) => {
    console.error(`herald: a "${event}" listener threw`, err);
  };

  /** Adds a listener; returns `this` for chaining. */
  on<K extends keyof E>(event: K, listener: E[K]): this {
    const list = this.#listeners.get(event);
    if (list === undefined) {
      this.#listeners.set(event, [listener]);
    } else {
      list.push(listener);
    }
    return this;
  }

  /** Adds a listener called at most once. */
  once<K extends keyof E>(event: K, listener: E[K]): this {
    const wrapper = ((...args: unknown[]) => {
      this.off(event, wrapper as E[K]);
      listener(...args);
    }) as E[K];
    (wrapper as { listener?: Listener }).listener = listener;
    return this.on(event, wrapper);
  }

  /** Removes one listener, or every listener of `event` when none is given. */
  off<K extends keyof E>(event: K, listener?: E[K]): this {
    if (listener === undefined) {
      this.#listeners.delete(event);
      return this;
    }
    const list = this.#listeners.get(event);
    if (list !== undefined) {
      const i = list.findIndex((l) => l === listener || (l as { listener?: Listener }).listener === listener);
      if (i >= 0) {
        list.splice(i, 1);
      }
    }
    return this;
  }

  /** How many listeners `event` has. */
  listenerCount<K extends keyof E>(event: K): number {
    return this.#listeners.get(event)?.length ?? 0;
  }

  /** @internal Calls the listeners of `event` in order; never throws. */
  protected emit<K extends keyof E>(event: K, ...args: Parameters<E[K]>): void {
    const list = this.#listeners.get(event);
    if (list === undefined || list.length === 0) {
      return;
    }
    // A copy: a listener may remove itself (once) or others.
    for (const l of [...list]) {
      try {
        l(...args);
      } catch (err) {
        this.onListenerError(err, String(event));
      }
    }
  }
}
