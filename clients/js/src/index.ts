/**
 * @herald/client: the browser and Node client of herald.
 *
 * Layout:
 * - `client.ts`: {@link Herald}, the connection, its state machine,
 *   requests, heartbeats, token refresh and history.
 * - `subscription.ts`: {@link Subscription}, a channel as the app sees it.
 * - `sequencer.ts`: per-channel dedup and ordering by seq.
 * - `policy.ts`: backoff and what each close code makes the client do.
 * - `codec.ts`: herald.json and herald.msgpack frames.
 * - `token.ts`: reading a JWT's `exp` (unverified) to refresh in time.
 * - `errors.ts`: {@link HeraldError} and its codes.
 * - `emitter.ts`, `clock.ts`, `names.ts`: events, injectable time, channel names.
 *
 * docs/client.md in the herald repository is the guide.
 */

export { Herald, buildUrl, type HeraldEvents, type PublishOptions } from "./client.js";
export { Subscription, type SubscribeOptions, type SubscriptionEvents, type SubscriptionState } from "./subscription.js";
export { HeraldError, isRetryable, type ClientErrorCode, type ErrorCode, type HeraldErrorDetails, type ReplyErrorCode } from "./errors.js";
export { Sequencer, type Positioned, type Pushed } from "./sequencer.js";
export {
  DEFAULT_BACKOFF,
  backoffCap,
  backoffDelay,
  closeAction,
  slowBackoffDelay,
  type BackoffOptions,
  type CloseAction,
} from "./policy.js";
export { refreshDelayMs, tokenExpiryMs } from "./token.js";
export { isValidChannel } from "./names.js";
export { systemClock, type Clock, type TimerHandle } from "./clock.js";
export type { Encoding } from "./codec.js";
export { Emitter } from "./emitter.js";
export type {
  DisconnectedEvent,
  HeraldOptions,
  HistoryAnswer,
  HistoryOptions,
  HistoryPage,
  Message,
  PresenceClient,
  PresenceEvent,
  PublishResult,
  RecoveredEvent,
  Signal,
  State,
  SubscribeResult,
  UnsubscribedEvent,
  WebSocketConstructor,
  WebSocketLike,
  Welcome,
  WelcomeSub,
} from "./types.js";
export { VERSION } from "./version.js";
