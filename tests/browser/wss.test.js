// Browser test of wss:// through the proxy's TLS listener: starts a real node
// (`wscluster-operator node`) and proxy (`wscluster-operator proxy --tls-listen`) with a
// certificate made here (openssl CLI, ECDSA P-256), opens headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core) and has the page open
// `new WebSocket("wss://localhost:<port>/connect/alice")`: the ready frame arrives, then a
// message sent through the node's server API. Exits non-zero on any failure; bounded in time.
//
// Trust: Chromium gets --ignore-certificate-errors-spki-list=<base64 SHA-256 of the
// certificate's SubjectPublicKeyInfo>. That trusts exactly this one key (a certificate with any
// other key still fails) and nothing else; it is not --ignore-certificate-errors.
"use strict";

const { execFileSync, spawn } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");
const { chromium } = require("playwright-core");

const ROOT = path.resolve(__dirname, "..", "..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, "target");
const OPERATOR = process.env.WSCLUSTER_OPERATOR_BIN || path.join(TARGET, "debug", "wscluster-operator");
const CHROMIUM = process.env.WSCLUSTER_CHROMIUM || "/usr/bin/chromium";
const CLUSTER = "test/browser-wss";
const API_KEY = "browser-wss-test-api-key-0123456789";
const TEST_TIMEOUT_MS = 90_000;

/** A self-signed ECDSA P-256 certificate for localhost in `dir`; its SPKI's SHA-256, base64. */
function makeCertificate(dir) {
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
    "-nodes", "-keyout", "tls.key", "-out", "tls.crt", "-days", "2", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { cwd: dir, stdio: "pipe" });
  const cert = new crypto.X509Certificate(fs.readFileSync(path.join(dir, "tls.crt")));
  const spki = cert.publicKey.export({ type: "spki", format: "der" });
  return crypto.createHash("sha256").update(spki).digest("base64");
}

/** Spawns a process; resolves with it and the words of its first stdout line. */
function start(args, children) {
  const child = spawn(OPERATOR, args, { stdio: ["ignore", "pipe", "inherit"] });
  children.push(child);
  const lines = readline.createInterface({ input: child.stdout });
  return new Promise((resolve, reject) => {
    lines.once("line", (line) => resolve(line.split(" ")));
    child.once("exit", (code) => reject(new Error(`${args[0]} exited early (${code})`)));
  });
}

async function main() {
  if (!fs.existsSync(OPERATOR)) throw new Error(`${OPERATOR} does not exist: build it or set WSCLUSTER_OPERATOR_BIN`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "wscluster-browser-wss-"));
  const children = [];
  let browser;
  try {
    const spki = makeCertificate(dir);
    fs.writeFileSync(path.join(dir, "keys"), `${API_KEY}\n`);
    const ring = path.join(dir, "ring.json");
    const node = await start(["node", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--id", "browser-node",
      "--cluster-id", CLUSTER, "--ring-file", ring, "--api-keys-file", path.join(dir, "keys")], children);
    const nodeAddr = node[2];
    fs.writeFileSync(`${ring}.tmp`, JSON.stringify({ clusterId: CLUSTER, version: 1, members: [{ id: "browser-node", address: nodeAddr }] }));
    fs.renameSync(`${ring}.tmp`, ring);
    const proxy = await start(["proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0",
      "--tls-cert-file", path.join(dir, "tls.crt"), "--tls-key-file", path.join(dir, "tls.key"),
      "--cluster-id", CLUSTER, "--ring-file", ring], children);
    const tlsPort = proxy.find((w) => w.startsWith("tls=")).split(":").pop();

    browser = await chromium.launch({ executablePath: CHROMIUM, args: [`--ignore-certificate-errors-spki-list=${spki}`] });
    const page = await browser.newPage();
    const url = `wss://localhost:${tlsPort}/connect/alice`;
    // The page connects (retrying until the proxy has read its ring) and keeps every frame.
    await page.evaluate((url) => new Promise((resolve, reject) => {
      window.frames_ = [];
      const deadline = Date.now() + 20_000;
      const open = () => {
        const ws = new WebSocket(url);
        ws.onmessage = (ev) => {
          const frame = JSON.parse(ev.data);
          window.frames_.push(frame);
          if (frame.type === "ready") resolve();
        };
        ws.onclose = () => (Date.now() < deadline ? setTimeout(open, 200) : reject(new Error("no ready frame over wss")));
      };
      open();
    }), url);
    const sent = await fetch(`http://${nodeAddr}/api/v1/users/alice/messages`, {
      method: "POST", headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ message: "to the browser over TLS" }),
    });
    if (sent.status !== 200) throw new Error(`the server API answered ${sent.status}`);
    await page.waitForFunction(() => window.frames_.some((f) => f.type === "message" && f.content === "to the browser over TLS"),
      null, { timeout: 10_000 });
    console.log("ok: headless Chromium received a message over wss:// trusting only the test key");
  } finally {
    if (browser) await browser.close();
    for (const child of children.reverse()) child.kill("SIGKILL");
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const timer = setTimeout(() => {
  console.error(`wss browser test timed out after ${TEST_TIMEOUT_MS} ms`);
  process.exit(1);
}, TEST_TIMEOUT_MS);
main().then(() => { clearTimeout(timer); }, (err) => {
  console.error(err);
  process.exit(1);
});
