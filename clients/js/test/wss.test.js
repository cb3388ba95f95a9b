// The client over wss:// against real processes: a node (`wscluster-operator node --chat`)
// behind a proxy (`wscluster-operator proxy --tls-listen`) with a certificate from a CA this
// test makes (openssl CLI, ECDSA P-256). Node.js trusts that CA only through
// NODE_EXTRA_CA_CERTS, which is read at process start, so alice's client runs in a child
// process started with it; bob stays on plain ws:// in this process. A message from the server
// API reaches alice over TLS, and alice's chat message reaches bob. Needs
// target/debug/wscluster-operator (or WSCLUSTER_OPERATOR_BIN).
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..", "..", "..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(ROOT, "target");
const OPERATOR = process.env.WSCLUSTER_OPERATOR_BIN || path.join(TARGET, "debug", "wscluster-operator");
const CLUSTER = "test/js-wss";
const API_KEY = "js-wss-test-api-key-0123456789";
const TEST_TIMEOUT_MS = 60_000;

/** A CA and a server certificate for localhost/127.0.0.1 signed by it, in `dir`. */
function makeCertificates(dir) {
  const run = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  run("req", "-x509", ...p256, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=wscluster js test CA");
  run("req", ...p256, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost");
  fs.writeFileSync(path.join(dir, "san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "tls.crt", "-days", "2", "-extfile", "san.ext");
}

/** Spawns a process and resolves with it and the words of its first stdout line. */
function start(command, args, env = {}) {
  const child = spawn(command, args, { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, ...env } });
  const lines = readline.createInterface({ input: child.stdout });
  const first = new Promise((resolve, reject) => {
    lines.once("line", (line) => resolve(line.split(" ")));
    child.once("exit", (code) => reject(new Error(`${command} exited with ${code} before its first line`)));
  });
  return first.then((words) => ({ child, words, lines }));
}

/** The address after `name=` in an announcement's words (the main one for name "main"). */
function addressOf(words, name) {
  if (name === "main") return words[2];
  return words.find((w) => w.startsWith(`${name}=`)).slice(name.length + 1);
}

/** Resolves with the first line of `lines` that `match` accepts. */
function lineMatching(lines, match) {
  return new Promise((resolve) => {
    const onLine = (line) => {
      if (match(line)) {
        lines.off("line", onLine);
        resolve(line);
      }
    };
    lines.on("line", onLine);
  });
}

test("a client over wss:// trusting the test CA gets server messages and chats with a ws:// client", { timeout: TEST_TIMEOUT_MS }, async () => {
  assert.ok(fs.existsSync(OPERATOR), `${OPERATOR} does not exist: cargo build -p wscluster-operator`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "wscluster-js-wss-"));
  const children = [];
  try {
    makeCertificates(dir);
    fs.writeFileSync(path.join(dir, "keys"), `${API_KEY}\n`);
    const ring = path.join(dir, "ring.json");
    const node = await start(OPERATOR, ["node", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
      "--id", "js-node", "--cluster-id", CLUSTER, "--ring-file", ring, "--api-keys-file", path.join(dir, "keys"), "--chat"]);
    children.push(node.child);
    const nodeAddr = addressOf(node.words, "main");
    fs.writeFileSync(`${ring}.tmp`, JSON.stringify({ clusterId: CLUSTER, version: 1, members: [{ id: "js-node", address: nodeAddr }] }));
    fs.renameSync(`${ring}.tmp`, ring);
    const proxy = await start(OPERATOR, ["proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
      "--tls-listen", "127.0.0.1:0", "--tls-cert-file", path.join(dir, "tls.crt"), "--tls-key-file", path.join(dir, "tls.key"),
      "--cluster-id", CLUSTER, "--ring-file", ring]);
    children.push(proxy.child);
    const tlsPort = addressOf(proxy.words, "tls").split(":").pop();

    // Alice: the library's client in a child process that trusts the test CA.
    const flags = Number(process.versions.node.split(".")[0]) < 22 ? ["--experimental-websocket"] : [];
    const script = `
      import readline from "node:readline";
      import { WsClusterClient } from ${JSON.stringify(path.join(ROOT, "clients", "js", "src", "index.js"))};
      const client = new WsClusterClient({
        url: process.argv[1], key: "alice",
        onReady: (r) => console.log(JSON.stringify({ ready: r.server })),
        onMessage: (m) => console.log(JSON.stringify({ message: m.content })),
        onError: (e) => console.error(String(e)),
      });
      client.connect();
      readline.createInterface({ input: process.stdin }).on("line", (l) => client.send(l));`;
    const aliceProc = spawn(process.execPath, [...flags, "--input-type=module", "-e", script, `wss://localhost:${tlsPort}`],
      { stdio: ["pipe", "pipe", "inherit"], env: { ...process.env, NODE_EXTRA_CA_CERTS: path.join(dir, "ca.crt") } });
    children.push(aliceProc);
    const alice = readline.createInterface({ input: aliceProc.stdout });
    const aliceReady = lineMatching(alice, (l) => l.includes('"ready"'));
    assert.match(await aliceReady, /js-node/);

    // A message from the server API reaches alice over TLS.
    const fromApi = lineMatching(alice, (l) => l.includes("from the server API"));
    const sent = await fetch(`http://${nodeAddr}/api/v1/users/alice/messages`, {
      method: "POST", headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ message: "from the server API" }),
    });
    assert.equal(sent.status, 200);
    await fromApi;

    // Bob on the plain listener of the same proxy; alice's chat message crosses from TLS to it.
    const bob = new WebSocket(`ws://${addressOf(proxy.words, "main")}/connect/bob`);
    const bobFrames = [];
    const bobGot = (want) => new Promise((resolve) => {
      const check = () => bobFrames.some((f) => f.type === want.type && (!want.content || f.content === want.content));
      if (check()) return resolve();
      bob.addEventListener("message", () => check() && resolve());
    });
    bob.addEventListener("message", (ev) => bobFrames.push(JSON.parse(ev.data)));
    await bobGot({ type: "ready" });
    aliceProc.stdin.write(`${JSON.stringify({ to: "bob", message: "hello over wss" })}\n`);
    await bobGot({ type: "message", content: "hello over wss" });
    bob.close();
  } finally {
    for (const child of children.reverse()) child.kill("SIGKILL");
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
