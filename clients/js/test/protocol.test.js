// The client against a fake RFC 6455 server (fake-server.js): reset frames, the close-code
// table on the wire, resume parameters, dedupe, recovery-incomplete, auth refusals, tokens.
// Needs a WebSocket client: Node >= 22, or Node 20 with --experimental-websocket.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { WsClusterClient } from "../src/index.js";
import { FakeServer, Recorder } from "./fake-server.js";

if (typeof globalThis.WebSocket !== "function") {
  throw new Error("these tests need a global WebSocket: Node >= 22, or node --experimental-websocket");
}

const FAST = { baseMs: 20, maxMs: 80 };
let server;
before(async () => { server = await new FakeServer().listen(); });
after(async () => { await server.close(); });

const ready = (epoch, offset, recovered = true) => ({ type: "ready", server: "fake-1", epoch, offset, recovered });
const msg = (epoch, offset, content = `m${offset}`) => ({
  type: "message", content, server: "fake-1", serverUserCount: 1, timestamp: 1, offset, ...(epoch ? { epoch } : {}),
});

let users = 0;
/** A client of a key of its own; `path` is where its connections arrive. */
function client(extra = {}) {
  const rec = new Recorder();
  const key = `user-${++users}`;
  const c = new WsClusterClient({ url: server.url, key, backoff: FAST, ...rec.callbacks(), ...extra });
  return { c, rec, path: `/connect/${key}` };
}

test("connects by key, goes live on ready, drops duplicates by (epoch, offset)", async (t) => {
  const { c, rec, path } = client();
  t.after(() => c.close());
  c.connect();
  const s = await server.next(path);
  assert.equal(s.url.pathname, path);
  assert.equal(s.url.search, "", "a first connect asks for no replay");
  await rec.waitFor("state", (v) => v.state === "open");
  s.send(ready("e1", 0));
  const r = await rec.waitFor("ready");
  assert.deepEqual(r, { server: "fake-1", epoch: "e1", offset: 0, recovered: true, legacy: false });
  for (const o of [1, 2, 2, 1, 3]) s.send(msg("e1", o));
  s.send({ type: "broadcast", content: "all", server: "fake-1", serverUserCount: 1, timestamp: 1 });
  await rec.waitFor("message", (m) => m.type === "broadcast");
  assert.deepEqual(rec.of("message").map((m) => m.offset ?? m.content), [1, 2, 3, "all"]);
  assert.equal(c.duplicates, 2);
  assert.deepEqual({ ...c.position }, { offset: 3, epoch: "e1" });
  assert.equal(c.send("hello"), true);
  assert.deepEqual(rec.of("state").map((v) => v.state), ["connecting", "open"]);
});

test("a reset frame's retryAfterMs is obeyed, and the client resumes with since and epoch", async (t) => {
  const { c, rec, path } = client();
  t.after(() => c.close());
  c.connect();
  const s1 = await server.next(path);
  s1.send(ready("e1", 4));
  s1.send(msg("e1", 5));
  await rec.waitFor("message");
  s1.send({ type: "reset", reason: "rebalance", retryAfterMs: 150, ringVersion: 8 });
  s1.close(4000, "rebalance");
  const started = Date.now();
  const change = await rec.waitFor("state", (v) => v.state === "reconnecting");
  assert.equal(change.code, 4000);
  assert.equal(change.delayMs, 150);
  assert.deepEqual(change.reset, { reason: "rebalance", retryAfterMs: 150, ringVersion: 8 });
  assert.deepEqual(rec.of("reset"), [change.reset]);
  const s2 = await server.next(path);
  assert.ok(Date.now() - started >= 140, `reconnected after ${Date.now() - started} ms`);
  assert.equal(s2.url.searchParams.get("since"), "5");
  assert.equal(s2.url.searchParams.get("epoch"), "e1");
  s2.send(msg("e1", 5));
  s2.send(msg("e1", 6));
  s2.send(ready("e1", 6));
  await rec.waitFor("ready", (r) => r.offset === 6);
  assert.deepEqual(rec.of("message").map((m) => m.offset), [5, 6], "the replayed 5 is a duplicate");
  assert.equal(rec.of("incomplete").length, 0);
});

test("retryAfterMs is capped by maxRetryAfterMs; a bad one falls back to backoff", async (t) => {
  const { c, rec, path } = client({ maxRetryAfterMs: 40 });
  t.after(() => c.close());
  c.connect();
  const s1 = await server.next(path);
  s1.send(ready("e1", 0));
  s1.send({ type: "reset", reason: "drain", retryAfterMs: 3_600_000 });
  s1.close(4001, "drain");
  assert.equal((await rec.next("state", (v) => v.state === "reconnecting")).delayMs, 40);
  const s2 = await server.next(path);
  s2.send(ready("e1", 0));
  s2.send({ type: "reset", reason: "drain", retryAfterMs: -5 });
  s2.close(4001, "drain");
  const change = await rec.next("state", (v) => v.state === "reconnecting");
  assert.equal(change.reset.retryAfterMs, null);
  assert.ok(change.delayMs >= 0 && change.delayMs < FAST.baseMs, `backoff ${change.delayMs}`);
  await server.next(path);
});

test("4005 unavailable: reconnect with the same since and epoch", async (t) => {
  const { c, rec, path } = client({ since: 10, epoch: "e7" });
  t.after(() => c.close());
  c.connect();
  const s1 = await server.next(path);
  assert.equal(s1.url.search, "?since=10&epoch=e7", "a persisted position is resumed on the first connect");
  s1.send({ type: "reset", reason: "unavailable", retryAfterMs: 10 });
  s1.close(4005, "unavailable");
  const s2 = await server.next(path);
  assert.equal(s2.url.search, "?since=10&epoch=e7");
  assert.equal(rec.of("ready").length, 0);
});

for (const [code, reason] of [[4002, "replaced"], [4008, "policy"], [1008, "policy"]]) {
  test(`close ${code} stays closed (${reason})`, async (t) => {
    const { c, rec, path } = client();
    t.after(() => c.close());
    c.connect();
    const s = await server.next(path);
    s.send(ready("e1", 0));
    const before = server.requests.length;
    s.close(code, "bye");
    const change = await rec.waitFor("state", (v) => v.state === "closed");
    assert.deepEqual([change.code, change.reason, change.closeReason], [code, reason, "bye"]);
    assert.equal(c.closeReason, reason);
    assert.equal(c._timer, null, "no reconnect scheduled");
    await new Promise((r) => setTimeout(r, FAST.maxMs * 3)); // longer than any backoff
    assert.equal(server.requests.length, before, "no reconnect attempt");
  });
}

test("a lost connection (1006) reconnects with backoff, resetting after ready", async (t) => {
  const { c, rec, path } = client();
  t.after(() => c.close());
  c.connect();
  const s1 = await server.next(path);
  s1.send(ready("e1", 2));
  await rec.waitFor("ready");
  s1.drop();
  const change = await rec.next("state", (v) => v.state === "reconnecting");
  assert.equal(change.code, 1006);
  assert.equal(change.reason, "connection-lost");
  assert.ok(change.delayMs < FAST.baseMs);
  const s2 = await server.next(path);
  assert.equal(s2.url.search, "?since=2&epoch=e1");
  s2.drop(); // before ready: the next delay's ceiling doubles
  const second = await rec.next("state", (v) => v.state === "reconnecting");
  assert.ok(second.delayMs < 2 * FAST.baseMs);
  await server.next(path);
});

test("recovered false: the app is told, and the position moves to the new epoch", async (t) => {
  const { c, rec, path } = client({ since: 40, epoch: "old" });
  t.after(() => c.close());
  c.connect();
  const s = await server.next(path);
  s.send(ready("new", 2, false));
  const info = await rec.waitFor("incomplete");
  assert.deepEqual(info, { since: 40, sinceEpoch: "old", epoch: "new", offset: 2, server: "fake-1", reason: "epoch-changed" });
  assert.deepEqual({ ...c.position }, { offset: 2, epoch: "new" });
  s.send(msg("new", 3));
  await rec.waitFor("message", (m) => m.offset === 3);
  // A live message of yet another epoch (the stream was made again) is new, not a duplicate.
  s.send(msg("newer", 1));
  await rec.waitFor("message", (m) => m.epoch === "newer");
  assert.equal(c.duplicates, 0);
  // Same epoch but since no longer kept.
  s.close(1011, "");
  const s2 = await server.next(path);
  assert.equal(s2.url.search, "?since=1&epoch=newer");
  s2.send(ready("newer", 9, false));
  const second = await rec.next("incomplete");
  assert.equal(second.reason, "not-kept");
});

test("a legacy node (system ready, since-ahead error) resets the offset and reports the gap", async (t) => {
  const { c, rec, path } = client({ since: 12 });
  t.after(() => c.close());
  c.connect();
  const s = await server.next(path);
  s.send({ type: "error", content: "since=12 is ahead of the latest offset 0; delivering live messages only", server: "n", serverUserCount: 1, timestamp: 1 });
  s.send({ type: "system", content: "ready", server: "n", serverUserCount: 1, timestamp: 1 });
  const info = await rec.waitFor("incomplete");
  assert.equal(info.reason, "since-ahead");
  assert.equal((await rec.waitFor("ready")).legacy, true);
  s.send(msg(null, 1));
  await rec.waitFor("message", (m) => m.offset === 1);
});

test("a 401 handshake refusal stays closed; a 503 one retries", async (t) => {
  const { c, rec, path } = client();
  t.after(() => c.close());
  server.refuse(503, 2); // the handshake and the probe
  server.refuse(401);
  c.connect();
  const closed = await rec.waitFor("state", (v) => v.state === "closed");
  assert.equal(closed.reason, "unauthorized");
  const states = rec.of("state").map((v) => v.state);
  assert.deepEqual(states, ["connecting", "reconnecting", "closed"]);
  server.refusals.length = 0;
});

test("a token goes in the query; a token function is asked on every attempt", async (t) => {
  let n = 0;
  const rec = new Recorder();
  const c = new WsClusterClient({
    url: server.url, token: async () => `tok-${++n}`, tokenParam: "jwt", backoff: FAST, ...rec.callbacks(),
  });
  t.after(() => c.close());
  c.connect();
  const s1 = await server.next("/connect");
  assert.equal(s1.url.pathname, "/connect");
  assert.equal(s1.url.searchParams.get("jwt"), "tok-1");
  s1.send(ready("e1", 0));
  await rec.waitFor("ready");
  s1.close(1001, "going away");
  const s2 = await server.next("/connect");
  assert.equal(s2.url.searchParams.get("jwt"), "tok-2");
  assert.equal(s2.url.searchParams.get("since"), "0");
});

test("close() stops reconnecting and a callback's exception does not stop the client", async (t) => {
  const rec = new Recorder();
  const thrown = [];
  // The client rethrows a callback's error in a microtask (an uncaught error, as in any event
  // handler); capture those here instead of failing the test run.
  const original = globalThis.queueMicrotask;
  globalThis.queueMicrotask = (fn) => original(() => {
    try { fn(); } catch (e) { thrown.push(e.message); }
  });
  t.after(() => { globalThis.queueMicrotask = original; });
  const c = new WsClusterClient({
    url: server.url, key: "bob", backoff: FAST, ...rec.callbacks(),
    onMessage: (m) => { rec.push("message", m); throw new Error("app bug"); },
  });
  c.connect();
  const s = await server.next("/connect/bob");
  s.send(ready("e1", 0));
  s.send(msg("e1", 1));
  s.send(msg("e1", 2));
  await rec.waitFor("message", (m) => m.offset === 2);
  await new Promise((r) => setImmediate(r)); // the rethrow's microtask runs after this one
  assert.deepEqual(thrown, ["app bug", "app bug"]);
  c.close();
  assert.equal(c.state, "closed");
  assert.equal(c.closeReason, "client");
  assert.equal(await s.closed, 1000);
  assert.equal(c._timer, null);
});

test("the WebSocket option is the constructor used, and a url function is asked on every attempt", async (t) => {
  const made = [];
  class Recording extends globalThis.WebSocket {
    constructor(url) {
      super(url);
      made.push(url);
    }
  }
  let asked = 0;
  const rec = new Recorder();
  const c = new WsClusterClient({
    url: () => { asked += 1; return server.url; }, key: "carol", WebSocket: Recording, backoff: FAST, ...rec.callbacks(),
  });
  t.after(() => c.close());
  c.connect();
  const s1 = await server.next("/connect/carol");
  s1.send(ready("e1", 0));
  await rec.waitFor("ready");
  s1.drop();
  await server.next("/connect/carol");
  assert.equal(asked, 2);
  assert.deepEqual(made, [`${server.url}/connect/carol`, `${server.url}/connect/carol?since=0&epoch=e1`]);
});

test("a url function that throws is reported and retried with backoff", async (t) => {
  let calls = 0;
  const rec = new Recorder();
  const c = new WsClusterClient({
    url: () => { calls += 1; if (calls === 1) throw new Error("no proxy yet"); return server.url; },
    key: "dave", backoff: FAST, ...rec.callbacks(),
  });
  t.after(() => c.close());
  c.connect();
  const err = await rec.waitFor("error");
  assert.equal(err.message, "no proxy yet");
  const change = await rec.waitFor("state", (v) => v.state === "reconnecting");
  assert.equal(change.reason, "dial-failed");
  const s = await server.next("/connect/dave");
  assert.equal(s.url.pathname, "/connect/dave");
});
