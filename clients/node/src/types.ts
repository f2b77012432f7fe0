/**
 * The values the ingest API answers with (PROTOCOL.md sections 5 and 8).
 *
 * Field names follow the wire, except `last_seq`, which is `lastSeq` here.
 * Unknown fields in herald's answers are kept as they came, so a newer herald
 * does not break an older SDK.
 */

/** Any JSON value. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * Answer of a publish: one message id and `ts` for all its channels, one
 * `seq` per channel. Publishing again with the same idempotency key returns
 * the same result and stores nothing new.
 */
export interface PublishResult {
  /** Message id, unique across the deployment (`m_...`). */
  id: string;
  /** Milliseconds since the Unix epoch, set by ingest. */
  ts: number;
  /** The message's seq in each channel it was published to. */
  seqs: Record<string, number>;
}

/**
 * A persisted message: a history item, the `message` of a webhook event, or
 * a WebSocket `message` frame without `type`.
 */
export interface Message<T = JsonValue> {
  channel: string;
  /** Per-channel sequence number: 1, 2, 3, ... with no gaps. */
  seq: number;
  /** Message id; the same in every channel of one publish. */
  id: string;
  /** Milliseconds since the Unix epoch, set by ingest. */
  ts: number;
  /**
   * The publisher: a WebSocket client's `sub`, or the `from` given to
   * publish; absent when none was given.
   */
  from?: string;
  /** The published JSON value. */
  data: T;
}

/** One page of a channel's history. */
export interface HistoryPage<T = JsonValue> {
  /** Messages with seq greater than `after`, in seq order, at most `limit`. */
  messages: Message<T>[];
  /** The channel's last seq (0 when it never had a message). */
  lastSeq: number;
}

/** A connected client, as listed by presence and named in webhook events. */
export interface PresenceClient {
  /** The token's `sub`. */
  sub: string;
  /** The connection id (`c_...`); one `sub` may have several. */
  conn: string;
  /** The token's `info` object, when it had one. */
  info?: Record<string, JsonValue>;
}
