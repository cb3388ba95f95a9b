// wscluster local demo page. Plain JavaScript (an ES module), no dependencies, works offline.
// It polls the control API (/api/state) every second, draws the ring, and runs one client of
// the wscluster JavaScript library (clients/js, served as /wscluster.js) per user: reset frames,
// the close-code table, resume by `since` and `epoch`, de-duplication.
import { WsClusterClient } from "/wscluster.js";

const PALETTE = [
  "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
  "#ea580c", "#4f46e5", "#0d9488", "#be123c", "#a16207", "#9333ea", "#0284c7", "#57534e",
];
const STATE_POLL_MS = 1000;
const LOG_MAX = 500;

let state = null;
const users = new Map(); // user id -> client record
let moves = null; // {version, reset: Set of users reset for this version}
window.wscluster = { users, WsClusterClient, get state() { return state; } };

const $ = (id) => document.getElementById(id);

function colorOf(memberId) {
  const m = /-(\d+)$/.exec(memberId || "");
  return PALETTE[(m ? Number(m[1]) : 0) % PALETTE.length];
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    const message = (data && (data.message || data.error)) || `${res.status} ${res.statusText}`;
    throw new Error(message);
  }
  return data;
}

// ---------------------------------------------------------------- log

function log(kind, user, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.dataset.kind = kind;
  if (user) li.dataset.user = user;
  const time = new Date().toISOString().slice(11, 23);
  li.textContent = `${time} ${user ? user + ": " : ""}${text}`;
  const moveKinds = ["move", "reconnect", "error", "ring"];
  if ($("log-moves-only").checked && !moveKinds.includes(kind)) li.hidden = true;
  const list = $("log");
  list.prepend(li);
  while (list.children.length > LOG_MAX) list.lastElementChild.remove();
}

$("log-moves-only").addEventListener("change", () => {
  const only = $("log-moves-only").checked;
  for (const li of $("log").children) {
    li.hidden = only && !["move", "reconnect", "error", "ring"].includes(li.dataset.kind);
  }
});
$("log-clear").addEventListener("click", () => { $("log").replaceChildren(); });

function noteReset(user, version) {
  if (version === undefined || version === null) return;
  if (!moves || moves.version !== version) moves = { version, reset: new Set() };
  moves.reset.add(user);
  renderMoveSummary();
}

function renderMoveSummary() {
  if (!moves) { $("move-summary").textContent = ""; return; }
  const total = [...users.values()].filter((u) => !u.stopped).length;
  $("move-summary").textContent =
    `ring v${moves.version}: ${moves.reset.size} of ${total} users were moved`;
  $("move-summary").dataset.version = moves.version;
  $("move-summary").dataset.moved = moves.reset.size;
}

// ---------------------------------------------------------------- clients

function proxyBases() {
  if (!state) return [];
  return state.proxies.filter((p) => p.process === "running").map((p) => p.wsUrl);
}

// One WsClusterClient (the library at /wscluster.js, clients/js) per user, instrumented for the
// page: its callbacks fill the user's row and the log.
function connectUser(userId) {
  if (users.has(userId) && !users.get(userId).stopped) return users.get(userId);
  const u = {
    id: userId, stopped: false, status: "connecting", node: null, resets: 0, messages: 0,
    proxy: 0, reconnecting: false, lastReason: null, changes: [], client: null,
    get lastOffset() { return this.client ? this.client.position.offset : 0; },
    get duplicates() { return this.client ? this.client.duplicates : 0; },
  };
  users.set(userId, u);
  u.client = new WsClusterClient({
    // Another proxy after an unexpected drop; none running yet: the client backs off and retries.
    url: () => {
      const bases = proxyBases();
      if (bases.length === 0) throw new Error("no proxy is running");
      return bases[u.proxy % bases.length];
    },
    key: userId,
    onReset: (r) => {
      u.resets += 1;
      u.lastReason = r.reason;
      noteReset(userId, r.ringVersion);
      log("move", userId, `reset (${r.reason}, ring v${r.ringVersion ?? "?"}) on ${u.node}; reconnecting in ${r.retryAfterMs} ms`);
      renderUsers();
    },
    onReady: (r) => {
      const from = u.node;
      u.node = r.server;
      if (u.reconnecting) {
        log("reconnect", userId, `back on ${r.server}` + (from && from !== r.server ? ` (was ${from})` : "") +
          (u.lastOffset > 0 ? `, resumed after offset ${u.lastOffset}` : ""));
      } else {
        log("info", userId, `connected to ${r.server}`);
      }
      u.reconnecting = false;
      renderUsers();
    },
    onRecoveryIncomplete: (info) => {
      log("info", userId, `recovery incomplete (${info.reason}): messages after offset ${info.since} may be missing; ` +
        `resuming from offset ${info.offset}`);
    },
    onMessage: (msg) => {
      if (msg.type === "error") { log("info", userId, `server note: ${msg.content}`); return; }
      u.messages += 1;
      log("message", userId, `${msg.type} "${msg.content}"` +
        (msg.offset ? ` (offset ${msg.offset})` : "") + ` from ${msg.server}`);
      renderUsers();
    },
    onStateChange: (change) => onStateChange(u, change),
  });
  u.client.connect();
  renderUsers();
  return u;
}

function onStateChange(u, change) {
  u.changes.push(change);
  u.status = change.state;
  if (change.state === "reconnecting") {
    u.reconnecting = true;
    if (!change.reset) {
      u.proxy += 1; // try the next proxy after an unexpected drop
      log("move", u.id, `connection lost (${change.code ?? change.reason}) on ${u.node ?? "?"}; reconnecting in ${change.delayMs} ms`);
    }
  }
  if (change.state === "closed" && change.reason !== "client") {
    log("error", u.id, `closed ${change.code ?? ""} ${change.reason}; not reconnecting`);
  }
  renderUsers();
}

function disconnectUser(userId) {
  const u = users.get(userId);
  if (!u) return;
  u.stopped = true;
  u.client.close(1000);
  users.delete(userId);
  renderUsers();
}

function renderUsers() {
  const body = $("users").tBodies[0];
  const rows = [];
  for (const u of [...users.values()].sort((a, b) => a.id.localeCompare(b.id, undefined, { numeric: true }))) {
    const tr = document.createElement("tr");
    tr.dataset.user = u.id;
    tr.dataset.node = u.node || "";
    tr.dataset.status = u.status;
    tr.dataset.resets = u.resets;
    tr.innerHTML = `<td></td><td class="status-${u.status}">${u.status}</td>` +
      `<td><span class="swatch"></span> <span class="node"></span></td>` +
      `<td class="num">${u.resets}</td><td class="num">${u.lastOffset}</td><td class="num">${u.messages}</td>` +
      `<td><button class="small">disconnect</button></td>`;
    tr.cells[0].textContent = u.id;
    tr.querySelector(".node").textContent = u.node || "—";
    tr.querySelector(".swatch").style.background = u.node ? colorOf(u.node) : "transparent";
    tr.querySelector("button").addEventListener("click", () => disconnectUser(u.id));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  renderMoveSummary();
}

$("connect-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = $("connect-user").value.trim();
  if (!id) return;
  connectUser(id);
  $("connect-user").value = "";
});
$("connect-many").addEventListener("click", () => {
  let n = 1;
  let added = 0;
  while (added < 30) {
    const id = `user-${n++}`;
    if (!users.has(id)) { connectUser(id); added += 1; }
  }
});
$("disconnect-all").addEventListener("click", () => { for (const id of [...users.keys()]) disconnectUser(id); });

async function send(userId, message) {
  const r = await api("POST", "/api/send", { userId, message });
  return r;
}

$("send-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const userId = $("send-user").value.trim();
  const message = $("send-message").value;
  try {
    const r = await send(userId, message);
    $("send-result").textContent = `sent to ${userId}: offset ${r.offset} on ${r.server}` +
      (r.delivered ? "" : " (stored; delivered when the user connects)");
  } catch (err) {
    $("send-result").textContent = `send failed: ${err.message}`;
  }
});
$("send-all").addEventListener("click", async () => {
  const message = $("send-message").value || `hello at ${new Date().toLocaleTimeString()}`;
  let ok = 0, failed = 0;
  await Promise.all([...users.keys()].map(async (id) => {
    try { await send(id, message); ok += 1; } catch (_) { failed += 1; }
  }));
  $("send-result").textContent = `sent to ${ok} users` + (failed ? `, ${failed} failed` : "");
});
$("broadcast").addEventListener("click", async () => {
  const message = $("send-message").value || `broadcast at ${new Date().toLocaleTimeString()}`;
  try {
    await api("POST", "/api/broadcast", { message });
    $("send-result").textContent = "broadcast sent";
  } catch (err) {
    $("send-result").textContent = `broadcast failed: ${err.message}`;
  }
});

// ---------------------------------------------------------------- cluster controls

async function act(label, method, path, body) {
  try {
    await api(method, path, body);
    log("ring", null, label);
    await poll();
  } catch (err) {
    log("error", null, `${label} failed: ${err.message}`);
  }
}

$("scale-up").addEventListener("click", () => {
  if (state) act(`scale to ${state.replicas + 1}`, "POST", "/api/scale", { replicas: state.replicas + 1 });
});
$("scale-down").addEventListener("click", () => {
  if (state) act(`scale to ${state.replicas - 1} (drain first)`, "POST", "/api/scale", { replicas: state.replicas - 1 });
});
$("authority-toggle").addEventListener("click", () => {
  if (!state) return;
  if (state.authority.running) act("ring authority stopped", "POST", "/api/authority/stop");
  else act("ring authority started", "POST", "/api/authority/start");
});

function renderNodes() {
  const body = $("nodes").tBodies[0];
  body.replaceChildren(...state.nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.dataset.node = n.id;
    tr.dataset.ring = n.ringState;
    tr.dataset.process = n.process;
    tr.innerHTML = `<td><span class="swatch"></span></td><td></td>` +
      `<td class="state-${n.process}">${n.process}</td><td class="state-${n.ringState}">${n.ringState}</td>` +
      `<td class="num connections">${n.connections ?? "—"}</td><td class="muted"></td>` +
      `<td><button class="small danger kill">kill -9</button> <button class="small restart">restart</button></td>`;
    tr.querySelector(".swatch").style.background = colorOf(n.id);
    tr.cells[1].textContent = n.id;
    tr.cells[5].textContent = n.address || "";
    tr.querySelector(".kill").disabled = n.process === "exited";
    tr.querySelector(".kill").addEventListener("click", () => act(`kill -9 ${n.id}`, "POST", `/api/nodes/${n.ordinal}/kill`));
    tr.querySelector(".restart").addEventListener("click", () => act(`restart ${n.id}`, "POST", `/api/nodes/${n.ordinal}/restart`));
    return tr;
  }));
  const pbody = $("proxies").tBodies[0];
  pbody.replaceChildren(...state.proxies.map((p) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td></td><td class="state-${p.process}">${p.process}</td>` +
      `<td class="num">${p.appliedVersion ?? "—"}</td><td class="muted"></td>` +
      `<td><button class="small danger kill">kill -9</button> <button class="small restart">restart</button></td>`;
    tr.cells[0].textContent = p.id;
    tr.cells[3].textContent = p.wsUrl;
    tr.querySelector(".kill").disabled = p.process === "exited";
    tr.querySelector(".kill").addEventListener("click", () => act(`kill -9 ${p.id}`, "POST", `/api/proxies/${p.index}/kill`));
    tr.querySelector(".restart").addEventListener("click", () => act(`restart ${p.id}`, "POST", `/api/proxies/${p.index}/restart`));
    return tr;
  }));
}

function drawRing() {
  const canvas = $("ring");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const cx = w / 2, cy = h / 2, r = Math.min(w, h) / 2 - 30;
  ctx.clearRect(0, 0, w, h);
  ctx.lineWidth = 34;
  ctx.strokeStyle = "#e5e7eb";
  ctx.beginPath();
  ctx.arc(cx, cy, r, 0, 2 * Math.PI);
  ctx.stroke();
  const rad = (deg) => (deg - 90) * Math.PI / 180;
  for (const a of state.arcs) {
    ctx.strokeStyle = colorOf(a.member);
    ctx.beginPath();
    ctx.arc(cx, cy, r, rad(a.from), rad(a.to) + 0.002);
    ctx.stroke();
  }
  const members = state.ring ? state.ring.members : [];
  const active = members.filter((m) => m.state === "active").length;
  ctx.fillStyle = "#1d2330";
  ctx.textAlign = "center";
  ctx.font = "600 30px system-ui, sans-serif";
  ctx.fillText(`v${state.ringVersion}`, cx, cy - 4);
  ctx.font = "14px system-ui, sans-serif";
  ctx.fillStyle = "#6b7280";
  const draining = members.length - active;
  ctx.fillText(`${active} active` + (draining ? `, ${draining} draining` : ""), cx, cy + 20);
  // Share of each member, outside the ring.
  const shares = new Map();
  for (const a of state.arcs) shares.set(a.member, (shares.get(a.member) || 0) + (a.to - a.from));
  ctx.font = "12px system-ui, sans-serif";
  let y = 14;
  ctx.textAlign = "left";
  for (const [member, deg] of [...shares.entries()].sort()) {
    ctx.fillStyle = colorOf(member);
    ctx.fillText(`${member.replace("local-", "")} ${(deg / 3.6).toFixed(0)}%`, 4, y);
    y += 14;
  }
}

let lastVersion = null;
async function poll() {
  try {
    state = await api("GET", "/api/state");
  } catch (err) {
    $("authority").textContent = "local mode unreachable";
    return;
  }
  if (lastVersion !== null && state.ringVersion !== lastVersion) {
    const members = (state.ring ? state.ring.members : []).map((m) => `${m.id}${m.state === "draining" ? " (draining)" : ""}`);
    log("ring", null, `ring v${state.ringVersion}: ${members.join(", ") || "no members"}`);
  }
  lastVersion = state.ringVersion;
  $("cluster-id").textContent = state.clusterId;
  $("ring-version").textContent = state.ringVersion;
  $("ring-version").dataset.version = state.ringVersion;
  $("mailbox").textContent = state.mailbox;
  $("bus").textContent = state.bus;
  $("authority").textContent = state.authority.running ? "running" : "stopped";
  $("authority-toggle").textContent = state.authority.running ? "stop" : "start";
  $("replicas").textContent = state.replicas;
  $("scale-down").disabled = state.replicas <= 1;
  $("scale-up").disabled = state.replicas >= state.maxReplicas;
  $("drain").textContent = state.drain
    ? `draining ${state.drain.ordinals.map((o) => "local-node-" + o).join(", ")} (${Math.round(state.drain.elapsedMs / 1000)} s)`
    : "";
  renderNodes();
  drawRing();
}

poll();
setInterval(poll, STATE_POLL_MS);
