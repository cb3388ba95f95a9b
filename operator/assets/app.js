// wscluster local demo page. Plain JavaScript, no dependencies, works offline.
// It polls the control API (/api/state) every second, draws the ring, and runs WebSocket
// clients with the reconnect logic of docs/client.md: reset frames, close codes 4000-4002,
// `since` offsets and de-duplication by offset.
"use strict";

const PALETTE = [
  "#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
  "#ea580c", "#4f46e5", "#0d9488", "#be123c", "#a16207", "#9333ea", "#0284c7", "#57534e",
];
const STATE_POLL_MS = 1000;
const LOG_MAX = 500;

let state = null;
const users = new Map(); // user id -> client record
let moves = null; // {version, reset: Set of users reset for this version}
window.wscluster = { users, get state() { return state; } };

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

// The reconnecting client of docs/client.md, instrumented for the page.
function connectUser(userId) {
  if (users.has(userId) && !users.get(userId).stopped) return users.get(userId);
  const u = {
    id: userId, lastOffset: 0, epoch: null, retryAfterMs: null, backoffMs: 500, stopped: false,
    ws: null, status: "connecting", node: null, resets: 0, messages: 0, duplicates: 0,
    proxy: 0, reconnecting: false, lastReason: null,
  };
  users.set(userId, u);

  function open() {
    const bases = proxyBases();
    if (bases.length === 0) { setTimeout(open, 1000); return; }
    const base = bases[u.proxy % bases.length];
    const url = `${base}/connect/${encodeURIComponent(userId)}` +
      (u.epoch ? `?since=${u.lastOffset}&epoch=${encodeURIComponent(u.epoch)}` : "");
    const ws = new WebSocket(url);
    u.ws = ws;
    u.status = u.reconnecting ? "reconnecting" : "connecting";
    ws.onopen = () => { u.backoffMs = 500; u.retryAfterMs = null; u.status = "open"; renderUsers(); };
    ws.onmessage = (event) => {
      let msg;
      try { msg = JSON.parse(event.data); } catch (_) { return; }
      if (msg.type === "reset") { // the close frame follows
        u.retryAfterMs = msg.retryAfterMs;
        u.resets += 1;
        u.lastReason = msg.reason;
        noteReset(userId, msg.ringVersion);
        log("move", userId, `reset (${msg.reason}, ring v${msg.ringVersion ?? "?"}) on ${u.node}; reconnecting in ${msg.retryAfterMs} ms`);
        renderUsers();
        return;
      }
      if (msg.type === "ready") {
        const from = u.node;
        u.node = msg.server;
        // Not recovered (another epoch, e.g. another node's in-memory mailbox, or expired):
        // messages may be missing; resume from where the stream is now.
        if (!msg.recovered || u.epoch !== msg.epoch) { u.epoch = msg.epoch; u.lastOffset = msg.offset; }
        if (u.reconnecting) {
          log("reconnect", userId, `back on ${msg.server}` + (from && from !== msg.server ? ` (was ${from})` : "") +
            (msg.recovered ? (u.lastOffset > 0 ? `, resumed after offset ${u.lastOffset}` : "") : ", messages may have been missed"));
        } else {
          log("info", userId, `connected to ${msg.server}`);
        }
        u.reconnecting = false;
        renderUsers();
        return;
      }
      if (msg.type === "error") {
        log("info", userId, `server note: ${msg.content}`);
        return;
      }
      if (msg.offset !== undefined && msg.offset !== null) {
        if (msg.epoch === u.epoch && msg.offset <= u.lastOffset) { u.duplicates += 1; return; } // at-least-once
        u.epoch = msg.epoch;
        u.lastOffset = msg.offset;
      }
      u.messages += 1;
      log("message", userId, `${msg.type} "${msg.content}"` +
        (msg.offset ? ` (offset ${msg.offset})` : "") + ` from ${msg.server}`);
      renderUsers();
    };
    ws.onclose = (event) => {
      if (u.ws !== ws) return;
      if (u.stopped || event.code === 4002 || event.code === 4008) {
        u.status = "closed";
        if (!u.stopped) log("error", userId, `closed ${event.code} ${event.reason}; not reconnecting`);
        renderUsers();
        return;
      }
      let delay;
      if (u.retryAfterMs !== null && (event.code === 4000 || event.code === 4001)) {
        delay = u.retryAfterMs; // planned move: the server chose the delay
      } else {
        delay = u.backoffMs / 2 + Math.random() * u.backoffMs; // unexpected: backoff, jitter
        u.backoffMs = Math.min(u.backoffMs * 2, 30000);
        u.proxy += 1; // try the next proxy after an unexpected drop
        log("move", userId, `connection lost (${event.code}) on ${u.node ?? "?"}; reconnecting in ${Math.round(delay)} ms`);
      }
      u.retryAfterMs = null;
      u.reconnecting = true;
      u.status = "reconnecting";
      renderUsers();
      setTimeout(() => { if (!u.stopped) open(); }, delay);
    };
  }

  open();
  renderUsers();
  return u;
}

function disconnectUser(userId) {
  const u = users.get(userId);
  if (!u) return;
  u.stopped = true;
  if (u.ws) u.ws.close(1000);
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
