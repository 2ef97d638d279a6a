// End to end in a real headless Chromium (Debian's, driven by playwright-core): two
// users chat through a real gateway on the /demo page, the gateway is restarted
// mid-conversation (SIGUSR1 drain, then started again on the same data directory and
// port), and both pages must reconnect within the backoff bounds, resume, and show every
// message exactly once, with their check marks.
//
// Run: node --test src/client/browser.test.mjs (scripts/test.sh does, after cargo test).
// The gateway binary: $WSGATE_BIN, else target/debug/wsgate (built by cargo test or
// cargo build). WSGATE_SKIP_BROWSER=1 skips it. The screenshot is written to
// target/demo-screenshot.png (and -lobby.png); the test prints the paths.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { backoffWindow } from "./wsgate.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BINARY = process.env.WSGATE_BIN || path.join(ROOT, "target/debug/wsgate");
const CHROMIUM = process.env.WSGATE_CHROMIUM || "/usr/bin/chromium";
const SKIP = process.env.WSGATE_SKIP_BROWSER === "1";

/** Polls `check` every 50 ms until it returns a truthy value, for at most `ms`. */
async function until(what, ms, check) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A port nothing listens on right now (the kernel's pick, released again). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** An HS256 JWT for `user`, as `wsgate token` would mint it. */
function token(secret, user) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: user, iat: now, exp: now + 3600 })}`;
  return `${unsigned}.${createHmac("sha256", secret).update(unsigned).digest("base64url")}`;
}

/** Starts the gateway as a child process; resolves once /demo answers 200. */
async function startGateway({ port, dataDir, secretFile }) {
  const args = [
    "serve",
    "--demo",
    `--listen=127.0.0.1:${port}`,
    "--admin-listen=127.0.0.1:0",
    "--shards=2",
    "--store=disk",
    `--data-dir=${dataDir}`,
    `--auth-hmac-secret-file=${secretFile}`,
    "--drain-window=1s",
    "--drain-timeout=5s",
    "--log-format=json",
  ];
  const child = spawn(BINARY, args, { stdio: ["ignore", "ignore", "pipe"] });
  const log = [];
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text) => log.push(text));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  let gone = null;
  exited.then((e) => (gone = e));
  await until("the gateway to serve /demo", 30_000, async () => {
    if (gone) throw new Error(`the gateway exited (${JSON.stringify(gone)}): ${log.join("").slice(-2000)}`);
    const res = await fetch(`http://127.0.0.1:${port}/demo`).catch(() => null);
    return res?.status === 200;
  });
  return { child, exited, log, upAt: Date.now() };
}

/** Signals the gateway (by its PID) and waits for it to exit, at most `ms`; then SIGKILL. */
async function stopGateway(gw, signal = "SIGTERM", ms = 15_000) {
  if (gw.child.exitCode !== null || gw.child.signalCode !== null) return gw.exited;
  process.kill(gw.child.pid, signal);
  return waitExit(gw, ms, signal);
}

/** Waits for the gateway to exit, at most `ms`; then SIGKILL (by its PID) and an error. */
async function waitExit(gw, ms, after) {
  const timer = new Promise((r) => setTimeout(() => r("timeout"), ms));
  const result = await Promise.race([gw.exited, timer]);
  if (result === "timeout") {
    process.kill(gw.child.pid, "SIGKILL");
    await gw.exited;
    throw new Error(`the gateway did not exit within ${ms} ms of ${after}`);
  }
  return result;
}

/** What a page knows (read from window.wsgateDemo). */
const snapshot = (page) =>
  page.evaluate(() => {
    const d = window.wsgateDemo;
    const convs = {};
    for (const [key, c] of d.convs) {
      convs[key] = [...c.messages.values()].filter((m) => !m.system).map((m) => ({
        text: m.text, from: m.from, mine: !!m.mine, status: m.status ?? "received", seq: m.seq,
      }));
    }
    return {
      state: d.client?.state,
      user: d.client?.user,
      states: d.states,
      resyncs: d.resyncs,
      convs,
      online: Object.fromEntries([...d.online].map(([room, users]) => [room, [...users].sort()])),
    };
  });

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

async function openDm(page, user) {
  await page.locator("#online li", { hasText: new RegExp(`^${user}$`) }).click();
  await until(`the conversation with ${user}`, 5_000, async () =>
    (await page.textContent("#conv-title")) === `@ ${user}`);
}

async function openRoom(page, room) {
  await page.locator("#rooms li", { hasText: `# ${room}` }).click();
}

/** Waits until `page` holds message `text` in `conv` with `status` (or any if null). */
async function waitFor(page, conv, text, status, ms = 20_000) {
  try {
    return await until(`"${text}" in ${conv} (${status ?? "any status"})`, ms, async () => {
      const s = await snapshot(page);
      return (s.convs[conv] ?? []).some((m) => m.text === text && (status === null || m.status === status));
    });
  } catch (error) {
    const s = await snapshot(page);
    error.message += `; ${s.user} holds ${JSON.stringify(s.convs[conv])}`;
    throw error;
  }
}

test("two pages chat through a gateway restart: resumed, exactly once, with check marks", { timeout: 240_000, skip: SKIP && "WSGATE_SKIP_BROWSER=1" }, async (t) => {
  assert.ok(existsSync(BINARY), `no gateway binary at ${BINARY}: run cargo build (or set WSGATE_BIN)`);
  assert.ok(
    existsSync(CHROMIUM),
    `no Chromium at ${CHROMIUM}: install it with apt-get install -y chromium, or set WSGATE_SKIP_BROWSER=1`,
  );
  const { chromium } = await import("playwright-core");
  const dir = mkdtempSync(path.join(os.tmpdir(), "wsgate-browser-"));
  const dataDir = path.join(dir, "data");
  const secretFile = path.join(dir, "secret.txt");
  const secret = randomBytes(48).toString("base64");
  writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });
  const port = await freePort();
  let gw = await startGateway({ port, dataDir, secretFile });
  let browser = null;
  t.after(async () => {
    await browser?.close().catch(() => {});
    await stopGateway(gw).catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  });

  // The client is served as it is in the binary.
  const js = await fetch(`http://127.0.0.1:${port}/client/wsgate.js`);
  assert.equal(js.status, 200);
  assert.equal(js.headers.get("content-type"), "text/javascript; charset=utf-8");

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const pages = {};
  const consoleErrors = [];
  for (const user of ["alice", "bob"]) {
    const context = await browser.newContext({ viewport: { width: 1120, height: 720 } });
    const page = await context.newPage();
    page.on("pageerror", (e) => consoleErrors.push(`${user}: ${e.message}`));
    await page.goto(`http://127.0.0.1:${port}/demo?token=${token(secret, user)}`);
    pages[user] = page;
  }
  const { alice, bob } = pages;
  for (const [user, page] of Object.entries(pages)) {
    await until(`${user} connected`, 20_000, async () => (await snapshot(page)).state === "open");
    await until(`${user} sees both online`, 20_000, async () =>
      (await snapshot(page)).online.lobby?.join() === "alice,bob");
  }

  // ---- before the restart: the room, and a direct conversation both ways ----------
  await say(alice, "a1: hello room");
  await waitFor(alice, "room:lobby", "a1: hello room", "sent");
  await waitFor(bob, "room:lobby", "a1: hello room", "received");
  await say(bob, "b1: hi alice");
  await waitFor(alice, "room:lobby", "b1: hi alice", "received");
  await openDm(alice, "bob");
  await say(alice, "a-dm1: just us");
  await waitFor(alice, "dm:bob", "a-dm1: just us", "read");
  await waitFor(bob, "dm:alice", "a-dm1: just us", "received");
  await openDm(bob, "alice");
  await say(bob, "b-dm1: hey");
  await waitFor(bob, "dm:alice", "b-dm1: hey", "read");

  // ---- the restart: SIGUSR1 drains with 1012; both type while it is down -----------
  const restartAt = Date.now();
  process.kill(gw.child.pid, "SIGUSR1");
  await openRoom(alice, "lobby");
  await say(alice, "a2: during the restart");
  await say(bob, "b-dm2: are you there?");
  const exit = await waitExit(gw, 15_000, "SIGUSR1");
  assert.equal(exit.code, 0, `the drained gateway exits 0: ${JSON.stringify(exit)}`);
  for (const [user, page] of Object.entries(pages)) {
    const s = await snapshot(page);
    assert.notEqual(s.state, "open", `${user} noticed the restart (${s.state})`);
  }
  gw = await startGateway({ port, dataDir, secretFile });
  const upAt = gw.upAt;

  for (const [user, page] of Object.entries(pages)) {
    const opened = await until(`${user} reconnected`, 45_000, async () => {
      const s = await snapshot(page);
      const open = s.states.filter((e) => e.state === "open" && e.at > restartAt);
      return s.state === "open" && open.length ? { s, open: open[0] } : null;
    }).catch(async (error) => {
      const s = await snapshot(page);
      error.message += `; states since SIGUSR1: ${JSON.stringify(s.states.filter((e) => e.at >= restartAt))}`;
      error.message += `; gateway log: ${gw.log.join("").slice(-3000)}`;
      throw error;
    });
    const waits = opened.s.states.filter((e) => e.state === "reconnecting" && !e.connecting && e.at >= restartAt);
    assert.ok(waits.length >= 1, `${user}: a reconnect was scheduled`);
    assert.equal(waits[0].code, 1012, `${user}: the drain closed with 1012 (restart): ${JSON.stringify(waits[0])}`);
    assert.equal(waits[0].attempt, 0);
    for (const w of waits) {
      assert.ok(
        w.delay >= 0 && w.delay < backoffWindow(w.attempt),
        `${user}: attempt ${w.attempt} waited ${w.delay} ms, outside [0, ${backoffWindow(w.attempt)})`,
      );
    }
    // Back no later than the window of the last wait after the gateway was up again
    // (plus the handshake and the welcome).
    const last = waits.at(-1);
    const late = opened.open.at - upAt;
    assert.ok(
      late <= backoffWindow(last.attempt) + 3_000,
      `${user}: open ${late} ms after the gateway was back; last wait: attempt ${last.attempt}`,
    );
    t.diagnostic(
      `${user}: ${waits.length} waits (${waits.map((w) => `#${w.attempt} ${w.delay} ms`).join(", ")}), ` +
        `open ${opened.open.at - restartAt} ms after SIGUSR1, ${late} ms after the gateway was back`,
    );
    assert.equal(opened.s.resyncs.length, 0, `${user}: resumed, no resync (disk store): ${JSON.stringify(opened.s.resyncs)}`);
  }

  // ---- after the restart ---------------------------------------------------------------
  await until("both online again", 20_000, async () =>
    (await snapshot(alice)).online.lobby?.join() === "alice,bob" && (await snapshot(bob)).online.lobby?.join() === "alice,bob");
  await openRoom(bob, "lobby");
  await say(bob, "b3: after the restart");
  await openDm(alice, "bob");
  await say(alice, "a-dm3: back");

  const room = ["a1: hello room", "b1: hi alice", "a2: during the restart", "b3: after the restart"];
  const dm = ["a-dm1: just us", "b-dm1: hey", "b-dm2: are you there?", "a-dm3: back"];
  const mine = { alice: new Set(["a1: hello room", "a2: during the restart", "a-dm1: just us", "a-dm3: back"]) };
  mine.bob = new Set([...room, ...dm].filter((text) => !mine.alice.has(text)));
  for (const [user, page] of Object.entries(pages)) {
    const other = user === "alice" ? "bob" : "alice";
    for (const text of room) {
      await waitFor(page, "room:lobby", text, mine[user].has(text) ? "sent" : "received");
    }
    for (const text of dm) {
      // A receipt that finds its sender offline is dropped (not queued: README,
      // "Delivery semantics"), so the message sent while both were away may keep one
      // tick; the others get both.
      const during = text === "b-dm2: are you there?";
      const status = !mine[user].has(text) ? "received" : during ? null : "read";
      await waitFor(page, `dm:${other}`, text, status).catch(async (error) => {
        // What the other side holds tells a message never sent (or refused) from one lost.
        const o = await snapshot(pages[other]);
        error.message += `; ${other} holds ${JSON.stringify(o.convs[`dm:${user}`])}`;
        throw error;
      });
      if (during && mine[user].has(text)) {
        const m = (await snapshot(page)).convs[`dm:${other}`].find((m) => m.text === text);
        assert.ok(["sent", "read"].includes(m.status), `${user}: ${text} acked (${m.status})`);
      }
    }
    const s = await snapshot(page);
    // Exactly once, nothing else, every own message with its ticks.
    for (const [conv, expected] of [["room:lobby", room], [`dm:${other}`, dm]]) {
      const texts = s.convs[conv].map((m) => m.text).sort();
      assert.deepEqual(texts, [...expected].sort(), `${user} ${conv}: ${JSON.stringify(s.convs[conv])}`);
      for (const m of s.convs[conv]) {
        assert.equal(m.mine, mine[user].has(m.text), `${user}: ${m.text} mine`);
        assert.ok(Number.isInteger(m.seq) && m.seq > 0, `${user}: ${m.text} has its seq`);
      }
    }
    // The page shows the same: one bubble per message, ticks on the own ones.
    await openRoom(page, "lobby");
    const bubbles = await page.$$eval("#messages li.msg", (els) =>
      els.map((e) => ({ text: e.querySelector(".text").textContent, status: e.dataset.status, ticks: !!e.querySelector(".ticks") })));
    assert.deepEqual(bubbles.map((b) => b.text).sort(), [...room].sort(), `${user}: lobby bubbles`);
    for (const b of bubbles) assert.equal(b.ticks, mine[user].has(b.text), `${user}: ticks on ${b.text}`);
    assert.equal(await page.getAttribute("#state", "data-state"), "open");
  }

  // ---- the screenshots ---------------------------------------------------------------
  mkdirSync(path.join(ROOT, "target"), { recursive: true });
  const shotDm = path.join(ROOT, "target/demo-screenshot.png");
  const shotLobby = path.join(ROOT, "target/demo-screenshot-lobby.png");
  await openDm(alice, "bob");
  await alice.screenshot({ path: shotDm });
  await openRoom(bob, "lobby");
  await bob.screenshot({ path: shotLobby });
  t.diagnostic(`screenshots: ${shotDm} ${shotLobby}`);
  console.log(`demo screenshots: ${shotDm} ${shotLobby}`);
  assert.deepEqual(consoleErrors, [], "no page errors");
});
