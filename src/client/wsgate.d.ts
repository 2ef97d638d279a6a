// Types of wsgate.js, the client of wsgate.v1.json (browsers and Node 20+).

/** The subprotocol the client offers: `"wsgate.v1.json"`. */
export const PROTOCOL: "wsgate.v1.json";

/** A place in an inbox or a room: `seq` counts from 1 within `epoch` (below 2^53). */
export interface Position {
  epoch: number;
  seq: number;
}

/** Any JSON value: what a message body may be. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** What `options.clock` must provide (the tests pass a fake one). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface Options {
  /** The JWT, or a function that returns one (called before every attempt, so a short-lived token can be refreshed). */
  token?: string | (() => string | Promise<string>);
  /** Where the token rides: the offered subprotocol `bearer.<token>` (default) or `?token=` in the URL. */
  tokenIn?: "protocol" | "query";
  /** A WHATWG WebSocket class; default `globalThis.WebSocket` (browsers, Node 22+; Node 20 with `--experimental-websocket`). */
  WebSocket?: new (url: string, protocols: string[]) => WebSocket;
  /** Per try of a request: no answer in this long and it is written again with the same id. Default 10 000. */
  requestTimeoutMs?: number;
  /** Tries after the first before a request is rejected with `timeout`; a reconnect's re-send counts as one. Default 2. */
  retries?: number;
  /** Requests that may wait while disconnected; more are rejected with `queue_full`. Default 1 000. */
  maxQueued?: number;
  /** First backoff window; each failed attempt doubles it. Default 500. */
  backoffBaseMs?: number;
  /** Largest backoff window. Default 30 000. */
  backoffMaxMs?: number;
  /** After a 1008 (and 1002, 1003, 1007, 1009): the attempt the backoff jumps to, and the delay is at least half its window. Default 4 (4-8 s). */
  policyBackoffAttempt?: number;
  /** One attempt: socket to `welcome`; longer and it is abandoned and retried. Default 10 000. */
  connectTimeoutMs?: number;
  /** `connect()` rejects with `connect_timeout` if no welcome came in this long (every attempt retried until then); `Infinity` waits for ever. Default 30 000. */
  initialConnectTimeoutMs?: number;
  /** Silence after which the client sends a `ping`. Default 20 000. */
  pingIntervalMs?: number;
  /** Further silence after which the socket is dropped and the client reconnects. Default 10 000. */
  pongTimeoutMs?: number;
  /** How many (from, id) pairs and receipts are remembered to drop duplicates. Default 4 096. */
  dedupWindow?: number;
  /** Acknowledge every new inbox message (so its sender gets a receipt). Default true. */
  autoAck?: boolean;
  /** Time source (tests). */
  clock?: Clock;
  /** Chance source in [0, 1) (tests); also seeds the id prefix. */
  random?: () => number;
}

export const DEFAULTS: Readonly<Required<Omit<Options, "token" | "WebSocket" | "clock" | "random">>>;

/** Close codes the gateway sends. */
export const CLOSE: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  UNSUPPORTED_DATA: 1003;
  ABNORMAL: 1006;
  INVALID_PAYLOAD: 1007;
  POLICY_VIOLATION: 1008;
  MESSAGE_TOO_BIG: 1009;
  SERVICE_RESTART: 1012;
  TRY_AGAIN_LATER: 1013;
  BACKEND_DISCONNECT: 4000;
}>;

/** Error codes retried (same id, jittered backoff) while tries remain: `overloaded`, `unavailable`. */
export const RETRYABLE: ReadonlySet<string>;

/** What a close code means for reconnecting. */
export function closePolicy(code: number): "stop" | "soon" | "policy" | "backoff";
/** `min(maxMs, baseMs * 2^attempt)`. */
export function backoffWindow(attempt: number, baseMs?: number, maxMs?: number): number;
/** A uniform delay in `[0, backoffWindow(attempt))` (full jitter). */
export function backoffDelay(attempt: number, random?: () => number, baseMs?: number, maxMs?: number): number;

/** A refused or failed request. `code`: the gateway's (`forbidden`, `overloaded`, ...) or the client's (`timeout`, `queue_full`, `closed`, `disconnected`, `connect_timeout`, `left`). */
export class WsgateError extends Error {
  code: string;
  id?: string;
}

export interface Ack extends Position {
  /** The request's id (also `promise.id`, known before the answer). */
  id: string;
  to?: string;
  room?: string;
}
export interface Msg {
  seq: number;
  epoch: number;
  /** `null`: from the backend API. */
  from: string | null;
  id?: string | number;
  body: Json;
}
export interface RoomMsg {
  room: string;
  seq: number;
  from: string | null;
  id?: string | number;
  body: Json;
}
export interface Receipt {
  by: string;
  seq: number;
  id?: string | number;
}
export type PresenceEvent =
  | { type: "presence"; room: string; event: "join" | "leave"; user: string; members: number }
  | { type: "presence"; room: string; event: "count"; members: number };
export interface PresenceAnswer {
  type: "presence";
  user?: string;
  online?: boolean;
  room?: string;
  members?: number;
  connections: number;
  users?: string[];
}
export interface Resync {
  scope: "inbox" | "room";
  room?: string;
  current: Position;
  reason: "epoch_changed" | "too_old" | "ahead";
}
export type State =
  | { state: "connecting"; attempt?: number; connecting?: true }
  | { state: "open"; user: string; first: boolean }
  | { state: "reconnecting"; attempt: number; delay: number; code: number; reason: string }
  | { state: "reconnecting"; attempt: number; connecting: true }
  | { state: "closed"; code?: number; reason?: string; error: WsgateError };

export interface Events {
  msg: Msg;
  room_msg: RoomMsg;
  receipt: Receipt;
  presence: PresenceEvent;
  state: State;
  /** Every `joined`, the re-joins after a reconnect too (`rejoin: true`). */
  joined: { room: string; at: Position; replayed: number; rejoin: boolean };
  resync: Resync;
  error: WsgateError;
}

export class WsgateClient {
  readonly state: "connecting" | "open" | "reconnecting" | "closed";
  readonly user: string | null;
  readonly limits: { max_payload_bytes: number; max_rooms: number; max_room_name_bytes: number } | null;
  /** Resolves at the first welcome. */
  readonly ready: Promise<WsgateClient>;
  readonly rooms: string[];
  readonly position: Position | null;
  readonly pendingCount: number;
  on<E extends keyof Events>(event: E, fn: (value: Events[E]) => void): () => void;
  off<E extends keyof Events>(event: E, fn: (value: Events[E]) => void): void;
  send(to: string, body: Json): Promise<Ack> & { id: string };
  publish(room: string, body: Json, options?: { excludeSelf?: boolean }): Promise<Ack> & { id: string };
  join(room: string, options?: { presence?: boolean }): Promise<{ room: string; at: Position; replayed: number }>;
  leave(room: string): Promise<{ room: string }>;
  presence(of: { user: string } | { room: string }): Promise<PresenceAnswer>;
  ack(seq: number): void;
  close(): void;
}

/** Connects; resolves once the welcome arrived. */
export function connect(url: string, options?: Options): Promise<WsgateClient>;
/** A client that starts connecting at once (`client.ready` resolves at the welcome). */
export function createClient(url: string, options?: Options): WsgateClient;

/** Seen positions of one sequence (exported for tests). */
export class SeqWindow {
  constructor(epoch: number, floor?: number, maxAbove?: number);
  epoch: number;
  floor: number;
  readonly hasGap: boolean;
  accept(seq: number): boolean;
  raiseTo(seq: number): void;
}
/** The most recent keys (exported for tests). */
export class RecentSet {
  constructor(limit: number);
  add(key: string): boolean;
}
