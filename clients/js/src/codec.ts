/**
 * The two encodings of PROTOCOL.md section 5a: `herald.json` (one JSON
 * object per text frame) and `herald.msgpack` (one MessagePack map per
 * binary frame). Decoding accepts only what the encoding allows: a binary
 * frame on JSON, a text frame on MessagePack, or anything that is not an
 * object is a protocol error.
 */

import { Decoder, Encoder } from "@msgpack/msgpack";

import { HeraldError } from "./errors.js";

/** Wire encoding; `json` is the default. */
export type Encoding = "json" | "msgpack";

/** A decoded server frame: an object with a `type`. */
export type ServerFrame = Record<string, unknown> & { type?: unknown };

export interface Codec {
  readonly encoding: Encoding;
  /** The WebSocket subprotocol offered. */
  readonly subprotocol: string;
  encode(frame: Record<string, unknown>): string | Uint8Array;
  /** Decodes one frame; throws a `protocol` HeraldError on bad input. */
  decode(data: unknown): ServerFrame;
  /** Whether an encoded frame is at most `limit` bytes on the wire. */
  fits(encoded: string | Uint8Array, limit: number): boolean;
}

const utf8 = new TextEncoder();

function asObject(v: unknown): ServerFrame {
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new HeraldError("protocol", "server frame is not an object");
  }
  return v as ServerFrame;
}

class JsonCodec implements Codec {
  readonly encoding = "json" as const;
  readonly subprotocol = "herald.json";

  encode(frame: Record<string, unknown>): string {
    return JSON.stringify(frame);
  }

  decode(data: unknown): ServerFrame {
    if (typeof data !== "string") {
      throw new HeraldError("protocol", "binary frame on herald.json");
    }
    let v: unknown;
    try {
      v = JSON.parse(data);
    } catch (e) {
      throw new HeraldError("protocol", "server frame is not JSON", { cause: e });
    }
    return asObject(v);
  }

  fits(encoded: string | Uint8Array, limit: number): boolean {
    if (typeof encoded !== "string") {
      return encoded.byteLength <= limit;
    }
    // UTF-8 is at most 3 bytes per UTF-16 unit: measure only when it matters.
    return encoded.length * 3 <= limit || utf8.encode(encoded).byteLength <= limit;
  }
}

class MsgpackCodec implements Codec {
  readonly encoding = "msgpack" as const;
  readonly subprotocol = "herald.msgpack";
  // Absent optional fields must be absent on the wire, not nil.
  readonly #encoder = new Encoder({ ignoreUndefined: true });
  readonly #decoder = new Decoder();

  encode(frame: Record<string, unknown>): Uint8Array {
    return this.#encoder.encode(frame);
  }

  decode(data: unknown): ServerFrame {
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) {
      bytes = new Uint8Array(data);
    } else if (ArrayBuffer.isView(data)) {
      bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    } else {
      throw new HeraldError("protocol", "text frame on herald.msgpack");
    }
    let v: unknown;
    try {
      v = this.#decoder.decode(bytes);
    } catch (e) {
      throw new HeraldError("protocol", "server frame is not MessagePack", { cause: e });
    }
    return asObject(v);
  }

  fits(encoded: string | Uint8Array, limit: number): boolean {
    return (typeof encoded === "string" ? utf8.encode(encoded).byteLength : encoded.byteLength) <= limit;
  }
}

/** The codec for `encoding`. */
export function codecFor(encoding: Encoding): Codec {
  switch (encoding) {
    case "json":
      return new JsonCodec();
    case "msgpack":
      return new MsgpackCodec();
    default:
      throw new TypeError(`unknown encoding ${String(encoding)}: use "json" or "msgpack"`);
  }
}
