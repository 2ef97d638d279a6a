// wsgate.js: the client of wsgate.v1.json, for browsers and Node (20+). No dependencies.
//
//   import { connect } from "/client/wsgate.js";
//   const c = await connect("wss://chat.example.com/ws", { token });
//   c.on("msg", (m) => console.log(m.from, m.body));
//   const { seq, epoch } = await c.send("bob", { text: "hi" });
//
// What it does for the application (the README's "JavaScript client" section has the
// tables):
//
// - Waits for `welcome` before it sends anything; every request carries an `id`, and a
//   request unanswered after `requestTimeoutMs` is written again with the same id (at
//   most `retries` times), then its promise is rejected with code `timeout`.
// - While disconnected, requests wait in a bounded queue (`maxQueued`); beyond it they
//   are rejected with `queue_full`. On reconnect it `resume`s the inbox from the last
//   position seen, re-`join`s every room with `since`, and then writes what waited, in
//   order, with the ids they had. A `resync` (what was missed cannot be replayed) is an
//   event for the application.
// - Drops what arrives twice: by sequence number per inbox and room (a replay may
//   overlap what came live), and by (from, id) (a sender's retry after a lost ack is a
//   new message with the same id).
// - Reconnects with exponential backoff and full jitter (`backoffBaseMs` 500 ms,
//   doubling, capped at `backoffMaxMs` 30 s), and honours close codes: 4000 (the
//   backend disconnected this user) ends the client; 1001 and 1012 (drain, restart)
//   reconnect after a jittered delay of at most the base; 1008 and the other "you did
//   something wrong" codes back off longer.
// - Checks liveness with the protocol's own `ping` (browsers cannot see WebSocket
//   pings): after `pingIntervalMs` without a frame it sends one, and after another
//   `pongTimeoutMs` of silence it drops the socket and reconnects.
//
// Everything that depends on time or chance comes from `options.clock` and
// `options.random`, so `sdk.test.mjs` drives it with a fake clock and a fake WebSocket.

/** The subprotocol this client speaks. */
export const PROTOCOL = "wsgate.v1.json";

/** Defaults of every option (see `wsgate.d.ts` for what each means). */
export const DEFAULTS = Object.freeze({
  tokenIn: "protocol",
  requestTimeoutMs: 10_000,
  retries: 2,
  maxQueued: 1_000,
  backoffBaseMs: 500,
  backoffMaxMs: 30_000,
  policyBackoffAttempt: 4,
  connectTimeoutMs: 10_000,
  initialConnectTimeoutMs: 30_000,
  pingIntervalMs: 20_000,
  pongTimeoutMs: 10_000,
  dedupWindow: 4_096,
  autoAck: true,
});

/** Close codes the gateway sends, by what the client does about them. */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // drain (SIGTERM) or heartbeat timeout
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL: 1006, // no close frame: network, refused upgrade, killed server
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008, // message rate, slow consumer, replaced by a newer connection
  MESSAGE_TOO_BIG: 1009,
  SERVICE_RESTART: 1012, // SIGUSR1
  TRY_AGAIN_LATER: 1013, // --redis: the node cannot reach Redis
  BACKEND_DISCONNECT: 4000, // POST /api/disconnect
});

/**
 * What a close code means for reconnecting: `"stop"` (do not reconnect), `"soon"` (the
 * server is going away or restarting: reconnect after a jittered delay of at most the
 * base, with the attempt count reset), `"policy"` (the server refused this client's
 * behaviour: back off longer) or `"backoff"` (anything else: the usual backoff).
 */
export function closePolicy(code) {
  switch (code) {
    case CLOSE.BACKEND_DISCONNECT:
      return "stop";
    case CLOSE.GOING_AWAY:
    case CLOSE.SERVICE_RESTART:
      return "soon";
    case CLOSE.POLICY_VIOLATION:
    case CLOSE.PROTOCOL_ERROR:
    case CLOSE.UNSUPPORTED_DATA:
    case CLOSE.INVALID_PAYLOAD:
    case CLOSE.MESSAGE_TOO_BIG:
      return "policy";
    default:
      return "backoff";
  }
}

/** The backoff window of attempt `attempt` (0-based): `min(maxMs, baseMs * 2^attempt)`. */
export function backoffWindow(attempt, baseMs = DEFAULTS.backoffBaseMs, maxMs = DEFAULTS.backoffMaxMs) {
  return Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 52));
}

/**
 * Full jitter (a uniform delay in `[0, window)`), so that clients dropped together do
 * not come back together. `random` returns a number in `[0, 1)`.
 */
export function backoffDelay(attempt, random = Math.random, baseMs, maxMs) {
  return Math.floor(random() * backoffWindow(attempt, baseMs, maxMs));
}

/** A refused or failed request: `code` is the gateway's error code or the client's own. */
export class WsgateError extends Error {
  constructor(code, message, detail = {}) {
    super(message ? `${code}: ${message}` : code);
    this.name = "WsgateError";
    this.code = code;
    Object.assign(this, detail);
  }
}

/**
 * The positions seen in one sequence (an inbox or a room, within one epoch): every seq
 * up to `floor` was seen (or cannot be had any more), and `above` holds those seen past
 * a hole. A replay that overlaps live deliveries, or comes after them, is recognised
 * seq by seq. `above` is bounded: past `maxAbove` the oldest hole is given up.
 */
export class SeqWindow {
  constructor(epoch, floor = 0, maxAbove = 4_096) {
    this.epoch = epoch;
    this.floor = floor;
    this.above = new Set();
    this.maxAbove = maxAbove;
  }

  /** Records `seq`; `false` if it was seen already. */
  accept(seq) {
    if (seq <= this.floor || this.above.has(seq)) return false;
    this.above.add(seq);
    this.#advance();
    if (this.above.size > this.maxAbove) {
      this.floor = Math.min(...this.above) - 1;
      this.#advance();
    }
    return true;
  }

  /** Everything up to `seq` is accounted for (a `resumed`, `joined` or `resync`). */
  raiseTo(seq) {
    if (seq > this.floor) {
      this.floor = seq;
      for (const s of this.above) if (s <= seq) this.above.delete(s);
    }
    this.#advance();
  }

  /** A hole: something past `floor` was seen, so `floor + 1` is missing. */
  get hasGap() {
    return this.above.size > 0;
  }

  #advance() {
    while (this.above.delete(this.floor + 1)) this.floor += 1;
  }
}

/** A set of the most recent `limit` keys (insertion order is age). */
export class RecentSet {
  constructor(limit) {
    this.limit = limit;
    this.keys = new Map();
  }

  /** Adds `key`; `false` if it was there already. */
  add(key) {
    if (this.keys.has(key)) return false;
    this.keys.set(key, true);
    if (this.keys.size > this.limit) this.keys.delete(this.keys.keys().next().value);
    return true;
  }
}

const realClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle),
};

/**
 * Error codes that say "not now" (a ring stayed full, a drain is under way, Redis did
 * not answer): the request is written again with its id after a jittered backoff,
 * while tries remain, instead of being rejected.
 */
export const RETRYABLE = Object.freeze(new Set(["overloaded", "unavailable"]));

/** Request kinds the application makes (counted against `maxQueued`). */
const APP_KINDS = new Set(["send", "publish", "join", "leave", "presence"]);

/**
 * Connects and resolves once the gateway's `welcome` arrived (`client.user` is set).
 * Rejects if no welcome arrived within `initialConnectTimeoutMs` (every failed attempt
 * is retried with backoff until then) or the gateway closed with 4000.
 */
export async function connect(url, options = {}) {
  const client = createClient(url, options);
  await client.ready;
  return client;
}

/** A client that starts connecting at once; `client.ready` is `connect`'s promise. */
export function createClient(url, options = {}) {
  return new WsgateClient(url, options);
}

export class WsgateClient {
  #opts;
  #url;
  #WS;
  #clock;
  #random;
  #listeners = new Map();
  #ws = null;
  #socketGen = 0;
  #attempt = 0;
  #welcomed = false;
  #closedByUser = false;
  #pending = new Map(); // id -> request, in creation order
  #rooms = new Map(); // room -> { presence, seqs: SeqWindow | null, joinId }
  #inbox = null; // SeqWindow of the inbox
  #resumeId = null;
  #seenIds;
  #seenReceipts;
  #idPrefix;
  #nextId = 0;
  #lastRx = 0;
  #pingOutstanding = false;
  /** Every timer the client holds; each is cleared by `#clear(name)`. */
  #timers = { ping: null, connect: null, reconnect: null, initial: null };
  #readyResolve;
  #readyReject;

  /** `"connecting" | "open" | "reconnecting" | "closed"`. */
  state = "connecting";
  /** The user id from `welcome` (`null` until then). */
  user = null;
  /** The gateway's limits from `welcome`. */
  limits = null;
  /** Resolves at the first `welcome`. */
  ready;

  constructor(url, options = {}) {
    this.#opts = { ...DEFAULTS, ...options };
    this.#WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WS !== "function") {
      throw new TypeError(
        "wsgate: no WebSocket implementation: pass options.WebSocket (Node 20 and 21: run with " +
          "--experimental-websocket, or pass the ws package's WebSocket; Node 22 has one)",
      );
    }
    this.#url = resolveUrl(url);
    this.#clock = options.clock ?? realClock;
    this.#random = options.random ?? Math.random;
    this.#seenIds = new RecentSet(this.#opts.dedupWindow);
    this.#seenReceipts = new RecentSet(this.#opts.dedupWindow);
    this.#idPrefix = Math.floor(this.#random() * 36 ** 8)
      .toString(36)
      .padStart(8, "0");
    this.ready = new Promise((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    // An unhandled rejection of `ready` must not crash Node when the caller only
    // listens to events.
    this.ready.catch(() => {});
    if (Number.isFinite(this.#opts.initialConnectTimeoutMs)) {
      this.#timers.initial = this.#clock.setTimeout(() => {
        if (!this.#welcomed) {
          this.#finish(new WsgateError("connect_timeout", `no welcome within ${this.#opts.initialConnectTimeoutMs} ms`));
        }
      }, this.#opts.initialConnectTimeoutMs);
    }
    this.#open();
  }

  // ---- the API ---------------------------------------------------------------------

  /** Subscribes `fn` to `event`; returns a function that unsubscribes it. */
  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /** A message to `to`'s inbox; resolves with the ack's `{ seq, epoch }`. */
  send(to, body) {
    return this.#request("send", { type: "send", to, body });
  }

  /** A message to every member of `room`; resolves with the ack's `{ seq, epoch }`. */
  publish(room, body, { excludeSelf = false } = {}) {
    const frame = { type: "publish", room, body };
    if (excludeSelf) frame.exclude_self = true;
    return this.#request("publish", frame);
  }

  /**
   * Becomes a member of `room` (kept across reconnects: the client re-joins with `since`
   * after each one). Resolves with `{ room, at, replayed }` at the first `joined`.
   */
  join(room, { presence = false } = {}) {
    if (this.#rooms.has(room)) {
      return Promise.reject(new WsgateError("already_joined", `already in ${room}`));
    }
    const entry = { presence: !!presence, seqs: null, joinId: null };
    this.#rooms.set(room, entry);
    const promise = this.#request("join", null, { room }, (id) => this.#joinFrame(room, entry, id));
    return promise.catch((error) => {
      if (this.#rooms.get(room) === entry) this.#rooms.delete(room);
      throw error;
    });
  }

  /** Stops being a member of `room`; resolves at `left` (at once while disconnected). */
  leave(room) {
    const entry = this.#rooms.get(room);
    if (!entry) return Promise.reject(new WsgateError("not_joined", `not in ${room}`));
    this.#rooms.delete(room);
    if (entry.joinId) this.#settle(entry.joinId, null, new WsgateError("left", `left ${room}`));
    if (this.state !== "open") return Promise.resolve({ room });
    return this.#request("leave", { type: "leave", room });
  }

  /** Who is online: `{ user }` or `{ room }`; resolves with the `presence` answer. */
  presence(of) {
    return this.#request("presence", { type: "presence", ...of });
  }

  /** Acknowledges inbox message `seq` (done for every `msg` unless `autoAck: false`). */
  ack(seq) {
    this.#write({ type: "ack", seq, id: this.#newId() });
  }

  /** The rooms this client is in (or is joining). */
  get rooms() {
    return [...this.#rooms.keys()];
  }

  /** The inbox position seen so far: `{ epoch, seq }`, or `null` before the first welcome. */
  get position() {
    return this.#inbox ? { epoch: this.#inbox.epoch, seq: this.#inbox.floor } : null;
  }

  /** Requests waiting for a connection or an answer. */
  get pendingCount() {
    let n = 0;
    for (const r of this.#pending.values()) if (APP_KINDS.has(r.kind)) n += 1;
    return n;
  }

  /** Closes for good: no reconnect; what waits is rejected with `closed`. */
  close() {
    this.#closedByUser = true;
    this.#finish(new WsgateError("closed", "the client was closed"), CLOSE.NORMAL, "client closed");
  }

  // ---- connection lifecycle -----------------------------------------------------

  async #open() {
    const gen = ++this.#socketGen;
    let url = this.#url;
    const protocols = [PROTOCOL];
    try {
      const token = typeof this.#opts.token === "function" ? await this.#opts.token() : this.#opts.token;
      if (gen !== this.#socketGen || this.state === "closed") return;
      if (token) {
        if (this.#opts.tokenIn === "query") {
          url += `${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
        } else {
          protocols.push(`bearer.${token}`);
        }
      }
      this.#ws = new this.#WS(url, protocols);
    } catch (error) {
      if (gen !== this.#socketGen || this.state === "closed") return;
      this.#emit("error", new WsgateError("connect_failed", String(error?.message ?? error)));
      this.#disconnected(CLOSE.ABNORMAL, "could not open a socket");
      return;
    }
    const ws = this.#ws;
    ws.onmessage = (event) => gen === this.#socketGen && this.#onFrame(event.data);
    ws.onclose = (event) => gen === this.#socketGen && this.#disconnected(event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
    this.#timers.connect = this.#clock.setTimeout(() => {
      if (gen === this.#socketGen && this.state !== "open") this.#abandon("no welcome in time");
    }, this.#opts.connectTimeoutMs);
  }

  /** Drops the socket without waiting for a close handshake (a dead link never answers). */
  #abandon(reason) {
    const ws = this.#ws;
    this.#socketGen += 1;
    this.#ws = null;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(CLOSE.NORMAL, reason);
      } catch {
        // Already closing.
      }
    }
    this.#disconnected(CLOSE.ABNORMAL, reason, true);
  }

  #disconnected(code, reason, abandoned = false) {
    if (!abandoned) {
      this.#socketGen += 1;
      this.#ws = null;
    }
    this.#clear("ping");
    this.#clear("connect");
    // Whatever was written on the dead socket is written again on the next one.
    for (const [id, r] of this.#pending) {
      this.#clock.clearTimeout(r.timer);
      r.timer = null;
      r.written = false;
      if (r.kind === "resume") this.#pending.delete(id);
      if (r.kind === "leave") this.#settle(id, { room: r.room });
    }
    this.#resumeId = null;
    if (this.state === "closed") return;
    const policy = closePolicy(code);
    if (policy === "stop") {
      this.#finish(new WsgateError("disconnected", `closed by the gateway (${code} ${reason || ""})`.trim()), null, "", {
        code,
        reason,
      });
      return;
    }
    const { backoffBaseMs: base, backoffMaxMs: max, policyBackoffAttempt } = this.#opts;
    let delay;
    if (policy === "soon") {
      this.#attempt = 0;
      delay = backoffDelay(0, this.#random, base, max);
    } else if (policy === "policy") {
      this.#attempt = Math.max(this.#attempt, policyBackoffAttempt);
      const window = backoffWindow(this.#attempt, base, max);
      delay = Math.floor(window / 2 + this.#random() * (window / 2));
    } else {
      delay = backoffDelay(this.#attempt, this.#random, base, max);
    }
    const attempt = this.#attempt;
    this.#attempt += 1;
    this.#setState("reconnecting", { attempt, delay, code, reason: reason || "" });
    this.#timers.reconnect = this.#clock.setTimeout(() => {
      this.#timers.reconnect = null;
      if (this.state === "closed") return;
      this.#setState(this.#welcomed ? "reconnecting" : "connecting", { attempt, connecting: true });
      this.#open();
    }, delay);
  }

  /** Ends the client: no reconnect, every waiting request rejected with `error`. */
  #finish(error, closeCode = CLOSE.NORMAL, closeReason = "", detail = {}) {
    if (this.state === "closed") return;
    const ws = this.#ws;
    this.#socketGen += 1;
    this.#ws = null;
    if (ws && closeCode) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(closeCode, closeReason);
      } catch {
        // Already closing.
      }
    }
    for (const name of Object.keys(this.#timers)) this.#clear(name);
    this.state = "closed";
    for (const id of [...this.#pending.keys()]) this.#settle(id, null, error);
    this.#readyReject(error);
    this.#emit("state", { state: "closed", ...detail, error });
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.#emit("state", { state, ...detail });
  }

  #clear(name) {
    this.#clock.clearTimeout(this.#timers[name]);
    this.#timers[name] = null;
  }

  // ---- liveness -------------------------------------------------------------------

  /** Pings after `pingIntervalMs` of silence; drops the socket after `pongTimeoutMs` more. */
  #armLiveness() {
    this.#clear("ping");
    const { pingIntervalMs, pongTimeoutMs } = this.#opts;
    const idle = this.#clock.now() - this.#lastRx;
    if (idle >= pingIntervalMs + pongTimeoutMs) {
      this.#abandon(`nothing received for ${idle} ms`);
      return;
    }
    if (idle >= pingIntervalMs && !this.#pingOutstanding) {
      this.#pingOutstanding = true;
      this.#write({ type: "ping", id: this.#newId() });
    }
    const next = idle < pingIntervalMs ? pingIntervalMs - idle : pingIntervalMs + pongTimeoutMs - idle;
    this.#timers.ping = this.#clock.setTimeout(() => this.#armLiveness(), next);
  }

  // ---- requests -------------------------------------------------------------------

  #newId() {
    this.#nextId += 1;
    return `${this.#idPrefix}.${this.#nextId.toString(36)}`;
  }

  /**
   * A request with an answer: registered under a new id, written now if the client is
   * open (else when it is), retried on timeout. `build(id)` makes the frame when it is
   * written (a join's `since` changes between connections).
   */
  #request(kind, frame, extra = {}, build = null) {
    if (this.state === "closed") return Promise.reject(new WsgateError("closed", "the client was closed"));
    if (this.state !== "open" && this.pendingCount >= this.#opts.maxQueued) {
      if (kind === "join") this.#rooms.delete(extra.room);
      return Promise.reject(
        new WsgateError("queue_full", `${this.#opts.maxQueued} requests already wait for a connection`),
      );
    }
    const id = this.#newId();
    const promise = new Promise((resolve, reject) => {
      const r = { id, kind, tries: 0, timer: null, written: false, resolve, reject, ...extra };
      r.build = build ?? ((id) => ({ ...frame, id }));
      this.#pending.set(id, r);
      if (kind === "join") this.#rooms.get(extra.room).joinId = id;
      if (this.state === "open") this.#writeRequest(r);
    });
    // The id, known at once: an application keys its own copy of a message by it, and
    // finds it again in a receipt or in the room's copy (`from` is the user, `id` this).
    promise.id = id;
    return promise;
  }

  #writeRequest(r) {
    if (r.tries > this.#opts.retries) {
      this.#settle(r.id, null, new WsgateError("timeout", `no answer after ${r.tries} tries`, { id: r.id }));
      return;
    }
    r.tries += 1;
    r.written = true;
    this.#write(r.build(r.id));
    this.#clock.clearTimeout(r.timer);
    r.timer = this.#clock.setTimeout(() => {
      r.timer = null;
      if (this.#pending.get(r.id) === r && this.state === "open") this.#writeRequest(r);
    }, this.#opts.requestTimeoutMs);
  }

  #settle(id, value, error) {
    const r = this.#pending.get(id);
    if (!r) return null;
    this.#pending.delete(id);
    this.#clock.clearTimeout(r.timer);
    if (r.kind === "join") {
      const entry = this.#rooms.get(r.room);
      if (entry && entry.joinId === id) entry.joinId = null;
    }
    if (error) r.reject(error);
    else r.resolve(value);
    return r;
  }

  #write(frame) {
    const ws = this.#ws;
    if (!ws || this.state !== "open") return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false; // closing: the close event comes next
    }
  }

  #joinFrame(room, entry, id) {
    const frame = { type: "join", room, id };
    if (entry.presence) frame.presence = true;
    if (entry.seqs) frame.since = { epoch: entry.seqs.epoch, seq: entry.seqs.floor };
    return frame;
  }

  #resume(since) {
    const id = this.#newId();
    this.#resumeId = id;
    const r = { id, kind: "resume", tries: 0, timer: null, written: false, resolve() {}, reject() {} };
    r.build = (id) => ({ type: "resume", since, id });
    this.#pending.set(id, r);
    this.#writeRequest(r);
  }

  // ---- what arrives ---------------------------------------------------------------

  #onFrame(data) {
    this.#lastRx = this.#clock.now();
    this.#pingOutstanding = false;
    let m;
    try {
      m = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      this.#emit("error", new WsgateError("bad_frame", "the gateway sent something that is not JSON"));
      return;
    }
    switch (m.type) {
      case "welcome":
        return this.#onWelcome(m);
      case "msg":
        return this.#onMsg(m);
      case "room_msg":
        return this.#onRoomMsg(m);
      case "ack":
        return void this.#settle(m.id, {
          id: m.id,
          seq: m.seq,
          epoch: m.epoch,
          ...(m.to != null ? { to: m.to } : { room: m.room }),
        });
      case "receipt": {
        const key = JSON.stringify([m.by, m.id ?? null, m.id == null ? m.seq : null]);
        if (this.#seenReceipts.add(key)) this.#emit("receipt", { by: m.by, seq: m.seq, id: m.id });
        return;
      }
      case "joined":
        return this.#onJoined(m);
      case "left":
        return void this.#settle(m.id, { room: m.room });
      case "resumed":
        this.#inbox?.raiseTo(m.at.seq);
        this.#settle(m.id, m);
        if (m.id === this.#resumeId) this.#resumeId = null;
        return;
      case "resync":
        return this.#onResync(m);
      case "presence":
        if (m.id != null && this.#pending.has(m.id)) return void this.#settle(m.id, m);
        return this.#emit("presence", m);
      case "pong":
        return;
      case "error":
        return this.#onError(m);
      default:
        return; // a newer gateway's message this client does not know
    }
  }

  #onWelcome(m) {
    this.#clear("connect");
    this.user = m.user;
    this.limits = m.limits;
    this.#attempt = 0;
    const first = !this.#welcomed;
    this.#welcomed = true;
    this.#clear("initial");
    // The inbox: resume from what was seen; a first connection (or a new epoch) starts a
    // new window, and its offline queue (seq at most `inbox.seq`) follows this welcome.
    let since;
    if (this.#inbox && this.#inbox.epoch === m.inbox.epoch) {
      since = { epoch: this.#inbox.epoch, seq: this.#inbox.floor };
    } else {
      since = this.#inbox ? { epoch: this.#inbox.epoch, seq: this.#inbox.floor } : m.inbox;
      this.#inbox = new SeqWindow(m.inbox.epoch);
    }
    this.#setState("open", { user: m.user, first });
    this.#lastRx = this.#clock.now();
    this.#armLiveness();
    this.#resume(since);
    // Rooms, with `since` where there is a position (a join still waiting keeps its id),
    // before what waited, so a room's replay comes before new traffic.
    for (const [room, entry] of this.#rooms) {
      const waiting = entry.joinId && this.#pending.get(entry.joinId);
      if (waiting) {
        this.#writeRequest(waiting);
        continue;
      }
      const id = this.#newId();
      entry.joinId = id;
      const r = { id, kind: "join", room, tries: 0, timer: null, written: false, resolve() {}, reject() {} };
      r.reject = (error) => {
        if (error.code === "closed") return;
        // Refused (forbidden, too_many_rooms): the room is gone. Unanswered: it is
        // joined again at the next welcome.
        if (error.code !== "timeout" && this.#rooms.get(room) === entry) this.#rooms.delete(room);
        this.#emit("error", error);
      };
      r.build = (id) => this.#joinFrame(room, entry, id);
      this.#pending.set(id, r);
      this.#writeRequest(r);
    }
    for (const r of [...this.#pending.values()]) {
      if (!r.written && this.#pending.get(r.id) === r) this.#writeRequest(r);
    }
    if (first) this.#readyResolve(this);
  }

  #onMsg(m) {
    const inbox = this.#inbox;
    if (!inbox) return;
    const fresh = inbox.accept(m.seq);
    if (fresh && !this.#duplicateId(m.from, m.id, "")) {
      this.#emit("msg", { seq: m.seq, from: m.from, id: m.id, body: m.body, epoch: inbox.epoch });
    }
    // A new seq is acked even when its (from, id) was seen: the sender's retry gets its
    // receipt and leaves the offline queue. A seq seen before was acked then.
    if (fresh && this.#opts.autoAck) this.ack(m.seq);
    // A hole (a delivery shed under overload): the inbox history fills it.
    if (inbox.hasGap && this.#resumeId === null && this.state === "open") {
      this.#resume({ epoch: inbox.epoch, seq: inbox.floor });
    }
  }

  #onRoomMsg(m) {
    const entry = this.#rooms.get(m.room);
    if (!entry) return; // left already
    if (entry.seqs && !entry.seqs.accept(m.seq)) return;
    if (this.#duplicateId(m.from, m.id, m.room)) return;
    this.#emit("room_msg", { room: m.room, seq: m.seq, from: m.from, id: m.id, body: m.body });
  }

  #onJoined(m) {
    const entry = this.#rooms.get(m.room);
    const rejoin = !!entry?.seqs;
    if (entry) {
      if (!entry.seqs || entry.seqs.epoch !== m.at.epoch) entry.seqs = new SeqWindow(m.at.epoch, m.at.seq);
      else entry.seqs.raiseTo(m.at.seq);
    }
    const joined = { room: m.room, at: m.at, replayed: m.replayed };
    this.#settle(m.id, joined);
    // Also after every re-join: membership (and so presence) is new on each connection.
    if (entry) this.#emit("joined", { ...joined, rejoin });
  }

  #onResync(m) {
    if (m.scope === "inbox") {
      if (!this.#inbox || this.#inbox.epoch !== m.current.epoch) this.#inbox = new SeqWindow(m.current.epoch);
      this.#inbox.raiseTo(m.current.seq);
      if (this.#resumeId) this.#settle(this.#resumeId, m);
      this.#resumeId = null;
      this.#emit("resync", { scope: "inbox", current: m.current, reason: m.reason });
      return;
    }
    const entry = this.#rooms.get(m.room);
    if (entry) entry.seqs = new SeqWindow(m.current.epoch, m.current.seq);
    this.#emit("resync", { scope: "room", room: m.room, current: m.current, reason: m.reason });
  }

  #onError(m) {
    const error = new WsgateError(m.code, m.text, { id: m.id });
    const r = m.id != null ? this.#pending.get(m.id) : undefined;
    if (r && RETRYABLE.has(m.code) && r.tries <= this.#opts.retries) {
      this.#clock.clearTimeout(r.timer);
      const delay = backoffDelay(r.tries, this.#random, this.#opts.backoffBaseMs, this.#opts.backoffMaxMs);
      r.timer = this.#clock.setTimeout(() => {
        r.timer = null;
        if (this.#pending.get(r.id) === r && this.state === "open") this.#writeRequest(r);
      }, delay);
      return;
    }
    if (m.id != null && this.#pending.has(m.id)) {
      const r = this.#settle(m.id, null, error);
      if (r?.kind === "resume") this.#resumeId = null;
      return;
    }
    this.#emit("error", error);
  }

  /** `true` if (from, id) was seen in `scope` (the inbox, or a room) already. */
  #duplicateId(from, id, scope) {
    if (from == null || id == null) return false;
    return !this.#seenIds.add(JSON.stringify([scope, from, id]));
  }

  #emit(event, value) {
    const fns = this.#listeners.get(event);
    if (!fns) return;
    for (const fn of [...fns]) {
      try {
        fn(value);
      } catch (error) {
        // A failing listener must not stop the others or the client.
        (globalThis.reportError ?? console.error)(error);
      }
    }
  }
}

/** `/ws` on a page becomes `ws(s)://<the page's host>/ws`; anything else is used as it is. */
function resolveUrl(url) {
  const text = String(url);
  if (/^wss?:\/\//i.test(text) || typeof globalThis.location === "undefined") return text;
  const u = new URL(text, globalThis.location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}
