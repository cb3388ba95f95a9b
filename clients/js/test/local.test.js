// The client against a real local cluster: `wscluster-operator local` (ring authority, a proxy,
// two nodes as real processes on 127.0.0.1), messages sent through the control API, and the
// serving node killed with SIGKILL. Once in memory (the next node's mailbox is another stream:
// the client must be told its recovery was incomplete, and must not drop the new stream's
// messages), once with the shared Redis (the client resumes where it was: nothing lost, nothing
// twice); and a scale-down with Redis: the drain's reset frame and 4001, the wait it asks for,
// the resume on the remaining node. Needs target/debug/wscluster-operator (or
// WSCLUSTER_OPERATOR_BIN).
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { test } from "node:test";

import { WsClusterClient } from "../src/index.js";
import { Recorder } from "./fake-server.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, "target");
const OPERATOR = process.env.WSCLUSTER_OPERATOR_BIN || path.join(TARGET, "debug", "wscluster-operator");
const REDIS_URL = process.env.WSCLUSTER_TEST_REDIS_URL || "redis://127.0.0.1:6379";
const TEST_TIMEOUT_MS = 120_000;

/** Starts local mode; resolves with its control URL and a stop function. */
async function startLocal(extra) {
  assert.ok(fs.existsSync(OPERATOR), `${OPERATOR} does not exist: cargo build -p wscluster-operator`);
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), "wscluster-js-"));
  const child = spawn(OPERATOR, [
    "local", "--nodes", "2", "--proxies", "1", "--control-listen", "127.0.0.1:0", "--proxy-port", "0",
    "--drain-timeout-seconds", "5", "--node-grace-period-seconds", "2", "--log-dir", logDir, ...extra,
  ], { stdio: ["ignore", "pipe", fs.openSync(path.join(logDir, "local.log"), "w")] });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    await exited;
    clearTimeout(timer);
  };
  process.once("exit", () => child.kill("SIGKILL"));
  const address = await new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      const m = /^listening on (\S+)/.exec(line.trim());
      if (m) resolve(m[1]);
    });
    child.once("exit", (code) => reject(new Error(`wscluster-operator local exited early (${code})`)));
  });
  return { base: `http://${address}`, stop };
}

async function api(base, method, route, body) {
  const res = await fetch(base + route, {
    method, headers: body ? { "content-type": "application/json" } : {}, body: body && JSON.stringify(body),
  });
  const data = await res.json();
  assert.ok(res.ok, `${method} ${route}: ${res.status} ${JSON.stringify(data)}`);
  return data;
}

/** Polls /api/state (the control API has no change feed) until `check` holds. */
async function waitState(base, what, check, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await api(base, "GET", "/api/state");
    if (check(s)) return s;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const settled = (nodes) => (s) => s.ring !== null && s.ring.members.length === nodes &&
  s.ring.members.every((m) => m.state === "active") &&
  s.proxies.every((p) => p.appliedVersion === s.ringVersion);

/** Connects `user` with the library and waits for its session to be live. */
async function connectUser(base, user) {
  const state = await api(base, "GET", "/api/state");
  const rec = new Recorder();
  const client = new WsClusterClient({
    url: () => state.proxies[0].wsUrl, key: user, backoff: { baseMs: 100, maxMs: 1000 }, ...rec.callbacks(),
  });
  client.connect();
  await rec.waitFor("ready", () => true, 10_000);
  return { client, rec };
}

async function sendAndReceive(base, user, rec, contents) {
  for (const message of contents) await api(base, "POST", "/api/send", { userId: user, message });
  for (const c of contents) await rec.waitFor("message", (m) => m.content === c, 10_000);
}

/** Kills the node serving `client` and waits until the client is live on another one. */
async function killServingNode(base, client, rec) {
  const serving = client.server;
  const ordinal = Number(/-(\d+)$/.exec(serving)[1]);
  const readies = rec.of("ready").length;
  await api(base, "POST", `/api/nodes/${ordinal}/kill`);
  await rec.waitFor("state", (v) => v.state === "reconnecting", 10_000);
  await rec.waitFor("ready", (r) => r.server !== serving, 30_000, 0);
  assert.ok(rec.of("ready").length > readies);
  return serving;
}

test("in memory: after its node dies the client is told the recovery was incomplete, and keeps receiving", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const local = await startLocal([]);
  t.after(local.stop);
  await waitState(local.base, "2 nodes in the ring", settled(2));
  const user = `js-${randomBytes(4).toString("hex")}`;
  const { client, rec } = await connectUser(local.base, user);
  t.after(() => client.close());
  await sendAndReceive(local.base, user, rec, ["one", "two", "three"]);
  const offsets = rec.of("message").filter((m) => m.type === "message").map((m) => m.offset);
  assert.deepEqual(offsets, [1, 2, 3]);
  await killServingNode(local.base, client, rec);
  // The other node's in-memory mailbox is another stream: offsets start again there.
  const incomplete = await rec.waitFor("incomplete", () => true, 10_000);
  assert.equal(incomplete.since, 3);
  await sendAndReceive(local.base, user, rec, ["four"]);
  const messages = rec.of("message").filter((m) => m.type === "message");
  assert.deepEqual(messages.map((m) => m.content), ["one", "two", "three", "four"]);
  assert.equal(client.duplicates, 0);
});

const execFileP = promisify(execFile);

/** Deletes the test's Redis keys (its own prefix only) with redis-cli. */
async function deleteRedisKeys(prefix) {
  assert.match(prefix, /^[A-Za-z0-9_-]+$/);
  const { stdout } = await execFileP("redis-cli", ["-u", REDIS_URL, "--scan", "--pattern", `${prefix}*`]);
  const keys = stdout.split("\n").filter(Boolean);
  if (keys.length) await execFileP("redis-cli", ["-u", REDIS_URL, "del", ...keys]);
}

const haveRedisCli = await execFileP("redis-cli", ["-u", REDIS_URL, "ping"]).then(() => true, () => false);

test("with Redis: after its node dies the client resumes where it was, nothing lost or twice", { timeout: TEST_TIMEOUT_MS, skip: !haveRedisCli && "no redis-cli or Redis" }, async (t) => {
  const id = randomBytes(4).toString("hex");
  const prefix = `wscluster-test-js-${id}`;
  const local = await startLocal(["--redis-url", REDIS_URL, "--redis-prefix", prefix, "--cluster-id", `e2e/js-${id}`]);
  t.after(async () => { await local.stop(); await deleteRedisKeys(prefix); });
  await waitState(local.base, "2 nodes in the ring", settled(2));
  const user = `js-${id}`;
  const { client, rec } = await connectUser(local.base, user);
  t.after(() => client.close());
  await sendAndReceive(local.base, user, rec, ["one", "two"]);
  const serving = await killServingNode(local.base, client, rec);
  assert.notEqual(client.server, serving);
  assert.deepEqual(rec.of("incomplete"), [], "the mailbox kept everything after since");
  await sendAndReceive(local.base, user, rec, ["three"]);
  const messages = rec.of("message").filter((m) => m.type === "message");
  assert.deepEqual(messages.map((m) => [m.content, m.offset]), [["one", 1], ["two", 2], ["three", 3]]);
  // A position the application kept: a new client resumes from it and gets what was sent
  // while no client was connected, from the mailbox.
  client.close();
  await api(local.base, "POST", "/api/send", { userId: user, message: "four" });
  const later = new Recorder();
  const again = new WsClusterClient({
    url: (await api(local.base, "GET", "/api/state")).proxies[0].wsUrl, key: user,
    since: client.position.offset, epoch: client.position.epoch, ...later.callbacks(),
  });
  t.after(() => again.close());
  again.connect();
  const replayed = await later.waitFor("message", (m) => m.content === "four", 10_000);
  assert.equal(replayed.offset, 4);
  const live = await later.waitFor("ready", () => true, 10_000);
  assert.equal(live.recovered, true);
  assert.deepEqual(later.of("incomplete"), []);
  const resumed = rec.of("state").filter((v) => v.state === "open").map((v) => new URL(v.url).searchParams.get("since"));
  assert.equal(resumed[0], null, "the first connect asks for no replay");
  assert.ok(resumed.length >= 2 && resumed.slice(1).every((since) => since === "2"), `resumed with ${resumed}`);
});

/** Connects users `<prefix>-1`, `-2`, ... until one is served by `node`; closes the others. */
async function connectUserOn(base, prefix, node) {
  for (let i = 1; i <= 24; i++) {
    const attempt = await connectUser(base, `${prefix}-${i}`);
    if (attempt.client.server === node) return { ...attempt, user: `${prefix}-${i}` };
    attempt.client.close();
  }
  throw new Error(`no user of 24 landed on ${node}`);
}

test("with Redis: a drain resets the client, which reconnects after retryAfterMs and resumes", { timeout: TEST_TIMEOUT_MS, skip: !haveRedisCli && "no redis-cli or Redis" }, async (t) => {
  const id = randomBytes(4).toString("hex");
  const prefix = `wscluster-test-js-${id}`;
  const local = await startLocal(["--redis-url", REDIS_URL, "--redis-prefix", prefix, "--cluster-id", `e2e/js-${id}`]);
  t.after(async () => { await local.stop(); await deleteRedisKeys(prefix); });
  await waitState(local.base, "2 nodes in the ring", settled(2));
  const { client, rec, user } = await connectUserOn(local.base, `js-${id}`, "local-node-1");
  t.after(() => client.close());
  await sendAndReceive(local.base, user, rec, ["before"]);
  await api(local.base, "POST", "/api/scale", { replicas: 1 });
  const change = await rec.waitFor("state", (v) => v.state === "reconnecting", 30_000);
  assert.equal(change.code, 4001);
  assert.equal(change.reason, "drain");
  assert.ok(change.reset && change.reset.reason === "drain", `reset ${JSON.stringify(change.reset)}`);
  assert.equal(change.delayMs, Math.min(change.reset.retryAfterMs, 60_000));
  const back = await rec.waitFor("ready", (r) => r.server === "local-node-0", 30_000);
  assert.equal(back.recovered, true);
  await sendAndReceive(local.base, user, rec, ["after"]);
  const messages = rec.of("message").filter((m) => m.type === "message");
  assert.deepEqual(messages.map((m) => [m.content, m.offset]), [["before", 1], ["after", 2]]);
  assert.deepEqual(rec.of("incomplete"), []);
  assert.equal(client.duplicates, 0);
});
