/** Channel names of PROTOCOL.md section 1, checked before they are sent. */

import { HeraldError } from "./errors.js";

const CHANNEL = /^[A-Za-z0-9_\-.:@=]{1,200}$/;

/** Whether `name` is a valid channel name (1 to 200 bytes of `A-Z a-z 0-9 _ - . : @ =`). */
export function isValidChannel(name: unknown): name is string {
  return typeof name === "string" && CHANNEL.test(name);
}

/** Throws a `bad_channel` HeraldError unless `name` is a valid channel name. */
export function checkChannel(name: unknown): asserts name is string {
  if (!isValidChannel(name)) {
    throw new HeraldError(
      "bad_channel",
      `invalid channel name ${JSON.stringify(name)}: 1 to 200 characters of A-Z a-z 0-9 _ - . : @ =`,
      typeof name === "string" ? { channel: name } : {},
    );
  }
}
