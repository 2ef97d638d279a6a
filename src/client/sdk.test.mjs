// Unit tests of wsgate.js's logic, on a fake WebSocket and a fake clock (node --test).
// Run: node --test src/client/sdk.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  CLOSE,
  DEFAULTS,
  PROTOCOL,
  RecentSet,
  SeqWindow,
  WsgateError,
  backoffDelay,
  backoffWindow,
  closePolicy,
  connect,
  createClient,
} from "./wsgate.js";

/** A clock whose time moves only when the test says so. */
class FakeClock {
  t = 1_000_000;
  timers = new Map();
  nextHandle = 1;
  now = () => this.t;
  setTimeout = (fn, ms) => {
    const handle = this.nextHandle++;
    this.timers.set(handle, { at: this.t + Math.max(0, ms), fn });
    return handle;
  };
  clearTimeout = (handle) => {
    this.timers.delete(handle);
  };
  /** Moves time forward by `ms`, running every timer that falls due, in order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let due = null;
      for (const [handle, timer] of this.timers) {
        if (timer.at <= end && (due === null || timer.at < due[1].at)) due = [handle, timer];
      }
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = Math.max(this.t, due[1].at);
      due[1].fn();
    }
    this.t = end;
  }
}

/** A WebSocket the test plays the gateway for: `sockets` lists every one made. */
function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closed = null;
      this.readyState = 0;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("InvalidStateError");
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      this.closed = { code, reason };
      this.readyState = 3;
    }
    // What the gateway does:
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    deliver(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
    serverClose(code, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason, wasClean: code !== 1006 });
    }
    welcome(user = "alice", inbox = { epoch: 7, seq: 0 }) {
      this.open();
      this.deliver({ type: "welcome", protocol: PROTOCOL, user, inbox, limits: { max_rooms: 64 } });
    }
    /** Sent frames of `type`. */
    ofType(type) {
      return this.sent.filter((f) => f.type === type);
    }
    /** Answers the resume the client sends after each welcome. */
    answerResume(at = { epoch: 7, seq: 0 }) {
      const resume = this.ofType("resume").at(-1);
      assert.ok(resume, "a resume after the welcome");
      this.deliver({ type: "resumed", id: resume.id, at, replayed: 0 });
      return resume;
    }
  }
  return { FakeWebSocket, sockets };
}

/** A client on the fake socket and clock; `random` is fixed unless given. */
function setup(options = {}) {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const client = createClient("ws://gw.test/ws", {
    token: "t0k",
    WebSocket: FakeWebSocket,
    clock,
    random: () => 0.5,
    ...options,
  });
  const states = [];
  client.on("state", (s) => states.push({ ...s, at: clock.t }));
  return { client, clock, sockets, states, last: () => sockets.at(-1) };
}

/** Lets the client's `#open` (async, it awaits the token) run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

async function opened(options) {
  const env = setup(options);
  await settle();
  env.last().welcome();
  await env.client.ready;
  env.last().answerResume();
  return env;
}

// ---- backoff -------------------------------------------------------------------------

test("backoff windows double from 500 ms and stop at 30 s", () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7, 20, 1000].map((a) => backoffWindow(a)),
    [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000],
  );
  for (let attempt = 0; attempt < 40; attempt++) {
    const window = backoffWindow(attempt);
    for (const r of [0, 1e-9, 0.25, 0.5, 0.999999999]) {
      const d = backoffDelay(attempt, () => r);
      assert.ok(d >= 0 && d < window, `attempt ${attempt}, random ${r}: ${d} outside [0, ${window})`);
    }
  }
  assert.equal(backoffDelay(3, () => 0), 0, "full jitter reaches down to 0");
  assert.equal(backoffDelay(3, () => 0.999999), 3999, "and up to the window");
});

test("full jitter spreads delays uniformly over the window", () => {
  // A deterministic generator (mulberry32), so the test cannot flake.
  let seed = 0x9e3779b9;
  const random = () => {
    seed |= 0;
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const n = 10_000;
  const window = backoffWindow(3); // 4 s
  const buckets = new Array(10).fill(0);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const d = backoffDelay(3, random);
    sum += d;
    buckets[Math.floor((d / window) * 10)] += 1;
  }
  const mean = sum / n;
  assert.ok(Math.abs(mean - window / 2) < window * 0.02, `mean ${mean} not near ${window / 2}`);
  for (const [i, count] of buckets.entries()) {
    assert.ok(Math.abs(count - n / 10) < n * 0.02, `decile ${i} holds ${count} of ${n}`);
  }
});

test("close codes: 4000 stops, 1001 and 1012 come back soon, 1008 backs off longer", () => {
  assert.equal(closePolicy(4000), "stop");
  assert.equal(closePolicy(1001), "soon");
  assert.equal(closePolicy(1012), "soon");
  for (const code of [1008, 1002, 1003, 1007, 1009]) assert.equal(closePolicy(code), "policy", String(code));
  for (const code of [1000, 1005, 1006, 1011, 1013, 4001]) assert.equal(closePolicy(code), "backoff", String(code));
});

// ---- sequence windows and dedup ---------------------------------------------------

test("a sequence window takes each seq once, in any order, and closes holes", () => {
  const w = new SeqWindow(1, 10);
  assert.equal(w.accept(10), false, "at the floor: seen");
  assert.equal(w.accept(12), true);
  assert.equal(w.hasGap, true);
  assert.equal(w.accept(12), false);
  assert.equal(w.accept(11), true);
  assert.deepEqual([w.floor, w.hasGap], [12, false]);
  w.accept(20);
  w.raiseTo(15);
  assert.deepEqual([w.floor, [...w.above]], [15, [20]]);
  assert.equal(w.accept(14), false);
  // Bounded: past maxAbove the oldest hole is given up.
  const small = new SeqWindow(1, 0, 3);
  for (const s of [5, 7, 9, 11]) small.accept(s);
  assert.equal(small.floor, 5);
  assert.ok(small.above.size <= 3);
  const recent = new RecentSet(2);
  assert.deepEqual(["a", "b", "a", "c", "a"].map((k) => recent.add(k)), [true, true, false, true, true]);
});

// ---- connecting --------------------------------------------------------------------

test("connect resolves at the welcome; the token rides as a subprotocol next to wsgate.v1.json", async () => {
  const { FakeWebSocket, sockets } = fakeWebSocketClass();
  const clock = new FakeClock();
  const pending = connect("ws://gw.test/ws", { token: "abc.def.ghi", WebSocket: FakeWebSocket, clock });
  await settle();
  assert.equal(sockets.length, 1);
  assert.deepEqual(sockets[0].protocols, ["wsgate.v1.json", "bearer.abc.def.ghi"]);
  assert.equal(sockets[0].url, "ws://gw.test/ws");
  let resolved = false;
  pending.then(() => (resolved = true));
  sockets[0].open();
  await settle();
  assert.equal(resolved, false, "not before the welcome");
  sockets[0].welcome("alice", { epoch: 7, seq: 3 });
  const client = await pending;
  assert.equal(client.user, "alice");
  assert.equal(client.state, "open");
  // The first resume asks for nothing before the welcome's position.
  assert.deepEqual(sockets[0].ofType("resume")[0].since, { epoch: 7, seq: 3 });
  client.close();
  assert.equal(sockets[0].closed.code, 1000);

  const q = setup({ tokenIn: "query", token: async () => "a b" });
  await settle();
  assert.equal(q.last().url, "ws://gw.test/ws?token=a%20b");
  assert.deepEqual(q.last().protocols, ["wsgate.v1.json"]);
  q.client.close();
});

test("connect rejects when no welcome comes within initialConnectTimeoutMs", async () => {
  const { client, clock, sockets } = setup({ initialConnectTimeoutMs: 5_000 });
  await settle();
  sockets[0].serverClose(1006);
  clock.advance(5_000);
  await assert.rejects(client.ready, (e) => e instanceof WsgateError && e.code === "connect_timeout");
  assert.equal(client.state, "closed");
  const made = sockets.length;
  clock.advance(120_000);
  await settle();
  assert.equal(sockets.length, made, "no attempt after the client gave up");
});

// ---- requests ----------------------------------------------------------------------

test("send resolves with the ack; an error answer rejects with its code", async () => {
  const { client, last } = await opened();
  const ws = last();
  const p1 = client.send("bob", { text: "hi" });
  const frame = ws.ofType("send")[0];
  assert.equal(frame.to, "bob");
  assert.deepEqual(frame.body, { text: "hi" });
  assert.equal(typeof frame.id, "string");
  assert.equal(p1.id, frame.id, "the promise names the request's id at once");
  ws.deliver({ type: "ack", id: frame.id, to: "bob", seq: 4, epoch: 7 });
  assert.deepEqual(await p1, { id: frame.id, seq: 4, epoch: 7, to: "bob" });

  const p2 = client.publish("lobby", "x");
  const pub = ws.ofType("publish")[0];
  assert.notEqual(pub.id, frame.id, "every request has its own id");
  ws.deliver({ type: "error", id: pub.id, code: "forbidden", text: "publish not allowed by the token" });
  await assert.rejects(p2, (e) => e instanceof WsgateError && e.code === "forbidden");
  client.close();
});

test("overloaded and unavailable are retried with the same id after a jittered delay, then rejected", async () => {
  const { client, clock, last } = await opened({ retries: 2, random: () => 0.999 });
  const ws = last();
  const p = client.publish("lobby", "x");
  const rejected = assert.rejects(p, (e) => e.code === "unavailable");
  for (const [tries, code] of [[1, "overloaded"], [2, "unavailable"]]) {
    const id = ws.ofType("publish")[0].id;
    ws.deliver({ type: "error", id, code, text: "retry later" });
    const delay = Math.floor(0.999 * backoffWindow(tries));
    clock.advance(delay - 1);
    assert.equal(ws.ofType("publish").length, tries, "not before the delay");
    clock.advance(1);
    assert.equal(ws.ofType("publish").length, tries + 1);
    assert.equal(ws.ofType("publish").at(-1).id, id, "the same id");
  }
  ws.deliver({ type: "error", id: ws.ofType("publish")[0].id, code: "unavailable", text: "still" });
  await rejected;
  // Other codes are answers, not retried.
  const q = client.send("bob", 1);
  ws.deliver({ type: "error", id: ws.ofType("send")[0].id, code: "too_large", text: "no" });
  await assert.rejects(q, (e) => e.code === "too_large");
  clock.advance(60_000);
  assert.equal(ws.ofType("send").length, 1);
  client.close();
});

test("a request unanswered is written again with the same id, then rejected with timeout", async () => {
  const { client, clock, last } = await opened({ requestTimeoutMs: 1_000, retries: 2 });
  const ws = last();
  const p = client.send("bob", 1);
  const rejected = assert.rejects(p, (e) => e.code === "timeout");
  clock.advance(999);
  assert.equal(ws.ofType("send").length, 1);
  clock.advance(1);
  assert.equal(ws.ofType("send").length, 2);
  clock.advance(1_000);
  const sends = ws.ofType("send");
  assert.equal(sends.length, 3);
  assert.equal(new Set(sends.map((f) => f.id)).size, 1, "the same id every time");
  clock.advance(1_000);
  assert.equal(ws.ofType("send").length, 3, "retries bounded");
  assert.equal(client.pendingCount, 0, "rejected after the last try");
  await rejected;
  // A late ack for it changes nothing.
  ws.deliver({ type: "ack", id: sends[0].id, to: "bob", seq: 1, epoch: 7 });
  client.close();
});

test("while disconnected requests wait in a bounded queue and go out after resume and joins, ids kept", async () => {
  const { client, clock, last, sockets } = await opened({ maxQueued: 3 });
  const joined = client.join("lobby");
  const j = last().ofType("join")[0];
  last().deliver({ type: "joined", id: j.id, room: "lobby", at: { epoch: 3, seq: 10 }, replayed: 0 });
  await joined;
  // In flight when the link drops: written again on the next socket with its id.
  const inflight = client.send("bob", "in flight");
  const inflightId = last().ofType("send")[0].id;
  last().serverClose(1006);
  assert.equal(client.state, "reconnecting");
  const queued = [client.send("bob", "q1"), client.publish("lobby", "q2")];
  await assert.rejects(client.send("bob", "q3"), (e) => e.code === "queue_full");
  assert.equal(client.pendingCount, 3);
  clock.advance(backoffWindow(0));
  await settle();
  assert.equal(sockets.length, 2);
  const ws = last();
  ws.welcome("alice", { epoch: 7, seq: 0 });
  const types = ws.sent.map((f) => f.type);
  assert.deepEqual(types, ["resume", "join", "send", "send", "publish"], types.join());
  assert.equal(ws.sent[2].id, inflightId);
  assert.deepEqual(ws.sent[1].since, { epoch: 3, seq: 10 }, "re-joined from the last seq seen");
  for (const f of ws.sent.filter((f) => f.type === "send" || f.type === "publish")) {
    ws.deliver({ type: "ack", id: f.id, seq: 1, epoch: 7, ...(f.to ? { to: f.to } : { room: f.room }) });
  }
  await inflight;
  await Promise.all(queued);
  client.close();
});

// ---- what arrives -------------------------------------------------------------------

test("duplicates are dropped by seq and by (from, id); each new seq is acked once", async () => {
  const { client, last } = await opened();
  const ws = last();
  const got = [];
  client.on("msg", (m) => got.push(`${m.seq}:${m.id}`));
  ws.deliver({ type: "msg", seq: 1, from: "bob", id: "b1", body: "hi" });
  ws.deliver({ type: "msg", seq: 1, from: "bob", id: "b1", body: "hi" }); // replayed
  ws.deliver({ type: "msg", seq: 2, from: "bob", id: "b1", body: "hi" }); // bob's retry
  ws.deliver({ type: "msg", seq: 3, from: "carol", id: "b1", body: "other sender, same id" });
  ws.deliver({ type: "msg", seq: 4, from: null, body: "from the backend, no id" });
  ws.deliver({ type: "msg", seq: 5, from: null, body: "from the backend, no id" });
  assert.deepEqual(got, ["1:b1", "3:b1", "4:undefined", "5:undefined"]);
  assert.deepEqual(
    ws.ofType("ack").map((a) => a.seq),
    [1, 2, 3, 4, 5],
  );
  assert.ok(ws.ofType("ack").every((a) => typeof a.id === "string"), "acks carry ids too");
  const receipts = [];
  client.on("receipt", (r) => receipts.push(r.id));
  ws.deliver({ type: "receipt", by: "bob", seq: 9, id: "a1" });
  ws.deliver({ type: "receipt", by: "bob", seq: 10, id: "a1" }); // our retry, acked twice
  ws.deliver({ type: "receipt", by: "bob", seq: 11, id: "a2" });
  assert.deepEqual(receipts, ["a1", "a2"]);
  client.close();
});

test("after a reconnect the inbox resumes from the last seq seen; replay and offline burst overlap once", async () => {
  const { client, clock, last } = await opened();
  const got = [];
  client.on("msg", (m) => got.push(m.seq));
  last().deliver({ type: "msg", seq: 1, from: "bob", id: "1", body: 1 });
  last().deliver({ type: "msg", seq: 2, from: "bob", id: "2", body: 2 });
  last().serverClose(1012, "restart");
  clock.advance(backoffWindow(0));
  await settle();
  const ws = last();
  ws.welcome("alice", { epoch: 7, seq: 4 });
  assert.deepEqual(ws.ofType("resume")[0].since, { epoch: 7, seq: 2 });
  // The offline queue (3, 4) comes after the welcome, then a live 5, then the replay.
  for (const seq of [3, 4, 5, 3, 4, 5]) ws.deliver({ type: "msg", seq, from: "bob", id: String(seq), body: seq });
  ws.answerResume({ epoch: 7, seq: 5 });
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
  assert.deepEqual(client.position, { epoch: 7, seq: 5 });
  // A new epoch (the store was lost): the old position is offered, resync surfaces.
  const resyncs = [];
  client.on("resync", (r) => resyncs.push(r));
  ws.serverClose(1012);
  clock.advance(backoffWindow(0));
  await settle();
  const ws3 = last();
  ws3.welcome("alice", { epoch: 99, seq: 1 });
  ws3.deliver({ type: "msg", seq: 1, from: "bob", id: "new", body: "offline in the new epoch" });
  assert.deepEqual(ws3.ofType("resume")[0].since, { epoch: 7, seq: 5 });
  ws3.deliver({ type: "resync", scope: "inbox", current: { epoch: 99, seq: 1 }, reason: "epoch_changed" });
  assert.deepEqual(resyncs, [{ scope: "inbox", current: { epoch: 99, seq: 1 }, reason: "epoch_changed" }]);
  assert.deepEqual(got, [1, 2, 3, 4, 5, 1]);
  assert.deepEqual(client.position, { epoch: 99, seq: 1 });
  client.close();
});

test("rooms: joined sets the position, replays are deduplicated, a room resync is an event", async () => {
  const { client, clock, last } = await opened();
  const got = [];
  client.on("room_msg", (m) => got.push(`${m.room}:${m.seq}`));
  const joined = client.join("lobby", { presence: true });
  const j = last().ofType("join")[0];
  assert.equal(j.presence, true);
  assert.equal(j.since, undefined, "a first join asks for nothing old");
  last().deliver({ type: "joined", id: j.id, room: "lobby", at: { epoch: 3, seq: 5 }, replayed: 0 });
  assert.deepEqual(await joined, { room: "lobby", at: { epoch: 3, seq: 5 }, replayed: 0 });
  last().deliver({ type: "room_msg", room: "lobby", seq: 5, from: "bob", id: "old", body: 0 });
  last().deliver({ type: "room_msg", room: "lobby", seq: 6, from: "bob", id: "x", body: 1 });
  last().deliver({ type: "room_msg", room: "lobby", seq: 7, from: "bob", id: "x", body: 1 }); // retry
  last().deliver({ type: "room_msg", room: "other", seq: 1, from: "bob", id: "y", body: 1 }); // not joined
  last().serverClose(1001, "going away");
  clock.advance(backoffWindow(0));
  await settle();
  const ws = last();
  ws.welcome();
  ws.answerResume();
  const rejoin = ws.ofType("join")[0];
  assert.deepEqual(rejoin.since, { epoch: 3, seq: 7 });
  assert.equal(rejoin.presence, true);
  ws.deliver({ type: "room_msg", room: "lobby", seq: 7, from: "bob", id: "x", body: 1 });
  ws.deliver({ type: "room_msg", room: "lobby", seq: 8, from: "carol", id: "z", body: 2 });
  const joins = [];
  client.on("joined", (j) => joins.push(j));
  ws.deliver({ type: "joined", id: rejoin.id, room: "lobby", at: { epoch: 3, seq: 8 }, replayed: 2 });
  assert.deepEqual(got, ["lobby:6", "lobby:8"]);
  assert.deepEqual(joins, [{ room: "lobby", at: { epoch: 3, seq: 8 }, replayed: 2, rejoin: true }]);
  const resyncs = [];
  client.on("resync", (r) => resyncs.push(r));
  ws.deliver({ type: "resync", room: "lobby", current: { epoch: 4, seq: 2 }, reason: "epoch_changed" });
  assert.deepEqual(resyncs, [{ scope: "room", room: "lobby", current: { epoch: 4, seq: 2 }, reason: "epoch_changed" }]);
  ws.deliver({ type: "room_msg", room: "lobby", seq: 3, from: "carol", id: "w", body: 3 });
  assert.deepEqual(got, ["lobby:6", "lobby:8", "lobby:3"]);
  client.close();
});

// ---- close codes ------------------------------------------------------------------

test("4000 from the backend: no reconnect, waiting requests rejected", async () => {
  const { client, clock, sockets, states } = await opened();
  const p = client.send("bob", 1);
  sockets[0].serverClose(4000, "disconnected by the backend");
  await assert.rejects(p, (e) => e.code === "disconnected");
  assert.equal(client.state, "closed");
  assert.equal(states.at(-1).state, "closed");
  assert.equal(states.at(-1).code, 4000);
  clock.advance(10 * 60_000);
  await settle();
  assert.equal(sockets.length, 1);
  await assert.rejects(client.send("bob", 2), (e) => e.code === "closed");
});

test("1012 and 1001: back within one base window, whatever the earlier failures", async () => {
  for (const code of [1012, 1001]) {
    const { client, clock, sockets, states } = await opened({ random: () => 0.99 });
    sockets[0].serverClose(code);
    const wait = states.at(-1);
    assert.deepEqual([wait.state, wait.attempt, wait.code], ["reconnecting", 0, code]);
    assert.equal(wait.delay, Math.floor(0.99 * 500));
    clock.advance(wait.delay - 1);
    await settle();
    assert.equal(sockets.length, 1, "not before the delay");
    clock.advance(1);
    await settle();
    assert.equal(sockets.length, 2);
    // The restarted server is not up yet: the usual backoff, doubling.
    sockets[1].serverClose(1006);
    assert.equal(states.at(-1).delay, Math.floor(0.99 * 1000));
    client.close();
  }
});

test("1008 backs off longer: at least half of a 8 s window", async () => {
  for (const r of [0, 0.99]) {
    const { client, states, sockets } = await opened({ random: () => r });
    sockets[0].serverClose(1008, "message rate exceeded");
    const { delay, attempt } = states.at(-1);
    assert.equal(attempt, DEFAULTS.policyBackoffAttempt);
    assert.ok(delay >= 4_000 && delay < 8_000, `1008 delay ${delay}`);
    client.close();
  }
});

test("repeated failures follow the backoff bounds; a welcome resets them", async () => {
  const { client, clock, sockets, states } = await opened({ random: () => 0.999 });
  sockets[0].serverClose(1006);
  for (let attempt = 0; attempt < 9; attempt++) {
    const wait = states.filter((s) => s.state === "reconnecting" && !s.connecting).at(-1);
    assert.equal(wait.attempt, attempt);
    assert.ok(wait.delay < backoffWindow(attempt) && wait.delay >= backoffWindow(attempt) * 0.99);
    clock.advance(wait.delay);
    await settle();
    sockets.at(-1).serverClose(1006);
  }
  assert.equal(states.at(-1).delay, Math.floor(0.999 * 30_000), "capped at 30 s");
  clock.advance(30_000);
  await settle();
  sockets.at(-1).welcome();
  sockets.at(-1).serverClose(1006);
  assert.equal(states.at(-1).attempt, 0, "reset by the welcome");
  client.close();
});

// ---- liveness -----------------------------------------------------------------------

test("liveness: a ping after pingIntervalMs of silence; no answer drops the socket and reconnects", async () => {
  const { client, clock, sockets, states } = await opened({ pingIntervalMs: 20_000, pongTimeoutMs: 10_000 });
  const ws = sockets[0];
  clock.advance(19_999);
  assert.equal(ws.ofType("ping").length, 0);
  clock.advance(1);
  const ping = ws.ofType("ping")[0];
  assert.ok(ping && typeof ping.id === "string");
  // Answered: the link is alive, and the next ping comes after the next silence.
  ws.deliver({ type: "pong", id: ping.id });
  clock.advance(19_000);
  assert.equal(ws.ofType("ping").length, 1);
  assert.equal(client.state, "open");
  clock.advance(1_000);
  assert.equal(ws.ofType("ping").length, 2);
  // Not answered: dropped after pongTimeoutMs, without waiting for a close handshake.
  clock.advance(9_999);
  assert.equal(client.state, "open");
  clock.advance(1);
  assert.equal(client.state, "reconnecting");
  assert.ok(ws.closed, "the dead socket was closed");
  assert.equal(states.at(-1).code, 1006);
  clock.advance(backoffWindow(0));
  await settle();
  assert.equal(sockets.length, 2);
  client.close();
});

test("an attempt that gets no welcome within connectTimeoutMs is abandoned and retried", async () => {
  const { client, clock, sockets } = setup({ connectTimeoutMs: 3_000, random: () => 0 });
  await settle();
  sockets[0].open(); // the TCP and the 101 went through, the welcome never comes
  clock.advance(3_000);
  assert.ok(sockets[0].closed);
  clock.advance(1);
  await settle();
  assert.equal(sockets.length, 2);
  sockets[1].welcome();
  await client.ready;
  client.close();
});

test("a throwing listener does not stop the client or the other listeners", async () => {
  const { client, last } = await opened();
  const errors = [];
  const original = globalThis.reportError;
  globalThis.reportError = (e) => errors.push(e);
  try {
    const got = [];
    client.on("msg", () => {
      throw new Error("app bug");
    });
    client.on("msg", (m) => got.push(m.seq));
    last().deliver({ type: "msg", seq: 1, from: "bob", id: "1", body: 1 });
    last().deliver({ type: "msg", seq: 2, from: "bob", id: "2", body: 2 });
    assert.deepEqual(got, [1, 2]);
    assert.equal(errors.length, 2);
  } finally {
    globalThis.reportError = original;
    client.close();
  }
});

test("without a WebSocket implementation the client says what to pass", () => {
  const saved = globalThis.WebSocket;
  try {
    delete globalThis.WebSocket;
    assert.throws(() => createClient("ws://x/ws", {}), /options\.WebSocket/);
  } finally {
    if (saved) globalThis.WebSocket = saved;
  }
  assert.equal(CLOSE.BACKEND_DISCONNECT, 4000);
});
