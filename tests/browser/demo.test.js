// Browser test of the local demo page: starts `wscluster-operator local`, opens the page in
// headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core), connects users,
// scales 3 -> 4, and checks what the page shows: a newer ring version, four active nodes, and
// resets for exactly the users whose node changed (all of them now on the new node), then that
// a message to every user and a broadcast arrive. The page's clients are the JavaScript library
// (clients/js, served as /wscluster.js): the moved users reconnected through it, after their reset
// frame's retryAfterMs and resuming with `since`. Saves a
// screenshot to artifacts/demo.png. Exits non-zero on any failure; bounded in time.
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");
const readline = require("node:readline");
const { chromium } = require("playwright-core");

const ROOT = path.resolve(__dirname, "..", "..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, "target");
const OPERATOR = process.env.WSCLUSTER_OPERATOR_BIN || path.join(TARGET, "debug", "wscluster-operator");
const CHROMIUM = process.env.WSCLUSTER_CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = path.join(ROOT, "artifacts");
const TEST_TIMEOUT_MS = 180_000;
const USERS = 30;

function fail(message) {
  throw new Error(message);
}

async function waitFor(what, timeoutMs, check) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  fail(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
}

function startLocal() {
  if (!fs.existsSync(OPERATOR)) fail(`${OPERATOR} does not exist: build it or set WSCLUSTER_OPERATOR_BIN`);
  const logDir = fs.mkdtempSync(path.join(require("node:os").tmpdir(), "wscluster-browser-"));
  const child = spawn(OPERATOR, [
    "local", "--nodes", "3", "--proxies", "1", "--control-listen", "127.0.0.1:0",
    "--proxy-port", "0", "--drain-timeout-seconds", "5", "--node-grace-period-seconds", "2",
    "--log-dir", logDir,
  ], { stdio: ["ignore", "pipe", "inherit"] });
  const address = new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    // The address line comes first; anything else (logs) is drained.
    lines.on("line", (line) => {
      const m = /^listening on (\S+)$/.exec(line.trim());
      if (m) resolve(m[1]);
    });
    child.once("exit", (code) => reject(new Error(`wscluster-operator local exited early (${code})`)));
  });
  return { child, address, logDir };
}

async function stopLocal(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  await exited;
  clearTimeout(timer);
}

async function getState(base) {
  const res = await fetch(`${base}/api/state`);
  if (!res.ok) fail(`/api/state answered ${res.status}`);
  return res.json();
}

function settled(state, nodes) {
  const active = state.ring.members.filter((m) => m.state === "active").length;
  return active === nodes && state.ring.members.length === nodes &&
    state.proxies.every((p) => p.appliedVersion === state.ringVersion);
}

async function usersInPage(page) {
  return page.$$eval("#users tbody tr", (rows) => rows.map((r) => ({
    user: r.dataset.user, node: r.dataset.node, status: r.dataset.status, resets: Number(r.dataset.resets),
    messages: Number(r.cells[5].textContent),
  })));
}

let running = null;

async function main() {
  const { child, address } = startLocal();
  running = child;
  let browser;
  try {
    const base = `http://${await address}`;
    const before = await waitFor("3 nodes in the ring", 60_000, async () => {
      const s = await getState(base);
      return settled(s, 3) && s;
    });

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message));
    // The page is served at the proxy's root (keyless HTTP falls back to the control server).
    const proxyRoot = before.proxies[0].wsUrl.replace(/^ws:/, "http:");
    await page.goto(proxyRoot + "/");
    if (!(await page.title())) fail(`no page at the proxy's root ${proxyRoot}/`);
    await page.waitForFunction((v) => document.querySelector("#ring-version").dataset.version === String(v),
      before.ringVersion, { timeout: 10_000 });
    const nodeRows = await page.$$eval("#nodes tbody tr", (rows) => rows.map((r) => r.dataset.ring));
    if (nodeRows.length !== 3 || nodeRows.some((s) => s !== "active")) fail(`page shows nodes ${nodeRows}`);

    // Connect users through the page and wait until every one is on a node.
    await page.click("#connect-many");
    const placed = await waitFor(`${USERS} users connected`, 30_000, async () => {
      const rows = await usersInPage(page);
      return rows.length === USERS && rows.every((r) => r.status === "open" && r.node) && rows;
    });
    const nodeBefore = new Map(placed.map((r) => [r.user, r.node]));
    if (new Set(nodeBefore.values()).size < 2) fail("all users landed on one node");

    // Scale up from the page.
    await page.click("#scale-up");
    const after = await waitFor("4 nodes in the ring, applied by the proxy", 60_000, async () => {
      const s = await getState(base);
      return settled(s, 4) && s;
    });
    if (after.ringVersion <= before.ringVersion) fail(`ring version did not grow: ${before.ringVersion} -> ${after.ringVersion}`);
    await page.waitForFunction((v) => Number(document.querySelector("#ring-version").dataset.version) >= v,
      after.ringVersion, { timeout: 10_000 });

    // Every user settles: the moved ones on the new node, the others untouched.
    const final = await waitFor("users settled after the scale-up", 30_000, async () => {
      const rows = await usersInPage(page);
      const ok = rows.length === USERS && rows.every((r) => r.status === "open" &&
        (r.resets === 0 ? r.node === nodeBefore.get(r.user) : r.node === "local-node-3"));
      return ok && rows;
    });
    const moved = final.filter((r) => r.node !== nodeBefore.get(r.user)).map((r) => r.user).sort();
    const reset = final.filter((r) => r.resets > 0).map((r) => r.user).sort();
    if (JSON.stringify(moved) !== JSON.stringify(reset)) fail(`reset users ${reset} differ from moved users ${moved}`);
    if (moved.length === 0) fail("no user moved to the new node (expected about a quarter)");
    if (moved.length > USERS / 2) fail(`${moved.length} of ${USERS} users moved; expected about a quarter`);
    if (final.some((r) => r.resets > 1)) fail("a user was reset more than once");

    // The page's clients are the library's (/wscluster.js), and the moved ones reconnected
    // through it: a rebalance close (4000) after the reset frame, waiting its retryAfterMs, then
    // resuming with `since`. The others never reconnected.
    const clients = await page.evaluate(() => [...window.wscluster.users.values()].map((u) => {
      const reconnects = u.changes.filter((c) => c.state === "reconnecting");
      const opens = u.changes.filter((c) => c.state === "open");
      const r = reconnects[0];
      return {
        user: u.id, library: u.client instanceof window.wscluster.WsClusterClient, state: u.client.state,
        reconnects: reconnects.length, code: r ? r.code : null, reason: r ? r.reason : null,
        obeyed: Boolean(r && r.reset && r.delayMs === r.reset.retryAfterMs),
        resumedSince: opens.length > 1 ? new URL(opens[opens.length - 1].url).searchParams.get("since") : null,
      };
    }));
    for (const c of clients) {
      if (!c.library || c.state !== "open") fail(`${c.user} is not an open library client: ${JSON.stringify(c)}`);
      const wasMoved = moved.includes(c.user);
      if (!wasMoved && c.reconnects !== 0) fail(`${c.user} was not moved but reconnected: ${JSON.stringify(c)}`);
      if (wasMoved && (c.reconnects !== 1 || c.code !== 4000 || c.reason !== "rebalance" || !c.obeyed ||
        c.resumedSince === null)) {
        fail(`${c.user} did not reconnect through the library after its reset: ${JSON.stringify(c)}`);
      }
    }

    // The log names only moved users in its reset and reconnect lines.
    const logged = await page.$$eval("#log li[data-kind=move], #log li[data-kind=reconnect]",
      (items) => [...new Set(items.map((li) => li.dataset.user))].sort());
    if (JSON.stringify(logged) !== JSON.stringify(moved)) fail(`log shows moves of ${logged}, moved were ${moved}`);
    const summary = await page.$eval("#move-summary", (e) => e.textContent);
    if (!summary.includes(`${moved.length} of ${USERS}`)) fail(`move summary says "${summary}"`);

    const nodesAfter = await page.$$eval("#nodes tbody tr", (rows) => rows.map((r) => r.dataset.ring));
    if (nodesAfter.length !== 4 || nodesAfter.some((s) => s !== "active")) fail(`page shows nodes ${nodesAfter}`);

    // Messages reach every user through the proxy after the move.
    await page.fill("#send-message", "after the scale-up");
    await page.click("#send-all");
    await waitFor("a message at every user", 20_000, async () => {
      const rows = await usersInPage(page);
      return rows.every((r) => r.messages >= 1);
    });

    // A broadcast from the page reaches every user on every node.
    await page.fill("#send-message", "to everyone");
    await page.click("#broadcast");
    await waitFor("the broadcast at every user", 20_000, async () => {
      const rows = await usersInPage(page);
      return rows.every((r) => r.messages >= 2);
    });

    if (pageErrors.length) fail(`page errors: ${pageErrors.join("; ")}`);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, "demo.png"), fullPage: true });
    console.log(`ok: ring v${before.ringVersion} -> v${after.ringVersion}, ${moved.length} of ${USERS} users moved and reconnected; screenshot artifacts/demo.png`);
  } finally {
    if (browser) await browser.close().catch(() => {});
    await stopLocal(child);
  }
}

const timer = setTimeout(() => {
  console.error(`browser test: exceeded ${TEST_TIMEOUT_MS} ms`);
  if (running) running.kill("SIGTERM");
  setTimeout(() => process.exit(2), 5_000);
}, TEST_TIMEOUT_MS);
main().then(() => { clearTimeout(timer); process.exit(0); }, (err) => {
  console.error(`browser test FAILED: ${err.stack || err.message}`);
  clearTimeout(timer);
  process.exit(1);
});
