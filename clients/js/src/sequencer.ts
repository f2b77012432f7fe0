/**
 * Per-channel ordering and dedup: the app sees each seq once, in order,
 * across reconnects and nodes (PROTOCOL.md section 1: seqs are 1, 2, 3, ...
 * without gaps).
 *
 * Invariant: every message handed out has seq === lastSeq + 1 at that
 * moment, and lastSeq only grows, except when a position jump is told to
 * the app as `recovered:false`.
 *
 * Until the channel is positioned on the current connection (subscribe
 * reply or welcome entry), messages are buffered. After it, a message with
 * seq <= lastSeq is a duplicate and dropped; seq === lastSeq + 1 is
 * delivered (with any buffered successors); a larger seq is a gap: it is
 * buffered and reported, and the owner resynchronises the channel
 * (subscribe again with `since`). The gateway reorders and fills gaps
 * itself, so a gap on one connection means something went wrong; the
 * buffer keeps what arrived so nothing is delivered twice once the gap is
 * filled.
 */

/** A persisted message, as the `message` frame carries it (without `type`). */
export interface Message {
  channel: string;
  seq: number;
  /** Deployment-wide unique id, assigned by ingest. */
  id: string;
  /** Milliseconds since the epoch, set by ingest. */
  ts: number;
  /** The publisher's `sub`, or the backend's `from`; absent when none. */
  from?: string;
  data: unknown;
}

/** The outcome of positioning a channel. */
export interface Positioned {
  /** Messages the app may see now, in order. */
  deliver: Message[];
  /**
   * Set when a recovery was asked (`since` or `recover=`): whether the
   * server could replay everything after lastSeq.
   */
  recovered?: boolean;
  /** The server's replay count when recovered. */
  replayed?: number;
  /**
   * The position asked for could not be honoured on this connection
   * (recovery was asked but the answer carries none, and the channel moved
   * on): the owner should resubscribe with `since`.
   */
  gap: boolean;
}

/** The outcome of one incoming message. */
export interface Pushed {
  deliver: Message[];
  /** This message skipped seqs: the channel needs a resync. */
  gap: boolean;
}

export class Sequencer {
  #lastSeq: number;
  #positioned = false;
  /** Received but not deliverable yet, by seq. */
  readonly #buffer = new Map<number, Message>();
  readonly #maxBuffer: number;

  /**
   * @param lastSeq the last seq the app has seen (0: none; a `since`).
   * @param maxBuffer beyond this many buffered messages the buffer is
   *   dropped (the resync replays them).
   */
  constructor(lastSeq = 0, maxBuffer = 10_000) {
    this.#lastSeq = lastSeq;
    this.#maxBuffer = maxBuffer;
  }

  /** The last seq delivered (or the position started from). */
  get lastSeq(): number {
    return this.#lastSeq;
  }

  get positioned(): boolean {
    return this.#positioned;
  }

  /** How many messages wait in the buffer. */
  get buffered(): number {
    return this.#buffer.size;
  }

  /**
   * Forgets the current connection's position: a new connection (or a
   * resync) will position it again. Buffered messages are kept when
   * `keepBuffer` (a resync on the same connection), otherwise dropped (the
   * replay sends them again).
   */
  unposition(keepBuffer: boolean): void {
    this.#positioned = false;
    if (!keepBuffer) {
      this.#buffer.clear();
    }
  }

  /**
   * Positions the channel from a subscribe reply or a welcome entry.
   *
   * @param seq the channel's last seq in the reply.
   * @param asked whether `since`/`recover=` (= lastSeq) was sent.
   * @param recovered the reply's `recovered`, when present.
   * @param replayed the reply's `replayed`, when present.
   */
  position(seq: number, asked: boolean, recovered: boolean | undefined, replayed: number | undefined): Positioned {
    this.#positioned = true;
    let gap = false;
    const out: Positioned = { deliver: [], gap: false };
    if (!asked) {
      // A fresh start: the app sees what comes after the reply's seq.
      this.#lastSeq = seq;
    } else if (recovered === true) {
      // Everything after lastSeq is replayed next; keep the position.
      out.recovered = true;
      out.replayed = replayed ?? Math.max(0, seq - this.#lastSeq);
    } else if (recovered === false) {
      // The gap is beyond retained history: live starts after seq.
      out.recovered = false;
      out.replayed = 0;
      this.#lastSeq = Math.max(this.#lastSeq, seq);
    } else if (seq > this.#lastSeq) {
      // Asked for recovery, got a plain answer (the channel was already
      // held on this connection): the missed messages will not come.
      gap = true;
    }
    out.deliver = this.#drain();
    out.gap = gap;
    return out;
  }

  /** One incoming `message` frame. */
  push(m: Message): Pushed {
    if (m.seq <= this.#lastSeq) {
      return { deliver: [], gap: false };
    }
    if (!this.#positioned) {
      this.#store(m);
      return { deliver: [], gap: false };
    }
    if (m.seq === this.#lastSeq + 1) {
      this.#lastSeq = m.seq;
      return { deliver: [m, ...this.#drain()], gap: false };
    }
    this.#store(m);
    return { deliver: [], gap: true };
  }

  #store(m: Message): void {
    if (this.#buffer.size >= this.#maxBuffer) {
      this.#buffer.clear();
    }
    this.#buffer.set(m.seq, m);
  }

  /** Takes buffered messages that now follow lastSeq; drops stale ones. */
  #drain(): Message[] {
    const out: Message[] = [];
    for (const s of [...this.#buffer.keys()]) {
      if (s <= this.#lastSeq) {
        this.#buffer.delete(s);
      }
    }
    for (;;) {
      const next = this.#buffer.get(this.#lastSeq + 1);
      if (next === undefined) {
        break;
      }
      this.#buffer.delete(next.seq);
      this.#lastSeq = next.seq;
      out.push(next);
    }
    return out;
  }
}
